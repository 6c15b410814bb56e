import { constants, openSync } from 'node:fs';
import type { Socket } from 'node:net';
import { ReadStream } from 'node:tty';
import type { ProcessRunner } from '../../host/runner.ts';

/**
 * Opens the host end of a UML serial line (the slave side of the pty that
 * `ssl1=pts` allocated) as a duplex byte stream for the QGA client. The line
 * is made raw first: a cooked pty would echo the guest's answers back into
 * the guest and hold partial lines. Other openers may have left bytes on the
 * line; the QGA client resynchronises with guest-sync-delimited.
 */
export async function openAgentLine(ptyPath: string, options: { runner: ProcessRunner }): Promise<Socket> {
  await options.runner.run(['stty', '-F', ptyPath, 'raw', '-echo'], { timeoutMs: 5_000 });
  // A plain fd, not a FileHandle: the socket owns and closes it.
  const fd = openSync(ptyPath, constants.O_RDWR | constants.O_NOCTTY | constants.O_NONBLOCK);
  // A tty.ReadStream is a net.Socket over libuv's tty handle, which writes as well as it reads.
  return new ReadStream(fd);
}
