/* understudy-engine: a long-lived process per app, driven over stdin/stdout
 * with length-prefixed EngineRequest/EngineReply frames (engine.proto).
 * Commands: attach (seize the app), checkpoint (barrier, capture, release,
 * write epoch N), status, detach, kill_app. End of stdin or SIGTERM detaches
 * and leaves the app running. */
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <unistd.h>
#include "arena.h"
#include "engine.h"
#include "fdobj.h"

__thread struct err_value g_err;

#define MAX_FRAME (64u << 20)

static uint64_t cur_req_id;
static bool need_full;            /* tracking lost its continuity: next epoch is full */
static struct page_buf g_buf, g_vbuf;

static void send_reply(Understudy__V1__EngineReply *r)
{
	r->version = ENGINE_VERSION;
	if (frame_write(1, &r->base))
		exit(3);   /* the agent is gone: nothing to report to */
}

static void progress(const char *stage)
{
	Understudy__V1__EngineReply r = UNDERSTUDY__V1__ENGINE_REPLY__INIT;
	r.id = cur_req_id;
	r.ok = true;
	r.progress = true;
	r.stage = (char *)stage;
	send_reply(&r);
}

static struct task *lead_task(struct proc *p)
{
	struct task *t = task_find(p->pid);
	if (t && t->state == TS_STOPPED)
		return t;
	for (size_t i = 0; i < E.ntasks; i++)
		if (!E.tasks[i].dead && E.tasks[i].tgid == p->pid && E.tasks[i].state == TS_STOPPED)
			return &E.tasks[i];
	return NULL;
}

static int check_supported_all(void)
{
	for (size_t i = 0; i < E.nprocs; i++) {
		struct proc *p = &E.procs[i];
		if (p->dead)
			continue;
		if (check_fds_supported(p->pid))
			return -1;
		struct region *m;
		size_t n;
		if (read_maps(p->pid, &m, &n))
			return -1;
		for (size_t k = 0; k < n; k++)
			if (region_kind(&m[k]) == RK_SHARED_ANON) {
				fail("E_UNSUPPORTED", 0, "pid %d: shared anonymous/shmem mapping 0x%llx-0x%llx (%s) is not supported yet", p->pid,
				     (unsigned long long)m[k].start, (unsigned long long)m[k].end,
				     m[k].name[0] ? m[k].name : "MAP_SHARED|MAP_ANONYMOUS");
				free(m);
				return -1;
			}
		free(m);
	}
	return 0;
}

static int do_attach(Understudy__V1__AttachCmd *c, Understudy__V1__EngineReply *rep)
{
	if (E.attached)
		return fail("E_USAGE", 0, "already attached to pid %d", E.root_pid);
	uint64_t t0 = now_ns();
	if (check_ours(c->pid))
		return -1;
	taskiter_init();
	if (seize_tree(c->pid, c->include_children)) {
		struct err_value keep = g_err;
		detach_all();
		g_err = keep;
		return -1;
	}
	E.attached = true;
	E.track_dirty = c->track_dirty;
	E.include_children = c->include_children;
	pump_events(0);
	if (check_supported_all()) {
		struct err_value keep = g_err;
		detach_all();
		g_err = keep;
		return -1;
	}
	Understudy__V1__AttachResult *ar = ANEW(Understudy__V1__AttachResult, understudy__v1__attach_result__init);
	ar->pids = amalloc(E.nprocs * sizeof(int32_t) + 4);
	ar->n_pids = 0;
	for (size_t i = 0; i < E.nprocs; i++)
		if (!E.procs[i].dead)
			ar->pids[ar->n_pids++] = E.procs[i].pid;
	ar->threads = live_threads();
	ar->seize_ns = now_ns() - t0;
	rep->result_case = UNDERSTUDY__V1__ENGINE_REPLY__RESULT_ATTACH;
	rep->attach = ar;
	return 0;
}

static void kill_app(void)
{
	for (size_t i = 0; i < E.nprocs; i++)
		if (!E.procs[i].dead)
			kill(E.procs[i].pid, SIGKILL);
	/* tracees die; reap their reports so nothing stays behind */
	uint64_t until = now_ns() + 2000000000ULL;
	while (live_threads() && now_ns() < until)
		pump_events(10);
	detach_all();
}

