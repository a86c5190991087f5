//! Named restore points made with `drctl mark`: the server's
//! `pg_create_restore_point` writes a record into the WAL, and drctl keeps
//! a note of it in the repository, so that `restore --to-name` can pick the
//! newest base backup consistent before the point and say when it was made.
//!
//! ```text
//! marks/<policy>/<YYYYMMDDTHHMMSSZ>-<name, filename-safe>.json
//! ```
//!
//! The note is plain JSON: a name chosen by an operator, an LSN and a time
//! reveal nothing of the data. It is written once and never changed.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::Lsn;
use crate::error::{Error, Result};
use crate::repo::Repo;
use crate::storage::PutMode;

/// A restore point, as recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mark {
    pub policy: String,
    pub name: String,
    pub lsn: Lsn,
    pub timeline: u32,
    /// The segment holding the restore point's record: it must be archived
    /// before a recovery can reach the point.
    pub wal_file: String,
    pub time: DateTime<Utc>,
    pub host: String,
}

pub fn prefix(policy: &str) -> String {
    format!("marks/{policy}/")
}

/// The key of a mark: time first, so a listing is in order.
pub fn key(mark: &Mark) -> String {
    let safe: String = mark
        .name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!(
        "{}{}-{safe}.json",
        prefix(&mark.policy),
        mark.time.format("%Y%m%dT%H%M%S%.3fZ")
    )
}

/// Checks a restore point name the way PostgreSQL does (it keeps at most
/// 63 bytes), so that the name drctl records is the name in the WAL.
///
/// # Errors
/// A description of what is wrong.
pub fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 63 {
        return Err(format!(
            "a restore point name has 1 to 63 bytes; `{}` has {}",
            name.escape_debug(),
            name.len()
        ));
    }
    if name.chars().any(char::is_control) {
        return Err("a restore point name has no control characters".into());
    }
    Ok(())
}

/// Records a mark.
///
/// # Errors
/// Storage errors.
pub async fn save(repo: &Repo, mark: &Mark) -> Result<String> {
    let key = key(mark);
    let body = serde_json::to_vec_pretty(mark).expect("a mark serialises");
    repo.store
        .put(&key, repo.sign(&key, body)?, PutMode::Create)
        .await?;
    Ok(key)
}

/// Every mark of a policy, oldest first. An unreadable note is skipped
/// with a warning: a mark only helps choose a base backup.
///
/// # Errors
/// Storage errors.
pub async fn load(repo: &Repo, policy: &str) -> Result<Vec<Mark>> {
    let mut marks = Vec::new();
    for (key, bytes) in crate::repo::read_json_objects(repo, &prefix(policy)).await? {
        if let Err(why) = repo.check_signature(&key, &bytes) {
            tracing::warn!(key = %key, "{why}");
            continue;
        }
        match serde_json::from_slice::<Mark>(&bytes) {
            Ok(m) if m.policy == policy => marks.push(m),
            Ok(_) => tracing::warn!(key = %key, "A mark names another policy; it is ignored."),
            Err(e) => {
                tracing::warn!(key = %key, error = %e, "A mark is not readable; it is ignored.")
            }
        }
    }
    marks.sort_by_key(|m| (m.time, m.lsn));
    Ok(marks)
}

/// `Error::Usage` for a bad name, for the command line.
pub fn usage(name: &str) -> Result<()> {
    check_name(name).map_err(|e| Error::Usage(format!("restore point name: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_sort_by_time_and_keep_names_safe() {
        let mark = Mark {
            policy: "db".into(),
            name: "before deploy/42".into(),
            lsn: "0/5000028".parse().unwrap(),
            timeline: 1,
            wal_file: "000000010000000000000005".into(),
            time: "2026-11-30T18:00:00.250Z".parse().unwrap(),
            host: "h".into(),
        };
        assert_eq!(
            key(&mark),
            "marks/db/20261130T180000.250Z-before_deploy_42.json"
        );
        let back: Mark = serde_json::from_str(&serde_json::to_string(&mark).unwrap()).unwrap();
        assert_eq!(back, mark);
        assert!(check_name("").is_err());
        assert!(check_name(&"x".repeat(64)).is_err());
        assert!(check_name("a\nb").is_err());
        assert!(check_name("release-1.2").is_ok());
    }
}
