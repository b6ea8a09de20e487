// The node and edge kinds of the dependency graph, and the dirty set.

export type NodeKind = 'process' | 'thread' | 'region' | 'file' | 'pipe' | 'socket' | 'ipc' | 'anon' | 'endpoint';
export type EdgeKind = 'owns' | 'maps' | 'shares' | 'connects-to' | 'parent-of';

export interface GraphNode {
  id: string;
  kind: NodeKind;
  label: string;
  /** true for a process or endpoint outside the app (an external dependency's far end). */
  external?: boolean;
  attrs: Record<string, string | number | boolean>;
}

export interface GraphEdge {
  from: string;
  to: string;
  kind: EdgeKind;
  label?: string;
}

export interface GraphSnapshot {
  epoch: number;
  roots: number[];
  nodes: GraphNode[];
  edges: GraphEdge[];
  externalDependencies: ExternalDependency[];
}

/** A resource of the app shared with, or connected to, something outside it. */
export interface ExternalDependency {
  kind: 'pipe' | 'unix' | 'tcp' | 'udp' | 'shm' | 'remote';
  /** Graph id of the app's resource. */
  resource: string;
  app: { pid: number; fd?: number; comm: string };
  peer: { pid?: number; comm?: string; fd?: number; address?: string; resource?: string };
  /** One line a person reads, naming both ends precisely. */
  description: string;
}

export type RegionChange = 'mapped' | 'unmapped' | 'protected' | 'remapped' | 'discarded' | 'brk' | 'written';

export interface DirtyRegion {
  pid: number;
  start: number;
  end: number;
  change: RegionChange;
  /** For 'written': write faults counted in the kernel since the epoch. */
  writeFaults?: number;
}

export interface DirtyFile {
  resource: string;
  path: string;
  /** Written byte ranges [start, end), sorted and merged. */
  ranges: [number, number][];
  /** Last size set by ftruncate, if any. */
  truncatedTo?: number;
}

export interface DirtySet {
  since: number;
  epoch: number;
  processes: { pid: number; change: 'created' | 'exec' | 'exited' }[];
  threads: { pid: number; tid: number; change: 'created' | 'exited' }[];
  regions: DirtyRegion[];
  fds: { pid: number; fd: number; change: 'opened' | 'closed'; resource?: string }[];
  files: DirtyFile[];
  paths: { pid: number; op: string; path: string; path2?: string }[];
  sockets: { resource: string; change: string }[];
  ipc: { resource: string; pid: number; change: string }[];
}
