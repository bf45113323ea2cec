//! The outbox and the sender against the real `coherence-verifier` binary over mTLS: every
//! record delivered once, across a verifier outage and restart; rejected records in the
//! dead-letter file with the verifier's reason; a rotated client certificate picked up.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use coherence_sidecar::config::{DeliverySettings, OutboxSettings, VerifierSettings};
use coherence_sidecar::deliver::{Deliverer, DeliveryStats};
use coherence_sidecar::outbox::{Kind, Outbox};
use coherence_sidecar::run::{Held, Signed};
use coherence_sidecar::sample::Dur;
use coherence_verifier::tls::certgen;
use common::{Verifier, eventually, signed_pcs, verifier_on_new_certs};
use serde_json::Value;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

const LIMIT: Duration = Duration::from_secs(30);

fn outbox(dir: &Path) -> Arc<Outbox> {
    Arc::new(
        Outbox::open(&OutboxSettings {
            dir: dir.to_owned(),
            max_bytes: 1 << 20,
            segment_bytes: 8 << 10,
        })
        .unwrap(),
    )
}

fn settings(endpoint: String, ca: &Path, cert: &Path, key: &Path) -> VerifierSettings {
    VerifierSettings {
        endpoint,
        ca: Some(ca.to_owned()),
        cert: Some(cert.to_owned()),
        key: Some(key.to_owned()),
        timeout: Dur(Duration::from_secs(5)),
    }
}

fn fast_retries() -> DeliverySettings {
    DeliverySettings {
        backoff_base: Dur(Duration::from_millis(20)),
        backoff_max: Dur(Duration::from_millis(250)),
        max_attempts: 10_000,
    }
}

/// Appends a signed PCS the way the engine does: the seq goes into `ft.outbox_seq`.
fn append_pcs(o: &Outbox, shard: &str, epoch: u64) -> (u64, String) {
    let mut id = String::new();
    let seq = o
        .append_with(Kind::Pcs, &pcs_id_of(shard, epoch), |seq| {
            let p = signed_pcs(shard, epoch, seq);
            id = p.pcs_id.clone();
            p.to_json().into_bytes()
        })
        .unwrap();
    assert_eq!(id, pcs_id_of(shard, epoch));
    (seq, id)
}

/// The pcs_id does not depend on `ft`, so it is known before the seq.
fn pcs_id_of(shard: &str, epoch: u64) -> String {
    signed_pcs(shard, epoch, 0).pcs_id
}

/// Waits until the outbox is empty and the sender has counted every record it resolved (the
/// outbox is acknowledged on the blocking pool just before the sender counts it).
async fn drained(o: &Outbox, s: &DeliveryStats) {
    eventually("outbox drained", LIMIT, || {
        let (ob, snap) = (o.stats(), s.snapshot());
        (o.pending_len() == 0 && snap.sent_ok + snap.dead_lettered == ob.acked_total + ob.dlq_total)
            .then_some(())
    })
    .await;
}

