/* The address space of a skeleton, rebuilt from outside: everything the
 * skeleton inherited is unmapped except the stub region and the kernel's
 * special mappings; [vvar], [vvar_vclock] and [vdso] are moved to their
 * checkpointed addresses (restored code holds pointers into them); every
 * region is mapped again with its protection, flags and file offset; page
 * contents are written with process_vm_writev straight from the mapped
 * pages.bin files; then PR_SET_MM_MAP puts back the mm fields, the auxv and
 * the executable. */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <linux/prctl.h>
#include <linux/userfaultfd.h>
#include <sys/ioctl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>
#include "restore.h"

struct cur_map {
	uint64_t start, end;
	char name[256];
};

static int read_cur_maps(pid_t pid, struct cur_map **out, size_t *n)
{
	char path[64];
	snprintf(path, sizeof(path), "/proc/%d/maps", pid);
	FILE *f = fopen(path, "re");
	if (!f)
		return fail("E_RESTORE", errno, "open(%s)", path);
	size_t cap = 64, cnt = 0;
	struct cur_map *v = malloc(cap * sizeof(*v));
	char line[4400];
	while (v && fgets(line, sizeof(line), f)) {
		if (cnt == cap) {
			struct cur_map *nv = realloc(v, cap * 2 * sizeof(*v));
			if (!nv)
				break;
			v = nv;
			cap *= 2;
		}
		unsigned long long s, e;
		int pos = 0;
		char perms[8];
		unsigned long long off, ino;
		unsigned maj, mi;
		if (sscanf(line, "%llx-%llx %7s %llx %x:%x %llu %n", &s, &e, perms, &off, &maj, &mi, &ino, &pos) < 7)
			continue;
		v[cnt].start = s;
		v[cnt].end = e;
		snprintf(v[cnt].name, sizeof(v[cnt].name), "%s", pos > 0 ? line + pos : "");
		v[cnt].name[strcspn(v[cnt].name, "\n")] = 0;
		cnt++;
	}
	fclose(f);
	if (!v)
		return fail("E_RESTORE", ENOMEM, "reading %s", path);
	*out = v;
	*n = cnt;
	return 0;
}

static bool special_name(const char *n)
{
	return !strcmp(n, "[vdso]") || !strncmp(n, "[vvar", 5) || !strcmp(n, "[vsyscall]");
}

static bool is_special_kind(const Vma *v)
{
	return v->kind == UNDERSTUDY__V1__VMA__KIND__VDSO || v->kind == UNDERSTUDY__V1__VMA__KIND__VVAR ||
		v->kind == UNDERSTUDY__V1__VMA__KIND__VSYSCALL;
}

/* Candidate stub addresses: free in every process of the image, with a wide
 * margin around (stack guard gaps, growth). */
