/* The image library: the one C implementation of the image format
 * (docs/image-format.md), written by the engine and read by the restorer.
 *
 * An image directory holds epoch-NNNNNN/ (and base-NNNNNN/) subdirectories,
 * each with meta.pb (4-byte LE length + EpochMeta + 4-byte LE crc32 of the
 * message) and pages.bin (raw pages indexed by PageRun, a crc32 per page).
 * An epoch can also travel as a stream of frames (img_write_stream): a
 * header, the EpochMeta, then the raw pages in chunks.
 *
 * Errors go into the caller's struct err_value (errfmt.h): a stable code and
 * a message naming the call, the file or epoch, and errno. */
#ifndef UNDERSTUDY_IMAGE_H
#define UNDERSTUDY_IMAGE_H
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include "errfmt.h"
#include "pagecrc.h"
#include "understudy/v1/image.pb-c.h"

#define IMG_VERSION 1
#define IMG_PAGE 4096u
#define IMG_PATH 4200

/* ---- reading ------------------------------------------------------------ */
struct epoch_img { /* one epoch of a chain, opened */
	uint32_t epoch;
	char dir[IMG_PATH];
	Understudy__V1__EpochMeta *meta;
	const uint8_t *pages; /* mmap of pages.bin */
	size_t pages_len;
};
struct page_ref { /* where the final content of one page is */
	uint64_t vaddr;
	uint32_t ep;  /* index into the epoch array */
	uint64_t off; /* byte offset in that epoch's pages.bin */
	uint32_t crc; /* its crc32 from the page index */
};
struct image { /* epoch N: its base and every delta after it */
	char dir[4096];
	struct epoch_img *ep; /* epochs 0..N; below the base: meta NULL */
	uint32_t nep;
	uint32_t target; /* N */
	Understudy__V1__EpochMeta *last;
};

/* Decodes a meta.pb image (length, message, crc32): the frame, the crc, the
 * message, the version and the page size are checked; `what` names it. */
int img_meta_decode(const uint8_t *b, size_t len, const char *what, Understudy__V1__EpochMeta **out, struct err_value *e);
/* Reads DIR/meta.pb of one epoch directory; a missing file is missing_code. */
int img_meta_read(const char *epoch_dir, const char *missing_code, Understudy__V1__EpochMeta **out, struct err_value *e);
/* The newest epoch of an image directory (epoch-N or base-N), or -1 with
 * E_NOT_AN_IMAGE when it holds none. */
int64_t img_newest(const char *dir, struct err_value *e);
/* Opens epoch N of dir (-1: the newest): walks back to the nearest full epoch
 * or base, every delta between present, of one image id, parents in order;
 * maps the pages of each. */
int img_open(struct image *im, const char *dir, int64_t epoch, struct err_value *e);
void img_close(struct image *im);
/* A clone at epoch target takes the next delta (target + 1) of the same
 * image: its metadata read and checked, its pages.bin mapped. A full epoch is
 * refused (E_UNSUPPORTED: the clone must be built again from it). */
int img_extend(struct image *im, uint32_t epoch, struct err_value *e);
/* Frees the metadata and unmaps the pages of every epoch before `epoch`. */
void img_release_before(struct image *im, uint32_t epoch);
/* Every page run of every epoch used lies inside its pages.bin and has a crc
 * per page. */
int img_check_runs(const struct image *im, struct err_value *e);
/* The pages of process `pid` as of epoch N, sorted by vaddr (newest copy of
 * each page; pages voided by a later reset, zeroed range or unmapping left out). */
int img_page_map(const struct image *im, pid_t pid, struct page_ref **out, size_t *n, struct err_value *e);
/* crc32 of every page in v (on two threads for large sets). */
int img_verify_refs(const struct image *im, pid_t pid, const struct page_ref *v, size_t n, struct err_value *e);

/* ---- writing ------------------------------------------------------------ */
/* A random 32-hex-digit image id into out[33]. */
void img_new_id(char *out);
/* Creates dir if missing; with must_be_empty, refuses one that already holds
 * an epoch or a base (E_IMAGE_EXISTS). */
int img_dir_prepare(const char *dir, bool must_be_empty, struct err_value *e);

/* Fills the crc32 of every page of every run of m from pages (the runs'
 * crc32 arrays must hold npages entries), and checks that the runs cover
 * exactly len bytes. */
int img_fill_crcs(Understudy__V1__EpochMeta *m, const uint8_t *pages, size_t len, struct err_value *e);
/* meta.pb bytes (length + message + crc32), malloc'd. */
int img_meta_encode(const Understudy__V1__EpochMeta *m, uint8_t **out, size_t *len, struct err_value *e);

enum {
	IMG_W_FSYNC = 1, /* data and metadata durable before the rename */
	IMG_W_CRC = 2,	 /* compute the page crcs while writing (else: already filled) */
};
struct img_wstats {
	uint64_t crc_ns, write_ns, sync_ns; /* crc, write(2)s, waits for the disk */
	bool name_unsynced;		    /* fsync of the image directory failed after the rename */
};
/* Writes epoch m->epoch atomically into dir: pages.bin and meta.pb into a
 * hidden .tmp-epoch-N-PID/, [fsync both and that directory], rename to
 * epoch-N (or base-N with `base`), [fsync dir] — [..] with IMG_W_FSYNC. Pages
 * go out in 8 MiB chunks with the disk's write-back started per chunk
 * (sync_file_range), so the final fsync waits only for the last chunks. A
 * failure removes the temporary directory: a visible epoch is always whole.
 * A failed fsync of dir after the rename is not a failure (the epoch is
 * there, whole): st->name_unsynced says it. final (IMG_PATH bytes) receives
 * the epoch's path. */
int img_write_dir(const char *dir, Understudy__V1__EpochMeta *m, const uint8_t *pages, size_t len, unsigned flags, bool base, char *final,
		  struct img_wstats *st, struct err_value *e);

/* The epoch stream: frames (4-byte LE length + payload) on fd:
 *   1. EpochStreamHeader (image.proto): version, request id, epoch, sizes;
 *   2. EpochMeta, the same bytes meta.pb frames (crc in the header);
 *   3. the pages, raw, in frames of chunk_bytes (the last may be shorter),
 *      pages_bytes in all, in pages.bin order.
 * The crcs must be filled (img_fill_crcs) first. A full pipe blocks (or is
 * polled on a non-blocking fd). */
#define IMG_STREAM_CHUNK (4u << 20)
int img_write_stream(int fd, uint64_t request_id, const Understudy__V1__EpochMeta *m, const uint8_t *pages, size_t len, struct err_value *e);

#endif
