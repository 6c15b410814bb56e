import http from 'node:http';
import https from 'node:https';
import net from 'node:net';
import fc from 'fast-check';

/**
 * A property-based fuzzer of the daemon's API (issue 11), shared by the CI suite
 * (test/system/api-fuzz.test.ts, fixed seed, bounded count) and the longer benchmark run
 * (bench/fuzz-api.ts, random seed). Requests are made from docs/openapi.json: every route,
 * with path parameters, queries, headers, bodies and content types drawn from schema-shaped,
 * boundary and malformed values; plus raw malformed HTTP on the socket. What must hold:
 * no 5xx, every request answered in time, every error a one-line envelope naming no host
 * path, and a refused request changes nothing.
 *
 * Values that would make the fuzzer do real, costly or host-wide things when they happen to be
 * valid (a vm guest, a debootstrap build, a pool on `/`, a network on a routable subnet) come
 * from pools that hold only refusable or cheap ones: the fuzzer hunts for wrong answers to
 * user input, not for ways to fill the host.
 */

/** One request the fuzzer sends. */
export interface FuzzRequest {
  method: string;
  path: string;
  headers: Record<string, string>;
  body?: Buffer;
  /** The OpenAPI route it was made from (for the report). */
  route: string;
}

/** What came back. */
export interface FuzzAnswer {
  status: number;
  contentType: string;
  text: string;
  ms: number;
}

interface Schema {
  type?: string;
  enum?: unknown[];
  const?: unknown;
  anyOf?: Schema[];
  oneOf?: Schema[];
  properties?: Record<string, Schema>;
  required?: string[];
  additionalProperties?: boolean | Schema;
  items?: Schema;
  minItems?: number;
  minimum?: number;
  maximum?: number;
  maxLength?: number;
}

interface Parameter {
  name: string;
  in: 'path' | 'query' | 'header';
  required?: boolean;
  schema?: Schema;
}

interface Operation {
  parameters?: Parameter[];
  requestBody?: { content?: Record<string, { schema?: Schema }> };
}

/** A route of the OpenAPI document. */
export interface Route {
  method: string;
  /** `/1.0/guests/{name}` */
  template: string;
  op: Operation;
}

const METHODS = ['get', 'post', 'put', 'patch', 'delete'];

export function routesOf(openapi: { paths: Record<string, Record<string, Operation>> }): Route[] {
  const routes: Route[] = [];
  for (const [template, ops] of Object.entries(openapi.paths)) {
    for (const [method, op] of Object.entries(ops)) {
      if (METHODS.includes(method)) routes.push({ method: method.toUpperCase(), template, op });
    }
  }
  return routes;
}

/** Names of the objects the suite made, so that valid-shaped requests meet real ones. */
export interface FuzzFixtures {
  guests: string[];
  networks: string[];
  pools: string[];
  volumes: string[];
  snapshots: string[];
  images: string[];
  /** A directory the fuzzer may point pool sources at (inside the run's own dir). */
  scratchDir: string;
}

/** Strings at the edges of what names, paths and numbers may be. */
const BOUNDARY_STRINGS = [
  '',
  ' ',
  'a',
  'x'.repeat(63),
  'x'.repeat(64),
  'n'.repeat(300),
  'y'.repeat(5000),
  '..',
  '.',
  '/',
  '../../etc/passwd',
  '%2e%2e%2f',
  'a/b',
  'UPPER',
  'a_b',
  '-lead',
  'trail-',
  '0',
  '-1',
  '1e400',
  'NaN',
  'null',
  'true',
  '{}',
  '[]',
  'é',
  '名前',
  '\u0000',
  'a\nb',
  '\r\n',
  '\t',
  '$(reboot)',
  '`id`',
  "'; DROP TABLE guests; --",
  '%00',
  '%',
  '%zz',
  '\\',
  '*',
  '?',
  '#',
];

const BOUNDARY_NUMBERS = [
  0,
  -0,
  1,
  -1,
  2,
  1.5,
  -1.5,
  255,
  256,
  65535,
  65536,
  2 ** 31 - 1,
  2 ** 31,
  2 ** 32,
  2 ** 53,
  -(2 ** 53),
  1e300,
];

/** Config keys: known ones and lookalikes. */
const CONFIG_KEYS = [
  'limits.memory',
  'limits.cpu',
  'limits.processes',
  'limits.disk',
  'boot.autostart',
  'security.privileged',
  'security.isolated',
  'environment.FOO',
  'environment.',
  'files./etc/motd',
  'files./proc/x',
  'files.relative',
  `files./${'f'.repeat(300)}`,
  'user.note',
  'vm.machine',
  'ipv4.address',
  'ipv4.nat',
  'dns.domain',
  'size',
  'source',
  'limits.nope',
  'nope',
  '',
  'x'.repeat(300),
];

const SIZES = [
  '1MiB',
  '64MiB',
  '0',
  '-1',
  '1',
  'lots',
  '100TiB',
  '1e9',
  '1.5GiB',
  '256 MiB',
  '9'.repeat(40),
  '',
];

