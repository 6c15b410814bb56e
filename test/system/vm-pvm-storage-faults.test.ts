import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { once } from 'node:events';
import { existsSync, mkdirSync, readdirSync, rmSync } from 'node:fs';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { makeRunDir, removeRunDir } from '../leftovers.ts';
import { type Daemon, eventually, sleep, startDaemon } from './harness.ts';

const CLI = path.resolve(import.meta.dirname, '../../bin/trivisor');

// Daemons of storage tests need no network of their own.
process.env.TRIVISOR_DEFAULT_NETWORK = 'none';

/** Polls fast for a path: the windows these tests aim at last about a second. */
async function waitForPath(what: string, find: () => boolean, timeoutMs = 60_000): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (Date.now() < end) {
    if (find()) return;
    await sleep(5);
  }
  throw new Error(`timed out waiting for ${what}`);
}

const tmpEntries = (p: string) => (existsSync(p) ? readdirSync(p).filter((n) => n.startsWith('.tmp-')) : []);

for (const model of ['vm', 'pvm'] as const) {
  describe(`storage faults of ${model} guests: full disks and a daemon killed mid-way leave nothing half-made`, () => {
    let d: Daemon;
    let dir: string;
    const mounts: string[] = [];
    const g = `${model}f`;
    before(async () => {
      d = await startDaemon();
      dir = await makeRunDir('faults');
      // Guests live on a small file system of their own, so that the tests can fill it.
      tmpfs(path.join(d.stateDir, 'guests'), '512m');
    });
    after(async () => {
      if (d) {
        const left = names();
        if (left.length > 0) d.cli(['delete', '--force', ...left], { timeoutMs: 120_000 });
      }
      for (const m of mounts.reverse()) spawnSync('umount', ['-l', m]);
      await d?.destroy();
      if (dir) await removeRunDir(dir);
    });

    const guestDir = (name: string) => path.join(d.stateDir, 'guests', name);
    const names = () =>
      (JSON.parse(d.ok(['list', '--format', 'json'])) as Array<{ name: string }>).map((x) => x.name);
    const status = (name: string) =>
      (JSON.parse(d.ok(['info', name, '--format', 'json'])) as { status: string }).status;
    const snapshots = (name: string) =>
      (JSON.parse(d.ok(['snapshot', 'list', name, '--format', 'json'])) as Array<{ name: string }>).map(
        (s) => s.name,
      );
    const sh = (name: string, script: string) => d.ok(['exec', name, '--', 'sh', '-c', script]);
    /** Every `.tmp-` entry in the guest's directory, its disk directory and its snapshots. */
    const debris = (name: string) =>
      ['', 'disk', 'snapshots'].flatMap((sub) => tmpEntries(path.join(guestDir(name), sub)));
    /** Internal snapshots inside a vm guest's qcow2 file (read without the lock QEMU holds). */
    const internalSnapshots = (name: string) => {
      const r = spawnSync(
        'qemu-img',
        ['info', '-U', '--output=json', path.join(guestDir(name), 'root.qcow2')],
        { encoding: 'utf8' },
      );
      assert.equal(r.status, 0, r.stderr);
      return ((JSON.parse(r.stdout) as { snapshots?: Array<{ name: string }> }).snapshots ?? []).map(
        (s) => s.name,
      );
    };
    const tmpfs = (at: string, size: string) => {
      mkdirSync(at, { recursive: true });
      const r = spawnSync('mount', ['-t', 'tmpfs', '-o', `size=${size},mode=0755`, 'tmpfs', at]);
      assert.equal(r.status, 0, String(r.stderr));
      mounts.push(at);
    };
    const unmount = (at: string) => {
      spawnSync('umount', [at]);
      mounts.splice(mounts.indexOf(at), 1);
    };
    /** Fills the guests' file system, leaving about `leaveMiB` free; returns the filler to remove. */
    const fill = (leaveMiB: number) => {
      const filler = path.join(d.stateDir, 'guests', 'filler');
      spawnSync('dd', ['if=/dev/zero', `of=${filler}`, 'bs=1M'], { stdio: 'ignore' });
      if (leaveMiB > 0) spawnSync('truncate', ['-s', `-${leaveMiB}M`, filler]);
      return filler;
    };
    /** The guest runs, answers, can write, and still has exactly its snapshots. */
    const intact = (name: string, snaps: string[]) => {
      assert.equal(status(name), 'Running');
      assert.equal(sh(name, 'echo ok > /srv/probe && cat /srv/probe'), 'ok\n');
      assert.deepEqual(snapshots(name), snaps);
      assert.deepEqual(debris(name), []);
      if (model === 'vm') assert.deepEqual(internalSnapshots(name), snaps);
    };

    test('a full disk during a snapshot of the running guest is one clear error; guest and snapshots stay intact', () => {
      d.ok(['launch', 'busybox', g, '--model', model, '-c', 'limits.memory=128MiB']);
      sh(
        g,
        'mkdir -p /srv && printf one > /srv/v.txt && dd if=/dev/urandom of=/srv/blob bs=1M count=24 2>/dev/null && sync',
      );
      d.ok(['snapshot', 'create', g, 's0']);
      sh(g, 'printf two > /srv/v.txt && sync');
      const filler = fill(0);
      try {
        const r = d.cli(['snapshot', 'create', g, 's1']);
        assert.equal(r.code, 1, r.stdout);
        assert.equal(
          r.stderr,
          `Error: Cannot snapshot guest ${g} as s1: the disk is full; free some space and try again\n`,
        );
      } finally {
        rmSync(filler, { force: true });
      }
      // Trying again once there is room works (a vm guest QEMU paused on the full disk is resumed by it).
      d.ok(['snapshot', 'create', g, 's1']);
      intact(g, ['s0', 's1']);
      d.ok(['snapshot', 'delete', g, 's1']);
      d.ok(['snapshot', 'restore', g, 's0']);
      assert.equal(sh(g, 'cat /srv/v.txt'), 'one');
    });

    // A vm's QEMU pauses the guest on a write the full disk refuses (werror=enospc); the daemon resumes it.
    // (A pvm's kernel gets the error itself, as a disk of its own would give it.)
    if (model === 'vm') {
      test('a vm guest paused on a full disk goes on by itself once there is room again', async () => {
        const filler = fill(0);
        let writer: ReturnType<typeof spawn> | undefined;
        try {
          writer = spawn(
            CLI,
            [
              'exec',
              g,
              '--',
              'sh',
              '-c',
              'dd if=/dev/urandom of=/srv/fill bs=1M count=16 conv=fsync 2>/dev/null; rm /srv/fill',
            ],
            { env: { ...process.env, TRIVISOR_DIR: d.stateDir }, stdio: 'ignore' },
          );
          await sleep(4000);
        } finally {
          rmSync(filler, { force: true });
        }
        const exited =
          writer.exitCode !== null ||
          (await Promise.race([once(writer, 'exit').then(() => true), sleep(90_000).then(() => false)]));
        assert.ok(exited, 'the guest stayed paused after the disk had room again');
        intact(g, ['s0']);
      });
    }

    test('a full disk during an export is one clear error; guest and snapshots stay intact', () => {
      const backups = path.join(d.stateDir, 'backups');
      tmpfs(backups, '4m');
      try {
        const r = d.cli(['export', g, path.join(dir, 'never.backup'), '--with-snapshots']);
        assert.equal(r.code, 1, r.stdout);
        assert.equal(
          r.stderr,
          `Error: Cannot back up guest ${g}: the disk is full; free some space and try again\n`,
        );
        assert.equal(existsSync(path.join(dir, 'never.backup')), false);
        assert.deepEqual(readdirSync(path.join(backups, g)), []);
      } finally {
        unmount(backups);
      }
      intact(g, ['s0']);
    });

    test('a full disk during an import is one clear error and leaves no guest behind', () => {
      const archive = path.join(dir, `${g}.backup`);
      d.ok(['export', g, archive, '--with-snapshots']);
      const filler = fill(8);
      try {
        const r = d.cli(['import', archive, `${g}i`]);
        assert.equal(r.code, 1, r.stdout);
        assert.equal(
          r.stderr,
          'Error: Cannot import the backup: the disk is full; free some space and try again\n',
        );
      } finally {
        rmSync(filler, { force: true });
      }
      assert.equal(names().includes(`${g}i`), false);
      assert.equal(existsSync(guestDir(`${g}i`)), false);
      assert.deepEqual(tmpEntries(path.join(d.stateDir, 'imports')), []);
      intact(g, ['s0']);
      // With room again the same archive imports.
      d.ok(['import', archive, `${g}i`]);
      assert.deepEqual(snapshots(`${g}i`), ['s0']);
      d.ok(['delete', '--force', `${g}i`]);
    });

    test(`kill -9 during a snapshot of the running ${model} guest: no half snapshot, the guest is thawed`, async () => {
      // Dirty data in the guest's page cache makes the freeze (which flushes it) last long enough to aim at.
      sh(g, 'dd if=/dev/urandom of=/srv/dirty bs=1M count=40 2>/dev/null');
      const marker = path.join(guestDir(g), 'fsfreeze.pending');
      const r = await d.api('POST', `/1.0/guests/${g}/snapshots`, { name: 's1' });
      assert.equal(r.status, 202);
      await waitForPath('the guest to be frozen for the snapshot', () => existsSync(marker));
      await d.kill9();
      assert.ok(existsSync(marker), 'the daemon was killed with the guest frozen');
      await d.restart();
      await eventually('the guest runs again', () => status(g) === 'Running', 60_000);
      assert.equal(existsSync(marker), false, 'the freeze marker is gone');
      // A frozen guest would block this write until the exec times out.
      const w = d.cli(['exec', g, '--', 'sh', '-c', 'echo thawed > /srv/after && cat /srv/after'], {
        timeoutMs: 60_000,
      });
      assert.equal(w.stdout, 'thawed\n', w.stderr);
      intact(g, ['s0']);
      d.ok(['snapshot', 'create', g, 's1']);
      assert.deepEqual(snapshots(g), ['s0', 's1']);
    });

    test(`kill -9 during an import of a ${model} guest: the half-imported guest is deleted at the next start`, async () => {
      const archive = path.join(dir, `${g}.backup`);
      const importer = spawn(CLI, ['import', archive, `${g}k`], {
        env: { ...process.env, TRIVISOR_DIR: d.stateDir },
        stdio: 'ignore',
      });
      try {
        await waitForPath('the import to work in the new guest', () => debris(`${g}k`).length > 0);
        await d.kill9();
      } finally {
        importer.kill('SIGKILL');
      }
      await d.restart();
      await eventually(
        'the half-imported guest is deleted',
        () => !names().includes(`${g}k`) && !existsSync(guestDir(`${g}k`)),
        60_000,
      );
      assert.deepEqual(tmpEntries(path.join(d.stateDir, 'imports')), []);
      assert.deepEqual(
        readdirSync(d.stateDir).filter((n) => n.startsWith('trivisor-import-')),
        [],
        'no upload spool left',
      );
      intact(g, ['s0', 's1']);
      d.ok(['import', archive, `${g}k`]);
      assert.deepEqual(snapshots(`${g}k`), ['s0']);
      d.ok(['delete', '--force', `${g}k`]);
    });
  });
}
