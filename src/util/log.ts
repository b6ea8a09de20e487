// One pino logger for the agent; each component takes a child with its name.
// Logs are JSON. Where they go is decided once, by the CLI (a file or stderr).
import { pino, type Logger, type DestinationStream } from 'pino';

let root: Logger = pino({ level: process.env.UNDERSTUDY_LOG_LEVEL ?? 'warn' }, pino.destination(2));

/** Replace the root logger's destination and level (called once by the CLI). */
export function configureLogging(opts: { level?: string; file?: string }): void {
  const dest: DestinationStream =
    opts.file !== undefined ? pino.destination({ dest: opts.file, mkdir: true, sync: false }) : pino.destination(2);
  root = pino({ level: opts.level ?? 'info' }, dest);
}

export function logger(component: string): Logger {
  return root.child({ component });
}
