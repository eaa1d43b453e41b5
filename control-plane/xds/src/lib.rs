//! The xDS server: Envoy's discovery protocol, and nothing of Istio.
//!
//! It speaks the Aggregated Discovery Service (state of the world and
//! incremental/Delta) and the standalone CDS, EDS, LDS, RDS and SDS services,
//! as Envoy and go-control-plane define them: type URLs, a version and a
//! nonce per type per stream, ACK and NACK, wildcard and named
//! subscriptions, Delta's `initial_resource_versions` and
//! `removed_resources`.
//!
//! What a proxy gets is decided elsewhere: a [`Generator`] turns the current
//! snapshot (any type `S`) and a [`Proxy`] into [`Resource`]s. The server asks
//! it again for each new snapshot, compares content hashes with what each
//! stream was last sent, and pushes only what changed, in warming-safe order
//! (CDS, EDS, LDS, RDS, SDS). Snapshots reach connections through a
//! `tokio::sync::watch`, so a slow connection only ever sees the newest one
//! and never delays the others.
//!
//! ```text
//!  store events --debounce--> XdsServer::push(snapshot) --watch--> one task per stream
//!                                                                  generate, diff, send
//! ```
//!
//! Resource versions hash a canonical encoding (protobuf maps sorted, see
//! [`resource`]), so rebuilding equal content never causes a push.
//!
//! The server listens in plaintext ([`XdsServer::serve`], Istio's 15010) or
//! over TLS ([`XdsServer::serve_tls`], 15012; [`XdsServer::serve_with`] to
//! share the port with other gRPC services such as the CA). Over TLS, the
//! SPIFFE identity of a proxy's client certificate must match the namespace
//! and service account its node claims ([`identity`]).
pub mod debounce;
mod delta;
pub mod frames;
pub mod generated;
pub mod generator;
pub mod identity;
pub mod incoming;
pub mod metrics;
pub mod proxy;
mod request;
pub mod resource;
pub mod server;
mod sotw;
pub mod status;
mod stream;
mod subscription;
mod throttle;
pub mod type_url;
mod wire;

pub use generated::{Generated, Part};
pub use generator::{BoxError, Generator, ResourceRequest};
pub use identity::SpiffeId;
pub use proxy::{InterceptionMode, Proxy, ProxyError, ProxyType};
pub use resource::{Resource, ResourceData};
pub use server::{Push, ServerOptions, XdsServer};
pub use status::{ConnectionStatus, TypeStatus};

/// Envoy's protobuf types, re-exported for generators and clients.
pub use envoy_types::pb;
