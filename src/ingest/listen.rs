//! TCP and Unix socket listeners, and serving a router until shutdown.

use crate::shutdown::Shutdown;
use axum::Router;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use tokio::net::{TcpListener, UnixListener};

pub async fn bind_tcp(what: &str, addr: std::net::SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen for {what} on {addr}: {e}"))
}

/// The Unix socket file; removed when dropped.
pub struct SocketFile(PathBuf);

impl Drop for SocketFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Binds the Unix socket with `mode`. An existing socket file is replaced
/// only when nothing listens on it; any other file there is an error.
pub fn bind_unix(path: &Path, mode: u32) -> anyhow::Result<(UnixListener, SocketFile)> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if !meta.file_type().is_socket() => {
            anyhow::bail!(
                "{} exists and is not a socket; remove it or set ingest.unix_socket",
                path.display()
            )
        }
        Ok(_) => match std::os::unix::net::UnixStream::connect(path) {
            Ok(_) => anyhow::bail!(
                "another process is listening on {}; stop it or set ingest.unix_socket",
                path.display()
            ),
            Err(_) => {
                tracing::info!(path = %path.display(), "replacing stale socket file");
                std::fs::remove_file(path).map_err(|e| {
                    anyhow::anyhow!("cannot remove stale socket {}: {e}", path.display())
                })?;
            }
        },
        Err(_) => {}
    }
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", parent.display()))?;
    }
    // Bind under a temporary name and rename once the mode is set, so the
    // socket is never reachable with looser permissions.
    let staging = path.with_extension(format!("sock.{}", std::process::id()));
    let _ = std::fs::remove_file(&staging);
    let listener = UnixListener::bind(&staging)
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", path.display()))?;
    std::fs::set_permissions(&staging, std::fs::Permissions::from_mode(mode))
        .and_then(|_| std::fs::rename(&staging, path))
        .map_err(|e| {
            let _ = std::fs::remove_file(&staging);
            anyhow::anyhow!("cannot set up socket {}: {e}", path.display())
        })?;
    Ok((listener, SocketFile(path.to_path_buf())))
}

/// Serves `router` until shutdown, then lets in-flight requests finish.
pub async fn serve_tcp(
    listener: TcpListener,
    router: Router,
    mut shutdown: Shutdown,
) -> std::io::Result<()> {
    axum::serve(listener, router)
        .with_graceful_shutdown(async move { shutdown.recv().await })
        .await
}

pub async fn serve_unix(
    listener: UnixListener,
    router: Router,
    mut shutdown: Shutdown,
) -> std::io::Result<()> {
    axum::serve(listener, router)
        .with_graceful_shutdown(async move { shutdown.recv().await })
        .await
}
