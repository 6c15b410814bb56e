import { useComputed, useSignal } from '@preact/signals';
import { useEffect, useRef, useState } from 'preact/hooks';
import type { Guest, Model, NicDevice, Operation } from '../../src/api/types.ts';
import { defaultMemory, type LimitKey, MODEL_LIMITS, memoryHint, memoryProblem } from './model-limits.ts';
import { navigate, route, withQuery } from './router.ts';
import { type Sort, SortHeader, sortOf, sortRows } from './sort.tsx';
import { api, attempt, finished, guests, guestsLoaded, host } from './state.ts';
import { Field, Link, Page, Status, useLoad } from './ui.tsx';

const ROW_HEIGHT = 40;
/** Rows drawn above and below the visible ones, so that scrolling shows no blank edge. */
const OVERSCAN = 10;
/** Never more rows in the DOM than this, whatever the window's height. */
const MAX_ROWS = 200;

type SortKey = 'name' | 'status' | 'model' | 'image' | 'createdAt';
const SORT_KEYS: readonly SortKey[] = ['name', 'status', 'model', 'image', 'createdAt'];
const BY_NAME: Sort<SortKey> = { key: 'name', dir: 1 };
const COLUMNS: Array<[SortKey | null, string]> = [
  ['name', 'Name'],
  ['status', 'Status'],
  ['model', 'Model'],
  ['image', 'Image'],
  [null, 'IPv4'],
  ['createdAt', 'Created'],
];

/** What a column shows is what it sorts by: the image column shows the alias, not the fingerprint. */
const sortValue = (g: Guest, key: SortKey): string =>
  key === 'image' ? g.imageAlias || g.image.slice(0, 12) : String(g[key] ?? '');

const addressesOf = (g: Guest) => (g.state.addresses ?? []).join(', ');

/** Matches a guest against the filter text: name, image, address or project, any part of it. */
const matches = (g: Guest, q: string) =>
  q === '' ||
  g.name.includes(q) ||
  g.imageAlias.toLowerCase().includes(q) ||
  addressesOf(g).includes(q) ||
  g.model === q;

/**
 * The guest list: filtered and sorted from the URL (`?q=&status=&model=&sort=&dir=`), drawn
 * through a window of at most 200 rows however many guests there are, with bulk actions that
 * say which guests failed and why.
 */
