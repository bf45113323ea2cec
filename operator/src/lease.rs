//! Leader election with a `coordination.k8s.io/v1` Lease: one replica writes, the others
//! wait. The holder renews every `retry` period; when it has not renewed for `renew_deadline`,
//! or finds another holder, it has lost the lease and the process ends (the kubelet restarts
//! it as a follower), so two writers never overlap for longer than the lease's duration.
//!
//! Every write carries the `resourceVersion` it read: two candidates racing for an expired
//! lease cannot both win (the API server refuses the stale one with 409).

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};
use std::time::Duration;

/// Timing and identity of a candidate.
#[derive(Debug, Clone)]
pub struct LeaseConfig {
    /// Lease name.
    pub name: String,
    /// Namespace of the Lease (the operator's own).
    pub namespace: String,
    /// This replica (its pod name).
    pub identity: String,
    /// How long a lease holds without renewal (15 s).
    pub lease_duration: Duration,
    /// The holder gives up when it could not renew for this long (10 s).
    pub renew_deadline: Duration,
    /// Period of acquire attempts and renewals (2 s).
    pub retry_period: Duration,
}

impl LeaseConfig {
    /// The operator's timing: lease 15 s, renew deadline 10 s, retry 2 s.
    pub fn new(name: &str, namespace: &str, identity: &str) -> Self {
        Self {
            name: name.into(),
            namespace: namespace.into(),
            identity: identity.into(),
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }
}

/// Why the holder stopped holding.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LeaseLost {
    /// Another replica holds the lease.
    #[error("lease {0} is now held by {1}")]
    TakenBy(String, String),
    /// Renewal failed for longer than the renew deadline.
    #[error("lease {0} could not be renewed within the deadline: {1}")]
    Deadline(String, String),
}

/// A candidate for one Lease.
#[derive(Debug, Clone)]
pub struct Elector {
    api: Api<Lease>,
    cfg: LeaseConfig,
}

/// Outcome of one attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attempt {
    /// We hold the lease (acquired or renewed).
    Held,
    /// Another replica holds an unexpired lease.
    HeldBy(String),
}

impl Elector {
    /// A candidate using `client`.
    pub fn new(client: kube::Client, cfg: LeaseConfig) -> Self {
        Self {
            api: Api::namespaced(client, &cfg.namespace),
            cfg,
        }
    }

