//! Group calls: three participants, and a full room of twenty with synthetic RTP.

mod common;

use std::time::Duration;

use common::{Participant, TestServer, sequence_gaps};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_party_call_forwards_every_track_to_every_other_participant() {
    let server = TestServer::start(&[]).await;
    let mut people = Vec::new();
    for name in ["ann", "ben", "cat"] {
        people.push(Participant::join(&server, name, "trio", true).await);
    }
    for me in &people {
        me.wait_for(
            "four tracks from the two others",
            Duration::from_secs(20),
            |p| {
                people.iter().filter(|o| o.id != p.id).all(|o| {
                    let r = p.received_from(&o.id);
                    r.len() == 2 && r.iter().all(|t| t.packets >= 15)
                })
            },
        )
        .await;
    }
    for me in &people {
        assert!(
            me.received_from(&me.id).is_empty(),
            "nobody receives their own media"
        );
        for other in people.iter().filter(|o| o.id != me.id) {
            for t in me.received_from(&other.id) {
                assert_eq!(sequence_gaps(&t.seqs), 0, "{t:?}");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_party_call_delivers_every_video_to_everyone() {
    let server = TestServer::start(&[]).await;
    let mut people = Vec::new();
    for i in 0..20 {
        people.push(Participant::join(&server, &format!("p{i}"), "big", true).await);
    }
    for me in &people {
        me.wait_for("19 video streams", Duration::from_secs(60), |p| {
            people.iter().filter(|o| o.id != p.id).all(|o| {
                p.received_from(&o.id)
                    .iter()
                    .any(|t| t.kind == "video" && t.packets >= 5)
            })
        })
        .await;
    }
    let streams: usize = people
        .iter()
        .map(|p| p.received.lock().unwrap().len())
        .sum();
    assert_eq!(
        streams,
        20 * 19 * 2,
        "every participant receives 19 audio + 19 video tracks"
    );
}
