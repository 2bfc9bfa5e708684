//! Scheduling priority of the node's service threads: the transport thread, the fault
//! readers, the RDMA poller (the data path), the driver and the monitor.
//!
//! A node must answer its peers while its application computes: an invalidation, a page it
//! holds writable, a barrier arrival. At the application's priority the kernel lets the
//! computing thread keep its CPU, and a service thread that became runnable without a
//! wake-up (preempted by the application thread it just woke, or after yielding) waits for
//! the next scheduler tick, up to 4 ms at 250 Hz, while every peer waiting on it waits too.
//! Traced with the kernel's `sched_switch` events in Jacobi 2048² at 2 pinned nodes, that
//! made an iteration take 2–3× its compute. Nice -20 was not enough: the application thread,
//! woken after a long sleep, still preempted the transport thread that woke it. A real-time
//! thread is never preempted by a normal one, so the data path runs `SCHED_FIFO` (priority 1,
//! the lowest) where allowed.
//!
//! This is safe for the application because service threads sleep unless a message or a
//! fault comes: the transport polls only while an application thread of the node waits on
//! it (`runtime::awaiting`), for a bounded time, yielding between polls, and past its first
//! 50 µs as a normal thread (`ServiceThreads::polling`); where nodes share CPUs it polls
//! 20 µs at most (`OVERSUBSCRIBED_SPIN`). Polling 100 µs real-time was measured too: with 4
//! nodes on 2 CPUs it kept other nodes' application threads off their CPU (a barrier 160 µs
//! instead of 44, a lock hand-off 247 µs instead of 123).

use std::sync::Once;
use std::sync::atomic::{AtomicI32, Ordering};

use crate::ServicePriority;

/// `obtained`'s encoding of [`ServicePriority::Realtime`] (nice values are -20..=19).
const REALTIME: i32 = i32::MIN;

/// The real-time priority the data path asks for: the lowest, above every normal thread.
const FIFO_PRIORITY: i32 = 1;

/// Which service thread asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    /// Runs when a message or a fault comes, briefly: may be real-time.
    DataPath,
    /// The driver and the monitor: slow work (an allocation round, a file merge) that must
    /// not hold a CPU against the application; the highest nice value at most.
    Background,
}

/// The priority a node's service threads ask for, and what the data path got.
#[derive(Debug)]
pub(crate) struct ServiceThreads {
    asked: ServicePriority,
    obtained: AtomicI32,
}

impl ServiceThreads {
    pub(crate) fn new(asked: ServicePriority) -> Self {
        ServiceThreads {
            asked,
            obtained: AtomicI32::new(crate::raw::thread_nice()),
        }
    }

    /// Gives the calling thread the asked priority, or the closest one allowed (said once
    /// per process on stderr when that is lower).
    pub(crate) fn apply_to_current_thread(&self, role: Role) {
        let wanted = wanted(self.asked, role);
        let got = match wanted {
            ServicePriority::Realtime => match crate::raw::set_thread_fifo(FIFO_PRIORITY) {
                Ok(()) => ServicePriority::Realtime,
                Err(_) => ServicePriority::Nice(nice_at_most(-20)),
            },
            ServicePriority::Nice(nice) => ServicePriority::Nice(nice_at_most(nice)),
        };
        if role == Role::DataPath {
            self.obtained.store(encode(got), Ordering::Relaxed);
        }
        if got != wanted {
            say_once(wanted, got);
        }
    }

    /// A real-time data-path thread has polled for a while (`on`) or stops polling: it polls
    /// on as a normal thread, so that polling (meant for a CPU nobody else wants: the node's
    /// application waits) never keeps a CPU from a thread that wants it, such as another
    /// program's. It is real-time again before it sleeps (a
    /// message must preempt the application) and before it wakes an application thread
    /// (`before_waking`: the woken thread must not preempt it), which costs one system
    /// call (~1 µs here); requests it serves meanwhile need neither.
    pub(crate) fn polling(&self, on: bool) {
        if !on {
            before_waking();
        } else if self.obtained() == ServicePriority::Realtime && !DEMOTED.get() {
            match crate::raw::set_thread_normal() {
                Ok(()) => DEMOTED.set(true),
                Err(e) => tracing::warn!(error = %e, "cannot poll as a normal thread"),
            }
        }
    }

    /// The priority the data path's threads run at.
    pub(crate) fn obtained(&self) -> ServicePriority {
        match self.obtained.load(Ordering::Relaxed) {
            REALTIME => ServicePriority::Realtime,
            nice => ServicePriority::Nice(nice),
        }
    }
}

