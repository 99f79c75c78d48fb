//! The media worker: routing, forwarding, negotiation and the life cycle of participants.

use std::any::Any;
use std::borrow::Cow;
use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::BytesMut;
use rtc::media_stream::MediaStreamTrack;
use rtc::peer_connection::event::{RTCPeerConnectionEvent, RTCTrackEvent, RTCTrackEventInit};
use rtc::peer_connection::message::RTCMessage;
use rtc::peer_connection::sdp::RTCSessionDescription;
use rtc::peer_connection::state::{RTCIceConnectionState, RTCPeerConnectionState};
use rtc::peer_connection::transport::RTCIceCandidateInit;
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtcp::transport_feedbacks::transport_layer_nack::TransportLayerNack;
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodingParameters, RTCRtpEncodingParameters, RtpCodecKind,
};
use rtc::sansio::Protocol;
use rtc::shared::marshal::MarshalSize;
use rtc::shared::{TaggedBytesMut, TransportContext, TransportProtocol};
use rtc::statistics::StatsSelector;
use rtc::statistics::report::RTCStatsReportEntry;
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;
use tracing::{debug, error, info, warn};

use super::demux::{DatagramKind, classify, is_dtls_client_hello, stun_binding_local_ufrag};
use super::history::RtpHistory;
use super::keyframe::{VideoCodec, is_keyframe};
use super::munger::{Munger, Rewrite};
use super::net::{BATCH, BatchSocket, Datagrams, RealTime, set_thread_scheduler, wait};
use super::peer::{
    self, CandidateVerdict, FORWARDED_EXTENSIONS, IgnoredCandidates, RemoteCandidates, same_codec,
};
use super::room::{
    DownTrack, HelloResend, IdMap, Participant, ParticipantId, Peer, PeerId, Room, Touched, Track,
    TrackId,
};
use super::sender_report::{self, SentStream};
use super::stats::{Drop, WorkerStats};
use crate::auth::random_token;
use crate::bridge::{
    Command, CommandInbox, JoinRequest, Joined, LeaveReason, MediaError, MediaEvent, Quality,
};
use crate::signal::protocol::{
    CandidateInit, MediaKind, MediaState, PcKind, ServerMessage, SubscribedTrack, TrackSource,
};

/// Most source addresses one peer may be reached from (ICE checks from several interfaces).
const MAX_ADDRS_PER_PEER: usize = 8;
/// Most STUN messages kept for a connection that has no answer yet (one check per candidate
/// pair, plus retransmissions).
const MAX_EARLY_STUN: usize = 8;
/// When an unanswered ClientHello is first sent again; then again after twice as long each
/// time, while that wait is at most `HELLO_RESEND_LAST` (so at 50, 150 and 350 ms). `rtc`
/// itself waits a second.
const HELLO_RESEND_FIRST: Duration = Duration::from_millis(50);
const HELLO_RESEND_LAST: Duration = Duration::from_millis(200);
/// Most m-lines a publish offer may carry (microphone, camera, screen, screen audio, spare).
const MAX_PUBLISH_SECTIONS: usize = 8;
/// How often the loudest participant of each room is chosen.
const SPEAKER_INTERVAL: Duration = Duration::from_millis(500);
/// RFC 6464 level (−dBov) below which nobody counts as speaking.
const SPEAKER_THRESHOLD: u32 = 60;
/// Forwarded packets are sent once this many are written, without waiting for the turn to
/// end: one `sendmmsg` batch. A burst of input (a keyframe to 19 legs is 285 packets) then
/// leaves as it is forwarded, rather than its first packet waiting for its last.
const SEND_AT: usize = BATCH;
/// How late the loop may handle a lax timer (`Worker::next_deadlines`) so that it shares a
/// wake-up with the datagrams: a timer that comes due while media flows is handled by the turn
/// of the next datagram instead of a wake-up of its own. In a room of two, ~350 datagrams a
/// second arrive ~3 ms apart, so 5 ms absorbs most of the ~40 timer wake-ups a second that
/// the connections' RTCP reports, TWCC feedback and NACK generation otherwise cost
/// (docs/design.md, "Timers of connected peers run up to 5 ms late"; measured in
/// docs/performance.md, "Small rooms"). Lateness of a few milliseconds on 100 ms to 1 s
/// intervals changes nothing a client sees.
const TIMER_SLACK: Duration = Duration::from_millis(5);
/// Longest the loop sleeps when no timer is due.
const IDLE_WAIT: Duration = Duration::from_millis(250);

/// What clients may make a worker hold or wait for (`--max-remote-candidates`,
/// `--media-start-timeout`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most remote ICE candidates one connection takes, trickled and in SDP together.
    pub max_remote_candidates: usize,
    /// How soon a connection must hear from its client after it is offered, and a participant
    /// that may only publish must have offered to.
    pub media_start_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_remote_candidates: 32,
            media_start_timeout: peer::CONNECT_TIMEOUT,
        }
    }
}

/// Starts a worker thread on `bind`, advertising `host` in its candidates, at real-time
/// priority `rt_priority` (SCHED_FIFO) when given and permitted.
pub fn spawn(
    index: usize,
    bind: SocketAddr,
    host_ip: std::net::IpAddr,
    rt_priority: Option<u8>,
    limits: Limits,
    inbox: CommandInbox,
    events: mpsc::Sender<MediaEvent>,
) -> io::Result<(SocketAddr, std::thread::JoinHandle<()>)> {
    let socket = BatchSocket::bind(bind)?;
    let local = socket.local_addr()?;
    let host = SocketAddr::new(host_ip, local.port());
    let mut worker = Worker::new(socket, host, inbox, events).with_limits(limits);
    let handle = std::thread::Builder::new()
        .name(format!("media-{index}"))
        .spawn(move || {
            if let Some(priority) = rt_priority {
                match set_realtime_priority(priority) {
                    Ok(()) => info!(priority, "media worker {index} runs at SCHED_FIFO"),
                    Err(err) => warn!(
                        priority,
                        "media worker {index} cannot run at SCHED_FIFO ({err}; it needs CAP_SYS_NICE \
                         or an RLIMIT_RTPRIO of at least {priority}, in Docker \
                         --ulimit rtprio={priority}): normal priority"
                    ),
                }
            }
            worker.run()
        })?;
    Ok((local, handle))
}

/// Puts the calling thread in the SCHED_FIFO class at `priority`. A forwarding thread that
/// shares its cores with other busy processes otherwise waits for the scheduler with packets
/// queued (docs/performance.md: the p99 of the server-added delay at 1 × 20 on two cores).
fn set_realtime_priority(priority: u8) -> io::Result<()> {
    set_thread_scheduler(libc::SCHED_FIFO, i32::from(priority))
}

pub struct Worker<D: Datagrams = BatchSocket> {
    socket: D,
    /// Our advertised address: the host candidate and every datagram's `local_addr`.
    host: SocketAddr,
    inbox: CommandInbox,
    /// Room life-cycle events for the call records.
    events: mpsc::Sender<MediaEvent>,
    peers: IdMap<PeerId, Peer>,
    by_ufrag: HashMap<String, PeerId>,
    by_addr: HashMap<SocketAddr, PeerId>,
    participants: IdMap<ParticipantId, Participant>,
    rooms: HashMap<String, Room>,
    tracks: IdMap<TrackId, Track>,
    next_peer: u64,
    stats: WorkerStats,
    touched: Vec<PeerId>,
    outbox: Vec<(SocketAddr, BytesMut)>,
    /// Datagrams of the batch being handled (kept to reuse its allocation).
    batch: Vec<(SocketAddr, BytesMut, Option<RealTime>)>,
    /// When the datagram being handled reached the kernel (the socket's receive timestamp).
    received: Option<RealTime>,
    /// Receive times of the RTP packets forwarded in this turn, for the delay histogram once
    /// they are sent.
    forwarded_received: Vec<RealTime>,
    /// RTP packets written to the peers since the last send (see `SEND_AT`).
    unsent: usize,
    /// Participants to remove once the current step is done (e.g. their queue overflowed).
    doomed: Vec<(ParticipantId, LeaveReason)>,
    next_speaker_check: Instant,
    /// The earliest timer deadline when the loop last went to sleep (`Some(None)`: no timer
    /// at all), so that a turn before it skips the scan of every peer's and track's timers:
    /// deadlines set since are all later than the turn that set them. `None` (a turn not
    /// started by `run`, as in the benches) scans.
    timers_due: Option<Option<Instant>>,
    /// When the last turn that handled datagrams ended, read for its `turn_time`: `run`
    /// reckons the next sleep from it instead of reading the clock again.
    turn_ended: Option<Instant>,
    stopped: bool,
    /// No more joins: the server is going away.
    shutting_down: bool,
    limits: Limits,
    /// The participant the code running now is about: a panic there removes it
    /// (`Worker::guarded`).
    culprit: Option<ParticipantId>,
    /// Makes reading a datagram into a connection of this room panic (the tests of panic
    /// containment).
    #[cfg(test)]
    panic_in_room: Option<String>,
}

impl Worker<BatchSocket> {
    /// Runs turns until every `MediaHandle` is dropped: waits on the socket, the command waker
    /// and the next timer.
    pub fn run(&mut self) {
        info!(addr = %self.host, "media worker started");
        while !self.stopped {
            let now = self.turn_ended.take().unwrap_or_else(Instant::now);
            let (strict, lax) = self.next_deadlines();
            self.timers_due = Some(strict.into_iter().chain(lax).min());
            let timeout = sleep_until_due(now, strict, lax);
            wait(
                [self.socket.raw_fd(), self.inbox.waker.raw_fd()],
                Some(timeout.unwrap_or(IDLE_WAIT).min(IDLE_WAIT)),
            );
            self.turn(Instant::now());
        }
        info!("media worker stopped");
    }
}

impl<D: Datagrams> Worker<D> {
    pub fn new(
        socket: D,
        host: SocketAddr,
        inbox: CommandInbox,
        events: mpsc::Sender<MediaEvent>,
    ) -> Self {
        Self {
            socket,
            host,
            inbox,
            events,
            peers: IdMap::default(),
            by_ufrag: HashMap::new(),
            by_addr: HashMap::new(),
            participants: IdMap::default(),
            rooms: HashMap::new(),
            tracks: IdMap::default(),
            next_peer: 1,
            stats: WorkerStats::default(),
            touched: Vec::new(),
            outbox: Vec::new(),
            batch: Vec::new(),
            received: None,
            forwarded_received: Vec::new(),
            unsent: 0,
            doomed: Vec::new(),
            next_speaker_check: Instant::now(),
            timers_due: None,
            turn_ended: None,
            stopped: false,
            shutting_down: false,
            limits: Limits::default(),
            culprit: None,
            #[cfg(test)]
            panic_in_room: None,
        }
    }

    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// Where datagrams come from and go to (the benches reach the in-memory ones here).
    pub fn datagrams(&mut self) -> &mut D {
        &mut self.socket
    }

