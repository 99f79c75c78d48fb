//! One WebSocket signaling session: auth, join, offers/answers, candidates, events.
//!
//! The session is generic over the socket (`Stream` of text frames in, `Sink` of text frames out)
//! so it can be driven without a server.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::ws::{CloseFrame, Message, WebSocket, close_code};
use futures_util::{Sink, SinkExt, Stream, StreamExt};
use tokio::sync::mpsc;
use tracing::{Instrument, debug, info_span, warn};

use super::limits::{Kind, Limiter, Verdict};
use super::protocol::{ClientMessage, ServerMessage};
use crate::api::live::{NOTIFY_QUEUE, SessionGuard, admit, session_started};
use crate::auth::{Claims, LEEWAY_SECS};
use crate::bridge::{
    Command, JoinRequest, LeaveReason, MediaError, MediaHandle, PARTICIPANT_QUEUE, SessionKind,
};
use crate::http::{AppState, valid_room};

/// Largest signaling message the protocol accepts (an SDP offer of a 20-party subscribe is
/// ~40 KiB); a bigger one is answered with `bad_message`.
pub const MAX_MESSAGE: usize = 256 * 1024;
/// Largest message the WebSocket transport reads. Above `MAX_MESSAGE` so that a message
/// between the two is refused with `bad_message` on a socket that stays open; a message over
/// this bound is not read at all (the transport would have to buffer it): the socket is closed
/// with code 1009 (message too big).
pub const MAX_TRANSPORT_MESSAGE: usize = 1024 * 1024;
/// The server pings this often; a client silent for three intervals is gone.
const PING_INTERVAL: Duration = Duration::from_secs(5);
/// How long a socket closed for an unreadable message stays open for its last frames to leave.
const CLOSE_LINGER: Duration = Duration::from_millis(500);
/// Farthest a token's expiry is scheduled (a later `exp` is as good as never).
const FAR_FUTURE: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// A frame of the socket, independent of the WebSocket library.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    Text(String),
    Binary,
    /// In: a WebSocket ping from the client (the transport answers it). Out: a ping to send.
    Ping,
    /// In: a WebSocket pong (the answer to our ping).
    Pong,
    Close,
    /// In: the transport refused a message over `MAX_TRANSPORT_MESSAGE`. Out: close with 1009.
    TooBig,
}

pub async fn run(socket: WebSocket, state: AppState) {
    let (sink, stream) = socket.split();
    let stream = stream.map(|m| match m {
        Ok(Message::Text(t)) => Frame::Text(t.to_string()),
        Ok(Message::Binary(_)) => Frame::Binary,
        Ok(Message::Ping(_)) => Frame::Ping,
        Ok(Message::Pong(_)) => Frame::Pong,
        Ok(Message::Close(_)) => Frame::Close,
        // tungstenite's `Error::Capacity` ("Space limit exceeded: Message too long"); axum
        // wraps it in an opaque error, so it is told apart by its text.
        Err(e) if e.to_string().contains("too long") => Frame::TooBig,
        Err(_) => Frame::Close,
    });
    let sink = sink.with(|f: Frame| async move {
        Ok::<_, axum::Error>(match f {
            Frame::Text(t) => Message::Text(t.into()),
            Frame::Ping => Message::Ping(Default::default()),
            Frame::Pong => Message::Pong(Default::default()),
            Frame::TooBig => Message::Close(Some(CloseFrame {
                code: close_code::SIZE,
                reason: "message too big".into(),
            })),
            Frame::Binary | Frame::Close => Message::Close(None),
        })
    });
    serve(Box::pin(stream), Box::pin(sink), state).await;
}

struct Joined {
    participant_id: String,
    media: MediaHandle,
    events: mpsc::Receiver<ServerMessage>,
}

/// When a session authenticated with a token expiring at `exp` must end: when `verify` would
/// refuse the token (`exp` plus the leeway).
fn expiry(exp: u64) -> tokio::time::Instant {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let end = Duration::from_secs(exp.saturating_add(LEEWAY_SECS));
    tokio::time::Instant::now() + end.saturating_sub(now).min(FAR_FUTURE)
}

