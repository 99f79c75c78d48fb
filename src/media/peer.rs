//! Building the server's `rtc` peer connections: codecs, header extensions, interceptors,
//! ICE-lite with per-connection credentials, one host candidate on the shared socket.

use std::borrow::Cow;
use std::collections::{HashSet, VecDeque};
use std::hash::BuildHasher;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rtc::interceptor::{
    Attribute, Interceptor, NackGeneratorBuilder, Packet, ReceiverReportBuilder, Registry,
    StreamInfo, TaggedPacket, TwccReceiverBuilder,
};
use rtc::peer_connection::RTCPeerConnection;
use rtc::peer_connection::RTCPeerConnectionBuilder;
use rtc::peer_connection::configuration::RTCConfigurationBuilder;
use rtc::peer_connection::configuration::interceptor_registry::{
    Slot, register_default_interceptors,
};
use rtc::peer_connection::configuration::media_engine::{
    MIME_TYPE_H264, MIME_TYPE_OPUS, MIME_TYPE_VP8, MIME_TYPE_VP9, MediaEngine,
};
use rtc::peer_connection::configuration::setting_engine::SettingEngineBuilder;
use rtc::peer_connection::transport::{
    CandidateConfig, CandidateHostConfig, RTCDtlsRole, RTCIceCandidate,
};
use rtc::rtcp::payload_feedbacks::full_intra_request::FullIntraRequest;
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtcp::transport_feedbacks::transport_layer_nack::TransportLayerNack;
use rtc::rtp_transceiver::rtp_sender::{
    RTCPFeedback, RTCRtpCodec, RTCRtpCodecParameters, RTCRtpHeaderExtensionCapability, RtpCodecKind,
};
use rtc::sansio::Protocol;
use rtc::shared::error::Error;

pub const AUDIO_LEVEL_URI: &str = "urn:ietf:params:rtp-hdrext:ssrc-audio-level";
pub const VIDEO_ORIENTATION_URI: &str = "urn:3gpp:video-orientation";

/// Header extensions forwarded from a publisher to its subscribers (by URI, with each leg's id).
/// Everything else (transport-wide sequence numbers, send times, mid/rid) describes one hop only.
pub const FORWARDED_EXTENSIONS: [&str; 2] = [AUDIO_LEVEL_URI, VIDEO_ORIENTATION_URI];

/// ICE timing. The server is ICE-lite, so it sends no checks of its own; the worker drops a
/// connection that was silent for `SILENCE_TIMEOUT` (browsers send consent checks every 2.5 s,
/// RFC 7675), so a vanished client is gone well within 10 seconds.
///
/// The ICE agent's own timers are set well beyond ours: an ICE-lite agent counts only STUN as
/// liveness, and would fail a connection whose client pings rarely while media still flows.
pub const ICE_DISCONNECTED: Duration = Duration::from_secs(60);
pub const ICE_FAILED: Duration = Duration::from_secs(120);
pub const ICE_KEEPALIVE: Duration = Duration::from_secs(2);
pub const SILENCE_TIMEOUT: Duration = Duration::from_secs(7);
/// A connection that never hears from its client in this long is dropped too.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

fn video_feedback() -> Vec<RTCPFeedback> {
    [
        ("goog-remb", ""),
        ("ccm", "fir"),
        ("nack", ""),
        ("nack", "pli"),
        ("transport-cc", ""),
    ]
    .iter()
    .map(|(typ, parameter)| RTCPFeedback {
        typ: (*typ).to_owned(),
        parameter: (*parameter).to_owned(),
    })
    .collect()
}

