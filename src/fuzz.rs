//! Entry points for fuzzing every parser that sees network bytes.
//!
//! Each function takes arbitrary bytes and feeds them to the server's code the way the network
//! would: it must never panic. The cargo-fuzz targets in `fuzz/` call them (nightly,
//! libFuzzer), and `tests/fuzz_replay.rs` replays their seed corpora plus a bounded number of
//! mutated and random inputs on stable, so every test run exercises them.
//!
//! The media-plane entry points drive a real `Worker` on in-memory datagrams, as
//! `benches/media_plane.rs` does: a room in which one publisher sends VP8 to one subscriber,
//! both real `rtc` peers connected through ICE and DTLS, plus one participant whose publish
//! connection was negotiated but never connected. This rig is built once per thread and
//! rebuilt when a participant drops out or it gets old; each input adds what it needs (a
//! participant, a connection) and removes it again, so state cannot grow from input to input.
//!
//! | function | what the bytes are |
//! | --- | --- |
//! | [`datagram`] | a UDP datagram on the media socket, from a connected or a pending peer's address or from an unknown one (classification, routing, STUN, DTLS, SRTP/SRTCP) |
//! | [`media_packet`] | a plaintext RTP or RTCP packet that a connected client encrypts and sends (forwarding, keyframe detection, header rewriting, RTCP feedback) |
//! | [`ws_message`] | a `/ws` text frame: decoded and applied as the session does |
//! | [`publish_offer`] | the SDP of a `publish_offer` |
//! | [`subscribe_answer`] | the SDP of a `subscribe_answer` to the server's offer |
//! | [`whip_offer`] | the body of `POST /whip/{room}` |
//! | [`whep_offer`] | the body of `POST /whep/{room}` |
//! | [`whip_patch`] | the body of a WHIP `PATCH` (trickle-ice-sdpfrag): candidates, ICE restart |

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use rtc::media_stream::MediaStreamTrack;
use rtc::peer_connection::RTCPeerConnection;
use rtc::peer_connection::RTCPeerConnectionBuilder;
use rtc::peer_connection::configuration::RTCConfigurationBuilder;
use rtc::peer_connection::configuration::media_engine::{MIME_TYPE_VP8, MediaEngine};
use rtc::peer_connection::event::RTCPeerConnectionEvent;
use rtc::peer_connection::message::RTCMessage;
use rtc::peer_connection::sdp::RTCSessionDescription;
use rtc::peer_connection::state::RTCPeerConnectionState;
use rtc::rtp_transceiver::RTCRtpSenderId;
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodec, RTCRtpCodecParameters, RTCRtpCodingParameters, RTCRtpEncodingParameters,
    RtpCodecKind,
};
use rtc::sansio::Protocol;
use rtc::shared::marshal::Unmarshal;
use rtc::shared::{TaggedBytesMut, TransportContext, TransportProtocol};
use tokio::sync::{mpsc, oneshot};

use crate::auth::Auth;
use crate::bridge::{
    self, Command, JoinRequest, LeaveReason, MediaError, MediaEvent, MediaHandle, Reply,
};
use crate::media::Worker;
use crate::media::net::MemoryDatagrams;
use crate::media::peer::{add_host_candidate, media_sections};
use crate::media::stats::{Drop, WorkerStats};
use crate::signal::protocol::{ClientMessage, MediaState, PcKind, ServerMessage, TrackSource};

/// An entry point: arbitrary bytes in, never a panic.
pub type Target = fn(&[u8]);

/// Every entry point by name: the names of `fuzz/fuzz_targets/*.rs` and `fuzz/corpus/*/`.
pub const TARGETS: &[(&str, Target)] = &[
    ("datagram", datagram),
    ("media_packet", media_packet),
    ("ws_message", ws_message),
    ("publish_offer", publish_offer),
    ("subscribe_answer", subscribe_answer),
    ("whip_offer", whip_offer),
    ("whep_offer", whep_offer),
    ("whip_patch", whip_patch),
];

/// In a [`datagram`] input, these 12 bytes stand for the local ICE ufrag of the rig's pending
/// connection (a new one each rig), so a STUN Binding request from an unknown address can
/// route to it.
pub const UFRAG_PLACEHOLDER: &[u8; 12] = b"@FUZZ-UFRAG@";
/// In a [`media_packet`] RTCP input, these 4 bytes stand for the SSRC of the subscriber's
/// video leg (chosen by the server), so feedback can name it.
pub const SSRC_PLACEHOLDER: [u8; 4] = [0xde, 0xad, 0xbe, 0xef];

/// The worker's advertised address. Nothing listens on it: datagrams only travel in memory.
const SERVER: &str = "127.0.0.1:3478";
const ROOM: &str = "fuzz";
/// Source addresses no connection knows (until a STUN check with a valid ufrag binds them).
const STRANGERS: [&str; 2] = ["127.0.0.1:50001", "[::1]:50002"];
/// The publisher's video SSRC.
const VIDEO_SSRC: u32 = 0x5eed_0001;
/// How often (wall time) the rig's clients run their timers and talk to the worker.
const CLIENT_TICK: Duration = Duration::from_millis(100);
/// A rig older than this is rebuilt (its pending connection would time out at 30 s).
const RIG_LIFETIME: Duration = Duration::from_secs(20);
/// The rig checks that its participants are all still there every this many inputs.
const CHECK_EVERY: u64 = 64;
/// Longest the rig may take to connect its clients.
const SETTLE: Duration = Duration::from_secs(20);
/// Secret of the tokens [`ws_message`] verifies.
const WS_SECRET: &[u8] = b"fuzz-secret-fuzz-secret-fuzz-sec";

// ---- entry points -----------------------------------------------------------------------

