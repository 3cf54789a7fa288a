//! The VM's memory table when the VMM adds every window mapping to it, as QEMU does: the harness
//! frontend plays QEMU's part (VmConfig::window_gpa: memory slots, ADD_MEM_REG on each
//! SHMEM_MAP, REM_MEM_REG on each SHMEM_UNMAP, a table change past the backend's slots fails as
//! QEMU's "vhost_set_mem_table failed").

mod common;

use common::*;
use vgpud_harness::{Vm, VmConfig};
use vgpud_protocol::{Command, ErrorCode, MemEntry, Response, MAP_CACHE_CACHED};

/// Where the window sits in guest memory (QEMU puts it in a 64-bit BAR).
const WINDOW_GPA: u64 = 0x80_0000_0000;
const CONFIGURE_MEM_SLOTS: u64 = 0x8000;
/// What vgpud answers GET_MAX_MEM_SLOTS.
const SLOTS: u64 = 509;
const PAGE: u64 = 4096;

fn qemu_like(d: &vgpud_harness::Daemon) -> Vm {
    let cfg = VmConfig {
        window_gpa: Some(WINDOW_GPA),
        ..VmConfig::default()
    };
    let vm = Vm::connect(&d.socket(0), cfg).expect("connect");
    assert_ne!(
        vm.protocol_features() & CONFIGURE_MEM_SLOTS,
        0,
        "memory slots are offered: a whole table carries only 8 regions"
    );
    vm
}

const MAPPED: Response = Response::OkMapInfo {
    map_info: MAP_CACHE_CACHED,
};

#[test]
fn hundreds_of_live_mappings_stay_in_the_vmms_memory_table() {
    // A cap above the slots, so that the slots are what stops the mappings.
    let d = daemon(1, &["--hostmem", "4M", "--max-mappings", "1000"]);
    let mut vm = qemu_like(&d);
    let ram = vm.table_regions().expect("table model");
    let n = 600u32;
    let mut mapped = Vec::new();
    for id in 1..=n {
        mappable_page(&mut vm, id);
        match map_blob(&mut vm, id, u64::from(id - 1) * PAGE) {
            MAPPED => mapped.push(id),
            Response::Err(ErrorCode::OutOfMemory) => {}
            other => panic!("MAP_BLOB {id}: {other:?}"),
        }
    }
    assert_eq!(
        vm.table_errors(),
        Vec::<String>::new(),
        "no table change failed"
    );
    assert_eq!(
        mapped.len() as u64,
        SLOTS - ram,
        "every slot the RAM leaves is used, and no more is asked for"
    );
    assert_eq!(vm.table_regions(), Some(SLOTS));
    // The VM's RAM still serves requests (a mapped guest blob is a range of the RAM's own file).
    upload(&mut vm, 9000, 8, 8, &pattern(8, 8, 3));
    for &id in &mapped {
        ok(&mut vm, Command::ResourceUnmapBlob { resource_id: id });
    }
    assert_eq!(
        vm.table_regions(),
        Some(ram),
        "every mapping left the table"
    );
    // The freed slots serve again.
    assert_eq!(map_blob(&mut vm, n, u64::from(n - 1) * PAGE), MAPPED);
    assert_eq!(vm.table_regions(), Some(ram + 1));
    assert_eq!(vm.table_errors(), Vec::<String>::new());
}

#[test]
fn a_window_mapping_is_not_guest_memory_to_the_daemon() {
    let d = daemon(1, &["--hostmem", "1M"]);
    let mut vm = qemu_like(&d);
    let gpa = mappable_blob(&mut vm, 1, 1, 0x5a);
    assert_eq!(map_blob(&mut vm, 1, 0), MAPPED);
    assert_eq!(
        vm.table_regions(),
        Some(3),
        "the mapping is in the VMM's table"
    );
    // The same page by its guest address works as a resource's backing; by the window's address
    // it is not guest memory (a buffer revoked later must not stay reachable this way).
    let backing = |addr| Command::ResourceAttachBacking {
        resource_id: 2,
        entries: vec![MemEntry { addr, length: 64 }],
    };
    let transfer = Command::TransferToHost2d {
        rect: rect(0, 0, 4, 4),
        offset: 0,
        resource_id: 2,
    };
    ok(&mut vm, create(2, 4, 4));
    ok(&mut vm, backing(gpa));
    ok(&mut vm, transfer.clone());
    ok(&mut vm, Command::ResourceDetachBacking { resource_id: 2 });
    let attached = call(&mut vm, backing(WINDOW_GPA));
    let refused = attached != Response::OkNodata || call(&mut vm, transfer) != Response::OkNodata;
    assert!(refused, "the window's guest address reached the blob");
    assert_eq!(vm.table_errors(), Vec::<String>::new());
}

#[test]
fn mappings_stop_at_the_vms_cap() {
    // The daemon-wide cap, and a VM's own.
    for (own, extra) in [
        ("", &["--max-mappings", "3"]),
        ("max-mappings=3", &["--max-mappings", "256"]),
    ] {
        let mut args = vec!["--renderer", "2d", "--hostmem", "1M"];
        args.extend_from_slice(extra);
        let d = vgpud_harness::Daemon::spawn_with_vm_settings(vgpud(), &[own], &args)
            .expect("start vgpud");
        let mut vm = qemu_like(&d);
        for id in 1..=4u32 {
            mappable_page(&mut vm, id);
            let want = match id {
                4 => Response::Err(ErrorCode::OutOfMemory),
                _ => MAPPED,
            };
            assert_eq!(
                map_blob(&mut vm, id, u64::from(id) * PAGE),
                want,
                "blob {id}"
            );
        }
        ok(&mut vm, Command::ResourceUnmapBlob { resource_id: 1 });
        assert_eq!(
            map_blob(&mut vm, 4, 4 * PAGE),
            MAPPED,
            "a freed place serves again"
        );
        assert_eq!(vm.table_errors(), Vec::<String>::new());
    }
}
