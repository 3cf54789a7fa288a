//! Sharing through the share context, as a guest program does it: shared by the tests of
//! sharing and of crosvm's lifecycle.

use vgpud_harness::{Daemon, Vm};
use vgpud_protocol::share::{
    decode_reply, ShareCommand, ShareEvent, Status, Uuid, CAPSET_SHARE, NO_REPLY,
};
use vgpud_protocol::{
    Command, CreateBlob, Reader, Response, BLOB_FLAG_USE_MAPPABLE, BLOB_MEM_HOST3D, F_CONTEXT_INIT,
    SHM_ID_HOST_VISIBLE,
};

use super::{answer, call, connect, in_ctx, mappable_blob, ok, vgpud};

pub const PAGE: u64 = 4096;
pub const SHARE_CTX: u32 = 1;
pub const REPLY_BLOB: u32 = 2;
pub const SHM: u8 = SHM_ID_HOST_VISIBLE;

/// The exporter's buffer: a mappable host blob (memory of the daemon's own) of `pages` pages,
/// mapped into its own window at `offset` and filled with `fill` through it.
pub fn host_blob(vm: &mut Vm, id: u32, pages: u64, fill: u8, offset: u64) {
    let size = pages * PAGE;
    ok(
        vm,
        Command::ResourceCreateBlob(CreateBlob {
            resource_id: id,
            blob_mem: BLOB_MEM_HOST3D,
            blob_flags: BLOB_FLAG_USE_MAPPABLE,
            blob_id: 0,
            size,
            entries: vec![],
        }),
    );
    let map = Command::ResourceMapBlob {
        resource_id: id,
        offset,
    };
    assert!(matches!(call(vm, map), Response::OkMapInfo { .. }));
    assert!(vm.shmem().write(SHM, offset, &vec![fill; size as usize]));
}

/// A VM with a share context and its reply blob; returns where the replies land.
pub struct Sharer {
    pub vm: Vm,
    pub replies: u64,
}

impl Sharer {
    pub fn new(d: &Daemon, i: usize) -> Sharer {
        Sharer::with_vm(connect(d, i))
    }

    /// `vm`, given a share context and a reply blob.
    pub fn with_vm(mut vm: Vm) -> Sharer {
        assert_ne!(vm.offered_features() & (1 << F_CONTEXT_INIT), 0);
        // The share capset is listed after the renderer's, as a guest kernel reads them.
        let listed = (0..4).any(|capset_index| {
            matches!(
                call(&mut vm, Command::GetCapsetInfo { capset_index }),
                Response::OkCapsetInfo {
                    capset_id: CAPSET_SHARE,
                    ..
                }
            )
        });
        assert!(listed, "GET_CAPSET_INFO lists the share capset");
        let replies = mappable_blob(&mut vm, REPLY_BLOB, 1, 0);
        let create = Command::CtxCreate {
            context_init: CAPSET_SHARE,
            debug_name: b"share".to_vec(),
        };
        assert_eq!(
            answer(&mut vm, &in_ctx(SHARE_CTX, create)).1,
            Response::OkNodata
        );
        let mut s = Sharer { vm, replies };
        s.submit(&[(
            ShareCommand::SetReplyBlob {
                resource_id: REPLY_BLOB,
            },
            NO_REPLY,
        )]);
        s
    }

    pub fn submit(&mut self, commands: &[(ShareCommand, u32)]) {
        let stream: Vec<u8> = commands.iter().flat_map(|(c, at)| c.encode(*at)).collect();
        let cmd = Command::Submit3d { commands: stream };
        assert_eq!(
            answer(&mut self.vm, &in_ctx(SHARE_CTX, cmd)).1,
            Response::OkNodata
        );
    }

    /// One command; its reply's status and payload.
    pub fn run(&mut self, command: ShareCommand) -> (u32, Vec<u8>) {
        self.vm.write_mem(self.replies, &[0xee; 64]);
        self.submit(&[(command, 0)]);
        let bytes = self.vm.read_mem(self.replies, 64);
        let (status, payload) = decode_reply(&bytes).expect("a reply");
        (status, payload.to_vec())
    }

    pub fn export(&mut self, id: u32) -> Uuid {
        let (status, payload) = self.run(ShareCommand::Export { resource_id: id });
        assert_eq!(status, Status::Ok as u32);
        payload.try_into().expect("a UUID")
    }

    /// Imports `uuid` (statically) as resource `id`, mapped at `offset` of the window; returns
    /// its size.
    pub fn import_and_map(&mut self, uuid: Uuid, id: u32, offset: u64) -> u64 {
        self.import_mapped(uuid, id, offset, false)
    }

    /// As `import_and_map`, dynamic (the daemon may move it) or not.
    pub fn import_mapped(&mut self, uuid: Uuid, id: u32, offset: u64, dynamic: bool) -> u64 {
        let (status, payload) = self.run(ShareCommand::Import { uuid, dynamic });
        assert_eq!(status, Status::Ok as u32);
        let mut r = Reader::new(&payload);
        let (blob_id, size) = (r.u64().unwrap(), r.u64().unwrap());
        let create = Command::ResourceCreateBlob(CreateBlob {
            resource_id: id,
            blob_mem: BLOB_MEM_HOST3D,
            blob_flags: BLOB_FLAG_USE_MAPPABLE,
            blob_id,
            size,
            entries: vec![],
        });
        assert_eq!(
            answer(&mut self.vm, &in_ctx(SHARE_CTX, create)).1,
            Response::OkNodata
        );
        let map = Command::ResourceMapBlob {
            resource_id: id,
            offset,
        };
        assert!(matches!(
            call(&mut self.vm, map),
            Response::OkMapInfo { .. }
        ));
        size
    }

    pub fn events(&mut self) -> Vec<ShareEvent> {
        let (status, payload) = self.run(ShareCommand::ReadEvents { max: 16 });
        assert_eq!(status, Status::Ok as u32);
        let mut r = Reader::new(&payload);
        let n = r.u32().unwrap();
        r.u32().unwrap();
        (0..n)
            .map(|_| ShareEvent::decode(&mut r).unwrap())
            .collect()
    }
}

/// VMs named `names` that may share, with a 1 MiB window each, under `policy_json`, plus
/// `extra` options; returns the daemon and its policy file.
pub fn sharing_daemon_with(
    names: &[&str],
    policy_json: &str,
    extra: &[&str],
) -> (Daemon, std::path::PathBuf) {
    let policy = std::env::temp_dir().join(format!(
        "vgpud-share-policy-{}-{:?}.json",
        std::process::id(),
        std::thread::current().id()
    ));
    std::fs::write(&policy, policy_json).unwrap();
    let settings: Vec<String> = names.iter().map(|n| format!("name={n},share=on")).collect();
    let settings: Vec<&str> = settings.iter().map(String::as_str).collect();
    let mut args = vec![
        "--hostmem",
        "1M",
        "--share-policy",
        policy.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let d = Daemon::spawn_with_vm_settings(vgpud(), &settings, &args).expect("start vgpud");
    (d, policy)
}
