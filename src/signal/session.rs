//! One WebSocket signaling session: auth, join, offers/answers, candidates, events.
//!
//! The session is generic over the socket (`Stream` of text frames in, `Sink` of text frames out)
//! so it can be driven without a server.

use std::time::Duration;

use axum::extract::ws::{Message, WebSocket};
use futures_util::{Sink, SinkExt, Stream, StreamExt};
use tokio::sync::mpsc;
use tracing::{Instrument, debug, info_span};

use super::protocol::{ClientMessage, ServerMessage};
use crate::api::live::{NOTIFY_QUEUE, SessionGuard, admit, session_started};
use crate::auth::{AuthError, Claims};
use crate::bridge::{
    Command, JoinRequest, LeaveReason, MediaError, MediaHandle, PARTICIPANT_QUEUE, SessionKind,
};
use crate::http::{AppState, valid_room};

/// Largest signaling message accepted (an SDP offer of a 20-party subscribe is ~40 KiB).
pub const MAX_MESSAGE: usize = 256 * 1024;
/// A client must authenticate this soon after connecting.
const AUTH_TIMEOUT: Duration = Duration::from_secs(10);
/// The server pings this often; a client silent for three intervals is gone.
const PING_INTERVAL: Duration = Duration::from_secs(5);

/// A frame of the socket, independent of the WebSocket library.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    Text(String),
    Binary,
    Ping,
    Close,
}

pub async fn run(socket: WebSocket, state: AppState) {
    let (sink, stream) = socket.split();
    let stream = stream.map(|m| match m {
        Ok(Message::Text(t)) => Frame::Text(t.to_string()),
        Ok(Message::Binary(_)) => Frame::Binary,
        Ok(Message::Ping(_) | Message::Pong(_)) => Frame::Ping,
        Ok(Message::Close(_)) | Err(_) => Frame::Close,
    });
    let sink = sink.with(|f: Frame| async move {
        Ok::<_, axum::Error>(match f {
            Frame::Text(t) => Message::Text(t.into()),
            Frame::Ping => Message::Ping(Default::default()),
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
    let auth_deadline = tokio::time::sleep(AUTH_TIMEOUT);
    tokio::pin!(auth_deadline);

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
                    let text = match frame {
                        Frame::Text(text) => text,
                        Frame::Ping => continue,
                        Frame::Close => break,
                        Frame::Binary => {
                            let _ = send(&mut output, error("bad_message", "binary frames are not part of the protocol")).await;
                            continue;
                        }
                    };
                    let reply = match serde_json::from_str::<ClientMessage>(&text) {
                        Ok(msg) => handle(msg, &state, &mut claims, &mut joined).await,
                        Err(e) => Step::Reply(error("bad_message", &format!("cannot read the message: {e}"))),
                    };
                    match reply {
                        Step::Reply(msg) => { if send(&mut output, msg).await.is_err() { break } }
                        Step::Quiet => {}
                        Step::Close(msg) => { let _ = send(&mut output, msg).await; break }
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
                _ = &mut auth_deadline, if claims.is_none() => {
                    let _ = send(&mut output, error("unauthorized", "no auth message within 10 seconds")).await;
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
        if claims.is_some() {
            return Step::Reply(error("bad_message", "already authenticated"));
        }
        return match state.auth.verify(token) {
            Ok(c) => {
                tracing::Span::current().record("user", c.sub.as_str());
                let reply = ServerMessage::Authenticated {
                    user_id: c.sub.clone(),
                    name: c.name.clone(),
                };
                *claims = Some(c);
                Step::Reply(reply)
            }
            Err(e @ (AuthError::Expired | AuthError::Invalid | AuthError::Missing)) => {
                Step::Close(error(e.code(), &e.to_string()))
            }
        };
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
