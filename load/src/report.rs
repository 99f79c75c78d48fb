//! The run's figures: built from the server samples and what the clients measured.

use std::fmt::Write;
use std::time::Duration;

use serde_json::{Value, json};

use crate::baseline::Baseline;
use crate::client::Shared;
use crate::server::ServerSample;
use crate::{Args, delta};

#[derive(Debug, Default)]
pub struct Report {
    pub target: &'static str,
    pub rooms: usize,
    pub participants_per_room: usize,
    /// Video pacing as a multiple of the video rate (0: none), and whether the publishers'
    /// media clocks were aligned.
    pub pacing: f64,
    pub aligned_clocks: bool,
    /// Send times on tokio's millisecond ticks rather than each publisher's own instants.
    pub tokio_timer: bool,
    /// The clients ran in the SCHED_IDLE class (`--sched-idle`).
    pub sched_idle: bool,
    /// `--client-cpus` (empty: all).
    pub client_cpus: Vec<usize>,
    pub duration_s: f64,
    pub video_pairs_flowing: usize,
    pub video_pairs: usize,
    pub client_sent_pps: f64,
    pub client_received_pps: f64,
    pub server_rtp_in_pps: Option<f64>,
    pub server_forwarded_pps: Option<f64>,
    pub server_datagrams_in_pps: Option<f64>,
    pub server_datagrams_out_pps: Option<f64>,
    pub server_cpu_s: Option<f64>,
    pub server_cpu_util: Option<f64>,
    /// CPU per forwarded packet; the count from /metrics, else from the clients.
    pub cpu_ns_per_forwarded: Option<f64>,
    pub forwarded_count_source: &'static str,
    pub rss_kib: Option<u64>,
    pub rss_idle_kib: Option<u64>,
    pub rss_kib_per_participant: Option<f64>,
    pub latency_p50_ms: Option<f64>,
    pub latency_p99_ms: Option<f64>,
    pub latency_max_ms: Option<f64>,
    /// What the server added, from its `switchboard_forwarding_delay_seconds` histogram over
    /// the window (kernel receive timestamp to the send of the copies), interpolated within
    /// its buckets.
    pub server_delay_p50_ms: Option<f64>,
    pub server_delay_p99_ms: Option<f64>,
    pub loss_pct: Option<f64>,
    pub first_frame_p50_ms: Option<f64>,
    pub first_frame_max_ms: Option<f64>,
    pub join_p50_ms: Option<f64>,
    pub baseline: Option<Baseline>,
    /// CPU of this load tool (its clients), share of one core.
    pub load_tool_cpu_util: Option<f64>,
    /// Datagrams the kernel dropped for full receive buffers (any socket) while measuring.
    pub udp_rcvbuf_errors: Option<u64>,
    /// Packets per second arriving on the clients' non-loopback interfaces, and the server's CPU
    /// per such packet; only when the clients use a private address (a namespace of their own).
    pub client_net_rx_pps: Option<f64>,
    pub cpu_ns_per_client_net_rx: Option<f64>,
    pub load_before: String,
    pub load_after: String,
}

/// The cumulative buckets (upper bound in seconds, count) of a Prometheus histogram's growth
/// between two samples, in order of bound; `+Inf` last.
fn histogram_delta(before: &ServerSample, after: &ServerSample, name: &str) -> Vec<(f64, f64)> {
    let prefix = format!("{name}_bucket{{le=\"");
    let mut buckets: Vec<(f64, f64)> = after
        .metrics
        .keys()
        .filter_map(|key| {
            let bound = key.strip_prefix(&prefix)?.strip_suffix("\"}")?;
            let bound = if bound == "+Inf" {
                f64::INFINITY
            } else {
                bound.parse().ok()?
            };
            Some((bound, delta(before, after, key)?))
        })
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    buckets
}

/// The `q` quantile of a cumulative histogram, linear within the bucket it falls in (as
/// Prometheus's `histogram_quantile`); `None` if empty or if it falls in the `+Inf` bucket.
fn histogram_quantile(buckets: &[(f64, f64)], q: f64) -> Option<f64> {
    let total = buckets.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let (mut lower, mut below) = (0.0, 0.0);
    for &(bound, count) in buckets {
        if count >= rank {
            if bound.is_infinite() {
                return None;
            }
            let within = count - below;
            let share = if within > 0.0 {
                (rank - below) / within
            } else {
                1.0
            };
            return Some(lower + (bound - lower) * share);
        }
        (lower, below) = (bound, count);
    }
    None
}

fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted.get(i).copied()
}

pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

