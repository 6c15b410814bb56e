import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { chmod, copyFile, lstat, readdir, readFile, stat } from 'node:fs/promises';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { hostRunner } from '../../src/host/runner.ts';
import { buildBusyboxRootfs } from '../../src/images/busybox-image.ts';
import { makeRunDir, removeRunDir } from '../leftovers.ts';
import { type Daemon, startDaemon } from './harness.ts';

// Issue 11, findings 2, 3 and 4, as an outside tester ran them: a local user (`nobody`)
// against the trees and files of the state directory (docs/decisions/0018).

const NOBODY = 65534;

/**
 * Runs argv as host uid `uid` (gid the same), with no supplementary groups. Through `sh -c exec`:
 * setpriv itself keeps root's capabilities until its execve, so the program's path would be
 * looked up with CAP_DAC_OVERRIDE; the shell has none left when it looks it up.
 */
function as(uid: number, argv: string[]) {
  const r = spawnSync(
    'setpriv',
    [`--reuid=${uid}`, `--regid=${uid}`, '--clear-groups', '--', '/bin/sh', '-c', 'exec "$0" "$@"', ...argv],
    { encoding: 'utf8', timeout: 30_000 },
  );
  return { code: r.status ?? 128, stdout: r.stdout ?? '', stderr: r.stderr ?? '' };
}
const asNobody = (argv: string[]) => as(NOBODY, argv);

/** Paths of entries named `name` below `dir`, found as root (whatever the layout of the store). */
async function findNamed(dir: string, name: string): Promise<string[]> {
  const found: string[] = [];
  const walk = async (d: string): Promise<void> => {
    for (const entry of await readdir(d, { withFileTypes: true }).catch(() => [])) {
      const p = path.join(d, entry.name);
      if (entry.name === name) found.push(p);
      if (entry.isDirectory()) await walk(p);
    }
  };
  await walk(dir);
  return found;
}

/** Device nodes below `dir` (lstat, never following links). */
async function deviceNodes(dir: string): Promise<string[]> {
  const out = execFileSync('find', [dir, '-xdev', '(', '-type', 'b', '-o', '-type', 'c', ')', '-print'], {
    encoding: 'utf8',
  });
  return out.split('\n').filter((l) => l !== '');
}

/** The host uid that root of a running ct guest is (first line of its init's uid_map). */
async function rootUidOf(pid: number): Promise<{ base: number; size: number }> {
  const [inner, outer, size] = (await readFile(`/proc/${pid}/uid_map`, 'utf8'))
    .trim()
    .split(/\s+/)
    .map(Number);
  assert.equal(inner, 0);
  return { base: outer ?? -1, size: size ?? 0 };
}

