//! Continuous WAL archiving for `postgres-cluster` policies: what PostgreSQL
//! hands to `archive_command` (`drctl wal-push`) and asks back from
//! `restore_command` (`drctl wal-fetch`), stored through the same seal
//! (zstd, then age) as backups.
//!
//! ```text
//! wal/<policy>/<TLI>/<file name>-<sha256 of the plaintext>.zst.age
//! ```
//!
//! `<TLI>` is the first eight hex digits of the file name: the timeline of
//! a segment, a `.partial` or a `.backup` file, and of a `.history` file the
//! timeline it starts. The plaintext's SHA-256 is in the key, so that a
//! segment pushed twice is recognised without decrypting anything (hosts
//! that archive hold only the public recipients): the same content is
//! already archived, other content is refused, and nothing is overwritten.
//!
//! This module is pure: names, keys and segment arithmetic. [`push`] and
//! [`fetch`] do the I/O.

pub mod archive;
pub mod check;
pub mod fetch;
pub mod history;
pub mod marks;
pub mod prefetch;
pub mod push;
pub mod spool;
pub mod status;

use std::fmt;

/// What kind of file PostgreSQL archives under a name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WalKind {
    /// `TTTTTTTTXXXXXXXXYYYYYYYY`: a WAL segment.
    Segment,
    /// `<segment>.partial`: the last, incomplete segment of a timeline that
    /// was left by promotion. PostgreSQL never asks for it back; kept for a
    /// person recovering by hand.
    Partial,
    /// `<segment>.<offset>.backup`: the backup history file a base backup
    /// leaves.
    Backup,
    /// `TTTTTTTT.history`: which timelines a timeline branched from. Kept
    /// forever: recovery onto a later timeline needs every one of them.
    History,
}

/// A file name PostgreSQL archives, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalName {
    pub name: String,
    pub kind: WalKind,
    pub timeline: u32,
}

impl fmt::Display for WalName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(&b))
}

impl WalName {
    /// Parses a WAL file name (the basename PostgreSQL passes as `%f`).
    ///
    /// # Errors
    /// A description of what is wrong, for a name that is none of the kinds
    /// PostgreSQL archives (so nothing else is ever written under `wal/`).
    pub fn parse(name: &str) -> Result<WalName, String> {
        let kind = if is_hex(name, 24) {
            Some(WalKind::Segment)
        } else if let Some(seg) = name.strip_suffix(".partial") {
            is_hex(seg, 24).then_some(WalKind::Partial)
        } else if let Some(rest) = name.strip_suffix(".backup") {
            rest.split_once('.')
                .filter(|(seg, offset)| is_hex(seg, 24) && is_hex(offset, 8))
                .map(|_| WalKind::Backup)
        } else if let Some(tli) = name.strip_suffix(".history") {
            is_hex(tli, 8).then_some(WalKind::History)
        } else {
            None
        };
        let kind = kind.ok_or_else(|| {
            format!(
                "`{}` is not a WAL file name (a segment like 000000010000000000000001, \
                 or a .history, .backup or .partial file)",
                name.escape_debug()
            )
        })?;
        let timeline = u32::from_str_radix(&name[..8], 16).expect("eight hex digits");
        if timeline == 0 {
            return Err(format!("`{name}` names timeline 0, which does not exist"));
        }
        Ok(WalName {
            name: name.to_string(),
            kind,
            timeline,
        })
    }
}

/// Where a policy's WAL lives.
pub fn policy_prefix(policy: &str) -> String {
    format!("wal/{policy}/")
}

/// The prefix every stored copy of `name` starts with (one, unless someone
/// archived different content under the same name).
pub fn name_prefix(policy: &str, name: &WalName) -> String {
    format!("wal/{policy}/{:08X}/{}-", name.timeline, name.name)
}

/// The key of `name` with plaintext digest `sha256` (lowercase hex).
pub fn object_key(policy: &str, name: &WalName, sha256: &str) -> String {
    format!("{}{sha256}.zst.age", name_prefix(policy, name))
}

/// The file name and plaintext SHA-256 a WAL object key stands for, if it
/// is one.
pub fn parse_key<'k>(policy: &str, key: &'k str) -> Option<(WalName, &'k str)> {
    let rest = key.strip_prefix(&policy_prefix(policy))?;
    let (tli, file) = rest.split_once('/')?;
    let stem = file.strip_suffix(".zst.age")?;
    let (name, sha) = stem.rsplit_once('-')?;
    let name = WalName::parse(name).ok()?;
    (format!("{:08X}", name.timeline) == tli
        && sha.len() == 64
        && sha
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()))
    .then_some((name, sha))
}

/// A log sequence number, as PostgreSQL prints it (`16/B374D848`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Lsn(pub u64);

