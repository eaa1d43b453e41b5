//! Istio configuration objects: parsing, validation with Istio's
//! semantics, the config store and the file source.
pub mod analysis;
pub mod credential;
pub mod file_source;
pub mod object;
pub mod store;
pub mod validation;

pub use object::{IstioObject, Kind, ObjectKey, ParseError};
