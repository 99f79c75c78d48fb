//! The `Call` record and its status machines: pure decisions, no I/O.
//!
//! A `CallState` is one call with its participants. Every operation (`answer`, `reject`, `end`,
//! a media join or leave, the ring timeout) is a method that checks the status machines and
//! changes the state in memory, or returns a `CallError` and changes nothing. `CallStore` then
//! writes the state; the API layer sends the notifications. Times are milliseconds since the
//! Unix epoch and are always passed in.
//!
//! Call: `initiated → ringing → active → ended | missed | rejected | failed`. A call rings once
//! an invitee's `/ws` session was told; it is active from the first media join. It is `missed`
//! when no invitee answered within the ring timeout, `rejected` when every invitee rejected,
//! `ended` when a party ended it or everybody left, `failed` when the server lost it.
//!
//! Participant: `invited → ringing → joined → left | rejected | missed`; `left → joined` again
//! for a rejoin.

use serde::{Deserialize, Serialize};

use crate::signal::protocol::MediaState;

/// At most this many media-state changes are kept per participant (the oldest go first).
pub const MAX_MEDIA_CHANGES: usize = 500;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CallStatus {
    Initiated,
    Ringing,
    Active,
    Ended,
    Missed,
    Rejected,
    Failed,
}

impl CallStatus {
    pub const ALL: [CallStatus; 7] = [
        CallStatus::Initiated,
        CallStatus::Ringing,
        CallStatus::Active,
        CallStatus::Ended,
        CallStatus::Missed,
        CallStatus::Rejected,
        CallStatus::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            CallStatus::Initiated => "initiated",
            CallStatus::Ringing => "ringing",
            CallStatus::Active => "active",
            CallStatus::Ended => "ended",
            CallStatus::Missed => "missed",
            CallStatus::Rejected => "rejected",
            CallStatus::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.as_str() == s)
    }

    /// A call in a final status changes no more.
    pub fn is_over(self) -> bool {
        matches!(
            self,
            CallStatus::Ended | CallStatus::Missed | CallStatus::Rejected | CallStatus::Failed
        )
    }
}

impl std::fmt::Display for CallStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ParticipantStatus {
    Invited,
    Ringing,
    Joined,
    Left,
    Rejected,
    Missed,
}

impl ParticipantStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ParticipantStatus::Invited => "invited",
            ParticipantStatus::Ringing => "ringing",
            ParticipantStatus::Joined => "joined",
            ParticipantStatus::Left => "left",
            ParticipantStatus::Rejected => "rejected",
            ParticipantStatus::Missed => "missed",
        }
    }
}

impl std::fmt::Display for ParticipantStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CallType {
    #[serde(rename = "one-to-one")]
    OneToOne,
    #[serde(rename = "group")]
    Group,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CallMedia {
    Audio,
    Video,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Created the call; ends it for everyone.
    Creator,
    /// Named in `invitees`; answers or rejects.
    Invitee,
    /// Joined the room with a token that grants it (e.g. `admin`) without being invited.
    Guest,
}

/// Why a status change is not allowed; becomes a 409 with `code()`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    #[error("the call is already over ({0})")]
    CallOver(CallStatus),
    #[error("a call cannot go from {from} to {to}")]
    CallTransition { from: CallStatus, to: CallStatus },
    #[error("this participant already rejected the call")]
    AlreadyRejected,
    #[error("this participant already missed the call")]
    AlreadyMissed,
    #[error("a participant cannot go from {from} to {to}")]
    ParticipantTransition {
        from: ParticipantStatus,
        to: ParticipantStatus,
    },
    #[error("you are not a participant of this call")]
    NotParticipant,
    #[error("{0}")]
    Forbidden(&'static str),
}

impl CallError {
    pub fn code(&self) -> &'static str {
        match self {
            CallError::CallOver(_) => "call_over",
            CallError::CallTransition { .. } => "invalid_call_transition",
            CallError::AlreadyRejected => "already_rejected",
            CallError::AlreadyMissed => "already_missed",
            CallError::ParticipantTransition { .. } => "invalid_participant_transition",
            CallError::NotParticipant | CallError::Forbidden(_) => "forbidden",
        }
    }

