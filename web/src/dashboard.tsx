import { useComputed } from '@preact/signals';
import { Charts } from './lazy.tsx';
import { memberStorage } from './members.tsx';
import { navigate, route, withQuery } from './router.ts';
import { api, guests, host, operations, recentEvents } from './state.ts';
import { bytes, Field, Link, memberChoice, Page, Status, useLoad, when } from './ui.tsx';

/**
 * The dashboard: every member's CPU, memory and storage, and any member's charts; guests by state
 * and model; recent operations; warnings.
 */
export function Dashboard() {
  const counts = useComputed(() => {
    const byStatus: Record<string, number> = {};
    const byModel: Record<string, number> = {};
    const warnings: Array<[string, string]> = [];
    for (const g of guests.value.values()) {
      byStatus[g.status] = (byStatus[g.status] ?? 0) + 1;
      byModel[g.model] = (byModel[g.model] ?? 0) + 1;
      if (g.error) warnings.push([g.name, g.error]);
      for (const w of g.state.warnings ?? []) warnings.push([g.name, w]);
    }
    return { byStatus, byModel, warnings };
  });
  const pools = useLoad(() => api.listPools().catch(() => []), []);
  // In a cluster, every member's measured CPU, memory and storage; a single host has only its own (above).
  const cluster = useLoad(
    () =>
      api
        .clusterInfo()
        .then(async (info) => ({ self: info.member, members: info.enabled ? await api.listMembers() : [] }))
        .catch(() => ({ self: undefined, members: [] })),
    [],
  );
  const members = { data: cluster.data?.members };
  const env = host.value?.environment;
  // Whose charts: this member's unless the URL names another (each member keeps its own history).
  const chosen = route.value.query.get('member') ?? undefined;
  const chartMember = chosen !== undefined && chosen !== cluster.data?.self ? chosen : undefined;
  const recent = [...operations.value.values()]
    .sort((a, b) => b.createdAt.localeCompare(a.createdAt))
    .slice(0, 8);
  const driverWarnings = (env?.drivers ?? []).flatMap((d) =>
    d.warnings.map((w) => [`${d.model} driver`, w] as [string, string]),
  );
  void recentEvents.value;
  return (
    <Page title="Dashboard">
      <section class="cards" aria-label="This member">
        <div class="panel card">
          <div class="muted">Member</div>
          <div class="big" data-testid="member-name">
            {env?.name ?? '–'}
          </div>
          <div class="muted" data-testid="member-facts">
            {env?.cpus} CPUs · {bytes(env?.memoryBytes)} memory · Trivisor {env?.version}
          </div>
        </div>
        <div class="panel card">
          <div class="muted">Guests</div>
          <div class="big" data-testid="guest-total">
            {guests.value.size}
          </div>
          <div>
            {Object.entries(counts.value.byStatus).map(([s, n]) => (
              <span key={s} data-status-count={s} style={{ marginRight: '8px' }}>
                <Status value={s} /> {n}
              </span>
            ))}
          </div>
        </div>
        <div class="panel card">
          <div class="muted">By model</div>
          <div>
            {(['ct', 'pvm', 'vm'] as const).map((m) => (
              <div key={m} data-model-count={m}>
                <Link to={`/guests?model=${m}`}>{m}</Link>: {counts.value.byModel[m] ?? 0}
              </div>
            ))}
          </div>
        </div>
        <div class="panel card">
          <div class="muted">Storage</div>
          {(pools.data ?? []).map((p) => (
            <div key={p.name} data-pool={p.name}>
              <Link to={`/storage/${encodeURIComponent(p.name)}`}>{p.name}</Link>:{' '}
              {p.usage ? `${bytes(p.usage.usedBytes)} of ${bytes(p.usage.totalBytes)}` : p.status}
            </div>
          ))}
        </div>
      </section>
      {(members.data?.length ?? 0) > 0 && (
        <section class="panel" aria-labelledby="members">
          <h2 id="members">Members</h2>
          <div class="table-wrap">
            <table>
              <thead>
                <tr>
                  <th>Member</th>
                  <th>Status</th>
                  <th>CPU</th>
                  <th>Memory</th>
                  <th>Storage</th>
                  <th>Guests</th>
                </tr>
              </thead>
              <tbody>
                {(members.data ?? []).map((m) => (
                  <tr key={m.name} data-dashboard-member={m.name}>
                    <td>{m.name}</td>
                    <td>
                      <Status value={m.status} />
                    </td>
                    <td>{m.cpu ? `${m.cpu.used.toFixed(2)} of ${m.cpu.cpus} CPUs` : 'not measured'}</td>
                    <td>
                      {m.memory
                        ? `${bytes(m.memory.usedBytes)} of ${bytes(m.memory.totalBytes)}`
                        : 'not measured'}
                    </td>
                    <td>{memberStorage(m)}</td>
                    <td>{m.guests}</td>
                  </tr>
                ))}
              </tbody>
            </table>
          </div>
          <Link to="/members">All about the members</Link>
        </section>
      )}
      <section class="panel" aria-labelledby="host-charts">
        <h2 id="host-charts">
          CPU, memory, network and disk of{' '}
          {chartMember ?? (cluster.data?.self ? `${cluster.data.self} (this member)` : 'this member')}
        </h2>
        {(members.data?.length ?? 0) > 1 && (
          <div class="row">
            <Field label="Member's charts">
              {(id) => (
                <select
                  id={id}
                  value={chartMember ?? cluster.data?.self ?? ''}
                  onChange={(e) =>
                    navigate(withQuery({ member: (e.currentTarget as HTMLSelectElement).value }), {
                      replace: true,
                    })
                  }
                >
                  {(members.data ?? []).map((m) => (
                    <option key={m.name} value={m.name}>
                      {memberChoice(m, cluster.data?.self)}
                    </option>
                  ))}
                </select>
              )}
            </Field>
          </div>
        )}
        {/* Chart code loads when asked for: the first page stays small. */}
        {route.value.query.get('charts') === '1' ? (
          // A member named in the URL may be this one: the charts wait for the cluster's answer, so
          // that this member's history is asked for once, not by name and then as this member's.
          chosen !== undefined && !cluster.data ? (
            <p class="muted">Loading…</p>
          ) : (
            <Charts target={chartMember ? { kind: 'host', member: chartMember } : { kind: 'host' }} />
          )
        ) : (
          <button type="button" onClick={() => navigate(withQuery({ charts: '1' }), { replace: true })}>
            Show charts
          </button>
        )}
      </section>
      <section class="panel" aria-labelledby="warnings">
        <h2 id="warnings">Warnings</h2>
        {counts.value.warnings.length + driverWarnings.length === 0 ? (
          <p class="muted">None.</p>
        ) : (
          <ul>
            {[...driverWarnings, ...counts.value.warnings].slice(0, 50).map(([who, text], i) => (
              <li key={i}>
                <strong>{who}</strong>: {text}
              </li>
            ))}
          </ul>
        )}
      </section>
      <section class="panel" aria-labelledby="recent-ops">
        <h2 id="recent-ops">Recent operations</h2>
        {recent.length === 0 ? (
          <p class="muted">None yet.</p>
        ) : (
          <div class="table-wrap">
            <table>
              <thead>
                <tr>
                  <th>Started</th>
                  <th>What</th>
                  <th>Status</th>
                </tr>
              </thead>
              <tbody>
                {recent.map((o) => (
                  <tr key={o.id}>
                    <td>{when(o.createdAt)}</td>
                    <td>{o.description}</td>
                    <td>
                      <Status value={o.status} /> {o.error ?? ''}
                    </td>
                  </tr>
                ))}
              </tbody>
            </table>
          </div>
        )}
        <Link to="/operations">All operations</Link>
      </section>
    </Page>
  );
}
