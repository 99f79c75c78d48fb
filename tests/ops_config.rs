//! Configuration of the real binary: flag > environment > `--config` file > default, invalid
//! values stop the start with one clear line, `/readyz` and `switchboard healthcheck`.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{TestServer, http_request};

const BIN: &str = env!("CARGO_BIN_EXE_switchboard");
const VARS: [&str; 16] = [
    "SWITCHBOARD_HTTP_ADDR",
    "SWITCHBOARD_MEDIA_RT_PRIORITY",
    "SWITCHBOARD_UDP_PORT",
    "SWITCHBOARD_PUBLIC_IP",
    "SWITCHBOARD_DATA_DIR",
    "SWITCHBOARD_JWT_SECRET",
    "SWITCHBOARD_STUN_URL",
    "SWITCHBOARD_TURN_URL",
    "SWITCHBOARD_TURN_SECRET",
    "SWITCHBOARD_MAX_PARTICIPANTS",
    "SWITCHBOARD_MEDIA_WORKERS",
    "SWITCHBOARD_LOG_FORMAT",
    "SWITCHBOARD_METRICS_TOKEN",
    "SWITCHBOARD_SHUTDOWN_GRACE",
    "SWITCHBOARD_CONFIG",
    "RUST_LOG",
];

fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The binary with no `SWITCHBOARD_*` variable from the test's own environment.
fn switchboard(args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(BIN);
    for var in VARS {
        cmd.env_remove(var);
    }
    cmd.args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null());
    cmd
}

/// A running server whose log (standard error) is collected line by line.
struct Running {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Running {
    fn start(mut cmd: Command) -> Self {
        let mut child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        Self { child, lines }
    }

