//! The media plane's data: rooms, participants, tracks and down-tracks, with `Copy` ids.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::time::Instant;

use rtc::peer_connection::RTCPeerConnection;
use rtc::rtp_transceiver::rtp_sender::RTCRtpCodec;
use rtc::rtp_transceiver::{RTCRtpReceiverId, RTCRtpSenderId};
use tokio::sync::mpsc;

use super::history::RtpHistory;
use super::keyframe::{KeyframeThrottle, VideoCodec};
use super::munger::Munger;
use super::peer::{FORWARDED_EXTENSIONS, RemoteCandidates};
use super::sender_report::SentStream;
use crate::bridge::SessionKind;
use crate::signal::protocol::{
    MediaKind, MediaState, ParticipantInfo, PcKind, ServerMessage, TrackInfo, TrackSource,
};

macro_rules! id_type {
    ($name:ident, $prefix:literal) => {
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(pub u64);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!($prefix, "{:016x}"), self.0)
            }
        }

        impl std::str::FromStr for $name {
            type Err = ();
            fn from_str(s: &str) -> Result<Self, ()> {
                let hex = s.strip_prefix($prefix).ok_or(())?;
                u64::from_str_radix(hex, 16).map($name).map_err(|_| ())
            }
        }
    };
}

/// A map keyed by our own ids (random or sequential numbers no client chooses): hashed with
/// FxHash, which the forwarding loop's per-leg lookups can afford, unlike SipHash.
pub type IdMap<K, V> = HashMap<K, V, std::hash::BuildHasherDefault<rustc_hash::FxHasher>>;

id_type!(ParticipantId, "p-");
id_type!(TrackId, "t-");

/// Index of a peer connection in the worker's table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PeerId(pub u64);

/// One `rtc` peer connection and its routing state.
pub struct Peer {
    pub pc: RTCPeerConnection,
    pub kind: PcKind,
    pub owner: ParticipantId,
    pub ufrag: String,
    /// Source addresses that proved they know our ufrag.
    pub addrs: Vec<SocketAddr>,
    pub next_timeout: Option<Instant>,
    /// When a datagram last came from this peer (or when it was created).
    pub last_heard: Instant,
    /// Whether it ever sent us anything.
    pub heard: bool,
    /// What reached the connection since the worker last drained it; anything but
    /// `Touched::No` puts it in the worker's list of connections to drain.
    pub touched: Touched,
    pub connected: bool,
    /// When a subscribe connection next sends its legs' sender reports.
    pub next_sender_report: Option<Instant>,
    /// STUN that arrived before the connection had the client's answer, and with it the
    /// client's ICE credentials: a client starts its checks as soon as it has answered, and its
    /// first check often overtakes the answer, which travels over the WebSocket. They are read
    /// once the answer is applied, so the client need not wait for its retransmission.
    pub early_stun: Vec<(SocketAddr, bytes::BytesMut)>,
    /// Whether any DTLS came from the client yet.
    pub dtls_heard: bool,
    /// The remote ICE candidates it took (bounded by `Limits::max_remote_candidates`).
    pub candidates: RemoteCandidates,
    /// Our ClientHello, sent again until the client answers it (see `HelloResend`).
    pub hello_resend: Option<HelloResend>,
}

/// Where the server is the DTLS client (the client answered `a=setup:passive`, as `webrtc-rs`,
/// pion and aiortc do when they control ICE, which they do with an ICE-lite server), `rtc` sends
/// its ClientHello as soon as ICE connects, in the same instant as the STUN response that tells
/// the client ICE has connected. A client that starts its DTLS side only on that news drops the
/// hello, and `rtc` sends it again only after a second: a second more to join. The worker sends
/// the hello again 50 ms later, then 100 and 200 ms after that (libwebrtc's first DTLS timeout
/// is 50 ms too), until the client answers.
pub struct HelloResend {
    pub to: SocketAddr,
    pub hello: bytes::BytesMut,
    pub at: Instant,
    pub interval: std::time::Duration,
}

/// What reached a peer connection since the worker last drained it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Touched {
    /// Nothing.
    No,
    /// Only forwarded RTP, written past the interceptors (`write_rtp_unintercepted`): its
    /// datagrams are queued, its handlers hold nothing and its timers have not moved, so the
    /// drain neither walks the handlers nor asks for the next timeout. At 20 participants the
    /// two were 5 % of the media thread, for the 19 legs each packet touches.
    Forwarded,
    /// Only SRTP and SRTCP that `rtc` read straight into its SRTP handler
    /// (`handle_read_settled` returned `true`), and no event: everything those reads produced
    /// is in the connection's output queues, and only the timers of SRTP, the interceptors and
    /// the endpoint may have moved, so the drains do not walk the handlers and the next
    /// deadline is asked of those three (`poll_timeout_after_srtp_reads`). In a room of two,
    /// the four walks were ~6 % of the media thread (vendor/rtc/SWITCHBOARD.md, patch 9).
    ReadSrtp,
    /// Anything else: a datagram that took `rtc`'s pipeline, a timeout, an event, RTCP
    /// written, a negotiation.
    Yes,
}

