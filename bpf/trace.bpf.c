// SPDX-License-Identifier: GPL-2.0
/* The app tracer: tracepoints only (this kernel has no kprobes and refuses
 * fentry). Every program checks the app's filter (one bit per tgid) first and
 * returns at once for any other task. Syscalls are reported from ONE program
 * on the BTF raw tracepoint sys_exit: the kernel calls it directly for every
 * syscall of every task, so its first test is the syscall number against a
 * read-only table (a load), then the filter (a load and a bit test). The
 * arguments are still in the task's saved user registers (pt_regs), and user
 * memory (paths, sockaddrs, pipe fds) is read after the kernel itself touched
 * it (no EFAULT on non-resident pages). No sys_enter program, never
 * raw_syscalls through perf. Costs measured: docs/tracing.md.
 * Records go to a ring buffer without wake-ups; the reader is woken in batches
 * (every TR_WAKE_EVERY records) and polls on a short timer for the rest. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_tracing.h>
#include "trace.h"

char LICENSE[] SEC("license") = "GPL";

#define TR_WAKE_EVERY 1024 /* records per CPU between wake-ups: a power of 2 */
#define S_IFMT 00170000
#define S_IFREG 0100000
#define S_IFSOCK 0140000

/* The app's tgids, listed (bpftool map dump): the same set as app_bits. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, __u32);   /* tgid */
	__type(value, __u32); /* 1 */
} app_tgids SEC(".maps");

/* The filter itself: one bit per tgid (2^22 = PID_MAX_LIMIT on 64-bit),
 * 64 tgids a word. An inlined array lookup and a bit test: the cheapest
 * check there is (measured: hash lookup ~75 ns, task storage ~40 ns, this
 * ~18 ns per call on this VM). Only ever changed atomically: lock or/and in
 * the kernel, and through mmap with atomic ops by understudy-tracer
 * --add-tgid (bpftool's whole-word update could erase a bit the kernel set
 * at the same moment). app_tgids above is the listing of the same set. */
#define TR_TGID_BITS (1u << 22)
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_MMAPABLE);
	__uint(max_entries, TR_TGID_BITS / 64);
	__type(key, __u32);   /* tgid / 64 */
	__type(value, __u64); /* bit tgid % 64 */
} app_bits SEC(".maps");

/* events (16 MiB) and counters, per-CPU: no atomic on a shared cache line in
 * the hot path; readers sum. */
TR_STREAM_MAPS(16 * 1024 * 1024);

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
		*v += 1;
}

/* The filter, checked first by every program. */
static __always_inline int is_app(__u32 tgid)
{
	__u32 k = tgid / 64;
	__u64 *w = bpf_map_lookup_elem(&app_bits, &k);
	return w && (*w & (1ull << (tgid % 64)));
}

static __always_inline void app_join(__u32 tgid)
{
	__u32 k = tgid / 64, one = 1;
	__u64 *w = bpf_map_lookup_elem(&app_bits, &k);
	if (w)
		__sync_fetch_and_or(w, 1ull << (tgid % 64));
	if (!w || bpf_map_update_elem(&app_tgids, &tgid, &one, BPF_ANY))
		count(TR_CTR_FILTER_FAIL);
}

