//! Every thread of this process on one CPU for a while: the threads that
//! run (both runtime workers among them) share that CPU, so a hand-off
//! between tasks never wakes another core.

use std::collections::BTreeSet;
use std::io;

use anyhow::{Context, Result, anyhow};

/// Passes over the process's threads, at most, until one finds no thread
/// the previous did not (a thread started during a pass may have taken its
/// starter's mask from before the pass).
const PASSES: usize = 5;

/// While it lives, every thread of the process runs on one CPU (the first
/// this thread may use), and so do the threads they start. [`restore`]
/// (or, failing that, dropping it) gives every thread of the process the
/// CPUs this thread had before [`pin`](Self::pin).
///
/// [`restore`]: Self::restore
pub(crate) struct OneCore {
    before: libc::cpu_set_t,
    restored: bool,
}

impl OneCore {
    pub(crate) fn pin() -> Result<Self> {
        let before = cpus_of(0)?;
        // The guard first: if pinning fails part-way, dropping it gives
        // back the CPUs of the threads already pinned.
        let guard = Self {
            before,
            restored: false,
        };
        let cpu = (0..libc::CPU_SETSIZE as usize)
            // SAFETY: CPU_ISSET reads the set it is given; `c` is below
            // CPU_SETSIZE.
            .find(|&c| unsafe { libc::CPU_ISSET(c, &before) })
            .context("this process may run on no CPU")?;
        // SAFETY: an all-zero cpu_set_t is the empty set.
        let mut one: libc::cpu_set_t = unsafe { std::mem::zeroed() };
        // SAFETY: CPU_SET writes within the set it is given; `cpu` is below
        // CPU_SETSIZE.
        unsafe { libc::CPU_SET(cpu, &mut one) };
        every_thread(&one).context("pinning the threads to one CPU")?;
        Ok(guard)
    }

    /// Gives every thread of the process the CPUs the pinning thread had
    /// before.
    pub(crate) fn restore(mut self) -> Result<()> {
        self.restored = true;
        every_thread(&self.before).context("giving the threads their CPUs back")
    }
}

impl Drop for OneCore {
    fn drop(&mut self) {
        if !self.restored
            && let Err(e) = every_thread(&self.before)
        {
            eprintln!("tenet bench: could not give the threads their CPUs back: {e:#}");
        }
    }
}

/// The CPUs thread `tid` may run on (0: the calling thread).
fn cpus_of(tid: libc::pid_t) -> Result<libc::cpu_set_t> {
    // SAFETY: an all-zero cpu_set_t is a valid set to fill.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: sched_getaffinity writes at most the size given into `set`.
    let r =
        unsafe { libc::sched_getaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
    if r != 0 {
        return Err(io::Error::last_os_error())
            .with_context(|| format!("reading the CPUs of thread {tid}"));
    }
    Ok(set)
}

/// Sets the CPUs of every thread of the process, those in /proc/self/task,
/// pass after pass until one finds no new thread. A thread that ended
/// meanwhile is skipped; any other failure is the error, after every
/// other thread was set.
fn every_thread(set: &libc::cpu_set_t) -> Result<()> {
    let mut seen = BTreeSet::new();
    for _ in 0..PASSES {
        let mut first_error = None;
        let mut new = false;
        for tid in threads()? {
            new |= seen.insert(tid);
            // SAFETY: sched_setaffinity reads `set`, of the size given. The
            // id is one of this process's threads, or, if that thread
            // ended and its id was reused at once, a thread this user may
            // set anyway: the worst is another process of this user pinned
            // for the benchmark's run.
            let r = unsafe {
                libc::sched_setaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), set)
            };
            if r != 0 {
                let e = io::Error::last_os_error();
                if e.raw_os_error() != Some(libc::ESRCH) && first_error.is_none() {
                    first_error = Some(anyhow!(e).context(format!("thread {tid}")));
                }
            }
        }
        if let Some(e) = first_error {
            return Err(e);
        }
        if !new {
            return Ok(());
        }
    }
    Ok(())
}

/// The ids of this process's threads now.
fn threads() -> Result<Vec<libc::pid_t>> {
    let mut ids = Vec::new();
    for entry in std::fs::read_dir("/proc/self/task").context("listing this process's threads")? {
        let name = entry.context("listing this process's threads")?.file_name();
        let tid = name
            .to_str()
            .and_then(|s| s.parse().ok())
            .with_context(|| format!("a thread id in /proc/self/task: {name:?}"))?;
        ids.push(tid);
    }
    Ok(ids)
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;

    use super::*;

    /// The CPUs of thread `tid`, listed.
    fn cpus(tid: libc::pid_t) -> Vec<usize> {
        let set = cpus_of(tid).unwrap();
        (0..libc::CPU_SETSIZE as usize)
            // SAFETY: as in `OneCore::pin`.
            .filter(|&c| unsafe { libc::CPU_ISSET(c, &set) })
            .collect()
    }

    /// A thread that reports its id, then waits until `stop` is dropped.
    fn parked() -> (libc::pid_t, mpsc::Sender<()>, std::thread::JoinHandle<()>) {
        let (id_tx, id_rx) = mpsc::channel();
        let (stop_tx, stop_rx) = mpsc::channel::<()>();
        let h = std::thread::spawn(move || {
            // SAFETY: gettid has no preconditions.
            id_tx.send(unsafe { libc::gettid() }).unwrap();
            let _ = stop_rx.recv();
        });
        (id_rx.recv().unwrap(), stop_tx, h)
    }

    #[test]
    fn every_thread_runs_on_one_cpu_while_pinned_and_gets_its_cpus_back() {
        // SAFETY: gettid has no preconditions.
        let before = cpus(unsafe { libc::gettid() });
        let (old, stop_old, old_h) = parked();
        let pinned = OneCore::pin().unwrap();
        let (new, stop_new, new_h) = parked();
        for tid in [old, new] {
            assert_eq!(cpus(tid), before[..1], "thread {tid} while pinned");
        }
        pinned.restore().unwrap();
        for tid in [old, new] {
            assert_eq!(cpus(tid), before, "thread {tid} after");
        }
        drop((stop_old, stop_new));
        old_h.join().unwrap();
        new_h.join().unwrap();
    }
}
