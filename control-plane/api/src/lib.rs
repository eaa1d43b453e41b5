//! Istio's configuration APIs (networking.istio.io, security.istio.io,
//! rbac.istio.io) as Rust types with serde, JSON schemas and the kube
//! `CustomResource` derive. Field names, oneofs and defaults follow the protos
//! in ../shared/reference/istio-api; every spec refuses unknown fields so a
//! typo is an error and not a silently dropped setting.
pub mod common;
pub mod crd;
pub mod networking;
pub mod rbac;
pub mod security;
