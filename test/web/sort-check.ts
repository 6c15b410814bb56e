import assert from 'node:assert/strict';
import type { Page } from 'playwright-core';
import { eventually } from '../system/harness.ts';

/** A row as the API answers it. */
export type Row = Record<string, unknown>;

/** A sortable column: its header's label, its URL key, and the value it sorts by, from the API's row. */
export type SortColumn = [label: string, key: string, value: (r: Row) => unknown];

const cmp = (x: unknown, y: unknown) =>
  (x as string) < (y as string) ? -1 : (x as string) > (y as string) ? 1 : 0;

/** The names of `rows` in the order web/src/sort.tsx gives them: by `value`, ties by `tie`, `dir` both. */
export function ordered(
  rows: Row[],
  value: (r: Row) => unknown,
  name: (r: Row) => string,
  dir: number,
  tie: (r: Row) => string = name,
): string[] {
  return [...rows].sort((a, b) => (cmp(value(a), value(b)) || cmp(tie(a), tie(b))) * dir).map(name);
}

/** Where a table is and how its rows are named on the page. */
export interface SortedTable {
  /** A selector of the table's panel, on a page of several tables; '' for the page's only one. */
  scope?: string;
  /** Of the table's URL parameters (`tokens-` for `?tokens-sort=`). */
  prefix?: string;
  /** The attribute that names a row (`data-row`, the members' `data-member`). */
  rowAttribute?: string;
  /** The order as the table opens, before a column is chosen. */
  opening: { value: (r: Row) => unknown; dir: 1 | -1 };
  /** What ties sort by, when it is not the row's name (the audit log's padded entry number). */
  tie?: (r: Row) => string;
}

/**
 * Checks a table of the open page: as it opens, then each of `columns` clicked once (ascending,
 * in the URL) and again (descending, aria-sort), against the order computed from `read()`, the
 * API's rows. `read` gets the names the table shows, for a list that may have grown since the
 * page read it (the audit log).
 */
export async function checkSorts(
  page: Page,
  read: (shown: string[]) => Promise<Row[]>,
  name: (r: Row) => string,
  columns: SortColumn[],
  table: SortedTable,
): Promise<void> {
  const scope = table.scope ?? '';
  const p = table.prefix ?? '';
  const attribute = table.rowAttribute ?? 'data-row';
  const shown = () =>
    page
      .locator(`${scope} tr[${attribute}]`)
      .evaluateAll((rows, a) => rows.map((r) => r.getAttribute(a) as string), attribute);
  const rowsAre = async (want: string[], what: string) => {
    await eventually(what, async () => JSON.stringify(await shown()) === JSON.stringify(want), 15_000).catch(
      () => undefined,
    );
    assert.deepEqual(await shown(), want, what);
  };
  await page.locator(`${scope} tr[${attribute}]`).first().waitFor({ timeout: 30_000 });
  const rows = await read(await shown());
  assert.ok(rows.length >= 2, `${page.url()}: ${rows.length} rows`);
  assert.deepEqual(
    [...(await shown())].sort(),
    rows.map(name).sort(),
    'the table shows the rows the API has',
  );
  await rowsAre(
    ordered(rows, table.opening.value, name, table.opening.dir, table.tie),
    `${page.url()} as it opens`,
  );
  for (const [label, key, value] of columns) {
    const header = page
      .locator(`${scope} th button.sort`)
      .filter({ hasText: new RegExp(`^${label}( [▲▼])?$`) });
    await header.click();
    await page.waitForURL(new RegExp(`[?&]${p}sort=${key}(?!.*${p}dir=desc)`));
    await rowsAre(ordered(rows, value, name, 1, table.tie), `${p}sorted by ${key}`);
    await header.click();
    await page.waitForURL(new RegExp(`[?&]${p}sort=${key}.*${p}dir=desc`));
    await rowsAre(ordered(rows, value, name, -1, table.tie), `${p}sorted by ${key}, descending`);
    assert.equal(await page.locator(`${scope} th[aria-sort]`).getAttribute('aria-sort'), 'descending');
  }
}
