import AjvCompiler from '@fastify/ajv-compiler';
import { SerializerSelector } from '@fastify/fast-json-stringify-compiler';
import type { FastifyServerOptions } from 'fastify';

/** A compiled validator or serializer as Fastify calls it. */
type Compiled = ((...args: unknown[]) => unknown) & { errors?: unknown; schemaEnv?: unknown };

/** Fastify's schema compilers, deferred, plus a way to compile everything now. */
export interface LazySchemaCompilers {
  compilersFactory: NonNullable<NonNullable<FastifyServerOptions['schemaController']>['compilersFactory']>;
  /** Compiles every schema handed out so far; throws what a bad schema throws (tests). */
  compileAll(): void;
}

/**
 * Fastify's own compilers (Ajv for requests, fast-json-stringify for responses), each
 * route's schema compiled on the route's first request instead of all at start-up: that
 * took 200–300 ms of CPU per server (the daemon builds two) before the daemon could answer,
 * which is also how long guests waited for re-adoption after a crash
 * (docs/decisions/0013-fast-cli.md). The functions behave as Fastify's: the Ajv instance and
 * its options are the same ones, made on first use.
 */
export function lazySchemaCompilers(): LazySchemaCompilers {
  const pending: Array<() => unknown> = [];
  const lazily = (compile: () => Compiled): Compiled => {
    let fn: Compiled | undefined;
    const get = () => {
      fn ??= compile();
      return fn;
    };
    const wrapper = ((...args: unknown[]) => get()(...args)) as Compiled;
    // Fastify reads a validator's errors after a failed call.
    Object.defineProperty(wrapper, 'errors', { get: () => fn?.errors });
    // Ajv's functions have schemaEnv, and Fastify then passes the request as parent data
    // (Ajv can replace a coerced root value only through it); the wrapper forwards it.
    wrapper.schemaEnv = true;
    pending.push(get);
    return wrapper;
  };
  const memo = <T>(make: () => T): (() => T) => {
    let value: T | undefined;
    return () => {
      value ??= make();
      return value;
    };
  };

  const validators = AjvCompiler();
  const serializers = SerializerSelector();
  const buildValidator = (externalSchemas: unknown, options: unknown) => {
    // The Ajv instance itself (formats, shared schemas) is made on first use too.
    const compiler = memo(() =>
      (validators as (e: unknown, o: unknown) => (def: unknown) => Compiled)(externalSchemas, options),
    );
    return (def: unknown) => lazily(() => compiler()(def));
  };
  const buildSerializer = (externalSchemas: unknown, options: unknown) => {
    const compiler = memo(() =>
      (serializers as (e: unknown, o: unknown) => (def: unknown) => Compiled)(externalSchemas, options),
    );
    return (def: unknown) => lazily(() => compiler()(def));
  };
  return {
    compilersFactory: {
      buildValidator: buildValidator as NonNullable<
        LazySchemaCompilers['compilersFactory']['buildValidator']
      >,
      buildSerializer: buildSerializer as NonNullable<
        LazySchemaCompilers['compilersFactory']['buildSerializer']
      >,
    },
    compileAll() {
      for (const compile of pending) compile();
    },
  };
}
