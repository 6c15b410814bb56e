import { navigate, route, withQuery } from './router.ts';

/*
 * Sorting of every table, one way (issue 15): the sort is in the URL (`?sort=KEY&dir=desc`), so
 * reload and back restore it; a column sorts by what it shows; ties go by the row's name. A page
 * with several tables gives each a prefix of its own (`?tokens-sort=role&tokens-dir=desc`).
 */

/** What a column sorts by: the text it shows, or a number for sizes and counts. */
export type SortValue = string | number;

export interface Sort<K extends string> {
  key: K;
  /** 1 ascending, -1 descending. */
  dir: 1 | -1;
  /** Of the table's URL parameters, when its page has several tables. */
  prefix?: string;
}

/**
 * The sort the URL asks for; `fallback` when it names none of `keys` (a table that lists the
 * newest first, as the operations do, falls back to a descending sort).
 */
export function sortOf<K extends string>(
  keys: readonly K[],
  fallback: Sort<K>,
  query: URLSearchParams = route.value.query,
): Sort<K> {
  const prefix = fallback.prefix ?? '';
  const key = query.get(`${prefix}sort`);
  if (key === null || !(keys as readonly string[]).includes(key)) return fallback;
  return { key: key as K, dir: query.get(`${prefix}dir`) === 'desc' ? -1 : 1, prefix };
}

/** `rows` in the order `sort` asks, by `value` of its column, ties by `name` (the same both ways). */
export function sortRows<T, K extends string>(
  rows: Iterable<T>,
  sort: Sort<K>,
  value: (row: T, key: K) => SortValue,
  name: (row: T) => string,
): T[] {
  return [...rows].sort((a, b) => {
    const x = value(a, sort.key);
    const y = value(b, sort.key);
    const m = name(a);
    const n = name(b);
    return (x < y ? -1 : x > y ? 1 : m < n ? -1 : m > n ? 1 : 0) * sort.dir;
  });
}

/** Clicking a column sorts by it ascending, and a second click descending; the URL keeps it. */
export function sortBy<K extends string>(key: K, sort: Sort<K>): void {
  const prefix = sort.prefix ?? '';
  navigate(
    withQuery({
      [`${prefix}sort`]: key,
      [`${prefix}dir`]: sort.key === key && sort.dir === 1 ? 'desc' : null,
    }),
    { replace: true },
  );
}

/** A column header that sorts its table: a button, and aria-sort on the sorted column. */
export function SortHeader<K extends string>(props: {
  column: K;
  label: string;
  sort: Sort<K>;
  class?: string | undefined;
}) {
  const on = props.sort.key === props.column;
  return (
    <th
      scope="col"
      class={props.class}
      aria-sort={on ? (props.sort.dir === 1 ? 'ascending' : 'descending') : undefined}
    >
      <button type="button" class="sort" onClick={() => sortBy(props.column, props.sort)}>
        {props.label}
        {on ? (props.sort.dir === 1 ? ' ▲' : ' ▼') : ''}
      </button>
    </th>
  );
}
