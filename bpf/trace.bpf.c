// SPDX-License-Identifier: GPL-2.0
/* The app tracer: tracepoints only (this kernel has no kprobes and refuses
 * fentry). Every program checks the app's tgid map first and returns at once
 * for any other task. Syscall arguments are stashed per tid at sys_enter and
 * reported at sys_exit, where user memory (paths, sockaddrs, pipe fds) is read
 * after the kernel itself touched it (no EFAULT on non-resident pages).
 * Records go to a ring buffer without wake-ups; the reader is woken in batches
 * (every TR_WAKE_BYTES) and polls on a short timer for the rest. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_tracing.h>
#include "trace.h"

char LICENSE[] SEC("license") = "GPL";

#define TR_WAKE_BYTES (256 * 1024)
#define S_IFMT 00170000
#define S_IFREG 0100000
#define S_IFSOCK 0140000

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, __u32);   /* tgid */
	__type(value, __u32); /* 1 */
} app_tgids SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 16 * 1024 * 1024);
} events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, TR_CTR_MAX);
	__type(key, __u32);
	__type(value, __u64);
} counters SEC(".maps");

struct stash {
	__u64 nr;
	__u64 args[6];
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, __u32); /* tid */
	__type(value, struct stash);
} stashed SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, struct tr_fault_key);
	__type(value, __u64);
} write_faults SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, __u64);   /* struct sock * of an app TCP socket */
	__type(value, __u32); /* tgid that owned it */
} app_socks SEC(".maps");

static __always_inline void count(__u32 idx)
{
	__u64 *v = bpf_map_lookup_elem(&counters, &idx);
	if (v)
		__sync_fetch_and_add(v, 1);
}

/* The filter, checked first by every program. */
static __always_inline int is_app(__u32 tgid)
{
	return bpf_map_lookup_elem(&app_tgids, &tgid) != NULL;
}

static __always_inline void fill_hdr(struct tr_hdr *h, __u16 type, __u32 size, __u64 pid_tgid)
{
	h->version = TR_VERSION;
	h->type = type;
	h->size = size;
	h->ts_ns = bpf_ktime_get_ns();
	h->tgid = pid_tgid >> 32;
	h->tid = (__u32)pid_tgid;
}

static __always_inline void *reserve(__u32 size)
{
	void *r = bpf_ringbuf_reserve(&events, size, 0);
	if (!r)
		count(TR_CTR_RB_FAIL);
	return r;
}

/* Batched wake-ups: the reader is only woken once enough data waits. */
static __always_inline void submit(void *r)
{
	__u64 avail = bpf_ringbuf_query(&events, BPF_RB_AVAIL_DATA);
	if (avail >= TR_WAKE_BYTES) {
		bpf_ringbuf_submit(r, BPF_RB_FORCE_WAKEUP);
		count(TR_CTR_WAKEUPS);
	} else {
		bpf_ringbuf_submit(r, BPF_RB_NO_WAKEUP);
	}
	count(TR_CTR_SUBMITTED);
}

/* ---- process and thread lifecycle --------------------------------------- */

SEC("tp_btf/sched_process_fork")
int BPF_PROG(btf__sched_process_fork, struct task_struct *parent, struct task_struct *child)
{
	__u32 ptgid = BPF_CORE_READ(parent, tgid);
	if (!is_app(ptgid))
		return 0;
	__u32 ctgid = BPF_CORE_READ(child, tgid);
	__u32 ctid = BPF_CORE_READ(child, pid);
	if (ctgid != ptgid) {
		/* The child joins the filter here, in the kernel, before it runs. */
		__u32 one = 1;
		if (bpf_map_update_elem(&app_tgids, &ctgid, &one, BPF_ANY))
			count(TR_CTR_FILTER_FAIL);
	}
	struct tr_fork *r = reserve(sizeof(*r));
	if (!r)
		return 0;
	__u64 ptid = BPF_CORE_READ(parent, pid);
	fill_hdr(&r->hdr, TR_FORK, sizeof(*r), ((__u64)ptgid << 32) | ptid);
	/* The hook may run in the parent's context: take the ids from the tasks. */
	r->child_tgid = ctgid;
	r->child_tid = ctid;
	r->is_thread = ctgid == ptgid;
	r->pad = 0;
	bpf_probe_read_kernel_str(r->comm, sizeof(r->comm), child->comm);
	submit(r);
	return 0;
}

