//! Multipart uploads with memory that does not grow: parts that do not fit
//! the store's part-memory budget are assembled in spill files (ciphertext
//! only) and sent from there. What must hold: an object written from
//! spilled parts reads back byte for byte, uploads running at once share one
//! budget, and an upload that fails part-way leaves neither an object nor a
//! multipart upload nor a spill file behind.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use common::{FaultProxy, Faults, S3Server, block_on, unique_bucket_name};
use drctl::storage::s3::{FIRST_PART_BYTES, PART_MEMORY_BYTES, S3Store};
use drctl::storage::{Store, upload_stream};
use futures::StreamExt;
use sha2::{Digest, Sha256};

const MIB: usize = 1024 * 1024;

/// Incompressible, reproducible bytes: SHA-256 in counter mode.
fn synthetic(seed: u64, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 32);
    let mut n = 0u64;
    while out.len() < len {
        out.extend_from_slice(&Sha256::digest(
            [seed.to_le_bytes(), n.to_le_bytes()].concat(),
        ));
        n += 1;
    }
    out.truncate(len);
    out
}

fn store(s3: &str, bucket: &str, memory: usize, spill: &Path) -> Arc<S3Store> {
    Arc::new(
        S3Store::from_client(common::s3_client(s3), bucket, "repo", s3)
            .with_part_memory(memory, spill.to_path_buf()),
    )
}

/// Sends `data` in 256 KiB chunks, as the sealing pipeline does; with
/// `finish` false the producer stops without saying it is done, as one
/// that failed.
async fn upload(store: &S3Store, key: &str, data: &[u8], finish: bool) -> Result<u64, String> {
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(8);
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    let chunks: Vec<Bytes> = data
        .chunks(256 * 1024)
        .map(Bytes::copy_from_slice)
        .collect();
    let producer = tokio::spawn(async move {
        for c in chunks {
            if tx.send(c).await.is_err() {
                return;
            }
        }
        if finish {
            let _ = done_tx.send(());
        }
    });
    let result = upload_stream(store, key, rx, done_rx).await;
    producer.await.unwrap();
    result.map(|s| s.size).map_err(|e| e.to_string())
}

async fn read_back(store: &S3Store, key: &str) -> Vec<u8> {
    let mut stream = store.get_stream(key, None).await.expect("object exists");
    let mut out = Vec::new();
    while let Some(chunk) = stream.next().await {
        out.extend_from_slice(&chunk.expect("body reads"));
    }
    out
}

fn files_in(dir: &Path) -> Vec<String> {
    match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => Vec::new(),
    }
}

#[test]
fn objects_written_from_spilled_parts_read_back_byte_for_byte() {
    let s3 = S3Server::start();
    let bucket = unique_bucket_name("spilled");
    let spill = tempfile::tempdir().unwrap();
    let spill_dir = spill.path().join("parts");
    block_on(async {
        s3.create_bucket(&bucket, true).await;
        // No memory at all: every part, and the single PUT body, comes from
        // a spill file.
        let store = store(&s3.endpoint(), &bucket, 0, &spill_dir);
        for (key, len) in [
            ("multipart", 2 * FIRST_PART_BYTES + 3 * MIB + 17),
            ("exact-parts", 2 * FIRST_PART_BYTES),
            ("single-put", 3 * MIB + 1),
            ("empty", 0),
        ] {
            let data = synthetic(len as u64, len);
            let size = upload(&store, key, &data, true)
                .await
                .unwrap_or_else(|e| panic!("{key}: {e}"));
            assert_eq!(size, len as u64, "{key}");
            let back = read_back(&store, key).await;
            assert!(back == data, "{key}: the object differs from what was sent");
        }
        assert_eq!(s3.list_multipart_uploads(&bucket).await, 0);
    });
    let mode = std::fs::metadata(&spill_dir).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o700, "the spill directory is private");
    assert_eq!(
        files_in(&spill_dir),
        Vec::<String>::new(),
        "spill files removed"
    );
}

