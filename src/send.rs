//! `outboxd send`: posts NDJSON (or a JSON array) from a file or stdin in
//! batches, and reports what the daemon accepted.

use crate::client::{Answer, Client};
use crate::event::json::push_compact;
use bytes::Bytes;
use serde_json::value::RawValue;
use std::io::BufRead;
use std::time::Duration;

pub struct SendOptions {
    pub batch_events: usize,
    pub batch_bytes: usize,
    pub token: Option<String>,
    /// How often a 503 (outbox full, shutting down) is retried after Retry-After.
    pub retries: u32,
    /// Redraw a progress line on stderr (events, bytes, rate): for a
    /// terminal, never when piped.
    pub progress: bool,
}

#[derive(Debug, Default, PartialEq, Eq)]
pub struct SendReport {
    pub requests: usize,
    pub accepted: u64,
    pub duplicates: u64,
    pub last_seq: i64,
    /// Body bytes sent in accepted requests.
    pub bytes: u64,
}

/// The progress line, redrawn at most five times a second.
struct Progress {
    enabled: bool,
    started: std::time::Instant,
    drawn: Option<std::time::Instant>,
}

impl Progress {
    fn update(&mut self, report: &SendReport) {
        let now = std::time::Instant::now();
        if !self.enabled
            || self
                .drawn
                .is_some_and(|at| now - at < Duration::from_millis(200))
        {
            return;
        }
        self.drawn = Some(now);
        eprint!("\r{}\x1b[K", progress_line(report, now - self.started));
    }

    fn finish(&self) {
        if self.drawn.is_some() {
            eprint!("\r\x1b[K");
        }
    }
}

fn progress_line(report: &SendReport, elapsed: Duration) -> String {
    let secs = elapsed.as_secs_f64().max(0.001);
    format!(
        "{} events, {:.1} MiB, {:.0} events/s",
        report.accepted + report.duplicates,
        report.bytes as f64 / (1 << 20) as f64,
        (report.accepted + report.duplicates) as f64 / secs
    )
}

/// One batch: NDJSON text and the input line each of its lines came from.
#[derive(Default)]
struct Batch {
    body: String,
    lines: Vec<usize>,
}

pub async fn send(
    client: &mut Client,
    input: Box<dyn BufRead>,
    options: &SendOptions,
) -> anyhow::Result<SendReport> {
    let mut report = SendReport::default();
    let mut progress = Progress {
        enabled: options.progress,
        started: std::time::Instant::now(),
        drawn: None,
    };
    let result = async {
        let mut batch = Batch::default();
        for item in read_events(input)? {
            let (line, text) = item?;
            if !batch.lines.is_empty()
                && (batch.lines.len() >= options.batch_events
                    || batch.body.len() + text.len() > options.batch_bytes)
            {
                post(client, std::mem::take(&mut batch), options, &mut report).await?;
                progress.update(&report);
            }
            batch.body.push_str(&text);
            batch.body.push('\n');
            batch.lines.push(line);
        }
        if !batch.lines.is_empty() {
            post(client, batch, options, &mut report).await?;
        }
        anyhow::Ok(())
    }
    .await;
    progress.finish();
    result.map(|()| report)
}

type Item = anyhow::Result<(usize, String)>;

/// Events of the input with their line numbers: NDJSON line by line, or a
/// JSON array (detected by its leading `[`) element by element.
fn read_events(mut input: Box<dyn BufRead>) -> anyhow::Result<Box<dyn Iterator<Item = Item>>> {
    let starts_with_bracket = loop {
        let buffer = input.fill_buf()?;
        match buffer.iter().position(|b| !b.is_ascii_whitespace()) {
            Some(i) => break buffer[i] == b'[',
            None if buffer.is_empty() => break false,
            None => {
                let n = buffer.len();
                input.consume(n);
            }
        }
    };
    if starts_with_bracket {
        let mut text = String::new();
        input.read_to_string(&mut text)?;
        let elements: Vec<Box<RawValue>> = serde_json::from_str(&text)
            .map_err(|e| anyhow::anyhow!("input is not a JSON array of events: {e}"))?;
        return Ok(Box::new(elements.into_iter().enumerate().map(
            |(i, raw)| {
                let mut line = String::with_capacity(raw.get().len());
                push_compact(raw.get(), &mut line);
                Ok((i, line))
            },
        )));
    }
    Ok(Box::new(input.lines().enumerate().filter_map(
        |(i, line)| match line {
            Ok(line) if line.trim().is_empty() => None,
            Ok(line) => Some(Ok((i + 1, line))),
            Err(e) => Some(Err(anyhow::anyhow!("reading input line {}: {e}", i + 1))),
        },
    )))
}

use std::io::Read;

async fn post(
    client: &mut Client,
    batch: Batch,
    options: &SendOptions,
    report: &mut SendReport,
) -> anyhow::Result<()> {
    let body = Bytes::from(batch.body);
    let authorization = options.token.as_ref().map(|t| format!("Bearer {t}"));
    let mut headers = vec![("content-type", "application/x-ndjson")];
    if let Some(value) = &authorization {
        headers.push(("authorization", value.as_str()));
    }
    let mut attempt = 0;
    let answer: Answer = loop {
        let answer = client
            .request(hyper::Method::POST, None, &headers, body.clone())
            .await
            .map_err(|e| anyhow::anyhow!("cannot reach outboxd at {:?}: {e}", client.target()))?;
        if answer.status == hyper::StatusCode::SERVICE_UNAVAILABLE && attempt < options.retries {
            attempt += 1;
            let wait = answer
                .headers
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok())
                .unwrap_or(1u64);
            tokio::time::sleep(Duration::from_secs(wait.min(60))).await;
            continue;
        }
        break answer;
    };
    report.requests += 1;
    let json = answer.json();
    if !answer.status.is_success() {
        let message = json["message"].as_str().unwrap_or("(no message)");
        let place = json["line"]
            .as_u64()
            .and_then(|l| batch.lines.get(l as usize - 1))
            .or_else(|| {
                json["index"]
                    .as_u64()
                    .and_then(|i| batch.lines.get(i as usize))
            })
            .map(|l| format!(" (input line {l})"))
            .unwrap_or_default();
        anyhow::bail!(
            "outboxd answered {}: {message}{place}; {} events were accepted before this batch",
            answer.status,
            report.accepted
        );
    }
    report.bytes += body.len() as u64;
    report.accepted += json["accepted"].as_u64().unwrap_or(0);
    report.duplicates += json["duplicates"].as_u64().unwrap_or(0);
    report.last_seq = json["last_seq"].as_i64().unwrap_or(report.last_seq);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_progress_line_counts_events_bytes_and_rate() {
        let report = SendReport {
            accepted: 9_000,
            duplicates: 1_000,
            bytes: 3 << 20,
            ..SendReport::default()
        };
        assert_eq!(
            progress_line(&report, Duration::from_secs(4)),
            "10000 events, 3.0 MiB, 2500 events/s"
        );
    }
}
