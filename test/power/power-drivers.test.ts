import assert from 'node:assert/strict';
import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { chmod, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import type { MemberPowerConfig } from '../../src/core/power-keys.ts';
import { silentLogger } from '../../src/host/logger.ts';
import { hostRunner, type ProcessRunner } from '../../src/host/runner.ts';
import { createPowerDriver } from '../../src/power/power-driver.ts';
import { claim, describeThing, makeRunDir, removeRunDir } from '../leftovers.ts';
import { eventually } from '../system/harness.ts';

/*
 * The ipmi and wol power drivers for real (decision 0055), inside test network namespaces on
 * 198.18.x, never outside:
 * - ipmi: OpenIPMI's BMC simulator (Debian's openipmi, ipmi_sim) serves IPMI over LAN in a
 *   namespace; the driver runs the real ipmitool (lanplus, the password from a file) through a
 *   runner that enters that namespace. The simulated chassis is a file its control script writes.
 * - wol: the magic packet the driver sends from one namespace is received by a UDP listener in
 *   another one on the same /24, through the broadcast address.
 */

const log = silentLogger();
let dir: string;
const id = randomBytes(3).toString('hex');
const bmcNs = `trvp-${id}-bmc`;
const wakerNs = `trvp-${id}-waker`;
const sleeperNs = `trvp-${id}-sleeper`;
const subnet = `198.18.${60 + ((randomBytes(1)[0] ?? 0) % 30)}`;
const children: ChildProcess[] = [];

function run(argv: string[]): void {
  const r = spawnSync(argv[0] as string, argv.slice(1), { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`${argv.join(' ')} failed: ${r.stderr.trim()}`);
}

/** The host runner, each command run inside `netns`. */
const inNetns = (netns: string): ProcessRunner => {
  const host = hostRunner();
  return {
    run: (argv, options) => host.run(['nsenter', `--net=/run/netns/${netns}`, ...argv], options),
    spawn: (argv, options) => host.spawn(['nsenter', `--net=/run/netns/${netns}`, ...argv], options),
  };
};

before(async () => {
  dir = await makeRunDir('power-drivers');
  claim(dir, { netns: [bmcNs, wakerNs, sleeperNs] });
  run(['ip', 'netns', 'add', bmcNs]);
  run(['ip', '-n', bmcNs, 'link', 'set', 'lo', 'up']);
  run(['ip', '-n', bmcNs, 'addr', 'add', `${subnet}.3/32`, 'dev', 'lo']);
  run(['ip', 'netns', 'add', wakerNs]);
  run(['ip', 'netns', 'add', sleeperNs]);
  run([
    'ip',
    '-n',
    wakerNs,
    'link',
    'add',
    'eth0',
    'type',
    'veth',
    'peer',
    'name',
    'eth0',
    'netns',
    sleeperNs,
  ]);
  run(['ip', '-n', wakerNs, 'addr', 'add', `${subnet}.1/24`, 'dev', 'eth0']);
  run(['ip', '-n', sleeperNs, 'addr', 'add', `${subnet}.2/24`, 'dev', 'eth0']);
  for (const ns of [wakerNs, sleeperNs]) {
    run(['ip', '-n', ns, 'link', 'set', 'lo', 'up']);
    run(['ip', '-n', ns, 'link', 'set', 'eth0', 'up']);
  }
});

after(async () => {
  for (const c of children) c.kill('SIGKILL');
  if (dir) {
    const report = await removeRunDir(dir);
    assert.deepEqual(report.left.map(describeThing), []);
  }
});

describe('power drivers against real endpoints in test namespaces', () => {
  test('ipmi: ipmitool powers the simulated BMC on and off and reads its status; a wrong password is an error', async () => {
    const chassis = path.join(dir, 'chassis');
    const script = path.join(dir, 'chassis-control');
    // ipmi_sim runs it as `get power` (prints power:0|1) and `set power 0|1`.
    await writeFile(
      script,
      `#!/bin/sh\ncase "$1" in\n  get) echo "power:$(cat ${chassis} 2>/dev/null || echo 0)" ;;\n  set) [ "$2" = power ] && echo "$3" > ${chassis} ;;\n  *) exit 1 ;;\nesac\n`,
    );
    await chmod(script, 0o755);
    await writeFile(
      path.join(dir, 'lan.conf'),
      [
        'name "trivisor-test"',
        'set_working_mc 0x20',
        '  startlan 1',
        `    addr ${subnet}.3 623`,
        '    priv_limit admin',
        '    allowed_auths_callback none md2 md5 straight',
        '    allowed_auths_user none md2 md5 straight',
        '    allowed_auths_operator none md2 md5 straight',
        '    allowed_auths_admin none md2 md5 straight',
        '    guid a123456789abcdefa123456789abcdef',
        '  endlan',
        `  chassis_control "${script}"`,
        '  user 2 true "admin" "s3cret-bmc" admin 10 none md2 md5 straight',
        '',
      ].join('\n'),
    );
    await writeFile(
      path.join(dir, 'emu.cmd'),
      'mc_setbmc 0x20\nmc_add 0x20 0 no-device-sdrs 0x23 9 8 0x9f 0x1291 0xf02 persist_sdr\nmc_enable 0x20\n',
    );
    const passwordFile = path.join(dir, 'bmc-password');
    await writeFile(passwordFile, 's3cret-bmc', { mode: 0o600 });
    const sim = spawn(
      'nsenter',
      [
        `--net=/run/netns/${bmcNs}`,
        'ipmi_sim',
        '-c',
        path.join(dir, 'lan.conf'),
        '-f',
        path.join(dir, 'emu.cmd'),
        '-s',
        dir,
        '-n',
      ],
      { stdio: 'ignore' },
    );
    children.push(sim);
    const config: MemberPowerConfig = {
      driver: 'ipmi',
      bootDelayMs: 60_000,
      ipmiHost: `${subnet}.3`,
      ipmiUser: 'admin',
      ipmiPasswordFile: passwordFile,
    };
    const runner = inNetns(bmcNs);
    const bmc = createPowerDriver('m9', config, { runner, log });
    await eventually(
      'the BMC answers',
      async () => (await bmc.status().catch(() => 'down')) === 'off',
      20_000,
    );
    await bmc.powerOn();
    assert.equal(await bmc.status(), 'on');
    assert.equal(spawnSync('cat', [chassis], { encoding: 'utf8' }).stdout.trim(), '1');
    await bmc.powerOff();
    assert.equal(await bmc.status(), 'off');
    assert.equal(spawnSync('cat', [chassis], { encoding: 'utf8' }).stdout.trim(), '0');
    const wrongFile = path.join(dir, 'wrong-password');
    await writeFile(wrongFile, 'not-it', { mode: 0o600 });
    const wrong = createPowerDriver('m9', { ...config, ipmiPasswordFile: wrongFile }, { runner, log });
    await assert.rejects(wrong.powerOn(), /Unable to establish IPMI v2 \/ RMCP\+ session/);
    assert.equal(await bmc.status(), 'off', 'a refused request changed nothing');
  });

  test('wol: the magic packet for the MAC reaches a listener in another namespace through the broadcast address', async () => {
    // A listener in the sleeper's namespace prints what reaches UDP port 9 in hex.
    const listener = spawn(
      'nsenter',
      [
        `--net=/run/netns/${sleeperNs}`,
        process.execPath,
        '-e',
        "const s=require('node:dgram').createSocket('udp4');s.on('message',(m,r)=>{console.log(r.address+' '+m.toString('hex'));process.exit(0)});s.bind(9,()=>console.log('ready'))",
      ],
      { stdio: ['ignore', 'pipe', 'inherit'] },
    );
    children.push(listener);
    let out = '';
    listener.stdout?.on('data', (d: Buffer) => {
      out += d.toString();
    });
    await eventually('the listener bound', () => out.includes('ready'), 20_000);
    // The sender runs in the waker's namespace: a child that calls the driver's own dgram sender.
    const sender = spawnSync(
      'nsenter',
      [
        `--net=/run/netns/${wakerNs}`,
        process.execPath,
        '--input-type=module',
        '-e',
        `import { createPowerDriver } from ${JSON.stringify(path.resolve('src/power/power-driver.ts'))};
         import { hostRunner } from ${JSON.stringify(path.resolve('src/host/runner.ts'))};
         import { silentLogger } from ${JSON.stringify(path.resolve('src/host/logger.ts'))};
         const d = createPowerDriver('m9', { driver: 'wol', bootDelayMs: 1000, wolMac: '52:54:00:12:34:56', wolBroadcast: '${subnet}.255', off: 'true' }, { runner: hostRunner(), log: silentLogger() });
         await d.powerOn();`,
      ],
      { encoding: 'utf8', timeout: 30_000 },
    );
    assert.equal(sender.status, 0, sender.stderr);
    await eventually('the packet received', () => out.split('\n').length > 2, 20_000);
    const [from, hex] = (out.split('\n')[1] ?? '').split(' ');
    assert.equal(from, `${subnet}.1`);
    assert.equal(hex, `${'ff'.repeat(6)}${'525400123456'.repeat(16)}`);
  });
});
