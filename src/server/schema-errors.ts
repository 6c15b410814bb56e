import type { FastifySchemaValidationError } from 'fastify/types/schema.js';

/**
 * Turns Ajv's errors into one readable line naming the field, e.g.
 * `body.model must be one of "ct", "pvm", "vm"` or `Unknown field "nmae" in body`.
 */
export function formatSchemaErrors(errors: FastifySchemaValidationError[], dataVar: string): Error {
  const first = errors[0];
  const where = (path: string) => `${dataVar}${path.replaceAll('/', '.')}`;
  let message = `The request's ${dataVar} is not valid`;
  if (first) {
    const path = first.instancePath;
    const params = first.params as Record<string, unknown>;
    const allowed = errors
      .filter((e) => e.keyword === 'const' && e.instancePath === path)
      .map((e) => JSON.stringify((e.params as Record<string, unknown>).allowedValue));
    if (allowed.length > 0) {
      message = `${where(path)} must be one of ${allowed.join(', ')}`;
    } else if (first.keyword === 'type' && path === '' && dataVar === 'body') {
      message = 'The body must be a JSON object (Content-Type: application/json)';
    } else if (first.keyword === 'additionalProperties') {
      message = `Unknown field ${JSON.stringify(params.additionalProperty)} in ${where(path)}: remove it or check its spelling`;
    } else if (first.keyword === 'required') {
      message = `Missing field ${JSON.stringify(params.missingProperty)} in ${where(path)}`;
    } else {
      message = `${where(path)} ${first.message ?? 'is not valid'}`;
    }
  }
  return Object.assign(new Error(message), { statusCode: 400 });
}
