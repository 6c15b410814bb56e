import assert from 'node:assert/strict';
import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import { once } from 'node:events';
import {
  copyFileSync,
  existsSync,
  mkdirSync,
  readdirSync,
  renameSync,
  rmSync,
  statSync,
  symlinkSync,
  writeFileSync,
} from 'node:fs';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import type { BackupDirectoryArchiveWire } from '../../src/api/backup-schemas.ts';
import { makeRunDir, removeRunDir } from '../leftovers.ts';
import { type Daemon, eventually, sleep, startDaemon } from './harness.ts';

const CLI = path.resolve(import.meta.dirname, '../../bin/trivisor');

// Daemons of storage tests need no network of their own.
process.env.TRIVISOR_DEFAULT_NETWORK = 'none';

/** The copy's speed limit: slow enough that the guest is seen running on the archive well before the copy ends. */
const COPY_BYTES_PER_SECOND = 4 * 2 ** 20;

describe("import from the daemon's backup directory (import --from-backups, decision 0070)", () => {
  let d: Daemon;
  let outside: string;
  const importers: ChildProcess[] = [];
  let blobSha = '';
  const backups = () => path.join(d.stateDir, 'shipped-backups');

  before(async () => {
    d = await startDaemon({ env: { TRIVISOR_LIVE_RESTORE_BYTES_PER_SECOND: String(COPY_BYTES_PER_SECOND) } });
    outside = await makeRunDir('restore-from');
    mkdirSync(path.join(backups(), 'v1'), { recursive: true });
    d.ok(['launch', 'busybox', 'v1', '--model', 'vm', '-c', 'limits.memory=128MiB']);
    sh(
      'v1',
      'mkdir -p /srv && printf restored > /srv/data.txt && dd if=/dev/urandom of=/srv/blob bs=1M count=24 2>/dev/null && sync',
    );
    blobSha = sh('v1', 'sha256sum /srv/blob | cut -c1-64').trim();
    d.ok(['export', 'v1', path.join(backups(), 'v1', 'plain.tar'), '--uncompressed']);
    d.ok(['delete', '--force', 'v1']);
  });
  after(async () => {
    for (const p of importers) p.kill('SIGKILL');
    await d?.destroy();
    if (outside) await removeRunDir(outside);
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
  const disk = (name: string) => path.join(d.stateDir, 'guests', name, 'root.qcow2');
  const backing = (name: string): string | undefined => {
    const r = spawnSync('qemu-img', ['info', '-U', '--output=json', disk(name)], { encoding: 'utf8' });
    assert.equal(r.status, 0, r.stderr);
    return (JSON.parse(r.stdout) as { 'backing-filename'?: string })['backing-filename'];
  };
  /** Archives a live restore keeps, and import spools: none once a restore ended or failed. */
  const leftovers = () => [
    ...(existsSync(path.join(d.stateDir, 'imports')) ? readdirSync(path.join(d.stateDir, 'imports')) : []),
    ...readdirSync(d.stateDir).filter((n) => n.startsWith('trivisor-import-')),
  ];
  const exited = async (p: ChildProcess): Promise<{ code: number | null; stderr: string }> => {
    let stderr = '';
    p.stderr?.on('data', (c: Buffer) => {
      stderr += c.toString();
    });
    const [code] = (await once(p, 'exit')) as [number | null];
    return { code, stderr };
  };

  test('live from the directory: runs on the archive read in place (a hard link, no copy), which retention may then remove', async () => {
    const archive = path.join(backups(), 'v1', 'plain.tar');
    // A second archive for the tests after this one, which removes this one mid-copy.
    copyFileSync(archive, path.join(backups(), 'v1', 'again.tar'));
    const p = spawn(CLI, ['import', '--from-backups', 'v1/plain.tar', 'r1', '--live'], {
      env: {
        ...process.env,
        TRIVISOR_DIR: d.stateDir,
        TRIVISOR_CONFIG_DIR: path.join(d.stateDir, 'cli-config'),
      },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    importers.push(p);
    const result = exited(p);
    await eventually('r1 runs', () => names().includes('r1') && info('r1').status === 'Running', 120_000);
    assert.match(backing('r1') ?? '', /^json:.*"offset"/, 'the disk is backed by the archive in place');
    assert.equal(p.exitCode, null, 'the import is still copying');
    // The daemon reads the directory's archive through a hard link: no copy of it was made.
    assert.equal(statSync(archive).nlink, 2, 'the archive has one hard link besides its own name');
    assert.equal(sh('r1', 'cat /srv/data.txt'), 'restored');
    // Retention (or a person) removes the archive from the directory: the copy goes on.
    rmSync(archive);
    const { code, stderr } = await result;
    assert.equal(code, 0, stderr);
    assert.equal(backing('r1'), undefined, 'the disk no longer has a backing file');
    assert.equal(sh('r1', 'sha256sum /srv/blob | cut -c1-64').trim(), blobSha);
    assert.deepEqual(leftovers(), [], 'the hard link is removed once copied');
    assert.equal(statSync(path.join(backups(), 'v1', 'again.tar')).nlink, 1);
    d.ok(['delete', '--force', 'r1']);
  });

  test('bad names are refused in one line, with nothing made', () => {
    writeFileSync(path.join(outside, 'out.tar'), 'not an archive');
    symlinkSync(path.join(outside, 'out.tar'), path.join(backups(), 'v1', 'link.tar'));
    symlinkSync(outside, path.join(backups(), 'evil'));
    const cases: Array<[string, RegExp]> = [
      ['../x.tar', /not GUEST\/ARCHIVE/],
      ['v1/../../x.tar', /not GUEST\/ARCHIVE/],
      ['/etc/passwd', /relative to the backup directory/],
      ['v1/missing.tar', /not found/],
      ['v1/link.tar', /symbolic link/],
      ['evil/out.tar', /outside the backup directory/],
      ['v1', /not GUEST\/ARCHIVE/],
    ];
    for (const [name, pattern] of cases) {
      for (const live of [false, true]) {
        const r = d.cli(['import', '--from-backups', name, 'x1', ...(live ? ['--live'] : [])], {
          timeoutMs: 120_000,
        });
        assert.notEqual(r.code, 0, `${name}: ${r.stdout}`);
        assert.match(r.stderr.trim(), pattern, name);
        assert.equal(r.stderr.trim().split('\n').length, 1, r.stderr);
      }
    }
    assert.ok(!names().includes('x1'), 'x1 was left behind');
    assert.deepEqual(leftovers(), []);
    assert.ok(existsSync(path.join(outside, 'out.tar')), 'the file outside is untouched');
  });

  test('a whole import of a ct guest from the directory keeps the archive there', () => {
    d.ok(['launch', 'busybox', 'c1']);
    sh('c1', 'printf ct-restored > /root/data.txt');
    mkdirSync(path.join(backups(), 'c1'), { recursive: true });
    const archive = path.join(backups(), 'c1', 'whole.tar');
    d.ok(['export', 'c1', archive]);
    d.ok(['delete', '--force', 'c1']);
    d.ok(['import', '--from-backups', 'c1/whole.tar', 'c2'], { timeoutMs: 300_000 });
    d.ok(['start', 'c2']);
    assert.equal(sh('c2', 'cat /root/data.txt'), 'ct-restored');
    assert.ok(existsSync(archive), 'the archive stays in the backup directory');
    assert.equal(statSync(archive).nlink, 1);
    assert.deepEqual(leftovers(), []);
    d.ok(['delete', '--force', 'c2']);
  });

  /** Checksums of a guest's files (its own: /etc's are rewritten per guest by the daemon). */
  const tree = (guest: string) =>
    sh(
      guest,
      "find / -xdev -type f ! -path '/etc/*' ! -path '/tmp/*' ! -path '/run/*' | sort | xargs sha256sum",
    );
  /** Exports `guest` --incremental into its backup folder as the link its chain says, named as the scheduler names them. */
  const exportLink = (guest: string, at: string): { chain: string; file: string } => {
    mkdirSync(path.join(backups(), guest), { recursive: true });
    const spool = path.join(backups(), guest, `.spool-${process.pid}.tar`);
    const said = d.ok(['export', guest, spool, '--incremental']);
    const m =
      /^(?:Full backup: starts chain ([0-9a-f]+)|Incremental backup (\d+) of chain ([0-9a-f]+))$/m.exec(said);
    assert.ok(m, said);
    const file = m[1] ? `${at}-full-${m[1]}.tar` : `${at}-incr-${m[3]}-${m[2]}.tar`;
    renameSync(spool, path.join(backups(), guest, file));
    return { chain: (m[1] ?? m[3]) as string, file };
  };
  type Listed = BackupDirectoryArchiveWire;

  test('a ct chain: the listing shows the full and its incremental, and --from-backups of the incremental restores both, files identical', async () => {
    d.ok(['launch', 'busybox', 'k1']);
    sh(
      'k1',
      'mkdir -p /srv && printf one > /srv/a.txt && printf gone > /srv/b.txt && printf kept > /root/k.txt',
    );
    const full = exportLink('k1', '20261205T030000Z');
    sh(
      'k1',
      'printf two > /srv/a.txt && rm /srv/b.txt && printf new > /srv/c.txt && mv /root/k.txt /root/moved.txt',
    );
    const incr = exportLink('k1', '20261205T031000Z');
    assert.equal(incr.chain, full.chain);
    const before = tree('k1');
    assert.match(before, /\/srv\/c\.txt/);
    d.ok(['delete', '--force', 'k1']);

    const listed = JSON.parse(d.ok(['backup', 'list', 'k1', '--format', 'json'])) as Listed[];
    assert.deepEqual(
      listed.map((a) => [a.archive, a.kind, a.chain, a.sequence, a.parent ?? null, a.restorable]),
      [
        [`k1/${full.file}`, 'full', full.chain, 0, null, true],
        [`k1/${incr.file}`, 'incremental', full.chain, 1, full.file, true],
      ],
    );
    assert.equal(listed[1]?.sizeBytes, statSync(path.join(backups(), 'k1', incr.file)).size);
    assert.match(
      d.ok(['backup', 'list']),
      new RegExp(`k1/${incr.file} +incremental +${full.chain}#1 +${full.file}`),
    );
    const urls = await d.api('GET', '/1.0/backups?guest=k1');
    assert.deepEqual(urls.body.metadata, [`/1.0/backups/k1/${full.file}`, `/1.0/backups/k1/${incr.file}`]);
    const one = await d.api('GET', `/1.0/backups/k1/${incr.file}`);
    assert.equal((one.body.metadata as Listed).parent, full.file);

    // Room for the one guest the chain makes: its incremental is no guest more (decision 0074).
    assert.deepEqual(names(), []);
    d.ok(['project', 'set', 'default', 'limits.guests=1']);
    try {
      d.ok(['import', '--from-backups', `k1/${incr.file}`, 'k2', '--storage', 'default'], {
        timeoutMs: 300_000,
      });
    } finally {
      d.ok(['project', 'unset', 'default', 'limits.guests']);
    }
    d.ok(['start', 'k2']);
    assert.equal(tree('k2'), before, "the chain's guest has the same files, with the same contents");
    assert.equal(sh('k2', 'cat /srv/a.txt; echo; ls /srv; ls /root'), 'two\na.txt\nc.txt\nmoved.txt\n');
    assert.deepEqual(leftovers(), []);
    for (const f of [full.file, incr.file]) assert.equal(statSync(path.join(backups(), 'k1', f)).nlink, 1);
    d.ok(['delete', '--force', 'k2']);
  });

  test('kill -9 of the daemon in the middle of a --from-backups chain import: no guest is left, and the retry restores it', async () => {
    d.ok(['launch', 'busybox', 'm1']);
    const full = exportLink('m1', '20261205T040000Z');
    // A link that takes a while to apply, for the kill to land in.
    sh(
      'm1',
      'mkdir -p /srv && dd if=/dev/zero of=/srv/zeros bs=1M count=256 2>/dev/null && printf last > /srv/last.txt',
    );
    const incr = exportLink('m1', '20261205T041000Z');
    const before = tree('m1');
    d.ok(['delete', '--force', 'm1']);
    const r = await d.api('POST', '/1.0/backups/import', {
      source: { type: 'backup-directory', archive: `m1/${incr.file}` },
      name: 'm2',
    });
    assert.equal(r.status, 202, JSON.stringify(r.body));
    const id = (r.body.metadata as { id: string }).id;
    // The full is in and the incremental is being applied: the guest exists, at the earlier point.
    const end = Date.now() + 120_000;
    for (;;) {
      const op = (await d.api('GET', `/1.0/operations/${id}`)).body.metadata as {
        progressText: string | null;
        status: string;
      };
      assert.equal(op.status, 'Running', JSON.stringify(op));
      if (op.progressText === 'importing link 2 of 2') break;
      assert.ok(Date.now() < end, 'timed out waiting for the second link');
      await sleep(5);
    }
    await d.kill9();
    await d.restart();
    await eventually(
      'the half-restored m2 is deleted',
      () => !names().includes('m2') && !existsSync(path.join(d.stateDir, 'guests', 'm2')),
      60_000,
    );
    assert.deepEqual(leftovers(), [], 'no link to the archive is left');
    for (const f of [full.file, incr.file]) assert.equal(statSync(path.join(backups(), 'm1', f)).nlink, 1);
    d.ok(['import', '--from-backups', `m1/${incr.file}`, 'm2'], { timeoutMs: 300_000 });
    d.ok(['start', 'm2']);
    assert.equal(tree('m2'), before);
    assert.deepEqual(leftovers(), []);
    d.ok(['delete', '--force', 'm2']);
  });
});
