//! Sharing buffers between VMs through the share context (protocol::share): export of host blobs,
//! import by UUID under the daemon's policy, zero-copy mapping into the importer's window, fences
//! across VMs, and revocation that takes the importer's mapping away before the exporter's
//! request completes.

mod common;

use std::time::Duration;

use common::share::*;
use common::*;
use vgpud_harness::{Daemon, Vm};
use vgpud_protocol::share::{
    decode_reply, event, ShareCommand, ShareEvent, Status, Uuid, CAPSET_SHARE, NO_REPLY,
};
use vgpud_protocol::{
    Command, CreateBlob, Reader, Response, BLOB_FLAG_USE_MAPPABLE, BLOB_MEM_HOST3D,
};

/// VMs named `names` that may share, with `renderer` and a policy that lets b (only) import
/// from a; returns the daemon and its policy file.
fn sharing_daemon(names: &[&str], renderer: &str) -> (Daemon, std::path::PathBuf) {
    sharing_daemon_with(
        names,
        r#"{"allow": [{"exporter": "a", "importers": ["b"]}]}"#,
        &["--renderer", renderer],
    )
}

/// Three VMs a, b, c with the 2D renderer.
fn daemon_abc() -> (Daemon, std::path::PathBuf) {
    sharing_daemon(&["a", "b", "c"], "2d")
}

/// Two 2D VMs a, b (b may import from a) under a `--share-budget` of `budget`.
fn budget_pair(budget: &str) -> (Daemon, std::path::PathBuf) {
    let evict_dir = std::env::temp_dir();
    sharing_daemon_with(
        &["a", "b"],
        r#"{"allow": [{"exporter": "a", "importers": ["b"]}]}"#,
        &[
            "--renderer",
            "2d",
            "--share-budget",
            budget,
            "--share-evict-dir",
            evict_dir.to_str().unwrap(),
        ],
    )
}

/// Two VMs a, b with the scripted renderer (fences that take as long as a script says).
fn fake_pair() -> (Daemon, std::path::PathBuf) {
    sharing_daemon(&["a", "b"], "fake")
}

/// As `host_blob`, made on the share context (as a guest program makes it: the DRM file's
/// context).
fn share_ctx_host_blob(s: &mut Sharer, id: u32, pages: u64, fill: u8, offset: u64) {
    let create = Command::ResourceCreateBlob(CreateBlob {
        resource_id: id,
        blob_mem: BLOB_MEM_HOST3D,
        blob_flags: BLOB_FLAG_USE_MAPPABLE,
        blob_id: 0,
        size: pages * PAGE,
        entries: vec![],
    });
    assert_eq!(
        answer(&mut s.vm, &in_ctx(SHARE_CTX, create)).1,
        Response::OkNodata,
        "RESOURCE_CREATE_BLOB of a host blob of blob id 0 on the share context"
    );
    let map = Command::ResourceMapBlob {
        resource_id: id,
        offset,
    };
    assert!(matches!(call(&mut s.vm, map), Response::OkMapInfo { .. }));
    let bytes = vec![fill; (pages * PAGE) as usize];
    assert!(s.vm.shmem().write(SHM, offset, &bytes));
}

#[test]
fn an_imported_buffer_is_the_exporters_memory_both_ways() {
    let (d, policy) = daemon_abc();
    let mut a = Sharer::new(&d, 0);
    let mut b = Sharer::new(&d, 1);
    const A_AT: u64 = 8 * PAGE;
    host_blob(&mut a.vm, 1, 2, 0x5a, A_AT);
    let uuid = a.export(1);
    assert_eq!(a.export(1), uuid, "exporting again gives the same UUID");
    let size = b.import_and_map(uuid, 7, 4 * PAGE);
    assert_eq!(size, 2 * PAGE);
    // B's window shows A's pages, and writes go both ways: the same memory.
    let seen =
        b.vm.shmem()
            .read(SHM, 4 * PAGE, size as usize)
            .expect("mapped");
    assert!(seen.iter().all(|&x| x == 0x5a));
    assert!(a.vm.shmem().write(SHM, A_AT + 100, b"from a"));
    assert_eq!(
        b.vm.shmem().read(SHM, 4 * PAGE + 100, 6).unwrap(),
        b"from a"
    );
    assert!(b.vm.shmem().write(SHM, 4 * PAGE + PAGE, b"from b"));
    assert_eq!(a.vm.shmem().read(SHM, A_AT + PAGE, 6).unwrap(), b"from b");
    let _ = std::fs::remove_file(policy);
}

/// A buffer made on the share context is memory of the daemon's own whatever the VM's renderer.
/// On a 3D VM (the scripted renderer, which makes host blobs only for contexts of its own, as
/// virglrenderer does) it is made, exported, imported and shared both ways as on a 2D VM, and
/// its exporter's unref takes it from the importer.
#[test]
fn a_3d_vm_shares_a_host_blob_made_on_its_share_context() {
    let (d, policy) = fake_pair();
    let mut a = Sharer::new(&d, 0);
    let mut b = Sharer::new(&d, 1);
    const A_AT: u64 = 8 * PAGE;
    share_ctx_host_blob(&mut a, 1, 2, 0x3c, A_AT);
    let uuid = a.export(1);
    let size = b.import_and_map(uuid, 7, 4 * PAGE);
    assert_eq!(size, 2 * PAGE);
    let seen = b.vm.shmem().read(SHM, 4 * PAGE, size as usize).unwrap();
    assert!(seen.iter().all(|&x| x == 0x3c), "the exporter's pages");
    assert!(b.vm.shmem().write(SHM, 4 * PAGE + PAGE, b"from b"));
    assert_eq!(a.vm.shmem().read(SHM, A_AT + PAGE, 6).unwrap(), b"from b");
    ok(&mut a.vm, Command::ResourceUnref { resource_id: 1 });
    assert!(b.vm.shmem().mappings().is_empty(), "revoked from b");
    let _ = std::fs::remove_file(policy);
}

/// Memory of the daemon's own on a 3D VM is moved out under the budget like on a 2D VM.
#[test]
fn a_3d_vms_share_context_buffers_move_under_the_budget() {
    let evict_dir = std::env::temp_dir();
    let (d, policy) = sharing_daemon_with(
        &["a", "b"],
        r#"{"allow": [{"exporter": "a", "importers": ["b"]}]}"#,
        &[
            "--renderer",
            "fake",
            "--share-budget",
            "4K",
            "--share-evict-dir",
            evict_dir.to_str().unwrap(),
        ],
    );
    let mut a = Sharer::new(&d, 0);
    let mut b = Sharer::new(&d, 1);
    let mut uuids = Vec::new();
    for i in 0..2u32 {
        share_ctx_host_blob(&mut a, 10 + i, 1, 0x60 + i as u8, 64 * PAGE);
        ok(
            &mut a.vm,
            Command::ResourceUnmapBlob {
                resource_id: 10 + i,
            },
        );
        uuids.push(a.export(10 + i));
    }
    b.import_mapped(uuids[0], 20, 0, true);
    b.import_mapped(uuids[1], 21, PAGE, true);
    let events = b.events();
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!((events[0].kind, events[0].resource_id), (event::MOVED, 20));
    ok(&mut b.vm, Command::ResourceUnmapBlob { resource_id: 20 });
    let map = Command::ResourceMapBlob {
        resource_id: 20,
        offset: 0,
    };
    assert!(matches!(call(&mut b.vm, map), Response::OkMapInfo { .. }));
    let back = b.vm.shmem().read(SHM, 0, PAGE as usize).unwrap();
    assert!(back.iter().all(|&x| x == 0x60), "restored bit-exact");
    let _ = std::fs::remove_file(policy);
}

