import { connect, type Socket } from 'node:net';
import { failedPrecondition, unavailable } from '../../core/errors.ts';

/** How long connecting to the console socket may take. */
const CONNECT_TIMEOUT_MS = 5_000;

/**
 * Connects to a vm guest's serial console: QEMU's chardev socket
 * (`server=on,wait=off,logfile=…`), which copies the guest's output to the
 * client and to console.log, and the client's bytes to the guest's ttyS0.
 * With no client QEMU drops the output (after logging it), so a detached
 * console never holds the guest up; a connected client must keep reading.
 */
export function connectSerialConsole(path: string, options: { guestName: string }): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const socket = connect(path);
    const timer = setTimeout(() => {
      socket.destroy();
      reject(unavailable(`Guest ${options.guestName}'s console did not answer within 5 s: try again`));
    }, CONNECT_TIMEOUT_MS);
    socket.once('connect', () => {
      clearTimeout(timer);
      socket.removeAllListeners('error');
      // Later failures surface as 'close'; an unheard 'error' would bring the daemon down.
      socket.on('error', () => {});
      resolve(socket);
    });
    socket.once('error', (e: NodeJS.ErrnoException) => {
      clearTimeout(timer);
      reject(
        e.code === 'ENOENT' || e.code === 'ECONNREFUSED'
          ? failedPrecondition(`Guest ${options.guestName} has no console socket: is it running?`)
          : unavailable(`Cannot reach guest ${options.guestName}'s console: ${e.message}`),
      );
    });
  });
}
