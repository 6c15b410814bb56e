import { useSignal } from '@preact/signals';
import { Fragment } from 'preact';
import { useEffect } from 'preact/hooks';
import type { ClusterInfo, ClusterMemberInfo } from '../../src/client/cluster-client.ts';
import { MemberPowerState } from './power.tsx';
import { Rebalancing } from './rebalancing.tsx';
import { SortHeader, sortOf, sortRows } from './sort.tsx';
import { api, finished, host, notify, session } from './state.ts';
import { Action, bytes, Field, Form, Loading, Page, Status, useLoad, when } from './ui.tsx';

/*
 * The cluster's members (decision 0032): what GET /1.0/cluster/members answers, a join token for
 * a new member, removal with the API's own refusal, and on a single host bootstrap or join.
 * Evacuation and restore (decision 0041) follow their operation; each member's HA summary
 * (decision 0052); the rebalancer's keys, plan, cycle on demand and explained moves (decision
 * 0053, rebalancing.tsx); power management's keys, each member's driver and power state
 * (decision 0055, power.tsx).
 */

/**
 * Member liveness publishes no event (a heartbeat lease every 10 s), so this page, while it is
 * open and visible, reads the list again at that pace: a member that stops renewing is shown
 * Offline as soon as the API says so.
 */
const REREAD_MS = 10_000;

const ROLE_NAMES: Record<string, string> = { 'etcd-voter': 'etcd voter', 'etcd-client': 'etcd client' };

const MEMBER_COLUMNS = [
  'name',
  'status',
  'address',
  'roles',
  'cpu',
  'memory',
  'storage',
  'guests',
  'version',
  'joinedAt',
] as const;
type MemberColumn = (typeof MEMBER_COLUMNS)[number];

/**
 * A member's storage: the default pool's file system as the member measured it, used of total;
 * "not measured" while it is Offline or has not said (the API's null or nothing), never a zero.
 */
export const memberStorage = (m: ClusterMemberInfo): string =>
  m.disk ? `${bytes(m.disk.totalBytes - m.disk.freeBytes)} of ${bytes(m.disk.totalBytes)}` : 'not measured';

/** A member's HA summary (decision 0052): its HA guests, and whether its HA agent holds its lease. */
const memberHa = (ha: NonNullable<ClusterMemberInfo['ha']>) => ({
  text: `HA: ${ha.guests}, ${ha.live ? 'live' : 'lost'}`,
  title: `${ha.guests} HA guest${ha.guests === 1 ? '' : 's'}; its HA agent ${ha.live ? 'holds' : 'has lost'} its HA lease`,
});

const roleNames = (m: ClusterMemberInfo) => m.roles.map((r) => ROLE_NAMES[r] ?? r).join(', ') || '–';

/** What a column sorts by: the text it shows, or the measure; a member not measured sorts below an idle one. */
const memberValue = (m: ClusterMemberInfo, key: MemberColumn): string | number =>
  key === 'roles'
    ? roleNames(m)
    : key === 'cpu'
      ? (m.cpu?.used ?? -1)
      : key === 'memory'
        ? (m.memory?.usedBytes ?? -1)
        : key === 'storage'
          ? m.disk
            ? m.disk.totalBytes - m.disk.freeBytes
            : -1
          : m[key];

interface ClusterView {
  info: ClusterInfo;
  members: ClusterMemberInfo[];
}

