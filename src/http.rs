//! The HTTP surface: `/healthz`, `/readyz`, `/metrics`, `/api/dev/token`, `/ws`, and the
//! embedded web client.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::extract::ws::WebSocketUpgrade;
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};
use tower_http::limit::RequestBodyLimitLayer;

use crate::auth::{Auth, AuthError, Claims, random_token, unix_now};
use crate::bridge::{MediaError, MediaHandle};
use crate::config::Config;
use crate::metrics::{self, Metrics};
use crate::signal::protocol::IceServer;
use crate::signal::session;
use crate::store::CallStore;

/// Largest request body the API accepts.
pub const MAX_BODY: usize = 256 * 1024;
/// How long a dev-mode token lives.
const DEV_TOKEN_TTL_SECS: u64 = 24 * 3600;
/// How long `/readyz` and `/metrics` wait for each media worker and for the store.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// Everything a request handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub config: Arc<Config>,
    pub auth: Auth,
    pub workers: Arc<Vec<MediaHandle>>,
    pub store: CallStore,
    pub metrics: Arc<Metrics>,
    /// Call notifications, ring timers and rate limits (`api::live`).
    pub calls: crate::api::Calls,
    /// Live WHIP/WHEP sessions.
    pub whip: Arc<crate::whip::Sessions>,
}

impl AppState {
    /// The media worker a room lives on (rooms are placed by a hash of their name).
    pub fn worker_for(&self, room: &str) -> &MediaHandle {
        let hash = room.bytes().fold(0xcbf29ce484222325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x100000001b3)
        });
        &self.workers[(hash % self.workers.len() as u64) as usize]
    }

    /// STUN/TURN servers for a client; TURN credentials follow the TURN REST API.
    pub fn ice_servers(&self, user_id: &str) -> Vec<IceServer> {
        let mut servers = Vec::new();
        if let Some(url) = &self.config.stun_url {
            servers.push(IceServer {
                urls: vec![url.clone()],
                username: None,
                credential: None,
            });
        }
        if let Some(url) = &self.config.turn_url {
            let (username, credential) = match &self.config.turn_secret {
                Some(secret) => {
                    let (u, c) = turn_credentials(secret, user_id, unix_now() + 24 * 3600);
                    (Some(u), Some(c))
                }
                None => (None, None),
            };
            servers.push(IceServer {
                urls: vec![url.clone()],
                username,
                credential,
            });
        }
        servers
    }
}

/// TURN REST API credentials: username `<expiry>:<user>`, password base64(HMAC-SHA1(secret, username)).
pub fn turn_credentials(secret: &str, user_id: &str, expiry: u64) -> (String, String) {
    use base64::Engine;
    use hmac::{KeyInit, Mac};
    let username = format!("{expiry}:{user_id}");
    let mut mac = hmac::Hmac::<sha1::Sha1>::new_from_slice(secret.as_bytes())
        .expect("HMAC takes any key length");
    mac.update(username.as_bytes());
    let credential = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    (username, credential)
}

pub fn app(state: AppState) -> Router {
    let mut api = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .route("/ws", get(ws))
        .merge(crate::api::routes())
        .merge(crate::whip::routes());
    if state.auth.dev_mode() {
        api = api.route("/api/dev/token", post(dev_token));
    }
    let metrics = state.metrics.clone();
    api.fallback(static_file)
        .layer(RequestBodyLimitLayer::new(MAX_BODY))
        .layer(axum::middleware::from_fn_with_state(
            metrics,
            metrics::track_http,
        ))
        .with_state(state)
}

async fn ws(State(state): State<AppState>, upgrade: WebSocketUpgrade) -> Response {
    let metrics = state.metrics.clone();
    upgrade
        .max_message_size(session::MAX_TRANSPORT_MESSAGE)
        .max_frame_size(session::MAX_TRANSPORT_MESSAGE)
        .on_upgrade(move |socket| async move {
            // Counted here rather than inside the session: the guard lives as long as it.
            let _open = metrics.ws_opened();
            session::run(socket, state).await
        })
}

/// Asks every media worker for its stats, each within `PROBE_TIMEOUT`.
async fn probe_workers(
    state: &AppState,
) -> Vec<Result<Result<crate::media::stats::WorkerStats, MediaError>, tokio::time::error::Elapsed>>
{
    let probes = state
        .workers
        .iter()
        .map(|w| tokio::time::timeout(PROBE_TIMEOUT, w.stats()));
    futures_util::future::join_all(probes).await
}

