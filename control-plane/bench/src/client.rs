//! One simulated sidecar: an ADS stream (SotW or Delta) that subscribes as
//! Envoy does and ACKs every response.
//!
//! Envoy's order: clusters (wildcard); then the endpoints of the EDS
//! clusters it got, by name; once the clusters are warm, listeners
//! (wildcard); then the route configurations the listeners' HTTP connection
//! managers name (RDS). Subscriptions follow what arrives: a new EDS cluster
//! or RDS name is subscribed, a vanished one dropped.
//!
//! The client keeps a content hash per resource, not the resource: enough
//! to tell what a response changed, and small enough for thousands of
//! clients in one process. Only clusters and listeners are decoded, and only
//! as far as their EDS and RDS names.
//!
//! The clients share the machine with the server they measure, so they
//! are cheap: responses are decoded (each from a buffer of its own,
//! freed once read: [`crate::grpc`]) into lite messages whose resource
//! bodies are slices of the received buffer (no copy), names are read in
//! place and keyed by their hash, and only subscribed names are interned.
use std::collections::{BTreeSet, HashMap};
use std::hash::BuildHasher;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::{BufMut, Bytes};
use prost::Message;
use sextant_xds::pb::envoy::config::core::v3::Node;
use sextant_xds::pb::envoy::config::listener::v3::{Listener, filter};
use sextant_xds::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager;
use sextant_xds::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::RouteSpecifier;
use sextant_xds::pb::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DiscoveryRequest};
use tokio::sync::mpsc;
use tonic::transport::{Channel, Endpoint};

use crate::grpc::{Outgoing, Sized, open};
use crate::record::{Event, Interner, Recorder, Ty};

const HCM_TYPE_URL: &str = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";

/// SotW or Delta.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Sotw,
    Delta,
}

const SOTW_PATH: &str =
    "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources";
const DELTA_PATH: &str =
    "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources";

/// `DiscoveryResponse`, as far as the client reads it. The resources are
/// `Any`s whose values are slices of the received buffer.
#[derive(Clone, PartialEq, Message)]
struct LiteResponse {
    #[prost(string, tag = "1")]
    version_info: String,
    #[prost(message, repeated, tag = "2")]
    resources: Vec<LiteAny>,
    #[prost(string, tag = "4")]
    type_url: String,
    #[prost(string, tag = "5")]
    nonce: String,
}

/// `google.protobuf.Any` without its type URL (skipped, not decoded).
#[derive(Clone, PartialEq, Message)]
struct LiteAny {
    #[prost(bytes = "bytes", tag = "2")]
    value: Bytes,
}

/// `DeltaDiscoveryResponse`, as far as the client reads it.
#[derive(Clone, PartialEq, Message)]
struct LiteDeltaResponse {
    #[prost(message, repeated, tag = "2")]
    resources: Vec<LiteResource>,
    #[prost(string, tag = "4")]
    type_url: String,
    #[prost(string, tag = "5")]
    nonce: String,
    #[prost(string, repeated, tag = "6")]
    removed_resources: Vec<String>,
}

/// `envoy.service.discovery.v3.Resource`: its name and body.
#[derive(Clone, PartialEq, Message)]
struct LiteResource {
    #[prost(message, optional, tag = "2")]
    resource: Option<LiteAny>,
    #[prost(bytes = "bytes", tag = "3")]
    name: Bytes,
}

/// A SotW request whose resource names are the interner's (an EDS ACK
/// names every subscribed cluster: no copy of them is made). Encoded
/// exactly as `request` with `names` appended to its `resource_names`.
struct SotwRequest {
    request: DiscoveryRequest,
    names: Vec<Arc<str>>,
}

impl Outgoing for DeltaDiscoveryRequest {
    fn encode_into(self, dst: &mut impl BufMut) -> Result<(), prost::EncodeError> {
        self.encode(dst)
    }
}

impl Outgoing for SotwRequest {
    fn encode_into(self, dst: &mut impl BufMut) -> Result<(), prost::EncodeError> {
        // prost writes fields in tag order: those before `resource_names`
        // (1, 2, and 3 itself), the shared names, then the rest.
        let mut tail = self.request;
        let head = DiscoveryRequest {
            version_info: std::mem::take(&mut tail.version_info),
            node: tail.node.take(),
            resource_names: std::mem::take(&mut tail.resource_names),
            ..Default::default()
        };
        head.encode(dst)?;
        for name in &self.names {
            prost::encoding::encode_key(3, prost::encoding::WireType::LengthDelimited, dst);
            prost::encoding::encode_varint(name.len() as u64, dst);
            dst.put_slice(name.as_bytes());
        }
        tail.encode(dst)
    }
}

/// Reads a varint at `*at`, advancing it.
fn varint(buf: &[u8], at: &mut usize) -> Option<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *buf.get(*at)?;
        *at += 1;
        value |= u64::from(byte & 0x7f) << shift;
        if byte < 0x80 {
            return Some(value);
        }
    }
    None
}

