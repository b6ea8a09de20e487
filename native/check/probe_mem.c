/* Probes of memory features: uffd async write-protect, PAGEMAP_SCAN,
 * process_vm_readv/writev and moving the vDSO. */
#include "check.h"
#include "fdio.h"
#include "kabi.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/uio.h>
#include <unistd.h>

#define UFFD_OPEN_FLAGS (UFFD_USER_MODE_ONLY | O_CLOEXEC | O_NONBLOCK)
#define UFFD_OPEN_TEXT "userfaultfd(UFFD_USER_MODE_ONLY|O_CLOEXEC|O_NONBLOCK)"

static size_t page_size(void)
{
	return (size_t)sysconf(_SC_PAGESIZE);
}

static const char *feature_names(__u64 f, char *buf, size_t size)
{
	static const struct {
		__u64 bit;
		const char *name;
	} names[] = {
		{ UFFD_FEATURE_WP_ASYNC, "WP_ASYNC" },
		{ UFFD_FEATURE_WP_UNPOPULATED, "WP_UNPOPULATED" },
	};
	size_t off = 0;

	buf[0] = '\0';
	for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
		if (!(f & names[i].bit))
			continue;
		int n = snprintf(buf + off, size - off, "%s%s", off ? "|" : "", names[i].name);
		if (n < 0 || (size_t)n >= size - off)
			break;
		off += (size_t)n;
	}
	return buf;
}

/*
 * Opens a userfaultfd with async write-protect: first asks the kernel which
 * features it offers (a throwaway fd, since UFFDIO_API takes one handshake),
 * then enables WP_ASYNC plus WP_UNPOPULATED when offered. gate: this is the
 * probe's first kernel call for UNDERSTUDY_CHECK_DISABLE.
 */
static int uffd_open_wp_async(struct probe_ctx *c, bool gate, __u64 *offered, __u64 *enabled)
{
	struct uffdio_api api;
	char names[64];
	int fd;

	if (gate && probe_gate(c, UFFD_OPEN_TEXT) < 0)
		return -1;
	fd = kabi_userfaultfd(UFFD_OPEN_FLAGS);
	if (fd < 0)
		return probe_fail(c, errno, UFFD_OPEN_TEXT);
	memset(&api, 0, sizeof(api));
	api.api = UFFD_API;
	if (ioctl(fd, UFFDIO_API, &api) < 0) {
		int e = errno;
		close(fd);
		return probe_fail(c, e, "UFFDIO_API(uffd %d, features=0)", fd);
	}
	close(fd);
	*offered = api.features;

	fd = kabi_userfaultfd(UFFD_OPEN_FLAGS);
	if (fd < 0)
		return probe_fail(c, errno, UFFD_OPEN_TEXT);
	memset(&api, 0, sizeof(api));
	api.api = UFFD_API;
	api.features = UFFD_FEATURE_WP_ASYNC | (*offered & UFFD_FEATURE_WP_UNPOPULATED);
	*enabled = api.features;
	if (ioctl(fd, UFFDIO_API, &api) < 0) {
		int e = errno;
		close(fd);
		return probe_fail(c, e, "UFFDIO_API(uffd %d, features=%s; kernel offers 0x%llx)", fd, feature_names(*enabled, names, sizeof(names)),
				  (unsigned long long)*offered);
	}
	return fd;
}

