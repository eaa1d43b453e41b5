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
use std::collections::{BTreeSet, HashMap};
use std::hash::BuildHasher;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use prost::Message;
use sextant_xds::pb::envoy::config::core::v3::Node;
use sextant_xds::pb::envoy::config::listener::v3::{Listener, filter};
use sextant_xds::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager;
use sextant_xds::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::RouteSpecifier;
use sextant_xds::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use sextant_xds::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use sextant_xds::pb::google::protobuf::Any;
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::transport::{Channel, Endpoint};

use crate::record::{Event, Interner, Recorder, Ty};

const HCM_TYPE_URL: &str = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";

/// SotW or Delta.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Sotw,
    Delta,
}

/// The first fields of every resource type the client names (`name` of
/// Cluster, Listener and RouteConfiguration, `cluster_name` of
/// ClusterLoadAssignment): SotW bodies carry no name outside the body.
#[derive(Clone, PartialEq, Message)]
struct NameOnly {
    #[prost(string, tag = "1")]
    name: String,
}

/// As much of a Cluster as says whether it takes endpoints from EDS and
/// under which name (`type` = EDS, `eds_cluster_config.service_name`).
/// prost skips the other fields without decoding them.
#[derive(Clone, PartialEq, Message)]
struct ClusterHead {
    #[prost(string, tag = "1")]
    name: String,
    #[prost(int32, tag = "2")]
    discovery_type: i32,
    #[prost(message, optional, tag = "3")]
    eds_cluster_config: Option<EdsClusterHead>,
}

#[derive(Clone, PartialEq, Message)]
struct EdsClusterHead {
    #[prost(string, tag = "2")]
    service_name: String,
}

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

/// Per type: name id -> content hash of what the client has.
#[derive(Default)]
struct Held {
    resources: foldhash::HashMap<u32, u64>,
    /// SotW: version and nonce of the last response, for the next request.
    version: String,
    nonce: String,
    received: bool,
}

/// What one client has and subscribes to.
#[derive(Default)]
struct State {
    held: [Held; 4],
    /// EDS clusters: cluster name id -> EDS resource name id.
    eds_of: HashMap<u32, u32>,
    eds_subscribed: BTreeSet<u32>,
    /// Listener name id -> the RDS names of its HTTP connection managers.
    routes_of: HashMap<u32, Vec<u32>>,
    rds_subscribed: BTreeSet<u32>,
    lds_requested: bool,
    rds_requested: bool,
}

/// What applying a response did.
struct Applied {
    resources: u32,
    changed: u32,
    removed: u32,
}

fn content_hash(body: &Any) -> u64 {
    foldhash::quality::FixedState::with_seed(0x05e4_7a47).hash_one(body.value.as_slice())
}

