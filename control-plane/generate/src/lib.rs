//! Generators: pure functions from a mesh snapshot and a proxy to Envoy
//! resources, tested without any server.
//!
//! [`mesh::MeshSnapshot`] is built once per push from the config snapshot;
//! [`IstioGenerator`] turns it into each proxy's clusters ([`cluster`]),
//! endpoints ([`endpoint`]), listeners ([`listener`]) and routes
//! ([`route`]), named as Istio names them ([`names`]). Mutual TLS between
//! sidecars ([`mtls`]) follows DestinationRules on the client side and
//! PeerAuthentication ([`peer_authentication`]) on the server side.
//! [`passthrough`] is the minimal generator the xDS work started with.
pub mod authz;
pub mod class;
pub mod cluster;
pub mod credential;
pub mod endpoint;
pub mod envoy;
pub mod istio;
pub mod listener;
pub mod mesh;
pub mod mtls;
pub mod names;
pub mod passthrough;
pub mod peer_authentication;
pub mod route;
pub mod scope;
mod services;
pub mod vhds;

pub use istio::IstioGenerator;
pub use passthrough::PassThrough;
pub use services::{Protocol, Service, services};
