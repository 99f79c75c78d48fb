//! A one-to-one call from start to end, through REST and `/ws` together with real WebRTC
//! joins: create → ring → answer → media → leave → ended, with duration and quality.

mod calls_support;
mod common;

use std::time::Duration;

use calls_support::{api, create, get_call, online, participant, start, token, wait_call};
use common::{Participant, Video};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_call_rings_is_answered_carries_media_and_ends_with_its_record() {
    let server = start(&[]).await;
    let mut bob_ws = online(&server, "bob").await;

    let created = create(
        &server,
        "alice",
        json!({"type": "one-to-one", "media": "video", "invitees": ["bob"], "title": "Tutoring"}),
    )
    .await;
    let call = &created["call"];
    let id = call["id"].as_str().unwrap().to_owned();
    let room = call["room"].as_str().unwrap().to_owned();
    assert_eq!(call["status"], "ringing", "bob is online: {call:#}");
    assert_eq!(call["type"], "one-to-one");
    assert_eq!(call["media"], "video");
    assert_eq!(call["title"], "Tutoring");
    assert_eq!(call["created_by"], "alice");
    assert_eq!(call["max_participants"], 2);
    assert!(created["ice_servers"].is_array());
    assert!(room.len() > 30, "an unguessable room name: {room}");
    assert_eq!(participant(call, "alice")["role"], "creator");
    assert_eq!(participant(call, "bob")["status"], "ringing");

    let incoming = bob_ws.expect("call_incoming").await;
    assert_eq!(incoming["call"]["id"], id.as_str());
    assert_eq!(incoming["call"]["title"], "Tutoring");

    // bob answers and gets his own token for the room
    let (status, answered) = api(
        &server,
        "POST",
        &format!("/api/calls/{id}/answer"),
        Some(&token("bob")),
        None,
    )
    .await;
    assert_eq!(status, 200, "{answered}");
    assert!(participant(&answered["call"], "bob")["answered_at"].is_u64());

    let alice_token = created["token"].as_str().unwrap();
    let bob_token = answered["token"].as_str().unwrap();
    let alice = Participant::join_with_token(&server, alice_token, &room, Some(Video::Vp8)).await;
    let bob = Participant::join_with_token(&server, bob_token, &room, Some(Video::Vp8)).await;
    for (me, other) in [(&alice, &bob), (&bob, &alice)] {
        me.wait_for("media both ways", Duration::from_secs(15), |p| {
            let r = p.received_from(&other.id);
            r.len() == 2 && r.iter().all(|t| t.packets >= 30)
        })
        .await;
    }
    let call = wait_call(
        &server,
        &id,
        "alice",
        "active",
        Duration::from_secs(5),
        |c| {
            c["status"] == "active"
                && c["participants"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .all(|p| p["status"] == "joined")
        },
    )
    .await;
    assert!(call["started_at"].is_u64());
    assert_eq!(
        participant(&call, "alice")["joins"][0]["participant_id"],
        alice.id.as_str()
    );

    // bob mutes himself, over REST
    let (status, muted) = api(
        &server,
        "PATCH",
        &format!("/api/calls/{id}/media"),
        Some(&token("bob")),
        Some(json!({"audio": false})),
    )
    .await;
    assert_eq!(status, 200, "{muted}");
    let bob_record = participant(&muted["call"], "bob");
    assert_eq!(
        bob_record["media"],
        json!({"audio": false, "video": true, "screen": false})
    );
    assert_eq!(bob_record["media_changes"][0]["source"], "api");

    // alice turns her camera off in the room: the media plane reports it
    alice
        .signal
        .lock()
        .await
        .send(json!({"type": "media_state", "audio": true, "video": false, "screen": false}));
    let call = wait_call(
        &server,
        &id,
        "bob",
        "alice's camera off",
        Duration::from_secs(5),
        |c| participant(c, "alice")["media"]["video"] == false,
    )
    .await;
    let change = &participant(&call, "alice")["media_changes"][0];
    assert_eq!(change["source"], "media");
    assert_eq!(change["video"], false);

    // bob's first media_state is the media plane's starting state (everything off), but his
    // record still says his camera is on: a first state is news and is recorded.
    bob.signal
        .lock()
        .await
        .send(json!({"type": "media_state", "audio": false, "video": false, "screen": false}));
    wait_call(
        &server,
        &id,
        "alice",
        "bob's first media state",
        Duration::from_secs(5),
        |c| participant(c, "bob")["media"]["video"] == false,
    )
    .await;

    tokio::time::sleep(Duration::from_secs(1)).await;
    bob.leave().await;
    let call = wait_call(
        &server,
        &id,
        "alice",
        "bob left",
        Duration::from_secs(5),
        |c| participant(c, "bob")["status"] == "left",
    )
    .await;
    assert_eq!(call["status"], "active", "alice is still there");
    alice.leave().await;

    let call = wait_call(&server, &id, "bob", "ended", Duration::from_secs(5), |c| {
        c["status"] == "ended"
    })
    .await;
    assert_eq!(call["end_reason"], "all_left");
    let duration = call["duration_ms"].as_u64().unwrap();
    assert!(duration >= 1000, "{call:#}");
    assert_eq!(
        call["ended_at"].as_u64().unwrap() - call["started_at"].as_u64().unwrap(),
        duration
    );
    for user in ["alice", "bob"] {
        let p = participant(&call, user);
        assert_eq!(p["status"], "left");
        let stay = &p["joins"][0];
        assert_eq!(stay["leave_reason"], "left");
        assert!(stay["left_at"].as_u64().unwrap() >= stay["joined_at"].as_u64().unwrap());
        let q = &stay["quality"];
        assert!(q["packets_received"].as_u64().unwrap() > 20, "{user}: {q}");
        assert!(q["bitrate_in_kbps"].as_f64().unwrap() > 1.0, "{user}: {q}");
        assert!(q["bitrate_out_kbps"].as_f64().unwrap() > 1.0, "{user}: {q}");
        assert!(q["loss_ratio"].as_f64().unwrap() < 0.05, "{user}: {q}");
    }

    let ended = bob_ws.expect("call_ended").await;
    assert_eq!(ended["call"]["id"], id.as_str());
    assert_eq!(ended["call"]["status"], "ended");

    // over: no more answers, and it shows in both histories
    let (status, body) = api(
        &server,
        "POST",
        &format!("/api/calls/{id}/answer"),
        Some(&token("bob")),
        None,
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (409, Some("call_over"))
    );
    for user in ["alice", "bob"] {
        let (status, page) = api(&server, "GET", "/api/calls", Some(&token(user)), None).await;
        assert_eq!(status, 200);
        assert_eq!(page["calls"][0]["id"], id.as_str());
    }
    assert_eq!(get_call(&server, &id, "bob").await["status"], "ended");
}
