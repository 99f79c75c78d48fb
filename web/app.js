// Switchboard's bundled web client: the lobby, joining, and the call screen.
//
// URL: /?room=ROOM&name=NAME[&autojoin=1][#token=JWT]
// An embedding page may instead hand over the token with
//   iframe.contentWindow.postMessage({type: 'switchboard-token', token}, origin)
// (the client posts {type: 'switchboard-ready'} to its parent/opener when it listens).

import { Call } from './call.js';
import { SignalError } from './signaling.js';
import {
  openCameraAndMicrophone, openCamera, openMicrophone, listDevices, deviceIdOf, stopTrack, LevelMeter,
} from './media.js';
import { HealthSampler, worst } from './stats.js';
import { $, TileView, AudioSink, renderPeople, renderHealth, toast, fmtDuration } from './ui.js';

const ROOM_RE = /^[A-Za-z0-9_.-]{1,64}$/;
const TOKEN_KEY = 'switchboard-token';

// ----- page state ------------------------------------------------------------------------

const params = new URLSearchParams(location.search);
const app = {
  view: 'lobby',
  /** tracks and choices made in the lobby, handed to the Call on join */
  lobby: {
    mic: null, camera: null, micOn: true, camOn: true,
    micDeviceId: localStorage.getItem('switchboard-mic') || undefined,
    cameraDeviceId: localStorage.getItem('switchboard-camera') || undefined,
    mediaError: null,
    mediaDecided: false, // the person chose audio-only / view-only after an error
    meter: null,
    starting: null,
  },
  /** @type {Call|null} */
  call: null,
  token: null,
  embedToken: null,
  embedWaiters: [],
  devices: { cameras: [], microphones: [] },
  timer: 0,
  healthTimer: 0,
  meterTimer: 0,
  samplers: { publish: new HealthSampler('publish'), subscribe: new HealthSampler('subscribe') },
  health: { publish: null, subscribe: null },
  joining: false,
};

// The test hook (and a handle for people debugging in the console).
window.switchboard = {
  get state() { return app.call ? app.call.state : app.view; },
  pcs: {
    get publish() { return app.call ? app.call.pubPc : null; },
    get subscribe() { return app.call ? app.call.subPc : null; },
  },
  get participantId() { return app.call ? app.call.participantId : null; },
  get call() { return app.call; },
  get health() { return app.health; },
};

const els = {
  body: document.body,
  status: $('#status'),
  error: $('#error'),
  errorText: $('#error-text'),
  errorActions: $('#error-actions'),
  toasts: $('#toasts'),
  lobby: $('#lobby'),
  call: $('#call'),
  left: $('#left'),
  form: $('#join-form'),
  room: $('#room-input'),
  name: $('#name-input'),
  invite: $('#invite-link'),
  hint: $('#form-hint'),
  join: $('#join'),
  preview: $('#preview'),
  previewOff: $('#preview-off'),
  previewOffText: $('#preview-off-text'),
  previewMeter: $('#preview-meter'),
  lobbyMic: $('#lobby-mic'),
  lobbyCamera: $('#lobby-camera'),
  cameraSelect: $('#camera-select'),
  micSelect: $('#mic-select'),
  callCameraSelect: $('#call-camera-select'),
  callMicSelect: $('#call-mic-select'),
  roomLabel: $('#room-label'),
  timer: $('#timer'),
  quality: $('#quality'),
  qualityText: $('#quality-text'),
  side: $('#side'),
  peoplePanel: $('#people-panel'),
  healthPanel: $('#health-panel'),
  healthSummary: $('#health-summary'),
  participants: $('#participants'),
  peopleCount: $('#people-count'),
  settings: $('#settings'),
};

const tiles = new TileView({ main: $('.call-main'), grid: $('#grid'), stage: $('#stage'), template: $('#tile-template') });
const audio = new AudioSink($('#audio-sink'), $('#enable-sound'));

// ----- small helpers ---------------------------------------------------------------------

function setStatus(text, level = '') {
  els.status.textContent = text;
  if (level) els.status.dataset.level = level;
  else delete els.status.dataset.level;
}

/**
 * Shows the banner. `actions` are buttons: [{id, label, run}]. `code` lands in data-code.
 */
