//! `--compare`: reports of Switchboard and Janus runs side by side, one row per configuration,
//! with the ratio Janus / Switchboard of server CPU time per forwarded packet.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context as _;
use serde_json::{Value, json};

/// One configuration's reports, by target name.
type Row = BTreeMap<String, Value>;

pub fn run(files: &[impl AsRef<Path>], json_out: Option<&Path>) -> anyhow::Result<()> {
    let mut rows: BTreeMap<(u64, u64), Row> = BTreeMap::new();
    for f in files {
        let f = f.as_ref();
        let text = std::fs::read_to_string(f).with_context(|| format!("read {}", f.display()))?;
        let report: Value =
            serde_json::from_str(&text).with_context(|| format!("parse {}", f.display()))?;
        let key = (
            report["rooms"].as_u64().unwrap_or(0),
            report["participants_per_room"].as_u64().unwrap_or(0),
        );
        let target = report["target"]
            .as_str()
            .unwrap_or("switchboard")
            .to_owned();
        rows.entry(key).or_default().insert(target, report);
    }
    print!("{}", table(&rows));
    if let Some(path) = json_out {
        let out: Vec<Value> = rows
            .iter()
            .map(|(&(r, p), row)| {
                json!({
                    "rooms": r,
                    "participants_per_room": p,
                    "janus_over_switchboard_cpu_per_forwarded": ratio(row),
                    "janus_over_switchboard_cpu_per_packet_into_clients": ratio_net(row),
                    "switchboard": row.get("switchboard"),
                    "janus": row.get("janus"),
                })
            })
            .collect();
        std::fs::write(path, serde_json::to_string_pretty(&out)? + "\n")
            .with_context(|| format!("write {}", path.display()))?;
    }
    Ok(())
}

fn ratio_of(row: &Row, field: &str) -> Option<f64> {
    let per_packet = |t: &str| row.get(t)?[field].as_f64();
    Some(per_packet("janus")? / per_packet("switchboard")?)
}

/// Janus / Switchboard of CPU per forwarded packet (packets the clients received).
fn ratio(row: &Row) -> Option<f64> {
    ratio_of(row, "server_cpu_ns_per_forwarded_packet")
}

/// Janus / Switchboard of CPU per packet into the clients' interface (all datagrams the server
/// sent, before any client socket dropped one).
fn ratio_net(row: &Row) -> Option<f64> {
    ratio_of(row, "server_cpu_ns_per_client_net_rx_packet")
}

fn table(rows: &BTreeMap<(u64, u64), Row>) -> String {
    fn num(v: &Value, digits: usize) -> String {
        v.as_f64()
            .map_or_else(|| "n/a".to_owned(), |v| format!("{v:.digits$}"))
    }
    fn both(row: &Row, f: impl Fn(&Value) -> String) -> String {
        let get = |t: &str| row.get(t).map_or_else(|| "–".to_owned(), &f);
        format!("{} / {}", get("switchboard"), get("janus"))
    }
    fn micros(v: &Value) -> String {
        num(&json!(v.as_f64().map(|ns| ns / 1e3)), 1)
    }
    let x = |r: Option<f64>| r.map_or_else(|| "n/a".to_owned(), |x| format!("{x:.2}"));
    let mut s = String::new();
    let _ = writeln!(
        s,
        "Each cell: Switchboard / Janus, the same load. Forwarded packets = RTP packets the clients \
         received (the same count for both servers; Switchboard's own counter is not used).\n\
         \"into clients\" = every datagram arriving on the clients' veth interface (RTP, RTCP, \
         STUN), counted before any client socket drops one.\n"
    );
    let _ = writeln!(
        s,
        "| rooms × participants | forwarded /s | server CPU (cores) | CPU per forwarded packet (µs) | **Janus / Switchboard** | into clients /s | CPU per packet into clients (µs) | Janus / Switchboard | RSS (MiB) | latency p50 (ms) | latency p99 (ms) | loss (%) | first frame p50 (ms) | load tool CPU (cores) | UDP rcvbuf drops | load avg before |"
    );
    let _ = writeln!(s, "|{}", " --- |".repeat(16));
    for (&(r, p), row) in rows {
        let _ = writeln!(
            s,
            "| {r} × {p} | {} | {} | {} | **{}** | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            both(row, |v| num(&v["client_received_pps"], 0)),
            both(row, |v| num(&v["server_cpu_util"], 3)),
            both(row, |v| micros(&v["server_cpu_ns_per_forwarded_packet"])),
            x(ratio(row)),
            both(row, |v| num(&v["client_net_rx_pps"], 0)),
            both(row, |v| micros(
                &v["server_cpu_ns_per_client_net_rx_packet"]
            )),
            x(ratio_net(row)),
            both(row, |v| num(
                &json!(v["server_rss_kib"].as_f64().map(|k| k / 1024.0)),
                1
            )),
            both(row, |v| num(&v["latency_p50_ms"], 2)),
            both(row, |v| num(&v["latency_p99_ms"], 1)),
            both(row, |v| num(&v["loss_pct"], 2)),
            both(row, |v| num(&v["first_frame_p50_ms"], 0)),
            both(row, |v| num(&v["load_tool_cpu_util"], 2)),
            both(row, |v| num(&v["udp_rcvbuf_errors"], 0)),
            both(row, |v| v["loadavg_before"]
                .as_str()
                .and_then(|l| l.split(' ').next())
                .unwrap_or("n/a")
                .to_owned()),
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratio_is_janus_over_switchboard() {
        let mut row = Row::new();
        row.insert(
            "switchboard".into(),
            json!({"server_cpu_ns_per_forwarded_packet": 10_000.0}),
        );
        assert_eq!(ratio(&row), None);
        row.insert(
            "janus".into(),
            json!({"server_cpu_ns_per_forwarded_packet": 25_000.0}),
        );
        assert_eq!(ratio(&row), Some(2.5));
        let mut rows = BTreeMap::new();
        rows.insert((1, 2), row);
        assert!(table(&rows).contains("**2.50**"));
    }
}