    /// 403 for who-may-do-what, 409 for status machine conflicts.
    pub fn is_forbidden(&self) -> bool {
        matches!(self, CallError::NotParticipant | CallError::Forbidden(_))
    }
}

/// The call status machine: the status after `from → to`, or why not.
pub fn call_transition(from: CallStatus, to: CallStatus) -> Result<CallStatus, CallError> {
    use CallStatus::*;
    if from.is_over() {
        return Err(CallError::CallOver(from));
    }
    let ok = match (from, to) {
        (Initiated, Ringing) => true,
        // Joining (or ending) needs no ringing first: the callee may have no /ws session.
        (Initiated | Ringing, Active) => true,
        // Every open call can end, in any final status (a creator alone in the room keeps the
        // call active while nobody answers: it can still be missed or rejected).
        (Initiated | Ringing | Active, Ended | Missed | Rejected | Failed) => true,
        _ => false,
    };
    if ok {
        Ok(to)
    } else {
        Err(CallError::CallTransition { from, to })
    }
}

/// The participant status machine: the status after `from → to`, or why not.
pub fn participant_transition(
    from: ParticipantStatus,
    to: ParticipantStatus,
) -> Result<ParticipantStatus, CallError> {
    use ParticipantStatus::*;
    let ok = match (from, to) {
        (Invited, Ringing) => true,
        (Invited | Ringing, Joined | Rejected | Missed) => true,
        // The call ended before this participant (the creator, say) ever joined.
        (Invited | Ringing, Left) => true,
        (Joined, Left) => true,
        // A rejoin after a dropped connection, or a second device.
        (Left, Joined) => true,
        _ => false,
    };
    if ok {
        Ok(to)
    } else {
        Err(match from {
            Rejected => CallError::AlreadyRejected,
            Missed => CallError::AlreadyMissed,
            _ => CallError::ParticipantTransition { from, to },
        })
    }
}

/// A participant's connection quality over one stay in the room, from the server's view.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Quality {
    pub avg_rtt_ms: Option<f64>,
    pub bitrate_in_kbps: f64,
    pub bitrate_out_kbps: f64,
    pub packets_lost: u64,
    pub packets_received: u64,
    /// `packets_lost / (packets_lost + packets_received)`, 0 when nothing was expected.
    pub loss_ratio: f64,
}

impl Quality {
    pub fn new(
        avg_rtt_ms: Option<f64>,
        bitrate_in_kbps: f64,
        bitrate_out_kbps: f64,
        packets_lost: u64,
        packets_received: u64,
    ) -> Self {
        let expected = packets_lost + packets_received;
        let loss_ratio = if expected == 0 {
            0.0
        } else {
            packets_lost as f64 / expected as f64
        };
        Self {
            avg_rtt_ms,
            bitrate_in_kbps,
            bitrate_out_kbps,
            packets_lost,
            packets_received,
            loss_ratio,
        }
    }
}

/// One stay of a participant in the call's room (a rejoin is a second stay).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JoinRecord {
    /// The media plane's id of this stay (`participant_id` on `/ws`).
    pub participant_id: String,
    pub joined_at: u64,
    pub left_at: Option<u64>,
    /// `left`, `disconnected`, `timeout`, `kicked`, `server_shutdown`, `call_ended`,
    /// `server_restart`.
    pub leave_reason: Option<String>,
    /// Written when the media plane reports the leave.
    pub quality: Option<Quality>,
}

/// A mute-state change; `source` is `api` (`PATCH …/media`) or `media` (`/ws media_state`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MediaChange {
    pub at: u64,
    pub audio: bool,
    pub video: bool,
    pub screen: bool,
    pub source: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ParticipantRecord {
    pub user_id: String,
    /// Display name, from the token of the creator or of the last join.
    pub name: String,
    pub role: Role,
    pub status: ParticipantStatus,
    pub invited_at: u64,
    pub ringing_at: Option<u64>,
    pub answered_at: Option<u64>,
    pub rejected_at: Option<u64>,
    pub joins: Vec<JoinRecord>,
    pub media: MediaState,
    pub media_changes: Vec<MediaChange>,
}

