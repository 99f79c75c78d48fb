//! The HTTP handlers of `/api/calls…` and `/api/ice-servers`. Each one decides with
//! `model::CallState`, writes (and flushes) with `CallStore`, and only then answers and
//! notifies.

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::model::{CallMedia, CallState, CallStatus, CallType, NewCall};
use super::{Caller, blocking, live, now_ms, valid_user_id};
use crate::auth::{Claims, random_token, unix_now};
use crate::config::MAX_ROOM_SIZE;
use crate::http::{ApiError, AppState};
use crate::signal::protocol::MediaState;

/// How long the join token handed out with a call lives.
pub const CALL_TOKEN_TTL_SECS: u64 = 12 * 3600;
/// Longest call title, in characters.
const MAX_TITLE: usize = 200;
/// Largest page of history.
const MAX_LIMIT: usize = 100;
const DEFAULT_LIMIT: usize = 20;

#[derive(Deserialize)]
pub struct CreateCall {
    #[serde(rename = "type")]
    kind: CallType,
    media: CallMedia,
    invitees: Vec<String>,
    #[serde(default)]
    title: String,
    #[serde(default)]
    max_participants: Option<usize>,
}

#[derive(Deserialize)]
pub struct MediaPatch {
    audio: Option<bool>,
    video: Option<bool>,
    screen: Option<bool>,
}

fn body<T>(body: Result<Json<T>, JsonRejection>) -> Result<T, ApiError> {
    body.map(|Json(b)| b)
        .map_err(|e| ApiError::bad_request(e.body_text()))
}

/// Call ids are 32 lowercase hex digits.
fn call_id(id: &str) -> Result<String, ApiError> {
    if id.len() == 32
        && id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        Ok(id.to_owned())
    } else {
        Err(ApiError::bad_request(
            "a call id is 32 lowercase hex digits",
        ))
    }
}

fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such call")
}

fn forbidden(message: &str) -> ApiError {
    ApiError::new(StatusCode::FORBIDDEN, "forbidden", message)
}

/// A token for `user` to enter the call's room.
fn join_token(state: &AppState, user: &Claims, room: &str) -> String {
    state.auth.mint(&Claims {
        sub: user.sub.clone(),
        name: user.name.clone(),
        exp: unix_now() + CALL_TOKEN_TTL_SECS,
        room: Some(room.to_owned()),
        can_publish: true,
        can_subscribe: true,
        admin: false,
    })
}

fn validate(req: CreateCall, creator: &Claims, config_max: usize) -> Result<NewCall, ApiError> {
    let title = req.title.trim().to_owned();
    if title.chars().count() > MAX_TITLE {
        return Err(ApiError::bad_request(format!(
            "title must be at most {MAX_TITLE} characters"
        )));
    }
    let mut seen = HashSet::new();
    for user in &req.invitees {
        if !valid_user_id(user) {
            return Err(ApiError::bad_request(
                "each invitee is a user id of 1 to 128 characters",
            ));
        }
        if *user == creator.sub {
            return Err(ApiError::bad_request(
                "the creator cannot invite themselves",
            ));
        }
        if !seen.insert(user.as_str()) {
            return Err(ApiError::bad_request(format!(
                "invitee {user:?} is listed twice"
            )));
        }
    }
    let max_participants = match req.kind {
        CallType::OneToOne => {
            if req.invitees.len() != 1 {
                return Err(ApiError::bad_request(
                    "a one-to-one call has exactly one invitee",
                ));
            }
            if req.max_participants.is_some_and(|m| m != 2) {
                return Err(ApiError::bad_request(
                    "a one-to-one call has max_participants 2",
                ));
            }
            2
        }
        CallType::Group => {
            if req.invitees.is_empty() {
                return Err(ApiError::bad_request(
                    "a group call needs at least one invitee",
                ));
            }
            let max = req.max_participants.unwrap_or(config_max);
            if !(2..=MAX_ROOM_SIZE).contains(&max) {
                return Err(ApiError::bad_request(format!(
                    "max_participants must be from 2 to {MAX_ROOM_SIZE}"
                )));
            }
            if req.invitees.len() + 1 > max {
                return Err(ApiError::bad_request(format!(
                    "{} invitees and the creator do not fit in max_participants {max}",
                    req.invitees.len()
                )));
            }
            max
        }
    };
    Ok(NewCall {
        id: uuid::Uuid::new_v4().simple().to_string(),
        room: format!("call-{}", random_token(16)),
        kind: req.kind,
        media: req.media,
        title,
        creator: creator.sub.clone(),
        creator_name: if creator.name.is_empty() {
            creator.sub.clone()
        } else {
            creator.name.clone()
        },
        invitees: req.invitees,
        max_participants,
    })
}

