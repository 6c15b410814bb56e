import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { after, before, test } from 'node:test';
import type { ProcessIdentity } from '../../src/core/types.ts';
import { readProcStat } from '../../src/host/proc-stat.ts';
import { type CtFixture, makeCtFixture } from '../drivers/ct-fixture.ts';
import { execIn } from '../drivers/exec-helpers.ts';
import { testGuestSpec } from '../drivers/guest-spec.ts';

let fx: CtFixture;
const spec = testGuestSpec('survivor', 'ct');

before(async () => {
  fx = await makeCtFixture();
  await fx.driver.create(spec, fx.image);
});

after(async () => {
  await fx.driver.stop(spec, { timeoutMs: 0, force: true }).catch(() => {});
  await fx.driver.delete(spec).catch(() => {});
  await fx.cleanup();
});

test('a guest outlives the process that started it and is re-adopted by a new driver', async () => {
  // A separate Node process plays the daemon: it starts the guest and exits.
  const program = `
    import { createCtDriver } from ${JSON.stringify(new URL('../../src/drivers/ct/ct-driver.ts', import.meta.url).pathname)};
    import { hostRunner } from ${JSON.stringify(new URL('../../src/host/runner.ts', import.meta.url).pathname)};
    import { silentLogger } from ${JSON.stringify(new URL('../../src/host/logger.ts', import.meta.url).pathname)};
    const driver = createCtDriver({ runner: hostRunner(), log: silentLogger(), stateDir: process.argv[1], idmapBase: ${1_000_000} });
    const image = { record: { fingerprint: 't', properties: JSON.parse(process.argv[3]) }, rootfs: process.argv[2] };
    const id = await driver.start(JSON.parse(process.argv[4]), image);
    process.stdout.write(JSON.stringify({ id, daemon: process.pid }));
  `;
  const child = spawn(
    process.execPath,
    [
      '--input-type=module',
      '-e',
      program,
      fx.stateDir,
      fx.image.rootfs,
      JSON.stringify(fx.image.record.properties),
      JSON.stringify(spec),
    ],
    { stdio: ['ignore', 'pipe', 'inherit'] },
  );
  let out = '';
  child.stdout.on('data', (d: Buffer) => {
    out += d.toString();
  });
  const code = await new Promise((r) => child.once('close', r));
  assert.equal(code, 0);
  const { id, daemon } = JSON.parse(out) as { id: ProcessIdentity; daemon: number };
  assert.equal(await readProcStat(daemon), undefined, 'the daemon is gone');
  const state = await fx.reopen().inspect(spec, id);
  assert.equal(state.state, 'running');
  const stat = await readProcStat(id.pid);
  assert.notEqual(stat?.ppid, process.pid, 'the guest is not a child of a Node process');
  assert.equal((await execIn(fx.driver, spec, ['echo', 'still up'])).stdout, 'still up\n');
});
