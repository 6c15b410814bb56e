import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { connectQmp, type QmpClient } from './qmp-client.ts';
import { linkBitmap, storedBitmaps } from './vm-incremental.ts';
import { freeTcpPort } from './vm-live-migration.ts';
import { finishIncoming, migrateOut, prepareIncoming, resumeSource } from './vm-migration.ts';
import {
  assertIdentical,
  CLUSTER,
  clustersOf,
  MiB,
  runner,
  spec,
  unpackDisk,
  vmChainFixture,
} from './vm-qemu-fixture.ts';

/**
 * A vm guest's backup chain carried across a live move (decision 0062, amended 2026-12-07): two
 * real QEMUs on this machine (no guest OS: the writes are made through QEMU's block layer with
 * `qemu-io` on its monitor, which marks the dirty bitmaps as a guest's writes do), driven by the
 * live move's own QMP sequence (prepareIncoming, migrateOut with the disk mirrored over NBD,
 * finishIncoming), over loopback. The backup bitmap named for the last link comes with the RAM and
 * is stored in the destination's disk when its QEMU quits; the destination's next backup is that
 * chain's next link, holding only the clusters written since the link, and restores its disk.
 */
describe('a vm backup chain goes on on the member a running guest moved to live', () => {
  const fixture = vmChainFixture('vm-live-chain');
  const member = (name: string) => fixture.member(name);
  /** A QEMU with `disk` as its node `root` (as the vm driver names it), vCPUs stopped, no OS. */
  const qemu = async (name: string, disk: string, incoming: boolean) => {
    const socket = path.join(fixture.dir, `${name}.qmp`);
    const pidFile = path.join(fixture.dir, `${name}.pid`);
    await runner.run([
      'qemu-system-x86_64',
      '-machine',
      'pc,accel=tcg',
      '-nodefaults',
      '-display',
      'none',
      '-m',
      '64',
      '-S',
      '-blockdev',
      `driver=file,node-name=file,filename=${disk}`,
      '-blockdev',
      'driver=qcow2,node-name=root,file=file',
      '-device',
      'virtio-blk-pci,drive=root,share-rw=on',
      '-qmp',
      `unix:${socket},server=on,wait=off`,
      ...(incoming ? ['-incoming', 'defer'] : []),
      '-daemonize',
      '-pidfile',
      pidFile,
    ]);
    const pid = Number((await readFile(pidFile, 'utf8')).trim());
    fixture.track(pid);
    const qmp = await connectQmp(socket, { timeoutMs: 30_000 });
    return { qmp, pid };
  };
  const writeVia = async (qmp: QmpClient, offset: number, length: number, pattern: number) => {
    // qemu-io's report goes to QEMU's stdout (daemonized: nowhere); an error comes back here.
    const out = await qmp.execute<string>('human-monitor-command', {
      'command-line': `qemu-io root "write -P ${pattern} ${offset} ${length}"`,
    });
    assert.equal(out.trim(), '', out);
  };
  const quit = async (q: { qmp: QmpClient; pid: number }) => {
    await q.qmp.execute('quit').catch(() => {});
    q.qmp.close();
    for (let i = 0; i < 300; i++) {
      try {
        process.kill(q.pid, 0);
      } catch {
        return;
      }
      await sleep(100);
    }
    throw new Error(`QEMU ${q.pid} did not quit`);
  };

  test('after a live move with the disk mirrored, the next backup is the chain’s next link of the clusters written since, and restores the disk', async (t) => {
    const a = await member('a');
    await runner.run(['qemu-io', '-f', 'qcow2', '-c', `write -P 1 0 ${2 * MiB}`, a.disk]);
    const full = path.join(fixture.dir, 'full.tar.zst');
    const link0 = await a.storage.exportIncremental?.(spec, full);
    assert.ok(link0 && link0.kind === 'full');
    const state = await a.storage.chainState?.(spec);
    assert.ok(state);
    // The guest runs on a; it writes after the link.
    const source = await qemu('src', a.disk, false);
    await writeVia(source.qmp, 3 * MiB, CLUSTER, 0x22);
    const b = await member('b');
    const dest = await qemu('dst', b.disk, true);
    const host = '127.0.0.1';
    const to = { host, nbdPort: await freeTcpPort(host), migrationPort: await freeTcpPort(host) };
    await prepareIncoming(dest.qmp, to);
    const result = await migrateOut(source.qmp, {
      to,
      downtimeLimitMs: 300,
      sync: 'full',
      signal: new AbortController().signal,
      pollMs: 50,
    });
    t.diagnostic(`migrated: ${JSON.stringify(result)}`);
    await finishIncoming(dest.qmp);
    await quit(source);
    // The guest writes on b after the move; its QEMU stores the bitmap in b's disk when it quits.
    await writeVia(dest.qmp, 9 * MiB, CLUSTER, 0x33);
    await quit(dest);
    assert.deepEqual(
      (await storedBitmaps(runner, b.disk)).map((x) => [x.name, x.flags.includes('in-use')]),
      [[linkBitmap(link0.chain, 0), false]],
      'the bitmap named for link 0 came with the migration and was stored',
    );
    assert.equal(await b.storage.continueChain?.(spec, state), true);
    const incTar = path.join(fixture.dir, 'inc1.tar.zst');
    const link1 = await b.storage.exportIncremental?.(spec, incTar);
    assert.deepEqual(link1, { chain: link0.chain, sequence: 1, kind: 'incremental' });
    const clusters = await clustersOf(await unpackDisk(incTar, path.join(fixture.dir, 'inc1')));
    t.diagnostic(`link 1 after the live move: clusters ${clusters.join(', ')}`);
    assert.deepEqual(clusters, [48, 144], 'link 1 holds the clusters at 3 and 9 MiB and nothing else');
    const c = await member('c');
    await c.storage.importIncremental?.(spec, full, { link: link0 });
    await c.storage.importIncremental?.(spec, incTar, { link: link1 as NonNullable<typeof link1> });
    await assertIdentical(c.disk, b.disk);
  });
  test('a QEMU that migrated once before it had a backup bitmap still carries the one added since (QEMU 7.2, issue 13 §5)', async (t) => {
    const a = await member('a2');
    await runner.run(['qemu-io', '-f', 'qcow2', '-c', `write -P 1 0 ${2 * MiB}`, a.disk]);
    const source = await qemu('src2', a.disk, false);
    const host = '127.0.0.1';
    const move = async (name: string) => {
      const m = await member(name);
      const dest = await qemu(`dst-${name}`, m.disk, true);
      const to = { host, nbdPort: await freeTcpPort(host), migrationPort: await freeTcpPort(host) };
      await prepareIncoming(dest.qmp, to);
      await migrateOut(source.qmp, {
        to,
        downtimeLimitMs: 300,
        sync: 'full',
        signal: new AbortController().signal,
        pollMs: 50,
      });
      return dest;
    };
    // The daemon's path when a hand-over fails after the RAM went: the source runs on. No bitmap yet.
    const first = await move('b2');
    await quit(first);
    await resumeSource(source.qmp);
    // The guest's first backup on this member: its bitmap added in the running QEMU.
    const bitmap = linkBitmap('0123456789abcdef', 0);
    await source.qmp.execute('block-dirty-bitmap-add', { node: 'root', name: bitmap, persistent: true });
    const second = await move('c2');
    await finishIncoming(second.qmp);
    await quit(source);
    const nodes =
      await second.qmp.execute<
        Array<{ 'node-name': string; 'dirty-bitmaps'?: Array<{ name: string; persistent?: boolean }> }>
      >('query-named-block-nodes');
    const root = nodes.find((n) => n['node-name'] === 'root');
    t.diagnostic(`the destination's root: ${JSON.stringify(root?.['dirty-bitmaps'] ?? [])}`);
    assert.deepEqual(
      (root?.['dirty-bitmaps'] ?? []).map((b) => [b.name, b.persistent]),
      [[bitmap, true]],
      'the bitmap came with the second migration',
    );
    await quit(second);
  });
  describe('a migration cancelled while the guest has a backup bitmap (QEMU 7.2 marks it not to be stored by the source, and nothing clears the mark; decision 0062, amended)', () => {
    const host = '127.0.0.1';
    const bitmap = linkBitmap('fedcba9876543210', 0);
    type Bitmap = { name: string; persistent?: boolean; count?: number };
    const bitmapsOf = async (qmp: QmpClient) =>
      (
        await qmp.execute<Array<{ 'node-name': string; 'dirty-bitmaps'?: Bitmap[] }>>(
          'query-named-block-nodes',
        )
      ).find((n) => n['node-name'] === 'root')?.['dirty-bitmaps'] ?? [];
    /** A running guest's QEMU whose disk had the bitmap stored (as after a backup and a start): one cluster written since. */
    const source = async (name: string) => {
      const m = await member(name);
      await runner.run(['qemu-io', '-f', 'qcow2', '-c', `write -P 1 0 ${2 * MiB}`, m.disk]);
      await runner.run(['qemu-img', 'bitmap', '--add', m.disk, bitmap]);
      const q = await qemu(`src-${name}`, m.disk, false);
      await writeVia(q.qmp, 5 * MiB, CLUSTER, 0x44);
      return { ...q, disk: m.disk };
    };
    const destination = async (name: string) => {
      const m = await member(name);
      const dest = await qemu(`dst-${name}`, m.disk, true);
      const to = { host, nbdPort: await freeTcpPort(host), migrationPort: await freeTcpPort(host) };
      await prepareIncoming(dest.qmp, to);
      return { dest, to };
    };
    /**
     * A move of `q` cancelled once its RAM migration runs (its bitmaps then taken by the migration):
     * its destination is held (SIGSTOP) from the start of the RAM copy, so that it cannot end first.
     */
    const cancelledMove = async (q: { qmp: QmpClient }, name: string) => {
      const first = await destination(name);
      const abort = new AbortController();
      let held = false;
      await assert.rejects(
        migrateOut(q.qmp, {
          to: first.to,
          downtimeLimitMs: 300,
          sync: 'full',
          signal: abort.signal,
          pollMs: 20,
          onProgress: (p) => {
            if (p.phase === 'copying RAM' && !held) {
              process.kill(first.dest.pid, 'SIGSTOP');
              held = true;
            }
            if (p.ramTotalBytes > 0) abort.abort();
          },
        }),
        /cancelled/,
      );
      process.kill(first.dest.pid, 'SIGCONT');
      await quit(first.dest);
    };

    test('the next migration brings it persistent, with its bits', async (t) => {
      const a = await source('a3');
      await cancelledMove(a, 'b3');
      t.diagnostic(`the source's root after the cancelled move: ${JSON.stringify(await bitmapsOf(a.qmp))}`);
      const second = await destination('c3');
      await migrateOut(a.qmp, {
        to: second.to,
        downtimeLimitMs: 300,
        sync: 'full',
        signal: new AbortController().signal,
        pollMs: 50,
      });
      await finishIncoming(second.dest.qmp);
      await quit(a);
      const carried = await bitmapsOf(second.dest.qmp);
      t.diagnostic(`the destination's root after the second move: ${JSON.stringify(carried)}`);
      await quit(second.dest);
      assert.deepEqual(
        carried.map((b) => [b.name, b.persistent, b.count]),
        [[bitmap, true, CLUSTER]],
        'the bitmap came persistent with the migration after the cancelled one, with its bits',
      );
    });

    // Not marked by QEMU itself (the source's `cont` takes its disk back and loads the bitmaps
    // again: this passes without rearmBitmaps too); here for resumeSource, which makes them again.
    test('a migration that completed but was not handed over (the source resumed): the next migration brings it persistent, with its bits', async (t) => {
      const a = await source('f3');
      const first = await destination('g3');
      await migrateOut(a.qmp, {
        to: first.to,
        downtimeLimitMs: 300,
        sync: 'full',
        signal: new AbortController().signal,
        pollMs: 50,
      });
      await quit(first.dest);
      await resumeSource(a.qmp);
      const second = await destination('h3');
      await migrateOut(a.qmp, {
        to: second.to,
        downtimeLimitMs: 300,
        sync: 'full',
        signal: new AbortController().signal,
        pollMs: 50,
      });
      await finishIncoming(second.dest.qmp);
      await quit(a);
      const carried = await bitmapsOf(second.dest.qmp);
      t.diagnostic(`the destination's root after the second move: ${JSON.stringify(carried)}`);
      await quit(second.dest);
      assert.deepEqual(
        carried.map((b) => [b.name, b.persistent, b.count]),
        [[bitmap, true, CLUSTER]],
        'the bitmap came persistent with the migration after the one not handed over, with its bits',
      );
    });

    test('the source that quits after it (the guest stopped where it ran) stores it, with its bits', async (t) => {
      const d = await source('d3');
      await cancelledMove(d, 'e3');
      await quit(d);
      t.diagnostic(`stored in its disk: ${JSON.stringify(await storedBitmaps(runner, d.disk))}`);
      // Opened again, the disk's bitmap is sound and has the cluster written before the move.
      const again = await qemu('again-d3', d.disk, false);
      const loaded = await bitmapsOf(again.qmp);
      t.diagnostic(`that disk opened again: ${JSON.stringify(loaded)}`);
      await quit(again);
      assert.deepEqual(
        loaded.map((b) => [b.name, b.persistent, b.count]),
        [[bitmap, true, CLUSTER]],
        'stored with its bits by a QEMU that quit after a cancelled move',
      );
    });
  });
});
