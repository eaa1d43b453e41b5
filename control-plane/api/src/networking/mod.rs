//! networking.istio.io: served as v1alpha3, v1beta1 and v1 with one schema.
pub mod destination_rule;
pub mod gateway;
pub mod service_entry;
pub mod sidecar;
pub mod virtual_service;
pub mod workload_entry;

pub use destination_rule::{DestinationRule, DestinationRuleSpec};
pub use gateway::{Gateway, GatewaySpec};
pub use service_entry::{ServiceEntry, ServiceEntrySpec};
pub use sidecar::{Sidecar, SidecarSpec};
pub use virtual_service::{VirtualService, VirtualServiceSpec};
pub use workload_entry::{WorkloadEntry, WorkloadEntrySpec};