impl Report {
    #[allow(clippy::too_many_arguments)]
    pub fn build(
        args: &Args,
        shared: &Shared,
        idle: &ServerSample,
        before: &ServerSample,
        after: &ServerSample,
        elapsed: Duration,
        sent: u64,
        flowing: usize,
        pairs: usize,
        baseline: Option<Baseline>,
        load_before: String,
    ) -> Self {
        let secs = elapsed.as_secs_f64();
        let per_s = |name: &str| delta(before, after, name).map(|d| d / secs);
        let mut r = Report {
            target: args.target.name(),
            rooms: args.rooms,
            participants_per_room: args.participants,
            pacing: args.pacing,
            aligned_clocks: args.aligned_clocks,
            tokio_timer: args.tokio_timer,
            sched_idle: args.sched_idle,
            client_cpus: args.client_cpus.clone(),
            duration_s: secs,
            video_pairs_flowing: flowing,
            video_pairs: pairs,
            client_sent_pps: sent as f64 / secs,
            server_rtp_in_pps: per_s("switchboard_rtp_in_total"),
            server_forwarded_pps: per_s("switchboard_rtp_forwarded_total"),
            server_datagrams_in_pps: per_s("switchboard_datagrams_in_total"),
            server_datagrams_out_pps: per_s("switchboard_datagrams_out_total"),
            baseline,
            load_before,
            load_after: loadavg(),
            ..Default::default()
        };

        if let (Some(a), Some(b)) = (after.own_cpu_secs, before.own_cpu_secs) {
            r.load_tool_cpu_util = Some((a - b) / secs);
        }
        if let (Some(a), Some(b)) = (after.udp_rcvbuf_errors, before.udp_rcvbuf_errors) {
            r.udp_rcvbuf_errors = Some(a.saturating_sub(b));
        }
        let tracks = shared.tracks.lock().unwrap_or_else(|e| e.into_inner());
        let publish_started = shared
            .publish_started
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let (mut latencies, mut first_frames) = (Vec::new(), Vec::new());
        let (mut measured, mut expected) = (0u64, 0u64);
        for t in tracks.iter() {
            let t = t.lock().unwrap_or_else(|e| e.into_inner());
            latencies.extend(t.latencies_us.iter().map(|&l| f64::from(l) / 1000.0));
            measured += t.measured;
            if let Some(first) = t.first_seq {
                expected += t.highest_seq - first + 1;
            }
            if t.video
                && let (Some(first), Some(join)) = (t.first_packet, t.subscriber_join)
            {
                // from when both ends were there: the later of the subscriber's join and the
                // publisher's publish
                let start = publish_started
                    .get(&t.publisher)
                    .map_or(join, |&p| p.max(join));
                first_frames.push(first.saturating_duration_since(start).as_secs_f64() * 1e3);
            }
        }
        latencies.sort_by(f64::total_cmp);
        first_frames.sort_by(f64::total_cmp);
        r.client_received_pps = measured as f64 / secs;
        r.latency_p50_ms = percentile(&latencies, 0.5);
        r.latency_p99_ms = percentile(&latencies, 0.99);
        r.latency_max_ms = latencies.last().copied();
        r.loss_pct = (expected > 0)
            .then(|| 100.0 * expected.saturating_sub(measured) as f64 / expected as f64);
        r.first_frame_p50_ms = percentile(&first_frames, 0.5);
        r.first_frame_max_ms = first_frames.last().copied();
        let mut joins: Vec<f64> = shared
            .join_times
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|d| d.as_secs_f64() * 1e3)
            .collect();
        joins.sort_by(f64::total_cmp);
        r.join_p50_ms = percentile(&joins, 0.5);