/// First byte: which source address (`% 4`: the publisher's, the subscriber's, or one of two
/// strangers'); the rest is the datagram, with every [`UFRAG_PLACEHOLDER`] replaced by the
/// pending connection's ufrag.
pub fn datagram(bytes: &[u8]) {
    set_outcome(String::new());
    let Some((&selector, body)) = bytes.split_first() else {
        return;
    };
    with_rig(true, |rig| {
        let from = match selector % 4 {
            0 => rig.clients[PUBLISHER].addr,
            1 => rig.clients[SUBSCRIBER].addr,
            n => STRANGERS[usize::from(n - 2)]
                .parse()
                .expect("constant addr"),
        };
        let body = replace_all(body, UFRAG_PLACEHOLDER, rig.pending_ufrag.as_bytes());
        rig.worker
            .datagrams()
            .inbound
            .push_back((from, BytesMut::from(&body[..])));
        rig.turn();
    });
}

/// First byte: bit 0 clear: RTP from the publisher (its SSRC forced to the track's, and with
/// bit 1 set its payload type forced to the negotiated VP8 one; its sequence number moved
/// ahead of every earlier one so SRTP's replay check lets it through); bit 0 set: RTCP, from
/// the subscriber (bit 1 clear, [`SSRC_PLACEHOLDER`] replaced by its video leg's SSRC) or the
/// publisher (bit 1 set). The rest is the packet, which the client encrypts and sends.
pub fn media_packet(bytes: &[u8]) {
    set_outcome(String::new());
    let Some((&flags, body)) = bytes.split_first() else {
        return;
    };
    with_rig(true, |rig| {
        let now = Instant::now();
        let client = if flags & 1 == 0 {
            let Ok(mut packet) = rtc::rtp::packet::Packet::unmarshal(&mut &body[..]) else {
                return;
            };
            packet.header.ssrc = VIDEO_SSRC;
            if flags & 2 != 0 {
                packet.header.payload_type = rig.video_pt;
            }
            rig.sequence = rig
                .sequence
                .wrapping_add(1 + packet.header.sequence_number % 1024);
            packet.header.sequence_number = rig.sequence;
            let publisher = &mut rig.clients[PUBLISHER];
            let Some(mut sender) = publisher.pc.rtp_sender(rig.sender) else {
                return;
            };
            if sender.write_rtp(now, packet).is_err() {
                return;
            }
            PUBLISHER
        } else {
            let from_subscriber = flags & 2 == 0;
            let body = if from_subscriber {
                replace_all(body, &SSRC_PLACEHOLDER, &rig.leg_ssrc.to_be_bytes())
            } else {
                body.to_vec()
            };
            let Ok(packets) = rtc::rtcp::packet::unmarshal(&mut &body[..]) else {
                return;
            };
            if from_subscriber {
                let pc = &mut rig.clients[SUBSCRIBER].pc;
                let Some(id) = pc.get_receivers().next() else {
                    return;
                };
                let Some(mut receiver) = pc.rtp_receiver(id) else {
                    return;
                };
                if receiver.write_rtcp(now, packets).is_err() {
                    return;
                }
                SUBSCRIBER
            } else {
                let Some(mut sender) = rig.clients[PUBLISHER].pc.rtp_sender(rig.sender) else {
                    return;
                };
                if sender.write_rtcp(now, packets).is_err() {
                    return;
                }
                PUBLISHER
            }
        };
        let client = &mut rig.clients[client];
        while let Some(msg) = client.pc.poll_write() {
            rig.worker
                .datagrams()
                .inbound
                .push_back((client.addr, msg.message));
        }
        rig.turn();
    });
}

/// A `/ws` text frame, decoded and applied as `signal::session` does: `auth` verifies the
/// token, `join` checks the room name and joins, the rest go to the media worker as a
/// participant of the rig's room (which first publishes, when a candidate is for its publish
/// connection), who leaves afterwards.
pub fn ws_message(bytes: &[u8]) {
    set_outcome(String::new());
    let Ok(text) = std::str::from_utf8(bytes) else {
        return; // a WebSocket text frame is UTF-8 by the time the session sees it
    };
    let Ok(msg) = serde_json::from_str::<ClientMessage>(text) else {
        return;
    };
    match msg {
        ClientMessage::Auth { token } => match WS_AUTH.with(|auth| auth.verify(&token)) {
            Ok(claims) => set_outcome(if claims.grants_room(ROOM) {
                "ok"
            } else {
                "forbidden"
            }),
            Err(e) => set_outcome(e.code()),
        },
        ClientMessage::Ping => set_outcome("ok"),
        ClientMessage::Join { room } => {
            if !crate::http::valid_room(&room) {
                set_outcome("bad_message");
            } else {
                with_rig(false, |rig| {
                    let guest = rig.join_guest(&room, true, true);
                    rig.leave_guest(guest);
                });
            }
        }
        msg => with_rig(false, |rig| {
            let guest = rig.join_guest(ROOM, true, true);
            let participant_id = guest.participant_id.clone();
            match msg {
                ClientMessage::PublishOffer { sdp, sources } => {
                    let _ = rig.request(|reply| Command::PublishOffer {
                        participant_id,
                        sdp,
                        sources,
                        reply,
                    });
                }
                ClientMessage::SubscribeAnswer { sdp } => {
                    let _ = rig.request(|reply| Command::SubscribeAnswer {
                        participant_id,
                        sdp,
                        reply,
                    });
                }
                ClientMessage::Candidate { pc, candidate } => {
                    // The connection the candidate is for, negotiated (else it is refused
                    // before it is parsed).
                    let participant_id_ = participant_id.clone();
                    if pc == PcKind::Publish {
                        let sdp = rig.publish_sdp.clone();
                        let _ = rig.request(|reply| Command::PublishOffer {
                            participant_id: participant_id_,
                            sdp,
                            sources: HashMap::new(),
                            reply,
                        });
                    } else {
                        let sdp = rig.subscribe_sdp.clone();
                        let _ = rig.request(|reply| Command::SubscribeAnswer {
                            participant_id: participant_id_,
                            sdp,
                            reply,
                        });
                    }
                    let _ = rig.request(|reply| Command::Candidate {
                        participant_id,
                        pc,
                        candidate,
                        reply,
                    });
                }
                ClientMessage::MediaState {
                    audio,
                    video,
                    screen,
                } => {
                    let _ = rig.handle.send(Command::MediaState {
                        participant_id,
                        state: MediaState {
                            audio,
                            video,
                            screen,
                        },
                    });
                    rig.turn();
                    set_outcome("ok");
                }
                ClientMessage::Leave => set_outcome("ok"),
                ClientMessage::Auth { .. } | ClientMessage::Join { .. } | ClientMessage::Ping => {}
            }
            rig.leave_guest(guest);
        }),
    }
}

