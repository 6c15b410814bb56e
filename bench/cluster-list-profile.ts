// Where the time of `GET /1.0/guests?recursion=1` goes on a cluster member (bench/cluster-list.ts
// runs it inside the member's network namespace, after its measurements). Each stage of the list
// path timed apart, in this process, on the member's own data:
//   - the store's range reads: the three prefixes the guest service reads side by side (specs,
//     statuses, NIC observations), through the project's etcd client with the member's own
//     certificate (gRPC over TLS, protobuf decoding), as the daemon opens it;
//   - decoding: each record's JSON parse and schema check (src/store/records.ts);
//   - serializing the answer: the list route's response schema through fast-json-stringify, as
//     Fastify compiles it (a union of "guests" and "URLs", which fast-json-stringify decides by
//     validating the whole list against each side with Ajv first), against the same serializer
//     without the union, and JSON.stringify.
// Usage: node bench/cluster-list-profile.ts STATE_DIR ENDPOINT SOCKET [runs=30]   (prints JSON)
import http from 'node:http';
import { Type } from '@sinclair/typebox';
import fastJsonStringify from 'fast-json-stringify';
import { GuestSchema, SyncEnvelope } from '../src/api/schemas.ts';
import { clusterPaths } from '../src/cluster/cluster-files.ts';
import { openEtcdStore } from '../src/store/etcd-store.ts';
import type { KeyValue } from '../src/store/kv.ts';
import { records } from '../src/store/records.ts';
import { ms, percentile } from './lib.ts';

const [stateDir, endpoint, socket, runsArg] = process.argv.slice(2);
if (!stateDir || !endpoint || !socket)
  throw new Error('usage: cluster-list-profile.ts STATE_DIR ENDPOINT SOCKET [runs]');
const runs = Number(runsArg ?? 30);

const paths = clusterPaths(stateDir);
const store = await openEtcdStore({
  endpoints: [endpoint],
  tls: { caFile: paths.caCert, certFile: paths.cert, keyFile: paths.key },
});

/** p50 and p95 of `runs` timings of `fn` (after three unmeasured ones). */
async function time(fn: () => unknown | Promise<unknown>): Promise<{ p50Ms: number; p95Ms: number }> {
  for (let i = 0; i < 3; i++) await fn();
  const xs: number[] = [];
  for (let i = 0; i < runs; i++) {
    const t0 = process.hrtime.bigint();
    await fn();
    xs.push(ms(process.hrtime.bigint() - t0));
  }
  return { p50Ms: percentile(xs, 50), p95Ms: percentile(xs, 95) };
}

function getBody(urlPath: string): Promise<string> {
  return new Promise((resolve, reject) => {
    http
      .get({ socketPath: socket, path: urlPath, agent: false }, (res) => {
        let text = '';
        res.setEncoding('utf8');
        res.on('data', (c: string) => {
          text += c;
        });
        res.on('end', () => resolve(text));
        res.on('error', reject);
      })
      .on('error', reject);
  });
}

try {
  const prefixes = [records.guest, records.guestStatus, records.guestNetwork] as const;
  let kvs: KeyValue[][] = [];
  const rangeReads = await time(async () => {
    kvs = (await Promise.all(prefixes.map((p) => store.list(p.prefix)))).map((r) => r.kvs);
  });
  // The same three prefixes as one read-only transaction: one call, one linearizable read.
  const oneTxn = await time(() =>
    store.txn({ compare: [], success: prefixes.map((p) => ({ type: 'get', key: p.prefix, prefix: true })) }),
  );
  const storedBytes = kvs.flat().reduce((a, kv) => a + kv.key.length + kv.value.length, 0);
  const decode = await time(() => {
    prefixes.forEach((p, i) => {
      for (const kv of kvs[i] ?? []) (p.decode as (kv: KeyValue) => unknown)(kv);
    });
  });
  const body = await getBody('/1.0/guests?recursion=1');
  const envelope = JSON.parse(body) as { metadata: unknown[] };
  const routeSchema = fastJsonStringify(
    SyncEnvelope(Type.Union([Type.Array(GuestSchema), Type.Array(Type.String())])),
  );
  const plainSchema = fastJsonStringify(SyncEnvelope(Type.Array(GuestSchema)));
  // The route's serializer must give the answer the daemon gave (else its timing means nothing).
  const routeBytes = Buffer.byteLength(routeSchema(envelope));
  if (routeBytes !== Buffer.byteLength(body)) {
    throw new Error(`the route's serializer gave ${routeBytes} bytes, the daemon ${Buffer.byteLength(body)}`);
  }
  const serializeRoute = await time(() => routeSchema(envelope));
  const serializeNoUnion = await time(() => plainSchema(envelope));
  const serializeJson = await time(() => JSON.stringify(envelope));
  console.log(
    JSON.stringify({
      guests: envelope.metadata.length,
      records: kvs.map((k) => k.length),
      storedBytes,
      answerBytes: Buffer.byteLength(body),
      rangeReads,
      oneTxn,
      decode,
      serializeRoute,
      serializeNoUnion,
      serializeJson,
    }),
  );
} finally {
  await store.close();
}
