// SPDX-License-Identifier: MIT
/*
 * unit-ratio: what multi-page compression units would gain in ratio.
 *
 * Reads pages (a raw memory image: a file, or stdin) and compresses them
 * the way the pool does today, one 4 KiB page per object, and as units of
 * N adjacent pages (N = 2, 4, 16), with lz4 (default acceleration) and
 * zstd level 1.  Same-filled pages (one repeated 8-byte word, zero
 * included) are left out, as the pool stores them in no memory at all.
 * Prints, per unit size, the compressed bytes and the ratio (input bytes /
 * compressed bytes) — the pool's own overhead (chunks, metadata) is not in
 * it.  This measures the data, not the daemon: units are not implemented
 * (docs/PERFORMANCE.md).
 *
 * usage: unit-ratio FILE|-   (bench/profile/dump-anon.py writes such images)
 */
#include <errno.h>
#include <inttypes.h>
#include <lz4.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zstd.h>

#define PAGE	 4096
#define UNIT_MAX 16

static bool same_filled(const uint8_t *page)
{
	uint64_t first, w;

	memcpy(&first, page, sizeof(first));
	for (size_t i = sizeof(w); i < PAGE; i += sizeof(w)) {
		memcpy(&w, page + i, sizeof(w));
		if (w != first)
			return false;
	}
	return true;
}

int main(int argc, char **argv)
{
	static const unsigned units[] = {1, 2, 4, 16};
	uint64_t lz4_bytes[4] = {0}, zstd_bytes[4] = {0}, pages = 0, same = 0;
	size_t cap = 0, len = 0;
	uint8_t *data = NULL, *out;
	FILE *in;
	ZSTD_CCtx *zctx = ZSTD_createCCtx();

	if (argc != 2) {
		fprintf(stderr, "usage: unit-ratio FILE|-\n");
		return 2;
	}
	in = strcmp(argv[1], "-") ? fopen(argv[1], "rb") : stdin;
	if (!in) {
		fprintf(stderr, "unit-ratio: cannot open \"%s\": %s\n", argv[1], strerror(errno));
		return 1;
	}
	/* the non-same-filled pages, packed, in their order (adjacency kept otherwise) */
	for (;;) {
		uint8_t page[PAGE];

		if (fread(page, 1, PAGE, in) != PAGE)
			break;
		pages++;
		if (same_filled(page)) {
			same++;
			continue;
		}
		if (len + PAGE > cap) {
			cap = cap ? cap * 2 : 1 << 20;
			data = realloc(data, cap);
			if (!data)
				return 1;
		}
		memcpy(data + len, page, PAGE);
		len += PAGE;
	}
	out = malloc(LZ4_compressBound(UNIT_MAX * PAGE) + ZSTD_compressBound(UNIT_MAX * PAGE));
	if (!out || !zctx || !len) {
		fprintf(stderr, "unit-ratio: no data (or out of memory)\n");
		return 1;
	}
	for (unsigned u = 0; u < 4; u++) {
		size_t unit = (size_t)units[u] * PAGE;

		for (size_t off = 0; off + unit <= len; off += unit) {
			int n = LZ4_compress_default((const char *)data + off, (char *)out,
						     (int)unit, LZ4_compressBound((int)unit));
			size_t z = ZSTD_compressCCtx(zctx, out, ZSTD_compressBound(unit),
						     data + off, unit, 1);

			/* a unit that does not shrink would be stored raw */
			lz4_bytes[u] += n > 0 && (size_t)n < unit ? (size_t)n : unit;
			zstd_bytes[u] += !ZSTD_isError(z) && z < unit ? z : unit;
		}
	}
	printf("%" PRIu64 " pages read, %" PRIu64 " same-filled left out, %zu compressed\n", pages,
	       same, len / PAGE);
	printf("%-12s %14s %8s %14s %8s\n", "unit", "lz4 bytes", "ratio", "zstd-1 bytes", "ratio");
	for (unsigned u = 0; u < 4; u++) {
		size_t used = len / ((size_t)units[u] * PAGE) * units[u] * PAGE;

		printf("%2u page%s     %14" PRIu64 " %8.3f %14" PRIu64 " %8.3f\n", units[u],
		       units[u] == 1 ? " " : "s", lz4_bytes[u], (double)used / (double)lz4_bytes[u],
		       zstd_bytes[u], (double)used / (double)zstd_bytes[u]);
	}
	ZSTD_freeCCtx(zctx);
	free(out);
	free(data);
	return 0;
}
