/* /proc parsing: maps, tasks, children, status, stat, and the process-wide
 * state of a checkpoint (ids, mm fields, auxv, cwd/root, umask, rlimits,
 * credentials, personality), plus file identity (ELF build-id or crc32). */
#include <dirent.h>
#include <elf.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>
#include <zlib.h>
#include "arena.h"
#include "elfid.h"
#include "engine.h"

ssize_t read_all(int fd, char **buf, size_t *cap, const char *what)
{
	size_t len = 0;
	for (;;) {
		if (grow(buf, cap, len + 4096 + 1, 1, 8192, what))
			return -1;
		ssize_t r = read(fd, *buf + len, *cap - len - 1);
		if (r < 0) {
			if (errno == EINTR)
				continue;
			return fail(errno == ESRCH ? "E_NO_SUCH_PROCESS" : "E_NATIVE", errno, "read(%s)", what);
		}
		if (r == 0)
			break;
		len += r;
	}
	(*buf)[len] = 0;
	return (ssize_t)len;
}

ssize_t read_file(const char *path, char **buf)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return fail(errno == ENOENT ? "E_NO_SUCH_PROCESS" : "E_NATIVE", errno, "open(%s)", path);
	char *b = NULL;
	size_t cap = 0;
	ssize_t len = read_all(fd, &b, &cap, path);
	close(fd);
	if (len < 0) {
		free(b);
		return -1;
	}
	*buf = b;
	return len;
}

