//! The bucket-level seam: settings of the bucket a repository lives in
//! (versioning, lifecycle rules, Object Lock default retention) and
//! retrieval of archived objects. Only an S3 store has one
//! ([`super::Store::bucket`]); the types are drctl's own (`bucket`,
//! `archive`), never the SDK's.

use async_trait::async_trait;

use crate::archive::{ArchiveState, Requested, Tier};
use crate::bucket::{Actual, Retention, Rule};
use crate::error::StorageError;

#[async_trait]
pub trait BucketAdmin: Send + Sync {
    /// The bucket's name, for messages.
    fn bucket_name(&self) -> &str;

    /// The repository's key prefix inside the bucket, without slashes;
    /// empty for a whole bucket.
    fn prefix(&self) -> &str;

    /// Versioning, every lifecycle rule and the Object Lock configuration.
    async fn settings(&self) -> Result<Actual, StorageError>;

    async fn enable_versioning(&self) -> Result<(), StorageError>;

    /// Writes the lifecycle configuration: `owned` replaces every rule whose
    /// id starts with `bucket::OWNED_RULE_PREFIX`; other rules are kept as
    /// they are.
    async fn put_lifecycle(&self, owned: &[Rule]) -> Result<(), StorageError>;

    /// Sets the default retention of an Object Lock bucket.
    async fn put_default_retention(&self, retention: &Retention) -> Result<(), StorageError>;

    /// Storage class and retrieval state of one object (a repository key).
    async fn archive_state(
        &self,
        key: &str,
        version: Option<&str>,
    ) -> Result<ArchiveState, StorageError>;

    /// Asks for a readable copy of an archived object for `days` days.
    async fn request_retrieval(
        &self,
        key: &str,
        version: Option<&str>,
        tier: Tier,
        days: u32,
    ) -> Result<Requested, StorageError>;
}
