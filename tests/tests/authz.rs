//! Authorization end to end: Istio's RBAC (ServiceRole, ServiceRoleBinding,
//! ClusterRbacConfig), RequestAuthentication and AuthorizationPolicy,
//! enforced by real Envoys on real requests between sidecars that talk
//! mutual TLS with identities from Sextant's CA
//! (`spiffe://cluster.local/ns/default/sa/bookinfo-APP`).
//!
//! Each test runs its own local mesh ([`MeshOptions::mtls`]) on its own
//! range of loopback addresses (127.0.BASE.*), so tests run in parallel.
//! Every test first polls (bounded) until the policy shows in traffic, then
//! asserts strictly, and ends by checking that no Envoy rejected an update.
use std::path::Path;
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
use serde_json::{Value, json};
use sextant_e2e::local_mesh::{Mesh, MeshOptions, Request, Response, samples_dir, send};

/// How long a policy may take to show in traffic.
const CONVERGE: Duration = Duration::from_secs(60);
/// The client workload outside BookInfo (Istio's `sleep`).
const SLEEP: &str = "sleep-v1";
/// Envoy's RBAC filter's answer to a denied request.
const RBAC_DENIED: &str = "RBAC: access denied";

fn spiffe(app: &str) -> String {
    format!("spiffe://cluster.local/ns/default/sa/bookinfo-{app}")
}

fn get(service: &str, path: &str) -> Request {
    Request::get(&format!("{service}:9080"), path)
}

fn post(service: &str, path: &str) -> Request {
    Request {
        method: "POST".into(),
        ..get(service, path)
    }
}

/// BookInfo with mTLS, plus `sleep` (a client with an identity of its own
/// and no role anywhere).
fn bookinfo(base: u8) -> Mesh {
    Mesh::start(MeshOptions::bookinfo(base).workload("sleep", "v1").mtls())
}

/// A request through a workload's sidecar (mTLS with its identity).
fn from(mesh: &Mesh, via: &str, request: &Request) -> Response {
    mesh.request(via, request).unwrap_or_else(|e| {
        panic!(
            "{} {} via {via}: {e:#}\n{}",
            request.method,
            request.path,
            mesh.context()
        )
    })
}

/// A plain-text request straight to a workload's inbound listener, as a
/// client outside the mesh (no identity) sends it.
fn outside(mesh: &Mesh, workload: &str, request: &Request) -> Response {
    send(mesh.workload(workload).inbound, request).unwrap_or_else(|e| {
        panic!(
            "{} {} to {workload} from outside: {e:#}\n{}",
            request.method,
            request.path,
            mesh.context()
        )
    })
}

fn assert_ok(mesh: &Mesh, what: &str, r: &Response) {
    assert_eq!(
        r.status,
        200,
        "{what}: expected 200, got HTTP {}: {}\n{}",
        r.status,
        r.body,
        mesh.context()
    );
}

/// Denied by Envoy's RBAC filter: 403 with its body.
fn assert_denied(mesh: &Mesh, what: &str, r: &Response) {
    assert!(
        r.status == 403 && r.body.trim() == RBAC_DENIED,
        "{what}: expected 403 {RBAC_DENIED:?}, got HTTP {}: {}\n{}",
        r.status,
        r.body,
        mesh.context()
    );
}

fn denied(r: &Response) -> bool {
    r.status == 403 && r.body.trim() == RBAC_DENIED
}

/// The answer of the upstream `service` nested in an app's answer.
fn nested<'a>(answer: &'a Value, service: &str) -> Option<&'a Value> {
    answer["calls"].as_array()?.iter().find(|c| {
        c["url"]
            .as_str()
            .is_some_and(|u| u.contains(&format!("//{service}:")))
    })
}

fn nested_status(answer: &Value, service: &str) -> Option<u64> {
    nested(answer, service)?["status"].as_u64()
}

