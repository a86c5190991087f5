//! The controls section: for each control auditors ask about, what the
//! report's evidence shows, what it does not, and how much of the control
//! that covers. Sentences are built from the computed figures, never
//! claimed without them.

use super::{Control, Coverage, PolicyReport, ProtectionView, fmt_seconds, fmt_time, plural};

/// Facts the control statements are made of.
struct Facts<'a> {
    policies: usize,
    backups: usize,
    backups_failed: usize,
    /// `name (n)` for each policy with failed attempts in the period.
    with_failures: Vec<String>,
    without_run_records: Vec<&'a str>,
    with_backups: Vec<&'a str>,
    without_backups: Vec<&'a str>,
    rpo_targets: usize,
    rpo_met: usize,
    rpo_missed: Vec<String>,
    without_rpo_target: Vec<&'a str>,
    with_retention: usize,
    drilled_configured: Vec<&'a str>,
    not_configured: Vec<&'a str>,
    drills_run: usize,
    drills_passed: usize,
    drills_failed: usize,
    data_verified: usize,
    with_passed_drill: Vec<&'a str>,
    without_passed_drill: Vec<&'a str>,
    latest_failed: Vec<&'a str>,
    rto_missed: Vec<String>,
    rto_met: Vec<String>,
    broken_chains: Vec<&'a str>,
    without_records: Vec<&'a str>,
    unverified_backups: Vec<&'a str>,
}

/// The names of the policies for which `f` holds.
fn matching(policies: &[PolicyReport], f: impl Fn(&PolicyReport) -> bool) -> Vec<&str> {
    policies
        .iter()
        .filter(|p| f(p))
        .map(|p| p.name.as_str())
        .collect()
}

fn facts(policies: &[PolicyReport]) -> Facts<'_> {
    let names = |f: fn(&PolicyReport) -> bool| matching(policies, f);
    Facts {
        policies: policies.len(),
        backups: policies.iter().map(|p| p.backups.taken).sum(),
        backups_failed: policies.iter().map(|p| p.backups.failed).sum(),
        with_failures: policies
            .iter()
            .filter(|p| p.backups.failed > 0)
            .map(|p| format!("{} ({})", p.name, p.backups.failed))
            .collect(),
        without_run_records: names(|p| p.backups.failed_note.is_some()),
        with_backups: names(|p| p.backups.taken > 0),
        without_backups: names(|p| p.backups.taken == 0),
        rpo_targets: policies
            .iter()
            .filter(|p| p.backups.rpo_target_seconds.is_some())
            .count(),
        rpo_met: policies
            .iter()
            .filter(|p| p.backups.rpo_met == Some(true))
            .count(),
        rpo_missed: policies
            .iter()
            .filter(|p| p.backups.rpo_met == Some(false))
            .map(|p| match &p.backups.largest_gap {
                Some(g) => format!(
                    "{} (largest gap {}, target {})",
                    p.name,
                    fmt_seconds(g.seconds),
                    fmt_seconds(p.backups.rpo_target_seconds.unwrap_or_default())
                ),
                None => format!("{} (no backup)", p.name),
            })
            .collect(),
        without_rpo_target: names(|p| p.backups.rpo_target_seconds.is_none()),
        with_retention: policies
            .iter()
            .filter(|p| !p.retention.summary.starts_with("none"))
            .count(),
        drilled_configured: names(|p| p.drills.configured),
        not_configured: names(|p| !p.drills.configured),
        drills_run: policies.iter().map(|p| p.drills.run).sum(),
        drills_passed: policies.iter().map(|p| p.drills.passed).sum(),
        drills_failed: policies.iter().map(|p| p.drills.failed).sum(),
        data_verified: policies.iter().map(|p| p.drills.data_verified).sum(),
        with_passed_drill: names(|p| p.drills.passed > 0),
        without_passed_drill: names(|p| p.drills.passed == 0),
        latest_failed: names(|p| p.drills.latest_passed == Some(false)),
        rto_missed: policies
            .iter()
            .filter(|p| p.drills.rto_met == Some(false))
            .map(|p| {
                format!(
                    "{} (worst {}, target {})",
                    p.name,
                    fmt_seconds(p.drills.rto_worst_seconds.unwrap_or_default()),
                    fmt_seconds(p.drills.rto_target_seconds.unwrap_or_default())
                )
            })
            .collect(),
        rto_met: policies
            .iter()
            .filter(|p| p.drills.rto_met == Some(true))
            .map(|p| {
                format!(
                    "{} (worst {}, target {})",
                    p.name,
                    fmt_seconds(p.drills.rto_worst_seconds.unwrap_or_default()),
                    fmt_seconds(p.drills.rto_target_seconds.unwrap_or_default())
                )
            })
            .collect(),
        broken_chains: names(|p| !p.chain.ok),
        without_records: names(|p| p.chain.records == 0),
        unverified_backups: names(|p| p.backups.taken > 0 && p.drills.data_verified == 0),
    }
}

