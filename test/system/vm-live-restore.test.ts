import assert from 'node:assert/strict';
import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import { once } from 'node:events';
import { existsSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { makeRunDir, removeRunDir } from '../leftovers.ts';
import { alive, type Daemon, eventually, startDaemon } from './harness.ts';

const CLI = path.resolve(import.meta.dirname, '../../bin/trivisor');

// Daemons of storage tests need no network of their own.
process.env.TRIVISOR_DEFAULT_NETWORK = 'none';

/** The copy's speed limit: slow enough that the guest is seen running on the archive well before the copy ends. */
const COPY_BYTES_PER_SECOND = 4 * 2 ** 20;

describe('live restore of a vm guest (import --live, decision 0063)', () => {
  let d: Daemon;
  let dir: string;
  const importers: ChildProcess[] = [];
  let blobSha = '';
  const plain = () => path.join(dir, 'v1.tar');
  const compressed = () => path.join(dir, 'v1.zst.tar');

  before(async () => {
    d = await startDaemon({ env: { TRIVISOR_LIVE_RESTORE_BYTES_PER_SECOND: String(COPY_BYTES_PER_SECOND) } });
    dir = await makeRunDir('live-restore');
    d.ok(['launch', 'busybox', 'v1', '--model', 'vm', '-c', 'limits.memory=128MiB']);
    sh(
      'v1',
      'mkdir -p /srv && printf restored > /srv/data.txt && dd if=/dev/urandom of=/srv/blob bs=1M count=24 2>/dev/null && sync',
    );
    blobSha = sh('v1', 'sha256sum /srv/blob | cut -c1-64').trim();
    d.ok(['export', 'v1', plain(), '--uncompressed']);
    d.ok(['export', 'v1', compressed()]);
    d.ok(['delete', '--force', 'v1']);
  });
  after(async () => {
    for (const p of importers) p.kill('SIGKILL');
    await d?.destroy();
    if (dir) await removeRunDir(dir);
  });

  const sh = (guest: string, script: string) => d.ok(['exec', guest, '--', 'sh', '-c', script]);
  const names = () =>
    (JSON.parse(d.ok(['list', '--format', 'json'])) as Array<{ name: string }>).map((x) => x.name);
  const info = (name: string) => {
    const g = JSON.parse(d.ok(['info', name, '--format', 'json'])) as {
      status: string;
      state?: { pid: number | null };
    };
    return { status: g.status, pid: g.state?.pid ?? null };
  };
  /**
   * Whether the guest runs, asked over HTTP: two CLI processes per poll take seconds on a loaded
   * host, long enough to miss the copy's window of a few seconds behind the running guest.
   */
  const runs = async (name: string) => {
    const r = await d.api('GET', `/1.0/guests/${name}`);
    return r.status === 200 && (r.body.metadata as { status?: string } | undefined)?.status === 'Running';
  };
  const disk = (name: string) => path.join(d.stateDir, 'guests', name, 'root.qcow2');
  /** The disk's backing file as qemu-img reads it (without the lock QEMU holds). */
  const backing = (name: string): string | undefined => {
    const r = spawnSync('qemu-img', ['info', '-U', '--output=json', disk(name)], { encoding: 'utf8' });
    assert.equal(r.status, 0, r.stderr);
    return (JSON.parse(r.stdout) as { 'backing-filename'?: string })['backing-filename'];
  };
  /** Archives a live restore keeps, and upload spools: none once a restore ended or failed. */
  const leftovers = () => [
    ...(existsSync(path.join(d.stateDir, 'imports')) ? readdirSync(path.join(d.stateDir, 'imports')) : []),
    ...readdirSync(d.stateDir).filter((n) => n.startsWith('trivisor-import-')),
  ];
  const importLive = (file: string, name: string): ChildProcess => {
    const p = spawn(CLI, ['import', file, name, '--live'], {
      env: {
        ...process.env,
        TRIVISOR_DIR: d.stateDir,
        TRIVISOR_CONFIG_DIR: path.join(d.stateDir, 'cli-config'),
      },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    importers.push(p);
    return p;
  };
  const exited = async (
    p: ChildProcess,
  ): Promise<{ code: number | null; stdout: string; stderr: string }> => {
    let stdout = '';
    let stderr = '';
    p.stdout?.on('data', (c: Buffer) => {
      stdout += c.toString();
    });
    p.stderr?.on('data', (c: Buffer) => {
      stderr += c.toString();
    });
    // 'close': after its output is read to the end, which 'exit' need not be.
    const [code] = (await once(p, 'close')) as [number | null];
    return { code, stdout, stderr };
  };
  const refused = (file: string, name: string, pattern: RegExp) => {
    const r = d.cli(['import', file, name, '--live'], { timeoutMs: 120_000 });
    assert.notEqual(r.code, 0, r.stdout);
    assert.match(r.stderr.trim(), pattern);
    assert.equal(r.stderr.trim().split('\n').length, 1, r.stderr);
    assert.ok(!names().includes(name), `${name} was left behind`);
    assert.deepEqual(leftovers(), []);
  };

  test('the guest runs on the archive while its disk is copied, then on its own disk with the same data', async () => {
    const importer = importLive(plain(), 'r1');
    const result = exited(importer);
    const started = Date.now();
    await eventually('r1 runs', () => runs('r1'), 120_000);
    const runningAfterMs = Date.now() - started;
    // Running well before the copy ends: the disk still reads the archive, the import still runs.
    assert.match(backing('r1') ?? '', /^json:.*"offset"/, 'the disk is backed by the archive in place');
    assert.equal(importer.exitCode, null, 'the import is still copying');
    const pid = info('r1').pid;
    assert.ok(pid, 'the guest has a QEMU');
    // Blocks not copied yet are read from the archive by QEMU.
    assert.equal(sh('r1', 'cat /srv/data.txt'), 'restored');
    const { code, stdout, stderr } = await result;
    assert.equal(code, 0, stderr);
    const doneAfterMs = Date.now() - started;
    assert.ok(
      doneAfterMs > runningAfterMs + 2000,
      `running at ${runningAfterMs} ms, copied at ${doneAfterMs} ms`,
    );
    // The operation's own times (issue 20), printed at the end: it started after the CLI did and
    // ended before it did, and its guest ran before its copy ended.
    const times = /^Restored live r1: running after (\d+\.\d) s, complete after (\d+\.\d) s$/m.exec(stdout);
    assert.ok(times, stdout);
    const [opRunning, opComplete] = [Number(times[1]) * 1000, Number(times[2]) * 1000];
    assert.ok(opRunning < opComplete, stdout);
    assert.ok(opComplete <= doneAfterMs + 50, `${stdout} against ${doneAfterMs} ms seen by the test`);
    assert.equal(backing('r1'), undefined, 'the disk no longer has a backing file');
    assert.equal(info('r1').pid, pid, 'the guest was not restarted');
    assert.equal(sh('r1', 'sha256sum /srv/blob | cut -c1-64').trim(), blobSha);
    assert.deepEqual(leftovers(), [], 'the archive is removed once copied');
    d.ok(['delete', '--force', 'r1']);
  });

  test('a daemon killed -9 mid-copy: the guest keeps running, and the copy completes after its restart', async () => {
    const importer = importLive(plain(), 'r2');
    await eventually('r2 runs', () => runs('r2'), 120_000);
    assert.match(backing('r2') ?? '', /^json:/);
    const pid = info('r2').pid;
    assert.ok(pid);
    await d.kill9();
    importer.kill('SIGKILL');
    assert.ok(alive(pid), "the guest's QEMU outlives the daemon");
    await d.restart();
    await eventually(
      'the copy completes',
      () => backing('r2') === undefined && leftovers().length === 0,
      120_000,
    );
    assert.equal(info('r2').status, 'Running');
    assert.equal(info('r2').pid, pid, 'the guest was not restarted');
    assert.equal(sh('r2', 'sha256sum /srv/blob | cut -c1-64').trim(), blobSha);
    d.ok(['delete', '--force', 'r2']);
  });

  test('a cancel deletes the guest and its overlay, and keeps no archive', async () => {
    const importer = importLive(plain(), 'r3');
    const result = exited(importer);
    await eventually('r3 runs', () => runs('r3'), 120_000);
    const ops = JSON.parse(d.ok(['operation', 'list', '--format', 'json'])) as Array<{
      id: string;
      description: string;
      status: string;
    }>;
    const op = ops.find((o) => o.description === 'Restoring guest r3 live' && o.status === 'Running');
    assert.ok(op, JSON.stringify(ops));
    d.ok(['operation', 'cancel', op.id]);
    assert.notEqual((await result).code, 0);
    await eventually('r3 is gone', () => !names().includes('r3'), 60_000);
    assert.ok(!existsSync(path.join(d.stateDir, 'guests', 'r3')), 'its directory and overlay are gone');
    assert.deepEqual(leftovers(), []);
  });

  test('compressed, corrupted and truncated archives are refused, with nothing left behind', async () => {
    refused(compressed(), 'x1', /compressed.*--uncompressed/);
    const bytes = readFileSync(plain());
    const truncated = path.join(dir, 'truncated.tar');
    writeFileSync(truncated, bytes.subarray(0, Math.floor(bytes.length / 2)));
    refused(truncated, 'x2', /corrupted or truncated/);
    // The payload's header in the archive (after index.json, which every archive starts with),
    // then the header of the disk inside that payload (the next 512 bytes).
    let payload = 0;
    for (;;) {
      const name = bytes
        .subarray(payload, payload + 100)
        .toString('latin1')
        .replace(/\0.*$/s, '');
      if (name !== 'index.json') break;
      const size = Number.parseInt(bytes.subarray(payload + 124, payload + 136).toString('latin1'), 8);
      payload += 512 + Math.ceil(size / 512) * 512;
    }
    for (const [i, offset] of [payload + 100, payload + 512 + 100].entries()) {
      const badHeader = path.join(dir, `bad-header-${i}.tar`);
      const h = Buffer.from(bytes);
      h[offset] = (h[offset] ?? 0) ^ 0xff;
      writeFileSync(badHeader, h);
      refused(badHeader, `x3${i}`, /corrupted or truncated/);
    }
    // A damaged byte inside the disk: seen by the checksum during the copy, and the guest deleted.
    const badDisk = path.join(dir, 'bad-disk.tar');
    const b = Buffer.from(bytes);
    const at = Math.floor(b.length * 0.6);
    b[at] = (b[at] ?? 0) ^ 0xff;
    writeFileSync(badDisk, b);
    const { code, stderr } = await exited(importLive(badDisk, 'x4'));
    assert.notEqual(code, 0);
    assert.match(stderr, /corrupted/);
    await eventually('x4 is gone', () => !names().includes('x4'), 60_000);
    assert.ok(!existsSync(path.join(d.stateDir, 'guests', 'x4')));
    assert.deepEqual(leftovers(), []);
  });
});
