// Headless Firefox for the browser tests: Debian's /usr/bin/firefox-esr driven over WebDriver
// BiDi by puppeteer-core (Playwright only drives its own patched Firefox builds).
//
// Firefox and loopback ICE: `media.peerconnection.ice.loopback` lets Firefox gather 127.0.0.1,
// but only where it gathers on every interface, which it does for a page that holds a camera or
// microphone permission. Capturing the fake devices (`media.navigator.streams.fake`) without a
// prompt is not enough: such a page gets the default-route address alone, and in a
// loopback-only network namespace no candidate at all. So the profile allows camera and
// microphone by default (`permissions.default.camera/microphone = 1`, the prompt's "Allow");
// BiDi's `permissions.setPermission` does not support `camera` in Firefox 153.

import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import puppeteer from 'puppeteer-core';

export const firefoxPath = process.env.FIREFOX_BIN || '/usr/bin/firefox-esr';

/** Profile preferences: WebRTC on loopback with fake devices, and no background networking. */
export const firefoxPrefs = {
  // media
  'media.navigator.streams.fake': true, // an animated test pattern and a 1 kHz tone
  'media.navigator.permission.disabled': true, // no permission prompt
  'permissions.default.camera': 1, // allowed: see the top of this file
  'permissions.default.microphone': 1,
  'media.peerconnection.ice.loopback': true, // gather 127.0.0.1
  'media.peerconnection.ice.obfuscate_host_addresses': false, // no mDNS names
  'media.peerconnection.ice.default_address_only': false,
  'media.autoplay.default': 0, // <audio>/<video> may play without a click
  'media.autoplay.blocking_policy': 0,
  // keep timers and media running in tabs that are not in front
  'dom.min_background_timeout_value': 4,
  'dom.timeout.enable_budget_timer_throttling': false,
  'media.suspend-bkgnd-video.enabled': false,
  'media.block-autoplay-until-in-foreground': false,
  // Quiet: puppeteer's profile already turns off updates, telemetry, safe browsing and
  // add-on checks, and points the remote settings at a dummy host; these are the rest.
  'network.captive-portal-service.enabled': false,
  'network.connectivity-service.enabled': false,
  'network.dns.disablePrefetch': true,
  'network.prefetch-next': false,
  'browser.region.network.url': '',
  'browser.region.update.enabled': false,
  'app.normandy.enabled': false,
  'toolkit.telemetry.enabled': false,
};

/** Launches headless Firefox ESR with a fresh profile. */
export async function launchFirefox() {
  const userDataDir = mkdtempSync(path.join(tmpdir(), 'switchboard-firefox-'));
  const browser = await puppeteer.launch({
    browser: 'firefox',
    protocol: 'webDriverBiDi',
    executablePath: firefoxPath,
    headless: true,
    userDataDir,
    extraPrefsFirefox: firefoxPrefs,
    env: { ...process.env, MOZ_HEADLESS: '1' },
    timeout: 30_000,
  });
  browser.isFirefox = true;
  const close = browser.close.bind(browser);
  browser.close = async () => {
    await close().catch(() => {});
    rmSync(userDataDir, { recursive: true, force: true });
  };
  return browser;
}

/**
 * A new page in its own browser context (its own cookies and storage), recording console
 * errors and page errors like the Chromium pages of harness.js.
 */
export async function newFirefoxPage(browser, { width = 1280, height = 720 } = {}) {
  const context = await browser.createBrowserContext();
  const page = await context.newPage();
  await page.setViewport({ width, height });
  page.errors = [];
  page.on('console', (m) => {
    if (m.type() === 'error') page.errors.push(`console: ${m.text()}`);
  });
  page.on('pageerror', (e) => page.errors.push(`pageerror: ${e.message}`));
  // The same name as Playwright's, so harness helpers can close either.
  page.context = () => context;
  return page;
}
