//! Command-line options and what they turn into.

use std::os::fd::{FromRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use serde::Serialize;
use vhost::vhost_user::Listener;

use crate::device::{
    DeviceConfig, DEFAULT_MAX_CONTEXTS, DEFAULT_MAX_MAPPINGS, DEFAULT_MAX_RESOURCES,
    DEFAULT_MAX_RESOURCE_BYTES,
};
use crate::output::{VncAddress, DEFAULT_MAX_VIEWERS, DEFAULT_VNC_MEMORY};
use crate::render::cpus::CpuList;
use crate::render::RendererKind;
use crate::vhost::{FailureLimit, VmmSource};

#[derive(Debug, Parser)]
#[command(
    name = "vgpud",
    version,
    about = "vhost-user virtio-gpu device backend"
)]
pub struct Options {
    #[command(subcommand)]
    pub command: Option<Subcommand>,

    /// Listen for a VMM on this UNIX socket; repeat to serve several VMs at once. Settings for
    /// this VM alone may follow, comma-separated: name (for logs and status; the socket
    /// otherwise), share (on: the VM may share buffers with others, see --share-policy),
    /// renderer, hostmem, scanouts, resolution, max-resources, max-contexts, max-mappings,
    /// max-resource-memory, vnc (a VNC server of vgpud's own showing the VM's scanouts: an
    /// absolute UNIX socket path or a loopback IP:PORT; scanout N > 0 at PATH.N or PORT+N),
    /// vnc-memory (the output's memory cap, default 128M), vnc-viewers (most viewers at once,
    /// default 8)
    /// (e.g. PATH,name=desk1,renderer=venus,hostmem=256M,share=on,vnc=/run/vgpud/desk1.vnc).
    #[arg(long = "socket-path", value_name = "PATH[,KEY=VALUE...]", value_parser = parse_path_socket)]
    pub socket_paths: Vec<SocketArg<PathBuf>>,

    /// Serve a VMM on this inherited socket: a listening one (VMMs connect to it, one after
    /// another), or one already connected to a VMM (as libvirt passes it; served once, and the
    /// daemon exits when every such VMM has gone). May be repeated, and take the same per-VM
    /// settings as --socket-path.
    #[arg(long = "fd", value_name = "N[,KEY=VALUE...]", value_parser = parse_fd_socket)]
    pub fds: Vec<SocketArg<RawFd>>,

    /// Settings for the socket-activated VM whose socket systemd names NAME
    /// (FileDescriptorName=), as --socket-path takes them: NAME,KEY=VALUE... Sockets systemd
    /// passes (LISTEN_FDS) are served as VMs named by their socket's name.
    #[arg(long = "vm", value_name = "NAME,KEY=VALUE...", value_parser = parse_named_vm)]
    pub vms: Vec<SocketArg<String>>,

    /// Print the backend's capabilities as JSON (vhost-user backend convention) and exit.
    #[arg(long)]
    pub print_capabilities: bool,

    /// Which renderer draws.
    #[arg(long, value_enum, default_value = "auto")]
    pub renderer: RendererKind,

    /// 3D on: OpenGL through virglrenderer (`--renderer virgl` unless --renderer names a 3D
    /// renderer already); what libvirt passes for `accel3d='yes'`.
    #[arg(long)]
    pub virgl: bool,

    /// The GPU's DRM render node for 3D renderers (e.g. /dev/dri/renderD128); by default the
    /// renderer picks one, or renders in software when there is none.
    #[arg(long, value_name = "PATH")]
    pub render_node: Option<PathBuf>,

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

    /// Most blobs one VM may have mapped in its window at once. Each mapping is a memory
    /// region to QEMU (509 in all with its RAM) and a KVM memory slot to crosvm; MAP_BLOB past
    /// the cap answers OUT_OF_MEMORY rather than asking the VMM for more.
    #[arg(long, default_value_t = DEFAULT_MAX_MAPPINGS)]
    pub max_mappings: usize,

    /// Most host memory one VM's resources may use, in bytes (suffixes K, M, G allowed).
    #[arg(long, default_value_t = DEFAULT_MAX_RESOURCE_BYTES, value_parser = parse_size)]
    pub max_resource_memory: u64,