    /// One turn of the loop; see the module docs.
    pub fn turn(&mut self, now: Instant) {
        self.inbox.waker.drain();
        loop {
            match self.inbox.rx.try_recv() {
                Ok(command) => self.guarded("a command", |w| w.handle_command(now, command)),
                Err(std::sync::mpsc::TryRecvError::Empty) => break,
                Err(std::sync::mpsc::TryRecvError::Disconnected) => {
                    self.stopped = true; // every MediaHandle is gone
                    break;
                }
            }
        }
        if self.stopped {
            return;
        }
        // Bounded, so timers and commands are never starved by a flood.
        let mut datagrams = 0;
        let mut batch = std::mem::take(&mut self.batch);
        for _ in 0..8 {
            let read = self
                .socket
                .recv_batch(|from, bytes, at| batch.push((from, bytes, at)));
            match read {
                Ok(0) => break,
                Ok(n) => {
                    datagrams += n;
                    for (from, bytes, at) in batch.drain(..) {
                        self.received = at;
                        self.guarded("a datagram", |w| w.handle_datagram(now, from, bytes));
                        if self.unsent >= SEND_AT {
                            self.send_written();
                        }
                    }
                    self.received = None;
                    if n < BATCH {
                        break; // drained: spare the call that would say so
                    }
                }
                Err(err) => {
                    warn!(%err, "media socket read failed");
                    break;
                }
            }
        }
        self.batch = batch;
        if self
            .timers_due
            .take()
            .is_none_or(|due| due.is_some_and(|t| t <= now))
        {
            self.handle_timers(now);
        }
        self.reap();
        self.flush();
        if datagrams > 0 {
            let ended = Instant::now();
            self.stats.turn_time.observe(ended.duration_since(now));
            self.turn_ended = Some(ended);
        }
    }

    /// The earliest deadline that must be met on time (connection setup, ClientHello resends,
    /// keyframe requests: a joining participant waits on them), and the earliest that may be
    /// met up to `TIMER_SLACK` late (the timers of connected peers: RTCP reports and feedback,
    /// NACK generation, consent; sender reports; the speaker check).
    fn next_deadlines(&self) -> (Option<Instant>, Option<Instant>) {
        let (mut strict, mut lax) = (None, None);
        let earliest = |slot: &mut Option<Instant>, at: Option<Instant>| {
            if let Some(at) = at {
                *slot = Some(slot.map_or(at, |s: Instant| s.min(at)));
            }
        };
        for p in self.peers.values() {
            let timer = if p.connected { &mut lax } else { &mut strict };
            earliest(timer, p.next_timeout);
            earliest(&mut lax, p.next_sender_report);
            earliest(&mut strict, p.hello_resend.as_ref().map(|h| h.at));
        }
        for t in self.tracks.values() {
            earliest(&mut strict, t.keyframes.deadline());
        }
        if !self.rooms.is_empty() {
            earliest(&mut lax, Some(self.next_speaker_check));
        }
        (strict, lax)
    }

    // ---- commands -----------------------------------------------------------------------

    fn handle_command(&mut self, now: Instant, command: Command) {
        let about = match &command {
            Command::PublishOffer { participant_id, .. }
            | Command::SubscribeAnswer { participant_id, .. }
            | Command::Candidate { participant_id, .. }
            | Command::MediaState { participant_id, .. }
            | Command::Leave { participant_id, .. }
            | Command::Watch { participant_id, .. }
            | Command::RestartIce { participant_id, .. } => Some(participant_id.as_str()),
            Command::Join { .. } | Command::Stats { .. } | Command::Shutdown { .. } => None,
        };
        self.culprit = about.and_then(|id| id.parse().ok());
        match command {
            Command::Join {
                request,
                events,
                reply,
            } => {
                let result = if self.shutting_down {
                    Err(MediaError::ShuttingDown)
                } else {
                    self.join(now, request, events)
                };
                let _ = reply.send(result);
            }
            Command::Watch {
                participant_id,
                sdp,
                pin,
                reply,
            } => {
                let _ = reply.send(self.watch(now, &participant_id, sdp, pin));
            }
            Command::RestartIce {
                participant_id,
                pc,
                ufrag,
                pwd,
                reply,
            } => {
                let _ = reply.send(self.restart_ice(now, &participant_id, pc, &ufrag, &pwd));
            }
            Command::Shutdown { reply } => {
                self.shutting_down = true;
                let everyone: Vec<ParticipantId> = self.participants.keys().copied().collect();
                for pid in everyone {
                    self.notify(pid, ServerMessage::ServerShutdown);
                    self.remove_participant(now, pid, LeaveReason::ServerShutdown);
                }
                self.flush();
                let _ = reply.send(());
            }
            Command::PublishOffer {
                participant_id,
                sdp,
                sources,
                reply,
            } => {
                let result = self.publish_offer(now, &participant_id, sdp, sources);
                let _ = reply.send(result);
            }
            Command::SubscribeAnswer {
                participant_id,
                sdp,
                reply,
            } => {
                let _ = reply.send(self.subscribe_answer(now, &participant_id, sdp));
            }
            Command::Candidate {
                participant_id,
                pc,
                candidate,
                reply,
            } => {
                let _ = reply.send(self.add_candidate(&participant_id, pc, candidate));
            }
            Command::MediaState {
                participant_id,
                state,
            } => {
                self.media_state(&participant_id, state);
            }
            Command::Leave {
                participant_id,
                reason,
            } => {
                if let Ok(id) = participant_id.parse() {
                    self.remove_participant(now, id, reason);
                }
            }
            Command::Stats { reply } => {
                let mut stats = self.stats.clone();
                stats.rooms = self.rooms.len();
                stats.participants = self.participants.len();
                stats.tracks = self.tracks.len();
                let _ = reply.send(stats);
            }
        }
    }

    fn lookup(&self, participant_id: &str) -> Result<ParticipantId, MediaError> {
        participant_id
            .parse()
            .ok()
            .filter(|id| self.participants.contains_key(id))
            .ok_or(MediaError::NotJoined)
    }

    /// Admits a participant. An earlier participant of the same user in the room, joined
    /// through the same kind of session, is replaced: it is told (`error` `replaced`, then its
    /// own `participant_left`) and removed with reason `replaced` once the new one is in, so
    /// the room (and its call) never empties in between and the user keeps one seat.
    fn join(
        &mut self,
        now: Instant,
        request: JoinRequest,
        events: tokio::sync::mpsc::Sender<ServerMessage>,
    ) -> Result<Joined, MediaError> {
        let room = self.rooms.entry(request.room.clone()).or_default();
        let replaced: Vec<ParticipantId> = room
            .participants
            .iter()
            .filter(|p| {
                self.participants
                    .get(p)
                    .is_some_and(|p| p.user_id == request.user_id && p.kind == request.kind)
            })
            .copied()
            .collect();
        if room.participants.len() - replaced.len() >= request.max_participants {
            if room.participants.is_empty() {
                self.rooms.remove(&request.room);
            }
            return Err(MediaError::RoomFull(request.max_participants));
        }
        let id = loop {
            let candidate = ParticipantId(rand::random());
            if !self.participants.contains_key(&candidate) {
                break candidate;
            }
        };
        let others: Vec<ParticipantId> = room
            .participants
            .iter()
            .filter(|p| !replaced.contains(p))
            .copied()
            .collect();
        room.participants.push(id);
        self.culprit = Some(id);
        let participant = Participant {
            id,
            room: request.room.clone(),
            user_id: request.user_id,
            name: request.name,
            kind: request.kind,
            media: MediaState::default(),
            media_told: false,
            can_publish: request.can_publish,
            can_subscribe: request.can_subscribe,
            events,
            publish: None,
            subscribe: None,
            sources: HashMap::new(),
            published: HashMap::new(),
            downtracks: IdMap::default(),
            offer_pending: false,
            resync: false,
            joined_at: now,
            fixed_subscriptions: false,
            bytes_in: 0,
            bytes_out: 0,
        };
        let info = participant.info();
        self.participants.insert(id, participant);
        info!(room = %request.room, participant = %id, "participant joined");
        self.emit(MediaEvent::ParticipantJoined {
            room: request.room.clone(),
            participant_id: id.to_string(),
            user_id: info.user_id.clone(),
            name: info.name.clone(),
        });

        let joined = Joined {
            participant_id: id.to_string(),
            participants: others
                .iter()
                .filter_map(|p| self.participants.get(p))
                .map(Participant::info)
                .collect(),
            tracks: self
                .tracks
                .values()
                .filter(|t| others.contains(&t.owner))
                .map(Track::info)
                .collect(),
        };
        for other in &others {
            self.notify(
                *other,
                ServerMessage::ParticipantJoined {
                    participant: info.clone(),
                },
            );
        }
        for old in replaced {
            info!(room = %request.room, participant = %old, by = %id, "participant replaced");
            self.notify(
                old,
                ServerMessage::Error {
                    code: "replaced".into(),
                    message: "you joined this room again from another session; this one has \
                              left it"
                        .into(),
                },
            );
            self.remove_participant(now, old, LeaveReason::Replaced);
        }
        self.sync_subscriptions(now, id);
        Ok(joined)
    }

    fn publish_offer(
        &mut self,
        now: Instant,
        participant_id: &str,
        sdp: String,
        sources: HashMap<String, TrackSource>,
    ) -> Result<String, MediaError> {
        let pid = self.lookup(participant_id)?;
        let Some(participant) = self.participants.get(&pid) else {
            return Err(MediaError::NotJoined);
        };
        if !participant.can_publish {
            return Err(MediaError::Forbidden("publish"));
        }
        let existing = participant.publish;
        let (audio, video, other) = peer::media_sections(&sdp);
        let sections = audio + video + other;
        if sections == 0 {
            return Err(MediaError::BadSdp("the offer has no media sections".into()));
        }
        if sections > MAX_PUBLISH_SECTIONS {
            return Err(MediaError::BadSdp(format!(
                "the offer has {sections} media sections; at most {MAX_PUBLISH_SECTIONS} are allowed"
            )));
        }
        // What `sources` may name: the tracks of this offer (at most one per section).
        let named: Vec<String> = peer::msid_track_ids(&sdp)
            .into_iter()
            .map(str::to_owned)
            .collect();

        let peer_id = match existing {
            Some(peer_id) => peer_id,
            None => self.new_peer(now, pid, PcKind::Publish).map_err(|e| {
                warn!(participant = %pid, error = %e, "cannot create a peer connection");
                MediaError::BadSdp("cannot create a peer connection".into())
            })?,
        };
        let result = match self.peers.get_mut(&peer_id) {
            Some(peer) => {
                let sdp = without_ignored_candidates(
                    peer,
                    sdp,
                    self.limits.max_remote_candidates,
                    &mut self.stats,
                );
                RTCSessionDescription::offer(sdp)
                    .map_err(|e| format!("cannot parse the offer: {e}"))
                    .and_then(|offer| apply_offer(&mut peer.pc, now, offer))
            }
            None => Err("the connection is gone".to_owned()),
        };
        let answer = match (result, self.participants.get_mut(&pid)) {
            (Ok(answer), Some(participant)) => {
                participant.publish = Some(peer_id);
                participant.sources.extend(sources);
                participant
                    .sources
                    .retain(|track, _| named.iter().any(|n| n == track));
                answer
            }
            (result, _) => {
                if existing.is_none() {
                    self.destroy_peer(peer_id);
                }
                return Err(MediaError::BadSdp(
                    result.err().unwrap_or_else(|| "not in a room".to_owned()),
                ));
            }
        };
        self.touch(peer_id);
        self.drop_unpublished_tracks(now, pid);
        Ok(answer)
    }

