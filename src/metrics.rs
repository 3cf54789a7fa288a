//! The Prometheus endpoint (opt-in: `--metrics-socket PATH` or `--metrics-address
//! 127.0.0.1:PORT`): `GET /metrics` answers prometheus-client's OpenMetrics text, made on each
//! scrape from the VM registry (per-VM counters), the share registry and the daemon's counters.
//! VMs come and go, so the per-VM families are collected from whoever is there at the time.

use std::fmt;
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;

use log::warn;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use vgpud_protocol::{ErrorCode, COMMAND_NAMES};

use crate::hub::registry::{Registry, VmRecord};
use crate::hub::share::ShareRegistry;
use crate::stats::DAEMON;

const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// What is scraped.
pub struct Metrics {
    vms: Arc<Registry>,
    shares: Option<Arc<ShareRegistry>>,
}

// prometheus-client wants collectors to be Debug.
impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    pub fn new(vms: Arc<Registry>, shares: Option<Arc<ShareRegistry>>) -> Metrics {
        Metrics { vms, shares }
    }

    /// The exposition text, as a scrape gets it.
    pub fn render(self: &Arc<Self>) -> Result<String, fmt::Error> {
        let mut registry = prometheus_client::registry::Registry::default();
        registry.register_collector(Box::new(self.clone()));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry)?;
        Ok(text)
    }
}

type Labels<'a> = Vec<(&'static str, &'a str)>;

/// One of a VM record's counters.
type Field = fn(&VmRecord) -> &AtomicU64;

fn family<'a>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    kind: MetricType,
    rows: impl IntoIterator<Item = (Labels<'a>, u64)>,
) -> fmt::Result {
    let mut m = enc.encode_descriptor(name, help, None, kind)?;
    for (labels, value) in rows {
        let f = m.encode_family(&labels)?;
        match kind {
            MetricType::Counter => ConstCounter::new(value).encode(f)?,
            _ => ConstGauge::new(i64::try_from(value).unwrap_or(i64::MAX)).encode(f)?,
        }
    }
    Ok(())
}

fn get(a: &AtomicU64) -> u64 {
    a.load(Ordering::Relaxed)
}

