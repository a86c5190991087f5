//! `sign --existing`: vouch, with the signing key, for the unsigned objects
//! of a repository written before `[signing]` was turned on.

use super::Ctx;
use crate::error::{Error, Result};
use crate::repo::{attest, catalog};

pub async fn sign_existing(ctx: &Ctx, dry_run: bool) -> Result<()> {
    let config = ctx.config()?;
    if config.signing.as_ref().is_none_or(|s| s.key_file.is_none()) {
        return Err(Error::Key(
            "`drctl sign --existing` needs `[signing]` with a `key_file` in drctl.toml".into(),
        ));
    }
    let repo = ctx.repo(&config).await?;
    let survey = attest::survey(&repo).await?;
    let written = if dry_run || survey.unsigned.is_empty() {
        None
    } else {
        Some(attest::write(&repo, survey.unsigned.clone()).await?)
    };
    if ctx.cli.json {
        ctx.print_json(&serde_json::json!({
            "dry_run": dry_run,
            "attestation": written,
            "vouched": survey.unsigned,
            "refused": survey.refused,
            "already_trusted": survey.trusted,
        }));
    } else {
        for o in &survey.unsigned {
            outln!(
                "{} {}",
                if dry_run { "would vouch" } else { "vouched" },
                o.key
            );
        }
        outln!(
            "{} unsigned object(s) {}; {} already trusted; {} refused",
            survey.unsigned.len(),
            match (&written, dry_run) {
                (_, true) => "would be vouched for (dry run)".to_string(),
                (Some(key), _) => format!("vouched for in {key}"),
                (None, _) => "to vouch for".to_string(),
            },
            survey.trusted,
            survey.refused.len()
        );
    }
    // Objects signed by an unknown key or altered after signing are never
    // vouched for: they are what signing exists to catch.
    for why in &survey.refused {
        errln!("warning: {why}");
    }
    catalog::untrusted_summary(
        survey
            .refused
            .iter()
            .map(|r| r.split('`').nth(1).unwrap_or(r.as_str())),
    )
}
