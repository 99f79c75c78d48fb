//! Subscribe renegotiations are serialised: the next offer waits for the answer to the last.

mod common;

use std::time::Duration;

use common::{Participant, Signal, TestServer, answer, recording_pc};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_new_offer_before_the_last_one_is_answered() {
    let server = TestServer::start(&[]).await;
    let mut slow = Signal::connect(&server.ws_url()).await;
    let token = server.dev_token("slow", "serial").await;
    assert_eq!(slow.auth_and_join(&token, "serial").await["type"], "joined");

    let a = Participant::join(&server, "a", "serial", true).await;
    // A track opens when its first packet arrives, so the first offer has a's first track.
    let first = slow.expect("subscribe_offer").await;
    let in_first = first["tracks"].as_array().unwrap().len();
    assert!((1..=2).contains(&in_first), "{first}");

    // b publishes while slow has not answered: no overlapping offer may be sent.
    let b = Participant::join(&server, "b", "serial", true).await;
    b.wait_for("a's media at b", Duration::from_secs(15), |p| {
        p.received_from(&a.id).len() == 2
    })
    .await;
    let mut early = Vec::new();
    while let Some(m) = slow.recv(Duration::from_secs(2)).await {
        early.push(m);
    }
    assert!(
        early.iter().all(|m| m["type"] != "subscribe_offer"),
        "an offer came before the answer: {early:?}"
    );
    assert_eq!(
        early.iter().filter(|m| m["type"] == "track_added").count(),
        4,
        "every track is announced"
    );

    // Answering releases the next offer, which carries all four tracks.
    let (pc, received) = recording_pc().await;
    let sdp = answer(&pc, first["sdp"].as_str().unwrap()).await;
    slow.send(json!({"type": "subscribe_answer", "sdp": sdp}));
    let second = slow.expect("subscribe_offer").await;
    assert_eq!(second["tracks"].as_array().unwrap().len(), 4, "{second}");
    let sdp = answer(&pc, second["sdp"].as_str().unwrap()).await;
    slow.send(json!({"type": "subscribe_answer", "sdp": sdp}));

    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while received
        .lock()
        .unwrap()
        .values()
        .filter(|r| r.packets > 10)
        .count()
        < 4
    {
        assert!(
            std::time::Instant::now() < deadline,
            "all four tracks flow after renegotiation"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = pc.close().await;
}
