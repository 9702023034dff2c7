// SPDX-License-Identifier: MIT
/*
 * Unit tests of daemon/pool: randomized store/load/release with every byte
 * checked, several threads on one pool and on pools of their own with
 * shared totals, the compress-then-store path with same-filled and
 * incompressible pages, exhaustion (-ENOMEM) both through the allocation
 * hook and under RLIMIT_AS (the arena's mapping cannot grow), handle checks
 * and reuse, compaction, and the overhead bound on text pages.
 */
#include <errno.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>
#include <cmocka.h>

#include "util.h"
#include "compress/compress.h"
#include "pool/pool.h"
#include "text-page.h"

/* pool.c's layout, as far as these tests look at the arena file. */
#define ARENA_FRAME_SIZE   (128U << 10)
#define ARENA_HEADER_BYTES 4096U /* the page of frame 0 that is in use */

struct object {
	pool_handle_t handle; /* 0: slot unused */
	uint32_t len;
	uint64_t seed; /* the bytes are a function of seed and len */
};

static void object_bytes(uint8_t *buf, uint32_t len, uint64_t seed)
{
	uint64_t state = seed | 1;
	uint32_t i;

	for (i = 0; i < len; i++)
		buf[i] = (uint8_t)(test_rand_next(&state) >> 24);
}

static void object_check(struct pool *pool, const struct object *object)
{
	uint8_t expect[4096], got[4096];

	object_bytes(expect, object->len, object->seed);
	memset(got, 0, sizeof(got));
	assert_int_equal(pool_load(pool, object->handle, got, object->len), 0);
	assert_memory_equal(got, expect, object->len);
}

static int object_store(struct pool *pool, struct object *object, uint32_t len, uint64_t seed)
{
	uint8_t buf[4096];
	int r;

	object_bytes(buf, len, seed);
	r = pool_store(pool, buf, len, &object->handle);
	if (r == 0) {
		assert_true(object->handle != 0);
		assert_true(object->handle < (1ULL << POOL_HANDLE_BITS));
		object->len = len;
		object->seed = seed;
	}
	return r;
}

/* Random operations on a table of objects; returns the sum of live lengths. */
static uint64_t random_ops(struct pool *pool, struct object *objects, size_t nr, size_t ops,
			   uint64_t seed)
{
	uint64_t live_bytes = 0;
	size_t i;

	for (i = 0; i < nr; i++)
		live_bytes += objects[i].handle ? objects[i].len : 0;
	for (i = 0; i < ops; i++) {
		uint64_t r = test_rand_next(&seed);
		struct object *object = &objects[r % nr];

		if (object->handle) {
			object_check(pool, object);
			if (r & (1ULL << 40)) {
				assert_int_equal(pool_release(pool, object->handle), 0);
				live_bytes -= object->len;
				object->handle = 0;
			}
		} else {
			uint32_t len = (uint32_t)((r >> 20) % 4096) + 1;

			assert_int_equal(object_store(pool, object, len, r), 0);
			live_bytes += len;
		}
	}
	return live_bytes;
}

static void release_all(struct pool *pool, struct object *objects, size_t nr)
{
	size_t i;

	for (i = 0; i < nr; i++) {
		if (objects[i].handle) {
			object_check(pool, &objects[i]);
			assert_int_equal(pool_release(pool, objects[i].handle), 0);
			objects[i].handle = 0;
		}
	}
}

static void usage_assert_equal(const struct pool_usage *a, const struct pool_usage *b)
{
	assert_int_equal(a->total_size, b->total_size);
	assert_int_equal(a->stored_bytes, b->stored_bytes);
	assert_int_equal(a->stored_objects, b->stored_objects);
	assert_int_equal(a->chunks, b->chunks);
	assert_int_equal(a->arena_metadata_bytes, b->arena_metadata_bytes);
}

