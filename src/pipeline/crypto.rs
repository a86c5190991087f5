//! Keys: generating an X25519 identity, reading identity files and public
//! recipients, and telling "wrong key" apart from "damaged data".

use std::path::Path;
use std::str::FromStr;

use age::secrecy::ExposeSecret;

use crate::error::{Error, Result};

/// Why a sealed object could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("no identity matches any recipient of this object (wrong identity file?)")]
    NoMatchingKey,
    #[error("not an age-encrypted object, or its header is damaged: {0}")]
    BadHeader(String),
    #[error("{0}")]
    Io(std::io::Error),
}

impl OpenError {
    pub fn from_age(e: age::DecryptError) -> Self {
        match e {
            age::DecryptError::NoMatchingKeys => OpenError::NoMatchingKey,
            age::DecryptError::Io(io) => OpenError::Io(io),
            other => OpenError::BadHeader(other.to_string()),
        }
    }
}

/// A new identity: the secret file contents and the public recipient.
pub fn generate() -> (String, String) {
    let id = age::x25519::Identity::generate();
    let public = id.to_public().to_string();
    let secret = format!(
        "# created: {}\n# public key: {public}\n{}\n",
        chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        id.to_string().expose_secret()
    );
    (secret, public)
}

/// Parses public keys (validated already by the config loader).
///
/// # Errors
/// A key that is not an X25519 recipient.
pub fn parse_recipients(keys: &[String]) -> Result<Vec<age::x25519::Recipient>> {
    keys.iter()
        .map(|k| {
            age::x25519::Recipient::from_str(k)
                .map_err(|e| Error::Key(format!("recipient `{k}`: {e}")))
        })
        .collect()
}

/// Reads an identity file in age's format (comments and `AGE-SECRET-KEY-1…`
/// lines).
///
/// # Errors
/// A missing or unreadable file, or one with no X25519 identity in it.
pub fn read_identities(path: Option<&Path>) -> Result<Vec<age::x25519::Identity>> {
    let path = path.ok_or_else(|| {
        Error::Key("no identity file configured; set `encryption.identity_file` in drctl.toml or pass --identity".into())
    })?;
    let raw = std::fs::read(path)
        .map_err(|e| Error::Key(format!("cannot read identity file {}: {e}", path.display())))?;
    // age's own format for a passphrase-protected identity: binary or armored.
    if raw.starts_with(b"age-encryption.org/")
        || raw.starts_with(b"-----BEGIN AGE ENCRYPTED FILE-----")
    {
        return Err(Error::Key(format!(
            "identity file {} is encrypted (a passphrase-protected age identity), which drctl cannot prompt for; \
             decrypt it onto a protected path with `age --decrypt -o FILE {}` (mode 0600) and point --identity at that",
            path.display(),
            path.display()
        )));
    }
    let text = String::from_utf8(raw).map_err(|_| {
        Error::Key(format!(
            "identity file {} is not text; expected `AGE-SECRET-KEY-1…` lines as written by `drctl key generate` or `age-keygen`",
            path.display()
        ))
    })?;
    warn_if_readable_by_others(path);
    let ids: Vec<age::x25519::Identity> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            age::x25519::Identity::from_str(l).map_err(|e| {
                Error::Key(format!(
                    "identity file {}: a line is not an age secret key: {e}",
                    path.display()
                ))
            })
        })
        .collect::<Result<_>>()?;
    if ids.is_empty() {
        return Err(Error::Key(format!(
            "identity file {} holds no AGE-SECRET-KEY-1… line",
            path.display()
        )));
    }
    Ok(ids)
}

/// The secret key decrypts every backup: a file other users can read is
/// worth a warning (as libpq gives for a pgpass file), though not a refusal
/// at 3 a.m. when it is the only copy of the key.
fn warn_if_readable_by_others(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = std::fs::metadata(path)
        && meta.permissions().mode() & 0o077 != 0
    {
        tracing::warn!(event = "identity_file_readable",
            path = %path.display(),
            mode = format!("{:04o}", meta.permissions().mode() & 0o7777),
            "The identity file can be read by other users; it decrypts every backup, so run `chmod 600` on it."
        );
    }
}

/// A short, stable fingerprint of a public key for reports and messages.
pub fn recipient_fingerprint(recipient: &str) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(&Sha256::digest(recipient.as_bytes())[..8])
}
