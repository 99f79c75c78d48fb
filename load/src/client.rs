//! One load participant: signaling over `/ws`, a publish connection sending synthetic VP8 and
//! Opus, and a subscribe connection recording latency, loss and first-frame time of everything
//! it receives.
//!
//! The media path (`Outgoing`, `receiver`, the payload trailer and the statistics) is shared with
//! the Janus front end in `janus.rs`; only the signaling differs.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use futures_util::{SinkExt, StreamExt};
use rtc::interceptor::{Attribute, Interceptor, Packet, Registry, StreamInfo, TaggedPacket};
use rtc::media_stream::MediaStreamTrack;
use rtc::peer_connection::configuration::RTCConfigurationBuilder;
use rtc::peer_connection::configuration::interceptor_registry::{
    Slot, configure_nack, configure_rtcp_reports, configure_twcc_receiver_only,
};
use rtc::peer_connection::configuration::media_engine::{
    MIME_TYPE_OPUS, MIME_TYPE_VP8, MediaEngine,
};
use rtc::peer_connection::configuration::setting_engine::SettingEngineBuilder;
use rtc::peer_connection::sdp::RTCSessionDescription;
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtp_transceiver::rtp_sender::{
    RTCPFeedback, RTCRtpCodec, RTCRtpCodecParameters, RTCRtpCodingParameters,
    RTCRtpEncodingParameters, RtpCodecKind,
};
use rtc::sansio::Protocol;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use webrtc::media_stream::track_local::static_rtp::TrackLocalStaticRTP;
use webrtc::media_stream::track_local::{TrackLocal, TrackLocalEvent};
use webrtc::media_stream::track_remote::{TrackRemote, TrackRemoteEvent};
use webrtc::peer_connection::{PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler};

use crate::server::Server;
use crate::timer::{self, Schedule};

const OPUS_PT: u8 = 111;
const VP8_PT: u8 = 96;
/// Largest RTP payload a publisher sends (a ~1100-byte packet once headers are added).
pub const MAX_PAYLOAD: usize = 1080;
pub const AUDIO_PAYLOAD: usize = 100;
/// Packets in a keyframe.
pub const KEYFRAME_PACKETS: usize = 15;
/// The fixed RTP header a payload is sent behind (the SRTP tag comes on top).
pub const RTP_HEADER: usize = 12;

/// Every payload ends with MAGIC, a kind byte and the send time (µs since `EPOCH`).
const MAGIC: [u8; 4] = *b"SBLD";
const TRAILER: usize = 4 + 1 + 8;
const KIND_AUDIO: u8 = 1;
const KIND_VIDEO: u8 = 2;

static EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);

fn now_us() -> u64 {
    EPOCH.elapsed().as_micros() as u64
}

/// The synthetic media every publisher sends.
#[derive(Debug, Clone, Copy)]
pub struct Media {
    pub fps: u32,
    /// Packets of a delta frame and the size of its last one.
    pub delta_packets: usize,
    pub delta_last: usize,
    pub keyframe_interval: Duration,
    /// Video pacing rate, bytes per second; `None` sends each frame as one burst.
    pub pace_bytes_per_s: Option<f64>,
    /// Every publisher's audio and video clocks start at its join, rather than at a random
    /// phase within the first frame interval.
    pub aligned_clocks: bool,
    /// Send times are tokio's whole milliseconds (the load of every session before `3dc4f3e`,
    /// 20:40 UTC on 2026-11-22) rather than each publisher's own instants (`timer.rs`).
    pub tokio_timer: bool,
}

impl Media {
    /// `pacing`: the video pacing rate as a multiple of `video_kbps` (libwebrtc's pacer uses
    /// 2.5); 0 for none.
    pub fn new(
        video_kbps: u32,
        fps: u32,
        keyframe_secs: u64,
        pacing: f64,
        aligned_clocks: bool,
        tokio_timer: bool,
    ) -> Self {
        let fps = fps.max(1);
        let frame_bytes = (video_kbps as usize * 1000 / 8 / fps as usize).max(TRAILER + 2);
        let delta_packets = frame_bytes.div_ceil(MAX_PAYLOAD);
        let delta_last = frame_bytes - (delta_packets - 1) * MAX_PAYLOAD;
        Self {
            fps,
            delta_packets,
            delta_last: delta_last.max(TRAILER + 2),
            keyframe_interval: Duration::from_secs(keyframe_secs.max(1)),
            pace_bytes_per_s: (pacing > 0.0).then(|| pacing * f64::from(video_kbps) * 1000.0 / 8.0),
            aligned_clocks,
            tokio_timer,
        }
    }

