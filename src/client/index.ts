export { TrivisorApiError } from './api-error.ts';
export {
  createClient,
  type EventSubscription,
  type PulledFile,
  type PushFileOptions,
  type TrivisorClient,
  type WaitOptions,
} from './client.ts';
export type { ConsoleHandle } from './console-stream.ts';
export type { ExecHandle } from './exec-stream.ts';
export type { ClientTarget } from './transport.ts';
