//! The byte pipe between a source and the store, and back.
//!
//! Backup runs write-side adapters on a blocking thread:
//! `source → HashWriter (plaintext) → zstd → age → HashWriter (ciphertext) →
//! ChannelWriter`, and the async side uploads what the channel delivers.
//! Restore runs the same stages read-side, in reverse:
//! `ChannelReader → HashReader (ciphertext) → age → zstd → HashReader
//! (plaintext) → destination`. age has only a write-side encryptor and a
//! read-side decryptor, so each direction keeps one orientation throughout.
//!
//! Memory is bounded by [`CHANNEL_CHUNKS`] × [`CHUNK_BYTES`] on each side of
//! the channel plus the codecs' fixed windows.

pub mod channel;
pub mod crypto;
pub mod hash;
pub mod rewrap;

use std::io::{self, BufReader, Read, Write};

use serde::{Deserialize, Serialize};

pub use channel::{ChannelReader, ChannelWriter};
pub use hash::{HashHandle, HashReader, HashWriter};

/// Bytes per message between the CPU stages and the network task.
pub const CHUNK_BYTES: usize = 256 * 1024;
/// Messages the channel holds; with the chunk size this bounds its memory.
pub const CHANNEL_CHUNKS: usize = 8;
/// Compressed bytes per hand-over to the encrypting stage thread.
pub const STAGE_CHUNK_BYTES: usize = 256 * 1024;
/// Hand-overs in flight to the encrypting stage.
pub const STAGE_CHUNKS: usize = 4;
/// zstd worker threads for compression; 0 would compress on the caller's thread.
pub const ZSTD_WORKERS: u32 = 2;
/// What a seal spends besides the compression level: zstd worker threads,
/// and whether the stored bytes are hashed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SealMode {
    /// 0 compresses on the caller's thread, with one job's buffers instead
    /// of one per worker.
    pub zstd_workers: u32,
    /// Whether the stored bytes get the digests a manifest records (whole,
    /// and age's header and payload apart); without them they are counted.
    pub stored_digests: bool,
    /// Hand-overs in flight to the encrypting stage thread.
    pub stage_chunks: usize,
    /// Messages in flight from the sealing thread to the store's upload.
    pub channel_chunks: usize,
}

impl SealMode {
    /// A backup object: [`ZSTD_WORKERS`], and the digests its manifest records.
    pub const BACKUP: SealMode = SealMode {
        zstd_workers: ZSTD_WORKERS,
        stored_digests: true,
        stage_chunks: STAGE_CHUNKS,
        channel_chunks: CHANNEL_CHUNKS,
    };
    /// A WAL segment. No zstd workers: a 16 MiB segment compresses in tens
    /// of milliseconds on one thread, and `wal-push` seals several at once,
    /// each worker adding its own job buffers to the command's peak memory.
    /// No stored digests: nothing records them (a WAL object's key names
    /// its plaintext's SHA-256, which is what `wal-fetch` checks, and age
    /// authenticates every chunk), so the two passes over the ciphertext
    /// would be spent for nothing on every segment. Half the hand-overs in
    /// flight: a segment is small, and look-ahead seals three at once
    /// (docs/benchmarks.md, "WAL archiving").
    pub const WAL: SealMode = SealMode {
        zstd_workers: 0,
        stored_digests: false,
        stage_chunks: STAGE_CHUNKS / 2,
        channel_chunks: CHANNEL_CHUNKS / 2,
    };
}

/// Input per zstd worker job. The default (4× the window) keeps about 60 MiB
/// in flight with two workers; 2 MiB keeps peak memory near 30 MiB for a
/// ratio within a fraction of a percent (measured in docs/benchmarks.md).
pub const ZSTD_JOB_BYTES: u32 = 2 * 1024 * 1024;

