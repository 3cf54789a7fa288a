//! What the benchmarks share: knobs, response checks, statistics, and the eventfd and cache-line
//! floors.
#![allow(dead_code)] // each bench uses a part

pub mod in_place;

use std::io;
use std::os::fd::AsRawFd;
use std::thread;
use std::time::{Duration, Instant};

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

/// Untimed round trips before the timed ones of the floors.
pub const WARMUP: usize = 500;

/// A number from the environment, or `default`.
pub fn knob(name: &str, default: usize) -> usize {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a number")),
        Err(_) => default,
    }
}

/// Fails unless the response has type `want` (cheap enough to do inside timed loops).
pub fn check(bytes: &[u8], want: u32) -> io::Result<()> {
    let got = bytes
        .get(0..4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
    if got == Some(want) {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "response type {got:x?}, expected {want:#x}"
        )))
    }
}

pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Latencies in microseconds, sorted.
pub fn micros(samples: &[Duration]) -> Vec<f64> {
    let mut us: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1e6).collect();
    us.sort_by(f64::total_cmp);
    us
}

/// One thread's end of the eventfd ping-pong: its own eventfd, waited on with epoll.
struct PingPongEnd {
    mine: EventFd,
    epoll: Epoll,
}

impl PingPongEnd {
    fn new() -> io::Result<PingPongEnd> {
        let mine = EventFd::new(0)?;
        let epoll = Epoll::new()?;
        let ev = EpollEvent::new(EventSet::IN, 0);
        epoll.ctl(ControlOperation::Add, mine.as_raw_fd(), ev)?;
        Ok(PingPongEnd { mine, epoll })
    }

    fn wait(&self) -> io::Result<()> {
        let mut events = [EpollEvent::default()];
        while self.epoll.wait(-1, &mut events)? == 0 {}
        self.mine.read()?;
        Ok(())
    }
}

/// p50 (µs) of an eventfd ping-pong between two threads: each side writes the other's eventfd,
/// then waits (epoll) and reads its own, as a frontend and a vhost-user backend thread do.
pub fn eventfd_ping_pong(n: usize) -> io::Result<f64> {
    let ping = PingPongEnd::new()?;
    let pong = PingPongEnd::new()?;
    let to_pong = pong.mine.try_clone()?;
    let to_ping = ping.mine.try_clone()?;
    let total = WARMUP + n;
    let echo = thread::spawn(move || -> io::Result<()> {
        for _ in 0..total {
            pong.wait()?;
            to_ping.write(1)?;
        }
        Ok(())
    });
    let mut samples = Vec::with_capacity(n);
    for i in 0..total {
        let t = Instant::now();
        to_pong.write(1)?;
        ping.wait()?;
        if i >= WARMUP {
            samples.push(t.elapsed());
        }
    }
    echo.join().expect("echo thread")?;
    Ok(percentile(&micros(&samples), 0.5))
}

/// p50 (µs) of a cache-line ping-pong between a thread on CPU `a` and one on CPU `b`: each side
/// spins on the other's word (a line of its own) and answers in its own, as a spinning broker
/// and worker hand a request and its reply over in the doorbell's page. It is the floor of a
/// crossing between two CPUs that never sleeps: the memory system's hand-over, with next to no
/// code around it (a store, a spin, and the clock read before and after each round trip). A
/// side that hears nothing for about a second gives up: its peer could not run.
pub fn cache_line_ping_pong(n: usize, a: usize, b: usize) -> io::Result<f64> {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;
    use vgpud::render::cpus::CpuList;

    // 128 bytes: the adjacent-line prefetcher fetches lines in pairs, which would join the two.
    #[repr(align(128))]
    struct Line(AtomicU64);
    const PING: usize = 0;
    const PONG: usize = 1;
    let words = Arc::new([Line(AtomicU64::new(0)), Line(AtomicU64::new(0))]);
    let total = (WARMUP + n) as u64;
    let echo_words = words.clone();
    let echo = thread::spawn(move || -> io::Result<()> {
        pin_to(b)?;
        for i in 1..=total {
            spin_until(&echo_words[PING].0, i)?;
            echo_words[PONG].0.store(i, Ordering::Release);
        }
        Ok(())
    });
    let saved_cpus = CpuList::of_this_thread()?;
    let pinged = pin_to(a).and_then(|()| {
        let mut samples = Vec::with_capacity(n);
        for i in 1..=total {
            let t = Instant::now();
            words[PING].0.store(i, Ordering::Release);
            spin_until(&words[PONG].0, i)?;
            if i > WARMUP as u64 {
                samples.push(t.elapsed());
            }
        }
        Ok(samples)
    });
    let restored = saved_cpus.pin_this_thread();
    // Bounded: the echo gives up a second after its last ping.
    let echoed = echo
        .join()
        .map_err(|_| io::Error::other("echo thread panicked"))?;
    let samples = pinged?;
    restored?;
    echoed?;
    Ok(percentile(&micros(&samples), 0.5))
}

/// Pins the calling thread to `cpu`.
pub fn pin_to(cpu: usize) -> io::Result<()> {
    let one = vgpud::render::cpus::CpuList::parse(&cpu.to_string()).map_err(io::Error::other)?;
    one.pin_this_thread()
}

/// Spins until `word` holds `want`; an error once it has not for about a second (the clock is
/// read only after many looks, so a quick answer costs no clock read).
fn spin_until(word: &std::sync::atomic::AtomicU64, want: u64) -> io::Result<()> {
    let mut looks = 0u32;
    let mut since = None;
    while word.load(std::sync::atomic::Ordering::Acquire) != want {
        looks = looks.wrapping_add(1);
        if looks.is_multiple_of(1 << 16)
            && since.get_or_insert_with(Instant::now).elapsed() > Duration::from_secs(1)
        {
            return Err(io::Error::other(
                "cache-line ping-pong: the other side never answered",
            ));
        }
        std::hint::spin_loop();
    }
    Ok(())
}
