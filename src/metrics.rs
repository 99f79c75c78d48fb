//! Operational metrics: `/metrics` in the Prometheus text format (version 0.0.4), written by hand.
//!
//! Two sources: the media workers' `WorkerStats` (asked for at scrape time, summed over the
//! workers) and the control plane's own counters here (`Metrics`: HTTP requests by route and
//! status, WebSocket connections open). Every metric name starts with `switchboard_`.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;

use crate::media::stats::{Drop, LATENCY_BUCKETS_US, LatencyHistogram, WorkerStats};

/// The `Content-Type` of the text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Route label of requests no route matched (the static web client and 404s), so that
/// arbitrary paths never become label values.
pub const OTHER_ROUTE: &str = "other";

/// Counters the control plane keeps itself.
#[derive(Debug, Default)]
pub struct Metrics {
    /// (route, method, status) → requests answered.
    http_requests: Mutex<BTreeMap<(String, String, u16), u64>>,
    ws_open: AtomicI64,
    ws_total: AtomicU64,
    /// Media events the call-record consumer could not write.
    events_lost: AtomicU64,
    /// HTTP connections: open, refused, closed by the server (`serve`).
    pub connections: crate::serve::ConnStats,
}

impl Metrics {
    pub fn record_request(&self, route: &str, method: &str, status: u16) {
        // A poisoned lock only means another request panicked mid-increment; the map is intact.
        let mut map = self.http_requests.lock().unwrap_or_else(|e| e.into_inner());
        *map.entry((route.to_owned(), method.to_owned(), status))
            .or_default() += 1;
    }

    /// Counts a WebSocket connection as open until the returned guard is dropped.
    pub fn ws_opened(self: &std::sync::Arc<Self>) -> WsGuard {
        self.ws_open.fetch_add(1, Ordering::Relaxed);
        self.ws_total.fetch_add(1, Ordering::Relaxed);
        WsGuard(self.clone())
    }

    /// Counts media events the call records lost (the consumer could not write them).
    pub fn events_lost(&self, n: u64) {
        self.events_lost.fetch_add(n, Ordering::Relaxed);
    }

    pub fn ws_open(&self) -> i64 {
        self.ws_open.load(Ordering::Relaxed)
    }

