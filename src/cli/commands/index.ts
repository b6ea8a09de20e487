import type { Command } from '../command.js';
import { checkCommand } from './check.js';
import { demoCommand } from './demo.js';
import { dumpCommand } from './dump.js';
import { graphCommand } from './graph.js';
import { imageCommand } from './image.js';
import { runCommand } from './run.js';
import { restoreCommand } from './restore.js';
import { traceCommand } from './trace.js';

export const COMMANDS: readonly Command[] = [checkCommand, demoCommand, traceCommand, graphCommand, runCommand, dumpCommand, imageCommand, restoreCommand];