/* Registers [addr, addr+len) for write-protect tracking and protects it. */
static int uffd_wp_range(struct probe_ctx *c, int uffd, void *addr, size_t len)
{
	struct uffdio_register reg;
	struct uffdio_writeprotect wp;

	memset(&reg, 0, sizeof(reg));
	reg.range.start = (__u64)(unsigned long)addr;
	reg.range.len = len;
	reg.mode = UFFDIO_REGISTER_MODE_WP;
	if (ioctl(uffd, UFFDIO_REGISTER, &reg) < 0)
		return probe_fail(c, errno, "UFFDIO_REGISTER(uffd %d, %p+0x%zx, MODE_WP)", uffd, addr, len);
	if (!(reg.ioctls & (1ULL << _UFFDIO_WRITEPROTECT)))
		return probe_failx(c,
				   "UFFDIO_REGISTER(uffd %d, %p+0x%zx, MODE_WP) does not offer "
				   "UFFDIO_WRITEPROTECT (ioctls 0x%llx)",
				   uffd, addr, len, (unsigned long long)reg.ioctls);
	memset(&wp, 0, sizeof(wp));
	wp.range = reg.range;
	wp.mode = UFFDIO_WRITEPROTECT_MODE_WP;
	if (ioctl(uffd, UFFDIO_WRITEPROTECT, &wp) < 0)
		return probe_fail(c, errno, "UFFDIO_WRITEPROTECT(uffd %d, %p+0x%zx, MODE_WP)", uffd, addr, len);
	return 0;
}

static int pagemap_entry(int pm_fd, const void *addr, __u64 *entry)
{
	off_t off = (off_t)((unsigned long)addr / page_size() * sizeof(__u64));

	return pread(pm_fd, entry, sizeof(*entry), off) == (ssize_t)sizeof(*entry) ? 0 : -1;
}

struct writer {
	char *base;
	size_t psz;
	int done_fd;
	uint64_t first_ns;
};

/* Writes pages 1 and 2; with async WP the kernel resolves the faults itself. */
static void *write_pages(void *arg)
{
	struct writer *w = arg;
	uint64_t t0 = mono_ns();
	char one = 1;

	w->base[1 * w->psz] = 'W';
	w->first_ns = mono_ns() - t0;
	w->base[2 * w->psz + 7] = 'W';
	fd_write_all(w->done_fd, &one, 1);
	return NULL;
}

