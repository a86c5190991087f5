//! Signatures on what drctl stores in the clear: manifests, drill records,
//! run records, marks and `repo.json`. Anyone who can write to the bucket
//! knows the public recipients and could otherwise plant a backup of their
//! own; with `[signing]` a reader accepts only objects signed by a key it
//! pins in drctl.toml.
//!
//! The signature is embedded as the object's last JSON member, so the
//! object stays plain JSON that `jq` and older readers read unchanged:
//!
//! ```text
//! body   = the pretty-printed JSON object, ending "\n}"
//! stored = body without its final "\n}" + ",\n  \"signature\": \"<public key> <signature>\"\n}"
//! signed = "drctl-signature-v1\n" + <object key> + "\n" + body
//! ```
//!
//! The verifier cuts the exact stored bytes back to `body` (no JSON is
//! re-serialised) and insists that what follows the cut is exactly that
//! one member, so the stored bytes are fully determined by what was
//! signed. The object key in the signed bytes binds a signature to where
//! it was written: a signed manifest moved to another policy's or
//! backup's key no longer verifies.

use std::fmt;
use std::path::Path;
use std::str::FromStr;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};

use crate::error::{Error, Result};

/// How a public signing key is written: in `[signing] trusted`, in the
/// output of `drctl key generate --signing`, and inside every signature.
pub const PUBLIC_PREFIX: &str = "drctl-ed25519:";
/// The one line of a signing key file that holds the secret seed.
const SECRET_PREFIX: &str = "DRCTL-ED25519-SECRET-KEY:";
/// Domain separation: these bytes are never signed for anything else.
const CONTEXT: &[u8] = b"drctl-signature-v1\n";
/// What stands between the body and the signature text in a stored object.
const MEMBER: &[u8] = b",\n  \"signature\": \"";
const END: &[u8] = b"\"\n}";

/// A public key readers trust: `drctl-ed25519:<base64 of 32 bytes>`.
#[derive(Clone, PartialEq, Eq)]
pub struct PublicKey(VerifyingKey);

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{PUBLIC_PREFIX}{}", STANDARD.encode(self.0.as_bytes()))
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")
    }
}

impl FromStr for PublicKey {
    type Err = String;

    fn from_str(text: &str) -> std::result::Result<Self, String> {
        let b64 = text.strip_prefix(PUBLIC_PREFIX).ok_or_else(|| {
            format!("`{text}` is not a drctl signing public key: it must start with `{PUBLIC_PREFIX}` (as `drctl key generate --signing` prints it)")
        })?;
        let bytes: [u8; 32] = STANDARD
            .decode(b64)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| {
                format!("`{text}`: after `{PUBLIC_PREFIX}` expected the base64 of 32 bytes")
            })?;
        VerifyingKey::from_bytes(&bytes)
            .map(PublicKey)
            .map_err(|_| format!("`{text}` is not a valid ed25519 public key"))
    }
}

/// A secret signing key, read from its file. Never stored in the bucket.
pub struct SecretKey(SigningKey);

