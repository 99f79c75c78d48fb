//! The call REST API (`/api/calls…`, `/api/ice-servers`), documented in `docs/api.md`.
//!
//! - `model`: the `Call` record and its status machines, pure;
//! - `calls`: the HTTP handlers (decide with `model`, write with `CallStore`, then notify);
//! - `live`: what is not stored: `/ws` sessions to notify, ring timers, the rate limit, and
//!   the consumer of the media plane's `MediaEvent`s.

pub mod calls;
pub mod live;
pub mod model;

use axum::Router;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::routing::{get, patch, post};

use crate::auth::{AuthError, Claims};
use crate::http::{ApiError, AppState};
use crate::store::StoreError;

pub use live::Calls;

/// Milliseconds since the Unix epoch: the unit of every time in a call record.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The routes of this module, to merge into the app.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/calls", post(calls::create).get(calls::list))
        .route("/api/calls/{id}", get(calls::get_one))
        .route("/api/calls/{id}/answer", post(calls::answer))
        .route("/api/calls/{id}/reject", post(calls::reject))
        .route("/api/calls/{id}/end", post(calls::end))
        .route("/api/calls/{id}/media", patch(calls::media))
        .route("/api/ice-servers", get(calls::ice_servers))
}

/// User ids: the rule `Auth::verify` applies to every token's `sub`.
pub use crate::auth::valid_user_id;

/// The authenticated caller of a request: `Authorization: Bearer <jwt>`.
pub struct Caller(pub Claims);

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let header = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        let claims = state.auth.verify_bearer(header)?;
        if !valid_user_id(&claims.sub) {
            return Err(AuthError::Invalid.into());
        }
        Ok(Caller(claims))
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        tracing::error!(error = %e, "call store");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "the call records cannot be read or written",
        )
    }
}

impl From<model::CallError> for ApiError {
    fn from(e: model::CallError) -> Self {
        let status = if e.is_forbidden() {
            StatusCode::FORBIDDEN
        } else {
            StatusCode::CONFLICT
        };
        ApiError::new(status, e.code(), e.to_string())
    }
}

/// Runs blocking store work off the async workers.
pub async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(work).await.map_err(|e| {
        tracing::error!(error = %e, "blocking store task failed");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error",
        )
    })?
}
