import assert from 'node:assert/strict';
import { access, readFile, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { isTrivisorError } from '../../src/core/errors.ts';
import type { GuestSpec, ProcessIdentity } from '../../src/core/types.ts';
import { connectQmp } from '../../src/drivers/vm/qmp-client.ts';
import { hostRunner } from '../../src/host/runner.ts';
import { eventually, execIn } from '../drivers/exec-helpers.ts';
import { testGuestSpec } from '../drivers/guest-spec.ts';
import { makeVmFixture, qemuProcessesUnder, type VmFixture } from './vm-fixture.ts';

const IDMAP_BASE = 1_000_000;
/** vm guests' uids: the block between ct's 65,536 ids and pvm's (vm-driver.ts VM_UID_OFFSET). */
const VM_UIDS = { first: IDMAP_BASE + 65_536, end: IDMAP_BASE + 2 * 65_536 };

/** The fields of /proc/PID/status that say what a process may do. */
async function privileges(pid: number) {
  const status = await readFile(`/proc/${pid}/status`, 'utf8');
  const field = (name: string): string =>
    new RegExp(`^${name}:[ \\t]*(.*)$`, 'm').exec(status)?.[1]?.trim() ?? '';
  return {
    uids: field('Uid').split(/\s+/).map(Number),
    gids: field('Gid').split(/\s+/).map(Number),
    groups: field('Groups'),
    capEff: BigInt(`0x${field('CapEff')}`),
    capPrm: BigInt(`0x${field('CapPrm')}`),
    capBnd: BigInt(`0x${field('CapBnd')}`),
    capAmb: BigInt(`0x${field('CapAmb')}`),
    noNewPrivs: field('NoNewPrivs'),
    seccomp: field('Seccomp'),
  };
}

const exists = (p: string) =>
  access(p).then(
    () => true,
    () => false,
  );

describe('vm guests: QEMU runs as the guest’s own unprivileged uid', () => {
  let f: VmFixture;
  const specs: GuestSpec[] = [];
  const guest = (name: string): GuestSpec => {
    const s = testGuestSpec(name, 'vm', { 'limits.memory': '128MiB', 'limits.cpu': '1' });
    specs.push(s);
    return s;
  };

  before(async () => {
    f = await makeVmFixture();
  });

  after(async () => {
    for (const s of specs) {
      await f.driver.stop(s, { timeoutMs: 0, force: true }).catch(() => {});
      await f.driver.delete(s).catch(() => {});
    }
    await f.cleanup();
  });

  test('QEMU is not root, has no capabilities, runs under seccomp, and cannot open root-only files, the state dir or fork', async () => {
    const a = guest('unpriv-a');
    const b = guest('unpriv-b');
    await f.driver.create(a, f.image);
    await f.driver.create(b, f.image);
    const idA: ProcessIdentity = await f.driver.start(a, f.image);
    const idB: ProcessIdentity = await f.driver.start(b, f.image);

    for (const id of [idA, idB]) {
      const p = await privileges(id.pid);
      const [uid] = p.uids;
      assert.ok(uid !== undefined && uid !== 0, `QEMU runs as uid ${uid}`);
      assert.deepEqual(p.uids, [uid, uid, uid, uid], 'real, effective, saved and fs uid');
      assert.deepEqual(p.gids, [uid, uid, uid, uid], 'and gids');
      assert.equal(p.groups, '', 'no supplementary groups (TCG: not even kvm)');
      assert.equal(p.capEff, 0n, 'no effective capability');
      assert.equal(p.capPrm, 0n, 'no permitted capability');
      assert.equal(p.capAmb, 0n, 'no ambient capability');
      assert.equal(p.capBnd, 0n, 'an empty bounding set');
      assert.equal(p.noNewPrivs, '1');
      assert.equal(p.seccomp, '2', 'seccomp filter mode');
      const argv = (await readFile(`/proc/${id.pid}/cmdline`, 'utf8')).split('\0');
      assert.equal(
        argv[argv.indexOf('-sandbox') + 1],
        'on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny',
      );
      assert.ok(!argv.includes('-daemonize'));
    }

    // Each guest has its own uid from the vm block (between ct's ids and pvm's), kept in its dir.
    const uidOf = async (s: GuestSpec) =>
      Number((await readFile(join(f.stateDir, 'guests', s.name, 'uid'), 'utf8')).trim());
    const [uidA, uidB] = [await uidOf(a), await uidOf(b)];
    assert.notEqual(uidA, uidB);
    assert.equal((await privileges(idA.pid)).uids[0], uidA);
    assert.equal((await privileges(idB.pid)).uids[0], uidB);
    for (const uid of [uidA, uidB]) {
      assert.ok(uid >= VM_UIDS.first && uid < VM_UIDS.end, `uid ${uid} in the vm block`);
    }

    // The guest works: its disk, its console and its agent came as descriptors.
    assert.equal((await execIn(f.driver, a, ['hostname'])).stdout, 'unpriv-a\n');
    assert.match(await readFile(f.driver.consoleLogPath(a), 'utf8'), /trivisor: init/);

    // Asked over QMP to open files itself, QEMU is refused: a root-only host file, its own
    // disk and the other guest's disk by name (the guest dirs are root's, 0700).
    const secret = join(f.dir, 'root-only-secret');
    await writeFile(secret, 'host secret\n', { mode: 0o600 });
    const qmp = await connectQmp(join(f.stateDir, 'run', 'vm', a.name, 'qmp.sock'));
    try {
      const open = (filename: string, i: number) =>
        qmp.execute('blockdev-add', {
          driver: 'file',
          'node-name': `probe${i}`,
          filename,
          'read-only': true,
        });
      const targets = [
        secret,
        join(f.stateDir, 'guests', a.name, 'root.qcow2'),
        join(f.stateDir, 'guests', b.name, 'root.qcow2'),
        join(f.stateDir, 'guests', b.name, 'console.log'),
      ];
      for (const [i, target] of targets.entries()) {
        await assert.rejects(open(target, i), /Permission denied/, `QEMU opened ${target}`);
      }
      assert.equal((await stat(join(f.stateDir, 'guests', a.name))).mode & 0o777, 0o700);

      // spawn=deny: asked to run a program (migrate to exec:), QEMU is killed by its sandbox
      // rather than run it, and nothing ran.
      const marker = join(f.dir, 'qemu-spawned');
      await qmp.execute('migrate', { uri: `exec:touch ${marker}` }).catch(() => {});
    } finally {
      qmp.close();
    }
    assert.ok(
      await eventually(async () => (await f.driver.inspect(a, idA)).state === 'stopped', 10_000),
      'QEMU was stopped by its sandbox',
    );
    assert.equal(await exists(join(f.dir, 'qemu-spawned')), false, 'QEMU spawned a program');
    // The other guest runs on.
    assert.equal((await f.driver.inspect(b, idB)).state, 'running');

    for (const s of [a, b]) {
      await f.driver.stop(s, { timeoutMs: 10_000, force: false });
      await f.driver.delete(s);
      await f.assertNoLeftovers(s);
    }
    assert.deepEqual(await qemuProcessesUnder(f.dir), []);
  });

  test('a disk whose header names a host file as its backing file is not started: root does not open it for QEMU', async () => {
    // QEMU holds its qcow2 open read-write, header included: a QEMU a guest took over could
    // name any host file as the backing file for root to open at the next start.
    const spec = guest('forged-backing');
    await f.driver.create(spec, f.image);
    const secret = join(f.dir, 'backing-secret');
    await writeFile(secret, 'host secret\n'.repeat(1000), { mode: 0o600 });
    const disk = join(f.stateDir, 'guests', spec.name, 'root.qcow2');
    await hostRunner().run(['qemu-img', 'rebase', '-u', '-f', 'qcow2', '-F', 'raw', '-b', secret, disk]);
    await assert.rejects(f.driver.start(spec, f.image), (e: unknown) => {
      assert.ok(isTrivisorError(e), String(e));
      assert.equal(e.code, 'FailedPrecondition', e.message);
      assert.match(e.message, /names a backing file that is not an image's base disk/);
      return true;
    });
    assert.deepEqual(await qemuProcessesUnder(join(f.stateDir, 'guests', spec.name)), [], 'no QEMU started');
    await f.driver.delete(spec);
    await f.assertNoLeftovers(spec);
  });
});
