//! An S3 bucket (AWS, MinIO, Ceph, R2, moto) through aws-sdk-s3. Everything
//! that is S3-specific lives here: conditional writes, multipart limits and
//! part sizing, version ids, storage classes, error codes.

mod bucket;
pub mod parts;

use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_s3::Client;
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream as SdkByteStream;
use aws_sdk_s3::types::{ChecksumAlgorithm, CompletedMultipartUpload, CompletedPart};
use aws_smithy_runtime_api::http::Response as HttpResponse;
use bytes::Bytes;
use tokio::task::JoinSet;

use parts::{PartBody, PartBudget};

use super::{
    BucketAdmin, ByteStream, ObjectMeta, Protection, PutMode, Spliced, Store, Stored, Upload,
};
use crate::config::RepositoryConfig;
use crate::error::{StorageError, StorageErrorKind};

/// The first parts are this big (S3 allows 5 MiB and up); later ones grow
/// (see [`part_size`]).
pub const FIRST_PART_BYTES: usize = 6 * 1024 * 1024;
/// Part sizes double after this many parts, so that 10,000 parts hold more
/// than S3's 5 TiB object limit while small backups keep small buffers.
pub const PARTS_PER_SIZE_STEP: usize = 1000;
pub const MAX_PARTS: usize = 10_000;
pub const MAX_PART_BYTES: usize = 5 * 1024 * 1024 * 1024;
/// Parts being sent at once per upload, besides the one filling.
pub const PARTS_IN_FLIGHT: usize = 2;
/// Memory that part buffers may hold at once, shared by all uploads of a
/// store: one upload's first parts (two in flight, one filling) fit, as
/// they always did; the parts of concurrent uploads, and every part once
/// parts grow past this, go to spill files (see [`parts`]). This, not the
/// object's size or the number of uploads, bounds upload memory.
pub const PART_MEMORY_BYTES: usize = (PARTS_IN_FLIGHT + 1) * FIRST_PART_BYTES;
/// What an upload takes from its caller at a time.
const FEED_BYTES: usize = 1024 * 1024;
/// Attempts per request, including the first; the SDK backs off with jitter.
pub const MAX_ATTEMPTS: u32 = 6;
/// Times a download resumes (with a Range request) after the body fails.
pub const DOWNLOAD_RESUMES: u32 = 5;

/// Payload bytes sent with the new header in a spliced object's first part:
/// S3's 5 MiB part minimum, and the rest is copied inside the bucket.
pub const SPLICE_FIRST_PART_BYTES: usize = 5 * 1024 * 1024;

/// A key for `x-amz-copy-source`: percent-encoded, slashes kept.
fn encode_key(key: &str) -> String {
    key.split('/')
        .map(|seg| url::form_urlencoded::byte_serialize(seg.as_bytes()).collect::<String>())
        .collect::<Vec<_>>()
        .join("/")
}

/// The `x-amz-tagging` of every object written through an upload: the
/// backup data, which the archive lifecycle rule selects by this tag.
fn data_tagging() -> String {
    format!(
        "{}={}",
        crate::bucket::DATA_TAG_KEY,
        crate::bucket::DATA_TAG_VALUE
    )
}

/// Size of part `n` (1-based).
pub fn part_size(n: usize) -> usize {
    part_size_stepped(n, PARTS_PER_SIZE_STEP)
}

/// Size of part `n` when sizes double every `parts_per_step` parts.
fn part_size_stepped(n: usize, parts_per_step: usize) -> usize {
    let step = (n.saturating_sub(1) / parts_per_step.max(1)).min(20);
    (FIRST_PART_BYTES << step).min(MAX_PART_BYTES)
}

pub struct S3Store {
    client: Client,
    bucket: String,
    /// For messages: where requests go.
    endpoint: String,
    prefix: String,
    budget: PartBudget,
    /// Part sizes double every this many parts ([`PARTS_PER_SIZE_STEP`]).
    parts_per_step: usize,
}

impl S3Store {
    /// Best effort: an upload left open only costs storage until the
    /// bucket's abort rule or `abort_uploads` removes it.
    async fn abort_multipart(&self, full_key: &str, upload_id: &str) {
        let _ = self
            .client
            .abort_multipart_upload()
            .bucket(&self.bucket)
            .key(full_key)
            .upload_id(upload_id)
            .send()
            .await;
    }

    /// Bytes `from..from + len` of an object (fewer past its end).
    async fn get_range(
        &self,
        key: &str,
        version: Option<&str>,
        from: u64,
        len: u64,
    ) -> Result<Bytes, StorageError> {
        if len == 0 {
            return Ok(Bytes::new());
        }
        let out = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(self.full_key(key))
            .set_version_id(version.map(str::to_string))
            .range(format!("bytes={from}-{}", from + len - 1))
            .send()
            .await
            .map_err(|e| self.err("get", key, &e))?;
        let data = out.body.collect().await.map_err(|e| {
            StorageError::new(
                "get",
                self.location(),
                key,
                StorageErrorKind::Transient,
                error_chain(&e),
            )
        })?;
        Ok(data.into_bytes())
    }

