//! The container as the Dockerfile defines it, without a container engine: its runtime `ENV`,
//! `ENTRYPOINT` and `HEALTHCHECK` are read from the Dockerfile and run against the host-built
//! binary (only the ports and /data are swapped for free ones and a temp dir).

mod common;

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::http_request;

const BIN: &str = env!("CARGO_BIN_EXE_switchboard");

/// The runtime stage (the last `FROM`) of the Dockerfile, continuation lines joined.
fn runtime_stage() -> Vec<String> {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/Dockerfile"))
        .expect("a Dockerfile at the repository root");
    let mut lines = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') || line.is_empty() && current.is_empty() {
            continue;
        }
        match line.strip_suffix('\\') {
            Some(part) => current.push_str(part),
            None => {
                current.push_str(line);
                lines.push(std::mem::take(&mut current));
            }
        }
    }
    let last_from = lines.iter().rposition(|l| l.starts_with("FROM ")).unwrap();
    lines.split_off(last_from)
}

fn instruction<'a>(stage: &'a [String], name: &str) -> Vec<&'a str> {
    stage
        .iter()
        .filter_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .map(str::trim)
        .collect()
}

fn image_env(stage: &[String]) -> BTreeMap<String, String> {
    instruction(stage, "ENV")
        .iter()
        .flat_map(|l| l.split_whitespace())
        .map(|kv| {
            let (k, v) = kv.split_once('=').expect("ENV key=value");
            (k.to_owned(), v.to_owned())
        })
        .collect()
}

fn exec_form(text: &str) -> Vec<String> {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not an exec-form array {text}: {e}"))
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn command(argv: &[String], env: &BTreeMap<String, String>) -> Command {
    assert_eq!(
        argv[0], "switchboard",
        "the image runs the binary from PATH"
    );
    let mut cmd = Command::new(BIN);
    cmd.args(&argv[1..])
        .env_clear()
        .envs(env)
        .stdin(Stdio::null());
    cmd
}

#[test]
fn the_image_exposes_what_it_configures() {
    let stage = runtime_stage();
    assert!(
        stage[0].starts_with("FROM debian:bookworm-slim"),
        "{}",
        stage[0]
    );
    let env = image_env(&stage);
    assert_eq!(env["SWITCHBOARD_HTTP_ADDR"], "0.0.0.0:8080");
    assert_eq!(env["SWITCHBOARD_DATA_DIR"], "/data");
    let expose = instruction(&stage, "EXPOSE").join(" ");
    let http_port = env["SWITCHBOARD_HTTP_ADDR"].rsplit(':').next().unwrap();
    assert!(expose.contains(&format!("{http_port}/tcp")), "{expose}");
    assert!(
        expose.contains(&format!("{}/udp", env["SWITCHBOARD_UDP_PORT"])),
        "{expose}"
    );
    assert!(instruction(&stage, "VOLUME").join(" ").contains("/data"));
    let user = instruction(&stage, "USER");
    assert!(
        user.len() == 1 && !user[0].starts_with("0") && !user[0].starts_with("root"),
        "runs as a non-root user: {user:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_image_entrypoint_and_healthcheck_work_as_configured() {
    let stage = runtime_stage();
    let entrypoint = exec_form(instruction(&stage, "ENTRYPOINT")[0]);
    let healthcheck = instruction(&stage, "HEALTHCHECK")[0];
    let healthcheck = exec_form(
        healthcheck
            .split_once("CMD ")
            .expect("HEALTHCHECK ... CMD [...]")
            .1,
    );

    let data = tempfile::tempdir().unwrap();
    let http_port = free_port();
    let udp_port = free_port(); // a free TCP port number is very likely free on UDP too
    let mut env = image_env(&stage);
    env.insert(
        "SWITCHBOARD_HTTP_ADDR".into(),
        format!("0.0.0.0:{http_port}"),
    );
    env.insert("SWITCHBOARD_UDP_PORT".into(), udp_port.to_string());
    env.insert(
        "SWITCHBOARD_DATA_DIR".into(),
        data.path().join("data").to_str().unwrap().into(),
    );

    // `docker run` without SWITCHBOARD_PUBLIC_IP: refused with a line saying what to set.
    let out = command(&entrypoint, &env).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.lines()
            .last()
            .unwrap()
            .contains("SWITCHBOARD_PUBLIC_IP"),
        "{err}"
    );

    // `docker run -e SWITCHBOARD_PUBLIC_IP=... -e SWITCHBOARD_JWT_SECRET=...`
    env.insert("SWITCHBOARD_PUBLIC_IP".into(), "127.0.0.1".into());
    env.insert(
        "SWITCHBOARD_JWT_SECRET".into(),
        "container-secret-0123456789".into(),
    );
    let mut child = command(&entrypoint, &env)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let http: std::net::SocketAddr = format!("127.0.0.1:{http_port}").parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !matches!(
        http_request(http, "GET", "/healthz", None, None).await,
        Ok((200, _))
    ) {
        assert!(child.try_wait().unwrap().is_none(), "the server exited");
        assert!(Instant::now() < deadline, "not healthy");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Production mode: no dev tokens.
    let (status, _) = http_request(http, "POST", "/api/dev/token", None, None)
        .await
        .unwrap();
    assert_eq!(status, 404);

    let status = command(&healthcheck, &env).status().unwrap();
    assert!(status.success(), "HEALTHCHECK passes on a running server");

    // `docker stop` sends STOPSIGNAL (SIGTERM).
    // SAFETY: kill(2) on the pid of a child we spawned and have not reaped yet.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "still running after SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(0));

    let out = command(&healthcheck, &env).output().unwrap();
    assert!(
        !out.status.success(),
        "HEALTHCHECK fails once the server is gone"
    );
}

#[test]
fn the_readme_shows_the_compose_file_as_it_is() {
    let root = env!("CARGO_MANIFEST_DIR");
    let readme = std::fs::read_to_string(format!("{root}/README.md")).unwrap();
    let compose = std::fs::read_to_string(format!("{root}/compose.yaml")).unwrap();
    assert!(
        readme.contains(&compose),
        "README's Compose example differs from compose.yaml"
    );
    for needle in [
        "-p 8080:8080 -p 7882:7882/udp",
        "-e SWITCHBOARD_PUBLIC_IP=",
        "-e SWITCHBOARD_JWT_SECRET=",
        "-v switchboard-data:/data",
    ] {
        assert!(
            readme.contains(needle),
            "README's docker run lacks {needle}"
        );
    }
}
