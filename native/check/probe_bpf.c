/* Probes of the eBPF side: bpf(), BTF, tracepoint programs, ring buffers. */
#include "check.h"

#include <errno.h>
#include <linux/bpf.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <bpf/bpf.h>
#include <bpf/btf.h>
#include <bpf/libbpf.h>
#include <linux/types.h>

#include "../../bpf/check.h"
#include "check.skel.h"

static int libbpf_to_stderr(enum libbpf_print_level level, const char *fmt, va_list ap)
{
	if (level == LIBBPF_DEBUG)
		return 0;
	fputs("understudy-check: libbpf: ", stderr);
	return vfprintf(stderr, fmt, ap);
}

static long sys_bpf(int cmd, union bpf_attr *attr)
{
	return syscall(SYS_bpf, cmd, attr, sizeof(*attr));
}

int probe_bpf_syscall(struct probe_ctx *c)
{
	union bpf_attr attr;
	__u32 key = 0;
	__u64 val = 0x5553434b0001ull, back = 0;
	int fd;

	if (probe_gate(c, "bpf(BPF_MAP_CREATE, array)") < 0)
		return -1;
	memset(&attr, 0, sizeof(attr));
	attr.map_type = BPF_MAP_TYPE_ARRAY;
	attr.key_size = sizeof(key);
	attr.value_size = sizeof(val);
	attr.max_entries = 1;
	fd = (int)sys_bpf(BPF_MAP_CREATE, &attr);
	if (fd < 0)
		return probe_fail(c, errno, "bpf(BPF_MAP_CREATE, array)");

	memset(&attr, 0, sizeof(attr));
	attr.map_fd = (__u32)fd;
	attr.key = (__u64)(unsigned long)&key;
	attr.value = (__u64)(unsigned long)&val;
	attr.flags = BPF_ANY;
	if (sys_bpf(BPF_MAP_UPDATE_ELEM, &attr) < 0) {
		probe_fail(c, errno, "bpf(BPF_MAP_UPDATE_ELEM, map fd %d)", fd);
		goto out;
	}
	memset(&attr, 0, sizeof(attr));
	attr.map_fd = (__u32)fd;
	attr.key = (__u64)(unsigned long)&key;
	attr.value = (__u64)(unsigned long)&back;
	if (sys_bpf(BPF_MAP_LOOKUP_ELEM, &attr) < 0) {
		probe_fail(c, errno, "bpf(BPF_MAP_LOOKUP_ELEM, map fd %d)", fd);
		goto out;
	}
	if (back != val) {
		probe_failx(c, "bpf(BPF_MAP_LOOKUP_ELEM, map fd %d) returned 0x%llx, wrote 0x%llx", fd, (unsigned long long)back,
			    (unsigned long long)val);
		goto out;
	}
	probe_ok(c, "BPF_MAP_CREATE(array) gave fd %d; update/lookup round trip of 0x%llx ok", fd, (unsigned long long)val);
out:
	close(fd);
	return c->ok ? 0 : -1;
}

int probe_btf(struct probe_ctx *c)
{
	const char *path = "/sys/kernel/btf/vmlinux";
	struct stat sb;
	struct btf *btf;
	__s32 task_id;
	__u32 n;

	if (probe_gate(c, "stat(/sys/kernel/btf/vmlinux)") < 0)
		return -1;
	if (stat(path, &sb) < 0)
		return probe_fail(c, errno, "stat(%s)", path);
	libbpf_set_print(libbpf_to_stderr);
	btf = btf__parse(path, NULL);
	if (!btf)
		return probe_fail(c, errno, "btf__parse(%s)", path);
	n = btf__type_cnt(btf) - 1; /* type 0 is void */
	task_id = btf__find_by_name_kind(btf, "task_struct", BTF_KIND_STRUCT);
	if (task_id < 0) {
		int e = -task_id;
		btf__free(btf);
		return probe_fail(c, e, "btf__find_by_name_kind(%s, struct task_struct)", path);
	}
	btf__free(btf);
	return probe_ok(c, "%s: %u types in %lld bytes; struct task_struct is type %d", path, n, (long long)sb.st_size, (int)task_id);
}

static struct check_bpf *open_skel(struct probe_ctx *c, bool want_ringbuf)
{
	struct check_bpf *skel;
	int err;

	libbpf_set_print(libbpf_to_stderr);
	skel = check_bpf__open();
	if (!skel) {
		probe_fail(c, errno, "check_bpf__open()");
		return NULL;
	}
	skel->rodata->target_tgid = (__u32)getpid();
	/* Load only what this probe tests, so each probe isolates one feature. */
	bpf_program__set_autoload(skel->progs.check_count_getppid, !want_ringbuf);
	bpf_program__set_autoload(skel->progs.check_ringbuf_getpgid, want_ringbuf);
	bpf_map__set_autocreate(skel->maps.records, want_ringbuf);
	err = check_bpf__load(skel);
	if (err) {
		probe_fail(c, -err, "check_bpf__load(%s, CO-RE against /sys/kernel/btf/vmlinux)",
			   want_ringbuf ? "tp_btf/sys_exit check_ringbuf_getpgid + ringbuf map" : "tp_btf/sys_exit check_count_getppid");
		check_bpf__destroy(skel);
		return NULL;
	}
	return skel;
}

