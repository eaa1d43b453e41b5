//! Virtual hosts over VHDS.
//!
//! A sidecar's outbound route configuration holds a virtual host for every
//! service on its port: about a megabyte at 1,000 services, the same for
//! every sidecar. Sent whole, a VirtualService edit costs every proxy that
//! megabyte. Over VHDS each virtual host is a resource of its own, so the
//! edit sends the one virtual host it changed.
//!
//! Envoy's rules, which shape what is generated here:
//! - a route configuration with `vhds` keeps its own virtual hosts and adds
//!   those of VHDS; VHDS comes from ADS only on a Delta ADS stream (the
//!   server decides, see `Proxy::vhds`);
//! - Envoy subscribes to the route configuration's *name* and takes every
//!   virtual host named `ROUTE_CONFIG/...` (namespace matching);
//! - a removed resource removes the virtual host *of that name*, so the
//!   virtual host's name is its resource name.
//!
//! Every virtual host moves, the catch-all (`allow_any`) too: the route
//! configuration left behind is the same for any mesh and never changes.
use envoy_types::pb::envoy::config::route::v3::{RouteConfiguration, Vhds, VirtualHost};

use crate::envoy::ads;

/// Route configurations whose virtual hosts come over VHDS, and those
/// virtual hosts, renamed `ROUTE_CONFIG/VHOST`.
pub fn split(configs: Vec<RouteConfiguration>) -> (Vec<RouteConfiguration>, Vec<VirtualHost>) {
    let mut hosts = Vec::new();
    let configs = configs
        .into_iter()
        .map(|mut config| {
            for mut host in std::mem::take(&mut config.virtual_hosts) {
                host.name = resource_name(&config.name, &host.name);
                hosts.push(host);
            }
            config.vhds = Some(Vhds {
                config_source: Some(ads()),
            });
            config
        })
        .collect();
    (configs, hosts)
}

/// The VHDS resource name of virtual host `host` of route configuration
/// `route_config` (Envoy's naming convention).
pub fn resource_name(route_config: &str, host: &str) -> String {
    format!("{route_config}/{host}")
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use prost::Message;
    use sextant_config::object::{documents, parse};
    use sextant_config::store::ConfigStore;
    use sextant_xds::{Generated, Generator, Proxy, ResourceRequest, type_url};

    use super::*;
    use crate::class::tests::labelled;
    use crate::mesh::MeshSnapshot;

    const MESH: &str = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: reviews, namespace: default}
spec:
  hosts: [reviews.default.svc.cluster.local]
  ports: [{number: 9080, name: http, protocol: HTTP}]
  resolution: STATIC
  endpoints: [{address: 127.0.1.1, labels: {version: v1}}, {address: 127.0.1.2, labels: {version: v2}}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: ratings, namespace: default}
spec:
  hosts: [ratings.default.svc.cluster.local]
  ports: [{number: 9080, name: http, protocol: HTTP}]
  resolution: STATIC
  endpoints: [{address: 127.0.2.1}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: default}
spec:
  host: reviews
  subsets: [{name: v1, labels: {version: v1}}, {name: v2, labels: {version: v2}}]
"#;

    const REVIEWS_V2: &str = r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: default}
spec:
  hosts: [reviews]
  http: [{route: [{destination: {host: reviews, subset: v2}}]}]
