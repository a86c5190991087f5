//! The Markdown report, for wikis and tickets: the same sections as the
//! HTML one, with tables instead of charts.

use std::fmt::Write;

use super::{
    PolicyReport, Report, chain_sentence, drills_sentence, failed_sentence, fmt_bytes, fmt_met,
    fmt_percent, fmt_seconds, fmt_time, plural, rpo_sentence, rto_sentence, short_recipient,
};

/// Text safe inside a table cell: no pipes, no line breaks.
fn cell(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('|', "\\|")
        .replace(['\n', '\r'], " ")
}

/// Renders the whole report as GitHub-flavoured Markdown.
pub fn render_markdown(r: &Report) -> String {
    let mut m = String::with_capacity(16 * 1024);
    let _ = writeln!(m, "# {}\n", r.title);
    let _ = writeln!(
        m,
        "- **Period:** {} to {} ({:.0} days)",
        fmt_time(r.period.since),
        fmt_time(r.period.until),
        r.period.days
    );
    let _ = writeln!(
        m,
        "- **Generated:** {} by drctl {}",
        fmt_time(r.generated_at),
        r.tool_version
    );
    let _ = writeln!(m, "- **Repository:** `{}`\n", r.repository.location);

    // Summary.
    let t = &r.totals;
    let _ = writeln!(m, "## Summary\n");
    let chains = if t.chains_intact && t.drill_records == 0 {
        "none"
    } else if t.chains_intact {
        "every chain intact"
    } else {
        "chain BROKEN"
    };
    let _ = writeln!(m, "{}\n", super::totals_sentence(t, chains));
    if !r.policies.is_empty() {
        m.push_str("| Policy | Backups | Failed backups | Largest gap (RPO) | Drills | RTO median / worst | Drill records |\n");
        m.push_str("|---|--:|---|---|---|---|---|\n");
        for p in &r.policies {
            let b = &p.backups;
            let d = &p.drills;
            let gap = match &b.largest_gap {
                Some(g) => format!(
                    "{} ({})",
                    fmt_seconds(g.seconds),
                    fmt_met(b.rpo_met, b.rpo_target_seconds.is_some())
                ),
                None => format!("— ({})", fmt_met(b.rpo_met, b.rpo_target_seconds.is_some())),
            };
            let drills = match d.pass_rate_percent {
                Some(rate) => format!("{} of {} passed ({})", d.passed, d.run, fmt_percent(rate)),
                None if d.configured => "none in this period".to_string(),
                None => "not configured".to_string(),
            };
            let rto = match (d.rto_median_seconds, d.rto_worst_seconds) {
                (Some(md), Some(w)) => format!(
                    "{} / {} ({})",
                    fmt_seconds(md),
                    fmt_seconds(w),
                    fmt_met(d.rto_met, d.rto_target_seconds.is_some())
                ),
                _ => "—".to_string(),
            };
            let _ = writeln!(
                m,
                "| `{}` ({}) | {} | {} | {} | {} | {} | {} |",
                p.name,
                p.kind,
                b.taken,
                match b.success_rate_percent {
                    Some(rate) if b.failed > 0 =>
                        format!("{} ({} succeeded)", b.failed, fmt_percent(rate)),
                    _ => b.failed.to_string(),
                },
                cell(&gap),
                cell(&drills),
                cell(&rto),
                cell(&chain_sentence(&p.chain))
            );
        }
        m.push('\n');
    } else {
        m.push_str("No policies are configured.\n\n");
    }

    // Repository.
    let p = &r.repository.protection;
    let _ = writeln!(m, "## Repository and encryption\n");
    let _ = writeln!(m, "- **Location:** `{}`", r.repository.location);
    if let Some(e) = &p.error {
        let _ = writeln!(
            m,
            "- **Versioning, Object Lock:** unknown, could not be read: {e}"
        );
    } else if !p.applicable {
        m.push_str("- **Versioning:** not applicable: local directory\n- **Object Lock:** not applicable: local directory\n");
    } else {
        let _ = writeln!(
            m,
            "- **Versioning:** {}",
            p.versioning.as_deref().unwrap_or("off (never enabled)")
        );
        let _ = writeln!(
            m,
            "- **Object Lock:** {}",
            p.object_lock.as_deref().unwrap_or("off")
        );
    }
    let _ = writeln!(
        m,
        "- **Lifecycle:** {}",
        if r.lifecycle.summary.is_empty() {
            "none set in drctl.toml".to_string()
        } else {
            r.lifecycle.summary.join("; ")
        }
    );
    m.push_str(
        "- **Encryption recipients** (fingerprint: first 8 bytes of sha256 of the public key):\n",
    );
    if r.recipients.is_empty() {
        m.push_str("  - none listed in drctl.toml\n");
    }
    for rc in &r.recipients {
        let _ = writeln!(
            m,
            "  - `{}` ({})",
            rc.fingerprint,
            short_recipient(&rc.recipient)
        );
    }
    m.push('\n');

    for p in &r.policies {
        policy(&mut m, p);
    }

    // Controls.
    m.push_str("## Controls\n\nHow the evidence above maps to the controls auditors ask about. \"Shown\" means the evidence in this report supports the control for every configured policy; it never means the control is met as a whole, which also depends on things outside drctl.\n\n");
    for c in &r.controls {
        let _ = writeln!(
            m,
            "### {} {} — {}\n\n**Evidence: {}.** *{}*\n\nWhat the evidence shows:\n",
            c.framework,
            c.reference,
            c.title,
            c.coverage.label(),
            c.requirement
        );
        for s in &c.shows {
            let _ = writeln!(m, "- {s}");
        }
        m.push_str("\nWhat it does not show:\n\n");
        for s in &c.does_not_show {
            let _ = writeln!(m, "- {s}");
        }
        m.push('\n');
    }

    m.push_str("## What this report does not show\n\n");
    for l in &r.limitations {
        let _ = writeln!(m, "- {l}");
    }
    m.push('\n');

    // Appendix.
    m.push_str("## Appendix: evidence\n\n### Chain check\n\n");
    let _ = writeln!(
        m,
        "Each drill record carries the sha256 of the policy's previous record; checked over every record in the repository, not only the period's. Result: **{}**.\n",
        if r.evidence.chains.iter().all(|c| c.records == 0) {
            "no drill records"
        } else if r.evidence.chains_intact {
            "every chain intact"
        } else {
            "BROKEN"
        }
    );
    for c in &r.evidence.chains {
        let _ = writeln!(m, "- `{}`: {}", c.policy, chain_sentence(c));
        for problem in &c.problems {
            let _ = writeln!(m, "  - {problem}");
        }
    }
    m.push_str("\n### Drill records in the period\n\n");
    if r.evidence.records.is_empty() {
        m.push_str("No drill records in this period.\n");
    } else {
        m.push_str("| Record | Started | Result | sha256 |\n|---|---|---|---|\n");
        for e in &r.evidence.records {
            let _ = writeln!(
                m,
                "| `{}` | {} | {} | `{}` |",
                cell(&e.key),
                e.started_at.map_or("—".to_string(), fmt_time),
                match (e.readable, e.passed) {
                    (false, _) => "unreadable",
                    (true, Some(true)) => "passed",
                    (true, _) => "failed",
                },
                e.sha256
            );
        }
    }
    m
}

