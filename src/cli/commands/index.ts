import type { Command } from '../command.js';
import { checkCommand } from './check.js';
import { demoCommand } from './demo.js';

export const COMMANDS: readonly Command[] = [checkCommand, demoCommand];
