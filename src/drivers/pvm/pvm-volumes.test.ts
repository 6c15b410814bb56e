import assert from 'node:assert/strict';
import { mkdir, mkdtemp, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { fakeRunner } from '../../../test/fakes/fake-runner.ts';
import type { GuestSpec } from '../../core/types.ts';
import type { AttachedVolume } from '../guest-volumes.ts';
import { createPvmVolumes } from './pvm-volumes.ts';

const spec = { name: 'p1' } as GuestSpec;

describe('pvm block volume hot-plug', () => {
  let dir: string;
  let volume: AttachedVolume;
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'pvm-volumes-'));
    await mkdir(join(dir, 'guests', 'p1'), { recursive: true });
    await writeFile(join(dir, 'guests', 'p1', 'uid'), '1131072\n');
    const hostPath = join(dir, 'data.img');
    await writeFile(hostPath, '');
    volume = { device: 'data', pool: 'p', volume: 'data', type: 'block', hostPath, sizeBytes: 0 };
  });
  after(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  /** A runner whose mconsole has every volume slot free and takes any `config ubdN=…`. */
  const runner = () =>
    fakeRunner((argv) => {
      if (argv[0] === 'uml_mconsole')
        return { stdout: /^config ubd\d+$/.test(argv[2] ?? '') ? 'OK \n' : 'OK\n' };
      return undefined;
    });

  test('a guest started before the jail (no /.uml in its root) is given the host path, as before', async () => {
    const r = runner();
    // This test process's root has no /.uml: it stands for a kernel that runs unjailed.
    assert.equal(
      await createPvmVolumes({ runner: r, stateDir: dir }).attach(spec, volume, { pid: process.pid }),
      'live',
    );
    assert.ok(
      r
        .commands()
        .includes(`uml_mconsole ${join(dir, 'run/pvm/p1/uml/uml/mconsole')} config ubd2=${volume.hostPath}`),
    );
    assert.ok(!r.commands().some((c) => c.includes('perl')), 'nothing is mounted anywhere');
    assert.equal((await stat(volume.hostPath)).uid, 1131072, "the file is the guest uid's");
  });

  test('a jailed kernel gets the volume mounted into its jail and named by its jail path; detach takes it out', async () => {
    const proc = join(dir, 'proc');
    await mkdir(join(proc, '4242', 'root', '.uml'), { recursive: true });
    const r = runner();
    const volumes = createPvmVolumes({ runner: r, stateDir: dir, procRoot: proc });
    assert.equal(await volumes.attach(spec, volume, { pid: 4242 }), 'live');
    const perl = r.calls.filter((c) => c.argv.includes('/usr/bin/perl'));
    assert.equal(perl.length, 1);
    assert.deepEqual(perl[0]?.argv.slice(0, 3), ['env', '-i', '/usr/bin/perl']);
    assert.match(
      perl[0]?.argv[4] ?? '',
      /syscall\(428,.*syscall\(308,.*syscall\(429,/s,
      'open_tree, setns, move_mount',
    );
    assert.deepEqual(perl[0]?.argv.slice(-3), ['4242', volume.hostPath, '/.uml/volumes/data']);
    const perlAt = r.calls.indexOf(perl[0] as (typeof r.calls)[number]);
    const config = r.calls.findIndex((c) => c.argv[2] === 'config ubd2=/.uml/volumes/data');
    assert.ok(config > perlAt, 'mounted before the kernel is asked to open it');

    // Detach: the kernel lets go first (its slot holds the jail path), then the mount goes.
    const d = fakeRunner((argv) => {
      if (argv[0] !== 'uml_mconsole') return undefined;
      return { stdout: argv[2] === 'config ubd2' ? 'OK /.uml/volumes/data\n' : 'OK \n' };
    });
    await createPvmVolumes({ runner: d, stateDir: dir, procRoot: proc }).detach(spec, volume, { pid: 4242 });
    const remove = d.calls.findIndex((c) => c.argv[2] === 'remove ubd2');
    const unmount = d.calls.findIndex((c) => c.argv.includes('/usr/bin/perl'));
    assert.ok(remove >= 0 && unmount > remove, d.commands().join('\n'));
    assert.deepEqual(d.calls[unmount]?.argv.slice(-2), ['4242', '/.uml/volumes/data']);
    assert.equal((await stat(volume.hostPath)).uid, 0, "the file is root's again");
  });

  test('a config the kernel refuses takes the mount out of the jail again', async () => {
    const proc = join(dir, 'proc');
    await mkdir(join(proc, '4243', 'root', '.uml'), { recursive: true });
    const r = fakeRunner((argv) => {
      if (argv[0] === 'uml_mconsole') {
        return { stdout: /^config ubd\d+=/.test(argv[2] ?? '') ? 'ERR no space\n' : 'OK \n' };
      }
      return undefined;
    });
    await assert.rejects(
      createPvmVolumes({ runner: r, stateDir: dir, procRoot: proc }).attach(spec, volume, { pid: 4243 }),
      /refused volume data as ubd2: no space/,
    );
    const perl = r.calls.filter((c) => c.argv.includes('/usr/bin/perl'));
    assert.equal(perl.length, 2, 'mounted, then taken out');
    assert.deepEqual(perl[1]?.argv.slice(-2), ['4243', '/.uml/volumes/data']);
  });
});