function showError(text, { level = 'error', code = '', actions = [] } = {}) {
  els.errorText.textContent = text;
  els.error.dataset.level = level;
  els.error.dataset.code = code;
  els.errorActions.replaceChildren(...actions.map((a) => {
    const b = document.createElement('button');
    b.type = 'button';
    b.className = a.primary ? 'primary' : 'secondary';
    b.id = a.id;
    b.textContent = a.label;
    b.addEventListener('click', () => { hideError(); a.run(); });
    return b;
  }));
  els.error.hidden = false;
}

function hideError() {
  els.error.hidden = true;
  els.error.dataset.code = '';
  els.errorActions.replaceChildren();
}

function notify(text, level = 'info') {
  toast(els.toasts, text, level);
}

function setView(view) {
  app.view = view;
  els.body.dataset.view = view;
  els.lobby.hidden = view !== 'lobby';
  els.call.hidden = view !== 'call';
  els.left.hidden = view !== 'left';
  els.timer.hidden = view !== 'call';
  els.quality.hidden = view !== 'call';
  if (view === 'call') tiles.layout();
}

function setButton(btn, { on, label, aria, off, icon }) {
  btn.setAttribute('aria-pressed', String(!!on));
  btn.setAttribute('aria-label', aria);
  btn.querySelector('span').textContent = label;
  if (icon) btn.querySelector('use').setAttribute('href', icon);
  if (off) btn.dataset.off = 'true';
  else delete btn.dataset.off;
}

function randomRoomId() {
  // 16 characters from 32 unambiguous ones: 80 random bits, in groups for reading aloud.
  const alphabet = 'abcdefghijkmnpqrstuvwxyz23456789';
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  let s = '';
  for (let i = 0; i < bytes.length; i++) {
    if (i > 0 && i % 4 === 0) s += '-';
    s += alphabet[bytes[i] % alphabet.length];
  }
  return s;
}

function inviteLink(room) {
  const u = new URL(location.origin + location.pathname);
  if (room) u.searchParams.set('room', room);
  return u.toString();
}

/** Reads a JWT's claims without checking it (only to prefill the form). */
function peekClaims(token) {
  try {
    const part = token.split('.')[1];
    const json = atob(part.replace(/-/g, '+').replace(/_/g, '/'));
    return JSON.parse(json);
  } catch {
    return null;
  }
}

const ERROR_TEXT = {
  room_full: 'This room is full. Try again later, or start a new room.',
  unauthorized: 'This invite link is not valid. Ask the person who invited you for a new link.',
  token_expired: 'This invite link has expired. Ask the person who invited you for a new one.',
  forbidden: 'Your invite link does not let you into this room.',
  no_token: 'This server needs an invite link with a token. Ask the person who runs it for an invite link.',
  unreachable: "Can't reach the Switchboard server. Check your network connection and try again.",
  timeout: 'The server did not answer in time. Try again.',
  connection_lost: 'The connection to the server was lost.',
  server_busy: 'The server is busy right now. Try again in a moment.',
  replaced: 'You joined this call from another tab or device, so it continues there.',
};

function errorText(err) {
  if (err && err.code && ERROR_TEXT[err.code]) return ERROR_TEXT[err.code];
  return `Could not join: ${(err && err.message) || err}`;
}

// ----- tokens ----------------------------------------------------------------------------

