//! What the archive of one policy holds, per timeline, and where it has
//! holes: the pure part of `drctl wal status`, `drctl verify` and the WAL
//! check before a recovery. Built from a listing, so it needs no identity.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::{Lsn, Segment, WalKind};
use crate::storage::ObjectMeta;

/// The archive of one policy, by timeline and segment number.
#[derive(Debug, Default)]
pub struct Inventory {
    pub segments: BTreeMap<Segment, ObjectMeta>,
    /// `.history` objects, by the timeline each one starts.
    pub histories: BTreeMap<u32, ObjectMeta>,
}

impl Inventory {
    /// Sorts a listing of `wal/<policy>/` (keys that are not WAL objects
    /// are ignored; two contents for one segment are refused by
    /// `wal-fetch` when replay asks for it).
    pub fn from_listing(policy: &str, objects: Vec<ObjectMeta>, segment_bytes: u64) -> Inventory {
        let mut inventory = Inventory::default();
        for o in objects {
            let Some((name, _)) = super::parse_key(policy, &o.key) else {
                continue;
            };
            match name.kind {
                WalKind::Segment => {
                    if let Some(seg) = Segment::from_name(&name, segment_bytes) {
                        inventory.segments.insert(seg, o);
                    }
                }
                WalKind::History => {
                    inventory.histories.insert(name.timeline, o);
                }
                WalKind::Partial | WalKind::Backup => {}
            }
        }
        inventory
    }

    /// The timelines that have segments or a history file.
    pub fn timelines(&self) -> Vec<u32> {
        let mut t: Vec<u32> = self.segments.keys().map(|s| s.timeline).collect();
        t.extend(self.histories.keys());
        t.sort_unstable();
        t.dedup();
        t
    }

    fn on(&self, timeline: u32) -> impl DoubleEndedIterator<Item = (&Segment, &ObjectMeta)> {
        self.segments.range(
            Segment {
                timeline,
                number: 0,
            }..=Segment {
                timeline,
                number: u64::MAX,
            },
        )
    }
}

/// Consecutive segments of one timeline that are not archived, though
/// segments before and after them are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gap {
    pub timeline: u32,
    pub first: Segment,
    pub last: Segment,
}

impl Gap {
    pub fn segments(&self) -> u64 {
        self.last.number - self.first.number + 1
    }

    /// `000000010000000000000005`, or `… to … (3 segments)`.
    pub fn describe(&self, segment_bytes: u64) -> String {
        if self.first == self.last {
            self.first.name(segment_bytes)
        } else {
            format!(
                "{} to {} ({} segments)",
                self.first.name(segment_bytes),
                self.last.name(segment_bytes),
                self.segments()
            )
        }
    }
}

/// Where the continuity of each timeline is checked from: the start
/// segment of the oldest base backup taken on it, and the segment where a
/// timeline branched (from its history file, when it could be read), if
/// that is not older than the oldest base backup (WAL older than that may
/// have been pruned).
pub fn check_starts(
    backups: &[(u32, Lsn)],
    branches: &BTreeMap<u32, Lsn>,
    segment_bytes: u64,
) -> BTreeMap<u32, u64> {
    let mut starts: BTreeMap<u32, u64> = BTreeMap::new();
    for &(timeline, lsn) in backups {
        let n = lsn.0 / segment_bytes;
        starts
            .entry(timeline)
            .and_modify(|s| *s = (*s).min(n))
            .or_insert(n);
    }
    let oldest = backups.iter().map(|(_, l)| l.0 / segment_bytes).min();
    for (&timeline, at) in branches {
        let n = at.0 / segment_bytes;
        if oldest.is_some_and(|o| n >= o) {
            starts
                .entry(timeline)
                .and_modify(|s| *s = (*s).min(n))
                .or_insert(n);
        }
    }
    starts
}