/// Field 1 of a message, a string: the `name` of Cluster, Listener and
/// RouteConfiguration, the `cluster_name` of ClusterLoadAssignment (SotW
/// bodies carry no name outside the body). Read in place; as protobuf, the
/// last occurrence counts and a missing one is empty.
fn first_string(message: &[u8]) -> anyhow::Result<&str> {
    let mut at = 0;
    let mut name: &[u8] = &[];
    let malformed = || anyhow::anyhow!("malformed message");
    while at < message.len() {
        let key = varint(message, &mut at).ok_or_else(malformed)?;
        match key & 7 {
            0 => {
                varint(message, &mut at).ok_or_else(malformed)?;
            }
            1 => at += 8,
            5 => at += 4,
            2 => {
                let len = varint(message, &mut at).ok_or_else(malformed)?;
                let end = usize::try_from(len)
                    .ok()
                    .and_then(|len| at.checked_add(len))
                    .filter(|end| *end <= message.len())
                    .ok_or_else(malformed)?;
                if key >> 3 == 1 {
                    name = &message[at..end];
                }
                at = end;
            }
            _ => bail!("malformed message (wire type {})", key & 7),
        }
        if key >> 3 == 1 && key & 7 != 2 {
            bail!("malformed message (field 1 is not a string)");
        }
    }
    if at > message.len() {
        bail!("malformed message (truncated)");
    }
    Ok(std::str::from_utf8(name)?)
}

/// As much of a Cluster as says whether it takes endpoints from EDS and
/// under which name (`type` = EDS, `eds_cluster_config.service_name`).
/// prost skips the other fields without decoding them.
#[derive(Clone, PartialEq, Message)]
struct ClusterHead {
    #[prost(int32, tag = "2")]
    discovery_type: i32,
    #[prost(message, optional, tag = "3")]
    eds_cluster_config: Option<EdsClusterHead>,
}

#[derive(Clone, PartialEq, Message)]
struct EdsClusterHead {
    #[prost(bytes = "bytes", tag = "2")]
    service_name: Bytes,
}

/// `RouteConfiguration`, as far as the client reads it: whether its
/// virtual hosts come over VHDS.
#[derive(Clone, PartialEq, Message)]
struct RouteHead {
    #[prost(message, optional, tag = "9")]
    vhds: Option<Empty>,
}

/// A message whose fields are skipped.
#[derive(Clone, PartialEq, Message)]
struct Empty {}

/// `Cluster.DiscoveryType.EDS`.
const EDS: i32 = 3;

/// Opens a channel to the server, retrying for a while: thousands of
/// clients connecting at once may overflow the listen backlog, and Envoy
/// retries too.
pub async fn connect(url: &str) -> anyhow::Result<Channel> {
    let endpoint = Endpoint::from_shared(url.to_string())?
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(10));
    let mut delay = Duration::from_millis(50);
    let mut attempts = 0;
    loop {
        match endpoint.connect().await {
            Ok(channel) => return Ok(channel),
            Err(e) if attempts < 8 => {
                tracing::debug!(error = %e, attempts, "connect failed; retrying");
                attempts += 1;
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
            Err(e) => return Err(e).with_context(|| format!("connecting to {url}")),
        }
    }
}

/// Runs client `index` for as long as the run lasts. As Envoy, a client
/// whose stream the server ends (or breaks) reconnects after a backoff
/// and subscribes again from scratch; each such loss is recorded as a
/// disconnect. A client that cannot connect at all is recorded as failed.
pub async fn run(
    index: usize,
    url: &str,
    mut channel: Channel,
    node: Node,
    protocol: Protocol,
    recorder: Arc<Recorder>,
) {
    let mut backoff = Duration::from_millis(500);
    loop {
        let result = match protocol {
            Protocol::Sotw => sotw(index, channel, node.clone(), &recorder).await,
            Protocol::Delta => delta(index, channel, node.clone(), &recorder).await,
        };
        let error = match result {
            Ok(never) => match never {},
            Err(e) => e,
        };
        recorder.disconnected(index, format!("{error:#}"));
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(10));
        channel = match connect(url).await {
            Ok(channel) => channel,
            Err(e) => {
                recorder.fail(index, format!("reconnecting: {e:#}"));
                return;
            }
        };
    }
}

/// Per type: name key -> content hash of what the client has.
#[derive(Default)]
struct Held {
    resources: foldhash::HashMap<u64, u64>,
    /// SotW: version and nonce of the last response, for the next request.
    version: String,
    nonce: String,
    received: bool,
}

