//! The display socket a frontend like QEMU's vhost-user-gpu-pci hands over: display info and EDID
//! come from it, scanouts, pixels and the cursor go to it.

use std::io;

use log::warn;
use vgpud_protocol::{Command, DisplayOne, Rect, MAX_SCANOUTS};
use vhost::vhost_user::gpu_message::{
    VhostUserGpuCursorPos, VhostUserGpuCursorUpdate, VhostUserGpuEdidRequest, VhostUserGpuScanout,
    VhostUserGpuUpdate,
};
use vhost::vhost_user::message::VhostUserU64;
use vhost::vhost_user::GpuBackend;

use super::backend::{lock, VmBackend};
use crate::device::DisplayCmd;

/// vhost-user-gpu protocol feature bit: the frontend answers GET_EDID.
const GPU_PROTOCOL_F_EDID: u64 = 1 << 0;

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

    fn handshake(&mut self) -> io::Result<()> {
        let offered = self.gpu.get_protocol_features()?.value;
        let wanted = offered & GPU_PROTOCOL_F_EDID;
        self.gpu.set_protocol_features(&VhostUserU64::new(wanted))?;
        self.edid = wanted != 0;
        self.ready = true;
        Ok(())
    }

    fn display_modes(&self) -> io::Result<Vec<DisplayOne>> {
        let info = self.gpu.get_display_info()?;
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

    fn edid(&self, scanout: u32) -> io::Result<Option<Vec<u8>>> {
        if !self.edid {
            return Ok(None);
        }
        let resp = self.gpu.get_edid(&VhostUserGpuEdidRequest {
            scanout_id: scanout,
        })?;
        let len = (resp.size as usize).min(resp.edid.len());
        Ok(resp
            .edid
            .get(..len)
            .filter(|e| !e.is_empty())
            .map(<[u8]>::to_vec))
    }

    fn send(&self, cmd: &DisplayCmd) -> io::Result<()> {
        match cmd {
            DisplayCmd::Scanout {
                scanout,
                width,
                height,
            } => self.gpu.set_scanout(&VhostUserGpuScanout {
                scanout_id: *scanout,
                width: *width,
                height: *height,
            }),
            DisplayCmd::Update {
                scanout,
                rect,
                pixels,
            } => self.gpu.update_scanout(
                &VhostUserGpuUpdate {
                    scanout_id: *scanout,
                    x: rect.x,
                    y: rect.y,
                    width: rect.width,
                    height: rect.height,
                },
                pixels,
            ),
            DisplayCmd::CursorUpdate {
                scanout,
                x,
                y,
                hot_x,
                hot_y,
                image,
            } => self.gpu.cursor_update(
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
            DisplayCmd::CursorMove { scanout, x, y } => {
                self.gpu.cursor_pos(&VhostUserGpuCursorPos {
                    scanout_id: *scanout,
                    x: *x,
                    y: *y,
                })
            }
            DisplayCmd::CursorHide { scanout } => {
                self.gpu.cursor_pos_hide(&VhostUserGpuCursorPos {
                    scanout_id: *scanout,
                    x: 0,
                    y: 0,
                })
            }
        }
    }
}

impl VmBackend {
    /// The display link, after its handshake. The link is cloned out of its lock so no lock is
    /// held while the frontend answers.
    fn display_link(&self) -> Option<DisplayLink> {
        let mut link = lock(&self.display).clone()?;
        if link.ready {
            return Some(link);
        }
        match link.handshake() {
            Ok(()) => {
                *lock(&self.display) = Some(link.clone());
                self.device().attach_display();
                Some(link)
            }
            Err(e) => {
                self.drop_display(&e);
                None
            }
        }
    }

    fn drop_display(&self, e: &io::Error) {
        warn!(
            "{}: display socket failed, continuing headless: {e}",
            self.name
        );
        *lock(&self.display) = None;
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
        let result = link.display_modes().and_then(|modes| {
            let changed = self.device().set_display_modes(&modes);
            // GET_DISPLAY_INFO itself carries the news; anything else needs the config event.
            if changed && !fresh {
                self.raise_display_event();
            }
            if let Command::GetEdid { scanout } = cmd {
                if let Some(edid) = link.edid(*scanout)? {
                    self.device().set_edid(*scanout, edid);
                }
            }
            Ok(())
        });
        if let Err(e) = result {
            self.drop_display(&e);
        }
    }

    /// Hands display commands to the frontend's display, if there is one.
    pub(super) fn show(&self, cmds: &[DisplayCmd]) {
        if cmds.is_empty() {
            return;
        }
        let Some(link) = self.display_link() else {
            return;
        };
        for cmd in cmds {
            if let Err(e) = link.send(cmd) {
                self.drop_display(&e);
                return;
            }
        }
    }
}
