//! The daemon's status page (`/`): one self-contained HTML document for a
//! person with a browser, built from the same state as `/status` and
//! `/health`. No script, font, image or stylesheet from anywhere else (the
//! response's Content-Security-Policy forbids them), so it renders the same
//! behind an air gap and leaks nothing to a third party.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use chrono::{DateTime, Duration, SecondsFormat, Utc};

use super::state::{Check, DaemonState, KindState, PolicyState};
use crate::report::html::esc;
use crate::timespec::human_duration;

/// Sent with the page: inline styles only, nothing fetched, no framing.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'";

/// Seconds between reloads of an open page (a meta refresh, not a script).
const REFRESH_SECONDS: u32 = 30;

const STYLE: &str = "\
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#1a1a1a;background:#fff}\
h1{font-size:1.3em;margin:0 0 .2em}\
p.meta{color:#555;margin:0 0 1em}\
table{border-collapse:collapse;width:100%}\
th,td{text-align:left;padding:.35em .6em;border-bottom:1px solid #ddd;vertical-align:top}\
th{background:#f4f4f4}\
.ok{color:#176b2c}.bad{color:#a40000;font-weight:600}.none{color:#777}\
.banner{padding:.5em .8em;margin:0 0 1em;border-radius:4px}\
.banner.ok{background:#e6f4ea}.banner.bad{background:#fce8e6}\
code{font-family:ui-monospace,monospace;font-size:.95em}\
@media (prefers-color-scheme:dark){body{background:#111;color:#ddd}th{background:#222}\
th,td{border-color:#333}.ok{color:#6fcf7f}.bad{color:#ff7b72}.none{color:#999}\
.banner.ok{background:#12301a}.banner.bad{background:#3b1513}p.meta{color:#aaa}}";

/// Renders the page. `checks` is the `/health` verdict at `now`.
pub fn render(state: &DaemonState, checks: &BTreeMap<String, Check>, now: DateTime<Utc>) -> String {
    let healthy = checks.values().all(|c| c.ok) && !state.stopping;
    let mut h = String::with_capacity(8 * 1024);
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
         <meta http-equiv=\"refresh\" content=\"{REFRESH_SECONDS}\">\
         <title>drctl {} on {}</title><style>{STYLE}</style></head><body>\n",
        if healthy { "healthy" } else { "UNHEALTHY" },
        esc(&state.host)
    );
    let _ = writeln!(
        h,
        "<h1>drctl on {}</h1><p class=\"meta\">version {} · repository <code>{}</code> · \
         config <code>{}</code> · up since {} · page generated {}</p>",
        esc(&state.host),
        esc(state.version),
        esc(&state.repository),
        esc(&state.config),
        time(state.started_at),
        time(now),
    );

    let failing: Vec<(&String, &Check)> = checks.iter().filter(|(_, c)| !c.ok).collect();
    if failing.is_empty() && !state.stopping {
        h.push_str("<div class=\"banner ok\" id=\"verdict\">Healthy: every check passes.</div>\n");
    } else {
        h.push_str("<div class=\"banner bad\" id=\"verdict\"><strong>Unhealthy.</strong><ul>");
        if state.stopping {
            h.push_str("<li>the daemon is stopping</li>");
        }
        for (name, c) in failing {
            let _ = write!(h, "<li><code>{}</code>: {}</li>", esc(name), esc(&c.detail));
        }
        h.push_str("</ul></div>\n");
    }
    if let Some(e) = &state.last_reload_error {
        let _ = writeln!(
            h,
            "<div class=\"banner bad\">The last reload was refused (the previous configuration runs on): {}</div>",
            esc(e)
        );
    }
    if let Some(drift) = state.bucket_drift.as_ref().filter(|d| !d.is_empty()) {
        let _ = writeln!(
            h,
            "<div class=\"banner bad\">Bucket settings differ from drctl.toml (run <code>drctl repo status</code>): {}</div>",
            esc(&drift.join("; "))
        );
    }

    h.push_str(
        "<table id=\"policies\"><thead><tr><th>Policy</th><th>Newest backup</th><th>RPO</th>\
         <th>Next backup</th><th>Last drill</th><th>Last error</th></tr></thead><tbody>\n",
    );
    if state.policies.is_empty() {
        h.push_str("<tr><td colspan=\"6\" class=\"none\">no policies configured</td></tr>\n");
    }
    for (name, p) in &state.policies {
        let _ = writeln!(
            h,
            "<tr data-policy=\"{0}\"><td><strong>{0}</strong><br><span class=\"none\">{1}</span></td>\
             <td>{2}</td><td>{3}</td><td>{4}</td><td>{5}</td><td>{6}</td></tr>",
            esc(name),
            esc(p.kind),
            newest(p, now),
            rpo(p, now),
            next_run(&p.backup, now),
            drill(p, now),
            last_error(p),
        );
    }
    h.push_str("</tbody></table>\n");
    h.push_str(
        "<p class=\"meta\">Machine-readable: <a href=\"/status\">/status</a> · \
         <a href=\"/health\">/health</a> · <a href=\"/metrics\">/metrics</a>. \
         Times are UTC.</p>\n</body></html>\n",
    );
    h
}

