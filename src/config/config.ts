// Agent configuration: an embedded default that works with no file at all,
// overridden by a JSON file given with --config. Unknown keys and wrong types
// are refused with the key named, never ignored.
import { readFileSync } from 'node:fs';
import { UnderstudyError } from '../util/errors.js';

/** pino's levels, the ones a config file or --log-level may name. */
export const LOG_LEVELS = ['trace', 'debug', 'info', 'warn', 'error', 'fatal'] as const;
export type LogLevel = (typeof LOG_LEVELS)[number];

export interface Config {
  /** Where images, logs and state live. */
  dataDir: string;
  /**
   * pino level for the agent's log. Absent: info into a log file, warn on
   * stderr (a terminal gets the agent's warnings and errors, not its progress).
   */
  logLevel?: LogLevel;
  /** Log file; absent means stderr. */
  logFile?: string;
}

export const DEFAULT_CONFIG: Readonly<Config> = Object.freeze({
  dataDir: '/var/lib/understudy',
});

export function parseConfig(text: string, source: string): Config {
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (e) {
    throw new UnderstudyError('E_CONFIG', `${source}: not valid JSON (${(e as Error).message})`);
  }
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) {
    throw new UnderstudyError('E_CONFIG', `${source}: must be a JSON object`);
  }
  const cfg: Config = { ...DEFAULT_CONFIG };
  for (const [key, value] of Object.entries(raw)) {
    switch (key) {
      case 'dataDir':
      case 'logFile':
        if (typeof value !== 'string' || value === '' || !value.startsWith('/')) {
          throw new UnderstudyError('E_CONFIG', `${source}: "${key}" must be an absolute path, got ${JSON.stringify(value)}`);
        }
        cfg[key] = value;
        break;
      case 'logLevel':
        if (typeof value !== 'string' || !(LOG_LEVELS as readonly string[]).includes(value)) {
          throw new UnderstudyError('E_CONFIG', `${source}: "logLevel" must be one of ${LOG_LEVELS.join(', ')}, got ${JSON.stringify(value)}`);
        }
        cfg.logLevel = value as LogLevel;
        break;
      default:
        throw new UnderstudyError('E_CONFIG', `${source}: unknown key "${key}" (known: dataDir, logLevel, logFile)`);
    }
  }
  return cfg;
}

export function loadConfig(file: string | undefined): Config {
  if (file === undefined) return { ...DEFAULT_CONFIG };
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (e) {
    throw new UnderstudyError('E_CONFIG', `cannot read config file ${file}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
  }
  return parseConfig(text, file);
}