impl ParticipantRecord {
    pub fn new(user_id: &str, name: &str, role: Role, status: ParticipantStatus, now: u64) -> Self {
        Self {
            user_id: user_id.to_owned(),
            name: name.to_owned(),
            role,
            status,
            invited_at: now,
            ringing_at: None,
            answered_at: None,
            rejected_at: None,
            joins: Vec::new(),
            media: MediaState {
                audio: true,
                video: true,
                screen: false,
            },
            media_changes: Vec::new(),
        }
    }

    fn go(&mut self, to: ParticipantStatus) -> Result<(), CallError> {
        self.status = participant_transition(self.status, to)?;
        Ok(())
    }

    fn open_join(&mut self) -> Option<&mut JoinRecord> {
        self.joins.iter_mut().find(|j| j.left_at.is_none())
    }

    fn in_room(&self) -> bool {
        self.joins.iter().any(|j| j.left_at.is_none())
    }

    /// Has this invitee said yes, or shown up?
    fn took_part(&self) -> bool {
        self.answered_at.is_some() || !self.joins.is_empty()
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CallRecord {
    pub id: String,
    pub room: String,
    #[serde(rename = "type")]
    pub kind: CallType,
    pub media: CallMedia,
    pub title: String,
    pub created_by: String,
    pub max_participants: usize,
    pub status: CallStatus,
    pub created_at: u64,
    pub ringing_at: Option<u64>,
    pub started_at: Option<u64>,
    pub ended_at: Option<u64>,
    /// From `started_at` (first join) to `ended_at`; 0 for a call nobody joined.
    pub duration_ms: Option<u64>,
    /// `hangup` (ended by a party), `all_left`, `room_closed`, `no_answer`, `rejected`,
    /// `cancelled` (ended before anyone joined), `join_timeout`, `server_restart`,
    /// `server_shutdown`.
    pub end_reason: Option<String>,
    pub ended_by: Option<String>,
}

/// What a new call is made of, already validated.
#[derive(Debug, Clone)]
pub struct NewCall {
    pub id: String,
    pub room: String,
    pub kind: CallType,
    pub media: CallMedia,
    pub title: String,
    pub creator: String,
    pub creator_name: String,
    pub invitees: Vec<String>,
    pub max_participants: usize,
}

/// One call with its participants: what the API returns and what the store keeps.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CallState {
    #[serde(flatten)]
    pub call: CallRecord,
    pub participants: Vec<ParticipantRecord>,
}

/// What the ring timer decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RingOutcome {
    /// Nothing to do: the call is active or over.
    Settled,
    /// Invitees who had not answered are `missed`; the call is still open because someone
    /// answered or is in the room. Check again later for an answered call nobody joined.
    Pending,
    /// The call is over now.
    Closed,
}

impl CallState {
    pub fn new(n: NewCall, now: u64) -> Self {
        let mut participants = vec![ParticipantRecord::new(
            &n.creator,
            &n.creator_name,
            Role::Creator,
            // The creator is calling out: ringing until they join.
            ParticipantStatus::Ringing,
            now,
        )];
        for user in &n.invitees {
            participants.push(ParticipantRecord::new(
                user,
                "",
                Role::Invitee,
                ParticipantStatus::Invited,
                now,
            ));
        }
        Self {
            call: CallRecord {
                id: n.id,
                room: n.room,
                kind: n.kind,
                media: n.media,
                title: n.title,
                created_by: n.creator,
                max_participants: n.max_participants,
                status: CallStatus::Initiated,
                created_at: now,
                ringing_at: None,
                started_at: None,
                ended_at: None,
                duration_ms: None,
                end_reason: None,
                ended_by: None,
            },
            participants,
        }
    }

    pub fn participant(&self, user_id: &str) -> Option<&ParticipantRecord> {
        self.participants.iter().find(|p| p.user_id == user_id)
    }

    fn participant_mut(&mut self, user_id: &str) -> Result<&mut ParticipantRecord, CallError> {
        self.participants
            .iter_mut()
            .find(|p| p.user_id == user_id)
            .ok_or(CallError::NotParticipant)
    }

    /// Creator and invitees (not guests): who may read the call and who hears about it.
    pub fn is_member(&self, user_id: &str) -> bool {
        self.participant(user_id)
            .is_some_and(|p| p.role != Role::Guest)
    }