impl SecretKey {
    /// A fresh key from the operating system's random number generator.
    ///
    /// # Errors
    /// `Key` when the OS cannot supply randomness.
    pub fn generate() -> Result<SecretKey> {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed)
            .map_err(|e| Error::Key(format!("the OS random number generator failed: {e}")))?;
        Ok(SecretKey(SigningKey::from_bytes(&seed)))
    }

    pub fn public(&self) -> PublicKey {
        PublicKey(self.0.verifying_key())
    }

    /// The key file's text: comments, then the secret line.
    pub fn to_file_text(&self, created: chrono::DateTime<chrono::Utc>) -> String {
        format!(
            "# drctl signing key (ed25519), created {}\n# public key: {}\n{SECRET_PREFIX}{}\n",
            created.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            self.public(),
            STANDARD.encode(self.0.to_bytes())
        )
    }

    /// Parses a key file's text (`#` comment lines and one secret line).
    ///
    /// # Errors
    /// A sentence saying what is wrong with the text.
    pub fn from_file_text(text: &str) -> std::result::Result<SecretKey, String> {
        let mut lines = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'));
        let line = lines
            .next()
            .ok_or_else(|| format!("it holds no {SECRET_PREFIX}… line"))?;
        if lines.next().is_some() {
            return Err(format!("it holds more than one {SECRET_PREFIX}… line"));
        }
        let b64 = line.strip_prefix(SECRET_PREFIX).ok_or_else(|| {
            if line.starts_with("AGE-SECRET-KEY-") {
                "it is an age identity (for decryption), not a signing key; make one with `drctl key generate --signing --out FILE`".to_string()
            } else {
                format!("expected a {SECRET_PREFIX}… line")
            }
        })?;
        let seed: [u8; 32] = STANDARD
            .decode(b64)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| format!("after {SECRET_PREFIX} expected the base64 of 32 bytes"))?;
        Ok(SecretKey(SigningKey::from_bytes(&seed)))
    }

    /// Reads a key file, warning when other users can read it.
    ///
    /// # Errors
    /// `Key` naming the file when it cannot be read or is not a signing key.
    pub fn read(path: &Path) -> Result<SecretKey> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            Error::Key(format!(
                "cannot read the signing key file {}: {e}",
                path.display()
            ))
        })?;
        SecretKey::from_file_text(&text).map_err(|reason| {
            Error::Key(format!(
                "signing key file {} is not usable: {reason}",
                path.display()
            ))
        })
    }
}

/// The warning for a signing key file other users can read.
pub fn key_file_warning(path: &Path) -> Option<String> {
    readable_by_others(path).map(|mode| format!(
        "the signing key file {} has mode {mode}: other users can read it, and whoever reads it can sign backups every reader trusts; run `chmod 600 {}`",
        path.display(),
        path.display()
    ))
}

/// The file's mode when group or others may read it.
pub fn readable_by_others(path: &Path) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path).ok()?.permissions().mode();
    (mode & 0o077 != 0).then(|| format!("{:04o}", mode & 0o7777))
}

/// Why an object is not accepted as written by a trusted writer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Untrusted {
    /// No signature member at all (written without `[signing]`, or planted).
    Missing,
    /// Signed, but by a key not in `[signing] trusted`.
    UnknownKey(String),
    /// The signature does not match these bytes at this key.
    Bad,
    /// The object's key holds control characters, which drctl never
    /// writes: a newline would let a key borrow the start of a signed body.
    ControlInKey,
}

impl fmt::Display for Untrusted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Untrusted::Missing => write!(f, "it has no signature"),
            Untrusted::UnknownKey(k) => {
                write!(
                    f,
                    "it is signed by {k}, which is not in `[signing] trusted`"
                )
            }
            Untrusted::Bad => write!(
                f,
                "its signature does not match its contents at this key (altered, or copied from elsewhere)"
            ),
            Untrusted::ControlInKey => write!(
                f,
                "its key holds control characters, which drctl never writes"
            ),
        }
    }
}

/// How every message about an untrusted object starts, so that records
/// carrying one (as their parse error) can be told from damaged ones.
pub const UNTRUSTED: &str = "security: ";

/// `security: `KEY` ignored: <why>`.
pub fn untrusted_message(key: &str, why: &Untrusted) -> String {
    format!("{UNTRUSTED}`{}` is ignored: {why}", printable(key))
}