/// Sizes and sha256 digests of both sides of a sealed stream.
///
/// The stored side has a digest of every byte (`sha256`), and of age's
/// header and payload apart. A key rotation writes a new header before the
/// same payload without reading the payload, so a rotated object has only
/// the halves; drctl checks whichever the record has (the whole if both).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Digests {
    pub plaintext_size: u64,
    pub plaintext_sha256: String,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header_size: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header_sha256: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload_sha256: Option<String>,
}

impl Digests {
    pub fn new(plain: &hash::Hashed, stored: &hash::Hashed) -> Self {
        let split = stored.split.as_ref();
        Digests {
            plaintext_size: plain.size,
            plaintext_sha256: plain.sha256.clone().unwrap_or_default(),
            size: stored.size,
            sha256: stored.sha256.clone(),
            header_size: split.map(|s| s.header_size),
            header_sha256: split.map(|s| s.header_sha256.clone()),
            payload_sha256: split.map(|s| s.payload_sha256.clone()),
        }
    }

    /// The hasher that computes what this record can be checked against:
    /// the whole object when the record has its digest (cheaper: one pass),
    /// else the header and payload apart.
    pub fn stored_hasher(&self) -> hash::Hasher {
        match self.sha256 {
            Some(_) => hash::Hasher::whole(),
            None => hash::Hasher::new(false, true),
        }
    }

    /// Why `got`, what the stored bytes hashed to, does not match this
    /// record, if it does not.
    pub fn stored_mismatch(&self, got: &hash::Hashed) -> Option<String> {
        if got.size != self.size {
            return Some(format!(
                "{} bytes read, the manifest says {}",
                got.size, self.size
            ));
        }
        if let Some(want) = &self.sha256 {
            return (got.sha256.as_ref() != Some(want))
                .then(|| "the SHA-256 of the stored bytes differs from the manifest".to_string());
        }
        let (Some(size), Some(header), Some(payload)) =
            (self.header_size, &self.header_sha256, &self.payload_sha256)
        else {
            return Some("the manifest records no digest of the stored bytes".into());
        };
        match &got.split {
            None => Some("the stored bytes do not begin with a complete age header".into()),
            Some(s) if s.header_size != size || &s.header_sha256 != header => {
                Some("the age header of the stored bytes differs from the manifest".into())
            }
            Some(s) if &s.payload_sha256 != payload => {
                Some("the SHA-256 of the stored payload differs from the manifest".into())
            }
            Some(_) => None,
        }
    }
}

/// The write side: plaintext in, compressed and encrypted bytes out to `W`.
///
/// Two threads share the work, as `zstd | age` would in a shell: the
/// caller's thread hashes the plaintext and feeds zstd (whose workers
/// compress), and a stage thread encrypts and hashes the compressed bytes.
pub struct Sealer<W: Write + Send + 'static> {
    inner: HashWriter<zstd::stream::write::Encoder<'static, StageWriter<W>>>,
}

type StageResult<W> = io::Result<(W, hash::Hashed)>;

/// Hands compressed bytes to the encrypting stage thread.
struct StageWriter<W> {
    /// `Some(bytes)` carries data; `None` says the stream is complete. A
    /// channel closed without `None` means the producer failed, and the
    /// stage must not finish the age stream.
    tx: Option<std::sync::mpsc::SyncSender<Option<Vec<u8>>>>,
    stage: Option<std::thread::JoinHandle<StageResult<W>>>,
    buf: Vec<u8>,
}

impl<W> StageWriter<W> {
    fn send(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(STAGE_CHUNK_BYTES));
        let sent = self
            .tx
            .as_ref()
            .is_some_and(|tx| tx.send(Some(chunk)).is_ok());
        if sent {
            return Ok(());
        }
        // The stage stopped: its own error says why (a cancelled or failed upload).
        Err(match self.join() {
            Err(e) => e,
            Ok(_) => io::Error::new(io::ErrorKind::BrokenPipe, "the encryption stage stopped"),
        })
    }

    fn end(&mut self) -> StageResult<W> {
        self.send()?;
        if let Some(tx) = &self.tx {
            let _ = tx.send(None);
        }
        self.join()
    }

    fn join(&mut self) -> StageResult<W> {
        self.tx = None;
        match self.stage.take() {
            Some(handle) => handle
                .join()
                .unwrap_or_else(|_| Err(io::Error::other("the encryption stage panicked"))),
            None => Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the encryption stage already ended",
            )),
        }
    }
}

