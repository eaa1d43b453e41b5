//! Validation of `ClusterRbacConfig` and `RbacConfig` (STUB: to be completed).
use sextant_api::rbac::{ClusterRbacConfig, RbacConfig};

use super::Findings;

pub fn validate_cluster(_obj: &ClusterRbacConfig, _f: &mut Findings) {}

pub fn validate_namespaced(_obj: &RbacConfig, _f: &mut Findings) {}
