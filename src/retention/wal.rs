//! Which archived WAL of a `postgres-cluster` policy prune may delete: a pure
//! function of the base backups it keeps and a listing of `wal/<policy>/`.
//!
//! Point-in-time recovery from a base backup replays every segment from its
//! start onward, on its timeline and on the timelines that branch from it
//! later. So a file may go only when no kept base backup could ask for it:
//! it lies before the start segment of every kept base backup, on the same
//! timeline or a lower one. (Which lower timelines are ancestors only the
//! `.history` files say, and they are encrypted: prune needs only the
//! public recipients. A lower timeline that is not an ancestor is needed by
//! no kept backup before their starts either, so the rule is safe without
//! knowing.) `.history` files are never deleted: recovery onto any later
//! timeline needs all of them. A `.backup` or `.partial` file goes with its
//! segment. A key that is not a WAL object of the policy is never touched.
//!
//! In doubt nothing is deleted: no kept base backup, a kept backup without
//! its WAL range, or base backups that disagree about the segment size.

use serde::Serialize;

use crate::repo::manifest::Manifest;
use crate::storage::ObjectMeta;
use crate::wal::{Segment, WalKind, WalName};

/// What prune may delete from a policy's archive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WalSelection {
    /// Why nothing may be deleted, when nothing may.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keep_all: Option<String>,
    /// The start segment of the oldest kept base backup (lowest timeline
    /// and lowest start of all of them): nothing from it on is deleted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub horizon: Option<String>,
    /// The base backup whose start is the horizon.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub horizon_backup: Option<String>,
    /// The objects to delete, oldest first in WAL order, so that a prune
    /// stopped part-way leaves the archive without a gap.
    #[serde(skip)]
    pub delete: Vec<ObjectMeta>,
}

impl WalSelection {
    fn keep_all(reason: String) -> WalSelection {
        WalSelection {
            keep_all: Some(reason),
            horizon: None,
            horizon_backup: None,
            delete: Vec::new(),
        }
    }

    /// Stored bytes of what would be deleted.
    pub fn bytes(&self) -> u64 {
        self.delete.iter().map(|o| o.size).sum()
    }
}

/// Decides which objects of `listing` (a listing of `wal/<policy>/`) may be
/// deleted while the base backups `kept` stay. The answer does not depend
/// on the order of either input.
pub fn select(policy: &str, kept: &[&Manifest], listing: &[ObjectMeta]) -> WalSelection {
    let mut starts = Vec::new();
    for m in kept {
        let Some(info) = &m.cluster else {
            return WalSelection::keep_all(format!(
                "kept backup {} has no WAL range in its manifest (kind `{}`), so it is unknown what WAL it needs",
                m.id, m.kind
            ));
        };
        starts.push((m, info));
    }
    let Some(&(_, first)) = starts.first() else {
        return WalSelection::keep_all(
            "no base backup is kept; WAL is kept until one is (the first base backup decides what it needs)"
                .into(),
        );
    };
    let segment_bytes = first.wal_segment_bytes;
    if let Some((m, info)) = starts
        .iter()
        .find(|(_, i)| i.wal_segment_bytes != segment_bytes)
    {
        return WalSelection::keep_all(format!(
            "kept base backups disagree about the WAL segment size ({} has {} bytes, another {segment_bytes}); \
             are two clusters archiving under one policy?",
            m.id, info.wal_segment_bytes
        ));
    }
    // Every kept backup's claim at once: below the lowest timeline and the
    // lowest start of them all is below each one's.
    let min_timeline = starts
        .iter()
        .map(|(_, i)| i.timeline)
        .min()
        .expect("not empty");
    let (horizon_backup, horizon) = starts
        .iter()
        .map(|(m, i)| (m, Segment::of(i.timeline, i.start_lsn, segment_bytes)))
        .min_by(|a, b| {
            (a.1.number, a.1.timeline, &a.0.id).cmp(&(b.1.number, b.1.timeline, &b.0.id))
        })
        .expect("not empty");

    let mut delete: Vec<(Segment, &str, &ObjectMeta)> = listing
        .iter()
        .filter_map(|o| {
            let (name, _) = crate::wal::parse_key(policy, &o.key)?;
            let seg = deletable_segment(&name, segment_bytes)?;
            (seg.timeline <= min_timeline && seg.number < horizon.number).then_some((
                seg,
                o.key.as_str(),
                o,
            ))
        })
        .collect();
    delete.sort_by(|a, b| (a.0.number, a.0.timeline, a.1).cmp(&(b.0.number, b.0.timeline, b.1)));
    delete.dedup_by(|a, b| a.1 == b.1);
    WalSelection {
        keep_all: None,
        horizon: Some(horizon.name(segment_bytes)),
        horizon_backup: Some(horizon_backup.id.clone()),
        delete: delete.into_iter().map(|(_, _, o)| o.clone()).collect(),
    }
}

