//! The SDS server Envoy's `sds-grpc` cluster talks to, on a Unix socket:
//! Sextant's xDS server with a generator over the current certificate.
//! Every rotation is a new snapshot, so Envoy swaps the certificate in
//! place (existing connections keep theirs, new ones get the new one).
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3::{DataSource, data_source::Specifier};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, Secret, TlsCertificate, secret,
};
use sextant_xds::{BoxError, Proxy, Push, Resource, ResourceRequest, ServerOptions, XdsServer};
use tokio::net::UnixListener;
use tokio_stream::wrappers::UnixListenerStream;

use crate::certificate::WorkloadCertificate;
use crate::manager::Certificates;

/// The workload certificate and key, as Istio names it.
pub const WORKLOAD_SECRET: &str = "default";
/// The trust bundle (a validation context), as Istio names it.
pub const ROOT_SECRET: &str = "ROOTCA";

#[derive(Debug, thiserror::Error)]
pub enum SdsError {
    #[error("--sds-socket {path}: {action}: {source}")]
    Socket {
        path: PathBuf,
        action: &'static str,
        source: std::io::Error,
    },
    #[error("--sds-socket {0}: exists and is not a socket; refusing to replace it")]
    NotASocket(PathBuf),
    #[error("serving SDS on {path}: {source}")]
    Serve {
        path: PathBuf,
        source: tonic::transport::Error,
    },
}

/// The secrets a request asks for, from one certificate. Pure: the xDS
/// server compares the results of successive snapshots and sends what
/// changed (the key and chain on every rotation; the root only when the
/// root changes).
pub fn secrets(cert: &WorkloadCertificate, request: &ResourceRequest<'_>) -> Vec<Resource> {
    let inline = |pem: &str| DataSource {
        specifier: Some(Specifier::InlineBytes(pem.as_bytes().to_vec())),
        ..Default::default()
    };
    let mut out = Vec::new();
    if request.wants(WORKLOAD_SECRET) {
        let secret = Secret {
            name: WORKLOAD_SECRET.to_string(),
            r#type: Some(secret::Type::TlsCertificate(TlsCertificate {
                certificate_chain: Some(inline(&cert.chain_pem)),
                private_key: Some(inline(&cert.key_pem)),
                ..Default::default()
            })),
        };
        out.push(Resource::new(WORKLOAD_SECRET, &secret));
    }
    if request.wants(ROOT_SECRET) {
        let secret = Secret {
            name: ROOT_SECRET.to_string(),
            r#type: Some(secret::Type::ValidationContext(
                CertificateValidationContext {
                    trusted_ca: Some(inline(&cert.root_pem)),
                    ..Default::default()
                },
            )),
        };
        out.push(Resource::new(ROOT_SECRET, &secret));
    }
    out
}

fn generate(
    cert: &Arc<WorkloadCertificate>,
    proxy: &Proxy,
    request: &ResourceRequest<'_>,
) -> Result<Vec<Resource>, BoxError> {
    if request.type_url != sextant_xds::type_url::SECRET {
        return Ok(Vec::new());
    }
    if let Some(names) = request.names {
        let unknown: Vec<&String> = names
            .iter()
            .filter(|n| *n != WORKLOAD_SECRET && *n != ROOT_SECRET)
            .collect();
        if !unknown.is_empty() {
            tracing::warn!(node = %proxy.id, ?unknown, "Envoy asked for secrets the agent does not serve (only {WORKLOAD_SECRET} and {ROOT_SECRET})");
        }
    }
    Ok(secrets(cert, request))
}

/// Binds the socket: creates its directory, replaces a stale socket (never
/// another kind of file), and makes it owner-only since it hands out the
/// private key.
pub fn bind(path: &Path) -> Result<UnixListener, SdsError> {
    let err = |action, source| SdsError::Socket {
        path: path.to_path_buf(),
        action,
        source,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| err("creating its directory", e))?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) => {
            use std::os::unix::fs::FileTypeExt;
            if !meta.file_type().is_socket() {
                return Err(SdsError::NotASocket(path.to_path_buf()));
            }
            std::fs::remove_file(path).map_err(|e| err("removing the stale socket", e))?;
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(err("inspecting it", e)),
    }
    let listener = UnixListener::bind(path).map_err(|e| err("binding", e))?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| err("restricting it to its owner", e))?;
    }
    Ok(listener)
}

