//! sha256-and-count adapters for either side of the pipe.

use std::io::{self, Read, Write};
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};

pub struct Hashed {
    pub size: u64,
    pub sha256: String,
}

pub struct HashWriter<W> {
    inner: W,
    hasher: Sha256,
    size: u64,
}

impl<W> HashWriter<W> {
    pub fn new(inner: W) -> Self {
        HashWriter {
            inner,
            hasher: Sha256::new(),
            size: 0,
        }
    }

    pub fn into_parts(self) -> (W, Hashed) {
        (
            self.inner,
            Hashed {
                size: self.size,
                sha256: hex::encode(self.hasher.finalize()),
            },
        )
    }
}

impl<W: Write> Write for HashWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.size += n as u64;
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

#[derive(Clone, Default)]
pub struct HashHandle(Arc<Mutex<(Sha256, u64)>>);

impl HashHandle {
    pub fn result(&self) -> Hashed {
        let state = self.0.lock().expect("hash state poisoned");
        Hashed {
            size: state.1,
            sha256: hex::encode(state.0.clone().finalize()),
        }
    }
}

impl<R> HashReader<R> {
    pub fn new(inner: R) -> Self {
        HashReader {
            inner,
            state: HashHandle::default(),
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
        let mut state = self.state.0.lock().expect("hash state poisoned");
        state.0.update(&buf[..n]);
        state.1 += n as u64;
        Ok(n)
    }
}
