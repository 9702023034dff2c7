// SPDX-License-Identifier: MIT
/*
 * Unit tests of daemon/compress: round trips for every algorithm on text,
 * random and same-filled pages, the -E2BIG contract for pages that do not
 * fit, -EBADMSG for damaged input, cross-algorithm decompression, the
 * same-filled test and the compressor spec parser.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <cmocka.h>

#include "util.h"
#include "compress/compress.h"
#include "text-page.h"

static uint8_t page[UZ_PAGE_SIZE], out[UZ_PAGE_SIZE], dst[2 * UZ_PAGE_SIZE];

static void roundtrip(struct compressor *c, const void *src)
{
	int n;

	n = compressor_compress(c, src, dst, sizeof(dst));
	assert_true(n > 0);
	memset(out, 0xa5, sizeof(out));
	assert_int_equal(compressor_decompress(c, compressor_algo(c), dst, (size_t)n, out), 0);
	assert_memory_equal(out, src, UZ_PAGE_SIZE);
}

static void test_roundtrip_all(void **state)
{
	static const struct {
		enum compressor_algo algo;
		int level;
	} cases[] = {
	    {COMPRESSOR_LZ4, 0},  {COMPRESSOR_ZSTD, 0}, {COMPRESSOR_ZSTD, 3},
	    {COMPRESSOR_ZSTD, 9}, {COMPRESSOR_RAW, 0},
	};
	uint64_t seed = 1;
	size_t i;
	int round;

	for (i = 0; i < UZ_ARRAY_SIZE(cases); i++) {
		struct compressor *c = NULL;

		assert_int_equal(compressor_new(&c, cases[i].algo, cases[i].level), 0);
		assert_int_equal(compressor_algo(c), cases[i].algo);
		/* Many pages through one object: contexts are reused, not rebuilt. */
		for (round = 0; round < 50; round++) {
			test_fill_text(page, sizeof(page), &seed);
			roundtrip(c, page);
			test_fill_random(page, sizeof(page), &seed);
			roundtrip(c, page);
			memset(page, 0, sizeof(page));
			roundtrip(c, page);
		}
		assert_null(compressor_free(c));
	}
}

/* Units: several pages as one input, decompressed to exactly that length or refused. */
static void test_buffers(void **state)
{
	static uint8_t unit[4 * UZ_PAGE_SIZE], back[4 * UZ_PAGE_SIZE], packed[5 * UZ_PAGE_SIZE];
	enum compressor_algo algos[] = {COMPRESSOR_LZ4, COMPRESSOR_ZSTD};
	uint64_t seed = 11;
	int n;

	for (size_t k = 0; k < 4; k++)
		test_fill_text(unit + k * UZ_PAGE_SIZE, UZ_PAGE_SIZE, &seed);
	for (size_t i = 0; i < UZ_ARRAY_SIZE(algos); i++) {
		struct compressor *c = NULL;

		assert_int_equal(compressor_new(&c, algos[i], 1), 0);
		n = compressor_compress_buf(c, unit, sizeof(unit), packed, sizeof(packed));
		assert_true(n > 0 && n < (int)sizeof(packed));
		memset(back, 0, sizeof(back));
		assert_int_equal(
		    compressor_decompress_buf(c, algos[i], packed, (size_t)n, back, sizeof(back)),
		    0);
		assert_memory_equal(back, unit, sizeof(unit));
		/* A prefix: at least the pages asked for, right (lz4 stops there, zstd does not). */
		for (size_t pages = 1; pages <= 4; pages++) {
			memset(back, 0, sizeof(back));
			assert_int_equal(compressor_decompress_prefix(c, algos[i], packed, (size_t)n,
								      back, sizeof(back),
								      pages * UZ_PAGE_SIZE),
					 0);
			assert_memory_equal(back, unit, pages * UZ_PAGE_SIZE);
		}
		assert_int_equal(compressor_decompress_prefix(c, algos[i], packed, (size_t)n / 2,
							      back, sizeof(back), sizeof(back)),
				 -EBADMSG);
		/* Not the length it was made from: refused, never a short result. */
		assert_int_equal(compressor_decompress_buf(c, algos[i], packed, (size_t)n, back,
							   3 * UZ_PAGE_SIZE),
				 -EBADMSG);
		assert_int_equal(compressor_decompress(c, algos[i], packed, (size_t)n, back),
				 -EBADMSG);
		/* Truncated input. */
		assert_int_equal(compressor_decompress_buf(c, algos[i], packed, (size_t)n / 2, back,
							   sizeof(back)),
				 -EBADMSG);
		/* Too small a destination: E2BIG, as for a page. */
		assert_int_equal(compressor_compress_buf(c, unit, sizeof(unit), packed, 16),
				 -E2BIG);
		compressor_free(c);
	}
	{
		struct compressor *raw = NULL;

		assert_int_equal(compressor_new(&raw, COMPRESSOR_RAW, 0), 0);
		assert_int_equal(
		    compressor_compress_buf(raw, unit, sizeof(unit), packed, sizeof(packed)),
		    -EINVAL);
		assert_int_equal(compressor_decompress_buf(raw, COMPRESSOR_RAW, unit, sizeof(unit),
							   back, sizeof(back)),
				 -EINVAL);
		compressor_free(raw);
	}
}

