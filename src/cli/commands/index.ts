import type { Command } from '../command.js';
import { checkCommand } from './check.js';
import { demoCommand } from './demo.js';
import { dumpCommand } from './dump.js';
import { imageCommand } from './image.js';
import { restoreCommand } from './restore.js';

export const COMMANDS: readonly Command[] = [checkCommand, demoCommand, dumpCommand, imageCommand, restoreCommand];
