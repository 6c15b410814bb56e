import { useSignal } from '@preact/signals';
import type { AuditEntryBody } from '../../src/api/auth-schemas.ts';
import type { NetworkAclRule } from '../../src/api/types.ts';
import { navigate } from './router.ts';
import { SortHeader, sortOf, sortRows } from './sort.tsx';
import { api, finished, operations, project, session } from './state.ts';
import { Action, bytes, Field, Form, Link, Loading, Page, Status, useLoad, when } from './ui.tsx';

/* Networks, storage, images, operations and administration. */

export function Networks() {
  const list = useLoad(() => api.listNetworks(), []);
  const sort = sortOf(['name', 'ipv4', 'nat', 'status', 'usedBy'] as const, { key: 'name', dir: 1 });
  return (
    <Page title="Networks">
      <div class="panel">
        {list.data ? (
          <div class="table-wrap">
            <table>
              <thead>
                <tr>
                  <SortHeader column="name" label="Name" sort={sort} />
                  <SortHeader column="ipv4" label="IPv4" sort={sort} />
                  <SortHeader column="nat" label="NAT" sort={sort} />
                  <SortHeader column="status" label="Status" sort={sort} />
                  <SortHeader column="usedBy" label="Used by" sort={sort} />
                </tr>
              </thead>
              <tbody>
                {sortRows(
                  list.data,
                  sort,
                  (n, key) =>
                    key === 'ipv4'
                      ? (n.config['ipv4.address'] ?? '–')
                      : key === 'nat'
                        ? (n.config['ipv4.nat'] ?? 'false')
                        : key === 'usedBy'
                          ? n.usedBy.length
                          : n[key],
                  (n) => n.name,
                ).map((n) => (
                  <tr key={n.name} data-row={n.name}>
                    <td>
                      <Link to={`/networks/${encodeURIComponent(n.name)}`}>{n.name}</Link>
                    </td>
                    <td>{n.config['ipv4.address'] ?? '–'}</td>
                    <td>{n.config['ipv4.nat'] ?? 'false'}</td>
                    <td>
                      <Status value={n.status} />
                    </td>
                    <td>{n.usedBy.length}</td>
                  </tr>
                ))}
              </tbody>
            </table>
          </div>
        ) : (
          <Loading error={list.error} />
        )}
      </div>
      <div class="panel">
        <h2>Create a network</h2>
        <Form
          label="Create a network"
          submit="Create"
          done="Network created"
          run={async (d) => {
            await api.createNetwork({
              name: String(d.get('name')),
              config: {
                'ipv4.address': String(d.get('address')),
                'ipv4.nat': d.get('nat') ? 'true' : 'false',
              },
            });
            list.reload();
          }}
        >
          <Field label="Name" hint="At most 15 characters: it names the bridge">
            {(id) => <input id={id} name="name" required maxLength={15} />}
          </Field>
          <Field label="Gateway address" hint="CIDR, e.g. 198.18.10.1/24">
            {(id) => <input id={id} name="address" required />}
          </Field>
          <label style={{ fontWeight: 'normal' }}>
            <input type="checkbox" name="nat" defaultChecked /> NAT to the outside
          </label>
        </Form>
      </div>
    </Page>
  );
}

