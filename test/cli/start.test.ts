// The CLI loads only what a command needs: starting, parsing flags and
// printing help import no npm package and no component (engine, trace, graph,
// restore, image, check, demo). Every module the CLI process loads, ESM or
// CommonJS, is recorded by a preloaded hook; bench/cli-start times the same
// commands.
import { readFileSync, writeFileSync } from 'node:fs';
import { join, relative } from 'node:path';
import { pathToFileURL } from 'node:url';
import { execa } from 'execa';
import { describe, expect, it } from 'vitest';
import { packageRoot } from '../../src/util/paths.js';
import { tmpDir } from '../helpers/cleanup.js';
import { CLI } from '../helpers/cli.js';

/** Runs the CLI with a hook that lists every module it loads; the list, relative to the package. */
async function loadedBy(args: string[]): Promise<{ exitCode: number; stdout: string; modules: string[] }> {
  const dir = tmpDir('cli-start');
  const list = join(dir, 'loaded');
  const hooks = join(dir, 'hooks.mjs');
  writeFileSync(
    hooks,
    'import { appendFileSync } from "node:fs";\n' +
      'export async function resolve(spec, ctx, next) {\n' +
      '  const r = await next(spec, ctx);\n' +
      '  appendFileSync(process.env.US_LOADED, r.url + "\\n");\n' +
      '  return r;\n' +
      '}\n',
  );
  const preload = join(dir, 'preload.mjs');
  writeFileSync(
    preload,
    'import { appendFileSync } from "node:fs";\n' +
      'import { createRequire, register } from "node:module";\n' +
      `register(${JSON.stringify(pathToFileURL(hooks).href)});\n` +
      'const cache = createRequire(import.meta.url)("node:module")._cache;\n' +
      // CommonJS modules (pino, protobufjs, zeromq) do not pass the ESM hook
      'process.on("exit", () => appendFileSync(process.env.US_LOADED, Object.keys(cache).join("\\n") + "\\n"));\n',
  );
  writeFileSync(list, '');
  const r = await execa(process.execPath, ['--import', pathToFileURL(preload).href, CLI, ...args], {
    reject: false,
    stdin: 'ignore',
    env: { US_LOADED: list },
  });
  const modules = readFileSync(list, 'utf8')
    .split('\n')
    .filter((l) => l !== '' && !l.startsWith('node:'))
    .map((l) => relative(packageRoot, l.startsWith('file:') ? new URL(l).pathname : l));
  return { exitCode: r.exitCode ?? -1, stdout: String(r.stdout), modules: [...new Set(modules)] };
}

describe('CLI start', () => {
  it('--version loads the CLI core only: no command, no npm package', async () => {
    const r = await loadedBy(['--version']);
    expect(r.exitCode).toBe(0);
    expect(r.stdout.trim()).toMatch(/^\d+\.\d+\.\d+$/);
    // the hook saw the CLI itself: an empty list would prove nothing
    expect(r.modules).toContain('dist/cli/main.js');
    expect(r.modules.filter((m) => m.startsWith('node_modules/'))).toEqual([]);
    expect(r.modules.filter((m) => m.startsWith('dist/cli/commands/'))).toEqual([]);
    // the entry point, the CLI and its error type: nothing else of ours
    expect(r.modules.filter((m) => m.startsWith('dist/')).sort()).toEqual(['dist/cli/main.js', 'dist/util/errors.js']);
  });

  for (const args of [
    ['--help'],
    ['check', '--help'],
    ['dump', '--help'],
    ['restore', '--help'],
    ['graph', '--help'],
    ['trace', '--help'],
    ['image', '--help'],
    ['demo', '--help'],
  ]) {
    it(`\`understudy ${args.join(' ')}\` loads the command list, and no component or npm package`, async () => {
      const r = await loadedBy(args);
      expect(r.exitCode).toBe(0);
      expect(r.stdout).toMatch(/^usage: understudy/);
      expect(r.modules).toContain('dist/cli/commands/index.js');
      expect(r.modules.filter((m) => m.startsWith('node_modules/'))).toEqual([]);
      // only the CLI, the config loader and util/ (errors, paths, log) are cheap enough for every start
      expect(r.modules.filter((m) => m.startsWith('dist/') && !/^dist\/(cli|config|util)\//.test(m))).toEqual([]);
    });
  }

  it('a command that runs loads what it needs (the check: its component and pino for its log)', async () => {
    // a usage error inside run() is reached only after the command's imports: --only of nothing known
    const r = await loadedBy(['check', '--only', 'no_such_probe', '--log-level', 'debug', '--log-file', join(tmpDir('cli-start-log'), 'log')]);
    expect(r.modules).toContain('dist/check/check.js');
    expect(r.modules.some((m) => m.startsWith('node_modules/pino/'))).toBe(true);
  });
});
