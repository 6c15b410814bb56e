import { createInterface } from 'node:readline';

/**
 * One line from stdin after writing `question` to stderr ('' at end of input). A module of its
 * own, imported when a command asks: a builtin imported with `import()` would reach the
 * bundle as its default export only (src/build/bundles.ts requires builtins).
 */
export function askOnStdin(question: string): Promise<string> {
  return new Promise((resolve) => {
    process.stderr.write(question);
    const rl = createInterface({ input: process.stdin, terminal: false });
    let answered = false;
    rl.once('line', (line) => {
      answered = true;
      rl.close();
      resolve(line);
    });
    rl.once('close', () => {
      if (!answered) resolve('');
    });
  });
}