/// Readiness: every media worker answers a `Stats` command and the call store flushes, each
/// within `PROBE_TIMEOUT`. 503 with the usual error body otherwise.
async fn readyz(State(state): State<AppState>) -> Result<Json<serde_json::Value>, ApiError> {
    let not_ready = |message: String| {
        tracing::warn!(%message, "not ready");
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "not_ready", message)
    };
    let answers = probe_workers(&state).await;
    for (i, answer) in answers.into_iter().enumerate() {
        match answer {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(not_ready(format!("media worker {i}: {e}"))),
            Err(_) => {
                return Err(not_ready(format!(
                    "media worker {i} did not answer within {} ms",
                    PROBE_TIMEOUT.as_millis()
                )));
            }
        }
    }
    let store = state.store.clone();
    match tokio::time::timeout(
        PROBE_TIMEOUT,
        tokio::task::spawn_blocking(move || store.flush()),
    )
    .await
    {
        Ok(Ok(Ok(()))) => Ok(Json(serde_json::json!({"status": "ready"}))),
        Ok(Ok(Err(e))) => Err(not_ready(format!("call store: {e}"))),
        Ok(Err(e)) => Err(not_ready(format!("call store: {e}"))),
        Err(_) => Err(not_ready(format!(
            "call store did not answer within {} ms",
            PROBE_TIMEOUT.as_millis()
        ))),
    }
}

/// `/metrics`, Prometheus text format; behind `Authorization: Bearer` when `--metrics-token`
/// is set. A worker that does not answer within `PROBE_TIMEOUT` is left out of the sums (and
/// `switchboard_media_workers_up` falls).
async fn metrics_text(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    if let Some(token) = &state.config.metrics_token {
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        if !constant_time_eq(given.as_bytes(), token.as_bytes()) {
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "/metrics needs Authorization: Bearer <metrics token>",
            ));
        }
    }
    let answers = probe_workers(&state).await;
    let stats: Vec<_> = answers
        .into_iter()
        .filter_map(|a| a.ok().and_then(Result::ok))
        .collect();
    let body = state
        .metrics
        .render(&stats, state.workers.len(), &state.store.write_latency());
    Ok(([(header::CONTENT_TYPE, metrics::CONTENT_TYPE)], body).into_response())
}

/// Compares secrets without an early exit on the first differing byte.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// An API error: a stable code, a short message, a status.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, e.code(), e.to_string())
    }
}

impl From<MediaError> for ApiError {
    fn from(e: MediaError) -> Self {
        let status = match e {
            MediaError::RoomFull(_) | MediaError::NoOfferPending | MediaError::NothingToWatch => {
                StatusCode::CONFLICT
            }
            MediaError::NotJoined => StatusCode::NOT_FOUND,
            MediaError::Forbidden(_) => StatusCode::FORBIDDEN,
            MediaError::BadSdp(_) | MediaError::BadCandidate(_) => StatusCode::BAD_REQUEST,
            MediaError::Busy | MediaError::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
            MediaError::Gone => StatusCode::INTERNAL_SERVER_ERROR,
        };
        Self::new(status, e.code(), e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({"error": {"code": self.code, "message": self.message}});
        (self.status, Json(body)).into_response()
    }
}

/// Room names: 1 to 64 characters of `A-Z a-z 0-9 - _ .`.
pub fn valid_room(room: &str) -> bool {
    (1..=64).contains(&room.len())
        && room
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

#[derive(Deserialize)]
struct DevTokenRequest {
    name: String,
    room: String,
}

#[derive(Serialize)]
struct DevTokenResponse {
    token: String,
    user_id: String,
}

/// Whether a dev-mode token may go to a client at `peer` (the TCP peer, never a header): only
/// loopback clients, unless the server was started with `--dev-allow-remote`. An unknown peer
/// is refused, and so is a `proxied` request (one with a forwarding header): behind a reverse
/// proxy on the same host every client's peer is loopback. A header can only refuse, never
/// allow.
pub fn dev_token_allowed(
    peer: Option<std::net::IpAddr>,
    proxied: bool,
    allow_remote: bool,
) -> bool {
    let loopback = |ip: std::net::IpAddr| match ip {
        std::net::IpAddr::V4(v4) => v4.is_loopback(),
        std::net::IpAddr::V6(v6) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    };
    allow_remote || (!proxied && peer.is_some_and(loopback))
}

/// Headers a reverse proxy adds to say whom it forwards for.
const FORWARDING_HEADERS: [&str; 3] = ["forwarded", "x-forwarded-for", "x-real-ip"];

async fn dev_token(
    State(state): State<AppState>,
    peer: Option<axum::Extension<axum::extract::ConnectInfo<std::net::SocketAddr>>>,
    headers: HeaderMap,
    body: Result<Json<DevTokenRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<DevTokenResponse>, ApiError> {
    let peer = peer.map(|axum::Extension(axum::extract::ConnectInfo(addr))| addr.ip());
    let proxied = FORWARDING_HEADERS.iter().any(|h| headers.contains_key(*h));
    if !dev_token_allowed(peer, proxied, state.config.dev_allow_remote) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "dev_token_loopback_only",
            "dev mode hands out tokens only to clients on the server's own host; start it with \
             --dev-allow-remote to serve others, or set --jwt-secret and mint tokens yourself",
        ));
    }
    let Json(req) = body.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let name = req.name.trim();
    if name.is_empty() || name.chars().count() > 64 {
        return Err(ApiError::bad_request("name must be 1 to 64 characters"));
    }
    if !valid_room(&req.room) {
        return Err(ApiError::bad_request(
            "room must be 1 to 64 characters of A-Z a-z 0-9 - _ .",
        ));
    }
    let user_id = format!("u-{}", random_token(8));
    let token = state.auth.mint(&Claims {
        sub: user_id.clone(),
        name: name.to_owned(),
        exp: unix_now() + DEV_TOKEN_TTL_SECS,
        room: Some(req.room),
        can_publish: true,
        can_subscribe: true,
        admin: false,
    });
    Ok(Json(DevTokenResponse { token, user_id }))
}

