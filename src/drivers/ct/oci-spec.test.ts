import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import type { GuestSpec } from '../../core/types.ts';
import { buildOciSpec, DENIED_SYSCALLS, type OciSpecOptions } from './oci-spec.ts';

const guest = (config: Record<string, string> = {}): GuestSpec => ({
  name: 'web1',
  project: 'default',
  model: 'ct',
  image: 'abc',
  imageAlias: 'busybox',
  config,
  desired: 'Running',
  generation: 1,
  restartRequest: 0,
  stopTimeoutMs: 10_000,
  stopForce: false,
  deleting: false,
  location: 'h1',
  createdAt: '2026-01-01T00:00:00Z',
});

const options = (over: Partial<OciSpecOptions> = {}): OciSpecOptions => ({
  rootfsPath: '/var/lib/trivisor/guests/web1/rootfs',
  init: ['/sbin/init'],
  idmapBase: 1_000_000,
  cgroupsPath: '/trivisor-12345678/web1',
  hostHardLimits: { RLIMIT_NOFILE: 20_000, RLIMIT_NPROC: 96_365 },
  stopSignal: 'SIGUSR2',
  ...over,
});

describe('buildOciSpec', () => {
  test('a guest with NICs gets CAP_NET_ADMIN and TRIVISOR_NICS for its DHCP client; one without gets neither', () => {
    const plain = buildOciSpec(guest(), options());
    assert.ok(!plain.process.capabilities.bounding.includes('CAP_NET_ADMIN'));
    assert.ok(!plain.process.env.some((e) => e.startsWith('TRIVISOR_NICS=')));
    const withNics = buildOciSpec(
      { ...guest(), devices: { eth0: { type: 'nic', network: 'n0' }, eth1: { type: 'nic', network: 'n1' } } },
      options(),
    );
    assert.ok(withNics.process.capabilities.bounding.includes('CAP_NET_ADMIN'));
    assert.ok(withNics.process.env.includes('TRIVISOR_NICS=eth0 eth1'));
  });

  test('maps root to idmapBase in a user namespace by default', () => {
    const oci = buildOciSpec(guest(), options());
    assert.ok(oci.linux.namespaces.some((n) => n.type === 'user'));
    assert.deepEqual(oci.linux.uidMappings, [{ containerID: 0, hostID: 1_000_000, size: 65536 }]);
    assert.deepEqual(oci.linux.gidMappings, [{ containerID: 0, hostID: 1_000_000, size: 65536 }]);
  });

  test('has no user namespace and no id mappings when privileged', () => {
    const oci = buildOciSpec(guest({ 'security.privileged': 'true' }), options({ idmapBase: undefined }));
    assert.ok(!oci.linux.namespaces.some((n) => n.type === 'user'));
    assert.equal(oci.linux.uidMappings, undefined);
    assert.equal(oci.linux.gidMappings, undefined);
  });

  test('isolates pid, mount, uts, ipc and network and names the host after the guest', () => {
    const oci = buildOciSpec(guest(), options());
    const types = oci.linux.namespaces.map((n) => n.type).sort();
    assert.deepEqual(types, ['ipc', 'mount', 'network', 'pid', 'user', 'uts']);
    assert.equal(oci.hostname, 'web1');
    assert.equal(oci.root.path, '/var/lib/trivisor/guests/web1/rootfs');
    assert.deepEqual(oci.process.args, ['/sbin/init']);
    assert.equal(oci.linux.cgroupsPath, '/trivisor-12345678/web1');
    assert.equal(oci.annotations['org.trivisor.stop-signal'], 'SIGUSR2');
  });

  test('records a guest that shares the memory cgroup, so that a limit set while it runs waits for a start', () => {
    assert.equal(buildOciSpec(guest(), options()).annotations['org.trivisor.memory-cgroup'], undefined);
    const shared = buildOciSpec(guest(), options({ sharedMemoryCgroup: true }));
    assert.equal(shared.annotations['org.trivisor.memory-cgroup'], 'shared');
    assert.equal(shared.linux.resources.memory, undefined);
  });

  test('turns limits into cgroup resources', () => {
    const oci = buildOciSpec(
      guest({ 'limits.memory': '64MiB', 'limits.cpu': '0.5', 'limits.processes': '50' }),
      options(),
    );
    assert.deepEqual(oci.linux.resources.memory, { limit: 64 * 2 ** 20, swap: 64 * 2 ** 20 });
    assert.deepEqual(oci.linux.resources.cpu, { quota: 50_000, period: 100_000 });
    assert.deepEqual(oci.linux.resources.pids, { limit: 50 });
  });

  test('sets no resource limits when none are configured, and denies every device', () => {
    const oci = buildOciSpec(guest(), options());
    assert.equal(oci.linux.resources.memory, undefined);
    assert.equal(oci.linux.resources.cpu, undefined);
    assert.equal(oci.linux.resources.pids, undefined);
    assert.deepEqual(oci.linux.resources.devices, [{ allow: false, access: 'rwm' }]);
  });

  test('hardens the guest: no new privileges, default caps, seccomp deny-list, masked paths', () => {
    const oci = buildOciSpec(guest(), options());
    assert.equal(oci.process.noNewPrivileges, true);
    assert.ok(!oci.process.capabilities.bounding.includes('CAP_SYS_ADMIN'));
    assert.ok(!oci.process.capabilities.bounding.includes('CAP_SYS_MODULE'));
    assert.ok(oci.process.capabilities.bounding.includes('CAP_KILL'));
    assert.equal(oci.linux.seccomp.defaultAction, 'SCMP_ACT_ALLOW');
    const denied = oci.linux.seccomp.syscalls.flatMap((s) => s.names);
    for (const name of [
      'mount',
      'umount2',
      'pivot_root',
      'kexec_load',
      'init_module',
      'bpf',
      'keyctl',
      'swapon',
    ]) {
      assert.ok(denied.includes(name), `${name} must be denied`);
    }
    assert.ok(
      !DENIED_SYSCALLS.includes('reboot'),
      'reboot ends only the guest and busybox poweroff needs it',
    );
    assert.ok(oci.linux.maskedPaths.includes('/proc/kcore'));
    assert.ok(oci.linux.readonlyPaths.includes('/proc/sys'));
    assert.ok(!oci.mounts.some((m) => m.type === 'bind'), 'no host paths or devices are bound in');
  });

  test('never asks for rlimits above the host hard limits', () => {
    const oci = buildOciSpec(guest(), options());
    const nofile = oci.process.rlimits.find((r) => r.type === 'RLIMIT_NOFILE');
    assert.deepEqual(nofile, { type: 'RLIMIT_NOFILE', soft: 1024, hard: 20_000 });
    const tiny = buildOciSpec(guest(), options({ hostHardLimits: { RLIMIT_NOFILE: 512 } }));
    assert.deepEqual(
      tiny.process.rlimits.find((r) => r.type === 'RLIMIT_NOFILE'),
      { type: 'RLIMIT_NOFILE', soft: 512, hard: 512 },
    );
  });

  test('passes environment.* keys to init', () => {
    const oci = buildOciSpec(guest({ 'environment.FOO': 'bar' }), options());
    assert.ok(oci.process.env.includes('FOO=bar'));
    assert.ok(oci.process.env.some((e) => e.startsWith('PATH=')));
  });

  test('is pure: the same inputs give the same spec', () => {
    assert.deepEqual(buildOciSpec(guest(), options()), buildOciSpec(guest(), options()));
  });
});