    /// Uploads `first` as part 1, then copies `source` from `from` to `end`
    /// inside the bucket in parts of up to S3's maximum.
    #[allow(clippy::too_many_arguments)]
    async fn splice_parts(
        &self,
        key: &str,
        upload_id: &str,
        first: Bytes,
        source: &str,
        version: Option<&str>,
        from: u64,
        end: u64,
    ) -> Result<Vec<CompletedPart>, StorageError> {
        let full = self.full_key(key);
        let out = self
            .client
            .upload_part()
            .bucket(&self.bucket)
            .key(&full)
            .upload_id(upload_id)
            .part_number(1)
            .body(SdkByteStream::from(first))
            .send()
            .await
            .map_err(|e| self.err("upload part", key, &e))?;
        let mut parts = vec![
            CompletedPart::builder()
                .part_number(1)
                .set_e_tag(out.e_tag)
                .build(),
        ];
        let mut copy_source = format!("{}/{}", self.bucket, encode_key(&self.full_key(source)));
        if let Some(v) = version {
            copy_source.push_str("?versionId=");
            copy_source.push_str(&encode_key(v));
        }
        let mut at = from;
        while at < end {
            let len = (MAX_PART_BYTES as u64).min(end - at);
            let number = parts.len() as i32 + 1;
            let out = self
                .client
                .upload_part_copy()
                .bucket(&self.bucket)
                .key(&full)
                .upload_id(upload_id)
                .part_number(number)
                .copy_source(&copy_source)
                .copy_source_range(format!("bytes={at}-{}", at + len - 1))
                .send()
                .await
                .map_err(|e| self.err("copy part", source, &e))?;
            parts.push(
                CompletedPart::builder()
                    .part_number(number)
                    .set_e_tag(out.copy_part_result.and_then(|r| r.e_tag))
                    .build(),
            );
            at += len;
        }
        Ok(parts)
    }

    /// Builds a client from the standard credential chain and the settings.
    ///
    /// # Errors
    /// Never for now; kept fallible for settings that cannot be used.
    pub async fn connect(config: &RepositoryConfig) -> Result<Self, StorageError> {
        let RepositoryConfig::S3 {
            bucket,
            prefix,
            endpoint,
            region,
            path_style,
            credentials,
        } = config
        else {
            unreachable!("S3Store::connect called with a non-S3 configuration");
        };
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
        loader = match region {
            Some(r) => loader.region(aws_config::Region::new(r.clone())),
            // The environment or the profile, else us-east-1; not the EC2
            // metadata service, which off EC2 costs seconds and log noise.
            None => loader.region(
                aws_config::meta::region::RegionProviderChain::first_try(
                    aws_config::environment::EnvironmentVariableRegionProvider::new(),
                )
                .or_else(aws_config::profile::ProfileFileRegionProvider::new())
                .or_else(aws_config::Region::new("us-east-1")),
            ),
        };
        loader = match credentials {
            None => loader,
            Some(crate::config::S3Credentials::Profile(p)) => loader.profile_name(p),
            Some(crate::config::S3Credentials::Env {
                access_key_id,
                secret_access_key,
            }) => {
                let read = |var: &str| {
                    std::env::var(var).map_err(|_| {
                        StorageError::new(
                            "connect",
                            config.describe(),
                            "",
                            crate::error::StorageErrorKind::AccessDenied,
                            format!("the environment variable `{var}` named in drctl.toml is not set; set it to the copy's credentials"),
                        )
                    })
                };
                loader.credentials_provider(aws_sdk_s3::config::Credentials::new(
                    read(access_key_id)?,
                    read(secret_access_key)?,
                    None,
                    None,
                    "drctl.toml",
                ))
            }
        };
        let shared = loader.load().await;
        let mut builder = aws_sdk_s3::config::Builder::from(&shared)
            .force_path_style(*path_style)
            // drctl checks sha256 of every object itself; the SDK cannot
            // validate multipart part-level checksums and would only warn.
            .response_checksum_validation(
                aws_sdk_s3::config::ResponseChecksumValidation::WhenRequired,
            )
            .retry_config(
                aws_config::retry::RetryConfig::standard()
                    .with_max_attempts(MAX_ATTEMPTS)
                    .with_initial_backoff(Duration::from_millis(200))
                    .with_max_backoff(Duration::from_secs(20)),
            )
            .timeout_config(
                aws_config::timeout::TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(10))
                    .read_timeout(Duration::from_secs(120))
                    .build(),
            );
        if shared.region().is_none() {
            builder = builder.region(aws_config::Region::new("us-east-1"));
        }
        if let Some(e) = endpoint {
            builder = builder.endpoint_url(e);
        }
        Ok(S3Store {
            client: Client::from_conf(builder.build()),
            bucket: bucket.clone(),
            endpoint: endpoint
                .clone()
                .unwrap_or_else(|| "(AWS, from the region)".into()),
            prefix: prefix.clone(),
            budget: PartBudget::new(PART_MEMORY_BYTES, parts::default_spill_dir()),
            parts_per_step: PARTS_PER_SIZE_STEP,
        })
    }

    /// A store over an SDK client the caller configured (tests, tools).
    pub fn from_client(client: Client, bucket: &str, prefix: &str, endpoint: &str) -> S3Store {
        S3Store {
            client,
            bucket: bucket.to_string(),
            endpoint: endpoint.to_string(),
            prefix: prefix.to_string(),
            budget: PartBudget::new(PART_MEMORY_BYTES, parts::default_spill_dir()),
            parts_per_step: PARTS_PER_SIZE_STEP,
        }
    }

    /// The same store with `memory_bytes` for part buffers and spill files
    /// in `spill_dir` (created 0700 when first needed). Tests use 0 to
    /// send every part from a spill file.
    pub fn with_part_memory(mut self, memory_bytes: usize, spill_dir: PathBuf) -> S3Store {
        self.budget = PartBudget::new(memory_bytes, spill_dir);
        self
    }

    /// The same store with part sizes doubling every `parts` parts instead
    /// of every [`PARTS_PER_SIZE_STEP`]: tests reach the large parts of a
    /// multi-terabyte object with a few hundred MiB.
    pub fn with_parts_per_size_step(mut self, parts: usize) -> S3Store {
        self.parts_per_step = parts.max(1);
        self
    }

    fn full_key(&self, key: &str) -> String {
        if self.prefix.is_empty() {
            key.to_string()
        } else {
            format!("{}/{key}", self.prefix)
        }
    }

    fn relative_key<'a>(&self, full: &'a str) -> &'a str {
        if self.prefix.is_empty() {
            full
        } else {
            full.strip_prefix(&self.prefix)
                .map(|k| k.trim_start_matches('/'))
                .unwrap_or(full)
        }
    }

    fn err<E>(&self, op: &'static str, key: &str, e: &SdkError<E, HttpResponse>) -> StorageError
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
    {
        map_error(op, &self.location(), key, &self.bucket, &self.endpoint, e)
    }
}

