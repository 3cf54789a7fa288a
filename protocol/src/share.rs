//! The share context: vgpud's own context type (capset [`CAPSET_SHARE`]) through which guests
//! share buffers and fences between VMs with stock DRM ioctls. docs/share-protocol.md is the guide
//! for guest programmers; this is the wire format.
//!
//! A guest creates a context with CONTEXT_INIT and capset `CAPSET_SHARE`, sends commands in
//! EXECBUFFER (SUBMIT_3D) streams, and reads replies in a guest blob it named with
//! `SetReplyBlob`. A stream holds commands back to back; each starts with a [`CommandHeader`].
//! Every command that answers writes its reply at its header's `reply_offset` in the reply blob:
//! a [`ReplyHeader`] and the payload. The replies of a stream are written before the stream's
//! fence (if it has one) signals, so a guest that waits for its EXECBUFFER's out-fence reads
//! complete replies.

use crate::wire::{DecodeError, Reader, Writer};

/// The share context's capset id: below 31 (guest kernels that build their capset mask with a
/// 32-bit shift refuse 31 and up) and away from the ids the virtio spec assigns (1 to 8).
pub const CAPSET_SHARE: u32 = 20;
/// The share capset's only version, and what GET_CAPSET returns for it.
pub const SHARE_VERSION: u32 = 1;

/// Most commands one stream may carry; more is refused as a whole.
pub const MAX_COMMANDS: usize = 64;
/// Most fence handles one `WaitFences` may name.
pub const MAX_WAIT_HANDLES: u32 = 64;
/// Most events one `ReadEvents` returns.
pub const MAX_EVENTS: u32 = 64;
/// `reply_offset` of a command whose reply is not wanted.
pub const NO_REPLY: u32 = u32::MAX;

pub mod op {
    pub const SET_REPLY_BLOB: u32 = 1;
    pub const EXPORT: u32 = 2;
    pub const IMPORT: u32 = 3;
    pub const PIN: u32 = 4;
    pub const UNPIN: u32 = 5;
    pub const EXPORT_FENCE: u32 = 6;
    pub const WAIT_FENCES: u32 = 7;
    pub const READ_EVENTS: u32 = 8;
}

/// `ExportFence`'s `ctx_id` for a point on every renderer timeline of the VM at once (a guest
/// cannot learn the ids its kernel gave its contexts).
pub const EXPORT_FENCE_ALL: u32 = u32::MAX;

/// `Import` flags.
pub const IMPORT_DYNAMIC: u32 = 1;

pub const HEADER_SIZE: usize = 16;
pub const REPLY_HEADER_SIZE: usize = 8;

/// Every command starts with this.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CommandHeader {
    pub op: u32,
    /// Bytes of the whole command, header included: a multiple of 8.
    pub len: u32,
    /// Where in the reply blob the reply goes, or [`NO_REPLY`].
    pub reply_offset: u32,
}

/// A UUID naming an exported buffer across VMs.
pub type Uuid = [u8; 16];

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ShareCommand {
    /// The guest blob (of this VM, at least a page) replies are written into.
    SetReplyBlob {
        resource_id: u32,
    },
    /// Offer a blob resource for import by other VMs. Reply: its UUID (the one
    /// RESOURCE_ASSIGN_UUID gave it, if any).
    Export {
        resource_id: u32,
    },
    /// Import an exported buffer. Reply: a blob id for RESOURCE_CREATE_BLOB (HOST3D, on this
    /// context) and the buffer's size. `dynamic`: the daemon may move the buffer while it is
    /// not pinned (the importer then gets a MOVED event and must map it again); otherwise the
    /// import pins it for as long as it lasts.
    Import {
        uuid: Uuid,
        dynamic: bool,
    },
    /// Keep an imported or exported resource where it is until `Unpin`.
    Pin {
        resource_id: u32,
    },
    Unpin {
        resource_id: u32,
    },
    /// A handle for the current last point of one of this VM's timelines: (context, ring), the
    /// global timeline with `ctx_id` 0, or every renderer timeline with [`EXPORT_FENCE_ALL`].
    /// Reply: the handle.
    ExportFence {
        ctx_id: u32,
        ring: u32,
    },
    /// This stream's fence signals only once every fence named here has (imported from other
    /// VMs by their handles).
    WaitFences {
        handles: Vec<u64>,
    },
    /// Reply: up to `max` pending events, oldest first.
    ReadEvents {
        max: u32,
    },
}

