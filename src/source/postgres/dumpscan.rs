//! Fingerprints the table data and large objects of an uncompressed pg_dump custom-format archive as it streams past.
//!
//! [`DumpScanner`] is a push parser: every byte of `pg_dump --format=custom
//! --compress=0` output is written into it (in chunks of any size) and it
//! keeps only the table of contents and a few hundred bytes of state, never
//! the data. [`DumpScanner::finish`] then returns a [`DumpPrint`]: for every
//! `TABLE DATA` entry its row count and the wrapping sum of [`row_hash`] over
//! its COPY text lines, and for the large objects their count and the sum of
//! [`large_object_hash`]. The restore side computes the same sums from the
//! restored database's `COPY … TO STDOUT` output and `lo_get`, so the two can
//! be compared without caring about row order.
//!
//! The archive layout, as written by `pg_backup_archiver.c` (`WriteHead`,
//! `WriteToc`, `WriteInt`, `WriteStr`, `WriteOffset`) and
//! `pg_backup_custom.c` (`_WriteExtraToc`, `_StartData`, `_StartLOs`, …):
//!
//! ```text
//! header   "PGDMP" vmaj vmin vrev intSize offSize format
//!          compression: Int level (< 1.15) | byte algorithm (>= 1.15)
//!          7 × Int creation time, Str dbname, Str server version, Str pg_dump version
//! TOC      Int count, then per entry:
//!          Int dumpId, Int hadDumper, Str tableoid, Str oid, Str tag, Str desc,
//!          Int section, Str defn, Str dropStmt, Str copyStmt, Str namespace,
//!          Str tablespace, Str tableam (>= 1.14), Int relkind (>= 1.16),
//!          Str owner, Str withOids, Str dependency … NULL Str,
//!          offset: byte flag (1 not set, 2 set, 3 no data) + offSize bytes
//! data     until EOF: byte type, Int dumpId, then
//!          BLK_DATA (1):  (Int len > 0, len bytes)* Int 0
//!          BLK_BLOBS (3): (Int oid != 0, (Int len > 0, len bytes)* Int 0)* Int 0
//! Int      sign byte (non-zero = negative) + intSize bytes of magnitude, little-endian
//! Str      Int length (-1 = NULL) + that many bytes
//! ```
//!
//! Table data is the COPY text stream: one row per line ending in `\n`
//! (embedded newlines are escaped), then the end marker line `\.` and two
//! empty lines, which are not rows.

use std::collections::HashMap;
use std::io;

use xxhash_rust::xxh3::{Xxh3Default, xxh3_64};

use super::sample::{self, Buckets};

/// Archive versions this scanner reads: 1.12 (pg_dump 11) to 1.16 (pg_dump 17).
const SUPPORTED_MINOR_VERSIONS: std::ops::RangeInclusive<u8> = 12..=16;
/// Archive version that added `tableam` to TOC entries (pg_dump 12).
const VERSION_TABLEAM: u8 = 14;
/// Archive version that replaced the compression level by an algorithm byte (pg_dump 16).
const VERSION_COMPRESSION_ALGORITHM: u8 = 15;
/// Archive version that added `relkind` to TOC entries (pg_dump 17).
const VERSION_RELKIND: u8 = 16;

const MAGIC: &[u8; 5] = b"PGDMP";
/// `archCustom` in pg_backup.h.
const FORMAT_CUSTOM: u8 = 1;
/// Largest `intSize` accepted; pg_dump writes `sizeof(int)`, i.e. 4.
const MAX_INT_SIZE: usize = 8;
/// Largest `offSize` accepted; pg_dump writes `sizeof(pgoff_t)`, i.e. 8.
const MAX_OFF_SIZE: usize = 16;

const BLK_DATA: u8 = 1;
const BLK_BLOBS: u8 = 3;

/// Data-offset flags after each TOC entry (`K_OFFSET_*`).
const OFFSET_POS_NOT_SET: u8 = 1;
const OFFSET_POS_SET: u8 = 2;
const OFFSET_NO_DATA: u8 = 3;

/// The COPY end-of-data marker line.
const END_OF_COPY: &[u8] = b"\\.";

/// What a pg_dump archive holds, reduced to comparable numbers.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DumpPrint {
    /// One entry per `TABLE DATA` TOC entry (each partition is its own),
    /// sorted by schema, then table.
    pub tables: Vec<TableData>,
    /// `None` when the archive has no large objects section.
    pub large_objects: Option<LargeObjects>,
}

/// The fingerprint of one table's data.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TableData {
    pub schema: String,
    pub table: String,
    /// the column list from the TOC entry's COPY statement, verbatim, e.g. `(id, "Name", note)`; empty string if the statement has none
    pub columns: String,
    pub rows: u64,
    /// wrapping sum of xxh3_64 of each row line (without its trailing newline), as u64
    pub hash: u64,
    /// Per-bucket rows and hash sums for the sampled check (see
    /// [`super::sample`]); absent for small tables, for tables without a
    /// column list, and in fingerprints written before it existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub buckets: Option<Buckets>,
}

/// The fingerprint of all large objects in the archive.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LargeObjects {
    pub count: u64,
    /// wrapping sum over objects of xxh3_64(oid as decimal ASCII ++ ":" ++ data)
    pub hash: u64,
}

/// Why an archive could not be fingerprinted.
#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    #[error(
        "not a pg_dump custom-format archive (it does not start with \"PGDMP\"); \
         drctl needs the output of `pg_dump --format=custom --compress=0`"
    )]
    NotCustomArchive,
    #[error(
        "pg_dump archive header has format code {code}{}, not 1 (custom); \
         run pg_dump with --format=custom --compress=0",
        format_name(*.code)
    )]
    WrongFormat { code: u8 },
    #[error(
        "pg_dump archive version {major}.{minor}.{rev} is not supported; \
         drctl reads versions 1.12 to 1.16 (pg_dump 11 to 17)"
    )]
    UnsupportedVersion { major: u8, minor: u8, rev: u8 },
    #[error(
        "pg_dump archive is compressed ({algorithm}); drctl fingerprints the data as it \
         streams and needs it uncompressed: run pg_dump with --compress=0"
    )]
    Compressed { algorithm: String },
    #[error("pg_dump archive is truncated: it ends {context}, after {offset} bytes")]
    Truncated { context: String, offset: u64 },
    #[error("pg_dump archive is corrupt at byte {offset}: {detail}")]
    Corrupt { offset: u64, detail: String },
    #[error(
        "the data of table {schema}.{table} is not in COPY format \
         (was the dump made with --inserts?); drctl needs COPY data"
    )]
    NotCopyFormat { schema: String, table: String },
    #[error(
        "the TOC entry for table {schema}.{table} has a COPY statement drctl cannot read: {statement:?}"
    )]
    UnexpectedCopyStatement {
        schema: String,
        table: String,
        statement: String,
    },
}

/// How `ArchiveFormat` codes other than custom read in a message.
fn format_name(code: u8) -> &'static str {
    match code {
        // The tar format, and the toc.dat of the directory format.
        3 => " (tar or directory)",
        5 => " (directory)",
        _ => "",
    }
}

/// The same row hash, for the verifying side (restored database's COPY output).
pub fn row_hash(line: &[u8]) -> u64 {
    xxh3_64(line)
}

/// The hash of one large object, for the verifying side.
pub fn large_object_hash(oid: u32, data: &[u8]) -> u64 {
    let mut hasher = Xxh3Default::new();
    hasher.update(decimal(oid).as_bytes());
    hasher.update(b":");
    hasher.update(data);
    hasher.digest()
}

/// `oid` in decimal ASCII, without allocating.
fn decimal(oid: u32) -> Decimal {
    let mut digits = [0u8; 10];
    let mut start = digits.len();
    let mut rest = oid;
    loop {
        start -= 1;
        digits[start] = b'0' + (rest % 10) as u8;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    Decimal { digits, start }
}

struct Decimal {
    digits: [u8; 10],
    start: usize,
}

impl Decimal {
    fn as_bytes(&self) -> &[u8] {
        &self.digits[self.start..]
    }
}

/// Where the parser is: what the next item of the archive is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Magic,
    VersionMajor,
    VersionMinor,
    VersionRev,
    IntSize,
    OffSize,
    Format,
    CompressionAlgorithm,
    CompressionLevel,
    /// The seven Ints of the creation time; the number says which.
    CreateDate(u8),
    DbName,
    ServerVersion,
    DumpVersion,
    TocCount,
    Toc(Field),
    BlockType,
    BlockId,
    ChunkLen,
    /// Raw chunk bytes still to come.
    ChunkData(u64),
    LargeObjectOid,
    Failed,
}