"#;

    fn generated(mesh: &MeshSnapshot, proxy: &Proxy, type_url: &'static str) -> Generated {
        crate::istio::Translation::Istio
            .generate_parts(
                mesh,
                proxy,
                &ResourceRequest {
                    type_url,
                    names: None,
                },
            )
            .unwrap()
    }

    fn decoded<M: Message + Default>(g: &Generated) -> Vec<M> {
        g.sorted()
            .into_iter()
            .map(|r| M::decode(r.value()).unwrap())
            .collect()
    }

    fn on_vhds(mut proxy: Proxy) -> Proxy {
        proxy.vhds = true;
        proxy
    }

    /// A proxy on VHDS is sent the same virtual hosts as one that is not,
    /// each as a resource of its own; its route configurations keep
    /// everything else.
    #[test]
    fn a_proxy_on_vhds_gets_the_same_virtual_hosts_one_resource_each() {
        let store = ConfigStore::new();
        let apply = |yaml: &str| {
            for (_, doc) in documents(yaml) {
                store.apply("test", parse(doc.unwrap()).unwrap()).unwrap();
            }
        };
        apply(MESH);
        let mesh = MeshSnapshot::build(store.snapshot());
        let whole_proxy = labelled("127.0.2.1", &[("app", "ratings")]);
        let a = on_vhds(labelled("127.0.2.1", &[("app", "ratings")]));
        let b = on_vhds(labelled("127.0.3.1", &[("app", "productpage")]));

        let whole: Vec<RouteConfiguration> =
            decoded(&generated(&mesh, &whole_proxy, type_url::ROUTE));
        let shells: Vec<RouteConfiguration> = decoded(&generated(&mesh, &a, type_url::ROUTE));
        let hosts: Vec<VirtualHost> = decoded(&generated(&mesh, &a, type_url::VIRTUAL_HOST));
        assert!(!whole.is_empty() && whole.iter().all(|c| c.vhds.is_none()));
        let (expected_shells, mut expected_hosts) = split(whole.clone());
        // (Resources come sorted by name; Envoy matches domains in any
        // order.)
        expected_hosts.sort_by(|a, b| a.name.cmp(&b.name));
        assert_eq!(shells, expected_shells);
        assert_eq!(hosts, expected_hosts);
        let names: Vec<&str> = hosts.iter().map(|h| h.name.as_str()).collect();
        assert!(
            names.contains(&"9080/reviews.default.svc.cluster.local:9080"),
            "{names:?}"
        );
        assert!(
            generated(&mesh, &whole_proxy, type_url::VIRTUAL_HOST).is_empty(),
            "a proxy not on VHDS gets no virtual hosts of their own"
        );
        // One build per class: both types shared by the class's proxies.
        for type_url in [type_url::ROUTE, type_url::VIRTUAL_HOST] {
            assert!(Arc::ptr_eq(
                &generated(&mesh, &a, type_url).parts()[0],
                &generated(&mesh, &b, type_url).parts()[0]
            ));
        }

        // A VirtualService edit changes one virtual host, not the route
        // configuration.
        apply(REVIEWS_V2);
        let edited = MeshSnapshot::build_after(store.snapshot(), &mesh);
        assert!(generated(&edited, &a, type_url::ROUTE).same(&generated(
            &mesh,
            &a,
            type_url::ROUTE
        )));
        let before = generated(&mesh, &a, type_url::VIRTUAL_HOST);
        let after = generated(&edited, &a, type_url::VIRTUAL_HOST);
        let diff = before.diff(&after);
        let changed: Vec<&str> = diff.changed.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(changed, ["9080/reviews.default.svc.cluster.local:9080"]);
        assert!(diff.removed.is_empty());
    }

    /// Proxies without a class (gateways) are split the same way.
    #[test]
    fn a_gateway_on_vhds_gets_its_virtual_hosts_one_resource_each() {
        let yaml = format!(
            "{MESH}{}",
            r#"
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw, namespace: default}
spec:
  selector: {istio: ingressgateway}
  servers: [{port: {number: 8080, name: http, protocol: HTTP}, hosts: ["*"]}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: front, namespace: default}
spec:
  hosts: ["*"]
  gateways: [gw]
  http: [{route: [{destination: {host: reviews}}]}]
"#
        );
        let mesh = crate::cluster::tests::mesh(&yaml);
        let mut gateway = crate::cluster::tests::proxy("router", "127.0.5.1", "default");
        gateway.labels = [("istio".to_string(), "ingressgateway".to_string())].into();
        let whole: Vec<RouteConfiguration> = decoded(&generated(&mesh, &gateway, type_url::ROUTE));
        assert!(whole.iter().any(|c| !c.virtual_hosts.is_empty()));
        let gateway = on_vhds(gateway);
        let shells: Vec<RouteConfiguration> = decoded(&generated(&mesh, &gateway, type_url::ROUTE));
        let hosts: Vec<VirtualHost> = decoded(&generated(&mesh, &gateway, type_url::VIRTUAL_HOST));
        let (expected_shells, mut expected_hosts) = split(whole);
        expected_hosts.sort_by(|a, b| a.name.cmp(&b.name));
        assert_eq!((shells, hosts), (expected_shells, expected_hosts));
    }

    fn config(name: &str, hosts: &[&str]) -> RouteConfiguration {
        RouteConfiguration {
            name: name.to_string(),
            virtual_hosts: hosts
                .iter()
                .map(|h| VirtualHost {
                    name: h.to_string(),
                    domains: vec![h.to_string()],
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn every_virtual_host_moves_under_its_route_configurations_name() {
        let (configs, hosts) = split(vec![
            config("8080", &["a:8080", "allow_any"]),
            config("9080", &["a:9080"]),
        ]);
        assert_eq!(configs.len(), 2);
        for config in &configs {
            assert!(config.virtual_hosts.is_empty(), "{}", config.name);
            assert_eq!(config.vhds.as_ref().unwrap().config_source, Some(ads()));
        }
        let names: Vec<&str> = hosts.iter().map(|h| h.name.as_str()).collect();
        assert_eq!(names, ["8080/a:8080", "8080/allow_any", "9080/a:9080"]);
        assert_eq!(hosts[0].domains, ["a:8080"], "only the name changes");
    }
}