    /// Longest wait for a VMM's answer on its display socket or backend channel, e.g. 10s or
    /// 500ms; a VMM that takes longer is disconnected.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub vmm_timeout: Duration,

    /// Longest a render worker may take to answer a request, or to show it is alive while
    /// fences are outstanding, e.g. 20s; a worker that takes longer is killed and its VM
    /// disconnected.
    #[arg(long, default_value = "20s", value_parser = parse_duration)]
    pub worker_timeout: Duration,

    /// How long the broker and a render worker look for each other's next message before they
    /// sleep: 0 (never spins), or microseconds or milliseconds such as 50us or 1ms, at most
    /// 1ms. Spinning saves the wakeups of a request and its reply (several microseconds each,
    /// tens on an idle core) for CPU: a VM whose requests stop costs one budget on each side,
    /// and a wait longer than four budgets turns spinning off until requests come quickly
    /// again. A spinning thread reads shared memory, and now and then lets other runnable
    /// threads on its CPU run. A worker does not spin on the CPU the broker last sent a
    /// request from: it sleeps, or moves to another of its CPUs (when neither keeps them
    /// apart, its waits spin as usual for the next 20ms).
    #[arg(long, default_value = "50us", value_parser = parse_spin)]
    pub worker_spin: Duration,

    /// Run render workers on these CPUs only, e.g. 2-3 or 4,6 (the broker stays where the
    /// daemon runs). On a host with few cores this keeps a worker that spins for its next
    /// request off the cores of the threads that send it. The CPUs must be in the daemon's
    /// cgroup; the renderer is refused at start if its worker cannot run on all of them. For
    /// speed, not isolation: a worker may change its own CPUs.
    #[arg(long, value_name = "CPUS", value_parser = CpuList::parse)]
    pub worker_cpus: Option<CpuList>,

    /// Renderer failures (a worker that died or hung) one socket's VMs may have within a minute
    /// before the socket refuses VMs for --renderer-cooldown.
    #[arg(long, default_value_t = 5)]
    pub max_renderer_failures: usize,

    /// How long a socket refuses VMs after too many renderer failures, e.g. 60s.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub renderer_cooldown: Duration,

    /// Let this group connect to the VMs' VNC sockets too (mode 0660; owner-only otherwise).
    #[arg(long, value_name = "GROUP")]
    pub vnc_group: Option<String>,

    /// Let `vnc=IP:PORT` name addresses other than loopback. VNC here has no authentication or
    /// encryption: only for a network that is itself private.
    #[arg(long)]
    pub vnc_any_address: bool,

    /// Answer `vgpud status` on this UNIX socket (created owner-only, read-only: it only
    /// reports).
    #[arg(long, value_name = "PATH")]
    pub control_socket: Option<PathBuf>,

    /// Let this group use the control and metrics sockets too (mode 0660).
    #[arg(long, value_name = "GROUP")]
    pub control_group: Option<String>,

    /// Serve Prometheus metrics (`GET /metrics`, OpenMetrics text) on this UNIX socket,
    /// created like the control socket.
    #[arg(long, value_name = "PATH")]
    pub metrics_socket: Option<PathBuf>,

    /// Serve Prometheus metrics on this loopback address, e.g. 127.0.0.1:9477.
    #[arg(long, value_name = "ADDR", value_parser = crate::metrics::parse_address)]
    pub metrics_address: Option<std::net::SocketAddr>,

    /// Which VMs may import which VMs' buffers, by name: a JSON file
    /// `{"allow": [{"exporter": "a", "importers": ["b", "*"]}]}`. Without it, none may.
    #[arg(long, value_name = "FILE")]
    pub share_policy: Option<PathBuf>,

    /// Most memory of the daemon's own that shared buffers may keep resident, e.g. 512M;
    /// beyond it, unpinned buffers nobody is using are moved out to --share-evict-dir (least
    /// recently mapped first) and brought back when mapped again. Default: no limit.
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub share_budget: Option<u64>,

    /// Where buffers moved out under --share-budget go (unlinked files).
    #[arg(long, value_name = "DIR", default_value = "/var/tmp")]
    pub share_evict_dir: PathBuf,
}