fn map_error<E>(
    op: &'static str,
    location: &str,
    key: &str,
    bucket: &str,
    endpoint: &str,
    e: &SdkError<E, HttpResponse>,
) -> StorageError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    use StorageErrorKind::*;
    let (kind, detail) = match e {
        SdkError::ServiceError(se) => {
            let err = se.err();
            let code = err.code().unwrap_or("");
            let status = Some(se.raw().status().as_u16());
            let kind = match (code, status) {
                ("NoSuchKey" | "NotFound" | "NoSuchVersion", _) | (_, Some(404))
                    if code != "NoSuchBucket" =>
                {
                    NotFound
                }
                ("NoSuchBucket", _) => NotFound,
                ("PreconditionFailed" | "ConditionalRequestConflict", _) | (_, Some(412)) => {
                    PreconditionFailed
                }
                // S3 answers 403 for a read of an archived object.
                ("InvalidObjectState", _) => Archived,
                (
                    "AccessDenied"
                    | "InvalidAccessKeyId"
                    | "SignatureDoesNotMatch"
                    | "ExpiredToken"
                    | "InvalidToken",
                    _,
                )
                | (_, Some(403)) => AccessDenied,
                (
                    "SlowDown" | "ServiceUnavailable" | "InternalError" | "RequestTimeout"
                    | "Throttling",
                    _,
                ) => Transient,
                (_, Some(s)) if s >= 500 => Transient,
                _ => Other,
            };
            let message = err.message().unwrap_or("");
            let detail = match (code, kind) {
                ("NoSuchBucket", _) => {
                    format!("bucket `{bucket}` does not exist (create it, or fix `repository.url`)")
                }
                (_, AccessDenied) => format!(
                    "access denied ({code}: {message}); check the AWS credentials and the bucket policy"
                ),
                ("", _) => format!(
                    "HTTP {}: {}",
                    status
                        .map(|s| s.to_string())
                        .unwrap_or_else(|| "error".into()),
                    error_chain(e)
                ),
                _ => format!("{code}: {message}"),
            };
            (kind, detail)
        }
        SdkError::TimeoutError(_) => (Transient, "timed out".to_string()),
        SdkError::DispatchFailure(d) => (
            Transient,
            format!(
                "cannot reach the S3 endpoint {endpoint}: {} (check `repository.endpoint`, the network and any proxy)",
                d.as_connector_error()
                    .map(|c| error_chain(c))
                    .unwrap_or_else(|| error_chain(e))
            ),
        ),
        SdkError::ResponseError(_) => (Transient, format!("bad response: {}", error_chain(e))),
        _ => (Other, error_chain(e)),
    };
    StorageError::new(op, location, key, kind, detail)
}

/// An unversioned bucket may still answer `x-amz-version-id: null` (moto
/// does after CompleteMultipartUpload); that is no version at all, and
/// asking for `versionId=null` later would be refused.
fn real_version(v: Option<String>) -> Option<String> {
    v.filter(|v| !v.is_empty() && v != "null")
}

/// After a conditional write was refused (412): the object at the key, if
/// it holds exactly the bytes that were sent. Then an earlier attempt of the
/// same request was stored and only its answer was lost, so the SDK's retry
/// ran into the write it had just made. Anything else, including a failure
/// to read, is `None` and the refusal stands.
async fn stored_by_lost_attempt(
    client: &Client,
    bucket: &str,
    full_key: &str,
    key: &str,
    sent: &Bytes,
) -> Option<Stored> {
    let out = client
        .get_object()
        .bucket(bucket)
        .key(full_key)
        .send()
        .await
        .ok()?;
    if out.content_length != Some(sent.len() as i64) {
        return None;
    }
    let (etag, version_id) = (out.e_tag.clone(), real_version(out.version_id.clone()));
    let stored = out.body.collect().await.ok()?.into_bytes();
    if stored != *sent {
        return None;
    }
    tracing::info!(
        event = "write_answer_lost",
        key,
        "The answer to a write was lost and its retry refused; the object holds exactly what was sent, so the first attempt stored it."
    );
    Some(Stored {
        size: sent.len() as u64,
        etag,
        version_id,
    })
}

