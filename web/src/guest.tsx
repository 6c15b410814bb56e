import { useSignal } from '@preact/signals';
import { useState } from 'preact/hooks';
import type { Guest } from '../../src/api/types.ts';
import { Charts, Terminal, Vnc } from './lazy.tsx';
import { navigate, route, withQuery } from './router.ts';
import { SortHeader, sortOf, sortRows } from './sort.tsx';
import { api, finished, guests, operations, project, readGuest, recentEvents, session } from './state.ts';
import {
  Action,
  bytes,
  Field,
  Form,
  Link,
  Loading,
  OperationProgress,
  Page,
  Status,
  Tabs,
  useLoad,
  when,
} from './ui.tsx';

const TABS: Array<[string, string]> = [
  ['overview', 'Overview'],
  ['config', 'Configuration'],
  ['snapshots', 'Snapshots'],
  ['backups', 'Backups'],
  ['volumes', 'Volumes'],
  ['nics', 'Network'],
  ['files', 'Files'],
  ['events', 'Events'],
  ['console', 'Console'],
  ['metrics', 'Charts'],
];

/** One guest: its state and every action on it, each section under its own URL (`?tab=`). */
export function GuestPage(props: { name: string }) {
  const tab = route.value.query.get('tab') ?? 'overview';
  // The list the event stream keeps current; read once when it does not have the guest (yet).
  const live = guests.value.get(props.name);
  const fetched = useLoad(
    () => (live ? Promise.resolve(live) : api.getGuest(props.name)),
    [props.name, !!live],
  );
  const guest = live ?? fetched.data;
  if (!guest) return <Page title={props.name}>{<Loading error={fetched.error} />}</Page>;
  return (
    <Page title={guest.name} actions={<StateActions guest={guest} />}>
      <p>
        <Status value={guest.status} /> {guest.model} · {guest.imageAlias || guest.image.slice(0, 12)}
        {guest.error && <span role="alert"> · {guest.error}</span>}
      </p>
      <Tabs tabs={TABS} current={tab} />
      {tab === 'overview' && <Overview guest={guest} />}
      {tab === 'config' && <Config guest={guest} />}
      {tab === 'snapshots' && <Snapshots guest={guest} />}
      {tab === 'backups' && <Backups guest={guest} />}
      {tab === 'volumes' && <Volumes guest={guest} />}
      {tab === 'nics' && <Nics guest={guest} />}
      {tab === 'files' && <Files guest={guest} />}
      {tab === 'events' && <Events guest={guest} />}
      {tab === 'console' && <Console guest={guest} />}
      {tab === 'metrics' && <Charts target={{ kind: 'guest', name: guest.name }} />}
    </Page>
  );
}

function StateActions(props: { guest: Guest }) {
  const g = props.guest;
  const change = (action: 'start' | 'stop' | 'restart' | 'freeze' | 'unfreeze') => async () =>
    finished(await api.changeGuestState(g.name, { action }));
  return (
    <>
      {g.status !== 'Running' && g.status !== 'Frozen' && (
        <Action kind="primary" run={change('start')}>
          Start
        </Action>
      )}
      {g.status === 'Running' && <Action run={change('stop')}>Stop</Action>}
      {g.status === 'Running' && <Action run={change('restart')}>Restart</Action>}
      {g.status === 'Running' && <Action run={change('freeze')}>Freeze</Action>}
      {g.status === 'Frozen' && <Action run={change('unfreeze')}>Unfreeze</Action>}
      <Action
        kind="danger"
        confirm={`Delete ${g.name}${g.status === 'Running' ? ' (it is running: it is stopped first)' : ''}?`}
        run={async () => {
          await finished(await api.deleteGuest(g.name, { force: true }));
          navigate('/guests');
        }}
      >
        Delete
      </Action>
    </>
  );
}

