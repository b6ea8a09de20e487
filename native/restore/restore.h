/* understudy-restore: brings a checkpointed app back from an image (epoch 0
 * plus deltas) with the same PIDs, in a new PID namespace, rebuilt from
 * outside with ptrace and injected syscalls. One file per mechanism:
 *   err.c     errors (code + message naming the call, object, errno)
 *   image.c   image reading, through the image library (native/common/image.c):
 *             meta frames, crcs, the epoch chain, the merged page map
 *   checks.c  everything refused before a process is created
 *   inject.c  ptrace: seize, wait, syscall injection through the stub page
 *   tree.c    PID namespace, reaper, process skeletons (clone3 + set_tid)
 *   mem.c     address space: unmap, [vdso]/[vvar] moves, mmap, page writes,
 *             PR_SET_MM_MAP
 *   files.c   fds, cwd/root, umask, rlimits, creds
 *   fdobj.c   pipes, eventfds, epoll, fds sharing an open file description
 *   locks.c   file locks (POSIX, OFD, flock), after every fd is in place
 *   task.c    threads, signals, per-thread state, registers, detach
 *   timers.c  POSIX timers with their ids, interval timers
 *   main.c    command line, order of the phases, JSON report */
#ifndef UNDERSTUDY_RESTORE_H
#define UNDERSTUDY_RESTORE_H
#pragma GCC diagnostic ignored "-Wformat-truncation"
#include "errfmt.h"
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <sys/user.h>
#include "understudy/v1/image.pb-c.h"
#include "image.h"

#define IMAGE_VERSION 1
#define PAGE_SZ 4096UL
typedef Understudy__V1__Process Proc;
typedef Understudy__V1__Thread Thr;
typedef Understudy__V1__Vma Vma;

/* a thread's id in its PID namespace (images without ns_tid: its host tid) */
static inline pid_t thr_ns_tid(const Thr *th)
{
	return th->ns_tid ? th->ns_tid : th->tid;
}

