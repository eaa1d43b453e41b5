//! Validation of `ServiceRoleBinding` (STUB: to be completed).
use sextant_api::rbac::ServiceRoleBinding;

use super::Findings;

pub fn validate(_obj: &ServiceRoleBinding, _f: &mut Findings) {}
