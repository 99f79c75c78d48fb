// Drawing the call: video tiles, the grid layout, remote audio, the participant list, the
// health panel, banners and toasts. Nothing here talks to the server.

import { fmtMs, fmtKbps, fmtPct, POOR } from './stats.js';

export const $ = (sel, root = document) => root.querySelector(sel);

function initials(name) {
  const parts = String(name || '?').trim().split(/\s+/).filter(Boolean);
  if (parts.length === 0) return '?';
  return (parts[0][0] + (parts.length > 1 ? parts[parts.length - 1][0] : '')).toUpperCase();
}

/**
 * Best tile size for `n` tiles of aspect `ratio` in a `w`×`h` box with `gap` between them:
 * tries every column count and keeps the one giving the largest tiles.
 */
export function fitGrid(n, w, h, gap = 10, ratio = 16 / 9) {
  let best = { cols: 1, rows: 1, tw: 0, th: 0 };
  if (n <= 0 || w <= 0 || h <= 0) return best;
  for (let cols = 1; cols <= n; cols++) {
    const rows = Math.ceil(n / cols);
    let tw = (w - gap * (cols - 1)) / cols;
    let th = tw / ratio;
    if (th * rows + gap * (rows - 1) > h) {
      th = (h - gap * (rows - 1)) / rows;
      tw = th * ratio;
    }
    if (tw > best.tw) best = { cols, rows, tw: Math.floor(tw), th: Math.floor(th) };
  }
  return best;
}

/** The video tiles: one per participant (self included), one more per screen share. */
export class TileView {
  constructor({ main, grid, stage, template }) {
    this.main = main;
    this.grid = grid;
    this.stage = stage;
    this.template = template;
    /** key → {el, video, track} */
    this.tiles = new Map();
    this.speaker = null;
    this.ro = new ResizeObserver(() => this.layout());
    this.ro.observe(main);
  }

  /**
   * @param {Array<{key, participantId, name, self, muted, cameraOff, sharing, screenTile, videoTrack, reconnecting}>} items
   */
  render(items) {
    const keep = new Set(items.map((i) => i.key));
    for (const [key, t] of this.tiles) {
      if (!keep.has(key)) {
        t.video.srcObject = null;
        t.el.remove();
        this.tiles.delete(key);
      }
    }
    const screen = items.find((i) => i.screenTile);
    for (const item of items) {
      let t = this.tiles.get(item.key);
      if (!t) {
        const el = this.template.content.firstElementChild.cloneNode(true);
        t = { el, video: el.querySelector('video'), track: undefined };
        this.tiles.set(item.key, t);
      }
      const el = t.el;
      if (item.screenTile) {
        el.classList.add('screen-tile');
        el.dataset.screenOwner = item.participantId;
        delete el.dataset.participantId;
      } else if (item.participantId) {
        el.dataset.participantId = item.participantId;
      }
      el.dataset.name = item.name;
      el.dataset.self = String(!!item.self);
      el.dataset.muted = String(!!item.muted);
      el.dataset.cameraOff = String(!!item.cameraOff);
      el.dataset.screen = String(!!(item.screenTile || item.sharing));
      el.dataset.reconnecting = String(!!item.reconnecting);
      el.dataset.speaking = String(!item.screenTile && item.participantId === this.speaker && !!this.speaker);
      const label = item.screenTile ? `${item.name}'s screen` : item.self ? `${item.name} (you)` : item.name;
      el.querySelector('.name').textContent = label;
      el.setAttribute('aria-label', label + (item.muted && !item.screenTile ? ', muted' : '') +
        (item.cameraOff && !item.screenTile ? ', camera off' : ''));
      el.querySelector('.avatar span').textContent = initials(item.name);
      if (t.track !== item.videoTrack) {
        t.track = item.videoTrack;
        t.video.srcObject = item.videoTrack ? new MediaStream([item.videoTrack]) : null;
        if (item.videoTrack) t.video.play().catch(() => {});
      }
      // Where it goes: a screen share takes the stage, everyone else the grid (in order).
      const parent = screen && item.key === screen.key ? this.stage : this.grid;
      if (el.parentElement !== parent) parent.appendChild(el);
    }
    // Keep grid order stable: the order of `items`.
    for (const item of items) {
      const t = this.tiles.get(item.key);
      if (t.el.parentElement === this.grid) this.grid.appendChild(t.el);
    }
    this.stage.hidden = !screen;
    this.main.classList.toggle('has-stage', !!screen);
    this.layout();
  }

  setSpeaker(pid) {
    this.speaker = pid;
    for (const t of this.tiles.values()) {
      const isScreen = t.el.classList.contains('screen-tile');
      t.el.dataset.speaking = String(!isScreen && !!pid && t.el.dataset.participantId === pid);
    }
  }