    fn subscribe_answer(
        &mut self,
        now: Instant,
        participant_id: &str,
        sdp: String,
    ) -> Result<(), MediaError> {
        let pid = self.lookup(participant_id)?;
        let Some(participant) = self.participants.get_mut(&pid) else {
            return Err(MediaError::NotJoined);
        };
        let (Some(peer_id), true) = (participant.subscribe, participant.offer_pending) else {
            return Err(MediaError::NoOfferPending);
        };
        let Some(peer) = self.peers.get_mut(&peer_id) else {
            return Err(MediaError::NoOfferPending);
        };
        let sdp = without_ignored_candidates(
            peer,
            sdp,
            self.limits.max_remote_candidates,
            &mut self.stats,
        );
        let answer = RTCSessionDescription::answer(sdp)
            .map_err(|e| MediaError::BadSdp(format!("cannot parse the answer: {e}")))?;
        peer.pc
            .set_remote_description(now, answer)
            .map_err(|e| MediaError::BadSdp(format!("cannot apply the answer: {e}")))?;
        participant.offer_pending = false;
        let resync = std::mem::take(&mut participant.resync);
        for (from, bytes) in std::mem::take(&mut peer.early_stun) {
            self.read_into_peer(now, peer_id, from, bytes);
        }
        self.bind_negotiated_legs(pid, peer_id);
        self.touch(peer_id);
        self.request_keyframes_for_new_legs(now, pid);
        if resync {
            self.sync_subscriptions(now, pid);
        }
        Ok(())
    }

    /// Fixes each new leg's payload type and extension ids from what was negotiated; returns
    /// how many legs can now carry media.
    fn bind_negotiated_legs(&mut self, pid: ParticipantId, peer_id: PeerId) -> usize {
        let (Some(participant), Some(peer)) = (
            self.participants.get_mut(&pid),
            self.peers.get_mut(&peer_id),
        ) else {
            return 0;
        };
        for (track_id, dt) in participant.downtracks.iter_mut() {
            if dt.out_pt.is_some() {
                continue;
            }
            let Some(track) = self.tracks.get(track_id) else {
                continue;
            };
            let Some(mut sender) = peer.pc.rtp_sender(dt.sender_id) else {
                continue;
            };
            let params = sender.get_parameters();
            dt.out_pt = params
                .rtp_parameters
                .codecs
                .iter()
                .find(|c| same_codec(&c.rtp_codec, &track.codec))
                .map(|c| c.payload_type);
            for (i, uri) in FORWARDED_EXTENSIONS.iter().enumerate() {
                dt.ext_out[i] = params
                    .rtp_parameters
                    .header_extensions
                    .iter()
                    .find(|h| h.uri == *uri)
                    .map_or(0, |h| h.id as u8);
            }
            if dt.out_pt.is_none() {
                warn!(participant = %pid, track = %track_id, codec = %track.codec.mime_type,
                    "the subscriber did not accept the track's codec");
            }
        }
        participant
            .downtracks
            .values()
            .filter(|dt| dt.out_pt.is_some())
            .count()
    }

    /// A viewer's own offer (WHEP): answer it with one publisher's audio and video on the
    /// viewer's m-lines. The viewer's subscriptions stay fixed: no server-side renegotiation.
    fn watch(
        &mut self,
        now: Instant,
        participant_id: &str,
        sdp: String,
        pin: Option<String>,
    ) -> Result<String, MediaError> {
        let pid = self.lookup(participant_id)?;
        let (audio, video, other) = peer::media_sections(&sdp);
        if audio > 1 || video > 1 || audio + video == 0 || other > 0 {
            return Err(MediaError::BadSdp(
                "a viewer's offer must have at most one audio and one video section".into(),
            ));
        }
        let Some(room) = self.participants.get(&pid).map(|p| p.room.clone()) else {
            return Err(MediaError::NotJoined);
        };
        let source = self.pick_source(&room, pid, pin.as_deref())?;
        let tracks: Vec<TrackId> = [MediaKind::Audio, MediaKind::Video]
            .into_iter()
            .filter_map(|kind| {
                self.tracks
                    .values()
                    .filter(|t| t.owner == source && t.kind == kind)
                    .min_by_key(|t| {
                        t.source != TrackSource::Camera && t.source != TrackSource::Microphone
                    })
                    .map(|t| t.id)
            })
            .collect();

        let peer_id = self.new_peer(now, pid, PcKind::Subscribe).map_err(|e| {
            warn!(participant = %pid, error = %e, "cannot create a peer connection");
            MediaError::BadSdp("cannot create a peer connection".into())
        })?;
        if let Some(participant) = self.participants.get_mut(&pid) {
            participant.fixed_subscriptions = true;
            participant.subscribe = Some(peer_id);
        }
        let result = self.answer_viewer(now, pid, peer_id, sdp, &tracks);
        if result.is_err() {
            self.doomed.push((pid, LeaveReason::Left));
        }
        result
    }

    fn answer_viewer(
        &mut self,
        now: Instant,
        pid: ParticipantId,
        peer_id: PeerId,
        sdp: String,
        tracks: &[TrackId],
    ) -> Result<String, MediaError> {
        let gone = || MediaError::BadSdp("the connection is gone".into());
        {
            let peer = self.peers.get_mut(&peer_id).ok_or_else(gone)?;
            let sdp = without_ignored_candidates(
                peer,
                sdp,
                self.limits.max_remote_candidates,
                &mut self.stats,
            );
            let offer = RTCSessionDescription::offer(sdp)
                .map_err(|e| MediaError::BadSdp(format!("cannot parse the offer: {e}")))?;
            peer.pc
                .set_remote_description(now, offer)
                .map_err(|e| MediaError::BadSdp(format!("cannot apply the offer: {e}")))?;
        }
        for id in tracks {
            self.add_downtrack(pid, peer_id, *id);
        }
        let peer = self.peers.get_mut(&peer_id).ok_or_else(gone)?;
        peer.pc
            .create_answer(None)
            .and_then(|a| peer.pc.set_local_description(now, a))
            .map_err(|e| MediaError::BadSdp(format!("cannot answer the offer: {e}")))?;
        let sdp = peer
            .pc
            .local_description()
            .map(|d| d.sdp)
            .ok_or_else(|| MediaError::BadSdp("no answer was produced".into()))?;
        if self.bind_negotiated_legs(pid, peer_id) == 0 {
            return Err(MediaError::BadSdp(
                "the offer accepts none of the codecs being published".into(),
            ));
        }
        self.touch(peer_id);
        Ok(sdp)
    }

    /// Restarts ICE on a connection the client offered (WHIP/WHEP): its last offer again with
    /// the new credentials, answered; returns the answer's ICE lines as an sdpfrag.
    fn restart_ice(
        &mut self,
        now: Instant,
        participant_id: &str,
        pc: PcKind,
        ufrag: &str,
        pwd: &str,
    ) -> Result<String, MediaError> {
        let valid = |s: &str| {
            !s.is_empty()
                && s.len() <= 256
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/')
        };
        if !valid(ufrag) || !valid(pwd) {
            return Err(MediaError::BadSdp(
                "the fragment needs a valid a=ice-ufrag and a=ice-pwd".into(),
            ));
        }
        let pid = self.lookup(participant_id)?;
        let Some(participant) = self.participants.get(&pid) else {
            return Err(MediaError::NotJoined);
        };
        let peer_id = match pc {
            PcKind::Publish => participant.publish,
            PcKind::Subscribe => participant.subscribe,
        }
        .ok_or(MediaError::NotJoined)?;
        let Some(peer) = self.peers.get_mut(&peer_id) else {
            return Err(MediaError::NotJoined);
        };
        let previous = peer
            .pc
            .remote_description()
            .map(|d| d.sdp.clone())
            .ok_or_else(|| MediaError::BadSdp("no offer to restart".into()))?;
        let offer: String = previous
            .lines()
            .map(|l| {
                if l.starts_with("a=ice-ufrag:") {
                    format!("a=ice-ufrag:{ufrag}")
                } else if l.starts_with("a=ice-pwd:") {
                    format!("a=ice-pwd:{pwd}")
                } else {
                    l.to_owned()
                }
            })
            .map(|l| l + "\r\n")
            .collect();
        let offer = RTCSessionDescription::offer(offer)
            .map_err(|e| MediaError::BadSdp(format!("cannot restart ICE: {e}")))?;
        let answer = apply_offer(&mut peer.pc, now, offer).map_err(MediaError::BadSdp)?;
        // The restart dropped the connection's remote candidates: the client trickles anew.
        // (Those in the previous offer, applied again here, were admitted already.)
        peer.candidates.clear();
        self.touch(peer_id);
        let mut frag = String::new();
        for line in answer.lines() {
            let keep = ["a=ice-ufrag:", "a=ice-pwd:", "a=ice-lite", "a=candidate:"]
                .iter()
                .any(|p| line.starts_with(p));
            if keep && !frag.contains(line) {
                frag.push_str(line);
                frag.push_str("\r\n");
            }
        }
        Ok(frag)
    }

    /// Whom a viewer watches: the pinned participant, or the room's first publisher of video
    /// (then of anything).
    fn pick_source(
        &self,
        room: &str,
        viewer: ParticipantId,
        pin: Option<&str>,
    ) -> Result<ParticipantId, MediaError> {
        let members = self.room_members(room);
        let publishes = |p: &ParticipantId, kind: Option<MediaKind>| {
            self.tracks
                .values()
                .any(|t| t.owner == *p && kind.is_none_or(|k| t.kind == k))
        };
        if let Some(pin) = pin {
            return pin
                .parse::<ParticipantId>()
                .ok()
                .filter(|p| members.contains(p) && *p != viewer && publishes(p, None))
                .ok_or(MediaError::NothingToWatch);
        }
        let others = || members.iter().filter(|p| **p != viewer);
        others()
            .find(|p| publishes(p, Some(MediaKind::Video)))
            .or_else(|| others().find(|p| publishes(p, None)))
            .copied()
            .ok_or(MediaError::NothingToWatch)
    }