SEC("tp_btf/sched_process_exec")
int BPF_PROG(btf__sched_process_exec, struct task_struct *p, pid_t old_pid, struct linux_binprm *bprm)
{
	__u64 id = bpf_get_current_pid_tgid();
	if (!is_app(id >> 32))
		return 0;
	struct tr_exec *r = reserve(sizeof(*r));
	if (!r)
		return 0;
	fill_hdr(&r->hdr, TR_EXEC, sizeof(*r), id);
	r->old_tid = old_pid;
	r->pad = 0;
	bpf_get_current_comm(r->comm, sizeof(r->comm));
	const char *fn = BPF_CORE_READ(bprm, filename);
	if (bpf_probe_read_kernel_str(r->filename, sizeof(r->filename), fn) < 0)
		r->filename[0] = 0;
	submit(r);
	return 0;
}

SEC("tp_btf/sched_process_exit")
int BPF_PROG(btf__sched_process_exit, struct task_struct *p, bool group_dead)
{
	__u32 tgid = BPF_CORE_READ(p, tgid);
	if (!is_app(tgid))
		return 0;
	struct tr_exit *r = reserve(sizeof(*r));
	if (r) {
		fill_hdr(&r->hdr, TR_EXIT, sizeof(*r), ((__u64)tgid << 32) | (__u32)BPF_CORE_READ(p, pid));
		r->exit_code = BPF_CORE_READ(p, exit_code);
		r->group_dead = group_dead ? 1 : 0;
		submit(r);
	}
	__u32 tid = BPF_CORE_READ(p, pid);
	bpf_map_delete_elem(&stashed, &tid);
	/* A dead process leaves the filter, so a recycled pid is not traced. */
	if (group_dead)
		bpf_map_delete_elem(&app_tgids, &tgid);
	return 0;
}

/* ---- syscalls ------------------------------------------------------------ */

static __always_inline struct file *fd_file(long fd)
{
	struct task_struct *t = (struct task_struct *)bpf_get_current_task();
	struct fdtable *fdt = BPF_CORE_READ(t, files, fdt);
	if (!fdt || fd < 0)
		return NULL;
	unsigned int max = BPF_CORE_READ(fdt, max_fds);
	if ((unsigned long)fd >= max)
		return NULL;
	struct file **arr = BPF_CORE_READ(fdt, fd);
	struct file *f = NULL;
	bpf_probe_read_kernel(&f, sizeof(f), &arr[fd]);
	return f;
}

/* aux[0..2] = ino, dev, mode of fd; returns the file (or NULL). */
static __always_inline struct file *fd_info(long fd, __u64 *aux)
{
	struct file *f = fd_file(fd);
	if (!f)
		return NULL;
	struct inode *ino = BPF_CORE_READ(f, f_inode);
	aux[0] = BPF_CORE_READ(ino, i_ino);
	aux[1] = BPF_CORE_READ(ino, i_sb, s_dev);
	aux[2] = BPF_CORE_READ(ino, i_mode);
	return f;
}

static __always_inline __u64 file_sock(struct file *f, __u64 mode)
{
	if ((mode & S_IFMT) != S_IFSOCK)
		return 0;
	struct socket *s = BPF_CORE_READ(f, private_data);
	return (__u64)BPF_CORE_READ(s, sk);
}

static __always_inline void track_sock(__u64 sk, __u32 tgid)
{
	if (!sk)
		return;
	if (bpf_map_update_elem(&app_socks, &sk, &tgid, BPF_ANY))
		count(TR_CTR_SOCK_FAIL);
}

