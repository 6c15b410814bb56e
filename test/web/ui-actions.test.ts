import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { readFileSync, readlinkSync } from 'node:fs';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import type { BrowserContext, Dialog, Page } from 'playwright-core';
import { debianArchiveUnreachable } from '../debian-archive.ts';
import { makeRunDir, removeRunDir } from '../leftovers.ts';
import { type Daemon, eventually, startDaemon } from '../system/harness.ts';
import { openBrowser, signIn } from './browser.ts';
import { checkSorts, ordered, type Row, type SortColumn } from './sort-check.ts';

const offline = await debianArchiveUnreachable();

interface ApiGuest {
  name: string;
  status: string;
  model: string;
  image: string;
  imageAlias?: string;
  createdAt: string;
  config: Record<string, string>;
  devices?: Record<string, { network: string; hwaddr?: string; 'ipv4.address'?: string }>;
  disks?: Record<string, { pool: string; source: string; path?: string }>;
}

/**
 * What the UI does, against a real daemon (issue 15): each test clicks through a view and then
 * reads the daemon's own state (the API, or the guest through exec) to prove the change was made.
 * One running and one stopped ct guest are shared by every test: ct guests are the cheapest.
 */
describe('web UI actions against a real daemon, checked in its state', () => {
  let d: Daemon;
  let runDir: string;
  let context: BrowserContext;
  let page: Page;
  let base: string;
  // A network of this run's own (other tests make bridges on this machine too).
  const net = `uia${process.pid % 100_000}`;
  const subnet = `198.19.${150 + (process.pid % 50)}`;
  // A second one: a guest with two NICs, and a networks table of two rows to sort.
  const net2 = `uib${process.pid % 100_000}`;
  const subnet2 = `198.19.${200 + (process.pid % 50)}`;

  const api = async <T>(method: string, url: string, body?: unknown): Promise<T> => {
    const r = await d.api(method, url, body);
    assert.ok(r.status < 300, `${method} ${url}: ${r.status} ${r.text}`);
    return r.body.metadata as T;
  };
  const guest = (name: string) => api<ApiGuest>('GET', `/1.0/guests/${name}`);
  const exec = (name: string, script: string) => d.ok(['exec', name, '--', 'sh', '-c', script]);

  /** Waits for the notice an action ends with: `text` when it succeeded; its error fails the test. */
  const notice = async (text: string) => {
    const shown = page.locator('.notice.info', { hasText: text }).or(page.locator('.notice.error'));
    await shown.first().waitFor({ timeout: 120_000 });
    const error = page.locator('.notice.error');
    if ((await error.count()) > 0) throw new Error(`the page says: ${await error.first().textContent()}`);
    // Dismissed, so that the next action's notice is its own.
    await page.locator('.notice', { hasText: text }).getByRole('button', { name: 'Dismiss' }).click();
  };
  const accept = (dialog: Dialog) => void dialog.accept();

  before(async () => {
    d = await startDaemon({ tcp: true });
    runDir = await makeRunDir('web');
    base = d.url!;
    const token = readFileSync(path.join(d.stateDir, 'token'), 'utf8').trim();
    d.ok(['network', 'create', net, `ipv4.address=${subnet}.1/24`]);
    d.ok(['network', 'create', net2, `ipv4.address=${subnet2}.1/24`, 'ipv4.nat=true']);
    d.ok(['launch', 'busybox', 'a1']);
    d.ok(['create', 'busybox', 'b2']);
    context = await openBrowser(runDir, { base });
    page = context.pages()[0] ?? (await context.newPage());
    page.on('dialog', accept);
    await signIn(page, base, token);
  });
  after(async () => {
    await context?.close();
    if (runDir) await removeRunDir(runDir);
    if (d) {
      for (const g of ['a1', 'a1copy', 'b2', 'c3', 'w4', 's5']) d.cli(['delete', '--force', g]);
      d.cli(['network', 'delete', net]);
      d.cli(['network', 'delete', net2]);
      await d.destroy();
    }
  });

  test("the dashboard's figures are the API's: member, guests by state and model, recent operations, pools", async () => {
    await page.goto(`${base}/`);
    const host = await api<{ environment: { name: string; cpus: number } }>('GET', '/1.0');
    const guests = await api<ApiGuest[]>('GET', '/1.0/guests?recursion=1');
    const pools = await api<Array<{ name: string }>>('GET', '/1.0/storage-pools?recursion=1');
    const total = page.getByTestId('guest-total');
    await eventually('the guests counted', async () => (await total.textContent()) === String(guests.length));
    assert.equal(await total.textContent(), String(guests.length));
    assert.equal(await page.getByTestId('member-name').textContent(), host.environment.name);
    assert.match(
      (await page.getByTestId('member-facts').textContent()) ?? '',
      new RegExp(`^${host.environment.cpus} CPUs`),
    );
    const count = (list: ApiGuest[], key: 'status' | 'model') => {
      const c: Record<string, number> = {};
      for (const g of list) c[g[key]] = (c[g[key]] ?? 0) + 1;
      return c;
    };
    const byStatus: Record<string, number> = {};
    for (const el of await page.locator('[data-status-count]').all()) {
      const s = (await el.getAttribute('data-status-count')) as string;
      byStatus[s] = Number(((await el.textContent()) ?? '').replace(s, '').trim());
    }
    assert.deepEqual(byStatus, count(guests, 'status'));
    assert.deepEqual(byStatus, { Running: 1, Stopped: 1 });
    const models = count(guests, 'model');
    for (const m of ['ct', 'pvm', 'vm']) {
      assert.equal(await page.locator(`[data-model-count=${m}]`).textContent(), `${m}: ${models[m] ?? 0}`);
    }
    // Recent operations: the API's newest eight, newest first.
    const ops = await api<Array<{ description: string; createdAt: string; status: string }>>(
      'GET',
      '/1.0/operations?recursion=1',
    );
    const newest = ops
      .sort((a, b) => b.createdAt.localeCompare(a.createdAt))
      .slice(0, 8)
      .map((o) => `${o.description} ${o.status}`);
    assert.ok(newest.length > 0, 'the launch and create of the setup are operations');
    const recent = () =>
      page
        .locator('section[aria-labelledby=recent-ops] tbody tr')
        .evaluateAll((rows) =>
          rows.map((r) => `${r.children[1]?.textContent} ${r.children[2]?.textContent?.trim()}`),
        );
    await eventually('the recent operations shown', async () => (await recent()).length === newest.length);
    assert.deepEqual(await recent(), newest);
    await page.locator('[data-pool]').first().waitFor();
    assert.deepEqual(
      await page.locator('[data-pool]').evaluateAll((els) => els.map((e) => e.getAttribute('data-pool'))),
      pools.map((p) => p.name),
    );
  });

  test("a configuration key set on the guest page is the guest's, live; removing it there unsets it", async () => {
    await page.goto(`${base}/guests/a1?tab=config`);
    // limits.processes: a ct guest's own pids cgroup, so live (a first limits.memory waits for the
    // restart of a guest that shares its daemon's memory cgroup, decision 0093).
    await page.fill('#f-key', 'limits.processes');
    await page.fill('#f-value', '200');
    await page.click('form[aria-label="Set a configuration key"] button[type=submit]');
    await notice('Configuration changed');
    assert.equal((await guest('a1')).config['limits.processes'], '200');
    // Live on a running ct guest: nothing waits for its next start.
    assert.equal(await page.locator('[role=status]', { hasText: 'Applies at the next start' }).count(), 0);
    await page.fill('#f-key', 'user.note');
    await page.fill('#f-value', 'set in the browser');
    await page.click('form[aria-label="Set a configuration key"] button[type=submit]');
    await notice('Configuration changed');
    assert.equal((await guest('a1')).config['user.note'], 'set in the browser');
    await page.click('button[aria-label="Remove user.note"]');
    await page.locator('td', { hasText: 'user.note' }).waitFor({ state: 'detached', timeout: 30_000 });
    assert.equal((await guest('a1')).config['user.note'], undefined);
  });

  test('a snapshot taken on the guest page, then restored there, brings back what the guest had', async () => {
    exec('a1', 'echo before > /root/mark');
    await page.goto(`${base}/guests/a1?tab=snapshots`);
    await page.fill('#f-snapshot-name', 'ui-before');
    await page.click('button:has-text("Take snapshot")');
    await notice('Snapshot taken');
    await page.waitForSelector('td:text-is("ui-before")');
    const snaps = await api<Array<{ name: string }>>('GET', '/1.0/guests/a1/snapshots?recursion=1');
    assert.deepEqual(
      snaps.map((s) => s.name),
      ['ui-before'],
    );
    exec('a1', 'echo after > /root/mark');
    await page.locator('tr', { hasText: 'ui-before' }).locator('button', { hasText: 'Restore' }).click();
    await notice('Restored');
    await eventually('a1 running again', async () => (await guest('a1')).status === 'Running', 60_000);
    assert.equal(exec('a1', 'cat /root/mark'), 'before\n');
  });

  test("a backup made on the guest page downloads while it is made, as the daemon's archive, is deleted there, and imports from an upload there", async () => {
    await page.goto(`${base}/guests/a1?tab=backups`);
    // The download follows the export (issue 20 §4): the click that makes the backup downloads it.
    const [download] = await Promise.all([
      page.waitForEvent('download'),
      page.click('button:has-text("Make a backup")'),
    ]);
    await notice('Backup made and downloaded');
    const link = page.locator('a', { hasText: /^Download / });
    const backup = ((await link.textContent()) ?? '').replace(/^Download /, '');
    assert.equal(download.suggestedFilename(), `a1-${backup}.tar`);
    assert.equal(await download.failure(), null);
    const file = path.join(runDir, 'backup.tar');
    await download.saveAs(file);
    // The followed download is the daemon's finished archive byte for byte, header blocks
    // included (they are written last, over placeholders): the plain download of the link.
    const [plain] = await Promise.all([page.waitForEvent('download'), link.click()]);
    const plainFile = path.join(runDir, 'backup-plain.tar');
    await plain.saveAs(plainFile);
    assert.ok(readFileSync(file).equals(readFileSync(plainFile)));
    // The daemon's archive: a tar of its manifest and the guest's root file system (tar + zstd),
    // which holds the mark the snapshot test left.
    assert.match(execFileSync('tar', ['-tf', file], { encoding: 'utf8' }), /^manifest\.json$/m);
    const listing = execFileSync('sh', ['-c', `tar -xOf '${file}' rootfs.tar.zst | zstd -dc | tar -t`], {
      encoding: 'utf8',
    });
    assert.match(listing, /root\/mark$/m);
    assert.equal((await d.api('GET', `/1.0/guests/a1/backups/${backup}/export`)).status, 200);
    await page.click('button:has-text("Delete from the daemon")');
    await link.waitFor({ state: 'detached' });
    assert.equal((await d.api('GET', `/1.0/guests/a1/backups/${backup}/export`)).status, 404);

    // A followed download cut short (the daemon's own frames, without their end) fails: no file
    // is handed to the browser, the page says why, and the backup is not left on the daemon.
    const followed = '**/backups/*/export?follow=true*';
    await page.route(followed, async (route) => {
      const res = await route.fetch();
      const body = await res.body();
      await route.fulfill({ response: res, body: body.subarray(0, Math.floor(body.length / 2)) });
    });
    let downloads = 0;
    const counted = () => downloads++;
    page.on('download', counted);
    try {
      await page.click('button:has-text("Make a backup")');
      const failed = page.locator('.notice.error', {
        hasText: 'The download stopped before the archive was complete',
      });
      await failed.waitFor({ timeout: 120_000 });
      await failed.getByRole('button', { name: 'Dismiss' }).click();
    } finally {
      page.off('download', counted);
      await page.unroute(followed);
    }
    assert.equal(downloads, 0);
    assert.equal(await link.count(), 0);
    type Made = { updatedAt: string; metadata: { backup?: string } };
    const cut = await api<Made[]>('GET', '/1.0/operations?recursion=1');
    const last = cut.filter((o) => o.metadata.backup !== undefined && o.metadata.backup !== backup);
    assert.equal(last.length, 1, JSON.stringify(last));
    await eventually(
      'the cut backup removed from the daemon',
      async () =>
        (await d.api('GET', `/1.0/guests/a1/backups/${last[0]?.metadata.backup}/export`)).status === 404,
      30_000,
    );

    // The downloaded archive, uploaded on the same tab, is a guest again, with a1's files.
    await page.setInputFiles('#f-backup-archive', file);
    await page.fill('#f-name-of-the-imported-guest', 'a1copy');
    await page.click('form[aria-label="Import a backup"] button[type=submit]');
    await notice('Backup imported');
    assert.equal((await guest('a1copy')).model, 'ct');
    d.ok(['start', 'a1copy']);
    assert.equal(exec('a1copy', 'cat /root/mark'), 'before\n');
    d.ok(['delete', '--force', 'a1copy']);
  });

  test('a volume created on its pool page and attached on the guest page is mounted in the guest; detached there, it is not', async () => {
    const pools = await api<Array<{ name: string }>>('GET', '/1.0/storage-pools?recursion=1');
    const pool = pools[0]!.name;
    await page.goto(`${base}/storage/${pool}`);
    await page.fill('#f-name', 'uivol');
    await page.selectOption('#f-type', 'filesystem');
    await page.fill('#f-size', '64MiB');
    await page.click('form[aria-label="Create a volume"] button[type=submit]');
    await notice('Volume created');
    await page.waitForSelector('td:text-is("uivol")');
    const vol = await api<{ name: string; type: string }>(
      'GET',
      `/1.0/storage-pools/${pool}/volumes/custom/uivol`,
    );
    assert.equal(vol.type, 'filesystem');

    await page.goto(`${base}/guests/a1?tab=volumes`);
    await page.selectOption('#f-pool', pool);
    await page.fill('#f-volume', 'uivol');
    await page.fill('#f-mount-path', '/data');
    await page.click('form[aria-label="Attach a volume"] button[type=submit]');
    await notice('Attached');
    // The page shows the disk the guest now has.
    await page.waitForSelector(`td:text-is("${pool}/uivol")`, { timeout: 30_000 });
    const disks = Object.values((await guest('a1')).disks ?? {});
    assert.deepEqual(
      disks.map((x) => [x.pool, x.source, x.path]),
      [[pool, 'uivol', '/data']],
    );
    await eventually('/data mounted in a1', () => / \/data /.test(exec('a1', 'cat /proc/mounts')), 30_000);
    await page.click('button:has-text("Detach")');
    await notice('Detached');
    await page.waitForSelector(`td:text-is("${pool}/uivol")`, { state: 'detached', timeout: 30_000 });
    assert.deepEqual((await guest('a1')).disks ?? {}, {});
    await api('DELETE', `/1.0/storage-pools/${pool}/volumes/custom/uivol`);
  });

  test("a NIC added on the guest page is the guest's, with an address on that network, or the name, address and MAC given there; detached there, it is gone", async () => {
    const before = Object.keys((await guest('a1')).devices ?? {});
    await page.goto(`${base}/guests/a1?tab=nics`);
    await page.selectOption('#f-network', net);
    await page.click('form[aria-label="Add a NIC"] button[type=submit]');
    await notice('NIC added');
    const added = Object.entries((await guest('a1')).devices ?? {}).filter(([k]) => !before.includes(k));
    assert.equal(added.length, 1, JSON.stringify(added));
    const [nic, device] = added[0]!;
    assert.equal(device.network, net);
    const row = page.locator('tr', { has: page.locator(`td:text-is("${nic}")`) });
    await row.waitFor({ timeout: 30_000 });
    // The guest has the NIC: an address of the network's subnet on its interface.
    await eventually(
      `an address of ${subnet}.0/24 in a1`,
      () => exec('a1', 'ip -4 addr').includes(`inet ${subnet}.`),
      30_000,
    );
    await row.locator('button', { hasText: 'Detach' }).click();
    await notice('NIC removed');
    await row.waitFor({ state: 'detached', timeout: 30_000 });
    assert.deepEqual(Object.keys((await guest('a1')).devices ?? {}), before);

    // One with a name, an address and a MAC of its own: the daemon's device and the guest's interface.
    await page.selectOption('#f-network', net2);
    await page.fill('#f-nic-name', 'eth7');
    await page.fill('#f-ipv4-address', `${subnet2}.66`);
    await page.fill('#f-mac-address', '0a:00:00:00:07:07');
    await page.click('form[aria-label="Add a NIC"] button[type=submit]');
    await notice('NIC added');
    const eth7 = (await guest('a1')).devices?.eth7;
    assert.deepEqual(
      [eth7?.network, eth7?.['ipv4.address'], eth7?.hwaddr],
      [net2, `${subnet2}.66`, '0a:00:00:00:07:07'],
    );
    await eventually(
      `${subnet2}.66 on eth7 in a1`,
      () => exec('a1', 'ip -4 addr show eth7').includes(`inet ${subnet2}.66/`),
      30_000,
    );
    assert.match(exec('a1', 'ip link show eth7'), /link\/ether 0a:00:00:00:07:07 /);
    const row7 = page.locator('tr[data-row="eth7"]');
    await row7.locator('button', { hasText: 'Detach' }).click();
    await notice('NIC removed');
    await row7.waitFor({ state: 'detached', timeout: 30_000 });
    assert.deepEqual(Object.keys((await guest('a1')).devices ?? {}), before);
  });

  test('files: a directory is browsed, a file uploaded there is in the guest, and downloads with its bytes', async () => {
    await page.goto(`${base}/guests/a1?tab=files`);
    await page.click('a:text-is("etc/")');
    await page.waitForURL(/path=%2Fetc/);
    await page.waitForSelector('li:has-text("passwd")');
    await page.goto(`${base}/guests/a1?tab=files&path=%2Froot`);
    await page.waitForSelector('li:has-text("mark")');
    await page.setInputFiles('#f-file', {
      name: 'hello.txt',
      mimeType: 'text/plain',
      buffer: Buffer.from('uploaded from the browser\n'),
    });
    await page.fill('#f-mode', '0600');
    await page.click('form[aria-label="Upload a file"] button[type=submit]');
    await notice('Uploaded');
    assert.equal(exec('a1', 'cat /root/hello.txt'), 'uploaded from the browser\n');
    assert.equal(exec('a1', 'stat -c %a /root/hello.txt'), '600\n');
    await page.waitForSelector('li:has-text("hello.txt")');
    exec('a1', 'echo written in the guest > /root/from-guest');
    await page.reload();
    const [download] = await Promise.all([
      page.waitForEvent('download'),
      page.click('button[aria-label="Download from-guest"]'),
    ]);
    assert.equal(download.suggestedFilename(), 'from-guest');
    const file = path.join(runDir, 'from-guest');
    await download.saveAs(file);
    assert.equal(readFileSync(file, 'utf8'), 'written in the guest\n');
  });

  test("a port forward added on the network page is the network's; removed there, it is gone", async () => {
    const forwards = async () =>
      (await api<{ forwards?: Array<Record<string, unknown>> }>('GET', `/1.0/networks/${net}`)).forwards ??
      [];
    await page.goto(`${base}/networks/${net}`);
    await page.fill('#f-listen-address', `${subnet}.1`);
    await page.fill('#f-listen-port', '18080');
    await page.selectOption('#f-forward-protocol', 'tcp');
    await page.fill('#f-target-guest-or-address', `${subnet}.50`);
    await page.fill('#f-target-port', '8080');
    await page.click('button:has-text("Add forward")');
    await notice('Forward added');
    await page.waitForSelector(`td:text-is("${subnet}.1:18080/tcp")`);
    assert.deepEqual(
      (await forwards()).map((f) => [
        f.listenAddress,
        f.listenPort,
        f.protocol,
        f.targetAddress,
        f.targetPort,
      ]),
      [[`${subnet}.1`, 18080, 'tcp', `${subnet}.50`, 8080]],
    );
    await page.click('button[aria-label="Remove forward 18080"]');
    await page.waitForSelector(`td:text-is("${subnet}.1:18080/tcp")`, { state: 'detached' });
    assert.deepEqual(await forwards(), []);
  });

  test('a storage pool created on the storage page exists, and is deleted on its own page', async () => {
    const status = async () => (await d.api('GET', '/1.0/storage-pools/uipool')).status;
    await page.goto(`${base}/storage`);
    await page.fill('#f-name', 'uipool');
    await page.selectOption('#f-driver', 'dir');
    await page.click('form[aria-label="Create a storage pool"] button[type=submit]');
    await notice('Pool created');
    await page.click('a:text-is("uipool")');
    await page.waitForSelector('h1:has-text("Pool uipool")');
    // Opened from a link in a fresh tab, its Delete still lands on the storage page.
    await page.goto('about:blank');
    await page.goto(`${base}/storage/uipool`);
    await page.waitForSelector('h1:has-text("Pool uipool")');
    const pool = await api<{ name: string; driver: string }>('GET', '/1.0/storage-pools/uipool');
    assert.equal(pool.driver, 'dir');
    await page.click('button:has-text("Delete pool")');
    await page.waitForURL(/\/storage$/, { timeout: 30_000 });
    assert.equal(await status(), 404);
  });

  test('an image imported on the images page from a tarball is listed, and a guest made from it has its files', async () => {
    const tree = path.join(runDir, 'tree');
    const busybox = JSON.parse(d.ok(['image', 'info', 'busybox', '--format', 'json'])) as {
      fingerprint: string;
    };
    execFileSync('cp', ['-a', path.join(d.stateDir, 'images', busybox.fingerprint, 'trees', 'rootfs'), tree]);
    execFileSync('sh', ['-c', `echo imported in the browser > ${tree}/etc/marker`]);
    const tarball = path.join(runDir, 'rootfs.tar.gz');
    execFileSync('tar', ['-C', tree, '-czf', tarball, '.']);
    await page.goto(`${base}/images`);
    await page.setInputFiles('#f-tarball', tarball);
    await page.fill('#f-import-alias', 'aaimg');
    await page.click('form[aria-label="Import an image"] button[type=submit]');
    await notice('Image imported');
    await page.waitForSelector('td:text-is("aaimg")');
    const images = await api<Array<{ aliases: string[] }>>('GET', '/1.0/images?recursion=1');
    assert.ok(
      images.some((i) => i.aliases.includes('aaimg')),
      JSON.stringify(images),
    );
    d.ok(['create', 'aaimg', 'c3']);
    d.ok(['start', 'c3']);
    assert.equal(exec('c3', 'cat /etc/marker'), 'imported in the browser\n');
    d.ok(['stop', 'c3']);
  });

  test('an operation cancelled on the operations page ends Cancelled', async () => {
    const r = await d.api('POST', '/1.0/guests/a1/exec', {
      command: ['sleep', '600'],
      'record-output': true,
    });
    assert.equal(r.status, 202, r.text);
    const id = (r.body.metadata as { id: string }).id;
    const sleeping = () => /sleep 600/.test(d.ok(['exec', 'a1', '--', 'ps']));
    await eventually('sleep 600 running in a1', sleeping, 30_000);
    await page.goto(`${base}/operations`);
    const cancel = page.locator('button[aria-label^="Cancel "]');
    await cancel.first().waitFor({ timeout: 30_000 });
    assert.equal(await cancel.count(), 1, 'only the exec can be cancelled');
    await cancel.click();
    await eventually(
      'the exec cancelled',
      async () => (await api<{ status: string }>('GET', `/1.0/operations/${id}`)).status === 'Cancelled',
      30_000,
    );
    await page.waitForSelector('tr .status:text-is("Cancelled")', { timeout: 30_000 });
    await eventually('sleep 600 ended in a1', () => !sleeping(), 10_000);
  });

  test('the create wizard makes a guest with a NIC on each chosen network (a fixed address and MAC on one, a name of its own (eth5) on the other), on the chosen storage pool, with its file', async () => {
    await api('POST', '/1.0/storage-pools', { name: 'uiwpool', driver: 'dir' });
    try {
      await page.goto(`${base}/new-guest`);
      await page.waitForSelector('#f-image option[value=busybox]', { state: 'attached' });
      await page.selectOption('#f-image', 'busybox');
      await page.getByRole('button', { name: 'Next', exact: true }).click();
      await page.fill('#f-name', 'w4');
      await page.getByRole('button', { name: 'Next', exact: true }).click();
      await page.waitForSelector(`#f-network option:text-is("${net}")`, { state: 'attached' });
      await page.selectOption('#f-network', net);
      // The first NIC keeps its default name (eth0), with a fixed address and MAC.
      await page.fill('#f-nic-1-ipv4-address', `${subnet}.77`);
      await page.fill('#f-nic-1-mac-address', '0a:11:22:33:44:55');
      await page.click('button:has-text("Add a NIC")');
      await page.selectOption('#f-network-2', net2);
      // Each name field shows the name its NIC gets without one.
      assert.equal(await page.getAttribute('#f-nic-1-name', 'placeholder'), 'eth0');
      assert.equal(await page.getAttribute('#f-nic-2-name', 'placeholder'), 'eth1');
      // eth5: the busybox image's init asks DHCP on ethN interfaces only.
      await page.fill('#f-nic-2-name', 'eth5');
      await page.waitForSelector('#f-storage-pool option:text-is("uiwpool")', { state: 'attached' });
      await page.selectOption('#f-storage-pool', 'uiwpool');
      await page.getByRole('button', { name: 'Next', exact: true }).click();
      await page.click('button:has-text("Add a file")');
      await page.fill('#f-file-1-path', '/etc/wizard-note');
      await page.fill('#f-file-1-content', 'written by the wizard\n');
      await page.getByRole('button', { name: 'Next', exact: true }).click();
      await page.getByRole('button', { name: 'Create', exact: true }).click();
      await page.waitForURL(/\/guests\/w4$/, { timeout: 120_000 });
      const made = await guest('w4');
      assert.equal(made.model, 'ct');
      assert.deepEqual(
        Object.entries(made.devices ?? {})
          .map(([nic, x]) => `${nic}:${x.network}`)
          .sort(),
        [`eth0:${net}`, `eth5:${net2}`],
      );
      assert.equal(made.devices?.eth0?.['ipv4.address'], `${subnet}.77`);
      assert.equal(made.devices?.eth0?.hwaddr, '0a:11:22:33:44:55');
      const pool = await api<{ path: string; guests?: Array<{ name: string }> }>(
        'GET',
        '/1.0/storage-pools/uiwpool',
      );
      assert.deepEqual(
        (pool.guests ?? []).map((g) => g.name),
        ['w4'],
      );
      // Its files are on that pool: the daemon links guests/w4 to POOL/guests/w4.
      assert.equal(readlinkSync(path.join(d.stateDir, 'guests', 'w4')), path.join(pool.path, 'guests', 'w4'));
      // Its file is in it, with the wizard's mode.
      assert.equal(exec('w4', 'cat /etc/wizard-note'), 'written by the wizard\n');
      assert.equal(exec('w4', 'stat -c %a /etc/wizard-note'), '644\n');
      // Started, with the fixed address and MAC on eth0, and an address of the second subnet on eth5.
      const ip = (...args: string[]) => d.cli(['exec', 'w4', '--', 'ip', ...args]).stdout;
      await eventually(
        `${subnet}.77 on eth0 and an address of ${subnet2}.0/24 on eth5 in w4`,
        () =>
          ip('-4', 'addr', 'show', 'eth0').includes(`inet ${subnet}.77/`) &&
          ip('-4', 'addr', 'show', 'eth5').includes(`inet ${subnet2}.`),
        30_000,
      ).catch((e: Error) => {
        throw new Error(`${e.message}; w4 has: ${ip('addr')}`);
      });
      assert.match(ip('link', 'show', 'eth0'), /link\/ether 0a:11:22:33:44:55 /);
    } finally {
      d.cli(['delete', '--force', 'w4']);
      await d.api('DELETE', '/1.0/storage-pools/uiwpool');
    }
  });

  test('the networks, pools, volumes, images, operations and administration tables sort by each column, both ways, as the API has them', async () => {
    await api('POST', '/1.0/projects', { name: 'uis-proj' });
    await api('POST', '/1.0/auth/tokens', { name: 'uis-tok-b', role: 'viewer', projects: ['default'] });
    await api('POST', '/1.0/auth/tokens', { name: 'uis-tok-a', role: 'operator', projects: ['uis-proj'] });
    const certificates: string[] = [];
    for (const [cn, role] of [
      ['uis-cert-b', 'viewer'],
      ['uis-cert-a', 'operator'],
    ]) {
      const pem = path.join(runDir, `${cn}.pem`);
      execFileSync(
        'openssl',
        [
          'req',
          '-x509',
          '-newkey',
          'ec',
          '-pkeyopt',
          'ec_paramgen_curve:P-256',
          '-nodes',
          '-days',
          '1',
          '-subj',
          `/CN=${cn}`,
          '-keyout',
          path.join(runDir, `${cn}.key`),
          '-out',
          pem,
        ],
        { stdio: 'ignore' },
      );
      const trusted = await api<{ fingerprint: string }>('POST', '/1.0/auth/certificates', {
        certificate: readFileSync(pem, 'utf8'),
        role,
        projects: ['*'],
      });
      certificates.push(trusted.fingerprint);
    }
    await api('POST', '/1.0/storage-pools', { name: 'uispool', driver: 'dir' });
    const pool = (await api<Array<{ name: string }>>('GET', '/1.0/storage-pools?recursion=1'))[0]!.name;
    for (const [name, size] of [
      ['uis-b', '32MiB'],
      ['uis-a', '96MiB'],
    ]) {
      await api('POST', `/1.0/storage-pools/${pool}/volumes/custom`, {
        name,
        type: 'filesystem',
        config: { size },
      });
    }
    try {
      /**
       * Opens `url` and sorts its table by each column both ways against the API's rows; it opens
       * sorted by the last column, the operations newest first.
       */
      const sorts = async (
        url: string,
        read: () => Promise<Row[]>,
        name: (r: Row) => string,
        columns: SortColumn[],
        table = { scope: '', prefix: '' },
      ) => {
        await page.goto(`${base}${url}`);
        const [, , first] = columns.at(-1)!;
        await checkSorts(page, read, name, columns, {
          ...table,
          opening: { value: first, dir: url === '/operations' ? -1 : 1 },
        });
      };
      const config = (r: Row) => r.config as Record<string, string>;
      await sorts(
        '/networks',
        () => api('GET', '/1.0/networks?recursion=1'),
        (r) => r.name as string,
        [
          ['IPv4', 'ipv4', (r) => config(r)['ipv4.address'] ?? '–'],
          ['NAT', 'nat', (r) => config(r)['ipv4.nat'] ?? 'false'],
          ['Used by', 'usedBy', (r) => (r.usedBy as string[]).length],
          ['Name', 'name', (r) => r.name],
        ],
      );
      await sorts(
        '/storage',
        () => api('GET', '/1.0/storage-pools?recursion=1'),
        (r) => r.name as string,
        [
          ['Driver', 'driver', (r) => r.driver],
          ['Used', 'used', (r) => (r.usage as { usedBytes: number } | null)?.usedBytes ?? -1],
          ['Pool', 'name', (r) => r.name],
        ],
      );
      await sorts(
        `/storage/${pool}`,
        () => api('GET', `/1.0/storage-pools/${pool}/volumes/custom?recursion=1`),
        (r) => r.name as string,
        [
          ['Size', 'size', (r) => r.sizeBytes],
          ['Name', 'name', (r) => r.name],
        ],
      );
      const alias = (r: Row) => (r.aliases as string[]).join(', ') || (r.fingerprint as string).slice(0, 12);
      await sorts(
        '/images',
        () => api('GET', '/1.0/images?recursion=1'),
        (r) => r.fingerprint as string,
        [
          ['Description', 'description', (r) => r.description],
          ['Size', 'size', (r) => r.sizeBytes],
          ['Alias', 'alias', alias],
        ],
      );
      await sorts(
        '/operations',
        () => api('GET', '/1.0/operations?recursion=1'),
        (r) => r.id as string,
        [
          ['What', 'description', (r) => r.description],
          ['Status', 'status', (r) => r.status],
          ['Started', 'createdAt', (r) => r.createdAt],
        ],
        // Not the task history below it, a table of its own.
        { scope: 'table[aria-label="Operations"]', prefix: '' },
      );
      // The sort is the URL's: a reload keeps it.
      await page.reload();
      const newestFirst = ordered(
        await api('GET', '/1.0/operations?recursion=1'),
        (r) => r.createdAt,
        (r) => r.id as string,
        -1,
      );
      const shown = () =>
        page
          .locator('table[aria-label="Operations"] tr[data-row]')
          .evaluateAll((rows) => rows.map((r) => r.getAttribute('data-row')));
      await eventually(
        'the operations shown',
        async () => JSON.stringify(await shown()) === JSON.stringify(newestFirst),
        15_000,
      ).catch(() => undefined);
      assert.deepEqual(
        await shown(),
        newestFirst,
        'the operations sorted by time, descending, after a reload',
      );
      const panel = (title: string) => `.panel:has(h2:text-is("${title}"))`;
      await sorts(
        '/admin',
        () => api('GET', '/1.0/projects?recursion=1'),
        (r) => r.name as string,
        [
          ['Guests', 'guests', (r) => (r.usage as { guests: number }).guests],
          ['Name', 'name', (r) => r.name],
        ],
        { scope: panel('Projects'), prefix: 'projects-' },
      );
      await sorts(
        '/admin',
        () => api('GET', '/1.0/auth/tokens'),
        (r) => r.name as string,
        [
          ['Role', 'role', (r) => r.role],
          ['Projects', 'projects', (r) => (r.projects as string[]).join(', ')],
          ['Name', 'name', (r) => r.name],
        ],
        { scope: panel('API tokens'), prefix: 'tokens-' },
      );
      await sorts(
        '/admin',
        () => api('GET', '/1.0/auth/certificates'),
        (r) => r.fingerprint as string,
        [
          ['Role', 'role', (r) => r.role],
          ['Fingerprint', 'fingerprint', (r) => r.fingerprint],
          ['Name', 'name', (r) => r.name],
        ],
        { scope: panel('Trusted client certificates'), prefix: 'certificates-' },
      );
    } finally {
      for (const name of ['uis-a', 'uis-b'])
        await d.api('DELETE', `/1.0/storage-pools/${pool}/volumes/custom/${name}`);
      await d.api('DELETE', '/1.0/storage-pools/uispool');
      for (const t of ['uis-tok-a', 'uis-tok-b']) await d.api('DELETE', `/1.0/auth/tokens/${t}`);
      for (const f of certificates) await d.api('DELETE', `/1.0/auth/certificates/${f}`);
      await d.api('DELETE', '/1.0/projects/uis-proj');
    }
  });

  test("a guest's configuration, snapshots, backups, volumes and NICs, and the audit log, sort by each column, both ways, as the API has them", async () => {
    // A guest of this test's own, stopped, with two of everything, named against their order of making.
    d.ok(['create', 'busybox', 's5']);
    const pool = (await api<Array<{ name: string }>>('GET', '/1.0/storage-pools?recursion=1'))[0]!.name;
    const volumes = [
      ['uit-a', '/zz'],
      ['uit-b', '/aa'],
    ];
    try {
      await api('PATCH', '/1.0/guests/s5', { config: { 'user.sort-b': '1', 'user.sort-a': '2' } });
      d.ok(['snapshot', 'create', 's5', 'snap-b']);
      d.ok(['snapshot', 'create', 's5', 'snap-a']);
      await api('POST', `/1.0/networks/${net2}/attach`, {
        guest: 's5',
        nic: 'eth0',
        hwaddr: '0a:00:00:00:00:02',
      });
      await api('POST', `/1.0/networks/${net}/attach`, {
        guest: 's5',
        nic: 'eth1',
        hwaddr: '0a:00:00:00:00:01',
      });
      for (const [name, mount] of volumes) {
        await api('POST', `/1.0/storage-pools/${pool}/volumes/custom`, {
          name,
          type: 'filesystem',
          config: { size: '32MiB' },
        });
        await api('POST', `/1.0/storage-pools/${pool}/volumes/custom/${name}/attach`, {
          guest: 's5',
          path: mount,
        });
      }
      const s5 = () =>
        api<ApiGuest & { state: { nics?: Record<string, { hwaddr: string; addresses: string[] }> } }>(
          'GET',
          '/1.0/guests/s5',
        );
      const byName = (r: Row) => r.name as string;
      const opening = { value: byName, dir: 1 } as const;

      await page.goto(`${base}/guests/s5?tab=config`);
      await checkSorts(
        page,
        async () => Object.entries((await s5()).config).map(([name, value]) => ({ name, value })),
        byName,
        [
          ['Value', 'value', (r) => ((r.name as string).startsWith('files.') ? '(file)' : r.value)],
          ['Key', 'key', byName],
        ],
        { prefix: 'config-', opening },
      );

      await page.goto(`${base}/guests/s5?tab=snapshots`);
      await checkSorts(
        page,
        () => api('GET', '/1.0/guests/s5/snapshots?recursion=1'),
        byName,
        [
          ['Taken', 'createdAt', (r) => r.createdAt],
          ['Name', 'name', byName],
        ],
        { prefix: 'snapshots-', opening },
      );

      await page.goto(`${base}/guests/s5?tab=volumes`);
      await checkSorts(
        page,
        async () =>
          Object.entries((await s5()).disks ?? {}).map(([name, x]) => ({
            name,
            volume: `${x.pool}/${x.source}`,
            path: x.path ?? '–',
          })),
        byName,
        [
          ['Path', 'path', (r) => r.path],
          ['Volume', 'volume', (r) => r.volume],
          ['Device', 'device', byName],
        ],
        { prefix: 'volumes-', opening },
      );

      await page.goto(`${base}/guests/s5?tab=nics`);
      await checkSorts(
        page,
        async () => {
          const g = await s5();
          return Object.entries(g.devices ?? {}).map(([name, x]) => ({
            name,
            network: x.network,
            hwaddr: g.state.nics?.[name]?.hwaddr ?? (x as { hwaddr?: string }).hwaddr ?? '–',
            addresses: (g.state.nics?.[name]?.addresses ?? []).join(', ') || '–',
          }));
        },
        byName,
        [
          ['Network', 'network', (r) => r.network],
          ['MAC', 'hwaddr', (r) => r.hwaddr],
          ['Addresses', 'addresses', (r) => r.addresses],
          ['NIC', 'nic', byName],
        ],
        { prefix: 'nics-', opening },
      );

      // Backups: the API lists none; the page lists those it made, as their operations answered.
      await page.goto(`${base}/guests/s5?tab=backups`);
      for (let i = 0; i < 2; i++) {
        await page.click('button:has-text("Make a backup")');
        await notice('Backup made');
      }
      type Op = { description: string; updatedAt: string; metadata: { backup?: string; sizeBytes?: number } };
      const backups = async (shown: string[]) =>
        (await api<Op[]>('GET', '/1.0/operations?recursion=1'))
          .filter((o) => o.metadata.backup !== undefined && shown.includes(o.metadata.backup))
          .map((o) => ({ name: o.metadata.backup, sizeBytes: o.metadata.sizeBytes, madeAt: o.updatedAt }));
      await checkSorts(
        page,
        backups,
        byName,
        [
          ['Size', 'sizeBytes', (r) => r.sizeBytes],
          ['Backup', 'name', byName],
          ['Made', 'madeAt', (r) => r.madeAt],
        ],
        { prefix: 'backups-', opening: { value: (r) => r.madeAt, dir: 1 } },
      );
      for (const b of await page
        .locator('tr[data-row]')
        .evaluateAll((rows) => rows.map((r) => r.getAttribute('data-row'))))
        await d.api('DELETE', `/1.0/guests/s5/backups/${b}`);

      // The audit log, on the administration page and as the operations page's task history.
      type Entry = {
        id: number;
        time: string;
        actor: { method: string; name: string };
        request: { method: string; path: string };
        result: { status: number; error?: string };
      };
      const audit = async (shown: string[]) =>
        (await api<Entry[]>('GET', '/1.0/audit?all-projects=true&limit=10000')).filter((e) =>
          shown.includes(String(e.id)),
        ) as unknown as Row[];
      const entry = (r: Row) => r as unknown as Entry;
      const auditColumns: SortColumn[] = [
        ['Who', 'who', (r) => `${entry(r).actor.method}:${entry(r).actor.name}`],
        ['Request', 'request', (r) => `${entry(r).request.method} ${entry(r).request.path}`],
        ['Result', 'result', (r) => `${entry(r).result.status} ${entry(r).result.error ?? ''}`],
        ['Time', 'time', (r) => entry(r).time],
      ];
      const auditTable = (scope: string, prefix: string) => ({
        scope,
        prefix,
        opening: { value: (r: Row) => entry(r).time, dir: -1 as const },
        tie: (r: Row) => String(entry(r).id).padStart(16, '0'),
      });
      await page.goto(`${base}/admin`);
      await checkSorts(
        page,
        audit,
        (r) => String(entry(r).id),
        auditColumns,
        auditTable('.panel:has(h2:text-is("Audit log (newest 50)"))', 'audit-'),
      );
      await page.goto(`${base}/operations`);
      await checkSorts(
        page,
        audit,
        (r) => String(entry(r).id),
        auditColumns,
        auditTable('.panel:has(h2:text-is("Task history (audit log, kept across restarts)"))', 'history-'),
      );
    } finally {
      for (const [name] of volumes) {
        await d.api('POST', `/1.0/storage-pools/${pool}/volumes/custom/${name}/detach`, { guest: 's5' });
      }
      d.cli(['delete', '--force', 's5']);
      for (const [name] of volumes)
        await d.api('DELETE', `/1.0/storage-pools/${pool}/volumes/custom/${name}`);
    }
  });

  test('an image build asked on the images page shows its progress from the daemon and is cancelled on the operations page, leaving no image; an unknown source is one line', async () => {
    const description = 'Building image uibuild from debian/bookworm';
    const ops = () =>
      api<Array<{ id: string; description: string; status: string; progressText?: string }>>(
        'GET',
        '/1.0/operations?recursion=1',
      );
    const imageStatus = async () => (await d.api('GET', '/1.0/images/uibuild')).status;
    // The daemon's debootstrap: its target is in the daemon's state directory.
    const bootstrapping = () =>
      execFileSync('ps', ['-eo', 'args'], { encoding: 'utf8' })
        .split('\n')
        .some((line) => line.includes('debootstrap') && line.includes(d.stateDir));
    const form = 'form[aria-label="Build an image"]';
    await page.goto(`${base}/images`);
    await page.fill('#f-source', 'debian/nosuch');
    await page.fill('#f-build-alias', 'uibuild');
    await page.click(`${form} button[type=submit]`);
    const error = page.locator('.notice.error');
    await error.waitFor({ timeout: 30_000 });
    assert.match((await error.textContent()) ?? '', /Image source 'debian\/nosuch' is not supported/);
    await error.getByRole('button', { name: 'Dismiss' }).click();
    assert.equal(await imageStatus(), 404);
    assert.ok(!(await ops()).some((o) => o.description.startsWith('Building image uibuild')));

    await page.fill('#f-source', 'debian/bookworm');
    await page.click(`${form} button[type=submit]`);
    try {
      // The page shows the build's progress as the daemon's events carry it.
      await page.locator(`progress[aria-label="${description}"]`).waitFor({ timeout: 30_000 });
      const building = (await ops()).find((o) => o.description === description);
      assert.ok(building, 'the daemon runs the build');
      assert.equal(building.status, 'Running');
      await eventually('debootstrap running for the daemon', bootstrapping, 30_000);
      const line = page.locator('[aria-live=polite] div', { hasText: description });
      assert.match(
        (await line.textContent()) ?? '',
        /Bootstrapping Debian bookworm from|%|Retrieving|Validating|Resolving/,
      );

      // Through the menu, not a reload: the images page's wait for the build goes on.
      await page.click('a[href="/operations"]');
      await page.click(`button[aria-label="Cancel ${description}"]`);
      await eventually(
        'the build cancelled',
        async () =>
          (await api<{ status: string }>('GET', `/1.0/operations/${building.id}`)).status === 'Cancelled',
        60_000,
      );
      await page.waitForSelector(`tr[data-row="${building.id}"] .status:text-is("Cancelled")`, {
        timeout: 30_000,
      });
      await eventually('debootstrap ended', () => !bootstrapping(), 30_000);
      assert.equal(await imageStatus(), 404);
      // The build form's wait ends too: its one line says so.
      const ended = page.locator('.notice.error');
      await ended.first().waitFor({ timeout: 30_000 });
      assert.match((await ended.first().textContent()) ?? '', /cancel/i);
    } finally {
      for (const o of await ops()) {
        if (o.description === description && o.status === 'Running')
          await d.api('DELETE', `/1.0/operations/${o.id}`);
      }
      // The build form's own end (cancelled) is a notice: dismissed, so that no later page shows it.
      for (const dismiss of await page.getByRole('button', { name: 'Dismiss' }).all()) await dismiss.click();
    }
  });

  // Without Debian's archive there is nothing to build from; the skip says why.
  const build = { timeout: 900_000, skip: offline ?? false };
  test(
    'a whole image build asked on the images page completes: its image is then listed there, and is the one the daemon has',
    build,
    async () => {
      await page.goto(`${base}/images`);
      await page.fill('#f-source', 'debian/bookworm');
      await page.fill('#f-build-alias', 'uibuilt');
      await page.click('form[aria-label="Build an image"] button[type=submit]');
      try {
        // debootstrap of a minimal bookworm: about 30 s on an idle host, minutes under load.
        const done = page
          .locator('.notice.info', { hasText: 'Image built' })
          .or(page.locator('.notice.error'));
        await done.first().waitFor({ timeout: 840_000 });
        const error = page.locator('.notice.error');
        if ((await error.count()) > 0) throw new Error(`the page says: ${await error.first().textContent()}`);
        // Listed on the page without a reload, as the daemon has it.
        await page.waitForSelector('td:text-is("uibuilt")');
        const image = await api<{
          fingerprint: string;
          aliases: string[];
          properties?: Record<string, string>;
        }>('GET', '/1.0/images/uibuilt');
        assert.deepEqual(image.aliases, ['uibuilt']);
        // The listed row is the daemon's image: its fingerprint.
        await page.locator(`tr[data-row="${image.fingerprint}"] td:text-is("uibuilt")`).waitFor();
        await page
          .locator('.notice', { hasText: 'Image built' })
          .getByRole('button', { name: 'Dismiss' })
          .click();
      } finally {
        for (const o of await api<Array<{ id: string; description: string; status: string }>>(
          'GET',
          '/1.0/operations?recursion=1',
        )) {
          if (o.description.startsWith('Building image uibuilt') && o.status === 'Running')
            await d.api('DELETE', `/1.0/operations/${o.id}`);
        }
        if ((await d.api('GET', '/1.0/images/uibuilt')).status === 200) d.ok(['image', 'delete', 'uibuilt']);
      }
    },
  );

  test('no page has two elements of one id (a label would name the wrong field)', async () => {
    const pools = await api<Array<{ name: string }>>('GET', '/1.0/storage-pools?recursion=1');
    const pages = [
      '/',
      ...['overview', 'config', 'snapshots', 'backups', 'volumes', 'nics', 'files', 'events'].map(
        (tab) => `/guests/a1?tab=${tab}`,
      ),
      '/guests',
      '/new-guest',
      '/networks',
      `/networks/${net}`,
      '/storage',
      `/storage/${pools[0]!.name}`,
      '/images',
      '/operations',
      '/admin',
      '/members',
    ];
    const twice: string[] = [];
    for (const url of pages) {
      await page.goto(`${base}${url}`);
      await page.waitForSelector('h1#page-title');
      await page.waitForLoadState('networkidle');
      const ids = (await page.evaluate(
        "(() => { const ids = [...document.querySelectorAll('[id]')].map((e) => e.id); return ids.filter((x, i) => ids.indexOf(x) !== i); })()",
      )) as string[];
      for (const id of ids) twice.push(`${url}: #${id}`);
    }
    assert.deepEqual(twice, []);
  });

  test("the guest list sorts by each column, both ways, as the page's rows show them", async () => {
    await page.goto(`${base}/guests`);
    const listed = await api<ApiGuest[]>('GET', '/1.0/guests?recursion=1');
    await eventually(
      'every guest listed',
      async () => (await page.locator('tr[data-guest]').count()) === listed.length,
    );
    const shown = () =>
      page.locator('tr[data-guest]').evaluateAll((rows) => rows.map((r) => r.getAttribute('data-guest')));
    // The rows reach their order a render after the click: asked until they do, then compared.
    const rowsAre = async (want: string[], what: string) => {
      await eventually(
        what,
        async () => JSON.stringify(await shown()) === JSON.stringify(want),
        15_000,
      ).catch(() => undefined);
      assert.deepEqual(await shown(), want, what);
    };
    const cell = (g: ApiGuest, key: string) =>
      key === 'image' ? g.imageAlias || g.image.slice(0, 12) : String(g[key as keyof ApiGuest]);
    for (const [label, key] of [
      ['Status', 'status'],
      ['Image', 'image'],
      ['Name', 'name'],
    ] as const) {
      const expected = [...listed]
        .sort((a, b) => cell(a, key).localeCompare(cell(b, key)) || a.name.localeCompare(b.name))
        .map((g) => g.name);
      await page.click(`th button.sort:has-text("${label}")`);
      await page.waitForURL(new RegExp(`sort=${key}(?!.*dir=desc)`));
      await rowsAre(expected, `sorted by ${key}`);
      await page.click(`th button.sort:has-text("${label}")`);
      await page.waitForURL(/dir=desc/);
      const reversed = [...listed]
        .sort((a, b) => cell(b, key).localeCompare(cell(a, key)) || b.name.localeCompare(a.name))
        .map((g) => g.name);
      await rowsAre(reversed, `sorted by ${key}, descending`);
      assert.equal(await page.locator(`th[aria-sort]`).getAttribute('aria-sort'), 'descending');
    }
  });
});
