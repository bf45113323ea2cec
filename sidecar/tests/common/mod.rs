//! The real `coherence-verifier` binary for the sidecar's delivery tests: located next to this
//! test's build (and built there first, so it always matches the sources), started on given
//! ports with generated certificates, stopped and restarted on the same WAL.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use coherence_core::pcs::{self, BuildInput, Params, Pcs, Signer};
use coherence_verifier::client::Client;
use coherence_verifier::tls;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

/// The HMAC key the verifier checks and the tests sign with.
pub const KEY: &str = "sidecar-delivery-test-key";

/// A port on 127.0.0.1 where nothing listens (at the moment of the call).
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local addr").port()
}

/// The `coherence-verifier` binary: `$COHERENCE_VERIFIER_BIN`, else the one in this test's
/// target directory, built (or brought up to date) with cargo on first use.
pub fn verifier_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(p) = std::env::var_os("COHERENCE_VERIFIER_BIN") {
            return PathBuf::from(p);
        }
        // <target>/<profile>/deps/delivery-<hash>
        let exe = std::env::current_exe().expect("test executable path");
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("test executable in <target>/<profile>/deps");
        let target_dir = profile_dir.parent().expect("target directory");
        let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
            Some("debug") | None => "dev".to_owned(),
            Some(other) => other.to_owned(),
        };
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml");
        let status = Command::new(cargo)
            .args(["build", "--quiet", "-p", "coherence-verifier", "--bin"])
            .arg("coherence-verifier")
            .arg("--profile")
            .arg(&profile)
            .arg("--manifest-path")
            .arg(&manifest)
            .arg("--target-dir")
            .arg(target_dir)
            .status()
            .expect("run cargo build -p coherence-verifier");
        assert!(status.success(), "cargo build -p coherence-verifier failed");
        let bin = profile_dir.join("coherence-verifier");
        assert!(bin.exists(), "{} is missing after the build", bin.display());
        bin
    })
}

/// A signed PCS of `shard` for `epoch`, with `ft.outbox_seq = seq`.
pub fn signed_pcs(shard: &str, epoch: u64, seq: u64) -> Pcs {
    let values: Vec<f64> = (0..90)
        .map(|i| 10.0 + ((i * 7 + epoch as usize) % 13) as f64)
        .collect();
    let events: Vec<Vec<u8>> = values.iter().map(|v| v.to_string().into_bytes()).collect();
    let mut p = pcs::build(
        &BuildInput {
            values: &values,
            events: &events,
            shard_id: shard,
            epoch,
            attempt: 1,
            sent_at: "2026-11-01T00:00:00Z",
            seed: 7,
            scales: &[2, 4, 8, 16],
        },
        &Params::default(),
    )
    .unwrap();
    p.ft.outbox_seq = seq;
    Signer::hmac(KEY.as_bytes().to_vec()).sign(&mut p).unwrap();
    p
}

/// Calls `f` until it returns `Some`, at most for `limit`; panics naming `what`.
pub async fn eventually<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not reached within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A running verifier process.
pub struct Verifier {
    child: Option<Child>,
    /// mTLS port.
    pub port: u16,
    /// Admin (plain HTTP) port.
    pub admin: u16,
    /// Directory of `ca.crt`, `verifier.crt`/`.key`, `client.crt`/`.key`, ….
    pub certs: PathBuf,
    /// The inbox WAL.
    pub wal: PathBuf,
}

impl Verifier {
    /// Starts the verifier with `certs` (from `certgen`) and `wal`, on free ports.
    pub fn start(certs: &Path, wal: &Path) -> Verifier {
        let mut v = Verifier {
            child: None,
            port: free_port(),
            admin: free_port(),
            certs: certs.to_owned(),
            wal: wal.to_owned(),
        };
        v.spawn();
        v
    }

    fn spawn(&mut self) {
        let child = Command::new(verifier_bin())
            .args([
                "serve",
                "--listen",
                &format!("127.0.0.1:{}", self.port),
                "--admin-listen",
                &format!("127.0.0.1:{}", self.admin),
            ])
            .arg("--wal-dir")
            .arg(&self.wal)
            .env("COHERENCE_TLS_CERT", self.certs.join("verifier.crt"))
            .env("COHERENCE_TLS_KEY", self.certs.join("verifier.key"))
            .env("COHERENCE_TLS_CA", self.certs.join("ca.crt"))
            .env("PCS_HMAC_KEY", KEY)
            .env("TOKEN_RATE", "0")
            .env("DEDUP_BACKEND", "memory")
            .env("COHERENCE_DRAIN_SECONDS", "2")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start coherence-verifier");
        self.child = Some(child);
    }

    /// `https://127.0.0.1:<port>`.
    pub fn endpoint(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    /// An mTLS client with the certificate `name` (`client`: namespace `*`).
    pub fn client(&self, name: &str) -> Client {
        let cfg = tls::client_config(
            &self.certs.join("ca.crt"),
            &self.certs.join(format!("{name}.crt")),
            &self.certs.join(format!("{name}.key")),
        )
        .unwrap();
        Client::new(&self.endpoint(), Some(cfg)).unwrap()
    }

    /// Waits until `/readyz` answers 200.
    pub async fn ready(&self) {
        let admin = Client::new(&format!("http://127.0.0.1:{}", self.admin), None).unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = admin.get("/readyz").await {
                if r.status == 200 {
                    return;
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "verifier not ready within 30s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The stored outcome of `id` (`GET /v1/records/{id}`): `(HTTP status, body)`.
    pub async fn record(&self, id: &str) -> (u16, Value) {
        let r = self
            .client("client")
            .get(&format!("/v1/records/{id}"))
            .await
            .unwrap();
        (
            r.status,
            serde_json::from_slice(&r.body).unwrap_or(Value::Null),
        )
    }

    /// Kills the process (SIGKILL) and waits for it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same ports, certificates and WAL.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// SIGTERM and wait: the WAL is left complete.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut c = self.child.take().expect("running");
        Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status()
            .unwrap();
        c.wait().unwrap()
    }
}

impl Drop for Verifier {
    fn drop(&mut self) {
        self.kill();
    }
}