/* nargs: the syscall's arity. Reading args[] past it is refused when the
 * program is attached (its context is only as long as the real arguments). */
static __always_inline int on_enter(struct trace_event_raw_sys_enter *ctx, const int nargs)
{
	__u64 id = bpf_get_current_pid_tgid();
	if (!is_app(id >> 32))
		return 0;
	struct stash s = {};
	/* __syscall_nr is an int; the 4 bytes after it are padding, not zero. */
	s.nr = (__u32)ctx->id;
	/* One load per field: the verifier refuses ctx pointer arithmetic. */
	if (nargs > 0)
		s.args[0] = ctx->args[0];
	if (nargs > 1)
		s.args[1] = ctx->args[1];
	if (nargs > 2)
		s.args[2] = ctx->args[2];
	if (nargs > 3)
		s.args[3] = ctx->args[3];
	if (nargs > 4)
		s.args[4] = ctx->args[4];
	if (nargs > 5)
		s.args[5] = ctx->args[5];
	__u32 tid = (__u32)id;
	if (bpf_map_update_elem(&stashed, &tid, &s, BPF_ANY))
		count(TR_CTR_STASH_FAIL);
	return 0;
}

enum kind {
	K_PLAIN,     /* args + ret */
	K_FD_RET,    /* + fd info of the returned fd */
	K_FD_ARG,    /* + fd info of args[p0] */
	K_WRITE,     /* regular-file write on args[0]: + fd info + f_pos after */
	K_PIPE,      /* int[2] at args[p0] */
	K_PATH,      /* string at args[p0]; fd info of ret when p1 == 1 */
	K_PATH2,     /* strings at args[p0] and args[p1] */
	K_SOCKADDR,  /* sockaddr at args[1], length args[2]; fd info of args[0] */
	K_ACCEPT,    /* fd info of ret, the new socket is tracked */
};

static __always_inline void fill_sc(struct tr_syscall *r, __u16 type, __u32 size, __u64 id,
				    struct trace_event_raw_sys_exit *ctx, struct stash *s)
{
	fill_hdr(&r->hdr, type, size, id);
	r->nr = (__u32)ctx->id;
	r->flags = 0;
	r->ret = ctx->ret;
#pragma unroll
	for (int i = 0; i < 6; i++)
		r->args[i] = s->args[i];
	r->aux[0] = r->aux[1] = r->aux[2] = r->aux[3] = 0;
}

