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
 *   apply.c   a delta of the same image chain applied in place to a built,
 *             stopped clone (regions, pages, threads, per-thread state)
 *   service.c the phases of a restore as requests: build, apply, resume,
 *             check, abort (one struct restorer per clone)
 *   main.c    command line: the service on a frame stream, or a one-shot
 *             restore (build + resume)
 *
 * Every piece of state of one restore lives in a struct restorer, reached
 * from the objects passed around (a process's rproc.rs, a task's
 * rtask.proc): one restorer process holds one clone from build to resume. The
 * only process-wide values are the error of the current request (g_err, a
 * thread's own, like errno) and the verbosity of the log. */
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
#include "fail.h" /* g_err: the first error of the current request; fail() */
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
/* apply: epoch target + 1 (a delta of the same image) joins the chain */
int image_extend(struct image *im, uint32_t epoch);
/* frees the epochs before `epoch` (apply, once the clone is at it) */
void image_release_before(struct image *im, uint32_t epoch);
int image_page_map(struct image *im, pid_t pid, struct page_ref **out, size_t *n);
void image_close(struct image *im);

/* ---- checks.c ---- */
enum tty_mode {
	TTY_NULL,
	TTY_INHERIT
};
struct restorer;
int check_all(struct restorer *rs);
int check_meta(struct restorer *rs, Understudy__V1__EpochMeta *m, bool (*known)(struct restorer *, pid_t));
int check_file_id(struct restorer *rs, const Understudy__V1__FileId *id, const char *what, pid_t pid);
void checks_free(struct restorer *rs);

/* ---- restore state ---- */
struct rproc;
struct rtask {
	struct rproc *proc; /* the process it belongs to */
	pid_t tid;
	Thr *th; /* NULL for the leader before it is matched */
	struct user_regs_struct base;
	bool attached;
};
struct rproc {
	struct restorer *rs;
	Proc *pr;
	pid_t pid;
	int parent;	     /* index in procs, -1 for the root */
	struct rtask *tasks; /* tasks[0] is the leader */
	size_t ntasks;
	bool created;
	bool keep_exe; /* apply: a fork of its parent keeps the executable it inherited */
	struct page_ref *pages;
	size_t npages;
};
struct idc;
struct ofd;
struct rpipe;
enum rs_state {
	RS_EMPTY,
	RS_CHECKED,
	RS_BUILT,
	RS_RESUMED
};
enum {
	PH_READ,
	PH_VERIFY,
	PH_CHECK,
	PH_TREE,
	PH_REBUILD,
	PH_FINISH,
	PH_APPLY,
	PH_N
};
struct restorer {
	enum rs_state state;
	uint64_t phase[PH_N]; /* ns per phase (service.c) */
	struct image im;
	bool im_open;
	struct rproc *procs;
	size_t nprocs;
	pid_t reaper;	   /* host pid of the namespace's pid 1 */
	bool root_is_init; /* app root was pid 1 of its own namespace */
	uint64_t stub;	   /* base of the stub region in every process */
	enum tty_mode tty;
	uint64_t t_start;
	uint64_t bytes_written;
	/* tree.c: the new namespace's first process reports ready; restorer ->
	 * reaper "commit" byte, reaper -> restorer acknowledgement */
	int ready_pipe[2], commit_pipe[2], ack_pipe[2];
	uint64_t stub_cands[16];
	int nstub;
	/* checks.c: one identity check per file */
	struct idc *idcache;
	size_t nidc, capidc;
	/* fdobj.c: descriptions in place, pipes */
	struct ofd *ofds;
	size_t nofds, capofds;
	struct rpipe *pipes;
	size_t npipes;
};
/* the restorer a process or task belongs to, as `rs` (the SCR_ macros use it) */
#define RS_OF(p) struct restorer *rs __attribute__((unused)) = (p)->rs
#define RS_OF_TASK(t) struct restorer *rs __attribute__((unused)) = (t)->proc->rs
/* a restorer with nothing in it yet (every fd -1) */
void restorer_init(struct restorer *rs);

#define STUB_PAGES 64
/* the macros below need a `struct restorer *rs` in scope */
#define STUB_SCRATCH (rs->stub + PAGE_SZ)
#define STUB_SCRATCH_LEN (15 * PAGE_SZ)
#define STUB_TMP (rs->stub + 16 * PAGE_SZ)
#define STUB_TMP_LEN (48 * PAGE_SZ)
/* The scratch pages, where injected calls find their arguments: one layout
 * for every file, so that no two uses overlap. */
#define SCR_ARGS (STUB_SCRATCH + 0)	   /* 512: clone_args, k_sigaction, siginfo, prctl_mm_map */
#define SCR_SET_TID (STUB_SCRATCH + 512)   /* 512: clone3's set_tid array */
#define SCR_ALTSTACK (STUB_SCRATCH + 1024) /* 1024: a stack_t */
#define SCR_COMM (STUB_SCRATCH + 2048)	   /* 1024: a comm */
#define SCR_TIMER (STUB_SCRATCH + 3072)	   /* 1024: itimerspec / sigevent + timer id / 2 timevals */
#define SCR_PATH (STUB_SCRATCH + 4096)	   /* 4096: a path (scratch_str) */
#define SCR_PATH_LEN 4096
#define SCR_TABLE (STUB_SCRATCH + 8192) /* 8192: supplementary groups, auxv */
#define SCR_TABLE_LEN 8192
#define SCR_FDOBJ (STUB_SCRATCH + 16384)      /* 64: pipe2's fds, an epoll_event, an eventfd count */
#define SCR_LOCK (STUB_SCRATCH + 16384 + 128) /* 64: a struct flock */
#define SCR_BUF_OFF 20480		      /* to the end: pipe data */

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
uint64_t scratch_str(struct rproc *p, const char *s);

/* ---- tree.c ---- */
int tree_plan(struct restorer *rs);
int tree_create(struct restorer *rs);
void tree_kill(struct restorer *rs);
/* the restore is done: the reaper (if any) stops dying with the restorer. 0 or -1 (failure set) */
int tree_commit(struct restorer *rs);
int tree_set_stub_candidates(struct restorer *rs, const uint64_t *c, int n);
/* a process of the image (epoch of rs->im.last) created by its parent in
 * the clone, with its threads' skeletons not yet there: for apply.c */
int tree_create_child(struct restorer *rs, struct rproc *p);

/* ---- mem.c ---- */
int mem_clean(struct rproc *p);
int mem_specials(struct rproc *p);
int mem_restore(struct rproc *p);
int mem_mm_map(struct rproc *p);
/* the mm fields and auxv again, the executable left as it is (apply) */
int mem_mm_fields(struct rproc *p);
uint64_t mem_pick_stub(struct restorer *rs);

/* ---- files.c ---- */
int files_restore(struct rproc *p);
/* one fd of the image opened by path (file, directory, device, terminal) */
int files_open_one(struct rproc *p, const Understudy__V1__Fd *f);
int proc_misc_restore(struct rproc *p);
int creds_restore(struct rproc *p);

/* ---- fdobj.c: pipes, eventfds, epoll, shared open file descriptions ---- */
int fdobj_plan(struct restorer *rs);
/* places f if it is a dup of a description already in place or a pipe,
 * eventfd or epoll (*done true); else leaves it to files.c (*done false) */
int fdobj_place(struct rproc *p, const Understudy__V1__Fd *f, int base, bool *done);
void fdobj_register(struct rproc *p, const Understudy__V1__Fd *f);
int fdobj_epolls(struct rproc *p);
int fdobj_finish(struct restorer *rs);
bool fdobj_known(struct restorer *rs, uint64_t ofd_id);
/* apply: fd of p was closed: no description is taken from it any more */
void fdobj_forget(struct restorer *rs, const struct rproc *p, int fd);
void fdobj_rebase(struct restorer *rs, const struct rproc *old_base, struct rproc *new_base, const int *map);

/* ---- locks.c: file locks, taken again once every fd is in place ---- */
int locks_plan(struct restorer *rs);
int locks_restore(struct restorer *rs);

/* ---- task.c ---- */
int signals_reset(struct rproc *p);
int threads_create(struct rproc *p);
int task_state_restore(struct rproc *p);
int thread_state_restore(struct rproc *p, struct rtask *t, const Thr *old);

/* ---- sched.c ---- */
/* refuses an image whose scheduling values are not valid ones */
int sched_check(const Proc *pr);
/* policy, priority, nice and affinity of every thread of p (on its new tids) */
int sched_restore(struct rproc *p);
int signals_restore(struct rproc *p);
int signals_queue(struct rproc *p);
int tasks_finish(struct rproc *p);
int tasks_detach(struct restorer *rs);
/* ---- timers.c: POSIX timers (same ids) and interval timers ---- */
int timers_check(struct restorer *rs); /* before any process exists */
int timers_create(struct rproc *p);    /* before the credentials: created disarmed */
int timers_arm(struct rproc *p);       /* last, before the registers: the time left starts then */

#endif