function takeFragmentToken() {
  const frag = new URLSearchParams(location.hash.replace(/^#/, ''));
  const t = frag.get('token');
  if (t) {
    sessionStorage.setItem(TOKEN_KEY, t);
    // Keep the token out of the address bar (and out of copied links and screenshots).
    history.replaceState(null, '', location.pathname + location.search);
    return t;
  }
  return sessionStorage.getItem(TOKEN_KEY);
}

function listenForEmbedToken() {
  window.addEventListener('message', (ev) => {
    const d = ev.data;
    if (!d || typeof d !== 'object' || d.type !== 'switchboard-token' || typeof d.token !== 'string') return;
    // Only the page that embeds or opened this one may hand over a token.
    if (ev.source !== window.parent && ev.source !== window.opener) return;
    app.embedToken = d.token;
    sessionStorage.setItem(TOKEN_KEY, d.token);
    prefillFromToken(d.token);
    for (const w of app.embedWaiters.splice(0)) w(d.token);
  });
  const ready = { type: 'switchboard-ready' };
  if (window.parent !== window) window.parent.postMessage(ready, '*');
  if (window.opener) window.opener.postMessage(ready, '*');
}

function isEmbedded() {
  return window.parent !== window || !!window.opener;
}

function waitForEmbedToken(ms) {
  return new Promise((resolve) => {
    const timer = setTimeout(() => resolve(null), ms);
    app.embedWaiters.push((t) => { clearTimeout(timer); resolve(t); });
  });
}

function prefillFromToken(token) {
  const c = peekClaims(token);
  if (!c) return;
  if (!els.room.value && c.room && c.room !== '*') els.room.value = c.room;
  if (!els.name.value && c.name) els.name.value = c.name;
  updateInvite();
}

/** A token for one (re)connection: embedder's, link's, or a dev-mode one from the server. */
async function getToken(room, name) {
  if (app.embedToken) return app.embedToken;
  if (app.token) return app.token;
  let res;
  try {
    res = await fetch('/api/dev/token', {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ name, room }),
    });
  } catch (e) {
    throw new SignalError('unreachable', String(e));
  }
  if (res.status === 404 || res.status === 405) {
    if (isEmbedded()) {
      window.parent.postMessage({ type: 'switchboard-need-token' }, '*');
      const t = await waitForEmbedToken(10_000);
      if (t) return t;
    }
    throw new SignalError('no_token', 'no token and no dev token endpoint');
  }
  if (!res.ok) {
    throw new SignalError(res.status >= 500 ? 'unreachable' : 'unauthorized', `dev token: HTTP ${res.status}`);
  }
  const body = await res.json();
  if (!body || typeof body.token !== 'string') throw new SignalError('internal', 'dev token: no token in the answer');
  return body.token;
}

// ----- lobby: devices and preview --------------------------------------------------------

function fillSelect(select, list, current, emptyLabel) {
  select.replaceChildren();
  if (list.length === 0) {
    const o = document.createElement('option');
    o.value = '';
    o.textContent = emptyLabel;
    select.appendChild(o);
    select.disabled = true;
    return;
  }
  select.disabled = false;
  for (const d of list) {
    const o = document.createElement('option');
    o.value = d.deviceId;
    o.textContent = d.label;
    select.appendChild(o);
  }
  if (current && list.some((d) => d.deviceId === current)) select.value = current;
}

async function refreshDevices() {
  try {
    app.devices = await listDevices();
  } catch {
    app.devices = { cameras: [], microphones: [] };
  }
  const camId = app.call ? app.call.local.cameraDeviceId : (deviceIdOf(app.lobby.camera) || app.lobby.cameraDeviceId);
  const micId = app.call ? app.call.local.micDeviceId : (deviceIdOf(app.lobby.mic) || app.lobby.micDeviceId);
  fillSelect(els.cameraSelect, app.devices.cameras, camId, 'No camera found');
  fillSelect(els.micSelect, app.devices.microphones, micId, 'No microphone found');
  fillSelect(els.callCameraSelect, app.devices.cameras, camId, 'No camera found');
  fillSelect(els.callMicSelect, app.devices.microphones, micId, 'No microphone found');
}

function renderPreview() {
  const l = app.lobby;
  const showVideo = !!(l.camera && l.camOn);
  if (showVideo) {
    if (!els.preview.srcObject || els.preview.srcObject.getVideoTracks()[0] !== l.camera) {
      els.preview.srcObject = new MediaStream([l.camera]);
      els.preview.play().catch(() => {});
    }
  } else {
    els.preview.srcObject = null;
  }
  els.previewOff.hidden = showVideo;
  if (!showVideo) {
    els.previewOffText.textContent = l.mediaError && !l.camera
      ? l.mediaError.message
      : (l.camOn ? 'Starting camera…' : 'Camera is off');
  }
  setButton(els.lobbyMic, {
    on: l.micOn && !!l.mic,
    label: l.mic ? (l.micOn ? 'Mic on' : 'Mic off') : 'No mic',
    aria: l.micOn ? 'Turn microphone off' : 'Turn microphone on',
    off: !(l.micOn && l.mic),
    icon: l.micOn && l.mic ? '#i-mic' : '#i-mic-off',
  });
  setButton(els.lobbyCamera, {
    on: l.camOn && !!l.camera,
    label: l.camera ? (l.camOn ? 'Camera on' : 'Camera off') : (l.camOn ? 'No camera' : 'Camera off'),
    aria: l.camOn ? 'Turn camera off' : 'Turn camera on',
    off: !(l.camOn && l.camera),
    icon: l.camOn && l.camera ? '#i-cam' : '#i-cam-off',
  });
}

