//! The Helm chart (charts/sextant) and the images (docker/): the real `helm`
//! lints and renders the chart with default and non-default values, every
//! rendered object is parsed as its k8s-openapi type (and re-serialized, so
//! a misspelt field fails instead of being dropped), and the content is
//! checked: replicas and PDB, the trust domain in the args and the mesh
//! config, the plugged-in CA, probes, ports, webhooks, and RBAC rules equal
//! to the API calls the code makes. The Dockerfiles are parsed (not built)
//! and checked against the workspace's packages and binaries and against
//! what the injector (control-plane/webhook) runs in the proxy image.
//!
//! helm comes from `make tools` (scripts/install-tools.sh). `kubectl create
//! --dry-run=client` is not used: it needs an API server for discovery even
//! in client mode.
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use k8s_openapi::Resource;
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, RuleWithOperations, ValidatingWebhookConfiguration,
    WebhookClientConfig,
};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Container, PodSpec, Service, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

/// Cluster-wide rules of the ClusterRole: (API group, resource, verbs).
/// This must match the API calls the code makes (control-plane/kube): when
/// the code starts or stops calling an API, change this table and
/// charts/sextant/templates/clusterrole.yaml together.
#[rustfmt::skip]
const CLUSTER_RULES: &[(&str, &str, &[&str])] = &[
    // Istio configuration, every kind of crds/istio-crds.yaml: watched.
    ("networking.istio.io", "destinationrules", &["list", "watch"]),
    ("networking.istio.io", "gateways", &["list", "watch"]),
    ("networking.istio.io", "serviceentries", &["list", "watch"]),
    ("networking.istio.io", "sidecars", &["list", "watch"]),
    ("networking.istio.io", "virtualservices", &["list", "watch"]),
    ("networking.istio.io", "workloadentries", &["list", "watch"]),
    ("security.istio.io", "authorizationpolicies", &["list", "watch"]),
    ("security.istio.io", "peerauthentications", &["list", "watch"]),
    ("security.istio.io", "requestauthentications", &["list", "watch"]),
    ("rbac.istio.io", "clusterrbacconfigs", &["list", "watch"]),
    ("rbac.istio.io", "rbacconfigs", &["list", "watch"]),
    ("rbac.istio.io", "servicerolebindings", &["list", "watch"]),
    ("rbac.istio.io", "serviceroles", &["list", "watch"]),
    // Their status: validation conditions, written by the leader.
    ("networking.istio.io", "destinationrules/status", &["patch"]),
    ("networking.istio.io", "gateways/status", &["patch"]),
    ("networking.istio.io", "serviceentries/status", &["patch"]),
    ("networking.istio.io", "sidecars/status", &["patch"]),
    ("networking.istio.io", "virtualservices/status", &["patch"]),
    ("networking.istio.io", "workloadentries/status", &["patch"]),
    ("security.istio.io", "authorizationpolicies/status", &["patch"]),
    ("security.istio.io", "peerauthentications/status", &["patch"]),
    ("security.istio.io", "requestauthentications/status", &["patch"]),
    ("rbac.istio.io", "clusterrbacconfigs/status", &["patch"]),
    ("rbac.istio.io", "rbacconfigs/status", &["patch"]),
    ("rbac.istio.io", "servicerolebindings/status", &["patch"]),
    ("rbac.istio.io", "serviceroles/status", &["patch"]),
    // The service registry.
    ("", "services", &["list", "watch"]),
    ("discovery.k8s.io", "endpointslices", &["list", "watch"]),
    ("", "pods", &["list", "watch"]),
    ("", "namespaces", &["list", "watch"]),
    // Gateway certificates (credentialName), any namespace.
    ("", "secrets", &["list", "watch"]),
    // istio-ca-root-cert in every namespace, written and watched (the mesh
    // ConfigMap: the Role).
    ("", "configmaps", &["get", "create", "patch", "list", "watch"]),
    // CSR callers' service-account tokens.
    ("authentication.k8s.io", "tokenreviews", &["create"]),
    // The leader patches the webhooks' caBundle.
    ("admissionregistration.k8s.io", "validatingwebhookconfigurations", &["get", "patch"]),
    ("admissionregistration.k8s.io", "mutatingwebhookconfigurations", &["get", "patch"]),
];

/// Rules of the Role in the release namespace: (API group, resource, verbs).
/// This must match the API calls the code makes (control-plane/kube), with
/// charts/sextant/templates/role.yaml.
#[rustfmt::skip]
const NAMESPACE_RULES: &[(&str, &str, &[&str])] = &[
    // The CA Secret istio-ca-secret, created by the leader when absent;
    // the plugged-in cacerts, read.
    ("", "secrets", &["get", "create"]),
    // Leader election.
    ("coordination.k8s.io", "leases", &["get", "create", "update"]),
    // The mesh ConfigMap `istio`, watched.
    ("", "configmaps", &["list", "watch"]),
];

const NAMESPACE: &str = "istio-system";
const RELEASE: &str = "sextant";

/// The values a render uses, as `--set` / `--set-json` arguments.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Values {
    Default,
    /// The non-default values of the issue: 3 replicas, a custom trust
    /// domain, a plugged-in CA.
    Custom,
    /// Every other value set to something other than its default.
    Overrides,
}

