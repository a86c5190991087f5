//! The local spool: where `wal-push` leaves a sealed WAL file when the
//! repository does not answer, so that PostgreSQL can recycle the segment
//! and keep running, and where later calls pick it up again.
//!
//! ```text
//! <spool_dir>/<policy>/queue/<name>-<sha256>.zst.age   sealed, waiting to be stored
//! <spool_dir>/<policy>/tmp/<random>                     being sealed (never plaintext)
//! <spool_dir>/<policy>/done/<name>                      pushed ahead by look-ahead: its sha256
//! <spool_dir>/<policy>/.lock                            flock: limit check and publish
//! <spool_dir>/<policy>/.drain                           flock: one drain at a time
//! ```
//!
//! A queued file is byte for byte the object that would have been stored
//! (the same seal to the same recipients), and its name is the last part
//! of its key, so draining is a create-only upload to
//! `wal/<policy>/<TLI>/<file>`. Everything in `queue/` was reported
//! archived to PostgreSQL: nothing here deletes a queued file except a
//! drain that has seen it stored.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use super::{WalKind, WalName};
use crate::error::{Error, Result};
use crate::pipeline::Sealer;

const QUEUE: &str = "queue";
const TMP: &str = "tmp";
const DONE: &str = "done";
const LOCK: &str = ".lock";
const DRAIN_LOCK: &str = ".drain";
const OWNER: &str = "repository";
const SUFFIX: &str = ".zst.age";

/// Look-ahead markers kept at most; older ones go first. PostgreSQL
/// recycles a segment once its `wal-push` returns, so a marker outlives
/// its use only when that call never came (a crash, a promotion).
pub const MAX_MARKERS: usize = 256;

/// A temporary file this old was left by a `wal-push` that was killed
/// while sealing; a live one finishes a segment in seconds.
const STALE_TMP: std::time::Duration = std::time::Duration::from_secs(3600);

/// One sealed file waiting in the queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spooled {
    /// The file name in `queue/`: `<name>-<sha256>.zst.age`.
    pub file: String,
    pub name: WalName,
    pub sha256: String,
    pub size: u64,
}

impl Spooled {
    /// The repository key this file is stored under.
    pub fn key(&self, policy: &str) -> String {
        super::object_key(policy, &self.name, &self.sha256)
    }
}

/// The queue file name of `name` with plaintext digest `sha256`.
pub fn file_name(name: &WalName, sha256: &str) -> String {
    format!("{name}-{sha256}{SUFFIX}")
}

/// The WAL name and digest a queue file name stands for, if it is one.
pub fn parse_file_name(file: &str) -> Option<(WalName, String)> {
    let stem = file.strip_suffix(SUFFIX)?;
    let (name, sha) = stem.rsplit_once('-')?;
    let ok = sha.len() == 64
        && sha
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase());
    ok.then_some(())?;
    Some((WalName::parse(name).ok()?, sha.to_string()))
}

/// The order a drain stores queued files in: `.history` files first (a
/// restore onto a later timeline needs them before any segment of it),
/// then WAL order, which for PostgreSQL's names is name order: the timeline,
/// then the segment, with a `.backup` or `.partial` after its segment.
/// Storing in this order means an interrupted drain leaves the archive
/// without a gap before its newest stored segment.
pub fn drain_order(mut files: Vec<Spooled>) -> Vec<Spooled> {
    files.sort_by(|a, b| {
        let history = |s: &Spooled| s.name.kind != WalKind::History;
        (history(a), &a.name.name).cmp(&(history(b), &b.name.name))
    });
    files
}

/// Whether `adding` more bytes fit a spool holding `used` of `max`.
pub fn fits(used: u64, adding: u64, max: u64) -> bool {
    used.checked_add(adding).is_some_and(|total| total <= max)
}