export function Members() {
  const hostAdmin = session.value?.user.role === 'admin' && session.value.user.projects.includes('*');
  const view = useLoad<ClusterView>(async () => {
    const info = await api.clusterInfo();
    return { info, members: info.enabled ? await api.listMembers() : [] };
  }, []);
  useEffect(() => {
    const timer = setInterval(() => {
      if (document.visibilityState === 'visible') view.reload();
    }, REREAD_MS);
    return () => clearInterval(timer);
  }, []);

  const data = view.data;
  if (!data)
    return (
      <Page title="Members">
        <Loading error={view.error} />
      </Page>
    );
  if (!data.info.enabled) return <SingleHost admin={hostAdmin} reload={view.reload} />;
  return (
    <Page
      title="Members"
      actions={
        <button type="button" onClick={() => view.reload()}>
          Refresh
        </button>
      }
    >
      <MemberList info={data.info} members={data.members} admin={hostAdmin} reload={view.reload} />
      {view.error && (
        <p class="muted" role="status">
          Could not read the members again: {view.error}
        </p>
      )}
      <Rebalancing admin={hostAdmin} members={data.members} />
      {hostAdmin && <AddMember />}
    </Page>
  );
}

function MemberList(props: {
  info: ClusterInfo;
  members: ClusterMemberInfo[];
  admin: boolean;
  reload: () => void;
}) {
  const { info, members } = props;
  /** The last refusal of a removal, kept on the page (a notice would vanish) with a way to force it. */
  const refusal = useSignal<{ name: string; message: string } | null>(null);
  const online = members.filter((m) => m.status === 'Online').length;
  const sort = sortOf(MEMBER_COLUMNS, { key: 'name', dir: 1 });

  /** Evacuates or restores a member and follows the operation to its end (the guests moved or back). */
  const changeState = async (name: string, action: 'evacuate' | 'restore') => {
    try {
      await finished(await api.changeMemberState(name, { action }));
    } finally {
      props.reload();
    }
  };

  const remove = async (name: string, force: boolean) => {
    try {
      await api.removeMember(name, { force });
      refusal.value = null;
      notify('info', `Member ${name} removed`);
      props.reload();
    } catch (e) {
      refusal.value = { name, message: e instanceof Error ? e.message : String(e) };
    }
  };

  return (
    <div class="panel">
      <p data-testid="cluster-summary">
        {members.length} member{members.length === 1 ? '' : 's'}, {online} online. This page is served by{' '}
        <strong>{info.member}</strong> ({info.address}).{' '}
        {info.etcd && (
          <span class="muted">
            Store: {info.etcd.managed ? 'etcd run by the members' : 'an existing etcd'} (
            {info.etcd.endpoints.join(', ')}).
          </span>
        )}
      </p>
      <div class="table-wrap">
        <table class="members" aria-label="Cluster members">
          <thead>
            <tr>
              <SortHeader column="name" label="Name" sort={sort} />
              <SortHeader column="status" label="Status" sort={sort} />
              <SortHeader column="address" label="Address" sort={sort} />
              <SortHeader column="roles" label="Roles" sort={sort} />
              <SortHeader column="cpu" label="CPU" sort={sort} />
              <SortHeader column="memory" label="Memory" sort={sort} />
              <SortHeader column="storage" label="Storage" sort={sort} />
              <SortHeader column="guests" label="Guests" sort={sort} />
              <SortHeader column="version" label="Version" sort={sort} />
              <SortHeader column="joinedAt" label="Joined" sort={sort} />
              {props.admin && (
                <th>
                  <span class="sr-only">Actions</span>
                </th>
              )}
            </tr>
          </thead>
          <tbody>
            {sortRows(members, sort, memberValue, (m) => m.name).map((m) => (
              <Fragment key={m.name}>
                <tr data-member={m.name}>
                  <td>
                    {m.name}
                    {m.name === info.member && <span class="muted"> (this one)</span>}
                  </td>
                  <td data-label="Status">
                    <Status value={m.status} />
                  </td>
                  <td data-label="Address" class="address">
                    {m.address}
                  </td>
                  <td data-label="Roles">{roleNames(m)}</td>
                  {/* Null while the member is Offline: nothing measured is shown as nothing. */}
                  <td data-label="CPU" data-testid="member-cpu">
                    {m.cpu ? `${m.cpu.used.toFixed(2)} of ${m.cpu.cpus} CPUs busy` : 'not measured'}
                  </td>
                  <td data-label="Memory" data-testid="member-memory">
                    {m.memory
                      ? `${bytes(m.memory.usedBytes)} of ${bytes(m.memory.totalBytes)}`
                      : 'not measured'}
                  </td>
                  <td data-label="Storage" data-testid="member-storage">
                    {memberStorage(m)}
                  </td>
                  <td data-label="Guests">
                    {m.guests}
                    {/* In the guests' cell: a column of its own would not fit a laptop's width. */}
                    {m.ha && (
                      <div class="muted" data-testid="member-ha" title={memberHa(m.ha).title}>
                        {memberHa(m.ha).text}
                      </div>
                    )}
                  </td>
                  <td data-label="Version">{m.version}</td>
                  <td data-label="Joined">{when(m.joinedAt)}</td>
                  {props.admin && (
                    <td>
                      {m.status === 'Evacuated' ? (
                        <Action
                          label={`Restore member ${m.name}`}
                          done={`Member ${m.name} restored`}
                          run={() => changeState(m.name, 'restore')}
                        >
                          Restore
                        </Action>
                      ) : (
                        <Action
                          label={`Evacuate member ${m.name}`}
                          confirm={`Evacuate member ${m.name}? Its guests move to other members (or stop, as their cluster.evacuate says), and it gets no new ones until it is restored.`}
                          done={`Member ${m.name} evacuated`}
                          run={() => changeState(m.name, 'evacuate')}
                        >
                          Evacuate
                        </Action>
                      )}
                      {/* The API refuses removing the member a request reached: another member must do it. */}
                      {m.name !== info.member && (
                        <Action
                          kind="danger"
                          label={`Remove member ${m.name}`}
                          confirm={`Remove member ${m.name} from the cluster?`}
                          run={() => remove(m.name, false)}
                        >
                          Remove
                        </Action>
                      )}
                    </td>
                  )}
                </tr>
                {/*
                 * Power management's state and reason (decision 0055) on a line of its own under the
                 * member's: a sentence, which a column would squeeze into a tall narrow strip.
                 */}
                {m.power && (
                  <tr class="member-power" data-power-of={m.name}>
                    <td colSpan={props.admin ? 11 : 10}>
                      <MemberPowerState power={m.power} />
                    </td>
                  </tr>
                )}
              </Fragment>
            ))}
          </tbody>
        </table>
      </div>
      {members.some((m) => m.ha?.warning) && (
        <div role="alert" data-testid="ha-warnings">
          {members
            .filter((m) => m.ha?.warning)
            .map((m) => (
              <p key={m.name}>
                <strong>{m.name}</strong> (HA): {m.ha?.warning}
              </p>
            ))}
        </div>
      )}
      {refusal.value && (
        <div role="alert" class="refusal" data-testid="member-refusal">
          <p>
            Removing {refusal.value.name} was refused: {refusal.value.message}
          </p>
          <div class="row">
            <Action
              kind="danger"
              confirm={`Remove member ${refusal.value.name} anyway? Its guests stay recorded on it.`}
              run={() => remove(refusal.value?.name ?? '', true)}
            >
              Remove {refusal.value.name} anyway
            </Action>
            <button
              type="button"
              onClick={() => {
                refusal.value = null;
              }}
            >
              Keep it
            </button>
          </div>
        </div>
      )}
    </div>
  );
}

