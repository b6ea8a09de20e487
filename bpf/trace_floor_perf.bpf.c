// SPDX-License-Identifier: GPL-2.0
/* A floor for bench/trace-overhead, of the design the tracer left (one
 * perf-event tracepoint per syscall): an empty program on
 * syscalls/sys_exit_pwrite64. What a process pays with it attached is the
 * kernel's own cost of a per-syscall tracepoint with a BPF program (the slow
 * syscall path for every syscall, plus the perf dispatch for pwrite). The maps native/tracer streams
 * (TR_STREAM_MAPS, as trace.bpf.c has them), so that it can attach this. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include "trace.h"

char LICENSE[] SEC("license") = "GPL";

TR_STREAM_MAPS(64 * 1024);

SEC("tracepoint/syscalls/sys_exit_pwrite64")
int tp__syscalls__sys_exit_pwrite64(struct trace_event_raw_sys_exit *ctx)
{
	return 0;
}