function startMeter(track) {
  if (app.lobby.meter) app.lobby.meter.stop();
  app.lobby.meter = track ? new LevelMeter(track) : null;
  clearInterval(app.meterTimer);
  app.meterTimer = setInterval(() => {
    const m = app.lobby.meter;
    const level = m && app.lobby.micOn ? m.level() : 0;
    els.previewMeter.style.width = `${Math.round(level * 100)}%`;
  }, 100);
}

function stopPreview() {
  clearInterval(app.meterTimer);
  if (app.lobby.meter) app.lobby.meter.stop();
  app.lobby.meter = null;
  els.preview.srcObject = null;
}

/** Opens camera and microphone for the preview (one prompt), remembering what failed. */
async function startPreview() {
  const l = app.lobby;
  if (l.starting) return l.starting;
  l.starting = (async () => {
    setStatus('Starting camera and microphone…');
    const wantVideo = l.camOn && !l.camera;
    const wantAudio = !l.mic;
    const got = await openCameraAndMicrophone({
      audio: wantAudio, video: wantVideo, audioDeviceId: l.micDeviceId, videoDeviceId: l.cameraDeviceId,
    });
    if (got.audio) l.mic = got.audio;
    if (got.video) l.camera = got.video;
    if (l.mic) l.mic.enabled = l.micOn;
    l.mediaError = got.error;
    if (got.audio) startMeter(l.mic);
    await refreshDevices();
    renderPreview();
    if (got.error) {
      mediaProblem(got.error);
    } else {
      setStatus('Ready to join');
    }
  })().finally(() => { l.starting = null; });
  return l.starting;
}

function mediaProblem(err) {
  const l = app.lobby;
  const actions = [{ id: 'retry-media', label: 'Try again', run: () => { l.mediaError = null; startPreview(); } }];
  if (!l.mic || !l.camera) {
    if (l.mic && !l.camera) {
      actions.push({ id: 'join-audio-only', label: 'Join with audio only', primary: true, run: () => { l.camOn = false; l.mediaDecided = true; join(); } });
    } else if (!l.mic && !l.camera) {
      actions.push({ id: 'join-audio-only', label: 'Join with audio only', run: () => joinAudioOnly() });
      actions.push({ id: 'join-view-only', label: 'Join without camera and mic', primary: true, run: () => { l.camOn = false; l.micOn = false; l.mediaDecided = true; join(); } });
    }
  }
  setStatus(err.kind === 'denied' ? 'Camera/microphone blocked' : 'Camera/microphone problem', 'warn');
  showError(err.message, { level: 'warn', code: `media_${err.kind}`, actions });
}

async function joinAudioOnly() {
  const l = app.lobby;
  try {
    if (!l.mic) l.mic = await openMicrophone(l.micDeviceId);
    l.micOn = true;
    l.camOn = false;
    l.mediaDecided = true;
    startMeter(l.mic);
    renderPreview();
    join();
  } catch (e) {
    showError(e.message, {
      level: 'warn', code: `media_${e.kind || 'failed'}`,
      actions: [{ id: 'join-view-only', label: 'Join without camera and mic', primary: true, run: () => { l.camOn = false; l.micOn = false; l.mediaDecided = true; join(); } }],
    });
  }
}

// ----- lobby: form -----------------------------------------------------------------------

function updateInvite() {
  const room = els.room.value.trim();
  els.invite.value = room && ROOM_RE.test(room) ? inviteLink(room) : '';
  els.roomLabel.textContent = app.view === 'call' ? room : '';
}

function validate() {
  const room = els.room.value.trim();
  if (!room) return 'Enter a room name, or press "New room".';
  if (!ROOM_RE.test(room)) return 'Room names may use letters, digits, "-", "_" and "." (up to 64).';
  return '';
}

