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

export async function runCli(args: string[], opts: Options = {}): Promise<CliResult> {
  const r = await execa(process.execPath, [CLI, ...args], { reject: false, stdin: 'ignore', ...opts });
  return { exitCode: r.exitCode ?? -1, stdout: String(r.stdout), stderr: String(r.stderr) };
}
