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
//! It names tables, so it is stored only sealed.

use futures::StreamExt;
use tokio_postgres::Client;

use super::dumpscan::{DumpPrint, LargeObjects, TableData, large_object_hash, row_hash};
use super::{error_text, quote_ident};
use crate::error::{Error, Result};

/// Output settings COPY text depends on, pinned to what pg_dump sets itself
/// (DateStyle, IntervalStyle, extra_float_digits) and to what drctl makes
/// pg_dump use (TimeZone and bytea_output, see [`super::pg_dump_command`]).
const STABLE_OUTPUT: &str = "SET DateStyle = 'ISO'; SET IntervalStyle = 'postgres'; SET extra_float_digits = 3; \
     SET bytea_output = 'hex'; SET TimeZone = 'UTC'";

pub fn table_name(t: &TableData) -> String {
    format!("{}.{}", quote_ident(&t.schema), quote_ident(&t.table))
}

/// Reads every table the fingerprint names from `client`'s database and
/// returns one line per difference (empty when they match). Run it inside a
/// repeatable-read transaction so the tables are read at one instant.
///
/// # Errors
/// `Database` when a query fails for a reason other than a missing table.
pub async fn verify(client: &Client, target: &str, expected: &DumpPrint) -> Result<Vec<String>> {
    let db = |what: String| {
        move |e: tokio_postgres::Error| Error::Database {
            target: target.to_string(),
            message: format!("{what}: {}", error_text(&e)),
        }
    };
    client
        .batch_execute(STABLE_OUTPUT)
        .await
        .map_err(db("fingerprint settings".into()))?;
    let mut problems = Vec::new();
    for t in &expected.tables {
        let name = table_name(t);
        let exists = client
            .query_one("SELECT to_regclass($1) IS NOT NULL", &[&name])
            .await
            .map_err(db(format!("looking up {name}")))?
            .get::<_, bool>(0);
        if !exists {
            problems.push(format!("table {name} is missing"));
            continue;
        }
        let (rows, hash) = copy_hash(client, &format!("COPY {name} {} TO STDOUT", t.columns))
            .await
            .map_err(db(format!("reading {name}")))?;
        if rows != t.rows {
            problems.push(format!("table {name}: {rows} rows, expected {}", t.rows));
        } else if hash != t.hash {
            problems.push(format!("table {name}: row contents differ ({rows} rows)"));
        }
    }
    let actual_lo = large_objects(client)
        .await
        .map_err(db("reading large objects".into()))?;
    match (&expected.large_objects, &actual_lo) {
        (Some(e), Some(a)) if e.count != a.count => problems.push(format!(
            "large objects: {} found, {} expected",
            a.count, e.count
        )),
        (Some(e), Some(a)) if e.hash != a.hash => problems.push(format!(
            "large objects: contents differ ({} objects)",
            a.count
        )),
        (Some(e), None) => {
            problems.push(format!("large objects: none found, {} expected", e.count))
        }
        (None, Some(a)) => {
            problems.push(format!("large objects: {} found, none expected", a.count))
        }
        _ => {}
    }
    Ok(problems)
}

/// Streams a COPY and hashes its rows as [`super::dumpscan`] does.
async fn copy_hash(client: &Client, sql: &str) -> Result<(u64, u64), tokio_postgres::Error> {
    let stream = client.copy_out(sql).await?;
    futures::pin_mut!(stream);
    let (mut rows, mut hash) = (0u64, 0u64);
    let mut carry: Vec<u8> = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        let mut data: &[u8] = &chunk;
        if !carry.is_empty() {
            match data.iter().position(|&b| b == b'\n') {
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
        while let Some(i) = data.iter().position(|&b| b == b'\n') {
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
