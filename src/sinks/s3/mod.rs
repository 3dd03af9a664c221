//! The S3 / MinIO sink (rust-s3): one object per batch, keyed by the fixed
//! range, so a retried or replayed batch overwrites the same key and never
//! leaves a duplicate object. Each object is one presigned PUT (see `put`).

use crate::clock::format_key_time;
use crate::format::{seq_key, Body, EncodedBatch, Measured};
use crate::sinks::config::BatchConfig;
use crate::secret::{resolve_secret, MaskedUrl, Secret};
use crate::sinks::Outcome;
use crate::units::{ByteSize, HumanDuration};
use s3::command::Command;
use s3::creds::Credentials;
use s3::error::S3Error;
use s3::request::tokio_backend::ReqwestRequest;
use s3::request::Request as _;
use s3::{Bucket, BucketConfiguration, Region};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

/// `kind = "s3"`.
pub const NAME: &str = "s3";

/// A batch is one body (file, request, object), whatever its format.
pub const MESSAGE_PER_EVENT: bool = false;

/// Streams an uncompressed body from the outbox: 8 MiB objects, several in flight.
pub const STREAMS_BODY: bool = true;

/// Batch bounds where the config gives none.
pub fn default_batch() -> BatchConfig {
    BatchConfig {
        max_events: 100_000,
        max_bytes: ByteSize::mib(8),
        max_age: HumanDuration::secs(60),
        in_flight: 4,
    }
}

pub use {S3Config as Config, S3Sink as Sink};

pub const DEFAULT_KEY_TEMPLATE: &str =
    "{prefix}{yyyy}/{mm}/{dd}/{hh}/{first_seq:020}-{last_seq:020}{ext}";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct S3Config {
    /// e.g. "http://127.0.0.1:9000" for MinIO, "https://s3.eu-west-1.amazonaws.com".
    pub endpoint: MaskedUrl,
    #[serde(default = "default_region")]
    pub region: String,
    pub bucket: String,
    /// Path-style addressing (`endpoint/bucket/key`), as MinIO needs.
    #[serde(default = "yes")]
    pub path_style: bool,
    pub access_key: Option<Secret>,
    pub access_key_env: Option<String>,
    pub access_key_file: Option<PathBuf>,
    pub secret_key: Option<Secret>,
    pub secret_key_env: Option<String>,
    pub secret_key_file: Option<PathBuf>,
    /// Create the bucket when missing ("already exists/owned" is fine).
    #[serde(default)]
    pub create_bucket: bool,
    #[serde(default)]
    pub prefix: String,
    /// Placeholders: {prefix} {yyyy} {mm} {dd} {hh} {first_seq} {last_seq}
    /// {first_seq:020} {last_seq:020} {sink} {ext}. Dated by the batch's
    /// first event's receive time (UTC).
    #[serde(default = "default_template")]
    pub key_template: String,
    #[serde(default = "default_timeout")]
    pub timeout: HumanDuration,
    /// Accept any TLS certificate (testing only). A custom CA is trusted
    /// through the system store or the SSL_CERT_FILE environment variable.
    #[serde(default)]
    pub tls_skip_verify: bool,
}

fn default_region() -> String {
    "us-east-1".into()
}
fn yes() -> bool {
    true
}
fn default_template() -> String {
    DEFAULT_KEY_TEMPLATE.into()
}
fn default_timeout() -> HumanDuration {
    HumanDuration::secs(30)
}

impl S3Config {
    pub fn validate(&self, name: &str) -> Result<(), String> {
        let url = reqwest::Url::parse(self.endpoint.expose()).map_err(|e| {
            format!(
                "sinks.{name}.endpoint: `{}` is not a URL: {e}",
                self.endpoint
            )
        })?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(format!(
                "sinks.{name}.endpoint: only http:// and https:// are supported"
            ));
        }
        if self.bucket.is_empty() {
            return Err(format!("sinks.{name}.bucket: must not be empty"));
        }
        if !self.key_template.contains("{first_seq") || !self.key_template.contains("{last_seq") {
            return Err(format!(
                "sinks.{name}.key_template: must contain {{first_seq}} and {{last_seq}} so that each range has its own key"
            ));
        }
        self.credentials(name).map(|_| ())
    }

    fn credentials(&self, name: &str) -> Result<(String, String), String> {
        let access = resolve_secret(
            &format!("sinks.{name}.access_key"),
            self.access_key.as_ref(),
            self.access_key_env.as_deref(),
            self.access_key_file.as_deref(),
        )
        .map_err(|e| e.to_string())?;
        let secret = resolve_secret(
            &format!("sinks.{name}.secret_key"),
            self.secret_key.as_ref(),
            self.secret_key_env.as_deref(),
            self.secret_key_file.as_deref(),
        )
        .map_err(|e| e.to_string())?;
        match (access, secret) {
            (Some(a), Some(s)) => Ok((a, s)),
            _ => Err(format!(
                "sinks.{name}: set access_key and secret_key (or their _env / _file forms)"
            )),
        }
    }
}

