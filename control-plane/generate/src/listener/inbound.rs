//! The filter chains of a sidecar's inbound ports, as the workload's
//! PeerAuthentication ([`crate::peer_authentication`]) secures them, in
//! Istio's shapes (`filterchain_options.go`):
//!
//! - DISABLE: one plain text chain (no transport match, as before mutual
//!   TLS existed: an application's own TLS passes through on TCP ports).
//! - PERMISSIVE (Istio's default): a mutual TLS chain matching transport
//!   `tls` and Istio's client ALPN values (`istio-peer-exchange`, `istio`,
//!   `istio-http/1.0`, `istio-http/1.1`, `istio-h2`), terminating Istio's
//!   mutual TLS ([`crate::mtls::istio_mutual_downstream`]); a plain text
//!   chain matching transport `raw_buffer`; on TCP ports, a third chain for
//!   TLS without Istio's ALPN (the application's own TLS), passed on as is.
//!   The TLS inspector tells them apart.
//! - STRICT: the mutual TLS chain (transport `tls`) only.
//!
//! Chains are named after the port's listener (`0.0.0.0_9080`): the plain
//! text chain takes the name, the others add `-mtls` and `-tls`.
//!
//! The TLS inspector waits for the client's first bytes. As in Istio,
//! inbound listeners continue when it times out (Envoy's default, 15 s), so
//! a server-first protocol (MySQL, SMTP) on a PERMISSIVE port gets through
//! in plain text only after that delay: give such ports STRICT or DISABLE,
//! as Istio's documentation says.
//!
//! A proxy without SDS (no agent, so no certificate, see
//! [`crate::mtls::has_sds`]) serves the plain text half of PERMISSIVE
//! only, and refuses STRICT ports (a chain to `BlackHoleCluster`, with a
//! warning): it cannot accept mutual TLS, and must not accept plain text.
//!
//! A Sidecar ingress `tls` (TLS terminated with certificate files) applies
//! where the port's mode is DISABLE, as in Istio, and on PERMISSIVE ports
//! of proxies without SDS (whose only chain it secures); elsewhere mutual
//! TLS wins and the setting is ignored with a warning.
//!
//! Every chain of a port carries the same network filters,
//! [`super::sidecar::inbound_filters`]: the one place the inbound HTTP
//! connection manager and TCP proxy are built.
use std::collections::BTreeSet;

use sextant_api::networking::gateway::ServerTlsSettings;
use sextant_xds::Proxy;
use sextant_xds::pb::envoy::config::listener::v3::{Filter, FilterChain, FilterChainMatch};

use super::gateway::ingress_tls;
use super::{TcpTarget, tcp_proxy};
use crate::envoy::u32_value;
use crate::mesh::MeshSnapshot;
use crate::mtls;
use crate::names;
use crate::peer_authentication::{EffectivePolicy, MtlsMode, PeerAuthentications};

/// Envoy's transport protocols, as the TLS inspector sets them.
const TLS: &str = "tls";
const RAW_BUFFER: &str = "raw_buffer";

/// How a sidecar secures its inbound ports: its workload's
/// PeerAuthentication, and whether it has a certificate.
#[derive(Clone, Debug)]
pub(super) struct InboundSecurity<'a> {
    proxy: &'a Proxy,
    policy: EffectivePolicy,
    sds: bool,
}

