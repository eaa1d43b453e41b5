//! The one authorization model both APIs translate into.
//!
//! Istio served two authorization APIs: `rbac.istio.io/v1alpha1`
//! (ServiceRole, ServiceRoleBinding, ClusterRbacConfig) until 1.4 and
//! `security.istio.io` AuthorizationPolicy since. Both say the same thing
//! in the end, "this action for requests that match one of these rules",
//! and Envoy's RBAC filter is the only enforcement point. So both are
//! translated into this model ([`Policy`] of [`Rule`]s of [`Match`]es) and
//! one builder ([`super::rbac`]) turns it into Envoy filters: the Envoy side
//! cannot drift between the two APIs.
//!
//! A [`Rule`] is one Envoy RBAC policy: it matches when one of its
//! `permissions` (what is asked: ports, methods, paths...) and one of its
//! `principals` (who asks: peer identity, JWT claims, source IP...) match;
//! each of those is a conjunction of [`Match`]es.

/// What a policy does with the requests its rules match, in the order Istio
/// evaluates them (CUSTOM, then AUDIT, DENY, ALLOW).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Action {
    /// Delegate the decision to an external authorizer (ext_authz).
    Custom,
    /// Mark matching requests for audit logging; never denies.
    Audit,
    /// Deny matching requests.
    Deny,
    /// Allow matching requests; once any ALLOW policy applies, requests no
    /// ALLOW rule matches are denied.
    Allow,
}

/// Whether a policy's decisions are enforced or only evaluated, logged and
/// counted (Envoy's shadow rules): AuthorizationPolicy dry-run, RBAC
/// PERMISSIVE mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Mode {
    Enforce,
    DryRun,
}

/// What an ALLOW rule loses when one of its values cannot be used on the
/// filter chain at hand (an HTTP-only attribute on a TCP port, an invalid
/// IP): the two APIs differ and Istio kept each one's behaviour.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Drop {
    /// AuthorizationPolicy: the whole rule is left out (the ALLOW policy
    /// then allows less, never more).
    Rule,
    /// ServiceRole/Binding (Istio 1.4): only the access rule or subject
    /// that has it is left out; the role stays with the others.
    Entry,
}

/// One policy: an action, an enforcement mode and the rules that trigger
/// it. A policy of an action with no rules still makes its filter exist
/// (an enabled v1alpha1 RBAC with no role denies everything); an
/// AuthorizationPolicy without rules is given a [`Rule::never`] by its
/// translation instead.
#[derive(Clone, Debug, PartialEq)]
pub struct Policy {
    /// The object(s) the policy comes from, for logs
    /// (`AuthorizationPolicy default/deny-all`).
    pub origin: String,
    pub action: Action,
    pub mode: Mode,
    /// The extension provider of a CUSTOM policy.
    pub provider: Option<String>,
    pub rules: Vec<Rule>,
}

/// One Envoy RBAC policy: matches when one of `permissions` and one of
/// `principals` match. An empty conjunction matches everything.
#[derive(Clone, Debug, PartialEq)]
pub struct Rule {
    /// The Envoy policy name (`ns[default]-policy[deny-all]-rule[0]` for an
    /// AuthorizationPolicy, the role name for a ServiceRole), which Envoy
    /// reports as the effective policy in logs and metadata.
    pub name: String,
    pub permissions: Vec<Vec<Match<PermissionKey>>>,
    pub principals: Vec<Vec<Match<PrincipalKey>>>,
    pub drop: Drop,
}

impl Rule {
    /// A rule that matches no request: what an ALLOW AuthorizationPolicy
    /// with an empty spec is (it denies everything).
    pub fn never(name: String) -> Rule {
        Rule {
            name,
            permissions: vec![vec![Match::never(PermissionKey::Any)]],
            principals: vec![vec![Match::never(PrincipalKey::Any)]],
            drop: Drop::Rule,
        }
    }
}

/// One attribute and the values it must (`values`, ORed) and must not
/// (`not_values`) have. Values use Istio's string forms: exact, `prefix*`,
/// `*suffix` and `*` (present).
#[derive(Clone, Debug, PartialEq)]
pub struct Match<K> {
    pub key: K,
    pub values: Vec<String>,
    pub not_values: Vec<String>,
}

impl<K> Match<K> {
    pub fn new(key: K, values: Vec<String>, not_values: Vec<String>) -> Self {
        Match {
            key,
            values,
            not_values,
        }
    }

    pub fn is(key: K, values: Vec<String>) -> Self {
        Match::new(key, values, Vec::new())
    }

    /// Matches anything (`Any` with one value).
    pub fn any(key: K) -> Self {
        Match::is(key, vec![String::new()])
    }

    /// Matches nothing (`not` of `Any`).
    pub fn never(key: K) -> Self {
        Match::new(key, Vec::new(), vec![String::new()])
    }
}

/// Attributes of the request itself or of the connection's destination:
/// Envoy RBAC permissions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PermissionKey {
    /// Every request (the value is ignored).
    Any,
    /// `:authority`, case-insensitive (`to.operation.hosts`). HTTP only.
    Host,
    /// `:method` (`methods`). HTTP only.
    Method,
    /// The normalized path (`paths`), with `{*}`/`{**}` templates. HTTP only.
    Path,
    /// A request header (v1alpha1 `request.headers[...]` constraint).
    /// HTTP only.
    Header(String),
    /// `destination.port`, `ports`.
    DestinationPort,
    /// `destination.ip`: an IP or CIDR.
    DestinationIp,
    /// `connection.sni`: the requested server name.
    Sni,
    /// `experimental.envoy.filters.NAME[KEY]`: dynamic metadata of a filter.
    EnvoyFilter { filter: String, key: String },
}

