//! Objects in an archive storage class, as plain data: which classes must
//! be retrieved before a read, what S3's `x-amz-restore` answer says about
//! a retrieval, which tiers a class allows and how long each typically
//! takes. The retrieval itself (RestoreObject, polling HEAD) is driven by
//! `restore::thaw` through `storage::BucketAdmin`.

use std::fmt;
use std::str::FromStr;

/// Days a retrieved copy stays readable when drctl.toml does not say.
pub const DEFAULT_RESTORE_DAYS: u32 = 2;

/// How fast (and how dear) a retrieval is; S3's `GlacierJobParameters.Tier`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Tier {
    Expedited,
    #[default]
    Standard,
    Bulk,
}

impl Tier {
    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Expedited => "expedited",
            Tier::Standard => "standard",
            Tier::Bulk => "bulk",
        }
    }
}

impl fmt::Display for Tier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Tier {
    type Err = String;

    fn from_str(s: &str) -> Result<Tier, String> {
        match s.to_ascii_lowercase().as_str() {
            "expedited" => Ok(Tier::Expedited),
            "standard" => Ok(Tier::Standard),
            "bulk" => Ok(Tier::Bulk),
            _ => Err(format!(
                "`{s}` is not a retrieval tier; expected bulk, standard or expedited"
            )),
        }
    }
}

/// Whether an object of this storage class must be retrieved (S3
/// RestoreObject) before it can be read. GLACIER_IR and the infrequent
/// access classes are read directly.
pub fn needs_retrieval(storage_class: Option<&str>) -> bool {
    matches!(storage_class, Some("GLACIER" | "DEEP_ARCHIVE"))
}

/// How long a retrieval of `class` at `tier` typically takes, from AWS's
/// documentation.
///
/// # Errors
/// The tier is not offered for the class (expedited for DEEP_ARCHIVE).
pub fn typical_time(storage_class: &str, tier: Tier) -> Result<&'static str, String> {
    match (storage_class, tier) {
        ("DEEP_ARCHIVE", Tier::Expedited) => Err(
            "the expedited tier is not available for DEEP_ARCHIVE; use --archive-tier standard (within 12 hours) or bulk (within 48 hours)"
                .into(),
        ),
        ("DEEP_ARCHIVE", Tier::Standard) => Ok("within 12 hours"),
        ("DEEP_ARCHIVE", Tier::Bulk) => Ok("within 48 hours"),
        (_, Tier::Expedited) => Ok("1–5 minutes"),
        (_, Tier::Standard) => Ok("3–5 hours"),
        (_, Tier::Bulk) => Ok("5–12 hours"),
    }
}

/// Where a retrieval stands, from the `x-amz-restore` header of a HEAD.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub enum Retrieval {
    /// No retrieval was asked for (or an earlier copy expired).
    None,
    /// Asked for, not done yet.
    InProgress,
    /// A readable copy exists, until `expiry` (as S3 wrote it) if known.
    Done { expiry: Option<String> },
}

impl Retrieval {
    /// Reads `ongoing-request="true"` or `ongoing-request="false",
    /// expiry-date="Fri, 28 Nov 2026 00:00:00 GMT"`.
    pub fn from_header(header: Option<&str>) -> Retrieval {
        let Some(h) = header.map(str::trim).filter(|h| !h.is_empty()) else {
            return Retrieval::None;
        };
        let field = |name: &str| {
            let start = h.find(&format!("{name}=\""))? + name.len() + 2;
            let len = h[start..].find('"')?;
            Some(h[start..start + len].to_string())
        };
        match field("ongoing-request").as_deref() {
            Some("true") => Retrieval::InProgress,
            Some("false") => Retrieval::Done {
                expiry: field("expiry-date"),
            },
            _ => Retrieval::None,
        }
    }
}

/// An object's storage class and retrieval state.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ArchiveState {
    pub storage_class: Option<String>,
    pub retrieval: Retrieval,
}

/// What to do about one object before reading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    Read,
    /// Ask for a retrieval.
    Request,
    /// A retrieval is under way; wait for it, do not ask again.
    Wait,
}

impl ArchiveState {
    pub fn next(&self) -> Next {
        if !needs_retrieval(self.storage_class.as_deref()) {
            return Next::Read;
        }
        match self.retrieval {
            Retrieval::Done { .. } => Next::Read,
            Retrieval::InProgress => Next::Wait,
            Retrieval::None => Next::Request,
        }
    }
}

/// What S3 answered a RestoreObject.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Requested {
    /// 202: a new retrieval started.
    Started,
    /// `RestoreAlreadyInProgress`: someone asked before us.
    AlreadyInProgress,
    /// 200: a retrieved copy exists already (its expiry was extended).
    AlreadyDone,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restore_header_states() {
        assert_eq!(Retrieval::from_header(None), Retrieval::None);
        assert_eq!(Retrieval::from_header(Some("")), Retrieval::None);
        assert_eq!(
            Retrieval::from_header(Some("ongoing-request=\"true\"")),
            Retrieval::InProgress
        );
        assert_eq!(
            Retrieval::from_header(Some(
                "ongoing-request=\"false\", expiry-date=\"Fri, 28 Nov 2026 00:00:00 GMT\""
            )),
            Retrieval::Done {
                expiry: Some("Fri, 28 Nov 2026 00:00:00 GMT".into())
            }
        );
        assert_eq!(Retrieval::from_header(Some("garbage")), Retrieval::None);
    }

    #[test]
    fn only_glacier_and_deep_archive_need_a_retrieval() {
        for class in [
            None,
            Some("STANDARD"),
            Some("GLACIER_IR"),
            Some("STANDARD_IA"),
        ] {
            assert!(!needs_retrieval(class), "{class:?}");
        }
        assert!(needs_retrieval(Some("GLACIER")));
        assert!(needs_retrieval(Some("DEEP_ARCHIVE")));
    }

    #[test]
    fn a_second_run_waits_instead_of_asking_again() {
        let state = |class: &str, retrieval| ArchiveState {
            storage_class: Some(class.into()),
            retrieval,
        };
        assert_eq!(state("GLACIER", Retrieval::None).next(), Next::Request);
        assert_eq!(state("GLACIER", Retrieval::InProgress).next(), Next::Wait);
        assert_eq!(
            state("DEEP_ARCHIVE", Retrieval::Done { expiry: None }).next(),
            Next::Read
        );
        assert_eq!(state("GLACIER_IR", Retrieval::None).next(), Next::Read);
    }

    #[test]
    fn tiers_and_their_times() {
        assert_eq!(typical_time("GLACIER", Tier::Expedited), Ok("1–5 minutes"));
        assert_eq!(typical_time("GLACIER", Tier::Standard), Ok("3–5 hours"));
        assert_eq!(typical_time("GLACIER", Tier::Bulk), Ok("5–12 hours"));
        assert_eq!(
            typical_time("DEEP_ARCHIVE", Tier::Standard),
            Ok("within 12 hours")
        );
        assert_eq!(
            typical_time("DEEP_ARCHIVE", Tier::Bulk),
            Ok("within 48 hours")
        );
        let err = typical_time("DEEP_ARCHIVE", Tier::Expedited).unwrap_err();
        assert!(err.contains("not available for DEEP_ARCHIVE"), "{err}");
        assert_eq!("Bulk".parse::<Tier>(), Ok(Tier::Bulk));
        assert!(
            "fast"
                .parse::<Tier>()
                .unwrap_err()
                .contains("bulk, standard or expedited")
        );
    }
}
