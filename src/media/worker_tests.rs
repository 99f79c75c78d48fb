//! A worker driven in process (as `benches/media_plane.rs` does): real `rtc` clients connect
//! through in-memory datagrams. Panic containment: a panic while handling one room's datagrams
//! removes whom it happened for, and the worker goes on forwarding in every other room.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
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
use tokio::sync::{mpsc, oneshot};

use super::Worker;
use crate::bridge::{Command, JoinRequest, MediaHandle, SessionKind, channel};
use crate::media::net::MemoryDatagrams;
use crate::media::peer::add_host_candidate;
use crate::signal::protocol::ServerMessage;

const SERVER: &str = "127.0.0.1:3478";

struct Client {
    pc: RTCPeerConnection,
    addr: SocketAddr,
    connected: bool,
    rtp_received: u64,
}

impl Client {
    fn new(addr: SocketAddr) -> Self {
        let mut media = MediaEngine::default();
        media.register_codec(vp8(), RtpCodecKind::Video).unwrap();
        let mut pc = RTCPeerConnectionBuilder::new()
            .with_configuration(RTCConfigurationBuilder::new().build())
            .with_media_engine(media)
            .build(Instant::now())
            .unwrap();
        add_host_candidate(&mut pc, addr).unwrap();
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
                peer_addr: SERVER.parse().unwrap(),
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

/// One room: a publisher of one VP8 track and one subscriber.
struct Call {
    publisher: usize,
    subscriber: usize,
    subscriber_events: mpsc::Receiver<ServerMessage>,
    sender: RTCRtpSenderId,
    ssrc: u32,
    payload_type: u8,
    sequence: u16,
    timestamp: u32,
}

struct Rig {
    worker: Worker<MemoryDatagrams>,
    handle: MediaHandle,
    clients: Vec<Client>,
    by_addr: HashMap<SocketAddr, usize>,
    _events: Vec<mpsc::Receiver<ServerMessage>>,
    _media_events: mpsc::Receiver<crate::bridge::MediaEvent>,
    next_port: u16,
}

impl Rig {
    fn new() -> Self {
        let (handle, inbox) = channel().unwrap();
        let (media_events, media_events_rx) = mpsc::channel(1024);
        let worker = Worker::new(
            MemoryDatagrams::default(),
            SERVER.parse().unwrap(),
            inbox,
            media_events,
        );
        Self {
            worker,
            handle,
            clients: Vec::new(),
            by_addr: HashMap::new(),
            _events: Vec::new(),
            _media_events: media_events_rx,
            next_port: 40000,
        }
    }

    fn new_client(&mut self) -> Client {
        self.next_port += 1;
        Client::new(SocketAddr::from(([127, 0, 0, 1], self.next_port)))
    }

    fn join(&mut self, room: &str, name: &str) -> (String, mpsc::Receiver<ServerMessage>) {
        let (events, rx) = mpsc::channel(256);
        let joined = self.request(|reply| Command::Join {
            request: JoinRequest {
                room: room.into(),
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

    fn request<T: std::fmt::Debug>(
        &mut self,
        command: impl FnOnce(crate::bridge::Reply<T>) -> Command,
    ) -> T {
        let (reply, mut rx) = oneshot::channel();
        self.handle.send(command(reply)).unwrap();
        self.worker.turn(Instant::now());
        rx.try_recv().unwrap().unwrap()
    }

    fn add_client(&mut self, client: Client) -> usize {
        self.by_addr.insert(client.addr, self.clients.len());
        self.clients.push(client);
        self.clients.len() - 1
    }

    fn exchange(&mut self) {
        for c in &mut self.clients {
            c.tick();
            while let Some(msg) = c.pc.poll_write() {
                self.worker
                    .datagrams()
                    .inbound
                    .push_back((c.addr, msg.message));
            }
        }
        self.worker.turn(Instant::now());
        for (to, bytes) in std::mem::take(&mut self.worker.datagrams().outbound) {
            if let Some(&i) = self.by_addr.get(&to) {
                self.clients[i].receive(bytes);
            }
        }
    }

    fn settle(&mut self, done: impl Fn(&Self) -> bool, what: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !done(self) {
            assert!(Instant::now() < deadline, "timed out: {what}");
            self.exchange();
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// A publisher and a subscriber in `room`, with video reaching the subscriber.
    fn call(&mut self, room: &str) -> Call {
        let ssrc = rand::random();
        let mut client = self.new_client();
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
        let sender = client.pc.add_track(track).unwrap();
        let (publisher_id, publisher_events) = self.join(room, &format!("{room}-publisher"));
        self._events.push(publisher_events);
        let offer = client.pc.create_offer(None).unwrap();
        client
            .pc
            .set_local_description(Instant::now(), offer.clone())
            .unwrap();
        let answer = self.request(|reply| Command::PublishOffer {
            participant_id: publisher_id,
            sdp: offer.sdp,
            sources: HashMap::new(),
            reply,
        });
        client
            .pc
            .set_remote_description(
                Instant::now(),
                RTCSessionDescription::answer(answer).unwrap(),
            )
            .unwrap();
        let publisher = self.add_client(client);
        self.settle(|r| r.clients[publisher].connected, "the publisher connects");
        let payload_type = self.clients[publisher]
            .pc
            .rtp_sender(sender)
            .unwrap()
            .get_parameters()
            .rtp_parameters
            .codecs
            .first()
            .map(|c| c.payload_type)
            .unwrap();
        let mut call = Call {
            publisher,
            subscriber: usize::MAX,
            subscriber_events: mpsc::channel(1).1,
            sender,
            ssrc,
            payload_type,
            sequence: 0,
            timestamp: 0,
        };
        self.publish_frame(&mut call, true);

        let (subscriber_id, mut events) = self.join(room, &format!("{room}-subscriber"));
        let deadline = Instant::now() + Duration::from_secs(10);
        let sdp = loop {
            if let Ok(ServerMessage::SubscribeOffer { sdp, .. }) = events.try_recv() {
                break sdp;
            }
            assert!(Instant::now() < deadline, "no subscribe offer");
            self.publish_frame(&mut call, true);
            self.exchange();
        };
        let mut client = self.new_client();
        client
            .pc
            .set_remote_description(Instant::now(), RTCSessionDescription::offer(sdp).unwrap())
            .unwrap();
        let answer = client.pc.create_answer(None).unwrap();
        client
            .pc
            .set_local_description(Instant::now(), answer.clone())
            .unwrap();
        self.request(|reply| Command::SubscribeAnswer {
            participant_id: subscriber_id,
            sdp: answer.sdp,
            reply,
        });
        call.subscriber = self.add_client(client);
        call.subscriber_events = events;
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.clients[call.subscriber].rtp_received == 0 {
            assert!(
                Instant::now() < deadline,
                "video did not reach the subscriber"
            );
            self.publish_frame(&mut call, true);
            self.exchange();
            std::thread::sleep(Duration::from_millis(2));
        }
        call
    }

    /// One frame of four packets from `call`'s publisher.
    fn publish_frame(&mut self, call: &mut Call, keyframe: bool) {
        call.timestamp = call.timestamp.wrapping_add(3000);
        for i in 0..4 {
            let mut payload = vec![0xa5u8; 1000];
            payload[0] = if i == 0 { 0x10 } else { 0x00 };
            payload[1] = if keyframe { 0x00 } else { 0x01 };
            call.sequence = call.sequence.wrapping_add(1);
            let packet = Packet {
                header: Header {
                    version: 2,
                    marker: i == 3,
                    payload_type: call.payload_type,
                    sequence_number: call.sequence,
                    timestamp: call.timestamp,
                    ssrc: call.ssrc,
                    ..Default::default()
                },
                payload: Bytes::from(payload),
            };
            self.clients[call.publisher]
                .pc
                .rtp_sender(call.sender)
                .unwrap()
                .write_rtp(Instant::now(), packet)
                .unwrap();
        }
    }

    fn received(&self, call: &Call) -> u64 {
        self.clients[call.subscriber].rtp_received
    }
}

#[test]
fn a_panic_in_one_room_removes_its_participant_and_the_other_room_keeps_forwarding() {
    let mut rig = Rig::new();
    let mut a = rig.call("a");
    let mut b = rig.call("b");
    assert_eq!(rig.worker.rooms.len(), 2);

    rig.worker.panic_in_room = Some("a".into());
    let before = (rig.received(&a), rig.received(&b));
    for _ in 0..50 {
        rig.publish_frame(&mut a, false);
        rig.publish_frame(&mut b, false);
        rig.exchange();
        std::thread::sleep(Duration::from_millis(2));
    }
    assert!(rig.worker.stats.panics >= 1, "the hook fired");
    // Room a's publisher went with the panic its packets caused; its subscriber was told, and
    // got nothing more.
    let left: Vec<ServerMessage> = std::iter::from_fn(|| a.subscriber_events.try_recv().ok())
        .filter(|m| matches!(m, ServerMessage::ParticipantLeft { .. }))
        .collect();
    assert!(
        left.iter().any(
            |m| matches!(m, ServerMessage::ParticipantLeft { reason, .. } if reason == "error")
        ),
        "{left:?}"
    );
    assert_eq!(rig.received(&a), before.0, "nothing forwarded in room a");
    // Room b: both participants still there, and its video flows on.
    assert_eq!(rig.worker.room_members("b").len(), 2);
    assert!(
        rig.received(&b) >= before.1 + 150,
        "room b forwarded {} packets during the 200 sent",
        rig.received(&b) - before.1
    );
    assert!(rig.clients[b.subscriber].connected);
    assert!(!rig.worker.stopped);

    // Room a is empty once its subscriber's next datagram panics too; the worker is whole.
    rig.settle(|r| !r.worker.rooms.contains_key("a"), "room a is emptied");
    assert!(rig.worker.peers.values().all(|p| {
        rig.worker
            .participants
            .get(&p.owner)
            .is_some_and(|o| o.room == "b")
    }));
    assert_eq!(rig.worker.participants.len(), 2);
}

#[test]
fn the_media_socket_sends_only_to_unicast_addresses() {
    use super::may_send_to;
    let ok = |s: &str| may_send_to(&s.parse().unwrap());
    assert!(ok("192.0.2.1:5000"));
    assert!(ok("[2001:db8::1]:5000"));
    assert!(!ok("224.0.0.251:5353"), "mDNS");
    assert!(!ok("[ff02::fb]:5353"), "mDNS over IPv6");
    assert!(!ok("255.255.255.255:5000"));
    assert!(!ok("0.0.0.0:5000"));
    assert!(!ok("192.0.2.1:0"));
}