export function GuestList() {
  const query = route.value.query;
  const status = query.get('status') ?? '';
  const model = query.get('model') ?? '';
  const sort = sortOf(SORT_KEYS, BY_NAME);
  const selected = useSignal<Set<string>>(new Set());
  const results = useSignal<{ action: string; failed: Array<[string, string]>; ok: number } | null>(null);
  const [filterText, setFilterText] = useState(query.get('q') ?? '');

  // Everything the rows depend on is read inside: the URL's filters and the live list.
  const rows = useComputed(() => {
    const qs = route.value.query;
    const text = (qs.get('q') ?? '').toLowerCase();
    const wantStatus = qs.get('status') ?? '';
    const wantModel = qs.get('model') ?? '';
    const list = [...guests.value.values()].filter(
      (g) =>
        (!wantStatus || g.status === wantStatus) && (!wantModel || g.model === wantModel) && matches(g, text),
    );
    return sortRows(list, sortOf(SORT_KEYS, BY_NAME, qs), sortValue, (g) => g.name);
  });

  const bulk = async (action: 'start' | 'stop' | 'snapshot' | 'delete') => {
    const names = [...selected.value].filter((n) => guests.value.has(n));
    if (names.length === 0) return;
    if (action === 'delete' && !confirm(`Delete ${names.length} guest(s)? Running ones are stopped first.`))
      return;
    const failed: Array<[string, string]> = [];
    let ok = 0;
    const stamp = new Date().toISOString().replace(/[-:T]/g, '').slice(0, 14);
    const work = async (name: string) => {
      try {
        let op: Operation;
        if (action === 'start' || action === 'stop') op = await api.changeGuestState(name, { action });
        else if (action === 'snapshot') op = await api.createSnapshot(name, `snap-${stamp}`);
        else op = await api.deleteGuest(name, { force: true });
        await finished(op);
        ok++;
      } catch (e) {
        failed.push([name, e instanceof Error ? e.message : String(e)]);
      }
    };
    // A few at a time: the daemon works through them, and the page stays responsive.
    const queue = [...names];
    await Promise.all(
      Array.from({ length: Math.min(4, queue.length) }, async () => {
        for (let n = queue.shift(); n !== undefined; n = queue.shift()) await work(n);
      }),
    );
    failed.sort((a, b) => a[0].localeCompare(b[0]));
    results.value = { action, failed, ok };
    if (action === 'delete') selected.value = new Set([...selected.value].filter((n) => guests.value.has(n)));
  };

  return (
    <Page
      title="Guests"
      actions={
        <Link to="/new-guest" class="button primary">
          Create guest
        </Link>
      }
    >
      <div class="panel">
        <div class="row">
          <label for="guest-filter" class="sr-only">
            Filter guests
          </label>
          <input
            id="guest-filter"
            type="search"
            placeholder="Filter by name, image, address"
            value={filterText}
            onInput={(e) => {
              const v = e.currentTarget.value;
              setFilterText(v);
              navigate(withQuery({ q: v }), { replace: true });
            }}
          />
          <label for="status-filter" class="sr-only">
            Status
          </label>
          <select
            id="status-filter"
            value={status}
            onChange={(e) => navigate(withQuery({ status: e.currentTarget.value }), { replace: true })}
          >
            <option value="">Any status</option>
            {['Running', 'Stopped', 'Frozen', 'Error'].map((s) => (
              <option key={s}>{s}</option>
            ))}
          </select>
          <label for="model-filter" class="sr-only">
            Model
          </label>
          <select
            id="model-filter"
            value={model}
            onChange={(e) => navigate(withQuery({ model: e.currentTarget.value }), { replace: true })}
          >
            <option value="">Any model</option>
            <option value="ct">ct</option>
            <option value="pvm">pvm</option>
            <option value="vm">vm</option>
          </select>
          <span class="muted" aria-live="polite" data-testid="guest-count" data-q={query.get('q') ?? ''}>
            {guestsLoaded.value ? `${rows.value.length} of ${guests.value.size}` : 'Loading…'}
          </span>
        </div>
        <fieldset class="row plain" style={{ marginTop: '8px' }}>
          <legend class="sr-only">Bulk actions</legend>
          <span>{selected.value.size} selected</span>
          <button
            type="button"
            onClick={() => attempt(() => bulk('start'))}
            disabled={selected.value.size === 0}
          >
            Start
          </button>
          <button
            type="button"
            onClick={() => attempt(() => bulk('stop'))}
            disabled={selected.value.size === 0}
          >
            Stop
          </button>
          <button
            type="button"
            onClick={() => attempt(() => bulk('snapshot'))}
            disabled={selected.value.size === 0}
          >
            Snapshot
          </button>
          <button
            type="button"
            class="danger"
            onClick={() => attempt(() => bulk('delete'))}
            disabled={selected.value.size === 0}
          >
            Delete
          </button>
        </fieldset>
        {results.value && (
          <div role="alert" class="panel" style={{ marginTop: '8px' }} data-testid="bulk-results">
            <strong>
              {results.value.action}: {results.value.ok} succeeded, {results.value.failed.length} failed
            </strong>
            {results.value.failed.length > 0 && (
              <ul>
                {results.value.failed.map(([n, why]) => (
                  <li key={n}>
                    <strong>{n}</strong>: {why}
                  </li>
                ))}
              </ul>
            )}
            <button type="button" onClick={() => (results.value = null)}>
              Close
            </button>
          </div>
        )}
      </div>
      <Window
        rows={rows.value}
        selected={selected.value}
        onSelect={(next) => {
          selected.value = next;
        }}
        sort={sort}
      />
    </Page>
  );
}

