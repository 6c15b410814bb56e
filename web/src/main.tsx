import { effect, useSignal } from '@preact/signals';
import { render } from 'preact';
import { useEffect } from 'preact/hooks';
import { ApiError } from './api.ts';
import { Backups, sessionAllows } from './backups.tsx';
import { Dashboard } from './dashboard.tsx';
import { GuestPage } from './guest.tsx';
import { CreateGuest, GuestList } from './guests.tsx';
import { Login } from './login.tsx';
import { Members } from './members.tsx';
import { PlanPage } from './plan.tsx';
import { Admin, Images, NetworkPage, Networks, Operations, Storage, StoragePoolPage } from './resources.tsx';
import { navigate, onLinkClick, route } from './router.ts';
import { connection, dismiss, host, notices, project, session, start, switchedProject } from './state.ts';
import css from './styles.css';
import { Link } from './ui.tsx';

const style = document.createElement('style');
style.textContent = css;
document.head.append(style);

const NAV: Array<[string, string]> = [
  ['/', 'Dashboard'],
  ['/guests', 'Guests'],
  ['/networks', 'Networks'],
  ['/storage', 'Storage'],
  ['/backups', 'Backups'],
  ['/images', 'Images'],
  ['/operations', 'Operations'],
  ['/members', 'Members'],
  ['/plan', 'Plan'],
  ['/admin', 'Administration'],
];

function View() {
  const path = route.value.path;
  if (path === '/' || path === '') return <Dashboard />;
  if (path === '/guests') return <GuestList />;
  if (path === '/new-guest') return <CreateGuest />;
  const guest = /^\/guests\/([^/]+)$/.exec(path);
  if (guest) return <GuestPage name={decodeURIComponent(guest[1]!)} />;
  if (path === '/networks') return <Networks />;
  const network = /^\/networks\/([^/]+)$/.exec(path);
  if (network) return <NetworkPage name={decodeURIComponent(network[1]!)} />;
  if (path === '/storage') return <Storage />;
  const pool = /^\/storage\/([^/]+)$/.exec(path);
  if (pool) return <StoragePoolPage name={decodeURIComponent(pool[1]!)} />;
  if (path === '/backups') return <Backups />;
  if (path === '/images') return <Images />;
  if (path === '/operations') return <Operations />;
  if (path === '/members') return <Members />;
  if (path === '/admin') return <Admin />;
  if (path === '/plan') return <PlanPage />;
  return (
    <p role="alert">
      No page is at {path}. <Link to="/">Go to the dashboard</Link>
    </p>
  );
}

function Shell() {
  const menu = useSignal(false);
  const path = route.value.path;
  const section =
    NAV.filter(([p]) => p !== '/').find(([p]) => path === p || path.startsWith(`${p}/`))?.[0] ??
    (path === '/new-guest' ? '/guests' : '/');
  useEffect(() => {
    menu.value = false;
  }, [path]);
  return (
    <div class="shell">
      <a class="skip" href="#content">
        Skip to content
      </a>
      <nav class={`side${menu.value ? ' open' : ''}`} aria-label="Main">
        <div class="brand">Trivisor</div>
        {/* The backup directory is the host's: listed to roles bound to every project only. */}
        {NAV.filter(([p]) => p !== '/backups' || sessionAllows('host-read')).map(([p, label]) => (
          <Link key={p} to={p} current={section === p}>
            {label}
          </Link>
        ))}
      </nav>
      <main id="content" tabIndex={-1}>
        <div class="row" style={{ justifyContent: 'space-between', marginBottom: '8px' }}>
          <button
            type="button"
            class="menu-toggle"
            aria-expanded={menu.value}
            onClick={() => {
              menu.value = !menu.value;
            }}
          >
            Menu
          </button>
          <ProjectPicker />
          <span class="muted">
            {session.value?.user.name} ({session.value?.user.role}) · {host.value?.environment?.name ?? ''}
          </span>
        </div>
        {connection.value === 'reconnecting' && (
          <div class="banner" aria-live="polite">
            Connection to the daemon lost: reconnecting…
          </div>
        )}
        <View />
      </main>
      <Notices />
    </div>
  );
}

function ProjectPicker() {
  const projects = session.value?.user.projects ?? [];
  const everywhere = projects.includes('*');
  return (
    <span class="row">
      <label for="project" style={{ margin: 0, fontWeight: 'normal' }}>
        Project
      </label>
      {everywhere ? (
        <input
          id="project"
          value={project.value}
          size={12}
          onChange={(e) => {
            const q = new URLSearchParams(route.value.query);
            q.set('project', e.currentTarget.value || 'default');
            navigate(`${route.value.path}?${q}`);
          }}
        />
      ) : (
        <select
          id="project"
          value={project.value}
          onChange={(e) => {
            const q = new URLSearchParams(route.value.query);
            q.set('project', e.currentTarget.value);
            navigate(`${route.value.path}?${q}`);
          }}
        >
          {projects.map((p) => (
            <option key={p}>{p}</option>
          ))}
        </select>
      )}
    </span>
  );
}

function Notices() {
  return (
    <div class="notices" aria-live="polite">
      {notices.value.map((n) => (
        <div key={n.id} class={`notice ${n.kind}`}>
          <span style={{ flex: 1 }}>{n.text}</span>
          <button type="button" aria-label="Dismiss" onClick={() => dismiss(n.id)}>
            ×
          </button>
        </div>
      ))}
    </div>
  );
}

function App() {
  const ready = useSignal(false);
  const failed = useSignal('');
  const path = route.value.path;
  useEffect(() => {
    if (path === '/login' || ready.value) return;
    let live = true;
    let retry: ReturnType<typeof setTimeout> | undefined;
    const begin = () =>
      start().then(
        (ok) => {
          if (!live) return;
          failed.value = '';
          ready.value = ok;
        },
        (e: unknown) => {
          if (!live) return;
          const message = e instanceof Error ? e.message : String(e);
          // Unreachable or failing (a daemon restarting, a dropped connection): try again each
          // second, as the event stream does, rather than leave a dead page. Other refusals stay.
          const transient = e instanceof ApiError && (e.status === 0 || e.status >= 500);
          failed.value = transient ? `${message} Retrying…` : message;
          if (transient) retry = setTimeout(begin, 1000);
        },
      );
    begin();
    return () => {
      live = false;
      if (retry) clearTimeout(retry);
    };
  }, [path === '/login']);
  if (path === '/login')
    return (
      <Login
        onSignedIn={(next) => {
          ready.value = false;
          navigate(next);
        }}
      />
    );
  if (failed.value)
    return (
      <p role="alert" style={{ padding: '1rem' }}>
        {failed.value}
      </p>
    );
  if (!ready.value || !session.value) return <p style={{ padding: '1rem' }}>Loading Trivisor…</p>;
  return <Shell />;
}

document.addEventListener('click', onLinkClick);

effect(() => {
  // Reading the project subscribes: a change of ?project= re-reads the lists and the stream.
  void project.value;
  switchedProject();
});

const root = document.getElementById('app')!;
// The page's own "Loading…" goes: the app draws everything from here on.
root.replaceChildren();
render(<App />, root);
