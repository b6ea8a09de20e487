/* Everything refused before a process is created: kernel and CPU features,
 * files behind mappings and the executable, files behind fds, PIDs and TIDs
 * already in use, resource kinds this restorer does not rebuild. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/utsname.h>
#include <unistd.h>
#include <zlib.h>
#include "elfid.h"
#include "restore.h"

/* identity cache: one check per file however many regions map it */
struct idc {
	char path[4096];
	uint64_t size;
	int64_t mtime;
	bool ok;
};

/* The file must be the one checkpointed: same size and same content
 * (ELF build-id, or crc32 of the whole file), or the same mtime when the
 * capture could not hash it. dev/ino may differ (another node's copy). */
int check_file_id(struct restorer *rs, const Understudy__V1__FileId *id, const char *what, pid_t pid)
{
	struct idc *cache = rs->idcache;
	size_t ncache = rs->nidc;
	if (!id || !id->path || !id->path[0])
		return 0;
	for (size_t i = 0; i < ncache; i++)
		if (!strcmp(cache[i].path, id->path) && cache[i].size == id->size && cache[i].mtime == id->mtime_ns && cache[i].ok)
			return 0;
	const char *path = id->path;
	size_t pl = strlen(path);
	if (pl > 10 && !strcmp(path + pl - 10, " (deleted)"))
		return fail("E_FILE_CHANGED", 0, "pid %d: %s %s was deleted when it was checkpointed; it cannot be mapped again", pid, what, path);
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return fail("E_FILE_CHANGED", errno, "pid %d: %s %s cannot be opened on this node", pid, what, path);
	struct stat st;
	if (fstat(fd, &st)) {
		close(fd);
		return fail("E_RESTORE", errno, "fstat(%s)", path);
	}
	int rc = 0;
	int64_t mt = (int64_t)st.st_mtim.tv_sec * 1000000000LL + st.st_mtim.tv_nsec;
	if ((uint64_t)st.st_size != id->size) {
		rc = fail("E_FILE_CHANGED", 0, "pid %d: %s %s changed since the checkpoint: size %lld, was %llu", pid, what, path,
			  (long long)st.st_size, (unsigned long long)id->size);
	} else if (id->build_id && id->build_id[0]) {
		char b[80];
		elf_gnu_build_id(fd, st.st_size, b, sizeof(b));
		if (strcmp(b, id->build_id))
			rc = fail("E_FILE_CHANGED", 0, "pid %d: %s %s changed since the checkpoint: build-id %s, was %s", pid, what, path,
				  b[0] ? b : "(none)", id->build_id);
	} else if (id->content_hashed) {
		uLong crc = crc32(0L, Z_NULL, 0);
		static unsigned char b[1 << 16];
		off_t off = 0;
		ssize_t r;
		while ((r = pread(fd, b, sizeof(b), off)) > 0) {
			crc = crc32(crc, b, r);
			off += r;
		}
		if (r < 0)
			rc = fail("E_RESTORE", errno, "read(%s) to check its content", path);
		else if ((uint32_t)crc != id->content_crc32)
			rc = fail("E_FILE_CHANGED", 0, "pid %d: %s %s changed since the checkpoint: content crc32 %08x, was %08x", pid, what, path,
				  (uint32_t)crc, id->content_crc32);
	} else if (mt != id->mtime_ns) {
		rc = fail("E_FILE_CHANGED", 0, "pid %d: %s %s changed since the checkpoint: mtime %lld ns, was %lld ns", pid, what, path,
			  (long long)mt, (long long)id->mtime_ns);
	}
	close(fd);
	if (!rc && ncache < 4096) {
		if (ncache == rs->capidc) {
			size_t nc = rs->capidc ? rs->capidc * 2 : 32;
			struct idc *n = realloc(cache, nc * sizeof(*n));
			if (!n)
				return 0;
			rs->idcache = cache = n;
			rs->capidc = nc;
		}
		snprintf(cache[ncache].path, sizeof(cache[ncache].path), "%s", id->path);
		cache[ncache].size = id->size;
		cache[ncache].mtime = id->mtime_ns;
		cache[ncache].ok = true;
		rs->nidc = ncache + 1;
	}
	return rc;
}

void checks_free(struct restorer *rs)
{
	free(rs->idcache);
	rs->idcache = NULL;
	rs->nidc = rs->capidc = 0;
}

