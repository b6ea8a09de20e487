/* Image writing: one epoch = one directory epoch-NNNNNN/ holding pages.bin
 * (raw pages) and meta.pb (EpochMeta frame + crc32). Written under a hidden
 * temporary name, fsynced, then renamed into place and the parent fsynced:
 * a crash or a full disk never leaves a half-written epoch visible. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <zlib.h>
#include "arena.h"
#include "engine.h"

void new_image_id(char *out)
{
	unsigned char b[16];
	if (getrandom(b, sizeof(b), 0) != sizeof(b)) {
		uint64_t t = now_ns() ^ ((uint64_t)getpid() << 32);
		memcpy(b, &t, 8);
		memcpy(b + 8, &t, 8);
	}
	for (int i = 0; i < 16; i++)
		sprintf(out + 2 * i, "%02x", b[i]);
}

int image_dir_prepare(const char *dir, bool must_be_empty)
{
	struct stat st;
	if (stat(dir, &st)) {
		if (errno != ENOENT)
			return fail("E_IMAGE_WRITE", errno, "stat(%s)", dir);
		if (mkdir(dir, 0700))
			return fail("E_IMAGE_WRITE", errno, "mkdir(%s)", dir);
		return 0;
	}
	if (!S_ISDIR(st.st_mode))
		return fail("E_IMAGE_WRITE", ENOTDIR, "image directory %s", dir);
	if (!must_be_empty)
		return 0;
	DIR *d = opendir(dir);
	if (!d)
		return fail("E_IMAGE_WRITE", errno, "opendir(%s)", dir);
	struct dirent *de;
	int rc = 0;
	while ((de = readdir(d)))
		if (!strncmp(de->d_name, "epoch-", 6) || !strncmp(de->d_name, "base-", 5)) {
			rc = fail("E_IMAGE_EXISTS", 0, "%s already holds an image (%s); give an empty or new directory", dir, de->d_name);
			break;
		}
	closedir(d);
	return rc;
}

static int write_all(int fd, const void *p, size_t n, const char *path)
{
	size_t off = 0;
	while (off < n) {
		size_t chunk = n - off > (256u << 20) ? (256u << 20) : n - off;
		ssize_t w = write(fd, (const char *)p + off, chunk);
		if (w < 0) {
			if (errno == EINTR)
				continue;
			return fail("E_IMAGE_WRITE", errno, "write(%s) at byte %zu", path, off);
		}
		off += w;
	}
	return 0;
}

static void remove_tmp(const char *tmp)
{
	char p[4200];
	snprintf(p, sizeof(p), "%s/pages.bin", tmp);
	unlink(p);
	snprintf(p, sizeof(p), "%s/meta.pb", tmp);
	unlink(p);
	rmdir(tmp);
}

static int fsync_path(const char *path)
{
	int fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0)
		return fail("E_IMAGE_WRITE", errno, "open(%s) to fsync it", path);
	int rc = 0;
	if (fsync(fd))
		rc = fail("E_IMAGE_WRITE", errno, "fsync(%s)", path);
	close(fd);
	return rc;
}

static Understudy__V1__Range **ranges_of(const struct range_vec *rv, size_t *n)
{
	Understudy__V1__Range **a = amalloc(rv->n * sizeof(void *) + 1);
	*n = 0;
	for (size_t r = 0; a && r < rv->n; r++) {
		Understudy__V1__Range *g = ANEW(Understudy__V1__Range, understudy__v1__range__init);
		if (!g)
			break;
		g->start = rv->v[r].start;
		g->end = rv->v[r].end;
		a[(*n)++] = g;
	}
	return a;
}

int image_write_epoch(const char *dir, const char *image_id, struct epoch_out *eo, char *epoch_path, size_t plen)
{
	char tmp[4200], final[4200], path[4300];
	snprintf(final, sizeof(final), "%s/epoch-%06u", dir, eo->epoch);
	snprintf(tmp, sizeof(tmp), "%s/.tmp-epoch-%06u-%d", dir, eo->epoch, getpid());
	remove_tmp(tmp);
	struct stat st;
	if (!stat(final, &st))
		return fail("E_IMAGE_EXISTS", 0, "%s already exists; refusing to overwrite an epoch", final);
	if (mkdir(tmp, 0700))
		return fail("E_IMAGE_WRITE", errno, "mkdir(%s)", tmp);

	/* page index with a crc32 per page; data already in capture order */
	uint64_t off = 0;
	size_t total_runs = 0;
	for (size_t i = 0; i < eo->npcs; i++) {
		struct proc_capture *pc = &eo->pcs[i];
		Understudy__V1__Process *pr = pc->meta;
		pr->pages = amalloc(pc->pages.n * sizeof(void *) + 1);
		if (!pr->pages)
			goto bad;
		for (size_t r = 0; r < pc->pages.n; r++) {
			Understudy__V1__PageRun *run = ANEW(Understudy__V1__PageRun, understudy__v1__page_run__init);
			uint32_t np = (pc->pages.v[r].end - pc->pages.v[r].start) / PAGE_SZ;
			if (!run || !(run->crc32 = amalloc(np * sizeof(uint32_t))))
				goto bad;
			run->vaddr = pc->pages.v[r].start;
			run->npages = np;
			run->offset = off;
			run->n_crc32 = np;
			for (uint32_t k = 0; k < np; k++) {
				run->crc32[k] = crc32(0L, eo->buf->data + off, PAGE_SZ);
				off += PAGE_SZ;
			}
			pr->pages[pr->n_pages++] = run;
			total_runs++;
		}
		pr->reset = ranges_of(&pc->reset, &pr->n_reset);
		pr->zeroed = ranges_of(&pc->zeroed, &pr->n_zeroed);
	}
	if (off != eo->buf->len) {
		fail("E_INTERNAL", 0, "page index covers %llu bytes but %zu were captured", (unsigned long long)off, eo->buf->len);
		goto bad;
	}

	snprintf(path, sizeof(path), "%s/pages.bin", tmp);
	int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
	if (fd < 0) {
		fail("E_IMAGE_WRITE", errno, "open(%s)", path);
		goto bad;
	}
	if (write_all(fd, eo->buf->data, eo->buf->len, path) || (fsync(fd) && fail("E_IMAGE_WRITE", errno, "fsync(%s)", path))) {
		close(fd);
		goto bad;
	}
	close(fd);

	Understudy__V1__EpochMeta m = UNDERSTUDY__V1__EPOCH_META__INIT;
	m.version = IMAGE_VERSION;
	m.epoch = eo->epoch;
	m.full = eo->full;
	m.parent_epoch = eo->epoch ? eo->epoch - 1 : 0;
	m.image_id = (char *)image_id;
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	m.time_unix_ns = (uint64_t)ts.tv_sec * 1000000000ULL + ts.tv_nsec;
	char *rel = NULL;
	if (read_file("/proc/sys/kernel/osrelease", &rel) >= 0) {
		char *nl = strchr(rel, '\n');
		if (nl)
			*nl = 0;
		m.kernel_release = astrdup(rel);
		free(rel);
	}
	err_clear();
	m.page_size = PAGE_SZ;
	uint32_t lo, hi;
	__asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
	m.xcr0 = ((uint64_t)hi << 32) | lo;
	m.root_pid = E.root_pid;
	m.pages_bytes = eo->buf->len;
	m.pause_ns = eo->pause_ns;
	m.engine = "understudy-engine 1";
	m.processes = amalloc(eo->npcs * sizeof(void *) + 1);
	for (size_t i = 0; i < eo->npcs; i++)
		m.processes[m.n_processes++] = eo->pcs[i].meta;
	size_t mlen = understudy__v1__epoch_meta__get_packed_size(&m);
	uint8_t *mb = malloc(mlen + 8);
	if (!mb) {
		fail("E_NATIVE", ENOMEM, "malloc(%zu) for epoch metadata", mlen);
		goto bad;
	}
	understudy__v1__epoch_meta__pack(&m, mb + 4);
	mb[0] = mlen & 0xff;
	mb[1] = (mlen >> 8) & 0xff;
	mb[2] = (mlen >> 16) & 0xff;
	mb[3] = (mlen >> 24) & 0xff;
	uint32_t mc = crc32(0L, mb + 4, mlen);
	memcpy(mb + 4 + mlen, &mc, 4);
	snprintf(path, sizeof(path), "%s/meta.pb", tmp);
	fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
	if (fd < 0) {
		free(mb);
		fail("E_IMAGE_WRITE", errno, "open(%s)", path);
		goto bad;
	}
	int wr = write_all(fd, mb, mlen + 8, path);
	free(mb);
	if (wr || (fsync(fd) && fail("E_IMAGE_WRITE", errno, "fsync(%s)", path))) {
		close(fd);
		goto bad;
	}
	close(fd);
	if (fsync_path(tmp))
		goto bad;
	if (rename(tmp, final)) {
		fail("E_IMAGE_WRITE", errno, "rename(%s, %s)", tmp, final);
		goto bad;
	}
	if (fsync_path(dir))
		return -1;   /* renamed; durability of the directory entry unsure */
	snprintf(epoch_path, plen, "%s", final);
	(void)total_runs;
	return 0;
bad:
	remove_tmp(tmp);
	return -1;
}
