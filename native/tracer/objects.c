/* The eBPF objects of one tracer: bpf/trace.bpf.c opened and loaded through
 * its generated skeleton (build/bpf/trace.skel.h, the object embedded in this
 * binary), or, for the bench's floors, any object file with the stream maps
 * (events, counters). Every program is attached by its section (tp_btf/...
 * through a raw tracepoint, tracepoint/... through a perf event and a BPF
 * link); every fd belongs to this process, nothing is pinned, so the kernel
 * drops the programs when the process exits however it exits. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>
#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include "trace.skel.h"
#include "tracer.h"

static int libbpf_log(enum libbpf_print_level level, const char *fmt, va_list ap)
{
	if (level == LIBBPF_DEBUG)
		return 0;
	fputs("understudy-tracer: ", stderr); /* libbpf's own text starts with "libbpf: " */
	return vfprintf(stderr, fmt, ap);
}

static int map_fd(struct tracer *t, const char *name, uint32_t *max_entries)
{
	struct bpf_map *m = bpf_object__find_map_by_name(t->obj, name);
	if (!m)
		return -1;
	if (max_entries)
		*max_entries = bpf_map__max_entries(m);
	return bpf_map__fd(m);
}

static int attach_all(struct tracer *t)
{
	struct bpf_program *p;
	bpf_object__for_each_program(p, t->obj)
	{
		if (t->n_links >= TRACER_MAX_PROGS)
			return fail("E_TRACER", 0, "more than %d programs in the object", TRACER_MAX_PROGS);
		struct bpf_link *l = bpf_program__attach(p);
		if (!l) {
			int err = errno;
			return fail(err == EPERM || err == EACCES ? "E_KERNEL_FEATURE" : "E_TRACER", err, "attaching program %s (%s)%s",
				    bpf_program__name(p), bpf_program__section_name(p),
				    err == ENOENT ? " (is tracefs mounted on /sys/kernel/tracing? run `understudy check`)" : "");
		}
		t->links[t->n_links++] = l;
	}
	if (t->n_links == 0)
		return fail("E_TRACER", 0, "the object has no programs");
	return 0;
}

int tracer_open(struct tracer *t, const char *obj_path)
{
	t->events_fd = t->counters_fd = t->bits_fd = t->tgids_fd = t->faults_fd = -1;
	libbpf_set_print(libbpf_log);
	if (obj_path) {
		t->obj = bpf_object__open_file(obj_path, NULL);
		if (!t->obj)
			return fail("E_TRACER", errno, "bpf_object__open_file(%s)", obj_path);
		if (bpf_object__load(t->obj) < 0)
			return fail("E_TRACER", errno, "loading %s (the verifier's log is above)", obj_path);
	} else {
		t->skel = trace_bpf__open_and_load();
		if (!t->skel)
			return fail(errno == EPERM ? "E_NOT_ROOT" : "E_TRACER", errno,
				    "loading bpf/trace.bpf.c (trace_bpf__open_and_load; the verifier's log is above)");
		t->obj = t->skel->obj;
	}
	t->events_fd = map_fd(t, "events", &t->events_bytes);
	t->counters_fd = map_fd(t, "counters", NULL);
	if (t->events_fd < 0 || t->counters_fd < 0)
		return fail("E_TRACER", 0, "%s has no `events` ring buffer or no `counters` map (TR_STREAM_MAPS of bpf/trace.h)",
			    obj_path ? obj_path : "bpf/trace.bpf.c");
	t->bits_fd = map_fd(t, "app_bits", NULL);
	t->tgids_fd = map_fd(t, "app_tgids", &t->tgids_max);
	t->faults_fd = map_fd(t, "write_faults", &t->faults_max);
	if (t->bits_fd >= 0) {
		/* The filter is changed only with atomic ors and ands: by the kernel
		 * at fork and exit, here through this mapping (filter_add). */
		t->bits = mmap(NULL, TRACER_TGID_BITS / 8, PROT_READ | PROT_WRITE, MAP_SHARED, t->bits_fd, 0);
		if (t->bits == MAP_FAILED) {
			t->bits = NULL;
			return fail("E_TRACER", errno, "mmap(map app_bits, %u bytes)", TRACER_TGID_BITS / 8);
		}
	}
	/* Sized by the kernel's count: a per-CPU lookup writes one value for
	 * every possible CPU, however many there are. */
	t->n_cpus = libbpf_num_possible_cpus();
	if (t->n_cpus <= 0)
		return fail("E_TRACER", -t->n_cpus, "libbpf_num_possible_cpus");
	t->cpu_vals = calloc((size_t)t->n_cpus, sizeof(*t->cpu_vals));
	if (!t->cpu_vals)
		return fail("E_NATIVE", errno, "calloc(%d per-CPU counter values)", t->n_cpus);
	return attach_all(t);
}

int tracer_programs(struct tracer *t, Understudy__V1__TracerProgram ***progs, size_t *n)
{
	struct bpf_program *p;
	size_t cap = 0;
	*progs = NULL;
	*n = 0;
	bpf_object__for_each_program(p, t->obj) cap++;
	*progs = calloc(cap ? cap : 1, sizeof(**progs));
	if (!*progs)
		return fail("E_NATIVE", errno, "calloc(%zu program infos)", cap);
	bpf_object__for_each_program(p, t->obj)
	{
		struct bpf_prog_info info;
		uint32_t len = sizeof(info);
		memset(&info, 0, sizeof(info));
		if (bpf_obj_get_info_by_fd(bpf_program__fd(p), &info, &len) < 0)
			return fail("E_TRACER", errno, "bpf_obj_get_info_by_fd(program %s)", bpf_program__name(p));
		Understudy__V1__TracerProgram *pr = malloc(sizeof(*pr));
		if (!pr)
			return fail("E_NATIVE", errno, "malloc(program info)");
		understudy__v1__tracer_program__init(pr);
		pr->name = (char *)bpf_program__name(p);
		pr->section = (char *)bpf_program__section_name(p);
		const char *type = libbpf_bpf_prog_type_str(info.type);
		pr->type = (char *)(type ? type : "unknown");
		pr->id = info.id;
		pr->run_cnt = info.run_cnt;
		pr->run_time_ns = info.run_time_ns;
		(*progs)[(*n)++] = pr;
	}
	return 0;
}

void tracer_free_programs(Understudy__V1__TracerProgram **progs, size_t n)
{
	for (size_t i = 0; i < n; i++)
		free(progs[i]);
	free(progs);
}

void tracer_close(struct tracer *t)
{
	if (t->rb)
		ring_buffer__free(t->rb);
	t->rb = NULL;
	for (int i = 0; i < t->n_links; i++)
		bpf_link__destroy(t->links[i]);
	t->n_links = 0;
	if (t->bits)
		munmap(t->bits, TRACER_TGID_BITS / 8);
	t->bits = NULL;
	if (t->skel)
		trace_bpf__destroy(t->skel);
	else if (t->obj)
		bpf_object__close(t->obj);
	t->skel = NULL;
	t->obj = NULL;
	free(t->cpu_vals);
	t->cpu_vals = NULL;
}
