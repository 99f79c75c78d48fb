//! The server under load: started by us or attached to, sampled from `/proc` and `/metrics`.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr, TcpListener, UdpSocket};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub struct Server {
    pub http: SocketAddr,
    pub pid: Option<u32>,
    /// The server has Switchboard's `/metrics` (Janus has not).
    metrics: bool,
    child: Option<Child>,
    _data_dir: Option<TempDir>,
}

/// One look at the server: its CPU time, RSS and `/metrics` counters.
#[derive(Debug, Clone, Default)]
pub struct ServerSample {
    pub at: Option<Instant>,
    /// utime + stime, seconds.
    pub cpu_secs: Option<f64>,
    pub rss_kib: Option<u64>,
    pub metrics: HashMap<String, f64>,
    /// utime + stime of this load tool, seconds.
    pub own_cpu_secs: Option<f64>,
    /// Datagrams the kernel dropped for a full receive buffer, machine-wide (`/proc/net/snmp`).
    pub udp_rcvbuf_errors: Option<u64>,
    /// Packets received on this network namespace's interfaces other than loopback
    /// (`/proc/net/dev`): in scripts/bench-janus.sh's client namespace, every datagram the
    /// server sent to the clients, counted before any socket could drop it.
    pub net_rx_packets: Option<u64>,
}

impl ServerSample {
    pub fn metric(&self, name: &str) -> Option<f64> {
        self.metrics.get(name).copied()
    }
}

impl Server {
    /// Uses a server that is already running at `url` (`http://127.0.0.1:PORT`).
    pub fn attach(url: &str, pid: Option<u32>) -> anyhow::Result<Self> {
        let host = url
            .strip_prefix("http://")
            .context("--server must be an http:// URL")?
            .trim_end_matches('/');
        let http: SocketAddr = host
            .parse()
            .with_context(|| format!("--server {url}: expected http://IP:PORT"))?;
        if !allowed(http.ip()) {
            bail!("--server {url}: only loopback or private addresses are measured");
        }
        Ok(Self {
            http,
            pid,
            metrics: true,
            child: None,
            _data_dir: None,
        })
    }

    /// Janus at `http` (its REST API; no `/metrics`).
    pub fn attach_janus(http: SocketAddr, pid: Option<u32>) -> anyhow::Result<Self> {
        if !allowed(http.ip()) {
            bail!("--janus-url {http}: only loopback or private addresses are measured");
        }
        Ok(Self {
            http,
            pid,
            metrics: false,
            child: None,
            _data_dir: None,
        })
    }