int read_maps(pid_t pid, struct region **out, size_t *n)
{
	char path[64], *buf;
	snprintf(path, sizeof(path), "/proc/%d/maps", pid);
	if (read_file(path, &buf) < 0)
		return -1;
	size_t cap = 0, cnt = 0;
	struct region *v = NULL;
	char *save = NULL;
	for (char *line = strtok_r(buf, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
		if (grow(&v, &cap, cnt + 1, sizeof(*v), 64, path)) {
			free(v);
			free(buf);
			return -1;
		}
		struct region *r = &v[cnt];
		memset(r, 0, sizeof(*r));
		char perms[8] = "";
		unsigned long long s, e, off, ino;
		unsigned maj, min;
		int pos = 0;
		if (sscanf(line, "%llx-%llx %7s %llx %x:%x %llu %n", &s, &e, perms, &off, &maj, &min, &ino, &pos) < 7) {
			free(v);
			free(buf);
			return fail("E_NATIVE", 0, "cannot parse /proc/%d/maps line \"%.120s\"", pid, line);
		}
		r->start = s;
		r->end = e;
		r->pgoff = off;
		r->inode = ino;
		r->maj = maj;
		r->min = min;
		r->prot = (perms[0] == 'r' ? 1 : 0) | (perms[1] == 'w' ? 2 : 0) | (perms[2] == 'x' ? 4 : 0);
		r->shared = perms[3] == 's';
		if (pos > 0)
			snprintf(r->name, sizeof(r->name), "%s", line + pos);
		cnt++;
	}
	free(buf);
	*out = v;
	*n = cnt;
	return 0;
}

enum region_kind region_kind(const struct region *r)
{
	if (!strcmp(r->name, "[vdso]"))
		return RK_VDSO;
	if (!strncmp(r->name, "[vvar", 5))
		return RK_VVAR;
	if (!strcmp(r->name, "[vsyscall]"))
		return RK_VSYSCALL;
	if (r->shared)
		return r->inode && strncmp(r->name, "/dev/zero", 9) && strncmp(r->name, "/SYSV", 5) && strncmp(r->name, "/memfd:", 7) &&
				strncmp(r->name, "/dev/shm/", 9) ?
			RK_FILE_SHARED :
			RK_SHARED_ANON;
	if (r->inode)
		return RK_FILE_PRIVATE;
	return RK_ANON;
}

static int list_dir_ints(const char *path, pid_t **out, size_t *n)
{
	DIR *d = opendir(path);
	if (!d)
		return fail(errno == ENOENT ? "E_NO_SUCH_PROCESS" : "E_NATIVE", errno, "opendir(%s)", path);
	size_t cap = 0, cnt = 0;
	pid_t *v = NULL;
	struct dirent *de;
	int rc = 0;
	while (!rc && (de = readdir(d))) {
		if (de->d_name[0] < '0' || de->d_name[0] > '9')
			continue;
		rc = grow(&v, &cap, cnt + 1, sizeof(pid_t), 16, path);
		if (!rc)
			v[cnt++] = atoi(de->d_name);
	}
	closedir(d);
	if (rc) {
		free(v);
		return -1;
	}
	*out = v;
	*n = cnt;
	return 0;
}

int list_tasks(pid_t pid, pid_t **tids, size_t *n)
{
	char path[64];
	snprintf(path, sizeof(path), "/proc/%d/task", pid);
	return list_dir_ints(path, tids, n);
}

/* children of every thread of pid (/proc/PID/task/TID/children) */
int list_children(pid_t pid, pid_t **kids, size_t *n)
{
	pid_t *tids;
	size_t nt;
	if (list_tasks(pid, &tids, &nt))
		return -1;
	size_t cap = 0, cnt = 0;
	pid_t *v = NULL;
	int rc = 0;
	for (size_t i = 0; !rc && i < nt; i++) {
		char path[96], *buf;
		snprintf(path, sizeof(path), "/proc/%d/task/%d/children", pid, tids[i]);
		err_clear();
		if (read_file(path, &buf) < 0) {
			err_clear(); /* thread gone meanwhile */
			continue;
		}
		char *save = NULL;
		for (char *tok = strtok_r(buf, " \n", &save); !rc && tok; tok = strtok_r(NULL, " \n", &save)) {
			rc = grow(&v, &cap, cnt + 1, sizeof(pid_t), 8, "the children list");
			if (!rc)
				v[cnt++] = atoi(tok);
		}
		free(buf);
	}
	free(tids);
	if (rc) {
		free(v);
		return -1;
	}
	*kids = v;
	*n = cnt;
	return 0;
}

/* Inside the pause nothing of the app changes: /proc/PID/status is read once
 * per task there and served from this cache (status_cache(true) empties it). */
static struct {
	pid_t pid;
	char *buf;
} scache[256];
static bool scache_on;

void status_cache(bool on)
{
	for (size_t i = 0; i < 256; i++) {
		free(scache[i].buf);
		scache[i].buf = NULL;
		scache[i].pid = 0;
	}
	scache_on = on;
}

int proc_status_field(pid_t pid, const char *key, char *val, size_t len)
{
	char path[64], *buf = NULL;
	bool cached = false;
	if (scache_on) {
		size_t slot = (size_t)pid % 256;
		if (scache[slot].buf && scache[slot].pid == pid) {
			buf = scache[slot].buf;
			cached = true;
		}
	}
	if (!buf) {
		snprintf(path, sizeof(path), "/proc/%d/status", pid);
		if (read_file(path, &buf) < 0)
			return -1;
		if (scache_on) {
			size_t slot = (size_t)pid % 256;
			free(scache[slot].buf);
			scache[slot].buf = buf;
			scache[slot].pid = pid;
			cached = true;
		}
	}
	size_t kl = strlen(key);
	int rc = 1;
	for (char *l = buf; l && *l; l = strchr(l, '\n') ? strchr(l, '\n') + 1 : NULL) {
		if (!strncmp(l, key, kl) && l[kl] == ':') {
			char *v = l + kl + 1;
			while (*v == ' ' || *v == '\t')
				v++;
			size_t i = 0;
			while (v[i] && v[i] != '\n' && i + 1 < len) {
				val[i] = v[i];
				i++;
			}
			val[i] = 0;
			rc = 0;
			break;
		}
	}
	if (!cached)
		free(buf);
	return rc;
}

static int last_int(const char *s)
{
	const char *p = s + strlen(s);
	while (p > s && (p[-1] == ' ' || p[-1] == '\t'))
		p--;
	while (p > s && p[-1] != ' ' && p[-1] != '\t')
		p--;
	return atoi(p);
}

/* fields of /proc/PID/stat after the comm, 1-based numbering as in proc(5) */
static int read_stat(pid_t pid, unsigned long long f[64], char *comm, size_t clen)
{
	char path[64], *buf;
	snprintf(path, sizeof(path), "/proc/%d/stat", pid);
	if (read_file(path, &buf) < 0)
		return -1;
	char *lp = strchr(buf, '('), *rp = strrchr(buf, ')');
	if (!lp || !rp) {
		free(buf);
		return fail("E_NATIVE", 0, "cannot parse /proc/%d/stat", pid);
	}
	snprintf(comm, clen, "%.*s", (int)(rp - lp - 1), lp + 1);
	memset(f, 0, 64 * sizeof(f[0]));
	char *p = rp + 2;
	f[3] = *p; /* state letter */
	p += 2;
	for (int i = 4; i < 64 && *p; i++) {
		f[i] = strtoull(p, &p, 10);
		while (*p == ' ')
			p++;
	}
	free(buf);
	return 0;
}

/* ---- file identity ------------------------------------------------------ */
struct id_cache_ent {
	uint64_t dev, ino, size;
	int64_t mtime;
	char build_id[80];
	uint32_t crc;
	bool hashed;
};
static struct id_cache_ent *idc;
static size_t nidc, capidc;

/* Identity of the file behind `path` (opened via fd if fd >= 0). */
int file_identity(const char *path, int fd, Understudy__V1__FileId *id)
{
	int ofd = fd;
	if (ofd < 0) {
		ofd = open(path, O_RDONLY | O_CLOEXEC);
		if (ofd < 0)
			return fail("E_NATIVE", errno, "open(%s) for its identity", path);
	}
	struct stat st;
	if (fstat(ofd, &st)) {
		int e = errno;
		if (fd < 0)
			close(ofd);
		return fail("E_NATIVE", e, "fstat(%s)", path);
	}
	id->dev = st.st_dev;
	id->ino = st.st_ino;
	id->size = st.st_size;
	id->mtime_ns = (int64_t)st.st_mtim.tv_sec * 1000000000LL + st.st_mtim.tv_nsec;
	id->mode = st.st_mode;
	if (!S_ISREG(st.st_mode)) {
		if (fd < 0)
			close(ofd);
		return 0;
	}
	for (size_t i = 0; i < nidc; i++) {
		struct id_cache_ent *c = &idc[i];
		if (c->dev == id->dev && c->ino == id->ino && c->size == id->size && c->mtime == id->mtime_ns) {
			id->build_id = astrdup(c->build_id);
			id->content_crc32 = c->crc;
			id->content_hashed = c->hashed;
			if (fd < 0)
				close(ofd);
			return 0;
		}
	}
	struct id_cache_ent c = { .dev = id->dev, .ino = id->ino, .size = id->size, .mtime = id->mtime_ns };
	elf_gnu_build_id(ofd, st.st_size, c.build_id, sizeof(c.build_id));
	if (!c.build_id[0] && st.st_size <= (64 << 20)) {
		uLong crc = crc32(0L, Z_NULL, 0);
		unsigned char b[65536];
		off_t off = 0;
		ssize_t r;
		while ((r = pread(ofd, b, sizeof(b), off)) > 0) {
			crc = crc32(crc, b, r);
			off += r;
		}
		c.crc = crc;
		c.hashed = r == 0;
	}
	if (fd < 0)
		close(ofd);
	if (nidc == capidc) {
		size_t nc = capidc ? capidc * 2 : 64;
		struct id_cache_ent *n = realloc(idc, nc * sizeof(*n));
		if (n) {
			idc = n;
			capidc = nc;
		}
	}
	if (nidc < capidc)
		idc[nidc++] = c;
	id->build_id = astrdup(c.build_id);
	id->content_crc32 = c.crc;
	id->content_hashed = c.hashed;
	return 0;
}

static uint64_t hexval(const char *s)
{
	return strtoull(s, NULL, 16);
}

static int parse_creds(pid_t pid, Understudy__V1__Creds *cr)
{
	char v[4096];
	const char *keys[2] = { "Uid", "Gid" };
	for (int k = 0; k < 2; k++) {
		if (proc_status_field(pid, keys[k], v, sizeof(v)))
			return fail("E_NATIVE", 0, "no %s in /proc/%d/status", keys[k], pid);
		uint32_t *arr = amalloc(4 * sizeof(uint32_t));
		if (!arr)
			return -1;
		sscanf(v, "%u %u %u %u", &arr[0], &arr[1], &arr[2], &arr[3]);
		if (k == 0) {
			cr->uid = arr;
			cr->n_uid = 4;
		} else {
			cr->gid = arr;
			cr->n_gid = 4;
		}
	}
	if (!proc_status_field(pid, "Groups", v, sizeof(v))) {
		uint32_t *g = amalloc(sizeof(uint32_t) * 1024);
		size_t n = 0;
		char *p = v;
		while (*p && n < 1024) {
			char *e;
			unsigned long x = strtoul(p, &e, 10);
			if (e == p)
				break;
			g[n++] = x;
			p = e;
		}
		cr->groups = g;
		cr->n_groups = n;
	}
	if (!proc_status_field(pid, "CapInh", v, sizeof(v)))
		cr->cap_inh = hexval(v);
	if (!proc_status_field(pid, "CapPrm", v, sizeof(v)))
		cr->cap_prm = hexval(v);
	if (!proc_status_field(pid, "CapEff", v, sizeof(v)))
		cr->cap_eff = hexval(v);
	if (!proc_status_field(pid, "CapBnd", v, sizeof(v)))
		cr->cap_bnd = hexval(v);
	if (!proc_status_field(pid, "CapAmb", v, sizeof(v)))
		cr->cap_amb = hexval(v);
	if (!proc_status_field(pid, "NoNewPrivs", v, sizeof(v)))
		cr->no_new_privs = atoi(v) != 0;
	if (!proc_status_field(pid, "Seccomp", v, sizeof(v)))
		cr->seccomp_mode = atoi(v);
	return 0;
}

static char *alink(const char *path)
{
	char b[PATH_MAX + 1];
	ssize_t n = readlink(path, b, PATH_MAX);
	if (n < 0)
		return NULL;
	b[n] = 0;
	return astrdup(b);
}

/* Process-wide state that needs no injection. Thread, memory, fd, signal
 * state is filled by their own files. */
int fill_process_info(pid_t pid, Understudy__V1__Process *pr)
{
	unsigned long long f[64];
	char comm[64], path[96], v[256];
	if (read_stat(pid, f, comm, sizeof(comm)))
		return -1;
	prof_mark("pi.stat");
	pr->pid = pid;
	pr->comm = astrdup(comm);
	pr->ppid = f[4];
	pr->pgid = f[5];
	pr->sid = f[6];
	pr->ns_pid = pid;
	pr->ns_ppid = pr->ppid;
	pr->ns_pgid = pr->pgid;
	pr->ns_sid = pr->sid;
	if (!proc_status_field(pid, "NSpid", v, sizeof(v)))
		pr->ns_pid = last_int(v);
	if (!proc_status_field(pid, "NSpgid", v, sizeof(v)))
		pr->ns_pgid = last_int(v);
	if (!proc_status_field(pid, "NSsid", v, sizeof(v)))
		pr->ns_sid = last_int(v);
	if (pr->ppid > 0) {
		char pv[256];
		err_clear();
		if (!proc_status_field(pr->ppid, "NSpid", pv, sizeof(pv)))
			pr->ns_ppid = last_int(pv);
		err_clear();
	}
	prof_mark("pi.status");
	Understudy__V1__MmFields *mm = ANEW(Understudy__V1__MmFields, understudy__v1__mm_fields__init);
	if (!mm)
		return -1;
	mm->start_code = f[26];
	mm->end_code = f[27];
	mm->start_stack = f[28];
	mm->start_data = f[45];
	mm->end_data = f[46];
	mm->start_brk = f[47];
	mm->arg_start = f[48];
	mm->arg_end = f[49];
	mm->env_start = f[50];
	mm->env_end = f[51];
	pr->mm = mm;

	char *buf;
	snprintf(path, sizeof(path), "/proc/%d/auxv", pid);
	ssize_t n = read_file(path, &buf);
	if (n < 0)
		return -1;
	pr->auxv.data = amemdup(buf, n);
	pr->auxv.len = n;
	free(buf);
	prof_mark("pi.auxv");

	snprintf(path, sizeof(path), "/proc/%d/exe", pid);
	pr->exe = ANEW(Understudy__V1__FileId, understudy__v1__file_id__init);
	pr->exe->path = alink(path);
	if (!pr->exe->path)
		return fail("E_NATIVE", errno, "readlink(%s)", path);
	if (file_identity(path, -1, pr->exe))
		return -1;
	prof_mark("pi.exe");
	snprintf(path, sizeof(path), "/proc/%d/cwd", pid);
	pr->cwd = alink(path);
	snprintf(path, sizeof(path), "/proc/%d/root", pid);
	pr->root = alink(path);
	if (!pr->cwd || !pr->root)
		return fail("E_NATIVE", errno, "readlink(/proc/%d/cwd or root)", pid);
	if (!proc_status_field(pid, "Umask", v, sizeof(v)))
		pr->umask = strtoul(v, NULL, 8);
	snprintf(path, sizeof(path), "/proc/%d/personality", pid);
	if (read_file(path, &buf) < 0)
		return -1;
	pr->personality = strtoul(buf, NULL, 16);
	free(buf);
	prof_mark("pi.cwd_root_umask_pers");

	pr->rlimits = amalloc(RLIM_NLIMITS * sizeof(void *));
	for (int r = 0; r < RLIM_NLIMITS; r++) {
		struct rlimit rl;
		if (prlimit(pid, r, NULL, &rl))
			return fail("E_NATIVE", errno, "prlimit(pid %d, resource %d)", pid, r);
		Understudy__V1__Rlimit *x = ANEW(Understudy__V1__Rlimit, understudy__v1__rlimit__init);
		x->resource = r;
		x->cur = rl.rlim_cur;
		x->max = rl.rlim_max;
		pr->rlimits[pr->n_rlimits++] = x;
	}
	prof_mark("pi.rlimits");
	pr->creds = ANEW(Understudy__V1__Creds, understudy__v1__creds__init);
	return parse_creds(pid, pr->creds);
}