impl State {
    /// Takes in a response's resources (`(name, body)`), and `removed`
    /// names; a full-state response also removes what it does not list.
    fn apply<'a>(
        &mut self,
        ty: Ty,
        resources: impl Iterator<Item = (String, &'a Any)>,
        removed: &[String],
        full_state: bool,
        interner: &Interner,
    ) -> anyhow::Result<Applied> {
        let mut seen = Vec::new();
        let mut changed = Vec::new();
        let mut count = 0;
        let held = &mut self.held[ty.index()];
        for (name, body) in resources {
            count += 1;
            let id = interner.id(&name);
            let hash = content_hash(body);
            if held.resources.insert(id, hash) != Some(hash) {
                changed.push((id, body));
            }
            if full_state {
                seen.push(id);
            }
        }
        let mut gone: Vec<u32> = Vec::new();
        if full_state {
            let seen: foldhash::HashSet<u32> = seen.into_iter().collect();
            gone.extend(held.resources.keys().filter(|id| !seen.contains(id)));
        }
        for name in removed {
            let id = interner.id(name);
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
                for (id, body) in &changed {
                    let head =
                        ClusterHead::decode(body.value.as_slice()).context("decoding a Cluster")?;
                    if head.discovery_type == EDS {
                        let service_name = head
                            .eds_cluster_config
                            .map(|c| c.service_name)
                            .filter(|s| !s.is_empty());
                        let eds = match service_name {
                            Some(s) => interner.id(&s),
                            None => *id,
                        };
                        self.eds_of.insert(*id, eds);
                    } else {
                        self.eds_of.remove(id);
                    }
                }
                for id in &gone {
                    self.eds_of.remove(id);
                }
            }
            Ty::Lds => {
                for (id, body) in &changed {
                    let listener =
                        Listener::decode(body.value.as_slice()).context("decoding a Listener")?;
                    let routes = rds_names(&listener)?
                        .iter()
                        .map(|n| interner.id(n))
                        .collect();
                    self.routes_of.insert(*id, routes);
                }
                for id in &gone {
                    self.routes_of.remove(id);
                }
            }
            Ty::Eds | Ty::Rds => {}
        }
        Ok(Applied {
            resources: count,
            changed: changed.len() as u32,
            removed: gone.len() as u32,
        })
    }

    /// Forgets what is no longer subscribed (SotW: the names left out of
    /// the next request).
    fn unsubscribe(&mut self, ty: Ty, wanted: &BTreeSet<u32>) {
        self.held[ty.index()]
            .resources
            .retain(|id, _| wanted.contains(id));
    }

    fn eds_wanted(&self) -> BTreeSet<u32> {
        self.eds_of.values().copied().collect()
    }

    fn rds_wanted(&self) -> BTreeSet<u32> {
        self.routes_of.values().flatten().copied().collect()
    }

    /// Every subscribed name of a type has arrived.
    fn complete(&self, ty: Ty, subscribed: &BTreeSet<u32>) -> bool {
        let held = &self.held[ty.index()].resources;
        subscribed.iter().all(|id| held.contains_key(id))
    }

    fn clusters_warm(&self) -> bool {
        let cds = &self.held[Ty::Cds.index()];
        cds.received
            && !cds.resources.is_empty()
            && self.eds_subscribed == self.eds_wanted()
            && self.complete(Ty::Eds, &self.eds_subscribed)
    }

    /// CDS, EDS, LDS and RDS all there, non-empty and complete.
    fn full(&self) -> bool {
        let lds = &self.held[Ty::Lds.index()];
        self.clusters_warm()
            && lds.received
            && !lds.resources.is_empty()
            && self.rds_subscribed == self.rds_wanted()
            && self.complete(Ty::Rds, &self.rds_subscribed)
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

fn names(interner: &Interner, ids: &BTreeSet<u32>) -> Vec<String> {
    ids.iter()
        .map(|id| interner.name(*id).to_string())
        .collect()
}

async fn sotw(
    index: usize,
    channel: Channel,
    node: Node,
    recorder: &Recorder,
) -> anyhow::Result<std::convert::Infallible> {
    let interner = &recorder.interner;
    let (tx, rx) = mpsc::unbounded_channel::<DiscoveryRequest>();
    let send = |request: DiscoveryRequest| {
        tx.send(request)
            .map_err(|_| anyhow::anyhow!("request stream closed"))
    };
    send(DiscoveryRequest {
        node: Some(node),
        type_url: Ty::Cds.type_url().to_string(),
        ..Default::default()
    })?;
    let mut client =
        AggregatedDiscoveryServiceClient::new(channel).max_decoding_message_size(usize::MAX);
    let mut responses = client
        .stream_aggregated_resources(UnboundedReceiverStream::new(rx))
        .await
        .context("opening the ADS stream")?
        .into_inner();
    let mut state = State::default();
    // A request for a type in the current state (names, last version and
    // nonce): an ACK, or a subscription change.
    let request = |state: &State, ty: Ty, names: Vec<String>| {
        let held = &state.held[ty.index()];
        DiscoveryRequest {
            type_url: ty.type_url().to_string(),
            version_info: held.version.clone(),
            response_nonce: held.nonce.clone(),
            resource_names: names,
            ..Default::default()
        }
    };
    while let Some(response) = responses.message().await.context("ADS stream")? {
        let received = Instant::now();
        let bytes = response.encoded_len() as u64;
        let DiscoveryResponse {
            version_info,
            resources,
            type_url,
            nonce,
            ..
        } = response;
        let Some(ty) = Ty::of(&type_url) else {
            bail!("unexpected response type {type_url}");
        };
        let mut named = Vec::with_capacity(resources.len());
        for body in &resources {
            let name = NameOnly::decode(body.value.as_slice())
                .with_context(|| format!("decoding the name of a {}", ty.as_str()))?
                .name;
            named.push((name, body));
        }
        let applied = state.apply(ty, named.into_iter(), &[], ty.full_state(), interner)?;
        let held = &mut state.held[ty.index()];
        held.version = version_info;
        held.nonce = nonce;
        match ty {
            Ty::Cds => {
                let wanted = state.eds_wanted();
                if wanted != state.eds_subscribed && !wanted.is_empty() {
                    state.unsubscribe(Ty::Eds, &wanted);
                    state.eds_subscribed = wanted;
                    send(request(
                        &state,
                        Ty::Eds,
                        names(interner, &state.eds_subscribed),
                    ))?;
                }
                send(request(&state, Ty::Cds, Vec::new()))?;
            }
            Ty::Eds => send(request(
                &state,
                Ty::Eds,
                names(interner, &state.eds_subscribed),
            ))?,
            Ty::Lds => {
                let wanted = state.rds_wanted();
                send(request(&state, Ty::Lds, Vec::new()))?;
                if wanted != state.rds_subscribed && !wanted.is_empty() {
                    state.unsubscribe(Ty::Rds, &wanted);
                    state.rds_subscribed = wanted;
                    state.rds_requested = true;
                    send(request(
                        &state,
                        Ty::Rds,
                        names(interner, &state.rds_subscribed),
                    ))?;
                }
            }
            Ty::Rds => send(request(
                &state,
                Ty::Rds,
                names(interner, &state.rds_subscribed),
            ))?,
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
        if state.full() {
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
    let mut client =
        AggregatedDiscoveryServiceClient::new(channel).max_decoding_message_size(usize::MAX);
    let mut responses = client
        .delta_aggregated_resources(UnboundedReceiverStream::new(rx))
        .await
        .context("opening the Delta ADS stream")?
        .into_inner();
    let mut state = State::default();
    let subscription = |ty: Ty, add: &BTreeSet<u32>, drop: &BTreeSet<u32>| DeltaDiscoveryRequest {
        type_url: ty.type_url().to_string(),
        resource_names_subscribe: names(interner, add),
        resource_names_unsubscribe: names(interner, drop),
        ..Default::default()
    };
    while let Some(response) = responses.message().await.context("Delta ADS stream")? {
        let received = Instant::now();
        let bytes = response.encoded_len() as u64;
        let DeltaDiscoveryResponse {
            resources,
            type_url,
            removed_resources,
            nonce,
            ..
        } = response;
        let Some(ty) = Ty::of(&type_url) else {
            bail!("unexpected response type {type_url}");
        };
        let mut named = Vec::with_capacity(resources.len());
        for r in &resources {
            let body = r
                .resource
                .as_ref()
                .with_context(|| format!("{} {}: no body", ty.as_str(), r.name))?;
            named.push((r.name.clone(), body));
        }
        let applied = state.apply(ty, named.into_iter(), &removed_resources, false, interner)?;
        // Subscription changes first, then the ACK (as Envoy: new clusters
        // ask for their endpoints while the CDS response is processed).
        let follow = match ty {
            Ty::Cds => Some((Ty::Eds, state.eds_wanted())),
            Ty::Lds => Some((Ty::Rds, state.rds_wanted())),
            Ty::Eds | Ty::Rds => None,
        };
        if let Some((child, wanted)) = follow {
            let subscribed = match child {
                Ty::Eds => &mut state.eds_subscribed,
                _ => &mut state.rds_subscribed,
            };
            let add: BTreeSet<u32> = wanted.difference(subscribed).copied().collect();
            let drop: BTreeSet<u32> = subscribed.difference(&wanted).copied().collect();
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
        if state.full() {
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
    use sextant_xds::{Generator, Proxy, ResourceRequest};

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
        let named = clusters.iter().map(|r| {
            let name = NameOnly::decode(r.body.value.as_slice()).unwrap().name;
            assert_eq!(name, r.name);
            (name, &r.body)
        });
        let applied = state.apply(Ty::Cds, named, &[], true, &interner).unwrap();
        assert_eq!(applied.changed as usize, clusters.len());
        let expected: BTreeSet<String> = clusters
            .iter()
            .map(|r| Cluster::decode(r.body.value.as_slice()).unwrap())
            .filter(|c| {
                c.cluster_discovery_type
                    == Some(ClusterDiscoveryType::Type(DiscoveryType::Eds as i32))
            })
            .map(|c| match c.eds_cluster_config {
                Some(e) if !e.service_name.is_empty() => e.service_name,
                _ => c.name,
            })
            .collect();
        let wanted: BTreeSet<String> = names(&interner, &state.eds_wanted()).into_iter().collect();
        assert_eq!(wanted, expected);
        assert!(
            wanted.contains(&format!("outbound|8080|v1|{}", spec.host(1))),
            "{wanted:?}"
        );

        let listeners = generate(&mesh, &proxy, Ty::Lds);
        let named = listeners.iter().map(|r| (r.name.clone(), &r.body));
        state.apply(Ty::Lds, named, &[], true, &interner).unwrap();
        let routes = names(&interner, &state.rds_wanted());
        assert!(routes.contains(&"8080".to_string()), "{routes:?}");

        // The same clusters again change nothing; one fewer is a removal.
        let named = clusters.iter().skip(1).map(|r| (r.name.clone(), &r.body));
        let applied = state.apply(Ty::Cds, named, &[], true, &interner).unwrap();
        assert_eq!((applied.changed, applied.removed), (0, 1));
    }
}
