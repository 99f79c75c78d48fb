//! Header extensions are renumbered for each leg, and the loudest participant is announced.

mod common;

use std::time::Duration;

use common::{AUDIO_LEVEL_URI, DEFAULT_AUDIO_LEVEL, Participant, TestServer, extmap_id};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn audio_level_is_forwarded_with_the_subscriber_legs_id() {
    let server = TestServer::start(&[]).await;
    let a = Participant::join(&server, "a", "ext", true).await;
    let b = Participant::join(&server, "b", "ext", false).await;
    b.wait_for("a's audio", Duration::from_secs(15), |p| {
        p.received_from(&a.id)
            .iter()
            .any(|t| t.kind == "audio" && t.packets > 20)
    })
    .await;
    let offer = b.events_of("subscribe_offer").pop().unwrap();
    let sdp = offer["sdp"].as_str().unwrap();
    let leg_id =
        extmap_id(sdp, AUDIO_LEVEL_URI).expect("the subscribe offer negotiates audio level");
    let audio = b
        .received_from(&a.id)
        .into_iter()
        .find(|t| t.kind == "audio")
        .unwrap();
    assert_eq!(
        audio.last_extensions,
        vec![(leg_id, 0x80 | DEFAULT_AUDIO_LEVEL)],
        "only the audio level, renumbered for this leg, with its value intact"
    );
    assert_eq!(audio.packets as usize, audio.seqs.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_loudest_participant_becomes_the_active_speaker() {
    let server = TestServer::start(&[]).await;
    let quiet = Participant::join_speaking(&server, "quiet", "talk", 110).await;
    let loud = Participant::join_speaking(&server, "loud", "talk", 5).await;
    let listener = Participant::join(&server, "ear", "talk", false).await;
    listener
        .wait_for(
            "an active_speaker event naming the loud one",
            Duration::from_secs(10),
            |p| {
                p.events_of("active_speaker")
                    .last()
                    .is_some_and(|e| e["participant_id"] == loud.id.as_str())
            },
        )
        .await;
    assert!(
        listener
            .events_of("active_speaker")
            .iter()
            .all(|e| e["participant_id"] != quiet.id.as_str()),
        "a participant at -110 dBov is never the speaker"
    );
}
