//! Sealed objects: how a stream becomes an object in the repository and
//! comes back out. Writing runs the producer's plaintext through
//! hash → zstd → age → hash into an upload and then confirms the stored
//! size; reading authenticates every byte (age's per-chunk AEAD) before it
//! leaves the pipe and checks both digests against what was recorded.
//! Every source and the WAL archive go through here, so these rules hold
//! for every byte drctl stores.

use std::io::{Read, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use bytes::Bytes;
use futures::StreamExt;
use tokio::sync::{mpsc, oneshot};

use crate::error::{Error, Result, StorageError, StorageErrorKind};
use crate::pipeline::hash::{Hashed, Hasher};
use crate::pipeline::{
    CHANNEL_CHUNKS, ChannelReader, ChannelWriter, Digests, Opener, Sealer, crypto,
};
use crate::progress::Meter;
use crate::repo::Repo;
use crate::repo::manifest::ObjectRecord;
use crate::storage::{Stored, upload_stream};

/// Bytes handed to the destination at a time.
const WRITE_BYTES: usize = 256 * 1024;
/// Streams an object's authenticated plaintext into `consume` and checks
/// both digests against the manifest afterwards.
///
/// # Errors
/// `Integrity` naming the object for tampering, truncation or a digest
/// mismatch; `Key` for an identity that matches no recipient; the consumer's
/// own error otherwise.
pub async fn stream_object<T, F>(
    repo: &Repo,
    identities: &[age::x25519::Identity],
    record: &ObjectRecord,
    meter: Meter,
    consume: F,
) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce(&mut dyn Read) -> Result<T> + Send + 'static,
{
    let object = format!("{}/{}", repo.store.location(), record.key);
    let (value, (plain, stored)) = stream_hashed(
        repo,
        identities,
        &record.key,
        record.version_id.as_deref(),
        record.digests.stored_hasher(),
        meter,
        consume,
    )
    .await?;
    check_digests(&object, record, &plain, &stored)?;
    Ok(value)
}

/// Streams the authenticated plaintext of one object into `consume` and
/// returns what both sides hashed to, for the caller to compare with what
/// it expects (a manifest's record, or the digest in a WAL object's key).
///
/// # Errors
/// As [`stream_object`], without the digest comparison.
pub async fn stream_plaintext<T, F>(
    repo: &Repo,
    identities: &[age::x25519::Identity],
    key: &str,
    version: Option<&str>,
    meter: Meter,
    consume: F,
) -> Result<(T, Digests)>
where
    T: Send + 'static,
    F: FnOnce(&mut dyn Read) -> Result<T> + Send + 'static,
{
    let (value, (plain, stored)) = stream_hashed(
        repo,
        identities,
        key,
        version,
        Hasher::whole(),
        meter,
        consume,
    )
    .await?;
    Ok((value, Digests::new(&plain, &stored)))
}

/// [`stream_plaintext`] hashing the stored bytes with `stored`, returning
/// what the plaintext and the stored bytes hashed to.
async fn stream_hashed<T, F>(
    repo: &Repo,
    identities: &[age::x25519::Identity],
    key: &str,
    version: Option<&str>,
    stored: Hasher,
    meter: Meter,
    consume: F,
) -> Result<(T, (Hashed, Hashed))>
where
    T: Send + 'static,
    F: FnOnce(&mut dyn Read) -> Result<T> + Send + 'static,
{
    let object = format!("{}/{}", repo.store.location(), key);
    let mut stream = repo
        .store
        .get_stream(key, version)
        .await
        .map_err(|e| fetch_error(e, &object))?;
    let (tx, rx) = mpsc::channel::<Result<Bytes, StorageError>>(CHANNEL_CHUNKS);
    let stop = meter.cancel.clone();
    let pump = tokio::spawn(async move {
        while let Some(item) = stream.next().await {
            if stop.load(std::sync::atomic::Ordering::Relaxed) {
                break;
            }
            let failed = item.is_err();
            if tx.send(item).await.is_err() || failed {
                break;
            }
        }
    });
    let identities = identities.to_vec();
    let obj = object.clone();
    let worker = tokio::task::spawn_blocking(move || -> Result<(T, (Hashed, Hashed))> {
        let cancel = meter.cancel.clone();
        let (stored_counter, plaintext_counter) = if meter.count_plaintext {
            (Arc::new(AtomicU64::new(0)), Some(meter.bytes))
        } else {
            (meter.bytes, None)
        };
        let mut reader = ChannelReader::new(rx, stored_counter);
        let outcome = (|| {
            let mut opener = Opener::hashing(&identities, &mut reader, stored).map_err(|e| match e {
                crypto::OpenError::NoMatchingKey => Error::Key(format!("the identity file does not decrypt `{obj}`: it matches none of the backup's recipients")),
                other => Error::Integrity { object: obj.clone(), reason: other.to_string() },
            })?;
            let value = match plaintext_counter {
                Some(counter) => consume(&mut Counted {
                    inner: &mut opener,
                    counter,
                })?,
                None => consume(&mut opener)?,
            };
            let digests = opener.finish_hashed().map_err(|e| Error::Integrity {
                object: obj.clone(),
                reason: e.to_string(),
            })?;
            Ok((value, digests))
        })();
        match (outcome, reader.take_failure()) {
            (Err(_), _) if cancel.load(std::sync::atomic::Ordering::Relaxed) => {
                Err(Error::Interrupted(
                    "the restore was stopped before it finished; nothing was put in place".into(),
                ))
            }
            (Err(_), Some(storage)) => Err(fetch_error(storage, &obj)),
            (outcome, _) => outcome,
        }
    });
    let result = worker.await.expect("restore worker panicked");
    pump.abort();
    result
}

/// A reader that adds what passes through to a progress counter.
struct Counted<'a, R: Read> {
    inner: &'a mut R,
    counter: Arc<AtomicU64>,
}

