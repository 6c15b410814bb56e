import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { test } from 'node:test';
import { silentLogger } from '../../src/host/logger.ts';
import { hostRunner } from '../../src/host/runner.ts';
import { parseGatewayCidr } from '../../src/network/ipv4.ts';
import { createLinuxNetworkBackend, ownerHash } from '../../src/network/linux-network-backend.ts';
import { makeRunDir, removeRunDir } from '../leftovers.ts';
import { hasPortFilter } from './port-filters.ts';

test('taps for vm and pvm guests: on the bridge, filtered, limited, and gone after unplug and remove', async () => {
  const stateDir = await makeRunDir('tap');
  const backend = createLinuxNetworkBackend({ runner: hostRunner(), log: silentLogger(), stateDir });
  const name = `tnt${process.pid % 10000}`;
  const port = `tvtap${process.pid % 10000}`;
  const link = (dev: string) =>
    spawnSync('ip', ['-json', '-d', 'link', 'show', 'dev', dev], { encoding: 'utf8' });
  try {
    const dnsmasq = await backend.ensure(
      {
        name,
        gateway: parseGatewayCidr('198.18.204.1/24'),
        nat: false,
        isolated: true,
        domain: 'trivisor',
        hosts: [],
      },
      undefined,
    );
    await backend.plugTap(
      {
        port,
        bridge: name,
        mac: '02:00:00:00:00:02',
        ip: '198.18.204.2',
        isolated: true,
        ingressBitsPerSecond: 8_000_000,
        egressBitsPerSecond: 8_000_000,
      },
      { user: 65534 },
    );
    const info = JSON.parse(link(port).stdout)[0] as {
      master?: string;
      linkinfo?: { info_kind?: string; info_data?: { type?: string; user?: string | number } };
    };
    assert.equal(info.master, name);
    assert.equal(info.linkinfo?.info_kind, 'tun');
    assert.match(
      spawnSync('bridge', ['-d', 'link', 'show', 'dev', port], { encoding: 'utf8' }).stdout,
      /isolated on/,
    );
    assert.match(
      spawnSync('tc', ['qdisc', 'show', 'dev', port], { encoding: 'utf8' }).stdout,
      /tbf .*rate 8Mbit/,
    );
    assert.ok(hasPortFilter(port), 'the tap has its anti-spoofing chain');
    await backend.unplug(port);
    assert.ok(!hasPortFilter(port), 'unplug removes it');
    assert.notEqual(link(port).status, 0);
    assert.notEqual(link(`${port}i`).status, 0);
    await backend.remove(name, dnsmasq);
  } finally {
    spawnSync('ip', ['link', 'del', port]);
    spawnSync('ip', ['link', 'del', `${port}i`]);
    spawnSync('nft', ['delete', 'table', 'bridge', `trivisor-ports-${ownerHash(stateDir)}`]);
    await backend.remove(name, undefined).catch(() => {});
    await removeRunDir(stateDir);
  }
  const tables = spawnSync('nft', ['list', 'tables'], { encoding: 'utf8' }).stdout;
  assert.doesNotMatch(tables, new RegExp(`trivisor-(${name}|${port}|ports-${ownerHash(stateDir)})`));
  assert.notEqual(link(name).status, 0);
});
