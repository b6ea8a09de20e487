// File locks across checkpoint -> kill -> restore: what the image records
// (each lock once, with its kind, range and owner), the restore taking them
// back (rs_locks checks them from inside), a restore that fails because a
// process outside the app holds a conflicting lock (naming file, range and
// holder, leaving nothing running), and the capture refusing a lease.
// fixtures.test.ts runs rs_locks too: full, after 20 deltas, on a second node.
import { existsSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { EngineClient } from '../../src/native/engine.js';
import { understudy } from '../../src/gen/proto.js';
import { processesOf, readEpochMeta } from '../../src/image/store.js';
import { showImage } from '../../src/image/show.js';
import { RestoreError, restore } from '../../src/native/restorer.js';
import { alive, epochDir, killPids, onCleanup, python, runCleanups, sleep, startAndDump, startInOwnNamespace, tmp, verdict, waitFor } from './helpers.js';

afterEach(runCleanups);

const K = understudy.v1.FileLock.Kind;

interface L {
  kind: string;
  write: boolean;
  start: number;
  end: number;
  pid: number;
}
const simple = (l: understudy.v1.IFileLock): L => ({
  kind: K[l.kind ?? 0]!,
  write: !!l.write,
  start: Number(l.start ?? 0),
  end: Number(l.end ?? 0),
  pid: l.pid ?? 0,
});

/** dev:ino of a file as the kernel prints it in a "lock:" line (major:minor in hex). */
function lockDev(path: string): string {
  const st = statSync(path);
  const hex = (n: number): string => n.toString(16).padStart(2, '0');
  return `${hex(Math.floor(st.dev / 256) & 0xfff)}:${hex(st.dev & 0xff)}:${st.ino}`;
}

describe('file locks (rs_locks)', () => {
  it('epoch 0 + 3 deltas: each lock recorded once with kind, range and owner; image show lists them; restore -> PASS', async () => {
    const { ctl, img, fx, d } = await startAndDump('rs_locks', 'locks', 3);
    expect(d.pids).toHaveLength(2);
    const child = d.pids.find((p) => p !== fx.pid)!;
    const procs = processesOf(readEpochMeta(epochDir(img, 3)));
    const par = procs.find((p) => p.pid === fx.pid)!;
    const kid = procs.find((p) => p.pid === child)!;
    const a = join(ctl, 'lk-a');
    const ino = (p: string): number => statSync(p).ino;
    const locksOf = (p: typeof par, path: string): { fd: number; locks: L[] }[] =>
      p.fds.filter((f) => f.path === path && (f.locks ?? []).length).map((f) => ({ fd: f.fd!, locks: (f.locks ?? []).map(simple) }));

    // lk-a in the parent: fd 3 and its dup fd 7 hold the POSIX locks (recorded
    // on fd 3 only), fd 8 (its own description) the OFD lock
    expect(par.fds.filter((f) => f.path === a).map((f) => f.fd)).toEqual([3, 7, 8]);
    expect(locksOf(par, a)).toEqual([
      {
        fd: 3,
        locks: [
          { kind: 'POSIX', write: true, start: 0, end: 99, pid: fx.pid },
          { kind: 'POSIX', write: false, start: 200, end: 299, pid: fx.pid },
        ],
      },
      { fd: 8, locks: [{ kind: 'OFD', write: true, start: 400, end: 449, pid: -1 }] },
    ]);
    // the child's POSIX locks on the description it inherited (fd 3, a dup of the parent's)
    expect(locksOf(kid, a)).toEqual([
      {
        fd: 3,
        locks: [
          { kind: 'POSIX', write: false, start: 250, end: 349, pid: child },
          { kind: 'POSIX', write: true, start: 600, end: 609, pid: child },
        ],
      },
    ]);
    // lk-b: one flock on a description both hold, recorded once (the parent's fd)
    expect(locksOf(par, join(ctl, 'lk-b'))).toEqual([{ fd: 4, locks: [{ kind: 'FLOCK', write: true, start: 0, end: -1, pid: fx.pid }] }]);
    expect(locksOf(kid, join(ctl, 'lk-b'))).toEqual([]);
    // lk-c: a shared flock on each of two descriptions
    expect(locksOf(par, join(ctl, 'lk-c'))).toEqual([{ fd: 5, locks: [{ kind: 'FLOCK', write: false, start: 0, end: -1, pid: fx.pid }] }]);
    expect(locksOf(kid, join(ctl, 'lk-c'))).toEqual([{ fd: 10, locks: [{ kind: 'FLOCK', write: false, start: 0, end: -1, pid: child }] }]);
    // lk-d: the child's flock; the parent's thread blocked in flock(LOCK_EX) holds nothing yet
    expect(locksOf(kid, join(ctl, 'lk-d'))).toEqual([{ fd: 11, locks: [{ kind: 'FLOCK', write: true, start: 0, end: -1, pid: child }] }]);
    expect(locksOf(par, join(ctl, 'lk-d'))).toEqual([]);
    // a directory's flock
    expect(locksOf(par, join(ctl, 'lk-dir'))).toEqual([{ fd: 9, locks: [{ kind: 'FLOCK', write: true, start: 0, end: -1, pid: fx.pid }] }]);
    expect(par.fds.find((f) => f.fd === 9)!.kind).toBe(understudy.v1.Fd.Kind.DIRECTORY);
    // the inode and device of each lock are the file's
    const l0 = par.fds.find((f) => f.fd === 3)!.locks![0]!;
    expect(Number(l0.ino)).toBe(ino(a));
    expect(Number(l0.dev)).toBe(statSync(a).dev);
    // the waiter threads are inside fcntl (72) and flock (73), to be restarted
    for (const nr of [72, 73])
      expect(
        par.threads.some((t) => t.inSyscall && Number(t.syscallNr) === nr && Number(t.restartCode) === -512),
        `a thread in syscall ${nr}`,
      ).toBe(true);

    const shown = showImage(img, { epoch: 3, json: false });
    const dev = statSync(a).dev;
    const devText = `${Math.floor(dev / 256) & 0xfff}:${dev & 0xff}`;
    expect(shown).toContain(
      `    fd 3 REGULAR ${a} flags 0100002 pos 0\n      lock POSIX write bytes 0-99 pid ${fx.pid} dev ${devText} ino ${ino(a)}\n` +
        `      lock POSIX read bytes 200-299 pid ${fx.pid} dev ${devText} ino ${ino(a)}\n`,
    );
    expect(shown).toContain(`      lock OFD write bytes 400-449 pid -1 dev ${devText} ino ${ino(a)}`);
    expect(shown).toContain(`      lock FLOCK LOCK_EX whole file pid ${fx.pid}`);
    expect(shown.match(/ lock /g)).toHaveLength(10);

    const r = await restore({ imageDir: img });
    onCleanup(() => killPids([r.reaper, ...r.pids]));
    // the kernel shows the same locks on the same fds again
    const fdinfoLocks = (pid: number, fd: number): string[] =>
      [...readFileSync(`/proc/${pid}/fdinfo/${fd}`, 'utf8').matchAll(/^lock:\s+\d+: (.*)$/gm)].map((m) => m[1]!.replace(/\s+/g, ' '));
    const devHex = `${(Math.floor(dev / 256) & 0xfff).toString(16).padStart(2, '0')}:${(dev & 0xff).toString(16).padStart(2, '0')}`;
    expect(fdinfoLocks(fx.pid, 3)).toEqual([
      `POSIX ADVISORY WRITE ${fx.pid} ${devHex}:${ino(a)} 0 99`,
      `POSIX ADVISORY READ ${fx.pid} ${devHex}:${ino(a)} 200 299`,
    ]);
    expect(fdinfoLocks(fx.pid, 7)).toEqual(fdinfoLocks(fx.pid, 3));
    expect(fdinfoLocks(fx.pid, 8)).toEqual([`OFDLCK ADVISORY WRITE -1 ${devHex}:${ino(a)} 400 449`]);
    expect(fdinfoLocks(fx.pid, 6)).toEqual([]);
    expect(fdinfoLocks(child, 3)).toEqual([
      `POSIX ADVISORY READ ${child} ${devHex}:${ino(a)} 250 349`,
      `POSIX ADVISORY WRITE ${child} ${devHex}:${ino(a)} 600 609`,
    ]);
    expect(fdinfoLocks(child, 4)).toEqual([`FLOCK ADVISORY WRITE ${fx.pid} ${devHex}:${ino(join(ctl, 'lk-b'))} 0 EOF`]);
    expect(fdinfoLocks(fx.pid, 9)).toEqual([`FLOCK ADVISORY WRITE ${fx.pid} ${devHex}:${ino(join(ctl, 'lk-dir'))} 0 EOF`]);
    expect(fdinfoLocks(child, 10)).toEqual([`FLOCK ADVISORY READ ${child} ${devHex}:${ino(join(ctl, 'lk-c'))} 0 EOF`]);
    expect(fdinfoLocks(child, 11)).toEqual([`FLOCK ADVISORY WRITE ${child} ${devHex}:${ino(join(ctl, 'lk-d'))} 0 EOF`]);
    expect(await verdict(ctl), 'rs_locks verdict').toBe('PASS');
    await waitFor('the restored app to exit', () => r.pids.every((p) => !alive(p)));
  });

  // what python3 does outside the app, once the app is gone, and what the restore must say
  const cases = [
    {
      name: "a POSIX lock inside the app's range, found before anything is created",
      take: 'f=open("lk-a","r+")\nfcntl.lockf(f, fcntl.LOCK_EX|fcntl.LOCK_NB, 10, 50)\n',
      env: {},
      want: (ctl: string, pid: number, holder: number): string =>
        `pid ${pid} fd 3 (${join(ctl, 'lk-a')}): cannot take back its POSIX write lock on bytes 0-99, ` +
        `held by pid ${holder} (python3) fd 3 outside the app (its POSIX WRITE lock on bytes 50-59)`,
      created: false,
    },
    {
      name: "a shared flock on the file of the app's exclusive one, found before anything is created",
      take: 'f=open("lk-b","r")\nfcntl.flock(f, fcntl.LOCK_SH|fcntl.LOCK_NB)\n',
      env: {},
      want: (ctl: string, pid: number, holder: number): string =>
        `pid ${pid} fd 4 (${join(ctl, 'lk-b')}): cannot take back its flock write lock on the whole file, ` +
        `held by pid ${holder} (python3) fd 3 outside the app (its flock LOCK_SH)`,
      created: false,
    },
    {
      name: 'a POSIX lock taken after the checks (the check skipped): the restore fails when it takes the lock and kills what it created',
      take: 'f=open("lk-a","r+")\nfcntl.lockf(f, fcntl.LOCK_EX|fcntl.LOCK_NB, 10, 50)\n',
      env: { UNDERSTUDY_RESTORE_NO_LOCK_PRECHECK: '1' },
      want: (ctl: string, pid: number, holder: number): string =>
        `pid ${pid} fd 3 (${join(ctl, 'lk-a')}): cannot take back its POSIX write lock on bytes 0-99, ` +
        `held by pid ${holder} (python3) fd 3 outside the app (its POSIX WRITE lock on bytes 50-59)`,
      created: true,
    },
  ];
  for (const c of cases) {
    it(`held outside the app: ${c.name}; E_LOCK_HELD naming file, range and holder, nothing left running, then restorable`, async () => {
      const { ctl, img, fx, d } = await startAndDump('rs_locks', 'locks-held', 0);
      const holder = python('import fcntl,time\n' + c.take + 'open("held","w").close()\ntime.sleep(1000)\n', ctl);
      await waitFor('the outside lock', () => existsSync(join(ctl, 'held')));
      let err: RestoreError | undefined;
      const saved = { ...process.env };
      Object.assign(process.env, c.env);
      try {
        const r = await restore({ imageDir: img });
        killPids([r.reaper, ...r.pids]);
      } catch (e) {
        if (!(e instanceof RestoreError)) throw e;
        err = e;
      } finally {
        process.env = saved;
      }
      expect(err, 'the restore failed').toBeDefined();
      expect(err!.code).toBe('E_LOCK_HELD');
      if (c.created) {
        expect(err!.message).toBe(`${c.want(ctl, fx.pid, holder)}; the processes it had created (${err!.killed.join(' ')}) were killed`);
        // everything it had created (the reaper and both processes) is killed
        expect(err!.killed).toHaveLength(3);
        expect([...err!.killed.slice(1)].sort()).toEqual([...d.pids].sort());
        await waitFor('everything created to be gone', () => err!.killed.every((p) => !alive(p)), 5000);
      } else {
        expect(err!.message).toBe(c.want(ctl, fx.pid, holder));
        expect(err!.killed).toEqual([]); // refused before creating anything
      }
      for (const p of d.pids) expect(alive(p)).toBe(false);
      expect(alive(holder), 'the outside holder is untouched').toBe(true);
      // it still holds its lock, and no process of the app holds any
      const locks = readFileSync('/proc/locks', 'utf8');
      expect(locks).toMatch(new RegExp(`^\\d+: (POSIX|FLOCK)\\s+ADVISORY\\s+(WRITE|READ)\\s+${holder} `, 'm'));
      expect(locks).not.toMatch(new RegExp(`ADVISORY\\s+(WRITE|READ)\\s+(${d.pids.join('|')}) `));
      // once the holder is gone the same image restores
      killPids([holder]);
      await waitFor('the holder to exit', () => !alive(holder));
      await waitFor('the pids to be free', () => d.pids.every((p) => !existsSync(`/proc/${p}`)));
      const r = await restore({ imageDir: img });
      onCleanup(() => killPids([r.reaper, ...r.pids]));
      expect(await verdict(ctl)).toBe('PASS');
    });
  }
});

describe('restoring beside the original on the same node', () => {
  it('an app with its own PID namespace restored while the original runs: E_LOCK_HELD naming the original, nothing created', async () => {
    // (its pids inside are free anywhere, so only its locks stop it here)
    const ctl = tmp('locks-beside');
    const img = join(tmp('locks-beside-img'), 'image');
    const hostPid = await startInOwnNamespace('rs_locks', ctl);
    const engine = EngineClient.start();
    onCleanup(() => engine.kill());
    await engine.attach(hostPid, { trackDirty: true, includeChildren: true });
    await engine.checkpoint({ imageDir: img });
    await engine.detach();
    await engine.close();
    const err = await restore({ imageDir: img }).then(
      (r) => {
        killPids([r.reaper, ...r.pids]);
        throw new Error('restored beside the original');
      },
      (e: unknown) => e as RestoreError,
    );
    expect(err).toBeInstanceOf(RestoreError);
    expect(err.code).toBe('E_LOCK_HELD');
    // pid 1 is the app's own view; the holder is the original, by its host pid
    expect(err.message).toBe(
      `pid 1 fd 3 (${join(ctl, 'lk-a')}): cannot take back its POSIX write lock on bytes 0-99, ` +
        `held by pid ${hostPid} (rs_locks) fd 3 outside the app (its POSIX WRITE lock on bytes 0-99)`,
    );
    expect(err.killed).toEqual([]);
    expect(alive(hostPid)).toBe(true);
    // the original is untouched and still holds its locks
    expect(readFileSync(`/proc/${hostPid}/fdinfo/3`, 'utf8')).toMatch(new RegExp(`POSIX\\s+ADVISORY\\s+WRITE ${hostPid} \\S+ 0 99`));
  });
});

describe('refused at capture', () => {
  const leaseCode = (when: 'start' | 'later'): string =>
    'import fcntl,os,time\n' +
    'os.closerange(3, 65536)\n' +
    'fd=os.open("leased", os.O_RDONLY|os.O_CREAT, 0o644)\n' +
    (when === 'later' ? 'open("ready","w").close()\nwhile not os.path.exists("take"): time.sleep(0.005)\n' : '') +
    'fcntl.fcntl(fd, 1024, fcntl.F_RDLCK)\n' + // F_SETLEASE
    'open("leased-ok","w").close()\n' +
    'time.sleep(1000)\n';

  it('a lease (F_SETLEASE) at attach: E_UNSUPPORTED naming pid, fd and path; the app untouched', async () => {
    const ctl = tmp('lease');
    const pid = python(leaseCode('start'), ctl);
    await waitFor('the lease', () => existsSync(join(ctl, 'leased-ok')));
    const engine = EngineClient.start();
    onCleanup(() => engine.kill());
    try {
      await expect(engine.attach(pid, { trackDirty: true })).rejects.toMatchObject({
        code: 'E_UNSUPPORTED',
        message: expect.stringMatching(
          new RegExp(`^pid ${pid} fd 3 \\(${join(ctl, 'leased')}\\) holds a lease \\(fcntl F_SETLEASE\\) \\("lock:\\s+1: LEASE\\s+ACTIVE\\s+READ ${pid} `),
        ),
      });
    } finally {
      await engine.close();
    }
    expect(readFileSync(`/proc/${pid}/status`, 'utf8')).toMatch(/TracerPid:\s+0\n/);
    expect(alive(pid)).toBe(true);
  });

  it('a POSIX lock in a file table two processes share (clone CLONE_FILES): its owner cannot be told, refused naming both', async () => {
    const ctl = tmp('clone-files');
    // raw clone(CLONE_FILES|SIGCHLD) without CLONE_VM: a process of its own sharing python's fd table
    const pid = python(
      'import ctypes,fcntl,os,time\n' +
        'os.closerange(3, 65536)\n' +
        'libc=ctypes.CDLL(None, use_errno=True)\n' +
        'f=open("data","w+")\n' +
        'kid=libc.syscall(56, 0x400|17, 0, 0, 0, 0)\n' +
        'if kid==0:\n time.sleep(1000)\n os._exit(0)\n' +
        'fcntl.lockf(f, fcntl.LOCK_EX, 10, 0)\n' +
        'open("ready","w").write(str(kid))\n' +
        'time.sleep(1000)\n',
      ctl,
    );
    await waitFor('python ready', () => existsSync(join(ctl, 'ready')) && readFileSync(join(ctl, 'ready'), 'utf8').length > 0);
    const kid = Number(readFileSync(join(ctl, 'ready'), 'utf8'));
    onCleanup(() => killPids([kid]));
    // the kernel shows the lock in both processes' fdinfo, with the taker's pid
    expect(readFileSync(`/proc/${kid}/fdinfo/3`, 'utf8')).toMatch(new RegExp(`lock:\\s+1: POSIX\\s+ADVISORY\\s+WRITE ${pid} \\S+ 0 9\\n`));
    const engine = EngineClient.start();
    onCleanup(() => engine.kill());
    try {
      await expect(engine.attach(pid, { trackDirty: true, includeChildren: true })).rejects.toMatchObject({
        code: 'E_UNSUPPORTED',
        message:
          `pid ${kid} fd 3 (${join(ctl, 'data')}) shows a POSIX lock taken by pid ${pid} ` +
          `("lock: 1: POSIX ADVISORY WRITE ${pid} ${lockDev(join(ctl, 'data'))} 0 9"): its file table is shared with another process ` +
          "(clone CLONE_FILES), the lock's owner cannot be determined, refusing to checkpoint",
      });
    } finally {
      await engine.close();
    }
    expect(readFileSync(`/proc/${pid}/status`, 'utf8')).toMatch(/TracerPid:\s+0\n/);
    expect(alive(pid) && alive(kid)).toBe(true);
  });

  it('a lease taken after attach: the next checkpoint is refused, nothing written, the app keeps running', async () => {
    const ctl = tmp('lease-later');
    const img = join(tmp('lease-later-img'), 'image');
    const pid = python(leaseCode('later'), ctl);
    await waitFor('python ready', () => existsSync(join(ctl, 'ready')));
    const engine = EngineClient.start();
    onCleanup(() => engine.kill());
    try {
      await engine.attach(pid, { trackDirty: true });
      expect((await engine.checkpoint({ imageDir: img })).epoch).toBe(0);
      await import('node:fs').then((fs) => fs.writeFileSync(join(ctl, 'take'), ''));
      await waitFor('the lease', () => existsSync(join(ctl, 'leased-ok')));
      await expect(engine.checkpoint({ imageDir: img })).rejects.toMatchObject({
        code: 'E_UNSUPPORTED',
        message: expect.stringContaining(`pid ${pid} fd 3 (${join(ctl, 'leased')}) holds a lease (fcntl F_SETLEASE)`),
      });
      expect(existsSync(epochDir(img, 1))).toBe(false);
    } finally {
      await engine.close();
    }
    await sleep(50);
    expect(readFileSync(`/proc/${pid}/status`, 'utf8')).toMatch(/TracerPid:\s+0\n/);
    expect(alive(pid)).toBe(true);
  });
});