int probe_uffd_wp_async(struct probe_ctx *c)
{
	const size_t psz = page_size(), npages = 4, len = npages * psz;
	__u64 offered = 0, enabled = 0, e;
	/* static: a writer stuck in the fault may outlive this frame */
	static struct writer w;
	pthread_t th;
	int uffd, pm = -1, done[2] = { -1, -1 }, r;
	char *base = MAP_FAILED, names[64];
	bool wp_before[4] = { false }, wp_after[4] = { false };

	uffd = uffd_open_wp_async(c, true, &offered, &enabled);
	if (uffd < 0)
		return -1;
	base = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (base == MAP_FAILED) {
		probe_fail(c, errno, "mmap(anonymous, %zu bytes)", len);
		goto out;
	}
	/* Pages 0-2 hold data; page 3 stays unpopulated, which only
	 * WP_UNPOPULATED protects (with a PTE marker). */
	memset(base, 'a', 3 * psz);
	if (uffd_wp_range(c, uffd, base, len) < 0)
		goto out;
	pm = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
	if (pm < 0) {
		probe_fail(c, errno, "open(/proc/self/pagemap)");
		goto out;
	}
	for (size_t i = 0; i < npages; i++) {
		if (i == 3 && !(enabled & UFFD_FEATURE_WP_UNPOPULATED))
			break;
		if (pagemap_entry(pm, base + i * psz, &e) < 0) {
			probe_fail(c, errno, "pread(/proc/self/pagemap, %p)", base + i * psz);
			goto out;
		}
		wp_before[i] = (e & KABI_PM_UFFD_WP) != 0;
		if (!wp_before[i]) {
			probe_failx(c,
				    "page %zu at %p not write-protected after UFFDIO_WRITEPROTECT "
				    "(pagemap entry 0x%llx)",
				    i, base + i * psz, (unsigned long long)e);
			goto out;
		}
	}
	if (pipe2(done, O_CLOEXEC) < 0) {
		probe_fail(c, errno, "pipe2()");
		goto out;
	}
	w = (struct writer){ .base = base, .psz = psz, .done_fd = done[1] };
	r = pthread_create(&th, NULL, write_pages, &w);
	if (r) {
		probe_fail(c, r, "pthread_create(writer)");
		goto out;
	}
	r = wait_fd(done[0], POLLIN, CHECK_WAIT_MS);
	if (r <= 0) {
		/* Blocked in the fault: not async. Exiting the probe ends the thread. */
		probe_fail(c, r < 0 ? errno : ETIMEDOUT,
			   "write to write-protected page %p "
			   "(blocked: the kernel did not resolve it asynchronously)",
			   base + psz);
		done[0] = done[1] = -1; /* left open for the writer, which may still run */
		goto out;
	}
	r = pthread_join(th, NULL);
	if (r) {
		probe_fail(c, r, "pthread_join(writer)");
		goto out;
	}
	for (size_t i = 0; i < npages; i++) {
		if (pagemap_entry(pm, base + i * psz, &e) < 0) {
			probe_fail(c, errno, "pread(/proc/self/pagemap, %p)", base + i * psz);
			goto out;
		}
		wp_after[i] = (e & KABI_PM_UFFD_WP) != 0;
	}
	if (!(enabled & UFFD_FEATURE_WP_UNPOPULATED))
		wp_after[3] = true; /* not protected in the first place */
	if (base[psz] != 'W' || base[2 * psz + 7] != 'W' || !wp_after[0] || wp_after[1] || wp_after[2] || !wp_after[3]) {
		probe_failx(c, "after writing pages 1 and 2 of 4: uffd-wp bits %d%d%d%d, expected 1001", wp_after[0], wp_after[1], wp_after[2],
			    wp_after[3]);
		goto out;
	}
	probe_ok(c,
		 "kernel offers features 0x%llx; enabled %s (0x%llx); %s; writes to 2 of 4 "
		 "protected pages completed without blocking (first in %llu ns) and cleared "
		 "exactly their uffd-wp bits",
		 (unsigned long long)offered, feature_names(enabled, names, sizeof(names)), (unsigned long long)enabled,
		 (enabled & UFFD_FEATURE_WP_UNPOPULATED) ? "the unpopulated page was protected too" : "unpopulated pages not protectable",
		 (unsigned long long)w.first_ns);
out:
	if (done[0] >= 0) {
		close(done[0]);
		close(done[1]);
	}
	if (pm >= 0)
		close(pm);
	if (base != MAP_FAILED && c->ok)
		munmap(base, len);
	close(uffd);
	return c->ok ? 0 : -1;
}

static long pagemap_scan(int pm, char *start, char *end, struct page_region *vec, size_t n, __u64 *walk_end)
{
	struct pm_scan_arg arg;
	long r;

	memset(&arg, 0, sizeof(arg));
	arg.size = sizeof(arg);
	arg.flags = PM_SCAN_WP_MATCHING | PM_SCAN_CHECK_WPASYNC;
	arg.start = (__u64)(unsigned long)start;
	arg.end = (__u64)(unsigned long)end;
	arg.vec = (__u64)(unsigned long)vec;
	arg.vec_len = n;
	arg.category_mask = PAGE_IS_WRITTEN;
	arg.return_mask = PAGE_IS_WRITTEN;
	r = ioctl(pm, PAGEMAP_SCAN, &arg);
	*walk_end = arg.walk_end;
	return r;
}

