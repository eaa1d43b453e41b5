//! One Istio object as the store holds it: its kind, its key
//! (kind, namespace, name) and its typed content, parsed from a YAML or JSON
//! document with every error naming the field path.
use std::fmt;

use serde::de::DeserializeOwned;
use serde_json::Value;
use sextant_api::{networking, rbac, security};

/// The API group a kind belongs to, with its served versions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Group {
    Networking,
    Security,
    Rbac,
}

impl Group {
    pub fn name(self) -> &'static str {
        match self {
            Group::Networking => "networking.istio.io",
            Group::Security => "security.istio.io",
            Group::Rbac => "rbac.istio.io",
        }
    }

    pub fn versions(self) -> &'static [&'static str] {
        match self {
            Group::Networking => &["v1alpha3", "v1beta1", "v1"],
            Group::Security => &["v1beta1", "v1"],
            Group::Rbac => &["v1alpha1"],
        }
    }
}

/// Declares every kind once: its Rust type, group, and whether it is
/// cluster-scoped. Generates [`Kind`] and [`IstioObject`].
macro_rules! kinds {
    ($($kind:ident => $ty:ty, $group:ident, $cluster:expr;)*) => {
        /// The Istio kinds Sextant understands.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum Kind { $($kind,)* }

        impl Kind {
            pub const ALL: &'static [Kind] = &[$(Kind::$kind,)*];

            pub fn as_str(self) -> &'static str {
                match self { $(Kind::$kind => stringify!($kind),)* }
            }

            pub fn group(self) -> Group {
                match self { $(Kind::$kind => Group::$group,)* }
            }

            /// Cluster-scoped kinds have no namespace.
            pub fn cluster_scoped(self) -> bool {
                match self { $(Kind::$kind => $cluster,)* }
            }
        }

        /// A parsed Istio object of any kind (boxed: the kinds differ a lot in
        /// size and objects live behind `Arc`s in the store anyway).
        #[derive(Clone, Debug, PartialEq)]
        pub enum IstioObject { $($kind(Box<$ty>),)* }

        impl IstioObject {
            pub fn kind(&self) -> Kind {
                match self { $(IstioObject::$kind(_) => Kind::$kind,)* }
            }

            pub fn metadata(&self) -> &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
                match self { $(IstioObject::$kind(o) => &o.metadata,)* }
            }

            fn metadata_mut(&mut self) -> &mut k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
                match self { $(IstioObject::$kind(o) => &mut o.metadata,)* }
            }

            /// The object as JSON, as `kubectl get -o json` would show it.
            pub fn to_value(&self) -> Value {
                match self { $(IstioObject::$kind(o) => serde_json::to_value(o),)* }
                    .expect("Istio objects serialize")
            }

            fn from_value(kind: Kind, value: Value) -> Result<Self, ParseError> {
                match kind { $(Kind::$kind => typed::<$ty>(value).map(|o| IstioObject::$kind(Box::new(o))),)* }
            }
        }
    };
}