function Window(props: {
  rows: Guest[];
  selected: Set<string>;
  onSelect: (s: Set<string>) => void;
  sort: Sort<SortKey>;
}) {
  const box = useRef<HTMLDivElement>(null);
  const [scroll, setScroll] = useState(0);
  const [height, setHeight] = useState(600);
  // Rows are as tall as the styles make them (fonts differ): measured once drawn.
  const [rowHeight, setRowHeight] = useState(ROW_HEIGHT);
  useEffect(() => {
    const el = box.current;
    if (!el) return;
    const observer = new ResizeObserver(() => setHeight(el.clientHeight));
    observer.observe(el);
    return () => observer.disconnect();
  }, []);
  useEffect(() => {
    const row = box.current?.querySelector<HTMLElement>('tr[data-guest]');
    if (row && row.offsetHeight > 0 && row.offsetHeight !== rowHeight) setRowHeight(row.offsetHeight);
  });
  const first = Math.max(0, Math.floor(scroll / rowHeight) - OVERSCAN);
  const count = Math.min(MAX_ROWS, Math.ceil(height / rowHeight) + 2 * OVERSCAN);
  const shown = props.rows.slice(first, first + count);
  const after = Math.max(0, props.rows.length - first - shown.length);
  const allShown = props.rows.length > 0 && props.rows.every((g) => props.selected.has(g.name));
  return (
    <div class="window" ref={box} onScroll={(e) => setScroll(e.currentTarget.scrollTop)}>
      <table class="guests" aria-label="Guests" aria-rowcount={props.rows.length + 1}>
        <thead>
          <tr>
            <th scope="col" class="pick">
              <input
                type="checkbox"
                aria-label="Select all shown"
                checked={allShown}
                onChange={(e) => {
                  const next = new Set(props.selected);
                  for (const g of props.rows) {
                    if (e.currentTarget.checked) next.add(g.name);
                    else next.delete(g.name);
                  }
                  props.onSelect(next);
                }}
              />
            </th>
            {COLUMNS.map(([key, label]) =>
              key ? (
                <SortHeader
                  key={label}
                  column={key}
                  label={label}
                  sort={props.sort}
                  class={key === 'image' || key === 'createdAt' ? 'hide-narrow' : undefined}
                />
              ) : (
                <th scope="col" key={label} class="hide-narrow">
                  {label}
                </th>
              ),
            )}
          </tr>
        </thead>
        <tbody>
          {first > 0 && (
            <tr class="spacer">
              <td colSpan={7} style={{ height: `${first * rowHeight}px` }} />
            </tr>
          )}
          {shown.map((g, i) => (
            <tr key={g.name} aria-rowindex={first + i + 2} data-guest={g.name}>
              <td class="pick">
                <input
                  type="checkbox"
                  aria-label={`Select ${g.name}`}
                  checked={props.selected.has(g.name)}
                  onChange={(e) => {
                    const next = new Set(props.selected);
                    if (e.currentTarget.checked) next.add(g.name);
                    else next.delete(g.name);
                    props.onSelect(next);
                  }}
                />
              </td>
              <td>
                <Link to={`/guests/${encodeURIComponent(g.name)}`}>{g.name}</Link>
              </td>
              <td>
                <Status value={g.status} />
              </td>
              <td>{g.model}</td>
              <td class="hide-narrow">{g.imageAlias || g.image.slice(0, 12)}</td>
              <td class="hide-narrow">{addressesOf(g)}</td>
              <td class="hide-narrow">{g.createdAt.slice(0, 10)}</td>
            </tr>
          ))}
          {after > 0 && (
            <tr class="spacer">
              <td colSpan={7} style={{ height: `${after * rowHeight}px` }} />
            </tr>
          )}
        </tbody>
      </table>
    </div>
  );
}

/** The label and hint of each limit of the wizard (keys as Incus names them), for a model. */
function limitField(key: LimitKey, model: Model): [label: string, hint: string] {
  switch (key) {
    case 'limits.cpu':
      return ['CPUs', 'e.g. 1 or 0.5'];
    case 'limits.memory':
      return ['Memory', memoryHint(model)];
    case 'limits.disk':
      return ['Disk', MODEL_LIMITS[model].diskHint];
    case 'limits.processes':
      return ['Processes', 'the most processes at once, e.g. 500'];
  }
}

/** A NIC of the wizard: its network ('' is none), and what the API lets a NIC fix ('' is its default). */
interface WizardNic {
  network: string;
  name: string;
  address: string;
  hwaddr: string;
}
const NO_NIC: WizardNic = { network: '', name: '', address: '', hwaddr: '' };