#[derive(Debug, clap::Subcommand)]
pub enum Subcommand {
    /// A render worker for one VM; the daemon starts these itself.
    #[command(hide = true)]
    RenderWorker {
        #[arg(long, value_enum)]
        renderer: RendererKind,
        /// The VM it renders for, for logs.
        #[arg(long)]
        vm: String,
        /// The daemon's --render-node.
        #[arg(long)]
        render_node: Option<PathBuf>,
        /// The daemon's --worker-spin.
        #[arg(long, default_value = "0", value_parser = parse_spin)]
        spin: Duration,
        /// The daemon's --worker-cpus.
        #[arg(long, value_parser = CpuList::parse)]
        cpus: Option<CpuList>,
    },
    /// Print the manual page (roff, from this command-line definition) and exit.
    #[command(hide = true)]
    Manpage,
    /// Show the VMs a running daemon serves (asks its --control-socket).
    Status {
        /// The daemon's --control-socket.
        #[arg(long, value_name = "PATH")]
        control_socket: PathBuf,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

impl Options {
    pub fn failure_limit(&self) -> FailureLimit {
        FailureLimit {
            failures: self.max_renderer_failures.max(1),
            window: Duration::from_secs(60),
            cooldown: self.renderer_cooldown,
        }
    }

    /// The renderer VMs get unless their socket says otherwise.
    pub fn renderer(&self) -> RendererKind {
        #[cfg(feature = "virgl")]
        if self.virgl && matches!(self.renderer, RendererKind::Auto | RendererKind::TwoD) {
            return RendererKind::Virgl;
        }
        self.renderer
    }

    /// What every VM gets unless its socket says otherwise.
    pub fn vm_defaults(&self) -> VmSettings {
        VmSettings {
            name: None,
            share: false,
            renderer: self.renderer(),
            hostmem: self.hostmem,
            device: DeviceConfig {
                num_scanouts: self.scanouts,
                width: self.resolution.0,
                height: self.resolution.1,
                max_resources: self.max_resources,
                max_resource_bytes: self.max_resource_memory,
                max_contexts: self.max_contexts,
                hostmem: self.hostmem,
                max_mappings: self.max_mappings,
            },
            vnc: None,
            vnc_memory: DEFAULT_VNC_MEMORY,
            vnc_viewers: DEFAULT_MAX_VIEWERS,
        }
    }

    /// Where each VM's VMM comes from, with its socket's name and its settings: the sockets
    /// given, then those systemd passed (`activated`). A socket named twice would have two
    /// servers (and the second --socket-path would unlink the first's socket): refused, and so
    /// are two VMs of one name.
    pub fn listeners(
        &self,
        activated: &[(RawFd, String)],
    ) -> Result<Vec<(String, VmmSource, VmSettings)>, String> {
        let mut fds: Vec<RawFd> = (self.fds.iter().map(|s| s.target))
            .chain(activated.iter().map(|(fd, _)| *fd))
            .collect();
        fds.sort_unstable();
        if let Some(fd) = fds.windows(2).find(|w| w[0] == w[1]).map(|w| w[0]) {
            return Err(format!("--fd {fd} given twice"));
        }
        let mut paths: Vec<&PathBuf> = self.socket_paths.iter().map(|s| &s.target).collect();
        paths.sort_unstable();
        if let Some(p) = paths.windows(2).find(|w| w[0] == w[1]).map(|w| w[0]) {
            return Err(format!("--socket-path {} given twice", p.display()));
        }
        let defaults = self.vm_defaults();
        let mut names: Vec<&str> = (self.socket_paths.iter().map(|s| s.name()))
            .chain(self.fds.iter().map(|s| s.name()))
            .flatten()
            .chain(activated.iter().map(|(_, name)| name.as_str()))
            .collect();
        names.sort_unstable();
        if let Some(n) = names.windows(2).find(|w| w[0] == w[1]).map(|w| w[0]) {
            return Err(format!("two VMs named {n}"));
        }
        let mut out = Vec::new();
        for arg in &self.socket_paths {
            let path = &arg.target;
            let settings = arg.apply(&defaults)?;
            let l = Listener::new(path, true).map_err(|e| format!("{}: {e}", path.display()))?;
            out.push((path.display().to_string(), VmmSource::Listener(l), settings));
        }
        for arg in &self.fds {
            let fd = arg.target;
            let source = inherited(fd).map_err(|e| format!("--fd {fd}: {e}"))?;
            out.push((format!("fd{fd}"), source, arg.apply(&defaults)?));
        }
        for name in self.vms.iter().map(|v| &v.target) {
            if !activated.iter().any(|(_, n)| n == name) {
                return Err(format!(
                    "--vm {name}: systemd passed no socket of that name"
                ));
            }
        }
        for (fd, name) in activated {
            let source = inherited(*fd).map_err(|e| format!("socket {name}: {e}"))?;
            let mut settings = match self.vms.iter().rev().find(|v| v.target == *name) {
                Some(arg) => arg.apply(&defaults)?,
                None => defaults.clone(),
            };
            settings.name = Some(name.clone());
            out.push((format!("systemd:{name}"), source, settings));
        }
        Ok(out)
    }
}

/// One VM's renderer, window and device settings.
#[derive(Clone, Debug)]
pub struct VmSettings {
    /// Its name, if its socket gave one.
    pub name: Option<String>,
    /// Whether it may share buffers with other VMs (the share context).
    pub share: bool,
    pub renderer: RendererKind,
    pub hostmem: u64,
    pub device: DeviceConfig,
    /// vgpud's own VNC output for it, if any.
    pub vnc: Option<VncAddress>,
    pub vnc_memory: u64,
    pub vnc_viewers: usize,
}

/// A socket from the command line and the settings its VM changes: KEY=VALUE pairs, checked
/// when parsed, applied over the daemon-wide ones.
#[derive(Clone, Debug, PartialEq)]
pub struct SocketArg<T> {
    pub target: T,
    pub settings: Vec<(String, String)>,
}

impl<T> SocketArg<T> {
    /// The `name=` setting, if any.
    fn name(&self) -> Option<&str> {
        (self.settings.iter().rev())
            .find(|(k, _)| k == "name")
            .map(|(_, v)| v.as_str())
    }

    fn apply(&self, defaults: &VmSettings) -> Result<VmSettings, String> {
        let mut vm = defaults.clone();
        for (key, value) in &self.settings {
            set(&mut vm, key, value)?;
        }
        vm.device.hostmem = vm.hostmem;
        Ok(vm)
    }
}

fn set(vm: &mut VmSettings, key: &str, value: &str) -> Result<(), String> {
    let d = &mut vm.device;
    let bad = |e: String| format!("{key}={value}: {e}");
    match key {
        "name" => {
            check_name(value).map_err(bad)?;
            vm.name = Some(value.to_string());
        }
        "share" => {
            vm.share = match value {
                "on" => true,
                "off" => false,
                _ => return Err(bad("on or off".into())),
            }
        }
        "renderer" => {
            vm.renderer = clap::ValueEnum::from_str(value, true).map_err(bad)?;
        }
        "hostmem" => vm.hostmem = parse_hostmem(value).map_err(bad)?,
        "scanouts" => {
            d.num_scanouts = value
                .parse()
                .ok()
                .filter(|n| (1..=16).contains(n))
                .ok_or_else(|| bad("1 to 16".into()))?
        }
        "resolution" => (d.width, d.height) = parse_resolution(value).map_err(bad)?,
        "max-resources" => d.max_resources = value.parse().map_err(|_| bad("a number".into()))?,
        "max-contexts" => d.max_contexts = value.parse().map_err(|_| bad("a number".into()))?,
        "max-mappings" => d.max_mappings = value.parse().map_err(|_| bad("a number".into()))?,
        "max-resource-memory" => d.max_resource_bytes = parse_size(value).map_err(bad)?,
        "vnc" => vm.vnc = Some(VncAddress::parse(value).map_err(bad)?),
        "vnc-memory" => vm.vnc_memory = parse_size(value).map_err(bad)?,
        "vnc-viewers" => {
            vm.vnc_viewers = value
                .parse()
                .ok()
                .filter(|n| (1..=64).contains(n))
                .ok_or_else(|| bad("1 to 64".into()))?
        }
        _ => return Err(format!("unknown per-VM setting '{key}'")),
    }
    Ok(())
}

fn parse_socket<T>(
    s: &str,
    target: impl FnOnce(&str) -> Result<T, String>,
) -> Result<SocketArg<T>, String> {
    let mut parts = s.split(',');
    let target = target(parts.next().unwrap_or_default())?;
    let settings = parts
        .map(|kv| {
            kv.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .ok_or_else(|| format!("'{kv}': expected KEY=VALUE"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let arg = SocketArg { target, settings };
    // Checked now, so that a typo stops the daemon before it serves anything.
    arg.apply(&Options::parse_from(["vgpud"]).vm_defaults())?;
    Ok(arg)
}

fn parse_path_socket(s: &str) -> Result<SocketArg<PathBuf>, String> {
    parse_socket(s, |p| Ok(PathBuf::from(p)))
}

fn parse_named_vm(s: &str) -> Result<SocketArg<String>, String> {
    parse_socket(s, |name| {
        check_name(name)?;
        Ok(name.to_string())
    })
}

/// A VM name: what logs, the status command and the share policy call it.
fn check_name(name: &str) -> Result<(), String> {
    let ok = (1..=64).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    if ok {
        Ok(())
    } else {
        Err(format!("name '{name}': 1 to 64 of A-Z a-z 0-9 - _ ."))
    }
}

/// An inherited UNIX stream socket: a listener, or a connection to one VMM.
fn inherited(fd: RawFd) -> Result<VmmSource, String> {
    if fd < 3 {
        return Err("not an inherited socket".into());
    }
    let int = |opt| {
        let mut value: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: getsockopt writes at most `len` bytes into `value`.
        let rc = unsafe {
            libc::getsockopt(fd, libc::SOL_SOCKET, opt, (&raw mut value).cast(), &mut len)
        };
        (rc == 0).then_some(value)
    };
    if int(libc::SO_DOMAIN) != Some(libc::AF_UNIX) || int(libc::SO_TYPE) != Some(libc::SOCK_STREAM)
    {
        return Err("not a UNIX stream socket".into());
    }
    // SAFETY (both): the fd was handed to us for this VM alone and is named once (checked by
    // the caller), so it gets one owner.
    if int(libc::SO_ACCEPTCONN) == Some(1) {
        let l = unsafe { Listener::from_raw_fd(fd) };
        l.set_nonblocking(false).map_err(|e| e.to_string())?;
        Ok(VmmSource::Listener(l))
    } else {
        let s = unsafe { UnixStream::from_raw_fd(fd) };
        s.set_nonblocking(false).map_err(|e| e.to_string())?;
        Ok(VmmSource::Connected(s))
    }
}

/// The sockets systemd passed this process (socket activation: LISTEN_PID, LISTEN_FDS,
/// LISTEN_FDNAMES), with their names; the variables are cleared so that no child sees them.
/// Sockets without a name are called after their descriptor.
pub fn take_activated_sockets() -> Result<Vec<(RawFd, String)>, String> {
    const FIRST: RawFd = 3;
    let var = |k| std::env::var(k).ok();
    let (pid, count, names) = (var("LISTEN_PID"), var("LISTEN_FDS"), var("LISTEN_FDNAMES"));
    for k in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] {
        std::env::remove_var(k);
    }
    if pid.and_then(|p| p.parse::<u32>().ok()) != Some(std::process::id()) {
        return Ok(Vec::new());
    }
    let count: RawFd = count
        .and_then(|n| n.parse().ok())
        .filter(|n| (0..=1024).contains(n))
        .ok_or("LISTEN_FDS: not a count of sockets")?;
    let names: Vec<String> = names
        .map(|n| n.split(':').map(str::to_string).collect())
        .unwrap_or_default();
    (0..count)
        .map(|i| {
            let fd = FIRST + i;
            let name = names
                .get(i as usize)
                .filter(|n| !n.is_empty() && n.as_str() != "unknown")
                .cloned()
                .unwrap_or_else(|| format!("fd{fd}"));
            check_name(&name).map(|()| (fd, name))
        })
        .collect()
}

fn parse_fd_socket(s: &str) -> Result<SocketArg<RawFd>, String> {
    parse_socket(s, |n| {
        n.parse().map_err(|_| format!("--fd {n}: not a number"))
    })
}

#[derive(Serialize)]
struct Capabilities {
    #[serde(rename = "type")]
    kind: &'static str,
    features: Vec<&'static str>,
}

/// The JSON that `--print-capabilities` prints. libvirt reads it to decide what it may ask
/// for: `virgl` (3D, `--virgl`) when this build has a 3D renderer, and `render-node`
/// (`--render-node`) only when this host has a render node too, because libvirt, told a backend
/// takes one, insists on finding one for every VM and refuses to start them where there is none.
pub fn capabilities_json() -> String {
    let mut features = Vec::new();
    if cfg!(feature = "virgl") {
        features.push("virgl");
        if host_has_render_node() {
            features.push("render-node");
        }
    }
    let caps = Capabilities {
        kind: "gpu",
        features,
    };
    serde_json::to_string(&caps).unwrap_or_default()
}

fn host_has_render_node() -> bool {
    std::fs::read_dir("/dev/dri").is_ok_and(|dir| {
        dir.flatten()
            .any(|e| e.file_name().to_string_lossy().starts_with("renderD"))
    })
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

/// A spin budget: 0, or microseconds ("50us") or milliseconds ("1ms"), at most 1ms.
fn parse_spin(s: &str) -> Result<Duration, String> {
    let (digits, unit) = match (s.strip_suffix("us"), s.strip_suffix("ms")) {
        (Some(d), _) => (d, Duration::from_micros(1)),
        (_, Some(d)) => (d, Duration::from_millis(1)),
        _ if s == "0" => ("0", Duration::ZERO),
        _ => return Err(format!("bad spin '{s}': 0, or a number with us or ms")),
    };
    let n: u32 = digits.parse().map_err(|_| format!("bad spin '{s}'"))?;
    let d = unit * n;
    if d > Duration::from_millis(1) {
        return Err(format!("spin '{s}' out of range (0 to 1ms)"));
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
        assert_eq!(twice.listeners(&[]).err().unwrap(), "--fd 7 given twice");
        let twice = Options::parse_from(["vgpud", "--socket-path", "/x", "--socket-path", "/x"]);
        assert_eq!(
            twice.listeners(&[]).err().unwrap(),
            "--socket-path /x given twice"
        );
    }

    #[test]
    fn sockets_may_carry_settings_of_their_own() {
        let o = Options::parse_from([
            "vgpud",
            "--hostmem",
            "64M",
            "--socket-path",
            "/a",
            "--socket-path",
            "/b,renderer=2d,hostmem=0,scanouts=2,resolution=640x480,max-resources=9",
        ]);
        let defaults = o.vm_defaults();
        let a = o.socket_paths[0].apply(&defaults).unwrap();
        let b = o.socket_paths[1].apply(&defaults).unwrap();
        assert_eq!((a.hostmem, a.device.hostmem), (64 << 20, 64 << 20));
        assert_eq!(
            (b.renderer, b.hostmem, b.device.hostmem),
            (RendererKind::TwoD, 0, 0)
        );
        assert_eq!(
            (
                b.device.num_scanouts,
                b.device.width,
                b.device.max_resources
            ),
            (2, 640, 9)
        );
        for bad in [
            "/c,hostmem=3",
            "/c,colour=red",
            "/c,scanouts=17",
            "/c,renderer",
            "/c,name=a b",
            "/c,name=",
        ] {
            assert!(
                Options::try_parse_from(["vgpud", "--socket-path", bad]).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn two_vms_of_one_name_are_refused() {
        let o = Options::parse_from([
            "vgpud",
            "--socket-path",
            "/a,name=desk",
            "--fd",
            "9,name=desk",
        ]);
        assert_eq!(o.listeners(&[]).err().unwrap(), "two VMs named desk");
    }

    #[test]
    fn command_line_defaults_are_the_device_defaults() {
        let cfg = Options::parse_from(["vgpud"]).vm_defaults().device;
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