kinds! {
    VirtualService => networking::VirtualService, Networking, false;
    DestinationRule => networking::DestinationRule, Networking, false;
    Gateway => networking::Gateway, Networking, false;
    ServiceEntry => networking::ServiceEntry, Networking, false;
    WorkloadEntry => networking::WorkloadEntry, Networking, false;
    Sidecar => networking::Sidecar, Networking, false;
    PeerAuthentication => security::PeerAuthentication, Security, false;
    AuthorizationPolicy => security::AuthorizationPolicy, Security, false;
    RequestAuthentication => security::RequestAuthentication, Security, false;
    ServiceRole => rbac::ServiceRole, Rbac, false;
    ServiceRoleBinding => rbac::ServiceRoleBinding, Rbac, false;
    ClusterRbacConfig => rbac::ClusterRbacConfig, Rbac, true;
    RbacConfig => rbac::RbacConfig, Rbac, false;
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Kind {
    /// The kind named by a document's `apiVersion` and `kind`, if Sextant
    /// serves that group, version and kind.
    pub fn from_type(api_version: &str, kind: &str) -> Result<Kind, ParseError> {
        let found = Kind::ALL.iter().copied().find(|k| k.as_str() == kind);
        let Some(found) = found else {
            return Err(ParseError::new(
                "kind",
                format!(
                    "unknown kind {kind:?} (Sextant serves {})",
                    Kind::ALL
                        .iter()
                        .map(|k| k.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        };
        let group = found.group();
        let version = api_version
            .strip_prefix(group.name())
            .and_then(|v| v.strip_prefix('/'));
        match version {
            Some(v) if group.versions().contains(&v) => Ok(found),
            _ => Err(ParseError::new(
                "apiVersion",
                format!(
                    "{kind} is served as {}, not {api_version:?}",
                    group
                        .versions()
                        .iter()
                        .map(|v| format!("{}/{v}", group.name()))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )),
        }
    }
}

/// Identifies an object in the store. Cluster-scoped kinds have an empty
/// namespace.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectKey {
    pub kind: Kind,
    pub namespace: String,
    pub name: String,
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.namespace.is_empty() {
            write!(f, "{} {}", self.kind, self.name)
        } else {
            write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
        }
    }
}

impl IstioObject {
    pub fn key(&self) -> ObjectKey {
        let meta = self.metadata();
        ObjectKey {
            kind: self.kind(),
            namespace: meta.namespace.clone().unwrap_or_default(),
            name: meta.name.clone().unwrap_or_default(),
        }
    }

    pub fn name(&self) -> &str {
        self.metadata().name.as_deref().unwrap_or_default()
    }

    pub fn namespace(&self) -> &str {
        self.metadata().namespace.as_deref().unwrap_or_default()
    }
}

/// A document that is not a well-formed Istio object. `path` is the field
/// path from the document root (`spec.http[0].route[0].destination.subsetz`).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}{message}", if path.is_empty() { String::new() } else { format!("{path}: ") })]
pub struct ParseError {
    pub path: String,
    pub message: String,
}

impl ParseError {
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            message: message.into(),
        }
    }
}

/// The namespace given to namespaced objects that do not name one, as
/// `kubectl apply` does with the default context.
pub const DEFAULT_NAMESPACE: &str = "default";

const TOP_LEVEL_FIELDS: &[&str] = &["apiVersion", "kind", "metadata", "spec", "status"];

/// Parses one document (already decoded from YAML or JSON) into a typed
/// object. Unknown fields anywhere are errors; a namespaced object without a
/// namespace lands in [`DEFAULT_NAMESPACE`].
pub fn parse(value: Value) -> Result<IstioObject, ParseError> {
    let Value::Object(map) = &value else {
        return Err(ParseError::new(
            "",
            "a document must be a mapping with apiVersion, kind, metadata and spec",
        ));
    };
    let text = |field: &str| match map.get(field) {
        Some(Value::String(s)) if !s.is_empty() => Ok(s.as_str()),
        Some(_) => Err(ParseError::new(field, "must be a non-empty string")),
        None => Err(ParseError::new(field, "is required")),
    };
    let kind = Kind::from_type(text("apiVersion")?, text("kind")?)?;
    if let Some(unknown) = map.keys().find(|k| !TOP_LEVEL_FIELDS.contains(&k.as_str())) {
        return Err(ParseError::new(unknown.as_str(), "unknown field"));
    }
    if !map.contains_key("spec") {
        return Err(ParseError::new("spec", "is required"));
    }
    let mut object = IstioObject::from_value(kind, value)?;
    let meta = object.metadata_mut();
    if meta.name.as_deref().unwrap_or_default().is_empty() {
        return Err(ParseError::new("metadata.name", "is required"));
    }
    if kind.cluster_scoped() {
        meta.namespace = None;
    } else if meta.namespace.as_deref().unwrap_or_default().is_empty() {
        meta.namespace = Some(DEFAULT_NAMESPACE.to_string());
    }
    Ok(object)
}

/// Deserializes with the path of the first offending field.
pub(crate) fn typed<T: DeserializeOwned>(value: Value) -> Result<T, ParseError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let path = if path == "." { String::new() } else { path };
        ParseError::new(path, clean_serde_message(&e.into_inner().to_string()))
    })
}

/// serde's messages name Rust-side details ("at line 1 column 2" for JSON,
/// variant lists in backticks); keep the part a user can act on.
fn clean_serde_message(message: &str) -> String {
    let message = message.split(" at line ").next().unwrap_or(message);
    message.replace('`', "")
}

/// Decodes a multi-document YAML (or JSON) text into documents. Empty
/// documents (`---` alone, comments) are skipped. Each entry gives the
/// document's index in the stream and its value, or the YAML error.
pub fn documents(text: &str) -> Vec<(usize, Result<Value, ParseError>)> {
    use serde::Deserialize;
    let mut out = Vec::new();
    for (index, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
        match Value::deserialize(doc) {
            Ok(Value::Null) => {}
            Ok(value) => out.push((index, Ok(value))),
            Err(e) => {
                out.push((
                    index,
                    Err(ParseError::new("", format!("invalid YAML: {e}"))),
                ));
                // The YAML stream cannot be resumed after a syntax error.
                break;
            }
        }
    }
    out
}