/// The ETag S3 gives an object completed from `parts`: the MD5 of the
/// parts' binary MD5s, a dash and their count. `None` when a part's ETag is
/// not a plain MD5 (as with SSE-KMS) and the result cannot be predicted.
fn multipart_etag(parts: &[CompletedPart]) -> Option<String> {
    use md5::{Digest, Md5};
    let mut md5 = Md5::new();
    for part in parts {
        let raw = hex::decode(part.e_tag()?.trim_matches('"')).ok()?;
        if raw.len() != 16 {
            return None;
        }
        md5.update(&raw);
    }
    Some(format!(
        "\"{}-{}\"",
        hex::encode(md5.finalize()),
        parts.len()
    ))
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

fn to_utc(t: Option<&aws_sdk_s3::primitives::DateTime>) -> Option<chrono::DateTime<chrono::Utc>> {
    t.and_then(|t| chrono::DateTime::from_timestamp(t.secs(), t.subsec_nanos()))
}

#[async_trait]
impl Store for S3Store {
    fn location(&self) -> String {
        if self.prefix.is_empty() {
            format!("s3://{}", self.bucket)
        } else {
            format!("s3://{}/{}", self.bucket, self.prefix)
        }
    }

    async fn put(&self, key: &str, body: Bytes, mode: PutMode) -> Result<Stored, StorageError> {
        let size = body.len() as u64;
        let sent = body.clone();
        let full = self.full_key(key);
        let mut req = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(&full)
            .body(SdkByteStream::from(body));
        req = match mode {
            PutMode::Create => req.if_none_match("*"),
            PutMode::IfMatch(etag) => req.if_match(etag),
        };
        match req.send().await {
            Ok(out) => Ok(Stored {
                size,
                etag: out.e_tag,
                version_id: real_version(out.version_id),
            }),
            Err(e) => {
                let err = self.err("put", key, &e);
                if err.kind == StorageErrorKind::PreconditionFailed
                    && let Some(stored) =
                        stored_by_lost_attempt(&self.client, &self.bucket, &full, key, &sent).await
                {
                    return Ok(stored);
                }
                Err(err)
            }
        }
    }

    async fn get(
        &self,
        key: &str,
        version: Option<&str>,
    ) -> Result<(Bytes, ObjectMeta), StorageError> {
        let out = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(self.full_key(key))
            .set_version_id(version.map(str::to_string))
            .send()
            .await
            .map_err(|e| self.err("get", key, &e))?;
        let meta = ObjectMeta {
            key: key.to_string(),
            size: out.content_length.unwrap_or(0).max(0) as u64,
            etag: out.e_tag.clone(),
            version_id: real_version(out.version_id.clone()),
            last_modified: to_utc(out.last_modified.as_ref()),
            storage_class: out.storage_class.as_ref().map(|c| c.as_str().to_string()),
        };
        let data = out
            .body
            .collect()
            .await
            .map_err(|e| {
                StorageError::new(
                    "get",
                    self.location(),
                    key,
                    StorageErrorKind::Transient,
                    error_chain(&e),
                )
            })?
            .into_bytes();
        Ok((data, meta))
    }

    async fn get_stream(
        &self,
        key: &str,
        version: Option<&str>,
    ) -> Result<ByteStream, StorageError> {
        let full = self.full_key(key);
        let out = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(&full)
            .set_version_id(version.map(str::to_string))
            .send()
            .await
            .map_err(|e| self.err("get", key, &e))?;
        let state = DownloadState {
            client: self.client.clone(),
            bucket: self.bucket.clone(),
            endpoint: self.endpoint.clone(),
            full_key: full,
            key: key.to_string(),
            location: self.location(),
            version: version.map(str::to_string),
            // Resumed reads must see the same bytes: pin them to the ETag.
            etag: out.e_tag.clone(),
            offset: 0,
            resumes_left: DOWNLOAD_RESUMES,
            body: Some(out.body),
        };
        Ok(Box::pin(futures::stream::unfold(
            state,
            DownloadState::next,
        )))
    }

    async fn get_head(
        &self,
        key: &str,
        version: Option<&str>,
        len: u64,
    ) -> Result<Bytes, StorageError> {
        self.get_range(key, version, 0, len).await
    }

    async fn replace_data(
        &self,
        key: &str,
        body: Bytes,
        etag: &str,
    ) -> Result<Stored, StorageError> {
        let size = body.len() as u64;
        let out = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(self.full_key(key))
            .if_match(etag)
            .tagging(data_tagging())
            .body(SdkByteStream::from(body))
            .send()
            .await
            .map_err(|e| self.err("put", key, &e))?;
        Ok(Stored {
            size,
            etag: out.e_tag,
            version_id: real_version(out.version_id),
        })
    }

    async fn put_spliced(
        &self,
        key: &str,
        head: Bytes,
        source: &str,
        version: Option<&str>,
        from: u64,
    ) -> Result<Spliced, StorageError> {
        let meta = self.head(source, version).await?;
        let rest = meta.size.saturating_sub(from);
        // The first part must reach S3's minimum with the new header in
        // front, so it carries that much of the payload; below two parts'
        // worth a single PutObject of everything is as cheap.
        let first = (SPLICE_FIRST_PART_BYTES as u64).min(rest);
        let whole = rest < 2 * SPLICE_FIRST_PART_BYTES as u64;
        let want = if whole { rest } else { first };
        let lead = self.get_range(source, version, from, want).await?;
        if lead.len() as u64 != want {
            return Err(StorageError::new(
                "get",
                self.location(),
                source,
                StorageErrorKind::Transient,
                format!(
                    "asked for {want} bytes at offset {from}, got {}",
                    lead.len()
                ),
            ));
        }
        let mut body = Vec::with_capacity(head.len() + lead.len());
        body.extend_from_slice(&head);
        body.extend_from_slice(&lead);
        let downloaded = lead.len() as u64;
        let uploaded = body.len() as u64;
        if whole {
            let mut upload = self.create_upload(key).await?;
            if let Err(e) = upload.put_part(Bytes::from(body)).await {
                let _ = upload.abort().await;
                return Err(e);
            }
            let stored = upload.complete().await?;
            return Ok(Spliced {
                stored,
                downloaded,
                uploaded,
                copied_in_store: 0,
            });
        }
        let full = self.full_key(key);
        let created = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(&full)
            .tagging(data_tagging())
            .send()
            .await
            .map_err(|e| self.err("upload", key, &e))?;
        let upload_id = created.upload_id.unwrap_or_default();
        let result = self
            .splice_parts(
                key,
                &upload_id,
                Bytes::from(body),
                source,
                version,
                from + first,
                meta.size,
            )
            .await;
        let parts = match result {
            Ok(parts) => parts,
            Err(e) => {
                self.abort_multipart(&full, &upload_id).await;
                return Err(e);
            }
        };
        let done = self
            .client
            .complete_multipart_upload()
            .bucket(&self.bucket)
            .key(&full)
            .upload_id(&upload_id)
            .if_none_match("*")
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(parts))
                    .build(),
            )
            .send()
            .await;
        match done {
            Ok(out) => Ok(Spliced {
                stored: Stored {
                    size: head.len() as u64 + rest,
                    etag: out.e_tag,
                    version_id: real_version(out.version_id),
                },
                downloaded,
                uploaded,
                copied_in_store: rest - first,
            }),
            Err(e) => {
                self.abort_multipart(&full, &upload_id).await;
                Err(self.err("upload", key, &e))
            }
        }
    }

    async fn head(&self, key: &str, version: Option<&str>) -> Result<ObjectMeta, StorageError> {
        let out = self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(self.full_key(key))
            .set_version_id(version.map(str::to_string))
            .send()
            .await
            .map_err(|e| self.err("head", key, &e))?;
        Ok(ObjectMeta {
            key: key.to_string(),
            size: out.content_length.unwrap_or(0).max(0) as u64,
            etag: out.e_tag,
            version_id: real_version(out.version_id),
            last_modified: to_utc(out.last_modified.as_ref()),
            storage_class: out.storage_class.map(|c| c.as_str().to_string()),
        })
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StorageError> {
        let mut out = Vec::new();
        let mut pages = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(self.full_key(prefix))
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| self.err("list", prefix, &e))?;
            for o in page.contents.unwrap_or_default() {
                let Some(k) = o.key.as_deref() else { continue };
                out.push(ObjectMeta {
                    key: self.relative_key(k).to_string(),
                    size: o.size.unwrap_or(0).max(0) as u64,
                    etag: o.e_tag.clone(),
                    version_id: None,
                    last_modified: to_utc(o.last_modified.as_ref()),
                    storage_class: o.storage_class.as_ref().map(|c| c.as_str().to_string()),
                });
            }
        }
        Ok(out)
    }

    async fn delete(&self, key: &str) -> Result<(), StorageError> {
        self.client
            .delete_object()
            .bucket(&self.bucket)
            .key(self.full_key(key))
            .send()
            .await
            .map_err(|e| self.err("delete", key, &e))?;
        Ok(())
    }

    async fn delete_version(&self, key: &str, version: &str) -> Result<(), StorageError> {
        self.client
            .delete_object()
            .bucket(&self.bucket)
            .key(self.full_key(key))
            .version_id(version)
            .send()
            .await
            .map_err(|e| self.err("delete", key, &e))?;
        Ok(())
    }

    async fn create_upload(&self, key: &str) -> Result<Box<dyn Upload>, StorageError> {
        Ok(Box::new(S3Upload {
            client: self.client.clone(),
            bucket: self.bucket.clone(),
            endpoint: self.endpoint.clone(),
            full_key: self.full_key(key),
            key: key.to_string(),
            location: self.location(),
            budget: self.budget.clone(),
            parts_per_step: self.parts_per_step,
            upload_id: None,
            filling: None,
            first: None,
            next_part: 1,
            in_flight: JoinSet::new(),
            done: Vec::new(),
            size: 0,
        }))
    }

    async fn abort_uploads(&self, prefix: &str) -> Result<usize, StorageError> {
        let mut aborted = 0;
        let (mut key_marker, mut upload_marker) = (None, None);
        loop {
            let page = self
                .client
                .list_multipart_uploads()
                .bucket(&self.bucket)
                .prefix(self.full_key(prefix))
                .set_key_marker(key_marker.take())
                .set_upload_id_marker(upload_marker.take())
                .send()
                .await
                .map_err(|e| self.err("ListMultipartUploads", prefix, &e))?;
            for upload in page.uploads() {
                let (Some(full), Some(id)) = (upload.key(), upload.upload_id()) else {
                    continue;
                };
                let key = self.relative_key(full);
                match self
                    .client
                    .abort_multipart_upload()
                    .bucket(&self.bucket)
                    .key(full)
                    .upload_id(id)
                    .send()
                    .await
                {
                    Ok(_) => aborted += 1,
                    Err(e) => {
                        let err = self.err("abort upload", key, &e);
                        // Completed or aborted since the listing.
                        if !err.is_not_found() {
                            return Err(err);
                        }
                    }
                }
            }
            if page.is_truncated != Some(true) {
                break;
            }
            key_marker = page.next_key_marker.clone();
            upload_marker = page.next_upload_id_marker.clone();
            if key_marker.is_none() && upload_marker.is_none() {
                break;
            }
        }
        Ok(aborted)
    }

    async fn protection(&self) -> Result<Protection, StorageError> {
        let versioning = self.versioning_status().await?;
        let lock = self
            .object_lock_configuration()
            .await?
            .and_then(|c| describe_lock(&c));
        Ok(Protection {
            applicable: true,
            versioning,
            object_lock: lock,
        })
    }

    fn bucket(&self) -> Option<&dyn BucketAdmin> {
        Some(self)
    }

    async fn list_versions(&self, prefix: &str) -> Result<Vec<super::ObjectVersion>, StorageError> {
        let mut out = Vec::new();
        let (mut key_marker, mut version_marker) = (None, None);
        loop {
            let page = self
                .client
                .list_object_versions()
                .bucket(&self.bucket)
                .prefix(self.full_key(prefix))
                .set_key_marker(key_marker.take())
                .set_version_id_marker(version_marker.take())
                .send()
                .await
                .map_err(|e| self.err("ListObjectVersions", prefix, &e))?;
            for v in page.versions() {
                let (Some(k), Some(id)) = (v.key(), real_version(v.version_id.clone())) else {
                    continue;
                };
                out.push(super::ObjectVersion {
                    key: self.relative_key(k).to_string(),
                    version_id: id,
                    is_latest: v.is_latest.unwrap_or(false),
                    is_delete_marker: false,
                    last_modified: to_utc(v.last_modified.as_ref()),
                    size: v.size.unwrap_or(0).max(0) as u64,
                });
            }
            for m in page.delete_markers() {
                let (Some(k), Some(id)) = (m.key(), real_version(m.version_id.clone())) else {
                    continue;
                };
                out.push(super::ObjectVersion {
                    key: self.relative_key(k).to_string(),
                    version_id: id,
                    is_latest: m.is_latest.unwrap_or(false),
                    is_delete_marker: true,
                    last_modified: to_utc(m.last_modified.as_ref()),
                    size: 0,
                });
            }
            if page.is_truncated != Some(true) {
                break;
            }
            key_marker = page.next_key_marker.clone();
            version_marker = page.next_version_id_marker.clone();
            if key_marker.is_none() && version_marker.is_none() {
                break;
            }
        }
        // Newest first within a key; the latest (current object or delete
        // marker) leads even when two versions share a second.
        out.sort_by(|a, b| {
            a.key
                .cmp(&b.key)
                .then(b.is_latest.cmp(&a.is_latest))
                .then(b.last_modified.cmp(&a.last_modified))
        });
        Ok(out)
    }
}

