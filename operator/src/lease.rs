//! Leader election with a `coordination.k8s.io/v1` Lease, as client-go's leaderelection
//! does it: one replica holds the Lease and reconciles, renewing it every `renew`; the
//! others poll it, and take it over when it has not changed for `duration` by their own
//! clock (so clocks of different nodes need not agree). Every write carries the
//! resourceVersion it read, so two replicas cannot both win a takeover. A replica that
//! cannot renew within `duration` stops leading (the process exits and restarts as a
//! standby); one that stops cleanly releases the Lease so a standby takes over at once.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::Client;
use kube::api::{Api, PostParams};
use tokio::time::Instant;

/// Lease timing.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// How long a Lease not renewed stays with its holder.
    pub duration: Duration,
    /// How often the holder renews it.
    pub renew: Duration,
    /// How often a standby looks at it.
    pub retry: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            duration: Duration::from_secs(15),
            renew: Duration::from_secs(5),
            retry: Duration::from_secs(2),
        }
    }
}

/// A Lease's holder and renew time, as last read.
type Seen = (Option<String>, Option<String>);

/// One replica's view of the Lease.
pub struct Elector {
    api: Api<Lease>,
    name: String,
    identity: String,
    timing: Timing,
    /// The holder and renew time last seen, and when they were first seen so.
    observed: Option<(Seen, Instant)>,
}

impl std::fmt::Debug for Elector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Elector")
            .field("lease", &self.name)
            .field("identity", &self.identity)
            .finish_non_exhaustive()
    }
}

impl Elector {
    pub fn new(
        client: Client,
        namespace: &str,
        name: &str,
        identity: &str,
        timing: Timing,
    ) -> Self {
        Elector {
            api: Api::namespaced(client, namespace),
            name: name.into(),
            identity: identity.into(),
            timing,
            observed: None,
        }
    }

    pub fn identity(&self) -> &str {
        &self.identity
    }

    fn now() -> MicroTime {
        MicroTime(k8s_openapi::chrono::Utc::now())
    }

    /// Takes or renews the Lease if it is free, expired or ours: whether this replica
    /// holds it now.
    pub async fn try_acquire(&mut self) -> Result<bool, kube::Error> {
        let seconds = self.timing.duration.as_secs().max(1) as i32;
        let Some(mut lease) = self.api.get_opt(&self.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    ..Default::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(self.identity.clone()),
                    lease_duration_seconds: Some(seconds),
                    acquire_time: Some(Self::now()),
                    renew_time: Some(Self::now()),
                    lease_transitions: Some(0),
                    ..Default::default()
                }),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
                Err(e) => Err(e),
            };
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.clone().filter(|h| !h.is_empty());
        let ours = holder.as_deref() == Some(self.identity.as_str());
        let seen = (
            holder.clone(),
            spec.renew_time.as_ref().map(|t| t.0.to_rfc3339()),
        );
        let now = Instant::now();
        let since = match &self.observed {
            Some((s, at)) if *s == seen => *at,
            _ => {
                self.observed = Some((seen, now));
                now
            }
        };
        let expired = now.duration_since(since) >= self.timing.duration;
        if !ours && holder.is_some() && !expired {
            return Ok(false);
        }
        let mut next = spec.clone();
        if !ours {
            next.holder_identity = Some(self.identity.clone());
            next.acquire_time = Some(Self::now());
            next.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
        }
        next.renew_time = Some(Self::now());
        next.lease_duration_seconds = Some(seconds);
        lease.spec = Some(next);
        match self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(true),
            // Someone else wrote it first (a renewal, or a rival's takeover).
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Waits until this replica holds the Lease.
    pub async fn acquire(&mut self) {
        loop {
            match self.try_acquire().await {
                Ok(true) => return,
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(lease = %self.name, cause = %e, "reading the leader Lease; will retry")
                }
            }
            tokio::time::sleep(self.timing.retry).await;
        }
    }

    /// Renews the Lease every `renew` while it holds it; returns when it no longer does
    /// (taken over, or not renewed for `duration`).
    pub async fn hold(&mut self) {
        let mut last = Instant::now();
        loop {
            tokio::time::sleep(self.timing.renew).await;
            match self.try_acquire().await {
                Ok(true) => last = Instant::now(),
                Ok(false) => return,
                Err(e) => {
                    tracing::warn!(lease = %self.name, cause = %e, "renewing the leader Lease; will retry");
                    if last.elapsed() >= self.timing.duration {
                        return;
                    }
                }
            }
        }
    }

    /// Gives the Lease up (a clean stop), so a standby takes it at once.
    pub async fn release(&mut self) {
        let Ok(Some(mut lease)) = self.api.get_opt(&self.name).await else {
            return;
        };
        let Some(spec) = lease.spec.as_mut() else {
            return;
        };
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return;
        }
        spec.holder_identity = None;
        if let Err(e) = self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            tracing::warn!(lease = %self.name, cause = %e, "releasing the leader Lease");
        }
    }
}

#[cfg(all(test, feature = "memory-api"))]
mod tests {
    use super::*;
    use crate::memory_api::MemoryApi;

    fn timing() -> Timing {
        Timing {
            duration: Duration::from_secs(15),
            renew: Duration::from_secs(5),
            retry: Duration::from_secs(2),
        }
    }

    /// One holder at a time: a second replica waits while the first renews, takes over
    /// once the Lease has not changed for its duration, and at once after a release.
    #[tokio::test(start_paused = true)]
    async fn one_replica_leads_and_a_standby_takes_over_when_it_stops() {
        let (mem, client) = MemoryApi::new();
        let mut a = Elector::new(client.clone(), "ops", "sluice-operator", "a", timing());
        let mut b = Elector::new(client, "ops", "sluice-operator", "b", timing());
        assert!(a.try_acquire().await.unwrap());
        assert!(!b.try_acquire().await.unwrap());
        // a renews: b keeps waiting however long that goes on.
        for _ in 0..5 {
            tokio::time::advance(Duration::from_secs(5)).await;
            assert!(a.try_acquire().await.unwrap());
            assert!(!b.try_acquire().await.unwrap());
        }
        // a stops renewing (hung or partitioned): b takes over after the duration, and a
        // finds out at its next renewal.
        tokio::time::advance(Duration::from_secs(16)).await;
        assert!(b.try_acquire().await.unwrap());
        assert!(!a.try_acquire().await.unwrap());
        let lease = mem.get("leases", "ops", "sluice-operator").unwrap();
        assert_eq!(lease["spec"]["holderIdentity"], "b");
        assert_eq!(lease["spec"]["leaseTransitions"], 1);
        // b releases on a clean stop: a takes it without waiting.
        b.release().await;
        assert!(a.try_acquire().await.unwrap());
    }
}