uint64_t mem_pick_stub(struct restorer *rs)
{
	size_t total = 0;
	for (size_t i = 0; i < rs->nprocs; i++)
		total += rs->procs[i].pr->n_vmas;
	struct {
		uint64_t s, e;
	} *v = malloc((total + 2) * sizeof(*v));
	if (!v)
		return 0;
	size_t n = 0;
	for (size_t i = 0; i < rs->nprocs; i++)
		for (size_t k = 0; k < rs->procs[i].pr->n_vmas; k++) {
			Vma *m = rs->procs[i].pr->vmas[k];
			if (m->start >= 0x800000000000ULL)
				continue;
			v[n].s = m->start;
			v[n].e = m->end;
			n++;
		}
	/* sort by start (insertion sort: a few hundred entries) */
	for (size_t i = 1; i < n; i++)
		for (size_t j = i; j > 0 && v[j - 1].s > v[j].s; j--) {
			typeof(v[0]) t = v[j];
			v[j] = v[j - 1];
			v[j - 1] = t;
		}
	const uint64_t margin = 64ULL << 20, need = STUB_PAGES * PAGE_SZ;
	uint64_t all[64] = { 0 };
	int na = 0;
	uint64_t prev_end = 0x100000000ULL; /* above the first 4 GiB: stays clear of brk and low binaries */
	for (size_t i = 0; i <= n && na < 64; i++) {
		uint64_t next = i < n ? v[i].s : 0x7ff000000000ULL;
		if (i < n && v[i].e <= prev_end)
			continue;
		if (next > prev_end && next - prev_end >= 2 * margin + need) {
			/* a few places in the gap: its middle and near both ends */
			uint64_t mid = ((prev_end + (next - prev_end) / 2) & ~0xffffULL);
			uint64_t lo = (prev_end + margin + 0xffff) & ~0xffffULL;
			uint64_t hi = (next - margin - need) & ~0xffffULL;
			all[na++] = mid;
			if (na < 64 && lo + need <= next - margin)
				all[na++] = lo;
			if (na < 64 && hi >= prev_end + margin)
				all[na++] = hi;
		}
		if (i < n && v[i].e > prev_end)
			prev_end = v[i].e;
	}
	free(v);
	/* the 16 tried are taken from both ends of the address space in turn:
	 * the forked root inherits the restorer's own mappings, which may cover
	 * a whole range of the app's gaps (under ASan, its shadow holds 2-17 TB) */
	uint64_t cands[16] = { 0 };
	int nc = 0;
	for (int lo = 0, hi = na - 1; lo <= hi && nc < 16;) {
		cands[nc++] = all[lo++];
		if (lo <= hi && nc < 16)
			cands[nc++] = all[hi--];
	}
	tree_set_stub_candidates(rs, cands, nc);
	return nc ? cands[0] : 0;
}

int mem_clean(struct rproc *p)
{
	RS_OF(p);
	struct cur_map *m;
	size_t n;
	if (read_cur_maps(p->pid, &m, &n))
		return -1;
	struct rtask *t = &p->tasks[0];
	int rc = 0;
	for (size_t i = 0; i < n && !rc; i++) {
		if (special_name(m[i].name))
			continue;
		if (m[i].start >= rs->stub && m[i].end <= rs->stub + STUB_PAGES * PAGE_SZ)
			continue;
		char what[320];
		snprintf(what, sizeof(what), "munmap(0x%llx-0x%llx %s) of the skeleton", (unsigned long long)m[i].start, (unsigned long long)m[i].end,
			 m[i].name);
		rc = inj_ok(t, what, SYS_munmap, m[i].start, m[i].end - m[i].start, 0, 0, 0, 0, NULL);
	}
	free(m);
	if (!rc)
		rc = inj_ok(t, "close_range(0, ~0) of the skeleton", 436 /* close_range */, 0, ~0U, 0, 0, 0, 0, NULL);
	return rc;
}

