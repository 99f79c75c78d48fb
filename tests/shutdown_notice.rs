//! On SIGTERM every participant is told `server_shutdown` and its socket is closed.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::{Participant, TestServer};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn participants_hear_server_shutdown_and_the_server_exits() {
    let mut server = TestServer::start(&[]).await;
    let a = Participant::join(&server, "a", "bye", true).await;
    let b = Participant::join(&server, "b", "bye", true).await;
    b.wait_for("a's media", Duration::from_secs(15), |p| {
        p.received_from(&a.id).len() == 2
    })
    .await;

    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(server.child.id() as i32, libc::SIGTERM) };
    for p in [&a, &b] {
        p.wait_for("server_shutdown", Duration::from_secs(5), |p| {
            !p.events_of("server_shutdown").is_empty()
        })
        .await;
    }
    let closed = b.signal.lock().await.closed.clone();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !closed.load(Ordering::SeqCst) {
        assert!(
            std::time::Instant::now() < deadline,
            "the server closed the socket"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let status = server.child.wait().unwrap();
    assert!(status.success(), "exit code 0: {status:?}");
}