/// The sum of an HTTP RBAC counter over a proxy's connection managers
/// (`http.PREFIX.rbac.NAME`).
fn rbac_stat(mesh: &Mesh, proxy: &str, name: &str) -> u64 {
    let suffix = format!(".rbac.{name}");
    mesh.proxy(proxy)
        .stats()
        .unwrap_or_else(|e| panic!("{proxy} stats: {e:#}"))
        .iter()
        .filter(|(k, _)| k.starts_with("http.") && k.ends_with(&suffix))
        .filter_map(|(_, v)| v.parse::<u64>().ok())
        .sum()
}

/// A shadow-rules counter of the RBAC filters of a proxy: `shadow_NAME`
/// under the shadow stat prefix, which Envoy 1.40 joins with a dot
/// (`http.PREFIX.rbac.istio_dry_run_allow_.shadow_denied`).
fn shadow_stat(mesh: &Mesh, proxy: &str, prefix: &str, name: &str) -> u64 {
    let suffixes = [
        format!(".rbac.{prefix}.shadow_{name}"),
        format!(".rbac.{prefix}shadow_{name}"),
    ];
    mesh.proxy(proxy)
        .stats()
        .unwrap_or_else(|e| panic!("{proxy} stats: {e:#}"))
        .iter()
        .filter(|(k, _)| k.starts_with("http.") && suffixes.iter().any(|s| k.ends_with(s)))
        .filter_map(|(_, v)| v.parse::<u64>().ok())
        .sum()
}

/// Polls until `check` holds five times in a row: connections opened
/// before a listener update keep its old filters until they drain, so
/// one answer under the new policy does not mean every one is.
fn wait_stable(mesh: &Mesh, what: &str, mut check: impl FnMut() -> anyhow::Result<bool>) {
    let mut streak = 0;
    mesh.wait(what, CONVERGE, || {
        if check()? {
            streak += 1;
        } else {
            streak = 0;
        }
        Ok((streak >= 5).then_some(()))
    });
}

/// Sets an Envoy's log level for one logger (`POST /logging?NAME=LEVEL`).
fn envoy_log_level(mesh: &Mesh, proxy: &str, logger: &str, level: &str) {
    let request = Request {
        method: "POST".into(),
        ..Request::get("localhost", &format!("/logging?{logger}={level}"))
    };
    let r = send(mesh.proxy(proxy).admin, &request)
        .unwrap_or_else(|e| panic!("{proxy} /logging: {e:#}"));
    assert_eq!(r.status, 200, "{proxy} /logging: {}", r.body);
}