static void test_random_single(void **state)
{
	enum { NR = 3000 };
	struct object *objects = calloc(NR, sizeof(*objects));
	struct pool_usage usage, empty, totals_usage;
	struct pool_totals *totals = NULL;
	struct pool *pool = NULL;
	uint64_t live;
	size_t i, nr_live = 0;

	assert_int_equal(pool_totals_new(&totals), 0);
	assert_int_equal(pool_new(&pool, totals), 0);
	pool_get_usage(pool, &empty);
	assert_int_equal(empty.total_size, ARENA_HEADER_BYTES);
	assert_int_equal(empty.chunks, 0);
	live = random_ops(pool, objects, NR, 60000, 12345);
	pool_get_usage(pool, &usage);
	for (i = 0; i < NR; i++)
		nr_live += objects[i].handle != 0;
	assert_int_equal(usage.stored_bytes, live);
	assert_int_equal(usage.stored_objects, nr_live);
	assert_true(usage.total_size >= usage.stored_bytes);
	assert_true(usage.metadata_bytes > 0);
	/* The header page, then at most 16 B + 2 B per slot (rounded to 32 B) per chunk. */
	assert_true(usage.arena_metadata_bytes > ARENA_HEADER_BYTES);
	assert_true(usage.arena_metadata_bytes <=
		    ARENA_HEADER_BYTES + usage.chunks * (16 + 2 * (ARENA_FRAME_SIZE / 34) + 31));
	pool_totals_get(totals, &totals_usage);
	usage_assert_equal(&usage, &totals_usage);
	assert_int_equal(totals_usage.metadata_bytes, usage.metadata_bytes);
	for (i = 0; i < NR; i++) {
		if (objects[i].handle)
			object_check(pool, &objects[i]);
	}
	release_all(pool, objects, NR);
	pool_get_usage(pool, &usage);
	/* Every chunk went back to the system. */
	usage_assert_equal(&usage, &empty);
	assert_null(pool_free(pool));
	assert_null(pool_free(NULL));
	/* A freed pool takes its share out of the totals. */
	pool_totals_get(totals, &totals_usage);
	assert_int_equal(totals_usage.total_size, 0);
	assert_int_equal(totals_usage.metadata_bytes, 0);
	assert_null(pool_totals_free(totals));
	free(objects);
}

struct worker {
	struct pool *pool; /* shared, or NULL: the worker makes its own */
	struct pool_totals *totals;
	uint64_t seed;
};

static void *worker_main(void *arg)
{
	enum { NR = 800 };
	struct worker *worker = arg;
	struct object *objects = calloc(NR, sizeof(*objects));
	struct pool *pool = worker->pool;

	if (!pool)
		assert_int_equal(pool_new(&pool, worker->totals), 0);
	random_ops(pool, objects, NR, 40000, worker->seed);
	release_all(pool, objects, NR);
	if (!worker->pool)
		pool_free(pool);
	free(objects);
	return NULL;
}

/* Three threads share a pool (as this branch's daemon does), two have their own. */
static void test_random_threads(void **state)
{
	enum { NR_SHARED = 3, NR_THREADS = 5 };
	struct worker workers[NR_THREADS];
	pthread_t threads[NR_THREADS];
	struct pool_totals *totals = NULL;
	struct pool *pool = NULL;
	struct pool_usage usage;
	int i;

	assert_int_equal(pool_totals_new(&totals), 0);
	assert_int_equal(pool_new(&pool, totals), 0);
	for (i = 0; i < NR_THREADS; i++) {
		workers[i] =
		    (struct worker){i < NR_SHARED ? pool : NULL, totals, 1000 + (uint64_t)i};
		assert_int_equal(pthread_create(&threads[i], NULL, worker_main, &workers[i]), 0);
	}
	for (i = 0; i < NR_THREADS; i++)
		pthread_join(threads[i], NULL);
	pool_get_usage(pool, &usage);
	assert_int_equal(usage.stored_objects, 0);
	assert_int_equal(usage.total_size, ARENA_HEADER_BYTES);
	pool_totals_get(totals, &usage);
	assert_int_equal(usage.stored_objects, 0);
	assert_int_equal(usage.stored_bytes, 0);
	assert_int_equal(usage.chunks, 0);
	assert_int_equal(usage.total_size, ARENA_HEADER_BYTES);
	pool_free(pool);
	pool_totals_free(totals);
}

