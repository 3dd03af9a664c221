//! The HTTP ingest sink: POSTs each batch to a remote endpoint with an
//! `Idempotency-Key` derived from the sink name and the fixed range, so
//! every retry (and every retry after a restart) carries the same key.

use crate::format::EncodedBatch;
use crate::sinks::config::BatchConfig;
use crate::secret::{resolve_secret, MaskedUrl, Secret};
use crate::sinks::Outcome;
use crate::units::{ByteSize, HumanDuration};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// `kind = "http"`.
pub const NAME: &str = "http";

/// A batch is one body (file, request, object), whatever its format.
pub const MESSAGE_PER_EVENT: bool = false;

/// Sends a body it holds whole (1 MiB batches, one in flight, by default).
pub const STREAMS_BODY: bool = false;

/// Batch bounds where the config gives none.
pub fn default_batch() -> BatchConfig {
    BatchConfig {
        max_events: 1000,
        max_bytes: ByteSize::mib(1),
        max_age: HumanDuration::secs(1),
        in_flight: 1,
    }
}

pub use {HttpConfig as Config, HttpSink as Sink};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// Credentials in it (`https://user:pass@host/`) are sent as basic auth
    /// and masked wherever the URL is printed.
    pub url: MaskedUrl,
    /// Extra request headers; their values are masked when printed, since
    /// they often carry API keys.
    #[serde(default)]
    pub headers: BTreeMap<String, Secret>,
    /// Bearer token: directly, or via `token_env` / `token_file`.
    pub token: Option<Secret>,
    pub token_env: Option<String>,
    pub token_file: Option<PathBuf>,
    #[serde(default = "default_timeout")]
    pub timeout: HumanDuration,
    /// A PEM file of extra CA certificates to trust (system roots are trusted too).
    pub ca_file: Option<PathBuf>,
}

fn default_timeout() -> HumanDuration {
    HumanDuration::secs(30)
}

impl HttpConfig {
    pub fn validate(&self, name: &str) -> Result<(), String> {
        let url = reqwest::Url::parse(self.url.expose())
            .map_err(|e| format!("sinks.{name}.url: `{}` is not a URL: {e}", self.url))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(format!(
                "sinks.{name}.url: only http:// and https:// are supported"
            ));
        }
        for (header, value) in &self.headers {
            reqwest::header::HeaderName::from_bytes(header.as_bytes())
                .map_err(|_| format!("sinks.{name}.headers: `{header}` is not a header name"))?;
            reqwest::header::HeaderValue::from_str(value.expose())
                .map_err(|_| format!("sinks.{name}.headers.{header}: not a valid header value"))?;
        }
        resolve_secret(
            &format!("sinks.{name}.token"),
            self.token.as_ref(),
            self.token_env.as_deref(),
            self.token_file.as_deref(),
        )
        .map_err(|e| e.to_string())?;
        if self.timeout.0.is_zero() {
            return Err(format!("sinks.{name}.timeout: must be greater than 0"));
        }
        Ok(())
    }
}

pub struct HttpSink {
    name: String,
    url: reqwest::Url,
    /// The URL as errors and logs show it: without its password.
    shown_url: String,
    client: reqwest::Client,
    headers: reqwest::header::HeaderMap,
}