#[test]
fn concurrent_uploads_share_one_memory_budget_and_spill_the_rest() {
    let s3 = S3Server::start();
    let bucket = unique_bucket_name("budget");
    let spill = tempfile::tempdir().unwrap();
    let spill_dir = spill.path().join("parts");
    block_on(async {
        s3.create_bucket(&bucket, false).await;
        let store = store(&s3.endpoint(), &bucket, PART_MEMORY_BYTES, &spill_dir);
        let len = 2 * FIRST_PART_BYTES + MIB;
        let data: Vec<Vec<u8>> = (0..3).map(|i| synthetic(i, len)).collect();
        let keys: Vec<String> = (0..3).map(|i| format!("wal-{i}")).collect();
        let results = futures::future::join_all(
            keys.iter()
                .zip(&data)
                .map(|(k, d)| upload(&store, k, d, true)),
        )
        .await;
        for (i, r) in results.into_iter().enumerate() {
            assert_eq!(r.unwrap(), len as u64, "upload {i}");
            assert!(read_back(&store, &format!("wal-{i}")).await == data[i]);
        }
    });
    // Three uploads of three parts each cannot all fit three parts of
    // memory: the directory exists because some parts were spilled.
    assert!(spill_dir.is_dir(), "no part was spilled");
    assert_eq!(
        files_in(&spill_dir),
        Vec::<String>::new(),
        "spill files removed"
    );
}

#[test]
fn a_producer_that_fails_mid_spill_leaves_no_object_and_no_spill_file() {
    let s3 = S3Server::start();
    let bucket = unique_bucket_name("spill-fail");
    let spill = tempfile::tempdir().unwrap();
    let spill_dir = spill.path().join("parts");
    block_on(async {
        s3.create_bucket(&bucket, false).await;
        let store = store(&s3.endpoint(), &bucket, 0, &spill_dir);
        let data = synthetic(7, 2 * FIRST_PART_BYTES + 2 * MIB);
        let err = upload(&store, "half", &data, false).await.unwrap_err();
        assert!(err.contains("ended early"), "{err}");
        assert!(s3.list_keys(&bucket, "").await.is_empty(), "no object");
        assert_eq!(
            s3.list_multipart_uploads(&bucket).await,
            0,
            "upload aborted"
        );
    });
    assert_eq!(
        files_in(&spill_dir),
        Vec::<String>::new(),
        "spill files removed"
    );
}

#[test]
fn an_s3_failure_mid_spill_leaves_no_object_and_no_spill_file() {
    let s3 = S3Server::start();
    let proxy = FaultProxy::start(&s3.endpoint(), Faults::none());
    let bucket = unique_bucket_name("spill-s3-fail");
    let spill = tempfile::tempdir().unwrap();
    let spill_dir = spill.path().join("parts");
    block_on(async {
        s3.create_bucket(&bucket, false).await;
        let store = store(&proxy.endpoint(), &bucket, 0, &spill_dir);
        // Parts 1 and 2 go through; every later part is throttled until
        // the SDK gives up.
        let data = synthetic(9, 4 * FIRST_PART_BYTES);
        let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(8);
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        let uploading = {
            let store = store.clone();
            tokio::spawn(async move { upload_stream(store.as_ref(), "broken", rx, done_rx).await })
        };
        let mut sent = 0;
        for chunk in data.chunks(256 * 1024) {
            if sent == 2 * FIRST_PART_BYTES {
                proxy.set_faults(Faults {
                    slowdown_503: 1.0,
                    ..Faults::none()
                });
            }
            if tx.send(Bytes::copy_from_slice(chunk)).await.is_err() {
                break;
            }
            sent += chunk.len();
        }
        let _ = done_tx.send(());
        let err = uploading.await.unwrap().unwrap_err().to_string();
        assert!(err.contains("broken"), "the error names the object: {err}");
        proxy.set_faults(Faults::none());
        assert!(s3.list_keys(&bucket, "").await.is_empty(), "no object");
    });
    assert_eq!(
        files_in(&spill_dir),
        Vec::<String>::new(),
        "spill files removed"
    );
}

