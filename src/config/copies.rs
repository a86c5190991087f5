//! `[[copies]]`: second repositories (another bucket, region, account or
//! provider, or a local directory) that `drctl copy` fills with the
//! primary's backups, as they are, for the 3-2-1 rule.

use std::path::Path;

use super::raw::{RawCopy, RawRepository};
use super::{Config, Ctx, RepositoryConfig, Retention};
use crate::error::{Error, Result};

/// One `[[copies]]` entry, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyConfig {
    /// How commands name it: `copy --to NAME`, `list --repo NAME`.
    pub name: String,
    pub repository: RepositoryConfig,
    /// The daemon copies each new backup here as soon as it is written.
    pub after_backup: bool,
    /// The copy's own retention; `None`: each policy's.
    pub retention: Option<Retention>,
}

impl CopyConfig {
    /// The rules a policy's backups are kept by in this copy.
    pub fn retention_for<'a>(&'a self, policy: &'a super::Policy) -> &'a Retention {
        self.retention.as_ref().unwrap_or(&policy.retention)
    }
}

/// Credentials for an S3 copy that are not the standard chain's: a copy in
/// another account or at another provider. Never the secrets themselves in
/// the file: a profile name, or the names of environment variables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum S3Credentials {
    /// A profile of the shared AWS config and credentials files.
    Profile(String),
    /// The names of the environment variables holding the key pair.
    Env {
        access_key_id: String,
        secret_access_key: String,
    },
}

