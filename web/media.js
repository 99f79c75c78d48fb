// Local media: camera, microphone, screen, the device lists, and a microphone level meter.

/** A getUserMedia failure turned into something a person can act on. */
export class MediaError extends Error {
  /** @param {'denied'|'no_devices'|'busy'|'failed'|'insecure'} kind */
  constructor(kind, message, cause) {
    super(message);
    this.name = 'MediaError';
    this.kind = kind;
    this.cause = cause;
  }
}

export function describeMediaError(err, what = 'camera or microphone') {
  const name = err && err.name;
  if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
    return new MediaError('insecure',
      'This page cannot use the camera or microphone: open it over https:// (or on localhost).', err);
  }
  if (name === 'NotAllowedError' || name === 'SecurityError' || name === 'PermissionDeniedError') {
    return new MediaError('denied',
      `Permission to use your ${what} was denied. Allow it in the browser's address bar, or join without it.`, err);
  }
  if (name === 'NotFoundError' || name === 'DevicesNotFoundError' || name === 'OverconstrainedError') {
    return new MediaError('no_devices', `No ${what} was found.`, err);
  }
  if (name === 'NotReadableError' || name === 'TrackStartError' || name === 'AbortError') {
    return new MediaError('busy',
      `Your ${what} could not be started; another program may be using it.`, err);
  }
  return new MediaError('failed', `Could not start your ${what}: ${err && err.message ? err.message : err}`, err);
}

const VIDEO_CONSTRAINTS = { width: { ideal: 1280 }, height: { ideal: 720 }, frameRate: { ideal: 30 } };
const AUDIO_CONSTRAINTS = { echoCancellation: true, noiseSuppression: true, autoGainControl: true };

function videoConstraints(deviceId) {
  return deviceId ? { ...VIDEO_CONSTRAINTS, deviceId: { exact: deviceId } } : VIDEO_CONSTRAINTS;
}
function audioConstraints(deviceId) {
  return deviceId ? { ...AUDIO_CONSTRAINTS, deviceId: { exact: deviceId } } : AUDIO_CONSTRAINTS;
}

/** Opens one camera track (or throws MediaError). */
export async function openCamera(deviceId) {
  try {
    const s = await navigator.mediaDevices.getUserMedia({ video: videoConstraints(deviceId) });
    return s.getVideoTracks()[0];
  } catch (e) {
    if (deviceId && e.name === 'OverconstrainedError') return openCamera(undefined);
    throw describeMediaError(e, 'camera');
  }
}

/** Opens one microphone track (or throws MediaError). */
export async function openMicrophone(deviceId) {
  try {
    const s = await navigator.mediaDevices.getUserMedia({ audio: audioConstraints(deviceId) });
    return s.getAudioTracks()[0];
  } catch (e) {
    if (deviceId && e.name === 'OverconstrainedError') return openMicrophone(undefined);
    throw describeMediaError(e, 'microphone');
  }
}

/**
 * Opens camera and microphone together (one permission prompt). Returns
 * `{audio, video, error}`: when both cannot be had, it tries each alone, so a missing camera
 * still gives a microphone; `error` tells what went wrong with the part that is missing.
 */
export async function openCameraAndMicrophone({ audio = true, video = true, audioDeviceId, videoDeviceId } = {}) {
  if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
    return { audio: null, video: null, error: describeMediaError(null) };
  }
  if (!audio && !video) return { audio: null, video: null, error: null };
  try {
    const s = await navigator.mediaDevices.getUserMedia({
      audio: audio ? audioConstraints(audioDeviceId) : false,
      video: video ? videoConstraints(videoDeviceId) : false,
    });
    return { audio: s.getAudioTracks()[0] || null, video: s.getVideoTracks()[0] || null, error: null };
  } catch (e) {
    const err = describeMediaError(e);
    if (err.kind === 'denied' || !(audio && video)) {
      return { audio: null, video: null, error: err };
    }
    // One of the two may exist alone (a desktop without a camera, a camera already in use).
    let a = null;
    let v = null;
    let partError = null;
    try { a = await openMicrophone(audioDeviceId); } catch (ea) { partError = ea; }
    try { v = await openCamera(videoDeviceId); } catch (ev) { partError = partError || ev; }
    if (!a && !v) return { audio: null, video: null, error: err };
    return { audio: a, video: v, error: partError };
  }
}

