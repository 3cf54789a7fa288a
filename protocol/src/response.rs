//! Responses the device writes back for each request.

#[cfg(test)]
mod tests;

use crate::command::Rect;
use crate::consts::{resp, EDID_BLOB_SIZE, FLAG_FENCE, FLAG_INFO_RING_IDX, MAX_SCANOUTS};
use crate::header::{CtrlHeader, HEADER_SIZE};
use crate::wire::{DecodeError, Reader, Writer};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorCode {
    Unspec,
    OutOfMemory,
    InvalidScanoutId,
    InvalidResourceId,
    InvalidContextId,
    InvalidParameter,
}

impl ErrorCode {
    /// Every error code, in the order of their wire codes.
    pub const ALL: [ErrorCode; 6] = [
        ErrorCode::Unspec,
        ErrorCode::OutOfMemory,
        ErrorCode::InvalidScanoutId,
        ErrorCode::InvalidResourceId,
        ErrorCode::InvalidContextId,
        ErrorCode::InvalidParameter,
    ];

    /// Its place in `ALL`.
    pub fn index(self) -> usize {
        (self.code() - resp::ERR_UNSPEC) as usize
    }

    /// Its name for metrics and logs.
    pub fn name(self) -> &'static str {
        match self {
            ErrorCode::Unspec => "unspec",
            ErrorCode::OutOfMemory => "out_of_memory",
            ErrorCode::InvalidScanoutId => "invalid_scanout_id",
            ErrorCode::InvalidResourceId => "invalid_resource_id",
            ErrorCode::InvalidContextId => "invalid_context_id",
            ErrorCode::InvalidParameter => "invalid_parameter",
        }
    }

    pub fn code(self) -> u32 {
        match self {
            ErrorCode::Unspec => resp::ERR_UNSPEC,
            ErrorCode::OutOfMemory => resp::ERR_OUT_OF_MEMORY,
            ErrorCode::InvalidScanoutId => resp::ERR_INVALID_SCANOUT_ID,
            ErrorCode::InvalidResourceId => resp::ERR_INVALID_RESOURCE_ID,
            ErrorCode::InvalidContextId => resp::ERR_INVALID_CONTEXT_ID,
            ErrorCode::InvalidParameter => resp::ERR_INVALID_PARAMETER,
        }
    }

    pub fn from_code(code: u32) -> Option<ErrorCode> {
        let e = match code {
            resp::ERR_UNSPEC => ErrorCode::Unspec,
            resp::ERR_OUT_OF_MEMORY => ErrorCode::OutOfMemory,
            resp::ERR_INVALID_SCANOUT_ID => ErrorCode::InvalidScanoutId,
            resp::ERR_INVALID_RESOURCE_ID => ErrorCode::InvalidResourceId,
            resp::ERR_INVALID_CONTEXT_ID => ErrorCode::InvalidContextId,
            resp::ERR_INVALID_PARAMETER => ErrorCode::InvalidParameter,
            _ => return None,
        };
        Some(e)
    }
}

/// One scanout in OK_DISPLAY_INFO (24 bytes on the wire).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DisplayOne {
    pub rect: Rect,
    pub enabled: bool,
    pub flags: u32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Response {
    OkNodata,
    /// Always MAX_SCANOUTS entries on the wire: missing ones are zero, extra ones dropped.
    OkDisplayInfo(Vec<DisplayOne>),
    OkCapsetInfo {
        capset_id: u32,
        capset_max_version: u32,
        capset_max_size: u32,
    },
    OkCapset(Vec<u8>),
    /// Sent as a fixed EDID_BLOB_SIZE field: longer data is cut, shorter zero-padded.
    OkEdid(Vec<u8>),
    OkResourceUuid([u8; 16]),
    OkMapInfo {
        map_info: u32,
    },
    Err(ErrorCode),
}

impl Response {
    pub fn type_code(&self) -> u32 {
        match self {
            Response::OkNodata => resp::OK_NODATA,
            Response::OkDisplayInfo(_) => resp::OK_DISPLAY_INFO,
            Response::OkCapsetInfo { .. } => resp::OK_CAPSET_INFO,
            Response::OkCapset(_) => resp::OK_CAPSET,
            Response::OkEdid(_) => resp::OK_EDID,
            Response::OkResourceUuid(_) => resp::OK_RESOURCE_UUID,
            Response::OkMapInfo { .. } => resp::OK_MAP_INFO,
            Response::Err(e) => e.code(),
        }
    }

