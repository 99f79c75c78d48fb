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
}

impl Drop {
    pub const ALL: [Drop; 8] = [
        Drop::UnknownSource,
        Drop::NotWebRtc,
        Drop::PeerRejected,
        Drop::NoSubscribers,
        Drop::LegNotReady,
        Drop::WaitingForKeyframe,
        Drop::WriteFailed,
        Drop::SendBufferFull,
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
        }
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
    pub drops: [u64; Drop::ALL.len()],
}

impl WorkerStats {
    pub fn drop(&mut self, reason: Drop) {
        self.drops[reason as usize] += 1;
    }

    pub fn dropped(&self, reason: Drop) -> u64 {
        self.drops[reason as usize]
    }
}