    /// A trickled remote candidate. The server is ICE-lite: a candidate only helps
    /// diagnostics, so a connection takes at most `max_remote_candidates` (each new one costs
    /// `rtc` a scan of those it has), ignores mDNS ones, and refuses the rest in O(1).
    fn add_candidate(
        &mut self,
        participant_id: &str,
        pc: PcKind,
        candidate: CandidateInit,
    ) -> Result<(), MediaError> {
        let pid = self.lookup(participant_id)?;
        if candidate.candidate.trim().is_empty() {
            return Ok(()); // end-of-candidates
        }
        let Some(participant) = self.participants.get(&pid) else {
            return Err(MediaError::NotJoined);
        };
        let peer_id = match pc {
            PcKind::Publish => participant.publish,
            PcKind::Subscribe => participant.subscribe,
        };
        // A candidate for a connection that does not exist yet is accepted and ignored, as
        // browsers trickle early.
        let Some(peer) = peer_id.and_then(|id| self.peers.get_mut(&id)) else {
            return Ok(());
        };
        let limit = self.limits.max_remote_candidates;
        match peer.candidates.admit(&candidate.candidate, limit) {
            CandidateVerdict::Known => Ok(()),
            CandidateVerdict::Mdns => {
                self.stats.candidates_ignored_mdns += 1;
                Ok(())
            }
            CandidateVerdict::OverLimit => {
                self.stats.candidates_ignored_over_limit += 1;
                Err(MediaError::BadCandidate(format!(
                    "a connection takes at most {limit} remote candidates; this one is ignored"
                )))
            }
            CandidateVerdict::Malformed => {
                self.stats.candidates_ignored_over_limit += 1;
                Err(MediaError::BadCandidate("cannot read the candidate".into()))
            }
            CandidateVerdict::New => peer
                .pc
                .add_remote_candidate(RTCIceCandidateInit {
                    candidate: candidate.candidate,
                    sdp_mid: candidate.sdp_mid,
                    sdp_mline_index: candidate.sdp_mline_index,
                    username_fragment: candidate.username_fragment,
                    ..Default::default()
                })
                .map_err(|e| MediaError::BadCandidate(format!("cannot use the candidate: {e}"))),
        }
    }

    fn media_state(&mut self, participant_id: &str, state: MediaState) {
        let Some((pid, participant)) = participant_id
            .parse()
            .ok()
            .and_then(|id| Some((id, self.participants.get_mut(&id)?)))
        else {
            return;
        };
        // Only a change is news: a repeated state is neither recorded nor relayed, so a
        // burst of them costs the others nothing.
        if participant.media_told && participant.media == state {
            return;
        }
        participant.media_told = true;
        participant.media = state;
        let room = participant.room.clone();
        let event = MediaEvent::MediaStateChanged {
            room: room.clone(),
            participant_id: pid.to_string(),
            user_id: participant.user_id.clone(),
            state,
        };
        self.emit(event);
        let msg = ServerMessage::MediaState {
            participant_id: pid.to_string(),
            audio: state.audio,
            video: state.video,
            screen: state.screen,
        };
        self.broadcast(&room, Some(pid), msg);
    }

    // ---- peers and routing --------------------------------------------------------------

    fn new_peer(
        &mut self,
        now: Instant,
        owner: ParticipantId,
        kind: PcKind,
    ) -> Result<PeerId, rtc::shared::error::Error> {
        let ufrag = loop {
            let u = random_token(6);
            if !self.by_ufrag.contains_key(&u) {
                break u;
            }
        };
        let pwd = random_token(16);
        let pc = peer::build(now, self.host, &ufrag, &pwd, kind == PcKind::Publish)?;
        let id = PeerId(self.next_peer);
        self.next_peer += 1;
        self.by_ufrag.insert(ufrag.clone(), id);
        self.peers.insert(
            id,
            Peer {
                pc,
                kind,
                owner,
                ufrag,
                addrs: Vec::new(),
                next_timeout: None,
                last_heard: now,
                heard: false,
                touched: Touched::No,
                connected: false,
                next_sender_report: (kind == PcKind::Subscribe)
                    .then(|| now + sender_report::INTERVAL),
                early_stun: Vec::new(),
                dtls_heard: false,
                candidates: RemoteCandidates::default(),
                hello_resend: None,
            },
        );
        self.touch(id);
        Ok(id)
    }

    fn destroy_peer(&mut self, id: PeerId) {
        let Some(mut peer) = self.peers.remove(&id) else {
            return;
        };
        let _ = peer.pc.close();
        // Send what closing produced (DTLS close_notify) so the client learns at once.
        while let Some(msg) = peer.pc.poll_write() {
            self.outbox.push((msg.transport.peer_addr, msg.message));
        }
        self.by_ufrag.remove(&peer.ufrag);
        for addr in &peer.addrs {
            self.by_addr.remove(addr);
        }
    }

    fn touch(&mut self, id: PeerId) {
        self.touch_with(id, Touched::Yes);
    }

    /// Notes that `how` reached peer `id` since its last drain (`Touched`).
    fn touch_with(&mut self, id: PeerId, how: Touched) {
        if let Some(peer) = self.peers.get_mut(&id) {
            note_touch(&mut self.touched, id, &mut peer.touched, how);
        }
    }

    fn route(&mut self, from: SocketAddr, bytes: &[u8]) -> Option<PeerId> {
        if let Some(id) = self.by_addr.get(&from) {
            return Some(*id);
        }
        let ufrag = stun_binding_local_ufrag(bytes)?;
        let id = *self.by_ufrag.get(ufrag)?;
        let peer = self.peers.get_mut(&id)?;
        if peer.addrs.len() >= MAX_ADDRS_PER_PEER {
            return None;
        }
        peer.addrs.push(from);
        self.by_addr.insert(from, id);
        Some(id)
    }

    fn handle_datagram(&mut self, now: Instant, from: SocketAddr, bytes: BytesMut) {
        self.stats.datagrams_in += 1;
        self.stats.bytes_in += bytes.len() as u64;
        let kind = classify(&bytes);
        if kind == DatagramKind::Unknown {
            self.stats.drop(Drop::NotWebRtc);
            return;
        }
        let Some(peer_id) = self.route(from, &bytes) else {
            self.stats.drop(Drop::UnknownSource);
            return;
        };
        let Some(peer) = self.peers.get_mut(&peer_id) else {
            self.stats.drop(Drop::UnknownSource); // routing tables hold live peers only
            return;
        };
        self.culprit = Some(peer.owner);
        peer.last_heard = now;
        peer.heard = true;
        if let Some(owner) = self.participants.get_mut(&peer.owner) {
            owner.bytes_in += bytes.len() as u64;
        }
        if kind == DatagramKind::Dtls {
            peer.dtls_heard = true;
            peer.hello_resend = None;
        }
        if kind == DatagramKind::Stun && peer.pc.remote_description().is_none() {
            // Without the client's credentials ICE would reject it ("password is empty").
            if peer.early_stun.len() < MAX_EARLY_STUN {
                peer.early_stun.push((from, bytes));
            } else {
                self.stats.drop(Drop::PeerRejected);
            }
            return;
        }
        self.read_into_peer(now, peer_id, from, bytes);
    }

    /// Hands a routed datagram to its connection and drains what that produced.
    fn read_into_peer(&mut self, now: Instant, peer_id: PeerId, from: SocketAddr, bytes: BytesMut) {
        let Some(peer) = self.peers.get_mut(&peer_id) else {
            return;
        };
        #[cfg(test)]
        if let Some(room) = &self.panic_in_room
            && self
                .participants
                .get(&peer.owner)
                .is_some_and(|p| p.room == *room)
        {
            panic!("a datagram for room {room}");
        }
        let msg = TaggedBytesMut {
            now,
            transport: TransportContext {
                local_addr: self.host,
                peer_addr: from,
                ecn: None,
                transport_protocol: TransportProtocol::UDP,
            },
            message: bytes,
        };
        let how = match peer.pc.handle_read_settled(msg) {
            Ok(true) => Touched::ReadSrtp,
            Ok(false) => Touched::Yes,
            Err(err) => {
                debug!(%from, %err, "peer rejected a datagram");
                self.stats.drop(Drop::PeerRejected);
                Touched::Yes
            }
        };
        self.touch_with(peer_id, how);
        self.drain_peer(now, peer_id);
    }

    /// The peers whose `deadline` has come.
    fn peers_due(&self, now: Instant, deadline: impl Fn(&Peer) -> Option<Instant>) -> Vec<PeerId> {
        self.peers
            .iter()
            .filter(|(_, p)| deadline(p).is_some_and(|t| t <= now))
            .map(|(id, _)| *id)
            .collect()
    }

    fn handle_timers(&mut self, now: Instant) {
        for id in self.peers_due(now, |p| p.next_timeout) {
            self.with_peer(id, "a connection's timer", |w| {
                if let Some(peer) = w.peers.get_mut(&id) {
                    let _ = peer.pc.handle_timeout(now);
                    peer.next_timeout = None;
                    w.touch(id);
                    w.drain_peer(now, id);
                }
            });
        }
        for id in self.peers_due(now, |p| p.next_sender_report) {
            self.with_peer(id, "sender reports", |w| w.send_sender_reports(now, id));
        }
        for id in self.peers_due(now, |p| p.hello_resend.as_ref().map(|h| h.at)) {
            let Some(peer) = self.peers.get_mut(&id) else {
                continue;
            };
            let Some(resend) = peer.hello_resend.as_mut() else {
                continue;
            };
            self.outbox.push((resend.to, resend.hello.clone()));
            resend.interval *= 2;
            resend.at = now + resend.interval;
            if resend.interval > HELLO_RESEND_LAST {
                peer.hello_resend = None;
            }
        }
        let keyframes_due: Vec<(TrackId, ParticipantId)> = self
            .tracks
            .values()
            .filter(|t| t.keyframes.deadline().is_some_and(|d| d <= now))
            .map(|t| (t.id, t.owner))
            .collect();
        for (id, owner) in keyframes_due {
            self.guarded("a keyframe request", |w| {
                w.culprit = Some(owner);
                if w.tracks.get_mut(&id).is_some_and(|t| t.keyframes.poll(now)) {
                    w.send_keyframe_request(now, id);
                }
            });
        }
        if now >= self.next_speaker_check {
            self.next_speaker_check = now + SPEAKER_INTERVAL;
            self.guarded("the speaker check", |w| {
                w.update_speakers();
                w.drop_silent_peers(now);
            });
        }
    }

    /// One RTCP sender report for each leg of subscribe connection `peer_id` that has sent
    /// anything (see `media::sender_report`).
    fn send_sender_reports(&mut self, now: Instant, peer_id: PeerId) {
        let Some(peer) = self.peers.get_mut(&peer_id) else {
            return;
        };
        peer.next_sender_report = Some(now + sender_report::INTERVAL);
        let Some(participant) = self.participants.get_mut(&peer.owner) else {
            return;
        };
        if !peer.connected {
            return;
        }
        // One clock reading for all of them: the wall-clock time of the monotonic `at`.
        let at = Instant::now();
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        for (id, dt) in &mut participant.downtracks {
            let Some(track) = self.tracks.get(id) else {
                continue;
            };
            let ssrc = dt.munger.ssrc();
            if let Some(sent) = dt.sent.take_unrecorded() {
                peer.pc.record_rtp_sent(
                    ssrc,
                    sent.packets,
                    sent.header_bytes,
                    sent.payload_bytes,
                    sent.last_sent,
                );
            }
            let clock_rate = track.codec.clock_rate;
            let Some(report) = dt.sent.report(ssrc, clock_rate, at, wall) else {
                continue;
            };
            if let Some(mut sender) = peer.pc.rtp_sender(dt.sender_id) {
                let _ = sender.write_rtcp(now, vec![Box::new(report)]);
            }
        }
        self.touch(peer_id);
    }

