//! The publishers' clock: wakes a task at its send time to within tens of microseconds.
//!
//! tokio's timer wheel counts whole milliseconds, so every packet that twenty publishers have
//! due within the same millisecond leaves in one burst when the tick comes round: bursts of
//! five to ten packets arrived at the server at once, although twenty browsers on twenty
//! machines have independent clocks. Here one thread holds every pending send time and wakes
//! each task at its own instant.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::LazyLock;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

/// A sleeper: when to wake it, its place in line (ties wake in the order they came), and how.
struct Sleeper {
    at: Instant,
    seq: u64,
    wake: oneshot::Sender<()>,
}

impl PartialEq for Sleeper {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}

impl Eq for Sleeper {}

impl PartialOrd for Sleeper {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Sleeper {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

static CLOCK: LazyLock<mpsc::Sender<(Instant, oneshot::Sender<()>)>> = LazyLock::new(|| {
    let (tx, rx) = mpsc::channel();
    std::thread::Builder::new()
        .name("publish-clock".into())
        .spawn(move || run(rx))
        .expect("spawn the publishers' clock thread");
    tx
});

fn run(rx: mpsc::Receiver<(Instant, oneshot::Sender<()>)>) {
    // The kernel may otherwise defer a wake-up by 50 µs to merge it with others.
    // SAFETY: PR_SET_TIMERSLACK takes an integer and touches only this thread.
    unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong) };
    let mut sleepers = BinaryHeap::new();
    let mut seq = 0u64;
    loop {
        let now = Instant::now();
        while sleepers
            .peek()
            .is_some_and(|s: &Reverse<Sleeper>| s.0.at <= now)
        {
            let Reverse(sleeper) = sleepers.pop().expect("peeked");
            let _ = sleeper.wake.send(()); // its task may have gone
        }
        let next = match sleepers.peek() {
            Some(Reverse(s)) => rx.recv_timeout(s.at - now),
            None => rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
        };
        match next {
            Ok((at, wake)) => {
                seq += 1;
                sleepers.push(Reverse(Sleeper { at, seq, wake }));
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
    }
}

/// Waits until `at`, never returning before it.
pub async fn sleep_until(at: Instant) {
    if at <= Instant::now() {
        return;
    }
    let (wake, woken) = oneshot::channel();
    if CLOCK.send((at, wake)).is_ok() && woken.await.is_ok() {
        return;
    }
    tokio::time::sleep_until(at.into()).await; // the clock thread is gone: coarser, still on time
}

/// A periodic schedule: the instants a publisher captures a frame or an audio packet at.
#[derive(Debug, Clone, Copy)]
pub struct Schedule {
    next: Instant,
    period: Duration,
    /// Ticks missed while the task was late all fire at once (a camera's frames are captured
    /// on time and wait for the pacer); otherwise the schedule restarts from the late tick.
    burst: bool,
}

impl Schedule {
    pub fn new(start: Instant, period: Duration, burst: bool) -> Self {
        Self {
            next: start,
            period,
            burst,
        }
    }

    /// When the coming tick is due.
    pub fn due(&self) -> Instant {
        self.next
    }

    /// Moves on after the tick that was due has fired at `fired`.
    pub fn advance(&mut self, fired: Instant) {
        self.next = if self.burst || fired < self.next + self.period {
            self.next + self.period
        } else {
            fired + self.period
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn wakes_each_sleeper_at_its_instant_and_never_before() {
        let start = Instant::now();
        // Registered out of order: the clock keeps them in order.
        let offsets = [11_000u64, 2_000, 5_000, 8_000];
        let woken = futures_util::future::join_all(offsets.map(|us| async move {
            let at = start + Duration::from_micros(us);
            sleep_until(at).await;
            (at, Instant::now())
        }))
        .await;
        for (at, woke) in &woken {
            assert!(woke >= at, "woke {:?} early", *at - *woke);
        }
        let mut order: Vec<_> = woken.iter().map(|w| w.1).zip(offsets).collect();
        order.sort();
        let offsets_in_wake_order: Vec<u64> = order.iter().map(|o| o.1).collect();
        assert_eq!(offsets_in_wake_order, [2_000, 5_000, 8_000, 11_000]);
    }

    #[test]
    fn a_late_tick_bursts_or_restarts_the_schedule() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut video = Schedule::new(t0, ms(33), true);
        let mut audio = Schedule::new(t0, ms(20), false);
        // On time: the next tick is one period on.
        video.advance(t0 + ms(1));
        audio.advance(t0 + ms(1));
        assert_eq!((video.due(), audio.due()), (t0 + ms(33), t0 + ms(20)));
        // 50 ms late: video catches up tick by tick, audio goes on from when it fired.
        video.advance(t0 + ms(83));
        audio.advance(t0 + ms(70));
        assert_eq!((video.due(), audio.due()), (t0 + ms(66), t0 + ms(90)));
    }
}