/* The store path of the daemon: same-filled check, compress, store; then load back. */
static void test_pages_through_compressor(void **state)
{
	enum { NR = 600 };
	static uint8_t pages[NR][UZ_PAGE_SIZE];
	uint8_t dst[UZ_PAGE_SIZE], out[UZ_PAGE_SIZE];
	pool_handle_t handles[NR] = {0};
	int lens[NR];
	uint64_t words[NR], seed = 5;
	struct compressor *c = NULL;
	struct pool *pool = NULL;
	struct pool_usage usage;
	int i, same = 0, poor = 0;

	assert_int_equal(pool_new(&pool, NULL), 0);
	assert_int_equal(compressor_new(&c, COMPRESSOR_LZ4, 0), 0);
	for (i = 0; i < NR; i++) {
		switch (i % 6) {
		case 0:
			memset(pages[i], 0, UZ_PAGE_SIZE);
			break;
		case 1:
			page_fill_word(pages[i], 0x1122334455667788ULL + (uint64_t)i);
			break;
		case 2:
			test_fill_random(pages[i], UZ_PAGE_SIZE, &seed);
			break;
		default:
			test_fill_text(pages[i], UZ_PAGE_SIZE, &seed);
		}
		if (page_same_filled(pages[i], &words[i])) {
			lens[i] = 0;
			same++;
			continue;
		}
		/* A page that does not shrink by a quarter is poor: refused here. */
		lens[i] = compressor_compress(c, pages[i], dst, UZ_PAGE_SIZE * 3 / 4);
		if (lens[i] == -E2BIG) {
			poor++;
			continue;
		}
		assert_true(lens[i] > 0);
		assert_int_equal(pool_store(pool, dst, (size_t)lens[i], &handles[i]), 0);
	}
	assert_int_equal(same, NR / 3);
	assert_int_equal(poor, NR / 6);
	pool_get_usage(pool, &usage);
	assert_int_equal(usage.stored_objects, NR / 2);

	for (i = 0; i < NR; i++) {
		if (lens[i] == 0) {
			page_fill_word(out, words[i]);
		} else if (lens[i] > 0) {
			assert_int_equal(pool_load(pool, handles[i], dst, (size_t)lens[i]), 0);
			assert_int_equal(
			    compressor_decompress(c, COMPRESSOR_LZ4, dst, (size_t)lens[i], out), 0);
			assert_int_equal(pool_release(pool, handles[i]), 0);
		} else {
			continue;
		}
		assert_memory_equal(out, pages[i], UZ_PAGE_SIZE);
	}
	pool_get_usage(pool, &usage);
	assert_int_equal(usage.total_size, ARENA_HEADER_BYTES);
	compressor_free(c);
	pool_free(pool);
}

