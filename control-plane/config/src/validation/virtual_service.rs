//! Validation of `VirtualService` (STUB: to be completed).
use sextant_api::networking::VirtualService;

use super::Findings;

pub fn validate(_obj: &VirtualService, _f: &mut Findings) {}
