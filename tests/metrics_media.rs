//! Media metrics move during a real call: the forwarding-turn and forwarding-delay histograms
//! and received NACKs.

mod common;

use std::time::Duration;

use common::{Participant, TestServer, http_request};
use rtc::rtcp::transport_feedbacks::transport_layer_nack::{NackPair, TransportLayerNack};

async fn scrape(server: &TestServer) -> String {
    let (status, body) = http_request(server.http, "GET", "/metrics", None, None)
        .await
        .unwrap();
    assert_eq!(status, 200);
    body.as_str().unwrap().to_owned()
}

fn value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .and_then(|rest| rest.strip_prefix(' '))
        })
        .unwrap_or_else(|| panic!("no {series} in the metrics"))
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn turn_histogram_and_nack_counter_move() {
    let server = TestServer::start(&[]).await;
    let a = Participant::join(&server, "a", "m", true).await;
    let b = Participant::join(&server, "b", "m", false).await;
    b.wait_for("a's video", Duration::from_secs(15), |p| {
        p.received_from(&a.id)
            .iter()
            .any(|t| t.kind == "video" && t.packets > 20)
    })
    .await;

    // Counted before the scrape: a keeps publishing, and a packet b receives after the scrape
    // was not in it. Everything b has received was observed before the worker answers the
    // scrape (it handles commands between turns, after a turn's sends returned).
    let received: u64 = b.received_from(&a.id).iter().map(|t| t.packets).sum();
    let before = scrape(&server).await;
    let turns = value(&before, "switchboard_forwarding_turn_seconds_count");
    assert!(turns > 0.0);
    assert_eq!(
        value(
            &before,
            "switchboard_forwarding_turn_seconds_bucket{le=\"+Inf\"}"
        ),
        turns
    );
    // Buckets are cumulative.
    let buckets: Vec<f64> = before
        .lines()
        .filter(|l| l.starts_with("switchboard_forwarding_turn_seconds_bucket"))
        .map(|l| l.rsplit(' ').next().unwrap().parse().unwrap())
        .collect();
    assert!(buckets.windows(2).all(|w| w[0] <= w[1]), "{buckets:?}");
    assert!(value(&before, "switchboard_forwarding_turn_seconds_sum") > 0.0);

    // The forwarding delay is observed once per forwarded packet, from the kernel's receive
    // timestamp: at least as many as b received, and far below a second on an idle loopback.
    let delays = value(&before, "switchboard_forwarding_delay_seconds_count");
    assert!(
        delays >= received as f64,
        "{delays} delays for {received} packets"
    );
    assert!(delays <= value(&before, "switchboard_rtp_forwarded_total"));
    let mean = value(&before, "switchboard_forwarding_delay_seconds_sum") / delays;
    assert!(mean > 0.0 && mean < 0.1, "mean forwarding delay {mean} s");

    // A subscriber's NACK reaches the server and is counted.
    let (track_id, seq, ssrc) = {
        let map = b.received.lock().unwrap();
        let (id, r) = map
            .iter()
            .find(|(_, r)| r.publisher == a.id && r.kind == "video")
            .unwrap();
        (id.clone(), r.seqs[r.seqs.len() - 3], r.ssrcs[0])
    };
    let nacks = value(&before, "switchboard_nacks_in_total");
    let track = b.remote.lock().unwrap()[&track_id].clone();
    let nack = TransportLayerNack {
        sender_ssrc: 0,
        media_ssrc: ssrc,
        nacks: vec![NackPair {
            packet_id: seq,
            lost_packets: 0,
        }],
    };
    track.write_rtcp(vec![Box::new(nack)]).await.unwrap();

    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let now = scrape(&server).await;
        if value(&now, "switchboard_nacks_in_total") > nacks {
            assert!(value(&now, "switchboard_forwarding_turn_seconds_count") > turns);
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the NACK was not counted"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_write_latency_is_exported() {
    const SECRET: &str = "a-secret-for-the-metrics-test";
    let server = TestServer::start(&["--jwt-secret", SECRET]).await;
    let before = scrape(&server).await;
    assert_eq!(value(&before, "switchboard_store_write_seconds_count"), 0.0);
    let token =
        switchboard::auth::Auth::new(SECRET.as_bytes(), false).mint(&switchboard::auth::Claims {
            sub: "u-alice".into(),
            name: "Alice".into(),
            exp: switchboard::auth::unix_now() + 600,
            room: None,
            can_publish: true,
            can_subscribe: true,
            admin: false,
        });
    let (status, body) = http_request(
        server.http,
        "POST",
        "/api/calls",
        Some(&token),
        Some(serde_json::json!({"type": "group", "media": "audio", "invitees": ["u-bob", "u-cy"]})),
    )
    .await
    .unwrap();
    assert_eq!(status, 201, "{body}");
    let after = scrape(&server).await;
    assert!(value(&after, "switchboard_store_write_seconds_count") >= 1.0);
    assert!(value(&after, "switchboard_store_write_seconds_sum") > 0.0);
    assert_eq!(
        value(
            &after,
            "switchboard_store_write_seconds_bucket{le=\"+Inf\"}"
        ),
        value(&after, "switchboard_store_write_seconds_count")
    );
}
