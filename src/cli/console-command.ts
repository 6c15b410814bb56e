import { finished } from 'node:stream/promises';
import type { Command } from 'commander';
import { TrivisorApiError } from '../client/api-error.ts';
import type { TrivisorClient } from '../client/client.ts';
import type { ConsoleHandle } from '../client/console-stream.ts';
import { clientOf } from './context.ts';

/** Ctrl-a: the first key of the detach sequence Ctrl-a q (as `incus console` and screen have it). */
const ESCAPE = 0x01;
const DETACH_KEY = 0x71; // q

/** Turns what is typed into what goes to the console, spotting the detach sequence. */
export interface EscapeFilter {
  /** The bytes to send (up to a detach sequence), and whether the sequence was typed. */
  feed(chunk: Buffer): { data: Buffer; detach: boolean };
}

/**
 * Ctrl-a q detaches; Ctrl-a Ctrl-a sends one Ctrl-a; Ctrl-a followed by
 * anything else sends both. A Ctrl-a at the end of one chunk waits for the next.
 */
export function createEscapeFilter(): EscapeFilter {
  let pending = false;
  return {
    feed(chunk) {
      const out: number[] = [];
      for (const byte of chunk) {
        if (pending) {
          pending = false;
          if (byte === DETACH_KEY) return { data: Buffer.from(out), detach: true };
          if (byte === ESCAPE) out.push(ESCAPE);
          else out.push(ESCAPE, byte);
        } else if (byte === ESCAPE) {
          pending = true;
        } else {
          out.push(byte);
        }
      }
      return { data: Buffer.from(out), detach: false };
    },
  };
}

/** `console NAME [--show-log | --follow]`. */
export function addConsoleCommand(program: Command): void {
  program
    .command('console')
    .description(
      "Attach to a guest's console (vm and pvm; Ctrl-a q detaches), or show or follow its log (all models)",
    )
    .argument('<name>')
    .option('--show-log', 'print the console log and exit')
    .option('--follow', 'follow the console log (output only) instead of attaching')
    .action(async (name: string, opts: { showLog?: boolean; follow?: boolean }, cmd: Command) => {
      const client = clientOf(cmd);
      if (opts.showLog) {
        process.stdout.write(await client.consoleLog(name));
        return;
      }
      if (opts.follow) {
        await followLog(client, name, `Following the console log of ${name}. Press Ctrl-C to stop.\n`);
        return;
      }
      let handle: ConsoleHandle;
      try {
        handle = await client.attachConsole(name);
      } catch (e) {
        // ct consoles take no input (NotSupported, answered as 400): their log is what there is.
        if (!(e instanceof TrivisorApiError) || e.status !== 400) throw e;
        if ((await client.getGuest(name)).model !== 'ct') throw e;
        await followLog(
          client,
          name,
          `${e.message}\nFollowing the console log of ${name} instead (output only). Press Ctrl-C to stop.\n`,
        );
        return;
      }
      process.exitCode = await runAttached(handle, name);
    });
}

/** Prints `banner` and follows the log until Ctrl-C, which counts from the moment the banner says so. */
async function followLog(client: TrivisorClient, name: string, banner: string): Promise<void> {
  let interrupted = false;
  let close = () => {
    interrupted = true;
  };
  process.once('SIGINT', () => close());
  process.stderr.write(banner);
  const follow = await client.followConsole(name);
  if (interrupted) {
    follow.close();
    return;
  }
  close = () => follow.close();
  follow.stream.pipe(process.stdout, { end: false });
  await finished(follow.stream);
}

/** Joins the terminal (raw when it is one) and an attached console until detached or closed. */
async function runAttached(handle: ConsoleHandle, name: string): Promise<number> {
  const stdin = process.stdin;
  const rawMode = stdin.isTTY === true;
  const restore = () => {
    if (rawMode) stdin.setRawMode(false);
  };
  process.once('exit', restore);
  if (rawMode) {
    process.stderr.write('To detach from the console, press: <ctrl>+a q\r\n');
    stdin.setRawMode(true);
  }
  const filter = createEscapeFilter();
  const onData = (chunk: Buffer) => {
    const { data, detach } = filter.feed(chunk);
    if (data.length > 0) handle.input.write(data);
    if (detach) handle.close();
  };
  // Piped input: its end detaches (a script's lines have been typed).
  const onEnd = () => handle.close();
  const onSignal = () => handle.close();
  stdin.on('data', onData);
  stdin.once('end', onEnd);
  // In raw mode Ctrl-C is a byte for the guest; otherwise a signal here detaches.
  if (!rawMode) process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  handle.output.pipe(process.stdout, { end: false });
  try {
    const { reason } = await handle.closed;
    await finished(handle.output).catch(() => {});
    if (reason === 'detached') return 0;
    if (reason === 'console closed') {
      process.stderr.write(`\r\nThe console of ${name} closed: the guest stopped.\r\n`);
      return 0;
    }
    process.stderr.write(`\r\nThe console of ${name} closed: ${reason}\r\n`);
    return 1;
  } finally {
    restore();
    stdin.off('data', onData);
    stdin.off('end', onEnd);
    stdin.pause();
    stdin.unref?.();
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
  }
}
