//! The object-store seam: a few operations that both an S3 bucket and a local
//! directory can do, and nothing S3-specific (that stays in `s3.rs`).
//!
//! Large objects are written through an [`Upload`] fed part by part by
//! [`upload_stream`]; small ones (manifests, leases, `repo.json`) with
//! [`Store::put`]. Writes that must not clobber anything use
//! [`PutMode::Create`], which is a conditional put on S3 and an exclusive
//! link on a local directory.

pub mod admin;
pub mod local;
pub mod s3;

use std::sync::Arc;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use chrono::{DateTime, Utc};
use futures::stream::BoxStream;
use tokio::sync::mpsc;

use crate::config::RepositoryConfig;
use crate::error::StorageError;
pub use admin::BucketAdmin;

/// What a write requires of the object already at the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PutMode {
    /// Fail with `PreconditionFailed` if anything is there.
    Create,
    /// Fail with `PreconditionFailed` unless the current object has this ETag.
    IfMatch(String),
}

/// What the store reports about a written object.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stored {
    pub size: u64,
    pub etag: Option<String>,
    pub version_id: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ObjectMeta {
    pub key: String,
    pub size: u64,
    pub etag: Option<String>,
    pub version_id: Option<String>,
    pub last_modified: Option<DateTime<Utc>>,
    pub storage_class: Option<String>,
}

/// Whether the store keeps overwritten and deleted objects and locks them:
/// what an auditor asks about a bucket. A local directory has neither.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Protection {
    /// False for a local directory, where the question does not apply.
    pub applicable: bool,
    /// `Enabled`, `Suspended`, or `None` when versioning was never enabled.
    pub versioning: Option<String>,
    /// Object Lock with its default retention, e.g. `Enabled, default
    /// GOVERNANCE retention of 30 days`; `None` without Object Lock.
    pub object_lock: Option<String>,
}

pub type ByteStream = BoxStream<'static, Result<Bytes, StorageError>>;

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// `s3://bucket/prefix` or `file:///path`, for messages.
    fn location(&self) -> String;

    /// Writes a small object whole.
    async fn put(&self, key: &str, body: Bytes, mode: PutMode) -> Result<Stored, StorageError>;

    /// Reads a small object whole, with its ETag.
    async fn get(
        &self,
        key: &str,
        version: Option<&str>,
    ) -> Result<(Bytes, ObjectMeta), StorageError>;

    /// Streams an object; errors part-way arrive in the stream.
    async fn get_stream(
        &self,
        key: &str,
        version: Option<&str>,
    ) -> Result<ByteStream, StorageError>;

    async fn head(&self, key: &str, version: Option<&str>) -> Result<ObjectMeta, StorageError>;

    /// Every object whose key starts with `prefix`, in key order.
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StorageError>;

    async fn delete(&self, key: &str) -> Result<(), StorageError>;

    /// The first `len` bytes of an object, or all of it when it is shorter.
    async fn get_head(
        &self,
        key: &str,
        version: Option<&str>,
        len: u64,
    ) -> Result<Bytes, StorageError>;

    /// Writes a new backup data object at `key`, which must not exist yet:
    /// `head`, then the object at `source` (`version`) from byte `from` to
    /// its end. This is how a key rotation puts a new age header before an
    /// unchanged payload: S3 copies most of the payload inside the bucket
    /// (UploadPartCopy), so only a first part travels through this host.
    async fn put_spliced(
        &self,
        key: &str,
        head: Bytes,
        source: &str,
        version: Option<&str>,
        from: u64,
    ) -> Result<Spliced, StorageError>;

    /// Replaces a backup data object whose current ETag is `etag` with
    /// `body`, in one step: readers see the old bytes or the new, never
    /// neither (a WAL segment that vanished for a moment would end a
    /// recovery early).
    async fn replace_data(
        &self,
        key: &str,
        body: Bytes,
        etag: &str,
    ) -> Result<Stored, StorageError>;

    /// Starts writing a large object that must not exist yet. These are the
    /// backup data objects: S3 tags them (`bucket::DATA_TAG_KEY`) so that
    /// the archive lifecycle rule moves them and nothing else.
    async fn create_upload(&self, key: &str) -> Result<Box<dyn Upload>, StorageError>;

    /// Abandons every unfinished large-object write under `prefix` and says
    /// how many there were. Call it only once no upload under `prefix` is
    /// still being written. On S3 these are multipart uploads: one whose
    /// CreateMultipartUpload answer was lost was never known to drctl (the
    /// SDK's retry started another), and it costs storage until aborted. A
    /// local directory has none to find by key; its temporary files are
    /// swept by age.
    ///
    /// # Errors
    /// The store's, from listing or aborting.
    async fn abort_uploads(&self, prefix: &str) -> Result<usize, StorageError> {
        let _ = prefix;
        Ok(0)
    }

    /// Deletes one version of an object (or a delete marker) for good. A
    /// store without versions (a local directory) has none to delete.
    ///
    /// # Errors
    /// The store's; `AccessDenied` when Object Lock or a policy keeps it.
    async fn delete_version(&self, key: &str, version: &str) -> Result<(), StorageError> {
        let _ = (key, version);
        Ok(())
    }

    /// The store's versioning and Object Lock settings, for reports.
    async fn protection(&self) -> Result<Protection, StorageError>;

    /// Every version and delete marker under `prefix`, by key, newest first
    /// within a key (S3 ListObjectVersions). A store without versions (a
    /// local directory) has none and answers an empty list.
    async fn list_versions(&self, prefix: &str) -> Result<Vec<ObjectVersion>, StorageError>;

    /// Bucket settings and archive retrieval; `None` for a store that is
    /// not an S3 bucket.
    fn bucket(&self) -> Option<&dyn BucketAdmin> {
        None
    }

    /// The directory of a local repository, for messages about the disk
    /// under it (an unmounted volume); `None` for a bucket.
    fn local_root(&self) -> Option<&std::path::Path> {
        None
    }
}