    /// The whole exposition: the workers' stats summed, then the control plane's counters.
    /// `workers_up` is how many workers answered out of `workers_total`.
    pub fn render(
        &self,
        stats: &[WorkerStats],
        workers_total: usize,
        store_writes: &LatencyHistogram,
    ) -> String {
        let mut sum = WorkerStats::default();
        for s in stats {
            sum.rooms += s.rooms;
            sum.participants += s.participants;
            sum.tracks += s.tracks;
            sum.datagrams_in += s.datagrams_in;
            sum.bytes_in += s.bytes_in;
            sum.datagrams_out += s.datagrams_out;
            sum.bytes_out += s.bytes_out;
            sum.rtp_in += s.rtp_in;
            sum.rtp_forwarded += s.rtp_forwarded;
            sum.keyframe_requests_in += s.keyframe_requests_in;
            sum.keyframe_requests_out += s.keyframe_requests_out;
            sum.nacks_in += s.nacks_in;
            sum.retransmissions += s.retransmissions;
            sum.retransmissions_missed += s.retransmissions_missed;
            sum.events_lost += s.events_lost;
            sum.turn_time.merge(&s.turn_time);
            sum.forwarding_delay.merge(&s.forwarding_delay);
            for (total, n) in sum.drops.iter_mut().zip(s.drops) {
                *total += n;
            }
            sum.panics += s.panics;
            sum.candidates_ignored_mdns += s.candidates_ignored_mdns;
            sum.candidates_ignored_over_limit += s.candidates_ignored_over_limit;
            sum.tracks_refused += s.tracks_refused;
        }

        let mut out = String::new();
        let gauges: [(&str, &str, u64); 5] = [
            (
                "media_workers",
                "Media worker threads configured.",
                workers_total as u64,
            ),
            (
                "media_workers_up",
                "Media workers that answered this scrape.",
                stats.len() as u64,
            ),
            ("rooms", "Rooms open.", sum.rooms as u64),
            (
                "participants",
                "Participants in rooms.",
                sum.participants as u64,
            ),
            ("tracks", "Published tracks.", sum.tracks as u64),
        ];
        for (name, help, value) in gauges {
            family(&mut out, name, "gauge", help);
            let _ = writeln!(out, "switchboard_{name} {value}");
        }
        let counters: [(&str, &str, u64); 12] = [
            (
                "events_lost_total",
                "Media events (joins, leaves, media state, room closes) that did not reach the \
                 call records: the event queue was full, or the write failed.",
                sum.events_lost + self.events_lost.load(Ordering::Relaxed),
            ),
            (
                "nacks_in_total",
                "NACKs received from subscribers, answered from each video track's history.",
                sum.nacks_in,
            ),
            (
                "retransmissions_total",
                "RTP packets sent again because a subscriber NACKed them.",
                sum.retransmissions,
            ),
            (
                "retransmissions_missed_total",
                "NACKed packets no longer in the track's history (1024 packets).",
                sum.retransmissions_missed,
            ),
            (
                "datagrams_in_total",
                "UDP datagrams received on the media ports.",
                sum.datagrams_in,
            ),
            (
                "bytes_in_total",
                "Bytes received on the media ports.",
                sum.bytes_in,
            ),
            (
                "datagrams_out_total",
                "UDP datagrams sent from the media ports.",
                sum.datagrams_out,
            ),
            (
                "bytes_out_total",
                "Bytes sent from the media ports.",
                sum.bytes_out,
            ),
            (
                "rtp_in_total",
                "RTP packets received from publishers.",
                sum.rtp_in,
            ),
            (
                "rtp_forwarded_total",
                "RTP packets forwarded to subscribers (one per subscriber).",
                sum.rtp_forwarded,
            ),
            (
                "keyframe_requests_in_total",
                "PLI/FIR received from subscribers.",
                sum.keyframe_requests_in,
            ),
            (
                "keyframe_requests_out_total",
                "Keyframe requests sent to publishers.",
                sum.keyframe_requests_out,
            ),
        ];
        for (name, help, value) in counters {
            family(&mut out, name, "counter", help);
            let _ = writeln!(out, "switchboard_{name} {value}");
        }
        histogram(
            &mut out,
            "forwarding_turn_seconds",
            "Time of media-loop turns that handled datagrams: read a batch, forward, send.",
            &sum.turn_time,
        );
        histogram(
            &mut out,
            "forwarding_delay_seconds",
            "Per forwarded RTP packet: from the kernel's receipt (SO_TIMESTAMPNS) to the send of \
             its copies to every subscriber. What the server adds to a packet's trip.",
            &sum.forwarding_delay,
        );
        histogram(
            &mut out,
            "store_write_seconds",
            "Time of durable call-record writes (transaction and flush to disk).",
            store_writes,
        );
        family(
            &mut out,
            "dropped_total",
            "counter",
            "Datagrams or packets not forwarded, by reason.",
        );
        for reason in Drop::ALL {
            let _ = writeln!(
                out,
                "switchboard_dropped_total{{reason=\"{}\"}} {}",
                reason.as_str(),
                sum.dropped(reason)
            );
        }

        // Media-plane limits and panic containment (issue 21).
        family(
            &mut out,
            "panics_total",
            "counter",
            "Panics caught in the media workers; each removed the participant or room it \
             happened for, and the worker went on.",
        );
        let _ = writeln!(out, "switchboard_panics_total {}", sum.panics);
        family(
            &mut out,
            "remote_candidates_ignored_total",
            "counter",
            "Remote ICE candidates not used, by reason: mdns (.local, never resolved) or \
             over_limit (past --max-remote-candidates per connection, or unreadable).",
        );
        for (reason, n) in [
            ("mdns", sum.candidates_ignored_mdns),
            ("over_limit", sum.candidates_ignored_over_limit),
        ] {
            let _ = writeln!(
                out,
                "switchboard_remote_candidates_ignored_total{{reason=\"{reason}\"}} {n}"
            );
        }
        family(
            &mut out,
            "tracks_refused_total",
            "counter",
            "Tracks not opened because their publisher already publishes 8.",
        );
        let _ = writeln!(
            out,
            "switchboard_tracks_refused_total {}",
            sum.tracks_refused
        );

        family(
            &mut out,
            "http_requests_total",
            "counter",
            "HTTP requests answered, by route, method and status.",
        );
        {
            let map = self.http_requests.lock().unwrap_or_else(|e| e.into_inner());
            for ((route, method, status), n) in map.iter() {
                let _ = writeln!(
                    out,
                    "switchboard_http_requests_total{{route=\"{}\",method=\"{}\",status=\"{status}\"}} {n}",
                    escape(route),
                    escape(method),
                );
            }
        }
        family(
            &mut out,
            "websocket_connections",
            "gauge",
            "WebSocket signaling connections open.",
        );
        let _ = writeln!(out, "switchboard_websocket_connections {}", self.ws_open());
        family(
            &mut out,
            "websocket_connections_total",
            "counter",
            "WebSocket signaling connections accepted.",
        );
        let _ = writeln!(
            out,
            "switchboard_websocket_connections_total {}",
            self.ws_total.load(Ordering::Relaxed)
        );
        self.connections.render(&mut out);
        out
    }
}

/// Decrements the open-WebSocket gauge when the connection ends.
pub struct WsGuard(std::sync::Arc<Metrics>);

