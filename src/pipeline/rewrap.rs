//! A new age header over the same payload: how a key rotation retires a
//! recipient without decrypting or re-uploading the data.
//!
//! An age v1 file is a header and a payload. The header wraps one random
//! file key to each recipient (one stanza each) and ends with an HMAC of
//! itself under a key derived from the file key; the payload is encrypted
//! with another key derived from the file key and a nonce. So unwrapping
//! the file key with any matching identity, wrapping it to the new
//! recipients and MACing the new header gives a valid age file over the
//! very same payload bytes (see <https://age-encryption.org/v1>).
//!
//! What this does not do: make the removed recipient forget the file key.
//! Whoever kept an old copy of an object (or its header and an old
//! identity) can still read that copy, and the payload is the same. A
//! rotation stops the removed key from reading what the repository holds,
//! which is what retiring a leaked key needs when the bucket itself did
//! not leak; for a bucket that leaked too, only a new backup helps.

use age::secrecy::ExposeSecret;
use age_core::format::{FileKey, Stanza};
use base64::Engine;
use base64::prelude::BASE64_STANDARD_NO_PAD;
use hmac::{KeyInit, Mac};

use super::crypto::OpenError;
use super::hash::header_end;

const VERSION_LINE: &[u8] = b"age-encryption.org/v1\n";
const MAC_PREFIX: &[u8] = b"---";

/// A parsed age header.
struct Header {
    stanzas: Vec<Stanza>,
    /// Bytes the MAC covers: everything up to and including `---`.
    maced: usize,
    mac: Vec<u8>,
    /// The header's length, where the payload begins.
    size: usize,
}

fn bad(why: impl Into<String>) -> OpenError {
    OpenError::BadHeader(why.into())
}

fn parse(head: &[u8]) -> Result<Header, OpenError> {
    let size = header_end(head).ok_or_else(|| bad("no complete age header"))?;
    let header = &head[..size];
    let mut rest = header
        .strip_prefix(VERSION_LINE)
        .ok_or_else(|| bad("not an age v1 header"))?;
    let mut stanzas = Vec::new();
    while rest.starts_with(b"-> ") {
        let (after, stanza) = age_core::format::read::age_stanza(rest)
            .map_err(|_| bad("a recipient stanza does not parse"))?;
        stanzas.push(Stanza::from(stanza));
        rest = after;
    }
    let mac_line = rest
        .strip_prefix(b"--- ".as_slice())
        .and_then(|l| l.strip_suffix(b"\n"))
        .ok_or_else(|| bad("the header's MAC line does not parse"))?;
    let mac = BASE64_STANDARD_NO_PAD
        .decode(mac_line)
        .ok()
        .filter(|m| m.len() == 32)
        .ok_or_else(|| bad("the header's MAC is not 32 bytes of base64"))?;
    if stanzas.is_empty() {
        return Err(bad("the header has no recipient stanza"));
    }
    Ok(Header {
        stanzas,
        maced: size - rest.len() + MAC_PREFIX.len(),
        mac,
        size,
    })
}

fn header_mac(file_key: &FileKey) -> hmac::Hmac<sha2::Sha256> {
    let key = age_core::primitives::hkdf(&[], b"header", file_key.expose_secret());
    <hmac::Hmac<sha2::Sha256> as KeyInit>::new_from_slice(&key).expect("HMAC takes any key length")
}

/// The length of the age header at the start of `head`, which must hold
/// all of it.
///
/// # Errors
/// `BadHeader` when `head` does not begin with a complete age v1 header.
pub fn header_size(head: &[u8]) -> Result<usize, OpenError> {
    parse(head).map(|h| h.size)
}

/// A new header for the object that `head` begins with (it must hold the
/// whole header; the payload after it is not needed), wrapping the same
/// file key to `recipients`. Returns the new header and the old header's
/// length: the new object is the new header followed by the old object's
/// bytes from that offset.
///
/// # Errors
/// `NoMatchingKey` when no identity unwraps the file key; `BadHeader` when
/// the header does not parse or its MAC does not verify (a tampered header
/// is never rewrapped: that would bless it).
pub fn rewrap(
    head: &[u8],
    identities: &[age::x25519::Identity],
    recipients: &[age::x25519::Recipient],
) -> Result<(Vec<u8>, usize), OpenError> {
    let header = parse(head)?;
    let file_key = identities
        .iter()
        .find_map(|i| age::Identity::unwrap_stanzas(i, &header.stanzas))
        .ok_or(OpenError::NoMatchingKey)?
        .map_err(OpenError::from_age)?;
    let mut mac = header_mac(&file_key);
    mac.update(&head[..header.maced]);
    mac.verify_slice(&header.mac)
        .map_err(|_| bad("the header's MAC does not verify (tampered, or not this file key)"))?;

    let mut out = VERSION_LINE.to_vec();
    for r in recipients {
        let (stanzas, _labels) = age::Recipient::wrap_file_key(r, &file_key)
            .map_err(|e| bad(format!("cannot wrap the file key: {e}")))?;
        for s in stanzas {
            write_stanza(&mut out, &s);
        }
    }
    out.extend_from_slice(MAC_PREFIX);
    let mut mac = header_mac(&file_key);
    mac.update(&out);
    let tag = mac.finalize().into_bytes();
    out.push(b' ');
    out.extend_from_slice(BASE64_STANDARD_NO_PAD.encode(tag).as_bytes());
    out.push(b'\n');
    Ok((out, header.size))
}

