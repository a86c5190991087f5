//! Sources of plaintext, and where restored plaintext goes: PostgreSQL
//! databases (`pg_dump` from an exported snapshot, with a fingerprint taken
//! in the same snapshot), whole clusters (`pg_basebackup` plus the WAL
//! archive, see [`pgcluster`]) and files (a tar stream).

pub mod dumpscan;
pub mod files;
pub mod fingerprint;
pub mod pgcluster;
pub mod postgres;
pub mod process;