/// The checks of the BookInfo policies (RBAC samples or their
/// AuthorizationPolicy equivalents): productpage answers GET to anyone,
/// details and reviews only productpage, ratings only reviews, GET only.
fn check_bookinfo_policies(mesh: &Mesh) {
    // Productpage to anyone with an identity; its page shows that details
    // and reviews answered it, and reviews v2/v3 that ratings answered them.
    let mut ratings_seen = 0;
    for _ in 0..12 {
        let r = from(mesh, SLEEP, &get("productpage", "/productpage"));
        assert_ok(mesh, "sleep GET productpage", &r);
        let page = r.json().unwrap();
        assert_eq!(
            nested_status(&page, "details"),
            Some(200),
            "productpage's call to details: {page}"
        );
        assert_eq!(
            nested_status(&page, "reviews"),
            Some(200),
            "productpage's call to reviews: {page}"
        );
        let reviews = &nested(&page, "reviews").unwrap()["body"];
        if matches!(reviews["version"].as_str(), Some("v2" | "v3")) {
            assert_eq!(
                nested_status(reviews, "ratings"),
                Some(200),
                "reviews' call to ratings: {reviews}"
            );
            ratings_seen += 1;
        }
    }
    assert!(ratings_seen > 0, "no answer from reviews v2 or v3 in 12");
    // And to a client outside the mesh, without identity.
    let r = outside(mesh, "productpage-v1", &get("productpage", "/productpage"));
    assert_ok(mesh, "GET productpage from outside", &r);

    // Details and reviews: productpage only.
    let r = from(mesh, "productpage-v1", &get("details", "/details/0"));
    assert_ok(mesh, "productpage GET details", &r);
    let xfcc = r.json().unwrap()["headers"]["x-forwarded-client-cert"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        xfcc.contains(&format!("URI={}", spiffe("productpage"))),
        "details was not called over mTLS as productpage: x-forwarded-client-cert {xfcc:?}"
    );
    for (via, service) in [
        (SLEEP, "details"),
        ("ratings-v1", "details"),
        ("reviews-v1", "details"),
        (SLEEP, "reviews"),
        ("details-v1", "reviews"),
        ("ratings-v1", "reviews"),
    ] {
        for _ in 0..3 {
            let r = from(mesh, via, &get(service, &format!("/{service}/0")));
            assert_denied(mesh, &format!("{via} GET {service}"), &r);
        }
    }
    let r = outside(mesh, "details-v1", &get("details", "/details/0"));
    assert_denied(mesh, "GET details from outside", &r);

    // Ratings: reviews only (v2 and v3 call it above; v1 directly here).
    for via in ["reviews-v1", "reviews-v2", "reviews-v3"] {
        let r = from(mesh, via, &get("ratings", "/ratings/0"));
        assert_ok(mesh, &format!("{via} GET ratings"), &r);
    }
    for via in ["productpage-v1", SLEEP, "details-v1"] {
        let r = from(mesh, via, &get("ratings", "/ratings/0"));
        assert_denied(mesh, &format!("{via} GET ratings"), &r);
    }

    // GET only.
    let r = from(mesh, SLEEP, &post("productpage", "/productpage"));
    assert_denied(mesh, "sleep POST productpage", &r);
    let r = from(mesh, "productpage-v1", &post("details", "/details/0"));
    assert_denied(mesh, "productpage POST details", &r);
    let r = from(mesh, "reviews-v2", &post("ratings", "/ratings/0"));
    assert_denied(mesh, "reviews POST ratings", &r);

    // The denials are Envoy's RBAC filter's, counted on the server side.
    assert!(rbac_stat(mesh, "details-v1", "denied") >= 4);
    assert!(rbac_stat(mesh, "details-v1", "allowed") >= 12);
}

/// Polls until the BookInfo policies show: sleep is refused by details,
/// productpage is not.
fn wait_bookinfo_policies(mesh: &Mesh) {
    wait_stable(mesh, "the BookInfo policies to show", || {
        let sleep = mesh.request(SLEEP, &get("details", "/details/0"))?;
        let productpage = mesh.request("productpage-v1", &get("details", "/details/0"))?;
        let ratings = mesh.request("productpage-v1", &get("ratings", "/ratings/0"))?;
        let reviews = mesh.request("details-v1", &get("reviews", "/reviews/0"))?;
        let post = mesh.request(SLEEP, &post("productpage", "/productpage"))?;
        Ok(denied(&sleep)
            && productpage.status == 200
            && denied(&ratings)
            && denied(&reviews)
            && denied(&post))
    });
}