#[test]
fn imports_the_policy_does_not_allow_are_refused() {
    let (d, policy) = daemon_abc();
    let mut a = Sharer::new(&d, 0);
    let mut c = Sharer::new(&d, 2);
    host_blob(&mut a.vm, 1, 1, 1, 0);
    let uuid = a.export(1);
    // A real UUID c may not import answers like one that does not exist, statically or not:
    // c learns nothing of what a exports (issue 15, item 6). The operator's log tells why.
    for dynamic in [false, true] {
        let (status, payload) = c.run(ShareCommand::Import { uuid, dynamic });
        assert_eq!((status, payload.len()), (Status::NoSuch as u32, 0));
        let (status, _) = c.run(ShareCommand::Import {
            uuid: [0x42; 16],
            dynamic,
        });
        assert_eq!(status, Status::NoSuch as u32);
    }
    assert!(
        d.stderr_log()
            .contains("c: may not import that buffer (policy)"),
        "{}",
        d.stderr_log()
    );
    // Nothing to create a resource from either.
    let create = Command::ResourceCreateBlob(CreateBlob {
        resource_id: 9,
        blob_mem: BLOB_MEM_HOST3D,
        blob_flags: BLOB_FLAG_USE_MAPPABLE,
        blob_id: 1,
        size: PAGE,
        entries: vec![],
    });
    assert_ne!(
        answer(&mut c.vm, &in_ctx(SHARE_CTX, create)).1,
        Response::OkNodata
    );
    // Guest blobs are never exported: their descriptor is the exporter's whole memory, which
    // the importer's VMM would receive.
    mappable_blob(&mut a.vm, 3, 1, 0);
    let (status, _) = a.run(ShareCommand::Export { resource_id: 3 });
    assert_eq!(status, Status::Unsupported as u32);
    // Importers map whole pages, so a blob that ends inside a page is not exported.
    ok(
        &mut a.vm,
        Command::ResourceCreateBlob(CreateBlob {
            resource_id: 4,
            blob_mem: BLOB_MEM_HOST3D,
            blob_flags: BLOB_FLAG_USE_MAPPABLE,
            blob_id: 0,
            size: PAGE / 2,
            entries: vec![],
        }),
    );
    let (status, _) = a.run(ShareCommand::Export { resource_id: 4 });
    assert_eq!(status, Status::Invalid as u32);
    // A VM without share=on gets no share context at all.
    let d2 = daemon(1, &["--hostmem", "1M"]);
    let mut plain = connect(&d2, 0);
    let create = Command::CtxCreate {
        context_init: CAPSET_SHARE,
        debug_name: b"share".to_vec(),
    };
    assert_ne!(answer(&mut plain, &in_ctx(1, create)).1, Response::OkNodata);
    let _ = std::fs::remove_file(policy);
}

#[test]
fn unref_by_the_exporter_unmaps_the_importer_before_it_is_answered() {
    let (d, policy) = daemon_abc();
    let mut a = Sharer::new(&d, 0);
    let mut b = Sharer::new(&d, 1);
    host_blob(&mut a.vm, 1, 1, 0x11, 0);
    let uuid = a.export(1);
    b.import_and_map(uuid, 7, 0);
    assert_eq!(b.vm.shmem().mappings().len(), 1);
    let unmaps = b.vm.shmem().unmap_count();
    ok(&mut a.vm, Command::ResourceUnref { resource_id: 1 });
    // A has its answer: B's mapping is already gone, and B can never map it again.
    assert_eq!(b.vm.shmem().unmap_count(), unmaps + 1);
    assert!(b.vm.shmem().mappings().is_empty());
    assert!(b.vm.shmem().read(SHM, 0, 16).is_none());
    let remap = Command::ResourceMapBlob {
        resource_id: 7,
        offset: 0,
    };
    assert!(!matches!(
        call(&mut b.vm, remap),
        Response::OkMapInfo { .. }
    ));
    assert_eq!(
        b.events(),
        vec![ShareEvent {
            kind: event::REVOKED,
            resource_id: 7,
            subject: uuid,
        }]
    );
    let (status, _) = b.run(ShareCommand::Import {
        uuid,
        dynamic: false,
    });
    assert_eq!(status, Status::NoSuch as u32, "gone for good");
    // B still frees its dead resource normally.
    ok(&mut b.vm, Command::ResourceUnref { resource_id: 7 });
    let _ = std::fs::remove_file(policy);
}

#[test]
fn an_exporter_that_disconnects_takes_its_buffers_from_every_importer() {
    let (d, policy) = daemon_abc();
    let a = {
        let mut a = Sharer::new(&d, 0);
        let mut b = Sharer::new(&d, 1);
        host_blob(&mut a.vm, 1, 1, 0x22, 0);
        host_blob(&mut a.vm, 3, 1, 0x33, PAGE);
        let (u1, u3) = (a.export(1), a.export(3));
        b.import_and_map(u1, 7, 0);
        b.import_and_map(u3, 8, PAGE);
        assert_eq!(b.vm.shmem().mappings().len(), 2);
        drop(a);
        assert!(
            eventually(Duration::from_secs(5), || b
                .vm
                .shmem()
                .mappings()
                .is_empty()),
            "the importer still maps a gone VM's memory"
        );
        let kinds: Vec<u32> = b.events().iter().map(|e| e.kind).collect();
        assert_eq!(kinds, vec![event::REVOKED, event::REVOKED]);
        // The socket serves the next VM, which can share again.
        Sharer::new(&d, 0)
    };
    drop(a);
    let _ = std::fs::remove_file(policy);
}

const RENDER_CTX: u32 = 2;

/// A renderer context on `vm` with a fenced submit on ring 0 that completes after `ms`.
fn slow_work(vm: &mut Vm, ms: u32, fence_id: u64) -> vgpud_harness::Token {
    let create = Command::CtxCreate {
        context_init: 0,
        debug_name: b"work".to_vec(),
    };
    let _ = answer(vm, &in_ctx(RENDER_CTX, create));
    let script = Command::Submit3d {
        commands: format!("delay {ms}").into_bytes(),
    };
    vm.post(0, &fenced_cmd(RENDER_CTX, 0, fence_id, script), 1024)
        .unwrap()
}

