import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { chmodSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, describe, test } from 'node:test';
import { type Daemon, startDaemon } from '../system/harness.ts';

/*
 * trivisor.service as systemd takes it, without a running systemd (decision 0030): the unit
 * setup/start installs passes `systemd-analyze verify`; its readiness check waits for the
 * daemon's socket and fails fast when the daemon is gone.
 */

const root = path.resolve(import.meta.dirname, '../..');
const dirs: string[] = [];
let daemon: Daemon | undefined;
after(async () => {
  await daemon?.destroy();
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});
const tempDir = () => {
  const d = mkdtempSync(path.join(tmpdir(), 'trivisor-systemd-'));
  dirs.push(d);
  return d;
};

const verify = (unit: string) =>
  spawnSync('systemd-analyze', ['verify', '--man=no', unit], { encoding: 'utf8' });

describe('trivisor.service', () => {
  test('setup installs the unit with the checkout’s paths, enables and restarts it, and systemd-analyze verify accepts it', () => {
    const dir = tempDir();
    const units = path.join(dir, 'units');
    // systemctl as a recorder: this test runs without systemd, as CI does.
    const bin = path.join(dir, 'bin');
    execFileSync('mkdir', ['-p', bin]);
    writeFileSync(path.join(bin, 'systemctl'), `#!/bin/sh\necho "$*" >>${dir}/systemctl.log\n`);
    chmodSync(path.join(bin, 'systemctl'), 0o755);
    execFileSync(
      'bash',
      ['-c', `source ${root}/setup/common.sh && install_systemd_unit /srv/trivisor-state`],
      {
        env: {
          PATH: `${bin}:${process.env.PATH}`,
          SYSTEMD_UNIT_DIR: units,
          TRIVISOR_NODE: process.execPath,
        },
      },
    );
    const unit = readFileSync(path.join(units, 'trivisor.service'), 'utf8');
    assert.match(unit, new RegExp(`^ExecStart=${root}/bin/trivisor daemon$`, 'm'));
    assert.match(
      unit,
      new RegExp(`^ExecStartPost=${root}/bin/trivisor admin wait-ready .*--pid \\$MAINPID$`, 'm'),
    );
    assert.match(
      unit,
      new RegExp(`^Environment=TRIVISOR_DIR=/srv/trivisor-state TRIVISOR_NODE=${process.execPath}$`, 'm'),
    );
    assert.match(unit, /^KillMode=process$/m);
    assert.match(unit, /^Restart=on-failure$/m);
    assert.match(unit, /^After=network-online.target$/m);
    assert.equal(
      readFileSync(path.join(dir, 'systemctl.log'), 'utf8'),
      'daemon-reload\nenable trivisor.service\nrestart trivisor.service\n',
    );
    const r = verify(path.join(units, 'trivisor.service'));
    assert.equal(`${r.stdout}${r.stderr}`, '');
    assert.equal(r.status, 0);
  });

  test('systemd-analyze verify does check: a unit with a bad setting fails it', () => {
    const dir = tempDir();
    const unit = readFileSync(path.join(root, 'setup/systemd/trivisor.service'), 'utf8')
      .replaceAll('/usr/bin/trivisor', `${root}/bin/trivisor`)
      .replace('KillMode=process', 'KillMode=sometimes');
    writeFileSync(path.join(dir, 'trivisor.service'), unit);
    const r = verify(path.join(dir, 'trivisor.service'));
    assert.match(`${r.stdout}${r.stderr}`, /trivisor\.service:\d+: Failed to parse kill mode specification/);
  });

  test('admin wait-ready: returns once the daemon answers, gives up after --timeout, fails at once when --pid is gone', async () => {
    daemon = await startDaemon();
    const started = Date.now();
    daemon.ok(['admin', 'wait-ready', '--timeout', '10', '--pid', String(daemon.process.pid)]);
    assert.ok(Date.now() - started < 10_000);

    const empty = tempDir();
    const cli = (args: string[]) =>
      spawnSync(path.join(root, 'bin/trivisor'), args, {
        encoding: 'utf8',
        env: { ...process.env, TRIVISOR_DIR: empty },
      });
    const timedOut = cli(['admin', 'wait-ready', '--timeout', '1']);
    assert.equal(timedOut.status, 1);
    assert.equal(timedOut.stderr, `Error: The daemon did not answer on ${empty}/trivisor.sock within 1 s\n`);
    const at = Date.now();
    const dead = cli(['admin', 'wait-ready', '--timeout', '60', '--pid', '999999999']);
    assert.equal(dead.status, 1);
    assert.match(dead.stderr, /^Error: The daemon \(pid 999999999\) exited before it was ready/);
    assert.ok(Date.now() - at < 10_000, 'a dead daemon is not waited for');
  });
});