/// What one client has and subscribes to. Names are [`Interner`] keys;
/// those subscribed are registered with the interner.
#[derive(Default)]
struct State {
    held: [Held; 5],
    /// EDS clusters: cluster name key -> EDS resource name key.
    eds_of: HashMap<u64, u64>,
    /// The values of `eds_of`.
    eds_wanted: BTreeSet<u64>,
    eds_subscribed: BTreeSet<u64>,
    /// Listener name key -> the RDS names of its HTTP connection managers.
    routes_of: HashMap<u64, Vec<u64>>,
    /// The values of `routes_of`.
    rds_wanted: BTreeSet<u64>,
    rds_subscribed: BTreeSet<u64>,
    /// Route configurations (name keys) whose virtual hosts come over
    /// VHDS: Envoy subscribes to their names there.
    vhds_wanted: BTreeSet<u64>,
    vhds_subscribed: BTreeSet<u64>,
    lds_requested: bool,
    rds_requested: bool,
}

/// What applying a response did.
struct Applied {
    resources: u32,
    changed: u32,
    removed: u32,
}

fn content_hash(body: &[u8]) -> u64 {
    foldhash::quality::FixedState::with_seed(0x05e4_7a47).hash_one(body)
}

impl State {
    /// Takes in a response's resources (`(name, body)`, the body being the
    /// `Any` value), and `removed` names; a full-state response also
    /// removes what it does not list.
    fn apply<'a>(
        &mut self,
        ty: Ty,
        resources: impl Iterator<Item = (&'a str, &'a Bytes)>,
        removed: &[String],
        full_state: bool,
        interner: &Interner,
    ) -> anyhow::Result<Applied> {
        let mut seen = foldhash::HashSet::with_capacity_and_hasher(
            if full_state {
                resources.size_hint().0
            } else {
                0
            },
            Default::default(),
        );
        let mut changed = Vec::new();
        let mut count = 0;
        let held = &mut self.held[ty.index()];
        for (name, body) in resources {
            count += 1;
            let id = Interner::key(name);
            let hash = content_hash(body);
            if held.resources.insert(id, hash) != Some(hash) {
                changed.push((id, name, body));
            }
            if full_state {
                seen.insert(id);
            }
        }
        let mut gone: Vec<u64> = Vec::new();
        if full_state {
            gone.extend(held.resources.keys().filter(|id| !seen.contains(*id)));
        }
        for name in removed {
            let id = Interner::key(name);
            if held.resources.contains_key(&id) {
                gone.push(id);
            }
        }
        for id in &gone {
            held.resources.remove(id);
        }
        held.received = true;

        match ty {
            Ty::Cds => {
                let before = self.eds_of.len();
                let mut moved = !gone.is_empty();
                let heads = changed
                    .iter()
                    .map(|(_, _, body)| {
                        ClusterHead::decode((*body).clone()).context("decoding a Cluster")
                    })
                    .collect::<anyhow::Result<Vec<_>>>()?;
                // EDS names new to this client, registered at once.
                let mut new_names = Vec::new();
                for ((id, name, _), head) in changed.iter().zip(&heads) {
                    if head.discovery_type == EDS {
                        let service_name = head
                            .eds_cluster_config
                            .as_ref()
                            .map(|c| &c.service_name)
                            .filter(|s| !s.is_empty());
                        let eds_name = match service_name {
                            Some(s) => std::str::from_utf8(s)
                                .context("decoding a Cluster's EDS service name")?,
                            None => name,
                        };
                        let eds = Interner::key(eds_name);
                        if self.eds_of.insert(*id, eds) != Some(eds) {
                            new_names.push((eds, eds_name));
                            moved = true;
                        }
                    } else if self.eds_of.remove(id).is_some() {
                        moved = true;
                    }
                }
                interner.register_all(&new_names);
                for id in &gone {
                    self.eds_of.remove(id);
                }
                if moved || before != self.eds_of.len() {
                    self.eds_wanted = self.eds_of.values().copied().collect();
                }
            }
            Ty::Lds => {
                for (id, _, body) in &changed {
                    let listener =
                        Listener::decode(body.as_ref()).context("decoding a Listener")?;
                    let routes = rds_names(&listener)?
                        .iter()
                        .map(|n| interner.id(n))
                        .collect();
                    self.routes_of.insert(*id, routes);
                }
                for id in &gone {
                    self.routes_of.remove(id);
                }
                if !changed.is_empty() || !gone.is_empty() {
                    self.rds_wanted = self.routes_of.values().flatten().copied().collect();
                }
            }
            Ty::Rds => {
                for (id, _, body) in &changed {
                    let head = RouteHead::decode((*body).clone())
                        .context("decoding a RouteConfiguration")?;
                    if head.vhds.is_some() {
                        self.vhds_wanted.insert(*id);
                    } else {
                        self.vhds_wanted.remove(id);
                    }
                }
                for id in &gone {
                    self.vhds_wanted.remove(id);
                }
            }
            Ty::Eds | Ty::Vhds => {}
        }
        Ok(Applied {
            resources: count,
            changed: changed.len() as u32,
            removed: gone.len() as u32,
        })
    }

    /// Forgets what is no longer subscribed (SotW: the names left out of
    /// the next request).
    fn unsubscribe(&mut self, ty: Ty, wanted: &BTreeSet<u64>) {
        self.held[ty.index()]
            .resources
            .retain(|id, _| wanted.contains(id));
    }

    fn eds_wanted(&self) -> &BTreeSet<u64> {
        &self.eds_wanted
    }

    fn rds_wanted(&self) -> &BTreeSet<u64> {
        &self.rds_wanted
    }

    /// Every subscribed name of a type has arrived.
    fn complete(&self, ty: Ty, subscribed: &BTreeSet<u64>) -> bool {
        let held = &self.held[ty.index()].resources;
        subscribed.iter().all(|id| held.contains_key(id))
    }

    fn clusters_warm(&self) -> bool {
        let cds = &self.held[Ty::Cds.index()];
        cds.received
            && !cds.resources.is_empty()
            && self.eds_subscribed == self.eds_wanted
            && self.complete(Ty::Eds, &self.eds_subscribed)
    }

    /// CDS, EDS, LDS and RDS all there, non-empty and complete; VHDS
    /// answered where route configurations name it.
    fn full(&self) -> bool {
        let lds = &self.held[Ty::Lds.index()];
        self.clusters_warm()
            && lds.received
            && !lds.resources.is_empty()
            && self.rds_subscribed == self.rds_wanted
            && self.complete(Ty::Rds, &self.rds_subscribed)
            && self.vhds_subscribed == self.vhds_wanted
            && (self.vhds_wanted.is_empty() || self.held[Ty::Vhds.index()].received)
    }
}

