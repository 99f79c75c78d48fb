//! A participant who joins late receives every existing track, starting at a keyframe the
//! server requested from the publisher on its behalf; and the first ICE check of its subscribe
//! connection is answered even when it overtakes the answer.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::{Participant, Signal, TestServer};
use rtc::peer_connection::RTCPeerConnectionBuilder;
use rtc::peer_connection::configuration::RTCConfigurationBuilder;
use rtc::peer_connection::configuration::media_engine::MediaEngine;
use rtc::peer_connection::sdp::RTCSessionDescription;
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::sansio::Protocol;
use serde_json::json;
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
    let plis_before = a.plis.load(Ordering::SeqCst);

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
        a.plis.load(Ordering::SeqCst) > plis_before,
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
        a.plis.load(Ordering::SeqCst) >= 1,
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
    let plis = a.plis.load(Ordering::SeqCst);
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
    let reached = a.plis.load(Ordering::SeqCst) - plis;
    assert!(
        (2..=intervals).contains(&reached),
        "{reached} keyframe requests reached the publisher in {intervals} half-second intervals"
    );
}

/// A client starts its ICE checks as soon as it has answered, and the answer travels over the
/// WebSocket while the checks take the shorter way: the subscribe connection then sees a check
/// before it knows the client's credentials. It must answer that check once the answer is in,
/// not leave the client to retransmit it (webrtc-rs and browsers wait 200 ms to a second).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_check_that_overtakes_the_answer_is_answered_once_the_answer_is_in() {
    let server = TestServer::start(&[]).await;
    let _publisher = Participant::join(&server, "pub", "early", true).await;
    let mut signal = Signal::connect(&server.ws_url()).await;
    let token = server.dev_token("early-bird", "early").await;
    assert_eq!(
        signal.auth_and_join(&token, "early").await["type"],
        "joined"
    );
    let offer = signal.expect("subscribe_offer").await;

    // A sans-I/O client on a real socket: it sends only what this test sends for it.
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let local: SocketAddr = socket.local_addr().unwrap();
    let mut media = MediaEngine::default();
    media.register_default_codecs().unwrap();
    let mut client = RTCPeerConnectionBuilder::new()
        .with_configuration(RTCConfigurationBuilder::new().build())
        .with_media_engine(media)
        .build(Instant::now())
        .unwrap();
    add_host_candidate(&mut client, local).unwrap();
    let offer = RTCSessionDescription::offer(offer["sdp"].as_str().unwrap().to_owned()).unwrap();
    client
        .set_remote_description(Instant::now(), offer)
        .unwrap();
    let answer = client.create_answer(None).unwrap();
    client
        .set_local_description(Instant::now(), answer)
        .unwrap();
    let answer_sdp = client.local_description().unwrap().sdp.clone();

    // The client's first check, which the client's timers produce once it has answered.
    let deadline = Instant::now() + Duration::from_secs(5);
    let check = loop {
        let now = Instant::now();
        if client.poll_timeout().is_some_and(|t| t <= now) {
            client.handle_timeout(now).unwrap();
        }
        if let Some(msg) = client.poll_write() {
            assert!(matches!(msg.message[0], 0..=3), "a STUN check comes first");
            break msg;
        }
        assert!(Instant::now() < deadline, "the client sent no ICE check");
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    socket
        .send_to(&check.message, check.transport.peer_addr)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut buf = [0u8; 1500];
    assert!(
        tokio::time::timeout(Duration::from_millis(100), socket.recv_from(&mut buf))
            .await
            .is_err(),
        "nothing can answer a check before the answer gives the server the client's password"
    );

    // Only now the answer; the check is not sent again.
    signal.send(json!({"type": "subscribe_answer", "sdp": answer_sdp}));
    let (n, from) = tokio::time::timeout(Duration::from_secs(2), socket.recv_from(&mut buf))
        .await
        .expect("the check is answered within 2 s of the answer, without a retransmission")
        .unwrap();
    assert_eq!(from, check.transport.peer_addr);
    assert_eq!(&buf[..2], &[0x01, 0x01], "a Binding success response");
    assert_eq!(
        &buf[8..20],
        &check.message[8..20],
        "for the check's transaction ({n} bytes)"
    );
}
