//! mTLS of the verifier's API: the server and client rustls configurations, the caller's
//! identity taken from its client certificate, and ([`certgen`]) a development CA with the
//! verifier's and the clients' certificates.
//!
//! Both configurations use the `ring` provider explicitly, so nothing depends on which crypto
//! provider another crate in the process may have installed globally.
//!
//! **Identity.** A client is named by a URI SAN
//! `spiffe://coherence.dev/ns/<namespace>/sa/<name>`; it may submit records whose `shard_id`
//! lies in `<namespace>`, and namespace `*` may submit for every namespace.

use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Environment variable (and label in errors) of the certificate chain file.
pub const ENV_CERT: &str = "COHERENCE_TLS_CERT";
/// Environment variable (and label in errors) of the private key file.
pub const ENV_KEY: &str = "COHERENCE_TLS_KEY";
/// Environment variable (and label in errors) of the CA certificate file.
pub const ENV_CA: &str = "COHERENCE_TLS_CA";

/// The trust domain and path prefix of every Coherence identity.
pub const SPIFFE_PREFIX: &str = "spiffe://coherence.dev/ns/";

/// The namespace that may submit for every namespace.
pub const ANY_NAMESPACE: &str = "*";

/// A TLS file or setting that cannot be used; every variant names the file and what it must hold.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The file cannot be opened or read.
    #[error("{label} {}: cannot read: {source}", path.display())]
    Read {
        /// What the file is for (`COHERENCE_TLS_CERT`, `--ca`).
        label: String,
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file does not hold what it must.
    #[error("{label} {}: expected {expected}, found {found}", path.display())]
    Content {
        /// What the file is for.
        label: String,
        /// The file.
        path: PathBuf,
        /// What it must hold.
        expected: String,
        /// What it holds instead.
        found: String,
    },
    /// The files are each readable but do not make a configuration (e.g. the key does not
    /// belong to the certificate).
    #[error("{files}: {reason}")]
    Config {
        /// The files involved, with their labels.
        files: String,
        /// Why they cannot be used together.
        reason: String,
    },
}

impl TlsError {
    /// True when a file could not be read at all (as opposed to holding the wrong thing).
    pub fn is_unreadable(&self) -> bool {
        matches!(self, TlsError::Read { .. })
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read_file(label: &str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        label: label.to_owned(),
        path: path.to_owned(),
        source,
    })
}

fn content(label: &str, path: &Path, expected: &str, found: impl Into<String>) -> TlsError {
    TlsError::Content {
        label: label.to_owned(),
        path: path.to_owned(),
        expected: expected.to_owned(),
        found: found.into(),
    }
}

/// The PEM block labels of a file (`CERTIFICATE`, `PRIVATE KEY`), for error messages.
fn pem_labels(bytes: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(bytes)
        .lines()
        .filter_map(|l| {
            l.trim()
                .strip_prefix("-----BEGIN ")
                .and_then(|r| r.strip_suffix("-----"))
                .map(str::to_owned)
        })
        .collect()
}

fn missing_block(bytes: &[u8], wanted: &str) -> String {
    let labels = pem_labels(bytes);
    if labels.is_empty() {
        if bytes.is_empty() {
            format!("an empty file (no {wanted} block)")
        } else {
            format!("no {wanted} block (the file is not PEM)")
        }
    } else {
        format!("no {wanted} block, only {}", labels.join(", "))
    }
}

const E_CERT: &str = "a PEM certificate";
const E_KEY: &str = "a PEM private key (PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY)";
const E_CA: &str = "a PEM CA certificate usable as a trust anchor";

/// Reads the certificates of a PEM file (a chain: end entity first), checking each parses as
/// X.509. `label` says what the file is for in errors (`COHERENCE_TLS_CERT`, `--cert`).
pub fn load_certs(label: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = read_file(label, path)?;
    let mut certs = Vec::new();
    for (i, item) in CertificateDer::pem_slice_iter(&bytes).enumerate() {
        let cert =
            item.map_err(|e| content(label, path, E_CERT, format!("a broken PEM block ({e})")))?;
        if let Err(e) = x509_parser::parse_x509_certificate(&cert) {
            return Err(content(
                label,
                path,
                E_CERT,
                format!("CERTIFICATE block {} that is not X.509 ({e})", i + 1),
            ));
        }
        certs.push(cert);
    }
    if certs.is_empty() {
        return Err(content(
            label,
            path,
            E_CERT,
            missing_block(&bytes, "CERTIFICATE"),
        ));
    }
    Ok(certs)
}

