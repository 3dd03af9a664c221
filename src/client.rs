//! A small HTTP/1 client over TCP or a Unix socket, for `outboxd send`, the
//! benchmark and the tests. Plain `http://` only: outboxd listens locally.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::http::{HeaderMap, Method, Request, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use std::path::PathBuf;

/// Where to connect, and the request path to use.
#[derive(Debug, Clone)]
pub enum Target {
    Tcp { authority: String, path: String },
    Unix { socket: PathBuf, path: String },
}

impl Target {
    /// `http://host:port[/path]`; without a path, `default_path` is used.
    pub fn from_url(url: &str, default_path: &str) -> anyhow::Result<Target> {
        let uri: Uri = url
            .parse()
            .map_err(|e| anyhow::anyhow!("`{url}` is not a URL: {e}"))?;
        if uri.scheme_str() != Some("http") {
            anyhow::bail!("`{url}`: only http:// URLs are supported");
        }
        let authority = uri
            .authority()
            .ok_or_else(|| anyhow::anyhow!("`{url}` has no host"))?
            .to_string();
        let authority = if authority.contains(':') {
            authority
        } else {
            format!("{authority}:80")
        };
        let path = match uri.path_and_query().map(|p| p.as_str()) {
            None | Some("") | Some("/") => default_path.to_string(),
            Some(p) => p.to_string(),
        };
        Ok(Target::Tcp { authority, path })
    }

    pub fn unix(socket: impl Into<PathBuf>, path: &str) -> Target {
        Target::Unix {
            socket: socket.into(),
            path: path.to_string(),
        }
    }

    pub fn path(&self) -> &str {
        match self {
            Target::Tcp { path, .. } | Target::Unix { path, .. } => path,
        }
    }

    fn host(&self) -> &str {
        match self {
            Target::Tcp { authority, .. } => authority,
            Target::Unix { .. } => "localhost",
        }
    }
}

/// An answer: status, headers and the whole body.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Answer {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

/// One keep-alive connection; reconnects when the server closed it.
pub struct Client {
    target: Target,
    sender: Option<SendRequest<Full<Bytes>>>,
}

impl Client {
    pub fn new(target: Target) -> Client {
        Client {
            target,
            sender: None,
        }
    }

    pub fn target(&self) -> &Target {
        &self.target
    }

    async fn connect(&self) -> std::io::Result<SendRequest<Full<Bytes>>> {
        match &self.target {
            Target::Tcp { authority, .. } => {
                let stream = tokio::net::TcpStream::connect(authority.as_str()).await?;
                stream.set_nodelay(true)?;
                handshake(stream).await
            }
            Target::Unix { socket, .. } => {
                handshake(tokio::net::UnixStream::connect(socket).await?).await
            }
        }
    }

    /// Sends one request to `path` (the target's path when None).
    pub async fn request(
        &mut self,
        method: Method,
        path: Option<&str>,
        headers: &[(&str, &str)],
        body: Bytes,
    ) -> std::io::Result<Answer> {
        let mut sender = match self.sender.take() {
            Some(sender) if !sender.is_closed() => sender,
            _ => self.connect().await?,
        };
        sender
            .ready()
            .await
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        let mut request = Request::builder()
            .method(method)
            .uri(path.unwrap_or(self.target.path()))
            .header("host", self.target.host());
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request
            .body(Full::new(body))
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string()))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        let (parts, body) = response.into_parts();
        let body = body
            .collect()
            .await
            .map_err(|e| std::io::Error::other(e.to_string()))?
            .to_bytes();
        self.sender = Some(sender);
        Ok(Answer {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    }

    pub async fn post(&mut self, content_type: &str, body: Bytes) -> std::io::Result<Answer> {
        self.request(Method::POST, None, &[("content-type", content_type)], body)
            .await
    }

    pub async fn get(&mut self, path: &str) -> std::io::Result<Answer> {
        self.request(Method::GET, Some(path), &[], Bytes::new())
            .await
    }
}

async fn handshake<S>(stream: S) -> std::io::Result<SendRequest<Full<Bytes>>>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(sender)
}
