//! The same participants against Janus VideoRoom (Janus 1.x), for the comparison in
//! docs/performance.md: signaling over Janus's HTTP REST API, media through the same
//! `Outgoing` and `receiver` as the Switchboard front end.
//!
//! Each participant is one Janus session (long-polled with `GET /janus/<session>`, kept alive)
//! with two handles on `janus.plugin.videoroom`, as the VideoRoom demo does in a browser:
//! - a publisher: `join` (ptype publisher), then `configure` with the SDP offer of its
//!   `Outgoing`; Janus answers in an event;
//! - a multistream subscriber: `join` (ptype subscriber) with `streams: [{feed}]` for the
//!   publishers already there, then `subscribe` for each one announced later. Janus sends an
//!   offer for each (`attached`, `updated`); the answer goes back with `start`. One renegotiation
//!   at a time: feeds announced meanwhile wait for the next one.
//!
//! Janus sends its own candidates in its SDP (half-trickle); ours are in our SDP too.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use webrtc::peer_connection::PeerConnection;

use crate::client::{Outgoing, PublisherOf, Shared, answer, new_pc, receiver};
use crate::server::http_request;

const VIDEOROOM: &str = "janus.plugin.videoroom";
/// How long a request's event may take.
const EVENT_TIMEOUT: Duration = Duration::from_secs(20);

/// Where Janus's REST API is: `http://IP:PORT/janus`.
#[derive(Debug, Clone)]
pub struct Janus {
    pub http: SocketAddr,
    base: String,
}

impl Janus {
    pub fn parse(url: &str) -> anyhow::Result<Self> {
        let rest = url
            .strip_prefix("http://")
            .context("--janus-url must be an http:// URL")?;
        let (host, path) = rest.split_once('/').unwrap_or((rest, "janus"));
        let http: SocketAddr = host
            .parse()
            .with_context(|| format!("--janus-url {url}: expected http://IP:PORT/janus"))?;
        Ok(Self {
            http,
            base: format!("/{}", path.trim_end_matches('/')),
        })
    }

    /// POSTs a Janus API request to `path` (below the base path) with a fresh transaction;
    /// an `error` answer fails.
    async fn post(&self, path: &str, mut body: Value) -> anyhow::Result<Value> {
        body["transaction"] = json!(transaction());
        let (status, v) = http_request(
            self.http,
            "POST",
            &format!("{}{path}", self.base),
            Some(body),
        )
        .await
        .with_context(|| format!("POST {}{path}", self.base))?;
        if status != 200 || v["janus"] == "error" {
            bail!("Janus: POST {}{path}: {status} {v}", self.base);
        }
        Ok(v)
    }

    /// Creates a VideoRoom room for `publishers` participants that does not cap their bit rate
    /// below what the load sends; returns its id.
    pub async fn create_room(&self, publishers: usize) -> anyhow::Result<u64> {
        let session = self.post("", json!({"janus": "create"})).await?;
        let sid = session["data"]["id"]
            .as_u64()
            .context("create: no session id")?;
        let handle = self
            .post(
                &format!("/{sid}"),
                json!({"janus": "attach", "plugin": VIDEOROOM}),
            )
            .await?;
        let hid = handle["data"]["id"]
            .as_u64()
            .context("attach: no handle id")?;
        // Below 2^53, as Janus's JavaScript clients expect.
        let room = u64::from(rand::random::<u32>()) + 1;
        let created = self
            .post(
                &format!("/{sid}/{hid}"),
                json!({"janus": "message", "body": {
                    "request": "create",
                    "room": room,
                    "publishers": publishers,
                    "bitrate": 2_000_000,
                    "fir_freq": 0,
                    "audiocodec": "opus",
                    "videocodec": "vp8",
                    "is_private": true,
                }}),
            )
            .await?;
        let data = &created["plugindata"]["data"];
        if data["videoroom"] != "created" {
            bail!("VideoRoom create: {created}");
        }
        let _ = self
            .post(&format!("/{sid}"), json!({"janus": "destroy"}))
            .await;
        Ok(room)
    }
}

fn transaction() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    format!("t{}", NEXT.fetch_add(1, Ordering::Relaxed))
}

/// One Janus session: a long-poll task hands every event to its handle's channel.
struct Session {
    janus: Janus,
    id: u64,
    handles: Mutex<HashMap<u64, mpsc::UnboundedSender<Value>>>,
    stop: AtomicBool,
}

