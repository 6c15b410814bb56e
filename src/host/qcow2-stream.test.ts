import assert from 'node:assert/strict';
import { mkdtemp, open, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import {
  CLUSTER_BYTES,
  dataClusters,
  flatQcow2Source,
  planFlatQcow2,
  streamFlatQcow2,
} from './qcow2-stream.ts';
import { hostRunner } from './runner.ts';

const runner = hostRunner();
const dir = await mkdtemp(join(tmpdir(), 'trivisor-qcow2-stream-'));
after(() => rm(dir, { recursive: true, force: true }));
const sh = (argv: string[]) => runner.run(argv);
const qemuIo = (file: string, format: string, command: string) =>
  sh(['qemu-io', '-f', format, '-c', command, file]);

/** Streams `disk` into `target` as the exporter does, then has qemu-img check it and compare it with `disk`. */
async function streamAndCompare(disk: string, target: string) {
  const source = await flatQcow2Source(runner, disk);
  assert.ok(source, 'the disk can be streamed');
  const out = await open(target, 'w');
  let position = 0;
  // The stream hands over the next chunk while the last one's write may still run (two buffers
  // in turn): each chunk's place is taken when it is handed over, not when a write ends.
  await streamFlatQcow2(source, async (chunk) => {
    const at = position;
    position += chunk.length;
    for (let done = 0; done < chunk.length; ) {
      done += (await out.write(chunk, done, chunk.length - done, at + done)).bytesWritten;
    }
  });
  await out.close();
  assert.equal(position, source.plan.sizeBytes, 'the plan says how many bytes the image has');
  const check = await runner.run(['qemu-img', 'check', '--output=json', '-f', 'qcow2', target], {
    allowFailure: true,
  });
  assert.equal(check.code, 0, check.stdout + check.stderr);
  const report = JSON.parse(check.stdout) as { 'check-errors': number; leaks?: number; corruptions?: number };
  assert.equal(report['check-errors'], 0);
  assert.equal(report.leaks ?? 0, 0);
  assert.equal(report.corruptions ?? 0, 0);
  const info = JSON.parse((await sh(['qemu-img', 'info', '--output=json', target])).stdout);
  assert.equal(info.format, 'qcow2');
  assert.equal(info['backing-filename'], undefined);
  assert.equal(
    info['virtual-size'],
    JSON.parse((await sh(['qemu-img', 'info', '--output=json', disk])).stdout)['virtual-size'],
  );
  // Exit 0 only when the guest sees the same bytes everywhere (not strict: allocation may differ).
  const compare = await runner.run(['qemu-img', 'compare', disk, target], { allowFailure: true });
  assert.equal(compare.code, 0, compare.stdout + compare.stderr);
  return source;
}

test('planFlatQcow2() counts every cluster of the file in its refcounts and maps each data cluster once', () => {
  const plan = planFlatQcow2(3 * 2 ** 30, [0, 1, 8192, 40000]);
  // header, L1, refcount table, one refcount block, three L2 tables, four data clusters
  assert.equal(plan.sizeBytes, 11 * CLUSTER_BYTES);
  assert.equal(plan.metadata.length, 7 * CLUSTER_BYTES);
  assert.equal(plan.metadata.toString('latin1', 0, 4), 'QFI\xfb');
  assert.equal(plan.metadata.readUInt32BE(36), 6); // L1 entries: 3 GiB / 512 MiB
  const refcounts = [...Array(12).keys()].map((c) => plan.metadata.readUInt16BE(3 * CLUSTER_BYTES + c * 2));
  assert.deepEqual(refcounts, [1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0]);
});

test('dataClusters() keeps clusters that any data extent touches, not zeros or absent ones', () => {
  assert.deepEqual(
    dataClusters([
      { start: 0, length: 4096, depth: 1, data: true, zero: false, offset: 0 },
      { start: 4096, length: 65536, depth: 0, data: true, zero: true, offset: 0 },
      { start: 131072, length: 1, depth: 0, data: true, zero: false, offset: 9 },
      { start: 131073, length: 65535 * 2, depth: 1, data: true, zero: false, offset: 131073 },
      { start: 10 * CLUSTER_BYTES, length: CLUSTER_BYTES, depth: 1, data: true, zero: false, present: false },
    ]),
    [0, 2, 3],
  );
});

test('a streamed flat qcow2 of an overlay on a raw base reads the same as the overlay and passes qemu-img check', async () => {
  const base = join(dir, 'base.raw');
  const overlay = join(dir, 'overlay.qcow2');
  await sh(['truncate', '-s', '64M', base]);
  await qemuIo(base, 'raw', 'write -P 0x11 20k 12k'); // partial clusters of the base, holes around
  await qemuIo(base, 'raw', 'write -P 0x12 1000k 300k');
  await qemuIo(base, 'raw', 'write -P 0x13 60M 4M');
  await sh(['qemu-img', 'create', '-q', '-f', 'qcow2', '-b', base, '-F', 'raw', overlay, '64M']);
  await qemuIo(overlay, 'qcow2', 'write -P 0x21 100k 200k');
  await qemuIo(overlay, 'qcow2', 'write -P 0x22 1100k 64k'); // over the base's data
  await qemuIo(overlay, 'qcow2', 'write -z 61M 1M'); // zeros over the base's data
  await qemuIo(overlay, 'qcow2', 'write -P 0x23 63M 1M'); // the last clusters
  await streamAndCompare(overlay, join(dir, 'flat1.qcow2'));
});

test('a disk of an odd size over two qcow2 layers streams the same bytes', async () => {
  const base = join(dir, 'odd.raw');
  const middle = join(dir, 'middle.qcow2');
  const top = join(dir, 'top.qcow2');
  const size = 5 * 2 ** 20 + 3 * 512;
  await sh(['truncate', '-s', String(size), base]);
  await qemuIo(base, 'raw', `write -P 0x31 ${size - 1024} 1024`);
  await sh(['qemu-img', 'create', '-q', '-f', 'qcow2', '-b', base, '-F', 'raw', middle, String(size)]);
  await qemuIo(middle, 'qcow2', 'write -P 0x32 0 70k');
  await sh(['qemu-img', 'create', '-q', '-f', 'qcow2', '-b', middle, '-F', 'qcow2', top, String(size)]);
  await qemuIo(top, 'qcow2', 'write -P 0x33 4k 8k');
  await streamAndCompare(top, join(dir, 'flat2.qcow2'));
});

test('a disk with compressed clusters is not streamed (the caller converts it)', async () => {
  const raw = join(dir, 'plain.raw');
  const compressed = join(dir, 'compressed.qcow2');
  await sh(['truncate', '-s', '1M', raw]);
  await qemuIo(raw, 'raw', 'write -P 0x41 0 128k');
  await sh(['qemu-img', 'convert', '-c', '-f', 'raw', '-O', 'qcow2', raw, compressed]);
  assert.equal(await flatQcow2Source(runner, compressed), undefined);
});

test('streamFlatQcow2() stops at an abort: it rejects and hands over nothing more', async () => {
  const base = join(dir, 'abort.raw');
  await sh(['truncate', '-s', '16M', base]);
  await qemuIo(base, 'raw', 'write -P 0x51 0 16M');
  const source = await flatQcow2Source(runner, base, 'raw');
  assert.ok(source);
  const controller = new AbortController();
  let writes = 0;
  await assert.rejects(
    streamFlatQcow2(
      source,
      async () => {
        writes++;
        controller.abort(new Error('cancelled by the test'));
      },
      { signal: controller.signal },
    ),
    /cancelled by the test/,
  );
  // The metadata only: the 256 data clusters (8 batches) were never read.
  assert.equal(writes, 1);
});
