// SPDX-License-Identifier: MIT
/*
 * Unit tests of daemon/lru: FIFO order and growth, the second-chance walk
 * (a referenced entry is rotated once, then written back), lazy deletion
 * of stale references, busy and stop statuses, the shrinker count with
 * disk swapins and the compression ratio, pushes racing a walk, the owner
 * slots behind the 6-byte references (keys kept apart, slots reused only
 * once empty, -ENOSPC when all are taken) and memory that follows the
 * number of references.
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
#include "lru/lru.h"

static void test_fifo_and_growth(void **state)
{
	struct lru *lru = NULL;
	uint64_t ref, i;

	assert_int_equal(lru_new(&lru), 0);
	assert_false(lru_pop(lru, &ref));
	/* Interleave so the ring wraps before it grows. */
	for (i = 0; i < 50; i++)
		assert_int_equal(lru_push(lru, i), 0);
	for (i = 0; i < 40; i++) {
		assert_true(lru_pop(lru, &ref));
		assert_true(ref == i);
	}
	for (i = 50; i < 5000; i++)
		assert_int_equal(lru_push(lru, i), 0);
	assert_int_equal(lru_length(lru), 4960);
	for (i = 40; i < 5000; i++) {
		assert_true(lru_pop(lru, &ref));
		assert_true(ref == i);
	}
	assert_false(lru_pop(lru, &ref));
	assert_int_equal(lru_length(lru), 0);
	assert_null(lru_free(lru));
	assert_null(lru_free(NULL));
}

/* A little page table: what the shrinker callback looks at. */
enum { NR_PAGES = 100 };
struct pages {
	bool stored[NR_PAGES];
	bool referenced[NR_PAGES];
	bool queued[NR_PAGES];
	unsigned written_back[NR_PAGES];
	unsigned stale_dropped;
	unsigned busy_left; /* report this many as busy first */
	int stop_at;	    /* report STOP on this page, -1 never */
	unsigned calls;
};

static enum lru_walk_status shrink_cb(uint64_t ref, void *userdata)
{
	struct pages *pages = userdata;

	pages->calls++;
	if ((int)ref == pages->stop_at)
		return LRU_STOP;
	if (pages->busy_left) {
		pages->busy_left--;
		return LRU_RETRY;
	}
	if (!pages->stored[ref]) {
		/* Faulted back meanwhile: lazy deletion of the reference. */
		pages->queued[ref] = false;
		pages->stale_dropped++;
		return LRU_REMOVED;
	}
	if (pages->referenced[ref]) {
		pages->referenced[ref] = false;
		return LRU_ROTATE;
	}
	pages->written_back[ref]++;
	pages->stored[ref] = false;
	pages->queued[ref] = false;
	return LRU_REMOVED;
}

static void store_page(struct lru *lru, struct pages *pages, uint64_t page)
{
	pages->stored[page] = true;
	pages->referenced[page] = true; /* a new entry starts referenced */
	if (!pages->queued[page]) {
		pages->queued[page] = true;
		assert_int_equal(lru_push(lru, page), 0);
	}
}