impl Touched {
    /// What a connection is after `self` and then `then` reached it.
    pub fn and(self, then: Touched) -> Touched {
        match (self, then) {
            (Touched::No, then) => then,
            (before, Touched::No) => before,
            (before, then) if before == then => before,
            _ => Touched::Yes,
        }
    }
}

/// A user in a room.
pub struct Participant {
    pub id: ParticipantId,
    pub room: String,
    pub user_id: String,
    pub name: String,
    /// The kind of session it joined through (a later join of the same user through the same
    /// kind replaces it).
    pub kind: SessionKind,
    pub media: MediaState,
    /// Whether the client has told its media state yet: its first `media_state` is always
    /// news (the call record may hold another state from an earlier stay), later ones only
    /// when they change.
    pub media_told: bool,
    pub can_publish: bool,
    pub can_subscribe: bool,
    pub events: mpsc::Sender<ServerMessage>,
    pub publish: Option<PeerId>,
    pub subscribe: Option<PeerId>,
    /// What the publisher says each of its MediaStreamTracks shows (by msid track id); only
    /// tracks its latest publish offer names (`peer::msid_track_ids`), so at most one a section.
    pub sources: HashMap<String, TrackSource>,
    /// Tracks this participant publishes, by the publish connection's track id.
    pub published: HashMap<String, TrackId>,
    /// What this participant receives.
    pub downtracks: IdMap<TrackId, DownTrack>,
    /// A subscribe offer is out and not yet answered.
    pub offer_pending: bool,
    /// The wanted set of tracks changed while an offer was out.
    pub resync: bool,
    pub joined_at: Instant,
    /// A viewer that made its own offer (WHEP): its m-lines are fixed, never renegotiated.
    pub fixed_subscriptions: bool,
    /// Bytes received from / sent to this participant's connections.
    pub bytes_in: u64,
    pub bytes_out: u64,
}

impl Participant {
    pub fn info(&self) -> ParticipantInfo {
        ParticipantInfo {
            participant_id: self.id.to_string(),
            user_id: self.user_id.clone(),
            name: self.name.clone(),
            media: self.media,
        }
    }

    /// The down-track a subscribe-connection track id belongs to.
    pub fn downtrack_by_rtc_id(&self, rtc_track_id: &str) -> Option<TrackId> {
        self.downtracks
            .iter()
            .find(|(_, dt)| dt.rtc_track_id == rtc_track_id)
            .map(|(id, _)| *id)
    }
}

#[derive(Default)]
pub struct Room {
    pub participants: Vec<ParticipantId>,
    /// Smoothed audio level per participant (0 = silent, 127 = loudest) and the current speaker.
    pub speaker: Option<ParticipantId>,
}

/// One published media source.
pub struct Track {
    pub id: TrackId,
    pub owner: ParticipantId,
    pub kind: MediaKind,
    pub source: TrackSource,
    pub codec: RTCRtpCodec,
    pub video: Option<VideoCodec>,
    pub receiver_id: RTCRtpReceiverId,
    /// The SSRC forwarded (the first simulcast layer seen, if several).
    pub ssrc: u32,
    /// Publisher-leg extension id → index into `FORWARDED_EXTENSIONS` (+1; 0 = not forwarded).
    pub ext_in: [u8; 16],
    pub keyframes: KeyframeThrottle,
    /// The last forwarded packets (video only), for the subscribers' NACKs.
    pub history: Option<RtpHistory>,
    /// Subscribers that hold a down-track of this track.
    pub subscribers: Vec<ParticipantId>,
    /// Audio level (RFC 6464, 0 loud … 127 silent) averaged since the last speaker check.
    pub level_sum: u32,
    pub level_count: u32,
}

impl Track {
    pub fn info(&self) -> TrackInfo {
        TrackInfo {
            track_id: self.id.to_string(),
            participant_id: self.owner.to_string(),
            kind: self.kind,
            source: self.source,
            codec: self.codec.mime_type.clone(),
        }
    }
}

/// One track as sent to one subscriber.
pub struct DownTrack {
    pub sender_id: RTCRtpSenderId,
    /// The track id on the subscribe connection (its `a=msid` track part).
    pub rtc_track_id: String,
    pub mid: String,
    /// Payload type on this leg, once the answer fixed it.
    pub out_pt: Option<u8>,
    /// Index into `FORWARDED_EXTENSIONS` → this leg's extension id (0 = not negotiated).
    pub ext_out: [u8; FORWARDED_EXTENSIONS.len()],
    pub munger: Munger,
    pub is_video: bool,
    /// What this leg sent, for its sender reports.
    pub sent: SentStream,
}
