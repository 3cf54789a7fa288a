//! Command-line options and what they turn into.

use std::os::fd::{FromRawFd, RawFd};
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use serde::Serialize;
use vhost::vhost_user::Listener;

use crate::device::{
    DeviceConfig, DEFAULT_MAX_CONTEXTS, DEFAULT_MAX_RESOURCES, DEFAULT_MAX_RESOURCE_BYTES,
};
use crate::render::RendererKind;

#[derive(Debug, Parser)]
#[command(
    name = "vgpud",
    version,
    about = "vhost-user virtio-gpu device backend"
)]
pub struct Options {
    /// Listen for a VMM on this UNIX socket; repeat to serve several VMs at once.
    #[arg(long = "socket-path", value_name = "PATH")]
    pub socket_paths: Vec<PathBuf>,

    /// Serve a VMM on this inherited, already-listening socket; may be repeated.
    #[arg(long = "fd", value_name = "N")]
    pub fds: Vec<RawFd>,

    /// Print the backend's capabilities as JSON (vhost-user backend convention) and exit.
    #[arg(long)]
    pub print_capabilities: bool,

    /// Which renderer draws.
    #[arg(long, value_enum, default_value = "auto")]
    pub renderer: RendererKind,

    /// Size of each VM's host-visible window (virtio-gpu shared memory region 1) that blobs are
    /// mapped into, e.g. 256M; 0 turns blobs off. Needs a frontend with vhost-user shared memory
    /// (QEMU >= 11.1's vhost-user-test-device-pci). Page-aligned.
    #[arg(long, default_value = "0", value_parser = parse_hostmem)]
    pub hostmem: u64,

    /// Number of scanouts (displays) per VM, 1 to 16.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=16))]
    pub scanouts: u32,

    /// Preferred mode of each scanout when no display supplies one, as WIDTHxHEIGHT.
    #[arg(long, default_value = "1280x800", value_parser = parse_resolution)]
    pub resolution: (u32, u32),

    /// Most resources one VM may hold at once.
    #[arg(long, default_value_t = DEFAULT_MAX_RESOURCES)]
    pub max_resources: usize,

    /// Most rendering contexts one VM may hold at once.
    #[arg(long, default_value_t = DEFAULT_MAX_CONTEXTS)]
    pub max_contexts: usize,

    /// Most host memory one VM's resources may use, in bytes (suffixes K, M, G allowed).
    #[arg(long, default_value_t = DEFAULT_MAX_RESOURCE_BYTES, value_parser = parse_size)]
    pub max_resource_memory: u64,

    /// Longest wait for a VMM's answer on its display socket or backend channel, e.g. 10s or
    /// 500ms; a VMM that takes longer is disconnected.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub vmm_timeout: Duration,
}

impl Options {
    pub fn device_config(&self) -> DeviceConfig {
        DeviceConfig {
            num_scanouts: self.scanouts,
            width: self.resolution.0,
            height: self.resolution.1,
            max_resources: self.max_resources,
            max_resource_bytes: self.max_resource_memory,
            max_contexts: self.max_contexts,
            hostmem: self.hostmem,
        }
    }

    /// One listener per VM, with a name for logs. A socket named twice would have two servers
    /// (and the second --socket-path would unlink the first's socket): refused.
    pub fn listeners(&self) -> Result<Vec<(String, Listener)>, String> {
        let mut fds = self.fds.clone();
        fds.sort_unstable();
        if let Some(fd) = fds.windows(2).find(|w| w[0] == w[1]).map(|w| w[0]) {
            return Err(format!("--fd {fd} given twice"));
        }
        let mut paths = self.socket_paths.clone();
        paths.sort_unstable();
        if let Some(p) = paths
            .windows(2)
            .find(|w| w[0] == w[1])
            .map(|w| w[0].clone())
        {
            return Err(format!("--socket-path {} given twice", p.display()));
        }
        let mut out = Vec::new();
        for path in &self.socket_paths {
            let l = Listener::new(path, true).map_err(|e| format!("{}: {e}", path.display()))?;
            out.push((path.display().to_string(), l));
        }
        for &fd in &self.fds {
            if fd < 3 {
                return Err(format!("--fd {fd}: not an inherited socket"));
            }
            // SAFETY: the caller handed us this fd as a listening socket for us alone, and it
            // is named once (checked above), so it gets one owner.
            let l = unsafe { Listener::from_raw_fd(fd) };
            l.set_nonblocking(false)
                .map_err(|e| format!("--fd {fd}: {e}"))?;
            out.push((format!("fd{fd}"), l));
        }
        Ok(out)
    }
}

