// Connection health from RTCPeerConnection.getStats(): RTT, bitrate, packet loss, state.
//
// Every number is computed from the difference between two reports, so it describes the last
// interval (2 s), not the whole call.

export const POOR = { rttMs: 400, lossPct: 5 };
const FAIR = { rttMs: 200, lossPct: 2 };

/** Keeps the previous report of one connection to compute rates. */
export class HealthSampler {
  constructor(label) {
    this.label = label;
    this.prev = null;
  }

  /** @returns {Promise<object|null>} a summary of `pc`, or null without a connection */
  async sample(pc) {
    if (!pc) {
      this.prev = null;
      return null;
    }
    let report;
    try {
      report = await pc.getStats();
    } catch {
      return null;
    }
    const now = performance.now();
    const cur = { at: now, bytesSent: 0, bytesReceived: 0, packetsReceived: 0, packetsLost: 0 };
    let rttMs = null;
    let remoteLoss = null;
    let pair = null;
    const byId = new Map();
    report.forEach((s) => byId.set(s.id, s));
    report.forEach((s) => {
      if (s.type === 'outbound-rtp') cur.bytesSent += s.bytesSent || 0;
      if (s.type === 'inbound-rtp') {
        cur.bytesReceived += s.bytesReceived || 0;
        cur.packetsReceived += s.packetsReceived || 0;
        cur.packetsLost += Math.max(0, s.packetsLost || 0);
      }
      if (s.type === 'remote-inbound-rtp') {
        if (typeof s.roundTripTime === 'number' && rttMs === null) rttMs = s.roundTripTime * 1000;
        if (typeof s.fractionLost === 'number') remoteLoss = Math.max(remoteLoss || 0, s.fractionLost * 100);
      }
      if (s.type === 'transport' && s.selectedCandidatePairId) pair = byId.get(s.selectedCandidatePairId) || pair;
    });
    if (!pair) {
      // Firefox has no transport stats: the nominated, succeeded pair is the one in use.
      report.forEach((s) => {
        if (s.type === 'candidate-pair' && s.state === 'succeeded' && (s.nominated || s.selected)) pair = s;
      });
    }
    if (pair && typeof pair.currentRoundTripTime === 'number') rttMs = pair.currentRoundTripTime * 1000;
    let route = '';
    if (pair) {
      const l = byId.get(pair.localCandidateId);
      const r = byId.get(pair.remoteCandidateId);
      const addr = (c) => (c ? `${c.address || c.ip || '?'}:${c.port} ${c.protocol || ''} ${c.candidateType || ''}`.trim() : '?');
      route = `${addr(l)} → ${addr(r)}`;
    }

    const idle = pc.getTransceivers().length === 0;
    const out = {
      label: this.label,
      // A connection that carries nothing yet (a subscribe offer with no tracks) never connects.
      connectionState: idle ? 'idle' : (pc.connectionState || pc.iceConnectionState),
      iceState: pc.iceConnectionState,
      rttMs,
      sendKbps: null,
      recvKbps: null,
      lossPct: remoteLoss,
      route,
    };
    const p = this.prev;
    if (p) {
      const dt = (now - p.at) / 1000;
      if (dt > 0) {
        out.sendKbps = Math.max(0, ((cur.bytesSent - p.bytesSent) * 8) / 1000 / dt);
        out.recvKbps = Math.max(0, ((cur.bytesReceived - p.bytesReceived) * 8) / 1000 / dt);
      }
      const got = cur.packetsReceived - p.packetsReceived;
      const lost = cur.packetsLost - p.packetsLost;
      if (got + lost > 0) {
        const inLoss = (Math.max(0, lost) * 100) / (got + Math.max(0, lost));
        out.lossPct = Math.max(out.lossPct || 0, inLoss);
      } else if (out.lossPct === null && cur.packetsReceived > 0) {
        out.lossPct = 0;
      }
    }
    this.prev = cur;
    out.quality = judge(out);
    return out;
  }
}

/** 'good' | 'fair' | 'poor' | 'down' for one connection summary. */
export function judge(h) {
  if (!h) return 'good';
  if (h.connectionState === 'failed' || h.connectionState === 'disconnected' || h.connectionState === 'closed') return 'down';
  if ((h.rttMs !== null && h.rttMs >= POOR.rttMs) || (h.lossPct !== null && h.lossPct >= POOR.lossPct)) return 'poor';
  if ((h.rttMs !== null && h.rttMs >= FAIR.rttMs) || (h.lossPct !== null && h.lossPct >= FAIR.lossPct)) return 'fair';
  return 'good';
}

/** The worse of several qualities. */
export function worst(qualities) {
  const order = ['good', 'fair', 'poor', 'down'];
  return qualities.reduce((a, b) => (order.indexOf(b) > order.indexOf(a) ? b : a), 'good');
}

/**
 * Audio levels (0..1) of every received audio track, keyed by transceiver mid (or, where the
 * browser gives no mid, by `track:<trackIdentifier>`).
 * Uses `audioLevel` where the browser has it, otherwise the energy difference.
 */
export class AudioLevels {
  constructor() {
    this.prev = new Map();
  }

  async sample(pc) {
    const levels = new Map();
    if (!pc) return levels;
    let report;
    try {
      report = await pc.getStats();
    } catch {
      return levels;
    }
    report.forEach((s) => {
      if (s.type !== 'inbound-rtp' || s.kind !== 'audio') return;
      const key = s.mid !== undefined ? String(s.mid) : `track:${s.trackIdentifier}`;
      let level = typeof s.audioLevel === 'number' ? s.audioLevel : null;
      if (level === null && typeof s.totalAudioEnergy === 'number') {
        const p = this.prev.get(key);
        if (p && s.totalSamplesDuration > p.dur) {
          level = Math.sqrt((s.totalAudioEnergy - p.energy) / (s.totalSamplesDuration - p.dur));
        }
        this.prev.set(key, { energy: s.totalAudioEnergy, dur: s.totalSamplesDuration });
      }
      if (level !== null) levels.set(key, level);
    });
    return levels;
  }
}

export function fmtMs(v) {
  return v === null || v === undefined ? '–' : `${Math.round(v)} ms`;
}
export function fmtKbps(v) {
  if (v === null || v === undefined) return '–';
  return v >= 1000 ? `${(v / 1000).toFixed(2)} Mbit/s` : `${Math.round(v)} kbit/s`;
}
export function fmtPct(v) {
  return v === null || v === undefined ? '–' : `${v.toFixed(1)} %`;
}