/// The segment a file stands or falls with; `None` for what is never
/// deleted (`.history`, or a name that is not a segment of this size).
fn deletable_segment(name: &WalName, segment_bytes: u64) -> Option<Segment> {
    match name.kind {
        WalKind::History => None,
        WalKind::Segment | WalKind::Partial | WalKind::Backup => {
            Segment::from_name(name, segment_bytes)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repo::manifest::{Compression, ObjectRecord};
    use crate::source::pgcluster::ClusterInfo;
    use crate::wal::{DEFAULT_SEGMENT_BYTES, Lsn};
    use chrono::{DateTime, Utc};
    use proptest::prelude::*;

    const SHA: &str = "0000000000000000000000000000000000000000000000000000000000000000";

    fn base(id: &str, timeline: u32, start_lsn: &str) -> Manifest {
        let t = DateTime::<Utc>::from_timestamp(1_800_000_000, 0).unwrap();
        Manifest {
            format: 1,
            id: id.into(),
            policy: "db".into(),
            kind: "postgres-cluster".into(),
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
            data: ObjectRecord {
                key: format!("backups/db/{id}/data.tar.zst.age"),
                version_id: None,
                content: "basebackup-tar".into(),
                digests: crate::pipeline::Digests {
                    plaintext_size: 1,
                    plaintext_sha256: String::new(),
                    size: 1,
                    sha256: Some(String::new()),
                    ..Default::default()
                },
            },
            fingerprint: None,
            postgres: None,
            warnings: vec![],
            cluster: Some(ClusterInfo {
                system_identifier: None,
                server_version: "15.8".into(),
                server_version_num: 150008,
                pg_basebackup_version: "15.8".into(),
                timeline,
                start_lsn: start_lsn.parse().unwrap(),
                end_lsn: start_lsn.parse().unwrap(),
                start_time: t,
                end_time: t,
                wal_segment_bytes: DEFAULT_SEGMENT_BYTES,
                backup_manifest_checksum: None,
            }),
        }
    }

    fn object(name: &str) -> ObjectMeta {
        let parsed = WalName::parse(name).unwrap();
        ObjectMeta {
            key: crate::wal::object_key("db", &parsed, SHA),
            size: 100,
            etag: None,
            version_id: None,
            last_modified: None,
            storage_class: None,
        }
    }

    fn names(s: &WalSelection) -> Vec<String> {
        s.delete
            .iter()
            .map(|o| crate::wal::parse_key("db", &o.key).unwrap().0.name)
            .collect()
    }

    fn listing(names: &[&str]) -> Vec<ObjectMeta> {
        names.iter().map(|n| object(n)).collect()
    }

    #[test]
    fn wal_before_the_oldest_kept_start_goes_with_its_backup_and_partial_files() {
        // Kept backup starts in segment 5 (0/5000028).
        let kept = base("b2", 1, "0/5000028");
        let all = listing(&[
            "000000010000000000000003",
            "000000010000000000000003.00000028.backup",
            "000000010000000000000004",
            "000000010000000000000004.partial",
            "000000010000000000000005",
            "000000010000000000000005.00000028.backup",
            "000000010000000000000006",
            "00000001.history",
            "00000002.history",
        ]);
        let s = select("db", &[&kept], &all);
        assert_eq!(s.keep_all, None);
        assert_eq!(s.horizon.as_deref(), Some("000000010000000000000005"));
        assert_eq!(s.horizon_backup.as_deref(), Some("b2"));
        assert_eq!(
            names(&s),
            [
                "000000010000000000000003",
                "000000010000000000000003.00000028.backup",
                "000000010000000000000004",
                "000000010000000000000004.partial",
            ]
        );
        assert_eq!(s.bytes(), 400);
    }

    #[test]
    fn every_kept_backup_counts_not_only_the_oldest_in_time() {
        // After a restore to an earlier point, a newer backup on timeline 2
        // can start before an older one on timeline 1.
        let older = base("a", 1, "0/9000000");
        let newer = base("b", 2, "0/7000000");
        let all = listing(&[
            "000000010000000000000006",
            "000000010000000000000007",
            "000000010000000000000008",
            "000000020000000000000006",
            "000000020000000000000007",
        ]);
        let s = select("db", &[&older, &newer], &all);
        assert_eq!(s.horizon.as_deref(), Some("000000020000000000000007"));
        // Timeline 2 is above the lowest kept timeline (1): kept, even
        // before the start.
        assert_eq!(names(&s), ["000000010000000000000006"]);
    }

    #[test]
    fn segments_of_later_timelines_stay_until_a_backup_on_them_is_the_oldest() {
        let kept = base("b", 2, "0/A000000");
        let all = listing(&[
            "000000010000000000000008",
            "000000010000000000000009.partial",
            "000000020000000000000009",
            "00000002.history",
            "00000003.history",
            "00000003000000000000000A",
            "000000030000000000000003",
        ]);
        let s = select("db", &[&kept], &all);
        assert_eq!(
            names(&s),
            [
                "000000010000000000000008",
                "000000010000000000000009.partial",
                "000000020000000000000009",
            ]
        );
    }

    #[test]
    fn in_doubt_nothing_is_deleted() {
        let all = listing(&["000000010000000000000001", "000000010000000000000002"]);
        let none = select("db", &[], &all);
        assert!(none.delete.is_empty());
        assert!(none.keep_all.unwrap().contains("no base backup is kept"));

        let mut dump = base("dump", 1, "0/5000000");
        dump.cluster = None;
        dump.kind = "postgres".into();
        let s = select("db", &[&base("b", 1, "0/5000000"), &dump], &all);
        assert!(s.delete.is_empty());
        assert!(s.keep_all.unwrap().contains("dump"));

        let mut other = base("c", 1, "0/5000000");
        other.cluster.as_mut().unwrap().wal_segment_bytes = 64 * 1024 * 1024;
        let s = select("db", &[&base("b", 1, "0/5000000"), &other], &all);
        assert!(s.delete.is_empty());
        assert!(s.keep_all.unwrap().contains("segment size"));
    }

    #[test]
    fn keys_that_are_not_this_policys_wal_are_never_selected() {
        let kept = base("b", 1, "0/5000000");
        let mut all = listing(&["000000010000000000000001"]);
        for key in [
            "wal/db/00000001/000000010000000000000002-nothex.zst.age",
            "wal/db/00000001/000000010000000000000002",
            "wal/db/00000002/000000010000000000000002-0000.zst.age",
            "wal/other/00000001/000000010000000000000002-0000.zst.age",
            "wal/db/README",
        ] {
            all.push(ObjectMeta {
                key: key.into(),
                ..object("000000010000000000000001")
            });
        }
        let mut other = object("000000010000000000000002");
        other.key = other.key.replace("wal/db/", "wal/db2/");
        all.push(other);
        let s = select("db", &[&kept], &all);
        assert_eq!(names(&s), ["000000010000000000000001"]);
    }

    /// A name of `kind` for segment `number` on `timeline`.
    fn name_of(kind: u8, timeline: u32, number: u64) -> String {
        let seg = Segment { timeline, number }.name(DEFAULT_SEGMENT_BYTES);
        match kind {
            0 => seg,
            1 => format!("{seg}.partial"),
            2 => format!("{seg}.00000028.backup"),
            _ => format!("{timeline:08X}.history"),
        }
    }

    proptest! {
        #[test]
        fn nothing_at_or_after_a_kept_start_and_no_history_is_ever_selected(
            backups in proptest::collection::vec((1u32..4, 0u64..40, 0u64..0x100_0000), 0..4),
            files in proptest::collection::vec((0u8..4, 1u32..5, 0u64..48), 0..60),
            rotate in 0usize..60,
        ) {
            let kept: Vec<Manifest> = backups
                .iter()
                .enumerate()
                .map(|(i, (tli, seg, off))| {
                    base(&format!("b{i}"), *tli, &Lsn(seg * DEFAULT_SEGMENT_BYTES + off).to_string())
                })
                .collect();
            let refs: Vec<&Manifest> = kept.iter().collect();
            let mut all: Vec<ObjectMeta> = files
                .iter()
                .map(|(k, tli, n)| object(&name_of(*k, *tli, *n)))
                .collect();
            let s = select("db", &refs, &all);
            for o in &s.delete {
                let (name, _) = crate::wal::parse_key("db", &o.key).unwrap();
                prop_assert!(name.kind != WalKind::History, "{} selected", name);
                let seg = Segment::from_name(&name, DEFAULT_SEGMENT_BYTES).unwrap();
                for m in &kept {
                    let info = m.cluster.as_ref().unwrap();
                    let start = Segment::of(info.timeline, info.start_lsn, DEFAULT_SEGMENT_BYTES);
                    prop_assert!(seg.number < start.number, "{} is not before {}'s start", name, m.id);
                    prop_assert!(seg.timeline <= info.timeline, "{} is on a later timeline than {}", name, m.id);
                }
            }
            if kept.is_empty() {
                prop_assert!(s.delete.is_empty());
            }
            // Complete: everything below every claim is selected.
            if let Some(horizon) = &s.horizon {
                let h = Segment::from_name(&WalName::parse(horizon).unwrap(), DEFAULT_SEGMENT_BYTES).unwrap();
                let min_tli = kept.iter().map(|m| m.cluster.as_ref().unwrap().timeline).min().unwrap();
                let expected = files
                    .iter()
                    .filter(|(k, tli, n)| *k < 3 && *tli <= min_tli && *n < h.number)
                    .map(|(k, tli, n)| name_of(*k, *tli, *n))
                    .collect::<std::collections::BTreeSet<_>>();
                let got = names(&s).into_iter().collect::<std::collections::BTreeSet<_>>();
                prop_assert_eq!(got, expected);
            }
            // Order-independent, and oldest first.
            if !all.is_empty() {
                let k = rotate % all.len();
                all.rotate_left(k);
            }
            let again = select("db", &refs, &all);
            prop_assert_eq!(names(&again), names(&s));
            let numbers: Vec<u64> = s.delete.iter().map(|o| {
                let (name, _) = crate::wal::parse_key("db", &o.key).unwrap();
                Segment::from_name(&name, DEFAULT_SEGMENT_BYTES).unwrap().number
            }).collect();
            prop_assert!(numbers.windows(2).all(|w| w[0] <= w[1]));
        }
    }
}
