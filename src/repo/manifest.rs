//! The manifest: the record that makes a backup exist. Written last, after
//! every object it names is stored and checked. Holds sizes, digests and
//! versions, never database content (the fingerprint, which names tables, is
//! a sealed object of its own).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::pipeline::Digests;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    pub id: String,
    pub policy: String,
    /// `postgres`, `postgres-cluster` or `files`.
    pub kind: String,
    /// The instant the data is from: the snapshot's time for postgres, the
    /// start of the walk for files.
    pub point_in_time: DateTime<Utc>,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    pub host: String,
    pub tool_version: String,
    pub compression: Compression,
    /// Public keys the data is encrypted to.
    pub recipients: Vec<String>,
    pub data: ObjectRecord,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<ObjectRecord>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub postgres: Option<PostgresInfo>,
    /// What the backup could not take as it was: files skipped under
    /// `on_unreadable = "skip"`, files that changed while they were read.
    /// Names file paths (which the policy lists anyway) and never content;
    /// absent when there is nothing to say, as in older manifests.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// For a `postgres-cluster` base backup: its WAL range and server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<crate::source::pgcluster::ClusterInfo>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Compression {
    pub algorithm: String,
    pub level: i32,
}

/// One stored object: where it is, which version, and what it must hash to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectRecord {
    pub key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version_id: Option<String>,
    /// What the plaintext is: `pg_dump-custom`, `tar`, `basebackup-tar`,
    /// `fingerprint-json`.
    pub content: String,
    #[serde(flatten)]
    pub digests: Digests,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PostgresInfo {
    pub server_version: String,
    pub pg_dump_version: String,
    pub database: String,
    pub snapshot: String,
}

impl Manifest {
    pub fn duration_seconds(&self) -> f64 {
        (self.finished_at - self.started_at).num_milliseconds() as f64 / 1000.0
    }

    pub fn objects(&self) -> impl Iterator<Item = &ObjectRecord> {
        std::iter::once(&self.data).chain(self.fingerprint.as_ref())
    }

    /// Why this manifest, read from `key`, cannot be a backup of `policy`,
    /// if it cannot. A manifest only speaks for its own directory: it must
    /// stand at its own id's place, and every object it names must be inside
    /// `backups/<policy>/<id>/`. Otherwise whoever can write one manifest
    /// could have drctl read (and print the size of) any key in the store,
    /// a path outside a local repository, or another backup's data.
    pub fn check_location(&self, policy: &str, key: &str) -> Result<(), String> {
        if self.policy != policy
            || !is_plain_segment(&self.id)
            || key != super::manifest_key(policy, &self.id)
        {
            return Err(format!(
                "manifest names policy `{}` and id `{}`, not its own location",
                self.policy, self.id
            ));
        }
        let dir = super::backup_dir(policy, &self.id);
        for record in self.objects() {
            let inside = record
                .key
                .strip_prefix(&dir)
                .is_some_and(|rest| !rest.is_empty() && rest.split('/').all(is_plain_segment));
            if !inside {
                return Err(format!(
                    "manifest names object `{}`, which is outside its backup's directory `{dir}`",
                    record.key.escape_debug()
                ));
            }
        }
        Ok(())
    }
}

/// A path segment that names a child and nothing else: not empty, not `.`
/// or `..`, without separators or control characters.
fn is_plain_segment(segment: &str) -> bool {
    !segment.is_empty()
        && segment != "."
        && segment != ".."
        && !segment.contains(['/', '\\'])
        && !segment.chars().any(char::is_control)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn digest() -> impl Strategy<Value = Digests> {
        (any::<u64>(), "[0-9a-f]{64}", any::<u64>(), "[0-9a-f]{64}").prop_map(|(a, b, c, d)| {
            Digests {
                plaintext_size: a,
                plaintext_sha256: b,
                size: c,
                sha256: Some(d),
                ..Default::default()
            }
        })
    }

    fn sample() -> Manifest {
        let t = DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        let record = |key: &str| ObjectRecord {
            key: key.into(),
            version_id: None,
            content: "pg_dump-custom".into(),
            digests: Digests {
                plaintext_size: 1,
                plaintext_sha256: String::new(),
                size: 1,
                sha256: Some(String::new()),
                ..Default::default()
            },
        };
        Manifest {
            format: 1,
            id: "20261127T012000Z-0000abcd".into(),
            policy: "shop".into(),
            kind: "postgres".into(),
            point_in_time: t,
            started_at: t,
            finished_at: t,
            host: "db1".into(),
            tool_version: "0.1.0".into(),
            compression: Compression {
                algorithm: "zstd".into(),
                level: 3,
            },
            recipients: vec![],
            data: record("backups/shop/20261127T012000Z-0000abcd/data.pgdump.zst.age"),
            fingerprint: Some(record(
                "backups/shop/20261127T012000Z-0000abcd/fingerprint.json.zst.age",
            )),
            postgres: None,
            warnings: Vec::new(),
            cluster: None,
        }
    }

    #[test]
    fn objects_outside_the_backups_own_directory_make_it_damaged() {
        let key = "backups/shop/20261127T012000Z-0000abcd/manifest.json";
        assert_eq!(sample().check_location("shop", key), Ok(()));
        for bad in [
            "backups/shop/../../repo.json",
            "backups/shop/20261127T012000Z-0000abcd/../../other/x",
            "backups/shop/20261127T012000Z-0000abcd/./data",
            "backups/shop/20261127T012000Z-0000abcd/",
            "backups/shop/20261127T012000Z-0000abcd//data",
            "/etc/passwd",
            "backups/shop/20261127T000000Z-11111111/data.pgdump.zst.age",
            "backups/other/20261127T012000Z-0000abcd/data.pgdump.zst.age",
            "backups/shop/20261127T012000Z-0000abcd/a\\..\\..\\x",
        ] {
            let mut m = sample();
            m.data.key = bad.into();
            let err = m.check_location("shop", key).expect_err(bad);
            assert!(
                err.contains("outside its backup's directory"),
                "{bad}: {err}"
            );
            let mut m = sample();
            m.fingerprint.as_mut().unwrap().key = bad.into();
            assert!(m.check_location("shop", key).is_err(), "fingerprint {bad}");
        }
        let mut m = sample();
        m.id = "..".into();
        assert!(
            m.check_location("shop", "backups/shop/../manifest.json")
                .is_err()
        );
        assert!(sample().check_location("other", key).is_err());
    }

    proptest! {
        #[test]
        fn manifest_round_trips(secs in 0i64..4_000_000_000, d in digest(), v in proptest::option::of("[a-zA-Z0-9._-]{1,32}"), level in 1i32..20, warnings in proptest::collection::vec(".{0,40}", 0..3)) {
            let t = DateTime::from_timestamp(secs, 123_000_000).unwrap();
            let m = Manifest {
                format: 1,
                id: "20261127T012000Z-0000abcd".into(),
                policy: "orders-db".into(),
                kind: "postgres".into(),
                point_in_time: t,
                started_at: t,
                finished_at: t,
                host: "db1".into(),
                tool_version: "0.1.0".into(),
                compression: Compression { algorithm: "zstd".into(), level },
                recipients: vec!["age1xyz".into()],
                data: ObjectRecord { key: "k".into(), version_id: v, content: "pg_dump-custom".into(), digests: d },
                fingerprint: None,
                postgres: None,
                warnings,
                cluster: None,
            };
            let json = serde_json::to_string(&m).unwrap();
            prop_assert_eq!(serde_json::from_str::<Manifest>(&json).unwrap(), m);
        }
    }
}