impl Values {
    fn args(self) -> Vec<String> {
        let set = |s: &str| ["--set".to_string(), s.to_string()];
        let set_json = |s: &str| ["--set-json".to_string(), s.to_string()];
        match self {
            Values::Default => vec![],
            Values::Custom => set("replicas=3,trustDomain=example.org,pluggedInCa.enabled=true")
                .into_iter()
                .collect(),
            Values::Overrides => [
                set("service.name=sextant-cp,webhook.failurePolicy=Ignore,logLevel=debug"),
                set("image.repository=registry.example/cp,image.tag=t1,image.pullPolicy=Always"),
                set("proxyImage=registry.example/proxy:t1,nodeSelector.disk=ssd"),
                set("podAnnotations.team=mesh,pluggedInCa.enabled=true"),
                set("pluggedInCa.secretName=my-ca,resources.limits.memory=2Gi"),
                set("meshConfig.outboundTrafficPolicy.mode=REGISTRY_ONLY"),
                set_json(r#"tolerations=[{"key":"dedicated","operator":"Exists"}]"#),
                set_json(
                    r#"affinity={"nodeAffinity":{"requiredDuringSchedulingIgnoredDuringExecution":{"nodeSelectorTerms":[{"matchExpressions":[{"key":"zone","operator":"In","values":["a"]}]}]}}}"#,
                ),
            ]
            .into_iter()
            .flatten()
            .collect(),
        }
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

fn chart_dir() -> PathBuf {
    workspace_root().join("charts/sextant")
}

/// The real helm; fails with what to run if it is missing.
fn helm(args: &[String]) -> Output {
    let bin = workspace_root().join(".tools/bin/helm");
    assert!(
        bin.is_file(),
        "helm is missing at {}: run `make tools` (scripts/install-tools.sh) to install it",
        bin.display()
    );
    // Helm's own config, cache and data stay out of the user's home.
    static HOME: OnceLock<tempfile::TempDir> = OnceLock::new();
    let home = HOME.get_or_init(|| tempfile::tempdir().expect("temp dir for helm"));
    Command::new(&bin)
        .args(args)
        .env("HELM_CONFIG_HOME", home.path().join("config"))
        .env("HELM_CACHE_HOME", home.path().join("cache"))
        .env("HELM_DATA_HOME", home.path().join("data"))
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", bin.display()))
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn lint(values: &[String]) -> Output {
    let mut args = vec![
        "lint".to_string(),
        "--strict".to_string(),
        chart_dir().display().to_string(),
    ];
    args.extend_from_slice(values);
    helm(&args)
}

fn template(values: &[String]) -> Output {
    let mut args: Vec<String> = [
        "template",
        RELEASE,
        &chart_dir().display().to_string(),
        "--namespace",
        NAMESPACE,
        "--include-crds",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend_from_slice(values);
    helm(&args)
}

/// Every object of one render, typed.
#[derive(Default)]
struct Rendered {
    deployments: Vec<Deployment>,
    services: Vec<Service>,
    service_accounts: Vec<ServiceAccount>,
    cluster_roles: Vec<ClusterRole>,
    cluster_role_bindings: Vec<ClusterRoleBinding>,
    roles: Vec<Role>,
    role_bindings: Vec<RoleBinding>,
    config_maps: Vec<ConfigMap>,
    validating_webhooks: Vec<ValidatingWebhookConfiguration>,
    mutating_webhooks: Vec<MutatingWebhookConfiguration>,
    pod_disruption_budgets: Vec<PodDisruptionBudget>,
    crds: Vec<CustomResourceDefinition>,
    /// (kind, name) of every object, in render order.
    objects: Vec<(String, String)>,
}

/// The chart rendered once per value set (helm is run once per test binary
/// and value set, not once per test).
fn rendered(values: Values) -> &'static Rendered {
    static DEFAULT: OnceLock<Rendered> = OnceLock::new();
    static CUSTOM: OnceLock<Rendered> = OnceLock::new();
    static OVERRIDES: OnceLock<Rendered> = OnceLock::new();
    let cell = match values {
        Values::Default => &DEFAULT,
        Values::Custom => &CUSTOM,
        Values::Overrides => &OVERRIDES,
    };
    cell.get_or_init(|| {
        let output = template(&values.args());
        assert!(
            output.status.success(),
            "helm template with {values:?} values failed:\n{}",
            text(&output)
        );
        parse_render(&String::from_utf8(output.stdout).expect("helm output is UTF-8"))
    })
}

fn parse_render(yaml: &str) -> Rendered {
    let mut out = Rendered::default();
    for document in serde_yaml::Deserializer::from_str(yaml) {
        let doc: Value = serde::Deserialize::deserialize(document)
            .unwrap_or_else(|e| panic!("rendered YAML does not parse: {e}"));
        if doc.is_null() {
            continue;
        }
        let api_version = doc["apiVersion"].as_str().unwrap_or_default().to_string();
        let kind = doc["kind"].as_str().unwrap_or_default().to_string();
        let name = doc["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        out.objects.push((kind.clone(), name));
        macro_rules! dispatch {
            ($($field:ident: $ty:ty),* $(,)?) => {
                $(
                    if api_version == <$ty>::API_VERSION && kind == <$ty>::KIND {
                        out.$field.push(typed::<$ty>(&doc));
                        continue;
                    }
                )*
            };
        }
        dispatch!(
            deployments: Deployment,
            services: Service,
            service_accounts: ServiceAccount,
            cluster_roles: ClusterRole,
            cluster_role_bindings: ClusterRoleBinding,
            roles: Role,
            role_bindings: RoleBinding,
            config_maps: ConfigMap,
            validating_webhooks: ValidatingWebhookConfiguration,
            mutating_webhooks: MutatingWebhookConfiguration,
            pod_disruption_budgets: PodDisruptionBudget,
            crds: CustomResourceDefinition,
        );
        panic!("the chart rendered {api_version} {kind} {doc:#}, which this test does not know");
    }
    out
}

/// Parses `doc` as `T`, then checks that serializing it again gives `doc`
/// back: k8s-openapi ignores unknown fields, so a misspelt field name (or
/// one at the wrong level) would otherwise vanish silently.
fn typed<T: DeserializeOwned + Serialize>(doc: &Value) -> T {
    let what = format!(
        "{} {}",
        doc["kind"].as_str().unwrap_or("?"),
        doc["metadata"]["name"].as_str().unwrap_or("?")
    );
    let object: T = serde_json::from_value(doc.clone()).unwrap_or_else(|e| {
        panic!(
            "{what} does not parse as {}: {e}",
            std::any::type_name::<T>()
        )
    });
    let again = serde_json::to_value(&object).expect("serializes");
    if let Some(difference) = first_difference(&without_nulls(doc), &again, "") {
        panic!(
            "{what}: {difference} (a field k8s-openapi does not know is dropped: misspelt or misplaced?)"
        );
    }
    object
}

fn without_nulls(value: &Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k.clone(), without_nulls(v)))
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(without_nulls).collect()),
        other => other.clone(),
    }
}

/// The first place where `got` differs from `want`, as a JSON path.
fn first_difference(want: &Value, got: &Value, path: &str) -> Option<String> {
    match (want, got) {
        (Value::Object(w), Value::Object(g)) => {
            let keys: BTreeSet<&String> = w.keys().chain(g.keys()).collect();
            keys.into_iter().find_map(|key| {
                let here = format!("{path}.{key}");
                match (w.get(key), g.get(key)) {
                    (Some(a), Some(b)) => first_difference(a, b, &here),
                    (Some(a), None) => Some(format!("{here} = {a} is lost when parsed")),
                    (None, Some(b)) => Some(format!("{here} = {b} appears when parsed")),
                    (None, None) => None,
                }
            })
        }
        (Value::Array(w), Value::Array(g)) if w.len() == g.len() => w
            .iter()
            .zip(g)
            .enumerate()
            .find_map(|(i, (a, b))| first_difference(a, b, &format!("{path}[{i}]"))),
        _ if want == got => None,
        _ => Some(format!("{path}: {want} becomes {got} when parsed")),
    }
}

fn one<'a, T>(items: &'a [T], what: &str) -> &'a T {
    assert_eq!(items.len(), 1, "expected exactly one {what}");
    &items[0]
}

fn pod_spec(values: Values) -> &'static PodSpec {
    let deployment = one(&rendered(values).deployments, "Deployment");
    deployment
        .spec
        .template
        .spec
        .as_ref()
        .expect("Deployment has a pod spec")
}

fn container(values: Values) -> &'static Container {
    one(&pod_spec(values).containers, "container")
}

fn pod_labels(values: Values) -> &'static BTreeMap<String, String> {
    let deployment = one(&rendered(values).deployments, "Deployment");
    deployment
        .spec
        .template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.as_ref())
        .expect("pod template labels")
}

fn args(values: Values) -> Vec<&'static str> {
    container(values)
        .args
        .as_deref()
        .unwrap_or_default()
        .iter()
        .map(String::as_str)
        .collect()
}

