//! `kill -9` in the middle of a call: after a restart on the same data directory every
//! acknowledged change is there, and the calls that were open are `failed` (`server_restart`).

mod calls_support;
mod common;

use std::time::Duration;

use calls_support::{SECRET, api, create, get_call, online, participant, start, token, wait_call};
use common::{Participant, TestServer, Video};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn records_survive_sigkill_and_open_calls_fail_with_server_restart() {
    let mut server = start(&[]).await;
    let _bob_ws = online(&server, "bob").await;

    // 1. a call that ended before the crash
    let done = create(
        &server,
        "alice",
        json!({"type": "one-to-one", "media": "audio", "invitees": ["bob"]}),
    )
    .await;
    let done_id = done["call"]["id"].as_str().unwrap().to_owned();
    let (status, _) = api(
        &server,
        "POST",
        &format!("/api/calls/{done_id}/reject"),
        Some(&token("bob")),
        None,
    )
    .await;
    assert_eq!(status, 200);

    // 2. a call still ringing
    let ringing = create(
        &server,
        "alice",
        json!({"type": "group", "media": "audio", "invitees": ["carol", "dave"]}),
    )
    .await;
    let ringing_id = ringing["call"]["id"].as_str().unwrap().to_owned();

    // 3. a call in full swing, with media flowing
    let live = create(
        &server,
        "alice",
        json!({"type": "one-to-one", "media": "video", "invitees": ["bob"], "title": "crash"}),
    )
    .await;
    let id = live["call"]["id"].as_str().unwrap().to_owned();
    let room = live["call"]["room"].as_str().unwrap().to_owned();
    let (status, answered) = api(
        &server,
        "POST",
        &format!("/api/calls/{id}/answer"),
        Some(&token("bob")),
        None,
    )
    .await;
    assert_eq!(status, 200);
    let alice = Participant::join_with_token(
        &server,
        live["token"].as_str().unwrap(),
        &room,
        Some(Video::Vp8),
    )
    .await;
    let bob = Participant::join_with_token(
        &server,
        answered["token"].as_str().unwrap(),
        &room,
        Some(Video::Vp8),
    )
    .await;
    bob.wait_for("alice's media", Duration::from_secs(15), |p| {
        p.received_from(&alice.id).iter().any(|t| t.packets >= 20)
    })
    .await;
    let before = wait_call(
        &server,
        &id,
        "alice",
        "active",
        Duration::from_secs(5),
        |c| c["status"] == "active" && participant(c, "bob")["status"] == "joined",
    )
    .await;
    // the last acknowledged change before the crash
    let (status, _) = api(
        &server,
        "PATCH",
        &format!("/api/calls/{id}/media"),
        Some(&token("alice")),
        Some(json!({"video": false})),
    )
    .await;
    assert_eq!(status, 200);

    server.child.kill().unwrap(); // SIGKILL
    server.child.wait().unwrap();
    drop((alice, bob));
    let dir = std::mem::replace(&mut server.data_dir, tempfile::tempdir().unwrap());
    drop(server);
    let server = TestServer::start_in(dir, &["--jwt-secret", SECRET]).await;

    let call = get_call(&server, &id, "bob").await;
    assert_eq!(call["status"], "failed", "{call:#}");
    assert_eq!(call["end_reason"], "server_restart");
    assert_eq!(call["title"], "crash");
    assert_eq!(call["started_at"], before["started_at"]);
    let duration = call["duration_ms"].as_u64().unwrap();
    assert!(duration > 0);
    for user in ["alice", "bob"] {
        let p = participant(&call, user);
        assert_eq!(p["status"], "left", "{user}");
        let stay = &p["joins"][0];
        assert_eq!(
            stay["participant_id"],
            participant(&before, user)["joins"][0]["participant_id"]
        );
        assert_eq!(stay["leave_reason"], "server_restart");
        assert!(stay["left_at"].is_u64());
    }
    assert!(participant(&call, "bob")["answered_at"].is_u64());
    let alice_record = participant(&call, "alice");
    assert_eq!(
        alice_record["media"]["video"], false,
        "the acknowledged PATCH survived"
    );
    assert_eq!(alice_record["media_changes"].as_array().unwrap().len(), 1);

    let ringing = get_call(&server, &ringing_id, "alice").await;
    assert_eq!(ringing["status"], "failed");
    assert_eq!(ringing["end_reason"], "server_restart");
    assert_eq!(participant(&ringing, "carol")["status"], "missed");

    let done = get_call(&server, &done_id, "alice").await;
    assert_eq!(done["status"], "rejected", "a closed call stays as it was");
    assert_eq!(done["end_reason"], "rejected");

    let (_, page) = api(&server, "GET", "/api/calls", Some(&token("alice")), None).await;
    assert_eq!(page["total"], 3);
    let (_, page) = api(
        &server,
        "GET",
        "/api/calls?status=failed",
        Some(&token("alice")),
        None,
    )
    .await;
    assert_eq!(page["total"], 2);
}