/// Reads the first private key of a PEM file: PKCS#8, PKCS#1 (RSA) or SEC1 (EC).
pub fn load_key(label: &str, path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let bytes = read_file(label, path)?;
    match PrivateKeyDer::pem_slice_iter(&bytes).next() {
        Some(Ok(key)) => Ok(key),
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
            missing_block(&bytes, "private key"),
        )),
    }
}

/// Reads the CA certificates of a PEM file into a root store; at least one must be a usable
/// trust anchor.
pub fn load_roots(label: &str, path: &Path) -> Result<RootCertStore, TlsError> {
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

fn describe_pair(cert: &Path, key: &Path) -> String {
    format!(
        "{ENV_CERT} {} with {ENV_KEY} {}",
        cert.display(),
        key.display()
    )
}

/// The verifier's server configuration: its certificate chain and key, client certificates
/// required and chained to `ca`, ALPN `http/1.1`. Errors are labelled with the
/// `COHERENCE_TLS_*` variables.
pub fn server_config(cert: &Path, key: &Path, ca: &Path) -> Result<Arc<ServerConfig>, TlsError> {
    let chain = load_certs(ENV_CERT, cert)?;
    let key_der = load_key(ENV_KEY, key)?;
    let roots = Arc::new(load_roots(ENV_CA, ca)?);
    let provider = provider();
    let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider.clone())
        .build()
        .map_err(|e| TlsError::Config {
            files: format!("{ENV_CA} {}", ca.display()),
            reason: format!("cannot verify client certificates with it: {e}"),
        })?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config {
            files: "the ring crypto provider".to_owned(),
            reason: e.to_string(),
        })?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key_der)
        .map_err(|e| TlsError::Config {
            files: describe_pair(cert, key),
            reason: format!("expected the key of the certificate: {e}"),
        })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// A client configuration that trusts only `ca` and presents `cert` with `key`.
pub fn client_config(ca: &Path, cert: &Path, key: &Path) -> Result<Arc<ClientConfig>, TlsError> {
    let roots = load_roots(ENV_CA, ca)?;
    let chain = load_certs(ENV_CERT, cert)?;
    let key_der = load_key(ENV_KEY, key)?;
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config {
            files: "the ring crypto provider".to_owned(),
            reason: e.to_string(),
        })?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key_der)
        .map_err(|e| TlsError::Config {
            files: describe_pair(cert, key),
            reason: format!("expected the key of the certificate: {e}"),
        })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

// ---------------------------------------------------------------------------------------------
// Identity

/// Who is calling: the namespace and name of a client certificate's SPIFFE URI SAN.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Identity {
    /// The namespace it may submit for (`*`: every namespace).
    pub namespace: String,
    /// The service account name.
    pub name: String,
    /// The full URI SAN.
    pub uri: String,
}

/// A Kubernetes namespace name (RFC 1123 label) or `*`.
pub fn is_namespace(s: &str) -> bool {
    s == ANY_NAMESPACE
        || (!s.is_empty()
            && s.len() <= 63
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !s.starts_with('-')
            && !s.ends_with('-'))
}

/// A service account name: lowercase letters, digits, `-` and `.` (RFC 1123 subdomain),
/// at most 253 characters.
pub fn is_account_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && s.starts_with(|c: char| c.is_ascii_alphanumeric())
        && s.ends_with(|c: char| c.is_ascii_alphanumeric())
}

impl Identity {
    /// The URI SAN of `namespace` and `name`.
    pub fn uri_for(namespace: &str, name: &str) -> String {
        format!("{SPIFFE_PREFIX}{namespace}/sa/{name}")
    }

    /// Parses `spiffe://coherence.dev/ns/<namespace>/sa/<name>`.
    pub fn from_uri(uri: &str) -> Result<Identity, String> {
        let expected = "spiffe://coherence.dev/ns/<namespace>/sa/<name>";
        let rest = uri
            .strip_prefix(SPIFFE_PREFIX)
            .ok_or_else(|| format!("expected {expected}, found {uri:?}"))?;
        let (namespace, name) = rest
            .split_once("/sa/")
            .ok_or_else(|| format!("expected {expected}, found {uri:?}"))?;
        if !is_namespace(namespace) {
            return Err(format!(
                "{uri:?}: expected a namespace (RFC 1123 label) or *, found {namespace:?}"
            ));
        }
        if !is_account_name(name) {
            return Err(format!(
                "{uri:?}: expected a service account name (lowercase letters, digits, - and .), found {name:?}"
            ));
        }
        Ok(Identity {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            uri: uri.to_owned(),
        })
    }

