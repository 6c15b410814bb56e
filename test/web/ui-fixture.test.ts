import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { gzipSync } from 'node:zlib';
import type { BrowserContext, Dialog, Page } from 'playwright-core';
import { readWebManifest, webDistOf } from '../../src/build/web-bundle.ts';
import { makeRunDir, removeRunDir } from '../leftovers.ts';
import { openBrowser, reach, signIn } from './browser.ts';
import { type FixtureBackend, startFixtureBackend } from './fixture-backend.ts';
import { checkSorts, type Row } from './sort-check.ts';

const REPO = path.resolve(import.meta.dirname, '../..');
const AXE = readFileSync(path.join(REPO, 'node_modules/axe-core/axe.min.js'), 'utf8');

/** axe-core's serious and critical findings on the page as it is. */
async function axeFindings(page: Page): Promise<string[]> {
  await page.addScriptTag({ content: AXE });
  return (await page.evaluate(`axe.run().then((r) => r.violations
    .filter((v) => v.impact === 'serious' || v.impact === 'critical')
    .map((v) => v.id + ' (' + v.impact + '): ' + v.nodes.slice(0, 3).map((n) => n.target.join(' ')).join(', ')))`)) as string[];
}

/** The main pages, each by its URL: what the quality checks walk. */
const MAIN_PAGES = [
  '/',
  '/guests',
  '/guests/ct-0003',
  '/guests/ct-0003?tab=config',
  '/guests/ct-0003?tab=snapshots',
  '/guests/ct-0003?tab=nics',
  '/new-guest',
  '/networks',
  '/storage',
  '/backups',
  '/images',
  '/operations',
  '/members',
  '/admin',
  '/plan',
];

/**
 * The browser suite's deterministic layer (issue 15): the real server and UI over a fixture of
 * 1,000 guests and seeded metrics, in Debian's headless Chromium.
 */
