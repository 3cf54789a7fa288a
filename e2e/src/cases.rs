//! The cases, each a value: its vgpud (renderer, arguments, per-socket settings), its guests
//! (device, properties, memory, the code each runs), the host's steps while they run (lines
//! waited for, screendumps, VNC pictures, markers that let a guest go on) and the checks at the
//! end (lines in the guests' output and vgpud's log). Every case also ends with vgpud still
//! serving and unpanicked, and QEMU's logs free of vhost errors (runner.rs).

use std::path::{Path, PathBuf};

use crate::guest_code;
use crate::picture::Size;

/// The marker a guest's kms-pattern (or kmscube, share-buffer) waits for before it lets go of
/// its picture: /results/<DONE_NAME> in the guest, <case>/vm<N>/<DONE_NAME> on the host.
pub const DONE_NAME: &str = "screendump-taken";
const DONE_FILE: &str = "/results/screendump-taken";
/// Features vgpud's 2D renderer offers, as virtio-gpu-features reports them.
const FEATURES_2D: [&str; 6] = [
    "virgl=no",
    "edid=yes",
    "indirect=yes",
    "resource_uuid=yes",
    "blob_resources=no",
    "context_init=no",
];
/// Features vgpud's Venus renderer offers (it has virgl as well, for 2D).
const FEATURES_VENUS: [&str; 3] = ["virgl=yes", "blob_resources=yes", "context_init=yes"];
pub const KMSCUBE_FRAMES: u32 = 60;
/// vgpud's host-visible window (--hostmem) for Venus cases and the generic device.
pub const VENUS_HOSTMEM: &str = "256M";
const VENUS_HOSTMEM_HEX: &str = "0x10000000";
pub const GPU_DEVICE: &str = "vhost-user-gpu-pci";
/// QEMU's generic vhost-user device as a GPU (virtio-id 16; config_size 24 is
/// virtio_gpu_config): it carries the host-visible window and has no display.
pub const GENERIC_DEVICE: &str = "vhost-user-test-device-pci,virtio-id=16,num_vqs=2,config_size=24";
/// vk-churn: cycles in all, before the first checkpoint, phases after it; from checkpoint 0 to
/// any later one vgpud's VmRSS may grow by CHURN_RSS_SLACK_KB and its fds by CHURN_FD_SLACK.
pub const CHURN_CYCLES: u32 = 2000;
pub const CHURN_WARMUP: u32 = 200;
pub const CHURN_PHASES: u32 = 4;
pub const CHURN_RSS_SLACK_KB: u64 = 8192;
pub const CHURN_FD_SLACK: usize = 2;
/// share-buffer: pages shared, and the pattern's seed.
const SHARE_PAGES: u32 = 256;
const SHARE_SEED: u32 = 4242;

/// In guest code, daemon arguments and socket settings, these stand for what a run fills in:
/// the captures of lines waited for, the run's socket dir (in the root), and the address of the
/// case's VNC output.
pub const UUID: &str = "@uuid@";
pub const FENCE: &str = "@fence@";
pub const UUIDS: &str = "@uuids@";
pub const SOCK_DIR: &str = "@sock_dir@";
pub const VNC: &str = "@vnc@";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Renderer {
    TwoD,
    Virgl,
    Venus,
}

impl Renderer {
    pub fn name(self) -> &'static str {
        match self {
            Renderer::TwoD => "2d",
            Renderer::Virgl => "virgl",
            Renderer::Venus => "venus",
        }
    }
}

/// The QEMU device a guest gets on its vgpud socket.
#[derive(Clone, Copy, Debug)]
pub enum Device {
    /// vhost-user-gpu-pci, or the generic device when vgpud's renderer is venus.
    ForRenderer,
    Gpu,
    Generic,
}

#[derive(Debug)]
pub struct GuestSpec {
    pub device: Device,
    /// More device properties ("xres=1024,yres=768").
    pub props: Option<&'static str>,
    /// Guest RAM, or boot.sh's default (2G).
    pub memory: Option<&'static str>,
    /// This guest's own vgpud settings (--socket-path PATH,SETTINGS).
    pub settings: String,
    /// bash code run in the guest.
    pub code: String,
}

impl GuestSpec {
    fn new(code: String) -> GuestSpec {
        GuestSpec {
            device: Device::ForRenderer,
            props: None,
            memory: None,
            settings: String::new(),
            code,
        }
    }