    /// Everything a peer produced after an input: forwarded RTP, keyframe requests, events.
    fn drain_peer(&mut self, now: Instant, peer_id: PeerId) {
        loop {
            let Some(peer) = self.peers.get_mut(&peer_id) else {
                return;
            };
            let (owner, kind) = (peer.owner, peer.kind);
            // After reads only (`Touched::ReadSrtp`), everything is queued already.
            let settled = peer.touched == Touched::ReadSrtp;
            let msg = if settled {
                peer.pc.poll_read_queued()
            } else {
                peer.pc.poll_read()
            };
            if let Some(msg) = msg {
                match msg.message {
                    RTCMessage::RtpPacket(rtc_track_id, packet) if kind == PcKind::Publish => {
                        let track = self
                            .participants
                            .get(&owner)
                            .and_then(|p| p.published.get(&rtc_track_id))
                            .copied();
                        match track {
                            Some(track_id) => self.forward(now, track_id, packet),
                            None => self.stats.drop(Drop::NoSubscribers),
                        }
                    }
                    RTCMessage::RtcpPacket(rtc_track_id, packets) if kind == PcKind::Subscribe => {
                        let wants_keyframe = packets
                            .iter()
                            .any(|p| peer::is_keyframe_request(p.as_ref()));
                        self.stats.nacks_in += packets
                            .iter()
                            .filter(|p| p.as_any().is::<TransportLayerNack>())
                            .count() as u64;
                        let track = self
                            .participants
                            .get(&owner)
                            .and_then(|p| p.downtrack_by_rtc_id(&rtc_track_id));
                        if let (true, Some(track_id)) = (wants_keyframe, track) {
                            self.stats.keyframe_requests_in += 1;
                            self.request_keyframe(now, track_id);
                        }
                        if let Some(track_id) = track {
                            for nack in packets
                                .iter()
                                .filter_map(|p| p.as_any().downcast_ref::<TransportLayerNack>())
                            {
                                self.retransmit(now, owner, peer_id, track_id, nack);
                            }
                        }
                    }
                    _ => {}
                }
                continue;
            }
            let event = if settled {
                peer.pc.poll_event_queued()
            } else {
                peer.pc.poll_event()
            };
            if let Some(event) = event {
                // Handling an event may act on the connection: the drains walk it again.
                self.touch(peer_id);
                self.handle_peer_event(now, peer_id, event);
                continue;
            }
            return;
        }
    }

    /// Answers a subscriber's NACK for one of its down-tracks from the track's history: each
    /// lost packet this leg numbered is sent again as the leg sent it the first time.
    fn retransmit(
        &mut self,
        now: Instant,
        owner: ParticipantId,
        peer_id: PeerId,
        track_id: TrackId,
        nack: &TransportLayerNack,
    ) {
        let (Some(track), Some(participant), Some(peer)) = (
            self.tracks.get(&track_id),
            self.participants.get_mut(&owner),
            self.peers.get_mut(&peer_id),
        ) else {
            return;
        };
        let (Some(history), Some(dt)) = (&track.history, participant.downtracks.get_mut(&track_id))
        else {
            return;
        };
        let Some(out_pt) = dt.out_pt else {
            return;
        };
        for lost in nack.nacks.iter().flat_map(|pair| pair.packet_list()) {
            let Some(packet) = dt
                .munger
                .incoming_seq(lost)
                .and_then(|seq| history.get(seq))
            else {
                self.stats.retransmissions_missed += 1;
                continue;
            };
            // The leg numbered `lost`, so it has started and maps the packet.
            let Some(rewrite) = dt
                .munger
                .map(packet.header.sequence_number, packet.header.timestamp)
            else {
                continue;
            };
            let out = leg_packet(packet, rewrite, out_pt, &track.ext_in, &dt.ext_out);
            let header_len = out.header.marshal_size();
            if peer.pc.write_rtp_unintercepted(now, out).is_ok() {
                dt.sent
                    .on_sent(now, rewrite.timestamp, header_len, packet.payload.len());
                self.stats.retransmissions += 1;
            }
        }
        self.touch(peer_id);
    }

    fn handle_peer_event(&mut self, now: Instant, peer_id: PeerId, event: RTCPeerConnectionEvent) {
        let Some(peer) = self.peers.get_mut(&peer_id) else {
            return;
        };
        let (owner, kind) = (peer.owner, peer.kind);
        match event {
            RTCPeerConnectionEvent::OnTrack(RTCTrackEvent::OnOpen(init))
                if kind == PcKind::Publish =>
            {
                self.open_track(now, peer_id, init);
            }
            RTCPeerConnectionEvent::OnConnectionStateChangeEvent(state) => {
                debug!(participant = %owner, pc = ?kind, %state, "connection state");
                match state {
                    RTCPeerConnectionState::Connected => {
                        peer.connected = true;
                        if kind == PcKind::Subscribe {
                            self.request_keyframes_for_new_legs(now, owner);
                        }
                    }
                    RTCPeerConnectionState::Failed | RTCPeerConnectionState::Closed => {
                        self.doomed.push((owner, LeaveReason::Timeout));
                    }
                    _ => {}
                }
            }
            RTCPeerConnectionEvent::OnIceConnectionStateChangeEvent(
                RTCIceConnectionState::Failed,
            ) => {
                self.doomed.push((owner, LeaveReason::Timeout));
            }
            _ => {}
        }
    }

    /// ICE consent freshness for an ICE-lite server: a connection the client stopped talking on
    /// (or never started) takes its participant with it.
    ///
    /// A participant must start media within `media_start_timeout`: each connection must hear
    /// from its client that soon after it was made (the client's publish offer, or the server's
    /// first subscribe offer), and a participant that may not subscribe, whose only part is to
    /// publish, must have offered to. A participant without connections that may subscribe is
    /// waiting for something to receive (alone in the room, or only with people who publish
    /// nothing), as the web client does without camera and microphone: it stays.
    fn drop_silent_peers(&mut self, now: Instant) {
        let start = self.limits.media_start_timeout;
        for peer in self.peers.values() {
            let limit = if peer.heard {
                peer::SILENCE_TIMEOUT
            } else {
                start
            };
            if now.saturating_duration_since(peer.last_heard) > limit {
                debug!(participant = %peer.owner, pc = ?peer.kind, "connection silent; removing");
                self.doomed.push((peer.owner, LeaveReason::Timeout));
            }
        }
        for p in self.participants.values() {
            if !p.can_subscribe
                && p.publish.is_none()
                && p.subscribe.is_none()
                && now.saturating_duration_since(p.joined_at) > start
            {
                debug!(participant = %p.id, "never offered to publish; removing");
                self.doomed.push((p.id, LeaveReason::Timeout));
            }
        }
    }

    // ---- tracks -------------------------------------------------------------------------

    fn open_track(&mut self, now: Instant, peer_id: PeerId, init: RTCTrackEventInit) {
        let Some(peer) = self.peers.get_mut(&peer_id) else {
            return;
        };
        let owner = peer.owner;
        let Some(participant) = self.participants.get_mut(&owner) else {
            return;
        };
        if participant.published.contains_key(&init.track_id) {
            return; // another simulcast layer of a track we already forward
        }
        if participant.published.len() >= MAX_PUBLISH_SECTIONS {
            // A publisher renaming its tracks on every renegotiation.
            warn!(participant = %owner, "too many tracks; not opening another");
            self.stats.tracks_refused += 1;
            return;
        }
        let Some(mut receiver) = peer.pc.rtp_receiver(init.receiver_id) else {
            return;
        };
        let rtc_kind = receiver.track().kind();
        let Some(codec) = receiver.track().codec(init.ssrc).cloned() else {
            warn!(participant = %owner, "a track opened without a codec");
            return;
        };
        let mut ext_in = [0u8; 16];
        for h in &receiver.get_parameters().rtp_parameters.header_extensions {
            if let Some(i) = FORWARDED_EXTENSIONS.iter().position(|u| *u == h.uri)
                && (h.id as usize) < ext_in.len()
            {
                ext_in[h.id as usize] = i as u8 + 1;
            }
        }
        let kind = if rtc_kind == RtpCodecKind::Audio {
            MediaKind::Audio
        } else {
            MediaKind::Video
        };
        let source = participant
            .sources
            .get(&init.track_id)
            .copied()
            .unwrap_or(match kind {
                MediaKind::Audio => TrackSource::Microphone,
                MediaKind::Video => TrackSource::Camera,
            });
        let id = TrackId(rand::random());
        participant.published.insert(init.track_id.clone(), id);
        let room = participant.room.clone();
        let track = Track {
            id,
            owner,
            kind,
            source,
            video: VideoCodec::from_mime(&codec.mime_type),
            codec,
            receiver_id: init.receiver_id,
            ssrc: init.ssrc,
            ext_in,
            keyframes: Default::default(),
            history: (kind == MediaKind::Video).then(RtpHistory::default),
            subscribers: Vec::new(),
            level_sum: 0,
            level_count: 0,
        };
        info!(participant = %owner, track = %id, codec = %track.codec.mime_type, ?source, "track published");
        let announce = ServerMessage::TrackAdded {
            track: track.info(),
        };
        self.tracks.insert(id, track);
        self.broadcast(&room, Some(owner), announce);
        for other in self.room_members(&room) {
            if other != owner {
                self.sync_subscriptions(now, other);
            }
        }
    }

    /// After a publish renegotiation: tracks whose m-line no longer sends are unpublished.
    fn drop_unpublished_tracks(&mut self, now: Instant, pid: ParticipantId) {
        let Some(participant) = self.participants.get(&pid) else {
            return;
        };
        let Some(peer) = participant.publish.and_then(|id| self.peers.get_mut(&id)) else {
            return;
        };
        let receiving: Vec<_> = (0..peer.pc.get_transceivers().count())
            .filter_map(|i| {
                let t = peer.pc.rtp_transceiver(i)?;
                t.direction().has_recv().then(|| t.receiver()).flatten()
            })
            .collect();
        let gone: Vec<TrackId> = participant
            .published
            .values()
            .filter(|t| {
                self.tracks
                    .get(t)
                    .is_some_and(|t| !receiving.contains(&t.receiver_id))
            })
            .copied()
            .collect();
        for track in gone {
            self.remove_track(now, track);
        }
    }

    fn remove_track(&mut self, now: Instant, id: TrackId) {
        let Some(track) = self.tracks.remove(&id) else {
            return;
        };
        let room = match self.participants.get_mut(&track.owner) {
            Some(owner) => {
                owner.published.retain(|_, t| *t != id);
                owner.room.clone()
            }
            None => return,
        };
        info!(track = %id, participant = %track.owner, "track unpublished");
        self.broadcast(
            &room,
            Some(track.owner),
            ServerMessage::TrackRemoved {
                track_id: id.to_string(),
                participant_id: track.owner.to_string(),
            },
        );
        for sub in track.subscribers {
            self.sync_subscriptions(now, sub);
        }
    }

    fn room_members(&self, room: &str) -> Vec<ParticipantId> {
        self.rooms
            .get(room)
            .map(|r| r.participants.clone())
            .unwrap_or_default()
    }

