//! The share registry: buffers one VM exported and other VMs imported, by UUID, and who may
//! import what (the policy).
//!
//! An export is a VM's blob resource offered under a UUID; its storage is a descriptor, offset
//! and size (the exporter's guest memory for a guest blob, or a renderer's exported blob). An
//! import hands another VM the same storage, so both map the same pages: zero copy. When the
//! exporter lets go (unref, reset, disconnect), `revoke` tells every importer, which removes its
//! mappings before `revoke` returns; the storage itself lives on in whoever still holds the
//! descriptor, and no importer can map it again (the orphan model).
//!
//! Fences cross VMs the same way: a VM exports a point on one of its renderer timelines (the
//! newest fence parked there) as a handle; another VM's share-context fence waits for a set of
//! handles, stored flat (one entry per exporter timeline, the highest point). When the exporter
//! answers that fence, or dies (its points fail and the waiter reads FENCE_ERROR), the waiter's
//! fence signals. Only renderer timelines can be exported, and renderer work never waits on
//! another VM, so waits cannot form a cycle: each wait is bounded by its producers' work.
//!
//! Lock order: a VM's device lock, then its parked-answers lock, then this registry's lock,
//! which is taken last and never held while anything outside it runs (VMs are told after it is
//! released). The policy's own lock is a leaf: held only to copy the policy out.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex, Weak};

use super::residency::{pinned_bytes, Budget, MoveCounts, Place};
pub use super::waits::SHARE_FENCE_BIT;
use super::waits::{signal, Point, Wait};
use serde::Deserialize;
use vgpud_protocol::share::{Status, Uuid};

use crate::device::share::{ShareHub, SharedStorage};
use crate::fences::Timeline;
use crate::ids::{FenceId, VmId};
use crate::sync::lock;

/// A VM that shares, as the registry reaches it.
pub trait ShareClient: Send + Sync {
    /// An import was revoked: unmap it before returning (the exporter waits for this).
    fn revoked(&self, uuid: &Uuid);
    /// Calls `record` with the newest fence parked on `timeline` (None: on each timeline), while
    /// no answer can retire (so the point cannot be missed).
    fn last_fences(
        &self,
        timeline: Option<Timeline>,
        record: &mut dyn FnMut(Vec<(Timeline, FenceId)>),
    );
    /// A share-context fence of this VM may signal.
    fn share_fence_done(&self, fence: FenceId);
    /// A fence handle this VM waits for failed (its producer died).
    fn fence_failed(&self, handle: u64);
    /// Whether a buffer this VM exported or imports may be moved now (it is not busy).
    fn can_move(&self, uuid: &Uuid) -> bool;
    /// A buffer is being moved: this VM's dynamic mappings of it go before this returns.
    fn moved(&self, uuid: &Uuid);
}

/// Who may import whose buffers, by VM name. Nothing is allowed unless listed.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    #[serde(default)]
    pub allow: Vec<Rule>,
}

/// `importers` may import what `exporter` exports; "*" stands for any VM.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    pub exporter: String,
    pub importers: Vec<String>,
}

impl Policy {
    /// Reads a policy file (JSON: `{"allow": [{"exporter": "a", "importers": ["b"]}]}`).
    pub fn load(path: &Path) -> Result<Policy, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    pub fn allows(&self, exporter: &str, importer: &str) -> bool {
        exporter != importer
            && self.allow.iter().any(|r| {
                (r.exporter == exporter || r.exporter == "*")
                    && r.importers.iter().any(|i| i == importer || i == "*")
            })
    }
}

pub(super) struct Member {
    pub(super) name: String,
    client: Weak<dyn ShareClient>,
}

pub(super) struct Export {
    pub(super) exporter: VmId,
    resource_id: u32,
    pub(super) storage: SharedStorage,
    /// Each importing VM's imports of it (one VM may import a buffer more than once).
    pub(super) importers: BTreeMap<VmId, Imports>,
    /// Explicit pins, by VM.
    pub(super) pins: BTreeMap<VmId, u32>,
    /// Whether the daemon may move its contents out (memory of its own, not a renderer's).
    pub(super) movable: bool,
    pub(super) place: Place,
    /// When it was last mapped or pinned (for LRU), in `Shares::tick`s.
    pub(super) last_use: u64,
}

