//! Codecs: H.264 is forwarded with the subscriber leg's own payload type, from a keyframe.

mod common;

use std::time::Duration;

use common::{H264_PT, Participant, TestServer, Video, sequence_gaps};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn h264_video_is_forwarded() {
    let server = TestServer::start(&[]).await;
    let publisher = Participant::join_publishing(&server, "h264", "codecs", Video::H264).await;
    let viewer = Participant::join(&server, "viewer", "codecs", false).await;
    viewer
        .wait_for("H.264 video", Duration::from_secs(15), |p| {
            p.received_from(&publisher.id)
                .iter()
                .any(|t| t.kind == "video" && t.packets >= 20)
        })
        .await;
    let offer = viewer.events_of("subscribe_offer").pop().unwrap();
    let video_info = offer["tracks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["kind"] == "video")
        .unwrap()
        .clone();
    assert_eq!(video_info["codec"], "video/H264");
    let sdp = offer["sdp"].as_str().unwrap();
    assert!(sdp.contains("H264/90000"), "the offer carries H.264");
    assert!(
        sdp.contains("packetization-mode=1"),
        "with the publisher's packetization mode"
    );

    let video = viewer
        .received_from(&publisher.id)
        .into_iter()
        .find(|t| t.kind == "video")
        .unwrap();
    assert_eq!(video.first_payload[0] & 0x1f, 5, "starts at an IDR");
    // The leg uses the payload type the server's offer gave this profile, whatever the
    // publisher used (here 102).
    let pt = video.payload_types[0];
    assert_eq!(video.payload_types.len(), 1);
    assert!(
        sdp.contains(&format!("a=rtpmap:{pt} H264/90000")),
        "pt {pt} is H.264 in the offer"
    );
    let fmtp = sdp
        .lines()
        .find(|l| l.starts_with(&format!("a=fmtp:{pt} ")))
        .expect("fmtp of the pt");
    assert!(
        fmtp.contains("profile-level-id=42e01f"),
        "same profile as published: {fmtp}"
    );
    assert_ne!(pt, H264_PT, "rewritten from the publisher's payload type");
    assert_eq!(sequence_gaps(&video.seqs), 0);
}