/// Whether `selector` (matchLabels only) selects a pod with `labels`.
fn selects(selector: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    !selector.is_empty() && selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// The parsed `mesh` key of the ConfigMap `istio`.
fn mesh_config(values: Values) -> Value {
    let config_maps = &rendered(values).config_maps;
    let istio = config_maps
        .iter()
        .find(|c| c.metadata.name.as_deref() == Some("istio"))
        .expect("a ConfigMap named istio");
    assert_eq!(istio.metadata.namespace.as_deref(), Some(NAMESPACE));
    let mesh = istio
        .data
        .as_ref()
        .and_then(|d| d.get("mesh"))
        .expect("ConfigMap istio has the key mesh");
    serde_yaml::from_str(mesh).unwrap_or_else(|e| panic!("mesh is not YAML: {e}\n{mesh}"))
}

fn expand(table: &[(&str, &str, &[&str])]) -> BTreeSet<(String, String, String)> {
    table
        .iter()
        .flat_map(|(group, resource, verbs)| {
            verbs
                .iter()
                .map(move |verb| (group.to_string(), resource.to_string(), verb.to_string()))
        })
        .collect()
}

/// The (group, resource, verb) triples `rules` grant; fails on wildcards,
/// resourceNames and nonResourceURLs, none of which the chart uses.
fn granted(rules: &[PolicyRule], role: &str) -> BTreeSet<(String, String, String)> {
    let mut out = BTreeSet::new();
    for rule in rules {
        assert!(
            rule.resource_names.is_none() && rule.non_resource_urls.is_none(),
            "{role}: unexpected resourceNames/nonResourceURLs in {rule:?}"
        );
        let groups = rule.api_groups.as_deref().unwrap_or_default();
        let resources = rule.resources.as_deref().unwrap_or_default();
        assert!(
            !groups.is_empty() && !resources.is_empty() && !rule.verbs.is_empty(),
            "{role}: rule without groups, resources or verbs: {rule:?}"
        );
        for word in groups.iter().chain(resources).chain(&rule.verbs) {
            assert!(!word.contains('*'), "{role}: wildcard {word:?} in {rule:?}");
        }
        for group in groups {
            for resource in resources {
                for verb in &rule.verbs {
                    let triple = (group.clone(), resource.clone(), verb.clone());
                    assert!(
                        out.insert(triple),
                        "{role}: {group}/{resource} {verb} granted twice"
                    );
                }
            }
        }
    }
    out
}

fn describe(difference: impl IntoIterator<Item = (String, String, String)>) -> String {
    difference
        .into_iter()
        .map(|(g, r, v)| format!("  ({g:?}, {r:?}, {v})\n"))
        .collect()
}

/// The CRDs of the workspace's crds/istio-crds.yaml: group -> plurals.
fn crd_plurals() -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for crd in &rendered(Values::Default).crds {
        out.entry(crd.spec.group.clone())
            .or_default()
            .insert(crd.spec.names.plural.clone());
    }
    assert!(!out.is_empty(), "the render has no CRDs");
    out
}

fn resolve_target_port(service_port: &IntOrString, container: &Container) -> i32 {
    match service_port {
        IntOrString::Int(n) => *n,
        IntOrString::String(name) => {
            container
                .ports
                .as_deref()
                .unwrap_or_default()
                .iter()
                .find(|p| p.name.as_deref() == Some(name.as_str()))
                .unwrap_or_else(|| panic!("no container port named {name}"))
                .container_port
        }
    }
}

fn requirement(key: &str, operator: &str, values: &[&str]) -> LabelSelectorRequirement {
    LabelSelectorRequirement {
        key: key.to_string(),
        operator: operator.to_string(),
        values: (!values.is_empty()).then(|| values.iter().map(|v| v.to_string()).collect()),
    }
}

fn expressions(requirements: Vec<LabelSelectorRequirement>) -> Option<LabelSelector> {
    Some(LabelSelector {
        match_expressions: Some(requirements),
        match_labels: None,
    })
}

fn webhook_service(client: &WebhookClientConfig, values: Values, path: &str) {
    let service = client.service.as_ref().expect("webhook calls a Service");
    let service_name = match values {
        Values::Overrides => "sextant-cp",
        _ => "istiod",
    };
    assert_eq!(service.name, service_name);
    assert_eq!(service.namespace, NAMESPACE);
    assert_eq!(service.path.as_deref(), Some(path));
    assert_eq!(service.port, Some(443));
    assert!(client.url.is_none(), "webhook has both a Service and a URL");
    // The leader patches caBundle; a rendered one would be reset by upgrades.
    assert!(
        client.ca_bundle.is_none(),
        "caBundle must not be rendered (helm upgrade would reset the leader's patch)"
    );
    // The Service sends the webhook port to the container's 15017.
    let rendered_service = rendered(values)
        .services
        .iter()
        .find(|s| s.metadata.name.as_deref() == Some(service_name))
        .expect("the webhook's Service is rendered");
    let port = rendered_service
        .spec
        .as_ref()
        .and_then(|s| s.ports.as_deref())
        .unwrap_or_default()
        .iter()
        .find(|p| p.port == 443)
        .expect("the Service has port 443");
    let target = port.target_port.as_ref().expect("443 has a targetPort");
    assert_eq!(resolve_target_port(target, container(values)), 15017);
}

// ---- helm lint and helm template ---------------------------------------

#[test]
fn helm_lint_passes_with_default_and_non_default_values() {
    for values in [Values::Default, Values::Custom, Values::Overrides] {
        let output = lint(&values.args());
        assert!(
            output.status.success() && text(&output).contains("0 chart(s) failed"),
            "helm lint --strict with {values:?} values:\n{}",
            text(&output)
        );
    }
}

#[test]
fn bad_values_are_rejected_naming_the_value() {
    let cases: &[(&[&str], &str)] = &[
        (&["--set", "replicas=0"], "/replicas"),
        (
            &["--set", "webhook.failurePolicy=Sometimes"],
            "/webhook/failurePolicy",
        ),
        // A typo in a value name is an error, not a silently ignored value.
        (&["--set", "replica=3"], "'replica' not allowed"),
        (
            &["--set", "pluggedInCa.enabeld=true"],
            "'enabeld' not allowed",
        ),
        (&["--set", "trustDomain=Not A Domain"], "/trustDomain"),
    ];
    for (args, message) in cases {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        for output in [lint(&args), template(&args)] {
            assert!(
                !output.status.success() && text(&output).contains(message),
                "values {args:?}: expected a failure mentioning {message:?}, got:\n{}",
                text(&output)
            );
        }
    }
    // Two trust domains would be two meshes: the render refuses.
    let output = template(&["--set".into(), "meshConfig.trustDomain=other.org".into()]);
    assert!(
        !output.status.success()
            && text(&output).contains(
                "meshConfig.trustDomain (other.org) differs from trustDomain (cluster.local)"
            ),
        "{}",
        text(&output)
    );
}