export function NetworkPage(props: { name: string }) {
  const net = useLoad(() => api.getNetwork(props.name), [props.name]);
  const n = net.data;
  if (!n) return <Page title={props.name}>{<Loading error={net.error} />}</Page>;
  return (
    <Page
      title={`Network ${n.name}`}
      actions={
        <Action
          kind="danger"
          confirm={`Delete network ${n.name}?`}
          run={async () => {
            await api.deleteNetwork(n.name);
            // Not history.back(): a page opened from a link or a bookmark would leave the UI.
            navigate('/networks', { replace: true });
          }}
        >
          Delete
        </Action>
      }
    >
      <div class="panel">
        <dl class="facts">
          <dt>Status</dt>
          <dd>
            <Status value={n.status} /> {n.error ?? ''}
          </dd>
          {Object.entries(n.config).map(([k, v]) => [<dt key={`k${k}`}>{k}</dt>, <dd key={`v${k}`}>{v}</dd>])}
          <dt>Used by</dt>
          <dd>{n.usedBy.join(', ') || '–'}</dd>
        </dl>
        <h2>Change a key</h2>
        <Form
          label="Change a network key"
          submit="Set"
          done="Network changed"
          run={async (d) => {
            await api.updateNetwork(n.name, { set: { [String(d.get('key'))]: String(d.get('value')) } });
            net.reload();
          }}
        >
          <Field label="Key">
            {(id) => <input id={id} name="key" required placeholder="security.isolated" />}
          </Field>
          <Field label="Value">{(id) => <input id={id} name="value" required />}</Field>
        </Form>
      </div>
      <div class="panel">
        <h2>Access rules (ACLs)</h2>
        <table>
          <thead>
            <tr>
              <th>#</th>
              <th>Rule</th>
              <th>
                <span class="sr-only">Actions</span>
              </th>
            </tr>
          </thead>
          <tbody>
            {(n.acls ?? []).map((r, i) => (
              <tr key={i}>
                <td>{i}</td>
                <td>
                  {r.direction} {r.action} {r.protocol ?? 'any'} {r.source ? `from ${r.source}` : ''}{' '}
                  {r.destination ? `to ${r.destination}` : ''}{' '}
                  {r.destinationPort ? `port ${r.destinationPort}` : ''}
                </td>
                <td>
                  <Action
                    label={`Remove rule ${i}`}
                    run={async () => {
                      await api.removeNetworkAcl(n.name, i);
                      net.reload();
                    }}
                  >
                    Remove
                  </Action>
                </td>
              </tr>
            ))}
          </tbody>
        </table>
        <Form
          label="Add an access rule"
          submit="Add rule"
          done="Rule added"
          run={async (d) => {
            const rule: NetworkAclRule = {
              direction: d.get('direction') as 'ingress' | 'egress',
              action: d.get('action') as 'allow' | 'drop',
            };
            const protocol = String(d.get('protocol') || '');
            if (protocol) rule.protocol = protocol as 'tcp' | 'udp' | 'icmp';
            const source = String(d.get('source') || '');
            if (source) rule.source = source;
            const port = Number(d.get('port') || 0);
            if (port) rule.destinationPort = port;
            await api.addNetworkAcl(n.name, rule);
            net.reload();
          }}
        >
          <div class="row">
            <Field label="Direction">
              {(id) => (
                <select id={id} name="direction">
                  <option>ingress</option>
                  <option>egress</option>
                </select>
              )}
            </Field>
            <Field label="Action">
              {(id) => (
                <select id={id} name="action">
                  <option>drop</option>
                  <option>allow</option>
                </select>
              )}
            </Field>
            <Field label="Protocol">
              {(id) => (
                <select id={id} name="protocol">
                  <option value="">any</option>
                  <option>tcp</option>
                  <option>udp</option>
                  <option>icmp</option>
                </select>
              )}
            </Field>
            <Field label="Source">
              {(id) => <input id={id} name="source" placeholder="198.18.0.0/24" />}
            </Field>
            <Field label="Port">
              {(id) => <input id={id} name="port" type="number" min={1} max={65535} />}
            </Field>
          </div>
        </Form>
      </div>
      <div class="panel">
        <h2>Port forwards</h2>
        <table>
          <thead>
            <tr>
              <th>Listen</th>
              <th>Target</th>
              <th>
                <span class="sr-only">Actions</span>
              </th>
            </tr>
          </thead>
          <tbody>
            {(n.forwards ?? []).map((f) => (
              <tr key={`${f.listenAddress}:${f.listenPort}/${f.protocol}`}>
                <td>
                  {f.listenAddress}:{f.listenPort}/{f.protocol}
                </td>
                <td>
                  {f.targetGuest ?? f.targetAddress}:{f.targetPort}
                </td>
                <td>
                  <Action
                    label={`Remove forward ${f.listenPort}`}
                    run={async () => {
                      await api.removeNetworkForward(n.name, f);
                      net.reload();
                    }}
                  >
                    Remove
                  </Action>
                </td>
              </tr>
            ))}
          </tbody>
        </table>
        <Form
          label="Add a port forward"
          submit="Add forward"
          done="Forward added"
          run={async (d) => {
            await api.addNetworkForward(n.name, {
              listenAddress: String(d.get('listen')),
              listenPort: Number(d.get('port')),
              protocol: d.get('protocol') === 'udp' ? 'udp' : 'tcp',
              target: String(d.get('target')),
              targetPort: Number(d.get('targetPort')),
            });
            net.reload();
          }}
        >
          <div class="row">
            <Field label="Listen address">{(id) => <input id={id} name="listen" required />}</Field>
            <Field label="Listen port">{(id) => <input id={id} name="port" type="number" required />}</Field>
            {/* Not "Protocol": the access rule form above has that field, and ids come from labels. */}
            <Field label="Forward protocol">
              {(id) => (
                <select id={id} name="protocol">
                  <option>tcp</option>
                  <option>udp</option>
                </select>
              )}
            </Field>
            <Field label="Target guest or address">{(id) => <input id={id} name="target" required />}</Field>
            <Field label="Target port">
              {(id) => <input id={id} name="targetPort" type="number" required />}
            </Field>
          </div>
        </Form>
      </div>
    </Page>
  );
}