async function copyInvite() {
  const link = els.invite.value;
  if (!link) { els.hint.textContent = 'Choose a room first.'; return; }
  try {
    await navigator.clipboard.writeText(link);
  } catch {
    els.invite.select();
    document.execCommand('copy');
  }
  els.hint.textContent = 'Invite link copied.';
  els.hint.dataset.level = '';
  setTimeout(() => { if (els.hint.textContent === 'Invite link copied.') els.hint.textContent = ''; }, 2500);
}

// ----- joining and the call --------------------------------------------------------------

async function join() {
  if (app.joining || app.call) return;
  const problem = validate();
  if (problem) {
    els.hint.textContent = problem;
    els.hint.dataset.level = 'error';
    els.room.focus();
    return;
  }
  els.hint.textContent = '';
  const room = els.room.value.trim();
  const name = els.name.value.trim() || 'Guest';
  localStorage.setItem('switchboard-name', name);
  const l = app.lobby;
  if (l.starting) await l.starting;
  if (!l.mic && !l.camera && l.mediaError && !l.mediaDecided) {
    mediaProblem(l.mediaError);
    return;
  }
  hideError();
  app.joining = true;
  els.join.disabled = true;
  setStatus('Connecting…');
  // Keep ?room&name in the address bar so a reload comes back to the same room.
  const u = new URL(location.href);
  u.searchParams.set('room', room);
  u.searchParams.set('name', name);
  history.replaceState(null, '', u.pathname + u.search);

  stopPreview();
  const call = new Call({
    room,
    getToken: () => getToken(room, name),
    local: {
      mic: l.mic, camera: l.camera, micOn: l.micOn, camOn: l.camOn,
      micDeviceId: l.micDeviceId, cameraDeviceId: l.cameraDeviceId,
    },
  });
  l.mic = null;
  l.camera = null;
  app.call = call;
  wireCall(call);
  setView('call');
  updateInvite();
  drawCall();
  try {
    await call.join();
  } catch (e) {
    app.call = null;
    // Give the tracks back to the lobby.
    l.mic = call.local.mic;
    l.camera = call.local.camera;
    tiles.clear();
    audio.sync([]);
    setView('lobby');
    if (l.mic) startMeter(l.mic);
    renderPreview();
    setStatus('Not connected', 'error');
    const actions = [];
    if (e.code === 'unreachable' || e.code === 'timeout' || e.code === 'connection_lost' || e.code === 'server_busy') {
      actions.push({ id: 'retry-join', label: 'Try again', primary: true, run: () => join() });
    }
    if (e.code === 'room_full') {
      actions.push({ id: 'new-room-after-full', label: 'Start a new room', run: () => { els.room.value = randomRoomId(); updateInvite(); } });
    }
    showError(errorText(e), { code: e.code || 'error', actions });
    return;
  } finally {
    app.joining = false;
    els.join.disabled = false;
  }
  startCallTimers();
  drawCall();
}

function wireCall(call) {
  call.addEventListener('state', () => onCallState(call));
  for (const ev of ['participants', 'tracks', 'local']) call.addEventListener(ev, () => drawCall());
  call.addEventListener('speaker', (ev) => {
    tiles.setSpeaker(ev.detail);
    drawPeople();
  });
  call.addEventListener('notice', (ev) => notify(ev.detail.text, ev.detail.level));
  call.addEventListener('reconnecting', (ev) => {
    setStatus(`Connection lost — reconnecting (attempt ${ev.detail.attempt})…`, 'warn');
  });
  call.addEventListener('fatal', (ev) => {
    const e = ev.detail;
    endCallUi();
    setView('lobby');
    startPreview();
    setStatus('Disconnected', 'error');
    showError(errorText(e), { code: e.code || 'error' });
  });
}

function onCallState(call) {
  switch (call.state) {
    case 'connecting':
      setStatus('Connecting…');
      break;
    case 'joined':
      hideErrorIf('connection');
      setStatus(`In the call · ${call.participants.size + 1} ${call.participants.size === 0 ? 'person' : 'people'}`, 'ok');
      break;
    case 'reconnecting':
      setStatus('Connection lost — reconnecting…', 'warn');
      showError('The connection was lost. Reconnecting…', { level: 'warn', code: 'connection' });
      break;
    case 'left':
      setStatus('You left the call');
      break;
    default:
      break;
  }
  drawCall();
}

function hideErrorIf(code) {
  if (els.error.dataset.code === code) hideError();
}

