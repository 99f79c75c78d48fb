//! WHIP (RFC 9725) and WHEP: publish into a room, or watch it, with one HTTP request.
//!
//! A WHIP publisher is a participant with a publish connection only; a WHEP viewer is one with
//! a subscribe connection only, answered from the viewer's own offer. Both use the room
//! machinery of the media plane like any other participant.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde::Deserialize;
use tokio::sync::mpsc;
use tracing::info;

use crate::auth::{Claims, random_token};
use crate::bridge::{
    Command, JoinRequest, LeaveReason, MediaError, MediaHandle, PARTICIPANT_QUEUE, SessionKind,
};
use crate::http::{ApiError, AppState, valid_room};
use crate::signal::protocol::{CandidateInit, PcKind, ServerMessage};

const SDP: &str = "application/sdp";
const SDPFRAG: &str = "application/trickle-ice-sdpfrag";
/// Seconds a client should wait before retrying when the media worker is overloaded.
const RETRY_AFTER_SECS: &str = "2";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Whip,
    Whep,
}

impl Kind {
    fn path(self) -> &'static str {
        match self {
            Kind::Whip => "whip",
            Kind::Whep => "whep",
        }
    }
}

struct Session {
    kind: Kind,
    room: String,
    participant_id: String,
    media: MediaHandle,
    etag: String,
}

/// Live WHIP/WHEP sessions by their unguessable id (the last segment of `Location`).
#[derive(Default)]
pub struct Sessions {
    by_id: Mutex<HashMap<String, Session>>,
}

impl Sessions {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Session>> {
        // A panic while holding this lock leaves plain data behind; keep serving.
        self.by_id.lock().unwrap_or_else(|e| e.into_inner())
    }
}

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/whip/{room}", post(whip).options(preflight))
        .route("/whep/{room}", post(whep).options(preflight))
        .route(
            "/whip/{room}/{session}",
            axum::routing::patch(patch)
                .delete(delete)
                .options(preflight),
        )
        .route(
            "/whep/{room}/{session}",
            axum::routing::patch(patch)
                .delete(delete)
                .options(preflight),
        )
}

fn cors(headers: &mut HeaderMap) {
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    headers.insert(
        header::ACCESS_CONTROL_EXPOSE_HEADERS,
        HeaderValue::from_static("Location, ETag, Link, Accept-Patch, Retry-After"),
    );
}

async fn preflight() -> Response {
    let mut headers = HeaderMap::new();
    cors(&mut headers);
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("POST, PATCH, DELETE, OPTIONS"),
    );
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static("Authorization, Content-Type, If-Match"),
    );
    headers.insert("accept-post", HeaderValue::from_static(SDP));
    headers.insert("accept-patch", HeaderValue::from_static(SDPFRAG));
    (StatusCode::NO_CONTENT, headers).into_response()
}

fn with_cors(mut response: Response) -> Response {
    cors(response.headers_mut());
    response
}

fn media_error(e: MediaError) -> Response {
    let busy = matches!(e, MediaError::Busy);
    let status_override = matches!(e, MediaError::BadSdp(_)).then_some(StatusCode::BAD_REQUEST);
    let mut err = ApiError::from(e);
    if let Some(s) = status_override {
        err.status = s;
    }
    let mut response = err.into_response();
    if busy {
        response.headers_mut().insert(
            header::RETRY_AFTER,
            HeaderValue::from_static(RETRY_AFTER_SECS),
        );
    }
    with_cors(response)
}

fn content_type_is(headers: &HeaderMap, expected: &str) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case(expected))
}

