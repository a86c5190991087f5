//! sha256-and-count adapters for either side of the pipe.
//!
//! The stored (encrypted) side can also be hashed in two halves, age's
//! header and its payload: a key rotation replaces the header and keeps the
//! payload byte for byte, so a digest of the payload alone is what lets a
//! rotated object be checked without the rotation reading it.

use std::io::{self, Read, Write};
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};

/// The longest age header drctl looks for: a few hundred bytes per
/// recipient, so this allows thousands.
pub const MAX_HEADER_BYTES: usize = 1024 * 1024;

/// What a stream hashed to. `sha256` is over every byte (absent when only
/// the halves were asked for); `split` is age's header and payload apart
/// (absent when not asked for, or when no complete header was seen).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Hashed {
    pub size: u64,
    pub sha256: Option<String>,
    pub split: Option<Split>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Split {
    pub header_size: u64,
    pub header_sha256: String,
    pub payload_sha256: String,
}

/// A SHA-256 of the whole stream, of its age header and payload apart, or
/// both.
#[derive(Clone)]
pub struct Hasher {
    whole: Option<Sha256>,
    split: Option<SplitState>,
    size: u64,
}

#[derive(Clone)]
enum SplitState {
    /// Bytes so far, while the header's end has not been seen.
    Header(Vec<u8>),
    Payload {
        header_size: u64,
        header_sha256: String,
        payload: Sha256,
    },
    /// No header end within [`MAX_HEADER_BYTES`]: not an age object.
    NoHeader,
}

impl Hasher {
    /// One digest of every byte.
    pub fn whole() -> Self {
        Self::new(true, false)
    }

    pub fn new(whole: bool, split: bool) -> Self {
        Hasher {
            whole: whole.then(Sha256::new),
            split: split.then(|| SplitState::Header(Vec::new())),
            size: 0,
        }
    }

    pub fn update(&mut self, data: &[u8]) {
        self.size += data.len() as u64;
        if let Some(w) = &mut self.whole {
            w.update(data);
        }
        let Some(split) = &mut self.split else {
            return;
        };
        match split {
            SplitState::Payload { payload, .. } => payload.update(data),
            SplitState::NoHeader => {}
            SplitState::Header(head) => {
                head.extend_from_slice(data);
                if let Some(end) = header_end(head) {
                    let mut payload = Sha256::new();
                    payload.update(&head[end..]);
                    *split = SplitState::Payload {
                        header_size: end as u64,
                        header_sha256: hex::encode(Sha256::digest(&head[..end])),
                        payload,
                    };
                } else if head.len() > MAX_HEADER_BYTES {
                    *split = SplitState::NoHeader;
                }
            }
        }
    }

    pub fn result(&self) -> Hashed {
        Hashed {
            size: self.size,
            sha256: self.whole.clone().map(|h| hex::encode(h.finalize())),
            split: match &self.split {
                Some(SplitState::Payload {
                    header_size,
                    header_sha256,
                    payload,
                }) => Some(Split {
                    header_size: *header_size,
                    header_sha256: header_sha256.clone(),
                    payload_sha256: hex::encode(payload.clone().finalize()),
                }),
                _ => None,
            },
        }
    }
}

/// Where an age v1 header ends: just after the newline of its `--- MAC`
/// line. Stanza lines start with `-> ` and their bodies are base64, so the
/// first line that starts with `---` is the MAC line.
pub fn header_end(bytes: &[u8]) -> Option<usize> {
    let at = memchr::memmem::find(bytes, b"\n--- ")?;
    let newline = memchr::memchr(b'\n', &bytes[at + 1..])?;
    Some(at + 1 + newline + 1)
}

pub struct HashWriter<W> {
    inner: W,
    hasher: Hasher,
}

impl<W> HashWriter<W> {
    pub fn new(inner: W) -> Self {
        Self::with(inner, Hasher::whole())
    }

    pub fn with(inner: W, hasher: Hasher) -> Self {
        HashWriter { inner, hasher }
    }

    pub fn into_parts(self) -> (W, Hashed) {
        (self.inner, self.hasher.result())
    }
}

impl<W: Write> Write for HashWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// A reading hasher whose result stays reachable through a [`HashHandle`]
/// after the reader has been moved into a stage that cannot give it back
/// (age's `StreamReader` has no `into_inner`).
pub struct HashReader<R> {
    inner: R,
    state: HashHandle,
}

#[derive(Clone)]
pub struct HashHandle(Arc<Mutex<Hasher>>);

impl HashHandle {
    pub fn result(&self) -> Hashed {
        self.0.lock().expect("hash state poisoned").result()
    }
}

impl<R> HashReader<R> {
    pub fn new(inner: R) -> Self {
        Self::with(inner, Hasher::whole())
    }

    pub fn with(inner: R, hasher: Hasher) -> Self {
        HashReader {
            inner,
            state: HashHandle(Arc::new(Mutex::new(hasher))),
        }
    }

    pub fn handle(&self) -> HashHandle {
        self.state.clone()
    }

    pub fn into_inner(self) -> R {
        self.inner
    }
}

impl<R: Read> Read for HashReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.state
            .0
            .lock()
            .expect("hash state poisoned")
            .update(&buf[..n]);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn halves_do_not_depend_on_how_the_stream_is_cut() {
        let object =
            b"age-encryption.org/v1\n-> X25519 abc\nQUJD\n--- bWFj\nPAYLOAD bytes".to_vec();
        let end = header_end(&object).unwrap();
        assert_eq!(&object[end..], b"PAYLOAD bytes");
        let want = Split {
            header_size: end as u64,
            header_sha256: hex::encode(Sha256::digest(&object[..end])),
            payload_sha256: hex::encode(Sha256::digest(&object[end..])),
        };
        for cut in 1..object.len() {
            let mut h = Hasher::new(true, true);
            h.update(&object[..cut]);
            h.update(&object[cut..]);
            let got = h.result();
            assert_eq!(got.split.as_ref(), Some(&want), "cut at {cut}");
            assert_eq!(got.sha256, Some(hex::encode(Sha256::digest(&object))));
            assert_eq!(got.size, object.len() as u64);
        }
    }

    #[test]
    fn no_header_no_halves() {
        let mut h = Hasher::new(false, true);
        h.update(b"not age at all\n");
        assert_eq!(h.result().split, None);
        assert_eq!(h.result().sha256, None);
    }
}