/// The SDP of a `/ws` `publish_offer`, from a participant of the rig's room (so the answer
/// happens next to a live publisher and subscriber).
pub fn publish_offer(bytes: &[u8]) {
    set_outcome(String::new());
    let Ok(sdp) = std::str::from_utf8(bytes) else {
        return; // it arrives inside a JSON string
    };
    with_rig(false, |rig| {
        let guest = rig.join_guest(ROOM, true, false);
        let participant_id = guest.participant_id.clone();
        let sources = HashMap::from([
            ("camera".to_owned(), TrackSource::Camera),
            ("mic".to_owned(), TrackSource::Microphone),
        ]);
        let _ = rig.request(|reply| Command::PublishOffer {
            participant_id,
            sdp: sdp.to_owned(),
            sources,
            reply,
        });
        rig.leave_guest(guest);
    });
}

/// The SDP of a `/ws` `subscribe_answer`: a new participant of the rig's room answers the
/// subscribe offer the server sent it (the publisher's video).
pub fn subscribe_answer(bytes: &[u8]) {
    set_outcome(String::new());
    let Ok(sdp) = std::str::from_utf8(bytes) else {
        return;
    };
    with_rig(false, |rig| {
        let mut guest = rig.join_guest(ROOM, false, true);
        let offered = std::iter::from_fn(|| guest.events.try_recv().ok())
            .any(|m| matches!(m, ServerMessage::SubscribeOffer { .. }));
        if offered {
            let participant_id = guest.participant_id.clone();
            let _ = rig.request(|reply| Command::SubscribeAnswer {
                participant_id,
                sdp: sdp.to_owned(),
                reply,
            });
        }
        rig.leave_guest(guest);
    });
}

/// The body of `POST /whip/{room}`, through the checks the WHIP handler makes before the media
/// worker sees it (UTF-8, not blank, at most one audio and one video section).
pub fn whip_offer(bytes: &[u8]) {
    set_outcome(String::new());
    let Some(sdp) = whip_body(bytes) else {
        return;
    };
    with_rig(false, |rig| {
        let guest = rig.join_guest(ROOM, true, false);
        let participant_id = guest.participant_id.clone();
        let _ = rig.request(|reply| Command::PublishOffer {
            participant_id,
            sdp,
            sources: HashMap::new(),
            reply,
        });
        rig.leave_guest(guest);
    });
}

/// The body of `POST /whep/{room}`: a viewer's offer, answered with the rig's publisher.
pub fn whep_offer(bytes: &[u8]) {
    set_outcome(String::new());
    let Some(sdp) = whip_body(bytes) else {
        return;
    };
    with_rig(false, |rig| {
        let guest = rig.join_guest(ROOM, false, false);
        let participant_id = guest.participant_id.clone();
        let _ = rig.request(|reply| Command::Watch {
            participant_id,
            sdp,
            pin: None,
            reply,
        });
        rig.leave_guest(guest);
    });
}

/// The body of a WHIP `PATCH` on a new WHIP session: its candidates are added (as with a
/// matching `If-Match`), then, if it names new ICE credentials, ICE restarts (as with
/// `If-Match: *`).
pub fn whip_patch(bytes: &[u8]) {
    set_outcome(String::new());
    let frag = String::from_utf8_lossy(bytes); // as the PATCH handler reads it
    with_rig(false, |rig| {
        let guest = rig.join_guest(ROOM, true, false);
        let participant_id = guest.participant_id.clone();
        let sdp = rig.publish_sdp.clone();
        let published = rig
            .request(|reply| Command::PublishOffer {
                participant_id: participant_id.clone(),
                sdp,
                sources: HashMap::new(),
                reply,
            })
            .is_some_and(|r| r.is_ok());
        if published {
            for candidate in crate::whip::trickle_candidates(&frag) {
                let participant_id = participant_id.clone();
                let _ = rig.request(|reply| Command::Candidate {
                    participant_id,
                    pc: PcKind::Publish,
                    candidate,
                    reply,
                });
            }
            // What `whip::restart` reads from the fragment.
            let value = |prefix: &str| {
                frag.lines()
                    .map(str::trim)
                    .find_map(|l| l.strip_prefix(prefix))
                    .map(str::to_owned)
            };
            if let (Some(ufrag), Some(pwd)) = (value("a=ice-ufrag:"), value("a=ice-pwd:")) {
                let _ = rig.request(|reply| Command::RestartIce {
                    participant_id,
                    pc: PcKind::Publish,
                    ufrag,
                    pwd,
                    reply,
                });
            }
        }
        rig.leave_guest(guest);
    });
}

