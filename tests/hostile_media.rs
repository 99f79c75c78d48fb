//! Hostile clients against the media plane (issue 21): candidate floods over `/ws` and WHIP
//! `PATCH`, mDNS candidates, oversized `sources` maps, the same user joining twice, and joins
//! that never start media. Each test asserts what the *others* in the server see: their media
//! keeps flowing and they stay in their rooms; the server's memory returns near idle.

mod common;

use std::time::{Duration, Instant};

use common::{Participant, TestServer, header, http_raw, http_request};
use serde_json::{Value, json};

/// RTP packets `p` has received from `publisher`, all tracks together.
fn packets(p: &Participant, publisher: &str) -> u64 {
    p.received_from(publisher).iter().map(|r| r.packets).sum()
}

/// Packets `p` receives from `publisher` per second, over `window`.
async fn rate(p: &Participant, publisher: &str, window: Duration) -> f64 {
    let before = packets(p, publisher);
    tokio::time::sleep(window).await;
    (packets(p, publisher) - before) as f64 / window.as_secs_f64()
}

/// The server's resident memory, in KiB (`VmRSS`).
fn rss_kib(server: &TestServer) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", server.child.id())).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS in /proc/PID/status")
}

/// One sample of `/metrics`, e.g. `switchboard_participants` or
/// `switchboard_remote_candidates_ignored_total{reason="mdns"}`.
async fn metric(server: &TestServer, series: &str) -> Option<f64> {
    let (status, _, body) = http_raw(server.http, "GET", "/metrics", &[], "").await;
    assert_eq!(status, 200);
    body.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// A candidate line for made-up host address number `i`.
fn candidate(i: u32, host: &str) -> String {
    format!(
        "candidate:{i} 1 udp 2122260223 {host} {} typ host generation 0",
        1024 + i % 60000
    )
}

fn ip(i: u32) -> String {
    format!("10.{}.{}.{}", (i >> 16) & 255, (i >> 8) & 255, i & 255)
}

/// A publisher and a receiver in `room`, with media flowing.
async fn call(server: &TestServer, room: &str) -> (Participant, Participant) {
    let publisher = Participant::join(server, &format!("{room}-pub"), room, true).await;
    let receiver = Participant::join(server, &format!("{room}-sub"), room, false).await;
    receiver
        .wait_for("media", Duration::from_secs(20), |p| {
            p.received_from(&publisher.id).len() == 2
                && p.received_from(&publisher.id)
                    .iter()
                    .all(|r| r.packets > 20)
        })
        .await;
    (publisher, receiver)
}

/// Neither the publisher nor the receiver of a victim call was told anyone of them left.
fn nobody_left(victims: &[&Participant]) {
    for v in victims {
        for other in victims {
            assert!(
                !v.events_of("participant_left")
                    .iter()
                    .any(|e| e["participant_id"] == other.id.as_str()),
                "{} saw {} leave",
                v.id,
                other.id
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn candidate_floods_and_mdns_candidates_cost_only_the_attacker() {
    let server = TestServer::start(&[]).await;
    // A call in another room on the same (only) worker, and one in the attacker's room.
    let (alice, bob) = call(&server, "calm").await;
    let (carol, dave) = call(&server, "noisy").await;
    let mallory = Participant::join(&server, "mallory", "noisy", true).await;
    dave.wait_for("mallory's media", Duration::from_secs(20), |p| {
        p.received_from(&mallory.id).len() == 2
    })
    .await;
    let idle_rss = rss_kib(&server);
    let calm_before = rate(&bob, &alice.id, Duration::from_secs(2)).await;
    let noisy_before = rate(&dave, &carol.id, Duration::from_secs(2)).await;
    assert!(
        calm_before > 30.0 && noisy_before > 30.0,
        "{calm_before} {noisy_before}"
    );

    // 10 000 distinct candidates and 200 mDNS ones for the publish connection, over /ws.
    let calm_count = packets(&bob, &alice.id);
    let noisy_count = packets(&dave, &carol.id);
    let closed = mallory.signal.lock().await.closed.clone();
    let flood_started = Instant::now();
    {
        let signal = mallory.signal.lock().await;
        for i in 0..10_000u32 {
            signal.send(json!({"type": "candidate", "pc": "publish",
                "candidate": {"candidate": candidate(i, &ip(i)), "sdpMid": "0"}}));
            if i % 50 == 0 {
                let mdns = format!("{:08x}-aaaa-4bbb-8ccc-{:012x}.local", i, i);
                signal.send(json!({"type": "candidate", "pc": "publish",
                    "candidate": {"candidate": candidate(i, &mdns), "sdpMid": "0"}}));
            }
        }
        // Answered once every candidate before it was handled (one message at a time).
        signal.send(json!({"type": "ping"}));
    }

    // And 5 000 in one WHIP PATCH, then one at a time past the limit, on a WHIP session of
    // the attacker's (its offer is the one of her /ws publish connection).
    let whip_token = server.dev_token("mallory-obs", "noisy").await;
    let bearer = format!("Bearer {whip_token}");
    let offer: String = mallory
        .publish
        .as_ref()
        .unwrap()
        .local_description()
        .await
        .unwrap()
        .sdp
        .lines()
        .filter(|l| !l.starts_with("a=candidate"))
        .map(|l| format!("{l}\r\n"))
        .collect();
    let (status, headers, body) = http_raw(
        server.http,
        "POST",
        "/whip/noisy",
        &[
            ("Content-Type", "application/sdp"),
            ("Authorization", &bearer),
        ],
        &offer,
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let location = header(&headers, "location").unwrap().to_owned();
    let etag = header(&headers, "etag").unwrap().to_owned();
    let frag = |lines: &mut dyn Iterator<Item = String>| {
        let mut f =
            String::from("a=ice-ufrag:abcd\r\na=ice-pwd:abcdefghijklmnopqrstuvwx\r\na=mid:0\r\n");
        for l in lines {
            f.push_str(&format!("a={l}\r\n"));
        }
        f
    };
    let patch = |body: String| {
        let (location, etag, bearer) = (location.clone(), etag.clone(), bearer.clone());
        let http = server.http;
        async move {
            let headers = [
                ("Content-Type", "application/trickle-ice-sdpfrag"),
                ("If-Match", etag.as_str()),
                ("Authorization", bearer.as_str()),
            ];
            http_raw(http, "PATCH", &location, &headers, &body).await
        }
    };
    // 5 000 in one PATCH are over the body limit (256 KiB); 3 000 are over the candidate limit.
    let (status, _, _) = patch(frag(
        &mut (0..5000).map(|i| candidate(i, &ip(i + (1 << 20)))),
    ))
    .await;
    assert_eq!(status, 413);
    let (status, _, body) = patch(frag(
        &mut (0..3000).map(|i| candidate(i, &ip(i + (1 << 20)))),
    ))
    .await;
    assert_eq!(status, 400, "a fragment over the limit: {body}");
    assert!(body.contains("bad_candidate"), "{body}");
    let mut accepted = 0;
    for i in 0..40u32 {
        let (status, _, _) =
            patch(frag(&mut std::iter::once(candidate(i, &ip(i + (2 << 20)))))).await;
        if status == 204 {
            accepted += 1;
        } else {
            assert_eq!(status, 400);
        }
    }
    assert_eq!(
        accepted, 32,
        "the connection takes --max-remote-candidates (32)"
    );
    let mdns = candidate(7, "0f0e0d0c-1111-4222-8333-444455556666.local");
    let (status, _, _) = patch(frag(&mut std::iter::once(mdns))).await;
    assert_eq!(status, 204, "an mDNS candidate is ignored, not refused");

    // The worker refused them all quickly: the /ws flood is through once its ping is answered
    // (or once the signaling limits closed the attacker's socket).
    mallory
        .wait_for("the flood to be handled", Duration::from_secs(20), |p| {
            !p.events_of("pong").is_empty() || closed.load(std::sync::atomic::Ordering::SeqCst)
        })
        .await;
    let flood_took = flood_started.elapsed();
    // Unless the signaling limits cut the flood short, every candidate reached the worker.
    let rate_limited = mallory
        .events_of("error")
        .iter()
        .any(|e| e["code"] == "rate_limited");
    let over_limit = "switchboard_remote_candidates_ignored_total{reason=\"over_limit\"}";
    let mdns_series = "switchboard_remote_candidates_ignored_total{reason=\"mdns\"}";
    let (over, mdns) = (
        metric(&server, over_limit).await.unwrap(),
        metric(&server, mdns_series).await.unwrap(),
    );
    assert!(
        over >= 8.0 && mdns >= 1.0,
        "over the limit {over}, mDNS {mdns}"
    );
    if !rate_limited {
        assert!(over >= (10_000 - 32 + 8) as f64, "over the limit: {over}");
        assert_eq!(mdns, 201.0);
    }
    // No datagram was even addressed to a multicast group (mDNS goes to 224.0.0.251:5353).
    let forbidden = "switchboard_dropped_total{reason=\"forbidden_destination\"}";
    assert_eq!(metric(&server, forbidden).await, Some(0.0));

    // The victims' media flowed during the flood, in both rooms, at the rate before (over at
    // least two seconds from its start: it is through sooner than that).
    if let Some(rest) = Duration::from_secs(2).checked_sub(flood_started.elapsed()) {
        tokio::time::sleep(rest).await;
    }
    let during = flood_started.elapsed().as_secs_f64();
    let calm_during = (packets(&bob, &alice.id) - calm_count) as f64 / during;
    let noisy_during = (packets(&dave, &carol.id) - noisy_count) as f64 / during;
    assert!(
        calm_during > calm_before * 0.8 && noisy_during > noisy_before * 0.8,
        "packets/s before → during the flood: calm {calm_before:.0} → {calm_during:.0}, \
         noisy {noisy_before:.0} → {noisy_during:.0} ({flood_took:?})"
    );
    // The attacker was told (bad_candidate or, from the signaling limits, rate_limited).
    mallory
        .wait_for("errors", Duration::from_secs(5), |p| {
            !p.events_of("error").is_empty()
        })
        .await;

    // The attacker leaves (both sessions); nobody else was removed; memory is back near idle.
    mallory.leave().await;
    let (status, _, _) = http_raw(
        server.http,
        "DELETE",
        &location,
        &[("Authorization", &bearer)],
        "",
    )
    .await;
    assert!(status == 200 || status == 404, "{status}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while metric(&server, "switchboard_participants").await != Some(4.0) {
        assert!(
            Instant::now() < deadline,
            "the attacker's participants stay"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    nobody_left(&[&alice, &bob]);
    nobody_left(&[&carol, &dave]);
    let after_rss = rss_kib(&server);
    assert!(
        after_rss < idle_rss + 12 * 1024,
        "RSS {idle_rss} KiB idle → {after_rss} KiB after the attacker left"
    );
    assert!(rate(&bob, &alice.id, Duration::from_secs(1)).await > calm_before * 0.8);
    assert!(rate(&dave, &carol.id, Duration::from_secs(1)).await > noisy_before * 0.8);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn oversized_sources_maps_are_bounded_by_the_offer() {
    let server = TestServer::start(&[]).await;
    let (carol, dave) = call(&server, "src").await;
    let mallory = Participant::join(&server, "mallory", "src", true).await;
    dave.wait_for("mallory's media", Duration::from_secs(20), |p| {
        p.received_from(&mallory.id).len() == 2
    })
    .await;
    let offer = mallory
        .publish
        .as_ref()
        .unwrap()
        .local_description()
        .await
        .unwrap()
        .sdp;
    let idle_rss = rss_kib(&server);
    let before = rate(&dave, &carol.id, Duration::from_secs(2)).await;

    // 100 renegotiations of the same offer, each naming 5 000 made-up tracks.
    let count = packets(&dave, &carol.id);
    let started = Instant::now();
    for round in 0..100u32 {
        let sources: serde_json::Map<String, Value> = (0..5000u32)
            .map(|i| (format!("t{round:03}-{i:05}-aaaaaaaaaaaa"), json!("screen")))
            .collect();
        mallory
            .signal
            .lock()
            .await
            .send(json!({"type": "publish_offer", "sdp": offer, "sources": sources}));
        // One at a time, as a client waits for each answer.
        let answered = |p: &Participant| {
            (p.events_of("publish_answer").len() + p.events_of("error").len()) as u32 > round
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !answered(&mallory) {
            assert!(Instant::now() < deadline, "offer {round} not answered");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    let took = started.elapsed();
    let answers = mallory.events_of("publish_answer").len();
    let errors = mallory.events_of("error");
    assert!(
        answers + errors.len() == 100,
        "{answers} answers, errors {errors:?}"
    );
    // Applied, not refused (unless the signaling limits refused some): each offer's map
    // reached the media worker.
    assert!(
        answers == 100 || errors.iter().all(|e| e["code"] == "rate_limited"),
        "{answers} answers, errors {errors:?}"
    );
    // Still in the room, holding at most its offer's tracks' names: memory stays near idle.
    let during_rss = rss_kib(&server);
    assert!(
        during_rss < idle_rss + 20 * 1024,
        "RSS {idle_rss} KiB idle → {during_rss} KiB after 100 offers of 5 000 sources"
    );
    let during = (packets(&dave, &carol.id) - count) as f64 / took.as_secs_f64();
    assert!(
        during > before * 0.8,
        "packets/s before → during: {before:.0} → {during:.0} ({took:?})"
    );
    // Her tracks are still the two she publishes (with the default sources).
    assert_eq!(metric(&server, "switchboard_tracks").await, Some(4.0));
    mallory.leave().await;
    nobody_left(&[&carol, &dave]);
}

/// Mints tokens in production mode (no dev tokens there).
fn minter(secret: &'static str) -> impl Fn(&str, bool) -> String {
    move |sub: &str, can_subscribe: bool| {
        switchboard::auth::Auth::new(secret.as_bytes(), false).mint(&switchboard::auth::Claims {
            sub: sub.into(),
            name: sub.into(),
            exp: switchboard::auth::unix_now() + 600,
            room: Some("*".into()),
            can_publish: true,
            can_subscribe,
            admin: false,
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_same_user_joining_twice_replaces_the_first_session() {
    const SECRET: &str = "a-secret-for-the-replacement-test";
    let server = TestServer::start(&["--jwt-secret", SECRET]).await;
    let mint = minter(SECRET);
    let (alice, bob) = (mint("u-alice", true), mint("u-bob", true));
    let (status, created) = http_request(
        server.http,
        "POST",
        "/api/calls",
        Some(&alice),
        Some(json!({"type": "one-to-one", "media": "video", "invitees": ["u-bob"]})),
    )
    .await
    .unwrap();
    assert_eq!(status, 201, "{created}");
    let call_id = created["call"]["id"].as_str().unwrap().to_owned();
    let room = created["call"]["room"].as_str().unwrap().to_owned();

    // Bob answers first, so that no `call_incoming` comes between his `join` and `joined`.
    let (status, body) = http_request(
        server.http,
        "POST",
        &format!("/api/calls/{call_id}/answer"),
        Some(&bob),
        None,
    )
    .await
    .unwrap();
    assert_eq!(status, 200, "{body}");
    let first =
        Participant::join_with_token(&server, &alice, &room, Some(common::Video::Vp8)).await;
    let bob_p = Participant::join_with_token(&server, &bob, &room, None).await;
    bob_p
        .wait_for("alice's media", Duration::from_secs(20), |p| {
            packets(p, &first.id) > 20
        })
        .await;

    // Alice again, from another tab: the first session is replaced, not given a second seat.
    let second =
        Participant::join_with_token(&server, &alice, &room, Some(common::Video::Vp8)).await;
    assert!(
        second.joined["participants"]
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["participant_id"] != first.id.as_str()),
        "the new session is not shown the one it replaces: {}",
        second.joined
    );
    first
        .wait_for("being told", Duration::from_secs(5), |p| {
            p.events_of("error").iter().any(|e| e["code"] == "replaced")
                && p.events_of("participant_left")
                    .iter()
                    .any(|e| e["participant_id"] == first.id.as_str() && e["reason"] == "replaced")
        })
        .await;
    bob_p
        .wait_for("the replacement", Duration::from_secs(20), |p| {
            p.events_of("participant_left")
                .iter()
                .any(|e| e["participant_id"] == first.id.as_str() && e["reason"] == "replaced")
                && packets(p, &second.id) > 20
        })
        .await;
    assert_eq!(metric(&server, "switchboard_participants").await, Some(2.0));
    assert!(
        !bob_p
            .events_of("participant_left")
            .iter()
            .any(|e| e["participant_id"] == bob_p.id.as_str()),
        "bob stays"
    );

    // The call goes on; alice's record has both stays, the first ended as `replaced`.
    let deadline = Instant::now() + Duration::from_secs(5);
    let (state, record) = loop {
        let (status, body) = http_request(
            server.http,
            "GET",
            &format!("/api/calls/{call_id}"),
            Some(&alice),
            None,
        )
        .await
        .unwrap();
        assert_eq!(status, 200, "{body}");
        let state = body["call"].clone();
        let record = state["participants"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["user_id"] == "u-alice")
            .unwrap()
            .clone();
        if record["joins"].as_array().unwrap().len() == 2
            && !record["joins"][0]["leave_reason"].is_null()
        {
            break (state, record);
        }
        assert!(Instant::now() < deadline, "the records lag: {state}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(state["status"], "active", "{state}");
    assert_eq!(record["status"], "joined", "{record}");
    let joins = record["joins"].as_array().unwrap();
    assert_eq!(joins.len(), 2, "{record}");
    assert_eq!(joins[0]["leave_reason"], "replaced", "{record}");
    assert!(joins[1]["left_at"].is_null(), "{record}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_join_that_never_starts_media_is_removed_after_the_timeout() {
    const SECRET: &str = "a-secret-for-the-media-start-test";
    let server = TestServer::start(&["--jwt-secret", SECRET, "--media-start-timeout", "2"]).await;
    let mint = minter(SECRET);
    let carol = Participant::join_with_token(
        &server,
        &mint("u-carol", true),
        "lazy",
        Some(common::Video::Vp8),
    )
    .await;
    // An honest participant that answers; one without camera or microphone, alone in a room.
    let dave = Participant::join_with_token(&server, &mint("u-dave", true), "lazy", None).await;
    let lonely =
        Participant::join_with_token(&server, &mint("u-lonely", true), "alone", None).await;

    // A join that never answers its subscribe offer, and a publish-only join that never offers.
    let mut idle = common::Signal::connect(&server.ws_url()).await;
    let joined = idle.auth_and_join(&mint("u-idle", true), "lazy").await;
    let idle_id = joined["participant_id"].as_str().unwrap().to_owned();
    let mut mute = common::Signal::connect(&server.ws_url()).await;
    let joined = mute.auth_and_join(&mint("u-mute", false), "lazy").await;
    let mute_id = joined["participant_id"].as_str().unwrap().to_owned();
    assert_eq!(metric(&server, "switchboard_participants").await, Some(5.0));

    for gone in [&idle_id, &mute_id] {
        carol
            .wait_for("the idle joins to go", Duration::from_secs(6), |p| {
                p.events_of("participant_left")
                    .iter()
                    .any(|e| e["participant_id"] == gone.as_str() && e["reason"] == "timeout")
            })
            .await;
    }
    // The idle session itself was told (after, perhaps, the publish-only one's leave).
    let mut told = false;
    for _ in 0..2 {
        let left = idle.expect("participant_left").await;
        if left["participant_id"] == idle_id.as_str() {
            told = true;
            break;
        }
    }
    assert!(told, "the idle session got its own participant_left");
    // The honest ones stay, and media flows on.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(metric(&server, "switchboard_participants").await, Some(3.0));
    assert!(lonely.events_of("participant_left").is_empty());
    nobody_left(&[&carol, &dave]);
    assert!(rate(&dave, &carol.id, Duration::from_secs(1)).await > 30.0);
}
