import { existsSync } from 'node:fs';
import path from 'node:path';
import { type BrowserContext, chromium, type Page } from 'playwright-core';

/**
 * Debian's Chromium, headless, driven by playwright-core: no browser is downloaded (none can
 * be). Its profile lives in the test's run directory, so that a sweep of a killed run removes
 * the browser with it (test/leftovers.ts kills processes that name the directory). Without the
 * background-networking flags this Chromium's connections are refused, many at a time.
 */
export const CHROMIUM = process.env.TRIVISOR_CHROMIUM ?? '/usr/bin/chromium';

const FLAGS = [
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
];

/** Opens a browser with its profile in `runDir`; a page of `width`×`height` by default. */
export async function openBrowser(
  runDir: string,
  options: { width?: number; height?: number } = {},
): Promise<BrowserContext> {
  if (!existsSync(CHROMIUM)) {
    throw new Error(
      `${CHROMIUM} is missing: setup/test installs Debian's chromium package (apt-get install chromium)`,
    );
  }
  return chromium.launchPersistentContext(path.join(runDir, 'chromium-profile'), {
    executablePath: CHROMIUM,
    headless: true,
    args: FLAGS,
    ignoreHTTPSErrors: true,
    // axe-core is injected into the pages under test, which the UI's CSP would refuse.
    bypassCSP: true,
    viewport: { width: options.width ?? 1280, height: options.height ?? 900 },
    timeout: 60_000,
  });
}

/** Signs a page in with `token` at `base` and waits for the shell. */
export async function signIn(page: Page, base: string, token: string, next = '/'): Promise<void> {
  await page.goto(`${base}/login?next=${encodeURIComponent(next)}`);
  await page.fill('#token', token);
  await page.click('button[type=submit]');
  await page.waitForSelector('nav.side', { state: 'attached', timeout: 30_000 });
}

/** Text of every row of an xterm.js terminal on the page. */
export async function terminalText(page: Page): Promise<string> {
  const rows = await page.locator('[data-testid=terminal] .xterm-rows > div').allTextContents();
  return rows.join('\n');
}