    /// When a publisher's media clock with this `period` starts: now, or (without
    /// `aligned_clocks`) at a random phase within one period. Real senders' capture clocks are
    /// independent; a run whose publishers joined a multiple of the frame interval apart would
    /// otherwise have every publisher send its frame at the same instant.
    fn clock_start(&self, period: Duration) -> Instant {
        let now = Instant::now();
        if self.aligned_clocks {
            now
        } else {
            now + period.mul_f64(rand::random::<f64>())
        }
    }

    /// A publisher's capture clock with this `period` (see `timer::Schedule` for `burst`).
    fn schedule(&self, period: Duration, burst: bool) -> Schedule {
        Schedule::new(self.clock_start(period), period, burst)
    }

    /// Waits until `at` on the publishers' clock.
    async fn sleep_until(&self, at: Instant) {
        if at <= Instant::now() {
            return;
        }
        if self.tokio_timer {
            tokio::time::sleep_until(at.into()).await;
        } else {
            timer::sleep_until(at).await;
        }
    }

    /// Waits for the coming tick of `schedule` and moves it on.
    async fn tick(&self, schedule: &mut Schedule) {
        self.sleep_until(schedule.due()).await;
        schedule.advance(Instant::now());
    }

    /// How long a video packet of `bytes` occupies the pacer.
    fn pace(&self, bytes: usize) -> Option<Duration> {
        self.pace_bytes_per_s
            .map(|rate| Duration::from_secs_f64(bytes as f64 / rate))
    }

    /// RTP packet sizes (before SRTP) and their share of one publisher's packets:
    /// what the raw baseline sends.
    pub fn packet_mix(&self) -> Vec<(usize, f64)> {
        let fps = f64::from(self.fps);
        let keyframes = 1.0 / self.keyframe_interval.as_secs_f64();
        let deltas = (fps - keyframes).max(0.0);
        let mut mix = vec![
            (
                MAX_PAYLOAD + RTP_HEADER,
                deltas * (self.delta_packets - 1) as f64 + keyframes * KEYFRAME_PACKETS as f64,
            ),
            (self.delta_last + RTP_HEADER, deltas),
            (AUDIO_PAYLOAD + RTP_HEADER, 50.0),
        ];
        let total: f64 = mix.iter().map(|m| m.1).sum();
        for m in &mut mix {
            m.1 /= total;
        }
        mix
    }
}

/// What one subscriber measured of one received track.
#[derive(Debug, Default)]
pub struct TrackStats {
    pub video: bool,
    pub publisher: String,
    /// When the subscriber started joining.
    pub subscriber_join: Option<Instant>,
    pub first_packet: Option<Instant>,
    /// Extended sequence numbers of the first and highest packet seen while measuring.
    pub first_seq: Option<u64>,
    pub highest_seq: u64,
    pub measured: u64,
    /// One-way latencies seen while measuring, µs.
    pub latencies_us: Vec<u32>,
    last_seq: Option<u64>,
}

impl TrackStats {
    fn extend(&mut self, seq: u16) -> u64 {
        let ext = match self.last_seq {
            None => u64::from(seq) + (1 << 32),
            Some(last) => {
                let base = last & !0xffff;
                let candidates = [base.wrapping_sub(1 << 16), base, base + (1 << 16)];
                candidates
                    .iter()
                    .map(|b| b + u64::from(seq))
                    .min_by_key(|c| c.abs_diff(last))
                    .unwrap_or(base + u64::from(seq))
            }
        };
        self.last_seq = Some(self.last_seq.map_or(ext, |l| l.max(ext)));
        ext
    }
}

/// State all participants of a run share.
pub struct Shared {
    pub media: Media,
    /// Clients generate NACKs and answer them (as browsers do).
    pub nack: bool,
    /// The address every client socket binds (port 0).
    pub bind_ip: IpAddr,
    pub measuring: AtomicBool,
    pub joined: AtomicUsize,
    pub sent_packets: AtomicU64,
    pub received_packets: AtomicU64,
    pub tracks: Mutex<Vec<Arc<Mutex<TrackStats>>>>,
    /// Participant id → when its publish connection was answered.
    pub publish_started: Mutex<HashMap<String, Instant>>,
    pub join_times: Mutex<Vec<Duration>>,
}