/** Draws tiles, audio, people and buttons from the Call's state. */
function drawCall() {
  const call = app.call;
  if (!call) return;
  const items = [];
  const people = [];
  const reconnecting = call.state === 'reconnecting' || call.state === 'connecting';
  const self = {
    key: 'self',
    participantId: call.participantId || '',
    name: call.name || els.name.value.trim() || 'You',
    self: true,
    muted: !(call.local.mic && call.local.micOn),
    cameraOff: !(call.local.camera && call.local.camOn),
    sharing: !!call.local.screen,
    videoTrack: call.local.camOn ? call.local.camera : null,
    reconnecting,
  };
  items.push(self);
  people.push(self);
  const screens = [];
  if (call.local.screen) {
    screens.push({ key: 'screen:self', participantId: self.participantId, name: self.name, self: true, screenTile: true, videoTrack: call.local.screen });
  }
  const audioTracks = [];
  for (const p of call.participants.values()) {
    const r = call.remote.get(p.id) || {};
    const item = {
      key: `p:${p.id}`,
      participantId: p.id,
      name: p.name,
      muted: !p.media.audio,
      cameraOff: !p.media.video || !r.camera,
      sharing: !!p.media.screen || !!r.screen,
      videoTrack: r.camera || null,
      reconnecting,
    };
    items.push(item);
    people.push(item);
    if (r.screen) screens.push({ key: `screen:${p.id}`, participantId: p.id, name: p.name, screenTile: true, videoTrack: r.screen });
    if (r.audio) audioTracks.push(r.audio);
    if (r.screenAudio) audioTracks.push(r.screenAudio);
  }
  // A remote screen share takes the stage before one's own.
  screens.sort((a, b) => Number(!!a.self) - Number(!!b.self));
  tiles.render([...screens.slice(0, 1), ...items, ...screens.slice(1)]);
  audio.sync(audioTracks);
  app.people = people;
  drawPeople();
  els.peopleCount.textContent = String(people.length);
  if (call.state === 'joined') {
    setStatus(`In the call · ${people.length} ${people.length === 1 ? 'person' : 'people'}`, 'ok');
  }
  const micOn = !!(call.local.mic && call.local.micOn);
  setButton($('#mute'), { on: !micOn, label: micOn ? 'Mute' : 'Unmute', aria: micOn ? 'Mute microphone' : 'Unmute microphone', off: !micOn, icon: micOn ? '#i-mic' : '#i-mic-off' });
  const camOn = !!(call.local.camera && call.local.camOn);
  setButton($('#camera'), { on: !camOn, label: camOn ? 'Stop video' : 'Start video', aria: camOn ? 'Turn camera off' : 'Turn camera on', off: !camOn, icon: camOn ? '#i-cam' : '#i-cam-off' });
  const sharing = !!call.local.screen;
  setButton($('#screen'), { on: sharing, label: sharing ? 'Stop sharing' : 'Share screen', aria: sharing ? 'Stop sharing your screen' : 'Share your screen' });
  $('#screen').disabled = !navigator.mediaDevices || !navigator.mediaDevices.getDisplayMedia;
}

function drawPeople() {
  if (!app.people) return;
  renderPeople(els.participants, app.people, app.call ? app.call.speaker : null);
}

function startCallTimers() {
  clearInterval(app.timer);
  clearInterval(app.healthTimer);
  const tick = () => {
    if (app.call && app.call.joinedAt) els.timer.textContent = fmtDuration(Date.now() - app.call.joinedAt);
  };
  tick();
  app.timer = setInterval(tick, 1000);
  app.healthTimer = setInterval(sampleHealth, 2000);
}

