/* The phases of a restore as requests on one struct restorer:
 *   build   image read and verified, everything refusable refused, then the
 *           process tree created and rebuilt; every task stays seized and
 *           stopped (registers not set, the stub region still mapped)
 *   apply   apply.c: the next delta, in place
 *   resume  credentials, comm, timers armed, stub unmapped, registers set,
 *           every task detached: the clone runs on its own
 *   abort   kill everything the restorer created
 *   check   build's refusals only: nothing is created
 * A failure of build, apply or resume kills what the restorer created (the
 * caller reads which pids from svc_killed before it is reset). */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "restore.h"
#include "service.h"

static int fail_hook(const char *phase)
{
	const char *fail_at = getenv("UNDERSTUDY_RESTORE_FAIL_AFTER");
	if (!fail_at || strcmp(fail_at, phase))
		return 0;
	return fail("E_RESTORE", 0, "failing on purpose after %s (UNDERSTUDY_RESTORE_FAIL_AFTER=%s)",
		    !strcmp(phase, "tree") ? "creating the process tree" : "rebuilding every process", phase);
}

/* everything the restorer created, for the failure reply: the reaper, then
 * every process by the host pid it got (the root is the reaper when it was
 * pid 1) */
static void note_killed(struct restorer *rs, struct svc_result *out)
{
	out->nkilled = 0;
	if (rs->reaper && out->nkilled < SVC_MAX_KILLED)
		out->killed[out->nkilled++] = rs->reaper;
	for (size_t i = 0; i < rs->nprocs && out->nkilled < SVC_MAX_KILLED; i++)
		if (rs->procs[i].created && rs->procs[i].pid != rs->reaper)
			out->killed[out->nkilled++] = rs->procs[i].pid;
}

void svc_reset(struct restorer *rs)
{
	for (size_t i = 0; i < rs->nprocs; i++) {
		free(rs->procs[i].tasks);
		free(rs->procs[i].pages);
	}
	free(rs->procs);
	if (rs->im_open)
		image_close(&rs->im);
	checks_free(rs);
	free(rs->ofds);
	free(rs->pipes);
	for (int k = 0; k < 2; k++) {
		if (rs->ready_pipe[k] >= 0)
			close(rs->ready_pipe[k]);
		if (rs->commit_pipe[k] >= 0)
			close(rs->commit_pipe[k]);
		if (rs->ack_pipe[k] >= 0)
			close(rs->ack_pipe[k]);
	}
	restorer_init(rs);
}

void svc_abort(struct restorer *rs, struct svc_result *out)
{
	if (rs->state == RS_BUILT) {
		note_killed(rs, out);
		tree_kill(rs);
	}
	svc_reset(rs);
}

/* on a failure with processes created: kill them, say which */
static int failed(struct restorer *rs, struct svc_result *out)
{
	if (!g_err.code[0])
		fail("E_INTERNAL", 0, "the restore failed without an error message");
	if (rs->state == RS_BUILT || rs->reaper || (rs->nprocs && rs->procs[0].created)) {
		note_killed(rs, out);
		tree_kill(rs);
	}
	svc_reset(rs);
	return -1;
}

