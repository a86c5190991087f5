//! Bridges between the blocking CPU stages and the async network task: a
//! `Write` that sends chunks into a bounded tokio channel, and a `Read` that
//! receives them. A closed channel becomes `BrokenPipe`, so a failed upload
//! stops the producer instead of letting it run on.

use std::io::{self, Read, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use bytes::{Bytes, BytesMut};
use tokio::sync::mpsc;

use super::CHUNK_BYTES;
use crate::error::StorageError;

/// The error a cancelled [`ChannelWriter`] fails with. Not
/// `ErrorKind::Interrupted`: `write_all` and `io::copy` retry that forever.
#[derive(Debug)]
pub struct Cancelled;

impl std::fmt::Display for Cancelled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the job was cancelled")
    }
}

impl std::error::Error for Cancelled {}

/// Whether `e` is (or wraps) the cancellation of a [`ChannelWriter`].
pub fn is_cancelled(e: &io::Error) -> bool {
    e.get_ref().is_some_and(|inner| inner.is::<Cancelled>())
}

pub struct ChannelWriter {
    tx: mpsc::Sender<Bytes>,
    buf: BytesMut,
    cancel: Arc<AtomicBool>,
}

impl ChannelWriter {
    /// `cancel` stops the producer at its next write, e.g. on SIGTERM or a
    /// lost lease; the write fails with `Interrupted`.
    pub fn new(tx: mpsc::Sender<Bytes>, cancel: Arc<AtomicBool>) -> Self {
        ChannelWriter {
            tx,
            buf: BytesMut::with_capacity(CHUNK_BYTES),
            cancel,
        }
    }

    fn send(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::replace(&mut self.buf, BytesMut::with_capacity(CHUNK_BYTES)).freeze();
        self.tx
            .blocking_send(chunk)
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the upload stopped"))
    }
}

impl Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.cancel.load(Ordering::Relaxed) {
            return Err(io::Error::other(Cancelled));
        }
        let take = (CHUNK_BYTES - self.buf.len()).min(data.len());
        self.buf.extend_from_slice(&data[..take]);
        if self.buf.len() >= CHUNK_BYTES {
            self.send()?;
        }
        Ok(take)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.send()
    }
}

pub struct ChannelReader {
    rx: mpsc::Receiver<Result<Bytes, StorageError>>,
    current: Bytes,
    /// Ciphertext bytes received so far, for progress reporting.
    received: Arc<AtomicU64>,
    failure: Option<StorageError>,
}

impl ChannelReader {
    pub fn new(rx: mpsc::Receiver<Result<Bytes, StorageError>>, received: Arc<AtomicU64>) -> Self {
        ChannelReader {
            rx,
            current: Bytes::new(),
            received,
            failure: None,
        }
    }

    /// The storage error that ended the stream, if one did.
    pub fn take_failure(&mut self) -> Option<StorageError> {
        self.failure.take()
    }
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            match self.rx.blocking_recv() {
                Some(Ok(chunk)) => {
                    self.received
                        .fetch_add(chunk.len() as u64, Ordering::Relaxed);
                    self.current = chunk;
                }
                Some(Err(e)) => {
                    let msg = e.to_string();
                    self.failure = Some(e);
                    return Err(io::Error::other(msg));
                }
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current.split_to(n));
        Ok(n)
    }
}