/**
 * Values for fields whose valid values would make costly or host-wide things. Exclusive: these
 * fields draw from here only, so that a random string can never be `/` or a real source.
 */
function exclusivePools(fx: FuzzFixtures): Record<string, unknown[]> {
  return {
    // Image builds: never a real debootstrap suite (25 s and the network).
    'image-source': [
      '',
      'nosuch/distro',
      'debian/',
      'debian/nosuch',
      'busybox/../x',
      'x'.repeat(300),
      7,
      null,
    ],
    // Pool sources: never an existing directory of the host's.
    'pool-source': [
      '',
      'relative/dir',
      '/nonexistent/fuzz',
      '/proc/fuzz',
      '/dev/null',
      `${fx.scratchDir}/missing/pool`,
      'x'.repeat(300),
    ],
    // Pool sizes: never one that makes a loop file.
    'pool-size': ['0', '-1', '1', 'lots', '100TiB', '255MiB', '', '1.5', 'NaN'],
    // Subnets: never one a network would be made on (routable, beyond the test range).
    'ipv4.address': [
      '',
      'x',
      '198.18.0.0/24',
      '198.18.0.255/24',
      '198.18.300.1/24',
      '198.18.5.1/32',
      '198.18.5.1/31',
      '198.18.5.1/0',
      '198.18.5.1/7',
      '198.18.5.1',
      '10.0.0.1/33',
      '-1.0.0.1/24',
      '198.18.5.1/24/24',
      '::1/64',
      '127.0.0.1/8',
    ],
    // Guest models: vm and pvm boots are too slow for a fuzz run.
    model: ['ct', 'CT', '', 'zz', 'vm ', null, 1],
    // Commands run in the fixture guest as root: harmless ones only.
    command: [['true'], ['/no/such/program'], [''], [], ['echo', 'x'.repeat(1000)], 'true', [1], null],
    'wait-for-websocket': [false, 'yes', 1, null],
  };
}

/** Interesting values by field name (not exclusive: random values come too). */
function fieldPools(fx: FuzzFixtures): Record<string, unknown[]> {
  const names = [...fx.guests, 'nosuch', 'fz-new', 'fz-new2'];
  return {
    name: names,
    guest: names,
    image: [...fx.images, 'nosuchimage'],
    alias: ['busybox', 'fz/alias', 'Bad Alias', ''],
    fingerprint: ['0'.repeat(64), 'abc', ''],
    network: [...fx.networks, 'nosuchnet'],
    pool: [...fx.pools, 'nosuchpool'],
    volume: [...fx.volumes, 'nosuchvol'],
    restore: [...fx.snapshots, 'nosuchsnap'],
    snapshot: [...fx.snapshots, 'nosuchsnap'],
    action: ['start', 'stop', 'restart', 'freeze', 'unfreeze', 'explode', ''],
    timeout: [0, 1, 2, -1, -2, 1e9, 'soon'],
    size: SIZES,
    path: ['/etc/motd', '/tmp/fz', '/proc/mounts', '/sys/fs/cgroup/x', 'relative', '/', '/a/../b', '/mnt/fz'],
    device: ['eth0', 'eth9', 'vol0', 'root', '', 'x'.repeat(300)],
    nic: ['eth0', 'eth1', 'nosuch'],
    hwaddr: ['00:16:3e:00:00:01', 'ff:ff:ff:ff:ff:ff', '01:00:5e:00:00:01', 'zz', ''],
    listenAddress: ['198.18.0.1', '0.0.0.0', '256.1.1.1', 'x'],
    target: [...fx.guests, '198.18.0.5', 'x'],
    protocol: ['tcp', 'udp', 'sctp', ''],
    type: ['filesystem', 'block', 'image', 'copy', 'nic', 'console', 'disk', 'x'],
    driver: ['dir', 'btrfs', 'zfs', ''],
    cwd: ['/', '/root', '/nonexistent', 'relative'],
    description: ['', 'd'.repeat(5000), 'ok'],
  };
}

/** Which exclusive pool a field uses on a given route (names are reused across routes). */
function exclusiveKey(route: Route, field: string, inConfig: boolean): string | undefined {
  if (field === 'source' && route.template === '/1.0/images' && !inConfig) return 'image-source';
  if (route.template.startsWith('/1.0/storage-pools') && inConfig && field === 'source') return 'pool-source';
  if (route.template === '/1.0/storage-pools' && inConfig && field === 'size') return 'pool-size';
  if (field === 'ipv4.address') return 'ipv4.address';
  if (field === 'model' && route.template === '/1.0/guests') return 'model';
  if (field === 'command') return 'command';
  if (field === 'wait-for-websocket') return 'wait-for-websocket';
  return undefined;
}

const anyString = (): fc.Arbitrary<string> =>
  fc.oneof(
    { weight: 3, arbitrary: fc.constantFrom(...BOUNDARY_STRINGS) },
    { weight: 1, arbitrary: fc.string({ maxLength: 20 }) },
    { weight: 1, arbitrary: fc.string({ unit: 'binary', maxLength: 12 }) },
  );

