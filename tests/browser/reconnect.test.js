// When the server goes away and comes back, the client rejoins by itself and says so.

import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import {
  startServer, launchBrowser, joinAll, participantIds, waitForDecoding, waitFor, closeAll, uniqueRoom, tileCount,
} from './harness.js';

describe('losing the server', () => {
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
    if (server) await server.stop();
  });

  it('reconnects after a server restart and media flows again', { timeout: 120_000 }, async () => {
    const room = uniqueRoom('restart');
    pages = await joinAll(browser, server.base, room, ['Ada', 'Bob']);
    const before = await participantIds(pages);
    const { httpPort, udpPort } = server;
    await server.stop();
    server = null;
    for (const p of pages) {
      await waitFor(`${p.displayName} to notice`, () => p.evaluate(() => window.switchboard.state === 'reconnecting'));
      assert.match(await p.textContent('#status'), /reconnecting/i, 'the status line says so');
      assert.equal(await p.isVisible('#error'), true, 'a banner says so');
    }
    server = await startServer({ httpPort, udpPort });
    for (const p of pages) {
      await waitFor(`${p.displayName} to be back`, () => p.evaluate(() => window.switchboard.state === 'joined'), { timeout: 30_000 });
    }
    const after = await participantIds(pages);
    assert.notDeepEqual(after, before, 'fresh participants after the rejoin');
    for (const [i, p] of pages.entries()) {
      await waitFor(`${p.displayName} to see two tiles`, async () => (await tileCount(p)) === 2);
      await waitForDecoding(p, [after[1 - i]]);
      assert.equal(await p.isVisible('#error'), false, 'the banner is gone');
    }
  });
});
