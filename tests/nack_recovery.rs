//! A video packet lost on the way to a subscriber is NACKed and retransmitted by the server.
//!
//! A UDP relay on loopback sits between the subscriber and the server and drops one video
//! packet once, so the subscriber asks for a packet it really never got.

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{Participant, Signal, TestServer, answer, http_request, recording_pc, sequence_gaps};
use serde_json::json;

/// Relays between one client and `server`; drops the 60th large RTP datagram towards the client.
fn relay(server: SocketAddr) -> (SocketAddr, Arc<AtomicU64>) {
    let front = UdpSocket::bind("127.0.0.1:0").unwrap();
    let back = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = front.local_addr().unwrap();
    let dropped = Arc::new(AtomicU64::new(0));
    let client: Arc<std::sync::Mutex<Option<SocketAddr>>> = Default::default();
    let (f2, b2, c2) = (
        front.try_clone().unwrap(),
        back.try_clone().unwrap(),
        client.clone(),
    );
    std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        while let Ok((n, from)) = f2.recv_from(&mut buf) {
            *c2.lock().unwrap() = Some(from);
            let _ = b2.send_to(&buf[..n], server);
        }
    });
    let d2 = dropped.clone();
    let done = Arc::new(AtomicBool::new(false));
    std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        let mut large_rtp = 0u64;
        while let Ok((n, _)) = back.recv_from(&mut buf) {
            if (128..192).contains(&buf[0]) && n > 500 {
                large_rtp += 1;
                if large_rtp == 60 && !done.swap(true, Ordering::SeqCst) {
                    d2.fetch_add(1, Ordering::SeqCst);
                    continue;
                }
            }
            if let Some(to) = *client.lock().unwrap() {
                let _ = front.send_to(&buf[..n], to);
            }
        }
    });
    (addr, dropped)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lost_video_packet_is_retransmitted_after_a_nack() {
    let server = TestServer::start(&[]).await;
    let publisher = Participant::join(&server, "pub", "loss", true).await;
    let mut sub = Signal::connect(&server.ws_url()).await;
    let token = server.dev_token("sub", "loss").await;
    assert_eq!(sub.auth_and_join(&token, "loss").await["type"], "joined");

    let (relay_addr, dropped) = relay(server.udp);
    let (pc, received) = recording_pc().await;
    let server_port = format!(" {} typ host", server.udp.port());
    let relay_port = format!(" {} typ host", relay_addr.port());
    let deadline = Instant::now() + Duration::from_secs(20);
    // Answer offers (the publisher's tracks open one by one) through the relay.
    while received
        .lock()
        .unwrap()
        .values()
        .filter(|r| r.packets > 0)
        .count()
        < 2
    {
        assert!(Instant::now() < deadline, "media through the relay");
        if let Some(offer) = sub.recv(Duration::from_millis(200)).await
            && offer["type"] == "subscribe_offer"
        {
            let sdp = offer["sdp"]
                .as_str()
                .unwrap()
                .replace(&server_port, &relay_port);
            let answer_sdp = answer(&pc, &sdp).await;
            sub.send(json!({"type": "subscribe_answer", "sdp": answer_sdp}));
        }
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    while dropped.load(Ordering::SeqCst) == 0 {
        assert!(Instant::now() < deadline, "the relay dropped a packet");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;

    // The video track is the one with large payloads.
    let video = received
        .lock()
        .unwrap()
        .values()
        .filter(|r| r.publisher == publisher.id)
        .max_by_key(|r| r.first_payload.len())
        .cloned()
        .unwrap();
    assert!(video.first_payload.len() > 500);
    assert_eq!(
        sequence_gaps(&video.seqs),
        0,
        "the dropped packet was retransmitted"
    );
    let (_, metrics) = http_request(server.http, "GET", "/metrics", None, None)
        .await
        .unwrap();
    let counter = |name: &str| -> f64 {
        metrics
            .as_str()
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix(&format!("switchboard_{name} ")))
            .unwrap()
            .parse()
            .unwrap()
    };
    assert!(
        counter("nacks_in_total") >= 1.0,
        "the subscriber NACKed the lost packet"
    );
    // Answered from the track's history (subscribe connections have no NACK responder).
    assert!(counter("retransmissions_total") >= 1.0);
    let _ = pc.close().await;
}
