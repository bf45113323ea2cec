//! TLS for the verifier: the mTLS server configuration and the caller identity carried by a
//! client certificate.

use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::path::Path;
use std::sync::Arc;

/// A TLS file that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {problem}")]
pub struct TlsError {
    /// The file.
    pub path: String,
    /// What is wrong, and what was expected.
    pub problem: String,
}

fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let err = |problem: String| TlsError {
        path: path.display().to_string(),
        problem,
    };
    let all: Result<Vec<_>, _> = CertificateDer::pem_file_iter(path)
        .map_err(|e| err(format!("expected a PEM certificate file ({e})")))?
        .collect();
    let all = all.map_err(|e| err(format!("expected PEM certificates ({e})")))?;
    if all.is_empty() {
        return Err(err(
            "expected a PEM certificate, found no CERTIFICATE block".into(),
        ));
    }
    Ok(all)
}

fn key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| TlsError {
        path: path.display().to_string(),
        problem: format!("expected a PEM private key (PKCS#8, PKCS#1 or SEC1) ({e})"),
    })
}

/// The server configuration: `cert`/`key` served, client certificates required and chained
/// to `ca`, ALPN `http/1.1`.
pub fn server_config(
    cert: &Path,
    key_path: &Path,
    ca: &Path,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for c in certs(ca)? {
        roots.add(c).map_err(|e| TlsError {
            path: ca.display().to_string(),
            problem: format!("expected a CA certificate ({e})"),
        })?;
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| TlsError {
            path: ca.display().to_string(),
            problem: format!("cannot verify clients with this CA ({e})"),
        })?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError {
            path: cert.display().to_string(),
            problem: e.to_string(),
        })?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs(cert)?, key(key_path)?)
        .map_err(|e| TlsError {
            path: key_path.display().to_string(),
            problem: format!("the key does not fit the certificate ({e})"),
        })?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// The caller named by a client certificate's URI SAN
/// `spiffe://coherence.dev/ns/<namespace>/sa/<name>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// Namespace the caller may submit for (`*`: any).
    pub namespace: String,
    /// Service account name.
    pub name: String,
    /// The full URI.
    pub uri: String,
}

impl Identity {
    /// The identity of the end-entity certificate (the first of `certs`).
    pub fn from_peer_certs(certs: &[CertificateDer<'_>]) -> Result<Identity, String> {
        let first = certs.first().ok_or("no client certificate")?;
        let (_, cert) = x509_parser::parse_x509_certificate(first.as_ref())
            .map_err(|e| format!("client certificate unreadable: {e}"))?;
        let mut uris = Vec::new();
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for n in &san.value.general_names {
                if let x509_parser::extensions::GeneralName::URI(u) = n {
                    uris.push((*u).to_owned());
                }
            }
        }
        for u in &uris {
            if let Some(ns) = crate::ingest::identity_namespace(u) {
                let name = u.rsplit("/sa/").next().unwrap_or("").to_owned();
                return Ok(Identity {
                    namespace: ns.to_owned(),
                    name,
                    uri: u.clone(),
                });
            }
        }
        Err(format!(
            "client certificate has no URI SAN spiffe://coherence.dev/ns/<namespace>/sa/<name> (found {uris:?})"
        ))
    }

    /// Whether the caller may submit for `namespace`.
    pub fn allows(&self, namespace: &str) -> bool {
        self.namespace == "*" || self.namespace == namespace
    }

    /// The identity of requests served without TLS (`--insecure-dev`).
    pub fn insecure_dev() -> Identity {
        Identity {
            namespace: "*".into(),
            name: "insecure-dev".into(),
            uri: crate::ingest::INSECURE_DEV_IDENTITY.into(),
        }
    }
}

impl std::fmt::Display for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.uri)
    }
}
