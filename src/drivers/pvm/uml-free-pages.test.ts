import assert from 'node:assert/strict';
import { test } from 'node:test';
import { parseMeminfo, releaseFreePages, unplugKiB } from './uml-free-pages.ts';
import type { MconsoleClient, MconsoleReply } from './uml-mconsole.ts';

const MEMINFO = 'MemTotal:         112372 kB\nMemFree:           88492 kB\nMemAvailable:      90000 kB\n';

function fakeMconsole(answers: (command: string) => MconsoleReply) {
  const sent: string[] = [];
  const client = {
    socketPath: '/x/mconsole',
    async request(command: string) {
      sent.push(command);
      return answers(command);
    },
  } as unknown as MconsoleClient;
  return { client, sent };
}

test('unplugKiB leaves a tenth of the memory (at least 8 MiB) free, in whole pages, and nothing below 1 MiB', () => {
  const info = parseMeminfo(MEMINFO);
  assert.deepEqual(info, { memTotalKiB: 112372, memFreeKiB: 88492 });
  assert.equal(unplugKiB({ memTotalKiB: 112372, memFreeKiB: 88492 }), 77252);
  assert.equal(unplugKiB({ memTotalKiB: 40000, memFreeKiB: 20000 }), 20000 - 8192);
  assert.equal(unplugKiB({ memTotalKiB: 40000, memFreeKiB: 9000 }), 0);
  assert.equal(parseMeminfo('MemTotal: 1 kB\n'), undefined);
});

test('releaseFreePages unplugs the free memory and plugs it back at once', async () => {
  const m = fakeMconsole((c) =>
    c === 'proc meminfo' ? { ok: true, text: MEMINFO } : { ok: true, text: '' },
  );
  const r = await releaseFreePages(m.client);
  assert.deepEqual(r, { releasedKiB: 77252 });
  assert.deepEqual(m.sent, ['proc meminfo', 'config mem=-77252K', 'config mem=+77252K']);
});

test('releaseFreePages plugs back even when the unplug failed half-way, and says why', async () => {
  const m = fakeMconsole((c) =>
    c === 'proc meminfo'
      ? { ok: true, text: MEMINFO }
      : c.startsWith('config mem=-')
        ? { ok: false, text: 'Failed to release memory' }
        : { ok: true, text: '' },
  );
  const r = await releaseFreePages(m.client);
  assert.equal(r.releasedKiB, 0);
  assert.match(r.error ?? '', /Failed to release memory/);
  assert.deepEqual(m.sent.at(-1), 'config mem=+77252K');
});

test('releaseFreePages tries the plug twice and sends nothing to a kernel whose meminfo it cannot read', async () => {
  let plugs = 0;
  const m = fakeMconsole((c) =>
    c === 'proc meminfo'
      ? { ok: true, text: MEMINFO }
      : c.startsWith('config mem=+') && plugs++ === 0
        ? { ok: false, text: 'busy' }
        : { ok: true, text: '' },
  );
  assert.deepEqual(await releaseFreePages(m.client), { releasedKiB: 77252 });
  assert.equal(plugs, 2);
  const silent = fakeMconsole(() => ({ ok: false, text: 'no such command' }));
  const r = await releaseFreePages(silent.client);
  assert.equal(r.releasedKiB, 0);
  assert.deepEqual(silent.sent, ['proc meminfo']);
});
