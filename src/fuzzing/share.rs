//! Share-context sequences between two VMs' devices and one share registry, for the fuzz target
//! `share` and tests/device_sequences.rs: arbitrary bytes become blob creations, share-context
//! command streams (well-formed or garbage), imports, maps, frees, fenced submissions and resets
//! on either VM, under a one-page budget for shared memory. Revocations, moves and fence signals
//! are carried out as the transport would (outside the device locks). Checked after every step: nothing panics, resource counts stay within
//! quota, a reset VM holds nothing, and what is pending in the registry stays bounded.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use vgpud_protocol::share::{ShareCommand, Uuid, CAPSET_SHARE, NO_REPLY};
use vgpud_protocol::{
    Command, CreateBlob, CtrlHeader, MemEntry, Request, BLOB_FLAG_USE_MAPPABLE, BLOB_MEM_GUEST,
    BLOB_MEM_HOST3D, FLAG_FENCE, FLAG_INFO_RING_IDX,
};
use vm_memory::GuestMemoryMmap;

use super::input::Input;
use crate::device::{Device, DeviceConfig};
use crate::fences::Timeline;
use crate::hub::residency::Budget;
use crate::hub::share::{Policy, Rule, ShareClient, ShareRegistry};
use crate::ids::{FenceId, VmId};
use crate::render::Soft2d;
use crate::sync::lock;

type Dev = Device<Arc<Soft2d>>;

const MAX_STEPS: usize = 400;
const MAX_RESOURCES: usize = 12;
const SHARE_CTX: u32 = 1;

/// One VM as the registry reaches it.
struct Client {
    dev: Weak<Mutex<Dev>>,
    moves: Arc<AtomicU64>,
}

impl ShareClient for Client {
    fn revoked(&self, uuid: &Uuid) {
        if let Some(dev) = self.dev.upgrade() {
            // The transport would send these unmaps to the VMM; here they are only made.
            let _ = lock(&dev).revoke_import(uuid);
        }
    }
    fn last_fences(&self, _: Option<Timeline>, record: &mut dyn FnMut(Vec<(Timeline, FenceId)>)) {
        record(Vec::new());
    }
    fn share_fence_done(&self, _: FenceId) {}
    fn fence_failed(&self, handle: u64) {
        if let Some(dev) = self.dev.upgrade() {
            lock(&dev).share_fence_failed(handle);
        }
    }
    fn can_move(&self, uuid: &Uuid) -> bool {
        self.dev
            .upgrade()
            .is_some_and(|dev| !lock(&dev).share_busy(uuid))
    }
    fn moved(&self, uuid: &Uuid) {
        self.moves.fetch_add(1, Ordering::Relaxed);
        if let Some(dev) = self.dev.upgrade() {
            let _ = lock(&dev).share_moved(uuid);
        }
    }
}

/// How deep a run got.
#[derive(Clone, Copy, Debug, Default)]
pub struct ShareStats {
    /// Steps at which something was exported.
    pub exported: u64,
    /// Resources made from imports.
    pub imported: u64,
    /// Revocations carried out.
    pub revoked: u64,
    /// VMs told a buffer they use was moved out under the budget.
    pub moved: u64,
}

/// Runs `data` against two fresh VMs, `mem` being both VMs' guest memory.
pub fn run(data: &[u8], mem: &Arc<GuestMemoryMmap>, renderer: &Arc<Soft2d>) -> ShareStats {
    let mut stats = ShareStats::default();
    let policy = Policy {
        allow: vec![Rule {
            exporter: "*".into(),
            importers: vec!["*".into()],
        }],
    };
    // A budget of one page: exports and maps push each other out.
    let hub = Arc::new(ShareRegistry::new(policy).with_budget(Budget {
        limit: 4096,
        dir: std::env::temp_dir(),
    }));
    let cfg = DeviceConfig {
        max_resources: MAX_RESOURCES,
        max_resource_bytes: 1 << 20,
        hostmem: 1 << 20,
        ..DeviceConfig::default()
    };
    let moves = Arc::new(AtomicU64::new(0));
    let mut vms = Vec::new();
    let mut clients: Vec<Arc<dyn ShareClient>> = Vec::new();
    for i in 0..2u32 {
        let dev = Device::new(renderer.clone(), cfg.clone()).with_share(hub.clone(), VmId(i + 1));
        let dev = Arc::new(Mutex::new(dev));
        let client: Arc<dyn ShareClient> = Arc::new(Client {
            dev: Arc::downgrade(&dev),
            moves: moves.clone(),
        });
        hub.join(VmId(i + 1), &format!("vm{i}"), Arc::downgrade(&client));
        clients.push(client);
        vms.push(dev);
    }
    let mut uuids: Vec<Uuid> = Vec::new();
    let mut inp = Input::new(data);
    let mut steps = 0;
    while !inp.is_empty() && steps < MAX_STEPS {
        steps += 1;
        let vm = usize::from(inp.u8() & 1);
        let (cmd, ctx, fenced) = build(&mut inp, &uuids);
        if cmd.is_none() {
            // A reset, as the driver (or a reconnect) would.
            hub.revoke_all(VmId(vm as u32 + 1));
            let mut dev = lock(&vms[vm]);
            dev.reset();
            assert_eq!(dev.resource_count(), 0, "resources survived a reset");
            continue;
        }
        let Some(cmd) = cmd else { continue };
        let hdr = CtrlHeader {
            ctx_id: ctx,
            flags: if fenced {
                FLAG_FENCE | FLAG_INFO_RING_IDX
            } else {
                0
            },
            fence_id: 1,
            ..CtrlHeader::default()
        };
        let import =
            matches!(&cmd, Command::ResourceCreateBlob(b) if b.blob_id != 0) && ctx == SHARE_CTX;
        let outcome = {
            let mut dev = lock(&vms[vm]);
            let out = dev.handle(&Request { hdr, cmd }, mem);
            if import && out.response == vgpud_protocol::Response::OkNodata {
                stats.imported += 1;
            }
            assert!(
                dev.resource_count() <= MAX_RESOURCES,
                "over the resource quota"
            );
            out
        };
        // As the transport does: revocations once the device lock is released.
        for uuid in &outcome.revoke {
            hub.revoke(uuid);
            stats.revoked += 1;
        }
        hub.enforce_budget();
        // What a guest would have read in its replies: the UUIDs exported so far (and now and
        // then one that names nothing).
        uuids = hub.exported_uuids();
        stats.exported += u64::from(!uuids.is_empty());
        if inp.chance(16) {
            uuids.push([inp.u8(); 16]);
        }
    }
    for vm in &vms {
        lock(vm).reset();
    }
    drop(clients);
    stats.moved = moves.load(Ordering::Relaxed);
    stats
}

