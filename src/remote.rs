//! `outboxd status` and `outboxd dlq`: talk to a running daemon's API and
//! print what it says as tables (or JSON).

use crate::client::Client;
use bytes::Bytes;
use serde_json::Value;

async fn call(
    client: &mut Client,
    method: hyper::Method,
    path: &str,
    token: Option<&str>,
    body: Option<String>,
) -> anyhow::Result<Value> {
    let authorization = token.map(|t| format!("Bearer {t}"));
    let mut headers = vec![("content-type", "application/json")];
    if let Some(value) = &authorization {
        headers.push(("authorization", value.as_str()));
    }
    let answer = client
        .request(
            method,
            Some(path),
            &headers,
            Bytes::from(body.unwrap_or_default()),
        )
        .await
        .map_err(|e| anyhow::anyhow!("cannot reach outboxd at {:?}: {e}", client.target()))?;
    let json = answer.json();
    if !answer.status.is_success() {
        anyhow::bail!(
            "outboxd answered {}: {}",
            answer.status,
            json["message"].as_str().unwrap_or("(no message)")
        );
    }
    Ok(json)
}

fn text(value: &Value) -> String {
    match value {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn ago(ms: &Value) -> String {
    match ms.as_i64() {
        Some(ms) => format!("{}s ago", ((crate::clock::now_ms() - ms) / 1000).max(0)),
        None => "-".into(),
    }
}

/// Prints rows as aligned columns.
fn table(header: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let mut out: String = cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<width$}", width = widths[i]))
            .collect::<Vec<_>>()
            .join("  ");
        out.truncate(out.trim_end().len());
        out + "\n"
    };
    let mut out = line(header.iter().map(|h| h.to_string()).collect());
    for row in rows {
        out.push_str(&line(row));
    }
    out
}

/// `GET /readyz` on the operations listener: Ok when it answers 200.
pub async fn health(client: &mut Client) -> anyhow::Result<String> {
    let answer = client
        .get("/readyz")
        .await
        .map_err(|e| anyhow::anyhow!("outboxd is not answering: {e}"))?;
    let body = String::from_utf8_lossy(&answer.body).trim().to_owned();
    if answer.status == hyper::StatusCode::OK {
        return Ok(format!("{body}\n"));
    }
    anyhow::bail!("not ready ({}): {body}", answer.status)
}

/// `status` every `every` until an error (or Ctrl-C): redrawn in place on
/// a terminal, one snapshot after another when piped.
pub async fn status_watch(
    client: &mut Client,
    token: Option<&str>,
    json: bool,
    every: std::time::Duration,
) -> anyhow::Result<String> {
    use std::io::{IsTerminal, Write};
    let terminal = std::io::stdout().is_terminal();
    loop {
        let table = status(client, token, json).await?;
        let mut out = std::io::stdout().lock();
        if terminal {
            // Home and clear: the table is redrawn in place.
            write!(out, "\x1b[H\x1b[2J")?;
            writeln!(out, "every {every:?}, Ctrl-C stops\n")?;
        }
        write!(out, "{table}")?;
        if !terminal {
            writeln!(out)?;
        }
        out.flush()?;
        drop(out);
        tokio::time::sleep(every).await;
    }
}

pub async fn status(
    client: &mut Client,
    token: Option<&str>,
    json: bool,
) -> anyhow::Result<String> {
    let sinks = call(client, hyper::Method::GET, "/v1/sinks", token, None).await?;
    if json {
        return Ok(format!("{sinks:#}\n"));
    }
    let rows = sinks
        .as_array()
        .into_iter()
        .flatten()
        .map(|s| {
            vec![
                text(&s["name"]),
                text(&s["kind"]),
                text(&s["state"]),
                text(&s["cursor"]),
                text(&s["lag_events"]),
                format!("{:.1}", s["lag_seconds"].as_f64().unwrap_or(0.0)),
                text(&s["dead_letters"]),
                ago(&s["last_success_ms"]),
                match s["last_error"].as_str() {
                    Some(e) => format!(
                        "{} ({})",
                        e.chars().take(80).collect::<String>(),
                        ago(&s["last_error_ms"])
                    ),
                    None => "-".into(),
                },
            ]
        })
        .collect();
    Ok(table(
        &[
            "SINK",
            "KIND",
            "STATE",
            "CURSOR",
            "LAG",
            "LAG_S",
            "DEAD",
            "LAST_OK",
            "LAST_ERROR",
        ],
        rows,
    ))
}