    pub fn members(&self) -> impl Iterator<Item = &str> {
        self.participants
            .iter()
            .filter(|p| p.role != Role::Guest)
            .map(|p| p.user_id.as_str())
    }

    pub fn invitees(&self) -> impl Iterator<Item = &ParticipantRecord> {
        self.participants.iter().filter(|p| p.role == Role::Invitee)
    }

    /// Media-plane ids of the stays still open (to remove them from the room at the end).
    pub fn open_stays(&self) -> Vec<String> {
        self.participants
            .iter()
            .flat_map(|p| &p.joins)
            .filter(|j| j.left_at.is_none())
            .map(|j| j.participant_id.clone())
            .collect()
    }

    fn go(&mut self, to: CallStatus) -> Result<(), CallError> {
        self.call.status = call_transition(self.call.status, to)?;
        Ok(())
    }

    fn open(&self) -> Result<(), CallError> {
        if self.call.status.is_over() {
            Err(CallError::CallOver(self.call.status))
        } else {
            Ok(())
        }
    }

    /// The invitee's `/ws` session was told about the call. Returns whether anything changed.
    pub fn mark_ringing(&mut self, user_id: &str, now: u64) -> bool {
        if self.call.status.is_over() {
            return false;
        }
        let Ok(p) = self.participant_mut(user_id) else {
            return false;
        };
        if p.status != ParticipantStatus::Invited {
            return false;
        }
        p.status = ParticipantStatus::Ringing;
        p.ringing_at = Some(now);
        if self.call.status == CallStatus::Initiated {
            self.call.status = CallStatus::Ringing;
            self.call.ringing_at = Some(now);
        }
        true
    }

    /// An invitee says yes (again, for a rejoin: answering twice is allowed while the call is
    /// open and hands out a fresh token).
    pub fn answer(&mut self, user_id: &str, now: u64) -> Result<(), CallError> {
        self.open()?;
        let p = self.participant_mut(user_id)?;
        match p.role {
            Role::Invitee => {}
            Role::Creator => {
                return Err(CallError::Forbidden(
                    "the creator does not answer their own call; join with the token from creation",
                ));
            }
            Role::Guest => return Err(CallError::NotParticipant),
        }
        match p.status {
            ParticipantStatus::Rejected => return Err(CallError::AlreadyRejected),
            ParticipantStatus::Missed => return Err(CallError::AlreadyMissed),
            _ => {}
        }
        if p.answered_at.is_none() {
            p.answered_at = Some(now);
        }
        Ok(())
    }

    /// An invitee says no. The call is `rejected` when every invitee has rejected and nobody
    /// took part.
    pub fn reject(&mut self, user_id: &str, now: u64) -> Result<(), CallError> {
        self.open()?;
        let p = self.participant_mut(user_id)?;
        match p.role {
            Role::Invitee => {}
            Role::Creator => {
                return Err(CallError::Forbidden(
                    "the creator ends their call instead of rejecting it",
                ));
            }
            Role::Guest => return Err(CallError::NotParticipant),
        }
        if p.answered_at.is_some() || p.in_room() {
            // Answered already: hanging up is leaving the room, not rejecting.
            return Err(CallError::ParticipantTransition {
                from: p.status,
                to: ParticipantStatus::Rejected,
            });
        }
        p.go(ParticipantStatus::Rejected)?;
        p.rejected_at = Some(now);
        if self
            .invitees()
            .all(|p| p.status == ParticipantStatus::Rejected)
        {
            self.finish(CallStatus::Rejected, "rejected", None, now)?;
        }
        Ok(())
    }

    /// The creator or an admin ends the call for everyone.
    pub fn end(&mut self, by: &str, now: u64) -> Result<(), CallError> {
        self.open()?;
        let reason = if self.call.started_at.is_some() {
            "hangup"
        } else {
            "cancelled"
        };
        self.finish(CallStatus::Ended, reason, Some(by), now)
    }

    /// Own mute state, from `PATCH …/media` (`source` = `api`) or from the media plane.
    pub fn set_media(
        &mut self,
        user_id: &str,
        state: MediaState,
        source: &str,
        now: u64,
    ) -> Result<(), CallError> {
        self.open()?;
        let p = self.participant_mut(user_id)?;
        p.media = state;
        if p.media_changes.len() >= MAX_MEDIA_CHANGES {
            p.media_changes.remove(0);
        }
        p.media_changes.push(MediaChange {
            at: now,
            audio: state.audio,
            video: state.video,
            screen: state.screen,
            source: source.to_owned(),
        });
        Ok(())
    }

