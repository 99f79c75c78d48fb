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
//!
//! `--client-cpus`: the clients keep to some CPUs and leave the others to the server, which,
//! with the raw baseline, may run on all of the CPUs the tool was given.

use std::io;
use std::mem::{size_of, zeroed};
use std::os::unix::process::CommandExt as _;
use std::process::Command;
use std::sync::OnceLock;

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

/// The CPUs the tool was started on, saved by `confine` before it narrowed them.
static STARTED_ON: OnceLock<libc::cpu_set_t> = OnceLock::new();

fn affinity() -> io::Result<libc::cpu_set_t> {
    // SAFETY: cpu_set_t is plain data; all zeroes is the empty set.
    let mut set: libc::cpu_set_t = unsafe { zeroed() };
    // SAFETY: `set` is a live cpu_set_t of the size passed; pid 0 is the calling thread.
    if unsafe { libc::sched_getaffinity(0, size_of::<libc::cpu_set_t>(), &mut set) } == 0 {
        Ok(set)
    } else {
        Err(io::Error::last_os_error())
    }
}

fn set_affinity(set: &libc::cpu_set_t) -> io::Result<()> {
    // SAFETY: `set` is a live cpu_set_t of the size passed; pid 0 is the calling thread.
    if unsafe { libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), set) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The calling thread, and every thread it creates from now on, runs only on `cpus`. The CPUs
/// it ran on before are kept for `unconfined`.
pub fn confine(cpus: &[usize]) -> io::Result<()> {
    let started_on = affinity()?;
    // SAFETY: cpu_set_t is plain data; all zeroes is the empty set.
    let mut set: libc::cpu_set_t = unsafe { zeroed() };
    for &cpu in cpus {
        // SAFETY (both): CPU_ISSET and CPU_SET touch only the bit of `cpu`, which is inside
        // the set once the first test passed.
        if cpu >= libc::CPU_SETSIZE as usize || !unsafe { libc::CPU_ISSET(cpu, &started_on) } {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("CPU {cpu} is not one this process may run on"),
            ));
        }
        unsafe { libc::CPU_SET(cpu, &mut set) };
    }
    STARTED_ON.get_or_init(|| started_on);
    set_affinity(&set)
}

/// The calling thread runs on every CPU the tool was started on again (a no-op when
/// `confine` was never called).
///
/// Async-signal-safe: it is also what a spawned server runs between `fork` and `exec`.
pub fn unconfined() -> io::Result<()> {
    match STARTED_ON.get() {
        Some(set) => set_affinity(set),
        None => Ok(()),
    }
}

/// `command`'s process starts in the normal class, on every CPU the tool was started on, even
/// when the caller is an idle or a confined client.
pub fn spawn_normal(command: &mut Command) -> &mut Command {
    // SAFETY: `normal_if_idle` and `unconfined` make at most three system calls, read a static
    // that is set before any spawn, and allocate nothing, so they are async-signal-safe, as
    // code between fork and exec must be.
    unsafe {
        command.pre_exec(|| {
            normal_if_idle()?;
            unconfined()
        })
    }
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

    /// The CPUs in `set`.
    fn cpus(set: &libc::cpu_set_t) -> Vec<usize> {
        (0..libc::CPU_SETSIZE as usize)
            // SAFETY: CPU_ISSET reads one bit of a live set, within its size.
            .filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, set) })
            .collect()
    }

    /// The CPUs a process started by `command` may run on (its `Cpus_allowed_list`).
    fn allowed(command: &mut Command) -> Vec<usize> {
        let status = String::from_utf8(
            command
                .args(["/proc/self/status"])
                .output()
                .expect("run cat")
                .stdout,
        )
        .unwrap();
        let list = status
            .lines()
            .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
            .unwrap()
            .trim();
        list.split(',')
            .flat_map(|part| match part.split_once('-') {
                Some((a, b)) => (a.parse().unwrap()..=b.parse().unwrap()).collect::<Vec<_>>(),
                None => vec![part.parse().unwrap()],
            })
            .collect()
    }

    #[test]
    fn confined_threads_pass_it_on_and_a_spawned_server_gets_every_cpu_back() {
        let all = cpus(&affinity().unwrap());
        let first = all[0];
        std::thread::spawn(move || {
            confine(&[first]).expect("narrowing one's own CPUs needs no privilege");
            assert_eq!(cpus(&affinity().unwrap()), vec![first]);
            let child = std::thread::spawn(|| cpus(&affinity().unwrap()))
                .join()
                .unwrap();
            assert_eq!(child, vec![first], "threads created afterwards inherit it");
            assert_eq!(allowed(&mut Command::new("cat")), vec![first]);
            assert_eq!(allowed(spawn_normal(&mut Command::new("cat"))), all);
            unconfined().unwrap();
            assert_eq!(cpus(&affinity().unwrap()), all);
        })
        .join()
        .unwrap();
    }

    #[test]
    fn confining_to_a_cpu_the_process_may_not_use_is_refused() {
        std::thread::spawn(|| {
            let before = cpus(&affinity().unwrap());
            for cpu in [
                libc::CPU_SETSIZE as usize - 1,
                libc::CPU_SETSIZE as usize + 5,
            ] {
                let err = confine(&[cpu]).unwrap_err();
                assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{err}");
            }
            assert_eq!(cpus(&affinity().unwrap()), before, "left as it was");
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
