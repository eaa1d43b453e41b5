//! security.istio.io: served as v1beta1 and v1 with one schema.
pub mod peer_authentication;
pub mod authorization_policy;
pub mod request_authentication;

pub use peer_authentication::{PeerAuthentication, PeerAuthenticationSpec};
pub use authorization_policy::{AuthorizationPolicy, AuthorizationPolicySpec};
pub use request_authentication::{RequestAuthentication, RequestAuthenticationSpec};