static int check_kernel(Understudy__V1__EpochMeta *m)
{
	struct utsname u;
	if (uname(&u))
		return fail("E_RESTORE", errno, "uname");
	if (m->kernel_release && strcmp(m->kernel_release, u.release))
		return fail("E_KERNEL_MISMATCH", 0,
			    "the image was taken on kernel %s, this node runs %s: the [vdso] and kernel ABI may differ, refusing", m->kernel_release,
			    u.release);
	uint32_t lo, hi;
	__asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
	uint64_t xcr0 = ((uint64_t)hi << 32) | lo;
	if (m->xcr0 && m->xcr0 != xcr0)
		return fail("E_KERNEL_MISMATCH", 0,
			    "the image was taken on a CPU with xsave features (xcr0) 0x%llx, this one has 0x%llx: the extended register "
			    "state cannot be restored faithfully",
			    (unsigned long long)m->xcr0, (unsigned long long)xcr0);
	return 0;
}

static int check_pid_free(pid_t pid, const char *what, pid_t owner)
{
	char path[64];
	snprintf(path, sizeof(path), "/proc/%d/status", pid);
	if (access(path, F_OK) == 0) {
		char comm[64] = "?";
		snprintf(path, sizeof(path), "/proc/%d/comm", pid);
		FILE *f = fopen(path, "r");
		if (f) {
			if (fgets(comm, sizeof(comm), f))
				comm[strcspn(comm, "\n")] = 0;
			fclose(f);
		}
		if (owner == pid)
			return fail("E_PID_TAKEN", 0,
				    "pid %d of the image is in use on this node (by \"%s\"): the app cannot get its pid back; stop that "
				    "process or wait for it to be reaped",
				    pid, comm);
		return fail("E_PID_TAKEN", 0, "%s %d (of pid %d) of the image is in use on this node (by \"%s\")", what, pid, owner, comm);
	}
	return 0;
}

/* The kernel's special mappings here ([vvar], [vvar_vclock], [vdso]) must be
 * those of the image, name for name and size for size: the restorer's own
 * are the ones every new process gets. */
static int check_specials(const Proc *pr)
{
	FILE *f = fopen("/proc/self/maps", "re");
	if (!f)
		return fail("E_RESTORE", errno, "open(/proc/self/maps)");
	char line[4400];
	int rc = 0, mine = 0;
	while (!rc && fgets(line, sizeof(line), f)) {
		unsigned long long s, e;
		int pos = 0;
		if (sscanf(line, "%llx-%llx %*s %*s %*s %*s %n", &s, &e, &pos) < 2 || pos <= 0)
			continue;
		char *name = line + pos;
		name[strcspn(name, "\n")] = 0;
		if (strcmp(name, "[vdso]") && strncmp(name, "[vvar", 5))
			continue;
		mine++;
		bool found = false;
		for (size_t k = 0; k < pr->n_vmas && !found; k++) {
			const Vma *v = pr->vmas[k];
			if (v->name && !strcmp(v->name, name)) {
				found = true;
				if (v->end - v->start != e - s)
					rc = fail("E_KERNEL_MISMATCH", 0,
						  "pid %d: %s is %llu bytes on this kernel, %llu in the image: it cannot be put back", pr->pid, name,
						  e - s, (unsigned long long)(v->end - v->start));
			}
		}
		if (!found && !rc)
			rc = fail("E_KERNEL_MISMATCH", 0, "pid %d: this kernel maps %s, the image has none", pr->pid, name);
	}
	fclose(f);
	if (!rc) {
		int theirs = 0;
		for (size_t k = 0; k < pr->n_vmas; k++)
			if (pr->vmas[k]->kind == UNDERSTUDY__V1__VMA__KIND__VDSO || pr->vmas[k]->kind == UNDERSTUDY__V1__VMA__KIND__VVAR)
				theirs++;
		if (theirs != mine)
			rc = fail("E_KERNEL_MISMATCH", 0, "pid %d: the image has %d kernel special mappings, this kernel gives %d", pr->pid, theirs,
				  mine);
	}
	return rc;
}

/* the processes of m; with `known`, only those known() says false for
 * (apply: the processes a delta adds) have their pids checked as free */
