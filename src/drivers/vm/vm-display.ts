import { randomBytes } from 'node:crypto';
import { readFile, rm } from 'node:fs/promises';
import type { Socket } from 'node:net';
import { join } from 'node:path';
import { invalidArgument } from '../../core/errors.ts';
import type { KeyInput } from '../guest-driver.ts';
import type { QmpClient } from './qmp-client.ts';

/**
 * A vm guest's screen (`vm.display`): QEMU's VGA device and its VNC server, which has no
 * listening socket (`-vnc none`). Each viewer is one end of a socket pair handed to QEMU
 * (`getfd` then `add_client`), the other end the daemon relays; screenshots are `screendump`
 * into a file the daemon opened; keys are `send-key`. QEMU runs as the guest's uid and opens
 * nothing of the state dir by name (decision 19), so every file and socket is a descriptor.
 */

/** How long `screendump` may take (it waits for the next screen update; TCG is slow). */
const SCREENDUMP_TIMEOUT_MS = 30_000;

/** A new VNC connection to the guest's display: the daemon's end of it, paused until its reader resumes it. */
export async function openDisplay(q: QmpClient, id: string): Promise<Socket> {
  const fdname = `vnc-${id}`;
  const end = await q.getfdPair(fdname);
  try {
    // skipauth: the viewer was authorised by the API; nothing else can reach this socket.
    await q.execute('add_client', { protocol: 'vnc', fdname, skipauth: true });
  } catch (e) {
    await q.execute('closefd', { fdname }).catch(() => {});
    end.destroy();
    throw e;
  }
  return end;
}

/**
 * The screen as PNG: QEMU writes it into a file the daemon created (root's, in the guest dir,
 * handed over as an fd set), which is read and removed.
 */
export async function screenshotPng(q: QmpClient, guestDir: string): Promise<Buffer> {
  const file = join(guestDir, `.tmp-screen-${randomBytes(4).toString('hex')}.png`);
  try {
    const added = await q.executeWithFds<{ 'fdset-id': number }>('add-fd', { opaque: file }, [
      { kind: 'file', path: file, access: 'truncate' },
    ]);
    try {
      await q.execute(
        'screendump',
        { filename: `/dev/fdset/${added['fdset-id']}`, format: 'png' },
        { timeoutMs: SCREENDUMP_TIMEOUT_MS },
      );
    } finally {
      await q.execute('remove-fd', { 'fdset-id': added['fdset-id'] }).catch(() => {});
    }
    return await readFile(file);
  } finally {
    await rm(file, { force: true });
  }
}

/** Key combinations `send-key` takes by name (a `-` between QEMU qcodes also works: `ctrl-alt-f2`). */
export const KEY_COMBOS: Record<string, string[]> = {
  'ctrl-alt-del': ['ctrl', 'alt', 'delete'],
  'ctrl-alt-delete': ['ctrl', 'alt', 'delete'],
};

/** QEMU's qcodes by the character they type on a US keyboard (shifted ones below). */
const PLAIN: Record<string, string> = {
  ' ': 'spc',
  '\n': 'ret',
  '\t': 'tab',
  '-': 'minus',
  '=': 'equal',
  '[': 'bracket_left',
  ']': 'bracket_right',
  '\\': 'backslash',
  ';': 'semicolon',
  "'": 'apostrophe',
  '`': 'grave_accent',
  ',': 'comma',
  '.': 'dot',
  '/': 'slash',
};
const SHIFTED: Record<string, string> = {
  '!': '1',
  '@': '2',
  '#': '3',
  $: '4',
  '%': '5',
  '^': '6',
  '&': '7',
  '*': '8',
  '(': '9',
  ')': '0',
  _: 'minus',
  '+': 'equal',
  '{': 'bracket_left',
  '}': 'bracket_right',
  '|': 'backslash',
  ':': 'semicolon',
  '"': 'apostrophe',
  '~': 'grave_accent',
  '<': 'comma',
  '>': 'dot',
  '?': 'slash',
};

/** The qcodes that type one character on a US keyboard layout, or undefined when it has no key. */
export function qcodesOf(char: string): string[] | undefined {
  if (/^[a-z0-9]$/.test(char)) return [char];
  if (/^[A-Z]$/.test(char)) return ['shift', char.toLowerCase()];
  const plain = PLAIN[char];
  if (plain) return [plain];
  const shifted = SHIFTED[char];
  return shifted ? ['shift', /^\d$/.test(shifted) ? shifted : (PLAIN[shifted] ?? shifted)] : undefined;
}

/** Most characters one request may type (each is a key press the guest handles in turn). */
export const MAX_TYPED_CHARS = 4096;

/** The `send-key` argument lists of a request, in order; InvalidArgument for what no key types. */
export function keyPresses(input: KeyInput): string[][] {
  const presses: string[][] = [];
  for (const combo of input.combos ?? []) {
    const keys = KEY_COMBOS[combo.toLowerCase()] ?? combo.toLowerCase().split('-');
    if (keys.length === 0 || keys.some((k) => !/^[a-z0-9_]+$/.test(k))) {
      throw invalidArgument(`${JSON.stringify(combo)} is not a key combination: write e.g. ctrl-alt-del`);
    }
    presses.push(keys);
  }
  const text = input.text ?? '';
  if ([...text].length > MAX_TYPED_CHARS) {
    throw invalidArgument(`The text to type is longer than ${MAX_TYPED_CHARS} characters: send it in parts`);
  }
  for (const char of text) {
    const keys = qcodesOf(char);
    if (!keys) {
      throw invalidArgument(
        `${JSON.stringify(char)} cannot be typed on a US keyboard: type ASCII letters, digits, punctuation, space, tab and newline`,
      );
    }
    presses.push(keys);
  }
  return presses;
}

/** Presses the keys through QEMU's keyboard (the guest sees a PS/2 keyboard). */
export async function sendKeys(q: QmpClient, presses: readonly string[][]): Promise<void> {
  for (const keys of presses) {
    try {
      await q.execute('send-key', { keys: keys.map((data) => ({ type: 'qcode', data })) });
    } catch (e) {
      const m = e instanceof Error ? e.message : String(e);
      if (/Parameter 'keys.*' does not accept|invalid|unknown/i.test(m)) {
        throw invalidArgument(`QEMU has no key ${keys.join('-')}: use QEMU's qcode names`);
      }
      throw e;
    }
  }
}