/// `POST /api/calls`: 201 with the call, the creator's join token and the ICE servers.
pub async fn create(
    State(state): State<AppState>,
    Caller(claims): Caller,
    req: Result<Json<CreateCall>, JsonRejection>,
) -> Result<Response, ApiError> {
    let req = body(req)?;
    let new = validate(
        req,
        &claims,
        state.config.max_participants.clamp(2, MAX_ROOM_SIZE),
    )?;
    if let Err(wait) = state.calls.allow_creation(&claims.sub, Instant::now()) {
        let secs = wait.as_secs().max(1);
        let mut response = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            format!("too many calls created; try again in {secs} s"),
        )
        .into_response();
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        return Ok(response);
    }
    let now = now_ms();
    let mut call = CallState::new(new, now);
    // Invitees with a /ws session are rung as the call is stored.
    let online: Vec<String> = call
        .invitees()
        .filter(|p| state.calls.is_online(&p.user_id))
        .map(|p| p.user_id.clone())
        .collect();
    for user in &online {
        call.mark_ringing(user, now);
    }
    let store = state.store.clone();
    let stored = call.clone();
    blocking(move || Ok(store.create(&stored)?)).await?;
    tracing::info!(call = %call.call.id, creator = %claims.sub, invitees = call.participants.len() - 1, "call created");
    live::announce(&state, &call);
    let token = join_token(&state, &claims, &call.call.room);
    let body = json!({
        "call": call,
        "token": token,
        "ice_servers": state.ice_servers(&claims.sub),
    });
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

/// Reads a call the caller may see (creator, invitee, or admin).
async fn load(state: &AppState, id: &str, claims: &Claims) -> Result<CallState, ApiError> {
    let id = call_id(id)?;
    let store = state.store.clone();
    let call = blocking(move || Ok(store.get(&id)?))
        .await?
        .ok_or_else(not_found)?;
    if !claims.admin && !call.is_member(&claims.sub) {
        return Err(forbidden(
            "only the creator and the invitees can see this call",
        ));
    }
    Ok(call)
}

/// `GET /api/calls/{id}`.
pub async fn get_one(
    State(state): State<AppState>,
    Caller(claims): Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let call = load(&state, &id, &claims).await?;
    Ok(Json(json!({ "call": call })))
}

/// Applies `op` to the call as `claims` and writes it; the call after, and the stays that were
/// open before (to empty the room if the call ended).
async fn change(
    state: &AppState,
    id: &str,
    claims: &Claims,
    op: impl FnOnce(&mut CallState, u64) -> Result<(), ApiError> + Send + 'static,
) -> Result<(CallState, Vec<String>), ApiError> {
    let id = call_id(id)?;
    let store = state.store.clone();
    let user = claims.sub.clone();
    let admin = claims.admin;
    let now = now_ms();
    blocking(move || {
        store.update(&id, |c| {
            if !admin && !c.is_member(&user) {
                return Err(forbidden("you are not a participant of this call"));
            }
            let stays = c.open_stays();
            op(c, now)?;
            Ok((c.clone(), stays))
        })
    })
    .await?
    .ok_or_else(not_found)
}

/// Notifies and empties the room when `call` has just ended.
fn after(state: &AppState, before: CallStatus, call: &CallState, stays: Vec<String>) {
    if !before.is_over() && call.call.status.is_over() {
        live::ended(state, call, stays);
    }
}

