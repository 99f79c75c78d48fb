//! `switchboard-load`: joins R rooms of P participants each to a running Switchboard over real
//! UDP loopback, every participant publishing synthetic VP8 video and Opus audio, and reports what
//! the server spent on it: packets in/out per second, CPU time per forwarded packet, RSS per
//! participant, end-to-end latency, loss and time to first frame. Then it measures the raw
//! baseline (SRTP-encrypt + `sendmmsg` of the same packet sizes over loopback) in the same run,
//! so the server's cost can be quoted as a ratio to what the machine can do at best.
//!
//! Each participant is an independent WebRTC stack (the async `webrtc` crate, its own sockets),
//! signaling over `/ws` as in docs/protocol.md. Every media payload ends with a 13-byte trailer:
//! a magic, the kind (audio/video) and the send time in µs since the tool started, so receivers
//! compute latency without clock sync (one process, one clock).
//!
//! `--target janus` runs the same participants against Janus VideoRoom instead (`janus.rs`), and
//! `--compare` prints reports of both side by side (scripts/bench-janus.sh does all of it).

mod baseline;
mod client;
mod compare;
mod janus;
mod report;
mod sched;
mod server;
mod timer;

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::Parser;

use crate::client::{Media, Shared};
use crate::janus::Janus;
use crate::report::Report;
use crate::server::{Server, ServerSample};

/// Which SFU the participants join.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// Switchboard: `/ws` signaling as in docs/protocol.md.
    Switchboard,
    /// Janus VideoRoom (1.x) through its HTTP REST API at --janus-url.
    Janus,
}

impl Target {
    pub fn name(self) -> &'static str {
        match self {
            Target::Switchboard => "switchboard",
            Target::Janus => "janus",
        }
    }
}

