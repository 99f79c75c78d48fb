//! SIGTERM with calls open: they end as `ended` (`server_shutdown`), the members connected to
//! `/ws` hear `call_ended`, and the records say so after a restart.

mod calls_support;
mod common;

use std::time::{Duration, Instant};

use calls_support::{SECRET, create, get_call, online, participant, start};
use common::TestServer;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_shutdown_ends_open_calls() {
    let mut server = start(&["--shutdown-grace", "2"]).await;
    let mut bob_ws = online(&server, "bob").await;
    let created = create(
        &server,
        "alice",
        json!({"type": "one-to-one", "media": "audio", "invitees": ["bob"]}),
    )
    .await;
    let id = created["call"]["id"].as_str().unwrap().to_owned();
    bob_ws.expect("call_incoming").await;

    // SAFETY: kill(2) on the pid of a child we spawned and have not reaped yet.
    assert_eq!(
        unsafe { libc::kill(server.child.id() as libc::pid_t, libc::SIGTERM) },
        0
    );
    let ended = bob_ws.expect("call_ended").await;
    assert_eq!(ended["call"]["end_reason"], "server_shutdown");
    let deadline = Instant::now() + Duration::from_secs(10);
    while server.child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "the server did not exit");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let dir = std::mem::replace(&mut server.data_dir, tempfile::tempdir().unwrap());
    drop(server);
    let server = TestServer::start_in(dir, &["--jwt-secret", SECRET]).await;
    let call = get_call(&server, &id, "alice").await;
    assert_eq!(call["status"], "ended", "{call:#}");
    assert_eq!(call["end_reason"], "server_shutdown");
    assert_eq!(participant(&call, "bob")["status"], "missed");
}
