//! A real HTTP server on loopback standing in for a remote ingest endpoint.
//! Each request is answered by a script (status, headers, delay) and
//! recorded: its Idempotency-Key, the event ids in its body, the answer.
#![allow(dead_code)]

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What the receiver sees of one request.
#[derive(Debug, Clone)]
pub struct Seen {
    pub key: String,
    pub authorization: String,
    pub ids: Vec<String>,
    pub types: Vec<String>,
    /// The `seq` of each event, in body order.
    pub seqs: Vec<i64>,
    pub bytes: usize,
    pub at: Instant,
    /// Set after the script answered.
    pub status: u16,
}

#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub delay: Duration,
    /// Answered only once this gate opens (after `delay`).
    pub gate: Option<Gate>,
}

/// Holds the answers given [`Reply::held`] until the test opens it.
#[derive(Debug, Clone)]
pub struct Gate(Arc<tokio::sync::watch::Sender<bool>>);

impl Gate {
    pub fn new() -> Gate {
        Gate(Arc::new(tokio::sync::watch::Sender::new(false)))
    }

    pub fn open(&self) {
        self.0.send_replace(true);
    }

    async fn passed(&self) {
        let _ = self.0.subscribe().wait_for(|open| *open).await;
    }
}

impl Reply {
    pub fn status(status: u16) -> Reply {
        Reply {
            status,
            headers: vec![],
            delay: Duration::ZERO,
            gate: None,
        }
    }
    pub fn ok() -> Reply {
        Reply::status(200)
    }
    pub fn header(mut self, name: &'static str, value: &str) -> Reply {
        self.headers.push((name, value.to_string()));
        self
    }
    pub fn after(mut self, delay: Duration) -> Reply {
        self.delay = delay;
        self
    }
    pub fn held(mut self, gate: &Gate) -> Reply {
        self.gate = Some(gate.clone());
        self
    }
    /// The connection closes without an answer, as after a reset.
    /// Recorded with status 0.
    pub fn reset() -> Reply {
        Reply::status(RESET)
    }
}

/// The `status` of [`Reply::reset`].
pub const RESET: u16 = 0;

/// Decides the answer from the request and how many came before it.
pub type Script = Box<dyn FnMut(&Seen, usize) -> Reply + Send>;

struct State {
    script: Script,
    seen: Vec<Seen>,
}

#[derive(Clone)]
pub struct Receiver {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    server: Arc<Mutex<Option<tokio::task::JoinHandle<()>>>>,
}

fn decode(headers: &HeaderMap, body: &[u8]) -> Vec<serde_json::Value> {
    let plain = match headers
        .get("content-encoding")
        .and_then(|v| v.to_str().ok())
    {
        Some("gzip") => {
            let mut out = Vec::new();
            std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(body), &mut out).unwrap();
            out
        }
        Some("zstd") => zstd::decode_all(body).unwrap(),
        _ => body.to_vec(),
    };
    let text = String::from_utf8(plain).expect("bodies are UTF-8");
    if text.starts_with('[') {
        serde_json::from_str(&text).expect("a JSON array")
    } else {
        text.lines()
            .map(|l| serde_json::from_str(l).expect("NDJSON line"))
            .collect()
    }
}

impl Receiver {
    pub async fn start(script: impl FnMut(&Seen, usize) -> Reply + Send + 'static) -> Receiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let receiver = Receiver {
            addr,
            state: Arc::new(Mutex::new(State {
                script: Box::new(script),
                seen: vec![],
            })),
            server: Arc::new(Mutex::new(None)),
        };
        receiver.serve(listener);
        receiver
    }

    fn serve(&self, listener: tokio::net::TcpListener) {
        let state = self.state.clone();
        let app = axum::Router::new().fallback(move |headers: HeaderMap, body: Bytes| {
            let state = state.clone();
            async move {
                let events = decode(&headers, &body);
                let header = |name: &str| {
                    headers
                        .get(name)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("")
                        .to_string()
                };
                let mut seen = Seen {
                    key: header("idempotency-key"),
                    authorization: header("authorization"),
                    ids: events
                        .iter()
                        .map(|e| e["id"].as_str().unwrap_or("").to_string())
                        .collect(),
                    types: events
                        .iter()
                        .map(|e| e["type"].as_str().unwrap_or("").to_string())
                        .collect(),
                    bytes: body.len(),
                    seqs: events
                        .iter()
                        .map(|e| e["seq"].as_i64().unwrap_or(0))
                        .collect(),
                    at: Instant::now(),
                    status: 0,
                };
                let reply = {
                    let mut state = state.lock().unwrap();
                    let before = state.seen.len();
                    let reply = (state.script)(&seen, before);
                    seen.status = reply.status;
                    state.seen.push(seen);
                    reply
                };
                tokio::time::sleep(reply.delay).await;
                if let Some(gate) = &reply.gate {
                    gate.passed().await;
                }
                if reply.status == RESET {
                    // Unwinding out of the handler drops the connection without
                    // an answer (and, unlike panic!, prints nothing).
                    std::panic::resume_unwind(Box::new("connection reset"));
                }
                let mut response = StatusCode::from_u16(reply.status).unwrap().into_response();
                for (name, value) in reply.headers {
                    response.headers_mut().insert(name, value.parse().unwrap());
                }
                response
            }
        });
        let handle = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        *self.server.lock().unwrap() = Some(handle);
    }

    pub fn url(&self) -> String {
        format!("http://{}/ingest", self.addr)
    }

    pub fn set_script(&self, script: impl FnMut(&Seen, usize) -> Reply + Send + 'static) {
        self.state.lock().unwrap().script = Box::new(script);
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.state.lock().unwrap().seen.clone()
    }

    /// Ids of the accepted requests (2xx or 409), one copy per Idempotency-Key.
    pub fn accepted_ids(&self) -> Vec<String> {
        let mut by_key: HashMap<String, Vec<String>> = HashMap::new();
        for seen in self.seen() {
            if (200..300).contains(&seen.status) || seen.status == 409 {
                by_key.insert(seen.key.clone(), seen.ids.clone());
            }
        }
        by_key.into_values().flatten().collect()
    }

    pub fn accepted_set(&self) -> BTreeSet<String> {
        self.accepted_ids().into_iter().collect()
    }

    /// Stops listening (connections are refused from now on).
    pub fn stop(&self) {
        if let Some(handle) = self.server.lock().unwrap().take() {
            handle.abort();
        }
    }

    /// Listens again on the same address.
    pub async fn resume(&self) {
        let listener = loop {
            match tokio::net::TcpListener::bind(self.addr).await {
                Ok(listener) => break listener,
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        };
        self.serve(listener);
    }

    /// Waits until the accepted ids include all of `ids`.
    pub async fn wait_for(&self, ids: &BTreeSet<String>, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if ids.is_subset(&self.accepted_set()) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }
}
