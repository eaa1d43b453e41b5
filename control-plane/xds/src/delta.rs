//! Incremental (Delta) streams (`DeltaAggregatedResources` and the
//! standalone `Delta*` methods).
//!
//! Per type: the subscription, and the version of every resource the proxy
//! has (from `initial_resource_versions` on reconnect, then from what it was
//! sent). A response carries only resources whose version differs, and
//! `removed_resources` for what the proxy has but should not (or asked for
//! and does not exist).
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::future::Future;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse,
};

use crate::generated::Generated;
use crate::proxy::Proxy;
use crate::resource::Resource;
use crate::server::{Service, Shared, Stop};
use crate::stream::{Protocol, Streamed};
use crate::subscription::{Subscription, WILDCARD};
use crate::type_url;
use crate::wire::Outgoing;

/// Responses remembered per type for matching ACKs; older ones are
/// forgotten (an ACK for them is then counted as expired).
const OUTSTANDING: usize = 32;

#[derive(Default)]
pub(crate) struct TypeState {
    subscription: Subscription,
    /// The generator's answer the proxy was last brought up to date with:
    /// it has the resources of it its subscription matches (shared parts
    /// make this a few pointers; an unchanged answer is told in O(1)).
    sent: Generated,
    /// What a reconnecting proxy said it has (`initial_resource_versions`),
    /// until the first response.
    initial: Option<BTreeMap<String, String>>,
    /// Names to send even if unchanged since `sent` (subscribed again).
    resend: BTreeSet<String>,
    /// Whether `sent` was generated from the snapshot the stream is on
    /// (not so after a failed generation): only then may the generator
    /// build on it (see [`crate::Generator::generate_since`]).
    current: bool,
    /// Subscribed names already reported as not existing.
    absent: BTreeSet<String>,
    /// Whether the subscription changed since the subscribed names were
    /// last checked against the answer (for names that do not exist): a
    /// sidecar names 3,000 clusters, and looking each up on every push was
    /// most of the work of an endpoint change.
    check_absent: bool,
    /// (nonce, system version) of responses not yet answered.
    outstanding: VecDeque<(String, String)>,
    acked_version: String,
}

/// A Delta stream (the loop is [`crate::stream`]'s).
type DeltaStream<S> = Streamed<S, TypeState>;

impl<S: Send + Sync + 'static> Protocol<S> for TypeState {
    type Request = DeltaDiscoveryRequest;
    const NAME: &'static str = "delta";

    fn node(request: &DeltaDiscoveryRequest) -> Option<&Node> {
        request.node.as_ref()
    }

    fn admit(proxy: &mut Proxy, shared: &Shared<S>, service: Service) {
        // Envoy takes VHDS from ADS only on a Delta ADS stream.
        proxy.vhds = shared.options.vhds && service.type_url.is_none();
    }

    fn on_request(
        stream: &mut DeltaStream<S>,
        request: DeltaDiscoveryRequest,
    ) -> impl Future<Output = Result<(), Stop>> + Send {
        stream.handle(request)
    }

    fn respond(
        stream: &mut DeltaStream<S>,
        type_url: &str,
        force: bool,
    ) -> impl Future<Output = Result<bool, Stop>> + Send {
        stream.respond(type_url, force)
    }
}