/// Something that happened to a buffer or fence this VM uses, read with `ReadEvents`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShareEvent {
    pub kind: u32,
    /// The resource it concerns in this VM (0: none).
    pub resource_id: u32,
    /// The buffer's UUID, or the fence handle in the first 8 bytes.
    pub subject: Uuid,
}

pub mod event {
    /// A dynamic import was moved: its mapping is gone; map it again.
    pub const MOVED: u32 = 1;
    /// The exporter let go of a buffer: the import is dead for good.
    pub const REVOKED: u32 = 2;
    /// A fence waited on will never signal normally: its producer died.
    pub const FENCE_ERROR: u32 = 3;
}

/// A reply's status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum Status {
    Ok = 0,
    /// A malformed command or an argument out of range.
    Invalid = 1,
    /// No such resource, export or fence (or none this VM may use).
    NoSuch = 2,
    /// The daemon's policy does not allow it. Not answered to guests: what the policy refuses
    /// answers `NoSuch`, as if it did not exist, so that no VM learns what other VMs offer.
    Denied = 3,
    /// Over a quota or the memory budget.
    NoSpace = 4,
    /// Not possible with this VM's renderer.
    Unsupported = 5,
}

impl CommandHeader {
    /// A header; its reserved word must be 0 and its reply offset 4-byte aligned.
    pub fn decode(r: &mut Reader) -> Result<Self, DecodeError> {
        let h = CommandHeader {
            op: r.u32()?,
            len: r.u32()?,
            reply_offset: r.u32()?,
        };
        reserved(r)?;
        if h.reply_offset != NO_REPLY && !h.reply_offset.is_multiple_of(4) {
            return Err(DecodeError::Misaligned {
                offset: h.reply_offset,
            });
        }
        Ok(h)
    }

    pub fn encode(&self, out: &mut Vec<u8>) {
        out.put_u32(self.op);
        out.put_u32(self.len);
        out.put_u32(self.reply_offset);
        out.put_u32(0);
    }
}

impl ShareCommand {
    pub fn op(&self) -> u32 {
        match self {
            ShareCommand::SetReplyBlob { .. } => op::SET_REPLY_BLOB,
            ShareCommand::Export { .. } => op::EXPORT,
            ShareCommand::Import { .. } => op::IMPORT,
            ShareCommand::Pin { .. } => op::PIN,
            ShareCommand::Unpin { .. } => op::UNPIN,
            ShareCommand::ExportFence { .. } => op::EXPORT_FENCE,
            ShareCommand::WaitFences { .. } => op::WAIT_FENCES,
            ShareCommand::ReadEvents { .. } => op::READ_EVENTS,
        }
    }

    /// The most reply bytes (header and payload) this command can answer: its reply slot must
    /// hold that many.
    pub fn max_reply_len(&self) -> usize {
        let payload = match self {
            ShareCommand::SetReplyBlob { .. }
            | ShareCommand::Pin { .. }
            | ShareCommand::Unpin { .. }
            | ShareCommand::WaitFences { .. } => 0,
            ShareCommand::Export { .. } => 16,
            ShareCommand::Import { .. } => 16,
            ShareCommand::ExportFence { .. } => 8,
            ShareCommand::ReadEvents { max } => {
                8 + (*max).min(MAX_EVENTS) as usize * ShareEvent::SIZE
            }
        };
        REPLY_HEADER_SIZE + payload
    }