fn newest(p: &PolicyState, now: DateTime<Utc>) -> String {
    match &p.newest_backup {
        Some(b) => format!(
            "<code>{}</code><br>{} ({} ago)",
            esc(&b.id),
            time(b.point_in_time),
            human_duration(now - b.point_in_time)
        ),
        None => "<span class=\"none\">none yet</span>".into(),
    }
}

fn rpo(p: &PolicyState, now: DateTime<Utc>) -> String {
    let Some(target) = p.rpo_target_seconds.map(Duration::seconds) else {
        return "<span class=\"none\">no target set</span>".into();
    };
    let target_text = human_duration(target);
    // A cluster's data-loss window is its WAL archive's lag.
    let (overdue, what) = match &p.wal {
        Some(wal) => (
            wal.overdue(target, p.added_at, now),
            wal.lag(now)
                .map(|l| format!("WAL archived {} ago", human_duration(l))),
        ),
        None => (
            p.rpo_overdue(now),
            p.newest_age(now)
                .map(|a| format!("backup {} old", human_duration(a))),
        ),
    };
    let what = what.unwrap_or_else(|| "nothing stored yet".into());
    match overdue {
        Some(true) => format!(
            "<span class=\"bad\">breached</span><br>{} (target {})",
            esc(&what),
            esc(&target_text)
        ),
        Some(false) => format!(
            "<span class=\"ok\">met</span><br>{} (target {})",
            esc(&what),
            esc(&target_text)
        ),
        None => format!(
            "<span class=\"none\">not checked yet</span> (target {})",
            esc(&target_text)
        ),
    }
}

fn next_run(k: &KindState, now: DateTime<Utc>) -> String {
    let mut out = if k.running && k.queued {
        "<span class=\"none\">queued</span>".to_string()
    } else if k.running {
        "<strong>running now</strong>".to_string()
    } else {
        String::new()
    };
    match (&k.schedule, k.next_run) {
        (Some(cron), Some(at)) => {
            if !out.is_empty() {
                out.push_str("<br>");
            }
            let _ = write!(
                out,
                "{} (in {})<br><code>{}</code>",
                time(at),
                human_duration(at - now),
                esc(cron)
            );
        }
        _ if out.is_empty() => out.push_str("<span class=\"none\">not scheduled</span>"),
        _ => {}
    }
    out
}

fn drill(p: &PolicyState, now: DateTime<Utc>) -> String {
    let Some(d) = &p.drill else {
        return "<span class=\"none\">no drills scheduled</span>".into();
    };
    let mut out = match (d.last_passed, d.last_finished_at) {
        (Some(passed), Some(at)) => format!(
            "<span class=\"{}\">{}</span> {} ({} ago)",
            if passed { "ok" } else { "bad" },
            if passed { "passed" } else { "failed" },
            time(at),
            human_duration(now - at)
        ),
        _ => "<span class=\"none\">none since the daemon started</span>".into(),
    };
    if let Some(rto) = d.last_rto_seconds {
        let _ = write!(out, "<br>RTO {:.0} s", rto);
        if let Some(target) = p.rto_target_seconds {
            let _ = write!(out, " (target {:.0} s)", target);
        }
    }
    if let Some(at) = d.next_run {
        let _ = write!(out, "<br>next {}", time(at));
    }
    out
}

fn last_error(p: &PolicyState) -> String {
    let mut errors = Vec::new();
    for (what, k) in [("backup", Some(&p.backup)), ("drill", p.drill.as_ref())] {
        if let Some(run) = k.and_then(|k| k.last_run.as_ref())
            && run.result == "failed"
        {
            errors.push(format!(
                "<span class=\"bad\">{what} failed</span> {}: {}",
                time(run.finished_at),
                esc(run.error.as_deref().unwrap_or("unknown error"))
            ));
        }
    }
    if let Some(e) = &p.last_prune_error {
        errors.push(format!(
            "<span class=\"bad\">prune failed</span>: {}",
            esc(e)
        ));
    }
    if let Some(wal) = &p.wal {
        for e in [&wal.scan_error, &wal.server_error].into_iter().flatten() {
            errors.push(format!("<span class=\"bad\">WAL check</span>: {}", esc(e)));
        }
    }
    if errors.is_empty() {
        "<span class=\"none\">none</span>".into()
    } else {
        errors.join("<br>")
    }
}

fn time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_from_the_state_cannot_become_markup() {
        let mut state = DaemonState {
            host: "<script>alert(1)</script>".into(),
            ..Default::default()
        };
        state.policies.insert(
            "a\"b<i>".into(),
            PolicyState {
                kind: "files",
                last_prune_error: Some("<img src=x onerror=alert(1)>".into()),
                ..Default::default()
            },
        );
        let page = render(&state, &BTreeMap::new(), Utc::now());
        assert!(!page.contains("<script>"), "{page}");
        assert!(!page.contains("<img"), "{page}");
        assert!(!page.contains("<i>"), "{page}");
        assert!(page.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
        assert!(page.contains("data-policy=\"a&quot;b&lt;i&gt;\""));
    }

    #[test]
    fn nothing_is_loaded_from_elsewhere() {
        let page = render(&DaemonState::default(), &BTreeMap::new(), Utc::now());
        for needle in [
            "<script", "<link", "<img", "src=", "http://", "https://", "@import", "url(",
        ] {
            assert!(!page.contains(needle), "{needle} in the page:\n{page}");
        }
    }
}
