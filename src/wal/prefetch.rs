//! Prefetch for `wal-fetch`: segments downloaded ahead of recovery, so that
//! replay is not one repository round trip and one decryption per segment.
//!
//! ```text
//! <dir>/<segment>-<sha256>              downloaded ahead, checked against its key
//! <dir>/.<segment>.fetched.drctl-partial  being downloaded
//! <dir>/wanted                          the newest segment PostgreSQL was given
//! <dir>/.lock                           flock: held by the one worker
//! ```
//!
//! PostgreSQL runs `restore_command` once per file and replays in between,
//! so prefetch cannot live inside one call without delaying the segment
//! that call was asked for. Each call therefore hands over its own segment
//! first, then records it in `wanted` and, when no worker runs, starts one
//! as a detached process (`drctl wal-prefetch POLICY`, as pgBackRest's
//! asynchronous archive-get does). The worker keeps the next
//! `[wal] prefetch` archived segments of the same timeline in the
//! directory, following `wanted` as replay moves on, removes what replay
//! has passed, and exits (removing what is left) once no call has come for
//! [`IDLE_EXIT`].
//!
//! The directory is only a cache: a segment is handed to PostgreSQL from
//! it only after its bytes hash to the digest its key carries, otherwise it
//! is deleted and the call reads the archive as without prefetch. "Not
//! archived" (exit 1) is only ever the repository's answer, never the
//! directory's.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use futures::StreamExt;
use sha2::{Digest, Sha256};

use super::{WalKind, WalName};
use crate::error::{Error, Result};
use crate::repo::Repo;

/// Downloads the worker runs at once. Two keep a slow link busy while
/// bounding the worker's memory (each holds a decryption pipeline).
pub const PARALLEL_DOWNLOADS: usize = 2;

/// A worker with nothing asked of it for this long exits and removes what
/// it fetched: recovery ended, or was abandoned.
pub const IDLE_EXIT: Duration = Duration::from_secs(15);

/// How often the worker looks for a new `wanted`.
const POLL: Duration = Duration::from_millis(50);

/// Files older than this were left by a worker that was killed.
const STALE: Duration = Duration::from_secs(3600);

/// How long a call waits for the worker to finish the segment it asks
/// for, as long as the download is still writing.
const IN_PROGRESS_STALL: Duration = Duration::from_secs(10);

const WANTED: &str = "wanted";
const LOCK: &str = ".lock";
const READ_BYTES: usize = 256 * 1024;

/// The prefetch directory of one policy.
#[derive(Debug, Clone)]
pub struct Prefetch {
    dir: PathBuf,
    /// Segments to keep ahead.
    count: usize,
}

/// A prefetched segment handed to PostgreSQL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Taken {
    pub bytes: u64,
}