impl<W> Write for StageWriter<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let take = (STAGE_CHUNK_BYTES - self.buf.len()).min(data.len());
        self.buf.extend_from_slice(&data[..take]);
        if self.buf.len() >= STAGE_CHUNK_BYTES {
            self.send()?;
        }
        Ok(take)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.send()
    }
}

impl<W: Write + Send + 'static> Sealer<W> {
    /// # Errors
    /// If a recipient cannot wrap the key or the first write fails.
    pub fn new(recipients: &[age::x25519::Recipient], level: i32, out: W) -> io::Result<Self> {
        Self::with_mode(recipients, level, SealMode::BACKUP, out)
    }

    /// As [`Sealer::new`], spending what `mode` says.
    ///
    /// # Errors
    /// As [`Sealer::new`].
    pub fn with_mode(
        recipients: &[age::x25519::Recipient],
        level: i32,
        mode: SealMode,
        out: W,
    ) -> io::Result<Self> {
        let encryptor =
            age::Encryptor::with_recipients(recipients.iter().map(|r| r as &dyn age::Recipient))
                .map_err(|e| io::Error::other(format!("cannot encrypt to the recipients: {e}")))?;
        let (tx, rx) = std::sync::mpsc::sync_channel::<Option<Vec<u8>>>(mode.stage_chunks);
        let stage = std::thread::Builder::new()
            .name("drctl-encrypt".into())
            .spawn(move || -> StageResult<W> {
                // A backup object gets both the whole digest (what every
                // reader checks) and the halves (what a later key rotation
                // keeps): two passes over the payload, measured in
                // docs/benchmarks.md. A WAL segment gets neither.
                let stored = mode.stored_digests;
                let hashing = HashWriter::with(out, hash::Hasher::new(stored, stored));
                let mut encrypted = encryptor.wrap_output(hashing)?;
                loop {
                    match rx.recv() {
                        Ok(Some(chunk)) => encrypted.write_all(&chunk)?,
                        Ok(None) => break,
                        Err(_) => {
                            return Err(io::Error::new(
                                io::ErrorKind::BrokenPipe,
                                "the data stream stopped before its end",
                            ));
                        }
                    }
                }
                let hashed = encrypted.finish()?;
                let (mut out, cipher) = hashed.into_parts();
                out.flush()?;
                Ok((out, cipher))
            })?;
        let staged = StageWriter {
            tx: Some(tx),
            stage: Some(stage),
            buf: Vec::with_capacity(STAGE_CHUNK_BYTES),
        };
        let mut zstd = zstd::stream::write::Encoder::new(staged, level)?;
        if mode.zstd_workers > 0 {
            zstd.multithread(mode.zstd_workers)?;
            zstd.set_parameter(zstd::zstd_safe::CParameter::JobSize(ZSTD_JOB_BYTES))?;
        }
        Ok(Sealer {
            inner: HashWriter::new(zstd),
        })
    }

    /// Ends every stage in order (zstd frame, age's last chunk) and returns
    /// the sink with the digests. Without this the object would be truncated.
    ///
    /// # Errors
    /// Any error from a stage or the sink.
    pub fn finish(self) -> io::Result<(W, Digests)> {
        let (zstd, plain) = self.inner.into_parts();
        let mut staged = zstd.finish()?;
        let (out, cipher) = staged.end()?;
        Ok((out, Digests::new(&plain, &cipher)))
    }
}

