// vm and pvm density before and after the daemon's memory reclaim (decision 0060), in one run:
// N idle vm and M idle pvm guests of the same memory, first with TRIVISOR_MEMORY_RECLAIM=off (no
// KSM, no pvm free-page release), then with it on; host memory per guest once settled, guests
// per GiB, and how many would fit in 20 GiB (extrapolated from N, not measured at that size).
// Usage: node bench/vm-pvm-density.ts [VM_N] [PVM_N] [MEMORY]   (default 4 16 128MiB)
import { readFileSync } from 'node:fs';
import { cgroupParentOf } from '../src/drivers/guest-cgroup.ts';
import { type Daemon, sleep, startDaemon } from '../test/system/harness.ts';
import {
  guestPss,
  hostUsedBytes,
  pool,
  QUICK,
  runOperation,
  settle,
  umlRamBytes,
  writeResult,
} from './lib.ts';

const vmN = Number(process.argv[2] ?? (QUICK ? 1 : 4));
const pvmN = Number(process.argv[3] ?? (QUICK ? 1 : 16));
const memory = process.argv[4] ?? '128MiB';
const MiB = 2 ** 20;
/** How long guests idle after the last start before the first reading: the pvm release comes at 20 s. */
const IDLE_MS = QUICK ? 25_000 : 60_000;
/** The longest wait for KSM to finish merging (pages_sharing stops growing). */
const KSM_SETTLE_MS = QUICK ? 20_000 : 240_000;

const ksm = (name: string): number => {
  try {
    return Number(readFileSync(`/sys/kernel/mm/ksm/${name}`, 'utf8').trim());
  } catch {
    return 0;
  }
};

/** Pages KSM merged of a guest's QEMU (/proc/PID/ksm_merging_pages), MiB; 0 when unknown. */
function ksmMergedMiB(d: Daemon, name: string): number {
  try {
    const pid = Number(
      readFileSync(`/sys/fs/cgroup/pids${cgroupParentOf(d.stateDir)}/${name}/cgroup.procs`, 'utf8').split(
        '\n',
      )[0],
    );
    return (Number(readFileSync(`/proc/${pid}/ksm_merging_pages`, 'utf8').trim()) * 4096) / MiB;
  } catch {
    return 0;
  }
}

const mean = (xs: number[]) => (xs.length ? xs.reduce((a, b) => a + b, 0) / xs.length : 0);

async function phase(reclaim: 'off' | 'on') {
  const d: Daemon = await startDaemon({ env: { TRIVISOR_MEMORY_RECLAIM: reclaim } });
  try {
    const vms = Array.from({ length: vmN }, (_, i) => `v${i}`);
    const pvms = Array.from({ length: pvmN }, (_, i) => `p${i}`);
    await settle();
    const usedBefore = hostUsedBytes();
    const t0 = performance.now();
    // Two at a time: vm boots are TCG work on a 2-core host.
    const retried: string[] = [];
    const create = (name: string) =>
      runOperation(d, 'POST', '/1.0/guests', {
        name,
        image: 'busybox',
        model: name.startsWith('v') ? 'vm' : 'pvm',
        start: true,
        config: { 'limits.memory': memory },
      });
    // Two at a time: vm boots are TCG work on a 2-core host. Under a heavy load a TCG kernel now and
    // then panics calibrating its timer: such a guest is made again, once, and named in the result.
    await pool([...vms, ...pvms], 2, async (name) => {
      try {
        await create(name);
      } catch (e) {
        retried.push(`${name}: ${String(e).slice(0, 200)}`);
        await runOperation(d, 'DELETE', `/1.0/guests/${name}?force=true`).catch(() => undefined);
        await create(name);
      }
    });
    const startAllSeconds = (performance.now() - t0) / 1000;
    await sleep(IDLE_MS);
    // KSM merges at its rate: wait until a whole minute adds less than 2% (or the limit).
    const t1 = performance.now();
    let sharing = ksm('pages_sharing');
    while (reclaim === 'on' && vmN > 0 && performance.now() - t1 < KSM_SETTLE_MS) {
      await sleep(QUICK ? 10_000 : 30_000);
      const now = ksm('pages_sharing');
      if (now > 0 && now - sharing < sharing * 0.02) break;
      sharing = now;
    }
    const ksmSettleSeconds = (performance.now() - t1) / 1000;
    await settle();
    const vmMiB = vms.map((n) => guestPss(d.stateDir, n) / MiB);
    const pvmMiB = pvms.map((n) => guestPss(d.stateDir, n) / MiB);
    const pvmRamMiB = pvms.map((n) => umlRamBytes(d.stateDir, n) / MiB);
    // KSM is one per host: another daemon's vm guests can have it running in the off phase too.
    const vmKsmMergedMiB = vms.map((n) => ksmMergedMiB(d, n));
    const hostUsedPerGuestMiB = (hostUsedBytes() - usedBefore) / MiB / (vmN + pvmN);
    const ksmAtReading = {
      run: ksm('run'),
      pagesShared: ksm('pages_shared'),
      pagesSharing: ksm('pages_sharing'),
      savedMiB: (ksm('pages_sharing') * 4096) / MiB,
    };
    await pool([...vms, ...pvms], 4, (name) => runOperation(d, 'DELETE', `/1.0/guests/${name}?force=true`));
    const perGuest = (xs: number[]) => mean(xs);
    const per = { vm: perGuest(vmMiB), pvm: perGuest(pvmMiB) };
    return {
      reclaim,
      startAllSeconds,
      retried,
      ksmSettleSeconds,
      ksm: ksmAtReading,
      vm: {
        guests: vmN,
        hostMemoryPerGuestMiB: per.vm,
        ksmMergedPerGuestMiB: mean(vmKsmMergedMiB),
        guestsPerGiB: per.vm > 0 ? 1024 / per.vm : 0,
        fitIn20GiB: per.vm > 0 ? Math.floor((20 * 1024) / per.vm) : 0,
      },
      pvm: {
        guests: pvmN,
        hostMemoryPerGuestMiB: per.pvm,
        ramFilePerGuestMiB: mean(pvmRamMiB),
        guestsPerGiB: per.pvm > 0 ? 1024 / per.pvm : 0,
        fitIn20GiB: per.pvm > 0 ? Math.floor((20 * 1024) / per.pvm) : 0,
      },
      hostUsedPerGuestMiB,
    };
  } finally {
    await d.destroy();
  }
}

const off = await phase('off');
const on = await phase('on');
const result = {
  benchmark: `${vmN} vm and ${pvmN} pvm idle guests of ${memory}, memory reclaim off then on`,
  memory,
  vmGuests: vmN,
  pvmGuests: pvmN,
  off,
  on,
  note: 'Guests per GiB and fit in 20 GiB are extrapolated from the per-guest figure at this N.',
};
console.log(JSON.stringify(result, null, 2));
console.log(`wrote ${writeResult('vm-pvm-density', result)}`);