/// Look-ahead markers to remove once PostgreSQL asks for `current`: every
/// marker for a name before it (PostgreSQL archives in order, so it has
/// already asked for those, or never will), and the oldest ones beyond
/// [`MAX_MARKERS`].
pub fn stale_markers(markers: &[String], current: &WalName) -> Vec<String> {
    let mut sorted: Vec<&String> = markers.iter().collect();
    sorted.sort();
    let (old, rest): (Vec<&String>, Vec<&String>) = sorted
        .into_iter()
        .partition(|m| m.as_str() < current.name.as_str() || m.as_str() == current.name);
    let over = rest.len().saturating_sub(MAX_MARKERS);
    old.into_iter()
        .chain(rest.into_iter().take(over))
        .cloned()
        .collect()
}

/// A spool this full raises an alert and fails the daemon's health check,
/// so that someone acts before `wal-push` starts failing and WAL piles up
/// on the database server.
pub const ALERT_FRACTION: f64 = 0.8;

/// Sealed WAL waiting in a policy's spool for the repository.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Usage {
    pub bytes: u64,
    pub segments: u64,
    pub max_bytes: u64,
    /// Why the spool could not be read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Usage {
    /// Whether the spool is past [`ALERT_FRACTION`] of its limit.
    pub fn filling(&self) -> bool {
        self.max_bytes > 0 && self.bytes as f64 >= self.max_bytes as f64 * ALERT_FRACTION
    }

    pub fn describe(&self) -> String {
        format!(
            "{} segment(s), {} of its {} limit (`[wal] spool_max_bytes`)",
            self.segments,
            crate::progress::bytes(self.bytes),
            crate::progress::bytes(self.max_bytes)
        )
    }
}

/// What waits in this host's spool of `policy`; `None` when `spool_dir`
/// does not exist here (drctl runs on another host than the server, or
/// nothing was ever spooled under this configuration).
pub fn usage(spool_dir: &Path, policy: &str, max_bytes: u64) -> Option<Usage> {
    if !spool_dir.is_dir() {
        return None;
    }
    Some(match Spool::new(spool_dir, policy, max_bytes).queued() {
        Ok(queued) => Usage {
            bytes: queued.iter().map(|s| s.size).sum(),
            segments: queued.len() as u64,
            max_bytes,
            error: None,
        },
        Err(e) => Usage {
            max_bytes,
            error: Some(e.to_string()),
            ..Usage::default()
        },
    })
}

/// A policy's spool directory.
pub struct Spool {
    dir: PathBuf,
    max_bytes: u64,
    /// The repository [`Spool::claim`] was called for: written beside the
    /// spool when it is first created.
    owner: Option<String>,
}

/// An exclusive `flock` held until dropped.
pub struct Locked {
    _file: File,
}

fn io(context: String) -> impl FnOnce(std::io::Error) -> Error {
    move |e| Error::io(context, e)
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(format!("syncing directory {}", dir.display())))
}