/// One timeline of the archive, for `wal status` and `verify`.
#[derive(Debug, Clone, Serialize)]
pub struct TimelineReport {
    pub timeline: u32,
    /// The segment continuity is checked from.
    pub checked_from: Option<String>,
    /// Whether `checked_from` is where it should be (a base backup's start
    /// or the branch point) rather than just the oldest archived segment.
    pub start_known: bool,
    pub oldest: Option<String>,
    pub newest: Option<String>,
    pub newest_archived_at: Option<DateTime<Utc>>,
    pub segments: u64,
    pub stored_bytes: u64,
    pub history_archived: bool,
    pub gaps: Vec<GapReport>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct GapReport {
    pub first: String,
    pub last: String,
    pub segments: u64,
}

/// Every timeline's segments and gaps. A timeline's gaps run from its
/// start in `starts` (or, without one, its oldest archived segment) to its
/// newest archived segment; a start with nothing archived after it is one
/// gap of the start segment alone.
pub fn report(
    inventory: &Inventory,
    starts: &BTreeMap<u32, u64>,
    segment_bytes: u64,
) -> (Vec<TimelineReport>, Vec<Gap>) {
    let mut timelines = inventory.timelines();
    timelines.extend(starts.keys());
    timelines.sort_unstable();
    timelines.dedup();
    let mut all_gaps = Vec::new();
    let mut reports = Vec::new();
    for timeline in timelines {
        let on: Vec<(&Segment, &ObjectMeta)> = inventory.on(timeline).collect();
        let oldest = on.first().map(|(s, _)| **s);
        let newest = on.last().map(|(s, o)| (**s, o.last_modified));
        let start = starts.get(&timeline).copied();
        let from = start.or(oldest.map(|s| s.number));
        let mut gaps = Vec::new();
        if let Some(from) = from {
            let mut expected = from;
            for (s, _) in on.iter().filter(|(s, _)| s.number >= from) {
                if s.number > expected {
                    gaps.push(Gap {
                        timeline,
                        first: Segment {
                            timeline,
                            number: expected,
                        },
                        last: Segment {
                            timeline,
                            number: s.number - 1,
                        },
                    });
                }
                expected = s.number + 1;
            }
            if expected == from {
                gaps.push(Gap {
                    timeline,
                    first: Segment {
                        timeline,
                        number: from,
                    },
                    last: Segment {
                        timeline,
                        number: from,
                    },
                });
            }
        }
        reports.push(TimelineReport {
            timeline,
            checked_from: from.map(|n| {
                Segment {
                    timeline,
                    number: n,
                }
                .name(segment_bytes)
            }),
            start_known: start.is_some(),
            oldest: oldest.map(|s| s.name(segment_bytes)),
            newest: newest.map(|(s, _)| s.name(segment_bytes)),
            newest_archived_at: newest.and_then(|(_, t)| t),
            segments: on.len() as u64,
            stored_bytes: on.iter().map(|(_, o)| o.size).sum(),
            history_archived: inventory.histories.contains_key(&timeline),
            gaps: gaps
                .iter()
                .map(|g| GapReport {
                    first: g.first.name(segment_bytes),
                    last: g.last.name(segment_bytes),
                    segments: g.segments(),
                })
                .collect(),
        });
        all_gaps.extend(gaps);
    }
    (reports, all_gaps)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MB16: u64 = super::super::DEFAULT_SEGMENT_BYTES;

    pub(crate) fn meta(key: &str) -> ObjectMeta {
        ObjectMeta {
            key: key.into(),
            size: 100,
            etag: None,
            version_id: None,
            last_modified: None,
            storage_class: None,
        }
    }

    fn key(name: &str) -> String {
        format!("wal/db/{}/{name}-{}.zst.age", &name[..8], "a".repeat(64))
    }

    fn inventory(names: &[&str]) -> Inventory {
        let mut listing: Vec<ObjectMeta> = names.iter().map(|n| meta(&key(n))).collect();
        listing.push(meta("wal/db/00000001/junk"));
        Inventory::from_listing("db", listing, MB16)
    }

    #[test]
    fn the_listing_is_sorted_by_kind() {
        let inv = inventory(&[
            "000000010000000000000002",
            "000000010000000000000003",
            "00000002.history",
            "000000010000000000000003.partial",
            "000000020000000000000003",
        ]);
        assert_eq!(inv.segments.len(), 3);
        assert_eq!(inv.histories.keys().copied().collect::<Vec<_>>(), vec![2]);
        assert_eq!(inv.timelines(), vec![1, 2]);
    }

    #[test]
    fn gaps_are_found_from_the_start_to_the_newest_segment() {
        let inv = inventory(&[
            "000000010000000000000003",
            "000000010000000000000004",
            "000000010000000000000007",
            "000000010000000000000009",
            "000000020000000000000008",
        ]);
        let starts: BTreeMap<u32, u64> = [(1, 2)].into();
        let (reports, gaps) = report(&inv, &starts, MB16);
        let described: Vec<String> = gaps.iter().map(|g| g.describe(MB16)).collect();
        assert_eq!(
            described,
            vec![
                "000000010000000000000002",
                "000000010000000000000005 to 000000010000000000000006 (2 segments)",
                "000000010000000000000008",
            ]
        );
        assert_eq!(reports[0].segments, 4);
        assert_eq!(
            reports[0].newest.as_deref(),
            Some("000000010000000000000009")
        );
        // Timeline 2 has no known start: checked from what is there.
        assert!(reports[1].gaps.is_empty() && !reports[1].start_known);
    }

    #[test]
    fn a_start_with_nothing_archived_is_a_gap() {
        let inv = inventory(&[]);
        let starts: BTreeMap<u32, u64> = [(1, 5)].into();
        let (_, gaps) = report(&inv, &starts, MB16);
        assert_eq!(gaps.len(), 1);
        assert_eq!(gaps[0].describe(MB16), "000000010000000000000005");
    }

    #[test]
    fn starts_come_from_backups_and_branches_not_older_than_the_oldest_backup() {
        let l = |s: &str| s.parse::<Lsn>().unwrap();
        let backups = [
            (1, l("0/3000028")),
            (1, l("0/6000028")),
            (2, l("0/9000028")),
        ];
        let branches: BTreeMap<u32, Lsn> = [(2, l("0/7000000")), (3, l("0/1000000"))].into();
        let starts = check_starts(&backups, &branches, MB16);
        assert_eq!(starts, [(1, 3), (2, 7)].into());
    }
}
