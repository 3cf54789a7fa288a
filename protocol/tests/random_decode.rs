//! Deterministic stand-in for fuzzing: decodes many pseudo-random and
//! mutated-valid messages; nothing may panic and whatever decodes must
//! survive an encode/decode roundtrip.

use vgpud_protocol::*;

const ITERATIONS: usize = 300_000;

/// xorshift64: tiny, seeded, reproducible.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    fn u32(&mut self) -> u32 {
        const EDGES: [u32; 8] = [0, 1, 2, 16, 64, 0x7fff_ffff, 0xffff_fffe, u32::MAX];
        match self.below(4) {
            0 => EDGES[self.below(EDGES.len())],
            1 => self.below(8) as u32,
            _ => self.next() as u32,
        }
    }

    fn bytes(&mut self, max: usize) -> Vec<u8> {
        let len = self.below(max + 1);
        (0..len).map(|_| self.next() as u8).collect()
    }
}

const REQUEST_TYPES: [u32; 26] = [
    0x100, 0x101, 0x102, 0x103, 0x104, 0x105, 0x106, 0x107, 0x108, 0x109, 0x10a, 0x10b, 0x10c,
    0x10d, 0x200, 0x201, 0x202, 0x203, 0x204, 0x205, 0x206, 0x207, 0x208, 0x209, 0x300, 0x301,
];
const RESPONSE_TYPES: [u32; 13] = [
    0x1100, 0x1101, 0x1102, 0x1103, 0x1104, 0x1105, 0x1106, 0x1200, 0x1201, 0x1202, 0x1203, 0x1204,
    0x1205,
];

fn entries(rng: &mut Rng) -> Vec<MemEntry> {
    let n = rng.below(5);
    (0..n)
        .map(|_| MemEntry {
            addr: rng.next(),
            length: rng.u32(),
        })
        .collect()
}

fn rect(rng: &mut Rng) -> Rect {
    Rect {
        x: rng.u32(),
        y: rng.u32(),
        width: rng.u32(),
        height: rng.u32(),
    }
}

fn transfer(rng: &mut Rng) -> Transfer3d {
    Transfer3d {
        box_: Box3d {
            x: rng.u32(),
            y: rng.u32(),
            z: rng.u32(),
            w: rng.u32(),
            h: rng.u32(),
            d: rng.u32(),
        },
        offset: rng.next(),
        resource_id: rng.u32(),
        level: rng.u32(),
        stride: rng.u32(),
        layer_stride: rng.u32(),
    }
}

fn cursor(rng: &mut Rng) -> UpdateCursor {
    UpdateCursor {
        pos: CursorPos {
            scanout_id: rng.u32(),
            x: rng.u32(),
            y: rng.u32(),
        },
        resource_id: rng.u32(),
        hot_x: rng.u32(),
        hot_y: rng.u32(),
    }
}

fn random_command(rng: &mut Rng) -> Command {
    match rng.below(26) {
        0 => Command::GetDisplayInfo,
        1 => Command::ResourceCreate2d {
            resource_id: rng.u32(),
            format: rng.u32(),
            width: rng.u32(),
            height: rng.u32(),
        },
        2 => Command::ResourceUnref {
            resource_id: rng.u32(),
        },
        3 => Command::SetScanout {
            rect: rect(rng),
            scanout_id: rng.u32(),
            resource_id: rng.u32(),
        },
        4 => Command::ResourceFlush {
            rect: rect(rng),
            resource_id: rng.u32(),
        },
        5 => Command::TransferToHost2d {
            rect: rect(rng),
            offset: rng.next(),
            resource_id: rng.u32(),
        },
        6 => Command::ResourceAttachBacking {
            resource_id: rng.u32(),
            entries: entries(rng),
        },
        7 => Command::ResourceDetachBacking {
            resource_id: rng.u32(),
        },
        8 => Command::GetCapsetInfo {
            capset_index: rng.u32(),
        },
        9 => Command::GetCapset {
            capset_id: rng.u32(),
            capset_version: rng.u32(),
        },
        10 => Command::GetEdid { scanout: rng.u32() },
        11 => Command::ResourceAssignUuid {
            resource_id: rng.u32(),
        },
        12 => Command::ResourceCreateBlob(CreateBlob {
            resource_id: rng.u32(),
            blob_mem: rng.u32(),
            blob_flags: rng.u32(),
            blob_id: rng.next(),
            size: rng.next(),
            entries: entries(rng),
        }),
        13 => Command::SetScanoutBlob(ScanoutBlob {
            rect: rect(rng),
            scanout_id: rng.u32(),
            resource_id: rng.u32(),
            width: rng.u32(),
            height: rng.u32(),
            format: rng.u32(),
            strides: [rng.u32(), rng.u32(), rng.u32(), rng.u32()],
            offsets: [rng.u32(), rng.u32(), rng.u32(), rng.u32()],
        }),
        14 => Command::CtxCreate {
            context_init: rng.u32(),
            debug_name: rng.bytes(64),
        },
        15 => Command::CtxDestroy,
        16 => Command::CtxAttachResource {
            resource_id: rng.u32(),
        },
        17 => Command::CtxDetachResource {
            resource_id: rng.u32(),
        },
        18 => Command::ResourceCreate3d(ResourceCreate3d {
            resource_id: rng.u32(),
            target: rng.u32(),
            format: rng.u32(),
            bind: rng.u32(),
            width: rng.u32(),
            height: rng.u32(),
            depth: rng.u32(),
            array_size: rng.u32(),
            last_level: rng.u32(),
            nr_samples: rng.u32(),
            flags: rng.u32(),
        }),
        19 => Command::TransferToHost3d(transfer(rng)),
        20 => Command::TransferFromHost3d(transfer(rng)),
        21 => Command::Submit3d {
            commands: rng.bytes(96),
        },
        22 => Command::ResourceMapBlob {
            resource_id: rng.u32(),
            offset: rng.next(),
        },
        23 => Command::ResourceUnmapBlob {
            resource_id: rng.u32(),
        },
        24 => Command::UpdateCursor(cursor(rng)),
        _ => Command::MoveCursor(cursor(rng)),
    }
}

