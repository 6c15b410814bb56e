import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { finished } from 'node:stream/promises';
import { type Command, Option } from 'commander';
import { TrivisorApiError } from '../client/api-error.ts';
import type { TrivisorClient } from '../client/client.ts';
import type { ConsoleHandle } from '../client/console-stream.ts';
import { clientOf, collect } from './context.ts';

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

/** `console NAME [--show-log | --follow | --type vga | --screenshot FILE | --send-keys K | --type-text T]`. */
export function addConsoleCommand(program: Command): void {
  program
    .command('console')
    .description(
      "Attach to a guest's console (vm and pvm; Ctrl-a q detaches), or show or follow its log (all models)",
    )
    .argument('<name>')
    .option('--show-log', 'print the console log and exit')
    .option('--follow', 'follow the console log (output only) instead of attaching')
    .addOption(
      new Option(
        '--type <type>',
        "console (the serial console) or vga (a vm guest's screen, for a VNC viewer)",
      )
        .choices(['console', 'vga'])
        .default('console'),
    )
    .option(
      '--listen <socket-or-address>',
      'with --type vga: where the local VNC viewer connects, a unix socket path or 127.0.0.1:PORT (default: a new unix socket)',
    )
    .option('--screenshot <file>', "save a vm guest's screen as PNG and exit")
    .option(
      '--send-keys <keys>',
      'press a key combination on a vm guest, e.g. ctrl-alt-del (repeatable)',
      collect,
      [],
    )
    .option('--type-text <text>', "type text on a vm guest's keyboard (after --send-keys; \\n for Enter)")
    .action(
      async (
        name: string,
        opts: {
          showLog?: boolean;
          follow?: boolean;
          type: 'console' | 'vga';
          listen?: string;
          screenshot?: string;
          sendKeys: string[];
          typeText?: string;
        },
        cmd: Command,
      ) => {
        const client = clientOf(cmd);
        if (opts.screenshot !== undefined) {
          const png = await client.screenshot(name);
          await writeFile(opts.screenshot, png);
          process.stderr.write(`Saved the screen of ${name} to ${opts.screenshot} (${png.length} bytes)\n`);
          return;
        }
        if (opts.sendKeys.length > 0 || opts.typeText !== undefined) {
          await client.sendKeys(name, {
            ...(opts.sendKeys.length > 0 && { keys: opts.sendKeys }),
            ...(opts.typeText !== undefined && { text: opts.typeText.replace(/\\n/g, '\n') }),
          });
          return;
        }
        if (opts.type === 'vga') {
          await serveDisplay(client, name, opts.listen);
          return;
        }
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
      },
    );
}

/**
 * Relays a vm guest's display to a local VNC viewer: a unix socket (or a loopback TCP port)
 * here, and for every viewer that connects, a display WebSocket to the daemon. Runs until
 * Ctrl-C. Nothing on the daemon's host listens: the daemon hands each connection to QEMU.
 */
async function serveDisplay(client: TrivisorClient, name: string, listen: string | undefined): Promise<void> {
  // Checked before anything listens: a guest without a display is this command's error.
  const first = await client.attachDisplay(name);
  let pending: ConsoleHandle | undefined = first;
  const dir = listen === undefined ? await mkdtemp(join(tmpdir(), 'trivisor-vnc-')) : undefined;
  const address = listen ?? join(dir ?? '', `${name}.sock`);
  const tcp = /^[^/]*:\d+$/.exec(address) !== null;
  const server = createServer((local) => {
    const take = pending;
    pending = undefined;
    (take ? Promise.resolve(take) : client.attachDisplay(name)).then(
      (remote) => {
        remote.output.pipe(local);
        local.pipe(remote.input);
        local.on('close', () => remote.close());
        local.on('error', () => remote.close());
        void remote.closed.then(() => local.destroy());
      },
      (e: unknown) => {
        process.stderr.write(
          `Cannot open the display of ${name}: ${e instanceof Error ? e.message : String(e)}\n`,
        );
        local.destroy();
      },
    );
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    if (tcp) {
      const i = address.lastIndexOf(':');
      server.listen(Number(address.slice(i + 1)), address.slice(0, i) || '127.0.0.1', resolve);
    } else server.listen(address, resolve);
  });
  const where = tcp ? `${address} (TCP)` : address;
  process.stderr.write(
    `The display of ${name} is at ${where}: connect a VNC viewer (e.g. vncviewer ${tcp ? address.replace(/:(\d+)$/, '::$1') : address}). Press Ctrl-C to stop.\n`,
  );
  process.stdout.write(`${address}\n`);
  await new Promise<void>((resolve) => {
    const stop = () => resolve();
    process.once('SIGINT', stop);
    process.once('SIGTERM', stop);
  });
  pending?.close();
  server.close();
  if (dir) await rm(dir, { recursive: true, force: true });
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
