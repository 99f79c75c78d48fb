//! WHIP and WHEP with an independent stack (aiortc): an OBS-like publisher goes into a room
//! where a regular participant and a WHEP viewer receive and decode it; and every error status.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{Participant, TestServer, header, http_raw};
use serde_json::Value;

const CLIENT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/whip/client.py");

/// Runs the aiortc client; returns the child and a reader of its JSON lines.
fn aiortc(
    mode: &str,
    url: &str,
    token: &str,
    seconds: u32,
) -> (Child, std::sync::mpsc::Receiver<Value>) {
    let mut child = Command::new("python3")
        .args([CLIENT, mode, url, token, &seconds.to_string()])
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 with aiortc (scripts/test.sh installs it)");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Ok(v) = serde_json::from_str::<Value>(&line) {
                let _ = tx.send(v);
            }
        }
    });
    (child, rx)
}

fn next_event(rx: &std::sync::mpsc::Receiver<Value>, within: Duration) -> Value {
    rx.recv_timeout(within).expect("the aiortc client reported")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn aiortc_publishes_over_whip_and_a_participant_and_a_whep_viewer_receive_it() {
    let server = TestServer::start(&[]).await;
    let token = server.dev_token("obs", "stage").await;
    let watcher = Participant::join(&server, "watcher", "stage", false).await;

    let (mut publisher, pub_events) = aiortc(
        "publish",
        &format!("http://{}/whip/stage", server.http),
        &token,
        12,
    );
    let answered = next_event(&pub_events, Duration::from_secs(20));
    assert_eq!(answered["status"], 201);
    let location = answered["location"].as_str().unwrap().to_owned();
    assert!(
        location.starts_with("/whip/stage/") && location.len() > 40,
        "unguessable: {location}"
    );

    // The room sees a new participant with two tracks, and media flows to it.
    watcher
        .wait_for(
            "the WHIP publisher's audio and video",
            Duration::from_secs(20),
            |w| {
                let joined = w.events_of("participant_joined");
                joined.len() == 1 && {
                    let id = joined[0]["participant"]["participant_id"]
                        .as_str()
                        .unwrap()
                        .to_owned();
                    let r = w.received_from(&id);
                    r.len() == 2 && r.iter().all(|t| t.packets > 20)
                }
            },
        )
        .await;

    let (mut viewer, view_events) = aiortc(
        "watch",
        &format!("http://{}/whep/stage", server.http),
        &token,
        5,
    );
    assert_eq!(
        next_event(&view_events, Duration::from_secs(20))["status"],
        201
    );
    let done = next_event(&view_events, Duration::from_secs(20));
    assert_eq!(done["state"], "connected", "{done}");
    assert!(
        done["frames"]["video"].as_u64().unwrap() > 30,
        "the viewer decoded video: {done}"
    );
    assert!(
        done["frames"]["audio"].as_u64().unwrap() > 50,
        "and audio: {done}"
    );
    assert_eq!(done["deleted"], 200);
    let _ = viewer.wait();

    let done = next_event(&pub_events, Duration::from_secs(20));
    assert_eq!(done["deleted"], 200, "{done}");
    let _ = publisher.wait();
    watcher
        .wait_for(
            "the publisher left after DELETE",
            Duration::from_secs(5),
            |w| {
                w.events_of("participant_left")
                    .iter()
                    .any(|e| e["reason"] == "left")
            },
        )
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whip_error_statuses() {
    let server = TestServer::start(&[]).await;
    let token = server.dev_token("obs", "errs").await;
    let other_room = server.dev_token("obs", "elsewhere").await;
    let bearer = format!("Bearer {token}");
    let sdp_type = ("Content-Type", "application/sdp");
    let auth = ("Authorization", bearer.as_str());

    let (status, headers, _) = http_raw(server.http, "OPTIONS", "/whip/errs", &[], "").await;
    assert_eq!(status, 204);
    assert_eq!(header(&headers, "accept-post"), Some("application/sdp"));
    assert!(
        header(&headers, "access-control-allow-methods")
            .unwrap()
            .contains("POST")
    );

    let (status, _, body) = http_raw(
        server.http,
        "POST",
        "/whip/errs",
        &[auth, ("Content-Type", "text/plain")],
        "v=0",
    )
    .await;
    assert_eq!(status, 415, "{body}");
    let (status, _, body) = http_raw(server.http, "POST", "/whip/errs", &[sdp_type], "v=0").await;
    assert_eq!(status, 401, "{body}");
    let other = format!("Bearer {other_room}");
    let (status, _, _) = http_raw(
        server.http,
        "POST",
        "/whip/errs",
        &[sdp_type, ("Authorization", &other)],
        "v=0",
    )
    .await;
    assert_eq!(status, 403);
    let two_videos = "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\n";
    let (status, _, body) = http_raw(
        server.http,
        "POST",
        "/whip/errs",
        &[sdp_type, auth],
        two_videos,
    )
    .await;
    assert_eq!(status, 422, "{body}");
    let garbage = "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\nthis is not sdp\r\n";
    let (status, _, body) = http_raw(
        server.http,
        "POST",
        "/whip/errs",
        &[sdp_type, auth],
        garbage,
    )
    .await;
    assert_eq!(status, 400, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["error"]["code"], "bad_sdp");
    let big = "a".repeat(300 * 1024);
    let (status, _, _) = http_raw(server.http, "POST", "/whip/errs", &[sdp_type, auth], &big).await;
    assert_eq!(status, 413, "bodies are size-limited");

    // Nothing half-created: the room is empty.
    let p = Participant::join(&server, "check", "errs", false).await;
    assert_eq!(
        p.joined["participants"].as_array().unwrap().len(),
        0,
        "{}",
        p.joined
    );

    // Watching an empty room has nothing to show.
    let recvonly =
        "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\n";
    let (status, _, body) = http_raw(
        server.http,
        "POST",
        "/whep/errs",
        &[sdp_type, auth],
        recvonly,
    )
    .await;
    assert_eq!(status, 409, "{body}");

    // Unknown sessions.
    let frag = ("Content-Type", "application/trickle-ice-sdpfrag");
    let (status, _, _) = http_raw(
        server.http,
        "PATCH",
        "/whip/errs/nope",
        &[frag, ("If-Match", "*")],
        "",
    )
    .await;
    assert_eq!(status, 404);
    let (status, _, _) = http_raw(server.http, "DELETE", "/whip/errs/nope", &[], "").await;
    assert_eq!(status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whip_trickle_patch_checks_the_etag() {
    let server = TestServer::start(&[]).await;
    let token = server.dev_token("obs", "trickle").await;
    let (mut publisher, events) = aiortc(
        "publish",
        &format!("http://{}/whip/trickle", server.http),
        &token,
        6,
    );
    let answered = next_event(&events, Duration::from_secs(20));
    let location = answered["location"].as_str().unwrap().to_owned();
    let etag = answered["etag"].as_str().unwrap().to_owned();
    let frag_type = ("Content-Type", "application/trickle-ice-sdpfrag");
    let frag = "a=ice-ufrag:abcd\r\na=ice-pwd:0123456789012345678901\r\nm=audio 9 UDP/TLS/RTP/SAVPF 0\r\na=mid:0\r\na=candidate:1 1 udp 2122260223 127.0.0.1 50000 typ host\r\na=end-of-candidates\r\n";

    let (status, _, _) = http_raw(server.http, "PATCH", &location, &[frag_type], frag).await;
    assert_eq!(status, 428, "If-Match is required");
    let (status, _, _) = http_raw(
        server.http,
        "PATCH",
        &location,
        &[frag_type, ("If-Match", "\"stale\"")],
        frag,
    )
    .await;
    assert_eq!(status, 412, "a stale ETag is refused");
    let (status, _, body) = http_raw(
        server.http,
        "PATCH",
        &location,
        &[("Content-Type", "application/sdp"), ("If-Match", &etag)],
        frag,
    )
    .await;
    assert_eq!(status, 415, "{body}");
    let (status, _, body) = http_raw(
        server.http,
        "PATCH",
        &location,
        &[frag_type, ("If-Match", &etag)],
        frag,
    )
    .await;
    assert_eq!(status, 204, "trickled candidates are accepted: {body}");
    let done = next_event(&events, Duration::from_secs(20));
    assert_eq!(
        done["state"], "connected",
        "the session survived the PATCHes: {done}"
    );
    let _ = publisher.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whip_ice_restart_answers_a_fragment_with_a_new_etag() {
    let server = TestServer::start(&[]).await;
    let token = server.dev_token("obs", "restart").await;
    let (mut publisher, events) = aiortc(
        "publish",
        &format!("http://{}/whip/restart", server.http),
        &token,
        4,
    );
    let answered = next_event(&events, Duration::from_secs(20));
    let location = answered["location"].as_str().unwrap().to_owned();
    let etag = answered["etag"].as_str().unwrap().to_owned();
    let frag_type = ("Content-Type", "application/trickle-ice-sdpfrag");

    let (status, _, body) = http_raw(
        server.http,
        "PATCH",
        &location,
        &[frag_type, ("If-Match", "*")],
        "a=mid:0\r\n",
    )
    .await;
    assert_eq!(
        status, 400,
        "a restart without credentials is refused: {body}"
    );

    let frag = "a=ice-ufrag:newU\r\na=ice-pwd:newPasswordOfEnoughLength1\r\nm=audio 9 UDP/TLS/RTP/SAVPF 0\r\na=mid:0\r\n";
    let (status, headers, body) = http_raw(
        server.http,
        "PATCH",
        &location,
        &[frag_type, ("If-Match", "*")],
        frag,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        header(&headers, "content-type"),
        Some("application/trickle-ice-sdpfrag")
    );
    let new_etag = header(&headers, "etag").unwrap().to_owned();
    assert_ne!(new_etag, etag, "a restart changes the ETag");
    assert!(
        body.contains("a=ice-ufrag:") && body.contains("a=ice-pwd:"),
        "{body}"
    );
    assert!(
        body.contains("a=candidate:"),
        "the server's candidate: {body}"
    );

    let trickle = "a=mid:0\r\na=candidate:1 1 udp 2122260223 127.0.0.1 50000 typ host\r\n";
    let (status, _, _) = http_raw(
        server.http,
        "PATCH",
        &location,
        &[frag_type, ("If-Match", &etag)],
        trickle,
    )
    .await;
    assert_eq!(status, 412, "the old ETag is stale after a restart");
    let (status, _, _) = http_raw(
        server.http,
        "PATCH",
        &location,
        &[frag_type, ("If-Match", &new_etag)],
        trickle,
    )
    .await;
    assert_eq!(status, 204);
    let _ = next_event(&events, Duration::from_secs(20));
    let _ = publisher.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whip_into_a_calls_room_follows_the_call_rules() {
    const SECRET: &str = "a-secret-for-the-whip-call-test";
    let server = TestServer::start(&["--jwt-secret", SECRET]).await;
    let mint = |sub: &str| {
        switchboard::auth::Auth::new(SECRET.as_bytes(), false).mint(&switchboard::auth::Claims {
            sub: sub.into(),
            name: sub.into(),
            exp: switchboard::auth::unix_now() + 600,
            room: Some("*".into()),
            can_publish: true,
            can_subscribe: true,
            admin: false,
        })
    };
    let alice = mint("u-alice");
    let (status, call) = common::http_request(
        server.http,
        "POST",
        "/api/calls",
        Some(&alice),
        Some(serde_json::json!({"type": "one-to-one", "media": "video", "invitees": ["u-bob"]})),
    )
    .await
    .unwrap();
    assert_eq!(status, 201, "{call}");
    let room = call["call"]["room"].as_str().unwrap().to_owned();

    // A token for any room does not make a stranger a member of the call.
    let mallory = format!("Bearer {}", mint("u-mallory"));
    let offer =
        "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\n";
    let (status, _, body) = http_raw(
        server.http,
        "POST",
        &format!("/whip/{room}"),
        &[
            ("Content-Type", "application/sdp"),
            ("Authorization", &mallory),
        ],
        offer,
    )
    .await;
    assert_eq!(status, 403, "{body}");
}
