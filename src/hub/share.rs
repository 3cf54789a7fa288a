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
//! Lock order: this registry's one lock is taken last and never held while anything outside
//! it runs (a VM's device lock may be held when calling in; importers are told after it is
//! released).

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex, Weak};

use log::{info, warn};
use serde::Deserialize;
use vgpud_protocol::share::{Status, Uuid};

use crate::device::share::{ShareHub, SharedStorage};
use crate::ids::VmId;
use crate::sync::lock;

/// A VM that imports: told when an import is revoked, so that it unmaps it before the exporter's
/// request completes.
pub trait ShareClient: Send + Sync {
    fn revoked(&self, uuid: &Uuid);
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

struct Member {
    name: String,
    client: Weak<dyn ShareClient>,
}

struct Export {
    exporter: VmId,
    resource_id: u32,
    storage: SharedStorage,
    importers: BTreeSet<VmId>,
}

#[derive(Default)]
struct Shares {
    members: HashMap<VmId, Member>,
    exports: HashMap<Uuid, Export>,
}

#[derive(Default)]
pub struct ShareRegistry {
    policy: Policy,
    shares: Mutex<Shares>,
}

impl ShareRegistry {
    pub fn new(policy: Policy) -> Self {
        ShareRegistry {
            policy,
            shares: Mutex::default(),
        }
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

    /// The VM is gone: everything it exported is revoked, its imports forgotten.
    pub fn leave(&self, vm: VmId) {
        self.revoke_all(vm);
        let mut shares = lock(&self.shares);
        shares.members.remove(&vm);
        for export in shares.exports.values_mut() {
            export.importers.remove(&vm);
        }
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
                .iter()
                .filter_map(|vm| shares.members.get(vm))
                .filter_map(|m| m.client.upgrade())
                .collect()
        };
        // Told outside the lock: each importer takes its own locks and waits on its VMM.
        for importer in importers {
            importer.revoked(uuid);
        }
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
        shares.exports.insert(
            uuid,
            Export {
                exporter: vm,
                resource_id,
                storage,
                importers: BTreeSet::new(),
            },
        );
        Ok(uuid)
    }

    fn import(&self, vm: VmId, uuid: &Uuid) -> Result<SharedStorage, Status> {
        let mut shares = lock(&self.shares);
        let importer = shares
            .members
            .get(&vm)
            .map(|m| m.name.clone())
            .ok_or(Status::Unsupported)?;
        let Some(export) = shares.exports.get(uuid) else {
            return Err(Status::NoSuch);
        };
        let exporter = shares
            .members
            .get(&export.exporter)
            .map(|m| m.name.clone())
            .unwrap_or_default();
        if !self.policy.allows(&exporter, &importer) {
            // Once per refusal: a guest repeating it pays with a round trip each.
            warn!("share: {importer} may not import from {exporter} (policy)");
            return Err(Status::Denied);
        }
        let export = shares.exports.get_mut(uuid).ok_or(Status::NoSuch)?;
        export.importers.insert(vm);
        info!("share: {importer} imports a buffer of {exporter}");
        Ok(export.storage.clone())
    }

    fn unimport(&self, vm: VmId, uuid: &Uuid) {
        if let Some(export) = lock(&self.shares).exports.get_mut(uuid) {
            export.importers.remove(&vm);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::File;

    fn storage() -> SharedStorage {
        SharedStorage {
            file: Arc::new(File::open("/dev/null").unwrap()),
            offset: 0,
            size: 4096,
            map_info: 0,
        }
    }

    #[derive(Default)]
    struct Told(Mutex<Vec<Uuid>>);

    impl ShareClient for Told {
        fn revoked(&self, uuid: &Uuid) {
            self.0.lock().unwrap().push(*uuid);
        }
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
        let clients: Vec<Arc<Told>> = (0..4).map(|_| Arc::default()).collect();
        for (i, name) in ["a", "b", "c", "d"].iter().enumerate() {
            let c: Arc<dyn ShareClient> = clients[i].clone();
            hub.join(VmId(i as u32 + 1), name, Arc::downgrade(&c));
            std::mem::forget(c);
        }
        let uuid = [5; 16];
        assert_eq!(hub.export(VmId(1), 7, uuid, storage()), Ok(uuid));
        assert_eq!(hub.export(VmId(1), 7, uuid, storage()), Ok(uuid), "again");
        assert_eq!(
            hub.export(VmId(2), 3, uuid, storage()),
            Err(Status::Invalid)
        );
        assert!(hub.import(VmId(2), &uuid).is_ok());
        assert!(hub.import(VmId(3), &uuid).is_ok());
        assert_eq!(hub.import(VmId(4), &uuid).err(), Some(Status::Denied));
        assert_eq!(hub.import(VmId(2), &[9; 16]).err(), Some(Status::NoSuch));
        assert_eq!(hub.importers(&uuid), 2);
        hub.unimport(VmId(3), &uuid);
        hub.revoke(&uuid);
        assert_eq!(*clients[1].0.lock().unwrap(), vec![uuid]);
        assert!(
            clients[2].0.lock().unwrap().is_empty(),
            "no longer imported"
        );
        assert_eq!(hub.import(VmId(2), &uuid).err(), Some(Status::NoSuch));
    }

    #[test]
    fn a_leaving_exporter_revokes_everything_it_exported() {
        let hub = ShareRegistry::new(policy(
            r#"{"allow": [{"exporter": "a", "importers": ["*"]}]}"#,
        ));
        let b = Arc::new(Told::default());
        let bc: Arc<dyn ShareClient> = b.clone();
        let a: Arc<dyn ShareClient> = Arc::new(Told::default());
        hub.join(VmId(1), "a", Arc::downgrade(&a));
        hub.join(VmId(2), "b", Arc::downgrade(&bc));
        for i in 0..3u8 {
            hub.export(VmId(1), u32::from(i), [i; 16], storage())
                .unwrap();
            hub.import(VmId(2), &[i; 16]).unwrap();
        }
        hub.leave(VmId(1));
        assert_eq!(b.0.lock().unwrap().len(), 3);
        assert_eq!(hub.importers(&[0; 16]), 0);
    }
}
