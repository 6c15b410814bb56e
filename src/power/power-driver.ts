import { invalidArgument } from '../core/errors.ts';
import type { MemberPowerConfig } from '../core/power-keys.ts';
import type { Logger } from '../host/logger.ts';
import type { ProcessRunner } from '../host/runner.ts';
import { createCommandDriver } from './command-driver.ts';
import { createIpmiDriver } from './ipmi-driver.ts';
import { createWolDriver, type UdpSend } from './wol-driver.ts';

/** What a member's power is, as its driver can tell (`unknown` when it cannot). */
export type PowerStatus = 'on' | 'off' | 'unknown';

/**
 * One member's power switch (issue 14 §3, decision 0055): IPMI, Wake-on-LAN or commands of the
 * administrator's, behind one interface so that the power manager never knows which. Each call
 * returns once the request was made, not once the host is up or down: the controller watches the
 * member's heartbeat for that.
 */
export interface PowerDriver {
  readonly kind: MemberPowerConfig['driver'];
  powerOn(): Promise<void>;
  powerOff(): Promise<void>;
  status(): Promise<PowerStatus>;
}

/** What the drivers are given: the process runner, and for Wake-on-LAN a UDP sender. */
export interface PowerDriverDeps {
  runner: ProcessRunner;
  log: Logger;
  /** Default: node:dgram with broadcast on. */
  udpSend?: UdpSend;
}

/** The driver a member's `member.NAME.power.*` keys describe. */
export function createPowerDriver(
  member: string,
  config: MemberPowerConfig,
  deps: PowerDriverDeps,
): PowerDriver {
  switch (config.driver) {
    case 'command':
      return createCommandDriver(member, config, deps);
    case 'ipmi':
      return createIpmiDriver(member, config, deps);
    case 'wol':
      return createWolDriver(member, config, deps);
    default:
      throw invalidArgument(`Member ${member} has no power driver configured`);
  }
}
