//! The HTML report: one self-contained file (inline CSS and SVG, no
//! scripts, no external resources) that reads well on screen and prints
//! well on A4 or Letter.

use std::fmt::Write;

use super::chart::{Chart, Mark, Point, Unit};
use super::{
    Control, Coverage, PolicyReport, Report, chain_sentence, drills_sentence, failed_sentence,
    fmt_bytes, fmt_met, fmt_percent, fmt_seconds, fmt_time, plural, rpo_sentence, rto_sentence,
    short_recipient,
};

/// Escapes text for HTML element content and attribute values.
pub(crate) fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Inline `code` spans for text that quotes commands and keys in backticks.
fn prose(s: &str) -> String {
    let escaped = esc(s);
    let mut out = String::with_capacity(escaped.len());
    for (i, part) in escaped.split('`').enumerate() {
        if i % 2 == 1 {
            out.push_str("<code>");
            out.push_str(part);
            out.push_str("</code>");
        } else {
            out.push_str(part);
        }
    }
    out
}

/// An HTML id fragment from a policy name (names are already safe, but an
/// id must never carry markup).
fn anchor(name: &str) -> String {
    name.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect()
}

const STYLE: &str = r#"
:root { --fg: #1f2328; --muted: #59636e; --line: #d1d9e0; --soft: #f6f8fa;
  --ok: #1a7f37; --ok-bg: #dafbe1; --bad: #cf222e; --bad-bg: #ffebe9;
  --warn: #9a6700; --warn-bg: #fff8c5; --accent: #0969da; }
* { box-sizing: border-box; }
html { -webkit-text-size-adjust: 100%; }
body { margin: 0; color: var(--fg); background: #fff;
  font: 15px/1.5 system-ui, -apple-system, "Segoe UI", "Noto Sans", "DejaVu Sans", Helvetica, Arial, sans-serif; }
main { max-width: 1000px; margin: 0 auto; padding: 28px 24px 48px; }
h1 { font-size: 1.9em; margin: 0 0 4px; letter-spacing: -0.01em; }
h2 { font-size: 1.35em; margin: 36px 0 12px; padding-bottom: 6px; border-bottom: 1px solid var(--line); }
h3 { font-size: 1.08em; margin: 22px 0 8px; }
p { margin: 6px 0; }
code, .mono { font-family: ui-monospace, "SFMono-Regular", "DejaVu Sans Mono", Menlo, Consolas, monospace; font-size: 0.88em; }
code { background: var(--soft); padding: 0 4px; border-radius: 4px; }
.meta { color: var(--muted); margin: 0; }
.meta b { color: var(--fg); font-weight: 600; }
table { border-collapse: collapse; width: 100%; margin: 8px 0 12px; font-size: 0.93em; }
th, td { text-align: left; vertical-align: top; padding: 6px 8px; border-bottom: 1px solid var(--line); }
th { background: var(--soft); font-weight: 600; }
td.num, th.num { text-align: right; white-space: nowrap; }
td.when { white-space: nowrap; }
.hash { font-family: ui-monospace, "DejaVu Sans Mono", Menlo, Consolas, monospace; font-size: 0.78em; word-break: break-all; }
.badge { display: inline-block; padding: 1px 8px; border-radius: 999px; font-size: 0.82em; font-weight: 600; white-space: nowrap; border: 1px solid transparent; }
.badge.ok { color: var(--ok); background: var(--ok-bg); border-color: #aceebb; }
.badge.bad { color: var(--bad); background: var(--bad-bg); border-color: #ffcecb; }
.badge.warn { color: var(--warn); background: var(--warn-bg); border-color: #f5e0a0; }
.badge.na { color: var(--muted); background: var(--soft); border-color: var(--line); }
.cards { display: grid; grid-template-columns: repeat(auto-fit, minmax(160px, 1fr)); gap: 10px; margin: 10px 0 14px; }
.card { border: 1px solid var(--line); border-radius: 8px; padding: 10px 12px; background: #fff; }
.card .label { color: var(--muted); font-size: 0.8em; text-transform: uppercase; letter-spacing: 0.04em; }
.card .value { font-size: 1.25em; font-weight: 600; margin: 2px 0; }
.card .detail { color: var(--muted); font-size: 0.85em; }
.notes { margin: 8px 0 12px; padding: 8px 12px 8px 28px; background: var(--warn-bg); border: 1px solid #f5e0a0; border-radius: 8px; }
.notes li { margin: 2px 0; }
dl.settings { display: grid; grid-template-columns: max-content 1fr; gap: 4px 16px; margin: 8px 0; }
dl.settings dt { color: var(--muted); }
dl.settings dd { margin: 0; }
figure { margin: 12px 0 18px; border: 1px solid var(--line); border-radius: 8px; padding: 10px 12px 6px; }
figcaption { font-size: 0.88em; color: var(--muted); margin-top: 4px; }
figcaption .key-ok { color: var(--ok); font-weight: 600; }
figcaption .key-bad { color: var(--bad); font-weight: 600; }
figcaption .key-target { color: var(--bad); font-weight: 600; }
.empty-chart { color: var(--muted); padding: 18px 0; text-align: center; }
svg.chart { width: 100%; height: auto; display: block; }
svg.chart .grid { stroke: #e6eaef; stroke-width: 1; }
svg.chart .tick, svg.chart .frame { stroke: #8c959f; stroke-width: 1; }
svg.chart .axis { fill: #59636e; font-size: 11px; font-family: inherit; }
svg.chart .series { fill: none; stroke: var(--accent); stroke-width: 2; }
svg.chart circle.pass { fill: var(--ok); stroke: #fff; stroke-width: 1.5; }
svg.chart circle.dot { fill: var(--accent); stroke: #fff; stroke-width: 1.5; }
svg.chart path.bad { stroke: var(--bad); stroke-width: 2.5; fill: none; }
svg.chart .target { stroke: var(--bad); stroke-width: 1.5; stroke-dasharray: 6 4; }
svg.chart .target-label { fill: var(--bad); font-size: 11px; font-weight: 600; }
.control { border: 1px solid var(--line); border-radius: 8px; padding: 4px 16px 10px; margin: 12px 0; }
.control h3 { display: flex; gap: 10px; align-items: baseline; flex-wrap: wrap; }
.control .ref { color: var(--muted); font-weight: 500; }
.control .requirement { color: var(--muted); font-style: italic; font-size: 0.92em; }
.control .cols { display: grid; grid-template-columns: 1fr 1fr; gap: 18px; }
.control h4 { font-size: 0.86em; text-transform: uppercase; letter-spacing: 0.04em; color: var(--muted); margin: 10px 0 4px; }
.control ul { margin: 0; padding-left: 18px; }
.control li { margin: 3px 0; }
.problems { color: var(--bad); }
footer { margin-top: 40px; color: var(--muted); font-size: 0.85em; border-top: 1px solid var(--line); padding-top: 10px; }
@media (max-width: 700px) { .control .cols { grid-template-columns: 1fr; } main { padding: 16px 12px; } }
@media print {
  @page { size: A4; margin: 14mm 12mm; }
  body { font-size: 10pt; }
  main { max-width: none; padding: 0; }
  h2 { break-after: avoid; margin-top: 22px; }
  h3, h4 { break-after: avoid; }
  section.policy { break-before: page; }
  figure, .card, .control, tr, .notes { break-inside: avoid; }
  thead { display: table-header-group; }
  * { -webkit-print-color-adjust: exact; print-color-adjust: exact; }
}
"#;

fn badge(class: &str, text: &str) -> String {
    format!("<span class=\"badge {class}\">{}</span>", esc(text))
}

fn met_badge(met: Option<bool>, has_target: bool) -> String {
    let class = match met {
        Some(true) => "ok",
        Some(false) => "bad",
        None => "na",
    };
    badge(class, fmt_met(met, has_target))
}

fn coverage_badge(c: Coverage) -> String {
    let class = match c {
        Coverage::Shown => "ok",
        Coverage::Partial => "warn",
        Coverage::NotShown => "bad",
    };
    badge(class, &format!("evidence: {}", c.label()))
}

fn card(label: &str, value: &str, detail: &str) -> String {
    format!(
        "<div class=\"card\"><div class=\"label\">{}</div><div class=\"value\">{value}</div><div class=\"detail\">{detail}</div></div>\n",
        esc(label)
    )
}

/// Renders the whole report as one HTML document.
pub fn render_html(r: &Report) -> String {
    let mut h = String::with_capacity(64 * 1024);
    let period = format!(
        "{} to {}",
        fmt_time(r.period.since),
        fmt_time(r.period.until)
    );
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n<meta name=\"generator\" content=\"drctl {}\">\n<title>{} — {}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n<main>\n",
        esc(&r.tool_version),
        esc(&r.title),
        esc(&period)
    );
    let _ = write!(
        h,
        "<header>\n<h1>{}</h1>\n<p class=\"meta\"><b>Period:</b> {} ({:.0} days) · <b>Generated:</b> {} by drctl {}</p>\n<p class=\"meta\"><b>Repository:</b> <code>{}</code></p>\n</header>\n",
        esc(&r.title),
        esc(&period),
        r.period.days,
        esc(&fmt_time(r.generated_at)),
        esc(&r.tool_version),
        esc(&r.repository.location)
    );
    summary(&mut h, r);
    repository(&mut h, r);
    for p in &r.policies {
        policy(&mut h, r, p);
    }
    controls(&mut h, &r.controls);
    h.push_str("<section id=\"limits\">\n<h2>What this report does not show</h2>\n<ul>\n");
    for l in &r.limitations {
        let _ = writeln!(h, "<li>{}</li>", prose(l));
    }
    h.push_str("</ul>\n</section>\n");
    appendix(&mut h, r);
    let _ = write!(
        h,
        "<footer>Generated by drctl {} on {}. The JSON form of this report (<code>drctl report --format json</code>) carries every figure; docs/reports.md defines them.</footer>\n</main>\n</body>\n</html>\n",
        esc(&r.tool_version),
        esc(&fmt_time(r.generated_at))
    );
    h
}

fn summary(h: &mut String, r: &Report) {
    h.push_str("<section id=\"summary\">\n<h2>Summary</h2>\n");
    let t = &r.totals;
    let chains = if t.chains_intact && t.drill_records == 0 {
        badge("na", "none")
    } else if t.chains_intact {
        badge("ok", "chain intact")
    } else {
        badge("bad", "chain BROKEN")
    };
    let _ = writeln!(h, "<p>{}</p>", super::totals_sentence(t, &chains));
    if r.policies.is_empty() {
        h.push_str("<p>No policies are configured.</p>\n</section>\n");
        return;
    }
    h.push_str("<table>\n<thead><tr><th>Policy</th><th class=\"num\">Backups</th><th>Failed backups</th><th>Largest gap (RPO)</th><th>Drills</th><th>RTO median / worst</th><th>Drill records</th></tr></thead>\n<tbody>\n");
    for p in &r.policies {
        let b = &p.backups;
        let d = &p.drills;
        let gap = match &b.largest_gap {
            Some(g) => fmt_seconds(g.seconds),
            None => "—".to_string(),
        };
        let drills = match d.pass_rate_percent {
            Some(rate) => format!(
                "{} of {} passed ({})",
                d.passed,
                d.run,
                esc(&fmt_percent(rate))
            ),
            None if d.configured => "none in this period".to_string(),
            None => "not configured".to_string(),
        };
        let rto = match (d.rto_median_seconds, d.rto_worst_seconds) {
            (Some(m), Some(w)) => format!("{} / {}", fmt_seconds(m), fmt_seconds(w)),
            _ => "—".to_string(),
        };
        let _ = writeln!(
            h,
            "<tr><td><a href=\"#policy-{}\">{}</a> <span class=\"meta\">{}</span></td><td class=\"num\">{}</td><td>{}</td><td>{} {}</td><td>{}</td><td>{} {}</td><td>{}</td></tr>",
            anchor(&p.name),
            esc(&p.name),
            esc(&p.kind),
            b.taken,
            match b.success_rate_percent {
                Some(rate) if b.failed > 0 => format!(
                    "{} <span class=\"meta\">({} succeeded)</span>",
                    b.failed,
                    esc(&fmt_percent(rate))
                ),
                _ => b.failed.to_string(),
            },
            esc(&gap),
            met_badge(b.rpo_met, b.rpo_target_seconds.is_some()),
            drills,
            esc(&rto),
            met_badge(d.rto_met, d.rto_target_seconds.is_some()),
            if p.chain.ok && p.chain.records == 0 {
                badge("na", "no records")
            } else if p.chain.ok {
                badge("ok", &format!("{} intact", p.chain.records))
            } else {
                badge("bad", "BROKEN")
            }
        );
    }
    h.push_str("</tbody>\n</table>\n<p class=\"meta\">Failed backups: attempts with a run record in the repository (recorded since drctl 0.1.0; an attempt that could not reach the repository may have left none).</p>\n</section>\n");
}

fn repository(h: &mut String, r: &Report) {
    let p = &r.repository.protection;
    h.push_str("<section id=\"repository\">\n<h2>Repository and encryption</h2>\n<dl class=\"settings\">\n");
    let _ = writeln!(
        h,
        "<dt>Location</dt><dd><code>{}</code></dd>",
        esc(&r.repository.location)
    );
    if let Some(e) = &p.error {
        let _ = writeln!(
            h,
            "<dt>Versioning, Object Lock</dt><dd>{} could not be read: {}</dd>",
            badge("warn", "unknown"),
            esc(e)
        );
    } else if !p.applicable {
        h.push_str("<dt>Versioning</dt><dd>not applicable: local directory</dd>\n<dt>Object Lock</dt><dd>not applicable: local directory</dd>\n");
    } else {
        let _ = writeln!(
            h,
            "<dt>Versioning</dt><dd>{}</dd>",
            match p.versioning.as_deref() {
                Some("Enabled") => badge("ok", "Enabled"),
                Some(v) => badge("warn", v),
                None => badge("bad", "off (never enabled)"),
            }
        );
        let _ = writeln!(
            h,
            "<dt>Object Lock</dt><dd>{}</dd>",
            match p.object_lock.as_deref() {
                Some(l) => badge("ok", l),
                None => badge("na", "off"),
            }
        );
    }
    let lifecycle = if r.lifecycle.summary.is_empty() {
        "none set in drctl.toml".to_string()
    } else {
        esc(&r.lifecycle.summary.join("; "))
    };
    let _ = writeln!(h, "<dt>Lifecycle</dt><dd>{lifecycle}</dd>");
    h.push_str("</dl>\n<h3>Encryption recipients</h3>\n");
    if r.recipients.is_empty() {
        h.push_str("<p>None listed in drctl.toml.</p>\n");
    } else {
        h.push_str("<table>\n<thead><tr><th>Fingerprint</th><th>Public key (age X25519)</th></tr></thead>\n<tbody>\n");
        for rc in &r.recipients {
            let _ = writeln!(
                h,
                "<tr><td class=\"mono\">{}</td><td class=\"mono\" title=\"{}\">{}</td></tr>",
                esc(&rc.fingerprint),
                esc(&rc.recipient),
                esc(&short_recipient(&rc.recipient))
            );
        }
        h.push_str("</tbody>\n</table>\n<p class=\"meta\">Fingerprint: the first 8 bytes of sha256 of the public key, in hex. Restores need the matching private identity, which is never stored in the repository.</p>\n");
    }
    h.push_str("</section>\n");
}

fn policy(h: &mut String, r: &Report, p: &PolicyReport) {
    let b = &p.backups;
    let d = &p.drills;
    let _ = writeln!(
        h,
        "<section class=\"policy\" id=\"policy-{}\">\n<h2>Policy <code>{}</code> <span class=\"meta\">{}</span></h2>",
        anchor(&p.name),
        esc(&p.name),
        esc(&p.kind)
    );
    h.push_str("<div class=\"cards\">\n");
    h.push_str(&card(
        "Backups taken",
        &b.taken.to_string(),
        &match (b.first, b.last) {
            (Some(f), Some(l)) if f == l => esc(&fmt_time(f)),
            (Some(f), Some(l)) => format!("{} to {}", esc(&fmt_time(f)), esc(&fmt_time(l))),
            _ => "none in this period".to_string(),
        },
    ));
    h.push_str(&card(
        "Backups failed",
        &b.failed.to_string(),
        &esc(&failed_sentence(b)),
    ));
    h.push_str(&card(
        "Largest gap (RPO achieved)",
        &match &b.largest_gap {
            Some(g) => esc(&fmt_seconds(g.seconds)),
            None => "—".to_string(),
        },
        &match b.rpo_target_seconds {
            Some(t) => format!(
                "target {} {}",
                esc(&fmt_seconds(t)),
                met_badge(b.rpo_met, true)
            ),
            None => met_badge(None, false),
        },
    ));
    h.push_str(&card(
        "Drills",
        &match d.pass_rate_percent {
            Some(_) => format!("{} of {} passed", d.passed, d.run),
            None => "none".to_string(),
        },
        &match d.pass_rate_percent {
            Some(rate) => format!("{} failed · {}", d.failed, esc(&fmt_percent(rate))),
            None if d.configured => "no drills were run in this period".to_string(),
            None => "no [drill] section".to_string(),
        },
    ));
    h.push_str(&card(
        "RTO median / worst",
        &match (d.rto_median_seconds, d.rto_worst_seconds) {
            (Some(m), Some(w)) => format!("{} / {}", esc(&fmt_seconds(m)), esc(&fmt_seconds(w))),
            _ => "—".to_string(),
        },
        &match d.rto_target_seconds {
            Some(t) => format!(
                "target {} {}",
                esc(&fmt_seconds(t)),
                met_badge(d.rto_met, true)
            ),
            None => met_badge(None, false),
        },
    ));
    h.push_str("</div>\n");
    if !p.notes.is_empty() {
        h.push_str("<ul class=\"notes\">\n");
        for n in &p.notes {
            let _ = writeln!(h, "<li>{}</li>", prose(n));
        }
        h.push_str("</ul>\n");
    }
    h.push_str("<dl class=\"settings\">\n");
    let _ = writeln!(h, "<dt>RPO</dt><dd>{}</dd>", esc(&rpo_sentence(b)));
    let _ = writeln!(h, "<dt>Drills</dt><dd>{}</dd>", esc(&drills_sentence(d)));
    let _ = writeln!(h, "<dt>RTO</dt><dd>{}</dd>", esc(&rto_sentence(d)));
    for c in &p.copies {
        let _ = writeln!(h, "<dt>Copy</dt><dd>{}</dd>", esc(&super::copy_sentence(c)));
    }
    let _ = writeln!(
        h,
        "<dt>Stored size</dt><dd>{}</dd>",
        match b.stored_bytes_latest {
            Some(latest) => format!(
                "latest {}, {} for the period's {} backup{}",
                esc(&fmt_bytes(latest)),
                esc(&fmt_bytes(b.stored_bytes_total)),
                b.taken,
                plural(b.taken)
            ),
            None => "—".to_string(),
        }
    );
    let _ = writeln!(
        h,
        "<dt>Retention</dt><dd><code>{}</code></dd>",
        esc(&p.retention.summary)
    );
    let _ = writeln!(
        h,
        "<dt>Encrypted to</dt><dd class=\"mono\">{}</dd>",
        if p.backup_recipients.is_empty() {
            "—".to_string()
        } else {
            esc(&p.backup_recipients.join(", "))
        }
    );
    let _ = writeln!(
        h,
        "<dt>Drill records</dt><dd>{}</dd>\n</dl>",
        esc(&chain_sentence(&p.chain))
    );

    // RTO per drill.
    h.push_str("<figure>\n");
    if d.series.is_empty() {
        h.push_str("<div class=\"empty-chart\">No drills were run in this period.</div>\n");
    } else {
        let chart = Chart {
            title: &format!("RTO per drill of {}", p.name),
            since: r.period.since,
            until: r.period.until,
            points: d
                .series
                .iter()
                .map(|x| Point {
                    t: x.started_at,
                    value: x.rto_seconds.unwrap_or(0.0),
                    mark: if x.passed { Mark::Pass } else { Mark::Fail },
                    label: format!(
                        "{}: {}, RTO {}",
                        fmt_time(x.started_at),
                        if x.passed { "passed" } else { "failed" },
                        x.rto_seconds
                            .map_or("not measured".to_string(), fmt_seconds)
                    ),
                })
                .collect(),
            unit: Unit::Seconds,
            target: d
                .rto_target_seconds
                .map(|t| (t, format!("RTO target {}", fmt_seconds(t)))),
            line: false,
        };
        h.push_str(&chart.to_svg());
    }
    h.push_str("<figcaption>RTO per drill over the period: <span class=\"key-ok\">●</span> passed, <span class=\"key-bad\">✕</span> failed (drawn at 0 when the failure came before a time was measured), <span class=\"key-target\">- - -</span> target.</figcaption>\n</figure>\n");

    // Backup size over time.
    h.push_str("<figure>\n");
    if b.series.is_empty() {
        h.push_str("<div class=\"empty-chart\">No backups in this period.</div>\n");
    } else {
        let chart = Chart {
            title: &format!("Stored size per backup of {}", p.name),
            since: r.period.since,
            until: r.period.until,
            points: b
                .series
                .iter()
                .map(|x| Point {
                    t: x.point_in_time,
                    value: x.stored_bytes as f64,
                    mark: Mark::Dot,
                    label: format!(
                        "{} ({}): {} stored, {} original",
                        x.id,
                        fmt_time(x.point_in_time),
                        fmt_bytes(x.stored_bytes),
                        fmt_bytes(x.plaintext_bytes)
                    ),
                })
                .collect(),
            unit: Unit::Bytes,
            target: None,
            line: true,
        };
        h.push_str(&chart.to_svg());
    }
    h.push_str("<figcaption>Stored (compressed and encrypted) size of each backup over the period.</figcaption>\n</figure>\n");

    if !d.series.is_empty() {
        h.push_str("<h3>Drills in the period</h3>\n<table>\n<thead><tr><th>Started</th><th>Backup restored</th><th>Result</th><th class=\"num\">RTO</th><th class=\"num\">Backup age (RPO)</th><th class=\"num\">Checks</th></tr></thead>\n<tbody>\n");
        for x in &d.series {
            let _ = writeln!(
                h,
                "<tr><td class=\"when\">{}</td><td class=\"mono\">{}</td><td>{}{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td></tr>",
                esc(&fmt_time(x.started_at)),
                esc(&x.restored_text().unwrap_or_else(|| "—".into())),
                if x.passed {
                    badge("ok", "passed")
                } else {
                    badge("bad", "failed")
                },
                x.failure
                    .as_deref()
                    .map(|f| format!("<br><span class=\"meta\">{}</span>", esc(f)))
                    .unwrap_or_default(),
                esc(&x.rto_seconds.map_or("—".to_string(), fmt_seconds)),
                esc(&x.rpo_seconds.map_or("—".to_string(), fmt_seconds)),
                esc(&x.checks_text(" / "))
            );
        }
        h.push_str("</tbody>\n</table>\n");
    }
    if !p.chain.ok {
        h.push_str("<h3>Chain problems</h3>\n<ul class=\"problems\">\n");
        for problem in &p.chain.problems {
            let _ = writeln!(h, "<li class=\"mono\">{}</li>", esc(problem));
        }
        h.push_str("</ul>\n");
    }
    h.push_str("</section>\n");
}

fn controls(h: &mut String, controls: &[Control]) {
    h.push_str("<section id=\"controls\">\n<h2>Controls</h2>\n<p>How the evidence above maps to the controls auditors ask about. “Shown” means the evidence in this report supports the control for every configured policy; it never means the control is met as a whole, which also depends on things outside drctl (listed under “does not show”).</p>\n");
    for c in controls {
        let _ = write!(
            h,
            "<article class=\"control\" id=\"{}\">\n<h3><span>{} <span class=\"ref\">{}</span> — {}</span> {}</h3>\n<p class=\"requirement\">{}</p>\n<div class=\"cols\">\n<div>\n<h4>What the evidence shows</h4>\n<ul>\n",
            esc(&c.id),
            esc(&c.framework),
            esc(&c.reference),
            esc(&c.title),
            coverage_badge(c.coverage),
            esc(&c.requirement)
        );
        for s in &c.shows {
            let _ = writeln!(h, "<li>{}</li>", prose(s));
        }
        h.push_str("</ul>\n</div>\n<div>\n<h4>What it does not show</h4>\n<ul>\n");
        for s in &c.does_not_show {
            let _ = writeln!(h, "<li>{}</li>", prose(s));
        }
        h.push_str("</ul>\n</div>\n</div>\n</article>\n");
    }
    h.push_str("</section>\n");
}

fn appendix(h: &mut String, r: &Report) {
    h.push_str("<section id=\"evidence\">\n<h2>Appendix: evidence</h2>\n<h3>Chain check</h3>\n");
    let _ = writeln!(
        h,
        "<p>Each drill record carries the sha256 of the policy's previous record. Checked over every record in the repository, not only the period's: {}</p>",
        if r.evidence.chains.iter().all(|c| c.records == 0) {
            badge("na", "no drill records")
        } else if r.evidence.chains_intact {
            badge("ok", "every chain intact")
        } else {
            badge("bad", "BROKEN")
        }
    );
    h.push_str("<table>\n<thead><tr><th>Policy</th><th class=\"num\">Records</th><th>Result</th></tr></thead>\n<tbody>\n");
    for c in &r.evidence.chains {
        let result = if c.ok && c.records == 0 {
            badge("na", "no records")
        } else if c.ok {
            badge("ok", "intact")
        } else {
            let items: Vec<String> = c
                .problems
                .iter()
                .map(|p| format!("<li class=\"mono\">{}</li>", esc(p)))
                .collect();
            format!(
                "{}<ul class=\"problems\">{}</ul>",
                badge("bad", "BROKEN"),
                items.join("")
            )
        };
        let _ = writeln!(
            h,
            "<tr><td>{}</td><td class=\"num\">{}</td><td>{result}</td></tr>",
            esc(&c.policy),
            c.records
        );
    }
    h.push_str("</tbody>\n</table>\n<h3>Drill records in the period</h3>\n");
    if r.evidence.records.is_empty() {
        h.push_str("<p>No drill records in this period.</p>\n");
    } else {
        h.push_str("<table>\n<thead><tr><th>Record</th><th>Started</th><th>Result</th><th>sha256</th></tr></thead>\n<tbody>\n");
        for e in &r.evidence.records {
            let result = match (e.readable, e.passed) {
                (false, _) => badge("bad", "unreadable"),
                (true, Some(true)) => badge("ok", "passed"),
                (true, _) => badge("bad", "failed"),
            };
            let _ = writeln!(
                h,
                "<tr><td class=\"hash\">{}</td><td class=\"when\">{}</td><td>{result}</td><td class=\"hash\">{}</td></tr>",
                esc(&e.key),
                esc(&e.started_at.map_or("—".to_string(), fmt_time)),
                esc(&e.sha256)
            );
        }
        h.push_str("</tbody>\n</table>\n");
    }
    h.push_str("</section>\n");
}
