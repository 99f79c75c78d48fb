//! Call records (`CallStore`), on sled.
//!
//! Trees:
//! - `calls`: call id → `CallRecord` (JSON);
//! - `participants`: call id, 0, user id → `ParticipantRecord` (JSON);
//! - `user_calls`: user id, 0, created-at (u64 big-endian ms), call id → () — a user's history
//!   in time order, read backwards for newest first;
//! - `rooms`: room → call id, to find the call of a media-plane event.
//!
//! Every write goes through one lock (read, decide, write: no lost updates), is one sled
//! transaction over the trees, and is flushed to disk before the call returns, so whatever the
//! API acknowledged survives a `kill -9`. Every method blocks: async callers use
//! `tokio::task::spawn_blocking`.
//!
//! On open, calls the server left open (initiated, ringing, active) are closed as `failed`
//! with reason `server_restart`.

use crate::media::stats::LatencyHistogram;
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use sled::Transactional;
use sled::transaction::{ConflictableTransactionError, TransactionError};

use crate::api::model::{CallRecord, CallState, CallStatus, ParticipantRecord};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("storage: {0}")]
    Sled(#[from] sled::Error),
    #[error("a stored record cannot be read: {0}")]
    Corrupt(String),
}

impl From<TransactionError<StoreError>> for StoreError {
    fn from(e: TransactionError<StoreError>) -> Self {
        match e {
            TransactionError::Abort(e) => e,
            TransactionError::Storage(e) => StoreError::Sled(e),
        }
    }
}

/// The durable store of call records.
#[derive(Clone)]
pub struct CallStore {
    db: sled::Db,
    calls: sled::Tree,
    participants: sled::Tree,
    user_calls: sled::Tree,
    rooms: sled::Tree,
    /// Serialises read-modify-write cycles.
    write: Arc<Mutex<()>>,
    /// How long durable writes (transaction + flush) took.
    write_latency: Arc<Mutex<LatencyHistogram>>,
}

/// One page of a user's history.
#[derive(Debug, Clone)]
pub struct Page {
    pub calls: Vec<CallState>,
    /// Calls of this user matching the filter, on every page.
    pub total: usize,
}

fn participant_key(call_id: &str, user_id: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(call_id.len() + user_id.len() + 1);
    k.extend_from_slice(call_id.as_bytes());
    k.push(0);
    k.extend_from_slice(user_id.as_bytes());
    k
}

fn user_prefix(user_id: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(user_id.len() + 1);
    k.extend_from_slice(user_id.as_bytes());
    k.push(0);
    k
}

fn user_call_key(user_id: &str, created_at: u64, call_id: &str) -> Vec<u8> {
    let mut k = user_prefix(user_id);
    k.extend_from_slice(&created_at.to_be_bytes());
    k.extend_from_slice(call_id.as_bytes());
    k
}

fn encode<T: serde::Serialize>(value: &T) -> Vec<u8> {
    // Plain structs of strings, numbers and enums always serialise.
    serde_json::to_vec(value).expect("records serialise to JSON")
}

fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt(e.to_string()))
}