/// `POST /api/calls/{id}/answer`: the invitee's join token.
pub async fn answer(
    State(state): State<AppState>,
    Caller(claims): Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let user = claims.sub.clone();
    let name = claims.name.clone();
    let (call, _) = change(&state, &id, &claims, move |c, now| {
        c.answer(&user, now)?;
        if let Some(p) = c.participants.iter_mut().find(|p| p.user_id == user)
            && !name.is_empty()
        {
            p.name = name;
        }
        Ok(())
    })
    .await?;
    let token = join_token(&state, &claims, &call.call.room);
    Ok(Json(json!({
        "call": call,
        "token": token,
        "ice_servers": state.ice_servers(&claims.sub),
    })))
}

/// `POST /api/calls/{id}/reject`.
pub async fn reject(
    State(state): State<AppState>,
    Caller(claims): Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let user = claims.sub.clone();
    let (call, stays) = change(
        &state,
        &id,
        &claims,
        move |c, now| Ok(c.reject(&user, now)?),
    )
    .await?;
    after(&state, CallStatus::Ringing, &call, stays);
    Ok(Json(json!({ "call": call })))
}

/// `POST /api/calls/{id}/end`: the creator or an admin ends the call for everyone.
pub async fn end(
    State(state): State<AppState>,
    Caller(claims): Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let user = claims.sub.clone();
    let admin = claims.admin;
    let (call, stays) = change(&state, &id, &claims, move |c, now| {
        if !admin && c.call.created_by != user {
            return Err(forbidden(
                "only the creator or an admin can end the call for everyone",
            ));
        }
        Ok(c.end(&user, now)?)
    })
    .await?;
    tracing::info!(call = %call.call.id, by = %claims.sub, "call ended");
    after(&state, CallStatus::Active, &call, stays);
    Ok(Json(json!({ "call": call })))
}

/// `PATCH /api/calls/{id}/media`: the caller's own mute state.
pub async fn media(
    State(state): State<AppState>,
    Caller(claims): Caller,
    Path(id): Path<String>,
    req: Result<Json<MediaPatch>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let patch = body(req)?;
    if patch.audio.is_none() && patch.video.is_none() && patch.screen.is_none() {
        return Err(ApiError::bad_request(
            "give at least one of audio, video, screen",
        ));
    }
    let user = claims.sub.clone();
    let (call, _) = change(&state, &id, &claims, move |c, now| {
        let Some(p) = c.participant(&user) else {
            return Err(forbidden("you are not a participant of this call"));
        };
        let state = MediaState {
            audio: patch.audio.unwrap_or(p.media.audio),
            video: patch.video.unwrap_or(p.media.video),
            screen: patch.screen.unwrap_or(p.media.screen),
        };
        Ok(c.set_media(&user, state, "api", now)?)
    })
    .await?;
    Ok(Json(json!({ "call": call })))
}

/// `GET /api/calls?status=&page=&limit=`: the caller's calls, newest first.
pub async fn list(
    State(state): State<AppState>,
    Caller(claims): Caller,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    let status = match query.get("status").map(String::as_str) {
        None | Some("") => None,
        Some(s) => Some(CallStatus::parse(s).ok_or_else(|| {
            ApiError::bad_request(
                "status must be one of initiated, ringing, active, ended, missed, rejected, failed",
            )
        })?),
    };
    let number = |key: &str, default: usize, max: usize| -> Result<usize, ApiError> {
        match query.get(key) {
            None => Ok(default),
            Some(v) => v
                .parse::<usize>()
                .ok()
                .filter(|n| (1..=max).contains(n))
                .ok_or_else(|| {
                    ApiError::bad_request(format!("{key} must be a whole number from 1 to {max}"))
                }),
        }
    };
    let page = number("page", 1, 1_000_000)?;
    let limit = number("limit", DEFAULT_LIMIT, MAX_LIMIT)?;
    let store = state.store.clone();
    let user = claims.sub.clone();
    let found = blocking(move || Ok(store.history(&user, status, page, limit)?)).await?;
    Ok(Json(json!({
        "calls": found.calls,
        "page": page,
        "limit": limit,
        "total": found.total,
    })))
}

