import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { addOnFreePort, NoFreePortError, portIdOf, rootPortArgs } from './pcie-ports.ts';
import { type QmpClient, QmpCommandError } from './qmp-client.ts';

/** A QMP client whose device_add succeeds only on the buses in `free` (and records the tries). */
function fakeQmp(free: Set<string | undefined>, refusal = "Bus '%s' not found") {
  const tried: Array<string | undefined> = [];
  const q = {
    async execute(command: string, args?: Record<string, unknown>) {
      assert.equal(command, 'device_add');
      const bus = args?.bus as string | undefined;
      tried.push(bus);
      if (!free.has(bus))
        throw new QmpCommandError(command, 'GenericError', refusal.replace('%s', String(bus)));
      return {};
    },
  } as unknown as QmpClient;
  return { q, tried };
}

describe('PCIe root ports', () => {
  test('volumes and NICs get separate groups of q35 root ports with distinct ids and chassis', () => {
    const args = [...rootPortArgs('volume', 'q35'), ...rootPortArgs('nic', 'q35')].filter(
      (a) => a !== '-device',
    );
    assert.equal(args.length, 8);
    assert.equal(new Set(args.map((a) => /id=([^,]+)/.exec(a)?.[1])).size, 8);
    assert.equal(new Set(args.map((a) => /chassis=(\d+)/.exec(a)?.[1])).size, 8);
    assert.deepEqual(rootPortArgs('nic', 'pc'), []);
  });

  test('a device goes on the first free port of its group', async () => {
    const { q, tried } = fakeQmp(new Set([portIdOf('nic', 2)]), "Bus '%s' is full");
    const bus = await addOnFreePort(q, 'nic', { machine: 'q35', device: { driver: 'virtio-net-pci' } });
    assert.equal(bus, 'trivisor-nic2');
    assert.deepEqual(tried, ['trivisor-nic0', 'trivisor-nic1', 'trivisor-nic2']);
  });

  test('a taken port is skipped: the device is asked for slot 0, which QEMU refuses on a taken port', async () => {
    // As QEMU 7.2 does: a device given no addr on a taken root port goes to its next slot, which
    // the guest never scans; with addr=0 a taken port answers "in use".
    const taken = new Set(['trivisor-nic0']);
    const tried: Array<{ bus?: string; addr?: string }> = [];
    const q = {
      async execute(_command: string, args?: Record<string, unknown>) {
        const bus = args?.bus as string;
        const addr = args?.addr as string | undefined;
        tried.push({ bus, ...(addr !== undefined && { addr }) });
        if (taken.has(bus) && addr === '0')
          throw new QmpCommandError(
            'device_add',
            'GenericError',
            'PCI: slot 0 function 0 not available for virtio-net-pci, in use by virtio-net-pci,id=nic-eth0',
          );
        return {};
      },
    } as unknown as QmpClient;
    const bus = await addOnFreePort(q, 'nic', { machine: 'q35', device: { driver: 'virtio-net-pci' } });
    assert.equal(bus, 'trivisor-nic1');
    assert.deepEqual(tried, [
      { bus: 'trivisor-nic0', addr: '0' },
      { bus: 'trivisor-nic1', addr: '0' },
    ]);
  });

  test('no free or no existing port is NoFreePortError; pc uses its root bus; other refusals pass through', async () => {
    await assert.rejects(
      addOnFreePort(fakeQmp(new Set()).q, 'nic', { machine: 'q35', device: {} }),
      NoFreePortError,
    );
    const pc = fakeQmp(new Set([undefined]));
    assert.equal(await addOnFreePort(pc.q, 'nic', { machine: 'pc', device: {} }), undefined);
    assert.deepEqual(pc.tried, [undefined]);
    await assert.rejects(
      addOnFreePort(fakeQmp(new Set(), "Duplicate ID 'nic-eth0'").q, 'nic', { machine: 'q35', device: {} }),
      (e) => e instanceof QmpCommandError && /Duplicate ID/.test(e.message),
    );
  });
});