/** Opens a screen (or window/tab) capture; resolves null when the person cancels. */
export async function openScreen() {
  if (!navigator.mediaDevices || !navigator.mediaDevices.getDisplayMedia) {
    throw new MediaError('failed', 'This browser cannot share the screen.');
  }
  try {
    const s = await navigator.mediaDevices.getDisplayMedia({
      video: { frameRate: { ideal: 15, max: 30 } },
      audio: false,
    });
    const track = s.getVideoTracks()[0];
    if (track && 'contentHint' in track) track.contentHint = 'detail';
    return track || null;
  } catch (e) {
    if (e.name === 'NotAllowedError' || e.name === 'AbortError') return null; // cancelled
    throw describeMediaError(e, 'screen');
  }
}

/** Lists cameras and microphones: `{cameras: [{deviceId,label}], microphones: [...]}`. */
export async function listDevices() {
  if (!navigator.mediaDevices || !navigator.mediaDevices.enumerateDevices) {
    return { cameras: [], microphones: [] };
  }
  const all = await navigator.mediaDevices.enumerateDevices();
  const pick = (kind, fallback) => all
    .filter((d) => d.kind === kind && d.deviceId !== '')
    .map((d, i) => ({ deviceId: d.deviceId, label: d.label || `${fallback} ${i + 1}` }));
  return { cameras: pick('videoinput', 'Camera'), microphones: pick('audioinput', 'Microphone') };
}

/** The deviceId a live track came from, if the browser says. */
export function deviceIdOf(track) {
  if (!track || !track.getSettings) return undefined;
  return track.getSettings().deviceId || undefined;
}

/** A shared AudioContext, created lazily (browsers may start it suspended until a click). */
let audioCtx = null;
export function audioContext() {
  if (!audioCtx) {
    const Ctx = window.AudioContext || window.webkitAudioContext;
    if (!Ctx) return null;
    audioCtx = new Ctx();
  }
  if (audioCtx.state === 'suspended') audioCtx.resume().catch(() => {});
  return audioCtx;
}

/** Measures a microphone track's level (0..1) with WebAudio. */
export class LevelMeter {
  constructor(track) {
    this.track = track;
    this.ctx = audioContext();
    this.source = null;
    this.analyser = null;
    if (!this.ctx || !track) return;
    try {
      this.source = this.ctx.createMediaStreamSource(new MediaStream([track]));
      this.analyser = this.ctx.createAnalyser();
      this.analyser.fftSize = 512;
      this.buf = new Float32Array(this.analyser.fftSize);
      this.source.connect(this.analyser);
    } catch (e) {
      console.warn('switchboard: no level meter', e);
      this.analyser = null;
    }
  }

  /** Root-mean-square level scaled so speech lands around 0.1-0.5. */
  level() {
    if (!this.analyser || this.track.readyState !== 'live' || !this.track.enabled) return 0;
    this.analyser.getFloatTimeDomainData(this.buf);
    let sum = 0;
    for (let i = 0; i < this.buf.length; i++) sum += this.buf[i] * this.buf[i];
    return Math.min(1, Math.sqrt(sum / this.buf.length) * 3);
  }

  stop() {
    try { if (this.source) this.source.disconnect(); } catch { /* already gone */ }
    this.source = null;
    this.analyser = null;
  }
}

/** Stops a track if there is one. */
export function stopTrack(track) {
  if (track && track.readyState !== 'ended') track.stop();
}
