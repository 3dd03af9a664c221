//! A real S3-compatible server (s3s-fs, which checks signatures) on a
//! loopback port, with its objects read straight from its directory.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command};

pub const ACCESS_KEY: &str = "outboxd-test";
pub const SECRET_KEY: &str = "outboxd-test-secret";

pub struct S3Server {
    pub port: u16,
    pub dir: tempfile::TempDir,
    child: Option<Child>,
}

impl S3Server {
    pub async fn start() -> S3Server {
        let mut server = S3Server {
            port: super::free_port(),
            dir: tempfile::tempdir().unwrap(),
            child: None,
        };
        server.resume().await;
        server
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Starts (again) on the same port and directory.
    pub async fn resume(&mut self) {
        let mut command = Command::new("s3s-fs");
        command
            .args(["--host", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
            .arg(self.dir.path());
        self.child = Some(
            super::spawn_listening(
                command,
                self.port,
                "s3s-fs is installed by tests/run.sh (cargo install s3s-fs --features binary)",
                &self.log_path(),
            )
            .await,
        );
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("s3s-fs.log")
    }

    /// Whether the server runs, and what it printed: for failure messages.
    pub fn state(&self) -> String {
        let running = match &self.child {
            None => "stopped by the test",
            // An exited child stays a zombie until it is waited for.
            Some(child) => match std::fs::read_to_string(format!("/proc/{}/stat", child.id())) {
                Ok(stat) if !stat.contains(") Z ") => "running",
                _ => "exited",
            },
        };
        let log = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        format!("s3s-fs on port {}: {running}\n{log}", self.port)
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn bucket_exists(&self, bucket: &str) -> bool {
        self.dir.path().join(bucket).is_dir()
    }

    /// Every object of the bucket: (key, bytes), sorted by key.
    pub fn objects(&self, bucket: &str) -> Vec<(String, Vec<u8>)> {
        let root = self.dir.path().join(bucket);
        let mut out = Vec::new();
        walk(&root, &root, &mut out);
        out.sort();
        out
    }

    /// Creates a bucket directly (for sinks with create_bucket = false).
    pub fn create_bucket(&self, bucket: &str) {
        std::fs::create_dir_all(self.dir.path().join(bucket)).unwrap();
    }
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<(String, Vec<u8>)>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path: PathBuf = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if path.is_dir() {
            walk(root, &path, out);
        } else if !name.starts_with('.')
            && !name.ends_with(".metadata.json")
            && !name.contains(".tmp")
        {
            let key = path
                .strip_prefix(root)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            out.push((key, std::fs::read(&path).unwrap()));
        }
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Decodes an object by its key's extension into JSON lines.
pub fn lines(key: &str, bytes: &[u8]) -> Vec<String> {
    let plain = if key.ends_with(".gz") {
        let mut out = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(bytes), &mut out).unwrap();
        out
    } else if key.ends_with(".zst") {
        zstd::decode_all(bytes).unwrap()
    } else {
        bytes.to_vec()
    };
    String::from_utf8(plain)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

/// The event ids in every object, each id once (panics on a duplicate).
pub fn ids_once(objects: &[(String, Vec<u8>)]) -> std::collections::BTreeSet<String> {
    super::count_once(
        "S3",
        objects.iter().flat_map(|(key, bytes)| {
            lines(key, bytes).into_iter().map(|line| {
                let event: serde_json::Value = serde_json::from_str(&line).unwrap();
                event["id"].as_str().unwrap().to_string()
            })
        }),
    )
}
