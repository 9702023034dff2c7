// SPDX-License-Identifier: MIT
/*
 * Unit tests of daemon/index: set/get at the edges of the vpn space,
 * randomized operations against a flat reference array, walks (order,
 * ranges, rewriting and clearing entries, stopping and aborting), a sparse
 * terabyte region whose memory must stay small, a dense region's cost per
 * page, and the same-filled pattern table from several threads.
 */
#include <errno.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "util.h"
#include "index/index.h"
#include "text-page.h"

#define VPN_MAX ((1ULL << PAGE_INDEX_VPN_BITS) - 1)

static void test_edges(void **state)
{
	struct page_index *index = NULL;
	struct page_index_usage usage;
	page_entry_t e = pe_make(0, PAGE_STORED, true, 1, 1234, PE_PAYLOAD_MAX);

	assert_int_equal(page_index_new(&index), 0);
	assert_int_equal(page_index_get(index, 0), 0);
	assert_int_equal(page_index_set(index, 0, e), 0);
	assert_int_equal(page_index_set(index, VPN_MAX, e + 1), 0);
	assert_int_equal(page_index_set(index, VPN_MAX + 1, e), -ERANGE);
	assert_true(page_index_get(index, 0) == e);
	assert_true(page_index_get(index, VPN_MAX) == e + 1);
	assert_int_equal(page_index_get(index, VPN_MAX + 1), 0);
	assert_int_equal(page_index_get(index, 1), 0);
	assert_int_equal(pe_state(e), PAGE_STORED);
	assert_int_equal(pe_len(e), 1234);
	assert_true(pe_payload(e) == PE_PAYLOAD_MAX);

	page_index_get_usage(index, &usage);
	assert_int_equal(usage.entries, 2);
	assert_int_equal(usage.leaves, 2);
	/* Clearing everything frees every node and leaf. */
	assert_int_equal(page_index_set(index, 0, 0), 0);
	assert_int_equal(page_index_set(index, VPN_MAX, 0), 0);
	assert_int_equal(page_index_set(index, 12345, 0), 0); /* clearing nothing is fine */
	page_index_get_usage(index, &usage);
	assert_int_equal(usage.entries, 0);
	assert_int_equal(usage.leaves, 0);
	assert_true(usage.bytes < 128);
	assert_null(page_index_free(index));
	assert_null(page_index_free(NULL));
}

struct collect {
	uint64_t *vpns;
	page_entry_t *entries;
	size_t nr, cap;
};

static int collect_fn(uint64_t vpn, page_entry_t *entry, void *userdata)
{
	struct collect *collect = userdata;

	assert_true(*entry != 0);
	assert_true(collect->nr < collect->cap);
	collect->vpns[collect->nr] = vpn;
	collect->entries[collect->nr] = *entry;
	collect->nr++;
	return 0;
}

static void test_random_against_array(void **state)
{
	enum { SPAN = 20000 };
	page_entry_t *reference = calloc(SPAN, sizeof(*reference));
	struct collect collect = {calloc(SPAN, 8), calloc(SPAN, 8), 0, SPAN};
	struct page_index *index = NULL;
	struct page_index_usage usage;
	uint64_t seed = 4, base = 0x123456789ULL, first, last, nonzero = 0;
	size_t i, j;

	assert_int_equal(page_index_new(&index), 0);
	for (i = 0; i < 200000; i++) {
		uint64_t r = test_rand_next(&seed);
		uint64_t slot = r % SPAN;
		page_entry_t e = (r & 3) == 0 ? 0 : (r | 1);

		assert_int_equal(page_index_set(index, base + slot, e), 0);
		reference[slot] = e;
	}
	for (i = 0; i < SPAN; i++) {
		assert_true(page_index_get(index, base + i) == reference[i]);
		nonzero += reference[i] != 0;
	}
	page_index_get_usage(index, &usage);
	assert_int_equal(usage.entries, nonzero);

	/* Walks of random sub-ranges see exactly the non-zero entries, in order. */
	for (j = 0; j < 50; j++) {
		first = base + test_rand_next(&seed) % SPAN;
		last = first + test_rand_next(&seed) % (SPAN / 4);
		collect.nr = 0;
		assert_int_equal(page_index_walk(index, first, last, collect_fn, &collect), 0);
		size_t k = 0;
		for (i = first - base; i < SPAN && base + i <= last; i++) {
			if (!reference[i])
				continue;
			assert_true(k < collect.nr);
			assert_true(collect.vpns[k] == base + i);
			assert_true(collect.entries[k] == reference[i]);
			k++;
		}
		assert_int_equal(k, collect.nr);
	}
	page_index_free(index);
	free(reference);
	free(collect.vpns);
	free(collect.entries);
}

