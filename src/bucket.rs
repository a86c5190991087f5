//! The bucket settings drctl keeps in shape on an S3 repository, as plain
//! data: what `[lifecycle]` in drctl.toml asks for ([`desired`]), how that
//! compares with what the bucket has ([`compare`]), and what `repo apply`
//! changes ([`plan`]). No I/O here; the S3 calls are in `storage::s3`.
//!
//! Ownership: a repository owns the lifecycle rules whose id starts with
//! [`OWNED_RULE_PREFIX`] and names its root ([`rule_id`]: `drctl-…@prod`
//! for `s3://bucket/prod`, plain `drctl-…` for a whole bucket), and writes
//! them all on every apply. Every other rule, another repository's in the
//! same bucket included, is kept exactly as it is.

use crate::config::Lifecycle;

/// Lifecycle rules with an id starting with this are drctl's.
pub const OWNED_RULE_PREFIX: &str = "drctl-";
/// The object tag drctl puts on backup data objects (dumps, tar streams and
/// fingerprints) when it writes them, so that the archive rule moves only
/// those: manifests, drill records and leases must stay readable at once.
pub const DATA_TAG_KEY: &str = "drctl-kind";
pub const DATA_TAG_VALUE: &str = "data";

pub const DEFAULT_NONCURRENT_EXPIRE_DAYS: u32 = 30;
pub const DEFAULT_ABORT_INCOMPLETE_UPLOAD_DAYS: u32 = 1;
/// Readable at once, so restores never wait; GLACIER and DEEP_ARCHIVE are
/// cheaper but need a retrieval (hours) before a restore can read them.
pub const DEFAULT_ARCHIVE_CLASS: &str = "GLACIER_IR";

pub const RULE_ARCHIVE: &str = "drctl-archive-data";
pub const RULE_NONCURRENT: &str = "drctl-expire-noncurrent";
pub const RULE_ABORT: &str = "drctl-abort-incomplete-uploads";

/// One lifecycle rule, reduced to what drctl writes. Whatever else a rule
/// on the bucket says is kept in `other`, so that a drctl rule someone
/// extended by hand shows as different.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Rule {
    pub id: String,
    pub enabled: bool,
    /// Key prefix the rule applies to; empty for the whole bucket.
    pub prefix: String,
    /// Tags an object must carry, sorted by key.
    pub tags: Vec<(String, String)>,
    pub transition: Option<Transition>,
    pub noncurrent_expire_days: Option<u32>,
    /// Remove delete markers that no longer hide any version.
    pub expired_delete_markers: bool,
    pub abort_incomplete_days: Option<u32>,
    /// Conditions and actions drctl does not write, described.
    pub other: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Transition {
    pub days: u32,
    pub storage_class: String,
}

impl Rule {
    fn new(id: &str, prefix: String) -> Rule {
        Rule {
            id: id.to_string(),
            enabled: true,
            prefix,
            tags: Vec::new(),
            transition: None,
            noncurrent_expire_days: None,
            expired_delete_markers: false,
            abort_incomplete_days: None,
            other: Vec::new(),
        }
    }

    /// Whether this rule belongs to the repository at `root`.
    pub fn owned_by(&self, root: &str) -> bool {
        owned_by(&self.id, root)
    }

    /// Puts fields in the order S3 does not promise, so that equal rules
    /// compare equal.
    pub fn normalised(mut self) -> Rule {
        self.tags.sort();
        self.other.sort();
        self
    }

