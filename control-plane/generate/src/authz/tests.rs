//! Authorization from YAML to Envoy filters, checked two ways: the
//! generated messages themselves, and what they decide for sample
//! requests, through a small evaluator of Envoy's RBAC semantics below
//! (`decide`). And, when the binary is there, Envoy's own verdict on the
//! generated configuration.
use std::collections::BTreeMap;
use std::net::IpAddr;

use prost::Message;
use sextant_config::store::ConfigStore;
use sextant_xds::pb::envoy::config::listener::v3::{Filter, filter};
use sextant_xds::pb::envoy::config::rbac::v3::{
    Permission, Policy as EnvoyPolicy, Principal, Rbac, permission, principal, rbac,
};
use sextant_xds::pb::envoy::config::route::v3::{HeaderMatcher, header_matcher};
use sextant_xds::pb::envoy::extensions::filters::http::jwt_authn::v3::{
    JwtAuthentication, JwtRequirement, jwt_provider, jwt_requirement, requirement_rule,
};
use sextant_xds::pb::envoy::extensions::filters::http::rbac::v3::Rbac as HttpRbac;
use sextant_xds::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpFilter, http_filter,
};
use sextant_xds::pb::envoy::extensions::filters::network::rbac::v3::Rbac as NetworkRbac;
use sextant_xds::pb::envoy::r#type::matcher::v3::{
    MetadataMatcher, StringMatcher, ValueMatcher, list_matcher, metadata_matcher, path_matcher,
    string_matcher, value_matcher,
};
use sextant_xds::{InterceptionMode, Proxy, ProxyType};

use super::*;
use crate::mesh::MeshSnapshot;

// ---------------------------------------------------------------------------
// Fixtures
// ---------------------------------------------------------------------------

fn mesh(yaml: &str) -> MeshSnapshot {
    let store = ConfigStore::new();
    for (_, doc) in sextant_config::object::documents(yaml) {
        let object = sextant_config::object::parse(doc.unwrap()).unwrap();
        store
            .apply("test", object)
            .unwrap_or_else(|e| panic!("refused: {e}"));
    }
    MeshSnapshot::build(store.snapshot())
}

/// A service `APP.NS.svc.cluster.local` on `port`, with one WorkloadEntry
/// at `ip` labelled `app: APP, version: v1` and service account
/// `bookinfo-APP`.
fn service(app: &str, ns: &str, ip: &str, port: u32, protocol: &str) -> String {
    let port_name = protocol.to_ascii_lowercase();
    format!(
        r#"
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: {app}, namespace: {ns}}}
spec:
  hosts: [{app}.{ns}.svc.cluster.local]
  ports: [{{number: {port}, name: {port_name}, protocol: {protocol}}}]
  resolution: STATIC
  workloadSelector: {{labels: {{app: {app}}}}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: {app}-v1, namespace: {ns}}}
spec: {{address: {ip}, labels: {{app: {app}, version: v1}}, serviceAccount: bookinfo-{app}}}
"#
    )
}

/// The workloads of the tests: `(app, namespace, ip, port, protocol)`.
const WORKLOADS: &[(&str, &str, &str, u32, &str)] = &[
    ("productpage", "default", "10.0.0.1", 9080, "HTTP"),
    ("details", "default", "10.0.0.2", 9080, "HTTP"),
    ("reviews", "default", "10.0.0.3", 9080, "HTTP"),
    ("ratings", "default", "10.0.0.4", 9080, "HTTP"),
    ("products", "default", "10.0.0.5", 9080, "HTTP"),
    ("mysql", "default", "10.0.0.6", 3306, "TCP"),
    ("other", "default", "10.0.0.7", 9080, "HTTP"),
    ("httpbin", "foo", "10.0.1.1", 8000, "HTTP"),
];

/// The registry of [`WORKLOADS`] plus `extra` documents.
fn with(extra: &[&str]) -> MeshSnapshot {
    let mut yaml: String = WORKLOADS
        .iter()
        .map(|(app, ns, ip, port, protocol)| service(app, ns, ip, *port, protocol))
        .collect();
    for e in extra {
        yaml.push_str("\n---\n");
        yaml.push_str(e);
    }
    mesh(&yaml)
}

/// A file of Istio's RBAC samples.
fn sample(file: &str) -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/reference/istio-samples/rbac")
        .join(file);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The sidecar of a workload of [`WORKLOADS`]: the node carries no labels,
/// so the workload's come from its WorkloadEntry.
fn sidecar(app: &str) -> Proxy {
    let (_, ns, ip, _, _) = workload(app);
    proxy(ip, ns, &[])
}

fn workload(app: &str) -> (&'static str, &'static str, &'static str, u32, &'static str) {
    *WORKLOADS
        .iter()
        .find(|w| w.0 == app)
        .unwrap_or_else(|| panic!("no workload {app}"))
}

fn proxy(ip: &str, namespace: &str, labels: &[(&str, &str)]) -> Proxy {
    Proxy {
        id: format!("sidecar~{ip}~pod.{namespace}~{namespace}.svc.cluster.local"),
        proxy_type: ProxyType::Sidecar,
        ip_addresses: vec![ip.parse().unwrap()],
        name: "pod".to_string(),
        namespace: namespace.to_string(),
        dns_domain: format!("{namespace}.svc.cluster.local"),
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        service_account: None,
        interception_mode: InterceptionMode::Redirect,
        cluster_id: None,
        istio_version: None,
        service_cluster: String::new(),
        raw_metadata: BTreeMap::new(),
        verified_identity: None,
        vhds: false,
    }
}

/// The HTTP filters of a workload's own port.
fn http(m: &MeshSnapshot, app: &str) -> Vec<HttpFilter> {
    inbound_http_filters(m, &sidecar(app), workload(app).3)
}

fn tcp(m: &MeshSnapshot, app: &str) -> Vec<Filter> {
    inbound_network_filters(m, &sidecar(app), workload(app).3)
}

fn names(filters: &[HttpFilter]) -> Vec<&str> {
    filters.iter().map(|f| f.name.as_str()).collect()
}

fn typed<M: Message + Default>(f: &HttpFilter) -> M {
    let Some(http_filter::ConfigType::TypedConfig(any)) = &f.config_type else {
        panic!("{} has no typed config", f.name)
    };
    M::decode(any.value.as_slice()).unwrap()
}

fn network_rbac(f: &Filter) -> NetworkRbac {
    assert_eq!(f.name, NETWORK_RBAC_FILTER);
    let Some(filter::ConfigType::TypedConfig(any)) = &f.config_type else {
        panic!()
    };
    NetworkRbac::decode(any.value.as_slice()).unwrap()
}

/// The RBAC filters' configs, in order.
fn rbacs(filters: &[HttpFilter]) -> Vec<HttpRbac> {
    filters
        .iter()
        .filter(|f| f.name == HTTP_RBAC_FILTER)
        .map(typed)
        .collect()
}

/// The one RBAC filter's enforced rules.
fn only_rules(filters: &[HttpFilter]) -> Rbac {
    let r = rbacs(filters);
    assert_eq!(r.len(), 1, "{:?}", names(filters));
    r[0].rules.clone().expect("enforced rules")
}

fn action(r: &Rbac) -> rbac::Action {
    rbac::Action::try_from(r.action).unwrap()
}

fn policy<'a>(r: &'a Rbac, name: &str) -> &'a EnvoyPolicy {
    r.policies
        .get(name)
        .unwrap_or_else(|| panic!("no policy {name} in {:?}", super::rbac::policy_names(r)))
}

// ---------------------------------------------------------------------------
// An evaluator of Envoy RBAC for sample requests
// ---------------------------------------------------------------------------