static __always_inline int on_exit(struct trace_event_raw_sys_exit *ctx, enum kind kind, int p0, int p1)
{
	__u64 id = bpf_get_current_pid_tgid();
	if (!is_app(id >> 32))
		return 0;
	__u32 tid = (__u32)id;
	struct stash *s = bpf_map_lookup_elem(&stashed, &tid);
	if (!s)
		return 0;
	if (s->nr != (__u32)ctx->id) {
		bpf_map_delete_elem(&stashed, &tid);
		return 0;
	}
	long ret = ctx->ret;

	if (kind == K_WRITE) {
		if (ret <= 0)
			goto out;
		__u64 aux[3] = {};
		struct file *f = fd_info(s->args[0], aux);
		if (!f || (aux[2] & S_IFMT) != S_IFREG)
			goto out; /* pipes, sockets, ttys: not file data */
		struct tr_syscall *r = reserve(sizeof(*r));
		if (!r)
			goto out;
		fill_sc(r, TR_SYSCALL, sizeof(*r), id, ctx, s);
		r->aux[0] = aux[0];
		r->aux[1] = aux[1];
		r->aux[2] = aux[2];
		r->aux[3] = BPF_CORE_READ(f, f_pos);
		submit(r);
		goto out;
	}

	if (kind == K_PATH || kind == K_PATH2 || kind == K_SOCKADDR) {
		struct tr_syscall_path *r = reserve(sizeof(*r));
		if (!r)
			goto out;
		fill_sc(&r->sc, TR_SYSCALL_PATH, sizeof(*r), id, ctx, s);
		r->path_len[0] = r->path_len[1] = 0;
		if (kind == K_SOCKADDR) {
			__u64 len = s->args[2];
			if (len > TR_PATH_MAX)
				len = TR_PATH_MAX;
			if (len > 0 && bpf_probe_read_user(r->path[0], len & (TR_PATH_MAX - 1) ? len & (TR_PATH_MAX - 1) : TR_PATH_MAX,
							   (void *)s->args[1]) == 0)
				r->path_len[0] = len;
			struct file *f = fd_info(s->args[0], r->sc.aux);
			if (f) {
				r->sc.aux[3] = file_sock(f, r->sc.aux[2]);
				if (ret == 0 || ret == -115 /* EINPROGRESS */)
					track_sock(r->sc.aux[3], id >> 32);
			}
		} else {
			long n = bpf_probe_read_user_str(r->path[0], TR_PATH_MAX, (void *)s->args[p0]);
			r->path_len[0] = n > 0 ? n : 0;
			if (kind == K_PATH2) {
				n = bpf_probe_read_user_str(r->path[1], TR_PATH_MAX, (void *)s->args[p1]);
				r->path_len[1] = n > 0 ? n : 0;
			} else if (p1 == 1 && ret >= 0) {
				fd_info(ret, r->sc.aux);
			}
		}
		submit(r);
		goto out;
	}

	{
		struct tr_syscall *r = reserve(sizeof(*r));
		if (!r)
			goto out;
		fill_sc(r, TR_SYSCALL, sizeof(*r), id, ctx, s);
		if (kind == K_FD_RET && ret >= 0) {
			fd_info(ret, r->aux);
		} else if (kind == K_FD_ARG) {
			fd_info(s->args[p0], r->aux);
		} else if (kind == K_ACCEPT && ret >= 0) {
			struct file *f = fd_info(ret, r->aux);
			if (f) {
				r->aux[3] = file_sock(f, r->aux[2]);
				track_sock(r->aux[3], id >> 32);
			}
		} else if (kind == K_PIPE && ret == 0) {
			int fds[2] = {-1, -1};
			if (bpf_probe_read_user(fds, sizeof(fds), (void *)s->args[p0]) == 0) {
				__u64 a[3] = {};
				r->aux[0] = fds[0];
				r->aux[1] = fds[1];
				if (fd_info(fds[0], a))
					r->aux[2] = a[0];
				if (fd_info(fds[1], a))
					r->aux[3] = a[0];
			}
		}
		submit(r);
	}
out:
	bpf_map_delete_elem(&stashed, &tid);
	return 0;
}