/// One value per VM.
fn per_vm<'a>(
    vms: &'a [Arc<VmRecord>],
    value: impl Fn(&VmRecord) -> u64 + 'a,
) -> impl Iterator<Item = (Labels<'a>, u64)> + 'a {
    vms.iter()
        .map(move |vm| (vec![("vm", vm.name.as_str())], value(vm)))
}

impl Collector for Metrics {
    fn encode(&self, mut enc: DescriptorEncoder) -> fmt::Result {
        use MetricType::{Counter, Gauge};
        let vms = self.vms.records();
        let e = &mut enc;
        family(
            e,
            "vgpud_vms",
            "VMs connected now",
            Gauge,
            [(vec![], vms.len() as u64)],
        )?;
        let daemon = [
            ("vgpud_vm_connects", "VMMs that connected", &DAEMON.connects),
            (
                "vgpud_vm_disconnects",
                "VMs torn down after their VMM left",
                &DAEMON.disconnects,
            ),
            (
                "vgpud_worker_starts",
                "render workers started",
                &DAEMON.worker_starts,
            ),
            (
                "vgpud_worker_failures",
                "render workers that died, misbehaved or hung (each costs its VM the connection)",
                &DAEMON.worker_failures,
            ),
            (
                "vgpud_watchdog_kills",
                "render workers killed because they stopped answering",
                &DAEMON.watchdog_kills,
            ),
        ];
        for (name, help, counter) in daemon {
            family(e, name, help, Counter, [(vec![], get(counter))])?;
        }
        let commands = vms.iter().flat_map(|vm| {
            COMMAND_NAMES
                .iter()
                .enumerate()
                .filter_map(|(i, (_, cmd))| {
                    let n = vm.counters.by_command.get(i).map_or(0, get);
                    (n > 0).then(|| (vec![("vm", vm.name.as_str()), ("command", *cmd)], n))
                })
        });
        family(
            e,
            "vgpud_commands",
            "requests handled, by command",
            Counter,
            commands,
        )?;
        let errors = vms.iter().flat_map(|vm| {
            ErrorCode::ALL.iter().map(|code| {
                let n = vm.counters.by_error.get(code.index()).map_or(0, get);
                (vec![("vm", vm.name.as_str()), ("error", code.name())], n)
            })
        });
        family(
            e,
            "vgpud_errors",
            "requests answered with an error, by error",
            Counter,
            errors,
        )?;
        let c = |f: fn(&VmRecord) -> &AtomicU64| move |vm: &VmRecord| get(f(vm));
        family(
            e,
            "vgpud_fences_signalled",
            "fenced requests answered once their fence signalled",
            Counter,
            per_vm(&vms, c(|vm| &vm.counters.fences_signalled)),
        )?;
        family(
            e,
            "vgpud_fences_pending",
            "fenced requests waiting for their fence now",
            Gauge,
            per_vm(&vms, c(|vm| &vm.counters.fences_pending)),
        )?;
        {
            let mut m = e.encode_descriptor(
                "vgpud_fence_latency_seconds",
                "from a fenced request to its answer",
                None,
                MetricType::Histogram,
            )?;
            for vm in &vms {
                let labels: Labels = vec![("vm", vm.name.as_str())];
                vm.counters
                    .fence_latency
                    .0
                    .encode(m.encode_family(&labels)?)?;
            }
        }
        let gauges: [(&str, &str, MetricType, Field); 7] = [
            (
                "vgpud_transfer_2d_bytes",
                "bytes TRANSFER_TO_HOST_2D copied from guest memory",
                Counter,
                |vm| &vm.counters.transfer_2d_bytes,
            ),
            ("vgpud_resources", "resources held now", Gauge, |vm| {
                &vm.counters.resources
            }),
            (
                "vgpud_resource_bytes",
                "host memory the VM's resources are charged now",
                Gauge,
                |vm| &vm.counters.resource_bytes,
            ),
            (
                "vgpud_blob_mappings",
                "blobs mapped into the VM's host-visible window now",
                Gauge,
                |vm| &vm.counters.blob_mappings,
            ),
            ("vgpud_exports", "buffers the VM exports now", Gauge, |vm| {
                &vm.counters.exports
            }),
            (
                "vgpud_imports",
                "resources the VM made from imported buffers, now",
                Gauge,
                |vm| &vm.counters.imports,
            ),
            (
                "vgpud_pins",
                "pins the VM holds now (static imports included)",
                Gauge,
                |vm| &vm.counters.pins,
            ),
        ];
        for (name, help, kind, field) in gauges {
            family(e, name, help, kind, per_vm(&vms, move |vm| get(field(vm))))?;
        }
        if let Some(shares) = &self.shares {
            let s = shares.stats();
            let rows: [(&str, &str, MetricType, u64); 5] = [
                (
                    "vgpud_shared_buffers",
                    "buffers exported now",
                    Gauge,
                    s.exports,
                ),
                (
                    "vgpud_share_resident_bytes",
                    "the daemon's own shared memory that is resident (what --share-budget caps)",
                    Gauge,
                    s.resident_bytes,
                ),
                (
                    "vgpud_share_pinned_bytes",
                    "of that, pinned",
                    Gauge,
                    s.pinned_bytes,
                ),
                (
                    "vgpud_share_evictions",
                    "buffers moved out under the budget",
                    Counter,
                    s.evictions,
                ),
                (
                    "vgpud_share_restores",
                    "buffers brought back",
                    Counter,
                    s.restores,
                ),
            ];
            for (name, help, kind, value) in rows {
                family(e, name, help, kind, [(vec![], value)])?;
            }
            if let Some(limit) = s.budget_bytes {
                family(
                    e,
                    "vgpud_share_budget_bytes",
                    "--share-budget",
                    Gauge,
                    [(vec![], limit)],
                )?;
            }
        }
        Ok(())
    }
}

/// Where the endpoint listens.
#[derive(Clone, Debug)]
pub enum Endpoint {
    Unix(std::path::PathBuf),
    Tcp(SocketAddr),
}

/// Serves `GET /metrics` at `endpoint` on a thread of its own. A TCP address must be a loopback
/// one (expose it further through a proxy that authenticates); a UNIX socket is created like
/// the control socket.
pub fn serve(
    endpoint: &Endpoint,
    metrics: Arc<Metrics>,
    group: Option<u32>,
) -> std::io::Result<()> {
    let server = match endpoint {
        Endpoint::Tcp(addr) => {
            if !addr.ip().is_loopback() {
                return Err(std::io::Error::other(format!(
                    "{addr}: metrics listen on loopback addresses only"
                )));
            }
            tiny_http::Server::from_listener(TcpListener::bind(addr)?, None)
        }
        Endpoint::Unix(path) => {
            let listener = crate::control::bind_private(path, group)?;
            tiny_http::Server::from_listener(listener, None)
        }
    }
    .map_err(std::io::Error::other)?;
    thread::Builder::new()
        .name("metrics".into())
        .spawn(move || {
            for request in server.incoming_requests() {
                answer(request, &metrics);
            }
        })?;
    Ok(())
}

fn answer(request: tiny_http::Request, metrics: &Arc<Metrics>) {
    let path = request.url().split('?').next().unwrap_or_default();
    let response = match (request.method(), path) {
        (tiny_http::Method::Get, "/metrics") => match metrics.render() {
            Ok(text) => {
                let mut r = tiny_http::Response::from_string(text);
                if let Ok(h) = tiny_http::Header::from_bytes("Content-Type", CONTENT_TYPE) {
                    r.add_header(h);
                }
                r
            }
            Err(_) => tiny_http::Response::from_string("encoding failed").with_status_code(500),
        },
        _ => tiny_http::Response::from_string("GET /metrics\n").with_status_code(404),
    };
    if let Err(e) = request.respond(response) {
        warn!("metrics: {e}");
    }
}

/// Parses `--metrics-address`.
pub fn parse_address(s: &str) -> Result<SocketAddr, String> {
    let addr: SocketAddr = s.parse().map_err(|e| format!("{s}: {e}"))?;
    if !addr.ip().is_loopback() {
        return Err(format!("{s}: not a loopback address"));
    }
    Ok(addr)
}
