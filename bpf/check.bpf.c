// SPDX-License-Identifier: GPL-2.0
/* Programs for understudy-check: a counter and a ring buffer producer on
 * the syscall-exit BTF tracepoint, filtered to one process. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include "check.h"

char LICENSE[] SEC("license") = "GPL";

/* Set by user space before load (rodata). */
const volatile __u32 target_tgid = 0;

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, CHECK_CNT_SLOTS);
	__type(key, __u32);
	__type(value, __u64);
} counters SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 16 * 1024);
} records SEC(".maps");

/* The tracer's own hook (bpf/trace.bpf.c): the BTF raw tracepoint at every
 * syscall exit, with the task read through its trusted BTF pointer, so that a
 * kernel which passes this probe can load the tracer's programs. */
#define CHECK_NR_GETPPID 110 /* x86_64 */
#define CHECK_NR_GETPGID 121

static __always_inline int is_target(struct pt_regs *regs, __u64 nr)
{
	struct task_struct *task = bpf_get_current_task_btf();

	return regs->orig_ax == nr && task->tgid == (int)target_tgid;
}

SEC("tp_btf/sys_exit")
int BPF_PROG(check_count_getppid, struct pt_regs *regs, long ret)
{
	__u32 key = CHECK_CNT_GETPPID;
	__u64 *v;

	if (!is_target(regs, CHECK_NR_GETPPID))
		return 0;
	v = bpf_map_lookup_elem(&counters, &key);
	if (v)
		__sync_fetch_and_add(v, 1);
	return 0;
}

SEC("tp_btf/sys_exit")
int BPF_PROG(check_ringbuf_getpgid, struct pt_regs *regs, long ret)
{
	__u32 key = CHECK_CNT_RB_SEQ;
	struct check_rb_record *r;
	__u64 arg, *seq;

	if (!is_target(regs, CHECK_NR_GETPGID))
		return 0;
	arg = regs->di;
	if (arg < CHECK_RB_ARG_BASE || arg >= CHECK_RB_ARG_BASE + CHECK_RB_ARG_SPAN)
		return 0;
	seq = bpf_map_lookup_elem(&counters, &key);
	if (!seq)
		return 0;
	*seq += 1; /* one thread of one process: no race */
	r = bpf_ringbuf_reserve(&records, sizeof(*r), 0);
	if (!r)
		return 0;
	r->magic = CHECK_RB_MAGIC;
	r->seq = (__u32)*seq;
	r->tgid = target_tgid;
	r->pad = 0;
	r->arg = arg;
	bpf_ringbuf_submit(r, 0);
	return 0;
}
