//! The real media plane, in process and without sockets: one publisher's SRTP video packets go
//! into a `Worker` built on `MemoryDatagrams`, and come out SRTP-encrypted on N subscriber legs.
//!
//! `cargo bench --bench media_plane` (`-- legs/19` for one case). Group `legs` hands the worker
//! 32 packets per turn, group `paced` one.
//!
//! The publisher and the subscribers are real `rtc` peer connections that negotiate with the
//! worker through its commands (join, publish offer, subscribe answer, as the signaling layer
//! sends them) and connect through ICE and DTLS by exchanging datagrams in memory. Once every
//! leg carries video, each measured step hands the worker 32 ready-made SRTP packets of the
//! publisher (encrypted beforehand, outside the measurement) and runs one `Worker::turn` (or,
//! in group `paced`, 32 turns of one packet each):
//! routing, SRTP decryption, the interceptors, the munger, the header-extension remap, one
//! `handle_write` per leg and the SRTP encryption of every output packet.
//!
//! **The figure reported is CPU time per forwarded output packet**: the thread's CPU time over
//! the measured turns divided by the RTP datagrams they produced for the subscribers. Nothing is
//! sent, so the kernel's part (the `sendmmsg` and `recvmmsg` the server pays for each packet,
//! measured by `baseline/cpu` in the `forwarding` bench) is not in it.
//!
//! Outside the measurement, every 100 ms of wall time, the subscribers' and the publisher's own
//! timers run and their STUN consent checks reach the worker, so that it keeps them (a
//! subscriber the worker does not hear from for 7 s is dropped). The output RTP itself is
//! counted and discarded: the subscribers do not decrypt it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use rtc::media_stream::MediaStreamTrack;
use rtc::peer_connection::configuration::RTCConfigurationBuilder;
use rtc::peer_connection::configuration::media_engine::{MIME_TYPE_VP8, MediaEngine};
use rtc::peer_connection::event::RTCPeerConnectionEvent;
use rtc::peer_connection::message::RTCMessage;
use rtc::peer_connection::sdp::RTCSessionDescription;
use rtc::peer_connection::state::RTCPeerConnectionState;
use rtc::peer_connection::{RTCPeerConnection, RTCPeerConnectionBuilder};
use rtc::rtp::header::Header;
use rtc::rtp::packet::Packet;
use rtc::rtp_transceiver::RTCRtpSenderId;
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodec, RTCRtpCodecParameters, RTCRtpCodingParameters, RTCRtpEncodingParameters,
    RtpCodecKind,
};
use rtc::sansio::Protocol;
use rtc::shared::{TaggedBytesMut, TransportContext, TransportProtocol};
use switchboard::bridge::{Command, JoinRequest, MediaHandle, SessionKind, channel};
use switchboard::media::Worker;
use switchboard::media::demux::{DatagramKind, classify};
use switchboard::media::net::{BATCH, MemoryDatagrams, thread_cpu_time};
use switchboard::media::peer::add_host_candidate;
use switchboard::signal::protocol::{ServerMessage, TrackSource};
use tokio::sync::{mpsc, oneshot};

/// The worker's advertised address. Nothing listens on it: datagrams only travel in memory.
const SERVER: &str = "127.0.0.1:3478";
/// Full video packets of a ~1 Mbit/s VP8 stream: 1100 bytes of RTP before SRTP's tag.
const VIDEO_PAYLOAD: usize = 1100 - 12;
/// How often (wall time) the clients' timers run between measured steps.
const CLIENT_TICK: Duration = Duration::from_millis(100);