#[derive(Clone, Debug)]
enum Claim {
    S(&'static str),
    L(Vec<&'static str>),
}

#[derive(Clone, Debug)]
struct Req {
    /// The peer certificate's URI SAN (mTLS), if any.
    peer: Option<String>,
    source_ip: IpAddr,
    remote_ip: IpAddr,
    dest_ip: IpAddr,
    port: u32,
    sni: String,
    method: String,
    path: String,
    host: String,
    headers: Vec<(String, String)>,
    /// The verified JWT payload (jwt_authn's metadata), if any.
    jwt: Option<BTreeMap<String, Claim>>,
}

fn req(method: &str, path: &str) -> Req {
    Req {
        peer: None,
        source_ip: "10.9.9.9".parse().unwrap(),
        remote_ip: "10.9.9.9".parse().unwrap(),
        dest_ip: "10.0.0.1".parse().unwrap(),
        port: 9080,
        sni: String::new(),
        method: method.to_string(),
        path: path.to_string(),
        host: "svc:9080".to_string(),
        headers: Vec::new(),
        jwt: None,
    }
}

impl Req {
    fn by_sa(mut self, ns: &str, sa: &str) -> Req {
        self.peer = Some(format!("spiffe://cluster.local/ns/{ns}/sa/{sa}"));
        self
    }
    fn header(mut self, name: &str, value: &str) -> Req {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }
    fn claims(mut self, claims: &[(&str, Claim)]) -> Req {
        self.jwt = Some(
            claims
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect(),
        );
        self
    }
    fn port(mut self, port: u32) -> Req {
        self.port = port;
        self
    }
    fn by_ip_addr(mut self, ip: &str) -> Req {
        self.source_ip = ip.parse().unwrap();
        self
    }
    fn header_value(&self, name: &str) -> Option<&str> {
        match name {
            ":method" => Some(&self.method),
            ":path" => Some(&self.path),
            ":authority" => Some(&self.host),
            _ => self
                .headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str()),
        }
    }
}

/// Whether the RBAC filters (in order) let the request through: a filter
/// with enforced rules denies when its ALLOW rules match nothing or its
/// DENY rules match; shadow rules never deny.
fn decide(filters: &[HttpFilter], r: &Req) -> bool {
    rbacs(filters)
        .iter()
        .all(|f| f.rules.as_ref().is_none_or(|rules| permits(rules, r)))
}

/// What the shadow rules would decide.
fn shadow_decides(filters: &[HttpFilter], r: &Req) -> bool {
    rbacs(filters).iter().all(|f| {
        f.shadow_rules
            .as_ref()
            .is_none_or(|rules| permits(rules, r))
    })
}

fn decide_tcp(filters: &[Filter], r: &Req) -> bool {
    filters
        .iter()
        .map(network_rbac)
        .all(|f| f.rules.as_ref().is_none_or(|rules| permits(rules, r)))
}

fn permits(rules: &Rbac, r: &Req) -> bool {
    let matched = rules.policies.values().any(|p| policy_matches(p, r));
    match action(rules) {
        rbac::Action::Allow => matched,
        rbac::Action::Deny => !matched,
        rbac::Action::Log => true,
    }
}

fn policy_matches(p: &EnvoyPolicy, r: &Req) -> bool {
    p.permissions.iter().any(|x| perm(x, r)) && p.principals.iter().any(|x| prin(x, r))
}

fn perm(p: &Permission, r: &Req) -> bool {
    use permission::Rule;
    match p.rule.as_ref().expect("a rule") {
        Rule::AndRules(s) => s.rules.iter().all(|x| perm(x, r)),
        Rule::OrRules(s) => s.rules.iter().any(|x| perm(x, r)),
        Rule::Any(a) => *a,
        Rule::NotRule(x) => !perm(x, r),
        Rule::Header(h) => header(h, r),
        Rule::UrlPath(pm) => match pm.rule.as_ref().unwrap() {
            path_matcher::Rule::Path(m) => string(m, r.path.split('?').next().unwrap()),
        },
        Rule::DestinationPort(port) => *port == r.port,
        Rule::DestinationIp(c) => in_cidr(c, r.dest_ip),
        Rule::RequestedServerName(m) => string(m, &r.sni),
        Rule::SourcedMetadata(s) => metadata(s.metadata_matcher.as_ref().unwrap(), r),
        other => panic!("the evaluator does not know {other:?}"),
    }
}

fn prin(p: &Principal, r: &Req) -> bool {
    use principal::Identifier;
    match p.identifier.as_ref().expect("an identifier") {
        Identifier::AndIds(s) => s.ids.iter().all(|x| prin(x, r)),
        Identifier::OrIds(s) => s.ids.iter().any(|x| prin(x, r)),
        Identifier::Any(a) => *a,
        Identifier::NotId(x) => !prin(x, r),
        Identifier::Authenticated(a) => match (&r.peer, &a.principal_name) {
            (None, _) => false,
            (Some(_), None) => true,
            (Some(peer), Some(m)) => string(m, peer),
        },
        Identifier::DirectRemoteIp(c) => in_cidr(c, r.source_ip),
        Identifier::RemoteIp(c) => in_cidr(c, r.remote_ip),
        Identifier::Header(h) => header(h, r),
        Identifier::SourcedMetadata(s) => metadata(s.metadata_matcher.as_ref().unwrap(), r),
        other => panic!("the evaluator does not know {other:?}"),
    }
}

fn header(h: &HeaderMatcher, r: &Req) -> bool {
    let value = r.header_value(&h.name);
    match h.header_match_specifier.as_ref().unwrap() {
        header_matcher::HeaderMatchSpecifier::PresentMatch(p) => value.is_some() == *p,
        header_matcher::HeaderMatchSpecifier::StringMatch(m) => value.is_some_and(|v| string(m, v)),
        other => panic!("the evaluator does not know {other:?}"),
    }
}

fn metadata(m: &MetadataMatcher, r: &Req) -> bool {
    assert_eq!(m.filter, JWT_FILTER, "only JWT metadata is evaluated");
    let keys: Vec<&str> = m
        .path
        .iter()
        .map(|s| match s.segment.as_ref().unwrap() {
            metadata_matcher::path_segment::Segment::Key(k) => k.as_str(),
        })
        .collect();
    assert_eq!(keys[0], PAYLOAD_KEY);
    assert_eq!(keys.len(), 2, "nested claims are not evaluated");
    let claim = r.jwt.as_ref().and_then(|j| j.get(keys[1]));
    claim.is_some_and(|c| value(m.value.as_ref().unwrap(), c)) != m.invert
}

fn value(v: &ValueMatcher, c: &Claim) -> bool {
    match (v.match_pattern.as_ref().unwrap(), c) {
        (value_matcher::MatchPattern::StringMatch(m), Claim::S(s)) => string(m, s),
        (value_matcher::MatchPattern::ListMatch(l), Claim::L(items)) => {
            let list_matcher::MatchPattern::OneOf(one) = l.match_pattern.as_ref().unwrap();
            items.iter().any(|i| value(one, &Claim::S(i)))
        }
        (value_matcher::MatchPattern::OrMatch(o), c) => {
            o.value_matchers.iter().any(|x| value(x, c))
        }
        (value_matcher::MatchPattern::PresentMatch(p), _) => *p,
        _ => false,
    }
}

fn string(m: &StringMatcher, s: &str) -> bool {
    let fold = |x: &str| {
        if m.ignore_case {
            x.to_ascii_lowercase()
        } else {
            x.to_string()
        }
    };
    let s = fold(s);
    match m.match_pattern.as_ref().unwrap() {
        string_matcher::MatchPattern::Exact(e) => s == fold(e),
        string_matcher::MatchPattern::Prefix(p) => s.starts_with(&fold(p)),
        string_matcher::MatchPattern::Suffix(x) => s.ends_with(&fold(x)),
        string_matcher::MatchPattern::Contains(x) => s.contains(&fold(x)),
        string_matcher::MatchPattern::SafeRegex(re) => regex::full_match(&re.regex, &s),
        other => panic!("the evaluator does not know {other:?}"),
    }
}

fn in_cidr(c: &sextant_xds::pb::envoy::config::core::v3::CidrRange, ip: IpAddr) -> bool {
    let base: IpAddr = c.address_prefix.parse().unwrap();
    let len = c.prefix_len.as_ref().map_or(0, |l| l.value);
    let bits = |ip: IpAddr| -> (u128, u32) {
        match ip {
            IpAddr::V4(v4) => (u32::from(v4) as u128, 32),
            IpAddr::V6(v6) => (u128::from(v6), 128),
        }
    };
    let ((b, width), (x, w2)) = (bits(base), bits(ip));
    if width != w2 {
        return false;
    }
    let shift = width - len;
    len == 0 || (b >> shift) == (x >> shift)
}

/// Enough of RE2 (full match) for the patterns the generator writes:
/// literals, escapes, `.`, `[^/]`, groups with `|`, and `*`, `+`, `?`.
mod regex {
    enum Node {
        Lit(char),
        Dot,
        NotSlash,
        Group(Vec<Vec<Rep>>),
    }
    struct Rep {
        node: Node,
        min: usize,
        max: Option<usize>,
    }

    pub fn full_match(pattern: &str, text: &str) -> bool {
        let chars: Vec<char> = pattern.chars().collect();
        let mut i = 0;
        let alts = alternatives(&chars, &mut i);
        assert_eq!(i, chars.len(), "unsupported regex {pattern:?}");
        let text: Vec<char> = text.chars().collect();
        alts.iter()
            .any(|seq| sequence(seq, &text, 0, &mut |p| p == text.len()))
    }

    fn alternatives(c: &[char], i: &mut usize) -> Vec<Vec<Rep>> {
        let mut alts = vec![Vec::new()];
        while *i < c.len() && c[*i] != ')' {
            let node = match c[*i] {
                '|' => {
                    *i += 1;
                    alts.push(Vec::new());
                    continue;
                }
                '\\' => {
                    *i += 1;
                    Node::Lit(c[*i])
                }
                '.' => Node::Dot,
                '[' => {
                    assert_eq!(&c[*i..*i + 4], ['[', '^', '/', ']'], "unsupported class");
                    *i += 3;
                    Node::NotSlash
                }
                '(' => {
                    *i += 1;
                    let inner = alternatives(c, i);
                    assert_eq!(c.get(*i), Some(&')'));
                    Node::Group(inner)
                }
                ch => Node::Lit(ch),
            };
            *i += 1;
            let (min, max) = match c.get(*i) {
                Some('*') => (0, None),
                Some('+') => (1, None),
                Some('?') => (0, Some(1)),
                _ => (1, Some(1)),
            };
            if min != 1 || max != Some(1) {
                *i += 1;
            }
            alts.last_mut().unwrap().push(Rep { node, min, max });
        }
        alts
    }

