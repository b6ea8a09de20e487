// Runs the built CLI as a user would: a separate node process on bin/understudy.js.
import { execa, type Options } from 'execa';
import { resolve } from 'node:path';
import { packageRoot } from '../../src/util/paths.js';

export const CLI = resolve(packageRoot, 'bin', 'understudy.js');

export interface CliResult {
  exitCode: number;
  stdout: string;
  stderr: string;
}

/** `wrap`: a command to run the CLI under, e.g. ['unshare', '--user', ...]. */
export async function runCli(args: string[], opts: Options & { wrap?: string[] } = {}): Promise<CliResult> {
  const { wrap = [], ...rest } = opts;
  const argv = [...wrap, process.execPath, CLI, ...args];
  const r = await execa(argv[0]!, argv.slice(1), { reject: false, stdin: 'ignore', ...rest });
  return { exitCode: r.exitCode ?? -1, stdout: String(r.stdout), stderr: String(r.stderr) };
}
