//! Messages between the broker (the `vgpud` process) and a render worker (`vgpud render-worker`,
//! one process per 3D VM). They mirror the device model's `Renderer` trait one call each.
//!
//! Transport: a UNIX stream socket pair per channel; each message is a frame of a 4-byte
//! little-endian length and that many bytes of postcard (serde's compact binary format), with
//! any file descriptors it carries sent alongside its first byte (SCM_RIGHTS). The request
//! channel has a faster path for frames that carry no descriptor and fit `SLOT_BYTES`: a slot
//! per direction in a shared page, each frame stamped with a sequence number that counts that
//! direction's slot frames from 1 (`slot_frame`, `slot_body`) and is written last, so that a new
//! number means a whole new frame; and an eventfd per direction (the doorbell) rung for a
//! receiver that said, in a flag of the same page, that it is about to sleep. Bulk bytes
//! (command streams, pixels, capset data) go through a shared-memory mailbox both processes
//! map, never through the socket: messages only say how many bytes of the mailbox are meant.
//!
//! The broker trusts no worker: a worker runs GPU driver code on a guest's behalf. Frames are
//! bounded (`MAX_FRAME`), decoding never panics, and the broker checks every number it gets
//! back before use (lengths against the mailbox, ids against what it asked for).

use serde::{Deserialize, Serialize};

use crate::command::{Rect, ResourceCreate3d, Transfer3d};

/// Largest frame either side sends or accepts (a backing of 16384 entries fits).
pub const MAX_FRAME: usize = 4 << 20;

/// Largest reply frame the broker accepts: a reply is a few bytes, and the worker cuts the
/// reason of a refusal to `MAX_WHY`. (A frame of `MAX_FRAME` would let a worker make the
/// broker build a list of a million capsets before it looked at what the reply was.)
pub const MAX_REPLY_FRAME: usize = 16 << 10;

/// Longest reason a worker gives for a refusal, in bytes.
pub const MAX_WHY: usize = 4096;

/// Size of the shared mailbox: the largest command stream (16 MiB) and room to spare.
pub const MAILBOX_BYTES: u64 = 20 << 20;

/// The ring of a fence asked for with another request (None: the global timeline).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FenceAfter {
    pub ring: Option<u8>,
}

/// One guest memory region the worker maps, in the order of the descriptors sent with
/// `Request::MemoryTable`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Region {
    pub guest_addr: u64,
    pub size: u64,
    pub file_offset: u64,
}

/// Guest memory the worker reads or writes for a resource: (guest address, length).
pub type GuestRanges = Vec<(u64, u64)>;

/// Broker to worker: one call of the `Renderer` trait (ids are the renderer's).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Request {
    /// The VM's guest memory, one descriptor per region sent with this message. Later requests
    /// name guest addresses in it. Replaces any earlier table.
    MemoryTable(Vec<Region>),
    Capsets,
    /// Reply: `Data`, the capset in the mailbox.
    Capset {
        id: u32,
        version: u32,
    },
    Create2d {
        id: u32,
        width: u32,
        height: u32,
        format: u32,
    },
    Create3d {
        id: u32,
        args: ResourceCreate3d,
    },
    Unref {
        id: u32,
    },
    AttachBacking {
        id: u32,
        ranges: GuestRanges,
    },
    DetachBacking {
        id: u32,
    },
    TransferToHost2d {
        id: u32,
        width: u32,
        rect: Rect,
        offset: u64,
    },
    /// Reply: `Data`, the pixels in the mailbox.
    ReadPixels {
        id: u32,
        rect: Rect,
    },
    CreateContext {
        ctx: u32,
        context_init: u32,
        name: String,
    },
    DestroyContext {
        ctx: u32,
    },
    AttachToContext {
        ctx: u32,
        id: u32,
    },
    DetachFromContext {
        ctx: u32,
        id: u32,
    },
    /// With `fence`, a fence is created right after the transfer, as for `Submit3d`.
    Transfer3d {
        ctx: u32,
        id: u32,
        to_host: bool,
        transfer: Transfer3d,
        fence: Option<FenceAfter>,
    },
    /// The command stream is the first `len` bytes of the mailbox. With `fence`, a fence is
    /// created right after it, as `CreateFence` would (one crossing for a fenced submit): the
    /// reply is then `CreateFence`'s, or `Failed` when the stream was refused (no fence made).
    Submit3d {
        ctx: u32,
        len: u64,
        fence: Option<FenceAfter>,
    },
    CreateBlob {
        ctx: u32,
        id: u32,
        mem: u32,
        flags: u32,
        blob_id: u64,
        size: u64,
        ranges: Option<GuestRanges>,
    },
    /// Reply: `Blob`, with the blob's descriptor.
    MapBlob {
        id: u32,
    },
    /// Reply: `Fence`, whose signal comes later as an `Event`; `FenceDone` when it signalled
    /// before the reply; or `Ok` when the renderer has no work the fence could wait for.
    CreateFence {
        ctx: u32,
        ring: Option<u8>,
    },
}