/// `GET /api/ice-servers`.
pub async fn ice_servers(State(state): State<AppState>, Caller(claims): Caller) -> Json<Value> {
    Json(json!({ "ice_servers": state.ice_servers(&claims.sub) }))
}

#[cfg(test)]
mod tests {
    //! The handlers through the router, without a server (no media worker runs: nothing here
    //! needs one).
    use std::sync::Arc;

    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use clap::Parser;
    use serde_json::{Value, json};
    use tower::ServiceExt;

    use crate::auth::{Auth, Claims, unix_now};
    use crate::config::Config;
    use crate::http::{AppState, app};
    use crate::store::CallStore;

    const SECRET: &[u8] = b"unit-test-secret-0123456789";

    fn token(user: &str) -> String {
        Auth::new(SECRET, false).mint(&Claims {
            sub: user.into(),
            name: user.into(),
            exp: unix_now() + 60,
            room: None,
            can_publish: true,
            can_subscribe: true,
            admin: false,
        })
    }

    async fn call(
        state: &AppState,
        method: &str,
        uri: &str,
        user: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut request = Request::builder().method(method).uri(uri);
        if let Some(user) = user {
            request = request.header("authorization", format!("Bearer {}", token(user)));
        }
        let request = request
            .header("content-type", "application/json")
            .body(Body::from(body.map(|b| b.to_string()).unwrap_or_default()))
            .unwrap();
        let response = app(state.clone()).oneshot(request).await.unwrap();
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    #[tokio::test]
    async fn create_answer_end_through_the_router() {
        let dir = tempfile::tempdir().unwrap();
        let (handle, _inbox) = crate::bridge::channel().unwrap();
        let config = Config::try_parse_from(["switchboard", "--call-rate-limit", "2"]).unwrap();
        let state = AppState {
            config: Arc::new(config),
            auth: Auth::new(SECRET, false),
            workers: Arc::new(vec![handle]),
            store: CallStore::open(dir.path()).unwrap(),
            metrics: Default::default(),
            calls: super::super::Calls::new(2),
            whip: Default::default(),
        };
        let body = json!({"type": "one-to-one", "media": "audio", "invitees": ["bob"]});
        let (status, created) = call(&state, "POST", "/api/calls", None, Some(body.clone())).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(created["error"]["code"], "unauthorized");

        let (status, created) = call(
            &state,
            "POST",
            "/api/calls",
            Some("ann"),
            Some(body.clone()),
        )
        .await;
        assert_eq!(status, StatusCode::CREATED, "{created}");
        let id = created["call"]["id"].as_str().unwrap();
        let minted = Auth::new(SECRET, false)
            .verify(created["token"].as_str().unwrap())
            .unwrap();
        assert_eq!(minted.sub, "ann");
        assert_eq!(minted.room.as_deref(), created["call"]["room"].as_str());

        let (status, answered) = call(
            &state,
            "POST",
            &format!("/api/calls/{id}/answer"),
            Some("bob"),
            None,
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{answered}");
        let (status, ended) = call(
            &state,
            "POST",
            &format!("/api/calls/{id}/end"),
            Some("ann"),
            None,
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{ended}");
        assert_eq!(ended["call"]["end_reason"], "cancelled");
        let (status, again) = call(
            &state,
            "POST",
            &format!("/api/calls/{id}/end"),
            Some("ann"),
            None,
        )
        .await;
        assert_eq!(status, StatusCode::CONFLICT);
        assert_eq!(again["error"]["code"], "call_over");

        let (status, _) = call(
            &state,
            "POST",
            "/api/calls",
            Some("ann"),
            Some(body.clone()),
        )
        .await;
        assert_eq!(status, StatusCode::CREATED);
        let (status, limited) = call(&state, "POST", "/api/calls", Some("ann"), Some(body)).await;
        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(limited["error"]["code"], "rate_limited");
    }
}
