//! Shared harness for the integration tests: the real server binary on loopback, a WebSocket
//! signaling client, and an independent WebRTC participant built on the async `webrtc` crate
//! (its own sockets, its own ICE/DTLS/SRTP stack).

#![allow(dead_code)]

use std::collections::{HashMap, VecDeque};
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use futures_util::{SinkExt, StreamExt};
use rtc::interceptor::{Attribute, Interceptor, Packet, Registry, StreamInfo, TaggedPacket};
use rtc::media_stream::MediaStreamTrack;
use rtc::peer_connection::configuration::RTCConfigurationBuilder;
use rtc::peer_connection::configuration::interceptor_registry::{
    Slot, register_default_interceptors,
};
use rtc::peer_connection::configuration::media_engine::{
    MIME_TYPE_OPUS, MIME_TYPE_VP8, MediaEngine,
};
use rtc::peer_connection::configuration::setting_engine::SettingEngineBuilder;
use rtc::peer_connection::sdp::RTCSessionDescription;
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtcp::receiver_report::ReceiverReport;
use rtc::rtcp::sender_report::SenderReport;
use rtc::rtcp::transport_feedbacks::transport_layer_cc::TransportLayerCc;
use rtc::rtp_transceiver::rtp_sender::{
    RTCPFeedback, RTCRtpCodec, RTCRtpCodecParameters, RTCRtpCodingParameters,
    RTCRtpEncodingParameters, RTCRtpHeaderExtensionCapability, RtpCodecKind,
};
use rtc::sansio::Protocol;
use serde_json::{Value, json};
use tokio::sync::{Notify, mpsc};
use tokio_tungstenite::tungstenite::Message;
use webrtc::media_stream::track_local::static_rtp::TrackLocalStaticRTP;
use webrtc::media_stream::track_local::{TrackLocal, TrackLocalEvent};
use webrtc::media_stream::track_remote::{TrackRemote, TrackRemoteEvent};
use webrtc::peer_connection::{
    PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler, RTCPeerConnectionState,
};

pub const OPUS_PT: u8 = 111;
pub const VP8_PT: u8 = 96;
pub const H264_PT: u8 = 102;
pub const AUDIO_LEVEL_URI: &str = "urn:ietf:params:rtp-hdrext:ssrc-audio-level";
const TRANSPORT_CC_URI: &str =
    "http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01";

#[derive(Debug, Clone, Copy)]
struct AudioExtensions {
    level_id: u8,
    level: u8,
    transport_cc_id: Option<u8>,
}
/// The audio level (−dBov, RFC 6464) test publishers send unless told otherwise.
pub const DEFAULT_AUDIO_LEVEL: u8 = 30;

/// The id an SDP gives an extension, from its `a=extmap` line.
pub fn extmap_id(sdp: &str, uri: &str) -> Option<u8> {
    sdp.lines()
        .filter_map(|l| l.strip_prefix("a=extmap:"))
        .find(|l| l.ends_with(uri))
        .and_then(|l| l.split([' ', '/']).next())
        .and_then(|id| id.parse().ok())
}
const H264_FMTP: &str = "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f";

/// The video codec a test publisher sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Video {
    Vp8,
    H264,
}

impl Video {
    fn codec(self) -> RTCRtpCodec {
        match self {
            Video::Vp8 => vp8(),
            Video::H264 => RTCRtpCodec {
                mime_type: "video/H264".to_owned(),
                sdp_fmtp_line: H264_FMTP.to_owned(),
                ..vp8()
            },
        }
    }

    fn pt(self) -> u8 {
        match self {
            Video::Vp8 => VP8_PT,
            Video::H264 => H264_PT,
        }
    }

    /// A synthetic payload; keyframes are recognisable as such by the server.
    pub fn payload(self, keyframe: bool, seq: u16) -> Vec<u8> {
        match self {
            Video::Vp8 => vp8_payload(keyframe, seq),
            Video::H264 => {
                // a single NAL unit: IDR slice (type 5) or non-IDR slice (type 1)
                let mut p = vec![if keyframe { 0x65 } else { 0x41 }];
                p.extend_from_slice(&seq.to_be_bytes());
                p.resize(if keyframe { 1000 } else { 600 }, 0xab);
                p
            }
        }
    }
}

fn free_tcp_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The real `switchboard` binary, on loopback, with its own data directory.
pub struct TestServer {
    pub child: Child,
    pub http: SocketAddr,
    pub udp: SocketAddr,
    pub data_dir: tempfile::TempDir,
    pub secret: Option<String>,
}

