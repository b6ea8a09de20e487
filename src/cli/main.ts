// The `understudy` command line: global flags, subcommand dispatch, and the one
// place errors become messages and exit codes (2 usage, 1 failure).
// Start-up cost is paid by every command: this module and the command list
// load only node builtins and small modules; a command imports what it runs
// inside its run() (test/cli/start.test.ts checks it, bench/cli-start times it).
import { readFileSync } from 'node:fs';
import { resolve } from 'node:path';
import { parseArgs, type ParseArgsConfig } from 'node:util';
import type { LogLevel } from '../config/config.js';
import { isUnderstudyError, UnderstudyError } from '../util/errors.js';
import type { CliContext, Command } from './command.js';

const GLOBAL_OPTIONS = {
  json: { type: 'boolean' },
  debug: { type: 'boolean' },
  config: { type: 'string' },
  'log-file': { type: 'string' },
  'log-level': { type: 'string' },
  help: { type: 'boolean', short: 'h' },
  version: { type: 'boolean', short: 'V' },
} as const satisfies NonNullable<ParseArgsConfig['options']>;

const GLOBAL_HELP =
  '  --json            machine-readable output\n' +
  '  --debug           show stack traces on errors\n' +
  '  --config FILE     JSON configuration (default: embedded)\n' +
  '  --log-file FILE   write the JSON log there instead of stderr\n' +
  '  --log-level L     trace, debug, info, warn, error, fatal\n' +
  '                    (default: info into --log-file, warn on stderr)\n' +
  '  -h, --help        this help\n' +
  '  -V, --version     the version';

function version(): string {
  // dist/cli/main.js and src/cli/main.ts alike sit two levels below the package
  const pkg = JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string };
  return pkg.version;
}

/** The commands' metadata: needed for anything but a bare --version, so loaded only then. */
async function commands(): Promise<readonly Command[]> {
  return (await import('./commands/index.js')).COMMANDS;
}

function mainUsage(list: readonly Command[]): string {
  const width = Math.max(...list.map((c) => c.name.length));
  return [
    'usage: understudy [GLOBAL FLAGS] COMMAND [FLAGS]',
    '',
    'Keeps a running Linux application alive when its host dies.',
    '',
    'commands:',
    ...list.map((c) => `  ${c.name.padEnd(width)}  ${c.summary}`),
    '',
    'global flags:',
    GLOBAL_HELP,
    '',
    "Run `understudy COMMAND --help` for a command's flags.",
  ].join('\n');
}

function commandUsage(cmd: Command): string {
  return [
    `usage: understudy ${cmd.name} ${cmd.usage}`.trimEnd(),
    '',
    cmd.summary,
    ...(cmd.help ? ['', 'flags:', cmd.help] : []),
    '',
    'global flags:',
    GLOBAL_HELP,
  ].join('\n');
}

export interface CliIo {
  out(text: string): void;
  err(text: string): void;
}

const stdio: CliIo = {
  out: (t) => process.stdout.write(t + '\n'),
  err: (t) => process.stderr.write(t + '\n'),
};

