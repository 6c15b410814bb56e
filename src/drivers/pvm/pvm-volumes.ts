import { chmod, chown, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { failedPrecondition } from '../../core/errors.ts';
import type { ProcessRunner } from '../../host/runner.ts';
import type { AttachedVolume, GuestVolumes } from '../guest-volumes.ts';
import { createMconsoleClient } from './uml-mconsole.ts';

/** ubd0 is the root disk, ubd1 the config disk: volumes take ubd2 (/dev/ubdc) and up. */
export const FIRST_VOLUME_UBD = 2;
/** UML's ubd driver has 16 slots. */
export const UBD_SLOTS = 16;

/** `ubd2=FILE ubd3=FILE…` for a pvm guest's block volumes at boot, in order. */
export function umlVolumeArgs(volumes: readonly AttachedVolume[]): string[] {
  return volumes
    .filter((v) => v.type === 'block')
    .slice(0, UBD_SLOTS - FIRST_VOLUME_UBD)
    .map((v, i) => `ubd${FIRST_VOLUME_UBD + i}=${v.hostPath}`);
}

/** The kernel runs as the guest's host uid: its volumes' files must be its own. */
export async function preparePvmVolumes(volumes: readonly AttachedVolume[], uid: number): Promise<void> {
  for (const v of volumes) {
    if (v.type !== 'block') continue;
    await chown(v.hostPath, uid, uid);
    await chmod(v.hostPath, 0o600);
  }
}

/** Hot-plug of block volumes into running pvm guests through mconsole (`config ubdN=FILE`, `remove ubdN`). */
export function createPvmVolumes(options: { runner: ProcessRunner; stateDir: string }): GuestVolumes {
  const { runner, stateDir } = options;
  const dirOf = (name: string) => join(stateDir, 'guests', name);
  const mconsoleOf = (name: string) =>
    createMconsoleClient(join(dirOf(name), 'run', 'uml', 'mconsole'), { runner });
  const uidOf = async (name: string): Promise<number> => {
    const uid = Number((await readFile(join(dirOf(name), 'uid'), 'utf8')).trim());
    if (!Number.isInteger(uid) || uid <= 0) throw failedPrecondition(`Guest ${name} has no host uid`);
    return uid;
  };
  /** What each volume slot holds now (`config ubdN` answers the file, or nothing for a free one). */
  const slots = async (name: string): Promise<Map<number, string>> => {
    const m = mconsoleOf(name);
    const out = new Map<number, string>();
    for (let n = FIRST_VOLUME_UBD; n < UBD_SLOTS; n++) {
      const r = await m.request(`config ubd${n}`);
      out.set(n, r.ok ? r.text.trim() : '');
    }
    return out;
  };
  const letter = (n: number) => `/dev/ubd${String.fromCharCode(97 + n)}`;

  return {
    model: 'pvm',
    async attach(spec, volume) {
      await preparePvmVolumes([volume], await uidOf(spec.name));
      const held = await slots(spec.name);
      if ([...held.values()].some((f) => f.split(',')[0] === volume.hostPath)) return 'live';
      const free = [...held.entries()].find(([, f]) => f === '')?.[0];
      if (free === undefined) throw failedPrecondition(`Guest ${spec.name} has no free ubd slot`);
      const r = await mconsoleOf(spec.name).request(`config ubd${free}=${volume.hostPath}`);
      if (!r.ok) {
        throw failedPrecondition(
          `The UML kernel of ${spec.name} refused volume ${volume.volume} as ubd${free}: ${r.text || 'no reason given'}`,
        );
      }
      return 'live';
    },

    async detach(spec, volume) {
      const held = await slots(spec.name);
      const slot = [...held.entries()].find(([, f]) => f.split(',')[0] === volume.hostPath)?.[0];
      if (slot !== undefined) {
        const r = await mconsoleOf(spec.name).request(`remove ubd${slot}`);
        if (!r.ok) {
          throw failedPrecondition(
            `Guest ${spec.name} still uses volume ${volume.volume} (${letter(slot)}): unmount it in the guest and detach again (${r.text || 'busy'})`,
          );
        }
      }
      await chown(volume.hostPath, 0, 0).catch(() => {});
      return 'live';
    },

    // UML reads a disk's size when the disk is added: a disk the guest does not hold open is
    // removed and added again in the same slot; one in use shows its new size at the next start.
    async resize(spec, volume) {
      const held = await slots(spec.name);
      const slot = [...held.entries()].find(([, f]) => f.split(',')[0] === volume.hostPath)?.[0];
      if (slot === undefined) return 'next-start';
      const m = mconsoleOf(spec.name);
      if (!(await m.request(`remove ubd${slot}`)).ok) return 'next-start';
      const r = await m.request(`config ubd${slot}=${volume.hostPath}`);
      if (!r.ok) {
        throw failedPrecondition(
          `The UML kernel of ${spec.name} did not take volume ${volume.volume} back as ubd${slot}: ${r.text || 'no reason given'}; restart the guest`,
        );
      }
      return 'live';
    },
  };
}