    fn decode_body(op: u32, r: &mut Reader) -> Result<Self, DecodeError> {
        Ok(match op {
            op::SET_REPLY_BLOB => ShareCommand::SetReplyBlob {
                resource_id: id_and_pad(r)?,
            },
            op::EXPORT => ShareCommand::Export {
                resource_id: id_and_pad(r)?,
            },
            op::IMPORT => {
                let uuid = r.array()?;
                let at = r.position();
                let flags = r.u32()?;
                if flags & !IMPORT_DYNAMIC != 0 {
                    return Err(DecodeError::Reserved { at });
                }
                reserved(r)?;
                ShareCommand::Import {
                    uuid,
                    dynamic: flags & IMPORT_DYNAMIC != 0,
                }
            }
            op::PIN => ShareCommand::Pin {
                resource_id: id_and_pad(r)?,
            },
            op::UNPIN => ShareCommand::Unpin {
                resource_id: id_and_pad(r)?,
            },
            op::EXPORT_FENCE => ShareCommand::ExportFence {
                ctx_id: r.u32()?,
                ring: r.u32()?,
            },
            op::WAIT_FENCES => {
                let count = r.u32()?;
                reserved(r)?;
                if count > MAX_WAIT_HANDLES {
                    return Err(DecodeError::TooManyEntries {
                        count,
                        max: MAX_WAIT_HANDLES,
                    });
                }
                // `count` is bounded, so is the allocation; each handle is read checked.
                let handles = (0..count).map(|_| r.u64()).collect::<Result<_, _>>()?;
                ShareCommand::WaitFences { handles }
            }
            op::READ_EVENTS => ShareCommand::ReadEvents {
                max: id_and_pad(r)?,
            },
            other => return Err(DecodeError::UnknownType(other)),
        })
    }

    /// The command with its header, answering at `reply_offset`.
    pub fn encode(&self, reply_offset: u32) -> Vec<u8> {
        let mut body = Vec::new();
        match self {
            ShareCommand::SetReplyBlob { resource_id }
            | ShareCommand::Export { resource_id }
            | ShareCommand::Pin { resource_id }
            | ShareCommand::Unpin { resource_id } => {
                body.put_u32(*resource_id);
                body.put_u32(0);
            }
            ShareCommand::Import { uuid, dynamic } => {
                body.extend_from_slice(uuid);
                body.put_u32(if *dynamic { IMPORT_DYNAMIC } else { 0 });
                body.put_u32(0);
            }
            ShareCommand::ExportFence { ctx_id, ring } => {
                body.put_u32(*ctx_id);
                body.put_u32(*ring);
            }
            ShareCommand::WaitFences { handles } => {
                body.put_u32(handles.len() as u32);
                body.put_u32(0);
                handles.iter().for_each(|h| body.put_u64(*h));
            }
            ShareCommand::ReadEvents { max } => {
                body.put_u32(*max);
                body.put_u32(0);
            }
        }
        let mut out = Vec::with_capacity(HEADER_SIZE + body.len());
        CommandHeader {
            op: self.op(),
            len: (HEADER_SIZE + body.len()) as u32,
            reply_offset,
        }
        .encode(&mut out);
        out.extend_from_slice(&body);
        out
    }
}

fn id_and_pad(r: &mut Reader) -> Result<u32, DecodeError> {
    let id = r.u32()?;
    reserved(r)?;
    Ok(id)
}

/// A reserved word: it must be 0, so that a later version can give it a meaning.
fn reserved(r: &mut Reader) -> Result<(), DecodeError> {
    let at = r.position();
    match r.u32()? {
        0 => Ok(()),
        _ => Err(DecodeError::Reserved { at }),
    }
}

/// One command of a stream, with where its reply goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Addressed {
    pub command: ShareCommand,
    /// None: no reply wanted.
    pub reply_offset: Option<u32>,
}

