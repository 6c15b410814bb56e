import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { after, before, describe, test } from 'node:test';
import { alive, type Daemon, eventually, gone, startDaemon } from './harness.ts';

interface GuestJson {
  name: string;
  model: string;
  status: string;
  image: string;
  config: Record<string, string>;
  state: {
    pid: number | null;
    usage: { memoryBytes: number; cpuSeconds: number; processes: number; sampledAt?: string } | null;
  };
}

describe('ct guests end to end through the daemon and CLI', () => {
  let d: Daemon;
  before(async () => {
    d = await startDaemon();
  });
  after(async () => {
    await d?.destroy();
  });

  const info = (name: string) => JSON.parse(d.ok(['info', name, '--format', 'json'])) as GuestJson;

  test('launch busybox web1, then exec hostname prints web1', () => {
    d.ok(['launch', 'busybox', 'web1']);
    assert.equal(d.ok(['exec', 'web1', '--', 'hostname']).trim(), 'web1');
  });

  test('list and info in JSON carry name, model, status, image, config and usage with the time it was read', () => {
    const listedAt = Date.now();
    const list = JSON.parse(d.ok(['list', '--format', 'json'])) as GuestJson[];
    const g = list.find((x) => x.name === 'web1');
    assert.ok(g, 'web1 listed');
    assert.equal(g.model, 'ct');
    assert.equal(g.status, 'Running');
    assert.match(g.image, /^[0-9a-f]{64}$/);
    assert.deepEqual(g.config, {});
    // The list's usage is the sampler's last sample (every 10 s) or a live read (decision 0099).
    assert.ok(g.state.usage && g.state.usage.memoryBytes > 0, 'the list carries usage');
    const listedUsageAt = Date.parse(g.state.usage.sampledAt ?? '');
    assert.ok(listedAt - listedUsageAt < 60_000, `list usage read at ${g.state.usage.sampledAt}`);
    const infoAt = Date.now();
    const i = info('web1');
    assert.ok(i.state.pid && alive(i.state.pid), 'pid is a live host process');
    assert.ok(i.state.usage && i.state.usage.memoryBytes > 0, 'memory usage read from the cgroup');
    assert.ok(i.state.usage.processes >= 1);
    // info reads live: after the request was sent, so never older than the list's figure.
    const infoUsageAt = Date.parse(i.state.usage.sampledAt ?? '');
    assert.ok(
      infoUsageAt >= infoAt - 1000,
      `info usage read at ${i.state.usage.sampledAt}, asked at ${infoAt}`,
    );
    assert.ok(infoUsageAt >= listedUsageAt);
    const table = d.ok(['list']);
    assert.match(table, /NAME/);
    assert.match(table, /web1\s+ct\s+Running/);
    const yaml = d.ok(['list', '--format', 'yaml']);
    assert.match(yaml, /name: web1/);
  });

  test('exec passes stdout, stderr, stdin and the exit code through', () => {
    const r = d.cli(['exec', 'web1', '--', 'sh', '-c', 'echo out; echo err >&2; exit 7']);
    assert.equal(r.code, 7);
    assert.equal(r.stdout, 'out\n');
    assert.equal(r.stderr, 'err\n');
    assert.equal(d.ok(['exec', 'web1', '--', 'cat'], { input: 'piped through\n' }), 'piped through\n');
    assert.equal(d.ok(['exec', 'web1', '--env', 'GREETING=hi', '--', 'sh', '-c', 'echo $GREETING']), 'hi\n');
    const missing = d.cli(['exec', 'web1', '--', '/no/such/command']);
    assert.notEqual(missing.code, 0);
  });

  test('exec -t runs the command on a terminal', () => {
    const r = d.cli(['exec', '-t', 'web1', '--', 'sh', '-c', 'test -t 0 && test -t 1 && echo tty; exit 3']);
    assert.equal(r.code, 3, r.stderr);
    assert.match(r.stdout, /tty/);
  });

  test('a cancelled exec ends its command and what it started in the guest, with and without a terminal', async () => {
    // Before the fix the cancel SIGKILLed `runc exec` only, and all of this ran on in the guest.
    for (const interactive of [false, true]) {
      const tag = interactive ? 'cancel-tty' : 'cancel-pipe';
      const seconds = interactive ? 302 : 301;
      // A background child (reparented to the guest's init once the shell dies) and a loop that
      // forks, deaf to the hangup that the terminal's end would send (the old kill relied on it).
      const script = `trap "" HUP; sleep ${seconds} & while :; do echo x >> /tmp/${tag}; sleep 1; done`;
      const r = await d.api('POST', '/1.0/guests/web1/exec', {
        command: ['sh', '-c', script],
        interactive,
        'record-output': true,
      });
      assert.equal(r.status, 202, r.text);
      const id = (r.body.metadata as { id: string }).id;
      const ps = () => d.ok(['exec', 'web1', '--', 'ps']);
      const running = () => ps().includes(`sleep ${seconds}`) && ps().includes(`/tmp/${tag}`);
      await eventually(`${tag}: the command running in web1`, running, 30_000);
      assert.equal((await d.api('DELETE', `/1.0/operations/${id}`)).status, 200);
      await eventually(
        `${tag}: the operation Cancelled`,
        async () =>
          ((await d.api('GET', `/1.0/operations/${id}`)).body.metadata as { status: string }).status ===
          'Cancelled',
        30_000,
      );
      await eventually(
        `${tag}: the command and its children gone from web1`,
        () => !ps().includes(`sleep ${seconds}`) && !ps().includes(`/tmp/${tag}`),
        5_000,
      ).catch((e: Error) => assert.fail(`${e.message}; ps in web1:\n${ps()}`));
      const size = () => d.ok(['exec', 'web1', '--', 'wc', '-c', `/tmp/${tag}`]);
      const before = size();
      await new Promise((resolve) => setTimeout(resolve, 1500));
      assert.equal(size(), before, `${tag}: nothing writes the marker any more`);
    }
  });

  test('freeze stops the guest processes from running and unfreeze resumes them', () => {
    // The daemon writes the freezer itself (no runc pause/resume): runc must report what it did.
    const runcStatus = () =>
      (
        JSON.parse(
          execFileSync('runc', ['--root', `${d.stateDir}/runc`, 'state', 'web1'], { encoding: 'utf8' }),
        ) as { status: string }
      ).status;
    d.ok(['freeze', 'web1']);
    assert.equal(info('web1').status, 'Frozen');
    assert.equal(runcStatus(), 'paused', 'runc state says paused');
    const cg = readFileSync(`/proc/${info('web1').state.pid}/status`, 'utf8');
    assert.match(cg, /State:\s+[SD]/, 'frozen processes do not run');
    assert.notEqual(d.cli(['exec', 'web1', '--', 'true']).code, 0, 'exec is refused while frozen');
    d.ok(['unfreeze', 'web1']);
    assert.equal(info('web1').status, 'Running');
    assert.equal(runcStatus(), 'running', 'runc state says running again');
    assert.equal(d.ok(['exec', 'web1', '--', 'echo', 'back']), 'back\n');
  });

  test('stop powers the guest off, start boots it again with a new init, restart replaces init', async () => {
    const pid1 = info('web1').state.pid!;
    d.ok(['stop', 'web1', '--timeout', '20']);
    assert.equal(info('web1').status, 'Stopped');
    assert.equal(info('web1').state.pid, null);
    await eventually('old init gone', () => gone(pid1));
    d.ok(['start', 'web1']);
    const pid2 = info('web1').state.pid!;
    assert.ok(alive(pid2));
    d.ok(['restart', 'web1']);
    const pid3 = info('web1').state.pid!;
    assert.notEqual(pid3, pid2);
    assert.ok(alive(pid3));
    assert.equal(d.ok(['exec', 'web1', '--', 'hostname']).trim(), 'web1');
  });

  test('files written in a guest survive a restart and stay its own', () => {
    d.ok(['launch', 'busybox', 'web2']);
    d.ok(['exec', 'web1', '--', 'sh', '-c', 'echo mine > /root/note']);
    d.ok(['restart', 'web1']);
    assert.equal(d.ok(['exec', 'web1', '--', 'cat', '/root/note']), 'mine\n');
    assert.notEqual(
      d.cli(['exec', 'web2', '--', 'cat', '/root/note']).code,
      0,
      'web2 does not see web1 files',
    );
  });

  test('config set changes limits live (a first memory limit at the restart); config get/show/unset work', () => {
    const inGuest = (file: string) =>
      Number(d.ok(['exec', 'web1', '--', 'cat', `/sys/fs/cgroup/${file}`]).trim());
    // web1 has no memory limit: it shares its daemon's memory cgroup (decision 0093), so its first
    // limit waits for the restart, and says so; the process limit is its own cgroup's, set live.
    const set = d.cli(['config', 'set', 'web1', 'limits.memory=96MiB', 'limits.processes=200']);
    assert.equal(set.code, 0, set.stderr);
    assert.match(set.stderr, /Takes effect at the next restart: limits\.memory$/m);
    assert.equal(d.ok(['config', 'get', 'web1', 'limits.memory']).trim(), '96MiB');
    assert.equal(inGuest('pids/pids.max'), 200, 'the process limit is in force at once');
    d.ok(['restart', 'web1']);
    assert.equal(
      inGuest('memory/memory.limit_in_bytes'),
      96 * 2 ** 20,
      'the limit is in force after the restart',
    );
    // Now in a memory cgroup of its own: a change applies live.
    const again = d.cli(['config', 'set', 'web1', 'limits.memory=128MiB']);
    assert.equal(again.code, 0, again.stderr);
    assert.doesNotMatch(again.stderr, /next restart/);
    assert.equal(
      inGuest('memory/memory.limit_in_bytes'),
      128 * 2 ** 20,
      'the new limit is in force inside the guest',
    );
    assert.match(d.ok(['config', 'show', 'web1']), /limits\.processes: "?200"?/);
    d.ok(['config', 'unset', 'web1', 'limits.processes']);
    assert.equal(info('web1').config['limits.processes'], undefined);
  });

  test('console --show-log shows what init printed', () => {
    d.ok(['launch', 'busybox', 'talker']);
    d.ok(['stop', 'talker']);
    // busybox init announces its shutdown on its console (stdout).
    assert.match(d.ok(['console', 'talker', '--show-log']), /The system is going down NOW!/);
    d.ok(['start', 'talker']);
  });

  test('delete is refused while running, works with --force, and leaves nothing behind', () => {
    const r = d.cli(['delete', 'web2']);
    assert.equal(r.code, 1);
    assert.equal(r.stderr.trim().split('\n').length, 1, 'one line');
    assert.match(r.stderr, /^Error: .*(running|Running)/);
    const pid = info('web2').state.pid!;
    d.ok(['delete', '--force', 'web2', 'talker']);
    assert.ok(gone(pid), 'init is gone (at most a zombie waiting for its reaper)');
    assert.equal(d.cli(['info', 'web2']).code, 1);
    assert.ok(!existsSync(`${d.stateDir}/guests/web2`), 'guest directory removed');
    const mounts = readFileSync('/proc/mounts', 'utf8');
    assert.ok(!mounts.includes(`${d.stateDir}/guests/web2`), 'overlay unmounted');
  });
});