/** Runs the CLI on `argv` (without node and script) and returns the exit code. */
export async function main(argv: string[], io: CliIo = stdio): Promise<number> {
  let debug = argv.includes('--debug');
  const cmdIndex = findCommand(argv);
  const cmdName = cmdIndex >= 0 ? argv[cmdIndex] : undefined;
  try {
    const cmd = cmdName === undefined ? undefined : (await commands()).find((c) => c.name === cmdName);
    if (cmdName !== undefined && cmd === undefined) {
      throw new UnderstudyError('E_USAGE', `unknown command "${cmdName}"\n\n${mainUsage(await commands())}`);
    }
    const options = { ...GLOBAL_OPTIONS, ...(cmd?.options ?? {}) };
    const args = cmdIndex >= 0 ? [...argv.slice(0, cmdIndex), ...argv.slice(cmdIndex + 1)] : argv;
    let parsed: { values: Record<string, unknown>; positionals: string[] };
    try {
      parsed = parseArgs({ args, options, strict: true, allowPositionals: cmd?.positionals ?? false }) as typeof parsed;
    } catch (e) {
      const usage = cmd ? commandUsage(cmd) : mainUsage(await commands());
      throw new UnderstudyError('E_USAGE', `${(e as Error).message.split('\n')[0]}\n\n${usage}`);
    }
    const v = parsed.values;
    debug = v.debug === true;
    if (v.version === true) {
      io.out(version());
      return 0;
    }
    if (v.help === true) {
      io.out(cmd ? commandUsage(cmd) : mainUsage(await commands()));
      return 0;
    }
    if (!cmd) {
      throw new UnderstudyError('E_USAGE', `no command given\n\n${mainUsage(await commands())}`);
    }
    // (loaded here, not at the top: --version and --help do without them)
    const { loadConfig, LOG_LEVELS } = await import('../config/config.js');
    const { configureLogging, logger } = await import('../util/log.js');
    const config = loadConfig(typeof v.config === 'string' ? v.config : undefined);
    if (typeof v['log-level'] === 'string') {
      config.logLevel = loadConfigLevel(v['log-level'], LOG_LEVELS);
    }
    if (typeof v['log-file'] === 'string') config.logFile = resolve(v['log-file']);
    config.logLevel ??= config.logFile !== undefined ? 'info' : 'warn';
    configureLogging({ level: config.logLevel, file: config.logFile });
    const log = logger('cli');

    if (cmd.needsRoot && process.geteuid?.() !== 0) {
      throw new UnderstudyError(
        'E_NOT_ROOT',
        `understudy ${cmd.name} must run as root: it loads eBPF programs, ptraces the app's processes and ` +
          'creates namespaces, which need CAP_SYS_ADMIN, CAP_SYS_PTRACE and CAP_BPF. Run it again with sudo.',
      );
    }
    const ctx: CliContext = { config, json: v.json === true, debug, out: io.out };
    log.debug({ command: cmd.name, argv, logLevel: config.logLevel, logFile: config.logFile }, 'command started');
    try {
      const code = await cmd.run(ctx, v, parsed.positionals);
      log.debug({ command: cmd.name, exitCode: code }, 'command finished');
      return code;
    } catch (e) {
      log.debug({ command: cmd.name, err: e }, 'command failed');
      // a command's own usage error points at its --help, the same way for every command
      if (isUnderstudyError(e) && e.code === 'E_USAGE' && !e.message.includes('--help')) {
        throw new UnderstudyError('E_USAGE', `${e.message} (see \`understudy ${cmd.name} --help\`)`, { cause: e });
      }
      throw e;
    }
  } catch (e) {
    if (isUnderstudyError(e)) {
      // --json: the error as data too (stderr, one line), for scripts and monitoring
      if (argv.includes('--json')) io.err(JSON.stringify({ error: { code: e.code, message: e.message } }));
      io.err(`understudy: ${e.message}`);
      if (debug && e.stack) io.err(e.stack);
      return e.exitCode;
    }
    io.err(`understudy: internal error: ${(e as Error)?.message ?? String(e)}`);
    io.err(debug ? String((e as Error)?.stack) : 'Run again with --debug for the stack trace, and report it.');
    return 1;
  }
}

/** Index of the subcommand: the first argument that is neither a flag nor a global flag's value. */
function findCommand(argv: string[]): number {
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    if (a === '--') return -1;
    if (a.startsWith('-')) {
      if (a === '--config' || a === '--log-file' || a === '--log-level') i++;
      continue;
    }
    return i;
  }
  return -1;
}

function loadConfigLevel(level: string, LOG_LEVELS: readonly LogLevel[]): LogLevel {
  if (!(LOG_LEVELS as readonly string[]).includes(level)) {
    throw new UnderstudyError('E_USAGE', `--log-level must be one of ${LOG_LEVELS.join(', ')}, got "${level}"`);
  }
  return level as LogLevel;
}