static int prepare(struct restorer *rs, const char *dir, int64_t epoch)
{
	rs->t_start = rs->t_start ? rs->t_start : now_ns();
	if (image_open(&rs->im, dir, epoch)) {
		rs->im_open = true;
		return -1;
	}
	rs->im_open = true;
	rs->phase[PH_READ] = now_ns() - rs->t_start;
	uint64_t t = now_ns();
	if (image_verify_pages(&rs->im))
		return -1;
	rs->phase[PH_VERIFY] = now_ns() - t;
	t = now_ns();
	if (tree_plan(rs) || check_all(rs) || timers_check(rs) || fdobj_plan(rs) || locks_plan(rs))
		return -1;
	for (size_t i = 0; i < rs->nprocs; i++)
		if (image_page_map(&rs->im, rs->procs[i].pr->pid, &rs->procs[i].pages, &rs->procs[i].npages))
			return -1;
	uint64_t tv = now_ns();
	for (size_t i = 0; i < rs->nprocs; i++)
		if (image_verify_refs(&rs->im, rs->procs[i].pr->pid, rs->procs[i].pages, rs->procs[i].npages))
			return -1;
	uint64_t crc = now_ns() - tv;
	rs->phase[PH_VERIFY] += crc; /* crc time counts as verification */
	if (!mem_pick_stub(rs))
		return fail("E_UNSUPPORTED", 0, "no free place for the restorer's stub page in the app's address space");
	rs->phase[PH_CHECK] = now_ns() - t - crc;
	vlog("checks done: %zu processes, epoch %u", rs->nprocs, rs->im.target);
	return 0;
}

int svc_check(struct restorer *rs, const char *dir, int64_t epoch, struct svc_result *out)
{
	int rc = prepare(rs, dir, epoch);
	if (rc)
		return failed(rs, out);
	rs->state = RS_CHECKED;
	return 0;
}

/* every process rebuilt from its image, in tree order; the credentials wait
 * for resume (an apply injects further calls, as root) */
int rebuild_proc(struct rproc *p)
{
	return mem_specials(p) || mem_restore(p) || mem_mm_map(p) || files_restore(p) || proc_misc_restore(p) || signals_restore(p) ||
			threads_create(p) || task_state_restore(p) || sched_restore(p) || signals_queue(p) || timers_create(p) ?
		-1 :
		0;
}

int svc_build(struct restorer *rs, const char *dir, int64_t epoch, enum tty_mode tty, struct svc_result *out)
{
	rs->tty = tty;
	if (prepare(rs, dir, epoch))
		return failed(rs, out);
	uint64_t t = now_ns();
	if (tree_create(rs) || fail_hook("tree"))
		return failed(rs, out);
	rs->state = RS_BUILT;
	rs->phase[PH_TREE] = now_ns() - t;
	t = now_ns();
	for (size_t i = 0; i < rs->nprocs; i++) {
		struct rproc *p = &rs->procs[i];
		if (rebuild_proc(p))
			return failed(rs, out);
		vlog("pid %d rebuilt (%zu pages)", p->pid, p->npages);
	}
	/* locks last: a POSIX lock does not survive a close of any fd on
	 * its file by its process, and the fd rebuild closes temporaries */
	if (fdobj_finish(rs) || locks_restore(rs))
		return failed(rs, out);
	rs->phase[PH_REBUILD] = now_ns() - t;
	if (fail_hook("rebuild"))
		return failed(rs, out);
	/* the page lists are not needed any more: apply works from the deltas */
	for (size_t i = 0; i < rs->nprocs; i++) {
		free(rs->procs[i].pages);
		rs->procs[i].pages = NULL;
		rs->procs[i].npages = 0;
	}
	return 0;
}

int svc_resume(struct restorer *rs, struct svc_result *out)
{
	if (rs->state != RS_BUILT)
		return fail("E_USAGE", 0, "resume: no clone is held (build one first)");
	uint64_t t = now_ns();
	for (size_t i = 0; i < rs->nprocs; i++)
		if (creds_restore(&rs->procs[i]))
			return failed(rs, out);
	for (size_t i = 0; i < rs->nprocs; i++)
		if (tasks_finish(&rs->procs[i]))
			return failed(rs, out);
	if (tree_commit(rs) || tasks_detach(rs))
		return failed(rs, out);
	rs->phase[PH_FINISH] = now_ns() - t;
	rs->state = RS_RESUMED;
	return 0;
}

size_t svc_threads(const struct restorer *rs)
{
	size_t n = 0;
	for (size_t i = 0; i < rs->nprocs; i++)
		n += rs->procs[i].ntasks;
	return n;
}
