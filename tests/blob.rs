//! Blob resources over a real vhost-user connection: the host-visible window (SHMEM), mapping
//! guest blobs into it, every check made before the frontend is asked, and blob scanouts.

mod common;

use std::time::Duration;

use common::*;
use vgpud_harness::{Vm, VmConfig};
use vgpud_protocol::{
    format, Command, CreateBlob, ErrorCode, GpuConfig, MemEntry, Response, ScanoutBlob,
    BLOB_FLAG_USE_MAPPABLE, BLOB_MEM_GUEST, BLOB_MEM_HOST3D, F_BLOB_ALIGNMENT, F_CONTEXT_INIT,
    F_RESOURCE_BLOB, MAP_CACHE_CACHED, SHM_ID_HOST_VISIBLE,
};

const SHMEM: u64 = 0x0040_0000;
const WINDOW: u64 = 1 << 20;
const PAGE: u64 = 4096;
const SHM: u8 = SHM_ID_HOST_VISIBLE;

fn with_window() -> vgpud_harness::Daemon {
    daemon(1, &["--hostmem", "1M"])
}

fn guest_blob(id: u32, flags: u32, entries: Vec<MemEntry>) -> Command {
    let size = entries.iter().map(|e| u64::from(e.length)).sum();
    Command::ResourceCreateBlob(CreateBlob {
        resource_id: id,
        blob_mem: BLOB_MEM_GUEST,
        blob_flags: flags,
        blob_id: 0,
        size,
        entries,
    })
}

/// A mappable guest blob of `pages` pages filled with `fill`, as two contiguous entries.
fn mappable(vm: &mut Vm, id: u32, pages: u64, fill: u8) -> u64 {
    let len = pages * PAGE;
    let gpa = vm.alloc_in(0, len, PAGE);
    vm.write_mem(gpa, &vec![fill; len as usize]);
    let half = (len / 2) as u32;
    let entries = vec![
        MemEntry {
            addr: gpa,
            length: half,
        },
        MemEntry {
            addr: gpa + u64::from(half),
            length: len as u32 - half,
        },
    ];
    ok(vm, guest_blob(id, BLOB_FLAG_USE_MAPPABLE, entries));
    gpa
}

fn map(vm: &mut Vm, id: u32, offset: u64) -> Response {
    map_blob(vm, id, offset)
}

fn unmap(vm: &mut Vm, id: u32) -> Response {
    call(vm, Command::ResourceUnmapBlob { resource_id: id })
}

const MAPPED: Response = Response::OkMapInfo {
    map_info: MAP_CACHE_CACHED,
};
const BAD: Response = Response::Err(ErrorCode::InvalidParameter);

#[test]
fn the_window_is_offered_only_when_configured() {
    let d = with_window();
    let mut vm = connect(&d, 0);
    assert_ne!(vm.protocol_features() & SHMEM, 0, "SHMEM offered");
    assert_ne!(vm.offered_features() & (1 << F_RESOURCE_BLOB), 0);
    assert_eq!(
        vm.offered_features() & (1 << F_CONTEXT_INIT),
        0,
        "no contexts without a 3D renderer"
    );
    assert_eq!(
        vm.shmem().region_sizes(),
        Some(vec![0, WINDOW]),
        "one region, shared memory id 1"
    );
    // Blob sizes and map offsets go by pages, and the config space says so.
    assert_ne!(vm.offered_features() & (1 << F_BLOB_ALIGNMENT), 0);
    let cfg = GpuConfig::from_bytes(&vm.get_config(0, 20).unwrap()).unwrap();
    assert_eq!(cfg.blob_alignment, PAGE as u32);
    mappable(&mut vm, 1, 1, 0);

    let plain = daemon(1, &[]);
    let mut vm = connect(&plain, 0);
    assert_eq!(vm.protocol_features() & SHMEM, 0);
    assert_eq!(vm.offered_features() & (1 << F_RESOURCE_BLOB), 0);
    assert_eq!(vm.offered_features() & (1 << F_BLOB_ALIGNMENT), 0);
    let gpa = vm.alloc(PAGE, PAGE);
    let entry = MemEntry {
        addr: gpa,
        length: PAGE as u32,
    };
    assert_eq!(
        call(&mut vm, guest_blob(1, BLOB_FLAG_USE_MAPPABLE, vec![entry])),
        Response::Err(ErrorCode::Unspec)
    );
}

