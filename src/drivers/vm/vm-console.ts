import { randomBytes } from 'node:crypto';
import { failedPrecondition } from '../../core/errors.ts';
import type { GuestDriver } from '../guest-driver.ts';
import { connectSerialConsole } from './serial-console.ts';
import type { VmContext } from './vm-context.ts';
import { keyPresses, openDisplay, screenshotPng, sendKeys } from './vm-display.ts';

/** The serial console and the display (VNC over QMP, screenshots, keys). */
export function createVmConsole(
  c: VmContext,
): Pick<GuestDriver, 'attachConsole' | 'consoleLogPath' | 'attachDisplay' | 'screenshot' | 'sendKeys'> {
  const { pathsOf, consoles, withQmp, runStatus, runningQemu, runningDisplay } = c;
  return {
    async attachConsole(spec) {
      await runningQemu(spec);
      return consoles.claim(spec.name, () =>
        connectSerialConsole(pathsOf(spec).consoleSocket, { guestName: spec.name }),
      );
    },
    consoleLogPath(spec) {
      return pathsOf(spec).consoleLog;
    },
    async attachDisplay(spec) {
      await runningDisplay(spec);
      const id = randomBytes(4).toString('hex');
      return withQmp(spec, (q) => openDisplay(q, id));
    },
    async screenshot(spec) {
      await runningDisplay(spec);
      return withQmp(spec, (q) => screenshotPng(q, pathsOf(spec).dir));
    },
    async sendKeys(spec, keys) {
      const presses = keyPresses(keys);
      await runningDisplay(spec);
      if ((await runStatus(spec)) === 'paused') {
        throw failedPrecondition(`Guest ${spec.name} is frozen: unfreeze it first.`);
      }
      await withQmp(spec, (q) => sendKeys(q, presses));
    },
  };
}
