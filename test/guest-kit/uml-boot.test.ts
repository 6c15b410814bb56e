import assert from 'node:assert/strict';
import { type ChildProcess, spawn } from 'node:child_process';
import { openSync } from 'node:fs';
import { access, constants } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { ReadStream } from 'node:tty';
import { createQgaClient, type QgaClient } from '../../src/host/qga-client.ts';
import { hostRunner } from '../../src/host/runner.ts';
import { buildBaseDisk } from '../../src/images/base-disk.ts';
import { buildBusyboxRootfs } from '../../src/images/busybox-image.ts';
import { KIT_INIT_MARKER, kitKernelArgs } from '../../src/images/guest-kit.ts';
import { makeRunDir, removeRunDir } from '../leftovers.ts';

const runner = hostRunner();
const UML = '/usr/bin/linux.uml';
const umlPresent = await access(UML).then(
  () => true,
  () => false,
);

async function waitFor<T>(check: () => T | undefined, timeoutMs: number, what: string): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = check();
    if (value !== undefined) return value;
    if (Date.now() > deadline) throw new Error(`${what} did not happen within ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

/**
 * The kit in a real kernel: a User-Mode Linux boot of a busybox base disk on a
 * device larger than the disk, with the agent on UML serial line 1 (a pty).
 */
describe('guest kit in a real kernel (User-Mode Linux)', {
  skip: process.getuid?.() !== 0 || !umlPresent,
}, () => {
  let dir = '';
  let uml: ChildProcess | undefined;
  let client: QgaClient | undefined;
  let output = '';

  before(async () => {
    dir = await makeRunDir('kit-uml');
    const tree = join(dir, 'rootfs');
    await buildBusyboxRootfs(tree, { runner });
    const disk = join(dir, 'disk.ext4');
    await buildBaseDisk(tree, disk, { runner, initArgv: ['/sbin/init'] });
    const device = join(dir, 'device.img');
    await runner.run(['cp', '--sparse=always', disk, device]);
    await runner.run(['chmod', '0644', device]);
    await runner.run(['truncate', '-s', '1G', device]);
    uml = spawn(
      UML,
      [
        'mem=96M',
        `ubd0=${device}`,
        'root=/dev/ubda',
        'con0=fd:0,fd:1',
        'con=null',
        'ssl=null',
        'ssl1=pts',
        `uml_dir=${dir}`,
        'umid=kit-test',
        ...kitKernelArgs({ hostname: 'kit-uml', model: 'pvm' }),
      ],
      // Its own process group, so cleanup can end every host process of this UML and nothing else.
      { stdio: ['ignore', 'pipe', 'pipe'], detached: true },
    );
    uml.stdout?.on('data', (d: Buffer) => {
      output += d.toString('latin1');
    });
    uml.stderr?.on('data', (d: Buffer) => {
      output += d.toString('latin1');
    });
  });

  after(async () => {
    client?.close();
    if (uml?.pid !== undefined && uml.exitCode === null && uml.signalCode === null) {
      const gone = new Promise((r) => uml?.once('exit', r));
      try {
        process.kill(-uml.pid, 'SIGKILL');
      } catch {}
      await gone;
    }
    if (dir) await removeRunDir(dir);
  });

  test('boots through the kit: root grown, hostname set, agent answering on the serial line', async () => {
    await waitFor(() => (output.includes(KIT_INIT_MARKER) ? true : undefined), 60_000, 'the kit init marker');
    assert.match(output, /EXT4-fs \(ubda\): resized filesystem/);
    const pty = await waitFor(
      () => /Serial line 1 assigned device '(\/dev\/pts\/\d+)'/.exec(output)?.[1],
      30_000,
      'the serial line pty',
    );
    // Open first: UML drops a pts whose last opener hangs up, which stty's own open and close could be.
    const fd = openSync(pty, constants.O_RDWR | constants.O_NOCTTY | constants.O_NONBLOCK);
    await runner.run(['stty', '-F', pty, 'raw', '-echo']);
    client = createQgaClient(new ReadStream(fd), { requestTimeoutMs: 20_000 });
    await client.waitReady({ timeoutMs: 60_000 });

    const r = await client.exec([
      '/bin/sh',
      '-c',
      'hostname; cat /etc/hostname; df -k / | tail -1; cat /proc/1/cmdline',
    ]);
    assert.equal(r.exitCode, 0, r.stderr.toString());
    const [hostname, etcHostname, df, pid1] = r.stdout.toString().split('\n');
    assert.equal(hostname, 'kit-uml');
    assert.equal(etcHostname, 'kit-uml');
    const blocks = Number(df?.trim().split(/\s+/)[1]);
    assert.ok(blocks > 900 * 1024, `the root file system fills its 1 GiB device: ${df}`);
    assert.equal(pid1?.replace(/\0/g, ''), 'init', "the image's busybox init is pid 1");

    await client.writeFile('/root/pushed', 'kit file\n');
    assert.equal((await client.readFile('/root/pushed')).toString(), 'kit file\n');
  });

  test("the image's stop signal to pid 1 through the agent powers the guest off", async () => {
    assert.ok(client, 'the boot test ran');
    const exited = new Promise<number | null>((resolve) => uml?.once('exit', (code) => resolve(code)));
    // busybox init powers off on SIGUSR2; the guest may be gone before the agent could report the kill's exit.
    await client.execStart(['/.trivisor/busybox', 'kill', '-USR2', '1']);
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise((r) => {
      timer = setTimeout(() => r('timeout'), 60_000);
    });
    const code = await Promise.race([exited, timeout]);
    clearTimeout(timer);
    assert.notEqual(code, 'timeout', `UML did not power off: ${output.slice(-500)}`);
  });
});
