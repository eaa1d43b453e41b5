//! State-of-the-world streams (`StreamAggregatedResources` and the
//! standalone `Stream*` methods).
//!
//! Per type: the subscription the latest request stated, the version of
//! each resource last sent, and the nonce of the latest response. A request
//! whose nonce is not the latest is stale and ignored; a NACK is recorded
//! and answered only if the subscription changed, so a rejected
//! configuration is never resent in a loop.
use std::collections::{BTreeSet, VecDeque};
use std::future::Future;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::DiscoveryResponse;

use crate::generated::Generated;
use crate::request::SotwRequest;
use crate::resource::Resource;
use crate::server::Stop;
use crate::stream::{Protocol, Streamed};
use crate::subscription::Subscription;
use crate::type_url;
use crate::wire::Outgoing;

/// One type on one stream.
#[derive(Default)]
pub(crate) struct TypeState {
    subscription: Subscription,
    /// The generator's answer the proxy was last brought up to date with
    /// (unfiltered: of it, the proxy has what its subscription matches).
    /// Shared parts make this a few pointers, and an unchanged answer is
    /// told in O(1).
    sent: Generated,
    /// Newly subscribed names, to send even if unchanged since `sent`.
    added: BTreeSet<String>,
    /// Whether `sent` was generated from the snapshot the stream is on
    /// (not so after a failed generation): only then may the generator
    /// build on it (see [`crate::Generator::generate_since`]).
    current: bool,
    /// The digest of the names the latest request that counted stated
    /// (see [`SotwRequest::names_digest`]): the usual request repeats
    /// them, and is then told without reading a name.
    names_digest: Option<u64>,
    /// The latest response's nonce.
    nonce: String,
    /// (nonce, version) of responses not yet answered.
    outstanding: VecDeque<(String, String)>,
}

/// Responses remembered per type for matching answers.
const OUTSTANDING: usize = 32;

/// A state-of-the-world stream (the loop is [`crate::stream`]'s).
type SotwStream<S> = Streamed<S, TypeState>;

impl<S: Send + Sync + 'static> Protocol<S> for TypeState {
    type Request = SotwRequest;
    const NAME: &'static str = "sotw";

    fn node(request: &SotwRequest) -> Option<&Node> {
        request.node.as_ref()
    }

    fn on_request(
        stream: &mut SotwStream<S>,
        request: SotwRequest,
    ) -> impl Future<Output = Result<(), Stop>> + Send {
        stream.handle(request)
    }

    fn respond(
        stream: &mut SotwStream<S>,
        type_url: &str,
        force: bool,
    ) -> impl Future<Output = Result<bool, Stop>> + Send {
        stream.respond(type_url, force)
    }
}