impl<W: Write + Send + 'static> Write for Sealer<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.inner.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        // A flush here would end a zstd block early and cost ratio; the
        // stages are flushed once, in `finish`.
        Ok(())
    }
}

type PlainReader<R> = HashReader<
    zstd::stream::read::Decoder<'static, BufReader<age::stream::StreamReader<HashReader<R>>>>,
>;

/// The read side: encrypted bytes in, authenticated plaintext out.
pub struct Opener<R: Read> {
    inner: PlainReader<R>,
    plain: HashHandle,
    cipher: HashHandle,
}

impl<R: Read> Opener<R> {
    /// # Errors
    /// If the header is not age, or no identity matches a recipient.
    pub fn new(identities: &[age::x25519::Identity], input: R) -> Result<Self, crypto::OpenError> {
        Self::hashing(identities, input, hash::Hasher::whole())
    }

    /// As [`Opener::new`], hashing the stored bytes with `stored` (see
    /// [`Digests::stored_hasher`]).
    ///
    /// # Errors
    /// As [`Opener::new`].
    pub fn hashing(
        identities: &[age::x25519::Identity],
        input: R,
        stored: hash::Hasher,
    ) -> Result<Self, crypto::OpenError> {
        let hashed = HashReader::with(input, stored);
        let cipher = hashed.handle();
        let decryptor = age::Decryptor::new(hashed).map_err(crypto::OpenError::from_age)?;
        let plain = decryptor
            .decrypt(identities.iter().map(|i| i as &dyn age::Identity))
            .map_err(crypto::OpenError::from_age)?;
        let zstd = zstd::stream::read::Decoder::new(plain).map_err(crypto::OpenError::Io)?;
        let inner = HashReader::new(zstd);
        Ok(Opener {
            plain: inner.handle(),
            inner,
            cipher,
        })
    }

    /// Reads whatever is left of the input (so age checks its final chunk and
    /// the ciphertext hash covers every byte) and returns the digests.
    ///
    /// # Errors
    /// Trailing data, truncation or tampering after the last zstd frame.
    pub fn finish(self) -> io::Result<Digests> {
        let (plain, stored) = self.finish_hashed()?;
        Ok(Digests::new(&plain, &stored))
    }

    /// As [`Opener::finish`], with what the plaintext and the stored bytes
    /// hashed to, for [`Digests::stored_mismatch`].
    ///
    /// # Errors
    /// As [`Opener::finish`].
    pub fn finish_hashed(mut self) -> io::Result<(hash::Hashed, hash::Hashed)> {
        // A consumer may stop at its own end marker (tar does): whatever
        // plaintext is left must still pass through the hash.
        io::copy(&mut self.inner, &mut io::sink())?;
        let mut decrypted = self.inner.into_inner().finish();
        let trailing = io::copy(&mut decrypted, &mut io::sink())?;
        if trailing > 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{trailing} bytes after the end of the compressed stream"),
            ));
        }
        Ok((self.plain.result(), self.cipher.result()))
    }
}

impl<R: Read> Read for Opener<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner.read(buf)
    }
}

/// Seals a small in-memory value (the fingerprint) in one go.
///
/// # Errors
/// As [`Sealer::new`].
pub fn seal_bytes(
    recipients: &[age::x25519::Recipient],
    level: i32,
    data: &[u8],
) -> io::Result<(Vec<u8>, Digests)> {
    let mut s = Sealer::new(recipients, level, Vec::new())?;
    s.write_all(data)?;
    s.finish()
}

