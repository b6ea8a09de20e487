/* Pause profile: clock marks at each step of a checkpoint, on whatever
 * thread runs it, written after the release as one JSON line per checkpoint
 * to the file named by UNDERSTUDY_ENGINE_PROFILE (nothing when unset). Each
 * step's time is the gap since the previous mark of the same thread. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>
#include "engine.h"

#define PROF_MAX 1024
static struct {
	const char *label;
	uint64_t ns;
	int tid;
} marks[PROF_MAX];
static int nmarks;
static int prof_on = -1;
static FILE *prof_out;

uint64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ULL + ts.tv_nsec;
}

bool prof_enabled(void)
{
	if (prof_on < 0) {
		const char *p = getenv("UNDERSTUDY_ENGINE_PROFILE");
		prof_out = p && *p ? fopen(p, "ae") : NULL;
		prof_on = prof_out != NULL;
	}
	return prof_on;
}

void prof_mark(const char *label)
{
	if (!prof_enabled())
		return;
	int i = __atomic_fetch_add(&nmarks, 1, __ATOMIC_RELAXED);
	if (i >= PROF_MAX)
		return;
	marks[i].ns = now_ns();
	marks[i].tid = (int)syscall(SYS_gettid);
	marks[i].label = label;
}

/* Where a slow pause lost its time, when profiling: this thread's wait on
 * a run queue (schedstat run_delay) and the machine's steal time (the host
 * ran something else on our vCPU), as a mark whose value is the counter. */
static unsigned long long rd0, st0;
static void sched_counters(unsigned long long *rd, unsigned long long *st)
{
	char b[256];
	*rd = *st = 0;
	FILE *f = fopen("/proc/thread-self/schedstat", "re");
	if (f) {
		unsigned long long run;
		if (fscanf(f, "%llu %llu", &run, rd) != 2)
			*rd = 0;
		fclose(f);
	}
	f = fopen("/proc/stat", "re");
	if (f) {
		unsigned long long v[8] = { 0 };
		if (fgets(b, sizeof(b), f) &&
		    sscanf(b, "cpu %llu %llu %llu %llu %llu %llu %llu %llu", &v[0], &v[1], &v[2], &v[3], &v[4], &v[5], &v[6], &v[7]) == 8)
			*st = v[7];
		fclose(f);
	}
}

void prof_sched_begin(void)
{
	if (prof_enabled())
		sched_counters(&rd0, &st0);
}

void prof_sched_end(void)
{
	if (!prof_enabled())
		return;
	unsigned long long rd, st;
	sched_counters(&rd, &st);
	int i = __atomic_fetch_add(&nmarks, 1, __ATOMIC_RELAXED);
	if (i < PROF_MAX) {
		marks[i].label = "sched.run_delay_us";
		marks[i].tid = -1;
		marks[i].ns = (rd - rd0);
	}
	i = __atomic_fetch_add(&nmarks, 1, __ATOMIC_RELAXED);
	if (i < PROF_MAX) {
		marks[i].label = "sched.steal_ticks";
		marks[i].tid = -2;
		marks[i].ns = (st - st0) * 1000;
	}
}

void prof_flush(uint64_t t0)
{
	if (!prof_enabled())
		return;
	int n = nmarks < PROF_MAX ? nmarks : PROF_MAX;
	fprintf(prof_out, "[");
	for (int i = 0; i < n; i++) {
		if (marks[i].tid < 0) {
			fprintf(prof_out, "%s[\"%d\",\"%s\",%.1f,0]", i ? "," : "", marks[i].tid, marks[i].label, marks[i].ns / 1e3);
			continue;
		}
		uint64_t prev = t0;
		for (int k = i - 1; k >= 0; k--)
			if (marks[k].tid == marks[i].tid) {
				prev = marks[k].ns;
				break;
			}
		fprintf(prof_out, "%s[\"%d\",\"%s\",%.1f,%.1f]", i ? "," : "", marks[i].tid, marks[i].label, (marks[i].ns - prev) / 1e3,
			(marks[i].ns - t0) / 1e3);
	}
	fprintf(prof_out, "]\n");
	fflush(prof_out);
	nmarks = 0;
}
