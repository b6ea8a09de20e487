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
import { createRequire } from 'node:module';
import type { Logger } from 'pino';

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
let root: Logger | undefined;
/** Bumped each time the settings change; a handle whose child is older makes a new one. */
let generation = 0;

function currentRoot(): Logger {
  if (root === undefined) {
    const p = pino();
    const dest = settings.file !== undefined ? p.destination({ dest: settings.file, mkdir: true, sync: false }) : p.destination(2);
    root = p({ level: settings.level ?? 'info' }, dest);
  }
  return root;
}

/**
 * Set the root logger's destination and level (called once by the CLI).
 * Children taken earlier follow it from their next call on.
 */
export function configureLogging(opts: LogSettings): void {
  root?.flush();
  root = undefined;
  settings = { level: opts.level ?? 'info', file: opts.file };
  generation++;
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