pub struct S3Sink {
    name: String,
    config: S3Config,
    /// Sends the object PUTs; rust-s3 signs them and does the rest.
    client: reqwest::Client,
    bucket: Box<Bucket>,
    region: Region,
    bucket_ready: AtomicBool,
}

impl S3Sink {
    pub fn new(name: &str, config: &S3Config, _data_dir: &Path) -> Result<S3Sink, String> {
        config.validate(name)?;
        let (access, secret) = config.credentials(name)?;
        let credentials = Credentials::new(Some(&access), Some(&secret), None, None, None)
            .map_err(|e| format!("sinks.{name}: credentials: {e}"))?;
        let region = Region::Custom {
            region: config.region.clone(),
            endpoint: config.endpoint.expose().trim_end_matches('/').to_string(),
        };
        let mut bucket = Bucket::new(&config.bucket, region.clone(), credentials)
            .map_err(|e| format!("sinks.{name}: {e}"))?;
        if config.path_style {
            bucket = bucket.with_path_style();
        }
        bucket = bucket
            .with_request_timeout(config.timeout.0)
            .map_err(|e| format!("sinks.{name}: {e}"))?;
        if config.tls_skip_verify {
            bucket = Box::new(
                bucket
                    .set_dangerous_config(true, true)
                    .map_err(|e| format!("sinks.{name}: {e}"))?,
            );
        }
        let client = reqwest::Client::builder()
            .timeout(config.timeout.0)
            .connect_timeout(config.timeout.0.min(std::time::Duration::from_secs(10)))
            .redirect(reqwest::redirect::Policy::none())
            .danger_accept_invalid_certs(config.tls_skip_verify)
            .build()
            .map_err(|e| format!("sinks.{name}: cannot build the HTTP client: {e}"))?;
        Ok(S3Sink {
            name: name.to_string(),
            config: config.clone(),
            client,
            bucket,
            region,
            bucket_ready: AtomicBool::new(!config.create_bucket),
        })
    }

    /// The object key of a batch.
    pub fn key(&self, batch: &EncodedBatch) -> String {
        let [yyyy, mm, dd, hh] = format_key_time(batch.first_received_ms);
        self.config
            .key_template
            .replace("{prefix}", &self.config.prefix)
            .replace("{yyyy}", &yyyy)
            .replace("{mm}", &mm)
            .replace("{dd}", &dd)
            .replace("{hh}", &hh)
            .replace("{first_seq:020}", &seq_key(batch.first_seq))
            .replace("{last_seq:020}", &seq_key(batch.last_seq))
            .replace("{first_seq}", &batch.first_seq.to_string())
            .replace("{last_seq}", &batch.last_seq.to_string())
            .replace("{sink}", &self.name)
            .replace("{ext}", &batch.extension)
    }

    /// With `create_bucket`: looks for the bucket first (HeadBucket) and
    /// creates it only when it is missing; "already owned by you" counts
    /// as created.
    async fn ensure_bucket(&self) -> Result<(), Outcome> {
        if self.bucket_ready.load(Ordering::Relaxed) {
            return Ok(());
        }
        let head = async {
            ReqwestRequest::new(&self.bucket, "/", Command::HeadObject)
                .await?
                .response_data(false)
                .await
        }
        .await;
        match head {
            Ok(response) if (200..300).contains(&response.status_code()) => {
                self.mark_ready("bucket exists");
                return Ok(());
            }
            Ok(response) if response.status_code() == 404 => {}
            Ok(response) => {
                return Err(classify(
                    response.status_code(),
                    "",
                    "HEAD bucket (looking for it)",
                ))
            }
            Err(e) => return Err(classify_error(e, "HEAD bucket (looking for it)")),
        }
        let command = Command::CreateBucket {
            config: bucket_configuration(&self.region),
        };
        let created = async {
            ReqwestRequest::new(&self.bucket, "", command)
                .await?
                .response_data(false)
                .await
        }
        .await;
        match created {
            Ok(response)
                if (200..300).contains(&response.status_code())
                    || response.as_str().is_ok_and(|body| {
                        matches!(error_code(body), "BucketAlreadyOwnedByYou")
                    }) =>
            {
                self.mark_ready("bucket created");
                Ok(())
            }
            Ok(response) => Err(classify(
                response.status_code(),
                response.as_str().unwrap_or(""),
                "creating the bucket",
            )),
            Err(e) => Err(classify_error(e, "creating the bucket")),
        }
    }

