/* crc32 (zlib's, IEEE 802.3 reflected) of 4 KiB pages with PCLMULQDQ:
 * the page is folded 4 x 128 bits at a time into one 128-bit value
 * congruent to it modulo the polynomial, whose crc zlib then finishes (16
 * bytes). Constants x^n mod P are computed at start, and the fast path is
 * checked against zlib on test pages before it is used; without PCLMULQDQ,
 * or if the check fails, zlib does the whole page. Shared by the engine (which
 * writes the crc of every page it captures) and the restorer (which checks
 * them). */
#include <stdint.h>
#include <string.h>
#include <immintrin.h>
#include <zlib.h>
#include "pagecrc.h"

#define PAGE_SZ 4096

static bool fast_ok;
static uint64_t k512[2], k384[2], k256[2], k128[2];

static uint64_t xpow_mod(unsigned n) /* x^n mod P, P = 0x104C11DB7 (normal form) */
{
	uint64_t r = 1;
	for (unsigned i = 0; i < n; i++) {
		r <<= 1;
		if (r & (1ULL << 32))
			r ^= 0x104C11DB7ULL;
	}
	return r;
}

static uint64_t rev64(uint64_t v)
{
	uint64_t r = 0;
	for (int i = 0; i < 64; i++)
		if (v & (1ULL << i))
			r |= 1ULL << (63 - i);
	return r;
}

/* folding by D bits: low qword (x^127..x^64) times x^(64+D-1) mod P, high
 * qword (x^63..x^0) times x^(D-1) mod P (the -1: a carry-less product of
 * two reflected 64-bit values comes out one position short) */
static void fold_consts(unsigned d, uint64_t k[2])
{
	k[0] = rev64(xpow_mod(64 + d - 1));
	k[1] = rev64(xpow_mod(d - 1));
}

__attribute__((target("pclmul,sse4.1"))) static inline __m128i fold(__m128i a, const uint64_t k[2])
{
	__m128i kk = _mm_set_epi64x((long long)k[1], (long long)k[0]);
	return _mm_xor_si128(_mm_clmulepi64_si128(a, kk, 0x00), _mm_clmulepi64_si128(a, kk, 0x11));
}

__attribute__((target("pclmul,sse4.1"))) static uint32_t crc_page_fast(const uint8_t *p)
{
	const __m128i *b = (const __m128i *)p;
	__m128i a0 = _mm_loadu_si128(b), a1 = _mm_loadu_si128(b + 1), a2 = _mm_loadu_si128(b + 2), a3 = _mm_loadu_si128(b + 3);
	a0 = _mm_xor_si128(a0, _mm_set_epi32(0, 0, 0, -1)); /* zlib's initial ~0 */
	for (size_t i = 4; i < PAGE_SZ / 16; i += 4) {
		a0 = _mm_xor_si128(fold(a0, k512), _mm_loadu_si128(b + i));
		a1 = _mm_xor_si128(fold(a1, k512), _mm_loadu_si128(b + i + 1));
		a2 = _mm_xor_si128(fold(a2, k512), _mm_loadu_si128(b + i + 2));
		a3 = _mm_xor_si128(fold(a3, k512), _mm_loadu_si128(b + i + 3));
	}
	__m128i f = _mm_xor_si128(_mm_xor_si128(fold(a0, k384), fold(a1, k256)), _mm_xor_si128(fold(a2, k128), a3));
	uint8_t last[16];
	_mm_storeu_si128((__m128i *)last, f);
	last[0] ^= 0xff;
	last[1] ^= 0xff;
	last[2] ^= 0xff;
	last[3] ^= 0xff;
	return (uint32_t)crc32(0L, last, 16);
}

void crc_init(void)
{
	fold_consts(512, k512);
	fold_consts(384, k384);
	fold_consts(256, k256);
	fold_consts(128, k128);
	__builtin_cpu_init();
	if (!__builtin_cpu_supports("pclmul") || !__builtin_cpu_supports("sse4.1"))
		return;
	static uint8_t t[PAGE_SZ];
	uint64_t s = 0x243f6a8885a308d3ULL;
	for (int round = 0; round < 4; round++) {
		for (size_t i = 0; i < PAGE_SZ; i++) {
			s ^= s << 13;
			s ^= s >> 7;
			s ^= s << 17;
			t[i] = round == 1 ? 0 : round == 2 ? 0xff : (uint8_t)s;
		}
		if (crc_page_fast(t) != (uint32_t)crc32(0L, t, PAGE_SZ))
			return;
	}
	fast_ok = true;
}

uint32_t crc_page(const uint8_t *p)
{
	return fast_ok ? crc_page_fast(p) : (uint32_t)crc32(0L, p, PAGE_SZ);
}

bool crc_fast(void)
{
	return fast_ok;
}
