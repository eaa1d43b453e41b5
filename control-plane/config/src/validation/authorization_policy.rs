//! Validation of `AuthorizationPolicy` (STUB: to be completed).
use sextant_api::security::AuthorizationPolicy;

use super::Findings;

pub fn validate(_obj: &AuthorizationPolicy, _f: &mut Findings) {}
