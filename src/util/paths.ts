// Where the built artefacts live, relative to the package root. Works from
// dist/util/paths.js (the CLI) and from src/util/paths.ts (the tests) alike.
import { existsSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { UnderstudyError } from './errors.js';

export const packageRoot = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
export const buildDir = resolve(packageRoot, 'build');

/**
 * Where the native binaries are: build/native, or the folder named by
 * UNDERSTUDY_NATIVE_DIR (the sanitizer build of scripts/test-asan).
 */
export function nativeDir(): string {
  const d = process.env.UNDERSTUDY_NATIVE_DIR;
  return d !== undefined && d !== '' ? resolve(d) : resolve(buildDir, 'native');
}

/** Path of a native binary, e.g. nativeBinary('check') -> build/native/understudy-check. */
export function nativeBinary(name: string): string {
  const p = resolve(nativeDir(), `understudy-${name}`);
  if (!existsSync(p)) {
    throw new UnderstudyError('E_NOT_BUILT', `native binary ${p} is missing: run \`npm run build\` (or scripts/build) first`);
  }
  return p;
}

export function bpfObject(name: string): string {
  const p = resolve(buildDir, 'bpf', `${name}.bpf.o`);
  if (!existsSync(p)) {
    throw new UnderstudyError('E_NOT_BUILT', `eBPF object ${p} is missing: run \`npm run build\` (or scripts/build) first`);
  }
  return p;
}
