//! `/metrics` during a real call: the media counters move, HTTP requests and WebSocket
//! connections are counted, and the metrics token is enforced.

mod common;

use std::time::{Duration, Instant};

use common::{Participant, TestServer, http_request};
use serde_json::Value;

const TOKEN: &str = "scrape-me-please";

/// Scrapes /metrics with `bearer`; the status and the body text.
async fn scrape(server: &TestServer, bearer: Option<&str>) -> (u16, String) {
    let (status, body) = http_request(server.http, "GET", "/metrics", bearer, None)
        .await
        .expect("GET /metrics");
    let text = match body {
        Value::String(s) => s,
        other => other.to_string(),
    };
    (status, text)
}

/// The value of one series (name with its labels, exactly as exposed).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

fn value(text: &str, series: &str) -> f64 {
    sample(text, series).unwrap_or_else(|| panic!("no series {series} in:\n{text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_two_party_call_moves_the_media_counters() {
    let server = TestServer::start(&["--metrics-token", TOKEN]).await;

    let (status, before) = scrape(&server, Some(TOKEN)).await;
    assert_eq!(status, 200, "{before}");
    assert_eq!(value(&before, "switchboard_rtp_forwarded_total"), 0.0);
    assert_eq!(value(&before, "switchboard_participants"), 0.0);

    let alice = Participant::join(&server, "alice", "metrics-room", true).await;
    let bob = Participant::join(&server, "bob", "metrics-room", true).await;
    for (me, other) in [(&alice, &bob), (&bob, &alice)] {
        me.wait_for("both tracks flowing", Duration::from_secs(15), |p| {
            let r = p.received_from(&other.id);
            r.len() == 2 && r.iter().all(|t| t.packets >= 20)
        })
        .await;
    }

    // Taken before the scrape: whatever arrived by now was forwarded by then.
    let received: u64 = [&alice, &bob]
        .iter()
        .flat_map(|p| {
            p.received
                .lock()
                .unwrap()
                .values()
                .map(|r| r.packets)
                .collect::<Vec<_>>()
        })
        .sum();
    let (status, during) = scrape(&server, Some(TOKEN)).await;
    assert_eq!(status, 200);
    assert_eq!(value(&during, "switchboard_rooms"), 1.0);
    assert_eq!(value(&during, "switchboard_participants"), 2.0);
    assert_eq!(value(&during, "switchboard_tracks"), 4.0);
    assert_eq!(value(&during, "switchboard_websocket_connections"), 2.0);
    assert_eq!(value(&during, "switchboard_media_workers_up"), 1.0);
    let forwarded = value(&during, "switchboard_rtp_forwarded_total");
    assert!(
        forwarded >= received as f64,
        "every packet the participants received was forwarded: {forwarded} < {received}"
    );
    assert!(value(&during, "switchboard_rtp_in_total") >= forwarded / 2.0);
    for counter in [
        "switchboard_datagrams_in_total",
        "switchboard_datagrams_out_total",
        "switchboard_bytes_in_total",
        "switchboard_bytes_out_total",
    ] {
        assert!(value(&during, counter) > 0.0, "{counter}");
    }
    assert!(
        value(&during, "switchboard_bytes_in_total")
            > value(&during, "switchboard_datagrams_in_total"),
        "bytes count bytes, not datagrams"
    );
    assert!(
        value(&during, "switchboard_keyframe_requests_out_total") >= 1.0,
        "each new subscriber asks its publisher for a keyframe"
    );
    for reason in [
        "unknown_source",
        "not_webrtc",
        "peer_rejected",
        "no_subscribers",
        "leg_not_ready",
        "waiting_for_keyframe",
        "write_failed",
        "send_buffer_full",
    ] {
        let series = format!("switchboard_dropped_total{{reason=\"{reason}\"}}");
        assert!(sample(&during, &series).is_some(), "{series} missing");
    }

    // Counters only grow while media flows.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (_, later) = scrape(&server, Some(TOKEN)).await;
    assert!(value(&later, "switchboard_rtp_forwarded_total") > forwarded);
    assert!(
        value(&later, "switchboard_datagrams_out_total")
            > value(&during, "switchboard_datagrams_out_total")
    );

    // HTTP requests by route and status: the dev tokens and the WebSocket upgrades.
    assert!(
        value(
            &later,
            "switchboard_http_requests_total{route=\"/api/dev/token\",method=\"POST\",status=\"200\"}"
        ) >= 2.0
    );
    assert!(
        value(
            &later,
            "switchboard_http_requests_total{route=\"/ws\",method=\"GET\",status=\"101\"}"
        ) >= 2.0
    );

    // Leaving closes the WebSocket connections; the gauge falls back to zero.
    drop(alice);
    drop(bob);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, text) = scrape(&server, Some(TOKEN)).await;
        if value(&text, "switchboard_websocket_connections") == 0.0
            && value(&text, "switchboard_participants") == 0.0
        {
            assert_eq!(value(&text, "switchboard_websocket_connections_total"), 2.0);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "connections still counted:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metrics_token_is_enforced() {
    let server = TestServer::start(&["--metrics-token", TOKEN]).await;
    let (status, body) = http_request(server.http, "GET", "/metrics", None, None)
        .await
        .unwrap();
    assert_eq!(status, 401);
    assert_eq!(body["error"]["code"], "unauthorized", "{body}");
    let (status, _) = scrape(&server, Some("not-the-token")).await;
    assert_eq!(status, 401);
    let (status, text) = scrape(&server, Some(TOKEN)).await;
    assert_eq!(status, 200);
    assert!(
        text.contains("# TYPE switchboard_rtp_forwarded_total counter"),
        "{text}"
    );
    // Refused scrapes are counted too, under their route.
    assert_eq!(
        value(
            &text,
            "switchboard_http_requests_total{route=\"/metrics\",method=\"GET\",status=\"401\"}"
        ),
        2.0
    );
    // Unknown paths share one label instead of adding a series each.
    http_request(server.http, "GET", "/no/such/page-1", None, None)
        .await
        .unwrap();
    http_request(server.http, "GET", "/no/such/page-2", None, None)
        .await
        .unwrap();
    let (_, text) = scrape(&server, Some(TOKEN)).await;
    assert_eq!(
        value(
            &text,
            "switchboard_http_requests_total{route=\"other\",method=\"GET\",status=\"404\"}"
        ),
        2.0
    );
    assert!(!text.contains("page-1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_token_metrics_are_open() {
    let server = TestServer::start(&["--media-workers", "2"]).await;
    let (status, text) = scrape(&server, None).await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(value(&text, "switchboard_media_workers"), 2.0);
    assert_eq!(value(&text, "switchboard_media_workers_up"), 2.0);
}