/// The codecs Switchboard forwards, in order of preference.
pub fn codecs() -> Vec<(RTCRtpCodecParameters, RtpCodecKind)> {
    let audio = RTCRtpCodecParameters {
        rtp_codec: RTCRtpCodec {
            mime_type: MIME_TYPE_OPUS.to_owned(),
            clock_rate: 48000,
            channels: 2,
            sdp_fmtp_line: "minptime=10;useinbandfec=1".to_owned(),
            rtcp_feedback: vec![RTCPFeedback {
                typ: "transport-cc".into(),
                parameter: String::new(),
            }],
        },
        payload_type: 111,
    };
    let video = |mime: &str, pt: u8, fmtp: &str| RTCRtpCodecParameters {
        rtp_codec: RTCRtpCodec {
            mime_type: mime.to_owned(),
            clock_rate: 90000,
            channels: 0,
            sdp_fmtp_line: fmtp.to_owned(),
            rtcp_feedback: video_feedback(),
        },
        payload_type: pt,
    };
    vec![
        (audio, RtpCodecKind::Audio),
        (video(MIME_TYPE_VP8, 96, ""), RtpCodecKind::Video),
        (
            video(MIME_TYPE_VP9, 98, "profile-id=0"),
            RtpCodecKind::Video,
        ),
        (
            video(
                MIME_TYPE_H264,
                102,
                "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42001f",
            ),
            RtpCodecKind::Video,
        ),
        (
            video(
                MIME_TYPE_H264,
                106,
                "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f",
            ),
            RtpCodecKind::Video,
        ),
        (
            video(
                MIME_TYPE_H264,
                112,
                "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=64001f",
            ),
            RtpCodecKind::Video,
        ),
    ]
}

/// Do two codecs carry the same bitstream? MIME type, and for H.264 the fmtp parameters
/// that change decoding (profile-level-id's profile, packetization-mode).
pub fn same_codec(a: &RTCRtpCodec, b: &RTCRtpCodec) -> bool {
    if !a.mime_type.eq_ignore_ascii_case(&b.mime_type) || a.clock_rate != b.clock_rate {
        return false;
    }
    if !a.mime_type.eq_ignore_ascii_case(MIME_TYPE_H264) {
        return true;
    }
    let param = |fmtp: &str, key: &str| -> Option<String> {
        fmtp.split(';')
            .filter_map(|kv| kv.trim().split_once('='))
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v.to_ascii_lowercase())
    };
    let profile =
        |fmtp: &str| param(fmtp, "profile-level-id").map(|p| p.chars().take(4).collect::<String>());
    let mode = |fmtp: &str| param(fmtp, "packetization-mode").unwrap_or_else(|| "0".into());
    profile(&a.sdp_fmtp_line) == profile(&b.sdp_fmtp_line)
        && mode(&a.sdp_fmtp_line) == mode(&b.sdp_fmtp_line)
}

/// Counts the m-lines of an offer by kind: (audio, video, other).
pub fn media_sections(sdp: &str) -> (usize, usize, usize) {
    sdp.lines()
        .filter_map(|l| l.strip_prefix("m="))
        .fold((0, 0, 0), |(a, v, o), m| {
            if m.starts_with("audio") {
                (a + 1, v, o)
            } else if m.starts_with("video") {
                (a, v + 1, o)
            } else {
                (a, v, o + 1)
            }
        })
}

/// The MediaStreamTrack id each m-section of an SDP names (the track part of its first
/// `a=msid`, or of its first `a=ssrc:… msid:`): at most one per section, so an offer names at
/// most as many tracks as it has sections.
pub fn msid_track_ids(sdp: &str) -> HashSet<&str> {
    let mut ids = HashSet::new();
    let mut in_section = false;
    let mut found = false;
    for line in sdp.lines().map(str::trim) {
        if line.starts_with("m=") {
            in_section = true;
            found = false;
            continue;
        }
        if !in_section || found {
            continue;
        }
        let msid = line.strip_prefix("a=msid:").or_else(|| {
            let rest = line.strip_prefix("a=ssrc:")?;
            rest.split_once(' ')?.1.strip_prefix("msid:")
        });
        if let Some(track) = msid.and_then(|m| m.split_whitespace().nth(1)) {
            ids.insert(track);
            found = true;
        }
    }
    ids
}

/// Longest remote candidate line taken (a real one is under 200 bytes).
const MAX_CANDIDATE_LEN: usize = 512;

/// What becomes of a remote ICE candidate offered to a connection (`RemoteCandidates::admit`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CandidateVerdict {
    /// New to the connection: hand it over.
    New,
    /// The connection has it already (a renegotiation's SDP repeats what was trickled).
    Known,
    /// An mDNS (`.local`) host candidate: ignored, never resolved.
    Mdns,
    /// The connection has as many as it may take.
    OverLimit,
    /// Not a candidate line this server reads.
    Malformed,
}

