/* SPDX-License-Identifier: MIT */
/*
 * Page compression behind one interface (lz4, zstd at a chosen level), plus
 * detection of same-filled pages.  A struct compressor holds the per-thread
 * contexts the libraries need, so each fault thread owns one and the hot
 * path never allocates.  Not thread-safe: one per thread.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum compressor_algo {
	COMPRESSOR_RAW = 0, /* stored uncompressed (a poor page kept as is) */
	COMPRESSOR_LZ4 = 1,
	COMPRESSOR_ZSTD = 2,
};

struct compressor;

/* level: ignored for lz4 (0 = default acceleration); zstd 1..19 (0 = 1). */
int compressor_new(struct compressor **out, enum compressor_algo algo, int level);
struct compressor *compressor_free(struct compressor *c);
enum compressor_algo compressor_algo(const struct compressor *c);
int compressor_level(const struct compressor *c);

/*
 * Compress one page of UZ_PAGE_SIZE bytes into dst (dst_cap bytes).
 * Returns the compressed length (> 0), -E2BIG when the result does not fit
 * in dst_cap (the caller decides what a poor page means by choosing
 * dst_cap), or another -errno.
 */
int compressor_compress(struct compressor *c, const void *page, void *dst, size_t dst_cap);

/*
 * Decompress src (src_len bytes, produced by an algorithm `algo`) into one
 * page.  Any compressor object can decompress any algorithm (it keeps a
 * context for each).  COMPRESSOR_RAW copies.  Returns 0, or -EBADMSG when
 * the data does not decompress to exactly one page.
 */
int compressor_decompress(struct compressor *c, enum compressor_algo algo, const void *src,
			  size_t src_len, void *page);

/*
 * The same for src_len bytes (a multi-page unit) instead of one page:
 * compressor_compress_buf() returns the compressed length or -E2BIG /
 * -errno; compressor_decompress_buf() returns 0 when src decompresses to
 * exactly dst_len bytes, else -EBADMSG.  COMPRESSOR_RAW is not a unit's
 * algorithm (-EINVAL).
 */
int compressor_compress_buf(struct compressor *c, const void *src, size_t src_len, void *dst,
			    size_t dst_cap);
int compressor_decompress_buf(struct compressor *c, enum compressor_algo algo, const void *src,
			      size_t src_len, void *dst, size_t dst_len);
/*
 * Only the first `want` (<= dst_len) of the dst_len bytes src holds: lz4
 * stops there (a unit's page near its start costs less to get at), zstd
 * decodes everything.  0 when at least `want` bytes were decoded (for
 * zstd: exactly dst_len), else -EBADMSG; -EINVAL for RAW.
 */
int compressor_decompress_prefix(struct compressor *c, enum compressor_algo algo, const void *src,
				 size_t src_len, void *dst, size_t dst_len, size_t want);

/* "lz4", "zstd", "zstd:3"; returns 0 or -EINVAL. */
int compressor_parse(const char *spec, enum compressor_algo *algo, int *level);
const char *compressor_algo_name(enum compressor_algo algo);

/* True when the page is one 8-byte word repeated; the word is returned. */
bool page_same_filled(const void *page, uint64_t *word);
void page_fill_word(void *page, uint64_t word);