/// Worker to broker: the answer to the one request in flight.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Reply {
    Ok,
    Failed {
        out_of_memory: bool,
        why: String,
    },
    /// (id, max version, max size) of each capset.
    Capsets(Vec<(u32, u32, u32)>),
    /// The answer is the first `len` bytes of the mailbox.
    Data {
        len: u64,
    },
    /// The blob is `size` bytes of the descriptor sent along, from `offset`.
    Blob {
        offset: u64,
        size: u64,
        map_info: u32,
    },
    /// A fence, whose signal comes later as an `Event`.
    Fence {
        id: u64,
    },
    /// A fence that has signalled already: no `Event` follows for it.
    FenceDone {
        id: u64,
    },
}

/// Worker to broker, unasked, on the event channel.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Event {
    /// The fence `Reply::Fence` named has signalled.
    FenceSignalled { id: u64 },
}

/// Size of one doorbell slot: its header (sequence number, body length: u32 little-endian each)
/// and the frame's body. Larger frames, and frames with descriptors, take the socket.
pub const SLOT_BYTES: usize = 64 << 10;
pub const SLOT_HEADER: usize = 8;

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("slot frame number {found}, expected {expected}")]
    OutOfSequence { expected: u32, found: u32 },
    #[error("frame of {0} bytes is larger than {MAX_FRAME}")]
    TooLarge(usize),
    #[error("undecodable frame: {0}")]
    Decode(#[from] postcard::Error),
    #[error("{0} bytes after the message")]
    Trailing(usize),
}

/// Encodes a message as a frame: length, then the message.
pub fn encode<T: Serialize>(msg: &T) -> Result<Vec<u8>, FrameError> {
    let body = postcard::to_allocvec(msg)?;
    if body.len() > MAX_FRAME {
        return Err(FrameError::TooLarge(body.len()));
    }
    let mut frame = Vec::with_capacity(4 + body.len());
    frame.extend_from_slice(&(body.len() as u32).to_le_bytes());
    frame.extend_from_slice(&body);
    Ok(frame)
}

/// The body length a frame header announces, if acceptable.
pub fn frame_len(header: [u8; 4]) -> Result<usize, FrameError> {
    let len = u32::from_le_bytes(header) as usize;
    if len > MAX_FRAME {
        return Err(FrameError::TooLarge(len));
    }
    Ok(len)
}

/// Decodes a frame's body, which must hold the message and nothing more.
pub fn decode<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, FrameError> {
    if body.len() > MAX_FRAME {
        return Err(FrameError::TooLarge(body.len()));
    }
    match postcard::take_from_bytes(body)? {
        (msg, []) => Ok(msg),
        (_, rest) => Err(FrameError::Trailing(rest.len())),
    }
}

/// `msg` as a doorbell slot's bytes with sequence number `seq`, or None when it does not fit.
pub fn slot_frame<T: Serialize>(msg: &T, seq: u32) -> Result<Option<Vec<u8>>, FrameError> {
    // The body goes after room for the header, which is filled in once its length is known.
    let mut room = Vec::with_capacity(64);
    room.extend_from_slice(&[0; SLOT_HEADER]);
    let mut slot = postcard::to_extend(msg, room)?;
    let len = slot.len().saturating_sub(SLOT_HEADER);
    if len > SLOT_BYTES - SLOT_HEADER {
        return Ok(None);
    }
    slot.splice(
        ..SLOT_HEADER,
        [seq, len as u32].iter().flat_map(|w| w.to_le_bytes()),
    );
    Ok(Some(slot))
}

/// A slot header's body length, if the header carries sequence number `seq` and the body fits
/// the slot.
pub fn slot_body_len(header: [u8; SLOT_HEADER], seq: u32) -> Result<usize, FrameError> {
    let [s0, s1, s2, s3, l0, l1, l2, l3] = header;
    let found = u32::from_le_bytes([s0, s1, s2, s3]);
    if found != seq {
        return Err(FrameError::OutOfSequence {
            expected: seq,
            found,
        });
    }
    let len = u32::from_le_bytes([l0, l1, l2, l3]) as usize;
    if len > SLOT_BYTES - SLOT_HEADER {
        return Err(FrameError::TooLarge(len));
    }
    Ok(len)
}