/// Attributes of who sends the request: Envoy RBAC principals.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PrincipalKey {
    /// Everyone (the value is ignored).
    Any,
    /// `source.principal`: the peer's identity from its mTLS certificate,
    /// `cluster.local/ns/NS/sa/SA`.
    SourcePrincipal,
    /// `source.namespace`: the namespace in the peer's identity.
    SourceNamespace,
    /// `serviceAccounts`: `NS/SA` or `SA` in `namespace` (the policy's).
    SourceServiceAccount { namespace: String },
    /// `trustDomains`: the trust domain of the peer's identity.
    SourceTrustDomain,
    /// `source.ip`, `ipBlocks`: the connection's peer address.
    SourceIp,
    /// `remote.ip`, `remoteIpBlocks`: the original client (XFF).
    RemoteIp,
    /// `request.auth.principal`, `requestPrincipals`: `ISS/SUB` of the JWT.
    /// HTTP only, as every `request.*` attribute.
    RequestPrincipal,
    /// `request.auth.audiences`: the JWT's `aud`.
    RequestAudiences,
    /// `request.auth.presenter`: the JWT's `azp`.
    RequestPresenter,
    /// `request.auth.claims[a][b]`: a (nested) JWT claim.
    RequestClaim(Vec<String>),
    /// `request.headers[name]`.
    RequestHeader(String),
}

/// An Istio condition key (AuthorizationPolicy `when`, ServiceRole
/// `constraints`, ServiceRoleBinding `properties`) read as a permission or
/// a principal attribute.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Attribute {
    Permission(PermissionKey),
    Principal(PrincipalKey),
}

impl Attribute {
    /// Reads a condition key; unknown keys are refused with the reason.
    pub fn parse(key: &str) -> Result<Attribute, String> {
        use Attribute::{Permission as Perm, Principal as Prin};
        let simple = match key {
            "destination.ip" => Some(Perm(PermissionKey::DestinationIp)),
            "destination.port" => Some(Perm(PermissionKey::DestinationPort)),
            "connection.sni" => Some(Perm(PermissionKey::Sni)),
            "source.ip" => Some(Prin(PrincipalKey::SourceIp)),
            "remote.ip" => Some(Prin(PrincipalKey::RemoteIp)),
            "source.namespace" => Some(Prin(PrincipalKey::SourceNamespace)),
            // `source.user` is the Istio 1.0 name of source.principal.
            "source.principal" | "source.user" => Some(Prin(PrincipalKey::SourcePrincipal)),
            "request.auth.principal" => Some(Prin(PrincipalKey::RequestPrincipal)),
            "request.auth.audiences" => Some(Prin(PrincipalKey::RequestAudiences)),
            "request.auth.presenter" => Some(Prin(PrincipalKey::RequestPresenter)),
            _ => None,
        };
        if let Some(a) = simple {
            return Ok(a);
        }
        if let Some(rest) = key.strip_prefix("request.headers") {
            let names = bracketed(rest).ok_or_else(|| bad_brackets(key))?;
            return match names.as_slice() {
                [name] => Ok(Prin(PrincipalKey::RequestHeader(name.clone()))),
                _ => Err(bad_brackets(key)),
            };
        }
        if let Some(rest) = key.strip_prefix("request.auth.claims") {
            let names = bracketed(rest).ok_or_else(|| bad_brackets(key))?;
            return Ok(Prin(PrincipalKey::RequestClaim(names)));
        }
        if let Some(rest) = key.strip_prefix("experimental.") {
            // experimental.envoy.filters.a.b[c] -> filter envoy.filters.a.b, key c.
            if let Some((filter, k)) = rest
                .strip_suffix(']')
                .and_then(|r| r.split_once('['))
                .filter(|(f, k)| f.starts_with("envoy.filters.") && !k.is_empty())
            {
                return Ok(Perm(PermissionKey::EnvoyFilter {
                    filter: filter.to_string(),
                    key: k.to_string(),
                }));
            }
            return Err(format!(
                "{key:?} is not of the form experimental.envoy.filters.NAME[KEY]"
            ));
        }
        Err(format!("unknown attribute {key:?}"))
    }
}

fn bad_brackets(key: &str) -> String {
    format!("{key:?}: expected a name in brackets, e.g. [name]")
}

/// `[a]` -> `[a]`, `[a][b]` -> `[a, b]` (nested claims); `None` unless the
/// whole string is non-empty bracketed names.
fn bracketed(s: &str) -> Option<Vec<String>> {
    let mut out = Vec::new();
    let mut rest = s;
    while !rest.is_empty() {
        let inner = rest.strip_prefix('[')?;
        let (name, after) = inner.split_once(']')?;
        if name.is_empty() || name.contains('[') {
            return None;
        }
        out.push(name.to_string());
        rest = after;
    }
    (!out.is_empty()).then_some(out)
}
