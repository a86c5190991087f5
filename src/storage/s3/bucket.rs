//! [`BucketAdmin`] for an S3 bucket: versioning, the lifecycle
//! configuration, Object Lock default retention, and RestoreObject for
//! archived objects, translated between the SDK's types and drctl's own
//! (`crate::bucket`, `crate::archive`).

use async_trait::async_trait;
use aws_sdk_s3::types::{
    AbortIncompleteMultipartUpload, BucketLifecycleConfiguration, BucketVersioningStatus,
    DefaultRetention, ExpirationStatus, GlacierJobParameters, LifecycleExpiration, LifecycleRule,
    LifecycleRuleAndOperator, LifecycleRuleFilter, NoncurrentVersionExpiration, ObjectLockEnabled,
    ObjectLockRetentionMode, ObjectLockRule, RestoreRequest, Tag, Transition,
    TransitionStorageClass, VersioningConfiguration,
};

use super::{S3Store, real_version};
use crate::archive::{ArchiveState, Requested, Retrieval, Tier};
use crate::bucket::{Actual, ObjectLock, Retention, Rule};
use crate::error::{StorageError, StorageErrorKind};
use crate::storage::{BucketAdmin, Store};

impl S3Store {
    /// Every lifecycle rule as the SDK has it; empty without a configuration.
    async fn lifecycle_rules(&self) -> Result<Vec<LifecycleRule>, StorageError> {
        Ok(self.lifecycle_document().await?.0)
    }

    /// The rules, and the bucket-wide minimum object size for transitions,
    /// which a rewrite must carry over too.
    async fn lifecycle_document(
        &self,
    ) -> Result<
        (
            Vec<LifecycleRule>,
            Option<aws_sdk_s3::types::TransitionDefaultMinimumObjectSize>,
        ),
        StorageError,
    > {
        match self
            .client
            .get_bucket_lifecycle_configuration()
            .bucket(&self.bucket)
            .send()
            .await
        {
            Ok(out) => Ok((
                out.rules.unwrap_or_default(),
                out.transition_default_minimum_object_size,
            )),
            Err(e)
                if e.as_service_error()
                    .and_then(aws_sdk_s3::error::ProvideErrorMetadata::code)
                    == Some("NoSuchLifecycleConfiguration") =>
            {
                Ok((Vec::new(), None))
            }
            Err(e) => Err(self.err("GetBucketLifecycleConfiguration", &self.bucket, &e)),
        }
    }

    fn invalid(&self, op: &'static str, detail: String) -> StorageError {
        StorageError::new(
            op,
            self.location(),
            &self.bucket,
            StorageErrorKind::Other,
            detail,
        )
    }
}

#[async_trait]
impl BucketAdmin for S3Store {
    fn bucket_name(&self) -> &str {
        &self.bucket
    }

    fn prefix(&self) -> &str {
        &self.prefix
    }

    async fn settings(&self) -> Result<Actual, StorageError> {
        let versioning = self.versioning_status().await?;
        let rules = self
            .lifecycle_rules()
            .await?
            .iter()
            .map(rule_from_sdk)
            .collect();
        let object_lock = match self.object_lock_configuration().await? {
            Some(c) if c.object_lock_enabled == Some(ObjectLockEnabled::Enabled) => {
                ObjectLock::Enabled(
                    c.rule
                        .and_then(|r| r.default_retention)
                        .map(|d| describe_lock_retention(&d)),
                )
            }
            _ => ObjectLock::Disabled,
        };
        Ok(Actual {
            versioning,
            rules,
            object_lock,
        })
    }

    async fn enable_versioning(&self) -> Result<(), StorageError> {
        self.client
            .put_bucket_versioning()
            .bucket(&self.bucket)
            .versioning_configuration(
                VersioningConfiguration::builder()
                    .status(BucketVersioningStatus::Enabled)
                    .build(),
            )
            .send()
            .await
            .map_err(|e| self.err("PutBucketVersioning", &self.bucket, &e))?;
        Ok(())
    }