    fn mark_ready(&self, what: &str) {
        tracing::info!(sink = %self.name, bucket = %self.config.bucket, "{what}");
        self.bucket_ready.store(true, Ordering::Relaxed);
    }

    pub async fn deliver(&self, batch: &EncodedBatch) -> Outcome {
        if let Err(outcome) = self.ensure_bucket().await {
            return outcome;
        }
        let key = self.key(batch);
        let what = format!("PUT {key}");
        let answer = match self.put(&key, batch).await {
            Ok(answer) => answer,
            Err(outcome) => return outcome,
        };
        let status = answer.status().as_u16();
        if (200..300).contains(&status) {
            return Outcome::Delivered;
        }
        let body = answer.text().await.unwrap_or_default();
        let outcome = classify(status, &body, &what);
        if self.config.create_bucket && error_code(&body) == "NoSuchBucket" {
            // Deleted behind our back: create it again on the next attempt.
            self.bucket_ready.store(false, Ordering::Relaxed);
            return Outcome::Retry {
                after: None,
                reason: format!("{what}: NoSuchBucket; creating it again"),
            };
        }
        outcome
    }

    /// One PUT of the whole object to a URL rust-s3 presigns with
    /// `UNSIGNED-PAYLOAD`: the body is never hashed for the signature
    /// (SHA-256) nor for `Content-MD5`, which cost a sixth of the drain's
    /// CPU. The server still checks the bytes: `x-amz-checksum-crc32`
    /// (signed, SIMD-fast) travels with them. One PUT carries up to 5 GiB,
    /// and always the `Content-Encoding`. An uncompressed body streams from
    /// the outbox as it is sent, with its length and CRC-32 known from when
    /// it was gathered, so an object in flight holds no copy of its events.
    /// Err: the outcome, when there is no answer to classify.
    async fn put(&self, key: &str, batch: &EncodedBatch) -> Result<reqwest::Response, Outcome> {
        use base64::Engine as _;
        use reqwest::header::{
            HeaderMap, HeaderValue, CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE,
        };
        let what = || format!("PUT {key}");
        let (measured, body) = match &batch.body {
            Body::Bytes(bytes) => (Measured::of(bytes), reqwest::Body::from(bytes.clone())),
            Body::Replayed(replay) => {
                let measured = replay.measure().await.map_err(|e| Outcome::Retry {
                    after: None,
                    reason: format!("{}: reading the batch again: {e}", what()),
                })?;
                // Evicted while in flight: as after a restart, a range that
                // holds nothing any more gets no object.
                let Some(measured) = measured else {
                    return Err(Outcome::Delivered);
                };
                let chunks = replay.clone().chunks(measured);
                (measured, reqwest::Body::wrap_stream(chunks))
            }
        };
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static(batch.content_type));
        if let Some(encoding) = batch.content_encoding {
            headers.insert(CONTENT_ENCODING, HeaderValue::from_static(encoding));
        }
        let checksum = base64::engine::general_purpose::STANDARD.encode(measured.crc32.to_be_bytes());
        headers.insert(
            "x-amz-checksum-crc32",
            HeaderValue::from_str(&checksum).expect("base64 is a header value"),
        );
        let url = self
            .bucket
            .presign_put(key, PRESIGN_SECS, Some(headers.clone()), None)
            .await
            .map_err(|e| Outcome::Halted {
                reason: format!("{}: cannot sign the request: {e}", what()),
            })?;
        // Not signed: a stream has no length of its own to send.
        headers.insert(CONTENT_LENGTH, HeaderValue::from(measured.len));
        self.client
            .put(url)
            .headers(headers)
            .body(body)
            .send()
            .await
            .map_err(|e| Outcome::Retry {
                after: None,
                // Without the URL: its query carries the signature.
                reason: format!("{}: {}", what(), crate::sinks::error_chain(&e.without_url())),
            })
    }
}

