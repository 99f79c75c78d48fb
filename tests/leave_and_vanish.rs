//! Leaving, vanishing, and empty rooms.

mod common;

use std::time::{Duration, Instant};

use common::{Participant, TestServer};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leave_tells_the_others_and_removes_the_tracks() {
    let server = TestServer::start(&[]).await;
    let a = Participant::join(&server, "a", "bye", true).await;
    let b = Participant::join(&server, "b", "bye", true).await;
    b.wait_for("a's media", Duration::from_secs(15), |p| {
        p.received_from(&a.id).len() == 2
    })
    .await;

    a.leave().await;
    b.wait_for("participant_left", Duration::from_secs(5), |p| {
        p.events_of("participant_left")
            .iter()
            .any(|e| e["participant_id"] == a.id.as_str() && e["reason"] == "left")
    })
    .await;
    b.wait_for("two track_removed", Duration::from_secs(5), |p| {
        p.events_of("track_removed").len() == 2
    })
    .await;
    // The subscribe connection was renegotiated without a's tracks.
    let last_offer = b.events_of("subscribe_offer").pop().unwrap();
    assert!(
        last_offer["tracks"]
            .as_array()
            .unwrap()
            .iter()
            .all(|t| t["participant_id"] != a.id.as_str())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_participant_whose_media_vanishes_is_removed_within_ten_seconds() {
    let server = TestServer::start(&[]).await;
    let a = Participant::join(&server, "a", "gone", true).await;
    let b = Participant::join(&server, "b", "gone", true).await;
    b.wait_for("a's media", Duration::from_secs(15), |p| {
        p.received_from(&a.id).len() == 2
    })
    .await;

    // a's connections go silent; its WebSocket stays open (e.g. the network path broke).
    let t0 = Instant::now();
    a.vanish_media().await;
    b.wait_for("a removed", Duration::from_secs(10), |p| {
        p.events_of("participant_left")
            .iter()
            .any(|e| e["participant_id"] == a.id.as_str())
    })
    .await;
    assert!(t0.elapsed() < Duration::from_secs(10));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_closed_websocket_removes_the_participant_at_once() {
    let server = TestServer::start(&[]).await;
    let b = Participant::join(&server, "b", "ws", true).await;
    let a = Participant::join(&server, "a", "ws", true).await;
    b.wait_for("a's media", Duration::from_secs(15), |p| {
        p.received_from(&a.id).len() == 2
    })
    .await;
    let a_id = a.id.clone();
    a.vanish_media().await;
    drop(a); // drops the WebSocket
    b.wait_for("a disconnected", Duration::from_secs(3), |p| {
        p.events_of("participant_left")
            .iter()
            .any(|e| e["participant_id"] == a_id.as_str())
    })
    .await;
}
