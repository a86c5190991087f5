//! A fingerprint of a database's data: per table, the row count and an
//! order-independent hash of its rows (the sum of a 64-bit hash of each
//! row's text form). Taken at backup time in the dump's own snapshot and
//! again after a restore; equal fingerprints show the restored data is the
//! data that was live at the snapshot.
//!
//! It names tables, so it is stored only sealed.

use serde::{Deserialize, Serialize};
use tokio_postgres::Client;

use super::postgres::{error_text, quote_ident};
use crate::error::{Error, Result};

/// Settings that fix how values print, so that both sides hash the same text.
const STABLE_OUTPUT: &str = "SET DateStyle = 'ISO, YMD'; SET TimeZone = 'UTC'; SET IntervalStyle = 'postgres'; \
     SET extra_float_digits = 3; SET bytea_output = 'hex'; SET search_path = pg_catalog";

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fingerprint {
    pub tables: Vec<TablePrint>,
    pub large_objects: Option<TablePrint>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TablePrint {
    pub schema: String,
    pub table: String,
    pub rows: i64,
    /// Decimal sum of the rows' 64-bit hashes.
    pub hash: String,
}

impl TablePrint {
    pub fn name(&self) -> String {
        format!("{}.{}", quote_ident(&self.schema), quote_ident(&self.table))
    }
}

/// Tables a policy leaves out of its dump, from pg_dump's own flags, so the
/// fingerprint covers what the dump covers. Patterns use pg_dump's `*`/`?`.
#[derive(Debug, Clone, Default)]
pub struct Exclusions {
    tables: Vec<String>,
    schemas: Vec<String>,
}

impl Exclusions {
    pub fn from_pg_dump_args(args: &[String]) -> Self {
        let mut ex = Exclusions::default();
        let mut it = args.iter().peekable();
        while let Some(a) = it.next() {
            let mut take = |flag_long: &str, flag_short: &str, into: &mut Vec<String>| -> bool {
                if let Some(v) = a.strip_prefix(&format!("{flag_long}=")) {
                    into.push(v.to_string());
                    return true;
                }
                if a == flag_long || a == flag_short {
                    if let Some(v) = it.peek() {
                        into.push((*v).clone());
                    }
                    return true;
                }
                if let Some(v) = a
                    .strip_prefix(flag_short)
                    .filter(|v| !v.is_empty() && flag_short.len() == 2)
                {
                    into.push(v.to_string());
                    return true;
                }
                false
            };
            if take("--exclude-table", "-T", &mut ex.tables)
                || take(
                    "--exclude-table-data",
                    "--exclude-table-data",
                    &mut ex.tables,
                )
            {
                continue;
            }
            take("--exclude-schema", "-N", &mut ex.schemas);
        }
        ex
    }

    fn excludes(&self, schema: &str, table: &str) -> bool {
        let qualified = format!("{schema}.{table}");
        self.schemas.iter().any(|p| glob_match(p, schema))
            || self.tables.iter().any(|p| {
                if p.contains('.') {
                    glob_match(p, &qualified)
                } else {
                    glob_match(p, table)
                }
            })
    }
}

fn glob_match(pattern: &str, s: &str) -> bool {
    fn go(p: &[char], s: &[char]) -> bool {
        match (p.first(), s.first()) {
            (None, None) => true,
            (Some('*'), _) => go(&p[1..], s) || (!s.is_empty() && go(p, &s[1..])),
            (Some('?'), Some(_)) => go(&p[1..], &s[1..]),
            (Some(a), Some(b)) if a == b => go(&p[1..], &s[1..]),
            _ => false,
        }
    }
    let p: Vec<char> = pattern.trim_matches('"').chars().collect();
    let s: Vec<char> = s.chars().collect();
    go(&p, &s)
}

/// Takes the fingerprint over `client`'s current transaction (call it inside
/// the snapshot transaction at backup time).
///
/// # Errors
/// `Database` naming the table whose query failed.
pub async fn take(client: &Client, target: &str, exclusions: &Exclusions) -> Result<Fingerprint> {
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
    // Ordinary tables and partitions hold the rows; partitioned parents and
    // extension members do not belong to the dump's data.
    let rows = client
        .query(
            "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.relkind = 'r' AND n.nspname NOT IN ('pg_catalog', 'information_schema') \
               AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp%' \
               AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid AND d.deptype = 'e') \
             ORDER BY 1, 2",
            &[],
        )
        .await
        .map_err(db("listing tables".into()))?;
    let mut print = Fingerprint::default();
    for row in rows {
        let (schema, table): (String, String) = (row.get(0), row.get(1));
        if exclusions.excludes(&schema, &table) {
            continue;
        }
        let name = format!("{}.{}", quote_ident(&schema), quote_ident(&table));
        let sql = format!(
            "SELECT count(*), coalesce(sum(hashtextextended(t::text, 0)::numeric), 0)::text FROM ONLY {name} AS t"
        );
        let r = client
            .query_one(&sql, &[])
            .await
            .map_err(db(format!("fingerprinting {name}")))?;
        print.tables.push(TablePrint {
            schema,
            table,
            rows: r.get(0),
            hash: r.get(1),
        });
    }
    let lo = client
        .query_one(
            "SELECT count(*), coalesce(sum(hashtextextended(m.oid::text || ':' || md5(lo_get(m.oid)), 0)::numeric), 0)::text FROM pg_largeobject_metadata m",
            &[],
        )
        .await
        .map_err(db("fingerprinting large objects".into()))?;
    let count: i64 = lo.get(0);
    if count > 0 {
        print.large_objects = Some(TablePrint {
            schema: "pg_catalog".into(),
            table: "pg_largeobject".into(),
            rows: count,
            hash: lo.get(1),
        });
    }
    Ok(print)
}

/// How two fingerprints differ, one line per table; empty when equal.
pub fn compare(expected: &Fingerprint, actual: &Fingerprint) -> Vec<String> {
    let mut out = Vec::new();
    let find = |p: &Fingerprint, t: &TablePrint| {
        p.tables
            .iter()
            .find(|x| x.schema == t.schema && x.table == t.table)
            .cloned()
    };
    for e in &expected.tables {
        match find(actual, e) {
            None => out.push(format!("table {} is missing", e.name())),
            Some(a) if a.rows != e.rows => out.push(format!(
                "table {}: {} rows, expected {}",
                e.name(),
                a.rows,
                e.rows
            )),
            Some(a) if a.hash != e.hash => out.push(format!(
                "table {}: row contents differ ({} rows)",
                e.name(),
                a.rows
            )),
            Some(_) => {}
        }
    }
    for a in &actual.tables {
        if find(expected, a).is_none() {
            out.push(format!("table {} was not in the backup", a.name()));
        }
    }
    match (&expected.large_objects, &actual.large_objects) {
        (Some(e), Some(a)) if e != a => out.push(format!(
            "large objects: {} found, {} expected, or contents differ",
            a.rows, e.rows
        )),
        (Some(e), None) => out.push(format!("large objects: none found, {} expected", e.rows)),
        (None, Some(a)) => out.push(format!("large objects: {} found, none expected", a.rows)),
        _ => {}
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exclusions_follow_pg_dump_flags() {
        let ex = Exclusions::from_pg_dump_args(&[
            "--exclude-table=audit_*".into(),
            "-T".into(),
            "public.big".into(),
            "-Nscratch".into(),
        ]);
        assert!(ex.excludes("public", "audit_log"));
        assert!(ex.excludes("public", "big"));
        assert!(!ex.excludes("other", "big"));
        assert!(ex.excludes("scratch", "anything"));
        assert!(!ex.excludes("public", "orders"));
    }

    #[test]
    fn compare_names_the_table() {
        let t = |rows, hash: &str| TablePrint {
            schema: "public".into(),
            table: "Orders".into(),
            rows,
            hash: hash.into(),
        };
        let a = Fingerprint {
            tables: vec![t(3, "10")],
            large_objects: None,
        };
        assert!(compare(&a, &a).is_empty());
        let b = Fingerprint {
            tables: vec![t(3, "11")],
            large_objects: None,
        };
        assert_eq!(
            compare(&a, &b),
            vec!["table \"public\".\"Orders\": row contents differ (3 rows)".to_string()]
        );
        let c = Fingerprint {
            tables: vec![],
            large_objects: None,
        };
        assert_eq!(
            compare(&a, &c),
            vec!["table \"public\".\"Orders\" is missing".to_string()]
        );
    }
}
