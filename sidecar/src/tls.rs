//! The client TLS of delivery: the verifier's CA as the only root, the sidecar's client
//! certificate and key for mTLS, the `ring` provider (nothing depends on a process-wide
//! provider), ALPN `http/1.1`. Every error names the file and what is wrong with it.
//!
//! [`TlsFiles::fingerprint`] hashes the contents of the three files, so a change is seen however
//! it is made — including a Kubernetes Secret volume update, which swaps the `..data` symlink
//! the file names point through rather than writing the files.

use rustls::crypto::CryptoProvider;
use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest as _, Sha256};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A TLS file that cannot be used: which file (and what it is for), and what is wrong.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The file cannot be read.
    #[error("{label} {}: cannot read: {source}", path.display())]
    Read {
        /// What the file is for (`verifier.ca`, `verifier.cert`, `verifier.key`).
        label: &'static str,
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file does not hold what it must.
    #[error("{label} {}: expected {expected}, found {found}", path.display())]
    Content {
        /// What the file is for.
        label: &'static str,
        /// The file.
        path: PathBuf,
        /// What it must hold.
        expected: &'static str,
        /// What it holds instead.
        found: String,
    },
    /// The files do not make a configuration (the key is not the certificate's).
    #[error("{files}: {reason}")]
    Config {
        /// The files involved.
        files: String,
        /// Why.
        reason: String,
    },
}

/// Label of the CA file in errors.
pub const LABEL_CA: &str = "verifier.ca (COHERENCE_TLS_CA)";
/// Label of the client certificate in errors.
pub const LABEL_CERT: &str = "verifier.cert (COHERENCE_TLS_CERT)";
/// Label of the client key in errors.
pub const LABEL_KEY: &str = "verifier.key (COHERENCE_TLS_KEY)";

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read(label: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        label,
        path: path.to_owned(),
        source,
    })
}

fn content(label: &'static str, path: &Path, expected: &'static str, found: String) -> TlsError {
    TlsError::Content {
        label,
        path: path.to_owned(),
        expected,
        found,
    }
}

/// What PEM blocks a file has, for messages (`no CERTIFICATE block, only PRIVATE KEY`).
fn describe_missing(bytes: &[u8], wanted: &str) -> String {
    let labels: Vec<String> = String::from_utf8_lossy(bytes)
        .lines()
        .filter_map(|l| {
            l.trim()
                .strip_prefix("-----BEGIN ")
                .and_then(|r| r.strip_suffix("-----"))
                .map(str::to_owned)
        })
        .collect();
    if !labels.is_empty() {
        format!("no {wanted} block, only {}", labels.join(", "))
    } else if bytes.is_empty() {
        format!("an empty file (no {wanted} block)")
    } else {
        format!("no {wanted} block (the file is not PEM)")
    }
}

const E_CERT: &str = "PEM certificates";
const E_KEY: &str = "a PEM private key (PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY)";
const E_CA: &str = "a PEM CA certificate usable as a trust anchor";

/// The certificates of a PEM file (a chain, end entity first).
pub fn load_certs(
    label: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = read(label, path)?;
    let mut certs = Vec::new();
    for item in CertificateDer::pem_slice_iter(&bytes) {
        certs.push(
            item.map_err(|e| content(label, path, E_CERT, format!("a broken PEM block ({e})")))?,
        );
    }
    if certs.is_empty() {
        return Err(content(
            label,
            path,
            E_CERT,
            describe_missing(&bytes, "CERTIFICATE"),
        ));
    }
    Ok(certs)
}

/// The first private key of a PEM file: PKCS#8, PKCS#1 or SEC1.
pub fn load_key(label: &'static str, path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let bytes = read(label, path)?;
    match PrivateKeyDer::pem_slice_iter(&bytes).next() {
        Some(Ok(k)) => Ok(k),
        Some(Err(e)) => Err(content(
            label,
            path,
            E_KEY,
            format!("a broken PEM block ({e})"),
        )),
        None => Err(content(
            label,
            path,
            E_KEY,
            describe_missing(&bytes, "private key"),
        )),
    }
}

/// A root store of the CA certificates of a PEM file; at least one must be usable.
pub fn load_roots(label: &'static str, path: &Path) -> Result<RootCertStore, TlsError> {
    let certs = load_certs(label, path)?;
    let mut roots = RootCertStore::empty();
    let (added, ignored) = roots.add_parsable_certificates(certs);
    if added == 0 {
        return Err(content(
            label,
            path,
            E_CA,
            format!("{ignored} certificate(s), none usable as a trust anchor"),
        ));
    }
    Ok(roots)
}

