//! Validation of `ServiceEntry` (STUB: to be completed).
use sextant_api::networking::ServiceEntry;

use super::Findings;

pub fn validate(_obj: &ServiceEntry, _f: &mut Findings) {}
