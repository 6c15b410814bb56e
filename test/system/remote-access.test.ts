import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { readFileSync, statSync, writeFileSync } from 'node:fs';
import { mkdir } from 'node:fs/promises';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import WebSocket from 'ws';
import { type Daemon, eventually, request, startDaemon } from './harness.ts';

/**
 * Issue 11: TLS with pinned certificates, remotes, tokens bound to projects with roles, and
 * the audit log, all through the real CLI against a daemon listening on HTTPS (decision 0022).
 */

const REPO = path.resolve(import.meta.dirname, '../..');

/** The SHA-256 of a PEM certificate as openssl computes it (not our code's), in our form. */
function opensslFingerprint(certFile: string): string {
  const out = spawnSync('openssl', ['x509', '-in', certFile, '-noout', '-fingerprint', '-sha256'], {
    encoding: 'utf8',
  }).stdout;
  return (/=([0-9A-F:]+)/.exec(out)?.[1] ?? '').replaceAll(':', '').toLowerCase();
}

/** Runs argv as host user nobody, with no groups left. */
function asNobody(argv: string[]) {
  const r = spawnSync(
    'setpriv',
    ['--reuid=65534', '--regid=65534', '--clear-groups', '--', '/bin/sh', '-c', 'exec "$0" "$@"', ...argv],
    { encoding: 'utf8', timeout: 30_000 },
  );
  return r.status ?? 128;
}

interface Entry {
  actor: { method: string; name: string; fingerprint?: string };
  source: string;
  request: { method: string; route: string; path: string; project: string; object?: string };
  result: { status: number; error?: string };
  operation?: string;
}

