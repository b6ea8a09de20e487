/* Understudy checkpoint engine: shared state and the interfaces between its
 * files (one kernel mechanism per file). */
#ifndef UNDERSTUDY_ENGINE_H
#define UNDERSTUDY_ENGINE_H
/* paths are bounded by PATH_MAX-sized buffers; a longer one is cut, never overrun */
#pragma GCC diagnostic ignored "-Wformat-truncation"
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <sys/types.h>
#include <sys/user.h>
#include "understudy/v1/engine.pb-c.h"
#include "understudy/v1/image.pb-c.h"
#include "../../bpf/engine_task.h"
#include "errfmt.h"
#include "frame.h"
#include "image.h"

#define ENGINE_VERSION 2 /* 2: EngineReply.code is the ErrorCode enum (field 9) */
#define IMAGE_VERSION 1
#define PAGE_SZ 4096UL

/* ---- errors (native/common/errfmt) ----------------------------------------
 * One error per failing command: a stable code, a message naming the call,
 * the object and errno. Functions return -1 after setting it. Per thread:
 * the memory workers and the epoch writer run beside the tracer. */
#include "fail.h"

/* ---- prof.c: clock, and the per-step profile of a pause ------------------ */
uint64_t now_ns(void);
bool prof_enabled(void);
void prof_mark(const char *label); /* end of a step on this thread */
void prof_flush(uint64_t t0);
void prof_sched_begin(void); /* run-queue wait and steal time over a pause */
void prof_sched_end(void);   /* one JSON line per checkpoint, after the release */

/* ---- pool.c: the pause's helper threads -------------------------------- */
#define POOL_WORKERS 2
#define POOL_MEM 0					  /* runs the memory phase beside the tracer */
#define POOL_HELPER 1					  /* second scanner / copier of the memory phase */
int pool_post(int worker, void (*fn)(void *), void *arg); /* -1: no thread, run it yourself */
void pool_wait(int worker);
/* fn(ctx, i) for i in [0, n), shared by the caller and POOL_HELPER; the
 * first error stops the rest and is returned (g_err). Call it from one
 * thread at a time (POOL_MEM, or the tracer when there is no memory thread). */
int pool_par_for(size_t n, int (*fn)(void *ctx, size_t i), void *ctx);
void pool_assist(int worker); /* the tracer helps worker's loops until it is done */
void pause_sched(bool on);    /* the calling thread real-time (SCHED_FIFO 1) or back */

/* ---- tasks and processes ------------------------------------------------- */
enum task_state {
	TS_RUNNING = 0, /* resumed, not in a ptrace stop we know of */
	TS_STOPPED,	/* in our interrupt stop (barrier) */
	TS_NEWBORN,	/* auto-attached, its first stop not seen yet */
};

struct task {
	pid_t tid;
	pid_t tgid;
	enum task_state state;
	bool dead;
	bool group_stopped;	 /* in a job-control stop: resume with PTRACE_LISTEN */
	pid_t vfork_child;	 /* blocked in vfork() until this child execs or exits */
	bool vfork_seen_in_proc; /* vfork_child found in /proc (a vfork begun before the seize), not by an event */
	bool need_first_info;	 /* clear_tid / sigaltstack not read yet */
	uint64_t clear_tid;
	uint64_t ss_sp, ss_size;
	int ss_flags;
	pid_t ns_tid; /* tid in its own PID namespace, 0 not read yet (never changes) */
};

struct region { /* one line of /proc/PID/maps */
	uint64_t start, end, pgoff, inode;
	uint32_t prot;
	bool shared;
	uint32_t maj, min;
	char name[512];
};

struct proc {
	pid_t pid;
	bool dead;
	bool is_new;	   /* not yet part of any epoch */
	bool need_mm_init; /* new mm (first seen, forked or exec'd): set up uffd */
	int uffd;	   /* engine-side fd of the app's userfaultfd, -1 none */
	int pagemap_fd;
	uint64_t uffd_features;
	uint64_t syscall_insn; /* address of a `syscall` instruction in the vDSO */
	struct region *maps;   /* maps at the last barrier */
	size_t nmaps;
	uint64_t brk; /* brk at the last barrier (injected brk(0)) */
	uint64_t heap_start, heap_end;
	bool brk_valid;
	void *iter_link;     /* struct bpf_link of the task iterator, NULL none */
	bool kstate_checked; /* iterator compared with injection once (new mm) */
};

struct engine {
	struct task *tasks;
	size_t ntasks, cap_tasks;
	struct proc *procs;
	size_t nprocs, cap_procs;
	pid_t root_pid;
	bool attached;
	bool track_dirty;
	bool include_children;
	/* image chain: the newest epoch taken (written or in the writer's
	 * queue) and the newest written */
	bool has_epoch;
	uint32_t last_epoch;
	bool has_written;
	uint32_t last_written;
	char image_dir[4096];
	char image_id[40];
	int sigchld_fd;
};
extern struct engine E;