/// One VM's live imports of one buffer: static ones pin it, dynamic ones accept moves. Counted
/// apart, so that a dynamic import never hides a static one of the same VM.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Imports {
    pub(super) statics: u32,
    pub(super) dynamics: u32,
}

impl Export {
    /// Pinned buffers never move: explicit pins, static imports, renderer memory.
    pub(super) fn pinned(&self) -> bool {
        !self.movable || !self.pins.is_empty() || self.importers.values().any(|i| i.statics > 0)
    }
}

#[derive(Default)]
pub(super) struct Shares {
    pub(super) members: HashMap<VmId, Member>,
    pub(super) exports: HashMap<Uuid, Export>,
    pub(super) tick: u64,
    pub(super) points: BTreeMap<u64, Point>,
    pub(super) next_handle: u64,
    pub(super) waits: Vec<Wait>,
    pub(super) next_share_fence: u64,
}

impl Shares {
    pub(super) fn client(&self, vm: VmId) -> Option<Arc<dyn ShareClient>> {
        self.members.get(&vm).and_then(|m| m.client.upgrade())
    }
}

#[derive(Default)]
pub struct ShareRegistry {
    /// Replaced whole on reload; imports made before stay.
    policy: Mutex<Arc<Policy>>,
    pub(super) shares: Mutex<Shares>,
    pub(super) budget: Option<Budget>,
    pub(super) moves: MoveCounts,
}

impl ShareRegistry {
    pub fn new(policy: Policy) -> Self {
        ShareRegistry {
            policy: Mutex::new(Arc::new(policy)),
            shares: Mutex::default(),
            budget: None,
            moves: MoveCounts::default(),
        }
    }

    /// A new policy for imports from now on (a reload); imports already made are kept.
    pub fn set_policy(&self, policy: Policy) {
        *lock(&self.policy) = Arc::new(policy);
    }

    /// The policy now (its lock is taken alone, never with another).
    pub(super) fn policy(&self) -> Arc<Policy> {
        lock(&self.policy).clone()
    }

    /// Keeps the daemon's own shared memory under `budget`, moving what must go to `dir`.
    pub fn with_budget(mut self, budget: Budget) -> Self {
        self.budget = Some(budget);
        self
    }

    /// A VM that may export and import, named as the policy names it.
    pub fn join(&self, vm: VmId, name: &str, client: Weak<dyn ShareClient>) {
        lock(&self.shares).members.insert(
            vm,
            Member {
                name: name.to_string(),
                client,
            },
        );
    }

    /// The VM is gone: everything it exported is revoked, its imports forgotten, its fence
    /// points failed (their waiters are told), its own waits dropped.
    pub fn leave(&self, vm: VmId) {
        self.revoke_all(vm);
        let ready = {
            let mut shares = lock(&self.shares);
            let ready = shares.fail_points(vm, None);
            shares.members.remove(&vm);
            for export in shares.exports.values_mut() {
                export.importers.remove(&vm);
                export.pins.remove(&vm);
            }
            shares.forget_waits_of(vm);
            ready
        };
        signal(ready);
    }

    /// Revokes every export of `vm` (its device was reset, or it is leaving).
    pub fn revoke_all(&self, vm: VmId) {
        let uuids: Vec<Uuid> = lock(&self.shares)
            .exports
            .iter()
            .filter(|(_, e)| e.exporter == vm)
            .map(|(u, _)| *u)
            .collect();
        for uuid in uuids {
            self.revoke(&uuid);
        }
    }

    /// Withdraws an export: every importer removes its mappings before this returns.
    pub fn revoke(&self, uuid: &Uuid) {
        let importers: Vec<Arc<dyn ShareClient>> = {
            let mut shares = lock(&self.shares);
            let Some(export) = shares.exports.remove(uuid) else {
                return;
            };
            export
                .importers
                .keys()
                .filter_map(|vm| shares.members.get(vm))
                .filter_map(|m| m.client.upgrade())
                .collect()
        };
        // Told outside the lock: each importer takes its own locks and waits on its VMM, which
        // --vmm-timeout bounds. Several are told at once, so that the exporter waits for the
        // slowest one, not for their sum.
        match importers.as_slice() {
            [] => {}
            [one] => one.revoked(uuid),
            many => std::thread::scope(|s| {
                for importer in many {
                    let told = std::thread::Builder::new()
                        .name("revoke".into())
                        .spawn_scoped(s, || importer.revoked(uuid));
                    if told.is_err() {
                        importer.revoked(uuid);
                    }
                }
            }),
        }
    }