describe('web UI over the fixture backend (1,000 guests)', () => {
  let runDir: string;
  let backend: FixtureBackend;
  let context: BrowserContext;
  let page: Page;
  const errors: string[] = [];

  before(async () => {
    runDir = await makeRunDir('web');
    backend = await startFixtureBackend(runDir);
    context = await openBrowser(runDir, { base: backend.url });
    page = context.pages()[0] ?? (await context.newPage());
    page.on('pageerror', (e) => errors.push(String(e)));
  });
  // Each test starts signed in (the first one signs in through the page itself).
  const signedIn = async () => {
    const cookies = await context.cookies(backend.url);
    if (!cookies.some((c) => c.name === '__Host-trivisor_session'))
      await signIn(page, backend.url, backend.token);
  };
  after(async () => {
    await context?.close();
    await backend?.close();
    if (runDir) await removeRunDir(runDir);
  });

  test('signing in with the token gives an HttpOnly session cookie the page cannot read; a wrong token is one line', async () => {
    await page.goto(`${backend.url}/guests`);
    await page.waitForURL(/\/login\?next=%2Fguests/);
    await page.fill('#token', 'not-the-token');
    await page.click('button[type=submit]');
    const alert = page.locator('[role=alert]');
    await alert.waitFor();
    assert.match((await alert.textContent()) ?? '', /^That token is not valid here/);
    await page.fill('#token', backend.token);
    await page.click('button[type=submit]');
    // Back to the page that asked for the sign-in.
    await page.waitForURL(`${backend.url}/guests`);
    const cookies = await context.cookies(backend.url);
    const session = cookies.find((c) => c.name === '__Host-trivisor_session');
    assert.ok(session, 'the session cookie is set');
    assert.equal(session.httpOnly, true);
    assert.equal(session.secure, true);
    assert.equal(session.sameSite, 'Strict');
    assert.ok(session.expires > Date.now() / 1000, 'it has an expiry');
    assert.equal(await page.evaluate('document.cookie'), '', 'scripts cannot read it');
  });

  test('the first page loads at most 150 KB of gzipped JavaScript; chart and console code load only when opened', async () => {
    await signedIn();
    const scripts: string[] = [];
    const onResponse = (r: { url(): string }) => {
      if (r.url().endsWith('.js')) scripts.push(r.url());
    };
    page.on('response', onResponse);
    await page.goto(`${backend.url}/guests`);
    await page.waitForSelector('tr[data-guest]');
    const manifest = await readWebManifest(REPO);
    assert.ok(manifest);
    const dir = path.join(webDistOf(REPO), manifest.dir);
    const gz = (url: string) => gzipSync(readFileSync(path.join(dir, path.basename(url)))).length;
    const first = scripts.reduce((sum, u) => sum + gz(u), 0);
    assert.ok(first <= 150 * 1024, `first page: ${first} gzipped bytes of JavaScript`);
    const loaded = (needle: string) =>
      scripts.some((u) => readFileSync(path.join(dir, path.basename(u)), 'utf8').includes(needle));
    assert.ok(!loaded('uplot'), 'no chart code on the first page');
    assert.ok(!loaded('xterm-helper-textarea'), 'no terminal code on the first page');
    await page.goto(`${backend.url}/guests/ct-0003?tab=metrics`);
    await page.waitForSelector('.uplot canvas');
    assert.ok(loaded('uplot'), 'opening the charts loads their code');
    page.off('response', onResponse);
  });

  test('the list shows 1,000 guests with at most 200 rows in the DOM; a filter narrows it; the URL holds it, and reload and back restore it', async () => {
    await signedIn();
    await page.goto(`${backend.url}/guests`);
    await page.waitForSelector('tr[data-guest]');
    assert.equal((await page.locator('[data-testid=guest-count]').textContent()) ?? '', '1000 of 1000');
    assert.ok((await page.locator('tr[data-guest]').count()) <= 200);
    // Scrolled to the end: the last guest is drawn, and still at most 200 rows.
    await page.locator('.window').evaluate((el) => {
      el.scrollTop = el.scrollHeight;
    });
    await page.waitForSelector('tr[data-guest="vm-0998"]');
    assert.ok((await page.locator('tr[data-guest]').count()) <= 200);

    await page.fill('#guest-filter', 'pvm-00');
    await page.waitForFunction(
      "document.querySelector('[data-testid=guest-count]')?.textContent?.startsWith('33 of')",
    );
    assert.match(page.url(), /q=pvm-00/);
    await page.selectOption('#status-filter', 'Running');
    await page.waitForURL(/status=Running/);
    const shown = (await page.locator('[data-testid=guest-count]').textContent()) ?? '';
    await page.reload();
    await page.waitForSelector('tr[data-guest]').catch(async (e) => {
      await page.screenshot({ path: path.join(runDir, 'reload.png') });
      throw e;
    });
    assert.equal((await page.locator('[data-testid=guest-count]').textContent()) ?? '', shown);
    assert.equal(await page.inputValue('#guest-filter'), 'pvm-00');
    await page.click('tr[data-guest] a');
    await page.waitForURL(/\/guests\/pvm-00/);
    await page.goBack();
    await page.waitForSelector('tr[data-guest]');
    assert.equal((await page.locator('[data-testid=guest-count]').textContent()) ?? '', shown);
  });

  test('a bulk start says exactly which guests failed and why', async () => {
    await signedIn();
    await page.goto(`${backend.url}/guests?q=broken`);
    await page.waitForSelector('tr[data-guest]');
    await page.fill('#guest-filter', '');
    await page.fill('#guest-filter', 'ct-0021');
    await page.waitForSelector('tr[data-guest="ct-0021"]');
    await page.check('input[aria-label="Select ct-0021"]');
    await page.fill('#guest-filter', 'broken');
    await page.waitForSelector('tr[data-guest="broken-666"]');
    await page.check('input[aria-label="Select all shown"]');
    await page.click('fieldset >> text=Start');
    const results = page.locator('[data-testid=bulk-results]');
    await results.waitFor();
    const text = (await results.textContent()) ?? '';
    assert.match(text, /start: 1 succeeded, 3 failed/);
    for (const n of ['broken-333', 'broken-666', 'broken-999']) {
      assert.match(text, new RegExp(`${n}: Guest ${n} cannot start: its root file system is missing`));
    }
    assert.equal(backend.fake.guestMap.get('ct-0021')?.status, 'Running');
  });

  test('a bulk stop and a bulk delete act on exactly the selected guests and say how many succeeded', async () => {
    await signedIn();
    const names = ['ct-0009', 'ct-0012'];
    const saved = names.map((n) => structuredClone(backend.fake.guestMap.get(n)!));
    const accept = (d: Dialog) => void d.accept();
    page.on('dialog', accept);
    try {
      await page.goto(`${backend.url}/guests`);
      await page.waitForSelector('tr[data-guest]');
      for (const n of names) {
        await page.fill('#guest-filter', n);
        // The list narrowed to that one guest (the count says which filter it shows) before it is ticked.
        await page.waitForFunction(
          `(() => { const c = document.querySelector('[data-testid=guest-count]'); return c?.dataset.q === '${n}' && c.textContent.startsWith('1 of'); })()`,
        );
        await page.check(`input[aria-label="Select ${n}"]`);
      }
      await page.locator('fieldset', { hasText: '2 selected' }).waitFor();
      const results = page.locator('[data-testid=bulk-results]');
      await page.click('fieldset >> text=Stop');
      await results.locator('strong').waitFor();
      assert.match((await results.textContent()) ?? '', /^stop: 2 succeeded, 0 failed/);
      for (const n of names) assert.equal(backend.fake.guestMap.get(n)?.status, 'Stopped', n);
      assert.equal(
        backend.fake.guestMap.get('ct-0003')?.status,
        'Running',
        'an unselected guest is left alone',
      );
      await results.locator('button', { hasText: 'Close' }).click();
      await page.click('fieldset >> text=Delete');
      await results.locator('strong', { hasText: 'delete:' }).waitFor();
      assert.match((await results.textContent()) ?? '', /^delete: 2 succeeded, 0 failed/);
      for (const n of names) assert.equal(backend.fake.guestMap.has(n), false, n);
      await page.fill('#guest-filter', 'ct-0009');
      await page.waitForFunction(
        "document.querySelector('[data-testid=guest-count]')?.textContent?.startsWith('0 of')",
      );
    } finally {
      page.off('dialog', accept);
      for (const g of saved) backend.fake.guestMap.set(g.name, g);
    }
  });

  test('a state change shows in an open page within 2 s, without a reload', async () => {
    await signedIn();
    await page.goto(`${backend.url}/guests?q=vm-0002`);
    await page.waitForSelector('tr[data-guest="vm-0002"]');
    const status = page.locator('tr[data-guest="vm-0002"] .status');
    assert.equal((await status.textContent()) ?? '', 'Running');
    const started = Date.now();
    backend.setStatus('vm-0002', 'Stopped');
    await page.waitForFunction(
      `document.querySelector('tr[data-guest="vm-0002"] .status')?.textContent === 'Stopped'`,
      undefined,
      { timeout: 2000 },
    );
    assert.ok(Date.now() - started < 2000);
    backend.setStatus('vm-0002', 'Running');
  });

  test('charts show a range from an hour to a year, average and maximum, with the stopped hour as a gap', async () => {
    await signedIn();
    await page.goto(`${backend.url}/guests/ct-0003?tab=metrics&range=day`);
    await page.waitForSelector('.uplot canvas');
    assert.equal(await page.locator('.uplot').count(), 4);
    // The page's own session reads the history, as the charts do.
    const history = (await page.evaluate(
      "fetch('/1.0/guests/ct-0003/metrics?range=day').then((r) => r.json()).then((b) => b.metadata)",
    )) as {
      times: number[];
      metrics: Record<string, { average: Array<number | null>; maximum: Array<number | null> }>;
    };
    const cpu = history.metrics.cpu!.average;
    const now = Date.now() / 1000;
    const gapSteps = history.times
      .map((t, i) => [t, cpu[i]] as const)
      .filter(([t]) => t > now - 6.8 * 3600 && t < now - 6.2 * 3600);
    assert.ok(gapSteps.length > 0 && gapSteps.every(([, v]) => v === null), 'the stopped hour is a gap');
    assert.ok(cpu.filter((v) => v !== null).length > 200, 'the rest of the day has values');
    assert.ok(history.metrics.cpu!.maximum.some((v, i) => v !== null && v >= (cpu[i] ?? 0)));
    for (const range of ['hour', 'week', 'month', 'year']) {
      await page.click(`button:has-text("Last ${range}")`);
      await page.waitForURL(new RegExp(`range=${range}`));
    }
  });

  test("the dashboard shows any member's charts, chosen among the members, the choice in the URL", async () => {
    await signedIn();
    // The fixture forwards to no member: web2's answer is the fixture's own history, named web2's,
    // as a member asked with ?target= answers (that forwarding is test/cluster/cluster-rebalance's).
    const asked: string[] = [];
    await page.route(/\/1\.0\/metrics\/history\?.*target=web2/, async (route) => {
      asked.push(route.request().url());
      const own = await route.fetch({ url: route.request().url().replace('&target=web2', '') });
      const body = await own.json();
      body.metadata.target = 'host/web2';
      await route.fulfill({ response: own, json: body });
    });
    try {
      await page.goto(`${backend.url}/?charts=1`);
      await page.waitForSelector('.uplot canvas');
      assert.equal(
        await page.locator('#host-charts').textContent(),
        'CPU, memory, network and disk of fakehost (this member)',
      );
      const choice = page.locator('select#f-member-s-charts');
      assert.deepEqual(await choice.locator('option').allTextContents(), [
        'fakehost (this member)',
        'web2',
        'web3 (Offline)',
      ]);
      assert.equal(asked.length, 0, "this member's charts are its own history, no target");
      // The heading names web2 as soon as it is chosen; its history is asked for after that.
      const web2History = page.waitForResponse(/\/1\.0\/metrics\/history\?.*target=web2/);
      await choice.selectOption('web2');
      await web2History;
      await page.waitForURL(/member=web2/);
      await page.locator('#host-charts', { hasText: 'of web2' }).waitFor();
      await page.waitForSelector('.uplot canvas');
      assert.equal(await page.locator('.uplot').count(), 4);
      assert.ok(asked.length > 0 && asked.every((u) => u.includes('range=hour')), asked.join(' '));
      // Reload keeps the choice; the range too.
      await page.click('button:has-text("Last day")');
      await page.waitForURL(/range=day/);
      await page.reload();
      await page.locator('#host-charts', { hasText: 'of web2' }).waitFor();
      assert.equal(await choice.inputValue(), 'web2');
      await page.waitForSelector('.uplot canvas');
      assert.ok(asked.some((u) => u.includes('range=day')));
    } finally {
      await page.unroute(/\/1\.0\/metrics\/history\?.*target=web2/);
    }
  });

  test("the dashboard's charts are the chosen member's: a first load naming this member asks its history once; none of the last member's charts while another's history loads; a late answer for a member no longer chosen is dropped", async () => {
    await signedIn();
    // As in the test above, another member's answer is the fixture's own history under its name.
    // web2's comes late, and says another range, so that drawing it would show.
    const history = /\/1\.0\/metrics\/history\?/;
    const others = /\/1\.0\/metrics\/history\?.*target=(web2|web3)/;
    const asked: string[] = [];
    const onRequest = (q: { url(): string }) => {
      if (history.test(q.url())) asked.push(new URL(q.url()).searchParams.get('target') ?? '');
    };
    let arrived!: () => void;
    const web2Asked = new Promise<void>((r) => {
      arrived = r;
    });
    let release!: () => void;
    const gate = new Promise<void>((r) => {
      release = r;
    });
    await page.route(others, async (route) => {
      const url = route.request().url();
      const member = new URL(url).searchParams.get('target');
      const own = await route.fetch({ url: url.replace(`&target=${member}`, '') });
      const body = await own.json();
      body.metadata.target = `host/${member}`;
      if (member === 'web2') {
        arrived();
        await gate;
        body.metadata.range = 'week';
      }
      await route.fulfill({ response: own, json: body }).catch(() => {});
    });
    page.on('request', onRequest);
    const charts = page.locator('.uplot');
    try {
      // The day range: no reading again every 10 s during the test.
      await page.goto(`${backend.url}/?charts=1&range=day&member=fakehost`);
      await page.waitForSelector('.uplot canvas');
      const choice = page.locator('select#f-member-s-charts');
      await choice.waitFor();
      await choice.selectOption('web2');
      // Asked once the page was drawn for web2: what it shows now is web2's choice.
      await web2Asked;
      assert.deepEqual(
        asked,
        ['', 'web2'],
        "this member's history once, not by its name and then as this member's",
      );
      assert.equal(
        await charts.count(),
        0,
        "no chart of this member's under web2's name while web2's history loads",
      );
      // Chosen again before web2 answered: web3's charts are drawn, and web2's late answer is dropped.
      await choice.selectOption('web3');
      await page.locator('#host-charts', { hasText: 'of web3' }).waitFor();
      await page.waitForSelector('.uplot canvas');
      const late = page.waitForResponse((r) => /target=web2/.test(r.url()));
      release();
      await (await late).finished();
      // Past the tasks that would take the late answer in.
      await page.evaluate(() => new Promise((r) => setTimeout(r, 0)));
      const titles = await page
        .locator('.chart [title]')
        .evaluateAll((els) => els.map((e) => e.getAttribute('title')));
      assert.equal(titles.length, 4);
      assert.ok(
        titles.every((t) => t?.endsWith('over the last day')),
        titles.join(', '),
      );
    } finally {
      release();
      page.off('request', onRequest);
      await page.unroute(others);
    }
  });

  test("the members view shows each member's status, address, roles, measured usage and guests, and nothing the API lacks", async () => {
    await signedIn();
    await page.goto(`${backend.url}/members`);
    const row = (name: string) => page.locator(`tr[data-member="${name}"]`);
    await row('web3').waitFor();
    assert.equal(await page.locator('tr[data-member]').count(), 3);
    assert.match(
      (await page.locator('[data-testid=cluster-summary]').textContent()) ?? '',
      /^3 members, 2 online/,
    );
    const self = (await row('fakehost').textContent()) ?? '';
    for (const want of [
      'fakehost (this one)',
      'Online',
      '198.18.0.1:8444',
      'etcd voter',
      '0.85 of 2 CPUs busy',
      '6.5 GiB of 24 GiB',
      '150 GiB of 400 GiB',
      '1000',
    ]) {
      assert.ok(self.includes(want), `${want} in ${self}`);
    }
    const offline = (await row('web3').textContent()) ?? '';
    for (const want of ['Offline', '198.18.0.3:8444', 'etcd client'])
      assert.ok(offline.includes(want), `${want} in ${offline}`);
    // Nothing measured while Offline (the API's null): not shown as zero.
    assert.equal(await row('web3').locator('[data-testid=member-cpu]').textContent(), 'not measured');
    assert.equal(await row('web3').locator('[data-testid=member-memory]').textContent(), 'not measured');
    assert.equal(await row('web3').locator('[data-testid=member-storage]').textContent(), 'not measured');
    assert.equal(
      await row('fakehost').locator('[data-testid=member-storage]').textContent(),
      '150 GiB of 400 GiB',
    );
    assert.equal(
      await row('web2').locator('[data-testid=member-storage]').textContent(),
      '40 GiB of 100 GiB',
    );
    // The API refuses removing the member a request reached: no button for it.
    assert.equal(await row('fakehost').locator('button', { hasText: 'Remove' }).count(), 0);
    // HA as the API says it (decision 0052), with admission control's warning; web3 has none.
    const ha = (name: string) => row(name).locator('[data-testid=member-ha]');
    assert.equal(await ha('fakehost').textContent(), 'HA: 1, live');
    assert.equal(await ha('web2').textContent(), 'HA: 3, lost');
    assert.equal(await ha('web2').getAttribute('title'), '3 HA guests; its HA agent has lost its HA lease');
    assert.equal(await ha('web3').count(), 0);
    assert.equal(
      await page.locator('[data-testid=ha-warnings]').textContent(),
      'web2 (HA): The other members could restart 1 of its 3 HA guests: 2 GiB of memory short',
    );
    // Evacuate a member, then restore it: the API's status each time.
    page.once('dialog', (d) => void d.accept());
    await row('web2').locator('button[aria-label="Evacuate member web2"]').click();
    await row('web2').locator('button[aria-label="Restore member web2"]').waitFor();
    assert.match((await row('web2').textContent()) ?? '', /Evacuated/);
    assert.equal(backend.members.find((m) => m.name === 'web2')?.status, 'Evacuated');
    await row('web2').locator('button[aria-label="Restore member web2"]').click();
    await row('web2').locator('button[aria-label="Evacuate member web2"]').waitFor();
    assert.equal(backend.members.find((m) => m.name === 'web2')?.status, 'Online');
    // The dashboard shows every member's measured CPU and memory too.
    await page.goto(`${backend.url}/`);
    await page.locator('tr[data-dashboard-member="web3"]').waitFor();
    const web2 = page.locator('tr[data-dashboard-member="web2"] td');
    assert.deepEqual(await web2.allTextContents(), [
      'web2',
      'Online',
      '1.50 of 4 CPUs',
      '3.0 GiB of 16 GiB',
      '40 GiB of 100 GiB',
      '12',
    ]);
    assert.deepEqual(await page.locator('tr[data-dashboard-member="web3"] td').allTextContents(), [
      'web3',
      'Offline',
      'not measured',
      'not measured',
      'not measured',
      '0',
    ]);
  });

  test('the members table sorts by each column, both ways, as the API has the members', async () => {
    await signedIn();
    await page.goto(`${backend.url}/members`);
    const members = async () => {
      const r = await backend.app.inject({
        url: '/1.0/cluster/members',
        headers: { authorization: `Bearer ${backend.token}` },
      });
      return r.json().metadata as Row[];
    };
    const measure = (r: Row, what: 'cpu' | 'memory' | 'disk') => {
      if (what === 'cpu') return (r.cpu as { used: number } | null)?.used ?? -1;
      if (what === 'memory') return (r.memory as { usedBytes: number } | null)?.usedBytes ?? -1;
      const disk = r.disk as { totalBytes: number; freeBytes: number } | null | undefined;
      return disk ? disk.totalBytes - disk.freeBytes : -1;
    };
    const roles = { 'etcd-voter': 'etcd voter', 'etcd-client': 'etcd client' } as Record<string, string>;
    await checkSorts(
      page,
      members,
      (r) => r.name as string,
      [
        ['Status', 'status', (r) => r.status],
        ['Address', 'address', (r) => r.address],
        ['Roles', 'roles', (r) => (r.roles as string[]).map((x) => roles[x] ?? x).join(', ')],
        ['CPU', 'cpu', (r) => measure(r, 'cpu')],
        ['Memory', 'memory', (r) => measure(r, 'memory')],
        ['Storage', 'storage', (r) => measure(r, 'disk')],
        ['Guests', 'guests', (r) => r.guests],
        ['Version', 'version', (r) => r.version],
        ['Joined', 'joinedAt', (r) => r.joinedAt],
        ['Name', 'name', (r) => r.name],
      ],
      { rowAttribute: 'data-member', opening: { value: (r) => r.name, dir: 1 } },
    );
    // The measured columns order by the measure, not its text: web3 (not measured) is last descending.
    await page.goto(`${backend.url}/members?sort=memory&dir=desc`);
    await page.locator('tr[data-member="web3"]').waitFor();
    assert.deepEqual(
      await page
        .locator('tr[data-member]')
        .evaluateAll((rows) => rows.map((r) => r.getAttribute('data-member'))),
      ['fakehost', 'web2', 'web3'],
    );
  });

  test("a guest's page on a cluster moves it to the member chosen among the other Online ones", async () => {
    await signedIn();
    await page.goto(`${backend.url}/guests/ct-0006`);
    const move = page.locator('[data-testid=move-guest]');
    await move.waitFor();
    // Why the scheduler put it there, as the API has it (decision 0033).
    assert.equal(
      await page.locator('[data-testid=guest-placement]').textContent(),
      'most free memory: 17.5 GiB of 24.0',
    );
    // Offline web3 and the guest's own member are not offered.
    assert.deepEqual(await move.locator('option').allTextContents(), ['web2']);
    page.once('dialog', (d) => void d.accept());
    await move.locator('button', { hasText: 'Move' }).click();
    await page.locator('text=ct-0006 moved to web2').waitFor();
    assert.equal(backend.fake.guestMap.get('ct-0006')?.location, 'web2');
  });

  test("the members page lists the rebalancer's moves with their explanations, plans a dry run, rebalances now, and edits its keys; a bad key value is refused in one line and changes nothing", async () => {
    await signedIn();
    const r = backend.rebalance;
    const savedConfig = { ...r.config };
    const savedMoves = [...r.recorded];
    try {
      await page.goto(`${backend.url}/members`);
      const moves = page.locator('ul[aria-label="Rebalancing moves"] > li');
      await moves.first().waitFor();
      // Newest first, as the API lists them: the failed one says why.
      assert.deepEqual(await moves.evaluateAll((l) => l.map((x) => x.getAttribute('data-move'))), [
        'web2-b',
        'web2-c',
      ]);
      assert.match(
        (await moves.nth(0).textContent()) ?? '',
        /web2-b \(ct\) web2 → fakehost, cold, for overload · failed/,
      );
      assert.match((await moves.nth(0).locator('[role=alert]').textContent()) ?? '', /cannot be reached/);
      await moves.nth(1).locator('summary', { hasText: 'Why' }).click();
      const why = moves.nth(1);
      assert.equal(await why.locator('[data-testid=move-imbalance]').textContent(), '0.214 → 0.061');
      assert.equal(await why.locator('[data-testid=move-benefit]').textContent(), '137.7 s');
      assert.equal(
        await why.locator('[data-testid=move-cost]').textContent(),
        '0.84 s (copy 8.10 s, downtime 300 ms)',
      );
      assert.equal(
        await why.locator('[data-testid=move-constraints]').textContent(),
        'web3 is Offline; busy-db: migration.downtime_budget=0',
      );
      assert.match((await why.textContent()) ?? '', /web2 82% → 67%/);
      assert.match(
        (await page.locator('[data-testid=rebalance-status]').textContent()) ?? '',
        /runs by itself every 10m, .* last 1h \(95th percentile\) towards an imbalance below 10%/,
      );

      // A dry run: the plan and its notes, nothing moved.
      await page.click('button[aria-label="Plan a rebalance (dry run)"]');
      const result = page.locator('[data-testid=rebalance-result]');
      await result.waitFor();
      assert.match(
        (await result.textContent()) ?? '',
        /^Plan \(dry run, nothing moved\): imbalance 0\.214 → 0\.061 as planned; 1 move planned\./,
      );
      assert.equal(await result.locator('li[data-move="web2-a"]').count(), 1);
      assert.equal(
        await result.locator('[data-testid=rebalance-notes]').textContent(),
        'web3 is Offline: left out of the cycle',
      );
      assert.deepEqual(r.cycles, [true]);
      assert.equal(r.recorded.length, 2);

      // Rebalance now: confirmed, the move made, and listed first among the moves.
      page.once('dialog', (d) => void d.accept());
      await page.click('button:has-text("Rebalance now")');
      await page
        .locator('text=Cycle run: imbalance 0.214 → 0.061 as planned; 1 move planned, 1 made.')
        .waitFor();
      await page.locator('ul[aria-label="Rebalancing moves"] > li').nth(2).waitFor();
      assert.equal(await moves.first().getAttribute('data-move'), 'web2-a');
      assert.deepEqual(r.cycles, [true, false]);

      // The keys: a bad value refused in the API's one line, nothing changed.
      const form = page.locator('form[aria-label="Rebalancer settings"]');
      assert.equal(await form.locator('input[name="cluster.rebalance.interval"]').inputValue(), '10m');
      assert.equal(
        await form.locator('input[name="cluster.rebalance.threshold"]').getAttribute('placeholder'),
        '10',
      );
      await form.locator('input[name="cluster.rebalance.threshold"]').fill('20');
      await form.locator('input[name="cluster.rebalance.cooldown"]').fill('soon');
      await form.locator('button[type=submit]').click();
      await page
        .locator('text=cluster.rebalance.cooldown="soon" must be a duration from 10s to 1w')
        .waitFor();
      assert.deepEqual(r.config, savedConfig);
      // A good change: the interval emptied (unset, its default again), the threshold and the cooldown set.
      await form.locator('input[name="cluster.rebalance.cooldown"]').fill('2h');
      await form.locator('input[name="cluster.rebalance.interval"]').fill('');
      await form.locator('button[type=submit]').click();
      await page.locator('text=Rebalancer settings saved').waitFor();
      assert.deepEqual(r.config, { 'cluster.rebalance.threshold': '20', 'cluster.rebalance.cooldown': '2h' });
      await page.locator('[data-testid=rebalance-status]', { hasText: 'every 5m' }).waitFor();
      assert.equal(await form.locator('input[name="cluster.rebalance.threshold"]').inputValue(), '20');
      assert.equal(await form.locator('input[name="cluster.rebalance.interval"]').inputValue(), '');
    } finally {
      r.config = savedConfig;
      r.recorded.splice(0, r.recorded.length, ...savedMoves);
      r.cycles.length = 0;
    }
  });

  test("power management on the members page: its keys, each member's driver (a bad value refused in one line, nothing changed), the power state and reason, the dry run's power lines", async () => {
    await signedIn();
    const r = backend.rebalance;
    const savedConfig = { ...r.config };
    const web3 = backend.members.find((m) => m.name === 'web3');
    assert.ok(web3);
    const savedWeb3 = structuredClone(web3);
    const patches: unknown[] = [];
    const onRequest = (q: { method(): string; url(): string; postDataJSON(): unknown }) => {
      if (q.method() === 'PATCH' && q.url().endsWith('/1.0/cluster/config')) patches.push(q.postDataJSON());
    };
    page.on('request', onRequest);
    try {
      // web3 powered off by power management: Standby, with the power manager's reason.
      Object.assign(web3, {
        status: 'Standby',
        power: {
          state: 'off',
          since: '2026-12-05T10:00:00.000Z',
          reason: 'web3 was powered off by its ipmi driver (its load stayed below 85% for 40m)',
          powerOffs: ['2026-12-05T10:00:00.000Z'],
        },
      });
      await page.goto(`${backend.url}/members`);
      const row = (name: string) => page.locator(`tr[data-member="${name}"]`);
      const powerOf = (name: string) =>
        page.locator(`tr[data-power-of="${name}"] [data-testid=member-power]`);
      await powerOf('web3').waitFor();
      assert.match((await row('web3').locator('td[data-label=Status]').textContent()) ?? '', /^Standby/);
      assert.match(
        (await powerOf('web3').textContent()) ?? '',
        /^Power: off since .+: web3 was powered off by its ipmi driver \(its load stayed below 85% for 40m\)$/,
      );
      // A member power management never touched has no power line.
      assert.equal(await page.locator('tr[data-power-of]').count(), 1);

      // The cluster-wide keys, in the same form as the rebalancer's: a bad value is one line, nothing changed.
      const form = page.locator('form[aria-label="Rebalancer settings"]');
      assert.equal(
        await form.locator('input[name="cluster.power.low_window"]').getAttribute('placeholder'),
        '40m',
      );
      assert.equal(
        await page.locator('[data-testid=power-status]').textContent(),
        'Power management is off: no member is ever powered off.',
      );
      await form.locator('input[name="cluster.power.enabled"]').fill('true');
      await form.locator('input[name="cluster.power.max_cycles"]').fill('9');
      await form.locator('button[type=submit]').click();
      await page.locator('text=cluster.power.max_cycles="9" must be 1, 2, 3 or 4').waitFor();
      assert.deepEqual(r.config, savedConfig);
      await form.locator('input[name="cluster.power.max_cycles"]').fill('2');
      await form.locator('button[type=submit]').click();
      await page.locator('text=Rebalancer settings saved').waitFor();
      assert.deepEqual(patches.at(-1), {
        config: { 'cluster.power.enabled': 'true', 'cluster.power.max_cycles': '2' },
      });
      assert.deepEqual(r.config, {
        ...savedConfig,
        'cluster.power.enabled': 'true',
        'cluster.power.max_cycles': '2',
      });
      await page.locator('[data-testid=power-status]', { hasText: 'Power management is on' }).waitFor();

      // The dry run's power lines, as the CLI prints them.
      await page.click('button[aria-label="Plan a rebalance (dry run)"]');
      const lines = page.locator('[data-testid=rebalance-power] > li');
      await lines.first().waitFor();
      assert.deepEqual(await lines.allTextContents(), [
        'Power on web3: demand 92% of what is on passes cluster.power.on_at 90%',
        "Power off web2: load 12% over 40m, below cluster.power.low_load 85%; the others' peak 41% (1 guest to move first: web2-a → fakehost)",
      ]);

      // A member's driver: IPMI's fields, the password only ever as a file on the member.
      await page.selectOption('#f-power-member', 'web2');
      const power = page.locator('form[aria-label="Power settings of web2"]');
      await power.waitFor();
      await power.locator('#f-power-driver').selectOption('ipmi');
      await power.locator('input[name="ipmi.host"]').fill('198.18.0.102');
      await power.locator('input[name="ipmi.user"]').fill('admin');
      await power.locator('input[name="ipmi.password_file"]').fill('s3cret');
      assert.equal(await page.locator('input[type=password]').count(), 0);
      const before = { ...r.config };
      await power.locator('button[type=submit]').click();
      await page
        .locator(
          'text=member.web2.power.ipmi.password_file="s3cret" must be an absolute path (a file holding the password, never the password)',
        )
        .waitFor();
      assert.deepEqual(r.config, before);
      await power.locator('input[name="ipmi.password_file"]').fill('/etc/trivisor/web2-bmc');
      await power.locator('button[type=submit]').click();
      await page.locator('text=Power settings of web2 saved').waitFor();
      assert.deepEqual(patches.at(-1), {
        config: {
          'member.web2.power.driver': 'ipmi',
          'member.web2.power.ipmi.host': '198.18.0.102',
          'member.web2.power.ipmi.user': 'admin',
          'member.web2.power.ipmi.password_file': '/etc/trivisor/web2-bmc',
        },
      });
      assert.equal(
        backend.rebalance.config['member.web2.power.ipmi.password_file'],
        '/etc/trivisor/web2-bmc',
      );
      // Shown as set after the save; another driver replaces IPMI's keys, none set is none.
      await page
        .locator('form[aria-label="Power settings of web2"] input[name="ipmi.host"][value="198.18.0.102"]')
        .waitFor();
      await power.locator('#f-power-driver').selectOption('');
      await power.locator('button[type=submit]').click();
      await page.locator('text=Power settings of web2 saved').nth(1).waitFor();
      assert.equal(
        Object.keys(backend.rebalance.config).filter((k) => k.startsWith('member.web2.')).length,
        0,
      );
    } finally {
      page.off('request', onRequest);
      r.config = savedConfig;
      r.cycles.length = 0;
      for (const k of Object.keys(web3)) delete (web3 as unknown as Record<string, unknown>)[k];
      Object.assign(web3, savedWeb3);
    }
  });

  test("a vm guest's backups export uncompressed and import live with the operation's progress; a compressed archive is refused for a live import in one line; a ct guest is not offered the uncompressed export", async () => {
    await signedIn();
    const b = backend.backups;
    const made = b.made.length;
    const imported = b.imported.length;
    await page.goto(`${backend.url}/guests/vm-0002?tab=backups`);
    const uncompressed = page.locator('input[name=uncompressed]');
    await uncompressed.check();
    const asked = page.waitForRequest(
      (q) => q.method() === 'POST' && q.url().includes('/1.0/guests/vm-0002/backups'),
    );
    await page.click('button:has-text("Make a backup")');
    // Named by the page, which then downloads it while it is written (decision 0098).
    const body = (await asked).postDataJSON() as { name?: string };
    assert.match(body.name ?? '', /^[a-z0-9-]+$/);
    assert.deepEqual(body, { snapshots: false, uncompressed: true, name: body.name });
    await page.locator('tr[data-row] td', { hasText: '(uncompressed)' }).waitFor();
    assert.deepEqual(b.made.slice(made), [
      {
        guest: 'vm-0002',
        options: { withSnapshots: false, incremental: false, uncompressed: true, name: body.name },
      },
    ]);

    // A live import of a compressed archive: the header sent, the API's one line, nothing imported.
    const form = page.locator('form[aria-label="Import a backup"]');
    const upload = (name: string, buffer: Buffer) =>
      form
        .locator('input[name=archive]')
        .setInputFiles({ name, mimeType: 'application/octet-stream', buffer });
    await upload(
      'web.tar.zst',
      Buffer.concat([Buffer.from([0x28, 0xb5, 0x2f, 0xfd]), Buffer.from('zstd frame')]),
    );
    await form.locator('input[name=name]').fill('restored');
    await form.locator('input[name=live]').check();
    const sent = page.waitForRequest((q) => q.method() === 'POST' && q.url().endsWith('/1.0/backups'));
    await form.locator('button[type=submit]').click();
    assert.equal((await sent).headers()['x-trivisor-live'], '1');
    await page
      .locator("text=The archive's disk is compressed (rootfs.tar.zst), and QEMU cannot read it in place")
      .waitFor();
    assert.equal(b.imported.length, imported);

    // An uncompressed one: the guest runs at once, the page follows the copy's progress to its end.
    await upload('web.tar', Buffer.from('uncompressed vm archive'));
    await form.locator('button[type=submit]').click();
    const progress = page.locator('[data-testid=import-progress]');
    await progress.waitFor();
    await page.locator('[data-testid=import-progress]', { hasText: '256 MiB of 512 MiB copied' }).waitFor();
    assert.equal(
      await progress.textContent(),
      'Restoring guest restored live: 256 MiB of 512 MiB copied, 128 MiB/s, 2 s left (running after 3.1 s) ',
    );
    assert.deepEqual(b.imported.slice(imported), [
      { name: 'restored', live: true, head: 'uncompressed vm ' },
    ]);
    b.finishLive();
    await page.locator('text=Backup imported').waitFor();
    await progress.waitFor({ state: 'detached' });

    // A plain import sends no live header.
    await upload('web.tar', Buffer.from('compressed or not'));
    const plain = page.waitForRequest((q) => q.method() === 'POST' && q.url().endsWith('/1.0/backups'));
    await form.locator('button[type=submit]').click();
    assert.equal((await plain).headers()['x-trivisor-live'], undefined);
    await page.locator('text=Backup imported').nth(1).waitFor();
    assert.equal(b.imported.at(-1)?.live, false);

    // A ct guest's backups are compressed only: no choice offered.
    await page.goto(`${backend.url}/guests/ct-0003?tab=backups`);
    await page.locator('button:has-text("Make a backup")').waitFor();
    assert.equal(await page.locator('input[name=uncompressed]').count(), 0);
  });

  test('the backup directory lists each archive with its chain and whether it restores, filters by guest, imports a chain, a live restore with its progress, refuses a compressed live one in one line; a viewer gets the list without the action', async () => {
    await signedIn();
    const b = backend.backups;
    const imported = b.imported.length;
    const chain = '3f9a1c2b4d5e6f70';
    const full = `ct-0003/20261201T030000Z-full-${chain}.tar`;
    const incr2 = `ct-0003/20261203T030000Z-incr-${chain}-2.tar`;
    const whole = 'vm-0002/20261204T030000Z.tar';
    const broken = 'pvm-0001/20261203T030000Z-incr-aaaabbbbccccdddd-2.tar';
    const row = (archive: string) => page.locator(`tr[data-row="${archive}"]`);
    const cells = async (archive: string) => {
      const t = await row(archive).locator('td').allTextContents();
      // Guest, archive, kind, chain, size, restorable: the creation time is the browser's locale's.
      return [t[0], t[1], t[2], t[3], t[4], t[6]];
    };
    await page.goto(`${backend.url}/backups`);
    await row(whole).waitFor();
    assert.equal(await page.locator('table.backups tbody tr').count(), 5);
    assert.deepEqual(await cells(incr2), [
      'ct-0003',
      incr2.slice(8),
      'incremental',
      `${chain}#2`,
      '304 B',
      'yes',
    ]);
    assert.deepEqual(await cells(whole), ['vm-0002', whole.slice(8), 'whole', '–', '23 B', 'yes']);
    assert.match((await cells(broken))[5] ?? '', /^no: .+/);
    assert.equal(await row(broken).locator('button').count(), 0, 'no import of a broken chain');

    // The filter is in the URL.
    await page.selectOption('#backup-guest', 'ct-0003');
    await page.waitForURL(/\/backups\?guest=ct-0003$/);
    await page.waitForFunction("document.querySelectorAll('table.backups tbody tr').length === 3");

    // An incremental imports with its chain, one operation, under the name given: no live choice.
    await page.click(`button[aria-label="Import ${incr2}"]`);
    const form = page.locator(`form[aria-label="Import ${incr2}"]`);
    assert.equal(await form.locator('input[name=live]').count(), 0);
    await form.locator('input[name=name]').fill('from-chain');
    const asked = page.waitForRequest(
      (q) => q.method() === 'POST' && q.url().endsWith('/1.0/backups/import'),
    );
    await form.locator('button[type=submit]').click();
    assert.deepEqual((await asked).postDataJSON(), {
      source: { type: 'backup-directory', archive: incr2 },
      name: 'from-chain',
    });
    await page.locator(`text=Imported from ${incr2}`).waitFor();
    assert.deepEqual(
      b.imported.slice(imported).map((i) => [i.name, i.live]),
      [
        ['from-chain', false],
        ['from-chain', false],
        ['from-chain', false],
      ],
    );

    // A live restore of the compressed full: the API's one line, nothing imported.
    await page.click(`button[aria-label="Import ${full}"]`);
    const fullForm = page.locator(`form[aria-label="Import ${full}"]`);
    await fullForm.locator('input[name=live]').check();
    await fullForm.locator('button[type=submit]').click();
    await page
      .locator("text=The archive's disk is compressed (rootfs.tar.zst), and QEMU cannot read it in place")
      .waitFor();
    assert.equal(b.imported.length, imported + 3);

    // The vm guest's uncompressed archive restores live; the page follows the copy to its end.
    await page.selectOption('#backup-guest', '');
    await page.click(`button[aria-label="Import ${whole}"]`);
    const wholeForm = page.locator(`form[aria-label="Import ${whole}"]`);
    await wholeForm.locator('input[name=live]').check();
    await wholeForm.locator('button[type=submit]').click();
    await page
      .locator('[data-testid=backup-import-progress]', { hasText: '256 MiB of 512 MiB copied' })
      .waitFor();
    // Running seconds after the restore began, while the copy goes on (issue 20).
    assert.match(
      (await page.locator('[data-testid=backup-import-progress]').textContent()) ?? '',
      /copied, 128 MiB\/s, 2 s left \(running after 3\.1 s\) $/,
    );
    assert.deepEqual(b.imported.at(-1), { live: true, head: 'uncompressed vm ' });
    b.finishLive();
    await page.locator(`text=Imported from ${whole}`).waitFor();

    // Each member has its own directory (decision 0077): choosing web2 lists and imports there.
    const listed = page.waitForRequest((q) => /\/1\.0\/backups\?.*target=web2/.test(q.url()));
    await page.selectOption('#backup-member', 'web2');
    await listed;
    await page.waitForURL(/member=web2/);
    await page.click(`button[aria-label="Import ${whole}"]`);
    const onWeb2 = page.waitForResponse(
      (r) => r.request().method() === 'POST' && r.url().includes('/1.0/backups/import?target=web2'),
    );
    await page.locator(`form[aria-label="Import ${whole}"] button[type=submit]`).click();
    assert.equal((await onWeb2).status(), 202);

    // A viewer bound to every project lists the directory but is offered no import; a role bound to
    // one project does not see the page in the menu.
    await context.clearCookies();
    try {
      await page.goto(
        `${backend.url}${await backend.loginLink({ method: 'token', name: 'all-viewer', role: 'viewer', projects: ['*'] })}`,
      );
      await page.waitForSelector('nav.side');
      await page.click('nav.side >> text=Backups');
      await row(whole).waitFor();
      assert.equal(await page.locator('table.backups button:has-text("Import")').count(), 0);
      await context.clearCookies();
      await page.goto(
        `${backend.url}${await backend.loginLink({ method: 'token', name: 'one-op', role: 'operator', projects: ['default'] })}`,
      );
      await page.waitForSelector('nav.side');
      assert.equal(await page.locator('nav.side >> text=Backups').count(), 0);
    } finally {
      await context.clearCookies();
      await signIn(page, backend.url, backend.token);
    }
  });

  test("the Backups page's rows are the chosen member's: a first load naming this member lists once; none of the last member's rows while another's list loads; a late answer for a member no longer chosen is dropped", async () => {
    await signedIn();
    const whole = 'vm-0002/20261204T030000Z.tar';
    const rows = page.locator('table.backups tbody tr');
    const from = backend.backupListings.length;
    // web2's directory answers late, and holds only vm-0002's archives.
    const slow = backend.holdBackupListing('web2', 'vm-0002');
    try {
      await page.goto(`${backend.url}/backups?member=fakehost`);
      await page.locator(`tr[data-row="${whole}"]`).waitFor();
      await page.locator('#backup-member').waitFor();
      await page.selectOption('#backup-member', 'web2');
      // Asked once the page was drawn for web2: what it shows now is web2's choice.
      await slow.asked;
      assert.deepEqual(
        backend.backupListings.slice(from),
        ['', 'web2'],
        "one listing of this member's directory, not one by its name and one as this member's",
      );
      assert.equal(await rows.count(), 0, "no row of this member's while web2's list loads");
      assert.equal(await page.locator('button:has-text("Import")').count(), 0);
      // Chosen again before web2 answered: web3's list is shown, and web2's late answer is dropped.
      await page.selectOption('#backup-member', 'web3');
      await page.waitForURL(/member=web3/);
      await page.locator(`tr[data-row="${whole}"]`).waitFor();
      const count = await rows.count();
      assert.ok(count > 1, `web3's directory lists every guest's archives (${count} rows)`);
      const late = page.waitForResponse((r) => /\/1\.0\/backups\?.*target=web2/.test(r.url()));
      await slow.release();
      await (await late).finished();
      // Past the tasks that would take the late answer in.
      await page.evaluate(() => new Promise((r) => setTimeout(r, 0)));
      assert.equal(await rows.count(), count, "web2's late answer replaced none of web3's rows");
      await page.click(`button[aria-label="Import ${whole}"]`);
      assert.match(
        (await page.locator('h2', { hasText: `Import ${whole}` }).textContent()) ?? '',
        / from web3$/,
      );
    } finally {
      void slow.release();
    }
  });

  test("removing a member that holds guests shows the API's one-line refusal and changes nothing; forcing it, or removing an empty member, removes it", async () => {
    await signedIn();
    const saved = backend.members.map((m) => ({ ...m }));
    const accept = (d: Dialog) => void d.accept();
    page.on('dialog', accept);
    try {
      await page.goto(`${backend.url}/members`);
      await page.locator('tr[data-member="web2"]').waitFor();
      await page.click('button[aria-label="Remove member web2"]');
      const refusal = page.locator('[data-testid=member-refusal]');
      await refusal.waitFor();
      assert.match(
        (await refusal.locator('p').textContent()) ?? '',
        /^Removing web2 was refused: Member web2 holds 12 guests \(.*\): move or delete them first/,
      );
      assert.ok(
        backend.members.some((m) => m.name === 'web2'),
        'a refusal changes nothing',
      );
      assert.equal(await page.locator('tr[data-member="web2"]').count(), 1);
      await refusal.locator('button', { hasText: 'Remove web2 anyway' }).click();
      await page.locator('tr[data-member="web2"]').waitFor({ state: 'detached' });
      assert.equal(await refusal.count(), 0);
      await page.click('button[aria-label="Remove member web3"]');
      await page.locator('tr[data-member="web3"]').waitFor({ state: 'detached' });
      assert.deepEqual(
        backend.members.map((m) => m.name),
        ['fakehost'],
      );
      assert.match(
        (await page.locator('[data-testid=cluster-summary]').textContent()) ?? '',
        /^1 member, 1 online/,
      );
    } finally {
      page.off('dialog', accept);
      backend.members.splice(0, backend.members.length, ...saved);
    }
  });

  test('adding a member shows its join token once, to copy, with the command for the new host; the keyboard does it all', async () => {
    await signedIn();
    await context.grantPermissions(['clipboard-read', 'clipboard-write'], { origin: backend.url });
    await page.goto(`${backend.url}/members`);
    await page.locator('tr[data-member="web3"]').waitFor();
    // From the page's start, Tab reaches the column sorts, the removal buttons, the settings
    // (rebalancer, power, a member's power) and the form, and Enter submits it.
    await page.focus('#content');
    const reached: string[] = [];
    for (let i = 0; i < 60 && !reached.includes('#f-new-member-s-name'); i++) {
      await page.keyboard.press('Tab');
      reached.push(
        (await page.evaluate(
          "(() => { const el = document.activeElement; return el?.id ? '#' + el.id : (el?.getAttribute('aria-label') ?? el?.innerText ?? '').trim(); })()",
        )) as string,
      );
    }
    for (const want of [
      'Refresh',
      'Name ▲',
      'Joined',
      'Remove member web2',
      'Remove member web3',
      '#f-power-offs-a-day',
      '#f-power-member',
      '#f-power-driver',
      '#f-new-member-s-name',
    ]) {
      assert.ok(reached.includes(want), `${want} among ${reached.join(' | ')}`);
    }
    await page.keyboard.type('web4');
    await page.keyboard.press('Tab');
    await page.keyboard.type('1h');
    await page.keyboard.press('Enter');
    const shown = page.locator('[data-testid=join-token-shown]');
    await shown.waitFor();
    const token = await page.inputValue('#join-token');
    assert.match(token, /^trvjoin_[A-Za-z0-9_-]{20,}$/);
    assert.ok(((await shown.textContent()) ?? '').includes(`trivisor cluster join ${token} --address IP`));
    await shown.locator('button', { hasText: 'Copy the token' }).click();
    assert.equal(await page.evaluate('navigator.clipboard.readText()'), token);
    // Shown once: a reload does not bring it back.
    await page.reload();
    await page.locator('tr[data-member="web3"]').waitFor();
    assert.equal(await shown.count(), 0);
    // The API's refusals, in its one line: a taken name, an expiry that is no duration.
    await page.fill('#f-new-member-s-name', 'web2');
    await page.click('button:has-text("Make a join token")');
    await page.locator('.notice.error', { hasText: 'A member named web2 exists already' }).waitFor();
    await page.fill('#f-new-member-s-name', 'web5');
    await page.fill('#f-token-lasts', 'forever');
    await page.click('button:has-text("Make a join token")');
    await page
      .locator('.notice.error', { hasText: 'The token expiry "forever" is not a duration' })
      .waitFor();
    assert.equal(await shown.count(), 0);
  });

  test('on a single host the members view says it is not clustered, refuses a join in one line, and bootstraps a cluster', async () => {
    await signedIn();
    const single = await startFixtureBackend(runDir, { guests: 20, cluster: 'single' });
    await reach(context, single.url);
    try {
      await signIn(page, single.url, single.token, '/members');
      const note = page.locator('[data-testid=not-clustered]');
      await note.waitFor();
      assert.match((await note.textContent()) ?? '', /^This host is not clustered/);
      assert.equal(await page.locator('table[aria-label="Cluster members"]').count(), 0);
      assert.deepEqual(await axeFindings(page), []);
      await page.setViewportSize({ width: 390, height: 844 });
      try {
        assert.ok(((await page.evaluate('document.documentElement.scrollWidth')) as number) <= 390);
      } finally {
        await page.setViewportSize({ width: 1280, height: 900 });
      }
      await page.fill('#f-join-token', 'trvjoin_abc');
      await page.fill('#f-this-host-s-cluster-address', '198.18.0.9');
      await page.click('button:has-text("Join")');
      await page
        .locator('.notice.error', { hasText: 'This host holds 20 guests: only a host with no guests' })
        .waitFor();
      assert.equal(single.members.length, 0, 'a refused join changes nothing');
      await page.fill('#f-cluster-address', '198.18.0.1');
      await page.click('button:has-text("Bootstrap the cluster")');
      await page.locator('tr[data-member="fakehost"]').waitFor();
      assert.match(
        (await page.locator('[data-testid=cluster-summary]').textContent()) ?? '',
        /^1 member, 1 online/,
      );
      assert.deepEqual(
        single.members.map((m) => m.name),
        ['fakehost'],
      );
    } finally {
      await single.close();
      await signIn(page, backend.url, backend.token);
    }
  });

  test("the create wizard makes a guest of each model with its image, the model's own limits and a file", async () => {
    await signedIn();
    // Each model's limits: the fields offered, a memory below the model's least (refused before
    // the request), and what the request carries.
    const cases = [
      {
        model: 'ct',
        fields: ['CPUs', 'Memory', 'Disk', 'Processes'],
        tooSmall: '4MiB',
        least: '8MiB',
        memory: '128MiB',
      },
      {
        model: 'pvm',
        fields: ['CPUs', 'Memory', 'Disk', 'Processes'],
        tooSmall: '16MiB',
        least: '32MiB',
        memory: '96MiB',
      },
      { model: 'vm', fields: ['CPUs', 'Memory', 'Disk'], tooSmall: '32MiB', least: '64MiB', memory: '' },
    ] as const;
    const next = page.getByRole('button', { name: 'Next', exact: true });
    const chooseModel = (model: string) =>
      page.locator('input[name=model]').nth(['ct', 'pvm', 'vm'].indexOf(model)).check();
    try {
      for (const c of cases) {
        const name = `wiz-${c.model}`;
        const processes = (c.fields as readonly string[]).includes('Processes');
        await page.goto(`${backend.url}/new-guest`);
        // The vm is first set up as a ct with a process limit, then changed: the key is not sent.
        await chooseModel(c.model === 'vm' ? 'ct' : c.model);
        await page.waitForSelector('#f-image option[value=busybox]', { state: 'attached' });
        await page.selectOption('#f-image', 'busybox');
        await next.click();
        if (c.model === 'vm') {
          await page.fill('#f-processes', '100');
          await page.getByRole('button', { name: 'Back', exact: true }).click();
          await chooseModel('vm');
          await next.click();
        }
        await page.fill('#f-name', name);
        assert.deepEqual(await page.locator('.field label').allTextContents(), ['Name', ...c.fields]);
        assert.match(
          (await page.locator('.field:has(#f-memory) .muted').textContent()) ?? '',
          new RegExp(`at least ${c.least}`),
        );
        // Below the model's least: said at once, and the wizard does not go on.
        await page.fill('#f-memory', c.tooSmall);
        assert.equal(
          await page.getByTestId('memory-problem').textContent(),
          `A ${c.model} guest needs at least ${c.least} of memory`,
        );
        assert.ok(await next.isDisabled(), 'Next is disabled while the memory is too small');
        await page.fill('#f-memory', c.memory);
        await page.getByTestId('memory-problem').waitFor({ state: 'detached' });
        await page.fill('#f-cpus', '1');
        if (processes) await page.fill('#f-processes', '300');
        await next.click();
        // The fixture has no networks (its fake services have none): no network is chosen here.
        assert.equal(await page.locator('#f-network option').count(), 1);
        await next.click();
        await page.click('button:has-text("Add a file")');
        await page.fill('#f-file-1-path', '/etc/motd');
        await page.fill('#f-file-1-content', `hello ${c.model}`);
        await next.click();
        const expected: Record<string, string> = { 'limits.cpu': '1' };
        if (c.memory) expected['limits.memory'] = c.memory;
        if (processes) expected['limits.processes'] = '300';
        // The review says what is sent, and the vm's memory default where none is given.
        assert.equal(
          await page.getByTestId('review-limits').textContent(),
          [
            ...['limits.cpu', 'limits.memory', 'limits.processes'].flatMap((k) =>
              expected[k] ? [`${k}=${expected[k]}`] : [],
            ),
            ...(c.model === 'vm' ? ['memory 256MiB by default'] : []),
          ].join(', '),
        );
        await page.getByRole('button', { name: 'Create', exact: true }).click();
        await page.waitForURL(new RegExp(`/guests/${name}$`));
        const request = backend.created.find((r) => r.name === name);
        assert.ok(request, `the wizard created ${name}`);
        assert.equal(request.model, c.model);
        assert.equal(request.image, 'busybox');
        assert.deepEqual(request.config, {
          ...expected,
          'files./etc/motd': `mode=0644,uid=0,gid=0,content=${Buffer.from(`hello ${c.model}`).toString('base64')}`,
        });
        assert.equal(request.devices, undefined);
        assert.equal(backend.fake.guestMap.get(name)?.model, c.model);
      }
    } finally {
      for (const model of ['ct', 'pvm', 'vm']) backend.fake.guestMap.delete(`wiz-${model}`);
    }
  });

  test("the wizard's model choice follows the daemon's driver probes: a model it cannot run is not offered, warnings are shown", async () => {
    await signedIn();
    // The daemon's answer to GET /1.0 with the probes of a host without UML whose KVM does not work.
    const probes = [
      { model: 'ct', supported: true, version: 'runc 1.1.5', warnings: [], details: {} },
      {
        model: 'pvm',
        supported: false,
        version: '',
        warnings: ['linux.uml not found: install user-mode-linux'],
        details: {},
      },
      {
        model: 'vm',
        supported: true,
        version: 'QEMU 7.2',
        warnings: ['KVM does not work here: guests run under TCG'],
        details: {},
      },
    ];
    await page.route(`${backend.url}/1.0`, async (route) => {
      const answer = await route.fetch();
      const body = await answer.json();
      body.metadata.environment.drivers = probes;
      await route.fulfill({ response: answer, json: body });
    });
    try {
      await page.goto(`${backend.url}/new-guest`);
      const model = (m: string) => page.locator(`label[data-model=${m}]`);
      await model('pvm').locator('strong').waitFor();
      assert.ok(await model('pvm').locator('input').isDisabled(), 'pvm cannot be chosen');
      assert.match(
        (await model('pvm').textContent()) ?? '',
        /\(not available on this host\) · linux\.uml not found/,
      );
      assert.ok(!(await model('vm').locator('input').isDisabled()), 'vm can be chosen');
      assert.match(
        (await model('vm').textContent()) ?? '',
        /· KVM does not work here: guests run under TCG$/,
      );
      assert.equal(await model('ct').locator('.muted').count(), 0);
      await model('vm').locator('input').check();
      await page.waitForSelector('#f-image option[value=busybox]', { state: 'attached' });
      await page.selectOption('#f-image', 'busybox');
      assert.ok(!(await page.getByRole('button', { name: 'Next', exact: true }).isDisabled()));
    } finally {
      await page.unroute(`${backend.url}/1.0`);
    }
  });

  test('a page whose first reads cannot reach the daemon says so and retries until it loads', async () => {
    await signedIn();
    let refused = 0;
    const guestList = /\/1\.0\/guests\?recursion=1$/;
    await page.route(guestList, (route) =>
      refused++ < 2 ? route.abort('connectionrefused') : route.continue(),
    );
    try {
      await page.goto(`${backend.url}/operations`);
      await page.locator('[role=alert]', { hasText: 'Cannot reach the Trivisor daemon' }).waitFor();
      assert.match((await page.locator('[role=alert]').first().textContent()) ?? '', /Retrying…$/);
      await page.waitForSelector('h1:has-text("Operations")');
      // Two refused reads, then the one that loaded the page (and the event stream's, once it opens).
      assert.ok(refused >= 3, `${refused} reads`);
    } finally {
      await page.unroute(guestList);
    }
  });

  test('every view renders from its own URL without a script error', async () => {
    await signedIn();
    errors.length = 0;
    for (const url of [
      ...MAIN_PAGES,
      '/guests/ct-0003?tab=backups',
      '/guests/ct-0003?tab=volumes',
      '/guests/ct-0003?tab=nics',
      '/guests/ct-0003?tab=files',
      '/guests/ct-0003?tab=events',
    ]) {
      await page.goto(`${backend.url}${url}`);
      await page.waitForSelector('h1');
      await page.waitForTimeout(150);
      assert.ok(((await page.locator('h1').textContent()) ?? '').length > 0, url);
    }
    assert.deepEqual(errors, []);
  });

  test('axe-core finds no serious or critical issue on the main pages, in light and dark mode', async () => {
    await signedIn();
    for (const scheme of ['light', 'dark'] as const) {
      await page.emulateMedia({ colorScheme: scheme });
      for (const url of MAIN_PAGES) {
        await page.goto(`${backend.url}${url}`);
        await page.waitForSelector('h1');
        await page.waitForTimeout(200);
        assert.deepEqual(await axeFindings(page), [], `${scheme} ${url}`);
      }
    }
    await page.emulateMedia({ colorScheme: 'light' });
  });

  test('dark mode follows the system', async () => {
    await signedIn();
    await page.goto(`${backend.url}/guests`);
    await page.waitForSelector('h1');
    const background = () =>
      page.evaluate('getComputedStyle(document.body).backgroundColor') as Promise<string>;
    await page.emulateMedia({ colorScheme: 'light' });
    const light = await background();
    await page.emulateMedia({ colorScheme: 'dark' });
    const dark = await background();
    const lum = (rgb: string) => (rgb.match(/\d+/g) ?? []).slice(0, 3).reduce((s, v) => s + Number(v), 0);
    assert.ok(lum(light) > 600 && lum(dark) < 150, `light ${light}, dark ${dark}`);
    await page.emulateMedia({ colorScheme: 'light' });
  });

  test('at 390×844 (a phone) no main page scrolls sideways, and the menu opens', async () => {
    await signedIn();
    await page.setViewportSize({ width: 390, height: 844 });
    try {
      for (const url of MAIN_PAGES) {
        await page.goto(`${backend.url}${url}`);
        await page.waitForSelector('h1');
        await page.waitForTimeout(150);
        const width = (await page.evaluate('document.documentElement.scrollWidth')) as number;
        assert.ok(width <= 390, `${url} is ${width} px wide`);
      }
      // The members' table fits as it is, without a sideways scroll of its own.
      await page.goto(`${backend.url}/members`);
      await page.locator('tr[data-member="web3"]').waitFor();
      const wrap = (await page
        .locator('.table-wrap:has(table.members)')
        .evaluate((el) => [el.scrollWidth, el.clientWidth])) as number[];
      assert.ok(wrap[0]! <= wrap[1]!, `the members' table is ${wrap[0]} px wide in ${wrap[1]} px`);
      await page.click('button.menu-toggle');
      await page.click('nav.side >> text=Networks');
      await page.waitForURL(/\/networks$/);
    } finally {
      await page.setViewportSize({ width: 1280, height: 900 });
    }
  });

  test('the keyboard reaches the skip link, every menu entry and the list filter', async () => {
    await signedIn();
    await page.goto(`${backend.url}/guests`);
    await page.waitForSelector('tr[data-guest]');
    await page.evaluate('document.activeElement?.blur()');
    const reached: string[] = [];
    for (let i = 0; i < 16; i++) {
      await page.keyboard.press('Tab');
      reached.push(
        (await page.evaluate(
          "(() => { const el = document.activeElement; return el?.id ? '#' + el.id : (el?.innerText ?? '').trim(); })()",
        )) as string,
      );
    }
    for (const want of [
      'Skip to content',
      'Dashboard',
      'Guests',
      'Networks',
      'Storage',
      'Images',
      'Operations',
      'Members',
      'Administration',
      '#guest-filter',
    ]) {
      assert.ok(reached.includes(want), `${want} among ${reached.join(' | ')}`);
    }
    // Enter on a focused link navigates.
    await page.focus('nav.side >> text=Images');
    await page.keyboard.press('Enter');
    await page.waitForURL(/\/images$/);
  });

  test('a login link signs a fresh browser in, once', async () => {
    await signedIn();
    // Made as an admin would with trivisor admin web-link (the fixture's server, asked directly).
    const made = await backend.app.inject({
      method: 'POST',
      url: '/1.0/auth/web-links',
      headers: { authorization: `Bearer ${backend.token}` },
    });
    const link = made.json().metadata.path as string;
    await context.clearCookies();
    await page.goto(`${backend.url}${link}`);
    await page.waitForSelector('nav.side');
    assert.ok(!page.url().includes('code='), 'the code is taken out of the address bar');
    await context.clearCookies();
    await page.goto(`${backend.url}${link}`);
    const alert = page.locator('[role=alert]');
    await alert.waitFor();
    assert.match((await alert.textContent()) ?? '', /used already or expired/);
    await signIn(page, backend.url, backend.token);
  });

  test('when the session expires the next request leads to sign-in, and then back to the same page', async () => {
    await signedIn();
    const short = await startFixtureBackend(runDir, { guests: 20, sessionTtlMs: 3000 });
    await reach(context, short.url);
    try {
      await signIn(page, short.url, short.token, '/guests?q=ct&sort=status');
      await page.waitForSelector('tr[data-guest]');
      await page.waitForTimeout(3500);
      await page.goto(`${short.url}/guests/ct-0003?tab=config`);
      await page.waitForURL(/\/login\?next=/);
      assert.match(decodeURIComponent(page.url()), /next=\/guests\/ct-0003\?tab=config/);
      await page.fill('#token', short.token);
      await page.click('button[type=submit]');
      await page.waitForURL(`${short.url}/guests/ct-0003?tab=config`);
      await page.waitForSelector('h1:has-text("ct-0003")');
    } finally {
      await short.close();
    }
  });
});
