//! Helpers of the `calls_*` tests: tokens signed with the test server's secret, REST calls,
//! and `/ws` sessions that only listen for call notifications.

#![allow(dead_code)]

use std::time::{Duration, Instant};

use serde_json::Value;
use switchboard::auth::{Auth, Claims, unix_now};

use crate::common::{Signal, TestServer, http_request};

pub const SECRET: &str = "calls-test-secret-0123456789";

fn claims(user: &str, exp: u64, admin: bool) -> Claims {
    Claims {
        sub: user.to_owned(),
        name: user.to_uppercase(),
        exp,
        room: None,
        can_publish: true,
        can_subscribe: true,
        admin,
    }
}

/// A token for `user` as an app's backend would mint it (no room: REST only).
pub fn token(user: &str) -> String {
    Auth::new(SECRET.as_bytes(), false).mint(&claims(user, unix_now() + 3600, false))
}

pub fn admin_token(user: &str) -> String {
    Auth::new(SECRET.as_bytes(), false).mint(&claims(user, unix_now() + 3600, true))
}

pub fn expired_token(user: &str) -> String {
    Auth::new(SECRET.as_bytes(), false).mint(&claims(user, unix_now() - 600, false))
}

pub async fn start(extra: &[&str]) -> TestServer {
    let mut args = vec!["--jwt-secret", SECRET];
    args.extend_from_slice(extra);
    TestServer::start(&args).await
}

/// A REST request as `token`; the status and the JSON body.
pub async fn api(
    server: &TestServer,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (u16, Value) {
    http_request(server.http, method, path, token, body)
        .await
        .expect("HTTP request")
}

/// Creates a call as `creator` and returns the whole 201 body (`call`, `token`, `ice_servers`).
pub async fn create(server: &TestServer, creator: &str, body: Value) -> Value {
    let (status, body) = api(
        server,
        "POST",
        "/api/calls",
        Some(&token(creator)),
        Some(body),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    body
}

pub async fn get_call(server: &TestServer, id: &str, user: &str) -> Value {
    let (status, body) = api(
        server,
        "GET",
        &format!("/api/calls/{id}"),
        Some(&token(user)),
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    body["call"].clone()
}

/// Polls the call until `check` holds.
pub async fn wait_call(
    server: &TestServer,
    id: &str,
    user: &str,
    what: &str,
    within: Duration,
    check: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let call = get_call(server, id, user).await;
        if check(&call) {
            return call;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {call:#}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A participant record of a call by user id.
pub fn participant<'a>(call: &'a Value, user: &str) -> &'a Value {
    call["participants"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["user_id"] == user)
        .unwrap_or_else(|| panic!("{user} not in {call:#}"))
}

/// A `/ws` session of `user` that authenticated and does nothing else.
pub async fn online(server: &TestServer, user: &str) -> Signal {
    let mut signal = Signal::connect(&server.ws_url()).await;
    signal.send(serde_json::json!({"type": "auth", "token": token(user)}));
    signal.expect("authenticated").await;
    signal
}
