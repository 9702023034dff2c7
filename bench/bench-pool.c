// SPDX-License-Identifier: MIT
/*
 * bench-pool: throughput and memory figures of the compression core.
 *
 * For lz4 and zstd, on text-like and on random pages, with 1 and 2
 * threads: pages per second stored (same-filled check, compress, pool
 * store) and loaded (pool load, decompress, release; every page is
 * compared with its original), and the compression ratio.  Pages that do
 * not compress to a page or less are stored raw, as the daemon's "store
 * raw" policy would.
 *
 * Then the memory figures the brief sets targets for:
 *  - pool overhead, pool_total_size / stored_bytes, after a mixed
 *    store/free workload on lz4-compressed text pages (before and after one
 *    compaction pass);
 *  - metadata per stored page: the page index's bytes plus the memory of
 *    an LRU holding one reference per stored page (lru_memory_bytes(),
 *    blocks and tables included), divided by the stored pages (and the pool's own
 *    bookkeeping, reported apart: its persistent metadata in the arena,
 *    frame headers and two bytes per slot, which is part of the pool
 *    overhead above, and its heap bookkeeping).
 *
 * A benchmark, never a test: nothing here asserts on time.
 * Usage: bench-pool [pages]   (default 16384 pages, 64 MiB of data)
 */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "util.h"
#include "compress/compress.h"
#include "index/index.h"
#include "lru/lru.h"
#include "pool/pool.h"
#include "store/store.h"
#include "text-page.h"

#define LRU_KEY 1ULL /* the client key of the LRU references */

struct page_slot {
	pool_handle_t handle;
	int len; /* 0: same-filled (word in handle) */
	enum compressor_algo algo;
};

struct run {
	struct pool *pool;
	uint8_t (*pages)[UZ_PAGE_SIZE];
	struct page_slot *slots;
	size_t nr_pages;
	enum compressor_algo algo;
	int level;
	unsigned nr_threads;
	pthread_barrier_t barrier;
	int failed;
};

struct worker {
	struct run *run;
	unsigned id;
};

