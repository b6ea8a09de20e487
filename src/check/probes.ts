// The kernel features Understudy relies on, in the order `understudy check`
// reports them. Each is tested for real by the native prober
// (native/check/, build/native/understudy-check); this table only says what a
// missing feature means to an operator.

export interface ProbeSpec {
  /** Stable id shared with the native prober. */
  id: string;
  /** What is tested, as a person reads it. */
  title: string;
  /** What stops working without it. */
  breaks: string;
  /** Required features make `check` exit non-zero when missing. */
  required: boolean;
}

export const PROBES: readonly ProbeSpec[] = [
  { id: 'bpf_syscall', title: 'bpf() system call', breaks: 'all eBPF tracing (trace, graph, dirty sets)', required: true },
  { id: 'btf', title: 'kernel BTF (/sys/kernel/btf/vmlinux)', breaks: 'CO-RE eBPF programs cannot be loaded', required: true },
  { id: 'tracepoint_attach', title: 'attach an eBPF program to a tracepoint', breaks: 'the tracer sees no events', required: true },
  { id: 'ringbuf', title: 'BPF ring buffer', breaks: 'events cannot be streamed from the kernel to the agent', required: true },
  {
    id: 'uffd_wp_async',
    title: 'userfaultfd write-protect, async mode',
    breaks: 'exact dirty-page tracking; only full checkpoints would be possible',
    required: true,
  },
  { id: 'pagemap_scan', title: 'PAGEMAP_SCAN ioctl (kernel 6.7+)', breaks: 'incremental checkpoints (finding dirty pages)', required: true },
  { id: 'ptrace_seize', title: 'ptrace seize + interrupt of a non-child', breaks: 'the checkpoint barrier (stopping the app)', required: true },
  { id: 'syscall_inject', title: 'syscall injection with ptrace', breaks: 'injecting userfaultfd and restoring memory layout', required: true },
  { id: 'pidfd_getfd', title: 'pidfd_open + pidfd_getfd', breaks: "taking the app's userfaultfd and fds for capture", required: true },
  {
    id: 'clone3_set_tid',
    title: 'clone3 with set_tid in a new PID namespace',
    breaks: 'restoring processes with their original PIDs',
    required: true,
  },
  { id: 'process_vm', title: 'process_vm_readv / process_vm_writev', breaks: 'reading and patching app memory', required: true },
  { id: 'tcp_repair', title: 'TCP_REPAIR', breaks: 'checkpointing and restoring TCP connections', required: true },
  {
    id: 'netns_veth',
    title: 'network namespaces + veth',
    breaks: 'per-app network isolation and multi-node tests on one host',
    required: true,
  },
  {
    id: 'nfqueue_hold',
    title: 'holding packets in NFQUEUE (iptables) until released',
    breaks: "strict mode: the app's output cannot be held until its epoch commits",
    required: true,
  },
  { id: 'vdso_mremap', title: 'mremap of the vDSO', breaks: 'restored code would call into a vDSO at the wrong address', required: true },
];