/// `-> TAG ARGS…`, then the body in base64 lines of 64 columns, the last
/// one shorter (empty when the body fills its lines exactly), as the age
/// spec requires.
fn write_stanza(out: &mut Vec<u8>, s: &Stanza) {
    out.extend_from_slice(b"-> ");
    out.extend_from_slice(s.tag.as_bytes());
    for a in &s.args {
        out.push(b' ');
        out.extend_from_slice(a.as_bytes());
    }
    out.push(b'\n');
    let body = BASE64_STANDARD_NO_PAD.encode(&s.body);
    let mut lines = body.as_bytes().chunks(64).peekable();
    let mut last_full = true;
    while let Some(line) = lines.next() {
        out.extend_from_slice(line);
        out.push(b'\n');
        if lines.peek().is_none() {
            last_full = line.len() == 64;
        }
    }
    if last_full {
        out.push(b'\n');
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::{open_bytes, seal_bytes};

    fn key() -> (age::x25519::Identity, age::x25519::Recipient) {
        let id = age::x25519::Identity::generate();
        let r = id.to_public();
        (id, r)
    }

    #[test]
    fn the_new_header_opens_the_same_payload_for_the_new_keys_only() {
        let (old_id, old_r) = key();
        let (keep_id, keep_r) = key();
        let (new_id, new_r) = key();
        let data: Vec<u8> = (0..300_000u32).map(|i| (i * 13 % 251) as u8).collect();
        let (sealed, _) = seal_bytes(&[old_r, keep_r.clone()], 3, &data).unwrap();
        let (header, old_size) =
            rewrap(&sealed, std::slice::from_ref(&old_id), &[keep_r, new_r]).unwrap();
        assert_eq!(old_size, header_end(&sealed).unwrap());
        let mut rotated = header.clone();
        rotated.extend_from_slice(&sealed[old_size..]);
        for id in [&keep_id, &new_id] {
            let (plain, _) = open_bytes(std::slice::from_ref(id), &rotated).unwrap();
            assert_eq!(plain, data);
        }
        assert!(matches!(
            open_bytes(&[old_id], &rotated),
            Err(OpenError::NoMatchingKey)
        ));
        assert_eq!(header_size(&rotated).unwrap(), header.len());
    }

    #[test]
    fn no_identity_no_rewrap() {
        let (_, r) = key();
        let (other, _) = key();
        let (sealed, _) = seal_bytes(std::slice::from_ref(&r), 3, b"x").unwrap();
        assert!(matches!(
            rewrap(&sealed, &[other], &[r]),
            Err(OpenError::NoMatchingKey)
        ));
    }

    #[test]
    fn a_tampered_header_is_not_blessed() {
        let (id, r) = key();
        let (_, r2) = key();
        let (sealed, _) = seal_bytes(&[r.clone(), r2], 3, b"hello").unwrap();
        // Drop one stanza at a time: the rest still unwraps with `id`, but
        // the MAC covers the header as it was written.
        let end = header_end(&sealed).unwrap();
        let text = String::from_utf8(sealed[..end].to_vec()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        let starts: Vec<usize> = (0..lines.len())
            .filter(|&i| lines[i].starts_with("-> "))
            .collect();
        let mut macs_refused = 0;
        for (n, &at) in starts.iter().enumerate() {
            let until = starts.get(n + 1).copied().unwrap_or(lines.len() - 1);
            let kept: Vec<&str> = lines[..at].iter().chain(&lines[until..]).copied().collect();
            let mut tampered = (kept.join("\n") + "\n").into_bytes();
            tampered.extend_from_slice(&sealed[end..]);
            match rewrap(
                &tampered,
                std::slice::from_ref(&id),
                std::slice::from_ref(&r),
            ) {
                Err(OpenError::NoMatchingKey) => {}
                Err(e) if e.to_string().contains("MAC does not verify") => macs_refused += 1,
                other => panic!("dropping stanza {n}: {:?}", other.map(|_| ())),
            }
        }
        assert!(macs_refused >= 1);
    }

    #[test]
    fn stanza_bodies_are_wrapped_at_64_columns() {
        for len in [0usize, 1, 47, 48, 49, 96, 200] {
            let s = Stanza {
                tag: "t".into(),
                args: vec!["a".into()],
                body: vec![7; len],
            };
            let mut out = Vec::new();
            write_stanza(&mut out, &s);
            let (rest, parsed) = age_core::format::read::age_stanza(&out).unwrap();
            assert!(rest.is_empty(), "len {len}");
            assert_eq!(Stanza::from(parsed).body, vec![7; len], "len {len}");
        }
    }
}
