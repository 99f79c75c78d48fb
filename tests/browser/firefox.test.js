// The web client in real headless Firefox (Debian's firefox-esr, over WebDriver BiDi) in one
// call with real headless Chromium, against the real server: video and audio both ways, and
// Firefox's mute, camera off and leave as Chromium sees them. See firefox.js for the profile.

import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import {
  startServer, launchBrowser, joinRoom, participantIds, waitForDecoding, decodedByParticipant,
  waitForAudio, tileOf, tileCount, waitFor, sleep, closeAll, uniqueRoom, artifactsDir,
} from './harness.js';
import { launchFirefox } from './firefox.js';

/** The local and remote candidate of the connection's selected pair, as "ip:port". */
function selectedRoute(page, which) {
  return page.evaluate(async (which) => {
    const pc = window.switchboard.pcs[which];
    const report = await pc.getStats();
    const byId = new Map();
    report.forEach((s) => byId.set(s.id, s));
    let pair = null;
    report.forEach((s) => {
      if (s.type === 'transport' && s.selectedCandidatePairId) pair = byId.get(s.selectedCandidatePairId);
    });
    if (!pair) {
      report.forEach((s) => {
        if (s.type === 'candidate-pair' && s.state === 'succeeded' && (s.nominated || s.selected)) pair = s;
      });
    }
    if (!pair) return null;
    const c = (id) => { const x = byId.get(id); return x ? `${x.address}:${x.port}` : '?'; };
    return { local: c(pair.localCandidateId), remote: c(pair.remoteCandidateId) };
  }, which);
}