    /// Starts `bin` on free loopback ports with a fresh data directory, in dev mode.
    pub async fn spawn(bin: &Path, extra: &[String]) -> anyhow::Result<Self> {
        let http: SocketAddr = format!("127.0.0.1:{}", free_tcp_port()?).parse()?;
        let udp_port = free_udp_port()?;
        let data_dir = TempDir::new()?;
        let mut command = Command::new(bin);
        command
            .args(["--http-addr", &http.to_string()])
            .args(["--udp-port", &udp_port.to_string()])
            .arg("--data-dir")
            .arg(&data_dir.0)
            .args(extra);
        // Every participant connects from 127.0.0.1: lift the per-source cap (default 256)
        // unless the caller sets it.
        if !extra
            .iter()
            .any(|a| a.starts_with("--max-connections-per-ip"))
        {
            command.args(["--max-connections-per-ip", "1000000"]);
        }
        command
            .env(
                "RUST_LOG",
                std::env::var("SWITCHBOARD_LOAD_SERVER_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        // The server under test runs in the normal class even when the clients are idle ones.
        let child = crate::sched::spawn_normal(&mut command)
            .spawn()
            .with_context(|| format!("start {}", bin.display()))?;
        let server = Self {
            http,
            pid: Some(child.id()),
            metrics: true,
            child: Some(child),
            _data_dir: Some(data_dir),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok((200, _)) = http_request(http, "GET", "/healthz", None).await {
                return Ok(server);
            }
            if Instant::now() > deadline {
                bail!("the server at {http} did not become healthy within 20 s");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn sample(&self) -> anyhow::Result<ServerSample> {
        let (cpu_secs, rss_kib) = match self.pid {
            Some(pid) => (proc_cpu_secs(pid), proc_rss_kib(pid)),
            None => (None, None),
        };
        let metrics = match self.metrics {
            true => match http_request(self.http, "GET", "/metrics", None).await {
                Ok((200, Value::String(text))) => parse_metrics(&text),
                _ => HashMap::new(),
            },
            false => HashMap::new(),
        };
        Ok(ServerSample {
            at: Some(Instant::now()),
            cpu_secs,
            rss_kib,
            metrics,
            own_cpu_secs: proc_cpu_secs(std::process::id()),
            udp_rcvbuf_errors: udp_rcvbuf_errors(),
            net_rx_packets: net_rx_packets(),
        })
    }

    /// A dev-mode token for `name` in `room`.
    pub async fn dev_token(http: SocketAddr, name: &str, room: &str) -> anyhow::Result<String> {
        let (status, body) = http_request(
            http,
            "POST",
            "/api/dev/token",
            Some(json!({"name": name, "room": room})),
        )
        .await?;
        if status != 200 {
            bail!("POST /api/dev/token: {status} {body} (is the server in dev mode?)");
        }
        Ok(body["token"]
            .as_str()
            .context("no token in the dev-token answer")?
            .to_owned())
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SIGTERM for a graceful stop, then wait a little.
            // SAFETY: kill(2) on our own child's pid.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Addresses the tool talks to: loopback, or private ones (the veth pair between two network
/// namespaces that scripts/bench-janus.sh creates), never anything routed further.
pub fn allowed(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback() || v4.is_private(),
        IpAddr::V6(v6) => v6.is_loopback(),
    }
}

/// A temporary directory removed on drop (no extra dependency for one directory).
struct TempDir(std::path::PathBuf);

impl TempDir {
    fn new() -> std::io::Result<Self> {
        let path = std::env::temp_dir().join(format!(
            "switchboard-load-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&path)?;
        Ok(Self(path))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn free_tcp_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn free_udp_port() -> std::io::Result<u16> {
    Ok(UdpSocket::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// utime + stime of a process, in seconds (`/proc/<pid>/stat` fields 14 and 15).
pub fn proc_cpu_secs(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces; fields are counted after its closing parenthesis.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state), so field 14 is index 11.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    (ticks > 0).then(|| (utime + stime) as f64 / ticks as f64)
}

/// VmRSS of a process, KiB.
pub fn proc_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// `Udp: … RcvbufErrors …` of `/proc/net/snmp`.
fn udp_rcvbuf_errors() -> Option<u64> {
    let snmp = std::fs::read_to_string("/proc/net/snmp").ok()?;
    let mut udp = snmp.lines().filter(|l| l.starts_with("Udp:"));
    let (names, values) = (udp.next()?, udp.next()?);
    let i = names.split_whitespace().position(|n| n == "RcvbufErrors")?;
    values.split_whitespace().nth(i)?.parse().ok()
}

/// Sum of the receive-packet counters of `/proc/net/dev` over every interface but `lo`.
fn net_rx_packets() -> Option<u64> {
    let dev = std::fs::read_to_string("/proc/net/dev").ok()?;
    let mut sum = 0;
    for line in dev.lines().skip(2) {
        let (name, counters) = line.split_once(':')?;
        if name.trim() != "lo" {
            // receive: bytes packets errs drop …
            sum += counters.split_whitespace().nth(1)?.parse::<u64>().ok()?;
        }
    }
    Some(sum)
}

/// Unlabelled samples of the Prometheus text format, by name.
fn parse_metrics(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            Some((name.to_owned(), value.parse().ok()?))
        })
        .collect()
}

/// A minimal HTTP/1.1 client over a raw TCP stream: JSON in, JSON (or text) out.
pub async fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> std::io::Result<(u16, Value)> {
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(req.as_bytes()).await?;
    let mut buf = Vec::new();
    stream.read_to_end(&mut buf).await?;
    let text = String::from_utf8_lossy(&buf);
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let (head, rest) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let rest = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(rest)
    } else {
        rest.to_owned()
    };
    let value = serde_json::from_str(&rest).unwrap_or(Value::String(rest));
    Ok((status, value))
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_unlabelled_metrics() {
        let m = parse_metrics(
            "# HELP x y\n# TYPE switchboard_rtp_forwarded_total counter\nswitchboard_rtp_forwarded_total 1234\nswitchboard_dropped_total{reason=\"a\"} 5\n",
        );
        assert_eq!(m.get("switchboard_rtp_forwarded_total"), Some(&1234.0));
        assert_eq!(m.get("switchboard_dropped_total{reason=\"a\"}"), Some(&5.0));
    }

    #[test]
    fn reads_own_process_stats() {
        let pid = std::process::id();
        assert!(proc_cpu_secs(pid).is_some());
        assert!(proc_rss_kib(pid).unwrap() > 0);
        assert!(udp_rcvbuf_errors().is_some());
        assert!(net_rx_packets().is_some());
    }
}