impl S3Store {
    /// `Enabled`, `Suspended`, or `None` when versioning was never enabled.
    async fn versioning_status(&self) -> Result<Option<String>, StorageError> {
        match self
            .client
            .get_bucket_versioning()
            .bucket(&self.bucket)
            .send()
            .await
        {
            Ok(out) => Ok(out.status.map(|s| s.as_str().to_string())),
            Err(e) => {
                // moto (5.2) names the answer's root element
                // `GetBucketVersioningResponse`, not `VersioningConfiguration`,
                // and the SDK refuses it; the status inside is the same.
                let body = match &e {
                    SdkError::ServiceError(se) if se.raw().status().is_success() => {
                        se.raw().body().bytes()
                    }
                    _ => None,
                };
                match body.and_then(versioning_in_misnamed_answer) {
                    Some(status) => Ok(status),
                    None => Err(self.err("GetBucketVersioning", &self.bucket, &e)),
                }
            }
        }
    }

    /// The Object Lock configuration; `None` for a bucket made without it.
    async fn object_lock_configuration(
        &self,
    ) -> Result<Option<aws_sdk_s3::types::ObjectLockConfiguration>, StorageError> {
        match self
            .client
            .get_object_lock_configuration()
            .bucket(&self.bucket)
            .send()
            .await
        {
            Ok(out) => Ok(out.object_lock_configuration),
            // The answer of a bucket made without Object Lock.
            Err(e)
                if e.as_service_error().and_then(|se| se.code())
                    == Some("ObjectLockConfigurationNotFoundError") =>
            {
                Ok(None)
            }
            Err(e) => Err(self.err("GetObjectLockConfiguration", &self.bucket, &e)),
        }
    }
}

