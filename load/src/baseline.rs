//! The raw baseline: what one thread spends to SRTP-encrypt (AES-128-GCM) a packet and send it
//! with `sendmmsg` in batches of 32 over loopback to a socket another thread drains: the least
//! CPU any SFU can spend per forwarded packet on this machine (it has to do at least this).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::BytesMut;
use rtc::shared::marshal::Marshal;
use rtc::srtp::context::Context;
use rtc::srtp::protection_profile::ProtectionProfile;
use switchboard::media::net::{BATCH, BatchSocket, thread_cpu_time, wait};

#[derive(Debug, Clone, Copy)]
pub struct Baseline {
    /// CPU time of the sending thread per packet, ns.
    pub cpu_ns_per_packet: f64,
    /// Elapsed time per packet, ns.
    pub wall_ns_per_packet: f64,
    pub packets: u64,
    pub refused: u64,
    pub average_bytes: f64,
}

/// Sends packets of the sizes in `mix` (RTP size before SRTP, share of packets) for `secs`.
pub fn measure(mix: &[(usize, f64)], secs: f64) -> anyhow::Result<Baseline> {
    // One cycle of 100 packets in the mix's proportions, sizes interleaved.
    let mut cycle: Vec<usize> = Vec::new();
    for &(size, share) in mix {
        cycle.extend(std::iter::repeat_n(size, (share * 100.0).round() as usize));
    }
    if cycle.is_empty() {
        cycle.push(1100);
    }
    let stride = 37 % cycle.len().max(1);
    let cycle: Vec<usize> = (0..cycle.len())
        .map(|i| cycle[(i * stride.max(1)) % cycle.len()])
        .collect();
    let templates: Vec<(rtc::rtp::header::Header, BytesMut)> = cycle
        .iter()
        .map(|&size| {
            let header = rtc::rtp::header::Header {
                version: 2,
                payload_type: 96,
                ssrc: 0x5eed_0001,
                ..Default::default()
            };
            let mut packet = BytesMut::from(&header.marshal()?[..]);
            packet.resize(size.max(13), 0xab);
            Ok((header, packet))
        })
        .collect::<anyhow::Result<_>>()?;

    let mut drain = BatchSocket::bind("127.0.0.1:0".parse()?)?;
    let to: SocketAddr = drain.local_addr()?;
    let stop = Arc::new(AtomicBool::new(false));
    let received = Arc::new(AtomicU64::new(0));
    let drainer = {
        let (stop, received) = (stop.clone(), received.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                wait(
                    [drain.raw_fd(), drain.raw_fd()],
                    Some(Duration::from_millis(20)),
                );
                while let Ok(n) = drain.recv_batch(|_, _| {})
                    && n > 0
                {
                    received.fetch_add(n as u64, Ordering::Relaxed);
                }
            }
        })
    };

    let provider = rtc::crypto::default_provider().context("crypto provider")?;
    let profile = ProtectionProfile::AeadAes128Gcm;
    let mut ctx = Context::new(
        &vec![7u8; profile.key_len()],
        &vec![9u8; profile.salt_len()],
        profile,
        None,
        None,
        provider.crypto(),
    )?;
    let sender = BatchSocket::bind("127.0.0.1:0".parse()?)?;
    let mut out: Vec<(SocketAddr, BytesMut)> = Vec::with_capacity(BATCH);
    let (mut seq, mut next, mut packets, mut refused, mut bytes) = (0u16, 0usize, 0u64, 0u64, 0u64);
    let deadline = Duration::from_secs_f64(secs);
    let (wall0, cpu0) = (Instant::now(), thread_cpu_time());
    while wall0.elapsed() < deadline {
        out.clear();
        for _ in 0..BATCH {
            let (header, plain) = &templates[next];
            next = (next + 1) % templates.len();
            seq = seq.wrapping_add(1);
            let mut header = header.clone();
            header.sequence_number = seq;
            let mut p = plain.clone();
            p[2..4].copy_from_slice(&seq.to_be_bytes());
            let enc = ctx.encrypt_rtp_with_header(&p, &header)?;
            bytes += enc.len() as u64;
            out.push((to, enc));
        }
        refused += sender.send_batch(&out) as u64;
        packets += BATCH as u64;
    }
    let (cpu, wall) = (thread_cpu_time() - cpu0, wall0.elapsed());
    std::thread::sleep(Duration::from_millis(50));
    stop.store(true, Ordering::Relaxed);
    let _ = drainer.join();
    Ok(Baseline {
        cpu_ns_per_packet: cpu.as_nanos() as f64 / packets as f64,
        wall_ns_per_packet: wall.as_nanos() as f64 / packets as f64,
        packets,
        refused,
        average_bytes: bytes as f64 / packets as f64,
    })
}
