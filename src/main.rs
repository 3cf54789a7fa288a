use std::collections::HashMap;
use std::process::ExitCode;
use std::sync::Arc;
use std::thread;

use clap::Parser;
use log::{error, info};
use vgpud::cli::{capabilities_json, take_activated_sockets, Options, Subcommand, VmSettings};
use vgpud::control;
use vgpud::guestlog::GuestLog;
use vgpud::hub::registry::Registry;
use vgpud::hub::residency::Budget;
use vgpud::hub::share::{Policy, ShareRegistry};
use vgpud::metrics::{Endpoint, Metrics};
use vgpud::operators::{self, Listening};
use vgpud::output::{VncAddress, VncConfig, VncOutput};
use vgpud::render::{remote, worker, RendererKind, Soft2d};
use vgpud::signals;
use vgpud::vhost::{serve, RendererSpec, VmTemplate, VmmSource};

/// Renderers started so far (or found not to start), by kind: VMs with the same kind share
/// one 2D renderer, or one probe of a worker's capsets.
type Started = HashMap<RendererKind, Option<RendererSpec>>;

/// Starts (once) the first renderer of the ones `kind` allows that works here. A 3D renderer is
/// tried in a short-lived worker: the broker runs no GPU driver code of its own.
fn start_renderer(
    opts: &Options,
    kind: RendererKind,
    hostmem: u64,
    started: &mut Started,
) -> Option<RendererSpec> {
    for kind in kind.candidates(hostmem) {
        if kind.needs_hostmem() && hostmem == 0 {
            error!("the {kind:?} renderer maps guest memory through blobs: give it hostmem");
            return None;
        }
        let spec = started
            .entry(kind)
            .or_insert_with(|| try_start(opts, kind))
            .clone();
        if spec.is_some() {
            return spec;
        }
    }
    None
}

/// A VM's own VNC output, listening from now on (before any VMM connects).
fn start_output(
    opts: &Options,
    name: &str,
    address: &VncAddress,
    vm: &VmSettings,
    group: Option<u32>,
    log: &GuestLog,
) -> std::io::Result<VncOutput> {
    if let VncAddress::Tcp(addr) = address {
        if !addr.ip().is_loopback() && !opts.vnc_any_address {
            return Err(std::io::Error::other(format!(
                "{addr} is not a loopback address (--vnc-any-address allows it)"
            )));
        }
    }
    let config = VncConfig {
        address: address.clone(),
        memory: vm.vnc_memory,
        max_viewers: vm.vnc_viewers,
        group,
    };
    let size = (vm.device.width, vm.device.height);
    VncOutput::start(name, &config, vm.device.num_scanouts, size, log.clone())
}

fn try_start(opts: &Options, kind: RendererKind) -> Option<RendererSpec> {
    if kind.in_worker() {
        return match remote::probe(kind, opts.worker_timeout) {
            Ok(capsets) if !capsets.is_empty() => {
                info!("renderer: {kind:?}, one worker process per VM");
                Some(RendererSpec::Worker {
                    kind,
                    capsets,
                    timeout: opts.worker_timeout,
                    spin: opts.worker_spin,
                })
            }
            Ok(_) => {
                error!("{kind:?}: the renderer offers no capsets");
                None
            }
            Err(e) => {
                error!("{kind:?}: {e}");
                None
            }
        };
    }
    // Only 2D is drawn in the broker itself, by one renderer all its VMs share.
    info!("renderer: {kind:?}");
    Some(RendererSpec::Shared(Arc::new(Soft2d::default())))
}