/// The versioning status in a GetBucketVersioning answer whose root element
/// is `GetBucketVersioningResponse`: `Some(None)` when it has no status
/// (never enabled), `None` when the body is not such an answer at all.
fn versioning_in_misnamed_answer(body: &[u8]) -> Option<Option<String>> {
    let text = std::str::from_utf8(body).ok()?;
    if !text.contains("<GetBucketVersioningResponse") {
        return None;
    }
    let status = text
        .split_once("<Status>")
        .and_then(|(_, rest)| rest.split_once("</Status>"))
        .map(|(status, _)| status.trim().to_string());
    Some(status)
}

/// `Enabled, default GOVERNANCE retention of 30 days`, or `None` when
/// Object Lock is not enabled.
fn describe_lock(c: &aws_sdk_s3::types::ObjectLockConfiguration) -> Option<String> {
    let enabled = c.object_lock_enabled.as_ref()?.as_str().to_string();
    let retention = c.rule.as_ref().and_then(|r| r.default_retention.as_ref());
    Some(match retention {
        None => format!("{enabled}, no default retention"),
        Some(d) => {
            let mode = d.mode.as_ref().map_or("", |m| m.as_str());
            let length = match (d.days, d.years) {
                (Some(n), _) => format!("{n} day{}", if n == 1 { "" } else { "s" }),
                (None, Some(n)) => format!("{n} year{}", if n == 1 { "" } else { "s" }),
                (None, None) => "an unstated time".to_string(),
            };
            format!("{enabled}, default {mode} retention of {length}")
        }
    })
}

struct DownloadState {
    client: Client,
    bucket: String,
    /// For messages: where requests go.
    endpoint: String,
    full_key: String,
    key: String,
    location: String,
    version: Option<String>,
    etag: Option<String>,
    offset: u64,
    resumes_left: u32,
    body: Option<SdkByteStream>,
}

impl DownloadState {
    async fn next(mut self) -> Option<(Result<Bytes, StorageError>, Self)> {
        loop {
            let body = self.body.as_mut()?;
            match body.try_next().await {
                Ok(Some(chunk)) => {
                    self.offset += chunk.len() as u64;
                    return Some((Ok(chunk), self));
                }
                Ok(None) => return None,
                Err(e) if self.resumes_left > 0 => {
                    self.resumes_left -= 1;
                    tracing::warn!(event = "download_resumed", key = %self.key, offset = self.offset, error = %error_chain(&e), "Download interrupted; resuming.");
                    let resumed = self
                        .client
                        .get_object()
                        .bucket(&self.bucket)
                        .key(&self.full_key)
                        .set_version_id(self.version.clone())
                        .set_if_match(self.etag.clone())
                        .range(format!("bytes={}-", self.offset))
                        .send()
                        .await;
                    match resumed {
                        Ok(out) => self.body = Some(out.body),
                        Err(e) => {
                            let err = map_error(
                                "get",
                                &self.location,
                                &self.key,
                                &self.bucket,
                                &self.endpoint,
                                &e,
                            );
                            self.body = None;
                            return Some((Err(err), self));
                        }
                    }
                }
                Err(e) => {
                    let err = StorageError::new(
                        "get",
                        &self.location,
                        &self.key,
                        StorageErrorKind::Transient,
                        error_chain(&e),
                    );
                    self.body = None;
                    return Some((Err(err), self));
                }
            }
        }
    }
}

struct S3Upload {
    client: Client,
    bucket: String,
    /// For messages: where requests go.
    endpoint: String,
    full_key: String,
    key: String,
    location: String,
    budget: PartBudget,
    parts_per_step: usize,
    upload_id: Option<String>,
    /// The part being assembled: its number, its full size, its bytes.
    filling: Option<(usize, usize, PartBody)>,
    /// The first part is held back: if the stream ends within it, one
    /// PutObject is cheaper than a multipart upload.
    first: Option<PartBody>,
    next_part: usize,
    in_flight: JoinSet<Result<CompletedPart, StorageError>>,
    done: Vec<CompletedPart>,
    size: u64,
}