    /// The identity of a peer's certificate chain (end entity first, as rustls gives it): the
    /// first URI SAN of the Coherence form. The error names what the certificate carries.
    pub fn from_peer_certs(certs: &[CertificateDer<'_>]) -> Result<Identity, String> {
        let end_entity = certs
            .first()
            .ok_or_else(|| "expected a client certificate, found none".to_owned())?;
        let (_, cert) = x509_parser::parse_x509_certificate(end_entity)
            .map_err(|e| format!("expected an X.509 client certificate: {e}"))?;
        let subject = cert.subject().to_string();
        let san = cert
            .subject_alternative_name()
            .map_err(|e| format!("certificate {subject:?}: unreadable subjectAltName: {e}"))?;
        let mut found = Vec::new();
        let mut last_err = None;
        for name in san.iter().flat_map(|s| s.value.general_names.iter()) {
            match name {
                x509_parser::extensions::GeneralName::URI(uri) => {
                    match Identity::from_uri(uri) {
                        Ok(id) => return Ok(id),
                        Err(e) => last_err = Some(e),
                    }
                    found.push(format!("URI {uri}"));
                }
                other => found.push(other.to_string()),
            }
        }
        if let Some(e) = last_err {
            return Err(format!("certificate {subject:?}: {e}"));
        }
        let found = if found.is_empty() {
            "no subjectAltName".to_owned()
        } else {
            found.join(", ")
        };
        Err(format!(
            "certificate {subject:?}: expected a URI SAN spiffe://coherence.dev/ns/<namespace>/sa/<name>, found {found}"
        ))
    }

    /// Reads the identity of a PEM certificate file (its first certificate).
    pub fn from_cert_file(label: &str, path: &Path) -> Result<Identity, TlsError> {
        let certs = load_certs(label, path)?;
        Identity::from_peer_certs(&certs).map_err(|e| {
            content(
                label,
                path,
                "a certificate with a Coherence identity",
                e.to_string(),
            )
        })
    }

    /// The identity of every caller when the server runs plain HTTP (`--insecure-dev`): it
    /// may submit for every namespace.
    pub fn insecure_dev() -> Identity {
        Identity {
            namespace: ANY_NAMESPACE.to_owned(),
            name: "insecure-dev".to_owned(),
            uri: Identity::uri_for(ANY_NAMESPACE, "insecure-dev"),
        }
    }

    /// May this caller submit records of `namespace`?
    pub fn allows(&self, namespace: &str) -> bool {
        self.namespace == ANY_NAMESPACE || self.namespace == namespace
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{} ({})", self.namespace, self.name, self.uri)
    }
}

// ---------------------------------------------------------------------------------------------
// Generation

/// A development CA and the certificates signed by it (`coherence certs gen`, tests, the demo).
///
/// Writes into one directory: `ca.crt`/`ca.key`, `verifier.crt`/`verifier.key` (server
/// authentication; SANs `localhost`, `127.0.0.1` and any extra ones), `client.crt`/`client.key`
/// (client authentication, namespace `*`, name `coherence-client`) and one `NAME.crt`/`NAME.key`
/// per [`ClientSpec`]. Keys are ECDSA P-256 (PKCS#8 PEM), written with mode 0600.
pub mod certgen {
    use super::{Identity, is_account_name, is_namespace};
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose, SanType,
    };
    use sha2::Digest as _;
    use std::io::Write as _;
    use std::path::{Path, PathBuf};
    use std::str::FromStr;
    use time::{Duration, OffsetDateTime};

    /// Name of the default client (namespace `*`).
    pub const DEFAULT_CLIENT: &str = "coherence-client";
    /// Names that would overwrite the fixed files.
    const RESERVED: &[&str] = &["ca", "verifier", "client"];