impl TestServer {
    pub async fn start(extra: &[&str]) -> Self {
        Self::start_in(tempfile::tempdir().unwrap(), extra).await
    }

    pub async fn start_in(data_dir: tempfile::TempDir, extra: &[&str]) -> Self {
        // A free port can be taken by another test's server between our probe and our bind;
        // that server then answers our health check while ours has exited. So a server that
        // exits before it is healthy is started again on other ports.
        let mut data_dir = data_dir;
        for _ in 0..5 {
            match Self::try_start(data_dir, extra).await {
                Ok(server) => return server,
                Err(dir) => data_dir = dir,
            }
        }
        panic!("switchboard exited before becoming healthy five times");
    }

    /// Starts a server on fresh ports; gives the data directory back if it exits first.
    async fn try_start(
        data_dir: tempfile::TempDir,
        extra: &[&str],
    ) -> Result<Self, tempfile::TempDir> {
        let http: SocketAddr = format!("127.0.0.1:{}", free_tcp_port()).parse().unwrap();
        let udp: SocketAddr = format!("127.0.0.1:{}", free_udp_port()).parse().unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_switchboard"));
        cmd.args([
            "--http-addr",
            &http.to_string(),
            "--udp-port",
            &udp.port().to_string(),
        ])
        .arg("--data-dir")
        .arg(data_dir.path())
        .args(extra)
        .env(
            "RUST_LOG",
            std::env::var("SWITCHBOARD_TEST_LOG")
                .unwrap_or_else(|_| "warn,rtc=error,rtc_dtls=error,rtc_ice=error".into()),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::null());
        // SWITCHBOARD_TEST_STDERR=file collects the server's log when debugging a test.
        if let Some(path) = std::env::var_os("SWITCHBOARD_TEST_STDERR") {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .unwrap();
            cmd.stderr(file);
        }
        let mut child = cmd.spawn().expect("start switchboard");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if child.try_wait().unwrap().is_some() {
                return Err(data_dir);
            }
            // Ours, not the server of another test that took the port first.
            if listens_on(child.id(), http.port())
                && let Ok(resp) = http_request(http, "GET", "/healthz", None, None).await
                && resp.0 == 200
            {
                let secret = extra
                    .windows(2)
                    .find(|w| w[0] == "--jwt-secret")
                    .map(|w| w[1].to_owned());
                return Ok(Self {
                    child,
                    http,
                    udp,
                    data_dir,
                    secret,
                });
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                panic!("server did not become healthy");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.http)
    }

    /// A dev-mode token for `name` in `room`.
    pub async fn dev_token(&self, name: &str, room: &str) -> String {
        let (status, body) = http_request(
            self.http,
            "POST",
            "/api/dev/token",
            None,
            Some(json!({"name": name, "room": room})),
        )
        .await
        .unwrap();
        assert_eq!(status, 200, "{body}");
        body["token"].as_str().unwrap().to_owned()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether process `pid` holds the socket listening on TCP `port` (from `/proc/net/tcp` and
/// the process's open files).
fn listens_on(pid: u32, port: u16) -> bool {
    let Ok(table) = std::fs::read_to_string("/proc/net/tcp") else {
        return false;
    };
    let local = format!(":{port:04X}");
    // Columns: sl, local_address, rem_address, st (0A = LISTEN), ..., inode (the tenth).
    let inodes: Vec<String> = table
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .filter(|c| c.len() > 9 && c[1].ends_with(&local) && c[3] == "0A")
        .map(|c| format!("socket:[{}]", c[9]))
        .collect();
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    fds.flatten().any(|fd| {
        std::fs::read_link(fd.path())
            .is_ok_and(|target| inodes.iter().any(|i| target.as_os_str() == i.as_str()))
    })
}

/// A minimal HTTP/1.1 client over a raw TCP stream (no extra dependencies, no proxies).
pub async fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    bearer: Option<&str>,
    body: Option<Value>,
) -> std::io::Result<(u16, Value)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let auth = bearer
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(req.as_bytes()).await?;
    let mut buf = Vec::new();
    stream.read_to_end(&mut buf).await?;
    let text = String::from_utf8_lossy(&buf);
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let (head, rest) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let rest = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(rest)
    } else {
        rest.to_owned()
    };
    let value = serde_json::from_str(&rest).unwrap_or(Value::String(rest));
    Ok((status, value))
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// A raw signaling connection: send JSON, receive JSON.
pub struct Signal {
    tx: mpsc::UnboundedSender<Message>,
    rx: mpsc::UnboundedReceiver<Value>,
    backlog: VecDeque<Value>,
    pub closed: Arc<AtomicBool>,
}

impl Signal {
    pub async fn connect(url: &str) -> Self {
        let (ws, _) = tokio_tungstenite::connect_async(url)
            .await
            .expect("connect /ws");
        let (mut sink, mut stream) = ws.split();
        let (tx, mut out_rx) = mpsc::unbounded_channel::<Message>();
        let (in_tx, rx) = mpsc::unbounded_channel();
        let closed = Arc::new(AtomicBool::new(false));
        tokio::spawn(async move {
            while let Some(m) = out_rx.recv().await {
                if sink.send(m).await.is_err() {
                    break;
                }
            }
            // Every sender is gone: close the socket like a browser tab would.
            let _ = sink.send(Message::Close(None)).await;
        });
        let closed2 = closed.clone();
        tokio::spawn(async move {
            while let Some(Ok(m)) = stream.next().await {
                if let Message::Text(t) = m {
                    let _ = in_tx.send(serde_json::from_str(&t).unwrap());
                }
            }
            closed2.store(true, Ordering::SeqCst);
        });
        Self {
            tx,
            rx,
            backlog: VecDeque::new(),
            closed,
        }
    }