export function Storage() {
  const pools = useLoad(() => api.listPools(), []);
  const sort = sortOf(['name', 'driver', 'used', 'status'] as const, { key: 'name', dir: 1 });
  return (
    <Page title="Storage">
      <div class="panel">
        {pools.data ? (
          <div class="table-wrap">
            <table>
              <thead>
                <tr>
                  <SortHeader column="name" label="Pool" sort={sort} />
                  <SortHeader column="driver" label="Driver" sort={sort} />
                  <SortHeader column="used" label="Used" sort={sort} />
                  <SortHeader column="status" label="Status" sort={sort} />
                </tr>
              </thead>
              <tbody>
                {sortRows(
                  pools.data,
                  sort,
                  // A pool without a measure (unavailable) sorts below the emptiest one.
                  (p, key) => (key === 'used' ? (p.usage?.usedBytes ?? -1) : p[key]),
                  (p) => p.name,
                ).map((p) => (
                  <tr key={p.name} data-row={p.name}>
                    <td>
                      <Link to={`/storage/${encodeURIComponent(p.name)}`}>{p.name}</Link>
                    </td>
                    <td>
                      {p.driver}
                      {p.shared ? ' (shared)' : ''}
                    </td>
                    <td>{p.usage ? `${bytes(p.usage.usedBytes)} of ${bytes(p.usage.totalBytes)}` : '–'}</td>
                    <td>
                      <Status value={p.status} /> {p.error ?? ''}
                    </td>
                  </tr>
                ))}
              </tbody>
            </table>
          </div>
        ) : (
          <Loading error={pools.error} />
        )}
      </div>
      <div class="panel">
        <h2>Create a pool</h2>
        <Form
          label="Create a storage pool"
          submit="Create"
          done="Pool created"
          run={async (d) => {
            const config: Record<string, string> = {};
            const size = String(d.get('size') || '');
            const source = String(d.get('source') || '');
            if (size) config.size = size;
            if (source) config.source = source;
            await api.createPool({ name: String(d.get('name')), driver: String(d.get('driver')), config });
            pools.reload();
          }}
        >
          <div class="row">
            <Field label="Name">{(id) => <input id={id} name="name" required />}</Field>
            <Field label="Driver">
              {(id) => (
                <select id={id} name="driver">
                  <option>btrfs</option>
                  <option>dir</option>
                </select>
              )}
            </Field>
            <Field label="Size (btrfs loop file)">
              {(id) => <input id={id} name="size" placeholder="2GiB" />}
            </Field>
            <Field label="Source (device or directory)">{(id) => <input id={id} name="source" />}</Field>
          </div>
        </Form>
        <h2>Recover</h2>
        <Action
          confirm="Rebuild lost guest records from what is on the daemon's disk?"
          run={async () => {
            const r = await api.recover();
            alert(JSON.stringify(r, null, 2));
          }}
        >
          Recover guests from disk
        </Action>
        <Form
          label="Recover guests from the backup directory"
          submit="Recover from backups"
          done="Recovery started: see Operations"
          run={async (d) => {
            await api.recoverFromBackups(String(d.get('directory')));
          }}
        >
          <div class="row">
            <Field label="Backup directory (on the daemon's host)">
              {(id) => (
                <input id={id} name="directory" required placeholder="/var/lib/trivisor/shipped-backups" />
              )}
            </Field>
          </div>
        </Form>
      </div>
    </Page>
  );
}

