//! RTCP sender reports for the legs the worker writes.
//!
//! Forwarded packets are written past `rtc`'s interceptors (one chain walk per packet and leg
//! was a fifth of the media thread's time at 20 participants), so the worker counts what each
//! leg sent and reports it itself, as `rtc`'s sender-report interceptor would: once a second
//! per subscribe connection, the leg's packet and octet counts and the RTP time that
//! corresponds to the wall-clock time of the report. Receivers use the latter to synchronise a
//! publisher's audio with its video, so it is extrapolated from the newest frame's timestamp
//! and the instant that frame was forwarded.

use std::time::{Duration, Instant};

use rtc::rtcp::sender_report::SenderReport;
use rtc::shared::time::SystemInstant;

/// How often each subscribe connection reports its legs (as `rtc`'s interceptor does).
pub const INTERVAL: Duration = Duration::from_secs(1);

/// What one leg has sent.
#[derive(Debug, Default, Clone, Copy)]
pub struct SentStream {
    packets: u32,
    octets: u32,
    /// The newest frame's RTP timestamp on this leg, and when its first packet was written.
    frame: Option<(u32, Instant)>,
    /// What `rtc`'s statistics have not been told yet (see `take_unrecorded`).
    unrecorded: Option<Unrecorded>,
}

/// Packets a leg wrote that `rtc`'s outbound statistics do not count yet: the worker writes
/// past the interceptors, which count every packet with a hash lookup into the connection's
/// statistics, and hands them these sums with each sender report instead
/// (`RTCPeerConnection::record_rtp_sent`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unrecorded {
    pub packets: u64,
    pub header_bytes: u64,
    pub payload_bytes: u64,
    /// When the newest of them was written.
    pub last_sent: Instant,
}

impl SentStream {
    /// Counts one RTP packet written on the leg (a retransmission too: the count is of
    /// packets sent).
    pub fn on_sent(&mut self, now: Instant, timestamp: u32, header_len: usize, payload_len: usize) {
        self.packets = self.packets.wrapping_add(1);
        self.octets = self.octets.wrapping_add(payload_len as u32);
        let unrecorded = self.unrecorded.get_or_insert(Unrecorded {
            packets: 0,
            header_bytes: 0,
            payload_bytes: 0,
            last_sent: now,
        });
        unrecorded.packets += 1;
        unrecorded.header_bytes += header_len as u64;
        unrecorded.payload_bytes += payload_len as u64;
        unrecorded.last_sent = now;
        // A newer frame moves the mapping; an older one (a retransmission, a late packet) not.
        let newer = match self.frame {
            None => true,
            Some((last, _)) => (timestamp.wrapping_sub(last) as i32) > 0,
        };
        if newer {
            self.frame = Some((timestamp, now));
        }
    }

    /// What was sent since the last call, if anything.
    pub fn take_unrecorded(&mut self) -> Option<Unrecorded> {
        self.unrecorded.take()
    }

    /// The report for a leg with `ssrc` at `clock_rate` Hz, at the monotonic instant `now`
    /// whose wall-clock time is `wall`; none before the leg sent anything.
    pub fn report(
        &self,
        ssrc: u32,
        clock_rate: u32,
        now: Instant,
        wall: Duration,
    ) -> Option<SenderReport> {
        let (timestamp, at) = self.frame?;
        let elapsed = now.saturating_duration_since(at).as_secs_f64();
        Some(SenderReport {
            ssrc,
            ntp_time: SystemInstant::unix2ntp(wall),
            rtp_time: timestamp.wrapping_add((elapsed * f64::from(clock_rate)) as u32),
            packet_count: self.packets,
            octet_count: self.octets,
            ..Default::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_counts_and_extrapolates_the_newest_frame() {
        let t0 = Instant::now();
        let mut leg = SentStream::default();
        assert!(leg.report(7, 90_000, t0, Duration::from_secs(1)).is_none());
        leg.on_sent(t0, 1000, 12, 1100);
        leg.on_sent(t0 + Duration::from_millis(1), 1000, 12, 900);
        // The next frame, 33 ms later; then a retransmission of the first.
        leg.on_sent(t0 + Duration::from_millis(33), 3970, 20, 1100);
        leg.on_sent(t0 + Duration::from_millis(40), 1000, 12, 1100);

        let wall = Duration::from_secs(1_700_000_000);
        let sr = leg
            .report(7, 90_000, t0 + Duration::from_millis(133), wall)
            .unwrap();
        assert_eq!(sr.ssrc, 7);
        assert_eq!(sr.packet_count, 4);
        assert_eq!(sr.octet_count, 4200);
        // 100 ms after the newest frame: 9000 ticks at 90 kHz.
        assert_eq!(sr.rtp_time, 3970 + 9000);
        assert_eq!(sr.ntp_time >> 32, 1_700_000_000 + 0x83AA_7E80);
    }

    #[test]
    fn hands_over_what_statistics_have_not_counted_once() {
        let t0 = Instant::now();
        let mut leg = SentStream::default();
        assert_eq!(leg.take_unrecorded(), None);
        leg.on_sent(t0, 1000, 12, 1100);
        leg.on_sent(t0 + Duration::from_millis(5), 1000, 20, 900);
        assert_eq!(
            leg.take_unrecorded(),
            Some(Unrecorded {
                packets: 2,
                header_bytes: 32,
                payload_bytes: 2000,
                last_sent: t0 + Duration::from_millis(5),
            })
        );
        assert_eq!(leg.take_unrecorded(), None);
        leg.on_sent(t0 + Duration::from_millis(9), 1000, 12, 100);
        assert_eq!(leg.take_unrecorded().map(|u| u.packets), Some(1));
        // The sender report's counts are of everything sent, not since the last hand-over.
        let sr = leg.report(1, 90_000, t0, Duration::ZERO).unwrap();
        assert_eq!((sr.packet_count, sr.octet_count), (3, 2100));
    }

    #[test]
    fn timestamps_wrap() {
        let t0 = Instant::now();
        let mut leg = SentStream::default();
        leg.on_sent(t0, u32::MAX - 10, 12, 100);
        leg.on_sent(t0 + Duration::from_millis(20), 950, 12, 100);
        let sr = leg.report(1, 48_000, t0 + Duration::from_millis(20), Duration::ZERO);
        assert_eq!(sr.unwrap().rtp_time, 950);
    }
}