    /// Waits for `GET /healthz` to answer on `addr`.
    async fn wait_healthy(&mut self, addr: SocketAddr) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok((200, _)) = http_request(addr, "GET", "/healthz", None, None).await {
                return;
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("exited {status:?}: {:?}", self.lines.lock().unwrap());
            }
            assert!(Instant::now() < deadline, "not healthy on {addr}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The "effective configuration" log line (the reader thread may lag behind the server).
    fn effective(&self) -> String {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let found = self
                .lines
                .lock()
                .unwrap()
                .iter()
                .find(|l| l.contains("effective configuration"))
                .cloned();
            if let Some(line) = found {
                return line;
            }
            assert!(
                Instant::now() < deadline,
                "the effective configuration is logged: {:?}",
                self.lines.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn write_file(dir: &tempfile::TempDir, text: &str) -> String {
    let path = dir.path().join("switchboard.toml");
    std::fs::File::create(&path)
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    path.to_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flag_beats_env_beats_file_beats_default() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (from_file, from_env, from_flag) = (free_addr(), free_addr(), free_addr());
    let udp = free_udp_port();
    let path = write_file(
        &dir,
        &format!(
            "http_addr = \"{from_file}\"\nudp_port = {udp}\nmax_participants = 3\n\
             log_format = \"json\"\ndata_dir = \"{}\"\nmetrics_token = \"file-metrics-token\"\n",
            data.display()
        ),
    );
    let env = [
        ("SWITCHBOARD_CONFIG", path.as_str()),
        ("SWITCHBOARD_MAX_PARTICIPANTS", "4"),
    ];

    // All three give http_addr: the flag wins. The env wins max_participants over the file.
    let flag = from_flag.to_string();
    let env_addr = from_env.to_string();
    let mut env_all = env.to_vec();
    env_all.push(("SWITCHBOARD_HTTP_ADDR", &env_addr));
    let mut s = Running::start(switchboard(&["--http-addr", &flag], &env_all));
    s.wait_healthy(from_flag).await;
    let line = s.effective();
    assert!(
        line.starts_with('{'),
        "log_format = \"json\" from the file: {line}"
    );
    assert!(line.contains(&format!("http_addr={from_flag}")), "{line}");
    assert!(line.contains("max_participants=4"), "{line}");
    assert!(line.contains(&format!("udp_port={udp}")), "{line}");
    assert!(line.contains("media_workers=1"), "default: {line}");
    assert!(line.contains("metrics_token=<redacted>"), "{line}");
    assert!(!line.contains("file-metrics-token"), "{line}");
    // The token from the file is in force.
    let (status, _) = http_request(from_flag, "GET", "/metrics", None, None)
        .await
        .unwrap();
    assert_eq!(status, 401);
    let (status, _) = http_request(
        from_flag,
        "GET",
        "/metrics",
        Some("file-metrics-token"),
        None,
    )
    .await
    .unwrap();
    assert_eq!(status, 200);
    drop(s);

    // Without the flag, the environment wins.
    let mut s = Running::start(switchboard(&[], &env_all));
    s.wait_healthy(from_env).await;
    assert!(s.effective().contains(&format!("http_addr={from_env}")));
    drop(s);

    // Without either, the file; a flag for another setting beats the file for that one.
    let mut s = Running::start(switchboard(&["--max-participants", "5"], &env[..1]));
    s.wait_healthy(from_file).await;
    let line = s.effective();
    assert!(line.contains(&format!("http_addr={from_file}")), "{line}");
    assert!(line.contains("max_participants=5"), "{line}");
    drop(s);

    // --config as a flag works the same as the variable.
    let mut s = Running::start(switchboard(&["--config", &path], &[]));
    s.wait_healthy(from_file).await;
    assert!(s.effective().contains("max_participants=3"));
}

fn with<'a>(base: &[&'a str], extra: &[&'a str]) -> Vec<&'a str> {
    base.iter().chain(extra).copied().collect()
}

/// Runs the binary to completion (it must not start serving).
fn fails(args: &[&str], env: &[(&str, &str)]) -> (Output, String) {
    let out = switchboard(args, env)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "started with {args:?} {env:?}");
    (out, stderr)
}

#[tokio::test]
async fn invalid_values_stop_the_start_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data = data.to_str().unwrap();
    let base = ["--http-addr", "127.0.0.1:0", "--data-dir", data];

    let (_, err) = fails(&with(&base, &["--max-participants", "0"]), &[]);
    assert!(
        err.contains("--max-participants") && err.contains("1 to 20"),
        "{err}"
    );
    let (_, err) = fails(&with(&base, &["--shutdown-grace=3601"]), &[]);
    assert!(err.contains("--shutdown-grace"), "{err}");
    let (_, err) = fails(&base, &[("SWITCHBOARD_UDP_PORT", "seventy")]);
    assert!(
        err.contains("--udp-port") && err.contains("seventy"),
        "{err}"
    );
    let (_, err) = fails(&with(&base, &["--jwt-secret", "short"]), &[]);
    // The effective configuration is logged first; the reason is the last line.
    assert_eq!(
        err.lines().last(),
        Some("switchboard: --jwt-secret must be at least 16 characters"),
        "{err}"
    );

    // Values from the file are checked the same way, and said in one line naming the file.
    let path = write_file(&dir, "max_participants = 50\n");
    let (out, err) = fails(&with(&base, &["--config", &path]), &[]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with(&format!("switchboard: config file {path}: "))
            && err.contains("'50'")
            && err.contains("--max-participants"),
        "{err}"
    );
    let path = write_file(&dir, "max-participants = 5\n");
    let (_, err) = fails(&with(&base, &["--config", &path]), &[]);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("unknown key `max-participants`") && err.contains("max_participants"),
        "{err}"
    );
    let path = write_file(&dir, "udp_port = [1, 2]\n");
    let (_, err) = fails(&with(&base, &["--config", &path]), &[]);
    assert!(
        err.contains("`udp_port` must be a string or a number"),
        "{err}"
    );
    let path = write_file(&dir, "this is not toml\n");
    let (_, err) = fails(&with(&base, &["--config", &path]), &[]);
    assert_eq!(err.lines().count(), 1, "{err}");
    let (_, err) = fails(
        &with(&base, &["--config", "/nonexistent/switchboard.toml"]),
        &[],
    );
    assert!(
        err.contains("cannot read --config /nonexistent/switchboard.toml"),
        "{err}"
    );

    // A bad value in the file is harmless when a flag overrides it.
    let path = write_file(&dir, "max_participants = 50\nudp_port = 0\n");
    let addr = free_addr();
    let addr_s = addr.to_string();
    let mut s = Running::start(switchboard(
        &[
            "--config",
            &path,
            "--max-participants",
            "2",
            "--http-addr",
            &addr_s,
            "--data-dir",
            data,
        ],
        &[],
    ));
    s.wait_healthy(addr).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_and_the_healthcheck_command() {
    let mut server = TestServer::start(&["--media-workers", "2"]).await;
    let (status, body) = http_request(server.http, "GET", "/readyz", None, None)
        .await
        .unwrap();
    assert_eq!(status, 200);
    assert_eq!(body, serde_json::json!({"status": "ready"}));

    // `switchboard healthcheck` reads the same flags and environment as the server.
    let http = server.http.to_string();
    let out = switchboard(&["healthcheck", "--http-addr", &http], &[])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let out = switchboard(&["healthcheck"], &[("SWITCHBOARD_HTTP_ADDR", &http)])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    // A wildcard bind address is probed on loopback, as inside a container.
    let wildcard = format!("0.0.0.0:{}", server.http.port());
    let out = switchboard(&["healthcheck"], &[("SWITCHBOARD_HTTP_ADDR", &wildcard)])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");

    let _ = server.child.kill();
    let _ = server.child.wait();
    let out = switchboard(&["healthcheck", "--http-addr", &http], &[])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with("switchboard: healthcheck: cannot connect"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_never_reach_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let addr = free_addr();
    let addr_s = addr.to_string();
    let data = dir.path().join("data");
    let mut s = Running::start(switchboard(
        &[
            "--http-addr",
            &addr_s,
            "--udp-port",
            "0",
            "--data-dir",
            data.to_str().unwrap(),
        ],
        &[
            ("SWITCHBOARD_JWT_SECRET", "jwt-secret-0123456789"),
            ("SWITCHBOARD_TURN_SECRET", "turn-secret-value"),
            ("SWITCHBOARD_TURN_URL", "turn:127.0.0.1:3478"),
            ("SWITCHBOARD_METRICS_TOKEN", "metrics-token-value"),
        ],
    ));
    s.wait_healthy(addr).await;
    let line = s.effective();
    for key in ["jwt_secret", "turn_secret", "metrics_token"] {
        assert!(line.contains(&format!("{key}=<redacted>")), "{line}");
    }
    let all = s.lines.lock().unwrap().join("\n");
    for secret in [
        "jwt-secret-0123456789",
        "turn-secret-value",
        "metrics-token-value",
    ] {
        assert!(!all.contains(secret), "{secret} in the log:\n{all}");
    }
}

/// The scheduling policy and real-time priority of `pid`'s thread named `name`, from
/// `/proc/<pid>/task/<tid>/stat` (fields 41 and 40).
fn thread_policy(pid: u32, name: &str) -> Option<(u32, u32)> {
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).ok()? {
        let dir = task.ok()?.path();
        if std::fs::read_to_string(dir.join("comm")).ok()?.trim() != name {
            continue;
        }
        let stat = std::fs::read_to_string(dir.join("stat")).ok()?;
        // Fields after the parenthesised command name, starting with field 3.
        let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
        return Some((fields[41 - 3].parse().ok()?, fields[40 - 3].parse().ok()?));
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn media_thread_runs_at_the_requested_realtime_priority() {
    let data = tempfile::tempdir().unwrap();
    let addr = free_addr();
    let addr_s = addr.to_string();
    let udp = free_udp_port().to_string();
    let data_s = data.path().to_str().unwrap();
    let base = [
        "--http-addr",
        addr_s.as_str(),
        "--udp-port",
        udp.as_str(),
        "--data-dir",
        data_s,
    ];

    let mut s = Running::start(switchboard(
        &base,
        &[("SWITCHBOARD_MEDIA_RT_PRIORITY", "7")],
    ));
    s.wait_healthy(addr).await;
    assert!(
        s.effective().contains("media_rt_priority=7"),
        "{}",
        s.effective()
    );
    let pid = s.child.id();
    // SCHED_FIFO is 1. Root (as in CI) holds CAP_SYS_NICE; anyone else gets the warning.
    if unsafe { libc::geteuid() } == 0 {
        assert_eq!(thread_policy(pid, "media-0"), Some((1, 7)));
    } else {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !s
            .lines
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains("cannot run at SCHED_FIFO"))
        {
            assert!(Instant::now() < deadline, "{:?}", s.lines.lock().unwrap());
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(thread_policy(pid, "media-0"), Some((0, 0)));
    }
    drop(s);

    // Without the flag the thread keeps the normal policy (SCHED_OTHER, 0).
    let mut s = Running::start(switchboard(&base, &[]));
    s.wait_healthy(addr).await;
    assert!(s.effective().contains("media_rt_priority=none"));
    assert_eq!(thread_policy(s.child.id(), "media-0"), Some((0, 0)));
    drop(s);

    let (out, err) = fails(&with(&base, &["--media-rt-priority", "100"]), &[]);
    assert!(!out.status.success());
    assert!(err.contains("--media-rt-priority"), "{err}");
}