    fn device(mut self, device: Device) -> GuestSpec {
        self.device = device;
        self
    }

    fn settings(mut self, settings: impl Into<String>) -> GuestSpec {
        self.settings = settings.into();
        self
    }
}

#[derive(Debug, Default)]
pub struct DaemonSpec {
    /// Arguments after --renderer (--hostmem is added for venus).
    pub args: Vec<String>,
    /// Write the share policy "a's buffers may be imported by b" to
    /// SOCK_DIR/share-policy.json first.
    pub share_policy: bool,
}

/// A line a guest prints that the host waits for.
#[derive(Clone, Copy, Debug)]
pub enum Line {
    /// kms-pattern's "READY WxH": captures the size.
    Ready,
    /// This line exactly.
    Exact(&'static str),
    /// share-buffer show's "SHOWN WxH" for this size.
    Shown(Size),
    /// share-buffer export's "SHARE-UUID <32 hex> FENCE <n>": captures UUID and FENCE.
    ShareUuidFence,
    /// This many of share-buffer offer's "SHARE-UUID <32 hex>": captures UUIDS.
    ShareUuids(usize),
}

/// What a VNC viewer's picture must be.
#[derive(Clone, Copy, Debug)]
pub enum VncWant {
    /// kms-pattern's pattern for the seed, at the size its READY line said.
    Pattern {
        seed: u32,
    },
    /// share-buffer's frame.
    ShareFrame {
        seed: u32,
        size: Size,
    },
    /// A rendered picture.
    Picture,
    Black,
}

/// What the host does while the guests run, in order. A step that fails records the reason
/// and the case goes on to its next step (so every guest is let go of and waited for), except
/// where it says it ends the case.
#[derive(Debug)]
pub enum Step {
    /// Boots guest N.
    Boot(usize),
    /// Waits for a line from guest N; without it, the case ends with `fail`.
    Await {
        vm: usize,
        line: Line,
        fail: &'static str,
    },
    /// Once kms-pattern in guest N is READY, a screendump must be its pattern for `seed`
    /// exactly; then the guest is let go (DONE_NAME). screen.txt has the verdict, screen.ppm
    /// is kept on a mismatch.
    Screendump { vm: usize, seed: u32 },
    /// Once kmscube in guest N holds a frame (KMSCUBE-HOLD), screendumps until one shows a
    /// picture (kept as screen.png); then the guest is let go.
    Picture { vm: usize },
    /// Both viewers' pictures of the case's VNC output (guest N's dir, files NAME-*.png).
    Vnc {
        vm: usize,
        name: &'static str,
        want: VncWant,
    },
    /// Creates the marker `file` in guest N's dir.
    Release { vm: usize, file: &'static str },
    /// Waits for guest N; it must exit 0 and print "PASS: P" for each program P. With
    /// `first`, its failure is the case's reason even after an earlier step failed.
    Finish {
        vm: usize,
        programs: Vec<&'static str>,
        first: bool,
    },
    /// Once guest N's first vk-compute passed, kills its render worker; vgpud must log the
    /// worker's end; guest N's QEMU is then stopped (its vhost errors are expected).
    KillRenderWorker { vm: usize },
    /// vk-churn's checkpoints in guest N: vgpud measured at each (churn.txt), flat after the
    /// warm-up.
    Churn { vm: usize },
}

/// Which line of some text.
#[derive(Clone, Copy, Debug)]
pub enum Find {
    Prefix(&'static str),
    Contains(&'static str),
}

impl Find {
    pub fn matches(self, line: &str) -> bool {
        match self {
            Find::Prefix(p) => line.starts_with(p),
            Find::Contains(c) => line.contains(c),
        }
    }
}

/// Checks once every step passed.
#[derive(Debug)]
pub enum Check {
    /// Shows the first (or last) such line of guest N's output.
    Show { vm: usize, find: Find, last: bool },
    /// Guest N's output must have a line containing `text`.
    OutputHas {
        vm: usize,
        text: &'static str,
        reason: &'static str,
    },
    /// vgpud's log must have a line containing `text`.
    VgpudLogHas { text: String, reason: String },
    /// vgpud must have started a render worker per guest.
    WorkerPerGuest,
    /// vgpud logged the end of the worker KillRenderWorker killed.
    KilledWorkerEnded,
}

#[derive(Debug)]
pub struct Case {
    pub name: &'static str,
    /// vgpud's --renderer; virgl cases run only with VGPUD_E2E_VIRGL=1, venus ones only with
    /// VGPUD_E2E_VENUS=1.
    pub renderer: Renderer,
    pub description: String,
    pub daemon: DaemonSpec,
    pub guests: Vec<GuestSpec>,
    pub steps: Vec<Step>,
    pub checks: Vec<Check>,
}

/// Quotes a word for bash, as printf %q would need it (plain when it is safe as it is).
pub fn shell_word(word: &str) -> String {
    let safe = |c: char| c.is_ascii_alphanumeric() || "_./=:,+-@%".contains(c);
    if !word.is_empty() && word.chars().all(safe) {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', "'\\''"))
    }
}

/// Builds the case table; guest programs are in `guest_tests` (a path the guest sees as it is).
pub struct Table {
    guest_tests: PathBuf,
    guest_timeout: u64,
}

fn s(v: impl ToString) -> String {
    v.to_string()
}

impl Table {
    pub fn new(guest_tests: &Path, guest_timeout: u64) -> Table {
        Table {
            guest_tests: guest_tests.to_path_buf(),
            guest_timeout,
        }
    }

    /// A guest test's command line.
    fn program(&self, name: &str, args: &[&str]) -> String {
        let mut line = shell_word(&self.guest_tests.join(name).to_string_lossy());
        for a in args {
            line.push(' ');
            line.push_str(&shell_word(a));
        }
        line
    }

    fn kms_pattern(&self, seed: u32) -> String {
        self.program(
            "kms-pattern",
            &[
                "--seed",
                &seed.to_string(),
                "--hold",
                &self.guest_timeout.to_string(),
                "--wait-for",
                DONE_FILE,
            ],
        )
    }

    fn kmscube(&self) -> String {
        format!(
            "want={KMSCUBE_FRAMES} done_file={DONE_FILE}\n{}",
            guest_code::KMSCUBE
        )
    }

    fn probe_2d(&self) -> String {
        self.program("probe", &FEATURES_2D)
    }

    /// Every case, in the order they run.
    pub fn cases(&self) -> Vec<Case> {
        vec![
            self.simple(
                "probe",
                Renderer::TwoD,
                "virtio_gpu binds, card0 exists, 2D feature set, >= 1 scanout",
                self.probe_2d(),
                &["probe"],
            ),
            self.kms_pattern_case(
                "kms-pattern",
                Renderer::TwoD,
                s("dumb buffer pattern on the CRTC, QEMU screendump compared pixel for pixel"),
            ),
            self.kmscube_case(
                "kmscube",
                Renderer::TwoD,
                format!(
                    "kmscube renders {KMSCUBE_FRAMES} frames (llvmpipe in the guest, 2D scanout)"
                ),
            ),
            self.simple(
                "modetest",
                Renderer::TwoD,
                "libdrm's modetest (a peer tool): connectors, encoders, planes, then a mode set with its test pattern",
                s(guest_code::MODETEST),
                &["modetest"],
            ),
            self.two_vms(),
            self.simple(
                "gl-offscreen",
                Renderer::Virgl,
                "probe virgl=yes, then a GLES2 triangle offscreen, GL_RENDERER virgl",
                format!(
                    "{} && {}",
                    self.program("probe", &["virgl=yes"]),
                    self.program("gl-offscreen", &["--expect-renderer", "virgl"])
                ),
                &["probe", "gl-offscreen"],
            ),
            self.simple(
                "fences",
                Renderer::Virgl,
                "GL draws with sync fd out-fences in flight, waited for in order",
                self.program("fences", &["--expect-renderer", "virgl", "--native"]),
                &["fences"],
            ),
            self.kms_pattern_case(
                "kms-pattern-virgl",
                Renderer::Virgl,
                s("kms-pattern with the virgl renderer (2D resources are virglrenderer textures)"),
            ),
            self.kmscube_case(
                "kmscube-virgl",
                Renderer::Virgl,
                format!("kmscube rendered by virgl through vgpud, {KMSCUBE_FRAMES} frames"),
            ),
            self.venus_probe(),
            self.venus_program(
                "vk-info",
                "Vulkan lists a \"Virtio-GPU Venus\" device; a logical device on it",
                Some(Find::Prefix("vk-info: using device")),
            ),
            self.venus_program(
                "vk-compute",
                "compute shader over 1M elements on Venus, checked element by element",
                Some(Find::Contains("elements/s")),
            ),
            self.venus_program(
                "vk-render",
                "offscreen render of a known scene on Venus, compared with the CPU's image",
                None,
            ),
            self.venus_program(
                "vk-coherent",
                "HOST_COHERENT memory, CPU to GPU and GPU to CPU, 4 KiB .. 16 MiB",
                None,
            ),
            self.vk_churn(),
            self.venus_program(
                "drm-blob",
                "raw virtio-gpu ioctls: Venus context, GUEST and HOST3D blobs, ring-0 fences, a Venus reply, 256 blobs mapped at once",
                None,
            ),
            self.two_venus(),
            self.worker_kill(),
            self.gl_beside_vk(),
            self.share_buffer(),
            self.share_moves(
                "share-moves",
                Renderer::Venus,
                "2d",
                s("two buffers of daemon memory under a one-buffer --share-budget: the importer sees MOVED, maps it again on a new resource of the same blob id and reads back what it wrote, bit for bit; a malformed stream reads INVALID and runs nothing"),
            ),
            self.share_moves(
                "share-moves-virgl",
                Renderer::Virgl,
                "virgl",
                format!("share-moves with two virgl guests (generic device, {VENUS_HOSTMEM} window): the buffers made on the share context are daemon memory whatever the renderer"),
            ),
            self.share_moves(
                "share-moves-venus",
                Renderer::Venus,
                "venus",
                s("share-moves with two Venus guests"),
            ),
            self.vnc_pattern(),
            self.vnc_kmscube(),
            self.vnc_share(),
        ]
    }

    /// One guest running `code`; `programs` must pass.
    fn simple(
        &self,
        name: &'static str,
        renderer: Renderer,
        description: &str,
        code: String,
        programs: &[&'static str],
    ) -> Case {
        Case {
            name,
            renderer,
            description: description.to_string(),
            daemon: DaemonSpec::default(),
            guests: vec![GuestSpec::new(code)],
            steps: vec![
                Step::Boot(0),
                Step::Finish {
                    vm: 0,
                    programs: programs.to_vec(),
                    first: false,
                },
            ],
            checks: vec![],
        }
    }

    fn kms_pattern_case(
        &self,
        name: &'static str,
        renderer: Renderer,
        description: String,
    ) -> Case {
        Case {
            name,
            renderer,
            description,
            daemon: DaemonSpec::default(),
            guests: vec![GuestSpec::new(self.kms_pattern(1))],
            steps: vec![
                Step::Boot(0),
                Step::Screendump { vm: 0, seed: 1 },
                Step::Finish {
                    vm: 0,
                    programs: vec!["kms-pattern"],
                    first: false,
                },
            ],
            checks: vec![],
        }
    }

    /// kmscube: the guest's own verdict first, then the screendump's, then the renderer.
    fn kmscube_case(&self, name: &'static str, renderer: Renderer, description: String) -> Case {
        let expect = if renderer == Renderer::Virgl {
            "renderer: \"virgl"
        } else {
            "renderer: \"llvmpipe"
        };
        let reason = if renderer == Renderer::Virgl {
            "kmscube did not render with virgl"
        } else {
            "kmscube did not render with llvmpipe"
        };
        Case {
            name,
            renderer,
            description,
            daemon: DaemonSpec::default(),
            guests: vec![GuestSpec::new(self.kmscube())],
            steps: vec![
                Step::Boot(0),
                Step::Picture { vm: 0 },
                Step::Finish {
                    vm: 0,
                    programs: vec!["kmscube"],
                    first: true,
                },
            ],
            checks: vec![
                Check::Show {
                    vm: 0,
                    find: Find::Contains("renderer:"),
                    last: false,
                },
                Check::Show {
                    vm: 0,
                    find: Find::Prefix("Rendered"),
                    last: true,
                },
                Check::OutputHas {
                    vm: 0,
                    text: expect,
                    reason,
                },
            ],
        }
    }

    fn two_vms(&self) -> Case {
        let code = |seed| format!("{} && {}", self.probe_2d(), self.kms_pattern(seed));
        let mut vm1 = GuestSpec::new(code(5));
        // The second display is smaller: each VM's mode must come from its own QEMU display
        // (vgpud's default is 1280x800).
        vm1.props = Some("xres=1024,yres=768");
        let finish = |vm| Step::Finish {
            vm,
            programs: vec!["probe", "kms-pattern"],
            first: false,
        };
        Case {
            name: "two-vms",
            renderer: Renderer::TwoD,
            description: s("one vgpud, two guests at once (1280x800 and 1024x768): probe + kms-pattern, different seeds"),
            daemon: DaemonSpec::default(),
            guests: vec![GuestSpec::new(code(2)), vm1],
            steps: vec![
                Step::Boot(0),
                Step::Boot(1),
                Step::Screendump { vm: 0, seed: 2 },
                Step::Screendump { vm: 1, seed: 5 },
                finish(0),
                finish(1),
            ],
            checks: vec![],
        }
    }

    fn venus_probe(&self) -> Case {
        let code = format!(
            "{} || exit 1\nwant={VENUS_HOSTMEM_HEX}\n{}",
            self.program("probe", &FEATURES_VENUS),
            guest_code::HOSTMEM
        );
        let mut case = self.simple(
            "venus-probe",
            Renderer::Venus,
            &format!("generic device: probe with blobs and context init, host memory window of {VENUS_HOSTMEM}"),
            code,
            &["probe", "host-memory-window"],
        );
        case.checks.push(Check::Show {
            vm: 0,
            find: Find::Prefix("host-memory-window: "),
            last: false,
        });
        case
    }

    /// One Venus guest running one guest test; `show`: a line of its output to show.
    fn venus_program(&self, name: &'static str, description: &str, show: Option<Find>) -> Case {
        let mut case = self.simple(
            name,
            Renderer::Venus,
            description,
            self.program(name, &[]),
            &[name],
        );
        if let Some(find) = show {
            case.checks.push(Check::Show {
                vm: 0,
                find,
                last: false,
            });
        }
        case
    }

    fn vk_churn(&self) -> Case {
        let code = self.program(
            "vk-churn",
            &[
                &CHURN_CYCLES.to_string(),
                "--warmup",
                &CHURN_WARMUP.to_string(),
                "--phases",
                &CHURN_PHASES.to_string(),
                "--wait-dir",
                "/results",
            ],
        );
        Case {
            name: "vk-churn",
            renderer: Renderer::Venus,
            description: format!(
                "{CHURN_CYCLES} allocate/map/free cycles; vgpud's RSS and fds flat after warm-up"
            ),
            daemon: DaemonSpec::default(),
            guests: vec![GuestSpec::new(code)],
            steps: vec![
                Step::Boot(0),
                Step::Churn { vm: 0 },
                // The guest's verdict comes first.
                Step::Finish {
                    vm: 0,
                    programs: vec!["vk-churn"],
                    first: true,
                },
            ],
            checks: vec![],
        }
    }

    /// One vgpud, two guests at once, both to the end; a render worker per guest.
    fn two_guests(
        &self,
        name: &'static str,
        description: String,
        guests: [GuestSpec; 2],
        programs: [Vec<&'static str>; 2],
    ) -> Case {
        let [p0, p1] = programs;
        Case {
            name,
            renderer: Renderer::Venus,
            description,
            daemon: DaemonSpec::default(),
            guests: guests.into(),
            steps: vec![
                Step::Boot(0),
                Step::Boot(1),
                Step::Finish {
                    vm: 0,
                    programs: p0,
                    first: false,
                },
                Step::Finish {
                    vm: 1,
                    programs: p1,
                    first: false,
                },
            ],
            checks: vec![Check::WorkerPerGuest],
        }
    }

    fn two_venus(&self) -> Case {
        let code = format!(
            "{} && {}",
            self.program("vk-compute", &[]),
            self.program("vk-render", &[])
        );
        self.two_guests(
            "two-venus",
            s("one vgpud, two guests at once, each with its own render worker: vk-compute and vk-render in both"),
            [GuestSpec::new(code.clone()), GuestSpec::new(code)],
            [vec!["vk-compute", "vk-render"], vec!["vk-compute", "vk-render"]],
        )
    }

    /// Guest 0 runs Vulkan compute in a loop; once under way its render worker is killed.
    /// vgpud must disconnect that guest alone, keep running, and guest 1's workload must pass.
    fn worker_kill(&self) -> Case {
        Case {
            name: "worker-kill",
            renderer: Renderer::Venus,
            description: s("two guests at once; one's render worker is killed mid-workload: the other's vk-compute and vk-render pass"),
            daemon: DaemonSpec::default(),
            guests: vec![
                GuestSpec::new(format!("while {}; do :; done", self.program("vk-compute", &[]))),
                GuestSpec::new(format!(
                    "{} && {}",
                    self.program("vk-compute", &[]),
                    self.program("vk-render", &[])
                )),
            ],
            steps: vec![
                Step::Boot(0),
                Step::Boot(1),
                Step::KillRenderWorker { vm: 0 },
                Step::Finish {
                    vm: 1,
                    programs: vec!["vk-compute", "vk-render"],
                    first: false,
                },
            ],
            checks: vec![Check::KilledWorkerEnded],
        }
    }

    /// The GL guest is on vhost-user-gpu-pci, with a virgl worker and no window: its socket's
    /// own settings.
    fn gl_beside_vk(&self) -> Case {
        let gl = format!(
            "{} && {}",
            self.program("probe", &["virgl=yes"]),
            self.program("gl-offscreen", &["--expect-renderer", "virgl"])
        );
        self.two_guests(
            "gl-beside-vk",
            s("one vgpud, a GL guest (virgl, vhost-user-gpu-pci) beside a Vulkan guest (Venus), per-socket settings, a render worker each"),
            [
                GuestSpec::new(gl)
                    .device(Device::Gpu)
                    .settings("renderer=virgl,hostmem=0"),
                GuestSpec::new(self.program("vk-compute", &[])),
            ],
            [vec!["probe", "gl-offscreen"], vec!["vk-compute"]],
        )
    }

    /// vgpud with guests a (exporter) and b (importer, `b_settings` its own too) under a
    /// policy letting b import a's buffers; guest 0 exports share-buffer's frame and prints
    /// its UUID and fence point; the steps after that are the caller's.
    fn share_export(&self, b_settings: &str) -> (DaemonSpec, GuestSpec, GuestSpec, Vec<Step>) {
        let daemon = DaemonSpec {
            args: vec![s("--share-policy"), format!("{SOCK_DIR}/share-policy.json")],
            share_policy: true,
        };
        let mut b = s("name=b,share=on");
        if !b_settings.is_empty() {
            b = format!("{b},{b_settings}");
        }
        let exporter = GuestSpec::new(self.program(
            "share-buffer",
            &["export", &SHARE_SEED.to_string(), &SHARE_PAGES.to_string()],
        ))
        .settings("name=a,share=on");
        let importer = GuestSpec::new(String::new()).settings(b);
        let steps = vec![
            Step::Boot(0),
            Step::Await {
                vm: 0,
                line: Line::ShareUuidFence,
                fail: "guest 0 exported nothing",
            },
        ];
        (daemon, exporter, importer, steps)
    }

    fn share_buffer(&self) -> Case {
        let (daemon, exporter, mut importer, mut steps) = self.share_export("");
        importer.code = self.program(
            "share-buffer",
            &[
                "import",
                UUID,
                &SHARE_SEED.to_string(),
                &SHARE_PAGES.to_string(),
                FENCE,
            ],
        );
        steps.extend([
            Step::Boot(1),
            Step::Finish {
                vm: 1,
                programs: vec!["share-buffer"],
                first: false,
            },
            Step::Finish {
                vm: 0,
                programs: vec!["share-buffer"],
                first: false,
            },
        ]);
        Case {
            name: "share-buffer",
            renderer: Renderer::Venus,
            description: format!("one guest renders a frame with Vulkan (Venus) into a {SHARE_PAGES}-page Venus blob and exports it and a fence point through the share context; another waits for the fence, imports and maps the blob: every pixel checked, and a write seen back by the exporter"),
            daemon,
            guests: vec![exporter, importer],
            steps,
            checks: vec![Check::VgpudLogHas {
                text: s("imports a buffer of a"),
                reason: s("vgpud did not log the import"),
            }],
        }
    }

    /// Guest 0 offers two buffers of vgpud's own memory, made on its share context; the budget
    /// holds one; its import of its own buffer is refused. Guest 1 fills the first, maps the
    /// second (the first moves out), checks that a malformed stream is refused visibly and runs
    /// nothing, that the moved-out mapping reads zeros, maps the first again on a new resource
    /// of the same blob id and checks it came back bit-exact. Both guests' renderer is
    /// `socket_renderer`, on the generic device with a window.
    fn share_moves(
        &self,
        name: &'static str,
        renderer: Renderer,
        socket_renderer: &str,
        description: String,
    ) -> Case {
        let mut args = vec![
            s("--share-policy"),
            format!("{SOCK_DIR}/share-policy.json"),
            s("--share-budget"),
            format!("{}K", SHARE_PAGES * 4),
            s("--share-evict-dir"),
            s(SOCK_DIR),
        ];
        if renderer != Renderer::Venus {
            args.extend([s("--hostmem"), s(VENUS_HOSTMEM)]);
        }
        let offer = GuestSpec::new(self.program(
            "share-buffer",
            &["offer", &SHARE_PAGES.to_string(), "2", DONE_FILE],
        ))
        .device(Device::Generic)
        .settings(format!("name=a,share=on,renderer={socket_renderer}"));
        // The two UUIDs are two words.
        let moves = GuestSpec::new(format!(
            "{} {UUIDS} {} {}",
            self.program("share-buffer", &["moves"]),
            SHARE_SEED,
            SHARE_PAGES
        ))
        .device(Device::Generic)
        .settings(format!("name=b,share=on,renderer={socket_renderer}"));
        let has = |text: &str| Check::VgpudLogHas {
            text: s(text),
            reason: format!("vgpud did not log '{text}'"),
        };
        Case {
            name,
            renderer,
            description,
            daemon: DaemonSpec {
                args,
                share_policy: true,
            },
            guests: vec![offer, moves],
            steps: vec![
                Step::Boot(0),
                Step::Await {
                    vm: 0,
                    line: Line::ShareUuids(2),
                    fail: "guest 0 offered fewer than two buffers",
                },
                Step::Boot(1),
                Step::Finish {
                    vm: 1,
                    programs: vec!["share-buffer"],
                    first: false,
                },
                Step::Release {
                    vm: 0,
                    file: DONE_NAME,
                },
                Step::Finish {
                    vm: 0,
                    programs: vec!["share-buffer"],
                    first: false,
                },
            ],
            // The guests checked the MOVED events, the contents and the answers; the refusals
            // are in vgpud's log as docs/share-protocol.md quotes them.
            checks: vec![
                has("a: may not import that buffer (policy)"),
                has("(share: stream refused, nothing run: reserved field not zero at byte "),
            ],
        }
    }

    /// kms-pattern with vgpud's VNC output too: both real viewers' pictures must match the
    /// pattern exactly, and so must QEMU's own screendump of the same guest.
    fn vnc_pattern(&self) -> Case {
        let seed = 5;
        Case {
            name: "vnc-pattern",
            renderer: Renderer::TwoD,
            description: s("kms-pattern on vhost-user-gpu-pci with vgpud's own VNC output: gvnccapture's and vncdotool's pictures and QEMU's screendump all match the pattern exactly"),
            daemon: DaemonSpec::default(),
            guests: vec![GuestSpec::new(self.kms_pattern(seed)).settings(format!("vnc={VNC}"))],
            steps: vec![
                Step::Boot(0),
                Step::Await {
                    vm: 0,
                    line: Line::Ready,
                    fail: "vm0: kms-pattern never printed READY",
                },
                Step::Vnc {
                    vm: 0,
                    name: "pattern",
                    want: VncWant::Pattern { seed },
                },
                Step::Screendump { vm: 0, seed },
                Step::Finish {
                    vm: 0,
                    programs: vec!["kms-pattern"],
                    first: false,
                },
            ],
            checks: vec![],
        }
    }

    /// kmscube through virgl on the generic device, whose VMM has no display: once kmscube
    /// holds a frame, both viewers' pictures of vgpud's VNC output must show a rendered
    /// picture, read back from the render worker.
    fn vnc_kmscube(&self) -> Case {
        Case {
            name: "vnc-kmscube",
            renderer: Renderer::Virgl,
            description: s("kmscube through virgl on the generic device (no VMM display), seen through vgpud's VNC output: both real viewers' pictures show the rendered cube (3D resources read back through the render worker)"),
            daemon: DaemonSpec {
                args: vec![s("--hostmem"), s(VENUS_HOSTMEM)],
                share_policy: false,
            },
            guests: vec![GuestSpec::new(self.kmscube())
                .device(Device::Generic)
                .settings(format!("vnc={VNC}"))],
            steps: vec![
                Step::Boot(0),
                Step::Await {
                    vm: 0,
                    line: Line::Exact("KMSCUBE-HOLD"),
                    fail: "vm0: kmscube never held a frame",
                },
                Step::Vnc {
                    vm: 0,
                    name: "cube",
                    want: VncWant::Picture,
                },
                Step::Release {
                    vm: 0,
                    file: DONE_NAME,
                },
                Step::Finish {
                    vm: 0,
                    programs: vec!["kmscube"],
                    first: false,
                },
            ],
            checks: vec![Check::OutputHas {
                vm: 0,
                text: "renderer: \"virgl",
                reason: "kmscube did not render with virgl",
            }],
        }
    }

    /// The sharing scene on a screen no VMM gives: guest 0 renders share-buffer's frame with
    /// Vulkan and exports it; guest 1 (generic device, the frame's size, vgpud's VNC output)
    /// imports it and makes it its scanout. Both viewers must show the frame pixel for pixel;
    /// once guest 0 has freed it (its guest ends), guest 1's screen must be black.
    fn vnc_share(&self) -> Case {
        let rows = (SHARE_PAGES * 4096 / 1024) as usize;
        let size = Size {
            width: 256,
            height: rows,
        };
        let (daemon, exporter, mut importer, mut steps) =
            self.share_export(&format!("resolution={size},vnc={VNC}"));
        importer.code = self.program(
            "share-buffer",
            &[
                "show",
                UUID,
                &SHARE_SEED.to_string(),
                &SHARE_PAGES.to_string(),
                FENCE,
                DONE_FILE,
            ],
        );
        steps.extend([
            Step::Boot(1),
            Step::Await {
                vm: 1,
                line: Line::Shown(size),
                fail: "guest 1 never showed the frame",
            },
            Step::Vnc {
                vm: 1,
                name: "frame",
                want: VncWant::ShareFrame {
                    seed: SHARE_SEED,
                    size,
                },
            },
            // Guest 1 tells guest 0, which frees the buffer and ends.
            Step::Release {
                vm: 1,
                file: DONE_NAME,
            },
            Step::Finish {
                vm: 0,
                programs: vec!["share-buffer"],
                first: false,
            },
            Step::Vnc {
                vm: 1,
                name: "revoked",
                want: VncWant::Black,
            },
            Step::Release {
                vm: 1,
                file: "screendump-taken.gone",
            },
            Step::Finish {
                vm: 1,
                programs: vec!["share-buffer"],
                first: false,
            },
        ]);
        Case {
            name: "vnc-share",
            renderer: Renderer::Venus,
            description: s("the sharing scene on screen: guest 0 renders a frame with Vulkan and exports it; guest 1 (generic device, no VMM display) imports it and makes it its scanout (SET_SCANOUT_BLOB): its VNC output matches the frame pixel for pixel in gvnccapture and vncdotool; guest 0 frees it and guest 1's screen goes black"),
            daemon,
            guests: vec![exporter, importer],
            steps,
            checks: vec![],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_steps_name_real_guests() {
        let cases = Table::new(Path::new("/p/target/guest-tests"), 240).cases();
        assert_eq!(cases.len(), 26);
        let mut names: Vec<_> = cases.iter().map(|c| c.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), 26);
        for case in &cases {
            let n = case.guests.len();
            for step in &case.steps {
                let vm = match step {
                    Step::Boot(vm) => *vm,
                    Step::Await { vm, .. }
                    | Step::Screendump { vm, .. }
                    | Step::Picture { vm }
                    | Step::Vnc { vm, .. }
                    | Step::Release { vm, .. }
                    | Step::Finish { vm, .. }
                    | Step::KillRenderWorker { vm }
                    | Step::Churn { vm } => *vm,
                };
                assert!(
                    vm < n,
                    "{}: step {step:?} names guest {vm} of {n}",
                    case.name
                );
            }
            // Every guest is booted exactly once.
            for vm in 0..n {
                let boots = case
                    .steps
                    .iter()
                    .filter(|s| matches!(s, Step::Boot(v) if *v == vm))
                    .count();
                assert_eq!(boots, 1, "{}: guest {vm} booted {boots} times", case.name);
            }
        }
    }

    #[test]
    fn guest_programs_are_quoted_for_bash() {
        assert_eq!(shell_word("virgl=yes"), "virgl=yes");
        assert_eq!(shell_word("a b"), "'a b'");
        assert_eq!(shell_word("it's"), "'it'\\''s'");
        assert_eq!(shell_word(""), "''");
        let t = Table::new(Path::new("/p/guest tests"), 240);
        assert_eq!(
            t.program("probe", &["virgl=no"]),
            "'/p/guest tests/probe' virgl=no"
        );
    }
}
