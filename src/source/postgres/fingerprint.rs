//! The fingerprint of a database's data, and checking a restored database
//! against it.
//!
//! At backup time [`super::dumpscan`] computes it from pg_dump's own output
//! as it streams past: per table, the number of rows and a wrapping sum of a
//! 64-bit hash of each row's COPY text. The dump is read from drctl's
//! exported snapshot, so this is the data that was live at the snapshot, and
//! taking it costs the database nothing extra. After a restore, each table
//! is read back with `COPY … TO STDOUT` (same column list, same text format)
//! and hashed the same way; equal fingerprints show the database holds the
//! rows that were backed up, not merely that a file decrypted.
//!
//! A check reads the tables over several connections sharing one exported
//! snapshot, largest first; a large table is read in block ranges (TID
//! range scans) by all of them at once, since a sum does not depend on the
//! order rows are read in and one big table would otherwise keep one
//! connection busy while the others wait. A sampled check (scheduled drills, see
//! [`super::sample`]) counts every table's rows but hashes only the rows
//! of a few random buckets of each large table.
//!
//! It names tables, so it is stored only sealed.

use futures::StreamExt;
use tokio_postgres::Client;

use super::dumpscan::{DumpPrint, LargeObjects, TableData, large_object_hash, row_hash};
use super::{error_text, quote_ident, sample};
use crate::error::{Error, Result};

/// Output settings COPY text depends on, pinned to what pg_dump sets itself
/// (DateStyle, IntervalStyle, extra_float_digits) and to what drctl makes
/// pg_dump use (TimeZone and bytea_output, see [`super::pg_dump_command`]).
const STABLE_OUTPUT: &str = "SET DateStyle = 'ISO'; SET IntervalStyle = 'postgres'; SET extra_float_digits = 3; \
     SET bytea_output = 'hex'; SET TimeZone = 'UTC'";

pub fn table_name(t: &TableData) -> String {
    format!("{}.{}", quote_ident(&t.schema), quote_ident(&t.table))
}

/// Most connections a check opens; each is one server backend reading one
/// table at a time.
pub const MAX_CHECK_CONNECTIONS: usize = 4;

/// How much of the data a check reads.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Scope {
    /// Every row of every table.
    #[default]
    Full,
    /// Every table's row count, and the rows of these sample buckets (see
    /// [`super::sample`]) of each table that recorded buckets; tables
    /// without buckets are read whole.
    Sample(Vec<usize>),
}

/// What a check found and covered.
#[derive(Debug, Clone, Default)]
pub struct Verified {
    /// One line per difference (empty when the data matched).
    pub problems: Vec<String>,
    /// Tables whose rows were all read and hashed.
    pub tables_full: usize,
    /// Tables of which only the sample buckets were hashed (their row count
    /// was still checked).
    pub tables_sampled: usize,
    /// Rows hashed and compared.
    pub rows_hashed: u64,
    /// Tables read in block ranges by several connections at once.
    pub tables_split: usize,
}

/// Connections worth opening: one per core (each table's COPY costs the
/// server about as much as drctl's hashing), at most
/// [`MAX_CHECK_CONNECTIONS`].
pub fn default_connections() -> usize {
    std::thread::available_parallelism()
        .map_or(1, usize::from)
        .clamp(1, MAX_CHECK_CONNECTIONS)
}

struct Job {
    /// Index into the fingerprint's tables.
    index: usize,
    name: String,
    blocks: Blocks,
}

/// Only the rows in heap blocks `from..to` (to the end without `to`), or
/// (`None`) the whole table.
type Blocks = Option<(u64, Option<u64>)>;

/// Tables larger than this are read in block ranges when several
/// connections read (PostgreSQL 14 and later scan a TID range directly);
/// `DRCTL_CHECK_SPLIT_KIB` changes it.
const SPLIT_BYTES: i64 = 128 * 1024 * 1024;

fn split_bytes() -> i64 {
    std::env::var("DRCTL_CHECK_SPLIT_KIB")
        .ok()
        .and_then(|s| s.parse::<i64>().ok())
        .map_or(SPLIT_BYTES, |kib| kib.max(1) * 1024)
}
/// Ranges per connection for a split table: more than one, so that a range
/// whose rows cost more (wider rows, TOAST) does not leave the others idle.
const RANGES_PER_CONNECTION: i64 = 4;