    /// One line saying what the rule does.
    pub fn describe(&self) -> String {
        let mut scope = if self.prefix.is_empty() {
            "every object".to_string()
        } else {
            format!("objects under `{}`", self.prefix)
        };
        if !self.tags.is_empty() {
            let tags: Vec<String> = self.tags.iter().map(|(k, v)| format!("{k}={v}")).collect();
            scope.push_str(&format!(" tagged {}", tags.join(", ")));
        }
        let mut actions = Vec::new();
        if let Some(t) = &self.transition {
            actions.push(format!(
                "move to {} after {}",
                t.storage_class,
                days(t.days)
            ));
        }
        if let Some(d) = self.noncurrent_expire_days {
            actions.push(format!(
                "delete noncurrent versions {} after they become noncurrent",
                days(d)
            ));
        }
        if self.expired_delete_markers {
            actions.push("remove delete markers left without versions".into());
        }
        if let Some(d) = self.abort_incomplete_days {
            actions.push(format!(
                "abort incomplete multipart uploads {} after they start",
                days(d)
            ));
        }
        actions.extend(self.other.iter().cloned());
        if actions.is_empty() {
            actions.push("no action".into());
        }
        format!(
            "{}{scope}: {}",
            if self.enabled { "" } else { "(disabled) " },
            actions.join("; ")
        )
    }
}

fn days(n: u32) -> String {
    format!("{n} day{}", if n == 1 { "" } else { "s" })
}

/// Default retention of an Object Lock bucket.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Retention {
    /// `GOVERNANCE` or `COMPLIANCE`.
    pub mode: String,
    pub days: Option<u32>,
    pub years: Option<u32>,
}

impl Retention {
    pub fn describe(&self) -> String {
        let length = match (self.days, self.years) {
            (Some(d), _) => days(d),
            (None, Some(y)) => format!("{y} year{}", if y == 1 { "" } else { "s" }),
            (None, None) => "an unstated time".into(),
        };
        format!("{} retention of {length} by default", self.mode)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub enum ObjectLock {
    /// The bucket was created without Object Lock.
    Disabled,
    /// Object Lock is on, with this default retention or none.
    Enabled(Option<Retention>),
}

impl ObjectLock {
    fn describe(&self) -> String {
        match self {
            ObjectLock::Disabled => "Object Lock not enabled on the bucket".into(),
            ObjectLock::Enabled(None) => "Object Lock enabled, no default retention".into(),
            ObjectLock::Enabled(Some(r)) => format!("Object Lock enabled, {}", r.describe()),
        }
    }
}

/// The id of drctl's rule `name` for the repository at `root` (a key
/// prefix, with or without its trailing slash). S3 keeps one lifecycle
/// configuration per bucket with unique ids, so repositories sharing a
/// bucket need ids of their own.
pub fn rule_id(name: &str, root: &str) -> String {
    match root.trim_matches('/') {
        "" => name.to_string(),
        r => format!("{name}@{r}"),
    }
}

/// Whether the rule `id` is drctl's for the repository at `root`.
pub fn owned_by(id: &str, root: &str) -> bool {
    let Some(rest) = id.strip_prefix(OWNED_RULE_PREFIX) else {
        return false;
    };
    let repo = rest.split_once('@').map_or("", |(_, r)| r);
    repo == root.trim_matches('/')
}

/// What a bucket has, as read from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actual {
    /// `Enabled`, `Suspended`, or `None` when never enabled.
    pub versioning: Option<String>,
    /// Every lifecycle rule, drctl's and others'.
    pub rules: Vec<Rule>,
    pub object_lock: ObjectLock,
}

/// What drctl.toml asks of the bucket. Versioning is always wanted: the
/// manifests record version ids, and deletion must leave a delete marker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Desired {
    /// The repository's key prefix (`prod/`), empty for a whole bucket.
    pub root: String,
    /// drctl's lifecycle rules, sorted by id.
    pub rules: Vec<Rule>,
    /// Default retention to set; `None` leaves Object Lock as it is.
    pub retention: Option<Retention>,
}

