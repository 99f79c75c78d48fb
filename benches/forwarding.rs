//! Micro-benchmarks of the forwarding path's pieces, and the raw baseline they are compared with.
//!
//! `cargo bench --bench forwarding` (add a filter, e.g. `-- baseline`, to run one group).
//!
//! Every benchmark reports time **per packet**:
//! - `munger/*`, `demux/*`, `keyframe/*`: the pure functions the worker calls for each packet;
//! - `leg/*`: one packet on one subscriber leg without the `rtc` stack: clone the packet (payload
//!   shared), rewrite its header with a `Munger`, marshal it, SRTP-encrypt it;
//! - `baseline/*`: "the physical limit": SRTP-encrypt (AES-128-GCM, as browsers and the `webrtc`
//!   crate negotiate) realistic packets and send them with `BatchSocket::send_batch` in batches of
//!   32 over loopback to a socket another thread drains. `baseline/cpu` is the sending thread's
//!   CPU time (`CLOCK_THREAD_CPUTIME_ID`), comparable with the server's CPU time per forwarded
//!   packet that `switchboard-load` reports; `baseline/wall` is elapsed time.
//!
//! The real media plane (a `Worker` with one publisher and N subscriber legs, no sockets) is
//! measured by the `media_plane` bench.

use std::hint::black_box;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use rtc::rtp::header::Header;
use rtc::rtp::packet::Packet;
use rtc::shared::marshal::Marshal;
use rtc::srtp::context::Context;
use rtc::srtp::protection_profile::ProtectionProfile;
use switchboard::media::demux::{classify, stun_binding_local_ufrag};
use switchboard::media::keyframe::{VideoCodec, is_keyframe};
use switchboard::media::munger::Munger;
use switchboard::media::net::{BATCH, BatchSocket, thread_cpu_time, wait};

/// Size on the wire of a full video packet of a ~1 Mbit/s VP8 stream (before SRTP's tag).
const VIDEO_PACKET: usize = 1100;

fn video_packet(seq: u16, ts: u32) -> Packet {
    let mut payload = vec![0xab; VIDEO_PACKET - 12 - 8];
    payload[..4].copy_from_slice(&[0x90, 0x80, 0x12, 0x34]); // VP8 descriptor with PictureID
    let mut header = Header {
        version: 2,
        marker: false,
        payload_type: 96,
        sequence_number: seq,
        timestamp: ts,
        ssrc: 0x1234_5678,
        ..Default::default()
    };
    // one one-byte extension (e.g. the remapped abs-send-time), 3 bytes + padding
    header
        .set_extension(2, Bytes::from_static(&[1, 2, 3]))
        .expect("id 2 fits the one-byte form");
    Packet {
        header,
        payload: Bytes::from(payload),
    }
}

fn srtp_context(profile: ProtectionProfile) -> Context {
    let provider = rtc::crypto::default_provider().expect("the ring provider is compiled in");
    let key = vec![7u8; profile.key_len()];
    let salt = vec![9u8; profile.salt_len()];
    Context::new(&key, &salt, profile, None, None, provider.crypto()).expect("valid key sizes")
}

fn binding_request() -> Vec<u8> {
    // A Binding request as browsers send it: USERNAME, ICE-CONTROLLING, PRIORITY, USE-CANDIDATE,
    // MESSAGE-INTEGRITY, FINGERPRINT (values are filler; only the layout matters here).
    let mut body = Vec::new();
    let mut attr = |typ: u16, value: &[u8]| {
        body.extend_from_slice(&typ.to_be_bytes());
        body.extend_from_slice(&(value.len() as u16).to_be_bytes());
        body.extend_from_slice(value);
        while body.len() % 4 != 0 {
            body.push(0);
        }
    };
    attr(0x0006, b"Sb7xQ2kLmNp4:aBcD");
    attr(0x802a, &[1; 8]);
    attr(0x0024, &[0x6e, 0x7f, 0x1e, 0xff]);
    attr(0x0025, &[]);
    attr(0x0008, &[5; 20]);
    attr(0x8028, &[6; 4]);
    let mut msg = vec![0x00, 0x01];
    msg.extend_from_slice(&(body.len() as u16).to_be_bytes());
    msg.extend_from_slice(&[0x21, 0x12, 0xa4, 0x42]);
    msg.extend_from_slice(&[3; 12]);
    msg.extend_from_slice(&body);
    msg
}

fn munger(c: &mut Criterion) {
    let mut g = c.benchmark_group("munger");
    g.throughput(Throughput::Elements(1));
    g.bench_function("rewrite", |b| {
        let mut m = Munger::new(42, 1000, 5000);
        let (mut seq, mut ts) = (30_000u16, 123_456u32);
        b.iter(|| {
            seq = seq.wrapping_add(1);
            ts = ts.wrapping_add(2970);
            black_box(m.rewrite(black_box(seq), black_box(ts)))
        })
    });
    g.finish();
}

fn demux(c: &mut Criterion) {
    let mut g = c.benchmark_group("demux");
    g.throughput(Throughput::Elements(1));
    let rtp = video_packet(1, 1).marshal().expect("marshal");
    g.bench_function("classify_rtp", |b| b.iter(|| classify(black_box(&rtp))));
    let stun = binding_request();
    assert_eq!(stun_binding_local_ufrag(&stun), Some("Sb7xQ2kLmNp4"));
    g.bench_function("stun_binding_local_ufrag", |b| {
        b.iter(|| stun_binding_local_ufrag(black_box(&stun)))
    });
    let payload = video_packet(1, 1).payload;
    g.bench_function("is_keyframe_vp8", |b| {
        b.iter(|| is_keyframe(VideoCodec::Vp8, black_box(&payload)))
    });
    g.finish();
}