static void test_second_chance(void **state)
{
	struct pages pages = {.stop_at = -1};
	struct lru_walk_result result;
	struct lru *lru = NULL;
	uint64_t i, ref;

	assert_int_equal(lru_new(&lru), 0);
	for (i = 0; i < NR_PAGES; i++)
		store_page(lru, &pages, i);

	/* First pass: everything referenced, so rotated and kept. */
	assert_int_equal(lru_walk(lru, NR_PAGES, shrink_cb, &pages, &result), 0);
	assert_int_equal(result.scanned, NR_PAGES);
	assert_int_equal(result.rotated, NR_PAGES);
	assert_int_equal(result.removed, 0);
	for (i = 0; i < NR_PAGES; i++) {
		assert_int_equal(pages.written_back[i], 0);
		assert_false(pages.referenced[i]);
	}
	assert_int_equal(lru_length(lru), NR_PAGES);

	/* Pages 0..9 are touched again (faulted and re-stored): a new chance. */
	for (i = 0; i < 10; i++)
		store_page(lru, &pages, i);
	assert_int_equal(lru_length(lru), NR_PAGES); /* queued: not pushed twice */

	/* Second pass: the untouched ones go, the touched ones rotate once more. */
	assert_int_equal(lru_walk(lru, NR_PAGES, shrink_cb, &pages, &result), 0);
	assert_int_equal(result.scanned, NR_PAGES);
	assert_int_equal(result.rotated, 10);
	assert_int_equal(result.removed, NR_PAGES - 10);
	for (i = 0; i < NR_PAGES; i++)
		assert_int_equal(pages.written_back[i], i < 10 ? 0 : 1);

	/* Rotated entries went to the tail in order. */
	assert_true(lru_pop(lru, &ref));
	assert_true(ref == 0);
	assert_int_equal(lru_push(lru, ref), 0);
	assert_int_equal(lru_walk(lru, 100, shrink_cb, &pages, &result), 0);
	assert_int_equal(result.removed, 10);
	assert_int_equal(lru_length(lru), 0);
	for (i = 0; i < NR_PAGES; i++)
		assert_int_equal(pages.written_back[i], 1);
	lru_free(lru);
}

static void test_lazy_deletion_busy_stop(void **state)
{
	struct pages pages = {.stop_at = -1};
	struct lru_walk_result result;
	struct lru *lru = NULL;
	uint64_t i, ref;

	assert_int_equal(lru_new(&lru), 0);
	for (i = 0; i < 20; i++)
		store_page(lru, &pages, i);
	/* Half the pages fault back: their references stay in the ring. */
	for (i = 0; i < 20; i += 2)
		pages.stored[i] = false;
	assert_int_equal(lru_length(lru), 20);
	assert_int_equal(lru_walk(lru, 20, shrink_cb, &pages, &result), 0);
	assert_int_equal(pages.stale_dropped, 10);
	assert_int_equal(result.removed, 10);
	assert_int_equal(result.rotated, 10);
	assert_int_equal(lru_length(lru), 10);
	for (i = 0; i < 20; i++)
		assert_int_equal(pages.written_back[i], 0);

	/* Busy references are not counted and do not keep the walk forever. */
	pages.busy_left = 1000;
	pages.calls = 0;
	assert_int_equal(lru_walk(lru, 5, shrink_cb, &pages, &result), 0);
	assert_int_equal(result.scanned, 0);
	assert_true(pages.calls <= 5 + 10);
	assert_int_equal(lru_length(lru), 10);
	pages.busy_left = 3;
	assert_int_equal(lru_walk(lru, 5, shrink_cb, &pages, &result), 0);
	assert_int_equal(result.scanned, 5);
	assert_int_equal(result.removed, 5);

	/* STOP puts the reference back at the head. */
	pages.stop_at = 15;
	while (lru_pop(lru, &ref) && ref != 15)
		assert_int_equal(lru_push(lru, ref), 0);
	assert_int_equal(lru_push(lru, 15), 0);
	for (i = 1; i < lru_length(lru); i++) { /* bring 15 to the head */
		assert_true(lru_pop(lru, &ref));
		assert_int_equal(lru_push(lru, ref), 0);
	}
	assert_int_equal(lru_walk(lru, 5, shrink_cb, &pages, &result), 0);
	assert_int_equal(result.scanned, 0);
	assert_true(lru_pop(lru, &ref));
	assert_true(ref == 15);
	lru_free(lru);
}

