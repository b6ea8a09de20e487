// One pino logger for the agent; each component takes a child with its name.
// Logs are JSON. Where they go is decided once, by the CLI (a file or stderr).
//
// Modules take their child at import (`const log = logger('engine')`), which is
// before the CLI has read --log-file, --log-level or the config file. So a
// child is a handle, not a pino instance: each call goes to the child of the
// root in force at that moment, made once per root and kept. pino itself and
// the root are made on first use, so that importing a module, or configuring
// the log, costs nothing until something is logged (`understudy --version`
// never loads pino).
import { closeSync, existsSync, mkdirSync, openSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname } from 'node:path';
import type { Logger } from 'pino';
import { UnderstudyError } from './errors.js';

type Pino = typeof import('pino');
let pinoModule: Pino | undefined;
function pino(): Pino['pino'] {
  pinoModule ??= createRequire(import.meta.url)('pino') as Pino;
  return pinoModule.pino;
}

export interface LogSettings {
  /** pino level; default info once configured, UNDERSTUDY_LOG_LEVEL or warn before. */
  level?: string;
  /** JSON lines go to this file (created with its folders); absent means stderr. */
  file?: string;
}

let settings: LogSettings = { level: process.env.UNDERSTUDY_LOG_LEVEL ?? 'warn' };
/** The log file, opened (append) when configured: a file that cannot be opened is refused then, not at the first line. */
let fileFd: number | undefined;
let root: Logger | undefined;
/** Bumped each time the settings change; a handle whose child is older makes a new one. */
let generation = 0;

function currentRoot(): Logger {
  if (root === undefined) {
    const p = pino();
    const dest = p.destination({ dest: fileFd ?? 2, sync: false });
    const file = settings.file;
    // a write that fails (disk full, EIO) stops the log, once said; it never stops the agent
    let failed = false;
    dest.on('error', (e: NodeJS.ErrnoException) => {
      if (failed) return;
      failed = true;
      if (root !== undefined) root.level = 'silent';
      // what it still holds is dropped: retried, it would hold the agent at exit
      dest.destroy();
      process.stderr.write(`understudy: cannot write the log${file ? ` to ${file}` : ''} (${e.code ?? e.message}); logging stops\n`);
    });
    root = p({ level: settings.level ?? 'info' }, dest);
  }
  return root;
}

/**
 * Set the root logger's destination and level (called once by the CLI).
 * Children taken earlier follow it from their next call on.
 */
export function configureLogging(opts: LogSettings): void {
  let fd: number | undefined;
  if (opts.file !== undefined) {
    try {
      makeDirs(dirname(opts.file));
      fd = openSync(opts.file, 'a', 0o640);
    } catch (e) {
      throw new UnderstudyError('E_CONFIG', `cannot open the log file ${opts.file}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
    }
  }
  // an fd a destination writes to stays its own (it may still have lines to
  // write); one no line was ever written to is closed here
  if (root !== undefined) root.flush();
  else if (fileFd !== undefined) closeSync(fileFd);
  root = undefined;
  fileFd = fd;
  settings = { level: opts.level ?? 'info', file: opts.file };
  generation++;
}

/** mkdir -p, one level at a time (Node's recursive mkdir can loop for ever on a parent that refuses, as in /proc). */
function makeDirs(dir: string): void {
  if (existsSync(dir)) return;
  const parent = dirname(dir);
  if (parent !== dir) makeDirs(parent);
  mkdirSync(dir);
}

const LEVEL_VALUES: Readonly<Record<string, number>> = { trace: 10, debug: 20, info: 30, warn: 40, error: 50, fatal: 60, silent: Infinity };
const noop = (): void => {};

/** Below the level in force: answered without pino, so a command that logs nothing at its level never loads it. */
function belowLevel(level: string): boolean {
  return (LEVEL_VALUES[level] ?? 0) < (LEVEL_VALUES[settings.level ?? 'info'] ?? 0);
}

/** The logger of one component: `{component}` on every line, at the level and destination in force. */
export function logger(component: string): Logger {
  let child: Logger | undefined;
  let made = -1;
  const current = (): Logger => {
    if (child === undefined || made !== generation) {
      child = currentRoot().child({ component });
      made = generation;
    }
    return child;
  };
  return new Proxy({} as Logger, {
    get(_target, prop) {
      if (typeof prop === 'string' && prop in LEVEL_VALUES && prop !== 'silent' && belowLevel(prop)) return noop;
      if (prop === 'isLevelEnabled') return (level: string) => !belowLevel(level) && current().isLevelEnabled(level);
      const l = current();
      const v: unknown = Reflect.get(l, prop, l);
      return typeof v === 'function' ? (v as (...a: unknown[]) => unknown).bind(l) : v;
    },
    set(_target, prop, value) {
      return Reflect.set(current(), prop, value);
    },
    has(_target, prop) {
      return Reflect.has(current(), prop);
    },
  });
}