impl Shared {
    /// Counts a participant as joined, `since` being when it started joining.
    pub fn record_join(&self, since: Instant) {
        self.joined.fetch_add(1, Ordering::Relaxed);
        self.join_times
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(since.elapsed());
    }

    pub fn new(media: Media, nack: bool, bind_ip: IpAddr) -> Self {
        LazyLock::force(&EPOCH);
        Self {
            media,
            nack,
            bind_ip,
            measuring: AtomicBool::new(false),
            joined: AtomicUsize::new(0),
            sent_packets: AtomicU64::new(0),
            received_packets: AtomicU64::new(0),
            tracks: Mutex::new(Vec::new()),
            publish_started: Mutex::new(HashMap::new()),
            join_times: Mutex::new(Vec::new()),
        }
    }

    /// (subscriber, publisher) pairs where video has arrived.
    pub fn video_pairs_flowing(&self) -> usize {
        let tracks = self.tracks.lock().unwrap_or_else(|e| e.into_inner());
        tracks
            .iter()
            .filter(|t| {
                let t = t.lock().unwrap_or_else(|e| e.into_inner());
                t.video && t.first_packet.is_some()
            })
            .count()
    }
}

/// A signaling connection: JSON out, JSON in.
struct Signal {
    tx: mpsc::UnboundedSender<Message>,
    rx: mpsc::UnboundedReceiver<Value>,
    backlog: VecDeque<Value>,
}

impl Signal {
    async fn connect(http: SocketAddr) -> anyhow::Result<Self> {
        let (ws, _) = tokio_tungstenite::connect_async(format!("ws://{http}/ws"))
            .await
            .context("connect /ws")?;
        let (mut sink, mut stream) = ws.split();
        let (tx, mut out_rx) = mpsc::unbounded_channel::<Message>();
        let (in_tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Some(m) = out_rx.recv().await {
                if sink.send(m).await.is_err() {
                    break;
                }
            }
            let _ = sink.send(Message::Close(None)).await;
        });
        tokio::spawn(async move {
            while let Some(Ok(m)) = stream.next().await {
                if let Message::Text(t) = m
                    && let Ok(v) = serde_json::from_str::<Value>(&t)
                    && in_tx.send(v).is_err()
                {
                    break;
                }
            }
        });
        Ok(Self {
            tx,
            rx,
            backlog: VecDeque::new(),
        })
    }

    fn send(&self, v: Value) {
        let _ = self.tx.send(Message::Text(v.to_string().into()));
    }

    async fn recv(&mut self, within: Duration) -> Option<Value> {
        if let Some(v) = self.backlog.pop_front() {
            return Some(v);
        }
        tokio::time::timeout(within, self.rx.recv())
            .await
            .ok()
            .flatten()
    }

    /// The next message of `typ` (others stay queued); an `error` message fails.
    async fn expect(&mut self, typ: &str) -> anyhow::Result<Value> {
        if let Some(i) = self.backlog.iter().position(|v| v["type"] == typ) {
            return Ok(self.backlog.remove(i).unwrap_or_default());
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.rx.recv()).await {
                Ok(Some(v)) if v["type"] == typ => return Ok(v),
                Ok(Some(v)) if v["type"] == "error" => bail!("server error waiting for {typ}: {v}"),
                Ok(Some(v)) => self.backlog.push_back(v),
                Ok(None) => bail!("signaling closed waiting for {typ}"),
                Err(_) => bail!("no {typ} within 20 s"),
            }
        }
    }
}

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

/// Who published a received track, for the first-frame figure (`Shared::publish_started`).
#[derive(Clone)]
pub enum PublisherOf {
    /// The track's stream id is the publisher's id (Switchboard sets the msid to it).
    StreamId,
    /// Looked up by the track's SSRC, filled in by the signaling front end.
    Ssrc(Arc<Mutex<HashMap<u32, String>>>),
}

/// Records every received packet of a subscribe connection.
struct Receiver {
    shared: Arc<Shared>,
    joined_at: Instant,
    publisher_of: PublisherOf,
}

