//! Files: a tar stream of the policy's paths (mode, owner, mtime and
//! symlinks kept), and the per-path fingerprint a drill checks a restore
//! against. Restores unpack into a directory the user names, never over the
//! live paths.

use std::io::{Read, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::config::OnUnreadable;
use crate::error::{Error, Result};
use crate::progress::Meter;
use crate::repo::Repo;
use crate::repo::manifest::{Manifest, ObjectRecord};
use crate::restore::{check_empty_dir, check_no_partial, leftover_partial, partial_path};
use crate::sealed::{name_object, read_sealed, stream_object};

/// Warnings kept per backup: a tree that cannot be read at all should not
/// make a manifest of megabytes. The rest are counted in the last one.
pub const MAX_WARNINGS: usize = 100;

/// What a restore must reproduce for one path. Names may be sensitive, so
/// this too is stored only sealed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PathPrint {
    /// The path as stored in the archive (no leading `/`), lossless for
    /// non-UTF-8 names via hex when needed.
    pub path: String,
    pub kind: String,
    pub mode: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link_target: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FilesPrint {
    pub paths: Vec<PathPrint>,
}

fn path_text(p: &Path) -> String {
    use std::os::unix::ffi::OsStrExt;
    match std::str::from_utf8(p.as_os_str().as_bytes()) {
        Ok(s) => s.to_string(),
        Err(_) => format!("hex:{}", hex::encode(p.as_os_str().as_bytes())),
    }
}

fn archive_name(p: &Path) -> PathBuf {
    p.strip_prefix("/").unwrap_or(p).to_path_buf()
}

struct HashingFile<R> {
    inner: R,
    hasher: Sha256,
    read: u64,
}

impl<R: Read> Read for HashingFile<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.read += n as u64;
        Ok(n)
    }
}

/// What a tar stream holds, and what the walk could not take as it was.
#[derive(Debug, Default)]
pub struct Archived {
    pub print: FilesPrint,
    /// One sentence per path skipped (`on_unreadable = "skip"`) or changed
    /// while it was read, naming the path; at most [`MAX_WARNINGS`].
    pub warnings: Vec<String>,
}

/// Collects warnings up to [`MAX_WARNINGS`] and counts the rest.
#[derive(Default)]
struct Warnings {
    kept: Vec<String>,
    more: usize,
}

impl Warnings {
    fn push(&mut self, warning: String) {
        if self.kept.len() < MAX_WARNINGS {
            self.kept.push(warning);
        } else {
            self.more += 1;
        }
    }

    fn finish(mut self) -> Vec<String> {
        if self.more > 0 {
            self.kept.push(format!(
                "{} more warning{} not recorded",
                self.more,
                if self.more == 1 { "" } else { "s" }
            ));
        }
        self.kept
    }
}