/// How long a presigned PUT stays valid: it is sent at once, so only clock
/// skew and a slow start of the request matter.
const PRESIGN_SECS: u32 = 900;

/// What a CreateBucket request says about the region. AWS S3 refuses a
/// `LocationConstraint` of us-east-1 (InvalidLocationConstraint): there the
/// constraint must be left out, and rust-s3 only knows that for its own
/// us-east-1 region, not for a custom endpoint named us-east-1.
fn bucket_configuration(region: &Region) -> BucketConfiguration {
    let mut config = BucketConfiguration::default();
    let name = region.to_string();
    if !name.is_empty() && name != "us-east-1" {
        config.set_location_constraint(region.clone());
    }
    config
}

fn error_code(body: &str) -> &str {
    body.split_once("<Code>")
        .and_then(|(_, rest)| rest.split_once("</Code>"))
        .map_or("", |(code, _)| code)
}

fn classify(status: u16, body: &str, what: &str) -> Outcome {
    let code = error_code(body);
    let reason = if code.is_empty() {
        format!("{what}: HTTP {status}")
    } else {
        format!("{what}: HTTP {status} {code}")
    };
    match (status, code) {
        (_, "SlowDown" | "ServiceUnavailable" | "RequestTimeout" | "InternalError") => {
            Outcome::Retry {
                after: None,
                reason,
            }
        }
        (413, _) | (_, "EntityTooLarge") => Outcome::TooLarge { reason },
        (403, _) | (_, "InvalidAccessKeyId" | "SignatureDoesNotMatch" | "AccessDenied") => {
            Outcome::Halted { reason }
        }
        (408 | 429 | 500..=599, _) => Outcome::Retry {
            after: None,
            reason,
        },
        // Any other refusal of a PUT (NoSuchBucket, InvalidBucketName, ...) is
        // about the configuration, not the events: keep them and say why.
        _ => Outcome::Halted { reason },
    }
}

fn classify_error(error: S3Error, what: &str) -> Outcome {
    match error {
        S3Error::HttpFailWithBody(status, body) => classify(status, &body, what),
        // With its causes: "error sending request" alone does not say
        // whether the connection was refused, timed out or was reset.
        other => Outcome::Retry {
            after: None,
            reason: format!("{what}: {}", crate::sinks::error_chain(&other)),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn us_east_1_sends_no_location_constraint_other_regions_do() {
        let custom = |region: &str| Region::Custom {
            region: region.into(),
            endpoint: "http://127.0.0.1:9000".into(),
        };
        assert_eq!(
            bucket_configuration(&custom("us-east-1")).location_constraint_payload(),
            None
        );
        assert_eq!(
            bucket_configuration(&custom("eu-west-1")).location_constraint_payload(),
            Some("<CreateBucketConfiguration><LocationConstraint>eu-west-1</LocationConstraint></CreateBucketConfiguration>".into())
        );
    }

    #[test]
    fn s3_answers_map_to_outcomes() {
        let xml = |code: &str| {
            format!("<?xml version=\"1.0\"?><Error><Code>{code}</Code><Message>m</Message></Error>")
        };
        assert!(matches!(
            classify(403, &xml("SignatureDoesNotMatch"), "PUT"),
            Outcome::Halted { .. }
        ));
        assert!(matches!(
            classify(403, &xml("InvalidAccessKeyId"), "PUT"),
            Outcome::Halted { .. }
        ));
        assert!(
            matches!(classify(404, &xml("NoSuchBucket"), "PUT"), Outcome::Halted { reason } if reason.contains("NoSuchBucket"))
        );
        assert!(matches!(
            classify(503, &xml("SlowDown"), "PUT"),
            Outcome::Retry { .. }
        ));
        assert!(matches!(classify(500, "", "PUT"), Outcome::Retry { .. }));
        assert!(matches!(
            classify(400, &xml("EntityTooLarge"), "PUT"),
            Outcome::TooLarge { .. }
        ));
    }
}