/** A join token for a new member: its secret is shown this once (only its hash is stored). */
function AddMember() {
  const made = useSignal<{ name: string; token: string; expiresAt: string } | null>(null);
  const copy = async () => {
    const token = made.value?.token ?? '';
    try {
      await navigator.clipboard.writeText(token);
      notify('info', 'Join token copied');
    } catch {
      // No clipboard (permission refused): the text is selected for a copy by hand.
      const field = document.getElementById('join-token') as HTMLTextAreaElement | null;
      field?.select();
      notify('error', 'The browser refused the clipboard: the token is selected, copy it by hand');
    }
  };
  return (
    <div class="panel">
      <h2>Add a member</h2>
      <p class="muted">
        A single-use join token for the new host. On that host (with no guests, custom volumes or networks),
        run the command it comes with.
      </p>
      <Form
        label="Add a member"
        submit="Make a join token"
        run={async (d) => {
          const expiry = String(d.get('expiry') || '');
          made.value = await api.createJoinToken(String(d.get('name')), expiry ? { expiry } : {});
        }}
      >
        <div class="row">
          <Field label="New member's name" hint="A DNS label: it names the host in the cluster">
            {(id) => <input id={id} name="name" required maxLength={63} />}
          </Field>
          <Field label="Token lasts" hint="90s, 3h, 1d (3h when empty)">
            {(id) => <input id={id} name="expiry" maxLength={16} placeholder="3h" />}
          </Field>
        </div>
      </Form>
      {made.value && (
        <div role="status" data-testid="join-token-shown">
          <p>
            The join token for <strong>{made.value.name}</strong>, shown this once (it expires{' '}
            {when(made.value.expiresAt)}):
          </p>
          <label for="join-token" class="sr-only">
            Join token
          </label>
          <textarea id="join-token" readOnly rows={3} value={made.value.token} />
          <p>
            On the new host:{' '}
            <code style={{ overflowWrap: 'anywhere' }}>
              trivisor cluster join {made.value.token} --address IP
            </code>
          </p>
          <div class="row">
            <button type="button" class="primary" onClick={copy}>
              Copy the token
            </button>
            <button
              type="button"
              onClick={() => {
                made.value = null;
              }}
            >
              Done (forget it)
            </button>
          </div>
        </div>
      )}
    </div>
  );
}

