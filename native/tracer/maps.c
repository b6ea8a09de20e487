/* The tracer's maps seen from user space: the filter (app_bits, app_tgids),
 * the write-fault counts (write_faults) and the per-CPU counters. */
#include <errno.h>
#include <stdlib.h>
#include <bpf/bpf.h>
#include "../../bpf/trace.h"
#include "tracer.h"

/* Every entry of a map (at most max) in bpf_map_lookup_batch passes (one,
 * in practice): *keys and *vals malloc'd, *n entries; on failure nothing is
 * left allocated. */
static int map_dump(int fd, const char *name, size_t ksz, size_t vsz, uint32_t max, void **keys, void **vals, size_t *n)
{
	/* the batch token: a bucket index for hash maps, a key for others */
	uint64_t tok_in[4], tok_out[4];
	void *in = NULL;
	size_t got = 0;
	*n = 0;
	*keys = *vals = NULL;
	if (ksz > sizeof(tok_in))
		return fail("E_INTERNAL", 0, "map %s: key of %zu bytes", name, ksz);
	*keys = malloc(ksz * (max ? max : 1));
	*vals = malloc(vsz * (max ? max : 1));
	if (!*keys || !*vals) {
		free(*keys);
		free(*vals);
		*keys = *vals = NULL;
		return fail("E_NATIVE", ENOMEM, "malloc(dump of map %s, %u entries)", name, max);
	}
	while (got < max) {
		uint32_t count = max - (uint32_t)got;
		int r = bpf_map_lookup_batch(fd, in, tok_out, (char *)*keys + got * ksz, (char *)*vals + got * vsz, &count, NULL);
		int err = errno;
		if (r < 0 && err != ENOENT) {
			free(*keys);
			free(*vals);
			*keys = *vals = NULL;
			return fail("E_NATIVE", err, "bpf_map_lookup_batch(map %s, %zu entries read)", name, got);
		}
		got += count;
		if (r < 0)
			break; /* ENOENT: the whole map was read */
		memcpy(tok_in, tok_out, sizeof(tok_in));
		in = tok_in;
	}
	*n = got;
	return 0;
}

static int cmp_u32(const void *a, const void *b)
{
	uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
	return x < y ? -1 : x > y;
}

/* The tgids of a request, sorted for bsearch (a map of 65,536 entries
 * against hundreds of exited processes). NULL with an error set. */
static uint32_t *sorted_copy(const uint32_t *tgids, size_t n)
{
	uint32_t *s = malloc((n ? n : 1) * sizeof(*s));
	if (!s) {
		fail("E_NATIVE", ENOMEM, "malloc(%zu tgids)", n);
		return NULL;
	}
	if (n > 0) /* tgids may be NULL when there are none */
		memcpy(s, tgids, n * sizeof(*s));
	qsort(s, n, sizeof(*s), cmp_u32);
	return s;
}

static int tgid_listed(uint32_t tgid, const uint32_t *sorted, size_t n)
{
	return bsearch(&tgid, sorted, n, sizeof(*sorted), cmp_u32) != NULL;
}

int filter_add(struct tracer *t, const uint32_t *tgids, size_t n)
{
	if (!t->bits || t->tgids_fd < 0)
		return fail("E_USAGE", 0, "this object has no filter (maps app_bits and app_tgids)");
	/* all checked before any is added: a bad request changes nothing */
	for (size_t i = 0; i < n; i++)
		if (tgids[i] == 0 || tgids[i] >= TRACER_TGID_BITS)
			return fail("E_USAGE", 0, "tgid %u out of range (1..%u)", tgids[i], TRACER_TGID_BITS - 1);
	int rc = 0;
	for (size_t i = 0; i < n; i++) {
		uint32_t tg = tgids[i], one = 1;
		/* The listing first: a bit without its listing would be invisible. */
		if (bpf_map_update_elem(t->tgids_fd, &tg, &one, BPF_ANY) < 0) {
			rc = fail("E_NATIVE", errno, "bpf_map_update_elem(map app_tgids, key %u)", tg);
			continue;
		}
		/* The kernel sets and clears bits of the same word at fork and exit:
		 * only an atomic or keeps them (a whole-word write could erase one). */
		__atomic_fetch_or(&t->bits[tg / 64], 1ull << (tg % 64), __ATOMIC_SEQ_CST);
	}
	return rc;
}

int filter_list(struct tracer *t, uint32_t **tgids, size_t *n)
{
	void *vals;
	*tgids = NULL;
	*n = 0;
	if (t->tgids_fd < 0)
		return 0;
	int rc = map_dump(t->tgids_fd, "app_tgids", sizeof(uint32_t), sizeof(uint32_t), t->tgids_max, (void **)tgids, &vals, n);
	free(vals);
	return rc;
}