impl<S: Send + Sync + 'static> SotwStream<S> {
    async fn handle(&mut self, request: SotwRequest) -> Result<(), Stop> {
        let type_url = self
            .service
            .resolve(&request.type_url)
            .map_err(Stop::Invalid)?;
        let answered = self
            .types
            .get(&type_url)
            .is_some_and(|t| !t.nonce.is_empty());
        if request.response_nonce.is_empty() || !answered {
            // The first request for this type on this stream (or the proxy
            // lost track of it): send everything it asks for.
            let names = request.names().map_err(Stop::Invalid)?;
            let previous = self.types.get(&type_url).map(|t| t.subscription.clone());
            let state = self.types.entry(type_url.clone()).or_default();
            state.subscription = Subscription::sotw(previous.as_ref(), &names);
            state.names_digest = Some(request.names_digest());
            state.sent = Generated::new();
            state.added.clear();
            let subscription = state.subscription.clone();
            self.conn
                .status
                .update_type(&type_url, |t| t.subscription = subscription);
            tracing::debug!(
                r#type = type_url::short_name(&type_url),
                names = names.len(),
                "subscribed"
            );
            return self.respond(&type_url, true).await.map(drop);
        }

        let state = self.types.get_mut(&type_url).expect("answered type");
        // An answer to any recent response tells what the proxy runs...
        if let Some(i) = state
            .outstanding
            .iter()
            .position(|(n, _)| *n == request.response_nonce)
        {
            let (nonce, sent_version) = state
                .outstanding
                .drain(..=i)
                .next_back()
                .expect("drained one");
            match &request.error_detail {
                Some(error) => self.conn.nacked(
                    &type_url,
                    &sent_version,
                    &request.version_info,
                    &nonce,
                    Some(error),
                ),
                None => self.conn.acked(&type_url, &sent_version, &nonce),
            }
        }
        let all_answered = self.types.values().all(|t| t.outstanding.is_empty());
        self.conn.slot.settle(all_answered);
        let state = self.types.get_mut(&type_url).expect("answered type");
        // ...but only a request on the latest one counts for the
        // subscription: an older one is superseded by a response Envoy has
        // yet to answer.
        if state.nonce != request.response_nonce {
            self.conn.shared.metrics.expired(&type_url);
            tracing::debug!(r#type = type_url::short_name(&type_url), nonce = %request.response_nonce, latest = %state.nonce, "request for a superseded response: subscription left as is");
            return Ok(());
        }
        if state.names_digest == Some(request.names_digest()) {
            // The list the subscription was made from (a plain ACK or NACK).
            return Ok(());
        }
        let names = request.names().map_err(Stop::Invalid)?;
        let subscription = Subscription::sotw(Some(&state.subscription), &names);
        state.names_digest = Some(request.names_digest());
        let resubscribed = subscription != state.subscription;
        if resubscribed {
            // Newly named resources must be sent even if sent before.
            if subscription.wildcard && !state.subscription.wildcard {
                state.sent = Generated::new();
            }
            state.added.extend(
                subscription
                    .names
                    .difference(&state.subscription.names)
                    .cloned(),
            );
            state.subscription = subscription.clone();
        }
        if !resubscribed {
            return Ok(());
        }
        self.conn
            .status
            .update_type(&type_url, |t| t.subscription = subscription);
        tracing::debug!(
            r#type = type_url::short_name(&type_url),
            names = request.names_len(),
            "resubscribed"
        );
        self.respond(&type_url, false).await.map(drop)
    }

    /// Generates a type and sends it if it changed (or if `force`). Returns
    /// whether a response was sent.
    async fn respond(&mut self, type_url: &str, force: bool) -> Result<bool, Stop> {
        let state = self.types.get_mut(type_url).expect("subscribed type");
        let sent = state.current.then_some(&state.sent);
        let Some(generated) = self.conn.generate(type_url, &state.subscription, sent) else {
            state.current = false;
            return Ok(false);
        };
        state.current = true;
        if !force && state.added.is_empty() && generated.same(&state.sent) {
            return Ok(false);
        }
        let subscription = &state.subscription;
        let full_state = type_url::requires_full_state(type_url) || subscription.wildcard;
        let diff = state.sent.diff(&generated);
        let mut changed: Vec<&Resource> = subscription.select(diff.changed);
        if !state.added.is_empty() {
            changed.extend(state.added.iter().filter_map(|name| generated.get(name)));
            changed.sort_by(|a, b| a.name.cmp(&b.name));
            changed.dedup_by(|a, b| a.name == b.name);
        }
        let any_removed = diff.removed.iter().any(|n| subscription.matches(n));
        if !(force || !changed.is_empty() || (full_state && any_removed)) {
            // Resources gone from a partial type cannot be signalled in SotW
            // (their parents stop naming them).
            state.sent = generated;
            state.added.clear();
            return Ok(false);
        }
        self.conn.slot.take().await;
        let resources: Vec<_> = if full_state {
            subscription
                .select(generated.sorted())
                .into_iter()
                .cloned()
                .collect()
        } else {
            changed.into_iter().cloned().collect()
        };
        state.sent = generated;
        state.added.clear();
        let nonce = self.conn.next_nonce();
        let version = self.conn.push.version.clone();
        state.nonce = nonce.clone();
        state
            .outstanding
            .push_back((nonce.clone(), version.clone()));
        while state.outstanding.len() > OUTSTANDING {
            state.outstanding.pop_front();
        }
        let head = DiscoveryResponse {
            version_info: version.clone(),
            type_url: type_url.to_string(),
            nonce: nonce.clone(),
            control_plane: self.conn.shared.control_plane(),
            ..Default::default()
        };
        let response = Outgoing::sotw(&head, resources);
        let (count, bytes) = (response.resource_count(), response.encoded_len());
        if self.tx.send(Ok(response)).await.is_err() {
            self.conn.shared.metrics.push_error(type_url);
            return Err(Stop::Closed);
        }
        self.conn.sent(type_url, &version, &nonce, count, 0, bytes);
        Ok(true)
    }
}
