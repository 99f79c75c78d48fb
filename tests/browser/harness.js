// Shared helpers of the browser tests: the real server, real headless Chromium, and page probes.
//
// Nothing is mocked: the tests start the Switchboard binary (SWITCHBOARD_BIN, default
// target/release/switchboard) on loopback in dev mode and drive Debian's /usr/bin/chromium
// (and /usr/bin/firefox-esr, see firefox.js) with fake camera/microphone devices. The page
// helpers take a Playwright page (Chromium) or a puppeteer page (Firefox) alike.

import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import net from 'node:net';
import dgram from 'node:dgram';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';
import { newFirefoxPage } from './firefox.js';

export const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
export const chromiumPath = process.env.CHROMIUM_BIN || '/usr/bin/chromium';
export const artifactsDir = path.join(repoRoot, 'tests', 'browser', 'artifacts');

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function freeTcpPort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

function freeUdpPort() {
  return new Promise((resolve, reject) => {
    const s = dgram.createSocket('udp4');
    s.once('error', reject);
    s.bind(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

/**
 * Starts the real server in dev mode on free loopback ports and waits for /healthz.
 * @returns {Promise<{base: string, stop: () => Promise<void>, log: () => string}>}
 */
export async function startServer({ maxParticipants, httpPort, udpPort } = {}) {
  const bin = path.resolve(repoRoot, process.env.SWITCHBOARD_BIN || 'target/release/switchboard');
  if (!existsSync(bin)) throw new Error(`no server binary at ${bin}: build it (cargo build --release) or set SWITCHBOARD_BIN`);
  httpPort = httpPort || await freeTcpPort();
  udpPort = udpPort || await freeUdpPort();
  const dataDir = mkdtempSync(path.join(tmpdir(), 'switchboard-browser-'));
  const args = ['--http-addr', `127.0.0.1:${httpPort}`, '--udp-port', String(udpPort), '--data-dir', dataDir];
  if (maxParticipants) args.push('--max-participants', String(maxParticipants));
  const env = { ...process.env };
  delete env.SWITCHBOARD_JWT_SECRET; // dev mode: the server hands out tokens
  const child = spawn(bin, args, { env, stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  const keep = (d) => {
    out += d.toString();
    if (out.length > 2_000_000) out = out.slice(-1_000_000);
  };
  child.stdout.on('data', keep);
  child.stderr.on('data', keep);
  let exited = null;
  child.on('exit', (code, sig) => { exited = { code, sig }; });
  const base = `http://127.0.0.1:${httpPort}`;
  const deadline = Date.now() + 20_000;
  for (;;) {
    if (exited) throw new Error(`server exited at start (${JSON.stringify(exited)}):\n${out}`);
    try {
      const r = await fetch(`${base}/healthz`);
      if (r.status === 200) break;
    } catch { /* not listening yet */ }
    if (Date.now() > deadline) {
      child.kill('SIGKILL');
      throw new Error(`server did not answer /healthz within 20 s:\n${out}`);
    }
    await sleep(100);
  }
  return {
    base,
    httpPort,
    udpPort,
    log: () => out,
    async stop() {
      if (!exited) {
        child.kill('SIGTERM');
        const t0 = Date.now();
        while (!exited && Date.now() - t0 < 3000) await sleep(50);
        if (!exited) child.kill('SIGKILL');
        while (!exited) await sleep(20);
      }
      rmSync(dataDir, { recursive: true, force: true });
    },
  };
}

/** The flags of docs/BROWSER.md, plus what Playwright needs to drive the browser. */
export function chromiumArgs(userDataDir, extra = []) {
  return [
    // machine
    '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync',
    '--disable-dev-shm-usage', '--disable-extensions', '--disable-default-apps', '--disable-breakpad',
    '--disable-field-trial-config', '--no-default-browser-check', '--no-service-autorun',
    '--disable-search-engine-choice-screen', '--metrics-recording-only', '--password-store=basic',
    '--use-mock-keychain', '--disable-hang-monitor', '--disable-popup-blocking',
    // keep timers and media running in pages that are not in front
    '--disable-background-timer-throttling', '--disable-backgrounding-occluded-windows',
    '--disable-renderer-backgrounding', '--disable-back-forward-cache',
    // media
    // (--use-fake-ui-for-media-stream also grants permissions and makes getDisplayMedia pick
    // the fake screen without a picker.)
    '--use-fake-device-for-media-stream', '--use-fake-ui-for-media-stream',
    '--allow-loopback-in-peer-connection', '--force-webrtc-ip-handling-policy=default',
    '--autoplay-policy=no-user-gesture-required',
    // Only the last --disable-features counts: ours is the only one (Playwright's own list,
    // which stops requests to outside services, is merged in here).
    '--disable-features=WebRtcHideLocalIpsWithMdns,NetworkTimeServiceQuerying,OptimizationHints,' +
      'MediaRouter,AimEnabled,PreconnectToSearch,LensOverlay,HttpsUpgrades,' +
      'HttpsFirstBalancedModeAutoEnable,DestroyProfileOnBrowserClose,PaintHolding',
    '--enable-features=CDPScreenshotNewSurface',
    // Playwright's connection
    `--user-data-dir=${userDataDir}`, '--remote-debugging-pipe', '--no-startup-window',
    ...extra,
  ];
}

/** Launches headless Chromium with a fresh profile. */
export async function launchBrowser() {
  const userDataDir = mkdtempSync(path.join(tmpdir(), 'switchboard-chromium-'));
  const browser = await chromium.launch({
    executablePath: chromiumPath,
    headless: true,
    // We pass every flag ourselves, so that our --disable-features is the only one.
    ignoreDefaultArgs: true,
    args: chromiumArgs(userDataDir),
    timeout: 30_000,
  });
  const close = browser.close.bind(browser);
  browser.close = async () => {
    await close().catch(() => {});
    rmSync(userDataDir, { recursive: true, force: true });
  };
  return browser;
}

/**
 * A new, isolated browser context with one page; records console errors and page errors.
 * @returns {Promise<import('playwright-core').Page & {errors: string[]}>}
 */
export async function newPage(browser, { width = 1280, height = 720 } = {}) {
  if (browser.isFirefox) return newFirefoxPage(browser, { width, height });
  const context = await browser.newContext({
    viewport: { width, height },
    permissions: ['camera', 'microphone'],
  });
  const page = await context.newPage();
  page.errors = [];
  page.on('console', (m) => {
    if (m.type() === 'error') page.errors.push(`console: ${m.text()}`);
  });
  page.on('pageerror', (e) => page.errors.push(`pageerror: ${e.message}`));
  return page;
}

export function deepLink(base, room, name, autojoin = true) {
  const u = new URL(base + '/');
  u.searchParams.set('room', room);
  u.searchParams.set('name', name);
  if (autojoin) u.searchParams.set('autojoin', '1');
  return u.toString();
}

export function uniqueRoom(prefix) {
  return `${prefix}-${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 8)}`;
}

/** Polls `fn` until it returns a truthy value; throws with `what` after `timeout` ms. */
export async function waitFor(what, fn, { timeout = 20_000, interval = 250 } = {}) {
  const t0 = Date.now();
  let last;
  for (;;) {
    try {
      last = await fn();
      if (last) return last;
    } catch (e) {
      last = e;
    }
    if (Date.now() - t0 > timeout) {
      throw new Error(`timed out after ${timeout} ms waiting for ${what} (last: ${last instanceof Error ? last.message : JSON.stringify(last)})`);
    }
    await sleep(interval);
  }
}

/** Opens the deep link with autojoin and waits until the client says it is in the call. */
export async function joinRoom(browser, base, room, name) {
  const page = await newPage(browser);
  page.displayName = name;
  await page.goto(deepLink(base, room, name));
  await waitFor(`${name} to join ${room}`, () => page.evaluate(() => window.switchboard && window.switchboard.state === 'joined'));
  return page;
}

/** Joins `names` one after another into `room`. */
export async function joinAll(browser, base, room, names) {
  const pages = [];
  for (const n of names) pages.push(await joinRoom(browser, base, room, n));
  return pages;
}

/**
 * Sums of inbound-rtp `fields` per remote participant, from the subscribe connection's
 * getStats() (streams of `kind` whose transceiver mid carries `source`).
 * @returns {Promise<Record<string, Record<string, number>>>} participant id → field → sum
 */
function inboundByParticipant(page, kind, source, fields) {
  return page.evaluate(async ({ kind, source, fields }) => {
    const sb = window.switchboard;
    const pc = sb.pcs.subscribe;
    if (!pc) return {};
    const call = sb.call;
    const report = await pc.getStats();
    const out = {};
    report.forEach((s) => {
      if (s.type !== 'inbound-rtp' || s.kind !== kind) return;
      let mid = s.mid;
      if (mid === undefined) {
        const tr = pc.getTransceivers().find((t) => t.receiver.track && t.receiver.track.id === s.trackIdentifier);
        mid = tr && tr.mid;
      }
      const info = call.midMap.get(String(mid));
      if (!info || info.source !== source) return;
      const o = out[info.participant_id] || Object.fromEntries(fields.map((f) => [f, 0]));
      for (const f of fields) o[f] += s[f] || 0;
      out[info.participant_id] = o;
    });
    return out;
  }, { kind, source, fields });
}

/**
 * Frames decoded per remote participant's camera (or `source`), matched to participants by
 * transceiver mid.
 * @returns {Promise<Record<string, number>>} participant id → framesDecoded
 */
export async function decodedByParticipant(page, source = 'camera') {
  const sums = await inboundByParticipant(page, 'video', source, ['framesDecoded']);
  return Object.fromEntries(Object.entries(sums).map(([pid, o]) => [pid, o.framesDecoded]));
}

/**
 * Received audio per remote participant's microphone, matched to participants by mid.
 * @returns {Promise<Record<string, {packetsReceived: number, totalSamplesReceived: number}>>}
 */
export function audioByParticipant(page) {
  return inboundByParticipant(page, 'audio', 'microphone', ['packetsReceived', 'totalSamplesReceived']);
}

/**
 * Waits until `page` receives the microphone audio of every participant in `pids`: packets
 * received and samples received both growing between two reads 1.5 s apart.
 * Returns {pid: {packets: [before, after], samples: [before, after]}}.
 */
export async function waitForAudio(page, pids, { timeout = 25_000 } = {}) {
  let result;
  await waitFor(`${page.displayName} to receive audio of ${pids.length} participant(s)`, async () => {
    const a = await audioByParticipant(page);
    const grew = (b, k) => pids.every((id) => a[id] && b[id] && a[id][k] > 0 && b[id][k] > a[id][k]);
    if (!pids.every((id) => a[id] && a[id].packetsReceived > 0)) return false;
    await sleep(1500);
    const b = await audioByParticipant(page);
    if (!grew(b, 'packetsReceived') || !grew(b, 'totalSamplesReceived')) return false;
    result = Object.fromEntries(pids.map((id) => [id, {
      packets: [a[id].packetsReceived, b[id].packetsReceived],
      samples: [a[id].totalSamplesReceived, b[id].totalSamplesReceived],
    }]));
    return true;
  }, { timeout, interval: 500 });
  return result;
}

/** Participant id of each page (by its own view). */
export function participantIds(pages) {
  return Promise.all(pages.map((p) => p.evaluate(() => window.switchboard.participantId)));
}

/**
 * Waits until `page` decodes the camera video of every participant in `pids`, with the frame
 * count growing between two reads 1.5 s apart. Returns {pid: [before, after]}.
 */
export async function waitForDecoding(page, pids, { source = 'camera', timeout = 25_000 } = {}) {
  let result;
  await waitFor(`${page.displayName} to decode ${source} video of ${pids.length} participant(s)`, async () => {
    const a = await decodedByParticipant(page, source);
    if (!pids.every((id) => (a[id] || 0) > 0)) return false;
    await sleep(1500);
    const b = await decodedByParticipant(page, source);
    if (!pids.every((id) => (b[id] || 0) > (a[id] || 0))) return false;
    result = Object.fromEntries(pids.map((id) => [id, [a[id], b[id]]]));
    return true;
  }, { timeout, interval: 500 });
  return result;
}

/** Attribute values of the tile of participant `pid` on `page` (null if there is none). */
export function tileOf(page, pid) {
  return page.evaluate((pid) => {
    const el = document.querySelector(`.tile[data-participant-id="${CSS.escape(pid)}"]`);
    if (!el) return null;
    return { ...el.dataset };
  }, pid);
}

/** Number of participant tiles (screen-share tiles are not counted). */
export function tileCount(page) {
  return page.evaluate(() => document.querySelectorAll('#grid .tile[data-participant-id], #stage .tile[data-participant-id]').length);
}

export async function closeAll(pages) {
  await Promise.all(pages.map((p) => p.context().close().catch(() => {})));
}
