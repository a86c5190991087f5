//! Sources of plaintext, and where restored plaintext goes: PostgreSQL
//! (`pg_dump` from an exported snapshot, with a fingerprint taken in the
//! same snapshot) and files (a tar stream).

pub mod dumpscan;
pub mod files;
pub mod fingerprint;
pub mod postgres;
pub mod process;