static void test_shrinker_count(void **state)
{
	struct lru *lru = NULL;
	uint64_t i;

	assert_int_equal(lru_new(&lru), 0);
	assert_int_equal(lru_shrinker_count(lru, 0, 0), 0);
	assert_int_equal(lru_shrinker_count(lru, 100, 50), 0); /* empty LRU */
	for (i = 0; i < 100; i++)
		assert_int_equal(lru_push(lru, i), 0);

	/* 100 pages stored in 50 pool pages: ratio 2, half may be freed. */
	assert_int_equal(lru_shrinker_count(lru, 100, 50), 50);
	/* Stale references do not count beyond what is stored. */
	assert_int_equal(lru_shrinker_count(lru, 40, 20), 20);

	/* 30 disk swapins are consumed by the next count, and only once. */
	for (i = 0; i < 30; i++)
		lru_note_disk_swapin(lru);
	assert_int_equal(lru_disk_swapins_pending(lru), 30);
	assert_int_equal(lru_shrinker_count(lru, 100, 50), 35);
	assert_int_equal(lru_disk_swapins_pending(lru), 0);
	assert_int_equal(lru_shrinker_count(lru, 100, 50), 50);

	/* More swapins than freeable: count 0, the rest carried to the next call. */
	for (i = 0; i < 130; i++)
		lru_note_disk_swapin(lru);
	assert_int_equal(lru_shrinker_count(lru, 100, 50), 0);
	assert_int_equal(lru_disk_swapins_pending(lru), 30);
	assert_int_equal(lru_shrinker_count(lru, 100, 100), 70);
	assert_int_equal(lru_disk_swapins_pending(lru), 0);

	/* Incompressible pages (one pool page each): nothing scaled away. */
	assert_int_equal(lru_shrinker_count(lru, 100, 100), 100);
	/* Huge numbers do not overflow. */
	assert_int_equal(lru_shrinker_count(lru, UINT64_MAX / 2, UINT64_MAX / 4), 49);
	lru_free(lru);
}

struct pusher {
	struct lru *lru;
	uint64_t base;
};

static void *pusher_main(void *arg)
{
	struct pusher *pusher = arg;
	uint64_t i;

	for (i = 0; i < 20000; i++)
		assert_int_equal(lru_push(pusher->lru, pusher->base + i), 0);
	return NULL;
}

static enum lru_walk_status count_cb(uint64_t ref, void *userdata)
{
	uint64_t *seen = userdata;

	(*seen)++;
	return ref % 3 == 0 ? LRU_ROTATE : LRU_REMOVED;
}

static void test_concurrent_push_walk(void **state)
{
	struct lru_walk_result result, total = {0};
	struct pusher pushers[2];
	pthread_t threads[2];
	struct lru *lru = NULL;
	uint64_t seen = 0;
	int i;

	assert_int_equal(lru_new(&lru), 0);
	for (i = 0; i < 2; i++) {
		pushers[i] = (struct pusher){lru, (uint64_t)i * 1000000};
		pthread_create(&threads[i], NULL, pusher_main, &pushers[i]);
	}
	for (i = 0; i < 200; i++) {
		assert_int_equal(lru_walk(lru, 100, count_cb, &seen, &result), 0);
		total.removed += result.removed;
		total.rotated += result.rotated;
	}
	for (i = 0; i < 2; i++)
		pthread_join(threads[i], NULL);
	/* Nothing lost, nothing duplicated: what was not removed is still there. */
	assert_int_equal(lru_length(lru) + total.removed, 40000);
	lru_free(lru);
}

#define KEY_SHIFT 36

/* References of many owners come back with their own keys, in order, across blocks. */
static void test_owner_keys(void **state)
{
	struct lru *lru = NULL;
	uint64_t ref, i;

	assert_int_equal(lru_new(&lru), 0);
	for (i = 0; i < 3000; i++) {
		uint64_t key =
		    (i * 7919) % 300 + ((1ULL << 28) - 400); /* near the top of 28 bits */
		uint64_t vpn = ((1ULL << 36) - 1) - i;

		assert_int_equal(lru_push(lru, key << KEY_SHIFT | vpn), 0);
	}
	for (i = 0; i < 3000; i++) {
		uint64_t key = (i * 7919) % 300 + ((1ULL << 28) - 400);

		assert_true(lru_pop(lru, &ref));
		assert_true(ref == (key << KEY_SHIFT | (((1ULL << 36) - 1) - i)));
	}
	assert_false(lru_pop(lru, &ref));
	lru_free(lru);
}

static enum lru_walk_status drop_cb(uint64_t ref, void *userdata)
{
	(void)ref;
	(void)userdata;
	return LRU_REMOVED;
}

static enum lru_walk_status rotate_cb(uint64_t ref, void *userdata)
{
	uint64_t *last = userdata;

