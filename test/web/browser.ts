import { chmodSync, existsSync, mkdirSync, writeFileSync } from 'node:fs';
import { connect, createServer, type Server } from 'node:net';
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

/**
 * Opens a browser with its profile in `runDir`; a page of `width`×`height` by default. Given
 * `base` (https://127.0.0.1:PORT), the browser has a network namespace of its own
 * (test/web/netns-forward.ts, decision 0037), where only that port of 127.0.0.1 is reachable,
 * carried to the same port on the host's 127.0.0.1 (`reach` adds more): other tests' bridges
 * and veths coming and going on the host made Chromium fail requests with
 * ERR_NETWORK_CHANGED. The namespace ends with the browser. Without `base` the browser shares
 * the host's network.
 */
export async function openBrowser(
  runDir: string,
  options: { width?: number; height?: number; base?: string } = {},
): Promise<BrowserContext> {
  if (!existsSync(CHROMIUM)) {
    throw new Error(
      `${CHROMIUM} is missing: setup/test installs Debian's chromium package (apt-get install chromium)`,
    );
  }
  const relays: Server[] = [];
  let executablePath = CHROMIUM;
  const socketDir = path.join(runDir, 'chromium-netns');
  if (options.base !== undefined) {
    const port = portOf(options.base);
    mkdirSync(socketDir, { recursive: true });
    relays.push(await relay(socketDir, port));
    // Playwright runs one executable with Chromium's arguments: this one makes the namespace first.
    executablePath = path.join(socketDir, 'chromium');
    writeFileSync(
      executablePath,
      `#!/bin/sh\nexec unshare --net -- '${process.execPath}' '${path.join(import.meta.dirname, 'netns-forward.ts')}' '${socketDir}' ${port} -- '${CHROMIUM}' "$@"\n`,
    );
    chmodSync(executablePath, 0o755);
  }
  const context = await chromium
    .launchPersistentContext(path.join(runDir, 'chromium-profile'), {
      executablePath,
      headless: true,
      args: FLAGS,
      ignoreHTTPSErrors: true,
      // axe-core is injected into the pages under test, which the UI's CSP would refuse.
      bypassCSP: true,
      viewport: { width: options.width ?? 1280, height: options.height ?? 900 },
      timeout: 60_000,
    })
    .catch((e: unknown) => {
      for (const r of relays) r.close();
      throw e;
    });
  if (options.base !== undefined) reachable.set(context, { socketDir, relays });
  context.on('close', () => {
    for (const r of relays) r.close();
  });
  return context;
}

/** The browsers' namespaces: where their relays' sockets are, and the relays. */
const reachable = new WeakMap<BrowserContext, { socketDir: string; relays: Server[] }>();

function portOf(base: string): number {
  const url = new URL(base);
  if (url.hostname !== '127.0.0.1' || !url.port)
    throw new Error(`the browser reaches 127.0.0.1:PORT only, not ${base}`);
  return Number(url.port);
}

/** Carries each connection that arrives at SOCKET_DIR/PORT.sock to the host's 127.0.0.1:PORT. */
async function relay(socketDir: string, port: number): Promise<Server> {
  const server = createServer((client) => {
    const upstream = connect(port, '127.0.0.1');
    client.pipe(upstream).pipe(client);
    client.on('error', () => upstream.destroy());
    upstream.on('error', () => client.destroy());
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(path.join(socketDir, `${port}.sock`), resolve);
  });
  server.unref();
  return server;
}

/** Makes `base` (another server on 127.0.0.1 of the host) reachable from the browser of `context` too. */
export async function reach(context: BrowserContext, base: string): Promise<void> {
  const ns = reachable.get(context);
  if (!ns) throw new Error('not a browser of openBrowser with a base');
  const port = portOf(base);
  if (!existsSync(path.join(ns.socketDir, `${port}.sock`))) ns.relays.push(await relay(ns.socketDir, port));
  const answer = await new Promise<string>((resolve, reject) => {
    const c = connect(path.join(ns.socketDir, 'control.sock'));
    let text = '';
    c.setEncoding('utf8');
    c.on('data', (chunk: string) => {
      text += chunk;
    });
    c.on('end', () => resolve(text.trim()));
    c.on('error', reject);
    c.write(`${port}\n`);
  });
  if (answer !== 'ok') throw new Error(`the browser's namespace cannot listen on ${port}: ${answer}`);
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