/// The settings `lifecycle` asks for on a repository stored under `prefix`
/// (empty for a whole bucket). Assumes `lifecycle` was validated by
/// `config` (a class only with days, lock mode and days together).
pub fn desired(lifecycle: &Lifecycle, prefix: &str) -> Desired {
    let root = match prefix.trim_matches('/') {
        "" => String::new(),
        p => format!("{p}/"),
    };
    let mut rules = Vec::new();
    if let Some(after) = lifecycle.archive_after_days {
        let mut archive = Rule::new(&rule_id(RULE_ARCHIVE, &root), format!("{root}backups/"));
        archive.tags = vec![(DATA_TAG_KEY.into(), DATA_TAG_VALUE.into())];
        archive.transition = Some(Transition {
            days: after,
            storage_class: lifecycle
                .archive_class
                .clone()
                .unwrap_or_else(|| DEFAULT_ARCHIVE_CLASS.into()),
        });
        rules.push(archive);
    }
    let mut noncurrent = Rule::new(&rule_id(RULE_NONCURRENT, &root), root.clone());
    noncurrent.noncurrent_expire_days = Some(
        lifecycle
            .noncurrent_expire_days
            .unwrap_or(DEFAULT_NONCURRENT_EXPIRE_DAYS),
    );
    noncurrent.expired_delete_markers = true;
    rules.push(noncurrent);
    let mut abort = Rule::new(&rule_id(RULE_ABORT, &root), root.clone());
    abort.abort_incomplete_days = Some(
        lifecycle
            .abort_incomplete_upload_days
            .unwrap_or(DEFAULT_ABORT_INCOMPLETE_UPLOAD_DAYS),
    );
    rules.push(abort);
    rules.sort_by(|a, b| a.id.cmp(&b.id));
    let retention = match (&lifecycle.object_lock_mode, lifecycle.object_lock_days) {
        (Some(mode), Some(d)) => Some(Retention {
            mode: mode.clone(),
            days: Some(d),
            years: None,
        }),
        _ => None,
    };
    Desired {
        root,
        rules,
        retention,
    }
}

/// One setting, desired against actual.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Setting {
    pub name: String,
    pub desired: String,
    pub actual: String,
    pub drift: bool,
}

/// Every setting drctl manages, and the lifecycle rules it leaves alone.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Comparison {
    pub settings: Vec<Setting>,
    /// Rules of others, kept untouched: `id: description`.
    pub other_rules: Vec<String>,
}

impl Comparison {
    pub fn drifted(&self) -> Vec<&Setting> {
        self.settings.iter().filter(|s| s.drift).collect()
    }
}

const NOT_MANAGED: &str = "not managed (no object_lock_mode in [lifecycle])";

/// Compares what is wanted with what the bucket has.
pub fn compare(desired: &Desired, actual: &Actual) -> Comparison {
    let mut settings = Vec::new();
    let versioning = actual.versioning.as_deref().unwrap_or("never enabled");
    settings.push(Setting {
        name: "versioning".into(),
        desired: "Enabled".into(),
        actual: versioning.into(),
        drift: versioning != "Enabled",
    });
    for want in &desired.rules {
        let have = actual.rules.iter().find(|r| r.id == want.id);
        settings.push(Setting {
            name: format!("lifecycle rule {}", want.id),
            desired: want.describe(),
            actual: have.map_or_else(|| "missing".into(), Rule::describe),
            drift: have.map(|h| h.clone().normalised()) != Some(want.clone().normalised()),
        });
    }
    for extra in actual
        .rules
        .iter()
        .filter(|r| r.owned_by(&desired.root) && !desired.rules.iter().any(|w| w.id == r.id))
    {
        settings.push(Setting {
            name: format!("lifecycle rule {}", extra.id),
            desired: "absent (drctl.toml no longer asks for it)".into(),
            actual: extra.describe(),
            drift: true,
        });
    }
    let lock_drift = match (&desired.retention, &actual.object_lock) {
        (None, _) => false,
        (Some(want), ObjectLock::Enabled(Some(have))) => want != &normalise(have),
        (Some(_), _) => true,
    };
    settings.push(Setting {
        name: "object lock".into(),
        desired: desired
            .retention
            .as_ref()
            .map_or_else(|| NOT_MANAGED.into(), |r| r.describe()),
        actual: actual.object_lock.describe(),
        drift: lock_drift,
    });
    Comparison {
        settings,
        other_rules: actual
            .rules
            .iter()
            .filter(|r| !r.owned_by(&desired.root))
            .map(|r| format!("{}: {}", r.id, r.describe()))
            .collect(),
    }
}