    async fn put_lifecycle(&self, owned: &[Rule]) -> Result<(), StorageError> {
        // The configuration is one document: read it again right before
        // writing, so that rules of others are carried over as S3 has them.
        let (current, minimum_size) = self.lifecycle_document().await?;
        let mut rules: Vec<LifecycleRule> = current
            .into_iter()
            .filter(|r| {
                !r.id
                    .as_deref()
                    .is_some_and(|id| crate::bucket::owned_by(id, self.prefix()))
            })
            .collect();
        for rule in owned {
            rules.push(
                rule_to_sdk(rule)
                    .map_err(|e| self.invalid("PutBucketLifecycleConfiguration", e))?,
            );
        }
        if rules.is_empty() {
            self.client
                .delete_bucket_lifecycle()
                .bucket(&self.bucket)
                .send()
                .await
                .map_err(|e| self.err("DeleteBucketLifecycle", &self.bucket, &e))?;
            return Ok(());
        }
        let config = BucketLifecycleConfiguration::builder()
            .set_rules(Some(rules))
            .build()
            .map_err(|e| self.invalid("PutBucketLifecycleConfiguration", e.to_string()))?;
        self.client
            .put_bucket_lifecycle_configuration()
            .bucket(&self.bucket)
            .lifecycle_configuration(config)
            .set_transition_default_minimum_object_size(minimum_size)
            .send()
            .await
            .map_err(|e| self.err("PutBucketLifecycleConfiguration", &self.bucket, &e))?;
        Ok(())
    }

    async fn put_default_retention(&self, retention: &Retention) -> Result<(), StorageError> {
        let default = DefaultRetention::builder()
            .mode(ObjectLockRetentionMode::from(retention.mode.as_str()))
            .set_days(retention.days.map(|d| d as i32))
            .set_years(retention.years.map(|y| y as i32))
            .build();
        self.client
            .put_object_lock_configuration()
            .bucket(&self.bucket)
            .object_lock_configuration(
                aws_sdk_s3::types::ObjectLockConfiguration::builder()
                    .object_lock_enabled(ObjectLockEnabled::Enabled)
                    .rule(ObjectLockRule::builder().default_retention(default).build())
                    .build(),
            )
            .send()
            .await
            .map_err(|e| self.err("PutObjectLockConfiguration", &self.bucket, &e))?;
        Ok(())
    }

    async fn archive_state(
        &self,
        key: &str,
        version: Option<&str>,
    ) -> Result<ArchiveState, StorageError> {
        let out = self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(self.full_key(key))
            .set_version_id(real_version(version.map(str::to_string)))
            .send()
            .await
            .map_err(|e| self.err("head", key, &e))?;
        Ok(ArchiveState {
            storage_class: out.storage_class.map(|c| c.as_str().to_string()),
            retrieval: Retrieval::from_header(out.restore.as_deref()),
        })
    }

    async fn request_retrieval(
        &self,
        key: &str,
        version: Option<&str>,
        tier: Tier,
        days: u32,
    ) -> Result<Requested, StorageError> {
        let tier = match tier {
            Tier::Expedited => aws_sdk_s3::types::Tier::Expedited,
            Tier::Standard => aws_sdk_s3::types::Tier::Standard,
            Tier::Bulk => aws_sdk_s3::types::Tier::Bulk,
        };
        let request = RestoreRequest::builder()
            .days(days as i32)
            .glacier_job_parameters(
                GlacierJobParameters::builder()
                    .tier(tier)
                    .build()
                    .map_err(|e| self.invalid("RestoreObject", e.to_string()))?,
            )
            .build();
        let sent = self
            .client
            .restore_object()
            .bucket(&self.bucket)
            .key(self.full_key(key))
            .set_version_id(real_version(version.map(str::to_string)))
            .restore_request(request)
            .send()
            .await;
        match sent {
            Ok(_) => Ok(Requested::Started),
            Err(e) => {
                match e
                    .as_service_error()
                    .and_then(aws_sdk_s3::error::ProvideErrorMetadata::code)
                {
                    Some("RestoreAlreadyInProgress") => Ok(Requested::AlreadyInProgress),
                    // The object left the archive class since it was looked at.
                    Some("ObjectAlreadyInActiveTierError") => Ok(Requested::AlreadyDone),
                    _ => Err(self.err("RestoreObject", key, &e)),
                }
            }
        }
    }
}