/// Decodes a whole stream, or refuses it whole: a command whose body does not fill exactly its
/// `len` (a multiple of 8, at least the header), an unknown op, a reserved field or flag that is
/// not 0, a reply offset that is not 4-byte aligned, or more than [`MAX_COMMANDS`] commands.
/// (Whether each reply fits in the reply blob is for the device to check, before any command
/// runs: [`ShareCommand::max_reply_len`].)
pub fn decode_stream(stream: &[u8]) -> Result<Vec<Addressed>, DecodeError> {
    let mut out = Vec::new();
    let mut at = 0usize;
    while at < stream.len() {
        if out.len() == MAX_COMMANDS {
            return Err(DecodeError::TooManyEntries {
                count: MAX_COMMANDS as u32 + 1,
                max: MAX_COMMANDS as u32,
            });
        }
        let mut r = Reader::at(stream, at);
        let header = CommandHeader::decode(&mut r)?;
        let len = header.len as usize;
        if len < HEADER_SIZE || !len.is_multiple_of(8) {
            return Err(DecodeError::Truncated {
                need: at.saturating_add(HEADER_SIZE),
                have: stream.len(),
            });
        }
        let end =
            at.checked_add(len)
                .filter(|&e| e <= stream.len())
                .ok_or(DecodeError::Truncated {
                    need: at.saturating_add(len),
                    have: stream.len(),
                })?;
        // The body is read in place, so errors name positions in the stream.
        let command_bytes = stream.get(..end).unwrap_or(&[]);
        let mut br = Reader::at(command_bytes, at + HEADER_SIZE);
        let command = ShareCommand::decode_body(header.op, &mut br)?;
        if !br.remaining().is_empty() {
            return Err(DecodeError::Truncated {
                need: br.position(),
                have: end,
            });
        }
        out.push(Addressed {
            command,
            reply_offset: (header.reply_offset != NO_REPLY).then_some(header.reply_offset),
        });
        at = end;
    }
    Ok(out)
}

/// The reply offsets a stream names, as far as its headers can be found (a command whose `len`
/// is malformed ends the walk), for at most [`MAX_COMMANDS`] commands: where a device writes
/// `INVALID` when it refuses the stream, so that the guest learns of it.
pub fn reply_slots(stream: &[u8]) -> Vec<u32> {
    let mut slots = Vec::new();
    let mut at = 0usize;
    for _ in 0..MAX_COMMANDS {
        let mut r = Reader::at(stream, at);
        let (Ok(_op), Ok(len), Ok(offset)) = (r.u32(), r.u32(), r.u32()) else {
            break;
        };
        if offset != NO_REPLY {
            slots.push(offset);
        }
        let len = len as usize;
        if len < HEADER_SIZE || !len.is_multiple_of(8) {
            break;
        }
        match at.checked_add(len) {
            Some(next) if next < stream.len() => at = next,
            _ => break,
        }
    }
    slots
}

/// A reply's bytes: status, payload length, payload.
pub fn encode_reply(status: Status, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(REPLY_HEADER_SIZE + payload.len());
    out.put_u32(status as u32);
    out.put_u32(payload.len() as u32);
    out.extend_from_slice(payload);
    out
}

/// Decodes a reply (for guests and tests): status code and payload.
pub fn decode_reply(bytes: &[u8]) -> Result<(u32, &[u8]), DecodeError> {
    let mut r = Reader::new(bytes);
    let status = r.u32()?;
    let len = r.u32()? as usize;
    Ok((status, r.bytes(len)?))
}

impl ShareEvent {
    pub const SIZE: usize = 24;

    pub fn encode(&self, out: &mut Vec<u8>) {
        out.put_u32(self.kind);
        out.put_u32(self.resource_id);
        out.extend_from_slice(&self.subject);
    }

