//! What a proxy gets: the one question the server asks of the rest of the
//! control plane.
use std::collections::BTreeSet;

use crate::generated::Generated;
use crate::proxy::Proxy;
use crate::resource::Resource;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What the server needs, for one proxy and one type.
#[derive(Clone, Copy, Debug)]
pub struct ResourceRequest<'a> {
    pub type_url: &'a str,
    /// The names the proxy subscribed to, or `None` for a wildcard
    /// subscription (everything the proxy needs of this type). A hint: the
    /// server drops whatever was not asked for.
    pub names: Option<&'a BTreeSet<String>>,
}

impl ResourceRequest<'_> {
    /// Whether the proxy asked for a resource of this name.
    pub fn wants(&self, name: &str) -> bool {
        self.names.is_none_or(|names| names.contains(name))
    }
}

/// Turns a snapshot into the resources of one type for one proxy. Must be
/// pure and deterministic: the server calls it again for every new snapshot
/// and compares the results with what each stream was sent.
pub trait Generator<S>: Send + Sync + 'static {
    fn generate(
        &self,
        snapshot: &S,
        proxy: &Proxy,
        request: &ResourceRequest<'_>,
    ) -> Result<Vec<Resource>, BoxError>;

    /// The same answer in parts that proxies share (see
    /// [`crate::generated`]): what the server calls. The default wraps
    /// [`Generator::generate`] in one part of the proxy's own; a generator
    /// that builds shared parts once per snapshot overrides it, and must
    /// answer exactly what `generate` would.
    fn generate_parts(
        &self,
        snapshot: &S,
        proxy: &Proxy,
        request: &ResourceRequest<'_>,
    ) -> Result<Generated, BoxError> {
        Ok(Generated::from(self.generate(snapshot, proxy, request)?))
    }

    /// [`Generator::generate_parts`] for a stream moving to `snapshot`
    /// from `previous`, for which it was sent `sent` (the unfiltered answer
    /// for this proxy and type). A generator that knows what a snapshot
    /// changed may hand back parts of `sent` it would only rebuild
    /// unchanged (Istio's scoped pushes: an endpoint change need not
    /// rebuild every sidecar's inbound side); it must answer exactly what
    /// `generate_parts` would. The default ignores the hint.
    fn generate_since(
        &self,
        snapshot: &S,
        proxy: &Proxy,
        request: &ResourceRequest<'_>,
        previous: &S,
        sent: &Generated,
    ) -> Result<Generated, BoxError> {
        let _ = (previous, sent);
        self.generate_parts(snapshot, proxy, request)
    }
}

impl<S, F> Generator<S> for F
where
    F: Fn(&S, &Proxy, &ResourceRequest<'_>) -> Result<Vec<Resource>, BoxError>
        + Send
        + Sync
        + 'static,
{
    fn generate(
        &self,
        snapshot: &S,
        proxy: &Proxy,
        request: &ResourceRequest<'_>,
    ) -> Result<Vec<Resource>, BoxError> {
        self(snapshot, proxy, request)
    }
}