/// The route configuration names of a listener's HTTP connection managers
/// that use RDS.
fn rds_names(listener: &Listener) -> anyhow::Result<Vec<String>> {
    let mut out = Vec::new();
    let chains = listener
        .filter_chains
        .iter()
        .chain(listener.default_filter_chain.as_ref());
    for chain in chains {
        for f in &chain.filters {
            let Some(filter::ConfigType::TypedConfig(any)) = &f.config_type else {
                continue;
            };
            if any.type_url != HCM_TYPE_URL {
                continue;
            }
            let hcm = HttpConnectionManager::decode(any.value.as_slice()).with_context(|| {
                format!("listener {}: decoding HttpConnectionManager", listener.name)
            })?;
            if let Some(RouteSpecifier::Rds(rds)) = hcm.route_specifier
                && !out.contains(&rds.route_config_name)
            {
                out.push(rds.route_config_name);
            }
        }
    }
    Ok(out)
}

fn names(interner: &Interner, ids: &BTreeSet<u64>) -> Vec<String> {
    interner.names(ids)
}

/// The names and bodies of a SotW response's resources.
fn sotw_named(ty: Ty, response: &LiteResponse) -> anyhow::Result<Vec<(&str, &Bytes)>> {
    response
        .resources
        .iter()
        .map(|any| {
            let name = first_string(&any.value)
                .with_context(|| format!("decoding the name of a {}", ty.as_str()))?;
            Ok((name, &any.value))
        })
        .collect()
}

/// The names and bodies of a Delta response's resources.
fn delta_named(ty: Ty, response: &LiteDeltaResponse) -> anyhow::Result<Vec<(&str, &Bytes)>> {
    response
        .resources
        .iter()
        .map(|r| {
            let name = std::str::from_utf8(&r.name)
                .with_context(|| format!("decoding the name of a {}", ty.as_str()))?;
            let body = r
                .resource
                .as_ref()
                .with_context(|| format!("{} {name}: no body", ty.as_str()))?;
            Ok((name, &body.value))
        })
        .collect()
}

