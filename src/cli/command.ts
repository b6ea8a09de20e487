// The shape of a CLI subcommand. Each lives in src/cli/commands/<name>.ts and
// is listed in src/cli/commands/index.ts. A command module is loaded by every
// CLI start (for --help and flag parsing): it holds the command's metadata and
// imports the components it runs inside run() (`await import(...)`), never at
// its top, so that `understudy --version` does not pay for them.
import type { ParseArgsConfig } from 'node:util';
import type { Config } from '../config/config.js';
import { UnderstudyError } from '../util/errors.js';

export interface CliContext {
  config: Config;
  json: boolean;
  debug: boolean;
  /** Write a line for the user (stdout). The only place the CLI prints. */
  out(text: string): void;
}

export interface Command {
  name: string;
  summary: string;
  /** Usage line(s) after `understudy <name>`, e.g. `--pid PID [--json]`. */
  usage: string;
  /** Option descriptions for --help, one per line. */
  help?: string;
  options: NonNullable<ParseArgsConfig['options']>;
  positionals?: boolean;
  /** Commands that touch the kernel need root; `--help` never does. */
  needsRoot: boolean;
  run(ctx: CliContext, values: Record<string, unknown>, positionals: string[]): Promise<number>;
}

// Flag values, checked the same way by every command: one wording for one
// kind of mistake, always a usage error (exit status 2).

/** Largest pid the kernel can hand out (PID_MAX_LIMIT on 64-bit). */
export const PID_MAX = 4_194_304;
/** Epoch directories are named with six digits. */
export const EPOCH_MAX = 999_999;

/** A whole-number flag in [min, max] (decimal digits only), or undefined when absent. */
export function intFlag(values: Record<string, unknown>, name: string, min: number, max: number): number | undefined {
  const v = values[name];
  if (v === undefined) return undefined;
  const s = String(v);
  const n = Number(s);
  if (!/^\d+$/.test(s) || n < min || n > max) {
    throw new UnderstudyError('E_USAGE', `--${name} must be an integer from ${min} to ${max}, got "${s}"`);
  }
  return n;
}

/** A string flag that must be given and not empty; `shown` is how --help names it. */
export function stringFlag(values: Record<string, unknown>, name: string, shown = `--${name}`): string {
  const v = values[name];
  if (typeof v !== 'string' || v === '') missingFlag(shown);
  return v;
}

export function missingFlag(shown: string): never {
  throw new UnderstudyError('E_USAGE', `${shown} is required`);
}