/// The remote candidates one connection has taken, by identity (what `rtc` dedupes on:
/// transport, address, port, type, related address, TCP type), at most `limit` of them. Each
/// check is O(1): `rtc`'s agent scans its whole list on every add (its duplicate check), and
/// each candidate it holds costs it a pair and statistics, so it is handed at most `limit`.
#[derive(Default)]
pub struct RemoteCandidates {
    seen: HashSet<u64>,
    keys: std::hash::RandomState,
}

impl RemoteCandidates {
    pub fn len(&self) -> usize {
        self.seen.len()
    }

    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }

    /// Forgets them all (an ICE restart starts the list again).
    pub fn clear(&mut self) {
        self.seen.clear();
    }

    /// Decides on one candidate (with or without its `candidate:` or `a=candidate:` prefix)
    /// and, when it is new and within `limit`, counts it as taken.
    pub fn admit(&mut self, candidate: &str, limit: usize) -> CandidateVerdict {
        let line = candidate.trim();
        let line = line
            .strip_prefix("a=")
            .unwrap_or(line)
            .strip_prefix("candidate:")
            .unwrap_or(line);
        if line.len() > MAX_CANDIDATE_LEN {
            return CandidateVerdict::Malformed;
        }
        // foundation component transport priority address port typ type [extensions...]
        let fields: Vec<&str> = line.split_whitespace().take(16).collect();
        if fields.len() < 8 || !fields[6].eq_ignore_ascii_case("typ") {
            return CandidateVerdict::Malformed;
        }
        let address = fields[4];
        let address_bytes = address.as_bytes();
        if address_bytes.len() > 6
            && address_bytes[address_bytes.len() - 6..].eq_ignore_ascii_case(b".local")
        {
            return CandidateVerdict::Mdns;
        }
        let extension = |name: &str| {
            fields[8..]
                .chunks(2)
                .find(|kv| kv[0].eq_ignore_ascii_case(name))
                .and_then(|kv| kv.get(1).copied())
        };
        let identity = (
            fields[2].to_ascii_lowercase(),
            address.to_ascii_lowercase(),
            fields[5],
            fields[7].to_ascii_lowercase(),
            extension("raddr"),
            extension("rport"),
            extension("tcptype"),
        );
        let key = self.keys.hash_one(identity);
        if self.seen.contains(&key) {
            CandidateVerdict::Known
        } else if self.seen.len() >= limit {
            CandidateVerdict::OverLimit
        } else {
            self.seen.insert(key);
            CandidateVerdict::New
        }
    }

    /// `sdp` with only the `a=candidate` lines `admit` lets through (the others are counted in
    /// `ignored`); borrowed when nothing is left out.
    pub fn filter_sdp<'a>(
        &mut self,
        sdp: &'a str,
        limit: usize,
        ignored: &mut IgnoredCandidates,
    ) -> Cow<'a, str> {
        let mut out: Option<String> = None;
        let mut offset = 0;
        for line in sdp.split_inclusive('\n') {
            let start = offset;
            offset += line.len();
            let keep = !line.trim_start().starts_with("a=candidate:")
                || match self.admit(line, limit) {
                    CandidateVerdict::New | CandidateVerdict::Known => true,
                    CandidateVerdict::Mdns => {
                        ignored.mdns += 1;
                        false
                    }
                    CandidateVerdict::OverLimit | CandidateVerdict::Malformed => {
                        ignored.over_limit += 1;
                        false
                    }
                };
            match (&mut out, keep) {
                (Some(out), true) => out.push_str(line),
                (Some(_), false) | (None, true) => {}
                // The first line left out: copy everything before it (all kept).
                (None, false) => {
                    let mut copy = String::with_capacity(sdp.len());
                    copy.push_str(&sdp[..start]);
                    out = Some(copy);
                }
            }
        }
        match out {
            Some(s) => Cow::Owned(s),
            None => Cow::Borrowed(sdp),
        }
    }
}

/// Remote candidates left out, by reason (for `WorkerStats`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IgnoredCandidates {
    pub mdns: u64,
    pub over_limit: u64,
}

