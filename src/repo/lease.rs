//! One job per policy at a time, across hosts: a lease object at
//! `locks/<policy>` created with a conditional write, renewed while the job
//! runs, and taken over only once it has expired.

use std::sync::Arc;
use std::time::Duration as StdDuration;

use bytes::Bytes;
use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::lock_key;
use crate::error::{Error, Result, StorageErrorKind};
use crate::storage::{PutMode, Store};

/// How long a lease lasts without renewal.
pub const DEFAULT_TTL_SECONDS: i64 = 300;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LeaseBody {
    pub holder: String,
    pub job: String,
    pub acquired_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    /// Identifies the holder's process precisely enough to tell, on the same
    /// machine, that it has died: then its lease need not run out first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process: Option<ProcessId>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessId {
    pub boot_id: String,
    pub pid_namespace: String,
    pub pid: u32,
}

impl ProcessId {
    fn current() -> Option<ProcessId> {
        Some(ProcessId {
            boot_id: std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
                .ok()?
                .trim()
                .to_string(),
            pid_namespace: std::fs::read_link("/proc/self/ns/pid")
                .ok()?
                .to_string_lossy()
                .into_owned(),
            pid: std::process::id(),
        })
    }

    /// True only when the holder ran in this kernel boot and pid namespace
    /// and no process with its pid exists any more. Anything uncertain
    /// counts as alive, and the lease must expire instead.
    fn is_dead(&self) -> bool {
        let Some(me) = ProcessId::current() else {
            return false;
        };
        if me.boot_id != self.boot_id || me.pid_namespace != self.pid_namespace {
            return false;
        }
        // SAFETY: signal 0 only checks that the process exists.
        let alive = unsafe { libc::kill(self.pid as libc::pid_t, 0) } == 0
            || std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH);
        !alive
    }
}

pub struct Lease {
    store: Arc<dyn Store>,
    key: String,
    etag: Arc<tokio::sync::Mutex<Option<String>>>,
    renewer: tokio::task::JoinHandle<()>,
    lost: watch::Receiver<bool>,
}

fn holder() -> String {
    format!(
        "{}:{}",
        gethostname::gethostname().to_string_lossy(),
        std::process::id()
    )
}

fn ttl() -> Duration {
    let secs = std::env::var("DRCTL_LEASE_TTL_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(DEFAULT_TTL_SECONDS);
    Duration::seconds(secs.max(3))
}

impl Lease {
    /// Takes the lease of `policy` for `job`, or says who holds it.
    ///
    /// # Errors
    /// `Locked` when another live job holds it; storage errors.
    pub async fn acquire(store: Arc<dyn Store>, policy: &str, job: &str) -> Result<Lease> {
        let key = lock_key(policy);
        let ttl = ttl();
        let body = |now: DateTime<Utc>| LeaseBody {
            holder: holder(),
            job: job.to_string(),
            acquired_at: now,
            expires_at: now + ttl,
            process: ProcessId::current(),
        };
        let encode =
            |b: &LeaseBody| Bytes::from(serde_json::to_vec_pretty(b).expect("lease serialises"));
        let now = Utc::now();
        let stored = match store.put(&key, encode(&body(now)), PutMode::Create).await {
            Ok(s) => s,
            Err(e) if e.kind == StorageErrorKind::PreconditionFailed => {
                let (bytes, meta) = store.get(&key, None).await?;
                let current: Option<LeaseBody> = serde_json::from_slice(&bytes).ok();
                if current.is_none() {
                    tracing::warn!(policy, key = %key, "The lease object is not readable JSON; treating it as expired.");
                }
                match current {
                    Some(c)
                        if c.expires_at > now
                            && !c.process.as_ref().is_some_and(ProcessId::is_dead) =>
                    {
                        return Err(Error::Locked {
                            policy: policy.to_string(),
                            message: format!(
                                "{} is running `{}` there since {} (lease expires {}; it is renewed while that job runs)",
                                c.holder,
                                c.job,
                                c.acquired_at
                                    .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                                c.expires_at
                                    .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                            ),
                        });
                    }
                    _ => {
                        let etag = meta.etag.unwrap_or_default();
                        tracing::warn!(
                            policy,
                            "Taking over the lease of a job that expired or died."
                        );
                        store
                            .put(&key, encode(&body(now)), PutMode::IfMatch(etag))
                            .await
                            .map_err(|e| {
                                if e.kind == StorageErrorKind::PreconditionFailed {
                                    Error::Locked {
                                        policy: policy.to_string(),
                                        message: "another job took the expired lease first".into(),
                                    }
                                } else {
                                    e.into()
                                }
                            })?
                    }
                }
            }
            Err(e) => return Err(e.into()),
        };
        let etag = Arc::new(tokio::sync::Mutex::new(stored.etag));
        let (lost_tx, lost) = watch::channel(false);
        let renewer = {
            let (store, key, etag, job, policy) = (
                store.clone(),
                key.clone(),
                etag.clone(),
                job.to_string(),
                policy.to_string(),
            );
            let acquired_at = now;
            tokio::spawn(async move {
                let every = StdDuration::from_millis((ttl.num_milliseconds() / 3).max(500) as u64);
                loop {
                    tokio::time::sleep(every).await;
                    let mut guard = etag.lock().await;
                    let next = LeaseBody {
                        holder: holder(),
                        job: job.clone(),
                        acquired_at,
                        expires_at: Utc::now() + ttl,
                        process: ProcessId::current(),
                    };
                    let mode = PutMode::IfMatch(guard.clone().unwrap_or_default());
                    match store.put(&key, encode(&next), mode).await {
                        Ok(s) => *guard = s.etag,
                        Err(e) => {
                            tracing::error!(policy = %policy, error = %e, "Could not renew the lease; stopping the job.");
                            let _ = lost_tx.send(true);
                            return;
                        }
                    }
                }
            })
        };
        Ok(Lease {
            store,
            key,
            etag,
            renewer,
            lost,
        })
    }

    /// Resolves if the lease could not be renewed: the job must stop.
    pub fn lost_signal(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut rx = self.lost.clone();
        async move {
            let _ = rx.wait_for(|lost| *lost).await;
        }
    }

    /// Stops renewing and removes the lease object.
    pub async fn release(self) {
        self.renewer.abort();
        let _ = self.etag.lock().await;
        if let Err(e) = self.store.delete(&self.key).await {
            tracing::warn!(key = %self.key, error = %e, "Could not remove the lease; it expires by itself.");
        }
    }
}
