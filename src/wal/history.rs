//! Timeline history files (`TTTTTTTT.history`): the timelines a timeline
//! descends from and the LSN at which each one was left. Recovery with
//! `recovery_target_timeline = 'latest'` follows them, so checking the WAL a
//! recovery needs means following them too.

use std::collections::BTreeMap;

use super::Lsn;

/// One line of a history file: the server left timeline `parent` at `at`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Switch {
    pub parent: u32,
    pub at: Lsn,
}

/// Parses a history file as PostgreSQL writes it
/// (`1\t0/3000158\tno recovery target specified`), oldest ancestor first.
///
/// # Errors
/// A description of the first line that is not one, or of ancestors that
/// are not in increasing order (PostgreSQL refuses such a file too).
pub fn parse(timeline: u32, text: &str) -> Result<Vec<Switch>, String> {
    let mut switches: Vec<Switch> = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let bad = || {
            format!(
                "{timeline:08X}.history line {}: `{}` is not `TIMELINE<tab>LSN<tab>REASON`",
                n + 1,
                line.escape_debug()
            )
        };
        let mut fields = line.split_whitespace();
        let parent: u32 = fields.next().and_then(|f| f.parse().ok()).ok_or_else(bad)?;
        let at: Lsn = fields.next().ok_or_else(bad)?.parse().map_err(|_| bad())?;
        if switches
            .last()
            .is_some_and(|prev| prev.parent >= parent || prev.at > at)
            || parent >= timeline
        {
            return Err(format!(
                "{timeline:08X}.history line {}: timeline {parent} at {at} does not follow the lines before it",
                n + 1
            ));
        }
        switches.push(Switch { parent, at });
    }
    Ok(switches)
}

/// The newest timeline recovery with `recovery_target_timeline = 'latest'`
/// picks from a backup on `start`: PostgreSQL probes `start + 1`, `start +
/// 2`, … and stops at the first history file that does not exist.
pub fn newest_timeline<T>(start: u32, histories: &BTreeMap<u32, T>) -> u32 {
    let mut newest = start;
    while histories.contains_key(&(newest + 1)) {
        newest += 1;
    }
    newest
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn history_lines_parse_in_order() {
        let text = "1\t0/3000158\tno recovery target specified\n\n\
                    2\t0/5000000\tbefore 2026-11-30 18:00:00+00\n";
        let s = parse(3, text).unwrap();
        assert_eq!(
            s,
            vec![
                Switch {
                    parent: 1,
                    at: "0/3000158".parse().unwrap()
                },
                Switch {
                    parent: 2,
                    at: "0/5000000".parse().unwrap()
                }
            ]
        );
        assert_eq!(parse(2, "# comment\n").unwrap(), vec![]);
        for bad in [
            "x\t0/1\treason",
            "1\tnope\treason",
            "1",
            "2\t0/5\tr\n1\t0/6\tr",
            "3\t0/1\tr",
        ] {
            assert!(parse(3, bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn newest_timeline_probes_upward_without_skipping() {
        let h: BTreeMap<u32, ()> = [(2, ()), (3, ()), (5, ())].into();
        assert_eq!(newest_timeline(1, &h), 3);
        assert_eq!(newest_timeline(3, &h), 3);
        assert_eq!(newest_timeline(4, &h), 5);
    }
}