        if !args.client_ip.is_loopback()
            && let (Some(a), Some(b)) = (after.net_rx_packets, before.net_rx_packets)
        {
            r.client_net_rx_pps = Some(a.saturating_sub(b) as f64 / secs);
        }
        if let (Some(a), Some(b)) = (after.cpu_secs, before.cpu_secs) {
            let cpu = a - b;
            r.cpu_ns_per_client_net_rx = r
                .client_net_rx_pps
                .filter(|&pps| pps > 0.0)
                .map(|pps| cpu * 1e9 / (pps * secs));
            r.server_cpu_s = Some(cpu);
            r.server_cpu_util = Some(cpu / secs);
            let from_metrics = delta(before, after, "switchboard_rtp_forwarded_total")
                .filter(|_| !args.count_received);
            let forwarded = match from_metrics {
                Some(f) => {
                    r.forwarded_count_source = "server /metrics rtp_forwarded_total";
                    f
                }
                None => {
                    r.forwarded_count_source = "packets the clients received";
                    measured as f64
                }
            };
            r.cpu_ns_per_forwarded = (forwarded > 0.0).then(|| cpu * 1e9 / forwarded);
        }
        let delays = histogram_delta(before, after, "switchboard_forwarding_delay_seconds");
        r.server_delay_p50_ms = histogram_quantile(&delays, 0.5).map(|s| s * 1e3);
        r.server_delay_p99_ms = histogram_quantile(&delays, 0.99).map(|s| s * 1e3);
        let participants = (args.rooms * args.participants) as f64;
        r.rss_kib = after.rss_kib;
        r.rss_idle_kib = idle.rss_kib;
        if let (Some(a), Some(i)) = (after.rss_kib, idle.rss_kib) {
            r.rss_kib_per_participant = Some(a.saturating_sub(i) as f64 / participants);
        }
        r
    }

    fn ratio(&self) -> Option<f64> {
        Some(self.cpu_ns_per_forwarded? / self.baseline?.cpu_ns_per_packet)
    }

    pub fn to_json(&self) -> Value {
        json!({
            "target": self.target,
            "rooms": self.rooms,
            "participants_per_room": self.participants_per_room,
            "pacing": self.pacing,
            "aligned_clocks": self.aligned_clocks,
            "tokio_timer": self.tokio_timer,
            "sched_idle": self.sched_idle,
            "client_cpus": self.client_cpus,
            "duration_s": self.duration_s,
            "video_pairs_flowing": self.video_pairs_flowing,
            "video_pairs": self.video_pairs,
            "client_sent_pps": self.client_sent_pps,
            "client_received_pps": self.client_received_pps,
            "server_rtp_in_pps": self.server_rtp_in_pps,
            "server_forwarded_pps": self.server_forwarded_pps,
            "server_datagrams_in_pps": self.server_datagrams_in_pps,
            "server_datagrams_out_pps": self.server_datagrams_out_pps,
            "server_cpu_s": self.server_cpu_s,
            "server_cpu_util": self.server_cpu_util,
            "server_cpu_ns_per_forwarded_packet": self.cpu_ns_per_forwarded,
            "forwarded_count_source": self.forwarded_count_source,
            "server_rss_kib": self.rss_kib,
            "server_rss_idle_kib": self.rss_idle_kib,
            "server_rss_kib_per_participant": self.rss_kib_per_participant,
            "latency_p50_ms": self.latency_p50_ms,
            "latency_p99_ms": self.latency_p99_ms,
            "latency_max_ms": self.latency_max_ms,
            "server_delay_p50_ms": self.server_delay_p50_ms,
            "server_delay_p99_ms": self.server_delay_p99_ms,
            "loss_pct": self.loss_pct,
            "first_frame_p50_ms": self.first_frame_p50_ms,
            "first_frame_max_ms": self.first_frame_max_ms,
            "join_signaling_p50_ms": self.join_p50_ms,
            "baseline": self.baseline.map(|b| json!({
                "cpu_ns_per_packet": b.cpu_ns_per_packet,
                "wall_ns_per_packet": b.wall_ns_per_packet,
                "packets": b.packets,
                "refused": b.refused,
                "average_bytes": b.average_bytes,
            })),
            "ratio_to_baseline": self.ratio(),
            "load_tool_cpu_util": self.load_tool_cpu_util,
            "udp_rcvbuf_errors": self.udp_rcvbuf_errors,
            "client_net_rx_pps": self.client_net_rx_pps,
            "server_cpu_ns_per_client_net_rx_packet": self.cpu_ns_per_client_net_rx,
            "loadavg_before": self.load_before,
            "loadavg_after": self.load_after,
        })
    }

    pub fn table(&self) -> String {
        fn f(v: Option<f64>, digits: usize) -> String {
            v.map_or_else(|| "n/a".to_owned(), |v| format!("{v:.digits$}"))
        }
        let mut s = String::new();
        let mut row = |k: &str, v: String| {
            let _ = writeln!(s, "{k:<44} {v}");
        };
        row("target", self.target.to_owned());
        row(
            "rooms × participants",
            format!("{} × {}", self.rooms, self.participants_per_room),
        );
        row(
            "publishers' pacing, clocks",
            format!(
                "{}, {}, {}",
                if self.pacing > 0.0 {
                    format!("{}× the video rate", self.pacing)
                } else {
                    "none (frame bursts)".to_owned()
                },
                if self.aligned_clocks {
                    "aligned"
                } else {
                    "random phase"
                },
                if self.tokio_timer {
                    "sends on tokio's 1 ms ticks"
                } else {
                    "own send instants"
                },
            ),
        );
        row(
            "clients' scheduling class",
            if self.sched_idle {
                "SCHED_IDLE (the server always runs first)"
            } else {
                "normal (shares the cores with the server)"
            }
            .to_owned(),
        );
        row(
            "clients' CPUs",
            if self.client_cpus.is_empty() {
                "all (the server's too)".to_owned()
            } else {
                let list: Vec<String> = self.client_cpus.iter().map(|c| c.to_string()).collect();
                format!("{} only (the server and the baseline: all)", list.join(","))
            },
        );
        row("measured for (s)", format!("{:.1}", self.duration_s));
        row(
            "video pairs flowing / expected",
            format!("{} / {}", self.video_pairs_flowing, self.video_pairs),
        );
        row(
            "client packets sent /s",
            format!("{:.0}", self.client_sent_pps),
        );
        row(
            "client packets received /s",
            format!("{:.0}", self.client_received_pps),
        );
        row("server RTP in /s", f(self.server_rtp_in_pps, 0));
        row("server RTP forwarded /s", f(self.server_forwarded_pps, 0));
        row("server datagrams in /s", f(self.server_datagrams_in_pps, 0));
        row(
            "server datagrams out /s",
            f(self.server_datagrams_out_pps, 0),
        );
        row(
            "server CPU (s, share of one core)",
            format!(
                "{} ({})",
                f(self.server_cpu_s, 2),
                f(self.server_cpu_util, 3)
            ),
        );
        row(
            "server CPU per forwarded packet (ns)",
            format!(
                "{}  [count: {}]",
                f(self.cpu_ns_per_forwarded, 0),
                self.forwarded_count_source
            ),
        );
        if let Some(b) = self.baseline {
            row(
                "raw baseline SRTP+sendmmsg CPU/packet (ns)",
                format!(
                    "{:.0}  ({} packets, avg {:.0} B, {} refused)",
                    b.cpu_ns_per_packet, b.packets, b.average_bytes, b.refused
                ),
            );
        }
        row("ratio to the raw baseline", f(self.ratio(), 2));
        if self.client_net_rx_pps.is_some() {
            row(
                "packets into the clients' interface /s",
                f(self.client_net_rx_pps, 0),
            );
            row(
                "server CPU per such packet (ns)",
                f(self.cpu_ns_per_client_net_rx, 0),
            );
        }
        row(
            "server RSS (KiB; idle)",
            format!(
                "{} ({})",
                self.rss_kib.map_or("n/a".into(), |v| v.to_string()),
                self.rss_idle_kib.map_or("n/a".into(), |v| v.to_string())
            ),
        );
        row(
            "server RSS per participant over idle (KiB)",
            f(self.rss_kib_per_participant, 0),
        );
        row(
            "end-to-end latency p50 / p99 / max (ms)",
            format!(
                "{} / {} / {}",
                f(self.latency_p50_ms, 2),
                f(self.latency_p99_ms, 2),
                f(self.latency_max_ms, 1)
            ),
        );
        row(
            "server-added delay p50 / p99 (ms)",
            format!(
                "{} / {}",
                f(self.server_delay_p50_ms, 3),
                f(self.server_delay_p99_ms, 3)
            ),
        );
        row("loss (%)", f(self.loss_pct, 3));
        row(
            "join to first video frame p50 / max (ms)",
            format!(
                "{} / {}",
                f(self.first_frame_p50_ms, 0),
                f(self.first_frame_max_ms, 0)
            ),
        );
        row("signaling join p50 (ms)", f(self.join_p50_ms, 0));
        row(
            "load tool CPU (share of one core)",
            f(self.load_tool_cpu_util, 3),
        );
        row(
            "UDP receive-buffer drops, whole machine",
            self.udp_rcvbuf_errors
                .map_or("n/a".into(), |v| v.to_string()),
        );
        row(
            "load average before / after",
            format!("{} / {}", self.load_before, self.load_after),
        );
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantile_interpolates_within_the_bucket() {
        // 100 observations: 50 up to 0.1 ms, 40 more up to 0.2 ms, 10 up to 1 ms.
        let b = [
            (0.0001, 50.0),
            (0.0002, 90.0),
            (0.001, 100.0),
            (f64::INFINITY, 100.0),
        ];
        assert!((histogram_quantile(&b, 0.5).unwrap() - 0.0001).abs() < 1e-12);
        assert!((histogram_quantile(&b, 0.7).unwrap() - 0.00015).abs() < 1e-12);
        assert!((histogram_quantile(&b, 0.99).unwrap() - 0.00092).abs() < 1e-12);
        assert_eq!(histogram_quantile(&[(f64::INFINITY, 0.0)], 0.5), None);
        assert_eq!(
            histogram_quantile(&[(0.001, 1.0), (f64::INFINITY, 10.0)], 0.99),
            None
        );
    }
}