    /// Someone entered the call's room. Somebody who is neither creator nor invitee (a token
    /// for `*` or an admin) is recorded as a guest.
    pub fn joined(
        &mut self,
        user_id: &str,
        name: &str,
        participant_id: &str,
        now: u64,
    ) -> Result<(), CallError> {
        self.open()?;
        if self.participant(user_id).is_none() {
            self.participants.push(ParticipantRecord::new(
                user_id,
                name,
                Role::Guest,
                ParticipantStatus::Invited,
                now,
            ));
        }
        let p = self.participant_mut(user_id)?;
        if p.status != ParticipantStatus::Joined {
            p.go(ParticipantStatus::Joined)?;
        }
        if !name.is_empty() {
            p.name = name.to_owned();
        }
        p.joins.push(JoinRecord {
            participant_id: participant_id.to_owned(),
            joined_at: now,
            left_at: None,
            leave_reason: None,
            quality: None,
        });
        if self.call.status != CallStatus::Active {
            self.go(CallStatus::Active)?;
            self.call.started_at = Some(now);
        }
        Ok(())
    }

    /// A stay ended. Returns whether the call ended with it (the last one left). A leave after
    /// the call ended (the room being emptied) still records the quality.
    pub fn left(
        &mut self,
        user_id: &str,
        participant_id: &str,
        reason: &str,
        quality: Quality,
        now: u64,
    ) -> bool {
        let over = self.call.status.is_over();
        let Ok(p) = self.participant_mut(user_id) else {
            return false;
        };
        let Some(stay) = p
            .joins
            .iter_mut()
            .find(|j| j.participant_id == participant_id)
        else {
            return false;
        };
        if stay.left_at.is_none() {
            stay.left_at = Some(now);
            stay.leave_reason = Some(reason.to_owned());
        }
        stay.quality = Some(quality);
        if !p.in_room() && p.status == ParticipantStatus::Joined {
            p.status = ParticipantStatus::Left;
        }
        if over || self.participants.iter().any(ParticipantRecord::in_room) {
            return false;
        }
        self.finish(CallStatus::Ended, "all_left", None, now)
            .is_ok()
    }

    /// The media plane closed the room. Returns whether the call ended with it.
    pub fn room_closed(&mut self, now: u64) -> bool {
        if self.call.status.is_over() || self.call.started_at.is_none() {
            // A room can close before anyone joined only if it was never the call's.
            return false;
        }
        self.finish(CallStatus::Ended, "room_closed", None, now)
            .is_ok()
    }

    /// The ring timeout passed: invitees who neither answered nor joined missed it. The call
    /// is missed if no invitee took part; `second_round` is the check for an answered call
    /// that nobody joined since, which then fails with `join_timeout`.
    pub fn ring_expired(&mut self, now: u64, second_round: bool) -> RingOutcome {
        if self.call.status.is_over() {
            return RingOutcome::Settled;
        }
        for p in self.participants.iter_mut() {
            if p.role == Role::Invitee
                && !p.took_part()
                && matches!(
                    p.status,
                    ParticipantStatus::Invited | ParticipantStatus::Ringing
                )
            {
                p.status = ParticipantStatus::Missed;
            }
        }
        let anyone = self.invitees().any(ParticipantRecord::took_part);
        if !anyone {
            let all_rejected = self
                .invitees()
                .all(|p| p.status == ParticipantStatus::Rejected);
            let (status, reason) = if all_rejected {
                (CallStatus::Rejected, "rejected")
            } else {
                (CallStatus::Missed, "no_answer")
            };
            let _ = self.finish(status, reason, None, now);
            return RingOutcome::Closed;
        }
        if self.call.status == CallStatus::Active {
            return RingOutcome::Settled;
        }
        if second_round {
            let _ = self.finish(CallStatus::Failed, "join_timeout", None, now);
            return RingOutcome::Closed;
        }
        RingOutcome::Pending
    }

