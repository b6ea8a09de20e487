/* SPDX-License-Identifier: GPL-2.0 OR BSD-3-Clause */
/* Records of the engine's task iterator (bpf/engine_task.bpf.c), read by
 * native/engine/taskiter.c: the one place their layout is written down. One
 * ET_TASK record per thread of the process, and after the first thread that
 * holds a signal handler table, one ET_SIGACT record per signal whose handler
 * is not SIG_DFL. All records have the same size. */
#ifndef UNDERSTUDY_ENGINE_TASK_H
#define UNDERSTUDY_ENGINE_TASK_H

#ifndef __VMLINUX_H__
#include <linux/types.h>
#endif

enum et_kind {
	ET_TASK = 1,   /* a = clear_child_tid, b = sas_ss_sp, c = sas_ss_size, d = mm->brk, x = sas_ss_flags, comm */
	ET_SIGACT = 2, /* a = handler, b = flags (kernel's, unmasked), c = restorer, d = mask, x = signo */
};

struct et_rec {
	__u32 kind;
	__u32 tid;
	__u32 tgid;
	__u32 x;
	__u64 a, b, c, d;
	char comm[16];   /* ET_TASK: the thread's name (TASK_COMM_LEN) */
};

#endif
