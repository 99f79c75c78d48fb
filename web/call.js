// One person's presence in one room: the signaling socket, the publish and subscribe
// RTCPeerConnections (docs/protocol.md), the local tracks, and what the others send.
//
// The Call knows nothing of the page; it emits events and the UI draws them:
//   'state'        state changed (see STATES)
//   'participants' someone joined, left, or changed mute state
//   'tracks'       the set of received tracks changed
//   'local'        own tracks or mute flags changed
//   'speaker'      the active speaker changed (detail: participant id or null)
//   'notice'       something worth a short message (detail: {text, level})
//   'fatal'        the call cannot go on (detail: SignalError or MediaError)

import { Signaling, SignalError, defaultSocketUrl } from './signaling.js';
import { openCamera, openMicrophone, openScreen, stopTrack, LevelMeter, deviceIdOf } from './media.js';
import { AudioLevels } from './stats.js';

export const STATES = ['idle', 'connecting', 'joined', 'reconnecting', 'left', 'failed'];

/** Server error codes after which trying again cannot help. */
const FATAL_CODES = new Set(['unauthorized', 'token_expired', 'forbidden', 'room_full', 'no_token', 'not_found', 'replaced']);

const SPEAKER_THRESHOLD = 0.02;
const SPEAKER_HOLD_MS = 1200;
const DISCONNECTED_GRACE_MS = 5000;

/**
 * What each m-section of an SDP carries: [{mid, msidTrack}] in order.
 * Used to name sources by the `a=msid` track id, which is what the server sees.
 */
export function sdpSections(sdp) {
  const out = [];
  for (const part of sdp.split(/\r?\nm=/).slice(1)) {
    const mid = /^a=mid:(\S+)/m.exec(part);
    const msid = /^a=msid:(\S+) (\S+)/m.exec(part);
    out.push({ mid: mid ? mid[1] : null, msidTrack: msid ? msid[2] : null });
  }
  return out;
}

/**
 * Starts or stops a sender's RTP without renegotiating. A sender without a track is not
 * enough: Firefox then goes on sending one black frame a second.
 */
async function setSending(sender, active) {
  const params = sender.getParameters();
  if (!params.encodings || params.encodings.length === 0) return;
  if (params.encodings.every((e) => e.active === active)) return;
  for (const e of params.encodings) e.active = active;
  await sender.setParameters(params);
}

export class Call extends EventTarget {
  /**
   * @param {object} opts
   * @param {string} opts.room
   * @param {() => Promise<string>} opts.getToken  called for every (re)connection
   * @param {{mic: MediaStreamTrack|null, camera: MediaStreamTrack|null, micOn: boolean, camOn: boolean,
   *          micDeviceId?: string, cameraDeviceId?: string}} opts.local  tracks handed over by the lobby
   * @param {string} [opts.url]  the /ws address
   */
  constructor({ room, getToken, local, url }) {
    super();
    this.room = room;
    this.getToken = getToken;
    this.url = url || defaultSocketUrl();
    this.state = 'idle';
    this.sig = null;
    this.gen = 0; // bumps on every (re)connection; async work of an older one stops
    this.participantId = null;
    this.userId = null;
    this.name = '';
    this.iceServers = [];
    /** @type {Map<string, {id, userId, name, media: {audio, video, screen}, tracks: Map<string, object>}>} */
    this.participants = new Map();
    /** mid → SubscribedTrack of the latest subscribe_offer */
    this.midMap = new Map();
    /** participant id → {audio, camera, screen, screenAudio} received MediaStreamTracks */
    this.remote = new Map();
    this.pubPc = null;
    this.subPc = null;
    this.pubChain = Promise.resolve();
    this.msgChain = Promise.resolve();
    this.pendingCandidates = { publish: [], subscribe: [] };
    /** role ('microphone'|'camera'|'screen') → RTCRtpTransceiver on the publish connection */
    this.transceivers = new Map();
    this.local = {
      mic: local.mic || null,
      camera: local.camera || null,
      screen: null,
      micOn: !!local.micOn && !!local.mic,
      camOn: !!local.camOn && !!local.camera,
      micDeviceId: local.micDeviceId || deviceIdOf(local.mic),
      cameraDeviceId: local.cameraDeviceId || deviceIdOf(local.camera),
    };
    if (this.local.mic) this.local.mic.enabled = this.local.micOn;
    if (this.local.camera && !this.local.camOn) {
      stopTrack(this.local.camera);
      this.local.camera = null;
    }
    this.meter = this.local.mic ? new LevelMeter(this.local.mic) : null;
    this.levels = new AudioLevels();
    this.speaker = null;
    this.speakerSince = 0;
    this.levelTimer = 0;
    this.disconnectTimer = 0;
    this.stableTimer = 0;
    this.reconnectAttempt = 0;
    this.joinedAt = 0;
    this.onPageHide = () => this.leave('pagehide');
  }