#[test]
fn a_mapped_guest_blob_is_the_guest_memory_itself() {
    let d = with_window();
    let mut vm = connect(&d, 0);
    let gpa = mappable(&mut vm, 7, 3, 0);
    let pattern: Vec<u8> = (0..3 * PAGE).map(|i| (i * 7 % 251) as u8).collect();
    vm.write_mem(gpa, &pattern);
    assert_eq!(map(&mut vm, 7, 0x10000), MAPPED);
    let shmem = vm.shmem();
    let maps = shmem.mappings();
    assert_eq!(maps.len(), 1);
    assert_eq!(
        (maps[0].shmid, maps[0].shm_offset, maps[0].len),
        (SHM, 0x10000, 3 * PAGE)
    );
    assert_eq!(maps[0].flags & 1, 1, "writable");
    assert_eq!(
        shmem.read(SHM, 0x10000, pattern.len()).unwrap(),
        pattern,
        "the window shows the guest pages"
    );
    // And the other way round: no copy in between.
    assert!(shmem.write(SHM, 0x10000 + PAGE, b"written through the window"));
    assert_eq!(
        vm.read_mem(gpa + PAGE, 26),
        b"written through the window".to_vec()
    );
    assert_eq!(unmap(&mut vm, 7), Response::OkNodata);
    assert!(shmem.mappings().is_empty());
    // Mappable again, elsewhere.
    assert_eq!(map(&mut vm, 7, 0), MAPPED);
    assert_eq!(shmem.read(SHM, 0, 4).unwrap(), pattern[..4].to_vec());
}

#[test]
fn bad_mappings_are_refused_before_the_frontend_is_asked() {
    let d = with_window();
    let mut vm = connect(&d, 0);
    mappable(&mut vm, 1, 2, 1);
    mappable(&mut vm, 2, 2, 2);
    let gpa = vm.alloc_in(0, PAGE, PAGE);
    let entry = MemEntry {
        addr: gpa,
        length: PAGE as u32,
    };
    ok(&mut vm, guest_blob(3, 0, vec![entry]));
    ok(&mut vm, create(4, 16, 16));
    let shmem = vm.shmem();

    assert_eq!(map(&mut vm, 1, 100), BAD, "misaligned");
    assert_eq!(map(&mut vm, 1, WINDOW), BAD, "at the end of the window");
    assert_eq!(map(&mut vm, 1, WINDOW - PAGE), BAD, "runs past the end");
    assert_eq!(
        map(&mut vm, 1, u64::MAX - PAGE + 1),
        BAD,
        "offset + size overflows"
    );
    assert_eq!(map(&mut vm, 3, 0), BAD, "not mappable");
    assert_eq!(map(&mut vm, 4, 0), BAD, "not a blob");
    assert_eq!(
        map(&mut vm, 9, 0),
        Response::Err(ErrorCode::InvalidResourceId)
    );
    assert_eq!(shmem.map_count(), 0, "nothing reached the frontend");

    assert_eq!(map(&mut vm, 1, 0x4000), MAPPED);
    assert_eq!(map(&mut vm, 1, 0x8000), BAD, "already mapped");
    assert_eq!(map(&mut vm, 2, 0x5000), BAD, "overlaps the start");
    assert_eq!(map(&mut vm, 2, 0x3000), BAD, "overlaps the end");
    assert_eq!(
        map(&mut vm, 2, 0x2000),
        MAPPED,
        "ends where the other starts"
    );
    assert_eq!(shmem.map_count(), 2);

    assert_eq!(unmap(&mut vm, 1), Response::OkNodata);
    assert_eq!(unmap(&mut vm, 1), BAD, "double unmap");
    assert_eq!(unmap(&mut vm, 3), BAD, "never mapped");
    assert_eq!(unmap(&mut vm, 4), BAD, "not a blob");
    assert_eq!(shmem.unmap_count(), 1);
    assert!(vm.backend_channel_errors().is_empty());
}

#[test]
fn unref_of_a_mapped_blob_unmaps_it_first() {
    let d = with_window();
    let mut vm = connect(&d, 0);
    mappable(&mut vm, 5, 1, 0x5a);
    assert_eq!(map(&mut vm, 5, 0), MAPPED);
    ok(&mut vm, Command::ResourceUnref { resource_id: 5 });
    let shmem = vm.shmem();
    assert!(shmem.mappings().is_empty(), "the window no longer shows it");
    assert_eq!(shmem.unmap_count(), 1);
    // Its range is free for the next blob.
    mappable(&mut vm, 6, 1, 0x6b);
    assert_eq!(map(&mut vm, 6, 0), MAPPED);
    assert_eq!(shmem.read(SHM, 0, 2).unwrap(), vec![0x6b, 0x6b]);
}