fn export_fence(s: &mut Sharer, ctx_id: u32, ring: u32) -> (u32, u64) {
    let (status, payload) = s.run(ShareCommand::ExportFence { ctx_id, ring });
    let handle = payload
        .get(..8)
        .map_or(0, |b| u64::from_le_bytes(b.try_into().unwrap()));
    (status, handle)
}

/// Posts a fenced share-context submit on `ring` that waits for `handles`.
fn post_wait(s: &mut Sharer, ring: u8, fence_id: u64, handles: Vec<u64>) -> vgpud_harness::Token {
    let stream = ShareCommand::WaitFences { handles }.encode(NO_REPLY);
    let cmd = fenced_cmd(
        SHARE_CTX,
        ring,
        fence_id,
        Command::Submit3d { commands: stream },
    );
    s.vm.post(0, &cmd, 1024).unwrap()
}

#[test]
fn a_fence_from_another_vm_holds_only_the_waiting_timeline() {
    let (d, policy) = fake_pair();
    let mut a = Sharer::new(&d, 0);
    let mut b = Sharer::new(&d, 1);
    let work = slow_work(&mut a.vm, 700, 1);
    let (status, handle) = export_fence(&mut a, RENDER_CTX, 0);
    assert_eq!(status, Status::Ok as u32);
    let waiting = post_wait(&mut b, 0, 10, vec![handle, handle]);
    // Another ring of b's share context is not held by that wait.
    let other = post_wait(&mut b, 1, 11, vec![]);
    let (hdr, resp) = Response::decode(&b.vm.wait(other).unwrap()).unwrap();
    assert_eq!((hdr.fence_id, resp), (11, Response::OkNodata));
    assert!(
        !b.vm.is_done(waiting).unwrap(),
        "answered before a's fence signalled"
    );
    // a's work completes: first a sees its fence, and b's wait follows.
    a.vm.wait(work).unwrap();
    let (hdr, resp) = Response::decode(&b.vm.wait(waiting).unwrap()).unwrap();
    assert_eq!((hdr.fence_id, resp), (10, Response::OkNodata));
    assert!(b.events().is_empty(), "no error");
    // A point already passed is waited for by nobody.
    let done = post_wait(&mut b, 0, 12, vec![handle]);
    b.vm.wait(done).unwrap();
    // Share contexts' own timelines cannot be exported (no cycle across VMs can form), and a
    // VM the policy does not allow cannot wait on a's fences.
    assert_eq!(export_fence(&mut a, SHARE_CTX, 0).0, Status::NoSuch as u32);
    let (_, mine) = export_fence(&mut b, 0, 0);
    let a_waits = post_wait(&mut a, 0, 13, vec![mine]);
    let (_, resp) = Response::decode(&a.vm.wait(a_waits).unwrap()).unwrap();
    assert_eq!(resp, Response::OkNodata, "a refused wait answers at once");
    let _ = std::fs::remove_file(policy);
}

#[test]
fn waiters_on_a_dead_producer_are_answered_with_an_error() {
    let (d, policy) = fake_pair();
    let mut b = Sharer::new(&d, 1);
    let mut a = Sharer::new(&d, 0);
    slow_work(&mut a.vm, 60_000, 1);
    let (status, handle) = export_fence(&mut a, RENDER_CTX, 0);
    assert_eq!(status, Status::Ok as u32);
    let waiting = post_wait(&mut b, 0, 20, vec![handle]);
    assert!(!b.vm.is_done(waiting).unwrap());
    // a's VMM goes away with its fence still pending.
    drop(a);
    let (hdr, _) = Response::decode(&b.vm.wait(waiting).unwrap()).unwrap();
    assert_eq!(hdr.fence_id, 20, "answered, not left waiting");
    let failed = |events: Vec<ShareEvent>| {
        events
            .iter()
            .filter(|e| e.kind == event::FENCE_ERROR && e.subject[..8] == handle.to_le_bytes())
            .count()
    };
    assert_eq!(failed(b.events()), 1);
    // Waiting on it later is answered at once, with the error again.
    let late = post_wait(&mut b, 0, 21, vec![handle]);
    b.vm.wait(late).unwrap();
    assert_eq!(failed(b.events()), 1);
    let _ = std::fs::remove_file(policy);
}

#[test]
fn importers_whose_vmm_stalls_cost_the_exporter_one_vmm_timeout_at_most() {
    let (d, policy) = sharing_daemon_with(
        &["a", "b", "c"],
        r#"{"allow": [{"exporter": "a", "importers": ["b", "c"]}]}"#,
        &["--renderer", "2d", "--vmm-timeout", "2s"],
    );
    let mut a = Sharer::new(&d, 0);
    let mut b = Sharer::new(&d, 1);
    let mut c = Sharer::new(&d, 2);
    host_blob(&mut a.vm, 1, 1, 0x77, 0);
    let uuid = a.export(1);
    b.import_and_map(uuid, 7, 0);
    c.import_and_map(uuid, 7, 0);
    // Both importers' VMMs stop answering: each is disconnected after --vmm-timeout, told at
    // the same time, so the exporter waits about one timeout (2 s, plus up to a quarter for the
    // watchdog to notice), not two.
    b.vm.shmem().stall(true);
    c.vm.shmem().stall(true);
    let t = std::time::Instant::now();
    ok(&mut a.vm, Command::ResourceUnref { resource_id: 1 });
    let took = t.elapsed();
    assert!(
        took < Duration::from_millis(3500),
        "the exporter waited {took:?}"
    );
    assert!(eventually(Duration::from_secs(5), || d
        .stderr_log()
        .matches("disconnecting the VMM")
        .count()
        >= 2));
    // The exporter goes on as if nothing happened.
    host_blob(&mut a.vm, 3, 1, 0x78, PAGE);
    assert_eq!(a.export(3).len(), 16);
    b.vm.shmem().stall(false);
    c.vm.shmem().stall(false);
    let _ = std::fs::remove_file(policy);
}

/// A small deterministic generator for the stress test.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}

/// What the stress test knows of a live export.
struct Exported {
    owner: usize,
    resource: u32,
    uuid: Uuid,
    fill: u8,
    /// (importer, its resource id, window offset) of every live mapping.
    mapped: Vec<(usize, u32, u64)>,
}

const SLOTS: u64 = 8;