    /// Every UUID exported now (for the fuzzer, which plays both guests).
    #[doc(hidden)]
    pub fn exported_uuids(&self) -> Vec<Uuid> {
        let mut uuids: Vec<Uuid> = lock(&self.shares).exports.keys().copied().collect();
        uuids.sort_unstable();
        uuids
    }

    /// The exporter's name, if `vm` may import `uuid`. An export the policy does not let it
    /// import answers like one that does not exist (NO_SUCH), so that no VM can learn which
    /// UUIDs exist; the refusal is told apart (DENIED) only for the importer's log line.
    fn may_import(&self, vm: VmId, uuid: &Uuid) -> Result<String, Status> {
        let shares = lock(&self.shares);
        let importer = shares.members.get(&vm).ok_or(Status::Unsupported)?;
        let export = shares.exports.get(uuid).ok_or(Status::NoSuch)?;
        let exporter = shares
            .members
            .get(&export.exporter)
            .map(|m| m.name.clone())
            .unwrap_or_default();
        if !self.policy().allows(&exporter, &importer.name) {
            return Err(Status::Denied);
        }
        Ok(exporter)
    }

    /// How many VMs import `uuid` now (for tests and status).
    pub fn importers(&self, uuid: &Uuid) -> usize {
        lock(&self.shares)
            .exports
            .get(uuid)
            .map_or(0, |e| e.importers.len())
    }
}

impl ShareHub for ShareRegistry {
    fn export(
        &self,
        vm: VmId,
        resource_id: u32,
        uuid: Uuid,
        storage: SharedStorage,
        movable: bool,
    ) -> Result<Uuid, Status> {
        let mut shares = lock(&self.shares);
        if !shares.members.contains_key(&vm) {
            return Err(Status::Unsupported);
        }
        if let Some(e) = shares.exports.get(&uuid) {
            // Exporting the same resource again answers the same UUID.
            return if e.exporter == vm && e.resource_id == resource_id {
                Ok(uuid)
            } else {
                Err(Status::Invalid)
            };
        }
        shares.tick += 1;
        let last_use = shares.tick;
        shares.exports.insert(
            uuid,
            Export {
                exporter: vm,
                resource_id,
                storage,
                importers: BTreeMap::new(),
                pins: BTreeMap::new(),
                movable,
                place: Place::Resident,
                last_use,
            },
        );
        Ok(uuid)
    }

    fn import(
        &self,
        vm: VmId,
        uuid: &Uuid,
        dynamic: bool,
    ) -> Result<(SharedStorage, String), Status> {
        // The policy first: a VM it refuses must not touch the buffer (restore it, make it
        // recently used) nor learn anything from the answer.
        let exporter = self.may_import(vm, uuid)?;
        if !dynamic {
            // A static import pins it where it is: resident.
            self.ensure_resident(uuid)?;
        }
        let mut shares = lock(&self.shares);
        let budget = self.budget.as_ref().map(|b| b.limit);
        let export = shares.exports.get_mut(uuid).ok_or(Status::NoSuch)?;
        if !dynamic && !export.pinned() {
            // A static import pins the buffer: refused if pinned memory would exceed the budget.
            let size = export.storage.size;
            if budget.is_some_and(|b| pinned_bytes(&shares.exports) + size > b) {
                return Err(Status::NoSpace);
            }
        }
        let export = shares.exports.get_mut(uuid).ok_or(Status::NoSuch)?;
        if !matches!(export.place, Place::Resident) && !dynamic {
            // Moved out again since it was made resident above.
            return Err(Status::NoSpace);
        }
        let imports = export.importers.entry(vm).or_default();
        if dynamic {
            imports.dynamics += 1;
        } else {
            imports.statics += 1;
        }
        Ok((export.storage.clone(), exporter))
    }

