//! Two participants: each receives the other's audio and video, rewritten for its own leg.

mod common;

use std::sync::atomic::Ordering;
use std::time::{Duration, UNIX_EPOCH};

use common::{Participant, Received, TestServer, sequence_gaps};

/// Alice and Bob, both publishing, once each has received `enough` of both of the other's
/// tracks.
async fn call_of_two(
    what: &str,
    enough: impl Fn(&Received) -> bool,
) -> (TestServer, Participant, Participant) {
    let server = TestServer::start(&[]).await;
    let alice = Participant::join(&server, "alice", "room-1", true).await;
    let bob = Participant::join(&server, "bob", "room-1", true).await;
    for (me, other) in [(&alice, &bob), (&bob, &alice)] {
        me.wait_for(what, Duration::from_secs(15), |p| {
            let r = p.received_from(&other.id);
            r.len() == 2 && r.iter().all(&enough)
        })
        .await;
    }
    (server, alice, bob)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn each_receives_the_others_audio_and_video() {
    let (_server, alice, bob) = call_of_two("both tracks flowing", |t| t.packets >= 20).await;
    tokio::time::sleep(Duration::from_secs(1)).await;

    for (me, other) in [(&alice, &bob), (&bob, &alice)] {
        let tracks = me.received_from(&other.id);
        assert_eq!(tracks.len(), 2, "one audio and one video track");
        for t in &tracks {
            assert_eq!(t.ssrcs.len(), 1, "one SSRC per leg: {t:?}");
            assert_eq!(t.payload_types.len(), 1);
            assert_eq!(
                sequence_gaps(&t.seqs),
                0,
                "no gaps on loopback: {:?}",
                &t.seqs[..t.seqs.len().min(50)]
            );
        }
        let video = tracks
            .iter()
            .find(|t| t.kind == "video")
            .expect("a video track");
        assert_eq!(
            video.first_payload[1] & 0x01,
            0,
            "video starts at a keyframe"
        );
    }
}

/// The server tells each publisher how its media arrives, as `rtc`'s interceptors on the
/// publish connection do it: RTCP receiver reports about both of its tracks once a second, and
/// transport-wide congestion control feedback every 100 ms. While only media arrives, the
/// worker takes those interceptors' deadlines from `poll_timeout_after_srtp_reads`; were they
/// missed, the feedback would wait for the connection's next other timer (ICE's, every
/// 200 ms) and come half as often.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn publishers_get_reception_feedback_on_time() {
    let (_server, alice, bob) = call_of_two("both tracks flowing", |t| t.packets >= 20).await;
    // (transport-wide feedback packets, reception reports per track by SSRC)
    let counts = |p: &Participant| -> (u64, Vec<u64>) {
        let mut by_ssrc: Vec<(u32, u64)> = p
            .feedback
            .receiver_reports
            .lock()
            .unwrap()
            .iter()
            .map(|(ssrc, n)| (*ssrc, *n))
            .collect();
        by_ssrc.sort();
        (
            p.feedback.transport_cc.load(Ordering::SeqCst),
            by_ssrc.into_iter().map(|(_, n)| n).collect(),
        )
    };
    for p in [&alice, &bob] {
        p.wait_for(
            "a receiver report on both tracks",
            Duration::from_secs(5),
            |p| {
                let (_, reports) = counts(p);
                reports.len() == 2 && reports.iter().all(|n| *n >= 1)
            },
        )
        .await;
    }
    let before = [counts(&alice), counts(&bob)];
    tokio::time::sleep(Duration::from_secs(4)).await;
    for (p, (cc_before, reports_before)) in [&alice, &bob].into_iter().zip(before) {
        let (cc, reports) = counts(p);
        let added: Vec<u64> = reports
            .iter()
            .zip(&reports_before)
            .map(|(a, b)| a - b)
            .collect();
        assert!(
            added.iter().all(|n| *n >= 3),
            "reception reports per track in 4 s: {added:?}"
        );
        // 40 expected; 20 if they waited for ICE's timer.
        assert!(
            cc - cc_before >= 30,
            "transport-wide feedback packets in 4 s: {}",
            cc - cc_before
        );
    }
}

/// The server reports every leg it sends (RTCP sender reports, once a second): counts that
/// match what arrived, and an RTP time that matches the wall-clock time, which receivers need
/// to play a publisher's audio in sync with its video.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_leg_gets_sender_reports_that_match_what_arrived() {
    let (_server, alice, bob) =
        call_of_two("two reports on each leg", |t| t.sender_reports.len() >= 2).await;
    for (me, other) in [(&alice, &bob), (&bob, &alice)] {
        for t in me.received_from(&other.id) {
            let clock_rate = if t.kind == "video" {
                90_000.0
            } else {
                48_000.0
            };
            for seen in &t.sender_reports {
                let sr = &seen.report;
                assert_eq!(vec![sr.ssrc], t.ssrcs, "about the leg's SSRC: {sr:?}");
                // Everything counted was sent before the report; on loopback all of it arrived.
                assert!(
                    sr.packet_count as u64 >= seen.packets
                        && sr.packet_count as u64 <= seen.packets + 3,
                    "{} packets arrived, the report counts {}",
                    seen.packets,
                    sr.packet_count
                );
                assert!(sr.octet_count >= sr.packet_count * 20, "{sr:?}");
                // The report's wall-clock time is the receiver's, give or take delivery.
                let ntp_secs = (sr.ntp_time >> 32) as i64 - 0x83AA_7E80;
                let wall_secs = seen.wall.duration_since(UNIX_EPOCH).unwrap().as_secs() as i64;
                assert!(
                    (ntp_secs - wall_secs).abs() <= 1,
                    "NTP time {ntp_secs} vs {wall_secs}"
                );
                // Its RTP time is the newest frame's, moved on by the time since it arrived
                // (measured here: within 0.2 ms; the margin is for a loaded machine's
                // scheduling of this task).
                let (newest, arrived) = seen.newest.expect("media before reports");
                let expected =
                    newest as f64 + seen.at.duration_since(arrived).as_secs_f64() * clock_rate;
                let off_ms =
                    (sr.rtp_time.wrapping_sub(expected as u32) as i32) as f64 / clock_rate * 1000.0;
                assert!(
                    off_ms.abs() < 25.0,
                    "{} RTP time {off_ms:.1} ms off",
                    t.kind
                );
            }
        }
    }
}