pub async fn dlq_list(
    client: &mut Client,
    token: Option<&str>,
    sink: Option<&str>,
    json: bool,
) -> anyhow::Result<String> {
    let path = match sink {
        Some(sink) => format!("/v1/dead-letters?sink={}", percent(sink)),
        None => "/v1/dead-letters".into(),
    };
    let letters = call(client, hyper::Method::GET, &path, token, None).await?;
    if json {
        return Ok(format!("{letters:#}\n"));
    }
    let rows = letters
        .as_array()
        .into_iter()
        .flatten()
        .map(|d| {
            vec![
                text(&d["sink"]),
                text(&d["seq"]),
                text(&d["id"]),
                text(&d["type"]),
                ago(&d["failed_ms"]),
                if d["requeued"] == true {
                    "yes".into()
                } else {
                    "no".into()
                },
                text(&d["reason"]),
            ]
        })
        .collect();
    Ok(table(
        &["SINK", "SEQ", "ID", "TYPE", "FAILED", "REQUEUED", "REASON"],
        rows,
    ))
}

pub async fn dlq_replay(
    client: &mut Client,
    token: Option<&str>,
    sink: &str,
    ids: Option<Vec<String>>,
) -> anyhow::Result<String> {
    dlq_select(client, token, sink, ids, "replay", "requeued").await
}

/// `ids` None purges all of the sink's dead letters.
pub async fn dlq_purge(
    client: &mut Client,
    token: Option<&str>,
    sink: &str,
    ids: Option<Vec<String>>,
) -> anyhow::Result<String> {
    dlq_select(client, token, sink, ids, "purge", "purged").await
}

/// `POST /v1/dead-letters/{action}` on a selection; reports the `counted` field.
async fn dlq_select(
    client: &mut Client,
    token: Option<&str>,
    sink: &str,
    ids: Option<Vec<String>>,
    action: &str,
    counted: &str,
) -> anyhow::Result<String> {
    let body = serde_json::json!({ "sink": sink, "ids": ids }).to_string();
    let path = format!("/v1/dead-letters/{action}");
    let answer = call(client, hyper::Method::POST, &path, token, Some(body)).await?;
    Ok(format!(
        "{counted} {} dead letters of sink {sink}\n",
        answer[counted]
    ))
}

pub async fn dlq_show(
    client: &mut Client,
    token: Option<&str>,
    sink: &str,
    seq: i64,
) -> anyhow::Result<String> {
    let path = format!("/v1/dead-letters/{}/{seq}", percent(sink));
    let letter = call(client, hyper::Method::GET, &path, token, None).await?;
    Ok(format!(
        "sink:     {}\nseq:      {}\nid:       {}\ntype:     {}\nfailed:   {}\nrequeued: {}\nreason:   {}\nevent:\n{:#}\n",
        text(&letter["sink"]),
        text(&letter["seq"]),
        text(&letter["id"]),
        text(&letter["type"]),
        ago(&letter["failed_ms"]),
        letter["requeued"] == true,
        text(&letter["reason"]),
        letter["event"],
    ))
}

/// `action` is "pause" or "resume".
pub async fn sink_pause_or_resume(
    client: &mut Client,
    token: Option<&str>,
    name: &str,
    action: &str,
) -> anyhow::Result<String> {
    let path = format!("/v1/sinks/{}/{action}", percent(name));
    let answer = call(
        client,
        hyper::Method::POST,
        &path,
        token,
        Some(String::new()),
    )
    .await?;
    let done = if action == "pause" {
        "paused"
    } else {
        "resumed"
    };
    Ok(match answer["changed"] == true {
        true => format!("sink {name} {done}\n"),
        false => format!("sink {name} was already {done}\n"),
    })
}

/// `POST /v1/admin/reload`: what changed, or the daemon's reason for
/// changing nothing (an error, so the exit status says it).
pub async fn reload(client: &mut Client, token: Option<&str>) -> anyhow::Result<String> {
    let answer = call(
        client,
        hyper::Method::POST,
        "/v1/admin/reload",
        token,
        Some(String::new()),
    )
    .await?;
    let names = |key: &str| {
        let list: Vec<String> = answer["sinks"][key]
            .as_array()
            .map(|a| a.iter().map(text).collect())
            .unwrap_or_default();
        if list.is_empty() {
            "-".to_string()
        } else {
            list.join(", ")
        }
    };
    Ok(format!(
        "{}
sinks added:     {}
sinks removed:   {}
sinks changed:   {}
sinks unchanged: {}
redaction:       {}
",
        text(&answer["result"]),
        names("added"),
        names("removed"),
        names("changed"),
        names("unchanged"),
        if answer["redaction_changed"] == true {
            "changed"
        } else {
            "unchanged"
        },
    ))
}

/// Sink names are `[A-Za-z0-9_-]`; anything else is escaped for the query string.
fn percent(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn tables_align_columns() {
        let out = super::table(&["A", "LONGER"], vec![vec!["wide cell".into(), "x".into()]]);
        assert_eq!(out, "A          LONGER\nwide cell  x\n");
    }
}