impl Session {
    async fn create(janus: &Janus) -> anyhow::Result<Arc<Self>> {
        let v = janus.post("", json!({"janus": "create"})).await?;
        let session = Arc::new(Self {
            janus: janus.clone(),
            id: v["data"]["id"].as_u64().context("create: no session id")?,
            handles: Mutex::new(HashMap::new()),
            stop: AtomicBool::new(false),
        });
        tokio::spawn(session.clone().long_poll());
        tokio::spawn(session.clone().keepalive());
        Ok(session)
    }

    async fn long_poll(self: Arc<Self>) {
        let path = format!("{}/{}?maxev=10", self.janus.base, self.id);
        while !self.stop.load(Ordering::Relaxed) {
            let answer = http_request(self.janus.http, "GET", &path, None).await;
            if self.stop.load(Ordering::Relaxed) {
                break; // the session is being destroyed: its last poll fails
            }
            let events = match answer {
                Ok((200, Value::Array(events))) => events,
                Ok((200, event)) => vec![event],
                Ok((status, v)) => {
                    eprintln!("  warning: Janus long poll: {status} {v}");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
                Err(err) => {
                    eprintln!("  warning: Janus long poll: {err}");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            };
            let handles = self.handles.lock().unwrap_or_else(|e| e.into_inner());
            for event in events {
                if let Some(tx) = event["sender"].as_u64().and_then(|h| handles.get(&h)) {
                    let _ = tx.send(event);
                }
            }
        }
    }

    async fn keepalive(self: Arc<Self>) {
        while !self.stop.load(Ordering::Relaxed) {
            tokio::time::sleep(Duration::from_secs(15)).await;
            if self.stop.load(Ordering::Relaxed) {
                break;
            }
            if let Err(err) = self
                .janus
                .post(&format!("/{}", self.id), json!({"janus": "keepalive"}))
                .await
            {
                eprintln!("  warning: Janus keepalive: {err:#}");
            }
        }
    }

    async fn attach(self: &Arc<Self>) -> anyhow::Result<Handle> {
        let v = self
            .janus
            .post(
                &format!("/{}", self.id),
                json!({"janus": "attach", "plugin": VIDEOROOM}),
            )
            .await?;
        let id = v["data"]["id"].as_u64().context("attach: no handle id")?;
        let (tx, events) = mpsc::unbounded_channel();
        self.handles
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, tx);
        Ok(Handle {
            session: self.clone(),
            id,
            events,
            backlog: Vec::new(),
        })
    }

    async fn destroy(&self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self
            .janus
            .post(&format!("/{}", self.id), json!({"janus": "destroy"}))
            .await;
    }
}

/// One plugin handle and the events Janus sent on it.
struct Handle {
    session: Arc<Session>,
    id: u64,
    events: mpsc::UnboundedReceiver<Value>,
    /// Events received while waiting for another one.
    backlog: Vec<Value>,
}

impl Handle {
    /// Sends a VideoRoom request (with a JSEP offer or answer), returns Janus's direct answer
    /// (`ack` for asynchronous requests, whose result comes as an event).
    async fn message(&self, body: Value, jsep: Option<Value>) -> anyhow::Result<Value> {
        let mut m = json!({"janus": "message", "body": body});
        if let Some(jsep) = jsep {
            m["jsep"] = jsep;
        }
        self.session
            .janus
            .post(&format!("/{}/{}", self.session.id, self.id), m)
            .await
    }

    /// The next VideoRoom event for which `wanted(data, event)` holds; others are kept for
    /// later. A VideoRoom `error` event fails.
    async fn event(
        &mut self,
        what: &str,
        wanted: impl Fn(&Value, &Value) -> bool,
    ) -> anyhow::Result<Value> {
        if let Some(i) = self
            .backlog
            .iter()
            .position(|e| wanted(&e["plugindata"]["data"], e))
        {
            return Ok(self.backlog.remove(i));
        }
        let deadline = Instant::now() + EVENT_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let Ok(Some(e)) = tokio::time::timeout(left, self.events.recv()).await else {
                bail!("Janus: no {what} event within {EVENT_TIMEOUT:?}");
            };
            let data = &e["plugindata"]["data"];
            if wanted(data, &e) {
                return Ok(e);
            }
            if data["videoroom"] == "event" && data.get("error").is_some() {
                bail!("Janus: error waiting for {what}: {data}");
            }
            self.backlog.push(e);
        }
    }

    /// The next event, from the backlog first; None after `within`.
    async fn next(&mut self, within: Duration) -> Option<Value> {
        if !self.backlog.is_empty() {
            return Some(self.backlog.remove(0));
        }
        tokio::time::timeout(within, self.events.recv())
            .await
            .ok()
            .flatten()
    }
}

