// The shape of a CLI subcommand. Each lives in src/cli/commands/<name>.ts and
// is listed in src/cli/commands/index.ts.
import type { ParseArgsConfig } from 'node:util';
import type { Config } from '../config/config.js';

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
