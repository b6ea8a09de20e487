/* Dirty tracking: a userfaultfd created inside the app (injected), taken with
 * pidfd_getfd and closed in the app again, configured for asynchronous
 * write-protect; regions registered in WP mode; PAGEMAP_SCAN on
 * /proc/PID/pagemap reports (and re-protects) the pages written since. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <unistd.h>
#include "arena.h"
#include "engine.h"
#include "kabi.h"

void rv_free(struct range_vec *rv)
{
	free(rv->v);
	memset(rv, 0, sizeof(*rv));
}

int rv_push(struct range_vec *rv, uint64_t s, uint64_t e, uint64_t cat)
{
	if (rv->n && rv->v[rv->n - 1].end == s && rv->v[rv->n - 1].cat == cat) {
		rv->v[rv->n - 1].end = e;
		return 0;
	}
	if (grow(&rv->v, &rv->cap, rv->n + 1, sizeof(rv->v[0]), 64, "a range vector"))
		return -1;
	rv->v[rv->n].start = s;
	rv->v[rv->n].end = e;
	rv->v[rv->n].cat = cat;
	rv->n++;
	return 0;
}

static int open_pagemap(struct proc *p)
{
	if (p->pagemap_fd >= 0)
		return 0;
	char path[64];
	snprintf(path, sizeof(path), "/proc/%d/pagemap", p->pid);
	p->pagemap_fd = open(path, O_RDONLY | O_CLOEXEC);
	if (p->pagemap_fd < 0)
		return fail("E_NATIVE", errno, "open(%s)", path);
	return 0;
}

void uffd_close(struct proc *p)
{
	if (p->uffd >= 0)
		close(p->uffd);
	if (p->pagemap_fd >= 0)
		close(p->pagemap_fd);
	p->uffd = -1;
	p->pagemap_fd = -1;
	p->uffd_features = 0;
}

int uffd_init(struct proc *p, pid_t tid)
{
	uffd_close(p);
	if (open_pagemap(p))
		return -1;
	/* userfaultfd, taken, closed: one injection session */
	struct inject_session is;
	if (inject_begin(&is, p, tid))
		return -1;
	long a[6] = { UFFD_USER_MODE_ONLY | O_CLOEXEC | O_NONBLOCK, 0, 0, 0, 0, 0 };
	long fd_in_app = -1;
	if (inject_call(&is, SYS_userfaultfd, a, &fd_in_app)) {
		inject_end(&is);
		return -1;
	}
	if (fd_in_app < 0) {
		int e = (int)-fd_in_app;
		inject_end(&is);
		return fail("E_NATIVE", e, "userfaultfd() injected into pid %d", p->pid);
	}
	int rc = 0;
	int pidfd = kabi_pidfd_open(p->pid, 0);
	if (pidfd < 0) {
		rc = fail("E_NATIVE", errno, "pidfd_open(pid %d)", p->pid);
	} else {
		p->uffd = kabi_pidfd_getfd(pidfd, (int)fd_in_app, 0);
		if (p->uffd < 0)
			rc = fail("E_NATIVE", errno, "pidfd_getfd(pid %d, fd %ld)", p->pid, fd_in_app);
		close(pidfd);
	}
	/* never leave the injected fd in the app, whatever happened above */
	long c[6] = { fd_in_app, 0, 0, 0, 0, 0 }, cret = 0;
	if (inject_call(&is, SYS_close, c, &cret) || cret != 0)
		rc = fail("E_NATIVE", cret < 0 ? (int)-cret : 0, "close(fd %ld) injected into pid %d", fd_in_app, p->pid);
	if (inject_end(&is))
		rc = -1;
	if (rc) {
		uffd_close(p);
		return -1;
	}
	struct uffdio_api api = { .api = UFFD_API, .features = UFFD_FEATURE_WP_ASYNC | UFFD_FEATURE_WP_UNPOPULATED };
	if (ioctl(p->uffd, UFFDIO_API, &api)) {
		int e = errno;
		uffd_close(p);
		return fail("E_KERNEL_FEATURE", e, "ioctl(UFFDIO_API, WP_ASYNC|WP_UNPOPULATED) on the userfaultfd of pid %d", p->pid);
	}
	p->uffd_features = api.features;
	return 0;
}

/* Register [start,end) for write-protect tracking and protect it (unpopulated
 * pages included). Returns 1 (with no error set) when the kernel refuses this
 * kind of region or it is already registered by the app itself (EBUSY). */
int uffd_register_wp(struct proc *p, uint64_t start, uint64_t end)
{
	struct uffdio_register reg = { .range = { start, end - start }, .mode = UFFDIO_REGISTER_MODE_WP };
	if (ioctl(p->uffd, UFFDIO_REGISTER, &reg)) {
		if (errno == EINVAL || errno == EBUSY || errno == EPERM)
			return 1;
		return fail("E_NATIVE", errno, "ioctl(UFFDIO_REGISTER, pid %d, 0x%llx-0x%llx)", p->pid, (unsigned long long)start,
			    (unsigned long long)end);
	}
	struct uffdio_writeprotect wp = { .range = { start, end - start }, .mode = UFFDIO_WRITEPROTECT_MODE_WP };
	if (ioctl(p->uffd, UFFDIO_WRITEPROTECT, &wp))
		return fail("E_NATIVE", errno, "ioctl(UFFDIO_WRITEPROTECT, pid %d, 0x%llx-0x%llx)", p->pid, (unsigned long long)start,
			    (unsigned long long)end);
	return 0;
}

