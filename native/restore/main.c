/* understudy-restore --serve [--fd N] [-v]
 * understudy-restore -D DIR [--epoch N] [--tty null|inherit] [--check] [-v]
 *
 * --serve: the restorer as a service (proto/understudy/v1/restore.proto):
 * RestorerRequest frames in, RestorerReply frames out, on stdin/stdout or on
 * the socket at fd N. One clone is built, patched in place with further
 * deltas, resumed or aborted; the stream's end aborts a clone still held.
 *
 * -D DIR: one restore (build + resume) of the app checkpointed in DIR (epoch
 * N, default the newest), left running detached; a line on stdout says what
 * was restored, an error goes to stderr. Exit status 0 / 1 / 2 (usage).
 *
 * Everything that can be refused is refused before any process is created;
 * a failure after that kills every process created (pid 1 of the new
 * namespace first, which takes the rest with it). */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "frame.h"
#include "restore.h"
#include "service.h"
#include "understudy/v1/errors.pb-c.h"
#include "understudy/v1/restore.pb-c.h"

#define RESTORER_VERSION 1
#define MAX_REQUEST (1u << 20)

static struct restorer RS_MAIN; /* the one clone this process holds */
static struct svc_result RES;

static int usage(const char *msg)
{
	fprintf(stderr,
		"understudy-restore: %s\nusage: understudy-restore --serve [--fd N] [-v]\n"
		"       understudy-restore -D DIR [--epoch N] [--tty null|inherit] [--check] [-v]\n",
		msg);
	return 2;
}

static int code_value(const char *name)
{
	const ProtobufCEnumValue *v = protobuf_c_enum_descriptor_get_value_by_name(&understudy__v1__error_code__descriptor, name);
	return v ? v->value : UNDERSTUDY__V1__ERROR_CODE__E_INTERNAL;
}

static void fill_clone(struct restorer *rs, Understudy__V1__CloneInfo *ci, Understudy__V1__Phases *ph, int32_t *pids, bool check_only)
{
	ci->epoch = rs->im.target;
	ci->image_id = rs->im.last && rs->im.last->image_id ? rs->im.last->image_id : "";
	for (size_t i = 0; i < rs->nprocs; i++)
		pids[i] = check_only ? rs->procs[i].pr->pid : rs->procs[i].pid;
	ci->n_pids = rs->nprocs;
	ci->pids = pids;
	ci->threads = (uint32_t)svc_threads(rs);
	ci->reaper = rs->reaper;
	ci->root_is_init = rs->root_is_init;
	ci->bytes = rs->bytes_written;
	ci->total_ns = now_ns() - rs->t_start;
	ph->read_ns = rs->phase[PH_READ];
	ph->verify_ns = rs->phase[PH_VERIFY];
	ph->check_ns = rs->phase[PH_CHECK];
	ph->tree_ns = rs->phase[PH_TREE];
	ph->rebuild_ns = rs->phase[PH_REBUILD];
	ph->finish_ns = rs->phase[PH_FINISH];
	ph->apply_ns = rs->phase[PH_APPLY];
	ci->phases = ph;
	ci->stub = rs->state == RS_BUILT ? rs->stub : 0;
}

/* one request -> one reply written to out_fd; false when the reply could
 * not be written (the caller then stops) */