  // ----- lifecycle -------------------------------------------------------------------------

  setState(s) {
    if (this.state === s) return;
    this.state = s;
    this.dispatchEvent(new CustomEvent('state', { detail: s }));
  }

  notice(text, level = 'info') {
    this.dispatchEvent(new CustomEvent('notice', { detail: { text, level } }));
  }

  /** First join. Rejects with a SignalError when it cannot get in. */
  async join() {
    this.setState('connecting');
    window.addEventListener('pagehide', this.onPageHide);
    try {
      await this.connect();
    } catch (e) {
      // The local tracks stay open: the lobby takes them back.
      this.teardown();
      if (this.meter) this.meter.stop();
      this.meter = null;
      window.removeEventListener('pagehide', this.onPageHide);
      this.setState('failed');
      throw e;
    }
    this.joinedAt = Date.now();
    this.levelTimer = setInterval(() => this.sampleLevels(), 250);
  }

  /** One connection attempt: socket, auth, join, publish. */
  async connect() {
    const gen = ++this.gen;
    const token = await this.getToken();
    if (gen !== this.gen) throw new SignalError('closed', 'superseded');
    const sig = new Signaling(this.url, {
      onMessage: (m) => { if (gen === this.gen) this.enqueue(m); },
      onClose: (info) => { if (gen === this.gen && !info.byUs) this.lost('The connection to the server was lost.'); },
    });
    this.sig = sig;
    await sig.open();
    const auth = await sig.request({ type: 'auth', token }, ['authenticated']);
    this.userId = auth.user_id;
    this.name = auth.name;
    const joined = await sig.request({ type: 'join', room: this.room }, ['joined']);
    if (gen !== this.gen) throw new SignalError('closed', 'superseded');
    this.applyJoined(joined);
    this.setState('joined');
    // The back-off restarts only once a connection has held for a while, so a server that
    // drops us right after joining is not hammered.
    clearTimeout(this.stableTimer);
    this.stableTimer = setTimeout(() => { this.reconnectAttempt = 0; }, 15_000);
    this.sendMediaState();
    if (this.local.mic) this.addSendTrack('microphone', this.local.mic);
    if (this.local.camera) this.addSendTrack('camera', this.local.camera);
    if (this.local.screen) this.addSendTrack('screen', this.local.screen);
    if (this.pubPc) this.renegotiate();
  }

  applyJoined(j) {
    this.participantId = j.participant_id;
    this.iceServers = Array.isArray(j.ice_servers) ? j.ice_servers : [];
    this.participants.clear();
    for (const p of j.participants || []) this.upsertParticipant(p);
    for (const t of j.tracks || []) this.addTrackInfo(t);
    this.midMap.clear();
    this.remote.clear();
    this.emit('participants');
    this.emit('tracks');
  }

  /** The socket dropped or ICE failed: start over with fresh connections. */
  lost(why) {
    // Only a call that was in can be lost; a failing first join or reconnect attempt is
    // handled where it was started.
    if (this.state !== 'joined') return;
    console.warn('switchboard: connection lost:', why);
    this.setState('reconnecting');
    this.notice(`${why} Reconnecting…`, 'warn');
    this.teardown();
    this.reconnectLoop();
  }

  async reconnectLoop() {
    while (this.state === 'reconnecting') {
      const delay = Math.min(10_000, 500 * 2 ** this.reconnectAttempt);
      this.reconnectAttempt += 1;
      this.dispatchEvent(new CustomEvent('reconnecting', { detail: { attempt: this.reconnectAttempt, delay } }));
      await new Promise((r) => setTimeout(r, delay));
      if (this.state !== 'reconnecting') return;
      try {
        await this.connect();
        this.notice('Reconnected.', 'ok');
        return;
      } catch (e) {
        this.teardown();
        if (e instanceof SignalError && FATAL_CODES.has(e.code)) {
          this.fail(e);
          return;
        }
        console.warn('switchboard: reconnect attempt failed:', e);
      }
    }
  }

