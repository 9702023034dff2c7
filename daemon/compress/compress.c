// SPDX-License-Identifier: MIT
/*
 * Page compression: lz4 and zstd behind one small interface, and the
 * same-filled page test.
 *
 * Each fault thread owns one struct compressor.  It carries everything the
 * libraries would otherwise allocate per call: an lz4 stream state (so
 * LZ4_compress_fast_extState() needs no heap) and a zstd compression and
 * decompression context, created once and reused for every page.  Any
 * compressor can decompress any algorithm, because a page stored by one
 * thread may fault back on another.
 *
 * A page is "same-filled" when it is one 8-byte word repeated (the zero
 * page is the common case).  The test compares words and stops at the
 * first difference, so the price for an ordinary page is usually one or
 * two loads; such pages are never handed to a compressor.
 */
#include <errno.h>
#include <lz4.h>
#include <stdlib.h>
#include <string.h>
#include <zstd.h>
#include <zstd_errors.h>

#include "util.h"
#include "compress/compress.h"

#define ZSTD_LEVEL_DEFAULT 1

struct compressor {
	enum compressor_algo algo;
	int level;
	void *lz4_state;   /* LZ4_sizeofState() bytes, for the ext-state API */
	ZSTD_CCtx *zstd_c; /* only when algo is zstd */
	ZSTD_DCtx *zstd_d; /* created lazily by the first zstd decompression */
};

int compressor_new(struct compressor **out, enum compressor_algo algo, int level)
{
	struct compressor *c;

	if (algo != COMPRESSOR_RAW && algo != COMPRESSOR_LZ4 && algo != COMPRESSOR_ZSTD)
		return -EINVAL;
	if (algo == COMPRESSOR_ZSTD) {
		if (level == 0)
			level = ZSTD_LEVEL_DEFAULT;
		if (level < 1 || level > 19)
			return -EINVAL;
	} else if (level < 0) {
		return -EINVAL;
	}

	c = calloc(1, sizeof(*c));
	if (!c)
		return -ENOMEM;
	c->algo = algo;
	c->level = level;

	if (algo == COMPRESSOR_LZ4) {
		c->lz4_state = malloc((size_t)LZ4_sizeofState());
		if (!c->lz4_state)
			goto free_compressor;
	} else if (algo == COMPRESSOR_ZSTD) {
		c->zstd_c = ZSTD_createCCtx();
		if (!c->zstd_c)
			goto free_compressor;
		/* Pages are small and of known size: let zstd size its tables for that. */
		if (ZSTD_isError(
			ZSTD_CCtx_setParameter(c->zstd_c, ZSTD_c_compressionLevel, level)) ||
		    ZSTD_isError(ZSTD_CCtx_setParameter(c->zstd_c, ZSTD_c_checksumFlag, 0)) ||
		    ZSTD_isError(ZSTD_CCtx_setParameter(c->zstd_c, ZSTD_c_contentSizeFlag, 0)))
			goto free_compressor;
	}
	c->zstd_d = ZSTD_createDCtx();
	if (!c->zstd_d)
		goto free_compressor;

	*out = c;
	return 0;

free_compressor:
	compressor_free(c);
	return -ENOMEM;
}

struct compressor *compressor_free(struct compressor *c)
{
	if (!c)
		return NULL;
	ZSTD_freeDCtx(c->zstd_d);
	ZSTD_freeCCtx(c->zstd_c);
	free(c->lz4_state);
	free(c);
	return NULL;
}

enum compressor_algo compressor_algo(const struct compressor *c)
{
	return c->algo;
}

int compressor_level(const struct compressor *c)
{
	return c->level;
}

/* src_len bytes (at most INT32_MAX) of src into dst, by c's algorithm; RAW copies. */
static int compress_any(struct compressor *c, const void *src, size_t src_len, void *dst,
			size_t dst_cap)
{
	size_t len;
	int n;

	if (dst_cap == 0 || src_len == 0 || src_len > INT32_MAX)
		return dst_cap == 0 ? -E2BIG : -EINVAL;

	switch (c->algo) {
	case COMPRESSOR_RAW:
		if (dst_cap < src_len)
			return -E2BIG;
		memcpy(dst, src, src_len);
		return (int)src_len;
	case COMPRESSOR_LZ4:
		n = LZ4_compress_fast_extState(c->lz4_state, src, dst, (int)src_len,
					       (int)uz_min(dst_cap, (size_t)INT32_MAX), 1);
		/* lz4 reports "did not fit" and "failed" alike, as 0. */
		return n > 0 ? n : -E2BIG;
	case COMPRESSOR_ZSTD:
		len = ZSTD_compress2(c->zstd_c, dst, dst_cap, src, src_len);
		if (ZSTD_isError(len)) {
			if (ZSTD_getErrorCode(len) == ZSTD_error_dstSize_tooSmall)
				return -E2BIG;
			/* Leave the context usable for the next page. */
			ZSTD_CCtx_reset(c->zstd_c, ZSTD_reset_session_only);
			return -EIO;
		}
		return (int)len;
	}
	return -EINVAL;
}