int mem_specials(struct rproc *p)
{
	RS_OF(p);
	struct cur_map *m;
	size_t n;
	if (read_cur_maps(p->pid, &m, &n))
		return -1;
	struct {
		uint64_t cur, tgt, len;
		const char *name;
	} mv[8];
	int nmv = 0, rc = 0;
	bool moved = false;
	for (size_t k = 0; k < p->pr->n_vmas && !rc; k++) {
		Vma *v = p->pr->vmas[k];
		if (v->kind != UNDERSTUDY__V1__VMA__KIND__VDSO && v->kind != UNDERSTUDY__V1__VMA__KIND__VVAR)
			continue;
		size_t i;
		for (i = 0; i < n; i++)
			if (!strcmp(m[i].name, v->name))
				break;
		if (i == n) {
			rc = fail("E_KERNEL_MISMATCH", 0, "pid %d: the image has %s at 0x%llx but this kernel gives no such mapping", p->pid, v->name,
				  (unsigned long long)v->start);
			break;
		}
		if (m[i].end - m[i].start != v->end - v->start) {
			rc = fail("E_KERNEL_MISMATCH", 0, "pid %d: %s is %llu bytes on this kernel, %llu in the image: it cannot be put back", p->pid,
				  v->name, (unsigned long long)(m[i].end - m[i].start), (unsigned long long)(v->end - v->start));
			break;
		}
		if (nmv < 8) {
			mv[nmv].cur = m[i].start;
			mv[nmv].tgt = v->start;
			mv[nmv].len = v->end - v->start;
			mv[nmv].name = v->name;
			if (mv[nmv].cur != mv[nmv].tgt)
				moved = true;
			nmv++;
		}
	}
	/* specials the kernel gives but the image lacks would sit in the app's way */
	for (size_t i = 0; i < n && !rc; i++) {
		if (strcmp(m[i].name, "[vdso]") && strncmp(m[i].name, "[vvar", 5))
			continue;
		bool found = false;
		for (int k = 0; k < nmv; k++)
			found |= mv[k].cur == m[i].start;
		if (!found)
			rc = fail("E_KERNEL_MISMATCH", 0, "pid %d: this kernel maps %s, the image has none", p->pid, m[i].name);
	}
	free(m);
	if (rc || !moved)
		return rc;
	struct rtask *t = &p->tasks[0];
	uint64_t tmp = STUB_TMP;
	for (int k = 0; k < nmv; k++) {
		if (tmp + mv[k].len > STUB_TMP + STUB_TMP_LEN)
			return fail("E_RESTORE", 0, "the special mappings do not fit the stub's staging area");
		char what[128];
		snprintf(what, sizeof(what), "mremap(%s 0x%llx -> staging)", mv[k].name, (unsigned long long)mv[k].cur);
		if (inj_ok(t, what, SYS_mremap, mv[k].cur, mv[k].len, mv[k].len, MREMAP_MAYMOVE | MREMAP_FIXED, tmp, 0, NULL))
			return -1;
		mv[k].cur = tmp;
		tmp += mv[k].len;
	}
	for (int k = 0; k < nmv; k++) {
		char what[128];
		snprintf(what, sizeof(what), "mremap(%s -> 0x%llx)", mv[k].name, (unsigned long long)mv[k].tgt);
		if (inj_ok(t, what, SYS_mremap, mv[k].cur, mv[k].len, mv[k].len, MREMAP_MAYMOVE | MREMAP_FIXED, mv[k].tgt, 0, NULL))
			return -1;
	}
	return 0;
}

