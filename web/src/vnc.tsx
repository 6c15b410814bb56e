import RFB from '@novnc/novnc';
import { useEffect, useRef, useState } from 'preact/hooks';
import { api } from './state.ts';

export interface VncProps {
  guest: string;
}

/**
 * A vm guest's screen through noVNC: the daemon relays QEMU's VNC server over the console
 * WebSocket (`POST /1.0/guests/NAME/console` with `type: vga`, issue 17). Keys go as X keysyms,
 * so AltGr and non-US layouts type what they show; paste is typed key by key.
 */
export function Vnc(props: VncProps) {
  const box = useRef<HTMLDivElement>(null);
  const rfb = useRef<RFB | null>(null);
  const [state, setState] = useState<{ kind: 'connecting' | 'open' | 'closed'; reason?: string }>({
    kind: 'connecting',
  });
  const [attempt, setAttempt] = useState(0);
  const [paste, setPaste] = useState('');

  useEffect(() => {
    const el = box.current;
    if (!el) return;
    let closed = false;
    (async () => {
      try {
        const op = await api.openConsole(props.guest, 'vga');
        const path = op.metadata.websocket;
        if (typeof path !== 'string') throw new Error('The daemon gave no WebSocket for the display');
        const client = new RFB(el, await api.websocketUrl(path), { shared: true });
        client.scaleViewport = true;
        client.focusOnClick = true;
        rfb.current = client;
        client.addEventListener('connect', () => {
          setState({ kind: 'open' });
          client.focus();
        });
        client.addEventListener('disconnect', (e: Event) => {
          rfb.current = null;
          const clean = (e as CustomEvent<{ clean: boolean }>).detail?.clean;
          if (!closed)
            setState({ kind: 'closed', reason: clean ? 'the display closed' : 'the connection broke' });
        });
      } catch (e) {
        setState({ kind: 'closed', reason: e instanceof Error ? e.message : String(e) });
      }
    })();
    return () => {
      closed = true;
      rfb.current?.disconnect();
      rfb.current = null;
    };
  }, [props.guest, attempt]);

  const typeText = (text: string) => {
    const client = rfb.current;
    if (!client) return;
    for (const ch of text) {
      const cp = ch.codePointAt(0)!;
      // X keysyms: Latin-1 is its own code; the rest of Unicode is 0x01000000 + the code point.
      const sym =
        ch === '\n'
          ? 0xff0d
          : (cp >= 0x20 && cp <= 0x7e) || (cp >= 0xa0 && cp <= 0xff)
            ? cp
            : 0x01000000 + cp;
      client.sendKey(sym, null);
    }
  };

  return (
    <div>
      <div class="row" style={{ marginBottom: '6px' }}>
        <span aria-live="polite">
          {state.kind === 'connecting'
            ? 'Connecting…'
            : state.kind === 'open'
              ? 'Connected'
              : `Disconnected: ${state.reason}`}
        </span>
        {state.kind === 'closed' && (
          <button type="button" class="primary" onClick={() => setAttempt((a) => a + 1)}>
            Reconnect
          </button>
        )}
        <button type="button" disabled={state.kind !== 'open'} onClick={() => rfb.current?.sendCtrlAltDel()}>
          Send Ctrl+Alt+Del
        </button>
      </div>
      <div ref={box} class="vnc" data-testid="vnc" title={`Screen of ${props.guest}`} />
      <form
        class="row"
        style={{ marginTop: '6px' }}
        onSubmit={(e) => {
          e.preventDefault();
          typeText(paste);
          setPaste('');
        }}
      >
        <label for="vnc-paste" class="sr-only">
          Text to type into the guest
        </label>
        <input
          id="vnc-paste"
          placeholder="Paste text here to type it into the guest"
          value={paste}
          onInput={(e) => setPaste(e.currentTarget.value)}
          style={{ flex: 1 }}
        />
        <button type="submit" disabled={state.kind !== 'open' || paste === ''}>
          Type it
        </button>
      </form>
    </div>
  );
}