async fn sotw(
    index: usize,
    channel: Channel,
    node: Node,
    recorder: &Recorder,
) -> anyhow::Result<std::convert::Infallible> {
    let interner = &recorder.interner;
    let (tx, rx) = mpsc::unbounded_channel::<SotwRequest>();
    let send = |request: SotwRequest| {
        tx.send(request)
            .map_err(|_| anyhow::anyhow!("request stream closed"))
    };
    send(SotwRequest {
        request: DiscoveryRequest {
            node: Some(node),
            type_url: Ty::Cds.type_url().to_string(),
            ..Default::default()
        },
        names: Vec::new(),
    })?;
    let mut responses = open::<_, LiteResponse>(channel, SOTW_PATH, rx)
        .await
        .context("opening the ADS stream")?;
    let mut state = State::default();
    // A request for a type in the current state (names, last version and
    // nonce): an ACK, or a subscription change.
    let request = |state: &State, ty: Ty, names: Vec<Arc<str>>| {
        let held = &state.held[ty.index()];
        SotwRequest {
            request: DiscoveryRequest {
                type_url: ty.type_url().to_string(),
                version_info: held.version.clone(),
                response_nonce: held.nonce.clone(),
                ..Default::default()
            },
            names,
        }
    };
    while let Some(Sized { bytes, message }) = responses.message().await.context("ADS stream")? {
        let received = Instant::now();
        let Some(ty) = Ty::of(&message.type_url) else {
            bail!("unexpected response type {}", message.type_url);
        };
        let named = sotw_named(ty, &message)?;
        let applied = state.apply(ty, named.into_iter(), &[], ty.full_state(), interner)?;
        let LiteResponse {
            version_info,
            nonce,
            ..
        } = message;
        let held = &mut state.held[ty.index()];
        held.version = version_info;
        held.nonce = nonce;
        match ty {
            Ty::Cds => {
                let wanted = state.eds_wanted().clone();
                if wanted != state.eds_subscribed && !wanted.is_empty() {
                    state.unsubscribe(Ty::Eds, &wanted);
                    state.eds_subscribed = wanted;
                    send(request(
                        &state,
                        Ty::Eds,
                        interner.shared(&state.eds_subscribed),
                    ))?;
                }
                send(request(&state, Ty::Cds, Vec::new()))?;
            }
            Ty::Eds => send(request(
                &state,
                Ty::Eds,
                interner.shared(&state.eds_subscribed),
            ))?,
            Ty::Lds => {
                let wanted = state.rds_wanted().clone();
                send(request(&state, Ty::Lds, Vec::new()))?;
                if wanted != state.rds_subscribed && !wanted.is_empty() {
                    state.unsubscribe(Ty::Rds, &wanted);
                    state.rds_subscribed = wanted;
                    state.rds_requested = true;
                    send(request(
                        &state,
                        Ty::Rds,
                        interner.shared(&state.rds_subscribed),
                    ))?;
                }
            }
            Ty::Rds => send(request(
                &state,
                Ty::Rds,
                interner.shared(&state.rds_subscribed),
            ))?,
            Ty::Vhds => bail!("VHDS over a SotW stream"),
        }
        if !state.lds_requested && state.clusters_warm() {
            state.lds_requested = true;
            send(request(&state, Ty::Lds, Vec::new()))?;
        }
        let acked = Instant::now();
        recorder.record(Event {
            client: index as u32,
            ty,
            received,
            acked,
            bytes,
            resources: applied.resources,
            changed: applied.changed,
            removed: applied.removed,
        });
        // Only the first time counts: once ready, the (not free) check
        // is skipped.
        if recorder.ready_at(index).is_none() && state.full() {
            recorder.ready(index, acked);
        }
    }
    bail!("the server ended the stream")
}

async fn delta(
    index: usize,
    channel: Channel,
    node: Node,
    recorder: &Recorder,
) -> anyhow::Result<std::convert::Infallible> {
    let interner = &recorder.interner;
    let (tx, rx) = mpsc::unbounded_channel::<DeltaDiscoveryRequest>();
    let send = |request: DeltaDiscoveryRequest| {
        tx.send(request)
            .map_err(|_| anyhow::anyhow!("request stream closed"))
    };
    // Wildcard clusters, as Envoy asks (an initial request naming nothing).
    send(DeltaDiscoveryRequest {
        node: Some(node),
        type_url: Ty::Cds.type_url().to_string(),
        ..Default::default()
    })?;
    let mut responses = open::<_, LiteDeltaResponse>(channel, DELTA_PATH, rx)
        .await
        .context("opening the Delta ADS stream")?;
    let mut state = State::default();
    let subscription = |ty: Ty, add: &BTreeSet<u64>, drop: &BTreeSet<u64>| DeltaDiscoveryRequest {
        type_url: ty.type_url().to_string(),
        resource_names_subscribe: names(interner, add),
        resource_names_unsubscribe: names(interner, drop),
        ..Default::default()
    };
    while let Some(Sized { bytes, message }) =
        responses.message().await.context("Delta ADS stream")?
    {
        let received = Instant::now();
        let Some(ty) = Ty::of(&message.type_url) else {
            bail!("unexpected response type {}", message.type_url);
        };
        let named = delta_named(ty, &message)?;
        let applied = state.apply(
            ty,
            named.into_iter(),
            &message.removed_resources,
            false,
            interner,
        )?;
        let nonce = message.nonce;
        // Subscription changes first, then the ACK (as Envoy: new clusters
        // ask for their endpoints while the CDS response is processed).
        let follow = match ty {
            Ty::Cds => Some((Ty::Eds, state.eds_wanted().clone())),
            Ty::Lds => Some((Ty::Rds, state.rds_wanted().clone())),
            // Envoy subscribes to a route configuration's name on VHDS.
            Ty::Rds => Some((Ty::Vhds, state.vhds_wanted.clone())),
            Ty::Eds | Ty::Vhds => None,
        };
        if let Some((child, wanted)) = follow {
            let subscribed = match child {
                Ty::Eds => &mut state.eds_subscribed,
                Ty::Vhds => &mut state.vhds_subscribed,
                _ => &mut state.rds_subscribed,
            };
            let add: BTreeSet<u64> = wanted.difference(subscribed).copied().collect();
            let drop: BTreeSet<u64> = subscribed.difference(&wanted).copied().collect();
            let first = subscribed.is_empty();
            // An initial request naming nothing would be a wildcard.
            if !add.is_empty() || (!drop.is_empty() && !first) {
                *subscribed = wanted;
                send(subscription(child, &add, &drop))?;
                if child == Ty::Rds {
                    state.rds_requested = true;
                }
                // Unsubscribed resources are gone.
                let held = &mut state.held[child.index()].resources;
                for id in &drop {
                    held.remove(id);
                }
            }
        }
        send(DeltaDiscoveryRequest {
            type_url: ty.type_url().to_string(),
            response_nonce: nonce,
            ..Default::default()
        })?;
        if !state.lds_requested && state.clusters_warm() {
            state.lds_requested = true;
            send(DeltaDiscoveryRequest {
                type_url: Ty::Lds.type_url().to_string(),
                ..Default::default()
            })?;
        }
        let acked = Instant::now();
        recorder.record(Event {
            client: index as u32,
            ty,
            received,
            acked,
            bytes,
            resources: applied.resources,
            changed: applied.changed,
            removed: applied.removed,
        });
        // Only the first time counts: once ready, the (not free) check
        // is skipped.
        if recorder.ready_at(index).is_none() && state.full() {
            recorder.ready(index, acked);
        }
    }
    bail!("the server ended the stream")
}

