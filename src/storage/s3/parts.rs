//! Multipart part buffers with memory that does not grow: a part is
//! assembled in memory while the store's memory budget has room, and in a
//! temporary file otherwise. Part sizes must grow past 1,000 parts (see
//! [`super::part_size`]) and several uploads may run at once (`wal-push`
//! look-ahead), so holding every part in memory would make peak memory a
//! function of the object's size and of the number of uploads.
//!
//! What is spilled is what the upload sends: ciphertext, never plaintext.
//! A spill file lives until its part is stored (the SDK retries a part
//! from the file by opening it again) and is removed when its guard drops,
//! which also happens when an upload is aborted or its task cancelled.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use aws_sdk_s3::primitives::ByteStream as SdkByteStream;
use aws_smithy_types::byte_stream::Length;
use bytes::{Bytes, BytesMut};
use tokio::io::AsyncWriteExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The memory budget counts in units of this many bytes.
const BUDGET_UNIT: usize = 1024 * 1024;

/// Spill files older than this were left by a process that was killed.
const STALE_SPILL: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// Bytes read from a spill file at a time while it is sent.
const SPILL_READ_BYTES: usize = 64 * 1024;

/// Memory that part buffers of one store may hold at once, shared by every
/// upload of the store: parts that do not fit go to spill files.
#[derive(Clone)]
pub struct PartBudget {
    units: Arc<Semaphore>,
    spill_dir: PathBuf,
}

impl PartBudget {
    pub fn new(bytes: usize, spill_dir: PathBuf) -> PartBudget {
        PartBudget {
            units: Arc::new(Semaphore::new(bytes / BUDGET_UNIT)),
            spill_dir,
        }
    }

    pub fn spill_dir(&self) -> &Path {
        &self.spill_dir
    }

    /// An empty part of `size` bytes: in memory if the budget has room now,
    /// else in a new spill file. Never waits for memory: waiting could stall
    /// an upload behind another one's slow parts.
    pub async fn start(&self, size: usize) -> std::io::Result<PartBody> {
        let units = size.div_ceil(BUDGET_UNIT) as u32;
        if let Ok(permit) = self.units.clone().try_acquire_many_owned(units) {
            return Ok(PartBody::Memory {
                data: BytesMut::with_capacity(size),
                _permit: Some(permit),
            });
        }
        Ok(PartBody::File(SpillFile::create(&self.spill_dir).await?))
    }
}

/// The default spill directory: `$TMPDIR/drctl-parts-<uid>` (one per user,
/// since it is created 0700).
pub fn default_spill_dir() -> PathBuf {
    // SAFETY: getuid has no preconditions and cannot fail.
    let uid = unsafe { libc::getuid() };
    std::env::temp_dir().join(format!("drctl-parts-{uid}"))
}

/// A part's bytes, in memory or in a spill file.
pub enum PartBody {
    Memory {
        data: BytesMut,
        /// Held until the part is stored: the SDK retries from the buffer.
        _permit: Option<OwnedSemaphorePermit>,
    },
    File(SpillFile),
}

impl PartBody {
    /// Memory outside any budget, for a small object written whole.
    pub fn unbudgeted(data: Bytes) -> PartBody {
        PartBody::Memory {
            data: BytesMut::from(data),
            _permit: None,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn len(&self) -> usize {
        match self {
            PartBody::Memory { data, .. } => data.len(),
            PartBody::File(f) => f.len as usize,
        }
    }

    pub async fn append(&mut self, chunk: &[u8]) -> std::io::Result<()> {
        match self {
            PartBody::Memory { data, .. } => {
                data.extend_from_slice(chunk);
                Ok(())
            }
            PartBody::File(f) => f.append(chunk).await,
        }
    }

    /// The body to send, and what must live until the request is finished
    /// (the memory permit or the spill file).
    pub async fn into_body(self) -> std::io::Result<(SdkByteStream, Sent)> {
        match self {
            PartBody::Memory { data, _permit } => {
                let data = data.freeze();
                // The SDK retries a failed part from this in-memory buffer.
                Ok((
                    SdkByteStream::from(data.clone()),
                    Sent::Memory(data, _permit),
                ))
            }
            PartBody::File(mut f) => {
                f.finish().await?;
                let body = SdkByteStream::read_from()
                    .path(&f.path)
                    .buffer_size(SPILL_READ_BYTES)
                    .length(Length::Exact(f.len))
                    .build()
                    .await
                    .map_err(std::io::Error::other)?;
                Ok((body, Sent::File(f)))
            }
        }
    }
}

/// What a sent part keeps alive until its request is over.
pub enum Sent {
    Memory(Bytes, #[allow(dead_code)] Option<OwnedSemaphorePermit>),
    File(SpillFile),
}

impl Sent {
    /// The bytes that were sent, for comparing with an object whose write's
    /// answer was lost. A spill file holds at most one part, so reading it
    /// back on this rare path is bounded.
    pub async fn bytes(&self) -> std::io::Result<Bytes> {
        match self {
            Sent::Memory(b, _) => Ok(b.clone()),
            Sent::File(f) => tokio::fs::read(&f.path).await.map(Bytes::from),
        }
    }
}

/// A temporary file holding one part; removed when dropped.
pub struct SpillFile {
    path: PathBuf,
    file: Option<tokio::io::BufWriter<tokio::fs::File>>,
    len: u64,
}

impl SpillFile {
    async fn create(dir: &Path) -> std::io::Result<SpillFile> {
        let dir = dir.to_path_buf();
        let path = tokio::task::spawn_blocking(move || -> std::io::Result<PathBuf> {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&dir)?;
            crate::storage::local::sweep_stale(&dir, STALE_SPILL);
            Ok(dir.join(format!(
                "part-{}-{:016x}",
                std::process::id(),
                rand::random::<u64>()
            )))
        })
        .await
        .map_err(std::io::Error::other)??;
        let file = tokio::fs::File::options()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .await?;
        Ok(SpillFile {
            path,
            file: Some(tokio::io::BufWriter::with_capacity(SPILL_READ_BYTES, file)),
            len: 0,
        })
    }

    async fn append(&mut self, chunk: &[u8]) -> std::io::Result<()> {
        let file = self
            .file
            .as_mut()
            .expect("a spill file is written before it is sent");
        file.write_all(chunk).await?;
        self.len += chunk.len() as u64;
        Ok(())
    }

    /// Flushes and closes the file; it is read again by path. No fsync: a
    /// crash loses the upload anyway, and the page cache serves the read.
    async fn finish(&mut self) -> std::io::Result<()> {
        if let Some(mut file) = self.file.take() {
            file.flush().await?;
            file.into_inner().shutdown().await?;
        }
        Ok(())
    }
}

impl Drop for SpillFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}