/// VMs connect, export, import, map, pin, unpin, free and disconnect at random for
/// VGPUD_SHARE_STRESS_SECS (60); throughout, every importer sees exactly its exporter's bytes,
/// and a revoked buffer is gone from every importer by the time the exporter is answered (or,
/// for a disconnect, shortly after). At the end the daemon holds no more descriptors or
/// threads than before.
#[test]
fn sharing_survives_random_churn_with_its_invariants() {
    const VMS: usize = 5;
    let secs: u64 = std::env::var("VGPUD_SHARE_STRESS_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    let names: Vec<String> = (0..VMS).map(|i| format!("v{i}")).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let (d, policy) = sharing_daemon_with(
        &names,
        r#"{"allow": [{"exporter": "*", "importers": ["*"]}]}"#,
        &["--renderer", "2d"],
    );
    let before = quiet_stats(&d);
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut vms: Vec<Option<Sharer>> = (0..VMS).map(|_| None).collect();
    let mut exports: Vec<Exported> = Vec::new();
    let mut next_id = 100u32;
    let mut fill = 0u8;
    let (mut ops, mut imports, mut revokes) = (0u64, 0u64, 0u64);
    let deadline = std::time::Instant::now() + Duration::from_secs(secs);
    while std::time::Instant::now() < deadline {
        ops += 1;
        let i = rng.below(VMS);
        if vms[i].is_none() {
            vms[i] = Some(Sharer::new(&d, i));
            continue;
        }
        match rng.below(10) {
            // Export a fresh host blob.
            0 | 1 => {
                next_id += 1;
                fill = fill.wrapping_add(1).max(1);
                let s = vms[i].as_mut().unwrap();
                // Filled through a window slot the imports never use, then unmapped.
                host_blob(&mut s.vm, next_id, 1, fill, SLOTS * PAGE);
                let unmap = Command::ResourceUnmapBlob {
                    resource_id: next_id,
                };
                ok(&mut s.vm, unmap);
                let uuid = s.export(next_id);
                exports.push(Exported {
                    owner: i,
                    resource: next_id,
                    uuid,
                    fill,
                    mapped: Vec::new(),
                });
            }
            // Import someone else's into a free window slot; it shows their bytes.
            2..=4 => {
                let Some(e) = exports
                    .iter_mut()
                    .filter(|e| e.owner != i)
                    .nth(rng.below(4))
                else {
                    continue;
                };
                let s = vms[i].as_mut().unwrap();
                let taken: Vec<u64> =
                    s.vm.shmem()
                        .mappings()
                        .iter()
                        .map(|m| m.shm_offset)
                        .collect();
                let Some(slot) = (0..SLOTS).map(|k| k * PAGE).find(|o| !taken.contains(o)) else {
                    continue;
                };
                next_id += 1;
                s.import_and_map(e.uuid, next_id, slot);
                let seen = s.vm.shmem().read(SHM, slot, PAGE as usize).expect("mapped");
                assert!(
                    seen.iter().all(|&b| b == e.fill),
                    "an importer sees other bytes"
                );
                e.mapped.push((i, next_id, slot));
                imports += 1;
            }
            // Pin and unpin something shared.
            5 => {
                let s = vms[i].as_mut().unwrap();
                let mine = exports.iter().find(|e| e.owner == i).map(|e| e.resource);
                if let Some(r) = mine {
                    assert_eq!(s.run(ShareCommand::Pin { resource_id: r }).0, 0);
                    assert_eq!(s.run(ShareCommand::Unpin { resource_id: r }).0, 0);
                }
            }
            // The exporter frees one: every importer's mapping is gone when it is answered.
            6 | 7 => {
                let Some(k) = exports.iter().position(|e| e.owner == i) else {
                    continue;
                };
                let e = exports.remove(k);
                let s = vms[i].as_mut().unwrap();
                ok(
                    &mut s.vm,
                    Command::ResourceUnref {
                        resource_id: e.resource,
                    },
                );
                for (imp, res, slot) in e.mapped {
                    if let Some(v) = vms[imp].as_mut() {
                        assert!(
                            v.vm.shmem().read(SHM, slot, 1).is_none(),
                            "an importer still maps a freed buffer"
                        );
                        ok(&mut v.vm, Command::ResourceUnref { resource_id: res });
                    }
                }
                revokes += 1;
            }
            // An importer lets go of one of its imports.
            8 => {
                for e in exports.iter_mut() {
                    if let Some(k) = e.mapped.iter().position(|m| m.0 == i) {
                        let (_, res, _) = e.mapped.remove(k);
                        let s = vms[i].as_mut().unwrap();
                        ok(&mut s.vm, Command::ResourceUnref { resource_id: res });
                        break;
                    }
                }
            }
            // A VM goes away: its exports vanish from every importer.
            _ => {
                drop(vms[i].take());
                let gone: Vec<Exported> = exports
                    .iter()
                    .filter(|e| e.owner == i)
                    .map(|e| Exported {
                        owner: e.owner,
                        resource: e.resource,
                        uuid: e.uuid,
                        fill: e.fill,
                        mapped: e.mapped.clone(),
                    })
                    .collect();
                exports.retain(|e| e.owner != i);
                for e in exports.iter_mut() {
                    e.mapped.retain(|m| m.0 != i);
                }
                for e in gone {
                    for (imp, res, slot) in e.mapped {
                        let Some(v) = vms[imp].as_mut() else { continue };
                        let unmapped = eventually(Duration::from_secs(5), || {
                            v.vm.shmem().read(SHM, slot, 1).is_none()
                        });
                        assert!(unmapped, "an importer still maps a gone VM's buffer");
                        ok(&mut v.vm, Command::ResourceUnref { resource_id: res });
                    }
                }
            }
        }
    }
    assert!(
        imports > 10 && revokes > 5,
        "too little happened: {ops} ops, {imports} imports, {revokes} revokes"
    );
    drop(vms);
    let after = quiet_stats(&d);
    assert!(
        after.fds <= before.fds,
        "descriptors: {} before, {} after",
        before.fds,
        after.fds
    );
    assert!(
        after.threads <= before.threads,
        "threads: {} before, {} after",
        before.threads,
        after.threads
    );
    eprintln!("{ops} operations, {imports} imports, {revokes} revocations");
    let _ = std::fs::remove_file(policy);
}

/// Found by the churn test: a VM that imported one buffer twice and freed one of the two must
/// still lose the other when the exporter revokes.
#[test]
fn a_buffer_imported_twice_is_revoked_from_both() {
    let (d, policy) = daemon_abc();
    let mut a = Sharer::new(&d, 0);
    let mut b = Sharer::new(&d, 1);
    host_blob(&mut a.vm, 1, 1, 0x31, 0);
    let uuid = a.export(1);
    b.import_and_map(uuid, 7, 0);
    b.import_and_map(uuid, 8, PAGE);
    ok(&mut b.vm, Command::ResourceUnref { resource_id: 7 });
    assert_eq!(b.vm.shmem().mappings().len(), 1);
    ok(&mut a.vm, Command::ResourceUnref { resource_id: 1 });
    assert!(
        b.vm.shmem().mappings().is_empty(),
        "the second import outlived the revocation"
    );
    let _ = std::fs::remove_file(policy);
}

