import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { after, before } from 'node:test';
import { makeRunDir, removeRunDir } from '../../../test/leftovers.ts';
import type { GuestSpec } from '../../core/types.ts';
import { createLogger } from '../../host/logger.ts';
import { hostRunner } from '../../host/runner.ts';
import type { GuestStorage } from '../guest-storage.ts';
import { createAgentPool } from './vm-agent.ts';
import { diskCreateArgv } from './vm-launch.ts';
import { createVmStorage } from './vm-storage.ts';

/**
 * The fixture of the vm backup-chain tests (vm-chain-carry, vm-live-chain-carry): real qemu-img
 * and QEMU on a state directory per member under one temporary directory, guest v1's disk made
 * as the driver's create makes it. Not a test file: each test file calls `vmChainFixture` in its
 * describe, which removes the directory and kills the QEMUs it was told of when the suite ends.
 * The directory is a test run's (test/leftovers.ts): a test process killed before its `after`
 * leaves QEMUs whose command lines name it, and the next run's sweep kills them.
 */

export const KiB = 1024;
export const MiB = 1024 * KiB;
/** The guests' disk size. */
export const SIZE = 16 * MiB;
/** A qcow2 cluster (qemu-img's default), the unit a link holds. */
export const CLUSTER = 64 * KiB;
export const spec = { name: 'v1', model: 'vm' } as GuestSpec;
export const runner = hostRunner();

export interface VmMember {
  storage: GuestStorage;
  /** Guest v1's root.qcow2 on this member. */
  disk: string;
  stateDir: string;
}

export interface VmChainFixture {
  /** The suite's temporary directory (set once its `before` has run). */
  readonly dir: string;
  /** A member's vm storage with guest v1's disk made (`base`: over a raw base disk of 2 MiB of random data, as a create from an image). */
  member(name: string, options?: { base?: boolean }): Promise<VmMember>;
  /** A QEMU (or storage daemon) the suite started: killed when it ends, if still there. */
  track(pid: number): void;
}

/** Registers the suite's set-up and clean-up: call it inside the `describe`. */
export function vmChainFixture(kind: string): VmChainFixture {
  const agents = createAgentPool();
  const pids: number[] = [];
  let dir = '';
  before(async () => {
    dir = await makeRunDir(kind);
  });
  after(async () => {
    for (const pid of pids) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        // gone already
      }
    }
    if (dir) {
      const { left } = await removeRunDir(dir);
      assert.deepEqual(left, [], 'the suite left nothing behind');
    }
  });
  return {
    get dir() {
      return dir;
    },
    async member(name, options = {}) {
      const stateDir = path.join(dir, name);
      const guestDir = path.join(stateDir, 'guests', spec.name);
      await mkdir(guestDir, { recursive: true });
      const disk = path.join(guestDir, 'root.qcow2');
      if (options.base) {
        const base = path.join(stateDir, 'base.raw');
        await writeFile(base, Buffer.concat([randomBytes(2 * MiB), Buffer.alloc(SIZE - 2 * MiB)]));
        await runner.run(diskCreateArgv(disk, SIZE, { file: base, format: 'raw' }));
      } else {
        await runner.run(diskCreateArgv(disk, SIZE));
      }
      const storage = createVmStorage(
        { runner, log: createLogger({ level: 'silent' }), stateDir, idmapBase: 1_000_000 },
        { agents },
      );
      return { storage, disk, stateDir };
    },
    track(pid) {
      pids.push(pid);
    },
  };
}

/** The 64 KiB clusters a qcow2 without backing file holds data for. */
export const clustersOf = async (qcow2: string): Promise<number[]> => {
  const { stdout } = await runner.run(['qemu-img', 'map', '--output=json', '-f', 'qcow2', qcow2]);
  const out: number[] = [];
  for (const e of JSON.parse(stdout) as Array<{ start: number; length: number; data: boolean }>) {
    if (!e.data) continue;
    for (let at = e.start; at < e.start + e.length; at += CLUSTER) out.push(at / CLUSTER);
  }
  return out;
};

/** The disk.qcow2 of a vm archive payload, unpacked into `into`. */
export const unpackDisk = async (tar: string, into: string): Promise<string> => {
  await mkdir(into, { recursive: true });
  await runner.run(['tar', '--zstd', '-C', into, '-xf', tar, 'disk.qcow2']);
  return path.join(into, 'disk.qcow2');
};

/** Fails unless the two qcow2 disks read the same (qemu-img compare). */
export const assertIdentical = async (x: string, y: string) => {
  const r = await runner.run(['qemu-img', 'compare', '-f', 'qcow2', '-F', 'qcow2', x, y], {
    allowFailure: true,
  });
  assert.equal(r.code, 0, `${x} and ${y} differ: ${r.stdout}${r.stderr}`);
};
