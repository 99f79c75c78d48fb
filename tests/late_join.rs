//! A participant who joins late receives every existing track, starting at a keyframe the
//! server requested from the publisher on its behalf.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::{Participant, TestServer};

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
async fn keyframe_requests_are_throttled_to_one_per_second_per_track() {
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
    // Four subscribers joined within a second or two, each wanting a keyframe; the publisher
    // must see at most about one request per second of the test.
    let plis = a.plis.load(Ordering::SeqCst);
    assert!(
        plis >= 1,
        "at least one keyframe request reached the publisher"
    );
    let start = std::time::Instant::now();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let elapsed = start.elapsed().as_secs() + 1;
    let later = a.plis.load(Ordering::SeqCst) - plis;
    assert!(later <= elapsed, "{later} PLIs in {elapsed} s");
}