/// Peak memory of one upload whose parts grow far past the part budget, as
/// those of a backup past 60 GiB do (48 MiB parts from 42 GB stored). Part
/// sizes double every 4 parts here instead of every 1,000, so 256 MiB
/// reach 48 MiB parts, 2.7 times the 18 MiB budget. The upload runs in a
/// child process of its own, so that its peak RSS is not other tests'.
#[test]
fn memory_stays_flat_while_parts_grow_past_the_budget() {
    const LEN: usize = 256 * MIB;
    const CHILD: &str = "DRCTL_TEST_GROWING_PARTS";
    if let Ok(target) = std::env::var(CHILD) {
        let (endpoint, bucket) = target.split_once(' ').expect("endpoint and bucket");
        let spill = tempfile::tempdir().unwrap();
        let store = S3Store::from_client(common::s3_client(endpoint), bucket, "repo", endpoint)
            .with_part_memory(PART_MEMORY_BYTES, spill.path().join("parts"))
            .with_parts_per_size_step(4);
        let (size, sha) = block_on(async {
            let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(8);
            let (done_tx, done_rx) = tokio::sync::oneshot::channel();
            // The stream is generated as it is sent, never held whole.
            let producer = tokio::spawn(async move {
                let mut sha = Sha256::new();
                let mut sent = 0;
                let mut seed = 0u64;
                while sent < LEN {
                    let chunk = synthetic(seed, (256 * 1024).min(LEN - sent));
                    seed += 1;
                    sent += chunk.len();
                    sha.update(&chunk);
                    if tx.send(Bytes::from(chunk)).await.is_err() {
                        break;
                    }
                }
                let _ = done_tx.send(());
                hex::encode(sha.finalize())
            });
            let stored = upload_stream(&store, "big", rx, done_rx)
                .await
                .expect("the upload completes");
            (stored.size, producer.await.unwrap())
        });
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let hwm = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .expect("VmHWM");
        println!("GROWING-PARTS size={size} sha256={sha} peak_kib={hwm}");
        return;
    }

    let s3 = S3Server::start();
    let bucket = unique_bucket_name("growing");
    block_on(s3.create_bucket(&bucket, false));
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "memory_stays_flat_while_parts_grow_past_the_budget",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD, format!("{} {bucket}", s3.endpoint()))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "child failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = stdout
        .lines()
        .find_map(|l| l.split_once("GROWING-PARTS ").map(|(_, rest)| rest))
        .unwrap_or_else(|| panic!("no result line:\n{stdout}"));
    let field = |name: &str| {
        line.split(' ')
            .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
            .unwrap()
            .to_string()
    };
    assert_eq!(field("size"), LEN.to_string());
    let peak_mib = field("peak_kib").parse::<u64>().unwrap() / 1024;
    assert!(
        peak_mib < 64,
        "peak RSS {peak_mib} MiB while parts grew to 48 MiB: memory grows with the part size"
    );

    // The object is the stream, and it was sent in parts that grew.
    let store = store(
        &s3.endpoint(),
        &bucket,
        PART_MEMORY_BYTES,
        Path::new("/nonexistent"),
    );
    let sha = block_on(async {
        let mut stream = store.get_stream("big", None).await.expect("object exists");
        let mut sha = Sha256::new();
        while let Some(chunk) = stream.next().await {
            sha.update(chunk.expect("body reads"));
        }
        hex::encode(sha.finalize())
    });
    assert_eq!(sha, field("sha256"), "the object differs from the stream");
    // A multipart ETag ends in the number of parts: 4 each of 6, 12 and 24
    // MiB, then 48 and 40 MiB make 14 (6 MiB parts throughout would be 43).
    let head = block_on(
        s3.client()
            .head_object()
            .bucket(&bucket)
            .key("repo/big")
            .send(),
    )
    .expect("head the object");
    let etag = head
        .e_tag()
        .unwrap_or_default()
        .trim_matches('"')
        .to_string();
    assert!(
        etag.ends_with("-14"),
        "ETag {etag}: expected 14 growing parts"
    );
}