  layout() {
    if (this.main.classList.contains('has-stage')) return; // the filmstrip sizes itself in CSS
    const n = this.grid.children.length;
    const r = this.grid.getBoundingClientRect();
    // Portrait screens (phones) get squarer tiles; video is cropped to fill them.
    const fit = fitGrid(n, r.width, r.height, 10, r.height > r.width ? 4 / 3 : 16 / 9);
    this.grid.style.setProperty('--tile-w', `${fit.tw}px`);
    this.grid.style.setProperty('--tile-h', `${fit.th}px`);
    this.grid.dataset.cols = String(fit.cols);
  }

  clear() {
    this.render([]);
  }
}

/** Plays every received audio track through its own <audio> element. */
export class AudioSink {
  constructor(container, enableButton) {
    this.container = container;
    this.button = enableButton;
    this.els = new Map();
    this.button.addEventListener('click', () => {
      for (const el of this.els.values()) el.play().catch(() => {});
      this.button.hidden = true;
    });
  }

  sync(tracks) {
    const ids = new Set(tracks.map((t) => t.id));
    for (const [id, el] of this.els) {
      if (!ids.has(id)) {
        el.srcObject = null;
        el.remove();
        this.els.delete(id);
      }
    }
    for (const track of tracks) {
      if (this.els.has(track.id)) continue;
      const el = document.createElement('audio');
      el.autoplay = true;
      el.srcObject = new MediaStream([track]);
      this.container.appendChild(el);
      this.els.set(track.id, el);
      el.play().catch(() => {
        // Autoplay with sound needs a click first on some browsers.
        this.button.hidden = false;
      });
    }
  }
}

/** The people panel. */
export function renderPeople(list, people, speaker) {
  const frag = document.createDocumentFragment();
  for (const p of people) {
    const li = document.createElement('li');
    li.dataset.participantId = p.participantId || '';
    li.dataset.speaking = String(!!speaker && p.participantId === speaker);
    const av = document.createElement('span');
    av.className = 'pav';
    av.textContent = initials(p.name);
    const name = document.createElement('span');
    name.className = 'pname';
    name.textContent = p.self ? `${p.name} (you)` : p.name;
    const st = document.createElement('span');
    st.className = 'pstate';
    const icon = (id, label, off) => {
      const svg = document.createElementNS('http://www.w3.org/2000/svg', 'svg');
      svg.setAttribute('class', `icon${off ? ' off' : ''}`);
      svg.setAttribute('role', 'img');
      svg.setAttribute('aria-label', label);
      const use = document.createElementNS('http://www.w3.org/2000/svg', 'use');
      use.setAttribute('href', id);
      svg.appendChild(use);
      return svg;
    };
    st.appendChild(p.muted ? icon('#i-mic-off', 'muted', true) : icon('#i-mic', 'microphone on'));
    st.appendChild(p.cameraOff ? icon('#i-cam-off', 'camera off', true) : icon('#i-cam', 'camera on'));
    if (p.sharing) st.appendChild(icon('#i-screen', 'sharing screen'));
    li.append(av, name, st);
    frag.appendChild(li);
  }
  list.replaceChildren(frag);
}

/** Fills the health table for one connection summary (see stats.js). */
export function renderHealth(root, kind, h) {
  const set = (name, text, bad = false) => {
    const el = root.querySelector(`[data-stat="${kind}-${name}"]`);
    if (!el) return;
    el.textContent = text;
    el.dataset.bad = String(bad);
  };
  if (!h) {
    for (const n of ['state', 'rtt', 'send', 'recv', 'loss', 'route']) set(n, '–');
    return;
  }
  set('state', h.connectionState || '–', h.quality === 'down');
  set('rtt', fmtMs(h.rttMs), h.rttMs !== null && h.rttMs >= POOR.rttMs);
  set('send', fmtKbps(h.sendKbps));
  set('recv', fmtKbps(h.recvKbps));
  set('loss', fmtPct(h.lossPct), h.lossPct !== null && h.lossPct >= POOR.lossPct);
  set('route', h.route || '–');
}

/** Short messages that fade by themselves. */
export function toast(container, text, level = 'info') {
  const el = document.createElement('div');
  el.className = 'toast';
  el.dataset.level = level;
  el.textContent = text;
  container.appendChild(el);
  setTimeout(() => el.remove(), 4200);
  while (container.children.length > 3) container.firstElementChild.remove();
}

export function fmtDuration(ms) {
  const s = Math.max(0, Math.floor(ms / 1000));
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  const sec = s % 60;
  const two = (v) => String(v).padStart(2, '0');
  return h > 0 ? `${h}:${two(m)}:${two(sec)}` : `${two(m)}:${two(sec)}`;
}
