//! `--sched-idle`: the clients yield the CPU to the server under test.
//!
//! On a machine that runs the clients and the server together, every datagram the server sends
//! wakes a client thread, and the scheduler may let that thread preempt the server in the middle
//! of its `sendmmsg` batch; when both cores are busy the server also waits behind the clients to
//! be woken at all. Neither happens when the clients are other machines. In the `SCHED_IDLE`
//! class the clients run only when nothing else wants the CPU, so the server runs as soon as a
//! datagram arrives: its delay is then its own, and its CPU per packet is that of a server
//! woken for nearly every datagram, not one that batches what queued while it waited for a
//! core (docs/performance.md, "The clients' scheduling class"). The raw baseline and a server
//! the tool starts keep the normal class.

use std::io;
use std::os::unix::process::CommandExt as _;
use std::process::Command;

use switchboard::media::net::set_thread_scheduler;

/// The calling thread's scheduling class.
fn policy() -> libc::c_int {
    // SAFETY: sched_getscheduler(0) only reads the calling thread's class.
    unsafe { libc::sched_getscheduler(0) }
}

/// The calling thread, and every thread it creates from now on, runs at `SCHED_IDLE` (whose
/// only priority is 0).
pub fn idle() -> io::Result<()> {
    set_thread_scheduler(libc::SCHED_IDLE, 0)
}

/// The calling thread leaves `SCHED_IDLE` for the normal class (what a server, or the raw
/// baseline that stands for one, runs in). Any other class is left as it is.
///
/// Async-signal-safe: it is also what a spawned server runs between `fork` and `exec`.
pub fn normal_if_idle() -> io::Result<()> {
    if policy() == libc::SCHED_IDLE {
        set_thread_scheduler(libc::SCHED_OTHER, 0)
    } else {
        Ok(())
    }
}

/// `command`'s process starts in the normal class even when the caller is an idle client.
pub fn spawn_normal(command: &mut Command) -> &mut Command {
    // SAFETY: `normal_if_idle` makes two system calls and allocates nothing, so it is
    // async-signal-safe, as code between fork and exec must be.
    unsafe { command.pre_exec(normal_if_idle) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_is_inherited_by_new_threads_and_normal_if_idle_leaves_it() {
        std::thread::spawn(|| {
            assert_eq!(policy(), libc::SCHED_OTHER);
            idle().expect("any thread may lower its own class");
            assert_eq!(policy(), libc::SCHED_IDLE);
            let child = std::thread::spawn(policy).join().unwrap();
            assert_eq!(
                child,
                libc::SCHED_IDLE,
                "threads created afterwards inherit it"
            );
            normal_if_idle().expect("SCHED_IDLE → SCHED_OTHER");
            assert_eq!(policy(), libc::SCHED_OTHER);
            normal_if_idle().expect("a no-op in the normal class");
            assert_eq!(policy(), libc::SCHED_OTHER);
        })
        .join()
        .unwrap();
    }

    #[test]
    fn a_server_spawned_by_an_idle_client_runs_in_the_normal_class() {
        // The 41st field of /proc/<pid>/stat is the scheduling policy, here that of `cat`.
        let child_policy = |normal: bool| {
            let mut command = Command::new("cat");
            command.arg("/proc/self/stat");
            if normal {
                spawn_normal(&mut command);
            }
            let stat = String::from_utf8(command.output().expect("run cat").stdout).unwrap();
            let fields: Vec<&str> = stat.rsplit_once(") ").unwrap().1.split(' ').collect();
            fields[41 - 3].parse::<libc::c_int>().unwrap()
        };
        std::thread::spawn(move || {
            idle().unwrap();
            assert_eq!(
                child_policy(false),
                libc::SCHED_IDLE,
                "a plain child inherits it"
            );
            assert_eq!(child_policy(true), libc::SCHED_OTHER);
        })
        .join()
        .unwrap();
    }
}
