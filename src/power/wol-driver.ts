import { createSocket } from 'node:dgram';
import { invalidArgument } from '../core/errors.ts';
import type { MemberPowerConfig } from '../core/power-keys.ts';
import { createCommandDriver } from './command-driver.ts';
import type { PowerDriver, PowerDriverDeps } from './power-driver.ts';

/** Sends one UDP datagram (injected: the tests send into a namespace of their own). */
export type UdpSend = (packet: Buffer, options: { address: string; port: number }) => Promise<void>;

/** The Wake-on-LAN magic packet: 6 bytes of 0xff, then the MAC 16 times (102 bytes). */
export function magicPacket(mac: string): Buffer {
  const hex = mac.replace(/[:-]/g, '');
  if (!/^[0-9a-fA-F]{12}$/.test(hex)) throw invalidArgument(`${JSON.stringify(mac)} is not a MAC address`);
  const macBytes = Buffer.from(hex, 'hex');
  const out = Buffer.alloc(6 + 16 * 6, 0xff);
  for (let i = 0; i < 16; i++) macBytes.copy(out, 6 + i * 6);
  return out;
}

/** node:dgram, broadcast allowed, one socket per packet (a power-on is rare). */
export const dgramSend: UdpSend = (packet, { address, port }) =>
  new Promise((resolve, reject) => {
    const socket = createSocket('udp4');
    socket.once('error', (e) => {
      socket.close();
      reject(e);
    });
    socket.bind(() => {
      socket.setBroadcast(true);
      socket.send(packet, port, address, (e) => {
        socket.close();
        if (e) reject(e);
        else resolve();
      });
    });
  });

/**
 * The `wol` driver: power-on is the magic packet to `member.NAME.power.wol.mac`, sent to
 * `.wol.broadcast` (default 255.255.255.255) on UDP port `.wol.port` (default 9). Wake-on-LAN
 * cannot switch a host off: power-off (and status, if given) are the `command` driver's
 * `member.NAME.power.off` and `.status`, typically `ssh root@host systemctl poweroff` or a
 * PDU's command; the keys refuse `wol` without an off command (decision 0055).
 */
export function createWolDriver(
  member: string,
  config: MemberPowerConfig,
  deps: PowerDriverDeps,
): PowerDriver {
  const commands = createCommandDriver(member, config, deps);
  const send = deps.udpSend ?? dgramSend;
  return {
    kind: 'wol',
    async powerOn() {
      await send(magicPacket(config.wolMac ?? ''), {
        address: config.wolBroadcast ?? '255.255.255.255',
        port: config.wolPort ?? 9,
      });
    },
    powerOff: () => commands.powerOff(),
    status: () => commands.status(),
  };
}