/// The three files of the client's mTLS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// CA bundle of the verifier's certificate.
    pub ca: PathBuf,
    /// Client certificate chain.
    pub cert: PathBuf,
    /// Client private key.
    pub key: PathBuf,
}

impl TlsFiles {
    /// A client configuration that trusts only the CA and presents the certificate.
    pub fn client_config(&self) -> Result<ClientConfig, TlsError> {
        let roots = load_roots(LABEL_CA, &self.ca)?;
        let chain = load_certs(LABEL_CERT, &self.cert)?;
        let key = load_key(LABEL_KEY, &self.key)?;
        let mut cfg = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config {
                files: "the ring crypto provider".into(),
                reason: e.to_string(),
            })?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .map_err(|e| TlsError::Config {
                files: format!(
                    "{LABEL_CERT} {} with {LABEL_KEY} {}",
                    self.cert.display(),
                    self.key.display()
                ),
                reason: format!("expected the key of the certificate: {e}"),
            })?;
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(cfg)
    }

    /// SHA-256 over the contents of the three files (an unreadable file hashes its error), so
    /// any change — rewritten files or a swapped Secret-volume symlink — changes it.
    pub fn fingerprint(&self) -> [u8; 32] {
        let mut h = Sha256::new();
        for p in [&self.ca, &self.cert, &self.key] {
            match std::fs::read(p) {
                Ok(b) => {
                    h.update((b.len() as u64).to_le_bytes());
                    h.update(&b);
                }
                Err(e) => {
                    h.update(u64::MAX.to_le_bytes());
                    h.update(e.kind().to_string().as_bytes());
                }
            }
        }
        h.finalize().into()
    }
}

/// A client configuration for `http://` endpoints (development): no roots, no client
/// certificate. reqwest still wants a TLS configuration; this one is never used to connect.
pub fn plain_config() -> Result<ClientConfig, TlsError> {
    Ok(ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config {
            files: "the ring crypto provider".into(),
            reason: e.to_string(),
        })?
        .with_root_certificates(RootCertStore::empty())
        .with_no_client_auth())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use coherence_verifier::tls::certgen;

    #[test]
    fn loads_generated_files_and_names_the_bad_one() {
        let d = tempfile::tempdir().unwrap();
        let g = certgen::generate(d.path(), &[], 1).unwrap();
        let files = TlsFiles {
            ca: g.ca.cert.clone(),
            cert: g.client.cert.clone(),
            key: g.client.key.clone(),
        };
        files.client_config().unwrap();

        let swapped = TlsFiles {
            cert: g.client.key.clone(),
            ..files.clone()
        };
        let e = swapped.client_config().unwrap_err().to_string();
        assert!(e.starts_with(LABEL_CERT), "{e}");
        assert!(e.contains("no CERTIFICATE block, only PRIVATE KEY"), "{e}");

        let wrong_key = TlsFiles {
            key: g.verifier.key.clone(),
            ..files.clone()
        };
        let e = wrong_key.client_config().unwrap_err().to_string();
        assert!(e.contains("expected the key of the certificate"), "{e}");

        let missing = TlsFiles {
            ca: d.path().join("nope.crt"),
            ..files.clone()
        };
        let e = missing.client_config().unwrap_err().to_string();
        assert!(e.starts_with(LABEL_CA) && e.contains("cannot read"), "{e}");

        std::fs::write(d.path().join("empty.key"), "").unwrap();
        let empty = TlsFiles {
            key: d.path().join("empty.key"),
            ..files
        };
        let e = empty.client_config().unwrap_err().to_string();
        assert!(e.contains("an empty file"), "{e}");
    }

    #[test]
    fn fingerprint_follows_a_secret_volume_symlink_swap() {
        let d = tempfile::tempdir().unwrap();
        let v1 = d.path().join("..v1");
        let v2 = d.path().join("..v2");
        certgen::generate(&v1, &[], 1).unwrap();
        certgen::generate(&v2, &[], 1).unwrap();
        let link = |target: &str, name: &str| {
            std::os::unix::fs::symlink(target, d.path().join(name)).unwrap()
        };
        link("..v1", "..data");
        for f in ["ca.crt", "client.crt", "client.key"] {
            link(&format!("..data/{f}"), f);
        }
        let files = TlsFiles {
            ca: d.path().join("ca.crt"),
            cert: d.path().join("client.crt"),
            key: d.path().join("client.key"),
        };
        let before = files.fingerprint();
        assert_eq!(before, files.fingerprint());
        // The kubelet's atomic writer: a new symlink renamed over `..data`.
        link("..v2", "..data_tmp");
        std::fs::rename(d.path().join("..data_tmp"), d.path().join("..data")).unwrap();
        assert_ne!(before, files.fingerprint());
        files.client_config().unwrap();
    }
}