static bool serve_one(struct restorer *rs, const Understudy__V1__RestorerRequest *q, int out_fd)
{
	Understudy__V1__RestorerReply rep = UNDERSTUDY__V1__RESTORER_REPLY__INIT;
	Understudy__V1__CloneInfo ci = UNDERSTUDY__V1__CLONE_INFO__INIT;
	Understudy__V1__Phases ph = UNDERSTUDY__V1__PHASES__INIT;
	Understudy__V1__ApplyResult ar = UNDERSTUDY__V1__APPLY_RESULT__INIT;
	Understudy__V1__AbortResult ab = UNDERSTUDY__V1__ABORT_RESULT__INIT;
	rep.version = RESTORER_VERSION;
	rep.id = q->id;
	memset(&g_err, 0, sizeof(g_err));
	RES.nkilled = 0;
	int rc = 0;
	int32_t *pids = NULL;
	if (q->version != RESTORER_VERSION) {
		rc = fail("E_VERSION", 0, "request version %u is not supported (this restorer speaks version %d)", q->version, RESTORER_VERSION);
	} else if (q->cmd_case == UNDERSTUDY__V1__RESTORER_REQUEST__CMD_BUILD || q->cmd_case == UNDERSTUDY__V1__RESTORER_REQUEST__CMD_CHECK) {
		bool check = q->cmd_case == UNDERSTUDY__V1__RESTORER_REQUEST__CMD_CHECK;
		const char *dir = check ? q->check->image_dir : q->build->image_dir;
		int64_t ep = check ? q->check->epoch : q->build->epoch;
		if (rs->state == RS_BUILT)
			rc = fail("E_BUSY", 0, "this restorer already holds a clone (epoch %u): resume or abort it first", rs->im.target);
		else if (!dir || !dir[0])
			rc = fail("E_USAGE", 0, "%s: image_dir is required", check ? "check" : "build");
		else {
			svc_reset(rs);
			rs->t_start = now_ns();
			rc = check ? svc_check(rs, dir, ep, &RES) :
				     svc_build(rs, dir, ep, q->build->tty == UNDERSTUDY__V1__TTY_MODE__TTY_INHERIT ? TTY_INHERIT : TTY_NULL, &RES);
		}
		if (!rc) {
			pids = calloc(rs->nprocs + 1, sizeof(*pids));
			fill_clone(rs, &ci, &ph, pids ? pids : (int32_t[1]){ 0 }, check);
			if (!pids)
				ci.n_pids = 0;
			if (check) {
				rep.result_case = UNDERSTUDY__V1__RESTORER_REPLY__RESULT_CHECK;
				rep.check = &ci;
			} else {
				rep.result_case = UNDERSTUDY__V1__RESTORER_REPLY__RESULT_BUILD;
				rep.build = &ci;
			}
		}
	} else if (q->cmd_case == UNDERSTUDY__V1__RESTORER_REQUEST__CMD_APPLY) {
		struct apply_stats st;
		if (rs->state != RS_BUILT)
			rc = fail("E_USAGE", 0, "apply: no clone is held (build one first)");
		else
			rc = svc_apply_stats(rs, q->apply->epoch, &RES, &st);
		if (!rc) {
			pids = calloc(rs->nprocs + 1, sizeof(*pids));
			for (size_t i = 0; pids && i < rs->nprocs; i++)
				pids[i] = rs->procs[i].pid;
			ar.epoch = rs->im.target;
			ar.bytes = st.bytes;
			ar.pages = st.pages;
			ar.regions_mapped = st.mapped;
			ar.regions_unmapped = st.unmapped;
			ar.regions_reprotected = st.reprotected;
			ar.processes_added = st.procs_added;
			ar.processes_removed = st.procs_removed;
			ar.threads_added = st.threads_added;
			ar.threads_removed = st.threads_removed;
			ar.n_pids = pids ? rs->nprocs : 0;
			ar.pids = pids;
			ar.apply_ns = st.ns;
			ar.fds_opened = st.fds_opened;
			ar.fds_closed = st.fds_closed;
			rep.result_case = UNDERSTUDY__V1__RESTORER_REPLY__RESULT_APPLY;
			rep.apply = &ar;
		}
	} else if (q->cmd_case == UNDERSTUDY__V1__RESTORER_REQUEST__CMD_RESUME) {
		uint64_t t = now_ns();
		rc = svc_resume(rs, &RES);
		if (!rc) {
			pids = calloc(rs->nprocs + 1, sizeof(*pids));
			fill_clone(rs, &ci, &ph, pids ? pids : (int32_t[1]){ 0 }, false);
			if (!pids)
				ci.n_pids = 0;
			ci.total_ns = now_ns() - t;
			rep.result_case = UNDERSTUDY__V1__RESTORER_REPLY__RESULT_RESUME;
			rep.resume = &ci;
		}
	} else if (q->cmd_case == UNDERSTUDY__V1__RESTORER_REQUEST__CMD_ABORT) {
		svc_abort(rs, &RES);
		ab.n_killed = RES.nkilled;
		ab.killed = RES.killed;
		rep.result_case = UNDERSTUDY__V1__RESTORER_REPLY__RESULT_ABORT;
		rep.abort = &ab;
	} else {
		rc = fail("E_USAGE", 0, "a request without a command this restorer knows (%d)", (int)q->cmd_case);
	}
	rep.ok = rc == 0;
	if (rc) {
		rep.error_code = code_value(g_err.code);
		rep.error = g_err.msg;
		rep.errno_value = g_err.errnum;
		rep.n_killed = RES.nkilled;
		rep.killed = RES.killed;
		vlog("request %llu failed: %s: %s", (unsigned long long)q->id, g_err.code, g_err.msg);
	}
	bool ok = frame_write(out_fd, &rep.base) == 0;
	free(pids);
	return ok;
}