    /// A client certificate to issue: `NAME:NAMESPACE`.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct ClientSpec {
        /// Service account name (also the file name: `NAME.crt`).
        pub name: String,
        /// Namespace it may submit for, or `*`.
        pub namespace: String,
    }

    impl ClientSpec {
        /// A checked spec.
        pub fn new(name: &str, namespace: &str) -> Result<ClientSpec, String> {
            format!("{name}:{namespace}").parse()
        }
    }

    impl FromStr for ClientSpec {
        type Err = String;

        fn from_str(s: &str) -> Result<Self, Self::Err> {
            let (name, namespace) = s
                .split_once(':')
                .ok_or_else(|| format!("expected NAME:NAMESPACE, found {s:?}"))?;
            if !is_account_name(name) {
                return Err(format!(
                    "expected NAME:NAMESPACE with NAME of lowercase letters, digits, - and ., found {name:?} in {s:?}"
                ));
            }
            if RESERVED.contains(&name) {
                return Err(format!(
                    "expected NAME:NAMESPACE with NAME other than {}, found {name:?} (its files would overwrite the fixed ones)",
                    RESERVED.join(", ")
                ));
            }
            if !is_namespace(namespace) {
                return Err(format!(
                    "expected NAME:NAMESPACE with NAMESPACE an RFC 1123 label or *, found {namespace:?} in {s:?}"
                ));
            }
            Ok(ClientSpec {
                name: name.to_owned(),
                namespace: namespace.to_owned(),
            })
        }
    }

    /// What to generate beyond the fixed files.
    #[derive(Debug, Clone)]
    pub struct Options {
        /// Validity of every certificate, in days from now.
        pub days: u32,
        /// Extra client certificates.
        pub clients: Vec<ClientSpec>,
        /// Extra SANs of the verifier's certificate (DNS names or IP addresses).
        pub extra_sans: Vec<String>,
        /// Overwrite existing files.
        pub force: bool,
    }

    impl Default for Options {
        fn default() -> Self {
            Options {
                days: 365,
                clients: Vec::new(),
                extra_sans: Vec::new(),
                force: false,
            }
        }
    }

    /// A certificate file and its key file.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct Pair {
        /// `NAME.crt`.
        pub cert: PathBuf,
        /// `NAME.key`.
        pub key: PathBuf,
    }

    impl Pair {
        fn in_dir(dir: &Path, stem: &str) -> Pair {
            Pair {
                cert: dir.join(format!("{stem}.crt")),
                key: dir.join(format!("{stem}.key")),
            }
        }
    }

    /// The files written.
    #[derive(Debug, Clone)]
    pub struct Generated {
        /// `ca.crt`, `ca.key`.
        pub ca: Pair,
        /// `verifier.crt`, `verifier.key`.
        pub verifier: Pair,
        /// `client.crt`, `client.key` (namespace `*`).
        pub client: Pair,
        /// One pair per requested client, in order.
        pub clients: Vec<(ClientSpec, Pair)>,
    }

    impl Generated {
        /// Every file, certificates and keys.
        pub fn files(&self) -> Vec<&Path> {
            let mut pairs = vec![&self.ca, &self.verifier, &self.client];
            pairs.extend(self.clients.iter().map(|(_, p)| p));
            pairs
                .into_iter()
                .flat_map(|p| [p.cert.as_path(), p.key.as_path()])
                .collect()
        }
    }

    /// Why generation stopped. Nothing is written unless every certificate could be made.
    #[derive(Debug, thiserror::Error)]
    pub enum GenError {
        /// Files exist and overwriting was not asked for.
        #[error("{}: already exists (pass --force to overwrite)", paths.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "))]
        Exists {
            /// The existing files.
            paths: Vec<PathBuf>,
        },
        /// A file or the directory cannot be written.
        #[error("{}: cannot write: {source}", path.display())]
        Write {
            /// The file.
            path: PathBuf,
            /// The I/O error.
            source: std::io::Error,
        },
        /// An option has a value that cannot be used.
        #[error("{what}: expected {expected}")]
        Invalid {
            /// The option.
            what: String,
            /// What it must be, and what it was.
            expected: String,
        },
        /// rcgen refused a certificate.
        #[error("{what}: cannot make the certificate: {source}")]
        Cert {
            /// Which certificate.
            what: String,
            /// The rcgen error.
            source: rcgen::Error,
        },
    }

    /// Generates the CA, the verifier's and the default client's certificates and one pair per
    /// `clients` entry into `dir` (created if missing), valid for `days`; refuses to overwrite.
    pub fn generate(dir: &Path, clients: &[ClientSpec], days: u32) -> Result<Generated, GenError> {
        generate_with(
            dir,
            &Options {
                days,
                clients: clients.to_vec(),
                ..Options::default()
            },
        )
    }

    struct File {
        path: PathBuf,
        text: String,
        secret: bool,
    }

    fn cert_err(what: &str) -> impl FnOnce(rcgen::Error) -> GenError + '_ {
        move |source| GenError::Cert {
            what: what.to_owned(),
            source,
        }
    }

    fn new_key(what: &str) -> Result<KeyPair, GenError> {
        KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(cert_err(what))
    }

    fn base_params(cn: &str, days: u32) -> CertificateParams {
        let now = OffsetDateTime::now_utc();
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, cn);
        params
            .distinguished_name
            .push(DnType::OrganizationName, "Coherence");
        // An hour of slack so a peer whose clock is slightly behind accepts a fresh cert.
        params.not_before = now - Duration::hours(1);
        params.not_after = now + Duration::days(i64::from(days));
        params
    }

    fn leaf(
        cn: &str,
        days: u32,
        sans: Vec<SanType>,
        eku: ExtendedKeyUsagePurpose,
    ) -> CertificateParams {
        let mut params = base_params(cn, days);
        params.subject_alt_names = sans;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![eku];
        params.use_authority_key_identifier_extension = true;
        params
    }

    fn server_san(s: &str) -> Result<SanType, GenError> {
        if let Ok(ip) = s.parse::<std::net::IpAddr>() {
            return Ok(SanType::IpAddress(ip));
        }
        let valid = !s.is_empty()
            && s.split('.').all(|l| {
                !l.is_empty()
                    && l.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'*')
            });
        let invalid = || GenError::Invalid {
            what: "--san".to_owned(),
            expected: format!("a DNS name or an IP address, found {s:?}"),
        };
        if !valid {
            return Err(invalid());
        }
        Ok(SanType::DnsName(s.try_into().map_err(|_| invalid())?))
    }

    fn uri_san(namespace: &str, name: &str) -> Result<SanType, GenError> {
        let uri = Identity::uri_for(namespace, name);
        let ia5 = uri.as_str().try_into().map_err(|_| GenError::Invalid {
            what: "--client".to_owned(),
            expected: format!("an ASCII identity, found {uri:?}"),
        })?;
        Ok(SanType::URI(ia5))
    }

    /// [`generate`] with every option.
    pub fn generate_with(dir: &Path, options: &Options) -> Result<Generated, GenError> {
        if options.days == 0 || options.days > 36_500 {
            return Err(GenError::Invalid {
                what: "--days".to_owned(),
                expected: format!("1 to 36500 days, found {}", options.days),
            });
        }
        let mut seen = std::collections::HashSet::new();
        for c in &options.clients {
            if !seen.insert(c.name.as_str()) {
                return Err(GenError::Invalid {
                    what: "--client".to_owned(),
                    expected: format!("each NAME once, found {:?} twice", c.name),
                });
            }
        }
        let out = Generated {
            ca: Pair::in_dir(dir, "ca"),
            verifier: Pair::in_dir(dir, "verifier"),
            client: Pair::in_dir(dir, "client"),
            clients: options
                .clients
                .iter()
                .map(|c| (c.clone(), Pair::in_dir(dir, &c.name)))
                .collect(),
        };
        if !options.force {
            let existing: Vec<PathBuf> = out
                .files()
                .into_iter()
                .filter(|p| p.exists())
                .map(Path::to_path_buf)
                .collect();
            if !existing.is_empty() {
                return Err(GenError::Exists { paths: existing });
            }
        }

        let days = options.days;
        let mut files = Vec::new();

        let ca_key = new_key("ca")?;
        // A name of its own per CA: with one shared name, a peer of another generated CA
        // would be matched to the wrong issuer and fail as a bad signature instead of as an
        // unknown issuer.
        let ca_id = hex::encode(&sha2::Sha256::digest(ca_key.public_key_raw())[..4]);
        let mut ca_params = base_params(&format!("Coherence development CA {ca_id}"), days);
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_cert = ca_params.self_signed(&ca_key).map_err(cert_err("ca"))?;
        files.push(File {
            path: out.ca.cert.clone(),
            text: ca_cert.pem(),
            secret: false,
        });
        files.push(File {
            path: out.ca.key.clone(),
            text: ca_key.serialize_pem(),
            secret: true,
        });
        let issuer = Issuer::new(ca_params, ca_key);

        let mut sans = vec![
            SanType::DnsName("localhost".try_into().map_err(cert_err("verifier"))?),
            SanType::IpAddress(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST)),
        ];
        for s in &options.extra_sans {
            sans.push(server_san(s)?);
        }
        let mut issue = |pair: &Pair, what: &str, params: CertificateParams| {
            let key = new_key(what)?;
            let cert = params.signed_by(&key, &issuer).map_err(cert_err(what))?;
            files.push(File {
                path: pair.cert.clone(),
                text: cert.pem(),
                secret: false,
            });
            files.push(File {
                path: pair.key.clone(),
                text: key.serialize_pem(),
                secret: true,
            });
            Ok::<(), GenError>(())
        };
        issue(
            &out.verifier,
            "verifier",
            leaf(
                "coherence-verifier",
                days,
                sans,
                ExtendedKeyUsagePurpose::ServerAuth,
            ),
        )?;
        issue(
            &out.client,
            "client",
            leaf(
                DEFAULT_CLIENT,
                days,
                vec![uri_san(super::ANY_NAMESPACE, DEFAULT_CLIENT)?],
                ExtendedKeyUsagePurpose::ClientAuth,
            ),
        )?;
        for (spec, pair) in &out.clients {
            issue(
                pair,
                &spec.name,
                leaf(
                    &spec.name,
                    days,
                    vec![uri_san(&spec.namespace, &spec.name)?],
                    ExtendedKeyUsagePurpose::ClientAuth,
                ),
            )?;
        }

        std::fs::create_dir_all(dir).map_err(|source| GenError::Write {
            path: dir.to_owned(),
            source,
        })?;
        for f in &files {
            write_file(&f.path, &f.text, f.secret).map_err(|source| GenError::Write {
                path: f.path.clone(),
                source,
            })?;
        }
        Ok(out)
    }

    fn write_file(path: &Path, text: &str, secret: bool) -> std::io::Result<()> {
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
            opts.mode(if secret { 0o600 } else { 0o644 });
            let mut f = opts.open(path)?;
            // `mode` applies only to a new file; an overwritten key must not keep a wider mode.
            if secret {
                f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
            }
            f.write_all(text.as_bytes())?;
            f.sync_all()
        }
        #[cfg(not(unix))]
        {
            let _ = secret;
            let mut f = opts.open(path)?;
            f.write_all(text.as_bytes())?;
            f.sync_all()
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::certgen::{self, ClientSpec, GenError};
    use super::*;
    use std::net::SocketAddr;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use tokio::net::{TcpListener, TcpStream};
    use tokio_rustls::{TlsAcceptor, TlsConnector};

    fn gen_dir(clients: &[ClientSpec]) -> (tempfile::TempDir, certgen::Generated) {
        let dir = tempfile::tempdir().unwrap();
        let g = certgen::generate(dir.path(), clients, 30).unwrap();
        (dir, g)
    }

    /// A TLS server that accepts one connection and reports the caller's identity (or the
    /// handshake error).
    async fn one_shot_server(
        config: Arc<ServerConfig>,
    ) -> (
        SocketAddr,
        tokio::task::JoinHandle<Result<Identity, String>>,
    ) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let mut tls = TlsAcceptor::from(config)
                .accept(tcp)
                .await
                .map_err(|e| e.to_string())?;
            let id = {
                let (_, conn) = tls.get_ref();
                Identity::from_peer_certs(conn.peer_certificates().unwrap_or(&[]))?
            };
            tls.write_all(b"ok").await.map_err(|e| e.to_string())?;
            tls.shutdown().await.ok();
            Ok(id)
        });
        (addr, task)
    }

    async fn connect(addr: SocketAddr, config: Arc<ClientConfig>) -> Result<Vec<u8>, String> {
        let tcp = TcpStream::connect(addr).await.unwrap();
        let name = rustls_pki_types::ServerName::try_from("127.0.0.1").unwrap();
        let mut tls = TlsConnector::from(config)
            .connect(name, tcp)
            .await
            .map_err(|e| e.to_string())?;
        let mut buf = Vec::new();
        // With TLS 1.3 a refused client certificate surfaces on the first read.
        tls.read_to_end(&mut buf).await.map_err(|e| e.to_string())?;
        Ok(buf)
    }

    fn server(g: &certgen::Generated) -> Arc<ServerConfig> {
        server_config(&g.verifier.cert, &g.verifier.key, &g.ca.cert).unwrap()
    }

    #[test]
    fn configs_build_from_generated_files() {
        let (_d, g) = gen_dir(&[ClientSpec::new("a", "shop").unwrap()]);
        let s = server(&g);
        assert_eq!(s.alpn_protocols, vec![b"http/1.1".to_vec()]);
        client_config(&g.ca.cert, &g.client.cert, &g.client.key).unwrap();
        client_config(&g.ca.cert, &g.clients[0].1.cert, &g.clients[0].1.key).unwrap();
    }

    #[tokio::test]
    async fn handshake_with_client_cert_gives_its_identity() {
        let (_d, g) = gen_dir(&[ClientSpec::new("a", "shop").unwrap()]);
        for (pair, ns, name) in [
            (&g.clients[0].1, "shop", "a"),
            (&g.client, "*", "coherence-client"),
        ] {
            let (addr, task) = one_shot_server(server(&g)).await;
            let client = client_config(&g.ca.cert, &pair.cert, &pair.key).unwrap();
            assert_eq!(connect(addr, client).await.unwrap(), b"ok");
            let id = task.await.unwrap().unwrap();
            assert_eq!(id.namespace, ns);
            assert_eq!(id.name, name);
            assert_eq!(id.uri, Identity::uri_for(ns, name));
        }
    }

    #[tokio::test]
    async fn handshake_without_client_cert_is_refused() {
        let (_d, g) = gen_dir(&[]);
        let (addr, task) = one_shot_server(server(&g)).await;
        let roots = load_roots(ENV_CA, &g.ca.cert).unwrap();
        let no_cert = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        assert!(connect(addr, Arc::new(no_cert)).await.is_err());
        let err = task.await.unwrap().unwrap_err();
        assert!(err.contains("certificate"), "{err}");
    }

    #[tokio::test]
    async fn client_cert_of_another_ca_is_refused() {
        let (_d, g) = gen_dir(&[]);
        let (_d2, other) = gen_dir(&[]);
        let (addr, task) = one_shot_server(server(&g)).await;
        // Trusts the right server CA but presents a certificate of another CA.
        let client = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(load_roots(ENV_CA, &g.ca.cert).unwrap())
            .with_client_auth_cert(
                load_certs(ENV_CERT, &other.client.cert).unwrap(),
                load_key(ENV_KEY, &other.client.key).unwrap(),
            )
            .unwrap();
        assert!(connect(addr, Arc::new(client)).await.is_err());
        let err = task.await.unwrap().unwrap_err();
        assert!(err.contains("UnknownIssuer"), "{err}");
    }

    #[tokio::test]
    async fn client_refuses_a_server_of_another_ca() {
        let (_d, g) = gen_dir(&[]);
        let (_d2, other) = gen_dir(&[]);
        let (addr, task) = one_shot_server(server(&other)).await;
        let client = client_config(&g.ca.cert, &g.client.cert, &g.client.key).unwrap();
        let err = connect(addr, client).await.unwrap_err();
        assert!(err.contains("UnknownIssuer"), "{err}");
        assert!(task.await.unwrap().is_err());
    }

    #[test]
    fn bad_pem_names_the_file_and_what_was_expected() {
        let (d, g) = gen_dir(&[]);
        let junk = d.path().join("junk.pem");
        std::fs::write(&junk, "hello\n").unwrap();
        let e = server_config(&junk, &g.verifier.key, &g.ca.cert).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.starts_with(&format!(
                "COHERENCE_TLS_CERT {}: expected a PEM certificate, found no CERTIFICATE block",
                junk.display()
            )),
            "{msg}"
        );
        // A key where the certificate belongs names the block it found.
        let e = server_config(&g.verifier.key, &g.verifier.key, &g.ca.cert).unwrap_err();
        assert!(e.to_string().contains("only PRIVATE KEY"), "{e}");
        // A certificate where the key belongs.
        let e = server_config(&g.verifier.cert, &g.verifier.cert, &g.ca.cert).unwrap_err();
        let msg = e.to_string();
        assert!(msg.starts_with("COHERENCE_TLS_KEY "), "{msg}");
        assert!(msg.contains("expected a PEM private key"), "{msg}");
        // A CA file with no certificate.
        let e = client_config(&junk, &g.client.cert, &g.client.key).unwrap_err();
        assert!(e.to_string().starts_with("COHERENCE_TLS_CA "), "{e}");
        // A missing file.
        let missing = d.path().join("missing.crt");
        let e = server_config(&g.verifier.cert, &g.verifier.key, &missing).unwrap_err();
        assert!(e.is_unreadable());
        assert!(
            e.to_string().starts_with(&format!(
                "COHERENCE_TLS_CA {}: cannot read",
                missing.display()
            )),
            "{e}"
        );
        // A key that belongs to another certificate.
        let e = server_config(&g.verifier.cert, &g.client.key, &g.ca.cert).unwrap_err();
        assert!(matches!(e, TlsError::Config { .. }), "{e}");
        assert!(
            e.to_string()
                .contains("expected the key of the certificate"),
            "{e}"
        );
    }

    #[test]
    fn sec1_and_pkcs8_keys_load() {
        use base64::Engine as _;
        let (d, g) = gen_dir(&[]);
        let PrivateKeyDer::Pkcs8(pkcs8) = load_key(ENV_KEY, &g.client.key).unwrap() else {
            panic!("rcgen writes PKCS#8");
        };
        // A P-256 PKCS#8 document ends with an OCTET STRING holding the SEC1 ECPrivateKey.
        let der = pkcs8.secret_pkcs8_der();
        let at = (0..der.len() - 2)
            .find(|&i| {
                der[i] == 0x04 && der[i + 2] == 0x30 && i + 2 + usize::from(der[i + 1]) == der.len()
            })
            .unwrap();
        let b64 = base64::engine::general_purpose::STANDARD.encode(&der[at + 2..]);
        let sec1 = d.path().join("sec1.key");
        std::fs::write(
            &sec1,
            format!("-----BEGIN EC PRIVATE KEY-----\n{b64}\n-----END EC PRIVATE KEY-----\n"),
        )
        .unwrap();
        assert!(matches!(
            load_key(ENV_KEY, &sec1).unwrap(),
            PrivateKeyDer::Sec1(_)
        ));
        client_config(&g.ca.cert, &g.client.cert, &sec1).unwrap();
    }

    #[test]
    fn identity_uri_forms() {
        let id = Identity::from_uri("spiffe://coherence.dev/ns/shop/sa/checkout").unwrap();
        assert_eq!(
            (id.namespace.as_str(), id.name.as_str()),
            ("shop", "checkout")
        );
        assert!(id.allows("shop"));
        assert!(!id.allows("payments"));
        assert_eq!(
            id.to_string(),
            "shop/checkout (spiffe://coherence.dev/ns/shop/sa/checkout)"
        );
        let any = Identity::from_uri("spiffe://coherence.dev/ns/*/sa/ops").unwrap();
        assert!(any.allows("payments"));
        let dev = Identity::insecure_dev();
        assert!(dev.allows("anything"));
        assert_eq!(dev.name, "insecure-dev");
        for bad in [
            "spiffe://example.org/ns/shop/sa/x",
            "spiffe://coherence.dev/ns/shop",
            "spiffe://coherence.dev/ns//sa/x",
            "spiffe://coherence.dev/ns/Shop/sa/x",
            "spiffe://coherence.dev/ns/shop/sa/",
            "spiffe://coherence.dev/ns/a/b/sa/x",
        ] {
            assert!(Identity::from_uri(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn identity_error_names_what_the_certificate_carries() {
        let (_d, g) = gen_dir(&[]);
        let certs = load_certs(ENV_CERT, &g.verifier.cert).unwrap();
        let e = Identity::from_peer_certs(&certs).unwrap_err();
        assert!(e.contains("expected a URI SAN"), "{e}");
        assert!(e.contains("DNSName(localhost)"), "{e}");
        assert!(Identity::from_peer_certs(&[]).is_err());
        let id = Identity::from_cert_file(ENV_CERT, &g.client.cert).unwrap();
        assert_eq!(id.namespace, "*");
    }

    #[test]
    fn generation_refuses_to_overwrite_and_validates_specs() {
        let (d, g) = gen_dir(&[]);
        let e = certgen::generate(d.path(), &[], 30).unwrap_err();
        assert!(matches!(e, GenError::Exists { .. }), "{e}");
        let again = certgen::generate_with(
            d.path(),
            &certgen::Options {
                force: true,
                extra_sans: vec!["coherence-verifier.coherence.svc".into()],
                ..certgen::Options::default()
            },
        )
        .unwrap();
        assert_eq!(again.files(), g.files());
        for bad in [
            "a", "a:", ":shop", "A:shop", "a:Shop", "ca:shop", "a:shop:x",
        ] {
            assert!(bad.parse::<ClientSpec>().is_err(), "{bad}");
        }
        let dup = [
            ClientSpec::new("a", "x").unwrap(),
            ClientSpec::new("a", "y").unwrap(),
        ];
        let e = certgen::generate(&d.path().join("sub"), &dup, 30).unwrap_err();
        assert!(matches!(e, GenError::Invalid { .. }), "{e}");
        let e = certgen::generate(&d.path().join("sub"), &[], 0).unwrap_err();
        assert!(e.to_string().starts_with("--days:"), "{e}");
    }

    #[cfg(unix)]
    #[test]
    fn keys_are_private() {
        use std::os::unix::fs::PermissionsExt as _;
        let (_d, g) = gen_dir(&[ClientSpec::new("a", "shop").unwrap()]);
        for p in g.files() {
            let mode = std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
            if p.extension().is_some_and(|e| e == "key") {
                assert_eq!(mode, 0o600, "{}", p.display());
            }
        }
    }
}