int probe_pagemap_scan(struct probe_ctx *c)
{
	const size_t psz = page_size(), npages = 16, len = npages * psz;
	struct page_region vec[16];
	__u64 offered, enabled, walk_end;
	uint64_t t0, scan_ns;
	char *base = MAP_FAILED, *end;
	int uffd, pm = -1;
	long n;

	uffd = uffd_open_wp_async(c, false, &offered, &enabled);
	if (uffd < 0)
		return -1;
	base = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (base == MAP_FAILED) {
		probe_fail(c, errno, "mmap(anonymous, %zu bytes)", len);
		goto out;
	}
	end = base + len;
	memset(base, 'a', len);
	if (uffd_wp_range(c, uffd, base, len) < 0)
		goto out;
	pm = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
	if (pm < 0) {
		probe_fail(c, errno, "open(/proc/self/pagemap)");
		goto out;
	}
	if (probe_gate(c, "ioctl(/proc/self/pagemap, PAGEMAP_SCAN)") < 0)
		goto out;
	n = pagemap_scan(pm, base, end, vec, 16, &walk_end);
	if (n < 0) {
		probe_fail(c, errno,
			   "ioctl(/proc/self/pagemap fd %d, PAGEMAP_SCAN, %p-%p, "
			   "WP_MATCHING|CHECK_WPASYNC)",
			   pm, base, end);
		goto out;
	}
	if (n != 0) {
		probe_failx(c,
			    "PAGEMAP_SCAN of freshly protected %p-%p reported %ld written "
			    "regions, expected 0",
			    base, end, n);
		goto out;
	}
	base[3 * psz] = 'W';
	base[11 * psz + 100] = 'W';
	t0 = mono_ns();
	n = pagemap_scan(pm, base, end, vec, 16, &walk_end);
	scan_ns = mono_ns() - t0;
	if (n < 0) {
		probe_fail(c, errno,
			   "ioctl(/proc/self/pagemap fd %d, PAGEMAP_SCAN, %p-%p, "
			   "WP_MATCHING|CHECK_WPASYNC) after writes",
			   pm, base, end);
		goto out;
	}
	if (n != 2 || vec[0].start != (__u64)(unsigned long)(base + 3 * psz) || vec[0].end != vec[0].start + psz ||
	    vec[0].categories != PAGE_IS_WRITTEN || vec[1].start != (__u64)(unsigned long)(base + 11 * psz) || vec[1].end != vec[1].start + psz ||
	    vec[1].categories != PAGE_IS_WRITTEN) {
		char got[256] = "";
		size_t off = 0;
		for (long i = 0; i < n && i < 16 && off < sizeof(got); i++) {
			int k = snprintf(got + off, sizeof(got) - off, " [%lld,%lld)/0x%llx",
					 (long long)(vec[i].start - (unsigned long)base) / (long long)psz,
					 (long long)(vec[i].end - (unsigned long)base) / (long long)psz, (unsigned long long)vec[i].categories);
			if (k < 0)
				break;
			off += (size_t)k;
		}
		probe_failx(c,
			    "PAGEMAP_SCAN after writing pages 3 and 11 of 16 reported %ld "
			    "regions (in pages):%s; expected [3,4) and [11,12) with PAGE_IS_WRITTEN",
			    n, got);
		goto out;
	}
	if (walk_end != (__u64)(unsigned long)end) {
		probe_failx(c, "PAGEMAP_SCAN stopped at 0x%llx, expected the end %p", (unsigned long long)walk_end, end);
		goto out;
	}
	n = pagemap_scan(pm, base, end, vec, 16, &walk_end);
	if (n < 0) {
		probe_fail(c, errno, "ioctl(/proc/self/pagemap fd %d, PAGEMAP_SCAN) rescan", pm);
		goto out;
	}
	if (n != 0) {
		probe_failx(c,
			    "second PAGEMAP_SCAN reported %ld written regions: pages were not "
			    "re-protected",
			    n);
		goto out;
	}
	probe_ok(c,
		 "after writing pages 3 and 11 of 16 WP_ASYNC pages, PAGEMAP_SCAN "
		 "(WP_MATCHING|CHECK_WPASYNC, PAGE_IS_WRITTEN) returned exactly [3,4) and "
		 "[11,12) in %llu ns and re-protected them: the next scan found none",
		 (unsigned long long)scan_ns);
out:
	if (pm >= 0)
		close(pm);
	if (base != MAP_FAILED)
		munmap(base, len);
	close(uffd);
	return c->ok ? 0 : -1;
}