int faults_read(struct tracer *t, const uint32_t *tgids, size_t n_tgids, Understudy__V1__TracerWriteFaults *out)
{
	struct tr_fault_key *keys;
	uint64_t *vals;
	size_t n;
	if (t->faults_fd < 0)
		return fail("E_USAGE", 0, "this object has no write_faults map");
	uint32_t *want = sorted_copy(tgids, n_tgids);
	if (!want)
		return -1;
	if (map_dump(t->faults_fd, "write_faults", sizeof(*keys), sizeof(*vals), t->faults_max, (void **)&keys, (void **)&vals, &n)) {
		free(want);
		return -1;
	}
	Understudy__V1__TracerWriteFault *rows = calloc(n ? n : 1, sizeof(*rows));
	out->faults = calloc(n ? n : 1, sizeof(*out->faults));
	if (!rows || !out->faults) {
		free(rows);
		free(out->faults);
		out->faults = NULL;
		free(keys);
		free(vals);
		free(want);
		return fail("E_NATIVE", ENOMEM, "malloc(%zu write-fault rows)", n);
	}
	for (size_t i = 0; i < n; i++) {
		if (n_tgids > 0 && !tgid_listed(keys[i].tgid, want, n_tgids))
			continue;
		Understudy__V1__TracerWriteFault *r = &rows[out->n_faults];
		understudy__v1__tracer_write_fault__init(r);
		r->tgid = keys[i].tgid;
		/* bit 0 set: the kernel could not resolve the VMA, the key is the page */
		r->resolved = (keys[i].vm_start & 1) == 0;
		r->address = keys[i].vm_start & ~1ull;
		r->count = vals[i];
		out->faults[out->n_faults++] = r;
	}
	if (out->n_faults == 0)
		free(rows);
	free(keys);
	free(vals);
	free(want);
	return 0;
}

void faults_free(Understudy__V1__TracerWriteFaults *wf)
{
	/* the rows are one array, the first pointer is its start */
	if (wf->faults)
		free(wf->n_faults ? wf->faults[0] : NULL);
	free(wf->faults);
	wf->faults = NULL;
	wf->n_faults = 0;
}

int faults_forget(struct tracer *t, const uint32_t *tgids, size_t n, uint32_t *removed)
{
	struct tr_fault_key *keys;
	uint64_t *vals;
	size_t nk;
	*removed = 0;
	if (t->faults_fd < 0)
		return fail("E_USAGE", 0, "this object has no write_faults map");
	if (n == 0)
		return 0;
	uint32_t *want = sorted_copy(tgids, n);
	if (!want)
		return -1;
	/* Keys first, deletes after the walk: deleting the key a walk stands on
	 * would restart it. */
	if (map_dump(t->faults_fd, "write_faults", sizeof(*keys), sizeof(*vals), t->faults_max, (void **)&keys, (void **)&vals, &nk)) {
		free(want);
		return -1;
	}
	int rc = 0;
	for (size_t i = 0; i < nk; i++) {
		if (!tgid_listed(keys[i].tgid, want, n))
			continue;
		if (bpf_map_delete_elem(t->faults_fd, &keys[i]) == 0)
			(*removed)++;
		else if (errno != ENOENT)
			rc = fail("E_NATIVE", errno, "bpf_map_delete_elem(map write_faults, tgid %u vm_start 0x%llx)", keys[i].tgid,
				  (unsigned long long)keys[i].vm_start);
	}
	free(keys);
	free(vals);
	free(want);
	return rc;
}

int counters_read(struct tracer *t, Understudy__V1__TracerStatus *s)
{
	s->counters = calloc(TR_CTR_MAX, sizeof(*s->counters));
	s->per_cpu = calloc((size_t)t->n_cpus, sizeof(*s->per_cpu));
	if (!s->counters || !s->per_cpu)
		return fail("E_NATIVE", ENOMEM, "malloc(counters of %d CPUs)", t->n_cpus);
	s->n_counters = TR_CTR_MAX;
	for (int c = 0; c < t->n_cpus; c++) {
		Understudy__V1__TracerCpuCounters *pc = malloc(sizeof(*pc));
		uint64_t *vals = calloc(TR_CTR_MAX, sizeof(*vals));
		if (!pc || !vals) {
			free(pc);
			free(vals);
			return fail("E_NATIVE", ENOMEM, "malloc(counters of CPU %d)", c);
		}
		understudy__v1__tracer_cpu_counters__init(pc);
		pc->cpu = (uint32_t)c;
		pc->counters = vals;
		pc->n_counters = TR_CTR_MAX;
		s->per_cpu[s->n_per_cpu++] = pc;
	}
	for (uint32_t i = 0; i < TR_CTR_MAX; i++) {
		if (bpf_map_lookup_elem(t->counters_fd, &i, t->cpu_vals) < 0)
			return fail("E_NATIVE", errno, "bpf_map_lookup_elem(map counters, key %u)", i);
		for (int c = 0; c < t->n_cpus; c++) {
			s->counters[i] += t->cpu_vals[c];
			s->per_cpu[c]->counters[i] = t->cpu_vals[c];
		}
	}
	return 0;
}

void status_free(Understudy__V1__TracerStatus *s)
{
	free(s->counters);
	for (size_t c = 0; c < s->n_per_cpu; c++) {
		free(s->per_cpu[c]->counters);
		free(s->per_cpu[c]);
	}
	free(s->per_cpu);
	free(s->filter_tgids);
	tracer_free_programs(s->programs, s->n_programs);
	s->counters = NULL;
	s->per_cpu = NULL;
	s->filter_tgids = NULL;
	s->programs = NULL;
	s->n_counters = s->n_per_cpu = s->n_filter_tgids = s->n_programs = 0;
}
