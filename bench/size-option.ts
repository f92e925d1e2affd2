import { InvalidArgumentError } from 'commander';

const UNITS: Record<string, number> = { b: 1, kb: 1e3, mb: 1e6, gb: 1e9, kib: 1024, mib: 1024 ** 2, gib: 1024 ** 3 };

/** `--size 512MiB`, `1GiB`, `2GB`: bytes, at least 1 MiB (a commander option parser). */
export function parseSize(value: string): number {
  const m = /^(\d+(?:\.\d+)?)\s*([kmg]i?b|b)?$/i.exec(value.trim());
  const bytes = m ? Number(m[1]) * UNITS[(m[2] ?? 'b').toLowerCase()]! : NaN;
  if (!Number.isFinite(bytes) || bytes < 1024 ** 2) throw new InvalidArgumentError('expected a size of at least 1MiB, such as 512MiB or 1GiB');
  return Math.round(bytes);
}
