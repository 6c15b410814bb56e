import pino from 'pino';

/** The logger every layer gets injected: pino's interface, narrowed. */
export interface Logger {
  debug(obj: object | string, msg?: string): void;
  info(obj: object | string, msg?: string): void;
  warn(obj: object | string, msg?: string): void;
  error(obj: object | string, msg?: string): void;
  child(bindings: Record<string, unknown>): Logger;
}

/** A line logged at warn or above, as Incus's `logging` events carry it. */
export interface LogLine {
  level: 'warn' | 'error' | 'fatal';
  message: string;
  /** The line's fields and its logger's bindings (`component`, `guest`…), errors as their message. */
  context: Record<string, unknown>;
}

/** Where warnings go beside the log, once there is somewhere (the daemon's event bus starts later). */
export interface LogForward {
  to?: (line: LogLine) => void;
}

const LEVELS: Record<number, LogLine['level']> = { 40: 'warn', 50: 'error', 60: 'fatal' };

export function createLogger(
  options: { level?: string; destination?: string; forward?: LogForward } = {},
): Logger {
  const level = options.level ?? process.env.TRIVISOR_LOG_LEVEL ?? 'info';
  const { forward } = options;
  let forwarding = false;
  const settings: pino.LoggerOptions = {
    level,
    hooks: {
      logMethod(args, method, num) {
        const lineLevel = LEVELS[num];
        if (lineLevel && forward?.to && !forwarding) {
          // A listener that logs a warning itself must not loop back here.
          forwarding = true;
          try {
            const [first, second] = args as unknown[];
            const fields =
              typeof first === 'object' && first !== null ? (first as Record<string, unknown>) : {};
            const message = typeof first === 'string' ? first : typeof second === 'string' ? second : '';
            const context: Record<string, unknown> = { ...this.bindings() };
            for (const [k, v] of Object.entries(fields)) context[k] = v instanceof Error ? v.message : v;
            forward.to({ level: lineLevel, message, context });
          } catch {
            // The log line is written all the same.
          } finally {
            forwarding = false;
          }
        }
        method.apply(this, args as Parameters<typeof method>);
      },
    },
  };
  return options.destination
    ? pino(settings, pino.destination({ dest: options.destination, sync: false, mkdir: true }))
    : pino(settings);
}

/** A logger that drops everything (unit tests). */
export function silentLogger(): Logger {
  return pino({ level: 'silent' });
}