fn random_header(rng: &mut Rng, type_: u32) -> CtrlHeader {
    CtrlHeader {
        type_,
        flags: rng.u32(),
        fence_id: rng.next(),
        ctx_id: rng.u32(),
        ring_idx: rng.next() as u8,
    }
}

fn random_response(rng: &mut Rng) -> Response {
    match rng.below(8) {
        0 => Response::OkNodata,
        1 => {
            let n = rng.below(20);
            let displays = (0..n)
                .map(|_| DisplayOne {
                    rect: rect(rng),
                    enabled: rng.below(2) == 1,
                    flags: rng.u32(),
                })
                .collect();
            Response::OkDisplayInfo(displays)
        }
        2 => Response::OkCapsetInfo {
            capset_id: rng.u32(),
            capset_max_version: rng.u32(),
            capset_max_size: rng.u32(),
        },
        3 => Response::OkCapset(rng.bytes(64)),
        4 => Response::OkEdid(rng.bytes(1100)),
        5 => Response::OkResourceUuid([rng.next() as u8; 16]),
        6 => Response::OkMapInfo {
            map_info: rng.u32(),
        },
        _ => Response::Err(ErrorCode::InvalidParameter),
    }
}

/// A random message: pure noise, or a valid encoding that is then damaged.
fn random_message(rng: &mut Rng) -> Vec<u8> {
    let mut buf = match rng.below(4) {
        0 => rng.bytes(200),
        1 => {
            let cmd = random_command(rng);
            let hdr = random_header(rng, 0);
            Request { hdr, cmd }.encode()
        }
        2 => {
            let hdr = random_header(rng, 0);
            random_response(rng).encode(&hdr)
        }
        _ => {
            let mut b = rng.bytes(200);
            let types = if rng.below(2) == 0 {
                &REQUEST_TYPES[..]
            } else {
                &RESPONSE_TYPES[..]
            };
            let t = types[rng.below(types.len())].to_le_bytes();
            for (dst, src) in b.iter_mut().zip(t) {
                *dst = src;
            }
            b
        }
    };
    for _ in 0..rng.below(4) {
        mutate(rng, &mut buf);
    }
    buf
}

fn mutate(rng: &mut Rng, buf: &mut Vec<u8>) {
    match rng.below(4) {
        0 => buf.truncate(rng.below(buf.len() + 1)),
        1 => buf.extend(rng.bytes(32)),
        2 if !buf.is_empty() => {
            let i = rng.below(buf.len());
            buf[i] ^= 1 << rng.below(8);
        }
        _ if buf.len() >= 4 => {
            // Overwrite an aligned u32 (counts, sizes, types) with an edge value.
            let i = rng.below(buf.len() / 4) * 4;
            buf[i..i + 4].copy_from_slice(&rng.u32().to_le_bytes());
        }
        _ => {}
    }
}

fn check_request(buf: &[u8], limits: &Limits) -> bool {
    let Ok(req) = Request::decode(buf, limits) else {
        return false;
    };
    assert_eq!(Request::decode(&req.encode(), limits), Ok(req));
    true
}

fn check_response(buf: &[u8]) -> bool {
    let Ok((hdr, resp)) = Response::decode(buf) else {
        return false;
    };
    let (hdr2, resp2) = Response::decode(&resp.encode(&hdr)).expect("re-decode");
    assert_eq!(resp2, resp);
    assert_eq!(hdr2.type_, hdr.type_);
    assert_eq!(hdr2.flags, hdr.flags & (FLAG_FENCE | FLAG_INFO_RING_IDX));
    assert_eq!(
        (hdr2.fence_id, hdr2.ctx_id, hdr2.ring_idx),
        (hdr.fence_id, hdr.ctx_id, hdr.ring_idx)
    );
    true
}

#[test]
fn random_and_mutated_messages() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let small = Limits {
        max_entries: 3,
        max_submit_bytes: 48,
    };
    let (mut requests, mut responses) = (0, 0);
    for _ in 0..ITERATIONS {
        let buf = random_message(&mut rng);
        let limits = if rng.below(2) == 0 {
            Limits::default()
        } else {
            small
        };
        requests += usize::from(check_request(&buf, &limits));
        responses += usize::from(check_response(&buf));
    }
    // The generator must keep reaching the decoders' success paths.
    assert!(
        requests > ITERATIONS / 10,
        "only {requests} requests decoded"
    );
    assert!(
        responses > ITERATIONS / 20,
        "only {responses} responses decoded"
    );
}

#[test]
fn structured_requests_roundtrip() {
    let mut rng = Rng(42);
    for _ in 0..ITERATIONS / 3 {
        let cmd = random_command(&mut rng);
        let hdr = random_header(&mut rng, cmd.type_code());
        let req = Request { hdr, cmd };
        assert_eq!(Request::decode(&req.encode(), &Limits::default()), Ok(req));
    }
}
