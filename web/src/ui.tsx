import type { ComponentChildren, JSX } from 'preact';
import { useEffect, useState } from 'preact/hooks';
import { liveRestoreTimes, secondsText } from '../../src/api/backup-schemas.ts';
import type { Operation } from '../../src/api/types.ts';
import { href, route } from './router.ts';
import { attempt } from './state.ts';

/* Small shared pieces of the views. */

export function Link(props: { to: string; children: ComponentChildren; current?: boolean; class?: string }) {
  return (
    <a href={href(props.to)} class={props.class} aria-current={props.current ? 'page' : undefined}>
      {props.children}
    </a>
  );
}

export function Status(props: { value: string }) {
  return <span class={`status ${props.value}`}>{props.value}</span>;
}

export function Page(props: { title: string; actions?: ComponentChildren; children: ComponentChildren }) {
  useEffect(() => {
    document.title = `${props.title} · Trivisor`;
  }, [props.title]);
  return (
    <>
      <header class="top">
        <h1 id="page-title">{props.title}</h1>
        {props.actions && <div class="row">{props.actions}</div>}
      </header>
      {props.children}
    </>
  );
}

/** A button that runs an action once at a time, shows that it runs, and reports a failure in one line. */
export function Action(props: {
  run: () => Promise<unknown>;
  children: ComponentChildren;
  done?: string;
  confirm?: string;
  kind?: 'primary' | 'danger';
  disabled?: boolean;
  label?: string;
}) {
  const [busy, setBusy] = useState(false);
  return (
    <button
      type="button"
      class={props.kind}
      disabled={busy || props.disabled}
      aria-busy={busy}
      aria-label={props.label}
      onClick={async () => {
        if (props.confirm && !confirm(props.confirm)) return;
        setBusy(true);
        await attempt(props.run, props.done);
        setBusy(false);
      }}
    >
      {props.children}
    </button>
  );
}

/** A labelled input; its id comes from the label, or `id` where one page has two fields of one label. */
export function Field(props: {
  label: string;
  children: (id: string) => JSX.Element;
  hint?: string;
  id?: string;
}) {
  const id = props.id ?? `f-${props.label.toLowerCase().replace(/[^a-z0-9]+/g, '-')}`;
  return (
    <div class="field">
      <label for={id}>{props.label}</label>
      {props.children(id)}
      {props.hint && <div class="muted">{props.hint}</div>}
    </div>
  );
}

/** A small form that submits through `run` and resets on success. */
export function Form(props: {
  run: (data: FormData) => Promise<unknown>;
  submit: string;
  done?: string;
  children: ComponentChildren;
  label: string;
}) {
  const [busy, setBusy] = useState(false);
  return (
    <form
      aria-label={props.label}
      onSubmit={async (e) => {
        e.preventDefault();
        const form = e.currentTarget;
        setBusy(true);
        const ok = await attempt(() => props.run(new FormData(form)).then(() => true), props.done);
        setBusy(false);
        if (ok) form.reset();
      }}
    >
      {props.children}
      <button type="submit" class="primary" disabled={busy}>
        {props.submit}
      </button>
    </form>
  );
}

/** Loads `load` when `key` changes; `reload` reads it again. */
export function useLoad<T>(
  load: () => Promise<T>,
  key: unknown[],
): { data: T | undefined; error: string | undefined; reload: () => void } {
  const [data, setData] = useState<T | undefined>(undefined);
  const [error, setError] = useState<string | undefined>(undefined);
  const [tick, setTick] = useState(0);
  useEffect(() => {
    let live = true;
    load().then(
      (d) => {
        if (live) {
          setData(d);
          setError(undefined);
        }
      },
      (e: unknown) => {
        if (live) setError(e instanceof Error ? e.message : String(e));
      },
    );
    return () => {
      live = false;
    };
  }, [...key, tick]);
  return { data, error, reload: () => setTick((t) => t + 1) };
}

/**
 * `useLoad` for the object `current` names (a member, a guest): an answer loaded for another one
 * (the last choice, while the new one loads, or a late answer for it) is never the data.
 */
export function useLoadFor<K, T>(
  current: K,
  load: () => Promise<T>,
  key: unknown[],
): { data: T | undefined; error: string | undefined; reload: () => void } {
  const loaded = useLoad(() => load().then((data) => ({ for: current, data })), key);
  const mine = loaded.data !== undefined && loaded.data.for === current ? loaded.data.data : undefined;
  return { ...loaded, data: mine };
}

export function Loading(props: { error?: string | undefined }) {
  return props.error ? <p role="alert">{props.error}</p> : <p class="muted">Loading…</p>;
}

export function Tabs(props: { tabs: Array<[string, string]>; current: string }) {
  return (
    <nav class="tabs" aria-label="Sections">
      {props.tabs.map(([key, label]) => {
        const q = new URLSearchParams(route.value.query);
        q.set('tab', key);
        return (
          <Link key={key} to={`${route.value.path}?${q}`} current={props.current === key}>
            {label}
          </Link>
        );
      })}
    </nav>
  );
}

export const bytes = (n: number | null | undefined): string => {
  if (n === null || n === undefined || !Number.isFinite(n)) return '–';
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let v = n;
  let i = 0;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return `${v < 10 && i > 0 ? v.toFixed(1) : Math.round(v)} ${units[i]}`;
};

export const when = (iso: string | null | undefined): string =>
  iso ? new Date(iso).toLocaleString(undefined, { dateStyle: 'short', timeStyle: 'medium' }) : '–';

/** A member as a choice of a member picker: "(this member)" for the one answering, its status when not Online. */
export const memberChoice = (m: { name: string; status: string }, self: string | undefined): string =>
  m.name + (m.name === self ? ' (this member)' : m.status === 'Online' ? '' : ` (${m.status})`);

/**
 * A running operation's description, progress text and bar, announced as a status; a live
 * restore's also says when its guest was running (its copy goes on behind it).
 */
export function OperationProgress(props: { op: Operation; testId: string }) {
  const { op } = props;
  const { runningAfterMs } = liveRestoreTimes(op.metadata);
  return (
    <div role="status" data-testid={props.testId}>
      {op.description}
      {op.progressText ? `: ${op.progressText}` : ''}
      {runningAfterMs !== undefined ? ` (running after ${secondsText(runningAfterMs)})` : ''}{' '}
      {op.progress !== null && <progress value={op.progress} max={100} aria-label={op.description} />}
    </div>
  );
}