impl Spool {
    /// The spool of `policy` under `spool_dir`. Nothing is created until
    /// something is written.
    pub fn new(spool_dir: &Path, policy: &str, max_bytes: u64) -> Spool {
        Spool {
            dir: spool_dir.join(policy),
            max_bytes,
            owner: None,
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn not_ours(&self, owner: &str, location: &str) -> Error {
        Error::Usage(format!(
            "the WAL spool {} belongs to the repository {owner}, not to this configuration's \
             {location}; sharing it would count WAL stored in one repository as stored in the \
             other. Give each configuration its own `[wal] spool_dir`",
            self.dir.display()
        ))
    }

    /// Ties the spool to the repository at `location` (the first one to
    /// use it), and refuses any other: spooled files and look-ahead
    /// markers say "stored", not where, so a spool shared by two
    /// configurations with different repositories would drain one's WAL
    /// into the other and answer for segments the other never got.
    ///
    /// # Errors
    /// `Usage` for a spool that belongs to another repository; I/O errors.
    pub fn claim(&mut self, location: &str) -> Result<()> {
        self.owner = Some(location.to_string());
        let path = self.dir.join(OWNER);
        match std::fs::read_to_string(&path) {
            Ok(owner) if owner.trim() == location => Ok(()),
            Ok(owner) => Err(self.not_ours(owner.trim(), location)),
            // A spool that was never used needs nothing yet (and may not be
            // creatable until an outage makes it needed); one used before
            // this check existed is claimed now.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => match self.dir.is_dir() {
                true => self.write_owner(location),
                false => Ok(()),
            },
            // Not even the spool's directory can be reached (a file in its
            // path): nothing was spooled there, and nothing is until an
            // outage needs it, when creating it fails with the reason.
            Err(_) if !self.dir.exists() => Ok(()),
            Err(e) => Err(Error::io(format!("reading {}", path.display()), e)),
        }
    }

    pub fn max_bytes(&self) -> u64 {
        self.max_bytes
    }

    fn create(&self, sub: &str) -> Result<PathBuf> {
        let dir = self.dir.join(sub);
        create_private_dir(&dir).map_err(|e| {
            Error::io(
                format!(
                    "creating the WAL spool directory {} (set `[wal] spool_dir` in drctl.toml to a \
                     directory the PostgreSQL server's OS user can write)",
                    dir.display()
                ),
                e,
            )
        })?;
        if let Some(owner) = &self.owner {
            self.write_owner(owner)?;
        }
        Ok(dir)
    }

    fn write_owner(&self, location: &str) -> Result<()> {
        let path = self.dir.join(OWNER);
        if let Ok(owner) = std::fs::read_to_string(&path) {
            return match owner.trim() == location {
                true => Ok(()),
                false => Err(self.not_ours(owner.trim(), location)),
            };
        }
        let tmp = self
            .dir
            .join(format!(".{OWNER}.{:08x}", rand::random::<u32>()));
        std::fs::write(&tmp, format!("{location}\n"))
            .and_then(|()| std::fs::rename(&tmp, &path))
            .map_err(|e| {
                let _ = std::fs::remove_file(&tmp);
                Error::io(format!("writing {}", path.display()), e)
            })
    }

    fn flock(&self, name: &str, wait: bool) -> Result<Option<Locked>> {
        create_private_dir(&self.dir).map_err(io(format!(
            "creating the WAL spool directory {} (set `[wal] spool_dir` in drctl.toml)",
            self.dir.display()
        )))?;
        let path = self.dir.join(name);
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io(format!("opening {}", path.display())))?;
        let flags = libc::LOCK_EX | if wait { 0 } else { libc::LOCK_NB };
        // SAFETY: flock on a descriptor we own, kept open by `Locked`.
        if unsafe { libc::flock(file.as_raw_fd(), flags) } == 0 {
            return Ok(Some(Locked { _file: file }));
        }
        let e = std::io::Error::last_os_error();
        if !wait && e.kind() == std::io::ErrorKind::WouldBlock {
            return Ok(None);
        }
        Err(Error::io(format!("locking {}", path.display()), e))
    }

    /// Held by a drain; `None` when another process is draining already.
    pub fn try_lock_drain(&self) -> Result<Option<Locked>> {
        self.flock(DRAIN_LOCK, false)
    }