  fail(err) {
    this.teardown();
    this.stopLocal();
    clearInterval(this.levelTimer);
    window.removeEventListener('pagehide', this.onPageHide);
    this.setState('failed');
    this.dispatchEvent(new CustomEvent('fatal', { detail: err }));
  }

  /** Leaves the room for good: tells the server, closes everything, stops every track. */
  leave(why = 'leave') {
    if (this.state === 'left') return;
    if (this.sig) this.sig.send({ type: 'leave' });
    this.setState('left');
    this.teardown();
    this.stopLocal();
    clearInterval(this.levelTimer);
    window.removeEventListener('pagehide', this.onPageHide);
    if (why !== 'pagehide') this.emit('participants');
  }

  /** Closes the socket and both connections; keeps the local tracks. */
  teardown() {
    this.gen += 1;
    clearTimeout(this.disconnectTimer);
    clearTimeout(this.stableTimer);
    if (this.sig) this.sig.close();
    this.sig = null;
    for (const pc of [this.pubPc, this.subPc]) {
      if (pc) {
        pc.onicecandidate = null;
        pc.onconnectionstatechange = null;
        pc.close();
      }
    }
    this.pubPc = null;
    this.subPc = null;
    this.transceivers.clear();
    this.pendingCandidates = { publish: [], subscribe: [] };
    this.pubChain = Promise.resolve();
    this.msgChain = Promise.resolve();
    this.emit('tracks');
  }

  stopLocal() {
    stopTrack(this.local.mic);
    stopTrack(this.local.camera);
    stopTrack(this.local.screen);
    if (this.meter) this.meter.stop();
    this.meter = null;
    this.local.mic = null;
    this.local.camera = null;
    this.local.screen = null;
    this.emit('local');
  }

  emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }

  // ----- server messages -------------------------------------------------------------------

  enqueue(msg) {
    const gen = this.gen;
    this.msgChain = this.msgChain
      .then(() => (gen === this.gen ? this.handle(msg, gen) : undefined))
      .catch((e) => console.error('switchboard: handling', msg.type, e));
  }

  async handle(msg, gen) {
    switch (msg.type) {
      case 'participant_joined':
        this.upsertParticipant(msg.participant);
        this.emit('participants');
        this.notice(`${msg.participant.name || 'Someone'} joined.`);
        break;
      case 'participant_left': {
        if (msg.participant_id === this.participantId) {
          // The server dropped us (e.g. it heard nothing on a connection): come back in.
          this.lost(`The server removed this connection (${msg.reason || 'unknown reason'}).`);
          break;
        }
        const p = this.participants.get(msg.participant_id);
        this.participants.delete(msg.participant_id);
        this.remote.delete(msg.participant_id);
        this.emit('participants');
        this.emit('tracks');
        if (p) this.notice(`${p.name || 'Someone'} left.`);
        break;
      }
      case 'track_added':
        this.addTrackInfo(msg.track);
        this.emit('participants');
        break;
      case 'track_removed': {
        const p = this.participants.get(msg.participant_id);
        if (p) p.tracks.delete(msg.track_id);
        this.emit('participants');
        break;
      }
      case 'media_state': {
        if (msg.participant_id === this.participantId) break;
        const p = this.participants.get(msg.participant_id);
        if (p) {
          p.media = { audio: !!msg.audio, video: !!msg.video, screen: !!msg.screen };
          this.emit('participants');
        }
        break;
      }
      case 'subscribe_offer':
        await this.onSubscribeOffer(msg, gen);
        break;
      case 'candidate':
        await this.onRemoteCandidate(msg);
        break;
      case 'active_speaker':
        // We compute the active speaker locally from audio levels; the server's view is a hint.
        break;
      case 'server_shutdown':
        this.lost('The server is restarting.');
        break;
      case 'error':
        this.onServerError(msg);
        break;
      case 'joined':
      case 'authenticated':
      case 'publish_answer':
        break; // answers to requests are taken by Signaling.request
      default:
        console.debug('switchboard: unhandled message', msg.type);
    }
  }

  onServerError(msg) {
    console.warn('switchboard: server error', msg.code, msg.message);
    // `replaced`: this user joined the room again from another tab or device; this session is
    // out of the room and must not reconnect (it would replace the other one in turn).
    if ((msg.code === 'unauthorized' || msg.code === 'token_expired' || msg.code === 'replaced') && this.state === 'joined') {
      this.fail(new SignalError(msg.code, msg.message));
      return;
    }
    if (msg.code === 'server_busy') this.notice('The server is busy; retrying may help.', 'warn');
    else if (msg.code !== 'bad_message') this.notice(`Server error: ${msg.message || msg.code}`, 'warn');
  }

  upsertParticipant(info) {
    const old = this.participants.get(info.participant_id);
    this.participants.set(info.participant_id, {
      id: info.participant_id,
      userId: info.user_id,
      name: info.name || 'Guest',
      media: { audio: true, video: true, screen: false, ...(info.media || {}) },
      tracks: old ? old.tracks : new Map(),
    });
  }

  addTrackInfo(t) {
    if (!t || t.participant_id === this.participantId) return;
    // A track of someone we do not know (an offer sent before their participant_left) is
    // not worth a tile.
    const p = this.participants.get(t.participant_id);
    if (p) p.tracks.set(t.track_id, { ...t });
  }

  // ----- subscribe connection --------------------------------------------------------------

  newPc(kind) {
    const pc = new RTCPeerConnection({ iceServers: this.iceServers });
    pc.onicecandidate = (ev) => {
      if (ev.candidate && ev.candidate.candidate && this.sig) {
        this.sig.send({ type: 'candidate', pc: kind, candidate: ev.candidate.toJSON() });
      }
    };
    const gen = this.gen;
    pc.onconnectionstatechange = () => {
      if (gen !== this.gen) return;
      this.emit('pcstate', { kind, state: pc.connectionState });
      if (pc.connectionState === 'failed') {
        this.lost(`The ${kind} connection failed.`);
      } else if (pc.connectionState === 'disconnected') {
        clearTimeout(this.disconnectTimer);
        this.disconnectTimer = setTimeout(() => {
          if (gen === this.gen && pc.connectionState === 'disconnected') {
            this.lost(`The ${kind} connection was interrupted.`);
          }
        }, DISCONNECTED_GRACE_MS);
      }
    };
    return pc;
  }

  async onSubscribeOffer(msg, gen) {
    if (!this.subPc) {
      this.subPc = this.newPc('subscribe');
      this.subPc.ontrack = () => this.reconcileRemote();
      this.emit('pcs');
    }
    const pc = this.subPc;
    this.midMap = new Map((msg.tracks || []).map((t) => [String(t.mid), t]));
    for (const t of msg.tracks || []) this.addTrackInfo(t);
    try {
      await pc.setRemoteDescription({ type: 'offer', sdp: msg.sdp });
      if (gen !== this.gen) return;
      for (const c of this.pendingCandidates.subscribe.splice(0)) await pc.addIceCandidate(c).catch(() => {});
      const answer = await pc.createAnswer();
      await pc.setLocalDescription(answer);
      if (gen !== this.gen) return;
      this.sig.send({ type: 'subscribe_answer', sdp: pc.localDescription.sdp });
    } catch (e) {
      if (gen !== this.gen) return;
      console.error('switchboard: subscribe offer failed', e, msg.sdp);
      // The server waits for an answer before its next offer: only fresh connections can help.
      this.lost('Receiving media failed.');
      return;
    }
    this.reconcileRemote();
    this.emit('participants');
  }

  /** Rebuilds participant → received tracks from the live transceivers and the latest offer. */
  reconcileRemote() {
    const pc = this.subPc;
    const remote = new Map();
    if (pc) {
      for (const t of pc.getTransceivers()) {
        if (!t.mid || t.stopped || t.currentDirection === 'inactive' || t.currentDirection === 'stopped') continue;
        const info = this.midMap.get(String(t.mid));
        if (!info || !t.receiver.track) continue;
        let slot;
        if (info.source === 'screen') slot = 'screen';
        else if (info.source === 'screen_audio') slot = 'screenAudio';
        else slot = info.kind === 'audio' ? 'audio' : 'camera';
        const entry = remote.get(info.participant_id) || {};
        entry[slot] = t.receiver.track;
        remote.set(info.participant_id, entry);
      }
    }
    this.remote = remote;
    this.emit('tracks');
  }

  async onRemoteCandidate(msg) {
    const pc = msg.pc === 'publish' ? this.pubPc : this.subPc;
    if (!msg.candidate || !msg.candidate.candidate) return;
    if (!pc || !pc.remoteDescription) {
      this.pendingCandidates[msg.pc === 'publish' ? 'publish' : 'subscribe'].push(msg.candidate);
      return;
    }
    await pc.addIceCandidate(msg.candidate).catch((e) => console.warn('switchboard: bad server candidate', e));
  }

  // ----- publish connection ----------------------------------------------------------------

  ensurePublishPc() {
    if (!this.pubPc) {
      this.pubPc = this.newPc('publish');
      this.emit('pcs');
    }
    return this.pubPc;
  }

  addSendTrack(role, track) {
    const pc = this.ensurePublishPc();
    const stream = new MediaStream([track]);
    const tr = pc.addTransceiver(track, { direction: 'sendonly', streams: [stream] });
    this.transceivers.set(role, tr);
    return tr;
  }

  /** Queues a new publish_offer (one at a time). */
  renegotiate() {
    const gen = this.gen;
    const run = () => (gen === this.gen ? this.negotiatePublish(gen) : undefined);
    this.pubChain = this.pubChain.then(run, run);
    return this.pubChain;
  }

  async negotiatePublish(gen) {
    const pc = this.pubPc;
    if (!pc || !this.sig) return;
    try {
      const offer = await pc.createOffer();
      await pc.setLocalDescription(offer);
      if (gen !== this.gen) return;
      const sdp = pc.localDescription.sdp;
      const sources = {};
      const byMid = new Map(pc.getTransceivers().filter((t) => t.mid).map((t) => [t.mid, t]));
      const roleOf = new Map([...this.transceivers].map(([role, tr]) => [tr, role]));
      for (const s of sdpSections(sdp)) {
        const tr = byMid.get(s.mid);
        const role = tr && roleOf.get(tr);
        if (role && s.msidTrack) sources[s.msidTrack] = role;
      }
      const answer = await this.sig.request({ type: 'publish_offer', sdp, sources }, ['publish_answer'], 15_000);
      if (gen !== this.gen) return;
      await pc.setRemoteDescription({ type: 'answer', sdp: answer.sdp });
      for (const c of this.pendingCandidates.publish.splice(0)) await pc.addIceCandidate(c).catch(() => {});
    } catch (e) {
      if (gen !== this.gen) return;
      console.error('switchboard: publishing failed', e);
      if (pc.signalingState === 'have-local-offer') {
        await pc.setLocalDescription({ type: 'rollback' }).catch(() => {});
      }
      if (e instanceof SignalError && e.code === 'forbidden') {
        this.notice('This link does not allow you to send audio or video.', 'warn');
      } else if (e instanceof SignalError && (e.code === 'connection_lost' || e.code === 'closed')) {
        // the reconnect takes care of it
      } else {
        this.notice(`Sending your media failed (${e.code || e.message}).`, 'error');
      }
    }
  }

  // ----- own media controls ----------------------------------------------------------------

  sendMediaState() {
    if (!this.sig) return;
    this.sig.send({
      type: 'media_state',
      audio: !!(this.local.mic && this.local.micOn),
      video: !!(this.local.camera && this.local.camOn),
      screen: !!this.local.screen,
    });
  }

  localChanged() {
    this.emit('local');
    this.sendMediaState();
  }

  /** Mutes or unmutes the microphone (the track stays open so unmuting is instant). */
  async setMic(on) {
    if (on && !this.local.mic) {
      const track = await openMicrophone(this.local.micDeviceId);
      this.local.mic = track;
      this.meter = new LevelMeter(track);
      if (this.state === 'joined') {
        const tr = this.transceivers.get('microphone');
        if (tr) await tr.sender.replaceTrack(track);
        else {
          this.addSendTrack('microphone', track);
          this.renegotiate();
        }
      }
    }
    this.local.micOn = !!on && !!this.local.mic;
    if (this.local.mic) this.local.mic.enabled = this.local.micOn;
    this.localChanged();
  }

  /** Turns the camera on or off. Off releases the camera (its light goes out). */
  async setCamera(on) {
    if (on) {
      if (!this.local.camera) {
        const track = await openCamera(this.local.cameraDeviceId);
        this.local.camera = track;
        this.local.cameraDeviceId = deviceIdOf(track) || this.local.cameraDeviceId;
        if (this.state === 'joined') {
          const tr = this.transceivers.get('camera');
          if (tr) {
            await tr.sender.replaceTrack(track);
            await setSending(tr.sender, true);
          } else {
            this.addSendTrack('camera', track);
            this.renegotiate();
          }
        }
      }
      this.local.camOn = true;
    } else {
      const tr = this.transceivers.get('camera');
      if (tr) {
        await tr.sender.replaceTrack(null);
        await setSending(tr.sender, false);
      }
      stopTrack(this.local.camera);
      this.local.camera = null;
      this.local.camOn = false;
    }
    this.localChanged();
  }

  /** Switches to another camera during the call: the old track is stopped after the swap. */
  async switchCamera(deviceId) {
    this.local.cameraDeviceId = deviceId;
    if (!this.local.camera) { this.emit('local'); return; }
    const track = await openCamera(deviceId);
    const old = this.local.camera;
    const tr = this.transceivers.get('camera');
    if (tr) await tr.sender.replaceTrack(track);
    this.local.camera = track;
    stopTrack(old);
    this.emit('local');
  }

  /** Switches to another microphone during the call (keeps the mute state). */
  async switchMic(deviceId) {
    this.local.micDeviceId = deviceId;
    if (!this.local.mic) { this.emit('local'); return; }
    const track = await openMicrophone(deviceId);
    track.enabled = this.local.micOn;
    const old = this.local.mic;
    const tr = this.transceivers.get('microphone');
    if (tr) await tr.sender.replaceTrack(track);
    this.local.mic = track;
    stopTrack(old);
    if (this.meter) this.meter.stop();
    this.meter = new LevelMeter(track);
    this.emit('local');
  }

  /** Starts sharing the screen; resolves false when the person cancelled the picker. */
  async startScreen() {
    if (this.local.screen) return true;
    const track = await openScreen();
    if (!track) return false;
    if (this.state !== 'joined') { stopTrack(track); return false; }
    this.local.screen = track;
    track.addEventListener('ended', () => { if (this.local.screen === track) this.stopScreen(); });
    this.addSendTrack('screen', track);
    this.renegotiate();
    this.localChanged();
    return true;
  }

  async stopScreen() {
    const track = this.local.screen;
    if (!track) return;
    this.local.screen = null;
    const tr = this.transceivers.get('screen');
    this.transceivers.delete('screen');
    stopTrack(track);
    if (tr && this.pubPc) {
      try { tr.stop(); } catch { this.pubPc.removeTrack(tr.sender); }
      this.renegotiate();
    }
    this.localChanged();
  }

  // ----- active speaker --------------------------------------------------------------------

  async sampleLevels() {
    if (this.state !== 'joined') return;
    const byMid = await this.levels.sample(this.subPc);
    const levels = new Map();
    for (const [key, level] of byMid) {
      let info = this.midMap.get(key);
      if (!info && key.startsWith('track:') && this.subPc) {
        const id = key.slice(6);
        const tr = this.subPc.getTransceivers().find((t) => t.receiver.track && t.receiver.track.id === id);
        info = tr && this.midMap.get(String(tr.mid));
      }
      if (!info || info.source === 'screen_audio') continue;
      const p = this.participants.get(info.participant_id);
      if (p && !p.media.audio) continue;
      levels.set(info.participant_id, Math.max(levels.get(info.participant_id) || 0, level));
    }
    if (this.meter && this.local.micOn) levels.set(this.participantId, this.meter.level());
    let best = null;
    let bestLevel = SPEAKER_THRESHOLD;
    for (const [pid, level] of levels) {
      if (level > bestLevel) { best = pid; bestLevel = level; }
    }
    const now = performance.now();
    if (best === this.speaker) { if (best) this.speakerSince = now; return; }
    // Hold the highlight a moment so it does not flicker between words.
    if (best === null && now - this.speakerSince < SPEAKER_HOLD_MS) return;
    if (best !== null && this.speaker !== null && now - this.speakerSince < SPEAKER_HOLD_MS / 2 &&
        (levels.get(this.speaker) || 0) > SPEAKER_THRESHOLD) return;
    this.speaker = best;
    this.speakerSince = now;
    this.emit('speaker', best);
  }

  /** The test hook's view of the connections. */
  get pcs() {
    return { publish: this.pubPc, subscribe: this.subPc };
  }
}
