import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { debianArchiveUnreachable } from '../debian-archive.ts';
import { makeRunDir, removeRunDir } from '../leftovers.ts';
import { type Daemon, startDaemon } from './harness.ts';

const offline = await debianArchiveUnreachable();

describe('images through the CLI', () => {
  let d: Daemon;
  let work: string;
  before(async () => {
    d = await startDaemon();
    work = await makeRunDir('img');
  });
  after(async () => {
    await d?.destroy();
    await removeRunDir(work);
  });

  test('the built-in busybox image is there on first start', () => {
    const list = JSON.parse(d.ok(['image', 'list', '--format', 'json'])) as Array<{
      aliases: string[];
      fingerprint: string;
    }>;
    assert.ok(list.some((i) => i.aliases.includes('busybox')));
    const info = d.ok(['image', 'info', 'busybox']);
    assert.match(info, /busybox/);
  });

  test('import a root file system tarball, launch from it, and refuse deleting it while in use', () => {
    // A tarball of a real root file system: the busybox image's tree, with a marker file.
    const tree = path.join(work, 'tree');
    const busybox = JSON.parse(d.ok(['image', 'info', 'busybox', '--format', 'json'])) as {
      fingerprint: string;
    };
    execFileSync('cp', ['-a', path.join(d.stateDir, 'images', busybox.fingerprint, 'trees', 'rootfs'), tree]);
    execFileSync('sh', ['-c', `echo imported > ${tree}/etc/marker`]);
    const tarball = path.join(work, 'rootfs.tar.xz');
    execFileSync('tar', ['-C', tree, '-cJf', tarball, '.']);

    d.ok(['image', 'import', tarball, '--alias', 'mine']);
    assert.match(d.ok(['image', 'list']), /mine/);
    d.ok(['launch', 'mine', 'fromtar']);
    assert.equal(d.ok(['exec', 'fromtar', '--', 'cat', '/etc/marker']), 'imported\n');

    const refused = d.cli(['image', 'delete', 'mine']);
    assert.equal(refused.code, 1);
    assert.match(refused.stderr, /^Error: .*fromtar/);
    d.ok(['delete', '--force', 'fromtar']);
    d.ok(['image', 'delete', 'mine']);
    assert.doesNotMatch(d.ok(['image', 'list']), /mine/);
  });

  test('a corrupt tarball and a duplicate alias are refused with one line', () => {
    const bad = path.join(work, 'bad.tar.gz');
    execFileSync('sh', ['-c', `head -c 4096 /dev/urandom > ${bad}`]);
    const r = d.cli(['image', 'import', bad, '--alias', 'broken']);
    assert.equal(r.code, 1);
    assert.equal(r.stderr.trim().split('\n').length, 1, r.stderr);
    assert.doesNotMatch(d.ok(['image', 'list']), /broken/);
    const dup = d.cli(['image', 'import', bad, '--alias', 'busybox']);
    assert.equal(dup.code, 1);
    assert.match(dup.stderr, /already exists/);
    assert.equal(d.cli(['image', 'info', 'nosuch']).code, 1);
    assert.equal(d.cli(['image', 'build', 'debian/nosuch']).code, 1);
  });

  test('image build debian/bookworm makes a Debian guest that boots, runs apt tools and stops cleanly', {
    timeout: 900_000,
    // Without Debian's archive there is nothing to build from; the skip says why.
    skip: offline ?? false,
  }, () => {
    const r = d.cli(['image', 'build', 'debian/bookworm'], { timeoutMs: 900_000 });
    assert.equal(r.code, 0, r.stderr);
    d.ok(['launch', 'debian/bookworm', 'deb1']);
    assert.match(d.ok(['exec', 'deb1', '--', 'cat', '/etc/debian_version']), /^12\./);
    assert.match(d.ok(['exec', 'deb1', '--', 'dpkg-query', '-W', 'coreutils']), /coreutils/);
    d.ok(['stop', 'deb1', '--timeout', '20']);
    d.ok(['delete', 'deb1']);
  });
});
