// Node-to-node messages over ZeroMQ: the seed of the replication transport.
// A message is one ZeroMQ multipart message: a NodeMessage
// (proto/understudy/v1/transport.proto) first, then raw byte payloads (page
// data never goes through a protobuf field or JSON). A receiver refuses a
// message of another version or one whose first part does not decode, with
// an error that says which and from where; the channel stays usable after it.
import * as zmq from 'zeromq';
import { understudy } from '../gen/proto.js';
import { requireVersion } from '../native/frames.js';
import { UnderstudyError } from '../util/errors.js';
import { logger } from '../util/log.js';

const log = logger('transport');

export const TRANSPORT_VERSION = 1;

export type NodeMessage = understudy.v1.NodeMessage;
/** What a caller fills in: version, sender and sequence number are the channel's. */
export type Outgoing = Omit<understudy.v1.INodeMessage, 'version' | 'fromNode' | 'seq'>;

export interface Received {
  message: NodeMessage;
  /** The raw parts after the message, as sent. */
  payloads: Buffer[];
}

/** The parts of one ZeroMQ message carrying `message` and `payloads`. */
export function encodeMessage(message: understudy.v1.INodeMessage, payloads: readonly Uint8Array[] = []): Buffer[] {
  const head = understudy.v1.NodeMessage.encode({ ...message, version: message.version ?? TRANSPORT_VERSION }).finish();
  return [Buffer.from(head), ...payloads.map((p) => Buffer.from(p.buffer, p.byteOffset, p.byteLength))];
}

/**
 * Decodes the parts of one ZeroMQ message; `from` names the peer in errors.
 * E_FRAME: no parts, a first part that is not a NodeMessage, or one without a
 * body. E_VERSION: a version other than TRANSPORT_VERSION.
 */
export function decodeMessage(parts: readonly Buffer[], from: string): Received {
  const [head, ...payloads] = parts;
  if (head === undefined) throw new UnderstudyError('E_FRAME', `message from ${from}: no parts`);
  let message: NodeMessage;
  try {
    message = understudy.v1.NodeMessage.decode(head);
  } catch (e) {
    throw new UnderstudyError('E_FRAME', `message from ${from}: its first part (${head.length} bytes) is not a NodeMessage (${(e as Error).message})`, {
      cause: e,
    });
  }
  requireVersion(`message from ${from}`, message.version, TRANSPORT_VERSION);
  if (message.body === undefined) {
    throw new UnderstudyError('E_FRAME', `message from ${from}: version ${message.version} but no body (hello, epochAck)`);
  }
  return { message, payloads };
}

/**
 * One end of a node-to-node link: a ZeroMQ DEALER socket, bound or connected,
 * that sends and receives NodeMessages both ways.
 */
export class Channel {
  private seq = 0;

  private constructor(
    private readonly socket: zmq.Dealer,
    /** This node's id, sent in every message. */
    readonly nodeId: string,
    /** The bound or connected endpoint (the port resolved when bound to `:*`). */
    readonly endpoint: string,
  ) {}

  /** Listens on `endpoint` (e.g. `tcp://127.0.0.1:*`). */
  static async bind(nodeId: string, endpoint: string): Promise<Channel> {
    const socket = new zmq.Dealer({ linger: 0 });
    try {
      await socket.bind(endpoint);
    } catch (e) {
      socket.close();
      throw new UnderstudyError('E_NATIVE', `cannot listen on ${endpoint}: ${(e as Error).message}`, { cause: e });
    }
    const ch = new Channel(socket, nodeId, socket.lastEndpoint ?? endpoint);
    log.debug({ nodeId, endpoint: ch.endpoint }, 'channel bound');
    return ch;
  }

  /** Connects to a peer's endpoint; ZeroMQ reconnects by itself while the channel lives. */
  static connect(nodeId: string, endpoint: string): Channel {
    const socket = new zmq.Dealer({ linger: 0 });
    try {
      socket.connect(endpoint);
    } catch (e) {
      socket.close();
      throw new UnderstudyError('E_USAGE', `cannot connect to ${endpoint}: ${(e as Error).message}`, { cause: e });
    }
    log.debug({ nodeId, endpoint }, 'channel connected');
    return new Channel(socket, nodeId, endpoint);
  }

  /** Sends one message (this channel's version, node id and next sequence number) with raw payloads after it. */
  async send(message: Outgoing, payloads: readonly Uint8Array[] = []): Promise<number> {
    if (bodyOf(message) === undefined) throw new UnderstudyError('E_USAGE', 'a node message needs a body (hello, epochAck)');
    const seq = ++this.seq;
    const parts = encodeMessage({ ...message, version: TRANSPORT_VERSION, fromNode: this.nodeId, seq }, payloads);
    await this.socket.send(parts);
    log.debug({ seq, body: bodyOf(message), payloads: payloads.length, bytes: parts.reduce((n, p) => n + p.length, 0) }, 'sent');
    return seq;
  }

  /**
   * The next message. Rejects with E_TIMEOUT after `timeoutMs` (default: wait
   * for ever), E_FRAME or E_VERSION for a message it refuses (which is then
   * dropped: the next receive gets the message after it).
   */
  async receive(opts: { timeoutMs?: number } = {}): Promise<Received> {
    this.socket.receiveTimeout = opts.timeoutMs ?? -1;
    let parts: Buffer[];
    try {
      parts = await this.socket.receive();
    } catch (e) {
      if ((e as { code?: string }).code === 'EAGAIN') {
        throw new UnderstudyError('E_TIMEOUT', `no message on ${this.endpoint} within ${opts.timeoutMs} ms`);
      }
      throw e;
    }
    try {
      const r = decodeMessage(parts, `a peer of ${this.endpoint}`);
      log.debug({ from: r.message.fromNode, seq: Number(r.message.seq), body: r.message.body, payloads: r.payloads.length }, 'received');
      return r;
    } catch (e) {
      log.debug({ err: e, endpoint: this.endpoint }, 'message refused');
      throw e;
    }
  }

  close(): void {
    this.socket.close();
  }
}

function bodyOf(m: Outgoing): string | undefined {
  if (m.hello) return 'hello';
  if (m.epochAck) return 'epochAck';
  return undefined;
}