impl Config {
    /// The copy named `name`.
    ///
    /// # Errors
    /// `Usage`, listing the names that exist.
    pub fn copy(&self, name: &str) -> Result<&CopyConfig> {
        self.copies.iter().find(|c| c.name == name).ok_or_else(|| {
            Error::Usage(format!(
                "no copy named `{name}` in {}; {}",
                self.path.display(),
                if self.copies.is_empty() {
                    "there is no [[copies]] section (see \"Copies\" in docs/operations.md)"
                        .to_string()
                } else {
                    format!(
                        "the copies are: {}",
                        self.copies
                            .iter()
                            .map(|c| c.name.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                }
            ))
        })
    }
}

pub(super) fn parse(
    cx: &mut Ctx,
    raw: &[RawCopy],
    primary: Option<&RepositoryConfig>,
    base: &Path,
) -> Vec<CopyConfig> {
    let mut copies: Vec<CopyConfig> = Vec::new();
    for c in raw {
        let name = c.name.get_ref();
        if !super::valid_policy_name(name) {
            cx.err(
                &c.name,
                format!(
                    "copy name `{name}`: use 1 to 64 characters from a-z, 0-9, `-`, `_` and `.`, starting with a letter or digit"
                ),
            );
        } else if copies.iter().any(|o| &o.name == name) {
            cx.err(
                &c.name,
                format!("a second copy named `{name}`; copy names must be unique"),
            );
        }
        let mut url = c.url.clone();
        // A bare path is a local directory, as `file://` is.
        if !url.get_ref().contains("://") {
            *url.get_mut() = format!("file://{}", url.get_ref());
        }
        let as_repo = RawRepository {
            url,
            endpoint: c.endpoint.clone(),
            region: c.region.clone(),
            path_style: c.path_style,
        };
        let Some(mut repository) = super::parse_repository(cx, &as_repo, base) else {
            continue;
        };
        let credentials = match (&c.profile, &c.access_key_id_env, &c.secret_access_key_env) {
            (None, None, None) => None,
            (Some(p), None, None) => Some(S3Credentials::Profile(p.get_ref().clone())),
            (None, Some(a), Some(s)) => Some(S3Credentials::Env {
                access_key_id: a.get_ref().clone(),
                secret_access_key: s.get_ref().clone(),
            }),
            (Some(p), _, _) => {
                cx.err(
                    p,
                    "give a copy either `profile` or `access_key_id_env` and `secret_access_key_env`, not both",
                );
                None
            }
            (None, Some(a), None) | (None, None, Some(a)) => {
                cx.err(
                    a,
                    "`access_key_id_env` and `secret_access_key_env` go together: the names of the two environment variables holding the copy's key pair",
                );
                None
            }
        };
        match &mut repository {
            RepositoryConfig::S3 {
                credentials: slot, ..
            } => *slot = credentials,
            RepositoryConfig::Local { .. } => {
                if credentials.is_some() || c.endpoint.is_some() || c.path_style {
                    cx.err(
                        &c.url,
                        format!(
                            "copy `{name}` is a local directory; `endpoint`, `path_style`, `profile` and the credential settings apply only to an s3:// url"
                        ),
                    );
                }
            }
        }
        if primary.is_some_and(|p| same_place(p, &repository)) {
            cx.err(
                &c.url,
                format!(
                    "copy `{name}` is the primary repository itself ({}); a copy must be somewhere else",
                    repository.describe()
                ),
            );
        } else if let Some(other) = copies
            .iter()
            .find(|o| same_place(&o.repository, &repository))
        {
            cx.err(
                &c.url,
                format!(
                    "copy `{name}` is the same place as copy `{}` ({})",
                    other.name,
                    repository.describe()
                ),
            );
        }
        let retention = c.retention.as_ref().map(|r| super::parse_retention(cx, r));
        copies.push(CopyConfig {
            name: name.clone(),
            repository,
            after_backup: c.after_backup,
            retention,
        });
    }
    copies
}

/// Whether two repository settings name the same place: the same bucket
/// and prefix at the same endpoint, or the same directory.
fn same_place(a: &RepositoryConfig, b: &RepositoryConfig) -> bool {
    match (a, b) {
        (
            RepositoryConfig::S3 {
                bucket: b1,
                prefix: p1,
                endpoint: e1,
                ..
            },
            RepositoryConfig::S3 {
                bucket: b2,
                prefix: p2,
                endpoint: e2,
                ..
            },
        ) => b1 == b2 && p1 == p2 && e1 == e2,
        (RepositoryConfig::Local { path: a }, RepositoryConfig::Local { path: b }) => {
            normalise(a) == normalise(b)
        }
        _ => false,
    }
}

fn normalise(p: &Path) -> std::path::PathBuf {
    p.components().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ConfigError;

    fn parse_copies(extra: &str) -> (Vec<CopyConfig>, Vec<ConfigError>) {
        let text = format!(
            "[repository]\nurl = \"file:///srv/primary\"\n[encryption]\nrecipients = [\"age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p\"]\n{extra}"
        );
        let mut errors = Vec::new();
        let config = super::super::parse_config(
            Path::new("drctl.toml"),
            &text,
            Path::new("/etc/drctl"),
            &mut errors,
        );
        (config.map(|c| c.copies).unwrap_or_default(), errors)
    }

    #[test]
    fn a_bare_path_is_a_local_directory_relative_to_the_configuration() {
        let (copies, errors) = parse_copies("[[copies]]\nname = \"disk\"\nurl = \"offsite\"\n");
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(
            copies[0].repository,
            RepositoryConfig::Local {
                path: "/etc/drctl/offsite".into()
            }
        );
        assert!(!copies[0].after_backup);
        assert_eq!(copies[0].retention, None);
    }

    #[test]
    fn s3_copies_carry_their_own_endpoint_credentials_and_retention() {
        let (copies, errors) = parse_copies(
            "[[copies]]\nname = \"eu\"\nurl = \"s3://dr-bucket/drctl/\"\nendpoint = \"https://s3.eu.example\"\nregion = \"eu-west-1\"\nprofile = \"dr\"\nafter_backup = true\n[copies.retention]\nkeep_daily = 30\n",
        );
        assert!(errors.is_empty(), "{errors:?}");
        let c = &copies[0];
        assert_eq!(
            c.repository,
            RepositoryConfig::S3 {
                bucket: "dr-bucket".into(),
                prefix: "drctl".into(),
                endpoint: Some("https://s3.eu.example".into()),
                region: Some("eu-west-1".into()),
                path_style: false,
                credentials: Some(S3Credentials::Profile("dr".into())),
            }
        );
        assert!(c.after_backup);
        assert_eq!(c.retention.as_ref().and_then(|r| r.keep_daily), Some(30));
    }

    #[test]
    fn bad_copies_are_named_with_their_line() {
        for (extra, expected) in [
            (
                "[[copies]]\nname = \"a\"\nurl = \"file:///x\"\n[[copies]]\nname = \"a\"\nurl = \"file:///y\"\n",
                ":9: a second copy named `a`",
            ),
            (
                "[[copies]]\nname = \"self\"\nurl = \"/srv/primary\"\n",
                ":7: copy `self` is the primary repository itself",
            ),
            (
                "[[copies]]\nname = \"a\"\nurl = \"file:///x\"\n[[copies]]\nname = \"b\"\nurl = \"file:///x\"\n",
                "is the same place as copy `a`",
            ),
            (
                "[[copies]]\nname = \"l\"\nurl = \"file:///x\"\nprofile = \"p\"\n",
                "apply only to an s3:// url",
            ),
            (
                "[[copies]]\nname = \"k\"\nurl = \"s3://bucket-k\"\nsecret_access_key_env = \"S\"\n",
                "go together",
            ),
            (
                "[[copies]]\nname = \"u\"\nurl = \"ftp://x\"\n",
                "expected s3://BUCKET/PREFIX or file:///PATH",
            ),
            (
                "[[copies]]\nname = \"r\"\nurl = \"file:///x\"\n[copies.retention]\nkeep_dayly = 3\n",
                "did you mean `keep_daily`",
            ),
        ] {
            let (_, errors) = parse_copies(extra);
            let text: Vec<String> = errors.iter().map(ToString::to_string).collect();
            assert!(
                text.iter().any(|e| e.contains(expected)),
                "{extra}: expected `{expected}` in {text:?}"
            );
        }
    }
}