thread_local! {
    /// This real-time thread polls as a normal one now (see `ServiceThreads::polling`).
    static DEMOTED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Called before waking an application thread: a service thread polling as a normal thread
/// is real-time again first. Nothing on any other thread.
pub(crate) fn before_waking() {
    if DEMOTED.get() {
        DEMOTED.set(false);
        if let Err(e) = crate::raw::set_thread_fifo(FIFO_PRIORITY) {
            tracing::warn!(error = %e, "a polling service thread cannot be real-time again");
        }
    }
}

/// How long the transport polls after activity where nodes share CPUs (`oversubscribed`),
/// at most. A long poll there loses either way: at real-time priority it keeps another
/// node off the CPU, and at normal priority the poller, having yielded to a node that
/// computes, runs again only at the next scheduler tick, with whatever frame came meanwhile.
/// A short real-time poll costs another node at most this much per burst of activity and
/// still catches the answers of a node that mostly waits. Measured with 4 nodes on 2 CPUs
/// (medians of 6 runs of Jacobi 2048² × 100 unpinned, and of 2 runs of `dsm-bench latency`,
/// interleaved): polling 100 µs politely made Jacobi 0.89 s against 0.70 s without polling
/// (0.68 s before this scheduling work); not polling made a lock hand-off 313–326 µs and a
/// barrier 82–94 µs (123 and 44 before); polling 20 µs real-time gave Jacobi 0.68 s (0.67 s
/// without polling in the same session), a lock hand-off 119–134 µs and a barrier 58–73 µs.
pub(crate) const OVERSUBSCRIBED_SPIN: std::time::Duration = std::time::Duration::from_micros(20);

/// Whether this host runs more nodes than it has CPUs online (nodes whose listener is on
/// this node's address or on loopback count as this host's): then nodes share CPUs, and the
/// transport polls only briefly (`OVERSUBSCRIBED_SPIN`).
pub(crate) fn oversubscribed(rank: dsm_wire::NodeId, listeners: &[std::net::SocketAddr]) -> bool {
    let Some(mine) = listeners.get(rank as usize).map(|a| a.ip()) else {
        return false;
    };
    let here = listeners
        .iter()
        .filter(|a| a.ip() == mine || (a.ip().is_loopback() && mine.is_loopback()))
        .count();
    here > crate::raw::online_cpus()
}

/// What `asked` means for a thread of `role`.
fn wanted(asked: ServicePriority, role: Role) -> ServicePriority {
    match (asked, role) {
        (ServicePriority::Realtime, Role::Background) => ServicePriority::Nice(-20),
        (asked, _) => asked,
    }
}

fn encode(priority: ServicePriority) -> i32 {
    match priority {
        ServicePriority::Realtime => REALTIME,
        ServicePriority::Nice(nice) => nice,
    }
}

/// Sets the calling thread's nice value to `asked`, or the lowest above it that
/// `RLIMIT_NICE` allows, or leaves it; returns the value it has then.
fn nice_at_most(asked: i32) -> i32 {
    let current = crate::raw::thread_nice();
    if crate::raw::set_thread_nice(asked).is_ok() {
        return asked;
    }
    let floor = crate::raw::nice_floor().max(asked);
    if floor < current && crate::raw::set_thread_nice(floor).is_ok() {
        floor
    } else {
        current
    }
}

fn say_once(asked: ServicePriority, got: ServicePriority) {
    static SAID: Once = Once::new();
    SAID.call_once(|| {
        eprintln!(
            "dsm: service threads run at {got}, not {asked}: without CAP_SYS_NICE or higher \
             limits (`ulimit -r 1` for real-time, `ulimit -e 40` for nice -20), a node whose \
             application computes may answer its peers a scheduler tick late \
             (DSM_SERVICE_PRIORITY={} silences this)",
            got.env_value()
        );
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_on_a_thread(threads: ServiceThreads, role: Role) -> (i32, libc::c_int, ServicePriority) {
        std::thread::spawn(move || {
            threads.apply_to_current_thread(role);
            // SAFETY: sched_getscheduler takes a pid (0: the calling thread), no memory.
            let policy = unsafe { libc::sched_getscheduler(0) };
            (crate::raw::thread_nice(), policy, threads.obtained())
        })
        .join()
        .unwrap()
    }

    #[test]
    fn more_nodes_than_cpus_on_one_host_is_oversubscribed() {
        let cpus = crate::raw::online_cpus();
        let at = |ip: &str, n: usize| -> Vec<std::net::SocketAddr> {
            (0..n)
                .map(|i| format!("{ip}:{}", 7000 + i).parse().unwrap())
                .collect()
        };
        assert!(!oversubscribed(0, &at("127.0.0.1", cpus)));
        assert!(oversubscribed(0, &at("127.0.0.1", cpus + 1)));
        let mut spread = at("10.0.0.1", 1);
        spread.extend(at("10.0.0.2", cpus + 1));
        assert!(
            !oversubscribed(0, &spread),
            "the others are on another host"
        );
        assert!(oversubscribed(1, &spread));
    }

    #[test]
    fn lowering_priority_always_works() {
        let got = run_on_a_thread(
            ServiceThreads::new(ServicePriority::Nice(7)),
            Role::DataPath,
        );
        assert_eq!(got, (7, libc::SCHED_OTHER, ServicePriority::Nice(7)));
    }

    #[test]
    fn the_data_path_is_real_time_where_allowed_and_says_what_it_got() {
        let (nice, policy, obtained) = run_on_a_thread(
            ServiceThreads::new(ServicePriority::Realtime),
            Role::DataPath,
        );
        match obtained {
            ServicePriority::Realtime => {
                assert_eq!(policy & !libc::SCHED_RESET_ON_FORK, libc::SCHED_FIFO)
            }
            ServicePriority::Nice(n) => {
                assert_eq!(policy, libc::SCHED_OTHER);
                assert_eq!(n, nice);
            }
        }
        assert_eq!(
            crate::raw::thread_nice(),
            0,
            "the calling thread keeps its own"
        );
    }

    #[test]
    fn background_threads_never_become_real_time() {
        let (_, policy, _) = run_on_a_thread(
            ServiceThreads::new(ServicePriority::Realtime),
            Role::Background,
        );
        assert_eq!(policy, libc::SCHED_OTHER);
    }
}