impl Prefetch {
    /// `dir` is the policy's own directory; `count` 0 means off.
    pub fn new(dir: PathBuf, count: usize) -> Prefetch {
        Prefetch { dir, count }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn enabled(&self) -> bool {
        self.count > 0
    }

    fn final_name(name: &WalName, sha256: &str) -> String {
        format!("{}-{sha256}", name.name)
    }

    /// `(name, sha256)` of a finished prefetched file's name.
    fn parse_final(file: &str) -> Option<(WalName, String)> {
        let (name, sha) = file.rsplit_once('-')?;
        let name = WalName::parse(name).ok()?;
        (name.kind == WalKind::Segment
            && sha.len() == 64
            && sha.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| (name, sha.to_string()))
    }

    fn in_progress_path(&self, name: &WalName) -> PathBuf {
        super::fetch::partial_path(&self.dir.join(format!("{}.fetched", name.name)))
    }

    /// Finished prefetched files: file name, WAL name, digest.
    fn finished(&self) -> Vec<(String, WalName, String)> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut out: Vec<_> = entries
            .flatten()
            .filter_map(|e| {
                let file = e.file_name().to_str()?.to_string();
                let (name, sha) = Self::parse_final(&file)?;
                Some((file, name, sha))
            })
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// Hands the prefetched `name` to `dest` if it is there and intact:
    /// copied into a temporary file beside `dest` while hashing, synced,
    /// compared with the digest from its key, then renamed over `dest`. A
    /// file that does not match is deleted and `None` returned, so that the
    /// caller reads the archive instead.
    ///
    /// # Errors
    /// I/O errors writing `dest`'s directory (those are PostgreSQL's to
    /// see); problems with the prefetch directory are `None`.
    pub fn take(&self, name: &WalName, dest: &Path) -> Result<Option<Taken>> {
        if !self.enabled() || name.kind != WalKind::Segment {
            return Ok(None);
        }
        self.wait_in_progress(name);
        let Some((file, _, sha)) = self.finished().into_iter().find(|(_, n, _)| n == name) else {
            return Ok(None);
        };
        let from = self.dir.join(&file);
        let partial = super::fetch::partial_path(dest);
        let copied = copy_hashing(&from, &partial);
        let (digest, bytes) = match copied {
            Ok(c) => c,
            Err(CopyError::Source(e)) => {
                tracing::warn!(file = %from.display(), error = %e, "A prefetched WAL file could not be read; fetching it from the archive.");
                let _ = std::fs::remove_file(&partial);
                let _ = std::fs::remove_file(&from);
                return Ok(None);
            }
            Err(CopyError::Dest(e)) => {
                let _ = std::fs::remove_file(&partial);
                return Err(Error::io(format!("writing {}", partial.display()), e));
            }
        };
        if digest != sha {
            tracing::warn!(
                file = %from.display(),
                "A prefetched WAL file does not match the sha256 of its archived object (changed or truncated on disk); it was deleted and the archived copy is fetched instead."
            );
            let _ = std::fs::remove_file(&partial);
            let _ = std::fs::remove_file(&from);
            return Ok(None);
        }
        std::fs::rename(&partial, dest).map_err(|e| {
            Error::io(
                format!("renaming {} to {}", partial.display(), dest.display()),
                e,
            )
        })?;
        let _ = std::fs::remove_file(&from);
        Ok(Some(Taken { bytes }))
    }

    /// Waits while the worker is still writing `name`: fetching it again
    /// beside the worker would only double the traffic.
    fn wait_in_progress(&self, name: &WalName) {
        let partial = self.in_progress_path(name);
        loop {
            let Ok(meta) = std::fs::metadata(&partial) else {
                return;
            };
            let quiet = meta
                .modified()
                .ok()
                .and_then(|m| SystemTime::now().duration_since(m).ok())
                .unwrap_or_default();
            if quiet > IN_PROGRESS_STALL {
                return;
            }
            std::thread::sleep(POLL);
        }
    }

    /// After PostgreSQL was given `name`: records it as the newest wanted
    /// segment and calls `spawn` to start a worker unless one runs. Errors
    /// are logged, never returned: the segment was handed over already,
    /// and prefetch is only an optimisation.
    pub fn request(&self, name: &WalName, spawn: impl FnOnce() -> std::io::Result<()>) {
        if !self.enabled() || name.kind != WalKind::Segment {
            return;
        }
        let result = (|| -> std::io::Result<()> {
            super::spool::create_private_dir(&self.dir)?;
            crate::storage::local::sweep_stale(&self.dir, STALE);
            let tmp = self.dir.join(format!(".{WANTED}.{}", std::process::id()));
            std::fs::write(&tmp, &name.name)?;
            std::fs::rename(&tmp, self.dir.join(WANTED))?;
            if self.worker_running()? {
                return Ok(());
            }
            spawn()
        })();
        if let Err(e) = result {
            tracing::warn!(dir = %self.dir.display(), error = %e, "WAL prefetch is not running; each segment is fetched when PostgreSQL asks for it. Set `[wal] prefetch_dir` to a directory the PostgreSQL server's OS user can write, or `prefetch = 0`.");
        }
    }

    /// Whether a worker holds the lock. Probing takes the lock for an
    /// instant; a worker starting in that instant exits, and the next call
    /// starts another.
    fn worker_running(&self) -> std::io::Result<bool> {
        Ok(self.lock()?.is_none())
    }

    fn lock(&self) -> std::io::Result<Option<File>> {
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(self.dir.join(LOCK))?;
        // SAFETY: flock on a descriptor we own; released when it closes.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            return Ok(Some(file));
        }
        let e = std::io::Error::last_os_error();
        if e.kind() == std::io::ErrorKind::WouldBlock {
            return Ok(None);
        }
        Err(e)
    }

    fn wanted(&self) -> Option<WalName> {
        let text = std::fs::read_to_string(self.dir.join(WANTED)).ok()?;
        WalName::parse(text.trim())
            .ok()
            .filter(|n| n.kind == WalKind::Segment)
    }

    /// Removes finished files not in `keep`, and partial downloads of
    /// names not in `keep`.
    fn remove_except(&self, keep: &[WalName]) {
        for (file, name, _) in self.finished() {
            if !keep.contains(&name) {
                let _ = std::fs::remove_file(self.dir.join(file));
            }
        }
    }

