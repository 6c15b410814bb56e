import { isLiveKey } from '../../core/config-keys.ts';
import { failedPrecondition } from '../../core/errors.ts';
import type { GuestSpec } from '../../core/types.ts';
import type { GuestDriver } from '../guest-driver.ts';
import { nicDownScript, nicUpScript, probeGuestNics, runGuestScript } from '../guest-nic.ts';
import { HOST_OVERHEAD_BYTES, type PvmContext } from './pvm-context.ts';
import { setUmlCgroupLimits } from './uml-cgroup.ts';
import { readTail, umlNicErrors } from './uml-net-log.ts';

/** Live changes to a running guest: config limits, and NICs hot-plugged through mconsole. */
export function pvmLive(
  c: PvmContext,
): Pick<GuestDriver, 'update' | 'observeNics' | 'attachNic' | 'detachNic'> {
  const { ctx, self, log, cgroupsPath, pathsOf, mconsoleOf, readRecord, liveUml, readUid, runningUml } = c;
  const { readNicSlots, writeNicSlots, limitsOf } = c;
  /** The hot-plugged NIC takes its name, comes up and holds its address in the guest (best effort). */
  async function nicUp(
    spec: GuestSpec,
    n: { name: string; mac: string; cidr: string; mtu: number },
  ): Promise<void> {
    const r = await runGuestScript((g, o) => self().exec(g, o), spec, nicUpScript(n)).catch((e) => ({
      code: -1,
      output: String(e),
    }));
    if (r.code !== 0)
      log.warn(
        { guest: spec.name, nic: n.name, err: r.output },
        'the guest did not set up a hot-plugged NIC',
      );
  }

  return {
    async update(spec, changedKeys) {
      const needRestart = changedKeys.filter((k) => !isLiveKey(k) || k === 'limits.memory');
      if (!(await liveUml(spec))) return [];
      if (changedKeys.some((k) => k === 'limits.cpu' || k === 'limits.processes')) {
        // Memory stays as booted (mem= is fixed): only cpu and pids follow.
        const record = await readRecord(spec);
        const limits = limitsOf(spec);
        if (record) limits.memoryBytes = record.memoryBytes + HOST_OVERHEAD_BYTES;
        await setUmlCgroupLimits(cgroupsPath(spec), limits);
      }
      return needRestart;
    },

    // The guest's interfaces through its agent; what the UML kernel said about its NICs from the console.
    async observeNics(spec, { process, timeoutMs }) {
      if (!(await liveUml(spec, process))) throw failedPrecondition(`Guest ${spec.name} is not running.`);
      const interfaces = await probeGuestNics((g, o) => self().exec(g, o), spec, { timeoutMs });
      return { interfaces, engineErrors: umlNicErrors(await readTail(pathsOf(spec).consoleLog)) };
    },

    async attachNic(spec, nic) {
      if (!ctx.network) throw failedPrecondition('Networking is not set up on this host.');
      await runningUml(spec);
      const slots = await readNicSlots(spec, nic);
      if (slots[nic] !== undefined) return 'live';
      const taken = new Set(Object.values(slots));
      let n = 0;
      while (taken.has(n)) n++;
      // The kernel opens the tap as the guest's uid, as at start.
      const t = await ctx.network.plugTap(spec, nic, { user: await readUid(spec) });
      try {
        const r = await mconsoleOf(spec).request(`config eth${n}=tuntap,${t.tap},${t.mac}`);
        if (!r.ok) {
          throw failedPrecondition(
            `The UML kernel of ${spec.name} refused NIC ${nic} as eth${n}: ${r.text || 'no reason given'}`,
          );
        }
      } catch (e) {
        await ctx.network.unplugNic(spec, nic);
        throw e;
      }
      await writeNicSlots(spec, { ...slots, [nic]: n });
      await nicUp(spec, { name: nic, mac: t.mac, cidr: t.cidr, mtu: t.mtu });
      return 'live';
    },

    async detachNic(spec, nic) {
      const slots = await readNicSlots(spec);
      const n = slots[nic];
      if (n !== undefined) {
        const m = mconsoleOf(spec);
        let r = await m.request(`remove eth${n}`);
        if (!r.ok) {
          // UML removes only a device the guest has closed: take it down through the agent.
          const mac = spec.devices?.[nic]?.hwaddr;
          if (mac)
            await runGuestScript((g, o) => self().exec(g, o), spec, nicDownScript(mac)).catch(
              () => undefined,
            );
          r = await m.request(`remove eth${n}`);
        }
        if (!r.ok && !/not found|no such|-19|ENODEV/i.test(r.text)) {
          throw failedPrecondition(
            `The UML kernel of ${spec.name} did not let go of NIC ${nic} (eth${n}: ${r.text || 'busy'}): take it down in the guest (ip link set ${nic} down) and detach again, or stop the guest`,
          );
        }
        const rest = { ...slots };
        delete rest[nic];
        await writeNicSlots(spec, rest);
      }
      await ctx.network?.unplugNic(spec, nic);
      return 'live';
    },
  };
}