static double now_seconds(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int page_store(struct compressor *c, struct pool *pool, const void *page,
		      struct page_slot *slot)
{
	uint8_t dst[UZ_PAGE_SIZE];
	uint64_t word;
	int n;

	if (page_same_filled(page, &word)) {
		slot->len = 0;
		slot->handle = word;
		return 0;
	}
	n = compressor_compress(c, page, dst, sizeof(dst));
	if (n == -E2BIG) {
		slot->algo = COMPRESSOR_RAW;
		slot->len = (int)UZ_PAGE_SIZE;
		return pool_store(pool, page, UZ_PAGE_SIZE, &slot->handle);
	}
	if (n < 0)
		return n;
	slot->algo = compressor_algo(c);
	slot->len = n;
	return pool_store(pool, dst, (size_t)n, &slot->handle);
}

static int page_load(struct compressor *c, struct pool *pool, struct page_slot *slot, void *page)
{
	uint8_t src[UZ_PAGE_SIZE];
	int r;

	if (slot->len == 0) {
		page_fill_word(page, slot->handle);
		return 0;
	}
	r = pool_load(pool, slot->handle, src, (size_t)slot->len);
	if (r < 0)
		return r;
	r = compressor_decompress(c, slot->algo, src, (size_t)slot->len, page);
	if (r < 0)
		return r;
	pool_release(pool, slot->handle);
	return 0;
}

static void *worker_main(void *arg)
{
	struct worker *worker = arg;
	struct run *run = worker->run;
	struct compressor *c = NULL;
	uint8_t page[UZ_PAGE_SIZE];
	size_t i;

	if (compressor_new(&c, run->algo, run->level) < 0) {
		__atomic_store_n(&run->failed, 1, __ATOMIC_RELAXED);
		return NULL;
	}
	pthread_barrier_wait(&run->barrier);
	for (i = worker->id; i < run->nr_pages; i += run->nr_threads) {
		if (page_store(c, run->pool, run->pages[i], &run->slots[i]) < 0)
			__atomic_store_n(&run->failed, 1, __ATOMIC_RELAXED);
	}
	pthread_barrier_wait(&run->barrier);
	pthread_barrier_wait(&run->barrier);
	for (i = worker->id; i < run->nr_pages; i += run->nr_threads) {
		if (page_load(c, run->pool, &run->slots[i], page) < 0 ||
		    memcmp(page, run->pages[i], UZ_PAGE_SIZE) != 0)
			__atomic_store_n(&run->failed, 1, __ATOMIC_RELAXED);
	}
	pthread_barrier_wait(&run->barrier);
	compressor_free(c);
	return NULL;
}

static int bench_throughput(uint8_t (*pages)[UZ_PAGE_SIZE], size_t nr_pages, const char *data,
			    enum compressor_algo algo, int level, unsigned nr_threads)
{
	struct worker workers[2];
	pthread_t threads[2];
	struct pool_usage usage;
	struct run run = {
	    .pages = pages,
	    .nr_pages = nr_pages,
	    .algo = algo,
	    .level = level,
	    .nr_threads = nr_threads,
	};
	double t0, t1, t2, t3;
	unsigned i;

	run.slots = calloc(nr_pages, sizeof(*run.slots));
	if (!run.slots || pool_new(&run.pool, NULL) < 0)
		return -ENOMEM;
	pthread_barrier_init(&run.barrier, NULL, nr_threads + 1);
	for (i = 0; i < nr_threads; i++) {
		workers[i] = (struct worker){&run, i};
		pthread_create(&threads[i], NULL, worker_main, &workers[i]);
	}
	pthread_barrier_wait(&run.barrier);
	t0 = now_seconds();
	pthread_barrier_wait(&run.barrier);
	t1 = now_seconds();
	pool_get_usage(run.pool, &usage);
	pthread_barrier_wait(&run.barrier);
	t2 = now_seconds();
	pthread_barrier_wait(&run.barrier);
	t3 = now_seconds();
	for (i = 0; i < nr_threads; i++)
		pthread_join(threads[i], NULL);

	printf("%-5s %-7s %-6s %u   %10.0f %10.0f   %6.2f   %5.3f%s\n", compressor_algo_name(algo),
	       level ? (level == 1 ? "level1" : "levelN") : "-", data, nr_threads,
	       (double)nr_pages / (t1 - t0), (double)nr_pages / (t3 - t2),
	       usage.stored_bytes ? (double)nr_pages * UZ_PAGE_SIZE / (double)usage.stored_bytes
				  : 0.0,
	       usage.stored_bytes ? (double)usage.total_size / (double)usage.stored_bytes : 0.0,
	       run.failed ? "  VERIFY FAILED" : "");
	pthread_barrier_destroy(&run.barrier);
	pool_free(run.pool);
	free(run.slots);
	return run.failed ? -EIO : 0;
}

/*
 * The mixed workload: fill the pool with lz4-compressed text pages, then
 * rounds of freeing a random third and storing fresh pages in their place,
 * as faults and evictions would.  Then one compaction pass.
 */
static int bench_mixed(size_t nr_pages)
{
	struct page_slot *slots = calloc(nr_pages, sizeof(*slots));
	uint8_t page[UZ_PAGE_SIZE];
	struct compressor *c = NULL;
	struct page_index *index = NULL;
	struct lru *lru = NULL;
	double lru_bytes;
	struct store *store = NULL, *sparse_store = NULL;
	struct page_index_usage index_usage;
	struct pool_usage usage;
	struct pool *pool = NULL;
	uint64_t seed = 42, stored = 0, vpn_base = 0x7f1234500ULL;
	size_t i;
	int round, marked, migrated = 0;

	if (!slots || pool_new(&pool, NULL) < 0 || compressor_new(&c, COMPRESSOR_LZ4, 0) < 0 ||
	    store_new(&store) < 0 || page_index_new(&index, store) < 0)
		return -ENOMEM;
	for (round = 0; round < 6; round++) {
		for (i = 0; i < nr_pages; i++) {
			if (slots[i].handle)
				continue;
			test_fill_text(page, sizeof(page), &seed);
			if (page_store(c, pool, page, &slots[i]) < 0)
				return -ENOMEM;
		}
		if (round == 5)
			break;
		for (i = 0; i < nr_pages; i++) {
			if (test_rand_next(&seed) % 3 == 0) {
				pool_release(pool, slots[i].handle);
				slots[i].handle = 0;
			}
		}
	}
	/* Free a random third once more: the state a shrinking pool is left in. */
	for (i = 0; i < nr_pages; i++) {
		if (test_rand_next(&seed) % 3 == 0) {
			pool_release(pool, slots[i].handle);
			slots[i].handle = 0;
		}
	}
	pool_get_usage(pool, &usage);
	printf("pool overhead after mixed store/free, before compaction: %.3f "
	       "(total %llu B, stored %llu B, %llu objects, %llu chunks)\n",
	       (double)usage.total_size / (double)usage.stored_bytes,
	       (unsigned long long)usage.total_size, (unsigned long long)usage.stored_bytes,
	       (unsigned long long)usage.stored_objects, (unsigned long long)usage.chunks);

	marked = pool_compact_begin(pool, 90);
	for (i = 0; i < nr_pages; i++) {
		if (slots[i].handle && pool_handle_evacuating(pool, slots[i].handle)) {
			pool_handle_t copy;

			if (pool_migrate_copy(pool, slots[i].handle, (size_t)slots[i].len, &copy) ==
			    0) {
				pool_release(pool, slots[i].handle);
				slots[i].handle = copy;
				migrated++;
			}
		}
	}
	pool_get_usage(pool, &usage);
	printf("pool overhead after one compaction pass (%d chunks marked, %d objects moved): "
	       "%.3f (total %llu B, %llu chunks)\n",
	       marked, migrated, (double)usage.total_size / (double)usage.stored_bytes,
	       (unsigned long long)usage.total_size, (unsigned long long)usage.chunks);

	/* Refill: the steady state of a pool whose stores follow its frees. */
	for (i = 0; i < nr_pages; i++) {
		if (slots[i].handle)
			continue;
		test_fill_text(page, sizeof(page), &seed);
		if (page_store(c, pool, page, &slots[i]) < 0)
			return -ENOMEM;
	}
	pool_get_usage(pool, &usage);
	printf(
	    "pool overhead after refilling the freed pages: %.3f (total %llu B, stored %llu B)\n",
	    (double)usage.total_size / (double)usage.stored_bytes,
	    (unsigned long long)usage.total_size, (unsigned long long)usage.stored_bytes);

	/* Metadata: every page of one contiguous region is stored, as after eviction. */
	if (lru_new(&lru) < 0)
		return -ENOMEM;
	for (i = 0; i < nr_pages; i++) {
		page_entry_t e = pe_make(0, PAGE_STORED, true, COMPRESSOR_LZ4,
					 (unsigned)slots[i].len, slots[i].handle);

		if (page_index_set(index, vpn_base + i, e) < 0 ||
		    lru_push(lru, LRU_KEY << PAGE_INDEX_VPN_BITS | (vpn_base + i)) < 0)
			return -ENOMEM;
		stored++;
	}
	page_index_get_usage(index, &index_usage);
	lru_bytes = (double)lru_memory_bytes(lru) / (double)stored;
	printf("metadata per stored page (contiguous region): index %.2f B + LRU %.2f B = %.2f B"
	       "   (pool bookkeeping, apart: %.2f B/object in the arena, %.2f B/object heap)\n",
	       (double)index_usage.bytes / (double)stored, lru_bytes,
	       (double)index_usage.bytes / (double)stored + lru_bytes,
	       (double)usage.arena_metadata_bytes / (double)usage.stored_objects,
	       (double)usage.metadata_bytes / (double)usage.stored_objects);
	page_index_free(index);
	lru = lru_free(lru);

	/* The same pages every 16th page of a region 16 times as large. */
	if (store_new(&sparse_store) < 0 || page_index_new(&index, sparse_store) < 0 ||
	    lru_new(&lru) < 0)
		return -ENOMEM;
	for (i = 0; i < nr_pages; i++) {
		if (page_index_set(index, vpn_base + i * 16, (uint64_t)i + 1) < 0 ||
		    lru_push(lru, LRU_KEY << PAGE_INDEX_VPN_BITS | (vpn_base + i * 16)) < 0)
			return -ENOMEM;
	}
	page_index_get_usage(index, &index_usage);
	lru_bytes = (double)lru_memory_bytes(lru) / (double)stored;
	printf("metadata per stored page (1 in 16 pages stored):    index %.2f B + LRU %.2f B = "
	       "%.2f B\n",
	       (double)index_usage.bytes / (double)stored, lru_bytes,
	       (double)index_usage.bytes / (double)stored + lru_bytes);
	page_index_free(index);
	lru_free(lru);
	store_free(sparse_store);
	store_free(store);

	for (i = 0; i < nr_pages; i++)
		pool_release(pool, slots[i].handle);
	compressor_free(c);
	pool_free(pool);
	free(slots);
	return 0;
}

int main(int argc, char **argv)
{
	size_t nr_pages = argc > 1 ? strtoull(argv[1], NULL, 0) : 16384, i;
	uint8_t(*text)[UZ_PAGE_SIZE], (*random)[UZ_PAGE_SIZE];
	static const struct {
		enum compressor_algo algo;
		int level;
	} algos[] = {{COMPRESSOR_LZ4, 0}, {COMPRESSOR_ZSTD, 1}};
	uint64_t seed = 1;
	unsigned a, threads;
	int failed = 0;

	if (nr_pages < 64) {
		fprintf(stderr, "bench-pool: need at least 64 pages\n");
		return 2;
	}
	text = malloc(nr_pages * UZ_PAGE_SIZE);
	random = malloc(nr_pages * UZ_PAGE_SIZE);
	if (!text || !random) {
		fprintf(stderr, "bench-pool: cannot allocate %zu pages: %m\n", nr_pages * 2);
		return 1;
	}
	for (i = 0; i < nr_pages; i++) {
		test_fill_text(text[i], UZ_PAGE_SIZE, &seed);
		test_fill_random(random[i], UZ_PAGE_SIZE, &seed);
	}

	printf("bench-pool: %zu pages (%zu MiB) per run; load = load + decompress + verify\n",
	       nr_pages, nr_pages * UZ_PAGE_SIZE >> 20);
	printf("algo  level   data   thr  store/s    load/s     ratio   pool/stored\n");
	for (a = 0; a < UZ_ARRAY_SIZE(algos); a++) {
		for (threads = 1; threads <= 2; threads++) {
			failed |= bench_throughput(text, nr_pages, "text", algos[a].algo,
						   algos[a].level, threads);
			failed |= bench_throughput(random, nr_pages, "random", algos[a].algo,
						   algos[a].level, threads);
		}
	}
	printf("\n");
	failed |= bench_mixed(nr_pages);
	free(text);
	free(random);
	return failed ? 1 : 0;
}
