//! The xDS server against tonic xDS clients, over real gRPC on loopback:
//! SotW and Delta, ACK/NACK, subscriptions, pushes, reconnects, and many
//! streams at once.
mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use sextant_xds::metrics::Metrics;
use sextant_xds::pb::envoy::service::cluster::v3::cluster_discovery_service_client::ClusterDiscoveryServiceClient;
use sextant_xds::pb::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DiscoveryRequest};
use sextant_xds::{ConnectionStatus, ServerOptions, TypeStatus};
use support::*;
use tokio_stream::wrappers::ReceiverStream;

fn map(entries: &[(&str, &str)]) -> BTreeMap<String, String> {
    entries
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn world() -> World {
    World::default()
        .with(CLUSTER, "c1", "one")
        .with(CLUSTER, "c2", "two")
        .with(ENDPOINT, "c1", "ep-one")
        .with(ENDPOINT, "c2", "ep-two")
        .with(LISTENER, "l1", "listener")
        .with(ROUTE, "8080", "routes")
}

fn type_status<'a>(
    syncz: &'a [ConnectionStatus],
    node_name: &str,
    type_url: &str,
) -> Option<&'a TypeStatus> {
    syncz
        .iter()
        .find(|c| c.node_id.contains(&format!("~{node_name}.")))
        .and_then(|c| c.types.get(type_url))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sotw_initial_subscribe_and_ack() {
    let server = TestServer::start(world()).await;
    let mut client = SotwClient::connect(server.channel().await, node("a", "ns")).await;

    client.subscribe(CLUSTER, &[]).await;
    let cds = client.recv().await;
    assert_eq!(cds.type_url, CLUSTER);
    assert_eq!(cds.version_info, "v1");
    assert!(!cds.nonce.is_empty());
    assert_eq!(contents(&cds), map(&[("c1", "one"), ("c2", "two")]));
    assert_eq!(cds.control_plane.as_ref().unwrap().identifier, "sextant");

    server
        .wait_syncz("the CDS response recorded", |s| {
            type_status(s, "a", CLUSTER).is_some_and(|t| t.status == "STALE")
        })
        .await;
    client.ack(&cds, &[]).await;
    server
        .wait_syncz("the ACK recorded", |s| {
            type_status(s, "a", CLUSTER)
                .is_some_and(|t| t.status == "SYNCED" && t.acked_version.as_deref() == Some("v1"))
        })
        .await;
    // An ACK is answered by nothing.
    client.expect_silence().await;

    let syncz = server.xds.syncz();
    assert_eq!(syncz.len(), 1);
    assert_eq!(syncz[0].namespace, "ns");
    assert_eq!(syncz[0].protocol, "sotw");
    assert_eq!(syncz[0].service, "ads");
    assert_eq!(server.xds.metrics().connected.get(), 1);
    assert_eq!(Metrics::count(&server.xds.metrics().pushes, CLUSTER), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sotw_nack_keeps_the_accepted_version_is_reported_and_never_loops() {
    let server = TestServer::start(world()).await;
    let mut client = SotwClient::connect(server.channel().await, node("a", "ns")).await;
    client.subscribe(CLUSTER, &[]).await;
    let v1 = client.recv().await;
    client.ack(&v1, &[]).await;

    let mut bad = world();
    bad.set(CLUSTER, "c2", "bad");
    let v2 = server.set(bad.clone());
    let pushed = client.recv().await;
    assert_eq!(pushed.version_info, v2);
    assert_eq!(contents(&pushed)["c2"], "bad");
    client.nack(&pushed, "v1", &[], "cluster c2: invalid").await;

    server
        .wait_syncz("the NACK recorded", |s| {
            type_status(s, "a", CLUSTER).is_some_and(|t| t.status == "NACKED")
        })
        .await;
    let syncz = server.xds.syncz();
    let status = type_status(&syncz, "a", CLUSTER).unwrap();
    assert_eq!(
        status.acked_version.as_deref(),
        Some("v1"),
        "a NACK keeps the last accepted version"
    );
    let nack = status.last_nack.as_ref().unwrap();
    assert_eq!(nack.message, "cluster c2: invalid");
    assert_eq!(nack.rejected_version, v2);
    assert_eq!(nack.kept_version, "v1");
    assert_eq!(Metrics::count(&server.xds.metrics().rejects, CLUSTER), 1);
    assert_eq!(server.xds.metrics().rejecting[0].get(), 1);

    // Not resent: neither in answer to the NACK, nor on a snapshot that
    // leaves the rejected resources as they are.
    client.expect_silence().await;
    let mut unrelated = bad.clone();
    unrelated.set(ENDPOINT, "c1", "other");
    server.set(unrelated.clone());
    client.expect_silence().await;

    // A fix is pushed and accepted.
    let mut fixed = unrelated;
    fixed.set(CLUSTER, "c2", "fixed");
    let v4 = server.set(fixed);
    let pushed = client.recv().await;
    assert_eq!(pushed.version_info, v4);
    assert_eq!(contents(&pushed)["c2"], "fixed");
    client.ack(&pushed, &[]).await;
    server
        .wait_syncz("the fix ACKed", |s| {
            type_status(s, "a", CLUSTER).is_some_and(|t| {
                t.status == "SYNCED" && t.acked_version.as_deref() == Some(v4.as_str())
            })
        })
        .await;
    assert_eq!(server.xds.metrics().rejecting[0].get(), 0);
    let syncz = server.xds.syncz();
    assert!(
        type_status(&syncz, "a", CLUSTER)
            .unwrap()
            .last_nack
            .is_some(),
        "the last NACK stays reported"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sotw_change_reaches_only_the_proxies_it_concerns() {
    let base = world().with_in("red", CLUSTER, "red-only", "r1").with_in(
        "blue",
        CLUSTER,
        "blue-only",
        "b1",
    );
    let server = TestServer::start(base.clone()).await;
    let channel = server.channel().await;
    let mut red = SotwClient::connect(channel.clone(), node("r", "red")).await;
    let mut blue = SotwClient::connect(channel, node("b", "blue")).await;
    for client in [&mut red, &mut blue] {
        client.subscribe(CLUSTER, &[]).await;
        let initial = client.recv().await;
        assert_eq!(initial.resources.len(), 3);
        client.ack(&initial, &[]).await;
    }
    let pushes_before = Metrics::count(&server.xds.metrics().pushes, CLUSTER);

    let changed = base.clone().with_in("red", CLUSTER, "red-only", "r2");
    let version = server.set(changed);
    let pushed = red.recv().await;
    assert_eq!(pushed.version_info, version);
    assert_eq!(contents(&pushed)["red-only"], "r2");
    assert_eq!(pushed.resources.len(), 3, "CDS is state of the world");
    blue.expect_silence().await;
    assert_eq!(
        Metrics::count(&server.xds.metrics().pushes, CLUSTER),
        pushes_before + 1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sotw_named_subscriptions_and_resubscribe() {
    let server = TestServer::start(world().with(ENDPOINT, "c3", "ep-three")).await;
    let mut client = SotwClient::connect(server.channel().await, node("a", "ns")).await;

    client.subscribe(ENDPOINT, &["c1"]).await;
    let first = client.recv().await;
    assert_eq!(contents(&first), map(&[("c1", "ep-one")]));

    // Resubscribe with one more name (in the ACK): the new one is sent.
    client.ack(&first, &["c1", "c2"]).await;
    let second = client.recv().await;
    assert_eq!(
        contents(&second),
        map(&[("c2", "ep-two")]),
        "only the newly named resource"
    );

    // Drop c1: nothing to send.
    client.ack(&second, &["c2"]).await;
    client.expect_silence().await;

    // A change to an unsubscribed resource is not pushed; to a subscribed one, it is, alone.
    let mut w = world().with(ENDPOINT, "c3", "ep-three");
    w.set(ENDPOINT, "c1", "ep-one-changed");
    server.set(w.clone());
    client.expect_silence().await;
    w.set(ENDPOINT, "c2", "ep-two-changed");
    w.set(ENDPOINT, "c3", "ep-three-changed");
    server.set(w);
    let pushed = client.recv().await;
    assert_eq!(contents(&pushed), map(&[("c2", "ep-two-changed")]));

    // Naming a resource again sends it again, though unchanged.
    client.ack(&pushed, &["c1", "c2"]).await;
    let again = client.recv().await;
    assert_eq!(contents(&again), map(&[("c1", "ep-one-changed")]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sotw_push_is_in_warming_safe_order() {
    let server = TestServer::start(world()).await;
    let mut client = SotwClient::connect(server.channel().await, node("a", "ns")).await;
    // Subscribe in the "wrong" order.
    for (type_url, names) in [
        (ROUTE, vec!["8080"]),
        (LISTENER, vec![]),
        (ENDPOINT, vec!["c1", "c2"]),
        (CLUSTER, vec![]),
    ] {
        client.subscribe(type_url, &names).await;
        let response = client.recv().await;
        assert_eq!(response.type_url, type_url);
        client.ack(&response, &names).await;
    }
    let mut w = world();
    for (type_url, name) in [
        (ROUTE, "8080"),
        (LISTENER, "l1"),
        (ENDPOINT, "c1"),
        (CLUSTER, "c1"),
    ] {
        w.set(type_url, name, "changed");
    }
    server.set(w);
    let mut order = Vec::new();
    for _ in 0..4 {
        order.push(client.recv().await.type_url);
    }
    assert_eq!(order, vec![CLUSTER, ENDPOINT, LISTENER, ROUTE]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sotw_stale_nonce_is_ignored() {
    let server = TestServer::start(world()).await;
    let mut client = SotwClient::connect(server.channel().await, node("a", "ns")).await;
    client.subscribe(ENDPOINT, &["c1"]).await;
    let first = client.recv().await;
    let mut w = world();
    w.set(ENDPOINT, "c1", "newer");
    server.set(w);
    let second = client.recv().await;
    // A resubscription riding on the old nonce is superseded: ignored.
    client.ack(&first, &["c1", "c2"]).await;
    client.expect_silence().await;
    // The same on the latest nonce is honoured.
    client.ack(&second, &["c1", "c2"]).await;
    assert_eq!(contents(&client.recv().await), map(&[("c2", "ep-two")]));
    assert!(Metrics::count(&server.xds.metrics().expired_nonce, ENDPOINT) >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sotw_reconnect_gets_a_full_consistent_view() {
    let server = TestServer::start(world()).await;
    let channel = server.channel().await;
    let mut client = SotwClient::connect(channel.clone(), node("a", "ns")).await;
    client.subscribe(CLUSTER, &[]).await;
    let cds = client.recv().await;
    client.ack(&cds, &[]).await;
    client.subscribe(ENDPOINT, &["c1", "c2"]).await;
    let eds = client.recv().await;
    client.ack(&eds, &["c1", "c2"]).await;
    drop(client);
    server
        .wait_syncz("the old stream gone", |s| s.is_empty())
        .await;

    // Meanwhile the config changed.
    let mut w = world();
    w.set(CLUSTER, "c3", "three");
    server.set(w);

    // Envoy reconnects telling the version it has, without a nonce.
    let mut client = SotwClient::connect(channel, node("a", "ns")).await;
    client
        .send(DiscoveryRequest {
            type_url: CLUSTER.into(),
            version_info: "v1".into(),
            ..Default::default()
        })
        .await;
    let cds = client.recv().await;
    assert_eq!(cds.version_info, "v2");
    assert_eq!(
        contents(&cds).keys().cloned().collect::<Vec<_>>(),
        vec!["c1", "c2", "c3"]
    );
    client
        .send(DiscoveryRequest {
            type_url: ENDPOINT.into(),
            version_info: "v1".into(),
            resource_names: names(&["c1", "c2"]),
            ..Default::default()
        })
        .await;
    let eds = client.recv().await;
    assert_eq!(
        contents(&eds),
        map(&[("c1", "ep-one"), ("c2", "ep-two")]),
        "everything, though unchanged"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delta_add_update_remove_sends_only_changes() {
    let server = TestServer::start(world()).await;
    let mut client = DeltaClient::connect(server.channel().await, node("a", "ns")).await;

    client.subscribe(CLUSTER, &[], &[]).await;
    let initial = client.recv().await;
    assert_eq!(
        delta_contents(&initial),
        map(&[("c1", "one"), ("c2", "two")])
    );
    assert!(initial.removed_resources.is_empty());
    assert_eq!(initial.system_version_info, "v1");
    client.ack(&initial).await;
    server
        .wait_syncz("the ACK recorded", |s| {
            type_status(s, "a", CLUSTER).is_some_and(|t| t.status == "SYNCED")
        })
        .await;
    client.expect_silence().await;

    // Add.
    let mut w = world();
    w.set(CLUSTER, "c3", "three");
    server.set(w.clone());
    let added = client.recv().await;
    assert_eq!(delta_contents(&added), map(&[("c3", "three")]));
    assert!(added.removed_resources.is_empty());
    client.ack(&added).await;

    // Update.
    w.set(CLUSTER, "c1", "one-v2");
    server.set(w.clone());
    let updated = client.recv().await;
    assert_eq!(delta_contents(&updated), map(&[("c1", "one-v2")]));
    client.ack(&updated).await;

    // Remove.
    w.remove(CLUSTER, "c2");
    server.set(w.clone());
    let removed = client.recv().await;
    assert!(removed.resources.is_empty());
    assert_eq!(removed.removed_resources, names(&["c2"]));
    client.ack(&removed).await;

    // A snapshot with no change for this proxy sends nothing.
    w.set(LISTENER, "l2", "other type");
    server.set(w);
    client.expect_silence().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delta_reconnect_with_initial_resource_versions() {
    let server = TestServer::start(world()).await;
    let channel = server.channel().await;
    let mut client = DeltaClient::connect(channel.clone(), node("a", "ns")).await;
    client.subscribe(CLUSTER, &[], &[]).await;
    let initial = client.recv().await;
    let versions = delta_versions(&initial);
    client.ack(&initial).await;
    drop(client);
    server
        .wait_syncz("the old stream gone", |s| s.is_empty())
        .await;

    // While disconnected: c1 changes, c2 stays, c3 appears; the proxy also
    // remembers a "gone" it had from an even older server.
    let mut w = world();
    w.set(CLUSTER, "c1", "one-v2");
    w.set(CLUSTER, "c3", "three");
    server.set(w);

    let mut client = DeltaClient::connect(channel, node("a", "ns")).await;
    let mut initial_versions = versions.clone();
    initial_versions.insert("gone".into(), "0123".into());
    client
        .send(DeltaDiscoveryRequest {
            type_url: CLUSTER.into(),
            initial_resource_versions: initial_versions,
            ..Default::default()
        })
        .await;
    let resync = client.recv().await;
    assert_eq!(
        delta_contents(&resync),
        map(&[("c1", "one-v2"), ("c3", "three")]),
        "c2 is unchanged: not resent"
    );
    assert_eq!(resync.removed_resources, names(&["gone"]));

    // The same with nothing changed: an empty (but present) answer.
    let mut client2 = DeltaClient::connect(server.channel().await, node("b", "ns")).await;
    let mut all = delta_versions(&resync);
    all.insert("c2".into(), versions["c2"].clone());
    client2
        .send(DeltaDiscoveryRequest {
            type_url: CLUSTER.into(),
            initial_resource_versions: all,
            ..Default::default()
        })
        .await;
    let nothing = client2.recv().await;
    assert!(nothing.resources.is_empty() && nothing.removed_resources.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delta_named_subscriptions() {
    let server = TestServer::start(world()).await;
    let mut client = DeltaClient::connect(server.channel().await, node("a", "ns")).await;

    client.subscribe(ENDPOINT, &["c1", "missing"], &[]).await;
    let first = client.recv().await;
    assert_eq!(delta_contents(&first), map(&[("c1", "ep-one")]));
    assert_eq!(
        first.removed_resources,
        names(&["missing"]),
        "a named resource that does not exist is reported removed"
    );
    client.ack(&first).await;

    client.subscribe(ENDPOINT, &["c2"], &[]).await;
    let second = client.recv().await;
    assert_eq!(delta_contents(&second), map(&[("c2", "ep-two")]));
    assert!(
        second.removed_resources.is_empty(),
        "absence is reported once"
    );
    client.ack(&second).await;

    client.subscribe(ENDPOINT, &[], &["c1"]).await;
    client.expect_silence().await;

    // c1 is no longer followed; c2 is; "missing" appears.
    let mut w = world();
    w.set(ENDPOINT, "c1", "changed");
    w.set(ENDPOINT, "c2", "changed");
    w.set(ENDPOINT, "missing", "here now");
    server.set(w);
    let pushed = client.recv().await;
    assert_eq!(
        delta_contents(&pushed),
        map(&[("c2", "changed"), ("missing", "here now")])
    );
    client.ack(&pushed).await;

    // An unrelated change says nothing of names; "missing" going again
    // is reported.
    let mut w = world();
    w.set(ENDPOINT, "c2", "changed again");
    w.set(ENDPOINT, "missing", "here now");
    server.set(w);
    let pushed = client.recv().await;
    assert_eq!(delta_contents(&pushed), map(&[("c2", "changed again")]));
    assert!(pushed.removed_resources.is_empty());
    client.ack(&pushed).await;
    let mut w = world();
    w.set(ENDPOINT, "c2", "changed again");
    server.set(w);
    let pushed = client.recv().await;
    assert!(delta_contents(&pushed).is_empty());
    assert_eq!(pushed.removed_resources, names(&["missing"]));
}

/// VHDS: Envoy subscribes to a route configuration's name and is sent
/// every virtual host named `NAME/...`, changes and removals by resource
/// name; the namespace is never reported missing. Only Delta ADS streams
/// are put on VHDS, and only if the server says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delta_vhds_names_are_namespaces() {
    let hosts = || {
        world()
            .with(VIRTUAL_HOST, "8080/a", "a")
            .with(VIRTUAL_HOST, "8080/b", "b")
            .with(VIRTUAL_HOST, "9080/a", "other")
    };
    let server = TestServer::start(hosts()).await;
    let mut client = DeltaClient::connect(server.channel().await, node("a", "ns")).await;
    client.subscribe(VIRTUAL_HOST, &["8080"], &[]).await;
    let first = client.recv().await;
    assert_eq!(
        delta_contents(&first),
        map(&[("8080/a", "a"), ("8080/b", "b")])
    );
    assert!(first.removed_resources.is_empty(), "{first:?}");
    client.ack(&first).await;

    let mut w = hosts();
    w.set(VIRTUAL_HOST, "8080/a", "a2");
    w.entries
        .remove(&(VIRTUAL_HOST.to_string(), "8080/b".to_string()));
    w.set(VIRTUAL_HOST, "9080/a", "other2");
    server.set(w);
    let pushed = client.recv().await;
    assert_eq!(delta_contents(&pushed), map(&[("8080/a", "a2")]));
    assert_eq!(pushed.removed_resources, names(&["8080/b"]));
    client.ack(&pushed).await;
    client.expect_silence().await;

    let off = ServerOptions {
        vhds: false,
        ..ServerOptions::default()
    };
    let server = TestServer::start_with(hosts(), off).await;
    let mut client = DeltaClient::connect(server.channel().await, node("a", "ns")).await;
    client.subscribe(VIRTUAL_HOST, &["8080"], &[]).await;
    let first = client.recv().await;
    assert!(delta_contents(&first).is_empty(), "VHDS off: {first:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delta_nack_is_reported_and_not_resent() {
    let server = TestServer::start(world()).await;
    let mut client = DeltaClient::connect(server.channel().await, node("a", "ns")).await;
    client.subscribe(CLUSTER, &[], &[]).await;
    let initial = client.recv().await;
    client.ack(&initial).await;

    let mut w = world();
    w.set(CLUSTER, "c1", "bad");
    let v2 = server.set(w.clone());
    let pushed = client.recv().await;
    client.nack(&pushed, "cluster c1 rejected").await;
    server
        .wait_syncz("the NACK recorded", |s| {
            type_status(s, "a", CLUSTER).is_some_and(|t| t.status == "NACKED")
        })
        .await;
    let syncz = server.xds.syncz();
    let status = type_status(&syncz, "a", CLUSTER).unwrap();
    assert_eq!(status.acked_version.as_deref(), Some("v1"));
    let nack = status.last_nack.as_ref().unwrap();
    assert_eq!(
        (nack.rejected_version.as_str(), nack.message.as_str()),
        (v2.as_str(), "cluster c1 rejected")
    );
    assert_eq!(Metrics::count(&server.xds.metrics().rejects, CLUSTER), 1);

    w.set(ENDPOINT, "c9", "unrelated");
    server.set(w);
    client.expect_silence().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standalone_services_and_fetch() {
    let server = TestServer::start(world()).await;
    let mut cds = ClusterDiscoveryServiceClient::new(server.channel().await);
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(DiscoveryRequest {
        node: Some(node("a", "ns")),
        ..Default::default() // the type is implicit
    })
    .await
    .unwrap();
    let mut responses = cds
        .stream_clusters(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let response = tokio::time::timeout(WAIT, responses.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(response.type_url, CLUSTER);
    assert_eq!(contents(&response).len(), 2);
    // Another type on the CDS service is a protocol error.
    tx.send(DiscoveryRequest {
        type_url: LISTENER.into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let status = tokio::time::timeout(WAIT, responses.message())
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);

    let fetched = cds
        .fetch_clusters(DiscoveryRequest {
            node: Some(node("a", "ns")),
            resource_names: names(&["c2"]),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(contents(&fetched), map(&[("c2", "two")]));
    assert_eq!(fetched.version_info, "v1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_node_is_refused() {
    let server = TestServer::start(world()).await;
    let mut bad = node("a", "ns");
    bad.id = "just-an-envoy".into();
    let mut client = SotwClient::connect(server.channel().await, bad).await;
    client.subscribe(CLUSTER, &[]).await;
    let status = client.recv_status().await;
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(
        status.message().contains("TYPE~IP~POD.NAMESPACE"),
        "{}",
        status.message()
    );
    assert!(server.xds.syncz().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_generation_error_is_counted_and_keeps_the_last_config() {
    let server = TestServer::start(world()).await;
    let mut client = SotwClient::connect(server.channel().await, node("a", "ns")).await;
    client.subscribe(CLUSTER, &[]).await;
    let initial = client.recv().await;
    client.ack(&initial, &[]).await;
    let mut w = world();
    w.set(CLUSTER, "c1", "FAIL");
    server.set(w);
    client.expect_silence().await;
    assert_eq!(
        Metrics::count(&server.xds.metrics().push_errors, CLUSTER),
        1
    );
}

/// A proxy that stops reading never delays the others, and when it reads
/// again it skips to the newest snapshot rather than replaying each one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_proxy_does_not_delay_the_others() {
    let options = ServerOptions {
        send_queue: 2,
        ..Default::default()
    };
    let big = "x".repeat(256 * 1024);
    let server = TestServer::start_with(World::default().with(CLUSTER, "c", "0"), options).await;
    // Separate HTTP/2 connections, as separate Envoys have.
    let mut stuck = SotwClient::connect(server.channel().await, node("stuck", "ns")).await;
    let mut healthy = SotwClient::connect(server.channel().await, node("healthy", "ns")).await;
    for client in [&mut stuck, &mut healthy] {
        client.subscribe(CLUSTER, &[]).await;
        let initial = client.recv().await;
        client.ack(&initial, &[]).await;
    }

    // The stuck proxy stops reading; 30 big snapshots fill its queues.
    let rounds = 30;
    let mut last = String::new();
    for i in 1..=rounds {
        last = server.set(World::default().with(CLUSTER, "c", &format!("{i}{big}")));
        let pushed = tokio::time::timeout(Duration::from_secs(10), healthy.recv())
            .await
            .unwrap_or_else(|_| panic!("the healthy proxy was delayed at round {i}"));
        let mut newest = pushed;
        // It may legitimately skip versions if pushes outrun it.
        while newest.version_info != last {
            newest = healthy.recv().await;
        }
        healthy.ack(&newest, &[]).await;
    }

    // The stuck proxy reads again: it gets what was queued, then the newest,
    // not every version in between.
    let mut seen = Vec::new();
    loop {
        let response = stuck.recv().await;
        seen.push(response.version_info.clone());
        if response.version_info == last {
            break;
        }
    }
    assert!(
        seen.len() < rounds,
        "the stuck proxy replayed every snapshot: {seen:?}"
    );
}

/// 1,000 streams on 10 HTTP/2 connections: all subscribe, all get the
/// initial config and a push.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_streams() {
    const CONNECTIONS: usize = 10;
    const STREAMS: usize = 100;
    let server = TestServer::start(world()).await;
    let mut tasks = tokio::task::JoinSet::new();
    let (pushed_tx, _) = tokio::sync::broadcast::channel::<()>(1);
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel::<()>(CONNECTIONS * STREAMS);
    for c in 0..CONNECTIONS {
        let channel = server.channel().await;
        for s in 0..STREAMS {
            let (channel, ready) = (channel.clone(), ready_tx.clone());
            let mut go = pushed_tx.subscribe();
            // Half SotW, half Delta.
            tasks.spawn(async move {
                let node = node(
                    &format!("p{c}-{s}"),
                    if s % 2 == 0 { "even" } else { "odd" },
                );
                if s % 2 == 0 {
                    let mut client = SotwClient::connect(channel, node).await;
                    client.subscribe(CLUSTER, &[]).await;
                    let initial = client.recv().await;
                    assert_eq!(initial.resources.len(), 2);
                    client.ack(&initial, &[]).await;
                    ready.send(()).await.unwrap();
                    go.recv().await.unwrap();
                    let pushed = client.recv().await;
                    assert_eq!(contents(&pushed)["c1"], "everyone");
                } else {
                    let mut client = DeltaClient::connect(channel, node).await;
                    client.subscribe(CLUSTER, &[], &[]).await;
                    let initial = client.recv().await;
                    assert_eq!(initial.resources.len(), 2);
                    client.ack(&initial).await;
                    ready.send(()).await.unwrap();
                    go.recv().await.unwrap();
                    let pushed = client.recv().await;
                    assert_eq!(delta_contents(&pushed), map(&[("c1", "everyone")]));
                }
            });
        }
    }
    drop(ready_tx);
    for _ in 0..CONNECTIONS * STREAMS {
        tokio::time::timeout(Duration::from_secs(60), ready_rx.recv())
            .await
            .expect("every stream subscribed in time")
            .unwrap();
    }
    assert_eq!(
        server.xds.metrics().connected.get(),
        (CONNECTIONS * STREAMS) as i64
    );
    assert_eq!(server.xds.syncz().len(), CONNECTIONS * STREAMS);

    let mut w = world();
    w.set(CLUSTER, "c1", "everyone");
    pushed_tx.send(()).unwrap();
    server.set(w);
    let all = async {
        while let Some(result) = tasks.join_next().await {
            result.expect("client task");
        }
    };
    tokio::time::timeout(Duration::from_secs(60), all)
        .await
        .expect("every stream got the push in time");
    assert_eq!(
        Metrics::count(&server.xds.metrics().pushes, CLUSTER),
        2 * (CONNECTIONS * STREAMS) as u64
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnect_all_ends_streams_and_proxies_can_come_back() {
    let server = TestServer::start(world()).await;
    let channel = server.channel().await;
    let mut client = SotwClient::connect(channel.clone(), node("a", "ns")).await;
    client.subscribe(CLUSTER, &[]).await;
    let initial = client.recv().await;
    client.ack(&initial, &[]).await;
    server.wait_syncz("one stream", |s| s.len() == 1).await;

    server.xds.disconnect_all();
    let end = tokio::time::timeout(WAIT, client.rx.message())
        .await
        .expect("stream ended in time");
    assert!(matches!(end, Ok(None)), "the stream ends cleanly: {end:?}");
    server.wait_syncz("no stream", |s| s.is_empty()).await;
    assert_eq!(server.xds.metrics().connected.get(), 0);

    let mut client = SotwClient::connect(channel, node("a", "ns")).await;
    client.subscribe(CLUSTER, &[]).await;
    assert_eq!(contents(&client.recv().await).len(), 2);
}

/// The push throttle: with one slot, a second proxy is served only once
/// the first has answered what it was sent; a proxy that never answers
/// gives its slot up after the push timeout. SotW and Delta share it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_push_slot_serves_proxies_in_turn_and_a_silent_proxy_times_out() {
    let options = ServerOptions {
        push_concurrency: 1,
        push_timeout: Duration::from_secs(2),
        ..ServerOptions::default()
    };
    let server = TestServer::start_with(world(), options).await;
    let mut a = SotwClient::connect(server.channel().await, node("a", "ns")).await;
    a.subscribe(CLUSTER, &[]).await;
    let a_cds = a.recv().await;

    let mut b = DeltaClient::connect(server.channel().await, node("b", "ns")).await;
    b.subscribe(CLUSTER, &[], &[]).await;
    b.expect_silence().await;
    a.ack(&a_cds, &[]).await;
    let b_cds = b.recv().await;
    assert_eq!(b_cds.resources.len(), 2);

    // b never answers: c waits for b's slot to time out, not forever.
    let mut c = SotwClient::connect(server.channel().await, node("c", "ns")).await;
    let asked = Instant::now();
    c.subscribe(CLUSTER, &[]).await;
    c.expect_silence().await;
    let c_cds = tokio::time::timeout(Duration::from_secs(10), c.recv())
        .await
        .expect("the silent proxy's slot expired");
    assert_eq!(contents(&c_cds).len(), 2);
    assert!(
        asked.elapsed() >= Duration::from_millis(1500),
        "c was served before b's slot timed out: {:?}",
        asked.elapsed()
    );
    c.ack(&c_cds, &[]).await;

    // A push reaches everyone, one after another as they answer.
    let mut w = world();
    w.set(CLUSTER, "c1", "turns");
    server.set(w);
    let turn = |r: &sextant_xds::pb::envoy::service::discovery::v3::DiscoveryResponse| {
        contents(r)["c1"].clone()
    };
    let (pushed_a, pushed_b, pushed_c) = tokio::time::timeout(Duration::from_secs(20), async {
        tokio::join!(
            async {
                let r = a.recv().await;
                a.ack(&r, &[]).await;
                turn(&r)
            },
            async {
                let r = b.recv().await;
                b.ack(&r).await;
                delta_contents(&r)
            },
            async {
                let r = c.recv().await;
                c.ack(&r, &[]).await;
                turn(&r)
            },
        )
    })
    .await
    .expect("every proxy got the push in turn");
    assert_eq!(pushed_a, "turns");
    assert_eq!(pushed_c, "turns");
    assert_eq!(pushed_b, map(&[("c1", "turns")]));
}
