//! The display socket a frontend like QEMU's vhost-user-gpu-pci hands over: display info and EDID
//! come from it, scanouts, pixels and the cursor go to it.

use std::io;

use vgpud_protocol::{Command, DisplayOne, Rect, MAX_SCANOUTS};
use vhost::vhost_user::gpu_message::{
    VhostUserGpuCursorPos, VhostUserGpuCursorUpdate, VhostUserGpuEdidRequest, VhostUserGpuScanout,
    VhostUserGpuUpdate,
};
use vhost::vhost_user::message::VhostUserU64;
use vhost::vhost_user::GpuBackend;

use super::backend::VmBackend;
use crate::device::{band_bytes, bands, DisplayCmd};
use crate::output::VncOutput;
use crate::sync::lock;

/// vhost-user-gpu protocol feature bit: the frontend answers GET_EDID.
const GPU_PROTOCOL_F_EDID: u64 = 1 << 0;

/// Largest pixel payload of one UPDATE message: a flush of a larger area is sent in bands of whole
/// rows, each read just before it is sent, so no flush holds more than this in memory.
pub const UPDATE_BAND_BYTES: usize = 4 << 20;

/// The frontend's display socket. Every request on it is bounded (`PeerWatch`).
#[derive(Clone)]
pub struct DisplayLink {
    gpu: GpuBackend,
    ready: bool,
    edid: bool,
}

impl DisplayLink {
    pub fn new(gpu: GpuBackend) -> Self {
        DisplayLink {
            gpu,
            ready: false,
            edid: false,
        }
    }
}

/// Negotiates the display protocol; returns whether the display answers GET_EDID.
fn handshake(gpu: &GpuBackend) -> io::Result<bool> {
    let offered = gpu.get_protocol_features()?.value;
    let wanted = offered & GPU_PROTOCOL_F_EDID;
    gpu.set_protocol_features(&VhostUserU64::new(wanted))?;
    Ok(wanted != 0)
}

fn display_modes(gpu: &GpuBackend) -> io::Result<Vec<DisplayOne>> {
    let info = gpu.get_display_info()?;
    Ok(info
        .pmodes
        .iter()
        .take(MAX_SCANOUTS)
        .map(|m| DisplayOne {
            rect: Rect {
                x: m.r.x,
                y: m.r.y,
                width: m.r.width,
                height: m.r.height,
            },
            enabled: m.enabled != 0,
            flags: m.flags,
        })
        .collect())
}

fn edid(gpu: &GpuBackend, scanout: u32) -> io::Result<Option<Vec<u8>>> {
    let resp = gpu.get_edid(&VhostUserGpuEdidRequest {
        scanout_id: scanout,
    })?;
    let len = (resp.size as usize).min(resp.edid.len());
    Ok(resp
        .edid
        .get(..len)
        .filter(|e| !e.is_empty())
        .map(<[u8]>::to_vec))
}

