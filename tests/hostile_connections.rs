//! Hostile TCP clients against the HTTP port: floods of idle and half-sent connections under an
//! open-file limit of 1024, one source over its cap, and dev-mode tokens asked for from another
//! host. Each test checks what the others get: `/healthz` answers, a running call keeps its
//! media and its members, the server's open files return to their idle count.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{Participant, TestServer, http_request};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

fn free_port(udp: bool) -> u16 {
    if udp {
        std::net::UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    } else {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }
}

/// Starts the server binary under `prlimit --nofile=N:N` (its pid is the server's: prlimit
/// execs it), on fresh loopback ports, and waits for /healthz.
async fn start_limited(nofile: u64, extra: &[&str]) -> TestServer {
    for _ in 0..5 {
        let http: SocketAddr = format!("127.0.0.1:{}", free_port(false)).parse().unwrap();
        let udp: SocketAddr = format!("127.0.0.1:{}", free_port(true)).parse().unwrap();
        let data_dir = tempfile::tempdir().unwrap();
        let mut cmd = Command::new("prlimit");
        cmd.arg(format!("--nofile={nofile}:{nofile}"))
            .arg(env!("CARGO_BIN_EXE_switchboard"))
            .args(["--http-addr", &http.to_string()])
            .args(["--udp-port", &udp.port().to_string()])
            .arg("--data-dir")
            .arg(data_dir.path())
            .args(extra)
            .env("RUST_LOG", "warn,rtc=error,rtc_dtls=error,rtc_ice=error")
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        if let Some(path) = std::env::var_os("SWITCHBOARD_TEST_STDERR") {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .unwrap();
            cmd.stderr(file);
        }
        let mut child = cmd.spawn().expect("start prlimit switchboard");
        let deadline = Instant::now() + Duration::from_secs(20);
        let healthy = loop {
            if child.try_wait().unwrap().is_some() {
                break false;
            }
            // Ours (the pid holds files), not another test's server on a reused port.
            if std::fs::read_link(format!("/proc/{}/exe", child.id()))
                .is_ok_and(|p| p.to_string_lossy().contains("switchboard"))
                && matches!(
                    http_request(http, "GET", "/healthz", None, None).await,
                    Ok((200, _))
                )
            {
                break true;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("server did not become healthy");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        if healthy {
            return TestServer {
                child,
                http,
                udp,
                data_dir,
                secret: None,
            };
        }
    }
    panic!("switchboard exited before becoming healthy five times");
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// RLIMIT_NOFILE of `pid` as (soft, hard), from /proc/PID/limits.
fn nofile_limits(pid: u32) -> (u64, u64) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = text
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    let nums: Vec<u64> = line
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    (nums[0], nums[1])
}

/// A TCP connection to `to` from the loopback address `from`.
async fn connect_from(from: IpAddr, to: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(from, 0))?;
    socket.connect(to).await
}

/// GET `path` over a connection from `from`; the status and how long it took.
async fn get_from(from: IpAddr, to: SocketAddr, path: &str) -> std::io::Result<(u16, Duration)> {
    let start = Instant::now();
    let mut s = connect_from(from, to).await?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await?;
    let text = String::from_utf8_lossy(&buf);
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Ok((status, start.elapsed()))
}

/// One sample of `name` (with its labels, as written) from /metrics.
async fn metric(server: &TestServer, name: &str) -> u64 {
    let (status, body) = http_request(server.http, "GET", "/metrics", None, None)
        .await
        .unwrap();
    assert_eq!(status, 200);
    let text = body.as_str().unwrap_or_default().to_owned();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("{name} not in /metrics"))
}

/// Whether the server closed `s` (EOF or reset) within `within`; data it sent is skipped.
async fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    let mut buf = [0u8; 512];
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
        }
    }
}

fn packets_from(p: &Participant, publisher: &str) -> u64 {
    p.received_from(publisher).iter().map(|r| r.packets).sum()
}

