/* understudy-restore -D DIR [--epoch N] [--tty null|inherit] [--check] [-v]
 *
 * Restores the app checkpointed in DIR (epoch N, default the newest) with its
 * PIDs, in a new PID namespace, and leaves it running detached from this
 * process. Prints one JSON line on stdout:
 *   {"ok":true,"epoch":N,"pids":[...],"threads":T,"reaper":P,"ns_pid_1":"reaper"|"root",
 *    "bytes":B,"restore_ns":...,"phases":{...}}
 *   {"ok":false,"code":"E_...","message":"...","errno":E}
 * Everything that can be refused is refused before any process is created;
 * a failure after that kills every process created (pid 1 of the new
 * namespace first, which takes the rest with it). Exit status 0 / 1 / 2
 * (usage). */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <unistd.h>
#include "restore.h"

struct restore R;

static void json_str(FILE *f, const char *s)
{
	fputc('"', f);
	for (; s && *s; s++) {
		unsigned char c = *s;
		if (c == '"' || c == '\\')
			fprintf(f, "\\%c", c);
		else if (c < 0x20)
			fprintf(f, "\\u%04x", c);
		else
			fputc(c, f);
	}
	fputc('"', f);
}

static int usage(const char *msg)
{
	printf("{\"ok\":false,\"code\":\"E_USAGE\",\"message\":");
	json_str(stdout, msg);
	printf("}\n");
	fprintf(stderr, "understudy-restore: %s\nusage: understudy-restore -D DIR [--epoch N] [--tty null|inherit] [--check] [-v]\n", msg);
	return 2;
}