	*last = ref;
	return LRU_ROTATE;
}

/*
 * 4096 keys fill every slot: one more key is refused until the walk has
 * dropped all of some key's references, and a reused slot never gives a
 * reference the wrong key.
 */
static void test_owner_slots_full(void **state)
{
	struct lru_walk_result result;
	struct lru *lru = NULL;
	uint64_t ref, key, last = 0;

	assert_int_equal(lru_new(&lru), 0);
	for (key = 1; key <= 4096; key++)
		assert_int_equal(lru_push(lru, key << KEY_SHIFT | key), 0);
	assert_int_equal(lru_push(lru, 5000ULL << KEY_SHIFT | 1), -ENOSPC);
	/* A key that has a slot still gets in. */
	assert_int_equal(lru_push(lru, 17ULL << KEY_SHIFT | 99), 0);
	/* Rotating keeps the slot: still full. */
	assert_int_equal(lru_walk(lru, 1, rotate_cb, &last, &result), 0);
	assert_true(last == (1ULL << KEY_SHIFT | 1));
	assert_int_equal(lru_push(lru, 5000ULL << KEY_SHIFT | 1), -ENOSPC);
	/* Dropping key 2's only reference frees its slot for key 5000. */
	assert_int_equal(lru_walk(lru, 1, drop_cb, NULL, &result), 0);
	assert_int_equal(result.removed, 1);
	assert_int_equal(lru_push(lru, 5000ULL << KEY_SHIFT | 1), 0);
	assert_int_equal(lru_push(lru, 5001ULL << KEY_SHIFT | 1), -ENOSPC);
	/* Everything comes back with its own key: 3..4096, 17/99, 1/1, 5000/1. */
	for (key = 3; key <= 4096; key++) {
		assert_true(lru_pop(lru, &ref));
		assert_true(ref == (key << KEY_SHIFT | key));
	}
	assert_true(lru_pop(lru, &ref));
	assert_true(ref == (17ULL << KEY_SHIFT | 99));
	assert_true(lru_pop(lru, &ref));
	assert_true(ref == (1ULL << KEY_SHIFT | 1));
	assert_true(lru_pop(lru, &ref));
	assert_true(ref == (5000ULL << KEY_SHIFT | 1));
	assert_false(lru_pop(lru, &ref));
	/* All slots free again. */
	for (key = 10000; key < 10000 + 4096; key++)
		assert_int_equal(lru_push(lru, key << KEY_SHIFT | 7), 0);
	lru_free(lru);
}

/*
 * Owners that left (lru_forget_owner) give their slots back as soon as a
 * push needs one: their references leave the FIFO, the others stay in
 * order.
 */
static void test_forgotten_owners(void **state)
{
	struct lru *lru = NULL;
	uint64_t ref, key, i;

	assert_int_equal(lru_new(&lru), 0);
	/* 4096 keys, two references each, interleaved: key k at positions k and 4096 + k. */
	for (i = 0; i < 2; i++)
		for (key = 1; key <= 4096; key++)
			assert_int_equal(lru_push(lru, key << KEY_SHIFT | (key * 2 + i)), 0);
	assert_int_equal(lru_push(lru, 9000ULL << KEY_SHIFT | 1), -ENOSPC);
	/* Forgetting a key nobody pushed changes nothing. */
	lru_forget_owner(lru, 8000);
	assert_int_equal(lru_push(lru, 9000ULL << KEY_SHIFT | 1), -ENOSPC);
	/* Every odd key leaves. */
	for (key = 1; key <= 4096; key += 2)
		lru_forget_owner(lru, key);
	assert_int_equal(lru_push(lru, 9000ULL << KEY_SHIFT | 1), 0);
	assert_int_equal(lru_length(lru), 4096 + 1);
	for (i = 0; i < 2; i++)
		for (key = 2; key <= 4096; key += 2) {
			assert_true(lru_pop(lru, &ref));
			assert_true(ref == (key << KEY_SHIFT | (key * 2 + i)));
		}
	assert_true(lru_pop(lru, &ref));
	assert_true(ref == (9000ULL << KEY_SHIFT | 1));
	assert_false(lru_pop(lru, &ref));
	/* A forgotten key that pushes again gets a slot of its own, with its key. */
	assert_int_equal(lru_push(lru, 1ULL << KEY_SHIFT | 5), 0);
	assert_true(lru_pop(lru, &ref));
	assert_true(ref == (1ULL << KEY_SHIFT | 5));
	lru_free(lru);
}

