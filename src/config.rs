//! Command-line flags; every flag is also a `SWITCHBOARD_*` environment variable and a key of
//! the optional `--config` TOML file (the flag's name in snake_case). Precedence: flag, then
//! environment, then file, then default.

use std::ffi::OsString;
use std::fmt::Write;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use clap::parser::ValueSource;
use clap::{CommandFactory, FromArgMatches, Parser, ValueEnum};

use crate::signal::limits::{Limits, Rate};

/// Hard ceiling on a room's size: the forwarding loop is sized for calls of up to 20.
pub const MAX_ROOM_SIZE: usize = 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Switchboard: a WebRTC selective forwarding unit for calls of up to 20 people.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "switchboard",
    version,
    about,
    after_help = "`switchboard healthcheck [FLAGS]` asks the server configured by the same flags, \
                  environment and --config file for GET /readyz and exits 0 when it is ready \
                  (for container health checks)."
)]
pub struct Config {
    /// Address of the HTTP server (API, WebSocket signaling, WHIP/WHEP, web client).
    #[arg(long, env = "SWITCHBOARD_HTTP_ADDR", default_value = "127.0.0.1:8080")]
    pub http_addr: SocketAddr,

    /// UDP port for all media. The media socket binds the IP of --http-addr.
    #[arg(long, env = "SWITCHBOARD_UDP_PORT", default_value_t = 7882)]
    pub udp_port: u16,

    /// IP advertised in ICE host candidates (default: the bind address).
    /// Required when --http-addr binds 0.0.0.0 or ::.
    #[arg(long, env = "SWITCHBOARD_PUBLIC_IP")]
    pub public_ip: Option<IpAddr>,

    /// Directory of the call records database.
    #[arg(long, env = "SWITCHBOARD_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,

    /// HS256 secret for JWTs. Without it the server runs in dev mode: it generates
    /// a secret and offers POST /api/dev/token.
    #[arg(long, env = "SWITCHBOARD_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,

    /// STUN server handed to clients, e.g. stun:stun.example.org:3478.
    #[arg(long, env = "SWITCHBOARD_STUN_URL")]
    pub stun_url: Option<String>,

    /// TURN server handed to clients, e.g. turn:turn.example.org:3478?transport=udp.
    #[arg(long, env = "SWITCHBOARD_TURN_URL")]
    pub turn_url: Option<String>,

    /// Shared secret of the TURN server's REST API (coturn --static-auth-secret).
    #[arg(long, env = "SWITCHBOARD_TURN_SECRET", hide_env_values = true)]
    pub turn_secret: Option<String>,

