//! rbac.istio.io/v1alpha1: Istio's first RBAC API (Istio 1.4 and earlier).
pub mod rbac_config;
pub mod service_role;
pub mod service_role_binding;

pub use rbac_config::{ClusterRbacConfig, ClusterRbacConfigSpec};
pub use rbac_config::{RbacConfig, RbacConfigSpec};
pub use service_role::{ServiceRole, ServiceRoleSpec};
pub use service_role_binding::{ServiceRoleBinding, ServiceRoleBindingSpec};