fn dlq(o: &Outbox) -> Vec<Value> {
    std::fs::read_to_string(o.dlq_path())
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn stats_line(s: &DeliveryStats) -> String {
    format!("{:?}", s.snapshot())
}

/// The settings of a sidecar that presents `<name>.crt` and `<name>.key` of `dir` and trusts
/// `dir/ca.crt`.
fn presenting(v: &Verifier, dir: &Path, name: &str) -> VerifierSettings {
    settings(
        v.endpoint(),
        &dir.join("ca.crt"),
        &dir.join(format!("{name}.crt")),
        &dir.join(format!("{name}.key")),
    )
}

/// A sender running on its own task.
struct Sending {
    stats: Arc<DeliveryStats>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Sending {
    fn start(sender: Deliverer) -> Sending {
        let stats = sender.stats();
        let (stop, rx) = watch::channel(false);
        let task = sender.spawn(rx);
        Sending { stats, stop, task }
    }

    /// Asks the sender to stop and waits for it: it must stop within 5 s.
    async fn stop(self) {
        self.stop.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(5), self.task)
            .await
            .expect("the sender stops promptly")
            .unwrap();
    }
}

/// The verifier's stored outcome of `id`: it must be accepted (200); its body.
async fn accepted(v: &Verifier, id: &str, what: impl std::fmt::Display) -> Value {
    let (s, body) = v.record(id).await;
    assert_eq!(
        (s, &body["status"]),
        (200, &Value::from(200)),
        "{what}: {body}"
    );
    body
}

/// Stops the verifier and audits its WAL: `n` first applications, none applied twice.
fn audited(v: &mut Verifier, n: u64) {
    assert!(v.terminate().success());
    let audit = coherence_verifier::wal::audit(&v.wal).unwrap();
    assert_eq!(audit.first_applications, n, "{audit:?}");
    assert!(audit.applied_more_than_once.is_empty(), "{audit:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_record_is_delivered_once_across_a_verifier_outage() {
    let (dir, certs, mut v) = verifier_on_new_certs(&[], &[]).await;

    let ob = outbox(&dir.path().join("outbox"));
    let cfg = presenting(&v, &certs, "client");
    let sending = Sending::start(Deliverer::new(ob.clone(), &cfg, &fast_retries()).unwrap());
    let stats = sending.stats.clone();

    let shard = "shop/checkout/checkout-0";
    let mut sent: Vec<(u64, String)> = (1..=5).map(|e| append_pcs(&ob, shard, e)).collect();
    drained(&ob, &stats).await;
    let mut wal_seqs = Vec::new();
    for (seq, id) in &sent {
        let body = accepted(&v, id, seq).await;
        wal_seqs.push(body["seq"].as_u64().unwrap());
    }
    assert!(
        wal_seqs.windows(2).all(|w| w[0] < w[1]),
        "delivered in outbox order: {wal_seqs:?}"
    );
    assert_eq!(stats.snapshot().sent_ok, 5, "{}", stats_line(&stats));

    // The verifier goes away: records accumulate and are retried.
    v.kill();
    let before = stats.snapshot().retries;
    sent.extend((6..=10).map(|e| append_pcs(&ob, shard, e)));
    eventually("retries while the verifier is down", LIMIT, || {
        (stats.snapshot().retries >= before + 3).then_some(())
    })
    .await;
    assert_eq!(ob.pending_len(), 5);
    let snap = stats.snapshot();
    assert!(snap.network_errors >= 3, "{snap:?}");
    assert!(snap.last_error.is_some(), "{snap:?}");
    assert_eq!(snap.head_seq, Some(sent[5].0), "{snap:?}");

    // Back on the same WAL: everything is delivered, nothing is stored twice.
    v.restart();
    v.ready().await;
    drained(&ob, &stats).await;
    for (seq, id) in &sent {
        accepted(&v, id, seq).await;
    }
    let st = ob.stats();
    assert_eq!((st.acked_total, st.dlq_total, st.degraded), (10, 0, false));
    assert_eq!(stats.snapshot().sent_ok, 10, "{}", stats_line(&stats));
    assert!(stats.snapshot().last_success_at_ms.is_some());

    sending.stop().await;
    audited(&mut v, 10);

    // A restart of the sidecar finds nothing pending and numbers on.
    drop(ob);
    let again = outbox(&dir.path().join("outbox"));
    assert_eq!(again.pending_len(), 0);
    assert_eq!(again.next_seq(), 11);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_the_outbox_refused_are_held_and_delivered_later_exactly_once() {
    let (dir, certs, mut v) = verifier_on_new_certs(&[], &[]).await;
    let ob = outbox(&dir.path().join("outbox"));
    let cfg = presenting(&v, &certs, "client");
    let sending = Sending::start(Deliverer::new(ob.clone(), &cfg, &fast_retries()).unwrap());
    let stats = sending.stats.clone();

    let shard = "shop/checkout/checkout-0";
    let pcs = |epoch: u64| Signed::Pcs(Box::new(signed_pcs(shard, epoch, 0)));
    let mut held = Held::default();
    assert_eq!(held.store(&ob, vec![pcs(1)]).pcs, 1);
    // The disk is full while epoch 2 is stored, and the write after the failure cannot even be
    // cut back: the outbox refuses writes until it has repaired its tail.
    ob.inject_write_failures(1);
    let st = held.store(&ob, vec![pcs(2)]);
    assert_eq!((st.pcs, st.held), (0, 1), "{st:?}");
    ob.inject_unknown_tail();
    drained(&ob, &stats).await;
    let (code, _) = v.record(&pcs_id_of(shard, 2)).await;
    assert_eq!(code, 404, "epoch 2 is not delivered while it is held");

    // The next epoch: the held record goes first, then the new one; both are delivered.
    let st = held.store(&ob, vec![pcs(3)]);
    assert_eq!((st.pcs, st.retried, st.held), (2, 1, 0), "{st:?}");
    let ost = ob.stats();
    assert_eq!(
        (ost.write_errors, ost.recoveries, ost.failed),
        (2, 1, false)
    );
    drained(&ob, &stats).await;
    let mut wal_seqs = Vec::new();
    for epoch in 1..=3 {
        let body = accepted(&v, &pcs_id_of(shard, epoch), epoch).await;
        wal_seqs.push(body["seq"].as_u64().unwrap());
    }
    assert!(
        wal_seqs.windows(2).all(|w| w[0] < w[1]),
        "in epoch order: {wal_seqs:?}"
    );
    assert_eq!(stats.snapshot().sent_ok, 3, "{}", stats_line(&stats));

    sending.stop().await;
    audited(&mut v, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_records_go_to_the_dead_letter_file_with_the_reason() {
    let (dir, certs, v) = verifier_on_new_certs(&["checkout:shop"], &[]).await;

    let ob = outbox(&dir.path().join("outbox"));
    let good1 = append_pcs(&ob, "shop/checkout/checkout-0", 1);
    // Tampered: a new epoch and pcs_id, the old signature.
    let mut t = signed_pcs("shop/checkout/checkout-0", 2, 0);
    t.epoch = 3;
    t.pcs_id = t.expected_pcs_id();
    let tampered = ob
        .append(Kind::Pcs, &t.pcs_id, t.to_json().as_bytes())
        .unwrap();
    // Another namespace than the client certificate's.
    let foreign = append_pcs(&ob, "payments/api/api-0", 1);
    let malformed = ob.append(Kind::Pcs, "m", br#"{"schema": 1}"#).unwrap();
    let good2 = append_pcs(&ob, "shop/checkout/checkout-0", 4);

    // The sidecar presents the `checkout:shop` certificate.
    let cfg = presenting(&v, &certs, "checkout");
    let sending = Sending::start(Deliverer::new(ob.clone(), &cfg, &fast_retries()).unwrap());
    let stats = sending.stats.clone();
    drained(&ob, &stats).await;

    for (seq, id) in [&good1, &good2] {
        accepted(&v, id, seq).await;
    }
    let lines = dlq(&ob);
    let by_seq = |seq: u64| {
        lines
            .iter()
            .find(|l| l["seq"] == seq)
            .unwrap_or_else(|| panic!("seq {seq} not in the DLQ: {lines:?}"))
    };
    assert_eq!(lines.len(), 3, "{lines:?}");
    let l = by_seq(tampered);
    assert!(l["reason"].as_str().unwrap().starts_with("401: "), "{l}");
    assert_eq!(l["id"], t.pcs_id.as_str());
    assert_eq!(l["kind"], "pcs");
    assert_eq!(l["body"]["pcs_id"], t.pcs_id.as_str());
    let l = by_seq(foreign.0);
    assert!(l["reason"].as_str().unwrap().starts_with("403: "), "{l}");
    let l = by_seq(malformed);
    assert!(l["reason"].as_str().unwrap().starts_with("400: "), "{l}");
    assert!(l["reason"].as_str().unwrap().contains("field"), "{l}");

    let snap = stats.snapshot();
    assert_eq!(
        (snap.sent_ok, snap.dead_lettered, snap.retries),
        (2, 3, 0),
        "{snap:?}"
    );
    assert_eq!(snap.by_status.get(&401), Some(&1), "{snap:?}");
    assert_eq!(snap.by_status.get(&403), Some(&1), "{snap:?}");
    assert_eq!(snap.by_status.get(&400), Some(&1), "{snap:?}");
    assert_eq!(ob.stats().dlq_total, 3);
    sending.stop().await;
}

fn link(target: &str, at: &Path) {
    std::os::unix::fs::symlink(target, at).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_client_certificate_is_picked_up() {
    let (dir, certs, v) = verifier_on_new_certs(&[], &[]).await;
    // A client certificate of another CA: the verifier refuses the handshake.
    let stranger = dir.path().join("stranger");
    certgen::generate(&stranger, &[], 30).unwrap();

    // A Secret volume as the kubelet writes it: files point through the `..data` symlink.
    let secret = dir.path().join("secret");
    let v1 = secret.join("..v1");
    std::fs::create_dir_all(&v1).unwrap();
    std::fs::copy(certs.join("ca.crt"), v1.join("ca.crt")).unwrap();
    std::fs::copy(stranger.join("client.crt"), v1.join("tls.crt")).unwrap();
    std::fs::copy(stranger.join("client.key"), v1.join("tls.key")).unwrap();
    link("..v1", &secret.join("..data"));
    for f in ["ca.crt", "tls.crt", "tls.key"] {
        link(&format!("..data/{f}"), &secret.join(f));
    }

    let ob = outbox(&dir.path().join("outbox"));
    let cfg = presenting(&v, &secret, "tls");
    let sending = Sending::start(
        Deliverer::new(ob.clone(), &cfg, &fast_retries())
            .unwrap()
            .with_reload_interval(Duration::from_millis(200)),
    );
    let stats = sending.stats.clone();
    let (_, id) = append_pcs(&ob, "shop/checkout/checkout-0", 1);
    eventually("refused handshakes", LIMIT, || {
        (stats.snapshot().network_errors >= 2).then_some(())
    })
    .await;
    assert_eq!(ob.pending_len(), 1, "{}", stats_line(&stats));
    assert_eq!(stats.snapshot().tls_reloads, 0);

    // Rotation: a new directory, then `..data` swapped atomically.
    let v2 = secret.join("..v2");
    std::fs::create_dir_all(&v2).unwrap();
    std::fs::copy(certs.join("ca.crt"), v2.join("ca.crt")).unwrap();
    std::fs::copy(certs.join("client.crt"), v2.join("tls.crt")).unwrap();
    std::fs::copy(certs.join("client.key"), v2.join("tls.key")).unwrap();
    link("..v2", &secret.join("..data_tmp"));
    std::fs::rename(secret.join("..data_tmp"), secret.join("..data")).unwrap();

    drained(&ob, &stats).await;
    accepted(&v, &id, "after the rotation").await;
    let snap = stats.snapshot();
    assert_eq!(snap.tls_reloads, 1, "{snap:?}");
    assert_eq!(snap.sent_ok, 1, "{snap:?}");
    sending.stop().await;
}