/// The BookInfo RBAC samples applied unchanged, with RBAC on for `default`:
/// productpage answers GET to anyone; details and reviews only the
/// productpage service account; ratings only reviews; POST is refused.
/// Then namespace-policy.yaml: its `destination.labels[app]` constraint
/// lets the namespace GET the four BookInfo apps and not `sleep`; and a
/// `destination.labels[version]` constraint tells reviews v1 from v2.
#[test]
fn bookinfo_rbac_samples() {
    let mesh = bookinfo(60);
    for sample in [
        "rbac/rbac-config-ON.yaml",
        "rbac/productpage-policy.yaml",
        "rbac/details-reviews-policy.yaml",
        "rbac/ratings-policy.yaml",
    ] {
        mesh.apply_sample(sample);
    }
    wait_bookinfo_policies(&mesh);
    check_bookinfo_policies(&mesh);
    // RBAC is on for every service of `default`: sleep has no role.
    let r = from(&mesh, "productpage-v1", &get("sleep", "/"));
    assert_denied(&mesh, "productpage GET sleep (no role)", &r);

    // namespace-policy.yaml: GET for sources in `default` (and
    // istio-system) to services labelled app in the four BookInfo apps.
    for file in [
        "productpage-policy.yaml",
        "details-reviews-policy.yaml",
        "ratings-policy.yaml",
    ] {
        mesh.remove(file);
    }
    mesh.apply_sample("rbac/namespace-policy.yaml");
    mesh.apply(
        "reviews-v1-only.yaml",
        r#"apiVersion: rbac.istio.io/v1alpha1
kind: ServiceRole
metadata:
  name: reviews-v1-viewer
  namespace: default
spec:
  rules:
  - services: ["reviews.default.svc.cluster.local"]
    methods: ["GET"]
    constraints:
    - key: destination.labels[version]
      values: ["v1"]
---
apiVersion: rbac.istio.io/v1alpha1
kind: ServiceRoleBinding
metadata:
  name: bind-reviews-v1-viewer
  namespace: default
spec:
  subjects:
  - user: "*"
  roleRef:
    kind: ServiceRole
    name: reviews-v1-viewer
"#,
    );
    wait_stable(&mesh, "namespace-policy.yaml to show", || {
        let r = mesh.request("ratings-v1", &get("details", "/details/0"))?;
        let v1 = send(mesh.workload("reviews-v1").inbound, &get("reviews", "/"))?;
        let to_sleep = mesh.request("productpage-v1", &get("sleep", "/"))?;
        Ok(r.status == 200 && v1.status == 200 && denied(&to_sleep))
    });
    for (via, service) in [
        ("ratings-v1", "details"),
        (SLEEP, "details"),
        (SLEEP, "ratings"),
        ("details-v1", "reviews"),
        ("reviews-v1", "productpage"),
    ] {
        let r = from(&mesh, via, &get(service, "/"));
        assert_ok(
            &mesh,
            &format!("{via} GET {service} (namespace default)"),
            &r,
        );
        assert_eq!(r.header("x-sample-service"), Some(service));
    }
    // app=sleep is not among the constraint's values.
    for via in ["productpage-v1", "ratings-v1", "reviews-v2"] {
        let r = from(&mesh, via, &get("sleep", "/"));
        assert_denied(
            &mesh,
            &format!("{via} GET sleep (app label not allowed)"),
            &r,
        );
    }
    let r = from(&mesh, SLEEP, &post("details", "/details/0"));
    assert_denied(&mesh, "sleep POST details", &r);
    // Without identity the namespace is unknown: only the version role
    // applies, to reviews v1 and not to v2 or v3 of the same service.
    for _ in 0..3 {
        let r = outside(&mesh, "reviews-v1", &get("reviews", "/"));
        assert_ok(&mesh, "GET reviews v1 from outside (version v1)", &r);
        assert_eq!(r.version(), Some("v1"));
        for v in ["reviews-v2", "reviews-v3"] {
            let r = outside(&mesh, v, &get("reviews", "/"));
            assert_denied(&mesh, &format!("GET {v} from outside"), &r);
        }
        let r = outside(&mesh, "details-v1", &get("details", "/"));
        assert_denied(&mesh, "GET details from outside (no namespace)", &r);
    }
    mesh.assert_no_rejected_updates();
}

/// An ES256 key and its JWKS, to sign the tests' tokens.
struct Signer {
    key: EcdsaKeyPair,
    rng: SystemRandom,
}

const ISSUER: &str = "https://issuer.sextant.test";
const KEY_ID: &str = "sextant-test-key";

impl Signer {
    fn new() -> Signer {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
            .unwrap();
        Signer { key, rng }
    }

    /// `{"keys": [{kty EC, crv P-256, x, y}]}`: the public key is the
    /// uncompressed point 0x04 || X || Y.
    fn jwks(&self) -> String {
        let point = self.key.public_key().as_ref();
        assert_eq!((point.len(), point[0]), (65, 4));
        json!({"keys": [{
            "kty": "EC",
            "crv": "P-256",
            "alg": "ES256",
            "use": "sig",
            "kid": KEY_ID,
            "x": URL_SAFE_NO_PAD.encode(&point[1..33]),
            "y": URL_SAFE_NO_PAD.encode(&point[33..]),
        }]})
        .to_string()
    }