impl<R: Read> Read for Counted<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.counter.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

pub(crate) fn fetch_error(e: StorageError, object: &str) -> Error {
    match e.kind {
        StorageErrorKind::NotFound => Error::Integrity {
            object: object.into(),
            reason: "the object is missing from the repository".into(),
        },
        // `thaw` normally catches this first, with the storage class.
        StorageErrorKind::Archived => Error::Archived(format!(
            "`{object}` is in an archive storage class (GLACIER or DEEP_ARCHIVE) and has no retrieved copy; \
             `drctl restore POLICY --backup ID --wait` asks S3 for one and waits for it"
        )),
        _ => Error::Storage(e),
    }
}

fn check_digests(
    object: &str,
    record: &ObjectRecord,
    plain: &Hashed,
    stored: &Hashed,
) -> Result<()> {
    let want = &record.digests;
    let problem = if let Some(problem) = want.stored_mismatch(stored) {
        Some(problem)
    } else if plain.size != want.plaintext_size
        || plain.sha256.as_deref() != Some(want.plaintext_sha256.as_str())
    {
        Some("the decrypted data differs from what the manifest recorded".to_string())
    } else {
        None
    };
    match problem {
        Some(reason) => Err(Error::Integrity {
            object: object.into(),
            reason,
        }),
        None => Ok(()),
    }
}

/// Reads a small sealed object (the fingerprint) whole.
///
/// # Errors
/// As [`stream_object`].
pub async fn read_sealed(
    repo: &Repo,
    identities: &[age::x25519::Identity],
    record: &ObjectRecord,
) -> Result<Vec<u8>> {
    stream_object(repo, identities, record, Meter::default(), |r| {
        let mut out = Vec::new();
        r.read_to_end(&mut out)
            .map_err(|e| Error::io("reading the fingerprint", e))?;
        Ok(out)
    })
    .await
}

pub(crate) fn copy_out(from: &mut dyn Read, to: &mut dyn Write, what: &str) -> Result<()> {
    let mut buf = vec![0u8; WRITE_BYTES];
    loop {
        let n = from.read(&mut buf).map_err(|e| read_error(e, what))?;
        if n == 0 {
            return Ok(());
        }
        to.write_all(&buf[..n])
            .map_err(|e| Error::io(format!("writing to {what}"), e))?;
    }
}

