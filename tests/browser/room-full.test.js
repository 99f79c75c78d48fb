// One more person than --max-participants allows is told the room is full.

import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import {
  startServer, launchBrowser, joinAll, newPage, deepLink, waitFor, closeAll, uniqueRoom,
} from './harness.js';

describe('a full room', () => {
  let server;
  let browser;
  const pages = [];

  before(async () => {
    server = await startServer({ maxParticipants: 2 });
    browser = await launchBrowser();
  });

  after(async () => {
    await closeAll(pages);
    if (browser) await browser.close();
    if (server) await server.stop();
  });

  it('shows "room full" to the one too many', { timeout: 60_000 }, async () => {
    const room = uniqueRoom('full');
    pages.push(...await joinAll(browser, server.base, room, ['Ada', 'Bob']));
    const late = await newPage(browser);
    pages.push(late);
    await late.goto(deepLink(server.base, room, 'Cy'));
    await waitFor('the room-full message', () => late.evaluate(() => document.querySelector('#error').dataset.code === 'room_full'));
    assert.equal(await late.isVisible('#error'), true);
    assert.match(await late.textContent('#error-text'), /room is full/i);
    assert.notEqual(await late.evaluate(() => window.switchboard.state), 'joined');
    assert.equal(await late.isVisible('#lobby'), true, 'back in the lobby');
    // The two inside are not disturbed.
    for (const p of pages.slice(0, 2)) {
      assert.equal(await p.evaluate(() => window.switchboard.state), 'joined');
      assert.equal(await p.locator('#grid .tile[data-participant-id]').count(), 2);
    }
  });
});
