//! The live side of calls, kept in memory: which users have a `/ws` session (to send
//! `call_incoming` and `call_ended`), which calls are still ringing, the ring timers, the
//! per-user rate limit of call creation, and the consumer of the media plane's events.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use super::model::{CallError, CallState, ParticipantStatus, Quality, RingOutcome, Role};
use super::{blocking, now_ms};
use crate::auth::Claims;
use crate::bridge::{Command, LeaveReason, MediaEvent};
use crate::http::{ApiError, AppState};
use crate::signal::protocol::ServerMessage;

/// How many call notifications may wait for one `/ws` session.
pub const NOTIFY_QUEUE: usize = 64;
/// The window of the call-creation rate limit.
const RATE_WINDOW: Duration = Duration::from_secs(60);

/// Shared by every request and session; cheap to clone.
#[derive(Clone)]
pub struct Calls {
    inner: Arc<Inner>,
}

struct Inner {
    /// Calls one user may create per minute.
    rate_per_minute: usize,
    created: Mutex<HashMap<String, VecDeque<Instant>>>,
    sessions: Mutex<HashMap<String, Vec<Session>>>,
    next_session: AtomicU64,
    /// Calls still ringing → their invitees, to ring a user who connects late.
    ringing: Mutex<HashMap<String, Vec<String>>>,
}

/// One `/ws` session: its id and its queue of notifications.
type Session = (u64, mpsc::Sender<ServerMessage>);

fn locked<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Every critical section here is a plain map update that cannot panic half-way.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Unregisters a `/ws` session when dropped.
pub struct SessionGuard {
    calls: Calls,
    user: String,
    id: u64,
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        let mut sessions = locked(&self.calls.inner.sessions);
        if let Some(list) = sessions.get_mut(&self.user) {
            list.retain(|(id, _)| *id != self.id);
            if list.is_empty() {
                sessions.remove(&self.user);
            }
        }
    }
}

impl Calls {
    pub fn new(rate_per_minute: usize) -> Self {
        Self {
            inner: Arc::new(Inner {
                rate_per_minute,
                created: Mutex::default(),
                sessions: Mutex::default(),
                next_session: AtomicU64::new(1),
                ringing: Mutex::default(),
            }),
        }
    }

    /// Counts a call creation by `user`; `Err(retry after)` when over the limit.
    pub fn allow_creation(&self, user: &str, now: Instant) -> Result<(), Duration> {
        let mut created = locked(&self.inner.created);
        // Forget users whose window is empty, so the map does not grow without bound.
        created.retain(|_, times| {
            while times
                .front()
                .is_some_and(|t| now.duration_since(*t) >= RATE_WINDOW)
            {
                times.pop_front();
            }
            !times.is_empty()
        });
        let times = created.entry(user.to_owned()).or_default();
        if times.len() >= self.inner.rate_per_minute {
            let oldest = *times.front().expect("non-empty: len >= limit >= 1");
            return Err(RATE_WINDOW.saturating_sub(now.duration_since(oldest)));
        }
        times.push_back(now);
        Ok(())
    }

    /// Registers an authenticated `/ws` session of `user` for call notifications.
    pub fn register(&self, user: &str, tx: mpsc::Sender<ServerMessage>) -> SessionGuard {
        let id = self.inner.next_session.fetch_add(1, Ordering::Relaxed);
        locked(&self.inner.sessions)
            .entry(user.to_owned())
            .or_default()
            .push((id, tx));
        SessionGuard {
            calls: self.clone(),
            user: user.to_owned(),
            id,
        }
    }

    pub fn is_online(&self, user: &str) -> bool {
        locked(&self.inner.sessions).contains_key(user)
    }

    /// Sends `msg` to every session of `user`; whether at least one took it.
    pub fn notify(&self, user: &str, msg: &ServerMessage) -> bool {
        let sessions = locked(&self.inner.sessions);
        let mut delivered = false;
        for (id, tx) in sessions.get(user).into_iter().flatten() {
            match tx.try_send(msg.clone()) {
                Ok(()) => delivered = true,
                Err(e) => warn!(user, session = id, error = %e, "call notification not delivered"),
            }
        }
        delivered
    }