/// Writes a tar stream of `paths` into `out` and returns what it holds.
///
/// A path found while walking that cannot be read (permissions, a name
/// beyond PATH_MAX, a file that vanished) fails the backup, or with
/// [`OnUnreadable::Skip`] is left out with a warning. A file whose size or
/// mtime changed while it was read is archived as read, with a warning.
///
/// # Errors
/// A listed path that does not exist or cannot be read; with
/// [`OnUnreadable::Fail`], any path found that cannot be read; a file that
/// shrank while it was read, or a read that failed part-way (the stream
/// cannot be resumed then). `policy` is named.
pub fn write_tar(
    policy: &str,
    paths: &[PathBuf],
    exclude: &[String],
    on_unreadable: OnUnreadable,
    out: &mut dyn Write,
    progress: &std::sync::atomic::AtomicU64,
) -> Result<Archived> {
    let mut set = globset::GlobSetBuilder::new();
    for g in exclude {
        set.add(globset::Glob::new(g).map_err(|e| Error::Source {
            policy: policy.into(),
            message: format!("exclude `{g}`: {e}"),
        })?);
    }
    let excludes = set.build().map_err(|e| Error::Source {
        policy: policy.into(),
        message: e.to_string(),
    })?;
    let mut builder = tar::Builder::new(out);
    builder.follow_symlinks(false);
    builder.mode(tar::HeaderMode::Complete);
    let mut print = FilesPrint::default();
    let io = |p: &Path, e: std::io::Error| Error::Source {
        policy: policy.into(),
        message: format!("{}: {e}", p.display()),
    };
    let mut warnings = Warnings::default();
    // Called before anything of the path is written, so that skipping it
    // leaves the stream whole.
    let unreadable = |warnings: &mut Warnings, p: &Path, what: &str, e: std::io::Error| {
        match on_unreadable {
            OnUnreadable::Fail => Err(Error::Source {
                policy: policy.into(),
                message: format!(
                    "{}: {what}: {e}; make it readable, exclude it, or set `on_unreadable = \"skip\"` in the policy's [source] to back up the rest with a warning",
                    p.display()
                ),
            }),
            OnUnreadable::Skip => {
                warnings.push(format!("{}: skipped, {what}: {e}", p.display()));
                Ok(())
            }
        }
    };

    for p in paths {
        std::fs::symlink_metadata(p).map_err(|e| io(p, e))?;
    }
    // Parents of the listed paths go first (headers only), so a restore
    // recreates them with their modes and owners rather than defaults.
    let mut parents: Vec<PathBuf> = paths
        .iter()
        .flat_map(|p| p.ancestors().skip(1))
        .filter(|a| a.parent().is_some())
        .map(Path::to_path_buf)
        .collect();
    parents.sort();
    parents.dedup();
    for parent in &parents {
        builder
            .append_path_with_name(parent, archive_name(parent))
            .map_err(|e| io(parent, e))?;
    }
    let mut stack: Vec<PathBuf> = paths.iter().rev().cloned().collect();
    while let Some(path) = stack.pop() {
        let excluded =
            excludes.is_match(&path) || path.file_name().is_some_and(|n| excludes.is_match(n));
        if excluded {
            continue;
        }
        let meta = match std::fs::symlink_metadata(&path) {
            Ok(m) => m,
            Err(e) => {
                unreadable(&mut warnings, &path, "cannot be read", e)?;
                continue;
            }
        };
        let name = archive_name(&path);
        let ft = meta.file_type();
        let mut entry = PathPrint {
            path: path_text(&name),
            kind: String::new(),
            mode: meta.mode() & 0o7777,
            sha256: None,
            link_target: None,
        };
        if ft.is_file() {
            let mut header = tar::Header::new_gnu();
            header.set_metadata_in_mode(&meta, tar::HeaderMode::Complete);
            let file = match std::fs::File::open(&path) {
                Ok(f) => f,
                Err(e) => {
                    unreadable(&mut warnings, &path, "cannot be read", e)?;
                    continue;
                }
            };
            // A file that grows while it is read would not match its header,
            // and one that shrinks would leave the archive misaligned.
            let mut reader = HashingFile {
                inner: file.take(meta.len()),
                hasher: Sha256::new(),
                read: 0,
            };
            builder
                .append_data(&mut header, &name, &mut reader)
                .map_err(|e| io(&path, e))?;
            if reader.read != meta.len() {
                return Err(Error::Source {
                    policy: policy.into(),
                    message: format!(
                        "{} shrank from {} to {} bytes while it was read; back it up again, or exclude it if it changes all the time",
                        path.display(),
                        meta.len(),
                        reader.read
                    ),
                });
            }
            // A file rewritten in place while it was read is archived torn:
            // old and new contents mixed. Nothing better can be had without a
            // file-system snapshot, but the operator must hear of it.
            let after = reader.inner.get_ref().metadata();
            let changed = match &after {
                Ok(now) => now.len() != meta.len() || now.modified().ok() != meta.modified().ok(),
                Err(_) => true,
            };
            if changed {
                warnings.push(format!(
                    "{}: changed while it was read ({}); the backup holds it as read, possibly a mix of old and new contents. Back it up again, or stop what writes it during backups",
                    path.display(),
                    match &after {
                        Ok(now) if now.len() != meta.len() =>
                            format!("size {} then {} bytes", meta.len(), now.len()),
                        Ok(_) => "its modification time moved".to_string(),
                        Err(e) => format!("cannot look at it again: {e}"),
                    }
                ));
            }
            progress.fetch_add(meta.len(), std::sync::atomic::Ordering::Relaxed);
            entry.kind = "file".into();
            entry.sha256 = Some(hex::encode(reader.hasher.finalize()));
        } else if ft.is_dir() {
            // Listed before its header is written: a directory that cannot
            // be listed is kept (empty, with its mode) when skipping.
            let children = std::fs::read_dir(&path).and_then(|entries| {
                entries
                    .map(|e| e.map(|e| e.path()))
                    .collect::<std::io::Result<Vec<PathBuf>>>()
            });
            let mut children = match children {
                Ok(c) => c,
                Err(e) => {
                    unreadable(&mut warnings, &path, "its contents cannot be listed", e)?;
                    Vec::new()
                }
            };
            builder
                .append_path_with_name(&path, &name)
                .map_err(|e| io(&path, e))?;
            entry.kind = "dir".into();
            children.sort();
            stack.extend(children.into_iter().rev());
        } else if ft.is_symlink() {
            let target = match std::fs::read_link(&path) {
                Ok(t) => t,
                Err(e) => {
                    unreadable(&mut warnings, &path, "cannot be read", e)?;
                    continue;
                }
            };
            builder
                .append_path_with_name(&path, &name)
                .map_err(|e| io(&path, e))?;
            entry.kind = "symlink".into();
            entry.link_target = Some(path_text(&target));
        } else {
            let what = if ft.is_socket() {
                "socket"
            } else if ft.is_fifo() {
                "fifo"
            } else {
                "device"
            };
            tracing::warn!(event = "special_file_skipped", path = %path.display(), kind = what, "Skipping a special file.");
            continue;
        }
        print.paths.push(entry);
    }
    builder.finish().map_err(|e| Error::Source {
        policy: policy.into(),
        message: format!("finishing the tar stream: {e}"),
    })?;
    Ok(Archived {
        print,
        warnings: warnings.finish(),
    })
}

