//! Every thread of this process on one CPU for a while, as `taskset -c`
//! would start it: the exchange's hand-offs between tasks then never wake
//! another core.

use std::io;

use anyhow::{Context, Result};

/// While it lives, every thread of the process runs on one CPU (the first
/// it may use), and so do the threads they start; dropped, every thread
/// goes back to the CPUs the process had.
pub(crate) struct OneCore {
    before: libc::cpu_set_t,
}

impl OneCore {
    pub(crate) fn pin() -> Result<Self> {
        let before = this_thread()?;
        // SAFETY: CPU_ISSET reads the set it is given, within CPU_SETSIZE.
        let cpu = (0..libc::CPU_SETSIZE as usize)
            .find(|&c| unsafe { libc::CPU_ISSET(c, &before) })
            .context("this process may run on no CPU")?;
        // SAFETY: a zeroed cpu_set_t is the empty set; CPU_SET writes
        // within it.
        let mut one: libc::cpu_set_t = unsafe { std::mem::zeroed() };
        unsafe { libc::CPU_SET(cpu, &mut one) };
        // Twice: a thread started while the first pass ran may have taken
        // its starter's mask from before.
        every_thread(&one)?;
        every_thread(&one)?;
        Ok(Self { before })
    }
}

impl Drop for OneCore {
    fn drop(&mut self) {
        for _ in 0..2 {
            if let Err(e) = every_thread(&self.before) {
                eprintln!("tenet bench: could not give the threads their CPUs back: {e:#}");
            }
        }
    }
}

/// The CPUs the calling thread may run on.
fn this_thread() -> Result<libc::cpu_set_t> {
    // SAFETY: a zeroed cpu_set_t is a valid set for sched_getaffinity to
    // fill; it writes at most the size given.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    let r = unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
    if r != 0 {
        return Err(io::Error::last_os_error()).context("reading this thread's CPUs");
    }
    Ok(set)
}

/// Sets the CPUs of every thread of the process (those in /proc/self/task;
/// one that ended meanwhile is skipped).
fn every_thread(set: &libc::cpu_set_t) -> Result<()> {
    for entry in std::fs::read_dir("/proc/self/task").context("listing this process's threads")? {
        let name = entry.context("listing this process's threads")?.file_name();
        let tid: libc::pid_t = name
            .to_str()
            .and_then(|s| s.parse().ok())
            .with_context(|| format!("a thread id in /proc/self/task: {name:?}"))?;
        // SAFETY: sched_setaffinity reads the set it is given, of the size
        // given.
        let r =
            unsafe { libc::sched_setaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), set) };
        if r != 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::ESRCH) {
                return Err(e).with_context(|| format!("setting the CPUs of thread {tid}"));
            }
        }
    }
    Ok(())
}