function Overview(props: { guest: Guest }) {
  const g = props.guest;
  const state = useLoad(() => api.getGuestState(g.name), [g.name, g.status]);
  const u = state.data?.usage;
  return (
    <div class="panel">
      <dl class="facts">
        <dt>Status</dt>
        <dd>{g.status}</dd>
        <dt>Project</dt>
        <dd>{g.project}</dd>
        <dt>Host</dt>
        <dd>{g.host}</dd>
        {/* The scheduler's reason for the member (decision 0033); absent when it was not placed by it. */}
        {g.placement && (
          <>
            <dt>Placed there</dt>
            <dd data-testid="guest-placement">{g.placement}</dd>
          </>
        )}
        <dt>Created</dt>
        <dd>{when(g.createdAt)}</dd>
        <dt>Started</dt>
        <dd>{when(state.data?.startedAt)}</dd>
        <dt>Process</dt>
        <dd>{state.data?.pid ?? '–'}</dd>
        <dt>Addresses</dt>
        <dd>{(state.data?.addresses ?? g.state.addresses ?? []).join(', ') || '–'}</dd>
        <dt>Memory</dt>
        <dd>
          {u ? `${bytes(u.memoryBytes)}${u.memoryLimitBytes ? ` of ${bytes(u.memoryLimitBytes)}` : ''}` : '–'}
        </dd>
        <dt>CPU time</dt>
        <dd>{u ? `${u.cpuSeconds.toFixed(1)} s` : '–'}</dd>
        <dt>Processes</dt>
        <dd>{u?.processes ?? '–'}</dd>
        <dt>Restarts</dt>
        <dd>{state.data?.restartCount ?? 0}</dd>
      </dl>
      {(state.data?.warnings ?? []).map((w) => (
        <p key={w} role="alert">
          {w}
        </p>
      ))}
      {g.location !== undefined && <MoveGuest guest={g} />}
      <h2>Copy</h2>
      <Form
        label="Copy this guest"
        submit="Copy"
        done="Copied"
        run={async (d) => finished(await api.copyGuest(g.name, String(d.get('name'))))}
      >
        <Field label="Name of the copy">{(id) => <input id={id} name="name" required />}</Field>
      </Form>
    </div>
  );
}

/**
 * On a cluster: moves the guest to another Online member (decision 0040), cold: stopped, moved
 * with its snapshots, started there if it ran. Shown to those who may read the members.
 */
function MoveGuest(props: { guest: Guest }) {
  const g = props.guest;
  const others = useLoad(async () => {
    const info = await api.clusterInfo();
    if (!info.enabled) return [];
    return (await api.listMembers())
      .filter((m) => m.status === 'Online' && m.name !== g.location)
      .map((m) => m.name);
  }, [g.location]);
  const choice = useSignal('');
  const targets = others.data ?? [];
  if (targets.length === 0) return null;
  const target = targets.includes(choice.value) ? choice.value : (targets[0] as string);
  return (
    <>
      <h2>Move</h2>
      <div class="row" data-testid="move-guest">
        <Field label="Move to member">
          {(id) => (
            <select
              id={id}
              value={target}
              onChange={(e) => {
                choice.value = (e.currentTarget as HTMLSelectElement).value;
              }}
            >
              {targets.map((m) => (
                <option key={m} value={m}>
                  {m}
                </option>
              ))}
            </select>
          )}
        </Field>
        <Action
          confirm={`Move ${g.name} from ${g.location} to ${target}?${g.status === 'Running' ? ' It is stopped, moved and started again there.' : ''}`}
          done={`${g.name} moved to ${target}`}
          run={async () => finished(await api.moveGuest(g.name, target))}
        >
          Move
        </Action>
      </div>
    </>
  );
}

function Config(props: { guest: Guest }) {
  const g = props.guest;
  const [pending, setPending] = useState<string[]>([]);
  // Each tab's table has its own URL parameters: the tabs keep the query when switched.
  const sort = sortOf(['key', 'value'] as const, { key: 'key', dir: 1, prefix: 'config-' });
  const shown = (k: string, v: string) => (k.startsWith('files.') ? '(file)' : v);
  const entries = sortRows(
    Object.entries(g.config),
    sort,
    ([k, v], key) => (key === 'key' ? k : shown(k, v)),
    ([k]) => k,
  );
  return (
    <div class="panel">
      <p class="muted">
        limits.cpu, limits.memory (ct), limits.processes, boot.*, user.* and environment.* apply live to a
        running guest; other keys at its next start.
      </p>
      <div class="table-wrap">
        <table>
          <thead>
            <tr>
              <SortHeader column="key" label="Key" sort={sort} />
              <SortHeader column="value" label="Value" sort={sort} />
              <th>
                <span class="sr-only">Actions</span>
              </th>
            </tr>
          </thead>
          <tbody>
            {entries.map(([k, v]) => (
              <tr key={k} data-row={k}>
                <td>{k}</td>
                <td>{shown(k, v)}</td>
                <td>
                  <Action
                    label={`Remove ${k}`}
                    run={async () => {
                      const r = await api.updateGuestConfig(g.name, { unset: [k] });
                      setPending(r.pendingRestart);
                      guests.value = new Map(guests.value).set(g.name, r.guest);
                    }}
                  >
                    Remove
                  </Action>
                </td>
              </tr>
            ))}
          </tbody>
        </table>
      </div>
      {pending.length > 0 && <p role="status">Applies at the next start: {pending.join(', ')}</p>}
      <h2>Set a key</h2>
      <Form
        label="Set a configuration key"
        submit="Set"
        done="Configuration changed"
        run={async (d) => {
          const r = await api.updateGuestConfig(g.name, {
            set: { [String(d.get('key'))]: String(d.get('value')) },
          });
          setPending(r.pendingRestart);
          guests.value = new Map(guests.value).set(g.name, r.guest);
        }}
      >
        <Field label="Key">{(id) => <input id={id} name="key" required placeholder="limits.memory" />}</Field>
        <Field label="Value">{(id) => <input id={id} name="value" required placeholder="512MiB" />}</Field>
      </Form>
    </div>
  );
}