fn media_engine() -> Result<MediaEngine, Error> {
    let mut engine = MediaEngine::default();
    for (codec, kind) in codecs() {
        engine.register_codec(codec, kind)?;
    }
    engine.register_header_extension(
        RTCRtpHeaderExtensionCapability {
            uri: AUDIO_LEVEL_URI.to_owned(),
        },
        RtpCodecKind::Audio,
        None,
    )?;
    engine.register_header_extension(
        RTCRtpHeaderExtensionCapability {
            uri: VIDEO_ORIENTATION_URI.to_owned(),
        },
        RtpCodecKind::Video,
        None,
    )?;
    Ok(engine)
}

/// Builds one peer connection of the server.
///
/// `host` is the advertised address of the shared socket: the single host candidate, and the
/// `local_addr` every datagram for this peer is tagged with.
///
/// Media flows one way on each of our connections, so each gets only the interceptors of its
/// direction: a publish connection (`receives_media`) the NACK generator, receiver reports and
/// transport-wide feedback; a subscribe connection none that writes. Every interceptor moves
/// every packet through its queues, and a subscribe connection writes each forwarded packet
/// once per leg, so the worker writes them past the chain and does the write side's work
/// itself: sender reports (`media::sender_report`) and NACKs (`media::history`). Only a
/// subscribe connection delivers inbound keyframe requests and NACKs to the worker
/// (`RtcpToApp`): they are about media the client receives, and a publisher receives none on
/// its publish connection, where the interceptor would only move every packet through one
/// more queue.
pub fn build(
    now: Instant,
    host: SocketAddr,
    ufrag: &str,
    pwd: &str,
    receives_media: bool,
) -> Result<RTCPeerConnection, Error> {
    let mut engine = media_engine()?;
    // What the default interceptors negotiate (NACK, PLI and transport-cc feedback, the
    // mid/rid extensions) is the same for both directions; their chain is not.
    register_default_interceptors(Registry::new(), &mut engine)?;
    let registry = Registry::new();
    let registry = if receives_media {
        registry
            .with(Slot::NackGenerator, NackGeneratorBuilder::new().build())
            .with(Slot::ReceiverReport, ReceiverReportBuilder::new().build())
            .with(Slot::TwccReceiver, TwccReceiverBuilder::new().build())
    } else {
        // Nothing on the write side: forwarded packets are written past the interceptors, and
        // the worker sends the sender reports (media::sender_report) and answers NACKs from
        // one history per published track (media::history). Inbound RTCP reaches the
        // application only when marked: keyframe requests and NACKs.
        registry.with(Slot::from(14_000), RtcpToApp::default())
    };

    let settings = SettingEngineBuilder::new()
        // `setup:passive` when answering: the client starts DTLS once its ICE check succeeded
        // (docs/design.md).
        .with_answering_dtls_role(RTCDtlsRole::Server)
        .with_lite(true)
        // Never resolve `.local` candidates: mDNS queries would go from the media socket to
        // 224.0.0.251, onto the LAN. The worker does not even hand them over
        // (`RemoteCandidates`); an ICE-lite server learns each client's address from its checks.
        .with_multicast_dns_mode(rtc::ice::mdns::MulticastDnsMode::Disabled)
        .with_ice_credentials(ufrag.to_owned(), pwd.to_owned())
        .with_ice_timeouts(
            Some(ICE_DISCONNECTED),
            Some(ICE_FAILED),
            Some(ICE_KEEPALIVE),
        )
        .build();

    let mut pc = RTCPeerConnectionBuilder::new()
        .with_configuration(RTCConfigurationBuilder::new().build())
        .with_setting_engine(settings)
        .with_media_engine(engine)
        .with_interceptor_registry(registry)
        .build(now)?;
    add_host_candidate(&mut pc, host)?;
    Ok(pc)
}

/// Gives `pc` its one local candidate: a UDP host candidate at `addr` (sans-I/O peers gather
/// none of their own).
pub fn add_host_candidate(pc: &mut RTCPeerConnection, addr: SocketAddr) -> Result<(), Error> {
    let candidate = CandidateHostConfig {
        base_config: CandidateConfig {
            network: "udp".to_owned(),
            address: addr.ip().to_string(),
            port: addr.port(),
            component: 1,
            ..Default::default()
        },
        ..Default::default()
    }
    .new_candidate_host()?;
    pc.add_local_candidate(RTCIceCandidate::from(&candidate).to_json()?)
}

