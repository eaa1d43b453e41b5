//! Validation of `DestinationRule` (STUB: to be completed).
use sextant_api::networking::DestinationRule;

use super::Findings;

pub fn validate(_obj: &DestinationRule, _f: &mut Findings) {}