    /// A compact JWS of `claims` (plus `iss`, `iat` and `exp` unless given).
    fn token(&self, mut claims: Value) -> String {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let object = claims.as_object_mut().unwrap();
        object.entry("iss").or_insert(json!(ISSUER));
        object.entry("iat").or_insert(json!(now));
        object.entry("exp").or_insert(json!(now + 3600));
        let header = json!({"alg": "ES256", "typ": "JWT", "kid": KEY_ID});
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let signature = self.key.sign(&self.rng, input.as_bytes()).unwrap();
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature.as_ref()))
    }
}

fn with_token(request: Request, token: &str) -> Request {
    request.header("Authorization", &format!("Bearer {token}"))
}

/// products-viewer-claims.yaml with a RequestAuthentication of the test's
/// own ES256 key (inline JWKS): a token whose `email` claim is `a@foo.com`
/// is allowed; another email, no token, or a token signed by another key
/// are denied.
///
/// The sample binds the role to `user: "istio-ingress-service-account"`
/// together with the claim: a bare name, which no certificate of a mesh
/// carries (identities are `cluster.local/ns/NS/sa/SA`). The test replaces
/// that one value with the caller's real identity (`sleep`'s) and keeps the
/// rest of the sample unchanged.
#[test]
fn request_authentication_and_claims() {
    let signer = Signer::new();
    let mesh = Mesh::start(
        MeshOptions::new(70)
            .workload("sleep", "v1")
            .workload("products", "v1")
            .mtls(),
    );
    let sample = std::fs::read_to_string(samples_dir().join("rbac/products-viewer-claims.yaml"))
        .expect("reading products-viewer-claims.yaml");
    assert!(sample.contains("request.auth.claims[email]: \"a@foo.com\""));
    let sample = sample.replace(
        "\"istio-ingress-service-account\"",
        "\"cluster.local/ns/default/sa/bookinfo-sleep\"",
    );
    mesh.apply_sample("rbac/rbac-config-ON.yaml");
    mesh.apply(
        "request-authentication.yaml",
        &format!(
            r#"apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata:
  name: products-jwt
  namespace: default
spec:
  selector:
    matchLabels:
      app: products
  jwtRules:
  - issuer: "{ISSUER}"
    jwks: '{}'
"#,
            signer.jwks()
        ),
    );
    mesh.apply("products-viewer-claims.yaml", &sample);

    let products = || get("products", "/products/1");
    let a = signer.token(json!({"sub": "a", "email": "a@foo.com"}));
    wait_stable(&mesh, "a@foo.com to be allowed, and only them", || {
        let with_a = mesh.request(SLEEP, &with_token(products(), &a))?;
        let none = mesh.request(SLEEP, &products())?;
        let post = mesh.request(SLEEP, &with_token(post("products", "/"), &a))?;
        Ok(with_a.status == 200 && denied(&none) && denied(&post))
    });

    for _ in 0..5 {
        let r = from(&mesh, SLEEP, &with_token(products(), &a));
        assert_ok(&mesh, "GET products with a@foo.com's token", &r);
        // POST is not in the role.
        let r = from(
            &mesh,
            SLEEP,
            &with_token(post("products", "/products/1"), &a),
        );
        assert_denied(&mesh, "POST products with a@foo.com's token", &r);

        // A valid token with another email: the binding's claim does not
        // match, RBAC denies.
        let b = signer.token(json!({"sub": "b", "email": "b@foo.com"}));
        let r = from(&mesh, SLEEP, &with_token(products(), &b));
        assert_denied(&mesh, "GET products with b@foo.com's token", &r);
        let r = from(
            &mesh,
            SLEEP,
            &with_token(products(), &signer.token(json!({"sub": "c"}))),
        );
        assert_denied(&mesh, "GET products with a token without email", &r);

        // No token: jwt_authn lets it through (RequestAuthentication does
        // not require a token) and RBAC finds no claim: 403.
        let r = from(&mesh, SLEEP, &products());
        assert_denied(&mesh, "GET products without token", &r);

        // A token with the right claims signed by another key (same kid):
        // jwt_authn rejects the invalid token itself with 401, before RBAC.
        let forged = Signer::new().token(json!({"sub": "a", "email": "a@foo.com"}));
        let r = from(&mesh, SLEEP, &with_token(products(), &forged));
        assert_eq!(
            (r.status, r.body.trim()),
            (401, "Jwt verification fails"),
            "GET products with a forged token\n{}",
            mesh.context()
        );
        // An expired token of the right key: 401 too.
        let expired = signer.token(json!({"sub": "a", "email": "a@foo.com", "exp": 1_000_000}));
        let r = from(&mesh, SLEEP, &with_token(products(), &expired));
        assert_eq!(
            (r.status, r.body.trim()),
            (401, "Jwt is expired"),
            "GET products with an expired token"
        );

        // The right token without the caller's identity (plain text from
        // outside): the binding wants both.
        let r = outside(&mesh, "products-v1", &with_token(products(), &a));
        assert_denied(
            &mesh,
            "GET products from outside with a@foo.com's token",
            &r,
        );
    }
    mesh.assert_no_rejected_updates();
}