async function sampleHealth() {
  const call = app.call;
  if (!call) return;
  const [pub, sub] = await Promise.all([
    app.samplers.publish.sample(call.pubPc),
    app.samplers.subscribe.sample(call.subPc),
  ]);
  app.health = { publish: pub, subscribe: sub };
  renderHealth(els.healthPanel, 'publish', pub);
  renderHealth(els.healthPanel, 'subscribe', sub);
  let q = worst([pub, sub].filter(Boolean).map((h) => h.quality));
  if (call.state === 'reconnecting') q = 'down';
  const text = {
    good: 'Good connection',
    fair: 'Fair connection',
    poor: 'Poor connection',
    down: call.state === 'reconnecting' ? 'Reconnecting' : 'Connection problem',
  }[q];
  els.quality.dataset.quality = q;
  els.qualityText.textContent = text;
  els.quality.setAttribute('aria-label', `Connection quality: ${text}. Show call health`);
  els.healthSummary.dataset.quality = q;
  els.healthSummary.textContent = {
    good: 'Connection is good.',
    fair: 'Connection is fair: some delay or loss.',
    poor: 'Poor connection: high delay or packet loss. Video may freeze; try turning your camera off.',
    down: 'The connection is interrupted.',
  }[q];
}

function endCallUi() {
  clearInterval(app.timer);
  clearInterval(app.healthTimer);
  app.samplers.publish.prev = null;
  app.samplers.subscribe.prev = null;
  tiles.clear();
  audio.sync([]);
  app.call = null;
  app.people = null;
  if (document.fullscreenElement) document.exitFullscreen().catch(() => {});
}

function leave() {
  const call = app.call;
  if (!call) return;
  const duration = call.joinedAt ? fmtDuration(Date.now() - call.joinedAt) : '';
  call.leave();
  endCallUi();
  hideError();
  $('#left-detail').textContent = duration ? `You were in “${call.room}” for ${duration}.` : '';
  setView('left');
  setStatus('You left the call');
}

async function backToLobby(thenJoin = false) {
  setView('lobby');
  await startPreview();
  if (thenJoin) join();
}

// ----- in-call controls ------------------------------------------------------------------

async function guarded(fn) {
  try {
    await fn();
  } catch (e) {
    console.error(e);
    notify(e.message || String(e), 'error');
  }
}

function togglePanel(which) {
  const open = !els.side.hidden && (which === 'people' ? !els.peoplePanel.hidden : !els.healthPanel.hidden);
  if (open) {
    els.side.hidden = true;
  } else {
    els.side.hidden = false;
    selectTab(which);
  }
  $('#people').setAttribute('aria-pressed', String(!els.side.hidden && !els.peoplePanel.hidden));
  $('#health-btn').setAttribute('aria-pressed', String(!els.side.hidden && !els.healthPanel.hidden));
  tiles.layout();
}

function selectTab(which) {
  els.peoplePanel.hidden = which !== 'people';
  els.healthPanel.hidden = which !== 'health';
  $('#tab-people').setAttribute('aria-selected', String(which === 'people'));
  $('#tab-health').setAttribute('aria-selected', String(which === 'health'));
  $('#people').setAttribute('aria-pressed', String(which === 'people'));
  $('#health-btn').setAttribute('aria-pressed', String(which === 'health'));
}

function wireControls() {
  $('#mute').addEventListener('click', () => guarded(async () => {
    const c = app.call;
    if (c) await c.setMic(!(c.local.mic && c.local.micOn));
  }));
  $('#camera').addEventListener('click', () => guarded(async () => {
    const c = app.call;
    if (c) await c.setCamera(!(c.local.camera && c.local.camOn));
  }));
  $('#screen').addEventListener('click', () => guarded(async () => {
    const c = app.call;
    if (!c) return;
    if (c.local.screen) await c.stopScreen();
    else await c.startScreen();
  }));
  $('#leave').addEventListener('click', leave);
  $('#devices').addEventListener('click', async () => {
    await refreshDevices();
    els.settings.showModal();
  });
  els.callCameraSelect.addEventListener('change', () => guarded(async () => {
    if (!app.call) return;
    localStorage.setItem('switchboard-camera', els.callCameraSelect.value);
    await app.call.switchCamera(els.callCameraSelect.value);
  }));
  els.callMicSelect.addEventListener('change', () => guarded(async () => {
    if (!app.call) return;
    localStorage.setItem('switchboard-mic', els.callMicSelect.value);
    await app.call.switchMic(els.callMicSelect.value);
  }));
  $('#people').addEventListener('click', () => togglePanel('people'));
  $('#health-btn').addEventListener('click', () => togglePanel('health'));
  els.quality.addEventListener('click', () => { els.side.hidden = false; selectTab('health'); tiles.layout(); });
  $('#tab-people').addEventListener('click', () => selectTab('people'));
  $('#tab-health').addEventListener('click', () => selectTab('health'));
  $('#side-close').addEventListener('click', () => {
    els.side.hidden = true;
    $('#people').setAttribute('aria-pressed', 'false');
    $('#health-btn').setAttribute('aria-pressed', 'false');
    tiles.layout();
  });
  $('#fullscreen').addEventListener('click', () => guarded(async () => {
    if (document.fullscreenElement) await document.exitFullscreen();
    else await document.documentElement.requestFullscreen();
  }));
  document.addEventListener('fullscreenchange', () => {
    const fs = !!document.fullscreenElement;
    setButton($('#fullscreen'), { on: fs, label: fs ? 'Exit full screen' : 'Full screen', aria: fs ? 'Exit full screen' : 'Enter full screen' });
  });
  $('#rejoin').addEventListener('click', () => backToLobby(true));
  $('#to-lobby').addEventListener('click', () => backToLobby(false));
  $('#error-close').addEventListener('click', hideError);
}

