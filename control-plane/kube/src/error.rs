//! Errors of the Kubernetes edge, each naming the call or object at fault.

/// What went wrong talking to (or about) the Kubernetes API.
#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    #[error("cannot build a Kubernetes client from the in-cluster config or KUBECONFIG: {0}")]
    Client(#[source] kube::Error),
    /// A call to the API server failed; `action` says which
    /// (`create Secret istio-system/istio-ca-secret`).
    #[error("{action}: {source}")]
    Api {
        action: String,
        #[source]
        source: kube::Error,
    },
    /// TokenReview said the token is not valid (expired, wrong audience,
    /// unknown issuer, deleted pod...).
    #[error("the token is not authenticated: {reason}")]
    Unauthenticated { reason: String },
    /// The token is valid but does not belong to a service account, so it
    /// names no workload identity.
    #[error("the token's user {username:?} is not a Kubernetes service account")]
    NotServiceAccount { username: String },
    /// A Secret exists but does not hold what it should.
    #[error("Secret {namespace}/{name}: {reason}")]
    Secret {
        namespace: String,
        name: String,
        reason: String,
    },
    /// The mesh ConfigMap cannot be read.
    #[error(transparent)]
    MeshConfig(#[from] crate::mesh_config::MeshConfigError),
}

impl KubeError {
    /// Wraps a kube error with the action that failed, for `map_err`.
    pub(crate) fn api(action: impl Into<String>) -> impl FnOnce(kube::Error) -> KubeError {
        let action = action.into();
        move |source| KubeError::Api { action, source }
    }
}

/// The HTTP status code of an API error response, if the error is one.
pub(crate) fn status_code(e: &kube::Error) -> Option<u16> {
    match e {
        kube::Error::Api(status) => Some(status.code),
        _ => None,
    }
}
