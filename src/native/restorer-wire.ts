// The restorer's frames on the wire (proto/understudy/v1/restore.proto),
// encoded and decoded here without the protobuf runtime: `understudy restore`
// is a command people time, and loading protobufjs and the generated
// messages costs node more than the restorer needs for a 64 MB app. Only the
// fields of RestorerRequest and RestorerReply are known here; unknown fields
// are skipped, as protobuf readers do. test/restore/wire.test.ts checks both
// directions against the generated code.
import { UnderstudyError } from '../util/errors.js';

export interface BuildCmd {
  imageDir: string;
  epoch: number; // < 0: the newest
  tty: number; // TtyMode: 0 TTY_NULL, 1 TTY_INHERIT
}

export interface RequestMsg {
  version: number;
  id: number;
  build?: BuildCmd;
  apply?: { epoch: number };
  resume?: Record<string, never>;
  check?: { imageDir: string; epoch: number };
  abort?: Record<string, never>;
}

export interface PhasesMsg {
  readNs: number;
  verifyNs: number;
  checkNs: number;
  treeNs: number;
  rebuildNs: number;
  finishNs: number;
  applyNs: number;
}

export interface CloneInfoMsg {
  epoch: number;
  imageId: string;
  pids: number[];
  threads: number;
  reaper: number;
  rootIsInit: boolean;
  bytes: number;
  totalNs: number;
  phases: PhasesMsg;
  stub: number;
}

export interface ApplyResultMsg {
  epoch: number;
  bytes: number;
  pages: number;
  regionsMapped: number;
  regionsUnmapped: number;
  regionsReprotected: number;
  processesAdded: number;
  processesRemoved: number;
  threadsAdded: number;
  threadsRemoved: number;
  pids: number[];
  applyNs: number;
  /** Fds opened again (or taken from a holder of their description), and closed. */
  fdsOpened: number;
  fdsClosed: number;
}

export interface ReplyMsg {
  version: number;
  id: number;
  ok: boolean;
  errorCode: number;
  error: string;
  errnoValue: number;
  killed: number[];
  build?: CloneInfoMsg;
  apply?: ApplyResultMsg;
  resume?: CloneInfoMsg;
  check?: CloneInfoMsg;
  abort?: { killed: number[] };
}

// ---- encoding ----

class Out {
  private readonly parts: number[] = [];

  varint(v: bigint): void {
    let x = BigInt.asUintN(64, v);
    while (x >= 0x80n) {
      this.parts.push(Number(x & 0x7fn) | 0x80);
      x >>= 7n;
    }
    this.parts.push(Number(x));
  }

  tag(field: number, wire: number): void {
    this.varint(BigInt((field << 3) | wire));
  }

  /** a varint field (proto3: left out when 0) */
  num(field: number, v: number): void {
    if (v === 0) return;
    this.tag(field, 0);
    this.varint(BigInt(v));
  }

  bytes(field: number, b: Uint8Array): void {
    this.tag(field, 2);
    this.varint(BigInt(b.length));
    for (const x of b) this.parts.push(x);
  }

  str(field: number, s: string): void {
    if (s !== '') this.bytes(field, Buffer.from(s, 'utf8'));
  }

  finish(): Uint8Array {
    return Uint8Array.from(this.parts);
  }
}

export function encodeRequest(r: RequestMsg): Uint8Array {
  const o = new Out();
  o.num(1, r.version);
  o.num(2, r.id);
  const sub = (field: number, f: (s: Out) => void): void => {
    const s = new Out();
    f(s);
    o.bytes(field, s.finish());
  };
  if (r.build) {
    const b = r.build;
    sub(10, (s) => {
      s.str(1, b.imageDir);
      s.num(2, b.epoch);
      s.num(3, b.tty);
    });
  } else if (r.apply) {
    const a = r.apply;
    sub(11, (s) => s.num(1, a.epoch));
  } else if (r.resume) {
    sub(12, () => undefined);
  } else if (r.check) {
    const c = r.check;
    sub(13, (s) => {
      s.str(1, c.imageDir);
      s.num(2, c.epoch);
    });
  } else if (r.abort) {
    sub(14, () => undefined);
  }
  return o.finish();
}

// ---- decoding ----

class In {
  pos = 0;
  constructor(private readonly b: Uint8Array) {}

  get done(): boolean {
    return this.pos >= this.b.length;
  }

  varint(): bigint {
    let v = 0n;
    for (let shift = 0n; ; shift += 7n) {
      if (this.pos >= this.b.length || shift > 63n) throw new UnderstudyError('E_FRAME', 'restorer reply: a varint runs past its message');
      const x = this.b[this.pos++]!;
      v |= BigInt(x & 0x7f) << shift;
      if (!(x & 0x80)) return v;
    }
  }

  bytes(): Uint8Array {
    const n = Number(this.varint());
    if (this.pos + n > this.b.length) throw new UnderstudyError('E_FRAME', 'restorer reply: a field runs past its message');
    const v = this.b.subarray(this.pos, this.pos + n);
    this.pos += n;
    return v;
  }

  skip(wire: number): void {
    if (wire === 0) this.varint();
    else if (wire === 1) this.pos += 8;
    else if (wire === 2) this.bytes();
    else if (wire === 5) this.pos += 4;
    else throw new UnderstudyError('E_FRAME', `restorer reply: wire type ${wire} is not one of protobuf's`);
  }
}

/** Reads the fields of a message: `on` gets each (field, wire type) and reads it, or returns false to skip it. */
function fields(b: Uint8Array, on: (f: number, wire: number, r: In) => boolean): void {
  const r = new In(b);
  while (!r.done) {
    const t = Number(r.varint());
    const f = t >>> 3;
    const wire = t & 7;
    if (!on(f, wire, r)) r.skip(wire);
  }
}

