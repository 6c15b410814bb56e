import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { makeRunDirSync, removeRunDir } from '../leftovers.ts';
import { type Daemon, startDaemon } from './harness.ts';

describe('bad input gets a 4xx with one clear line, changes nothing and never crashes the daemon', () => {
  let d: Daemon;
  let baseline: string;
  before(async () => {
    d = await startDaemon();
    d.ok(['launch', 'busybox', 'ok1']);
    baseline = snapshot();
  });
  after(async () => {
    await d?.destroy();
  });

  function snapshot(): string {
    const list = JSON.parse(d.ok(['list', '--format', 'json'])) as Array<{
      name: string;
      status: string;
      config: unknown;
    }>;
    const dirs = readdirSync(`${d.stateDir}/guests`).sort();
    return JSON.stringify({ list: list.map((g) => [g.name, g.status, g.config]), dirs });
  }

  async function expect4xx(method: string, path: string, body: unknown, status: number, re: RegExp) {
    const r = await d.api(method, path, body);
    assert.equal(r.status, status, `${method} ${path} ${JSON.stringify(body)?.slice(0, 80)}: ${r.text}`);
    assert.equal(r.body.type, 'error');
    assert.equal(r.body.error_code, status);
    assert.ok(typeof r.body.error === 'string' && !r.body.error.includes('\n'), 'one line');
    assert.match(r.body.error as string, re);
  }

  test('names that are not DNS labels', async () => {
    for (const name of ['../x', 'a/b', '', 'x'.repeat(64), 'UPPER', 'a_b']) {
      await expect4xx('POST', '/1.0/guests', { name, image: 'busybox' }, 400, /name/i);
      const r = d.cli(['launch', 'busybox', name]);
      assert.equal(r.code, 1, `launch ${name}`);
      assert.match(r.stderr, /^Error: /);
      assert.equal(r.stderr.trim().split('\n').length, 1);
    }
    const r = await d.api('GET', '/1.0/guests/UPPER');
    assert.equal(r.status, 400);
  });

  test('unknown images, duplicate names and unknown config keys', async () => {
    await expect4xx(
      'POST',
      '/1.0/guests',
      { name: 'x1', image: 'nosuchimage' },
      404,
      /nosuchimage.*not found/i,
    );
    await expect4xx('POST', '/1.0/guests', { name: 'ok1', image: 'busybox' }, 409, /already exists/);
    await expect4xx(
      'POST',
      '/1.0/guests',
      { name: 'x1', image: 'busybox', config: { 'limits.nope': '1' } },
      400,
      /limits\.nope/,
    );
    await expect4xx('GET', '/1.0/guests/nosuch', undefined, 404, /nosuch/);
    await expect4xx('POST', '/1.0/guests', { name: 'x1', image: 'busybox', model: 'zz' }, 400, /model/);
  });

  test('malformed limits: not a size, negative, larger than the host', async () => {
    for (const [k, v] of [
      ['limits.memory', 'lots'],
      ['limits.memory', '-64MiB'],
      ['limits.memory', '100TiB'],
      ['limits.cpu', '1000'],
      ['limits.cpu', '-1'],
      ['limits.processes', 'many'],
      ['limits.processes', '-5'],
    ] as const) {
      await expect4xx(
        'POST',
        '/1.0/guests',
        { name: 'x1', image: 'busybox', config: { [k]: v } },
        400,
        new RegExp(k.replace('.', '\\.')),
      );
      assert.equal(d.cli(['launch', 'busybox', 'x1', '-c', `${k}=${v}`]).code, 1);
      assert.equal(d.cli(['config', 'set', 'ok1', `${k}=${v}`]).code, 1);
    }
  });

  test('keys of another model and machine types that are not offered are refused, and nothing is made', async () => {
    for (const [model, k, v, pattern] of [
      ['vm', 'limits.processes', '100', /only applies to ct and pvm guests, not vm/],
      ['ct', 'vm.machine', 'pc', /only applies to vm guests, not ct/],
      ['pvm', 'vm.machine', 'q35', /only applies to vm guests, not pvm/],
      ['vm', 'vm.machine', 'microvm', /microvm is not offered/],
      ['vm', 'vm.machine', 'isapc', /must be one of q35, pc/],
    ] as const) {
      await expect4xx(
        'POST',
        '/1.0/guests',
        { name: 'x1', image: 'busybox', model, config: { [k]: v } },
        400,
        pattern,
      );
      const r = d.cli(['launch', 'busybox', 'x1', '--model', model, '-c', `${k}=${v}`]);
      assert.equal(r.code, 1);
      assert.match(r.stderr, pattern);
    }
    assert.equal(d.cli(['config', 'set', 'ok1', 'vm.machine=pc']).code, 1);
    assert.equal((await d.api('GET', '/1.0/guests/x1')).status, 404);
  });

  test('malformed, oversized and unknown-field JSON bodies', async () => {
    await expect4xx('POST', '/1.0/guests', '{"name": "x1", ', 400, /JSON|body/i);
    await expect4xx(
      'POST',
      '/1.0/guests',
      { name: 'x1', image: 'busybox', bogus: 1 },
      400,
      /bogus|additional|unknown/i,
    );
    await expect4xx('POST', '/1.0/guests', { name: 'x1' }, 400, /image/);
    await expect4xx('POST', '/1.0/guests', [1, 2], 400, /./);
    await expect4xx(
      'POST',
      '/1.0/guests',
      { name: 'x1', image: 'busybox', config: { 'user.x': 'y'.repeat(2 * 2 ** 20) } },
      413,
      /large|limit/i,
    );
    await expect4xx('PUT', '/1.0/guests/ok1/state', { action: 'explode' }, 400, /action/);
    await expect4xx('PUT', '/1.0/guests/ok1/state', { action: 'stop', timeout: 'soon' }, 400, /timeout/);
  });

  test('POST /1.0/images without a body, or with a body of the wrong shape, is a 400', async () => {
    const images = (await d.api('GET', '/1.0/images')).body.metadata;
    await expect4xx('POST', '/1.0/images', undefined, 400, /Send \{"source"/);
    await expect4xx('POST', '/1.0/images', [], 400, /body/i);
    assert.deepEqual((await d.api('GET', '/1.0/images')).body.metadata, images, 'no image was made');
  });

  test('a network on a subnet a host interface already carries is refused, naming the interface', async () => {
    // A free /24 of 198.19.0.0/16 on the host, put on a bridge of this test's (no dummy module here).
    const routed = execFileSync('ip', ['-4', '-o', 'route', 'show', 'table', 'all'], { encoding: 'utf8' });
    const third = [250, 249, 248, 247, 246].find((n) => !routed.includes(`198.19.${n}.`));
    assert.ok(third !== undefined, 'a free /24 of 198.19.0.0/16');
    const link = `tvbad${process.pid.toString(16).slice(-6)}`;
    d.claim({ links: [link] });
    execFileSync('ip', ['link', 'add', link, 'type', 'bridge']);
    try {
      execFileSync('ip', ['addr', 'add', `198.19.${third}.1/24`, 'dev', link]);
      execFileSync('ip', ['link', 'set', link, 'up']);
      await expect4xx(
        'POST',
        '/1.0/networks',
        { name: 'clash', config: { 'ipv4.address': `198.19.${third}.5/24` } },
        409,
        new RegExp(`overlaps the address 198\\.19\\.${third}\\.1/24 of host interface ${link}`),
      );
      const r = d.cli(['network', 'create', 'clash', `ipv4.address=198.19.${third}.129/25`]);
      assert.equal(r.code, 1);
      assert.match(r.stderr, new RegExp(`^Error: .*host interface ${link}`));
      assert.equal(r.stderr.trim().split('\n').length, 1, r.stderr);
      assert.equal((await d.api('GET', '/1.0/networks/clash')).status, 404, 'no network recorded');
      assert.doesNotMatch(
        execFileSync('ip', ['-o', 'link'], { encoding: 'utf8' }),
        / clash[:@]/,
        'no bridge made',
      );
    } finally {
      execFileSync('ip', ['link', 'del', link]);
    }
  });

  test('export to a path that cannot be written is one line, no stack, and leaves no archive behind', async () => {
    const backups = () => (existsSync(`${d.stateDir}/backups`) ? readdirSync(`${d.stateDir}/backups`) : []);
    const before = backups();
    const work = makeRunDirSync('export');
    try {
      for (const [target, pattern] of [
        [
          '/no/such/dir/x.backup',
          /^Error: Cannot write \/no\/such\/dir\/x\.backup: \/no\/such\/dir is not an existing directory$/,
        ],
        [work, /^Error: Cannot write .*: it is a directory; give a file name$/],
        [`${work}/file/x.backup`, /^Error: Cannot write .*is not an existing directory$/],
      ] as const) {
        if (target.endsWith('/file/x.backup')) execFileSync('touch', [`${work}/file`]);
        const r = d.cli(['export', 'ok1', target]);
        assert.equal(r.code, 1, `${target}: ${r.stdout}`);
        assert.equal(r.stderr.trim().split('\n').length, 1, `one line: ${r.stderr}`);
        assert.match(r.stderr.trim(), pattern);
        assert.doesNotMatch(r.stderr, /\bat .*\.(ts|js|mjs):\d+/, 'no stack trace');
      }
      assert.deepEqual(backups(), before, `no archive left in ${d.stateDir}/backups`);
      assert.deepEqual(readdirSync(work), ['file'], 'no .partial file');
    } finally {
      await removeRunDir(work);
    }
  });

  test('operations in the wrong state', async () => {
    await expect4xx('PUT', '/1.0/guests/ok1/state', { action: 'start' }, 400, /Running/);
    await expect4xx('PUT', '/1.0/guests/ok1/state', { action: 'unfreeze' }, 400, /frozen/i);
    await expect4xx('DELETE', '/1.0/guests/ok1', undefined, 400, /force/);
    const r = d.cli(['start', 'ok1']);
    assert.equal(r.code, 1);
    assert.match(r.stderr, /^Error: .*Running/);
  });

  test('a launch that fails half way (runc cannot start init) rolls back everything it made', async () => {
    // An image whose /sbin/init is not executable: the image imports fine, runc fails at start.
    const work = makeRunDirSync('broken');
    try {
      const busybox = JSON.parse(d.ok(['image', 'info', 'busybox', '--format', 'json'])) as {
        fingerprint: string;
      };
      execFileSync('cp', [
        '-a',
        path.join(d.stateDir, 'images', busybox.fingerprint, 'trees', 'rootfs'),
        `${work}/tree`,
      ]);
      execFileSync('sh', [
        '-c',
        `rm ${work}/tree/sbin/init && echo 'not a program' > ${work}/tree/sbin/init`,
      ]);
      execFileSync('tar', ['-C', `${work}/tree`, '-czf', `${work}/broken.tar.gz`, '.']);
      d.ok(['image', 'import', `${work}/broken.tar.gz`, '--alias', 'broken']);
      // Only this daemon's mounts: other work on the host may mount and unmount meanwhile.
      const ours = () =>
        readFileSync('/proc/mounts', 'utf8')
          .split('\n')
          .filter((l) => l.includes(d.stateDir))
          .join('\n');
      const mountsBefore = ours();
      const r = d.cli(['launch', 'broken', 'halfway']);
      assert.equal(r.code, 1);
      assert.equal(r.stderr.trim().split('\n').length, 1, r.stderr);
      assert.match(r.stderr, /^Error: .*halfway/);
      assert.equal(d.cli(['info', 'halfway']).code, 1, 'no guest record');
      assert.ok(!existsSync(`${d.stateDir}/guests/halfway`), 'no guest directory');
      assert.equal(ours(), mountsBefore, 'no mount left');
      const runcIds = execFileSync('runc', ['--root', `${d.stateDir}/runc`, 'list', '-q'], {
        encoding: 'utf8',
      });
      assert.doesNotMatch(runcIds, /halfway/);
      d.ok(['image', 'delete', 'broken']);
    } finally {
      await removeRunDir(work);
    }
  });

  test('after all of it, nothing changed and the daemon still serves', async () => {
    assert.equal(snapshot(), baseline);
    assert.equal(d.process.exitCode, null, 'daemon alive');
    assert.equal(d.ok(['exec', 'ok1', '--', 'hostname']).trim(), 'ok1');
  });
});
