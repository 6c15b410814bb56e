import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { type Daemon, startDaemon } from '../system/harness.ts';
import { promtool } from './promtool.ts';

/*
 * The metrics of real guests of every model (decision 0030), as Prometheus scrapes them: the
 * unit tests (src/services/host-service.test.ts) check names and values on made-up counters;
 * here the counters come from the engines themselves (the host end of each NIC, QEMU's block
 * statistics, the /proc/PID/io of a ct or pvm guest's processes) after real traffic and real
 * writes, and promtool checks the whole exposition. Traffic stays on this test's own bridge in
 * 198.18.0.0/15.
 */

const NET = `tmet${process.pid % 10000}`;
const GATEWAY = '198.19.187.1';

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

describe('metrics of real guests of every model', { timeout: 600_000 }, () => {
  let d: Daemon;
  const guests = [
    { name: 'mc1', model: 'ct', args: [] as string[] },
    { name: 'mp1', model: 'pvm', args: ['--model', 'pvm', '-c', 'limits.memory=64MiB'] },
    { name: 'mv1', model: 'vm', args: ['--model', 'vm', '-c', 'limits.memory=128MiB'] },
  ];

  before(async () => {
    d = await startDaemon();
    d.ok(['network', 'create', NET, `ipv4.address=${GATEWAY}/24`]);
    for (const g of guests) d.ok(['launch', 'busybox', g.name, '-n', NET, ...g.args]);
  });

  after(async () => {
    await d?.destroy();
  });

  test('after traffic and writes, every guest has nonzero NIC and disk counters, and promtool accepts the exposition', async () => {
    for (const g of guests) {
      // DHCP may still be under way: a few tries, each a ping to the network's gateway.
      const ping = d.cli([
        'exec',
        g.name,
        '--',
        'sh',
        '-c',
        `for i in 1 2 3 4 5 6 7 8 9 10; do ping -c3 -W2 ${GATEWAY} >/dev/null && exit 0; sleep 1; done; exit 1`,
      ]);
      assert.equal(ping.code, 0, `${g.name} pings its gateway: ${ping.stderr}`);
      // Written by a process the guest's init reaps, as a service's would be: a ct guest's counters
      // are its processes' /proc/PID/io, and a reaped child's I/O adds to its parent's, but an exec
      // session's parent is runc, outside the guest, so what it did goes uncounted once it ends.
      d.ok([
        'exec',
        g.name,
        '--',
        'sh',
        '-c',
        '(dd if=/dev/zero of=/root/metrics.bin bs=64k count=32 2>/dev/null && sync && touch /root/metrics.done && sleep 3) </dev/null >/dev/null 2>&1 & ' +
          'for i in $(seq 1 100); do [ -e /root/metrics.done ] && exit 0; sleep 0.2; done; exit 1',
      ]);
    }
    const r = await d.api('GET', '/1.0/metrics');
    assert.equal(r.status, 200);
    const checked = await promtool(['check', 'metrics'], r.text);
    assert.equal(checked.output, '', 'promtool has nothing to say');
    assert.equal(checked.code, 0);
    for (const g of guests) {
      const nic = { name: g.name, model: g.model, device: 'eth0' };
      for (const metric of [
        'trivisor_network_receive_bytes_total',
        'trivisor_network_transmit_bytes_total',
        'trivisor_network_receive_packets_total',
        'trivisor_network_transmit_packets_total',
      ]) {
        const v = sample(r.text, metric, nic);
        assert.ok(v !== undefined && v > 0, `${metric} of ${g.name}: ${v}`);
      }
      for (const metric of ['trivisor_network_receive_errs_total', 'trivisor_network_transmit_drop_total']) {
        assert.notEqual(sample(r.text, metric, nic), undefined, `${metric} of ${g.name}`);
      }
      // vm: QEMU's statistics of its root disk; ct and pvm: their processes' I/O as one device.
      const disk = { name: g.name, model: g.model, device: g.model === 'vm' ? 'root' : 'all' };
      const written = sample(r.text, 'trivisor_disk_written_bytes_total', disk);
      assert.ok(written !== undefined && written >= 32 * 64 * 1024, `disk written of ${g.name}: ${written}`);
      assert.notEqual(
        sample(r.text, 'trivisor_disk_read_bytes_total', disk),
        undefined,
        `disk read of ${g.name}`,
      );
    }
    for (const g of guests) d.ok(['delete', '--force', g.name]);
    d.ok(['network', 'delete', NET]);
  });
});
