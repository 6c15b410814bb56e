import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { after, before, describe, test } from 'node:test';
import type { GuestSpec, ProcessIdentity } from '../../src/core/types.ts';
import { ownRangeBase } from '../../src/drivers/ct/id-ranges.ts';
import { readProcessOwner } from '../../src/host/proc-stat.ts';
import { type CtFixture, makeCtFixture, TEST_IDMAP_BASE } from '../drivers/ct-fixture.ts';
import { execIn } from '../drivers/exec-helpers.ts';
import { testGuestSpec } from '../drivers/guest-spec.ts';

describe('ct guests are isolated from the host and from each other', () => {
  let fx: CtFixture;
  let spec: GuestSpec;
  let init: ProcessIdentity;
  const sh = (script: string) => execIn(fx.driver, spec, ['/bin/sh', '-c', script]);

  before(async () => {
    fx = await makeCtFixture();
    spec = testGuestSpec('iso1', 'ct');
    await fx.driver.create(spec, fx.image);
    init = await fx.driver.start(spec, fx.image);
  });

  after(async () => {
    await fx.driver.stop(spec, { timeoutMs: 0, force: true }).catch(() => {});
    await fx.driver.delete(spec).catch(() => {});
    await fx.cleanup();
  });

  test('the guest sees only its own processes, with its init as pid 1', async () => {
    const r = await sh('ps -o pid,comm');
    assert.equal(r.code, 0, r.stderr);
    const rows = r.stdout.trim().split('\n').slice(1);
    assert.ok(rows.length < 10, `the guest sees ${rows.length} processes:\n${r.stdout}`);
    assert.match(rows[0] ?? '', /^\s*1\s+init/);
    assert.ok(!r.stdout.includes('node'), 'the host daemon is invisible');
  });

  test('the guest has its own hostname', async () => {
    assert.equal((await sh('hostname')).stdout.trim(), 'iso1');
  });

  test('the guest has its own network namespace with only a loopback that is up', async () => {
    const r = await sh('ls /sys/class/net; ip -o link show lo');
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout.split('\n')[0], 'lo');
    assert.match(r.stdout, /lo: <LOOPBACK,UP/);
    assert.equal((await sh('ping -c 1 -W 1 127.0.0.1 >/dev/null && echo ok')).stdout.trim(), 'ok');
  });

  test('the guest cannot mount file systems', async () => {
    const r = await sh('mkdir -p /mnt/t && mount -t tmpfs tmpfs /mnt/t');
    assert.notEqual(r.code, 0, 'mount must fail');
    assert.equal((await sh('grep -c " /mnt/t " /proc/mounts')).stdout.trim(), '0');
  });

  test('the guest cannot reach host block devices', async () => {
    const ls = await sh('ls /dev');
    for (const dev of ['sda', 'vda', 'nvme0n1', 'mem', 'kmsg'])
      assert.ok(!ls.stdout.split('\n').includes(dev), `/dev/${dev}`);
    const r = await sh('mknod /tmp/disk b 8 0 && head -c 1 /tmp/disk >/dev/null');
    assert.notEqual(r.code, 0, 'making or opening a block device must fail');
  });

  test('the guest runs under seccomp with no new privileges and without CAP_SYS_ADMIN', async () => {
    const status = (await sh('cat /proc/self/status')).stdout;
    assert.match(status, /^Seccomp:\s+2$/m);
    assert.match(status, /^NoNewPrivs:\s+1$/m);
    const capEff = BigInt(`0x${/^CapEff:\s+([0-9a-f]+)$/m.exec(status)?.[1] ?? '0'}`);
    const CAP_SYS_ADMIN = 21n;
    assert.equal((capEff >> CAP_SYS_ADMIN) & 1n, 0n);
  });

  test('root in the guest is not root on the host, but the first id of a range of its own', async () => {
    assert.equal((await sh('id -u')).stdout.trim(), '0');
    const own = ownRangeBase(TEST_IDMAP_BASE, 0);
    assert.deepEqual(await readProcessOwner(init.pid), { uid: own, gid: own });
    const uidMap = await readFile(`/proc/${init.pid}/uid_map`, 'utf8');
    assert.match(uidMap.trim(), new RegExp(`^0\\s+${own}\\s+65536$`));
  });

  test('files the guest writes land in its own upper layer, not in the shared image', async () => {
    assert.equal((await sh('echo private > /etc/guest-file && cat /etc/guest-file')).stdout, 'private\n');
    await assert.rejects(readFile(`${fx.image.rootfs}/etc/guest-file`), { code: 'ENOENT' });
    const upper = await readFile(`${fx.stateDir}/guests/iso1/upper/etc/guest-file`, 'utf8');
    assert.equal(upper, 'private\n');
  });
});

describe('privileged ct guests (no user namespace) are still confined', () => {
  let fx: CtFixture;
  const spec = testGuestSpec('iso-priv', 'ct', { 'security.privileged': 'true' });
  let init: ProcessIdentity;
  const sh = (script: string) => execIn(fx.driver, spec, ['/bin/sh', '-c', script]);

  before(async () => {
    fx = await makeCtFixture();
    await fx.driver.create(spec, fx.image);
    init = await fx.driver.start(spec, fx.image);
  });

  after(async () => {
    await fx.driver.stop(spec, { timeoutMs: 0, force: true }).catch(() => {});
    await fx.driver.delete(spec).catch(() => {});
    await fx.cleanup();
  });

  test('root in the guest is host root, as privileged means', async () => {
    assert.deepEqual(await readProcessOwner(init.pid), { uid: 0, gid: 0 });
  });

  test('the guest can neither mount, nor use block devices, nor write kernel knobs', async () => {
    assert.notEqual((await sh('mkdir -p /mnt/t && mount -t tmpfs tmpfs /mnt/t')).code, 0);
    assert.notEqual((await sh('mknod /tmp/disk b 8 0 && head -c 1 /tmp/disk >/dev/null')).code, 0);
    assert.notEqual((await sh('echo 1 > /proc/sys/vm/drop_caches')).code, 0);
    assert.notEqual((await sh('echo h > /proc/sysrq-trigger')).code, 0);
  });
});
