//! Validation of `PeerAuthentication` (STUB: to be completed).
use sextant_api::security::PeerAuthentication;

use super::Findings;

pub fn validate(_obj: &PeerAuthentication, _f: &mut Findings) {}
