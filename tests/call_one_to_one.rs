//! Two participants: each receives the other's audio and video, rewritten for its own leg.

mod common;

use std::time::Duration;

use common::{Participant, TestServer, sequence_gaps};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn each_receives_the_others_audio_and_video() {
    let server = TestServer::start(&[]).await;
    let alice = Participant::join(&server, "alice", "room-1", true).await;
    let bob = Participant::join(&server, "bob", "room-1", true).await;

    for (me, other) in [(&alice, &bob), (&bob, &alice)] {
        me.wait_for("both tracks flowing", Duration::from_secs(15), |p| {
            let r = p.received_from(&other.id);
            r.len() == 2 && r.iter().all(|t| t.packets >= 20)
        })
        .await;
    }
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
