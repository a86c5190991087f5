//! Restore drills: restore a backup somewhere harmless, prove the data is
//! what was backed up, measure how long it took against the RTO and how old
//! the newest backup is against the RPO, and record it all in the repository
//! as a hash-chained record (see [`record`]).

pub mod record;

use bytes::Bytes;
use futures::StreamExt;

use crate::error::Result;
use crate::repo::Repo;
use crate::storage::PutMode;
use record::{DrillRecord, StoredRecord, record_sha256};

pub fn drills_prefix(policy: &str) -> String {
    format!("drills/{policy}/")
}

pub fn record_key(policy: &str, id: &str) -> String {
    format!("drills/{policy}/{id}.json")
}

/// Records fetched at once.
const LOAD_CONCURRENCY: usize = 16;

/// Every drill record of a policy, oldest first (ids sort by time), with
/// the exact bytes' sha256 for chain checking.
///
/// # Errors
/// Storage errors from listing or reading.
pub async fn load_records(repo: &Repo, policy: &str) -> Result<Vec<StoredRecord>> {
    let mut keys: Vec<String> = repo
        .store
        .list(&drills_prefix(policy))
        .await?
        .into_iter()
        .map(|o| o.key)
        .filter(|k| k.ends_with(".json"))
        .collect();
    keys.sort();
    let store = repo.store.clone();
    let fetched: Vec<Result<StoredRecord>> = futures::stream::iter(keys)
        .map(|key| {
            let store = store.clone();
            async move {
                let (bytes, _) = store.get(&key, None).await?;
                Ok(StoredRecord {
                    sha256: record_sha256(&bytes),
                    record: serde_json::from_slice::<DrillRecord>(&bytes)
                        .map_err(|e| e.to_string()),
                    key,
                })
            }
        })
        .buffered(LOAD_CONCURRENCY)
        .collect()
        .await;
    fetched.into_iter().collect()
}

/// Appends a record to the policy's chain: links it to the newest stored
/// record and writes it with a conditional create, so a record is never
/// overwritten.
///
/// # Errors
/// Storage errors; the record is returned as stored on success.
pub async fn append(repo: &Repo, mut record: DrillRecord) -> Result<DrillRecord> {
    let existing = load_records(repo, &record.policy).await?;
    record.previous_sha256 = existing.last().map(|r| r.sha256.clone());
    let body = serde_json::to_vec_pretty(&record).expect("drill record serialises");
    repo.store
        .put(
            &record_key(&record.policy, &record.id),
            Bytes::from(body),
            PutMode::Create,
        )
        .await?;
    Ok(record)
}