    pub fn decode(r: &mut Reader) -> Result<Self, DecodeError> {
        Ok(ShareEvent {
            kind: r.u32()?,
            resource_id: r.u32()?,
            subject: r.array()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all() -> Vec<ShareCommand> {
        vec![
            ShareCommand::SetReplyBlob { resource_id: 9 },
            ShareCommand::Export { resource_id: 3 },
            ShareCommand::Import {
                uuid: [7; 16],
                dynamic: true,
            },
            ShareCommand::Import {
                uuid: [1; 16],
                dynamic: false,
            },
            ShareCommand::Pin { resource_id: 4 },
            ShareCommand::Unpin { resource_id: 4 },
            ShareCommand::ExportFence { ctx_id: 2, ring: 1 },
            ShareCommand::WaitFences {
                handles: vec![1, u64::MAX],
            },
            ShareCommand::ReadEvents { max: 8 },
        ]
    }

    #[test]
    fn every_command_round_trips_in_one_stream() {
        let cmds = all();
        let stream: Vec<u8> = cmds
            .iter()
            .enumerate()
            .flat_map(|(i, c)| c.encode(if i == 0 { NO_REPLY } else { 64 * i as u32 }))
            .collect();
        let back = decode_stream(&stream).unwrap();
        assert_eq!(back.len(), cmds.len());
        for (i, (a, c)) in back.iter().zip(&cmds).enumerate() {
            assert_eq!(&a.command, c);
            assert_eq!(a.reply_offset, (i > 0).then_some(64 * i as u32));
        }
    }

    #[test]
    fn wire_layout_is_what_the_guide_documents() {
        // IMPORT, 40 bytes, reply at 0x100: header, uuid, flags, pad.
        let bytes = ShareCommand::Import {
            uuid: [0xab; 16],
            dynamic: true,
        }
        .encode(0x100);
        assert_eq!(bytes.len(), 40);
        assert_eq!(&bytes[0..12], &[3, 0, 0, 0, 40, 0, 0, 0, 0, 1, 0, 0]);
        assert_eq!(&bytes[16..32], &[0xab; 16]);
        assert_eq!(&bytes[32..36], &[1, 0, 0, 0]);
        assert_eq!(encode_reply(Status::Denied, &[]), [3, 0, 0, 0, 0, 0, 0, 0]);
    }

    #[test]
    fn malformed_streams_are_refused_whole() {
        let good = ShareCommand::Export { resource_id: 1 }.encode(0);
        // A length that is not a multiple of 8, too short, or past the stream.
        for len in [0u32, 8, 17, 32, 1 << 31] {
            let mut bad = good.clone();
            bad[4..8].copy_from_slice(&len.to_le_bytes());
            assert!(decode_stream(&bad).is_err(), "len {len}");
        }
        // A body longer than its op's.
        let mut long = good.clone();
        long[4..8].copy_from_slice(&32u32.to_le_bytes());
        long.extend_from_slice(&[0; 8]);
        assert!(decode_stream(&long).is_err());
        // Unknown op.
        let mut unknown = good.clone();
        unknown[0] = 99;
        assert_eq!(decode_stream(&unknown), Err(DecodeError::UnknownType(99)));
        // Too many handles, too many commands.
        let mut wait = ShareCommand::WaitFences { handles: vec![] }.encode(0);
        wait[16..20].copy_from_slice(&(MAX_WAIT_HANDLES + 1).to_le_bytes());
        assert!(decode_stream(&wait).is_err());
        let many: Vec<u8> = (0..=MAX_COMMANDS).flat_map(|_| good.clone()).collect();
        assert!(decode_stream(&many).is_err());
        assert_eq!(decode_stream(&[]), Ok(vec![]));
    }

    #[test]
    fn reserved_fields_and_misaligned_reply_offsets_refuse_the_stream() {
        let export = ShareCommand::Export { resource_id: 1 }.encode(8);
        assert!(decode_stream(&export).is_ok());
        // The header's reserved word, and the body's pad.
        for at in [12, 20] {
            let mut bad = export.clone();
            bad[at] = 1;
            assert_eq!(decode_stream(&bad), Err(DecodeError::Reserved { at }));
        }
        // Behind a good command, positions are the stream's.
        let mut two = ShareCommand::ReadEvents { max: 1 }.encode(NO_REPLY);
        two.extend_from_slice(&export);
        two[24 + 20] = 1;
        assert_eq!(decode_stream(&two), Err(DecodeError::Reserved { at: 44 }));
        // Import flags other than DYNAMIC, and its pad.
        let import = ShareCommand::Import {
            uuid: [1; 16],
            dynamic: true,
        }
        .encode(0);
        for (at, byte) in [(32, 3u8), (36, 1)] {
            let mut bad = import.clone();
            bad[at] = byte;
            assert!(decode_stream(&bad).is_err(), "byte {at}");
        }
        // WAIT_FENCES's pad.
        let mut wait = ShareCommand::WaitFences { handles: vec![5] }.encode(0);
        wait[20] = 1;
        assert_eq!(decode_stream(&wait), Err(DecodeError::Reserved { at: 20 }));
        // Reply offsets are 4-byte aligned (NO_REPLY aside).
        for offset in [1u32, 2, 6, 0xffff_fffe] {
            let bad = ShareCommand::Export { resource_id: 1 }.encode(offset);
            assert_eq!(decode_stream(&bad), Err(DecodeError::Misaligned { offset }));
        }
    }

    #[test]
    fn reply_slots_are_found_in_streams_that_do_not_decode() {
        let mut stream = ShareCommand::Export { resource_id: 1 }.encode(16);
        stream.extend(ShareCommand::Pin { resource_id: 1 }.encode(NO_REPLY));
        stream.extend(ShareCommand::ReadEvents { max: 2 }.encode(64));
        // An unknown op with a sane length: the walk goes on past it.
        let mut unknown = ShareCommand::Unpin { resource_id: 1 }.encode(40);
        unknown[0] = 99;
        stream.extend(unknown);
        // A length that is not a multiple of 8: the walk stops after this one.
        let mut bad = ShareCommand::Unpin { resource_id: 1 }.encode(80);
        bad[4] = 23;
        stream.extend(bad);
        stream.extend(ShareCommand::Unpin { resource_id: 1 }.encode(96));
        assert!(decode_stream(&stream).is_err());
        assert_eq!(reply_slots(&stream), vec![16, 64, 40, 80]);
        assert_eq!(reply_slots(&[]), Vec::<u32>::new());
        assert_eq!(reply_slots(&stream[..10]), Vec::<u32>::new());
        let many: Vec<u8> = (0..MAX_COMMANDS as u32 + 5)
            .flat_map(|i| ShareCommand::Pin { resource_id: 1 }.encode(8 * i))
            .collect();
        assert_eq!(reply_slots(&many).len(), MAX_COMMANDS);
    }

    #[test]
    fn the_largest_reply_of_each_command() {
        let len = |c: ShareCommand| c.max_reply_len();
        assert_eq!(len(ShareCommand::Pin { resource_id: 1 }), 8);
        assert_eq!(len(ShareCommand::Export { resource_id: 1 }), 24);
        assert_eq!(len(ShareCommand::ExportFence { ctx_id: 0, ring: 0 }), 16);
        assert_eq!(len(ShareCommand::ReadEvents { max: 2 }), 16 + 48);
        assert_eq!(
            len(ShareCommand::ReadEvents { max: u32::MAX }),
            16 + MAX_EVENTS as usize * ShareEvent::SIZE
        );
    }

    #[test]
    fn replies_and_events_decode() {
        let reply = encode_reply(Status::Ok, &[1, 2, 3]);
        assert_eq!(decode_reply(&reply), Ok((0, &[1u8, 2, 3][..])));
        assert!(decode_reply(&reply[..9]).is_err());
        let ev = ShareEvent {
            kind: event::MOVED,
            resource_id: 5,
            subject: [9; 16],
        };
        let mut bytes = Vec::new();
        ev.encode(&mut bytes);
        assert_eq!(bytes.len(), ShareEvent::SIZE);
        assert_eq!(ShareEvent::decode(&mut Reader::new(&bytes)), Ok(ev));
    }
}
