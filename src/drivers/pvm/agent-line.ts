import { constants, openSync } from 'node:fs';
import { Socket } from 'node:net';
import { Duplex } from 'node:stream';

/**
 * Opens the host end of a pvm guest's agent line: two FIFOs that the UML
 * kernel holds open read-write as `ssl1=fd:3,fd:4` (input, output). Unlike a
 * pty, a FIFO the kernel itself holds never hangs up, so the line survives
 * any number of host openers coming and going (a restarted daemon). A pty
 * would not: when its last host opener closes it, UML reads EIO and shuts the
 * serial line down for good. Bytes nobody read stay in the FIFO; the QGA
 * client resynchronises with guest-sync-delimited.
 */
export function openAgentLine(inPath: string, outPath: string): Duplex {
  // Non-blocking opens never wait: the kernel holds both FIFOs open read-write.
  const toGuest = new Socket({
    fd: openSync(inPath, constants.O_WRONLY | constants.O_NONBLOCK),
    readable: false,
    writable: true,
  });
  const fromGuest = new Socket({
    fd: openSync(outPath, constants.O_RDONLY | constants.O_NONBLOCK),
    readable: true,
    writable: false,
  });
  const line = new Duplex({
    read() {
      fromGuest.resume();
    },
    write(chunk: Buffer, _encoding, callback) {
      toGuest.write(chunk, callback);
    },
    final(callback) {
      toGuest.end(callback);
    },
    destroy(err, callback) {
      toGuest.destroy();
      fromGuest.destroy();
      callback(err);
    },
  });
  fromGuest.on('data', (d: Buffer) => {
    if (!line.push(d)) fromGuest.pause();
  });
  fromGuest.on('end', () => line.push(null));
  for (const s of [toGuest, fromGuest]) {
    s.on('error', (e) => line.destroy(e));
    // An idle line must not keep a stopping daemon alive: the guest outlives it anyway.
    s.unref();
  }
  return line;
}