fn list(names: &[&str]) -> String {
    names.join(", ")
}

impl Facts<'_> {
    /// Backups exist for every policy, every policy has an RPO target and
    /// met it, and no backup attempt failed: a policy without a target has
    /// nothing to be judged against, and a failed attempt is a gap.
    fn backup_coverage(&self) -> Coverage {
        if self.backups == 0 {
            Coverage::NotShown
        } else if self.without_backups.is_empty()
            && self.rpo_missed.is_empty()
            && self.without_rpo_target.is_empty()
            && self.backups_failed == 0
        {
            Coverage::Shown
        } else {
            Coverage::Partial
        }
    }

    /// Every policy's most recent drill in the period passed, within its
    /// RTO target, and every chain of records is intact.
    fn drill_coverage(&self) -> Coverage {
        if self.drills_passed == 0 {
            Coverage::NotShown
        } else if self.without_passed_drill.is_empty()
            && self.latest_failed.is_empty()
            && self.rto_missed.is_empty()
            && self.broken_chains.is_empty()
        {
            Coverage::Shown
        } else {
            Coverage::Partial
        }
    }

    fn backups_taken(&self) -> String {
        if self.policies == 0 {
            return "No policies are configured, so there is nothing to show.".to_string();
        }
        let mut s = format!(
            "{} of {} polic{} had backups in the period ({} backup{} in all).",
            self.with_backups.len(),
            self.policies,
            if self.policies == 1 { "y" } else { "ies" },
            self.backups,
            plural(self.backups)
        );
        if !self.without_backups.is_empty() {
            s.push_str(&format!(
                " No backup in the period for: {}.",
                list(&self.without_backups)
            ));
        }
        s.push(' ');
        s.push_str(&self.failed());
        s
    }

    /// The recorded failed attempts, and the success rate they give.
    fn failed(&self) -> String {
        let attempts = self.backups + self.backups_failed;
        let mut s = format!(
            "{} failed backup attempt{} recorded in the period",
            self.backups_failed,
            plural(self.backups_failed)
        );
        if attempts > 0 {
            s.push_str(&format!(
                " ({} of {attempts} attempt{} succeeded, {})",
                self.backups,
                plural(attempts),
                super::fmt_percent(self.backups as f64 * 100.0 / attempts as f64)
            ));
        }
        if !self.with_failures.is_empty() {
            s.push_str(&format!(": {}", self.with_failures.join(", ")));
        }
        s.push('.');
        if !self.without_run_records.is_empty() {
            s.push_str(&format!(
                " No run records at all for: {} (recorded since drctl 0.1.0).",
                list(&self.without_run_records)
            ));
        }
        s
    }

    fn rpo(&self) -> String {
        let mut s = if self.rpo_targets == 0 {
            "No policy sets an RPO target, so the gaps between backups are reported but not judged."
                .to_string()
        } else {
            format!(
                "The largest gap between backups met the RPO target for {} of {} polic{} with a target.",
                self.rpo_met,
                self.rpo_targets,
                if self.rpo_targets == 1 { "y" } else { "ies" }
            )
        };
        if !self.rpo_missed.is_empty() {
            s.push_str(&format!(" Missed: {}.", self.rpo_missed.join("; ")));
        }
        if self.rpo_targets > 0 && !self.without_rpo_target.is_empty() {
            s.push_str(&format!(
                " No target for: {}.",
                list(&self.without_rpo_target)
            ));
        }
        s
    }

    fn drills(&self) -> String {
        if self.drills_run == 0 {
            return "No restore drills were run in the period.".to_string();
        }
        let mut s = format!(
            "{} restore drill{} ran in the period: {} passed, {} failed.",
            self.drills_run,
            plural(self.drills_run),
            self.drills_passed,
            self.drills_failed
        );
        if !self.with_passed_drill.is_empty() {
            s.push_str(&format!(
                " At least one drill passed for: {}.",
                list(&self.with_passed_drill)
            ));
        }
        let untested: Vec<&str> = self
            .without_passed_drill
            .iter()
            .copied()
            .filter(|n| self.drilled_configured.contains(n))
            .collect();
        if !untested.is_empty() {
            s.push_str(&format!(" No passed drill for: {}.", list(&untested)));
        }
        if !self.latest_failed.is_empty() {
            s.push_str(&format!(
                " The most recent drill failed for: {}.",
                list(&self.latest_failed)
            ));
        }
        s
    }

    fn rto(&self) -> Option<String> {
        if self.rto_met.is_empty() && self.rto_missed.is_empty() {
            return None;
        }
        let mut s = String::new();
        if !self.rto_met.is_empty() {
            s.push_str(&format!(
                "Every passed drill finished within the RTO target for: {}.",
                self.rto_met.join("; ")
            ));
        }
        if !self.rto_missed.is_empty() {
            if !s.is_empty() {
                s.push(' ');
            }
            s.push_str(&format!(
                "The RTO target was missed for: {}.",
                self.rto_missed.join("; ")
            ));
        }
        Some(s)
    }

    fn chain(&self) -> String {
        if self.without_records.len() == self.policies {
            "There are no drill records, so there is no chain of records to check.".to_string()
        } else if self.broken_chains.is_empty() && self.without_records.is_empty() {
            "The drill records of every policy form an intact hash chain (see the evidence appendix)."
                .to_string()
        } else if self.broken_chains.is_empty() {
            format!(
                "The drill records form an intact hash chain where there are any (see the evidence appendix); no records for: {}.",
                list(&self.without_records)
            )
        } else {
            format!(
                "The chain of drill records is BROKEN for: {}. Records were edited or removed; the drill figures for these policies cannot be relied on until that is explained.",
                list(&self.broken_chains)
            )
        }
    }

    fn verified(&self) -> String {
        if self.data_verified == 0 {
            "No drill in the period compared restored data with the fingerprint taken at backup time, so the backups are not shown to be exact, retrievable copies.".to_string()
        } else {
            let mut s = format!(
                "{} passed drill{} restored a backup and found it identical to the fingerprint taken at backup time (per table: row count and a hash of every row; for files: content, mode and link target; for a cluster: every file of the base backup against the checksums in the server's backup_manifest).",
                self.data_verified,
                plural(self.data_verified)
            );
            if !self.unverified_backups.is_empty() {
                s.push_str(&format!(
                    " Not shown for: {}.",
                    list(&self.unverified_backups)
                ));
            }
            s
        }
    }

    fn not_drilled(&self) -> Option<String> {
        (!self.not_configured.is_empty()).then(|| {
            format!(
                "Policies without a [drill] section are not tested by drctl: {}.",
                list(&self.not_configured)
            )
        })
    }
}