static int rewrite_fn(uint64_t vpn, page_entry_t *entry, void *userdata)
{
	/* Odd pages are dropped, even ones get the referenced bit. */
	if (vpn & 1)
		*entry = 0;
	else
		*entry |= PE_REFERENCED;
	return 0;
}

static int stop_at_fn(uint64_t vpn, page_entry_t *entry, void *userdata)
{
	uint64_t *seen = userdata;

	(*seen)++;
	if (vpn == 1000)
		return 7;
	if (vpn == 2000)
		return -EIO;
	return 0;
}

struct set_inside {
	struct page_index *index;
};

static int set_inside_fn(uint64_t vpn, page_entry_t *entry, void *userdata)
{
	struct set_inside *inside = userdata;

	uint64_t next_leaf = (vpn / 64 + 1) * 64;

	/* Clear the whole next leaf from inside the walk: the walk must skip it. */
	for (uint64_t v = next_leaf; v < next_leaf + 64; v++)
		assert_int_equal(page_index_set(inside->index, v, 0), 0);
	assert_false((vpn / 64) % 2);
	return 0;
}

static void test_walk_rewrite_stop_abort(void **state)
{
	struct page_index *index = NULL;
	struct page_index_usage usage;
	uint64_t vpn, seen = 0;

	assert_int_equal(page_index_new(&index), 0);
	for (vpn = 0; vpn < 4096; vpn++)
		assert_int_equal(
		    page_index_set(index, vpn, pe_make(0, PAGE_STORED, false, 1, 100, vpn)), 0);
	assert_int_equal(page_index_walk(index, 0, VPN_MAX, rewrite_fn, NULL), 0);
	for (vpn = 0; vpn < 4096; vpn++) {
		page_entry_t e = page_index_get(index, vpn);

		if (vpn & 1) {
			assert_int_equal(e, 0);
		} else {
			assert_true(pe_referenced(e));
			assert_true(pe_payload(e) == vpn);
		}
	}
	page_index_get_usage(index, &usage);
	assert_int_equal(usage.entries, 2048);

	/* > 0 stops and is returned; < 0 aborts and is returned. */
	assert_int_equal(page_index_walk(index, 0, VPN_MAX, stop_at_fn, &seen), 7);
	assert_int_equal(seen, 501);
	seen = 0;
	assert_int_equal(page_index_walk(index, 1001, VPN_MAX, stop_at_fn, &seen), -EIO);
	assert_int_equal(seen, 500);

	/* The callback clears entries ahead of the walk. */
	struct set_inside inside = {index};
	assert_int_equal(page_index_walk(index, 0, 4095, set_inside_fn, &inside), 0);
	for (vpn = 0; vpn < 4096; vpn++) {
		bool kept = (vpn / 64) % 2 == 0 && !(vpn & 1);

		assert_true((page_index_get(index, vpn) != 0) == kept);
	}
	for (vpn = 0; vpn < 4096; vpn++)
		assert_int_equal(page_index_set(index, vpn, 0), 0);
	page_index_get_usage(index, &usage);
	assert_int_equal(usage.leaves, 0);
	assert_int_equal(usage.entries, 0);
	page_index_free(index);
}