impl std::str::FromStr for Lsn {
    type Err = String;
    fn from_str(s: &str) -> Result<Lsn, String> {
        let (hi, lo) = s
            .trim()
            .split_once('/')
            .ok_or_else(|| format!("`{s}` is not an LSN (expected e.g. 0/5000028)"))?;
        let part = |p: &str| {
            u32::from_str_radix(p, 16)
                .map_err(|_| format!("`{s}` is not an LSN (expected e.g. 0/5000028)"))
        };
        Ok(Lsn((u64::from(part(hi)?) << 32) | u64::from(part(lo)?)))
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

impl serde::Serialize for Lsn {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Lsn {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Lsn, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A WAL segment by timeline and number, for a given segment size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Segment {
    pub timeline: u32,
    /// LSN / segment size.
    pub number: u64,
}

/// Bytes per WAL segment unless the cluster was made with another
/// `--wal-segsize`.
pub const DEFAULT_SEGMENT_BYTES: u64 = 16 * 1024 * 1024;

impl Segment {
    /// The segment holding `lsn`.
    pub fn of(timeline: u32, lsn: Lsn, segment_bytes: u64) -> Segment {
        Segment {
            timeline,
            number: lsn.0 / segment_bytes,
        }
    }

    /// The segment a name stands for.
    pub fn from_name(name: &WalName, segment_bytes: u64) -> Option<Segment> {
        if name.kind == WalKind::History {
            return None;
        }
        let log = u64::from_str_radix(&name.name[8..16], 16).ok()?;
        let seg = u64::from_str_radix(&name.name[16..24], 16).ok()?;
        let per_log = 0x1_0000_0000 / segment_bytes;
        (seg < per_log).then_some(Segment {
            timeline: name.timeline,
            number: log * per_log + seg,
        })
    }

    /// The file name PostgreSQL gives this segment.
    pub fn name(&self, segment_bytes: u64) -> String {
        let per_log = 0x1_0000_0000 / segment_bytes;
        format!(
            "{:08X}{:08X}{:08X}",
            self.timeline,
            self.number / per_log,
            self.number % per_log
        )
    }

    pub fn next(&self) -> Segment {
        Segment {
            timeline: self.timeline,
            number: self.number + 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn names_of_every_kind_parse_and_others_are_refused() {
        let seg = WalName::parse("00000002000000010000003F").unwrap();
        assert_eq!((seg.kind, seg.timeline), (WalKind::Segment, 2));
        assert_eq!(
            WalName::parse("00000001000000000000000A.partial")
                .unwrap()
                .kind,
            WalKind::Partial
        );
        assert_eq!(
            WalName::parse("000000010000000000000002.00000028.backup")
                .unwrap()
                .kind,
            WalKind::Backup
        );
        let history = WalName::parse("0000000A.history").unwrap();
        assert_eq!((history.kind, history.timeline), (WalKind::History, 10));
        for bad in [
            "",
            "RECOVERYXLOG",
            "00000001000000000000000a",
            "0000000100000000000000",
            "../../repo.json",
            "000000010000000000000001.history",
            "00000000.history",
            "000000010000000000000002.0028.backup",
            "000000010000000000000001-x",
        ] {
            let err = WalName::parse(bad).expect_err(bad);
            assert!(
                err.contains("WAL file name") || err.contains("timeline 0"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn keys_carry_the_timeline_name_and_digest() {
        let name = WalName::parse("000000030000000000000010").unwrap();
        let sha = "ab".repeat(32);
        let key = object_key("db", &name, &sha);
        assert_eq!(
            key,
            format!("wal/db/00000003/000000030000000000000010-{sha}.zst.age")
        );
        assert_eq!(parse_key("db", &key), Some((name.clone(), sha.as_str())));
        assert!(key.starts_with(&name_prefix("db", &name)));
        assert_eq!(parse_key("other", &key), None);
        assert_eq!(
            parse_key("db", "wal/db/00000001/000000030000000000000010-x.zst.age"),
            None
        );
        // `.partial` of the same segment is another name, not a second copy.
        let partial = WalName::parse("000000030000000000000010.partial").unwrap();
        assert!(!object_key("db", &partial, &sha).starts_with(&name_prefix("db", &name)));
    }

    #[test]
    fn segments_follow_postgres_numbering() {
        let seg = |s| WalName::parse(s).unwrap();
        let small = 1024 * 1024;
        let s =
            Segment::from_name(&seg("0000000100000001000000FF"), DEFAULT_SEGMENT_BYTES).unwrap();
        assert_eq!(
            s.next().name(DEFAULT_SEGMENT_BYTES),
            "000000010000000200000000"
        );
        let s = Segment::from_name(&seg("000000010000000000000FFF"), small).unwrap();
        assert_eq!(s.next().name(small), "000000010000000100000000");
        assert_eq!(
            Segment::from_name(&seg("000000010000000000000100"), DEFAULT_SEGMENT_BYTES),
            None
        );
        let lsn: Lsn = "16/B374D848".parse().unwrap();
        assert_eq!(lsn.to_string(), "16/B374D848");
        assert_eq!(
            Segment::of(1, lsn, DEFAULT_SEGMENT_BYTES).name(DEFAULT_SEGMENT_BYTES),
            "0000000100000016000000B3"
        );
        assert!("16B374D848".parse::<Lsn>().is_err());
    }

    proptest! {
        #[test]
        fn segment_names_round_trip(tli in 1u32..0xFFFF, number in 0u64..(1 << 32), shift in 20u32..31) {
            let bytes = 1u64 << shift;
            let s = Segment { timeline: tli, number };
            let name = WalName::parse(&s.name(bytes)).unwrap();
            prop_assert_eq!(Segment::from_name(&name, bytes), Some(s));
        }
    }
}
