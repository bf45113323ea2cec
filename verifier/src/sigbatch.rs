//! Ed25519 signatures of concurrent requests, checked together.
//!
//! Requests answered by one group commit wake together; each hands its signature to this
//! thread, which takes every signature waiting (up to `max`) and checks them as one batch
//! ([`Verifier::verify_signatures`]), then answers each request. Under load the batches fill
//! by themselves; a lone request is checked alone, with no timer to wait for. HMAC signatures
//! are cheap and never come here.

use coherence_core::pcs::{KeyRef, SignAlg, Verifier};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;

/// The answer of one signature check.
pub type SigAnswer = Result<(SignAlg, KeyRef), String>;

struct Job {
    message: [u8; 32],
    sig: String,
    reply: tokio::sync::oneshot::Sender<SigAnswer>,
}

/// What the batching thread did so far.
#[derive(Debug, Default)]
pub struct BatchStats {
    /// Batches checked.
    pub batches: AtomicU64,
    /// Signatures checked.
    pub signatures: AtomicU64,
}

/// The handle requests use; the thread stops when the last handle is dropped.
#[derive(Clone)]
pub struct SigBatcher {
    tx: mpsc::Sender<Job>,
    keys: Verifier,
    stats: Arc<BatchStats>,
}

impl SigBatcher {
    /// Starts the checking thread; a batch holds at most `max` signatures.
    pub fn start(keys: Verifier, max: usize) -> std::io::Result<SigBatcher> {
        let (tx, rx) = mpsc::channel::<Job>();
        let stats = Arc::new(BatchStats::default());
        let (thread_keys, thread_stats) = (keys.clone(), stats.clone());
        let max = max.max(1);
        std::thread::Builder::new()
            .name("sig-batch".into())
            .spawn(move || {
                while let Ok(first) = rx.recv() {
                    let mut jobs = vec![first];
                    while jobs.len() < max {
                        match rx.try_recv() {
                            Ok(j) => jobs.push(j),
                            Err(_) => break,
                        }
                    }
                    let items: Vec<([u8; 32], &str)> =
                        jobs.iter().map(|j| (j.message, j.sig.as_str())).collect();
                    let answers = thread_keys.verify_signatures(&items);
                    thread_stats.batches.fetch_add(1, Ordering::Relaxed);
                    thread_stats
                        .signatures
                        .fetch_add(jobs.len() as u64, Ordering::Relaxed);
                    for (job, answer) in jobs.into_iter().zip(answers) {
                        // The request may have gone (its connection closed); nothing to do.
                        let _ = job.reply.send(answer);
                    }
                }
            })?;
        Ok(SigBatcher { tx, keys, stats })
    }

    /// The signature check of `sig` over `message`: an Ed25519 signature (88 base64
    /// characters) goes through the batching thread, anything else is checked here.
    pub async fn verify(&self, message: [u8; 32], sig: &str) -> SigAnswer {
        if sig.len() != 88 {
            return self.keys.verify_signature(&message, sig);
        }
        let (reply, rx) = tokio::sync::oneshot::channel();
        let job = Job {
            message,
            sig: sig.to_owned(),
            reply,
        };
        if self.tx.send(job).is_err() {
            return self.keys.verify_signature(&message, sig);
        }
        match rx.await {
            Ok(answer) => answer,
            // The thread is gone (it cannot panic on these inputs, but never hang a request).
            Err(_) => self.keys.verify_signature(&message, sig),
        }
    }

    /// Batches and signatures checked so far.
    pub fn stats(&self) -> &BatchStats {
        &self.stats
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use base64::Engine as _;
    use coherence_core::pcs::Signer;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_checks_share_batches_and_get_their_own_answers() {
        let signer = Signer::ed25519_from_seed(&[5; 32]);
        let batcher = SigBatcher::start(signer.verifier(), 64).unwrap();
        let mut tasks = Vec::new();
        for i in 0..400u32 {
            let b = batcher.clone();
            let signer = signer.clone();
            tasks.push(tokio::spawn(async move {
                let m: [u8; 32] = {
                    use sha2::Digest as _;
                    sha2::Sha256::digest(i.to_le_bytes()).into()
                };
                let mut sig = signer.sign_digest(&m);
                let bad = i % 7 == 3;
                if bad {
                    // Another message's signature.
                    sig = signer.sign_digest(&[0; 32]);
                }
                (bad, b.verify(m, &sig).await)
            }));
        }
        for t in tasks {
            let (bad, answer) = t.await.unwrap();
            assert_eq!(answer.is_err(), bad, "{answer:?}");
        }
        let stats = batcher.stats();
        assert_eq!(stats.signatures.load(Ordering::Relaxed), 400);
        assert!(stats.batches.load(Ordering::Relaxed) <= 400);
        // An HMAC-length signature is answered without the thread.
        let short = base64::engine::general_purpose::STANDARD.encode([1u8; 32]);
        assert!(batcher.verify([0; 32], &short).await.is_err());
        assert_eq!(stats.signatures.load(Ordering::Relaxed), 400);
    }
}