impl HttpSink {
    pub fn new(name: &str, config: &HttpConfig, _data_dir: &Path) -> Result<HttpSink, String> {
        config.validate(name)?;
        let mut builder = reqwest::Client::builder()
            .timeout(config.timeout.0)
            .connect_timeout(config.timeout.0.min(Duration::from_secs(10)))
            .redirect(reqwest::redirect::Policy::none());
        if let Some(path) = &config.ca_file {
            let pem = std::fs::read(path).map_err(|e| {
                format!("sinks.{name}.ca_file: cannot read {}: {e}", path.display())
            })?;
            for certificate in reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| format!("sinks.{name}.ca_file: {}: {e}", path.display()))?
            {
                builder = builder.add_root_certificate(certificate);
            }
        }
        let client = builder
            .build()
            .map_err(|e| format!("sinks.{name}: cannot build the HTTP client: {e}"))?;
        let mut headers = reqwest::header::HeaderMap::new();
        for (header, value) in &config.headers {
            let mut value: reqwest::header::HeaderValue =
                value.expose().parse().expect("validated");
            value.set_sensitive(true);
            headers.insert(
                reqwest::header::HeaderName::from_bytes(header.as_bytes()).expect("validated"),
                value,
            );
        }
        let token = resolve_secret(
            &format!("sinks.{name}.token"),
            config.token.as_ref(),
            config.token_env.as_deref(),
            config.token_file.as_deref(),
        )
        .map_err(|e| e.to_string())?;
        if let Some(token) = token {
            let mut value: reqwest::header::HeaderValue = format!("Bearer {token}")
                .parse()
                .map_err(|_| format!("sinks.{name}.token: not usable in a header"))?;
            value.set_sensitive(true);
            headers.insert(reqwest::header::AUTHORIZATION, value);
        }
        Ok(HttpSink {
            name: name.to_string(),
            url: reqwest::Url::parse(config.url.expose()).expect("validated"),
            shown_url: config.url.masked(),
            client,
            headers,
        })
    }

    /// The same for every attempt at this range, before and after restarts.
    pub fn idempotency_key(&self, batch: &EncodedBatch) -> String {
        format!("{}-{}", self.name, batch.range_key())
    }

    pub async fn deliver(&self, batch: &EncodedBatch) -> Outcome {
        let body = match crate::sinks::whole_body(batch).await {
            Ok(body) => body,
            Err(outcome) => return outcome,
        };
        let mut request = self
            .client
            .post(self.url.clone())
            .headers(self.headers.clone())
            .header("idempotency-key", self.idempotency_key(batch))
            .header("content-type", batch.content_type)
            .header("x-outboxd-first-seq", batch.first_seq)
            .header("x-outboxd-last-seq", batch.last_seq)
            .body(body);
        if let Some(encoding) = batch.content_encoding {
            request = request.header("content-encoding", encoding);
        }
        let response = match request.send().await {
            Ok(response) => response,
            Err(e) => {
                let what = if e.is_timeout() {
                    "timed out"
                } else {
                    "failed"
                };
                // reqwest's message names the URL, credentials and all.
                let e = e.without_url();
                return Outcome::Retry {
                    after: None,
                    reason: format!("POST {} {what}: {}", self.shown_url, crate::sinks::error_chain(&e)),
                };
            }
        };
        let status = response.status();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_retry_after);
        let reason = || async move {
            let body = response.text().await.unwrap_or_default();
            let snippet: String = body.chars().take(200).collect();
            format!("{status}: {}", snippet.trim())
        };
        classify(status.as_u16(), retry_after, reason).await
    }
}

async fn classify<F, Fut>(status: u16, retry_after: Option<Duration>, reason: F) -> Outcome
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = String>,
{
    match status {
        200..=299 | 409 => Outcome::Delivered,
        413 => Outcome::TooLarge {
            reason: reason().await,
        },
        429 | 503 => Outcome::Retry {
            after: retry_after,
            reason: reason().await,
        },
        408 | 500..=599 => Outcome::Retry {
            after: None,
            reason: reason().await,
        },
        401 | 403 => Outcome::Halted {
            reason: reason().await,
        },
        // A redirect or other non-2xx success is a misconfigured URL, not bad content.
        100..=199 | 300..=399 => Outcome::Halted {
            reason: format!("unexpected {}; check the sink's url", reason().await),
        },
        _ => Outcome::Rejected {
            reason: reason().await,
        },
    }
}

/// `Retry-After` as seconds or an HTTP date.
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let when = httpdate::parse_http_date(value).ok()?;
    Some(
        when.duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn statuses_map_to_outcomes() {
        let reason = || async { "r".to_string() };
        assert_eq!(classify(200, None, reason).await, Outcome::Delivered);
        assert_eq!(classify(409, None, reason).await, Outcome::Delivered);
        assert!(matches!(
            classify(413, None, reason).await,
            Outcome::TooLarge { .. }
        ));
        let after = Some(Duration::from_secs(3));
        assert!(
            matches!(classify(429, after, reason).await, Outcome::Retry { after: Some(d), .. } if d.as_secs() == 3)
        );
        assert!(matches!(
            classify(503, None, reason).await,
            Outcome::Retry { after: None, .. }
        ));
        assert!(matches!(
            classify(500, None, reason).await,
            Outcome::Retry { .. }
        ));
        assert!(matches!(
            classify(408, None, reason).await,
            Outcome::Retry { .. }
        ));
        assert!(matches!(
            classify(401, None, reason).await,
            Outcome::Halted { .. }
        ));
        assert!(matches!(
            classify(403, None, reason).await,
            Outcome::Halted { .. }
        ));
        assert!(matches!(
            classify(302, None, reason).await,
            Outcome::Halted { .. }
        ));
        assert!(matches!(
            classify(400, None, reason).await,
            Outcome::Rejected { .. }
        ));
        assert!(matches!(
            classify(422, None, reason).await,
            Outcome::Rejected { .. }
        ));
    }

    #[test]
    fn retry_after_takes_seconds_or_a_date() {
        assert_eq!(parse_retry_after("7"), Some(Duration::from_secs(7)));
        let soon = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(30));
        let parsed = parse_retry_after(&soon).unwrap();
        assert!(parsed <= Duration::from_secs(30) && parsed >= Duration::from_secs(28));
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon"), None);
    }
}