static size_t first_ref(const struct page_ref *v, size_t n, uint64_t addr)
{
	size_t lo = 0, hi = n;
	while (lo < hi) {
		size_t mid = (lo + hi) / 2;
		if (v[mid].vaddr < addr)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo;
}

struct wjob {
	struct rproc *p;
	struct page_ref *pv;
	int uffd;
	size_t i0, i1;
	uint64_t bytes;
	struct err_value err;
	int rc;
};

/* pages [i0, i1) of v, batched: runs contiguous in the app and in pages.bin;
 * with a uffd (anonymous regions registered for missing pages) each run is
 * one UFFDIO_COPY: the kernel allocates and fills the pages without zeroing
 * them first or taking a fault per page */
static int write_range_v(struct rproc *p, struct page_ref *pv, size_t i0, size_t i1, uint64_t *written, int uffd);

static int uffd_copy_run(struct rproc *p, int uffd, uint64_t dst, const uint8_t *src, size_t len)
{
	RS_OF(p);
	size_t done = 0;
	while (done < len) {
		struct uffdio_copy c = { .dst = dst + done, .src = (uint64_t)(uintptr_t)(src + done), .len = len - done, .mode = 0 };
		if (ioctl(uffd, UFFDIO_COPY, &c) == 0) {
			done += c.len;
			continue;
		}
		if (c.copy > 0) {
			done += c.copy;
			continue;
		}
		if (errno == EAGAIN || errno == EINTR)
			continue;
		return fail("E_RESTORE", errno, "ioctl(UFFDIO_COPY) into pid %d at 0x%llx (%zu bytes)", p->pid, (unsigned long long)(dst + done),
			    len - done);
	}
	return 0;
}

static int write_range_v(struct rproc *p, struct page_ref *pv, size_t i0, size_t i1, uint64_t *written, int uffd)
{
	RS_OF(p);
	struct iovec loc[IOV_MAX], rem[IOV_MAX];
	size_t i = i0;
	while (i < i1) {
		int cnt = 0;
		size_t bytes = 0;
		while (i < i1 && cnt < IOV_MAX && bytes < (64u << 20)) {
			struct page_ref *r = &pv[i];
			struct epoch_img *e = &rs->im.ep[r->ep];
			size_t len = PAGE_SZ;
			size_t j = i + 1;
			while (j < i1 && pv[j].ep == r->ep && pv[j].vaddr == r->vaddr + len && pv[j].off == r->off + len) {
				len += PAGE_SZ;
				j++;
			}
			if (uffd >= 0) {
				if (uffd_copy_run(p, uffd, r->vaddr, e->pages + r->off, len))
					return -1;
				*written += len;
				i = j;
				continue;
			}
			loc[cnt].iov_base = (void *)(e->pages + r->off);
			loc[cnt].iov_len = len;
			rem[cnt].iov_base = (void *)r->vaddr;
			rem[cnt].iov_len = len;
			cnt++;
			bytes += len;
			i = j;
		}
		if (!cnt)
			continue;
		ssize_t w = process_vm_writev(p->pid, loc, cnt, rem, cnt, 0);
		if (w != (ssize_t)bytes) {
			size_t acc = 0;
			int k = 0;
			while (k < cnt && w > 0 && acc + rem[k].iov_len <= (size_t)w)
				acc += rem[k++].iov_len;
			return fail("E_RESTORE", w < 0 ? errno : EFAULT, "process_vm_writev(pid %d) of the pages at 0x%llx (%zu bytes)", p->pid,
				    (unsigned long long)(k < cnt ? (uint64_t)rem[k].iov_base : 0), k < cnt ? rem[k].iov_len : 0);
		}
		*written += bytes;
	}
	return 0;
}

static void *write_part(void *arg)
{
	struct wjob *j = arg;
	struct err_value keep = g_err;
	memset(&g_err, 0, sizeof(g_err));
	j->rc = write_range_v(j->p, j->pv, j->i0, j->i1, &j->bytes, j->uffd);
	j->err = g_err;
	g_err = keep;
	return NULL;
}

/* two writers for large sets: the kernel fills the app's pages on both cores */
static int write_set(struct rproc *p, struct page_ref *pv, size_t n, int uffd)
{
	RS_OF(p);
	if (n < 16384) {
		uint64_t b = 0;
		int rc = write_range_v(p, pv, 0, n, &b, uffd);
		rs->bytes_written += b;
		return rc;
	}
	struct wjob j2 = { p, pv, uffd, n / 2, n, 0, { { 0 }, { 0 }, 0 }, 0 };
	pthread_t th;
	bool started = !pthread_create(&th, NULL, write_part, &j2);
	uint64_t b = 0;
	int rc = write_range_v(p, pv, 0, started ? n / 2 : n, &b, uffd);
	if (started)
		pthread_join(th, NULL);
	rs->bytes_written += b + j2.bytes;
	if (!rc && started && j2.rc) {
		g_err = j2.err;
		rc = -1;
	}
	return rc;
}

/* A userfaultfd of the app's mm, for the monitor (this process): created
 * by an injected userfaultfd(), taken with pidfd_getfd, closed in the app. */
static int uffd_open(struct rproc *p)
{
	RS_OF(p);
	long tfd;
	if (inj_ok(&p->tasks[0], "userfaultfd", 323 /* userfaultfd */, O_CLOEXEC | O_NONBLOCK, 0, 0, 0, 0, 0, &tfd))
		return -1;
	int pidfd = (int)syscall(434 /* pidfd_open */, p->pid, 0);
	int fd = pidfd < 0 ? -1 : (int)syscall(438 /* pidfd_getfd */, pidfd, (int)tfd, 0);
	int e = errno;
	if (pidfd >= 0)
		close(pidfd);
	if (inj_ok(&p->tasks[0], "close(userfaultfd)", SYS_close, tfd, 0, 0, 0, 0, 0, NULL)) {
		if (fd >= 0)
			close(fd);
		return -1;
	}
	if (fd < 0)
		return fail("E_RESTORE", e, "pidfd_getfd of pid %d's userfaultfd", p->pid);
	struct uffdio_api api = { .api = UFFD_API, .features = 0 };
	if (ioctl(fd, UFFDIO_API, &api)) {
		close(fd);
		return fail("E_RESTORE", errno, "ioctl(UFFDIO_API) for pid %d", p->pid);
	}
	return fd;
}

static int write_pages(struct rproc *p)
{
	RS_OF(p);
	Proc *pr = p->pr;
	/* pages in anonymous regions go through UFFDIO_COPY, the others
	 * (private file mappings) through process_vm_writev */
	struct page_ref *anon = malloc((p->npages + 1) * sizeof(*anon)), *other = malloc((p->npages + 1) * sizeof(*other));
	if (!anon || !other) {
		free(anon);
		free(other);
		return fail("E_RESTORE", ENOMEM, "malloc for the page lists of pid %d", p->pid);
	}
	size_t na = 0, no = 0, k = 0;
	bool *reg = calloc(pr->n_vmas + 1, sizeof(bool));
	for (size_t i = 0; i < p->npages; i++) {
		uint64_t va = p->pages[i].vaddr;
		while (k < pr->n_vmas && pr->vmas[k]->end <= va)
			k++;
		/* vmas are sorted by address (maps order) */
		if (k < pr->n_vmas && va >= pr->vmas[k]->start && pr->vmas[k]->kind == UNDERSTUDY__V1__VMA__KIND__ANON && !pr->vmas[k]->shared) {
			anon[na++] = p->pages[i];
			if (reg)
				reg[k] = true;
		} else {
			other[no++] = p->pages[i];
		}
	}
	int rc = 0, uffd = -1;
	if (na >= 64 && reg) {
		uffd = uffd_open(p);
		if (uffd < 0) {
			vlog("pid %d: no userfaultfd (%s); pages written with process_vm_writev", p->pid, g_err.msg);
			memset(&g_err, 0, sizeof(g_err));
		}
		for (size_t v = 0; uffd >= 0 && v < pr->n_vmas; v++) {
			if (!reg[v])
				continue;
			struct uffdio_register r = { .range = { pr->vmas[v]->start, pr->vmas[v]->end - pr->vmas[v]->start },
						     .mode = UFFDIO_REGISTER_MODE_MISSING };
			if (ioctl(uffd, UFFDIO_REGISTER, &r)) {
				vlog("pid %d: UFFDIO_REGISTER 0x%llx: %s; pages written with process_vm_writev", p->pid,
				     (unsigned long long)pr->vmas[v]->start, strerror(errno));
				for (size_t u = 0; u < v; u++)
					if (reg[u]) {
						struct uffdio_range ur = { pr->vmas[u]->start, pr->vmas[u]->end - pr->vmas[u]->start };
						ioctl(uffd, UFFDIO_UNREGISTER, &ur);
					}
				close(uffd);
				uffd = -1;
			}
		}
	}
	rc = write_set(p, anon, na, uffd);
	if (uffd >= 0) {
		for (size_t v = 0; v < pr->n_vmas; v++)
			if (reg[v]) {
				struct uffdio_range ur = { pr->vmas[v]->start, pr->vmas[v]->end - pr->vmas[v]->start };
				if (ioctl(uffd, UFFDIO_UNREGISTER, &ur) && !rc)
					rc = fail("E_RESTORE", errno, "ioctl(UFFDIO_UNREGISTER) of pid %d at 0x%llx", p->pid,
						  (unsigned long long)pr->vmas[v]->start);
			}
		close(uffd);
	}
	if (!rc)
		rc = write_set(p, other, no, -1);
	free(reg);
	free(anon);
	free(other);
	return rc;
}

int mem_restore(struct rproc *p)
{
	RS_OF(p);
	struct rtask *t = &p->tasks[0];
	Proc *pr = p->pr;
	/* drop page refs outside every region (nothing to write them to) */
	size_t o = 0;
	for (size_t i = 0; i < p->npages; i++) {
		uint64_t va = p->pages[i].vaddr;
		bool in = false;
		for (size_t k = 0; k < pr->n_vmas && !in; k++)
			in = va >= pr->vmas[k]->start && va < pr->vmas[k]->end && !is_special_kind(pr->vmas[k]) &&
				pr->vmas[k]->kind != UNDERSTUDY__V1__VMA__KIND__FILE_SHARED;
		if (in)
			p->pages[o++] = p->pages[i];
		else
			vlog("pid %d: page 0x%llx lies in no private region; skipped", p->pid, (unsigned long long)va);
	}
	p->npages = o;
	bool *needs_prot = calloc(pr->n_vmas + 1, sizeof(bool));
	if (!needs_prot)
		return fail("E_RESTORE", ENOMEM, "calloc");
	int rc = 0;
	long fd = -1;
	const char *fd_path = NULL;
	bool fd_rw = false;
	for (size_t k = 0; k < pr->n_vmas && !rc; k++) {
		Vma *v = pr->vmas[k];
		if (is_special_kind(v))
			continue;
		uint64_t len = v->end - v->start;
		size_t fr = first_ref(p->pages, p->npages, v->start);
		bool has_pages = fr < p->npages && p->pages[fr].vaddr < v->end;
		long prot = v->prot;
		if (has_pages && !(prot & PROT_WRITE)) {
			prot |= PROT_WRITE | PROT_READ;
			needs_prot[k] = true;
		}
		long flags = MAP_FIXED | (v->shared ? MAP_SHARED : MAP_PRIVATE);
		char what[700];
		snprintf(what, sizeof(what), "mmap(0x%llx-0x%llx %s)", (unsigned long long)v->start, (unsigned long long)v->end,
			 v->name && v->name[0] ? v->name : "anonymous");
		if (v->kind == UNDERSTUDY__V1__VMA__KIND__ANON) {
			flags |= MAP_ANONYMOUS;
			if (v->name && !strcmp(v->name, "[stack]"))
				flags |= MAP_GROWSDOWN;
			rc = inj_ok(t, what, SYS_mmap, v->start, len, prot, flags, -1, 0, NULL);
			/* a name given with PR_SET_VMA_ANON_NAME: "[anon:NAME]" */
			size_t nl = v->name ? strlen(v->name) : 0;
			if (!rc && nl > 7 && nl < 90 && !strncmp(v->name, "[anon:", 6) && v->name[nl - 1] == ']') {
				char nm[96];
				snprintf(nm, sizeof(nm), "%.*s", (int)(nl - 7), v->name + 6);
				uint64_t sp = scratch_str(p, nm);
				rc = sp ? inj_ok(t, "prctl(PR_SET_VMA_ANON_NAME)", SYS_prctl, 0x53564d41 /* PR_SET_VMA */, 0, v->start, len, sp, 0,
						 NULL) :
					  -1;
			}
			continue;
		}
		/* file-backed: open it inside the process (identity checked earlier) */
		const char *path = v->file && v->file->path && v->file->path[0] ? v->file->path : v->name;
		bool rw = v->shared && (v->prot & PROT_WRITE);
		if (fd < 0 || strcmp(fd_path, path) || fd_rw != rw) {
			if (fd >= 0)
				inj_ok(t, "close", SYS_close, fd, 0, 0, 0, 0, 0, NULL);
			uint64_t sp = scratch_str(p, path);
			if (!sp) {
				rc = -1;
				break;
			}
			char ow[600];
			snprintf(ow, sizeof(ow), "open(%s) for its mapping at 0x%llx", path, (unsigned long long)v->start);
			rc = inj_ok(t, ow, SYS_openat, AT_FDCWD, sp, (rw ? O_RDWR : O_RDONLY) | O_CLOEXEC, 0, 0, 0, &fd);
			if (rc)
				break;
			fd_path = path;
			fd_rw = rw;
		}
		rc = inj_ok(t, what, SYS_mmap, v->start, len, prot, flags, fd, v->pgoff, NULL);
	}
	if (fd >= 0 && !rc)
		rc = inj_ok(t, "close", SYS_close, fd, 0, 0, 0, 0, 0, NULL);
	vlog("pid %d: regions mapped", p->pid);
	if (!rc)
		rc = write_pages(p);
	vlog("pid %d: pages written", p->pid);
	for (size_t k = 0; k < pr->n_vmas && !rc; k++) {
		if (!needs_prot[k])
			continue;
		Vma *v = pr->vmas[k];
		char what[128];
		snprintf(what, sizeof(what), "mprotect(0x%llx-0x%llx, %u)", (unsigned long long)v->start, (unsigned long long)v->end, v->prot);
		rc = inj_ok(t, what, SYS_mprotect, v->start, v->end - v->start, v->prot, 0, 0, 0, NULL);
	}
	free(needs_prot);
	return rc;
}

static int mm_map(struct rproc *p, bool set_exe)
{
	RS_OF(p);
	struct rtask *t = &p->tasks[0];
	Proc *pr = p->pr;
	if (!pr->mm)
		return fail("E_IMAGE_CORRUPT", 0, "pid %d has no mm fields in the image", p->pid);
	if (pr->auxv.len > SCR_TABLE_LEN)
		return fail("E_IMAGE_CORRUPT", 0, "pid %d: auxv of %zu bytes is too long", p->pid, pr->auxv.len);
	struct prctl_mm_map mm = { 0 };
	mm.start_code = pr->mm->start_code;
	mm.end_code = pr->mm->end_code;
	mm.start_data = pr->mm->start_data;
	mm.end_data = pr->mm->end_data;
	mm.start_brk = pr->mm->start_brk;
	mm.brk = pr->mm->brk;
	mm.start_stack = pr->mm->start_stack;
	mm.arg_start = pr->mm->arg_start;
	mm.arg_end = pr->mm->arg_end;
	mm.env_start = pr->mm->env_start;
	mm.env_end = pr->mm->env_end;
	mm.auxv = (__u64 *)(uintptr_t)(SCR_TABLE);
	mm.auxv_size = pr->auxv.len;
	long exe = -1;
	if (!set_exe) {
		mm.exe_fd = (__u32)-1;
		if (poke(p->pid, SCR_TABLE, pr->auxv.data, pr->auxv.len) || poke(p->pid, SCR_ARGS, &mm, sizeof(mm)))
			return -1;
		return inj_ok(t, "prctl(PR_SET_MM, PR_SET_MM_MAP)", SYS_prctl, PR_SET_MM, PR_SET_MM_MAP, SCR_ARGS, sizeof(mm), 0, 0, NULL);
	}
	uint64_t sp = scratch_str(p, pr->exe->path);
	if (!sp)
		return -1;
	char what[600];
	snprintf(what, sizeof(what), "open(%s) as the executable", pr->exe->path);
	if (inj_ok(t, what, SYS_openat, AT_FDCWD, sp, O_RDONLY | O_CLOEXEC, 0, 0, 0, &exe))
		return -1;
	mm.exe_fd = exe;
	if (poke(p->pid, SCR_TABLE, pr->auxv.data, pr->auxv.len) || poke(p->pid, SCR_ARGS, &mm, sizeof(mm)))
		return -1;
	if (inj_ok(t, "prctl(PR_SET_MM, PR_SET_MM_MAP)", SYS_prctl, PR_SET_MM, PR_SET_MM_MAP, SCR_ARGS, sizeof(mm), 0, 0, NULL))
		return -1;
	return inj_ok(t, "close(exe fd)", SYS_close, exe, 0, 0, 0, 0, 0, NULL);
}

int mem_mm_map(struct rproc *p)
{
	return mm_map(p, !p->keep_exe);
}

int mem_mm_fields(struct rproc *p)
{
	return mm_map(p, false);
}