/// The checks `whip::admit` makes on the body before the media worker sees it.
fn whip_body(bytes: &[u8]) -> Option<String> {
    let sdp = std::str::from_utf8(bytes)
        .ok()
        .filter(|s| !s.trim().is_empty())?;
    let (audio, video, other) = media_sections(sdp);
    if audio > 1 || video > 1 || other > 0 || audio + video == 0 {
        return None;
    }
    Some(sdp.to_owned())
}

fn replace_all(haystack: &[u8], needle: &[u8], with: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(haystack.len());
    let mut rest = haystack;
    while !rest.is_empty() {
        if rest.starts_with(needle) {
            out.extend_from_slice(with);
            rest = &rest[needle.len()..];
        } else {
            out.push(rest[0]);
            rest = &rest[1..];
        }
    }
    out
}

thread_local! {
    static RIG: RefCell<Option<Rig>> = const { RefCell::new(None) };
    static WS_AUTH: Auth = Auth::new(WS_SECRET, false);
    static OBSERVE: Cell<bool> = const { Cell::new(false) };
    static OUTCOME: RefCell<String> = const { RefCell::new(String::new()) };
}

/// Makes this thread's entry points record what became of each input, for [`outcome`]. For the
/// media entry points this costs two statistics round trips per input, so fuzzing leaves it off.
pub fn observe(on: bool) {
    OBSERVE.with(|o| o.set(on));
}

/// What became of the last input: the reply code of the last command it made (`ok`, or an
/// error code such as `bad_sdp`); for [`datagram`] and [`media_packet`] under [`observe`], the
/// worker's counters that moved (`datagrams_in+1 rtp_forwarded+1`, `drop:peer_rejected+1`).
/// Empty when the input went nowhere (it did not decode).
pub fn outcome() -> String {
    OUTCOME.with(|o| o.borrow().clone())
}

fn set_outcome(outcome: impl Into<String>) {
    OUTCOME.with(|o| *o.borrow_mut() = outcome.into());
}

/// Runs `f` on this thread's rig, building it first when there is none or it is worn out.
/// With `counted` and under [`observe`], the input's outcome is the counters it moved.
fn with_rig(counted: bool, f: impl FnOnce(&mut Rig)) {
    RIG.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.as_ref().is_none_or(|rig| !rig.healthy()) {
            if std::env::var_os("SWITCHBOARD_FUZZ_DEBUG").is_some()
                && let Some(rig) = slot.as_ref()
            {
                eprintln!(
                    "fuzz: rebuilding the rig after {} inputs ({})",
                    rig.inputs,
                    rig.why_unhealthy()
                );
            }
            *slot = None; // drop the old worker before building the next
            *slot = Some(Rig::new(None));
        }
        let rig = slot.as_mut().expect("just built");
        let before = (counted && OBSERVE.with(Cell::get))
            .then(|| rig.stats())
            .flatten();
        f(rig);
        if let (Some(before), Some(after)) = (before, rig.stats()) {
            set_outcome(counters_moved(&before, &after));
        }
        rig.after_input();
    });
}

/// The seed inputs the rig's own clients produce, by target: the datagrams of connecting and
/// sending video (STUN, DTLS, SRTP, SRTCP), plain RTP and RTCP, and the SDP of a publisher,
/// a subscriber and a WHEP viewer. `fuzz/corpus/` was written from these (see
/// `tests/fuzz_replay.rs`).
pub fn seed_inputs() -> Vec<(&'static str, Vec<u8>)> {
    let mut seeds = Vec::new();
    let rig = Rig::new(Some(&mut seeds));
    drop(rig);
    seeds
}

// ---- the rig ----------------------------------------------------------------------------

const PUBLISHER: usize = 0;
const SUBSCRIBER: usize = 1;

/// One client connection: an `rtc` peer with a made-up address the worker sees as its source.
struct Client {
    pc: RTCPeerConnection,
    addr: SocketAddr,
    connected: bool,
    /// The SSRC of the last RTP packet received.
    rtp_ssrc: Option<u32>,
}

impl Client {
    fn new(addr: SocketAddr) -> Self {
        let mut media = MediaEngine::default();
        media
            .register_codec(vp8(), RtpCodecKind::Video)
            .expect("VP8 registers");
        let mut pc = RTCPeerConnectionBuilder::new()
            .with_configuration(RTCConfigurationBuilder::new().build())
            .with_media_engine(media)
            .build(Instant::now())
            .expect("client peer builds");
        add_host_candidate(&mut pc, addr).expect("host candidate");
        Self {
            pc,
            addr,
            connected: false,
            rtp_ssrc: None,
        }
    }

    fn receive(&mut self, bytes: BytesMut) {
        let msg = TaggedBytesMut {
            now: Instant::now(),
            transport: TransportContext {
                local_addr: self.addr,
                peer_addr: SERVER.parse().expect("constant addr"),
                ecn: None,
                transport_protocol: TransportProtocol::UDP,
            },
            message: bytes,
        };
        let _ = self.pc.handle_read(msg);
        self.drain();
    }

    fn drain(&mut self) {
        while let Some(msg) = self.pc.poll_read() {
            if let RTCMessage::RtpPacket(_, packet) = msg.message {
                self.rtp_ssrc = Some(packet.header.ssrc);
            }
        }
        while let Some(event) = self.pc.poll_event() {
            if let RTCPeerConnectionEvent::OnConnectionStateChangeEvent(state) = event {
                self.connected = state == RTCPeerConnectionState::Connected;
            }
        }
    }

    fn tick(&mut self) {
        let now = Instant::now();
        if self.pc.poll_timeout().is_some_and(|t| t <= now) {
            let _ = self.pc.handle_timeout(now);
        }
        self.drain();
    }
}

