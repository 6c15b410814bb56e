import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { describe, test } from 'node:test';
import type { Guest, GuestSpec, GuestUsage, Model } from '../core/types.ts';
import type { DiskCounters, GuestDriver } from '../drivers/guest-driver.ts';
import { createHostService, type HostServiceDeps } from './host-service.ts';
import type { GuestService } from './types.ts';

const MEMBER = 'm1';

function guest(
  name: string,
  model: Model,
  options: { project?: string; host?: string; status?: Guest['status'] } = {},
): Guest {
  const status = options.status ?? 'Running';
  const usage: GuestUsage | null =
    status === 'Running'
      ? { memoryBytes: 1000, memoryLimitBytes: 4000, cpuSeconds: 2.5, processes: 3 }
      : null;
  return {
    name,
    project: options.project ?? 'default',
    model,
    status,
    image: 'f',
    imageAlias: 'busybox',
    config: {},
    host: options.host ?? MEMBER,
    createdAt: '2026-12-01T00:00:00Z',
    state: {
      pid: status === 'Running' ? 100 : null,
      startedAt: null,
      uptimeSeconds: null,
      usage,
      restartCount: 0,
      nics:
        status === 'Running'
          ? {
              eth0: {
                network: 'lab',
                hwaddr: '00:16:3e:00:00:01',
                hostName: `p-${name}`,
                addresses: [],
                counters: { rxBytes: 0, txBytes: 0, rxPackets: 0, txPackets: 0 },
              },
            }
          : {},
    },
  };
}

const vmDisks: Record<string, DiskCounters> = {
  root: { readBytes: 4096, writtenBytes: 8192, reads: 2, writes: 3 },
  config: { readBytes: 512, writtenBytes: 0, reads: 1, writes: 0 },
};

function deps(guests: Guest[], desired: Record<string, GuestSpec['desired']> = {}): HostServiceDeps {
  const fakeGuests = { list: async () => guests } as unknown as GuestService;
  const vm = {
    model: 'vm',
    probe: async () => ({ model: 'vm', supported: true, version: '1', warnings: [], details: {} }),
    diskCounters: async () => vmDisks,
  } as unknown as GuestDriver;
  return {
    hostName: MEMBER,
    version: '0.1.0',
    stateDir: '/s',
    storeDescription: 'sqlite',
    drivers: { vm },
    guests: fakeGuests,
    guestRecords: async () =>
      new Map(
        guests.map((g) => [
          g.name,
          {
            spec: {
              name: g.name,
              project: g.project,
              model: g.model,
              desired: desired[g.name] ?? 'Running',
            } as GuestSpec,
            process: g.state.pid ? { pid: g.state.pid, startTime: 1 } : undefined,
          },
        ]),
      ),
    nicCounters: async (port) => ({
      rxBytes: 100,
      txBytes: 200,
      rxPackets: 3,
      txPackets: 4,
      rxErrors: port.length,
      txErrors: 0,
      rxDropped: 1,
      txDropped: 0,
    }),
    processIo: () => ({ readBytes: 10, writtenBytes: 20, readCalls: 30, writeCalls: 40 }),
    readHost: () => ({
      cpuBusySeconds: 50,
      memoryUsedBytes: 1,
      netRxBytes: 60,
      netTxBytes: 70,
      diskReadBytes: 80,
      diskWriteBytes: 90,
    }),
    pools: async () => [
      { name: 'default', driver: 'dir', usage: { totalBytes: 1000, usedBytes: 950 } },
      { name: 'gone', driver: 'btrfs', usage: null },
    ],
  };
}

/**
 * promtool's verdict on an exposition: setup/test unpacks promtool into /opt/trivisor/tools
 * (test/ecosystem/promtool.ts has the same lookup); a missing promtool fails the test.
 */
function promtoolCheckMetrics(text: string): { code: number; output: string } {
  const bin = [
    '/opt/trivisor/tools/promtool',
    ...(process.env.PATH ?? '').split(':').map((d) => `${d}/promtool`),
  ].find((p) => existsSync(p));
  assert.ok(bin, 'promtool not found: run setup/test (it unpacks promtool into /opt/trivisor/tools)');
  const r = spawnSync(bin, ['check', 'metrics'], { input: text, encoding: 'utf8' });
  return { code: r.status ?? 1, output: `${r.stdout}${r.stderr}` };
}