fn policy(m: &mut String, p: &PolicyReport) {
    let b = &p.backups;
    let d = &p.drills;
    let _ = writeln!(m, "## Policy `{}` ({})\n", p.name, p.kind);
    let _ = writeln!(
        m,
        "- **Backups taken:** {}{}",
        b.taken,
        match (b.first, b.last) {
            (Some(f), Some(l)) if f == l => format!(" ({})", fmt_time(f)),
            (Some(f), Some(l)) => format!(" ({} to {})", fmt_time(f), fmt_time(l)),
            _ => String::new(),
        }
    );
    let _ = writeln!(m, "- **Backups failed:** {}", failed_sentence(b));
    let _ = writeln!(m, "- **Largest gap (RPO achieved):** {}", rpo_sentence(b));
    let _ = writeln!(m, "- **Drills:** {}", drills_sentence(d));
    let _ = writeln!(m, "- **RTO:** {}", rto_sentence(d));
    if let Some(latest) = b.stored_bytes_latest {
        let _ = writeln!(
            m,
            "- **Stored size:** latest {}, {} for the period's {} backup{}",
            fmt_bytes(latest),
            fmt_bytes(b.stored_bytes_total),
            b.taken,
            plural(b.taken)
        );
    }
    let _ = writeln!(m, "- **Retention:** `{}`", p.retention.summary);
    if !p.backup_recipients.is_empty() {
        let _ = writeln!(
            m,
            "- **Encrypted to:** {}",
            p.backup_recipients
                .iter()
                .map(|f| format!("`{f}`"))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let _ = writeln!(m, "- **Drill records:** {}", chain_sentence(&p.chain));
    for c in &p.copies {
        let _ = writeln!(m, "- **Copy:** {}", super::copy_sentence(c));
    }
    m.push('\n');
    if !p.notes.is_empty() {
        for n in &p.notes {
            let _ = writeln!(m, "> - {n}");
        }
        m.push('\n');
    }
    if !d.series.is_empty() {
        m.push_str("| Drill started | Backup restored | Result | RTO | Backup age (RPO) | Checks | Failure |\n|---|---|---|--:|--:|--:|---|\n");
        for x in &d.series {
            let _ = writeln!(
                m,
                "| {} | {} | {} | {} | {} | {} | {} |",
                fmt_time(x.started_at),
                match (&x.backup_id, &x.recovery) {
                    (Some(id), Some(r)) => format!(
                        "`{}` {}",
                        cell(id),
                        cell(&crate::drill::cluster::describe_recovery(r))
                    ),
                    (Some(id), None) => format!("`{}`", cell(id)),
                    (None, _) => "—".to_string(),
                },
                if x.passed { "passed" } else { "**failed**" },
                x.rto_seconds.map_or("—".to_string(), fmt_seconds),
                x.rpo_seconds.map_or("—".to_string(), fmt_seconds),
                x.checks_text("/"),
                cell(x.failure.as_deref().unwrap_or(""))
            );
        }
        m.push('\n');
    }
    if !p.chain.ok {
        m.push_str("Chain problems:\n\n");
        for problem in &p.chain.problems {
            let _ = writeln!(m, "- {problem}");
        }
        m.push('\n');
    }
}