/* everything about one process that is read inside the pause, except memory */
static int capture_proc_state(struct proc *p, struct proc_capture *pc)
{
	Understudy__V1__Process *pr = pc->meta;
	/* the heap in the maps of this barrier tells whether brk may have moved */
	uint64_t hs = pc->heap_start, he = pc->heap_end;
	if (fill_process_info(p->pid, pr))
		return -1;
	prof_mark("state.procinfo");
	if (capture_fds(p->pid, pr))
		return -1;
	prof_mark("state.fds");
	struct task *lead = lead_task(p);
	if (!lead)
		return fail("E_NATIVE", 0, "pid %d has no stopped thread at the barrier", p->pid);
	/* handlers, clear_tid, sigaltstack, brk: read from the kernel's task
	 * structures by the BPF task iterator, no injection (taskiter.c) */
	struct kstate ks;
	const struct kstate *ksp = NULL;
	if (taskiter_ok()) {
		if (taskiter_read(p, &ks)) {
			fprintf(stderr, "understudy-engine: %s; injecting instead\n", g_err.msg);
			err_clear();
		} else {
			ksp = &ks;
		}
	}
	prof_mark("state.taskiter");
	for (size_t i = 0; i < E.ntasks; i++) {
		struct task *t = &E.tasks[i];
		if (t->dead || t->tgid != p->pid)
			continue;
		Understudy__V1__Thread *th = ANEW(Understudy__V1__Thread, understudy__v1__thread__init);
		if (!th || capture_thread(p, t, th, ksp ? kstate_task(ksp, t->tid) : NULL) || APUSH(pr->threads, pr->n_threads, th))
			return -1;
		prof_mark("state.thread");
	}
	if (capture_sigactions(p, lead->tid, pr, taskiter_ok() ? ksp : NULL))
		return -1;
	prof_mark("state.sigactions");
	const struct et_rec *lk = ksp && taskiter_ok() ? kstate_task(ksp, lead->tid) : NULL;
	if (lk && p->kstate_checked) {
		p->brk = lk->d;   /* mm->brk: what brk(0) returns */
		p->brk_valid = true;
	} else if (!p->brk_valid || !pc->heap_known || hs != p->heap_start || he != p->heap_end) {
		/* without the iterator: brk moves only with the heap's end (brk()
		 * works in whole pages), an injected brk(0) only when it changed */
		if (capture_brk(p, lead->tid, &p->brk))
			return -1;
		p->brk_valid = true;
		if (lk && lk->d != p->brk) {
			char why[200];
			snprintf(why, sizeof(why), "pid %d: injected brk(0) 0x%llx, iterator mm->brk 0x%llx", p->pid,
				 (unsigned long long)p->brk, (unsigned long long)lk->d);
			taskiter_disable(why);
		}
	}
	p->heap_start = hs;
	p->heap_end = he;
	if (ksp && taskiter_ok())
		p->kstate_checked = true;
	pr->mm->brk = p->brk;
	prof_mark("state.brk");
	if (capture_shared_pending(lead->tid, pr))
		return -1;
	prof_mark("state.shared_pending");
	if (capture_itimers(p, lead->tid, pr, ksp && taskiter_ok() ? ksp : NULL) || capture_posix_timers(p, lead->tid, pr))
		return -1;
	prof_mark("state.timers");
	pr->uffd_features = p->uffd_features;
	pr->new_process = p->is_new;
	return 0;
}

static void free_pcs(struct proc_capture *pcs, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		free(pcs[i].cur);
		rv_free(&pcs[i].pages);
		rv_free(&pcs[i].reset);
		rv_free(&pcs[i].zeroed);
	}
	free(pcs);
}

/* The memory phase of a checkpoint: plan (maps, PAGEMAP_SCAN, registration)
 * and copy. It needs no ptrace, so it runs on its own thread while the main
 * thread (the tracer) reads registers and injects syscalls. */
struct mem_job {
	struct proc_capture *pcs, *vpcs;
	size_t np;
	bool full, verify;
	uint32_t stall_ms;
	int rc;
	struct err_value err;
	uint64_t t_start, t_planned, t_copied;
};

static int mem_phase(struct mem_job *j)
{
	j->t_start = now_ns();
	for (size_t i = 0; i < j->np; i++) {
		struct proc_capture *pc = &j->pcs[i];
		if (mem_plan(pc->p, pc, j->full || pc->p->is_new, E.track_dirty))
			return -1;
		if (j->verify) {
			j->vpcs[i].p = pc->p;
			if (mem_plan(pc->p, &j->vpcs[i], true, false))
				return -1;
		}
	}
	j->t_planned = now_ns();
	prof_mark("mem.plan");
	for (size_t i = 0; i < j->np; i++)
		if (mem_copy(&j->pcs[i], &g_buf, i == 0 ? j->stall_ms : 0, progress))
			return -1;
	for (size_t i = 0; j->verify && i < j->np; i++)
		if (mem_copy(&j->vpcs[i], &g_vbuf, 0, progress))
			return -1;
	j->t_copied = now_ns();
	prof_mark("mem.copy");
	return 0;
}

