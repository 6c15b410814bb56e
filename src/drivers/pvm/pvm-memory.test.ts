import assert from 'node:assert/strict';
import { test } from 'node:test';
import { aGuestSpec } from '../../../test/fakes/guest-records.ts';
import type { ProcessIdentity } from '../../core/types.ts';
import { silentLogger } from '../../host/logger.ts';
import { pvmMemory } from './pvm-memory.ts';
import type { MconsoleClient } from './uml-mconsole.ts';

function driverWith(live: ProcessIdentity | undefined) {
  const sent: string[] = [];
  const mconsole = {
    async request(command: string) {
      sent.push(command);
      if (command === 'proc meminfo') return { ok: true, text: 'MemTotal: 131072 kB\nMemFree: 100000 kB\n' };
      return { ok: true, text: '' };
    },
  } as unknown as MconsoleClient;
  const d = pvmMemory({
    log: silentLogger(),
    mconsoleOf: () => mconsole,
    liveUml: async () => live,
  });
  return { d, sent };
}

const spec = aGuestSpec({ name: 'p', model: 'pvm' });
const run = { pid: 100, startTime: 5000 };

test('the run the controller knows gives back its free pages', async () => {
  const { d, sent } = driverWith(run);
  const bytes = await d.releaseFreeMemory?.(spec, run);
  assert.ok((bytes ?? 0) > 0);
  assert.equal(sent[0], 'proc meminfo');
  assert.match(sent[1] ?? '', /^config mem=-\d+K$/);
  assert.match(sent[2] ?? '', /^config mem=\+\d+K$/);
});

test('a kernel other than the known run (a restart still booting) is not touched, nor a stopped guest', async () => {
  for (const live of [{ pid: 101, startTime: 6000 }, { pid: 100, startTime: 6000 }, undefined]) {
    const { d, sent } = driverWith(live);
    assert.equal(await d.releaseFreeMemory?.(spec, run), 0);
    assert.deepEqual(sent, [], `no mconsole request for ${JSON.stringify(live)}`);
  }
});