    pub fn send(&self, v: Value) {
        let _ = self.tx.send(Message::Text(v.to_string().into()));
    }

    pub fn send_raw(&self, m: Message) {
        let _ = self.tx.send(m);
    }

    /// The next message, or None after `within`.
    pub async fn recv(&mut self, within: Duration) -> Option<Value> {
        if let Some(v) = self.backlog.pop_front() {
            return Some(v);
        }
        tokio::time::timeout(within, self.rx.recv())
            .await
            .ok()
            .flatten()
    }

    /// The next message of `typ`; messages of other types stay queued for `recv`.
    pub async fn expect(&mut self, typ: &str) -> Value {
        if let Some(i) = self.backlog.iter().position(|v| v["type"] == typ) {
            return self.backlog.remove(i).expect("index from position");
        }
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.rx.recv()).await {
                Ok(Some(v)) if v["type"] == typ => return v,
                Ok(Some(v)) => self.backlog.push_back(v),
                _ => panic!("no {typ} message within 15 s"),
            }
        }
    }

    pub async fn auth_and_join(&mut self, token: &str, room: &str) -> Value {
        self.send(json!({"type": "auth", "token": token}));
        self.expect("authenticated").await;
        self.send(json!({"type": "join", "room": room}));
        self.recv(Duration::from_secs(10))
            .await
            .expect("join answered")
    }
}

/// What one subscriber received of one track.
#[derive(Debug, Default, Clone)]
pub struct Received {
    pub publisher: String,
    pub kind: String,
    pub packets: u64,
    pub seqs: Vec<u16>,
    pub ssrcs: Vec<u32>,
    pub first_payload: Vec<u8>,
    pub payload_types: Vec<u8>,
    /// Header extensions of the last packet: (id, first byte).
    pub last_extensions: Vec<(u8, u8)>,
    /// The newest RTP timestamp received and when its first packet arrived.
    pub newest: Option<(u32, Instant)>,
    /// The RTCP sender reports about this leg, each with what had arrived by then.
    pub sender_reports: Vec<SenderReportSeen>,
}

/// One sender report as a subscriber saw it.
#[derive(Debug, Clone)]
pub struct SenderReportSeen {
    pub report: SenderReport,
    pub at: Instant,
    /// Wall-clock time of `at`.
    pub wall: SystemTime,
    /// RTP packets received on the leg by then.
    pub packets: u64,
    /// `Received::newest` by then.
    pub newest: Option<(u32, Instant)>,
}

pub type ReceivedMap = Arc<Mutex<HashMap<String, Received>>>;

/// Marks inbound RTCP for the application so the publisher sees PLIs.
#[derive(Default)]
struct DeliverRtcp {
    r: VecDeque<TaggedPacket>,
    w: VecDeque<TaggedPacket>,
}