/** A host that is no cluster's member: it says so, and a host admin may form one or join one. */
function SingleHost(props: { admin: boolean; reload: () => void }) {
  const joined = useSignal('');
  const name = host.value?.environment?.name ?? 'this host';
  return (
    <Page title="Members">
      <div class="panel">
        <p data-testid="not-clustered">
          This host is not clustered: <strong>{name}</strong> runs on its own, with its own store.
        </p>
        {!props.admin && <p class="muted">A host administrator can form a cluster here or join one.</p>}
      </div>
      {props.admin && (
        <>
          <div class="panel">
            <h2>Form a cluster</h2>
            <p class="muted">
              This host becomes the first member: it starts an etcd member and the daemon restarts on it with
              every record moved there. Guests keep running.
            </p>
            <Form
              label="Form a cluster"
              submit="Bootstrap the cluster"
              done="This host is the cluster's first member: the daemon restarts on etcd"
              run={async (d) => {
                await api.bootstrapCluster({ address: String(d.get('address')) });
                props.reload();
              }}
            >
              <Field
                label="Cluster address"
                hint="IP[:PORT] other members reach this host at (port 8444 by default)"
              >
                {(id) => <input id={id} name="address" required maxLength={64} />}
              </Field>
            </Form>
          </div>
          <div class="panel">
            <h2>Join a cluster</h2>
            <p class="muted">
              With a join token made on a member (Add a member). This host must hold no guests, custom volumes
              or networks; the daemon then restarts on the cluster's store, and this browser signs in again.
            </p>
            <Form
              label="Join a cluster"
              submit="Join"
              run={async (d) => {
                const info = await api.joinCluster(String(d.get('token')).trim(), String(d.get('address')));
                joined.value = info.member ?? '';
                props.reload();
              }}
            >
              <Field label="Join token">{(id) => <textarea id={id} name="token" rows={2} required />}</Field>
              <Field label="This host's cluster address" hint="IP[:PORT] the members reach this host at">
                {(id) => <input id={id} name="address" required maxLength={64} />}
              </Field>
            </Form>
            {joined.value && (
              <p role="status">Joined as {joined.value}: the daemon restarts on the cluster's store.</p>
            )}
          </div>
        </>
      )}
    </Page>
  );
}
