// Simulated nodes for multi-node tests: each node is a network namespace with
// a veth link to the host side, and its own view of a data folder (a bind
// mount inside a private mount namespace, set up by nodeExec). Everything is
// torn down by destroy(), which tests call in afterEach/afterAll even when a
// test fails.
import { execa, type Options, type ResultPromise } from 'execa';
import { mkdirSync, readlinkSync, rmSync, symlinkSync, unlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export interface TestNode {
  name: string;
  /** Address of the node on its veth link (10.<c>.<n>.2, c claimed by the cluster). */
  address: string;
  /** Host-side address of the link (10.<c>.<n>.1). */
  hostAddress: string;
  /** The node's private backing folder for `dataDir`. */
  dataRoot: string;
}

export class TestCluster {
  readonly nodes: TestNode[] = [];
  private readonly prefix: string;
  /** Second octet of this cluster's addresses, claimed so that concurrent test files do not collide. */
  private readonly octet: number;
  private released = false;

  /**
   * @param dataDir the path every node sees as its own data folder
   * @param scratch where the nodes' private data folders live
   */
  constructor(
    readonly dataDir: string,
    private readonly scratch: string,
  ) {
    this.prefix = `us${process.pid % 100000}c${++clusters}`;
    this.octet = claimOctet();
  }

  async addNode(): Promise<TestNode> {
    const n = this.nodes.length + 1;
    if (n > 250) throw new Error('too many test nodes');
    const name = `${this.prefix}n${n}`;
    const host = `${this.prefix}h${n}`;
    const dataRoot = join(this.scratch, name);
    mkdirSync(dataRoot, { recursive: true });
    const node: TestNode = { name, address: `10.${this.octet}.${n}.2`, hostAddress: `10.${this.octet}.${n}.1`, dataRoot };
    this.nodes.push(node);
    await execa('ip', ['netns', 'add', name]);
    await execa('ip', ['link', 'add', host, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', name]);
    await execa('ip', ['addr', 'add', `${node.hostAddress}/24`, 'dev', host]);
    await execa('ip', ['link', 'set', host, 'up']);
    await execa('ip', ['-n', name, 'addr', 'add', `${node.address}/24`, 'dev', 'eth0']);
    await execa('ip', ['-n', name, 'link', 'set', 'eth0', 'up']);
    await execa('ip', ['-n', name, 'link', 'set', 'lo', 'up']);
    return node;
  }

  /**
   * The argv that runs `argv` inside the node: its network namespace, and a
   * private mount namespace where `dataDir` is the node's own folder.
   */
  wrap(node: TestNode, argv: string[]): string[] {
    mkdirSync(this.dataDir, { recursive: true });
    // biome-ignore format: one line per command of the chain
    return [
      'ip', 'netns', 'exec', node.name,
      'unshare', '--mount', '--propagation', 'private', '--',
      'sh', '-c', 'mount --bind "$1" "$2" && shift 2 && exec "$@"', 'us-node',
      node.dataRoot, this.dataDir, ...argv,
    ];
  }

  /** Runs a command inside the node (see wrap). */
  exec(node: TestNode, cmd: string, args: string[], opts: Options = {}): ResultPromise {
    const argv = this.wrap(node, [cmd, ...args]);
    return execa(argv[0]!, argv.slice(1), opts);
  }

  async destroy(): Promise<void> {
    for (const node of this.nodes.splice(0)) {
      await execa('ip', ['netns', 'pids', node.name], { reject: false }).then(async (r) => {
        for (const pid of String(r.stdout).split('\n').filter(Boolean)) {
          try {
            process.kill(Number(pid), 'SIGKILL');
          } catch {
            // already gone
          }
        }
      });
      await execa('ip', ['netns', 'del', node.name], { reject: false });
      rmSync(node.dataRoot, { recursive: true, force: true });
    }
    if (!this.released) releaseOctet(this.octet);
    this.released = true;
  }
}

let clusters = 0;

// Test files run in parallel (vitest.config.ts): each cluster claims a second
// octet for its 10.<octet>.<n>.0/24 links by creating a symlink named after
// it whose target is the owner's pid (atomic; a claim whose owner is gone is
// taken over), so two clusters never route the same addresses.
const CLAIMS = join(tmpdir(), 'us-test-octets');

function claimOctet(): number {
  mkdirSync(CLAIMS, { recursive: true });
  for (let i = 0; i < 150; i++) {
    const octet = 100 + ((process.pid + i) % 150);
    const claim = join(CLAIMS, String(octet));
    try {
      symlinkSync(String(process.pid), claim);
      return octet;
    } catch {
      let owner = 0;
      try {
        owner = Number(readlinkSync(claim));
        process.kill(owner, 0);
        continue; // held by a live process (this one included: another cluster of the same file)
      } catch {
        // the owner is gone: take the claim over, unless another process is doing so right now
      }
      try {
        if (Number(readlinkSync(claim)) === owner) {
          unlinkSync(claim);
          symlinkSync(String(process.pid), claim);
          return octet;
        }
      } catch {
        // another process took it over first: try the next
      }
    }
  }
  throw new Error(`no free 10.<octet>.0.0/16 for a test cluster: ${CLAIMS} holds 150 live claims`);
}

function releaseOctet(octet: number): void {
  const claim = join(CLAIMS, String(octet));
  try {
    if (Number(readlinkSync(claim)) === process.pid) unlinkSync(claim);
  } catch {
    // not ours, or already gone
  }
}