/* At most a few bytes over 6 per reference, and the memory goes when the references do. */
static void test_memory_follows_length(void **state)
{
	struct lru_walk_result result;
	struct lru *lru = NULL;
	uint64_t empty, full, i, last = 0;

	assert_int_equal(lru_new(&lru), 0);
	empty = lru_memory_bytes(lru);
	for (i = 0; i < 200000; i++)
		assert_int_equal(lru_push(lru, 3ULL << KEY_SHIFT | i), 0);
	full = lru_memory_bytes(lru);
	assert_true(full - empty <= 200000 * 6 + 200000 * 6 / 100 + 3 * 4096);
	/* A full rotation keeps the size (blocks go round), order intact. */
	assert_int_equal(lru_walk(lru, 200000, rotate_cb, &last, &result), 0);
	assert_int_equal(result.rotated, 200000);
	assert_true(last == (3ULL << KEY_SHIFT | 199999));
	assert_true(lru_memory_bytes(lru) <= full + 2 * 4096);
	assert_int_equal(lru_walk(lru, 150000, drop_cb, NULL, &result), 0);
	assert_int_equal(result.removed, 150000);
	assert_int_equal(lru_length(lru), 50000);
	assert_true(lru_memory_bytes(lru) <= empty + 50000 * 6 + 50000 * 6 / 100 + 4 * 4096);
	for (i = 150000; i < 200000; i++) {
		uint64_t ref;

		assert_true(lru_pop(lru, &ref));
		assert_true(ref == (3ULL << KEY_SHIFT | i));
	}
	assert_true(lru_memory_bytes(lru) <= empty + 3 * 4096);
	lru_free(lru);
}

/* STOP puts the reference back at the head, also when the head is at a block's start. */
static enum lru_walk_status stop_at_cb(uint64_t ref, void *userdata)
{
	uint64_t *stop = userdata;

	return ref == *stop ? LRU_STOP : LRU_REMOVED;
}

static void test_stop_at_block_edges(void **state)
{
	struct lru_walk_result result;
	struct lru *lru = NULL;
	uint64_t i, ref, stop;

	assert_int_equal(lru_new(&lru), 0);
	for (i = 0; i < 5000; i++)
		assert_int_equal(lru_push(lru, i), 0);
	/*
	 * 682 references per block: stop on the last of the first and second
	 * blocks, whose pop has just given the block back.
	 */
	for (stop = 681; stop <= 1363; stop += 682) {
		assert_int_equal(lru_walk(lru, 5000, stop_at_cb, &stop, &result), 0);
		assert_true(lru_pop(lru, &ref));
		assert_true(ref == stop);
	}
	/* Stop on the very first reference. */
	stop = 1364;
	assert_int_equal(lru_walk(lru, 5000, stop_at_cb, &stop, &result), 0);
	assert_int_equal(result.scanned, 0);
	assert_int_equal(lru_length(lru), 5000 - 1364);
	for (i = 1364; i < 5000; i++) {
		assert_true(lru_pop(lru, &ref));
		assert_true(ref == i);
	}
	lru_free(lru);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_fifo_and_growth),
	    cmocka_unit_test(test_second_chance),
	    cmocka_unit_test(test_lazy_deletion_busy_stop),
	    cmocka_unit_test(test_shrinker_count),
	    cmocka_unit_test(test_concurrent_push_walk),
	    cmocka_unit_test(test_owner_keys),
	    cmocka_unit_test(test_owner_slots_full),
	    cmocka_unit_test(test_memory_follows_length),
	    cmocka_unit_test(test_stop_at_block_edges),
	    cmocka_unit_test(test_forgotten_owners),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