int check_meta(struct restorer *rs, Understudy__V1__EpochMeta *m, bool (*known)(struct restorer *, pid_t))
{
	if (check_kernel(m))
		return -1;
	if (!m->n_processes)
		return fail("E_NOT_AN_IMAGE", 0, "epoch %u of %s has no process", m->epoch, rs->im.dir);
	for (size_t i = 0; i < m->n_processes; i++) {
		Proc *pr = m->processes[i];
		if (!pr->n_vmas)
			return fail("E_IMAGE_CORRUPT", 0,
				    "epoch %u: pid %d has no memory regions in the image (an image written without its region list)", m->epoch,
				    pr->pid);
		if (!pr->n_threads)
			return fail("E_IMAGE_CORRUPT", 0, "epoch %u: pid %d has no threads in the image", m->epoch, pr->pid);
		if (check_specials(pr) || sched_check(pr))
			return -1;
		if (check_file_id(rs, pr->exe, "executable", pr->pid))
			return -1;
		for (size_t v = 0; v < pr->n_vmas; v++) {
			Vma *vm = pr->vmas[v];
			if (vm->kind == UNDERSTUDY__V1__VMA__KIND__FILE_PRIVATE || vm->kind == UNDERSTUDY__V1__VMA__KIND__FILE_SHARED) {
				if (!vm->file)
					return fail("E_IMAGE_CORRUPT", 0, "pid %d: file mapping 0x%llx-0x%llx (%s) has no file identity", pr->pid,
						    (unsigned long long)vm->start, (unsigned long long)vm->end, vm->name);
				/* a shared writable mapping changes its file by design: it must
				 * only still be there, long enough for the mapping */
				if (vm->kind == UNDERSTUDY__V1__VMA__KIND__FILE_SHARED && (vm->prot & 2)) {
					struct stat fs;
					const char *fp = vm->file->path && vm->file->path[0] ? vm->file->path : vm->name;
					if (stat(fp, &fs))
						return fail("E_FILE_CHANGED", errno, "pid %d: shared mapped file %s cannot be found on this node",
							    pr->pid, fp);
					if ((uint64_t)fs.st_size + PAGE_SZ - 1 < vm->pgoff + (vm->end - vm->start) - PAGE_SZ + 1)
						return fail(
							"E_FILE_CHANGED", 0,
							"pid %d: shared mapped file %s is %lld bytes now, too short for its mapping of %llu bytes at offset %llu",
							pr->pid, fp, (long long)fs.st_size, (unsigned long long)(vm->end - vm->start),
							(unsigned long long)vm->pgoff);
				} else if (check_file_id(rs, vm->file, "mapped file", pr->pid)) {
					return -1;
				}
			}
		}
		for (size_t f = 0; f < pr->n_fds; f++) {
			Understudy__V1__Fd *fd = pr->fds[f];
			if (fd->kind == UNDERSTUDY__V1__FD__KIND__UNKNOWN)
				return fail("E_UNSUPPORTED", 0, "pid %d fd %d (%s) is of a kind this restorer does not rebuild", pr->pid, fd->fd,
					    fd->path);
			if (fd->kind == UNDERSTUDY__V1__FD__KIND__REGULAR || fd->kind == UNDERSTUDY__V1__FD__KIND__DIRECTORY) {
				struct stat st;
				if (stat(fd->path, &st))
					return fail("E_FILE_CHANGED", errno, "pid %d fd %d: %s cannot be found on this node", pr->pid, fd->fd,
						    fd->path);
				bool isdir = S_ISDIR(st.st_mode);
				if (isdir != (fd->kind == UNDERSTUDY__V1__FD__KIND__DIRECTORY))
					return fail("E_FILE_CHANGED", 0, "pid %d fd %d: %s is %s now", pr->pid, fd->fd, fd->path,
						    isdir ? "a directory" : "not a directory");
			}
		}
		struct stat st;
		if (pr->cwd && stat(pr->cwd, &st))
			return fail("E_FILE_CHANGED", errno, "pid %d: its working directory %s cannot be found on this node", pr->pid, pr->cwd);
		/* an app adopted in the host's namespace gets its host pids back too;
		 * one that had a namespace of its own needs only a new namespace */
		if (rs->root_is_init || (known && known(rs, pr->pid)))
			continue;
		if (check_pid_free(pr->pid, "pid", pr->pid))
			return -1;
		for (size_t t = 0; t < pr->n_threads; t++)
			if (pr->threads[t]->tid != pr->pid && check_pid_free(pr->threads[t]->tid, "thread id", pr->pid))
				return -1;
	}
	return 0;
}

int check_all(struct restorer *rs)
{
	return check_meta(rs, rs->im.last, NULL);
}