impl Protocol<TaggedPacket, TaggedPacket, ()> for DeliverRtcp {
    type Rout = TaggedPacket;
    type Wout = TaggedPacket;
    type Eout = ();
    type Error = rtc::shared::error::Error;
    type Time = Instant;
    fn handle_read(&mut self, mut msg: TaggedPacket) -> Result<(), Self::Error> {
        if matches!(msg.message.packet, Packet::Rtcp(_)) {
            msg.message.add(Attribute::DeliverToApplication);
        }
        self.r.push_back(msg);
        Ok(())
    }
    fn poll_read(&mut self) -> Option<TaggedPacket> {
        self.r.pop_front()
    }
    fn handle_write(&mut self, msg: TaggedPacket) -> Result<(), Self::Error> {
        self.w.push_back(msg);
        Ok(())
    }
    fn poll_write(&mut self) -> Option<TaggedPacket> {
        self.w.pop_front()
    }
    fn handle_timeout(&mut self, _now: Instant) -> Result<(), Self::Error> {
        Ok(())
    }
    fn poll_timeout(&mut self) -> Option<Instant> {
        None
    }
}

impl Interceptor for DeliverRtcp {
    fn bind_local_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_local_stream(&mut self, _info: &StreamInfo) {}
    fn bind_remote_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_remote_stream(&mut self, _info: &StreamInfo) {}
}

fn opus() -> RTCRtpCodec {
    RTCRtpCodec {
        mime_type: MIME_TYPE_OPUS.to_owned(),
        clock_rate: 48000,
        channels: 2,
        sdp_fmtp_line: "minptime=10;useinbandfec=1".to_owned(),
        rtcp_feedback: vec![],
    }
}

fn vp8() -> RTCRtpCodec {
    RTCRtpCodec {
        mime_type: MIME_TYPE_VP8.to_owned(),
        clock_rate: 90000,
        channels: 0,
        sdp_fmtp_line: String::new(),
        rtcp_feedback: vec![
            RTCPFeedback {
                typ: "nack".into(),
                parameter: String::new(),
            },
            RTCPFeedback {
                typ: "nack".into(),
                parameter: "pli".into(),
            },
        ],
    }
}

/// The remote tracks of a subscribe connection, by track id (to send RTCP about them).
pub type RemoteTracks = Arc<Mutex<HashMap<String, Arc<dyn TrackRemote>>>>;

struct Handler {
    received: ReceivedMap,
    remote: RemoteTracks,
    offered: Arc<Mutex<HashMap<String, (String, String)>>>,
    connected: Arc<Notify>,
    state: Arc<Mutex<String>>,
}

