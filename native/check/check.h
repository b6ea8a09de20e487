/* understudy-check: probes of the kernel features Understudy relies on. */
#ifndef UNDERSTUDY_CHECK_H
#define UNDERSTUDY_CHECK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#define CHECK_VERSION 1
#define CHECK_DETAIL_MAX 1024 /* keeps a result frame under PIPE_BUF */
#define CHECK_WAIT_MS 3000    /* bound for waits inside a probe */

/* State of one probe run, filled in by the probe inside its own process. */
struct probe_ctx {
	const char *id;
	bool forced_off; /* named in UNDERSTUDY_CHECK_DISABLE */
	int timeout_ms;
	bool done; /* ok or fail already recorded */
	bool ok;
	int err;
	char detail[CHECK_DETAIL_MAX];
};

typedef int (*probe_fn)(struct probe_ctx *c);

struct probe_def {
	const char *id;
	probe_fn fn;
};

/* Results. The first recorded outcome wins, so cleanup failures after a
 * failure do not hide the first cause. Both failure forms return -1. */
int probe_ok(struct probe_ctx *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* detail = "<fmt...>: strerror(err)", errno_value = err */
int probe_fail(struct probe_ctx *c, int err, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
/* detail = "<fmt...>", errno_value = 0: an observation that is wrong */
int probe_failx(struct probe_ctx *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Appends to the recorded detail (a hint after a failure, say). */
void probe_append(struct probe_ctx *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Called right before a probe's first kernel call, named by call. Returns 0,
 * or, for a probe named in UNDERSTUDY_CHECK_DISABLE, records the failure
 * "<call>: Function not implemented (forced unavailable by
 * UNDERSTUDY_CHECK_DISABLE)", sets errno = ENOSYS and returns -1, as if the
 * kernel lacked the call. */
int probe_gate(struct probe_ctx *c, const char *call);

/* ---- helpers (util.c) ---- */
uint64_t mono_ns(void);
/* poll one fd for events up to ms; 1 ready, 0 timed out, -1 error */
int wait_fd(int fd, short events, int ms);
/* Reads exactly len bytes within ms. 0 ok; -1 with errno (ETIMEDOUT, EPROTO at EOF). */
int read_exact_timeout(int fd, void *buf, size_t len, int ms);
/* waitpid(pid, __WALL) with a bound; returns pid, 0 on timeout, -1 on error */
pid_t wait_pid_timeout(pid_t pid, int *status, int ms);
/* Describes a wait status: "exited with status N" / "killed by signal N (SIGXXX)". */
const char *status_text(int status, char *buf, size_t size);
/* Kills and reaps a child (direct child only); safe with pid <= 0. */
void kill_and_reap(pid_t pid);
/* fork() for a helper process: the child gets SIGKILL when its parent dies
 * and writes nothing to stdout. */
pid_t fork_helper(void);
/* In a forked helper: closes every fd above 2 except keep_a and keep_b
 * (-1 for none), so helpers hold no pipe end of another helper. */
void close_fds_except(int keep_a, int keep_b);
/* Brings the loopback interface of the current network namespace up. */
int netns_lo_up(struct probe_ctx *c);
/*
 * Runs argv (fixed, no shell) via fork+execvp, optionally inside the network
 * namespace of process netns_pid (0: the current one), with stdout and
 * stderr captured. Returns 0 when it exited 0; otherwise records a failure
 * naming the command, its status and its first output line, and returns -1.
 */
int run_cmd(struct probe_ctx *c, const char *const argv[], pid_t netns_pid);

/*
 * A helper process for the process-level probes: it blocks in read(2) on a
 * command pipe and answers. With grandchild = true it is the child of an
 * intermediate process, so it is not a child of the caller.
 */
struct target {
	pid_t pid;	  /* the target */
	pid_t direct;	  /* our direct child: the target or its parent */
	int cmd_fd;	  /* write end: commands to the target */
	int resp_fd;	  /* read end: answers from the target */
	int aux_fd;	  /* target's fd number of a pipe end it holds */
	uint64_t aux_ino; /* and that pipe's inode (as the target saw it) */
	uint64_t aux_dev;
};
#define TARGET_BUF_SIZE 64
extern char target_buf[TARGET_BUF_SIZE]; /* same address in the target */
#define TARGET_BUF_BEFORE "understudy-pvm-before"
#define TARGET_BUF_AFTER "understudy-pvm-AFTER!"

int target_start(struct probe_ctx *c, struct target *t, bool grandchild);
/* 'p': target answers 'p' (it is alive and running normally) */
int target_ping(struct probe_ctx *c, struct target *t);
/* 'v': target answers 'Y' if target_buf holds TARGET_BUF_AFTER, else 'N' */
int target_query_buf(struct probe_ctx *c, struct target *t, char *answer);
/* Waits until the target sleeps in read(2) on its command pipe (per
 * /proc/PID/syscall), so a probe stops it inside a blocking syscall. */
int target_wait_blocked(struct probe_ctx *c, struct target *t);
/* Ends the target (closes its command pipe, then kills) and reaps what we can. */
void target_stop(struct target *t);

/* ---- probes ---- */
int probe_bpf_syscall(struct probe_ctx *c);
int probe_btf(struct probe_ctx *c);
int probe_tracepoint_attach(struct probe_ctx *c);
int probe_ringbuf(struct probe_ctx *c);
int probe_uffd_wp_async(struct probe_ctx *c);
int probe_pagemap_scan(struct probe_ctx *c);
int probe_ptrace_seize(struct probe_ctx *c);
int probe_syscall_inject(struct probe_ctx *c);
int probe_pidfd_getfd(struct probe_ctx *c);
int probe_clone3_set_tid(struct probe_ctx *c);
int probe_process_vm(struct probe_ctx *c);
int probe_tcp_repair(struct probe_ctx *c);
int probe_netns_veth(struct probe_ctx *c);
int probe_nfqueue_hold(struct probe_ctx *c);
int probe_vdso_mremap(struct probe_ctx *c);

#endif
