/* Adding tgids to the tracer's in-kernel filter from user space. The filter
 * is a bitmap (array map app_bits, mmapable, one bit per tgid) that the
 * kernel side changes with atomic or/and at fork and exit; a whole-word map
 * update (bpftool) could erase a bit the kernel set in the same word at the
 * same moment, so the bits are set here with an atomic or through mmap. The
 * hash app_tgids (the listing) gets the tgid too. */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>
#include <bpf/bpf.h>
#include "../../bpf/trace.h"
#include "tracer.h"

#define TGID_BITS (1u << 22)

/* fd of the pinned map DIR/maps/NAME, or -1 with a message naming it */
static int open_map(const char *pins, const char *name)
{
	char path[1024];
	snprintf(path, sizeof(path), "%s/maps/%s", pins, name);
	int fd = bpf_obj_get(path);
	if (fd < 0)
		fprintf(stderr, "understudy-tracer: bpf_obj_get(%s): %s\n", path, strerror(errno));
	return fd;
}

int filter_add(const char *pins, const uint32_t *tgids, int n)
{
	int bits_fd = open_map(pins, "app_bits");
	if (bits_fd < 0)
		return -1;
	int hash_fd = open_map(pins, "app_tgids");
	if (hash_fd < 0) {
		close(bits_fd);
		return -1;
	}
	size_t len = TGID_BITS / 8;
	uint64_t *words = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, bits_fd, 0);
	if (words == MAP_FAILED) {
		fprintf(stderr, "understudy-tracer: mmap(%s/maps/app_bits, %zu bytes): %s\n", pins, len, strerror(errno));
		close(bits_fd);
		close(hash_fd);
		return -1;
	}
	int rc = 0;
	for (int i = 0; i < n; i++) {
		uint32_t t = tgids[i], one = 1;
		if (t == 0 || t >= TGID_BITS) {
			fprintf(stderr, "understudy-tracer: tgid %u out of range (1..%u)\n", t, TGID_BITS - 1);
			rc = -1;
			continue;
		}
		/* The listing first: a bit without its listing would be invisible. */
		if (bpf_map_update_elem(hash_fd, &t, &one, BPF_ANY) < 0) {
			fprintf(stderr, "understudy-tracer: map update %s/maps/app_tgids key %u: %s\n", pins, t, strerror(errno));
			rc = -1;
			continue;
		}
		__atomic_fetch_or(&words[t / 64], 1ull << (t % 64), __ATOMIC_SEQ_CST);
	}
	munmap(words, len);
	close(bits_fd);
	close(hash_fd);
	return rc;
}

/* Removes every write_faults entry (struct tr_fault_key) of the given tgids:
 * the kernel side adds one per written region and never removes any, so an
 * app with many short-lived processes would fill the map. The keys are
 * collected first and deleted after the walk (deleting the key a walk stands
 * on restarts get_next_key from the beginning). */
int faults_forget(const char *pins, const uint32_t *tgids, int n, unsigned *removed)
{
	int fd = open_map(pins, "write_faults");
	if (fd < 0)
		return -1;
	size_t cap = 1024, nk = 0;
	struct tr_fault_key *keys = malloc(cap * sizeof(*keys));
	if (!keys) {
		fprintf(stderr, "understudy-tracer: out of memory\n");
		close(fd);
		return -1;
	}
	struct tr_fault_key cur, next;
	void *prev = NULL;
	int rc = 0;
	while (bpf_map_get_next_key(fd, prev, &next) == 0) {
		for (int i = 0; i < n; i++) {
			if (next.tgid != tgids[i])
				continue;
			if (nk == cap) {
				struct tr_fault_key *k2 = realloc(keys, 2 * cap * sizeof(*keys));
				if (!k2) {
					fprintf(stderr, "understudy-tracer: out of memory\n");
					rc = -1;
					goto out;
				}
				keys = k2;
				cap *= 2;
			}
			keys[nk++] = next;
			break;
		}
		cur = next;
		prev = &cur;
	}
	if (errno != ENOENT) {
		fprintf(stderr, "understudy-tracer: walking %s/maps/write_faults: %s\n", pins, strerror(errno));
		rc = -1;
	}
	for (size_t i = 0; i < nk; i++) {
		if (bpf_map_delete_elem(fd, &keys[i]) == 0)
			(*removed)++;
		else if (errno != ENOENT) {
			fprintf(stderr, "understudy-tracer: deleting tgid %u from %s/maps/write_faults: %s\n", keys[i].tgid, pins, strerror(errno));
			rc = -1;
		}
	}
out:
	free(keys);
	close(fd);
	return rc;
}