    /// Most participants in one room (1 to 20).
    #[arg(long, env = "SWITCHBOARD_MAX_PARTICIPANTS", default_value_t = MAX_ROOM_SIZE,
          value_parser = parse_room_size)]
    pub max_participants: usize,

    /// Number of media worker threads; worker i uses UDP port udp_port + i.
    #[arg(long, env = "SWITCHBOARD_MEDIA_WORKERS", default_value_t = 1,
          value_parser = parse_worker_count)]
    pub media_workers: usize,

    /// Run each media worker thread at this real-time priority (SCHED_FIFO, 1 to 99), so that
    /// other processes on the host cannot delay forwarding. Needs CAP_SYS_NICE or an
    /// RLIMIT_RTPRIO of at least this (Docker: --ulimit rtprio=N); without either the server
    /// warns and runs at normal priority.
    #[arg(long, env = "SWITCHBOARD_MEDIA_RT_PRIORITY",
          value_parser = clap::value_parser!(u8).range(1..=99))]
    pub media_rt_priority: Option<u8>,

    /// Log format.
    #[arg(long, env = "SWITCHBOARD_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Bearer token GET /metrics requires (default: /metrics is open to anyone who reaches it).
    #[arg(long, env = "SWITCHBOARD_METRICS_TOKEN", hide_env_values = true)]
    pub metrics_token: Option<String>,

    /// Seconds to let open connections finish after SIGTERM or SIGINT before exiting (0 to 3600).
    #[arg(long, env = "SWITCHBOARD_SHUTDOWN_GRACE", default_value_t = 10,
          value_parser = clap::value_parser!(u64).range(0..=3600))]
    pub shutdown_grace: u64,

    /// Seconds a call rings before unanswered invitees miss it (1 to 3600).
    #[arg(long, env = "SWITCHBOARD_RING_TIMEOUT", default_value_t = 45,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub ring_timeout: u64,

    /// Calls one user may create per minute (1 to 10000); more get 429.
    #[arg(long, env = "SWITCHBOARD_CALL_RATE_LIMIT", default_value_t = 10,
          value_parser = parse_rate_limit)]
    pub call_rate_limit: usize,

    // ---- /ws sessions: auth deadline and per-session rate limits (docs/protocol.md) ----
    /// Seconds a new /ws socket has to send `auth` before it is closed (1 to 300).
    #[arg(long, env = "SWITCHBOARD_WS_AUTH_TIMEOUT", default_value_t = 5,
          value_parser = clap::value_parser!(u64).range(1..=300))]
    pub ws_auth_timeout: u64,

    /// `media_state` messages one /ws session may send: PER_SECOND,BURST.
    #[arg(long, env = "SWITCHBOARD_WS_RATE_MEDIA_STATE", default_value = "5,20")]
    pub ws_rate_media_state: Rate,

    /// `candidate` messages one /ws session may send: PER_SECOND,BURST.
    #[arg(long, env = "SWITCHBOARD_WS_RATE_CANDIDATE", default_value = "20,100")]
    pub ws_rate_candidate: Rate,

    /// `publish_offer` and `subscribe_answer` messages one /ws session may send (together):
    /// PER_SECOND,BURST.
    #[arg(long, env = "SWITCHBOARD_WS_RATE_NEGOTIATION", default_value = "5,50")]
    pub ws_rate_negotiation: Rate,

    /// `ping` messages (and WebSocket pings) one /ws session may send: PER_SECOND,BURST.
    #[arg(long, env = "SWITCHBOARD_WS_RATE_PING", default_value = "2,10")]
    pub ws_rate_ping: Rate,

    /// `auth`, `join` and `leave` messages one /ws session may send (together): PER_SECOND,BURST.
    #[arg(long, env = "SWITCHBOARD_WS_RATE_SESSION", default_value = "1,10")]
    pub ws_rate_session: Rate,

    /// Unreadable messages (invalid JSON, unknown type, binary, too large) one /ws session may
    /// send: PER_SECOND,BURST.
    #[arg(long, env = "SWITCHBOARD_WS_RATE_MALFORMED", default_value = "1,10")]
    pub ws_rate_malformed: Rate,

    /// Messages over the limits above one /ws session may send (PER_SECOND,BURST) before it is
    /// closed with `rate_limited` and removed from its room.
    #[arg(long, env = "SWITCHBOARD_WS_ABUSE_LIMIT", default_value = "5,50")]
    pub ws_abuse_limit: Rate,

    // --- HTTP connection bounds and dev-mode reach (issue 21, `serve`) ---
    /// Seconds a client may take to send a complete request head, from its connection or
    /// from the first byte of a later request on it (1 to 3600).
    #[arg(long, env = "SWITCHBOARD_HTTP_HEADER_TIMEOUT",
          default_value_t = crate::serve::DEFAULT_HEADER_TIMEOUT_SECS,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub http_header_timeout: u64,

    /// Seconds a keep-alive connection may sit idle between requests, or a request's body or
    /// response may stall, before the server closes it; WebSockets are not affected (1 to 86400).
    #[arg(long, env = "SWITCHBOARD_HTTP_IDLE_TIMEOUT",
          default_value_t = crate::serve::DEFAULT_IDLE_TIMEOUT_SECS,
          value_parser = clap::value_parser!(u64).range(1..=86400))]
    pub http_idle_timeout: u64,

    /// Most concurrent HTTP connections (WebSockets included). Default: the open-file limit
    /// less a quarter of it (at least 256) for media and storage, at most 16384.
    #[arg(long, env = "SWITCHBOARD_MAX_CONNECTIONS",
          value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    pub max_connections: Option<u64>,

    /// Most concurrent HTTP connections from one source IP. Behind a reverse proxy every
    /// connection comes from the proxy: raise it towards --max-connections there.
    #[arg(long, env = "SWITCHBOARD_MAX_CONNECTIONS_PER_IP",
          default_value_t = crate::serve::DEFAULT_MAX_PER_IP as u64,
          value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    pub max_connections_per_ip: u64,

    /// Dev mode only: let clients other than loopback get tokens from POST /api/dev/token.
    #[arg(long, env = "SWITCHBOARD_DEV_ALLOW_REMOTE", action = clap::ArgAction::Set,
          num_args = 0..=1, require_equals = true, default_missing_value = "true",
          default_value_t = false)]
    pub dev_allow_remote: bool,
    // --- end of the connection-bounds block ---

    // ---- media-plane limits (issue 21) ----
    /// Most remote ICE candidates one peer connection takes, trickled (`candidate`, WHIP/WHEP
    /// PATCH) and in its SDP together (1 to 1000). More are refused with `bad_candidate`;
    /// mDNS (`.local`) candidates are always ignored. The server is ICE-lite: candidates only
    /// serve diagnostics.
    #[arg(long, env = "SWITCHBOARD_MAX_REMOTE_CANDIDATES", default_value_t = 32,
          value_parser = parse_candidate_limit)]
    pub max_remote_candidates: usize,

    /// Seconds a participant has to start media (1 to 600): each of its connections must hear
    /// from the client this soon after it is offered, and a participant that may only
    /// publish must have offered to by then. Otherwise it is removed (reason `timeout`).
    #[arg(long, env = "SWITCHBOARD_MEDIA_START_TIMEOUT", default_value_t = 30,
          value_parser = clap::value_parser!(u64).range(1..=600))]
    pub media_start_timeout: u64,
    // ---- end of media-plane limits ----
    /// TOML file of settings, keys as the flags in snake_case (e.g. `udp_port = 7882`).
    /// Flags and environment variables win over it.
    #[arg(long, env = "SWITCHBOARD_CONFIG")]
    pub config: Option<PathBuf>,
}