    fn start_ringing(&self, call_id: &str, invitees: Vec<String>) {
        locked(&self.inner.ringing).insert(call_id.to_owned(), invitees);
    }

    fn stop_ringing(&self, call_id: &str) {
        locked(&self.inner.ringing).remove(call_id);
    }

    fn ringing_for(&self, user: &str) -> Vec<String> {
        locked(&self.inner.ringing)
            .iter()
            .filter(|(_, invitees)| invitees.iter().any(|i| i == user))
            .map(|(id, _)| id.clone())
            .collect()
    }
}

/// A new call was stored: ring the invitees who are online and start the ring timer.
/// (The caller marked those invitees `ringing` before storing the call.)
pub fn announce(state: &AppState, call: &CallState) {
    let msg = ServerMessage::CallIncoming {
        call: Box::new(call.clone()),
    };
    for p in call.invitees() {
        if p.status == ParticipantStatus::Ringing {
            state.calls.notify(&p.user_id, &msg);
        }
    }
    state.calls.start_ringing(
        &call.call.id,
        call.invitees().map(|p| p.user_id.clone()).collect(),
    );
    // Someone who connected while the call was being stored is rung now.
    for p in call.invitees() {
        if p.status == ParticipantStatus::Invited && state.calls.is_online(&p.user_id) {
            tokio::spawn(ring_late(
                state.clone(),
                call.call.id.clone(),
                p.user_id.clone(),
            ));
        }
    }
    tokio::spawn(ring_timer(state.clone(), call.call.id.clone()));
}

/// A `/ws` session of `user` authenticated: ring it for the calls that are ringing for it.
pub async fn session_started(state: AppState, user: String) {
    for id in state.calls.ringing_for(&user) {
        ring_late(state.clone(), id, user.clone()).await;
    }
}

/// Rings `user` for call `id` if it still rings for them.
async fn ring_late(state: AppState, id: String, user: String) {
    let store = state.store.clone();
    let who = user.clone();
    let now = now_ms();
    let call = blocking(move || {
        store.update(&id, |c| {
            c.mark_ringing(&who, now);
            Ok::<_, ApiError>(c.clone())
        })
    })
    .await;
    match call {
        Ok(Some(call))
            if !call.call.status.is_over()
                && call.participant(&user).is_some_and(|p| {
                    p.status == ParticipantStatus::Ringing && p.answered_at.is_none()
                }) =>
        {
            state.calls.notify(
                &user,
                &ServerMessage::CallIncoming {
                    call: Box::new(call),
                },
            );
        }
        Ok(_) => {}
        Err(e) => warn!(user, error = e.message, "cannot ring a late session"),
    }
}

/// May `claims` enter `room`? `Ok(Some(max participants))` for a call's room, `Ok(None)` for a
/// room that belongs to no call (the token alone decides). A call's room admits its creator,
/// its invitees who have not rejected or missed it, and admins, while the call is open.
pub async fn admit(
    state: &AppState,
    room: &str,
    claims: &Claims,
) -> Result<Option<usize>, ApiError> {
    let store = state.store.clone();
    let key = room.to_owned();
    let Some(call) = blocking(move || {
        let Some(id) = store.call_for_room(&key)? else {
            return Ok(None);
        };
        Ok(store.get(&id)?)
    })
    .await?
    else {
        return Ok(None);
    };
    if call.call.status.is_over() {
        return Err(CallError::CallOver(call.call.status).into());
    }
    if claims.admin {
        return Ok(Some(call.call.max_participants));
    }
    let member = call
        .participant(&claims.sub)
        .filter(|p| p.role != Role::Guest);
    match member.map(|p| p.status) {
        None => {
            Err(CallError::Forbidden("only the creator and the invitees can join this call").into())
        }
        Some(ParticipantStatus::Rejected) => Err(CallError::AlreadyRejected.into()),
        Some(ParticipantStatus::Missed) => Err(CallError::AlreadyMissed.into()),
        Some(_) => Ok(Some(call.call.max_participants)),
    }
}

