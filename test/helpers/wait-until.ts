/**
 * Polls `probe` until it returns something other than undefined, and returns that. Tests wait on
 * what they can observe (a query, describe(), a file), never for a fixed time; the deadline is
 * generous because the suite shares 2 cores with other work, and its message says what never
 * happened, with the last value seen.
 */
export async function waitUntil<T>(what: string, probe: () => Promise<T | undefined> | T | undefined, timeoutMs = 60_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let last: unknown;
  for (;;) {
    try {
      const value = await probe();
      if (value !== undefined) return value;
    } catch (err) {
      // A query before the first workflow task, or a workflow not yet started, is "not yet".
      last = err;
    }
    if (Date.now() > deadline) throw new Error(`waited ${timeoutMs} ms for ${what}${last === undefined ? '' : `; last error: ${last instanceof Error ? last.message : JSON.stringify(last)}`}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}