/// One client connection: an `rtc` peer with a made-up address the worker sees as its source.
struct Client {
    pc: RTCPeerConnection,
    addr: SocketAddr,
    connected: bool,
    rtp_received: u64,
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
            rtp_received: 0,
        }
    }

    fn receive(&mut self, bytes: BytesMut) {
        let msg = TaggedBytesMut {
            now: Instant::now(),
            transport: TransportContext {
                local_addr: self.addr,
                peer_addr: SERVER.parse().expect("addr"),
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
            if let RTCMessage::RtpPacket(..) = msg.message {
                self.rtp_received += 1;
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

/// A worker, its command handle, one publisher and N subscribers, all connected in memory.
struct Rig {
    worker: Worker<MemoryDatagrams>,
    handle: MediaHandle,
    /// Index 0 is the publisher's publish connection; the rest are subscribe connections.
    clients: Vec<Client>,
    by_addr: HashMap<SocketAddr, usize>,
    sender: RTCRtpSenderId,
    ssrc: u32,
    payload_type: u8,
    sequence: u16,
    timestamp: u32,
    /// Events channels of the participants (kept open: a closed one removes its participant).
    _events: Vec<mpsc::Receiver<ServerMessage>>,
    _media_events: mpsc::Receiver<switchboard::bridge::MediaEvent>,
    last_tick: Instant,
}

impl Rig {
    fn new(subscribers: usize) -> Self {
        let (handle, inbox) = channel().expect("eventfd");
        let (media_events, media_events_rx) = mpsc::channel(1024);
        let server: SocketAddr = SERVER.parse().expect("addr");
        let worker = Worker::new(MemoryDatagrams::default(), server, inbox, media_events);

        // The publisher: one VP8 track on its publish connection.
        let ssrc = 0x5eed_0001;
        let mut client = Client::new("127.0.0.1:40000".parse().expect("addr"));
        let track = MediaStreamTrack::new(
            "stream".into(),
            "camera".into(),
            "camera".into(),
            RtpCodecKind::Video,
            vec![RTCRtpEncodingParameters {
                rtp_coding_parameters: RTCRtpCodingParameters {
                    ssrc: Some(ssrc),
                    ..Default::default()
                },
                codec: vp8().rtp_codec,
                ..Default::default()
            }],
        );
        let sender = client.pc.add_track(track).expect("add track");
        let mut rig = Self {
            worker,
            handle,
            clients: Vec::new(),
            by_addr: HashMap::new(),
            sender,
            ssrc,
            payload_type: 0,
            sequence: 0,
            timestamp: 0,
            _events: Vec::new(),
            _media_events: media_events_rx,
            last_tick: Instant::now(),
        };
        let (publisher, publisher_events) = rig.join("publisher");
        rig._events.push(publisher_events);
        let offer = client.pc.create_offer(None).expect("offer");
        client
            .pc
            .set_local_description(Instant::now(), offer.clone())
            .expect("local offer");
        let mid = offer_mid(&offer.sdp);
        let answer = rig.request(|reply| Command::PublishOffer {
            participant_id: publisher.clone(),
            sdp: offer.sdp,
            sources: HashMap::from([(mid, TrackSource::Camera)]),
            reply,
        });
        client
            .pc
            .set_remote_description(
                Instant::now(),
                RTCSessionDescription::answer(answer).expect("answer parses"),
            )
            .expect("remote answer");
        rig.add_client(client);
        rig.settle(|rig| rig.clients[0].connected, "the publisher connects");
        rig.payload_type = rig.clients[0]
            .pc
            .rtp_sender(rig.sender)
            .expect("sender")
            .get_parameters()
            .rtp_parameters
            .codecs
            .first()
            .map(|c| c.payload_type)
            .expect("a negotiated codec");
        // A keyframe, so the track opens on the worker.
        rig.publish_frame(true);

        // The subscribers: each answers the worker's subscribe offer.
        for i in 0..subscribers {
            let (id, mut events) = rig.join(&format!("subscriber-{i}"));
            let sdp = rig.wait_offer(&mut events);
            let mut client = Client::new(SocketAddr::from(([127, 0, 0, 1], 40001 + i as u16)));
            client
                .pc
                .set_remote_description(
                    Instant::now(),
                    RTCSessionDescription::offer(sdp).expect("offer parses"),
                )
                .expect("remote offer");
            let answer = client.pc.create_answer(None).expect("answer");
            client
                .pc
                .set_local_description(Instant::now(), answer.clone())
                .expect("local answer");
            rig.request(|reply| Command::SubscribeAnswer {
                participant_id: id,
                sdp: answer.sdp,
                reply,
            });
            rig.add_client(client);
            rig._events.push(events);
        }
        rig.settle(
            |rig| rig.clients.iter().all(|c| c.connected),
            "every subscriber connects",
        );
        // Keyframes until every leg has started (a leg starts at a keyframe).
        let deadline = Instant::now() + Duration::from_secs(20);
        while rig.clients[1..].iter().any(|c| c.rtp_received == 0) {
            assert!(Instant::now() < deadline, "video did not reach every leg");
            rig.publish_frame(true);
            rig.exchange(true);
        }
        rig
    }

    fn join(&mut self, name: &str) -> (String, mpsc::Receiver<ServerMessage>) {
        let (events, rx) = mpsc::channel(256);
        let joined = self.request(|reply| Command::Join {
            request: JoinRequest {
                room: "bench".into(),
                user_id: name.into(),
                name: name.into(),
                can_publish: true,
                can_subscribe: true,
                max_participants: 20,
                kind: SessionKind::Signal,
            },
            events,
            reply,
        });
        (joined.participant_id, rx)
    }

    /// Sends a command, runs a turn, returns the reply.
    fn request<T: std::fmt::Debug>(
        &mut self,
        command: impl FnOnce(switchboard::bridge::Reply<T>) -> Command,
    ) -> T {
        let (reply, mut rx) = oneshot::channel();
        self.handle.send(command(reply)).expect("queue has room");
        self.worker.turn(Instant::now());
        rx.try_recv()
            .expect("answered in one turn")
            .expect("the worker accepts the command")
    }

    fn wait_offer(&mut self, events: &mut mpsc::Receiver<ServerMessage>) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            while let Ok(msg) = events.try_recv() {
                if let ServerMessage::SubscribeOffer { sdp, .. } = msg {
                    return sdp;
                }
            }
            assert!(Instant::now() < deadline, "no subscribe offer");
            self.exchange(true);
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn add_client(&mut self, client: Client) {
        self.by_addr.insert(client.addr, self.clients.len());
        self.clients.push(client);
    }

    /// Runs clients and worker until `done`, exchanging every datagram.
    fn settle(&mut self, done: impl Fn(&Self) -> bool, what: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !done(self) {
            assert!(Instant::now() < deadline, "timed out: {what}");
            for c in &mut self.clients {
                c.tick();
            }
            self.exchange(true);
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Moves the clients' datagrams to the worker, runs one turn, and delivers its output:
    /// everything when `deliver_rtp`, otherwise all but the forwarded RTP, which is counted.
    fn exchange(&mut self, deliver_rtp: bool) -> u64 {
        for c in &mut self.clients {
            while let Some(msg) = c.pc.poll_write() {
                self.worker
                    .datagrams()
                    .inbound
                    .push_back((c.addr, msg.message));
            }
        }
        self.worker.turn(Instant::now());
        self.deliver(deliver_rtp)
    }

    fn deliver(&mut self, deliver_rtp: bool) -> u64 {
        let mut rtp = 0;
        for (to, bytes) in std::mem::take(&mut self.worker.datagrams().outbound) {
            let is_rtp = is_rtp(&bytes);
            rtp += u64::from(is_rtp);
            if (deliver_rtp || !is_rtp)
                && let Some(&i) = self.by_addr.get(&to)
            {
                self.clients[i].receive(bytes);
            }
        }
        rtp
    }

    /// Writes one frame of the publisher (a keyframe of 4 packets, or a delta frame of 4).
    fn publish_frame(&mut self, keyframe: bool) {
        self.timestamp = self.timestamp.wrapping_add(3000);
        for i in 0..4 {
            let mut payload = vec![0xa5u8; VIDEO_PAYLOAD];
            // VP8 descriptor: S on the first packet; frame tag P=0 on a keyframe.
            payload[0] = if i == 0 { 0x10 } else { 0x00 };
            payload[1] = if keyframe { 0x00 } else { 0x01 };
            self.sequence = self.sequence.wrapping_add(1);
            let packet = Packet {
                header: Header {
                    version: 2,
                    marker: i == 3,
                    payload_type: self.payload_type,
                    sequence_number: self.sequence,
                    timestamp: self.timestamp,
                    ssrc: self.ssrc,
                    ..Default::default()
                },
                payload: Bytes::from(payload),
            };
            self.clients[0]
                .pc
                .rtp_sender(self.sender)
                .expect("sender")
                .write_rtp(Instant::now(), packet)
                .expect("write_rtp");
        }
    }

    /// `BATCH` SRTP datagrams of the publisher, ready for the worker (8 delta frames).
    fn next_batch(&mut self) -> Vec<(SocketAddr, BytesMut)> {
        for _ in 0..BATCH / 4 {
            self.publish_frame(false);
        }
        let from = self.clients[0].addr;
        let mut batch = Vec::with_capacity(BATCH);
        while let Some(msg) = self.clients[0].pc.poll_write() {
            batch.push((from, msg.message));
        }
        batch
    }

    /// Every `CLIENT_TICK`: client timers and their consent checks, outside the measurement.
    fn keep_alive(&mut self) {
        if self.last_tick.elapsed() < CLIENT_TICK {
            return;
        }
        self.last_tick = Instant::now();
        for c in &mut self.clients {
            c.tick();
        }
        self.exchange(false);
    }
}

/// SRTP, not SRTCP (RFC 5761 §4: RTCP packet types 192–223 in the second byte).
fn is_rtp(datagram: &[u8]) -> bool {
    classify(datagram) == DatagramKind::Rtp
        && datagram.get(1).is_some_and(|b| !(192..=223).contains(b))
}

fn offer_mid(sdp: &str) -> String {
    sdp.lines()
        .find_map(|l| l.strip_prefix("a=mid:"))
        .expect("the offer has a mid")
        .trim()
        .to_owned()
}

/// A batch of 32 publisher packets per turn, as a burst of input arrives.
fn legs(c: &mut Criterion) {
    forward(c, "legs", BATCH);
}

/// One publisher packet per turn, as paced input arrives (the load tool's publishers pace
/// their video as browsers do, so the real server's turns mostly see one packet each): what
/// a turn costs beyond its packets (draining every touched connection, its timers, the send)
/// is not shared among 32 packets.
fn paced(c: &mut Criterion) {
    forward(c, "paced", 1);
}

/// Group `name`: CPU per forwarded output packet with `per_turn` input packets per turn, for 1,
/// 4 and 19 subscriber legs.
fn forward(c: &mut Criterion, name: &str, per_turn: usize) {
    let mut group = c.benchmark_group(name);
    for subscribers in [1usize, 4, 19] {
        let mut rig = Rig::new(subscribers);
        // One criterion iteration = one forwarded output packet.
        group.throughput(Throughput::Elements(1));
        group.bench_function(BenchmarkId::from_parameter(subscribers), |b| {
            b.iter_custom(|iters| {
                let mut cpu = Duration::ZERO;
                let mut out = 0u64;
                while out < iters {
                    rig.keep_alive();
                    let mut batch = rig.next_batch();
                    let rtp_in = batch.iter().filter(|(_, b)| is_rtp(b)).count();
                    let expected = (rtp_in * subscribers) as u64;
                    let t0 = thread_cpu_time();
                    while !batch.is_empty() {
                        let turn = batch.drain(..per_turn.min(batch.len()));
                        rig.worker.datagrams().inbound.extend(turn);
                        rig.worker.turn(Instant::now());
                    }
                    cpu += thread_cpu_time() - t0;
                    let forwarded = rig.deliver(false);
                    assert_eq!(forwarded, expected, "every packet on every leg");
                    out += forwarded;
                }
                cpu.mul_f64(iters as f64 / out as f64)
            })
        });
        assert!(
            rig.clients.iter().all(|c| c.connected),
            "a connection dropped during the bench"
        );
    }
    group.finish();
}

criterion_group!(benches, legs, paced);
criterion_main!(benches);
