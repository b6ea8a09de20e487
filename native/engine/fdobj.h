/* Kernel objects behind fds that are more than a path: pipes, eventfds,
 * epoll instances, and the open file descriptions fds share (fdobj.c). */
#ifndef UNDERSTUDY_ENGINE_FDOBJ_H
#define UNDERSTUDY_ENGINE_FDOBJ_H
#include <stdbool.h>
#include <stdint.h>
#include <sys/stat.h>
#include <sys/types.h>
#include "understudy/v1/image.pb-c.h"

/* One fd of one process of the app, as /proc shows it. */
struct fdsnap_ent {
	pid_t pid;
	int fd;
	int stat_errno; /* stat() of the fd failed (st is zeroed) */
	struct stat st; /* stat() through /proc/PID/fd/N */
	uint32_t flags; /* access mode: O_RDONLY, O_WRONLY or O_RDWR (pipes only) */
	char *target;	/* the link's text */
};

/* Per process and pass (a barrier's capture, or an attach check): every fd
 * of every live process of the app (processes in engine order, fds
 * ascending), read once, and a pidfd of the process. */
struct fdobj_ctx {
	pid_t pid;
	int pidfd;
	struct fdsnap_ent *snap;
	size_t nsnap;
	bool shared; /* snap is the pause's snapshot (fdobj_pause_snapshot) */
};

/* on: from the barrier, the first fdobj_begin's snapshot serves every
 * process until off (the release), which frees it */
void fdobj_pause_snapshot(bool on);
int fdobj_begin(struct fdobj_ctx *c, pid_t pid);
void fdobj_end(struct fdobj_ctx *c);
/* UNDERSTUDY__V1__FD__KIND__PIPE/EVENTFD/EPOLL for the kinds of this file,
 * UNKNOWN for every other target */
Understudy__V1__Fd__Kind fdobj_kind(const char *target);
/* Checks (and, with f non-NULL, captures) a pipe, eventfd or epoll fd:
 * -1 with g_err when it cannot be checkpointed. */
int fdobj_fd(struct fdobj_ctx *c, int fd, const char *target, const struct stat *st, const char *fdinfo, Understudy__V1__Fd *f);
/* The open file description id of fd (see Fd.ofd_id in image.proto). */
int fdobj_ofd_id(struct fdobj_ctx *c, int fd, const struct stat *st, uint64_t *id);
/* for refusal messages: a process holding an fd whose link reads `want`
 * (this engine excluded; app processes too if outside_only) */
pid_t fd_holder(const char *want, bool outside_only, int *hfd, char *comm, size_t clen);
bool is_app_pid(pid_t pid);
/* sockpeer.c: ", connected to pid P (comm) fd N" for a unix socket whose
 * peer is known, else "" */
void sock_peer_describe(uint64_t ino, char *out, size_t len);
#endif
