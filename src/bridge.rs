//! The bridge between the planes: typed `Command`s into a media worker (bounded, each with a
//! oneshot reply), typed messages out to each participant's signaling session (bounded).
//!
//! The media worker never blocks on the control plane: it uses `try_send` everywhere. A
//! participant whose outbound queue is full is too slow to follow the call and is removed
//! (control messages are never dropped silently).

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};

use tokio::sync::{mpsc, oneshot};

use crate::media::stats::WorkerStats;
use crate::signal::protocol::{
    CandidateInit, MediaState, ParticipantInfo, PcKind, ServerMessage, TrackInfo, TrackSource,
};

/// How many commands may wait for a worker before callers get `server_busy`.
pub const COMMAND_QUEUE: usize = 1024;
/// How many messages may wait for one participant's signaling session.
pub const PARTICIPANT_QUEUE: usize = 256;
/// How many media events may wait for the control plane (call records).
pub const EVENT_QUEUE: usize = 4096;

/// What the media plane tells the control plane about rooms, for call records.
#[derive(Debug, Clone)]
pub enum MediaEvent {
    ParticipantJoined {
        room: String,
        participant_id: String,
        user_id: String,
        name: String,
    },
    ParticipantLeft {
        room: String,
        participant_id: String,
        user_id: String,
        reason: LeaveReason,
        quality: Quality,
    },
    MediaStateChanged {
        room: String,
        participant_id: String,
        user_id: String,
        state: MediaState,
    },
    RoomClosed {
        room: String,
    },
}

/// A participant's connection quality over its stay, from the server's side.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Quality {
    /// Average round-trip time from RTCP receiver reports, when the client sent any.
    pub avg_rtt_ms: Option<f64>,
    /// What the participant sent us, on average.
    pub bitrate_in_kbps: f64,
    /// What we sent the participant, on average.
    pub bitrate_out_kbps: f64,
    /// RTP packets of its published tracks that never arrived.
    pub packets_lost: u64,
    /// RTP packets of its published tracks that arrived.
    pub packets_received: u64,
}

pub type Reply<T> = oneshot::Sender<Result<T, MediaError>>;

/// Who is joining, as the control plane authenticated them.
#[derive(Debug, Clone)]
pub struct JoinRequest {
    pub room: String,
    pub user_id: String,
    pub name: String,
    pub can_publish: bool,
    pub can_subscribe: bool,
    pub max_participants: usize,
    /// How the participant takes part: a second join of the same user to the same room
    /// through the same kind of session replaces the first (`LeaveReason::Replaced`).
    pub kind: SessionKind,
}

/// The kind of session a participant joined through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionKind {
    /// A `/ws` signaling session (the web client, the SDKs).
    Signal,
    /// A WHIP publisher.
    Whip,
    /// A WHEP viewer.
    Whep,
}

/// What a participant finds on joining.
#[derive(Debug, Clone)]
pub struct Joined {
    pub participant_id: String,
    pub participants: Vec<ParticipantInfo>,
    pub tracks: Vec<TrackInfo>,
}

/// Why a participant leaves; shown to the others as `participant_left.reason`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaveReason {
    Left,
    Disconnected,
    Timeout,
    Kicked,
    ServerShutdown,
    /// The same user joined the room again through the same kind of session.
    Replaced,
    /// The media worker failed (a panic) while handling this participant or its room.
    Error,
}

impl LeaveReason {
    pub fn as_str(self) -> &'static str {
        match self {
            LeaveReason::Left => "left",
            LeaveReason::Disconnected => "disconnected",
            LeaveReason::Timeout => "timeout",
            LeaveReason::Kicked => "kicked",
            LeaveReason::ServerShutdown => "server_shutdown",
            LeaveReason::Replaced => "replaced",
            LeaveReason::Error => "error",
        }
    }
}

pub enum Command {
    Join {
        request: JoinRequest,
        events: mpsc::Sender<ServerMessage>,
        reply: Reply<Joined>,
    },
    PublishOffer {
        participant_id: String,
        sdp: String,
        sources: HashMap<String, TrackSource>,
        reply: Reply<String>,
    },
    SubscribeAnswer {
        participant_id: String,
        sdp: String,
        reply: Reply<()>,
    },
    Candidate {
        participant_id: String,
        pc: PcKind,
        candidate: CandidateInit,
        reply: Reply<()>,
    },
    MediaState {
        participant_id: String,
        state: MediaState,
    },
    Leave {
        participant_id: String,
        reason: LeaveReason,
    },
    Stats {
        reply: oneshot::Sender<WorkerStats>,
    },
    /// A viewer's own offer (WHEP): answered with one publisher's audio and video — `pin`
    /// (a participant id), or the room's first publisher of video.
    Watch {
        participant_id: String,
        sdp: String,
        pin: Option<String>,
        reply: Reply<String>,
    },
    /// An ICE restart requested by the client of `pc` (WHIP/WHEP `PATCH` with `If-Match: *`):
    /// the client's new credentials; replies with the server's answer fragment.
    RestartIce {
        participant_id: String,
        pc: PcKind,
        ufrag: String,
        pwd: String,
        reply: Reply<String>,
    },
    /// Tell every participant `server_shutdown`, remove them all (reason `server_shutdown`,
    /// so their records close), and stop taking joins. Replies when done.
    Shutdown {
        reply: oneshot::Sender<()>,
    },
}

