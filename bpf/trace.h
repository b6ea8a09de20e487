/* SPDX-License-Identifier: GPL-2.0 OR BSD-3-Clause */
/* The tracer's event records: the one place their layout is written down.
 * Shared by bpf/trace.bpf.c (producer), native/tracer/ (which carries them to
 * the agent unchanged) and mirrored, field for field, by src/trace/records.ts
 * (decoder). Every record starts with struct tr_hdr: version, type tag, total
 * size, timestamp, tgid/tid. A change of layout bumps TR_VERSION; the decoder
 * refuses versions it does not know. Each record's size is fixed below
 * (TR_RECORDS) and checked at compile time in both the BPF object and the
 * tracer; the tracer reports the sizes in its hello, and the decoder refuses
 * to start when they are not the ones it was written for. */
#ifndef UNDERSTUDY_TRACE_H
#define UNDERSTUDY_TRACE_H

#ifndef __VMLINUX_H__
#include <linux/types.h>
#endif

#define TR_VERSION 1
#define TR_PATH_MAX 256
#define TR_COMM_LEN 16

/* 100 was a stats record written by the streamer; counters now travel as
 * protobuf (TracerStatus, proto/understudy/v1/tracer.proto). */
enum tr_type {
	TR_FORK = 1,	     /* struct tr_fork: a process or thread was created */
	TR_EXEC = 2,	     /* struct tr_exec */
	TR_EXIT = 3,	     /* struct tr_exit: a task exited (group_dead: the process) */
	TR_SYSCALL = 4,	     /* struct tr_syscall: an fd/memory/IPC/write syscall returned */
	TR_SYSCALL_PATH = 5, /* struct tr_syscall_path: same, with path(s) or a sockaddr */
	TR_TCP_STATE = 6,    /* struct tr_tcp_state: a TCP socket of the app changed state */
};

struct tr_hdr {
	__u16 version;
	__u16 type;
	__u32 size;  /* whole record, header included */
	__u64 ts_ns; /* bpf_ktime_get_ns (CLOCK_MONOTONIC) */
	__u32 tgid;
	__u32 tid;
};

struct tr_fork {
	struct tr_hdr hdr; /* tgid/tid: the parent */
	__u32 child_tgid;
	__u32 child_tid;
	__u32 is_thread; /* 1: a thread of the same process (CLONE_THREAD) */
	__u32 pad;
	char comm[TR_COMM_LEN];
};

struct tr_exec {
	struct tr_hdr hdr;
	__u32 old_tid; /* a non-leader thread that exec'd takes the leader's tid */
	__u32 pad;
	char comm[TR_COMM_LEN];
	char filename[TR_PATH_MAX];
};

struct tr_exit {
	struct tr_hdr hdr;
	__s32 exit_code;  /* raw wait status bits (task->exit_code) */
	__u32 group_dead; /* 1: the last thread: the process is gone */
};

/* Per-syscall meaning of aux[] (filled at sys_exit, from the task's fd table):
 *  - fd-creating calls (ret = fd): aux[0] = inode number, aux[1] = kernel dev_t
 *    of the superblock, aux[2] = i_mode, aux[3] = the struct sock address for sockets
 *  - writes (write, writev, pwrite64, pwritev, pwritev2): aux[0..2] as above for
 *    the fd written, aux[3] = file position after the call (so the offset of a
 *    plain write is aux[3] - ret); only regular files are reported
 *  - pipe, pipe2, socketpair: aux[0] = fd0, aux[1] = fd1, aux[2] = inode of fd0,
 *    aux[3] = inode of fd1 */
struct tr_syscall {
	struct tr_hdr hdr;
	__u32 nr; /* x86_64 syscall number */
	__u32 flags;
	__s64 ret;
	__u64 args[6];
	__u64 aux[4];
};

/* path[0]: the (first) path argument, or the raw struct sockaddr of connect/bind
 * (path_len[0] bytes); path[1]: the second path of rename*. */
struct tr_syscall_path {
	struct tr_syscall sc;
	__u32 path_len[2]; /* bytes in path[i] (strings: including the NUL) */
	char path[2][TR_PATH_MAX];
};

struct tr_tcp_state {
	struct tr_hdr hdr; /* tgid/tid: the task current at the change (may be 0 in softirq) */
	__u64 skaddr;
	__s32 oldstate;
	__s32 newstate;
	__u16 sport;
	__u16 dport;
	__u16 family;
	__u16 protocol;
	__u8 saddr[16]; /* IPv4 in the first 4 bytes */
	__u8 daddr[16];
};

/* Counters map (per-CPU array, TR_CTR_MAX u64 slots; readers sum the CPUs).
 * Losses are never silent. */
enum tr_counter {
	TR_CTR_RB_FAIL = 0,	/* ring buffer reserve failed: record lost */
	TR_CTR_RESERVED1 = 1,	/* unused (was an argument stash, see docs/tracing.md) */
	TR_CTR_FAULT_FAIL = 2,	/* write-fault map full: faults not counted */
	TR_CTR_FILTER_FAIL = 3, /* app tgid map full: a child could not join */
	TR_CTR_SOCK_FAIL = 4,	/* app socket map full: TCP states of a socket missed */
	TR_CTR_SUBMITTED = 5,	/* records submitted */
	TR_CTR_WAKEUPS = 6,	/* forced (batched) wake-ups */
	TR_CTR_MAX = 8,
};

#ifdef __VMLINUX_H__
/* The two maps native/tracer opens by name in every object it attaches and
 * streams (bpf/trace.bpf.c and the bench floors): the ring buffer of records,
 * of rb_bytes, and the per-CPU counters above (readers sum the CPUs). */
#define TR_STREAM_MAPS(rb_bytes)                         \
	struct {                                         \
		__uint(type, BPF_MAP_TYPE_RINGBUF);      \
		__uint(max_entries, rb_bytes);           \
	} events SEC(".maps");                           \
	struct {                                         \
		__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY); \
		__uint(max_entries, TR_CTR_MAX);         \
		__type(key, __u32);                      \
		__type(value, __u64);                    \
	} counters SEC(".maps")
#endif

/* Key of the write-fault map: the VMA start when the kernel could resolve it,
 * else the faulting page address with bit 0 set. Value: a __u64 count. */
struct tr_fault_key {
	__u32 tgid;
	__u32 pad;
	__u64 vm_start;
};

/* Every record type with its struct and its size in bytes: X(type, struct, size).
 * The sizes are the ABI between the kernel side, the tracer and the decoder. */
#define TR_RECORDS(X)                            \
	X(TR_FORK, tr_fork, 56)                  \
	X(TR_EXEC, tr_exec, 304)                 \
	X(TR_EXIT, tr_exit, 32)                  \
	X(TR_SYSCALL, tr_syscall, 120)           \
	X(TR_SYSCALL_PATH, tr_syscall_path, 640) \
	X(TR_TCP_STATE, tr_tcp_state, 80)

#define TR_SIZE_CHECK(type, st, size)               \
	_Static_assert(sizeof(struct st) == (size), \
		       "struct " #st " is not " #size " bytes: bpf/trace.h, src/trace/records.ts and TR_VERSION must change together");
TR_RECORDS(TR_SIZE_CHECK)
#undef TR_SIZE_CHECK
_Static_assert(sizeof(struct tr_hdr) == 24, "struct tr_hdr is not 24 bytes");
_Static_assert(sizeof(struct tr_fault_key) == 16, "struct tr_fault_key is not 16 bytes");

#endif