/** The value of the one sample of `metric` whose labels include all of `labels`, or undefined. */
function sample(text: string, metric: string, labels: Record<string, string>): number | undefined {
  for (const line of text.split('\n')) {
    const m = /^([a-z_:]+)(?:\{(.*)\})? (\S+)$/.exec(line);
    if (!m || m[1] !== metric) continue;
    const have = Object.fromEntries(
      [...(m[2] ?? '').matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)].map((l) => [l[1], l[2]]),
    );
    if (Object.entries(labels).every(([k, v]) => have[k] === v)) return Number(m[3]);
  }
  return undefined;
}

describe('host service metrics', () => {
  const guests = [
    guest('c1', 'ct'),
    guest('p1', 'pvm', { project: 'team1' }),
    guest('v1', 'vm'),
    guest('down1', 'ct', { status: 'Stopped' }),
    guest('elsewhere', 'ct', { host: 'm2' }),
  ];

  test('promtool check metrics finds nothing to say about the exposition', async () => {
    const { body, contentType } = await createHostService(deps(guests)).metrics();
    assert.match(contentType, /^text\/plain; version=0\.0\.4/);
    const checked = promtoolCheckMetrics(body);
    assert.equal(checked.output, '');
    assert.equal(checked.code, 0);
    assert.match(body, /# TYPE trivisor_guest_cpu_seconds_total counter/);
  });

  test('every running guest has NIC counters per NIC and disk counters for its model, named as Incus names them', async () => {
    const { body } = await createHostService(deps(guests)).metrics();
    for (const [name, model, project] of [
      ['c1', 'ct', 'default'],
      ['p1', 'pvm', 'team1'],
      ['v1', 'vm', 'default'],
    ] as const) {
      const l = { member: MEMBER, project, name, model, device: 'eth0' };
      assert.equal(sample(body, 'trivisor_network_receive_bytes_total', l), 100, name);
      assert.equal(sample(body, 'trivisor_network_transmit_bytes_total', l), 200, name);
      assert.equal(sample(body, 'trivisor_network_receive_packets_total', l), 3, name);
      assert.equal(sample(body, 'trivisor_network_transmit_packets_total', l), 4, name);
      assert.equal(sample(body, 'trivisor_network_receive_errs_total', l), `p-${name}`.length, name);
      assert.equal(sample(body, 'trivisor_network_transmit_errs_total', l), 0, name);
      assert.equal(sample(body, 'trivisor_network_receive_drop_total', l), 1, name);
      assert.equal(sample(body, 'trivisor_network_transmit_drop_total', l), 0, name);
    }
    // vm: per disk, from QEMU's block statistics.
    const root = { name: 'v1', model: 'vm', device: 'root' };
    assert.equal(sample(body, 'trivisor_disk_read_bytes_total', root), 4096);
    assert.equal(sample(body, 'trivisor_disk_written_bytes_total', root), 8192);
    assert.equal(sample(body, 'trivisor_disk_reads_completed_total', root), 2);
    assert.equal(sample(body, 'trivisor_disk_writes_completed_total', root), 3);
    assert.equal(sample(body, 'trivisor_disk_reads_completed_total', { name: 'v1', device: 'config' }), 1);
    // ct and pvm: their processes' I/O, as one device.
    for (const name of ['c1', 'p1']) {
      assert.equal(sample(body, 'trivisor_disk_read_bytes_total', { name, device: 'all' }), 10, name);
      assert.equal(sample(body, 'trivisor_disk_written_bytes_total', { name, device: 'all' }), 20, name);
      assert.equal(sample(body, 'trivisor_guest_io_read_calls_total', { name }), 30, name);
      assert.equal(sample(body, 'trivisor_guest_io_write_calls_total', { name }), 40, name);
    }
    assert.equal(sample(body, 'trivisor_guest_cpu_seconds_total', { name: 'c1', project: 'default' }), 2.5);
  });

  test("every project's guests are in, another member's are not, and a guest that should run and does not shows", async () => {
    const { body } = await createHostService(deps(guests, { down1: 'Running' })).metrics();
    assert.equal(sample(body, 'trivisor_guest_up', { name: 'p1', project: 'team1' }), 1);
    assert.equal(sample(body, 'trivisor_guest_up', { name: 'elsewhere' }), undefined);
    assert.equal(sample(body, 'trivisor_guest_up', { name: 'down1' }), 0);
    assert.equal(sample(body, 'trivisor_guest_desired_running', { name: 'down1' }), 1);
    assert.equal(sample(body, 'trivisor_guests', { member: MEMBER, status: 'Running' }), 3);
    assert.equal(sample(body, 'trivisor_guests', { member: MEMBER, status: 'Stopped' }), 1);
    // A stopped guest has no counters at all (not zeros that would read as a counter reset).
    assert.equal(sample(body, 'trivisor_network_receive_bytes_total', { name: 'down1' }), undefined);
  });

  test("member totals: the host's own counters, its guests' memory, and its pools", async () => {
    const { body } = await createHostService(deps(guests)).metrics();
    const m = { member: MEMBER };
    assert.equal(sample(body, 'trivisor_host_cpu_seconds_total', m), 50);
    assert.equal(sample(body, 'trivisor_host_network_receive_bytes_total', m), 60);
    assert.equal(sample(body, 'trivisor_host_network_transmit_bytes_total', m), 70);
    assert.equal(sample(body, 'trivisor_host_disk_read_bytes_total', m), 80);
    assert.equal(sample(body, 'trivisor_host_disk_written_bytes_total', m), 90);
    assert.equal(sample(body, 'trivisor_host_guest_memory_bytes', m), 3000);
    assert.equal(sample(body, 'trivisor_host_info', { member: MEMBER, version: '0.1.0' }), 1);
    assert.equal(sample(body, 'trivisor_storage_pool_size_bytes', { pool: 'default' }), 1000);
    assert.equal(sample(body, 'trivisor_storage_pool_used_bytes', { pool: 'default' }), 950);
    assert.equal(sample(body, 'trivisor_storage_pool_up', { pool: 'gone' }), 0);
    assert.equal(sample(body, 'trivisor_storage_pool_size_bytes', { pool: 'gone' }), undefined);
  });

  test('a ct guest’s process I/O never goes down when a process that counted ends uncounted, and starts afresh with a new guest process', async () => {
    const c1 = guest('c1', 'ct');
    const sums = [100, 150, 100, 110];
    const d = {
      ...deps([c1]),
      processIo: () => {
        const w = sums.shift() ?? 0;
        return { readBytes: w, writtenBytes: w, readCalls: w, writeCalls: w };
      },
    };
    const service = createHostService(d);
    const written = async () =>
      sample((await service.metrics()).body, 'trivisor_disk_written_bytes_total', {
        name: 'c1',
        device: 'all',
      });
    // 150 while an exec session had written 50; it ended, reaped outside the guest: still 150.
    assert.deepEqual(
      [await written(), await written(), await written(), await written()],
      [100, 150, 150, 160],
    );
    c1.state.pid = 200;
    sums.push(5);
    assert.equal(await written(), 5, 'a restarted guest is a counter reset');
  });

  test('scrapes at the same time each see whole values', async () => {
    const service = createHostService(deps(guests));
    const bodies = await Promise.all([service.metrics(), service.metrics(), service.metrics()]);
    for (const { body } of bodies)
      assert.equal(sample(body, 'trivisor_network_receive_bytes_total', { name: 'c1' }), 100);
  });

  test('info (GET /1.0, `info --host`) reads no guest: its cost does not grow with the guests (decision 0084)', async () => {
    const asked: string[] = [];
    const d = deps(guests);
    const service = createHostService({
      ...d,
      guests: {
        list: async () => {
          asked.push('list');
          return guests;
        },
      } as unknown as GuestService,
      guestRecords: async () => {
        asked.push('guestRecords');
        return new Map();
      },
      pools: async () => {
        asked.push('pools');
        return [];
      },
    });
    const info = await service.info();
    assert.equal(info.name, MEMBER);
    assert.deepEqual(asked, []);
    await service.metrics();
    assert.deepEqual(
      asked.sort(),
      ['guestRecords', 'list', 'pools'],
      'the scrape reads them: the test sees reads',
    );
  });
});