int probe_process_vm(struct probe_ctx *c)
{
	struct target t;
	char buf[TARGET_BUF_SIZE], answer;
	struct iovec local, remote;
	const char *after = TARGET_BUF_AFTER;
	ssize_t n;

	if (target_start(c, &t, false) < 0)
		return -1;
	if (probe_gate(c, "process_vm_readv()") < 0)
		goto out;
	memset(buf, 0, sizeof(buf));
	local = (struct iovec){ buf, sizeof(buf) };
	remote = (struct iovec){ target_buf, sizeof(target_buf) };
	n = process_vm_readv(t.pid, &local, 1, &remote, 1, 0);
	if (n < 0) {
		probe_fail(c, errno, "process_vm_readv(pid %d, %p, %zu)", (int)t.pid, (void *)target_buf, sizeof(target_buf));
		goto out;
	}
	if (n != (ssize_t)sizeof(buf) || strcmp(buf, TARGET_BUF_BEFORE) != 0) {
		probe_failx(c, "process_vm_readv(pid %d, %p) read %zd bytes \"%.*s\", expected \"%s\"", (int)t.pid, (void *)target_buf, n,
			    (int)sizeof(buf), buf, TARGET_BUF_BEFORE);
		goto out;
	}
	local = (struct iovec){ (void *)after, strlen(after) + 1 };
	n = process_vm_writev(t.pid, &local, 1, &remote, 1, 0);
	if (n < 0) {
		probe_fail(c, errno, "process_vm_writev(pid %d, %p, %zu)", (int)t.pid, (void *)target_buf, local.iov_len);
		goto out;
	}
	if (n != (ssize_t)local.iov_len) {
		probe_failx(c, "process_vm_writev(pid %d, %p) wrote %zd of %zu bytes", (int)t.pid, (void *)target_buf, n, local.iov_len);
		goto out;
	}
	if (target_query_buf(c, &t, &answer) < 0)
		goto out;
	if (answer != 'Y') {
		probe_failx(c, "pid %d does not see the value written at %p by process_vm_writev", (int)t.pid, (void *)target_buf);
		goto out;
	}
	probe_ok(c,
		 "process_vm_readv read \"%s\" (%zu bytes) at %p of pid %d; process_vm_writev "
		 "wrote \"%s\" there and the target saw it",
		 TARGET_BUF_BEFORE, sizeof(buf), (void *)target_buf, (int)t.pid, after);
out:
	target_stop(&t);
	return c->ok ? 0 : -1;
}

/* ------------------------------------------------------------ vDSO moves */

#define VDSO_MAX 3
static const char *const vdso_names[VDSO_MAX] = { "[vvar]", "[vvar_vclock]", "[vdso]" };

struct vdso_region {
	unsigned long start, end, new_start;
	bool present;
};