/// Publisher ids in a VideoRoom event's `publishers` list.
fn feeds(data: &Value) -> Vec<u64> {
    data["publishers"]
        .as_array()
        .map(|ps| ps.iter().filter_map(|p| p["id"].as_u64()).collect())
        .unwrap_or_default()
}

fn jsep_sdp(event: &Value) -> anyhow::Result<&str> {
    event["jsep"]["sdp"]
        .as_str()
        .with_context(|| format!("no jsep sdp in {event}"))
}

pub struct Participant {
    stop: Arc<AtomicBool>,
    session: Arc<Session>,
    publish: Arc<dyn PeerConnection>,
    subscribe: Arc<tokio::sync::Mutex<Option<Arc<dyn PeerConnection>>>>,
}

impl Participant {
    pub async fn join(
        shared: Arc<Shared>,
        janus: &Janus,
        room: u64,
        name: &str,
    ) -> anyhow::Result<Self> {
        let joined_at = Instant::now();
        let session = Session::create(janus).await?;
        let mut publisher = session.attach().await?;
        publisher
            .message(
                json!({"request": "join", "ptype": "publisher", "room": room, "display": name}),
                None,
            )
            .await?;
        let joined = publisher
            .event("joined", |d, _| d["videoroom"] == "joined")
            .await?;
        let data = &joined["plugindata"]["data"];
        let id = data["id"].as_u64().context("joined without id")?;
        let existing = feeds(data);

        let outgoing = Outgoing::new(&shared).await?;
        let offer = outgoing.offer(true).await?;
        publisher
            .message(
                json!({"request": "configure", "audio": true, "video": true}),
                Some(json!({"type": "offer", "sdp": offer})),
            )
            .await?;
        let configured = publisher
            .event("configure answer", |_, e| e["jsep"]["type"] == "answer")
            .await?;
        outgoing.accept(jsep_sdp(&configured)?).await?;
        shared
            .publish_started
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id.to_string(), Instant::now());
        let stop = Arc::new(AtomicBool::new(false));
        outgoing.start(&shared, &stop);

        // Publishers announced on the publisher handle → the subscriber handle's task.
        let (feed_tx, feed_rx) = mpsc::unbounded_channel();
        for f in existing {
            let _ = feed_tx.send(f);
        }
        {
            let stop = stop.clone();
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    if let Some(e) = publisher.next(Duration::from_millis(200)).await {
                        for f in feeds(&e["plugindata"]["data"]) {
                            if f != id {
                                let _ = feed_tx.send(f);
                            }
                        }
                    }
                }
            });
        }
        let subscribe: Arc<tokio::sync::Mutex<Option<Arc<dyn PeerConnection>>>> =
            Default::default();
        let subscriber = session.attach().await?;
        tokio::spawn(subscribe_loop(
            Subscriber {
                handle: subscriber,
                shared: shared.clone(),
                room,
                joined_at,
                stop: stop.clone(),
                pc: subscribe.clone(),
                publisher_of: Default::default(),
            },
            feed_rx,
        ));

        shared.record_join(joined_at);
        Ok(Self {
            stop,
            session,
            publish: outgoing.pc,
            subscribe,
        })
    }

    pub async fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.publish.close().await;
        if let Some(pc) = self.subscribe.lock().await.take() {
            let _ = pc.close().await;
        }
        self.session.destroy().await;
    }
}

/// A participant's subscriber handle and its one subscribe connection.
struct Subscriber {
    handle: Handle,
    shared: Arc<Shared>,
    room: u64,
    joined_at: Instant,
    stop: Arc<AtomicBool>,
    pc: Arc<tokio::sync::Mutex<Option<Arc<dyn PeerConnection>>>>,
    /// SSRC of each stream Janus offers → its publisher's id.
    publisher_of: Arc<Mutex<HashMap<u32, String>>>,
}

/// Subscribes to every feed that arrives on `feeds`, one renegotiation at a time.
async fn subscribe_loop(mut sub: Subscriber, mut feeds: mpsc::UnboundedReceiver<u64>) {
    let mut pending = Vec::new();
    while !sub.stop.load(Ordering::Relaxed) {
        if pending.is_empty() {
            match tokio::time::timeout(Duration::from_millis(200), feeds.recv()).await {
                Ok(Some(f)) => pending.push(f),
                Ok(None) => break,
                Err(_) => continue,
            }
        }
        while let Ok(f) = feeds.try_recv() {
            pending.push(f);
        }
        pending.sort_unstable();
        pending.dedup();
        let batch = std::mem::take(&mut pending);
        if let Err(err) = sub.add(&batch).await {
            eprintln!("  warning: Janus subscription to {batch:?} failed: {err:#}");
        }
    }
}