struct task *task_find(pid_t tid);
struct task *task_add(pid_t tid, pid_t tgid, enum task_state st);
struct proc *proc_find(pid_t pid);
struct proc *proc_add(pid_t pid);

/* ---- ptrace.c: seize, barrier, release, events --------------------------- */
int check_ours(pid_t pid);
int seize_tree(pid_t root, bool children);
int barrier(uint64_t timeout_ms);
int release_all(void);
int pump_events(int timeout_ms); /* handle stops between barriers */
void detach_all(void);
size_t live_threads(void);

/* ---- inject.c: syscall injection into a stopped thread ------------------- */
int inject_syscall(struct proc *p, pid_t tid, long nr, const long args[6], long *ret);
/* Several syscalls into one thread in a row: registers and signal mask saved
 * once, each call stepped from the previous one's trap stop, and one return
 * to the interrupt stop at inject_end (which also ends a session whose call
 * failed, and reports that failure). Between calls the thread sits in its
 * trap stop: its memory may be read, nothing else of it touched. */
struct inject_session {
	struct proc *p;
	pid_t tid;
	struct user_regs_struct saved;
	uint64_t mask;
	long last_nr;
	bool open;   /* registers and mask to put back */
	bool failed; /* a call failed: inject_end returns -1 */
	bool gone;   /* the thread died: nothing to put back */
};
int inject_begin(struct inject_session *s, struct proc *p, pid_t tid);
int inject_call(struct inject_session *s, long nr, const long args[6], long *ret);
int inject_end(struct inject_session *s);
int find_syscall_insn(struct proc *p);
uint64_t scratch_addr(pid_t tid);

/* ---- uffd.c: userfaultfd registration, write-protect, PAGEMAP_SCAN ------- */
int uffd_init(struct proc *p, pid_t tid);
void uffd_close(struct proc *p);
int uffd_register_wp(struct proc *p, uint64_t start, uint64_t end);
/* PAGEMAP_SCAN helpers: collect ranges into a growable vector. */
struct range_vec {
	struct {
		uint64_t start, end, cat;
	} * v;
	size_t n, cap;
};
void rv_free(struct range_vec *rv);
int rv_push(struct range_vec *rv, uint64_t s, uint64_t e, uint64_t cat);
/* returns 0, or -1 with g_err; *eperm set when the region is not wp-async tracked */
int scan_written(struct proc *p, uint64_t start, uint64_t end, struct range_vec *out, bool *eperm);
int scan_data(struct proc *p, uint64_t start, uint64_t end, struct range_vec *out);

/* ---- proc.c: /proc parsing ----------------------------------------------- */
ssize_t read_file(const char *path, char **buf);
/* read fd to its end into *buf (grown, *cap kept for reuse), NUL-terminated */
ssize_t read_all(int fd, char **buf, size_t *cap, const char *what);
int read_maps(pid_t pid, struct region **out, size_t *n);
int list_tasks(pid_t pid, pid_t **tids, size_t *n);
int list_children(pid_t pid, pid_t **kids, size_t *n);
void status_cache(bool on);
int proc_status_field(pid_t pid, const char *key, char *val, size_t len);
int fill_process_info(pid_t pid, Understudy__V1__Process *pr);
int file_identity(const char *path, int fd, Understudy__V1__FileId *id);
void free_process_info(Understudy__V1__Process *pr);
enum region_kind {
	RK_ANON,
	RK_FILE_PRIVATE,
	RK_FILE_SHARED,
	RK_VDSO,
	RK_VVAR,
	RK_VSYSCALL,
	RK_SHARED_ANON
};
enum region_kind region_kind(const struct region *r);

struct kstate;
/* ---- thread.c: per-thread state ------------------------------------------ */
int capture_thread(struct proc *p, struct task *t, Understudy__V1__Thread *th, const struct et_rec *kt);
int capture_sigactions(struct proc *p, pid_t tid, Understudy__V1__Process *pr, const struct kstate *ks);
int capture_brk(struct proc *p, pid_t tid, uint64_t *brk);
int capture_shared_pending(pid_t tid, Understudy__V1__Process *pr);
void free_thread(Understudy__V1__Thread *th);

/* ---- taskiter.c: handlers, clear_tid, sigaltstack, brk via a BPF task iterator */
struct kstate {
	const struct et_rec *recs;
	size_t n;
};
struct sa_val {
	uint64_t handler, flags, restorer, mask;
};
void taskiter_init(void); /* at attach; on failure the engine injects */
bool taskiter_ok(void);
void taskiter_disable(const char *why);
void taskiter_close(struct proc *p);
int taskiter_read(struct proc *p, struct kstate *ks); /* valid until the next read */
const struct et_rec *kstate_task(const struct kstate *ks, pid_t tid);
int kstate_sigactions(const struct kstate *ks, struct sa_val out[64]);

/* ---- timers.c: interval timers (task iterator) and POSIX timers ---------- */
/* after capture_shared_pending (a fired ITIMER_REAL is checked against it);
 * ks NULL: without the task iterator, getitimer is injected */
