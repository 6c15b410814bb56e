import assert from 'node:assert/strict';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import type { BrowserContext, Page } from 'playwright-core';
import { makeRunDir, removeRunDir } from '../leftovers.ts';
import { openBrowser, signIn } from './browser.ts';
import { type FixtureBackend, startFixtureBackend } from './fixture-backend.ts';

const INVENTORY = path.resolve(import.meta.dirname, '../fixtures/planner/day-night.csv');

/**
 * Four workloads over 14 days, hourly, 1.5 cores busy each on day 0 growing 10% a week: one host
 * of 8 cores as measured, two with their trend carried 14 days ahead (as src/cli/plan-forecast.test.ts).
 */
function growingInventory(): Buffer {
  const lines = ['id,cpu,memory,timestamp,cpu_used,memory_used'];
  const start = Date.parse('2026-11-01T00:00:00Z') / 1000;
  for (const id of ['app1', 'app2', 'app3', 'app4']) {
    for (let h = 0; h < 14 * 24; h++) {
      const used = 1.5 * (1 + (0.1 * h) / 24 / 7) * (1 + 0.02 * Math.sin(h + id.length));
      lines.push(`${id},4,4GiB,${start + h * 3600},${used.toFixed(4)},1GiB`);
    }
  }
  return Buffer.from(`${lines.join('\n')}\n`);
}

/**
 * The Plan page (issue 14 §4, decision 0065) in Debian's headless Chromium, over the fixture
 * backend whose planner is the daemon's own (a worker thread): an uploaded inventory planned.
 */
