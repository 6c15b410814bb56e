import type { MemberPowerConfig } from '../core/power-keys.ts';
import type { PowerDriver, PowerDriverDeps, PowerStatus } from './power-driver.ts';

const IPMI_TIMEOUT_MS = 30_000;

/**
 * The `ipmi` driver: `ipmitool -I lanplus` against the member's BMC, `chassis power on|off|status`.
 * The password is read by ipmitool from the file `member.NAME.power.ipmi.password_file` names
 * (`-f`): it is never on a command line, where `ps` would show it, nor in the store.
 */
export function createIpmiDriver(
  member: string,
  config: MemberPowerConfig,
  deps: PowerDriverDeps,
): PowerDriver {
  const argv = (action: 'on' | 'off' | 'status') => [
    'ipmitool',
    // Two tries of 2 s each, not ipmitool's longer defaults: a BMC that does not answer (or refuses
    // the password) fails the step in seconds, and the next cycle tries again.
    '-R',
    '2',
    '-N',
    '2',
    '-I',
    config.ipmiInterface ?? 'lanplus',
    '-H',
    config.ipmiHost ?? '',
    ...(config.ipmiPort !== undefined ? ['-p', String(config.ipmiPort)] : []),
    '-U',
    config.ipmiUser ?? '',
    '-f',
    config.ipmiPasswordFile ?? '',
    'chassis',
    'power',
    action,
  ];
  const run = (action: 'on' | 'off' | 'status') => {
    deps.log.debug({ member, action }, 'ipmitool chassis power');
    return deps.runner.run(argv(action), { timeoutMs: IPMI_TIMEOUT_MS });
  };
  return {
    kind: 'ipmi',
    async powerOn() {
      await run('on');
    },
    async powerOff() {
      await run('off');
    },
    async status(): Promise<PowerStatus> {
      // "Chassis Power is on" / "Chassis Power is off"
      const out = (await run('status')).stdout;
      return /power is on/i.test(out) ? 'on' : /power is off/i.test(out) ? 'off' : 'unknown';
    },
  };
}