static void test_sparse_terabyte(void **state)
{
	enum { NR = 4000 };
	/* A 1 TiB region: 2^28 pages, starting at 64 TiB. */
	const uint64_t base = 1ULL << 34, span = 1ULL << 28;
	struct collect collect = {calloc(NR, 8), calloc(NR, 8), 0, NR};
	uint64_t *vpns = calloc(NR, sizeof(*vpns)), seed = 77;
	struct page_index *index = NULL;
	struct page_index_usage usage;
	size_t i, j;

	assert_int_equal(page_index_new(&index), 0);
	for (i = 0; i < NR; i++) {
	again:
		vpns[i] = base + test_rand_next(&seed) % span;
		for (j = 0; j < i; j++) {
			if (vpns[j] == vpns[i])
				goto again;
		}
		assert_int_equal(
		    page_index_set(index, vpns[i], pe_make(0, PAGE_ON_DISK, false, 2, 500, i)), 0);
	}
	for (i = 0; i < NR; i++) {
		assert_true(pe_payload(page_index_get(index, vpns[i])) == i);
	}
	page_index_get_usage(index, &usage);
	assert_int_equal(usage.entries, NR);
	assert_true(usage.leaves <= NR);
	/*
	 * A flat array would be 2 GiB.  The tree costs a leaf and at most
	 * two nodes per isolated page, plus the top levels: under 2 KiB each.
	 */
	assert_true(usage.bytes < NR * 2048ULL);

	assert_int_equal(page_index_walk(index, base, base + span - 1, collect_fn, &collect), 0);
	assert_int_equal(collect.nr, NR);
	for (i = 1; i < NR; i++)
		assert_true(collect.vpns[i - 1] < collect.vpns[i]);
	for (i = 0; i < NR; i++)
		assert_true(vpns[pe_payload(collect.entries[i])] == collect.vpns[i]);
	/* Nothing outside the region. */
	collect.nr = 0;
	assert_int_equal(page_index_walk(index, 0, base - 1, collect_fn, &collect), 0);
	assert_int_equal(page_index_walk(index, base + span, VPN_MAX, collect_fn, &collect), 0);
	assert_int_equal(collect.nr, 0);

	for (i = 0; i < NR; i++)
		assert_int_equal(page_index_set(index, vpns[i], 0), 0);
	page_index_get_usage(index, &usage);
	assert_int_equal(usage.leaves, 0);
	assert_true(usage.bytes < 128);
	page_index_free(index);
	free(vpns);
	free(collect.vpns);
	free(collect.entries);
}

static void test_dense_cost(void **state)
{
	enum { NR = 1 << 16 };
	struct page_index *index = NULL;
	struct page_index_usage usage;
	uint64_t vpn;

	assert_int_equal(page_index_new(&index), 0);
	for (vpn = 0; vpn < NR; vpn++)
		assert_int_equal(page_index_set(index, 0x7f0000000ULL + vpn, vpn + 1), 0);
	page_index_get_usage(index, &usage);
	assert_int_equal(usage.leaves, NR / 64);
	/* 8 bytes per entry plus about a third of a byte for bitmaps and nodes. */
	assert_true(usage.bytes < NR * 8 + NR / 2);
	page_index_free(index);
}

static void *intern_main(void *arg)
{
	uint64_t *indices = arg, i;

	for (i = 0; i < 200; i++)
		assert_int_equal(pattern_intern(0xabc000 + i, &indices[i]), 0);
	return NULL;
}

static void test_patterns(void **state)
{
	uint64_t index = 99, indices[4][200], i, word;
	pthread_t threads[4];
	int t, r = 0;

	assert_int_equal(pattern_intern(0, &index), 0);
	assert_int_equal(index, 0);
	assert_int_equal(pattern_word(0), 0);

	for (t = 0; t < 4; t++)
		pthread_create(&threads[t], NULL, intern_main, indices[t]);
	for (t = 0; t < 4; t++)
		pthread_join(threads[t], NULL);
	/* Every thread got the same index for a word, and distinct words differ. */
	for (i = 0; i < 200; i++) {
		for (t = 1; t < 4; t++)
			assert_true(indices[t][i] == indices[0][i]);
		assert_true(indices[0][i] != 0);
		assert_true(pattern_word(indices[0][i]) == 0xabc000 + i);
		if (i)
			assert_true(indices[0][i] != indices[0][i - 1]);
	}

	/* The table is bounded: fill it, then -ENOSPC; known words still resolve. */
	for (word = 1; r == 0 && word < 100000; word++)
		r = pattern_intern(word << 20, &index);
	assert_int_equal(r, -ENOSPC);
	assert_true(word > 500);
	assert_int_equal(pattern_intern(0xabc000 + 5, &index), 0);
	assert_true(index == indices[0][5]);
	assert_int_equal(pattern_intern(0, &index), 0);
	assert_int_equal(index, 0);
	assert_int_equal(pattern_word(1ULL << 40), 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_edges),
	    cmocka_unit_test(test_random_against_array),
	    cmocka_unit_test(test_walk_rewrite_stop_abort),
	    cmocka_unit_test(test_sparse_terabyte),
	    cmocka_unit_test(test_dense_cost),
	    cmocka_unit_test(test_patterns),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