#[cfg(test)]
mod tests {
    use super::*;
    use sextant_generate::IstioGenerator;
    use sextant_generate::mesh::MeshSnapshot;
    use sextant_xds::pb::envoy::config::cluster::v3::Cluster;
    use sextant_xds::pb::envoy::config::cluster::v3::cluster::{
        ClusterDiscoveryType, DiscoveryType,
    };
    use sextant_xds::pb::envoy::service::discovery::v3::{
        DeltaDiscoveryResponse, DiscoveryResponse, Resource,
    };
    use sextant_xds::{Generator, Proxy, ResourceRequest};

    use crate::grpc::decode_sized;
    use crate::mesh::MeshSpec;

    fn generate(mesh: &MeshSnapshot, proxy: &Proxy, ty: Ty) -> Vec<sextant_xds::Resource> {
        IstioGenerator
            .generate(
                mesh,
                proxy,
                &ResourceRequest {
                    type_url: ty.type_url(),
                    names: None,
                },
            )
            .unwrap()
    }

    /// A SotW response of `resources` as the server sends it, decoded by
    /// the client's codec; checks what it reads against the full types.
    fn sotw_response(ty: Ty, resources: &[sextant_xds::Resource]) -> Sized<LiteResponse> {
        let full = DiscoveryResponse {
            version_info: "v1".into(),
            resources: resources.iter().map(|r| r.any()).collect(),
            type_url: ty.type_url().into(),
            nonce: "n1".into(),
            ..Default::default()
        };
        let wire = full.encode_to_vec();
        let lite = decode_sized::<LiteResponse>(&mut Bytes::from(wire.clone())).unwrap();
        assert_eq!(lite.bytes, wire.len() as u64);
        assert_eq!(lite.bytes, full.encoded_len() as u64);
        assert_eq!(lite.message.version_info, "v1");
        assert_eq!(lite.message.nonce, "n1");
        assert_eq!(Ty::of(&lite.message.type_url), Some(ty));
        let named = sotw_named(ty, &lite.message).unwrap();
        assert_eq!(named.len(), resources.len());
        for ((name, body), r) in named.iter().zip(resources) {
            assert_eq!(*name, r.name);
            assert_eq!(body.as_ref(), r.value());
            assert_eq!(content_hash(body), content_hash(r.value()));
        }
        lite
    }

    /// The lite Delta decoding reads what the full types read.
    #[test]
    fn lite_delta_reads_what_the_full_types_read() {
        let spec = MeshSpec::new(3);
        let mesh = MeshSnapshot::build(spec.config_snapshot().unwrap());
        let mut proxy = Proxy::from_node(Some(&spec.node(0))).unwrap();
        // As the server sets it on a Delta ADS stream.
        proxy.vhds = true;
        for ty in Ty::ALL {
            let resources = generate(&mesh, &proxy, ty);
            assert!(!resources.is_empty(), "{ty:?}");
            let full = DeltaDiscoveryResponse {
                system_version_info: "v1".into(),
                resources: resources
                    .iter()
                    .map(|r| Resource {
                        name: r.name.clone(),
                        version: "3".into(),
                        resource: Some(r.any()),
                        ..Default::default()
                    })
                    .collect(),
                type_url: ty.type_url().into(),
                nonce: "n1".into(),
                removed_resources: vec!["gone".into()],
                ..Default::default()
            };
            let wire = full.encode_to_vec();
            let lite = decode_sized::<LiteDeltaResponse>(&mut Bytes::from(wire.clone())).unwrap();
            assert_eq!(lite.bytes, wire.len() as u64);
            assert_eq!(lite.bytes, full.encoded_len() as u64);
            assert_eq!(lite.message.nonce, "n1");
            assert_eq!(lite.message.removed_resources, vec!["gone".to_string()]);
            assert_eq!(Ty::of(&lite.message.type_url), Some(ty));
            let named = delta_named(ty, &lite.message).unwrap();
            assert_eq!(named.len(), resources.len());
            for ((name, body), r) in named.iter().zip(&resources) {
                assert_eq!(*name, r.name);
                assert_eq!(content_hash(body), content_hash(r.value()));
            }
        }
    }

