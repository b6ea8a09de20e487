// One way for a test to wait for something to become true: poll, and fail
// with what was awaited and for how long.
export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/**
 * Polls `cond` every `intervalMs` (default 5) until it returns a value other
 * than undefined, null or false, and resolves with that value; after `ms`
 * (default 10 s) rejects with "timed out after ms ms waiting for <what>".
 * `cond` may be async; an exception it throws is thrown at once.
 */
export async function waitFor<T>(
  what: string,
  cond: () => T | undefined | null | false | Promise<T | undefined | null | false>,
  ms = 10_000,
  intervalMs = 5,
): Promise<T> {
  const until = Date.now() + ms;
  for (;;) {
    const v = await cond();
    if (v !== undefined && v !== null && v !== false) return v;
    if (Date.now() > until) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await sleep(intervalMs);
  }
}