const anyJson = (): fc.Arbitrary<unknown> =>
  fc.oneof(
    fc.constantFrom(null, true, false, 0, -1, '', [], {}),
    fc.jsonValue({ maxDepth: 2 }),
    anyString(),
    fc.constantFrom(...BOUNDARY_NUMBERS),
  );

/** A schema-shaped value; `field` is the property name that holds it (for the pools). */
function fromSchema(
  schema: Schema | undefined,
  ctx: { route: Route; fx: FuzzFixtures; field: string; inConfig: boolean; depth: number },
): fc.Arbitrary<unknown> {
  const exclusive = exclusiveKey(ctx.route, ctx.field, ctx.inConfig);
  if (exclusive) return fc.constantFrom(...(exclusivePools(ctx.fx)[exclusive] ?? [null]));
  const pool = fieldPools(ctx.fx)[ctx.field];
  const shaped = shapedFromSchema(schema, ctx);
  if (!pool) return shaped;
  return fc.oneof({ weight: 3, arbitrary: fc.constantFrom(...pool) }, { weight: 2, arbitrary: shaped });
}

function shapedFromSchema(
  schema: Schema | undefined,
  ctx: { route: Route; fx: FuzzFixtures; field: string; inConfig: boolean; depth: number },
): fc.Arbitrary<unknown> {
  if (!schema || ctx.depth > 4) return anyJson();
  const alternatives = schema.anyOf ?? schema.oneOf;
  if (alternatives?.length) return fc.oneof(...alternatives.map((s) => shapedFromSchema(s, ctx)));
  if (schema.enum?.length) return fc.constantFrom(...schema.enum);
  if (schema.const !== undefined) return fc.constant(schema.const);
  switch (schema.type) {
    case 'string':
      return anyString();
    case 'integer':
      return fc.oneof(
        fc.constantFrom(...BOUNDARY_NUMBERS.filter(Number.isInteger)),
        fc.integer({ min: schema.minimum ?? -10, max: Math.min(schema.maximum ?? 10_000, 10_000) }),
      );
    case 'number':
      return fc.constantFrom(...BOUNDARY_NUMBERS);
    case 'boolean':
      return fc.boolean();
    case 'array':
      return fc.array(shapedFromSchema(schema.items, { ...ctx, depth: ctx.depth + 1 }), {
        minLength: 0,
        maxLength: 3,
      });
    case 'object': {
      const props = schema.properties ?? {};
      const required = new Set(schema.required ?? []);
      const record: Record<string, fc.Arbitrary<unknown>> = {};
      for (const [key, sub] of Object.entries(props)) {
        record[key] = fromSchema(sub, {
          ...ctx,
          field: key,
          inConfig: ctx.inConfig || ctx.field === 'config',
          depth: ctx.depth + 1,
        });
      }
      const requiredKeys = Object.keys(props).filter((k) => required.has(k));
      const base =
        Object.keys(record).length > 0
          ? fc.record(record, { requiredKeys })
          : fc.constant({} as Record<string, unknown>);
      if (typeof schema.additionalProperties === 'object') {
        // A map (config, environment, devices): keys from the config pool and random ones.
        const valueSchema = schema.additionalProperties;
        const keyArb = fc.oneof(fc.constantFrom(...CONFIG_KEYS), fc.string({ maxLength: 12 }));
        return fc
          .array(
            keyArb.chain((key) =>
              fromSchema(valueSchema, {
                ...ctx,
                field: key,
                inConfig: ctx.field === 'config' || ctx.inConfig,
                depth: ctx.depth + 1,
              }).map((v) => [key, v] as const),
            ),
            { maxLength: 3 },
          )
          .chain((pairs) => base.map((b) => ({ ...(b as object), ...Object.fromEntries(pairs) })));
      }
      return base;
    }
    default:
      return anyJson();
  }
}

/**
 * One body mutation: a shaped value with one thing broken (a required field dropped, an
 * unknown field added, a field of the wrong type), or something else entirely.
 */
function brokenBody(shaped: fc.Arbitrary<unknown>): fc.Arbitrary<unknown> {
  return fc.oneof(
    shaped.chain((v) => {
      if (typeof v !== 'object' || v === null || Array.isArray(v)) return fc.constant(v);
      const keys = Object.keys(v);
      return fc.oneof(
        fc.constant({ ...v, nmae: 'x' }),
        keys.length > 0
          ? fc.constantFrom(...keys).chain((k) => anyJson().map((junk) => ({ ...v, [k]: junk })))
          : fc.constant(v),
        keys.length > 0
          ? fc.constantFrom(...keys).map((k) => {
              const copy: Record<string, unknown> = { ...v };
              delete copy[k];
              return copy;
            })
          : fc.constant(v),
      );
    }),
    anyJson(),
  );
}