/// Unanswered invitees miss the call after `--ring-timeout`; an answered call nobody joined
/// fails after a second timeout.
async fn ring_timer(state: AppState, call_id: String) {
    let timeout = Duration::from_secs(state.config.ring_timeout);
    for second_round in [false, true] {
        tokio::time::sleep(timeout).await;
        let store = state.store.clone();
        let id = call_id.clone();
        let now = now_ms();
        let result = blocking(move || {
            store.update(&id, |c| {
                let stays = c.open_stays();
                let outcome = c.ring_expired(now, second_round);
                Ok::<_, ApiError>((outcome, stays, c.clone()))
            })
        })
        .await;
        state.calls.stop_ringing(&call_id);
        match result {
            Ok(Some((RingOutcome::Closed, stays, call))) => {
                info!(call = %call_id, status = %call.call.status, "ring timeout closed the call");
                ended(&state, &call, stays);
                return;
            }
            Ok(Some((RingOutcome::Pending, _, _))) => continue,
            Ok(_) => return,
            Err(e) => {
                warn!(call = %call_id, error = e.message, "ring timeout not recorded");
                return;
            }
        }
    }
}

/// A call is over (it was written): tell its members and empty its room of `stays`.
pub fn ended(state: &AppState, call: &CallState, stays: Vec<String>) {
    state.calls.stop_ringing(&call.call.id);
    let msg = ServerMessage::CallEnded {
        call: Box::new(call.clone()),
    };
    for user in call.members() {
        state.calls.notify(user, &msg);
    }
    let media = state.worker_for(&call.call.room);
    for participant_id in stays {
        if let Err(e) = media.send(Command::Leave {
            participant_id,
            reason: LeaveReason::Kicked,
        }) {
            warn!(call = %call.call.id, error = %e, "cannot remove a participant from an ended call's room");
        }
    }
}

/// For a graceful shutdown: ends every open call (`ended`, `server_shutdown`), writes it, and
/// tells the members still connected. Returns how many calls it closed.
pub async fn shut_down(state: &AppState) -> Result<usize, ApiError> {
    let store = state.store.clone();
    let now = now_ms();
    let closed = blocking(move || Ok(store.close_for_shutdown(now)?)).await?;
    for call in &closed {
        ended(state, call, Vec::new());
    }
    Ok(closed.len())
}

/// What a media event did to its call.
enum Applied {
    Nothing,
    Ended(Box<CallState>),
    /// Someone entered the room of a call that is over: send them away.
    Refuse(String),
}

/// Most media events written in one batch.
const EVENT_BATCH: usize = 1024;

fn room_of(event: &MediaEvent) -> &str {
    match event {
        MediaEvent::ParticipantJoined { room, .. }
        | MediaEvent::ParticipantLeft { room, .. }
        | MediaEvent::MediaStateChanged { room, .. }
        | MediaEvent::RoomClosed { room } => room,
    }
}

