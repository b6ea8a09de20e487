// The restorer's frames as src/native/restorer-wire.ts writes and reads them
// (without the protobuf runtime) against the code generated from
// proto/understudy/v1/restore.proto: every field both ways, negative numbers,
// packed and unpacked repeated fields, unknown fields skipped.
import { describe, expect, it } from 'vitest';
import { understudy } from '../../src/gen/proto.js';
import { decodeReply, encodeRequest, ERROR_CODE_NAMES } from '../../src/native/restorer-wire.js';

const v1 = understudy.v1;

describe('restorer frames without the protobuf runtime', () => {
  it('requests decode with the generated code, every command and field', () => {
    const b = v1.RestorerRequest.decode(encodeRequest({ version: 1, id: 7, build: { imageDir: '/img/é', epoch: -1, tty: 1 } }));
    expect(b.version).toBe(1);
    expect(Number(b.id)).toBe(7);
    expect(b.cmd).toBe('build');
    expect(b.build?.imageDir).toBe('/img/é');
    expect(Number(b.build?.epoch)).toBe(-1);
    expect(b.build?.tty).toBe(v1.TtyMode.TTY_INHERIT);
    const b0 = v1.RestorerRequest.decode(encodeRequest({ version: 1, id: 8, build: { imageDir: '/i', epoch: 0, tty: 0 } }));
    expect(b0.cmd).toBe('build');
    expect(Number(b0.build?.epoch)).toBe(0);
    expect(v1.RestorerRequest.decode(encodeRequest({ version: 1, id: 2 ** 40, apply: { epoch: 300 } })).apply?.epoch).toBe(300);
    expect(v1.RestorerRequest.decode(encodeRequest({ version: 1, id: 1, resume: {} })).cmd).toBe('resume');
    expect(v1.RestorerRequest.decode(encodeRequest({ version: 1, id: 1, abort: {} })).cmd).toBe('abort');
    const c = v1.RestorerRequest.decode(encodeRequest({ version: 1, id: 1, check: { imageDir: '/x', epoch: 5 } }));
    expect(c.cmd).toBe('check');
    expect(c.check?.imageDir).toBe('/x');
    expect(Number(c.check?.epoch)).toBe(5);
  });

  it('replies encoded by the generated code decode to the same values', () => {
    const info = {
      epoch: 20,
      imageId: 'abc',
      pids: [1, 70000, 2 ** 22],
      threads: 9,
      reaper: -3,
      rootIsInit: true,
      bytes: 2 ** 40 + 5,
      totalNs: 123456789012,
      phases: { readNs: 1, verifyNs: 2, checkNs: 3, treeNs: 4, rebuildNs: 5, finishNs: 6, applyNs: 7 },
      stub: 0x7f0000000000,
    };
    const r = decodeReply(v1.RestorerReply.encode({ version: 1, id: 3, ok: true, build: info }).finish());
    expect(r).toMatchObject({ version: 1, id: 3, ok: true, build: info });
    expect(decodeReply(v1.RestorerReply.encode({ version: 1, id: 4, ok: true, resume: info }).finish()).resume).toEqual(info);
    expect(decodeReply(v1.RestorerReply.encode({ version: 1, id: 4, ok: true, check: info }).finish()).check).toEqual(info);
    const apply = {
      epoch: 4,
      bytes: 8192,
      pages: 2,
      regionsMapped: 1,
      regionsUnmapped: 2,
      regionsReprotected: 3,
      processesAdded: 4,
      processesRemoved: 5,
      threadsAdded: 6,
      threadsRemoved: 7,
      pids: [10, 11],
      applyNs: 99,
      fdsOpened: 8,
      fdsClosed: 9,
    };
    expect(decodeReply(v1.RestorerReply.encode({ version: 1, id: 5, ok: true, apply }).finish()).apply).toEqual(apply);
    expect(decodeReply(v1.RestorerReply.encode({ version: 1, id: 6, ok: true, abort: { killed: [5, 6] } }).finish()).abort).toEqual({ killed: [5, 6] });
    const e = decodeReply(
      v1.RestorerReply.encode({
        version: 1,
        id: 9,
        ok: false,
        errorCode: v1.ErrorCode.E_PID_TAKEN,
        error: 'pid 5 in use',
        errnoValue: 17,
        killed: [8, 9],
      }).finish(),
    );
    expect(e).toMatchObject({ ok: false, errorCode: v1.ErrorCode.E_PID_TAKEN, error: 'pid 5 in use', errnoValue: 17, killed: [8, 9] });
  });

  it('repeated fields unpacked (as a writer may send them) and unknown fields are read', () => {
    // field 7 (killed) as two plain varints, then an unknown field 99 (length-delimited), then id
    const buf = Uint8Array.from([0x38, 0x05, 0x38, 0x06, 0x9a, 0x06, 0x02, 0xaa, 0xbb, 0x10, 0x2a]);
    expect(decodeReply(buf)).toMatchObject({ killed: [5, 6], id: 42 });
    expect(() => decodeReply(Uint8Array.from([0x2a, 0x05, 0x41]))).toThrow(/runs past/);
  });

  it('error code numbers are those of errors.proto', () => {
    for (const [n, name] of Object.entries(ERROR_CODE_NAMES)) {
      expect((v1.ErrorCode as unknown as Record<string, number>)[name], name).toBe(Number(n));
    }
  });
});