impl Handler {
    /// A handler that records what arrives, for a connection not driven by `Participant`.
    fn recording(received: ReceivedMap) -> Self {
        Self {
            received,
            remote: Default::default(),
            offered: Default::default(),
            connected: Arc::new(Notify::new()),
            state: Arc::new(Mutex::new(String::new())),
        }
    }
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for Handler {
    async fn on_connection_state_change(&self, state: RTCPeerConnectionState) {
        *self.state.lock().unwrap() = state.to_string();
        if state == RTCPeerConnectionState::Connected {
            self.connected.notify_waiters();
        }
    }

    async fn on_track(&self, track: Arc<dyn TrackRemote>) {
        let id = track.track_id().await;
        self.remote.lock().unwrap().insert(id, track.clone());
        let received = self.received.clone();
        let offered = self.offered.clone();
        tokio::spawn(async move {
            let track_id = track.track_id().await;
            let stream_id = track.stream_id().await;
            let kind = offered
                .lock()
                .unwrap()
                .get(&track_id)
                .map(|(_, k)| k.clone())
                .unwrap_or_default();
            while let Some(event) = track.poll().await {
                if let TrackRemoteEvent::OnRtcpPacket(packets) = &event {
                    let mut map = received.lock().unwrap();
                    let r = map.entry(track_id.clone()).or_default();
                    for sr in packets
                        .iter()
                        .filter_map(|p| p.as_any().downcast_ref::<SenderReport>())
                    {
                        r.sender_reports.push(SenderReportSeen {
                            report: sr.clone(),
                            at: Instant::now(),
                            wall: SystemTime::now(),
                            packets: r.packets,
                            newest: r.newest,
                        });
                    }
                }
                if let TrackRemoteEvent::OnRtpPacket(p) = event {
                    let mut map = received.lock().unwrap();
                    let r = map.entry(track_id.clone()).or_default();
                    let ts = p.header.timestamp;
                    if r.newest
                        .is_none_or(|(newest, _)| (ts.wrapping_sub(newest) as i32) > 0)
                    {
                        r.newest = Some((ts, Instant::now()));
                    }
                    if r.packets == 0 {
                        r.first_payload = p.payload.to_vec();
                        r.publisher = stream_id.clone();
                        r.kind = kind.clone();
                    }
                    r.packets += 1;
                    r.last_extensions = p
                        .header
                        .extensions
                        .iter()
                        .map(|e| (e.id, e.payload.first().copied().unwrap_or(0)))
                        .collect();
                    r.seqs.push(p.header.sequence_number);
                    if !r.ssrcs.contains(&p.header.ssrc) {
                        r.ssrcs.push(p.header.ssrc);
                    }
                    if !r.payload_types.contains(&p.header.payload_type) {
                        r.payload_types.push(p.header.payload_type);
                    }
                }
            }
        });
    }
}

/// A peer connection that only records what it receives (for tests driving signaling by hand).
pub async fn recording_pc() -> (Arc<dyn PeerConnection>, ReceivedMap) {
    let received: ReceivedMap = Default::default();
    let handler = Arc::new(Handler::recording(received.clone()));
    (new_pc(handler).await, received)
}

/// Applies an offer and returns the answer's SDP.
pub async fn answer(pc: &Arc<dyn PeerConnection>, offer_sdp: &str) -> String {
    pc.set_remote_description(RTCSessionDescription::offer(offer_sdp.to_owned()).unwrap())
        .await
        .expect("apply the offer");
    let answer = pc.create_answer(None).await.unwrap();
    pc.set_local_description(answer).await.unwrap();
    pc.local_description().await.unwrap().sdp
}

async fn new_pc(handler: Arc<Handler>) -> Arc<dyn PeerConnection> {
    let mut engine = MediaEngine::default();
    engine
        .register_header_extension(
            RTCRtpHeaderExtensionCapability {
                uri: AUDIO_LEVEL_URI.to_owned(),
            },
            RtpCodecKind::Audio,
            None,
        )
        .unwrap();
    engine
        .register_codec(
            RTCRtpCodecParameters {
                rtp_codec: opus(),
                payload_type: OPUS_PT,
            },
            RtpCodecKind::Audio,
        )
        .unwrap();
    for video in [Video::Vp8, Video::H264] {
        engine
            .register_codec(
                RTCRtpCodecParameters {
                    rtp_codec: video.codec(),
                    payload_type: video.pt(),
                },
                RtpCodecKind::Video,
            )
            .unwrap();
    }
    let registry = Registry::new().with(Slot::from(14_000), DeliverRtcp::default());
    let registry = register_default_interceptors(registry, &mut engine).unwrap();
    // No mDNS: the tests run in a namespace with only loopback, where multicast has no route.
    let settings = SettingEngineBuilder::new()
        .with_multicast_dns_mode(rtc::ice::mdns::MulticastDnsMode::Disabled)
        .build();
    let pc = PeerConnectionBuilder::new()
        .with_configuration(RTCConfigurationBuilder::new().build())
        .with_setting_engine(settings)
        .with_media_engine(engine)
        .with_interceptor_registry(registry)
        .with_handler(handler)
        .with_udp_addrs(vec!["127.0.0.1:0".to_owned()])
        .build()
        .await
        .expect("build a client peer connection");
    Arc::new(pc)
}

/// RTCP feedback a publisher received from the server.
#[derive(Default)]
pub struct Feedback {
    /// Reception reports (in receiver reports) about each published SSRC.
    pub receiver_reports: Mutex<HashMap<u32, u64>>,
    /// Transport-wide congestion control feedback packets.
    pub transport_cc: AtomicU64,
    /// Picture loss indications (keyframe requests).
    pub plis: AtomicU64,
}

/// A participant: signaling plus a publish and a subscribe connection, sending synthetic
/// Opus and VP8 and recording everything it receives.
pub struct Participant {
    pub signal: Arc<tokio::sync::Mutex<Signal>>,
    pub id: String,
    pub joined: Value,
    pub received: ReceivedMap,
    /// The RTCP feedback the server sent about the published tracks.
    pub feedback: Arc<Feedback>,
    pub events: Arc<Mutex<Vec<Value>>>,
    pub publish: Option<Arc<dyn PeerConnection>>,
    pub subscribe_state: Arc<Mutex<String>>,
    /// The tracks of the subscribe connection, to send RTCP feedback about them.
    pub remote: RemoteTracks,
    stop: Arc<AtomicBool>,
}

impl Participant {
    /// Joins `room` and, when `publish`, starts sending audio and video.
    pub async fn join(server: &TestServer, name: &str, room: &str, publish: bool) -> Self {
        let token = server.dev_token(name, room).await;
        Self::join_with_token(server, &token, room, publish.then_some(Video::Vp8)).await
    }