/// Serves SDS on `listener` until `shutdown` completes.
///
/// Connections are accepted only once the first certificate exists, so
/// Envoy's first SDS response is a real one (as with Istio's agent, whose
/// SDS requests wait for the certificate); until then Envoy's connection
/// waits in the socket's backlog.
pub async fn serve(
    path: PathBuf,
    listener: UnixListener,
    mut certificates: Certificates,
    shutdown: impl Future<Output = ()>,
) -> Result<(), SdsError> {
    let mut shutdown = std::pin::pin!(shutdown);
    let first = tokio::select! {
        _ = &mut shutdown => return Ok(()),
        first = certificates.wait_for(Option::is_some) => match first {
            Ok(cert) => cert.clone().expect("waited for Some"),
            // The manager is gone: nothing will ever be served.
            Err(_) => return Ok(()),
        },
    };
    let options = ServerOptions {
        identifier: "sextant-agent".to_string(),
        ..ServerOptions::default()
    };
    let server = XdsServer::with_options(generate, Push::new(first.serial.clone(), first), options);
    let pusher = tokio::spawn({
        let server = server.clone();
        async move {
            while certificates.changed().await.is_ok() {
                let cert = certificates.borrow_and_update().clone();
                if let Some(cert) = cert {
                    let span = tracing::info_span!("sds_push", serial = %cert.serial);
                    let _enter = span.enter();
                    tracing::info!("pushing the new certificate to Envoy");
                    server.push(Push::new(cert.serial.clone(), cert));
                }
            }
        }
    });
    tracing::info!(socket = %path.display(), "serving SDS");
    let result = tonic::transport::Server::builder()
        .add_routes(server.routes())
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), {
            let server = server.clone();
            async move {
                shutdown.await;
                // Envoy's streams never end by themselves; end them so the
                // graceful shutdown completes.
                server.disconnect_all();
            }
        })
        .await;
    pusher.abort();
    result.map_err(|source| SdsError::Serve { path, source })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::SpiffeId;
    use prost::Message;
    use std::collections::BTreeSet;
    use std::time::{Duration, SystemTime};

    fn cert(serial: &str, root: &str) -> WorkloadCertificate {
        WorkloadCertificate {
            identity: SpiffeId::new("cluster.local", "ns", "sa").unwrap(),
            chain_pem: format!("CHAIN {serial}\n"),
            key_pem: format!("KEY {serial}\n"),
            root_pem: root.to_string(),
            serial: serial.to_string(),
            not_before: SystemTime::UNIX_EPOCH,
            not_after: SystemTime::UNIX_EPOCH + Duration::from_secs(10),
            received: SystemTime::UNIX_EPOCH,
        }
    }

    fn decode(r: &Resource) -> Secret {
        assert_eq!(r.type_url(), sextant_xds::type_url::SECRET);
        Secret::decode(r.value()).unwrap()
    }

    fn inline(ds: &Option<DataSource>) -> String {
        match ds.as_ref().and_then(|d| d.specifier.as_ref()) {
            Some(Specifier::InlineBytes(b)) => String::from_utf8(b.clone()).unwrap(),
            other => panic!("not inline bytes: {other:?}"),
        }
    }

    #[test]
    fn default_and_rootca() {
        let c = cert("01", "ROOT\n");
        let all = secrets(
            &c,
            &ResourceRequest {
                type_url: sextant_xds::type_url::SECRET,
                names: None,
            },
        );
        assert_eq!(all.len(), 2);
        let default = decode(&all[0]);
        assert_eq!(default.name, "default");
        let Some(secret::Type::TlsCertificate(tls)) = default.r#type else {
            panic!("not a TlsCertificate: {default:?}")
        };
        assert_eq!(inline(&tls.certificate_chain), "CHAIN 01\n");
        assert_eq!(inline(&tls.private_key), "KEY 01\n");
        let root = decode(&all[1]);
        assert_eq!(root.name, "ROOTCA");
        let Some(secret::Type::ValidationContext(vc)) = root.r#type else {
            panic!("not a validation context: {root:?}")
        };
        assert_eq!(inline(&vc.trusted_ca), "ROOT\n");

        let names = BTreeSet::from(["ROOTCA".to_string()]);
        let only_root = secrets(
            &c,
            &ResourceRequest {
                type_url: sextant_xds::type_url::SECRET,
                names: Some(&names),
            },
        );
        assert_eq!(only_root.len(), 1);
        assert_eq!(only_root[0].name, "ROOTCA");
    }

    #[test]
    fn rotation_changes_default_only() {
        let request = ResourceRequest {
            type_url: sextant_xds::type_url::SECRET,
            names: None,
        };
        let a = secrets(&cert("01", "ROOT\n"), &request);
        let b = secrets(&cert("02", "ROOT\n"), &request);
        assert_ne!(a[0].version, b[0].version, "default changes");
        assert_eq!(a[1].version, b[1].version, "ROOTCA does not");
    }

    #[tokio::test]
    async fn bind_replaces_stale_sockets_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/dir/sds.sock");
        let first = bind(&path).unwrap();
        drop(first);
        assert!(path.exists(), "a dropped listener leaves its file");
        let _second = bind(&path).unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );

        let file = dir.path().join("file");
        std::fs::write(&file, "keep me").unwrap();
        let err = bind(&file).unwrap_err();
        assert!(matches!(err, SdsError::NotASocket(_)), "{err}");
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "keep me");
    }
}
