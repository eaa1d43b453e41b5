//! Validation of `WorkloadEntry` (STUB: to be completed).
use sextant_api::networking::WorkloadEntry;

use super::Findings;

pub fn validate(_obj: &WorkloadEntry, _f: &mut Findings) {}
