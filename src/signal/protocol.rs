//! The JSON messages of `/ws`, as documented in `docs/protocol.md`.
//!
//! Every message is an object with a `"type"` tag. Field names are snake_case on the wire.

use serde::{Deserialize, Serialize};

/// Which of a participant's two peer connections a message is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PcKind {
    /// Client offers, server answers; carries what the participant sends.
    Publish,
    /// Server offers, client answers; carries what the participant receives.
    Subscribe,
}

/// What a published track shows; chosen by the publisher, shown to everyone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum TrackSource {
    #[default]
    Camera,
    Microphone,
    Screen,
    ScreenAudio,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MediaKind {
    Audio,
    Video,
}

/// An ICE candidate as the browser's `RTCIceCandidateInit` has it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct CandidateInit {
    pub candidate: String,
    #[serde(default, rename = "sdpMid", skip_serializing_if = "Option::is_none")]
    pub sdp_mid: Option<String>,
    #[serde(
        default,
        rename = "sdpMLineIndex",
        skip_serializing_if = "Option::is_none"
    )]
    pub sdp_mline_index: Option<u16>,
    #[serde(
        default,
        rename = "usernameFragment",
        skip_serializing_if = "Option::is_none"
    )]
    pub username_fragment: Option<String>,
}

/// Mute flags a participant announces for itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct MediaState {
    pub audio: bool,
    pub video: bool,
    pub screen: bool,
}

/// One participant as others see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParticipantInfo {
    pub participant_id: String,
    pub user_id: String,
    pub name: String,
    pub media: MediaState,
}

/// One published track as others see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrackInfo {
    pub track_id: String,
    pub participant_id: String,
    pub kind: MediaKind,
    pub source: TrackSource,
    /// Codec MIME type, e.g. `video/VP8`.
    pub codec: String,
}

/// Where a track sits in the subscribe connection's current offer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubscribedTrack {
    /// The `a=mid` of the m-line that carries it (`RTCRtpTransceiver.mid` in the browser).
    pub mid: String,
    #[serde(flatten)]
    pub track: TrackInfo,
}

/// An ICE server for the browser's `RTCPeerConnection` configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IceServer {
    pub urls: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
}

/// Client → server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientMessage {
    /// Must be the first message: the JWT (never put it in the URL).
    Auth { token: String },
    /// Enter a room. Allowed only for the room the token names.
    Join { room: String },
    /// Offer for the publish connection. `sources` maps a MediaStreamTrack id
    /// (the `a=msid` track id) to what it shows; unnamed audio is `microphone`,
    /// unnamed video `camera`.
    PublishOffer {
        sdp: String,
        #[serde(default)]
        sources: std::collections::HashMap<String, TrackSource>,
    },
    /// Answer to the server's latest `subscribe_offer`.
    SubscribeAnswer { sdp: String },
    /// A trickled ICE candidate for one of the two connections.
    Candidate {
        pc: PcKind,
        candidate: CandidateInit,
    },
    /// Announce own mute state; forwarded to everyone in the room.
    MediaState {
        audio: bool,
        video: bool,
        #[serde(default)]
        screen: bool,
    },
    /// Leave the room; the socket may then join again or close.
    Leave,
    /// Keep-alive; answered with `pong`.
    Ping,
}

/// Server → client.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMessage {
    /// Reply to `auth`.
    Authenticated {
        user_id: String,
        name: String,
    },
    /// Reply to `join`: who is already there and what they publish.
    Joined {
        room: String,
        participant_id: String,
        participants: Vec<ParticipantInfo>,
        tracks: Vec<TrackInfo>,
        ice_servers: Vec<IceServer>,
    },
    PublishAnswer {
        sdp: String,
    },
    /// A new offer for the subscribe connection, with what each m-line carries.
    /// The next one comes only after this one was answered.
    SubscribeOffer {
        sdp: String,
        tracks: Vec<SubscribedTrack>,
    },
    Candidate {
        pc: PcKind,
        candidate: CandidateInit,
    },
    ParticipantJoined {
        participant: ParticipantInfo,
    },
    ParticipantLeft {
        participant_id: String,
        reason: String,
    },
    TrackAdded {
        track: TrackInfo,
    },
    TrackRemoved {
        track_id: String,
        participant_id: String,
    },
    MediaState {
        participant_id: String,
        audio: bool,
        video: bool,
        screen: bool,
    },
    ActiveSpeaker {
        participant_id: String,
    },
    /// You are invited to a call (`docs/api.md`): answer or reject it over REST.
    CallIncoming {
        call: Box<crate::api::model::CallState>,
    },
    /// A call you are part of is over (`call.status`, `call.end_reason`).
    CallEnded {
        call: Box<crate::api::model::CallState>,
    },
    /// The server is going away; reconnect later.
    ServerShutdown,
    Pong,
    Error {
        code: String,
        message: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_messages_use_snake_case_tags() {
        let m: ClientMessage =
            serde_json::from_str(r#"{"type":"publish_offer","sdp":"v=0"}"#).unwrap();
        assert_eq!(
            m,
            ClientMessage::PublishOffer {
                sdp: "v=0".into(),
                sources: Default::default()
            }
        );
        let m: ClientMessage = serde_json::from_str(
            r#"{"type":"candidate","pc":"subscribe","candidate":{"candidate":"candidate:1 1 udp 1 127.0.0.1 5000 typ host","sdpMid":"0"}}"#,
        )
        .unwrap();
        assert!(matches!(
            m,
            ClientMessage::Candidate {
                pc: PcKind::Subscribe,
                ..
            }
        ));
    }

    #[test]
    fn subscribed_track_is_flat() {
        let t = SubscribedTrack {
            mid: "0".into(),
            track: TrackInfo {
                track_id: "t1".into(),
                participant_id: "p1".into(),
                kind: MediaKind::Video,
                source: TrackSource::Screen,
                codec: "video/VP8".into(),
            },
        };
        let v = serde_json::to_value(&t).unwrap();
        assert_eq!(v["mid"], "0");
        assert_eq!(v["source"], "screen");
        assert_eq!(v["kind"], "video");
    }
}