/// What [`Store::put_spliced`] wrote, and the bytes it moved: read from
/// the store and written to it through this host, and copied inside the
/// store without passing through it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Spliced {
    pub stored: Stored,
    pub downloaded: u64,
    pub uploaded: u64,
    pub copied_in_store: u64,
}

/// One version of an object, or a delete marker, in a versioned store.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ObjectVersion {
    pub key: String,
    pub version_id: String,
    pub is_latest: bool,
    pub is_delete_marker: bool,
    pub last_modified: Option<DateTime<Utc>>,
    pub size: u64,
}

/// A large object being written in parts. Nothing is visible at the key until
/// [`Upload::complete`] succeeds; [`Upload::abort`] leaves nothing behind.
#[async_trait]
pub trait Upload: Send {
    /// How many bytes the next part should have (the last may be shorter).
    fn next_part_size(&self) -> usize;

    /// Hands over one part. May return before the part is stored, but keeps a
    /// bounded number in flight.
    async fn put_part(&mut self, part: Bytes) -> Result<(), StorageError>;

    async fn complete(self: Box<Self>) -> Result<Stored, StorageError>;

    async fn abort(self: Box<Self>) -> Result<(), StorageError>;
}

/// Opens the store a configuration names.
///
/// # Errors
/// Only for settings that cannot be used; reachability shows on first use.
pub async fn open(config: &RepositoryConfig) -> Result<Arc<dyn Store>, StorageError> {
    Ok(match config {
        RepositoryConfig::Local { path } => Arc::new(local::LocalStore::new(path.clone())),
        RepositoryConfig::S3 { .. } => Arc::new(s3::S3Store::connect(config).await?),
    })
}

/// Writes everything received on `chunks` to a new object at `key`, cutting
/// it into the parts the store asks for. Aborts the upload if the channel
/// closes with an error marker or a part fails.
///
/// The sender signals success by sending `Ok(())` on `done` after its last
/// chunk; a closed channel without it means the producer failed.
///
/// # Errors
/// The first storage error; the upload has been aborted by then.
pub async fn upload_stream(
    store: &dyn Store,
    key: &str,
    mut chunks: mpsc::Receiver<Bytes>,
    done: tokio::sync::oneshot::Receiver<()>,
) -> Result<Stored, StorageError> {
    let mut upload = store.create_upload(key).await?;
    let mut parts = Parts::new(upload.as_ref());
    let result: Result<(), StorageError> = async {
        while let Some(chunk) = chunks.recv().await {
            parts.push(upload.as_mut(), chunk).await?;
        }
        Ok(())
    }
    .await;
    // Closing our end first unblocks a producer still trying to send.
    drop(chunks);
    if let Err(e) = result {
        let _ = upload.abort().await;
        return Err(e);
    }
    if done.await.is_err() {
        let _ = upload.abort().await;
        return Err(StorageError::new(
            "upload",
            store.location(),
            key,
            crate::error::StorageErrorKind::Other,
            "the data stream ended early; upload aborted",
        ));
    }
    if let Err(e) = parts.finish(upload.as_mut()).await {
        let _ = upload.abort().await;
        return Err(e);
    }
    upload.complete().await
}

/// Cuts a stream of chunks of any size into the parts an [`Upload`] asks
/// for, holding at most one part.
pub struct Parts {
    part: BytesMut,
}

impl Parts {
    pub fn new(upload: &dyn Upload) -> Parts {
        Parts {
            part: BytesMut::with_capacity(upload.next_part_size()),
        }
    }

    /// Adds a chunk, handing each part that fills up to the upload.
    ///
    /// # Errors
    /// The upload's.
    pub async fn push(
        &mut self,
        upload: &mut dyn Upload,
        mut chunk: Bytes,
    ) -> Result<(), StorageError> {
        while !chunk.is_empty() {
            let take = (upload.next_part_size() - self.part.len()).min(chunk.len());
            self.part.extend_from_slice(&chunk.split_to(take));
            if self.part.len() >= upload.next_part_size() {
                let full = std::mem::replace(
                    &mut self.part,
                    BytesMut::with_capacity(upload.next_part_size()),
                );
                upload.put_part(full.freeze()).await?;
            }
        }
        Ok(())
    }

    /// Hands over the last, shorter part, if there is one.
    ///
    /// # Errors
    /// The upload's.
    pub async fn finish(self, upload: &mut dyn Upload) -> Result<(), StorageError> {
        if self.part.is_empty() {
            return Ok(());
        }
        upload.put_part(self.part.freeze()).await
    }
}

/// Writes a small backup data object (a fingerprint) the way large ones are
/// written, through an [`Upload`], so that it is stored, and on S3 tagged,
/// as backup data. Fails if the key exists.
///
/// # Errors
/// The store's; the upload has been aborted by then.
pub async fn put_data(store: &dyn Store, key: &str, body: Bytes) -> Result<Stored, StorageError> {
    let mut upload = store.create_upload(key).await?;
    if let Err(e) = upload.put_part(body).await {
        let _ = upload.abort().await;
        return Err(e);
    }
    upload.complete().await
}