static void mem_worker(void *arg)
{
	struct mem_job *j = arg;
	err_clear();
	j->rc = mem_phase(j);
	j->err = g_err;
}

/* The epoch is written on a thread while this one keeps serving the app's
 * ptrace stops: a signal or a fork during a long write must not wait for it. */
struct write_job {
	uint32_t delay_ms;
	const char *dir, *id;
	struct epoch_out *eo;
	char *path;
	size_t plen;
	int rc;
	int done;
	struct err_value err;
};

static void *write_thread(void *arg)
{
	struct write_job *j = arg;
	err_clear();
	if (j->delay_ms)
		usleep(j->delay_ms * 1000);
	j->rc = image_write_epoch(j->dir, j->id, j->eo, j->path, j->plen);
	j->err = g_err;
	__atomic_store_n(&j->done, 1, __ATOMIC_RELEASE);
	return NULL;
}

static int write_epoch_serving(const char *dir, const char *id, struct epoch_out *eo, char *path, size_t plen, uint32_t delay_ms)
{
	struct write_job j = { .delay_ms = delay_ms, .dir = dir, .id = id, .eo = eo, .path = path, .plen = plen };
	pthread_t th;
	if (pthread_create(&th, NULL, write_thread, &j))
		return image_write_epoch(dir, id, eo, path, plen);
	while (!__atomic_load_n(&j.done, __ATOMIC_ACQUIRE))
		pump_events(5);
	pthread_join(th, NULL);
	if (j.rc)
		g_err = j.err;
	return j.rc;
}