    /// Removes every prefetched file: recovery is over.
    fn clear(&self) {
        self.remove_except(&[]);
        let _ = std::fs::remove_file(self.dir.join(WANTED));
    }

    /// The worker: keeps the next segments after `wanted` in the
    /// directory until no call has come for [`IDLE_EXIT`]. Returns at once
    /// when another worker holds the lock.
    ///
    /// # Errors
    /// Only for a directory it cannot use; download failures are logged
    /// and left for PostgreSQL's own call.
    pub async fn run_worker(
        &self,
        repo: &Repo,
        identities: &[age::x25519::Identity],
        policy: &str,
    ) -> Result<()> {
        super::spool::create_private_dir(&self.dir)
            .map_err(|e| Error::io(format!("creating {}", self.dir.display()), e))?;
        let Some(_lock) = self
            .lock()
            .map_err(|e| Error::io(format!("locking {}", self.dir.display()), e))?
        else {
            return Ok(());
        };
        let mut planned_for: Option<WalName> = None;
        let mut idle_since = std::time::Instant::now();
        loop {
            let wanted = self.wanted();
            if wanted.is_some() && wanted != planned_for {
                let now = wanted.clone().expect("checked");
                self.fill(repo, identities, policy, &now).await;
                planned_for = Some(now);
                idle_since = std::time::Instant::now();
                continue;
            }
            if idle_since.elapsed() >= IDLE_EXIT {
                self.clear();
                return Ok(());
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// One pass: plans the segments after `wanted`, removes what is not
    /// in the plan, and downloads what is missing, nearest first.
    async fn fill(
        &self,
        repo: &Repo,
        identities: &[age::x25519::Identity],
        policy: &str,
        wanted: &WalName,
    ) {
        let plan = match next_archived(repo, policy, wanted, self.count).await {
            Ok(plan) => plan,
            Err(e) => {
                tracing::warn!(policy, error = %e, "WAL prefetch could not list the archive.");
                return;
            }
        };
        let names: Vec<WalName> = plan.iter().map(|(n, _)| n.clone()).collect();
        self.remove_except(&names);
        let have: Vec<WalName> = self.finished().into_iter().map(|(_, n, _)| n).collect();
        let missing: Vec<(WalName, String)> = plan
            .into_iter()
            .filter(|(n, _)| !have.contains(n))
            .collect();
        futures::stream::iter(missing)
            .for_each_concurrent(PARALLEL_DOWNLOADS, |(name, key)| async move {
                // Replay may have passed it while others downloaded.
                if self.wanted().is_some_and(|w| w.timeline == name.timeline && w.name >= name.name) {
                    return;
                }
                let staging = self.dir.join(format!("{}.fetched", name.name));
                match super::fetch::fetch_key(repo, identities, policy, &key, &staging).await {
                    Ok(_) => {
                        let sha = super::parse_key(policy, &key).map(|(_, s)| s.to_string());
                        let done = sha
                            .map(|s| self.dir.join(Self::final_name(&name, &s)))
                            .ok_or_else(|| std::io::Error::other("not a WAL key"))
                            .and_then(|d| std::fs::rename(&staging, d));
                        match done {
                            Ok(()) => tracing::info!(segment = %name, "Fetched a WAL segment ahead of recovery."),
                            Err(e) => {
                                let _ = std::fs::remove_file(&staging);
                                tracing::warn!(segment = %name, error = %e, "WAL prefetch could not keep a segment.");
                            }
                        }
                    }
                    Err(e) => {
                        tracing::warn!(segment = %name, error = %e, "WAL prefetch could not fetch a segment; PostgreSQL's own call will.")
                    }
                }
            })
            .await;
    }
}

/// The next `count` archived segments after `after` on its timeline, with
/// their keys, in order. Names archived with two contents are left out:
/// PostgreSQL's own call reports them. Lists at most two prefixes of one
/// "log" each (256 segments of 16 MiB), not the whole timeline.
async fn next_archived(
    repo: &Repo,
    policy: &str,
    after: &WalName,
    count: usize,
) -> Result<Vec<(WalName, String)>> {
    let tli_prefix = format!("{}{:08X}/", super::policy_prefix(policy), after.timeline);
    let log = u32::from_str_radix(&after.name[8..16], 16).expect("a checked segment name");
    let mut found: Vec<(WalName, String)> = Vec::new();
    for log in [Some(log), log.checked_add(1)].into_iter().flatten() {
        if found.len() >= count {
            break;
        }
        let prefix = format!("{tli_prefix}{:08X}{log:08X}", after.timeline);
        let mut keys: Vec<(WalName, String)> = repo
            .store
            .list(&prefix)
            .await?
            .into_iter()
            .filter_map(|o| {
                let (name, _) = super::parse_key(policy, &o.key)?;
                (name.kind == WalKind::Segment && name.name > after.name).then_some((name, o.key))
            })
            .collect();
        keys.sort_by(|a, b| a.1.cmp(&b.1));
        let mut i = 0;
        while i < keys.len() {
            let j = (i..keys.len())
                .find(|&j| keys[j].0 != keys[i].0)
                .unwrap_or(keys.len());
            if j - i == 1 {
                found.push(keys[i].clone());
            }
            i = j;
        }
    }
    found.truncate(count);
    Ok(found)
}

enum CopyError {
    Source(std::io::Error),
    Dest(std::io::Error),
}

/// Copies `from` to a new `to`, synced, and returns the SHA-256 (lowercase
/// hex) and size of what was copied.
fn copy_hashing(from: &Path, to: &Path) -> std::result::Result<(String, u64), CopyError> {
    let mut src = File::open(from).map_err(CopyError::Source)?;
    let mut dst = File::options()
        .write(true)
        .create(true)
        .truncate(true)
        .open(to)
        .map_err(CopyError::Dest)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; READ_BYTES];
    let mut size = 0u64;
    loop {
        let n = src.read(&mut buf).map_err(CopyError::Source)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        dst.write_all(&buf[..n]).map_err(CopyError::Dest)?;
        size += n as u64;
    }
    dst.sync_all().map_err(CopyError::Dest)?;
    Ok((hex::encode(hasher.finalize()), size))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> WalName {
        WalName::parse(s).unwrap()
    }

    #[test]
    fn only_finished_segment_files_count() {
        let sha = "ab".repeat(32);
        assert_eq!(
            Prefetch::parse_final(&format!("000000010000000000000003-{sha}")),
            Some((name("000000010000000000000003"), sha.clone()))
        );
        for other in [
            "wanted".to_string(),
            ".lock".to_string(),
            ".000000010000000000000003.fetched.drctl-partial".to_string(),
            format!("00000002.history-{sha}"),
            "000000010000000000000003-short".to_string(),
        ] {
            assert_eq!(Prefetch::parse_final(&other), None, "{other}");
        }
    }

    #[test]
    fn a_tampered_or_truncated_file_is_deleted_and_not_handed_over() {
        let dir = tempfile::tempdir().unwrap();
        let p = Prefetch::new(dir.path().join("pf"), 4);
        std::fs::create_dir_all(p.dir()).unwrap();
        let seg = name("000000010000000000000007");
        let data = vec![7u8; 100_000];
        let sha = hex::encode(Sha256::digest(&data));
        let file = p.dir().join(Prefetch::final_name(&seg, &sha));
        let dest = dir.path().join("RECOVERYXLOG");

        std::fs::write(&file, &data[..50_000]).unwrap();
        assert_eq!(p.take(&seg, &dest).unwrap(), None);
        assert!(!file.exists() && !dest.exists());

        let mut changed = data.clone();
        changed[10] ^= 1;
        std::fs::write(&file, &changed).unwrap();
        assert_eq!(p.take(&seg, &dest).unwrap(), None);
        assert!(!file.exists() && !dest.exists());

        std::fs::write(&file, &data).unwrap();
        assert_eq!(
            p.take(&name("000000010000000000000008"), &dest).unwrap(),
            None
        );
        assert_eq!(
            p.take(&seg, &dest).unwrap(),
            Some(Taken {
                bytes: data.len() as u64
            })
        );
        assert_eq!(std::fs::read(&dest).unwrap(), data);
        assert!(!file.exists(), "a handed-over file is removed");
        let leftovers: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(leftovers.len(), 2, "{leftovers:?}");
    }

    #[test]
    fn off_means_never_looked_at() {
        let dir = tempfile::tempdir().unwrap();
        let p = Prefetch::new(dir.path().to_path_buf(), 0);
        let seg = name("000000010000000000000007");
        std::fs::write(
            dir.path().join(Prefetch::final_name(&seg, &"0".repeat(64))),
            b"x",
        )
        .unwrap();
        assert_eq!(p.take(&seg, &dir.path().join("d")).unwrap(), None);
        let mut spawned = false;
        p.request(&seg, || {
            spawned = true;
            Ok(())
        });
        assert!(!spawned);
    }
}