#[test]
fn hundreds_of_live_mappings() {
    const N: u32 = 240;
    let d = with_window();
    let mut vm = connect(&d, 0);
    vm.set_timeout(Duration::from_secs(20));
    for i in 0..N {
        mappable(&mut vm, i + 1, 1, i as u8);
        assert_eq!(map(&mut vm, i + 1, u64::from(i) * PAGE), MAPPED, "blob {i}");
    }
    let shmem = vm.shmem();
    assert_eq!(shmem.mappings().len(), N as usize);
    for i in 0..N {
        assert_eq!(
            shmem.read(SHM, u64::from(i) * PAGE + 17, 1),
            Some(vec![i as u8]),
            "blob {i} shows its own pages"
        );
    }
    for i in 0..N {
        ok(&mut vm, Command::ResourceUnref { resource_id: i + 1 });
    }
    assert!(shmem.mappings().is_empty());
    assert_eq!(shmem.unmap_count(), u64::from(N));
}

#[test]
fn host_blobs_need_a_3d_renderer() {
    let d = with_window();
    let mut vm = connect(&d, 0);
    let cmd = Command::ResourceCreateBlob(CreateBlob {
        resource_id: 1,
        blob_mem: BLOB_MEM_HOST3D,
        blob_flags: BLOB_FLAG_USE_MAPPABLE,
        blob_id: 1,
        size: PAGE,
        entries: Vec::new(),
    });
    assert_eq!(call(&mut vm, cmd), BAD);
}

#[test]
fn a_blob_scanout_shows_guest_pages_with_their_stride() {
    let d = with_window();
    let cfg = VmConfig {
        display: Some(vec![(64, 32)]),
        ..VmConfig::default()
    };
    let mut vm = Vm::connect(&d.socket(0), cfg).expect("connect");
    let (w, h, stride, offset) = (64u32, 32u32, 320u32, 512u32);
    let size = u64::from(offset + stride * h);
    // Two entries in two different regions: fine for a scanout, though not mappable by fd.
    let first = size / 2;
    let a = vm.alloc_in(0, first, PAGE);
    let b = vm.alloc_in(1, size - first, PAGE);
    let image = pattern(w, h, 9);
    let mut blob = vec![0xeeu8; size as usize];
    for y in 0..h as usize {
        let at = offset as usize + y * stride as usize;
        blob[at..at + w as usize * 4]
            .copy_from_slice(&image[y * w as usize * 4..][..w as usize * 4]);
    }
    vm.write_mem(a, &blob[..first as usize]);
    vm.write_mem(b, &blob[first as usize..]);
    let entries = vec![
        MemEntry {
            addr: a,
            length: first as u32,
        },
        MemEntry {
            addr: b,
            length: (size - first) as u32,
        },
    ];
    ok(&mut vm, guest_blob(1, BLOB_FLAG_USE_MAPPABLE, entries));
    assert_eq!(
        map(&mut vm, 1, 0),
        BAD,
        "pages in two regions have no one file"
    );
    let scanout = |stride: u32, height: u32| {
        Command::SetScanoutBlob(ScanoutBlob {
            rect: rect(0, 0, w, height),
            scanout_id: 0,
            resource_id: 1,
            width: w,
            height,
            format: format::B8G8R8X8_UNORM,
            strides: [stride, 0, 0, 0],
            offsets: [offset, 0, 0, 0],
        })
    };
    assert_eq!(
        call(&mut vm, scanout(w * 4 - 4, h)),
        BAD,
        "stride below a row"
    );
    assert_eq!(
        call(&mut vm, scanout(stride, h + 1)),
        BAD,
        "past the blob's end"
    );
    assert_eq!(call(&mut vm, scanout(u32::MAX, h)), BAD, "huge stride");
    let huge = Command::SetScanoutBlob(ScanoutBlob {
        rect: rect(0, 0, 1, 1),
        scanout_id: 0,
        resource_id: 1,
        width: u32::MAX,
        height: u32::MAX,
        format: format::B8G8R8X8_UNORM,
        strides: [u32::MAX; 4],
        offsets: [u32::MAX; 4],
    });
    assert_eq!(call(&mut vm, huge), BAD, "sizes that overflow");
    ok(&mut vm, scanout(stride, h));
    ok(
        &mut vm,
        Command::ResourceFlush {
            rect: rect(0, 0, w, h),
            resource_id: 1,
        },
    );
    let display = vm.display().unwrap();
    assert!(display.wait_updates(1, Duration::from_secs(5)));
    let frame = display.frame(0).unwrap();
    assert_eq!((frame.width, frame.height), (w, h));
    assert!(frame.pixels == image, "the scanout shows the blob's rows");
}
