//! One job per policy at a time, across hosts: a lease object at
//! `locks/<policy>` created with a conditional write, renewed while the job
//! runs, and taken over only once it has expired.
//!
//! The same machinery writes holds: a restore or drill reading a backup puts
//! `locks/<policy>@holds/<backup-id>.<unique>` (many may exist at once, one
//! per reader), renews it while it reads, and removes it when done. Prune
//! keeps every backup with a live hold; an expired one is ignored.

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
    /// For a hold: the backup it keeps from being pruned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup_id: Option<String>,
}

impl LeaseBody {
    /// The host part of `holder` (`host:pid`).
    pub fn host(&self) -> &str {
        self.holder
            .rsplit_once(':')
            .map_or(self.holder.as_str(), |(h, _)| h)
    }

    /// Whether this lease or hold still counts at `now`: not expired, and
    /// its process not known to be dead.
    pub fn is_live(&self, now: DateTime<Utc>) -> bool {
        self.expires_at > now && !self.process.as_ref().is_some_and(ProcessId::is_dead)
    }
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

/// Times [`Lease::acquire`] starts over when the lease vanishes or changes
/// between its steps; more means other jobs keep taking it.
pub const ACQUIRE_ATTEMPTS: usize = 3;

/// How one attempt to take a lease ended, short of an error.
enum Attempt {
    /// Written; the ETag to renew it with.
    Taken(Option<String>),
    /// Released or replaced between this attempt's steps: try again.
    Changed,
}

/// One attempt to write `mine` as the lease at `key`.
///
/// # Errors
/// `Locked` when a live job holds it or took it over first; storage errors.
async fn try_acquire(
    store: &dyn Store,
    policy: &str,
    key: &str,
    mine: &LeaseBody,
    now: DateTime<Utc>,
) -> Result<Attempt> {
    match store.put(key, encode(mine), PutMode::Create).await {
        Ok(stored) => return Ok(Attempt::Taken(stored.etag)),
        Err(e) if e.kind == StorageErrorKind::PreconditionFailed => {}
        Err(e) => return Err(e.into()),
    }
    let (bytes, meta) = match store.get(key, None).await {
        Ok(found) => found,
        // Released by its holder after our create was refused.
        Err(e) if e.is_not_found() => {
            tracing::info!(
                event = "lease_retry",
                policy,
                key,
                "The lease was released while this job tried to take it; trying again."
            );
            return Ok(Attempt::Changed);
        }
        Err(e) => return Err(e.into()),
    };
    let current: Option<LeaseBody> = serde_json::from_slice(&bytes).ok();
    match current {
        Some(c) if c.is_live(now) => Err(Error::Locked {
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
        }),
        _ => {
            if current.is_none() {
                tracing::warn!(
                    event = "lease_unreadable",
                    policy,
                    key,
                    "The lease object is not readable JSON; treating it as expired."
                );
            }
            let etag = meta.etag.unwrap_or_default();
            tracing::warn!(
                event = "lease_taken_over",
                policy,
                "Taking over the lease of a job that expired or died."
            );
            match store.put(key, encode(mine), PutMode::IfMatch(etag)).await {
                Ok(stored) => Ok(Attempt::Taken(stored.etag)),
                Err(e) if e.kind == StorageErrorKind::PreconditionFailed => Err(Error::Locked {
                    policy: policy.to_string(),
                    message: format!("another job took over the expired lease `{key}` first"),
                }),
                // Released between the read and the takeover.
                Err(e) if e.is_not_found() => Ok(Attempt::Changed),
                Err(e) => Err(e.into()),
            }
        }
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

fn encode(b: &LeaseBody) -> Bytes {
    Bytes::from(serde_json::to_vec_pretty(b).expect("lease serialises"))
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
    /// A lease that another job releases or takes over while this one looks
    /// at it is another job's doing, not a failure: the attempt starts over,
    /// and after [`ACQUIRE_ATTEMPTS`] such changes the policy counts as busy.
    ///
    /// # Errors
    /// `Locked` when another live job holds it or the lease keeps changing
    /// hands; storage errors.
    pub async fn acquire(store: Arc<dyn Store>, policy: &str, job: &str) -> Result<Lease> {
        let key = lock_key(policy);
        let ttl = ttl();
        let body = |now: DateTime<Utc>| LeaseBody {
            holder: holder(),
            job: job.to_string(),
            acquired_at: now,
            expires_at: now + ttl,
            process: ProcessId::current(),
            backup_id: None,
        };
        for _ in 0..ACQUIRE_ATTEMPTS {
            let now = Utc::now();
            let mine = body(now);
            if let Attempt::Taken(etag) =
                try_acquire(store.as_ref(), policy, &key, &mine, now).await?
            {
                return Ok(Lease::renewed(store, key, etag, mine, ttl, policy));
            }
        }
        Err(Error::Locked {
            policy: policy.to_string(),
            message: format!(
                "the lease `{key}` changed hands {ACQUIRE_ATTEMPTS} times while this job tried to take it; other jobs are starting and ending there"
            ),
        })
    }

    /// Holds `backup_id` of `policy` for `job` (a restore or a drill) until
    /// released, so that prune keeps it. Any number of holds may exist.
    ///
    /// # Errors
    /// Storage errors writing the hold.
    pub async fn hold(
        store: Arc<dyn Store>,
        policy: &str,
        backup_id: &str,
        job: &str,
    ) -> Result<Lease> {
        let key = format!(
            "{}{backup_id}.{:016x}",
            super::holds_prefix(policy),
            rand::random::<u64>()
        );
        let ttl = ttl();
        let now = Utc::now();
        let body = LeaseBody {
            holder: holder(),
            job: job.to_string(),
            acquired_at: now,
            expires_at: now + ttl,
            process: ProcessId::current(),
            backup_id: Some(backup_id.to_string()),
        };
        let stored = store.put(&key, encode(&body), PutMode::Create).await?;
        Ok(Lease::renewed(store, key, stored.etag, body, ttl, policy))
    }

    /// Starts renewing a lease or hold just written with `etag`.
    fn renewed(
        store: Arc<dyn Store>,
        key: String,
        etag: Option<String>,
        body: LeaseBody,
        ttl: Duration,
        policy: &str,
    ) -> Lease {
        let etag = Arc::new(tokio::sync::Mutex::new(etag));
        let (lost_tx, lost) = watch::channel(false);
        let renewer = {
            let (store, key, etag, policy) =
                (store.clone(), key.clone(), etag.clone(), policy.to_string());
            tokio::spawn(async move {
                let every = StdDuration::from_millis((ttl.num_milliseconds() / 3).max(500) as u64);
                loop {
                    tokio::time::sleep(every).await;
                    let mut guard = etag.lock().await;
                    let next = LeaseBody {
                        expires_at: Utc::now() + ttl,
                        ..body.clone()
                    };
                    let mode = PutMode::IfMatch(guard.clone().unwrap_or_default());
                    match store.put(&key, encode(&next), mode).await {
                        Ok(s) => *guard = s.etag,
                        Err(e) => {
                            tracing::error!(event = "lease_renew_failed", policy = %policy, key = %key, error = %e, "Could not renew the lease; stopping the job.");
                            let _ = lost_tx.send(true);
                            return;
                        }
                    }
                }
            })
        };
        Lease {
            store,
            key,
            etag,
            renewer,
            lost,
        }
    }

    /// Resolves if the lease could not be renewed: the job must stop.
    pub fn lost_signal(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut rx = self.lost.clone();
        async move {
            let _ = rx.wait_for(|lost| *lost).await;
        }
    }

    /// Stops renewing and removes the lease object, if it is still ours.
    ///
    /// A lease that could not be renewed may have been taken over by now;
    /// deleting it would free it for a third job while the second still
    /// runs. So a lost lease is left alone, and otherwise the object is
    /// deleted only if its ETag is still the one this holder wrote. (Plain
    /// S3 has no conditional delete: a takeover in the moment between the
    /// HEAD and the DELETE is possible, but needs the lease to have expired
    /// while this holder was still renewing it.)
    pub async fn release(self) {
        self.renewer.abort();
        let ours = self.etag.lock().await.clone();
        if *self.lost.borrow() {
            tracing::warn!(event = "lease_lost", key = %self.key, "The lease was lost; leaving it to whoever holds it now.");
            return;
        }
        match self.store.head(&self.key, None).await {
            // A store that gives no ETag on HEAD (a local directory) cannot
            // tell; the lease is then deleted as before.
            Ok(meta) if ours.is_some() && meta.etag.is_some() && meta.etag != ours => {
                tracing::warn!(event = "lease_taken_by_other", key = %self.key, "The lease was taken over by another job; leaving it.");
                return;
            }
            Err(e) if e.is_not_found() => return,
            _ => {}
        }
        if let Err(e) = self.store.delete(&self.key).await {
            tracing::warn!(event = "lease_not_released", key = %self.key, error = %e, "Could not remove the lease; it expires by itself.");
        }
    }
}

/// A live hold on a backup, as prune sees it.
#[derive(Debug, Clone)]
pub struct Hold {
    pub key: String,
    pub backup_id: String,
    pub body: Option<LeaseBody>,
}

impl Hold {
    /// `held by restore on db1`, for plans and reports.
    pub fn describe(&self) -> String {
        match &self.body {
            Some(b) => format!("held by {} on {}", b.job, b.host()),
            None => format!(
                "held ({} is unreadable; it counts until it is older than the lease time)",
                self.key
            ),
        }
    }
}

/// The live holds on `policy`'s backups at `now`. A hold that is not
/// readable JSON still counts until its object is older than a lease lasts:
/// doubt keeps the backup.
///
/// # Errors
/// Storage errors from listing or reading.
pub async fn list_holds(store: &dyn Store, policy: &str, now: DateTime<Utc>) -> Result<Vec<Hold>> {
    let prefix = super::holds_prefix(policy);
    let mut holds = Vec::new();
    for object in store.list(&prefix).await? {
        let name = &object.key[prefix.len()..];
        let Some((backup_id, _)) = name.rsplit_once('.') else {
            continue;
        };
        let bytes = match store.get(&object.key, None).await {
            Ok((bytes, _)) => bytes,
            // Released between the listing and now.
            Err(e) if e.is_not_found() => continue,
            Err(e) => return Err(e.into()),
        };
        match serde_json::from_slice::<LeaseBody>(&bytes) {
            Ok(body) if body.is_live(now) => holds.push(Hold {
                key: object.key.clone(),
                backup_id: body
                    .backup_id
                    .clone()
                    .unwrap_or_else(|| backup_id.to_string()),
                body: Some(body),
            }),
            Ok(_) => {}
            Err(_) => {
                if object.last_modified.is_none_or(|t| t + ttl() > now) {
                    holds.push(Hold {
                        key: object.key.clone(),
                        backup_id: backup_id.to_string(),
                        body: None,
                    });
                }
            }
        }
    }
    Ok(holds)
}

/// Deletes the holds whose jobs are gone (expired, or their process is known
/// dead on this host), as a job killed with SIGKILL leaves them; returns how
/// many. Prune calls it under the policy's lease.
///
/// # Errors
/// Storage errors of the listing; a hold that cannot be deleted is logged.
pub async fn remove_expired_holds(
    store: &dyn Store,
    policy: &str,
    now: DateTime<Utc>,
) -> Result<usize> {
    let prefix = super::holds_prefix(policy);
    let mut removed = 0;
    for object in store.list(&prefix).await? {
        let expired = match store.get(&object.key, None).await {
            Ok((bytes, _)) => match serde_json::from_slice::<LeaseBody>(&bytes) {
                Ok(body) => !body.is_live(now),
                // Unreadable: what list_holds stops honouring after a TTL.
                Err(_) => object.last_modified.is_some_and(|t| t + ttl() <= now),
            },
            Err(e) if e.is_not_found() => false,
            Err(e) => return Err(e.into()),
        };
        if !expired {
            continue;
        }
        match store.delete(&object.key).await {
            Ok(()) => removed += 1,
            Err(e) => {
                tracing::warn!(event = "hold_not_removed", key = %object.key, error = %e, "Could not remove an expired hold; it is ignored anyway.");
            }
        }
    }
    Ok(removed)
}

/// Takes a hold on a backup a restore or drill is about to read. A hold
/// that cannot be written (read-only credentials on a recovery host) does
/// not stop the job: it is logged, and the job runs unprotected from a
/// concurrent prune.
pub async fn hold_backup(
    repo: &super::Repo,
    policy: &str,
    backup_id: &str,
    job: &str,
) -> Option<Lease> {
    match Lease::hold(repo.store.clone(), policy, backup_id, job).await {
        Ok(hold) => {
            // A prune may have deleted it between the listing and the hold.
            if let Err(e) = repo
                .store
                .head(&super::manifest_key(policy, backup_id), None)
                .await
                && e.is_not_found()
            {
                tracing::warn!(event = "hold_not_written", policy, backup = %backup_id, "The backup was pruned just now; reading it may fail.");
            }
            Some(hold)
        }
        Err(e) => {
            tracing::warn!(event = "hold_not_written", policy, backup = %backup_id, error = %e, "Could not write a hold on the backup; a prune running now could remove it.");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::StorageError;
    use crate::storage::local::LocalStore;
    use crate::storage::{ByteStream, ObjectMeta, ObjectVersion, Protection, Stored, Upload};
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A local directory where another daemon releases or takes the lease
    /// at the moments that race with `acquire`, deterministically.
    struct Racing {
        inner: LocalStore,
        /// Refused creates after which the other job releases the lease.
        release_after_refusal: AtomicUsize,
        /// After a read that found no lease, the other job takes it again.
        retake_after_miss: bool,
        /// Takeovers before which the other job releases the lease.
        release_before_takeover: AtomicUsize,
    }

    impl Racing {
        fn new(dir: &std::path::Path) -> Racing {
            Racing {
                inner: LocalStore::new(dir.to_path_buf()),
                release_after_refusal: AtomicUsize::new(0),
                retake_after_miss: false,
                release_before_takeover: AtomicUsize::new(0),
            }
        }
    }

    fn take_one(n: &AtomicUsize) -> bool {
        n.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
    }

    fn other_lease(expires_in: Duration) -> Bytes {
        let now = Utc::now();
        encode(&LeaseBody {
            holder: "db2:4242".into(),
            job: "backup".into(),
            acquired_at: now - Duration::minutes(1),
            expires_at: now + expires_in,
            process: None,
            backup_id: None,
        })
    }

    #[async_trait::async_trait]
    impl Store for Racing {
        fn location(&self) -> String {
            self.inner.location()
        }
        async fn put(
            &self,
            key: &str,
            body: Bytes,
            mode: PutMode,
        ) -> std::result::Result<Stored, StorageError> {
            if matches!(mode, PutMode::IfMatch(_)) && take_one(&self.release_before_takeover) {
                self.inner.delete(key).await?;
            }
            let create = mode == PutMode::Create;
            let result = self.inner.put(key, body, mode).await;
            if create
                && result
                    .as_ref()
                    .is_err_and(|e| e.kind == StorageErrorKind::PreconditionFailed)
                && take_one(&self.release_after_refusal)
            {
                self.inner.delete(key).await?;
            }
            result
        }
        async fn get(
            &self,
            key: &str,
            version: Option<&str>,
        ) -> std::result::Result<(Bytes, ObjectMeta), StorageError> {
            let result = self.inner.get(key, version).await;
            if self.retake_after_miss && result.as_ref().is_err_and(StorageError::is_not_found) {
                self.inner
                    .put(key, other_lease(Duration::minutes(5)), PutMode::Create)
                    .await?;
            }
            result
        }
        async fn get_stream(
            &self,
            key: &str,
            version: Option<&str>,
        ) -> std::result::Result<ByteStream, StorageError> {
            self.inner.get_stream(key, version).await
        }
        async fn get_head(
            &self,
            key: &str,
            version: Option<&str>,
            len: u64,
        ) -> std::result::Result<Bytes, StorageError> {
            self.inner.get_head(key, version, len).await
        }
        async fn replace_data(
            &self,
            key: &str,
            body: Bytes,
            etag: &str,
        ) -> std::result::Result<Stored, StorageError> {
            self.inner.replace_data(key, body, etag).await
        }
        async fn put_spliced(
            &self,
            key: &str,
            head: Bytes,
            source: &str,
            version: Option<&str>,
            from: u64,
        ) -> std::result::Result<crate::storage::Spliced, StorageError> {
            self.inner
                .put_spliced(key, head, source, version, from)
                .await
        }
        async fn head(
            &self,
            key: &str,
            version: Option<&str>,
        ) -> std::result::Result<ObjectMeta, StorageError> {
            self.inner.head(key, version).await
        }
        async fn list(&self, prefix: &str) -> std::result::Result<Vec<ObjectMeta>, StorageError> {
            self.inner.list(prefix).await
        }
        async fn delete(&self, key: &str) -> std::result::Result<(), StorageError> {
            self.inner.delete(key).await
        }
        async fn create_upload(
            &self,
            key: &str,
        ) -> std::result::Result<Box<dyn Upload>, StorageError> {
            self.inner.create_upload(key).await
        }
        async fn protection(&self) -> std::result::Result<Protection, StorageError> {
            self.inner.protection().await
        }
        async fn list_versions(
            &self,
            prefix: &str,
        ) -> std::result::Result<Vec<ObjectVersion>, StorageError> {
            self.inner.list_versions(prefix).await
        }
    }

    async fn holder_of(store: &dyn Store, policy: &str) -> String {
        let (bytes, _) = store.get(&lock_key(policy), None).await.unwrap();
        serde_json::from_slice::<LeaseBody>(&bytes).unwrap().holder
    }

    #[tokio::test]
    async fn a_lease_released_between_the_refused_create_and_the_read_is_taken() {
        let dir = tempfile::tempdir().unwrap();
        let racing = Racing::new(dir.path());
        racing.release_after_refusal.store(1, Ordering::SeqCst);
        let store: Arc<dyn Store> = Arc::new(racing);
        store
            .put(
                &lock_key("etc"),
                other_lease(Duration::minutes(5)),
                PutMode::Create,
            )
            .await
            .unwrap();
        let lease = Lease::acquire(store.clone(), "etc", "backup")
            .await
            .expect("a lease released by its holder is free, not an error");
        assert_eq!(holder_of(store.as_ref(), "etc").await, holder());
        lease.release().await;
    }

    #[tokio::test]
    async fn a_lease_released_before_the_takeover_is_taken() {
        let dir = tempfile::tempdir().unwrap();
        let racing = Racing::new(dir.path());
        racing.release_before_takeover.store(1, Ordering::SeqCst);
        let store: Arc<dyn Store> = Arc::new(racing);
        store
            .put(
                &lock_key("etc"),
                other_lease(-Duration::minutes(5)),
                PutMode::Create,
            )
            .await
            .unwrap();
        let lease = Lease::acquire(store.clone(), "etc", "backup")
            .await
            .expect("an expired lease released before the takeover is free");
        assert_eq!(holder_of(store.as_ref(), "etc").await, holder());
        lease.release().await;
    }

    #[tokio::test]
    async fn a_lease_that_keeps_changing_hands_means_busy_not_failed() {
        let dir = tempfile::tempdir().unwrap();
        let mut racing = Racing::new(dir.path());
        racing
            .release_after_refusal
            .store(usize::MAX, Ordering::SeqCst);
        racing.retake_after_miss = true;
        let store: Arc<dyn Store> = Arc::new(racing);
        store
            .put(
                &lock_key("etc"),
                other_lease(Duration::minutes(5)),
                PutMode::Create,
            )
            .await
            .unwrap();
        match Lease::acquire(store.clone(), "etc", "backup").await {
            Err(Error::Locked { policy, message }) => {
                assert_eq!(policy, "etc");
                assert!(message.contains("changed hands"), "{message}");
                assert!(message.contains("locks/etc"), "{message}");
            }
            Err(e) => panic!("expected the policy to be busy, got {e}"),
            Ok(_) => panic!("expected the policy to be busy, got the lease"),
        }
        assert_eq!(holder_of(store.as_ref(), "etc").await, "db2:4242");
    }

    #[tokio::test]
    async fn holds_are_listed_while_held_and_gone_when_released() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(LocalStore::new(dir.path().to_path_buf()));
        let a = Lease::hold(store.clone(), "etc", "20261127T010000Z-aa", "restore")
            .await
            .unwrap();
        let b = Lease::hold(store.clone(), "etc", "20261127T010000Z-aa", "drill")
            .await
            .unwrap();
        // Another policy's holds and its lease are not this policy's.
        let other = Lease::hold(store.clone(), "etc2", "20261127T010000Z-bb", "restore")
            .await
            .unwrap();
        let lease = Lease::acquire(store.clone(), "etc", "backup")
            .await
            .unwrap();
        let now = Utc::now();
        let holds = list_holds(store.as_ref(), "etc", now).await.unwrap();
        assert_eq!(holds.len(), 2);
        assert!(holds.iter().all(|h| h.backup_id == "20261127T010000Z-aa"));
        let host = gethostname::gethostname().to_string_lossy().into_owned();
        let mut described: Vec<String> = holds.iter().map(Hold::describe).collect();
        described.sort();
        assert_eq!(
            described,
            [
                format!("held by drill on {host}"),
                format!("held by restore on {host}")
            ]
        );
        // Expired by the time prune looks: ignored.
        let later = now + Duration::seconds(DEFAULT_TTL_SECONDS + 60);
        assert!(
            list_holds(store.as_ref(), "etc", later)
                .await
                .unwrap()
                .is_empty()
        );
        a.release().await;
        b.release().await;
        other.release().await;
        lease.release().await;
        assert!(
            list_holds(store.as_ref(), "etc", Utc::now())
                .await
                .unwrap()
                .is_empty()
        );
    }

    #[tokio::test]
    async fn an_unreadable_hold_counts_until_it_is_older_than_a_lease() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(LocalStore::new(dir.path().to_path_buf()));
        store
            .put(
                "locks/etc@holds/20261127T010000Z-aa.1",
                Bytes::from_static(b"garbage"),
                PutMode::Create,
            )
            .await
            .unwrap();
        let holds = list_holds(store.as_ref(), "etc", Utc::now()).await.unwrap();
        assert_eq!(holds.len(), 1);
        assert_eq!(holds[0].backup_id, "20261127T010000Z-aa");
        assert!(holds[0].describe().contains("unreadable"));
        let later = Utc::now() + Duration::seconds(DEFAULT_TTL_SECONDS + 60);
        assert!(
            list_holds(store.as_ref(), "etc", later)
                .await
                .unwrap()
                .is_empty()
        );
    }
}