    fn spec(&self, now: Timestamp, acquired: Option<MicroTime>, transitions: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(self.cfg.identity.clone()),
            lease_duration_seconds: i32::try_from(self.cfg.lease_duration.as_secs()).ok(),
            acquire_time: Some(acquired.unwrap_or(MicroTime(now))),
            renew_time: Some(MicroTime(now)),
            lease_transitions: Some(transitions),
            ..LeaseSpec::default()
        }
    }

    /// One attempt to acquire or renew at `now`. A 409 (someone wrote first) is
    /// reported as held by whoever holds it now.
    pub async fn try_acquire(&self, now: Timestamp) -> Result<Attempt, kube::Error> {
        let Some(lease) = self.api.get_opt(&self.cfg.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.cfg.name.clone()),
                    namespace: Some(self.cfg.namespace.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(self.spec(now, None, 0)),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(Attempt::Held),
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(Attempt::HeldBy(String::new())),
                Err(e) => Err(e),
            };
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.clone().unwrap_or_default();
        let ours = holder == self.cfg.identity;
        let duration_ms = i64::from(spec.lease_duration_seconds.unwrap_or(15)) * 1000;
        let expired = spec
            .renew_time
            .as_ref()
            .is_none_or(|t| now.as_millisecond() - t.0.as_millisecond() > duration_ms);
        if !(ours || holder.is_empty() || expired) {
            return Ok(Attempt::HeldBy(holder));
        }
        let transitions = spec.lease_transitions.unwrap_or(0) + i32::from(!ours);
        let acquired = if ours {
            spec.acquire_time.clone()
        } else {
            None
        };
        let mut next = lease.clone();
        next.spec = Some(self.spec(now, acquired, transitions));
        match self
            .api
            .replace(&self.cfg.name, &PostParams::default(), &next)
            .await
        {
            Ok(_) => Ok(Attempt::Held),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(Attempt::HeldBy(holder)),
            Err(e) => Err(e),
        }
    }

    /// Waits until this replica holds the lease.
    pub async fn acquire(&self) {
        loop {
            match self.try_acquire(Timestamp::now()).await {
                Ok(Attempt::Held) => {
                    tracing::info!(
                        lease = self.cfg.name,
                        identity = self.cfg.identity,
                        "leader"
                    );
                    return;
                }
                Ok(Attempt::HeldBy(h)) => {
                    tracing::debug!(lease = self.cfg.name, holder = h, "waiting for the lease");
                }
                Err(e) => {
                    tracing::warn!(lease = self.cfg.name, error = %e, "cannot read the lease")
                }
            }
            tokio::time::sleep(self.cfg.retry_period).await;
        }
    }

    /// Renews every retry period while held; returns when the lease is lost.
    pub async fn hold(&self) -> LeaseLost {
        let mut last = tokio::time::Instant::now();
        loop {
            tokio::time::sleep(self.cfg.retry_period).await;
            match self.try_acquire(Timestamp::now()).await {
                Ok(Attempt::Held) => last = tokio::time::Instant::now(),
                Ok(Attempt::HeldBy(h)) => return LeaseLost::TakenBy(self.cfg.name.clone(), h),
                Err(e) if last.elapsed() >= self.cfg.renew_deadline => {
                    return LeaseLost::Deadline(self.cfg.name.clone(), e.to_string());
                }
                Err(e) => tracing::warn!(lease = self.cfg.name, error = %e, "renewal failed"),
            }
        }
    }

    /// Gives the lease up on shutdown (clears the holder) so a follower takes over at once.
    pub async fn release(&self) {
        let Ok(Some(mut lease)) = self.api.get_opt(&self.cfg.name).await else {
            return;
        };
        let ours = lease
            .spec
            .as_ref()
            .and_then(|s| s.holder_identity.as_deref())
            == Some(self.cfg.identity.as_str());
        if !ours {
            return;
        }
        if let Some(s) = lease.spec.as_mut() {
            s.holder_identity = None;
            s.renew_time = None;
        }
        if let Err(e) = self
            .api
            .replace(&self.cfg.name, &PostParams::default(), &lease)
            .await
        {
            tracing::warn!(lease = self.cfg.name, error = %e, "cannot release the lease");
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::fake::FakeApi;

    fn at(s: i64) -> Timestamp {
        Timestamp::from_second(1_750_000_000 + s).unwrap()
    }

    #[tokio::test]
    async fn one_holder_at_a_time_and_takeover_after_expiry() {
        let fake = FakeApi::new();
        let a = Elector::new(fake.client(), LeaseConfig::new("op", "coherence", "a"));
        let b = Elector::new(fake.client(), LeaseConfig::new("op", "coherence", "b"));
        assert_eq!(a.try_acquire(at(0)).await.unwrap(), Attempt::Held);
        assert_eq!(
            b.try_acquire(at(1)).await.unwrap(),
            Attempt::HeldBy("a".into())
        );
        assert_eq!(
            a.try_acquire(at(10)).await.unwrap(),
            Attempt::Held,
            "renewal"
        );
        // 15 s after the last renewal the lease is still a's; after that, b may take it.
        assert_eq!(
            b.try_acquire(at(25)).await.unwrap(),
            Attempt::HeldBy("a".into())
        );
        assert_eq!(b.try_acquire(at(26)).await.unwrap(), Attempt::Held);
        assert_eq!(
            a.try_acquire(at(27)).await.unwrap(),
            Attempt::HeldBy("b".into())
        );
        let l = fake
            .get("coordination.k8s.io/v1", "leases", "coherence", "op")
            .unwrap();
        assert_eq!(l["spec"]["holderIdentity"], "b");
        assert_eq!(l["spec"]["leaseTransitions"], 1);
        assert_eq!(l["spec"]["leaseDurationSeconds"], 15);

        // Releasing clears the holder: a takes over without waiting.
        b.release().await;
        assert_eq!(a.try_acquire(at(28)).await.unwrap(), Attempt::Held);
    }

    #[tokio::test]
    async fn a_stale_write_loses_the_race() {
        let fake = FakeApi::new();
        let a = Elector::new(fake.client(), LeaseConfig::new("op", "coherence", "a"));
        a.try_acquire(at(0)).await.unwrap();
        let api: Api<Lease> = Api::namespaced(fake.client(), "coherence");
        let stale = api.get("op").await.unwrap();
        a.try_acquire(at(1)).await.unwrap();
        let r = api.replace("op", &PostParams::default(), &stale).await;
        assert!(matches!(r, Err(kube::Error::Api(s)) if s.code == 409));
    }

    #[tokio::test]
    async fn the_holder_notices_a_takeover() {
        let fake = FakeApi::new();
        let mut cfg = LeaseConfig::new("op", "coherence", "a");
        cfg.retry_period = Duration::from_millis(10);
        let a = Elector::new(fake.client(), cfg);
        a.acquire().await;
        fake.modify("coordination.k8s.io/v1", "leases", "coherence", "op", |l| {
            l["spec"]["holderIdentity"] = "b".into();
            l["spec"]["renewTime"] = serde_json::json!(Timestamp::now().to_string());
        });
        assert_eq!(a.hold().await, LeaseLost::TakenBy("op".into(), "b".into()));
    }
}
