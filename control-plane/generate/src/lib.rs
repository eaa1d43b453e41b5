//! Generators: pure functions from a config snapshot and a proxy to Envoy
//! resources, tested without any server.
//!
//! For now only a minimal pass-through (Istio's translation comes next):
//! every ServiceEntry host and port becomes a cluster
//! `outbound|PORT||HOST`, every port a listener on the proxy's IP, and every
//! HTTP port a route configuration named by the port with one virtual host
//! per host. See [`passthrough`].
pub mod passthrough;
mod services;

pub use passthrough::PassThrough;
pub use services::{Protocol, Service, services};