enum Outcome {
    Missing,
    Read {
        /// Rows counted (whole table) and rows and hash of what was hashed.
        count: u64,
        hashed_rows: u64,
        hash: u64,
        sampled: Option<(u64, u64)>,
    },
}

/// Reads every table the fingerprint names from the database at `pg` and
/// compares it with `expected`: largest tables first, over up to
/// `connections` connections that share one snapshot (exported by the
/// first), so the tables are read at one instant.
///
/// # Errors
/// `Database` when a connection or a query fails for a reason other than a
/// missing table.
pub async fn verify(
    pg: &tokio_postgres::Config,
    target: &str,
    expected: &DumpPrint,
    scope: &Scope,
    connections: usize,
) -> Result<Verified> {
    let db = |what: String| {
        let target = target.to_string();
        move |e: tokio_postgres::Error| Error::Database {
            target,
            message: format!("{what}: {}", error_text(&e)),
        }
    };
    let leader = super::connect(pg).await?;
    leader
        .batch_execute(&format!(
            "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY; {STABLE_OUTPUT}"
        ))
        .await
        .map_err(db("fingerprint settings".into()))?;
    let names: Vec<String> = expected.tables.iter().map(table_name).collect();
    // Existence and size in one round trip; the largest tables start first
    // so that one big table does not start last and run alone.
    let rows = leader
        .query(
            "SELECT to_regclass(n) IS NOT NULL, coalesce(pg_relation_size(to_regclass(n)), 0) \
             FROM unnest($1::text[]) WITH ORDINALITY AS t(n, i) ORDER BY i",
            &[&names],
        )
        .await
        .map_err(db("looking up the tables".into()))?;
    let mut outcomes: Vec<Option<Outcome>> = (0..names.len()).map(|_| None).collect();
    let mut jobs = Vec::new();
    for (index, row) in rows.iter().enumerate() {
        if row.get::<_, bool>(0) {
            jobs.push((row.get::<_, i64>(1), index));
        } else {
            outcomes[index] = Some(Outcome::Missing);
        }
    }
    let wanted = connections.clamp(1, MAX_CHECK_CONNECTIONS);
    let split = if wanted > 1 && *scope == Scope::Full {
        let row = leader
            .query_one(
                "SELECT current_setting('server_version_num')::int >= 140000, \
                 current_setting('block_size')::bigint",
                &[],
            )
            .await
            .map_err(db("reading the server's version".into()))?;
        row.get::<_, bool>(0).then(|| row.get::<_, i64>(1))
    } else {
        None
    };
    // (bytes, index, blocks): a split table's ranges are jobs of their own.
    let mut parts: Vec<(i64, usize, Blocks)> = Vec::new();
    let threshold = split_bytes();
    for (size, index) in jobs {
        match split {
            Some(block) if size > threshold && block > 0 => {
                let ranges = (wanted as i64 * RANGES_PER_CONNECTION).max(2);
                let blocks = (size / block).max(1);
                let step = (blocks + ranges - 1) / ranges;
                let mut from = 0;
                while from < blocks {
                    let to = from + step;
                    let end = (to < blocks).then_some(to as u64);
                    parts.push((step * block, index, Some((from as u64, end))));
                    from = to;
                }
            }
            _ => parts.push((size, index, None)),
        }
    }
    let tables_split = parts
        .iter()
        .filter(|p| p.2.is_some_and(|(from, _)| from == 0))
        .count();
    parts.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
    let queue: std::collections::VecDeque<Job> = parts
        .into_iter()
        .map(|(_, index, blocks)| Job {
            index,
            name: names[index].clone(),
            blocks,
        })
        .collect();
    let workers = wanted.min(queue.len().max(1));
    let queue = std::sync::Arc::new(std::sync::Mutex::new(queue));
    let expected_tables = std::sync::Arc::new(expected.tables.clone());
    let leader = std::sync::Arc::new(leader);
    let mut clients = vec![leader.clone()];
    if workers > 1 {
        let snapshot: String = leader
            .query_one("SELECT pg_export_snapshot()", &[])
            .await
            .map_err(db("exporting the check's snapshot".into()))?
            .get(0);
        for _ in 1..workers {
            let c = super::connect(pg).await?;
            c.batch_execute(&format!(
                "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY; \
                 SET TRANSACTION SNAPSHOT '{snapshot}'; {STABLE_OUTPUT}"
            ))
            .await
            .map_err(db("joining the check's snapshot".into()))?;
            clients.push(std::sync::Arc::new(c));
        }
    }
    let mut tasks = tokio::task::JoinSet::new();
    for client in &clients {
        let client = std::sync::Arc::clone(client);
        let (queue, tables, scope) = (queue.clone(), expected_tables.clone(), scope.clone());
        tasks.spawn(async move {
            let mut done = Vec::new();
            loop {
                let Some(job) = queue.lock().expect("check queue poisoned").pop_front() else {
                    break;
                };
                let t = &tables[job.index];
                let outcome = match job.blocks {
                    None => read_table(&client, &job.name, t, &scope).await,
                    Some(blocks) => read_blocks(&client, &job.name, t, blocks).await,
                }
                .map_err(|e| (job.name.clone(), e))?;
                done.push((job.index, outcome));
            }
            Ok::<_, (String, tokio_postgres::Error)>(done)
        });
    }
    let mut failed = None;
    while let Some(joined) = tasks.join_next().await {
        match joined.expect("a check worker panicked") {
            Ok(done) => {
                for (index, outcome) in done {
                    outcomes[index] = Some(match outcomes[index].take() {
                        None => outcome,
                        Some(so_far) => so_far.add(outcome),
                    });
                }
            }
            Err((name, e)) => {
                // Stop the others: their reads would be wasted.
                queue.lock().expect("check queue poisoned").clear();
                failed.get_or_insert_with(|| db(format!("reading {name}"))(e));
            }
        }
    }
    if let Some(e) = failed {
        return Err(e);
    }
    let mut verified = Verified {
        tables_split,
        ..Verified::default()
    };
    for ((t, name), outcome) in expected.tables.iter().zip(&names).zip(outcomes) {
        match outcome.expect("every table was read or found missing") {
            Outcome::Missing => verified.problems.push(format!("table {name} is missing")),
            Outcome::Read {
                count,
                hashed_rows,
                hash,
                sampled,
            } => {
                verified.rows_hashed += hashed_rows;
                if sampled.is_some() {
                    verified.tables_sampled += 1;
                } else {
                    verified.tables_full += 1;
                }
                let want = sampled.unwrap_or((t.rows, t.hash));
                if count != t.rows {
                    verified
                        .problems
                        .push(format!("table {name}: {count} rows, expected {}", t.rows));
                } else if (hashed_rows, hash) != want {
                    verified.problems.push(match sampled {
                        Some(_) => format!(
                            "table {name}: row contents differ in the sample ({hashed_rows} rows read, {} expected)",
                            want.0
                        ),
                        None => format!("table {name}: row contents differ ({count} rows)"),
                    });
                }
            }
        }
    }
    let actual_lo = large_objects(&leader)
        .await
        .map_err(db("reading large objects".into()))?;
    match (&expected.large_objects, &actual_lo) {
        (Some(e), Some(a)) if e.count != a.count => verified.problems.push(format!(
            "large objects: {} found, {} expected",
            a.count, e.count
        )),
        (Some(e), Some(a)) if e.hash != a.hash => verified.problems.push(format!(
            "large objects: contents differ ({} objects)",
            a.count
        )),
        (Some(e), None) => verified
            .problems
            .push(format!("large objects: none found, {} expected", e.count)),
        (None, Some(a)) => verified
            .problems
            .push(format!("large objects: {} found, none expected", a.count)),
        _ => {}
    }
    for c in &clients {
        let _ = c.batch_execute("COMMIT").await;
    }
    Ok(verified)
}