/// Opens a small sealed value and returns its plaintext.
///
/// # Errors
/// Wrong key, tampering or truncation.
pub fn open_bytes(
    identities: &[age::x25519::Identity],
    data: &[u8],
) -> Result<(Vec<u8>, Digests), crypto::OpenError> {
    let mut o = Opener::new(identities, data)?;
    let mut out = Vec::new();
    o.read_to_end(&mut out).map_err(crypto::OpenError::Io)?;
    let d = o.finish().map_err(crypto::OpenError::Io)?;
    Ok((out, d))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key() -> (age::x25519::Identity, age::x25519::Recipient) {
        let id = age::x25519::Identity::generate();
        let r = id.to_public();
        (id, r)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        #[test]
        fn seal_then_open_is_identity(data in proptest::collection::vec(any::<u8>(), 0..300_000), level in 1i32..6) {
            let (id, r) = key();
            let (sealed, d1) = seal_bytes(&[r], level, &data).unwrap();
            let (plain, d2) = open_bytes(std::slice::from_ref(&id), &sealed).unwrap();
            prop_assert_eq!(&plain, &data);
            prop_assert_eq!((&d1.plaintext_sha256, d1.plaintext_size, &d1.sha256, d1.size), (&d2.plaintext_sha256, d2.plaintext_size, &d2.sha256, d2.size));
            // The halves recorded at sealing check the same bytes, as a
            // rotated record (without the whole digest) would.
            let rotated = Digests { sha256: None, ..d1.clone() };
            let mut o = Opener::hashing(&[id], &sealed[..], rotated.stored_hasher()).unwrap();
            std::io::copy(&mut o, &mut std::io::sink()).unwrap();
            let (_, stored) = o.finish_hashed().unwrap();
            prop_assert_eq!(rotated.stored_mismatch(&stored), None::<String>);
            let split = stored.split.unwrap();
            prop_assert_eq!(crate::pipeline::hash::header_end(&sealed), Some(split.header_size as usize));
        }
    }

    #[test]
    fn a_wal_seal_counts_the_stored_bytes_without_hashing_them() {
        let (id, r) = key();
        let data: Vec<u8> = (0..500_000u32).map(|i| (i * 31 % 253) as u8).collect();
        let mut s =
            Sealer::with_mode(std::slice::from_ref(&r), 3, SealMode::WAL, Vec::new()).unwrap();
        s.write_all(&data).unwrap();
        let (sealed, wal) = s.finish().unwrap();
        let (plain, opened) = open_bytes(&[id], &sealed).unwrap();
        assert_eq!(plain, data);
        assert_eq!(
            (wal.size, wal.plaintext_size),
            (sealed.len() as u64, data.len() as u64)
        );
        assert_eq!(wal.plaintext_sha256, opened.plaintext_sha256);
        assert_eq!(
            (wal.sha256, wal.header_sha256, wal.payload_sha256),
            (None, None, None)
        );
    }

    #[test]
    fn any_flipped_byte_is_detected() {
        let (id, r) = key();
        let data: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let (sealed, _) = seal_bytes(&[r], 3, &data).unwrap();
        for pos in [0, 40, sealed.len() / 2, sealed.len() - 1] {
            let mut bad = sealed.clone();
            bad[pos] ^= 0x01;
            assert!(
                open_bytes(std::slice::from_ref(&id), &bad).is_err(),
                "flip at {pos} went unnoticed"
            );
        }
    }

    #[test]
    fn truncation_is_detected() {
        let (id, r) = key();
        let data = vec![42u8; 300_000];
        let (sealed, _) = seal_bytes(&[r], 3, &data).unwrap();
        for cut in [sealed.len() - 1, sealed.len() - 17, sealed.len() / 2] {
            assert!(
                open_bytes(std::slice::from_ref(&id), &sealed[..cut]).is_err(),
                "cut at {cut} went unnoticed"
            );
        }
    }

    #[test]
    fn wrong_key_is_refused() {
        let (_, r) = key();
        let (other, _) = key();
        let (sealed, _) = seal_bytes(&[r], 3, b"hello").unwrap();
        assert!(matches!(
            open_bytes(&[other], &sealed),
            Err(crypto::OpenError::NoMatchingKey)
        ));
    }
}
