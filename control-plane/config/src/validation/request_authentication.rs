//! Validation of `RequestAuthentication` (STUB: to be completed).
use sextant_api::security::RequestAuthentication;

use super::Findings;

pub fn validate(_obj: &RequestAuthentication, _f: &mut Findings) {}