/** The guests a volume is attached to, as its row shows them. */
const usersOf = (v: { attachments: Array<{ guest: string; device: string }> }) =>
  v.attachments.map((a) => `${a.guest} (${a.device})`).join(', ') || '–';

export function StoragePoolPage(props: { name: string }) {
  const volumes = useLoad(() => api.listVolumes(props.name), [props.name]);
  const sort = sortOf(['name', 'type', 'size', 'usedBy'] as const, { key: 'name', dir: 1 });
  const progress = useSignal<number | null>(null);
  return (
    <Page
      title={`Pool ${props.name}`}
      actions={
        <Action
          kind="danger"
          confirm={`Delete pool ${props.name}?`}
          run={async () => {
            await api.deletePool(props.name);
            navigate('/storage', { replace: true });
          }}
        >
          Delete pool
        </Action>
      }
    >
      <div class="panel">
        <h2>Volumes</h2>
        {volumes.data ? (
          <div class="table-wrap">
            <table>
              <thead>
                <tr>
                  <SortHeader column="name" label="Name" sort={sort} />
                  <SortHeader column="type" label="Type" sort={sort} />
                  <SortHeader column="size" label="Size" sort={sort} />
                  <SortHeader column="usedBy" label="Used by" sort={sort} />
                  <th>
                    <span class="sr-only">Actions</span>
                  </th>
                </tr>
              </thead>
              <tbody>
                {sortRows(
                  volumes.data,
                  sort,
                  (v, key) =>
                    key === 'size'
                      ? v.sizeBytes
                      : key === 'usedBy'
                        ? usersOf(v)
                        : key === 'type'
                          ? String(v.type)
                          : v.name,
                  (v) => v.name,
                ).map((v) => (
                  <tr key={v.name} data-row={v.name}>
                    <td>{v.name}</td>
                    <td>{String(v.type)}</td>
                    <td>{bytes(v.sizeBytes)}</td>
                    <td>{usersOf(v)}</td>
                    <td class="row">
                      <Action
                        label={`Grow ${v.name}`}
                        run={async () => {
                          const size = prompt(`New size of ${v.name} (e.g. 2GiB)`);
                          if (size) await api.resizeVolume(props.name, v.name, size);
                          volumes.reload();
                        }}
                      >
                        Grow
                      </Action>
                      <Action
                        kind="danger"
                        label={`Delete ${v.name}`}
                        confirm={`Delete volume ${v.name}?`}
                        run={async () => {
                          await api.deleteVolume(props.name, v.name);
                          volumes.reload();
                        }}
                      >
                        Delete
                      </Action>
                    </td>
                  </tr>
                ))}
              </tbody>
            </table>
          </div>
        ) : (
          <Loading error={volumes.error} />
        )}
        <h2>Create a volume</h2>
        <Form
          label="Create a volume"
          submit="Create"
          done="Volume created"
          run={async (d) => {
            await api.createVolume(props.name, {
              name: String(d.get('name')),
              type: String(d.get('type')),
              config: { size: String(d.get('size') || '1GiB') },
            });
            volumes.reload();
          }}
        >
          <div class="row">
            <Field label="Name">{(id) => <input id={id} name="name" required />}</Field>
            <Field label="Type">
              {(id) => (
                <select id={id} name="type">
                  <option value="filesystem">filesystem (ct)</option>
                  <option value="block">block (vm, pvm)</option>
                </select>
              )}
            </Field>
            <Field label="Size">{(id) => <input id={id} name="size" placeholder="1GiB" />}</Field>
          </div>
        </Form>
        <h2>Upload an ISO image</h2>
        <Form
          label="Upload an ISO image"
          submit="Upload"
          done="ISO uploaded"
          run={async (d) => {
            const file = d.get('iso');
            if (!(file instanceof File) || file.size === 0) throw new Error('Choose an ISO file first');
            await api.uploadIsoVolume(props.name, String(d.get('name')), file, (f) => {
              progress.value = f;
            });
            progress.value = null;
            volumes.reload();
          }}
        >
          <div class="row">
            <Field label="ISO file">
              {(id) => <input id={id} name="iso" type="file" accept=".iso" required />}
            </Field>
            <Field label="Volume name">{(id) => <input id={id} name="name" required />}</Field>
          </div>
          {progress.value !== null && (
            <progress value={progress.value} max={1} aria-label="Upload progress" />
          )}
        </Form>
      </div>
    </Page>
  );
}