impl S3Upload {
    fn fail<E>(&self, op: &'static str, e: &SdkError<E, HttpResponse>) -> StorageError
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
    {
        map_error(
            op,
            &self.location,
            &self.key,
            &self.bucket,
            &self.endpoint,
            e,
        )
    }

    fn err(&self, kind: StorageErrorKind, detail: impl Into<String>) -> StorageError {
        StorageError::new("upload", &self.location, &self.key, kind, detail)
    }

    fn spill_err(&self, e: &std::io::Error) -> StorageError {
        self.err(
            StorageErrorKind::Other,
            format!(
                "writing a part to a temporary file in {}: {e} (set TMPDIR to a directory \
                 with room for a few parts)",
                self.budget.spill_dir().display()
            ),
        )
    }

    async fn start_multipart(&mut self) -> Result<(), StorageError> {
        let out = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(&self.full_key)
            .checksum_algorithm(ChecksumAlgorithm::Crc32C)
            .tagging(data_tagging())
            .send()
            .await
            .map_err(|e| self.fail("upload", &e))?;
        self.upload_id = Some(out.upload_id.ok_or_else(|| {
            self.err(
                StorageErrorKind::Other,
                "CreateMultipartUpload returned no upload id",
            )
        })?);
        Ok(())
    }

    /// Hands a full part on: holds the first back, and starts the
    /// multipart upload when a second one arrives.
    async fn finish_part(&mut self, number: usize, body: PartBody) -> Result<(), StorageError> {
        if self.upload_id.is_none() {
            match self.first.take() {
                None => {
                    self.first = Some(body);
                    return Ok(());
                }
                Some(first) => {
                    self.start_multipart().await?;
                    self.send_part(1, first).await?;
                }
            }
        }
        self.send_part(number, body).await
    }

    async fn send_part(&mut self, number: usize, data: PartBody) -> Result<(), StorageError> {
        if number > MAX_PARTS {
            return Err(self.err(
                StorageErrorKind::Other,
                format!("more than {MAX_PARTS} parts; the object is larger than S3 allows"),
            ));
        }
        while self.in_flight.len() >= PARTS_IN_FLIGHT {
            self.reap_one().await?;
        }
        let (body, sent) = data.into_body().await.map_err(|e| self.spill_err(&e))?;
        let req = self
            .client
            .upload_part()
            .bucket(&self.bucket)
            .key(&self.full_key)
            .upload_id(self.upload_id.clone().expect("multipart started"))
            .part_number(number as i32)
            .checksum_algorithm(ChecksumAlgorithm::Crc32C)
            .body(body);
        let (location, key, bucket) =
            (self.location.clone(), self.key.clone(), self.bucket.clone());
        let endpoint = self.endpoint.clone();
        self.in_flight.spawn(async move {
            let out = req.send().await;
            // The buffer or spill file is needed until the last retry.
            drop(sent);
            let out =
                out.map_err(|e| map_error("upload part", &location, &key, &bucket, &endpoint, &e))?;
            Ok(CompletedPart::builder()
                .part_number(number as i32)
                .set_e_tag(out.e_tag)
                .set_checksum_crc32_c(out.checksum_crc32_c)
                .build())
        });
        Ok(())
    }

    async fn reap_one(&mut self) -> Result<(), StorageError> {
        if let Some(joined) = self.in_flight.join_next().await {
            let part = joined.map_err(|e| {
                self.err(StorageErrorKind::Other, format!("part task failed: {e}"))
            })??;
            self.done.push(part);
        }
        Ok(())
    }

    /// After CompleteMultipartUpload failed: whether the object at the key
    /// is the one this upload's parts make, which means an earlier attempt
    /// completed it and only its answer was lost. S3 gives such an object
    /// the ETag [`multipart_etag`] computes, which no other upload matches
    /// unless it had byte-identical parts.
    async fn completed_by_lost_attempt(&self, expected_etag: Option<String>) -> Option<Stored> {
        let expected_etag = expected_etag?;
        let out = self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(&self.full_key)
            .send()
            .await
            .ok()?;
        let size = out.content_length.unwrap_or(-1);
        if size != self.size as i64 || out.e_tag.as_deref() != Some(expected_etag.as_str()) {
            return None;
        }
        tracing::info!(event = "upload_answer_lost", key = %self.key, "The answer to completing the upload was lost; the object there is the one its parts make, so the first attempt completed it.");
        Some(Stored {
            size: self.size,
            etag: out.e_tag,
            version_id: real_version(out.version_id),
        })
    }

    async fn abort_now(&mut self) -> Result<(), StorageError> {
        // Dropping the tasks and the parts removes their spill files.
        self.in_flight.abort_all();
        while self.in_flight.join_next().await.is_some() {}
        self.filling = None;
        self.first = None;
        if let Some(id) = self.upload_id.take() {
            self.client
                .abort_multipart_upload()
                .bucket(&self.bucket)
                .key(&self.full_key)
                .upload_id(id)
                .send()
                .await
                .map_err(|e| self.fail("abort upload", &e))?;
        }
        Ok(())
    }

    /// A single PutObject of the held first part: the whole object.
    async fn put_whole(&mut self) -> Result<Stored, StorageError> {
        let part = self
            .first
            .take()
            .unwrap_or_else(|| PartBody::unbudgeted(Bytes::new()));
        let (body, sent) = part.into_body().await.map_err(|e| self.spill_err(&e))?;
        let out = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(&self.full_key)
            .if_none_match("*")
            .tagging(data_tagging())
            .body(body)
            .send()
            .await;
        match out {
            Ok(out) => Ok(Stored {
                size: self.size,
                etag: out.e_tag,
                version_id: real_version(out.version_id),
            }),
            Err(e) => {
                let err = self.fail("upload", &e);
                if err.kind == StorageErrorKind::PreconditionFailed
                    && let Ok(sent) = sent.bytes().await
                    && let Some(stored) = stored_by_lost_attempt(
                        &self.client,
                        &self.bucket,
                        &self.full_key,
                        &self.key,
                        &sent,
                    )
                    .await
                {
                    return Ok(stored);
                }
                Err(err)
            }
        }
    }
}

#[async_trait]
impl Upload for S3Upload {
    /// Pieces, not S3 parts: the parts are assembled here, in memory or in
    /// a spill file (see [`parts`]), so the caller buffers only a piece.
    fn next_part_size(&self) -> usize {
        FEED_BYTES
    }

