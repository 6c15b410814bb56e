import { FitAddon } from '@xterm/addon-fit';
import { Terminal as XTerm } from '@xterm/xterm';
import xtermCss from '@xterm/xterm/css/xterm.css';
import { useEffect, useRef, useState } from 'preact/hooks';
import type { Operation } from '../../src/api/types.ts';
import { api, finished } from './state.ts';

const style = document.createElement('style');
style.textContent = xtermCss;
document.head.append(style);

export interface TerminalProps {
  guest: string;
  /**
   * `exec`: a shell started with a terminal (any model; the exec WebSocket carries the window
   * size). `console`: the vm serial or pvm UML console (raw bytes; the size is set in the guest).
   */
  mode: 'exec' | 'console';
}

const encoder = new TextEncoder();

/** A terminal in the page, joined to a guest's shell or console over its WebSocket; offers to reconnect when it drops. */
export function Terminal(props: TerminalProps) {
  const box = useRef<HTMLDivElement>(null);
  const [state, setState] = useState<{ kind: 'connecting' | 'open' | 'closed'; reason?: string }>({
    kind: 'connecting',
  });
  const [attempt, setAttempt] = useState(0);

  useEffect(() => {
    const el = box.current;
    if (!el) return;
    const term = new XTerm({ convertEol: false, cursorBlink: true, fontSize: 14, scrollback: 2000 });
    const fit = new FitAddon();
    term.loadAddon(fit);
    term.open(el);
    fit.fit();
    let socket: WebSocket | null = null;
    let closed = false;
    const resizeObserver = new ResizeObserver(() => fit.fit());
    resizeObserver.observe(el);
    let sizeTimer: ReturnType<typeof setTimeout> | undefined;

    const connect = async () => {
      setState({ kind: 'connecting' });
      let op: Operation;
      try {
        op =
          props.mode === 'exec'
            ? await api.startExec(props.guest, {
                command: ['/bin/sh'],
                interactive: true,
                width: term.cols,
                height: term.rows,
                environment: { TERM: 'xterm-256color' },
                'wait-for-websocket': true,
              })
            : await api.openConsole(props.guest);
      } catch (e) {
        setState({ kind: 'closed', reason: e instanceof Error ? e.message : String(e) });
        return;
      }
      const path = op.metadata.websocket;
      if (typeof path !== 'string') {
        setState({ kind: 'closed', reason: 'The daemon gave no WebSocket for this terminal' });
        return;
      }
      const ws = new WebSocket(await api.websocketUrl(path));
      socket = ws;
      ws.binaryType = 'arraybuffer';
      ws.onopen = () => {
        setState({ kind: 'open' });
        term.focus();
        // A console shows nothing until something is typed: ask for a fresh prompt.
        if (props.mode === 'console') ws.send(encoder.encode('\r'));
        else sendSize();
      };
      ws.onmessage = (m) => {
        if (typeof m.data === 'string') {
          try {
            const msg = JSON.parse(m.data) as { type?: string; code?: number; error?: string };
            if (msg.type === 'exit') term.write(`\r\n[exited with ${msg.code}]\r\n`);
            if (msg.type === 'error') term.write(`\r\n[${msg.error}]\r\n`);
          } catch {}
          return;
        }
        const bytes = new Uint8Array(m.data as ArrayBuffer);
        term.write(props.mode === 'exec' ? bytes.subarray(1) : bytes);
      };
      ws.onclose = (e) => {
        if (socket === ws) socket = null;
        if (!closed) setState({ kind: 'closed', reason: e.reason || 'the connection closed' });
      };
    };

    const sendSize = () => {
      if (props.mode === 'exec') {
        if (socket?.readyState === WebSocket.OPEN)
          socket.send(JSON.stringify({ type: 'resize', width: term.cols, height: term.rows }));
        return;
      }
      // A serial line carries no window size: the guest's console tty is told it, which
      // signals (SIGWINCH) whatever runs on it, as a resize of a local terminal does.
      // A guest that has just booted may not answer exec yet: a few tries, a second apart.
      if (sizeTimer) clearTimeout(sizeTimer);
      const tell = (tries: number) => {
        sizeTimer = setTimeout(
          async () => {
            const done = await api
              .startExec(props.guest, {
                command: ['stty', '-F', '/dev/console', 'rows', String(term.rows), 'cols', String(term.cols)],
                'record-output': true,
              })
              .then(finished)
              .then((op) => op.metadata.return === 0)
              .catch(() => false);
            if (!done && tries > 1 && !closed) tell(tries - 1);
          },
          tries === 5 ? 400 : 1000,
        );
      };
      tell(5);
    };

    term.onData((d) => {
      if (socket?.readyState !== WebSocket.OPEN) return;
      const data = encoder.encode(d);
      if (props.mode === 'console') socket.send(data);
      else {
        const frame = new Uint8Array(data.length + 1);
        frame[0] = 0;
        frame.set(data, 1);
        socket.send(frame);
      }
    });
    term.onResize(() => sendSize());
    connect();
    if (props.mode === 'console') sendSize();

    return () => {
      closed = true;
      if (sizeTimer) clearTimeout(sizeTimer);
      resizeObserver.disconnect();
      socket?.close(1000, 'detached');
      term.dispose();
    };
  }, [props.guest, props.mode, attempt]);

  return (
    <div>
      <div class="row" style={{ marginBottom: '6px' }} aria-live="polite">
        {state.kind === 'connecting' && <span>Connecting…</span>}
        {state.kind === 'open' && <span>Connected</span>}
        {state.kind === 'closed' && (
          <>
            <span>Disconnected: {state.reason}</span>
            <button type="button" class="primary" onClick={() => setAttempt((a) => a + 1)}>
              Reconnect
            </button>
          </>
        )}
      </div>
      <div ref={box} class="terminal" data-testid="terminal" />
    </div>
  );
}