static void test_bad_handles_and_reuse(void **state)
{
	struct pool *pool = NULL;
	struct object a = {0}, b = {0};
	uint8_t buf[4096];
	pool_handle_t old;

	assert_int_equal(pool_new(&pool, NULL), 0);
	assert_int_equal(pool_store(pool, buf, 0, &old), -EINVAL);
	assert_int_equal(pool_store(pool, buf, 4097, &old), -EINVAL);
	assert_int_equal(pool_load(pool, 0, buf, 10), -EINVAL);
	assert_int_equal(pool_release(pool, 0), -EINVAL);

	assert_int_equal(object_store(pool, &a, 1000, 77), 0);
	assert_int_equal(object_store(pool, &b, 1000, 78), 0);
	assert_true(a.handle != b.handle);
	/* Wrong length, frame, class, slot, bits beyond the handle: refused. */
	assert_int_equal(pool_load(pool, a.handle, buf, 999), -EINVAL);
	assert_int_equal(pool_load(pool, a.handle, buf, 1001), -EINVAL);
	assert_int_equal(pool_load(pool, a.handle + (1ULL << 30), buf, 1000), -EINVAL);
	assert_int_equal(pool_load(pool, a.handle + (1ULL << 19), buf, 1000), -EINVAL);
	assert_int_equal(pool_load(pool, a.handle & ((1ULL << 19) - 1), buf, 1000), -EINVAL);
	assert_int_equal(pool_load(pool, a.handle ^ (1ULL << 12), buf, 1000), -EINVAL);
	assert_int_equal(pool_load(pool, a.handle | 0xfff, buf, 1000), -EINVAL);
	assert_int_equal(pool_load(pool, a.handle | (1ULL << POOL_HANDLE_BITS), buf, 1000),
			 -EINVAL);
	assert_int_equal(pool_release(pool, a.handle ^ (1ULL << 12)), -EINVAL);
	assert_int_equal(pool_refcount(pool, a.handle | 0xfff), -EINVAL);

	old = a.handle;
	assert_int_equal(pool_release(pool, a.handle), 0);
	assert_int_equal(pool_load(pool, old, buf, 1000), -EINVAL);
	assert_int_equal(pool_release(pool, old), -EINVAL); /* a double release is refused */
	object_check(pool, &b);

	/* The freed slot is reused by the next object of its class. */
	assert_int_equal(object_store(pool, &a, 1010, 79), 0);
	assert_true(a.handle == old);
	object_check(pool, &a);
	object_check(pool, &b);
	assert_int_equal(pool_release(pool, a.handle), 0);
	assert_int_equal(pool_release(pool, b.handle), 0);
	pool_free(pool);
}

static void test_exhaustion_hook(void **state)
{
	enum { NR = 200 };
	struct object objects[NR] = {0};
	struct pool *pool = NULL;
	struct pool_usage usage;
	int i, stored = 0, r = 0;

	assert_int_equal(pool_new(&pool, NULL), 0);
	/* Two chunks of 4 KiB objects (about 31 per chunk), then nothing. */
	pool_inject_map_failures(pool, 2);
	for (i = 0; i < NR; i++) {
		r = object_store(pool, &objects[i], 4096, (uint64_t)i + 1);
		if (r)
			break;
		stored++;
	}
	assert_int_equal(r, -ENOMEM);
	assert_true(stored > 0 && stored < NR);
	pool_get_usage(pool, &usage);
	assert_int_equal(usage.chunks, 2);
	assert_int_equal(usage.stored_objects, stored);
	/* Another class needs a chunk too: refused as well. */
	assert_int_equal(object_store(pool, &objects[NR - 1], 100, 1), -ENOMEM);

	/* Everything stored before is intact; a freed slot takes a new object. */
	for (i = 0; i < stored; i++)
		object_check(pool, &objects[i]);
	assert_int_equal(pool_release(pool, objects[0].handle), 0);
	assert_int_equal(object_store(pool, &objects[0], 4080, 4242), 0);
	object_check(pool, &objects[0]);

	pool_inject_map_failures(pool, -1);
	assert_int_equal(object_store(pool, &objects[stored], 4096, 999), 0);
	release_all(pool, objects, NR);
	pool_free(pool);
}

/* In a child: stores 4 KiB objects until -ENOMEM, checks them, frees one, stores again. */
static int child_fill_until_enomem(struct pool *pool, int *stored)
{
	enum { NR = 100000 };
	struct object *objects = calloc(NR, sizeof(*objects));
	int i, r = 0;

	if (!objects)
		return 2;
	for (i = 0; i < NR; i++) {
		r = object_store(pool, &objects[i], 4096, (uint64_t)i + 7);
		if (r)
			break;
	}
	if (r != -ENOMEM || i == 0 || i == NR)
		return 5;
	*stored = i;
	for (int j = 0; j < i; j++) {
		uint8_t expect[4096], got[4096];

		object_bytes(expect, 4096, objects[j].seed);
		if (pool_load(pool, objects[j].handle, got, 4096) || memcmp(got, expect, 4096))
			return 6;
	}
	if (pool_release(pool, objects[0].handle) < 0 ||
	    object_store(pool, &objects[0], 4096, 1) < 0)
		return 7;
	return 0;
}