/// Text from someone who can write to the repository (an object key, a
/// claimed public key), made safe for a terminal and a log line: control
/// characters escaped, at most 200 characters.
pub fn printable(text: &str) -> String {
    const MAX: usize = 200;
    let mut out = String::new();
    for (i, c) in text.chars().enumerate() {
        if i == MAX {
            out.push('…');
            break;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

fn signed_message(object_key: &str, body: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(CONTEXT.len() + object_key.len() + 1 + body.len());
    m.extend_from_slice(CONTEXT);
    m.extend_from_slice(object_key.as_bytes());
    m.push(b'\n');
    m.extend_from_slice(body);
    m
}

/// Signs `body` (a pretty-printed JSON object, as `serde_json::to_vec_pretty`
/// writes it) for storage at `object_key` and returns the bytes to store.
///
/// # Panics
/// When `body` does not end with `\n}`: every caller passes pretty JSON of
/// a non-empty struct.
pub fn sign(key: &SecretKey, object_key: &str, body: &[u8]) -> Vec<u8> {
    assert!(
        body.ends_with(b"\n}"),
        "signed bodies are pretty JSON objects"
    );
    let signature = key.0.sign(&signed_message(object_key, body));
    let mut stored = Vec::with_capacity(body.len() + 160);
    stored.extend_from_slice(&body[..body.len() - 2]);
    stored.extend_from_slice(MEMBER);
    stored.extend_from_slice(key.public().to_string().as_bytes());
    stored.push(b' ');
    stored.extend_from_slice(STANDARD.encode(signature.to_bytes()).as_bytes());
    stored.extend_from_slice(END);
    stored
}

/// A stored object cut into its signed body and its signature member.
struct Parts<'a> {
    head: &'a [u8],
    public: &'a str,
    signature: &'a str,
}

impl Parts<'_> {
    fn body(&self) -> Vec<u8> {
        let mut body = Vec::with_capacity(self.head.len() + 2);
        body.extend_from_slice(self.head);
        body.extend_from_slice(b"\n}");
        body
    }
}

/// Finds the signature member, if the object ends with exactly one.
fn split(stored: &[u8]) -> Option<Parts<'_>> {
    let inner = stored.strip_suffix(END)?;
    let at = inner.windows(MEMBER.len()).rposition(|w| w == MEMBER)?;
    let text = std::str::from_utf8(&inner[at + MEMBER.len()..]).ok()?;
    // Base64 and the key prefix only: no quote, backslash or newline can
    // hide another member after the signature.
    if !text
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"+/=:- ".contains(&b))
    {
        return None;
    }
    let (public, signature) = text.split_once(' ')?;
    Some(Parts {
        head: &inner[..at],
        public,
        signature,
    })
}

/// Checks the signature of `stored`, read from `object_key`, against the
/// trusted keys, and returns the signed body (what to parse).
///
/// # Errors
/// Why the object cannot be trusted.
pub fn verify(
    trusted: &[PublicKey],
    object_key: &str,
    stored: &[u8],
) -> std::result::Result<Vec<u8>, Untrusted> {
    if object_key.chars().any(char::is_control) {
        return Err(Untrusted::ControlInKey);
    }
    let parts = split(stored).ok_or(Untrusted::Missing)?;
    let public: PublicKey = parts
        .public
        .parse()
        .map_err(|_| Untrusted::UnknownKey(printable(parts.public)))?;
    if !trusted.contains(&public) {
        return Err(Untrusted::UnknownKey(public.to_string()));
    }
    let signature: [u8; 64] = STANDARD
        .decode(parts.signature)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or(Untrusted::Bad)?;
    let body = parts.body();
    public
        .0
        .verify(
            &signed_message(object_key, &body),
            &Signature::from_bytes(&signature),
        )
        .map_err(|_| Untrusted::Bad)?;
    Ok(body)
}

/// Whether the object carries a signature member (checked or not): how an
/// unsigned installation tells a signed repository from an unsigned one.
pub fn is_signed(stored: &[u8]) -> bool {
    split(stored).is_some()
}

/// `[signing]` of drctl.toml, with the key read: what a repository needs to
/// sign what it writes and to check what it reads.
pub struct Signing {
    /// Present on hosts that write (backup, drill, mark, init).
    pub key: Option<SecretKey>,
    /// What readers accept; pinned in drctl.toml, never read from the bucket.
    pub trusted: Vec<PublicKey>,
}