int main(int argc, char **argv)
{
	const char *dir = NULL;
	int64_t epoch = -1;
	bool check_only = false;
	R.t_start = now_ns();
	R.tty = TTY_NULL;
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
				R.tty = TTY_NULL;
			else if (!strcmp(m, "inherit"))
				R.tty = TTY_INHERIT;
			else
				return usage("--tty takes null or inherit");
		} else if (!strcmp(argv[i], "--check"))
			check_only = true;
		else if (!strcmp(argv[i], "-v"))
			g_verbose = true;
		else
			return usage("unknown argument");
	}
	if (!dir)
		return usage("-D DIR is required");
	signal(SIGPIPE, SIG_IGN);
	crc_init();
	vlog("crc32: %s", crc_fast() ? "pclmul" : "zlib");
	uint64_t ph[8] = { 0 };
	pid_t killed_reaper = 0;   /* for the report: the reaper, if a failure killed it */
	int rc = image_open(&R.im, dir, epoch);
	ph[0] = now_ns();
	if (!rc)
		rc = image_verify_pages(&R.im);
	ph[1] = now_ns();
	if (!rc)
		rc = tree_plan();
	if (!rc)
		rc = check_all(&R.im);
	if (!rc)
		rc = timers_check();
	if (!rc)
		rc = fdobj_plan();
	if (!rc)
		rc = locks_plan();
	for (size_t i = 0; !rc && i < R.nprocs; i++)
		rc = image_page_map(&R.im, R.procs[i].pr->pid, &R.procs[i].pages, &R.procs[i].npages);
	uint64_t t_map = now_ns();
	for (size_t i = 0; !rc && i < R.nprocs; i++)
		rc = image_verify_refs(&R.im, R.procs[i].pr->pid, R.procs[i].pages, R.procs[i].npages);
	ph[1] += now_ns() - t_map;   /* crc time counts as verification */
	if (!rc && !mem_pick_stub())
		rc = fail("E_UNSUPPORTED", 0, "no free place for the restorer's stub page in the app's address space");
	ph[2] = now_ns();
	vlog("checks done: %zu processes, epoch %u", R.nprocs, R.im.target);
	/* test hook: fail on purpose after a phase, to show the cleanup */
	const char *fail_at = getenv("UNDERSTUDY_RESTORE_FAIL_AFTER");
	if (!rc && !check_only) {
		rc = tree_create();
		if (!rc && fail_at && !strcmp(fail_at, "tree"))
			rc = fail("E_RESTORE", 0, "failing on purpose after creating the process tree (UNDERSTUDY_RESTORE_FAIL_AFTER=tree)");
		ph[3] = now_ns();
		for (size_t i = 0; !rc && i < R.nprocs; i++) {
			struct rproc *p = &R.procs[i];
			rc = mem_specials(p) || mem_restore(p) || mem_mm_map(p) || files_restore(p) || proc_misc_restore(p) ||
			     signals_restore(p) || threads_create(p) || task_state_restore(p) || sched_restore(p) || signals_queue(p) || timers_create(p) || creds_restore(p);
			vlog("pid %d rebuilt (%zu pages)", p->pid, p->npages);
		}
		if (!rc)
			rc = fdobj_finish();
		/* locks last: a POSIX lock does not survive a close of any fd on
		 * its file by its process, and the fd rebuild closes temporaries */
		if (!rc)
			rc = locks_restore();
		ph[4] = now_ns();
		if (!rc && fail_at && !strcmp(fail_at, "rebuild"))
			rc = fail("E_RESTORE", 0, "failing on purpose after rebuilding every process (UNDERSTUDY_RESTORE_FAIL_AFTER=rebuild)");
		for (size_t i = 0; !rc && i < R.nprocs; i++)
			rc = tasks_finish(&R.procs[i]);
		if (!rc)
			rc = tree_commit();
		if (!rc)
			rc = tasks_detach();
		ph[5] = now_ns();
		if (rc) {
			killed_reaper = R.reaper;
			tree_kill();
		}
	}
	if (rc) {
		if (!g_err.code[0])
			fail("E_INTERNAL", 0, "restore failed without an error message");
		printf("{\"ok\":false,\"code\":");
		json_str(stdout, g_err.code);
		printf(",\"message\":");
		json_str(stdout, g_err.msg);
		/* what had been created (all killed now): the reaper, then every
		 * process by the host pid it got (the root is the reaper when it
		 * was pid 1) */
		printf(",\"errno\":%d,\"killed\":[", g_err.errnum);
		const char *sep = "";
		if (killed_reaper) {
			printf("%d", killed_reaper);
			sep = ",";
		}
		for (size_t i = 0; i < R.nprocs; i++)
			if (R.procs[i].created && R.procs[i].pid != killed_reaper) {
				printf("%s%d", sep, R.procs[i].pid);
				sep = ",";
			}
		printf("]}\n");
		fprintf(stderr, "understudy-restore: %s: %s\n", g_err.code, g_err.msg);
		return 1;
	}
	uint64_t end = now_ns();
	size_t threads = 0;
	for (size_t i = 0; i < R.nprocs; i++)
		threads += R.procs[i].ntasks;
	printf("{\"ok\":true,\"epoch\":%u,\"image_id\":", R.im.target);
	json_str(stdout, R.im.last->image_id);
	printf(",\"check_only\":%s,\"pids\":[", check_only ? "true" : "false");
	for (size_t i = 0; i < R.nprocs; i++)
		printf("%s%d", i ? "," : "", R.procs[i].pid);
	printf("],\"threads\":%zu,\"reaper\":%d,\"ns_pid_1\":\"%s\",\"bytes\":%llu,\"restore_ns\":%llu,", threads, R.reaper,
	       R.root_is_init ? "root" : "reaper", (unsigned long long)R.bytes_written, (unsigned long long)(end - R.t_start));
	printf("\"phases\":{\"read_ns\":%llu,\"verify_ns\":%llu,\"check_ns\":%llu", (unsigned long long)(ph[0] - R.t_start),
	       (unsigned long long)(ph[1] - ph[0]), (unsigned long long)(ph[2] - ph[1]));
	if (!check_only)
		printf(",\"tree_ns\":%llu,\"rebuild_ns\":%llu,\"finish_ns\":%llu", (unsigned long long)(ph[3] - ph[2]),
		       (unsigned long long)(ph[4] - ph[3]), (unsigned long long)(ph[5] - ph[4]));
	printf("}}\n");
	return 0;
}