/* Runs fn in a child process (limits set there stay there); it must return 0. */
static void child_must_succeed(int (*fn)(void))
{
	pid_t pid;
	int status;

	pid = fork();
	assert_true(pid >= 0);
	if (pid == 0)
		_exit(fn());
	assert_int_equal(waitpid(pid, &status, 0), pid);
	assert_true(WIFEXITED(status));
	assert_int_equal(WEXITSTATUS(status), 0);
}

#if !defined(__SANITIZE_ADDRESS__)
static int child_exhaustion_rlimit(void)
{
	struct pool *pool = NULL;
	unsigned long vm_pages = 0;
	struct rlimit limit;
	FILE *statm;
	int stored;

	if (pool_new(&pool, NULL) < 0)
		return 2;
	statm = fopen("/proc/self/statm", "re");
	if (!statm || fscanf(statm, "%lu", &vm_pages) != 1)
		return 3;
	fclose(statm);
	/* Room for a few chunks beyond what is mapped now, then mremap fails. */
	limit.rlim_cur = limit.rlim_max = vm_pages * (rlim_t)sysconf(_SC_PAGESIZE) + (4 << 20);
	if (setrlimit(RLIMIT_AS, &limit) < 0)
		return 4;
	return child_fill_until_enomem(pool, &stored);
}
#endif

/* The real thing: growing the arena's mapping fails at the address space limit. */
static void test_exhaustion_rlimit(void **state)
{
#if defined(__SANITIZE_ADDRESS__)
	/* ASan reserves terabytes of shadow: RLIMIT_AS cannot be used under it. */
	skip();
#else
	child_must_succeed(child_exhaustion_rlimit);
#endif
}

/* Stores 4000 objects of 1.5 KiB and frees 70% of them at random. */
static void fill_sparse(struct pool *pool, struct object *objects, int nr, uint64_t seed)
{
	int i;

	for (i = 0; i < nr; i++)
		assert_int_equal(object_store(pool, &objects[i],
					      1500 + (uint32_t)(test_rand_next(&seed) % 200),
					      (uint64_t)i + 1),
				 0);
	for (i = 0; i < nr; i++) {
		if (test_rand_next(&seed) % 10 < 7) {
			assert_int_equal(pool_release(pool, objects[i].handle), 0);
			objects[i].handle = 0;
		}
	}
}

/* The owner's side of a migration: copy, switch the reference, release the original. */
static void object_migrate(struct pool *pool, struct object *object)
{
	pool_handle_t moved, old = object->handle;

	assert_int_equal(pool_migrate_copy(pool, old, object->len + 1, &moved), -EINVAL);
	assert_int_equal(pool_migrate_copy(pool, old, object->len, &moved), 0);
	assert_false(pool_handle_evacuating(pool, moved));
	/* Until released, the original is still there. */
	object_check(pool, object);
	object->handle = moved;
	object_check(pool, object);
	assert_int_equal(pool_release(pool, old), 0);
}

