/* Image reading for the restorer: the image library (native/common/image.c)
 * does the work; these entry points keep the restorer's error (g_err). */
#include "restore.h"

int image_open(struct image *im, const char *dir, int64_t epoch)
{
	return img_open(im, dir, epoch, &g_err);
}

void image_close(struct image *im)
{
	img_close(im);
}

/* Every page run of every epoch used lies inside its pages.bin, before any
 * process exists. */
int image_verify_pages(struct image *im)
{
	return img_check_runs(im, &g_err);
}

int image_page_map(struct image *im, pid_t pid, struct page_ref **out, size_t *n)
{
	return img_page_map(im, pid, out, n, &g_err);
}

/* Every page that is going to be written is checked against its crc32
 * before any process exists; pages an epoch superseded are never read. */
int image_verify_refs(struct image *im, pid_t pid, const struct page_ref *v, size_t n)
{
	return img_verify_refs(im, pid, v, n, &g_err);
}

/* The service's apply (apply.c): the chain grows by one delta. */
int image_extend(struct image *im, uint32_t epoch)
{
	return img_extend(im, epoch, &g_err);
}

void image_release_before(struct image *im, uint32_t epoch)
{
	img_release_before(im, epoch);
}