#[test]
fn over_the_budget_idle_buffers_move_out_and_come_back_bit_exact() {
    let (d, policy) = budget_pair("8K");
    let mut a = Sharer::new(&d, 0);
    let mut b = Sharer::new(&d, 1);
    // Three one-page buffers, filled through a's window and unmapped there again.
    let mut uuids = Vec::new();
    for i in 0..3u32 {
        host_blob(&mut a.vm, 10 + i, 1, 0x40 + i as u8, 64 * PAGE);
        ok(
            &mut a.vm,
            Command::ResourceUnmapBlob {
                resource_id: 10 + i,
            },
        );
        uuids.push(a.export(10 + i));
    }
    let dynamic = |s: &mut Sharer, uuid, id, at| {
        s.import_mapped(uuid, id, at, true);
    };
    // b maps all three; the budget holds two: the least recently used one moves out.
    for (i, uuid) in uuids.iter().enumerate() {
        dynamic(&mut b, *uuid, 20 + i as u32, i as u64 * PAGE);
    }
    let events = b.events();
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!((events[0].kind, events[0].resource_id), (event::MOVED, 20));
    assert!(
        b.vm.shmem().read(SHM, 0, 1).is_none(),
        "its mapping is gone"
    );
    // A guest that had not seen the event yet may still unmap it: that is no error.
    ok(&mut b.vm, Command::ResourceUnmapBlob { resource_id: 20 });
    let again = Command::ResourceUnmapBlob { resource_id: 20 };
    assert_ne!(call(&mut b.vm, again), Response::OkNodata, "but only once");
    // Mapping it again brings it back, bit for bit; the next least recently used one goes.
    let map = Command::ResourceMapBlob {
        resource_id: 20,
        offset: 0,
    };
    assert!(matches!(call(&mut b.vm, map), Response::OkMapInfo { .. }));
    let back = b.vm.shmem().read(SHM, 0, PAGE as usize).unwrap();
    assert!(back.iter().all(|&x| x == 0x40), "restored bit-exact");
    let events = b.events();
    assert_eq!((events[0].kind, events[0].resource_id), (event::MOVED, 21));
    // A pinned buffer never moves; pinning past the budget is refused.
    assert_eq!(
        b.run(ShareCommand::Pin { resource_id: 22 }).0,
        Status::Ok as u32
    );
    assert_eq!(
        b.run(ShareCommand::Pin { resource_id: 20 }).0,
        Status::Ok as u32
    );
    assert_eq!(
        b.run(ShareCommand::Pin { resource_id: 21 }).0,
        Status::NoSpace as u32,
        "three pinned pages in a two-page budget"
    );
    // Mapping the third one anyway: it comes back and stays (nothing idle can make room), and
    // the pinned ones stay put.
    let map = Command::ResourceMapBlob {
        resource_id: 21,
        offset: PAGE,
    };
    assert!(matches!(call(&mut b.vm, map), Response::OkMapInfo { .. }));
    assert!(b.events().is_empty(), "nothing moved");
    for (at, fill) in [(0, 0x40), (PAGE, 0x41), (2 * PAGE, 0x42)] {
        let seen = b.vm.shmem().read(SHM, at, PAGE as usize).unwrap();
        assert!(seen.iter().all(|&x| x == fill), "{at:#x}");
    }
    let _ = std::fs::remove_file(policy);
}

/// A display VM on a device without a host-visible window (as on vhost-user-gpu-pci) imports a
/// buffer and scans it out: its display shows the exporter's pixels, read from the shared pages.
#[test]
fn a_display_vm_without_a_window_shows_an_imported_buffer() {
    const W: u32 = 64;
    const H: u32 = 64;
    let policy =
        std::env::temp_dir().join(format!("vgpud-share-display-{}.json", std::process::id()));
    std::fs::write(
        &policy,
        r#"{"allow": [{"exporter": "a", "importers": ["b"]}]}"#,
    )
    .unwrap();
    let d = Daemon::spawn_with_vm_settings(
        vgpud(),
        &["name=a,share=on,hostmem=1M", "name=b,share=on,hostmem=0"],
        &[
            "--renderer",
            "2d",
            "--share-policy",
            policy.to_str().unwrap(),
        ],
    )
    .expect("start vgpud");
    let mut a = Sharer::new(&d, 0);
    let image = pattern(W, H, 9);
    host_blob(&mut a.vm, 1, u64::from(W * H * 4) / PAGE, 0, 0);
    assert!(a.vm.shmem().write(SHM, 0, &image));
    let uuid = a.export(1);

    let cfg = vgpud_harness::VmConfig {
        display: Some(vec![(W, H)]),
        ..vgpud_harness::VmConfig::default()
    };
    let vm = Vm::connect(&d.socket(1), cfg).expect("connect");
    assert_ne!(
        vm.offered_features() & (1 << vgpud_protocol::F_RESOURCE_BLOB),
        0,
        "blobs without a window"
    );
    assert_eq!(
        vm.protocol_features() & 0x0040_0000,
        0,
        "but no window (SHMEM)"
    );
    let mut b = Sharer::with_vm(vm);
    let (status, payload) = b.run(ShareCommand::Import {
        uuid,
        dynamic: false,
    });
    assert_eq!(status, Status::Ok as u32);
    let mut r = Reader::new(&payload);
    let (blob_id, size) = (r.u64().unwrap(), r.u64().unwrap());
    let create = Command::ResourceCreateBlob(CreateBlob {
        resource_id: 5,
        blob_mem: BLOB_MEM_HOST3D,
        blob_flags: 0,
        blob_id,
        size,
        entries: vec![],
    });
    assert_eq!(
        answer(&mut b.vm, &in_ctx(SHARE_CTX, create)).1,
        Response::OkNodata
    );
    let map = Command::ResourceMapBlob {
        resource_id: 5,
        offset: 0,
    };
    assert!(
        !matches!(call(&mut b.vm, map), Response::OkMapInfo { .. }),
        "nothing to map into"
    );
    ok(
        &mut b.vm,
        Command::SetScanoutBlob(vgpud_protocol::ScanoutBlob {
            rect: rect(0, 0, W, H),
            scanout_id: 0,
            resource_id: 5,
            width: W,
            height: H,
            format: vgpud_protocol::format::B8G8R8X8_UNORM,
            strides: [W * 4, 0, 0, 0],
            offsets: [0; 4],
        }),
    );
    ok(
        &mut b.vm,
        Command::ResourceFlush {
            rect: rect(0, 0, W, H),
            resource_id: 5,
        },
    );
    let display = b.vm.display().unwrap();
    assert!(display.wait_updates(1, Duration::from_secs(5)));
    let frame = display.frame(0).unwrap();
    assert!(
        frame.pixels == image,
        "the display VM shows the exporter's pixels"
    );
    // The exporter draws again: the next flush shows it, no copy in between.
    let next = pattern(W, H, 10);
    assert!(a.vm.shmem().write(SHM, 0, &next));
    ok(
        &mut b.vm,
        Command::ResourceFlush {
            rect: rect(0, 0, W, H),
            resource_id: 5,
        },
    );
    assert!(display.wait_updates(2, Duration::from_secs(5)));
    assert!(display.frame(0).unwrap().pixels == next);
    let _ = std::fs::remove_file(policy);
}

