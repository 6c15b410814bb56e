import { failedPrecondition } from './errors.ts';
import type { GuestStatusName } from './types.ts';

/** Actions an administrator can ask of a guest through `/state` or delete. */
export type GuestAction = 'start' | 'stop' | 'restart' | 'freeze' | 'unfreeze' | 'delete' | 'exec';

const ALLOWED: Record<GuestAction, readonly GuestStatusName[]> = {
  start: ['Stopped', 'Error'],
  stop: ['Running', 'Frozen', 'Error'],
  restart: ['Running', 'Frozen'],
  freeze: ['Running'],
  unfreeze: ['Frozen'],
  delete: ['Stopped', 'Error'],
  exec: ['Running'],
};

const HINT: Record<GuestAction, string> = {
  start: 'stop it first or use restart',
  stop: 'it is not running',
  restart: 'start it instead',
  freeze: 'only a running guest can be frozen',
  unfreeze: 'only a frozen guest can be unfrozen',
  delete: 'stop it first or pass --force',
  exec: 'start it first',
};

/** Whether `action` is allowed in `status` (youki's can_pause(), Firecracker's state guards). */
export function canDo(action: GuestAction, status: GuestStatusName): boolean {
  return ALLOWED[action].includes(status);
}

/** Throws FailedPrecondition with a one-line reason when `action` is not allowed in `status`. */
export function assertCanDo(action: GuestAction, name: string, status: GuestStatusName): void {
  if (!canDo(action, status)) {
    throw failedPrecondition(`Cannot ${action} guest ${name}: it is ${status}; ${HINT[action]}`);
  }
}