describe('a local user gets nothing from the state directory (issue 11, findings 2-4)', () => {
  let d: Daemon;
  let work: string;
  const pidOf = (name: string): number => {
    const info = JSON.parse(d.ok(['info', name, '--format', 'json'])) as { state: { pid: number | null } };
    assert.ok(info.state.pid, `${name} runs`);
    return info.state.pid;
  };

  before(async () => {
    d = await startDaemon({ tcp: true });
    // The state dir as an installation has it (/var/lib/trivisor is made 0711; ct and pvm
    // guests need it searchable), not the 0700 of the test's temp dir.
    await chmod(d.stateDir, 0o711);
    work = await makeRunDir('closed');
  });
  after(async () => {
    await d?.destroy();
    if (work) await removeRunDir(work);
  });

  test('finding 2: an imported setuid-root shell and device nodes give nobody neither root nor devices', async () => {
    const tree = path.join(work, 'tree');
    await buildBusyboxRootfs(tree, { runner: hostRunner() });
    // The host's bash runs from the host path with the host's libraries: a real setuid-root shell.
    await copyFile('/bin/bash', path.join(tree, 'bin/suidsh'));
    await chmod(path.join(tree, 'bin/suidsh'), 0o4755);
    execFileSync('mknod', ['-m', '0666', path.join(tree, 'dev/evilnull'), 'c', '1', '3']);
    execFileSync('mknod', ['-m', '0666', path.join(tree, 'dev/evilloop'), 'b', '7', '0']);
    execFileSync('mknod', ['-m', '0666', path.join(tree, 'etc/evilmem'), 'c', '1', '1']);
    const tarball = path.join(work, 'evil.tar.gz');
    execFileSync('tar', ['-C', tree, '--numeric-owner', '-czf', tarball, '.']);
    d.ok(['image', 'import', tarball, '--alias', 'evil']);
    const { fingerprint } = JSON.parse(d.ok(['image', 'info', 'evil', '--format', 'json'])) as {
      fingerprint: string;
    };
    const imageDir = path.join(d.stateDir, 'images', fingerprint);

    const shells = await findNamed(imageDir, 'suidsh');
    assert.ok(shells.length > 0, 'the image holds the shell');
    for (const shell of shells) {
      // What the tester ran: euid=0 before the fix.
      const r = asNobody([shell, '-p', '-c', 'id -u']);
      assert.notEqual(r.code, 0, `nobody ran ${shell}: ${r.stdout}`);
      assert.equal(r.stdout, '', `${shell} printed ${r.stdout}`);
    }
    assert.notEqual(asNobody(['ls', path.join(d.stateDir, 'images')]).code, 0, 'images/ cannot be listed');
    assert.notEqual(asNobody(['ls', imageDir]).code, 0, "an image's directory cannot be listed");
    assert.deepEqual(await deviceNodes(imageDir), [], 'no device node is kept in the image tree');

    // The image still works, and its setuid shell is still setuid root inside a guest.
    d.ok(['launch', 'evil', 'ev1']);
    assert.equal(d.ok(['exec', 'ev1', '--', 'stat', '-c', '%a %u', '/bin/suidsh']), '4755 0\n');
    assert.match(d.ok(['exec', 'ev1', '--', 'ls', '/dev']), /null/);
    // The guest root is mounted in the guest's own mount namespace only (decision 64): the host
    // reaches it through its init's /proc root, which nobody cannot pass.
    const evPid = pidOf('ev1');
    const evRoot = `/proc/${evPid}/root`;
    assert.notEqual(asNobody([path.join(evRoot, 'bin/suidsh'), '-p', '-c', 'id -u']).code, 0);
    const hostMounts = await readFile('/proc/self/mountinfo', 'utf8');
    const guestDir = path.join(d.stateDir, 'guests', 'ev1');
    assert.ok(
      !hostMounts.split('\n').some((l) => (l.split(' ')[4] ?? '').startsWith(`${guestDir}/`)),
      'nothing of the guest is mounted on the host',
    );
    const mountinfo = await readFile(`/proc/${evPid}/mountinfo`, 'utf8');
    const line = mountinfo.split('\n').find((l) => l.split(' ')[4] === '/');
    assert.ok(line, "the guest's namespace has its root");
    assert.match(line.split(' ')[5] ?? '', /\bnodev\b/, `mounted nodev: ${line}`);
    d.ok(['delete', '--force', 'ev1']);
    d.ok(['image', 'delete', 'evil']);
  });

  test("finding 3: a guest's setuid file gives nobody nothing, and one guest's root is nothing to another", async () => {
    d.ok(['launch', 'busybox', 'ga']);
    d.ok(['launch', 'busybox', 'gb']);
    await copyFile('/bin/bash', path.join(work, 'sbash'));
    d.ok(['file', 'push', path.join(work, 'sbash'), 'ga/tmp/sbash']);
    d.ok(['exec', 'ga', '--', 'chmod', '4755', '/tmp/sbash']);
    d.ok([
      'exec',
      'gb',
      '--',
      'sh',
      '-c',
      'echo "root:secret-of-gb:1::::::" > /etc/shadow && chmod 640 /etc/shadow',
    ]);
    // The guest's files on the host: its upper layer (its root is mounted in its namespace only).
    const sbash = path.join(d.stateDir, 'guests', 'ga', 'upper', 'tmp', 'sbash');
    assert.ok((await stat(sbash)).mode & 0o4000, 'the setuid shell is there');
    const r = asNobody([sbash, '-p', '-c', 'id -u']);
    assert.notEqual(r.code, 0, `nobody ran the guest's setuid shell as uid ${r.stdout.trim()}`);
    assert.equal(r.stdout, '');

    const a = await rootUidOf(pidOf('ga'));
    const b = await rootUidOf(pidOf('gb'));
    assert.equal(a.size, 65536);
    assert.equal(b.size, 65536);
    assert.ok(a.base + a.size <= b.base || b.base + b.size <= a.base, `disjoint ranges: ${a.base} ${b.base}`);
    // A process that escaped ga as its root: it can neither signal gb's init nor read gb's files.
    const kill = as(a.base, ['kill', '-0', String(pidOf('gb'))]);
    assert.notEqual(kill.code, 0, "ga's root can signal gb's init");
    const shadow = path.join(d.stateDir, 'guests', 'gb', 'upper', 'etc', 'shadow');
    assert.ok((await stat(shadow)).isFile(), "gb's shadow is in its upper layer");
    const cat = as(a.base, ['cat', shadow]);
    assert.notEqual(cat.code, 0, `ga's root read gb's shadow: ${cat.stdout}`);
    const viaProc = as(a.base, ['cat', `/proc/${pidOf('gb')}/root/etc/shadow`]);
    assert.notEqual(viaProc.code, 0, `ga's root read gb's shadow through /proc: ${viaProc.stdout}`);
    // Nor can nobody see into either guest's directory.
    assert.notEqual(asNobody(['ls', path.join(d.stateDir, 'guests', 'gb')]).code, 0);
    assert.notEqual(asNobody(['cat', shadow]).code, 0);
    d.ok(['delete', '--force', 'ga', 'gb']);
  });

  test('finding 3, through a volume: a setuid file a guest leaves in its volume gives nobody nothing', async () => {
    d.ok(['storage', 'volume', 'create', 'default', 'vol1', 'size=16MiB']);
    d.ok(['launch', 'busybox', 'gv']);
    d.ok(['storage', 'volume', 'attach', 'default', 'vol1', 'gv', '/srv/v']);
    await copyFile('/bin/bash', path.join(work, 'vbash'));
    d.ok(['file', 'push', path.join(work, 'vbash'), 'gv/srv/v/sbash']);
    d.ok(['exec', 'gv', '--', 'sh', '-c', 'chmod 755 /srv/v && chmod 4755 /srv/v/sbash']);
    const sbash = path.join(d.stateDir, 'custom', 'vol1', 'sbash');
    assert.equal((await stat(sbash)).mode & 0o7777, 0o4755, 'the volume holds it');
    const r = asNobody([sbash, '-p', '-c', 'id -u']);
    assert.notEqual(r.code, 0, `nobody ran the volume's setuid shell as uid ${r.stdout.trim()}`);
    assert.notEqual(asNobody(['ls', path.join(d.stateDir, 'custom')]).code, 0);
    d.ok(['delete', '--force', 'gv']);
    d.ok(['storage', 'volume', 'delete', 'default', 'vol1']);
  });

  test('finding 4: every file under the state dir that holds a secret is root-only', async () => {
    const secret = `s3cret-${randomBytes(12).toString('hex')}`;
    const fileSecret = `filesecret-${randomBytes(12).toString('hex')}`;
    await import('node:fs/promises').then((fs) =>
      fs.writeFile(path.join(work, 'injected'), `${fileSecret}\n`, { mode: 0o600 }),
    );
    d.ok([
      'launch',
      'busybox',
      'sec1',
      '-c',
      `environment.API_KEY=${secret}`,
      '--file',
      `/etc/app.key=${path.join(work, 'injected')},mode=0644`,
    ]);
    assert.equal(d.ok(['exec', 'sec1', '--', 'cat', '/etc/app.key']), `${fileSecret}\n`);
    d.ok(['export', 'sec1', path.join(work, 'sec1.tar.zst')]);
    d.ok(['snapshot', 'create', 'sec1', 'snap0']);
    // A pvm guest gets its injected files on a config disk under the state dir.
    d.ok([
      'launch',
      'busybox',
      'sec2',
      '--model',
      'pvm',
      '-c',
      'limits.memory=64MiB',
      '--file',
      `/etc/app.key=${path.join(work, 'injected')},mode=0644`,
    ]);
    assert.equal(d.ok(['exec', 'sec2', '--', 'cat', '/etc/app.key']), `${fileSecret}\n`);

    const backups = await stat(path.join(d.stateDir, 'backups'));
    assert.equal(backups.mode & 0o777, 0o700, 'backups/ is root-only');
    for (const name of ['store.db', 'store.db-wal', 'store.db-shm', 'token']) {
      const st = await stat(path.join(d.stateDir, name)).catch(() => undefined);
      if (name !== 'store.db-shm' || st) {
        assert.ok(st, `${name} exists`);
        assert.equal(st.mode & 0o777, 0o600, `${name} is 0600`);
      }
    }
    // Every file that holds the secrets (plain, or base64 in the store's JSON), wherever it is.
    const needles = [secret, fileSecret, Buffer.from(`${fileSecret}\n`).toString('base64').slice(0, 24)];
    const grep = spawnSync(
      'grep',
      ['-rlF', '--devices=skip', ...needles.flatMap((n) => ['-e', n]), d.stateDir],
      { encoding: 'utf8' },
    );
    const holders = grep.stdout.split('\n').filter((l) => l !== '');
    assert.ok(
      holders.some((h) => h.endsWith('store.db') || h.endsWith('store.db-wal')),
      holders.join('\n'),
    );
    for (const holder of holders) {
      assert.ok((await lstat(holder)).isFile());
      const r = asNobody(['cat', holder]);
      assert.notEqual(r.code, 0, `nobody read ${holder}`);
    }
    assert.ok(
      holders.some((h) => h.includes(`${path.sep}sec2${path.sep}`)),
      `the pvm guest's config disk holds the file: ${holders.join('\n')}`,
    );
    d.ok(['delete', '--force', 'sec1', 'sec2']);
  });
});
