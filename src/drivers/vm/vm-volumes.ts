import { readFile } from 'node:fs/promises';
import { failedPrecondition, unavailable } from '../../core/errors.ts';
import type { GuestSpec } from '../../core/types.ts';
import type { ProcessRunner } from '../../host/runner.ts';
import { type AttachedVolume, engineIdOf, type GuestVolumes } from '../guest-volumes.ts';
import { addOnFreePort, NoFreePortError, portCount, portIdOf, rootPortArgs } from './pcie-ports.ts';
import { CDROM_DRIVES, type CdromDrive, isoNodeOf, vmGuestPaths } from './qemu-command.ts';
import type { FileSource, QemuFds } from './qemu-fds.ts';
import { connectQmp, type QmpClient } from './qmp-client.ts';

/**
 * PCIe root ports a q35 guest gets for its volumes (pcie-ports.ts). Volumes attached at
 * start sit on them too, so that every volume can also be unplugged live.
 */
export const VM_VOLUME_PORTS = portCount('volume');
/** How long a guest may take to release an unplugged disk (TCG is slow; the guest must acknowledge). */
const UNPLUG_TIMEOUT_MS = 30_000;

export const portId = (i: number): string => portIdOf('volume', i);

/** The volume's file as the daemon opens it for QEMU (which runs unprivileged and cannot). */
const sourceOf = (v: AttachedVolume): FileSource => ({ kind: 'file', path: v.hostPath, access: 'readwrite' });

/** QEMU's -blockdev for one volume, its file an fd set (`/dev/fdset/N`). */
function blockdevOf(v: AttachedVolume, filename: string): Record<string, unknown> {
  const id = engineIdOf(v.device);
  return { driver: 'raw', 'node-name': id, discard: 'unmap', file: { driver: 'file', filename } };
}

function deviceOf(v: AttachedVolume, bus: string | undefined): Record<string, unknown> {
  const id = engineIdOf(v.device);
  // The serial names the disk in the guest: /sys/block/vdX/serial.
  return { driver: 'virtio-blk-pci', id, drive: id, serial: id, ...(bus !== undefined && { bus }) };
}

/**
 * The QEMU arguments for a vm guest's volumes: on q35 the hot-plug root ports
 * (always, so that a running guest can take a volume) with one volume per port;
 * on pc the volumes on the root bus (which hot-plugs through ACPI).
 */
export function vmVolumeArgs(volumes: readonly AttachedVolume[], machine: string, fds: QemuFds): string[] {
  const q35 = machine === 'q35';
  const blocks = volumes.filter((v) => v.type === 'block').slice(0, q35 ? VM_VOLUME_PORTS : undefined);
  const ports = rootPortArgs('volume', machine);
  return [
    ...ports,
    ...blocks.flatMap((v, i) => [
      '-blockdev',
      JSON.stringify(blockdevOf(v, fds.fdset(sourceOf(v)))),
      '-device',
      JSON.stringify(deviceOf(v, q35 ? portId(i) : undefined)),
    ]),
  ];
}

/** What each CD-ROM drive holds, from `query-block` (the node name and file of its medium, if any). */
async function drivesOf(q: QmpClient): Promise<Array<{ drive: CdromDrive; node?: string }>> {
  const blocks =
    await q.execute<Array<{ qdev?: string; inserted?: { 'node-name'?: string } }>>('query-block');
  return CDROM_DRIVES.map((drive) => {
    const b = blocks.find((x) => x.qdev === drive || x.qdev?.endsWith(`/${drive}`));
    return {
      drive,
      ...(b?.inserted?.['node-name'] !== undefined && { node: b.inserted['node-name'] }),
    };
  });
}

/**
 * Hot-plug of block volumes into running vm guests over QMP (virtio-blk). QEMU runs as the
 * guest's unprivileged uid: the daemon opens the volume's file and hands it over (add-fd).
 */
