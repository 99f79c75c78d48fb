// The lobby served by the real binary loads cleanly in real headless Chromium.

import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync } from 'node:fs';
import path from 'node:path';
import { startServer, launchBrowser, newPage, waitFor, artifactsDir } from './harness.js';

describe('the lobby', () => {
  let server;
  let browser;

  before(async () => {
    server = await startServer();
    browser = await launchBrowser();
  });

  after(async () => {
    if (browser) await browser.close();
    if (server) await server.stop();
  });

  it('loads with no errors in the console', { timeout: 60_000 }, async () => {
    const page = await newPage(browser);
    const failed = [];
    page.on('requestfailed', (r) => failed.push(r.url()));
    const res = await page.goto(`${server.base}/?room=standup&name=Ada`);
    assert.equal(res.status(), 200);
    await waitFor('the preview to start', () => page.evaluate(() => document.querySelector('#status').textContent === 'Ready to join'));
    assert.equal(await page.inputValue('#room-input'), 'standup');
    assert.equal(await page.inputValue('#name-input'), 'Ada');
    assert.match(await page.inputValue('#invite-link'), /\/\?room=standup$/);
    assert.equal(await page.isVisible('#error'), false, 'no error banner');
    // Camera preview shows frames and both device lists are filled.
    await waitFor('preview frames', () => page.evaluate(() => document.querySelector('#preview').videoWidth > 0));
    assert.ok(await page.$$eval('#camera-select option', (o) => o.filter((x) => x.value).length) >= 1);
    assert.ok(await page.$$eval('#mic-select option', (o) => o.filter((x) => x.value).length) >= 1);
    // "New room" makes an unguessable id and updates the invite link.
    await page.click('#new-room');
    const room = await page.inputValue('#room-input');
    assert.match(room, /^[a-z2-9]{4}(-[a-z2-9]{4}){3}$/);
    assert.ok((await page.inputValue('#invite-link')).endsWith(`?room=${room}`));
    mkdirSync(artifactsDir, { recursive: true });
    await page.screenshot({ path: path.join(artifactsDir, 'lobby.png') });
    assert.deepEqual(page.errors, [], 'no console errors');
    assert.deepEqual(failed, [], 'no failed requests');
    await page.context().close();
  });
});