describe('web UI: the consolidation plan page', () => {
  let runDir: string;
  let backend: FixtureBackend;
  let context: BrowserContext;
  let page: Page;
  const errors: string[] = [];

  before(async () => {
    runDir = await makeRunDir('web-plan');
    backend = await startFixtureBackend(runDir, { guests: 12 });
    context = await openBrowser(runDir, { base: backend.url });
    page = context.pages()[0] ?? (await context.newPage());
    page.on('pageerror', (e) => errors.push(String(e)));
    await signIn(page, backend.url, backend.token);
  });
  after(async () => {
    await context?.close();
    await backend?.close();
    if (runDir) await removeRunDir(runDir);
  });

  test('uploading an inventory shows the hosts needed, the lower bound, overload, headroom, each host and the SVG of its load', async () => {
    await page.goto(`${backend.url}/plan`);
    await page.getByRole('link', { name: 'Plan' }).waitFor();
    await page.setInputFiles('#f-inventory', INVENTORY);
    await page.fill('#f-host-size', 'cpu=4,memory=16GiB');
    await page.click('form[aria-label="Plan a consolidation"] button[type=submit]');
    await page.locator('[data-testid=plan-hosts]').waitFor({ timeout: 60_000 });
    assert.equal(await page.locator('[data-testid=plan-hosts]').textContent(), '2');
    assert.match(
      (await page.locator('[data-testid=plan-lower-bound]').textContent()) ?? '',
      /lower bound 2 /,
    );
    assert.equal(await page.locator('[data-testid=plan-overload]').textContent(), '0.00%');
    assert.equal(await page.locator('[data-testid=plan-headroom]').textContent(), '12.5 points');
    assert.match(
      (await page.locator('[data-testid=plan-source]').textContent()) ?? '',
      /^day-night\.csv: 4 workloads \(trivisor, 8 samples of 300 s\), hosts of 4 cores, 16 GiB/,
    );
    // Each host runs one day and one night workload: their peaks come at different times.
    const rows = page.locator('table[aria-label="Planned hosts"] tbody tr');
    assert.equal(await rows.count(), 2);
    for (const text of await rows.allTextContents()) assert.match(text, /^host\d2(88%){2}0(batch\d, web\d)$/);
    // The picture: the daemon's SVG, drawn by the browser as an image (loaded, with a size).
    const img = page.locator('img[data-testid=plan-svg]');
    assert.match((await img.getAttribute('src')) ?? '', /^data:image\/svg\+xml/);
    const size = await img.evaluate((el) => {
      // No DOM types here (the daemon's tsconfig): the image's fields as the page has them.
      const i = el as unknown as { complete: boolean; naturalWidth: number; naturalHeight: number };
      return { complete: i.complete, width: i.naturalWidth, height: i.naturalHeight };
    });
    assert.ok(size.complete && size.width === 720 && size.height > 100, JSON.stringify(size));
    assert.deepEqual(errors, []);
  });

  test('a bad host size and a bad inventory are each one line, and the shown plan stays', async () => {
    await page.setInputFiles('#f-inventory', INVENTORY);
    await page.fill('#f-host-size', 'cpu=lots');
    await page.click('form[aria-label="Plan a consolidation"] button[type=submit]');
    await page
      .locator('.notice.error', { hasText: 'The host\'s cpu "lots" must be a positive number' })
      .waitFor();
    await page.setInputFiles('#f-inventory', {
      name: 'broken.csv',
      mimeType: 'text/csv',
      buffer: Buffer.from('id,cpu,memory,timestamp,cpu_used,memory_used\nweb1,4,,2026-12-01T00:00:00Z,x,\n'),
    });
    await page.fill('#f-host-size', 'cpu=4');
    await page.click('form[aria-label="Plan a consolidation"] button[type=submit]');
    await page
      .locator('.notice.error', { hasText: 'inventory.csv:2: cpu_used of web1 "x" is not a number' })
      .waitFor();
    assert.equal(await page.locator('[data-testid=plan-hosts]').textContent(), '2');
    assert.deepEqual(errors, []);
  });

  test("with the workloads' profiles, each workload's recommended model and reason, and which have none", async () => {
    await page.setInputFiles('#f-inventory', INVENTORY);
    await page.fill('#f-host-size', 'cpu=4,memory=16GiB');
    await page.setInputFiles('#f-workload-profiles', {
      name: 'profiles.csv',
      mimeType: 'text/csv',
      buffer: Buffer.from('id,os,cpu,memory\nweb2,other,3,3GiB\nbatch1,linux,3,1GiB\n'),
    });
    await page.click('form[aria-label="Plan a consolidation"] button[type=submit]');
    const web2 = page.locator('table[aria-label="Recommended models"] tr[data-workload=web2]');
    await web2.waitFor({ timeout: 60_000 });
    // The reason, and, where this host's measured vm (TCG here) cannot carry 3 busy cores, the
    // advisor's contention note (decision 0054).
    assert.match(
      (await web2.textContent()) ?? '',
      /^web2host\dvmvm: needs a non-Linux kernel(; even so vm cannot keep up: it would need [\d.]+ cores of \d+, \d+% of the measured rates)?$/,
    );
    assert.equal(await page.locator('table[aria-label="Recommended models"] tbody tr').count(), 2);
    assert.match(
      (await page.locator('[data-testid=plan-result]').textContent()) ?? '',
      /No profile for 2 workload\(s\): (web1|batch2), (web1|batch2)\./,
    );
    assert.deepEqual(errors, []);
  });

  test('with forecast days, the plan is for the trend and says what it changed; too short an inventory is refused in one line', async () => {
    await page.setInputFiles('#f-inventory', {
      name: 'growing.csv',
      mimeType: 'text/csv',
      buffer: growingInventory(),
    });
    await page.fill('#f-host-size', 'cpu=8');
    await page.fill('#f-forecast-days', '14');
    await page.click('form[aria-label="Plan a consolidation"] button[type=submit]');
    const forecast = page.locator('[data-testid=plan-forecast]');
    await forecast.waitFor({ timeout: 60_000 });
    assert.match(
      (await forecast.textContent()) ?? '',
      /^Forecast: planned for the 14 days after the inventory's 14 whole days\. .* is CPU \+9\.\d%, memory \+0\.0% a week; the load was scaled by ×1\.1\d\d: lower bound 2 hosts, 1 as measured\.$/,
    );
    assert.equal(await page.locator('[data-testid=plan-hosts]').textContent(), '2');
    assert.match(
      (await page.locator('[data-testid=plan-source]').textContent()) ?? '',
      /^growing\.csv: 4 workloads/,
    );

    await page.setInputFiles('#f-inventory', INVENTORY);
    await page.fill('#f-host-size', 'cpu=4,memory=16GiB');
    await page.fill('#f-forecast-days', '7');
    await page.click('form[aria-label="Plan a consolidation"] button[type=submit]');
    const refused = page.locator('.notice.error span', { hasText: 'A trend needs at least 7 whole days' });
    await refused.waitFor();
    assert.equal(
      await refused.textContent(),
      'A trend needs at least 7 whole days of samples; the inventory has 0',
    );
    // The refused plan changed nothing shown.
    assert.match((await page.locator('[data-testid=plan-source]').textContent()) ?? '', /^growing\.csv: /);
    assert.deepEqual(errors, []);
  });
});
