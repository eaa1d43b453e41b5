//! Cross-object analysis, as `istioctl analyze`: problems that involve more
//! than one object are warnings, since the missing piece may simply not be
//! applied yet.
use crate::object::IstioObject;
use crate::validation::Finding;

/// Warnings for a set of objects, each with the index of the object it is
/// about.
pub fn analyze(_objects: &[&IstioObject]) -> Vec<(usize, Finding)> {
    Vec::new()
}