/** What an image's row shows for it: its aliases, or the start of its fingerprint. */
const aliasOf = (i: { aliases: string[]; fingerprint: string }) =>
  i.aliases.join(', ') || i.fingerprint.slice(0, 12);

export function Images() {
  const list = useLoad(() => api.listImages(), []);
  const sort = sortOf(['alias', 'description', 'source', 'size'] as const, { key: 'alias', dir: 1 });
  const progress = useSignal<number | null>(null);
  const building = [...operations.value.values()].filter(
    (o) => (o.status === 'Running' || o.status === 'Pending') && /image/i.test(o.description),
  );
  return (
    <Page title="Images">
      <div class="panel">
        {list.data ? (
          <div class="table-wrap">
            <table>
              <thead>
                <tr>
                  <SortHeader column="alias" label="Alias" sort={sort} />
                  <SortHeader column="description" label="Description" sort={sort} />
                  <SortHeader column="source" label="Source" sort={sort} />
                  <SortHeader column="size" label="Size" sort={sort} />
                  <th>
                    <span class="sr-only">Actions</span>
                  </th>
                </tr>
              </thead>
              <tbody>
                {sortRows(
                  list.data,
                  sort,
                  (i, key) => (key === 'alias' ? aliasOf(i) : key === 'size' ? i.sizeBytes : i[key]),
                  (i) => i.fingerprint,
                ).map((i) => (
                  <tr key={i.fingerprint} data-row={i.fingerprint}>
                    <td>{aliasOf(i)}</td>
                    <td>{i.description}</td>
                    <td>{i.source}</td>
                    <td>{bytes(i.sizeBytes)}</td>
                    <td>
                      <Action
                        kind="danger"
                        label={`Delete image ${i.aliases[0] ?? i.fingerprint.slice(0, 12)}`}
                        confirm="Delete this image?"
                        run={async () => {
                          await api.deleteImage(i.fingerprint);
                          list.reload();
                        }}
                      >
                        Delete
                      </Action>
                    </td>
                  </tr>
                ))}
              </tbody>
            </table>
          </div>
        ) : (
          <Loading error={list.error} />
        )}
      </div>
      {building.length > 0 && (
        <div class="panel" aria-live="polite">
          {building.map((o) => (
            <div key={o.id}>
              {o.description}: {o.progressText ?? ''}{' '}
              {o.progress !== null && <progress value={o.progress} max={100} aria-label={o.description} />}
            </div>
          ))}
        </div>
      )}
      <div class="panel">
        <h2>Build an image</h2>
        <Form
          label="Build an image"
          submit="Build"
          done="Image built"
          run={async (d) => {
            const alias = String(d.get('alias') || '');
            await finished(
              await api.buildImage({ source: String(d.get('source')), ...(alias ? { alias } : {}) }),
            );
            list.reload();
          }}
        >
          <div class="row">
            <Field label="Source">
              {(id) => <input id={id} name="source" required placeholder="debian/bookworm" />}
            </Field>
            <Field label="Alias" id="f-build-alias">
              {(id) => <input id={id} name="alias" />}
            </Field>
          </div>
        </Form>
        <h2>Import a root file system tarball</h2>
        <Form
          label="Import an image"
          submit="Upload and import"
          done="Image imported"
          run={async (d) => {
            const file = d.get('tarball');
            if (!(file instanceof File) || file.size === 0) throw new Error('Choose a tarball first');
            const op = await api.importImage(file, String(d.get('alias')), (f) => {
              progress.value = f;
            });
            progress.value = null;
            await finished(op);
            list.reload();
          }}
        >
          <div class="row">
            <Field label="Tarball">{(id) => <input id={id} name="tarball" type="file" required />}</Field>
            {/* The build form above has an Alias too: one page, two ids. */}
            <Field label="Alias" id="f-import-alias">
              {(id) => <input id={id} name="alias" required />}
            </Field>
          </div>
          {progress.value !== null && (
            <progress value={progress.value} max={1} aria-label="Upload progress" />
          )}
        </Form>
      </div>
    </Page>
  );
}

/** Audit entries, newest first: when, who, what, and the answer. */
const AUDIT_COLUMNS = ['time', 'who', 'request', 'result'] as const;
type AuditColumn = (typeof AUDIT_COLUMNS)[number];

