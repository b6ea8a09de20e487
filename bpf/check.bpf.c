// SPDX-License-Identifier: GPL-2.0
/* Programs for understudy-check: a counter and a ring buffer producer on
 * syscalls tracepoints, filtered to one process read through CO-RE. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
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

/* syscalls/sys_enter_* have no BTF type; layout from their tracefs format:
 * 8 bytes of common fields, int __syscall_nr, then the arguments at 16. */
struct check_sys_enter {
	__u64 common;
	__s32 syscall_nr;
	__u32 pad;
	__u64 args[6];
};

static __always_inline int is_target(void)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();

	return BPF_CORE_READ(task, tgid) == (int)target_tgid;
}

SEC("tracepoint/syscalls/sys_enter_getppid")
int check_count_getppid(void *ctx)
{
	__u32 key = CHECK_CNT_GETPPID;
	__u64 *v;

	if (!is_target())
		return 0;
	v = bpf_map_lookup_elem(&counters, &key);
	if (v)
		__sync_fetch_and_add(v, 1);
	return 0;
}

SEC("tracepoint/syscalls/sys_enter_getpgid")
int check_ringbuf_getpgid(struct check_sys_enter *ctx)
{
	__u32 key = CHECK_CNT_RB_SEQ;
	struct check_rb_record *r;
	__u64 arg, *seq;

	if (!is_target())
		return 0;
	arg = ctx->args[0];
	if (arg < CHECK_RB_ARG_BASE || arg >= CHECK_RB_ARG_BASE + CHECK_RB_ARG_SPAN)
		return 0;
	seq = bpf_map_lookup_elem(&counters, &key);
	if (!seq)
		return 0;
	*seq += 1;	/* one thread of one process: no race */
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