    fn unimport(&self, vm: VmId, uuid: &Uuid, dynamic: bool) {
        let mut shares = lock(&self.shares);
        let Some(export) = shares.exports.get_mut(uuid) else {
            return;
        };
        let Some(imports) = export.importers.get_mut(&vm) else {
            return;
        };
        let count = if dynamic {
            &mut imports.dynamics
        } else {
            &mut imports.statics
        };
        *count = count.saturating_sub(1);
        if *imports == Imports::default() {
            export.importers.remove(&vm);
        }
    }

    fn fences_usable(&self, vm: VmId, handles: &[u64]) -> Result<(), Status> {
        self.usable_points(vm, handles)
    }

    fn pin(&self, vm: VmId, uuid: &Uuid) -> Result<(), Status> {
        self.pin_export(vm, uuid)
    }

    fn unpin(&self, vm: VmId, uuid: &Uuid) {
        self.unpin_export(vm, uuid)
    }

    fn ensure_resident(&self, uuid: &Uuid) -> Result<(), Status> {
        ShareRegistry::ensure_resident(self, uuid)
    }

    fn export_fence(&self, vm: VmId, timeline: Option<Timeline>) -> Result<u64, Status> {
        self.export_point(vm, timeline)
    }

    fn share_fence(&self, vm: VmId, handles: &[u64]) -> Result<(FenceId, Vec<u64>), Status> {
        self.wait_points(vm, handles)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::GuestCtxId;
    use std::fs::File;

    fn storage() -> SharedStorage {
        SharedStorage {
            file: Arc::new(File::open("/dev/null").unwrap()),
            offset: 0,
            size: 4096,
            map_info: 0,
        }
    }

    /// A VM as the registry sees it: records what it is told; `last` is its newest parked fence.
    #[derive(Default)]
    struct Told {
        revoked: Mutex<Vec<Uuid>>,
        moved: Mutex<Vec<Uuid>>,
        busy: Mutex<bool>,
        last: Mutex<Option<FenceId>>,
        done: Mutex<Vec<FenceId>>,
        failed: Mutex<Vec<u64>>,
    }

    impl ShareClient for Told {
        fn revoked(&self, uuid: &Uuid) {
            self.revoked.lock().unwrap().push(*uuid);
        }
        fn last_fences(
            &self,
            t: Option<Timeline>,
            record: &mut dyn FnMut(Vec<(Timeline, FenceId)>),
        ) {
            let last = *self.last.lock().unwrap();
            record(
                last.map(|f| (t.unwrap_or(Timeline::GLOBAL), f))
                    .into_iter()
                    .collect(),
            );
        }
        fn share_fence_done(&self, fence: FenceId) {
            self.done.lock().unwrap().push(fence);
        }
        fn fence_failed(&self, handle: u64) {
            self.failed.lock().unwrap().push(handle);
        }
        fn can_move(&self, _: &Uuid) -> bool {
            !*self.busy.lock().unwrap()
        }
        fn moved(&self, uuid: &Uuid) {
            self.moved.lock().unwrap().push(*uuid);
        }
    }

    /// Members named a, b, c, ... with ids 1, 2, 3, ...; their clients stay alive.
    fn members(hub: &ShareRegistry, n: usize) -> Vec<Arc<Told>> {
        (0..n)
            .map(|i| {
                let told = Arc::new(Told::default());
                let client: Arc<dyn ShareClient> = told.clone();
                let name = char::from(b'a' + i as u8).to_string();
                hub.join(VmId(i as u32 + 1), &name, Arc::downgrade(&client));
                told
            })
            .collect()
    }

    fn policy(json: &str) -> Policy {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn policy_denies_unless_listed() {
        let p = policy(
            r#"{"allow": [{"exporter": "a", "importers": ["b"]}, {"exporter": "*", "importers": ["viewer"]}]}"#,
        );
        assert!(p.allows("a", "b"));
        assert!(!p.allows("b", "a"));
        assert!(!p.allows("a", "c"));
        assert!(p.allows("c", "viewer"));
        assert!(!p.allows("viewer", "viewer"), "never oneself");
        assert!(!Policy::default().allows("a", "b"));
        assert!(serde_json::from_str::<Policy>(r#"{"allow": [], "extra": 1}"#).is_err());
    }

    #[test]
    fn import_follows_policy_and_revoke_tells_every_importer() {
        let hub = ShareRegistry::new(policy(
            r#"{"allow": [{"exporter": "a", "importers": ["b", "c"]}]}"#,
        ));
        let clients = members(&hub, 4);
        let uuid = [5; 16];
        assert_eq!(hub.export(VmId(1), 7, uuid, storage(), false), Ok(uuid));
        assert_eq!(
            hub.export(VmId(1), 7, uuid, storage(), false),
            Ok(uuid),
            "again"
        );
        assert_eq!(
            hub.export(VmId(2), 3, uuid, storage(), false),
            Err(Status::Invalid)
        );
        assert!(hub.import(VmId(2), &uuid, true).is_ok());
        assert!(hub.import(VmId(3), &uuid, true).is_ok());
        // Refused by the policy: told apart (for the log) from an unknown UUID here; the
        // device answers both NO_SUCH.
        assert_eq!(hub.import(VmId(4), &uuid, true).err(), Some(Status::Denied));
        assert_eq!(
            hub.import(VmId(2), &[9; 16], true).err(),
            Some(Status::NoSuch)
        );
        assert_eq!(hub.importers(&uuid), 2);
        hub.unimport(VmId(3), &uuid, true);
        hub.revoke(&uuid);
        assert_eq!(*clients[1].revoked.lock().unwrap(), vec![uuid]);
        assert!(
            clients[2].revoked.lock().unwrap().is_empty(),
            "no longer imported"
        );
        assert_eq!(hub.import(VmId(2), &uuid, true).err(), Some(Status::NoSuch));
    }

    #[test]
    fn a_new_policy_governs_imports_from_then_on_and_keeps_earlier_ones() {
        let hub = ShareRegistry::new(policy(
            r#"{"allow": [{"exporter": "a", "importers": ["b"]}]}"#,
        ));
        let _clients = members(&hub, 3);
        let uuid = [6; 16];
        hub.export(VmId(1), 7, uuid, storage(), false).unwrap();
        assert!(hub.import(VmId(2), &uuid, true).is_ok());
        assert_eq!(hub.import(VmId(3), &uuid, true).err(), Some(Status::Denied));
        hub.set_policy(policy(
            r#"{"allow": [{"exporter": "a", "importers": ["c"]}]}"#,
        ));
        assert!(hub.import(VmId(3), &uuid, true).is_ok(), "c may now");
        assert_eq!(hub.importers(&uuid), 2, "b's import stays");
        assert_eq!(hub.import(VmId(2), &uuid, true).err(), Some(Status::Denied));
    }

    #[test]
    fn a_leaving_exporter_revokes_everything_it_exported() {
        let hub = ShareRegistry::new(policy(
            r#"{"allow": [{"exporter": "a", "importers": ["*"]}]}"#,
        ));
        let clients = members(&hub, 2);
        for i in 0..3u8 {
            hub.export(VmId(1), u32::from(i), [i; 16], storage(), false)
                .unwrap();
            hub.import(VmId(2), &[i; 16], true).unwrap();
        }
        hub.leave(VmId(1));
        assert_eq!(clients[1].revoked.lock().unwrap().len(), 3);
        assert_eq!(hub.importers(&[0; 16]), 0);
    }

    #[test]
    fn waits_keep_one_point_per_timeline_and_end_with_their_producer() {
        let hub = ShareRegistry::new(policy(
            r#"{"allow": [{"exporter": "a", "importers": ["b"]}]}"#,
        ));
        let clients = members(&hub, 2);
        let (a, b) = (VmId(1), VmId(2));
        let ring = |r| Timeline {
            ctx: GuestCtxId(1),
            ring: Some(r),
        };
        let point = |fence: u64, timeline| {
            *clients[0].last.lock().unwrap() = Some(FenceId(fence));
            hub.export_fence(a, Some(timeline)).unwrap()
        };
        let (p5, p9, q3) = (point(5, ring(0)), point(9, ring(0)), point(3, ring(1)));
        let (fence, failed) = hub.share_fence(b, &[p5, p9, q3, p9]).unwrap();
        assert!(failed.is_empty());
        let deps: Vec<u64> = lock(&hub.shares).waits[0].deps.clone();
        assert_eq!(deps.len(), 2, "flat: one point per timeline");
        assert!(deps.contains(&p9) && deps.contains(&q3));
        // Fence 5 retiring is not enough; 9 and 3 are.
        hub.fences_done(a, &[FenceId(5)]);
        hub.fences_done(a, &[FenceId(3)]);
        assert!(clients[1].done.lock().unwrap().is_empty());
        hub.fences_done(a, &[FenceId(9)]);
        assert_eq!(*clients[1].done.lock().unwrap(), vec![fence]);
        // Nothing pending: a wait signals at once. A producer that dies fails its waiters.
        *clients[0].last.lock().unwrap() = None;
        let idle = hub.export_fence(a, Some(ring(2))).unwrap();
        let (now, _) = hub.share_fence(b, &[idle]).unwrap();
        assert_eq!(clients[1].done.lock().unwrap().last(), Some(&now));
        let p11 = point(11, ring(0));
        let (pending, _) = hub.share_fence(b, &[p11]).unwrap();
        hub.leave(a);
        assert_eq!(clients[1].done.lock().unwrap().last(), Some(&pending));
        assert_eq!(*clients[1].failed.lock().unwrap(), vec![p11]);
        // b may not wait on its own policy's wrong side: a cannot wait on b's points.
        let mine = hub.export_fence(b, Some(Timeline::GLOBAL)).unwrap();
        assert_eq!(
            hub.share_fence(a, &[mine]).err(),
            Some(Status::Unsupported),
            "a left"
        );
        // A handle never given out cannot be waited for; one that was, and was forgotten
        // (only passed points are), is fine, and left out of the wait.
        assert_eq!(hub.fences_usable(b, &[12345]), Err(Status::NoSuch));
        assert_eq!(hub.fences_usable(b, &[0]), Err(Status::NoSuch));
        assert_eq!(hub.fences_usable(b, &[mine, p11]), Ok(()));
        lock(&hub.shares).points.remove(&idle);
        assert_eq!(hub.fences_usable(b, &[idle]), Ok(()));
        let (forgotten, _) = hub.share_fence(b, &[idle]).unwrap();
        assert_eq!(clients[1].done.lock().unwrap().last(), Some(&forgotten));
    }

    #[test]
    fn points_of_a_vm_the_policy_refuses_answer_like_unknown_handles() {
        let hub = ShareRegistry::new(policy(
            r#"{"allow": [{"exporter": "a", "importers": ["b"]}]}"#,
        ));
        let clients = members(&hub, 3);
        *clients[0].last.lock().unwrap() = Some(FenceId(4));
        let point = hub.export_fence(VmId(1), Some(Timeline::GLOBAL)).unwrap();
        assert_eq!(hub.fences_usable(VmId(2), &[point]), Ok(()));
        assert_eq!(hub.fences_usable(VmId(1), &[point]), Ok(()), "its own");
        assert_eq!(
            hub.fences_usable(VmId(3), &[point]),
            hub.fences_usable(VmId(3), &[point + 1000]),
            "c learns nothing of a's points"
        );
        assert_eq!(hub.fences_usable(VmId(3), &[point]), Err(Status::NoSuch));
    }

    #[test]
    fn a_dynamic_import_never_hides_a_static_import_of_the_same_vm() {
        let hub = ShareRegistry::new(policy(
            r#"{"allow": [{"exporter": "a", "importers": ["b"]}]}"#,
        ));
        let _clients = members(&hub, 2);
        let uuid = [8; 16];
        hub.export(VmId(1), 7, uuid, storage(), true).unwrap();
        let pinned = |hub: &ShareRegistry| lock(&hub.shares).exports[&uuid].pinned();
        hub.import(VmId(2), &uuid, false).unwrap();
        hub.import(VmId(2), &uuid, true).unwrap();
        assert!(pinned(&hub), "the static import pins it");
        hub.unimport(VmId(2), &uuid, true);
        assert!(pinned(&hub), "still, without the dynamic one");
        hub.import(VmId(2), &uuid, true).unwrap();
        hub.unimport(VmId(2), &uuid, false);
        assert!(!pinned(&hub), "the static one ended");
        assert_eq!(hub.importers(&uuid), 1);
        hub.unimport(VmId(2), &uuid, true);
        assert_eq!(hub.importers(&uuid), 0);
    }
}