const u = (r: In): number => Number(r.varint());
const i32 = (r: In): number => Number(BigInt.asIntN(32, r.varint()));
const str = (r: In): string => Buffer.from(r.bytes()).toString('utf8');

/** a repeated int32: packed (one length-delimited field) or not */
function int32s(wire: number, r: In, into: number[]): void {
  if (wire === 2) {
    const p = new In(r.bytes());
    while (!p.done) into.push(i32(p));
  } else {
    into.push(i32(r));
  }
}

function phases(b: Uint8Array): PhasesMsg {
  const p: PhasesMsg = { readNs: 0, verifyNs: 0, checkNs: 0, treeNs: 0, rebuildNs: 0, finishNs: 0, applyNs: 0 };
  const keys: (keyof PhasesMsg)[] = ['readNs', 'verifyNs', 'checkNs', 'treeNs', 'rebuildNs', 'finishNs', 'applyNs'];
  fields(b, (f, w, r) => {
    const k = keys[f - 1];
    if (!k || w !== 0) return false;
    p[k] = u(r);
    return true;
  });
  return p;
}

function cloneInfo(b: Uint8Array): CloneInfoMsg {
  const c: CloneInfoMsg = {
    epoch: 0,
    imageId: '',
    pids: [],
    threads: 0,
    reaper: 0,
    rootIsInit: false,
    bytes: 0,
    totalNs: 0,
    phases: phases(new Uint8Array(0)),
    stub: 0,
  };
  fields(b, (f, w, r) => {
    if (f === 3 && (w === 0 || w === 2)) int32s(w, r, c.pids);
    else if (f === 2 && w === 2) c.imageId = str(r);
    else if (f === 9 && w === 2) c.phases = phases(r.bytes());
    else if (w !== 0) return false;
    else if (f === 1) c.epoch = u(r);
    else if (f === 4) c.threads = u(r);
    else if (f === 5) c.reaper = i32(r);
    else if (f === 6) c.rootIsInit = u(r) !== 0;
    else if (f === 7) c.bytes = u(r);
    else if (f === 8) c.totalNs = u(r);
    else if (f === 10) c.stub = u(r);
    else return false;
    return true;
  });
  return c;
}

function applyResult(b: Uint8Array): ApplyResultMsg {
  const a: ApplyResultMsg = {
    epoch: 0,
    bytes: 0,
    pages: 0,
    regionsMapped: 0,
    regionsUnmapped: 0,
    regionsReprotected: 0,
    processesAdded: 0,
    processesRemoved: 0,
    threadsAdded: 0,
    threadsRemoved: 0,
    pids: [],
    applyNs: 0,
    fdsOpened: 0,
    fdsClosed: 0,
  };
  const keys: (keyof ApplyResultMsg | null)[] = [
    'epoch',
    'bytes',
    'pages',
    'regionsMapped',
    'regionsUnmapped',
    'regionsReprotected',
    'processesAdded',
    'processesRemoved',
    'threadsAdded',
    'threadsRemoved',
    null,
    'applyNs',
    'fdsOpened',
    'fdsClosed',
  ];
  fields(b, (f, w, r) => {
    if (f === 11 && (w === 0 || w === 2)) {
      int32s(w, r, a.pids);
      return true;
    }
    const k = keys[f - 1];
    if (!k || w !== 0) return false;
    (a[k] as number) = u(r);
    return true;
  });
  return a;
}

export function decodeReply(b: Uint8Array): ReplyMsg {
  const m: ReplyMsg = { version: 0, id: 0, ok: false, errorCode: 0, error: '', errnoValue: 0, killed: [] };
  fields(b, (f, w, r) => {
    if (f === 7 && (w === 0 || w === 2)) int32s(w, r, m.killed);
    else if (f === 5 && w === 2) m.error = str(r);
    else if (f === 10 && w === 2) m.build = cloneInfo(r.bytes());
    else if (f === 11 && w === 2) m.apply = applyResult(r.bytes());
    else if (f === 12 && w === 2) m.resume = cloneInfo(r.bytes());
    else if (f === 13 && w === 2) m.check = cloneInfo(r.bytes());
    else if (f === 14 && w === 2) {
      const killed: number[] = [];
      fields(r.bytes(), (g, w2, r2) => {
        if (g !== 1 || (w2 !== 0 && w2 !== 2)) return false;
        int32s(w2, r2, killed);
        return true;
      });
      m.abort = { killed };
    } else if (w !== 0) return false;
    else if (f === 1) m.version = u(r);
    else if (f === 2) m.id = u(r);
    else if (f === 3) m.ok = u(r) !== 0;
    else if (f === 4) m.errorCode = u(r);
    else if (f === 6) m.errnoValue = i32(r);
    else return false;
    return true;
  });
  return m;
}

/** ErrorCode (proto/understudy/v1/errors.proto) by number: the names a restorer can send. */
export const ERROR_CODE_NAMES: Readonly<Record<number, string>> = {
  1: 'E_USAGE',
  6: 'E_FRAME',
  7: 'E_VERSION',
  8: 'E_NATIVE',
  10: 'E_IMAGE_CORRUPT',
  11: 'E_IMAGE_CHAIN',
  12: 'E_FILE_CHANGED',
  13: 'E_PID_TAKEN',
  14: 'E_KERNEL_MISMATCH',
  15: 'E_RESTORE',
  16: 'E_LOCK_HELD',
  17: 'E_NOT_AN_IMAGE',
  21: 'E_UNSUPPORTED',
  24: 'E_TIMEOUT',
  25: 'E_INTERNAL',
  26: 'E_BUSY',
};
