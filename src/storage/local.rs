//! A repository in a local directory (`file://`): the embedded default, and
//! what the quickstart uses. Writes go to `.tmp/` and appear at their key
//! only when complete, by an exclusive hard link (create) or a rename under
//! a lock (compare-and-swap), so a crash never leaves a partial object at a
//! key.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use sha2::{Digest, Sha256};

use super::{ByteStream, ObjectMeta, Protection, PutMode, Spliced, Store, Stored, Upload};
use crate::error::{StorageError, StorageErrorKind};

const TMP_DIR: &str = ".tmp";
const LOCK_FILE: &str = ".lock";
const READ_CHUNK_BYTES: usize = 256 * 1024;
/// Parts are only a unit of buffering here; any size works.
const PART_BYTES: usize = 1024 * 1024;

pub struct LocalStore {
    root: PathBuf,
}

impl LocalStore {
    pub fn new(root: PathBuf) -> Self {
        LocalStore { root }
    }

    fn path(&self, key: &str) -> PathBuf {
        self.root.join(key)
    }

    fn err(&self, op: &'static str, key: &str, e: &std::io::Error) -> StorageError {
        let kind = match e.kind() {
            std::io::ErrorKind::NotFound => StorageErrorKind::NotFound,
            std::io::ErrorKind::AlreadyExists => StorageErrorKind::PreconditionFailed,
            std::io::ErrorKind::PermissionDenied => StorageErrorKind::AccessDenied,
            _ => StorageErrorKind::Other,
        };
        StorageError::new(op, self.location(), key, kind, e.to_string())
    }

    fn tmp_file(&self) -> std::io::Result<(PathBuf, File)> {
        let dir = self.root.join(TMP_DIR);
        std::fs::create_dir_all(&dir)?;
        sweep_stale(&dir, STALE_TMP);
        let path = dir.join(format!("{:016x}", rand::random::<u64>()));
        let file = File::options().write(true).create_new(true).open(&path)?;
        Ok((path, file))
    }
}

/// Temporary files untouched for this long belong to a writer that died
/// (a killed backup); a live upload writes to its file continually.
const STALE_TMP: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// Removes files in `dir` untouched for longer than `older_than`: what
/// killed writers left in a temporary directory. Best effort.
pub(crate) fn sweep_stale(dir: &Path, older_than: std::time::Duration) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let old = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > older_than);
        if old {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

fn etag_of(data: &[u8]) -> String {
    hex::encode(&Sha256::digest(data)[..16])
}

fn meta_of(key: &str, path: &Path) -> std::io::Result<ObjectMeta> {
    let m = std::fs::metadata(path)?;
    Ok(ObjectMeta {
        key: key.to_string(),
        size: m.len(),
        last_modified: m.modified().ok().map(Into::into),
        ..Default::default()
    })
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Moves a finished temporary file to its key. `Create` uses a hard link,
/// which fails if the key exists, so two writers can never both win.
fn publish(root: &Path, tmp: &Path, dest: &Path, mode: Option<&PutMode>) -> std::io::Result<()> {
    if let Some(parent) = dest.parent() {
        std::fs::create_dir_all(parent)?;
    }
    match mode {
        Some(PutMode::IfMatch(expected)) => {
            let lock = File::options()
                .create(true)
                .truncate(false)
                .write(true)
                .open(root.join(LOCK_FILE))?;
            // SAFETY: flock on a descriptor we own; released when `lock` drops.
            if unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&lock), libc::LOCK_EX) } != 0 {
                return Err(std::io::Error::last_os_error());
            }
            let current = std::fs::read(dest)?;
            if &etag_of(&current) != expected {
                let _ = std::fs::remove_file(tmp);
                return Err(std::io::Error::new(
                    std::io::ErrorKind::AlreadyExists,
                    "the object changed since it was read",
                ));
            }
            std::fs::rename(tmp, dest)?;
        }
        _ => {
            let linked = std::fs::hard_link(tmp, dest);
            let _ = std::fs::remove_file(tmp);
            linked?;
        }
    }
    if let Some(parent) = dest.parent() {
        sync_dir(parent)?;
    }
    Ok(())
}

#[async_trait]
impl Store for LocalStore {
    fn location(&self) -> String {
        format!("file://{}", self.root.display())
    }

    fn local_root(&self) -> Option<&Path> {
        Some(&self.root)
    }