/* one PAGEMAP_SCAN over [start,end), resumed at walk_end until done */
static int scan(struct proc *p, uint64_t start, uint64_t end, uint64_t flags, uint64_t inv, uint64_t mask, uint64_t anyof, uint64_t ret_mask,
		struct range_vec *out, int *err_out)
{
	static __thread struct page_region vec[4096]; /* two scanners run at once */
	if (open_pagemap(p))
		return -1;
	uint64_t at = start;
	while (at < end) {
		struct pm_scan_arg a = {
			.size = sizeof(a),
			.flags = flags,
			.start = at,
			.end = end,
			.vec = (uint64_t)(uintptr_t)vec,
			.vec_len = 4096,
			.category_inverted = inv,
			.category_mask = mask,
			.category_anyof_mask = anyof,
			.return_mask = ret_mask,
		};
		long n = ioctl(p->pagemap_fd, PAGEMAP_SCAN, &a);
		if (n < 0) {
			if (err_out) {
				*err_out = errno;
				return -1;
			}
			return fail("E_NATIVE", errno, "ioctl(PAGEMAP_SCAN, pid %d, 0x%llx-0x%llx)", p->pid, (unsigned long long)at,
				    (unsigned long long)end);
		}
		for (long i = 0; i < n; i++)
			if (rv_push(out, vec[i].start, vec[i].end, vec[i].categories))
				return -1;
		if (a.walk_end <= at)
			break;
		at = a.walk_end;
	}
	return 0;
}

int scan_written(struct proc *p, uint64_t start, uint64_t end, struct range_vec *out, bool *eperm)
{
	int e = 0;
	*eperm = false;
	if (p->uffd < 0) {
		*eperm = true;
		return 0;
	}
	/* One pass reports (and re-protects) every page that is written OR not
	 * present: written pages are the delta; not-present ones tell apart uffd
	 * markers (swapped, not written: untouched since protected) from pages
	 * with no page table at all (no category: discarded, zero now). */
	if (scan(p, start, end, PM_SCAN_WP_MATCHING | PM_SCAN_CHECK_WPASYNC, PAGE_IS_PRESENT, 0, PAGE_IS_WRITTEN | PAGE_IS_PRESENT,
		 PAGE_IS_WRITTEN | PAGE_IS_PRESENT | PAGE_IS_SWAPPED | PAGE_IS_PFNZERO, out, &e)) {
		if (e == EPERM) {
			*eperm = true;
			return 0;
		}
		if (e)
			return fail("E_NATIVE", e, "ioctl(PAGEMAP_SCAN written+WP, pid %d, 0x%llx-0x%llx)", p->pid, (unsigned long long)start,
				    (unsigned long long)end);
		return -1;
	}
	return 0;
}

/* Pages holding data of their own: present or swapped, not page cache, not
 * the shared zero page. uffd-wp markers on unpopulated pages also read as
 * "swapped"; with no swap configured those are dropped, else pagemap's
 * PM_SWAP bit tells them apart. */
static int swap_on = -1;
int scan_data(struct proc *p, uint64_t start, uint64_t end, struct range_vec *out)
{
	struct range_vec tmp = { 0 };
	uint64_t ign = PAGE_IS_FILE | PAGE_IS_PFNZERO;
	if (scan(p, start, end, 0, ign, ign, PAGE_IS_PRESENT | PAGE_IS_SWAPPED, PAGE_IS_PRESENT | PAGE_IS_SWAPPED, &tmp, NULL)) {
		rv_free(&tmp);
		return -1;
	}
	if (swap_on < 0) {
		char *b;
		swap_on = 0;
		if (read_file("/proc/swaps", &b) >= 0) {
			swap_on = strchr(b, '\n') && strchr(b, '\n')[1] != 0;
			free(b);
		}
		err_clear();
	}
	for (size_t i = 0; i < tmp.n; i++) {
		if (tmp.v[i].cat & PAGE_IS_PRESENT) {
			if (rv_push(out, tmp.v[i].start, tmp.v[i].end, 0))
				goto bad;
			continue;
		}
		if (!swap_on)
			continue;
		for (uint64_t a = tmp.v[i].start; a < tmp.v[i].end; a += PAGE_SZ) {
			uint64_t ent;
			if (pread(p->pagemap_fd, &ent, 8, (a / PAGE_SZ) * 8) != 8) {
				fail("E_NATIVE", errno, "pread(/proc/%d/pagemap, 0x%llx)", p->pid, (unsigned long long)a);
				goto bad;
			}
			if ((ent >> 62) & 1)
				if (rv_push(out, a, a + PAGE_SZ, 0))
					goto bad;
		}
	}
	rv_free(&tmp);
	return 0;
bad:
	rv_free(&tmp);
	return -1;
}