static int do_checkpoint(Understudy__V1__CheckpointCmd *c, Understudy__V1__EngineReply *rep)
{
	if (!E.attached)
		return fail("E_USAGE", 0, "not attached to any app: send attach first");
	/* a chain of dry runs (benchmarks) has no directory; a real checkpoint
	 * after it starts a real chain at epoch 0 */
	if (!c->dry_run && E.has_epoch && !E.image_dir[0])
		E.has_epoch = false;
	/* a dry run re-protects the pages it reports without saving them: in a
	 * real chain that would lose them */
	if (c->dry_run && E.has_epoch && E.image_dir[0])
		return fail("E_USAGE", 0, "a dry-run checkpoint would break the image chain in %s (its pages would not be saved)",
			    E.image_dir);
	if (!c->dry_run) {
		if (!c->image_dir || !c->image_dir[0])
			return fail("E_USAGE", 0, "checkpoint needs an image directory");
		if (E.has_epoch && strcmp(c->image_dir, E.image_dir))
			return fail("E_USAGE", 0, "this engine's image chain is in %s; an incremental checkpoint cannot go to %s", E.image_dir,
				    c->image_dir);
		if (!E.has_epoch && image_dir_prepare(c->image_dir, true))
			return -1;
		if (c->verify_full_dir && c->verify_full_dir[0] && image_dir_prepare(c->verify_full_dir, true))
			return -1;
	}
	bool full = c->full || !E.has_epoch || need_full;
	bool verify = c->verify_full_dir && c->verify_full_dir[0] && !c->dry_run;
	Understudy__V1__CheckpointResult *cr = ANEW(Understudy__V1__CheckpointResult, understudy__v1__checkpoint_result__init);

	/* size the capture buffer before the pause (resident anonymous memory
	 * bounds a full capture) */
	if (full) {
		size_t est = 0;
		for (size_t i = 0; i < E.nprocs; i++) {
			char v[64];
			if (!E.procs[i].dead && !proc_status_field(E.procs[i].pid, "RssAnon", v, sizeof(v)))
				est += strtoull(v, NULL, 10) * 1024;
		}
		err_clear();
		est += est / 8 + (8u << 20);
		if (buf_reserve(&g_buf, est) || (verify && buf_reserve(&g_vbuf, est)))
			return -1;
	}
	pause_sched(true);
	prof_sched_begin();
	uint64_t t0 = now_ns();
	if (barrier(10000)) {
		pause_sched(false);
		return -1;
	}
	uint64_t t_bar = now_ns();
	prof_mark("barrier");
	status_cache(true);
	fdobj_pause_snapshot(true);
	size_t np = 0;
	struct proc_capture *pcs = calloc(E.nprocs + 1, sizeof(*pcs)), *vpcs = calloc(E.nprocs + 1, sizeof(*vpcs));
	int rc = 0;
	bool scanned = false;
	uint64_t t_state = 0;
	g_buf.len = 0;
	g_vbuf.len = 0;
	if (!pcs || !vpcs) {
		rc = fail("E_NATIVE", ENOMEM, "calloc for the capture plan");
		goto release;
	}
	/* new mms first: their userfaultfd (injected) before any scan */
	for (size_t i = 0; i < E.nprocs && !rc; i++) {
		struct proc *p = &E.procs[i];
		if (p->dead)
			continue;
		struct task *lead = lead_task(p);
		if (!lead) {
			rc = fail("E_NATIVE", 0, "pid %d has no stopped thread at the barrier", p->pid);
			break;
		}
		/* a process may have entered seccomp since the last barrier */
		if (check_injectable(p->pid)) {
			rc = -1;
			break;
		}
		if (E.track_dirty && p->need_mm_init) {
			if (uffd_init(p, lead->tid)) {
				rc = -1;
				break;
			}
			p->need_mm_init = false;   /* a new mm: its regions are all new, taken in full below */
		}
		pcs[np].p = p;
		/* without the task iterator the state phase needs the heap's
		 * bounds (brk): the maps of this barrier are read here, once, and
		 * the memory plan takes them; else the memory thread reads them */
		if (!taskiter_ok()) {
			if (read_maps(p->pid, &pcs[np].cur, &pcs[np].ncur)) {
				rc = -1;
				break;
			}
			for (size_t k = 0; k < pcs[np].ncur; k++)
				if (!strcmp(pcs[np].cur[k].name, "[heap]")) {
					if (!pcs[np].heap_start)
						pcs[np].heap_start = pcs[np].cur[k].start;
					pcs[np].heap_end = pcs[np].cur[k].end;
				}
			pcs[np].heap_known = true;
		}
		pcs[np].meta = ANEW(Understudy__V1__Process, understudy__v1__process__init);
		if (verify) {
			vpcs[np].p = p;
			vpcs[np].meta = ANEW(Understudy__V1__Process, understudy__v1__process__init);
		}
		if (!pcs[np].meta || (verify && !vpcs[np].meta))
			rc = -1;
		np++;
	}
	/* Memory and state side by side: the memory thread scans and copies
	 * while this thread, the tracer, reads registers and injects. Injections
	 * write only below stack pointers (dead space); a write that lands after
	 * its page was scanned is simply in the next epoch. With a verification
	 * copy both memory views must be of the same instant: memory, then state. */
	prof_mark("setup");
	__atomic_store_n(&g_state_done, 0, __ATOMIC_RELEASE);
	struct mem_job mj = { .pcs = pcs, .vpcs = vpcs, .np = np, .full = full, .verify = verify, .stall_ms = c->debug_stall_ms };
	if (!rc) {
		scanned = true;
		bool threaded = !verify && pool_post(POOL_MEM, mem_worker, &mj) == 0;
		if (!threaded) {
			__atomic_store_n(&g_state_done, 1, __ATOMIC_RELEASE);   /* memory first, state after */
			mj.rc = mem_phase(&mj);
			mj.err = g_err;
		}
		for (size_t i = 0; i < np && !rc && !(!threaded && mj.rc); i++)
			if (capture_proc_state(pcs[i].p, &pcs[i]))
				rc = -1;
		__atomic_store_n(&g_state_done, 1, __ATOMIC_RELEASE);
		t_state = now_ns();
		if (threaded) {
			if (!rc)
				pool_assist(POOL_MEM);
			pool_wait(POOL_MEM);
		}
		prof_mark("join");
		if (mj.rc && !rc) {
			g_err = mj.err;
			rc = -1;
		}
	}
	if (!t_state)
		t_state = now_ns();
release:;
	status_cache(false);
	fdobj_pause_snapshot(false);
	release_all();
	uint64_t t_rel = now_ns();
	prof_mark("release");
	prof_sched_end();
	pause_sched(false);
	prof_flush(t0);
	if (!rc)
		progress("released");
	if (rc) {
		if (scanned)
			need_full = true;   /* pages were re-protected but not saved */
		free_pcs(pcs, np);
		free_pcs(vpcs, np);
		return -1;
	}
	/* ---- after the release: nothing below stops the app ---- */
	for (size_t i = 0; i < np; i++) {
		if (fill_vmas(pcs[i].p, pcs[i].meta)) {
			rc = -1;
			break;
		}
		if (verify) {
			Understudy__V1__Process *vm = vpcs[i].meta, *m = pcs[i].meta;
			Understudy__V1__PageRun **keep_pages = vm->pages;
			*vm = *m;   /* same state, its own page index */
			vm->pages = keep_pages;
			vm->n_pages = 0;
			vm->n_reset = vm->n_zeroed = vm->n_vma_changes = 0;
		}
	}
	/* everything that needs E.procs, before the event loop may grow it */
	Understudy__V1__ProcessPages **pstats = amalloc(np * sizeof(void *) + 1);
	for (size_t i = 0; pstats && i < np; i++) {
		Understudy__V1__ProcessPages *pp = ANEW(Understudy__V1__ProcessPages, understudy__v1__process_pages__init);
		if (!pp)
			break;
		pp->pid = pcs[i].p->pid;
		for (size_t r = 0; r < pcs[i].pages.n; r++)
			pp->pages += (pcs[i].pages.v[r].end - pcs[i].pages.v[r].start) / PAGE_SZ;
		pp->new_regions = pcs[i].new_regions;
		pstats[i] = pp;
		pcs[i].p->is_new = false;
		pcs[i].p = NULL;
		if (verify)
			vpcs[i].p = NULL;
	}
	uint32_t epoch = E.has_epoch ? E.last_epoch + 1 : 0;
	char epath[4200] = "", vpath[4200] = "";
	if (!rc && !c->dry_run) {
		if (!E.has_epoch)
			new_image_id(E.image_id);
		struct epoch_out eo = { .epoch = epoch, .full = full, .pause_ns = t_rel - t0, .pcs = pcs, .npcs = np, .buf = &g_buf };
		if (write_epoch_serving(c->image_dir, E.image_id, &eo, epath, sizeof(epath), c->debug_write_delay_ms))
			rc = -1;
		if (!rc && verify) {
			char vid[40];
			new_image_id(vid);
			struct epoch_out vo = { .epoch = epoch, .full = true, .pause_ns = t_rel - t0, .pcs = vpcs, .npcs = np, .buf = &g_vbuf };
			if (write_epoch_serving(c->verify_full_dir, vid, &vo, vpath, sizeof(vpath), 0))
				rc = -1;
		}
	}
	uint64_t t_end = now_ns();
	/* the chain advances when its epoch is on disk (or a dry run
	 * succeeded), even if a later step (the verification copy) failed;
	 * pages scanned but not saved make the next epoch a full one */
	bool saved = epath[0] || (!rc && c->dry_run);
	if (saved) {
		if (!E.has_epoch)
			snprintf(E.image_dir, sizeof(E.image_dir), "%s", c->dry_run ? "" : c->image_dir);
		E.has_epoch = true;
		E.last_epoch = epoch;
	}
	need_full = !saved;
	if (!rc) {
		cr->epoch = epoch;
		cr->full = full;
		cr->epoch_dir = astrdup(epath);
		cr->verify_full_epoch_dir = astrdup(vpath);
		cr->pause_ns = t_rel - t0;
		cr->barrier_ns = t_bar - t0;
		cr->barrier_at_ns = t0;
		cr->state_ns = t_state - t_bar;
		cr->scan_ns = mj.t_planned - mj.t_start;
		cr->copy_ns = mj.t_copied - mj.t_planned;
		cr->write_ns = t_end - t_rel;
		cr->bytes = g_buf.len;
		cr->pages = g_buf.len / PAGE_SZ;
		cr->processes = np;
		cr->threads = live_threads();
		cr->per_process = pstats;
		cr->n_per_process = pstats ? np : 0;
		rep->result_case = UNDERSTUDY__V1__ENGINE_REPLY__RESULT_CHECKPOINT;
		rep->checkpoint = cr;
	}
	free_pcs(pcs, np);
	free_pcs(vpcs, np);
	if (!rc && c->kill_after)
		kill_app();
	return rc;
}