fn vp8() -> RTCRtpCodecParameters {
    RTCRtpCodecParameters {
        rtp_codec: RTCRtpCodec {
            mime_type: MIME_TYPE_VP8.to_owned(),
            clock_rate: 90000,
            channels: 0,
            sdp_fmtp_line: String::new(),
            rtcp_feedback: vec![],
        },
        payload_type: 96,
    }
}

/// A participant an input added, removed again by `Rig::leave_guest`.
struct Guest {
    participant_id: String,
    events: mpsc::Receiver<ServerMessage>,
}

/// A worker with a connected publisher and subscriber and a pending connection (module docs).
struct Rig {
    worker: Worker<MemoryDatagrams>,
    handle: MediaHandle,
    clients: Vec<Client>,
    sender: RTCRtpSenderId,
    video_pt: u8,
    sequence: u16,
    timestamp: u32,
    /// The SSRC of the subscriber's video leg.
    leg_ssrc: u32,
    pending_ufrag: String,
    /// A valid publish offer (video), for inputs that need a publish connection first.
    publish_sdp: String,
    /// A valid answer to the subscribe offer of a participant joining the rig's room.
    subscribe_sdp: String,
    /// The rig's own participants' message queues: drained after each input so that none
    /// overflows (which would remove its participant).
    events: Vec<mpsc::Receiver<ServerMessage>>,
    media_events: mpsc::Receiver<MediaEvent>,
    built: Instant,
    last_tick: Instant,
    inputs: u64,
    broken: bool,
}