    async fn put_part(&mut self, part: Bytes) -> Result<(), StorageError> {
        self.size += part.len() as u64;
        let mut rest = &part[..];
        while !rest.is_empty() {
            let (number, size, mut body) = match self.filling.take() {
                Some(f) => f,
                None => {
                    let number = self.next_part;
                    self.next_part += 1;
                    let size = part_size_stepped(number, self.parts_per_step);
                    let body = self
                        .budget
                        .start(size)
                        .await
                        .map_err(|e| self.spill_err(&e))?;
                    (number, size, body)
                }
            };
            let take = (size - body.len()).min(rest.len());
            body.append(&rest[..take])
                .await
                .map_err(|e| self.spill_err(&e))?;
            rest = &rest[take..];
            if body.len() == size {
                self.finish_part(number, body).await?;
            } else {
                self.filling = Some((number, size, body));
            }
        }
        Ok(())
    }

    async fn complete(mut self: Box<Self>) -> Result<Stored, StorageError> {
        let result: Result<Stored, StorageError> = async {
            if let Some((number, _, body)) = self.filling.take() {
                self.finish_part(number, body).await?;
            }
            if self.upload_id.is_none() {
                return self.put_whole().await;
            }
            while !self.in_flight.is_empty() {
                self.reap_one().await?;
            }
            let mut parts = std::mem::take(&mut self.done);
            parts.sort_by_key(|p| p.part_number);
            let expected_etag = multipart_etag(&parts);
            let out = self
                .client
                .complete_multipart_upload()
                .bucket(&self.bucket)
                .key(&self.full_key)
                .upload_id(self.upload_id.clone().expect("multipart started"))
                .if_none_match("*")
                .multipart_upload(
                    CompletedMultipartUpload::builder()
                        .set_parts(Some(parts))
                        .build(),
                )
                .send()
                .await;
            match out {
                Ok(out) => Ok(Stored {
                    size: self.size,
                    etag: out.e_tag,
                    version_id: real_version(out.version_id),
                }),
                Err(e) => {
                    let err = self.fail("complete upload", &e);
                    // A retry after a lost answer finds the upload gone
                    // (NoSuchUpload) or the key taken by it (412).
                    if matches!(
                        err.kind,
                        StorageErrorKind::PreconditionFailed | StorageErrorKind::NotFound
                    ) && let Some(stored) = self.completed_by_lost_attempt(expected_etag).await
                    {
                        return Ok(stored);
                    }
                    Err(err)
                }
            }
        }
        .await;
        match result {
            Ok(stored) => Ok(stored),
            Err(e) => {
                if let Err(abort) = self.abort_now().await {
                    tracing::warn!(event = "upload_abort_failed", key = %self.key, error = %abort, "Could not abort the multipart upload; the bucket's lifecycle rule removes it.");
                }
                Err(e)
            }
        }
    }

    async fn abort(mut self: Box<Self>) -> Result<(), StorageError> {
        self.abort_now().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn part_sizes_fit_the_largest_object_in_ten_thousand_parts() {
        let total: u128 = (1..=MAX_PARTS).map(|n| part_size(n) as u128).sum();
        assert!(
            total >= 5 * 1024u128.pow(4),
            "10,000 parts hold only {total} bytes"
        );
        assert!(
            (1..=MAX_PARTS)
                .all(|n| part_size(n) >= 5 * 1024 * 1024 && part_size(n) <= MAX_PART_BYTES)
        );
        assert_eq!(part_size(1), FIRST_PART_BYTES);
        assert_eq!(part_size(1001), 2 * FIRST_PART_BYTES);
    }

    #[test]
    fn object_lock_descriptions() {
        use aws_sdk_s3::types::{
            DefaultRetention, ObjectLockConfiguration, ObjectLockEnabled, ObjectLockRetentionMode,
            ObjectLockRule,
        };
        let enabled =
            ObjectLockConfiguration::builder().object_lock_enabled(ObjectLockEnabled::Enabled);
        assert_eq!(
            describe_lock(&ObjectLockConfiguration::builder().build()),
            None
        );
        assert_eq!(
            describe_lock(&enabled.clone().build()).as_deref(),
            Some("Enabled, no default retention")
        );
        let rule = |d: DefaultRetention| ObjectLockRule::builder().default_retention(d).build();
        let years = DefaultRetention::builder()
            .mode(ObjectLockRetentionMode::Compliance)
            .years(1)
            .build();
        assert_eq!(
            describe_lock(&enabled.rule(rule(years)).build()).as_deref(),
            Some("Enabled, default COMPLIANCE retention of 1 year")
        );
    }

    #[test]
    fn versioning_status_from_a_misnamed_answer() {
        let answer = |inner: &str| {
            format!(
                "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<GetBucketVersioningResponse xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">{inner}</GetBucketVersioningResponse>"
            )
        };
        assert_eq!(
            versioning_in_misnamed_answer(answer("<Status>Enabled</Status>").as_bytes()),
            Some(Some("Enabled".to_string()))
        );
        assert_eq!(
            versioning_in_misnamed_answer(answer("").as_bytes()),
            Some(None)
        );
        assert_eq!(
            versioning_in_misnamed_answer(b"<Error><Code>X</Code></Error>"),
            None
        );
    }
}