static void test_compaction(void **state)
{
	enum { NR = 4000 };
	struct object *objects = calloc(NR, sizeof(*objects));
	struct pool_usage before, after;
	struct pool *pool = NULL;
	int i, marked, migrated = 0;

	assert_int_equal(pool_new(&pool, NULL), 0);
	fill_sparse(pool, objects, NR, 31337);
	pool_get_usage(pool, &before);
	assert_true(before.total_size > before.stored_bytes * 2);

	marked = pool_compact_begin(pool, 50);
	assert_true(marked > 0);
	/* New stores avoid evacuating chunks. */
	struct object probe = {0};
	assert_int_equal(object_store(pool, &probe, 1550, 4), 0);
	assert_false(pool_handle_evacuating(pool, probe.handle));

	for (i = 0; i < NR; i++) {
		if (!objects[i].handle || !pool_handle_evacuating(pool, objects[i].handle))
			continue;
		object_migrate(pool, &objects[i]);
		migrated++;
	}
	assert_true(migrated > 0);
	pool_get_usage(pool, &after);
	assert_true(after.chunks < before.chunks);
	assert_true(after.total_size < before.total_size);
	assert_int_equal(after.stored_objects, before.stored_objects + 1);
	for (i = 0; i < NR; i++) {
		if (objects[i].handle) {
			object_check(pool, &objects[i]);
			assert_false(pool_handle_evacuating(pool, objects[i].handle));
		}
	}
	/* Half full chunks after compaction, not 30%. */
	assert_true(after.total_size * 10 < before.total_size * 8);
	assert_int_equal(pool_release(pool, probe.handle), 0);
	release_all(pool, objects, NR);
	pool_get_usage(pool, &after);
	assert_int_equal(after.total_size, ARENA_HEADER_BYTES);
	assert_int_equal(pool_compact_begin(pool, 101), -EINVAL);
	pool_free(pool);
	free(objects);
}

/* Text pages compressed with lz4, a mixed store/release workload, then compaction. */
static void test_overhead_text(void **state)
{
	enum { NR = 12000 };
	pool_handle_t *handles = calloc(NR, sizeof(*handles));
	int *lens = calloc(NR, sizeof(*lens));
	uint8_t page[UZ_PAGE_SIZE], dst[UZ_PAGE_SIZE];
	struct compressor *c = NULL;
	struct pool *pool = NULL;
	struct pool_usage usage;
	uint64_t seed = 2024;
	int i, round;

	assert_int_equal(pool_new(&pool, NULL), 0);
	assert_int_equal(compressor_new(&c, COMPRESSOR_LZ4, 0), 0);
	for (round = 0; round < 4; round++) {
		for (i = 0; i < NR; i++) {
			if (handles[i])
				continue;
			test_fill_text(page, sizeof(page), &seed);
			lens[i] = compressor_compress(c, page, dst, sizeof(dst));
			assert_true(lens[i] > 0);
			assert_int_equal(pool_store(pool, dst, (size_t)lens[i], &handles[i]), 0);
		}
		for (i = 0; i < NR; i++) {
			if (test_rand_next(&seed) % 3 == 0) {
				assert_int_equal(pool_release(pool, handles[i]), 0);
				handles[i] = 0;
			}
		}
	}
	assert_true(pool_compact_begin(pool, 90) >= 0);
	for (i = 0; i < NR; i++) {
		pool_handle_t moved;

		if (!handles[i] || !pool_handle_evacuating(pool, handles[i]))
			continue;
		assert_int_equal(pool_migrate_copy(pool, handles[i], (size_t)lens[i], &moved), 0);
		assert_int_equal(pool_release(pool, handles[i]), 0);
		handles[i] = moved;
	}
	pool_get_usage(pool, &usage);
	assert_true(usage.stored_bytes > 0);
	assert_true((double)usage.total_size / (double)usage.stored_bytes <= 1.10);
	for (i = 0; i < NR; i++) {
		if (handles[i])
			assert_int_equal(pool_release(pool, handles[i]), 0);
	}
	compressor_free(c);
	pool_free(pool);
	free(handles);
	free(lens);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_random_single),
	    cmocka_unit_test(test_random_threads),
	    cmocka_unit_test(test_pages_through_compressor),
	    cmocka_unit_test(test_bad_handles_and_reuse),
	    cmocka_unit_test(test_exhaustion_hook),
	    cmocka_unit_test(test_exhaustion_rlimit),
	    cmocka_unit_test(test_compaction),
	    cmocka_unit_test(test_overhead_text),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