    /// A SotW request with shared names is the DiscoveryRequest it stands
    /// for, byte for byte.
    #[test]
    fn sotw_requests_encode_as_discovery_requests() {
        let spec = MeshSpec::new(3);
        let names: Vec<Arc<str>> = vec!["outbound|80||a".into(), "outbound|80||b".into()];
        let full = DiscoveryRequest {
            version_info: "v1".into(),
            node: Some(spec.node(0)),
            resource_names: vec!["first".into(), names[0].to_string(), names[1].to_string()],
            type_url: Ty::Eds.type_url().into(),
            response_nonce: "n1".into(),
            ..Default::default()
        };
        let lite = SotwRequest {
            request: DiscoveryRequest {
                resource_names: vec!["first".into()],
                ..full.clone()
            },
            names,
        };
        let mut wire = Vec::new();
        lite.encode_into(&mut wire).unwrap();
        assert_eq!(wire, full.encode_to_vec());
        let mut wire = Vec::new();
        SotwRequest {
            request: DiscoveryRequest::default(),
            names: Vec::new(),
        }
        .encode_into(&mut wire)
        .unwrap();
        assert!(wire.is_empty());
    }

    /// Field 1 read in place agrees with prost on odd encodings.
    #[test]
    fn first_string_reads_as_prost() {
        #[derive(Clone, PartialEq, Message)]
        struct Sample {
            #[prost(string, tag = "1")]
            name: String,
            #[prost(uint64, tag = "2")]
            number: u64,
            #[prost(fixed32, tag = "3")]
            f32: u32,
            #[prost(fixed64, tag = "4")]
            f64: u64,
            #[prost(bytes = "vec", tag = "5")]
            blob: Vec<u8>,
        }
        let sample = Sample {
            name: "outbound|80||a.b".into(),
            number: u64::MAX,
            f32: 7,
            f64: 9,
            blob: vec![1; 300],
        };
        let mut wire = Sample::default().encode_to_vec();
        assert_eq!(first_string(&wire).unwrap(), "");
        wire = sample.encode_to_vec();
        assert_eq!(first_string(&wire).unwrap(), sample.name);
        // Fields out of order, and a repeated field 1: the last counts.
        let mut odd = Sample {
            blob: vec![2; 3],
            ..Default::default()
        }
        .encode_to_vec();
        odd.extend(sample.encode_to_vec());
        odd.extend(
            Sample {
                name: "last".into(),
                ..Default::default()
            }
            .encode_to_vec(),
        );
        assert_eq!(first_string(&odd).unwrap(), "last");
        assert_eq!(Sample::decode(odd.as_slice()).unwrap().name, "last");
        assert!(first_string(&wire[..wire.len() - 1]).is_err());
        assert!(first_string(&[0x0a, 0x02, 0xff, 0xfe]).is_err());
    }