fn describe_lock_retention(d: &DefaultRetention) -> Retention {
    Retention {
        mode: d
            .mode
            .as_ref()
            .map_or_else(String::new, |m| m.as_str().to_string()),
        days: days_u32(d.days),
        years: days_u32(d.years),
    }
}

fn days_u32(n: Option<i32>) -> Option<u32> {
    n.map(|n| u32::try_from(n).unwrap_or(0))
}

fn tags_from_sdk(tags: &[Tag]) -> Vec<(String, String)> {
    tags.iter()
        .map(|t| (t.key.clone(), t.value.clone()))
        .collect()
}

fn sizes(other: &mut Vec<String>, greater: Option<i64>, less: Option<i64>) {
    if let Some(n) = greater {
        other.push(format!("only objects larger than {n} bytes"));
    }
    if let Some(n) = less {
        other.push(format!("only objects smaller than {n} bytes"));
    }
}

fn date(d: &aws_smithy_types::DateTime) -> String {
    d.fmt(aws_smithy_types::date_time::Format::DateTime)
        .unwrap_or_else(|_| d.secs().to_string())
}

/// What a rule on the bucket does, in drctl's terms; whatever drctl does
/// not write goes into `other`, described.
// The rule-level `Prefix` is deprecated, but rules written by older tools
// still carry it instead of a filter.
#[allow(deprecated)]
pub(super) fn rule_from_sdk(r: &LifecycleRule) -> Rule {
    let mut other = Vec::new();
    let (prefix, tags) = match &r.filter {
        Some(f) => match &f.and {
            Some(and) => {
                sizes(
                    &mut other,
                    and.object_size_greater_than,
                    and.object_size_less_than,
                );
                (
                    and.prefix.clone(),
                    tags_from_sdk(and.tags.as_deref().unwrap_or_default()),
                )
            }
            None => {
                sizes(
                    &mut other,
                    f.object_size_greater_than,
                    f.object_size_less_than,
                );
                (
                    f.prefix.clone().or_else(|| r.prefix.clone()),
                    f.tag
                        .iter()
                        .map(|t| (t.key.clone(), t.value.clone()))
                        .collect(),
                )
            }
        },
        None => (r.prefix.clone(), Vec::new()),
    };
    let mut transition = None;
    for t in r.transitions() {
        let class = t
            .storage_class
            .as_ref()
            .map_or("an unnamed class", |c| c.as_str());
        match (days_u32(t.days), &t.date, transition.is_none()) {
            (Some(days), None, true) => {
                transition = Some(crate::bucket::Transition {
                    days,
                    storage_class: class.to_string(),
                })
            }
            (Some(days), _, _) => other.push(format!("move to {class} after {days} days")),
            (None, Some(d), _) => other.push(format!("move to {class} on {}", date(d))),
            (None, None, _) => other.push(format!("move to {class}")),
        }
    }
    for t in r.noncurrent_version_transitions() {
        other.push(format!(
            "move noncurrent versions to {} after {} days",
            t.storage_class.as_ref().map_or("?", |c| c.as_str()),
            t.noncurrent_days.unwrap_or(0)
        ));
    }
    let noncurrent_expire_days = r.noncurrent_version_expiration.as_ref().and_then(|n| {
        if let Some(k) = n.newer_noncurrent_versions {
            other.push(format!("keep the newest {k} noncurrent versions"));
        }
        days_u32(n.noncurrent_days)
    });
    let mut expired_delete_markers = false;
    if let Some(e) = &r.expiration {
        if let Some(d) = e.days {
            other.push(format!("expire current versions after {d} days"));
        }
        if let Some(d) = &e.date {
            other.push(format!("expire current versions on {}", date(d)));
        }
        expired_delete_markers = e.expired_object_delete_marker == Some(true);
    }
    Rule {
        id: r.id.clone().unwrap_or_default(),
        enabled: r.status == ExpirationStatus::Enabled,
        prefix: prefix.unwrap_or_default(),
        tags,
        transition,
        noncurrent_expire_days,
        expired_delete_markers,
        abort_incomplete_days: r
            .abort_incomplete_multipart_upload
            .as_ref()
            .and_then(|a| days_u32(a.days_after_initiation)),
        other,
    }
    .normalised()
}

