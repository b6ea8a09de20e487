import type { Command } from '../command.js';
import { checkCommand } from './check.js';
import { demoCommand } from './demo.js';
import { graphCommand } from './graph.js';
import { traceCommand } from './trace.js';

export const COMMANDS: readonly Command[] = [checkCommand, demoCommand, traceCommand, graphCommand];