/// A read failure inside the pipe is an authentication or decompression
/// failure; the caller turns it into `Integrity` naming the object.
pub(crate) fn read_error(e: std::io::Error, what: &str) -> Error {
    Error::Integrity {
        object: String::new(),
        reason: format!("{e} (while writing to {what})"),
    }
}

pub(crate) fn name_object(e: Error, object: &str) -> Error {
    match e {
        Error::Integrity { object: o, reason } if o.is_empty() => Error::Integrity {
            object: object.into(),
            reason,
        },
        other => other,
    }
}

/// Streams what `produce` writes through seal → upload into a new object.
///
/// # Errors
/// The producer's error, or the store's when the upload failed first.
pub async fn store_sealed<T, F>(
    repo: &Repo,
    key: &str,
    recipients: &[age::x25519::Recipient],
    level: i32,
    cancel: Arc<AtomicBool>,
    produce: F,
) -> Result<((Stored, Digests), T)>
where
    T: Send + 'static,
    F: FnOnce(&mut dyn Write) -> Result<T> + Send + 'static,
{
    store_sealed_with(
        repo,
        key,
        recipients,
        level,
        crate::pipeline::SealMode::BACKUP,
        cancel,
        produce,
    )
    .await
}

/// [`store_sealed`] spending what `mode` says (`SealMode::WAL` for WAL
/// segments, which several seals run at once).
///
/// # Errors
/// As [`store_sealed`].
pub async fn store_sealed_with<T, F>(
    repo: &Repo,
    key: &str,
    recipients: &[age::x25519::Recipient],
    level: i32,
    mode: crate::pipeline::SealMode,
    cancel: Arc<AtomicBool>,
    produce: F,
) -> Result<((Stored, Digests), T)>
where
    T: Send + 'static,
    F: FnOnce(&mut dyn Write) -> Result<T> + Send + 'static,
{
    let (tx, rx) = mpsc::channel::<Bytes>(mode.channel_chunks);
    let (done_tx, done_rx) = oneshot::channel();
    let recipients = recipients.to_vec();
    let producer = tokio::task::spawn_blocking(move || -> Result<(Digests, T)> {
        let mut sealer = Sealer::with_mode(
            &recipients,
            level,
            mode,
            ChannelWriter::new(tx, cancel.clone()),
        )
        .map_err(|e| Error::io("starting encryption", e))?;
        // Whatever error a cancelled write turned into on its way up through
        // the source (tar names the file it was writing), it means "stopped".
        let value = produce(&mut sealer).map_err(|e| match cancel.load(Ordering::Relaxed) {
            true => Error::Interrupted("the backup was cancelled".into()),
            false => e,
        })?;
        let (mut sink, digests) = sealer.finish().map_err(|e| match e.kind() {
            _ if crate::pipeline::channel::is_cancelled(&e) => {
                Error::Interrupted("the backup was cancelled".into())
            }
            _ => Error::io("finishing compression and encryption", e),
        })?;
        sink.flush()
            .map_err(|e| Error::io("the upload stopped", e))?;
        let _ = done_tx.send(());
        Ok((digests, value))
    });
    let uploaded = upload_stream(repo.store.as_ref(), key, rx, done_rx).await;
    let produced = producer.await.expect("backup producer panicked");
    match (produced, uploaded) {
        (Ok((digests, value)), Ok(stored)) => Ok(((stored, digests), value)),
        // The producer only sees a closed pipe; the store knows why.
        (Err(Error::Io { .. }), Err(store_err)) => Err(store_err.into()),
        (Err(e), _) => Err(e),
        (Ok(_), Err(e)) => Err(e.into()),
    }
}

/// Checks that an object is in the store at the size that was sent.
pub async fn confirm(repo: &Repo, key: &str, stored: &Stored, digests: &Digests) -> Result<()> {
    let meta = repo.store.head(key, stored.version_id.as_deref()).await?;
    if meta.size != digests.size || stored.size != digests.size {
        return Err(Error::Integrity {
            object: format!("{}/{key}", repo.store.location()),
            reason: format!(
                "stored size {} differs from the {} bytes sent",
                meta.size, digests.size
            ),
        });
    }
    Ok(())
}