/// A buffer moved out under the budget is brought back before a scanout shows it: the display
/// never shows released pages, and once shown the buffer is busy and stays.
#[test]
fn a_moved_buffer_is_back_before_a_scanout_shows_it() {
    const W: u32 = 64;
    const H: u32 = 64;
    let pages = u64::from(W * H * 4) / PAGE;
    let budget = format!("{}K", pages * PAGE / 1024);
    let (d, policy) = budget_pair(&budget);
    let mut a = Sharer::new(&d, 0);
    let image = pattern(W, H, 11);
    let mut uuids = Vec::new();
    for (id, fill) in [(10u32, None), (11, Some(0x5a))] {
        host_blob(&mut a.vm, id, pages, fill.unwrap_or(0), 0);
        if fill.is_none() {
            assert!(a.vm.shmem().write(SHM, 0, &image));
        }
        ok(&mut a.vm, Command::ResourceUnmapBlob { resource_id: id });
        uuids.push(a.export(id));
    }
    let mut b = Sharer::with_vm(connect_with_display(&d, 1, vec![(W, H)]));
    // The budget holds one of the two: mapping the second moves the first out.
    b.import_mapped(uuids[0], 20, 0, true);
    b.import_mapped(uuids[1], 21, pages * PAGE, true);
    let events = b.events();
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!((events[0].kind, events[0].resource_id), (event::MOVED, 20));
    ok(
        &mut b.vm,
        Command::SetScanoutBlob(vgpud_protocol::ScanoutBlob {
            rect: rect(0, 0, W, H),
            scanout_id: 0,
            resource_id: 20,
            width: W,
            height: H,
            format: vgpud_protocol::format::B8G8R8X8_UNORM,
            strides: [W * 4, 0, 0, 0],
            offsets: [0; 4],
        }),
    );
    let events = b.events();
    assert_eq!(
        events
            .iter()
            .map(|e| (e.kind, e.resource_id))
            .collect::<Vec<_>>(),
        vec![(event::MOVED, 21)],
        "the other one made room"
    );
    ok(
        &mut b.vm,
        Command::ResourceFlush {
            rect: rect(0, 0, W, H),
            resource_id: 20,
        },
    );
    let display = b.vm.display().unwrap();
    assert!(display.wait_updates(1, Duration::from_secs(5)));
    assert!(
        display.frame(0).unwrap().pixels == image,
        "the scanout shows the buffer's own pixels, restored"
    );
    // Shown, it is busy: mapping the other one back cannot move it, so nothing moves.
    let map = Command::ResourceMapBlob {
        resource_id: 21,
        offset: pages * PAGE,
    };
    assert!(matches!(call(&mut b.vm, map), Response::OkMapInfo { .. }));
    assert!(b.events().is_empty(), "the shown buffer stayed");
    let _ = std::fs::remove_file(policy);
}

/// A guest cannot learn its contexts' ids: EXPORT_FENCE_ALL names the newest fence of every
/// renderer timeline of the VM at once, and a wait on it holds until all of them are done.
#[test]
fn a_point_on_every_timeline_waits_for_all_of_them() {
    let (d, policy) = fake_pair();
    let mut a = Sharer::new(&d, 0);
    let mut b = Sharer::new(&d, 1);
    let create = Command::CtxCreate {
        context_init: 0,
        debug_name: b"work".to_vec(),
    };
    let _ = answer(&mut a.vm, &in_ctx(RENDER_CTX, create));
    let script = |s: &str| Command::Submit3d {
        commands: s.as_bytes().to_vec(),
    };
    // Two rings: the first done soon, the second later.
    let quick =
        a.vm.post(0, &fenced_cmd(RENDER_CTX, 0, 1, script("delay 100")), 1024)
            .unwrap();
    let slow =
        a.vm.post(0, &fenced_cmd(RENDER_CTX, 1, 2, script("delay 900")), 1024)
            .unwrap();
    let (status, all) = export_fence(&mut a, vgpud_protocol::share::EXPORT_FENCE_ALL, 0);
    assert_eq!(status, Status::Ok as u32);
    let waiting = post_wait(&mut b, 0, 30, vec![all]);
    a.vm.wait(quick).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    assert!(
        !b.vm.is_done(waiting).unwrap(),
        "answered before the second ring was done"
    );
    a.vm.wait(slow).unwrap();
    let (hdr, resp) = Response::decode(&b.vm.wait(waiting).unwrap()).unwrap();
    assert_eq!((hdr.fence_id, resp), (30, Response::OkNodata));
    assert!(b.events().is_empty(), "no error");
    let _ = std::fs::remove_file(policy);
}

/// `vgpud status --json` against a control socket: the VM named `name`.
fn vm_status(control: &std::path::Path, name: &str) -> serde_json::Value {
    let out = std::process::Command::new(vgpud())
        .args(["status", "--json", "--control-socket"])
        .arg(control)
        .output()
        .expect("run vgpud status");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let vms = v["vms"].as_array().expect("a list of VMs");
    (vms.iter().find(|vm| vm["name"] == name))
        .unwrap_or_else(|| panic!("no VM {name} in {vms:?}"))
        .clone()
}