impl Rig {
    /// Builds the rig; with `seeds`, records the clients' traffic and SDP as seed inputs.
    fn new(mut seeds: Option<&mut Vec<(&'static str, Vec<u8>)>>) -> Self {
        let (handle, inbox) = bridge::channel().expect("eventfd");
        let (media_events_tx, media_events) = mpsc::channel(bridge::EVENT_QUEUE);
        let server: SocketAddr = SERVER.parse().expect("constant addr");
        let worker = Worker::new(MemoryDatagrams::default(), server, inbox, media_events_tx);

        let mut publisher = Client::new("127.0.0.1:40000".parse().expect("constant addr"));
        let track = MediaStreamTrack::new(
            "stream".into(),
            "camera".into(),
            "camera".into(),
            RtpCodecKind::Video,
            vec![RTCRtpEncodingParameters {
                rtp_coding_parameters: RTCRtpCodingParameters {
                    ssrc: Some(VIDEO_SSRC),
                    ..Default::default()
                },
                codec: vp8().rtp_codec,
                ..Default::default()
            }],
        );
        let sender = publisher.pc.add_track(track).expect("add track");
        let offer = publisher.pc.create_offer(None).expect("offer");
        publisher
            .pc
            .set_local_description(Instant::now(), offer.clone())
            .expect("local offer");
        let mut rig = Self {
            worker,
            handle,
            clients: Vec::new(),
            sender,
            video_pt: 0,
            sequence: 0,
            timestamp: 0,
            leg_ssrc: 0,
            pending_ufrag: String::new(),
            publish_sdp: offer.sdp.clone(),
            subscribe_sdp: String::new(),
            events: Vec::new(),
            media_events,
            built: Instant::now(),
            last_tick: Instant::now(),
            inputs: 0,
            broken: false,
        };
        if let Some(seeds) = seeds.as_deref_mut() {
            for name in ["publish_offer", "whip_offer"] {
                seeds.push((name, offer.sdp.clone().into_bytes()));
            }
            let ws = serde_json::json!({
                "type": "publish_offer",
                "sdp": offer.sdp,
                "sources": {"camera": "camera"},
            });
            seeds.push(("ws_message", ws.to_string().into_bytes()));
        }

        let (publisher_id, events) = rig.join("publisher", true, false);
        rig.events.push(events);
        let answer = rig
            .request(|reply| Command::PublishOffer {
                participant_id: publisher_id,
                sdp: offer.sdp,
                sources: HashMap::from([("camera".to_owned(), TrackSource::Camera)]),
                reply,
            })
            .expect("answered")
            .expect("the worker accepts the publish offer");
        let publisher_ufrag = answer_ufrag(&answer);
        publisher
            .pc
            .set_remote_description(
                Instant::now(),
                RTCSessionDescription::answer(answer).expect("answer parses"),
            )
            .expect("remote answer");
        rig.clients.push(publisher);
        rig.settle(|rig| rig.clients[PUBLISHER].connected, seeds.as_deref_mut());
        if let Some(seeds) = seeds.as_deref_mut() {
            // The publisher's checks, as if from strangers for the pending connection.
            let stun: Vec<Vec<u8>> = seeds
                .iter()
                .filter(|(t, s)| *t == "datagram" && s.first() == Some(&0) && s.get(1) == Some(&0))
                .map(|(_, s)| s[1..].to_vec())
                .collect();
            for (i, check) in stun.into_iter().enumerate() {
                let check = replace_all(&check, publisher_ufrag.as_bytes(), UFRAG_PLACEHOLDER);
                seeds.push(("datagram", [&[2 + (i % 2) as u8][..], &check].concat()));
            }
        }
        rig.video_pt = rig.clients[PUBLISHER]
            .pc
            .rtp_sender(rig.sender)
            .expect("sender")
            .get_parameters()
            .rtp_parameters
            .codecs
            .first()
            .map(|c| c.payload_type)
            .expect("a negotiated codec");
        rig.publish_frame(true); // the track opens on the worker with its first packet

        // The subscriber answers the worker's subscribe offer.
        let (subscriber_id, mut events) = rig.join("subscriber", false, true);
        let offer = rig.wait_offer(&mut events);
        let mut subscriber = Client::new("127.0.0.1:40001".parse().expect("constant addr"));
        subscriber
            .pc
            .set_remote_description(
                Instant::now(),
                RTCSessionDescription::offer(offer.clone()).expect("offer parses"),
            )
            .expect("remote offer");
        let answer = subscriber.pc.create_answer(None).expect("answer");
        subscriber
            .pc
            .set_local_description(Instant::now(), answer.clone())
            .expect("local answer");
        if let Some(seeds) = seeds.as_deref_mut() {
            seeds.push(("subscribe_answer", answer.sdp.clone().into_bytes()));
            let ws = serde_json::json!({"type": "subscribe_answer", "sdp": answer.sdp});
            seeds.push(("ws_message", ws.to_string().into_bytes()));
        }
        rig.subscribe_sdp = answer.sdp.clone();
        rig.request(|reply| Command::SubscribeAnswer {
            participant_id: subscriber_id,
            sdp: answer.sdp,
            reply,
        })
        .expect("answered")
        .expect("the worker accepts the subscribe answer");
        rig.clients.push(subscriber);
        rig.events.push(events);
        rig.settle(
            |rig| rig.clients[SUBSCRIBER].connected,
            seeds.as_deref_mut(),
        );
        let deadline = Instant::now() + SETTLE;
        while rig.clients[SUBSCRIBER].rtp_ssrc.is_none() {
            assert!(
                Instant::now() < deadline,
                "video did not reach the subscriber"
            );
            rig.publish_frame(true);
            rig.exchange(true, seeds.as_deref_mut());
            std::thread::sleep(Duration::from_millis(2));
        }
        rig.leg_ssrc = rig.clients[SUBSCRIBER].rtp_ssrc.expect("checked above");

        // The pending connection: a publish offer answered, then silence.
        let (pending_id, events) = rig.join("pending", true, false);
        rig.events.push(events);
        let mut client = Client::new("127.0.0.1:40002".parse().expect("constant addr"));
        let track = MediaStreamTrack::new(
            "pending".into(),
            "camera".into(),
            "camera".into(),
            RtpCodecKind::Video,
            vec![RTCRtpEncodingParameters {
                rtp_coding_parameters: RTCRtpCodingParameters {
                    ssrc: Some(0x5eed_0002),
                    ..Default::default()
                },
                codec: vp8().rtp_codec,
                ..Default::default()
            }],
        );
        client.pc.add_track(track).expect("add track");
        let offer = client.pc.create_offer(None).expect("offer");
        let answer = rig
            .request(|reply| Command::PublishOffer {
                participant_id: pending_id,
                sdp: offer.sdp,
                sources: HashMap::new(),
                reply,
            })
            .expect("answered")
            .expect("the worker accepts the pending offer");
        rig.pending_ufrag = answer_ufrag(&answer);
        rig.drain_events();
        if let Some(seeds) = seeds {
            rig.plain_seeds(seeds);
        }
        rig.built = Instant::now();
        rig
    }

    /// Plain RTP and RTCP for `media_packet`, and the other targets' hand-written seeds.
    fn plain_seeds(&mut self, seeds: &mut Vec<(&'static str, Vec<u8>)>) {
        use rtc::shared::marshal::Marshal;
        let packet = |marker: bool, payload: &[u8]| rtc::rtp::packet::Packet {
            header: rtc::rtp::header::Header {
                version: 2,
                marker,
                payload_type: self.video_pt,
                sequence_number: 1,
                timestamp: 3000,
                ssrc: VIDEO_SSRC,
                ..Default::default()
            },
            payload: Bytes::copy_from_slice(payload),
        };
        // VP8: a keyframe's first packet, a delta frame's, with a picture id.
        for (flags, payload) in [
            (
                2u8,
                &[0x10u8, 0x00, 0x9d, 0x01, 0x2a, 0x80, 0x02, 0xe0, 0x01][..],
            ),
            (2, &[0x90, 0x80, 0x81, 0x23, 0x01, 0x00, 0x00][..]),
        ] {
            let mut input = vec![flags];
            input.extend_from_slice(&packet(true, payload).marshal().expect("marshals"));
            seeds.push(("media_packet", input));
        }
        // RTCP from the subscriber: PLI, FIR, a NACK, a receiver report; from the publisher:
        // a sender report.
        let s = SSRC_PLACEHOLDER;
        let pli = [&[0x81, 206, 0, 2, 0, 0, 0, 1][..], &s].concat();
        let fir = [
            &[0x84, 206, 0, 4, 0, 0, 0, 1, 0, 0, 0, 0][..],
            &s,
            &[7, 0, 0, 0],
        ]
        .concat();
        let nack = [&[0x81, 205, 0, 3, 0, 0, 0, 1][..], &s, &[0, 1, 0, 5]].concat();
        let rr = [
            &[0x81, 201, 0, 7, 0, 0, 0, 1][..],
            &s,
            &[0, 0, 0, 2, 0, 0, 0, 9, 0, 0, 0, 3, 0, 0, 0, 0, 0, 0, 0, 0],
        ]
        .concat();
        let sr = [
            &[0x80, 200, 0, 6][..],
            &VIDEO_SSRC.to_be_bytes(),
            &[
                0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0x0b, 0xb8, 0, 0, 0, 4, 0, 0, 0x10, 0,
            ],
        ]
        .concat();
        for (flags, body) in [(1u8, pli), (1, fir), (1, nack), (1, rr), (3, sr)] {
            seeds.push(("media_packet", [&[flags][..], &body].concat()));
        }

        // /ws messages of every kind.
        let token = WS_AUTH.with(|a| {
            a.mint(&crate::auth::Claims {
                sub: "fuzzer".into(),
                name: "Fuzzer".into(),
                exp: crate::auth::unix_now() + 10 * 365 * 24 * 3600,
                room: Some(ROOM.into()),
                can_publish: true,
                can_subscribe: true,
                admin: false,
            })
        });
        let candidate =
            "candidate:1387637174 1 udp 2122260223 192.0.2.1 61764 typ host generation 0";
        for msg in [
            serde_json::json!({"type": "auth", "token": token}),
            serde_json::json!({"type": "join", "room": ROOM}),
            serde_json::json!({"type": "candidate", "pc": "publish",
                "candidate": {"candidate": candidate, "sdpMid": "0", "sdpMLineIndex": 0,
                    "usernameFragment": "EsAw"}}),
            serde_json::json!({"type": "candidate", "pc": "subscribe",
                "candidate": {"candidate": candidate, "sdpMid": "0"}}),
            serde_json::json!({"type": "candidate", "pc": "publish", "candidate": {"candidate": ""}}),
            serde_json::json!({"type": "media_state", "audio": true, "video": false, "screen": true}),
            serde_json::json!({"type": "leave"}),
            serde_json::json!({"type": "ping"}),
        ] {
            seeds.push(("ws_message", msg.to_string().into_bytes()));
        }

        // WHIP PATCH: trickled candidates, and an ICE restart.
        let trickle = format!(
            "a=ice-ufrag:EsAw\r\na=ice-pwd:P2uYro0UCOQ4zxjKXaWCBui1\r\nm=audio 9 RTP/AVP 0\r\n\
             a=mid:0\r\na={candidate}\r\na=candidate:2 1 udp 2122260222 10.0.0.7 5000 typ host\r\n\
             a=end-of-candidates\r\n"
        );
        seeds.push(("whip_patch", trickle.into_bytes()));
        seeds.push((
            "whip_patch",
            b"a=ice-ufrag:Newufrag\r\na=ice-pwd:NewPasswordNewPasswordNew\r\n".to_vec(),
        ));

        // A WHEP viewer's offer: recvonly video from a client.
        let mut viewer = Client::new("127.0.0.1:40003".parse().expect("constant addr"));
        let _ = viewer.pc.add_transceiver_from_kind(
            RtpCodecKind::Video,
            Some(rtc::rtp_transceiver::RTCRtpTransceiverInit {
                direction: rtc::rtp_transceiver::RTCRtpTransceiverDirection::Recvonly,
                ..Default::default()
            }),
        );
        if let Ok(offer) = viewer.pc.create_offer(None) {
            seeds.push(("whep_offer", offer.sdp.into_bytes()));
        }
    }

    fn join(
        &mut self,
        name: &str,
        can_publish: bool,
        can_subscribe: bool,
    ) -> (String, mpsc::Receiver<ServerMessage>) {
        let guest = self.join_in(ROOM, name, can_publish, can_subscribe);
        let guest = guest.expect("the rig's participants join");
        (guest.participant_id, guest.events)
    }

    fn join_in(
        &mut self,
        room: &str,
        name: &str,
        can_publish: bool,
        can_subscribe: bool,
    ) -> Option<Guest> {
        let (events, rx) = mpsc::channel(bridge::PARTICIPANT_QUEUE);
        let joined = self.request(|reply| Command::Join {
            request: JoinRequest {
                room: room.into(),
                user_id: name.into(),
                name: name.into(),
                can_publish,
                can_subscribe,
                max_participants: 20,
                kind: bridge::SessionKind::Signal,
            },
            events,
            reply,
        })?;
        joined.ok().map(|j| Guest {
            participant_id: j.participant_id,
            events: rx,
        })
    }

    /// A participant for one input. A rig that cannot take one is rebuilt before the next.
    fn join_guest(&mut self, room: &str, can_publish: bool, can_subscribe: bool) -> Guest {
        self.join_in(room, "guest", can_publish, can_subscribe)
            .unwrap_or_else(|| {
                self.broken = true;
                let (_, events) = mpsc::channel(1);
                Guest {
                    participant_id: String::new(),
                    events,
                }
            })
    }

    fn leave_guest(&mut self, guest: Guest) {
        let _ = self.handle.send(Command::Leave {
            participant_id: guest.participant_id,
            reason: LeaveReason::Left,
        });
        self.turn();
        drop(guest.events);
    }

    /// Sends a command, runs a turn, returns the reply (`None`: the worker did not answer in
    /// one turn, which no command should do).
    fn request<T>(
        &mut self,
        command: impl FnOnce(Reply<T>) -> Command,
    ) -> Option<Result<T, MediaError>> {
        let (reply, mut rx) = oneshot::channel();
        if self.handle.send(command(reply)).is_err() {
            self.broken = true;
            return None;
        }
        self.turn();
        let answer = rx.try_recv().ok();
        match &answer {
            None => self.broken = true,
            Some(Ok(_)) => set_outcome("ok"),
            Some(Err(e)) => set_outcome(e.code()),
        }
        answer
    }

    fn stats(&mut self) -> Option<WorkerStats> {
        let (reply, mut rx) = oneshot::channel();
        self.handle.send(Command::Stats { reply }).ok()?;
        self.turn();
        rx.try_recv().ok()
    }

    /// One worker turn; what it sends is dropped (the clients hear from it in `keep_alive`).
    fn turn(&mut self) {
        self.worker.turn(Instant::now());
        self.worker.datagrams().outbound.clear();
    }

    fn wait_offer(&mut self, events: &mut mpsc::Receiver<ServerMessage>) -> String {
        let deadline = Instant::now() + SETTLE;
        loop {
            while let Ok(msg) = events.try_recv() {
                if let ServerMessage::SubscribeOffer { sdp, .. } = msg {
                    return sdp;
                }
            }
            assert!(Instant::now() < deadline, "no subscribe offer");
            self.exchange(true, None);
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Runs clients and worker until `done`, exchanging every datagram.
    fn settle(
        &mut self,
        done: impl Fn(&Self) -> bool,
        mut seeds: Option<&mut Vec<(&'static str, Vec<u8>)>>,
    ) {
        let deadline = Instant::now() + SETTLE;
        while !done(self) {
            assert!(
                Instant::now() < deadline,
                "the rig's clients did not connect"
            );
            for c in &mut self.clients {
                c.tick();
            }
            self.exchange(true, seeds.as_deref_mut());
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Moves the clients' datagrams to the worker, runs one turn and delivers its output.
    fn exchange(&mut self, deliver: bool, seeds: Option<&mut Vec<(&'static str, Vec<u8>)>>) {
        let mut seen = Vec::new();
        for (i, c) in self.clients.iter_mut().enumerate() {
            while let Some(msg) = c.pc.poll_write() {
                seen.push((i as u8, msg.message.to_vec()));
                self.worker
                    .datagrams()
                    .inbound
                    .push_back((c.addr, msg.message));
            }
        }
        if let Some(seeds) = seeds {
            record_datagrams(seeds, seen);
        }
        self.worker.turn(Instant::now());
        for (to, bytes) in std::mem::take(&mut self.worker.datagrams().outbound) {
            if let Some(c) = self.clients.iter_mut().find(|c| c.addr == to)
                && deliver
            {
                c.receive(bytes);
            }
        }
    }

    /// Writes one frame of the publisher (4 packets).
    fn publish_frame(&mut self, keyframe: bool) {
        self.timestamp = self.timestamp.wrapping_add(3000);
        for i in 0..4 {
            let mut payload = vec![0xa5u8; 200];
            payload[0] = if i == 0 { 0x10 } else { 0x00 };
            payload[1] = if keyframe { 0x00 } else { 0x01 };
            self.sequence = self.sequence.wrapping_add(1);
            let packet = rtc::rtp::packet::Packet {
                header: rtc::rtp::header::Header {
                    version: 2,
                    marker: i == 3,
                    payload_type: self.video_pt,
                    sequence_number: self.sequence,
                    timestamp: self.timestamp,
                    ssrc: VIDEO_SSRC,
                    ..Default::default()
                },
                payload: Bytes::from(payload),
            };
            if let Some(mut sender) = self.clients[PUBLISHER].pc.rtp_sender(self.sender) {
                let _ = sender.write_rtp(Instant::now(), packet);
            }
        }
    }

    fn drain_events(&mut self) {
        for rx in &mut self.events {
            while rx.try_recv().is_ok() {}
        }
        while self.media_events.try_recv().is_ok() {}
    }

    fn after_input(&mut self) {
        self.inputs += 1;
        self.drain_events();
        if self.last_tick.elapsed() >= CLIENT_TICK {
            self.last_tick = Instant::now();
            for c in &mut self.clients {
                c.tick();
            }
            self.exchange(true, None);
            self.drain_events();
        }
        if self.inputs.is_multiple_of(CHECK_EVERY) {
            // The publisher, the subscriber and the pending participant, nobody else.
            let participants = self.stats().map(|s| s.participants);
            if participants != Some(3) {
                self.broken = true;
            }
        }
    }

    fn why_unhealthy(&self) -> &'static str {
        if self.broken {
            "a participant is gone or a command went unanswered"
        } else if self.built.elapsed() >= RIG_LIFETIME {
            "old"
        } else if !self.clients.iter().all(|c| c.connected) {
            "a client disconnected"
        } else {
            "healthy"
        }
    }

    fn healthy(&self) -> bool {
        !self.broken
            && self.built.elapsed() < RIG_LIFETIME
            && self.clients.iter().all(|c| c.connected)
    }
}

/// The worker's counters that an input moved, e.g. `datagrams_in+1 drop:peer_rejected+1`.
fn counters_moved(before: &WorkerStats, after: &WorkerStats) -> String {
    let mut moved = Vec::new();
    for (name, b, a) in [
        ("datagrams_in", before.datagrams_in, after.datagrams_in),
        ("rtp_in", before.rtp_in, after.rtp_in),
        ("rtp_forwarded", before.rtp_forwarded, after.rtp_forwarded),
        (
            "keyframe_requests_in",
            before.keyframe_requests_in,
            after.keyframe_requests_in,
        ),
        ("nacks_in", before.nacks_in, after.nacks_in),
    ] {
        if a > b {
            moved.push(format!("{name}+{}", a - b));
        }
    }
    for reason in Drop::ALL {
        let (b, a) = (before.dropped(reason), after.dropped(reason));
        if a > b {
            moved.push(format!("drop:{}+{}", reason.as_str(), a - b));
        }
    }
    moved.join(" ")
}

fn answer_ufrag(sdp: &str) -> String {
    sdp.lines()
        .find_map(|l| l.strip_prefix("a=ice-ufrag:"))
        .expect("the worker's answer has a ufrag")
        .trim()
        .to_owned()
}

/// Keeps the first few datagrams of each kind the clients sent, as `datagram` seeds.
fn record_datagrams(seeds: &mut Vec<(&'static str, Vec<u8>)>, seen: Vec<(u8, Vec<u8>)>) {
    use crate::media::demux::classify;
    const PER_KIND: usize = 3;
    for (client, bytes) in seen {
        let kind = classify(&bytes);
        let same = seeds
            .iter()
            .filter(|(t, s)| {
                *t == "datagram" && s.first() == Some(&client) && classify(&s[1..]) == kind
            })
            .count();
        if same < PER_KIND {
            seeds.push(("datagram", [&[client][..], &bytes].concat()));
        }
    }
}
