/**
 * Runs Chromium in a network namespace of its own (the test's browser, test/web/browser.ts).
 *
 * Started as `unshare -n node netns-forward.ts SOCKET_DIR PORTS -- CHROMIUM ARGS…`: it brings the
 * namespace's loopback up, listens on 127.0.0.1:PORT there for each port and carries each
 * connection to the unix socket SOCKET_DIR/PORT.sock (a path socket reaches across namespaces),
 * where the test process carries it on to the host's 127.0.0.1:PORT. Then it runs Chromium with
 * its stdio and its DevTools pipe (fds 3 and 4) and exits when Chromium does, which ends the
 * namespace. More ports are added later through SOCKET_DIR/control.sock: a line with the port,
 * answered `ok` once it listens. Other tests add and remove bridges and veths on the host while a browser runs;
 * Chromium, which watches its namespace's links, failed requests with ERR_NETWORK_CHANGED.
 */
import { spawn, spawnSync } from 'node:child_process';
import { connect, createServer } from 'node:net';
import path from 'node:path';

const [socketDir, portList, dashes, chromium, ...args] = process.argv.slice(2);
if (!socketDir || !portList || dashes !== '--' || !chromium) {
  process.stderr.write('usage: netns-forward.ts SOCKET_DIR PORT[,PORT…] -- CHROMIUM ARGS…\n');
  process.exit(2);
}
const up = spawnSync('ip', ['link', 'set', 'lo', 'up'], { encoding: 'utf8' });
if (up.status !== 0) {
  process.stderr.write(`netns-forward: ip link set lo up: ${up.stderr || up.error}\n`);
  process.exit(1);
}
const listening = new Set<number>();
async function forward(port: number): Promise<void> {
  if (listening.has(port)) return;
  const server = createServer((client) => {
    const upstream = connect(path.join(socketDir as string, `${port}.sock`));
    client.pipe(upstream).pipe(client);
    client.on('error', () => upstream.destroy());
    upstream.on('error', () => client.destroy());
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, '127.0.0.1', resolve);
  });
  listening.add(port);
}
for (const port of portList.split(',').map(Number)) await forward(port);
const control = createServer((c) => {
  let line = '';
  c.setEncoding('utf8');
  c.on('data', (chunk: string) => {
    line += chunk;
    if (!line.includes('\n')) return;
    const port = Number(line.trim());
    forward(port).then(
      () => c.end('ok\n'),
      (e: Error) => c.end(`error ${e.message}\n`),
    );
  });
  c.on('error', () => c.destroy());
});
await new Promise<void>((resolve) => control.listen(path.join(socketDir, 'control.sock'), resolve));
const browser = spawn(chromium, args, { stdio: [0, 1, 2, 3, 4] });
browser.on('error', (e) => {
  process.stderr.write(`netns-forward: ${chromium}: ${e.message}\n`);
  process.exit(1);
});
// Playwright ends the browser by killing its process group, which is this one's.
browser.on('exit', (code, signal) => process.exit(code ?? (signal ? 1 : 0)));