#[derive(Parser, Debug, Clone)]
#[command(name = "switchboard-load", version, about)]
pub struct Args {
    /// The SFU under load.
    #[arg(long, value_enum, default_value_t = Target::Switchboard)]
    target: Target,
    /// The server's HTTP address (loopback, or a private address such as the veth pair of
    /// scripts/bench-janus.sh).
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    server: String,
    /// Janus's REST API, e.g. http://10.77.0.1:8088/janus (with --target janus).
    #[arg(long)]
    janus_url: Option<String>,
    /// The address the clients' sockets bind (loopback, or a private address of a namespace).
    #[arg(long, default_value_t = IpAddr::V4(Ipv4Addr::LOCALHOST))]
    client_ip: IpAddr,
    /// Count forwarded packets as the packets the clients received, even when the server has a
    /// forwarded-packet counter: what the comparison with Janus (which has none) uses for both.
    #[arg(long)]
    count_received: bool,
    /// Print these JSON reports (of both targets, same configurations) side by side with the
    /// Janus/Switchboard ratio of CPU per forwarded packet, instead of running.
    #[arg(long, num_args = 1..)]
    compare: Vec<PathBuf>,
    /// The server's process id, for CPU time and RSS from /proc.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Start this server binary (e.g. target/release/switchboard) on free loopback ports instead
    /// of using --server; it is stopped at the end.
    #[arg(long)]
    spawn: Option<PathBuf>,
    /// Extra arguments for the spawned server (repeatable), e.g. `--server-arg=--media-workers=2`.
    #[arg(long = "server-arg", allow_hyphen_values = true)]
    server_args: Vec<String>,
    /// Rooms.
    #[arg(long, default_value_t = 1)]
    rooms: usize,
    /// Participants per room; each publishes audio and video and receives everyone else's.
    #[arg(long, default_value_t = 2)]
    participants: usize,
    /// Seconds measured, after every participant receives every other one's video.
    #[arg(long, default_value_t = 20)]
    duration: u64,
    /// Most seconds to wait for media to flow between every pair before measuring anyway.
    #[arg(long, default_value_t = 30)]
    warmup: u64,
    /// Video bit rate per publisher, kbit/s.
    #[arg(long, default_value_t = 1000)]
    video_kbps: u32,
    /// Video frames per second.
    #[arg(long, default_value_t = 30)]
    fps: u32,
    /// Seconds a keyframe (15 full packets) is sent every; publishers also answer PLIs.
    #[arg(long, default_value_t = 3)]
    keyframe_interval: u64,
    /// Video pacing rate as a multiple of --video-kbps, as libwebrtc paces at 2.5× its target
    /// rate; 0 sends each frame as one burst.
    #[arg(long, default_value_t = 2.5)]
    pacing: f64,
    /// Start every publisher's audio and video clocks at its join instead of at a random phase.
    /// With the default 100 ms between joins (three 30 fps frame intervals, five 20 ms audio
    /// intervals) every publisher then sends at the same instant: the worst case for queueing.
    #[arg(long)]
    aligned_clocks: bool,
    /// Time the publishers' sends with tokio's millisecond timer, as the tool did until
    /// 2026-11-22 (the git history of docs/performance.md): every packet due within the same
    /// millisecond then leaves in one burst. By default each publisher sends at its own
    /// instant, as independent machines do.
    #[arg(long)]
    tokio_timer: bool,
    /// Milliseconds between two joins in the same room.
    #[arg(long, default_value_t = 100)]
    join_stagger_ms: u64,
    /// Clients neither send NACKs nor answer them. When the load tool itself runs out of CPU,
    /// its receivers see loss and their NACKs make the server retransmit; this keeps that
    /// self-inflicted traffic out of the server's figures.
    #[arg(long)]
    no_nack: bool,
    /// Run the clients in the SCHED_IDLE class, so that the server under test is never
    /// preempted by them nor waits behind them, as when the clients are other machines: it
    /// then runs as each datagram arrives (less delay, and at 20 participants more CPU per
    /// packet than when it batches what queued while it waited; docs/performance.md). The raw
    /// baseline and a --spawn'ed server keep the normal class. Leaving SCHED_IDLE again needs
    /// CAP_SYS_NICE (root).
    #[arg(long)]
    sched_idle: bool,
    /// Keep the clients to these CPUs (e.g. `0` or `0,1`), as if they were on another machine
    /// that leaves the server's cores alone; the server this tool spawns and the raw baseline
    /// may run on every CPU the tool was started on (docs/performance.md).
    #[arg(long, value_delimiter = ',')]
    client_cpus: Vec<usize>,
    /// Seconds of the raw SRTP + sendmmsg baseline after the run (0: skip it).
    #[arg(long, default_value_t = 3.0)]
    baseline_secs: f64,
    /// Print the report as JSON on stdout instead of a table.
    #[arg(long)]
    json: bool,
    /// Also write the JSON report to this file (the table still goes to stdout).
    #[arg(long)]
    json_out: Option<PathBuf>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if !args.compare.is_empty() {
        return compare::run(&args.compare, args.json_out.as_deref());
    }
    if !server::allowed(args.client_ip) {
        bail!(
            "--client-ip {}: only loopback or private addresses",
            args.client_ip
        );
    }
    if args.participants < 1 || args.rooms < 1 {
        bail!("--rooms and --participants must be at least 1");
    }
    if args.sched_idle {
        // Before the runtime: its threads, and every thread the clients start, inherit it.
        sched::idle().context("--sched-idle")?;
    }
    if !args.client_cpus.is_empty() {
        // Likewise inherited by every thread of the runtime.
        sched::confine(&args.client_cpus).context("--client-cpus")?;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let report = runtime.block_on(run(&args))?;
    runtime.shutdown_timeout(Duration::from_secs(2));
    if let Some(path) = &args.json_out {
        std::fs::write(
            path,
            serde_json::to_string_pretty(&report.to_json())? + "\n",
        )
        .with_context(|| format!("write {}", path.display()))?;
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report.to_json())?);
    } else {
        print!("{}", report.table());
    }
    Ok(())
}

