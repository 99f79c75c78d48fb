//! Who may do what: 401 without a valid token, 403 for strangers and for ending someone
//! else's call, 400 and 404 for bad bodies and ids, 409 for illegal transitions, 429 past the
//! rate limit; and `GET /api/ice-servers`.

mod calls_support;
mod common;

use calls_support::{admin_token, api, create, expired_token, start, token};
use serde_json::json;
use switchboard::auth::{Auth, Claims, unix_now};

fn code(body: &serde_json::Value) -> &str {
    body["error"]["code"].as_str().unwrap_or("<none>")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_required_and_checked() {
    let server = start(&[]).await;
    let body = json!({"type": "one-to-one", "media": "audio", "invitees": ["bob"]});
    let (status, resp) = api(&server, "POST", "/api/calls", None, Some(body.clone())).await;
    assert_eq!((status, code(&resp)), (401, "unauthorized"));
    assert!(resp["error"]["message"].is_string());
    let (status, resp) = api(
        &server,
        "POST",
        "/api/calls",
        Some(&expired_token("alice")),
        Some(body.clone()),
    )
    .await;
    assert_eq!((status, code(&resp)), (401, "token_expired"));
    let forged = Auth::new(b"some-other-secret-123", false).mint(&Claims {
        sub: "alice".into(),
        name: String::new(),
        exp: unix_now() + 60,
        room: None,
        can_publish: true,
        can_subscribe: true,
        admin: true,
    });
    let (status, resp) = api(&server, "GET", "/api/calls", Some(&forged), None).await;
    assert_eq!((status, code(&resp)), (401, "unauthorized"));
    let (status, _) = api(&server, "GET", "/api/ice-servers", Some("not-a-jwt"), None).await;
    assert_eq!(status, 401);
    // reading a call needs a live token too
    let created = create(&server, "alice", body).await;
    let id = created["call"]["id"].as_str().unwrap();
    let (status, resp) = api(
        &server,
        "GET",
        &format!("/api/calls/{id}"),
        Some(&expired_token("alice")),
        None,
    )
    .await;
    assert_eq!((status, code(&resp)), (401, "token_expired"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_members_read_answer_and_only_the_creator_or_an_admin_ends() {
    let server = start(&[]).await;
    let created = create(
        &server,
        "alice",
        json!({"type": "group", "media": "video", "invitees": ["bob", "carol"]}),
    )
    .await;
    let id = created["call"]["id"].as_str().unwrap().to_owned();
    let path = |op: &str| {
        if op.is_empty() {
            format!("/api/calls/{id}")
        } else {
            format!("/api/calls/{id}/{op}")
        }
    };
    let eve = token("eve");
    for (method, op) in [
        ("GET", ""),
        ("POST", "answer"),
        ("POST", "reject"),
        ("POST", "end"),
    ] {
        let (status, body) = api(&server, method, &path(op), Some(&eve), None).await;
        assert_eq!(
            (status, code(&body)),
            (403, "forbidden"),
            "eve {method} {op}"
        );
    }
    let (status, body) = api(
        &server,
        "PATCH",
        &path("media"),
        Some(&eve),
        Some(json!({"audio": false})),
    )
    .await;
    assert_eq!((status, code(&body)), (403, "forbidden"));

    // invitees read, but do not end it for everyone; the creator does not answer
    let (status, _) = api(&server, "GET", &path(""), Some(&token("bob")), None).await;
    assert_eq!(status, 200);
    let (status, body) = api(&server, "POST", &path("end"), Some(&token("bob")), None).await;
    assert_eq!((status, code(&body)), (403, "forbidden"));
    let (status, body) = api(
        &server,
        "POST",
        &path("answer"),
        Some(&token("alice")),
        None,
    )
    .await;
    assert_eq!((status, code(&body)), (403, "forbidden"));

    // an admin reads and ends anyone's call
    let root = admin_token("root");
    let (status, _) = api(&server, "GET", &path(""), Some(&root), None).await;
    assert_eq!(status, 200);
    let (status, body) = api(&server, "POST", &path("end"), Some(&root), None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["call"]["ended_by"], "root");
    let (status, body) = api(&server, "POST", &path("end"), Some(&token("alice")), None).await;
    assert_eq!((status, code(&body)), (409, "call_over"));
    let (status, body) = api(
        &server,
        "PATCH",
        &path("media"),
        Some(&token("bob")),
        Some(json!({"video": false})),
    )
    .await;
    assert_eq!((status, code(&body)), (409, "call_over"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_bodies_and_ids_are_refused() {
    let server = start(&["--call-rate-limit", "100"]).await;
    let alice = token("alice");
    let bad_bodies = [
        json!({}),
        json!({"type": "one-to-one", "media": "audio"}),
        json!({"type": "conference", "media": "audio", "invitees": ["bob"]}),
        json!({"type": "one-to-one", "media": "smell", "invitees": ["bob"]}),
        json!({"type": "one-to-one", "media": "audio", "invitees": "bob"}),
        json!({"type": "one-to-one", "media": "audio", "invitees": ["bob", "carol"]}),
        json!({"type": "one-to-one", "media": "audio", "invitees": []}),
        json!({"type": "one-to-one", "media": "audio", "invitees": ["alice"]}),
        json!({"type": "group", "media": "audio", "invitees": []}),
        json!({"type": "group", "media": "audio", "invitees": ["bob", "bob"]}),
        json!({"type": "group", "media": "audio", "invitees": [""]}),
        json!({"type": "group", "media": "audio", "invitees": ["bob"], "max_participants": 21}),
        json!({"type": "group", "media": "audio", "invitees": ["bob", "carol"], "max_participants": 2}),
        json!({"type": "group", "media": "audio", "invitees": ["bob"], "title": "x".repeat(201)}),
        json!([1, 2]),
    ];
    for body in bad_bodies {
        let (status, resp) = api(
            &server,
            "POST",
            "/api/calls",
            Some(&alice),
            Some(body.clone()),
        )
        .await;
        assert_eq!(
            (status, code(&resp)),
            (400, "bad_request"),
            "{body}: {resp}"
        );
    }
    // not JSON at all
    let (status, resp) = api(
        &server,
        "POST",
        "/api/calls",
        Some(&alice),
        Some(json!("{oops")),
    )
    .await;
    assert_eq!(status, 400, "{resp}");

    // ids: malformed → 400, unknown → 404
    for id in [
        "123",
        "zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz",
        "ABCDEF00ABCDEF00ABCDEF00ABCDEF00",
    ] {
        let (status, resp) = api(
            &server,
            "GET",
            &format!("/api/calls/{id}"),
            Some(&alice),
            None,
        )
        .await;
        assert_eq!((status, code(&resp)), (400, "bad_request"), "{id}");
    }
    let unknown = "0123456789abcdef0123456789abcdef";
    for (method, op) in [("GET", ""), ("POST", "/answer"), ("POST", "/end")] {
        let (status, resp) = api(
            &server,
            method,
            &format!("/api/calls/{unknown}{op}"),
            Some(&alice),
            None,
        )
        .await;
        assert_eq!((status, code(&resp)), (404, "not_found"), "{method} {op}");
    }

    let created = create(
        &server,
        "alice",
        json!({"type": "one-to-one", "media": "video", "invitees": ["bob"]}),
    )
    .await;
    let id = created["call"]["id"].as_str().unwrap();
    for body in [json!({}), json!({"audio": "off"})] {
        let (status, resp) = api(
            &server,
            "PATCH",
            &format!("/api/calls/{id}/media"),
            Some(&alice),
            Some(body.clone()),
        )
        .await;
        assert_eq!((status, code(&resp)), (400, "bad_request"), "{body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn call_creation_is_rate_limited_per_user() {
    let server = start(&["--call-rate-limit", "3"]).await;
    let body = json!({"type": "one-to-one", "media": "audio", "invitees": ["bob"]});
    for _ in 0..3 {
        create(&server, "alice", body.clone()).await;
    }
    let (status, resp) = api(
        &server,
        "POST",
        "/api/calls",
        Some(&token("alice")),
        Some(body.clone()),
    )
    .await;
    assert_eq!((status, code(&resp)), (429, "rate_limited"));
    // someone else is not held back by alice
    create(&server, "carol", body).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ice_servers_carry_time_limited_turn_credentials() {
    let server = start(&[
        "--stun-url",
        "stun:stun.example.org:3478",
        "--turn-url",
        "turn:turn.example.org:3478",
        "--turn-secret",
        "turn-shared-secret",
    ])
    .await;
    let (status, body) = api(
        &server,
        "GET",
        "/api/ice-servers",
        Some(&token("alice")),
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let servers = body["ice_servers"].as_array().unwrap();
    assert_eq!(servers[0], json!({"urls": ["stun:stun.example.org:3478"]}));
    assert_eq!(servers[1]["urls"], json!(["turn:turn.example.org:3478"]));
    let username = servers[1]["username"].as_str().unwrap();
    let (expiry, user) = username.split_once(':').unwrap();
    assert_eq!(user, "alice");
    let expiry: u64 = expiry.parse().unwrap();
    assert!(expiry > unix_now() + 3600, "{expiry}");
    let (_, credential) =
        switchboard::http::turn_credentials("turn-shared-secret", "alice", expiry);
    assert_eq!(servers[1]["credential"], credential.as_str());

    // a new call hands out the same kind of list
    let created = create(
        &server,
        "alice",
        json!({"type": "one-to-one", "media": "audio", "invitees": ["bob"]}),
    )
    .await;
    assert_eq!(created["ice_servers"].as_array().unwrap().len(), 2);
}