/** What each column of the audit log shows, which is what it sorts by. */
const auditCell = (e: AuditEntryBody, key: AuditColumn): string =>
  key === 'time'
    ? e.time
    : key === 'who'
      ? `${e.actor.method}:${e.actor.name}`
      : key === 'request'
        ? `${e.request.method} ${e.request.path}`
        : `${e.result.status} ${e.result.error ?? ''}`;

/**
 * The audit log's entries, the newest first until a column is chosen; `prefix` names its URL
 * parameters (two pages show it beside other tables). Ties go by the entry's number, padded so
 * that its text sorts as the number does.
 */
function AuditTable(props: { entries: AuditEntryBody[]; prefix: string }) {
  const sort = sortOf(AUDIT_COLUMNS, { key: 'time', dir: -1, prefix: props.prefix });
  const rows = sortRows(props.entries, sort, auditCell, (e) => String(e.id).padStart(16, '0'));
  return (
    <table>
      <thead>
        <tr>
          <SortHeader column="time" label="Time" sort={sort} />
          <SortHeader column="who" label="Who" sort={sort} />
          <SortHeader column="request" label="Request" sort={sort} />
          <SortHeader column="result" label="Result" sort={sort} />
        </tr>
      </thead>
      <tbody>
        {rows.map((e) => (
          <tr key={e.id} data-row={String(e.id)}>
            <td>{when(e.time)}</td>
            <td>{auditCell(e, 'who')}</td>
            <td>{auditCell(e, 'request')}</td>
            <td>{auditCell(e, 'result')}</td>
          </tr>
        ))}
      </tbody>
    </table>
  );
}

export function Operations() {
  // The newest first until a column is chosen.
  const sort = sortOf(['createdAt', 'description', 'status', 'progress'] as const, {
    key: 'createdAt',
    dir: -1,
  });
  const list = sortRows(
    operations.value.values(),
    sort,
    (o, key) => (key === 'progress' ? (o.progress ?? -1) : o[key]),
    (o) => o.id,
  );
  // The daemon keeps operations in memory; what survives its restarts is the audit log, an admin's to read.
  const admin = session.value?.user.role === 'admin';
  const history = useLoad(
    () => (admin ? api.audit({ project: project.value, limit: 300 }) : Promise.resolve([])),
    [admin, project.value],
  );
  return (
    <Page title="Operations">
      <div class="panel table-wrap">
        <table aria-label="Operations">
          <thead>
            <tr>
              <SortHeader column="createdAt" label="Started" sort={sort} />
              <SortHeader column="description" label="What" sort={sort} />
              <SortHeader column="status" label="Status" sort={sort} />
              <SortHeader column="progress" label="Progress" sort={sort} />
              <th>
                <span class="sr-only">Actions</span>
              </th>
            </tr>
          </thead>
          <tbody>
            {list.map((o) => (
              <tr key={o.id} data-row={o.id}>
                <td>{when(o.createdAt)}</td>
                <td>{o.description}</td>
                <td>
                  <Status value={o.status} /> {o.error ?? ''}
                </td>
                <td>{o.progress !== null ? `${Math.round(o.progress)}%` : (o.progressText ?? '')}</td>
                <td>
                  {o.mayCancel && (o.status === 'Running' || o.status === 'Pending') && (
                    <Action
                      label={`Cancel ${o.description}`}
                      run={async () => {
                        await api.cancelOperation(o.id);
                        // Its end shows when it comes, whether or not the stream carries it.
                        const end = await api.waitOperation(o.id, 30);
                        operations.value = new Map(operations.value).set(end.id, end);
                      }}
                    >
                      Cancel
                    </Action>
                  )}
                </td>
              </tr>
            ))}
          </tbody>
        </table>
        {list.length === 0 && <p class="muted">No operations since the daemon started.</p>}
      </div>
      {admin && (
        <div class="panel table-wrap">
          <h2>Task history (audit log, kept across restarts)</h2>
          {history.data ? (
            <AuditTable
              prefix="history-"
              entries={history.data.filter((e) => e.operation !== undefined || e.result.status >= 400)}
            />
          ) : (
            <Loading error={history.error} />
          )}
        </div>
      )}
    </Page>
  );
}