/// Unpacks a tar stream into `dir` (which must exist), keeping modes, mtimes
/// and, when running as root, owners.
///
/// # Errors
/// Any unpack error, with the entry's path.
pub fn unpack(input: impl Read, dir: &Path) -> std::io::Result<()> {
    let mut archive = tar::Archive::new(input);
    archive.set_preserve_permissions(true);
    archive.set_preserve_mtime(true);
    archive.set_preserve_ownerships(unsafe { libc::geteuid() } == 0);
    archive.set_overwrite(false);
    // Directories come last, deepest first (as the tar crate's own `unpack`
    // does), so a read-only directory still receives its contents and
    // writing into a directory cannot change its restored mtime, which the
    // tar crate leaves unset and we set ourselves.
    let mut directories = Vec::new();
    for entry in archive.entries()? {
        let mut entry = entry?;
        if entry.header().entry_type().is_dir() {
            directories.push(entry);
        } else {
            unpack_entry(&mut entry, dir)?;
        }
    }
    directories.sort_by(|a, b| b.path_bytes().cmp(&a.path_bytes()));
    for mut entry in directories {
        unpack_entry(&mut entry, dir)?;
        let mtime = entry.header().mtime()?;
        let path = dir.join(entry.path()?);
        std::fs::File::open(&path)?
            .set_modified(std::time::UNIX_EPOCH + std::time::Duration::from_secs(mtime))?;
    }
    Ok(())
}

fn unpack_entry<R: Read>(entry: &mut tar::Entry<'_, R>, dir: &Path) -> std::io::Result<()> {
    if entry.unpack_in(dir)? {
        Ok(())
    } else {
        Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!(
                "entry `{}` would be written outside the target directory",
                String::from_utf8_lossy(&entry.path_bytes())
            ),
        ))
    }
}

/// Checks a restored tree against a fingerprint; one line per difference.
pub fn compare(expected: &FilesPrint, root: &Path) -> Vec<String> {
    use std::os::unix::ffi::OsStrExt;
    let mut out = Vec::new();
    for e in &expected.paths {
        let rel: PathBuf = match e.path.strip_prefix("hex:") {
            Some(h) => PathBuf::from(std::ffi::OsStr::from_bytes(
                &hex::decode(h).unwrap_or_default(),
            )),
            None => PathBuf::from(&e.path),
        };
        let p = root.join(&rel);
        let Ok(meta) = std::fs::symlink_metadata(&p) else {
            out.push(format!("{} is missing", e.path));
            continue;
        };
        if e.kind != "symlink" && meta.mode() & 0o7777 != e.mode {
            out.push(format!(
                "{}: mode {:o}, expected {:o}",
                e.path,
                meta.mode() & 0o7777,
                e.mode
            ));
        }
        if let Some(want) = &e.sha256 {
            let got = std::fs::read(&p)
                .map(|d| hex::encode(Sha256::digest(&d)))
                .unwrap_or_default();
            if &got != want {
                out.push(format!("{}: contents differ", e.path));
            }
        }
        if let Some(want) = &e.link_target {
            let got = std::fs::read_link(&p)
                .map(|t| path_text(&t))
                .unwrap_or_default();
            if &got != want {
                out.push(format!(
                    "{}: link points to `{got}`, expected `{want}`",
                    e.path
                ));
            }
        }
    }
    out
}

