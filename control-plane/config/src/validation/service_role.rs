//! Validation of `ServiceRole` (STUB: to be completed).
use sextant_api::rbac::ServiceRole;

use super::Findings;

pub fn validate(_obj: &ServiceRole, _f: &mut Findings) {}