    /// Encodes the response to `req`, carrying over its fence information.
    pub fn encode(&self, req: &CtrlHeader) -> Vec<u8> {
        let hdr = CtrlHeader {
            type_: self.type_code(),
            flags: req.flags & (FLAG_FENCE | FLAG_INFO_RING_IDX),
            fence_id: req.fence_id,
            ctx_id: req.ctx_id,
            ring_idx: req.ring_idx,
        };
        let mut out = Vec::with_capacity(HEADER_SIZE);
        hdr.encode(&mut out);
        self.encode_body(&mut out);
        out
    }

    fn encode_body(&self, out: &mut Vec<u8>) {
        match self {
            Response::OkNodata | Response::Err(_) => {}
            Response::OkDisplayInfo(displays) => {
                let blank = DisplayOne::default();
                let padded = displays.iter().chain(std::iter::repeat(&blank));
                for d in padded.take(MAX_SCANOUTS) {
                    for v in [d.rect.x, d.rect.y, d.rect.width, d.rect.height] {
                        out.put_u32(v);
                    }
                    out.put_u32(u32::from(d.enabled));
                    out.put_u32(d.flags);
                }
            }
            Response::OkCapsetInfo {
                capset_id,
                capset_max_version,
                capset_max_size,
            } => {
                for v in [*capset_id, *capset_max_version, *capset_max_size, 0] {
                    out.put_u32(v);
                }
            }
            Response::OkCapset(data) => out.extend_from_slice(data),
            Response::OkEdid(edid) => {
                let edid = edid.get(..EDID_BLOB_SIZE).unwrap_or(edid);
                out.put_u32(u32::try_from(edid.len()).unwrap_or(u32::MAX));
                out.put_zeros(4);
                out.extend_from_slice(edid);
                out.put_zeros(EDID_BLOB_SIZE.saturating_sub(edid.len()));
            }
            Response::OkResourceUuid(uuid) => out.extend_from_slice(uuid),
            Response::OkMapInfo { map_info } => {
                out.put_u32(*map_info);
                out.put_zeros(4);
            }
        }
    }

    /// Decodes a response; the header's type selects the variant.
    pub fn decode(buf: &[u8]) -> Result<(CtrlHeader, Response), DecodeError> {
        let hdr = CtrlHeader::decode(buf)?;
        let mut r = Reader::at(buf, HEADER_SIZE);
        let resp = match hdr.type_ {
            resp::OK_NODATA => Response::OkNodata,
            resp::OK_DISPLAY_INFO => Response::OkDisplayInfo(read_displays(&mut r)?),
            resp::OK_CAPSET_INFO => {
                let info = Response::OkCapsetInfo {
                    capset_id: r.u32()?,
                    capset_max_version: r.u32()?,
                    capset_max_size: r.u32()?,
                };
                r.skip(4)?;
                info
            }
            resp::OK_CAPSET => Response::OkCapset(r.remaining().to_vec()),
            resp::OK_EDID => {
                let size = r.u32()?;
                r.skip(4)?;
                let blob = r.bytes(EDID_BLOB_SIZE)?;
                let keep = usize::try_from(size).map_or(EDID_BLOB_SIZE, |s| s.min(EDID_BLOB_SIZE));
                Response::OkEdid(blob.get(..keep).unwrap_or(blob).to_vec())
            }
            resp::OK_RESOURCE_UUID => Response::OkResourceUuid(r.array()?),
            resp::OK_MAP_INFO => {
                let map_info = r.u32()?;
                r.skip(4)?;
                Response::OkMapInfo { map_info }
            }
            other => {
                Response::Err(ErrorCode::from_code(other).ok_or(DecodeError::UnknownType(other))?)
            }
        };
        Ok((hdr, resp))
    }
}

fn read_displays(r: &mut Reader) -> Result<Vec<DisplayOne>, DecodeError> {
    const DISPLAY_ONE_SIZE: usize = 24;
    r.ensure(MAX_SCANOUTS * DISPLAY_ONE_SIZE)?;
    let mut displays = Vec::with_capacity(MAX_SCANOUTS);
    for _ in 0..MAX_SCANOUTS {
        let rect = Rect {
            x: r.u32()?,
            y: r.u32()?,
            width: r.u32()?,
            height: r.u32()?,
        };
        displays.push(DisplayOne {
            rect,
            enabled: r.u32()? != 0,
            flags: r.u32()?,
        });
    }
    Ok(displays)
}