impl<S: Send + Sync + 'static> DeltaStream<S> {
    async fn handle(&mut self, request: DeltaDiscoveryRequest) -> Result<(), Stop> {
        let type_url = self
            .service
            .resolve(&request.type_url)
            .map_err(Stop::Invalid)?;
        let first = !self.types.contains_key(&type_url);
        let state = self.types.entry(type_url.clone()).or_default();

        if !request.response_nonce.is_empty() {
            match state
                .outstanding
                .iter()
                .position(|(n, _)| *n == request.response_nonce)
            {
                Some(i) => {
                    // Answers come in order: older responses are settled too.
                    let (nonce, version) = state
                        .outstanding
                        .drain(..=i)
                        .next_back()
                        .expect("drained one");
                    match &request.error_detail {
                        Some(error) => {
                            let kept = state.acked_version.clone();
                            self.conn
                                .nacked(&type_url, &version, &kept, &nonce, Some(error));
                        }
                        None => {
                            state.acked_version = version.clone();
                            self.conn.acked(&type_url, &version, &nonce);
                        }
                    }
                }
                None => {
                    self.conn.shared.metrics.expired(&type_url);
                    tracing::debug!(r#type = type_url::short_name(&type_url), nonce = %request.response_nonce, "answer for an unknown or forgotten response");
                }
            }
        }

        let all_answered = self.types.values().all(|t| t.outstanding.is_empty());
        self.conn.slot.settle(all_answered);
        let state = self.types.get_mut(&type_url).expect("type state");
        let respond = if first {
            state.subscription = Subscription::delta_initial(
                &request.resource_names_subscribe,
                type_url::namespaced(&type_url),
            );
            state.check_absent = true;
            // What the proxy kept from an earlier stream: not resent if
            // unchanged.
            let subscription = &state.subscription;
            state.initial = Some(
                request
                    .initial_resource_versions
                    .into_iter()
                    .filter(|(name, _)| subscription.matches(name))
                    .collect(),
            );
            true
        } else {
            for name in &request.resource_names_unsubscribe {
                state.resend.remove(name);
                state.absent.remove(name);
            }
            for name in &request.resource_names_subscribe {
                if name == WILDCARD {
                    if !state.subscription.wildcard {
                        // Everything becomes wanted: send it all again.
                        state.sent = Generated::new();
                    }
                    continue;
                }
                // A (re)subscribed resource must be sent, even if the proxy
                // seems to have it.
                state.resend.insert(name.clone());
                state.absent.remove(name);
            }
            state.check_absent |= !request.resource_names_subscribe.is_empty()
                || !request.resource_names_unsubscribe.is_empty();
            state.subscription.delta_update(
                &request.resource_names_subscribe,
                &request.resource_names_unsubscribe,
            )
        };
        if !request.resource_names_subscribe.is_empty()
            || !request.resource_names_unsubscribe.is_empty()
            || first
        {
            let subscription = state.subscription.clone();
            self.conn
                .status
                .update_type(&type_url, |t| t.subscription = subscription);
            tracing::debug!(
                r#type = type_url::short_name(&type_url),
                subscribe = ?request.resource_names_subscribe,
                unsubscribe = ?request.resource_names_unsubscribe,
                "subscription changed"
            );
        }
        if respond {
            self.respond(&type_url, first).await?;
        }
        Ok(())
    }

    /// Sends what the proxy lacks or has in an old version, and removals.
    /// `force` sends a response even if empty (the first answer for a type,
    /// which Envoy waits for to finish initializing).
    async fn respond(&mut self, type_url: &str, force: bool) -> Result<bool, Stop> {
        let state = self.types.get_mut(type_url).expect("subscribed type");
        let sent = state.current.then_some(&state.sent);
        let Some(generated) = self.conn.generate(type_url, &state.subscription, sent) else {
            state.current = false;
            return Ok(false);
        };
        state.current = true;
        let initial = state.initial.take();
        if !force && initial.is_none() && state.resend.is_empty() && generated.same(&state.sent) {
            return Ok(false);
        }
        let subscription = &state.subscription;
        // Whether the answer's names changed (then a subscribed name may
        // have appeared or gone).
        let mut names_changed = true;
        let (mut changed, mut removed): (Vec<_>, Vec<String>) = match &initial {
            // What the proxy kept from an earlier stream is not resent if
            // unchanged.
            Some(has) => (
                subscription
                    .select(generated.sorted())
                    .into_iter()
                    .filter(|r| has.get(&r.name) != Some(&r.version))
                    .collect(),
                has.keys()
                    .filter(|n| !generated.contains(n))
                    .cloned()
                    .collect(),
            ),
            None => {
                let diff = state.sent.diff(&generated);
                names_changed = !diff.removed.is_empty()
                    || diff.changed.iter().any(|r| !state.sent.contains(&r.name));
                (
                    diff.changed
                        .into_iter()
                        .filter(|r| subscription.matches(&r.name))
                        .collect(),
                    diff.removed
                        .into_iter()
                        .filter(|n| subscription.matches(n))
                        .map(str::to_string)
                        .collect(),
                )
            }
        };
        for name in &state.resend {
            if let Some(resource) = generated.get(name)
                && !changed.iter().any(|r| r.name == *name)
            {
                changed.push(resource);
            }
        }
        for name in &removed {
            if !subscription.namespaced && subscription.names.contains(name) {
                state.absent.insert(name.clone());
            }
        }
        if !state.absent.is_empty() {
            state.absent.retain(|name| !generated.contains(name));
        }
        // Named and missing: say so once, so the proxy need not wait for a
        // timeout.
        // (A VHDS namespace names no resource of its own.)
        if (names_changed || state.check_absent) && !subscription.namespaced {
            // Usually every name exists: one merge pass tells.
            if !subscription.all_named_in(&generated.sorted()) {
                for name in subscription.names.iter() {
                    if !generated.contains(name) && state.absent.insert(name.clone()) {
                        removed.push(name.clone());
                    }
                }
            }
            state.check_absent = false;
        }
        if !force && changed.is_empty() && removed.is_empty() {
            state.sent = generated;
            state.resend.clear();
            return Ok(false);
        }
        self.conn.slot.take().await;
        let resources: Vec<Resource> = changed.into_iter().cloned().collect();
        state.sent = generated;
        state.resend.clear();
        let nonce = self.conn.next_nonce();
        let version = self.conn.push.version.clone();
        state
            .outstanding
            .push_back((nonce.clone(), version.clone()));
        while state.outstanding.len() > OUTSTANDING {
            state.outstanding.pop_front();
        }
        let head = DeltaDiscoveryResponse {
            system_version_info: version.clone(),
            type_url: type_url.to_string(),
            removed_resources: removed,
            nonce: nonce.clone(),
            control_plane: self.conn.shared.control_plane(),
            ..Default::default()
        };
        let removals = head.removed_resources.len();
        let response = Outgoing::delta(&head, resources);
        let (count, bytes) = (response.resource_count(), response.encoded_len());
        if self.tx.send(Ok(response)).await.is_err() {
            self.conn.shared.metrics.push_error(type_url);
            return Err(Stop::Closed);
        }
        self.conn
            .sent(type_url, &version, &nonce, count, removals, bytes);
        Ok(true)
    }
}