    /// The partial decoding agrees with the real types on what the
    /// generator makes of the synthetic mesh: EDS names, RDS names.
    #[test]
    fn heads_read_what_the_generator_writes() {
        let spec = MeshSpec::new(3);
        let mesh = MeshSnapshot::build(spec.config_snapshot().unwrap());
        let proxy = Proxy::from_node(Some(&spec.node(0))).unwrap();
        let interner = Interner::default();
        let mut state = State::default();

        let clusters = generate(&mesh, &proxy, Ty::Cds);
        let response = sotw_response(Ty::Cds, &clusters);
        let named = sotw_named(Ty::Cds, &response.message).unwrap();
        let applied = state
            .apply(Ty::Cds, named.into_iter(), &[], true, &interner)
            .unwrap();
        assert_eq!(applied.changed as usize, clusters.len());
        assert_eq!(applied.resources as usize, clusters.len());
        let expected: BTreeSet<String> = clusters
            .iter()
            .map(|r| Cluster::decode(r.value()).unwrap())
            .filter(|c| {
                c.cluster_discovery_type
                    == Some(ClusterDiscoveryType::Type(DiscoveryType::Eds as i32))
            })
            .map(|c| match c.eds_cluster_config {
                Some(e) if !e.service_name.is_empty() => e.service_name,
                _ => c.name,
            })
            .collect();
        let wanted: BTreeSet<String> = names(&interner, state.eds_wanted()).into_iter().collect();
        assert_eq!(wanted, expected);
        assert!(
            wanted.contains(&format!("outbound|8080|v1|{}", spec.host(1))),
            "{wanted:?}"
        );

        for ty in [Ty::Eds, Ty::Rds] {
            sotw_response(ty, &generate(&mesh, &proxy, ty));
        }

        let listeners = generate(&mesh, &proxy, Ty::Lds);
        let response = sotw_response(Ty::Lds, &listeners);
        let named = sotw_named(Ty::Lds, &response.message).unwrap();
        state
            .apply(Ty::Lds, named.into_iter(), &[], true, &interner)
            .unwrap();
        let routes = names(&interner, state.rds_wanted());
        assert!(routes.contains(&"8080".to_string()), "{routes:?}");

        // Route configurations name VHDS only for a proxy on it; the
        // client then wants their names there.
        let rds = |proxy: &Proxy, state: &mut State| {
            let response = sotw_response(Ty::Rds, &generate(&mesh, proxy, Ty::Rds));
            let named = sotw_named(Ty::Rds, &response.message).unwrap();
            state
                .apply(Ty::Rds, named.into_iter(), &[], false, &interner)
                .unwrap();
        };
        rds(&proxy, &mut state);
        assert!(state.vhds_wanted.is_empty());
        let mut on_vhds = proxy.clone();
        on_vhds.vhds = true;
        rds(&on_vhds, &mut state);
        assert_eq!(names(&interner, &state.vhds_wanted), ["8080"]);
        rds(&proxy, &mut state);
        assert!(state.vhds_wanted.is_empty(), "whole again: no VHDS");

        // The same clusters again change nothing; one fewer is a removal.
        let response = sotw_response(Ty::Cds, &clusters[1..]);
        let named = sotw_named(Ty::Cds, &response.message).unwrap();
        let applied = state
            .apply(Ty::Cds, named.into_iter(), &[], true, &interner)
            .unwrap();
        assert_eq!((applied.changed, applied.removed), (0, 1));
        // Delta: a removal by name.
        let name = clusters[1].name.clone();
        let applied = state
            .apply(Ty::Cds, std::iter::empty(), &[name], false, &interner)
            .unwrap();
        assert_eq!(
            (applied.resources, applied.changed, applied.removed),
            (0, 0, 1)
        );
    }
}

#[cfg(test)]
mod cost {
    //! What a response costs the client to take in, decoded with the full
    //! envoy types (as the client once did) and with the lite messages:
    //! `cargo test --release -p sextant-bench decode_cost -- --ignored --nocapture`
    use super::*;
    use sextant_generate::IstioGenerator;
    use sextant_generate::mesh::MeshSnapshot;
    use sextant_xds::pb::envoy::service::discovery::v3::DiscoveryResponse;
    use sextant_xds::{Generator, Proxy, ResourceRequest};

    use crate::grpc::decode_sized;
    use crate::mesh::MeshSpec;

    fn cpu() -> f64 {
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
        let t = |v: libc::timeval| v.tv_sec as f64 + v.tv_usec as f64 / 1e6;
        t(usage.ru_utime) + t(usage.ru_stime)
    }

    #[test]
    #[ignore]
    fn decode_cost() {
        let spec = MeshSpec::new(1000);
        let mesh = MeshSnapshot::build(spec.config_snapshot().unwrap());
        let proxy = Proxy::from_node(Some(&spec.node(0))).unwrap();
        for ty in Ty::ALL {
            let resources = IstioGenerator
                .generate(
                    &mesh,
                    &proxy,
                    &ResourceRequest {
                        type_url: ty.type_url(),
                        names: None,
                    },
                )
                .unwrap();
            let wire = DiscoveryResponse {
                version_info: "v1".into(),
                resources: resources.iter().map(|r| r.any()).collect(),
                type_url: ty.type_url().into(),
                nonce: "n1".into(),
                ..Default::default()
            }
            .encode_to_vec();
            let n = 100;
            // tonic's buffer: reused (old), or split off (new).
            let mut buf = bytes::BytesMut::with_capacity(8192);
            let interner = Interner::default();
            let start = cpu();
            for _ in 0..n {
                buf.reserve(wire.len());
                buf.extend_from_slice(&wire);
                let full = DiscoveryResponse::decode(&mut buf).unwrap();
                let mut total = full.encoded_len() as u64;
                for any in &full.resources {
                    let name = first_string(&any.value).unwrap().to_string();
                    total += u64::from(interner.id(&name) as u8);
                    total ^= content_hash(&any.value);
                }
                std::hint::black_box(total);
            }
            let old = (cpu() - start) / n as f64;
            let start = cpu();
            for _ in 0..n {
                buf.reserve(wire.len());
                buf.extend_from_slice(&wire);
                let lite = decode_sized::<LiteResponse>(&mut buf).unwrap();
                let mut total = lite.bytes;
                for (name, body) in sotw_named(ty, &lite.message).unwrap() {
                    total ^= Interner::key(name) ^ content_hash(body);
                }
                std::hint::black_box(total);
            }
            let new = (cpu() - start) / n as f64;
            eprintln!(
                "{ty:?} {} KB: old {:.3} ms, new {:.3} ms",
                wire.len() / 1024,
                old * 1e3,
                new * 1e3
            );
        }
    }
}
