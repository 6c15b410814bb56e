import type { GuestSpec } from '../../src/core/types.ts';
import type { GuestDriver } from '../../src/drivers/guest-driver.ts';

/** What a finished exec printed and returned. */
export interface ExecResult {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs a command in a guest to completion (killing it after `timeoutMs`) and collects its output. */
export async function execIn(
  driver: GuestDriver,
  spec: GuestSpec,
  command: string[],
  options: { input?: string; tty?: boolean; timeoutMs?: number; env?: Record<string, string> } = {},
): Promise<ExecResult> {
  const session = await driver.exec(spec, {
    command,
    env: options.env ?? {},
    tty: options.tty ?? false,
    columns: 100,
    rows: 30,
  });
  const out: Buffer[] = [];
  const err: Buffer[] = [];
  session.stdout.on('data', (d: Buffer) => out.push(d));
  session.stderr?.on('data', (d: Buffer) => err.push(d));
  const outDone = new Promise((r) => session.stdout.once('close', r).once('end', r));
  if (options.input !== undefined) session.stdin.write(options.input);
  // A tty session's stdin stays open: ending it would hang up the terminal before the command reads it.
  if (!options.tty) session.stdin.end();
  const timeoutMs = options.timeoutMs ?? 30_000;
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => {
      session.signal('SIGKILL');
      reject(new Error(`exec ${command.join(' ')} did not finish within ${timeoutMs}ms`));
    }, timeoutMs);
  });
  try {
    const code = await Promise.race([session.exit, timeout]);
    await Promise.race([outDone, new Promise((r) => setTimeout(r, 2000))]);
    return { code, stdout: Buffer.concat(out).toString('utf8'), stderr: Buffer.concat(err).toString('utf8') };
  } finally {
    clearTimeout(timer);
    session.stdin.destroy();
  }
}

/** Polls `check` until it returns true or `timeoutMs` passes. */
export async function eventually(
  check: () => Promise<boolean>,
  timeoutMs: number,
  intervalMs = 100,
): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (await check()) return true;
    if (Date.now() >= deadline) return false;
    await new Promise((r) => setTimeout(r, intervalMs));
  }
}