describe('remotes over TLS, tokens with roles, the audit log (through the CLI)', () => {
  let d: Daemon;
  let impostor: Daemon;
  let fingerprint: string;
  let adminToken: string;
  const secrets: Record<string, string> = {};

  before(async () => {
    // The second daemon is the machine in the middle: a real Trivisor with a certificate of its own.
    [d, impostor] = await Promise.all([startDaemon({ tcp: true }), startDaemon({ tcp: true })]);
    fingerprint = opensslFingerprint(path.join(d.stateDir, 'server.crt'));
    adminToken = readFileSync(path.join(d.stateDir, 'token'), 'utf8').trim();
    d.ok(['project', 'create', 'p1']);
  });
  after(async () => {
    await Promise.all([d?.destroy(), impostor?.destroy()]);
  });

  const audit = (args: string[] = []): Entry[] =>
    JSON.parse(d.ok(['admin', 'audit', '--format', 'json', ...args]));

  test('the TCP API is HTTPS with a certificate made at first start; its key is root-only', () => {
    assert.match(d.url ?? '', /^https:\/\/127\.0\.0\.1:\d+$/);
    const daemonJson = JSON.parse(readFileSync(path.join(d.stateDir, 'daemon.json'), 'utf8'));
    assert.equal(daemonJson.fingerprint, fingerprint);
    assert.equal(statSync(path.join(d.stateDir, 'server.key')).mode & 0o777, 0o600);
    assert.notEqual(asNobody(['cat', path.join(d.stateDir, 'server.key')]), 0, 'nobody cannot read the key');
    const plain = spawnSync(
      'curl',
      ['-sS', '-o', '/dev/null', '-w', '%{http_code}', `http://${new URL(d.url!).host}/1.0`],
      {
        encoding: 'utf8',
      },
    );
    assert.notEqual(plain.stdout, '200', 'no plain HTTP on the TCP port');
  });

  test('remote add shows the fingerprint and asks once; "n" saves nothing, "y" pins it', () => {
    const no = d.cli(['remote', 'add', 'prod', d.url!, '--token', adminToken], { input: 'n\n' });
    assert.equal(no.code, 1);
    assert.equal(
      no.stderr,
      `Certificate fingerprint: ${fingerprint}\nok (y/n)? Error: The certificate was not accepted; nothing was saved\n`,
    );
    assert.doesNotMatch(d.ok(['remote', 'list']), /prod/);

    const yes = d.cli(['remote', 'add', 'prod', d.url!, '--token', adminToken], { input: 'y\n' });
    assert.equal(yes.code, 0, yes.stderr);
    assert.equal(yes.stderr, `Certificate fingerprint: ${fingerprint}\nok (y/n)? `);
    assert.equal(yes.stdout, `Remote prod added: ${d.url} (as token admin, admin in *)\n`);
    const config = path.join(d.stateDir, 'cli-config', 'config.yml');
    assert.equal(statSync(config).mode & 0o777, 0o600, 'the config holds tokens: 0600');
    assert.match(readFileSync(config, 'utf8'), new RegExp(`fingerprint: ${fingerprint}`));

    const listed = JSON.parse(d.ok(['remote', 'list', '--format', 'json'])) as Array<{
      name: string;
      default: boolean;
    }>;
    assert.deepEqual(
      listed.map((r) => [r.name, r.default]),
      [
        ['local', true],
        ['prod', false],
      ],
    );
    assert.equal(d.ok(['remote', 'get-default']), 'local\n');
    d.ok(['remote', 'switch', 'prod']);
    assert.equal(d.ok(['remote', 'get-default']), 'prod\n');
    // Now every command goes over TLS to the pinned daemon.
    d.ok(['launch', 'busybox', 'tls1']);
    d.ok(['remote', 'switch', 'local']);
    const last = audit().at(-1)!;
    assert.deepEqual([last.actor.name, last.source, last.request.object], ['admin', '127.0.0.1', 'tls1']);
    d.ok(['delete', '--force', 'tls1']);
  });

  test('scripts pin with --fingerprint; a different certificate (a machine in the middle) is refused', () => {
    d.ok(['remote', 'add', 'byfp', d.url!, '--token', adminToken, '--fingerprint', fingerprint]);
    const evil = d.cli([
      'remote',
      'add',
      'evil',
      impostor.url!,
      '--token',
      adminToken,
      '--fingerprint',
      fingerprint,
    ]);
    assert.equal(evil.code, 1);
    const theirs = opensslFingerprint(path.join(impostor.stateDir, 'server.crt'));
    assert.equal(
      evil.stderr,
      `Error: The server at https://127.0.0.1:${new URL(impostor.url!).port} presented a certificate with fingerprint ${theirs}, not ${fingerprint}: someone may be intercepting the connection, or it is another server; nothing was saved\n`,
    );
    assert.doesNotMatch(d.ok(['remote', 'list']), /evil/);

    // The pinned daemon's address now answered by another one: nothing is sent to it, token included.
    const config = path.join(d.stateDir, 'cli-config', 'config.yml');
    writeFileSync(
      config,
      `${readFileSync(config, 'utf8')}  moved:\n    url: ${impostor.url}\n    fingerprint: ${fingerprint}\n    token: ${adminToken}\n`,
    );
    const r = d.cli(['--remote', 'moved', 'launch', 'busybox', 'mitm1']);
    assert.equal(r.code, 1);
    assert.match(
      r.stderr,
      new RegExp(
        `^Error: The server at ${impostor.url!.replaceAll('.', '\\.')} presented a certificate with fingerprint ${theirs}, not the pinned ${fingerprint}: someone may be intercepting the connection, so nothing was sent\\.`,
      ),
    );
    assert.deepEqual(JSON.parse(impostor.ok(['list', '--format', 'json'])), []);
    assert.deepEqual(
      JSON.parse(impostor.ok(['admin', 'audit', '--format', 'json'])),
      [],
      'no request reached it',
    );
    d.ok(['remote', 'remove', 'moved']);
  });

  test('a viewer token reads, and is refused every change with 403 and one clear line', async () => {
    d.ok(['--project', 'p1', 'launch', 'busybox', 'g1']);
    const made = d.cli(['auth', 'token', 'create', 'watcher', '--role', 'viewer', '--project', 'p1']);
    assert.equal(made.code, 0, made.stderr);
    secrets.watcher = made.stdout.trim();
    assert.match(secrets.watcher, /^trv_watcher_[A-Za-z0-9_-]{43}$/);
    assert.equal(made.stderr, 'Token watcher (viewer in p1): its secret follows, shown this once\n');
    d.ok([
      'remote',
      'add',
      'view',
      d.url!,
      '--token',
      secrets.watcher,
      '--accept-certificate',
      '--project',
      'p1',
    ]);

    const listed = JSON.parse(d.ok(['--remote', 'view', 'list', '--format', 'json'])) as Array<{
      name: string;
    }>;
    assert.deepEqual(
      listed.map((g) => g.name),
      ['g1'],
    );
    assert.match(d.ok(['--remote', 'view', 'info', 'g1']), /g1/);
    const line = (what: string) =>
      `Error: Permission denied: token watcher is a viewer in project p1; ${what} needs an operator in project p1\n`;
    const refused: Array<[string[], string]> = [
      [['launch', 'busybox', 'v1'], 'POST /1.0/guests'],
      [['stop', 'g1'], 'PUT /1.0/guests/:name/state'],
      [['exec', 'g1', '--', 'true'], 'POST /1.0/guests/:name/exec'],
      [['config', 'set', 'g1', 'user.x=1'], 'PATCH /1.0/guests/:name'],
      [['file', 'push', path.join(REPO, 'package.json'), 'g1/tmp/x'], 'POST /1.0/guests/:name/files'],
      [['file', 'pull', 'g1/etc/hostname', '-'], 'GET /1.0/guests/:name/files'],
      [['delete', '--force', 'g1'], 'DELETE /1.0/guests/:name'],
    ];
    for (const [args, what] of refused) {
      const r = d.cli(['--remote', 'view', ...args]);
      assert.equal(r.code, 1, args.join(' '));
      assert.equal(r.stderr, line(what), args.join(' '));
    }
    // The API's own answer: 403 in the error envelope.
    const raw = await request(
      { url: d.url! },
      'POST',
      '/1.0/guests?project=p1',
      { name: 'v2', image: 'busybox' },
      {
        authorization: `Bearer ${secrets.watcher}`,
      },
    );
    assert.equal(raw.status, 403);
    assert.equal(raw.body.error_code, 403);
    // Another project is nothing to it.
    const other = d.cli(['--remote', 'view', '--project', 'default', 'list']);
    assert.equal(
      other.stderr,
      'Error: Permission denied: token watcher is a viewer in project p1; GET /1.0/guests needs a viewer in project default\n',
    );
    assert.equal(
      d.ok(['--project', 'p1', 'list', '--format', 'json']).includes('"v1"'),
      false,
      'nothing was made',
    );
  });

  test('an operator manages guests in its project, and is refused quotas, projects, pools, auth and the audit log', () => {
    secrets.ops = d.ok(['auth', 'token', 'create', 'ops', '--role', 'operator', '--project', 'p1']).trim();
    d.ok(['remote', 'add', 'ops', d.url!, '--token', secrets.ops, '--accept-certificate', '--project', 'p1']);
    d.ok(['--remote', 'ops', 'launch', 'busybox', 'g2']);
    assert.equal(d.ok(['--remote', 'ops', 'exec', 'g2', '--', 'hostname']).trim(), 'g2');
    const host = (what: string) =>
      `Error: Permission denied: token ops is an operator in project p1; ${what} needs an admin bound to all projects (*)\n`;
    const refused: Array<[string[], string]> = [
      [['project', 'set', 'p1', 'limits.guests=50'], 'PATCH /1.0/projects/:name'],
      [['project', 'create', 'p9'], 'POST /1.0/projects'],
      [['project', 'delete', 'p1'], 'DELETE /1.0/projects/:name'],
      [['storage', 'create', 'pool9', 'dir'], 'POST /1.0/storage-pools'],
      [['auth', 'token', 'create', 'mine', '--role', 'admin', '--project', '*'], 'POST /1.0/auth/tokens'],
      [['auth', 'token', 'list'], 'GET /1.0/auth/tokens'],
    ];
    for (const [args, what] of refused) {
      const r = d.cli(['--remote', 'ops', ...args]);
      assert.equal(r.code, 1, args.join(' '));
      assert.equal(r.stderr, host(what), args.join(' '));
    }
    const auditLine = d.cli(['--remote', 'ops', 'admin', 'audit']);
    assert.equal(
      auditLine.stderr,
      'Error: Permission denied: token ops is an operator in project p1; GET /1.0/audit needs an admin in project p1\n',
    );
    assert.doesNotMatch(d.ok(['project', 'list']), /p9/);
    assert.doesNotMatch(d.ok(['auth', 'token', 'list']), /mine/);
  });

  test('every change is in the audit log: who, from where, what, the result and the operation', () => {
    const entries = audit(['--since', '1h']);
    const find = (pred: (e: Entry) => boolean, what: string) => {
      const e = entries.find(pred);
      assert.ok(e, `${what} in ${JSON.stringify(entries, null, 1).slice(0, 3000)}`);
      return e;
    };
    const launched = find(
      (e) => e.actor.name === 'ops' && e.request.method === 'POST' && e.request.object === 'g2',
      'the operator launch',
    );
    assert.deepEqual(launched.actor, { method: 'token', name: 'ops' });
    assert.equal(launched.source, '127.0.0.1');
    assert.deepEqual(launched.request, {
      method: 'POST',
      route: '/1.0/guests',
      path: '/1.0/guests',
      project: 'p1',
      object: 'g2',
    });
    assert.deepEqual(launched.result, { status: 202 });
    assert.match(launched.operation ?? '', /^[0-9a-f-]{36}$/);
    const denied = find(
      (e) => e.actor.name === 'watcher' && e.request.route === '/1.0/guests/:name/exec',
      "the viewer's refused exec",
    );
    assert.deepEqual(denied.result, { status: 403, error: 'PermissionDenied' });
    const quota = find(
      (e) => e.actor.name === 'ops' && e.request.route === '/1.0/projects/:name',
      'the quota attempt',
    );
    assert.deepEqual([quota.request.method, quota.request.project, quota.result.status], ['PATCH', '*', 403]);
    const local = find(
      (e) => e.actor.method === 'unix' && e.request.object === 'watcher',
      "root's token create",
    );
    assert.deepEqual([local.actor.name, local.source, local.result.status], ['root', 'unix', 200]);
    assert.equal(
      entries.some((e) => e.request.method === 'GET'),
      false,
      'reads are not recorded',
    );

    // --since: a time after everything so far shows nothing; --project filters.
    const later = new Date(Date.now() + 60_000).toISOString();
    assert.deepEqual(audit(['--since', later]), []);
    assert.ok(audit(['--project', 'p1']).every((e) => e.request.project === 'p1'));
    const table = d.ok(['admin', 'audit', '--since', '1h']);
    assert.match(table, /^TIME +WHO +FROM +REQUEST +PROJECT +RESULT +OPERATION$/m);
    assert.match(table, /token:ops +127\.0\.0\.1 +POST \/1\.0\/guests +p1 +202 +[0-9a-f-]{36}/);
    const bad = d.cli(['admin', 'audit', '--since', 'yesterday']);
    assert.match(bad.stderr, /^Error: since "yesterday" is neither a duration \(2h, 30d\) nor a time/);

    // No secret reached it, nor the store: token secrets, environment values.
    for (const file of ['audit.db', 'audit.db-wal', 'store.db', 'store.db-wal']) {
      const bytes = readFileSync(path.join(d.stateDir, file), 'latin1');
      for (const [name, secret] of Object.entries(secrets)) {
        assert.ok(!bytes.includes(secret.slice(-43)), `${name}'s secret is not in ${file}`);
      }
    }
    assert.equal(statSync(path.join(d.stateDir, 'audit.db')).mode & 0o777, 0o600);
    assert.notEqual(asNobody(['cat', path.join(d.stateDir, 'audit.db')]), 0);
  });

  test('/1.0/events?type=audit streams entries as they are recorded, to admins only', async () => {
    const ws = new WebSocket(`ws+unix://${d.socket}:/1.0/events?type=audit&all-projects=true`);
    const seen: Array<{ type: string; metadata: Entry }> = [];
    ws.on('message', (m) => seen.push(JSON.parse(m.toString())));
    await new Promise((resolve, reject) => {
      ws.once('open', resolve);
      ws.once('error', reject);
    });
    // Over TLS too, with the admin's token: the CLI's monitor.
    const mon = spawn(
      path.join(REPO, 'bin/trivisor'),
      ['--remote', 'prod', '--project', 'p1', 'monitor', '--type', 'audit'],
      {
        env: {
          ...process.env,
          TRIVISOR_DIR: d.stateDir,
          TRIVISOR_CONFIG_DIR: path.join(d.stateDir, 'cli-config'),
        },
        stdio: ['ignore', 'pipe', 'pipe'],
      },
    );
    let out = '';
    mon.stdout.on('data', (b: Buffer) => {
      out += b.toString();
    });
    try {
      await new Promise((r) => setTimeout(r, 1500));
      d.ok(['--remote', 'ops', 'stop', 'g2', '--force']);
      await eventually(
        'the audit event on the socket and in the monitor',
        () => seen.length > 0 && /"g2"/.test(out),
      );
      const e = seen.find((s) => s.metadata.request.object === 'g2')!;
      assert.equal(e.type, 'audit');
      assert.deepEqual(
        [e.metadata.actor.name, e.metadata.request.route, e.metadata.result.status],
        ['ops', '/1.0/guests/:name/state', 202],
      );
    } finally {
      ws.close();
      mon.kill('SIGINT');
    }
    // A viewer may not listen to it.
    const refused = d.cli(['--remote', 'view', 'monitor', '--type', 'audit']);
    assert.equal(
      refused.stderr,
      'Error: Permission denied: token watcher is a viewer in project p1; GET /1.0/events needs an admin in project p1\n',
    );
  });

  test('a trusted client certificate authenticates like a token; revoked tokens stop at once', async () => {
    const conf = path.join(d.stateDir, 'cert-cli');
    await mkdir(conf, { mode: 0o700 });
    const made = spawnSync('openssl', [
      'req',
      '-x509',
      '-newkey',
      'ec',
      '-pkeyopt',
      'ec_paramgen_curve:prime256v1',
      '-nodes',
      '-days',
      '30',
      '-subj',
      '/CN=laptop',
      '-keyout',
      path.join(conf, 'client.key'),
      '-out',
      path.join(conf, 'client.crt'),
    ]);
    assert.equal(made.status, 0, String(made.stderr));
    const trusted = d.ok([
      'auth',
      'trust',
      'add',
      path.join(conf, 'client.crt'),
      '--role',
      'viewer',
      '--project',
      'p1',
    ]);
    const certFp = opensslFingerprint(path.join(conf, 'client.crt'));
    assert.equal(trusted, `Trusted certificate laptop (${certFp.slice(0, 12)}): viewer in p1\n`);
    const env = { TRIVISOR_CONFIG_DIR: conf };
    const added = d.cli(['remote', 'add', 'lab', d.url!, '--accept-certificate', '--project', 'p1'], { env });
    assert.equal(
      added.stdout,
      `Remote lab added: ${d.url} (as certificate laptop, viewer in p1)\n`,
      added.stderr,
    );
    assert.match(d.ok(['--remote', 'lab', 'list'], { env }), /g1/);
    const denied = d.cli(['--remote', 'lab', 'launch', 'busybox', 'c1'], { env });
    assert.equal(
      denied.stderr,
      `Error: Permission denied: certificate laptop (${certFp.slice(0, 12)}…) is a viewer in project p1; POST /1.0/guests needs an operator in project p1\n`,
    );
    d.ok(['auth', 'trust', 'remove', certFp.slice(0, 12)]);
    assert.match(d.cli(['--remote', 'lab', 'list'], { env }).stderr, /^Error: Not authorized/);

    d.ok(['auth', 'token', 'revoke', 'watcher']);
    assert.equal(
      d.cli(['--remote', 'view', 'list']).stderr,
      'Error: Not authorized: send a token as "Authorization: Bearer <token>" or a trusted client certificate\n',
    );
    assert.doesNotMatch(d.ok(['auth', 'token', 'list']), /watcher/);
  });

  test('cleanup: the guests of p1 go', () => {
    d.ok(['--project', 'p1', 'delete', '--force', 'g1', 'g2']);
  });
});