/**
 * The devices the wizard's NICs ask for: a NIC without a name takes the first ethN no other NIC
 * is named, so that eth0, eth1… come in order and a named one (`lan`) takes no number.
 */
function wizardDevices(nics: WizardNic[]): Record<string, NicDevice> {
  const chosen = nics.filter((n) => n.network !== '');
  const named = new Set(chosen.map((n) => n.name.trim()).filter(Boolean));
  const devices: Record<string, NicDevice> = {};
  let next = 0;
  for (const nic of chosen) {
    let name = nic.name.trim();
    if (!name) {
      while (named.has(`eth${next}`) || `eth${next}` in devices) next++;
      name = `eth${next}`;
    }
    devices[name] = {
      type: 'nic',
      network: nic.network,
      ...(nic.address.trim() && { 'ipv4.address': nic.address.trim() }),
      ...(nic.hwaddr.trim() && { hwaddr: nic.hwaddr.trim() }),
    };
  }
  return devices;
}

/** The create wizard for all three models: image and model, name and limits, networks and storage, files. */
export function CreateGuest() {
  const step = Number(route.value.query.get('step') ?? '1');
  const images = useLoad(() => api.listImages(), []);
  const networks = useLoad(() => api.listNetworks().catch(() => []), []);
  const pools = useLoad(() => api.listPools().catch(() => []), []);
  const form = useSignal({
    model: 'ct' as Model,
    image: '',
    name: '',
    limits: {} as Record<string, string>,
    /** One NIC per entry, eth0 first; one on no network is none. */
    nics: [NO_NIC],
    storage: '',
    files: [] as Array<{ path: string; content: string; mode: string }>,
    start: true,
  });
  const set = (patch: Partial<typeof form.value>) => {
    form.value = { ...form.value, ...patch };
  };
  const go = (n: number) => navigate(withQuery({ step: String(n) }));
  const [busy, setBusy] = useState(false);
  const f = form.value;

  // What the daemon's probe of each model's driver found (GET /1.0): a model it cannot run is
  // not offered, and its warnings (a vm under TCG, say) are shown beside it.
  const driverOf = (m: Model) => host.value?.environment?.drivers.find((d) => d.model === m);
  const unavailable = driverOf(f.model)?.supported === false;
  const devices = wizardDevices(f.nics);
  // The names the chosen NICs get, in their order: each name field shows its default.
  const nicNames = Object.keys(devices);
  // Only the chosen model's limits are sent: a key typed for another model is kept, not sent.
  const limits = MODEL_LIMITS[f.model].keys.flatMap((k) => {
    const v = f.limits[k]?.trim();
    return v ? [[k, v] as const] : [];
  });
  const memoryWrong = memoryProblem(f.model, f.limits['limits.memory'] ?? '');
  const setNic = (i: number, patch: Partial<WizardNic>) => {
    const nics = [...f.nics];
    nics[i] = { ...(nics[i] ?? NO_NIC), ...patch };
    set({ nics });
  };
  const create = async () => {
    const config: Record<string, string> = {};
    for (const [k, v] of limits) config[k] = v;
    for (const file of f.files) {
      if (!file.path.trim()) continue;
      const content = btoa(String.fromCharCode(...new TextEncoder().encode(file.content)));
      config[`files.${file.path.trim()}`] = `mode=${file.mode || '0644'},uid=0,gid=0,content=${content}`;
    }
    const op = await api.createGuest({
      name: f.name.trim(),
      image: f.image,
      model: f.model,
      config,
      start: f.start,
      ...(Object.keys(devices).length > 0 ? { devices } : {}),
      ...(f.storage ? { storage: f.storage } : {}),
    });
    await finished(op);
    navigate(`/guests/${encodeURIComponent(f.name.trim())}`);
  };

  const steps = ['Image and model', 'Name and limits', 'Networks and storage', 'Files', 'Review'];
  return (
    <Page title="Create a guest">
      <ol class="steps" aria-label="Steps">
        {steps.map((s, i) => (
          <li key={s} aria-current={i + 1 === step ? 'step' : undefined}>
            {i + 1}. {s}
          </li>
        ))}
      </ol>
      <div class="panel">
        {step === 1 && (
          <>
            <fieldset style={{ border: 0, padding: 0 }}>
              <legend>Model</legend>
              {(
                [
                  ['ct', 'Container (ct): shares the host kernel; lightest'],
                  ['pvm', 'Paravirtual machine (pvm): its own User-Mode Linux kernel'],
                  ['vm', 'Virtual machine (vm): QEMU, any OS'],
                ] as const
              ).map(([m, text]) => {
                const d = driverOf(m);
                return (
                  <label key={m} style={{ fontWeight: 'normal' }} data-model={m}>
                    <input
                      type="radio"
                      name="model"
                      checked={f.model === m}
                      disabled={d?.supported === false}
                      onChange={() => set({ model: m })}
                    />{' '}
                    {text}
                    {d?.supported === false && <strong> (not available on this host)</strong>}
                    {d && d.warnings.length > 0 && <span class="muted"> · {d.warnings.join(' · ')}</span>}
                  </label>
                );
              })}
            </fieldset>
            <Field label="Image">
              {(id) => (
                <select id={id} value={f.image} onChange={(e) => set({ image: e.currentTarget.value })}>
                  <option value="">Choose an image</option>
                  {(images.data ?? []).map((i) => (
                    <option key={i.fingerprint} value={i.aliases[0] ?? i.fingerprint}>
                      {i.aliases[0] ?? i.fingerprint.slice(0, 12)} — {i.description}
                    </option>
                  ))}
                </select>
              )}
            </Field>
          </>
        )}
        {step === 2 && (
          <>
            <Field label="Name" hint="A DNS label: lower-case letters, digits and dashes">
              {(id) => <input id={id} value={f.name} onInput={(e) => set({ name: e.currentTarget.value })} />}
            </Field>
            {MODEL_LIMITS[f.model].keys.map((key) => {
              const [label, hint] = limitField(key, f.model);
              return (
                <Field key={key} label={label} hint={hint}>
                  {(id) => (
                    <input
                      id={id}
                      value={f.limits[key] ?? ''}
                      aria-invalid={key === 'limits.memory' && memoryWrong !== null}
                      onInput={(e) => set({ limits: { ...f.limits, [key]: e.currentTarget.value } })}
                    />
                  )}
                </Field>
              );
            })}
            {memoryWrong && (
              <p role="alert" data-testid="memory-problem">
                {memoryWrong}
              </p>
            )}
          </>
        )}
        {step === 3 && (
          <>
            {f.nics.map((nic, i) => (
              <fieldset key={i} class="plain" aria-label={`NIC ${i + 1}`}>
                <Field label={i === 0 ? 'Network' : `Network ${i + 1}`}>
                  {(id) => (
                    <select
                      id={id}
                      value={nic.network}
                      onChange={(e) => setNic(i, { network: e.currentTarget.value })}
                    >
                      <option value="">No network</option>
                      {(networks.data ?? []).map((n) => (
                        <option key={n.name}>{n.name}</option>
                      ))}
                    </select>
                  )}
                </Field>
                {nic.network !== '' && (
                  <div class="row">
                    <Field label={`NIC ${i + 1} name`} hint="Default: the next free ethN">
                      {(id) => (
                        <input
                          id={id}
                          value={nic.name}
                          placeholder={nicNames[f.nics.slice(0, i).filter((n) => n.network !== '').length]}
                          onInput={(e) => setNic(i, { name: e.currentTarget.value })}
                        />
                      )}
                    </Field>
                    <Field label={`NIC ${i + 1} IPv4 address`} hint="Default: the next free one">
                      {(id) => (
                        <input
                          id={id}
                          value={nic.address}
                          onInput={(e) => setNic(i, { address: e.currentTarget.value })}
                        />
                      )}
                    </Field>
                    <Field label={`NIC ${i + 1} MAC address`} hint="Default: stable, from the guest and NIC">
                      {(id) => (
                        <input
                          id={id}
                          value={nic.hwaddr}
                          onInput={(e) => setNic(i, { hwaddr: e.currentTarget.value })}
                        />
                      )}
                    </Field>
                  </div>
                )}
              </fieldset>
            ))}
            {(networks.data ?? []).length > 0 && (
              <button type="button" onClick={() => set({ nics: [...f.nics, NO_NIC] })}>
                Add a NIC
              </button>
            )}
            <Field label="Storage pool">
              {(id) => (
                <select id={id} value={f.storage} onChange={(e) => set({ storage: e.currentTarget.value })}>
                  <option value="">default</option>
                  {(pools.data ?? [])
                    .filter((p) => p.name !== 'default')
                    .map((p) => (
                      <option key={p.name}>{p.name}</option>
                    ))}
                </select>
              )}
            </Field>
          </>
        )}
        {step === 4 && (
          <>
            <p class="muted">Files written into the guest at every start (config keys files./PATH).</p>
            {f.files.map((file, i) => (
              <div key={i} class="panel">
                <Field label={`File ${i + 1} path`}>
                  {(id) => (
                    <input
                      id={id}
                      value={file.path}
                      placeholder="/etc/motd"
                      onInput={(e) => {
                        const files = [...f.files];
                        files[i] = { ...file, path: e.currentTarget.value };
                        set({ files });
                      }}
                    />
                  )}
                </Field>
                <Field label={`File ${i + 1} content`}>
                  {(id) => (
                    <textarea
                      id={id}
                      rows={3}
                      value={file.content}
                      onInput={(e) => {
                        const files = [...f.files];
                        files[i] = { ...file, content: e.currentTarget.value };
                        set({ files });
                      }}
                    />
                  )}
                </Field>
              </div>
            ))}
            <button
              type="button"
              onClick={() => set({ files: [...f.files, { path: '', content: '', mode: '0644' }] })}
            >
              Add a file
            </button>
          </>
        )}
        {step === 5 && (
          <>
            <dl class="facts">
              <dt>Model</dt>
              <dd>{f.model}</dd>
              <dt>Image</dt>
              <dd>{f.image || '–'}</dd>
              <dt>Name</dt>
              <dd>{f.name || '–'}</dd>
              <dt>Limits</dt>
              <dd data-testid="review-limits">
                {[
                  ...limits.map(([k, v]) => `${k}=${v}`),
                  ...(f.limits['limits.memory']?.trim() || defaultMemory(f.model) === null
                    ? []
                    : [`memory ${defaultMemory(f.model)} by default`]),
                ].join(', ') || 'none'}
              </dd>
              <dt>Networks</dt>
              <dd data-testid="review-networks">
                {Object.entries(devices)
                  .map(
                    ([nic, d]) =>
                      `${nic}: ${d.network}${d['ipv4.address'] ? ` ${d['ipv4.address']}` : ''}${d.hwaddr ? ` ${d.hwaddr}` : ''}`,
                  )
                  .join(', ') || 'none'}
              </dd>
              <dt>Storage</dt>
              <dd>{f.storage || 'default'}</dd>
              <dt>Files</dt>
              <dd>
                {f.files
                  .filter((x) => x.path)
                  .map((x) => x.path)
                  .join(', ') || 'none'}
              </dd>
            </dl>
            <label style={{ fontWeight: 'normal' }}>
              <input
                type="checkbox"
                checked={f.start}
                onChange={(e) => set({ start: e.currentTarget.checked })}
              />{' '}
              Start it once created
            </label>
          </>
        )}
        <div class="row" style={{ marginTop: '12px' }}>
          {step > 1 && (
            <button type="button" onClick={() => go(step - 1)}>
              Back
            </button>
          )}
          {step < 5 && (
            <button
              type="button"
              class="primary"
              onClick={() => go(step + 1)}
              disabled={(step === 1 && (!f.image || unavailable)) || (step === 2 && memoryWrong !== null)}
            >
              Next
            </button>
          )}
          {step === 5 && (
            <button
              type="button"
              class="primary"
              disabled={busy || !f.name || !f.image || unavailable || memoryWrong !== null}
              onClick={async () => {
                setBusy(true);
                await attempt(create, `Guest ${f.name} created`);
                setBusy(false);
              }}
            >
              {busy ? 'Creating…' : 'Create'}
            </button>
          )}
        </div>
      </div>
    </Page>
  );
}
