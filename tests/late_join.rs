//! A participant who joins late receives every existing track, starting at a keyframe the
//! server requested from the publisher on its behalf; its subscribe connection answers an ICE
//! check that overtook the SDP answer, and does not wait a second to repeat a lost ClientHello.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use common::{Participant, Signal, TestServer};
use rtc::peer_connection::configuration::RTCConfigurationBuilder;
use rtc::peer_connection::configuration::media_engine::MediaEngine;
use rtc::peer_connection::sdp::RTCSessionDescription;
use rtc::peer_connection::{RTCPeerConnection, RTCPeerConnectionBuilder};
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::sansio::Protocol;
use rtc::shared::{TaggedBytesMut, TransportContext, TransportProtocol};
use serde_json::json;
use switchboard::media::demux::is_dtls_client_hello;
use switchboard::media::peer::add_host_candidate;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn newcomer_gets_existing_tracks_from_a_keyframe() {
    let server = TestServer::start(&[]).await;
    let a = Participant::join(&server, "a", "late", true).await;
    let b = Participant::join(&server, "b", "late", true).await;
    b.wait_for("a's media at b", Duration::from_secs(15), |p| {
        p.received_from(&a.id).len() == 2
    })
    .await;
    // Tracks open with their first packet: wait until b's are open too.
    a.wait_for("b's media at a", Duration::from_secs(15), |p| {
        p.received_from(&b.id).len() == 2
    })
    .await;
    // Let the publishers' periodic keyframe pass so the newcomer depends on a requested one.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let plis_before = a.feedback.plis.load(Ordering::SeqCst);

    let late = Participant::join(&server, "late", "late", false).await;
    let existing = late.joined["tracks"].as_array().unwrap().len();
    assert_eq!(
        existing, 4,
        "joined lists the 4 tracks already published: {}",
        late.joined
    );

    late.wait_for("all four existing tracks", Duration::from_secs(15), |p| {
        [&a, &b].iter().all(|o| p.received_from(&o.id).len() == 2)
    })
    .await;
    for publisher in [&a, &b] {
        let video = late
            .received_from(&publisher.id)
            .into_iter()
            .find(|t| t.kind == "video")
            .unwrap();
        assert_eq!(video.first_payload[0], 0x10, "starts at a partition start");
        assert_eq!(
            video.first_payload[1] & 0x01,
            0,
            "first forwarded video frame is a keyframe"
        );
    }
    assert!(
        a.feedback.plis.load(Ordering::SeqCst) > plis_before,
        "the server asked the publisher for a keyframe for the newcomer"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn keyframe_requests_are_throttled_to_two_per_second_per_track() {
    let server = TestServer::start(&[]).await;
    let a = Participant::join(&server, "a", "pli", true).await;
    let mut watchers = Vec::new();
    for i in 0..4 {
        watchers.push(Participant::join(&server, &format!("w{i}"), "pli", false).await);
    }
    for w in &watchers {
        w.wait_for("a's video", Duration::from_secs(15), |p| {
            p.received_from(&a.id)
                .iter()
                .any(|t| t.kind == "video" && t.packets > 3)
        })
        .await;
    }
    assert!(
        a.feedback.plis.load(Ordering::SeqCst) >= 1,
        "at least one keyframe request reached the publisher for the joins"
    );

    // Every watcher asks for a keyframe of a's video every 50 ms for 2 s: 160 requests.
    let mut requests = Vec::new();
    for w in &watchers {
        let (track_id, ssrc) = {
            let map = w.received.lock().unwrap();
            let (id, r) = map
                .iter()
                .find(|(_, r)| r.publisher == a.id && r.kind == "video")
                .unwrap();
            (id.clone(), r.ssrcs[0])
        };
        requests.push((w.remote.lock().unwrap()[&track_id].clone(), ssrc));
    }
    let plis = a.feedback.plis.load(Ordering::SeqCst);
    let start = std::time::Instant::now();
    for _ in 0..40 {
        for (track, ssrc) in &requests {
            let pli = PictureLossIndication {
                sender_ssrc: 0,
                media_ssrc: *ssrc,
            };
            track.write_rtcp(vec![Box::new(pli)]).await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The last merged request leaves at the end of its interval.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let intervals = (start.elapsed().as_millis() / 500) as u64 + 1;
    let reached = a.feedback.plis.load(Ordering::SeqCst) - plis;
    assert!(
        (2..=intervals).contains(&reached),
        "{reached} keyframe requests reached the publisher in {intervals} half-second intervals"
    );
}

/// A subscriber driven by hand: a sans-I/O `rtc` client on a real socket, which sends only
/// what the test sends for it, joined to `room` where `publisher` publishes; its answer to the
/// server's subscribe offer is made but not sent.
struct HandDriven {
    signal: Signal,
    socket: tokio::net::UdpSocket,
    client: RTCPeerConnection,
    answer: String,
    _publisher: Participant,
}

impl HandDriven {
    async fn join(server: &TestServer, room: &str) -> Self {
        let publisher = Participant::join(server, "pub", room, true).await;
        let mut signal = Signal::connect(&server.ws_url()).await;
        let token = server.dev_token("by-hand", room).await;
        assert_eq!(signal.auth_and_join(&token, room).await["type"], "joined");
        let offer = signal.expect("subscribe_offer").await;
        let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let mut media = MediaEngine::default();
        media.register_default_codecs().unwrap();
        let mut client = RTCPeerConnectionBuilder::new()
            .with_configuration(RTCConfigurationBuilder::new().build())
            .with_media_engine(media)
            .build(Instant::now())
            .unwrap();
        add_host_candidate(&mut client, socket.local_addr().unwrap()).unwrap();
        let offer = offer["sdp"].as_str().unwrap().to_owned();
        let offer = RTCSessionDescription::offer(offer).unwrap();
        client
            .set_remote_description(Instant::now(), offer)
            .unwrap();
        let answer = client.create_answer(None).unwrap();
        client
            .set_local_description(Instant::now(), answer)
            .unwrap();
        let answer = client.local_description().unwrap().sdp.clone();
        Self {
            signal,
            socket,
            client,
            answer,
            _publisher: publisher,
        }
    }

    fn send_answer(&mut self) {
        let sdp = self.answer.clone();
        self.signal
            .send(json!({"type": "subscribe_answer", "sdp": sdp}));
    }

    /// The client's next STUN message, which its timers produce once it has answered.
    async fn next_check(&mut self) -> TaggedBytesMut {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let now = Instant::now();
            if self.client.poll_timeout().is_some_and(|t| t <= now) {
                self.client.handle_timeout(now).unwrap();
            }
            while let Some(msg) = self.client.poll_write() {
                if matches!(msg.message[0], 0..=3) {
                    return msg;
                }
            }
            assert!(Instant::now() < deadline, "the client sent no ICE check");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    async fn send(&self, msg: &TaggedBytesMut) {
        self.socket
            .send_to(&msg.message, msg.transport.peer_addr)
            .await
            .unwrap();
    }

    /// The next datagram from the server, if one comes `within`.
    async fn recv(&self, within: Duration) -> Option<(Vec<u8>, SocketAddr)> {
        let mut buf = [0u8; 1500];
        let (n, from) = tokio::time::timeout(within, self.socket.recv_from(&mut buf))
            .await
            .ok()?
            .unwrap();
        Some((buf[..n].to_vec(), from))
    }

    /// Hands a datagram from the server to the client.
    fn receive(&mut self, bytes: &[u8], from: SocketAddr) {
        let msg = TaggedBytesMut {
            now: Instant::now(),
            transport: TransportContext {
                local_addr: self.socket.local_addr().unwrap(),
                peer_addr: from,
                ecn: None,
                transport_protocol: TransportProtocol::UDP,
            },
            message: BytesMut::from(bytes),
        };
        let _ = self.client.handle_read(msg);
    }
}

/// A client starts its ICE checks as soon as it has answered, and the answer travels over the
/// WebSocket while the checks take the shorter way: the subscribe connection then sees a check
/// before it knows the client's credentials. It must answer that check once the answer is in,
/// not leave the client to retransmit it (webrtc-rs and browsers wait 200 ms to a second).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_check_that_overtakes_the_answer_is_answered_once_the_answer_is_in() {
    let server = TestServer::start(&[]).await;
    let mut sub = HandDriven::join(&server, "early").await;
    let check = sub.next_check().await;
    sub.send(&check).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        sub.recv(Duration::from_millis(100)).await.is_none(),
        "nothing can answer a check before the answer gives the server the client's password"
    );

    // Only now the answer; the check is not sent again.
    sub.send_answer();
    let (response, from) = sub
        .recv(Duration::from_secs(2))
        .await
        .expect("the check is answered within 2 s of the answer, without a retransmission");
    assert_eq!(from, check.transport.peer_addr);
    assert_eq!(&response[..2], &[0x01, 0x01], "a Binding success response");
    assert_eq!(
        &response[8..20],
        &check.message[8..20],
        "for the check's transaction"
    );
}

/// A client that controls ICE (as every client of an ICE-lite server does) and lets the
/// offerer choose takes the DTLS server's part (`webrtc-rs`, pion, aiortc), so the server sends
/// the ClientHello, right as ICE connects. A client may not be listening for DTLS yet and drop
/// it; `rtc` would send it again only after a second. The server sends it again after 50 ms.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_unanswered_client_hello_is_sent_again_long_before_a_second() {
    let server = TestServer::start(&[]).await;
    let mut sub = HandDriven::join(&server, "hello").await;
    assert!(
        sub.answer.contains("a=setup:passive"),
        "the client takes the DTLS server's part: {}",
        sub.answer
    );
    sub.send_answer();
    tokio::time::sleep(Duration::from_millis(100)).await;

    // ICE: the client's checks and the server's responses, until the server starts DTLS.
    let deadline = Instant::now() + Duration::from_secs(5);
    let first_hello = 'ice: loop {
        assert!(Instant::now() < deadline, "no ClientHello from the server");
        let check = sub.next_check().await;
        sub.send(&check).await;
        while let Some((bytes, from)) = sub.recv(Duration::from_millis(50)).await {
            if is_dtls_client_hello(&bytes) {
                break 'ice (bytes, Instant::now());
            }
            sub.receive(&bytes, from);
        }
    };

    // The client "drops" it: nothing reaches the client, nothing goes back.
    let mut again = None;
    while let Some((bytes, _)) = sub.recv(Duration::from_millis(500)).await {
        if bytes == first_hello.0 {
            again = Some(first_hello.1.elapsed());
            break;
        }
    }
    let again = again.expect("the ClientHello was not sent again within 0.5 s");
    assert!(
        again < Duration::from_millis(300),
        "sent again after {again:?}"
    );
}
