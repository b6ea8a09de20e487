/* service.c: the restore phases as requests on one struct restorer. */
#ifndef UNDERSTUDY_RESTORE_SERVICE_H
#define UNDERSTUDY_RESTORE_SERVICE_H
#include "restore.h"

#define SVC_MAX_KILLED 4096
struct svc_result {
	pid_t killed[SVC_MAX_KILLED]; /* host pids a failure killed */
	size_t nkilled;
};

/* Each returns 0, or -1 with g_err set and, where processes had been
 * created, all of them killed and listed in out (rs is then empty again). */
int svc_check(struct restorer *rs, const char *dir, int64_t epoch, struct svc_result *out);
int svc_build(struct restorer *rs, const char *dir, int64_t epoch, enum tty_mode tty, struct svc_result *out);
struct apply_stats {
	uint64_t bytes, ns;
	uint32_t pages, mapped, unmapped, reprotected;
	uint32_t procs_added, procs_removed, threads_added, threads_removed;
	uint32_t fds_opened, fds_closed;
};
/* apply.c: epoch (the clone's + 1) applied in place to the built clone */
int svc_apply_stats(struct restorer *rs, uint32_t epoch, struct svc_result *out, struct apply_stats *st);
int svc_resume(struct restorer *rs, struct svc_result *out);
/* kills the clone held, if any (listed in out), and empties rs */
void svc_abort(struct restorer *rs, struct svc_result *out);
/* frees everything rs holds (kills nothing) */
void svc_reset(struct restorer *rs);
size_t svc_threads(const struct restorer *rs);
/* the rebuild of one process from rs->im.last's record (build, and apply
 * for a process a delta adds) */
int rebuild_proc(struct rproc *p);

#endif