    // ---- subscriptions ------------------------------------------------------------------

    /// Brings `pid`'s subscribe connection in line with the room: adds down-tracks for new
    /// tracks, removes those of gone ones, and sends one offer. Offers never overlap.
    fn sync_subscriptions(&mut self, now: Instant, pid: ParticipantId) {
        let Some(participant) = self.participants.get_mut(&pid) else {
            return;
        };
        if !participant.can_subscribe {
            return;
        }
        if participant.fixed_subscriptions {
            // A viewer (WHEP) keeps its m-lines; legs of gone tracks just fall silent.
            let tracks = &self.tracks;
            participant
                .downtracks
                .retain(|id, _| tracks.contains_key(id));
            return;
        }
        if participant.offer_pending {
            participant.resync = true;
            return;
        }
        let room = participant.room.clone();
        let members = self.room_members(&room);
        let wanted: Vec<TrackId> = self
            .tracks
            .values()
            .filter(|t| t.owner != pid && members.contains(&t.owner))
            .map(|t| t.id)
            .collect();
        let Some(participant) = self.participants.get_mut(&pid) else {
            return;
        };
        let to_remove: Vec<TrackId> = participant
            .downtracks
            .keys()
            .filter(|t| !wanted.contains(t))
            .copied()
            .collect();
        let to_add: Vec<TrackId> = wanted
            .iter()
            .filter(|t| !participant.downtracks.contains_key(t))
            .copied()
            .collect();
        if to_add.is_empty() && to_remove.is_empty() {
            return;
        }
        let peer_id = match participant.subscribe {
            Some(id) => id,
            None => match self.new_peer(now, pid, PcKind::Subscribe) {
                Ok(id) => id,
                Err(err) => {
                    warn!(participant = %pid, %err, "cannot create the subscribe connection");
                    self.doomed.push((pid, LeaveReason::Kicked));
                    return;
                }
            },
        };
        let (Some(participant), Some(peer)) = (
            self.participants.get_mut(&pid),
            self.peers.get_mut(&peer_id),
        ) else {
            return;
        };
        participant.subscribe = Some(peer_id);

        for id in to_remove {
            if let Some(dt) = participant.downtracks.remove(&id) {
                let _ = peer.pc.remove_track(dt.sender_id);
            }
            if let Some(track) = self.tracks.get_mut(&id) {
                track.subscribers.retain(|s| *s != pid);
            }
        }
        for id in to_add {
            self.add_downtrack(pid, peer_id, id);
        }
        let (Some(participant), Some(peer)) = (
            self.participants.get_mut(&pid),
            self.peers.get_mut(&peer_id),
        ) else {
            return;
        };

        let offer = peer
            .pc
            .create_offer(None)
            .and_then(|offer| peer.pc.set_local_description(now, offer));
        let sdp = match (offer, peer.pc.local_description()) {
            (Ok(()), Some(desc)) => desc.sdp,
            (result, _) => {
                warn!(participant = %pid, ?result, "cannot create a subscribe offer");
                self.doomed.push((pid, LeaveReason::Kicked));
                return;
            }
        };
        // Which m-line carries which track.
        for i in 0..peer.pc.get_transceivers().count() {
            let Some(t) = peer.pc.rtp_transceiver(i) else {
                continue;
            };
            let (Some(sender), Some(mid)) = (t.sender(), t.mid().clone()) else {
                continue;
            };
            if let Some(dt) = participant
                .downtracks
                .values_mut()
                .find(|dt| dt.sender_id == sender)
            {
                dt.mid = mid;
            }
        }
        let tracks = participant
            .downtracks
            .iter()
            .filter_map(|(id, dt)| {
                Some(SubscribedTrack {
                    mid: dt.mid.clone(),
                    track: self.tracks.get(id)?.info(),
                })
            })
            .collect();
        participant.offer_pending = true;
        self.touch(peer_id);
        self.notify(pid, ServerMessage::SubscribeOffer { sdp, tracks });
    }

    /// Adds a sender for `id` to `pid`'s subscribe connection and the DownTrack behind it.
    fn add_downtrack(&mut self, pid: ParticipantId, peer_id: PeerId, id: TrackId) {
        let (Some(track), Some(participant), Some(peer)) = (
            self.tracks.get_mut(&id),
            self.participants.get_mut(&pid),
            self.peers.get_mut(&peer_id),
        ) else {
            return;
        };
        let ssrc: u32 = rand::random();
        let rtc_track_id = id.to_string();
        let kind = match track.kind {
            MediaKind::Audio => RtpCodecKind::Audio,
            MediaKind::Video => RtpCodecKind::Video,
        };
        let media = MediaStreamTrack::new(
            track.owner.to_string(),
            rtc_track_id.clone(),
            format!("{:?}", track.source),
            kind,
            vec![RTCRtpEncodingParameters {
                rtp_coding_parameters: RTCRtpCodingParameters {
                    ssrc: Some(ssrc),
                    ..Default::default()
                },
                codec: track.codec.clone(),
                ..Default::default()
            }],
        );
        match peer.pc.add_track(media) {
            Ok(sender_id) => {
                track.subscribers.push(pid);
                participant.downtracks.insert(
                    id,
                    DownTrack {
                        sender_id,
                        rtc_track_id,
                        mid: String::new(),
                        out_pt: None,
                        ext_out: [0; FORWARDED_EXTENSIONS.len()],
                        munger: Munger::new(ssrc, rand::random(), rand::random()),
                        is_video: track.kind == MediaKind::Video,
                        sent: SentStream::default(),
                    },
                );
            }
            Err(err) => warn!(participant = %pid, track = %id, %err, "cannot add a down-track"),
        }
    }

    // ---- forwarding ---------------------------------------------------------------------

    /// Forwards one RTP packet of `track_id` to every down-track: the payload is shared, the
    /// header rewritten for each leg.
    fn forward(&mut self, now: Instant, track_id: TrackId, packet: rtc::rtp::Packet) {
        self.stats.rtp_in += 1;
        let Some(track) = self.tracks.get_mut(&track_id) else {
            return;
        };
        if packet.header.ssrc != track.ssrc {
            return; // a simulcast layer we do not forward
        }
        if track.kind == MediaKind::Audio
            && let Some(level) = audio_level(&packet, &track.ext_in)
        {
            track.level_sum += 127 - u32::from(level);
            track.level_count += 1;
        }
        if track.subscribers.is_empty() {
            self.stats.drop(Drop::NoSubscribers);
            return;
        }
        let keyframe = track.video.map(|codec| is_keyframe(codec, &packet.payload));
        let mut wants_keyframe = false;
        let forwarded_before = self.stats.rtp_forwarded;
        for sub in &track.subscribers {
            let Some(participant) = self.participants.get_mut(sub) else {
                continue;
            };
            let Some(dt) = participant.downtracks.get_mut(&track_id) else {
                continue;
            };
            let Some(leg_peer) = participant.subscribe else {
                continue;
            };
            let Some(peer) = self.peers.get_mut(&leg_peer) else {
                continue;
            };
            let Some(out_pt) = dt.out_pt.filter(|_| peer.connected) else {
                self.stats.drop(Drop::LegNotReady);
                continue;
            };
            if keyframe == Some(false) && !dt.munger.started() {
                self.stats.drop(Drop::WaitingForKeyframe);
                wants_keyframe = true;
                continue;
            }
            let rewrite = dt
                .munger
                .rewrite(packet.header.sequence_number, packet.header.timestamp);
            let out = leg_packet(&packet, rewrite, out_pt, &track.ext_in, &dt.ext_out);
            let header_len = out.header.marshal_size();
            // Not through `RTCRtpSender::write_rtp`: its per-packet checks of the payload type
            // and extensions repeat what `out_pt` and `ext_out` were derived from. Our `rtc`
            // takes the packet past the interceptors, straight to SRTP and ICE; the worker
            // sends the sender reports and answers NACKs (vendor/rtc/SWITCHBOARD.md).
            if peer.pc.write_rtp_unintercepted(now, out).is_err() {
                self.stats.drop(Drop::WriteFailed);
                continue;
            }
            dt.sent
                .on_sent(now, rewrite.timestamp, header_len, packet.payload.len());
            self.stats.rtp_forwarded += 1;
            self.unsent += 1;
            note_touch(
                &mut self.touched,
                leg_peer,
                &mut peer.touched,
                Touched::Forwarded,
            );
        }
        let forwarded = self.stats.rtp_forwarded > forwarded_before;
        if let (true, Some(at)) = (forwarded, self.received) {
            self.forwarded_received.push(at);
        }
        if let (true, Some(history)) = (forwarded, track.history.as_mut()) {
            history.push(packet);
        }
        if wants_keyframe {
            self.request_keyframe(now, track_id);
        }
    }

    fn request_keyframes_for_new_legs(&mut self, now: Instant, pid: ParticipantId) {
        let Some(participant) = self.participants.get(&pid) else {
            return;
        };
        let connected = participant
            .subscribe
            .and_then(|id| self.peers.get(&id))
            .is_some_and(|p| p.connected);
        if !connected {
            return;
        }
        let fresh: Vec<TrackId> = participant
            .downtracks
            .iter()
            .filter(|(_, dt)| dt.is_video && dt.out_pt.is_some() && !dt.munger.started())
            .map(|(id, _)| *id)
            .collect();
        for id in fresh {
            self.request_keyframe(now, id);
        }
    }

    fn request_keyframe(&mut self, now: Instant, track_id: TrackId) {
        if self
            .tracks
            .get_mut(&track_id)
            .is_some_and(|t| t.kind == MediaKind::Video && t.keyframes.request(now))
        {
            self.send_keyframe_request(now, track_id);
        }
    }

    fn send_keyframe_request(&mut self, now: Instant, track_id: TrackId) {
        let Some(track) = self.tracks.get(&track_id) else {
            return;
        };
        let Some(peer_id) = self.participants.get(&track.owner).and_then(|p| p.publish) else {
            return;
        };
        let Some(peer) = self.peers.get_mut(&peer_id) else {
            return;
        };
        let pli = PictureLossIndication {
            sender_ssrc: 0,
            media_ssrc: track.ssrc,
        };
        if let Some(mut receiver) = peer.pc.rtp_receiver(track.receiver_id)
            && receiver.write_rtcp(now, vec![Box::new(pli)]).is_ok()
        {
            self.stats.keyframe_requests_out += 1;
            self.touch(peer_id);
        }
    }

    fn update_speakers(&mut self) {
        let mut loudest: HashMap<&str, (u32, ParticipantId)> = HashMap::new();
        for track in self.tracks.values_mut() {
            if track.level_count == 0 {
                continue;
            }
            let level = track.level_sum / track.level_count;
            track.level_sum = 0;
            track.level_count = 0;
            let Some(owner) = self.participants.get(&track.owner) else {
                continue;
            };
            if level >= 127 - SPEAKER_THRESHOLD {
                let entry = loudest
                    .entry(owner.room.as_str())
                    .or_insert((0, track.owner));
                if level > entry.0 {
                    *entry = (level, track.owner);
                }
            }
        }
        let changes: Vec<(String, ParticipantId)> = loudest
            .into_iter()
            .filter(|(room, (_, p))| self.rooms.get(*room).is_some_and(|r| r.speaker != Some(*p)))
            .map(|(room, (_, p))| (room.to_owned(), p))
            .collect();
        for (room, speaker) in changes {
            if let Some(r) = self.rooms.get_mut(&room) {
                r.speaker = Some(speaker);
            }
            self.broadcast(
                &room,
                None,
                ServerMessage::ActiveSpeaker {
                    participant_id: speaker.to_string(),
                },
            );
        }
    }