/// One packet on one leg: the work an SFU cannot avoid per output packet, minus the I/O.
fn leg(c: &mut Criterion) {
    let mut g = c.benchmark_group("leg");
    g.throughput(Throughput::Elements(1));
    for (name, profile) in [
        ("aes128gcm", ProtectionProfile::AeadAes128Gcm),
        ("aes128cm_sha1_80", ProtectionProfile::Aes128CmHmacSha1_80),
    ] {
        let mut ctx = srtp_context(profile);
        let input = video_packet(30_000, 123_456);
        let mut m = Munger::new(42, 1000, 5000);
        let mut seq = 30_000u16;
        g.bench_function(BenchmarkId::new("rewrite_marshal_encrypt", name), |b| {
            b.iter(|| {
                seq = seq.wrapping_add(1);
                let mut p = input.clone();
                let r = m.rewrite(seq, p.header.timestamp);
                p.header.ssrc = r.ssrc;
                p.header.sequence_number = r.sequence_number;
                p.header.timestamp = r.timestamp;
                let plain = p.marshal().expect("marshal");
                black_box(
                    ctx.encrypt_rtp_with_header(&plain, &p.header)
                        .expect("encrypt"),
                )
            })
        });
        let plain = input.marshal().expect("marshal");
        g.bench_function(BenchmarkId::new("encrypt_only", name), |b| {
            let mut seq = 0u16;
            let mut header = input.header.clone();
            b.iter(|| {
                seq = seq.wrapping_add(1);
                header.sequence_number = seq;
                black_box(
                    ctx.encrypt_rtp_with_header(&plain, &header)
                        .expect("encrypt"),
                )
            })
        });
    }
    g.finish();
}

/// A socket on another thread that reads (and discards) everything sent to it.
struct Drain {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    received: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drain {
    fn start() -> Self {
        let mut socket = BatchSocket::bind("127.0.0.1:0".parse().expect("addr")).expect("bind");
        let addr = socket.local_addr().expect("local addr");
        let stop = Arc::new(AtomicBool::new(false));
        let received = Arc::new(AtomicU64::new(0));
        let (stop2, received2) = (stop.clone(), received.clone());
        let thread = std::thread::spawn(move || {
            while !stop2.load(Ordering::Relaxed) {
                wait(
                    [socket.raw_fd(), socket.raw_fd()],
                    Some(Duration::from_millis(20)),
                );
                while let Ok(n) = socket.recv_batch(|_, _| {})
                    && n > 0
                {
                    received2.fetch_add(n as u64, Ordering::Relaxed);
                }
            }
        });
        Self {
            addr,
            stop,
            received,
            thread: Some(thread),
        }
    }
}

impl Drop for Drain {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// SRTP-encrypt + `send_batch` of `BATCH` packets at a time; one criterion iteration is one
/// packet. `cpu` selects the sending thread's CPU time over wall time.
fn baseline(c: &mut Criterion) {
    let mut g = c.benchmark_group("baseline");
    g.throughput(Throughput::Elements(1));
    g.measurement_time(Duration::from_secs(5));
    let drain = Drain::start();
    let sender = BatchSocket::bind("127.0.0.1:0".parse().expect("addr")).expect("bind");
    let mut ctx = srtp_context(ProtectionProfile::AeadAes128Gcm);
    let template = video_packet(0, 0);
    let mut seq = 0u16;
    let refused = AtomicU64::new(0);
    let sent = AtomicU64::new(0);
    let mut run = |iters: u64, cpu: bool| -> Duration {
        let batches = iters.div_ceil(BATCH as u64).max(1);
        let mut header = template.header.clone();
        let plain = template.marshal().expect("marshal");
        let mut out: Vec<(SocketAddr, BytesMut)> = Vec::with_capacity(BATCH);
        let (wall0, cpu0) = (Instant::now(), thread_cpu_time());
        for _ in 0..batches {
            out.clear();
            for _ in 0..BATCH {
                seq = seq.wrapping_add(1);
                header.sequence_number = seq;
                // the sequence number lives in the plaintext too: rewrite it as a leg would
                let mut p = BytesMut::from(&plain[..]);
                p[2..4].copy_from_slice(&seq.to_be_bytes());
                let enc = ctx.encrypt_rtp_with_header(&p, &header).expect("encrypt");
                out.push((drain.addr, enc));
            }
            refused.fetch_add(sender.send_batch(&out) as u64, Ordering::Relaxed);
            sent.fetch_add(BATCH as u64, Ordering::Relaxed);
        }
        let elapsed = if cpu {
            thread_cpu_time() - cpu0
        } else {
            wall0.elapsed()
        };
        // scale to exactly `iters` packets
        elapsed.mul_f64(iters as f64 / (batches * BATCH as u64) as f64)
    };
    g.bench_function("cpu", |b| b.iter_custom(|iters| run(iters, true)));
    g.bench_function("wall", |b| b.iter_custom(|iters| run(iters, false)));
    g.finish();
    std::thread::sleep(Duration::from_millis(100));
    let (sent, refused) = (sent.into_inner(), refused.into_inner());
    eprintln!(
        "baseline: {sent} packets of {} bytes sent in batches of {BATCH}, {refused} refused by a full buffer, {} read by the drain",
        VIDEO_PACKET + 16,
        drain.received.load(Ordering::Relaxed)
    );
}

criterion_group!(benches, munger, demux, leg, baseline);
criterion_main!(benches);