/// Why the configuration could not be loaded.
#[derive(Debug)]
pub enum LoadError {
    /// A flag or environment variable (or `--help`/`--version`): clap prints it and exits.
    Args(clap::Error),
    /// The `--config` file: one line saying what is wrong.
    File(String),
}

/// Keys of the config file that hold secrets; the effective configuration logs them redacted.
const SECRETS: [&str; 3] = ["jwt_secret", "turn_secret", "metrics_token"];

fn parse_in_range(s: &str, max: usize) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if (1..=max).contains(&n) => Ok(n),
        _ => Err(format!("must be a whole number from 1 to {max}")),
    }
}

fn parse_room_size(s: &str) -> Result<usize, String> {
    parse_in_range(s, MAX_ROOM_SIZE)
}

fn parse_worker_count(s: &str) -> Result<usize, String> {
    parse_in_range(s, 64)
}

fn parse_rate_limit(s: &str) -> Result<usize, String> {
    parse_in_range(s, 10_000)
}

fn parse_candidate_limit(s: &str) -> Result<usize, String> {
    parse_in_range(s, 1000)
}

impl Config {
    /// Flags, environment and `--config` file of this process.
    pub fn load() -> Result<Self, LoadError> {
        Self::load_from(std::env::args_os())
    }

    /// Flags (`args`, program name first), environment and `--config` file. The file's values
    /// fill only settings neither a flag nor an environment variable gave; they go through the
    /// same parsers as flags, so they are checked the same way.
    pub fn load_from<I, T>(args: I) -> Result<Self, LoadError>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        let mut args: Vec<OsString> = args.into_iter().map(Into::into).collect();
        let command = Self::command();
        let matches = command
            .clone()
            .try_get_matches_from(&args)
            .map_err(LoadError::Args)?;
        let config = Self::from_arg_matches(&matches).map_err(LoadError::Args)?;
        let Some(path) = &config.config else {
            return Ok(config);
        };
        let file = |message: String| LoadError::File(format!("{}: {message}", path.display()));
        let text = std::fs::read_to_string(path).map_err(|e| {
            LoadError::File(format!("cannot read --config {}: {e}", path.display()))
        })?;
        let table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
            file(
                e.message()
                    .lines()
                    .next()
                    .unwrap_or("invalid TOML")
                    .to_owned(),
            )
        })?;
        for (key, value) in table {
            let Some(arg) = command
                .get_arguments()
                .find(|a| a.get_id() == key.as_str() && key != "config")
            else {
                let hint = if key.contains('-') {
                    format!(" (keys are snake_case: `{}`)", key.replace('-', "_"))
                } else {
                    String::new()
                };
                return Err(file(format!("unknown key `{key}`{hint}")));
            };
            if matches!(
                matches.value_source(&key),
                Some(ValueSource::CommandLine | ValueSource::EnvVariable)
            ) {
                continue;
            }
            let value = match value {
                toml::Value::String(s) => s,
                toml::Value::Integer(n) => n.to_string(),
                toml::Value::Float(n) => n.to_string(),
                toml::Value::Boolean(b) => b.to_string(),
                _ => return Err(file(format!("`{key}` must be a string or a number"))),
            };
            let long = arg.get_long().expect("every setting is a long flag");
            args.push(format!("--{long}={value}").into());
        }
        Self::try_parse_from(&args).map_err(|e| {
            let text = e.to_string();
            let first = text.lines().next().unwrap_or("invalid value");
            file(first.trim_start_matches("error: ").to_owned())
        })
    }

    /// The effective configuration on one line, secrets redacted, for the start-up log.
    pub fn redacted(&self) -> String {
        // Destructured so that a new setting cannot be forgotten here.
        let Self {
            http_addr,
            udp_port,
            public_ip,
            data_dir,
            jwt_secret,
            stun_url,
            turn_url,
            turn_secret,
            max_participants,
            media_workers,
            media_rt_priority,
            log_format,
            metrics_token,
            shutdown_grace,
            ring_timeout,
            call_rate_limit,
            ws_auth_timeout,
            ws_rate_media_state,
            ws_rate_candidate,
            ws_rate_negotiation,
            ws_rate_ping,
            ws_rate_session,
            ws_rate_malformed,
            ws_abuse_limit,
            http_header_timeout,
            http_idle_timeout,
            max_connections,
            max_connections_per_ip,
            dev_allow_remote,
            max_remote_candidates,
            media_start_timeout,
            config,
        } = self;
        let secret = |s: &Option<String>| if s.is_some() { "<redacted>" } else { "none" };
        let opt = |s: Option<String>| s.unwrap_or_else(|| "none".into());
        let mut out = String::new();
        let _ = write!(
            out,
            "http_addr={http_addr} udp_port={udp_port} public_ip={} data_dir={} jwt_secret={} \
             stun_url={} turn_url={} turn_secret={} max_participants={max_participants} \
             media_workers={media_workers} media_rt_priority={} log_format={} metrics_token={} \
             shutdown_grace={shutdown_grace} ring_timeout={ring_timeout} \
             call_rate_limit={call_rate_limit} ws_auth_timeout={ws_auth_timeout} \
             ws_rate_media_state={ws_rate_media_state} ws_rate_candidate={ws_rate_candidate} \
             ws_rate_negotiation={ws_rate_negotiation} ws_rate_ping={ws_rate_ping} \
             ws_rate_session={ws_rate_session} ws_rate_malformed={ws_rate_malformed} \
             ws_abuse_limit={ws_abuse_limit} http_header_timeout={http_header_timeout} \
             http_idle_timeout={http_idle_timeout} max_connections={} \
             max_connections_per_ip={max_connections_per_ip} dev_allow_remote={dev_allow_remote} \
             max_remote_candidates={max_remote_candidates} \
             media_start_timeout={media_start_timeout} config={}",
            opt(public_ip.map(|ip| ip.to_string())),
            data_dir.display(),
            secret(jwt_secret),
            opt(stun_url.clone()),
            opt(turn_url.clone()),
            secret(turn_secret),
            opt(media_rt_priority.map(|p| p.to_string())),
            log_format
                .to_possible_value()
                .map_or_else(String::new, |v| v.get_name().to_owned()),
            secret(metrics_token),
            opt(max_connections.map(|n| n.to_string())),
            opt(config.as_ref().map(|p| p.display().to_string())),
        );
        debug_assert!(SECRETS.iter().all(|k| out.contains(&format!("{k}="))));
        out
    }

    /// The per-session limits of `/ws`.
    pub fn ws_limits(&self) -> Limits {
        Limits {
            media_state: self.ws_rate_media_state,
            candidate: self.ws_rate_candidate,
            negotiation: self.ws_rate_negotiation,
            ping: self.ws_rate_ping,
            session: self.ws_rate_session,
            malformed: self.ws_rate_malformed,
            abuse: self.ws_abuse_limit,
        }
    }

    /// The bounds of HTTP connections under an open-file limit of `fd_limit`, and a warning
    /// when `--max-connections` leaves less than the reserve of `serve::fd_reserve` free.
    pub fn connection_limits(&self, fd_limit: u64) -> (crate::serve::Limits, Option<String>) {
        let derived = crate::serve::max_total_for(fd_limit);
        let room = fd_limit.saturating_sub(crate::serve::fd_reserve(fd_limit));
        let (max_total, warning) = match self.max_connections {
            None => (derived, None),
            Some(n) => (
                usize::try_from(n).unwrap_or(usize::MAX),
                (n > room).then(|| {
                    format!(
                        "--max-connections {n} leaves fewer than {} of the {fd_limit} open files \
                         for media and storage: past {room} connections the server may fail \
                         with 'too many open files'",
                        crate::serve::fd_reserve(fd_limit)
                    )
                }),
            ),
        };
        let limits = crate::serve::Limits {
            header_timeout: std::time::Duration::from_secs(self.http_header_timeout),
            idle_timeout: std::time::Duration::from_secs(self.http_idle_timeout),
            max_per_ip: usize::try_from(self.max_connections_per_ip).unwrap_or(usize::MAX),
            max_total,
        };
        (limits, warning)
    }

    /// The address the media socket binds.
    pub fn udp_bind_addr(&self) -> SocketAddr {
        SocketAddr::new(self.http_addr.ip(), self.udp_port)
    }

    /// The IP put into host candidates.
    pub fn advertised_ip(&self) -> Result<IpAddr, String> {
        match self.public_ip {
            Some(ip) => Ok(ip),
            None if self.http_addr.ip().is_unspecified() => Err(format!(
                "--http-addr {} binds every interface: set --public-ip (SWITCHBOARD_PUBLIC_IP) \
                 to the address clients reach this host on",
                self.http_addr
            )),
            None => Ok(self.http_addr.ip()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_contract() {
        let c = Config::try_parse_from(["switchboard"]).unwrap();
        assert_eq!(c.http_addr.to_string(), "127.0.0.1:8080");
        assert_eq!(c.udp_port, 7882);
        assert_eq!(c.max_participants, 20);
        assert_eq!(c.media_workers, 1);
        assert_eq!(c.max_remote_candidates, 32);
        assert_eq!(c.media_start_timeout, 30);
        assert_eq!(c.advertised_ip().unwrap().to_string(), "127.0.0.1");
    }

    #[test]
    fn ws_limits_have_defaults_and_are_checked() {
        let c = Config::try_parse_from(["switchboard"]).unwrap();
        assert_eq!(c.ws_auth_timeout, 5);
        let l = c.ws_limits();
        assert_eq!(l.media_state, Rate::new(5.0, 20));
        assert_eq!(l.candidate, Rate::new(20.0, 100));
        assert_eq!(l.abuse, Rate::new(5.0, 50));
        let c = Config::try_parse_from(["switchboard", "--ws-rate-ping", "0.5,3"]).unwrap();
        assert_eq!(c.ws_limits().ping, Rate::new(0.5, 3));
        assert!(Config::try_parse_from(["switchboard", "--ws-rate-ping", "3"]).is_err());
        assert!(Config::try_parse_from(["switchboard", "--ws-auth-timeout", "0"]).is_err());
        let f = write_config("ws_rate_candidate = \"10,40\"\nws_auth_timeout = 2\n");
        let c = load(&["--config", f.path().to_str().unwrap()]).unwrap();
        assert_eq!(c.ws_rate_candidate, Rate::new(10.0, 40));
        assert_eq!(c.ws_auth_timeout, 2);
        assert!(
            c.redacted().contains("ws_rate_candidate=10,40"),
            "{}",
            c.redacted()
        );
    }

    #[test]
    fn room_size_is_capped_at_twenty() {
        assert!(Config::try_parse_from(["switchboard", "--max-participants", "21"]).is_err());
        assert!(Config::try_parse_from(["switchboard", "--max-participants", "0"]).is_err());
    }

    #[test]
    fn media_limits_are_checked() {
        for bad in [
            ["--max-remote-candidates", "0"],
            ["--max-remote-candidates", "1001"],
            ["--media-start-timeout", "0"],
            ["--media-start-timeout", "601"],
        ] {
            let args = std::iter::once("switchboard").chain(bad);
            assert!(Config::try_parse_from(args).is_err(), "{bad:?}");
        }
        let c = Config::try_parse_from([
            "switchboard",
            "--max-remote-candidates",
            "4",
            "--media-start-timeout",
            "2",
        ])
        .unwrap();
        assert_eq!((c.max_remote_candidates, c.media_start_timeout), (4, 2));
        assert!(c.redacted().contains("max_remote_candidates=4"));
    }

    fn write_config(text: &str) -> tempfile::NamedTempFile {
        use std::io::Write;
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(text.as_bytes()).unwrap();
        f
    }

    fn load(args: &[&str]) -> Result<Config, LoadError> {
        Config::load_from(std::iter::once("switchboard").chain(args.iter().copied()))
    }

    fn file_error(r: Result<Config, LoadError>) -> String {
        match r {
            Err(LoadError::File(m)) => m,
            Err(LoadError::Args(e)) => panic!("not a file error: {e}"),
            Ok(c) => panic!("loaded {c:?}"),
        }
    }

    #[test]
    fn file_fills_what_flags_leave_at_default() {
        let f = write_config(
            "udp_port = 9000\nmax_participants = 4\nlog_format = \"json\"\n\
             stun_url = \"stun:example.org:3478\"\n",
        );
        let path = f.path().to_str().unwrap();
        let c = load(&["--config", path, "--max-participants", "6"]).unwrap();
        assert_eq!(c.udp_port, 9000, "from the file");
        assert_eq!(c.max_participants, 6, "the flag wins over the file");
        assert_eq!(c.log_format, LogFormat::Json);
        assert_eq!(c.stun_url.as_deref(), Some("stun:example.org:3478"));
        assert_eq!(c.media_workers, 1, "default where neither says");
    }

    #[test]
    fn file_values_are_checked_like_flags() {
        let f = write_config("max_participants = 21\n");
        let m = file_error(load(&["--config", f.path().to_str().unwrap()]));
        assert!(
            m.contains("max-participants") && m.contains("1 to 20"),
            "{m}"
        );
        assert!(!m.contains('\n'), "one line: {m}");
    }

    #[test]
    fn unknown_keys_and_bad_toml_are_rejected() {
        let f = write_config("http-addr = \"127.0.0.1:1\"\n");
        let m = file_error(load(&["--config", f.path().to_str().unwrap()]));
        assert!(
            m.contains("unknown key `http-addr`") && m.contains("http_addr"),
            "{m}"
        );
        let f = write_config("udp_port = \n");
        let m = file_error(load(&["--config", f.path().to_str().unwrap()]));
        assert!(!m.contains('\n'), "one line: {m}");
        let f = write_config("config = \"other.toml\"\n");
        let m = file_error(load(&["--config", f.path().to_str().unwrap()]));
        assert!(m.contains("unknown key `config`"), "{m}");
        let m = file_error(load(&["--config", "/nonexistent/switchboard.toml"]));
        assert!(m.starts_with("cannot read --config"), "{m}");
    }

    #[test]
    fn effective_configuration_hides_secrets() {
        let c = load(&[
            "--jwt-secret",
            "0123456789abcdef-jwt",
            "--turn-secret",
            "turn-shh",
            "--metrics-token",
            "metrics-shh",
        ])
        .unwrap();
        let line = c.redacted();
        for secret in ["0123456789abcdef-jwt", "turn-shh", "metrics-shh"] {
            assert!(!line.contains(secret), "{line}");
        }
        assert!(line.contains("jwt_secret=<redacted>"), "{line}");
        assert!(line.contains("udp_port=7882"), "{line}");
        assert!(line.contains("log_format=text"), "{line}");
    }

    #[test]
    fn connection_bounds_have_defaults_and_follow_the_fd_limit() {
        let c = Config::try_parse_from(["switchboard"]).unwrap();
        assert!(!c.dev_allow_remote);
        let (l, warning) = c.connection_limits(1024);
        assert_eq!(l.header_timeout.as_secs(), 10);
        assert_eq!(l.idle_timeout.as_secs(), 60);
        assert_eq!(l.max_per_ip, 256);
        assert_eq!(l.max_total, 768, "1024 less a reserve of 256");
        assert!(warning.is_none());
        assert_eq!(c.connection_limits(1 << 20).0.max_total, 16_384);
        let c = Config::try_parse_from(["switchboard", "--max-connections", "1000"]).unwrap();
        let (l, warning) = c.connection_limits(1024);
        assert_eq!(l.max_total, 1000, "the flag is kept");
        assert!(warning.unwrap().contains("--max-connections 1000"));
        assert!(c.connection_limits(100_000).1.is_none());
        assert!(Config::try_parse_from(["switchboard", "--http-header-timeout", "0"]).is_err());
        assert!(Config::try_parse_from(["switchboard", "--max-connections-per-ip", "0"]).is_err());
    }

    #[test]
    fn dev_allow_remote_is_a_switch_that_also_takes_a_value() {
        let parse = |args: &[&str]| {
            Config::try_parse_from(std::iter::once("switchboard").chain(args.iter().copied()))
                .map(|c| c.dev_allow_remote)
        };
        assert!(parse(&["--dev-allow-remote"]).unwrap());
        assert!(parse(&["--dev-allow-remote=true"]).unwrap());
        assert!(!parse(&["--dev-allow-remote=false"]).unwrap());
        let f = write_config("dev_allow_remote = true\nhttp_idle_timeout = 5\n");
        let c = load(&["--config", f.path().to_str().unwrap()]).unwrap();
        assert!(c.dev_allow_remote);
        assert_eq!(c.http_idle_timeout, 5);
    }

    #[test]
    fn wildcard_bind_needs_a_public_ip() {
        let c = Config::try_parse_from(["switchboard", "--http-addr", "0.0.0.0:8080"]).unwrap();
        assert!(c.advertised_ip().is_err());
    }
}