/// The fields of a TOC entry, in archive order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    DumpId,
    HadDumper,
    TableOid,
    Oid,
    Tag,
    Desc,
    Section,
    Defn,
    DropStmt,
    CopyStmt,
    Namespace,
    Tablespace,
    TableAm,
    RelKind,
    Owner,
    WithOids,
    Dependency,
    OffsetFlag,
    OffsetBytes,
}

/// How the next item is encoded.
enum Kind {
    Byte,
    Int,
    /// A string; `true` if its bytes are needed.
    Str(bool),
    /// A fixed number of bytes.
    Fixed(usize),
}

/// One decoded item. Kept strings and fixed bytes are in `DumpScanner::buf`.
enum Item {
    Byte(u8),
    Int(i64),
    Str { null: bool },
    Fixed,
}

/// Which data block is being read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Block {
    Table(usize),
    LargeObjects,
    Skip(i32),
}

/// What is known about one TOC entry after the TOC.
struct Entry {
    /// Index into `DumpScanner::tables` for `TABLE DATA` entries.
    table: Option<usize>,
    /// Whether a data block must follow for this entry.
    expects_data: bool,
    seen: bool,
    /// `desc tag`, for messages about entries that are not tables.
    label: Box<str>,
}

/// The TOC entry being read.
#[derive(Default)]
struct PendingEntry {
    dump_id: i32,
    had_dumper: bool,
    tag: Vec<u8>,
    desc: Vec<u8>,
    copy_stmt: Option<Vec<u8>>,
    namespace: Option<Vec<u8>>,
}

/// A table being fingerprinted, with its COPY statement checked.
struct Table {
    data: TableData,
    /// False when the entry had no COPY statement (data dumped as INSERTs).
    copy: bool,
}

/// Splits the COPY text stream of one table into lines and sums their hashes.
/// A line split across chunks is hashed incrementally, so no line is ever
/// buffered whole.
struct CopyLines {
    rows: u64,
    hash: u64,
    /// The `\.` end marker has been seen; only empty lines may follow.
    ended: bool,
    /// Bytes of the unfinished line so far (0: no unfinished line).
    partial_len: u64,
    /// The first two bytes of the unfinished line.
    partial_head: [u8; 2],
    partial: Xxh3Default,
    /// Rows by sample bucket; `None` once a first field was too long to
    /// buffer (the table is then always checked whole).
    buckets: Option<Buckets>,
    /// The first field of the unfinished line, until its tab is seen.
    partial_field: Vec<u8>,
    partial_field_done: bool,
}

impl CopyLines {
    fn new() -> Self {
        CopyLines {
            rows: 0,
            hash: 0,
            ended: false,
            partial_len: 0,
            partial_head: [0; 2],
            partial: Xxh3Default::new(),
            buckets: Some(Buckets::default()),
            partial_field: Vec::new(),
            partial_field_done: false,
        }
    }

    fn reset(&mut self) {
        self.rows = 0;
        self.hash = 0;
        self.ended = false;
        self.partial_len = 0;
        self.partial.reset();
        self.buckets = Some(Buckets::default());
        self.partial_field = Vec::new();
        self.partial_field_done = false;
    }

    /// Feeds a piece of the COPY stream. Fails on a row after the end marker.
    #[inline]
    fn consume(&mut self, mut data: &[u8]) -> Result<(), &'static str> {
        if self.partial_len > 0 {
            match find_newline(data) {
                None => {
                    self.extend_partial(data);
                    return Ok(());
                }
                Some(at) => {
                    self.extend_partial(&data[..at]);
                    self.finish_partial()?;
                    data = &data[at + 1..];
                }
            }
        }
        let (mut rows, mut hash) = (self.rows, self.hash);
        while let Some(at) = find_newline(data) {
            let line = &data[..at];
            if self.ended {
                if !line.is_empty() {
                    return Err("a row follows the end-of-data marker");
                }
            } else if line == END_OF_COPY {
                self.ended = true;
            } else {
                rows += 1;
                let h = xxh3_64(line);
                hash = hash.wrapping_add(h);
                if let Some(buckets) = &mut self.buckets {
                    buckets.add(sample::bucket_of_field(sample::first_field(line)), h);
                }
            }
            data = &data[at + 1..];
        }
        self.rows = rows;
        self.hash = hash;
        if !data.is_empty() {
            self.extend_partial(data);
        }
        Ok(())
    }

    fn extend_partial(&mut self, piece: &[u8]) {
        for (slot, &byte) in self.partial_head[..]
            .iter_mut()
            .skip(self.partial_len.min(2) as usize)
            .zip(piece)
        {
            *slot = byte;
        }
        self.partial.update(piece);
        self.partial_len += piece.len() as u64;
        if !self.partial_field_done && self.buckets.is_some() {
            let field = sample::first_field(piece);
            self.partial_field_done = field.len() < piece.len();
            self.partial_field.extend_from_slice(field);
            if self.partial_field.len() > sample::MAX_FIELD_BYTES {
                self.buckets = None;
                self.partial_field = Vec::new();
            }
        }
    }

    fn finish_partial(&mut self) -> Result<(), &'static str> {
        let is_end = self.partial_len == 2 && self.partial_head == *b"\\.";
        if self.ended {
            if self.partial_len > 0 {
                return Err("a row follows the end-of-data marker");
            }
        } else if is_end {
            self.ended = true;
        } else {
            self.rows += 1;
            let h = self.partial.digest();
            self.hash = self.hash.wrapping_add(h);
            if let Some(buckets) = &mut self.buckets {
                buckets.add(sample::bucket_of_field(&self.partial_field), h);
            }
        }
        self.partial.reset();
        self.partial_len = 0;
        self.partial_field.clear();
        self.partial_field_done = false;
        Ok(())
    }
}

/// Position of the first `\n` (SIMD through memchr).
#[inline]
fn find_newline(haystack: &[u8]) -> Option<usize> {
    memchr::memchr(b'\n', haystack)
}