#[test]
fn every_rendered_object_is_a_valid_kubernetes_object() {
    for values in [Values::Default, Values::Custom, Values::Overrides] {
        let rendered = rendered(values);
        let mut kinds: BTreeMap<&str, usize> = BTreeMap::new();
        for (kind, name) in &rendered.objects {
            assert!(!name.is_empty(), "a {kind} without a name ({values:?})");
            *kinds.entry(kind.as_str()).or_default() += 1;
        }
        let pdbs = usize::from(values == Values::Custom);
        let expected: BTreeMap<&str, usize> = [
            ("ClusterRole", 1),
            ("ClusterRoleBinding", 1),
            ("ConfigMap", 1),
            ("CustomResourceDefinition", rendered.crds.len()),
            ("Deployment", 1),
            ("MutatingWebhookConfiguration", 1),
            ("PodDisruptionBudget", pdbs),
            ("Role", 1),
            ("RoleBinding", 1),
            ("Service", 1),
            ("ServiceAccount", 1),
            ("ValidatingWebhookConfiguration", 1),
        ]
        .into_iter()
        .filter(|(_, n)| *n > 0)
        .collect();
        assert_eq!(kinds, expected, "kinds rendered with {values:?} values");
        // Namespaced objects go to the release namespace.
        let namespaces: Vec<Option<&str>> = rendered
            .deployments
            .iter()
            .map(|o| o.metadata.namespace.as_deref())
            .chain(
                rendered
                    .services
                    .iter()
                    .map(|o| o.metadata.namespace.as_deref()),
            )
            .chain(
                rendered
                    .service_accounts
                    .iter()
                    .map(|o| o.metadata.namespace.as_deref()),
            )
            .chain(
                rendered
                    .roles
                    .iter()
                    .map(|o| o.metadata.namespace.as_deref()),
            )
            .chain(
                rendered
                    .role_bindings
                    .iter()
                    .map(|o| o.metadata.namespace.as_deref()),
            )
            .chain(
                rendered
                    .config_maps
                    .iter()
                    .map(|o| o.metadata.namespace.as_deref()),
            )
            .chain(
                rendered
                    .pod_disruption_budgets
                    .iter()
                    .map(|o| o.metadata.namespace.as_deref()),
            )
            .collect();
        assert!(
            namespaces.iter().all(|n| *n == Some(NAMESPACE)),
            "{namespaces:?}"
        );
    }
}

#[test]
fn typo_in_a_field_name_is_caught_by_the_round_trip() {
    // The check the other tests rely on: an unknown field fails.
    let doc = json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "istiod"},
        "spec": {"ports": [{"port": 15010, "targetPrt": 15010}]}
    });
    let result = std::panic::catch_unwind(|| typed::<Service>(&doc));
    let message = *result
        .expect_err("a misspelt field must fail")
        .downcast::<String>()
        .expect("panic message");
    assert!(
        message.contains(".spec.ports[0].targetPrt"),
        "message names the field: {message}"
    );
}

// ---- the Deployment -----------------------------------------------------

#[test]
fn default_values_render_one_replica_and_the_self_signed_ca() {
    let deployment = one(&rendered(Values::Default).deployments, "Deployment");
    assert_eq!(deployment.spec.replicas, Some(1));
    assert!(rendered(Values::Default).pod_disruption_budgets.is_empty());
    assert_eq!(
        args(Values::Default),
        [
            "serve",
            "--kube",
            "--xds-addr",
            "0.0.0.0:15010",
            "--xds-tls-addr",
            "0.0.0.0:15012",
            "--webhook-addr",
            "0.0.0.0:15017",
            "--admin-addr",
            "0.0.0.0:15014",
            "--trust-domain",
            "cluster.local",
            "--ca-secret-name",
            "istio-ca-secret",
        ]
    );
    let volumes = pod_spec(Values::Default)
        .volumes
        .as_deref()
        .unwrap_or_default();
    assert!(
        volumes.iter().all(|v| v.secret.is_none()),
        "no Secret is mounted without a plugged-in CA: {volumes:?}"
    );
    assert_eq!(
        mesh_config(Values::Default),
        json!({
            "trustDomain": "cluster.local",
            "defaultConfig": {"discoveryAddress": "istiod.istio-system.svc:15012"},
            "outboundTrafficPolicy": {"mode": "ALLOW_ANY"},
            "extensionProviders": [],
        })
    );
}

#[test]
fn three_replicas_render_three_and_a_disruption_budget() {
    let deployment = one(&rendered(Values::Custom).deployments, "Deployment");
    assert_eq!(deployment.spec.replicas, Some(3));
    let pdb = one(
        &rendered(Values::Custom).pod_disruption_budgets,
        "PodDisruptionBudget",
    );
    let spec = pdb.spec.as_ref().expect("PDB spec");
    assert_eq!(spec.min_available, Some(IntOrString::Int(1)));
    assert!(spec.max_unavailable.is_none());
    let selector = spec
        .selector
        .as_ref()
        .and_then(|s| s.match_labels.as_ref())
        .expect("PDB selector");
    assert!(selects(selector, pod_labels(Values::Custom)));
    // The Deployment's own selector too.
    let deployment_selector = deployment
        .spec
        .selector
        .match_labels
        .as_ref()
        .expect("Deployment selector");
    assert!(selects(deployment_selector, pod_labels(Values::Custom)));
}

#[test]
fn the_trust_domain_flows_into_the_args_and_the_mesh_config() {
    let args = args(Values::Custom);
    let at = args
        .iter()
        .position(|a| *a == "--trust-domain")
        .expect("--trust-domain");
    assert_eq!(args[at + 1], "example.org");
    assert!(!args.contains(&"cluster.local"));
    let mesh = mesh_config(Values::Custom);
    assert_eq!(mesh["trustDomain"], "example.org");
    assert_eq!(
        mesh["defaultConfig"]["discoveryAddress"],
        "istiod.istio-system.svc:15012"
    );
}

#[test]
fn the_plugged_in_ca_mounts_the_cacerts_secret() {
    for (values, secret) in [(Values::Custom, "cacerts"), (Values::Overrides, "my-ca")] {
        let args = args(values);
        assert!(
            args.windows(2).any(|w| w == ["--ca-dir", "/etc/cacerts"]),
            "{args:?}"
        );
        assert!(
            args.windows(2)
                .any(|w| w == ["--ca-secret-name", "istio-ca-secret"]),
            "{args:?}"
        );
        let volume = pod_spec(values)
            .volumes
            .as_deref()
            .unwrap_or_default()
            .iter()
            .find(|v| v.secret.is_some())
            .expect("a Secret volume");
        let source = volume.secret.as_ref().unwrap();
        assert_eq!(source.secret_name.as_deref(), Some(secret));
        assert_eq!(source.optional, Some(false));
        let mount = container(values)
            .volume_mounts
            .as_deref()
            .unwrap_or_default()
            .iter()
            .find(|m| m.name == volume.name)
            .expect("the Secret volume is mounted");
        assert_eq!(mount.mount_path, "/etc/cacerts");
        assert_eq!(mount.read_only, Some(true));
    }
}

