//! Command-line flags; every flag is also a `SWITCHBOARD_*` environment variable.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use clap::{Parser, ValueEnum};

/// Hard ceiling on a room's size: the forwarding loop is sized for calls of up to 20.
pub const MAX_ROOM_SIZE: usize = 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Switchboard: a WebRTC selective forwarding unit for calls of up to 20 people.
#[derive(Debug, Clone, Parser)]
#[command(name = "switchboard", version, about)]
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

    /// Log format.
    #[arg(long, env = "SWITCHBOARD_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

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

impl Config {
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
        assert_eq!(c.advertised_ip().unwrap().to_string(), "127.0.0.1");
    }

    #[test]
    fn room_size_is_capped_at_twenty() {
        assert!(Config::try_parse_from(["switchboard", "--max-participants", "21"]).is_err());
        assert!(Config::try_parse_from(["switchboard", "--max-participants", "0"]).is_err());
    }

    #[test]
    fn wildcard_bind_needs_a_public_ip() {
        let c = Config::try_parse_from(["switchboard", "--http-addr", "0.0.0.0:8080"]).unwrap();
        assert!(c.advertised_ip().is_err());
    }
}
