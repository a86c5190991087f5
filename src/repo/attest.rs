//! Attestations: how a repository written before signing was turned on
//! joins a signed one without rewriting anything. `drctl sign --existing`
//! lists every unsigned manifest, record, mark and `repo.json` with the
//! SHA-256 of its exact bytes, and stores that list as one signed object
//! under `attestations/`. A reader with signing on accepts an unsigned
//! object when a trusted attestation names its key with that digest: the
//! object is then exactly what the operator vouched for.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::Repo;
use crate::error::{Error, Result};
use crate::storage::PutMode;

pub const PREFIX: &str = "attestations/";

/// Where every object an attestation may vouch for lives: the objects
/// drctl writes in the clear and reads as evidence.
pub const SIGNED_PREFIXES: [&str; 4] = ["backups/", "drills/", "runs/", "marks/"];

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Attestation {
    pub format: u32,
    pub created_at: DateTime<Utc>,
    pub host: String,
    pub tool_version: String,
    pub objects: Vec<Attested>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Attested {
    pub key: String,
    pub sha256: String,
}

/// SHA-256 of an object's exact bytes, lowercase hex.
pub fn digest(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Every trusted attestation's `key → sha256`, and a warning for each
/// attestation that is not trusted (it vouches for nothing).
///
/// # Errors
/// Storage errors from listing or reading.
pub async fn load(repo: &Repo) -> Result<(HashMap<String, String>, Vec<String>)> {
    let mut vouched = HashMap::new();
    let mut warnings = Vec::new();
    let Some(signing) = &repo.signing else {
        return Ok((vouched, warnings));
    };
    for (key, bytes) in super::read_json_objects(repo, PREFIX).await? {
        if let Err(why) = crate::signing::verify(&signing.trusted, &key, &bytes) {
            warnings.push(crate::signing::untrusted_message(&key, &why));
            continue;
        }
        match serde_json::from_slice::<Attestation>(&bytes) {
            Ok(a) => vouched.extend(a.objects.into_iter().map(|o| (o.key, o.sha256))),
            Err(e) => warnings.push(format!(
                "`{key}` is not a readable attestation ({e}); it vouches for nothing"
            )),
        }
    }
    Ok((vouched, warnings))
}

/// What `sign --existing` found.
#[derive(Debug, Default, Serialize)]
pub struct Survey {
    /// Unsigned objects, to vouch for.
    pub unsigned: Vec<Attested>,
    /// Objects signed by a key not trusted, or whose signature does not
    /// match: never vouched for, named instead.
    pub refused: Vec<String>,
    /// Objects already signed by a trusted key or vouched for.
    pub trusted: usize,
}

/// Reads every object an attestation may vouch for and sorts it.
///
/// # Errors
/// Storage errors.
pub async fn survey(repo: &Repo) -> Result<Survey> {
    let mut survey = Survey::default();
    let mut objects = vec![(super::MARKER_KEY.to_string(), repo.marker_bytes.clone())];
    for prefix in SIGNED_PREFIXES {
        for (key, bytes) in super::read_json_objects(repo, prefix).await? {
            if prefix != "backups/" || key.ends_with("/manifest.json") {
                objects.push((key, bytes));
            }
        }
    }
    for (key, bytes) in objects {
        match repo.check_signature(&key, &bytes) {
            Ok(()) => survey.trusted += 1,
            // Vouched for before with other bytes: altered since, and
            // never vouched for again (a second run must not approve an
            // edit of what the first one reviewed).
            Err(_)
                if repo
                    .attested
                    .get(&key)
                    .is_some_and(|d| *d != digest(&bytes)) =>
            {
                survey.refused.push(format!(
                    "`{key}` was vouched for by an attestation with other content (sha256 {}); \
                     it has been altered since and is not vouched for again",
                    repo.attested[&key]
                ))
            }
            Err(_) if !crate::signing::is_signed(&bytes) => survey.unsigned.push(Attested {
                sha256: digest(&bytes),
                key,
            }),
            Err(why) => survey.refused.push(why),
        }
    }
    Ok(survey)
}

/// Stores a signed attestation of `objects`; returns its key.
///
/// # Errors
/// `Key` without a signing key; storage errors.
pub async fn write(repo: &Repo, objects: Vec<Attested>) -> Result<String> {
    if repo.signing.as_ref().and_then(|s| s.key.as_ref()).is_none() {
        return Err(Error::Key(
            "`drctl sign --existing` needs `[signing] key_file`: run it on a host that writes backups".into(),
        ));
    }
    let now = Utc::now();
    let key = format!(
        "{PREFIX}{}-{:08x}.json",
        now.format("%Y%m%dT%H%M%S%3fZ"),
        rand::random::<u32>()
    );
    let body = serde_json::to_vec_pretty(&Attestation {
        format: 1,
        created_at: now,
        host: gethostname::gethostname().to_string_lossy().into_owned(),
        tool_version: env!("CARGO_PKG_VERSION").to_string(),
        objects,
    })
    .expect("an attestation serialises");
    repo.store
        .put(&key, repo.sign(&key, body)?, PutMode::Create)
        .await?;
    Ok(key)
}
