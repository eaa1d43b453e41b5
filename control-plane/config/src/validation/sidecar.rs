//! Validation of `Sidecar` (STUB: to be completed).
use sextant_api::networking::Sidecar;

use super::Findings;

pub fn validate(_obj: &Sidecar, _f: &mut Findings) {}
