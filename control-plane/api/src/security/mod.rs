//! security.istio.io: served as v1beta1 and v1 with one schema.
pub mod authorization_policy;
pub mod peer_authentication;
pub mod request_authentication;

pub use authorization_policy::{AuthorizationPolicy, AuthorizationPolicySpec};
pub use peer_authentication::{PeerAuthentication, PeerAuthenticationSpec};
pub use request_authentication::{RequestAuthentication, RequestAuthenticationSpec};