/// Checks what every POST needs: the media type, a token granting the room and the direction,
/// and an offer of at most one audio and one video section. Returns the claims and the offer.
fn admit(
    state: &AppState,
    kind: Kind,
    headers: &HeaderMap,
    room: &str,
    body: &Bytes,
) -> Result<(Claims, String), ApiError> {
    if !content_type_is(headers, SDP) {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "send an application/sdp offer",
        ));
    }
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let claims = state.auth.verify_bearer(bearer)?;
    if !valid_room(room) {
        return Err(ApiError::bad_request(
            "room must be 1 to 64 characters of A-Z a-z 0-9 - _ .",
        ));
    }
    let forbidden = |why: &str| ApiError::new(StatusCode::FORBIDDEN, "forbidden", why);
    if !claims.grants_room(room) {
        return Err(forbidden("this token does not grant that room"));
    }
    match kind {
        Kind::Whip if !claims.can_publish => return Err(forbidden("this token may not publish")),
        Kind::Whep if !claims.can_subscribe => {
            return Err(forbidden("this token may not subscribe"));
        }
        _ => {}
    }
    let sdp = std::str::from_utf8(body)
        .ok()
        .filter(|s| !s.trim().is_empty())
        .ok_or_else(|| ApiError::bad_request("the body must be an SDP offer"))?;
    let (audio, video, other) = crate::media::peer::media_sections(sdp);
    if audio > 1 || video > 1 || other > 0 || audio + video == 0 {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "unsupported_offer",
            "an offer may carry at most one audio and one video section",
        ));
    }
    Ok((claims, sdp.to_owned()))
}

async fn whip(
    State(state): State<AppState>,
    Path(room): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    match admit(&state, Kind::Whip, &headers, &room, &body) {
        Ok((claims, sdp)) => open_session(state, Kind::Whip, room, claims, sdp, None).await,
        Err(e) => with_cors(e.into_response()),
    }
}

#[derive(Deserialize)]
struct WhepQuery {
    /// Watch this participant instead of the room's first publisher of video.
    participant: Option<String>,
}

async fn whep(
    State(state): State<AppState>,
    Path(room): Path<String>,
    Query(query): Query<WhepQuery>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    match admit(&state, Kind::Whep, &headers, &room, &body) {
        Ok((claims, sdp)) => {
            open_session(state, Kind::Whep, room, claims, sdp, query.participant).await
        }
        Err(e) => with_cors(e.into_response()),
    }
}

/// Joins the room as a publish-only (WHIP) or subscribe-only (WHEP) participant and answers
/// the offer. On any failure the participant is removed again: nothing is left half-made.
async fn open_session(
    state: AppState,
    kind: Kind,
    room: String,
    claims: Claims,
    sdp: String,
    pin: Option<String>,
) -> Response {
    // A call's room admits its creator and invitees (and admins), up to the call's size.
    let max_participants = match crate::api::live::admit(&state, &room, &claims).await {
        Ok(Some(max)) => max.min(state.config.max_participants),
        Ok(None) => state.config.max_participants,
        Err(e) => return with_cors(e.into_response()),
    };
    let media = state.worker_for(&room).clone();
    let (events_tx, events) = mpsc::channel(PARTICIPANT_QUEUE);
    let request = JoinRequest {
        room: room.clone(),
        user_id: claims.sub.clone(),
        name: if claims.name.is_empty() {
            format!("{} {}", kind.path().to_uppercase(), claims.sub)
        } else {
            claims.name.clone()
        },
        can_publish: kind == Kind::Whip,
        can_subscribe: false,
        max_participants,
        kind: match kind {
            Kind::Whip => SessionKind::Whip,
            Kind::Whep => SessionKind::Whep,
        },
    };
    let joined = match media
        .request(|reply| Command::Join {
            request,
            events: events_tx,
            reply,
        })
        .await
    {
        Ok(j) => j,
        Err(e) => return media_error(e),
    };
    let participant_id = joined.participant_id;
    let answer = match kind {
        Kind::Whip => {
            let pid = participant_id.clone();
            media
                .request(|reply| Command::PublishOffer {
                    participant_id: pid,
                    sdp,
                    sources: HashMap::new(),
                    reply,
                })
                .await
        }
        Kind::Whep => {
            let pid = participant_id.clone();
            media
                .request(|reply| Command::Watch {
                    participant_id: pid,
                    sdp,
                    pin,
                    reply,
                })
                .await
        }
    };
    let answer = match answer {
        Ok(a) => a,
        Err(e) => {
            let _ = media.send(Command::Leave {
                participant_id,
                reason: LeaveReason::Left,
            });
            return media_error(e);
        }
    };

    let id = random_token(16);
    let etag = format!("\"{}\"", random_token(8));
    state.whip.lock().insert(
        id.clone(),
        Session {
            kind,
            room: room.clone(),
            participant_id: participant_id.clone(),
            media,
            etag: etag.clone(),
        },
    );
    tokio::spawn(follow(
        state.whip.clone(),
        id.clone(),
        participant_id.clone(),
        events,
    ));
    info!(%room, participant = %participant_id, kind = kind.path(), "session opened");

    let mut headers = HeaderMap::new();
    cors(&mut headers);
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(SDP));
    let location = format!("/{}/{}/{}", kind.path(), room, id);
    if let Ok(v) = HeaderValue::from_str(&location) {
        headers.insert(header::LOCATION, v);
    }
    if let Ok(v) = HeaderValue::from_str(&etag) {
        headers.insert(header::ETAG, v);
    }
    headers.insert("accept-patch", HeaderValue::from_static(SDPFRAG));
    for server in state.ice_servers(&claims.sub) {
        for url in &server.urls {
            let mut link = format!("<{url}>; rel=\"ice-server\"");
            if let (Some(u), Some(c)) = (&server.username, &server.credential) {
                link.push_str(&format!(
                    "; username=\"{u}\"; credential=\"{c}\"; credential-type=\"password\""
                ));
            }
            if let Ok(v) = HeaderValue::from_str(&link) {
                headers.append(header::LINK, v);
            }
        }
    }
    (StatusCode::CREATED, headers, answer).into_response()
}