/// Issue 15, item 1: a static import pins its buffer for as long as it lasts, also when the same
/// VM imports the same buffer dynamically besides (before, the dynamic import replaced the
/// static one, and the buffer moved out from under the static mapping), and status counts it
/// as a pin.
#[test]
fn a_static_import_pins_its_buffer_whatever_else_the_vm_imports() {
    let control = std::env::temp_dir().join(format!(
        "vgpud-share-control-{}-{:?}.sock",
        std::process::id(),
        std::thread::current().id()
    ));
    let evict_dir = std::env::temp_dir();
    let (d, policy) = sharing_daemon_with(
        &["a", "b", "c"],
        r#"{"allow": [{"exporter": "a", "importers": ["b", "c"]}]}"#,
        &[
            "--renderer",
            "2d",
            "--share-budget",
            "16K",
            "--share-evict-dir",
            evict_dir.to_str().unwrap(),
            "--control-socket",
            control.to_str().unwrap(),
        ],
    );
    let mut a = Sharer::new(&d, 0);
    let mut b = Sharer::new(&d, 1);
    let mut c = Sharer::new(&d, 2);
    // a's 8 KiB buffer, filled and unmapped again: not busy, so only a pin keeps it.
    host_blob(&mut a.vm, 1, 2, 0x5c, 0);
    ok(&mut a.vm, Command::ResourceUnmapBlob { resource_id: 1 });
    let uuid = a.export(1);
    // c imports it statically, then dynamically too, and maps both.
    c.import_mapped(uuid, 7, 0, false);
    c.import_mapped(uuid, 8, 2 * PAGE, true);
    assert!(eventually(Duration::from_secs(5), || control.exists()));
    assert_eq!(
        vm_status(&control, "c")["pins"],
        1,
        "the static import is a pin"
    );
    // a and b export and map one-page buffers: far over the budget, and each is busy (its
    // exporter maps it), so only c's buffer could make room. It must not.
    let mut next = 10;
    let mut round = |a: &mut Sharer, b: &mut Sharer| {
        for s in [a, b] {
            host_blob(&mut s.vm, next, 1, 0x77, 8 * PAGE + u64::from(next) * PAGE);
            s.export(next);
            next += 1;
        }
    };
    let intact = |c: &mut Sharer| {
        let seen = c.vm.shmem().read(SHM, 0, 2 * PAGE as usize);
        seen.is_some_and(|bytes| bytes.iter().all(|&x| x == 0x5c))
    };
    for _ in 0..3 {
        round(&mut a, &mut b);
        assert!(intact(&mut c), "c's static mapping lost its pages");
    }
    // Freeing the dynamic import leaves the static one, and its pin.
    ok(&mut c.vm, Command::ResourceUnref { resource_id: 8 });
    for _ in 0..2 {
        round(&mut a, &mut b);
        assert!(intact(&mut c), "c's static mapping lost its pages");
    }
    assert!(
        c.events().iter().all(|e| e.kind != event::MOVED),
        "nothing of c moved"
    );
    assert_eq!(vm_status(&control, "c")["pins"], 1);
    // Once the static import ends, the pin is gone and the buffer may move.
    ok(&mut c.vm, Command::ResourceUnref { resource_id: 7 });
    assert_eq!(vm_status(&control, "c")["pins"], 0);
    let _ = std::fs::remove_file(policy);
}

/// A raw share-context stream; the device's response.
fn submit_raw(s: &mut Sharer, stream: Vec<u8>) -> Response {
    answer(
        &mut s.vm,
        &in_ctx(SHARE_CTX, Command::Submit3d { commands: stream }),
    )
    .1
}

/// The reply at `offset` of `s`'s reply blob: status and payload length.
fn slot(s: &Sharer, offset: u64) -> (u32, u32) {
    let bytes = s.vm.read_mem(s.replies + offset, 8);
    let word = |i: usize| u32::from_le_bytes(bytes[i..i + 4].try_into().unwrap());
    (word(0), word(4))
}

/// Issue 15, item 6: a stream is checked whole before any command runs, reply offsets
/// included (inside the reply blob, room for the largest reply, 4-byte aligned) and reserved
/// fields; a refused stream runs nothing, and every reply slot it names that lies in the reply
/// blob reads INVALID (a guest kernel does not pass the error response on).
#[test]
fn a_stream_is_checked_whole_before_anything_runs_and_its_refusal_is_readable() {
    let control = std::env::temp_dir().join(format!(
        "vgpud-share-control-{}-{:?}.sock",
        std::process::id(),
        std::thread::current().id()
    ));
    let (d, policy) = sharing_daemon_with(
        &["a", "b"],
        r#"{"allow": [{"exporter": "a", "importers": ["b"]}]}"#,
        &[
            "--renderer",
            "2d",
            "--control-socket",
            control.to_str().unwrap(),
        ],
    );
    let mut a = Sharer::new(&d, 0);
    host_blob(&mut a.vm, 1, 1, 0x21, 0);
    let export = |at: u32| ShareCommand::Export { resource_id: 1 }.encode(at);
    let refused = |a: &mut Sharer, stream: Vec<u8>| {
        a.vm.write_mem(a.replies, &vec![0xee; PAGE as usize]);
        assert_ne!(submit_raw(a, stream), Response::OkNodata);
    };
    // The second command's reply would not fit in the one-page reply blob: before, the
    // EXPORT ran (and stayed) while the stream was refused.
    let mut stream = export(0);
    stream.extend(ShareCommand::ExportFence { ctx_id: 0, ring: 0 }.encode(PAGE as u32 - 8));
    refused(&mut a, stream);
    assert_eq!(
        slot(&a, 0),
        (Status::Invalid as u32, 0),
        "told, in its slot"
    );
    // READ_EVENTS's slot must hold as many events as it asks for.
    let mut stream = export(0);
    stream.extend(ShareCommand::ReadEvents { max: 64 }.encode(PAGE as u32 - 64));
    refused(&mut a, stream);
    assert_eq!(slot(&a, 0), (Status::Invalid as u32, 0));
    // A misaligned reply offset, a reserved word that is not 0, a pad that is not 0, an
    // unknown import flag: each refuses the stream; the other slots read INVALID.
    let mut stream = export(0);
    stream.extend(ShareCommand::Pin { resource_id: 1 }.encode(34));
    refused(&mut a, stream);
    assert_eq!(slot(&a, 0), (Status::Invalid as u32, 0));
    assert_eq!(
        slot(&a, 32).0,
        0xeeee_eeee,
        "a misaligned slot is not written"
    );
    for at in [12, 20] {
        let mut stream = export(0);
        stream.extend(export(64));
        stream[24 + at] = 1;
        refused(&mut a, stream);
        assert_eq!(slot(&a, 0), (Status::Invalid as u32, 0), "byte {at}");
        assert_eq!(slot(&a, 64), (Status::Invalid as u32, 0), "byte {at}");
    }
    let mut import = ShareCommand::Import {
        uuid: [1; 16],
        dynamic: false,
    }
    .encode(128);
    import[32] = 2;
    let mut stream = export(0);
    stream.extend(import);
    refused(&mut a, stream);
    assert_eq!(slot(&a, 128), (Status::Invalid as u32, 0));
    // A SET_REPLY_BLOB in a refused stream does not take effect either.
    mappable_blob(&mut a.vm, 5, 1, 0);
    let mut stream = ShareCommand::SetReplyBlob { resource_id: 5 }.encode(NO_REPLY);
    stream.extend(export(3));
    refused(&mut a, stream);
    // Nothing of all that ran: a exports nothing yet.
    assert!(eventually(Duration::from_secs(5), || control.exists()));
    assert_eq!(vm_status(&control, "a")["exports"], 0);
    // The same commands, well formed, run and answer where they were told to.
    a.vm.write_mem(a.replies, &vec![0xee; PAGE as usize]);
    let mut stream = export(0);
    stream.extend(ShareCommand::ReadEvents { max: 64 }.encode(PAGE as u32 - 16 - 64 * 24));
    assert_eq!(submit_raw(&mut a, stream), Response::OkNodata);
    assert_eq!(slot(&a, 0), (Status::Ok as u32, 16));
    assert_eq!(slot(&a, PAGE - 16 - 64 * 24), (Status::Ok as u32, 8));
    assert_eq!(vm_status(&control, "a")["exports"], 1);
    let _ = std::fs::remove_file(policy);
}