/* src into exactly dst_len bytes of dst (at most INT32_MAX), or -EBADMSG. */
static int decompress_any(struct compressor *c, enum compressor_algo algo, const void *src,
			  size_t src_len, void *dst, size_t dst_len)
{
	size_t len;
	int n;

	if (dst_len == 0 || dst_len > INT32_MAX)
		return -EBADMSG;
	switch (algo) {
	case COMPRESSOR_RAW:
		if (src_len != dst_len)
			return -EBADMSG;
		memcpy(dst, src, dst_len);
		return 0;
	case COMPRESSOR_LZ4:
		if (src_len == 0 || src_len > INT32_MAX)
			return -EBADMSG;
		n = LZ4_decompress_safe(src, dst, (int)src_len, (int)dst_len);
		return n == (int)dst_len ? 0 : -EBADMSG;
	case COMPRESSOR_ZSTD:
		/* Frames carry no content size, so ask for exactly dst_len bytes. */
		len = ZSTD_decompressDCtx(c->zstd_d, dst, dst_len, src, src_len);
		if (ZSTD_isError(len)) {
			ZSTD_DCtx_reset(c->zstd_d, ZSTD_reset_session_only);
			return -EBADMSG;
		}
		return len == dst_len ? 0 : -EBADMSG;
	}
	return -EBADMSG;
}

int compressor_compress(struct compressor *c, const void *page, void *dst, size_t dst_cap)
{
	return compress_any(c, page, UZ_PAGE_SIZE, dst, dst_cap);
}

int compressor_decompress(struct compressor *c, enum compressor_algo algo, const void *src,
			  size_t src_len, void *page)
{
	return decompress_any(c, algo, src, src_len, page, UZ_PAGE_SIZE);
}

int compressor_compress_buf(struct compressor *c, const void *src, size_t src_len, void *dst,
			    size_t dst_cap)
{
	if (c->algo == COMPRESSOR_RAW)
		return -EINVAL;
	return compress_any(c, src, src_len, dst, dst_cap);
}

int compressor_decompress_buf(struct compressor *c, enum compressor_algo algo, const void *src,
			      size_t src_len, void *dst, size_t dst_len)
{
	if (algo == COMPRESSOR_RAW)
		return -EINVAL;
	return decompress_any(c, algo, src, src_len, dst, dst_len);
}

int compressor_decompress_prefix(struct compressor *c, enum compressor_algo algo, const void *src,
				 size_t src_len, void *dst, size_t dst_len, size_t want)
{
	int n;

	if (algo == COMPRESSOR_RAW)
		return -EINVAL;
	if (algo != COMPRESSOR_LZ4 || want >= dst_len)
		return decompress_any(c, algo, src, src_len, dst, dst_len);
	if (want == 0 || src_len == 0 || src_len > INT32_MAX || dst_len > INT32_MAX)
		return -EBADMSG;
	/* src_len is the block's exact size (Note 4 of lz4.h): any target is safe. */
	n = LZ4_decompress_safe_partial(src, dst, (int)src_len, (int)want, (int)dst_len);
	return n >= 0 && (size_t)n >= want ? 0 : -EBADMSG;
}

int compressor_parse(const char *spec, enum compressor_algo *algo, int *level)
{
	const char *colon;
	char *end;
	long value;

	if (!spec)
		return -EINVAL;
	if (strcmp(spec, "lz4") == 0) {
		*algo = COMPRESSOR_LZ4;
		*level = 0;
		return 0;
	}
	if (strcmp(spec, "raw") == 0 || strcmp(spec, "none") == 0) {
		*algo = COMPRESSOR_RAW;
		*level = 0;
		return 0;
	}
	if (strncmp(spec, "zstd", 4) != 0)
		return -EINVAL;
	colon = spec + 4;
	if (*colon == '\0') {
		*algo = COMPRESSOR_ZSTD;
		*level = ZSTD_LEVEL_DEFAULT;
		return 0;
	}
	if (*colon != ':' || colon[1] < '0' || colon[1] > '9')
		return -EINVAL;
	errno = 0;
	value = strtol(colon + 1, &end, 10);
	if (errno || *end != '\0' || value < 1 || value > 19)
		return -EINVAL;
	*algo = COMPRESSOR_ZSTD;
	*level = (int)value;
	return 0;
}

const char *compressor_algo_name(enum compressor_algo algo)
{
	switch (algo) {
	case COMPRESSOR_RAW:
		return "raw";
	case COMPRESSOR_LZ4:
		return "lz4";
	case COMPRESSOR_ZSTD:
		return "zstd";
	}
	return "unknown";
}

bool page_same_filled(const void *page, uint64_t *word)
{
	const uint64_t *words = page;
	size_t nr_words = UZ_PAGE_SIZE / sizeof(uint64_t);
	uint64_t first = words[0];
	size_t i;

	/*
	 * The last word first: an ordinary page differs there almost always,
	 * so most pages are rejected after two loads.
	 */
	if (words[nr_words - 1] != first)
		return false;
	for (i = 1; i < nr_words - 1; i++) {
		if (words[i] != first)
			return false;
	}
	*word = first;
	return true;
}

void page_fill_word(void *page, uint64_t word)
{
	uint64_t *words = page;
	size_t i;

	for (i = 0; i < UZ_PAGE_SIZE / sizeof(uint64_t); i++)
		words[i] = word;
}