/// Drains a session's participant messages; forgets the session once the media plane
/// removed its participant (ICE timeout, room closed).
async fn follow(
    sessions: Arc<Sessions>,
    id: String,
    participant_id: String,
    mut events: mpsc::Receiver<ServerMessage>,
) {
    while let Some(msg) = events.recv().await {
        let gone = matches!(&msg, ServerMessage::ParticipantLeft { participant_id: p, .. } if *p == participant_id)
            || matches!(msg, ServerMessage::ServerShutdown);
        if gone {
            break;
        }
    }
    sessions.lock().remove(&id);
}

fn find(
    state: &AppState,
    kind: Kind,
    room: &str,
    id: &str,
) -> Option<(String, MediaHandle, String)> {
    let sessions = state.whip.lock();
    let s = sessions
        .get(id)
        .filter(|s| s.kind == kind && s.room == room)?;
    Some((s.participant_id.clone(), s.media.clone(), s.etag.clone()))
}

fn kind_of(path: &str) -> Kind {
    if path.starts_with("/whep") {
        Kind::Whep
    } else {
        Kind::Whip
    }
}

async fn delete(
    State(state): State<AppState>,
    Path((room, id)): Path<(String, String)>,
    uri: axum::http::Uri,
) -> Response {
    let kind = kind_of(uri.path());
    let Some((participant_id, media, _)) = find(&state, kind, &room, &id) else {
        return with_cors(
            ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such session").into_response(),
        );
    };
    state.whip.lock().remove(&id);
    match media.send(Command::Leave {
        participant_id,
        reason: LeaveReason::Left,
    }) {
        Ok(()) => with_cors(StatusCode::OK.into_response()),
        Err(e) => media_error(e),
    }
}

async fn patch(
    State(state): State<AppState>,
    Path((room, id)): Path<(String, String)>,
    method: Method,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    debug_assert_eq!(method, Method::PATCH);
    let kind = kind_of(uri.path());
    let Some((participant_id, media, etag)) = find(&state, kind, &room, &id) else {
        return with_cors(
            ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such session").into_response(),
        );
    };
    if !content_type_is(&headers, SDPFRAG) {
        return with_cors(
            ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "send application/trickle-ice-sdpfrag",
            )
            .into_response(),
        );
    }
    let Some(if_match) = headers.get(header::IF_MATCH).and_then(|v| v.to_str().ok()) else {
        return with_cors(
            ApiError::new(
                StatusCode::PRECONDITION_REQUIRED,
                "precondition_required",
                "send If-Match with the session's ETag",
            )
            .into_response(),
        );
    };
    let pc = match kind {
        Kind::Whip => PcKind::Publish,
        Kind::Whep => PcKind::Subscribe,
    };
    let frag = String::from_utf8_lossy(&body);
    if if_match.trim() == "*" {
        return restart(&state, &id, &participant_id, &media, pc, &frag).await;
    }
    if if_match.trim() != etag {
        return with_cors(
            ApiError::new(
                StatusCode::PRECONDITION_FAILED,
                "precondition_failed",
                "the ETag does not match this session",
            )
            .into_response(),
        );
    }
    // Checked here, before one command per candidate reaches the worker; the worker counts
    // each connection's candidates over all PATCHes (`--max-remote-candidates`).
    let candidates = trickle_candidates(&frag);
    let limit = state.config.max_remote_candidates;
    if candidates.len() > limit {
        return media_error(MediaError::BadCandidate(format!(
            "a connection takes at most {limit} remote candidates; this fragment has {}",
            candidates.len()
        )));
    }
    for candidate in candidates {
        let pid = participant_id.clone();
        if let Err(e) = media
            .request(|reply| Command::Candidate {
                participant_id: pid,
                pc,
                candidate,
                reply,
            })
            .await
        {
            return media_error(e);
        }
    }
    with_cors(StatusCode::NO_CONTENT.into_response())
}