#[test]
fn probes_security_context_environment_and_spreading() {
    let container = container(Values::Default);
    let readiness = container
        .readiness_probe
        .as_ref()
        .and_then(|p| p.http_get.as_ref())
        .expect("readiness probe is an HTTP GET");
    assert_eq!(readiness.path.as_deref(), Some("/ready"));
    assert_eq!(readiness.port, IntOrString::Int(15014));
    let liveness = container
        .liveness_probe
        .as_ref()
        .and_then(|p| p.tcp_socket.as_ref())
        .expect("liveness probe is a TCP connection");
    assert_eq!(liveness.port, IntOrString::Int(15014));

    let security = container
        .security_context
        .as_ref()
        .expect("container securityContext");
    assert_eq!(security.run_as_non_root, Some(true));
    assert_eq!(security.run_as_user, Some(65532));
    assert_eq!(security.read_only_root_filesystem, Some(true));
    assert_eq!(security.allow_privilege_escalation, Some(false));
    let dropped = security
        .capabilities
        .as_ref()
        .and_then(|c| c.drop.as_deref())
        .unwrap_or_default();
    assert_eq!(dropped, ["ALL"]);
    let pod = pod_spec(Values::Default);
    let pod_security = pod.security_context.as_ref().expect("pod securityContext");
    assert_eq!(pod_security.run_as_non_root, Some(true));
    assert_eq!(
        pod_security
            .seccomp_profile
            .as_ref()
            .map(|s| s.type_.as_str()),
        Some("RuntimeDefault")
    );
    // The ServiceAccount the pod runs as is the rendered one.
    let account = one(
        &rendered(Values::Default).service_accounts,
        "ServiceAccount",
    );
    assert_eq!(
        pod.service_account_name.as_deref(),
        account.metadata.name.as_deref()
    );

    let env: BTreeMap<&str, (Option<&str>, Option<&str>)> = container
        .env
        .as_deref()
        .unwrap_or_default()
        .iter()
        .map(|e| {
            let field = e
                .value_from
                .as_ref()
                .and_then(|s| s.field_ref.as_ref())
                .map(|f| f.field_path.as_str());
            (e.name.as_str(), (e.value.as_deref(), field))
        })
        .collect();
    assert_eq!(env["POD_NAME"], (None, Some("metadata.name")));
    assert_eq!(env["POD_NAMESPACE"], (None, Some("metadata.namespace")));
    assert_eq!(env["RUST_LOG"], (Some("info"), None));
    assert_eq!(
        env["SEXTANT_PROXY_IMAGE"],
        (Some("sextant/proxy:0.1.0"), None)
    );
    assert_eq!(
        container.image.as_deref(),
        Some("sextant/control-plane:0.1.0")
    );

    // Replicas prefer different nodes.
    let terms = pod
        .affinity
        .as_ref()
        .and_then(|a| a.pod_anti_affinity.as_ref())
        .and_then(|a| {
            a.preferred_during_scheduling_ignored_during_execution
                .as_deref()
        })
        .expect("preferred pod anti-affinity");
    let term = one(terms, "anti-affinity term");
    assert_eq!(
        term.pod_affinity_term.topology_key,
        "kubernetes.io/hostname"
    );
    let selector = term
        .pod_affinity_term
        .label_selector
        .as_ref()
        .and_then(|s| s.match_labels.as_ref())
        .expect("anti-affinity selector");
    assert!(selects(selector, pod_labels(Values::Default)));
    // The control plane itself is never injected.
    assert_eq!(
        pod_labels(Values::Default)
            .get("sidecar.istio.io/inject")
            .map(String::as_str),
        Some("false")
    );
}

#[test]
fn other_values_flow_into_the_pod() {
    let pod = pod_spec(Values::Overrides);
    let container = container(Values::Overrides);
    assert_eq!(container.image.as_deref(), Some("registry.example/cp:t1"));
    assert_eq!(container.image_pull_policy.as_deref(), Some("Always"));
    let env = container.env.as_deref().unwrap_or_default();
    let value = |name: &str| {
        env.iter()
            .find(|e| e.name == name)
            .and_then(|e| e.value.as_deref())
    };
    assert_eq!(value("RUST_LOG"), Some("debug"));
    assert_eq!(
        value("SEXTANT_PROXY_IMAGE"),
        Some("registry.example/proxy:t1")
    );
    let limits = container
        .resources
        .as_ref()
        .and_then(|r| r.limits.as_ref())
        .expect("limits");
    assert_eq!(limits["memory"].0, "2Gi");
    assert_eq!(
        pod.node_selector
            .as_ref()
            .and_then(|n| n.get("disk"))
            .map(String::as_str),
        Some("ssd")
    );
    let tolerations = pod.tolerations.as_deref().unwrap_or_default();
    assert_eq!(tolerations.len(), 1);
    assert_eq!(tolerations[0].key.as_deref(), Some("dedicated"));
    // An affinity value replaces the default anti-affinity.
    let affinity = pod.affinity.as_ref().expect("affinity");
    assert!(affinity.pod_anti_affinity.is_none());
    assert!(affinity.node_affinity.is_some());
    let annotations = rendered(Values::Overrides).deployments[0]
        .spec
        .template
        .metadata
        .as_ref()
        .and_then(|m| m.annotations.as_ref())
        .expect("pod annotations");
    assert_eq!(annotations["team"], "mesh");
    assert_eq!(annotations["prometheus.io/port"], "15014");
    let mesh = mesh_config(Values::Overrides);
    assert_eq!(mesh["outboundTrafficPolicy"]["mode"], "REGISTRY_ONLY");
    assert_eq!(
        mesh["defaultConfig"]["discoveryAddress"],
        "sextant-cp.istio-system.svc:15012"
    );
    for webhook in one(
        &rendered(Values::Overrides).validating_webhooks,
        "validator",
    )
    .webhooks
    .as_deref()
    .unwrap_or_default()
    {
        assert_eq!(webhook.failure_policy.as_deref(), Some("Ignore"));
        webhook_service(&webhook.client_config, Values::Overrides, "/validate");
    }
    for webhook in one(&rendered(Values::Overrides).mutating_webhooks, "injector")
        .webhooks
        .as_deref()
        .unwrap_or_default()
    {
        assert_eq!(webhook.failure_policy.as_deref(), Some("Ignore"));
        webhook_service(&webhook.client_config, Values::Overrides, "/inject");
    }
}

// ---- the Service --------------------------------------------------------

#[test]
fn the_service_has_istiods_name_and_ports() {
    let service = one(&rendered(Values::Default).services, "Service");
    assert_eq!(service.metadata.name.as_deref(), Some("istiod"));
    let spec = service.spec.as_ref().expect("Service spec");
    let container = container(Values::Default);
    let ports: BTreeMap<&str, (i32, i32)> = spec
        .ports
        .as_deref()
        .unwrap_or_default()
        .iter()
        .map(|p| {
            let target = p.target_port.as_ref().expect("explicit targetPort");
            (
                p.name.as_deref().expect("named port"),
                (p.port, resolve_target_port(target, container)),
            )
        })
        .collect();
    assert_eq!(
        ports,
        BTreeMap::from([
            ("grpc-xds", (15010, 15010)),
            ("https-dns", (15012, 15012)),
            ("http-monitoring", (15014, 15014)),
            ("https-webhook", (443, 15017)),
        ])
    );
    // The listening addresses in the args are the container ports.
    let args = args(Values::Default);
    for (flag, port) in [
        ("--xds-addr", 15010),
        ("--xds-tls-addr", 15012),
        ("--admin-addr", 15014),
        ("--webhook-addr", 15017),
    ] {
        let at = args.iter().position(|a| *a == flag).expect(flag);
        assert_eq!(args[at + 1], format!("0.0.0.0:{port}"));
    }
    let selector = spec.selector.as_ref().expect("Service selector");
    assert!(selects(selector, pod_labels(Values::Default)));
}

// ---- RBAC ---------------------------------------------------------------

