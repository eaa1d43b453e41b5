//! Validation of `Gateway` (STUB: to be completed).
use sextant_api::networking::Gateway;

use super::Findings;

pub fn validate(_obj: &Gateway, _f: &mut Findings) {}