    // ---- leaving ------------------------------------------------------------------------

    fn remove_participant(&mut self, now: Instant, pid: ParticipantId, reason: LeaveReason) {
        let Some(participant) = self.participants.get(&pid) else {
            return;
        };
        let room = participant.room.clone();
        info!(room = %room, participant = %pid, reason = reason.as_str(), "participant left");
        let published: Vec<TrackId> = participant.published.values().copied().collect();
        for track in published {
            self.remove_track(now, track);
        }
        let quality = self.quality(now, pid);
        let Some(participant) = self.participants.remove(&pid) else {
            return;
        };
        self.emit(MediaEvent::ParticipantLeft {
            room: room.clone(),
            participant_id: pid.to_string(),
            user_id: participant.user_id.clone(),
            reason,
            quality,
        });
        for track in participant.downtracks.keys() {
            if let Some(t) = self.tracks.get_mut(track) {
                t.subscribers.retain(|s| *s != pid);
            }
        }
        for peer in [participant.publish, participant.subscribe]
            .into_iter()
            .flatten()
        {
            self.destroy_peer(peer);
        }
        let left = ServerMessage::ParticipantLeft {
            participant_id: pid.to_string(),
            reason: reason.as_str().into(),
        };
        // Tell the participant too (its socket may still be open after a media timeout).
        let _ = participant.events.try_send(left.clone());
        if let Some(r) = self.rooms.get_mut(&room) {
            r.participants.retain(|p| *p != pid);
            if r.speaker == Some(pid) {
                r.speaker = None;
            }
            if r.participants.is_empty() {
                self.rooms.remove(&room);
                info!(room = %room, "room closed");
                self.emit(MediaEvent::RoomClosed { room: room.clone() });
            }
        }
        self.broadcast(&room, None, left);
    }

    /// A participant's quality over its stay: byte rates from our counters, loss and RTT from
    /// its connections' RTCP statistics.
    fn quality(&mut self, now: Instant, pid: ParticipantId) -> Quality {
        let Some(participant) = self.participants.get(&pid) else {
            return Quality::default();
        };
        let secs = now
            .saturating_duration_since(participant.joined_at)
            .as_secs_f64()
            .max(0.001);
        let mut quality = Quality {
            bitrate_in_kbps: participant.bytes_in as f64 * 8.0 / secs / 1000.0,
            bitrate_out_kbps: participant.bytes_out as f64 * 8.0 / secs / 1000.0,
            ..Quality::default()
        };
        let (mut rtt_sum, mut rtt_count) = (0.0, 0u64);
        for peer_id in [participant.publish, participant.subscribe]
            .into_iter()
            .flatten()
        {
            let Some(peer) = self.peers.get_mut(&peer_id) else {
                continue;
            };
            let report = peer.pc.get_stats(now, StatsSelector::None);
            for entry in report.iter() {
                match entry {
                    RTCStatsReportEntry::InboundRtp(s) => {
                        let r = &s.received_rtp_stream_stats;
                        quality.packets_lost += r.packets_lost.max(0) as u64;
                        quality.packets_received += r.packets_received;
                    }
                    RTCStatsReportEntry::RemoteInboundRtp(s) => {
                        rtt_sum += s.total_round_trip_time;
                        rtt_count += s.round_trip_time_measurements;
                    }
                    _ => {}
                }
            }
        }
        if rtt_count > 0 {
            quality.avg_rtt_ms = Some(rtt_sum / rtt_count as f64 * 1000.0);
        }
        quality
    }

    /// Hands an event to the call records. They must keep up: a full queue is counted
    /// (`events_lost`, in `/metrics`) and logged once per room, never waited on.
    fn emit(&mut self, event: MediaEvent) {
        thread_local! {
            /// Rooms of this worker that lost events → how many; a room leaves it when it closes.
            static LOST: std::cell::RefCell<HashMap<String, u64>> = Default::default();
        }
        let closed = match &event {
            MediaEvent::RoomClosed { room } => Some(room.clone()),
            _ => None,
        };
        if let Err(err) = self.events.try_send(event) {
            self.stats.events_lost += 1;
            let event = err.into_inner();
            let room = match &event {
                MediaEvent::ParticipantJoined { room, .. }
                | MediaEvent::ParticipantLeft { room, .. }
                | MediaEvent::MediaStateChanged { room, .. }
                | MediaEvent::RoomClosed { room } => room,
            };
            LOST.with_borrow_mut(|lost| {
                let n = lost.entry(room.clone()).or_default();
                if *n == 0 {
                    warn!(room = %room, ?event, "media event queue full or closed; call record not updated (logged once per room)");
                }
                *n += 1;
            });
        }
        if let Some(room) = closed
            && let Some(n) = LOST.with_borrow_mut(|lost| lost.remove(&room))
        {
            warn!(room = %room, lost = n, "room closed; media events it lost");
        }
    }

    fn reap(&mut self) {
        while let Some((pid, reason)) = self.doomed.pop() {
            self.guarded("removing a participant", |w| {
                w.culprit = Some(pid);
                w.remove_participant(Instant::now(), pid, reason);
            });
        }
    }

    // ---- panics -------------------------------------------------------------------------

    /// Runs `f`; a panic in it is contained (`contain`) to `self.culprit`, which `f` sets to
    /// the participant it is about once it knows.
    fn guarded(&mut self, what: &'static str, f: impl FnOnce(&mut Self)) {
        self.culprit = None;
        if let Err(panic) = catch_unwind(AssertUnwindSafe(|| f(self))) {
            self.contain(what, panic.as_ref());
        }
    }

    /// `guarded`, about the participant that owns peer `id`.
    fn with_peer(&mut self, id: PeerId, what: &'static str, f: impl FnOnce(&mut Self)) {
        let Some(owner) = self.peers.get(&id).map(|p| p.owner) else {
            return;
        };
        self.guarded(what, |w| {
            w.culprit = Some(owner);
            f(w)
        });
    }

    /// After a panic: counts and logs it, and removes the participant it happened for (the
    /// others get `participant_left` with reason `error`). If that panics too, the
    /// participant's whole room is forgotten (`forget_room`). The worker goes on.
    #[cold]
    fn contain(&mut self, what: &'static str, panic: &(dyn Any + Send)) {
        self.stats.panics += 1;
        let message = panic
            .downcast_ref::<&str>()
            .copied()
            .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
            .unwrap_or("(no message)");
        let Some(pid) = self.culprit.take() else {
            error!(what, message, "panic in the media worker; going on");
            return;
        };
        let room = self.participants.get(&pid).map(|p| p.room.clone());
        error!(what, message, participant = %pid, room = room.as_deref().unwrap_or("?"),
            "panic in the media worker; removing the participant");
        let removed = catch_unwind(AssertUnwindSafe(|| {
            self.remove_participant(Instant::now(), pid, LeaveReason::Error)
        }));
        if removed.is_err() {
            self.stats.panics += 1;
            error!(participant = %pid, room = room.as_deref().unwrap_or("?"),
                "removing the participant panicked too; dropping its room");
            self.forget_room(pid, room.as_deref());
        }
    }

    /// Drops participant `pid`'s room (or `pid` alone, if its room is unknown) without calling
    /// into any of its connections: every member, its connections and its tracks are forgotten;
    /// each member's session gets `participant_left` (reason `error`) for everyone, itself
    /// included, and the call records get the leaves and the room's closing.
    fn forget_room(&mut self, pid: ParticipantId, room: Option<&str>) {
        if let Some(room) = room {
            self.rooms.remove(room);
        }
        let members: Vec<ParticipantId> = self
            .participants
            .iter()
            .filter(|(id, p)| **id == pid || room.is_some_and(|r| p.room == r))
            .map(|(id, _)| *id)
            .chain(std::iter::once(pid))
            .collect();
        let forgotten: Vec<Participant> = members
            .iter()
            .filter_map(|id| self.participants.remove(id))
            .collect();
        let stale: Vec<PeerId> = self
            .peers
            .iter()
            .filter(|(_, p)| members.contains(&p.owner))
            .map(|(id, _)| *id)
            .collect();
        let mut connections = Vec::new();
        for id in stale {
            if let Some(peer) = self.peers.remove(&id) {
                self.by_ufrag.remove(&peer.ufrag);
                for addr in &peer.addrs {
                    self.by_addr.remove(addr);
                }
                connections.push(peer);
            }
        }
        self.tracks.retain(|_, t| !members.contains(&t.owner));
        for p in &forgotten {
            self.emit(MediaEvent::ParticipantLeft {
                room: p.room.clone(),
                participant_id: p.id.to_string(),
                user_id: p.user_id.clone(),
                reason: LeaveReason::Error,
                quality: Quality::default(),
            });
            for other in &forgotten {
                let _ = p.events.try_send(ServerMessage::ParticipantLeft {
                    participant_id: other.id.to_string(),
                    reason: LeaveReason::Error.as_str().into(),
                });
            }
        }
        if let Some(room) = room {
            self.emit(MediaEvent::RoomClosed {
                room: room.to_owned(),
            });
        }
        // `rtc`'s destructors run here; one that panics leaks the rest.
        if catch_unwind(AssertUnwindSafe(move || drop(connections))).is_err() {
            self.stats.panics += 1;
        }
    }

    // ---- messages to participants -------------------------------------------------------

