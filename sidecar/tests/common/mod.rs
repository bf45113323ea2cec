//! The real `coherence-verifier` binary for the sidecar's delivery tests: located next to this
//! test's build (and built there first, so it always matches the sources), started on given
//! ports with generated certificates, stopped and restarted on the same WAL.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use coherence_core::pcs::{self, BuildInput, Params, Pcs, Signer};
use coherence_verifier::client::Client;
use coherence_verifier::tls;
use serde_json::Value;
use std::io::Write;
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
    env: Vec<(String, String)>,
}

/// A temporary directory with new certificates in `certs/` (a client pair for each
/// `name:namespace` of `clients`) and a ready verifier on them, with more environment `env`
/// and its WAL in `wal/`.
pub async fn verifier_on_new_certs(
    clients: &[&str],
    env: &[(&str, &str)],
) -> (tempfile::TempDir, PathBuf, Verifier) {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    let clients: Vec<_> = clients.iter().map(|c| c.parse().unwrap()).collect();
    tls::certgen::generate(&certs, &clients, 30).unwrap();
    let mut v = Verifier::start_with(&certs, &dir.path().join("wal"), env);
    v.ready().await;
    (dir, certs, v)
}

impl Verifier {
    /// Starts the verifier with `certs` (from `certgen`) and `wal`, on free ports.
    pub fn start(certs: &Path, wal: &Path) -> Verifier {
        Self::start_with(certs, wal, &[])
    }