impl Outcome {
    /// Two block ranges of one table together.
    fn add(self, other: Outcome) -> Outcome {
        match (self, other) {
            (
                Outcome::Read {
                    count: c1,
                    hashed_rows: r1,
                    hash: h1,
                    sampled: None,
                },
                Outcome::Read {
                    count: c2,
                    hashed_rows: r2,
                    hash: h2,
                    sampled: None,
                },
            ) => Outcome::Read {
                count: c1 + c2,
                hashed_rows: r1 + r2,
                hash: h1.wrapping_add(h2),
                sampled: None,
            },
            _ => unreachable!("only whole reads of a table are split"),
        }
    }
}

/// The rows of one table in heap blocks `from..to`, hashed.
async fn read_blocks(
    client: &Client,
    name: &str,
    t: &TableData,
    (from, to): (u64, Option<u64>),
) -> Result<Outcome, tokio_postgres::Error> {
    let mut range = format!("ctid >= '({from},0)'::tid");
    if let Some(to) = to {
        range.push_str(&format!(" AND ctid < '({to},0)'::tid"));
    }
    let sql = format!(
        "COPY (SELECT {} FROM {name} WHERE {range}) TO STDOUT",
        select_list(&t.columns)
    );
    let (rows, hash) = copy_hash(client, &sql).await?;
    Ok(Outcome::Read {
        count: rows,
        hashed_rows: rows,
        hash,
        sampled: None,
    })
}