describe('Firefox in a call with Chromium', () => {
  let server;
  let chromium;
  let firefox;
  let pages = [];

  before(async () => {
    server = await startServer();
    [chromium, firefox] = await Promise.all([launchBrowser(), launchFirefox()]);
  });

  after(async () => {
    await closeAll(pages);
    await Promise.all([chromium && chromium.close(), firefox && firefox.close()]);
    if (server) {
      mkdirSync(artifactsDir, { recursive: true });
      writeFileSync(path.join(artifactsDir, 'server-firefox.log'), server.log());
      await server.stop();
    }
  });

  /** `who` is a list of [browser, name]; they join a fresh room one after another. */
  async function room(prefix, who) {
    await closeAll(pages);
    pages = [];
    const r = uniqueRoom(prefix);
    for (const [browser, name] of who) pages.push(await joinRoom(browser, server.base, r, name));
    const ids = await participantIds(pages);
    assert.equal(new Set(ids).size, who.length, `distinct participant ids: ${ids}`);
    return ids;
  }

  it('two Firefox and one Chromium decode each other\'s video and receive each other\'s audio', { timeout: 90_000 }, async () => {
    const ids = await room('ff-grid', [[firefox, 'Fox'], [chromium, 'Ada'], [firefox, 'Fay']]);
    for (let i = 0; i < pages.length; i++) {
      const p = pages[i];
      const others = ids.filter((_, j) => j !== i);
      const frames = await waitForDecoding(p, others);
      for (const id of others) {
        const [a, b] = frames[id];
        assert.ok(b > a && a > 0, `${p.displayName} decodes ${id}: ${a} → ${b} frames`);
      }
      const sound = await waitForAudio(p, others);
      for (const id of others) {
        const { packets, samples } = sound[id];
        assert.ok(packets[1] > packets[0] && samples[1] > samples[0], `${p.displayName} receives audio of ${id}: ${JSON.stringify(sound[id])}`);
      }
      console.log(`# ${p.displayName} framesDecoded`, JSON.stringify(frames), 'audio', JSON.stringify(sound));
      assert.equal(await tileCount(p), 3, `${p.displayName} shows three tiles`);
    }
    // Firefox's media goes over loopback to the server's one UDP port.
    for (const p of [pages[0], pages[2]]) {
      for (const which of ['publish', 'subscribe']) {
        const route = await selectedRoute(p, which);
        assert.ok(route, `${p.displayName} has a selected ${which} candidate pair`);
        assert.match(route.local, /^127\.0\.0\.1:\d+$/, `${p.displayName} ${which} sends from loopback`);
        assert.equal(route.remote, `127.0.0.1:${server.udpPort}`, `${p.displayName} ${which} talks to the server's UDP port`);
      }
    }
    // Received audio plays: no <audio> element is paused and the "enable sound" button stays hidden.
    for (const p of pages) {
      const audio = await p.evaluate(() => ({
        playing: [...document.querySelectorAll('#audio-sink audio')].map((a) => !a.paused),
        blocked: !document.querySelector('#enable-sound').hidden,
      }));
      assert.deepEqual(audio, { playing: [true, true], blocked: false }, `${p.displayName} plays both audio tracks`);
    }
    mkdirSync(artifactsDir, { recursive: true });
    await pages[0].screenshot({ path: path.join(artifactsDir, 'firefox-call.png') });
    for (const p of pages) assert.deepEqual(p.errors, [], `${p.displayName} has no console errors`);
  });

  it('Firefox muting is shown on Chromium', { timeout: 60_000 }, async () => {
    const ids = await room('ff-mute', [[firefox, 'Fox'], [chromium, 'Ada']]);
    const [fox, ada] = pages;
    assert.equal((await waitFor('Fox tile', () => tileOf(ada, ids[0]))).muted, 'false', 'not muted at first');
    await fox.click('#mute');
    assert.equal(await fox.evaluate(() => document.querySelector('#mute').getAttribute('aria-pressed')), 'true');
    await waitFor('Ada to show Fox muted', async () => (await tileOf(ada, ids[0]))?.muted === 'true');
    await fox.click('#mute');
    await waitFor('Ada to show Fox unmuted', async () => (await tileOf(ada, ids[0]))?.muted === 'false');
  });

  it('Firefox turning the camera off stops its video on Chromium', { timeout: 60_000 }, async () => {
    const ids = await room('ff-camoff', [[firefox, 'Fox'], [chromium, 'Ada']]);
    const [fox, ada] = pages;
    await waitForDecoding(ada, [ids[0]]);
    await fox.click('#camera');
    await waitFor("Ada to show Fox's camera off", async () => (await tileOf(ada, ids[0]))?.cameraOff === 'true');
    await sleep(1500); // frames in flight
    const a = (await decodedByParticipant(ada))[ids[0]] || 0;
    await sleep(2000);
    const b = (await decodedByParticipant(ada))[ids[0]] || 0;
    assert.equal(b, a, `Ada decodes no new frames of Fox (${a} → ${b})`);
    assert.equal(await fox.evaluate(() => window.switchboard.call.local.camera), null, 'Fox released the camera');
    // and on again: Ada decodes Fox again
    await fox.click('#camera');
    await waitFor("Ada to show Fox's camera on", async () => (await tileOf(ada, ids[0]))?.cameraOff === 'false');
    await waitForDecoding(ada, [ids[0]]);
  });

  it('Firefox leaving removes its tile on Chromium, and the other way round', { timeout: 60_000 }, async () => {
    const ids = await room('ff-leave', [[firefox, 'Fox'], [chromium, 'Ada'], [firefox, 'Fay']]);
    const [fox, ada, fay] = pages;
    await fox.click('#leave');
    assert.equal(await fox.evaluate(() => window.switchboard.state), 'left');
    assert.equal(await fox.evaluate(() => !document.querySelector('#left').hidden), true, 'Fox sees the "you left" screen');
    for (const p of [ada, fay]) {
      await waitFor(`${p.displayName} to drop Fox's tile`, async () => (await tileOf(p, ids[0])) === null, { timeout: 10_000 });
      assert.equal(await tileCount(p), 2);
    }
    await ada.click('#leave');
    await waitFor("Fay to drop Ada's tile", async () => (await tileOf(fay, ids[1])) === null, { timeout: 10_000 });
    assert.equal(await tileCount(fay), 1);
  });
});