    /// Joins and publishes audio plus video in `video`.
    pub async fn join_publishing(
        server: &TestServer,
        name: &str,
        room: &str,
        video: Video,
    ) -> Self {
        let token = server.dev_token(name, room).await;
        Self::join_with_token(server, &token, room, Some(video)).await
    }

    /// Joins and publishes VP8 and audio whose level extension says `audio_level` (−dBov).
    pub async fn join_speaking(
        server: &TestServer,
        name: &str,
        room: &str,
        audio_level: u8,
    ) -> Self {
        let token = server.dev_token(name, room).await;
        Self::join_full(server, &token, room, Some(Video::Vp8), audio_level).await
    }

    pub async fn join_with_token(
        server: &TestServer,
        token: &str,
        room: &str,
        publish: Option<Video>,
    ) -> Self {
        Self::join_full(server, token, room, publish, DEFAULT_AUDIO_LEVEL).await
    }

    pub async fn join_full(
        server: &TestServer,
        token: &str,
        room: &str,
        publish: Option<Video>,
        audio_level: u8,
    ) -> Self {
        let mut signal = Signal::connect(&server.ws_url()).await;
        let joined = signal.auth_and_join(token, room).await;
        assert_eq!(joined["type"], "joined", "join failed: {joined}");
        let id = joined["participant_id"].as_str().unwrap().to_owned();
        let signal = Arc::new(tokio::sync::Mutex::new(signal));
        let received: ReceivedMap = Default::default();
        let feedback: Arc<Feedback> = Default::default();
        let events = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let subscribe_state = Arc::new(Mutex::new(String::from("none")));

        let publish_pc = if let Some(video_codec) = publish {
            let pc = new_pc(Arc::new(Handler::recording(received.clone()))).await;
            let audio = Arc::new(TrackLocalStaticRTP::new(local_track(
                "audio",
                RtpCodecKind::Audio,
                opus(),
            )));
            let video = Arc::new(TrackLocalStaticRTP::new(local_track(
                "video",
                RtpCodecKind::Video,
                video_codec.codec(),
            )));
            pc.add_track(audio.clone()).await.unwrap();
            pc.add_track(video.clone()).await.unwrap();
            let offer = pc.create_offer(None).await.unwrap();
            pc.set_local_description(offer).await.unwrap();
            let sdp = pc.local_description().await.unwrap().sdp;
            let answer = {
                let mut s = signal.lock().await;
                s.send(json!({"type": "publish_offer", "sdp": sdp}));
                s.expect("publish_answer").await
            };
            // The server answers as the DTLS server, so the client starts the handshake once
            // its own ICE check has succeeded (docs/design.md).
            assert!(
                answer["sdp"].as_str().unwrap().contains("a=setup:passive"),
                "publish answer: {answer}"
            );
            pc.set_remote_description(
                RTCSessionDescription::answer(answer["sdp"].as_str().unwrap().to_owned()).unwrap(),
            )
            .await
            .unwrap();
            let answer_sdp = answer["sdp"].as_str().unwrap();
            let level_ext = extmap_id(answer_sdp, AUDIO_LEVEL_URI).map(|id| AudioExtensions {
                level_id: id,
                level: audio_level,
                // a hop-by-hop extension the server must drop, as browsers send them
                transport_cc_id: extmap_id(answer_sdp, TRANSPORT_CC_URI),
            });
            tokio::spawn(send_media(
                audio.clone(),
                OPUS_PT,
                20,
                None,
                level_ext,
                stop.clone(),
                feedback.clone(),
            ));
            tokio::spawn(send_media(
                video,
                video_codec.pt(),
                33,
                Some(video_codec),
                None,
                stop.clone(),
                feedback.clone(),
            ));
            Some(pc)
        } else {
            None
        };

        // Answer every subscribe offer; keep every other message.
        let remote: RemoteTracks = Default::default();
        let remote2 = remote.clone();
        let (sig, rec, ev, st, stop2) = (
            signal.clone(),
            received.clone(),
            events.clone(),
            stop.clone(),
            subscribe_state.clone(),
        );
        tokio::spawn(async move {
            let offered: Arc<Mutex<HashMap<String, (String, String)>>> = Default::default();
            let mut sub: Option<Arc<dyn PeerConnection>> = None;
            while !st.load(Ordering::SeqCst) {
                let msg = { sig.lock().await.recv(Duration::from_millis(50)).await };
                let Some(msg) = msg else { continue };
                if msg["type"] == "subscribe_offer" {
                    for t in msg["tracks"].as_array().unwrap() {
                        offered.lock().unwrap().insert(
                            t["track_id"].as_str().unwrap().to_owned(),
                            (
                                t["participant_id"].as_str().unwrap().to_owned(),
                                t["kind"].as_str().unwrap().to_owned(),
                            ),
                        );
                    }
                    if sub.is_none() {
                        let handler = Arc::new(Handler {
                            received: rec.clone(),
                            remote: remote2.clone(),
                            offered: offered.clone(),
                            connected: Arc::new(Notify::new()),
                            state: stop2.clone(),
                        });
                        sub = Some(new_pc(handler).await);
                    }
                    let pc = sub.as_ref().unwrap();
                    let offer =
                        RTCSessionDescription::offer(msg["sdp"].as_str().unwrap().to_owned())
                            .unwrap();
                    pc.set_remote_description(offer)
                        .await
                        .expect("apply subscribe offer");
                    let answer = pc.create_answer(None).await.unwrap();
                    pc.set_local_description(answer).await.unwrap();
                    let sdp = pc.local_description().await.unwrap().sdp;
                    sig.lock()
                        .await
                        .send(json!({"type": "subscribe_answer", "sdp": sdp}));
                }
                ev.lock().unwrap().push(msg);
            }
            if let Some(pc) = sub {
                let _ = pc.close().await;
            }
        });

        Self {
            signal,
            id,
            joined,
            received,
            feedback,
            events,
            publish: publish_pc,
            subscribe_state,
            remote,
            stop,
        }
    }