/// Runs one session to its end.
pub async fn serve<I, O>(mut input: I, mut output: O, state: AppState)
where
    I: Stream<Item = Frame> + Unpin,
    O: Sink<Frame> + Unpin,
{
    let mut claims: Option<Claims> = None;
    let mut joined: Option<Joined> = None;
    // Call notifications (`call_incoming`, `call_ended`) for the authenticated user.
    let mut notices: Option<(SessionGuard, mpsc::Receiver<ServerMessage>)> = None;
    let mut ping = tokio::time::interval(PING_INTERVAL);
    let mut last_heard = tokio::time::Instant::now();
    let auth_timeout = Duration::from_secs(state.config.ws_auth_timeout);
    // Until `auth`: the auth deadline; after it: the token's expiry (moved by a re-auth).
    let deadline = tokio::time::sleep(auth_timeout);
    tokio::pin!(deadline);
    let mut armed_exp: Option<u64> = None;
    let mut limiter = Limiter::new(&state.config.ws_limits(), std::time::Instant::now());

    let span = info_span!(
        "session",
        user = tracing::field::Empty,
        participant = tracing::field::Empty
    );
    async {
        loop {
            let event = async {
                match &mut joined {
                    Some(j) => j.events.recv().await,
                    None => std::future::pending().await,
                }
            };
            let notice = async {
                match &mut notices {
                    Some((_, rx)) => rx.recv().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                frame = input.next() => {
                    last_heard = tokio::time::Instant::now();
                    let Some(frame) = frame else { break };
                    let ws_ping = frame == Frame::Ping;
                    let read = match frame {
                        Frame::Text(text) if text.len() > MAX_MESSAGE => Err(format!(
                            "the message has {} bytes; the limit is {MAX_MESSAGE}", text.len()
                        )),
                        Frame::Text(text) => serde_json::from_str::<ClientMessage>(&text)
                            .map_err(|e| format!("cannot read the message: {e}")),
                        Frame::Binary => Err("binary frames are not part of the protocol".into()),
                        // The transport answers pings itself; they still count.
                        Frame::Ping => Ok(ClientMessage::Ping),
                        Frame::Pong => continue,
                        Frame::Close => break,
                        Frame::TooBig => {
                            let message = format!(
                                "a message over {MAX_TRANSPORT_MESSAGE} bytes cannot be read; closing"
                            );
                            let _ = send(&mut output, error("bad_message", &message)).await;
                            let _ = output.send(Frame::TooBig).await;
                            // The unread rest of the message makes the kernel reset the
                            // connection on close, dropping what is still unsent: give the
                            // error and the close frame time to leave first.
                            tokio::time::sleep(CLOSE_LINGER).await;
                            break;
                        }
                    };
                    let kind = read.as_ref().map_or(Kind::Malformed, Kind::of);
                    match limiter.check(kind, std::time::Instant::now()) {
                        Verdict::Allow => {}
                        Verdict::Limited => {
                            let message = format!("too many {} messages; this one was ignored", kind.as_str());
                            if send(&mut output, error("rate_limited", &message)).await.is_err() { break }
                            continue;
                        }
                        Verdict::Abusive => {
                            warn!(kind = kind.as_str(), "closing a session that keeps going over its rate limits");
                            let message = format!("too many messages over the rate limits (last: {}); closing", kind.as_str());
                            let _ = send(&mut output, error("rate_limited", &message)).await;
                            if let Some(j) = joined.take() {
                                let _ = j.media.send(Command::Leave { participant_id: j.participant_id, reason: LeaveReason::Kicked });
                            }
                            let _ = output.send(Frame::Close).await;
                            // Read (and drop) what the client is still sending for a moment:
                            // closing on unread data would reset the connection and lose
                            // the error on its way to the client.
                            let _ = tokio::time::timeout(CLOSE_LINGER, async {
                                while let Some(frame) = input.next().await {
                                    if frame == Frame::Close { break }
                                }
                            })
                            .await;
                            break;
                        }
                    }
                    if ws_ping {
                        continue;
                    }
                    let reply = match read {
                        Ok(msg) => handle(msg, &state, &mut claims, &mut joined).await,
                        Err(message) => Step::Reply(error("bad_message", &message)),
                    };
                    match reply {
                        Step::Reply(msg) => { if send(&mut output, msg).await.is_err() { break } }
                        Step::Quiet => {}
                        Step::Close(msg) => { let _ = send(&mut output, msg).await; break }
                    }
                    if let Some(c) = &claims && armed_exp != Some(c.exp) {
                        armed_exp = Some(c.exp);
                        deadline.as_mut().reset(expiry(c.exp));
                    }
                    if notices.is_none() && let Some(c) = &claims {
                        let (tx, rx) = mpsc::channel(NOTIFY_QUEUE);
                        notices = Some((state.calls.register(&c.sub, tx), rx));
                        tokio::spawn(session_started(state.clone(), c.sub.clone()));
                    }
                }
                Some(msg) = notice => {
                    let shutdown = matches!(msg, ServerMessage::ServerShutdown);
                    if send(&mut output, msg).await.is_err() || shutdown { break }
                }
                Some(msg) = event => {
                    if let (ServerMessage::ParticipantLeft { participant_id, .. }, Some(j)) = (&msg, &joined)
                        && *participant_id == j.participant_id
                    {
                        joined = None; // the media plane removed us (connection lost)
                    }
                    let shutdown = matches!(msg, ServerMessage::ServerShutdown);
                    if send(&mut output, msg).await.is_err() || shutdown { break }
                }
                _ = ping.tick() => {
                    if last_heard.elapsed() > PING_INTERVAL * 3 || output.send(Frame::Ping).await.is_err() {
                        break;
                    }
                }
                _ = &mut deadline => {
                    let reply = if claims.is_some() {
                        debug!("token expired");
                        error("token_expired", "the token expired; send a fresh auth before exp to stay")
                    } else {
                        error("unauthorized", &format!("no auth message within {} seconds", auth_timeout.as_secs()))
                    };
                    let _ = send(&mut output, reply).await;
                    break;
                }
            }
        }
        if let Some(j) = joined.take() {
            let _ = j.media.send(Command::Leave { participant_id: j.participant_id, reason: LeaveReason::Disconnected });
        }
        let _ = output.send(Frame::Close).await;
    }
    .instrument(span)
    .await;
}

enum Step {
    Reply(ServerMessage),
    Quiet,
    Close(ServerMessage),
}

fn error(code: &str, message: &str) -> ServerMessage {
    ServerMessage::Error {
        code: code.to_owned(),
        message: message.to_owned(),
    }
}

fn media_error(e: MediaError) -> Step {
    Step::Reply(error(e.code(), &e.to_string()))
}

async fn send<O: Sink<Frame> + Unpin>(output: &mut O, msg: ServerMessage) -> Result<(), ()> {
    let text = serde_json::to_string(&msg).map_err(|_| ())?;
    output.send(Frame::Text(text)).await.map_err(|_| ())
}

async fn handle(
    msg: ClientMessage,
    state: &AppState,
    claims: &mut Option<Claims>,
    joined: &mut Option<Joined>,
) -> Step {
    if let ClientMessage::Auth { token } = &msg {
        // The first `auth`, or a fresh token for the same user before the current one
        // expires (the session then lasts until the new `exp`).
        let c = match state.auth.verify(token) {
            Ok(c) => c,
            Err(e) => return Step::Close(error(e.code(), &e.to_string())),
        };
        if let Some(old) = claims.as_ref()
            && old.sub != c.sub
        {
            return Step::Reply(error(
                "forbidden",
                "a session cannot change its user: a fresh token must have the same sub",
            ));
        }
        tracing::Span::current().record("user", c.sub.as_str());
        let reply = ServerMessage::Authenticated {
            user_id: c.sub.clone(),
            name: c.name.clone(),
        };
        *claims = Some(c);
        return Step::Reply(reply);
    }
    if matches!(msg, ClientMessage::Ping) {
        return Step::Reply(ServerMessage::Pong);
    }
    let Some(c) = claims.as_ref() else {
        return Step::Reply(error("not_authenticated", "send auth first"));
    };
    if let ClientMessage::Join { room } = &msg {
        if joined.is_some() {
            return Step::Reply(error("already_joined", "leave the current room first"));
        }
        if !valid_room(room) {
            return Step::Reply(error(
                "bad_message",
                "room must be 1 to 64 characters of A-Z a-z 0-9 - _ .",
            ));
        }
        if !c.grants_room(room) {
            return Step::Reply(error("forbidden", "this token does not grant that room"));
        }
        // A call's room admits its creator and invitees (and admins), up to the call's size.
        let max_participants = match admit(state, room, c).await {
            Ok(Some(max)) => max.min(state.config.max_participants),
            Ok(None) => state.config.max_participants,
            Err(e) => return Step::Reply(error(e.code, &e.message)),
        };
        let media = state.worker_for(room).clone();
        let (events_tx, events) = mpsc::channel(PARTICIPANT_QUEUE);
        let request = JoinRequest {
            room: room.clone(),
            user_id: c.sub.clone(),
            name: if c.name.is_empty() {
                c.sub.clone()
            } else {
                c.name.clone()
            },
            can_publish: c.can_publish,
            can_subscribe: c.can_subscribe,
            max_participants,
            kind: SessionKind::Signal,
        };
        return match media
            .request(|reply| Command::Join {
                request,
                events: events_tx,
                reply,
            })
            .await
        {
            Ok(j) => {
                tracing::Span::current().record("participant", j.participant_id.as_str());
                *joined = Some(Joined {
                    participant_id: j.participant_id.clone(),
                    media,
                    events,
                });
                Step::Reply(ServerMessage::Joined {
                    room: room.clone(),
                    participant_id: j.participant_id,
                    participants: j.participants,
                    tracks: j.tracks,
                    ice_servers: state.ice_servers(&c.sub),
                })
            }
            Err(e) => media_error(e),
        };
    }
    let Some(j) = joined.as_ref() else {
        return Step::Reply(error("not_joined", "join a room first"));
    };
    let participant_id = j.participant_id.clone();
    match msg {
        ClientMessage::PublishOffer { sdp, sources } => {
            match j
                .media
                .request(|reply| Command::PublishOffer {
                    participant_id,
                    sdp,
                    sources,
                    reply,
                })
                .await
            {
                Ok(sdp) => Step::Reply(ServerMessage::PublishAnswer { sdp }),
                Err(e) => media_error(e),
            }
        }
        ClientMessage::SubscribeAnswer { sdp } => {
            match j
                .media
                .request(|reply| Command::SubscribeAnswer {
                    participant_id,
                    sdp,
                    reply,
                })
                .await
            {
                Ok(()) => Step::Quiet,
                Err(e) => media_error(e),
            }
        }
        ClientMessage::Candidate { pc, candidate } => {
            match j
                .media
                .request(|reply| Command::Candidate {
                    participant_id,
                    pc,
                    candidate,
                    reply,
                })
                .await
            {
                Ok(()) => Step::Quiet,
                Err(e) => media_error(e),
            }
        }
        ClientMessage::MediaState {
            audio,
            video,
            screen,
        } => {
            let state = super::protocol::MediaState {
                audio,
                video,
                screen,
            };
            match j.media.send(Command::MediaState {
                participant_id,
                state,
            }) {
                Ok(()) => Step::Quiet,
                Err(e) => media_error(e),
            }
        }
        ClientMessage::Leave => {
            let j = joined.take().expect("checked above");
            debug!("leaving");
            match j.media.send(Command::Leave {
                participant_id,
                reason: LeaveReason::Left,
            }) {
                Ok(()) => Step::Quiet,
                Err(e) => media_error(e),
            }
        }
        ClientMessage::Auth { .. } | ClientMessage::Join { .. } | ClientMessage::Ping => {
            unreachable!("handled above")
        }
    }
}
