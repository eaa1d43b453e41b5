//! The CA's directory: which layout it holds, and writing a new root to it
//! (the only file I/O of the crate).
use std::fs;
use std::io::{self, Write};
use std::path::Path;

use super::{
    CA_CERT_FILE, CA_KEY_FILE, CERT_CHAIN_FILE, CaOptions, CertificateAuthority, Names,
    PluggedCerts, ROOT_CERT_FILE, SelfSignedRoot,
};
use crate::error::CaError;

pub(super) fn load_or_create(
    dir: &Path,
    options: &CaOptions,
) -> Result<CertificateAuthority, CaError> {
    let names = Names::in_dir(dir);
    let read = |file: &str| read_if_present(&dir.join(file));
    let files = (
        read(CA_CERT_FILE)?,
        read(CA_KEY_FILE)?,
        read(CERT_CHAIN_FILE)?,
        read(ROOT_CERT_FILE)?,
    );
    match files {
        (Some(ca_cert_pem), Some(ca_key_pem), Some(cert_chain_pem), Some(root_cert_pem)) => {
            let ca = CertificateAuthority::load_plugged(
                &PluggedCerts {
                    ca_cert_pem,
                    ca_key_pem,
                    cert_chain_pem,
                    root_cert_pem,
                },
                options,
                &names,
            )?;
            tracing::info!(dir = %dir.display(), "using the plugged-in CA certificates (cacerts)");
            Ok(ca)
        }
        (ca_cert, ca_key, chain, root) if chain.is_some() || root.is_some() => {
            let missing: Vec<&str> = [
                (CA_CERT_FILE, ca_cert.is_none()),
                (CA_KEY_FILE, ca_key.is_none()),
                (CERT_CHAIN_FILE, chain.is_none()),
                (ROOT_CERT_FILE, root.is_none()),
            ]
            .into_iter()
            .filter_map(|(file, missing)| missing.then_some(file))
            .collect();
            Err(CaError::material(
                dir.display().to_string(),
                format!(
                    "incomplete plugged-in CA (Istio's cacerts layout): missing or empty {}",
                    missing.join(", ")
                ),
            ))
        }
        (Some(ca_cert_pem), Some(ca_key_pem), None, None) => {
            let ca = CertificateAuthority::load_self_signed(
                &SelfSignedRoot {
                    ca_cert_pem,
                    ca_key_pem,
                },
                options,
                &names,
            )?;
            tracing::info!(dir = %dir.display(), "loaded the self-signed root CA");
            Ok(ca)
        }
        (Some(_), None, None, None) => Err(CaError::material(
            names.ca_key,
            format!("missing or empty, but {} exists", names.ca_cert),
        )),
        (None, Some(_), None, None) => Err(CaError::material(
            names.ca_cert,
            format!("missing or empty, but {} exists", names.ca_key),
        )),
        (None, None, None, None) => {
            let (ca, root) = CertificateAuthority::generate(options)?;
            persist(dir, &root)?;
            tracing::info!(
                dir = %dir.display(),
                trust_domain = %options.trust_domain,
                key_type = %options.key_type,
                "created a new self-signed root CA"
            );
            Ok(ca)
        }
        _ => unreachable!("every combination of present files is matched above"),
    }
}

/// A file's content, `None` when absent or blank (Secrets mounted as
/// directories have empty keys).
fn read_if_present(path: &Path) -> Result<Option<String>, CaError> {
    match fs::read_to_string(path) {
        Ok(text) if text.trim().is_empty() => Ok(None),
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(CaError::io(path, e)),
    }
}

/// Writes the root: the key first (0600), then the certificate (0644), each
/// through a temporary file renamed into place, so a crash never leaves a
/// half-written file (at worst a lone key, which the next start reports).
fn persist(dir: &Path, root: &SelfSignedRoot) -> Result<(), CaError> {
    create_private_dir(dir)?;
    write_atomically(&dir.join(CA_KEY_FILE), &root.ca_key_pem, 0o600)?;
    write_atomically(&dir.join(CA_CERT_FILE), &root.ca_cert_pem, 0o644)?;
    if let Ok(d) = fs::File::open(dir) {
        // Make the renames durable; not all filesystems support it.
        let _ = d.sync_all();
    }
    Ok(())
}

fn create_private_dir(dir: &Path) -> Result<(), CaError> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir).map_err(|e| CaError::io(dir, e))
}

fn write_atomically(path: &Path, contents: &str, mode: u32) -> Result<(), CaError> {
    let tmp = path.with_extension("pem.tmp");
    let write = || -> io::Result<()> {
        let mut options = fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, mode);
        let mut file = options.open(&tmp)?;
        // A leftover temporary file keeps its old mode: set it explicitly.
        #[cfg(unix)]
        file.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(mode))?;
        file.write_all(contents.as_bytes())?;
        file.sync_all()?;
        fs::rename(&tmp, path)
    };
    write().map_err(|e| CaError::io(path, e))
}