int capture_itimers(struct proc *p, pid_t lead_tid, Understudy__V1__Process *pr, const struct kstate *ks);
int capture_posix_timers(struct proc *p, pid_t lead_tid, Understudy__V1__Process *pr);
int check_posix_timers(pid_t pid); /* what /proc/PID/timers shows that cannot be restored */

/* ---- fds.c --------------------------------------------------------------- */
int capture_fds(pid_t pid, Understudy__V1__Process *pr);
int check_fds_supported(pid_t pid);
/* ---- locks.c: file locks from the fdinfo text the fd walk read ----------
 * Refuses what cannot be restored; with f, records the fd's share of the
 * locks (each lock once in the image). pr: the fds recorded so far. */
int locks_capture(pid_t pid, int fd, const char *target, Understudy__V1__Fd__Kind kind, const char *info, Understudy__V1__Process *pr,
		  Understudy__V1__Fd *f);
int check_injectable(pid_t pid); /* no seccomp that could kill an injected syscall */

/* ---- mem.c: regions, page capture ---------------------------------------- */
struct page_buf { /* captured pages of one epoch, in copy order */
	uint8_t *data;
	size_t len, cap; /* cap: populated */
	size_t vcap;	 /* address range reserved: grows in place up to it */
};
struct proc_capture { /* per process, per epoch */
	struct proc *p;
	struct range_vec pages; /* page ranges captured, data in page_buf order */
	struct range_vec reset;
	struct range_vec zeroed;
	uint32_t new_regions;
	Understudy__V1__Process *meta;
	struct region *cur; /* maps read at this barrier, if still valid */
	size_t ncur;
	uint64_t heap_start, heap_end; /* [heap] in the maps of this barrier */
	bool heap_known;	       /* heap_start/end read (without the task iterator) */
};
int mem_plan(struct proc *p, struct proc_capture *pc, bool full, bool track);
int buf_reserve(struct page_buf *buf, size_t want);
/* want bytes populated, in a range of at least `reserve` bytes */
int buf_reserve2(struct page_buf *buf, size_t want, size_t reserve);
extern int g_state_done; /* set by the tracer when its injections of this barrier are over */
int mem_copy(struct proc_capture *pc, struct page_buf *buf, uint32_t stall_ms, void (*progress)(const char *));
int fill_vmas(struct proc *p, Understudy__V1__Process *pr);

/* ---- image.c: the epoch writer (a thread, over native/common/image.h) ---- */
struct epoch_out {
	uint32_t epoch;
	bool full;
	uint64_t pause_ns;
	struct proc_capture *pcs;
	size_t npcs;
	struct page_buf *buf;
};
/* capture buffers: one per epoch in flight, kept for reuse (populated) */
struct page_buf *buf_get(size_t want, size_t reserve);
void buf_put(struct page_buf *b);
/* EpochMeta of a captured epoch in the current arena; the page index's
 * crcs are left to the writer */
Understudy__V1__EpochMeta *epoch_meta_build(const char *image_id, struct epoch_out *eo, uint32_t parent);
enum {
	JOB_DIR = 1,
	JOB_STREAM = 2
};
struct epoch_job { /* one epoch handed to the writer */
	struct epoch_job *next;
	uint64_t req_id;
	uint32_t epoch;
	uint32_t gen;	   /* chain generation: a failed write drops the rest of its generation */
	unsigned sinks;	   /* JOB_DIR | JOB_STREAM */
	unsigned flags;	   /* IMG_W_FSYNC */
	uint32_t delay_ms; /* test hook: wait before writing */
	bool kill_after;
	char dir[4096];
	Understudy__V1__EpochMeta *meta;
	struct page_buf *buf;
	char vdir[4096]; /* verification copy (full, another image), or none */
	Understudy__V1__EpochMeta *vmeta;
	struct page_buf *vbuf;
	void *arena;			      /* the epoch's metadata (arena_detach) */
	Understudy__V1__CheckpointResult *cr; /* the reply, completed when written */
	uint64_t t_released, t_start, t_done;
	/* results */
	int rc, vrc;
	bool streamed;
	struct err_value err;
	struct img_wstats st;
	char path[IMG_PATH], vpath[IMG_PATH];
};
int writer_init(int stream_fd); /* stream_fd -1: no epoch stream */
int writer_event_fd(void);	/* readable when written epochs wait for their reply */
bool writer_has_stream(void);
int writer_push(struct epoch_job *j);			    /* takes the current arena with it */
struct epoch_job *writer_take_done(void);		    /* list, in capture order */
void writer_load(uint32_t *epochs, uint64_t *queued_bytes); /* in flight; queued behind the one being written */
void job_free(struct epoch_job *j);
void writer_yield(bool on); /* the writer below the app (a barrier), or back */
int image_dir_prepare(const char *dir, bool must_be_empty);
void new_image_id(char *out);

#endif