/// Marks inbound feedback for delivery to the application (the worker relays keyframe requests
/// and answers NACKs from its history), and moves it to the front of a compound packet: `rtc`
/// 0.21.1 routes a compound by its first packet's destination SSRC, and Chrome's
/// `[empty RR, PLI]` or `[empty RR, NACK]` would otherwise be dropped.
#[derive(Default)]
struct RtcpToApp {
    read_queue: VecDeque<TaggedPacket>,
    write_queue: VecDeque<TaggedPacket>,
}

/// Is this RTCP packet a keyframe request (PLI or FIR)?
pub fn is_keyframe_request(p: &dyn rtc::rtcp::Packet) -> bool {
    p.as_any().is::<PictureLossIndication>() || p.as_any().is::<FullIntraRequest>()
}

fn is_feedback_for_app(p: &dyn rtc::rtcp::Packet) -> bool {
    is_keyframe_request(p) || p.as_any().is::<TransportLayerNack>()
}

impl Protocol<TaggedPacket, TaggedPacket, ()> for RtcpToApp {
    type Rout = TaggedPacket;
    type Wout = TaggedPacket;
    type Eout = ();
    type Error = Error;
    type Time = Instant;

    fn handle_read(&mut self, mut msg: TaggedPacket) -> Result<(), Self::Error> {
        if let Packet::Rtcp(packets) = &mut msg.message.packet
            && packets.iter().any(|p| is_feedback_for_app(p.as_ref()))
        {
            // stable: keeps the relative order of everything else
            packets.sort_by_key(|p| !is_feedback_for_app(p.as_ref()));
            msg.message.add(Attribute::DeliverToApplication);
        }
        self.read_queue.push_back(msg);
        Ok(())
    }

    fn poll_read(&mut self) -> Option<Self::Rout> {
        self.read_queue.pop_front()
    }

    fn handle_write(&mut self, msg: TaggedPacket) -> Result<(), Self::Error> {
        self.write_queue.push_back(msg);
        Ok(())
    }

    fn poll_write(&mut self) -> Option<Self::Wout> {
        self.write_queue.pop_front()
    }

    fn handle_timeout(&mut self, _now: Instant) -> Result<(), Self::Error> {
        Ok(())
    }

    fn poll_timeout(&mut self) -> Option<Self::Time> {
        None
    }
}

impl Interceptor for RtcpToApp {
    fn bind_local_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_local_stream(&mut self, _info: &StreamInfo) {}
    fn bind_remote_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_remote_stream(&mut self, _info: &StreamInfo) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    fn codec(mime: &str, fmtp: &str) -> RTCRtpCodec {
        RTCRtpCodec {
            mime_type: mime.into(),
            clock_rate: 90000,
            channels: 0,
            sdp_fmtp_line: fmtp.into(),
            rtcp_feedback: vec![],
        }
    }

    #[test]
    fn h264_matches_on_profile_and_packetization_mode() {
        let baseline = codec("video/H264", "packetization-mode=1;profile-level-id=42e01f");
        let baseline_other_level =
            codec("video/h264", "profile-level-id=42e034;packetization-mode=1");
        let high = codec("video/H264", "packetization-mode=1;profile-level-id=64001f");
        let mode0 = codec("video/H264", "profile-level-id=42e01f");
        assert!(same_codec(&baseline, &baseline_other_level));
        assert!(!same_codec(&baseline, &high));
        assert!(!same_codec(&baseline, &mode0));
        assert!(same_codec(
            &codec("video/VP8", ""),
            &codec("video/vp8", "x=1")
        ));
        assert!(!same_codec(
            &codec("video/VP8", ""),
            &codec("video/VP9", "")
        ));
    }

    #[test]
    fn counts_sections() {
        assert_eq!(
            media_sections("v=0\r\nm=audio 9 x\r\nm=video 9 x\r\nm=video 9 x\r\n"),
            (1, 2, 0)
        );
        assert_eq!(media_sections("m=application 9 x\r\n"), (0, 0, 1));
    }

    const HOST: &str = "candidate:1 1 udp 2122260223 192.0.2.1 61764 typ host generation 0";