/// One display message, ready to send: pixels already read.
enum Message<'a> {
    Cmd(&'a DisplayCmd),
    Update(VhostUserGpuUpdate, &'a [u8]),
}

fn send(gpu: &GpuBackend, msg: &Message) -> io::Result<()> {
    let cmd = match *msg {
        Message::Update(ref update, pixels) => return gpu.update_scanout(update, pixels),
        Message::Cmd(cmd) => cmd,
    };
    match cmd {
        DisplayCmd::Scanout {
            scanout,
            width,
            height,
        } => gpu.set_scanout(&VhostUserGpuScanout {
            scanout_id: *scanout,
            width: *width,
            height: *height,
        }),
        // Updates are sent as Message::Update, a band at a time.
        DisplayCmd::Update { .. } => Ok(()),
        DisplayCmd::CursorUpdate {
            scanout,
            x,
            y,
            hot_x,
            hot_y,
            image,
        } => gpu.cursor_update(
            &VhostUserGpuCursorUpdate {
                pos: VhostUserGpuCursorPos {
                    scanout_id: *scanout,
                    x: *x,
                    y: *y,
                },
                hot_x: *hot_x,
                hot_y: *hot_y,
            },
            &image.0,
        ),
        DisplayCmd::CursorMove { scanout, x, y } => gpu.cursor_pos(&VhostUserGpuCursorPos {
            scanout_id: *scanout,
            x: *x,
            y: *y,
        }),
        DisplayCmd::CursorHide { scanout } => gpu.cursor_pos_hide(&VhostUserGpuCursorPos {
            scanout_id: *scanout,
            x: 0,
            y: 0,
        }),
    }
}

impl VmBackend {
    /// The display link, after its handshake. The link is cloned out of its lock so no lock is
    /// held while the frontend answers.
    fn display_link(&self) -> Option<DisplayLink> {
        let link = lock(&self.display).clone()?;
        if link.ready {
            return Some(link);
        }
        let gpu = &link.gpu;
        match self
            .peer
            .call("display handshake", gpu.clone(), || handshake(gpu))
        {
            Ok(edid) => {
                let link = DisplayLink {
                    ready: true,
                    edid,
                    ..link
                };
                *lock(&self.display) = Some(link.clone());
                self.device().attach_display();
                Some(link)
            }
            Err(e) => {
                self.display_failed(&e);
                None
            }
        }
    }

    /// A display that stopped answering is a stalled VMM: the VM is disconnected. Any other
    /// failure leaves the VM running headless.
    fn display_failed(&self, e: &io::Error) {
        *lock(&self.display) = None;
        if self.peer.is_stalled() {
            self.disconnect(e);
        } else {
            self.log.warn(format_args!(
                "display socket failed, continuing headless: {e}"
            ));
        }
    }

    /// Before the device answers `cmd`, brings the display layout and EDIDs up to date from the
    /// frontend's display, which may have been resized since.
    pub(super) fn refresh_display(&self, cmd: &Command) {
        let fresh = match cmd {
            Command::GetDisplayInfo => true,
            Command::GetEdid { .. } => false,
            _ => return,
        };
        let Some(link) = self.display_link() else {
            return;
        };
        let gpu = &link.gpu;
        let result = self
            .peer
            .call("GET_DISPLAY_INFO", gpu.clone(), || display_modes(gpu))
            .and_then(|modes| {
                let changed = self.device().set_display_modes(&modes);
                // GET_DISPLAY_INFO itself carries the news; anything else needs the config event.
                if changed && !fresh {
                    self.raise_display_event();
                }
                match cmd {
                    Command::GetEdid { scanout } if link.edid => {
                        let scanout = *scanout;
                        let edid = self
                            .peer
                            .call("GET_EDID", gpu.clone(), || edid(gpu, scanout))?;
                        if let Some(edid) = edid {
                            self.device().set_edid(scanout, edid);
                        }
                        Ok(())
                    }
                    _ => Ok(()),
                }
            });
        if let Err(e) = result {
            self.display_failed(&e);
        }
    }

    /// Hands display commands to the frontend's display and to vgpud's own output, whichever
    /// the VM has. An update's pixels are read once, a band at a time, for both.
    pub(super) fn show(&self, cmds: &[DisplayCmd]) {
        if cmds.is_empty() {
            return;
        }
        let mut link = self.display_link();
        let output = self.output.as_ref();
        if link.is_none() && output.is_none() {
            return;
        }
        for cmd in cmds {
            if let DisplayCmd::Update { .. } = cmd {
                let output = output.filter(|o| o.watched());
                let mut pixels = lock(&self.pixels);
                let sent = self.send_update(link.as_ref(), output, cmd, &mut pixels);
                // Only a band is kept between flushes (a single row may be larger).
                if pixels.capacity() > UPDATE_BAND_BYTES {
                    *pixels = Vec::new();
                }
                if let Err(e) = sent {
                    self.display_failed(&e);
                    link = None;
                }
                continue;
            }
            if let Some(out) = output {
                out.apply(cmd);
            }
            if let Some(l) = &link {
                if let Err(e) = self.send(l, Message::Cmd(cmd)) {
                    self.display_failed(&e);
                    link = None;
                }
            }
        }
    }

    /// The output asked for the whole picture (a viewer came after pixels were left out).
    pub(super) fn refresh_output(&self) {
        let Some(out) = &self.output else {
            return;
        };
        let cmds = self.device().picture();
        for cmd in &cmds {
            match cmd {
                DisplayCmd::Update { .. } => {
                    // Rare (a viewer came): a buffer of its own, not the flushes' one.
                    let _ = self.send_update(None, Some(out), cmd, &mut Vec::new());
                }
                _ => out.apply(cmd),
            }
        }
        out.refreshed();
    }

    /// Sends an update in bands, reading each band's pixels into `pixels` just before it goes.
    fn send_update(
        &self,
        link: Option<&DisplayLink>,
        output: Option<&VncOutput>,
        update: &DisplayCmd,
        pixels: &mut Vec<u8>,
    ) -> io::Result<()> {
        let DisplayCmd::Update {
            scanout,
            rect,
            resource_id,
            area,
        } = *update
        else {
            return Ok(());
        };
        if link.is_none() && output.is_none() {
            return Ok(());
        }
        for (top, band) in bands(area, UPDATE_BAND_BYTES) {
            let len = usize::try_from(band_bytes(band)).unwrap_or(usize::MAX);
            if pixels
                .try_reserve_exact(len.saturating_sub(pixels.len()))
                .is_err()
            {
                self.log.warn(format_args!(
                    "flush of resource {resource_id}: no memory for {len} bytes of pixels"
                ));
                return Ok(());
            }
            pixels.resize(len, 0);
            let got = self.device().update_pixels_into(update, band, pixels);
            if let Err(failure) = got {
                self.log
                    .warn(format_args!("flush of resource {resource_id}: {failure}"));
                return Ok(());
            }
            let at = Rect {
                x: rect.x,
                y: rect.y + top,
                width: band.width,
                height: band.height,
            };
            if let Some(out) = output {
                out.update(scanout, at, pixels);
            }
            if let Some(link) = link {
                let update = VhostUserGpuUpdate {
                    scanout_id: scanout,
                    x: at.x,
                    y: at.y,
                    width: at.width,
                    height: at.height,
                };
                self.send(link, Message::Update(update, pixels))?;
            }
        }
        Ok(())
    }

    fn send(&self, link: &DisplayLink, msg: Message) -> io::Result<()> {
        let gpu = &link.gpu;
        self.peer
            .call("display update", gpu.clone(), || send(gpu, &msg))
    }
}