/// Unpacks a files backup into `dir`, which must not exist or be empty.
/// Unpacks beside it first (`DIR.drctl-partial`, which must not exist) and
/// renames into place at the end.
///
/// # Errors
/// As [`stream_object`]; a non-empty `dir` or a taken partial name is
/// refused before anything is read.
pub async fn to_directory(
    repo: &Repo,
    identities: &[age::x25519::Identity],
    manifest: &Manifest,
    dir: &Path,
    verify: bool,
    meter: Meter,
) -> Result<Option<Vec<String>>> {
    let record = &manifest.data;
    check_empty_dir(dir)?;
    check_no_partial(dir)?;
    let partial = partial_path(dir);
    if let Some(parent) = partial.parent() {
        std::fs::create_dir_all(parent)
            .map_err(|e| Error::io(format!("creating {}", parent.display()), e))?;
    }
    // `create_dir` fails on anything already at that name, a link included,
    // even one put there since the check.
    std::fs::create_dir(&partial).map_err(|e| match e.kind() {
        std::io::ErrorKind::AlreadyExists => leftover_partial(&partial),
        _ => Error::io(format!("creating {}", partial.display()), e),
    })?;
    let object = format!("{}/{}", repo.store.location(), record.key);
    let target = partial.clone();
    let result = stream_object(repo, identities, record, meter, move |r| {
        unpack(r, &target).map_err(|e| Error::Integrity {
            object: String::new(),
            reason: format!("unpacking: {e}"),
        })
    })
    .await
    .map_err(|e| name_object(e, &object));
    let result = match (result, &manifest.fingerprint) {
        (Ok(()), Some(print)) if verify => compare_files(repo, identities, print, &partial)
            .await
            .map(Some),
        (r, _) => r.map(|()| None),
    };
    match result {
        Ok(Some(diffs)) if !diffs.is_empty() => {
            let _ = std::fs::remove_dir_all(&partial);
            Err(Error::Integrity {
                object: object.clone(),
                reason: format!(
                    "the unpacked files do not match the backup's fingerprint: {}",
                    diffs.join("; ")
                ),
            })
        }
        Ok(diffs) => {
            if dir.exists() {
                std::fs::remove_dir(dir)
                    .map_err(|e| Error::io(format!("replacing the empty {}", dir.display()), e))?;
            }
            std::fs::rename(&partial, dir).map_err(|e| {
                Error::io(
                    format!("renaming {} to {}", partial.display(), dir.display()),
                    e,
                )
            })?;
            Ok(diffs)
        }
        Err(e) => {
            let _ = std::fs::remove_dir_all(&partial);
            Err(e)
        }
    }
}

async fn compare_files(
    repo: &Repo,
    identities: &[age::x25519::Identity],
    record: &ObjectRecord,
    root: &Path,
) -> Result<Vec<String>> {
    let json = read_sealed(repo, identities, record).await?;
    let expected: FilesPrint = serde_json::from_slice(&json).map_err(|e| Error::Integrity {
        object: format!("{}/{}", repo.store.location(), record.key),
        reason: format!("not a files fingerprint: {e}"),
    })?;
    let root = root.to_path_buf();
    Ok(
        tokio::task::spawn_blocking(move || compare(&expected, &root))
            .await
            .expect("compare task panicked"),
    )
}

/// Takes a tar of the policy's paths into the store, with the files
/// fingerprint for the job to store beside it.
///
/// # Errors
/// As [`write_tar`], and the store's.
pub async fn capture(
    cx: &crate::source::Capture<'_>,
    paths: &[PathBuf],
    exclude: &[String],
    on_unreadable: OnUnreadable,
) -> Result<crate::source::Captured> {
    let (name, paths, exclude) = (cx.policy.to_string(), paths.to_vec(), exclude.to_vec());
    let counter = cx.counter.clone();
    let produce = move |out: &mut dyn std::io::Write| {
        write_tar(&name, &paths, &exclude, on_unreadable, out, &counter)
    };
    let key = format!("{}data.tar.zst.age", cx.dir);
    let ((stored, digests), archived) = crate::sealed::store_sealed(
        cx.repo,
        &key,
        cx.recipients,
        cx.level,
        cx.cancel.clone(),
        produce,
    )
    .await?;
    Ok(crate::source::Captured {
        key,
        content: "tar",
        stored,
        digests,
        fingerprint: Some(serde_json::to_vec(&archived.print).expect("fingerprint serialises")),
        point_in_time: cx.started,
        postgres: None,
        cluster: None,
        warnings: archived.warnings,
    })
}