/// Some servers answer `Years: 0` beside `Days`; that is no years.
fn normalise(r: &Retention) -> Retention {
    Retention {
        mode: r.mode.clone(),
        days: r.days.filter(|d| *d > 0),
        years: r.years.filter(|y| *y > 0),
    }
}

/// What `repo apply` changes, in this order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Plan {
    pub enable_versioning: bool,
    /// drctl's rules to write (others' are kept); `None` when they match.
    pub lifecycle: Option<Vec<Rule>>,
    pub retention: Option<Retention>,
    /// The drifted settings, for the printed plan.
    pub changes: Vec<Setting>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        !self.enable_versioning && self.lifecycle.is_none() && self.retention.is_none()
    }
}

/// Why a plan cannot be carried out.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error(
        "drctl.toml asks for {mode} Object Lock retention, but the bucket does not have Object Lock enabled; \
         Object Lock must be enabled on the bucket itself: create the bucket with Object Lock \
         (`aws s3api create-bucket --object-lock-enabled-for-bucket`), or remove object_lock_mode and object_lock_days \
         from [lifecycle]. drctl never turns Object Lock on, because it cannot be turned off again"
    )]
    NoObjectLock { mode: String },
}

/// The changes that make `actual` what `desired` asks for; empty when it
/// already is, so applying twice changes nothing the second time.
///
/// # Errors
/// `NoObjectLock` when a retention is wanted on a bucket without Object
/// Lock; nothing should be changed then.
pub fn plan(desired: &Desired, actual: &Actual) -> Result<Plan, PlanError> {
    if let (Some(want), ObjectLock::Disabled) = (&desired.retention, &actual.object_lock) {
        return Err(PlanError::NoObjectLock {
            mode: want.mode.clone(),
        });
    }
    let comparison = compare(desired, actual);
    let changes: Vec<Setting> = comparison.drifted().into_iter().cloned().collect();
    let rules_drift = changes
        .iter()
        .any(|s| s.name.starts_with("lifecycle rule "));
    let lock_drift = changes.iter().any(|s| s.name == "object lock");
    Ok(Plan {
        enable_versioning: actual.versioning.as_deref() != Some("Enabled"),
        lifecycle: rules_drift.then(|| desired.rules.clone()),
        retention: if lock_drift {
            desired.retention.clone()
        } else {
            None
        },
        changes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repositories_sharing_a_bucket_own_their_rules_only() {
        let staging = desired(&Lifecycle::default(), "staging");
        let prod = desired(&Lifecycle::default(), "prod");
        assert!(prod.rules.iter().all(|r| r.id.ends_with("@prod")));
        let whole = desired(&Lifecycle::default(), "");
        assert!(whole.rules.iter().any(|r| r.id == RULE_NONCURRENT));
        let actual = Actual {
            versioning: Some("Enabled".into()),
            rules: prod.rules.clone(),
            object_lock: ObjectLock::Disabled,
        };
        // prod's rules are "others" to staging: added to, never replaced.
        let p = plan(&staging, &actual).unwrap();
        assert_eq!(p.lifecycle.as_ref().unwrap().len(), staging.rules.len());
        assert_eq!(
            compare(&staging, &actual).other_rules.len(),
            prod.rules.len()
        );
        assert!(plan(&prod, &actual).unwrap().is_empty());
        assert!(!owned_by("drctl-expire-noncurrent@prod", "staging/"));
        assert!(owned_by("drctl-expire-noncurrent@prod", "prod/"));
        assert!(owned_by("drctl-expire-noncurrent", ""));
        assert!(!owned_by("drctl-expire-noncurrent", "prod"));
        assert!(!owned_by("backup-expiry", ""));
    }

    fn lifecycle() -> Lifecycle {
        Lifecycle {
            archive_after_days: Some(30),
            archive_class: Some("GLACIER".into()),
            noncurrent_expire_days: Some(14),
            ..Lifecycle::default()
        }
    }

    fn matching(desired: &Desired) -> Actual {
        Actual {
            versioning: Some("Enabled".into()),
            rules: desired.rules.clone(),
            object_lock: ObjectLock::Disabled,
        }
    }

    #[test]
    fn desired_rules_are_filtered_to_the_repository_and_data_is_found_by_tag() {
        let d = desired(&lifecycle(), "drctl");
        let ids: Vec<&str> = d.rules.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(
            ids,
            [
                "drctl-abort-incomplete-uploads@drctl",
                "drctl-archive-data@drctl",
                "drctl-expire-noncurrent@drctl"
            ]
        );
        let archive = &d.rules[1];
        assert_eq!(archive.prefix, "drctl/backups/");
        assert_eq!(
            archive.tags,
            [(DATA_TAG_KEY.to_string(), DATA_TAG_VALUE.to_string())]
        );
        assert_eq!(
            archive.transition,
            Some(Transition {
                days: 30,
                storage_class: "GLACIER".into()
            })
        );
        assert_eq!(d.rules[2].prefix, "drctl/");
        assert_eq!(d.rules[2].noncurrent_expire_days, Some(14));
        assert_eq!(d.rules[0].abort_incomplete_days, Some(1));
        assert_eq!(d.retention, None);
    }

    #[test]
    fn defaults_without_a_lifecycle_section() {
        let d = desired(&Lifecycle::default(), "");
        let ids: Vec<&str> = d.rules.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(
            ids,
            [RULE_ABORT, RULE_NONCURRENT],
            "no archiving unless asked"
        );
        assert!(d.rules.iter().all(|r| r.prefix.is_empty()));
        assert_eq!(
            d.rules[1].noncurrent_expire_days,
            Some(DEFAULT_NONCURRENT_EXPIRE_DAYS)
        );
        let archive = desired(
            &Lifecycle {
                archive_after_days: Some(7),
                ..Lifecycle::default()
            },
            "",
        );
        assert_eq!(
            archive.rules[1].transition.as_ref().unwrap().storage_class,
            DEFAULT_ARCHIVE_CLASS
        );
        assert_eq!(archive.rules[1].prefix, "backups/");
    }

    #[test]
    fn an_empty_bucket_needs_everything_and_a_matching_one_nothing() {
        let d = desired(&lifecycle(), "drctl");
        let empty = Actual {
            versioning: None,
            rules: Vec::new(),
            object_lock: ObjectLock::Disabled,
        };
        let p = plan(&d, &empty).unwrap();
        assert!(p.enable_versioning);
        assert_eq!(p.lifecycle.as_ref(), Some(&d.rules));
        assert_eq!(p.changes.len(), 4, "{:?}", p.changes);
        let p = plan(&d, &matching(&d)).unwrap();
        assert!(p.is_empty(), "{p:?}");
        assert!(p.changes.is_empty());
    }

    #[test]
    fn rule_order_and_tag_order_do_not_matter() {
        let d = desired(&lifecycle(), "drctl");
        let mut actual = matching(&d);
        actual.rules.reverse();
        actual.rules[1].tags.push(("a".into(), "b".into()));
        let mut want = d.clone();
        want.rules[1].tags.insert(0, ("a".into(), "b".into()));
        assert!(plan(&want, &actual).unwrap().is_empty());
    }

    #[test]
    fn a_changed_owned_rule_is_drift_and_others_rules_are_kept() {
        let d = desired(&lifecycle(), "drctl");
        let mut actual = matching(&d);
        actual.rules[2].noncurrent_expire_days = Some(99);
        let mut foreign = Rule::new("logs-expiry", "logs/".into());
        foreign
            .other
            .push("expire current versions after 7 days".into());
        actual.rules.push(foreign);
        let c = compare(&d, &actual);
        let drift: Vec<&str> = c.drifted().iter().map(|s| s.name.as_str()).collect();
        assert_eq!(drift, [format!("lifecycle rule {RULE_NONCURRENT}@drctl")]);
        assert!(c.drifted()[0].actual.contains("99 days"));
        assert_eq!(c.other_rules.len(), 1);
        assert!(c.other_rules[0].starts_with("logs-expiry: objects under `logs/`"));
        let p = plan(&d, &actual).unwrap();
        assert_eq!(
            p.lifecycle.as_ref(),
            Some(&d.rules),
            "only drctl's rules are written"
        );
        assert!(!p.enable_versioning);
    }

    #[test]
    fn extra_actions_on_an_owned_rule_are_drift() {
        let d = desired(&lifecycle(), "drctl");
        let mut actual = matching(&d);
        actual.rules[0]
            .other
            .push("expire current versions after 1 day".into());
        assert!(plan(&d, &actual).unwrap().lifecycle.is_some());
        let mut actual = matching(&d);
        actual.rules[0].enabled = false;
        assert!(plan(&d, &actual).unwrap().lifecycle.is_some());
    }

    #[test]
    fn an_owned_rule_no_longer_asked_for_is_removed() {
        let d = desired(&lifecycle(), "drctl");
        let actual = matching(&d);
        let without_archive = desired(
            &Lifecycle {
                archive_after_days: None,
                archive_class: None,
                ..lifecycle()
            },
            "drctl",
        );
        let p = plan(&without_archive, &actual).unwrap();
        assert_eq!(p.lifecycle.as_ref(), Some(&without_archive.rules));
        assert_eq!(p.changes.len(), 1, "{:?}", p.changes);
        assert_eq!(
            p.changes[0].name,
            format!("lifecycle rule {RULE_ARCHIVE}@drctl")
        );
        assert!(p.changes[0].desired.starts_with("absent"));
    }

    #[test]
    fn object_lock_retention_needs_a_lock_bucket() {
        let mut l = lifecycle();
        l.object_lock_mode = Some("GOVERNANCE".into());
        l.object_lock_days = Some(7);
        let d = desired(&l, "drctl");
        let err = plan(&d, &matching(&d)).unwrap_err();
        assert!(
            err.to_string()
                .contains("create the bucket with Object Lock"),
            "{err}"
        );

        let mut actual = matching(&d);
        actual.object_lock = ObjectLock::Enabled(None);
        let p = plan(&d, &actual).unwrap();
        assert_eq!(p.retention, d.retention);
        assert_eq!(p.lifecycle, None);

        // moto answers Years: 0 beside Days.
        actual.object_lock = ObjectLock::Enabled(Some(Retention {
            mode: "GOVERNANCE".into(),
            days: Some(7),
            years: Some(0),
        }));
        assert!(plan(&d, &actual).unwrap().is_empty());

        actual.object_lock = ObjectLock::Enabled(Some(Retention {
            mode: "COMPLIANCE".into(),
            days: Some(7),
            years: None,
        }));
        assert!(plan(&d, &actual).unwrap().retention.is_some());
    }

    #[test]
    fn without_a_lock_setting_object_lock_is_left_alone() {
        let d = desired(&lifecycle(), "drctl");
        let mut actual = matching(&d);
        actual.object_lock = ObjectLock::Enabled(Some(Retention {
            mode: "COMPLIANCE".into(),
            days: None,
            years: Some(1),
        }));
        let c = compare(&d, &actual);
        let lock = c.settings.iter().find(|s| s.name == "object lock").unwrap();
        assert!(!lock.drift);
        assert_eq!(lock.desired, NOT_MANAGED);
        assert!(lock.actual.contains("COMPLIANCE retention of 1 year"));
    }

    #[test]
    fn descriptions_read_as_sentences() {
        let d = desired(&lifecycle(), "drctl");
        assert_eq!(
            d.rules[1].describe(),
            "objects under `drctl/backups/` tagged drctl-kind=data: move to GLACIER after 30 days"
        );
        assert_eq!(
            d.rules[2].describe(),
            "objects under `drctl/`: delete noncurrent versions 14 days after they become noncurrent; remove delete markers left without versions"
        );
        assert_eq!(
            d.rules[0].describe(),
            "objects under `drctl/`: abort incomplete multipart uploads 1 day after they start"
        );
    }
}
