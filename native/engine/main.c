/* understudy-engine: a long-lived process per app, driven over stdin/stdout
 * with length-prefixed EngineRequest/EngineReply frames (engine.proto).
 * Commands: attach (seize the app), checkpoint (barrier, capture, release,
 * write epoch N), status, detach, kill_app. End of stdin or SIGTERM detaches
 * and leaves the app running. */
#include <errno.h>
#include <fcntl.h>
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
static bool need_full;			    /* tracking lost its continuity: next epoch is full */
static struct page_buf *cur_buf, *cur_vbuf; /* this capture's buffers (from the pool) */
static uint32_t chain_gen;		    /* bumped when the chain breaks (failed write, detach) */
static bool draining;			    /* leaving: the agent may be gone */

#define DEFAULT_MAX_IN_FLIGHT 64
#define DEFAULT_MAX_QUEUED (1ULL << 30)

static void send_reply(Understudy__V1__EngineReply *r)
{
	r->version = ENGINE_VERSION;
	if (frame_write(1, &r->base) && !draining)
		exit(3); /* the agent is gone: nothing to report to */
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
		p->brk = lk->d; /* mm->brk: what brk(0) returns */
		p->brk_valid = true;
	} else if (!p->brk_valid || !pc->heap_known || hs != p->heap_start || he != p->heap_end) {
		/* without the iterator: brk moves only with the heap's end (brk()
		 * works in whole pages), an injected brk(0) only when it changed */
		if (capture_brk(p, lead->tid, &p->brk))
			return -1;
		p->brk_valid = true;
		if (lk && lk->d != p->brk) {
			char why[200];
			snprintf(why, sizeof(why), "pid %d: injected brk(0) 0x%llx, iterator mm->brk 0x%llx", p->pid, (unsigned long long)p->brk,
				 (unsigned long long)lk->d);
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
		if (mem_copy(&j->pcs[i], cur_buf, i == 0 ? j->stall_ms : 0, progress))
			return -1;
	for (size_t i = 0; j->verify && i < j->np; i++)
		if (mem_copy(&j->vpcs[i], cur_vbuf, 0, progress))
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

static bool dry_chain; /* the chain's epochs are dry runs (benchmarks): nothing on disk */

static bool hex_id(const char *s)
{
	if (strlen(s) != 32)
		return false;
	for (const char *p = s; *p; p++)
		if (!((*p >= '0' && *p <= '9') || (*p >= 'a' && *p <= 'f')))
			return false;
	return true;
}

/* The agent's chain position against this engine's chain and the disk.
 * Sets *epoch, *parent, the image id (out_id[40]) and whether the capture must be
 * full because this engine did not write the parent itself. */
static int check_chain(Understudy__V1__CheckpointCmd *c, const char *dir, uint32_t *epoch, uint32_t *parent, bool *must_full, char *out_id)
{
	Understudy__V1__ChainPosition *ch = c->chain;
	const char *id = ch->image_id ? ch->image_id : "";
	*must_full = false;
	if (id[0] && !hex_id(id))
		return fail("E_USAGE", 0, "image id \"%s\" is not 32 lowercase hex digits", id);
	if (ch->epoch == 0) {
		/* a new chain */
		if (dir[0] && image_dir_prepare(dir, true))
			return -1;
		if (id[0])
			snprintf(out_id, 40, "%s", id);
		else
			new_image_id(out_id);
		*epoch = 0;
		*parent = 0;
		*must_full = true;
		return 0;
	}
	/* an empty id continues this engine's own chain (an agent that sends
	 * the next epoch before the reply with the id came back) */
	if (!id[0] && E.has_epoch && !dry_chain && !strcmp(E.image_dir, dir))
		id = E.image_id;
	if (!id[0])
		return fail("E_USAGE", 0, "epoch %u continues a chain this engine did not start: the request must name its image id", ch->epoch);
	if (ch->parent_epoch != ch->epoch - 1)
		return fail("E_IMAGE_CHAIN", 0, "epoch %u must follow epoch %u, not %u: a chain has no gaps", ch->epoch, ch->epoch - 1,
			    ch->parent_epoch);
	bool ours = E.has_epoch && !dry_chain && !strcmp(E.image_id, id) && !strcmp(E.image_dir, dir);
	if (ours) {
		/* this engine's own chain: the parent is the newest it took
		 * (written, or still being written) */
		if (ch->parent_epoch != E.last_epoch)
			return fail("E_IMAGE_CHAIN", 0, "parent epoch %u is not the newest epoch of image %s, which is %u", ch->parent_epoch, id,
				    E.last_epoch);
	} else if (dir[0]) {
		/* a chain this engine did not write (the agent restarted it):
		 * the parent must be the newest epoch on disk, of that image */
		if (image_dir_prepare(dir, false))
			return -1;
		struct err_value e = { 0 };
		int64_t newest = img_newest(dir, &e);
		if (newest < 0)
			return fail("E_IMAGE_CHAIN", 0, "parent epoch %u of image %s is not in %s: %s", ch->parent_epoch, id, dir, e.msg);
		if ((uint64_t)newest != ch->parent_epoch)
			return fail("E_IMAGE_CHAIN", 0, "parent epoch %u is not the newest epoch in %s, which is %lld", ch->parent_epoch, dir,
				    (long long)newest);
		char pdir[IMG_PATH];
		Understudy__V1__EpochMeta *pm = NULL;
		snprintf(pdir, sizeof(pdir), "%s/epoch-%06u", dir, ch->parent_epoch);
		if (img_meta_read(pdir, "E_IMAGE_CHAIN", &pm, &e)) {
			snprintf(pdir, sizeof(pdir), "%s/base-%06u", dir, ch->parent_epoch);
			memset(&e, 0, sizeof(e));
			if (img_meta_read(pdir, "E_IMAGE_CHAIN", &pm, &e))
				return fail("E_IMAGE_CHAIN", 0, "parent epoch %u in %s cannot be read: %s", ch->parent_epoch, dir, e.msg);
		}
		bool same = !strcmp(pm->image_id, id);
		char other[64];
		snprintf(other, sizeof(other), "%s", pm->image_id);
		understudy__v1__epoch_meta__free_unpacked(pm, NULL);
		if (!same)
			return fail("E_IMAGE_CHAIN", 0, "%s belongs to image %s, not %s", pdir, other, id);
		*must_full = true;
	} else {
		/* stream only, a chain this engine did not take: nothing to check
		 * against; the tracking starts here, so the epoch is full */
		*must_full = true;
	}
	snprintf(out_id, 40, "%s", id);
	*epoch = ch->epoch;
	*parent = ch->parent_epoch;
	return 0;
}

static int do_checkpoint(Understudy__V1__CheckpointCmd *c, Understudy__V1__EngineReply *rep)
{
	if (!E.attached)
		return fail("E_USAGE", 0, "not attached to any app: send attach first");
	bool to_dir = c->sink != UNDERSTUDY__V1__EPOCH_SINK__SINK_STREAM;
	bool to_stream = c->sink != UNDERSTUDY__V1__EPOCH_SINK__SINK_DIR;
	const char *dir = to_dir && c->image_dir ? c->image_dir : "";
	/* a chain of dry runs (benchmarks) has no directory; a real checkpoint
	 * after it starts a real chain at epoch 0 */
	if (!c->dry_run && E.has_epoch && dry_chain)
		E.has_epoch = false;
	/* a dry run re-protects the pages it reports without saving them: in a
	 * real chain that would lose them */
	if (c->dry_run && E.has_epoch && !dry_chain)
		return fail("E_USAGE", 0, "a dry-run checkpoint would break the image chain in %s (its pages would not be saved)",
			    E.image_dir[0] ? E.image_dir : "the epoch stream");
	uint32_t epoch = E.has_epoch ? E.last_epoch + 1 : 0, parent = epoch ? epoch - 1 : 0;
	bool must_full = false;
	char img_id[40];
	snprintf(img_id, sizeof(img_id), "%s", E.image_id);
	if (!c->dry_run) {
		if (to_dir && !dir[0])
			return fail("E_USAGE", 0, "checkpoint needs an image directory");
		if (to_stream && !writer_has_stream())
			return fail("E_USAGE", 0, "no epoch stream: start the engine with --epoch-stream-fd to use the stream sink");
		/* the writer's queue is bounded: refuse before the barrier, the app
		 * untouched and its writes still tracked for the next epoch */
		uint32_t inflight;
		uint64_t queued;
		writer_load(&inflight, &queued);
		uint32_t max_in = c->max_epochs_in_flight ? c->max_epochs_in_flight : DEFAULT_MAX_IN_FLIGHT;
		uint64_t max_q = c->max_queued_bytes ? c->max_queued_bytes : DEFAULT_MAX_QUEUED;
		if (inflight >= max_in || (inflight > 1 && queued >= max_q))
			return fail("E_BUSY", 0,
				    "%u epochs (%llu bytes behind the one being written) wait to be written, the bound is %u epochs / %llu "
				    "bytes: this checkpoint was not taken (the app was not stopped, its writes stay tracked for the next "
				    "epoch); retry when an earlier epoch is written",
				    inflight, (unsigned long long)queued, max_in, (unsigned long long)max_q);
		if (c->chain) {
			if (check_chain(c, dir, &epoch, &parent, &must_full, img_id))
				return -1;
		} else {
			if (E.has_epoch && strcmp(dir, E.image_dir))
				return fail("E_USAGE", 0, "this engine's image chain is in %s; an incremental checkpoint cannot go to %s",
					    E.image_dir[0] ? E.image_dir : "the epoch stream", dir[0] ? dir : "the epoch stream");
			if (!E.has_epoch && dir[0] && image_dir_prepare(dir, true))
				return -1;
			if (!E.has_epoch)
				new_image_id(img_id);
		}
		if (c->verify_full_dir && c->verify_full_dir[0] && image_dir_prepare(c->verify_full_dir, true))
			return -1;
	}
	bool full = c->full || !E.has_epoch || need_full || must_full;
	bool verify = c->verify_full_dir && c->verify_full_dir[0] && !c->dry_run;
	Understudy__V1__CheckpointResult *cr = ANEW(Understudy__V1__CheckpointResult, understudy__v1__checkpoint_result__init);

	/* size the capture buffer before the pause (resident anonymous memory
	 * bounds a full capture; a delta is guessed from the last one, and a
	 * buffer too small grows inside the pause) */
	size_t est = 0;
	for (size_t i = 0; i < E.nprocs; i++) {
		char v[64];
		if (!E.procs[i].dead && !proc_status_field(E.procs[i].pid, "RssAnon", v, sizeof(v)))
			est += strtoull(v, NULL, 10) * 1024;
	}
	err_clear();
	est += est / 8 + (8u << 20);
	static size_t last_delta;
	/* a delta: populated for the last one's size, reserved for a full one */
	cur_buf = buf_get(full ? est : last_delta + last_delta / 4 + (2u << 20), est);
	cur_vbuf = verify ? buf_get(est, est) : NULL;
	if (!cur_buf || (verify && !cur_vbuf)) {
		buf_put(cur_buf);
		buf_put(cur_vbuf);
		cur_buf = cur_vbuf = NULL;
		return -1;
	}
	writer_yield(true);
	pause_sched(true);
	prof_sched_begin();
	uint64_t t0 = now_ns();
	if (barrier(10000)) {
		pause_sched(false);
		writer_yield(false);
		buf_put(cur_buf);
		buf_put(cur_vbuf);
		cur_buf = cur_vbuf = NULL;
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
			p->need_mm_init = false; /* a new mm: its regions are all new, taken in full below */
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
			__atomic_store_n(&g_state_done, 1, __ATOMIC_RELEASE); /* memory first, state after */
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
	writer_yield(false);
	prof_flush(t0);
	if (!rc)
		progress("released");
	if (rc) {
		if (scanned)
			need_full = true; /* pages were re-protected but not saved */
		free_pcs(pcs, np);
		free_pcs(vpcs, np);
		buf_put(cur_buf);
		buf_put(cur_vbuf);
		cur_buf = cur_vbuf = NULL;
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
			*vm = *m; /* same state, its own page index */
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
	struct page_buf *buf = cur_buf, *vbuf = cur_vbuf;
	cur_buf = cur_vbuf = NULL;
	if (!full)
		last_delta = buf->len;
	cr->epoch = epoch;
	cr->full = full;
	cr->parent_epoch = parent;
	cr->pause_ns = t_rel - t0;
	cr->barrier_ns = t_bar - t0;
	cr->barrier_at_ns = t0;
	cr->state_ns = t_state - t_bar;
	cr->scan_ns = mj.t_planned - mj.t_start;
	cr->copy_ns = mj.t_copied - mj.t_planned;
	cr->bytes = buf->len;
	cr->pages = buf->len / PAGE_SZ;
	cr->processes = np;
	cr->threads = live_threads();
	cr->per_process = pstats;
	cr->n_per_process = pstats ? np : 0;
	cr->epoch_dir = "";
	cr->verify_full_epoch_dir = "";
	if (c->dry_run) {
		/* nothing written: the chain of dry runs advances */
		free_pcs(pcs, np);
		free_pcs(vpcs, np);
		buf_put(buf);
		buf_put(vbuf);
		if (rc) {
			need_full = true;
			return -1;
		}
		E.has_epoch = true;
		E.last_epoch = epoch;
		E.image_dir[0] = 0;
		dry_chain = true;
		need_full = false;
		cr->write_ns = now_ns() - t_rel;
		rep->result_case = UNDERSTUDY__V1__ENGINE_REPLY__RESULT_CHECKPOINT;
		rep->checkpoint = cr;
		if (c->kill_after)
			kill_app();
		return 0;
	}
	struct epoch_job *j = rc ? NULL : calloc(1, sizeof(*j));
	if (!rc && !j)
		rc = fail("E_NATIVE", ENOMEM, "calloc for the epoch's write");
	if (!rc) {
		struct epoch_out eo = { .epoch = epoch, .full = full, .pause_ns = t_rel - t0, .pcs = pcs, .npcs = np, .buf = buf };
		j->meta = epoch_meta_build(img_id, &eo, parent);
		if (!j->meta)
			rc = -1;
		if (!rc && verify) {
			char vid[40];
			new_image_id(vid);
			/* a full epoch of its own image, with the same number */
			struct epoch_out vo = { .epoch = epoch, .full = true, .pause_ns = t_rel - t0, .pcs = vpcs, .npcs = np, .buf = vbuf };
			j->vmeta = epoch_meta_build(vid, &vo, parent);
			if (!j->vmeta)
				rc = -1;
			snprintf(j->vdir, sizeof(j->vdir), "%s", c->verify_full_dir);
		}
	}
	free_pcs(pcs, np);
	free_pcs(vpcs, np);
	if (rc) {
		/* pages scanned (re-protected) but not saved: the next epoch is full */
		need_full = true;
		free(j);
		buf_put(buf);
		buf_put(vbuf);
		return -1;
	}
	j->req_id = cur_req_id;
	j->epoch = epoch;
	j->gen = chain_gen;
	j->sinks = (to_dir ? JOB_DIR : 0) | (to_stream ? JOB_STREAM : 0);
	j->flags = c->no_fsync ? 0 : IMG_W_FSYNC;
	j->delay_ms = c->debug_write_delay_ms;
	j->kill_after = c->kill_after;
	snprintf(j->dir, sizeof(j->dir), "%s", dir);
	j->buf = buf;
	j->vbuf = vbuf;
	j->t_released = t_rel;
	cr->image_id = j->meta->image_id;
	writer_load(&cr->epochs_in_flight, &(uint64_t){ 0 });
	j->cr = cr;
	if (writer_push(j)) {
		need_full = true;
		j->arena = NULL;
		free(j);
		buf_put(buf);
		buf_put(vbuf);
		return -1;
	}
	/* the chain is taken to this epoch now; a failed write takes it back
	 * (written_done) */
	if (!E.has_epoch || dry_chain || (c->chain && c->chain->epoch == 0))
		E.has_written = false;
	E.has_epoch = true;
	E.last_epoch = epoch;
	dry_chain = false;
	need_full = false;
	snprintf(E.image_dir, sizeof(E.image_dir), "%s", dir);
	snprintf(E.image_id, sizeof(E.image_id), "%s", img_id);
	return 1; /* the reply is sent when the writer is done */
}

/* Replies for epochs the writer finished, in capture order. */
static void written_done(void)
{
	struct epoch_job *j = writer_take_done();
	while (j) {
		struct epoch_job *next = j->next;
		Understudy__V1__EngineReply rep = UNDERSTUDY__V1__ENGINE_REPLY__INIT;
		rep.id = j->req_id;
		bool current = j->gen == chain_gen;
		if (j->rc == 0) {
			if (current) {
				E.has_written = true;
				E.last_written = j->epoch;
			}
		} else if (current) {
			/* this epoch is not on disk; those after it in the queue are
			 * dropped by the writer. The chain goes back to its newest
			 * written epoch, and the next capture is full (the scan
			 * re-protected pages that were never saved). */
			chain_gen++;
			need_full = true;
			E.has_epoch = E.has_written;
			E.last_epoch = E.last_written;
		}
		if (j->rc == 0 && j->vrc == 0) {
			Understudy__V1__CheckpointResult *cr = j->cr;
			cr->epoch_dir = j->path;
			cr->verify_full_epoch_dir = j->vpath;
			cr->write_ns = j->t_done - j->t_released;
			cr->queued_ns = j->t_start > j->t_released ? j->t_start - j->t_released : 0;
			cr->fsynced = (j->flags & IMG_W_FSYNC) && (j->sinks & JOB_DIR) && !j->st.name_unsynced;
			cr->streamed = j->streamed;
			cr->crc_ns = j->st.crc_ns;
			cr->io_ns = j->st.write_ns;
			cr->sync_ns = j->st.sync_ns;
			if (j->kill_after)
				kill_app();
			rep.ok = true;
			rep.result_case = UNDERSTUDY__V1__ENGINE_REPLY__RESULT_CHECKPOINT;
			rep.checkpoint = cr;
		} else {
			rep.ok = false;
			rep.code = (Understudy__V1__ErrorCode)err_value_code(&j->err);
			rep.error = j->err.msg;
			rep.errno_value = j->err.errnum;
		}
		send_reply(&rep);
		job_free(j);
		j = next;
	}
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
			chain_gen++; /* epochs still being written keep going; the chain ends */
			rc = 0;
			break;
		case UNDERSTUDY__V1__ENGINE_REQUEST__CMD_KILL_APP:
			kill_app();
			E.has_epoch = false;
			chain_gen++;
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
			s->image_id = E.image_id;
			s->has_written = E.has_written;
			s->last_written_epoch = E.last_written;
			uint64_t q;
			writer_load(&s->epochs_in_flight, &q);
			rep.result_case = UNDERSTUDY__V1__ENGINE_REPLY__RESULT_STATUS;
			rep.status = s;
			rc = 0;
			break;
		}
		default:
			rc = fail("E_USAGE", 0, "unknown engine command %d", req->cmd_case);
		}
	}
	if (rc == 1) {
		/* an epoch handed to the writer: its reply comes when it is written */
		understudy__v1__engine_request__free_unpacked(req, NULL);
		arena_reset();
		return;
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
	int stream_fd = -1;
	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--epoch-stream-fd") && i + 1 < argc) {
			char *end;
			long v = strtol(argv[++i], &end, 10);
			if (*end || v < 3 || v > 65535 || fcntl((int)v, F_GETFD) < 0) {
				fprintf(stderr, "understudy-engine: --epoch-stream-fd %s: not an open file descriptor above 2\n", argv[i]);
				return 2;
			}
			stream_fd = (int)v;
			(void)fcntl(stream_fd, F_SETFD, FD_CLOEXEC);
		} else {
			fprintf(stderr, "understudy-engine: unknown argument %s (usage: understudy-engine [--epoch-stream-fd FD])\n", argv[i]);
			return 2;
		}
	}
	signal(SIGPIPE, SIG_IGN);
	crc_init();
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
	if (writer_init(stream_fd)) {
		fprintf(stderr, "understudy-engine: %s\n", g_err.msg);
		return 1;
	}
	for (;;) {
		struct pollfd pfd[4] = { { 0, POLLIN, 0 }, { E.sigchld_fd, POLLIN, 0 }, { term_fd, POLLIN, 0 }, { writer_event_fd(), POLLIN, 0 } };
		int r = poll(pfd, 4, -1);
		if (r < 0 && errno != EINTR)
			break;
		if (pfd[1].revents)
			pump_events(0);
		if (pfd[3].revents)
			written_done();
		if (pfd[2].revents)
			break;
		if (pfd[0].revents) {
			uint8_t *buf;
			size_t len;
			int fr = frame_read(0, &buf, &len, MAX_FRAME);
			if (fr == 0)
				break; /* agent closed the pipe */
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
	/* leave the app running, untraced, with no tracking state of ours;
	 * then finish writing the epochs already captured (none is lost) */
	if (E.attached)
		detach_all();
	draining = true;
	for (;;) {
		uint32_t n;
		uint64_t q;
		writer_load(&n, &q);
		struct pollfd pf = { writer_event_fd(), POLLIN, 0 };
		if (poll(&pf, 1, n ? 1000 : 0) > 0)
			written_done();
		else if (!n)
			break;
	}
	return 0;
}