function wireLobby() {
  els.form.addEventListener('submit', (ev) => {
    ev.preventDefault();
    join();
  });
  $('#new-room').addEventListener('click', () => {
    els.room.value = randomRoomId();
    updateInvite();
    els.hint.textContent = 'New room made. Share the invite link.';
    els.hint.dataset.level = '';
  });
  els.room.addEventListener('input', updateInvite);
  $('#copy-link').addEventListener('click', copyInvite);
  els.lobbyMic.addEventListener('click', () => guarded(async () => {
    const l = app.lobby;
    l.micOn = !l.micOn;
    if (l.micOn && !l.mic) {
      l.mic = await openMicrophone(l.micDeviceId);
      startMeter(l.mic);
      await refreshDevices();
    }
    if (l.mic) l.mic.enabled = l.micOn;
    renderPreview();
  }));
  els.lobbyCamera.addEventListener('click', () => guarded(async () => {
    const l = app.lobby;
    l.camOn = !l.camOn;
    if (!l.camOn) {
      stopTrack(l.camera); // off means the camera light goes out
      l.camera = null;
    } else if (!l.camera) {
      renderPreview();
      try {
        l.camera = await openCamera(l.cameraDeviceId);
      } catch (e) {
        l.camOn = false;
        throw e;
      } finally {
        renderPreview();
      }
      await refreshDevices();
    }
    renderPreview();
  }));
  els.cameraSelect.addEventListener('change', () => guarded(async () => {
    const l = app.lobby;
    l.cameraDeviceId = els.cameraSelect.value;
    localStorage.setItem('switchboard-camera', l.cameraDeviceId);
    if (l.camOn) {
      const t = await openCamera(l.cameraDeviceId);
      stopTrack(l.camera);
      l.camera = t;
      renderPreview();
    }
  }));
  els.micSelect.addEventListener('change', () => guarded(async () => {
    const l = app.lobby;
    l.micDeviceId = els.micSelect.value;
    localStorage.setItem('switchboard-mic', l.micDeviceId);
    const t = await openMicrophone(l.micDeviceId);
    t.enabled = l.micOn;
    stopTrack(l.mic);
    l.mic = t;
    startMeter(t);
  }));
  if (navigator.mediaDevices && navigator.mediaDevices.addEventListener) {
    navigator.mediaDevices.addEventListener('devicechange', () => refreshDevices());
  }
  // Closing the tab in the lobby releases the camera too (the Call does its own clean-up).
  window.addEventListener('pagehide', () => {
    if (!app.call) {
      stopTrack(app.lobby.mic);
      stopTrack(app.lobby.camera);
    }
  });
}

// ----- start -----------------------------------------------------------------------------

function start() {
  wireLobby();
  wireControls();
  listenForEmbedToken();
  app.token = takeFragmentToken();
  els.room.value = params.get('room') || '';
  els.name.value = params.get('name') || localStorage.getItem('switchboard-name') || '';
  if (app.token) prefillFromToken(app.token);
  updateInvite();
  setView('lobby');
  renderPreview();
  const autojoin = ['1', 'true', 'yes'].includes((params.get('autojoin') || '').toLowerCase());
  startPreview().then(() => {
    if (autojoin && !app.lobby.mediaError) join();
    else if (autojoin && (app.lobby.mic || app.lobby.camera)) join();
  });
}

start();
