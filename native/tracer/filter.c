/* Adding tgids to the tracer's in-kernel filter from user space. The filter
 * is a bitmap (array map app_bits, mmapable, one bit per tgid) that the
 * kernel side changes with atomic or/and at fork and exit; a whole-word map
 * update (bpftool) could erase a bit the kernel set in the same word at the
 * same moment, so the bits are set here with an atomic or through mmap. The
 * hash app_tgids (the listing) gets the tgid too. */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>
#include <bpf/bpf.h>
#include "tracer.h"

#define TGID_BITS (1u << 22)

int filter_add(const char *pins, const uint32_t *tgids, int n)
{
	char path[1024];
	snprintf(path, sizeof(path), "%s/maps/app_bits", pins);
	int bits_fd = bpf_obj_get(path);
	if (bits_fd < 0) {
		fprintf(stderr, "understudy-tracer: bpf_obj_get(%s): %s\n", path, strerror(errno));
		return -1;
	}
	snprintf(path, sizeof(path), "%s/maps/app_tgids", pins);
	int hash_fd = bpf_obj_get(path);
	if (hash_fd < 0) {
		fprintf(stderr, "understudy-tracer: bpf_obj_get(%s): %s\n", path, strerror(errno));
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