    #[test]
    fn candidates_are_deduplicated_capped_and_mdns_ignored() {
        let mut c = RemoteCandidates::default();
        assert_eq!(c.admit(HOST, 2), CandidateVerdict::New);
        // The same candidate again, from an SDP line with another foundation and priority.
        assert_eq!(
            c.admit(
                "a=candidate:9 1 UDP 1 192.0.2.1 61764 typ host generation 0",
                2
            ),
            CandidateVerdict::Known
        );
        assert_eq!(
            c.admit("candidate:2 1 udp 1 192.0.2.2 5000 typ host", 2),
            CandidateVerdict::New
        );
        assert_eq!(
            c.admit("candidate:3 1 udp 1 192.0.2.3 5000 typ host", 2),
            CandidateVerdict::OverLimit
        );
        assert_eq!(
            c.admit(HOST, 2),
            CandidateVerdict::Known,
            "known stays known"
        );
        assert_eq!(c.len(), 2);
        let mdns = "candidate:4 1 udp 1 1f7bd2a4-25cb-4b9e-a1a2-4d6d22b1e0d6.local 5000 typ host";
        assert_eq!(c.admit(mdns, 10), CandidateVerdict::Mdns);
        assert_eq!(
            c.admit("candidate:garbage", 10),
            CandidateVerdict::Malformed
        );
        // Not ASCII where the `.local` check looks: no panic on a char boundary.
        assert_eq!(
            c.admit("candidate:1 1 udp 1 aé€local 5 typ host", 10),
            CandidateVerdict::New
        );
        let long = format!(
            "candidate:1 1 udp 1 192.0.2.9 1 typ host {}",
            "x ".repeat(300)
        );
        assert_eq!(c.admit(&long, 10), CandidateVerdict::Malformed);
        // The same address as relay is another candidate.
        assert_eq!(
            c.admit(
                "candidate:5 1 udp 1 192.0.2.1 61764 typ relay raddr 0.0.0.0 rport 0",
                10
            ),
            CandidateVerdict::New
        );
        c.clear();
        assert!(c.is_empty());
    }

    #[test]
    fn sdp_keeps_only_admitted_candidates() {
        let sdp = "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\n\
                   a=candidate:1 1 udp 2122260223 192.0.2.1 61764 typ host\r\n\
                   a=candidate:2 1 udp 2122260223 abc.local 61764 typ host\r\n\
                   a=candidate:3 1 udp 2122260223 192.0.2.3 61764 typ host\r\n\
                   a=candidate:4 1 udp 2122260223 192.0.2.4 61764 typ host\r\n\
                   a=end-of-candidates\r\n";
        let mut c = RemoteCandidates::default();
        let mut ignored = IgnoredCandidates::default();
        let out = c.filter_sdp(sdp, 2, &mut ignored);
        assert_eq!(
            out,
            "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\n\
             a=candidate:1 1 udp 2122260223 192.0.2.1 61764 typ host\r\n\
             a=candidate:3 1 udp 2122260223 192.0.2.3 61764 typ host\r\n\
             a=end-of-candidates\r\n"
        );
        assert_eq!(
            ignored,
            IgnoredCandidates {
                mdns: 1,
                over_limit: 1
            }
        );
        // Nothing left out: the SDP is not copied.
        let plain = "v=0\r\nm=audio 9 x\r\n";
        assert!(matches!(
            c.filter_sdp(plain, 2, &mut ignored),
            Cow::Borrowed(_)
        ));
    }

    #[test]
    fn one_track_id_per_section() {
        let sdp = "v=0\r\na=msid-semantic: WMS s\r\nm=audio 9 x\r\na=msid:s a1\r\na=msid:s a2\r\n\
                   m=video 9 x\r\na=ssrc:5 msid:s v1\r\nm=video 9 x\r\n";
        let ids = msid_track_ids(sdp);
        assert_eq!(ids, HashSet::from(["a1", "v1"]));
    }

    #[test]
    fn builds_a_peer_with_our_candidate() {
        let pc = build(
            Instant::now(),
            "127.0.0.1:7882".parse().unwrap(),
            "ufragAAAA",
            "p".repeat(24).as_str(),
            true,
        );
        assert!(pc.is_ok(), "{:?}", pc.err());
    }
}
