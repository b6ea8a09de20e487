import { execa } from 'execa';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { onCleanup, tmpDir } from '../helpers/cleanup.js';
import { TestCluster } from '../helpers/nodes.js';

// The simulated nodes that multi-node tests stand on: separate network
// namespaces that reach each other only through their links, each with its own
// view of the same data folder path.
describe('test cluster of network namespaces', () => {
  const scratch = tmpDir('nodes');
  const cluster = new TestCluster(join(scratch, 'app-data'), scratch);
  // (run after the file's last test by test/helpers/setup.ts, before the folder goes)
  onCleanup(() => cluster.destroy());

  it('gives each node its own network and its own data folder, and tears down', async () => {
    const a = await cluster.addNode();
    const b = await cluster.addNode();
    // Each node writes the same path; each sees only its own file.
    await cluster.exec(a, 'sh', ['-c', `echo from-a > ${cluster.dataDir}/who`]);
    await cluster.exec(b, 'sh', ['-c', `echo from-b > ${cluster.dataDir}/who`]);
    expect(readFileSync(join(a.dataRoot, 'who'), 'utf8')).toBe('from-a\n');
    expect(readFileSync(join(b.dataRoot, 'who'), 'utf8')).toBe('from-b\n');
    const seen = await cluster.exec(b, 'cat', [`${cluster.dataDir}/who`]);
    expect(seen.stdout).toBe('from-b');
    // The host's own folder is untouched.
    expect(existsSync(join(cluster.dataDir, 'who'))).toBe(false);

    // Node a's address is configured inside a, not inside b.
    const addrA = await cluster.exec(a, 'ip', ['-4', '-o', 'addr', 'show', 'dev', 'eth0']);
    expect(addrA.stdout).toContain(a.address);
    const addrB = await cluster.exec(b, 'ip', ['-4', '-o', 'addr', 'show', 'dev', 'eth0']);
    expect(addrB.stdout).not.toContain(a.address);

    // The host reaches node a over its link (UDP on a's address).
    writeFileSync(
      join(scratch, 'recv.py'),
      [
        'import socket,sys',
        's=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)',
        `s.bind(("${a.address}",47001))`,
        'print("ready",flush=True)',
        's.settimeout(10)',
        'print(s.recv(100).decode(),flush=True)',
      ].join('\n'),
    );
    const recv = cluster.exec(a, 'python3', [join(scratch, 'recv.py')]);
    await new Promise<void>((res) => recv.stdout!.once('data', () => res()));
    await execa('python3', ['-c', `import socket;socket.socket(socket.AF_INET,socket.SOCK_DGRAM).sendto(b"hello-a",("${a.address}",47001))`]);
    const got = await recv;
    expect(got.stdout).toBe('ready\nhello-a');

    const names = [a.name, b.name];
    await cluster.destroy();
    const list = await execa('ip', ['netns', 'list']);
    for (const n of names) expect(list.stdout).not.toContain(n);
  });
});