/* ---- err.c ---- */
extern struct err_value g_err;   /* the first error of this restore (errfmt.h) */
int fail(const char *code, int errnum, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
uint64_t now_ns(void);
extern bool g_verbose;
void vlog(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* ---- image.c: the image library (native/common/image.h: struct image,
 * struct epoch_img, struct page_ref, crc_page) with the restorer's errors ---- */
int image_open(struct image *im, const char *dir, int64_t epoch);
int image_verify_pages(struct image *im);
/* crc32 of every page that will be written, on all cores */
int image_verify_refs(struct image *im, pid_t pid, const struct page_ref *v, size_t n);
/* The pages of process `pid` as of the last epoch, sorted by vaddr. */
int image_page_map(struct image *im, pid_t pid, struct page_ref **out, size_t *n);
void image_close(struct image *im);

/* ---- checks.c ---- */
enum tty_mode { TTY_NULL, TTY_INHERIT };
int check_all(struct image *im);
int check_file_id(const Understudy__V1__FileId *id, const char *what, pid_t pid);

/* ---- restore state ---- */
struct rtask {
	pid_t tid;
	Thr *th;                   /* NULL for the leader before it is matched */
	struct user_regs_struct base;
	bool attached;
};
struct rproc {
	Proc *pr;
	pid_t pid;
	int parent;                /* index in procs, -1 for the root */
	struct rtask *tasks;       /* tasks[0] is the leader */
	size_t ntasks;
	bool created;
	struct page_ref *pages;
	size_t npages;
};
struct restore {
	struct image im;
	struct rproc *procs;
	size_t nprocs;
	pid_t reaper;              /* host pid of the namespace's pid 1 */
	bool root_is_init;         /* app root was pid 1 of its own namespace */
	uint64_t stub;             /* base of the stub region in every process */
	enum tty_mode tty;
	uint64_t t_start;
	uint64_t bytes_written;
};
extern struct restore R;

#define STUB_PAGES 64
#define STUB_SCRATCH (R.stub + PAGE_SZ)
#define STUB_SCRATCH_LEN (15 * PAGE_SZ)
#define STUB_TMP (R.stub + 16 * PAGE_SZ)
#define STUB_TMP_LEN (48 * PAGE_SZ)
/* The scratch pages, where injected calls find their arguments: one layout
 * for every file, so that no two uses overlap. */
#define SCR_ARGS (STUB_SCRATCH + 0)           /* 512: clone_args, k_sigaction, siginfo, prctl_mm_map */
#define SCR_SET_TID (STUB_SCRATCH + 512)      /* 512: clone3's set_tid array */
#define SCR_ALTSTACK (STUB_SCRATCH + 1024)    /* 1024: a stack_t */
#define SCR_COMM (STUB_SCRATCH + 2048)        /* 1024: a comm */
#define SCR_TIMER (STUB_SCRATCH + 3072)       /* 1024: itimerspec / sigevent + timer id / 2 timevals */
#define SCR_PATH (STUB_SCRATCH + 4096)       /* 4096: a path (scratch_str) */
#define SCR_PATH_LEN 4096
#define SCR_TABLE (STUB_SCRATCH + 8192)       /* 8192: supplementary groups, auxv */
#define SCR_TABLE_LEN 8192
#define SCR_FDOBJ (STUB_SCRATCH + 16384)      /* 64: pipe2's fds, an epoll_event, an eventfd count */
#define SCR_LOCK (STUB_SCRATCH + 16384 + 128) /* 64: a struct flock */
#define SCR_BUF_OFF 20480                     /* to the end: pipe data */

/* ---- inject.c ---- */
int seize_task(pid_t tid, bool interrupt);
int wait_stop(pid_t tid, int *status);
int task_prepare(struct rtask *t);
/* inject syscall nr into task t; *child gets the pid/tid of a task it created */
int inj(struct rtask *t, long nr, long a0, long a1, long a2, long a3, long a4, long a5, long *ret, pid_t *child);
int inj_ok(struct rtask *t, const char *what, long nr, long a0, long a1, long a2, long a3, long a4, long a5, long *ret);
int poke(pid_t pid, uint64_t addr, const void *src, size_t len);
int inj_clone3(struct rtask *t, pid_t holder, uint64_t flags, int exit_signal, pid_t ns_id, pid_t host_id, const char *what, pid_t *out);
int peek(pid_t pid, uint64_t addr, void *dst, size_t len);
/* copy a path into its place in the scratch pages; returns its address (0: error set) */
uint64_t scratch_str(pid_t pid, const char *s);

/* ---- tree.c ---- */
int tree_plan(void);
int tree_create(void);
void tree_kill(void);
/* the restore is done: the reaper (if any) stops dying with the restorer. 0 or -1 (failure set) */
int tree_commit(void);
int tree_set_stub_candidates(const uint64_t *c, int n);

/* ---- mem.c ---- */
int mem_clean(struct rproc *p);
int mem_specials(struct rproc *p);
int mem_restore(struct rproc *p);
int mem_mm_map(struct rproc *p);
uint64_t mem_pick_stub(void);

/* ---- files.c ---- */
int files_restore(struct rproc *p);
int proc_misc_restore(struct rproc *p);
int creds_restore(struct rproc *p);

/* ---- fdobj.c: pipes, eventfds, epoll, shared open file descriptions ---- */
int fdobj_plan(void);
/* places f if it is a dup of a description already in place or a pipe,
 * eventfd or epoll (*done true); else leaves it to files.c (*done false) */
int fdobj_place(struct rproc *p, const Understudy__V1__Fd *f, int base, bool *done);
void fdobj_register(struct rproc *p, const Understudy__V1__Fd *f);
int fdobj_epolls(struct rproc *p);
int fdobj_finish(void);

/* ---- locks.c: file locks, taken again once every fd is in place ---- */
int locks_plan(void);
int locks_restore(void);

/* ---- task.c ---- */
int signals_reset(struct rproc *p);
int threads_create(struct rproc *p);
int task_state_restore(struct rproc *p);

/* ---- sched.c ---- */
/* refuses an image whose scheduling values are not valid ones */
int sched_check(const Proc *pr);
/* policy, priority, nice and affinity of every thread of p (on its new tids) */
int sched_restore(struct rproc *p);
int signals_restore(struct rproc *p);
int signals_queue(struct rproc *p);
int tasks_finish(struct rproc *p);
int tasks_detach(void);
/* ---- timers.c: POSIX timers (same ids) and interval timers ---- */
int timers_check(void);               /* before any process exists */
int timers_create(struct rproc *p);   /* before the credentials: created disarmed */
int timers_arm(struct rproc *p);      /* last, before the registers: the time left starts then */

#endif
