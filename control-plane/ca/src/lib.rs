//! Sextant's certificate authority.

/// Istio's `istio.v1.auth` API, generated from `proto/ca.proto`.
pub mod pb {
    tonic::include_proto!("istio.v1.auth");
}