impl Signing {
    /// Reads the key file, if one is configured, and checks that its public
    /// half is trusted (otherwise this host would write what it then
    /// ignores).
    ///
    /// # Errors
    /// `Key` for an unreadable or malformed key file or an untrusted key.
    pub fn load(config: &crate::config::SigningConfig) -> Result<Signing> {
        if let Some(warning) = config.key_file.as_deref().and_then(key_file_warning) {
            tracing::warn!(event = "attestation_warning", "{warning}");
        }
        Signing::load_quietly(config)
    }

    /// [`Signing::load`] without the warning about the key file's mode, for
    /// `drctl check`, which lists its warnings itself.
    ///
    /// # Errors
    /// As [`Signing::load`].
    pub fn load_quietly(config: &crate::config::SigningConfig) -> Result<Signing> {
        let key = match &config.key_file {
            None => None,
            Some(path) => {
                let key = SecretKey::read(path)?;
                if !config.trusted.contains(&key.public()) {
                    return Err(Error::Key(format!(
                        "the public half of the signing key {} ({}) is not in `[signing] trusted`; add it there, or this host would write backups it then ignores",
                        path.display(),
                        key.public()
                    )));
                }
                Some(key)
            }
        };
        Ok(Signing {
            key,
            trusted: config.trusted.clone(),
        })
    }
}

/// The loaded `[signing]` of a configuration, if it has one.
///
/// # Errors
/// As [`Signing::load`].
pub fn for_config(config: &crate::config::Config) -> Result<Option<std::sync::Arc<Signing>>> {
    config
        .signing
        .as_ref()
        .map(|s| Signing::load(s).map(std::sync::Arc::new))
        .transpose()
}

/// What an installation without `[signing]` says about its repository.
pub fn unsigned_warning(repo: &crate::repo::Repo) -> String {
    let signed = if repo.marker_is_signed() {
        " (its repo.json is signed, but drctl.toml has no [signing] to check it with)"
    } else {
        ""
    };
    format!(
        "unsigned mode: drctl.toml has no [signing]{signed}, so anyone who can write to {} can plant a backup that drctl would list and restore; see \"Signing\" in docs/operations.md",
        repo.store.location()
    )
}

#[cfg(test)]
mod tests {

    #[test]
    fn text_from_the_repository_is_printable() {
        assert_eq!(printable("a\u{1b}[2Jb\nc"), "a\\u{1b}[2Jb\\nc");
        assert_eq!(printable(&"x".repeat(500)).chars().count(), 201);
    }

    #[test]
    fn a_key_with_a_newline_is_never_trusted() {
        let key = SecretKey::generate().unwrap();
        let stored = sign(&key, "backups/p/1/manifest.json", b"{\n  \"a\": 1\n}");
        let trusted = [key.public()];
        assert!(verify(&trusted, "backups/p/1/manifest.json", &stored).is_ok());
        assert!(matches!(
            verify(&trusted, "backups/p/1/manifest.json\n", &stored),
            Err(Untrusted::ControlInKey)
        ));
    }
    use super::*;

    fn key() -> SecretKey {
        SecretKey::generate().unwrap()
    }

    const BODY: &[u8] =
        b"{\n  \"format\": 1,\n  \"id\": \"x\",\n  \"point_in_time\": \"2026-11-27T01:35:04Z\"\n}";

    #[test]
    fn a_signed_object_is_plain_json_and_verifies_at_its_key() {
        let k = key();
        let stored = sign(&k, "backups/a/x/manifest.json", BODY);
        let v: serde_json::Value = serde_json::from_slice(&stored).unwrap();
        assert_eq!(v["id"], "x");
        assert!(
            v["signature"]
                .as_str()
                .unwrap()
                .starts_with(&k.public().to_string())
        );
        let body = verify(&[k.public()], "backups/a/x/manifest.json", &stored).unwrap();
        assert_eq!(body, BODY);
        assert!(is_signed(&stored));
        assert!(!is_signed(BODY));
    }

