//! A group call with real WebRTC joins: three people, one drops out and rejoins (two stays
//! in the record), the creator ends it for everyone and the room is emptied.

mod calls_support;
mod common;

use std::time::Duration;

use calls_support::{api, create, participant, start, token, wait_call};
use common::{Participant, Video};
use serde_json::json;

async fn answer(server: &common::TestServer, id: &str, user: &str) -> String {
    let (status, body) = api(
        server,
        "POST",
        &format!("/api/calls/{id}/answer"),
        Some(&token(user)),
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    body["token"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_group_call_with_a_rejoin_ended_by_its_creator() {
    let server = start(&[]).await;
    let created = create(
        &server,
        "alice",
        json!({"type": "group", "media": "video", "invitees": ["bob", "carol"], "title": "standup", "max_participants": 3}),
    )
    .await;
    let id = created["call"]["id"].as_str().unwrap().to_owned();
    let room = created["call"]["room"].as_str().unwrap().to_owned();
    assert_eq!(created["call"]["max_participants"], 3);

    let alice = Participant::join_with_token(
        &server,
        created["token"].as_str().unwrap(),
        &room,
        Some(Video::Vp8),
    )
    .await;
    let bob_token = answer(&server, &id, "bob").await;
    let bob = Participant::join_with_token(&server, &bob_token, &room, Some(Video::Vp8)).await;
    let carol_token = answer(&server, &id, "carol").await;
    let carol = Participant::join_with_token(&server, &carol_token, &room, Some(Video::Vp8)).await;
    carol
        .wait_for("alice's and bob's media", Duration::from_secs(15), |p| {
            [&alice.id, &bob.id].iter().all(|id| {
                p.received_from(id)
                    .iter()
                    .filter(|t| t.packets >= 20)
                    .count()
                    == 2
            })
        })
        .await;

    // bob drops out and comes back with a fresh token
    let first_stay = bob.id.clone();
    bob.leave().await;
    drop(bob);
    wait_call(
        &server,
        &id,
        "alice",
        "bob left",
        Duration::from_secs(5),
        |c| participant(c, "bob")["status"] == "left",
    )
    .await;
    let bob_token = answer(&server, &id, "bob").await;
    let bob = Participant::join_with_token(&server, &bob_token, &room, Some(Video::Vp8)).await;
    alice
        .wait_for("bob's media again", Duration::from_secs(15), |p| {
            p.received_from(&bob.id).iter().any(|t| t.packets >= 20)
        })
        .await;
    let call = wait_call(
        &server,
        &id,
        "carol",
        "bob back",
        Duration::from_secs(5),
        |c| participant(c, "bob")["status"] == "joined",
    )
    .await;
    let stays = participant(&call, "bob")["joins"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(stays.len(), 2, "{call:#}");
    assert_eq!(stays[0]["participant_id"], first_stay.as_str());
    assert_eq!(stays[0]["leave_reason"], "left");
    assert!(stays[0]["quality"]["packets_received"].as_u64().unwrap() > 10);
    assert_eq!(stays[1]["participant_id"], bob.id.as_str());
    assert!(stays[1]["left_at"].is_null());

    // the creator ends it: everybody is taken out of the room
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
    assert_eq!(body["call"]["end_reason"], "hangup");
    for p in [&alice, &bob, &carol] {
        p.wait_for("call_ended", Duration::from_secs(5), |p| {
            !p.events_of("call_ended").is_empty()
        })
        .await;
        p.wait_for("removed from the room", Duration::from_secs(5), |p| {
            p.events_of("participant_left")
                .iter()
                .any(|e| e["participant_id"] == p.id.as_str())
        })
        .await;
    }
    // the quality of the stays the end cut short arrives with the media plane's leave events
    let call = wait_call(
        &server,
        &id,
        "bob",
        "qualities",
        Duration::from_secs(5),
        |c| {
            c["participants"].as_array().unwrap().iter().all(|p| {
                p["joins"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .all(|j| j["quality"].is_object())
            })
        },
    )
    .await;
    for user in ["alice", "bob", "carol"] {
        let p = participant(&call, user);
        assert_eq!(p["status"], "left", "{user}");
        let last = p["joins"].as_array().unwrap().last().unwrap();
        assert_eq!(last["leave_reason"], "call_ended");
        assert_eq!(last["left_at"], call["ended_at"]);
    }
}