    /// Stops sending and receiving and closes the connections without telling the server
    /// (the socket stays open): a client whose media vanished.
    pub async fn vanish_media(&self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(pc) = &self.publish {
            let _ = pc.close().await;
        }
    }

    pub async fn leave(&self) {
        self.signal.lock().await.send(json!({"type": "leave"}));
        self.vanish_media().await;
    }

    pub fn received_from(&self, publisher: &str) -> Vec<Received> {
        self.received
            .lock()
            .unwrap()
            .values()
            .filter(|r| r.publisher == publisher)
            .cloned()
            .collect()
    }

    pub fn events_of(&self, typ: &str) -> Vec<Value> {
        self.events
            .lock()
            .unwrap()
            .iter()
            .filter(|e| e["type"] == typ)
            .cloned()
            .collect()
    }

    /// Waits until `check` holds, polling.
    pub async fn wait_for(&self, what: &str, within: Duration, check: impl Fn(&Self) -> bool) {
        let deadline = Instant::now() + within;
        while !check(self) {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Participant {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn local_track(name: &str, kind: RtpCodecKind, codec: RTCRtpCodec) -> MediaStreamTrack {
    MediaStreamTrack::new(
        format!("stream-{}", rand::random::<u32>()),
        format!("{name}-{}", rand::random::<u32>()),
        name.to_owned(),
        kind,
        vec![RTCRtpEncodingParameters {
            rtp_coding_parameters: RTCRtpCodingParameters {
                ssrc: Some(rand::random()),
                ..Default::default()
            },
            codec,
            ..Default::default()
        }],
    )
}

/// A VP8 payload: a keyframe starts with frame tag P=0.
pub fn vp8_payload(keyframe: bool, seq: u16) -> Vec<u8> {
    let mut p = vec![0x10, if keyframe { 0x00 } else { 0x01 }];
    p.extend_from_slice(&seq.to_be_bytes());
    p.resize(if keyframe { 1000 } else { 600 }, 0xab);
    p
}

/// Sends synthetic RTP every `interval_ms`; video sends a keyframe at start, every 3 s and on PLI.
async fn send_media(
    track: Arc<TrackLocalStaticRTP>,
    pt: u8,
    interval_ms: u64,
    video: Option<Video>,
    audio_level: Option<AudioExtensions>,
    stop: Arc<AtomicBool>,
    feedback: Arc<Feedback>,
) {
    let ssrc = track.track().await.codings()[0]
        .rtp_coding_parameters
        .ssrc
        .unwrap();
    let keyframe_wanted = Arc::new(AtomicBool::new(true));
    {
        let (track, kw, stop) = (track.clone(), keyframe_wanted.clone(), stop.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                match tokio::time::timeout(Duration::from_millis(200), track.poll()).await {
                    Ok(Some(TrackLocalEvent::OnRtcpPacket(packets))) => {
                        if packets
                            .iter()
                            .any(|p| p.as_any().is::<PictureLossIndication>())
                        {
                            feedback.plis.fetch_add(1, Ordering::SeqCst);
                            kw.store(true, Ordering::SeqCst);
                        }
                        let about_this_track = packets
                            .iter()
                            .filter_map(|p| p.as_any().downcast_ref::<ReceiverReport>())
                            .flat_map(|rr| &rr.reports)
                            .filter(|report| report.ssrc == ssrc)
                            .count() as u64;
                        if about_this_track > 0 {
                            *feedback
                                .receiver_reports
                                .lock()
                                .unwrap()
                                .entry(ssrc)
                                .or_default() += about_this_track;
                        }
                        let transport_cc = packets
                            .iter()
                            .filter(|p| p.as_any().is::<TransportLayerCc>())
                            .count() as u64;
                        feedback
                            .transport_cc
                            .fetch_add(transport_cc, Ordering::SeqCst);
                    }
                    Ok(None) => tokio::time::sleep(Duration::from_millis(50)).await,
                    _ => {}
                }
            }
        });
    }
    let mut seq: u16 = rand::random();
    let mut ts: u32 = rand::random();
    let start = Instant::now();
    let mut last_key = start;
    while !stop.load(Ordering::SeqCst) {
        let payload = if let Some(codec) = video {
            let key = keyframe_wanted.swap(false, Ordering::SeqCst)
                || last_key.elapsed() > Duration::from_secs(3);
            if key {
                last_key = Instant::now();
            }
            codec.payload(key, seq)
        } else {
            vec![0xf8; 80]
        };
        let mut packet = rtc::rtp::Packet {
            header: rtc::rtp::header::Header {
                version: 2,
                marker: video.is_some(),
                payload_type: pt,
                sequence_number: seq,
                timestamp: ts,
                ssrc,
                ..Default::default()
            },
            payload: payload.into(),
        };
        if let Some(ext) = audio_level {
            if let Some(id) = ext.transport_cc_id {
                packet
                    .header
                    .set_extension(id, seq.to_be_bytes().to_vec().into())
                    .unwrap();
            }
            // V bit set: voice activity, as browsers send it
            packet
                .header
                .set_extension(ext.level_id, vec![0x80 | ext.level].into())
                .unwrap();
        }
        let _ = track.write_rtp(packet).await;
        seq = seq.wrapping_add(1);
        ts = ts.wrapping_add(if video.is_some() { 2970 } else { 960 });
        tokio::time::sleep(Duration::from_millis(interval_ms)).await;
    }
}

/// Checks that sequence numbers advance by one (allowing reordering by a few packets) and
/// returns the number of gaps.
pub fn sequence_gaps(seqs: &[u16]) -> usize {
    let mut sorted: Vec<u64> = Vec::with_capacity(seqs.len());
    let mut base = 0u64;
    let mut last: Option<u16> = None;
    for &s in seqs {
        if let Some(l) = last
            && s < l
            && l - s > 30000
        {
            base += 65536;
        }
        sorted.push(base + u64::from(s));
        last = Some(s);
    }
    sorted.sort_unstable();
    sorted.dedup();
    sorted.windows(2).filter(|w| w[1] != w[0] + 1).count()
}

/// An HTTP exchange with chosen headers and a raw body; returns status, headers (lowercase
/// names) and body.
pub async fn http_raw(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, Vec<(String, String)>, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let extra: String = headers
        .iter()
        .map(|(k, v)| format!("{k}: {v}\r\n"))
        .collect();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{extra}Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    stream.read_to_end(&mut buf).await.unwrap();
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, rest) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let headers: Vec<(String, String)> = head
        .lines()
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let body = if headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v == "chunked")
    {
        dechunk(rest)
    } else {
        rest.to_owned()
    };
    (status, headers, body)
}

pub fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}