static int serve(int in_fd, int out_fd)
{
	struct restorer *rs = &RS_MAIN;
	restorer_init(rs);
	int rc = 0;
	for (;;) {
		uint8_t *buf;
		size_t len;
		int r = frame_read(in_fd, &buf, &len, MAX_REQUEST);
		if (r == 0)
			break;
		if (r < 0) {
			fprintf(stderr, "understudy-restore: reading a request: %s\n", strerror(errno));
			rc = 1;
			break;
		}
		Understudy__V1__RestorerRequest *q = understudy__v1__restorer_request__unpack(NULL, len, buf);
		free(buf);
		if (!q) {
			fprintf(stderr, "understudy-restore: a request frame that does not decode\n");
			rc = 1;
			break;
		}
		bool ok = serve_one(rs, q, out_fd);
		understudy__v1__restorer_request__free_unpacked(q, NULL);
		if (!ok) {
			fprintf(stderr, "understudy-restore: writing a reply: %s\n", strerror(errno));
			rc = 1;
			break;
		}
	}
	/* nobody to tell any more: a clone still held goes */
	svc_abort(rs, &RES);
	return rc;
}

static int one_shot(const char *dir, int64_t epoch, enum tty_mode tty, bool check_only)
{
	struct restorer *rs = &RS_MAIN;
	restorer_init(rs);
	rs->t_start = now_ns();
	int rc = check_only ? svc_check(rs, dir, epoch, &RES) : svc_build(rs, dir, epoch, tty, &RES);
	if (!rc && !check_only)
		rc = svc_resume(rs, &RES);
	if (rc) {
		fprintf(stderr, "understudy-restore: %s: %s", g_err.code, g_err.msg);
		for (size_t i = 0; i < RES.nkilled; i++)
			fprintf(stderr, "%s%d", i ? " " : "; killed what it had created: ", RES.killed[i]);
		fputc('\n', stderr);
		return 1;
	}
	printf("%s epoch %u of image %s: pids", check_only ? "can restore" : "restored", rs->im.target, rs->im.last->image_id);
	for (size_t i = 0; i < rs->nprocs; i++)
		printf(" %d", check_only ? rs->procs[i].pr->pid : rs->procs[i].pid);
	if (!check_only)
		printf(", reaper %d, %.1f ms", rs->reaper, (now_ns() - rs->t_start) / 1e6);
	printf("\n");
	return 0;
}

int main(int argc, char **argv)
{
	const char *dir = NULL;
	int64_t epoch = -1;
	bool check_only = false, serve_mode = false;
	int fd = -1;
	enum tty_mode tty = TTY_NULL;
	for (int i = 1; i < argc; i++) {
		if ((!strcmp(argv[i], "-D") || !strcmp(argv[i], "--dir")) && i + 1 < argc)
			dir = argv[++i];
		else if (!strcmp(argv[i], "--epoch") && i + 1 < argc) {
			char *e;
			epoch = strtoll(argv[++i], &e, 10);
			if (*e || epoch < 0)
				return usage("--epoch takes a non-negative integer");
		} else if (!strcmp(argv[i], "--tty") && i + 1 < argc) {
			const char *m = argv[++i];
			if (!strcmp(m, "null"))
				tty = TTY_NULL;
			else if (!strcmp(m, "inherit"))
				tty = TTY_INHERIT;
			else
				return usage("--tty takes null or inherit");
		} else if (!strcmp(argv[i], "--check"))
			check_only = true;
		else if (!strcmp(argv[i], "--serve"))
			serve_mode = true;
		else if (!strcmp(argv[i], "--fd") && i + 1 < argc) {
			char *e;
			fd = (int)strtol(argv[++i], &e, 10);
			if (*e || fd < 0)
				return usage("--fd takes a file descriptor number");
		} else if (!strcmp(argv[i], "-v"))
			g_verbose = true;
		else
			return usage("unknown argument");
	}
	if (!serve_mode && !dir)
		return usage("-D DIR or --serve is required");
	signal(SIGPIPE, SIG_IGN);
	crc_init();
	vlog("crc32: %s", crc_fast() ? "pclmul" : "zlib");
	if (serve_mode)
		return serve(fd >= 0 ? fd : 0, fd >= 0 ? fd : 1);
	return one_shot(dir, epoch, tty, check_only);
}