/* Reads a whole /proc file into a malloc'd NUL-terminated buffer. */
static char *slurp(const char *path)
{
	size_t cap = 16384, len = 0;
	char *buf = malloc(cap);
	int fd = open(path, O_RDONLY | O_CLOEXEC);

	if (!buf || fd < 0) {
		int e = errno;
		free(buf);
		if (fd >= 0)
			close(fd);
		errno = e;
		return NULL;
	}
	for (;;) {
		ssize_t n;
		if (len + 1 >= cap) {
			char *nb = realloc(buf, cap * 2);
			if (!nb)
				break;
			buf = nb;
			cap *= 2;
		}
		n = read(fd, buf + len, cap - 1 - len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			break;
		len += (size_t)n;
	}
	close(fd);
	buf[len] = '\0';
	return buf;
}

/* Finds the special mappings in a maps text; counts lines per name. */
static void find_vdso(const char *maps, struct vdso_region r[VDSO_MAX], int count[VDSO_MAX])
{
	const char *line = maps;

	for (int i = 0; i < VDSO_MAX; i++) {
		r[i].present = false;
		count[i] = 0;
	}
	while (line && *line) {
		const char *nl = strchr(line, '\n');
		size_t ll = nl ? (size_t)(nl - line) : strlen(line);
		unsigned long s, e;

		if (sscanf(line, "%lx-%lx", &s, &e) == 2) {
			for (int i = 0; i < VDSO_MAX; i++) {
				size_t nlen = strlen(vdso_names[i]);
				if (ll >= nlen && memcmp(line + ll - nlen, vdso_names[i], nlen) == 0 && (ll == nlen || line[ll - nlen - 1] == ' ')) {
					count[i]++;
					r[i].present = true;
					r[i].start = s;
					r[i].end = e;
				}
			}
		}
		line = nl ? nl + 1 : NULL;
	}
}

struct vdso_report {
	int err;    /* errno of the failed call, 0 when all moved */
	int failed; /* index of the region whose move failed, -1: reservation */
	unsigned long reserve;
};

/* The child: moves the regions, reports, waits to be inspected. It must not
 * call into the vDSO afterwards (glibc's pointers are stale): raw syscalls. */
static __attribute__((noreturn)) void vdso_child(struct vdso_region r[VDSO_MAX], int rep_fd, int hold_fd)
{
	struct vdso_report rep = { .err = 0, .failed = -1 };
	unsigned long lo = ~0ul, hi = 0;
	char c;
	void *res;

	for (int i = 0; i < VDSO_MAX; i++) {
		if (!r[i].present)
			continue;
		lo = r[i].start < lo ? r[i].start : lo;
		hi = r[i].end > hi ? r[i].end : hi;
	}
	/* A free range as large as the whole block, keeping relative positions. */
	res = mmap(NULL, hi - lo, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (res == MAP_FAILED) {
		rep.err = errno;
		goto report;
	}
	rep.reserve = (unsigned long)res;
	for (int i = 0; i < VDSO_MAX; i++) {
		void *to;
		if (!r[i].present)
			continue;
		to = (char *)res + (r[i].start - lo);
		if (mremap((void *)r[i].start, r[i].end - r[i].start, r[i].end - r[i].start, MREMAP_MAYMOVE | MREMAP_FIXED, to) == MAP_FAILED) {
			rep.err = errno;
			rep.failed = i;
			break;
		}
	}
report:
	if (syscall(SYS_write, rep_fd, &rep, sizeof(rep)) != (long)sizeof(rep))
		syscall(SYS_exit_group, 1);
	syscall(SYS_read, hold_fd, &c, 1); /* until the probe has looked (or EOF) */
	syscall(SYS_exit_group, 0);
	__builtin_unreachable();
}

int probe_vdso_mremap(struct probe_ctx *c)
{
	struct vdso_region r[VDSO_MAX], moved[VDSO_MAX];
	int count[VDSO_MAX], rep_pipe[2] = { -1, -1 }, hold_pipe[2] = { -1, -1 };
	struct vdso_report rep;
	char *maps, path[64], what[256] = "";
	unsigned long lo = ~0ul;
	pid_t pid = -1;
	size_t off = 0;

	maps = slurp("/proc/self/maps");
	if (!maps)
		return probe_fail(c, errno, "read(/proc/self/maps)");
	find_vdso(maps, r, count);
	free(maps);
	if (!r[2].present || !r[0].present)
		return probe_failx(c, "/proc/self/maps lists %s[vvar] and %s[vdso]", r[0].present ? "" : "no ", r[2].present ? "" : "no ");
	for (int i = 0; i < VDSO_MAX; i++) {
		r[i].new_start = 0;
		if (r[i].present && r[i].start < lo)
			lo = r[i].start;
	}
	if (probe_gate(c, "mremap([vdso], MREMAP_MAYMOVE|MREMAP_FIXED)") < 0)
		return -1;
	if (pipe2(rep_pipe, O_CLOEXEC) < 0 || pipe2(hold_pipe, O_CLOEXEC) < 0) {
		probe_fail(c, errno, "pipe2()");
		goto out;
	}
	pid = fork_helper();
	if (pid < 0) {
		probe_fail(c, errno, "fork()");
		goto out;
	}
	if (pid == 0) {
		close(rep_pipe[0]);
		close(hold_pipe[1]);
		vdso_child(r, rep_pipe[1], hold_pipe[0]);
	}
	close(rep_pipe[1]);
	close(hold_pipe[0]);
	rep_pipe[1] = hold_pipe[0] = -1;
	if (read_exact_timeout(rep_pipe[0], &rep, sizeof(rep), CHECK_WAIT_MS) < 0) {
		probe_fail(c, errno, "read(report of pid %d)", (int)pid);
		goto out;
	}
	if (rep.err) {
		if (rep.failed < 0)
			probe_fail(c, rep.err, "mmap(PROT_NONE reservation) in pid %d", (int)pid);
		else
			probe_fail(c, rep.err,
				   "mremap(%s 0x%lx-0x%lx, MREMAP_MAYMOVE|MREMAP_FIXED, "
				   "0x%lx) in pid %d",
				   vdso_names[rep.failed], r[rep.failed].start, r[rep.failed].end, rep.reserve + (r[rep.failed].start - lo),
				   (int)pid);
		goto out;
	}
	snprintf(path, sizeof(path), "/proc/%d/maps", (int)pid);
	maps = slurp(path);
	if (!maps) {
		probe_fail(c, errno, "read(%s)", path);
		goto out;
	}
	find_vdso(maps, moved, count);
	free(maps);
	for (int i = 0; i < VDSO_MAX; i++) {
		unsigned long want;
		if (!r[i].present) {
			if (moved[i].present) {
				probe_failx(c, "%s appeared in %s after the moves", vdso_names[i], path);
				goto out;
			}
			continue;
		}
		want = rep.reserve + (r[i].start - lo);
		if (!moved[i].present || count[i] != 1 || moved[i].start != want || moved[i].end - moved[i].start != r[i].end - r[i].start) {
			probe_failx(c,
				    "%s: %s was 0x%lx-0x%lx; after mremap to 0x%lx it lists %d such "
				    "line(s)%s0x%lx-0x%lx",
				    path, vdso_names[i], r[i].start, r[i].end, want, count[i], moved[i].present ? ", the last at " : "",
				    moved[i].present ? moved[i].start : 0, moved[i].present ? moved[i].end : 0);
			goto out;
		}
		int k = snprintf(what + off, sizeof(what) - off, "%s%s 0x%lx->0x%lx (%lu KiB)", off ? ", " : "", vdso_names[i], r[i].start, want,
				 (r[i].end - r[i].start) / 1024);
		if (k > 0 && (size_t)k < sizeof(what) - off)
			off += (size_t)k;
	}
	probe_ok(c,
		 "moved with mremap(MREMAP_MAYMOVE|MREMAP_FIXED) in pid %d: %s; "
		 "/proc/PID/maps lists the same names and sizes at the new addresses",
		 (int)pid, what);
out:
	if (hold_pipe[1] >= 0)
		close(hold_pipe[1]); /* releases the child */
	if (hold_pipe[0] >= 0)
		close(hold_pipe[0]);
	if (rep_pipe[0] >= 0)
		close(rep_pipe[0]);
	if (rep_pipe[1] >= 0)
		close(rep_pipe[1]);
	if (pid > 0) {
		int st;
		if (wait_pid_timeout(pid, &st, 1000) != pid)
			kill_and_reap(pid);
	}
	return c->ok ? 0 : -1;
}