/** A raw body that is not what the route takes. */
const rawBodies = (): fc.Arbitrary<{ body: Buffer; contentType?: string }> =>
  fc.oneof(
    fc.constantFrom(
      { body: Buffer.from('{"name":'), contentType: 'application/json' },
      { body: Buffer.from(''), contentType: 'application/json' },
      { body: Buffer.from('null'), contentType: 'application/json' },
      { body: Buffer.from('[1,2]'), contentType: 'application/json' },
      { body: Buffer.from('{"__proto__":{"x":1}}'), contentType: 'application/json' },
      { body: Buffer.from('{"constructor":{"prototype":{"x":1}}}'), contentType: 'application/json' },
      { body: Buffer.from('name=x'), contentType: 'application/x-www-form-urlencoded' },
      { body: Buffer.from('name=x'), contentType: 'text/plain' },
      { body: Buffer.from('not a tarball'), contentType: 'application/octet-stream' },
      { body: Buffer.from('\x1f\x8b\x08\x00garbage'), contentType: 'application/gzip' },
      { body: Buffer.alloc(1024 * 1024 + 10, 0x20), contentType: 'application/json' },
      { body: Buffer.from('{}'), contentType: 'application/json; charset=latin1' },
      { body: Buffer.from('{}'), contentType: 'APPLICATION/JSON' },
      { body: Buffer.from('{}'), contentType: 'application/json, text/plain' },
      { body: Buffer.from('{}'), contentType: '' },
      { body: Buffer.from('{}') },
    ),
    fc.uint8Array({ maxLength: 64 }).map((b) => ({ body: Buffer.from(b), contentType: 'application/json' })),
    fc
      .uint8Array({ maxLength: 64 })
      .map((b) => ({ body: Buffer.from(b), contentType: 'application/octet-stream' })),
  );

/** A path parameter's value: a real object, a missing one, or a malformed one (encoded or not). */
function pathParam(route: Route, name: string, fx: FuzzFixtures): fc.Arbitrary<string> {
  const real: string[] =
    name === 'name'
      ? route.template.startsWith('/1.0/networks')
        ? fx.networks
        : route.template.startsWith('/1.0/storage-pools/{name}')
          ? fx.pools
          : fx.guests
      : name === 'pool'
        ? fx.pools
        : name === 'volume'
          ? fx.volumes
          : name === 'snapshot'
            ? fx.snapshots
            : name === '*'
              ? [...fx.images, 'busybox/x']
              : name === 'index'
                ? ['0', '1', '-1', '999']
                : name === 'listen'
                  ? ['198.18.0.1:80', '198.18.0.1', ':80', 'x:y']
                  : ['nosuch'];
  return fc.oneof(
    { weight: 3, arbitrary: fc.constantFrom(...real, 'nosuch', 'fz-new') },
    { weight: 2, arbitrary: anyString().map((s) => encodeURIComponent(s)) },
    { weight: 1, arbitrary: fc.constantFrom('%', '%zz', '..', '%2F', 'a%00b', '%E0%A4%A', ';', '~') },
  );
}

function queryPart(route: Route, fx: FuzzFixtures): fc.Arbitrary<string> {
  const params = (route.op.parameters ?? []).filter((p) => p.in === 'query');
  const pairs = params.map((p) =>
    fc.option(
      fromSchema(p.schema, { route, fx, field: p.name, inConfig: false, depth: 0 }).map(
        (v) =>
          `${encodeURIComponent(p.name)}=${encodeURIComponent(typeof v === 'string' ? v : JSON.stringify(v))}`,
      ),
      { nil: undefined },
    ),
  );
  const junk = fc.option(
    fc.constantFrom(
      'recursion=9',
      'recursion=-1',
      'recursion=x',
      'x=1',
      'a[b]=c',
      '%zz=1',
      'timeout=1e999',
      '=',
      '&&&',
      'force',
    ),
    { nil: undefined },
  );
  return fc.tuple(fc.tuple(...pairs), junk).map(([ps, j]) => {
    const all = [...ps.filter((p): p is string => p !== undefined), ...(j ? [j] : [])];
    return all.length > 0 ? `?${all.join('&')}` : '';
  });
}

function headerPart(route: Route, fx: FuzzFixtures): fc.Arbitrary<Record<string, string>> {
  const params = (route.op.parameters ?? []).filter((p) => p.in === 'header');
  const pairs = params.map((p) =>
    fc
      .option(
        fc.oneof(
          fc.constantFrom('0644', '4755', '0', '1000', '-1', 'x', 'true', '99999999999', ''),
          fc.constantFrom(...fx.guests, 'fz/alias', 'Bad Alias'),
        ),
        { nil: undefined },
      )
      .map((v) => [p.name, v] as const),
  );
  const extra = fc.option(
    fc.constantFrom<[string, string]>(
      ['accept', 'text/html'],
      ['accept-encoding', 'br, gzip, deflate, zstd'],
      ['authorization', 'Bearer nope'],
      ['authorization', 'Basic Zm9vOmJhcg=='],
      ['upgrade', 'websocket'],
      ['x-forwarded-for', '1.2.3.4'],
      ['range', 'bytes=0-1'],
      ['if-none-match', '*'],
      ['expect', '100-continue'],
      ['transfer-encoding', 'gzip'],
    ),
    { nil: undefined },
  );
  return fc.tuple(fc.tuple(...pairs), extra).map(([ps, e]) => {
    const headers: Record<string, string> = {};
    for (const [k, v] of ps) if (v !== undefined) headers[k] = v;
    if (e) headers[e[0]] = e[1];
    return headers;
  });
}