/// An ICE restart (RFC 9725 §4.3.2): the client's new credentials in, the server's fragment
/// out with a new ETag.
async fn restart(
    state: &AppState,
    id: &str,
    participant_id: &str,
    media: &MediaHandle,
    pc: PcKind,
    frag: &str,
) -> Response {
    let value = |prefix: &str| {
        frag.lines()
            .map(str::trim)
            .find_map(|l| l.strip_prefix(prefix))
            .map(str::to_owned)
    };
    let (Some(ufrag), Some(pwd)) = (value("a=ice-ufrag:"), value("a=ice-pwd:")) else {
        return with_cors(
            ApiError::bad_request("an ICE restart needs a=ice-ufrag and a=ice-pwd").into_response(),
        );
    };
    let participant_id = participant_id.to_owned();
    let answer = media
        .request(|reply| Command::RestartIce {
            participant_id,
            pc,
            ufrag,
            pwd,
            reply,
        })
        .await;
    let answer = match answer {
        Ok(a) => a,
        Err(e) => return media_error(e),
    };
    let etag = format!("\"{}\"", random_token(8));
    if let Some(session) = state.whip.lock().get_mut(id) {
        session.etag = etag.clone();
    }
    let mut headers = HeaderMap::new();
    cors(&mut headers);
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(SDPFRAG));
    if let Ok(v) = HeaderValue::from_str(&etag) {
        headers.insert(header::ETAG, v);
    }
    (StatusCode::OK, headers, answer).into_response()
}

/// The candidates of a trickle-ice-sdpfrag (RFC 8840), each with the `a=mid` before it.
pub(crate) fn trickle_candidates(frag: &str) -> Vec<CandidateInit> {
    let mut mid = None;
    let mut ufrag = None;
    let mut out = Vec::new();
    for line in frag.lines().map(str::trim) {
        if let Some(m) = line.strip_prefix("a=mid:") {
            mid = Some(m.to_owned());
        } else if let Some(u) = line.strip_prefix("a=ice-ufrag:") {
            ufrag = Some(u.to_owned());
        } else if let Some(c) = line.strip_prefix("a=candidate:") {
            out.push(CandidateInit {
                candidate: format!("candidate:{c}"),
                sdp_mid: mid.clone(),
                sdp_mline_index: None,
                username_fragment: ufrag.clone(),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_candidates_from_an_sdpfrag() {
        let frag = "a=ice-ufrag:EsAw\r\na=ice-pwd:P2uYro0UCOQ4zxjKXaWCBui1\r\nm=audio 9 RTP/AVP 0\r\na=mid:0\r\n\
                    a=candidate:1387637174 1 udp 2122260223 192.0.2.1 61764 typ host generation 0\r\n\
                    a=end-of-candidates\r\n";
        let c = trickle_candidates(frag);
        assert_eq!(c.len(), 1);
        assert_eq!(
            c[0].candidate,
            "candidate:1387637174 1 udp 2122260223 192.0.2.1 61764 typ host generation 0"
        );
        assert_eq!(c[0].sdp_mid.as_deref(), Some("0"));
        assert_eq!(c[0].username_fragment.as_deref(), Some("EsAw"));
        assert!(trickle_candidates("garbage").is_empty());
    }

    #[test]
    fn overload_is_503_with_retry_after() {
        let r = media_error(MediaError::Busy);
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            r.headers().get(header::RETRY_AFTER).unwrap(),
            RETRY_AFTER_SECS
        );
        assert_eq!(
            r.headers()
                .get(header::ACCESS_CONTROL_ALLOW_ORIGIN)
                .unwrap(),
            "*"
        );
        assert_eq!(
            media_error(MediaError::BadSdp("x".into())).status(),
            StatusCode::BAD_REQUEST
        );
    }
}
