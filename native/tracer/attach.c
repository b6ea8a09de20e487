/* Attaching pinned programs: tracefs tracepoints through perf_event_open on the
 * tracepoint id plus a BPF link, BTF tracepoints through raw_tracepoint_open.
 * bpftool can load and pin but not attach these, hence this helper. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/perf_event.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/ioctl.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <bpf/bpf.h>
#include "tracer.h"

static int tracepoint_id(const char *category, const char *event)
{
	char path[512];
	snprintf(path, sizeof(path), "/sys/kernel/tracing/events/%s/%s/id", category, event);
	FILE *f = fopen(path, "r");
	if (!f) {
		fprintf(stderr, "understudy-tracer: open %s: %s (is tracefs mounted? run `understudy check`)\n", path,
			strerror(errno));
		return -1;
	}
	int id = -1;
	if (fscanf(f, "%d", &id) != 1)
		fprintf(stderr, "understudy-tracer: %s: no tracepoint id\n", path);
	fclose(f);
	return id;
}

static int attach_tracepoint(int prog_fd, const char *name, const char *category, const char *event)
{
	int id = tracepoint_id(category, event);
	if (id < 0)
		return -1;
	struct perf_event_attr attr;
	memset(&attr, 0, sizeof(attr));
	attr.type = PERF_TYPE_TRACEPOINT;
	attr.size = sizeof(attr);
	attr.config = id;
	attr.sample_period = 1;
	/* pid -1, cpu 0: the program runs on every CPU; the event only anchors it. */
	int pfd = syscall(SYS_perf_event_open, &attr, -1, 0, -1, PERF_FLAG_FD_CLOEXEC);
	if (pfd < 0) {
		fprintf(stderr, "understudy-tracer: perf_event_open(tracepoint %s/%s id %d) for %s: %s\n", category, event,
			id, name, strerror(errno));
		return -1;
	}
	int lfd = bpf_link_create(prog_fd, pfd, BPF_PERF_EVENT, NULL);
	if (lfd < 0) {
		int err = errno;
		/* Older path: attach through the perf event itself. */
		if (ioctl(pfd, PERF_EVENT_IOC_SET_BPF, prog_fd) < 0 || ioctl(pfd, PERF_EVENT_IOC_ENABLE, 0) < 0) {
			fprintf(stderr, "understudy-tracer: attach %s to %s/%s: bpf_link_create: %s, PERF_EVENT_IOC_SET_BPF: %s\n",
				name, category, event, strerror(err), strerror(errno));
			close(pfd);
			return -1;
		}
		return pfd;
	}
	close(pfd); /* the link holds the perf event */
	return lfd;
}

static int attach_one(const char *dir, const char *name, struct links *out)
{
	char path[1024];
	snprintf(path, sizeof(path), "%s/%s", dir, name);
	int prog_fd = bpf_obj_get(path);
	if (prog_fd < 0) {
		fprintf(stderr, "understudy-tracer: bpf_obj_get(%s): %s\n", path, strerror(errno));
		return -1;
	}
	int fd = -1;
	if (strncmp(name, "btf__", 5) == 0) {
		fd = bpf_raw_tracepoint_open(NULL, prog_fd);
		if (fd < 0)
			fprintf(stderr, "understudy-tracer: raw_tracepoint_open(%s): %s\n", name, strerror(errno));
	} else if (strncmp(name, "tp__", 4) == 0) {
		char cat[128], ev[256];
		const char *a = name + 4, *sep = strstr(a, "__");
		if (!sep || (size_t)(sep - a) >= sizeof(cat) || strlen(sep + 2) >= sizeof(ev)) {
			fprintf(stderr, "understudy-tracer: program %s: name is not tp__<category>__<event>\n", name);
		} else {
			memcpy(cat, a, sep - a);
			cat[sep - a] = 0;
			strcpy(ev, sep + 2);
			fd = attach_tracepoint(prog_fd, name, cat, ev);
		}
	} else {
		fprintf(stderr, "understudy-tracer: program %s: unknown naming, cannot tell its tracepoint\n", name);
	}
	close(prog_fd);
	if (fd < 0)
		return -1;
	if (out->n >= TRACER_MAX_LINKS) {
		fprintf(stderr, "understudy-tracer: more than %d programs\n", TRACER_MAX_LINKS);
		close(fd);
		return -1;
	}
	out->fds[out->n++] = fd;
	return 0;
}

int attach_all(const char *progs_dir, struct links *out)
{
	DIR *d = opendir(progs_dir);
	if (!d) {
		fprintf(stderr, "understudy-tracer: opendir(%s): %s\n", progs_dir, strerror(errno));
		return -1;
	}
	struct dirent *e;
	int rc = 0;
	while ((e = readdir(d)) != NULL) {
		if (e->d_name[0] == '.')
			continue;
		if (attach_one(progs_dir, e->d_name, out) < 0) {
			rc = -1;
			break;
		}
	}
	closedir(d);
	if (rc == 0 && out->n == 0) {
		fprintf(stderr, "understudy-tracer: no programs pinned in %s\n", progs_dir);
		rc = -1;
	}
	if (rc < 0)
		detach_all(out);
	return rc;
}

void detach_all(struct links *l)
{
	for (int i = 0; i < l->n; i++)
		close(l->fds[i]);
	l->n = 0;
}