    async fn put(&self, key: &str, body: Bytes, mode: PutMode) -> Result<Stored, StorageError> {
        let root = self.root.clone();
        let dest = self.path(key);
        let (tmp, mut file) = self.tmp_file().map_err(|e| self.err("put", key, &e))?;
        let etag = etag_of(&body);
        let size = body.len() as u64;
        tokio::task::spawn_blocking(move || {
            file.write_all(&body)?;
            file.sync_all()?;
            drop(file);
            publish(&root, &tmp, &dest, Some(&mode))
        })
        .await
        .expect("local put task panicked")
        .map_err(|e| self.err("put", key, &e))?;
        Ok(Stored {
            size,
            etag: Some(etag),
            version_id: None,
        })
    }

    async fn get(
        &self,
        key: &str,
        _version: Option<&str>,
    ) -> Result<(Bytes, ObjectMeta), StorageError> {
        let path = self.path(key);
        let data = tokio::fs::read(&path)
            .await
            .map_err(|e| self.err("get", key, &e))?;
        let mut meta = meta_of(key, &path).map_err(|e| self.err("get", key, &e))?;
        meta.etag = Some(etag_of(&data));
        Ok((Bytes::from(data), meta))
    }

    async fn get_stream(
        &self,
        key: &str,
        _version: Option<&str>,
    ) -> Result<ByteStream, StorageError> {
        let file = File::open(self.path(key)).map_err(|e| self.err("get", key, &e))?;
        let (tx, rx) = tokio::sync::mpsc::channel(2);
        let (location, key) = (self.location(), key.to_string());
        tokio::task::spawn_blocking(move || {
            let mut file = file;
            loop {
                let mut buf = vec![0u8; READ_CHUNK_BYTES];
                let item = match file.read(&mut buf) {
                    Ok(0) => return,
                    Ok(n) => {
                        buf.truncate(n);
                        Ok(Bytes::from(buf))
                    }
                    Err(e) => Err(StorageError::new(
                        "get",
                        &location,
                        &key,
                        StorageErrorKind::Other,
                        e.to_string(),
                    )),
                };
                let failed = item.is_err();
                if tx.blocking_send(item).is_err() || failed {
                    return;
                }
            }
        });
        Ok(Box::pin(futures::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|item| (item, rx))
        })))
    }

    async fn get_head(
        &self,
        key: &str,
        _version: Option<&str>,
        len: u64,
    ) -> Result<Bytes, StorageError> {
        let file = File::open(self.path(key)).map_err(|e| self.err("get", key, &e))?;
        let mut buf = Vec::new();
        file.take(len)
            .read_to_end(&mut buf)
            .map_err(|e| self.err("get", key, &e))?;
        Ok(Bytes::from(buf))
    }

    async fn replace_data(
        &self,
        key: &str,
        body: Bytes,
        etag: &str,
    ) -> Result<Stored, StorageError> {
        let stored = self
            .put(key, body, PutMode::IfMatch(etag.to_string()))
            .await?;
        Ok(stored)
    }

    async fn put_spliced(
        &self,
        key: &str,
        head: Bytes,
        source: &str,
        _version: Option<&str>,
        from: u64,
    ) -> Result<Spliced, StorageError> {
        use std::io::{Seek, SeekFrom};
        let dest = self.path(key);
        let src = self.path(source);
        let (tmp, mut out) = self.tmp_file().map_err(|e| self.err("upload", key, &e))?;
        let root = self.root.clone();
        let tmp_path = tmp.clone();
        let written = tokio::task::spawn_blocking(move || -> std::io::Result<u64> {
            let mut input = File::open(&src)?;
            input.seek(SeekFrom::Start(from))?;
            out.write_all(&head)?;
            // std::io::copy between files uses copy_file_range: on a file
            // system with reflinks the payload is shared, not copied.
            let copied = std::io::copy(&mut input, &mut out)?;
            out.sync_all()?;
            publish(&root, &tmp_path, &dest, Some(&PutMode::Create))?;
            Ok(head.len() as u64 + copied)
        })
        .await
        .expect("local splice task panicked");
        match written {
            Ok(size) => Ok(Spliced {
                stored: Stored {
                    size,
                    etag: None,
                    version_id: None,
                },
                downloaded: size,
                uploaded: size,
                copied_in_store: 0,
            }),
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                Err(self.err("upload", key, &e))
            }
        }
    }

    async fn head(&self, key: &str, _version: Option<&str>) -> Result<ObjectMeta, StorageError> {
        meta_of(key, &self.path(key)).map_err(|e| self.err("head", key, &e))
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StorageError> {
        let root = self.root.clone();
        let wanted = prefix.to_string();
        let result = tokio::task::spawn_blocking(move || {
            let prefix = wanted;
            let mut out = Vec::new();
            // Start the walk at the deepest directory the prefix names.
            let start = match prefix.rfind('/') {
                Some(i) => root.join(&prefix[..i]),
                None => root.clone(),
            };
            let mut stack = vec![start];
            while let Some(dir) = stack.pop() {
                let entries = match std::fs::read_dir(&dir) {
                    Ok(e) => e,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(e),
                };
                for entry in entries {
                    let entry = entry?;
                    let path = entry.path();
                    let Ok(rel) = path.strip_prefix(&root) else {
                        continue;
                    };
                    let key = rel.to_string_lossy().replace('\\', "/");
                    if key == TMP_DIR || key == LOCK_FILE {
                        continue;
                    }
                    if entry.file_type()?.is_dir() {
                        stack.push(path);
                    } else if key.starts_with(&prefix) {
                        out.push(meta_of(&key, &path)?);
                    }
                }
            }
            out.sort_by(|a, b| a.key.cmp(&b.key));
            Ok(out)
        })
        .await
        .expect("local list task panicked");
        result.map_err(|e| self.err("list", prefix, &e))
    }

    async fn delete(&self, key: &str) -> Result<(), StorageError> {
        match tokio::fs::remove_file(self.path(key)).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(self.err("delete", key, &e)),
        }
    }

    async fn create_upload(&self, key: &str) -> Result<Box<dyn Upload>, StorageError> {
        let dest = self.path(key);
        if dest.exists() {
            return Err(StorageError::new(
                "upload",
                self.location(),
                key,
                StorageErrorKind::PreconditionFailed,
                "an object already exists at this key",
            ));
        }
        let (tmp, file) = self.tmp_file().map_err(|e| self.err("upload", key, &e))?;
        Ok(Box::new(LocalUpload {
            root: self.root.clone(),
            location: self.location(),
            key: key.to_string(),
            dest,
            tmp,
            file: Arc::new(file),
            size: 0,
        }))
    }

    async fn protection(&self) -> Result<Protection, StorageError> {
        Ok(Protection {
            applicable: false,
            versioning: None,
            object_lock: None,
        })
    }

    async fn list_versions(
        &self,
        _prefix: &str,
    ) -> Result<Vec<crate::storage::ObjectVersion>, StorageError> {
        // A deleted file is gone: a local repository keeps no versions.
        Ok(Vec::new())
    }
}