/// The body of a doorbell slot's bytes (`slot_frame`'s layout), checked like `slot_body_len`.
pub fn slot_body(slot: &[u8], seq: u32) -> Result<&[u8], FrameError> {
    let header: [u8; SLOT_HEADER] = slot
        .get(..SLOT_HEADER)
        .and_then(|h| h.try_into().ok())
        .ok_or(FrameError::TooLarge(0))?;
    let len = slot_body_len(header, seq)?;
    slot.get(SLOT_HEADER..SLOT_HEADER + len)
        .ok_or(FrameError::TooLarge(len))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip<T: Serialize + for<'a> Deserialize<'a> + PartialEq + std::fmt::Debug>(msg: T) {
        let frame = encode(&msg).unwrap();
        let len = frame_len(frame[..4].try_into().unwrap()).unwrap();
        assert_eq!(len, frame.len() - 4);
        assert_eq!(decode::<T>(&frame[4..]).unwrap(), msg);
    }

    #[test]
    fn messages_survive_a_roundtrip() {
        roundtrip(Request::MemoryTable(vec![Region {
            guest_addr: 1 << 32,
            size: 1 << 30,
            file_offset: 4096,
        }]));
        roundtrip(Request::AttachBacking {
            id: 7,
            ranges: vec![(0x1000, 4096), (u64::MAX - 1, 1)],
        });
        roundtrip(Request::CreateFence {
            ctx: 3,
            ring: Some(2),
        });
        roundtrip(Request::Transfer3d {
            ctx: 1,
            id: 2,
            to_host: true,
            transfer: Transfer3d::default(),
            fence: Some(FenceAfter { ring: Some(3) }),
        });
        roundtrip(Reply::Failed {
            out_of_memory: true,
            why: "no".into(),
        });
        roundtrip(Reply::Blob {
            offset: 4096,
            size: 1 << 20,
            map_info: 1,
        });
        roundtrip(Reply::FenceDone { id: u64::MAX });
        roundtrip(Event::FenceSignalled { id: u64::MAX });
    }

    #[test]
    fn oversized_and_garbled_frames_are_refused() {
        assert!(frame_len(((MAX_FRAME + 1) as u32).to_le_bytes()).is_err());
        assert!(frame_len(u32::MAX.to_le_bytes()).is_err());
        // Reply's variants are numbered 0..=6.
        assert!(decode::<Reply>(b"\x07").is_err(), "no such reply");
        assert!(decode::<Reply>(b"\xff\xfe").is_err(), "a varint cut short");
        assert!(decode::<Event>(b"\x00").is_err(), "cut short");
        let long_varint = [
            3, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02,
        ];
        assert!(
            decode::<Reply>(&long_varint).is_err(),
            "a u64 of more than 64 bits"
        );
        assert!(decode::<Reply>(&[1, 2, 0]).is_err(), "a bool of 2");
        assert!(decode::<Reply>(&[1, 0, 1, 0xff]).is_err(), "not UTF-8");
        let huge = [2, 0xff, 0xff, 0xff, 0xff, 0x0f];
        assert!(decode::<Reply>(&huge).is_err(), "more capsets than bytes");
        let mut trailing = encode(&Reply::Ok).unwrap().split_off(4);
        trailing.push(0);
        assert!(
            decode::<Reply>(&trailing).is_err(),
            "bytes after the message"
        );
        let long = "x".repeat(MAX_FRAME);
        assert!(encode(&Reply::Failed {
            out_of_memory: false,
            why: long
        })
        .is_err());
    }

    #[test]
    fn slot_frames_are_numbered_and_bounded() {
        let reply = Reply::Data { len: 1 << 20 };
        let slot = slot_frame(&reply, 7).unwrap().unwrap();
        assert_eq!(
            decode::<Reply>(slot_body(&slot, 7).unwrap()).unwrap(),
            reply
        );
        assert!(matches!(
            slot_body(&slot, 8),
            Err(FrameError::OutOfSequence {
                expected: 8,
                found: 7
            })
        ));
        assert!(slot_body(&slot[..SLOT_HEADER + 1], 7).is_err(), "cut short");
        let mut lying = slot.clone();
        lying[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(slot_body(&lying, 7).is_err(), "longer than a slot");
        assert!(slot_body(&[0; 3], 0).is_err(), "no header");
        let long = Reply::Failed {
            out_of_memory: false,
            why: "x".repeat(SLOT_BYTES),
        };
        assert!(slot_frame(&long, 1).unwrap().is_none(), "takes the socket");
    }
}