int probe_tracepoint_attach(struct probe_ctx *c)
{
	const int calls = 5;
	struct check_bpf *skel;
	struct bpf_link *link;
	struct bpf_prog_info info;
	__u32 info_len = sizeof(info);
	__u32 key = CHECK_CNT_GETPPID;
	__u64 count = 0;
	int err;

	if (probe_gate(c, "bpf(BPF_PROG_LOAD, tp_btf/sys_exit check_count_getppid)") < 0)
		return -1;
	skel = open_skel(c, false);
	if (!skel)
		return -1;
	link = bpf_program__attach(skel->progs.check_count_getppid);
	if (!link) {
		probe_fail(c, errno, "bpf_program__attach(check_count_getppid, tp_btf/sys_exit)");
		goto out;
	}
	for (int i = 0; i < calls; i++)
		syscall(SYS_getppid);
	err = bpf_map__lookup_elem(skel->maps.counters, &key, sizeof(key), &count, sizeof(count), 0);
	if (err) {
		probe_fail(c, -err, "bpf_map__lookup_elem(counters[%u])", key);
		goto out;
	}
	if (count != (__u64)calls) {
		probe_failx(c,
			    "tp_btf/sys_exit counted %llu getppid calls of pid %d, "
			    "expected %d",
			    (unsigned long long)count, (int)getpid(), calls);
		goto out;
	}
	memset(&info, 0, sizeof(info));
	if (bpf_obj_get_info_by_fd(bpf_program__fd(skel->progs.check_count_getppid), &info, &info_len))
		info.id = 0;
	probe_ok(c,
		 "attached prog id %u to tp_btf/sys_exit (the tracer's hook), filtered to pid %d "
		 "through bpf_get_current_task_btf()->tgid; counted %llu of %d getppid calls",
		 info.id, (int)getpid(), (unsigned long long)count, calls);
out:
	bpf_link__destroy(link);
	check_bpf__destroy(skel);
	return c->ok ? 0 : -1;
}

struct rb_state {
	int n;
	struct check_rb_record rec[8];
	int bad_size;
};

static int on_record(void *ctx, void *data, size_t size)
{
	struct rb_state *s = ctx;

	if (size != sizeof(struct check_rb_record)) {
		s->bad_size = (int)size;
		return 0;
	}
	if (s->n < (int)(sizeof(s->rec) / sizeof(s->rec[0])))
		memcpy(&s->rec[s->n], data, size);
	s->n++;
	return 0;
}

int probe_ringbuf(struct probe_ctx *c)
{
	const int want = 3;
	struct rb_state st = { 0 };
	struct check_bpf *skel;
	struct bpf_link *link = NULL;
	struct ring_buffer *rb = NULL;
	uint64_t deadline;
	__u32 tgid = (__u32)getpid();

	if (probe_gate(c, "bpf(BPF_MAP_CREATE, ringbuf)") < 0)
		return -1;
	skel = open_skel(c, true);
	if (!skel)
		return -1;
	rb = ring_buffer__new(bpf_map__fd(skel->maps.records), on_record, &st, NULL);
	if (!rb) {
		probe_fail(c, errno, "ring_buffer__new(map fd %d)", bpf_map__fd(skel->maps.records));
		goto out;
	}
	link = bpf_program__attach(skel->progs.check_ringbuf_getpgid);
	if (!link) {
		probe_fail(c, errno, "bpf_program__attach(check_ringbuf_getpgid, tp_btf/sys_exit)");
		goto out;
	}
	for (int i = 0; i < want; i++)
		syscall(SYS_getpgid, (long)(CHECK_RB_ARG_BASE + (unsigned)i)); /* ESRCH */
	deadline = mono_ns() + (uint64_t)CHECK_WAIT_MS * 1000000ull;
	while (st.n < want && mono_ns() < deadline) {
		int r = ring_buffer__poll(rb, 100);
		if (r < 0 && r != -EINTR) {
			probe_fail(c, -r, "ring_buffer__poll(map fd %d)", bpf_map__fd(skel->maps.records));
			goto out;
		}
	}
	ring_buffer__consume(rb); /* anything beyond the expected records */
	if (st.bad_size) {
		probe_failx(c, "ring buffer delivered a %d-byte record, expected %zu", st.bad_size, sizeof(struct check_rb_record));
		goto out;
	}
	if (st.n != want) {
		probe_failx(c, "ring_buffer__poll delivered %d records within %d ms, expected %d", st.n, CHECK_WAIT_MS, want);
		goto out;
	}
	for (int i = 0; i < want; i++) {
		const struct check_rb_record *r = &st.rec[i];
		if (r->magic != CHECK_RB_MAGIC || r->seq != (__u32)(i + 1) || r->tgid != tgid || r->arg != CHECK_RB_ARG_BASE + (unsigned)i) {
			probe_failx(c,
				    "ring buffer record %d: magic 0x%x seq %u tgid %u arg 0x%llx, "
				    "expected 0x%x %d %u 0x%llx",
				    i, r->magic, r->seq, r->tgid, (unsigned long long)r->arg, CHECK_RB_MAGIC, i + 1, tgid,
				    (unsigned long long)(CHECK_RB_ARG_BASE + (unsigned)i));
			goto out;
		}
	}
	probe_ok(c,
		 "%d records from tp_btf/sys_exit (getpgid) consumed with ring_buffer__poll "
		 "in order: seq 1..%d, args 0x%llx..0x%llx, tgid %u",
		 want, want, (unsigned long long)CHECK_RB_ARG_BASE, (unsigned long long)(CHECK_RB_ARG_BASE + (unsigned)want - 1), tgid);
out:
	bpf_link__destroy(link);
	ring_buffer__free(rb);
	check_bpf__destroy(skel);
	return c->ok ? 0 : -1;
}
