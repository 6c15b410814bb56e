import { signal } from '@preact/signals';

/*
 * Every view has its own URL, filters included (issue 15): the location is a signal, links
 * push history entries, and reload or back restores the view from the URL alone.
 */

export interface Location {
  path: string;
  query: URLSearchParams;
}

const read = (): Location => ({ path: location.pathname, query: new URLSearchParams(location.search) });

export const route = signal<Location>(read());

addEventListener('popstate', () => {
  route.value = read();
});

/** Goes to `url` (a path with a query); `replace` keeps the history entry (filter keystrokes). */
export function navigate(url: string, options: { replace?: boolean } = {}): void {
  const target = new URL(url, location.href);
  // The project follows every navigation: it is part of what the view shows.
  const project = route.value.query.get('project');
  if (project && !target.searchParams.has('project') && target.pathname !== '/login') {
    target.searchParams.set('project', project);
  }
  const href = `${target.pathname}${target.search}`;
  if (href === `${location.pathname}${location.search}`) return;
  if (options.replace) history.replaceState(null, '', href);
  else history.pushState(null, '', href);
  route.value = read();
  if (!options.replace) scrollTo(0, 0);
}

/** The current URL with `changes` to its query (a value of '' or null removes the key). */
export function withQuery(changes: Record<string, string | null>): string {
  const q = new URLSearchParams(route.value.query);
  for (const [k, v] of Object.entries(changes)) {
    if (v === null || v === '') q.delete(k);
    else q.set(k, v);
  }
  const s = q.toString();
  return `${route.value.path}${s ? `?${s}` : ''}`;
}

/** `href` with the current project added, for links. */
export function href(path: string): string {
  const project = route.value.query.get('project');
  if (!project || path.startsWith('/login')) return path;
  return `${path}${path.includes('?') ? '&' : '?'}project=${encodeURIComponent(project)}`;
}

/** Follows a click on an in-app link without reloading (modifier keys keep the browser's behaviour). */
export function onLinkClick(e: MouseEvent): void {
  const a = (e.target as Element).closest('a');
  if (!a || e.defaultPrevented || e.button !== 0 || e.metaKey || e.ctrlKey || e.shiftKey || e.altKey) return;
  const url = new URL(a.href, location.href);
  if (
    url.origin !== location.origin ||
    a.target ||
    a.hasAttribute('download') ||
    url.pathname.startsWith('/1.0/')
  )
    return;
  e.preventDefault();
  navigate(`${url.pathname}${url.search}`);
}
