import pino from 'pino';

/** The logger every layer gets injected: pino's interface, narrowed. */
export interface Logger {
  debug(obj: object | string, msg?: string): void;
  info(obj: object | string, msg?: string): void;
  warn(obj: object | string, msg?: string): void;
  error(obj: object | string, msg?: string): void;
  child(bindings: Record<string, unknown>): Logger;
}

export function createLogger(options: { level?: string; destination?: string } = {}): Logger {
  const level = options.level ?? process.env.TRIVISOR_LOG_LEVEL ?? 'info';
  return options.destination
    ? pino({ level }, pino.destination({ dest: options.destination, sync: false, mkdir: true }))
    : pino({ level });
}

/** A logger that drops everything (unit tests). */
export function silentLogger(): Logger {
  return pino({ level: 'silent' });
}
