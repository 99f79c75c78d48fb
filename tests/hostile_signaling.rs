//! Hostile `/ws` clients cost only themselves: floods of signaling messages are rate limited and
//! the flooder alone is removed, while the others keep their media and their call records;
//! tokens are checked (nbf, iat, sub) and sessions end with their token; oversized messages
//! and sockets that never authenticate are dealt with.

mod calls_support;
mod common;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use calls_support::{SECRET, api, create, participant, start, token, wait_call};
use common::{Participant, Signal, TestServer, Video, http_request};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use switchboard::auth::unix_now;
use tokio_tungstenite::tungstenite::Message;

/// A token signed with the test secret, from raw claims (to set `nbf`, `iat`, odd `sub`s).
fn raw_token(claims: Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

fn room_token(sub: &str, exp: u64) -> String {
    raw_token(json!({"sub": sub, "name": sub, "exp": exp, "room": "*"}))
}

/// RTP packets `p` received from `publisher` so far (all its tracks).
fn packets_from(p: &Participant, publisher: &str) -> u64 {
    p.received_from(publisher).iter().map(|r| r.packets).sum()
}

/// Packets `p` gets from `publisher` in a window of `len`.
async fn packets_in_window(p: &Participant, publisher: &str, len: Duration) -> u64 {
    let before = packets_from(p, publisher);
    tokio::time::sleep(len).await;
    packets_from(p, publisher) - before
}

/// Reads `s` until it closes (or `within` passes); the messages read.
async fn drain_until_closed(s: &mut Signal, within: Duration) -> Vec<Value> {
    let deadline = Instant::now() + within;
    let mut seen = Vec::new();
    while Instant::now() < deadline {
        match s.recv(Duration::from_millis(200)).await {
            Some(v) => seen.push(v),
            None if s.closed.load(Ordering::SeqCst) => return seen,
            None => {}
        }
    }
    panic!(
        "the socket stayed open for {within:?}; last messages: {:?}",
        seen.iter().rev().take(3).collect::<Vec<_>>()
    );
}

/// A session of `user` in `room` without media (the attacker), and its participant id.
async fn joined_signal(server: &TestServer, user: &str, room: &str) -> (Signal, String) {
    let mut s = Signal::connect(&server.ws_url()).await;
    s.send(json!({"type": "auth", "token": room_token(user, unix_now() + 3600)}));
    s.expect("authenticated").await;
    s.send(json!({"type": "join", "room": room}));
    // (an invitee may hear `call_incoming` first)
    let joined = s.expect("joined").await;
    let id = joined["participant_id"].as_str().unwrap().to_owned();
    (s, id)
}

/// Waits until both victims saw `attacker` removed as `kicked`.
async fn wait_kicked(victims: [&Participant; 2], attacker: &str) {
    for victim in victims {
        victim
            .wait_for("the attacker kicked", Duration::from_secs(5), |p| {
                left_ids(p).contains(&(attacker.to_owned(), "kicked".into()))
            })
            .await;
    }
}

async fn metric(server: &TestServer, series: &str) -> f64 {
    let (status, body) = http_request(server.http, "GET", "/metrics", None, None)
        .await
        .unwrap();
    assert_eq!(status, 200);
    let text = body.as_str().unwrap().to_owned();
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no {series} in /metrics"))
        .parse()
        .unwrap()
}

fn left_ids(p: &Participant) -> Vec<(String, String)> {
    p.events_of("participant_left")
        .iter()
        .map(|e| {
            (
                e["participant_id"].as_str().unwrap().to_owned(),
                e["reason"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_signaling_flood_costs_only_the_flooder() {
    // Default limits: what a real deployment has.
    let server = start(&[]).await;
    let created = create(
        &server,
        "alice",
        json!({"type": "group", "media": "video", "invitees": ["bob", "mallory"]}),
    )
    .await;
    let id = created["call"]["id"].as_str().unwrap().to_owned();
    let room = created["call"]["room"].as_str().unwrap().to_owned();
    let (status, answered) = api(
        &server,
        "POST",
        &format!("/api/calls/{id}/answer"),
        Some(&token("bob")),
        None,
    )
    .await;
    assert_eq!(status, 200, "{answered}");
    let alice = Participant::join_with_token(
        &server,
        created["token"].as_str().unwrap(),
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
    for (me, other) in [(&alice, &bob), (&bob, &alice)] {
        me.wait_for("media both ways", Duration::from_secs(15), |p| {
            packets_from(p, &other.id) >= 60
        })
        .await;
    }

    // An honest client's start is never limited: a browser's trickle of candidates and a
    // few mute toggles.
    {
        let s = bob.signal.lock().await;
        for i in 0..30 {
            let pc = if i < 20 { "publish" } else { "subscribe" };
            s.send(json!({"type": "candidate", "pc": pc, "candidate": {
                "candidate": format!("candidate:{i} 1 udp 2130706431 127.0.0.1 {} typ host", 40000 + i),
                "sdpMid": "0", "sdpMLineIndex": 0}}));
        }
        for audio in [false, true, false, true, false] {
            s.send(json!({"type": "media_state", "audio": audio, "video": true, "screen": false}));
        }
        s.send(json!({"type": "ping"}));
    }
    alice
        .wait_for("bob's media state", Duration::from_secs(5), |p| {
            p.events_of("media_state")
                .last()
                .is_some_and(|m| m["participant_id"] == bob.id.as_str() && m["audio"] == false)
        })
        .await;
    assert_eq!(
        alice.events_of("media_state").len(),
        5,
        "each change relayed"
    );

    let before_ab = packets_in_window(&alice, &bob.id, Duration::from_secs(2)).await;
    let before_ba = packets_in_window(&bob, &alice.id, Duration::from_secs(2)).await;
    assert!(before_ab > 40 && before_ba > 40, "{before_ab} {before_ba}");

    // mallory floods 10 000 media_state messages, each a change.
    let (mut mallory, mallory_id) = joined_signal(&server, "mallory", &room).await;
    let started = Instant::now();
    for i in 0..10_000 {
        mallory.send(
            json!({"type": "media_state", "audio": i % 2 == 0, "video": false, "screen": false}),
        );
    }
    let seen = drain_until_closed(&mut mallory, Duration::from_secs(20)).await;
    let limited: Vec<_> = seen
        .iter()
        .filter(|m| m["code"] == "rate_limited")
        .collect();
    assert!(!limited.is_empty(), "mallory was told: {seen:?}");
    assert!(
        limited[0]["message"]
            .as_str()
            .unwrap()
            .contains("media_state"),
        "the message names the kind: {}",
        limited[0]
    );
    assert!(
        (50..=60).contains(&limited.len()),
        "every refusal reached mallory, and they are bounded: {}",
        limited.len()
    );
    eprintln!(
        "media_state flood: mallory closed after {:?}, {} rate_limited replies",
        started.elapsed(),
        limited.len()
    );
    wait_kicked([&alice, &bob], &mallory_id).await;
    for victim in [&alice, &bob] {
        let relayed = victim
            .events_of("media_state")
            .iter()
            .filter(|m| m["participant_id"] == mallory_id.as_str())
            .count();
        assert!(
            relayed <= 25,
            "at most mallory's burst reached the others: {relayed}"
        );
    }

    // Then thousands of candidates, and thousands of pings, each from a new socket.
    let (mut mallory, mallory_id) = joined_signal(&server, "mallory", &room).await;
    for i in 0..5_000 {
        mallory.send(json!({"type": "candidate", "pc": "publish", "candidate": {
            "candidate": format!("candidate:{i} 1 udp 1 127.0.0.1 {} typ host", 1024 + i)}}));
    }
    let seen = drain_until_closed(&mut mallory, Duration::from_secs(20)).await;
    let limited: Vec<_> = seen
        .iter()
        .filter(|m| m["code"] == "rate_limited")
        .collect();
    assert!(
        !limited.is_empty() && limited.len() <= 60,
        "{} refusals",
        limited.len()
    );
    assert!(
        limited[0]["message"]
            .as_str()
            .unwrap()
            .contains("candidate"),
        "{}",
        limited[0]
    );
    wait_kicked([&alice, &bob], &mallory_id).await;

    let (mut mallory, mallory_id) = joined_signal(&server, "mallory", &room).await;
    for _ in 0..5_000 {
        mallory.send(json!({"type": "ping"}));
    }
    let seen = drain_until_closed(&mut mallory, Duration::from_secs(20)).await;
    let limited: Vec<_> = seen
        .iter()
        .filter(|m| m["code"] == "rate_limited")
        .collect();
    assert!(
        limited
            .first()
            .is_some_and(|m| m["message"].as_str().unwrap().contains("ping")),
        "{:?}",
        seen.iter().take(20).collect::<Vec<_>>()
    );
    // only the burst got an answer
    let pongs = seen.iter().filter(|m| m["type"] == "pong").count();
    assert!((1..=15).contains(&pongs), "{pongs} pongs");
    wait_kicked([&alice, &bob], &mallory_id).await;

    // The victims: media as before, never removed, still hearing the room.
    let after_ab = packets_in_window(&alice, &bob.id, Duration::from_secs(2)).await;
    let after_ba = packets_in_window(&bob, &alice.id, Duration::from_secs(2)).await;
    eprintln!(
        "packets in 2 s, before/after: alice←bob {before_ab}/{after_ab}, bob←alice {before_ba}/{after_ba}"
    );
    assert!(
        after_ab * 10 >= before_ab * 7 && after_ba * 10 >= before_ba * 7,
        "before {before_ab}/{before_ba}, after {after_ab}/{after_ba}"
    );
    for victim in [&alice, &bob] {
        let left = left_ids(victim);
        assert!(
            left.iter().all(|(p, _)| *p != alice.id && *p != bob.id),
            "a victim was removed: {left:?}"
        );
        assert_eq!(left.len(), 3, "mallory's three sessions: {left:?}");
        assert!(
            left.iter().all(|(_, reason)| reason == "kicked"),
            "{left:?}"
        );
        let errors = victim.events_of("error");
        assert!(errors.is_empty(), "a victim got errors: {errors:?}");
    }
    // bob mutes his camera: alice hears it, and it is recorded
    bob.signal
        .lock()
        .await
        .send(json!({"type": "media_state", "audio": true, "video": false, "screen": false}));
    alice
        .wait_for("bob's camera off", Duration::from_secs(5), |p| {
            p.events_of("media_state")
                .last()
                .is_some_and(|m| m["participant_id"] == bob.id.as_str() && m["video"] == false)
        })
        .await;

    // The same state again is no news: not relayed, not recorded.
    let heard = alice.events_of("media_state").len();
    {
        let mut s = bob.signal.lock().await;
        for _ in 0..3 {
            s.send(json!({"type": "media_state", "audio": true, "video": false, "screen": false}));
        }
        s.send(json!({"type": "ping"}));
        s.expect("pong").await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        alice.events_of("media_state").len(),
        heard,
        "repeats relayed"
    );

    // Every event the room acknowledged is on disk.
    let call = wait_call(
        &server,
        &id,
        "alice",
        "bob's camera off recorded",
        Duration::from_secs(5),
        |c| participant(c, "bob")["media"]["video"] == false,
    )
    .await;
    for user in ["alice", "bob"] {
        let p = participant(&call, user);
        assert_eq!(p["status"], "joined", "{user}: {p:#}");
        assert_eq!(p["joins"].as_array().unwrap().len(), 1, "{user}");
        assert!(p["joins"][0]["left_at"].is_null(), "{user}");
    }
    let changes = participant(&call, "bob")["media_changes"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(
        changes.len(),
        6,
        "bob's five toggles and the camera, not the repeats: {changes:#?}"
    );
    assert!(changes.iter().all(|c| c["source"] == "media"));
    let mallory_record = participant(&call, "mallory");
    let stays = mallory_record["joins"].as_array().unwrap();
    assert_eq!(stays.len(), 3, "{mallory_record:#}");
    assert!(
        stays.iter().all(|s| s["leave_reason"] == "kicked"),
        "{mallory_record:#}"
    );
    assert!(
        mallory_record["media_changes"].as_array().unwrap().len() <= 25,
        "mallory's burst, not her flood"
    );
    assert_eq!(metric(&server, "switchboard_events_lost_total").await, 0.0);
    assert_eq!(metric(&server, "switchboard_participants").await, 2.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kind_of_message_has_its_own_limit() {
    let server = start(&[
        "--ws-rate-media-state",
        "0.01,2",
        "--ws-rate-candidate",
        "0.01,3",
        "--ws-rate-negotiation",
        "0.01,2",
        "--ws-rate-ping",
        "0.01,4",
        "--ws-rate-session",
        "0.01,3",
        "--ws-rate-malformed",
        "0.01,2",
        "--ws-abuse-limit",
        "0.01,100",
    ])
    .await;
    let mut s = Signal::connect(&server.ws_url()).await;
    // auth + join take two of the session bucket's three
    let joined = s
        .auth_and_join(&room_token("una", unix_now() + 3600), "r")
        .await;
    assert_eq!(joined["type"], "joined");
    let cases: [(&str, Value, usize); 6] = [
        (
            "media_state",
            json!({"type": "media_state", "audio": true, "video": true}),
            2,
        ),
        (
            "candidate",
            json!({"type": "candidate", "pc": "subscribe", "candidate": {"candidate": ""}}),
            3,
        ),
        (
            "publish_offer/subscribe_answer",
            json!({"type": "subscribe_answer", "sdp": "v=0"}),
            2,
        ),
        ("ping", json!({"type": "ping"}), 4),
        ("auth/join/leave", json!({"type": "join", "room": "r"}), 1),
        ("malformed", json!({"type": "teleport"}), 2),
    ];
    for (kind, msg, allowed) in cases {
        for _ in 0..allowed + 3 {
            s.send(msg.clone());
        }
        let mut replies = Vec::new();
        while let Some(m) = s.recv(Duration::from_millis(700)).await {
            replies.push(m);
        }
        let limited = replies
            .iter()
            .filter(|m| {
                m["code"] == "rate_limited"
                    && m["message"]
                        .as_str()
                        .unwrap()
                        .contains(&format!("many {kind} "))
            })
            .count();
        assert_eq!(limited, 3, "{kind}: {replies:#?}");
    }
    assert!(!s.closed.load(Ordering::SeqCst), "under the abuse limit");

    // Past the abuse limit the session is closed.
    let server = start(&["--ws-rate-ping", "0.01,1", "--ws-abuse-limit", "0.01,3"]).await;
    let mut s = Signal::connect(&server.ws_url()).await;
    for _ in 0..10 {
        s.send(json!({"type": "ping"}));
    }
    let seen = drain_until_closed(&mut s, Duration::from_secs(5)).await;
    let limited = seen.iter().filter(|m| m["code"] == "rate_limited").count();
    assert_eq!(limited, 4, "three refusals, then the closing one: {seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_session_ends_with_its_token_unless_renewed() {
    let server = start(&[]).await;
    let observer =
        Participant::join_with_token(&server, &room_token("olga", unix_now() + 3600), "r", None)
            .await;
    // Both tokens expire in 2 s (plus the 5 s leeway): one session renews, one does not.
    let exp = unix_now() + 2;
    let mut fading = Signal::connect(&server.ws_url()).await;
    let joined = fading.auth_and_join(&room_token("fay", exp), "r").await;
    let fading_id = joined["participant_id"].as_str().unwrap().to_owned();
    let mut renewing = Signal::connect(&server.ws_url()).await;
    let joined = renewing.auth_and_join(&room_token("ren", exp), "r").await;
    assert_eq!(joined["type"], "joined");
    let started = Instant::now();

    // a fresh token for another user is refused, the session goes on
    renewing.send(json!({"type": "auth", "token": room_token("other", exp + 3600)}));
    assert_eq!(renewing.expect("error").await["code"], "forbidden");
    renewing.send(json!({"type": "auth", "token": room_token("ren", exp + 6)}));
    let again = renewing.expect("authenticated").await;
    assert_eq!(again["user_id"], "ren");

    let seen = drain_until_closed(&mut fading, Duration::from_secs(12)).await;
    assert!(
        seen.iter().any(|m| m["code"] == "token_expired"),
        "{seen:?}"
    );
    let lasted = started.elapsed();
    assert!(
        lasted >= Duration::from_secs(4),
        "ended at exp + leeway, not before: {lasted:?}"
    );
    observer
        .wait_for("fay left", Duration::from_secs(5), |p| {
            p.events_of("participant_left")
                .iter()
                .any(|e| e["participant_id"] == fading_id.as_str())
        })
        .await;

    // the renewed one is still there past the first expiry
    tokio::time::sleep(Duration::from_secs(1)).await;
    renewing.send(json!({"type": "ping"}));
    assert_eq!(renewing.expect("pong").await["type"], "pong");
    assert!(!renewing.closed.load(Ordering::SeqCst));
    // and ends with its new token
    let seen = drain_until_closed(&mut renewing, Duration::from_secs(12)).await;
    assert!(
        seen.iter().any(|m| m["code"] == "token_expired"),
        "{seen:?}"
    );
    assert!(
        started.elapsed() >= Duration::from_secs(9),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_not_yet_valid_or_with_a_bad_sub_are_refused() {
    let server = start(&[]).await;
    let now = unix_now();
    let cases = [
        (
            "nbf an hour ahead",
            json!({"sub": "u", "exp": now + 7200, "nbf": now + 3600, "room": "*"}),
            "nbf",
        ),
        (
            "iat a year ahead",
            json!({"sub": "u", "exp": now + 7200, "iat": now + 365 * 86400, "room": "*"}),
            "iat",
        ),
        (
            "empty sub",
            json!({"sub": "", "exp": now + 7200, "room": "*"}),
            "sub",
        ),
        (
            "10 000 character sub",
            json!({"sub": "x".repeat(10_000), "exp": now + 7200, "room": "*"}),
            "sub",
        ),
        (
            "sub with CR/LF",
            json!({"sub": "eve\r\nINFO forged log line", "exp": now + 7200, "room": "*"}),
            "sub",
        ),
    ];
    for (what, claims, word) in cases {
        let token = raw_token(claims);
        let mut s = Signal::connect(&server.ws_url()).await;
        s.send(json!({"type": "auth", "token": token}));
        let reply = s.recv(Duration::from_secs(5)).await.expect("an answer");
        assert_eq!(reply["code"], "unauthorized", "{what}: {reply}");
        assert!(
            reply["message"].as_str().unwrap().contains(word),
            "{what}: {reply}"
        );
        drain_until_closed(&mut s, Duration::from_secs(3)).await;
        // REST says the same
        let (status, body) = api(&server, "GET", "/api/calls", Some(&token), None).await;
        assert_eq!(status, 401, "{what}: {body}");
    }
    // a token issued a moment ago, valid from now on, is fine
    let token =
        raw_token(json!({"sub": "u", "exp": now + 7200, "nbf": now, "iat": now, "room": "*"}));
    let mut s = Signal::connect(&server.ws_url()).await;
    assert_eq!(s.auth_and_join(&token, "r").await["type"], "joined");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_message_gets_bad_message_and_the_socket_stays() {
    let server = start(&[]).await;
    let mut s = Signal::connect(&server.ws_url()).await;
    let joined = s
        .auth_and_join(&room_token("big", unix_now() + 3600), "r")
        .await;
    assert_eq!(joined["type"], "joined");
    s.send(json!({"type": "publish_offer", "sdp": "v".repeat(300 * 1024)}));
    let reply = s.recv(Duration::from_secs(5)).await.expect("an answer");
    assert_eq!(reply["code"], "bad_message", "{reply}");
    s.send(json!({"type": "ping"}));
    assert_eq!(s.expect("pong").await["type"], "pong");
    assert!(!s.closed.load(Ordering::SeqCst));

    // Over the transport's bound: bad_message, then close code 1009.
    let (mut ws, _) = tokio_tungstenite::connect_async(server.ws_url())
        .await
        .unwrap();
    ws.send(Message::Text("x".repeat(2 * 1024 * 1024).into()))
        .await
        .unwrap();
    let mut texts = Vec::new();
    let mut close_code = None;
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_secs(5), ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => texts.push(t.to_string()),
            Ok(Some(Ok(Message::Close(frame)))) => {
                close_code = frame.map(|f| u16::from(f.code));
                break;
            }
            Ok(Some(Ok(_))) => {}
            other => {
                texts.push(format!("ended: {other:?}"));
                break;
            }
        }
    }
    assert_eq!(close_code, Some(1009), "texts: {texts:?}");
    assert!(texts.iter().any(|t| t.contains("bad_message")), "{texts:?}");
    let (status, _) = http_request(server.http, "GET", "/healthz", None, None)
        .await
        .unwrap();
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_that_never_authenticates_is_closed() {
    let server = start(&["--ws-auth-timeout", "1"]).await;
    let mut s = Signal::connect(&server.ws_url()).await;
    let started = Instant::now();
    let seen = drain_until_closed(&mut s, Duration::from_secs(4)).await;
    assert!(started.elapsed() >= Duration::from_millis(900));
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0]["code"], "unauthorized", "{seen:?}");
    // pings do not keep an unauthenticated socket alive
    let mut s = Signal::connect(&server.ws_url()).await;
    for _ in 0..3 {
        s.send(json!({"type": "ping"}));
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let seen = drain_until_closed(&mut s, Duration::from_secs(3)).await;
    assert!(seen.iter().any(|m| m["code"] == "unauthorized"), "{seen:?}");
}
