//! `--worker-cpus`: the CPUs render workers run on. On a host with few cores, a worker that
//! spins for its next request shares a core with whatever the scheduler puts beside it, often
//! the VMM's or the broker's thread that the request is waiting for; keeping the workers on
//! CPUs of their own keeps that from happening (docs/benchmarks.md, step 5).
//!
//! A CPU list is parsed here (the kernel's list format, as in `taskset -c`): a few lines, for
//! which no crate of those the project uses has a parser.

use std::fmt;
use std::io;

/// CPUs by number, as in "0-3,6": sorted, without repeats, each below `CPU_SETSIZE`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CpuList(Vec<usize>);

impl CpuList {
    pub fn parse(s: &str) -> Result<CpuList, String> {
        let bad = || format!("bad CPU list '{s}': numbers and ranges such as 0-3,6");
        let mut cpus = Vec::new();
        for part in s.split(',') {
            let (first, last) = match part.split_once('-') {
                Some((a, b)) => (a, b),
                None => (part, part),
            };
            let first: usize = first.trim().parse().map_err(|_| bad())?;
            let last: usize = last.trim().parse().map_err(|_| bad())?;
            if first > last || last >= libc::CPU_SETSIZE as usize {
                return Err(bad());
            }
            cpus.extend(first..=last);
        }
        cpus.sort_unstable();
        cpus.dedup();
        Ok(CpuList(cpus))
    }

    pub fn cpus(&self) -> &[usize] {
        &self.0
    }

    /// The CPUs the calling thread may run on.
    pub fn of_this_thread() -> io::Result<CpuList> {
        let status = std::fs::read_to_string("/proc/thread-self/status")?;
        let list = status
            .lines()
            .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
            .ok_or_else(|| io::Error::other("no Cpus_allowed_list"))?;
        CpuList::parse(list.trim()).map_err(io::Error::other)
    }

    /// Runs the calling thread, and the threads it starts from now on, on these CPUs only.
    pub fn pin_this_thread(&self) -> io::Result<()> {
        // SAFETY: a zeroed cpu_set_t is an empty set; CPU_SET is given numbers below
        // CPU_SETSIZE (checked in `parse`).
        let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
        for &cpu in &self.0 {
            // SAFETY: as above.
            unsafe { libc::CPU_SET(cpu, &mut set) };
        }
        // SAFETY: pid 0 is the calling thread; `set` is a whole cpu_set_t of the size passed.
        let r = unsafe { libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set) };
        if r != 0 {
            return Err(io::Error::last_os_error());
        }
        // The kernel quietly keeps only the CPUs the cgroup allows (failing only when none
        // are left): fewer than asked for is a failure too.
        let got = CpuList::of_this_thread()?;
        if got != *self {
            return Err(io::Error::other(format!(
                "the system allows only CPUs {got}"
            )));
        }
        Ok(())
    }
}

/// Moves the calling thread off `cpu` (where it runs) to another CPU it may use, and leaves it
/// free to come back later: the kernel moves a thread at once when its CPU leaves its
/// affinity, and not when the CPU comes back. The CPU it went to; None when it may use no
/// other.
///
/// The affinity it had is set again straight after; a change someone else made in between
/// (a few microseconds) is lost.
pub fn step_off(cpu: usize) -> io::Result<Option<usize>> {
    let size = std::mem::size_of::<libc::cpu_set_t>();
    // SAFETY: a zeroed cpu_set_t is an empty set.
    let mut allowed: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: the kernel fills the whole set of the size passed, for pid 0 (this thread).
    if unsafe { libc::sched_getaffinity(0, size, &mut allowed) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let mut others = allowed;
    if cpu >= libc::CPU_SETSIZE as usize {
        return Ok(None);
    }
    // SAFETY: `cpu` is below CPU_SETSIZE (checked).
    unsafe { libc::CPU_CLR(cpu, &mut others) };
    // SAFETY: counts the bits of a whole set.
    if unsafe { libc::CPU_COUNT(&others) } == 0 {
        return Ok(None);
    }
    // SAFETY: pid 0 is this thread; `others` is a whole cpu_set_t of the size passed.
    if unsafe { libc::sched_setaffinity(0, size, &others) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: no arguments, no effect on memory.
    let now = usize::try_from(unsafe { libc::sched_getcpu() }).ok();
    // SAFETY: pid 0 is this thread; `allowed` is a whole cpu_set_t of the size passed.
    if unsafe { libc::sched_setaffinity(0, size, &allowed) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(now)
}

impl fmt::Display for CpuList {
    /// The list as `parse` reads it, one number per CPU.
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        let parts: Vec<String> = self.0.iter().map(usize::to_string).collect();
        f.write_str(&parts.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn this_cpu() -> usize {
        // SAFETY: no arguments, no effect on memory.
        usize::try_from(unsafe { libc::sched_getcpu() }).unwrap()
    }

    #[test]
    fn a_thread_steps_off_its_cpu_and_keeps_its_affinity() {
        std::thread::spawn(|| {
            let allowed = CpuList::of_this_thread().unwrap();
            let cpu = this_cpu();
            match step_off(cpu).unwrap() {
                Some(went) => {
                    assert_ne!(went, cpu, "stayed");
                    assert!(allowed.cpus().contains(&went), "went outside its CPUs");
                }
                None => assert_eq!(allowed.cpus(), [cpu], "stayed with others allowed"),
            }
            assert_eq!(
                CpuList::of_this_thread().unwrap(),
                allowed,
                "affinity not restored"
            );
            // A thread with one CPU stays on it.
            let one = CpuList(vec![this_cpu()]);
            one.pin_this_thread().unwrap();
            assert_eq!(step_off(one.0[0]).unwrap(), None);
            assert_eq!(CpuList::of_this_thread().unwrap(), one);
        })
        .join()
        .unwrap();
    }

    #[test]
    fn lists_ranges_and_repeats_read_as_the_kernel_writes_them() {
        let list = CpuList::parse("3,0-2,2").unwrap();
        assert_eq!(list, CpuList(vec![0, 1, 2, 3]));
        assert_eq!(CpuList::parse(&list.to_string()).unwrap(), list);
        for bad in [
            "",
            "a",
            "3-1",
            "1-",
            "-1",
            "1,,2",
            "5000",
            "0-99999999999999999999",
        ] {
            assert!(CpuList::parse(bad).is_err(), "{bad:?} accepted");
        }
    }
}
