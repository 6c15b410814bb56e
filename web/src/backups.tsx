import { useSignal } from '@preact/signals';
import { type ActionClass, decideAccess, type Role } from '../../src/core/access.ts';
import { navigate, route, withQuery } from './router.ts';
import { SortHeader, sortOf, sortRows } from './sort.tsx';
import { api, finished, operations, project, session } from './state.ts';
import {
  bytes,
  Field,
  Form,
  Link,
  Loading,
  memberChoice,
  OperationProgress,
  Page,
  useLoad,
  useLoadFor,
  when,
} from './ui.tsx';

/*
 * The daemon's backup directory (decisions 0070 and 0074): what `GET /1.0/backups` lists, and
 * an import of a restorable archive through `POST /1.0/backups/import`, without an upload.
 */

/** Whether the signed-in user's role allows `access` here: the server's own rule (src/core/access.ts). */
export function sessionAllows(access: ActionClass): boolean {
  const user = session.value?.user;
  if (!user) return false;
  return decideAccess(
    { method: 'session', name: user.name, role: user.role as Role, projects: user.projects },
    access,
    { project: project.value, what: '' },
  ).allowed;
}

type Archive = Awaited<ReturnType<typeof api.listBackupDirectory>>[number];
/** A member's listing, or why it could not be read. */
type Listing = { archives?: Archive[]; error?: string };

const chainOf = (a: Archive) => (a.chain !== undefined ? `${a.chain}#${a.sequence ?? 0}` : '–');

