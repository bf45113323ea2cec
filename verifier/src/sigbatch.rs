//! Ed25519 signatures of concurrent requests, checked together.
//!
//! Requests answered by one group commit wake together and each queues its signature. The
//! first to find no batch running starts one, as a task on the runtime: it takes every
//! signature waiting (up to `max`), checks them as one batch ([`Verifier::verify_signatures`])
//! and answers each request, then goes on while signatures wait. Under load the batches fill by
//! themselves; a lone request is checked alone, with no timer to wait for. The work runs on the
//! runtime's worker threads, as checking in place would: a dedicated thread had to wait for the
//! scheduler on a busy machine, and every request waited with it. HMAC signatures are cheap
//! and never come here.

use coherence_core::pcs::{KeyRef, SignAlg, Verifier};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// The answer of one signature check.
pub type SigAnswer = Result<(SignAlg, KeyRef), String>;

struct Job {
    message: [u8; 32],
    sig: String,
    reply: tokio::sync::oneshot::Sender<SigAnswer>,
}

/// What the batches did so far.
#[derive(Debug, Default)]
pub struct BatchStats {
    /// Batches checked.
    pub batches: AtomicU64,
    /// Signatures checked.
    pub signatures: AtomicU64,
}

struct Shared {
    keys: Verifier,
    max: usize,
    queue: Mutex<Vec<Job>>,
    running: AtomicBool,
    stats: BatchStats,
}

/// The handle requests use.
#[derive(Clone)]
pub struct SigBatcher {
    shared: Arc<Shared>,
}

impl SigBatcher {
    /// A batcher whose batches hold at most `max` signatures.
    pub fn new(keys: Verifier, max: usize) -> SigBatcher {
        SigBatcher {
            shared: Arc::new(Shared {
                keys,
                max: max.max(1),
                queue: Mutex::new(Vec::new()),
                running: AtomicBool::new(false),
                stats: BatchStats::default(),
            }),
        }
    }

    /// The signature check of `sig` over `message`: an Ed25519 signature (88 base64
    /// characters) is checked in a batch, anything else here. Needs a tokio runtime.
    pub async fn verify(&self, message: [u8; 32], sig: &str) -> SigAnswer {
        if sig.len() != 88 {
            return self.shared.keys.verify_signature(&message, sig);
        }
        let (reply, rx) = tokio::sync::oneshot::channel();
        self.shared.queue().push(Job {
            message,
            sig: sig.to_owned(),
            reply,
        });
        self.shared.clone().lead();
        match rx.await {
            Ok(answer) => answer,
            // A batch task cannot panic on these inputs, but never leave a request hanging.
            Err(_) => self.shared.keys.verify_signature(&message, sig),
        }
    }

    /// Batches and signatures checked so far.
    pub fn stats(&self) -> &BatchStats {
        &self.shared.stats
    }
}

impl Shared {
    fn queue(&self) -> std::sync::MutexGuard<'_, Vec<Job>> {
        // Held only to push or take jobs: a poisoned lock guards nothing half-done.
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts a batch task unless one runs. The task clears `running` only after finding the
    /// queue empty, and looks again after clearing it, so a job queued meanwhile is never
    /// left without a batch.
    fn lead(self: Arc<Self>) {
        if self.running.swap(true, Ordering::AcqRel) {
            return;
        }
        tokio::spawn(async move {
            // Requests woken by the same group commit are queued to run after this task; let
            // them queue their signatures first, so they share this batch.
            tokio::task::yield_now().await;
            loop {
                let jobs: Vec<Job> = {
                    let mut q = self.queue();
                    let n = q.len().min(self.max);
                    q.drain(..n).collect()
                };
                if jobs.is_empty() {
                    self.running.store(false, Ordering::Release);
                    if self.queue().is_empty() || self.running.swap(true, Ordering::AcqRel) {
                        return;
                    }
                    continue;
                }
                self.check(jobs);
                // Let the requests just answered (and everything else) run between batches,
                // and more signatures gather for the next.
                tokio::task::yield_now().await;
            }
        });
    }

    fn check(&self, jobs: Vec<Job>) {
        let items: Vec<([u8; 32], &str)> =
            jobs.iter().map(|j| (j.message, j.sig.as_str())).collect();
        let answers = self.keys.verify_signatures(&items);
        self.stats.batches.fetch_add(1, Ordering::Relaxed);
        self.stats
            .signatures
            .fetch_add(jobs.len() as u64, Ordering::Relaxed);
        for (job, answer) in jobs.into_iter().zip(answers) {
            // The request may have gone (its connection closed); nothing to do.
            let _ = job.reply.send(answer);
        }
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
        let batcher = SigBatcher::new(signer.verifier(), 64);
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
