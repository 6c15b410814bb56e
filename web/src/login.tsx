import { useSignal } from '@preact/signals';
import { useEffect } from 'preact/hooks';
import { ApiError } from './api.ts';
import { route } from './router.ts';
import { api, session } from './state.ts';

/** Where to go after signing in: the page the user was on, never another site. */
const nextOf = (): string => {
  const next = route.value.query.get('next') ?? '/';
  return next.startsWith('/') && !next.startsWith('//') ? next : '/';
};

/**
 * Sign-in: a token typed in, or the code of a login link (`/login#code=…`; a fragment, so it
 * reaches neither the server's logs nor a Referer). Either buys an HttpOnly session cookie.
 */
export function Login(props: { onSignedIn: (next: string) => void }) {
  const error = useSignal('');
  const busy = useSignal(false);
  const signIn = async (credentials: { token: string } | { link: string }) => {
    busy.value = true;
    error.value = '';
    try {
      session.value = await api.signIn(credentials);
      props.onSignedIn(nextOf());
    } catch (e) {
      error.value = e instanceof ApiError ? e.message : String(e);
    } finally {
      busy.value = false;
    }
  };
  useEffect(() => {
    document.title = 'Sign in · Trivisor';
    const code = /^#code=([A-Za-z0-9_-]+)$/.exec(location.hash)?.[1];
    if (code) {
      history.replaceState(null, '', `${location.pathname}${location.search}`);
      signIn({ link: code });
    }
  }, []);
  return (
    <main class="login" id="content">
      <div class="panel">
        <h1>Sign in to Trivisor</h1>
        <p class="muted">
          Paste an API token (an admin makes one with <code>trivisor auth token create</code>), or open a
          login link from <code>trivisor admin web-link</code>.
        </p>
        <form
          onSubmit={(e) => {
            e.preventDefault();
            const token = new FormData(e.currentTarget).get('token');
            if (typeof token === 'string' && token.trim()) signIn({ token: token.trim() });
          }}
        >
          <label for="token">API token</label>
          <input
            id="token"
            name="token"
            type="password"
            autoComplete="off"
            required
            style={{ width: '100%' }}
          />
          {error.value && (
            <p role="alert" style={{ color: 'var(--danger)' }}>
              {error.value}
            </p>
          )}
          <p>
            <button type="submit" class="primary" disabled={busy.value}>
              Sign in
            </button>
          </p>
        </form>
      </div>
    </main>
  );
}
