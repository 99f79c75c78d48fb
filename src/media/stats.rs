//! Counters of a media worker. Every drop has a name (`Drop`) and a counter.

/// Why a datagram or packet was not forwarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drop {
    /// From an address no peer owns, and not a STUN request naming one of our ufrags.
    UnknownSource,
    /// Not STUN, DTLS or RTP/RTCP by its first byte.
    NotWebRtc,
    /// The peer connection rejected it (bad SRTP auth, malformed DTLS, ...).
    PeerRejected,
    /// RTP of a track nobody in the room subscribes to yet.
    NoSubscribers,
    /// The subscriber's leg is not negotiated or connected yet.
    LegNotReady,
    /// Video before the first keyframe of a new leg.
    WaitingForKeyframe,
    /// The subscriber's connection refused the packet (codec or extension not negotiated).
    WriteFailed,
    /// The socket's send buffer was full.
    SendBufferFull,
    /// Addressed to a multicast, broadcast or unspecified address, or port 0: the media socket
    /// sends only to the clients that reached it (never mDNS onto the LAN).
    ForbiddenDestination,
}

impl Drop {
    pub const ALL: [Drop; 9] = [
        Drop::UnknownSource,
        Drop::NotWebRtc,
        Drop::PeerRejected,
        Drop::NoSubscribers,
        Drop::LegNotReady,
        Drop::WaitingForKeyframe,
        Drop::WriteFailed,
        Drop::SendBufferFull,
        Drop::ForbiddenDestination,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Drop::UnknownSource => "unknown_source",
            Drop::NotWebRtc => "not_webrtc",
            Drop::PeerRejected => "peer_rejected",
            Drop::NoSubscribers => "no_subscribers",
            Drop::LegNotReady => "leg_not_ready",
            Drop::WaitingForKeyframe => "waiting_for_keyframe",
            Drop::WriteFailed => "write_failed",
            Drop::SendBufferFull => "send_buffer_full",
            Drop::ForbiddenDestination => "forbidden_destination",
        }
    }
}

/// Upper bounds of latency histogram buckets, in microseconds.
pub const LATENCY_BUCKETS_US: [u64; 19] = [
    10, 25, 50, 100, 150, 200, 300, 500, 750, 1_000, 1_500, 2_000, 3_000, 5_000, 7_500, 10_000,
    20_000, 50_000, 100_000,
];

/// A fixed-bucket latency histogram (loop turns, store writes); cumulative on export.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LatencyHistogram {
    /// Turns per bucket (not cumulative); the last slot is everything above the last bound.
    pub buckets: [u64; LATENCY_BUCKETS_US.len() + 1],
    pub count: u64,
    pub sum_ns: u64,
}

impl LatencyHistogram {
    pub fn observe(&mut self, took: std::time::Duration) {
        let us = took.as_micros() as u64;
        let i = LATENCY_BUCKETS_US
            .iter()
            .position(|&b| us <= b)
            .unwrap_or(LATENCY_BUCKETS_US.len());
        self.buckets[i] += 1;
        self.count += 1;
        self.sum_ns += took.as_nanos() as u64;
    }

    pub fn merge(&mut self, other: &LatencyHistogram) {
        for (a, b) in self.buckets.iter_mut().zip(other.buckets) {
            *a += b;
        }
        self.count += other.count;
        self.sum_ns += other.sum_ns;
    }
}

/// A snapshot of one worker's state and counters.
#[derive(Debug, Clone, Default)]
pub struct WorkerStats {
    pub rooms: usize,
    pub participants: usize,
    pub tracks: usize,
    pub datagrams_in: u64,
    pub bytes_in: u64,
    pub datagrams_out: u64,
    pub bytes_out: u64,
    pub rtp_in: u64,
    pub rtp_forwarded: u64,
    pub keyframe_requests_in: u64,
    pub keyframe_requests_out: u64,
    /// Media events the control plane's queue could not take.
    pub events_lost: u64,
    /// NACKs received from subscribers (answered from each video track's history).
    pub nacks_in: u64,
    /// Packets sent again for subscribers' NACKs, and NACKed packets no longer (or never) in
    /// the track's history.
    pub retransmissions: u64,
    pub retransmissions_missed: u64,
    /// Time of loop turns that handled datagrams (read, forward, send).
    pub turn_time: LatencyHistogram,
    /// Per forwarded RTP packet: from the kernel's receipt to the send of its copies.
    pub forwarding_delay: LatencyHistogram,
    pub drops: [u64; Drop::ALL.len()],
    /// Panics caught while handling a peer, a command or a timer; each removed the participant
    /// (or room) it happened for.
    pub panics: u64,
    /// Remote ICE candidates not handed to a connection: mDNS (`.local`) ones, and those over
    /// the per-connection limit (`--max-remote-candidates`) or unreadable.
    pub candidates_ignored_mdns: u64,
    pub candidates_ignored_over_limit: u64,
    /// Tracks not opened because their publisher has as many as it may publish.
    pub tracks_refused: u64,
}

impl WorkerStats {
    pub fn drop(&mut self, reason: Drop) {
        self.drops[reason as usize] += 1;
    }

    pub fn dropped(&self, reason: Drop) -> u64 {
        self.drops[reason as usize]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn turn_histogram_buckets() {
        let mut h = LatencyHistogram::default();
        h.observe(Duration::from_micros(10));
        h.observe(Duration::from_micros(25));
        h.observe(Duration::from_micros(26));
        h.observe(Duration::from_millis(101));
        assert_eq!(h.buckets[0], 1);
        assert_eq!(h.buckets[1], 1);
        assert_eq!(h.buckets[2], 1);
        assert_eq!(h.buckets[LATENCY_BUCKETS_US.len()], 1);
        assert_eq!(h.count, 4);
        assert_eq!(h.sum_ns, 101_061_000);
    }
}