static __always_inline void app_leave(__u32 tgid)
{
	__u32 k = tgid / 64;
	__u64 *w = bpf_map_lookup_elem(&app_bits, &k);
	if (w)
		__sync_fetch_and_and(w, ~(1ull << (tgid % 64)));
	bpf_map_delete_elem(&app_tgids, &tgid);
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

/* Batched wake-ups: every TR_WAKE_EVERY-th record on a CPU wakes the reader;
 * the rest are submitted silently and the reader drains them on its timer.
 * (Asking the ring for its fill level here would read the consumer's
 * position, a cache line the reader keeps writing on the other CPU.) */
static __always_inline void submit(void *r)
{
	__u32 idx = TR_CTR_SUBMITTED;
	__u64 *n = bpf_map_lookup_elem(&counters, &idx);
	__u64 seq = 0;
	if (n)
		seq = ++*n;
	if ((seq & (TR_WAKE_EVERY - 1)) == 0) {
		bpf_ringbuf_submit(r, BPF_RB_FORCE_WAKEUP);
		count(TR_CTR_WAKEUPS);
	} else {
		bpf_ringbuf_submit(r, BPF_RB_NO_WAKEUP);
	}
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
		app_join(ctgid);
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
	/* A dead process leaves the filter, so a recycled pid is not traced. */
	if (group_dead)
		app_leave(tgid);
	return 0;
}

/* ---- syscalls ------------------------------------------------------------ */

extern void *bpf_rdonly_cast(const void *obj, __u32 btf_id) __ksym;

/* Direct loads through BTF pointers (JITed as plain loads with fault
 * fixups) rather than one bpf_probe_read_kernel call per field: this runs on
 * every reported syscall. */
static __always_inline struct file *fd_file(struct task_struct *t, long fd)
{
	struct fdtable *fdt = t->files->fdt;
	if (!fdt || fd < 0)
		return NULL;
	if ((unsigned long)fd >= fdt->max_fds)
		return NULL;
	struct file **arr = fdt->fd;
	/* arr[fd] as a plain load with a fault fixup rather than a helper call:
	 * the slot seen through a one-word BTF struct (struct fd { unsigned long
	 * word; }), whose untrusted cast the verifier lets us read. */
	struct fd *slot = bpf_rdonly_cast(&arr[fd], bpf_core_type_id_kernel(struct fd));
	struct file *f = (struct file *)slot->word;
	if (!f)
		return NULL;
	return bpf_rdonly_cast(f, bpf_core_type_id_kernel(struct file));
}

/* aux[0..2] = ino, dev, mode of fd; returns the file (or NULL). */
static __always_inline struct file *fd_info(struct task_struct *t, long fd, __u64 *aux)
{
	struct file *f = fd_file(t, fd);
	if (!f)
		return NULL;
	struct inode *ino = f->f_inode;
	aux[0] = ino->i_ino;
	aux[1] = ino->i_sb->s_dev;
	aux[2] = ino->i_mode;
	return f;
}

static __always_inline __u64 file_sock(struct file *f, __u64 mode)
{
	if ((mode & S_IFMT) != S_IFSOCK)
		return 0;
	struct socket *s = bpf_rdonly_cast(f->private_data, bpf_core_type_id_kernel(struct socket));
	return (__u64)s->sk;
}

static __always_inline void track_sock(__u64 sk, __u32 tgid)
{
	if (!sk)
		return;
	if (bpf_map_update_elem(&app_socks, &sk, &tgid, BPF_ANY))
		count(TR_CTR_SOCK_FAIL);
}

enum kind {
	K_NONE = 0, /* not watched: return at once */
	K_PLAIN,    /* args + ret */
	K_FD_RET,   /* + fd info of the returned fd */
	K_FD_ARG,   /* + fd info of args[p0] */
	K_WRITE,    /* regular-file write on args[0]: + fd info + f_pos after */
	K_PIPE,	    /* int[2] at args[p0] */
	K_PATH,	    /* string at args[p0]; fd info of ret when p1 == 1 */
	K_PATH2,    /* strings at args[p0] and args[p1] */
	K_SOCKADDR, /* sockaddr at args[1], length args[2]; fd info of args[0] */
	K_ACCEPT,   /* fd info of ret, the new socket is tracked */
};

/* What each watched x86_64 syscall reports: kind | p0 << 8 | p1 << 16, by
 * syscall number; 0 = not watched. Read-only data: the program's first test,
 * a bounds check and one load, before anything else (every syscall of every
 * task on the machine runs this program). */
#define SC(nr, kind, p0, p1) [nr] = (kind) | ((p0) << 8) | ((p1) << 16)
#define SC_TABLE_LEN 512
static const __u32 sc_table[SC_TABLE_LEN] = {
	/* fd lifecycle */
	SC(2, K_PATH, 0, 1),	  /* open */
	SC(257, K_PATH, 1, 1),	  /* openat */
	SC(437, K_PATH, 1, 1),	  /* openat2 */
	SC(85, K_PATH, 0, 1),	  /* creat */
	SC(3, K_PLAIN, 0, 0),	  /* close */
	SC(436, K_PLAIN, 0, 0),	  /* close_range */
	SC(32, K_FD_RET, 0, 0),	  /* dup */
	SC(33, K_FD_RET, 0, 0),	  /* dup2 */
	SC(292, K_FD_RET, 0, 0),  /* dup3 */
	SC(22, K_PIPE, 0, 0),	  /* pipe */
	SC(293, K_PIPE, 0, 0),	  /* pipe2 */
	SC(41, K_FD_RET, 0, 0),	  /* socket */
	SC(53, K_PIPE, 3, 0),	  /* socketpair */
	SC(43, K_ACCEPT, 0, 0),	  /* accept */
	SC(288, K_ACCEPT, 0, 0),  /* accept4 */
	SC(42, K_SOCKADDR, 0, 0), /* connect */
	SC(49, K_SOCKADDR, 0, 0), /* bind */
	SC(50, K_FD_ARG, 0, 0),	  /* listen */
	SC(284, K_FD_RET, 0, 0),  /* eventfd */
	SC(290, K_FD_RET, 0, 0),  /* eventfd2 */
	SC(213, K_FD_RET, 0, 0),  /* epoll_create */
	SC(291, K_FD_RET, 0, 0),  /* epoll_create1 */
	SC(283, K_FD_RET, 0, 0),  /* timerfd_create */
	SC(282, K_FD_RET, 0, 0),  /* signalfd */
	SC(289, K_FD_RET, 0, 0),  /* signalfd4 */
	SC(319, K_PATH, 0, 1),	  /* memfd_create */
	SC(294, K_FD_RET, 0, 0),  /* inotify_init1 */
	/* address space */
	SC(9, K_FD_ARG, 4, 0), /* mmap */
	SC(11, K_PLAIN, 0, 0), /* munmap */
	SC(25, K_PLAIN, 0, 0), /* mremap */
	SC(10, K_PLAIN, 0, 0), /* mprotect */
	SC(12, K_PLAIN, 0, 0), /* brk */
	/* file data and names */
	SC(1, K_WRITE, 0, 0),	 /* write */
	SC(20, K_WRITE, 0, 0),	 /* writev */
	SC(18, K_WRITE, 0, 0),	 /* pwrite64 */
	SC(296, K_WRITE, 0, 0),	 /* pwritev */
	SC(328, K_WRITE, 0, 0),	 /* pwritev2 */
	SC(77, K_FD_ARG, 0, 0),	 /* ftruncate */
	SC(285, K_FD_ARG, 0, 0), /* fallocate */
	SC(82, K_PATH2, 0, 1),	 /* rename */
	SC(264, K_PATH2, 1, 3),	 /* renameat */
	SC(316, K_PATH2, 1, 3),	 /* renameat2 */
	SC(87, K_PATH, 0, 0),	 /* unlink */
	SC(263, K_PATH, 1, 0),	 /* unlinkat */
	SC(83, K_PATH, 0, 0),	 /* mkdir */
	SC(258, K_PATH, 1, 0),	 /* mkdirat */
	SC(84, K_PATH, 0, 0),	 /* rmdir */
	/* IPC */
	SC(29, K_PLAIN, 0, 0), /* shmget */
	SC(30, K_PLAIN, 0, 0), /* shmat */
	SC(67, K_PLAIN, 0, 0), /* shmdt */
	SC(68, K_PLAIN, 0, 0), /* msgget */
	SC(64, K_PLAIN, 0, 0), /* semget */
	SC(240, K_PATH, 0, 1), /* mq_open */
	/* filtered below: only F_DUPFD* and MADV_DONTNEED are reported */
	SC(72, K_FD_RET, 0, 0), /* fcntl */
	SC(28, K_PLAIN, 0, 0),	/* madvise */
};

struct sargs {
	__u64 args[8]; /* 6 used; 8 so that an index masked with 7 stays inside */
};

static __always_inline void fill_sc(struct tr_syscall *r, __u16 type, __u32 size, __u64 id, __u32 nr, long ret, struct sargs *s)
{
	fill_hdr(&r->hdr, type, size, id);
	r->nr = nr;
	r->flags = 0;
	r->ret = ret;
#pragma unroll
	for (int i = 0; i < 6; i++)
		r->args[i] = s->args[i];
	r->aux[0] = r->aux[1] = r->aux[2] = r->aux[3] = 0;
}

#define TS_COMPAT 0x0002 /* x86 thread_info.status: an ia32 syscall is running */

/* ONE program for every watched syscall, on the BTF raw tracepoint sys_exit:
 * the kernel calls it directly (no perf buffer set-up per call, which is what
 * a per-syscall tracepoint costs). regs: the user registers saved at entry
 * (x86_64 arguments rdi, rsi, rdx, r10, r8, r9, unchanged at exit; orig_ax is
 * the syscall number); ret: the return value. Order: syscall number (a load),
 * then the app filter, then the work. */
SEC("tp_btf/sys_exit")
int BPF_PROG(btf__sys_exit, struct pt_regs *regs, long ret)
{
	__u64 nr = regs->orig_ax; /* x32 (bit 30 set) and -1 (no syscall) fall outside */
	if (nr >= SC_TABLE_LEN)
		return 0;
	__u32 e = sc_table[nr];
	if (!e)
		return 0;
	/* One helper call: the ids from the task (plain loads), not a second helper. */
	struct task_struct *task = bpf_get_current_task_btf();
	__u32 tgid = task->tgid;
	if (!is_app(tgid))
		return 0;
	__u64 id = ((__u64)tgid << 32) | (__u32)task->pid;
	if (task->thread_info.status & TS_COMPAT)
		return 0; /* ia32 numbers mean other syscalls; not traced (docs/tracing.md) */
	__u32 kind = e & 0xff, p0 = (e >> 8) & 7, p1 = (e >> 16) & 7;
	struct sargs sa;
	struct sargs *s = &sa;
	s->args[0] = regs->di;
	s->args[1] = regs->si;
	s->args[2] = regs->dx;
	s->args[3] = regs->r10;
	s->args[4] = regs->r8;
	s->args[5] = regs->r9;
	s->args[6] = s->args[7] = 0;
	if (nr == 72 /* fcntl */ && s->args[1] != 0 /* F_DUPFD */ && s->args[1] != 1030 /* F_DUPFD_CLOEXEC */)
		return 0;
	if (nr == 28 /* madvise */ && s->args[2] != 4 /* MADV_DONTNEED */)
		return 0;

	if (kind == K_WRITE) {
		if (ret <= 0)
			return 0;
		__u64 aux[3] = {};
		struct file *f = fd_info(task, s->args[0], aux);
		if (!f || (aux[2] & S_IFMT) != S_IFREG)
			return 0; /* pipes, sockets, ttys: not file data */
		struct tr_syscall *r = reserve(sizeof(*r));
		if (!r)
			return 0;
		fill_sc(r, TR_SYSCALL, sizeof(*r), id, nr, ret, s);
		r->aux[0] = aux[0];
		r->aux[1] = aux[1];
		r->aux[2] = aux[2];
		r->aux[3] = f->f_pos;
		submit(r);
		return 0;
	}

	if (kind == K_PATH || kind == K_PATH2 || kind == K_SOCKADDR) {
		struct tr_syscall_path *r = reserve(sizeof(*r));
		if (!r)
			return 0;
		fill_sc(&r->sc, TR_SYSCALL_PATH, sizeof(*r), id, nr, ret, s);
		r->path_len[0] = r->path_len[1] = 0;
		if (kind == K_SOCKADDR) {
			__u64 len = s->args[2];
			if (len > TR_PATH_MAX)
				len = TR_PATH_MAX;
			if (len > 0 &&
			    bpf_probe_read_user(r->path[0], len & (TR_PATH_MAX - 1) ? len & (TR_PATH_MAX - 1) : TR_PATH_MAX, (void *)s->args[1]) == 0)
				r->path_len[0] = len;
			struct file *f = fd_info(task, s->args[0], r->sc.aux);
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
				fd_info(task, ret, r->sc.aux);
			}
		}
		submit(r);
		return 0;
	}

	struct tr_syscall *r = reserve(sizeof(*r));
	if (!r)
		return 0;
	fill_sc(r, TR_SYSCALL, sizeof(*r), id, nr, ret, s);
	if (kind == K_FD_RET && ret >= 0) {
		fd_info(task, ret, r->aux);
	} else if (kind == K_FD_ARG) {
		fd_info(task, s->args[p0], r->aux);
	} else if (kind == K_ACCEPT && ret >= 0) {
		struct file *f = fd_info(task, ret, r->aux);
		if (f) {
			r->aux[3] = file_sock(f, r->aux[2]);
			track_sock(r->aux[3], id >> 32);
		}
	} else if (kind == K_PIPE && ret == 0) {
		int fds[2] = { -1, -1 };
		if (bpf_probe_read_user(fds, sizeof(fds), (void *)s->args[p0]) == 0) {
			__u64 a[3] = {};
			r->aux[0] = fds[0];
			r->aux[1] = fds[1];
			if (fd_info(task, fds[0], a))
				r->aux[2] = a[0];
			if (fd_info(task, fds[1], a))
				r->aux[3] = a[0];
		}
	}
	submit(r);
	return 0;
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

/* Every user page fault of every task on the machine runs this: the write
 * bit first (a load from the context), so that read faults skip even the
 * filter; then the filter, with the tgid from the task the VMA lookup needs
 * anyway (one helper, not two). */
SEC("tracepoint/exceptions/page_fault_user")
int tp__exceptions__page_fault_user(struct pf_ctx *ctx)
{
	if (!(ctx->error_code & 2 /* X86_PF_WRITE */))
		return 0;
	struct task_struct *t = bpf_get_current_task_btf();
	__u32 tgid = t->tgid;
	if (!is_app(tgid))
		return 0;
	struct tr_fault_key k = { .tgid = tgid };
	__u64 start = 0;
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
	int app = is_app(tgid);
	if (app) {
		if (!owner)
			track_sock(sk, tgid);
	} else if (!owner) {
		return 0; /* softirq context or another task: only known app sockets */
	}
	struct tr_tcp_state *r = reserve(sizeof(*r));
	if (r) {
		fill_hdr(&r->hdr, TR_TCP_STATE, sizeof(*r), id);
		if (!app) {
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
