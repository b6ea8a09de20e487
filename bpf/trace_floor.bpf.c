// SPDX-License-Identifier: GPL-2.0
/* The floor for bench/trace-overhead: an empty program on the BTF raw
 * tracepoint sys_exit, where the tracer's one syscall program sits. What a
 * process pays with it attached (for every syscall) is the kernel's own cost
 * before the tracer's program does anything: the slow syscall path plus the
 * call of a BPF program. The maps native/tracer streams
 * (TR_STREAM_MAPS, as trace.bpf.c has them), so that it can attach this. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include "trace.h"

char LICENSE[] SEC("license") = "GPL";

TR_STREAM_MAPS(64 * 1024);

SEC("tp_btf/sys_exit")
int BPF_PROG(btf__sys_exit, struct pt_regs *regs, long ret)
{
	return 0;
}
