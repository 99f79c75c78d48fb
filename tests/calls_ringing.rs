//! Calls that nobody takes: missed after `--ring-timeout`, rejected, cancelled; and ringing
//! an invitee who connects to `/ws` after the call was created.

mod calls_support;
mod common;

use std::time::Duration;

use calls_support::{api, create, get_call, online, participant, start, token, wait_call};
use common::Participant;
use serde_json::json;

fn one_to_one(invitee: &str) -> serde_json::Value {
    json!({"type": "one-to-one", "media": "audio", "invitees": [invitee], "title": "ring"})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_unanswered_call_is_missed_after_the_ring_timeout() {
    let server = start(&["--ring-timeout", "2"]).await;
    let mut alice_ws = online(&server, "alice").await;
    let mut bob_ws = online(&server, "bob").await;
    let created = create(&server, "alice", one_to_one("bob")).await;
    let id = created["call"]["id"].as_str().unwrap().to_owned();
    let room = created["call"]["room"].as_str().unwrap().to_owned();
    bob_ws.expect("call_incoming").await;
    // alice waits in the room; nobody comes
    let alice =
        Participant::join_with_token(&server, created["token"].as_str().unwrap(), &room, None)
            .await;
    wait_call(
        &server,
        &id,
        "alice",
        "active",
        Duration::from_secs(5),
        |c| c["status"] == "active",
    )
    .await;

    let ended = bob_ws.expect("call_ended").await;
    assert_eq!(ended["call"]["status"], "missed");
    assert_eq!(
        alice_ws.expect("call_ended").await["call"]["status"],
        "missed"
    );
    let call = get_call(&server, &id, "bob").await;
    assert_eq!(call["status"], "missed");
    assert_eq!(call["end_reason"], "no_answer");
    assert_eq!(participant(&call, "bob")["status"], "missed");
    assert_eq!(participant(&call, "alice")["status"], "left");
    assert_eq!(
        participant(&call, "alice")["joins"][0]["leave_reason"],
        "call_ended"
    );
    // alice was taken out of the room
    alice
        .wait_for("removed from the room", Duration::from_secs(5), |p| {
            p.events_of("participant_left")
                .iter()
                .any(|e| e["participant_id"] == p.id.as_str())
        })
        .await;

    let (status, body) = api(
        &server,
        "POST",
        &format!("/api/calls/{id}/answer"),
        Some(&token("bob")),
        None,
    )
    .await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"]["code"], "call_over");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_call_is_over_for_both() {
    let server = start(&[]).await;
    let mut alice_ws = online(&server, "alice").await;
    let created = create(&server, "alice", one_to_one("bob")).await;
    let id = created["call"]["id"].as_str().unwrap().to_owned();
    assert_eq!(created["call"]["status"], "initiated", "bob is offline");

    let (status, body) = api(
        &server,
        "POST",
        &format!("/api/calls/{id}/reject"),
        Some(&token("bob")),
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["call"]["status"], "rejected");
    assert_eq!(body["call"]["duration_ms"], 0);
    assert_eq!(participant(&body["call"], "bob")["status"], "rejected");
    assert!(participant(&body["call"], "bob")["rejected_at"].is_u64());
    assert_eq!(
        alice_ws.expect("call_ended").await["call"]["status"],
        "rejected"
    );

    for (path, code) in [("reject", "call_over"), ("answer", "call_over")] {
        let (status, body) = api(
            &server,
            "POST",
            &format!("/api/calls/{id}/{path}"),
            Some(&token("bob")),
            None,
        )
        .await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (409, Some(code)),
            "{path}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_a_group_one_rejection_leaves_the_call_ringing_for_the_others() {
    let server = start(&["--ring-timeout", "2"]).await;
    let created = create(
        &server,
        "alice",
        json!({"type": "group", "media": "video", "invitees": ["bob", "carol"], "max_participants": 4}),
    )
    .await;
    let id = created["call"]["id"].as_str().unwrap().to_owned();
    let path = |op: &str| format!("/api/calls/{id}/{op}");
    let (status, body) = api(&server, "POST", &path("reject"), Some(&token("bob")), None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["call"]["status"], "initiated");
    let (status, body) = api(&server, "POST", &path("answer"), Some(&token("bob")), None).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (409, Some("already_rejected"))
    );
    let (status, body) = api(
        &server,
        "POST",
        &path("answer"),
        Some(&token("carol")),
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(body["token"].is_string());
    // carol answered: hanging up is leaving, not rejecting
    let (status, body) = api(
        &server,
        "POST",
        &path("reject"),
        Some(&token("carol")),
        None,
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (409, Some("invalid_participant_transition"))
    );
    // carol answered but never joins: the call fails after a second ring timeout
    let call = wait_call(
        &server,
        &id,
        "alice",
        "failed",
        Duration::from_secs(8),
        |c| c["status"] == "failed",
    )
    .await;
    assert_eq!(call["end_reason"], "join_timeout");
    assert_eq!(participant(&call, "bob")["status"], "rejected");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invitee_who_connects_later_is_rung_then() {
    let server = start(&[]).await;
    let created = create(&server, "alice", one_to_one("bob")).await;
    let id = created["call"]["id"].as_str().unwrap().to_owned();
    assert_eq!(created["call"]["status"], "initiated");
    let mut bob_ws = online(&server, "bob").await;
    let incoming = bob_ws.expect("call_incoming").await;
    assert_eq!(incoming["call"]["id"], id.as_str());
    assert_eq!(participant(&incoming["call"], "bob")["status"], "ringing");
    let call = get_call(&server, &id, "alice").await;
    assert_eq!(call["status"], "ringing");
    assert!(call["ringing_at"].is_u64());

    // the creator cancels: ended (cancelled), bob missed it
    let (status, body) = api(
        &server,
        "POST",
        &format!("/api/calls/{id}/end"),
        Some(&token("alice")),
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["call"]["status"], "ended");
    assert_eq!(body["call"]["end_reason"], "cancelled");
    assert_eq!(body["call"]["ended_by"], "alice");
    assert_eq!(participant(&body["call"], "bob")["status"], "missed");
    assert_eq!(
        bob_ws.expect("call_ended").await["call"]["end_reason"],
        "cancelled"
    );
}
