//! A real nats-server with JetStream on a loopback port, its store in a
//! temporary directory (kept across stop and resume), and the messages of a
//! stream read back in order.
#![allow(dead_code)]

use std::process::{Child, Command};

pub struct NatsServer {
    pub port: u16,
    pub dir: tempfile::TempDir,
    /// `--auth`: clients must present this token.
    pub token: Option<String>,
    child: Option<Child>,
}

/// One stored message.
pub struct Message {
    pub subject: String,
    pub headers: Vec<(String, String)>,
    pub payload: serde_json::Value,
}

impl Message {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

fn binary() -> &'static str {
    if std::path::Path::new("/usr/sbin/nats-server").exists() {
        "/usr/sbin/nats-server"
    } else {
        "nats-server"
    }
}

impl NatsServer {
    pub async fn start(token: Option<&str>) -> NatsServer {
        let mut server = NatsServer {
            port: super::free_port(),
            dir: tempfile::tempdir().unwrap(),
            token: token.map(str::to_string),
            child: None,
        };
        server.resume().await;
        server
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Starts (again) on the same port and store.
    pub async fn resume(&mut self) {
        let mut command = Command::new(binary());
        command
            .args([
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-js",
                "-sd",
            ])
            .arg(self.dir.path());
        if let Some(token) = &self.token {
            command.args(["--auth", token]);
        }
        self.child = Some(
            super::spawn_listening(
                command,
                self.port,
                "nats-server is installed by tests/run.sh (Debian package nats-server)",
                &self.dir.path().join("nats-server.log"),
            )
            .await,
        );
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    async fn context(&self) -> async_nats::jetstream::Context {
        let mut options = async_nats::ConnectOptions::new();
        if let Some(token) = &self.token {
            options = options.token(token.clone());
        }
        let client = options
            .connect(self.url())
            .await
            .expect("connect to nats-server");
        async_nats::jetstream::new(client)
    }

    /// Creates a stream, as an operator would.
    pub async fn create_stream(&self, name: &str, subjects: &str) {
        self.context()
            .await
            .create_stream(async_nats::jetstream::stream::Config {
                name: name.into(),
                subjects: vec![subjects.into()],
                ..Default::default()
            })
            .await
            .unwrap();
    }

    /// Every message of `stream` in stream order; none when it does not exist.
    pub async fn messages(&self, stream: &str) -> Vec<Message> {
        let context = self.context().await;
        let Ok(mut stream) = context.get_stream(stream).await else {
            return Vec::new();
        };
        let state = stream.info().await.unwrap().state.clone();
        let mut messages = Vec::new();
        if state.messages == 0 {
            return messages;
        }
        for seq in state.first_sequence..=state.last_sequence {
            let Ok(message) = stream.get_raw_message(seq).await else {
                continue;
            };
            let headers = message
                .headers
                .iter()
                .flat_map(|(name, values)| {
                    values
                        .iter()
                        .map(move |v| (name.to_string(), v.as_str().to_string()))
                })
                .collect();
            messages.push(Message {
                subject: message.subject.to_string(),
                headers,
                payload: serde_json::from_slice(&message.payload).unwrap(),
            });
        }
        messages
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.stop();
    }
}
