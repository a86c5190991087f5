//! `drctl wal-fetch POLICY %f %p`: PostgreSQL's `restore_command`.
//!
//! PostgreSQL asks for files that were never archived (the segment after
//! the last one, `.history` files of timelines that do not exist) and takes
//! a non-zero exit as "not there": recovery then ends, or with no target,
//! promotes onto a new timeline. So "not in the archive" is told apart from
//! every other failure, which must stop recovery instead: the caller exits
//! 1 for the first and above 125 for the rest (see `cli::wal`).

use std::io::Write;
use std::path::{Path, PathBuf};

use super::WalName;
use crate::error::{Error, Result};
use crate::progress::Meter;
use crate::repo::Repo;

/// What a fetch found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fetched {
    /// Written to the destination: the key it came from and its size.
    Restored { key: String, bytes: u64 },
    /// The archive holds no such file: a definite answer from the store.
    NotArchived,
}

/// The key `name` is archived under, if it is.
///
/// # Errors
/// Storage errors; `Integrity` when two different contents are archived
/// under the name, since choosing one would be a guess.
pub async fn locate(repo: &Repo, policy: &str, name: &WalName) -> Result<Option<String>> {
    let keys: Vec<String> = repo
        .store
        .list(&super::name_prefix(policy, name))
        .await?
        .into_iter()
        .map(|o| o.key)
        .filter(|k| super::parse_key(policy, k).is_some_and(|(n, _)| &n == name))
        .collect();
    match keys.as_slice() {
        [] => Ok(None),
        [one] => Ok(Some(one.clone())),
        many => Err(Error::Integrity {
            object: format!(
                "{}/{}",
                repo.store.location(),
                super::name_prefix(policy, name)
            ),
            reason: format!(
                "{name} is archived with {} different contents ({}); drctl will not guess which \
                 one recovery should replay. Find out which server wrote which, delete the wrong \
                 objects, and run recovery again",
                many.len(),
                many.join(", ")
            ),
        }),
    }
}

/// Writes the archived file `name` to `dest`, atomically: into a temporary
/// file beside it, synced, then renamed, so PostgreSQL never reads a part.
///
/// # Errors
/// `Usage` for a name that is not a WAL file name; `Integrity` for an
/// object that fails authentication or whose content does not match the
/// digest in its key; `Key` for an identity that matches no recipient;
/// storage and I/O errors.
pub async fn fetch(
    repo: &Repo,
    identities: &[age::x25519::Identity],
    policy: &str,
    name: &str,
    dest: &Path,
) -> Result<Fetched> {
    let name = WalName::parse(name).map_err(Error::Usage)?;
    let Some(key) = locate(repo, policy, &name).await? else {
        return Ok(Fetched::NotArchived);
    };
    let bytes = fetch_key(repo, identities, policy, &key, dest).await?;
    Ok(Fetched::Restored { key, bytes })
}

/// Writes the WAL object at `key` to `dest` as [`fetch`] does, and says
/// how many bytes it has.
///
/// # Errors
/// As [`fetch`].
pub async fn fetch_key(
    repo: &Repo,
    identities: &[age::x25519::Identity],
    policy: &str,
    key: &str,
    dest: &Path,
) -> Result<u64> {
    let key = key.to_string();
    let (_, expected) = super::parse_key(policy, &key)
        .ok_or_else(|| Error::Usage(format!("`{key}` is not a WAL key of policy `{policy}`")))?;
    let expected = expected.to_string();
    let partial = partial_path(dest);
    let file = std::fs::File::options()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&partial)
        .map_err(|e| Error::io(format!("creating {}", partial.display()), e))?;
    let object = format!("{}/{key}", repo.store.location());
    let what = partial.display().to_string();
    let result =
        crate::sealed::stream_plaintext(repo, identities, &key, None, Meter::default(), move |r| {
            let mut file = file;
            std::io::copy(r, &mut file).map_err(|e| Error::Integrity {
                object: String::new(),
                reason: format!("{e} (while writing {what})"),
            })?;
            file.flush()
                .and_then(|()| file.sync_all())
                .map_err(|e| Error::io(format!("syncing {what}"), e))
        })
        .await
        .map_err(|e| match e {
            Error::Integrity { object: o, reason } if o.is_empty() => Error::Integrity {
                object: object.clone(),
                reason,
            },
            other => other,
        });
    let digests = match result {
        Ok(((), digests)) => digests,
        Err(e) => {
            let _ = std::fs::remove_file(&partial);
            return Err(e);
        }
    };
    if digests.plaintext_sha256 != expected {
        let _ = std::fs::remove_file(&partial);
        return Err(Error::Integrity {
            object,
            reason: "the decrypted WAL does not match the sha256 in its key".into(),
        });
    }
    std::fs::rename(&partial, dest).map_err(|e| {
        Error::io(
            format!("renaming {} to {}", partial.display(), dest.display()),
            e,
        )
    })?;
    Ok(digests.plaintext_size)
}

/// `pg_wal/.RECOVERYXLOG.drctl-partial` for `pg_wal/RECOVERYXLOG`: hidden,
/// and in the same directory so that the rename is atomic.
pub(super) fn partial_path(dest: &Path) -> PathBuf {
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    dest.with_file_name(format!(".{name}.drctl-partial"))
}

/// The plaintext of a small archived file (a `.history` file), in memory,
/// checked against the digest in its key.
///
/// # Errors
/// As [`fetch`]; `Integrity` when the plaintext does not match its key.
pub async fn read(
    repo: &Repo,
    identities: &[age::x25519::Identity],
    policy: &str,
    name: &WalName,
) -> Result<Option<Vec<u8>>> {
    let Some(key) = locate(repo, policy, name).await? else {
        return Ok(None);
    };
    let (_, expected) = super::parse_key(policy, &key).expect("located keys parse");
    let expected = expected.to_string();
    let object = format!("{}/{key}", repo.store.location());
    let (bytes, digests) =
        crate::sealed::stream_plaintext(repo, identities, &key, None, Meter::default(), |r| {
            let mut buf = Vec::new();
            std::io::Read::read_to_end(r, &mut buf).map_err(|e| Error::Integrity {
                object: String::new(),
                reason: e.to_string(),
            })?;
            Ok(buf)
        })
        .await
        .map_err(|e| match e {
            Error::Integrity { object: o, reason } if o.is_empty() => Error::Integrity {
                object: object.clone(),
                reason,
            },
            other => other,
        })?;
    if digests.plaintext_sha256 != expected {
        return Err(Error::Integrity {
            object,
            reason: "the decrypted file does not match the sha256 in its key".into(),
        });
    }
    Ok(Some(bytes))
}