struct LocalUpload {
    root: PathBuf,
    location: String,
    key: String,
    dest: PathBuf,
    tmp: PathBuf,
    file: Arc<File>,
    size: u64,
}

impl LocalUpload {
    fn err(&self, e: &std::io::Error) -> StorageError {
        StorageError::new(
            "upload",
            &self.location,
            &self.key,
            StorageErrorKind::Other,
            e.to_string(),
        )
    }
}

#[async_trait]
impl Upload for LocalUpload {
    fn next_part_size(&self) -> usize {
        PART_BYTES
    }

    async fn put_part(&mut self, part: Bytes) -> Result<(), StorageError> {
        let file = self.file.clone();
        self.size += part.len() as u64;
        tokio::task::spawn_blocking(move || (&*file).write_all(&part))
            .await
            .expect("local write task panicked")
            .map_err(|e| self.err(&e))
    }

    async fn complete(self: Box<Self>) -> Result<Stored, StorageError> {
        let (root, tmp, dest, file) = (
            self.root.clone(),
            self.tmp.clone(),
            self.dest.clone(),
            self.file.clone(),
        );
        let published = tokio::task::spawn_blocking(move || {
            file.sync_all()?;
            publish(&root, &tmp, &dest, Some(&PutMode::Create))
        })
        .await
        .expect("local complete task panicked");
        match published {
            Ok(()) => Ok(Stored {
                size: self.size,
                etag: None,
                version_id: None,
            }),
            Err(e) => {
                let _ = std::fs::remove_file(&self.tmp);
                Err(StorageError::new(
                    "upload",
                    &self.location,
                    &self.key,
                    if e.kind() == std::io::ErrorKind::AlreadyExists {
                        StorageErrorKind::PreconditionFailed
                    } else {
                        StorageErrorKind::Other
                    },
                    e.to_string(),
                ))
            }
        }
    }

    async fn abort(self: Box<Self>) -> Result<(), StorageError> {
        match std::fs::remove_file(&self.tmp) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(self.err(&e)),
        }
    }
}