/// The next step: a request (None: a reset) on a context, fenced or not.
fn build(inp: &mut Input, uuids: &[Uuid]) -> (Option<Command>, u32, bool) {
    let id = 1 + inp.below(4);
    let op = inp.below(13);
    let cmd = match op {
        0 => Command::CtxCreate {
            context_init: if inp.chance(200) {
                CAPSET_SHARE
            } else {
                inp.wild_u32()
            },
            debug_name: b"fuzz".to_vec(),
        },
        1 | 2 => Command::ResourceCreateBlob(CreateBlob {
            resource_id: id,
            blob_mem: if inp.chance(128) {
                BLOB_MEM_HOST3D
            } else {
                BLOB_MEM_GUEST
            },
            blob_flags: BLOB_FLAG_USE_MAPPABLE,
            blob_id: if inp.chance(128) {
                0
            } else {
                u64::from(inp.below(4))
            },
            size: u64::from(1 + inp.below(3)) * 4096 - u64::from(inp.chance(16) as u8),
            entries: if inp.chance(128) {
                vec![MemEntry {
                    addr: u64::from(inp.below(64)) * 4096,
                    length: 4096 * (1 + inp.below(3)),
                }]
            } else {
                Vec::new()
            },
        }),
        3..=6 => Command::Submit3d {
            commands: stream(inp, uuids),
        },
        7 => Command::ResourceMapBlob {
            resource_id: id,
            offset: u64::from(inp.below(8)) * 4096,
        },
        8 => Command::ResourceUnmapBlob { resource_id: id },
        9 | 10 => Command::ResourceUnref { resource_id: id },
        11 => Command::ResourceAssignUuid { resource_id: id },
        _ => return (None, 0, false),
    };
    let ctx = if inp.chance(220) {
        SHARE_CTX
    } else {
        inp.below(3)
    };
    (Some(cmd), ctx, inp.chance(100))
}

/// A share-context command stream: mostly well-formed, sometimes garbage.
fn stream(inp: &mut Input, uuids: &[Uuid]) -> Vec<u8> {
    if inp.chance(20) {
        let n = inp.below(64) as usize;
        return inp.bytes(n).to_vec();
    }
    let mut out = Vec::new();
    for _ in 0..1 + inp.below(4) {
        let id = 1 + inp.below(4);
        let c = match inp.below(8) {
            0 => ShareCommand::SetReplyBlob { resource_id: id },
            1 => ShareCommand::Export { resource_id: id },
            2 => ShareCommand::Import {
                uuid: if uuids.is_empty() {
                    [0; 16]
                } else {
                    inp.pick(uuids)
                },
                dynamic: inp.chance(220),
            },
            3 => ShareCommand::Pin { resource_id: id },
            4 => ShareCommand::Unpin { resource_id: id },
            5 => ShareCommand::ExportFence {
                ctx_id: if inp.chance(40) {
                    vgpud_protocol::share::EXPORT_FENCE_ALL
                } else {
                    inp.below(3)
                },
                ring: inp.below(70),
            },
            6 => ShareCommand::WaitFences {
                handles: (0..inp.below(4)).map(|_| u64::from(inp.below(8))).collect(),
            },
            _ => ShareCommand::ReadEvents {
                max: inp.wild_u32(),
            },
        };
        // Mostly 4-byte aligned, and now and then past the reply blob or misaligned: a stream
        // with any such reply is refused whole.
        let reply = if !inp.chance(80) {
            NO_REPLY
        } else if inp.chance(16) {
            inp.below(4096 + 64)
        } else {
            4 * inp.below(512)
        };
        out.extend_from_slice(&c.encode(reply));
    }
    out
}
