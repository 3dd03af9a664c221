//! TCP and Unix socket listeners, and serving a router on them until
//! shutdown with bounded connections and a deadline for slow headers.

use crate::config::Config;
use crate::shutdown::Shutdown;
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::Semaphore;

pub async fn bind_tcp(what: &str, addr: std::net::SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen for {what} on {addr}: {e}"))
}

/// The id of a group given by name or number (`ingest.unix_socket_group`).
pub fn group_id(group: &str) -> Result<u32, String> {
    lookup(group, "group", libc::getgrnam_r, |g: &libc::group| g.gr_gid)
}

/// The id of a user given by name or number (`ingest.unix_socket_allow_users`).
pub fn user_id(user: &str) -> Result<u32, String> {
    lookup(user, "user", libc::getpwnam_r, |p: &libc::passwd| p.pw_uid)
}

/// The `getgrnam_r` / `getpwnam_r` shape.
type ByName<T> = unsafe extern "C" fn(
    *const libc::c_char,
    *mut T,
    *mut libc::c_char,
    libc::size_t,
    *mut *mut T,
) -> libc::c_int;

/// A number as it is, or a name looked up in the host's user or group database.
fn lookup<T>(name: &str, what: &str, by_name: ByName<T>, id: fn(&T) -> u32) -> Result<u32, String> {
    if let Ok(number) = name.parse::<u32>() {
        return Ok(number);
    }
    let c_name =
        std::ffi::CString::new(name).map_err(|_| format!("`{name}` is not a {what} name"))?;
    let mut buffer = vec![0 as libc::c_char; 16 * 1024];
    // SAFETY: T is libc's plain C `group` or `passwd`, for which all-zero is
    // valid; the lookup fills it, pointing into `buffer`, which outlives
    // every read of it here.
    let mut entry: T = unsafe { std::mem::zeroed() };
    let mut found: *mut T = std::ptr::null_mut();
    let rc = unsafe {
        by_name(
            c_name.as_ptr(),
            &mut entry,
            buffer.as_mut_ptr(),
            buffer.len(),
            &mut found,
        )
    };
    if rc != 0 || found.is_null() {
        return Err(format!("no {what} named `{name}` on this host"));
    }
    Ok(id(&entry))
}

/// The Unix socket file; removed when dropped.
pub struct SocketFile(PathBuf);

impl Drop for SocketFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Binds the Unix socket with `mode` and, when given, group `group`. An
/// existing socket file is replaced only when nothing listens on it; any
/// other file there is an error.
pub fn bind_unix(
    path: &Path,
    mode: u32,
    group: Option<u32>,
) -> anyhow::Result<(UnixListener, SocketFile)> {
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
    std::os::unix::fs::chown(&staging, None, group)
        .and_then(|_| std::fs::set_permissions(&staging, std::fs::Permissions::from_mode(mode)))
        .and_then(|_| std::fs::rename(&staging, path))
        .map_err(|e| {
            let _ = std::fs::remove_file(&staging);
            anyhow::anyhow!("cannot set up socket {}: {e}", path.display())
        })?;
    Ok((listener, SocketFile(path.to_path_buf())))
}

/// What one listener allows its clients, so that a few stalled or hung
/// clients can never hold up the others.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// Open connections at once; further ones wait in the kernel's backlog.
    pub max_connections: usize,
    /// A request's headers must arrive within this, or the connection is closed.
    pub header_timeout: Duration,
}

impl ConnectionLimits {
    pub fn from_config(config: &Config) -> Self {
        ConnectionLimits {
            max_connections: config.ingest.max_connections,
            header_timeout: config.ingest.header_timeout.0,
        }
    }
}

/// Serves `router` on a TCP listener (see [`serve`]), with Nagle's algorithm
/// off: an answer split over two segments otherwise waits for the client's
/// delayed ACK, up to 40 ms (measured: p99 30-50 ms at 4 connections).
pub async fn serve_tcp(
    listener: TcpListener,
    router: Router,
    shutdown: Shutdown,
    limits: ConnectionLimits,
) -> std::io::Result<()> {
    use axum::serve::ListenerExt;
    let listener = listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
    });
    serve(listener, router, shutdown, limits).await
}

/// Most a connection buffers while reading a request (see `serve`).
const READ_BUFFER_BYTES: usize = 64 * 1024;

/// Serves `router` on `listener` until shutdown, then lets the requests in
/// flight finish (idle keep-alive connections are closed).
pub async fn serve<L>(
    mut listener: L,
    router: Router,
    mut shutdown: Shutdown,
    limits: ConnectionLimits,
) -> std::io::Result<()>
where
    L: axum::serve::Listener,
{
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let graceful = GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    // A connection's read buffer grows up to this (hyper's default is
    // ~400 KiB): 16 connections posting 480 KiB bodies held 7-16 MiB more
    // RSS at the default, for no throughput. It also bounds the headers.
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(READ_BUFFER_BYTES);
    loop {
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => slot.expect("the semaphore is never closed"),
            _ = shutdown.recv() => break,
        };
        let (io, _) = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.recv() => break,
        };
        let service = TowerToHyperService::new(router.clone());
        let connection = graceful.watch(http.serve_connection(TokioIo::new(io), service));
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "connection closed with an error");
            }
            drop(slot);
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_are_found_by_name_or_number() {
        assert_eq!(group_id("root"), Ok(0));
        assert_eq!(group_id("0"), Ok(0));
        assert_eq!(group_id("4242"), Ok(4242));
        assert!(group_id("no-such-group-here")
            .unwrap_err()
            .contains("no-such-group-here"));
    }

    #[test]
    fn users_are_found_by_name_or_number() {
        assert_eq!(user_id("root"), Ok(0));
        assert_eq!(user_id("1234"), Ok(1234));
        assert!(user_id("no-such-user-here")
            .unwrap_err()
            .contains("no-such-user-here"));
    }
}
