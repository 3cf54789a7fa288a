//! The control socket: `vgpud status` asks a running daemon what its VMs are doing. Read-only: the
//! one request is `status`, answered with the registry as JSON. The socket is created owner-only;
//! `operators` serves it, with its limits.

use std::io::{self, Read, Write};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::hub::registry::{Registry, VmStatus};

/// `vgpud status` waits this long for each part of the answer.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(2);
/// The longest request line read.
const MAX_REQUEST: usize = 64;
/// The longest answer a status client accepts.
const MAX_ANSWER: u64 = 64 << 20;

#[derive(Debug, Serialize, Deserialize)]
pub struct StatusReply {
    pub vms: Vec<VmStatus>,
}

/// A listening socket at `path` for operators only: owner-only, or with `group` (a gid) also
/// for that group. A stale socket left by an earlier daemon is replaced; any other file there
/// is an error.
pub fn bind_private(path: &Path, group: Option<u32>) -> io::Result<UnixListener> {
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(io::Error::other(format!(
                "{} exists and is not a socket",
                path.display()
            )));
        }
        std::fs::remove_file(path)?;
    }
    let listener = UnixListener::bind(path)?;
    // Owner-only at once; the group is let in only once it is the right group.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    if let Some(gid) = group {
        std::os::unix::fs::chown(path, None, Some(gid))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))?;
    }
    Ok(listener)
}

/// The gid of group `name`.
pub fn group_id(name: &str) -> io::Result<u32> {
    let c = std::ffi::CString::new(name).map_err(io::Error::other)?;
    // SAFETY: getgrnam reads the NUL-terminated name; the entry it returns is read at once,
    // before any other call could reuse it (this runs once, at start, on the main thread).
    let entry = unsafe { libc::getgrnam(c.as_ptr()) };
    if entry.is_null() {
        return Err(io::Error::other(format!("no group named {name}")));
    }
    // SAFETY: a non-null entry from getgrnam points to a valid struct group.
    Ok(unsafe { (*entry).gr_gid })
}

/// What a client past the socket's connection cap gets before it is closed.
pub const BUSY: &str = "{\"error\": \"busy: too many status clients connected\"}\n";

/// Reads a request: up to its newline, the end of the stream, or `MAX_REQUEST` bytes, whichever
/// comes first. The caller bounds the wait (`operators`).
pub async fn read_request<S: AsyncRead + Unpin>(conn: &mut S) -> io::Result<Vec<u8>> {
    let mut request = Vec::new();
    let mut buf = [0u8; MAX_REQUEST];
    while request.len() < MAX_REQUEST && !request.contains(&b'\n') {
        let room = MAX_REQUEST - request.len();
        let n = conn.read(buf.get_mut(..room).unwrap_or_default()).await?;
        if n == 0 {
            break;
        }
        request.extend_from_slice(buf.get(..n).unwrap_or_default());
    }
    Ok(request)
}

/// The answer to `request`, a line of JSON.
pub fn reply(request: &[u8], registry: &Registry) -> String {
    let line = String::from_utf8_lossy(request.split(|&b| b == b'\n').next().unwrap_or_default());
    let reply = match line.trim() {
        "status" => serde_json::to_string(&StatusReply {
            vms: registry.status(),
        })
        .unwrap_or_else(|e| serde_json::json!({ "error": e.to_string() }).to_string()),
        other => {
            let other: String = other.chars().take(32).collect();
            serde_json::json!({ "error": format!("unknown request '{other}'") }).to_string()
        }
    };
    reply + "\n"
}

/// Asks the daemon at `path` for its VMs.
pub fn query(path: &Path) -> io::Result<StatusReply> {
    let mut conn = UnixStream::connect(path)
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
    conn.set_read_timeout(Some(CLIENT_TIMEOUT))?;
    conn.write_all(b"status\n")?;
    let mut text = String::new();
    conn.take(MAX_ANSWER).read_to_string(&mut text)?;
    let answer: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| io::Error::other(format!("bad answer: {e}")))?;
    if let Some(error) = answer.get("error") {
        return Err(io::Error::other(format!(
            "the daemon says: {}",
            error.as_str().unwrap_or_default()
        )));
    }
    serde_json::from_value(answer).map_err(|e| io::Error::other(format!("bad answer: {e}")))
}

/// The VMs as a table, one line each.
pub fn table(reply: &StatusReply) -> String {
    let mut out = format!(
        "{:<4} {:<16} {:<8} {:>8} {:<13} {:>8} {:>10} {:>7} {:>7} {:>9} {:>10} {:>5} {:>11} {:>4}  {}\n",
        "ID",
        "NAME",
        "RENDERER",
        "WORKER",
        "STATE",
        "UP",
        "COMMANDS",
        "ERRORS",
        "FENCES",
        "RESOURCES",
        "MEMORY",
        "MAPS",
        "SHARES",
        "VNC",
        "SOCKET"
    );
    for vm in &reply.vms {
        let worker = vm.worker_pid.map_or("-".to_string(), |p| p.to_string());
        let state = serde_json::to_value(vm.state)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        let shares = format!("{}/{}/{}", vm.exports, vm.imports, vm.pins);
        out += &format!(
            "{:<4} {:<16} {:<8} {:>8} {:<13} {:>7}s {:>10} {:>7} {:>7} {:>9} {:>9}K {:>5} {:>11} {:>4}  {}\n",
            vm.id,
            vm.name,
            vm.renderer,
            worker,
            state,
            vm.connected_secs,
            vm.commands,
            vm.errors,
            vm.fences_pending,
            vm.resources,
            vm.resource_bytes / 1024,
            vm.blob_mappings,
            shares,
            vm.vnc_viewers,
            vm.socket
        );
    }
    out
}
