//! The load harness of issue #8: a synthetic Istio mesh ([`mesh`]), xDS
//! clients that behave like Envoy sidecars ([`client`]), the control plane
//! as a child process ([`server`]), and a run ([`run`]) that connects
//! thousands of clients, makes config changes and reports how long each
//! took to reach every proxy it concerns ([`report`]). For the comparison
//! with the `rust-control-plane` crate, [`dump`] writes what Sextant sends
//! each proxy for `rcp-server` (control-plane/bench/rcp-server) to serve.
//!
//! The clients run in the bench process and the server in its own, so that
//! the server's CPU and memory (from /proc) are its own; on a small machine
//! the clients still compete with it for CPU, which the report shows.
pub mod client;
pub mod dump;
mod grpc;
pub mod mesh;
pub mod record;
pub mod report;
pub mod run;
pub mod server;
pub mod stats;
