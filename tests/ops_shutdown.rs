//! SIGTERM and SIGINT: the server stops accepting, flushes the call store and exits 0 within
//! `--shutdown-grace`, also in the middle of a call.

mod common;

use std::time::{Duration, Instant};

use common::{Participant, TestServer, http_request};

/// Sends `signal` to the server and waits for it to exit; its exit code and how long it took.
async fn stop(server: &mut TestServer, signal: libc::c_int, within: Duration) -> (i32, Duration) {
    let pid = server.child.id() as libc::pid_t;
    // SAFETY: kill(2) on the pid of a child we spawned and have not reaped yet.
    assert_eq!(unsafe { libc::kill(pid, signal) }, 0);
    stop_wait(server, within).await
}

/// Waits for the server to exit by itself (not by a signal's default action).
async fn stop_wait(server: &mut TestServer, within: Duration) -> (i32, Duration) {
    let start = Instant::now();
    loop {
        if let Some(status) = server.child.try_wait().unwrap() {
            let code = status
                .code()
                .unwrap_or_else(|| panic!("killed by a signal instead of exiting: {status:?}"));
            return (code, start.elapsed());
        }
        assert!(
            start.elapsed() < within,
            "still running {within:?} after the signal"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_on_an_idle_server_exits_zero_and_releases_the_store() {
    let mut server = TestServer::start(&["--shutdown-grace", "3"]).await;
    let (code, _) = stop(&mut server, libc::SIGTERM, Duration::from_secs(3)).await;
    assert_eq!(code, 0);
    assert!(
        http_request(server.http, "GET", "/healthz", None, None)
            .await
            .is_err(),
        "the port is closed"
    );
    // The sled directory is flushed and unlocked: it opens again.
    let db = sled::open(server.data_dir.path()).expect("the call store opens after shutdown");
    drop(db);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_exits_zero_too() {
    let mut server = TestServer::start(&["--shutdown-grace", "3"]).await;
    let (code, _) = stop(&mut server, libc::SIGINT, Duration::from_secs(3)).await;
    assert_eq!(code, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_during_a_call_exits_zero_within_the_grace_period() {
    let grace = 2;
    let mut server = TestServer::start(&["--shutdown-grace", &grace.to_string()]).await;
    let alice = Participant::join(&server, "alice", "closing", true).await;
    let bob = Participant::join(&server, "bob", "closing", true).await;
    bob.wait_for("alice's media", Duration::from_secs(15), |p| {
        p.received_from(&alice.id).iter().any(|t| t.packets >= 10)
    })
    .await;

    // Open WebSocket sessions and live media do not hold the process past the grace period
    // (plus the runtime's one second for tasks still running).
    let (code, took) = stop(&mut server, libc::SIGTERM, Duration::from_secs(grace + 2)).await;
    assert_eq!(code, 0);
    eprintln!("exited {took:?} after SIGTERM with two participants in a call");
    assert!(
        http_request(server.http, "GET", "/healthz", None, None)
            .await
            .is_err()
    );
    sled::open(server.data_dir.path()).expect("the call store opens after shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_that_never_finishes_holds_the_exit_only_for_the_grace_period() {
    use tokio::io::AsyncWriteExt;
    let grace = 2;
    let mut server = TestServer::start(&["--shutdown-grace", &grace.to_string()]).await;
    // A client that sent half a request and went quiet.
    let mut slow = tokio::net::TcpStream::connect(server.http).await.unwrap();
    slow.write_all(b"POST /api/dev/token HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (code, took) = stop(&mut server, libc::SIGTERM, Duration::from_secs(grace + 2)).await;
    assert_eq!(code, 0);
    eprintln!("exited {took:?} after SIGTERM with a request in flight");
    assert!(
        took >= Duration::from_secs(grace) - Duration::from_millis(100),
        "the request in flight got the grace period: {took:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_in_flight_is_answered_after_the_signal() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut server = TestServer::start(&["--shutdown-grace", "5"]).await;
    let body = br#"{"name":"late","room":"r1"}"#;
    let mut client = tokio::net::TcpStream::connect(server.http).await.unwrap();
    let head = format!(
        "POST /api/dev/token HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    client.write_all(head.as_bytes()).await.unwrap();
    client.write_all(&body[..5]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;

    let pid = server.child.id() as libc::pid_t;
    // SAFETY: kill(2) on the pid of a child we spawned and have not reaped yet.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        server.child.try_wait().unwrap().is_none(),
        "still serving the request in flight"
    );
    assert!(
        tokio::net::TcpStream::connect(server.http).await.is_err(),
        "no new connections once the signal arrived"
    );
    client.write_all(&body[5..]).await.unwrap();
    let mut response = String::new();
    client.read_to_string(&mut response).await.unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.contains("\"token\""), "{response}");

    let (code, took) = stop_wait(&mut server, Duration::from_secs(3)).await;
    assert_eq!(code, 0);
    assert!(took < Duration::from_secs(3));
}
