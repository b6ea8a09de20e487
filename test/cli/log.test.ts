// The agent's log, as a user sets it: --log-file F and --log-level L, or the
// config keys logFile and logLevel, reach every component a command runs
// (each module takes its logger when it is imported, before the CLI has read
// them). F holds JSON lines, one object per line, with the component's name.
import { spawn } from 'node:child_process';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { buildDir } from '../../src/util/paths.js';
import { killPids, onCleanup, runCleanups, tmpDir } from '../helpers/cleanup.js';
import { runCli } from '../helpers/cli.js';
import { waitFor } from '../helpers/wait.js';

afterEach(runCleanups);

interface LogLine {
  level: number;
  component?: string;
  msg: string;
  [k: string]: unknown;
}

const DEBUG = 20;
const INFO = 30;

/** Every line of a log file, each parsed as JSON (a line that is not JSON fails the test). */
function readLog(file: string): LogLine[] {
  expect(existsSync(file), `${file} exists`).toBe(true);
  return readFileSync(file, 'utf8')
    .split('\n')
    .filter((l) => l !== '')
    .map((l) => JSON.parse(l) as LogLine);
}

/** The components that wrote lines at `level` (each command's test names those it must see at least). */
const componentsAt = (lines: LogLine[], level: number): string[] =>
  [...new Set(lines.filter((l) => l.level === level).map((l) => l.component ?? '(none)'))].sort();

/** rs_counter running (the zdtm fixture), killed at cleanup; its pid and control folder. */
async function startCounter(): Promise<{ pid: number; ctl: string }> {
  const ctl = tmpDir('log-app');
  const child = spawn(resolve(buildDir, 'fixtures', 'rs_counter'), [ctl], { stdio: 'ignore', detached: true });
  child.unref();
  onCleanup(() => killPids([child.pid!]));
  await waitFor('rs_counter to be ready', () => existsSync(join(ctl, 'ready')));
  return { pid: child.pid!, ctl };
}