static void test_text_compresses(void **state)
{
	struct compressor *lz4 = NULL, *zstd = NULL;
	uint64_t seed = 7;
	int n;

	assert_int_equal(compressor_new(&lz4, COMPRESSOR_LZ4, 0), 0);
	assert_int_equal(compressor_new(&zstd, COMPRESSOR_ZSTD, 1), 0);
	test_fill_text(page, sizeof(page), &seed);
	n = compressor_compress(lz4, page, dst, UZ_PAGE_SIZE);
	assert_true(n > 0 && n < (int)UZ_PAGE_SIZE * 3 / 4);
	n = compressor_compress(zstd, page, dst, UZ_PAGE_SIZE);
	assert_true(n > 0 && n < (int)UZ_PAGE_SIZE * 3 / 4);
	compressor_free(lz4);
	compressor_free(zstd);
}

static void test_incompressible_e2big(void **state)
{
	enum compressor_algo algos[] = {COMPRESSOR_LZ4, COMPRESSOR_ZSTD, COMPRESSOR_RAW};
	uint64_t seed = 99;
	size_t i;

	test_fill_random(page, sizeof(page), &seed);
	for (i = 0; i < UZ_ARRAY_SIZE(algos); i++) {
		struct compressor *c = NULL;

		assert_int_equal(compressor_new(&c, algos[i], 0), 0);
		assert_int_equal(compressor_compress(c, page, dst, UZ_PAGE_SIZE * 3 / 4), -E2BIG);
		assert_int_equal(compressor_compress(c, page, dst, 1), -E2BIG);
		assert_int_equal(compressor_compress(c, page, dst, 0), -E2BIG);
		/* The object still works after a refusal. */
		roundtrip(c, page);
		compressor_free(c);
	}
}

static void test_decompress_errors(void **state)
{
	struct compressor *lz4 = NULL, *zstd = NULL;
	uint64_t seed = 3;
	int n;

	assert_int_equal(compressor_new(&lz4, COMPRESSOR_LZ4, 0), 0);
	assert_int_equal(compressor_new(&zstd, COMPRESSOR_ZSTD, 0), 0);
	test_fill_text(page, sizeof(page), &seed);

	n = compressor_compress(lz4, page, dst, sizeof(dst));
	assert_true(n > 10);
	assert_int_equal(compressor_decompress(lz4, COMPRESSOR_LZ4, dst, (size_t)n - 7, out),
			 -EBADMSG);
	assert_int_equal(compressor_decompress(lz4, COMPRESSOR_LZ4, dst, 0, out), -EBADMSG);

	n = compressor_compress(zstd, page, dst, sizeof(dst));
	assert_true(n > 10);
	assert_int_equal(compressor_decompress(zstd, COMPRESSOR_ZSTD, dst, (size_t)n - 5, out),
			 -EBADMSG);
	dst[0] ^= 0xff; /* break the frame magic */
	assert_int_equal(compressor_decompress(zstd, COMPRESSOR_ZSTD, dst, (size_t)n, out),
			 -EBADMSG);
	dst[0] ^= 0xff;
	/* After errors the context decodes good data again. */
	assert_int_equal(compressor_decompress(zstd, COMPRESSOR_ZSTD, dst, (size_t)n, out), 0);
	assert_memory_equal(out, page, UZ_PAGE_SIZE);

	assert_int_equal(compressor_decompress(lz4, COMPRESSOR_RAW, page, 100, out), -EBADMSG);
	compressor_free(lz4);
	compressor_free(zstd);
}

