//! Leader election with a `coordination.k8s.io/v1` Lease, so only one replica does the work
//! (the operator's reconciling, the informer's housekeeping).
//!
//! Every write is a compare-and-swap on the Lease's `resourceVersion`: two candidates racing
//! for an expired Lease cannot both win. A holder that cannot renew within the lease duration
//! must stop its work; [`Leader::hold`] returns when that happens.

use std::time::Duration;

use k8s_openapi::{
    api::coordination::v1::{Lease, LeaseSpec},
    apimachinery::pkg::apis::meta::v1::MicroTime,
};
use kube::{
    Api,
    api::{ObjectMeta, PostParams},
};

/// Who competes for which Lease.
#[derive(Clone, Debug)]
pub struct Candidate {
    /// The Lease's namespace.
    pub namespace: String,
    /// The Lease's name.
    pub name: String,
    /// This replica's identity (unique per process).
    pub identity: String,
    /// How long a Lease stays valid without renewal.
    pub duration: Duration,
}

impl Candidate {
    /// This process competing for Lease `name` in `namespace` (empty = the client's namespace:
    /// the pod's in a cluster), valid `seconds` without renewal (at least 2).
    pub fn new(client: &kube::Client, namespace: &str, name: &str, seconds: u64) -> Self {
        Self {
            namespace: if namespace.is_empty() {
                client.default_namespace().to_string()
            } else {
                namespace.to_string()
            },
            name: name.to_string(),
            identity: Self::identity(),
            duration: Duration::from_secs(seconds.max(2)),
        }
    }

    /// A unique identity: `<host>-<random>`.
    pub fn identity() -> String {
        let host = std::env::var("POD_NAME")
            .or_else(|_| std::env::var("HOSTNAME"))
            .unwrap_or_else(|_| "stagetime".into());
        let mut bytes = [0u8; 4];
        let _ = getrandom::fill(&mut bytes);
        format!(
            "{host}-{}",
            bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()
        )
    }
}

/// The held Lease.
pub struct Leader {
    api: Api<Lease>,
    candidate: Candidate,
}

/// The other holder's record as this replica last saw it change, and when (on this replica's
/// clock): a Lease is expired when its record has not changed for its duration *here*, as
/// client-go decides — comparing another replica's wall clock with ours would let clock skew
/// make two leaders.
#[derive(Default)]
struct Seen {
    record: String,
    at: Option<tokio::time::Instant>,
}

/// One attempt, bounded by a third of the lease duration: a call that hangs on a half-open
/// connection counts as failed instead of holding leadership past the Lease's expiry.
async fn attempt(api: &Api<Lease>, me: &Candidate, seen: &mut Seen) -> Result<bool, String> {
    match tokio::time::timeout(me.duration / 3, try_acquire(api, me, seen)).await {
        Ok(result) => result.map_err(|e| e.to_string()),
        Err(_) => Err(format!("no answer within {:?}", me.duration / 3)),
    }
}

impl Candidate {
    /// Waits until this candidate holds the Lease (retrying every third of the duration).
    pub async fn acquire(self, client: kube::Client) -> Leader {
        let api: Api<Lease> = Api::namespaced(client, &self.namespace);
        let mut logged = false;
        let mut seen = Seen::default();
        loop {
            match attempt(&api, &self, &mut seen).await {
                Ok(true) => {
                    tracing::info!(lease = %self.name, identity = %self.identity, "leadership acquired");
                    return Leader {
                        api,
                        candidate: self,
                    };
                }
                Ok(false) if !logged => {
                    tracing::info!(lease = %self.name, "another replica leads; waiting");
                    logged = true;
                }
                Ok(false) => {}
                Err(error) => tracing::warn!(lease = %self.name, %error, "lease check failed"),
            }
            tokio::time::sleep(self.duration / 3).await;
        }
    }
}

impl Leader {
    /// Renews the Lease until a renewal is refused or none succeeded for the lease duration;
    /// returns then (the caller must stop leading at once).
    pub async fn hold(self) {
        let mut last_renewal = tokio::time::Instant::now();
        let mut seen = Seen::default();
        loop {
            tokio::time::sleep(self.candidate.duration / 3).await;
            match attempt(&self.api, &self.candidate, &mut seen).await {
                Ok(true) => last_renewal = tokio::time::Instant::now(),
                Ok(false) => {
                    tracing::error!(lease = %self.candidate.name, "leadership lost to another replica");
                    return;
                }
                Err(error) => {
                    tracing::warn!(lease = %self.candidate.name, %error, "lease renewal failed");
                    // Stop before the Lease can expire, so two leaders never overlap.
                    if last_renewal.elapsed() + self.candidate.duration / 3
                        >= self.candidate.duration
                    {
                        tracing::error!(lease = %self.candidate.name, "lease not renewed in time; stepping down");
                        return;
                    }
                }
            }
        }
    }
}

fn now() -> MicroTime {
    MicroTime(jiff::Timestamp::now())
}

/// One attempt: create, renew or take over an expired Lease. `Ok(false)` = someone else holds it.
async fn try_acquire(
    api: &Api<Lease>,
    me: &Candidate,
    seen: &mut Seen,
) -> Result<bool, kube::Error> {
    let seconds = i32::try_from(me.duration.as_secs().max(1)).unwrap_or(i32::MAX);
    let Some(mut lease) = api.get_opt(&me.name).await? else {
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(me.name.clone()),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(me.identity.clone()),
                lease_duration_seconds: Some(seconds),
                acquire_time: Some(now()),
                renew_time: Some(now()),
                lease_transitions: Some(0),
                ..LeaseSpec::default()
            }),
        };
        return match api.create(&PostParams::default(), &lease).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
            Err(e) => Err(e),
        };
    };
    let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
    let mine = spec.holder_identity.as_deref() == Some(me.identity.as_str());
    if !mine {
        let held_for = spec
            .lease_duration_seconds
            .map_or(0, |s| i64::from(s.max(0)));
        let record = format!(
            "{:?}/{:?}/{:?}",
            spec.holder_identity, spec.renew_time, spec.lease_transitions
        );
        if seen.record != record || seen.at.is_none() {
            seen.record = record;
            seen.at = Some(tokio::time::Instant::now());
        }
        let unchanged_for = seen.at.map_or(Duration::ZERO, |at| at.elapsed());
        let expired = match spec.holder_identity.as_deref() {
            None | Some("") => true,
            Some(_) => unchanged_for > Duration::from_secs(u64::try_from(held_for).unwrap_or(0)),
        };
        if !expired {
            return Ok(false);
        }
        spec.holder_identity = Some(me.identity.clone());
        spec.acquire_time = Some(now());
        spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
    }
    spec.renew_time = Some(now());
    spec.lease_duration_seconds = Some(seconds);
    // `replace` sends the resourceVersion we read: a concurrent writer makes this a 409.
    match api.replace(&me.name, &PostParams::default(), &lease).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
        Err(e) => Err(e),
    }
}
