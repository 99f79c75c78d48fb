// A WHIP publisher from an independent stack (aiortc) is seen and decoded in the web client.

import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import path from 'node:path';
import {
  startServer, launchBrowser, joinRoom, waitFor, waitForDecoding, closeAll, uniqueRoom, repoRoot,
} from './harness.js';

describe('WHIP into a room', () => {
  let server;
  let browser;
  let publisher;
  const pages = [];

  before(async () => {
    server = await startServer();
    browser = await launchBrowser();
  });

  after(async () => {
    if (publisher) publisher.kill();
    await closeAll(pages);
    if (browser) await browser.close();
    if (server) await server.stop();
  });

  it('a browser participant decodes the WHIP publisher\'s video', { timeout: 90_000 }, async () => {
    const room = uniqueRoom('whip');
    const page = await joinRoom(browser, server.base, room, 'Ada');
    pages.push(page);
    const own = await page.evaluate(() => window.switchboard.participantId);

    const res = await fetch(`${server.base}/api/dev/token`, {
      method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ name: 'OBS', room }),
    });
    const { token } = await res.json();
    const client = path.join(repoRoot, 'tests', 'whip', 'client.py');
    publisher = spawn('python3', [client, 'publish', `${server.base}/whip/${room}`, token, '40'], { stdio: ['ignore', 'pipe', 'inherit'] });
    let out = '';
    publisher.stdout.on('data', (d) => { out += d; });
    await waitFor('the WHIP answer', () => out.includes('"status": 201'));

    let whipId;
    await waitFor('a tile for the WHIP publisher', async () => {
      whipId = await page.evaluate((own) => {
        const t = [...document.querySelectorAll('#grid .tile[data-participant-id]')]
          .find((el) => el.dataset.participantId !== own);
        return t && t.dataset.participantId;
      }, own);
      return Boolean(whipId);
    });
    assert.match(await page.textContent(`.tile[data-participant-id="${whipId}"]`), /OBS/);
    const frames = await waitForDecoding(page, [whipId]);
    assert.ok(frames[whipId][1] > frames[whipId][0], `frames grow: ${JSON.stringify(frames)}`);
  });
});