/// Attack sources: loopback addresses of their own, so the victims' 127.0.0.1 is not one.
fn attacker(i: u8) -> IpAddr {
    IpAddr::from([127, 0, 0, 100 + i])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_flood_of_idle_connections_under_1024_open_files_hurts_nobody() {
    let header_timeout = 3;
    let idle_timeout = 4;
    let server = start_limited(
        1024,
        &[
            "--http-header-timeout",
            &header_timeout.to_string(),
            "--http-idle-timeout",
            &idle_timeout.to_string(),
        ],
    )
    .await;
    let pid = server.child.id();
    assert_eq!(nofile_limits(pid), (1024, 1024));

    // A call in progress: alice publishes, bob watches.
    let alice = Participant::join(&server, "alice", "flooded", true).await;
    let bob = Participant::join(&server, "bob", "flooded", false).await;
    bob.wait_for("alice's media", Duration::from_secs(15), |p| {
        packets_from(p, &alice.id) >= 20
    })
    .await;
    let window = Duration::from_secs(3);
    let before0 = packets_from(&bob, &alice.id);
    tokio::time::sleep(window).await;
    let before = packets_from(&bob, &alice.id) - before0;
    let flood_began = Instant::now();
    let idle_fds = open_fds(pid);
    eprintln!("before the flood: {before} packets in {window:?}, {idle_fds} open files");

    // /healthz from the victims' address every 200 ms, from now until the flood is over.
    let probing = Arc::new(AtomicBool::new(true));
    let prober = {
        let probing = probing.clone();
        let http = server.http;
        tokio::spawn(async move {
            let mut slowest = Duration::ZERO;
            let mut probes = 0;
            while probing.load(Ordering::SeqCst) && probes < 200 {
                let answer = tokio::time::timeout(
                    Duration::from_secs(1),
                    get_from(IpAddr::from([127, 0, 0, 1]), http, "/healthz"),
                )
                .await;
                match answer {
                    Ok(Ok((200, took))) => slowest = slowest.max(took),
                    other => panic!("/healthz during the flood: {other:?}"),
                }
                probes += 1;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            (probes, slowest)
        })
    };

    // 1 100 connections: 300 from one source (44 more than --max-connections-per-ip's default
    // of 256), then 800 from four others (together more than the 768 the limit of 1024
    // leaves). Every other one sends half a request head, the rest nothing.
    let flood_start = Instant::now();
    let mut flood = Vec::new();
    let mut failed_connects = 0;
    for i in 0..1100u32 {
        let source = if i < 300 { 0 } else { 1 + (i % 4) as u8 };
        match connect_from(attacker(source), server.http).await {
            Ok(mut s) => {
                if i % 2 == 0 {
                    let _ = s
                        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Pad: ")
                        .await;
                }
                flood.push(s);
            }
            Err(_) => failed_connects += 1,
        }
    }
    let flood_took = flood_start.elapsed();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let fds_at_peak = open_fds(pid);
    let open = metric(&server, "switchboard_http_connections").await;
    let refused = metric(
        &server,
        "switchboard_http_connections_refused_total{reason=\"per_ip\"}",
    )
    .await;
    let reclaimed = metric(
        &server,
        "switchboard_http_connections_closed_total{reason=\"reclaimed\"}",
    )
    .await;
    eprintln!(
        "flood of 1100 in {flood_took:?} ({failed_connects} connects failed): {fds_at_peak} open \
         files, {open} connections open, {refused} refused per IP, {reclaimed} reclaimed"
    );
    assert!(
        fds_at_peak < 1024,
        "below the open-file limit: {fds_at_peak}"
    );
    assert!(open <= 768 + 1, "at most the derived total cap: {open}");
    assert_eq!(refused, 44, "a source past its cap is refused");
    assert!(
        reclaimed > 0,
        "waiting connections make room at the total cap"
    );
    assert_eq!(
        metric(&server, "switchboard_http_accept_errors_total").await,
        0
    );

    // Half-sent and silent connections are closed by the head timeout, without a byte more.
    let mut closers = Vec::new();
    for mut s in flood {
        closers.push(tokio::spawn(async move {
            closed_within(&mut s, Duration::from_secs(header_timeout + 3)).await
        }));
    }
    let mut still_open = 0;
    for c in closers {
        if !c.await.unwrap() {
            still_open += 1;
        }
    }
    assert_eq!(
        still_open, 0,
        "every flood connection was closed by the server"
    );
    let head_timeouts = metric(
        &server,
        "switchboard_http_connections_closed_total{reason=\"header_timeout\"}",
    )
    .await;
    assert!(head_timeouts > 0, "{head_timeouts}");

    // The call went on: bob kept receiving alice, nobody left, both sockets are open (and
    // longer than the idle timeout: a WebSocket is not an idle HTTP connection).
    let during0 = packets_from(&bob, &alice.id);
    let flood_window = flood_began.elapsed();
    tokio::time::sleep(window).await;
    let after = packets_from(&bob, &alice.id) - during0;
    let during_flood = during0 - before0 - before;
    eprintln!(
        "during the flood {during_flood} packets in {flood_window:?}, after it {after} in {window:?}"
    );
    assert!(
        after * 10 >= before * 8,
        "media after the flood: {after} against {before}"
    );
    let rate = |n: u64, d: Duration| n as f64 / d.as_secs_f64();
    assert!(
        rate(during_flood, flood_window) >= 0.8 * rate(before, window),
        "media during the flood: {during_flood} in {flood_window:?}, {before} in {window:?} before"
    );
    for p in [&alice, &bob] {
        assert!(p.events_of("participant_left").is_empty(), "nobody left");
        assert!(!p.signal.lock().await.closed.load(Ordering::SeqCst));
    }

    probing.store(false, Ordering::SeqCst);
    let (probes, slowest) = prober.await.unwrap();
    eprintln!("/healthz: {probes} probes, slowest {slowest:?}");
    assert!(probes >= 10, "{probes}");
    assert!(slowest < Duration::from_secs(1));

    // The server's open files are back to their idle count.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let fds = open_fds(pid);
        if fds <= idle_fds {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{fds} open files, {idle_fds} before the flood"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heads_have_the_header_timeout_and_keep_alive_the_idle_timeout() {
    let server =
        TestServer::start(&["--http-header-timeout", "2", "--http-idle-timeout", "4"]).await;
    let from = attacker(10);
    let start = Instant::now();
    let mut silent = connect_from(from, server.http).await.unwrap();
    let mut trickle = connect_from(from, server.http).await.unwrap();
    let mut keep_alive = connect_from(from, server.http).await.unwrap();
    keep_alive
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 256];
    let n = keep_alive.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));

    // A head sent a byte at a time still has to be complete within 2 s.
    let dripping = tokio::spawn(async move {
        for b in b"GET /healthz HTTP/1.1\r\nHost: x\r\n".iter() {
            if trickle.write_all(&[*b]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        closed_within(&mut trickle, Duration::from_secs(4)).await
    });
    assert!(
        !closed_within(&mut silent, Duration::from_millis(1500)).await,
        "open before the head timeout"
    );
    assert!(closed_within(&mut silent, Duration::from_secs(2)).await);
    let silent_took = start.elapsed();
    assert!(dripping.await.unwrap(), "a dripping head is cut too");
    // The keep-alive connection is idle, not in a head: it outlives the 2 s head timeout...
    assert!(
        !closed_within(
            &mut keep_alive,
            Duration::from_secs(3) - start.elapsed().min(Duration::from_secs(3))
        )
        .await,
        "a keep-alive connection gets the idle timeout"
    );
    // ...and closes after the 4 s idle timeout.
    assert!(closed_within(&mut keep_alive, Duration::from_secs(3)).await);
    let idle_took = start.elapsed();
    eprintln!("silent closed after {silent_took:?}, idle keep-alive after {idle_took:?}");
    assert!(idle_took >= Duration::from_secs(4) - Duration::from_millis(200));
    assert!(
        metric(
            &server,
            "switchboard_http_connections_closed_total{reason=\"idle_timeout\"}"
        )
        .await
            >= 1
    );
    assert!(
        metric(
            &server,
            "switchboard_http_connections_closed_total{reason=\"header_timeout\"}"
        )
        .await
            >= 2
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_source_over_its_cap_is_refused_while_another_gets_in() {
    let server = TestServer::start(&["--max-connections-per-ip", "5"]).await;
    let greedy = attacker(20);
    let mut held = Vec::new();
    for _ in 0..5 {
        held.push(connect_from(greedy, server.http).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(200)).await;

    // The sixth from the same source gets the fixed 503 and is closed, unread.
    let mut sixth = connect_from(greedy, server.http).await.unwrap();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(2), sixth.read_to_end(&mut answer)).await;
    assert!(read.is_ok(), "closed at once");
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 503"), "{text}");
    assert!(text.contains("too_many_connections"), "{text}");
    // A request from that source is refused too: the 503, or a reset when the server closed
    // the socket with the request unread in it (the refusal reads nothing, by design).
    match get_from(greedy, server.http, "/healthz").await {
        Ok((status, _)) => assert_eq!(status, 503),
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
    }

    // Another source is served, at once.
    let (status, took) = get_from(attacker(21), server.http, "/healthz")
        .await
        .unwrap();
    assert_eq!(status, 200);
    assert!(took < Duration::from_secs(1), "{took:?}");
    assert_eq!(
        metric(
            &server,
            "switchboard_http_connections_refused_total{reason=\"per_ip\"}"
        )
        .await,
        2
    );

    // Once it lets go, the source gets in again.
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let (status, _) = get_from(greedy, server.http, "/healthz").await.unwrap();
        if status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "still refused: {status}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A network namespace with 198.18.0.1 on its loopback device; deleted (and the processes
/// started in it killed) on drop, also when the test fails.
struct Netns {
    name: String,
    children: Vec<std::process::Child>,
}

impl Netns {
    fn new() -> Self {
        let name = format!("sb-conn-{}", std::process::id());
        let _ = Command::new("ip")
            .args(["netns", "del", &name])
            .stderr(Stdio::null())
            .status();
        let ns = Self {
            name,
            children: Vec::new(),
        };
        ns.ip(&["netns", "add", &ns.name]);
        ns.exec_ok(&["ip", "link", "set", "lo", "up"]);
        ns.exec_ok(&["ip", "addr", "add", "198.18.0.1/24", "dev", "lo"]);
        ns
    }

    fn ip(&self, args: &[&str]) {
        let status = Command::new("ip").args(args).status().unwrap();
        assert!(status.success(), "ip {args:?}");
    }

    fn exec_ok(&self, cmd: &[&str]) {
        let status = Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(cmd)
            .status()
            .unwrap();
        assert!(status.success(), "{cmd:?} in {}", self.name);
    }

    /// `curl` inside the namespace: (status, body).
    fn curl(&self, args: &[&str]) -> (u16, String) {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.name, "curl", "-s", "-m", "5"])
            .args(["-w", "\n%{http_code}"])
            .args(args)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
        (code.trim().parse().unwrap_or(0), body.to_owned())
    }

    /// Starts the server in the namespace, its output into `log_dir`; waits for /healthz.
    fn start_server(&mut self, log_dir: &std::path::Path, tag: &str, extra: &[&str]) -> usize {
        let data = log_dir.join(format!("data-{tag}"));
        let stdout = std::fs::File::create(log_dir.join(format!("{tag}.out"))).unwrap();
        let stderr = std::fs::File::create(log_dir.join(format!("{tag}.err"))).unwrap();
        let child = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.name,
                env!("CARGO_BIN_EXE_switchboard"),
            ])
            .args(["--http-addr", "0.0.0.0:18080", "--public-ip", "198.18.0.1"])
            .args(["--udp-port", "17882"])
            .arg("--data-dir")
            .arg(&data)
            .args(extra)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .unwrap();
        self.children.push(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.curl(&["http://198.18.0.1:18080/healthz"]).0 != 200 {
            assert!(
                Instant::now() < deadline,
                "server in {} not healthy",
                self.name
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        self.children.len() - 1
    }

    fn stop_server(&mut self, i: usize) {
        let child = &mut self.children[i];
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

const DEV_BODY: &str = r#"{"name":"eve","room":"r1"}"#;

fn post_dev_token(ns: &Netns, from: &str, to: &str) -> (u16, String) {
    ns.curl(&[
        "--interface",
        from,
        "-X",
        "POST",
        "-H",
        "Content-Type: application/json",
        "-d",
        DEV_BODY,
        &format!("http://{to}:18080/api/dev/token"),
    ])
}

/// Whether `word`, as an HS256 key, verifies `token`'s signature.
fn signs(word: &str, token: &str) -> bool {
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
    validation.validate_exp = false;
    validation.required_spec_claims.clear();
    jsonwebtoken::decode::<serde_json::Value>(
        token,
        &jsonwebtoken::DecodingKey::from_secret(word.as_bytes()),
        &validation,
    )
    .is_ok()
}

/// The words of a log long enough to be a secret.
fn words(text: &str) -> impl Iterator<Item = &str> {
    text.split(|c: char| !c.is_ascii_alphanumeric() && c != '-' && c != '_')
        .filter(|w| w.len() >= 16)
}

#[test]
fn dev_tokens_only_for_loopback_unless_allowed_and_the_secret_is_never_printed() {
    let logs = tempfile::tempdir().unwrap();
    let mut ns = Netns::new();

    // Default: a client at 198.18.0.1 (not loopback) is refused, one at 127.0.0.1 served.
    let first = ns.start_server(logs.path(), "default", &[]);
    let (status, body) = post_dev_token(&ns, "198.18.0.1", "198.18.0.1");
    assert_eq!(status, 403, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["error"]["code"], "dev_token_loopback_only", "{body}");
    // A forwarding header does not make it local.
    let (status, _) = ns.curl(&[
        "--interface",
        "198.18.0.1",
        "-X",
        "POST",
        "-H",
        "X-Forwarded-For: 127.0.0.1",
        "-H",
        "Content-Type: application/json",
        "-d",
        DEV_BODY,
        "http://198.18.0.1:18080/api/dev/token",
    ]);
    assert_eq!(status, 403);
    // Nor a local proxy's request (it names the client it forwards for).
    let (status, _) = ns.curl(&[
        "-X",
        "POST",
        "-H",
        "X-Forwarded-For: 198.18.0.7",
        "-H",
        "Content-Type: application/json",
        "-d",
        DEV_BODY,
        "http://127.0.0.1:18080/api/dev/token",
    ]);
    assert_eq!(status, 403);
    let (status, body) = post_dev_token(&ns, "127.0.0.1", "127.0.0.1");
    assert_eq!(status, 200, "{body}");
    let local: serde_json::Value = serde_json::from_str(&body).unwrap();
    let local_token = local["token"].as_str().unwrap().to_owned();
    ns.stop_server(first);

    // --dev-allow-remote: the same remote client gets a token.
    let second = ns.start_server(logs.path(), "remote", &["--dev-allow-remote"]);
    let (status, body) = post_dev_token(&ns, "198.18.0.1", "198.18.0.1");
    assert_eq!(status, 200, "{body}");
    let remote: serde_json::Value = serde_json::from_str(&body).unwrap();
    let remote_token = remote["token"].as_str().unwrap().to_owned();
    ns.stop_server(second);

    // Neither server printed the key its tokens are signed with: no word of their output
    // verifies a token.
    for (tag, token) in [("default", &local_token), ("remote", &remote_token)] {
        let out = std::fs::read_to_string(logs.path().join(format!("{tag}.out"))).unwrap();
        let err = std::fs::read_to_string(logs.path().join(format!("{tag}.err"))).unwrap();
        assert!(
            err.contains("dev mode"),
            "{tag}: the log says dev mode: {err}"
        );
        for word in words(&out).chain(words(&err)) {
            assert!(
                !signs(word, token),
                "{tag}: the signing secret was printed: {word}"
            );
        }
    }
    // The check can fail: a log line with the key in it is caught.
    let key = "5f1e0c9a7b3d2e4f6a8c0b1d3e5f7a9c";
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &serde_json::json!({"sub": "x"}),
        &jsonwebtoken::EncodingKey::from_secret(key.as_bytes()),
    )
    .unwrap();
    let leaky = format!("dev mode: tokens are signed with the generated secret {key}\n");
    assert!(words(&leaky).any(|w| signs(w, &token)));
}