impl<'a> InboundSecurity<'a> {
    pub(super) fn new(mesh: &MeshSnapshot, proxy: &'a Proxy) -> InboundSecurity<'a> {
        InboundSecurity {
            proxy,
            policy: PeerAuthentications::new(mesh).for_workload(&proxy.namespace, &proxy.labels),
            sds: mtls::has_sds(proxy),
        }
    }

    /// The chains of inbound port `port` (the workload's port), named after
    /// `name`, forwarding through `filters`; `ingress` is the Sidecar
    /// ingress `tls` of the port, if any. An error for an ingress `tls`
    /// that cannot be built, which loses the port (and only the port).
    pub(super) fn port_chains(
        &self,
        name: &str,
        port: u32,
        http: bool,
        filters: &dyn Fn() -> Vec<Filter>,
        ingress: Option<&ServerTlsSettings>,
    ) -> Result<Vec<FilterChain>, String> {
        let mode = self.policy.mode_for_port(port);
        let socket = ingress_tls(ingress, self.proxy, port)?;
        if let Some(socket) = socket {
            let applies = mode == MtlsMode::Disable || (mode == MtlsMode::Permissive && !self.sds);
            if applies {
                let mut c = chain(name, None, filters());
                c.transport_socket = Some(socket);
                return Ok(vec![c]);
            }
            tracing::warn!(
                proxy = %self.proxy.id,
                "Sidecar ingress port {port}: tls is ignored, PeerAuthentication mode {mode:?} asks for Istio's mutual TLS (as Istio, ingress tls applies where the mode is DISABLE)"
            );
        }
        Ok(self.mode_chains(mode, name, http, filters))
    }

    /// The chains for connections to ports without an inbound cluster,
    /// forwarded to their original destination (Istio's
    /// `InboundPassthroughCluster`): the workload's mode for every
    /// port, and each port-level mode of a port not in `served`, matched on
    /// that port.
    pub(super) fn passthrough_chains(&self, served: &BTreeSet<u32>) -> Vec<FilterChain> {
        let filters = || {
            vec![tcp_proxy(&TcpTarget::Cluster(
                names::INBOUND_PASSTHROUGH_CLUSTER.to_string(),
            ))]
        };
        let mut out = Vec::new();
        for (&port, &mode) in &self.policy.ports {
            if served.contains(&port) || port == names::VIRTUAL_INBOUND_PORT {
                continue;
            }
            let name = format!("{}_{port}", names::VIRTUAL_INBOUND);
            out.extend(
                self.mode_chains(mode, &name, false, &filters)
                    .into_iter()
                    .map(|c| on_port(c, port)),
            );
        }
        out.extend(self.mode_chains(self.policy.mode, names::VIRTUAL_INBOUND, false, &filters));
        out
    }

    /// The chains of one port in `mode` (see the module documentation).
    fn mode_chains(
        &self,
        mode: MtlsMode,
        name: &str,
        http: bool,
        filters: &dyn Fn() -> Vec<Filter>,
    ) -> Vec<FilterChain> {
        match (mode, self.sds) {
            (MtlsMode::Disable, _) | (MtlsMode::Permissive, false) => {
                vec![chain(name, None, filters())]
            }
            (MtlsMode::Strict, false) => {
                tracing::warn!(
                    proxy = %self.proxy.id,
                    chain = name,
                    "PeerAuthentication STRICT, but the proxy has no agent serving SDS (node metadata {} is not \"true\"), so no certificate: connections are refused",
                    mtls::SDS_METADATA_KEY
                );
                vec![chain(
                    name,
                    None,
                    vec![tcp_proxy(&TcpTarget::Cluster(
                        names::BLACKHOLE_CLUSTER.to_string(),
                    ))],
                )]
            }
            (MtlsMode::Strict, true) => vec![self.mutual_tls_chain(name, http, &[], filters)],
            (MtlsMode::Permissive, true) => {
                let mut out = vec![
                    self.mutual_tls_chain(name, http, &mtls::ALPN_ISTIO_MTLS, filters),
                    chain(name, Some(transport(RAW_BUFFER, &[])), filters()),
                ];
                if !http {
                    out.push(chain(
                        format!("{name}-tls"),
                        Some(transport(TLS, &[])),
                        filters(),
                    ));
                }
                out
            }
        }
    }

    fn mutual_tls_chain(
        &self,
        name: &str,
        http: bool,
        alpn: &[&str],
        filters: &dyn Fn() -> Vec<Filter>,
    ) -> FilterChain {
        let mut c = chain(
            format!("{name}-mtls"),
            Some(transport(TLS, alpn)),
            filters(),
        );
        c.transport_socket = Some(mtls::tls_transport_socket(&mtls::istio_mutual_downstream(
            http,
        )));
        c
    }
}

/// A filter chain of network filters.
fn chain(
    name: impl Into<String>,
    matches: Option<FilterChainMatch>,
    filters: Vec<Filter>,
) -> FilterChain {
    FilterChain {
        name: name.into(),
        filter_chain_match: matches,
        filters,
        ..Default::default()
    }
}

fn transport(protocol: &str, alpn: &[&str]) -> FilterChainMatch {
    FilterChainMatch {
        transport_protocol: protocol.to_string(),
        application_protocols: alpn.iter().map(|a| a.to_string()).collect(),
        ..Default::default()
    }
}

/// `chain`, matched on destination port `port` as well.
pub(super) fn on_port(mut chain: FilterChain, port: u32) -> FilterChain {
    chain
        .filter_chain_match
        .get_or_insert_with(Default::default)
        .destination_port = Some(u32_value(port));
    chain
}
