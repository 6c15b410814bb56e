import { spawn } from 'node:child_process';
import { accessSync, constants } from 'node:fs';

/**
 * Where promtool is: setup/test unpacks it from Debian's prometheus package into
 * /opt/trivisor/tools (ensure_promtool in setup/common.sh), else the PATH's. Missing, it is
 * an error that says how to get it: a check that cannot run must not pass.
 */
export function promtoolPath(): string {
  const candidates = [
    process.env.TRIVISOR_PROMTOOL,
    '/opt/trivisor/tools/promtool',
    ...(process.env.PATH ?? '').split(':').map((d) => `${d}/promtool`),
  ];
  for (const c of candidates) {
    if (!c) continue;
    try {
      accessSync(c, constants.X_OK);
      return c;
    } catch {}
  }
  throw new Error('promtool not found: run setup/test (it unpacks promtool into /opt/trivisor/tools)');
}

/** Runs promtool with `args`, `input` on its stdin; its exit code and everything it printed. */
export function promtool(args: string[], input = ''): Promise<{ code: number; output: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(promtoolPath(), args, { stdio: ['pipe', 'pipe', 'pipe'] });
    let output = '';
    child.stdout.on('data', (d: Buffer) => {
      output += d.toString();
    });
    child.stderr.on('data', (d: Buffer) => {
      output += d.toString();
    });
    child.on('error', reject);
    child.on('close', (code) => resolve({ code: code ?? 1, output }));
    child.stdin.end(input);
  });
}