/// The event handler of a subscribe connection: every packet of every track it receives goes
/// into `shared`'s statistics. `joined_at` is when the subscriber started joining.
pub fn receiver(
    shared: Arc<Shared>,
    joined_at: Instant,
    publisher_of: PublisherOf,
) -> Arc<dyn PeerConnectionEventHandler> {
    Arc::new(Receiver {
        shared,
        joined_at,
        publisher_of,
    })
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for Receiver {
    async fn on_track(&self, track: Arc<dyn TrackRemote>) {
        let shared = self.shared.clone();
        let stats = Arc::new(Mutex::new(TrackStats {
            subscriber_join: Some(self.joined_at),
            ..Default::default()
        }));
        shared
            .tracks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(stats.clone());
        let publisher_of = self.publisher_of.clone();
        tokio::spawn(async move {
            let stream_id = track.stream_id().await;
            let publisher = |ssrc: u32| match &publisher_of {
                PublisherOf::StreamId => stream_id.clone(),
                PublisherOf::Ssrc(map) => map
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .get(&ssrc)
                    .cloned()
                    .unwrap_or_default(),
            };
            while let Some(event) = track.poll().await {
                let TrackRemoteEvent::OnRtpPacket(p) = event else {
                    continue;
                };
                let now = Instant::now();
                let Some((video, sent_us)) = read_trailer(&p.payload) else {
                    continue;
                };
                shared.received_packets.fetch_add(1, Ordering::Relaxed);
                let measuring = shared.measuring.load(Ordering::Relaxed);
                let mut s = stats.lock().unwrap_or_else(|e| e.into_inner());
                if s.first_packet.is_none() {
                    s.first_packet = Some(now);
                    s.video = video;
                    s.publisher = publisher(p.header.ssrc);
                }
                let ext = s.extend(p.header.sequence_number);
                if measuring {
                    s.first_seq.get_or_insert(ext);
                    s.highest_seq = s.highest_seq.max(ext);
                    s.measured += 1;
                    let latency = now_us().saturating_sub(sent_us);
                    s.latencies_us.push(latency.min(u64::from(u32::MAX)) as u32);
                }
            }
        });
    }
}

/// No events needed from a publish connection: PLIs come through its tracks.
struct Quiet;

#[async_trait::async_trait]
impl PeerConnectionEventHandler for Quiet {}

fn read_trailer(payload: &[u8]) -> Option<(bool, u64)> {
    let t = payload.get(payload.len().checked_sub(TRAILER)?..)?;
    if t[..4] != MAGIC {
        return None;
    }
    let sent = u64::from_be_bytes(t[5..13].try_into().ok()?);
    Some((t[4] == KIND_VIDEO, sent))
}

fn write_trailer(payload: &mut [u8], kind: u8) {
    let n = payload.len();
    let t = &mut payload[n - TRAILER..];
    t[..4].copy_from_slice(&MAGIC);
    t[4] = kind;
    t[5..13].copy_from_slice(&now_us().to_be_bytes());
}

/// A peer connection with the tool's codecs and interceptors, its sockets on `shared.bind_ip`.
pub async fn new_pc(
    handler: Arc<dyn PeerConnectionEventHandler>,
    shared: &Shared,
) -> anyhow::Result<Arc<dyn PeerConnection>> {
    let mut engine = MediaEngine::default();
    engine.register_codec(
        RTCRtpCodecParameters {
            rtp_codec: opus(),
            payload_type: OPUS_PT,
        },
        RtpCodecKind::Audio,
    )?;
    engine.register_codec(
        RTCRtpCodecParameters {
            rtp_codec: vp8(),
            payload_type: VP8_PT,
        },
        RtpCodecKind::Video,
    )?;
    let registry = Registry::new().with(Slot::from(14_000), DeliverRtcp::default());
    // As `register_default_interceptors`, with the NACK generator/responder optional.
    let registry = if shared.nack {
        configure_nack(registry, &mut engine)
    } else {
        registry
    };
    let registry = configure_twcc_receiver_only(registry, &mut engine)?;
    let registry = configure_rtcp_reports(registry);
    // One address (loopback or the namespace's veth), no mDNS.
    let settings = SettingEngineBuilder::new()
        .with_multicast_dns_mode(rtc::ice::mdns::MulticastDnsMode::Disabled)
        .build();
    let pc = PeerConnectionBuilder::new()
        .with_configuration(RTCConfigurationBuilder::new().build())
        .with_setting_engine(settings)
        .with_media_engine(engine)
        .with_interceptor_registry(registry)
        .with_handler(handler)
        .with_udp_addrs(vec![SocketAddr::new(shared.bind_ip, 0).to_string()])
        .build()
        .await
        .context("build a peer connection")?;
    Ok(Arc::new(pc))
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

/// A publish connection: one Opus and one VP8 track, then the synthetic media on them.
pub struct Outgoing {
    pub pc: Arc<dyn PeerConnection>,
    audio: Arc<TrackLocalStaticRTP>,
    video: Arc<TrackLocalStaticRTP>,
}

impl Outgoing {
    pub async fn new(shared: &Shared) -> anyhow::Result<Self> {
        let pc = new_pc(Arc::new(Quiet), shared).await?;
        let audio = Arc::new(TrackLocalStaticRTP::new(local_track(
            "audio",
            RtpCodecKind::Audio,
            opus(),
        )));
        let video = Arc::new(TrackLocalStaticRTP::new(local_track(
            "video",
            RtpCodecKind::Video,
            vp8(),
        )));
        pc.add_track(audio.clone()).await?;
        pc.add_track(video.clone()).await?;
        Ok(Self { pc, audio, video })
    }

    /// The SDP offer, set as local description (see `local_sdp` for `candidates`).
    pub async fn offer(&self, candidates: bool) -> anyhow::Result<String> {
        let offer = self.pc.create_offer(None).await?;
        self.pc.set_local_description(offer).await?;
        local_sdp(&self.pc, candidates).await
    }

    pub async fn accept(&self, answer_sdp: &str) -> anyhow::Result<()> {
        self.pc
            .set_remote_description(RTCSessionDescription::answer(answer_sdp.to_owned())?)
            .await?;
        Ok(())
    }

    /// Starts sending audio and video until `stop`.
    pub fn start(&self, shared: &Arc<Shared>, stop: &Arc<AtomicBool>) {
        tokio::spawn(send_audio(self.audio.clone(), shared.clone(), stop.clone()));
        tokio::spawn(send_video(self.video.clone(), shared.clone(), stop.clone()));
    }
}

/// The local description's SDP. With `candidates`, waits (up to 2 s) until the host candidates
/// are in it: a full-ICE server (Janus) needs them, Switchboard (ICE-lite) learns the client's
/// address from its connectivity checks.
pub async fn local_sdp(pc: &Arc<dyn PeerConnection>, candidates: bool) -> anyhow::Result<String> {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let sdp = pc
            .local_description()
            .await
            .context("no local description")?
            .sdp;
        if !candidates || sdp.contains("a=candidate") || Instant::now() > deadline {
            return Ok(sdp);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Answers an offer on `pc` (the caller's subscribe connection), returns the answer's SDP.
pub async fn answer(
    pc: &Arc<dyn PeerConnection>,
    offer_sdp: &str,
    candidates: bool,
) -> anyhow::Result<String> {
    pc.set_remote_description(RTCSessionDescription::offer(offer_sdp.to_owned())?)
        .await?;
    let answer = pc.create_answer(None).await?;
    pc.set_local_description(answer).await?;
    local_sdp(pc, candidates).await
}

pub struct Participant {
    stop: Arc<AtomicBool>,
    publish: Arc<dyn PeerConnection>,
    subscribe: Arc<tokio::sync::Mutex<Option<Arc<dyn PeerConnection>>>>,
    signal_tx: mpsc::UnboundedSender<Message>,
}

impl Participant {
    pub async fn join(
        shared: Arc<Shared>,
        http: SocketAddr,
        room: &str,
        name: &str,
    ) -> anyhow::Result<Self> {
        let joined_at = Instant::now();
        let token = Server::dev_token(http, name, room).await?;
        let mut signal = Signal::connect(http).await?;
        signal.send(json!({"type": "auth", "token": token}));
        signal.expect("authenticated").await?;
        signal.send(json!({"type": "join", "room": room}));
        let joined = signal.expect("joined").await?;
        let id = joined["participant_id"]
            .as_str()
            .context("joined without participant_id")?
            .to_owned();

        let outgoing = Outgoing::new(&shared).await?;
        let sdp = outgoing.offer(false).await?;
        signal.send(json!({"type": "publish_offer", "sdp": sdp}));
        let answer = signal.expect("publish_answer").await?;
        outgoing
            .accept(answer["sdp"].as_str().context("answer without sdp")?)
            .await?;
        shared
            .publish_started
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id.clone(), Instant::now());

        let stop = Arc::new(AtomicBool::new(false));
        outgoing.start(&shared, &stop);

        // Answer every subscribe offer.
        let subscribe: Arc<tokio::sync::Mutex<Option<Arc<dyn PeerConnection>>>> =
            Default::default();
        let signal_tx = signal.tx.clone();
        {
            let (stop, subscribe, shared) = (stop.clone(), subscribe.clone(), shared.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let Some(msg) = signal.recv(Duration::from_millis(200)).await else {
                        continue;
                    };
                    if msg["type"] != "subscribe_offer" {
                        continue;
                    }
                    if let Err(err) =
                        answer_subscribe(&signal, &subscribe, &shared, joined_at, &msg).await
                    {
                        eprintln!("  warning: subscribe offer not answered: {err:#}");
                    }
                }
            });
        }
        shared.record_join(joined_at);
        Ok(Self {
            stop,
            publish: outgoing.pc,
            subscribe,
            signal_tx,
        })
    }

    pub async fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self
            .signal_tx
            .send(Message::Text(json!({"type": "leave"}).to_string().into()));
        let _ = self.publish.close().await;
        if let Some(pc) = self.subscribe.lock().await.take() {
            let _ = pc.close().await;
        }
    }
}

async fn answer_subscribe(
    signal: &Signal,
    subscribe: &tokio::sync::Mutex<Option<Arc<dyn PeerConnection>>>,
    shared: &Arc<Shared>,
    joined_at: Instant,
    msg: &Value,
) -> anyhow::Result<()> {
    let mut sub = subscribe.lock().await;
    if sub.is_none() {
        let handler = receiver(shared.clone(), joined_at, PublisherOf::StreamId);
        *sub = Some(new_pc(handler, shared).await?);
    }
    let pc = sub.as_ref().context("created above")?;
    let offer = msg["sdp"].as_str().context("subscribe_offer without sdp")?;
    let sdp = answer(pc, offer, false).await?;
    signal.send(json!({"type": "subscribe_answer", "sdp": sdp}));
    Ok(())
}

async fn ssrc_of(track: &TrackLocalStaticRTP) -> u32 {
    track.track().await.codings()[0]
        .rtp_coding_parameters
        .ssrc
        .unwrap_or_default()
}

fn rtp(pt: u8, seq: u16, ts: u32, ssrc: u32, marker: bool, payload: Vec<u8>) -> rtc::rtp::Packet {
    rtc::rtp::Packet {
        header: rtc::rtp::header::Header {
            version: 2,
            marker,
            payload_type: pt,
            sequence_number: seq,
            timestamp: ts,
            ssrc,
            ..Default::default()
        },
        payload: payload.into(),
    }
}

/// 50 packets/s of `AUDIO_PAYLOAD` bytes.
async fn send_audio(track: Arc<TrackLocalStaticRTP>, shared: Arc<Shared>, stop: Arc<AtomicBool>) {
    let ssrc = ssrc_of(&track).await;
    let (mut seq, mut ts): (u16, u32) = (rand::random(), rand::random());
    let media = shared.media;
    let mut clock = media.schedule(Duration::from_millis(20), false);
    while !stop.load(Ordering::Relaxed) {
        media.tick(&mut clock).await;
        let mut payload = vec![0xf8; AUDIO_PAYLOAD];
        write_trailer(&mut payload, KIND_AUDIO);
        if track
            .write_rtp(rtp(OPUS_PT, seq, ts, ssrc, false, payload))
            .await
            .is_ok()
        {
            shared.sent_packets.fetch_add(1, Ordering::Relaxed);
        }
        seq = seq.wrapping_add(1);
        ts = ts.wrapping_add(960);
    }
}

/// VP8 at `media.fps`: delta frames of `delta_packets`, a keyframe of `KEYFRAME_PACKETS` full
/// packets at the start, every `keyframe_interval` and on every PLI. With pacing, as in
/// libwebrtc's pacer, a packet leaves once the previous one's bytes have drained at the pacing
/// rate, so a keyframe spreads over the following frame intervals and the next frames queue
/// behind it.
async fn send_video(track: Arc<TrackLocalStaticRTP>, shared: Arc<Shared>, stop: Arc<AtomicBool>) {
    let media = shared.media;
    let ssrc = ssrc_of(&track).await;
    let keyframe_wanted = Arc::new(AtomicBool::new(true));
    {
        let (track, kw, stop) = (track.clone(), keyframe_wanted.clone(), stop.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                match tokio::time::timeout(Duration::from_millis(200), track.poll()).await {
                    Ok(Some(TrackLocalEvent::OnRtcpPacket(packets)))
                        if packets
                            .iter()
                            .any(|p| p.as_any().is::<PictureLossIndication>()) =>
                    {
                        kw.store(true, Ordering::Relaxed);
                    }
                    Ok(None) => tokio::time::sleep(Duration::from_millis(50)).await,
                    _ => {}
                }
            }
        });
    }
    let (mut seq, mut ts): (u16, u32) = (rand::random(), rand::random());
    let mut last_key: Option<Instant> = None;
    // A frame that waits for the pacer is still captured on time.
    let mut clock = media.schedule(Duration::from_secs(1) / media.fps, true);
    let mut pacer_free = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        media.tick(&mut clock).await;
        let due = last_key.is_none_or(|t| t.elapsed() >= media.keyframe_interval);
        // The server throttles its requests; answer each one, as browsers do.
        let key = due || keyframe_wanted.load(Ordering::Relaxed);
        if key {
            keyframe_wanted.store(false, Ordering::Relaxed);
            last_key = Some(Instant::now());
        }
        let sizes: Vec<usize> = if key {
            vec![MAX_PAYLOAD; KEYFRAME_PACKETS]
        } else {
            let mut s = vec![MAX_PAYLOAD; media.delta_packets - 1];
            s.push(media.delta_last);
            s
        };
        let n = sizes.len();
        for (i, size) in sizes.into_iter().enumerate() {
            if let Some(drain) = media.pace(size + RTP_HEADER) {
                media.sleep_until(pacer_free).await;
                pacer_free = pacer_free.max(Instant::now()) + drain;
            }
            let mut payload = vec![0xab; size];
            // RFC 7741 descriptor: S=1 on the first packet of a frame; then the frame tag,
            // P=0 on keyframes (what the server's keyframe detector reads).
            payload[0] = if i == 0 { 0x10 } else { 0x00 };
            payload[1] = if key { 0x00 } else { 0x01 };
            write_trailer(&mut payload, KIND_VIDEO);
            if track
                .write_rtp(rtp(VP8_PT, seq, ts, ssrc, i + 1 == n, payload))
                .await
                .is_ok()
            {
                shared.sent_packets.fetch_add(1, Ordering::Relaxed);
            }
            seq = seq.wrapping_add(1);
        }
        ts = ts.wrapping_add(90_000 / media.fps);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trailer_round_trip() {
        let mut p = vec![0u8; 100];
        write_trailer(&mut p, KIND_VIDEO);
        let (video, at) = read_trailer(&p).unwrap();
        assert!(video);
        assert!(at <= now_us());
        assert_eq!(read_trailer(&[0u8; 5]), None);
        assert_eq!(read_trailer(&[0u8; 50]), None);
    }

    #[test]
    fn one_megabit_video_is_four_packets_a_frame() {
        let m = Media::new(1000, 30, 3, 0.0, false, false);
        assert_eq!(m.pace(1200), None);
        assert_eq!(m.delta_packets, 4);
        let mix = m.packet_mix();
        let share: f64 = mix.iter().map(|m| m.1).sum();
        assert!((share - 1.0).abs() < 1e-9);
    }

    #[test]
    fn pacing_drains_at_a_multiple_of_the_video_rate() {
        // 2.5 × 1 Mbit/s is 312 500 bytes/s: a 1200-byte packet takes 3.84 ms, a keyframe of
        // 15 of them 58 ms.
        let m = Media::new(1000, 30, 3, 2.5, false, false);
        assert_eq!(m.pace(1200), Some(Duration::from_micros(3840)));
    }

    #[test]
    fn sequence_extension_across_wrap() {
        let mut t = TrackStats::default();
        let a = t.extend(65_534);
        let b = t.extend(65_535);
        let c = t.extend(0);
        let d = t.extend(65_535); // late
        assert_eq!((b - a, c - b), (1, 1));
        assert_eq!(d, b);
    }
}