#[test]
fn cluster_role_grants_exactly_the_api_calls_of_the_code() {
    for values in [Values::Default, Values::Custom] {
        let role = one(&rendered(values).cluster_roles, "ClusterRole");
        let got = granted(role.rules.as_deref().unwrap_or_default(), "ClusterRole");
        let want = expand(CLUSTER_RULES);
        assert!(
            got == want,
            "ClusterRole differs from CLUSTER_RULES.\nGranted but not in the table:\n{}Missing:\n{}",
            describe(got.difference(&want).cloned()),
            describe(want.difference(&got).cloned()),
        );
    }
}

#[test]
fn role_grants_exactly_the_namespaced_api_calls_of_the_code() {
    let role = one(&rendered(Values::Default).roles, "Role");
    assert_eq!(role.metadata.namespace.as_deref(), Some(NAMESPACE));
    let got = granted(role.rules.as_deref().unwrap_or_default(), "Role");
    let want = expand(NAMESPACE_RULES);
    assert!(
        got == want,
        "Role differs from NAMESPACE_RULES.\nGranted but not in the table:\n{}Missing:\n{}",
        describe(got.difference(&want).cloned()),
        describe(want.difference(&got).cloned()),
    );
}

#[test]
fn rbac_covers_every_istio_kind_and_its_status() {
    let plurals = crd_plurals();
    let istio_groups: BTreeSet<&str> = plurals.keys().map(String::as_str).collect();
    let table = expand(CLUSTER_RULES);
    let mut in_table: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (group, resource, _) in &table {
        if istio_groups.contains(group.as_str()) {
            in_table
                .entry(group.clone())
                .or_default()
                .insert(resource.clone());
        }
    }
    let mut want: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (group, kinds) in &plurals {
        for plural in kinds {
            let resources = want.entry(group.clone()).or_default();
            resources.insert(plural.clone());
            resources.insert(format!("{plural}/status"));
            for verb in ["list", "watch"] {
                assert!(
                    table.contains(&(group.clone(), plural.clone(), verb.to_string())),
                    "{group}/{plural} lacks {verb}"
                );
            }
            assert!(
                table.contains(&(
                    group.clone(),
                    format!("{plural}/status"),
                    "patch".to_string()
                )),
                "{group}/{plural}/status lacks patch"
            );
        }
    }
    assert_eq!(
        in_table, want,
        "Istio resources in CLUSTER_RULES vs the CRDs"
    );
    // No Istio object is ever written by the control plane, only its status.
    for (group, resource, verb) in &table {
        if istio_groups.contains(group.as_str()) && !resource.ends_with("/status") {
            assert!(
                ["list", "watch"].contains(&verb.as_str()),
                "{group}/{resource} {verb}"
            );
        }
    }
}

#[test]
fn bindings_give_the_roles_to_the_control_planes_service_account() {
    let rendered = rendered(Values::Default);
    let account = one(&rendered.service_accounts, "ServiceAccount");
    let account_name = account.metadata.name.as_deref().expect("named");
    let cluster_role = one(&rendered.cluster_roles, "ClusterRole");
    let role = one(&rendered.roles, "Role");
    let cluster_binding = one(&rendered.cluster_role_bindings, "ClusterRoleBinding");
    let binding = one(&rendered.role_bindings, "RoleBinding");
    // Cluster-scoped names carry the namespace: two releases never collide.
    assert_eq!(
        cluster_role.metadata.name.as_deref(),
        Some("sextant-istio-system")
    );
    for (role_ref, subjects, kind, name) in [
        (
            &cluster_binding.role_ref,
            &cluster_binding.subjects,
            "ClusterRole",
            &cluster_role.metadata.name,
        ),
        (
            &binding.role_ref,
            &binding.subjects,
            "Role",
            &role.metadata.name,
        ),
    ] {
        assert_eq!(
            role_ref.api_group.as_deref(),
            Some("rbac.authorization.k8s.io")
        );
        assert_eq!(role_ref.kind, kind);
        assert_eq!(Some(&role_ref.name), name.as_ref());
        let subject = one(subjects.as_deref().unwrap_or_default(), "subject");
        assert_eq!(subject.kind, "ServiceAccount");
        assert_eq!(subject.name, account_name);
        assert_eq!(subject.namespace.as_deref(), Some(NAMESPACE));
    }
}

// ---- webhooks -----------------------------------------------------------

fn rules_by_group(rules: &[RuleWithOperations]) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for rule in rules {
        for group in rule.api_groups.as_deref().unwrap_or_default() {
            out.entry(group.clone())
                .or_default()
                .extend(rule.resources.iter().flatten().cloned());
        }
    }
    out
}

#[test]
fn validating_webhook_checks_every_istio_kind() {
    let configuration = one(&rendered(Values::Default).validating_webhooks, "validator");
    assert_eq!(
        configuration.metadata.name.as_deref(),
        Some("istio-validator-sextant-istio-system")
    );
    let webhook = one(
        configuration.webhooks.as_deref().unwrap_or_default(),
        "validating webhook",
    );
    assert_eq!(webhook.name, "validation.istio.io");
    webhook_service(&webhook.client_config, Values::Default, "/validate");
    assert_eq!(webhook.failure_policy.as_deref(), Some("Fail"));
    assert_eq!(webhook.side_effects, "None");
    assert_eq!(webhook.admission_review_versions, ["v1"]);
    let rules = webhook.rules.as_deref().unwrap_or_default();
    for rule in rules {
        let operations = rule.operations.as_deref().unwrap_or_default();
        assert_eq!(operations, ["CREATE", "UPDATE"], "{rule:?}");
        // Every version of each kind, present and future.
        assert_eq!(rule.api_versions.as_deref(), Some(&["*".to_string()][..]));
        for resource in rule.resources.iter().flatten() {
            assert!(!resource.contains('*'), "{rule:?}");
        }
    }
    assert_eq!(rules_by_group(rules), crd_plurals());
}

#[test]
fn mutating_webhooks_select_pods_as_istio_does() {
    let configuration = one(&rendered(Values::Default).mutating_webhooks, "injector");
    assert_eq!(
        configuration.metadata.name.as_deref(),
        Some("sextant-sidecar-injector")
    );
    let webhooks = configuration.webhooks.as_deref().unwrap_or_default();
    let names: Vec<&str> = webhooks.iter().map(|w| w.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "namespace.sidecar-injector.istio.io",
            "object.sidecar-injector.istio.io"
        ]
    );
    for webhook in webhooks {
        webhook_service(&webhook.client_config, Values::Default, "/inject");
        assert_eq!(webhook.failure_policy.as_deref(), Some("Fail"));
        assert_eq!(webhook.side_effects, "None");
        assert_eq!(webhook.admission_review_versions, ["v1"]);
        assert_eq!(webhook.reinvocation_policy.as_deref(), Some("Never"));
        let rule = one(webhook.rules.as_deref().unwrap_or_default(), "rule");
        assert_eq!(
            rule.operations.as_deref(),
            Some(&["CREATE".to_string()][..])
        );
        assert_eq!(rule.api_groups.as_deref(), Some(&[String::new()][..]));
        assert_eq!(rule.api_versions.as_deref(), Some(&["v1".to_string()][..]));
        assert_eq!(rule.resources.as_deref(), Some(&["pods".to_string()][..]));
    }
    // Namespaces labelled istio-injection=enabled, unless the pod opts out.
    assert_eq!(
        webhooks[0].namespace_selector,
        expressions(vec![requirement("istio-injection", "In", &["enabled"])])
    );
    assert_eq!(
        webhooks[0].object_selector,
        expressions(vec![requirement(
            "sidecar.istio.io/inject",
            "NotIn",
            &["false"]
        )])
    );
    // Pods labelled sidecar.istio.io/inject=true where the namespace does
    // not decide (so istio-injection=disabled wins).
    assert_eq!(
        webhooks[1].namespace_selector,
        expressions(vec![requirement("istio-injection", "DoesNotExist", &[])])
    );
    assert_eq!(
        webhooks[1].object_selector,
        expressions(vec![requirement(
            "sidecar.istio.io/inject",
            "In",
            &["true"]
        )])
    );
}