impl CallStore {
    /// Opens (or creates) the store in `dir` and closes the calls a previous run left open.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let db = sled::open(dir)?;
        let store = Self {
            calls: db.open_tree("calls")?,
            participants: db.open_tree("participants")?,
            user_calls: db.open_tree("user_calls")?,
            rooms: db.open_tree("rooms")?,
            db,
            write: Arc::new(Mutex::new(())),
            write_latency: Arc::default(),
        };
        let closed = store.close_interrupted(crate::api::now_ms())?;
        if closed > 0 {
            tracing::warn!(
                calls = closed,
                "closed calls left open by the previous run as failed (server_restart)"
            );
        }
        Ok(store)
    }

    /// Writes everything to disk.
    pub fn flush(&self) -> Result<(), StoreError> {
        self.db.flush()?;
        Ok(())
    }

    /// The durations of durable writes so far (for `/metrics`).
    pub fn write_latency(&self) -> LatencyHistogram {
        *self.write_latency.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Writes `state` and flushes it to disk, timing both.
    fn write_durably(&self, state: &CallState, new: bool) -> Result<(), StoreError> {
        let started = std::time::Instant::now();
        self.write_state(state, new)?;
        self.flush()?;
        self.write_latency
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .observe(started.elapsed());
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ()> {
        // The guarded data is `()`: a panic elsewhere cannot leave it inconsistent.
        self.write.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Stores a new call. The id and room are fresh random names, so nothing is overwritten.
    pub fn create(&self, state: &CallState) -> Result<(), StoreError> {
        let _guard = self.lock();
        self.write_durably(state, true)
    }

    /// One call with its participants.
    pub fn get(&self, id: &str) -> Result<Option<CallState>, StoreError> {
        let Some(bytes) = self.calls.get(id.as_bytes())? else {
            return Ok(None);
        };
        let call: CallRecord = decode(&bytes)?;
        let mut participants = Vec::new();
        for item in self.participants.scan_prefix(user_prefix(id)) {
            let (_, value) = item?;
            participants.push(decode::<ParticipantRecord>(&value)?);
        }
        // sled orders by key (user id); show the creator first, then in invitation order.
        participants.sort_by_key(|p| (p.role_rank(), p.invited_at));
        Ok(Some(CallState { call, participants }))
    }

    /// The call whose room this is.
    pub fn call_for_room(&self, room: &str) -> Result<Option<String>, StoreError> {
        Ok(self
            .rooms
            .get(room.as_bytes())?
            .map(|v| String::from_utf8_lossy(&v).into_owned()))
    }

    /// Reads the call, lets `decide` change it, and writes and flushes the result when
    /// `decide` succeeds. `Ok(None)`: no such call.
    pub fn update<R, E>(
        &self,
        id: &str,
        decide: impl FnOnce(&mut CallState) -> Result<R, E>,
    ) -> Result<Option<R>, E>
    where
        E: From<StoreError>,
    {
        let _guard = self.lock();
        let Some(mut state) = self.get(id)? else {
            return Ok(None);
        };
        let before = state.clone();
        let result = decide(&mut state)?;
        if state != before {
            self.write_durably(&state, false)?;
        }
        Ok(Some(result))
    }

    /// Group commit of events about rooms: applies each `(room, event)` in order to the call of
    /// its room, under one lock; reads each call once, writes every call that changed in one
    /// transaction and flushes once. Per event, what `apply` returned, or `None` when the room
    /// belongs to no call. All or nothing: on an error nothing of the batch is written.
    pub fn apply_batch<E, A>(
        &self,
        events: Vec<(String, E)>,
        mut apply: impl FnMut(&mut CallState, E) -> A,
    ) -> Result<Vec<Option<A>>, StoreError> {
        let _guard = self.lock();
        let mut call_of_room: HashMap<String, Option<usize>> = HashMap::new();
        // (as read, as changed by the events)
        let mut calls: Vec<(CallState, CallState)> = Vec::new();
        let mut results = Vec::with_capacity(events.len());
        for (room, event) in events {
            let slot = match call_of_room.get(&room) {
                Some(slot) => *slot,
                None => {
                    let state = match self.call_for_room(&room)? {
                        Some(id) => self.get(&id)?,
                        None => None,
                    };
                    let slot = state.map(|state| {
                        calls.push((state.clone(), state));
                        calls.len() - 1
                    });
                    call_of_room.insert(room, slot);
                    slot
                }
            };
            results.push(slot.map(|i| apply(&mut calls[i].1, event)));
        }
        let changed: Vec<&CallState> = calls
            .iter()
            .filter(|(before, after)| before != after)
            .map(|(_, after)| after)
            .collect();
        if !changed.is_empty() {
            let started = std::time::Instant::now();
            self.write_states(&changed, false)?;
            self.flush()?;
            self.write_latency
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .observe(started.elapsed());
        }
        Ok(results)
    }

    fn write_state(&self, state: &CallState, new: bool) -> Result<(), StoreError> {
        self.write_states(&[state], new)
    }

    /// Writes `states` in one transaction; `new`: they are new calls (their rooms are indexed).
    fn write_states(&self, states: &[&CallState], new: bool) -> Result<(), StoreError> {
        (
            &self.calls,
            &self.participants,
            &self.user_calls,
            &self.rooms,
        )
            .transaction(|(calls, participants, user_calls, rooms)| {
                for state in states {
                    let call = &state.call;
                    calls.insert(call.id.as_bytes(), encode(call))?;
                    for p in &state.participants {
                        participants.insert(participant_key(&call.id, &p.user_id), encode(p))?;
                        // New participants (guests) enter their history on their first write.
                        user_calls.insert(
                            user_call_key(&p.user_id, call.created_at, &call.id),
                            &[][..],
                        )?;
                    }
                    if new {
                        rooms.insert(call.room.as_bytes(), call.id.as_bytes())?;
                    }
                }
                Ok::<_, ConflictableTransactionError<StoreError>>(())
            })?;
        Ok(())
    }

    /// `user`'s calls, newest first, optionally only those in `status`; `page` from 1.
    pub fn history(
        &self,
        user: &str,
        status: Option<CallStatus>,
        page: usize,
        limit: usize,
    ) -> Result<Page, StoreError> {
        let skip = page.saturating_sub(1).saturating_mul(limit);
        let mut calls = Vec::new();
        let mut total = 0;
        let prefix = user_prefix(user);
        for item in self.user_calls.scan_prefix(&prefix).rev() {
            let (key, _) = item?;
            let id = String::from_utf8_lossy(&key[prefix.len() + 8..]).into_owned();
            let wanted_page = total >= skip && calls.len() < limit;
            if status.is_none() && !wanted_page {
                total += 1;
                continue;
            }
            let Some(bytes) = self.calls.get(id.as_bytes())? else {
                continue;
            };
            let call: CallRecord = decode(&bytes)?;
            if status.is_some_and(|s| s != call.status) {
                continue;
            }
            if wanted_page && let Some(state) = self.get(&id)? {
                calls.push(state);
            }
            total += 1;
        }
        Ok(Page { calls, total })
    }

    /// Closes every call still open as `failed` (`server_restart`); the number closed.
    pub fn close_interrupted(&self, now: u64) -> Result<usize, StoreError> {
        Ok(self.close_open(|c| c.interrupted(now))?.len())
    }

    /// Closes every call still open as `ended` (`server_shutdown`), for a graceful shutdown;
    /// the calls closed.
    pub fn close_for_shutdown(&self, now: u64) -> Result<Vec<CallState>, StoreError> {
        self.close_open(|c| c.shut_down(now))
    }

    fn close_open(
        &self,
        close: impl Fn(&mut CallState) -> Result<(), crate::api::model::CallError>,
    ) -> Result<Vec<CallState>, StoreError> {
        let mut open = Vec::new();
        for item in self.calls.iter() {
            let (_, value) = item?;
            let call: CallRecord = decode(&value)?;
            if !call.status.is_over() {
                open.push(call.id);
            }
        }
        let mut closed = Vec::new();
        for id in &open {
            let call = self.update(id, |state| {
                // A call closed since the scan above is left as it is.
                if state.call.status.is_over() {
                    return Ok(None);
                }
                close(state).map_err(|e| StoreError::Corrupt(e.to_string()))?;
                Ok::<_, StoreError>(Some(state.clone()))
            })?;
            closed.extend(call.flatten());
        }
        Ok(closed)
    }
}

impl ParticipantRecord {
    fn role_rank(&self) -> u8 {
        match self.role {
            crate::api::model::Role::Creator => 0,
            crate::api::model::Role::Invitee => 1,
            crate::api::model::Role::Guest => 2,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::model::{CallError, CallMedia, CallType, NewCall, Quality};

    fn new_call(id: &str, creator: &str, invitees: &[&str], now: u64) -> CallState {
        CallState::new(
            NewCall {
                id: id.into(),
                room: format!("room-{id}"),
                kind: CallType::Group,
                media: CallMedia::Audio,
                title: String::new(),
                creator: creator.into(),
                creator_name: creator.into(),
                invitees: invitees.iter().map(|s| s.to_string()).collect(),
                max_participants: 20,
            },
            now,
        )
    }

    #[derive(Debug)]
    enum E {
        Store,
        Call(CallError),
    }
    impl From<StoreError> for E {
        fn from(_: StoreError) -> Self {
            E::Store
        }
    }

    #[test]
    fn create_update_history_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let store = CallStore::open(dir.path()).unwrap();
        for i in 0..5u64 {
            store
                .create(&new_call(&format!("c{i}"), "ann", &["bob"], 1_000 + i))
                .unwrap();
        }
        store
            .create(&new_call("other", "cid", &["dan"], 2_000))
            .unwrap();
        assert_eq!(
            store.call_for_room("room-c3").unwrap().as_deref(),
            Some("c3")
        );

        // c1 is answered and joined, c2 ends
        store
            .update("c1", |s| -> Result<(), E> {
                s.answer("bob", 1_100).map_err(E::Call)?;
                s.joined("bob", "Bob", "p1", 1_200).map_err(E::Call)
            })
            .unwrap()
            .unwrap();
        store
            .update("c2", |s| s.end("ann", 1_300).map_err(E::Call))
            .unwrap()
            .unwrap();
        assert!(matches!(
            store.update("c2", |s| s.end("ann", 1_400).map_err(E::Call)),
            Err(E::Call(CallError::CallOver(CallStatus::Ended)))
        ));
        assert!(store.update("nope", |_| Ok::<_, E>(())).unwrap().is_none());

        let page = store.history("bob", None, 1, 2).unwrap();
        assert_eq!(page.total, 5);
        let ids: Vec<_> = page.calls.iter().map(|c| c.call.id.as_str()).collect();
        assert_eq!(ids, ["c4", "c3"], "newest first");
        let page = store.history("bob", None, 3, 2).unwrap();
        let ids: Vec<_> = page.calls.iter().map(|c| c.call.id.as_str()).collect();
        assert_eq!(ids, ["c0"]);
        let page = store
            .history("ann", Some(CallStatus::Ended), 1, 10)
            .unwrap();
        assert_eq!(page.total, 1);
        assert_eq!(page.calls[0].call.id, "c2");
        assert_eq!(store.history("eve", None, 1, 10).unwrap().total, 0);

        drop(store);
        // A restart closes what was open.
        let store = CallStore::open(dir.path()).unwrap();
        let c1 = store.get("c1").unwrap().unwrap();
        assert_eq!(c1.call.status, CallStatus::Failed);
        assert_eq!(c1.call.end_reason.as_deref(), Some("server_restart"));
        assert_eq!(c1.participants[0].user_id, "ann", "creator first");
        let bob = &c1.participants[1];
        assert_eq!(bob.joins[0].leave_reason.as_deref(), Some("server_restart"));
        let c2 = store.get("c2").unwrap().unwrap();
        assert_eq!(
            c2.call.status,
            CallStatus::Ended,
            "closed calls stay as they were"
        );
        assert_eq!(
            store
                .history("ann", Some(CallStatus::Failed), 1, 10)
                .unwrap()
                .total,
            4
        );

        // A graceful shutdown ends what is open.
        store
            .create(&new_call("c9", "ann", &["bob"], 3_000))
            .unwrap();
        let closed = store.close_for_shutdown(4_000).unwrap();
        assert_eq!(closed.len(), 1);
        assert_eq!(
            closed[0].call.end_reason.as_deref(),
            Some("server_shutdown")
        );
        let c9 = store.get("c9").unwrap().unwrap();
        assert_eq!(c9.call.status, CallStatus::Ended);
        assert!(store.close_for_shutdown(5_000).unwrap().is_empty());
    }

    #[test]
    fn a_batch_applies_in_order_and_writes_each_call_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = CallStore::open(dir.path()).unwrap();
        store
            .create(&new_call("c1", "ann", &["bob"], 1_000))
            .unwrap();
        store
            .create(&new_call("c2", "cid", &["dan"], 1_000))
            .unwrap();
        let writes = store.write_latency().count;
        // (user, participant, joins or leaves) → joined, or the call ended with the leave
        let events = vec![
            ("room-c1".to_owned(), ("ann", "p3", true)),
            ("room-none".to_owned(), ("eve", "p9", true)),
            ("room-c2".to_owned(), ("dan", "p2", true)),
            ("room-c1".to_owned(), ("bob", "p1", true)),
            ("room-c1".to_owned(), ("bob", "p1", false)),
        ];
        let results = store
            .apply_batch(events, |c, (user, pid, join)| {
                if join {
                    c.joined(user, user, pid, 1_100).is_ok()
                } else {
                    c.left(user, pid, "left", Quality::default(), 1_200)
                }
            })
            .unwrap();
        assert_eq!(
            results,
            [Some(true), None, Some(true), Some(true), Some(false)]
        );
        assert_eq!(
            store.write_latency().count,
            writes + 1,
            "one flush for the batch"
        );
        let c1 = store.get("c1").unwrap().unwrap();
        let bob = c1.participants.iter().find(|p| p.user_id == "bob").unwrap();
        assert_eq!(bob.joins.len(), 1);
        assert_eq!(bob.joins[0].left_at, Some(1_200), "applied in order");
        assert_eq!(c1.call.status, CallStatus::Active, "ann is still in");
        assert_eq!(
            store.get("c2").unwrap().unwrap().call.status,
            CallStatus::Active
        );
        // nothing changed: nothing written
        let results = store
            .apply_batch(vec![("room-none".to_owned(), ())], |_, ()| ())
            .unwrap();
        assert_eq!(results, [None]);
        assert_eq!(store.write_latency().count, writes + 1);
    }

    #[test]
    fn guests_enter_their_history() {
        let dir = tempfile::tempdir().unwrap();
        let store = CallStore::open(dir.path()).unwrap();
        store
            .create(&new_call("c1", "ann", &["bob"], 1_000))
            .unwrap();
        store
            .update("c1", |s| -> Result<bool, E> {
                s.joined("root", "Root", "p1", 1_100).map_err(E::Call)?;
                Ok(s.left("root", "p1", "left", Quality::default(), 1_200))
            })
            .unwrap()
            .unwrap();
        let page = store.history("root", None, 1, 10).unwrap();
        assert_eq!(page.total, 1);
        assert_eq!(page.calls[0].call.status, CallStatus::Ended);
    }
}