    /// The server stopped with this call open (found at start-up).
    pub fn interrupted(&mut self, now: u64) -> Result<(), CallError> {
        self.finish(CallStatus::Failed, "server_restart", None, now)
    }

    /// The server is shutting down in good order with this call open.
    pub fn shut_down(&mut self, now: u64) -> Result<(), CallError> {
        self.finish(CallStatus::Ended, "server_shutdown", None, now)
    }

    /// Moves the call to a final status and closes every participant's open records.
    fn finish(
        &mut self,
        status: CallStatus,
        reason: &str,
        by: Option<&str>,
        now: u64,
    ) -> Result<(), CallError> {
        self.go(status)?;
        self.call.ended_at = Some(now);
        self.call.duration_ms = Some(
            self.call
                .started_at
                .map_or(0, |start| now.saturating_sub(start)),
        );
        self.call.end_reason = Some(reason.to_owned());
        self.call.ended_by = by.map(str::to_owned);
        let leave_reason = match reason {
            "server_restart" | "server_shutdown" => reason,
            _ => "call_ended",
        };
        for p in self.participants.iter_mut() {
            while let Some(stay) = p.open_join() {
                stay.left_at = Some(now);
                stay.leave_reason = Some(leave_reason.to_owned());
            }
            p.status = match p.status {
                ParticipantStatus::Joined => ParticipantStatus::Left,
                ParticipantStatus::Invited | ParticipantStatus::Ringing
                    if p.role == Role::Invitee =>
                {
                    ParticipantStatus::Missed
                }
                ParticipantStatus::Invited | ParticipantStatus::Ringing => ParticipantStatus::Left,
                other => other,
            };
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(kind: CallType, invitees: &[&str]) -> CallState {
        CallState::new(
            NewCall {
                id: "c1".into(),
                room: "call-r1".into(),
                kind,
                media: CallMedia::Video,
                title: "t".into(),
                creator: "ann".into(),
                creator_name: "Ann".into(),
                invitees: invitees.iter().map(|s| s.to_string()).collect(),
                max_participants: 20,
            },
            1_000,
        )
    }

    fn status(c: &CallState, user: &str) -> ParticipantStatus {
        c.participant(user).unwrap().status
    }

    #[test]
    fn call_machine() {
        use CallStatus::*;
        assert_eq!(call_transition(Initiated, Ringing), Ok(Ringing));
        assert_eq!(call_transition(Ringing, Active), Ok(Active));
        assert_eq!(call_transition(Active, Ended), Ok(Ended));
        assert_eq!(call_transition(Ringing, Missed), Ok(Missed));
        assert_eq!(
            call_transition(Active, Ringing),
            Err(CallError::CallTransition {
                from: Active,
                to: Ringing
            })
        );
        assert_eq!(
            call_transition(Active, Initiated).unwrap_err().code(),
            "invalid_call_transition"
        );
        for over in [Ended, Missed, Rejected, Failed] {
            for to in CallStatus::ALL {
                assert_eq!(call_transition(over, to), Err(CallError::CallOver(over)));
            }
        }
        assert_eq!(CallStatus::parse("missed"), Some(Missed));
        assert_eq!(CallStatus::parse("gone"), None);
    }

    #[test]
    fn participant_machine() {
        use ParticipantStatus::*;
        assert_eq!(participant_transition(Invited, Ringing), Ok(Ringing));
        assert_eq!(participant_transition(Ringing, Joined), Ok(Joined));
        assert_eq!(participant_transition(Joined, Left), Ok(Left));
        assert_eq!(participant_transition(Left, Joined), Ok(Joined));
        assert_eq!(
            participant_transition(Rejected, Joined),
            Err(CallError::AlreadyRejected)
        );
        assert_eq!(
            participant_transition(Missed, Ringing),
            Err(CallError::AlreadyMissed)
        );
        assert_eq!(
            participant_transition(Joined, Ringing).unwrap_err().code(),
            "invalid_participant_transition"
        );
        assert!(participant_transition(Left, Rejected).is_err());
    }

    #[test]
    fn one_to_one_life_cycle() {
        let mut c = call(CallType::OneToOne, &["bob"]);
        assert_eq!(c.call.status, CallStatus::Initiated);
        assert!(c.mark_ringing("bob", 1_100));
        assert!(!c.mark_ringing("bob", 1_150), "rings once");
        assert_eq!(c.call.status, CallStatus::Ringing);
        assert_eq!(status(&c, "bob"), ParticipantStatus::Ringing);

        c.joined("ann", "Ann", "p1", 1_200).unwrap();
        assert_eq!(c.call.status, CallStatus::Active);
        assert_eq!(c.call.started_at, Some(1_200));
        c.answer("bob", 1_300).unwrap();
        c.joined("bob", "Bob", "p2", 1_400).unwrap();
        assert_eq!(status(&c, "bob"), ParticipantStatus::Joined);
        assert_eq!(c.participant("bob").unwrap().name, "Bob");

        let q = Quality::new(Some(2.0), 100.0, 90.0, 1, 99);
        assert!((q.loss_ratio - 0.01).abs() < 1e-9);
        assert!(!c.left("bob", "p2", "left", q.clone(), 5_000));
        assert_eq!(status(&c, "bob"), ParticipantStatus::Left);
        // bob comes back: a second stay
        c.joined("bob", "Bob", "p3", 5_500).unwrap();
        assert_eq!(c.participant("bob").unwrap().joins.len(), 2);
        assert!(!c.left("bob", "p3", "left", q.clone(), 6_000));
        assert!(
            c.left("ann", "p1", "left", q.clone(), 7_200),
            "the last one left"
        );
        assert_eq!(c.call.status, CallStatus::Ended);
        assert_eq!(c.call.end_reason.as_deref(), Some("all_left"));
        assert_eq!(c.call.duration_ms, Some(6_000));
        assert_eq!(
            c.participant("ann").unwrap().joins[0].quality,
            Some(q.clone())
        );
        assert_eq!(
            c.answer("bob", 8_000),
            Err(CallError::CallOver(CallStatus::Ended))
        );
        assert_eq!(c.end("ann", 8_000).unwrap_err().code(), "call_over");
    }

    #[test]
    fn ending_closes_stays_and_late_leaves_keep_quality() {
        let mut c = call(CallType::Group, &["bob", "cid"]);
        c.joined("ann", "Ann", "p1", 2_000).unwrap();
        c.answer("bob", 2_100).unwrap();
        c.joined("bob", "Bob", "p2", 2_200).unwrap();
        c.end("ann", 3_000).unwrap();
        assert_eq!(c.call.status, CallStatus::Ended);
        assert_eq!(c.call.end_reason.as_deref(), Some("hangup"));
        assert_eq!(c.call.ended_by.as_deref(), Some("ann"));
        assert_eq!(c.call.duration_ms, Some(1_000));
        assert_eq!(status(&c, "cid"), ParticipantStatus::Missed);
        assert_eq!(status(&c, "bob"), ParticipantStatus::Left);
        assert_eq!(c.open_stays(), Vec::<String>::new());
        let q = Quality::new(None, 1.0, 2.0, 0, 10);
        assert!(!c.left("bob", "p2", "kicked", q.clone(), 3_050));
        let stay = &c.participant("bob").unwrap().joins[0];
        assert_eq!(stay.left_at, Some(3_000));
        assert_eq!(stay.leave_reason.as_deref(), Some("call_ended"));
        assert_eq!(stay.quality, Some(q));
    }

    #[test]
    fn rejecting() {
        let mut c = call(CallType::OneToOne, &["bob"]);
        assert_eq!(c.reject("ann", 1).unwrap_err().code(), "forbidden");
        assert_eq!(c.reject("eve", 1), Err(CallError::NotParticipant));
        c.reject("bob", 1_500).unwrap();
        assert_eq!(c.call.status, CallStatus::Rejected);
        assert_eq!(c.call.duration_ms, Some(0));
        assert_eq!(status(&c, "ann"), ParticipantStatus::Left);

        let mut g = call(CallType::Group, &["bob", "cid"]);
        g.reject("bob", 1_500).unwrap();
        assert_eq!(g.call.status, CallStatus::Initiated, "cid may still answer");
        assert_eq!(g.reject("bob", 1_600), Err(CallError::AlreadyRejected));
        assert_eq!(g.answer("bob", 1_600), Err(CallError::AlreadyRejected));
        g.answer("cid", 1_700).unwrap();
        assert_eq!(
            g.reject("cid", 1_800).unwrap_err().code(),
            "invalid_participant_transition",
            "answered already"
        );
    }

    #[test]
    fn ring_timeout() {
        // nobody answers, though the creator sits in the room
        let mut c = call(CallType::OneToOne, &["bob"]);
        c.joined("ann", "Ann", "p1", 1_100).unwrap();
        assert_eq!(c.ring_expired(46_000, false), RingOutcome::Closed);
        assert_eq!(c.call.status, CallStatus::Missed);
        assert_eq!(c.call.end_reason.as_deref(), Some("no_answer"));
        assert_eq!(status(&c, "bob"), ParticipantStatus::Missed);
        assert_eq!(c.answer("bob", 47_000).unwrap_err().code(), "call_over");

        // one of two answers: the other missed it, the call goes on
        let mut g = call(CallType::Group, &["bob", "cid"]);
        g.answer("bob", 2_000).unwrap();
        assert_eq!(g.ring_expired(46_000, false), RingOutcome::Pending);
        assert_eq!(status(&g, "cid"), ParticipantStatus::Missed);
        assert_eq!(g.answer("cid", 46_500), Err(CallError::AlreadyMissed));
        assert_eq!(g.ring_expired(91_000, true), RingOutcome::Closed);
        assert_eq!(g.call.status, CallStatus::Failed);
        assert_eq!(g.call.end_reason.as_deref(), Some("join_timeout"));

        // answered and joined in time: nothing to do
        let mut a = call(CallType::OneToOne, &["bob"]);
        a.answer("bob", 2_000).unwrap();
        a.joined("bob", "Bob", "p2", 2_500).unwrap();
        assert_eq!(a.ring_expired(46_000, false), RingOutcome::Settled);
        assert_eq!(a.call.status, CallStatus::Active);
    }

    #[test]
    fn guests_and_media_and_restart() {
        let mut c = call(CallType::Group, &["bob"]);
        c.joined("root", "Admin", "p9", 1_100).unwrap();
        assert_eq!(c.participant("root").unwrap().role, Role::Guest);
        assert!(!c.is_member("root"));
        assert_eq!(c.members().collect::<Vec<_>>(), vec!["ann", "bob"]);
        let off = MediaState {
            audio: false,
            video: true,
            screen: false,
        };
        c.set_media("bob", off, "api", 1_200).unwrap();
        assert_eq!(c.participant("bob").unwrap().media, off);
        assert_eq!(c.participant("bob").unwrap().media_changes[0].source, "api");
        assert_eq!(
            c.set_media("eve", off, "api", 1_200),
            Err(CallError::NotParticipant)
        );
        let mut stopped = c.clone();
        stopped.shut_down(9_000).unwrap();
        assert_eq!(stopped.call.status, CallStatus::Ended);
        assert_eq!(stopped.call.end_reason.as_deref(), Some("server_shutdown"));
        assert_eq!(
            stopped.participant("root").unwrap().joins[0]
                .leave_reason
                .as_deref(),
            Some("server_shutdown")
        );
        assert_eq!(
            stopped.participant("bob").unwrap().status,
            ParticipantStatus::Missed
        );
        c.interrupted(9_100).unwrap();
        assert_eq!(c.call.status, CallStatus::Failed);
        assert_eq!(c.call.end_reason.as_deref(), Some("server_restart"));
        assert_eq!(c.call.duration_ms, Some(8_000));
        let stay = &c.participant("root").unwrap().joins[0];
        assert_eq!(stay.leave_reason.as_deref(), Some("server_restart"));
        assert!(c.set_media("bob", off, "api", 9_200).is_err());
    }

    #[test]
    fn wire_names() {
        let c = call(CallType::OneToOne, &["bob"]);
        let v = serde_json::to_value(&c).unwrap();
        assert_eq!(v["type"], "one-to-one");
        assert_eq!(v["status"], "initiated");
        assert_eq!(v["participants"][0]["role"], "creator");
        assert_eq!(v["participants"][1]["status"], "invited");
        let back: CallState = serde_json::from_value(v).unwrap();
        assert_eq!(back, c);
    }
}