impl std::ops::Drop for WsGuard {
    fn drop(&mut self) {
        self.0.ws_open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A Prometheus histogram family from fixed buckets (exported cumulatively, in seconds).
fn histogram(out: &mut String, name: &str, help: &str, h: &LatencyHistogram) {
    family(out, name, "histogram", help);
    let mut cumulative = 0;
    for (bound, n) in LATENCY_BUCKETS_US.iter().zip(h.buckets) {
        cumulative += n;
        let _ = writeln!(
            out,
            "switchboard_{name}_bucket{{le=\"{}\"}} {cumulative}",
            *bound as f64 / 1e6
        );
    }
    let _ = writeln!(out, "switchboard_{name}_bucket{{le=\"+Inf\"}} {}", h.count);
    let _ = writeln!(out, "switchboard_{name}_sum {}", h.sum_ns as f64 / 1e9);
    let _ = writeln!(out, "switchboard_{name}_count {}", h.count);
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP switchboard_{name} {help}");
    let _ = writeln!(out, "# TYPE switchboard_{name} {kind}");
}

/// Escapes a label value (backslash, double quote, newline).
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Axum middleware: counts every request by its route template (never the raw path).
pub async fn track_http(
    State(metrics): State<std::sync::Arc<Metrics>>,
    request: Request,
    next: Next,
) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| OTHER_ROUTE.to_owned());
    let method = request.method().as_str().to_owned();
    let response = next.run(request).await;
    metrics.record_request(&route, &method, response.status().as_u16());
    response
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn value_of(text: &str, series: &str) -> Option<String> {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ').map(str::to_owned))
    }

    #[test]
    fn worker_stats_are_summed() {
        let mut a = WorkerStats {
            rooms: 1,
            participants: 2,
            rtp_forwarded: 10,
            datagrams_in: 5,
            ..Default::default()
        };
        a.drop(Drop::NoSubscribers);
        a.events_lost = 4;
        let mut b = WorkerStats {
            rooms: 2,
            participants: 3,
            rtp_forwarded: 7,
            datagrams_in: 1,
            ..Default::default()
        };
        b.drop(Drop::NoSubscribers);
        b.drop(Drop::UnknownSource);
        let m = Metrics::default();
        m.events_lost(2);
        let text = m.render(&[a, b], 3, &LatencyHistogram::default());
        assert_eq!(value_of(&text, "switchboard_rooms").as_deref(), Some("3"));
        assert_eq!(
            value_of(&text, "switchboard_events_lost_total").as_deref(),
            Some("6"),
            "the workers' and the consumer's"
        );
        assert_eq!(
            value_of(&text, "switchboard_participants").as_deref(),
            Some("5")
        );
        assert_eq!(
            value_of(&text, "switchboard_rtp_forwarded_total").as_deref(),
            Some("17")
        );
        assert_eq!(
            value_of(&text, "switchboard_datagrams_in_total").as_deref(),
            Some("6")
        );
        assert_eq!(
            value_of(
                &text,
                "switchboard_dropped_total{reason=\"no_subscribers\"}"
            )
            .as_deref(),
            Some("2")
        );
        assert_eq!(
            value_of(
                &text,
                "switchboard_dropped_total{reason=\"unknown_source\"}"
            )
            .as_deref(),
            Some("1")
        );
        assert_eq!(
            value_of(&text, "switchboard_media_workers").as_deref(),
            Some("3")
        );
        assert_eq!(
            value_of(&text, "switchboard_media_workers_up").as_deref(),
            Some("2")
        );
    }

    #[test]
    fn every_drop_reason_is_exported_even_at_zero() {
        let text =
            Metrics::default().render(&[WorkerStats::default()], 1, &LatencyHistogram::default());
        for reason in Drop::ALL {
            let series = format!(
                "switchboard_dropped_total{{reason=\"{}\"}}",
                reason.as_str()
            );
            assert_eq!(value_of(&text, &series).as_deref(), Some("0"), "{series}");
        }
    }

    #[test]
    fn every_sample_line_is_well_formed() {
        let m = Arc::new(Metrics::default());
        m.record_request("/healthz", "GET", 200);
        m.record_request("/healthz", "GET", 200);
        m.record_request("a\"b", "GET", 404);
        let _guard = m.ws_opened();
        let text = m.render(&[WorkerStats::default()], 1, &LatencyHistogram::default());
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (series, value) = line.rsplit_once(' ').expect(line);
            assert!(series.starts_with("switchboard_"), "{line}");
            assert!(value.parse::<f64>().is_ok(), "{line}");
        }
        assert_eq!(
            value_of(
                &text,
                "switchboard_http_requests_total{route=\"/healthz\",method=\"GET\",status=\"200\"}"
            )
            .as_deref(),
            Some("2")
        );
        assert!(text.contains("route=\"a\\\"b\""));
        assert_eq!(
            value_of(&text, "switchboard_websocket_connections").as_deref(),
            Some("1")
        );
    }

    #[test]
    fn websocket_gauge_falls_when_the_guard_drops() {
        let m = Arc::new(Metrics::default());
        let a = m.ws_opened();
        let b = m.ws_opened();
        assert_eq!(m.ws_open(), 2);
        std::mem::drop(a);
        assert_eq!(m.ws_open(), 1);
        std::mem::drop(b);
        assert_eq!(m.ws_open(), 0);
    }
}