// ---- CRDs ---------------------------------------------------------------

#[test]
fn chart_crds_are_the_workspace_crds() {
    let root = workspace_root();
    let workspace = std::fs::read(root.join("crds/istio-crds.yaml")).expect("crds/istio-crds.yaml");
    let chart = std::fs::read(root.join("charts/sextant/crds/istio-crds.yaml"))
        .expect("charts/sextant/crds/istio-crds.yaml");
    assert!(
        workspace == chart,
        "charts/sextant/crds/istio-crds.yaml differs from crds/istio-crds.yaml: \
         run `cp crds/istio-crds.yaml charts/sextant/crds/` after `make crds`"
    );
    let files: Vec<_> = std::fs::read_dir(root.join("charts/sextant/crds"))
        .expect("charts/sextant/crds")
        .map(|e| e.expect("dir entry").file_name())
        .collect();
    assert_eq!(files, ["istio-crds.yaml"], "only the one CRD file");
    // Every CRD is rendered (by --include-crds) and parses.
    let crds = &rendered(Values::Default).crds;
    let documents = String::from_utf8(workspace)
        .expect("UTF-8")
        .matches("kind: CustomResourceDefinition")
        .count();
    assert_eq!(crds.len(), documents);
    for crd in crds {
        assert!(
            crd.spec.versions.iter().any(|v| v.served && v.storage),
            "{:?} has a served storage version",
            crd.metadata.name
        );
    }
}

// ---- images -------------------------------------------------------------

/// One Dockerfile instruction, continuation lines joined.
#[derive(Debug)]
struct Instruction {
    keyword: String,
    args: String,
}

fn dockerfile(name: &str) -> Vec<Instruction> {
    let path = workspace_root().join("docker").join(name);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let mut out = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') || (line.is_empty() && current.is_empty()) {
            continue;
        }
        if let Some(head) = line.strip_suffix('\\') {
            current.push_str(head);
            current.push(' ');
            continue;
        }
        current.push_str(line);
        let (keyword, args) = current.split_once(' ').unwrap_or((&current, ""));
        out.push(Instruction {
            keyword: keyword.to_ascii_uppercase(),
            args: args.split_whitespace().collect::<Vec<_>>().join(" "),
        });
        current.clear();
    }
    out
}

/// Workspace packages and their binaries, from `cargo metadata`.
fn workspace_binaries() -> BTreeMap<String, BTreeSet<String>> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let output = Command::new(cargo)
        .args([
            "metadata",
            "--no-deps",
            "--format-version",
            "1",
            "--offline",
        ])
        .current_dir(workspace_root())
        .output()
        .expect("running cargo metadata");
    assert!(output.status.success(), "cargo metadata: {}", text(&output));
    let metadata: Value = serde_json::from_slice(&output.stdout).expect("cargo metadata JSON");
    metadata["packages"]
        .as_array()
        .expect("packages")
        .iter()
        .map(|package| {
            let bins = package["targets"]
                .as_array()
                .expect("targets")
                .iter()
                .filter(|t| {
                    t["kind"]
                        .as_array()
                        .is_some_and(|k| k.contains(&json!("bin")))
                })
                .map(|t| t["name"].as_str().expect("target name").to_string())
                .collect();
            (package["name"].as_str().expect("name").to_string(), bins)
        })
        .collect()
}

/// What a Dockerfile declares: stages (name -> base image) and the final one.
struct Image {
    stages: Vec<(String, String)>,
    instructions: Vec<(usize, Instruction)>,
}

impl Image {
    fn read(name: &str) -> Image {
        let mut stages: Vec<(String, String)> = Vec::new();
        let mut instructions = Vec::new();
        for instruction in dockerfile(name) {
            if instruction.keyword == "FROM" {
                let words: Vec<&str> = instruction.args.split(' ').collect();
                let (base, stage) = match words[..] {
                    [base, as_, stage] if as_.eq_ignore_ascii_case("as") => (base, stage),
                    _ => panic!("{name}: every stage is named: FROM {}", instruction.args),
                };
                assert!(
                    !stages.iter().any(|(s, _)| s == stage),
                    "{name}: stage {stage} twice"
                );
                stages.push((stage.to_string(), base.to_string()));
            } else {
                assert!(!stages.is_empty(), "{name}: {instruction:?} before FROM");
                instructions.push((stages.len() - 1, instruction));
            }
        }
        Image {
            stages,
            instructions,
        }
    }

    fn last_stage(&self) -> usize {
        self.stages.len() - 1
    }

    fn in_stage(&self, stage: usize, keyword: &str) -> Vec<&str> {
        self.instructions
            .iter()
            .filter(|(s, i)| *s == stage && i.keyword == keyword)
            .map(|(_, i)| i.args.as_str())
            .collect()
    }

    fn final_json(&self, keyword: &str) -> Vec<String> {
        let args = self.in_stage(self.last_stage(), keyword);
        let last = args.last().unwrap_or_else(|| panic!("no {keyword}"));
        serde_json::from_str(last).unwrap_or_else(|e| panic!("{keyword} is not exec form: {e}"))
    }
}