#[derive(rust_embed::RustEmbed)]
#[folder = "web/"]
struct WebAssets;

async fn static_file(uri: Uri) -> Response {
    let path = uri.path().trim_start_matches('/');
    let path = if path.is_empty() { "index.html" } else { path };
    match WebAssets::get(path) {
        Some(file) => {
            let mime = mime_guess::from_path(path).first_or_octet_stream();
            (
                [
                    (header::CONTENT_TYPE, mime.as_ref().to_owned()),
                    (header::CACHE_CONTROL, "no-cache".to_owned()),
                ],
                file.data,
            )
                .into_response()
        }
        None => ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such page").into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn turn_credentials_follow_the_rest_api() {
        // Expected value from: printf '1700000000:alice' | openssl dgst -sha1 -hmac secret -binary | base64
        let (u, c) = turn_credentials("secret", "alice", 1_700_000_000);
        assert_eq!(u, "1700000000:alice");
        assert_eq!(c, "d8soP47RbdIKLDUOpnJPVQyq5Ts=");
    }

    #[test]
    fn token_comparison() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
        assert!(!constant_time_eq(b"", b"x"));
    }

    /// A media worker whose thread died (a panic that escaped it) makes `/readyz` fail: its
    /// command queue is disconnected, so the probe ends in `MediaError::Gone` at once.
    #[tokio::test]
    async fn readyz_fails_when_a_media_worker_died() {
        use axum::body::Body;
        use axum::http::Request;
        use clap::Parser;
        use tower::ServiceExt;

        let state = |workers: Vec<MediaHandle>, dir: &std::path::Path| AppState {
            config: Arc::new(Config::try_parse_from(["switchboard"]).unwrap()),
            auth: Auth::new(b"a-secret-for-the-readyz-test", false),
            workers: Arc::new(workers),
            store: CallStore::open(dir).unwrap(),
            metrics: Default::default(),
            calls: crate::api::Calls::new(10),
            whip: Default::default(),
        };
        let readyz = |state: AppState| async move {
            let request = Request::get("/readyz").body(Body::empty()).unwrap();
            let response = app(state).oneshot(request).await.unwrap();
            let status = response.status();
            let body = axum::body::to_bytes(response.into_body(), 1 << 16)
                .await
                .unwrap();
            (status, String::from_utf8_lossy(&body).into_owned())
        };

        // A live worker: ready.
        let (live, inbox) = crate::bridge::channel().unwrap();
        let (events, _events_rx) = tokio::sync::mpsc::channel(16);
        let (_addr, _thread) = crate::media::spawn(
            0,
            "127.0.0.1:0".parse().unwrap(),
            "127.0.0.1".parse().unwrap(),
            None,
            crate::media::Limits::default(),
            inbox,
            events,
        )
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let (status, body) = readyz(state(vec![live.clone()], dir.path())).await;
        assert_eq!(status, StatusCode::OK, "{body}");

        // A second worker whose thread panicked, taking its end of the queue with it.
        let (dead, inbox) = crate::bridge::channel().unwrap();
        let died = std::thread::spawn(move || {
            let _inbox = inbox;
            panic!("a media worker dies");
        })
        .join();
        assert!(died.is_err());
        let dir = tempfile::tempdir().unwrap();
        let started = std::time::Instant::now();
        let (status, body) = readyz(state(vec![live, dead], dir.path())).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        assert!(
            body.contains("not_ready") && body.contains("media worker 1"),
            "{body}"
        );
        assert!(started.elapsed() < PROBE_TIMEOUT, "no wait for the timeout");
    }

    #[test]
    fn dev_tokens_go_to_loopback_clients_unless_remote_is_allowed() {
        let ip = |s: &str| Some(s.parse::<std::net::IpAddr>().unwrap());
        for local in ["127.0.0.1", "127.0.0.2", "::1", "::ffff:127.0.0.1"] {
            assert!(dev_token_allowed(ip(local), false, false), "{local}");
            assert!(
                !dev_token_allowed(ip(local), true, false),
                "{local} through a proxy"
            );
            assert!(dev_token_allowed(ip(local), true, true));
        }
        for remote in [
            "198.18.0.1",
            "10.0.0.1",
            "0.0.0.0",
            "::ffff:198.18.0.1",
            "2001:db8::1",
        ] {
            assert!(!dev_token_allowed(ip(remote), false, false), "{remote}");
            assert!(dev_token_allowed(ip(remote), false, true), "{remote}");
        }
        assert!(
            !dev_token_allowed(None, false, false),
            "an unknown peer is not loopback"
        );
        assert!(dev_token_allowed(None, false, true));
    }

    #[test]
    fn room_names() {
        assert!(valid_room("standup-2024_a.b"));
        assert!(!valid_room(""));
        assert!(!valid_room("a b"));
        assert!(!valid_room(&"x".repeat(65)));
    }
}