describe('the log file and level', () => {
  it('--log-file F --log-level debug: F gets JSON lines at debug from the CLI, the engine, the restorer, the tracer and the graph', async () => {
    const dir = tmpDir('log-flags');
    const app = await startCounter();
    const img = join(dir, 'image');

    const dumpLog = join(dir, 'dump.log');
    const d = await runCli([
      'dump',
      '--pid',
      String(app.pid),
      '-D',
      img,
      '--epochs',
      '1',
      '--interval-ms',
      '20',
      '--log-file',
      dumpLog,
      '--log-level',
      'debug',
    ]);
    expect(d.exitCode, d.stderr).toBe(0);
    const dump = readLog(dumpLog);
    expect(componentsAt(dump, DEBUG)).toEqual(expect.arrayContaining(['agent', 'cli', 'engine']));
    // the engine client logs each request and its result
    const engine = dump.filter((l) => l.component === 'engine');
    expect(engine.filter((l) => l.msg === 'engine request').map((l) => l.cmd)).toEqual(['attach', 'checkpoint', 'checkpoint', 'killApp']);
    expect(engine.filter((l) => l.msg === 'engine reply').map((l) => l.cmd)).toEqual(['attach', 'checkpoint', 'checkpoint', 'killApp']);
    expect(engine.find((l) => l.msg === 'engine reply' && l.cmd === 'checkpoint')?.result).toMatchObject({ epoch: 0, full: true });
    await waitFor('the dumped app to be gone', () => !existsSync(`/proc/${app.pid}`));

    const restoreLog = join(dir, 'restore.log');
    const r = await runCli(['restore', '-D', img, '--json', '--log-file', restoreLog, '--log-level', 'debug']);
    expect(r.exitCode, r.stderr).toBe(0);
    const rep = JSON.parse(r.stdout) as { pids: number[]; reaper: number };
    onCleanup(() => killPids([rep.reaper, ...rep.pids]));
    const restore = readLog(restoreLog);
    expect(componentsAt(restore, DEBUG)).toEqual(expect.arrayContaining(['cli', 'restorer']));
    expect(restore.find((l) => l.component === 'restorer' && l.level === INFO)?.msg).toBe('app restored');

    const traceLog = join(dir, 'trace.log');
    const t = await runCli(['trace', '--log-file', traceLog, '--log-level', 'debug', '--', '/bin/true']);
    expect(t.exitCode, t.stderr).toBe(0);
    expect(componentsAt(readLog(traceLog), DEBUG)).toEqual(expect.arrayContaining(['cli', 'graph', 'trace']));
    // nothing of the log went to the terminal
    expect(d.stderr + r.stderr + t.stderr).not.toMatch(/"level":/);
  });

  it('the config keys logFile and logLevel do the same (the demo: engine, graph, restorer)', async () => {
    const dir = tmpDir('log-config');
    const logFile = join(dir, 'logs', 'agent.log');
    const config = join(dir, 'config.json');
    writeFileSync(config, JSON.stringify({ dataDir: join(dir, 'data'), logFile, logLevel: 'debug' }));
    const r = await runCli(['demo', '--config', config]);
    expect(r.exitCode, r.stderr).toBe(0);
    const lines = readLog(logFile);
    expect(componentsAt(lines, DEBUG)).toEqual(expect.arrayContaining(['agent', 'cli', 'engine', 'graph', 'restorer']));
    expect(lines.find((l) => l.component === 'cli')).toMatchObject({ msg: 'command started', command: 'demo', logLevel: 'debug', logFile });
  });

  it('a log file that cannot be opened is refused before the command runs; one that cannot be written stops the log, not the command', async () => {
    const o = await runCli(['image', 'show', '/nonexistent', '--log-file', '/etc/passwd/agent.log'], { timeout: 20_000 });
    expect(o.exitCode).toBe(1);
    expect(o.stderr).toBe('understudy: cannot open the log file /etc/passwd/agent.log: ENOTDIR');
    // /proc refuses the folder: Node's own recursive mkdir would spin there for ever
    const p = await runCli(['image', 'show', '/nonexistent', '--log-file', '/proc/self/nope/agent.log'], { timeout: 20_000 });
    expect(p.stderr).toContain('cannot open the log file /proc/self/nope/agent.log');
    // every write fails (ENOSPC): said once, and the command ends as it would have
    const w = await runCli(['restore', '-D', '/nonexistent', '--log-file', '/dev/full', '--log-level', 'debug'], { timeout: 20_000 });
    expect(w.exitCode).toBe(1);
    expect(w.stderr.match(/cannot write the log to \/dev\/full \(ENOSPC\); logging stops/g)).toHaveLength(1);
    expect(w.stderr).toContain('understudy: opendir(/nonexistent)');
  });

  it('the level is honoured: info by default in a file (no debug line), warn on stderr, warn when asked (no info line either)', async () => {
    const dir = tmpDir('log-level');
    const app = await startCounter();
    const img = join(dir, 'image');
    const d = await runCli(['dump', '--pid', String(app.pid), '-D', img]);
    expect(d.exitCode, d.stderr).toBe(0);
    // without --log-file the log goes to stderr at warn: the agent's info lines ('app attached') do not reach the terminal
    expect(d.stderr).not.toMatch(/"level":30/);
    expect(d.stderr).not.toMatch(/app attached/);
    await waitFor('the dumped app to be gone', () => !existsSync(`/proc/${app.pid}`));

    const infoLog = join(dir, 'info.log');
    const r = await runCli(['restore', '-D', img, '--json', '--log-file', infoLog]);
    expect(r.exitCode, r.stderr).toBe(0);
    const rep = JSON.parse(r.stdout) as { pids: number[]; reaper: number };
    onCleanup(() => killPids([rep.reaper, ...rep.pids]));
    const info = readLog(infoLog);
    // the restorer's info line is there, its debug lines and the CLI's are not
    expect(info.filter((l) => l.level === INFO).map((l) => `${l.component}: ${l.msg}`)).toEqual(['restorer: app restored']);
    expect(info.filter((l) => l.level < INFO)).toEqual([]);

    // and at warn, not even that: a restore that succeeds writes nothing
    killPids([rep.reaper, ...rep.pids]);
    await waitFor('the restored app to be gone', () => rep.pids.every((p) => !existsSync(`/proc/${p}`)));
    const warnLog = join(dir, 'warn.log');
    const w = await runCli(['restore', '-D', img, '--json', '--log-file', warnLog, '--log-level', 'warn']);
    expect(w.exitCode, w.stderr).toBe(0);
    const rep2 = JSON.parse(w.stdout) as { pids: number[]; reaper: number };
    onCleanup(() => killPids([rep2.reaper, ...rep2.pids]));
    expect(existsSync(warnLog) ? readLog(warnLog) : []).toEqual([]);
  });
});