    fn notify(&mut self, pid: ParticipantId, msg: ServerMessage) {
        let Some(participant) = self.participants.get(&pid) else {
            return;
        };
        match participant.events.try_send(msg) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                warn!(participant = %pid, "signaling queue full; removing the participant");
                self.doomed.push((pid, LeaveReason::Kicked));
            }
            Err(TrySendError::Closed(_)) => self.doomed.push((pid, LeaveReason::Disconnected)),
        }
    }

    fn broadcast(&mut self, room: &str, except: Option<ParticipantId>, msg: ServerMessage) {
        for pid in self.room_members(room) {
            if Some(pid) != except {
                self.notify(pid, msg.clone());
            }
        }
    }

    // ---- output -------------------------------------------------------------------------

    /// Ends a turn: sends everything the touched peers have written and notes the next
    /// timers of those that anything but forwarded RTP reached.
    fn flush(&mut self) {
        // Taken and given back, so its allocation is reused (nothing touches a peer in here).
        let mut touched = std::mem::take(&mut self.touched);
        for id in touched.drain(..) {
            self.guarded("a connection's output", |w| {
                w.collect_writes(id);
                if let Some(peer) = w.peers.get_mut(&id) {
                    match peer.touched {
                        Touched::Yes => peer.next_timeout = peer.pc.poll_timeout(),
                        Touched::ReadSrtp => {
                            peer.next_timeout = peer.pc.poll_timeout_after_srtp_reads()
                        }
                        Touched::No | Touched::Forwarded => {}
                    }
                    peer.touched = Touched::No;
                }
            });
        }
        self.touched = touched;
        self.send_outbox();
    }

    /// Sends what the touched peers have written so far, in the middle of a turn; they stay
    /// touched, so the turn's `flush` still sees them.
    fn send_written(&mut self) {
        let touched = std::mem::take(&mut self.touched);
        for id in &touched {
            self.guarded("a connection's output", |w| w.collect_writes(*id));
        }
        self.touched = touched;
        self.send_outbox();
    }

    /// Moves peer `id`'s datagrams to the outbox.
    fn collect_writes(&mut self, id: PeerId) {
        let Some(peer) = self.peers.get_mut(&id) else {
            return;
        };
        self.culprit = Some(peer.owner);
        let before = self.outbox.len();
        if matches!(peer.touched, Touched::Forwarded | Touched::ReadSrtp) {
            while let Some(msg) = peer.pc.poll_write_queued() {
                self.outbox.push((msg.transport.peer_addr, msg.message));
            }
        } else {
            while let Some(msg) = peer.pc.poll_write() {
                if !peer.dtls_heard
                    && peer.hello_resend.is_none()
                    && is_dtls_client_hello(&msg.message)
                {
                    peer.hello_resend = Some(HelloResend {
                        to: msg.transport.peer_addr,
                        hello: msg.message.clone(),
                        at: Instant::now() + HELLO_RESEND_FIRST,
                        interval: HELLO_RESEND_FIRST,
                    });
                }
                self.outbox.push((msg.transport.peer_addr, msg.message));
            }
        }
        if let Some(owner) = self.participants.get_mut(&peer.owner) {
            owner.bytes_out += self.outbox[before..]
                .iter()
                .map(|(_, b)| b.len() as u64)
                .sum::<u64>();
        }
    }

    fn send_outbox(&mut self) {
        self.unsent = 0;
        if self.outbox.is_empty() {
            return;
        }
        let before = self.outbox.len();
        self.outbox.retain(|(to, _)| may_send_to(to));
        for _ in self.outbox.len()..before {
            self.stats.drop(Drop::ForbiddenDestination);
        }
        let count = self.outbox.len();
        self.stats.bytes_out += self.outbox.iter().map(|(_, b)| b.len() as u64).sum::<u64>();
        let refused = self.socket.send_all(&mut self.outbox);
        for _ in 0..refused {
            self.stats.drop(Drop::SendBufferFull);
        }
        self.stats.datagrams_out += (count - refused) as u64;
        if !self.forwarded_received.is_empty() {
            let sent = RealTime::now();
            for at in self.forwarded_received.drain(..) {
                self.stats.forwarding_delay.observe(sent.since(at));
            }
        }
    }
}

/// Notes that `how` reached peer `id`, whose state is `touched`, since its last drain; a peer
/// untouched until now joins `list`, the peers the turn's `flush` drains. (`Worker::touch_with`,
/// and `forward`, which holds the peer borrowed already.)
fn note_touch(list: &mut Vec<PeerId>, id: PeerId, touched: &mut Touched, how: Touched) {
    if *touched == Touched::No {
        list.push(id);
    }
    *touched = touched.and(how);
}

/// How long the loop may sleep at `now` with the earliest `strict` and `lax` deadlines
/// (`Worker::next_deadlines`): until the strict one, or `TIMER_SLACK` past the lax one.
/// `None` when nothing is due ever.
fn sleep_until_due(
    now: Instant,
    strict: Option<Instant>,
    lax: Option<Instant>,
) -> Option<Duration> {
    let strict = strict.map(|d| d.saturating_duration_since(now));
    let lax = lax.map(|d| d.saturating_duration_since(now) + TIMER_SLACK);
    strict.into_iter().chain(lax).min()
}

/// Whether the media socket may send to `to`: only to a unicast address and port a client
/// could have sent from. Multicast (mDNS to 224.0.0.251), broadcast and unspecified addresses
/// are never a client's.
fn may_send_to(to: &SocketAddr) -> bool {
    let unicast = match to.ip() {
        IpAddr::V4(ip) => !(ip.is_multicast() || ip.is_broadcast() || ip.is_unspecified()),
        IpAddr::V6(ip) => !(ip.is_multicast() || ip.is_unspecified()),
    };
    unicast && to.port() != 0
}

/// `sdp` without the remote candidates `peer` does not take (`RemoteCandidates::filter_sdp`),
/// counted in `stats`.
fn without_ignored_candidates(
    peer: &mut Peer,
    sdp: String,
    limit: usize,
    stats: &mut WorkerStats,
) -> String {
    let mut ignored = IgnoredCandidates::default();
    let filtered = match peer.candidates.filter_sdp(&sdp, limit, &mut ignored) {
        Cow::Borrowed(_) => None,
        Cow::Owned(s) => Some(s),
    };
    stats.candidates_ignored_mdns += ignored.mdns;
    stats.candidates_ignored_over_limit += ignored.over_limit;
    filtered.unwrap_or(sdp)
}

/// Applies a publish offer and returns the answer's SDP, or why it could not.
fn apply_offer(
    pc: &mut rtc::peer_connection::RTCPeerConnection,
    now: Instant,
    offer: RTCSessionDescription,
) -> Result<String, String> {
    pc.set_remote_description(now, offer)
        .map_err(|e| format!("cannot apply the offer: {e}"))?;
    let answer = pc
        .create_answer(None)
        .map_err(|e| format!("cannot answer the offer: {e}"))?;
    pc.set_local_description(now, answer)
        .map_err(|e| format!("cannot answer the offer: {e}"))?;
    pc.local_description()
        .map(|d| d.sdp)
        .ok_or_else(|| "no answer was produced".to_owned())
}

/// `packet` as a leg sends it: the leg's SSRC and numbering (`rewrite`), payload type and
/// extension ids.
fn leg_packet(
    packet: &rtc::rtp::Packet,
    rewrite: Rewrite,
    out_pt: u8,
    ext_in: &[u8; 16],
    ext_out: &[u8; FORWARDED_EXTENSIONS.len()],
) -> rtc::rtp::Packet {
    let mut out = rtc::rtp::Packet {
        header: packet.header.clone(),
        payload: packet.payload.clone(),
    };
    out.header.ssrc = rewrite.ssrc;
    out.header.sequence_number = rewrite.sequence_number;
    out.header.timestamp = rewrite.timestamp;
    out.header.payload_type = out_pt;
    remap_extensions(&mut out.header, ext_in, ext_out);
    out
}

/// Keeps the forwarded header extensions, renumbered for the outgoing leg; drops the rest.
fn remap_extensions(
    header: &mut rtc::rtp::header::Header,
    ext_in: &[u8; 16],
    ext_out: &[u8; FORWARDED_EXTENSIONS.len()],
) {
    if !header.extension {
        return;
    }
    header.extensions.retain_mut(|ext| {
        let which = ext_in.get(ext.id as usize).copied().unwrap_or(0);
        match which.checked_sub(1).map(|i| ext_out[i as usize]) {
            Some(out_id) if out_id != 0 => {
                ext.id = out_id;
                true
            }
            _ => false,
        }
    });
    // The parsed padding belonged to the original extension block; marshalling recomputes it.
    header.extensions_padding = 0;
    header.extension = !header.extensions.is_empty();
    if header.extension {
        header.extension_profile = 0xBEDE;
    }
}

/// The RFC 6464 level of an audio packet (0 = loudest, 127 = silence), if it carries one.
fn audio_level(packet: &rtc::rtp::Packet, ext_in: &[u8; 16]) -> Option<u8> {
    let audio_level_index = 1 + FORWARDED_EXTENSIONS
        .iter()
        .position(|u| *u == peer::AUDIO_LEVEL_URI)? as u8;
    let id = ext_in.iter().position(|&w| w == audio_level_index)?;
    let ext = packet
        .header
        .extensions
        .iter()
        .find(|e| e.id as usize == id)?;
    ext.payload.first().map(|b| b & 0x7f)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtc::rtp::header::{Extension, Header};

    #[test]
    fn remaps_forwarded_extensions_and_drops_the_rest() {
        let mut ext_in = [0u8; 16];
        ext_in[1] = 1; // audio level arrives as id 1
        ext_in[4] = 2; // video orientation arrives as id 4
        let ext_out = [9, 0]; // audio level leaves as 9; orientation not negotiated
        let mut header = Header {
            extension: true,
            extension_profile: 0xBEDE,
            extensions: vec![
                Extension {
                    id: 1,
                    payload: bytes::Bytes::from_static(&[0x85]),
                },
                Extension {
                    id: 3,
                    payload: bytes::Bytes::from_static(&[1, 2, 3]),
                },
                Extension {
                    id: 4,
                    payload: bytes::Bytes::from_static(&[0]),
                },
            ],
            ..Default::default()
        };
        remap_extensions(&mut header, &ext_in, &ext_out);
        assert_eq!(header.extensions.len(), 1);
        assert_eq!(header.extensions[0].id, 9);
        assert!(header.extension);

        let mut header = Header {
            extension: true,
            extensions: vec![Extension {
                id: 3,
                payload: bytes::Bytes::from_static(&[1]),
            }],
            ..Default::default()
        };
        remap_extensions(&mut header, &ext_in, &ext_out);
        assert!(!header.extension);
    }

    #[test]
    fn lax_timers_wait_for_the_slack_and_strict_ones_do_not() {
        let now = Instant::now();
        let ms = Duration::from_millis;
        assert_eq!(sleep_until_due(now, None, None), None);
        assert_eq!(sleep_until_due(now, Some(now + ms(20)), None), Some(ms(20)));
        assert_eq!(
            sleep_until_due(now, None, Some(now + ms(20))),
            Some(ms(20) + TIMER_SLACK)
        );
        // A lax timer already due still waits for the slack: a datagram may come first.
        assert_eq!(sleep_until_due(now, None, Some(now)), Some(TIMER_SLACK));
        // The earlier of the two wins.
        assert_eq!(
            sleep_until_due(now, Some(now + ms(2)), Some(now)),
            Some(ms(2))
        );
        assert_eq!(
            sleep_until_due(now, Some(now + ms(100)), Some(now + ms(20))),
            Some(ms(20) + TIMER_SLACK)
        );
    }

    #[test]
    fn reads_the_audio_level() {
        let mut ext_in = [0u8; 16];
        ext_in[5] = 1;
        let packet = rtc::rtp::Packet {
            header: Header {
                extension: true,
                extensions: vec![Extension {
                    id: 5,
                    payload: bytes::Bytes::from_static(&[0x80 | 30]),
                }],
                ..Default::default()
            },
            payload: bytes::Bytes::new(),
        };
        assert_eq!(audio_level(&packet, &ext_in), Some(30));
        assert_eq!(audio_level(&packet, &[0; 16]), None);
    }
}

#[cfg(test)]
#[path = "worker_tests.rs"]
mod in_process_tests;