export function Backups() {
  const readable = sessionAllows('host-read');
  const importer = sessionAllows('host-admin');
  // Each member has its own directory (decision 0077): this one's unless the URL names another.
  const cluster = useLoad(
    () =>
      readable
        ? api
            .clusterInfo()
            .then(async (info) => ({
              self: info.member,
              members: info.enabled ? await api.listMembers() : [],
            }))
            .catch(() => ({ self: undefined, members: [] }))
        : Promise.resolve({ self: undefined, members: [] }),
    [readable],
  );
  const asked = route.value.query.get('member') ?? undefined;
  const member = asked !== undefined && asked !== cluster.data?.self ? asked : undefined;
  // A member named in the URL may be this one: which, only the cluster's answer says. Listing before
  // it would list this member's directory twice (once by name, once as this member's).
  const known = asked === undefined || cluster.data !== undefined;
  // The rows shown are the chosen member's (undefined: this one's), never the previous choice's
  // while the new list loads; so is a refusal.
  const list = useLoadFor(
    member,
    (): Promise<Listing> =>
      !readable
        ? Promise.resolve({ archives: [] })
        : !known
          ? new Promise<never>(() => {})
          : api.listBackupDirectory(member !== undefined ? { target: member } : {}).then(
              (archives) => ({ archives }),
              (e: unknown) => ({ error: e instanceof Error ? e.message : String(e) }),
            ),
    [readable, known, member],
  ).data;
  // The archive whose import form is open, with the member whose directory holds it.
  const picked = useSignal<{ archive: Archive; member: string | undefined } | null>(null);
  const importing = useSignal<string | null>(null);
  const guest = route.value.query.get('guest') ?? '';
  const sort = sortOf(['guest', 'name', 'kind', 'chain', 'sizeBytes', 'createdAt', 'restorable'] as const, {
    key: 'guest',
    dir: 1,
  });
  if (!readable) {
    return (
      <Page title="Backups">
        <p role="alert">
          The backup directory is the host's: listing it needs a role bound to every project (*).
        </p>
      </Page>
    );
  }
  const all = list?.archives ?? [];
  const guests = [...new Set([...all.map((a) => a.guest), ...(guest ? [guest] : [])])].sort();
  const shown = all.filter((a) => guest === '' || a.guest === guest);
  const importOp = importing.value ? operations.value.get(importing.value) : undefined;
  const pick = picked.value;
  const target = pick && pick.member === member ? pick.archive : null;
  return (
    <Page title="Backups">
      <div class="panel">
        <p class="muted">
          The archives in the daemon's backup directory (TRIVISOR_BACKUP_DIR), where scheduled backups are
          shipped. An import restores one as a new guest without an upload; an incremental link brings its
          chain's earlier links with it.
        </p>
        <div class="row">
          {(cluster.data?.members.length ?? 0) > 1 && (
            <>
              <label for="backup-member" style={{ margin: 0 }}>
                Member
              </label>
              <select
                id="backup-member"
                value={member ?? cluster.data?.self ?? ''}
                onChange={(e) => {
                  picked.value = null;
                  navigate(withQuery({ member: e.currentTarget.value, guest: null }), { replace: true });
                }}
              >
                {(cluster.data?.members ?? []).map((m) => (
                  <option key={m.name} value={m.name}>
                    {memberChoice(m, cluster.data?.self)}
                  </option>
                ))}
              </select>
            </>
          )}
          <label for="backup-guest" style={{ margin: 0 }}>
            Guest
          </label>
          <select
            id="backup-guest"
            value={guest}
            onChange={(e) => navigate(withQuery({ guest: e.currentTarget.value }), { replace: true })}
          >
            <option value="">All guests</option>
            {guests.map((g) => (
              <option key={g} value={g}>
                {g}
              </option>
            ))}
          </select>
        </div>
        {!list?.archives ? (
          <Loading error={list?.error} />
        ) : shown.length === 0 ? (
          <p class="muted" data-testid="backups-empty">
            {guest ? `No archive of ${guest} is in the backup directory.` : 'The backup directory is empty.'}
          </p>
        ) : (
          <div class="table-wrap">
            <table class="backups">
              <thead>
                <tr>
                  <SortHeader column="guest" label="Guest" sort={sort} />
                  <SortHeader column="name" label="Archive" sort={sort} />
                  <SortHeader column="kind" label="Kind" sort={sort} />
                  <SortHeader column="chain" label="Chain" sort={sort} />
                  <SortHeader column="sizeBytes" label="Size" sort={sort} />
                  <SortHeader column="createdAt" label="Created" sort={sort} />
                  <SortHeader column="restorable" label="Restorable" sort={sort} />
                  {importer && (
                    <th>
                      <span class="sr-only">Actions</span>
                    </th>
                  )}
                </tr>
              </thead>
              <tbody>
                {sortRows(
                  shown,
                  sort,
                  (a, key) =>
                    key === 'chain'
                      ? chainOf(a)
                      : key === 'restorable'
                        ? a.restorable
                          ? 'yes'
                          : (a.problem ?? 'no')
                        : a[key],
                  (a) => a.archive,
                ).map((a) => (
                  <tr key={a.archive} data-row={a.archive}>
                    <td>
                      <Link to={`/guests/${encodeURIComponent(a.guest)}`}>{a.guest}</Link>
                    </td>
                    <td>{a.name}</td>
                    <td>{a.kind}</td>
                    <td title={a.parent ? `after ${a.parent}` : undefined}>{chainOf(a)}</td>
                    <td>{bytes(a.sizeBytes)}</td>
                    <td>{when(a.createdAt)}</td>
                    <td data-testid="restorable">{a.restorable ? 'yes' : `no: ${a.problem ?? ''}`}</td>
                    {importer && (
                      <td>
                        {a.restorable && (
                          <button
                            type="button"
                            aria-label={`Import ${a.archive}`}
                            aria-expanded={target?.archive === a.archive}
                            onClick={() => {
                              picked.value = target?.archive === a.archive ? null : { archive: a, member };
                            }}
                          >
                            Import
                          </button>
                        )}
                      </td>
                    )}
                  </tr>
                ))}
              </tbody>
            </table>
          </div>
        )}
      </div>
      {importer && target && (
        <div class="panel">
          <h2>
            Import {target.archive}
            {member !== undefined ? ` from ${member}` : ''}
          </h2>
          <Form
            key={target.archive}
            label={`Import ${target.archive}`}
            submit="Import"
            done={`Imported from ${target.archive}`}
            run={async (d) => {
              const name = String(d.get('name') || '');
              const op = await api.importFromBackups(target.archive, {
                ...(name !== '' && { name }),
                ...(member !== undefined && { target: member }),
                ...(d.get('live') === 'on' && { live: true }),
              });
              operations.value = new Map(operations.value).set(op.id, op);
              importing.value = op.id;
              try {
                await finished(op);
              } finally {
                importing.value = null;
              }
              picked.value = null;
            }}
          >
            <Field label="Name of the new guest" hint={`Default: the name in the archive (${target.guest})`}>
              {(id) => <input id={id} name="name" />}
            </Field>
            {target.kind === 'incremental' ? (
              <p class="muted">
                An incremental link is imported with its chain's earlier links, one after the other: not live.
              </p>
            ) : (
              <>
                <label style={{ fontWeight: 'normal' }}>
                  <input type="checkbox" name="live" /> Live: start it at once
                </label>
                <p class="muted">
                  For a vm guest's uncompressed archive: it runs from the archive while its disk is copied
                  behind it.
                </p>
              </>
            )}
            {importOp && <OperationProgress op={importOp} testId="backup-import-progress" />}
          </Form>
        </div>
      )}
    </Page>
  );
}
