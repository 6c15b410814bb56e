import { type ChildProcess, spawn } from 'node:child_process';
import { closeSync, mkdirSync, openSync, readFileSync } from 'node:fs';
import { get as httpGet } from 'node:http';
import { get as httpsGet } from 'node:https';
import { createServer } from 'node:net';
import { join } from 'node:path';

/** A throwaway single-member etcd on loopback ports, its data and log in a test run's directory. */
export interface EtcdServer {
  /** `http://127.0.0.1:PORT` */
  clientUrl: string;
  dataDir: string;
  pid(): number | undefined;
  /** Starts it (again) on the same data and waits until it serves. */
  start(): Promise<void>;
  /** Stops it: SIGTERM (or SIGKILL), then waits for it to exit. */
  stop(signal?: 'SIGTERM' | 'SIGKILL'): Promise<void>;
}

/** A loopback TCP port nobody listens on right now. */
export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const address = server.address();
      server.close(() => (typeof address === 'object' && address ? resolve(address.port) : reject()));
    });
  });
}

/**
 * Makes (not yet starts) an etcd member named `name` under `runDir`. Its command line
 * names the run directory, so a sweep of a dead run kills it (test/leftovers.ts).
 */
export async function makeEtcdServer(
  runDir: string,
  name = 'etcd',
  options: { tls?: { caFile: string; certFile: string; keyFile: string } } = {},
): Promise<EtcdServer> {
  const [clientPort, peerPort] = [await freePort(), await freePort()];
  const dir = join(runDir, name);
  const dataDir = join(dir, 'data');
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  const { tls } = options;
  const clientUrl = `${tls ? 'https' : 'http'}://127.0.0.1:${clientPort}`;
  const peerUrl = `http://127.0.0.1:${peerPort}`;
  const tlsArgs = tls
    ? [
        `--cert-file=${tls.certFile}`,
        `--key-file=${tls.keyFile}`,
        `--trusted-ca-file=${tls.caFile}`,
        '--client-cert-auth',
      ]
    : [];
  const argv = [
    ...tlsArgs,
    `--name=${name}`,
    `--data-dir=${dataDir}`,
    `--listen-client-urls=${clientUrl}`,
    `--advertise-client-urls=${clientUrl}`,
    `--listen-peer-urls=${peerUrl}`,
    `--initial-advertise-peer-urls=${peerUrl}`,
    `--initial-cluster=${name}=${peerUrl}`,
    '--logger=zap',
    '--log-outputs=stderr',
  ];
  let child: ChildProcess | undefined;
  let exited: Promise<void> = Promise.resolve();

  const healthy = (): Promise<boolean> =>
    new Promise((resolve) => {
      const get = tls ? httpsGet : httpGet;
      const req = get(
        `${clientUrl}/health`,
        {
          timeout: 1000,
          ...(tls
            ? {
                ca: readFileSync(tls.caFile),
                cert: readFileSync(tls.certFile),
                key: readFileSync(tls.keyFile),
              }
            : {}),
        },
        (res) => {
          let body = '';
          res.on('data', (d: Buffer) => {
            body += d.toString();
          });
          res.on('end', () => resolve(res.statusCode === 200 && body.includes('"health":"true"')));
        },
      );
      req.on('error', () => resolve(false));
      req.on('timeout', () => req.destroy());
    });

  return {
    clientUrl,
    dataDir,
    pid: () => child?.pid,
    async start() {
      const log = openSync(join(dir, 'etcd.log'), 'a', 0o600);
      try {
        const started = spawn('etcd', argv, { stdio: ['ignore', log, log], detached: true });
        started.unref();
        child = started;
        exited = new Promise((resolve) => {
          if (started.exitCode !== null || started.signalCode !== null) resolve();
          else started.once('exit', () => resolve());
        });
      } finally {
        closeSync(log);
      }
      const deadline = Date.now() + 15_000;
      while (!(await healthy())) {
        if (child.exitCode !== null)
          throw new Error(`etcd exited with ${child.exitCode}; see ${dir}/etcd.log`);
        if (Date.now() > deadline) throw new Error(`etcd did not become healthy; see ${dir}/etcd.log`);
        await new Promise((resolve) => setTimeout(resolve, 50));
      }
    },
    async stop(signal = 'SIGTERM') {
      if (!child || child.exitCode !== null || child.signalCode !== null) return;
      // Unreferenced while it runs: waiting for its exit must keep this process alive.
      child.ref();
      child.kill(signal);
      await exited;
    },
  };
}