/// The SDK rule for one of drctl's rules.
pub(super) fn rule_to_sdk(rule: &Rule) -> Result<LifecycleRule, String> {
    if !rule.other.is_empty() {
        return Err(format!(
            "lifecycle rule {} has actions drctl does not write: {}",
            rule.id,
            rule.other.join("; ")
        ));
    }
    let tags = rule
        .tags
        .iter()
        .map(|(k, v)| Tag::builder().key(k).value(v).build())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    // S3 takes a bare prefix or a bare tag, and needs `And` for more.
    let filter = match (rule.prefix.as_str(), tags.as_slice()) {
        (prefix, []) => LifecycleRuleFilter::builder().prefix(prefix).build(),
        ("", [tag]) => LifecycleRuleFilter::builder().tag(tag.clone()).build(),
        (prefix, _) => LifecycleRuleFilter::builder()
            .and(
                LifecycleRuleAndOperator::builder()
                    .prefix(prefix)
                    .set_tags(Some(tags.clone()))
                    .build(),
            )
            .build(),
    };
    let mut b = LifecycleRule::builder()
        .id(&rule.id)
        .status(if rule.enabled {
            ExpirationStatus::Enabled
        } else {
            ExpirationStatus::Disabled
        })
        .filter(filter);
    if let Some(t) = &rule.transition {
        b = b.transitions(
            Transition::builder()
                .days(t.days as i32)
                .storage_class(TransitionStorageClass::from(t.storage_class.as_str()))
                .build(),
        );
    }
    if let Some(d) = rule.noncurrent_expire_days {
        b = b.noncurrent_version_expiration(
            NoncurrentVersionExpiration::builder()
                .noncurrent_days(d as i32)
                .build(),
        );
    }
    if rule.expired_delete_markers {
        b = b.expiration(
            LifecycleExpiration::builder()
                .expired_object_delete_marker(true)
                .build(),
        );
    }
    if let Some(d) = rule.abort_incomplete_days {
        b = b.abort_incomplete_multipart_upload(
            AbortIncompleteMultipartUpload::builder()
                .days_after_initiation(d as i32)
                .build(),
        );
    }
    b.build().map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bucket::desired;
    use crate::config::Lifecycle;

    #[test]
    fn drctl_rules_survive_the_round_trip_through_sdk_types() {
        let d = desired(
            &Lifecycle {
                archive_after_days: Some(30),
                archive_class: Some("DEEP_ARCHIVE".into()),
                ..Lifecycle::default()
            },
            "drctl",
        );
        for rule in &d.rules {
            let back = rule_from_sdk(&rule_to_sdk(rule).unwrap());
            assert_eq!(&back, rule);
        }
        let whole_bucket = desired(&Lifecycle::default(), "");
        for rule in &whole_bucket.rules {
            assert_eq!(&rule_from_sdk(&rule_to_sdk(rule).unwrap()), rule);
        }
    }

    #[test]
    fn what_drctl_does_not_write_is_described() {
        let rule = LifecycleRule::builder()
            .id("logs")
            .status(ExpirationStatus::Enabled)
            .filter(
                LifecycleRuleFilter::builder()
                    .prefix("logs/")
                    .object_size_greater_than(1024)
                    .build(),
            )
            .expiration(LifecycleExpiration::builder().days(7).build())
            .build()
            .unwrap();
        let r = rule_from_sdk(&rule);
        assert_eq!(r.prefix, "logs/");
        assert_eq!(
            r.other,
            [
                "expire current versions after 7 days",
                "only objects larger than 1024 bytes"
            ]
        );
        assert!(
            rule_to_sdk(&r).is_err(),
            "drctl never writes what it cannot model"
        );
    }
}