/// An AuthorizationPolicy of `default` selecting `app`, as a YAML document.
fn policy(name: &str, app: &str, action: &str, rules: &str) -> String {
    annotated_policy(name, "", app, action, rules)
}

fn annotated_policy(name: &str, annotations: &str, app: &str, action: &str, rules: &str) -> String {
    format!(
        r#"apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: {name}
  namespace: default
{annotations}spec:
  selector:
    matchLabels:
      app: {app}
  action: {action}
  rules:
{rules}
---
"#
    )
}

/// The BookInfo RBAC samples written as AuthorizationPolicies give the same
/// answers; DENY beats ALLOW; a dry-run DENY lets the request through and
/// counts (and logs) the would-be denial.
#[test]
fn authorization_policies() {
    let mesh = bookinfo(80);
    let get_only = "    to:\n    - operation:\n        methods: [\"GET\"]";
    let from_sa = |app: &str| {
        format!(
            "  - from:\n    - source:\n        principals: [\"cluster.local/ns/default/sa/bookinfo-{app}\"]\n{get_only}"
        )
    };
    let mut yaml = policy(
        "productpage-viewer",
        "productpage",
        "ALLOW",
        "  - to:\n    - operation:\n        methods: [\"GET\"]",
    );
    yaml += &policy(
        "details-viewer",
        "details",
        "ALLOW",
        &from_sa("productpage"),
    );
    yaml += &policy(
        "reviews-viewer",
        "reviews",
        "ALLOW",
        &from_sa("productpage"),
    );
    yaml += &policy("ratings-viewer", "ratings", "ALLOW", &from_sa("reviews"));
    mesh.apply("bookinfo-policies.yaml", &yaml);
    wait_bookinfo_policies(&mesh);
    check_bookinfo_policies(&mesh);
    // No ClusterRbacConfig, no policy selecting sleep: it answers anyone.
    let r = from(&mesh, "details-v1", &post("sleep", "/"));
    assert_ok(&mesh, "details POST sleep (no policy)", &r);

    // DENY beats ALLOW; a dry-run DENY only counts.
    let mut yaml = policy("allow-all", "sleep", "ALLOW", "  - {}");
    yaml += &policy(
        "deny-secret",
        "sleep",
        "DENY",
        "  - to:\n    - operation:\n        paths: [\"/secret/*\"]",
    );
    yaml += &annotated_policy(
        "deny-audit-dry-run",
        "  annotations:\n    istio.io/dry-run: \"true\"\n",
        "sleep",
        "DENY",
        "  - to:\n    - operation:\n        paths: [\"/audit/*\"]",
    );
    mesh.apply("sleep-policies.yaml", &yaml);
    wait_stable(&mesh, "deny-secret to show", || {
        let r = mesh.request("productpage-v1", &get("sleep", "/secret/1"))?;
        Ok(denied(&r))
    });
    envoy_log_level(&mesh, SLEEP, "rbac", "debug");
    let prefix = "istio_dry_run_deny_";
    let before = (
        shadow_stat(&mesh, SLEEP, prefix, "denied"),
        shadow_stat(&mesh, SLEEP, prefix, "allowed"),
    );
    let rounds = 5;
    for i in 0..rounds {
        for via in ["productpage-v1", "details-v1"] {
            let r = from(&mesh, via, &get("sleep", &format!("/secret/{i}")));
            assert_denied(&mesh, &format!("{via} GET sleep /secret/{i}"), &r);
        }
        let r = from(
            &mesh,
            "productpage-v1",
            &get("sleep", &format!("/public/{i}")),
        );
        assert_ok(&mesh, "GET sleep /public", &r);
        let r = from(&mesh, "ratings-v1", &get("sleep", &format!("/audit/{i}")));
        assert_ok(&mesh, "GET sleep /audit (dry-run DENY)", &r);
    }
    let after = (
        shadow_stat(&mesh, SLEEP, prefix, "denied"),
        shadow_stat(&mesh, SLEEP, prefix, "allowed"),
    );
    // Every request passed the shadow rules: /audit would have been denied,
    // /public and /secret not (the enforced DENY answers /secret after the
    // shadow evaluation).
    assert_eq!(
        (after.0 - before.0, after.1 - before.1),
        (rounds, 3 * rounds),
        "dry-run shadow denied/allowed under {prefix}\n{}",
        mesh.context()
    );
    let log = mesh.proxy(SLEEP).log();
    assert!(
        log.contains("shadow denied") && log.contains("ns[default]-policy[deny-audit-dry-run]"),
        "sleep's Envoy did not log the would-be denial\n{}",
        mesh.context()
    );
    assert!(
        log.contains("enforced denied") && log.contains("ns[default]-policy[deny-secret]-rule[0]"),
        "sleep's Envoy did not log the enforced denial\n{}",
        mesh.context()
    );
    mesh.assert_no_rejected_updates();
}