async fn run(args: &Args) -> anyhow::Result<Report> {
    let janus = match (args.target, &args.janus_url) {
        (Target::Janus, Some(url)) => Some(Janus::parse(url)?),
        (Target::Janus, None) => bail!("--target janus needs --janus-url"),
        (Target::Switchboard, _) => None,
    };
    let mut server = match (&janus, &args.spawn) {
        (Some(janus), _) => Server::attach_janus(janus.http, args.server_pid)?,
        (None, Some(bin)) => Server::spawn(bin, &args.server_args).await?,
        (None, None) => Server::attach(&args.server, args.server_pid)?,
    };
    let media = Media::new(
        args.video_kbps,
        args.fps,
        args.keyframe_interval,
        args.pacing,
        args.aligned_clocks,
        args.tokio_timer,
    );
    let shared = Arc::new(Shared::new(media, !args.no_nack, args.client_ip));
    let load_before = report::loadavg();
    let idle = server.sample().await?;
    let total = args.rooms * args.participants;
    eprintln!(
        "switchboard-load: {} room(s) × {} participant(s) against {} at {} (pid {})",
        args.rooms,
        args.participants,
        args.target.name(),
        server.http,
        server
            .pid
            .map_or_else(|| "unknown".to_owned(), |p| p.to_string()),
    );

    // Join: rooms in parallel, participants of one room one after another.
    let mut joins = Vec::new();
    for r in 0..args.rooms {
        let (shared, http, args) = (shared.clone(), server.http, args.clone());
        let janus = janus.clone();
        joins.push(tokio::spawn(async move {
            let mut out = Vec::new();
            let janus_room = match &janus {
                Some(j) => match j.create_room(args.participants).await {
                    Ok(room) => Some(room),
                    Err(err) => {
                        out.push(Err(err));
                        return out;
                    }
                },
                None => None,
            };
            let room = format!("load-{}-{r}", std::process::id());
            for p in 0..args.participants {
                let name = format!("r{r}p{p}");
                out.push(match (&janus, janus_room) {
                    (Some(j), Some(jr)) => janus::Participant::join(shared.clone(), j, jr, &name)
                        .await
                        .map(Participant::Janus),
                    _ => client::Participant::join(shared.clone(), http, &room, &name)
                        .await
                        .map(Participant::Switchboard),
                });
                tokio::time::sleep(Duration::from_millis(args.join_stagger_ms)).await;
            }
            out
        }));
    }
    let progress = {
        let shared = shared.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                eprintln!(
                    "  joined {}/{total}, video flowing on {} pair(s)",
                    shared.joined.load(Ordering::Relaxed),
                    shared.video_pairs_flowing(),
                );
            }
        })
    };
    let mut participants = Vec::new();
    for j in joins {
        for p in j.await? {
            participants.push(p.context("a participant failed to join")?);
        }
    }
    let pairs = args.rooms * args.participants * (args.participants - 1);
    let warm_deadline = Instant::now() + Duration::from_secs(args.warmup);
    while shared.video_pairs_flowing() < pairs && Instant::now() < warm_deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    progress.abort();
    let flowing = shared.video_pairs_flowing();
    if flowing < pairs {
        eprintln!("  warning: video flows on only {flowing} of {pairs} pairs; measuring anyway");
    }
    // Let the keyframe bursts of the joins pass.
    tokio::time::sleep(Duration::from_secs(1)).await;

    let before = server.sample().await?;
    let started = Instant::now();
    shared.measuring.store(true, Ordering::SeqCst);
    let sent_before = shared.sent_packets.load(Ordering::Relaxed);
    for s in 1..=args.duration {
        tokio::time::sleep_until((started + Duration::from_secs(s)).into()).await;
        eprintln!(
            "  measuring {s}/{} s: {} packets received by clients",
            args.duration,
            shared.received_packets.load(Ordering::Relaxed)
        );
    }
    shared.measuring.store(false, Ordering::SeqCst);
    let elapsed = started.elapsed();
    let after = server.sample().await?;
    let sent = shared.sent_packets.load(Ordering::Relaxed) - sent_before;

    eprintln!("  leaving");
    for p in &participants {
        p.stop().await;
    }
    drop(participants);
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.stop();

    let baseline = if args.baseline_secs > 0.0 {
        eprintln!("  raw baseline: SRTP-encrypt + sendmmsg of the same packets over loopback");
        let mix = shared.media.packet_mix();
        let secs = args.baseline_secs;
        Some(
            tokio::task::spawn_blocking(move || {
                // The baseline stands for a server: it runs in the server's class, on the
                // server's CPUs.
                sched::normal_if_idle().context("the raw baseline leaves SCHED_IDLE")?;
                sched::unconfined().context("the raw baseline leaves --client-cpus")?;
                baseline::measure(&mix, secs)
            })
            .await??,
        )
    } else {
        None
    };

    Ok(Report::build(
        args,
        &shared,
        &idle,
        &before,
        &after,
        elapsed,
        sent,
        flowing,
        pairs,
        baseline,
        load_before,
    ))
}

/// A participant of either front end.
enum Participant {
    Switchboard(client::Participant),
    Janus(janus::Participant),
}

impl Participant {
    async fn stop(&self) {
        match self {
            Participant::Switchboard(p) => p.stop().await,
            Participant::Janus(p) => p.stop().await,
        }
    }
}

/// What one run measured of the server between two samples.
pub fn delta(before: &ServerSample, after: &ServerSample, name: &str) -> Option<f64> {
    Some(after.metric(name)? - before.metric(name)?)
}
