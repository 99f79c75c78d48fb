//! Who may enter a call's room on `/ws`: its creator and invitees (and admins), up to the
//! call's `max_participants`, while the call is open.

mod calls_support;
mod common;

use calls_support::{SECRET, api, create, start, token};
use common::Signal;
use serde_json::{Value, json};
use switchboard::auth::{Auth, Claims, unix_now};

/// A token for any room (`"room": "*"`).
fn any_room(user: &str, admin: bool) -> String {
    Auth::new(SECRET.as_bytes(), false).mint(&Claims {
        sub: user.to_owned(),
        name: user.to_owned(),
        exp: unix_now() + 600,
        room: Some("*".into()),
        can_publish: true,
        can_subscribe: true,
        admin,
    })
}

async fn join(server: &common::TestServer, token: &str, room: &str) -> (Signal, Value) {
    let mut signal = Signal::connect(&server.ws_url()).await;
    signal.send(json!({"type": "auth", "token": token}));
    signal.expect("authenticated").await;
    signal.send(json!({"type": "join", "room": room}));
    // The answer to join; an invitee may get `call_incoming` first.
    loop {
        let reply = signal
            .recv(std::time::Duration::from_secs(10))
            .await
            .expect("join answered");
        if reply["type"] == "joined" || reply["type"] == "error" {
            return (signal, reply);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_members_enter_a_call_room_up_to_its_size_while_it_is_open() {
    let server = start(&[]).await;
    let created = create(
        &server,
        "alice",
        json!({"type": "one-to-one", "media": "audio", "invitees": ["bob"]}),
    )
    .await;
    let id = created["call"]["id"].as_str().unwrap().to_owned();
    let room = created["call"]["room"].as_str().unwrap().to_owned();

    // a token for every room is not enough for a stranger
    let (_eve, reply) = join(&server, &any_room("eve", false), &room).await;
    assert_eq!(reply["type"], "error", "{reply}");
    assert_eq!(reply["code"], "forbidden");

    // bob may use a token for every room too; he is invited
    let (_alice, reply) = join(&server, created["token"].as_str().unwrap(), &room).await;
    assert_eq!(reply["type"], "joined", "{reply}");
    let (_bob, reply) = join(&server, &any_room("bob", false), &room).await;
    assert_eq!(reply["type"], "joined", "{reply}");

    // an admin is let in, but a one-to-one room holds two
    let (_root, reply) = join(&server, &any_room("root", true), &room).await;
    assert_eq!(reply["type"], "error", "{reply}");
    assert_eq!(reply["code"], "room_full");

    let (status, _) = api(
        &server,
        "POST",
        &format!("/api/calls/{id}/end"),
        Some(&token("alice")),
        None,
    )
    .await;
    assert_eq!(status, 200);
    let (_late, reply) = join(&server, created["token"].as_str().unwrap(), &room).await;
    assert_eq!(reply["type"], "error", "{reply}");
    assert_eq!(reply["code"], "call_over");

    // rooms that are no call's are unaffected
    let (_x, reply) = join(&server, &any_room("eve", false), "just-a-room").await;
    assert_eq!(reply["type"], "joined", "{reply}");
}
