// The engine client when the engine cannot even start (missing or
// unexecutable binary, no memory or pids left for a fork): the request fails
// at once with E_ENGINE_DIED instead of crashing the agent on an unhandled
// 'error' event or waiting out its timeout. (An engine client test: it sits
// here because test/engine/ has another owner.)
import { chmodSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { EngineClient } from '../../src/native/engine.js';

const scratch = mkdtempSync(join(tmpdir(), 'us-engine-start-'));
afterAll(() => rmSync(scratch, { recursive: true, force: true }));

describe('engine client, engine that cannot start', () => {
  it('a missing binary: the request fails at once with E_ENGINE_DIED, the app untouched', async () => {
    const engine = EngineClient.start({ binary: join(scratch, 'no-such-engine'), timeoutMs: 30_000 });
    const t0 = Date.now();
    const err = await engine.attach(process.pid).then(
      () => undefined,
      (e: unknown) => e as { code?: string; message?: string },
    );
    expect(err?.code).toBe('E_ENGINE_DIED');
    expect(err?.message).toMatch(/could not be started \(spawn .*no-such-engine ENOENT\); the app was never touched/);
    expect(Date.now() - t0).toBeLessThan(5_000);
    expect(engine.alive).toBe(false);
    // a later request and close() answer at once too
    await expect(engine.status()).rejects.toMatchObject({ code: 'E_ENGINE_DIED' });
    await engine.close();
  });

  it('a file that is not executable: the request fails with E_ENGINE_DIED, not a timeout', async () => {
    const bin = join(scratch, 'not-an-engine');
    writeFileSync(bin, 'not a program\n');
    chmodSync(bin, 0o644);
    const engine = EngineClient.start({ binary: bin, timeoutMs: 30_000 });
    const t0 = Date.now();
    await expect(engine.attach(process.pid)).rejects.toMatchObject({ code: 'E_ENGINE_DIED' });
    expect(Date.now() - t0).toBeLessThan(5_000);
    await engine.close();
  });
});