    fn sequence(seq: &[Rep], t: &[char], pos: usize, k: &mut dyn FnMut(usize) -> bool) -> bool {
        match seq.split_first() {
            None => k(pos),
            Some((r, rest)) => repeat(r, 0, t, pos, &mut |p| sequence(rest, t, p, k)),
        }
    }

    fn repeat(r: &Rep, n: usize, t: &[char], pos: usize, k: &mut dyn FnMut(usize) -> bool) -> bool {
        if r.max.is_none_or(|m| n < m)
            && one(&r.node, t, pos, &mut |p| {
                (p > pos || n < r.min) && repeat(r, n + 1, t, p, k)
            })
        {
            return true;
        }
        n >= r.min && k(pos)
    }

    fn one(node: &Node, t: &[char], pos: usize, k: &mut dyn FnMut(usize) -> bool) -> bool {
        match node {
            Node::Lit(c) => t.get(pos) == Some(c) && k(pos + 1),
            Node::Dot => pos < t.len() && k(pos + 1),
            Node::NotSlash => t.get(pos).is_some_and(|c| *c != '/') && k(pos + 1),
            Node::Group(alts) => alts.iter().any(|seq| sequence(seq, t, pos, k)),
        }
    }

    #[test]
    fn the_test_regex_engine() {
        assert!(full_match("a(b|)c", "ac"), "1");
        assert!(full_match("a(b|)c", "abc"), "2");
        assert!(full_match("a(.+/|)c", "ac"), "3");
        assert!(full_match("a(/.+)?", "a"), "4");
        assert!(full_match("x.+/n(.+/|)s", "xtd/ns"), "5");
        assert!(full_match(
            ".*/ns/default/.*",
            "spiffe://cluster.local/ns/default/sa/a"
        ));
        assert!(!full_match(
            ".*/ns/default/.*",
            "spiffe://cluster.local/ns/foo/sa/a"
        ));
        assert!(full_match(".+", "a"));
        assert!(!full_match(".+", ""));
        assert!(full_match(
            "spiffe://.+/ns/a/(.+/|)sa/b(/.+)?",
            "spiffe://td/ns/a/sa/b"
        ));
        assert!(!full_match(
            "spiffe://.+/ns/a/(.+/|)sa/b(/.+)?",
            "spiffe://td/ns/a/sa/bc"
        ));
        assert!(full_match(
            "spiffe://[^/]*\\.local/.*",
            "spiffe://cluster.local/ns/x"
        ));
        assert!(!full_match(
            "spiffe://[^/]*\\.local/.*",
            "spiffe://a/b.local/x"
        ));
    }
}

// ---------------------------------------------------------------------------
// rbac.istio.io/v1alpha1: the BookInfo samples
// ---------------------------------------------------------------------------

/// Istio's BookInfo RBAC task: RBAC on for `default`, productpage open to
/// everyone for GET, details and reviews to productpage, ratings to
/// reviews.
fn bookinfo_rbac() -> MeshSnapshot {
    with(&[
        &sample("rbac-config-ON.yaml"),
        &sample("productpage-policy.yaml"),
        &sample("details-reviews-policy.yaml"),
        &sample("ratings-policy.yaml"),
    ])
}

#[test]
fn productpage_is_open_to_everyone_for_get() {
    let m = bookinfo_rbac();
    let filters = http(&m, "productpage");
    assert_eq!(names(&filters), [HTTP_RBAC_FILTER]);
    let rules = only_rules(&filters);
    assert_eq!(action(&rules), rbac::Action::Allow);
    assert_eq!(super::rbac::policy_names(&rules), ["productpage-viewer"]);
    // user: "*" is anyone, with or without mTLS.
    assert!(decide(&filters, &req("GET", "/productpage")));
    assert!(decide(&filters, &req("GET", "/").by_sa("x", "y")));
    assert!(!decide(&filters, &req("POST", "/productpage")));
}

#[test]
fn details_and_reviews_only_for_productpage() {
    let m = bookinfo_rbac();
    for app in ["details", "reviews"] {
        let filters = http(&m, app);
        let rules = only_rules(&filters);
        assert_eq!(
            super::rbac::policy_names(&rules),
            ["details-reviews-viewer"]
        );
        let p = policy(&rules, "details-reviews-viewer");
        // The sample's `spiffe://` user is matched on the SAN as is, not
        // with a second prefix.
        let principal = format!("{:?}", p.principals);
        assert!(
            principal
                .contains(r#"Exact("spiffe://cluster.local/ns/default/sa/bookinfo-productpage")"#),
            "{principal}"
        );
        let from_productpage = req("GET", "/details/0").by_sa("default", "bookinfo-productpage");
        assert!(decide(&filters, &from_productpage), "{app}");
        assert!(!decide(
            &filters,
            &req("GET", "/details/0").by_sa("default", "bookinfo-reviews")
        ));
        assert!(
            !decide(&filters, &req("GET", "/details/0")),
            "plain text has no identity"
        );
        let mut post = from_productpage.clone();
        post.method = "POST".into();
        assert!(!decide(&filters, &post));
    }
    let ratings = http(&m, "ratings");
    assert_eq!(
        super::rbac::policy_names(&only_rules(&ratings)),
        ["ratings-viewer"]
    );
    assert!(decide(
        &ratings,
        &req("GET", "/ratings/0").by_sa("default", "bookinfo-reviews")
    ));
    assert!(!decide(
        &ratings,
        &req("GET", "/ratings/0").by_sa("default", "bookinfo-productpage")
    ));
}

#[test]
fn rbac_on_without_a_role_denies_everything() {
    // `other` is in `default` (RBAC on) and no role names its service.
    let filters = http(&bookinfo_rbac(), "other");
    let rules = only_rules(&filters);
    assert_eq!(action(&rules), rbac::Action::Allow);
    assert!(rules.policies.is_empty());
    assert!(!decide(
        &filters,
        &req("GET", "/").by_sa("default", "bookinfo-productpage")
    ));
}

#[test]
fn namespace_policy_constraints_and_properties() {
    let m = with(&[
        &sample("rbac-config-ON.yaml"),
        &sample("namespace-policy.yaml"),
    ]);
    // destination.labels[app] is decided at generation time.
    for app in ["productpage", "details", "reviews", "ratings"] {
        let filters = http(&m, app);
        let rules = only_rules(&filters);
        assert_eq!(
            super::rbac::policy_names(&rules),
            ["service-viewer"],
            "{app}"
        );
        assert!(decide(&filters, &req("GET", "/").by_sa("default", "a")));
        assert!(decide(
            &filters,
            &req("GET", "/").by_sa("istio-system", "ingress")
        ));
        assert!(!decide(&filters, &req("GET", "/").by_sa("foo", "a")));
        assert!(!decide(&filters, &req("PUT", "/").by_sa("default", "a")));
    }
    let filters = http(&m, "other");
    assert!(
        only_rules(&filters).policies.is_empty(),
        "app=other is not in the constraint"
    );
}

#[test]
fn inclusion_exclusion_and_off() {
    let config = |spec: &str| {
        format!(
            "apiVersion: rbac.istio.io/v1alpha1\nkind: ClusterRbacConfig\nmetadata: {{name: default}}\nspec: {spec}\n"
        )
    };
    let policies = sample("ratings-policy.yaml");
    let filters_of = |spec: &str, app: &str| http(&with(&[&config(spec), &policies]), app);

    // ON_WITH_INCLUSION by namespace: `foo` is out.
    let by_ns = "{mode: ON_WITH_INCLUSION, inclusion: {namespaces: [default]}}";
    assert!(filters_of(by_ns, "httpbin").is_empty());
    assert_eq!(names(&filters_of(by_ns, "details")), [HTTP_RBAC_FILTER]);
    // By service FQDN.
    let by_service =
        "{mode: ON_WITH_INCLUSION, inclusion: {services: [ratings.default.svc.cluster.local]}}";
    assert!(filters_of(by_service, "details").is_empty());
    let ratings = filters_of(by_service, "ratings");
    assert_eq!(
        super::rbac::policy_names(&only_rules(&ratings)),
        ["ratings-viewer"]
    );
    // ON_WITH_EXCLUSION.
    let excluded = "{mode: ON_WITH_EXCLUSION, exclusion: {namespaces: [foo], services: [details.default.svc.cluster.local]}}";
    assert!(filters_of(excluded, "details").is_empty());
    assert!(filters_of(excluded, "httpbin").is_empty());
    assert_eq!(names(&filters_of(excluded, "reviews")), [HTTP_RBAC_FILTER]);
    // ON covers every namespace; OFF none.
    assert_eq!(
        names(&filters_of("{mode: 'ON'}", "httpbin")),
        [HTTP_RBAC_FILTER]
    );
    assert!(filters_of("{mode: 'OFF'}", "ratings").is_empty());
    // No config at all: no RBAC, however many roles.
    assert!(http(&with(&[&policies]), "ratings").is_empty());
}

#[test]
fn deprecated_rbac_config_and_precedence() {
    let namespaced = "apiVersion: rbac.istio.io/v1alpha1\nkind: RbacConfig\nmetadata: {name: default, namespace: istio-system}\nspec: {mode: 'ON'}\n";
    let m = with(&[namespaced, &sample("ratings-policy.yaml")]);
    assert_eq!(names(&http(&m, "details")), [HTTP_RBAC_FILTER]);
    // A ClusterRbacConfig wins over it.
    let cluster = "apiVersion: rbac.istio.io/v1alpha1\nkind: ClusterRbacConfig\nmetadata: {name: default}\nspec: {mode: 'OFF'}\n";
    let m = with(&[namespaced, cluster, &sample("ratings-policy.yaml")]);
    assert!(http(&m, "details").is_empty());
}

#[test]
fn global_permissive_mode_only_shadows() {
    let config = "apiVersion: rbac.istio.io/v1alpha1\nkind: ClusterRbacConfig\nmetadata: {name: default}\nspec: {mode: 'ON', enforcementMode: PERMISSIVE}\n";
    let m = with(&[config, &sample("ratings-policy.yaml")]);
    let filters = http(&m, "ratings");
    let r = rbacs(&filters);
    assert_eq!(r.len(), 1);
    assert!(r[0].rules.is_none(), "nothing is enforced");
    let shadow = r[0].shadow_rules.as_ref().unwrap();
    assert_eq!(super::rbac::policy_names(shadow), ["ratings-viewer"]);
    assert_eq!(r[0].shadow_rules_stat_prefix, DRY_RUN_ALLOW_STAT_PREFIX);
    let stranger = req("GET", "/ratings/0").by_sa("default", "bookinfo-productpage");
    assert!(decide(&filters, &stranger), "allowed");
    assert!(
        !shadow_decides(&filters, &stranger),
        "but the shadow says deny"
    );
    // A workload with no role: an empty shadow, still no enforcement.
    let details = http(&m, "details");
    assert!(decide(&details, &stranger));
    assert!(
        rbacs(&details)[0]
            .shadow_rules
            .as_ref()
            .unwrap()
            .policies
            .is_empty()
    );
}

#[test]
fn permissive_binding_goes_to_shadow_rules() {
    let permissive = r#"
apiVersion: rbac.istio.io/v1alpha1
kind: ServiceRoleBinding
metadata: {name: try-productpage, namespace: default}
spec:
  subjects: [{user: "cluster.local/ns/default/sa/bookinfo-productpage"}]
  roleRef: {kind: ServiceRole, name: ratings-viewer}
  mode: PERMISSIVE
"#;
    let m = with(&[
        &sample("rbac-config-ON.yaml"),
        &sample("ratings-policy.yaml"),
        permissive,
    ]);
    let filters = http(&m, "ratings");
    let r = &rbacs(&filters)[0];
    let enforced = r.rules.as_ref().unwrap();
    let shadow = r.shadow_rules.as_ref().unwrap();
    assert_eq!(super::rbac::policy_names(enforced), ["ratings-viewer"]);
    assert_eq!(super::rbac::policy_names(shadow), ["ratings-viewer"]);
    let productpage = req("GET", "/ratings/0").by_sa("default", "bookinfo-productpage");
    assert!(
        !decide(&filters, &productpage),
        "the permissive binding is not enforced"
    );
    assert!(
        shadow_decides(&filters, &productpage),
        "it is evaluated in the shadow"
    );
    assert!(decide(
        &filters,
        &req("GET", "/").by_sa("default", "bookinfo-reviews")
    ));
}

#[test]
fn products_viewer_claims_sample() {
    let m = with(&[
        &sample("rbac-config-ON.yaml"),
        &sample("products-viewer-claims.yaml"),
    ]);
    let filters = http(&m, "products");
    let rules = only_rules(&filters);
    let p = policy(&rules, "products-viewer");
    assert_eq!(p.principals.len(), 2, "one principal per subject");
    // The claim is a metadata matcher on jwt_authn's payload.
    let text = format!("{:?}", p.principals[1]);
    assert!(
        text.contains(r#"filter: "envoy.filters.http.jwt_authn""#),
        "{text}"
    );
    assert!(
        text.contains(r#"Key("payload")"#) && text.contains(r#"Key("email")"#),
        "{text}"
    );
    assert!(text.contains(r#"Exact("a@foo.com")"#), "{text}");

    // The sample's users are bare names: exact URI SANs `spiffe://NAME`.
    let mut as_ingress = req("HEAD", "/products");
    as_ingress.peer = Some("spiffe://istio-ingress-service-account".into());
    assert!(decide(
        &filters,
        &as_ingress
            .clone()
            .claims(&[("email", Claim::S("a@foo.com"))])
    ));
    assert!(!decide(
        &filters,
        &as_ingress
            .clone()
            .claims(&[("email", Claim::S("b@foo.com"))])
    ));
    assert!(!decide(&filters, &as_ingress), "no token, no claim");
    let mut a = req("GET", "/products");
    a.peer = Some("spiffe://service-account-a".into());
    assert!(decide(&filters, &a));
    a.method = "DELETE".into();
    assert!(!decide(&filters, &a));
}

#[test]
fn access_rule_fields_and_subject_fields() {
    let yaml = r#"
apiVersion: rbac.istio.io/v1alpha1
kind: ClusterRbacConfig
metadata: {name: default}
spec: {mode: 'ON'}
---
apiVersion: rbac.istio.io/v1alpha1
kind: ServiceRole
metadata: {name: api, namespace: default}
spec:
  rules:
  - services: ["det*"]
    paths: ["/api/*", "*/health", "/exact"]
    notMethods: [DELETE]
    ports: [9080]
    constraints:
    - {key: "request.headers[x-team]", values: [blue]}
    - {key: destination.user, values: [bookinfo-details]}
  - services: ["*.default.svc.cluster.local"]
    methods: [GET]
    constraints:
    - {key: destination.namespace, values: [foo]}
---
apiVersion: rbac.istio.io/v1alpha1
kind: ServiceRoleBinding
metadata: {name: api, namespace: default}
spec:
  roleRef: {kind: ServiceRole, name: api}
  subjects:
  - {namespaces: [default], notNames: ["cluster.local/ns/default/sa/evil"]}
  - {ips: [192.168.0.0/16], properties: {"request.headers[x-token]": "*"}}
"#;
    let m = with(&[yaml]);
    let filters = http(&m, "details");
    let rules = only_rules(&filters);
    let p = policy(&rules, "api");
    assert_eq!(
        p.permissions.len(),
        1,
        "the second rule is for namespace foo"
    );
    let ok = req("GET", "/api/v1?x=1")
        .by_sa("default", "client")
        .header("x-team", "blue");
    assert!(decide(&filters, &ok));
    assert!(decide(
        &filters,
        &req("PUT", "/a/health")
            .by_sa("default", "c")
            .header("x-team", "blue")
    ));
    assert!(decide(
        &filters,
        &req("GET", "/exact")
            .by_sa("default", "c")
            .header("x-team", "blue")
    ));
    assert!(!decide(
        &filters,
        &req("GET", "/exact/no")
            .by_sa("default", "c")
            .header("x-team", "blue")
    ));
    assert!(!decide(
        &filters,
        &req("DELETE", "/api/v1")
            .by_sa("default", "c")
            .header("x-team", "blue")
    ));
    assert!(!decide(&filters, &ok.clone().port(9090)), "ports");
    assert!(!decide(
        &filters,
        &req("GET", "/api/v1")
            .by_sa("default", "evil")
            .header("x-team", "blue")
    ));
    // The second subject: by IP with a header present.
    let by_ip = req("GET", "/api/x")
        .header("x-team", "blue")
        .by_ip_addr("192.168.3.4");
    assert!(!decide(&filters, &by_ip), "no x-token");
    assert!(decide(&filters, &by_ip.clone().header("x-token", "t")));
    // details' role rule requires user bookinfo-details: reviews has none.
    assert!(only_rules(&http(&m, "reviews")).policies.is_empty());
}

// ---------------------------------------------------------------------------
// AuthorizationPolicy
// ---------------------------------------------------------------------------

fn ap(name: &str, ns: &str, spec: &str) -> String {
    format!(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n{spec}\n"
    )
}

#[test]
fn nothing_applies_nothing_generated() {
    let m = with(&[&ap("other-ns", "foo", "  action: DENY\n  rules: [{}]")]);
    assert!(http(&m, "details").is_empty());
    assert!(tcp(&m, "mysql").is_empty());
    assert!(http(&with(&[]), "details").is_empty());
}

#[test]
fn empty_allow_denies_all_and_empty_rule_allows_all() {
    let deny_all = with(&[&ap("deny-all", "default", "  {}")]);
    let filters = http(&deny_all, "details");
    let rules = only_rules(&filters);
    assert_eq!(action(&rules), rbac::Action::Allow);
    assert_eq!(
        super::rbac::policy_names(&rules),
        ["ns[default]-policy[deny-all]-rule[0]"]
    );
    assert!(!decide(&filters, &req("GET", "/")));
    assert!(!decide(&filters, &req("GET", "/").by_sa("default", "a")));

    let allow_all = with(&[&ap("allow-all", "default", "  rules: [{}]")]);
    let filters = http(&allow_all, "details");
    assert!(decide(&filters, &req("GET", "/")));
    assert!(decide(&filters, &req("DELETE", "/x").by_sa("foo", "b")));
}

#[test]
fn deny_comes_before_allow_and_audit_before_both() {
    let m = with(&[
        &ap(
            "allow-get",
            "default",
            "  rules: [{to: [{operation: {methods: [GET]}}]}]",
        ),
        &ap(
            "deny-admin",
            "default",
            "  action: DENY\n  rules: [{to: [{operation: {paths: [\"/admin*\"]}}]}]",
        ),
        &ap(
            "audit",
            "default",
            "  action: AUDIT\n  rules: [{to: [{operation: {paths: [\"/secret\"]}}]}]",
        ),
    ]);
    let filters = http(&m, "details");
    let actions: Vec<rbac::Action> = rbacs(&filters)
        .iter()
        .map(|f| action(f.rules.as_ref().unwrap()))
        .collect();
    assert_eq!(
        actions,
        [rbac::Action::Log, rbac::Action::Deny, rbac::Action::Allow]
    );
    assert!(decide(&filters, &req("GET", "/products")));
    assert!(
        !decide(&filters, &req("GET", "/admin/x")),
        "DENY wins over ALLOW"
    );
    assert!(!decide(&filters, &req("POST", "/products")));
    assert!(
        decide(&filters, &req("GET", "/secret")),
        "AUDIT never denies"
    );
    // Only a DENY: everything else passes.
    let m = with(&[&ap(
        "deny-admin",
        "default",
        "  action: DENY\n  rules: [{to: [{operation: {paths: [\"/admin*\"]}}]}]",
    )]);
    let filters = http(&m, "details");
    assert!(decide(&filters, &req("POST", "/x")));
    assert!(!decide(&filters, &req("GET", "/admin")));
}

#[test]
fn selection_root_namespace_selector_and_target_ref() {
    let m = with(&[
        &ap(
            "mesh-wide",
            "istio-system",
            "  action: DENY\n  rules: [{to: [{operation: {paths: [\"/mesh\"]}}]}]",
        ),
        &ap(
            "only-reviews",
            "default",
            "  selector: {matchLabels: {app: reviews}}\n  action: DENY\n  rules: [{to: [{operation: {paths: [\"/reviews-only\"]}}]}]",
        ),
        &ap(
            "by-target",
            "default",
            "  targetRefs: [{group: \"\", kind: Service, name: ratings}]\n  action: DENY\n  rules: [{to: [{operation: {paths: [\"/ratings-only\"]}}]}]",
        ),
        &ap(
            "by-entry",
            "default",
            "  targetRef: {group: networking.istio.io, kind: ServiceEntry, name: details}\n  action: DENY\n  rules: [{to: [{operation: {paths: [\"/details-only\"]}}]}]",
        ),
    ]);
    let policies_of = |app: &str| {
        let filters = http(&m, app);
        let mut names = super::rbac::policy_names(&only_rules(&filters));
        names.iter_mut().for_each(|n| {
            *n = n
                .split("-policy[")
                .nth(1)
                .unwrap()
                .split(']')
                .next()
                .unwrap()
                .to_string()
        });
        names.sort();
        names
    };
    assert_eq!(policies_of("reviews"), ["mesh-wide", "only-reviews"]);
    assert_eq!(policies_of("ratings"), ["by-target", "mesh-wide"]);
    assert_eq!(policies_of("details"), ["by-entry", "mesh-wide"]);
    assert_eq!(
        policies_of("httpbin"),
        ["mesh-wide"],
        "root namespace: every namespace"
    );
    // The proxy's own labels override its endpoint's.
    let relabelled = proxy("10.0.0.2", "default", &[("app", "reviews")]);
    let filters = inbound_http_filters(&m, &relabelled, 9080);
    assert!(!decide(&filters, &req("GET", "/reviews-only")));
}

#[test]
fn dry_run_policies_are_shadow_rules() {
    let m = with(&[
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: try-deny\n  namespace: default\n  annotations: {\"istio.io/dry-run\": \"true\"}\nspec:\n  action: DENY\n  rules: [{}]\n",
        "apiVersion: security.istio.io/v1beta1\nkind: AuthorizationPolicy\nmetadata:\n  name: try-allow\n  namespace: default\n  annotations: {\"istio.io/dry-run\": \"true\"}\nspec:\n  rules: [{from: [{source: {namespaces: [default]}}]}]\n",
    ]);
    let filters = http(&m, "details");
    let r = rbacs(&filters);
    assert_eq!(r.len(), 2);
    assert!(r.iter().all(|f| f.rules.is_none()));
    assert_eq!(r[0].shadow_rules_stat_prefix, DRY_RUN_DENY_STAT_PREFIX);
    assert_eq!(r[1].shadow_rules_stat_prefix, DRY_RUN_ALLOW_STAT_PREFIX);
    assert!(decide(&filters, &req("GET", "/")), "nothing is enforced");
    assert!(!shadow_decides(&filters, &req("GET", "/")));
}

#[test]
fn sources_operations_and_conditions() {
    let spec = r#"  rules:
  - from:
    - source:
        principals: ["cluster.local/ns/default/sa/productpage", "*-admin"]
        notNamespaces: [blocked]
    - source:
        ipBlocks: [10.1.0.0/16]
        notIpBlocks: [10.1.2.3]
    to:
    - operation:
        hosts: ["Details.default*"]
        methods: [GET, HEAD]
        notPaths: ["/private*"]
    - operation:
        ports: ["9080"]
        methods: [POST]
        paths: [/submit]
    when:
    - key: request.headers[x-version]
      values: ["v1*"]
    - key: destination.port
      notValues: ["15000"]
"#;
    let m = with(&[&ap("full", "default", spec)]);
    let filters = http(&m, "details");
    let base = |m: &str, p: &str| {
        let mut r = req(m, p).header("x-version", "v1.2");
        r.host = "details.default.svc.cluster.local".into();
        r
    };
    assert!(decide(
        &filters,
        &base("GET", "/a").by_sa("default", "productpage")
    ));
    assert!(decide(
        &filters,
        &base("HEAD", "/a").by_sa("prod", "ops-admin")
    ));
    assert!(!decide(
        &filters,
        &base("HEAD", "/a").by_sa("blocked", "ops-admin")
    ));
    assert!(!decide(
        &filters,
        &base("GET", "/private/a").by_sa("default", "productpage")
    ));
    let mut wrong_version = base("GET", "/a").by_sa("default", "productpage");
    wrong_version.headers = vec![("x-version".into(), "v2".into())];
    assert!(!decide(&filters, &wrong_version));
    assert!(decide(
        &filters,
        &base("POST", "/submit").by_ip_addr("10.1.9.9")
    ));
    assert!(!decide(
        &filters,
        &base("POST", "/submit").by_ip_addr("10.1.2.3")
    ));
    assert!(!decide(
        &filters,
        &base("POST", "/submit").by_ip_addr("10.1.9.9").port(9081)
    ));
    let mut other_host = base("GET", "/a").by_sa("default", "productpage");
    other_host.host = "evil.example.com".into();
    assert!(!decide(&filters, &other_host), "hosts, case-insensitive");
}

#[test]
fn request_principals_and_claims() {
    let spec = r#"  rules:
  - from: [{source: {requestPrincipals: ["https://issuer.example.com/alice", "https://other.example.com/*"]}}]
    when:
    - key: request.auth.claims[groups]
      values: [admins]
    - key: request.auth.audiences
      values: [bookinfo]
"#;
    let m = with(&[&ap("jwt", "default", spec)]);
    let filters = http(&m, "details");
    let token = |iss: &'static str, sub: &'static str| {
        req("GET", "/").claims(&[
            ("iss", Claim::S(iss)),
            ("sub", Claim::S(sub)),
            ("groups", Claim::L(vec!["users", "admins"])),
            ("aud", Claim::S("bookinfo")),
        ])
    };
    assert!(decide(
        &filters,
        &token("https://issuer.example.com", "alice")
    ));
    assert!(decide(&filters, &token("https://other.example.com", "bob")));
    assert!(!decide(
        &filters,
        &token("https://issuer.example.com", "bob")
    ));
    assert!(!decide(&filters, &req("GET", "/")), "no token");
    let mut no_group = token("https://issuer.example.com", "alice");
    no_group
        .jwt
        .as_mut()
        .unwrap()
        .insert("groups".into(), Claim::L(vec!["users"]));
    assert!(!decide(&filters, &no_group));
    let mut aud_list = token("https://issuer.example.com", "alice");
    aud_list
        .jwt
        .as_mut()
        .unwrap()
        .insert("aud".into(), Claim::L(vec!["x", "bookinfo"]));
    assert!(decide(&filters, &aud_list), "aud as a list");
}

#[test]
fn keys_istio_supports_map_to_envoy_matchers() {
    let spec = r#"  action: DENY
  rules:
  - from: [{source: {remoteIpBlocks: [203.0.113.0/24], serviceAccounts: [sleep, other/curl], trustDomains: [cluster.local]}}]
    to: [{operation: {paths: ["/foo/{*}/bar/{**}"]}}]
    when:
    - {key: destination.ip, values: [10.0.0.2]}
    - {key: connection.sni, values: ["*.example.com"]}
    - {key: "experimental.envoy.filters.network.mysql_proxy[db.table]", values: ["[update]"]}
    - {key: source.principal, notValues: ["*"]}
    - {key: request.auth.presenter, values: [client]}
    - {key: remote.ip, values: ["2001:db8::/32"]}
"#;
    let m = with(&[&ap("keys", "default", spec)]);
    let rules = only_rules(&http(&m, "details"));
    let text = format!("{:?}", rules.policies.values().next().unwrap());
    for expected in [
        r#"RemoteIp(CidrRange { address_prefix: "203.0.113.0", prefix_len: Some(UInt32Value { value: 24 }) })"#,
        r#"regex: "spiffe://.+/ns/default/(.+/|)sa/sleep(/.+)?""#,
        r#"regex: "spiffe://.+/ns/other/(.+/|)sa/curl(/.+)?""#,
        r#"Prefix("spiffe://cluster.local/")"#,
        r#"name: "uri-template""#,
        r#"DestinationIp(CidrRange { address_prefix: "10.0.0.2", prefix_len: Some(UInt32Value { value: 32 }) })"#,
        r#"RequestedServerName(StringMatcher { ignore_case: false, match_pattern: Some(Suffix(".example.com")) })"#,
        r#"filter: "envoy.filters.network.mysql_proxy""#,
        r#"Key("db.table")"#,
        r#"Key("azp")"#,
        r#"address_prefix: "2001:db8::", prefix_len: Some(UInt32Value { value: 32 })"#,
    ] {
        assert!(text.contains(expected), "{expected}\nnot in\n{text}");
    }
    // The path template is Envoy's uri_template with Istio's operators
    // rewritten.
    let p = rules.policies.values().next().unwrap();
    let template = find_uri_template(&p.permissions[0]).expect("a uri template");
    assert_eq!(template, "/foo/*/bar/**");
}

fn find_uri_template(p: &Permission) -> Option<String> {
    use permission::Rule;
    use sextant_xds::pb::envoy::extensions::path::r#match::uri_template::v3::UriTemplateMatchConfig;
    match p.rule.as_ref()? {
        Rule::AndRules(s) | Rule::OrRules(s) => s.rules.iter().find_map(find_uri_template),
        Rule::UriTemplate(t) => Some(
            UriTemplateMatchConfig::decode(t.typed_config.as_ref()?.value.as_slice())
                .ok()?
                .path_template,
        ),
        _ => None,
    }
}

#[test]
fn authorization_policies_take_over_from_rbac_v1alpha1() {
    let m = with(&[
        &sample("rbac-config-ON.yaml"),
        &sample("ratings-policy.yaml"),
        &ap(
            "allow-all",
            "default",
            "  selector: {matchLabels: {app: ratings}}\n  rules: [{}]",
        ),
    ]);
    let filters = http(&m, "ratings");
    assert_eq!(
        super::rbac::policy_names(&only_rules(&filters)),
        ["ns[default]-policy[allow-all]-rule[0]"]
    );
    assert!(decide(
        &filters,
        &req("GET", "/").by_sa("default", "bookinfo-productpage")
    ));
    // Not selected by it: v1alpha1 still rules.
    assert_eq!(
        super::rbac::policy_names(&only_rules(&http(&m, "reviews"))),
        Vec::<String>::new()
    );
}

#[test]
fn custom_action_is_refused_as_a_deny() {
    let m = with(&[
        &ap(
            "ext",
            "default",
            "  action: CUSTOM\n  provider: {name: my-ext-authz}\n  rules: [{to: [{operation: {paths: [\"/admin*\"]}}]}]",
        ),
        "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {name: jwt, namespace: default}\nspec:\n  jwtRules: [{issuer: a}]\n",
        &ap("allow-all", "default", "  rules: [{}]"),
    ]);
    let filters = http(&m, "details");
    assert_eq!(
        names(&filters),
        [HTTP_RBAC_FILTER, JWT_FILTER, HTTP_RBAC_FILTER],
        "CUSTOM comes first, then authentication, then the other actions"
    );
    let custom = rbacs(&filters)[0].rules.clone().unwrap();
    assert_eq!(action(&custom), rbac::Action::Deny);
    assert_eq!(
        super::rbac::policy_names(&custom),
        [format!(
            "ns[default]-policy[ext]-rule[0]{}",
            super::rbac::BAD_CUSTOM_SUFFIX
        )]
    );
    assert!(!decide(&filters, &req("GET", "/admin")));
    assert!(decide(&filters, &req("GET", "/products")));
}

// ---------------------------------------------------------------------------
// TCP
// ---------------------------------------------------------------------------

#[test]
fn tcp_allow_rules_with_http_fields_are_left_out() {
    let m = with(&[
        &ap(
            "http-only",
            "default",
            "  selector: {matchLabels: {app: mysql}}\n  rules: [{to: [{operation: {methods: [GET]}}]}]",
        ),
        &ap(
            "by-namespace",
            "default",
            "  selector: {matchLabels: {app: mysql}}\n  rules: [{from: [{source: {namespaces: [default]}}], to: [{operation: {ports: [\"3306\"]}}]}]",
        ),
    ]);
    let filters = tcp(&m, "mysql");
    assert_eq!(filters.len(), 1);
    let config = network_rbac(&filters[0]);
    assert_eq!(config.stat_prefix, TCP_STAT_PREFIX);
    let rules = config.rules.as_ref().unwrap();
    assert_eq!(
        super::rbac::policy_names(rules),
        ["ns[default]-policy[by-namespace]-rule[0]"]
    );
    let conn = req("", "").port(3306);
    assert!(decide_tcp(&filters, &conn.clone().by_sa("default", "app")));
    assert!(!decide_tcp(&filters, &conn.clone().by_sa("foo", "app")));
    // Only HTTP ALLOW rules: the port is closed.
    let m = with(&[&ap(
        "http-only",
        "default",
        "  selector: {matchLabels: {app: mysql}}\n  rules: [{to: [{operation: {methods: [GET]}}]}]",
    )]);
    let filters = tcp(&m, "mysql");
    assert!(network_rbac(&filters[0]).rules.unwrap().policies.is_empty());
    assert!(!decide_tcp(&filters, &conn.by_sa("default", "app")));
}

#[test]
fn tcp_deny_rules_lose_http_fields_and_match_more() {
    let m = with(&[&ap(
        "deny",
        "default",
        "  action: DENY\n  rules: [{from: [{source: {notNamespaces: [default]}}], to: [{operation: {methods: [POST]}}]}]",
    )]);
    let filters = tcp(&m, "mysql");
    let conn = req("", "").port(3306);
    assert!(
        !decide_tcp(&filters, &conn.clone().by_sa("foo", "x")),
        "every connection from foo"
    );
    assert!(decide_tcp(&filters, &conn.by_sa("default", "x")));
    // On HTTP the method still counts.
    let filters = http(&m, "details");
    assert!(decide(&filters, &req("GET", "/").by_sa("foo", "x")));
    assert!(!decide(&filters, &req("POST", "/").by_sa("foo", "x")));
}

#[test]
fn tcp_rbac_v1alpha1_drops_only_the_http_access_rule() {
    let yaml = r#"
apiVersion: rbac.istio.io/v1alpha1
kind: ClusterRbacConfig
metadata: {name: default}
spec: {mode: 'ON'}
---
apiVersion: rbac.istio.io/v1alpha1
kind: ServiceRole
metadata: {name: db, namespace: default}
spec:
  rules:
  - {services: [mysql.default.svc.cluster.local], methods: [GET]}
  - {services: [mysql.default.svc.cluster.local], ports: [3306]}
---
apiVersion: rbac.istio.io/v1alpha1
kind: ServiceRoleBinding
metadata: {name: db, namespace: default}
spec:
  roleRef: {kind: ServiceRole, name: db}
  subjects:
  - {user: "cluster.local/ns/default/sa/reviews"}
  - {properties: {"request.auth.claims[group]": admins}}
"#;
    let m = with(&[yaml]);
    let filters = tcp(&m, "mysql");
    let rules = network_rbac(&filters[0]).rules.unwrap();
    let p = policy(&rules, "db");
    assert_eq!(p.permissions.len(), 1, "the ports rule stays");
    assert_eq!(p.principals.len(), 1, "the claim subject goes");
    let conn = req("", "").port(3306);
    assert!(decide_tcp(
        &filters,
        &conn.clone().by_sa("default", "reviews")
    ));
    assert!(!decide_tcp(&filters, &conn.by_sa("default", "ratings")));
}

// ---------------------------------------------------------------------------
// RequestAuthentication
// ---------------------------------------------------------------------------

fn ra(name: &str, ns: &str, spec: &str) -> String {
    format!(
        "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n{spec}\n"
    )
}

const JWKS: &str = r#"{"keys":[{"kty":"RSA","e":"AQAB","kid":"k","n":"tADy-c0Fl_mJ_Y4T1-lo5trVmdyZbs8piCDJ-xwIFXE6k7PG_64p7NNUuFsQ167ky1P46f89H5qvOcFLauuxwZn26cnzV_bYLlQ_I4tX_wz_B0pu5ZbeJhqvLs4um38Vmft0EO-K49Syjols43M3jBsY_to6Uak3yt_GQsZMOdaC7rX0zFly42MOu3IhE3f0gMxHZqfZsqiT--OiIr7cD2A7lX65t2P6LTAHhSJ-t8kpG9qylPwD3woT9W0N4aSgYAxKWusfaNUKZ1vpHJFIRvmVQtIrXxG-wNHKsc6YOq09lMFcRrVRUtkTqdotpvZdQoQNq9cCJ-ELmN2ro8bMcw"}]}"#;

fn jwt_of(filters: &[HttpFilter]) -> JwtAuthentication {
    let f = filters
        .iter()
        .find(|f| f.name == JWT_FILTER)
        .expect("a jwt_authn filter");
    typed(f)
}

fn requires(config: &JwtAuthentication) -> &JwtRequirement {
    assert_eq!(config.rules.len(), 1);
    let Some(requirement_rule::RequirementType::Requires(r)) = &config.rules[0].requirement_type
    else {
        panic!()
    };
    r
}

fn any_of(r: &JwtRequirement) -> &[JwtRequirement] {
    let Some(jwt_requirement::RequiresType::RequiresAny(list)) = &r.requires_type else {
        panic!("not requires_any: {r:?}")
    };
    &list.requirements
}

#[test]
fn request_authentication_provider() {
    let spec = format!(
        r#"  selector: {{matchLabels: {{app: products}}}}
  jwtRules:
  - issuer: https://accounts.example.com
    audiences: [products]
    jwks: '{JWKS}'
    fromHeaders: [{{name: x-jwt, prefix: "Bearer "}}]
    fromParams: [token]
    outputPayloadToHeader: x-jwt-payload
    forwardOriginalToken: true
    outputClaimToHeaders: [{{header: x-email, claim: email}}]
    spaceDelimitedClaims: [roles]
"#
    );
    let m = with(&[
        &ra("products", "default", &spec),
        &sample("rbac-config-ON.yaml"),
        &sample("products-viewer-claims.yaml"),
    ]);
    let filters = http(&m, "products");
    assert_eq!(
        names(&filters),
        [JWT_FILTER, HTTP_RBAC_FILTER],
        "jwt_authn first"
    );
    let config = jwt_of(&filters);
    assert!(config.bypass_cors_preflight);
    let p = &config.providers["origins-0"];
    assert_eq!(p.issuer, "https://accounts.example.com");
    assert_eq!(p.audiences, ["products"]);
    assert!(p.forward);
    assert_eq!(p.forward_payload_header, "x-jwt-payload");
    assert_eq!(p.payload_in_metadata, PAYLOAD_KEY);
    assert_eq!(p.from_headers[0].name, "x-jwt");
    assert_eq!(p.from_headers[0].value_prefix, "Bearer ");
    assert_eq!(p.from_params, ["token"]);
    assert_eq!(p.claim_to_headers[0].header_name, "x-email");
    assert_eq!(p.claim_to_headers[0].claim_name, "email");
    assert_eq!(
        p.normalize_payload_in_metadata
            .as_ref()
            .unwrap()
            .space_delimited_claims,
        ["permission", "roles", "scope"]
    );
    let Some(jwt_provider::JwksSourceSpecifier::LocalJwks(local)) = &p.jwks_source_specifier else {
        panic!()
    };
    assert!(format!("{local:?}").contains("AQAB"));
    // A token, if any, must be valid: origins-0 or allow_missing.
    let reqs = any_of(requires(&config));
    assert_eq!(reqs.len(), 2);
    assert_eq!(
        reqs[0].requires_type,
        Some(jwt_requirement::RequiresType::ProviderName(
            "origins-0".into()
        ))
    );
    assert!(matches!(
        reqs[1].requires_type,
        Some(jwt_requirement::RequiresType::AllowMissing(_))
    ));
    // Other workloads are not selected.
    assert!(!names(&http(&m, "details")).contains(&JWT_FILTER));
}

#[test]
fn several_issuers_sorted_with_istio_requirements() {
    let m = with(&[
        &ra(
            "z",
            "default",
            &format!("  jwtRules: [{{issuer: zeta, jwks: '{JWKS}'}}]"),
        ),
        &ra(
            "a",
            "istio-system",
            &format!("  jwtRules: [{{issuer: alpha, jwks: '{JWKS}'}}]"),
        ),
    ]);
    let config = jwt_of(&http(&m, "details"));
    assert_eq!(config.providers["origins-0"].issuer, "alpha");
    assert_eq!(config.providers["origins-1"].issuer, "zeta");
    let outer = any_of(requires(&config));
    assert_eq!(outer.len(), 3, "P0, P1, and all of (P or missing)");
    let Some(jwt_requirement::RequiresType::RequiresAll(all)) = &outer[2].requires_type else {
        panic!()
    };
    assert_eq!(all.requirements.len(), 2);
    assert_eq!(any_of(&all.requirements[1]).len(), 2);
}

#[test]
fn jwks_uri_through_the_registry() {
    let idp = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: idp, namespace: default}
spec:
  hosts: [idp.example.com]
  ports: [{number: 443, name: https, protocol: TLS}]
  resolution: DNS
  location: MESH_EXTERNAL
"#;
    let m = with(&[
        idp,
        &ra(
            "remote",
            "default",
            "  jwtRules:\n  - {issuer: idp, jwksUri: \"https://idp.example.com/keys\", timeout: 3s}\n  - {issuer: unknown, jwksUri: \"http://nowhere.example.com:8080/keys\"}\n  - {issuer: discovery}",
        ),
    ]);
    let config = jwt_of(&http(&m, "details"));
    let by_issuer = |iss: &str| {
        config
            .providers
            .values()
            .find(|p| p.issuer == iss)
            .unwrap()
            .jwks_source_specifier
            .clone()
            .unwrap()
    };
    let jwt_provider::JwksSourceSpecifier::RemoteJwks(remote) = by_issuer("idp") else {
        panic!()
    };
    let uri = remote.http_uri.unwrap();
    assert_eq!(uri.uri, "https://idp.example.com/keys");
    assert_eq!(
        uri.http_upstream_type,
        Some(
            sextant_xds::pb::envoy::config::core::v3::http_uri::HttpUpstreamType::Cluster(
                "outbound|443||idp.example.com".into()
            )
        )
    );
    assert_eq!(uri.timeout.unwrap().seconds, 3);
    // No such service: the cluster Istio would name, and an error logged.
    let jwt_provider::JwksSourceSpecifier::RemoteJwks(remote) = by_issuer("unknown") else {
        panic!()
    };
    assert_eq!(
        remote.http_uri.unwrap().http_upstream_type,
        Some(
            sextant_xds::pb::envoy::config::core::v3::http_uri::HttpUpstreamType::Cluster(
                "outbound|8080||nowhere.example.com".into()
            )
        )
    );
    // Discovery needs a fetch: a key set no token verifies against.
    let jwt_provider::JwksSourceSpecifier::LocalJwks(local) = by_issuer("discovery") else {
        panic!()
    };
    assert!(format!("{local:?}").contains("sextant-no-keys"));
}

#[test]
fn jwks_uri_host_and_port() {
    use super::jwt::host_port;
    assert_eq!(host_port("https://a.b/c"), Some(("a.b".into(), 443)));
    assert_eq!(host_port("http://A.b:8080/c?d"), Some(("a.b".into(), 8080)));
    assert_eq!(host_port("http://[::1]:81/"), Some(("::1".into(), 81)));
    assert_eq!(host_port("http://u@h"), Some(("h".into(), 80)));
    assert_eq!(host_port("ftp://a/b"), None);
    assert_eq!(host_port("https:///x"), None);
    assert_eq!(host_port("https://a:0/"), None);
}

#[test]
fn condition_keys() {
    use model::{Attribute, PermissionKey, PrincipalKey};
    assert_eq!(
        Attribute::parse("request.auth.claims[a][b]"),
        Ok(Attribute::Principal(PrincipalKey::RequestClaim(vec![
            "a".into(),
            "b".into()
        ])))
    );
    assert_eq!(
        Attribute::parse("request.headers[x-a]"),
        Ok(Attribute::Principal(PrincipalKey::RequestHeader(
            "x-a".into()
        )))
    );
    assert_eq!(
        Attribute::parse("experimental.envoy.filters.a.b[c]"),
        Ok(Attribute::Permission(PermissionKey::EnvoyFilter {
            filter: "envoy.filters.a.b".into(),
            key: "c".into()
        }))
    );
    assert!(Attribute::parse("request.headers[]").is_err());
    assert!(Attribute::parse("request.headers").is_err());
    assert!(Attribute::parse("source.nope").is_err());
}

// ---------------------------------------------------------------------------
// Envoy's verdict
// ---------------------------------------------------------------------------

/// Every filter set above in listeners of one bootstrap, through `envoy
/// --mode validate` (skipped when the binary is not installed).
#[test]
fn envoy_accepts_the_filters() {
    use sextant_xds::pb::envoy::config::listener::v3::{FilterChain, Listener};
    use sextant_xds::pb::envoy::config::route::v3::RouteConfiguration;
    use sextant_xds::pb::envoy::extensions::filters::http::router::v3::Router;
    use sextant_xds::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager;
    use sextant_xds::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::RouteSpecifier;
    use sextant_xds::pb::envoy::extensions::filters::network::tcp_proxy::v3::TcpProxy;
    use sextant_xds::pb::envoy::extensions::filters::network::tcp_proxy::v3::tcp_proxy::ClusterSpecifier;

    let envoy = std::env::var("ENVOY_BIN")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| {
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.tools/bin/envoy")
        });
    if !envoy.exists() {
        eprintln!("skipped: no Envoy at {}", envoy.display());
        return;
    }
    let everything = with(&[
        &sample("rbac-config-ON.yaml"),
        &sample("productpage-policy.yaml"),
        &sample("details-reviews-policy.yaml"),
        &sample("ratings-policy.yaml"),
        &sample("namespace-policy.yaml"),
        &sample("products-viewer-claims.yaml"),
        &ap(
            "full",
            "foo",
            r#"  rules:
  - from:
    - {source: {principals: ["*"], requestPrincipals: ["iss/*"], namespaces: [default], remoteIpBlocks: [1.2.3.0/24], notIpBlocks: ["::1"]}}
    - {source: {serviceAccounts: [sleep], trustDomains: ["*.local"]}}
    to: [{operation: {hosts: ["*.com"], methods: [GET], paths: ["/a/{*}", "*/b"], notPorts: ["1"]}}]
    when:
    - {key: "request.auth.claims[groups][sub]", values: [x]}
    - {key: connection.sni, values: [a]}
    - {key: destination.ip, values: [10.0.0.0/8]}
    - {key: "experimental.envoy.filters.network.mysql_proxy[db.table]", values: ["[t]"]}"#,
        ),
        &ap(
            "deny",
            "istio-system",
            "  action: DENY\n  rules: [{to: [{operation: {methods: [TRACE]}}]}]",
        ),
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: dry\n  namespace: foo\n  annotations: {\"istio.io/dry-run\": \"true\"}\nspec:\n  action: DENY\n  rules: [{}]\n",
        &ap("audit", "foo", "  action: AUDIT\n  rules: [{}]"),
        &ap(
            "custom",
            "foo",
            "  action: CUSTOM\n  provider: {name: ext}\n  rules: [{}]",
        ),
        &ap(
            "db",
            "default",
            "  selector: {matchLabels: {app: mysql}}\n  rules: [{to: [{operation: {ports: [\"3306\"]}}]}]",
        ),
        &ra(
            "jwt",
            "foo",
            &format!(
                "  jwtRules:\n  - {{issuer: a, jwks: '{JWKS}', fromHeaders: [{{name: x-jwt}}], outputClaimToHeaders: [{{header: x-sub, claim: sub}}]}}\n  - {{issuer: b, jwksUri: \"https://idp.example.com/keys\"}}\n  - {{issuer: d, jwksUri: \"https://nowhere.example.com/keys\"}}\n  - {{issuer: c}}"
            ),
        ),
    ]);
    let mut listeners = Vec::new();
    let mut http_sets = 0;
    for (i, (app, ns, ip, port, protocol)) in WORKLOADS.iter().enumerate() {
        let p = proxy(ip, ns, &[]);
        let chain = if *protocol == "HTTP" {
            let mut http_filters = inbound_http_filters(&everything, &p, *port);
            if !http_filters.is_empty() {
                http_sets += 1;
            }
            http_filters.push(HttpFilter {
                name: "envoy.filters.http.router".into(),
                config_type: Some(http_filter::ConfigType::TypedConfig(crate::envoy::any(
                    &Router::default(),
                ))),
                ..Default::default()
            });
            let hcm = HttpConnectionManager {
                stat_prefix: format!("inbound_{app}"),
                route_specifier: Some(RouteSpecifier::RouteConfig(RouteConfiguration::default())),
                http_filters,
                ..Default::default()
            };
            vec![Filter {
                name: "envoy.filters.network.http_connection_manager".into(),
                config_type: Some(filter::ConfigType::TypedConfig(crate::envoy::any(&hcm))),
            }]
        } else {
            let mut filters = inbound_network_filters(&everything, &p, *port);
            assert!(!filters.is_empty());
            filters.push(Filter {
                name: "envoy.filters.network.tcp_proxy".into(),
                config_type: Some(filter::ConfigType::TypedConfig(crate::envoy::any(
                    &TcpProxy {
                        stat_prefix: "tcp".into(),
                        cluster_specifier: Some(ClusterSpecifier::Cluster("inbound|3306||".into())),
                        ..Default::default()
                    },
                ))),
            });
            filters
        };
        listeners.push(Listener {
            name: format!("{app}_{port}"),
            address: Some(crate::envoy::socket_address("127.0.0.1", 31000 + i as u32)),
            filter_chains: vec![FilterChain {
                filters: chain,
                ..Default::default()
            }],
            ..Default::default()
        });
    }
    assert!(
        http_sets >= 5,
        "the bootstrap has authorization to validate"
    );
    let verdict = envoy_validate(&envoy, "good", listeners.clone());
    // The control: Envoy does look into the RBAC configs (a permission
    // without a rule is refused).
    let mut bad = listeners[0].clone();
    let Some(filter::ConfigType::TypedConfig(hcm_any)) =
        &bad.filter_chains[0].filters[0].config_type
    else {
        panic!()
    };
    let mut hcm = HttpConnectionManager::decode(hcm_any.value.as_slice()).unwrap();
    let broken = HttpRbac {
        rules: Some(Rbac {
            policies: [(
                "broken".to_string(),
                EnvoyPolicy {
                    permissions: vec![Permission { rule: None }],
                    principals: vec![Principal {
                        identifier: Some(principal::Identifier::Any(true)),
                    }],
                    ..Default::default()
                },
            )]
            .into(),
            ..Default::default()
        }),
        ..Default::default()
    };
    hcm.http_filters.insert(
        0,
        HttpFilter {
            name: HTTP_RBAC_FILTER.into(),
            config_type: Some(http_filter::ConfigType::TypedConfig(crate::envoy::any(
                &broken,
            ))),
            ..Default::default()
        },
    );
    bad.filter_chains[0].filters[0].config_type =
        Some(filter::ConfigType::TypedConfig(crate::envoy::any(&hcm)));
    let control = envoy_validate(&envoy, "control", vec![bad]);
    if let Err(why) = verdict {
        panic!("Envoy refused the authorization filters:\n{why}");
    }
    assert!(control.is_err(), "validation mode checks RBAC configs");
}

/// `envoy --mode validate` of a bootstrap with these listeners and the
/// clusters they name.
fn envoy_validate(
    envoy: &std::path::Path,
    tag: &str,
    listeners: Vec<sextant_xds::pb::envoy::config::listener::v3::Listener>,
) -> Result<(), String> {
    use sextant_xds::pb::envoy::config::bootstrap::v3::Bootstrap;
    use sextant_xds::pb::envoy::config::bootstrap::v3::bootstrap::StaticResources;
    use sextant_xds::pb::envoy::config::cluster::v3::Cluster;
    use sextant_xds::pb::envoy::config::cluster::v3::cluster::{
        ClusterDiscoveryType, DiscoveryType,
    };
    let static_cluster = |name: &str| Cluster {
        name: name.to_string(),
        cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::Static as i32)),
        ..Default::default()
    };
    let bootstrap = Bootstrap {
        static_resources: Some(StaticResources {
            listeners,
            // The JWKS cluster of a registry host; the other remote JWKS
            // (no ServiceEntry) names a cluster that does not exist, which
            // Envoy accepts (the fetch fails at run time).
            clusters: vec![
                static_cluster("inbound|3306||"),
                static_cluster("outbound|443||idp.example.com"),
            ],
            ..Default::default()
        }),
        ..Default::default()
    };
    let path = std::env::temp_dir().join(format!("sextant-authz-{tag}-{}.pb", std::process::id()));
    std::fs::write(&path, bootstrap.encode_to_vec()).map_err(|e| e.to_string())?;
    let out = std::process::Command::new(envoy)
        .args(["--mode", "validate", "--log-level", "warn", "-c"])
        .arg(&path)
        .output()
        .map_err(|e| e.to_string())?;
    let _ = std::fs::remove_file(&path);
    if out.status.success() {
        eprint!("{}", String::from_utf8_lossy(&out.stderr));
        Ok(())
    } else {
        Err(format!(
            "{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}
