import { failedPrecondition, notSupported, unavailable } from '../../core/errors.ts';
import type { GuestDriver, GuestInterface } from '../guest-driver.ts';
import { nicUpScript, probeGuestNics, runGuestScript } from '../guest-nic.ts';
import { addOnFreePort, NoFreePortError, portCount } from './pcie-ports.ts';
import { nicDriverOf, nicEngineIds } from './qemu-command.ts';
import { bootOf } from './vm-boot.ts';
import type { VmContext } from './vm-context.ts';

/** How long a guest may take to let go of an unplugged NIC (PCIe hot-plug waits about 5 s; TCG is slow). */
const NIC_UNPLUG_TIMEOUT_MS = 30_000;

/** NICs seen through the agent, and attached and detached while the guest runs. */
export function createVmLiveNics(c: VmContext): Pick<GuestDriver, 'observeNics' | 'attachNic' | 'detachNic'> {
  const { ctx, self, log, pathsOf, agents, readBoot, liveQemu, withQmp, runningQemu } = c;
  return {
    // Through the agent, like exec: QEMU's own view (query-rx-filter, link state) knows no addresses.
    async observeNics(spec, { process, timeoutMs }) {
      if (!(await liveQemu(spec, process))) throw failedPrecondition(`Guest ${spec.name} is not running.`);
      const boot = await readBoot(spec);
      if (bootOf(boot) === 'kernel') {
        throw notSupported(`Guest ${spec.name} boots its own kernel without the guest agent.`);
      }
      if (bootOf(boot) === 'firmware') {
        // Its own OS: its own agent's view (guest-network-get-interfaces), when it runs one.
        if (!(await agents.ping(pathsOf(spec).agentSocket, { timeoutMs: Math.min(timeoutMs, 3000) }))) {
          throw notSupported(`Guest ${spec.name} runs no guest agent (qemu-guest-agent).`);
        }
        return {
          interfaces: await agents.use(pathsOf(spec).agentSocket, { timeoutMs }, (c) =>
            agentInterfaces(
              c.command<AgentInterface[]>('guest-network-get-interfaces', undefined, { timeoutMs }),
            ),
          ),
          engineErrors: [],
        };
      }
      return {
        interfaces: await probeGuestNics((g, o) => self().exec(g, o), spec, { timeoutMs }),
        engineErrors: [],
      };
    },
    // A tap on the bridge as at start, then QMP: netdev_add on it and a virtio-net device on a
    // free NIC root port (q35) or the root bus (pc, ACPI hot-plug).
    async attachNic(spec, nic) {
      if (!ctx.network) throw failedPrecondition('Networking is not set up on this host.');
      await runningQemu(spec);
      const machine = (await readBoot(spec))?.machine ?? 'q35';
      if (machine === 'microvm') {
        throw failedPrecondition(
          `Guest ${spec.name} is a microvm, which has no hot-plug: stop it, attach the NIC and start it again`,
        );
      }
      const boot = await readBoot(spec);
      const t = await ctx.network.plugTap(spec, nic);
      const ids = nicEngineIds(nic);
      try {
        await withQmp(spec, async (q) => {
          // QEMU cannot open /dev/net/tun: the daemon attaches to the tap and hands it over
          // (getfd), and netdev_add takes it by that name.
          await q.executeWithFds('getfd', { fdname: ids.netdev }, [{ kind: 'tap', name: t.tap }]);
          try {
            await q.execute('netdev_add', { type: 'tap', id: ids.netdev, fd: ids.netdev });
          } catch (e) {
            await q.execute('closefd', { fdname: ids.netdev }).catch(() => {});
            throw e;
          }
          try {
            await addOnFreePort(q, 'nic', {
              machine,
              device: {
                driver: nicDriverOf(boot?.nicModel ?? 'virtio'),
                id: ids.device,
                netdev: ids.netdev,
                mac: t.mac,
              },
            });
          } catch (e) {
            await q.execute('netdev_del', { id: ids.netdev }).catch(() => {});
            throw e instanceof NoFreePortError
              ? failedPrecondition(
                  `Guest ${spec.name} has no free hot-plug port for a NIC (it has ${portCount('nic')}, one per NIC; a guest started before NIC hot-plug existed has none): stop it, attach the NIC and start it again`,
                )
              : e;
          }
        });
      } catch (e) {
        await ctx.network.unplugNic(spec, nic);
        throw e;
      }
      // An OS of its own brings its NICs up itself (udev, its network manager); the kit's are set here.
      if (bootOf(boot) !== 'kit') return 'live';
      const r = await runGuestScript(
        (g, o) => self().exec(g, o),
        spec,
        nicUpScript({ name: nic, mac: t.mac, cidr: t.cidr, mtu: t.mtu }),
      ).catch((e) => ({ code: -1, output: String(e) }));
      if (r.code !== 0)
        log.warn({ guest: spec.name, nic, err: r.output }, 'the guest did not set up a hot-plugged NIC');
      return 'live';
    },
    // device_del needs the guest's consent (PCIe native hot-plug): wait for DEVICE_DELETED.
    async detachNic(spec, nic) {
      const ids = nicEngineIds(nic);
      if (await liveQemu(spec)) {
        await withQmp(spec, async (q) => {
          let deleted: () => void = () => {};
          const gone = new Promise<void>((resolve) => {
            deleted = resolve;
          });
          const off = q.onEvent((ev) => {
            if (ev.event === 'DEVICE_DELETED' && ev.data.device === ids.device) deleted();
          });
          try {
            let present = true;
            try {
              await q.execute('device_del', { id: ids.device });
            } catch (e) {
              const m = e instanceof Error ? e.message : String(e);
              if (/does not support hotplugging|not hotpluggable/i.test(m)) {
                throw failedPrecondition(
                  `NIC ${nic} of ${spec.name} sits on a bus without hot-plug: stop the guest to detach it`,
                );
              }
              // Not found: unplugged already, or a NIC of a guest started before NICs had ids
              // (removing its tap below cuts it off all the same).
              present = false;
            }
            if (present) {
              const timer = new Promise<'timeout'>((r) =>
                setTimeout(() => r('timeout'), NIC_UNPLUG_TIMEOUT_MS).unref(),
              );
              if ((await Promise.race([gone, timer])) === 'timeout') {
                throw unavailable(
                  `Guest ${spec.name} did not release NIC ${nic} within ${NIC_UNPLUG_TIMEOUT_MS / 1000} s (is it busy?): detach again, or stop the guest`,
                );
              }
            }
            await q.execute('netdev_del', { id: ids.netdev }).catch(() => {});
          } finally {
            off();
          }
        });
      }
      await ctx.network?.unplugNic(spec, nic);
      return 'live';
    },
  };
}

/** One interface as QEMU's guest agent reports it (guest-network-get-interfaces). */
interface AgentInterface {
  name: string;
  'hardware-address'?: string;
  'ip-addresses'?: Array<{ 'ip-address-type': string; 'ip-address': string }>;
}

/** The agent's interfaces as the NIC observer takes them: IPv4 addresses, loopback left out. */
async function agentInterfaces(reply: Promise<AgentInterface[]>): Promise<GuestInterface[]> {
  return (await reply)
    .filter((i) => i.name !== 'lo')
    .map((i) => ({
      name: i.name,
      ...(i['hardware-address'] !== undefined && { mac: i['hardware-address'].toLowerCase() }),
      addresses: (i['ip-addresses'] ?? [])
        .filter((a) => a['ip-address-type'] === 'ipv4')
        .map((a) => a['ip-address']),
    }));
}
