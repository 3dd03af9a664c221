//! Who may talk over the Unix socket beyond what its file mode allows:
//! `ingest.unix_socket_allow_users` / `_groups`, checked against the
//! connecting process's credentials as the kernel reports them
//! (`SO_PEERCRED`, and `SO_PEERGROUPS` for supplementary groups), before a
//! byte of the request is read.

use crate::telemetry::names;
use std::os::fd::AsRawFd;
use tokio::io::AsyncWriteExt;
use tokio::net::{UnixListener, UnixStream};

/// The allow-list; empty lists allow nobody but the daemon's own user and root.
#[derive(Debug, Clone, PartialEq)]
pub struct PeerAllow {
    pub uids: Vec<u32>,
    pub gids: Vec<u32>,
}

/// A connecting process as the kernel vouches for it.
#[derive(Debug, Clone, PartialEq)]
pub struct Peer {
    pub pid: i32,
    pub uid: u32,
    /// The primary group and, where the kernel tells, the supplementary ones.
    pub gids: Vec<u32>,
}

impl PeerAllow {
    /// outboxd's own user (the CLI under the service account, `systemctl
    /// reload`) and root (who could read the database anyway) always pass.
    pub fn allows(&self, peer: &Peer) -> bool {
        let own = unsafe { libc::geteuid() };
        peer.uid == own
            || peer.uid == 0
            || self.uids.contains(&peer.uid)
            || peer.gids.iter().any(|gid| self.gids.contains(gid))
    }
}

/// The peer's credentials; None if the kernel would not say.
pub fn peer_of(stream: &UnixStream) -> Option<Peer> {
    let cred = stream.peer_cred().ok()?;
    let mut gids = vec![cred.gid()];
    gids.extend(supplementary_groups(stream));
    Some(Peer {
        pid: cred.pid().unwrap_or(0),
        uid: cred.uid(),
        gids,
    })
}

/// `SO_PEERGROUPS` (Linux 4.13+): the groups the peer had when it connected.
fn supplementary_groups(stream: &UnixStream) -> Vec<u32> {
    let mut groups = vec![0 as libc::gid_t; 256];
    let mut len = (groups.len() * std::mem::size_of::<libc::gid_t>()) as libc::socklen_t;
    // SAFETY: the buffer is `len` bytes of gid_t, which the kernel fills.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERGROUPS,
            groups.as_mut_ptr().cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Vec::new();
    }
    groups.truncate(len as usize / std::mem::size_of::<libc::gid_t>());
    groups
}

/// A Unix listener that answers 403 and closes on connections from peers
/// the allow-list does not name; the others are served as usual.
pub struct CheckedUnixListener {
    inner: UnixListener,
    allow: PeerAllow,
}

impl CheckedUnixListener {
    pub fn new(inner: UnixListener, allow: PeerAllow) -> Self {
        CheckedUnixListener { inner, allow }
    }
}

impl axum::serve::Listener for CheckedUnixListener {
    type Io = UnixStream;
    type Addr = tokio::net::unix::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let (stream, addr) = axum::serve::Listener::accept(&mut self.inner).await;
            match peer_of(&stream) {
                Some(peer) if self.allow.allows(&peer) => return (stream, addr),
                peer => {
                    tracing::warn!(?peer, "refused a Unix socket connection: peer not in ingest.unix_socket_allow_users/_groups");
                    metrics::counter!(names::INGEST_REJECTED, "reason" => "peer_not_allowed")
                        .increment(1);
                    tokio::spawn(refuse(stream));
                }
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

/// One HTTP answer, so the client sees why, then the connection closes.
async fn refuse(mut stream: UnixStream) {
    let body = r#"{"error":"peer_not_allowed","message":"this user is not in ingest.unix_socket_allow_users or _groups"}"#;
    let answer = format!(
        "HTTP/1.1 403 Forbidden\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), async {
        let _ = stream.write_all(answer.as_bytes()).await;
        let _ = stream.shutdown().await;
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(uid: u32, gids: &[u32]) -> Peer {
        Peer {
            pid: 1,
            uid,
            gids: gids.to_vec(),
        }
    }

    #[test]
    fn listed_users_and_members_of_listed_groups_pass() {
        let allow = PeerAllow {
            uids: vec![5001],
            gids: vec![7000],
        };
        let own = unsafe { libc::geteuid() };
        let stranger = if own == 6001 { 6002 } else { 6001 };
        assert!(allow.allows(&peer(5001, &[5001])));
        assert!(
            allow.allows(&peer(stranger, &[6001, 7000])),
            "a supplementary group counts"
        );
        assert!(!allow.allows(&peer(stranger, &[6001, 6002])));
        assert!(allow.allows(&peer(own, &[])), "outboxd's own user");
        assert!(allow.allows(&peer(0, &[0])), "root");
    }

    #[tokio::test]
    async fn the_kernel_reports_our_own_credentials() {
        let (a, _b) = UnixStream::pair().unwrap();
        let me = peer_of(&a).expect("SO_PEERCRED works on a socket pair");
        assert_eq!(me.uid, unsafe { libc::geteuid() });
        assert_eq!(me.gids[0], unsafe { libc::getegid() });
        assert_eq!(me.pid, std::process::id() as i32);
    }
}
