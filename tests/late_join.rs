//! A participant who joins late receives every existing track, starting at a keyframe the
//! server requested from the publisher on its behalf.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::{Participant, TestServer};
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;

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
