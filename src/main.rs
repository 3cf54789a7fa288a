use std::process::ExitCode;
use std::thread;

use clap::Parser;
use log::{error, info};
use vgpud::cli::{capabilities_json, Options};
use vgpud::render::{self, SharedRenderer};
use vgpud::vhost::{serve, VmTemplate};

/// Starts the first renderer of the ones `--renderer` allows that works here.
fn start_renderer(opts: &Options, vms: usize) -> Option<SharedRenderer> {
    for kind in opts.renderer.candidates(vms, opts.hostmem) {
        if kind.needs_hostmem() && opts.hostmem == 0 {
            error!("the {kind:?} renderer maps guest memory through blobs: give --hostmem");
            return None;
        }
        match render::start(kind) {
            Ok(r) => {
                info!("renderer: {kind:?}");
                return Some(r);
            }
            Err(e) => error!("{kind:?}: {e}"),
        }
    }
    None
}

/// Raises the soft descriptor limit to the hard one: every VM takes a few dozen descriptors, and
/// the usual soft limit (1024) would cap a daemon at a few dozen VMs.
fn raise_fd_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct they are given.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            limit.rlim_cur = limit.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                error!("cannot raise the descriptor limit to {}", limit.rlim_max);
            }
        }
    }
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    raise_fd_limit();
    let opts = Options::parse();
    if opts.print_capabilities {
        println!("{}", capabilities_json());
        return ExitCode::SUCCESS;
    }
    let listeners = match opts.listeners() {
        Ok(l) if !l.is_empty() => l,
        Ok(_) => {
            error!("nothing to serve: give --socket-path or --fd");
            return ExitCode::from(2);
        }
        Err(e) => {
            error!("{e}");
            return ExitCode::from(2);
        }
    };
    if listeners.len() > opts.renderer.max_vms() {
        error!(
            "the {:?} renderer serves at most {} VM(s) per daemon: its command streams name \
             resources by the guest's own ids; run one daemon per VM",
            opts.renderer,
            opts.renderer.max_vms()
        );
        return ExitCode::from(2);
    }
    let renderer = match start_renderer(&opts, listeners.len()) {
        Some(r) => r,
        None => return ExitCode::FAILURE,
    };
    let template = VmTemplate {
        renderer,
        device: opts.device_config(),
        vmm_timeout: opts.vmm_timeout,
    };
    let servers: Vec<_> = listeners
        .into_iter()
        .map(|(name, listener)| {
            let template = template.clone();
            thread::Builder::new()
                .name(name.clone())
                .spawn(move || serve(&name, listener, template))
        })
        .collect();
    for server in servers {
        match server {
            Ok(handle) => {
                let _ = handle.join();
            }
            Err(e) => error!("cannot start a server thread: {e}"),
        }
    }
    ExitCode::FAILURE
}
