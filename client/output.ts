import type { GlobalOptions } from './global-options';

/** Prints `data` as JSON with `--json`, otherwise the human-readable lines. */
export function emit(options: GlobalOptions, data: unknown, human: () => string[]): void {
  if (options.json) {
    process.stdout.write(`${JSON.stringify(data, null, 2)}\n`);
  } else {
    process.stdout.write(`${human().join('\n')}\n`);
  }
}
