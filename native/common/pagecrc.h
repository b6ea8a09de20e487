/* crc32 (zlib's) of one 4096-byte page, with PCLMULQDQ where the CPU has it. */
#ifndef UNDERSTUDY_PAGECRC_H
#define UNDERSTUDY_PAGECRC_H
#include <stdbool.h>
#include <stdint.h>

/* Sets up the fast path (checked against zlib first); call once before
 * crc_page. Without it, crc_page uses zlib. Safe to call more than once. */
void crc_init(void);
uint32_t crc_page(const uint8_t *p);
bool crc_fast(void); /* the PCLMULQDQ path is in use */

#endif