/// Issue 15, item 6: WAIT_FENCES answers NO_SUCH for a handle that was never given out, and
/// alike for a point of a VM the policy does not let the waiter import from.
#[test]
fn waiting_for_a_fence_that_never_existed_answers_no_such() {
    let (d, policy) = sharing_daemon_with(
        &["a", "b", "c"],
        r#"{"allow": [{"exporter": "a", "importers": ["b"]}]}"#,
        &["--renderer", "fake"],
    );
    let mut a = Sharer::new(&d, 0);
    let mut b = Sharer::new(&d, 1);
    let mut c = Sharer::new(&d, 2);
    let (status, handle) = export_fence(&mut a, 0, 0);
    assert_eq!(status, Status::Ok as u32);
    let wait = |handles: Vec<u64>| ShareCommand::WaitFences { handles };
    assert_eq!(b.run(wait(vec![handle])).0, Status::Ok as u32);
    assert_eq!(a.run(wait(vec![handle])).0, Status::Ok as u32, "its own");
    for never in [0, handle + 1000, u64::MAX] {
        assert_eq!(b.run(wait(vec![handle, never])).0, Status::NoSuch as u32);
    }
    // c may not import from a: a's real handle answers as an unknown one does.
    assert_eq!(c.run(wait(vec![handle])).0, Status::NoSuch as u32);
    assert_eq!(c.run(wait(vec![handle + 1000])).0, Status::NoSuch as u32);
    let _ = std::fs::remove_file(policy);
}

/// Issue 15, item 6: an import's blob id stays valid while the import lasts (until its last
/// resource is freed), so a guest whose mapping a move took away creates a new resource on the
/// same blob id, which maps it again (a guest kernel maps a blob only when it creates it), and
/// then frees the old one.
#[test]
fn after_moved_a_new_resource_on_the_same_blob_id_maps_the_buffer_again() {
    let (d, policy) = budget_pair("4K");
    let mut a = Sharer::new(&d, 0);
    let mut b = Sharer::new(&d, 1);
    let mut uuids = Vec::new();
    for i in 0..2u32 {
        host_blob(&mut a.vm, 10 + i, 1, 0x60 + i as u8, 64 * PAGE);
        ok(
            &mut a.vm,
            Command::ResourceUnmapBlob {
                resource_id: 10 + i,
            },
        );
        uuids.push(a.export(10 + i));
    }
    let import = |s: &mut Sharer, uuid| {
        let (status, payload) = s.run(ShareCommand::Import {
            uuid,
            dynamic: true,
        });
        assert_eq!(status, Status::Ok as u32);
        u64::from_le_bytes(payload[..8].try_into().unwrap())
    };
    let create = |s: &mut Sharer, id: u32, blob_id: u64| {
        let create = Command::ResourceCreateBlob(CreateBlob {
            resource_id: id,
            blob_mem: BLOB_MEM_HOST3D,
            blob_flags: BLOB_FLAG_USE_MAPPABLE,
            blob_id,
            size: PAGE,
            entries: vec![],
        });
        answer(&mut s.vm, &in_ctx(SHARE_CTX, create)).1
    };
    let map = |s: &mut Sharer, id: u32, offset: u64| {
        let map = Command::ResourceMapBlob {
            resource_id: id,
            offset,
        };
        matches!(call(&mut s.vm, map), Response::OkMapInfo { .. })
    };
    let first = import(&mut b, uuids[0]);
    assert_eq!(create(&mut b, 20, first), Response::OkNodata);
    assert!(map(&mut b, 20, 0));
    assert!(b.vm.shmem().write(SHM, 0, &[0x99; 64]));
    // The second buffer mapped: the one-page budget moves the first out.
    let second = import(&mut b, uuids[1]);
    assert_eq!(create(&mut b, 21, second), Response::OkNodata);
    assert!(map(&mut b, 21, PAGE));
    let events = b.events();
    assert_eq!(
        (events.len(), events[0].kind, events[0].resource_id),
        (1, event::MOVED, 20)
    );
    // What the guest programmer's guide says: a new resource on the same blob id, mapped,
    // then the old one freed.
    assert_eq!(create(&mut b, 22, first), Response::OkNodata);
    assert!(map(&mut b, 22, 2 * PAGE));
    ok(&mut b.vm, Command::ResourceUnref { resource_id: 20 });
    let back = b.vm.shmem().read(SHM, 2 * PAGE, PAGE as usize).unwrap();
    assert_eq!(&back[..64], &[0x99; 64], "what b wrote, back");
    assert!(back[64..].iter().all(|&x| x == 0x60), "and a's bytes");
    // The import ends with its last resource: then its blob id names nothing.
    ok(&mut b.vm, Command::ResourceUnref { resource_id: 22 });
    assert_ne!(create(&mut b, 23, first), Response::OkNodata);
    let _ = std::fs::remove_file(policy);
}

/// Each share context of a VM has its own reply blob: two programs of one guest, each with its
/// own share context, do not write their replies into each other's memory.
#[test]
fn each_share_context_has_its_own_reply_blob() {
    let (d, policy) = daemon_abc();
    let mut a = Sharer::new(&d, 0);
    host_blob(&mut a.vm, 1, 1, 0x31, 0);
    // A second share context (another open of the DRM device) with its own reply blob.
    const OTHER_CTX: u32 = 5;
    let other_replies = mappable_blob(&mut a.vm, 6, 1, 0);
    let create = Command::CtxCreate {
        context_init: CAPSET_SHARE,
        debug_name: b"share2".to_vec(),
    };
    assert_eq!(
        answer(&mut a.vm, &in_ctx(OTHER_CTX, create)).1,
        Response::OkNodata
    );
    let set = ShareCommand::SetReplyBlob { resource_id: 6 }.encode(NO_REPLY);
    let cmd = Command::Submit3d { commands: set };
    assert_eq!(
        answer(&mut a.vm, &in_ctx(OTHER_CTX, cmd)).1,
        Response::OkNodata
    );
    a.vm.write_mem(other_replies, &[0xee; 64]);
    // The first context's replies still go to its own blob.
    let uuid = a.export(1);
    assert_eq!(a.vm.read_mem(other_replies, 64), vec![0xee; 64]);
    let fence = ShareCommand::Export { resource_id: 1 }.encode(0);
    let cmd = Command::Submit3d { commands: fence };
    assert_eq!(
        answer(&mut a.vm, &in_ctx(OTHER_CTX, cmd)).1,
        Response::OkNodata
    );
    let reply = a.vm.read_mem(other_replies, 24);
    assert_eq!(
        decode_reply(&reply).unwrap(),
        (Status::Ok as u32, &uuid[..])
    );
    let _ = std::fs::remove_file(policy);
}