/// Errors a command can end in; `code` is what clients see.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MediaError {
    #[error("the room is full ({0} participants)")]
    RoomFull(usize),
    #[error("not in a room")]
    NotJoined,
    #[error("this token may not {0}")]
    Forbidden(&'static str),
    #[error("{0}")]
    BadSdp(String),
    #[error("{0}")]
    BadCandidate(String),
    #[error("no subscribe offer is waiting for an answer")]
    NoOfferPending,
    #[error("nobody in the room publishes anything to watch")]
    NothingToWatch,
    #[error("the server is shutting down")]
    ShuttingDown,
    #[error("the media worker is busy; try again")]
    Busy,
    #[error("the media worker is gone")]
    Gone,
}

impl MediaError {
    pub fn code(&self) -> &'static str {
        match self {
            MediaError::RoomFull(_) => "room_full",
            MediaError::NotJoined => "not_joined",
            MediaError::Forbidden(_) => "forbidden",
            MediaError::BadSdp(_) => "bad_sdp",
            MediaError::BadCandidate(_) => "bad_candidate",
            MediaError::NoOfferPending => "no_offer_pending",
            MediaError::ShuttingDown => "server_shutdown",
            MediaError::NothingToWatch => "nothing_to_watch",
            MediaError::Busy => "server_busy",
            MediaError::Gone => "internal",
        }
    }
}

/// Wakes a worker blocked in `poll` (an eventfd).
///
/// `pending` spares the worker a `read` on every turn and the senders a `write` per command
/// while a wake-up is already on its way.
#[derive(Debug)]
pub struct Waker {
    fd: OwnedFd,
    pending: AtomicBool,
}

impl Waker {
    pub fn new() -> io::Result<Self> {
        // SAFETY: eventfd has no memory-safety preconditions; the result is checked.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a fresh descriptor we own.
        Ok(Self {
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
            pending: AtomicBool::new(false),
        })
    }

    /// Call after queueing the command the worker is to see.
    pub fn wake(&self) {
        if self.pending.swap(true, Ordering::SeqCst) {
            return; // the fd is still readable, or the worker has yet to look at the queue
        }
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live u64 to our own eventfd. A full counter (EAGAIN)
        // still leaves the fd readable, which is all a wake-up needs.
        unsafe { libc::write(self.fd.as_raw_fd(), (&one as *const u64).cast(), 8) };
    }

    /// Resets the counter after a wake-up; call before looking at the command queue.
    pub fn drain(&self) {
        if !self.pending.load(Ordering::SeqCst) {
            return;
        }
        let mut buf: u64 = 0;
        // SAFETY: reads 8 bytes into a live u64 from our own non-blocking eventfd.
        unsafe { libc::read(self.fd.as_raw_fd(), (&mut buf as *mut u64).cast(), 8) };
        // Cleared only after the read: a wake() in between skipped its write, and its command
        // is already queued, so the caller's look at the queue finds it.
        self.pending.store(false, Ordering::SeqCst);
    }

    pub fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// The control plane's handle to one media worker.
#[derive(Clone)]
pub struct MediaHandle {
    tx: SyncSender<Command>,
    waker: Arc<Waker>,
}

/// The worker's end of the bridge.
pub struct CommandInbox {
    pub rx: Receiver<Command>,
    pub waker: Arc<Waker>,
}

pub fn channel() -> io::Result<(MediaHandle, CommandInbox)> {
    let (tx, rx) = sync_channel(COMMAND_QUEUE);
    let waker = Arc::new(Waker::new()?);
    Ok((
        MediaHandle {
            tx,
            waker: waker.clone(),
        },
        CommandInbox { rx, waker },
    ))
}

impl MediaHandle {
    /// Sends a command without waiting for the worker.
    pub fn send(&self, command: Command) -> Result<(), MediaError> {
        match self.tx.try_send(command) {
            Ok(()) => {
                self.waker.wake();
                Ok(())
            }
            Err(TrySendError::Full(_)) => Err(MediaError::Busy),
            Err(TrySendError::Disconnected(_)) => Err(MediaError::Gone),
        }
    }

    /// Sends a command built around a reply channel and waits for the reply.
    pub async fn request<T>(
        &self,
        make: impl FnOnce(Reply<T>) -> Command,
    ) -> Result<T, MediaError> {
        let (reply, rx) = oneshot::channel();
        self.send(make(reply))?;
        rx.await.map_err(|_| MediaError::Gone)?
    }

    /// Empties the worker's rooms for a graceful shutdown (see `Command::Shutdown`).
    pub async fn shutdown(&self) -> Result<(), MediaError> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::Shutdown { reply })?;
        rx.await.map_err(|_| MediaError::Gone)
    }

    pub async fn stats(&self) -> Result<WorkerStats, MediaError> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::Stats { reply })?;
        rx.await.map_err(|_| MediaError::Gone)
    }
}