    #[test]
    fn any_changed_byte_or_another_key_fails() {
        let k = key();
        let stored = sign(&k, "backups/a/x/manifest.json", BODY);
        for i in 0..stored.len() {
            let mut bad = stored.clone();
            bad[i] ^= 0x01;
            assert!(
                verify(&[k.public()], "backups/a/x/manifest.json", &bad).is_err(),
                "flipping byte {i} went unnoticed"
            );
        }
        assert_eq!(
            verify(&[k.public()], "backups/b/x/manifest.json", &stored),
            Err(Untrusted::Bad),
            "a signature binds the object key"
        );
        let mut appended = stored.clone();
        appended.extend_from_slice(b"\n");
        assert_eq!(
            verify(&[k.public()], "backups/a/x/manifest.json", &appended),
            Err(Untrusted::Missing)
        );
    }

    #[test]
    fn unsigned_and_unknown_signers_are_named() {
        let trusted = key();
        let other = key();
        assert_eq!(
            verify(&[trusted.public()], "k", BODY),
            Err(Untrusted::Missing)
        );
        let stored = sign(&other, "k", BODY);
        assert_eq!(
            verify(&[trusted.public()], "k", &stored),
            Err(Untrusted::UnknownKey(other.public().to_string()))
        );
        assert!(
            verify(&[trusted.public(), other.public()], "k", &stored).is_ok(),
            "any trusted key will do"
        );
    }

    #[test]
    fn a_second_signature_member_cannot_hide_a_change() {
        // Someone appends their own member after a valid signature: the
        // object must end with exactly one signature member, so the old
        // signature no longer matches anything.
        let k = key();
        let stored = sign(&k, "k", BODY);
        let mut forged = stored[..stored.len() - 2].to_vec();
        forged.extend_from_slice(b",\n  \"point_in_time\": \"2030-01-01T00:00:00Z\"\n}");
        assert!(verify(&[k.public()], "k", &forged).is_err());
    }

    #[test]
    fn key_texts_round_trip_and_bad_ones_are_explained() {
        let k = key();
        let text = k.to_file_text(chrono::Utc::now());
        let again = SecretKey::from_file_text(&text).unwrap();
        assert_eq!(again.public(), k.public());
        let public = k.public().to_string();
        assert!(public.starts_with("drctl-ed25519:") && public.len() == 14 + 44);
        assert_eq!(public.parse::<PublicKey>().unwrap(), k.public());
        assert!(
            "age1xyz"
                .parse::<PublicKey>()
                .unwrap_err()
                .contains("must start with `drctl-ed25519:`")
        );
        assert!(
            "drctl-ed25519:AAAA"
                .parse::<PublicKey>()
                .unwrap_err()
                .contains("32 bytes")
        );
        assert!(
            SecretKey::from_file_text("AGE-SECRET-KEY-1XYZ\n")
                .err()
                .unwrap()
                .contains("age identity")
        );
        assert!(
            SecretKey::from_file_text("# nothing\n")
                .err()
                .unwrap()
                .contains("no DRCTL-ED25519-SECRET-KEY")
        );
    }
}

#[cfg(test)]
mod timing {
    /// Not a test of speed (that is scripts/bench-signing.sh): prints what
    /// one check costs here, for the benchmark notes.
    #[test]
    #[ignore = "prints a timing"]
    fn time_one_verify() {
        let k = super::SecretKey::generate().unwrap();
        let body = serde_json::to_vec_pretty(&serde_json::json!({"a": "x".repeat(1400)})).unwrap();
        let stored = super::sign(&k, "k", &body);
        let n = 2000;
        let t = std::time::Instant::now();
        for _ in 0..n {
            super::verify(&[k.public()], "k", &stored).unwrap();
        }
        eprintln!("verify: {:?} each", t.elapsed() / n);
        let t = std::time::Instant::now();
        for _ in 0..n {
            super::sign(&k, "k", &body);
        }
        eprintln!("sign: {:?} each", t.elapsed() / n);
    }
}
