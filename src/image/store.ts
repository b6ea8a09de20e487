// Image store reader (docs/image-format.md): lists the epochs of an image
// directory, reads and verifies their metadata (frame length + crc32) and
// pages (crc32 per page, on every read), reconstructs a process's memory at an
// epoch from the nearest full epoch plus the deltas after it, and compacts a
// chain into a new full base.
import { createHash } from 'node:crypto';
import { existsSync, fsyncSync, mkdirSync, openSync, closeSync, readdirSync, readFileSync, renameSync, rmSync, statSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { crc32 } from 'node:zlib';
import { understudy } from '../gen/proto.js';
import { UnderstudyError } from '../util/errors.js';

export const IMAGE_VERSION = 1;
export const PAGE_SIZE = 4096;

export type EpochMeta = understudy.v1.EpochMeta;
export type ProcessMeta = understudy.v1.Process;

export interface EpochEntry {
  epoch: number;
  /** "epoch" (written by the engine) or "base" (written by compaction) */
  kind: 'epoch' | 'base';
  name: string;
  path: string;
}

/** Epoch directories of an image, sorted by epoch (a base before the epoch of the same number). */
export function listEpochs(dir: string): EpochEntry[] {
  let names: string[];
  try {
    const st = statSync(dir);
    if (!st.isDirectory()) throw new UnderstudyError('E_NOT_AN_IMAGE', `${dir} is not a directory, so not an image`);
    names = readdirSync(dir);
  } catch (e) {
    if (e instanceof UnderstudyError) throw e;
    throw new UnderstudyError('E_NOT_AN_IMAGE', `${dir}: cannot read it as an image directory (${(e as Error).message})`);
  }
  const out: EpochEntry[] = [];
  for (const name of names) {
    const m = /^(epoch|base)-(\d{6})$/.exec(name);
    if (!m) continue;
    out.push({ epoch: Number(m[2]), kind: m[1] as 'epoch' | 'base', name, path: join(dir, name) });
  }
  out.sort((a, b) => a.epoch - b.epoch || (a.kind === 'base' ? -1 : 1));
  if (out.length === 0) {
    throw new UnderstudyError(
      'E_NOT_AN_IMAGE',
      `${dir} is not an Understudy image: it has no epoch-NNNNNN/ or base-NNNNNN/ directory (see docs/image-format.md)`,
    );
  }
  return out;
}

/** A file of an epoch, whole; one that cannot be read makes the image corrupt. */
function readImageFile(file: string): Buffer {
  try {
    return readFileSync(file);
  } catch (e) {
    throw new UnderstudyError('E_IMAGE_CORRUPT', `${file}: missing or unreadable (${(e as Error).message})`);
  }
}

/** Reads and verifies `meta.pb` of one epoch directory. */
export function readEpochMeta(epochDir: string): EpochMeta {
  const file = join(epochDir, 'meta.pb');
  return decodeEpochMetaFile(readImageFile(file), file);
}

/** The bytes of a meta.pb file (length, message, crc32) for `meta`. */
export function encodeEpochMeta(meta: EpochMeta): Buffer {
  return frameEpochMeta(Buffer.from(understudy.v1.EpochMeta.encode(meta).finish()));
}

/** meta.pb bytes around an encoded EpochMeta (as the epoch stream carries it). */
export function frameEpochMeta(body: Uint8Array): Buffer {
  const out = Buffer.alloc(body.length + 8);
  out.writeUInt32LE(body.length, 0);
  out.set(body, 4);
  out.writeUInt32LE(crc32(body), 4 + body.length);
  return out;
}

/**
 * Rewrites an epoch's meta.pb after `edit` (repairs, tests of the readers):
 * read and verified first, then written to a temporary file, fsynced and
 * renamed over the old one.
 */
export function rewriteEpochMeta(epochDir: string, edit: (m: EpochMeta) => void): void {
  const m = readEpochMeta(epochDir);
  edit(m);
  const file = join(epochDir, 'meta.pb');
  const tmp = join(epochDir, `.meta.pb.tmp-${process.pid}`);
  writeDurable(tmp, [encodeEpochMeta(m)], 'w');
  renameSync(tmp, file);
  fsyncDir(epochDir);
}

/**
 * Writes a whole epoch (meta.pb from `metaFile`, pages.bin from `pages`) as
 * DIR/NAME atomically: a hidden temporary directory, fsynced, renamed into
 * place, DIR fsynced. Used by compaction and to store an epoch received as
 * a stream.
 */
export function writeEpochDir(dir: string, name: string, metaFile: Buffer, pages: Buffer[]): string {
  const final = join(dir, name);
  if (existsSync(final)) throw new UnderstudyError('E_IMAGE_EXISTS', `${final} already exists`);
  const tmp = join(dir, `.tmp-${name}-${process.pid}`);
  rmSync(tmp, { recursive: true, force: true });
  mkdirSync(tmp);
  try {
    writeDurable(join(tmp, 'pages.bin'), pages);
    writeDurable(join(tmp, 'meta.pb'), [metaFile]);
    fsyncDir(tmp);
    renameSync(tmp, final);
    fsyncDir(dir);
    return final;
  } catch (e) {
    rmSync(tmp, { recursive: true, force: true });
    if (e instanceof UnderstudyError) throw e;
    throw new UnderstudyError('E_IMAGE_WRITE', `writing ${final}: ${(e as Error).message}`, { cause: e });
  }
}

/** Decodes the bytes of a meta.pb file; `file` names it in errors. */
export function decodeEpochMetaFile(buf: Buffer, file: string): EpochMeta {
  if (buf.length < 8) throw new UnderstudyError('E_IMAGE_CORRUPT', `${file}: truncated (${buf.length} bytes, a header needs 4 + 4)`);
  const len = buf.readUInt32LE(0);
  if (buf.length !== 4 + len + 4) {
    throw new UnderstudyError(
      'E_IMAGE_CORRUPT',
      `${file}: frame claims ${len} bytes of metadata + 4 of crc but the file holds ${buf.length - 4} after the length (truncated or trailing data)`,
    );
  }
  const body = buf.subarray(4, 4 + len);
  const want = buf.readUInt32LE(4 + len);
  const got = crc32(body);
  if (want !== got) {
    throw new UnderstudyError('E_IMAGE_CORRUPT', `${file}: metadata crc32 mismatch (stored ${hex(want)}, computed ${hex(got)})`);
  }
  let meta: EpochMeta;
  try {
    meta = understudy.v1.EpochMeta.decode(body);
  } catch (e) {
    throw new UnderstudyError('E_IMAGE_CORRUPT', `${file}: cannot decode EpochMeta (${(e as Error).message})`);
  }
  if (meta.version !== IMAGE_VERSION) {
    throw new UnderstudyError('E_VERSION', `${file}: image version ${meta.version} is not supported (this build reads version ${IMAGE_VERSION})`);
  }
  if (meta.pageSize !== PAGE_SIZE) {
    throw new UnderstudyError('E_IMAGE_CORRUPT', `${file}: page size ${meta.pageSize}, expected ${PAGE_SIZE}`);
  }
  return meta;
}

// Decoded messages are class instances with defaults; the generated types
// still mark nested fields optional, so these accessors narrow them.
export function processesOf(m: EpochMeta): ProcessMeta[] {
  return m.processes as ProcessMeta[];
}
export function runsOf(p: ProcessMeta): understudy.v1.PageRun[] {
  return p.pages as understudy.v1.PageRun[];
}
export function rangesOf(r: understudy.v1.IRange[]): understudy.v1.Range[] {
  return r as understudy.v1.Range[];
}
export function vmasOf(p: ProcessMeta): understudy.v1.Vma[] {
  return p.vmas as understudy.v1.Vma[];
}

function hex(n: number): string {
  return '0x' + n.toString(16).padStart(8, '0');
}

/** Memory of one process: page-aligned address -> 4096 bytes. */
export type PageMap = Map<number, Buffer>;

/** Reads pages.bin of an epoch, verifying its size and every page's crc32. */
export function readEpochPages(epochDir: string, meta: EpochMeta): Map<number, PageMap> {
  const file = join(epochDir, 'pages.bin');
  return pagesOf(meta, readImageFile(file), file);
}

/** The pages of an epoch from its pages.bin bytes (`file` names them), every page's crc32 verified. */
export function pagesOf(meta: EpochMeta, data: Buffer, file: string): Map<number, PageMap> {
  const want = Number(meta.pagesBytes);
  if (data.length !== want) {
    throw new UnderstudyError('E_IMAGE_CORRUPT', `${file}: ${data.length} bytes but the metadata says ${want} (truncated or overwritten)`);
  }
  const out = new Map<number, PageMap>();
  for (const p of processesOf(meta)) {
    const pm: PageMap = new Map();
    for (const run of runsOf(p)) {
      const base = Number(run.vaddr);
      const off = Number(run.offset);
      if (run.crc32.length !== run.npages || off + run.npages * PAGE_SIZE > data.length) {
        throw new UnderstudyError('E_IMAGE_CORRUPT', `${file}: page run at 0x${base.toString(16)} (pid ${p.pid}) is out of bounds or lacks crcs`);
      }
      for (let i = 0; i < run.npages; i++) {
        const page = data.subarray(off + i * PAGE_SIZE, off + (i + 1) * PAGE_SIZE);
        const c = crc32(page);
        if (c !== run.crc32[i]) {
          const addr = base + i * PAGE_SIZE;
          throw new UnderstudyError(
            'E_IMAGE_CORRUPT',
            `${file}: page 0x${addr.toString(16)} of pid ${p.pid} (byte ${off + i * PAGE_SIZE}) fails its crc32 (stored ${hex(run.crc32[i]!)}, computed ${hex(c)})`,
          );
        }
        pm.set(base + i * PAGE_SIZE, page);
      }
    }
    out.set(p.pid, pm);
  }
  return out;
}

export interface LoadedEpoch {
  entry: EpochEntry;
  meta: EpochMeta;
}

/** Metadata of every epoch, verified (pages are verified when read). */
export function loadChain(dir: string): LoadedEpoch[] {
  return listEpochs(dir).map((entry) => ({ entry, meta: readEpochMeta(entry.path) }));
}

function dropRange(pm: PageMap, start: number, end: number): void {
  if ((end - start) / PAGE_SIZE < pm.size) {
    for (let a = start; a < end; a += PAGE_SIZE) pm.delete(a);
  } else {
    for (const a of pm.keys()) if (a >= start && a < end) pm.delete(a);
  }
}

export interface Reconstructed {
  epoch: number;
  meta: EpochMeta;
  /** host pid -> data pages at that epoch */
  memory: Map<number, PageMap>;
  /** the epochs read, in order (a full one first) */
  used: string[];
}

/**
 * Memory of every process at `epoch` (default: the latest): the nearest full
 * epoch or base at or below it, then each delta in order. Every page read is
 * crc-checked; a missing delta, a delta of another chain, or a broken
 * parent link is refused naming it.
 */
export function reconstruct(dir: string, epoch?: number): Reconstructed {
  const entries = listEpochs(dir);
  const target = epoch ?? Math.max(...entries.map((e) => e.epoch));
  const metas = new Map<string, EpochMeta>();
  const metaOf = (e: EpochEntry): EpochMeta => {
    let m = metas.get(e.name);
    if (!m) {
      m = readEpochMeta(e.path);
      if (m.epoch !== e.epoch) throw new UnderstudyError('E_IMAGE_CHAIN', `${e.path}: metadata says epoch ${m.epoch}, the directory name ${e.epoch}`);
      metas.set(e.name, m);
    }
    return m;
  };
  // the nearest full: a base-N, or an epoch-N written full
  let start: EpochEntry | undefined;
  for (const e of entries) {
    if (e.epoch > target) break;
    if (e.kind === 'base' || metaOf(e).full) {
      if (!start || e.epoch > start.epoch || (e.epoch === start.epoch && e.kind === 'base')) start = e;
    }
  }
  if (!start) {
    throw new UnderstudyError('E_IMAGE_CHAIN', `${dir}: no full epoch at or below epoch ${target} (epoch-000000 missing?)`);
  }
  const base = metaOf(start);
  const memory = readEpochPages(start.path, base);
  const used = [start.name];
  let meta = base;
  for (let n = start.epoch + 1; n <= target; n++) {
    const e = entries.find((x) => x.kind === 'epoch' && x.epoch === n);
    if (!e) throw new UnderstudyError('E_IMAGE_CHAIN', `${dir}: delta epoch-${String(n).padStart(6, '0')} is missing; epoch ${target} cannot be rebuilt`);
    const m = metaOf(e);
    if (m.imageId !== base.imageId) {
      throw new UnderstudyError('E_IMAGE_CHAIN', `${e.path}: belongs to image ${m.imageId}, not to the chain of ${start.name} (${base.imageId})`);
    }
    if (!m.full && m.parentEpoch !== n - 1) {
      throw new UnderstudyError('E_IMAGE_CHAIN', `${e.path}: parent epoch ${m.parentEpoch}, expected ${n - 1}`);
    }
    const pages = readEpochPages(e.path, m);
    applyDelta(memory, m, pages);
    used.push(e.name);
    meta = m;
  }
  if (meta.epoch !== target) throw new UnderstudyError('E_IMAGE_CHAIN', `${dir}: epoch ${target} not found`);
  return { epoch: target, meta, memory, used };
}

/** Applies one delta (or full epoch) over the memory of its parent. */
export function applyDelta(memory: Map<number, PageMap>, m: EpochMeta, pages: Map<number, PageMap>): void {
  const live = new Set<number>();
  for (const p of processesOf(m)) {
    live.add(p.pid);
    let pm = memory.get(p.pid);
    if (!pm || m.full || p.newProcess) {
      pm = new Map();
      memory.set(p.pid, pm);
    }
    for (const r of rangesOf(p.reset)) dropRange(pm, Number(r.start), Number(r.end));
    for (const r of rangesOf(p.zeroed)) dropRange(pm, Number(r.start), Number(r.end));
    // pages outside every region of this epoch are gone (unmapped)
    const vmas = vmasOf(p)
      .map((v) => [Number(v.start), Number(v.end)] as const)
      .sort((a, b) => a[0] - b[0]);
    for (const a of [...pm.keys()]) {
      if (!inside(vmas, a)) pm.delete(a);
    }
    for (const [a, buf] of pages.get(p.pid) ?? []) pm.set(a, buf);
  }
  for (const pid of [...memory.keys()]) if (!live.has(pid)) memory.delete(pid);
}

function inside(sorted: (readonly [number, number])[], a: number): boolean {
  let lo = 0;
  let hi = sorted.length - 1;
  while (lo <= hi) {
    const mid = (lo + hi) >> 1;
    const [s, e] = sorted[mid]!;
    if (a < s) hi = mid - 1;
    else if (a >= e) lo = mid + 1;
    else return true;
  }
  return false;
}

/** sha256 over (address, bytes) of every page in address order: a memory fingerprint. */
export function memoryDigest(pm: PageMap): string {
  const h = createHash('sha256');
  const b = Buffer.alloc(8);
  for (const a of [...pm.keys()].sort((x, y) => x - y)) {
    b.writeBigUInt64LE(BigInt(a));
    h.update(b);
    h.update(pm.get(a)!);
  }
  return h.digest('hex');
}

/**
 * Folds the chain up to `epoch` (default: the latest) into base-NNNNNN/, a full
 * epoch with the same image id, written atomically. With prune, the epochs
 * and bases below it are removed afterwards (the chain then starts at it).
 */
export function compact(dir: string, epoch?: number, opts: { prune?: boolean } = {}): { base: string; pages: number; pruned: string[] } {
  const r = reconstruct(dir, epoch);
  const name = `base-${String(r.epoch).padStart(6, '0')}`;
  if (existsSync(join(dir, name))) throw new UnderstudyError('E_IMAGE_EXISTS', `${join(dir, name)} already exists`);
  try {
    const meta = understudy.v1.EpochMeta.fromObject(understudy.v1.EpochMeta.toObject(r.meta, { longs: Number }));
    meta.full = true;
    // fds carry uint64s beyond 2^53 (epoll data, description ids): keep them exact
    const orig = processesOf(r.meta);
    processesOf(meta).forEach((p, i) => {
      p.fds = orig[i]!.fds;
    });
    const chunks: Buffer[] = [];
    let off = 0;
    for (const p of processesOf(meta)) {
      p.reset = [];
      p.zeroed = [];
      p.vmaChanges = [];
      p.newProcess = false;
      const pm = r.memory.get(p.pid) ?? new Map<number, Buffer>();
      const addrs = [...pm.keys()].sort((a, b) => a - b);
      const runs: understudy.v1.PageRun[] = [];
      let run: understudy.v1.PageRun | undefined;
      for (const a of addrs) {
        const page = pm.get(a)!;
        if (!run || Number(run.vaddr) + run.npages * PAGE_SIZE !== a) {
          run = understudy.v1.PageRun.create({ vaddr: a, npages: 0, offset: off, crc32: [] });
          runs.push(run);
        }
        run.npages++;
        run.crc32.push(crc32(page));
        chunks.push(page);
        off += PAGE_SIZE;
      }
      p.pages = runs;
    }
    meta.pagesBytes = off;
    const final = writeEpochDir(dir, name, encodeEpochMeta(meta), chunks);
    const pruned = opts.prune ? prune(dir, r.epoch) : [];
    return { base: final, pages: off / PAGE_SIZE, pruned };
  } catch (e) {
    if (e instanceof UnderstudyError) throw e;
    throw new UnderstudyError('E_IMAGE_WRITE', `compacting ${dir} into ${name}: ${(e as Error).message}`, { cause: e });
  }
}

/**
 * Removes the epochs and bases that base-`upTo` replaces. Each leaves the
 * chain by one rename to a hidden name (never listed), newest first, and only
 * then is deleted: an interrupted prune leaves no half-deleted epoch-N/ that
 * would make the image unreadable, and what stays listed is a whole chain
 * 0..k. Hidden leftovers of an earlier interrupted prune are deleted too.
 */
function prune(dir: string, upTo: number): string[] {
  const replaced = listEpochs(dir)
    .filter((e) => e.epoch < upTo || (e.epoch === upTo && e.kind === 'epoch'))
    .reverse();
  removePruned(dir); // first: a leftover may hold the hidden name an epoch now needs
  for (const e of replaced) renameSync(e.path, join(dir, `${PRUNED_PREFIX}${e.name}`));
  fsyncDir(dir);
  removePruned(dir);
  return replaced.map((e) => e.name).reverse();
}

function removePruned(dir: string): void {
  for (const name of readdirSync(dir)) {
    if (name.startsWith(PRUNED_PREFIX)) rmSync(join(dir, name), { recursive: true, force: true });
  }
}

const PRUNED_PREFIX = '.pruned-';

function writeDurable(file: string, chunks: Buffer[], flags = 'wx'): void {
  const fd = openSync(file, flags, 0o600);
  try {
    for (const c of chunks) {
      let o = 0;
      while (o < c.length) o += writeSync(fd, c, o, c.length - o);
    }
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
}

function fsyncDir(dir: string): void {
  const fd = openSync(dir, 'r');
  try {
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
}
