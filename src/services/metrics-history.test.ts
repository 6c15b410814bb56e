import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { describe, test } from 'node:test';
import { createFakeServices } from '../../test/fakes/fake-services.ts';
import { HISTORY_RINGS, openMetricsHistory } from './metrics-history.ts';
import { createMetricsSampler } from './metrics-sampler.ts';

const T0 = Date.parse('2026-12-01T00:00:00Z');

describe('metric history: rings with average and maximum per step', () => {
  test('each range keeps the average and maximum of the samples in its steps', () => {
    const h = openMetricsHistory(':memory:');
    // Six 10 s samples in one minute: cpu 0..5, memory constant.
    for (let i = 0; i < 6; i++)
      h.record([{ series: 'guest/a', values: { cpu: i, memoryBytes: 100 } }], T0 + i * 10_000);
    const hour = h.query('guest/a', 'hour', T0 + 59_000);
    assert.equal(hour.stepSeconds, 10);
    assert.equal(hour.times.length, HISTORY_RINGS.hour.steps);
    assert.deepEqual(hour.metrics.cpu.average.slice(-6), [0, 1, 2, 3, 4, 5]);
    const day = h.query('guest/a', 'day', T0 + 59_000);
    assert.equal(day.stepSeconds, 300);
    assert.equal(day.metrics.cpu.average.at(-1), 2.5);
    assert.equal(day.metrics.cpu.maximum.at(-1), 5);
    assert.equal(day.metrics.memoryBytes.average.at(-1), 100);
    const year = h.query('guest/a', 'year', T0 + 59_000);
    assert.equal(year.metrics.cpu.maximum.at(-1), 5);
    h.close();
  });

  test('steps without samples are gaps (null), and a metric left out is not averaged in as 0', () => {
    const h = openMetricsHistory(':memory:');
    h.record([{ series: 'guest/a', values: { cpu: 1, memoryBytes: 10 } }], T0);
    // Stopped for a minute, then only memory is known.
    h.record([{ series: 'guest/a', values: { memoryBytes: 30 } }], T0 + 70_000);
    const hour = h.query('guest/a', 'hour', T0 + 70_000);
    const cpu = hour.metrics.cpu.average.slice(-8);
    assert.deepEqual(cpu, [1, null, null, null, null, null, null, null]);
    assert.deepEqual(hour.metrics.memoryBytes.average.slice(-8), [
      10,
      null,
      null,
      null,
      null,
      null,
      null,
      30,
    ]);
    const day = h.query('guest/a', 'day', T0 + 70_000);
    assert.equal(day.metrics.cpu.average.at(-1), 1);
    assert.equal(day.metrics.memoryBytes.average.at(-1), 20);
    h.close();
  });

  test('a ring overwrites its oldest step: a series never grows past its rings', () => {
    const h = openMetricsHistory(':memory:');
    // Two hours of 10 s samples: the hour ring holds the last hour only.
    for (let i = 0; i < 720; i++) h.record([{ series: 'host/h', values: { cpu: i } }], T0 + i * 10_000);
    const now = T0 + 719 * 10_000;
    const hour = h.query('host/h', 'hour', now);
    assert.equal(hour.metrics.cpu.average[0], 360);
    assert.equal(hour.metrics.cpu.average.at(-1), 719);
    assert.equal(hour.metrics.cpu.average.filter((v) => v === null).length, 0);
    assert.deepEqual(h.series(), ['host/h']);
    const window = h.window('host/h', 60, now);
    assert.equal(window.cpu.maximum, 719);
    h.forget('host/h');
    assert.deepEqual(h.series(), []);
    h.close();
  });

  test('the file is 0600 (what guests use is the host admin’s to read)', () => {
    const dir = mkdtempSync(path.join(tmpdir(), 'trivisor-history-'));
    try {
      const h = openMetricsHistory(path.join(dir, 'metrics.db'));
      h.record([{ series: 'guest/a', values: { cpu: 1 } }], T0);
      h.close();
      assert.equal(statSync(path.join(dir, 'metrics.db')).mode & 0o777, 0o600);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test('the sampler turns cumulative counters into rates, samples running guests only, and drops deleted ones', async () => {
    const fake = createFakeServices();
    const h = openMetricsHistory(':memory:');
    let now = T0;
    let cpuSeconds = 100;
    let io = 0;
    const guest = fake.guestMap.get('web1')!;
    guest.status = 'Running';
    guest.state.startedAt = '2026-11-30T00:00:00Z';
    const names = new Set(['web1', 'db1']);
    h.record(
      [
        { series: 'guest/db1', values: { memoryBytes: 1 } },
        { series: 'guest/gone', values: { memoryBytes: 1 } },
      ],
      now - 10_000,
    );
    const sampler = createMetricsSampler({
      names: async () => new Set(names),
      running: async () => {
        if (guest.status !== 'Running') return [];
        const g = structuredClone(guest);
        g.state.usage = { memoryBytes: 1000, cpuSeconds, processes: 1 };
        g.state.nics = {
          eth0: {
            network: 'n',
            hwaddr: 'x',
            hostName: 'v',
            addresses: [],
            counters: { rxBytes: io, txBytes: 2 * io, rxPackets: 0, txPackets: 0 },
          },
        };
        return [g];
      },
      history: h,
      hostName: 'h1',
      readHost: () => ({
        cpuBusySeconds: now / 1000,
        memoryUsedBytes: 5,
        netRxBytes: 0,
        netTxBytes: 0,
        diskReadBytes: 0,
        diskWriteBytes: 0,
      }),
      readGuestIo: () => ({ readBytes: io * 3, writeBytes: io * 4 }),
      now: () => now,
    });
    await sampler.sample();
    now += 10_000;
    cpuSeconds += 5; // half a CPU over 10 s
    io += 1000;
    await sampler.sample();
    const hour = h.query('guest/web1', 'hour', now);
    assert.equal(hour.metrics.cpu.average.at(-1), 0.5);
    assert.equal(hour.metrics.cpu.average.at(-2), null, 'no rate from the first sample');
    assert.equal(hour.metrics.netRxBytesPerSecond.average.at(-1), 100);
    assert.equal(hour.metrics.netTxBytesPerSecond.average.at(-1), 200);
    assert.equal(hour.metrics.diskReadBytesPerSecond.average.at(-1), 300);
    assert.equal(hour.metrics.diskWriteBytesPerSecond.average.at(-1), 400);
    assert.equal(hour.metrics.memoryBytes.average.at(-1), 1000);
    assert.equal(h.query('host/h1', 'hour', now).metrics.cpu.average.at(-1), 1);
    guest.status = 'Stopped';
    now += 10_000;
    await sampler.sample();
    assert.equal(
      h.query('guest/web1', 'hour', now).metrics.memoryBytes.average.at(-1),
      null,
      'stopped: a gap',
    );
    // The series of a guest that is gone goes at the next forget (every ten minutes); a stopped
    // guest's stays.
    assert.deepEqual(h.series('guest/').sort(), ['guest/db1', 'guest/web1']);
    names.delete('db1');
    now += 10 * 60_000;
    await sampler.sample();
    assert.deepEqual(h.series('guest/'), ['guest/web1']);
    h.close();
  });

  test("the sampler's disk counter reads take turns with the event loop (decision 0099)", async () => {
    const fake = createFakeServices();
    const h = openMetricsHistory(':memory:');
    const template = fake.guestMap.get('web1')!;
    const guests = Array.from({ length: 200 }, (_, i) => {
      const g = structuredClone(template);
      g.name = `g${i}`;
      g.status = 'Running';
      g.state.pid = 1000 + i;
      g.state.usage = { memoryBytes: 1, cpuSeconds: 1, processes: 1 };
      return g;
    });
    let reads = 0;
    const sampler = createMetricsSampler({
      names: async () => new Set(guests.map((g) => g.name)),
      running: async () => guests,
      history: h,
      hostName: 'h1',
      readHost: () => ({
        cpuBusySeconds: 0,
        memoryUsedBytes: 0,
        netRxBytes: 0,
        netTxBytes: 0,
        diskReadBytes: 0,
        diskWriteBytes: 0,
      }),
      readGuestIo: () => {
        reads++;
        return { readBytes: 0, writeBytes: 0 };
      },
    });
    try {
      let readsWhenTheLoopTurned: number | undefined;
      setImmediate(() => {
        readsWhenTheLoopTurned = reads;
      });
      await sampler.sample();
      assert.equal(reads, 200, 'every running guest read');
      assert.ok(
        readsWhenTheLoopTurned !== undefined && readsWhenTheLoopTurned < 200,
        `the loop turned after ${readsWhenTheLoopTurned} of 200 reads`,
      );
      assert.equal(h.series('guest/').length, 200);
    } finally {
      h.close();
    }
  });
});