static void handle(uint8_t *buf, size_t len)
{
	Understudy__V1__EngineReply rep = UNDERSTUDY__V1__ENGINE_REPLY__INIT;
	Understudy__V1__EngineRequest *req = understudy__v1__engine_request__unpack(NULL, len, buf);
	err_clear();
	int rc;
	if (!req) {
		rc = fail("E_FRAME", 0, "cannot decode an EngineRequest of %zu bytes", len);
	} else if (req->version != ENGINE_VERSION) {
		rep.id = req->id;
		rc = fail("E_VERSION", 0, "request version %u is not supported (this engine speaks version %d)", req->version, ENGINE_VERSION);
	} else {
		rep.id = cur_req_id = req->id;
		switch (req->cmd_case) {
		case UNDERSTUDY__V1__ENGINE_REQUEST__CMD_ATTACH:
			rc = do_attach(req->attach, &rep);
			break;
		case UNDERSTUDY__V1__ENGINE_REQUEST__CMD_CHECKPOINT:
			rc = do_checkpoint(req->checkpoint, &rep);
			break;
		case UNDERSTUDY__V1__ENGINE_REQUEST__CMD_DETACH:
			detach_all();
			E.has_epoch = false;
			rc = 0;
			break;
		case UNDERSTUDY__V1__ENGINE_REQUEST__CMD_KILL_APP:
			kill_app();
			E.has_epoch = false;
			rc = 0;
			break;
		case UNDERSTUDY__V1__ENGINE_REQUEST__CMD_STATUS: {
			Understudy__V1__StatusResult *s = ANEW(Understudy__V1__StatusResult, understudy__v1__status_result__init);
			s->pids = amalloc(E.nprocs * sizeof(int32_t) + 4);
			for (size_t i = 0; i < E.nprocs; i++)
				if (!E.procs[i].dead)
					s->pids[s->n_pids++] = E.procs[i].pid;
			s->threads = live_threads();
			s->has_epoch = E.has_epoch;
			s->last_epoch = E.last_epoch;
			s->image_dir = E.image_dir;
			rep.result_case = UNDERSTUDY__V1__ENGINE_REPLY__RESULT_STATUS;
			rep.status = s;
			rc = 0;
			break;
		}
		default:
			rc = fail("E_USAGE", 0, "unknown engine command %d", req->cmd_case);
		}
	}
	rep.ok = rc == 0;
	if (rc) {
		if (!g_err.code[0])
			fail("E_INTERNAL", 0, "command failed without an error message");
		rep.code = (Understudy__V1__ErrorCode)err_value_code(&g_err);
		rep.error = g_err.msg;
		rep.errno_value = g_err.errnum;
	}
	send_reply(&rep);
	if (req)
		understudy__v1__engine_request__free_unpacked(req, NULL);
	arena_reset();
}

