// A group call in real headless Chromium against the real server: each test makes its own
// room of three separate browser contexts (one browser, one server for the whole file).

import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import {
  startServer, launchBrowser, joinAll, participantIds, waitForDecoding, decodedByParticipant,
  tileOf, tileCount, waitFor, sleep, closeAll, uniqueRoom, artifactsDir,
} from './harness.js';

describe('a three-person call', () => {
  let server;
  let browser;
  let pages = [];

  before(async () => {
    server = await startServer();
    browser = await launchBrowser();
  });

  after(async () => {
    await closeAll(pages);
    if (browser) await browser.close();
    if (server) {
      mkdirSync(artifactsDir, { recursive: true });
      writeFileSync(path.join(artifactsDir, 'server-call.log'), server.log());
      await server.stop();
    }
  });

  /** Three people in a fresh room; the previous test's pages are closed first. */
  async function threeInARoom(prefix) {
    await closeAll(pages);
    pages = await joinAll(browser, server.base, uniqueRoom(prefix), ['Ada', 'Bob', 'Cy']);
    const ids = await participantIds(pages);
    assert.equal(new Set(ids).size, 3, `three distinct participant ids: ${ids}`);
    return ids;
  }

  it('everyone decodes the other two videos and shows three tiles', { timeout: 90_000 }, async () => {
    const ids = await threeInARoom('grid');
    for (let i = 0; i < pages.length; i++) {
      const others = ids.filter((_, j) => j !== i);
      const frames = await waitForDecoding(pages[i], others);
      for (const id of others) {
        const [before, after] = frames[id];
        assert.ok(after > before && before > 0, `${pages[i].displayName} decodes ${id}: ${before} → ${after} frames`);
      }
      console.log(`# ${pages[i].displayName} framesDecoded`, JSON.stringify(frames));
      assert.equal(await tileCount(pages[i]), 3, `${pages[i].displayName} shows three tiles`);
    }
    mkdirSync(artifactsDir, { recursive: true });
    await sleep(1000);
    await pages[0].screenshot({ path: path.join(artifactsDir, 'call.png') });
    for (const p of pages) assert.deepEqual(p.errors, [], `${p.displayName} has no console errors`);
  });

  it('muting is shown on the others', { timeout: 90_000 }, async () => {
    const ids = await threeInARoom('mute');
    const [ada, bob, cy] = pages;
    for (const p of [bob, cy]) {
      assert.equal((await waitFor('Ada tile', () => tileOf(p, ids[0]))).muted, 'false', 'not muted at first');
    }
    await ada.click('#mute');
    assert.equal(await ada.getAttribute('#mute', 'aria-pressed'), 'true');
    for (const p of [bob, cy]) {
      await waitFor(`${p.displayName} to show Ada muted`, async () => (await tileOf(p, ids[0]))?.muted === 'true');
    }
    // and unmuting clears it again
    await ada.click('#mute');
    for (const p of [bob, cy]) {
      await waitFor(`${p.displayName} to show Ada unmuted`, async () => (await tileOf(p, ids[0]))?.muted === 'false');
    }
  });

  it('turning the camera off stops that video for the others', { timeout: 90_000 }, async () => {
    const ids = await threeInARoom('camoff');
    const [ada, bob, cy] = pages;
    for (const p of [ada, cy]) await waitForDecoding(p, [ids[1]]);
    await bob.click('#camera');
    for (const p of [ada, cy]) {
      await waitFor(`${p.displayName} to show Bob's camera off`, async () => (await tileOf(p, ids[1]))?.cameraOff === 'true');
    }
    await sleep(1500); // frames in flight
    for (const p of [ada, cy]) {
      const a = (await decodedByParticipant(p))[ids[1]] || 0;
      await sleep(2000);
      const b = (await decodedByParticipant(p))[ids[1]] || 0;
      assert.equal(b, a, `${p.displayName} decodes no new frames of Bob (${a} → ${b})`);
    }
    // Bob released the camera itself, not just hid it.
    assert.equal(await bob.evaluate(() => window.switchboard.call.local.camera), null);
  });

  it('a screen share appears on the others', { timeout: 90_000 }, async () => {
    const ids = await threeInARoom('screen');
    const [ada, bob, cy] = pages;
    await cy.click('#screen');
    await waitFor('Cy to share', () => cy.evaluate(() => !!window.switchboard.call.local.screen));
    for (const p of [ada, bob]) {
      await waitFor(`${p.displayName} to show Cy's screen on the stage`, () => p.evaluate(
        (id) => !!document.querySelector(`#stage .screen-tile[data-screen-owner="${id}"]`), ids[2]));
      const frames = await waitForDecoding(p, [ids[2]], { source: 'screen' });
      console.log(`# ${p.displayName} screen framesDecoded`, JSON.stringify(frames));
      assert.equal((await tileOf(p, ids[2])).screen, 'true', "Cy's tile says she shares");
    }
    await cy.click('#screen');
    for (const p of [ada, bob]) {
      await waitFor(`${p.displayName} to drop Cy's screen`, () => p.evaluate(() => !document.querySelector('.screen-tile')));
    }
  });

  it('leaving removes the tile on the others', { timeout: 90_000 }, async () => {
    const ids = await threeInARoom('leave');
    const [ada, bob, cy] = pages;
    await cy.click('#leave');
    assert.equal(await cy.evaluate(() => window.switchboard.state), 'left');
    assert.equal(await cy.isVisible('#left'), true, 'Cy sees the "you left" screen');
    for (const p of [ada, bob]) {
      await waitFor(`${p.displayName} to drop Cy's tile`, async () => (await tileOf(p, ids[2])) === null, { timeout: 10_000 });
      assert.equal(await tileCount(p), 2);
    }
  });

  it('a reload rejoins and video decodes again', { timeout: 120_000 }, async () => {
    const ids = await threeInARoom('reload');
    const [ada, bob, cy] = pages;
    await cy.reload();
    await waitFor('Cy to be back in', () => cy.evaluate(() => window.switchboard && window.switchboard.state === 'joined'));
    const newId = await cy.evaluate(() => window.switchboard.participantId);
    for (const p of [ada, bob]) {
      await waitFor(`${p.displayName} to show Cy again`, async () => {
        const t = await p.evaluate(() => [...document.querySelectorAll('#grid .tile[data-participant-id]')].map((e) => [e.dataset.participantId, e.dataset.name]));
        return t.some(([id, name]) => name === 'Cy' && id === newId) && !t.some(([id]) => id === ids[2]);
      });
      const frames = await waitForDecoding(p, [newId]);
      console.log(`# ${p.displayName} decodes reloaded Cy`, JSON.stringify(frames));
      assert.equal(await tileCount(p), 3);
    }
    await waitForDecoding(cy, [ids[0], ids[1]]);
  });
});