/* One enter/exit pair per syscall the graph needs; never raw_syscalls. */
#define SC(name, nargs, kind, p0, p1)                                                              \
	SEC("tracepoint/syscalls/sys_enter_" #name)                                         \
	int tp__syscalls__sys_enter_##name(struct trace_event_raw_sys_enter *ctx)          \
	{                                                                                    \
		return on_enter(ctx, nargs);                                                 \
	}                                                                                    \
	SEC("tracepoint/syscalls/sys_exit_" #name)                                          \
	int tp__syscalls__sys_exit_##name(struct trace_event_raw_sys_exit *ctx)            \
	{                                                                                    \
		return on_exit(ctx, kind, p0, p1);                                           \
	}

/* fd lifecycle */
SC(open, 3, K_PATH, 0, 1)
SC(openat, 4, K_PATH, 1, 1)
SC(openat2, 4, K_PATH, 1, 1)
SC(creat, 2, K_PATH, 0, 1)
SC(close, 1, K_PLAIN, 0, 0)
SC(close_range, 3, K_PLAIN, 0, 0)
SC(dup, 1, K_FD_RET, 0, 0)
SC(dup2, 2, K_FD_RET, 0, 0)
SC(dup3, 3, K_FD_RET, 0, 0)
SC(pipe, 1, K_PIPE, 0, 0)
SC(pipe2, 2, K_PIPE, 0, 0)
SC(socket, 3, K_FD_RET, 0, 0)
SC(socketpair, 4, K_PIPE, 3, 0)
SC(accept, 3, K_ACCEPT, 0, 0)
SC(accept4, 4, K_ACCEPT, 0, 0)
SC(connect, 3, K_SOCKADDR, 0, 0)
SC(bind, 3, K_SOCKADDR, 0, 0)
SC(listen, 2, K_FD_ARG, 0, 0)
SC(eventfd, 1, K_FD_RET, 0, 0)
SC(eventfd2, 2, K_FD_RET, 0, 0)
SC(epoll_create, 1, K_FD_RET, 0, 0)
SC(epoll_create1, 1, K_FD_RET, 0, 0)
SC(timerfd_create, 2, K_FD_RET, 0, 0)
SC(signalfd, 3, K_FD_RET, 0, 0)
SC(signalfd4, 4, K_FD_RET, 0, 0)
SC(memfd_create, 2, K_PATH, 0, 1)
SC(inotify_init1, 1, K_FD_RET, 0, 0)

/* address space */
SC(mmap, 6, K_FD_ARG, 4, 0)
SC(munmap, 2, K_PLAIN, 0, 0)
SC(mremap, 5, K_PLAIN, 0, 0)
SC(mprotect, 3, K_PLAIN, 0, 0)
SC(brk, 1, K_PLAIN, 0, 0)

/* file data and names */
SC(write, 3, K_WRITE, 0, 0)
SC(writev, 3, K_WRITE, 0, 0)
SC(pwrite64, 4, K_WRITE, 0, 0)
SC(pwritev, 5, K_WRITE, 0, 0)
SC(pwritev2, 6, K_WRITE, 0, 0)
SC(ftruncate, 2, K_FD_ARG, 0, 0)
SC(fallocate, 4, K_FD_ARG, 0, 0)
SC(rename, 2, K_PATH2, 0, 1)
SC(renameat, 4, K_PATH2, 1, 3)
SC(renameat2, 5, K_PATH2, 1, 3)
SC(unlink, 1, K_PATH, 0, 0)
SC(unlinkat, 3, K_PATH, 1, 0)
SC(mkdir, 2, K_PATH, 0, 0)
SC(mkdirat, 3, K_PATH, 1, 0)
SC(rmdir, 1, K_PATH, 0, 0)

/* IPC */
SC(shmget, 3, K_PLAIN, 0, 0)
SC(shmat, 3, K_PLAIN, 0, 0)
SC(shmdt, 1, K_PLAIN, 0, 0)
SC(msgget, 2, K_PLAIN, 0, 0)
SC(semget, 3, K_PLAIN, 0, 0)
SC(mq_open, 4, K_PATH, 0, 1)

/* Filtered at entry: only the calls the graph cares about are stashed. */
SEC("tracepoint/syscalls/sys_enter_fcntl")
int tp__syscalls__sys_enter_fcntl(struct trace_event_raw_sys_enter *ctx)
{
	long cmd = ctx->args[1];
	if (cmd != 0 /* F_DUPFD */ && cmd != 1030 /* F_DUPFD_CLOEXEC */)
		return 0;
	return on_enter(ctx, 3);
}
SEC("tracepoint/syscalls/sys_exit_fcntl")
int tp__syscalls__sys_exit_fcntl(struct trace_event_raw_sys_exit *ctx)
{
	return on_exit(ctx, K_FD_RET, 0, 0);
}

SEC("tracepoint/syscalls/sys_enter_madvise")
int tp__syscalls__sys_enter_madvise(struct trace_event_raw_sys_enter *ctx)
{
	if (ctx->args[2] != 4 /* MADV_DONTNEED */)
		return 0;
	return on_enter(ctx, 3);
}
SEC("tracepoint/syscalls/sys_exit_madvise")
int tp__syscalls__sys_exit_madvise(struct trace_event_raw_sys_exit *ctx)
{
	return on_exit(ctx, K_PLAIN, 0, 0);
}

/* ---- write faults: counted per VMA in a map, never one record each ------- */

struct pf_ctx {
	__u64 common;
	unsigned long address;
	unsigned long ip;
	unsigned long error_code;
};

static long vma_start_cb(struct task_struct *task, struct vm_area_struct *vma, void *data)
{
	*(__u64 *)data = vma->vm_start;
	return 0;
}

SEC("tracepoint/exceptions/page_fault_user")
int tp__exceptions__page_fault_user(struct pf_ctx *ctx)
{
	__u64 id = bpf_get_current_pid_tgid();
	if (!is_app(id >> 32))
		return 0;
	if (!(ctx->error_code & 2))
		return 0;
	struct tr_fault_key k = {.tgid = id >> 32};
	__u64 start = 0;
	struct task_struct *t = bpf_get_current_task_btf();
	if (bpf_find_vma(t, ctx->address, vma_start_cb, &start, 0) == 0 && start)
		k.vm_start = start;
	else
		k.vm_start = (ctx->address & ~0xfffUL) | 1;
	__u64 *v = bpf_map_lookup_elem(&write_faults, &k);
	if (v) {
		__sync_fetch_and_add(v, 1);
	} else {
		__u64 one = 1;
		if (bpf_map_update_elem(&write_faults, &k, &one, BPF_NOEXIST)) {
			v = bpf_map_lookup_elem(&write_faults, &k);
			if (v)
				__sync_fetch_and_add(v, 1);
			else
				count(TR_CTR_FAULT_FAIL);
		}
	}
	return 0;
}

/* ---- TCP state ----------------------------------------------------------- */

SEC("tracepoint/sock/inet_sock_set_state")
int tp__sock__inet_sock_set_state(struct trace_event_raw_inet_sock_set_state *ctx)
{
	if (ctx->protocol != IPPROTO_TCP)
		return 0;
	__u64 id = bpf_get_current_pid_tgid();
	__u64 sk = (__u64)ctx->skaddr;
	__u32 *owner = bpf_map_lookup_elem(&app_socks, &sk);
	__u32 tgid = id >> 32;
	if (is_app(tgid)) {
		if (!owner)
			track_sock(sk, tgid);
	} else if (!owner) {
		return 0; /* softirq context or another task: only known app sockets */
	}
	struct tr_tcp_state *r = reserve(sizeof(*r));
	if (r) {
		fill_hdr(&r->hdr, TR_TCP_STATE, sizeof(*r), id);
		if (owner && !is_app(tgid)) {
			r->hdr.tgid = *owner; /* the app process that holds the socket */
			r->hdr.tid = 0;
		}
		r->skaddr = sk;
		r->oldstate = ctx->oldstate;
		r->newstate = ctx->newstate;
		r->sport = ctx->sport;
		r->dport = ctx->dport;
		r->family = ctx->family;
		r->protocol = ctx->protocol;
		/* Whole-word loads: the verifier refuses byte copies off the ctx pointer. */
		__u64 *sa = (__u64 *)r->saddr, *da = (__u64 *)r->daddr;
		if (ctx->family == 2 /* AF_INET */) {
			sa[0] = *(__u32 *)ctx->saddr;
			da[0] = *(__u32 *)ctx->daddr;
			sa[1] = da[1] = 0;
		} else {
			sa[0] = *(__u64 *)&ctx->saddr_v6[0];
			sa[1] = *(__u64 *)&ctx->saddr_v6[8];
			da[0] = *(__u64 *)&ctx->daddr_v6[0];
			da[1] = *(__u64 *)&ctx->daddr_v6[8];
		}
		submit(r);
	}
	if (ctx->newstate == 7 /* TCP_CLOSE */)
		bpf_map_delete_elem(&app_socks, &sk);
	return 0;
}
