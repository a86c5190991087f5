//! How the daemon watches WAL archiving of `postgres-cluster` policies.
//!
//! Two sources, for two questions. The repository says what is safe: the
//! newest segment stored under `wal/<policy>/` and when it was stored, so
//! every daemon watching the same repository agrees, whichever host
//! archives. The server, when the policy's url reaches it, says why:
//! `pg_stat_archiver`'s failures and how many finished segments wait to be
//! archived. The archive lag (now minus the newest stored segment's time) is
//! what the policy's RPO target is compared with.
//!
//! Listing a whole archive at every check would cost a request per thousand
//! segments; after the first listing only the newest segment's "log" (the
//! 256 segments sharing its first sixteen hex digits, at 16 MiB), the next
//! one and the next timeline are listed, with a full listing now and then
//! for what those could miss (a timeline that skipped a number).

use std::time::Duration as StdDuration;

use chrono::{DateTime, Duration, Utc};

use super::state::{ServerArchiver, WalState};
use crate::repo::Repo;
use crate::storage::ObjectMeta;
use crate::wal::{Segment, WalKind, WalName};

/// A full listing of the archive at least this often.
pub const FULL_SCAN_INTERVAL: Duration = Duration::minutes(10);
/// Longer than this and the server counts as unreachable for this check.
const SERVER_TIMEOUT: StdDuration = StdDuration::from_secs(10);
/// Longer than this and the repository listing counts as failed.
const LIST_TIMEOUT: StdDuration = StdDuration::from_secs(30);

/// The prefixes to list, knowing the newest segment (in WAL order) seen so
/// far; the whole archive when nothing is known.
pub fn scan_prefixes(policy: &str, newest: Option<&str>) -> Vec<String> {
    let root = crate::wal::policy_prefix(policy);
    let Some(name) = newest.and_then(|n| WalName::parse(n).ok()) else {
        return vec![root];
    };
    let Ok(log) = u32::from_str_radix(&name.name[8..16], 16) else {
        return vec![root];
    };
    let tli = name.timeline;
    let mut prefixes = vec![format!("{root}{tli:08X}/{tli:08X}{log:08X}")];
    if let Some(next) = log.checked_add(1) {
        prefixes.push(format!("{root}{tli:08X}/{tli:08X}{next:08X}"));
    }
    if let Some(next) = tli.checked_add(1) {
        prefixes.push(format!("{root}{next:08X}/"));
    }
    prefixes
}

/// What a listing says: the newest segment by the time it was stored, and
/// the newest in WAL order (for narrowing the next listing).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Seen {
    pub last_archived: Option<(String, DateTime<Utc>)>,
    pub newest_in_order: Option<String>,
}

/// Folds a listing into what was seen before.
pub fn observe(policy: &str, before: Seen, objects: &[ObjectMeta]) -> Seen {
    let mut seen = before;
    for o in objects {
        let Some((name, _)) = crate::wal::parse_key(policy, &o.key) else {
            continue;
        };
        if name.kind != WalKind::Segment {
            continue;
        }
        // Segments stored in the same second (a drained spool, look-ahead)
        // are told apart by their place in the WAL.
        if let Some(t) = o.last_modified
            && seen
                .last_archived
                .as_ref()
                .is_none_or(|(n, at)| (t, &name.name) > (*at, n))
        {
            seen.last_archived = Some((name.name.clone(), t));
        }
        // Names of one kind sort as timeline, then position.
        if seen.newest_in_order.as_ref().is_none_or(|n| name.name > *n) {
            seen.newest_in_order = Some(name.name);
        }
    }
    seen
}

/// Finished segments between the last one archived and the one being
/// written: 0 when archiving keeps up. `None` when a name is not a segment
/// (`last_archived_wal` can be a `.history` file).
pub fn lag_segments(current: &str, last_archived: &str, segment_bytes: u64) -> Option<u64> {
    let seg = |n: &str| {
        let name = WalName::parse(n).ok()?;
        if name.kind == WalKind::History || segment_bytes == 0 {
            return None;
        }
        Segment::from_name(&name, segment_bytes)
    };
    let (current, last) = (seg(current)?, seg(last_archived)?);
    // Across a timeline switch the positions still count the WAL between.
    Some(current.number.saturating_sub(last.number).saturating_sub(1))
}

/// Asks the server for `pg_stat_archiver` and where it writes now.
///
/// # Errors
/// A sentence naming the server and what failed; the password never
/// appears in it.
pub async fn query_server(url: &str) -> Result<ServerArchiver, String> {
    let ask = async {
        let config = crate::source::postgres::resolve(url).map_err(|e| e.to_string())?;
        let target = crate::source::postgres::describe(&config);
        let client = crate::source::postgres::connect(&config)
            .await
            .map_err(|e| e.to_string())?;
        let row = client
            .query_one(
                "SELECT failed_count, last_archived_wal, last_failed_wal, \
                        extract(epoch FROM last_failed_time)::float8, \
                        CASE WHEN pg_is_in_recovery() THEN NULL \
                             ELSE pg_walfile_name(pg_current_wal_lsn()) END, \
                        (SELECT setting::bigint FROM pg_settings WHERE name = 'wal_segment_size') \
                 FROM pg_stat_archiver",
                &[],
            )
            .await
            .map_err(|e| {
                format!(
                    "{target}: reading pg_stat_archiver failed: {}",
                    crate::source::postgres::error_text(&e)
                )
            })?;
        let last_archived: Option<String> = row.get(1);
        let current: Option<String> = row.get(4);
        let segment_bytes: i64 = row.get(5);
        let lag = match (&current, &last_archived) {
            (Some(c), Some(l)) => lag_segments(c, l, segment_bytes.max(0) as u64),
            _ => None,
        };
        Ok(ServerArchiver {
            failed_count: row.get::<_, i64>(0).max(0) as u64,
            last_failed_wal: row.get(2),
            last_failed_at: row
                .get::<_, Option<f64>>(3)
                .and_then(|s| DateTime::from_timestamp_millis((s * 1000.0) as i64)),
            last_archived_wal: last_archived,
            current_wal: current,
            lag_segments: lag,
        })
    };
    match tokio::time::timeout(SERVER_TIMEOUT, ask).await {
        Ok(r) => r,
        Err(_) => Err(format!(
            "the server did not answer within {} s",
            SERVER_TIMEOUT.as_secs()
        )),
    }
}

