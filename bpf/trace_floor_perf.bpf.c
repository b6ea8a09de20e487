// SPDX-License-Identifier: GPL-2.0
/* A floor for bench/trace-overhead, of the design the tracer left (one
 * perf-event tracepoint per syscall): an empty program on
 * syscalls/sys_exit_pwrite64. What a process pays with it attached is the
 * kernel's own cost of a per-syscall tracepoint with a BPF program (the slow
 * syscall path for every syscall, plus the perf dispatch for pwrite). Same map names as trace.bpf.c, so that
 * native/tracer can attach and stream it. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include "trace.h"

char LICENSE[] SEC("license") = "GPL";

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 64 * 1024);
} events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, TR_CTR_MAX);
	__type(key, __u32);
	__type(value, __u64);
} counters SEC(".maps");

SEC("tracepoint/syscalls/sys_exit_pwrite64")
int tp__syscalls__sys_exit_pwrite64(struct trace_event_raw_sys_exit *ctx)
{
	return 0;
}