/// `(a, b)` as a select list; COPY's column list is the same names.
fn select_list(columns: &str) -> &str {
    columns
        .strip_prefix('(')
        .and_then(|c| c.strip_suffix(')'))
        .unwrap_or(columns)
}

/// Reads one table: whole, or (for a sample, when the table recorded
/// buckets) its row count and the rows of the chosen buckets.
async fn read_table(
    client: &Client,
    name: &str,
    t: &TableData,
    scope: &Scope,
) -> Result<Outcome, tokio_postgres::Error> {
    let sample = match (scope, &t.buckets, sample::first_column(&t.columns)) {
        (Scope::Sample(chosen), Some(buckets), Some(first)) => {
            buckets.sum(chosen).map(|want| (chosen, first, want))
        }
        _ => None,
    };
    let Some((chosen, first, want)) = sample else {
        let (rows, hash) =
            copy_hash(client, &format!("COPY {name} {} TO STDOUT", t.columns)).await?;
        return Ok(Outcome::Read {
            count: rows,
            hashed_rows: rows,
            hash,
            sampled: None,
        });
    };
    let count: i64 = client
        .query_one(&format!("SELECT count(*) FROM {name}"), &[])
        .await?
        .get(0);
    let list = chosen
        .iter()
        .map(usize::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    let sql = format!(
        "COPY (SELECT {} FROM {name} WHERE {} IN ({list})) TO STDOUT",
        select_list(&t.columns),
        sample::bucket_sql(first)
    );
    let (rows, hash) = copy_hash(client, &sql).await?;
    Ok(Outcome::Read {
        count: count as u64,
        hashed_rows: rows,
        hash,
        sampled: Some(want),
    })
}

/// Streams a COPY and hashes its rows as [`super::dumpscan`] does. The
/// server sends one row per message, so a row is hashed in place; the
/// carry buffer only holds a row split across messages.
async fn copy_hash(client: &Client, sql: &str) -> Result<(u64, u64), tokio_postgres::Error> {
    let stream = client.copy_out(sql).await?;
    futures::pin_mut!(stream);
    let (mut rows, mut hash) = (0u64, 0u64);
    let mut carry: Vec<u8> = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        let mut data: &[u8] = &chunk;
        if !carry.is_empty() {
            match memchr::memchr(b'\n', data) {
                Some(i) => {
                    carry.extend_from_slice(&data[..i]);
                    rows += 1;
                    hash = hash.wrapping_add(row_hash(&carry));
                    carry.clear();
                    data = &data[i + 1..];
                }
                None => {
                    carry.extend_from_slice(data);
                    continue;
                }
            }
        }
        while let Some(i) = memchr::memchr(b'\n', data) {
            rows += 1;
            hash = hash.wrapping_add(row_hash(&data[..i]));
            data = &data[i + 1..];
        }
        carry.extend_from_slice(data);
    }
    if !carry.is_empty() {
        rows += 1;
        hash = hash.wrapping_add(row_hash(&carry));
    }
    Ok((rows, hash))
}

async fn large_objects(client: &Client) -> Result<Option<LargeObjects>, tokio_postgres::Error> {
    let oids = client
        .query("SELECT oid FROM pg_largeobject_metadata ORDER BY oid", &[])
        .await?;
    if oids.is_empty() {
        return Ok(None);
    }
    let mut lo = LargeObjects { count: 0, hash: 0 };
    for row in oids {
        let oid: u32 = row.get(0);
        // One object at a time keeps memory to the largest object.
        let data: Vec<u8> = client.query_one("SELECT lo_get($1)", &[&oid]).await?.get(0);
        lo.count += 1;
        lo.hash = lo.hash.wrapping_add(large_object_hash(oid, &data));
    }
    Ok(Some(lo))
}
