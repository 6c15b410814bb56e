import type { FunctionComponent } from 'preact';
import { useEffect, useState } from 'preact/hooks';
import type { ChartTarget } from './charts.tsx';
import type { TerminalProps } from './terminal.tsx';
import type { VncProps } from './vnc.tsx';

/*
 * Console and chart code (xterm.js, noVNC, uPlot) is loaded when a view shows it, not with
 * the first page: each import() below is a chunk of its own (web/src/build: splitting).
 */

function lazy<P extends object>(load: () => Promise<FunctionComponent<P>>): FunctionComponent<P> {
  let loaded: FunctionComponent<P> | undefined;
  return (props: P) => {
    const [C, setC] = useState<FunctionComponent<P> | undefined>(() => loaded);
    const [error, setError] = useState('');
    useEffect(() => {
      if (C) return;
      load().then(
        (c) => {
          loaded = c;
          setC(() => c);
        },
        (e: unknown) =>
          setError(`Could not load this part of the page: ${e instanceof Error ? e.message : e}`),
      );
    }, []);
    if (error) return <p role="alert">{error}</p>;
    return C ? <C {...props} /> : <p class="muted">Loading…</p>;
  };
}

export const Charts = lazy<{ target: ChartTarget }>(() => import('./charts.tsx').then((m) => m.Charts));
export const Terminal = lazy<TerminalProps>(() => import('./terminal.tsx').then((m) => m.Terminal));
export const Vnc = lazy<VncProps>(() => import('./vnc.tsx').then((m) => m.Vnc));