export function createVmVolumes(options: { stateDir: string; runner: ProcessRunner }): GuestVolumes {
  const withQmp = async <T>(name: string, work: (q: QmpClient) => Promise<T>): Promise<T> => {
    const q = await connectQmp(vmGuestPaths(options.stateDir, name).qmpSocket, {
      timeoutMs: 10_000,
      runner: options.runner,
    });
    try {
      return await work(q);
    } finally {
      q.close();
    }
  };
  const machineOf = async (name: string): Promise<string> => {
    const text = await readFile(vmGuestPaths(options.stateDir, name).bootRecord, 'utf8').catch(() => '{}');
    return (JSON.parse(text) as { machine?: string }).machine ?? 'q35';
  };
  const refused = (e: unknown) => (e instanceof Error ? e.message : String(e));
  const bootOf = async (name: string): Promise<string | undefined> => {
    const text = await readFile(vmGuestPaths(options.stateDir, name).bootRecord, 'utf8').catch(() => '{}');
    return (JSON.parse(text) as { boot?: string }).boot;
  };

  /**
   * Puts an ISO in an empty CD-ROM drive of the running guest (its tray opened, the medium
   * inserted, the tray closed: the guest sees a disc change).
   */
  const insertIso = async (spec: GuestSpec, volume: AttachedVolume): Promise<void> => {
    if ((await bootOf(spec.name)) !== 'firmware') {
      throw failedPrecondition(
        `Guest ${spec.name} boots Trivisor's kernel directly, which has no CD-ROM: it cannot take ISO ${volume.volume}`,
      );
    }
    await withQmp(spec.name, async (q) => {
      const drive = (await drivesOf(q)).find((d) => d.node === undefined)?.drive;
      if (!drive) {
        throw failedPrecondition(
          `Both CD-ROM drives of ${spec.name} hold a disc: remove one first (trivisor config device remove)`,
        );
      }
      const node = isoNodeOf(volume.device);
      const added = await q
        .executeWithFds<{ 'fdset-id': number }>('add-fd', { opaque: volume.hostPath }, [
          { kind: 'file', path: volume.hostPath, access: 'read' },
        ])
        .catch((e: unknown) => {
          throw failedPrecondition(`Cannot hand ISO ${volume.volume} to ${spec.name}: ${refused(e)}`);
        });
      const fdset = added['fdset-id'];
      try {
        await q.execute('blockdev-add', {
          driver: 'raw',
          'node-name': node,
          'read-only': true,
          file: { driver: 'file', filename: `/dev/fdset/${fdset}`, 'read-only': true },
        });
      } finally {
        await q.execute('remove-fd', { 'fdset-id': fdset }).catch(() => {});
      }
      try {
        await q.execute('blockdev-open-tray', { id: drive, force: true });
        await q.execute('blockdev-insert-medium', { id: drive, 'node-name': node });
        await q.execute('blockdev-close-tray', { id: drive });
      } catch (e) {
        await q.execute('blockdev-remove-medium', { id: drive }).catch(() => {});
        await q.execute('blockdev-del', { 'node-name': node }).catch(() => {});
        throw failedPrecondition(`QEMU could not put ISO ${volume.volume} into ${spec.name}: ${refused(e)}`);
      }
    });
  };

  /** Takes an ISO out of whichever drive holds it (forcing the tray: the guest may have locked it). */
  const ejectIso = async (spec: GuestSpec, volume: AttachedVolume): Promise<void> => {
    await withQmp(spec.name, async (q) => {
      const node = isoNodeOf(volume.device);
      const held = (await drivesOf(q)).filter((d) => d.node === node);
      for (const d of held) {
        await q.execute('blockdev-open-tray', { id: d.drive, force: true });
        await q.execute('blockdev-remove-medium', { id: d.drive });
        if (d.node !== undefined) await q.execute('blockdev-del', { 'node-name': d.node }).catch(() => {});
        await q.execute('blockdev-close-tray', { id: d.drive }).catch(() => {});
      }
    });
  };

  return {
    model: 'vm',
    async attach(spec, volume) {
      if (volume.type === 'iso') {
        await insertIso(spec, volume);
        return 'live';
      }
      const machine = await machineOf(spec.name);
      await withQmp(spec.name, async (q) => {
        const id = engineIdOf(volume.device);
        const added = await q
          .executeWithFds<{ 'fdset-id': number }>('add-fd', { opaque: volume.hostPath }, [sourceOf(volume)])
          .catch((e: unknown) => {
            throw failedPrecondition(`Cannot hand volume ${volume.volume} to ${spec.name}: ${refused(e)}`);
          });
        const fdset = added['fdset-id'];
        try {
          await q.execute('blockdev-add', blockdevOf(volume, `/dev/fdset/${fdset}`));
        } finally {
          // The node holds its own duplicate: the set's copy goes once nothing uses it.
          await q.execute('remove-fd', { 'fdset-id': fdset }).catch(() => {});
        }
        try {
          await addOnFreePort(q, 'volume', { machine, device: deviceOf(volume, undefined) });
        } catch (e) {
          await q.execute('blockdev-del', { 'node-name': id }).catch(() => {});
          throw failedPrecondition(
            e instanceof NoFreePortError
              ? `Guest ${spec.name} has no free hot-plug port (it has ${VM_VOLUME_PORTS}; one is taken by each volume, and a guest started before volumes existed has none): stop it and attach again`
              : `QEMU could not plug volume ${volume.volume} into ${spec.name}: ${refused(e)}`,
          );
        }
      });
      return 'live';
    },

    async detach(spec, volume) {
      if (volume.type === 'iso') {
        await ejectIso(spec, volume);
        return 'live';
      }
      await withQmp(spec.name, async (q) => {
        const id = engineIdOf(volume.device);
        let deleted: () => void = () => {};
        const gone = new Promise<void>((resolve) => {
          deleted = resolve;
        });
        const stop = q.onEvent((ev) => {
          if (ev.event === 'DEVICE_DELETED' && ev.data.device === id) deleted();
        });
        try {
          let present = true;
          try {
            await q.execute('device_del', { id });
          } catch (e) {
            if (!/not found/i.test(refused(e))) throw e;
            present = false;
          }
          if (present) {
            const timer = new Promise<'timeout'>((r) =>
              setTimeout(() => r('timeout'), UNPLUG_TIMEOUT_MS).unref(),
            );
            if ((await Promise.race([gone, timer])) === 'timeout') {
              throw unavailable(
                `Guest ${spec.name} did not release volume ${volume.volume} within ${UNPLUG_TIMEOUT_MS / 1000} s (is it mounted, or the guest busy?): unmount it in the guest and detach again, or stop the guest`,
              );
            }
          }
          await q.execute('blockdev-del', { 'node-name': id }).catch(() => {});
        } finally {
          stop();
        }
      });
      return 'live';
    },

    async resize(spec, volume) {
      if (volume.type === 'iso') return 'next-start';
      // virtio-blk tells the guest kernel of the new capacity at once.
      await withQmp(spec.name, (q) =>
        q.execute('block_resize', { 'node-name': engineIdOf(volume.device), size: volume.sizeBytes }),
      );
      return 'live';
    },
  };
}
