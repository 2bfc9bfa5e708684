//! Where node processes run: the CPUs this process may use, and pinning the calling thread
//! (and every thread it starts afterwards, which inherit the mask) to one of them.

use anyhow::ensure;

/// The CPUs in this process's affinity mask, ascending.
pub(crate) fn allowed_cpus() -> anyhow::Result<Vec<usize>> {
    // SAFETY: all-zero is a valid, empty cpu_set_t.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a cpu_set_t of the size passed; pid 0 is the calling thread.
    let rc = unsafe { libc::sched_getaffinity(0, size_of::<libc::cpu_set_t>(), &raw mut set) };
    ensure!(
        rc == 0,
        "sched_getaffinity: {}",
        std::io::Error::last_os_error()
    );
    let cpus: Vec<usize> = (0..set_size())
        // SAFETY: `cpu` is below CPU_SETSIZE, the bound of the set.
        .filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) })
        .collect();
    ensure!(!cpus.is_empty(), "the affinity mask allows no CPU");
    Ok(cpus)
}

/// The CPU rank `rank` is pinned to: the `rank % count`-th allowed CPU.
pub(crate) fn cpu_for(rank: u32, cpus: &[usize]) -> usize {
    cpus[rank as usize % cpus.len()]
}

/// Pins the calling thread to `cpu` (`sched_setaffinity`); threads it starts later inherit
/// the mask, so call it before starting any (before `Node::join`) to pin the whole process.
pub(crate) fn pin_to(cpu: usize) -> anyhow::Result<()> {
    ensure!(cpu < set_size(), "CPU {cpu} is beyond CPU_SETSIZE");
    // SAFETY: all-zero is a valid, empty cpu_set_t.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `cpu` is below CPU_SETSIZE (checked above).
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: `set` is a cpu_set_t of the size passed; pid 0 is the calling thread.
    let rc = unsafe { libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &raw const set) };
    ensure!(
        rc == 0,
        "sched_setaffinity(CPU {cpu}): {}",
        std::io::Error::last_os_error()
    );
    Ok(())
}

/// CPU_SETSIZE: how many CPUs a `cpu_set_t` holds.
fn set_size() -> usize {
    usize::try_from(libc::CPU_SETSIZE).expect("CPU_SETSIZE is positive")
}