function Snapshots(props: { guest: Guest }) {
  const g = props.guest;
  const list = useLoad(() => api.listSnapshots(g.name), [g.name]);
  const sort = sortOf(['name', 'createdAt'] as const, { key: 'name', dir: 1, prefix: 'snapshots-' });
  return (
    <div class="panel">
      <Form
        label="Take a snapshot"
        submit="Take snapshot"
        done="Snapshot taken"
        run={async (d) => {
          await finished(await api.createSnapshot(g.name, String(d.get('snapshot'))));
          list.reload();
        }}
      >
        <Field label="Snapshot name">{(id) => <input id={id} name="snapshot" required />}</Field>
      </Form>
      {list.data ? (
        <div class="table-wrap">
          <table>
            <thead>
              <tr>
                <SortHeader column="name" label="Name" sort={sort} />
                <SortHeader column="createdAt" label="Taken" sort={sort} />
                <th>
                  <span class="sr-only">Actions</span>
                </th>
              </tr>
            </thead>
            <tbody>
              {sortRows(
                list.data,
                sort,
                (s, key) => s[key],
                (s) => s.name,
              ).map((s) => (
                <tr key={s.name} data-row={s.name}>
                  <td>{s.name}</td>
                  <td>{when(s.createdAt)}</td>
                  <td class="row">
                    <Action
                      confirm={`Restore ${g.name} to ${s.name}? What changed since is lost.`}
                      done="Restored"
                      run={async () => finished(await api.restoreSnapshot(g.name, s.name))}
                    >
                      Restore
                    </Action>
                    <Action
                      kind="danger"
                      confirm={`Delete snapshot ${s.name}?`}
                      run={async () => {
                        await finished(await api.deleteSnapshot(g.name, s.name));
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
  );
}

/** A backup's name, `backup-` and 16 hex digits, as the API takes one. */
function backupName(): string {
  const digits = Array.from(crypto.getRandomValues(new Uint8Array(8)), (b) =>
    b.toString(16).padStart(2, '0'),
  );
  return `backup-${digits.join('')}`;
}

/** Hands a finished archive to the browser as a download. */
function saveBlob(blob: Blob, fileName: string): void {
  const url = URL.createObjectURL(blob);
  const a = document.createElement('a');
  a.href = url;
  a.download = fileName;
  document.body.append(a);
  a.click();
  a.remove();
  // The download has taken the blob once the click has been handled.
  setTimeout(() => URL.revokeObjectURL(url), 60_000);
}

/** A backup made on this page: the API lists none, so the page keeps what its operations answered. */
interface MadeBackup {
  name: string;
  sizeBytes: number;
  madeAt: string;
  /** Made with its disk stored plain, for a live import (decision 0063). */
  uncompressed: boolean;
}

function Backups(props: { guest: Guest }) {
  const g = props.guest;
  const made = useSignal<MadeBackup[]>([]);
  const progress = useSignal<number | null>(null);
  /** The import under way: its progress is the operation's, as the event stream brings it. */
  const importing = useSignal<string | null>(null);
  const uncompressed = useSignal(false);
  const sort = sortOf(['name', 'sizeBytes', 'madeAt'] as const, {
    key: 'madeAt',
    dir: 1,
    prefix: 'backups-',
  });
  const importOp = importing.value ? operations.value.get(importing.value) : undefined;
  /** Bytes of the backup being made that the page has received, while it downloads. */
  const received = useSignal<number | null>(null);
  return (
    <div class="panel">
      <h2>Export</h2>
      <div class="row">
        {/* Only a vm disk is read in place by a live import; the API refuses the others (decision 0063). */}
        {g.model === 'vm' && (
          <label style={{ fontWeight: 'normal' }}>
            <input
              type="checkbox"
              name="uncompressed"
              checked={uncompressed.value}
              onChange={(e) => {
                uncompressed.value = e.currentTarget.checked;
              }}
            />{' '}
            Uncompressed, for a live import (larger; without snapshots)
          </label>
        )}
        <Action
          kind="primary"
          done="Backup made and downloaded"
          run={async () => {
            const plain = g.model === 'vm' && uncompressed.value;
            // Named here, so that the download follows the archive while the daemon writes it
            // (issue 20 §4). An uncompressed export carries no snapshots: the API refuses the two together.
            const name = backupName();
            const op = await api.createBackup(
              g.name,
              plain ? { uncompressed: true, name } : { snapshots: true, name },
            );
            received.value = 0;
            try {
              const exported = finished(op);
              const downloading = api
                .followBackup(
                  g.name,
                  name,
                  (n) => {
                    received.value = n;
                  },
                  exported,
                )
                .catch(async (e: unknown) => {
                  // Nothing more of it can be kept: the daemon stops writing it.
                  await api.cancelOperation(op.id).catch(() => {});
                  throw e;
                });
              const [waited, downloaded] = await Promise.allSettled([exported, downloading]);
              if (waited.status === 'rejected' || downloaded.status === 'rejected') {
                // Not listed on the page, so not left on the daemon either.
                await api.deleteBackup(g.name, name).catch(() => {});
              }
              // The export's own failure names the cause; the download's says only that it stopped.
              if (waited.status === 'rejected') throw waited.reason;
              if (downloaded.status === 'rejected') throw downloaded.reason;
              const { sizeBytes } = waited.value.metadata;
              made.value = [
                ...made.value,
                {
                  name,
                  sizeBytes: typeof sizeBytes === 'number' ? sizeBytes : -1,
                  madeAt: waited.value.updatedAt,
                  uncompressed: plain,
                },
              ];
              saveBlob(downloaded.value, `${g.name}-${name}.tar`);
            } finally {
              received.value = null;
            }
          }}
        >
          Make a backup
        </Action>
        {received.value !== null && <span class="muted">Downloading: {bytes(received.value)}</span>}
      </div>
      {made.value.length > 0 && (
        <div class="table-wrap">
          <table>
            <thead>
              <tr>
                <SortHeader column="name" label="Backup" sort={sort} />
                <SortHeader column="sizeBytes" label="Size" sort={sort} />
                <SortHeader column="madeAt" label="Made" sort={sort} />
                <th>
                  <span class="sr-only">Actions</span>
                </th>
              </tr>
            </thead>
            <tbody>
              {sortRows(
                made.value,
                sort,
                (b, key) => b[key],
                (b) => b.name,
              ).map((b) => (
                <tr key={b.name} data-row={b.name}>
                  <td>
                    {b.name}
                    {b.uncompressed && <span class="muted"> (uncompressed)</span>}
                  </td>
                  <td>{b.sizeBytes < 0 ? '–' : bytes(b.sizeBytes)}</td>
                  <td>{when(b.madeAt)}</td>
                  <td class="row">
                    <a href={api.backupUrl(g.name, b.name)} download={`${g.name}-${b.name}.tar`}>
                      Download {b.name}
                    </a>
                    <Action
                      label={`Delete ${b.name} from the daemon`}
                      run={async () => {
                        await api.deleteBackup(g.name, b.name);
                        made.value = made.value.filter((x) => x.name !== b.name);
                      }}
                    >
                      Delete from the daemon
                    </Action>
                  </td>
                </tr>
              ))}
            </tbody>
          </table>
        </div>
      )}
      <h2>Import</h2>
      <Form
        label="Import a backup"
        submit="Upload and import"
        done="Backup imported"
        run={async (d) => {
          const file = d.get('archive');
          if (!(file instanceof File) || file.size === 0) throw new Error('Choose a backup archive first');
          const live = d.get('live') === 'on';
          try {
            const op = await api.importBackup(
              file,
              { name: String(d.get('name') || ''), ...(live && { live: true }) },
              (f) => {
                progress.value = f;
              },
            );
            progress.value = null;
            operations.value = new Map(operations.value).set(op.id, op);
            importing.value = op.id;
            await finished(op);
          } finally {
            progress.value = null;
            importing.value = null;
          }
        }}
      >
        <Field label="Backup archive">{(id) => <input id={id} name="archive" type="file" required />}</Field>
        <Field label="Name of the imported guest" hint="Default: the name in the archive">
          {(id) => <input id={id} name="name" />}
        </Field>
        <label style={{ fontWeight: 'normal' }}>
          <input type="checkbox" name="live" /> Live: start it at once
        </label>
        <p class="muted">
          For a vm guest exported uncompressed: it runs from the archive while its disk is copied behind it.
        </p>
        {progress.value !== null && <progress value={progress.value} max={1} aria-label="Upload progress" />}
        {importOp && <OperationProgress op={importOp} testId="import-progress" />}
      </Form>
    </div>
  );
}

function Volumes(props: { guest: Guest }) {
  const g = props.guest;
  const pools = useLoad(() => api.listPools().catch(() => []), []);
  const sort = sortOf(['device', 'volume', 'path'] as const, { key: 'device', dir: 1, prefix: 'volumes-' });
  const disks = sortRows(
    Object.entries(g.disks ?? {}),
    sort,
    ([device, d], key) =>
      key === 'device' ? device : key === 'volume' ? `${d.pool}/${d.source}` : (d.path ?? '–'),
    ([device]) => device,
  );
  return (
    <div class="panel">
      {disks.length === 0 ? (
        <p class="muted">No volumes attached.</p>
      ) : (
        <table>
          <thead>
            <tr>
              <SortHeader column="device" label="Device" sort={sort} />
              <SortHeader column="volume" label="Volume" sort={sort} />
              <SortHeader column="path" label="Path" sort={sort} />
              <th>
                <span class="sr-only">Actions</span>
              </th>
            </tr>
          </thead>
          <tbody>
            {disks.map(([device, d]) => (
              <tr key={device} data-row={device}>
                <td>{device}</td>
                <td>
                  {d.pool}/{d.source}
                </td>
                <td>{d.path ?? '–'}</td>
                <td>
                  <Action
                    run={async () => {
                      await api.detachVolume(d.pool, d.source, { guest: g.name, device });
                      await readGuest(g.name);
                    }}
                    done="Detached"
                  >
                    Detach
                  </Action>
                </td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
      <h2>Attach a volume</h2>
      <Form
        label="Attach a volume"
        submit="Attach"
        done="Attached"
        run={async (d) => {
          const path = String(d.get('path') || '');
          await api.attachVolume(String(d.get('pool')), String(d.get('volume')), {
            guest: g.name,
            ...(path ? { path } : {}),
          });
          await readGuest(g.name);
        }}
      >
        <Field label="Pool">
          {(id) => (
            <select id={id} name="pool">
              {(pools.data ?? []).map((p) => (
                <option key={p.name}>{p.name}</option>
              ))}
            </select>
          )}
        </Field>
        <Field label="Volume">{(id) => <input id={id} name="volume" required />}</Field>
        {g.model === 'ct' && (
          <Field label="Mount path">{(id) => <input id={id} name="path" placeholder="/data" />}</Field>
        )}
      </Form>
    </div>
  );
}

function Nics(props: { guest: Guest }) {
  const g = props.guest;
  const networks = useLoad(() => api.listNetworks().catch(() => []), []);
  const sort = sortOf(['nic', 'network', 'hwaddr', 'addresses'] as const, {
    key: 'nic',
    dir: 1,
    prefix: 'nics-',
  });
  const hwaddr = (nic: string) => g.state.nics?.[nic]?.hwaddr ?? g.devices?.[nic]?.hwaddr ?? '–';
  const addresses = (nic: string) => (g.state.nics?.[nic]?.addresses ?? []).join(', ') || '–';
  const nics = sortRows(
    Object.entries(g.devices ?? {}),
    sort,
    ([nic, d], key) =>
      key === 'nic' ? nic : key === 'network' ? d.network : key === 'hwaddr' ? hwaddr(nic) : addresses(nic),
    ([nic]) => nic,
  );
  return (
    <div class="panel">
      <table>
        <thead>
          <tr>
            <SortHeader column="nic" label="NIC" sort={sort} />
            <SortHeader column="network" label="Network" sort={sort} />
            <SortHeader column="hwaddr" label="MAC" sort={sort} />
            <SortHeader column="addresses" label="Addresses" sort={sort} />
            <th>
              <span class="sr-only">Actions</span>
            </th>
          </tr>
        </thead>
        <tbody>
          {nics.map(([nic, d]) => {
            const s = g.state.nics?.[nic];
            return (
              <tr key={nic} data-row={nic}>
                <td>{nic}</td>
                <td>
                  <Link to={`/networks/${encodeURIComponent(d.network)}`}>{d.network}</Link>
                </td>
                <td>{hwaddr(nic)}</td>
                <td>
                  {addresses(nic)}
                  {s?.warning && <div role="alert">{s.warning}</div>}
                </td>
                <td>
                  <Action
                    run={async () => {
                      await api.detachNetwork(d.network, { guest: g.name, nic });
                      await readGuest(g.name);
                    }}
                    done="NIC removed"
                  >
                    Detach
                  </Action>
                </td>
              </tr>
            );
          })}
        </tbody>
      </table>
      <h2>Add a NIC</h2>
      <Form
        label="Add a NIC"
        submit="Attach"
        done="NIC added"
        run={async (d) => {
          // Empty fields are the API's defaults: the next free ethN, address and a stable MAC.
          const given = (key: string) => String(d.get(key) ?? '').trim();
          await api.attachNetwork(String(d.get('network')), {
            guest: g.name,
            ...(given('nic') && { nic: given('nic') }),
            ...(given('address') && { 'ipv4.address': given('address') }),
            ...(given('hwaddr') && { hwaddr: given('hwaddr') }),
          });
          await readGuest(g.name);
        }}
      >
        <Field label="Network">
          {(id) => (
            <select id={id} name="network">
              {(networks.data ?? []).map((n) => (
                <option key={n.name}>{n.name}</option>
              ))}
            </select>
          )}
        </Field>
        <div class="row">
          <Field label="NIC name" hint="Default: the next free ethN">
            {(id) => <input id={id} name="nic" placeholder="eth1" />}
          </Field>
          <Field label="IPv4 address" hint="Default: the next free one">
            {(id) => <input id={id} name="address" />}
          </Field>
          <Field label="MAC address" hint="Default: stable, from the guest and NIC">
            {(id) => <input id={id} name="hwaddr" />}
          </Field>
        </div>
      </Form>
    </div>
  );
}

/** Lists a directory of a running guest through exec (`ls -1Ap`), the public API's only way to see one. */
async function listDirectory(guest: string, dir: string): Promise<string[]> {
  const op = await finished(
    await api.startExec(guest, { command: ['ls', '-1Ap', '--', dir], 'record-output': true }),
  );
  const m = op.metadata as { return?: number; stdout?: string; stderr?: string };
  if (m.return !== 0) throw new Error((m.stderr ?? '').trim().split('\n')[0] || `Cannot list ${dir}`);
  return (m.stdout ?? '').split('\n').filter((l) => l !== '');
}

function Files(props: { guest: Guest }) {
  const g = props.guest;
  const dir = route.value.query.get('path') ?? '/';
  const running = g.status === 'Running';
  const entries = useLoad(
    () => (running ? listDirectory(g.name, dir) : Promise.resolve([])),
    [g.name, dir, running],
  );
  if (!running) return <p class="panel">Start the guest to browse its files.</p>;
  const join = (name: string) => `${dir.replace(/\/$/, '')}/${name}`;
  return (
    <div class="panel">
      <p>
        <strong>{dir}</strong>{' '}
        {dir !== '/' && <Link to={withQuery({ path: dir.replace(/\/[^/]+\/?$/, '') || '/' })}>Up</Link>}
      </p>
      {entries.data ? (
        <ul>
          {entries.data.map((e) =>
            e.endsWith('/') ? (
              <li key={e}>
                <Link to={withQuery({ path: join(e.slice(0, -1)) })}>{e}</Link>
              </li>
            ) : (
              <li key={e}>
                {e}{' '}
                <Action
                  label={`Download ${e}`}
                  run={async () => {
                    const { blob } = await api.pullFile(g.name, join(e));
                    const a = document.createElement('a');
                    a.href = URL.createObjectURL(blob);
                    a.download = e;
                    a.click();
                    setTimeout(() => URL.revokeObjectURL(a.href), 10_000);
                  }}
                >
                  Download
                </Action>
              </li>
            ),
          )}
        </ul>
      ) : (
        <Loading error={entries.error} />
      )}
      <h2>Upload a file here</h2>
      <Form
        label="Upload a file"
        submit="Upload"
        done="Uploaded"
        run={async (d) => {
          const file = d.get('file');
          if (!(file instanceof File) || !file.name) throw new Error('Choose a file first');
          await api.pushFile(g.name, join(file.name), file, { mode: String(d.get('mode') || '0644') });
          entries.reload();
        }}
      >
        <Field label="File">{(id) => <input id={id} name="file" type="file" required />}</Field>
        <Field label="Mode">{(id) => <input id={id} name="mode" value="0644" />}</Field>
      </Form>
    </div>
  );
}

function Events(props: { guest: Guest }) {
  const source = `/1.0/guests/${props.guest.name}`;
  const log = useLoad(() => api.consoleLog(props.guest.name).catch(() => ''), [props.guest.name]);
  // What was done to it before this page opened: the audit log (kept across restarts), an admin's to read.
  const admin = session.value?.user.role === 'admin';
  const history = useLoad(
    () =>
      admin
        ? api
            .audit({ project: project.value, limit: 1000 })
            .then((all) =>
              all.filter((e) => e.request.path.startsWith(source) || e.request.object === props.guest.name),
            )
        : Promise.resolve([]),
    [admin, props.guest.name, project.value],
  );
  const mine = recentEvents.value.filter(
    (e) =>
      e.source === source ||
      (
        (e.metadata as { operation?: { resources?: { guests?: string[] } } }).operation?.resources?.guests ??
        []
      ).includes(source),
  );
  return (
    <div class="panel">
      <h2>Events since this page opened</h2>
      {mine.length === 0 ? (
        <p class="muted">None yet: they appear here as they happen.</p>
      ) : (
        <ul data-testid="guest-events">
          {mine
            .slice()
            .reverse()
            .map((e, i) => (
              <li key={i}>
                {when(e.timestamp)} · {e.type} ·{' '}
                {e.action ??
                  `${(e.metadata as { operation?: { description?: string; status?: string } }).operation?.description} ${(e.metadata as { operation?: { status?: string } }).operation?.status}`}
              </li>
            ))}
        </ul>
      )}
      {admin && (
        <>
          <h2>Changes (audit log)</h2>
          {(history.data ?? []).length === 0 ? (
            <p class="muted">None recorded.</p>
          ) : (
            <ul>
              {(history.data ?? [])
                .slice()
                .reverse()
                .map((e) => (
                  <li key={e.id}>
                    {when(e.time)} · {e.actor.name} · {e.request.method} {e.request.path} · {e.result.status}
                    {e.result.error ? ` ${e.result.error}` : ''}
                  </li>
                ))}
            </ul>
          )}
        </>
      )}
      <h2>Console log</h2>
      <pre style={{ maxHeight: '300px', overflow: 'auto', whiteSpace: 'pre-wrap' }}>
        {log.data?.slice(-20_000) || '(empty)'}
      </pre>
    </div>
  );
}

function Console(props: { guest: Guest }) {
  const g = props.guest;
  const kinds: Array<[string, string]> = [['shell', 'Shell (exec)']];
  if (g.model !== 'ct') kinds.push(['console', g.model === 'vm' ? 'Serial console' : 'UML console']);
  if (g.model === 'vm' && g.config['vm.display'] !== 'false') kinds.push(['vga', 'Screen (VNC)']);
  const kind = route.value.query.get('console') ?? (g.model === 'ct' ? 'shell' : 'console');
  if (g.status !== 'Running' && g.status !== 'Frozen')
    return <p class="panel">Start the guest to open its console.</p>;
  return (
    <div class="panel">
      <fieldset class="row plain" style={{ marginBottom: '8px' }}>
        <legend class="sr-only">Console kind</legend>
        {kinds.map(([k, label]) => (
          <button
            type="button"
            key={k}
            aria-pressed={k === kind}
            class={k === kind ? 'primary' : undefined}
            onClick={() => navigate(withQuery({ console: k }), { replace: true })}
          >
            {label}
          </button>
        ))}
      </fieldset>
      {kind === 'vga' ? (
        <Vnc guest={g.name} />
      ) : (
        <Terminal key={kind} guest={g.name} mode={kind === 'shell' ? 'exec' : 'console'} />
      )}
    </div>
  );
}