/// Checks one image: a rust:1 build stage making a static musl workspace
/// binary, copied into the final stage at /usr/local/bin.
fn check_image(name: &str, base: &str, user: &str) -> Image {
    let image = Image::read(name);
    let binaries = workspace_binaries();
    assert_eq!(image.stages.len(), 2, "{name}: a build and a runtime stage");
    assert_eq!(image.stages[0], ("build".to_string(), "rust:1".to_string()));
    assert_eq!(image.stages[1].1, base, "{name}: final base image");
    assert!(
        image
            .in_stage(0, "ARG")
            .contains(&"RUST_TARGET=x86_64-unknown-linux-musl"),
        "{name}: musl target"
    );
    let builds: Vec<&str> = image
        .in_stage(0, "RUN")
        .into_iter()
        .filter(|r| r.contains("cargo build"))
        .collect();
    let build = one(&builds, "cargo build");
    let words: Vec<&str> = build.split(' ').collect();
    let after = |flag: &str| {
        words
            .windows(2)
            .find(|w| w[0] == flag)
            .map(|w| w[1])
            .unwrap_or_else(|| panic!("{name}: cargo build without {flag}"))
    };
    assert_eq!(after("--target"), "\"$RUST_TARGET\"");
    assert!(words.contains(&"--release") && words.contains(&"--locked"));
    let package = after("-p");
    let bin = after("--bin");
    let bins = binaries
        .get(package)
        .unwrap_or_else(|| panic!("{name}: -p {package} is not a workspace package"));
    assert!(
        bins.contains(bin),
        "{name}: --bin {bin} is not a binary of {package} ({bins:?})"
    );
    assert!(
        build.contains(&format!("target/$RUST_TARGET/release/{bin}")) && build.contains("INTERP"),
        "{name}: the binary is taken from the musl target dir and checked static"
    );
    // The final stage gets it from the build stage, at /usr/local/bin.
    let copies = image.in_stage(image.last_stage(), "COPY");
    let copy = format!("--from=build /out/{bin} /usr/local/bin/{bin}");
    assert!(
        copies.contains(&copy.as_str()),
        "{name}: {copy} in {copies:?}"
    );
    for copy in image
        .instructions
        .iter()
        .filter(|(_, i)| i.keyword == "COPY")
    {
        if let Some(from) = copy.1.args.strip_prefix("--from=") {
            let stage = from.split(' ').next().unwrap_or_default();
            assert!(
                image.stages[..copy.0].iter().any(|(s, _)| s == stage),
                "{name}: COPY --from={stage} names no earlier stage"
            );
        }
    }
    let users = image.in_stage(image.last_stage(), "USER");
    assert_eq!(users.last().copied(), Some(user), "{name}: runs as {user}");
    image
}

#[test]
fn control_plane_image_is_static_and_runs_what_the_chart_runs() {
    let image = check_image(
        "Dockerfile.control-plane",
        "gcr.io/distroless/static-debian12:nonroot",
        "65532:65532",
    );
    assert_eq!(image.final_json("ENTRYPOINT"), ["/usr/local/bin/sextant"]);
    // The chart runs the same path, as the same user.
    let container = container(Values::Default);
    assert_eq!(
        container.command.as_deref(),
        Some(&["/usr/local/bin/sextant".to_string()][..])
    );
    let security = container
        .security_context
        .as_ref()
        .expect("securityContext");
    assert_eq!(security.run_as_user, Some(65532));
    assert_eq!(security.run_as_group, Some(65532));
}

/// A `pub const NAME: &str = "..."` of control-plane/webhook/src/inject.rs:
/// the injector's contract with the proxy image, read from its source so the
/// two cannot drift (the webhook crate is not a dependency of these tests).
fn injector_constant(name: &str) -> String {
    let path = workspace_root().join("control-plane/webhook/src/inject.rs");
    let source = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let prefix = format!("pub const {name}: &str = \"");
    let line = source
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with(&prefix))
        .unwrap_or_else(|| panic!("{} has no `{prefix}...\";`", path.display()));
    line[prefix.len()..]
        .strip_suffix("\";")
        .unwrap_or_else(|| panic!("unexpected line {line}"))
        .to_string()
}

#[test]
fn proxy_image_holds_what_the_injector_runs() {
    let image = check_image(
        "Dockerfile.proxy",
        "envoyproxy/envoy:v1.40-latest",
        "1337:1337",
    );
    let entrypoint = injector_constant("PROXY_ENTRYPOINT");
    let iptables = injector_constant("IPTABLES_COMMAND");
    // The injected containers' commands are installed, executable, from the
    // scripts the webhook crate embeds.
    let copies = image.in_stage(image.last_stage(), "COPY");
    for (script, command) in [
        ("control-plane/webhook/proxy-entrypoint.sh", &entrypoint),
        ("control-plane/webhook/iptables.sh", &iptables),
    ] {
        assert!(
            workspace_root().join(script).is_file(),
            "{script} is missing"
        );
        let copy = format!("--chmod=0755 {script} {command}");
        assert!(copies.contains(&copy.as_str()), "COPY {copy} in {copies:?}");
    }
    // Run without the injector, the image starts the proxy as injected.
    assert_eq!(image.final_json("ENTRYPOINT"), [entrypoint]);
    // The capture exempts the proxy's UID: the image runs as it.
    assert_eq!(injector_constant_i64("PROXY_UID"), 1337);
    // The agent's relative SDS socket path resolves from /, as in Istio.
    let workdirs = image.in_stage(image.last_stage(), "WORKDIR");
    assert_eq!(workdirs.last().copied(), Some("/"));
}

/// A `pub const NAME: i64 = N;` of control-plane/webhook/src/inject.rs.
fn injector_constant_i64(name: &str) -> i64 {
    let path = workspace_root().join("control-plane/webhook/src/inject.rs");
    let source = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let prefix = format!("pub const {name}: i64 = ");
    source
        .lines()
        .map(str::trim)
        .find_map(|l| l.strip_prefix(&prefix)?.strip_suffix(';')?.parse().ok())
        .unwrap_or_else(|| panic!("{} has no `{prefix}N;`", path.display()))
}

#[test]
fn chart_app_version_is_the_workspace_version() {
    // The default image tag is the chart's appVersion: it must name the
    // version the images are built from.
    let chart: Value = serde_yaml::from_str(
        &std::fs::read_to_string(chart_dir().join("Chart.yaml")).expect("Chart.yaml"),
    )
    .expect("Chart.yaml is YAML");
    assert_eq!(chart["apiVersion"], "v2");
    assert_eq!(chart["appVersion"], env!("CARGO_PKG_VERSION"));
}

#[test]
fn every_value_is_documented_in_the_chart_readme() {
    fn leaves(prefix: &str, value: &Value, out: &mut Vec<String>) {
        match value {
            Value::Object(map) if !map.is_empty() => {
                for (key, value) in map {
                    let path = if prefix.is_empty() {
                        key.clone()
                    } else {
                        format!("{prefix}.{key}")
                    };
                    leaves(&path, value, out);
                }
            }
            _ => out.push(prefix.to_string()),
        }
    }
    let values: Value = serde_yaml::from_str(
        &std::fs::read_to_string(chart_dir().join("values.yaml")).expect("values.yaml"),
    )
    .expect("values.yaml is YAML");
    let readme = std::fs::read_to_string(chart_dir().join("README.md")).expect("README.md");
    let mut paths = Vec::new();
    leaves("", &values, &mut paths);
    assert!(paths.len() > 15, "{paths:?}");
    let undocumented: Vec<&String> = paths
        .iter()
        .filter(|p| !readme.contains(&format!("| `{p}` |")))
        .collect();
    assert!(
        undocumented.is_empty(),
        "values without a row in charts/sextant/README.md: {undocumented:?}"
    );
}

/// The flags the chart passes exist in the binary.
#[test]
fn the_binary_accepts_the_charts_flags() {
    let bin = sextant_e2e::sextant_bin();
    let help = Command::new(&bin)
        .args(["serve", "--help"])
        .output()
        .expect("sextant serve --help");
    assert!(help.status.success(), "{}", text(&help));
    let help = text(&help);
    for args in [args(Values::Default), args(Values::Custom)] {
        for flag in args.iter().filter(|a| a.starts_with("--")) {
            assert!(
                help.contains(flag),
                "`sextant serve` has no {flag}:\n{help}"
            );
        }
    }
    let agent = Command::new(&bin)
        .args(["agent", "--help"])
        .output()
        .expect("sextant agent --help");
    assert!(agent.status.success(), "{}", text(&agent));
}