    /// Like [`Verifier::start`], with more environment (e.g. other signing keys).
    pub fn start_with(certs: &Path, wal: &Path, env: &[(&str, &str)]) -> Verifier {
        let mut v = Verifier {
            child: None,
            port: free_port(),
            admin: free_port(),
            certs: certs.to_owned(),
            wal: wal.to_owned(),
            env: env
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
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
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(Stdio::null())
            .stderr(self.log_file())
            .spawn()
            .expect("start coherence-verifier");
        self.child = Some(child);
    }

    /// The verifier's log (`<wal>.log`), kept across restarts.
    pub fn log(&self) -> PathBuf {
        self.wal.with_extension("log")
    }

    fn log_file(&self) -> std::fs::File {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log())
            .expect("open the verifier's log")
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

    /// Waits (at most 30 s) until `/readyz` answers 200. Its ports were free when they were
    /// chosen, but while it is down (a test's outage) another socket of the machine (any
    /// test's outgoing connection) may hold one for a moment: a verifier that exits because
    /// an address is in use is started again on the same ports. Any other exit fails here,
    /// with the log.
    pub async fn ready(&mut self) {
        let admin = Client::new(&format!("http://127.0.0.1:{}", self.admin), None).unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = admin.get("/readyz").await {
                if r.status == 200 {
                    return;
                }
            }
            let exited = self.child.as_mut().and_then(|c| c.try_wait().unwrap());
            let path = self.log();
            let log = || std::fs::read_to_string(&path).unwrap_or_default();
            if let Some(status) = exited {
                let log = log();
                let last = log.lines().last().unwrap_or_default();
                assert!(
                    status.code() == Some(64) && last.contains("in use"),
                    "the verifier exited ({status}); its log:\n{log}"
                );
                self.child = None;
                tokio::time::sleep(Duration::from_millis(200)).await;
                self.spawn();
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "verifier not ready within 30s; its log:\n{}",
                log()
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

// ---------------------------------------------------------------------------------------------
// The sidecar binary

/// A running sidecar.
pub struct Sidecar {
    child: Option<Child>,
    config: PathBuf,
    /// Port of the local API.
    pub api: u16,
    /// stderr of every run, appended.
    pub log: PathBuf,
    env: Vec<(String, String)>,
    cwd: Option<PathBuf>,
}

impl Sidecar {
    /// Starts `coherence-sidecar run --config CONFIG` with `PCS_HMAC_KEY` = [`KEY`].
    pub fn start(config: &Path, api: u16, log: &Path) -> Sidecar {
        Self::start_with(config, api, log, None, &[])
    }

    /// Like [`Sidecar::start`], in `cwd`, with more environment (set after `PCS_HMAC_KEY`).
    pub fn start_with(
        config: &Path,
        api: u16,
        log: &Path,
        cwd: Option<&Path>,
        env: &[(&str, &str)],
    ) -> Sidecar {
        let mut s = Sidecar {
            child: None,
            config: config.to_owned(),
            api,
            log: log.to_owned(),
            env: env
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            cwd: cwd.map(Path::to_owned),
        };
        s.spawn();
        s
    }

    /// Starts the process again (after [`Sidecar::kill`]).
    pub fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_coherence-sidecar"));
        cmd.args(["run", "--config"]).arg(&self.config);
        if let Some(d) = &self.cwd {
            cmd.current_dir(d);
        }
        for k in [
            "ENDPOINT",
            "POD_NAMESPACE",
            "POD_NAME",
            "WORKLOAD_NAME",
            "PCS_SIGN_ALG",
            "PCS_ED25519_KEY_B64",
            "COHERENCE_AES_KEY",
            "COHERENCE_TLS_CA",
            "COHERENCE_TLS_CERT",
            "COHERENCE_TLS_KEY",
            "PERSISTENCE",
        ] {
            cmd.env_remove(k);
        }
        cmd.env("PCS_HMAC_KEY", KEY);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("start coherence-sidecar");
        self.child = Some(child);
    }

    pub fn api(&self) -> Client {
        Client::new(&format!("http://127.0.0.1:{}", self.api), None).unwrap()
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        match self.api().get(path).await {
            Ok(r) => (
                r.status,
                serde_json::from_slice(&r.body).unwrap_or(Value::Null),
            ),
            Err(_) => (0, Value::Null),
        }
    }

    pub async fn status(&self) -> Value {
        self.get("/status").await.1
    }

    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut c = self.child.take().expect("running");
        Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status()
            .unwrap();
        c.wait().unwrap()
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The number at `path` in `v` (0 when missing).
pub fn num(v: &Value, path: &[&str]) -> u64 {
    let mut cur = v;
    for p in path {
        cur = &cur[*p];
    }
    cur.as_u64().unwrap_or(0)
}

/// Polls `/status` until `pred` holds; panics with the last status and the log after `limit`
/// or when the process exits.
pub async fn wait_status(
    s: &mut Sidecar,
    what: &str,
    limit: Duration,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(exit) = s.exited() {
            panic!(
                "{what}: the sidecar exited ({exit:?}); log: {}",
                std::fs::read_to_string(&s.log).unwrap_or_default()
            );
        }
        let st = s.status().await;
        if pred(&st) {
            return st;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not reached within {limit:?}; last status: {st}; log: {}",
            std::fs::read_to_string(&s.log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// Appends one JSON line `{"ts": <now ms>, ...}` per `every` to `path` from a thread, with the
/// fields `line(i)` returns for the i-th line, until the returned guard is dropped.
pub struct Feeder {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl Feeder {
    /// Starts writing; `line(i)` gives the fields (an object) of line `i`, or a whole line
    /// (a string, written as it is).
    pub fn start(
        path: &Path,
        every: Duration,
        line: impl Fn(u64) -> Value + Send + 'static,
    ) -> Feeder {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let path = path.to_owned();
        let flag = stop.clone();
        let handle = std::thread::spawn(move || {
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .unwrap();
            let mut i = 0u64;
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                let text = match line(i) {
                    Value::String(s) => s,
                    Value::Object(mut m) => {
                        m.entry("ts").or_insert_with(|| now_ms().into());
                        Value::Object(m).to_string()
                    }
                    other => other.to_string(),
                };
                writeln!(f, "{text}").unwrap();
                i += 1;
                std::thread::sleep(every);
            }
        });
        Feeder {
            stop,
            handle: Some(handle),
        }
    }
}

impl Drop for Feeder {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// Debian's node exporter, when it is installed.
pub const NODE_EXPORTER: &str = "/usr/bin/prometheus-node-exporter";

/// A running `prometheus-node-exporter` with a few collectors, killed on drop.
pub struct NodeExporter {
    child: Child,
    /// `127.0.0.1:<port>`.
    pub addr: String,
}

impl NodeExporter {
    /// Starts Debian's node exporter on `addr` (loadavg, meminfo and cpu collectors only) and
    /// waits until it serves `/metrics`; `None` when the binary is not installed.
    pub fn start(addr: &str) -> Option<NodeExporter> {
        if !Path::new(NODE_EXPORTER).exists() {
            return None;
        }
        let child = Command::new(NODE_EXPORTER)
            .arg(format!("--web.listen-address={addr}"))
            .args([
                "--collector.disable-defaults",
                "--collector.loadavg",
                "--collector.meminfo",
                "--collector.cpu",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start prometheus-node-exporter");
        let n = NodeExporter {
            child,
            addr: addr.to_owned(),
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            if http_get(addr, "/metrics").is_some_and(|b| b.contains("node_load1")) {
                return Some(n);
            }
            assert!(
                std::time::Instant::now() < deadline,
                "prometheus-node-exporter did not serve {addr}/metrics within 20s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for NodeExporter {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A plain HTTP/1.1 GET; the body of a 200 answer.
pub fn http_get(addr: &str, path: &str) -> Option<String> {
    use std::io::Read;
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut text = Vec::new();
    s.read_to_end(&mut text).ok()?;
    let text = String::from_utf8_lossy(&text).into_owned();
    let (head, body) = text.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.1 200").then(|| body.to_owned())
}