/** Requests for one route: valid-shaped, boundary and malformed. */
export function requestsFor(route: Route, fx: FuzzFixtures): fc.Arbitrary<FuzzRequest> {
  const pathNames = [...route.template.matchAll(/\{([^}]+)\}/g)].map((m) => m[1] ?? '');
  const path = fc.tuple(...pathNames.map((n) => pathParam(route, n, fx))).map((values) => {
    let p = route.template;
    pathNames.forEach((n, i) => {
      p = p.replace(`{${n}}`, values[i] ?? '');
    });
    return p;
  });
  const content = route.op.requestBody?.content ?? {};
  const jsonSchema = content['application/json']?.schema;
  const takesRaw = Object.keys(content).some((t) => t !== 'application/json');
  const shaped = jsonSchema
    ? fromSchema(jsonSchema, { route, fx, field: '', inConfig: false, depth: 0 })
    : fc.constant(undefined);
  const body: fc.Arbitrary<{ body?: Buffer; contentType?: string }> = fc.oneof(
    {
      weight: jsonSchema ? 4 : 1,
      arbitrary: shaped.map((v) =>
        v === undefined ? {} : { body: Buffer.from(JSON.stringify(v)), contentType: 'application/json' },
      ),
    },
    {
      weight: jsonSchema ? 3 : 1,
      arbitrary: brokenBody(shaped).map((v) => ({
        body: Buffer.from(JSON.stringify(v) ?? 'undefined'),
        contentType: 'application/json',
      })),
    },
    { weight: 2, arbitrary: rawBodies() },
    {
      weight: takesRaw ? 2 : 1,
      arbitrary: fc.uint8Array({ maxLength: 256 }).map((b) => ({
        body: Buffer.from(b),
        contentType: 'application/octet-stream',
      })),
    },
    { weight: 1, arbitrary: fc.constant({}) },
  );
  return fc
    .tuple(
      path,
      queryPart(route, fx),
      headerPart(route, fx),
      body,
      fc.constantFrom(route.method, route.method, route.method, 'HEAD', 'OPTIONS', 'TRACE'),
    )
    .map(([p, q, headers, b, method]) => {
      const h = { ...headers };
      if (b.contentType !== undefined) h['content-type'] = b.contentType;
      return {
        method,
        path: `${p}${q}`,
        headers: h,
        ...(b.body !== undefined ? { body: b.body } : {}),
        route: `${route.method} ${route.template}`,
      };
    });
}

/** Requests over every route, each route about as likely as another. */
export function anyRequest(routes: Route[], fx: FuzzFixtures): fc.Arbitrary<FuzzRequest> {
  return fc.oneof(...routes.map((r) => requestsFor(r, fx)));
}

/** Sends one request on the unix socket; rejects after `timeoutMs` (a hang). */
export function send(
  target: { socketPath: string } | { host: string; port: number; tls?: boolean },
  r: FuzzRequest,
  timeoutMs: number,
): Promise<FuzzAnswer> {
  // TCP is HTTPS (decision 0022); the certificate is not what is fuzzed here.
  const { tls, ...where } = target as { tls?: boolean };
  const started = performance.now();
  return new Promise((resolve, reject) => {
    const headers: Record<string, string> = { ...r.headers };
    if (r.body !== undefined) headers['content-length'] = String(r.body.length);
    const options = { ...where, method: r.method, path: r.path, headers, agent: false };
    const req = (tls ? https : http).request(
      tls ? { ...options, rejectUnauthorized: false } : options,
      (res) => {
        const chunks: Buffer[] = [];
        let size = 0;
        res.on('data', (c: Buffer) => {
          // Enough to judge an error envelope; a large download is drained, not kept.
          if (size < 64 * 1024) chunks.push(c);
          size += c.length;
        });
        res.on('end', () => {
          clearTimeout(timer);
          resolve({
            status: res.statusCode ?? 0,
            contentType: String(res.headers['content-type'] ?? ''),
            text: Buffer.concat(chunks).toString('utf8'),
            ms: performance.now() - started,
          });
        });
        res.on('error', (e) => {
          clearTimeout(timer);
          reject(e);
        });
      },
    );
    const timer = setTimeout(() => {
      req.destroy();
      reject(new Error(`no answer within ${timeoutMs} ms`));
    }, timeoutMs);
    req.on('error', (e: Error & { code?: string; rawPacket?: Buffer }) => {
      clearTimeout(timer);
      // What the client's parser refused (a body after a HEAD's answer, say) was still an answer.
      // A server may answer an oversized body (413) and close before it is all sent: refused, not lost.
      if ((e.code === 'EPIPE' || e.code === 'ECONNRESET') && (r.body?.length ?? 0) > 1024 * 1024) {
        resolve({ status: 0, contentType: '', text: '', ms: performance.now() - started });
        return;
      }
      const raw = e.code?.startsWith('HPE_') ? e.rawPacket?.toString('latin1') : undefined;
      const m = raw ? /^HTTP\/1\.[01] (\d{3})[^\r]*\r\n([\s\S]*?)\r\n\r\n([\s\S]*)$/.exec(raw) : null;
      if (m) {
        resolve({
          status: Number(m[1]),
          contentType: /content-type: *([^\r]*)/i.exec(m[2] ?? '')?.[1] ?? '',
          text: m[3] ?? '',
          ms: performance.now() - started,
        });
      } else reject(e);
    });
    req.end(r.body);
  });
}

