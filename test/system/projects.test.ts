import assert from 'node:assert/strict';
import { existsSync, readdirSync } from 'node:fs';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { type Daemon, startDaemon } from './harness.ts';

interface GuestJson {
  name: string;
  project: string;
  config: Record<string, string>;
}

/** Projects with quotas through the real CLI, with real ct guests (issue 11). */
describe('projects and quotas through the CLI', () => {
  let d: Daemon;
  before(async () => {
    d = await startDaemon();
  });
  after(async () => {
    await d?.destroy();
  });

  const inP1 = (args: string[]) => ['--project', 'p1', ...args];
  /** Everything a guest of that name would leave on the host: its directory, its runc state. */
  const traces = (name: string) =>
    [path.join(d.stateDir, 'guests', name), path.join(d.stateDir, 'runc', name)].filter((p) => existsSync(p));
  const oneLine = (text: string) => {
    assert.equal(text.trim().split('\n').length, 1, `one line expected: ${text}`);
    return text.trim();
  };

  test("project create and list; a guest launched in p1 runs and is p1's", () => {
    d.ok(['project', 'create', 'p1', 'limits.guests=1', 'limits.memory=256MiB', '--description', 'team one']);
    assert.match(d.ok(['project', 'list']), /^p1\s+0\/1\s+0B\/256MiB/m);
    d.ok(inP1(['launch', 'busybox', 'w1', '-c', 'limits.memory=128MiB']));
    assert.equal(d.ok(inP1(['exec', 'w1', '--', 'hostname'])).trim(), 'w1');
    const g = JSON.parse(d.ok(inP1(['info', 'w1', '--format', 'json']))) as GuestJson;
    assert.equal(g.project, 'p1');
    // The traces checked below are real: a guest that exists has both.
    assert.equal(traces('w1').length, 2);
  });

  test('a launch over limits.guests is one line, exit 1, and leaves nothing behind', () => {
    const before = readdirSync(path.join(d.stateDir, 'guests')).sort();
    const r = d.cli(inP1(['launch', 'busybox', 'w2', '-c', 'limits.memory=64MiB']));
    assert.equal(r.code, 1);
    assert.equal(
      oneLine(r.stderr),
      'Error: Project p1 would use 2 guests of limits.guests=1: delete something in it or raise the limit (trivisor project set p1 limits.guests=...)',
    );
    assert.deepEqual(traces('w2'), []);
    assert.deepEqual(readdirSync(path.join(d.stateDir, 'guests')).sort(), before);
    const all = JSON.parse(d.ok(['list', '--all-projects', '--format', 'json'])) as GuestJson[];
    assert.deepEqual(
      all.map((x) => `${x.project}/${x.name}`),
      ['p1/w1'],
    );
  });

  test('over limits.memory: a launch and a config set are refused; the guest keeps its limit', () => {
    d.ok(['project', 'set', 'p1', 'limits.guests=3']);
    const r = d.cli(inP1(['launch', 'busybox', 'w3', '-c', 'limits.memory=200MiB']));
    assert.equal(r.code, 1);
    assert.match(oneLine(r.stderr), /^Error: Project p1 would use 328MiB of memory of limits\.memory=256MiB/);
    assert.deepEqual(traces('w3'), []);
    const set = d.cli(inP1(['config', 'set', 'w1', 'limits.memory=512MiB']));
    assert.equal(set.code, 1);
    assert.match(oneLine(set.stderr), /would use 512MiB of memory of limits\.memory=256MiB/);
    const g = JSON.parse(d.ok(inP1(['info', 'w1', '--format', 'json']))) as GuestJson;
    assert.equal(g.config['limits.memory'], '128MiB');
    const info = d.ok(['project', 'info', 'p1']);
    assert.match(info, /guests:\s+1 of 3 \(limits\.guests\)/);
    assert.match(info, /memory:\s+128MiB of 256MiB \(limits\.memory\)/);
    assert.match(info, /Holds:\n {2}\/1\.0\/guests\/w1/);
  });

  test("from default, p1's guest is not there; its name is taken host-wide; --all-projects shows it", () => {
    const r = d.cli(['info', 'w1']);
    assert.equal(r.code, 1);
    assert.equal(oneLine(r.stderr), 'Error: Guest w1 not found');
    assert.notEqual(d.cli(['exec', 'w1', '--', 'true']).code, 0);
    assert.doesNotMatch(d.ok(['list']), /w1/);
    assert.match(d.ok(['list', '--all-projects']), /^PROJECT\s+NAME.*\np1\s+w1\s+ct\s+Running/m);
    const message =
      'Error: The name w1 is taken by a guest of another project: guest names are unique on this host, pick another';
    const taken = d.cli(['launch', 'busybox', 'w1']);
    assert.equal(taken.code, 1);
    assert.equal(oneLine(taken.stderr), message);
    // On a storage pool too (the pool refuses before it makes anything).
    d.ok(['storage', 'create', 'plain', 'dir']);
    const onPool = d.cli(['launch', 'busybox', 'w1', '--storage', 'plain']);
    assert.equal(onPool.code, 1);
    assert.equal(oneLine(onPool.stderr), message);
    d.ok(['storage', 'delete', 'plain']);
  });

  test('a project that does not exist is one line; default cannot be deleted; p1 only once empty', () => {
    const missing = d.cli(['--project', 'nope', 'list']);
    assert.equal(missing.code, 1);
    assert.equal(oneLine(missing.stderr), 'Error: Project nope not found: see trivisor project list');
    assert.match(oneLine(d.cli(['project', 'delete', 'default']).stderr), /default cannot be deleted/);
    const busy = d.cli(['project', 'delete', 'p1']);
    assert.equal(busy.code, 1);
    assert.match(
      oneLine(busy.stderr),
      /Project p1 is not empty: it holds \/1\.0\/guests\/w1; delete them first/,
    );
    d.ok(inP1(['delete', '--force', 'w1']));
    assert.deepEqual(traces('w1'), []);
    d.ok(['project', 'delete', 'p1']);
    assert.doesNotMatch(d.ok(['project', 'list']), /^p1/m);
  });
});
