//! The VMs this daemon serves, for everything that needs to know all of them: the status
//! command now; sharing, cross-VM fences and the memory budget later.
//!
//! A VM is made ready (its id assigned) before its socket accepts a VMM, listed once the VMM
//! connected, and leaves the registry when its connection is torn down. Each record's counters are atomics its VM's threads update without a lock; the
//! registry's lock only guards the set of VMs and is never held while anything else is called.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use serde::{Deserialize, Serialize};
use vgpud_protocol::{ErrorCode, COMMAND_NAMES};

use crate::ids::VmId;
use crate::sync::lock;

#[derive(Default)]
pub struct Registry {
    next_id: AtomicU32,
    vms: Mutex<BTreeMap<VmId, Arc<VmRecord>>>,
}

/// Where a VM stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum VmState {
    /// The VMM is connected and setting the device up.
    Connected,
    /// The driver has started its queues.
    Running,
    /// The VM is being disconnected: its renderer failed or its VMM broke the protocol or
    /// stopped answering.
    Disconnecting,
}

/// One VM, as the registry keeps it.
pub struct VmRecord {
    pub id: VmId,
    /// The VM's name (its socket's `name=` setting, or the socket itself).
    pub name: String,
    pub socket: String,
    pub renderer: String,
    connected_unix: u64,
    connected: Instant,
    state: Mutex<VmState>,
    /// The pid of the VM's render worker; 0 while it has none.
    pub worker_pid: Arc<AtomicU32>,
    pub counters: VmCounters,
    /// Ends the VM's connection when the daemon stops (set by its transport).
    stop: Mutex<Option<StopFn>>,
    /// The VM's own display output, if it has one (set by its transport).
    output: Mutex<Option<Box<dyn OutputGauges>>>,
}

/// What a VM's display output holds now: viewers, and bytes charged to the VM (its pictures
/// and every viewer's buffer, under the output's own cap).
pub trait OutputGauges: Send + Sync {
    fn viewers(&self) -> u64;
    fn bytes(&self) -> u64;
}

/// How the daemon ends a VM's connection when it stops.
pub type StopFn = Box<dyn Fn() + Send + Sync>;

/// What a VM did, counted as it happens.
#[derive(Default)]
pub struct VmCounters {
    /// Control and cursor requests handled.
    pub commands: AtomicU64,
    /// The same by command type (`vgpud_protocol::COMMAND_NAMES` order).
    pub by_command: [AtomicU64; COMMAND_NAMES.len()],
    /// Requests answered with an error.
    pub errors: AtomicU64,
    /// The same by error (`ErrorCode::ALL` order); requests that did not even decode count
    /// under their decoding error's code.
    pub by_error: [AtomicU64; ErrorCode::ALL.len()],
    /// From a fenced request to its answer.
    pub fence_latency: FenceLatency,
    /// Bytes TRANSFER_TO_HOST_2D copied from guest memory.
    pub transfer_2d_bytes: AtomicU64,
    /// Blobs mapped into the VM's host-visible window now.
    pub blob_mappings: AtomicU64,
    /// Buffers the VM exports, imports (resources made from imports) and pins now (explicit
    /// pins and static imports).
    pub exports: AtomicU64,
    pub imports: AtomicU64,
    pub pins: AtomicU64,
    /// Fenced requests answered after their fence signalled.
    pub fences_signalled: AtomicU64,
    /// Fenced requests waiting for their fence now.
    pub fences_pending: AtomicU64,
    /// Resources the VM holds now, and the host bytes they are charged.
    pub resources: AtomicU64,
    pub resource_bytes: AtomicU64,
}

/// A histogram of fence latencies, in seconds.
#[derive(Debug)]
pub struct FenceLatency(pub Histogram);

impl Default for FenceLatency {
    fn default() -> Self {
        // 50 us to ~13 s, four per decade-ish: TCG guests are slow, GPUs are not.
        FenceLatency(Histogram::new(exponential_buckets(50e-6, 4.0, 10)))
    }
}

impl VmRecord {
    pub fn on_stop(&self, stop: StopFn) {
        *lock(&self.stop) = Some(stop);
    }

    /// Ends the VM's connection (the daemon is stopping).
    pub fn stop(&self) {
        let stop = lock(&self.stop).take();
        if let Some(stop) = stop {
            stop();
        }
    }

    pub fn set_output(&self, output: Box<dyn OutputGauges>) {
        *lock(&self.output) = Some(output);
    }

    /// (viewers, bytes) of the VM's display output; zeros without one.
    pub fn output(&self) -> (u64, u64) {
        lock(&self.output)
            .as_ref()
            .map_or((0, 0), |o| (o.viewers(), o.bytes()))
    }

    pub fn state(&self) -> VmState {
        *lock(&self.state)
    }

    /// Moves the VM on; a VM being disconnected stays so.
    pub fn set_state(&self, state: VmState) {
        let mut now = lock(&self.state);
        if *now != VmState::Disconnecting {
            *now = state;
        }
    }

