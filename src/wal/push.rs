//! `drctl wal-push POLICY %p`: PostgreSQL's `archive_command`.
//!
//! The contract (PostgreSQL's "Continuous Archiving"): exit 0 only once the
//! file is durably stored, since PostgreSQL then recycles it; any other
//! answer keeps it in `pg_wal` and the call is repeated. The same file may
//! be pushed again (after a crash, or by a standby after promotion): the
//! same content must succeed, different content must fail, and nothing is
//! overwritten.

use std::io::Read;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use sha2::{Digest, Sha256};

use super::WalName;
use crate::error::{Error, Result};
use crate::pipeline::crypto;
use crate::repo::Repo;

/// Bytes read from the WAL file at a time while hashing.
const READ_BYTES: usize = 256 * 1024;

/// What a push did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pushed {
    /// Stored now: the key and the bytes stored.
    Stored { key: String, stored_bytes: u64 },
    /// An earlier push stored the same content.
    AlreadyArchived { key: String },
}

/// The SHA-256 (lowercase hex) and size of a file.
///
/// # Errors
/// I/O errors naming the file.
pub fn hash_file(path: &Path) -> Result<(String, u64)> {
    let mut file = std::fs::File::open(path)
        .map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; READ_BYTES];
    let mut size = 0u64;
    loop {
        let n = file
            .read(&mut buf)
            .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
        if n == 0 {
            return Ok((hex::encode(hasher.finalize()), size));
        }
        hasher.update(&buf[..n]);
        size += n as u64;
    }
}

/// Archives the WAL file at `path` for `policy`.
///
/// # Errors
/// `Usage` for a file that is not a WAL file; `Refused` when different
/// content is archived under the same name already; storage and I/O
/// errors. Every error leaves the archive as it was (an upload that failed
/// is aborted), so PostgreSQL keeps the file and tries again.
pub async fn push(
    repo: &Repo,
    policy: &str,
    recipients: &[String],
    level: i32,
    path: &Path,
) -> Result<Pushed> {
    let file_name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| Error::Usage(format!("{} names no WAL file", path.display())))?;
    let name = WalName::parse(file_name).map_err(Error::Usage)?;
    // Hashing first costs a second read of a file the page cache holds, and
    // lets the key carry the digest: a repeated push is answered from a
    // listing, without the identity.
    let (sha256, _) = {
        let path = path.to_path_buf();
        tokio::task::spawn_blocking(move || hash_file(&path))
            .await
            .expect("hashing task panicked")?
    };
    let prefix = super::name_prefix(policy, &name);
    let existing = repo.store.list(&prefix).await?;
    if let Some(found) = existing
        .iter()
        .find(|o| super::parse_key(policy, &o.key).is_some_and(|(_, s)| s == sha256))
    {
        return Ok(Pushed::AlreadyArchived {
            key: found.key.clone(),
        });
    }
    if let Some(other) = existing.first() {
        return Err(Error::Refused(format!(
            "{name} is archived already with other content (`{}`; this file's sha256 is {sha256}); \
             it was not overwritten. Two servers archiving to one policy (a split brain, or a \
             standby promoted without a new timeline) cause this: find out which server's WAL is \
             right before anything else, and give each server its own policy",
            other.key
        )));
    }
    let key = super::object_key(policy, &name, &sha256);
    let recipients = crypto::parse_recipients(recipients)?;
    let source = path.to_path_buf();
    let ((stored, digests), ()) = crate::sealed::store_sealed(
        repo,
        &key,
        &recipients,
        level,
        Arc::new(AtomicBool::new(false)),
        move |out| {
            let mut file = std::fs::File::open(&source)
                .map_err(|e| Error::io(format!("opening {}", source.display()), e))?;
            std::io::copy(&mut file, out)
                .map_err(|e| Error::io(format!("reading {}", source.display()), e))?;
            Ok(())
        },
    )
    .await?;
    if digests.plaintext_sha256 != sha256 {
        // PostgreSQL never rewrites a finished segment; if this one changed
        // under us the stored object does not match its key, so it goes.
        let _ = repo.store.delete(&key).await;
        return Err(Error::Integrity {
            object: path.display().to_string(),
            reason: "the file changed while it was archived; nothing was kept, and PostgreSQL will push it again".into(),
        });
    }
    crate::sealed::confirm(repo, &key, &stored, &digests).await?;
    Ok(Pushed::Stored {
        key,
        stored_bytes: digests.size,
    })
}
