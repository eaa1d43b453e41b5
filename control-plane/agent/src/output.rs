//! `--output-dir`: the certificate as files, under Istio's names
//! (`cert-chain.pem`, `key.pem`, `root-cert.pem`).
use std::io::Write;
use std::path::Path;

use crate::certificate::WorkloadCertificate;

pub const CERT_CHAIN: &str = "cert-chain.pem";
pub const KEY: &str = "key.pem";
pub const ROOT_CERT: &str = "root-cert.pem";

/// Writes the three files, each atomically (a reader never sees half a
/// file). The key is owner-only.
pub fn write(dir: &Path, cert: &WorkloadCertificate) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    write_atomic(dir, KEY, cert.key_pem.as_bytes(), true)?;
    write_atomic(dir, CERT_CHAIN, cert.chain_pem.as_bytes(), false)?;
    write_atomic(dir, ROOT_CERT, cert.root_pem.as_bytes(), false)
}

fn write_atomic(dir: &Path, name: &str, data: &[u8], private: bool) -> std::io::Result<()> {
    let tmp = dir.join(format!(".{name}.tmp"));
    // A leftover temporary file would keep its old mode.
    let _ = std::fs::remove_file(&tmp);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(if private { 0o600 } else { 0o644 });
    }
    let mut file = options.open(&tmp)?;
    file.write_all(data)?;
    file.sync_all()?;
    std::fs::rename(&tmp, dir.join(name))
}
