// SPDX-License-Identifier: GPL-2.0
/* The floor for bench/trace-overhead: an empty program on the BTF raw
 * tracepoint sys_exit, where the tracer's one syscall program sits. What a
 * process pays with it attached (for every syscall) is the kernel's own cost
 * before the tracer's program does anything: the slow syscall path plus the
 * call of a BPF program. Same map names as trace.bpf.c, so that
 * native/tracer can attach and stream it. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
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

SEC("tp_btf/sys_exit")
int BPF_PROG(btf__sys_exit, struct pt_regs *regs, long ret)
{
	return 0;
}