/// The parenthesised column list of a pg_dump COPY statement
/// (`COPY schema.table (a, b) FROM stdin;\n`), or `""` when it has none.
/// `None` if the statement does not have that shape.
fn copy_columns(statement: &str) -> Option<String> {
    let rest = statement.strip_prefix("COPY ")?;
    let rest = rest.strip_suffix('\n').unwrap_or(rest);
    let rest = rest.strip_suffix(" FROM stdin;")?;
    // Skip the (possibly quoted) qualified table name: it ends at the first
    // space outside double quotes. `""` inside quotes toggles twice.
    let mut quoted = false;
    let mut end = rest.len();
    for (at, byte) in rest.bytes().enumerate() {
        match byte {
            b'"' => quoted = !quoted,
            b' ' if !quoted => {
                end = at;
                break;
            }
            _ => {}
        }
    }
    if quoted || end == 0 {
        return None;
    }
    let columns = &rest[end..];
    let columns = columns.strip_prefix(' ').unwrap_or(columns);
    if columns.is_empty() || (columns.starts_with('(') && columns.ends_with(')')) {
        Some(columns.to_owned())
    } else {
        None
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Decodes an archive Int: a sign byte, then the magnitude little-endian.
#[inline]
fn decode_int(bytes: &[u8]) -> i64 {
    let magnitude = bytes[1..]
        .iter()
        .rev()
        .fold(0u64, |value, &byte| (value << 8) | u64::from(byte)) as i64;
    if bytes[0] != 0 {
        magnitude.wrapping_neg()
    } else {
        magnitude
    }
}

/// A streaming fingerprinter of pg_dump custom-format archives; see the
/// module documentation. Write the archive into it, then call
/// [`finish`](DumpScanner::finish).
pub struct DumpScanner {
    step: Step,
    /// Bytes consumed so far, for messages.
    offset: u64,
    error: Option<ScanError>,

    major: u8,
    minor: u8,
    int_size: usize,
    off_size: usize,

    /// A partially received Int.
    int_buf: [u8; 1 + MAX_INT_SIZE],
    int_len: usize,
    /// Bytes of the current string still to come, once its length is known.
    str_left: Option<u64>,
    /// Kept string or fixed-size item.
    buf: Vec<u8>,

    toc_count: u64,
    toc_read: u64,
    entry: PendingEntry,
    entries: HashMap<i32, Entry>,
    tables: Vec<Table>,
    has_large_objects: bool,

    block_type: u8,
    block: Block,
    lines: CopyLines,
    lo_count: u64,
    lo_hash: u64,
    lo_hasher: Xxh3Default,
    /// False when only the archive's completeness is checked: table data is
    /// then skipped instead of hashed row by row.
    hash_rows: bool,
}

impl Default for DumpScanner {
    fn default() -> Self {
        Self::new()
    }
}

impl DumpScanner {
    pub fn new() -> Self {
        DumpScanner {
            step: Step::Magic,
            offset: 0,
            error: None,
            major: 0,
            minor: 0,
            int_size: 0,
            off_size: 0,
            int_buf: [0; 1 + MAX_INT_SIZE],
            int_len: 0,
            str_left: None,
            buf: Vec::new(),
            toc_count: 0,
            toc_read: 0,
            entry: PendingEntry::default(),
            entries: HashMap::new(),
            tables: Vec::new(),
            has_large_objects: false,
            block_type: 0,
            block: Block::Skip(0),
            lines: CopyLines::new(),
            lo_count: 0,
            lo_hash: 0,
            lo_hasher: Xxh3Default::new(),
            hash_rows: true,
        }
    }

    /// A scanner that checks the archive is complete and well formed (every
    /// TOC entry with data has its block, every block ends) without hashing
    /// rows: pg_dump can exit 0 after writing a truncated archive, so every
    /// backup is checked, fingerprinted or not. Its [`DumpPrint`] has zero
    /// rows and hashes and must not be stored as a fingerprint.
    pub fn structure_only() -> Self {
        DumpScanner {
            hash_rows: false,
            ..Self::new()
        }
    }

    /// The fingerprint, or why the archive was not a complete, readable,
    /// uncompressed custom-format archive.
    pub fn finish(self) -> Result<DumpPrint, ScanError> {
        if let Some(error) = self.error {
            return Err(error);
        }
        if self.step != Step::BlockType {
            return Err(ScanError::Truncated {
                context: self.position(),
                offset: self.offset,
            });
        }
        let mut missing: Vec<(i32, &Entry)> = self
            .entries
            .iter()
            .filter(|(_, entry)| entry.expects_data && !entry.seen)
            .map(|(&id, entry)| (id, entry))
            .collect();
        missing.sort_by_key(|&(id, _)| id);
        if let Some(&(id, entry)) = missing.first() {
            let what = match entry.table {
                Some(index) => {
                    let data = &self.tables[index].data;
                    format!("table {}.{}", data.schema, data.table)
                }
                None => entry.label.to_string(),
            };
            return Err(ScanError::Truncated {
                context: format!(
                    "before the data of {what} (dump id {id}{})",
                    if missing.len() > 1 {
                        format!(", and {} more entries", missing.len() - 1)
                    } else {
                        String::new()
                    }
                ),
                offset: self.offset,
            });
        }
        let mut tables: Vec<TableData> = self.tables.into_iter().map(|table| table.data).collect();
        tables.sort_by(|a, b| (&a.schema, &a.table).cmp(&(&b.schema, &b.table)));
        Ok(DumpPrint {
            tables,
            large_objects: self.has_large_objects.then_some(LargeObjects {
                count: self.lo_count,
                hash: self.lo_hash,
            }),
        })
    }

    /// Where the parser stands, for a truncation message.
    fn position(&self) -> String {
        match self.step {
            Step::Magic if self.offset == 0 => "before the archive header (no data at all)".into(),
            Step::Magic
            | Step::VersionMajor
            | Step::VersionMinor
            | Step::VersionRev
            | Step::IntSize
            | Step::OffSize
            | Step::Format
            | Step::CompressionAlgorithm
            | Step::CompressionLevel
            | Step::CreateDate(_)
            | Step::DbName
            | Step::ServerVersion
            | Step::DumpVersion => "in the archive header".into(),
            Step::TocCount => "before the table of contents".into(),
            Step::Toc(_) => format!(
                "in table-of-contents entry {} of {}",
                self.toc_read + 1,
                self.toc_count
            ),
            Step::BlockType | Step::BlockId => "in a data block header".into(),
            Step::ChunkLen | Step::ChunkData(_) | Step::LargeObjectOid => match self.block {
                Block::Table(index) => {
                    let data = &self.tables[index].data;
                    format!("in the data of table {}.{}", data.schema, data.table)
                }
                Block::LargeObjects => "in the large-object data".into(),
                Block::Skip(id) => format!("in the data of dump id {id}"),
            },
            Step::Failed => "after an error".into(),
        }
    }

    fn corrupt(&self, detail: impl Into<String>) -> ScanError {
        ScanError::Corrupt {
            offset: self.offset,
            detail: detail.into(),
        }
    }

    fn feed(&mut self, mut input: &[u8]) {
        while !input.is_empty() && self.step != Step::Failed {
            let result = if let Step::ChunkData(left) = self.step {
                let take = left.min(input.len() as u64);
                let (data, rest) = input.split_at(take as usize);
                input = rest;
                self.offset += take;
                self.step = if take == left {
                    Step::ChunkLen
                } else {
                    Step::ChunkData(left - take)
                };
                self.chunk(data)
            } else {
                let before = input.len();
                let item = self.read_item(&mut input);
                self.offset += (before - input.len()) as u64;
                match item {
                    Ok(Some(item)) => self.on_item(item),
                    Ok(None) => Ok(()),
                    Err(error) => Err(error),
                }
            };
            if let Err(error) = result {
                self.error = Some(error);
                self.step = Step::Failed;
            }
        }
    }

    /// Raw bytes of a data chunk.
    #[inline]
    fn chunk(&mut self, data: &[u8]) -> Result<(), ScanError> {
        match self.block {
            Block::Table(index) => self.lines.consume(data).map_err(|detail| {
                let table = &self.tables[index].data;
                self.corrupt(format!(
                    "in the data of table {}.{}: {detail}",
                    table.schema, table.table
                ))
            }),
            Block::LargeObjects => {
                self.lo_hasher.update(data);
                Ok(())
            }
            Block::Skip(_) => Ok(()),
        }
    }

    fn kind(&self) -> Kind {
        match self.step {
            Step::Magic => Kind::Fixed(MAGIC.len()),
            Step::VersionMajor
            | Step::VersionMinor
            | Step::VersionRev
            | Step::IntSize
            | Step::OffSize
            | Step::Format
            | Step::CompressionAlgorithm
            | Step::BlockType
            | Step::Toc(Field::OffsetFlag) => Kind::Byte,
            Step::Toc(Field::OffsetBytes) => Kind::Fixed(self.off_size),
            Step::CompressionLevel
            | Step::CreateDate(_)
            | Step::TocCount
            | Step::BlockId
            | Step::ChunkLen
            | Step::LargeObjectOid
            | Step::Toc(Field::DumpId | Field::HadDumper | Field::Section | Field::RelKind) => {
                Kind::Int
            }
            Step::Toc(Field::Tag | Field::Desc | Field::CopyStmt | Field::Namespace) => {
                Kind::Str(true)
            }
            Step::DbName
            | Step::ServerVersion
            | Step::DumpVersion
            | Step::Toc(
                Field::TableOid
                | Field::Oid
                | Field::Defn
                | Field::DropStmt
                | Field::Tablespace
                | Field::TableAm
                | Field::Owner
                | Field::WithOids
                | Field::Dependency,
            ) => Kind::Str(false),
            Step::ChunkData(_) | Step::Failed => unreachable!("not an item"),
        }
    }

    /// Reads the next item from `input`; `None` when `input` ran out first.
    fn read_item(&mut self, input: &mut &[u8]) -> Result<Option<Item>, ScanError> {
        match self.kind() {
            Kind::Byte => {
                let (&byte, rest) = input.split_first().expect("input is not empty");
                *input = rest;
                Ok(Some(Item::Byte(byte)))
            }
            Kind::Int => Ok(self.read_int(input).map(Item::Int)),
            Kind::Str(keep) => Ok(self.read_str(input, keep)),
            Kind::Fixed(size) => {
                let take = (size - self.buf.len()).min(input.len());
                self.buf.extend_from_slice(&input[..take]);
                *input = &input[take..];
                if self.step == Step::Magic && !MAGIC.starts_with(&self.buf) {
                    return Err(ScanError::NotCustomArchive);
                }
                Ok((self.buf.len() == size).then_some(Item::Fixed))
            }
        }
    }

    #[inline]
    fn read_int(&mut self, input: &mut &[u8]) -> Option<i64> {
        let size = 1 + self.int_size;
        if self.int_len == 0 && input.len() >= size {
            let value = decode_int(&input[..size]);
            *input = &input[size..];
            return Some(value);
        }
        let take = (size - self.int_len).min(input.len());
        self.int_buf[self.int_len..self.int_len + take].copy_from_slice(&input[..take]);
        self.int_len += take;
        *input = &input[take..];
        if self.int_len < size {
            return None;
        }
        self.int_len = 0;
        Some(decode_int(&self.int_buf[..size]))
    }

    fn read_str(&mut self, input: &mut &[u8], keep: bool) -> Option<Item> {
        let left = match self.str_left {
            Some(left) => left,
            None => {
                let length = self.read_int(input)?;
                if length < 0 {
                    return Some(Item::Str { null: true });
                }
                self.buf.clear();
                length as u64
            }
        };
        let take = left.min(input.len() as u64) as usize;
        if keep {
            self.buf.extend_from_slice(&input[..take]);
        }
        *input = &input[take..];
        let left = left - take as u64;
        if left == 0 {
            self.str_left = None;
            Some(Item::Str { null: false })
        } else {
            self.str_left = Some(left);
            None
        }
    }

    /// Acts on a complete item and moves to the next step.
    fn on_item(&mut self, item: Item) -> Result<(), ScanError> {
        self.step = match (self.step, item) {
            (Step::Magic, Item::Fixed) => {
                self.buf.clear();
                Step::VersionMajor
            }
            (Step::VersionMajor, Item::Byte(major)) => {
                self.major = major;
                Step::VersionMinor
            }
            (Step::VersionMinor, Item::Byte(minor)) => {
                self.minor = minor;
                // Version 1.0 archives have no revision byte (ReadHead).
                if self.major == 0 || (self.major == 1 && minor == 0) {
                    return Err(ScanError::UnsupportedVersion {
                        major: self.major,
                        minor,
                        rev: 0,
                    });
                }
                Step::VersionRev
            }
            (Step::VersionRev, Item::Byte(rev)) => {
                if self.major != 1 || !SUPPORTED_MINOR_VERSIONS.contains(&self.minor) {
                    return Err(ScanError::UnsupportedVersion {
                        major: self.major,
                        minor: self.minor,
                        rev,
                    });
                }
                Step::IntSize
            }
            (Step::IntSize, Item::Byte(size)) => {
                if !(1..=MAX_INT_SIZE).contains(&usize::from(size)) {
                    return Err(self.corrupt(format!("unsupported integer size {size}")));
                }
                self.int_size = usize::from(size);
                Step::OffSize
            }
            (Step::OffSize, Item::Byte(size)) => {
                if !(1..=MAX_OFF_SIZE).contains(&usize::from(size)) {
                    return Err(self.corrupt(format!("unsupported file offset size {size}")));
                }
                self.off_size = usize::from(size);
                Step::Format
            }
            (Step::Format, Item::Byte(format)) => {
                if format != FORMAT_CUSTOM {
                    return Err(ScanError::WrongFormat { code: format });
                }
                if self.minor >= VERSION_COMPRESSION_ALGORITHM {
                    Step::CompressionAlgorithm
                } else {
                    Step::CompressionLevel
                }
            }
            (Step::CompressionAlgorithm, Item::Byte(algorithm)) => {
                // pg_compress_algorithm: none, gzip, lz4, zstd.
                let algorithm = match algorithm {
                    0 => None,
                    1 => Some("gzip".to_owned()),
                    2 => Some("lz4".to_owned()),
                    3 => Some("zstd".to_owned()),
                    other => Some(format!("unknown algorithm {other}")),
                };
                if let Some(algorithm) = algorithm {
                    return Err(ScanError::Compressed { algorithm });
                }
                Step::CreateDate(0)
            }
            (Step::CompressionLevel, Item::Int(level)) => {
                if level != 0 {
                    return Err(ScanError::Compressed {
                        algorithm: if level < 0 {
                            "gzip, default level".to_owned()
                        } else {
                            format!("gzip, level {level}")
                        },
                    });
                }
                Step::CreateDate(0)
            }
            (Step::CreateDate(field), Item::Int(_)) => {
                if field < 6 {
                    Step::CreateDate(field + 1)
                } else {
                    Step::DbName
                }
            }
            (Step::DbName, Item::Str { .. }) => Step::ServerVersion,
            (Step::ServerVersion, Item::Str { .. }) => Step::DumpVersion,
            (Step::DumpVersion, Item::Str { .. }) => Step::TocCount,
            (Step::TocCount, Item::Int(count)) => {
                if count < 0 {
                    return Err(self.corrupt(format!("negative TOC entry count {count}")));
                }
                self.toc_count = count as u64;
                self.next_entry()
            }
            (Step::Toc(field), item) => self.on_toc_field(field, item)?,
            (Step::BlockType, Item::Byte(block_type)) => {
                if block_type != BLK_DATA && block_type != BLK_BLOBS {
                    return Err(self.corrupt(format!(
                        "unknown data block type {block_type} (expected {BLK_DATA} or {BLK_BLOBS})"
                    )));
                }
                self.block_type = block_type;
                Step::BlockId
            }
            (Step::BlockId, Item::Int(id)) => self.start_block(id as i32)?,
            (Step::ChunkLen, Item::Int(length)) => {
                if length > 0 {
                    Step::ChunkData(length as u64)
                } else if length == 0 {
                    self.end_data()?
                } else {
                    return Err(self.corrupt(format!("negative data chunk length {length}")));
                }
            }
            (Step::LargeObjectOid, Item::Int(oid)) => {
                if oid == 0 {
                    Step::BlockType
                } else {
                    // WriteInt(oid) stores the Oid as a C int.
                    let oid = oid as i32 as u32;
                    self.lo_hasher.reset();
                    self.lo_hasher.update(decimal(oid).as_bytes());
                    self.lo_hasher.update(b":");
                    Step::ChunkLen
                }
            }
            (step, _) => unreachable!("item of the wrong kind for {step:?}"),
        };
        Ok(())
    }

    fn next_entry(&mut self) -> Step {
        if self.toc_read < self.toc_count {
            self.entry = PendingEntry::default();
            Step::Toc(Field::DumpId)
        } else {
            Step::BlockType
        }
    }

    fn on_toc_field(&mut self, field: Field, item: Item) -> Result<Step, ScanError> {
        let kept = |buf: &mut Vec<u8>, null: bool| (!null).then(|| std::mem::take(buf));
        Ok(match (field, item) {
            (Field::DumpId, Item::Int(id)) => {
                if id <= 0 || id > i64::from(i32::MAX) {
                    return Err(self.corrupt(format!("TOC entry dump id {id} out of range")));
                }
                self.entry.dump_id = id as i32;
                Step::Toc(Field::HadDumper)
            }
            (Field::HadDumper, Item::Int(had_dumper)) => {
                self.entry.had_dumper = had_dumper != 0;
                Step::Toc(Field::TableOid)
            }
            (Field::TableOid, _) => Step::Toc(Field::Oid),
            (Field::Oid, _) => Step::Toc(Field::Tag),
            (Field::Tag, Item::Str { null }) => {
                self.entry.tag = kept(&mut self.buf, null).unwrap_or_default();
                Step::Toc(Field::Desc)
            }
            (Field::Desc, Item::Str { null }) => {
                self.entry.desc = kept(&mut self.buf, null).unwrap_or_default();
                Step::Toc(Field::Section)
            }
            (Field::Section, _) => Step::Toc(Field::Defn),
            (Field::Defn, _) => Step::Toc(Field::DropStmt),
            (Field::DropStmt, _) => Step::Toc(Field::CopyStmt),
            (Field::CopyStmt, Item::Str { null }) => {
                self.entry.copy_stmt = kept(&mut self.buf, null);
                Step::Toc(Field::Namespace)
            }
            (Field::Namespace, Item::Str { null }) => {
                self.entry.namespace = kept(&mut self.buf, null);
                Step::Toc(Field::Tablespace)
            }
            (Field::Tablespace, _) if self.minor >= VERSION_TABLEAM => Step::Toc(Field::TableAm),
            (Field::TableAm, _) if self.minor >= VERSION_RELKIND => Step::Toc(Field::RelKind),
            (Field::Tablespace | Field::TableAm | Field::RelKind, _) => Step::Toc(Field::Owner),
            (Field::Owner, _) => Step::Toc(Field::WithOids),
            (Field::WithOids | Field::Dependency, Item::Str { null: false }) => {
                Step::Toc(Field::Dependency)
            }
            (Field::Dependency, Item::Str { null: true }) => Step::Toc(Field::OffsetFlag),
            (Field::WithOids, Item::Str { null: true }) => {
                return Err(self.corrupt("TOC entry has a NULL with-oids field"));
            }
            (Field::OffsetFlag, Item::Byte(flag)) => {
                if ![OFFSET_POS_NOT_SET, OFFSET_POS_SET, OFFSET_NO_DATA].contains(&flag) {
                    return Err(self.corrupt(format!("unexpected data offset flag {flag}")));
                }
                let expects_data = self.entry.had_dumper && flag != OFFSET_NO_DATA;
                self.add_entry(expects_data)?;
                Step::Toc(Field::OffsetBytes)
            }
            (Field::OffsetBytes, Item::Fixed) => {
                self.buf.clear();
                self.toc_read += 1;
                self.next_entry()
            }
            (field, _) => unreachable!("item of the wrong kind for TOC field {field:?}"),
        })
    }

    /// Records the TOC entry just read.
    fn add_entry(&mut self, expects_data: bool) -> Result<(), ScanError> {
        let entry = std::mem::take(&mut self.entry);
        let id = entry.dump_id;
        if self.entries.contains_key(&id) {
            return Err(self.corrupt(format!("two TOC entries have dump id {id}")));
        }
        let table = if entry.desc == b"TABLE DATA" {
            let schema = entry.namespace.as_deref().map(text).unwrap_or_default();
            let table = text(&entry.tag);
            let (columns, copy) = match &entry.copy_stmt {
                Some(statement) if !statement.is_empty() => {
                    let statement = text(statement);
                    match copy_columns(&statement) {
                        Some(columns) => (columns, true),
                        None => {
                            return Err(ScanError::UnexpectedCopyStatement {
                                schema,
                                table,
                                statement,
                            });
                        }
                    }
                }
                _ => (String::new(), false),
            };
            self.tables.push(Table {
                data: TableData {
                    schema,
                    table,
                    columns,
                    rows: 0,
                    hash: 0,
                    buckets: None,
                },
                copy,
            });
            Some(self.tables.len() - 1)
        } else {
            if entry.desc == b"BLOBS" {
                self.has_large_objects = true;
            }
            None
        };
        let label = if table.is_none() && expects_data {
            format!("{} {}", text(&entry.desc), text(&entry.tag)).into_boxed_str()
        } else {
            Box::default()
        };
        self.entries.insert(
            id,
            Entry {
                table,
                expects_data,
                seen: false,
                label,
            },
        );
        Ok(())
    }

    /// A data block header was read: find its entry and start on its data.
    fn start_block(&mut self, id: i32) -> Result<Step, ScanError> {
        let Some(entry) = self.entries.get_mut(&id) else {
            return Err(self.corrupt(format!(
                "data block for dump id {id}, which is not in the table of contents"
            )));
        };
        if entry.seen {
            return Err(self.corrupt(format!("second data block for dump id {id}")));
        }
        entry.seen = true;
        let table = entry.table;
        if self.block_type == BLK_BLOBS {
            self.has_large_objects = true;
            self.block = Block::LargeObjects;
            return Ok(Step::LargeObjectOid);
        }
        self.block = match table {
            // INSERT-style data (`--inserts`) cannot be fingerprinted, but
            // a structure-only scan has nothing to hash.
            Some(_) if !self.hash_rows => Block::Skip(id),
            Some(index) => {
                let table = &self.tables[index];
                if !table.copy {
                    return Err(ScanError::NotCopyFormat {
                        schema: table.data.schema.clone(),
                        table: table.data.table.clone(),
                    });
                }
                self.lines.reset();
                Block::Table(index)
            }
            None => Block::Skip(id),
        };
        Ok(Step::ChunkLen)
    }

    /// The zero-length chunk that ends a table's data or one large object.
    fn end_data(&mut self) -> Result<Step, ScanError> {
        Ok(match self.block {
            Block::Table(index) => {
                if self.lines.partial_len > 0 {
                    let table = &self.tables[index].data;
                    return Err(self.corrupt(format!(
                        "the data of table {}.{} ends in the middle of a row",
                        table.schema, table.table
                    )));
                }
                let table = &mut self.tables[index].data;
                table.rows = self.lines.rows;
                table.hash = self.lines.hash;
                table.buckets = match self.lines.buckets.take() {
                    Some(b)
                        if table.rows >= sample::MIN_ROWS
                            && sample::first_column(&table.columns).is_some() =>
                    {
                        Some(b)
                    }
                    _ => None,
                };
                Step::BlockType
            }
            Block::LargeObjects => {
                self.lo_count += 1;
                self.lo_hash = self.lo_hash.wrapping_add(self.lo_hasher.digest());
                Step::LargeObjectOid
            }
            Block::Skip(_) => Step::BlockType,
        })
    }
}

impl io::Write for DumpScanner {
    /// Consumes all of `buf`. Never fails: a malformed archive is reported
    /// by [`DumpScanner::finish`], and the rest of the stream is ignored.
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.feed(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    //! The fixtures in `tests/fixtures/dumps` come from `make.sh` there: real
    //! pg_dump 15 archives (version 1.14) of `schema.sql`, plus each table's
    //! `COPY … TO STDOUT` output and each large object's content, which give
    //! the expected fingerprints independently of the archive. Other archive
    //! versions are made by rewriting the 1.14 archive with the small
    //! pull-parser below.

    use super::*;
    use std::io::Write;
    use std::path::PathBuf;

    fn fixture(name: &str) -> Vec<u8> {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/dumps")
            .join(name);
        std::fs::read(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
    }

    fn scan(bytes: &[u8]) -> Result<DumpPrint, ScanError> {
        scan_in_chunks(bytes, bytes.len().max(1))
    }

    fn scan_in_chunks(bytes: &[u8], chunk: usize) -> Result<DumpPrint, ScanError> {
        let mut scanner = DumpScanner::new();
        for piece in bytes.chunks(chunk) {
            assert_eq!(
                scanner.write(piece).expect("write never fails"),
                piece.len()
            );
        }
        scanner.finish()
    }

    /// Chunks of pseudo-random sizes between 1 and 300 bytes.
    fn scan_in_random_chunks(bytes: &[u8], mut seed: u64) -> Result<DumpPrint, ScanError> {
        let mut scanner = DumpScanner::new();
        let mut rest = bytes;
        while !rest.is_empty() {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let size = ((seed >> 33) % 300 + 1) as usize;
            let (piece, tail) = rest.split_at(size.min(rest.len()));
            scanner.write_all(piece).expect("write never fails");
            rest = tail;
        }
        scanner.finish()
    }

    /// Row count and hash of a `COPY … TO STDOUT` output, as the verifying side computes them.
    fn copy_print(copy_output: &[u8]) -> (u64, u64) {
        let lines = copy_output
            .strip_suffix(b"\n")
            .map(|body| body.split(|&b| b == b'\n'));
        lines
            .into_iter()
            .flatten()
            .fold((0, 0), |(rows, hash), line| {
                (rows + 1, hash.wrapping_add(row_hash(line)))
            })
    }

    /// (schema, table, columns, copy file, rows) of every table in schema.sql,
    /// in the order `DumpPrint` sorts them.
    const TABLES: &[(&str, &str, &str, &str, u64)] = &[
        (
            "Weird Schema",
            "Mixed \"Quoted\" Tbl",
            "(\"Größe\", \"select\", \"a b\")",
            "weird_mixed",
            3,
        ),
        ("Weird Schema", "x FROM stdin; y", "(id)", "weird_from", 2),
        ("public", "big", "(id, payload)", "big", 5000),
        ("public", "bin", "(id, data)", "bin", 4),
        ("public", "dropped", "(a, c)", "dropped", 2),
        ("public", "empty", "(id)", "empty", 0),
        ("public", "gen", "(a)", "gen", 5),
        ("public", "measure_eu", "(id, region)", "measure_eu", 10),
        (
            "public",
            "measure_other",
            "(id, region)",
            "measure_other",
            10,
        ),
        ("public", "measure_us", "(id, region)", "measure_us", 10),
        ("public", "nocols", "", "nocols", 3),
        ("public", "plain", "(id, name, note)", "plain", 8),
        ("public", "single", "(t)", "single", 4),
    ];

    const LARGE_OBJECTS: &[u32] = &[16400, 16401, 3_000_000_000];

    fn expected_table(
        &(schema, table, columns, file, rows): &(&str, &str, &str, &str, u64),
    ) -> TableData {
        let (copy_rows, hash) = copy_print(&fixture(&format!("copy/{file}.copy")));
        assert_eq!(copy_rows, rows, "rows in copy/{file}.copy");
        TableData {
            schema: schema.into(),
            table: table.into(),
            columns: columns.into(),
            rows,
            hash,
            buckets: None,
        }
    }

    fn expected_full() -> DumpPrint {
        let hash = LARGE_OBJECTS.iter().fold(0u64, |sum, &oid| {
            sum.wrapping_add(large_object_hash(oid, &fixture(&format!("lo/{oid}.bin"))))
        });
        DumpPrint {
            tables: TABLES.iter().map(expected_table).collect(),
            large_objects: Some(LargeObjects {
                count: LARGE_OBJECTS.len() as u64,
                hash,
            }),
        }
    }

    #[test]
    fn full_dump_matches_copy_output_and_large_objects() {
        let dump = fixture("full.dump");
        let archive = Archive::parse(&dump);
        // Dumped through a pipe, like drctl does: no data offsets in the TOC.
        assert!(
            archive
                .entries
                .iter()
                .all(|e| e.offset_flag != OFFSET_POS_SET)
        );
        let print = scan(&dump).expect("scan full.dump");
        assert_eq!(print, expected_full());
    }

    #[test]
    fn chunk_boundaries_do_not_change_the_fingerprint() {
        let dump = fixture("full.dump");
        let whole = scan(&dump).expect("scan in one piece");
        for chunk in [1, 7, 64 * 1024] {
            assert_eq!(
                scan_in_chunks(&dump, chunk).expect("scan"),
                whole,
                "chunk size {chunk}"
            );
        }
        for seed in 0..4 {
            assert_eq!(
                scan_in_random_chunks(&dump, seed).expect("scan"),
                whole,
                "seed {seed}"
            );
        }
    }

    #[test]
    fn hashes_are_plain_xxh3_64() {
        // xxh3_64 of the empty input, from the reference implementation.
        assert_eq!(row_hash(b""), 0x2d06_8005_38d3_94c2);
        assert_eq!(row_hash(b"1\talice\t\\N"), xxh3_64(b"1\talice\t\\N"));
        assert_eq!(
            large_object_hash(16400, b"hello world"),
            xxh3_64(b"16400:hello world")
        );
        assert_eq!(large_object_hash(0, b""), xxh3_64(b"0:"));
        assert_eq!(large_object_hash(u32::MAX, b"x"), xxh3_64(b"4294967295:x"));
    }

    #[test]
    fn fingerprint_round_trips_through_json() {
        let print = expected_full();
        let json = serde_json::to_string(&print).expect("serialise");
        let back: DumpPrint = serde_json::from_str(&json).expect("deserialise");
        assert_eq!(back, print);
    }

    #[test]
    fn load_via_partition_root_still_fingerprints_each_partition() {
        let dump = fixture("via_root.dump");
        // Dumped to a file: pg_dump rewrote the TOC with the data offsets.
        assert!(
            Archive::parse(&dump)
                .entries
                .iter()
                .any(|e| e.offset_flag == OFFSET_POS_SET)
        );
        let print = scan(&dump).expect("scan via_root.dump");
        let partitions = TABLES
            .iter()
            .filter(|table| table.1.starts_with("measure_"));
        assert_eq!(
            print,
            DumpPrint {
                tables: partitions.map(expected_table).collect(),
                large_objects: None,
            }
        );
    }

    #[test]
    fn compressed_archive_is_refused_from_its_header() {
        let dump = fixture("compressed.dump");
        for bytes in [&dump[..], &dump[..64]] {
            let error = scan(bytes).expect_err("compressed archive must be refused");
            assert!(matches!(error, ScanError::Compressed { .. }), "{error:?}");
            assert!(error.to_string().contains("--compress=0"), "{error}");
            assert!(error.to_string().contains("gzip, level 6"), "{error}");
        }
    }

    #[test]
    fn input_that_is_not_an_archive_is_refused() {
        for input in [
            &b"--\n-- PostgreSQL database dump\n--\n"[..],
            b"PGDMX",
            b"P\x00",
            b"\x1f\x8b\x08\x00",
        ] {
            let error = scan(input).expect_err("not an archive");
            assert!(
                matches!(error, ScanError::NotCustomArchive),
                "{input:?}: {error:?}"
            );
            assert!(error.to_string().contains("--format=custom"), "{error}");
        }
    }

    #[test]
    fn empty_input_is_truncated() {
        let error = DumpScanner::new().finish().expect_err("empty");
        assert!(
            matches!(error, ScanError::Truncated { offset: 0, .. }),
            "{error:?}"
        );
        assert!(error.to_string().contains("no data at all"), "{error}");
    }

    #[test]
    fn structure_only_scan_reports_truncation_without_hashing() {
        let dump = fixture("full.dump");
        let archive = Archive::parse(&dump);
        let data_start = dump.len() - archive.data.len();
        let block_starts: Vec<usize> = archive
            .block_starts()
            .iter()
            .map(|at| data_start + at)
            .collect();
        let check = |bytes: &[u8]| {
            let mut scanner = DumpScanner::structure_only();
            scanner.write_all(bytes).expect("write never fails");
            scanner.finish()
        };
        let whole = check(&dump).expect("the whole archive is complete");
        assert!(
            whole.tables.iter().all(|t| t.rows == 0 && t.hash == 0),
            "structure-only scans hash nothing: {whole:?}"
        );
        // pg_dump exiting 0 after a short write: the archive ends cleanly
        // between two data blocks, so only the TOC shows what is missing.
        for &cut in &block_starts {
            let error = check(&dump[..cut]).expect_err("a cut archive is incomplete");
            assert!(
                matches!(error, ScanError::Truncated { .. }),
                "cut at {cut}: {error:?}"
            );
        }
        let error = check(&dump[..dump.len() - 3]).expect_err("cut in the last block");
        assert!(matches!(error, ScanError::Truncated { .. }), "{error:?}");
    }

    #[test]
    fn every_truncation_is_reported() {
        let dump = fixture("full.dump");
        let archive = Archive::parse(&dump);
        let data_start = dump.len() - archive.data.len();
        let block_starts: Vec<usize> = archive
            .block_starts()
            .iter()
            .map(|at| data_start + at)
            .collect();
        assert!(block_starts.len() > TABLES.len(), "{block_starts:?}");
        // Every cut in the header, many in the TOC, some in the data, the
        // last bytes, and every boundary between data blocks.
        let mut cuts: Vec<usize> = (1..300).chain((300..data_start).step_by(7)).collect();
        cuts.extend((data_start..dump.len()).step_by(4999));
        cuts.extend(dump.len() - 40..dump.len());
        cuts.extend(&block_starts);
        for cut in cuts {
            let error = scan(&dump[..cut]).expect_err("a truncated archive must not scan");
            assert!(
                matches!(error, ScanError::Truncated { .. }),
                "cut at {cut}: {error:?}"
            );
        }
        // Cut exactly between two data blocks: only the TOC can tell.
        let error = scan(&dump[..block_starts[3]]).expect_err("cut between blocks");
        assert!(error.to_string().contains("before the data of"), "{error}");
        // Cut in the header and in the TOC.
        let error = scan(&dump[..20]).expect_err("cut in header");
        assert!(
            error.to_string().contains("in the archive header"),
            "{error}"
        );
        let error = scan(&dump[..data_start - 1]).expect_err("cut in TOC");
        assert!(
            error.to_string().contains("table-of-contents entry"),
            "{error}"
        );
    }

    #[test]
    fn archive_versions_1_12_to_1_16_give_the_same_fingerprint() {
        let dump = fixture("full.dump");
        let archive = Archive::parse(&dump);
        assert_eq!(archive.minor, 14, "the fixture comes from pg_dump 15");
        assert_eq!(
            archive.write(),
            dump,
            "the test model must round-trip the fixture"
        );
        let expected = expected_full();
        for minor in 12..=16 {
            let rewritten = Archive {
                minor,
                ..archive.clone()
            }
            .write();
            assert_eq!(
                scan(&rewritten).expect("scan"),
                expected,
                "version 1.{minor}"
            );
            assert_eq!(
                scan_in_chunks(&rewritten, 3).expect("scan"),
                expected,
                "version 1.{minor} in 3-byte chunks"
            );
        }
    }

    #[test]
    fn compression_algorithms_of_version_1_15_are_refused() {
        let archive = Archive::parse(&fixture("full.dump"));
        for (algorithm, name) in [(1, "gzip"), (2, "lz4"), (3, "zstd")] {
            let bytes = Archive {
                minor: 15,
                compression: algorithm,
                ..archive.clone()
            }
            .write();
            let error = scan(&bytes).expect_err("compressed");
            assert!(matches!(error, ScanError::Compressed { .. }), "{error:?}");
            assert!(error.to_string().contains(name), "{error}");
        }
    }

    #[test]
    fn unsupported_versions_say_which() {
        let dump = fixture("full.dump");
        for (major, minor, shown) in [
            (1, 0, "1.0.0"),
            (1, 11, "1.11.0"),
            (1, 17, "1.17.0"),
            (2, 0, "2.0.0"),
        ] {
            let mut bytes = dump.clone();
            bytes[5] = major;
            bytes[6] = minor;
            let error = scan(&bytes[..8]).expect_err("unsupported version");
            assert!(
                matches!(error, ScanError::UnsupportedVersion { .. }),
                "{error:?}"
            );
            assert!(error.to_string().contains(shown), "{error}");
        }
    }

    #[test]
    fn other_archive_formats_are_refused() {
        let mut bytes = fixture("full.dump");
        bytes[10] = 5; // format byte: directory (toc.dat)
        let error = scan(&bytes).expect_err("directory format");
        assert!(matches!(error, ScanError::WrongFormat { .. }), "{error:?}");
        assert!(
            error.to_string().contains("format code 5 (directory)"),
            "{error}"
        );
    }

    #[test]
    fn table_data_without_copy_statement_is_refused() {
        let mut archive = Archive::parse(&fixture("full.dump"));
        let entry = archive.table_data_mut("plain");
        entry.copy_stmt = None; // what pg_dump --inserts writes
        let error = scan(&archive.write()).expect_err("INSERT data");
        assert!(
            matches!(error, ScanError::NotCopyFormat { .. }),
            "{error:?}"
        );
        assert!(error.to_string().contains("public.plain"), "{error}");
        assert!(error.to_string().contains("--inserts"), "{error}");
    }

    #[test]
    fn unreadable_copy_statement_is_refused() {
        let mut archive = Archive::parse(&fixture("full.dump"));
        archive.table_data_mut("plain").copy_stmt = Some(b"INSERT INTO plain VALUES".to_vec());
        let error = scan(&archive.write()).expect_err("odd COPY statement");
        assert!(
            matches!(error, ScanError::UnexpectedCopyStatement { .. }),
            "{error:?}"
        );
    }

    #[test]
    fn corrupt_data_sections_are_reported() {
        let dump = fixture("full.dump");
        let archive = Archive::parse(&dump);
        let data_start = dump.len() - archive.data.len();
        let first_block = data_start + archive.block_starts()[0];

        let mut bytes = dump.clone();
        bytes[first_block] = 7;
        let error = scan(&bytes).expect_err("unknown block type");
        assert!(
            error.to_string().contains("unknown data block type 7"),
            "{error}"
        );

        let mut bytes = dump.clone();
        bytes[first_block + 2..first_block + 6].copy_from_slice(&60000u32.to_le_bytes());
        let error = scan(&bytes).expect_err("unknown dump id");
        assert!(error.to_string().contains("dump id 60000"), "{error}");

        let mut bytes = dump.clone();
        bytes.extend_from_slice(&dump[first_block..first_block + 6]);
        let error = scan(&bytes).expect_err("data block twice");
        assert!(error.to_string().contains("second data block"), "{error}");
    }

    #[test]
    fn copy_text_lines_are_split_and_the_end_marker_is_not_a_row() {
        let mut lines = CopyLines::new();
        for piece in [&b"a\tb\n\nc"[..], b"d\n\\", b".\n", b"\n\n"] {
            lines.consume(piece).expect("valid COPY text");
        }
        assert_eq!(lines.rows, 3);
        let expected = [&b"a\tb"[..], b"", b"cd"]
            .iter()
            .fold(0u64, |sum, line| sum.wrapping_add(row_hash(line)));
        assert_eq!(lines.hash, expected);
        assert_eq!(lines.partial_len, 0);

        let mut lines = CopyLines::new();
        lines.consume(b"\\.\n").expect("end marker");
        assert!(lines.consume(b"late row\n").is_err());
        let mut lines = CopyLines::new();
        lines
            .consume(b"\\.\n\nla")
            .expect("end marker, then a partial line");
        assert!(lines.consume(b"te\n").is_err());
        // `\.` only ends the data as a whole line.
        let mut lines = CopyLines::new();
        lines.consume(b"\\.x\n\\").expect("rows");
        lines.consume(b"\\.\n").expect("rows");
        assert_eq!(lines.rows, 2);
    }

    #[test]
    fn copy_columns_come_from_the_statement_verbatim() {
        let cases = [
            ("COPY public.t (a, b) FROM stdin;\n", Some("(a, b)")),
            ("COPY public.t  FROM stdin;\n", Some("")),
            (
                "COPY \"S p\".\"x FROM stdin; (y)\" (\"a b\", \"c\"\"d\") FROM stdin;\n",
                Some("(\"a b\", \"c\"\"d\")"),
            ),
            ("COPY public.t (a) WITH OIDS FROM stdin;\n", None),
            ("COPY \"unterminated FROM stdin;\n", None),
            ("INSERT INTO t VALUES (1);\n", None),
        ];
        for (statement, columns) in cases {
            assert_eq!(copy_columns(statement).as_deref(), columns, "{statement:?}");
        }
    }

    #[test]
    fn newline_search_finds_the_first_one_everywhere() {
        let mut haystack = vec![b'x'; 200];
        assert_eq!(find_newline(&haystack), None);
        for at in (0..200).rev() {
            haystack[at] = b'\n';
            assert_eq!(find_newline(&haystack), Some(at));
        }
    }

    /// Throughput of the scanner on a synthetic archive shaped like pg_dump's
    /// output (one chunk per row, rows of ~100 bytes), fed in 64 KiB writes.
    /// Run with `cargo test --release -- --ignored --nocapture throughput`.
    #[test]
    #[ignore = "measures throughput; run by hand in release mode"]
    #[allow(
        clippy::print_stdout,
        reason = "a measurement run by hand prints its result"
    )]
    fn throughput() {
        let archive = Archive::parse(&fixture("full.dump"));
        let id = archive.table_data_id("big");
        let mut data = vec![BLK_DATA];
        put_int(&mut data, i64::from(id));
        let mut row = 0u64;
        while data.len() < 256 << 20 {
            row += 1;
            let line = format!(
                "{row}\t{:032x}\tsome text with a few words in it\t2024-01-01 00:00:{:02}+00\t\\N\n",
                row.wrapping_mul(0x9e37_79b9_7f4a_7c15),
                row % 60
            );
            put_int(&mut data, line.len() as i64);
            data.extend_from_slice(line.as_bytes());
        }
        let end = b"\\.\n\n\n";
        put_int(&mut data, end.len() as i64);
        data.extend_from_slice(end);
        put_int(&mut data, 0);
        let bytes = Archive {
            data,
            entries: archive
                .entries
                .iter()
                .filter(|entry| {
                    entry.dump_id == i64::from(id)
                        || (entry.desc != b"TABLE DATA" && entry.desc != b"BLOBS")
                })
                .cloned()
                .collect(),
            ..archive.clone()
        }
        .write();
        let started = std::time::Instant::now();
        let rounds = 4;
        for _ in 0..rounds {
            let print = scan_in_chunks(&bytes, 64 * 1024).expect("scan");
            assert_eq!(print.tables[0].rows, row);
        }
        let seconds = started.elapsed().as_secs_f64();
        let bytes_scanned = (bytes.len() * rounds) as f64;
        println!(
            "scanned {:.0} MiB ({} rows of ~{} bytes) at {:.2} GB/s",
            bytes_scanned / f64::from(1 << 20),
            row,
            bytes.len() as u64 / row,
            bytes_scanned / seconds / 1e9
        );
    }

    // -----------------------------------------------------------------------
    // A small pull-parser and writer of custom-format archives, written
    // separately from the scanner, to rewrite the fixture into other versions
    // and to find block boundaries.
    // -----------------------------------------------------------------------

    #[derive(Clone)]
    struct Archive {
        minor: u8,
        int_size: u8,
        off_size: u8,
        /// Compression level before 1.15, algorithm from 1.15.
        compression: i64,
        create_date: [i64; 7],
        header_strings: [Option<Vec<u8>>; 3],
        entries: Vec<ModelEntry>,
        /// Everything after the TOC, verbatim.
        data: Vec<u8>,
    }

    #[derive(Clone)]
    struct ModelEntry {
        dump_id: i64,
        had_dumper: i64,
        table_oid: Option<Vec<u8>>,
        oid: Option<Vec<u8>>,
        tag: Option<Vec<u8>>,
        desc: Vec<u8>,
        section: i64,
        defn: Option<Vec<u8>>,
        drop_stmt: Option<Vec<u8>>,
        copy_stmt: Option<Vec<u8>>,
        namespace: Option<Vec<u8>>,
        tablespace: Option<Vec<u8>>,
        tableam: Option<Vec<u8>>,
        owner: Option<Vec<u8>>,
        with_oids: Option<Vec<u8>>,
        deps: Vec<Vec<u8>>,
        offset_flag: u8,
        offset: Vec<u8>,
    }

    struct Cursor<'a> {
        bytes: &'a [u8],
        at: usize,
        int_size: usize,
    }

    impl Cursor<'_> {
        fn take(&mut self, n: usize) -> &[u8] {
            let slice = &self.bytes[self.at..self.at + n];
            self.at += n;
            slice
        }
        fn byte(&mut self) -> u8 {
            self.take(1)[0]
        }
        fn int(&mut self) -> i64 {
            let sign = self.byte();
            let mut value = 0i64;
            for (i, &b) in self.take(self.int_size).to_vec().iter().enumerate() {
                value |= i64::from(b) << (8 * i);
            }
            if sign != 0 { -value } else { value }
        }
        fn string(&mut self) -> Option<Vec<u8>> {
            let len = self.int();
            (len >= 0).then(|| self.take(len as usize).to_vec())
        }
    }

    fn put_int_sized(out: &mut Vec<u8>, value: i64, size: u8) {
        out.push(u8::from(value < 0));
        let magnitude = value.unsigned_abs();
        for i in 0..size {
            out.push((magnitude >> (8 * i)) as u8);
        }
    }

    fn put_int(out: &mut Vec<u8>, value: i64) {
        put_int_sized(out, value, 4);
    }

    impl Archive {
        fn parse(bytes: &[u8]) -> Archive {
            assert_eq!(&bytes[..5], b"PGDMP");
            let mut c = Cursor {
                bytes,
                at: 5,
                int_size: 0,
            };
            assert_eq!(c.byte(), 1);
            let minor = c.byte();
            let _rev = c.byte();
            let int_size = c.byte();
            c.int_size = usize::from(int_size);
            let off_size = c.byte();
            assert_eq!(c.byte(), 1, "custom format");
            let compression = if minor >= 15 {
                i64::from(c.byte())
            } else {
                c.int()
            };
            let create_date = std::array::from_fn(|_| c.int());
            let header_strings = std::array::from_fn(|_| c.string());
            let count = c.int();
            let entries = (0..count)
                .map(|_| {
                    let dump_id = c.int();
                    let had_dumper = c.int();
                    let table_oid = c.string();
                    let oid = c.string();
                    let tag = c.string();
                    let desc = c.string().expect("desc");
                    let section = c.int();
                    let defn = c.string();
                    let drop_stmt = c.string();
                    let copy_stmt = c.string();
                    let namespace = c.string();
                    let tablespace = c.string();
                    let tableam = if minor >= 14 { c.string() } else { None };
                    if minor >= 16 {
                        c.int();
                    }
                    let owner = c.string();
                    let with_oids = c.string();
                    let deps = std::iter::from_fn(|| c.string()).collect();
                    let offset_flag = c.byte();
                    let offset = c.take(usize::from(off_size)).to_vec();
                    ModelEntry {
                        dump_id,
                        had_dumper,
                        table_oid,
                        oid,
                        tag,
                        desc,
                        section,
                        defn,
                        drop_stmt,
                        copy_stmt,
                        namespace,
                        tablespace,
                        tableam,
                        owner,
                        with_oids,
                        deps,
                        offset_flag,
                        offset,
                    }
                })
                .collect();
            Archive {
                minor,
                int_size,
                off_size,
                compression,
                create_date,
                header_strings,
                entries,
                data: bytes[c.at..].to_vec(),
            }
        }

        fn write(&self) -> Vec<u8> {
            let mut out = b"PGDMP".to_vec();
            out.extend_from_slice(&[1, self.minor, 0, self.int_size, self.off_size, 1]);
            let int = |out: &mut Vec<u8>, value: i64| put_int_sized(out, value, self.int_size);
            let string = |out: &mut Vec<u8>, value: &Option<Vec<u8>>| match value {
                Some(bytes) => {
                    int(out, bytes.len() as i64);
                    out.extend_from_slice(bytes);
                }
                None => int(out, -1),
            };
            if self.minor >= 15 {
                out.push(self.compression as u8);
            } else {
                int(&mut out, self.compression);
            }
            for value in self.create_date {
                int(&mut out, value);
            }
            for value in &self.header_strings {
                string(&mut out, value);
            }
            int(&mut out, self.entries.len() as i64);
            for e in &self.entries {
                int(&mut out, e.dump_id);
                int(&mut out, e.had_dumper);
                string(&mut out, &e.table_oid);
                string(&mut out, &e.oid);
                string(&mut out, &e.tag);
                string(&mut out, &Some(e.desc.clone()));
                int(&mut out, e.section);
                string(&mut out, &e.defn);
                string(&mut out, &e.drop_stmt);
                string(&mut out, &e.copy_stmt);
                string(&mut out, &e.namespace);
                string(&mut out, &e.tablespace);
                if self.minor >= 14 {
                    string(&mut out, &e.tableam);
                }
                if self.minor >= 16 {
                    int(&mut out, i64::from(b'r'));
                }
                string(&mut out, &e.owner);
                string(&mut out, &e.with_oids);
                for dep in &e.deps {
                    string(&mut out, &Some(dep.clone()));
                }
                string(&mut out, &None);
                out.push(e.offset_flag);
                out.extend_from_slice(&e.offset);
            }
            out.extend_from_slice(&self.data);
            out
        }

        /// Offsets in `data` where each data block starts.
        fn block_starts(&self) -> Vec<usize> {
            let mut c = Cursor {
                bytes: &self.data,
                at: 0,
                int_size: usize::from(self.int_size),
            };
            let mut starts = Vec::new();
            let skip_chunks = |c: &mut Cursor| loop {
                let len = c.int();
                if len == 0 {
                    break;
                }
                c.take(len as usize);
            };
            while c.at < self.data.len() {
                starts.push(c.at);
                let block_type = c.byte();
                c.int();
                match block_type {
                    BLK_DATA => skip_chunks(&mut c),
                    BLK_BLOBS => {
                        while c.int() != 0 {
                            skip_chunks(&mut c);
                        }
                    }
                    other => panic!("block type {other}"),
                }
            }
            starts
        }

        fn table_data_mut(&mut self, tag: &str) -> &mut ModelEntry {
            self.entries
                .iter_mut()
                .find(|e| e.desc == b"TABLE DATA" && e.tag.as_deref() == Some(tag.as_bytes()))
                .unwrap_or_else(|| panic!("no TABLE DATA entry {tag}"))
        }

        fn table_data_id(&self, tag: &str) -> i32 {
            let entry = self
                .entries
                .iter()
                .find(|e| e.desc == b"TABLE DATA" && e.tag.as_deref() == Some(tag.as_bytes()))
                .unwrap_or_else(|| panic!("no TABLE DATA entry {tag}"));
            entry.dump_id as i32
        }
    }
}
