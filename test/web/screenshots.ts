// Screenshots of the web UI's main views for docs/ui/ and the README, taken in Debian's headless
// Chromium against the fixture backend (1,000 guests, seeded metrics).
// Usage: node test/web/screenshots.ts [OUT_DIR]   (default docs/ui)
import { mkdirSync } from 'node:fs';
import path from 'node:path';
import { makeRunDir, removeRunDir } from '../leftovers.ts';
import { openBrowser, signIn } from './browser.ts';
import { startFixtureBackend } from './fixture-backend.ts';

const out = path.resolve(process.argv[2] ?? path.join(import.meta.dirname, '../../docs/ui'));
mkdirSync(out, { recursive: true });
const runDir = await makeRunDir('web-shots');
const backend = await startFixtureBackend(runDir);
const context = await openBrowser(runDir, { width: 1280, height: 800, base: backend.url });
try {
  const page = context.pages()[0] ?? (await context.newPage());
  await signIn(page, backend.url, backend.token);
  const shot = async (name: string, url: string, wait: string, options: { full?: boolean } = {}) => {
    await page.goto(`${backend.url}${url}`);
    await page.waitForSelector(wait);
    await page.waitForTimeout(400);
    await page.screenshot({ path: path.join(out, `${name}.png`), fullPage: options.full ?? false });
    console.log(`wrote ${path.join(out, `${name}.png`)}`);
  };
  await shot('dashboard', '/?charts=1', '.uplot canvas');
  await shot('guests', '/guests?sort=status', 'tr[data-guest]');
  await shot('guest', '/guests/pvm-0001', 'dl.facts');
  await shot('charts', '/guests/ct-0003?tab=metrics&range=day', '.uplot canvas');
  await shot('create', '/new-guest?step=1', 'fieldset');
  await shot('members', '/members', 'tr[data-member]');
  // The rebalancer's section: a dry-run plan and the first recorded move's explanation open.
  await page.click('button[aria-label="Plan a rebalance (dry run)"]');
  await page.waitForSelector('[data-testid=rebalance-result]');
  await page.click('ul[aria-label="Rebalancing moves"] > li:nth-child(2) summary');
  await page
    .locator('section[aria-labelledby=rebalancing]')
    .screenshot({ path: path.join(out, 'rebalancing.png') });
  console.log(`wrote ${path.join(out, 'rebalancing.png')}`);
  // Power management (decision 0055): web3 powered off with its reason, web2 driven by its BMC.
  const web3 = backend.members.find((m) => m.name === 'web3');
  if (web3) {
    web3.status = 'Standby';
    web3.power = {
      state: 'off',
      since: new Date(Date.now() - 3_600_000).toISOString(),
      reason: 'web3 was powered off by its ipmi driver (its load stayed below 85% for 40m)',
      powerOffs: [new Date(Date.now() - 3_600_000).toISOString()],
    };
  }
  backend.rebalance.config = {
    ...backend.rebalance.config,
    'cluster.power.enabled': 'true',
    'member.web2.power.driver': 'ipmi',
    'member.web2.power.ipmi.host': '198.18.0.102',
    'member.web2.power.ipmi.user': 'admin',
    'member.web2.power.ipmi.password_file': '/etc/trivisor/bmc-password',
  };
  await page.goto(`${backend.url}/members`);
  await page.waitForSelector('[data-testid=member-power]');
  await page.selectOption('#f-power-member', 'web2');
  await page.waitForSelector('form[aria-label="Power settings of web2"]');
  await page.waitForTimeout(400);
  await page.locator('.panel:has(table.members)').screenshot({ path: path.join(out, 'power-state.png') });
  await page
    .locator('section[aria-labelledby=member-power]')
    .screenshot({ path: path.join(out, 'power-settings.png') });
  console.log(`wrote ${path.join(out, 'power-state.png')} and power-settings.png`);
  // The consolidation planner (decision 0065): the small day/night inventory planned on hosts of 4 cores.
  await page.goto(`${backend.url}/plan`);
  await page.setInputFiles(
    '#f-inventory',
    path.join(import.meta.dirname, '../fixtures/planner/day-night.csv'),
  );
  await page.fill('#f-host-size', 'cpu=4,memory=16GiB');
  await page.setInputFiles('#f-workload-profiles', {
    name: 'profiles.csv',
    mimeType: 'text/csv',
    buffer: Buffer.from(
      'id,os,kernel,cpu,syscalls,memory\nweb1,linux,,3,150k,3GiB\nweb2,other,,3,,3GiB\nbatch1,linux,own,3,1k,1GiB\nbatch2,linux,,3,2k,1GiB\n',
    ),
  });
  await page.click('form[aria-label="Plan a consolidation"] button[type=submit]');
  await page.waitForSelector('img[data-testid=plan-svg]');
  await page.waitForTimeout(400);
  await page.screenshot({ path: path.join(out, 'plan.png'), fullPage: true });
  console.log(`wrote ${path.join(out, 'plan.png')}`);
  await page.emulateMedia({ colorScheme: 'dark' });
  await shot('guests-dark', '/guests?model=vm', 'tr[data-guest]');
  await page.emulateMedia({ colorScheme: 'light' });
  await page.setViewportSize({ width: 390, height: 844 });
  await shot('phone', '/guests?q=ct-00', 'tr[data-guest]');
} finally {
  await context.close();
  await backend.close();
  await removeRunDir(runDir);
}
