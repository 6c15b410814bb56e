import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';
import { fakeRunner } from '../../../test/fakes/fake-runner.ts';
import { isTrivisorError } from '../../core/errors.ts';
import type { GuestSpec } from '../../core/types.ts';
import { silentLogger } from '../../host/logger.ts';
import { killSignalArg } from './pvm-agent.ts';
import { createPvmDriver } from './pvm-driver.ts';
import { umlArgv } from './uml-command.ts';
import { createMconsoleClient, parseMconsoleOutput } from './uml-mconsole.ts';

const spec = (name: string, config: Record<string, string> = {}): GuestSpec => ({
  name,
  project: 'default',
  model: 'pvm',
  image: 'fp',
  imageAlias: 'busybox',
  config,
  desired: 'Running',
  generation: 1,
  restartRequest: 0,
  stopTimeoutMs: 10_000,
  stopForce: false,
  deleting: false,
  location: 'h',
  createdAt: new Date(0).toISOString(),
});

const codeOf = (work: () => unknown): string | undefined => {
  try {
    work();
  } catch (e) {
    return isTrivisorError(e) ? e.code : 'not a TrivisorError';
  }
  return undefined;
};

describe('umlArgv', () => {
  test('boots the COW over the base disk with mem= in KiB, quiet consoles and the kit', () => {
    const argv = umlArgv({
      kernelPath: '/usr/bin/linux.uml',
      memoryBytes: 96 * 2 ** 20 + 100,
      diskPath: '/s/guests/p1/disk/root.cow',
      backingPath: '/s/images/fp/disk.ext4',
      umlDir: '/s/guests/p1/run',
      umid: 'uml',
      hostname: 'p1',
    });
    assert.equal(argv[0], '/usr/bin/linux.uml');
    assert.ok(argv.includes('mem=98304K'));
    assert.ok(argv.includes('ubd0=/s/guests/p1/disk/root.cow,/s/images/fp/disk.ext4'));
    assert.ok(argv.includes('root=/dev/ubda'));
    assert.ok(argv.includes('umid=uml'));
    assert.ok(argv.includes('uml_dir=/s/guests/p1/run'));
    // Every console and serial line not named is null: UML's default would open xterms.
    for (const word of ['con=null', 'ssl=null', 'con0=fd:5,fd:1', 'ssl1=fd:3,fd:4'])
      assert.ok(argv.includes(word), word);
    for (const word of [
      'init=/.trivisor/init',
      'trivisor.hostname=p1',
      'trivisor.agent=/dev/ttyS1',
      'trivisor.model=pvm',
    ])
      assert.ok(argv.includes(word), word);
  });
});

describe('killSignalArg', () => {
  test("names an image's stop signal by number for busybox kill, glibc's real-time numbering included", () => {
    assert.equal(killSignalArg('SIGUSR2'), '-12');
    assert.equal(killSignalArg('SIGTERM'), '-15');
    assert.equal(killSignalArg('SIGRTMIN+3'), '-37');
    assert.equal(killSignalArg('SIGNOPE'), '-TERM');
  });
});

describe('mconsole output', () => {
  test('OK and ERR replies are parsed, other output is not a reply', () => {
    assert.deepEqual(parseMconsoleOutput('OK Linux p1 6.1.176 #1 x86_64'), {
      ok: true,
      text: 'Linux p1 6.1.176 #1 x86_64',
    });
    assert.deepEqual(parseMconsoleOutput('OK \n'), { ok: true, text: '' });
    assert.deepEqual(parseMconsoleOutput('ERR Unknown command\n'), { ok: false, text: 'Unknown command' });
    assert.equal(parseMconsoleOutput(''), undefined);
  });

  test('the client runs uml_mconsole with the socket path and maps refusals to errors', async () => {
    const runner = fakeRunner((argv) => {
      if (argv[2] === 'version') return { stdout: 'OK Linux p1 6.1.176' };
      if (argv[2] === 'stop') return { code: 1, stdout: 'ERR Already stopped' };
      if (argv[2] === 'go') return { code: 1, stdout: 'ERR Not stopped' };
      return { code: 1, stderr: "Sending command to '' : Invalid argument" };
    });
    const mc = createMconsoleClient('/s/run/uml/mconsole', { runner });
    assert.equal(await mc.version(), 'Linux p1 6.1.176');
    assert.deepEqual(runner.calls[0]?.argv, ['uml_mconsole', '/s/run/uml/mconsole', 'version']);
    await mc.stop(); // already stopped is fine
    await assert.rejects(mc.go(), /refused mconsole command "go": Not stopped/);
    await assert.rejects(mc.halt(), (e: unknown) => isTrivisorError(e) && e.code === 'Unavailable');
  });
});

describe('pvm driver validation', async () => {
  const dir = await mkdtemp('/tmp/trivisor-pvm-unit-');
  after(() => rm(dir, { recursive: true, force: true }));
  const driver = createPvmDriver(
    { runner: fakeRunner(), log: silentLogger(), stateDir: join(dir, 'state'), idmapBase: 100_000 },
    { kernelPath: join(dir, 'missing-linux.uml') },
  );

  test('accepts the defaults and refuses bad names, too little memory, and too many CPUs', () => {
    assert.equal(
      codeOf(() => driver.validate(spec('p1'))),
      undefined,
    );
    assert.equal(
      codeOf(() => driver.validate(spec('p1', { 'limits.memory': '32MiB' }))),
      undefined,
    );
    assert.equal(
      codeOf(() => driver.validate(spec('P_1'))),
      'InvalidArgument',
    );
    assert.equal(
      codeOf(() => driver.validate(spec('p1', { 'limits.memory': '31MiB' }))),
      'InvalidArgument',
    );
    assert.equal(
      codeOf(() => driver.validate(spec('p1', { 'limits.cpu': '100000' }))),
      'InvalidArgument',
    );
    assert.equal(
      codeOf(() => driver.validate(spec('p1', { 'limits.disk': '2GiB' }))),
      undefined,
    );
    const withNic = { ...spec('p1'), devices: { eth0: { type: 'nic', network: 'n1' } } } as GuestSpec;
    assert.equal(
      codeOf(() => driver.validate(withNic)),
      undefined,
    );
  });

  test('a state dir too deep for the mconsole socket path is refused', () => {
    const deep = createPvmDriver({
      runner: fakeRunner(),
      log: silentLogger(),
      stateDir: `/${'d'.repeat(90)}`,
      idmapBase: 100_000,
    });
    assert.equal(
      codeOf(() => deep.validate(spec('p1'))),
      'FailedPrecondition',
    );
  });

  test('a missing kernel makes probe() unsupported and create() fail before anything is made', async () => {
    const probe = await driver.probe();
    assert.equal(probe.supported, false);
    assert.match(probe.warnings.join(' '), /user-mode-linux/);
    const image = {
      record: { fingerprint: 'fp', properties: {} },
      rootfs: dir,
      shiftedRootfs: () => Promise.reject(new Error('unused')),
      baseDisk: () => Promise.reject(new Error('must not be asked')),
    } as unknown as Parameters<typeof driver.create>[1];
    await assert.rejects(
      driver.create(spec('p1'), image),
      (e: unknown) => isTrivisorError(e) && e.code === 'FailedPrecondition',
    );
    assert.equal((await driver.inspect(spec('p1'), undefined)).state, 'absent');
  });
});