/**
 * Why an answer is wrong, or undefined: a 5xx; an error that is not a one-line envelope;
 * an error naming a host path (`hostPaths`: the state dir, say) or showing a stack.
 */
export function judge(answer: FuzzAnswer, hostPaths: string[]): string | undefined {
  if (answer.status === 0) return undefined; // closed on an oversized body (see send)
  if (answer.status >= 500) return `HTTP ${answer.status}: ${answer.text.slice(0, 300)}`;
  if (answer.status < 400) return undefined;
  if (answer.text === '') return undefined; // HEAD
  let body: { type?: unknown; error?: unknown; error_code?: unknown };
  try {
    body = JSON.parse(answer.text);
  } catch {
    return `HTTP ${answer.status} without the JSON error envelope: ${answer.text.slice(0, 200)}`;
  }
  if (body.type !== 'error' || typeof body.error !== 'string' || body.error_code !== answer.status) {
    return `HTTP ${answer.status} with a malformed error envelope: ${answer.text.slice(0, 200)}`;
  }
  if (body.error.includes('\n')) return `an error of more than one line: ${body.error.slice(0, 200)}`;
  if (/\n\s+at |node:internal|\/proc\/self\/fd\//.test(body.error))
    return `an error with internals: ${body.error}`;
  for (const p of hostPaths)
    if (body.error.includes(p)) return `an error naming the host path ${p}: ${body.error}`;
  return undefined;
}

/** Raw bytes that are not well-formed HTTP requests, plus generated junk. */
export function rawHttp(): fc.Arbitrary<Buffer> {
  const fixed = [
    'GET / HTTP/1.1\r\n\r\n',
    'GET /1.0 HTTP/1.1\r\nHost: x\r\n\r\n',
    'GET /1.0\r\n\r\n',
    'GET /1.0 HTTP/9.9\r\nHost: x\r\n\r\n',
    'BREW /1.0 HTTP/1.1\r\nHost: x\r\n\r\n',
    ' /1.0 HTTP/1.1\r\nHost: x\r\n\r\n',
    'GET  HTTP/1.1\r\nHost: x\r\n\r\n',
    'GET http://evil/1.0 HTTP/1.1\r\nHost: x\r\n\r\n',
    'GET /1.0/guests/%ff%fe HTTP/1.1\r\nHost: x\r\n\r\n',
    `GET /${'a'.repeat(70_000)} HTTP/1.1\r\nHost: x\r\n\r\n`,
    `GET /1.0 HTTP/1.1\r\nHost: x\r\nX-Big: ${'b'.repeat(20_000)}\r\n\r\n`,
    `GET /1.0 HTTP/1.1\r\n${Array.from({ length: 3000 }, (_, i) => `X-H${i}: v`).join('\r\n')}\r\n\r\n`,
    'GET /1.0 HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n',
    'GET /1.0 HTTP/1.1\r\nHost: x\r\n: empty-name\r\n\r\n',
    'GET /1.0 HTTP/1.1\nHost: x\n\n',
    'POST /1.0/guests HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 5\r\n\r\n{"a":1}',
    'POST /1.0/guests HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 50\r\n\r\n{"a":1}',
    'POST /1.0/guests HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: -1\r\n\r\n{}',
    'POST /1.0/guests HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n{}',
    'POST /1.0/guests HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n',
    'POST /1.0/guests HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nContent-Length: 2\r\n\r\n2\r\n{}\r\n0\r\n\r\n',
    'POST /1.0/images HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\nX-Trivisor-Alias: fz/raw\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nabcde\r\n',
    'POST /1.0/guests/fz-run/files?path=/tmp/raw HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\nContent-Length: 100\r\n\r\nshort',
    'GET /1.0/events HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n',
    'GET /1.0/events HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: bad\r\n\r\n',
    'GET /1.0/operations/x/websocket?secret=x HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n',
    'GET /1.0 HTTP/1.1\r\nHost: x\r\n\r\nGET /1.0 HTTP/1.1\r\nHost: x\r\n\r\nGARBAGE\r\n\r\n',
    'PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n',
    '\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03',
    '\r\n\r\n\r\n',
    '\x00\x00\x00\x00',
  ];
  return fc.oneof(
    { weight: 3, arbitrary: fc.constantFrom(...fixed).map((s) => Buffer.from(s, 'latin1')) },
    {
      weight: 1,
      arbitrary: fc
        .tuple(
          fc.constantFrom('GET', 'POST', 'PUT', 'DELETE', 'PATCH', 'get', 'G\x00T'),
          fc.constantFrom('/1.0', '/1.0/guests', '/1.0/images', '/1.0/networks', '*', ''),
          fc.string({ unit: 'binary', maxLength: 40 }),
          fc.constantFrom('HTTP/1.1', 'HTTP/1.0', 'HTTP/2', ''),
          fc.array(fc.tuple(fc.string({ maxLength: 10 }), fc.string({ unit: 'binary', maxLength: 20 })), {
            maxLength: 4,
          }),
          fc.uint8Array({ maxLength: 64 }),
        )
        .map(([m, p, junk, v, hs, body]) =>
          Buffer.concat([
            Buffer.from(
              `${m} ${p}${junk} ${v}\r\n${hs.map(([k, val]) => `${k}: ${val}`).join('\r\n')}\r\n\r\n`,
              'latin1',
            ),
            Buffer.from(body),
          ]),
        ),
    },
    { weight: 1, arbitrary: fc.uint8Array({ minLength: 1, maxLength: 200 }).map((b) => Buffer.from(b)) },
  );
}

/**
 * Writes raw bytes on a new connection, then half-closes it; resolves with the first status
 * the server answered (0 if it only closed) once the server closes, or rejects after `timeoutMs`.
 */
export function sendRaw(
  target: { socketPath: string },
  bytes: Buffer,
  timeoutMs: number,
): Promise<{ status: number; text: string }> {
  return new Promise((resolve, reject) => {
    const socket = net.connect(target.socketPath);
    const chunks: Buffer[] = [];
    const timer = setTimeout(() => {
      socket.destroy();
      reject(new Error(`the connection was neither answered nor closed within ${timeoutMs} ms`));
    }, timeoutMs);
    socket.on('data', (c: Buffer) => {
      if (chunks.length < 64) chunks.push(c);
    });
    socket.on('error', () => {});
    socket.on('close', () => {
      clearTimeout(timer);
      const text = Buffer.concat(chunks).toString('latin1');
      const m = /^HTTP\/1\.[01] (\d{3})/.exec(text);
      resolve({ status: m ? Number(m[1]) : 0, text });
    });
    socket.on('connect', () => {
      socket.write(bytes, () => socket.end());
    });
  });
}

/** What the daemon holds, for "nothing changed" checks: names and ids only. */
export interface StateSnapshot {
  guests: string[];
  networks: string[];
  pools: string[];
  volumes: string[];
  images: string[];
  operations: string[];
  /** Whether an operation was running (then the state may change by itself). */
  busy: boolean;
}

type Api = (method: string, path: string) => Promise<{ status: number; body: { metadata?: unknown } }>;

export async function snapshotState(api: Api): Promise<StateSnapshot> {
  const list = async (path: string) => {
    const r = await api('GET', path);
    return Array.isArray(r.body.metadata) ? (r.body.metadata as unknown[]) : [];
  };
  const names = (xs: unknown[], key: string) =>
    xs.map((x) => String((x as Record<string, unknown>)[key] ?? x)).sort();
  const [guests, networks, pools, images, ops] = await Promise.all([
    list('/1.0/guests'),
    list('/1.0/networks?recursion=1'),
    list('/1.0/storage-pools?recursion=1'),
    list('/1.0/images'),
    list('/1.0/operations?recursion=1'),
  ]);
  const volumes = (
    await Promise.all(
      names(pools, 'name').map(async (p) =>
        (
          await list(`/1.0/storage-pools/${encodeURIComponent(p)}/volumes/custom`)
        ).map((v) => `${p}/${String(v)}`),
      ),
    )
  ).flat();
  return {
    guests: guests.map(String).sort(),
    networks: names(networks, 'name'),
    pools: names(pools, 'name'),
    volumes: volumes.sort(),
    images: images.map(String).sort(),
    operations: names(ops, 'id'),
    busy: ops.some((o) => (o as { status?: string }).status === 'Running'),
  };
}

/** What differs between two snapshots (operations: only new ones; old ones are pruned by age). */
export function stateChanges(before: StateSnapshot, after: StateSnapshot): string[] {
  const changes: string[] = [];
  for (const key of ['guests', 'networks', 'pools', 'volumes', 'images'] as const) {
    const added = after[key].filter((x) => !before[key].includes(x));
    const removed = before[key].filter((x) => !after[key].includes(x));
    if (added.length) changes.push(`${key} added: ${added.join(', ')}`);
    if (removed.length) changes.push(`${key} removed: ${removed.join(', ')}`);
  }
  const newOps = after.operations.filter((x) => !before.operations.includes(x));
  if (newOps.length) changes.push(`operations added: ${newOps.join(', ')}`);
  return changes;
}

/** A line that reproduces a request (curl over the unix socket). */
export function describeRequest(r: FuzzRequest): string {
  const body =
    r.body === undefined
      ? ''
      : ` body(${r.body.length}B)=${JSON.stringify(r.body.subarray(0, 160).toString('latin1'))}`;
  return `${r.method} ${r.path.slice(0, 200)} headers=${JSON.stringify(r.headers).slice(0, 200)}${body} [${r.route}]`;
}

/** Options of `runFuzz`. */
export interface FuzzRunOptions {
  socketPath: string;
  seed: number;
  /** HTTP requests made from the OpenAPI document. */
  numRuns: number;
  /** Raw, malformed HTTP payloads. */
  rawRuns: number;
  routes: Route[];
  fixtures: FuzzFixtures;
  /** Strings no error may contain (the state dir…). */
  hostPaths: string[];
  /** A request not answered within this is a hang (default 20 s). */
  timeoutMs?: number;
  /** Compare the daemon's objects before and after each refused change (default true). */
  checkState?: boolean;
  onProgress?: (done: number, total: number) => void;
}

/** What a run found. */
export interface FuzzReport {
  seed: number;
  requests: number;
  raw: number;
  byStatus: Record<string, number>;
  routesHit: number;
  /** Wrong answers: 5xx, malformed errors, host paths. */
  failures: string[];
  /** Requests not answered in time. */
  hangs: string[];
  /** Refused requests that changed something. */
  changes: string[];
  /** Refused changes whose effect was checked (no operation was running around them). */
  stateChecks: number;
  slowestMs: number;
  durationMs: number;
}

const MUTATING = new Set(['POST', 'PUT', 'PATCH', 'DELETE']);

export async function runFuzz(o: FuzzRunOptions): Promise<FuzzReport> {
  const started = performance.now();
  const timeoutMs = o.timeoutMs ?? 20_000;
  const target = { socketPath: o.socketPath };
  const api: Api = async (method, path) => {
    const a = await send(target, { method, path, headers: {}, route: '' }, timeoutMs);
    let body: { metadata?: unknown } = {};
    try {
      body = JSON.parse(a.text);
    } catch {}
    return { status: a.status, body };
  };
  const requests = fc.sample(anyRequest(o.routes, o.fixtures), { seed: o.seed, numRuns: o.numRuns });
  const raws = fc.sample(rawHttp(), { seed: o.seed + 1, numRuns: o.rawRuns });
  const report: FuzzReport = {
    seed: o.seed,
    requests: 0,
    raw: 0,
    byStatus: {},
    routesHit: new Set(requests.map((r) => r.route)).size,
    failures: [],
    hangs: [],
    changes: [],
    stateChecks: 0,
    slowestMs: 0,
    durationMs: 0,
  };
  const total = requests.length + raws.length;
  for (const [i, r] of requests.entries()) {
    const check = (o.checkState ?? true) && MUTATING.has(r.method);
    const before = check ? await snapshotState(api) : undefined;
    let answer: FuzzAnswer;
    try {
      answer = await send(target, r, timeoutMs);
    } catch (e) {
      const message = (e as Error).message;
      if (message.startsWith('no answer within')) report.hangs.push(`${message}: ${describeRequest(r)}`);
      else report.failures.push(`the answer could not be read (${message}) <- ${describeRequest(r)}`);
      continue;
    }
    report.requests++;
    report.slowestMs = Math.max(report.slowestMs, answer.ms);
    const cls = answer.status === 0 ? 'closed' : `${Math.floor(answer.status / 100)}xx`;
    report.byStatus[cls] = (report.byStatus[cls] ?? 0) + 1;
    const wrong = judge(answer, o.hostPaths);
    // 5xx first: they are what a report must show even when cut.
    if (wrong && answer.status >= 500) report.failures.unshift(`${wrong} <- ${describeRequest(r)}`);
    else if (wrong) report.failures.push(`${wrong} <- ${describeRequest(r)}`);
    if (before && answer.status >= 400 && answer.status < 500) {
      const after = await snapshotState(api);
      if (!before.busy && !after.busy) {
        report.stateChecks++;
        const changes = stateChanges(before, after);
        if (changes.length)
          report.changes.push(`${changes.join('; ')} <- HTTP ${answer.status} ${describeRequest(r)}`);
      }
    }
    o.onProgress?.(i + 1, total);
  }
  for (const [i, bytes] of raws.entries()) {
    try {
      const a = await sendRaw(target, bytes, timeoutMs);
      report.raw++;
      const cls = a.status === 0 ? 'closed' : `${Math.floor(a.status / 100)}xx`;
      report.byStatus[`raw ${cls}`] = (report.byStatus[`raw ${cls}`] ?? 0) + 1;
      if (a.status >= 500) {
        report.failures.push(
          `raw HTTP answered ${a.status}: ${a.text.slice(0, 200)} <- ${JSON.stringify(bytes.subarray(0, 120).toString('latin1'))}`,
        );
      }
    } catch (e) {
      report.hangs.push(
        `${(e as Error).message}: raw ${JSON.stringify(bytes.subarray(0, 120).toString('latin1'))}`,
      );
    }
    o.onProgress?.(requests.length + i + 1, total);
  }
  report.durationMs = performance.now() - started;
  return report;
}