#[derive(Serialize)]
struct Capabilities {
    #[serde(rename = "type")]
    kind: &'static str,
    features: Vec<&'static str>,
}

/// The JSON that `--print-capabilities` prints.
pub fn capabilities_json() -> String {
    let caps = Capabilities {
        kind: "gpu",
        features: Vec::new(),
    };
    serde_json::to_string(&caps).unwrap_or_default()
}

fn parse_resolution(s: &str) -> Result<(u32, u32), String> {
    let (w, h) = s.split_once('x').ok_or("expected WIDTHxHEIGHT")?;
    let w: u32 = w.parse().map_err(|_| "bad width")?;
    let h: u32 = h.parse().map_err(|_| "bad height")?;
    if w == 0 || h == 0 || w > 16384 || h > 16384 {
        return Err("resolution out of range".into());
    }
    Ok((w, h))
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let (digits, unit) = match s.strip_suffix("ms") {
        Some(d) => (d, Duration::from_millis(1)),
        None => (s.strip_suffix('s').unwrap_or(s), Duration::from_secs(1)),
    };
    let n: u32 = digits.parse().map_err(|_| format!("bad duration '{s}'"))?;
    let d = unit * n;
    if d.is_zero() || d > Duration::from_secs(3600) {
        return Err(format!("duration '{s}' out of range (1ms to 1h)"));
    }
    Ok(d)
}

fn parse_hostmem(s: &str) -> Result<u64, String> {
    let size = parse_size(s)?;
    if !size.is_multiple_of(4096) {
        return Err(format!("--hostmem {s}: not a multiple of 4096"));
    }
    Ok(size)
}

fn parse_size(s: &str) -> Result<u64, String> {
    let (digits, shift) = match s.chars().last() {
        Some('K' | 'k') => (&s[..s.len() - 1], 10),
        Some('M' | 'm') => (&s[..s.len() - 1], 20),
        Some('G' | 'g') => (&s[..s.len() - 1], 30),
        _ => (s, 0),
    };
    let n: u64 = digits.parse().map_err(|_| format!("bad size '{s}'"))?;
    n.checked_mul(1 << shift)
        .ok_or_else(|| format!("size '{s}' too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_resolutions_parse() {
        assert_eq!(parse_size("64M"), Ok(64 << 20));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("99999999999G").is_err());
        assert!(parse_size("x").is_err());
        assert_eq!(parse_resolution("1920x1080"), Ok((1920, 1080)));
        assert!(parse_resolution("0x10").is_err());
        assert!(parse_resolution("10").is_err());
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("1m").is_err());
    }

    #[test]
    fn a_socket_named_twice_is_refused() {
        let twice = Options::parse_from(["vgpud", "--fd", "7", "--fd", "7"]);
        assert_eq!(twice.listeners().err().unwrap(), "--fd 7 given twice");
        let twice = Options::parse_from(["vgpud", "--socket-path", "/x", "--socket-path", "/x"]);
        assert_eq!(
            twice.listeners().err().unwrap(),
            "--socket-path /x given twice"
        );
    }

    #[test]
    fn command_line_defaults_are_the_device_defaults() {
        let cfg = Options::parse_from(["vgpud"]).device_config();
        let dev = DeviceConfig::default();
        assert_eq!(
            (cfg.max_resources, cfg.max_resource_bytes, cfg.max_contexts),
            (dev.max_resources, dev.max_resource_bytes, dev.max_contexts)
        );
    }

    #[test]
    fn capabilities_are_gpu() {
        let v: serde_json::Value = serde_json::from_str(&capabilities_json()).unwrap();
        assert_eq!(v["type"], "gpu");
        assert!(v["features"].is_array());
    }
}
