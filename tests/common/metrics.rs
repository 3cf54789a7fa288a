//! The operator sockets as a test reads them: the Prometheus exposition over HTTP on a UNIX
//! socket.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use super::eventually;

/// `GET path` over the UNIX socket at `socket`: (status line, body).
pub fn http_get(socket: &Path, path: &str) -> (String, String) {
    let mut s = UnixStream::connect(socket).expect("connect to the metrics socket");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: vgpud\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.lines().next().unwrap_or_default().to_string();
    (status, body.to_string())
}

/// The exposition's samples: `name{labels}` -> value.
pub fn samples(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (key, value) = l.rsplit_once(' ')?;
            Some((key.to_string(), value.parse().ok()?))
        })
        .collect()
}

/// The operator sockets are made next to the VM sockets the harness waits for, maybe a moment
/// after them.
pub fn wait_for(socket: &Path) {
    assert!(
        eventually(Duration::from_secs(10), || socket.exists()),
        "{socket:?} never appeared"
    );
}

pub fn scrape(socket: &Path) -> HashMap<String, f64> {
    let (status, body) = http_get(socket, "/metrics");
    assert!(status.contains(" 200 "), "{status}");
    samples(&body)
}