static void test_cross_algorithm(void **state)
{
	struct compressor *lz4 = NULL, *zstd = NULL;
	uint64_t seed = 11;
	int n;

	assert_int_equal(compressor_new(&lz4, COMPRESSOR_LZ4, 0), 0);
	assert_int_equal(compressor_new(&zstd, COMPRESSOR_ZSTD, 5), 0);
	assert_int_equal(compressor_level(zstd), 5);
	test_fill_text(page, sizeof(page), &seed);

	n = compressor_compress(zstd, page, dst, sizeof(dst));
	assert_true(n > 0);
	assert_int_equal(compressor_decompress(lz4, COMPRESSOR_ZSTD, dst, (size_t)n, out), 0);
	assert_memory_equal(out, page, UZ_PAGE_SIZE);

	n = compressor_compress(lz4, page, dst, sizeof(dst));
	assert_true(n > 0);
	assert_int_equal(compressor_decompress(zstd, COMPRESSOR_LZ4, dst, (size_t)n, out), 0);
	assert_memory_equal(out, page, UZ_PAGE_SIZE);
	compressor_free(lz4);
	compressor_free(zstd);
}

static void test_new_rejects(void **state)
{
	struct compressor *c = NULL;

	assert_int_equal(compressor_new(&c, COMPRESSOR_ZSTD, 20), -EINVAL);
	assert_int_equal(compressor_new(&c, COMPRESSOR_ZSTD, -1), -EINVAL);
	assert_int_equal(compressor_new(&c, (enum compressor_algo)7, 0), -EINVAL);
	assert_null(c);
	assert_null(compressor_free(NULL));
}

static void test_same_filled(void **state)
{
	uint64_t word = 1, fills[] = {0, ~0ULL, 0xdeadbeefcafef00dULL, 0x0101010101010101ULL};
	size_t i;

	for (i = 0; i < UZ_ARRAY_SIZE(fills); i++) {
		page_fill_word(page, fills[i]);
		assert_true(page_same_filled(page, &word));
		assert_true(word == fills[i]);
	}

	/* One differing byte anywhere, first, middle or last, breaks it. */
	size_t positions[] = {0, 7, 8, 2048, 4087, UZ_PAGE_SIZE - 8, UZ_PAGE_SIZE - 1};
	for (i = 0; i < UZ_ARRAY_SIZE(positions); i++) {
		page_fill_word(page, 0);
		page[positions[i]] = 1;
		word = 42;
		assert_false(page_same_filled(page, &word));
		assert_true(word == 42); /* untouched on failure */
	}
	/* A repeated 4-byte pattern that is not an 8-byte repetition. */
	for (i = 0; i < UZ_PAGE_SIZE; i += 4)
		memcpy(page + i, i % 8 ? "abcd" : "efgh", 4);
	assert_true(page_same_filled(page, &word));
	page[UZ_PAGE_SIZE - 1] = 'x';
	assert_false(page_same_filled(page, &word));
}

static void test_parse(void **state)
{
	enum compressor_algo algo = COMPRESSOR_RAW;
	int level = -1;

	assert_int_equal(compressor_parse("lz4", &algo, &level), 0);
	assert_int_equal(algo, COMPRESSOR_LZ4);
	assert_int_equal(compressor_parse("zstd", &algo, &level), 0);
	assert_int_equal(algo, COMPRESSOR_ZSTD);
	assert_int_equal(level, 1);
	assert_int_equal(compressor_parse("zstd:3", &algo, &level), 0);
	assert_int_equal(level, 3);
	assert_int_equal(compressor_parse("zstd:19", &algo, &level), 0);
	assert_int_equal(level, 19);

	const char *bad[] = {"",	"lz5",	 "zstd:",   "zstd:0", "zstd:20",
			     "zstd:3x", "zstd3", "zstd:-1", "LZ4",    "zstd: 3"};
	for (size_t i = 0; i < UZ_ARRAY_SIZE(bad); i++) {
		algo = COMPRESSOR_RAW;
		level = -7;
		assert_int_equal(compressor_parse(bad[i], &algo, &level), -EINVAL);
		assert_int_equal(level, -7);
	}
	assert_int_equal(compressor_parse(NULL, &algo, &level), -EINVAL);
	assert_string_equal(compressor_algo_name(COMPRESSOR_LZ4), "lz4");
	assert_string_equal(compressor_algo_name(COMPRESSOR_ZSTD), "zstd");
	assert_string_equal(compressor_algo_name(COMPRESSOR_RAW), "raw");
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_roundtrip_all),
	    cmocka_unit_test(test_text_compresses),
	    cmocka_unit_test(test_buffers),
	    cmocka_unit_test(test_incompressible_e2big),
	    cmocka_unit_test(test_decompress_errors),
	    cmocka_unit_test(test_cross_algorithm),
	    cmocka_unit_test(test_new_rejects),
	    cmocka_unit_test(test_same_filled),
	    cmocka_unit_test(test_parse),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