    pub fn status(&self) -> VmStatus {
        let c = &self.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let pid = self.worker_pid.load(Ordering::Relaxed);
        let (vnc_viewers, vnc_bytes) = self.output();
        VmStatus {
            id: self.id.0,
            name: self.name.clone(),
            socket: self.socket.clone(),
            renderer: self.renderer.clone(),
            worker_pid: (pid != 0).then_some(pid),
            state: self.state(),
            connected_at: self.connected_unix,
            connected_secs: self.connected.elapsed().as_secs(),
            commands: get(&c.commands),
            errors: get(&c.errors),
            fences_signalled: get(&c.fences_signalled),
            fences_pending: get(&c.fences_pending),
            resources: get(&c.resources),
            resource_bytes: get(&c.resource_bytes),
            blob_mappings: get(&c.blob_mappings),
            exports: get(&c.exports),
            imports: get(&c.imports),
            pins: get(&c.pins),
            vnc_viewers,
            vnc_bytes,
        }
    }
}

/// A VM's record as the status command shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmStatus {
    pub id: u32,
    pub name: String,
    pub socket: String,
    pub renderer: String,
    pub worker_pid: Option<u32>,
    pub state: VmState,
    /// Seconds since the Unix epoch when the VMM connected.
    pub connected_at: u64,
    pub connected_secs: u64,
    pub commands: u64,
    pub errors: u64,
    pub fences_signalled: u64,
    pub fences_pending: u64,
    pub resources: u64,
    pub resource_bytes: u64,
    /// Blobs mapped into its host-visible window now.
    #[serde(default)]
    pub blob_mappings: u64,
    /// Buffers it exports, resources it made from imports, pins it holds (SHARES in the table:
    /// exports/imports/pins).
    #[serde(default)]
    pub exports: u64,
    #[serde(default)]
    pub imports: u64,
    #[serde(default)]
    pub pins: u64,
    /// Viewers of its VNC output now, and the bytes the output holds for it.
    #[serde(default)]
    pub vnc_viewers: u64,
    #[serde(default)]
    pub vnc_bytes: u64,
}

/// A VM's place in the registry; dropping it removes the VM.
pub struct Registration {
    registry: Arc<Registry>,
    pub record: Arc<VmRecord>,
}

impl Registration {
    /// Lists the VM: its VMM has connected.
    pub fn publish(&self) {
        lock(&self.registry.vms).insert(self.record.id, self.record.clone());
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        lock(&self.registry.vms).remove(&self.record.id);
    }
}

impl Registry {
    /// A VM about to be served, not listed until `Registration::publish`.
    pub fn register(self: &Arc<Self>, name: &str, socket: &str, renderer: &str) -> Registration {
        // Ids are never reused: a status reader never confuses a new VM with a gone one.
        let id = VmId(self.next_id.fetch_add(1, Ordering::Relaxed) + 1);
        let record = Arc::new(VmRecord {
            id,
            name: name.to_string(),
            socket: socket.to_string(),
            renderer: renderer.to_string(),
            connected_unix: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            connected: Instant::now(),
            state: Mutex::new(VmState::Connected),
            worker_pid: Arc::default(),
            counters: VmCounters::default(),
            stop: Mutex::new(None),
            output: Mutex::new(None),
        });
        Registration {
            registry: self.clone(),
            record,
        }
    }

    /// Every VM served now, by id.
    pub fn status(&self) -> Vec<VmStatus> {
        self.records().iter().map(|r| r.status()).collect()
    }

    /// The records of every VM served now, by id.
    pub fn records(&self) -> Vec<Arc<VmRecord>> {
        lock(&self.vms).values().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vms_come_and_go_with_ids_never_reused() {
        let hub = Arc::new(Registry::default());
        let a = hub.register("a", "/run/a.sock", "Venus");
        let b = hub.register("b", "/run/b.sock", "2d");
        assert!(
            hub.status().is_empty(),
            "not listed before their VMMs connect"
        );
        a.publish();
        b.publish();
        a.record.counters.commands.fetch_add(3, Ordering::Relaxed);
        a.record.worker_pid.store(4242, Ordering::Relaxed);
        b.record.set_state(VmState::Running);
        let all = hub.status();
        assert_eq!(all.len(), 2);
        assert_eq!((all[0].name.as_str(), all[0].commands), ("a", 3));
        assert_eq!(all[0].worker_pid, Some(4242));
        assert_eq!((all[1].worker_pid, all[1].state), (None, VmState::Running));
        drop(a);
        let c = hub.register("a", "/run/a.sock", "Venus");
        c.publish();
        let ids: Vec<u32> = hub.status().iter().map(|s| s.id).collect();
        assert_eq!(ids, vec![b.record.id.0, c.record.id.0]);
        assert!(c.record.id.0 > b.record.id.0, "a new VM gets a new id");
    }

    #[test]
    fn a_vm_being_disconnected_stays_so() {
        let hub = Arc::new(Registry::default());
        let a = hub.register("a", "s", "2d");
        a.record.set_state(VmState::Disconnecting);
        a.record.set_state(VmState::Running);
        assert_eq!(a.record.state(), VmState::Disconnecting);
    }
}