/// Keeps the call records in step with the rooms; runs for the life of the server.
///
/// Group commit: every event waiting is taken at once and applied in order in one blocking
/// task, with one transaction and one flush for the batch, so a burst costs one disk write.
/// A batch that cannot be written is counted in `/metrics` (`switchboard_events_lost_total`)
/// and logged once per room.
pub async fn consume_media_events(state: AppState, mut events: mpsc::Receiver<MediaEvent>) {
    let mut batch = Vec::with_capacity(EVENT_BATCH);
    // Rooms whose events were lost (logged once), until they close.
    let mut lost_rooms: HashMap<String, u64> = HashMap::new();
    while events.recv_many(&mut batch, EVENT_BATCH).await > 0 {
        let rooms: Vec<String> = batch.iter().map(|e| room_of(e).to_owned()).collect();
        let closed: Vec<String> = batch
            .iter()
            .filter_map(|e| match e {
                MediaEvent::RoomClosed { room } => Some(room.clone()),
                _ => None,
            })
            .collect();
        let items: Vec<(String, MediaEvent)> = rooms.iter().cloned().zip(batch.drain(..)).collect();
        let store = state.store.clone();
        let now = now_ms();
        let applied =
            blocking(move || Ok(store.apply_batch(items, |c, event| apply(c, event, now))?)).await;
        match applied {
            Ok(results) => {
                for (room, applied) in rooms.iter().zip(results) {
                    match applied.unwrap_or(Applied::Nothing) {
                        Applied::Nothing => {}
                        Applied::Ended(call) => {
                            info!(call = %call.call.id, reason = ?call.call.end_reason, "call ended");
                            ended(&state, &call, Vec::new());
                        }
                        Applied::Refuse(participant_id) => {
                            debug!(%participant_id, "joined the room of a call that is over");
                            let _ = state.worker_for(room).send(Command::Leave {
                                participant_id,
                                reason: LeaveReason::Kicked,
                            });
                        }
                    }
                }
            }
            Err(e) => {
                state.metrics.events_lost(rooms.len() as u64);
                for room in &rooms {
                    let n = lost_rooms.entry(room.clone()).or_default();
                    if *n == 0 {
                        warn!(
                            room,
                            error = e.message,
                            "media events not recorded (logged once per room)"
                        );
                    }
                    *n += 1;
                }
            }
        }
        for room in closed {
            if let Some(n) = lost_rooms.remove(&room) {
                warn!(room, lost = n, "room closed; media events it lost");
            }
        }
    }
}

fn apply(c: &mut CallState, event: MediaEvent, now: u64) -> Applied {
    match event {
        MediaEvent::ParticipantJoined {
            participant_id,
            user_id,
            name,
            ..
        } => match c.joined(&user_id, &name, &participant_id, now) {
            Ok(()) => Applied::Nothing,
            Err(e) => {
                debug!(call = %c.call.id, user = %user_id, error = %e, "join not recorded");
                Applied::Refuse(participant_id)
            }
        },
        MediaEvent::ParticipantLeft {
            participant_id,
            user_id,
            reason,
            quality,
            ..
        } => {
            let quality = Quality::new(
                quality.avg_rtt_ms,
                quality.bitrate_in_kbps,
                quality.bitrate_out_kbps,
                quality.packets_lost,
                quality.packets_received,
            );
            if c.left(&user_id, &participant_id, reason.as_str(), quality, now) {
                Applied::Ended(Box::new(c.clone()))
            } else {
                Applied::Nothing
            }
        }
        MediaEvent::MediaStateChanged { user_id, state, .. } => {
            let _ = c.set_media(&user_id, state, "media", now);
            Applied::Nothing
        }
        MediaEvent::RoomClosed { .. } => {
            if c.room_closed(now) {
                Applied::Ended(Box::new(c.clone()))
            } else {
                Applied::Nothing
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limit_is_per_user_and_slides() {
        let calls = Calls::new(2);
        let t0 = Instant::now();
        assert!(calls.allow_creation("a", t0).is_ok());
        assert!(
            calls
                .allow_creation("a", t0 + Duration::from_secs(1))
                .is_ok()
        );
        let wait = calls
            .allow_creation("a", t0 + Duration::from_secs(2))
            .unwrap_err();
        assert_eq!(wait, Duration::from_secs(58));
        assert!(
            calls
                .allow_creation("b", t0 + Duration::from_secs(2))
                .is_ok()
        );
        assert!(
            calls
                .allow_creation("a", t0 + Duration::from_secs(60))
                .is_ok()
        );
    }

    #[tokio::test]
    async fn sessions_register_and_unregister() {
        let calls = Calls::new(10);
        let (tx, mut rx) = mpsc::channel(4);
        let guard = calls.register("bob", tx);
        assert!(calls.is_online("bob"));
        assert!(calls.notify("bob", &ServerMessage::Pong));
        assert_eq!(rx.recv().await, Some(ServerMessage::Pong));
        drop(guard);
        assert!(!calls.is_online("bob"));
        assert!(!calls.notify("bob", &ServerMessage::Pong));
    }
}