/// `vgpud status`: what the daemon behind `socket` serves, as a table or JSON.
fn status(socket: &std::path::Path, json: bool) -> ExitCode {
    match control::query(socket) {
        Ok(reply) => {
            if json {
                match serde_json::to_string_pretty(&reply) {
                    Ok(text) => println!("{text}"),
                    Err(e) => {
                        eprintln!("vgpud status: {e}");
                        return ExitCode::FAILURE;
                    }
                }
            } else {
                print!("{}", control::table(&reply));
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("vgpud status: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Raises the soft descriptor limit to the hard one: every VM takes a few dozen descriptors, and
/// the usual soft limit (1024) would cap a daemon at a few dozen VMs. (Operator clients take a
/// few at most: see `operators`.)
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
    // Before any thread starts, so that every thread inherits the mask.
    if let Err(e) = signals::block() {
        error!("cannot block the stop and reload signals: {e}");
        return ExitCode::FAILURE;
    }
    if let Some(Subcommand::RenderWorker {
        renderer,
        vm,
        render_node,
        spin,
        cpus,
    }) = &opts.command
    {
        if let Some(node) = render_node {
            vgpud::render::use_render_node(node.clone());
        }
        // Before the renderer starts its threads, which inherit it.
        if let Some(cpus) = cpus {
            if let Err(e) = cpus.pin_this_thread() {
                error!("render worker for {vm}: cannot run on CPUs {cpus}: {e}");
                return ExitCode::FAILURE;
            }
        }
        let code = worker::run(*renderer, vm, *spin);
        return ExitCode::from(u8::try_from(code).unwrap_or(1));
    }
    if let Some(Subcommand::Status {
        control_socket,
        json,
    }) = &opts.command
    {
        return status(control_socket, *json);
    }
    if let Some(Subcommand::Manpage) = &opts.command {
        // The package's man page is made from the command-line definition, so it never drifts.
        let page = clap_mangen::Man::new(<Options as clap::CommandFactory>::command());
        let mut out = std::io::stdout().lock();
        return match page.render(&mut out) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("vgpud manpage: {e}");
                ExitCode::FAILURE
            }
        };
    }
    if opts.print_capabilities {
        println!("{}", capabilities_json());
        return ExitCode::SUCCESS;
    }
    if opts.virgl && !cfg!(feature = "virgl") {
        error!("--virgl: this vgpud was built without 3D renderers");
        return ExitCode::from(2);
    }
    if let Some(node) = &opts.render_node {
        if let Err(e) = std::fs::metadata(node) {
            error!("--render-node {}: {e}", node.display());
            return ExitCode::from(2);
        }
        vgpud::render::use_render_node(node.clone());
    }
    if let Some(cpus) = &opts.worker_cpus {
        vgpud::render::use_worker_cpus(cpus.clone());
    }
    let listeners = match take_activated_sockets().and_then(|a| opts.listeners(&a)) {
        Ok(l) if !l.is_empty() => l,
        Ok(_) => {
            error!(
                "nothing to serve: give --socket-path or --fd, or start it by socket activation"
            );
            return ExitCode::from(2);
        }
        Err(e) => {
            error!("{e}");
            return ExitCode::from(2);
        }
    };
    // Before any VM's memory is mapped: a VMM that shrinks its guest memory file costs only
    // its own VM. Render workers go without: a fault there ends only that VM's worker.
    if let Err(e) = vgpud::memfault::install() {
        error!("cannot install the SIGBUS handler: {e}");
        return ExitCode::FAILURE;
    }
    let registry = Arc::new(Registry::default());
    let policy = match &opts.share_policy {
        Some(path) => match Policy::load(path) {
            Ok(p) => p,
            Err(e) => {
                error!("--share-policy {e}");
                return ExitCode::from(2);
            }
        },
        None => Policy::default(),
    };
    let mut shares = ShareRegistry::new(policy);
    if let Some(limit) = opts.share_budget {
        shares = shares.with_budget(Budget {
            limit,
            dir: opts.share_evict_dir.clone(),
        });
    }
    let shares = Arc::new(shares);
    let group = match opts.control_group.as_deref().map(control::group_id) {
        Some(Ok(gid)) => Some(gid),
        Some(Err(e)) => {
            error!("--control-group: {e}");
            return ExitCode::from(2);
        }
        None => None,
    };
    let vnc_group = match opts.vnc_group.as_deref().map(control::group_id) {
        Some(Ok(gid)) => Some(gid),
        Some(Err(e)) => {
            error!("--vnc-group: {e}");
            return ExitCode::from(2);
        }
        None => None,
    };
    let mut operators = Vec::new();
    if let Some(path) = &opts.control_socket {
        match Listening::control(path, registry.clone(), group) {
            Ok(l) => operators.push(l),
            Err(e) => {
                error!("control socket {}: {e}", path.display());
                return ExitCode::FAILURE;
            }
        }
    }
    let metrics = Arc::new(Metrics::new(registry.clone(), Some(shares.clone())));
    let endpoints = (opts.metrics_socket.clone().map(Endpoint::Unix))
        .into_iter()
        .chain(opts.metrics_address.map(Endpoint::Tcp));
    for endpoint in endpoints {
        match Listening::metrics(&endpoint, metrics.clone(), group) {
            Ok(l) => operators.push(l),
            Err(e) => {
                error!("metrics endpoint {endpoint:?}: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    if let Err(e) = operators::spawn(operators) {
        error!("cannot start the operator endpoints: {e}");
        return ExitCode::FAILURE;
    }
    let reload_shares = shares.clone();
    let policy_file = opts.share_policy.clone();
    let reload = move || match &policy_file {
        Some(path) => match Policy::load(path) {
            Ok(p) => {
                reload_shares.set_policy(p);
                info!("share policy {} read again", path.display());
            }
            Err(e) => error!("--share-policy {e}; the policy in force stays"),
        },
        None => info!("nothing to reload (no --share-policy)"),
    };
    if let Err(e) = signals::handle(registry.clone(), reload) {
        error!("cannot start the signal thread: {e}");
        return ExitCode::FAILURE;
    }
    let mut started = Started::new();
    let mut servers = Vec::new();
    // Served once each: with only such VMMs, the daemon is done when they are.
    let one_shot = listeners
        .iter()
        .all(|(_, source, _)| matches!(source, VmmSource::Connected(_)));
    let outputs: Vec<(&VncAddress, u32)> = (listeners.iter())
        .filter_map(|(_, _, vm)| vm.vnc.as_ref().map(|a| (a, vm.device.num_scanouts)))
        .collect();
    let taken: Vec<std::path::PathBuf> = (opts.socket_paths.iter().map(|s| s.target.clone()))
        .chain(opts.control_socket.clone())
        .chain(opts.metrics_socket.clone())
        .collect();
    if let Err(e) = vgpud::output::check_addresses(&outputs, &taken) {
        error!("vnc: {e}");
        return ExitCode::from(2);
    }
    for (socket, listener, vm) in listeners {
        let name = vm.name.clone().unwrap_or_else(|| socket.clone());
        let Some(renderer) = start_renderer(&opts, vm.renderer, vm.hostmem, &mut started) else {
            error!("{name}: no renderer");
            return ExitCode::FAILURE;
        };
        let log = GuestLog::new(&name);
        let output = match &vm.vnc {
            Some(address) => match start_output(&opts, &name, address, &vm, vnc_group, &log) {
                Ok(o) => Some(o),
                Err(e) => {
                    error!("{name}: vnc: {e}");
                    return ExitCode::FAILURE;
                }
            },
            None => None,
        };
        let template = VmTemplate {
            shares: Some(shares.clone()),
            share: vm.share,
            socket,
            registry: registry.clone(),
            renderer,
            device: vm.device,
            vmm_timeout: opts.vmm_timeout,
            failure_limit: opts.failure_limit(),
            log,
            output,
        };
        let thread_name = name.clone();
        let server = thread::Builder::new()
            .name(name.clone())
            .spawn(move || serve(&thread_name, listener, template));
        servers.push((name, server));
    }
    // A listener is served until the daemon stops; a VMM handed over connected is served once,
    // and one that could not be served at all makes the exit status a failure.
    let mut unserved = 0;
    for (name, server) in servers {
        let served = server.and_then(|handle| {
            handle
                .join()
                .unwrap_or_else(|_| Err(std::io::Error::other("its thread panicked")))
        });
        if let Err(e) = served {
            error!("{name}: cannot serve the VM: {e}");
            unserved += 1;
        }
    }
    if one_shot && unserved == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