int main(int argc, char **argv)
{
	(void)argc;
	(void)argv;
	signal(SIGPIPE, SIG_IGN);
	sigset_t set;
	sigemptyset(&set);
	sigaddset(&set, SIGCHLD);
	sigprocmask(SIG_BLOCK, &set, NULL);
	E.sigchld_fd = signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC);
	sigset_t term;
	sigemptyset(&term);
	sigaddset(&term, SIGTERM);
	sigaddset(&term, SIGINT);
	sigaddset(&term, SIGHUP);
	sigprocmask(SIG_BLOCK, &term, NULL);
	int term_fd = signalfd(-1, &term, SFD_NONBLOCK | SFD_CLOEXEC);
	if (E.sigchld_fd < 0 || term_fd < 0) {
		fprintf(stderr, "understudy-engine: signalfd: %s\n", strerror(errno));
		return 1;
	}
	for (;;) {
		struct pollfd pfd[3] = { { 0, POLLIN, 0 }, { E.sigchld_fd, POLLIN, 0 }, { term_fd, POLLIN, 0 } };
		int r = poll(pfd, 3, -1);
		if (r < 0 && errno != EINTR)
			break;
		if (pfd[1].revents)
			pump_events(0);
		if (pfd[2].revents)
			break;
		if (pfd[0].revents) {
			uint8_t *buf;
			size_t len;
			int fr = frame_read(0, &buf, &len, MAX_FRAME);
			if (fr == 0)
				break;   /* agent closed the pipe */
			if (fr < 0) {
				char m[256];
				fprintf(stderr, "understudy-engine: %s\n",
					err_format(m, sizeof(m), errno, "agent pipe: reading a frame (limit %u bytes)", MAX_FRAME));
				break;
			}
			handle(buf, len);
			free(buf);
		}
	}
	/* leave the app running, untraced, with no tracking state of ours */
	if (E.attached)
		detach_all();
	return 0;
}
