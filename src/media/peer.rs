//! Building the server's `rtc` peer connections: codecs, header extensions, interceptors,
//! ICE-lite with per-connection credentials, one host candidate on the shared socket.

use std::collections::VecDeque;
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