/// A control with its statements; empty optional statements are dropped.
/// `head` is id, framework, reference, title and requirement.
fn control(
    head: [&str; 5],
    coverage: Coverage,
    shows: Vec<Option<String>>,
    does_not_show: Vec<Option<String>>,
) -> Control {
    let [id, framework, reference, title, requirement] = head;
    Control {
        id: id.to_string(),
        framework: framework.to_string(),
        reference: reference.to_string(),
        title: title.to_string(),
        requirement: requirement.to_string(),
        coverage,
        shows: shows.into_iter().flatten().collect(),
        does_not_show: does_not_show.into_iter().flatten().collect(),
    }
}

fn s(text: &str) -> Option<String> {
    Some(text.to_string())
}

const FAILED_NOT_RECORDED: &str = "Failed backup attempts that left no run record: attempts that could not reach the repository to write one, and any made before drctl 0.1.0 recorded them.";
const NOT_DATA: &str = "That the stored data is intact today: the report reads manifests, not data (`drctl verify --read-data` authenticates every stored byte).";

pub(super) fn controls(
    policies: &[PolicyReport],
    protection: &ProtectionView,
    recipients: usize,
) -> Vec<Control> {
    let f = facts(policies);
    let backup = f.backup_coverage();
    let drill = f.drill_coverage();
    let protection_line = if protection.error.is_some() {
        format!("Bucket protection: {}.", protection.summary)
    } else if protection.applicable {
        format!("The bucket has {}.", protection.summary)
    } else {
        "The repository is a local directory: it has no versioning or Object Lock.".to_string()
    };
    let encryption = format!(
        "Backups are encrypted with age to {recipients} recipient{} (fingerprints above); each manifest records the sha256 of the stored and of the original bytes.",
        plural(recipients)
    );
    let retention = format!(
        "Retention rules are set for {} of {} polic{}.",
        f.with_retention,
        f.policies,
        if f.policies == 1 { "y" } else { "ies" }
    );
    let last_drills: Vec<String> = policies
        .iter()
        .filter(|p| p.drills.run > 0)
        .map(|p| {
            format!(
                "{}: {} drill{} from {} to {}",
                p.name,
                p.drills.run,
                plural(p.drills.run),
                fmt_time(p.drills.first.expect("run > 0")),
                fmt_time(p.drills.last.expect("run > 0"))
            )
        })
        .collect();
    let periodic = if last_drills.is_empty() {
        "No drills ran in the period, so no periodic testing is shown.".to_string()
    } else {
        format!("Drills by policy: {}.", last_drills.join("; "))
    };
    let iso = match (backup, drill) {
        (Coverage::Shown, Coverage::Shown) => Coverage::Shown,
        (Coverage::NotShown, Coverage::NotShown) => Coverage::NotShown,
        _ => Coverage::Partial,
    };
    let hipaa_a = match backup {
        Coverage::NotShown => Coverage::NotShown,
        Coverage::Shown if f.unverified_backups.is_empty() => Coverage::Shown,
        _ => Coverage::Partial,
    };
    vec![
        control(
            [
                "soc2-a1.2",
                "SOC 2 (Trust Services Criteria, Availability)",
                "A1.2",
                "Backup processes and recovery infrastructure",
                "The entity authorizes, designs, develops or acquires, implements, operates, approves, maintains, and monitors environmental protections, software, data backup processes, and recovery infrastructure to meet its objectives.",
            ],
            backup,
            vec![
                Some(f.backups_taken()),
                Some(f.rpo()),
                Some(encryption.clone()),
                Some(protection_line.clone()),
                Some(retention.clone()),
            ],
            vec![
                s(FAILED_NOT_RECORDED),
                s(NOT_DATA),
                s(
                    "Environmental protections (power, cooling, fire) and infrastructure outside drctl.",
                ),
                s(
                    "That alerts fire when a backup is late: the daemon's metrics and alerts are not part of this report.",
                ),
            ],
        ),
        control(
            [
                "soc2-a1.3",
                "SOC 2 (Trust Services Criteria, Availability)",
                "A1.3",
                "Recovery plan testing",
                "The entity tests recovery plan procedures supporting system recovery to meet its objectives.",
            ],
            drill,
            vec![Some(f.drills()), f.rto(), Some(f.chain())],
            vec![
                f.not_drilled(),
                s(
                    "Drills restore into a scratch database or directory; they do not fail over the production system or test the wider recovery plan (people, DNS, application servers).",
                ),
                s("Who reviewed the drill results, and what was done about failures."),
            ],
        ),
        control(
            [
                "iso27001-a.8.13",
                "ISO/IEC 27001:2022 Annex A",
                "A.8.13",
                "Information backup",
                "Backup copies of information, software and systems shall be maintained and regularly tested in accordance with the agreed topic-specific policy on backup.",
            ],
            iso,
            vec![
                Some(f.backups_taken()),
                Some(retention),
                Some(f.rpo()),
                Some(f.drills()),
                Some(f.chain()),
            ],
            vec![
                s(
                    "The topic-specific backup policy itself, its approval, and whether the policies configured in drctl cover everything it puts in scope.",
                ),
                s(
                    "Backups of software and systems (hosts, images) other than the databases and files configured here.",
                ),
                f.not_drilled(),
                s(FAILED_NOT_RECORDED),
            ],
        ),
        control(
            [
                "hipaa-164.308(a)(7)(ii)(A)",
                "HIPAA Security Rule",
                "164.308(a)(7)(ii)(A)",
                "Data backup plan (required)",
                "Establish and implement procedures to create and maintain retrievable exact copies of electronic protected health information.",
            ],
            hipaa_a,
            vec![
                Some(f.backups_taken()),
                Some(f.verified()),
                Some(encryption),
                Some(protection_line),
            ],
            vec![
                s(
                    "Which systems hold electronic protected health information: the scope is the policies configured in drctl.",
                ),
                s(FAILED_NOT_RECORDED),
                s(NOT_DATA),
            ],
        ),
        control(
            [
                "hipaa-164.308(a)(7)(ii)(B)",
                "HIPAA Security Rule",
                "164.308(a)(7)(ii)(B)",
                "Disaster recovery plan (required)",
                "Establish (and implement as needed) procedures to restore any loss of data.",
            ],
            drill,
            vec![Some(f.drills()), f.rto(), Some(f.chain())],
            vec![
                s("The written disaster recovery plan, its roles and its communication steps."),
                s(
                    "Recovery of whole hosts or environments: drills restore data into a scratch target.",
                ),
                f.not_drilled(),
            ],
        ),
        control(
            [
                "hipaa-164.308(a)(7)(ii)(D)",
                "HIPAA Security Rule",
                "164.308(a)(7)(ii)(D)",
                "Testing and revision procedures (addressable)",
                "Implement procedures for periodic testing and revision of contingency plans.",
            ],
            drill,
            vec![Some(f.drills()), Some(periodic), Some(f.chain())],
            vec![
                s(
                    "Revision of the contingency plan after tests: drctl records tests, not changes to the plan.",
                ),
                f.not_drilled(),
            ],
        ),
    ]
}