export function Admin() {
  const hostAdmin = session.value?.user.role === 'admin' && session.value.user.projects.includes('*');
  const projects = useLoad(() => api.listProjects(), []);
  const tokens = useLoad(() => (hostAdmin ? api.listTokens() : Promise.resolve([])), [hostAdmin]);
  const certificates = useLoad(() => (hostAdmin ? api.listCertificates() : Promise.resolve([])), [hostAdmin]);
  const audit = useLoad(
    () => (hostAdmin ? api.audit({ limit: 50, allProjects: true }) : Promise.resolve([])),
    [hostAdmin],
  );
  const secret = useSignal('');
  const link = useSignal('');
  // Three tables on one page: each sort has its own URL parameters.
  const projectSort = sortOf(['name', 'guests'] as const, { key: 'name', dir: 1, prefix: 'projects-' });
  const tokenSort = sortOf(['name', 'role', 'projects'] as const, { key: 'name', dir: 1, prefix: 'tokens-' });
  const certificateSort = sortOf(['name', 'role', 'fingerprint'] as const, {
    key: 'name',
    dir: 1,
    prefix: 'certificates-',
  });
  return (
    <Page title="Administration">
      <div class="panel">
        <h2>Projects</h2>
        {projects.data ? (
          <table>
            <thead>
              <tr>
                <SortHeader column="name" label="Name" sort={projectSort} />
                <SortHeader column="guests" label="Guests" sort={projectSort} />
                <th>Limits</th>
                <th>
                  <span class="sr-only">Actions</span>
                </th>
              </tr>
            </thead>
            <tbody>
              {sortRows(
                projects.data,
                projectSort,
                (p, key) => (key === 'guests' ? p.usage.guests : p.name),
                (p) => p.name,
              ).map((p) => (
                <tr key={p.name} data-row={p.name}>
                  <td>
                    <Link to={`/guests?project=${encodeURIComponent(p.name)}`}>{p.name}</Link>
                  </td>
                  <td>{p.usage.guests}</td>
                  <td>
                    {Object.entries(p.config)
                      .map(([k, v]) => `${k}=${v}`)
                      .join(', ') || '–'}
                  </td>
                  <td>
                    {p.name !== 'default' && (
                      <Action
                        kind="danger"
                        label={`Delete project ${p.name}`}
                        confirm={`Delete project ${p.name}?`}
                        run={async () => {
                          await api.deleteProject(p.name);
                          projects.reload();
                        }}
                      >
                        Delete
                      </Action>
                    )}
                  </td>
                </tr>
              ))}
            </tbody>
          </table>
        ) : (
          <Loading error={projects.error} />
        )}
        {hostAdmin && (
          <>
            <Form
              label="Create a project"
              submit="Create project"
              done="Project created"
              run={async (d) => {
                await api.createProject({ name: String(d.get('name')) });
                projects.reload();
              }}
            >
              <Field label="Project name">{(id) => <input id={id} name="name" required />}</Field>
            </Form>
            <Form
              label="Set a project limit"
              submit="Set limit"
              done="Limit set"
              run={async (d) => {
                await api.updateProject(String(d.get('project')), {
                  set: { [String(d.get('key'))]: String(d.get('value')) },
                });
                projects.reload();
              }}
            >
              <div class="row">
                <Field label="Project">{(id) => <input id={id} name="project" required />}</Field>
                <Field label="Limit key">
                  {(id) => <input id={id} name="key" required placeholder="limits.guests" />}
                </Field>
                <Field label="Limit value">{(id) => <input id={id} name="value" required />}</Field>
              </div>
            </Form>
          </>
        )}
      </div>
      {hostAdmin && (
        <>
          <div class="panel">
            <h2>Login link</h2>
            <p class="muted">A one-time link that signs a browser in as you, good for 10 minutes.</p>
            <Action
              run={async () => {
                const l = await api.createWebLink();
                link.value = `${location.origin}${l.path}`;
              }}
            >
              Make a login link
            </Action>
            {link.value && (
              <p>
                <code style={{ overflowWrap: 'anywhere' }}>{link.value}</code>
              </p>
            )}
          </div>
          <div class="panel">
            <h2>API tokens</h2>
            <table>
              <thead>
                <tr>
                  <SortHeader column="name" label="Name" sort={tokenSort} />
                  <SortHeader column="role" label="Role" sort={tokenSort} />
                  <SortHeader column="projects" label="Projects" sort={tokenSort} />
                  <th>
                    <span class="sr-only">Actions</span>
                  </th>
                </tr>
              </thead>
              <tbody>
                {sortRows(
                  tokens.data ?? [],
                  tokenSort,
                  (t, key) => (key === 'projects' ? t.projects.join(', ') : t[key]),
                  (t) => t.name,
                ).map((t) => (
                  <tr key={t.name} data-row={t.name}>
                    <td>{t.name}</td>
                    <td>{t.role}</td>
                    <td>{t.projects.join(', ')}</td>
                    <td>
                      <Action
                        kind="danger"
                        label={`Revoke token ${t.name}`}
                        confirm={`Revoke token ${t.name}?`}
                        run={async () => {
                          await api.revokeToken(t.name);
                          tokens.reload();
                        }}
                      >
                        Revoke
                      </Action>
                    </td>
                  </tr>
                ))}
              </tbody>
            </table>
            <Form
              label="Create a token"
              submit="Create token"
              run={async (d) => {
                const made = await api.createToken({
                  name: String(d.get('name')),
                  role: d.get('role') as 'viewer' | 'operator' | 'admin',
                  projects: String(d.get('projects') || '*')
                    .split(',')
                    .map((p) => p.trim())
                    .filter(Boolean),
                });
                secret.value = made.secret;
                tokens.reload();
              }}
            >
              <div class="row">
                <Field label="Token name">{(id) => <input id={id} name="name" required />}</Field>
                <Field label="Role">
                  {(id) => (
                    <select id={id} name="role">
                      <option>viewer</option>
                      <option>operator</option>
                      <option>admin</option>
                    </select>
                  )}
                </Field>
                <Field label="Projects" hint="Comma-separated, or * for all">
                  {(id) => <input id={id} name="projects" placeholder="*" />}
                </Field>
              </div>
            </Form>
            {secret.value && (
              <p role="status">
                The token's secret, shown once:{' '}
                <code style={{ overflowWrap: 'anywhere' }}>{secret.value}</code>
              </p>
            )}
          </div>
          <div class="panel">
            <h2>Trusted client certificates</h2>
            <table>
              <thead>
                <tr>
                  <SortHeader column="name" label="Name" sort={certificateSort} />
                  <SortHeader column="role" label="Role" sort={certificateSort} />
                  <SortHeader column="fingerprint" label="Fingerprint" sort={certificateSort} />
                  <th>
                    <span class="sr-only">Actions</span>
                  </th>
                </tr>
              </thead>
              <tbody>
                {sortRows(
                  certificates.data ?? [],
                  certificateSort,
                  (c, key) => c[key],
                  (c) => c.fingerprint,
                ).map((c) => (
                  <tr key={c.fingerprint} data-row={c.fingerprint}>
                    <td>{c.name}</td>
                    <td>{c.role}</td>
                    <td>{c.fingerprint.slice(0, 16)}…</td>
                    <td>
                      <Action
                        kind="danger"
                        label={`Stop trusting ${c.name}`}
                        run={async () => {
                          await api.untrustCertificate(c.fingerprint);
                          certificates.reload();
                        }}
                      >
                        Remove
                      </Action>
                    </td>
                  </tr>
                ))}
              </tbody>
            </table>
            <Form
              label="Trust a certificate"
              submit="Trust"
              done="Certificate trusted"
              run={async (d) => {
                await api.trustCertificate({
                  certificate: String(d.get('pem')),
                  role: d.get('role') as 'viewer' | 'operator' | 'admin',
                  projects: ['*'],
                });
                certificates.reload();
              }}
            >
              <Field label="Certificate (PEM)">
                {(id) => <textarea id={id} name="pem" rows={4} required />}
              </Field>
              <Field label="Certificate role">
                {(id) => (
                  <select id={id} name="role">
                    <option>viewer</option>
                    <option>operator</option>
                    <option>admin</option>
                  </select>
                )}
              </Field>
            </Form>
          </div>
          <div class="panel table-wrap">
            <h2>Audit log (newest 50)</h2>
            <AuditTable prefix="audit-" entries={audit.data ?? []} />
          </div>
        </>
      )}
      <div class="panel">
        <Action
          run={async () => {
            await api.signOut();
            location.assign('/login');
          }}
        >
          Sign out
        </Action>
      </div>
    </Page>
  );
}