impl Subscriber {
    async fn add(&mut self, new_feeds: &[u64]) -> anyhow::Result<()> {
        let streams: Vec<Value> = new_feeds.iter().map(|f| json!({"feed": f})).collect();
        let first = self.pc.lock().await.is_none();
        let event = if first {
            self.handle
                .message(
                    json!({"request": "join", "ptype": "subscriber", "room": self.room,
                           "streams": streams}),
                    None,
                )
                .await?;
            self.handle
                .event("attached", |d, _| d["videoroom"] == "attached")
                .await?
        } else {
            self.handle
                .message(json!({"request": "subscribe", "streams": streams}), None)
                .await?;
            self.handle
                .event("updated", |d, _| d["videoroom"] == "updated")
                .await?
        };
        if event["jsep"]["type"] != "offer" {
            return Ok(());
        }
        let offer = jsep_sdp(&event)?;
        self.map_ssrcs(offer, &event["plugindata"]["data"]["streams"]);
        let pc = {
            let mut pc = self.pc.lock().await;
            if pc.is_none() {
                let handler = receiver(
                    self.shared.clone(),
                    self.joined_at,
                    PublisherOf::Ssrc(self.publisher_of.clone()),
                );
                *pc = Some(new_pc(handler, &self.shared).await?);
            }
            pc.clone().context("created above")?
        };
        let sdp = answer(&pc, offer, true).await?;
        self.handle
            .message(
                json!({"request": "start"}),
                Some(json!({"type": "answer", "sdp": sdp})),
            )
            .await?;
        self.handle
            .event("started", |d, _| d["started"] == "ok")
            .await?;
        Ok(())
    }

    /// Records which publisher each offered SSRC comes from: the offer's `a=mid` and
    /// `a=ssrc` lines, and the event's `streams` (`mid` → `feed_id`).
    fn map_ssrcs(&self, offer: &str, streams: &Value) {
        let feed_of_mid: HashMap<&str, u64> = streams
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| Some((s["mid"].as_str()?, s["feed_id"].as_u64()?)))
            .collect();
        let mut map = self.publisher_of.lock().unwrap_or_else(|e| e.into_inner());
        let ssrcs = ssrcs_by_mid(offer);
        for (mid, feed) in &feed_of_mid {
            let mut found = false;
            for (_, ssrc) in ssrcs.iter().filter(|(m, _)| m == mid) {
                map.insert(*ssrc, feed.to_string());
                found = true;
            }
            if !found {
                eprintln!(
                    "  warning: no a=ssrc for mid {mid} in Janus's offer: first-frame times of \
                     publisher {feed} count from the subscriber's join"
                );
            }
        }
    }
}

/// (mid, SSRC) of every `a=ssrc` line of an SDP, by the m-section it is in.
fn ssrcs_by_mid(sdp: &str) -> Vec<(String, u32)> {
    let mut out = Vec::new();
    for section in sdp.split("\nm=").skip(1) {
        let mid = section
            .lines()
            .find_map(|l| l.trim_end().strip_prefix("a=mid:"))
            .unwrap_or_default();
        let mut ssrcs: Vec<u32> = section
            .lines()
            .filter_map(|l| l.strip_prefix("a=ssrc:")?.split(' ').next()?.parse().ok())
            .collect();
        ssrcs.dedup();
        out.extend(ssrcs.into_iter().map(|s| (mid.to_owned(), s)));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_url() {
        let j = Janus::parse("http://10.77.0.1:8088/janus").unwrap();
        assert_eq!(j.http.to_string(), "10.77.0.1:8088");
        assert_eq!(j.base, "/janus");
        assert!(Janus::parse("https://x/janus").is_err());
    }

    #[test]
    fn ssrcs_by_mid_follow_their_sections() {
        let sdp = "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\na=ssrc:11 cname:janus\r\na=ssrc:11 msid:janus janus0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96 97\r\na=mid:1\r\na=ssrc-group:FID 22 23\r\na=ssrc:22 cname:janus\r\na=ssrc:23 cname:janus\r\n";
        assert_eq!(
            ssrcs_by_mid(sdp),
            vec![("0".into(), 11), ("1".into(), 22), ("1".into(), 23)]
        );
    }

    #[test]
    fn feeds_of_a_publishers_event() {
        let data = json!({"videoroom": "event", "publishers": [{"id": 5}, {"id": 7}]});
        assert_eq!(feeds(&data), vec![5, 7]);
        assert!(feeds(&json!({})).is_empty());
    }
}