/// `enforcementMode: PERMISSIVE` lets the requests RBAC would deny through
/// and counts them; an invalid AuthorizationPolicy is refused by `sextant
/// validate` with its field path and, written to the config dir, leaves the
/// last good policy in force.
#[test]
fn permissive_mode_and_invalid_policies() {
    let mesh = Mesh::start(
        MeshOptions::new(90)
            .workload("sleep", "v1")
            .workload("details", "v1")
            .mtls(),
    );
    mesh.apply_sample("rbac/rbac-config-ON.yaml");
    mesh.apply_sample("rbac/details-reviews-policy.yaml");
    wait_stable(&mesh, "RBAC to deny sleep", || {
        let r = mesh.request(SLEEP, &get("details", "/details/0"))?;
        Ok(denied(&r))
    });
    let r = from(&mesh, SLEEP, &get("details", "/details/0"));
    assert_denied(&mesh, "sleep GET details (ENFORCED)", &r);

    // The same file, PERMISSIVE.
    let config = std::fs::read_to_string(samples_dir().join("rbac/rbac-config-ON.yaml")).unwrap();
    mesh.apply(
        "rbac-config-ON.yaml",
        &format!("{}\n  enforcementMode: PERMISSIVE\n", config.trim_end()),
    );
    wait_stable(&mesh, "PERMISSIVE to let sleep through", || {
        let r = mesh.request(SLEEP, &get("details", "/details/0"))?;
        Ok(r.status == 200)
    });
    let prefix = "istio_dry_run_allow_";
    let before = shadow_stat(&mesh, "details-v1", prefix, "denied");
    let enforced_before = rbac_stat(&mesh, "details-v1", "denied");
    for _ in 0..5 {
        let r = from(&mesh, SLEEP, &get("details", "/details/0"));
        assert_ok(&mesh, "sleep GET details (PERMISSIVE)", &r);
        let r = from(&mesh, SLEEP, &post("details", "/details/0"));
        assert_ok(&mesh, "sleep POST details (PERMISSIVE)", &r);
    }
    assert_eq!(
        shadow_stat(&mesh, "details-v1", prefix, "denied") - before,
        10,
        "PERMISSIVE: would-be denials counted under {prefix}\n{}",
        mesh.context()
    );
    assert_eq!(
        rbac_stat(&mesh, "details-v1", "denied"),
        enforced_before,
        "PERMISSIVE denied a request"
    );
    mesh.remove("rbac-config-ON.yaml");
    mesh.remove("details-reviews-policy.yaml");

    // A good policy, then invalid ones.
    let good = policy(
        "details-deny",
        "details",
        "DENY",
        "  - to:\n    - operation:\n        paths: [\"/blocked/*\"]",
    );
    mesh.apply("details-deny.yaml", &good);
    wait_stable(&mesh, "details-deny to show", || {
        let r = mesh.request(SLEEP, &get("details", "/blocked/1"))?;
        Ok(denied(&r))
    });
    let bad_action = good.replace("action: DENY", "action: BLOCK");
    let bad_principal = policy(
        "details-allow",
        "details",
        "ALLOW",
        "  - from:\n    - source:\n        principals: [\"\"]",
    );
    let dir = tempfile::tempdir().unwrap();
    for (file, yaml, path) in [
        ("bad-action.yaml", &bad_action, "spec.action"),
        (
            "bad-principal.yaml",
            &bad_principal,
            "spec.rules[0].from[0].source.principals[0]",
        ),
    ] {
        let file = dir.path().join(file);
        std::fs::write(&file, yaml).unwrap();
        let (code, out) = validate(&file);
        assert_eq!(code, Some(1), "sextant validate {}: {out}", file.display());
        assert!(out.contains(path), "no {path} in: {out}");
    }
    let (code, out) = validate(&dir.path().join("bad-action.yaml"));
    assert!(
        out.contains("AuthorizationPolicy default/details-deny") && out.contains("BLOCK"),
        "{code:?} {out}"
    );

    // Written to the config dir: the bad version of details-deny and a new
    // bad policy are refused, the good one stays in force.
    let version = mesh.store_version().unwrap();
    mesh.write_config("details-deny.yaml", &bad_action);
    mesh.write_config("details-allow.yaml", &bad_principal);
    let log = mesh.config_dir.with_extension("sextant-1.log");
    mesh.wait("Sextant to refuse both files", CONVERGE, || {
        let text = std::fs::read_to_string(&log)?;
        let refused = |what: &str| {
            text.lines()
                .any(|l| l.contains(what) && l.contains("the last good version stays in force"))
        };
        Ok((refused("details-deny") && refused("details-allow")).then_some(()))
    });
    // The store took neither: without details-deny /blocked would pass,
    // with details-allow sleep would be denied everything.
    assert_eq!(
        mesh.store_version().unwrap(),
        version,
        "the store changed on invalid files"
    );
    for i in 0..5 {
        let r = from(&mesh, SLEEP, &get("details", &format!("/blocked/{i}")));
        assert_denied(&mesh, "GET details /blocked after the bad versions", &r);
        let r = from(&mesh, SLEEP, &get("details", "/details/0"));
        assert_ok(&mesh, "GET details after the bad versions", &r);
    }
    mesh.assert_no_rejected_updates();
}

/// `sextant validate -f FILE`: exit code and output.
fn validate(file: &Path) -> (Option<i32>, String) {
    let output = Command::new(sextant_e2e::sextant_bin())
        .args(["validate", "-f"])
        .arg(file)
        .output()
        .expect("running sextant validate");
    (
        output.status.code(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
    )
}