    /// What waits in the queue, in [`drain_order`]. Files that are not
    /// queue entries are left alone.
    pub fn queued(&self) -> Result<Vec<Spooled>> {
        let dir = self.dir.join(QUEUE);
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            // A spool whose directory cannot be reached (a file in its path)
            // never held anything: pushes the repository takes go on.
            Err(_) if !self.dir.exists() => return Ok(Vec::new()),
            Err(e) => return Err(Error::io(format!("listing {}", dir.display()), e)),
        };
        let mut files = Vec::new();
        for entry in entries {
            let entry = entry.map_err(io(format!("listing {}", dir.display())))?;
            let Some(file) = entry.file_name().to_str().map(str::to_string) else {
                continue;
            };
            let Some((name, sha256)) = parse_file_name(&file) else {
                continue;
            };
            let size = match entry.metadata() {
                Ok(m) => m.len(),
                // Drained by another process since the listing.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(Error::io(format!("reading {}", entry.path().display()), e)),
            };
            files.push(Spooled {
                file,
                name,
                sha256,
                size,
            });
        }
        Ok(drain_order(files))
    }

    /// The sealed bytes waiting in the queue.
    pub fn used(&self) -> Result<u64> {
        Ok(self.queued()?.iter().map(|s| s.size).sum())
    }

    pub fn path_of(&self, spooled: &Spooled) -> PathBuf {
        self.dir.join(QUEUE).join(&spooled.file)
    }

    /// Queued copies of `name`, whatever their content.
    pub fn find(&self, name: &WalName) -> Result<Vec<Spooled>> {
        Ok(self
            .queued()?
            .into_iter()
            .filter(|s| &s.name == name)
            .collect())
    }

    /// Seals the WAL file at `source` (plaintext digest `sha256`, as hashed
    /// by the caller) into the queue: into `tmp/`, synced, then under the
    /// lock checked against the limit, renamed into `queue/` and the
    /// directory synced. Returns the entry and the bytes queued now.
    ///
    /// # Errors
    /// `SpoolFull` when the sealed file does not fit (nothing is kept);
    /// `Integrity` when the file changed while it was read; I/O errors.
    pub fn seal(
        &self,
        source: &Path,
        name: &WalName,
        sha256: &str,
        recipients: &[age::x25519::Recipient],
        level: i32,
    ) -> Result<(Spooled, u64)> {
        {
            let _lock = self.flock(LOCK, true)?;
            let used = self.used()?;
            if !fits(used, 1, self.max_bytes) {
                return Err(self.full(name, used));
            }
        }
        let tmp_dir = self.create(TMP)?;
        let queue = self.create(QUEUE)?;
        crate::storage::local::sweep_stale(&tmp_dir, STALE_TMP);
        let tmp = tmp_dir.join(format!("{:016x}", rand::random::<u64>()));
        let sealed = (|| -> Result<u64> {
            let out = File::options()
                .write(true)
                .create_new(true)
                .open(&tmp)
                .map_err(io(format!("creating {}", tmp.display())))?;
            let mut sealer = Sealer::with_mode(
                recipients,
                level,
                crate::pipeline::SealMode::WAL,
                std::io::BufWriter::new(out),
            )
            .map_err(io("starting encryption".into()))?;
            let mut input =
                File::open(source).map_err(io(format!("opening {}", source.display())))?;
            std::io::copy(&mut input, &mut sealer).map_err(io(format!(
                "sealing {} into {}",
                source.display(),
                tmp.display()
            )))?;
            let (out, digests) = sealer.finish().map_err(io(format!(
                "sealing {} into {}",
                source.display(),
                tmp.display()
            )))?;
            if digests.plaintext_sha256 != sha256 {
                return Err(Error::Integrity {
                    object: source.display().to_string(),
                    reason: "the file changed while it was spooled; nothing was kept, and \
                             PostgreSQL will push it again"
                        .into(),
                });
            }
            let out = out
                .into_inner()
                .map_err(|e| Error::io(format!("writing {}", tmp.display()), e.into_error()))?;
            out.sync_all()
                .map_err(io(format!("syncing {}", tmp.display())))?;
            Ok(digests.size)
        })();
        let size = match sealed {
            Ok(size) => size,
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                return Err(e);
            }
        };
        let _lock = self.flock(LOCK, true)?;
        let used = self.used()?;
        if !fits(used, size, self.max_bytes) {
            let _ = std::fs::remove_file(&tmp);
            return Err(self.full(name, used));
        }
        let file = file_name(name, sha256);
        let dest = queue.join(&file);
        std::fs::rename(&tmp, &dest).map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            Error::io(
                format!("renaming {} to {}", tmp.display(), dest.display()),
                e,
            )
        })?;
        sync_dir(&queue)?;
        Ok((
            Spooled {
                file,
                name: name.clone(),
                sha256: sha256.to_string(),
                size,
            },
            used + size,
        ))
    }

    fn full(&self, name: &WalName, used: u64) -> Error {
        Error::SpoolFull(format!(
            "{name} was not archived: the repository did not take it and the WAL spool {} holds \
             {used} of its {} bytes (`[wal] spool_max_bytes`). PostgreSQL keeps the segment in \
             pg_wal and tries again. Make the repository reachable (`drctl wal drain POLICY` \
             then empties the spool), or raise `spool_max_bytes`",
            self.dir.display(),
            self.max_bytes
        ))
    }

    /// Removes a queued file once the repository holds it.
    pub fn remove(&self, spooled: &Spooled) -> Result<()> {
        let path = self.path_of(spooled);
        match std::fs::remove_file(&path) {
            Ok(()) => sync_dir(&self.dir.join(QUEUE)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io(format!("removing {}", path.display()), e)),
        }
    }

    /// Records that look-ahead stored `name` with digest `sha256`.
    ///
    /// # Errors
    /// I/O errors; callers may ignore them (a missing marker costs only a
    /// listing later).
    pub fn mark_done(&self, name: &WalName, sha256: &str) -> Result<()> {
        let dir = self.create(DONE)?;
        let tmp = dir.join(format!(".{name}.{:08x}", rand::random::<u32>()));
        let dest = dir.join(&name.name);
        std::fs::write(&tmp, sha256)
            .and_then(|()| std::fs::rename(&tmp, &dest))
            .map_err(|e| {
                let _ = std::fs::remove_file(&tmp);
                Error::io(format!("writing {}", dest.display()), e)
            })
    }

    /// The digest look-ahead stored `name` with, if it did.
    pub fn done(&self, name: &WalName) -> Option<String> {
        let sha = std::fs::read_to_string(self.dir.join(DONE).join(&name.name)).ok()?;
        let sha = sha.trim();
        // A torn write is no marker: the network answers instead.
        (sha.len() == 64 && sha.bytes().all(|b| b.is_ascii_hexdigit())).then(|| sha.to_string())
    }

    /// Names look-ahead has stored and PostgreSQL has not asked for yet.
    pub fn markers(&self) -> Vec<String> {
        std::fs::read_dir(self.dir.join(DONE))
            .map(|entries| {
                entries
                    .flatten()
                    .filter_map(|e| e.file_name().to_str().map(str::to_string))
                    .filter(|n| WalName::parse(n).is_ok())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Removes the markers [`stale_markers`] names, best effort.
    pub fn prune_markers(&self, current: &WalName) {
        for marker in stale_markers(&self.markers(), current) {
            let _ = std::fs::remove_file(self.dir.join(DONE).join(marker));
        }
    }
}

/// Creates a directory (and its missing parents) readable by its owner
/// only: the spool holds the only copy of WAL not yet stored, and although
/// it is ciphertext, nobody else has a reason to read, replace or delete it.
pub(super) fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spooled(name: &str) -> Spooled {
        Spooled {
            file: file_name(&WalName::parse(name).unwrap(), &"a".repeat(64)),
            name: WalName::parse(name).unwrap(),
            sha256: "a".repeat(64),
            size: 1,
        }
    }

    #[test]
    fn drain_order_is_history_first_then_wal_order() {
        let files = [
            "000000020000000000000001",
            "000000010000000000000010",
            "00000002.history",
            "000000010000000000000002",
            "000000010000000000000002.00000028.backup",
            "00000001000000000000000F",
            "000000010000000000000011.partial",
        ]
        .map(spooled)
        .to_vec();
        let order: Vec<String> = drain_order(files)
            .into_iter()
            .map(|s| s.name.name)
            .collect();
        assert_eq!(
            order,
            [
                "00000002.history",
                "000000010000000000000002",
                "000000010000000000000002.00000028.backup",
                "00000001000000000000000F",
                "000000010000000000000010",
                "000000010000000000000011.partial",
                "000000020000000000000001",
            ]
        );
    }

    #[test]
    fn queue_names_round_trip_and_others_are_ignored() {
        let name = WalName::parse("00000001000000000000000A").unwrap();
        let sha = "0123456789abcdef".repeat(4);
        let file = file_name(&name, &sha);
        assert_eq!(parse_file_name(&file), Some((name.clone(), sha.clone())));
        assert_eq!(
            format!("wal/db/00000001/{file}"),
            super::super::object_key("db", &name, &sha),
            "a queue file is named as the last part of its key"
        );
        for other in [
            "00000001000000000000000A",
            &format!("00000001000000000000000A-{}.zst.age", sha.to_uppercase()),
            &format!("junk-{sha}.zst.age"),
            &format!("00000001000000000000000A-{sha}.zst"),
            ".lock",
        ] {
            assert_eq!(parse_file_name(other), None, "{other}");
        }
    }

    #[test]
    fn the_limit_is_inclusive_and_never_overflows() {
        assert!(fits(0, 10, 10));
        assert!(!fits(1, 10, 10));
        assert!(fits(0, 0, 0));
        assert!(!fits(0, 1, 0));
        assert!(!fits(u64::MAX, 1, u64::MAX));
    }

    #[test]
    fn markers_before_the_current_name_go_and_the_rest_are_bounded() {
        let current = WalName::parse("000000010000000000000010").unwrap();
        let markers: Vec<String> = [
            "00000001000000000000000E",
            "000000010000000000000010",
            "000000010000000000000011",
            "000000010000000000000012",
        ]
        .map(String::from)
        .to_vec();
        let mut stale = stale_markers(&markers, &current);
        stale.sort();
        assert_eq!(
            stale,
            ["00000001000000000000000E", "000000010000000000000010"]
        );

        let many: Vec<String> = (0..MAX_MARKERS as u64 + 5)
            .map(|n| format!("0000000100000001{n:08X}"))
            .collect();
        let stale = stale_markers(&many, &current);
        assert_eq!(stale.len(), 5, "only the excess goes");
        assert!(
            stale
                .iter()
                .all(|m| m.as_str() < "000000010000000100000005")
        );
    }

    #[test]
    fn sealing_respects_the_limit_and_leaves_only_ciphertext() {
        let dir = tempfile::tempdir().unwrap();
        let wal = dir.path().join("00000001000000000000000A");
        let plain = b"plaintext WAL bytes ".repeat(5000);
        std::fs::write(&wal, &plain).unwrap();
        let sha = crate::wal::push::hash_file(&wal).unwrap().0;
        let name = WalName::parse("00000001000000000000000A").unwrap();
        let id = age::x25519::Identity::generate();
        let recipients = [id.to_public()];

        let tiny = Spool::new(&dir.path().join("spool"), "db", 10);
        let err = tiny.seal(&wal, &name, &sha, &recipients, 3).unwrap_err();
        assert!(matches!(err, Error::SpoolFull(_)), "{err}");
        assert!(err.to_string().contains("spool_max_bytes"), "{err}");
        assert!(tiny.queued().unwrap().is_empty());

        let spool = Spool::new(&dir.path().join("spool"), "db", 1 << 20);
        let (entry, used) = spool.seal(&wal, &name, &sha, &recipients, 3).unwrap();
        assert_eq!(used, entry.size);
        assert_eq!(spool.find(&name).unwrap(), vec![entry.clone()]);
        let sealed = std::fs::read(spool.path_of(&entry)).unwrap();
        assert!(!sealed.windows(9).any(|w| w == b"plaintext"));
        let (opened, digests) = crate::pipeline::open_bytes(&[id], &sealed).unwrap();
        assert_eq!(opened, plain);
        assert_eq!(digests.plaintext_sha256, sha);
        let leftovers = std::fs::read_dir(spool.dir().join(TMP)).unwrap().count();
        assert_eq!(leftovers, 0, "tmp/ is empty after a seal");
        use std::os::unix::fs::PermissionsExt;
        for d in [spool.dir().to_path_buf(), spool.dir().join(TMP)] {
            let mode = std::fs::metadata(&d).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o700, "{} is mode {mode:o}", d.display());
        }

        // Full now: the next one is refused and nothing is added.
        let full = Spool::new(&dir.path().join("spool"), "db", entry.size);
        let next = WalName::parse("00000001000000000000000B").unwrap();
        assert!(matches!(
            full.seal(&wal, &next, &sha, &recipients, 3),
            Err(Error::SpoolFull(_))
        ));
        assert_eq!(full.queued().unwrap().len(), 1);
        spool.remove(&entry).unwrap();
        assert!(spool.queued().unwrap().is_empty());
    }
}
