//! The Prometheus endpoint (opt-in: `--metrics-socket PATH` or `--metrics-address
//! 127.0.0.1:PORT`): `GET /metrics` answers prometheus-client's OpenMetrics text, made on each
//! scrape from the VM registry (per-VM counters), the share registry and the daemon's counters.
//! VMs come and go, so the per-VM families are collected from whoever is there at the time.
//! `operators` serves it, with its limits.

use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use hyper::header::{HeaderValue, CONTENT_TYPE as CONTENT_TYPE_HEADER};
use hyper::{Method, Response, StatusCode};
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
            (
                "vgpud_late_refusals",
                "unfenced requests the renderer refused after they had been answered",
                &DAEMON.late_refusals,
            ),
            (
                "vgpud_fences_in_reply",
                "fences a render worker reported signalled in the reply to the request that made them",
                &DAEMON.fences_in_reply,
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
        let output = per_vm(&vms, |vm| vm.output().0);
        family(
            e,
            "vgpud_vnc_viewers",
            "viewers of the VM's VNC output now",
            Gauge,
            output,
        )?;
        let output = per_vm(&vms, |vm| vm.output().1);
        let help = "bytes the VM's VNC output holds now (pictures and viewers' buffers)";
        family(e, "vgpud_vnc_bytes", help, Gauge, output)?;
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

/// What a client past the endpoint's connection cap gets before it is closed.
pub const BUSY: &str =
    "HTTP/1.1 503 Service Unavailable\r\nconnection: close\r\ncontent-length: 0\r\n\r\n";

/// The answer to `method path`: the exposition for `GET /metrics`, 404 for anything else.
pub fn respond(metrics: &Arc<Metrics>, method: &Method, path: &str) -> Response<String> {
    let (status, content_type, body) = match (method, path) {
        (&Method::GET, "/metrics") => match metrics.render() {
            Ok(text) => (StatusCode::OK, CONTENT_TYPE, text),
            Err(_) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "text/plain",
                "encoding failed\n".into(),
            ),
        },
        _ => (StatusCode::NOT_FOUND, "text/plain", "GET /metrics\n".into()),
    };
    let mut response = Response::new(body);
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE_HEADER, HeaderValue::from_static(content_type));
    response
}

/// Parses `--metrics-address`.
pub fn parse_address(s: &str) -> Result<SocketAddr, String> {
    let addr: SocketAddr = s.parse().map_err(|e| format!("{s}: {e}"))?;
    if !addr.ip().is_loopback() {
        return Err(format!("{s}: not a loopback address"));
    }
    Ok(addr)
}