/// One look at the repository, the server and this host's spool; folds
/// the answers into `state` (a copy of the policy's WAL state).
pub async fn scan(
    repo: &Repo,
    policy: &str,
    url: &str,
    spool: &crate::config::WalConfig,
    mut state: WalState,
    now: DateTime<Utc>,
) -> WalState {
    let (dir, name, max) = (
        spool.spool_dir.clone(),
        policy.to_string(),
        spool.spool_max_bytes,
    );
    state.spool = tokio::task::spawn_blocking(move || crate::wal::spool::usage(&dir, &name, max))
        .await
        .unwrap_or(None);
    let full = state
        .full_scan_at
        .is_none_or(|t| now - t >= FULL_SCAN_INTERVAL);
    let prefixes = if full {
        scan_prefixes(policy, None)
    } else {
        scan_prefixes(policy, state.newest_in_order.as_deref())
    };
    let listed = tokio::time::timeout(LIST_TIMEOUT, async {
        let mut all = Vec::new();
        for p in &prefixes {
            all.extend(repo.store.list(p).await?);
        }
        Ok::<_, crate::error::StorageError>(all)
    })
    .await;
    match listed {
        Ok(Ok(objects)) => {
            let before = Seen {
                last_archived: state.last_archived.clone().zip(state.last_archived_at),
                newest_in_order: state.newest_in_order.clone(),
            };
            let seen = observe(policy, before, &objects);
            (state.last_archived, state.last_archived_at) = seen.last_archived.unzip();
            state.newest_in_order = seen.newest_in_order;
            state.scanned_at = Some(now);
            if full {
                state.full_scan_at = Some(now);
            }
            state.scan_error = None;
        }
        Ok(Err(e)) => state.scan_error = Some(format!("listing the WAL archive failed: {e}")),
        Err(_) => {
            state.scan_error = Some(format!(
                "listing the WAL archive took longer than {} s",
                LIST_TIMEOUT.as_secs()
            ))
        }
    }
    match query_server(url).await {
        Ok(s) => {
            state.server = Some(s);
            state.server_error = None;
        }
        Err(e) => {
            state.server = None;
            state.server_error = Some(e);
        }
    }
    state
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(name: &str, at: i64) -> ObjectMeta {
        let parsed = WalName::parse(name).unwrap();
        ObjectMeta {
            key: crate::wal::object_key("db", &parsed, &"a".repeat(64)),
            size: 1,
            etag: None,
            version_id: None,
            last_modified: DateTime::from_timestamp(at, 0),
            storage_class: None,
        }
    }

    #[test]
    fn listings_narrow_to_the_newest_log_the_next_and_the_next_timeline() {
        assert_eq!(scan_prefixes("db", None), ["wal/db/"]);
        assert_eq!(
            scan_prefixes("db", Some("0000000200000001000000FF")),
            [
                "wal/db/00000002/0000000200000001",
                "wal/db/00000002/0000000200000002",
                "wal/db/00000003/",
            ]
        );
        assert_eq!(scan_prefixes("db", Some("not a name")), ["wal/db/"]);
    }

    #[test]
    fn the_last_archived_segment_is_the_newest_stored_and_history_does_not_count() {
        let seen = observe(
            "db",
            Seen::default(),
            &[
                object("000000010000000000000003", 300),
                object("000000010000000000000004", 400),
                object("000000010000000000000004.00000028.backup", 500),
                object("00000002.history", 600),
            ],
        );
        assert_eq!(
            seen.last_archived,
            Some((
                "000000010000000000000004".into(),
                DateTime::from_timestamp(400, 0).unwrap()
            ))
        );
        assert_eq!(
            seen.newest_in_order.as_deref(),
            Some("000000010000000000000004")
        );
        // A narrower listing later adds to what was known, never forgets it.
        let later = observe("db", seen.clone(), &[]);
        assert_eq!(later, seen);
        let later = observe("db", seen, &[object("000000020000000000000005", 700)]);
        assert_eq!(
            later.newest_in_order.as_deref(),
            Some("000000020000000000000005")
        );
        assert_eq!(later.last_archived.unwrap().1.timestamp(), 700);
    }

    #[test]
    fn segment_lag_counts_finished_segments_not_yet_archived() {
        let mb16 = 16 * 1024 * 1024;
        let cur = "000000010000000000000010";
        assert_eq!(lag_segments(cur, "00000001000000000000000F", mb16), Some(0));
        assert_eq!(lag_segments(cur, "00000001000000000000000C", mb16), Some(3));
        assert_eq!(
            lag_segments(cur, "00000001000000000000000C.00000028.backup", mb16),
            Some(3)
        );
        assert_eq!(
            lag_segments("000000010000000100000000", "0000000100000000000000FF", mb16),
            Some(0)
        );
        assert_eq!(lag_segments(cur, "00000001.history", mb16), None);
        assert_eq!(lag_segments(cur, cur, mb16), Some(0));
    }
}
