// SPDX-License-Identifier: MIT
/*
 * Unit tests of daemon/pool: randomized store/load/release with every byte
 * checked, several threads on one pool and on pools of their own with
 * shared totals, the compress-then-store path with same-filled and
 * incompressible pages, exhaustion (-ENOMEM) through the allocation hook,
 * under RLIMIT_AS and under RLIMIT_FSIZE (the arena cannot grow), handle
 * checks and reuse, reference counts, compaction (and that it leaves
 * shared objects alone), the overhead bound on text pages, the arena file
 * itself (mode, read-only descriptors, lowest frames reused, holes punched,
 * growth), and recovery: after the daemon's side was dropped, after a kill
 * at each of the pool's ordered writes in turn, after SIGKILLs at random
 * moments, and on fuzzed arenas.  After every recovery each object anyone
 * refers to is loaded and compared, at most one object (the one in flight)
 * may have leaked, and new stores never get the slot of a live object.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
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
#define ARENA_HEADER_LEN   64U	 /* sizeof(struct arena_header), all of it checked */

static uint32_t handle_frame(pool_handle_t handle)
{
	return (uint32_t)(handle >> 20) - 1; /* handle: [slot 12][class 8][frame + 1] */
}

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
	static _Thread_local uint8_t expect[POOL_OBJECT_MAX], got[POOL_OBJECT_MAX];

	object_bytes(expect, object->len, object->seed);
	memset(got, 0, sizeof(got));
	assert_int_equal(pool_load(pool, object->handle, got, object->len), 0);
	assert_memory_equal(got, expect, object->len);
}

static int object_store(struct pool *pool, struct object *object, uint32_t len, uint64_t seed)
{
	static _Thread_local uint8_t buf[POOL_OBJECT_MAX];
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
			/* One in eight above a page (a unit of pages), the rest up to one. */
			uint32_t len = (r >> 50) % 8 == 0
					   ? 4097 + (uint32_t)((r >> 20) % (POOL_OBJECT_MAX - 4096))
					   : (uint32_t)((r >> 20) % 4096) + 1;

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

/* What every live object looked like at one moment, in handle order. */
struct live {
	pool_handle_t handle;
	uint32_t len;
	unsigned refcount;
	uint8_t *bytes;
};

struct snapshot {
	struct pool *pool;
	struct live *items;
	size_t nr, cap;
};

static int snapshot_add(pool_handle_t handle, size_t len, unsigned refcount, void *userdata)
{
	struct snapshot *s = userdata;
	struct live *item;

	if (s->nr == s->cap) {
		s->cap = s->cap ? s->cap * 2 : 256;
		s->items = realloc(s->items, s->cap * sizeof(*s->items));
		assert_non_null(s->items);
	}
	/* The walk goes in arena order, which is handle order. */
	assert_true(s->nr == 0 || s->items[s->nr - 1].handle < handle);
	assert_true(len >= 1 && len <= POOL_OBJECT_MAX && refcount >= 1 &&
		    refcount <= POOL_REFCOUNT_MAX);
	item = &s->items[s->nr++];
	item->handle = handle;
	item->len = (uint32_t)len;
	item->refcount = refcount;
	item->bytes = malloc(len);
	assert_non_null(item->bytes);
	assert_int_equal(pool_load(s->pool, handle, item->bytes, len), 0);
	assert_int_equal(pool_refcount(s->pool, handle), (int)refcount);
	return 0;
}

static void snapshot_take(struct pool *pool, struct snapshot *s)
{
	*s = (struct snapshot){.pool = pool};
	assert_int_equal(pool_walk(pool, snapshot_add, s), 0);
}

static int live_compare(const void *key, const void *item)
{
	pool_handle_t a = *(const pool_handle_t *)key, b = ((const struct live *)item)->handle;

	return (a > b) - (a < b);
}

static bool snapshot_has(const struct snapshot *s, pool_handle_t handle)
{
	return s->nr && bsearch(&handle, s->items, s->nr, sizeof(*s->items), live_compare);
}

static void snapshot_verify(struct pool *pool, const struct snapshot *s)
{
	static uint8_t got[POOL_OBJECT_MAX];
	size_t i;

	for (i = 0; i < s->nr; i++) {
		assert_int_equal(pool_load(pool, s->items[i].handle, got, s->items[i].len), 0);
		assert_memory_equal(got, s->items[i].bytes, s->items[i].len);
		assert_int_equal(pool_refcount(pool, s->items[i].handle),
				 (int)s->items[i].refcount);
	}
}

static void snapshot_free(struct snapshot *s)
{
	for (size_t i = 0; i < s->nr; i++)
		free(s->items[i].bytes);
	free(s->items);
	*s = (struct snapshot){0};
}

/*
 * New objects on top of a recovered pool: none may get the handle of a
 * live object, and every live object must still read the same.  Most new
 * objects go to the classes of live objects (their chunks' free slots are
 * what matters), the rest anywhere.
 */
static void stress_after_recovery(struct pool *pool, const struct snapshot *s, size_t nr,
				  uint64_t seed)
{
	struct object *objects = calloc(nr, sizeof(*objects));
	size_t i, round;

	assert_non_null(objects);
	for (round = 0; round < 2; round++) {
		for (i = 0; i < nr; i++) {
			uint64_t r = test_rand_next(&seed);
			uint32_t len = (uint32_t)(r % 4096) + 1;

			if (objects[i].handle)
				continue;
			if (s->nr && r % 32) {
				/* Same class as a live object: rounded up to the 32-byte grain. */
				len = (s->items[(r >> 16) % s->nr].len + 31) / 32 * 32 -
				      (uint32_t)((r >> 40) % 32);
			}
			assert_int_equal(object_store(pool, &objects[i], len, r), 0);
			assert_false(snapshot_has(s, objects[i].handle));
		}
		for (i = 0; i < nr; i += 2) {
			assert_int_equal(pool_release(pool, objects[i].handle), 0);
			objects[i].handle = 0;
		}
	}
	snapshot_verify(pool, s);
	release_all(pool, objects, nr);
	snapshot_verify(pool, s);
	free(objects);
}

static int release_fully(pool_handle_t handle, size_t len, unsigned refcount, void *userdata)
{
	struct pool *pool = userdata;
	uint8_t buf[4096];

	while (refcount--)
		assert_int_equal(pool_release(pool, handle), 0);
	assert_int_equal(pool_load(pool, handle, buf, len), -EINVAL);
	return 0;
}

/* Releases every reference of every object; the pool is then empty. */
static void release_everything(struct pool *pool, uint64_t rejected_frames)
{
	struct pool_usage usage;

	assert_int_equal(pool_walk(pool, release_fully, pool), 0);
	pool_get_usage(pool, &usage);
	assert_int_equal(usage.stored_objects, 0);
	assert_int_equal(usage.stored_bytes, 0);
	assert_int_equal(usage.chunks, 0);
	assert_int_equal(usage.total_size, ARENA_HEADER_BYTES + rejected_frames * ARENA_FRAME_SIZE);
	assert_int_equal(usage.arena_metadata_bytes, ARENA_HEADER_BYTES);
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
	assert_int_equal(pool_store(pool, buf, POOL_OBJECT_MAX + 1, &old), -EINVAL);
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

static void test_refcounts(void **state)
{
	struct object a = {0}, b = {0};
	struct pool *pool = NULL;
	struct pool_usage usage;
	uint8_t buf[4096];
	int i;

	assert_int_equal(pool_new(&pool, NULL), 0);
	assert_int_equal(object_store(pool, &a, 1000, 5), 0);
	assert_int_equal(pool_refcount(pool, a.handle), 1);
	assert_int_equal(pool_ref(pool, a.handle), 0);
	assert_int_equal(pool_refcount(pool, a.handle), 2);
	/* A shared object counts once. */
	pool_get_usage(pool, &usage);
	assert_int_equal(usage.stored_objects, 1);
	assert_int_equal(usage.stored_bytes, 1000);
	object_check(pool, &a);
	assert_int_equal(pool_release(pool, a.handle), 0);
	assert_int_equal(pool_refcount(pool, a.handle), 1);
	object_check(pool, &a);
	pool_get_usage(pool, &usage);
	assert_int_equal(usage.stored_objects, 1);
	assert_int_equal(pool_release(pool, a.handle), 0);
	/* Freed at 0. */
	assert_int_equal(pool_refcount(pool, a.handle), -EINVAL);
	assert_int_equal(pool_load(pool, a.handle, buf, 1000), -EINVAL);
	assert_int_equal(pool_release(pool, a.handle), -EINVAL);
	assert_int_equal(pool_ref(pool, a.handle), -EINVAL);
	assert_int_equal(pool_ref(pool, 0), -EINVAL);
	pool_get_usage(pool, &usage);
	assert_int_equal(usage.stored_objects, 0);
	assert_int_equal(usage.chunks, 0);

	/* Up to the maximum, then -EOVERFLOW; the count stays right. */
	assert_int_equal(object_store(pool, &b, 33, 6), 0);
	for (i = 1; i < POOL_REFCOUNT_MAX; i++)
		assert_int_equal(pool_ref(pool, b.handle), 0);
	assert_int_equal(pool_refcount(pool, b.handle), POOL_REFCOUNT_MAX);
	assert_int_equal(pool_ref(pool, b.handle), -EOVERFLOW);
	assert_int_equal(pool_refcount(pool, b.handle), POOL_REFCOUNT_MAX);
	for (i = 0; i < POOL_REFCOUNT_MAX; i++) {
		object_check(pool, &b);
		assert_int_equal(pool_release(pool, b.handle), 0);
	}
	assert_int_equal(pool_release(pool, b.handle), -EINVAL);
	pool_get_usage(pool, &usage);
	assert_int_equal(usage.stored_objects, 0);
	assert_int_equal(usage.total_size, ARENA_HEADER_BYTES);
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

static int child_exhaustion_fsize(void)
{
	struct pool *pool = NULL;
	struct pool_usage usage;
	struct rlimit limit;
	struct stat st;
	int fd, stored = 0, r;

	if (pool_new(&pool, NULL) < 0)
		return 2;
	fd = pool_open_readonly(pool);
	if (fd < 0 || fstat(fd, &st) < 0)
		return 3;
	limit.rlim_cur = limit.rlim_max = (rlim_t)st.st_size;
	if (setrlimit(RLIMIT_FSIZE, &limit) < 0)
		return 4;
	r = child_fill_until_enomem(pool, &stored);
	if (r)
		return r;
	pool_get_usage(pool, &usage);
	/* Every frame but the header's holds a chunk, and the file did not grow. */
	if (usage.chunks != (uint64_t)st.st_size / ARENA_FRAME_SIZE - 1 || fstat(fd, &st) < 0 ||
	    (rlim_t)st.st_size != limit.rlim_cur)
		return 8;
	return 0;
}

/*
 * The arena file cannot grow past RLIMIT_FSIZE: stores fail with -ENOMEM
 * once its frames are used, and the process is not killed by SIGXFSZ.
 */
static void test_exhaustion_fsize(void **state)
{
	child_must_succeed(child_exhaustion_fsize);
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

/* Compaction never moves a shared object, nor marks a chunk holding one. */
static void test_compaction_shared(void **state)
{
	enum { NR = 4000 };
	struct object *objects = calloc(NR, sizeof(*objects));
	bool *shared = calloc(NR, sizeof(*shared));
	uint8_t *shared_frame = calloc(1 << 16, 1);
	struct pool *pool = NULL;
	pool_handle_t moved;
	int i, marked, migrated = 0, nr_shared = 0, victim = -1;

	assert_int_equal(pool_new(&pool, NULL), 0);
	fill_sparse(pool, objects, NR, 4711);
	/* Every tenth object left is shared (a fork child refers to it too). */
	for (i = 0; i < NR; i++) {
		if (objects[i].handle && nr_shared++ % 10 == 0) {
			assert_int_equal(pool_ref(pool, objects[i].handle), 0);
			shared[i] = true;
			shared_frame[handle_frame(objects[i].handle)] = 1;
		}
	}
	marked = pool_compact_begin(pool, 50);
	assert_true(marked > 0);
	for (i = 0; i < NR; i++) {
		if (!objects[i].handle)
			continue;
		if (shared[i]) {
			assert_false(pool_handle_evacuating(pool, objects[i].handle));
			assert_int_equal(
			    pool_migrate_copy(pool, objects[i].handle, objects[i].len, &moved),
			    -EBUSY);
			continue;
		}
		if (!pool_handle_evacuating(pool, objects[i].handle))
			continue;
		assert_false(shared_frame[handle_frame(objects[i].handle)]);
		/* The first one is shared after the marking: it stays, and so does its chunk. */
		if (victim < 0) {
			victim = i;
			assert_int_equal(pool_ref(pool, objects[i].handle), 0);
			shared[i] = true;
			assert_false(pool_handle_evacuating(pool, objects[i].handle));
			assert_int_equal(
			    pool_migrate_copy(pool, objects[i].handle, objects[i].len, &moved),
			    -EBUSY);
			continue;
		}
		object_migrate(pool, &objects[i]);
		migrated++;
	}
	assert_true(migrated > 0 && victim >= 0);
	/* A new pass puts the victim's chunk back and does not mark it again. */
	assert_true(pool_compact_begin(pool, 100) >= 0);
	for (i = 0; i < NR; i++) {
		if (objects[i].handle &&
		    handle_frame(objects[i].handle) == handle_frame(objects[victim].handle))
			assert_false(pool_handle_evacuating(pool, objects[i].handle));
	}
	for (i = 0; i < NR; i++) {
		if (!objects[i].handle)
			continue;
		object_check(pool, &objects[i]);
		if (shared[i]) {
			assert_int_equal(pool_refcount(pool, objects[i].handle), 2);
			assert_int_equal(pool_release(pool, objects[i].handle), 0);
		}
	}
	release_all(pool, objects, NR);
	release_everything(pool, 0);
	pool_free(pool);
	free(shared_frame);
	free(shared);
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

/*
 * The arena file: mode 0600, read-only descriptors that cannot write, the
 * lowest free frame reused, empty frames punched, growth by doubling with
 * every object intact, distinct tokens.
 */
static void test_arena_file(void **state)
{
	enum { NR = 400 };
	struct object *objects = calloc(NR, sizeof(*objects));
	uint8_t token[POOL_TOKEN_SIZE], other_token[POOL_TOKEN_SIZE], zero[POOL_TOKEN_SIZE] = {0};
	struct pool *pool = NULL, *other = NULL;
	struct object small = {0};
	struct stat st;
	blkcnt_t blocks;
	int fd, i, n = 0;

	assert_int_equal(pool_new(&pool, NULL), 0);
	fd = pool_open_readonly(pool);
	assert_true(fd >= 0);
	assert_int_equal(fcntl(fd, F_GETFL) & O_ACCMODE, O_RDONLY);
	assert_true(fcntl(fd, F_GETFD) & FD_CLOEXEC);
	assert_int_equal(fstat(fd, &st), 0);
	assert_int_equal(st.st_mode & 07777, 0600);
	assert_int_equal(st.st_uid, geteuid());
	assert_int_equal(st.st_size % ARENA_FRAME_SIZE, 0);
	assert_int_equal(write(fd, "x", 1), -1);
	assert_int_equal(errno, EBADF);
	assert_ptr_equal(mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0), MAP_FAILED);

	/* Three frames of 4 KiB objects. */
	while (n < NR) {
		assert_int_equal(object_store(pool, &objects[n], 4096, (uint64_t)n + 1), 0);
		if (handle_frame(objects[n].handle) == 4) {
			assert_int_equal(pool_release(pool, objects[n].handle), 0);
			objects[n].handle = 0;
			break;
		}
		assert_true(handle_frame(objects[n].handle) >= 1);
		n++;
	}
	assert_int_equal(fstat(fd, &st), 0);
	blocks = st.st_blocks;
	/* Emptying frame 2 punches it... */
	for (i = 0; i < n; i++) {
		if (handle_frame(objects[i].handle) == 2) {
			assert_int_equal(pool_release(pool, objects[i].handle), 0);
			objects[i].handle = 0;
		}
	}
	assert_int_equal(fstat(fd, &st), 0);
	assert_true(st.st_blocks <= blocks - (120 << 10) / 512);
	/* ...and the next chunk, of any class, takes it: the lowest free frame. */
	assert_int_equal(object_store(pool, &small, 100, 3), 0);
	assert_int_equal(handle_frame(small.handle), 2);

	/* Past the initial frames the file doubles; every object is still there. */
	assert_int_equal(fstat(fd, &st), 0);
	assert_int_equal(st.st_size, 8 * ARENA_FRAME_SIZE);
	for (i = n; i < NR; i++)
		assert_int_equal(object_store(pool, &objects[i], 4096, (uint64_t)i + 1), 0);
	assert_int_equal(fstat(fd, &st), 0);
	assert_int_equal(st.st_size, 16 * ARENA_FRAME_SIZE);
	for (i = 0; i < NR; i++) {
		if (objects[i].handle)
			object_check(pool, &objects[i]);
	}
	object_check(pool, &small);
	release_all(pool, objects, NR);
	assert_int_equal(pool_release(pool, small.handle), 0);
	/* Only the header page is left in memory. */
	assert_int_equal(fstat(fd, &st), 0);
	assert_int_equal(st.st_blocks, ARENA_HEADER_BYTES / 512);

	pool_token(pool, token);
	assert_memory_not_equal(token, zero, sizeof(token));
	assert_int_equal(pool_new(&other, NULL), 0);
	pool_token(other, other_token);
	assert_memory_not_equal(token, other_token, sizeof(token));
	pool_free(other);
	pool_free(pool);
	close(fd);
	free(objects);
}

/* A memfd with the given name, mode and size. */
static int memfd_make(const char *name, mode_t mode, off_t size)
{
	int fd = memfd_create(name, MFD_CLOEXEC);

	assert_true(fd >= 0);
	assert_int_equal(fchmod(fd, mode), 0);
	assert_int_equal(ftruncate(fd, size), 0);
	return fd;
}

/* The /proc/self/fd path of an arena descriptor, for child_reopen_refused(). */
static const char *refused_path;

static int child_reopen_refused(void)
{
	if (setresgid(65534, 65534, 65534) < 0 || setresuid(65534, 65534, 65534) < 0 ||
	    prctl(PR_SET_DUMPABLE, 1, 0, 0, 0) < 0)
		return 2;
	return open(refused_path, O_RDWR | O_CLOEXEC) < 0 && errno == EACCES ? 0 : 3;
}

/* pool_recover() takes only an arena of ours. */
static void test_recover_refuses(void **state)
{
	struct pool *pool = NULL, *other = NULL;
	int fd, pipes[2], rw;
	uint8_t junk[256];
	uint64_t seed = 99;

	assert_int_equal(pipe2(pipes, O_CLOEXEC), 0);
	assert_int_equal(pool_recover(&other, pipes[0], NULL, NULL), -EINVAL);
	close(pipes[0]);
	close(pipes[1]);
	fd = open("/proc/self/exe", O_RDONLY | O_CLOEXEC);
	assert_int_equal(pool_recover(&other, fd, NULL, NULL), -EINVAL);
	close(fd);

	fd = memfd_make("other-name", 0600, ARENA_FRAME_SIZE);
	assert_int_equal(pool_recover(&other, fd, NULL, NULL), -EINVAL);
	close(fd);
	fd = memfd_make("uzswap-arena", 0644, ARENA_FRAME_SIZE);
	assert_int_equal(pool_recover(&other, fd, NULL, NULL), -EPERM);
	close(fd);
	fd = memfd_make("uzswap-arena", 0600, 0);
	assert_int_equal(pool_recover(&other, fd, NULL, NULL), -EINVAL);
	close(fd);
	fd = memfd_make("uzswap-arena", 0600, ARENA_FRAME_SIZE + 4096);
	assert_int_equal(pool_recover(&other, fd, NULL, NULL), -EINVAL);
	close(fd);
	fd = memfd_make("uzswap-arena", 0600, 4 * ARENA_FRAME_SIZE);
	assert_int_equal(pool_recover(&other, fd, NULL, NULL), -EINVAL); /* no header */
	test_fill_random(junk, sizeof(junk), &seed);
	assert_int_equal(pwrite(fd, junk, sizeof(junk), 0), (ssize_t)sizeof(junk));
	assert_int_equal(pool_recover(&other, fd, NULL, NULL), -EINVAL);
	close(fd);

	/* A live pool's arena is not taken twice. */
	assert_int_equal(pool_new(&pool, NULL), 0);
	fd = pool_open_readonly(pool);
	assert_true(fd >= 0);
	assert_int_equal(pool_recover(&other, fd, NULL, NULL), -EBUSY);
	pool_free(pool);

	if (geteuid() == 0) {
		/* Owned by someone else: refused. */
		char path[64];

		snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
		rw = open(path, O_RDWR | O_CLOEXEC);
		assert_true(rw >= 0);
		assert_int_equal(fchown(rw, 65534, (gid_t)-1), 0);
		assert_int_equal(pool_recover(&other, fd, NULL, NULL), -EPERM);
		assert_int_equal(fchown(rw, 0, (gid_t)-1), 0);
		close(rw);

		/* A client of another user cannot reopen its read-only descriptor writable. */
		refused_path = path;
		child_must_succeed(child_reopen_refused);
	}
	/* And once nobody holds it, it is ours again. */
	assert_int_equal(pool_recover(&other, fd, NULL, NULL), 0);
	pool_free(other);
	close(fd);
}

/*
 * The daemon's side dropped with objects in the arena (what a kill leaves
 * between operations): recovery finds every object with its handle, count
 * and bytes, the same usage, the same token; new stores take other slots.
 */
/* An arena of layout 1 (objects up to a page, as daemons before units made): taken back as it is.
 */
static void test_layout_v1(void **state)
{
	enum { NR = 400 };
	struct object objects[NR] = {{0}};
	struct pool_recover_report report;
	struct pool *pool = NULL;
	uint8_t buf[4097] = {0};
	pool_handle_t h;
	uint64_t seed = 99;
	int fd, i;

	assert_int_equal(pool_new_layout(&pool, NULL, 3), -EINVAL);
	assert_int_equal(pool_new_layout(&pool, NULL, 1), 0);
	assert_int_equal(pool_object_max(pool), 4096);
	assert_int_equal(pool_store(pool, buf, 4097, &h), -EINVAL);
	for (i = 0; i < NR; i++) {
		uint32_t len = (uint32_t)(test_rand_next(&seed) % 4096) + 1;

		assert_int_equal(object_store(pool, &objects[i], len, (uint64_t)i + 5), 0);
		/* Handles of this layout: 7 class bits, the frame above them. */
		assert_true(objects[i].handle >> 19 >= 2);
		if (i % 5 == 0)
			assert_int_equal(pool_ref(pool, objects[i].handle), 0);
	}
	fd = pool_open_readonly(pool);
	assert_true(fd >= 0);
	pool_free(pool);

	assert_int_equal(pool_recover(&pool, fd, NULL, &report), 0);
	assert_int_equal(report.objects, NR);
	assert_int_equal(report.frames_rejected, 0);
	assert_int_equal(pool_object_max(pool), 4096);
	assert_int_equal(pool_store(pool, buf, 4097, &h), -EINVAL);
	for (i = 0; i < NR; i++) {
		object_check(pool, &objects[i]);
		assert_int_equal(pool_refcount(pool, objects[i].handle), i % 5 == 0 ? 2 : 1);
	}
	release_all(pool, objects, NR);
	for (i = 0; i < NR; i += 5)
		assert_int_equal(pool_release(pool, objects[i].handle ? objects[i].handle : 0),
				 -EINVAL);
	pool_free(pool);
	close(fd);

	/* The current layout takes objects up to POOL_OBJECT_MAX. */
	assert_int_equal(pool_new(&pool, NULL), 0);
	assert_int_equal(pool_object_max(pool), POOL_OBJECT_MAX);
	assert_int_equal(object_store(pool, &objects[0], POOL_OBJECT_MAX, 3), 0);
	assert_int_equal(object_store(pool, &objects[1], 4097, 4), 0);
	object_check(pool, &objects[0]);
	object_check(pool, &objects[1]);
	pool_free(pool);
}

static void test_recover_after_free(void **state)
{
	enum { NR = 3000 };
	struct object *objects = calloc(NR, sizeof(*objects));
	struct pool_usage before, after, totals_usage;
	uint8_t token[POOL_TOKEN_SIZE], token_after[POOL_TOKEN_SIZE];
	struct pool_recover_report report;
	struct pool_totals *totals = NULL;
	struct pool *pool = NULL;
	struct snapshot snapshot;
	uint64_t live, references = 0, nr_live = 0;
	int fd, i;

	assert_int_equal(pool_totals_new(&totals), 0);
	assert_int_equal(pool_new(&pool, totals), 0);
	live = random_ops(pool, objects, NR, 30000, 777);
	for (i = 0; i < NR; i++) {
		if (!objects[i].handle)
			continue;
		nr_live++;
		references++;
		if (i % 7 == 0) {
			assert_int_equal(pool_ref(pool, objects[i].handle), 0);
			assert_int_equal(pool_ref(pool, objects[i].handle), 0);
			references += 2;
		}
	}
	pool_get_usage(pool, &before);
	pool_token(pool, token);
	fd = pool_open_readonly(pool);
	assert_true(fd >= 0);
	pool_free(pool);
	pool_totals_get(totals, &totals_usage);
	assert_int_equal(totals_usage.total_size, 0);

	assert_int_equal(pool_recover(&pool, fd, totals, &report), 0);
	assert_int_equal(report.objects, nr_live);
	assert_int_equal(report.references, references);
	assert_int_equal(report.bytes, live);
	assert_int_equal(report.frames, before.chunks);
	assert_int_equal(report.frames_rejected, 0);
	pool_get_usage(pool, &after);
	usage_assert_equal(&after, &before);
	pool_totals_get(totals, &totals_usage);
	usage_assert_equal(&totals_usage, &after);
	pool_token(pool, token_after);
	assert_memory_equal(token, token_after, sizeof(token));
	for (i = 0; i < NR; i++) {
		if (!objects[i].handle)
			continue;
		object_check(pool, &objects[i]);
		assert_int_equal(pool_refcount(pool, objects[i].handle), i % 7 == 0 ? 3 : 1);
	}
	/* The recovered pool hands out descriptors too. */
	close(fd);
	fd = pool_open_readonly(pool);
	assert_true(fd >= 0);

	snapshot_take(pool, &snapshot);
	assert_int_equal(snapshot.nr, nr_live);
	stress_after_recovery(pool, &snapshot, 2000, 5);
	snapshot_free(&snapshot);

	/* Free half, recover again: still exact. */
	for (i = 0; i < NR; i += 2) {
		if (!objects[i].handle)
			continue;
		while (pool_refcount(pool, objects[i].handle) > 0)
			assert_int_equal(pool_release(pool, objects[i].handle), 0);
		objects[i].handle = 0;
	}
	pool_get_usage(pool, &before);
	pool_free(pool);
	assert_int_equal(pool_recover(&pool, fd, totals, &report), 0);
	pool_get_usage(pool, &after);
	usage_assert_equal(&after, &before);
	for (i = 0; i < NR; i++) {
		if (objects[i].handle)
			object_check(pool, &objects[i]);
	}
	release_everything(pool, 0);
	pool_free(pool);
	assert_int_equal(pool_recover(&pool, fd, totals, &report), 0);
	assert_int_equal(report.objects, 0);
	assert_int_equal(report.frames, 0);
	pool_free(pool);
	pool_totals_get(totals, &totals_usage);
	assert_int_equal(totals_usage.total_size, 0);
	assert_int_equal(totals_usage.metadata_bytes, 0);
	pool_totals_free(totals);
	close(fd);
	free(objects);
}

/*
 * The referrers' side in the kill tests: a table in shared memory that
 * outlives the child, updated in the order pool.h asks for (a handle is
 * recorded after the store returned, a reference forgotten before it is
 * released).
 */
struct kill_entry {
	pool_handle_t handle; /* 0: none; written last on store, first on the last release */
	uint32_t len;
	uint32_t refs; /* references the table holds */
	uint64_t seed;
};

static void entry_store(struct pool *pool, struct kill_entry *e, uint32_t len, uint64_t seed)
{
	uint8_t buf[4096];
	pool_handle_t handle;

	object_bytes(buf, len, seed);
	if (pool_store(pool, buf, len, &handle) < 0)
		_exit(10);
	e->len = len;
	e->seed = seed;
	e->refs = 1;
	__atomic_store_n(&e->handle, handle, __ATOMIC_RELEASE);
}

static void entry_ref(struct pool *pool, struct kill_entry *e)
{
	if (pool_ref(pool, e->handle) < 0)
		_exit(11);
	__atomic_store_n(&e->refs, e->refs + 1, __ATOMIC_RELEASE);
}

static void entry_release(struct pool *pool, struct kill_entry *e)
{
	pool_handle_t handle = e->handle;

	if (e->refs == 1)
		__atomic_store_n(&e->handle, 0, __ATOMIC_RELEASE);
	__atomic_store_n(&e->refs, e->refs - 1, __ATOMIC_RELEASE);
	if (pool_release(pool, handle) < 0)
		_exit(12);
}

static void entry_migrate(struct pool *pool, struct kill_entry *e)
{
	pool_handle_t copy, old = e->handle;

	if (pool_migrate_copy(pool, old, e->len, &copy) < 0)
		_exit(13);
	__atomic_store_n(&e->handle, copy, __ATOMIC_RELEASE);
	if (pool_release(pool, old) < 0)
		_exit(14);
}

static int entry_load(struct pool *pool, const struct kill_entry *e)
{
	uint8_t expect[4096], got[4096];

	object_bytes(expect, e->len, e->seed);
	if (pool_load(pool, e->handle, got, e->len) < 0)
		return -EINVAL;
	return memcmp(got, expect, e->len) ? -EIO : 0;
}

struct kill_ref {
	pool_handle_t handle;
	uint32_t refs;
};

struct excess_walk {
	const struct kill_ref *refs;
	size_t nr;
	uint64_t excess;
};

static int kill_ref_compare(const void *a, const void *b)
{
	pool_handle_t x = ((const struct kill_ref *)a)->handle;
	pool_handle_t y = ((const struct kill_ref *)b)->handle;

	return (x > y) - (x < y);
}

static int excess_count(pool_handle_t handle, size_t len, unsigned refcount, void *userdata)
{
	struct excess_walk *w = userdata;
	struct kill_ref key = {handle, 0};
	const struct kill_ref *found = bsearch(&key, w->refs, w->nr, sizeof(key), kill_ref_compare);
	uint32_t logged = found ? found->refs : 0;

	assert_true(refcount >= logged);
	w->excess += refcount - logged;
	return 0;
}

/*
 * After a kill: every object the table refers to loads with its bytes and
 * has at least the table's references; returns the references nobody
 * holds (leaks), then checks new stores and empties the pool.
 */
static uint64_t verify_after_kill(struct pool *pool, const struct kill_entry *entries, size_t nr,
				  uint64_t seed)
{
	struct kill_ref *refs = calloc(nr, sizeof(*refs));
	struct excess_walk w = {.refs = refs};
	struct snapshot snapshot;
	size_t i;

	assert_non_null(refs);
	for (i = 0; i < nr; i++) {
		const struct kill_entry *e = &entries[i];

		if (!e->handle || !e->refs)
			continue;
		assert_int_equal(entry_load(pool, e), 0);
		assert_true(pool_refcount(pool, e->handle) >= (int)e->refs);
		refs[w.nr++] = (struct kill_ref){e->handle, e->refs};
	}
	qsort(refs, w.nr, sizeof(*refs), kill_ref_compare);
	for (i = 1; i < w.nr; i++)
		assert_true(refs[i - 1].handle != refs[i].handle);
	assert_int_equal(pool_walk(pool, excess_count, &w), 0);

	snapshot_take(pool, &snapshot);
	stress_after_recovery(pool, &snapshot, 48, seed);
	snapshot_free(&snapshot);
	for (i = 0; i < nr; i++) {
		if (entries[i].handle && entries[i].refs)
			assert_int_equal(entry_load(pool, &entries[i]), 0);
	}
	release_everything(pool, 0);
	free(refs);
	return w.excess;
}

/*
 * A fixed sequence that goes through every kind of ordered write: chunks
 * of nine classes (the eighth grows the arena), stores into free-chain and
 * bump slots, references, releases of shared and unshared objects, a class
 * emptied (its frame punched) and a new class on the lowest free frame,
 * migrations.
 */
enum { SCENARIO_ENTRIES = 18 };

static void scenario(struct pool *pool, struct kill_entry *entries)
{
	int i;

	for (i = 0; i < 9; i++)
		entry_store(pool, &entries[i], 100 + 450 * (uint32_t)i, (uint64_t)i + 1);
	for (i = 9; i < 13; i++)
		entry_store(pool, &entries[i], 90 + (uint32_t)i, (uint64_t)i + 1);
	entry_ref(pool, &entries[9]);
	entry_ref(pool, &entries[3]);
	entry_release(pool, &entries[9]);	  /* shared: 2 -> 1 */
	entry_release(pool, &entries[10]);	  /* unshared: a free slot */
	entry_store(pool, &entries[10], 120, 99); /* and the slot again */
	entry_release(pool, &entries[3]);
	entry_release(pool, &entries[3]);	   /* class emptied: its frame goes */
	entry_store(pool, &entries[13], 3000, 14); /* a new class takes that frame */
	entry_migrate(pool, &entries[11]);
	entry_migrate(pool, &entries[5]); /* the only object of its chunk */
	for (i = 14; i < SCENARIO_ENTRIES; i++)
		entry_store(pool, &entries[i], 4096, (uint64_t)i + 1);
}

/* The child of the SIGKILL test: random operations on the table until killed. */
static void kill_child(struct pool *pool, struct kill_entry *entries, size_t nr, uint64_t seed)
{
	for (;;) {
		uint64_t r = test_rand_next(&seed);
		struct kill_entry *e = &entries[r % nr];

		if (!e->handle) {
			entry_store(pool, e, (uint32_t)((r >> 20) % 4096) + 1, r);
			continue;
		}
		switch ((r >> 40) % 8) {
		case 0:
		case 1:
			if (e->refs < 4)
				entry_ref(pool, e);
			break;
		case 2:
		case 3:
		case 4:
			entry_release(pool, e);
			break;
		case 5:
			if (e->refs == 1)
				entry_migrate(pool, e);
			break;
		default:
			if (entry_load(pool, e) < 0)
				_exit(20);
		}
	}
}

/* The child of the crash-point test: the scenario, killed at ordered write `point`. */
static void scenario_child(struct pool *pool, struct kill_entry *entries, size_t nr, uint64_t point)
{
	pool_inject_crash(pool, (int64_t)point);
	scenario(pool, entries);
	_exit(0);
}

/*
 * Starts a child that plays the daemon on a new arena and a cleared table
 * (body never returns); the parent keeps a read-only descriptor, as a
 * client would, and drops its own copy of the pool.
 */
static pid_t daemon_child_start(struct kill_entry *entries, size_t nr,
				void (*body)(struct pool *, struct kill_entry *, size_t, uint64_t),
				uint64_t arg, int *fd)
{
	struct pool *pool = NULL;
	pid_t pid;

	memset(entries, 0, nr * sizeof(*entries));
	assert_int_equal(pool_new(&pool, NULL), 0);
	*fd = pool_open_readonly(pool);
	assert_true(*fd >= 0);
	pid = fork();
	assert_true(pid >= 0);
	if (pid == 0)
		body(pool, entries, nr, arg);
	pool_free(pool); /* the parent's copy; the child's is the daemon's */
	return pid;
}

/* A kill at each of the pool's ordered writes in turn, then recovery. */
static void test_recover_crash_points(void **state)
{
	size_t bytes = SCENARIO_ENTRIES * sizeof(struct kill_entry);
	struct kill_entry *entries =
	    mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	struct pool_recover_report report;
	struct pool *pool = NULL;
	int64_t point;
	bool completed = false;

	assert_ptr_not_equal(entries, MAP_FAILED);
	for (point = 0; !completed; point++) {
		uint64_t excess;
		pid_t pid;
		int fd, status;

		assert_true(point < 20000);
		pid = daemon_child_start(entries, SCENARIO_ENTRIES, scenario_child, (uint64_t)point,
					 &fd);
		assert_int_equal(waitpid(pid, &status, 0), pid);
		if (WIFEXITED(status)) {
			assert_int_equal(WEXITSTATUS(status), 0);
			completed = true;
		} else {
			assert_true(WIFSIGNALED(status));
			assert_int_equal(WTERMSIG(status), SIGKILL);
		}
		assert_int_equal(pool_recover(&pool, fd, NULL, &report), 0);
		assert_int_equal(report.frames_rejected, 0);
		excess = verify_after_kill(pool, entries, SCENARIO_ENTRIES, (uint64_t)point);
		assert_true(excess <= 1);
		if (completed)
			assert_int_equal(excess, 0);
		pool_free(pool);
		close(fd);
	}
	/* The scenario did go through many ordered writes. */
	print_message("killed at each of %lld ordered writes\n", (long long)point - 1);
	assert_true(point > 100);
	munmap(entries, bytes);
}

/* SIGKILLed at random moments while the parent holds a read-only descriptor. */
static void test_recover_sigkill(void **state)
{
	enum { NR = 1500, ROUNDS = 16 };
	size_t bytes = NR * sizeof(struct kill_entry);
	struct kill_entry *entries =
	    mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	struct pool_recover_report report;
	struct pool *pool = NULL;
	uint64_t seed = 0x5eed;
	int round;

	assert_ptr_not_equal(entries, MAP_FAILED);
	for (round = 0; round < ROUNDS; round++) {
		uint64_t r = test_rand_next(&seed);
		pid_t pid;
		int fd, status;

		pid = daemon_child_start(entries, NR, kill_child, r, &fd);
		/* Early (while the arena grows) in some rounds, later in others. */
		usleep((useconds_t)(round % 4 == 0 ? r % 2000 : r % 30000));
		assert_int_equal(kill(pid, SIGKILL), 0);
		assert_int_equal(waitpid(pid, &status, 0), pid);
		assert_true(WIFSIGNALED(status)); /* not an _exit: the child found no error */
		assert_int_equal(pool_recover(&pool, fd, NULL, &report), 0);
		assert_int_equal(report.frames_rejected, 0);
		assert_true(verify_after_kill(pool, entries, NR, r) <= 1);
		pool_free(pool);
		close(fd);
	}
	munmap(entries, bytes);
}

/* Writes the pages of an arena image that are not all zeros: holes stay holes. */
static void image_write(int fd, const uint8_t *image, size_t size)
{
	static const uint8_t zeros[4096];
	size_t at;

	for (at = 0; at < size; at += sizeof(zeros)) {
		if (memcmp(image + at, zeros, sizeof(zeros)) != 0)
			assert_int_equal(pwrite(fd, image + at, sizeof(zeros), (off_t)at),
					 (ssize_t)sizeof(zeros));
	}
}

/*
 * Recovery of damaged arenas: bytes of the header, of frame headers and
 * slot metadata, whole frames, the file size.  It must return 0 or
 * -EINVAL, never crash or read out of bounds; what it takes back must
 * load, and must stay intact under new stores.
 */
static void test_recover_fuzz(void **state)
{
	enum { NR = 300, ITERATIONS = 96, META_BYTES = 8192 };
	struct object *objects = calloc(NR, sizeof(*objects));
	struct pool_recover_report report;
	uint64_t seed = 0xf00d, rejected = 0, recovered = 0, refused = 0;
	struct pool *pool = NULL;
	uint8_t *image, junk[META_BYTES];
	uint32_t nr_frames;
	struct stat st;
	int fd, i, iteration;

	/* A real arena: objects of sixteen classes, some shared, some freed. */
	assert_int_equal(pool_new(&pool, NULL), 0);
	for (i = 0; i < NR; i++) {
		uint64_t r = test_rand_next(&seed);

		assert_int_equal(
		    object_store(pool, &objects[i],
				 (uint32_t)(r % 16) * 256 + 1 + (uint32_t)(r >> 32) % 31, r),
		    0);
	}
	for (i = 0; i < NR; i += 3)
		assert_int_equal(pool_release(pool, objects[i].handle), 0);
	for (i = 1; i < NR; i += 5) {
		if (i % 3)
			assert_int_equal(pool_ref(pool, objects[i].handle), 0);
	}
	fd = pool_open_readonly(pool);
	pool_free(pool);
	assert_int_equal(fstat(fd, &st), 0);
	image = malloc((size_t)st.st_size);
	assert_non_null(image);
	assert_int_equal(pread(fd, image, (size_t)st.st_size, 0), st.st_size);
	close(fd);
	nr_frames = (uint32_t)(st.st_size / ARENA_FRAME_SIZE);

	for (iteration = 0; iteration < ITERATIONS; iteration++) {
		uint64_t r = test_rand_next(&seed);
		uint32_t frame = 1 + (uint32_t)(r % (nr_frames - 1));
		unsigned mode = (unsigned)(iteration % 8), k, n = 1 + (unsigned)((r >> 32) % 16);
		off_t base = (off_t)frame * ARENA_FRAME_SIZE;
		bool header_hit = false;
		struct snapshot snapshot;
		int result;

		fd = memfd_make("uzswap-arena", 0600, st.st_size);
		image_write(fd, image, (size_t)st.st_size);
		switch (mode) {
		case 0: /* the arena header: n distinct bytes flipped */
			for (k = 0; k < n; k++) {
				uint8_t byte = (uint8_t)(test_rand_next(&seed) | 1);
				off_t at = (off_t)((r + k) % ARENA_HEADER_LEN);

				assert_int_equal(pread(fd, junk, 1, at), 1);
				junk[0] ^= byte;
				assert_int_equal(pwrite(fd, junk, 1, at), 1);
			}
			header_hit = true;
			break;
		case 1: /* a few bytes of frame headers and slot metadata */
		case 2:
			for (k = 0; k < n; k++) {
				uint8_t byte = (uint8_t)test_rand_next(&seed);
				uint32_t f =
				    1 + (uint32_t)(test_rand_next(&seed) % (nr_frames - 1));
				off_t at = (off_t)f * ARENA_FRAME_SIZE +
					   (off_t)(test_rand_next(&seed) % (mode == 1 ? 16 : 128));

				assert_int_equal(pwrite(fd, &byte, 1, at), 1);
			}
			break;
		case 3: /* a frame's whole header and metadata */
			test_fill_random(junk, sizeof(junk), &seed);
			assert_int_equal(pwrite(fd, junk, sizeof(junk), base),
					 (ssize_t)sizeof(junk));
			break;
		case 4: /* metadata only, the header kept */
			test_fill_random(junk, sizeof(junk), &seed);
			assert_int_equal(pwrite(fd, junk, sizeof(junk) - 16, base + 16),
					 (ssize_t)sizeof(junk) - 16);
			break;
		case 5: /* a header copied from another frame */
			assert_int_equal(pwrite(fd, image + ARENA_FRAME_SIZE, 16, base), 16);
			break;
		case 6: /* random bytes anywhere past the arena header */
			for (k = 0; k < 64; k++) {
				uint8_t byte = (uint8_t)test_rand_next(&seed);
				off_t at = ARENA_HEADER_LEN +
					   (off_t)(test_rand_next(&seed) %
						   (uint64_t)(st.st_size - ARENA_HEADER_LEN));

				assert_int_equal(pwrite(fd, &byte, 1, at), 1);
			}
			break;
		default: /* a shorter file, or a size no arena has */
			assert_int_equal(ftruncate(fd, r & 1 ? base : base + 4096), 0);
			header_hit = !(r & 1);
		}
		result = pool_recover(&pool, fd, NULL, &report);
		if (header_hit) {
			assert_int_equal(result, -EINVAL);
			refused++;
			close(fd);
			continue;
		}
		assert_int_equal(result, 0);
		recovered++;
		rejected += report.frames_rejected;
		snapshot_take(pool, &snapshot);
		assert_int_equal(snapshot.nr, report.objects);
		stress_after_recovery(pool, &snapshot, 100, r);
		snapshot_free(&snapshot);
		release_everything(pool, report.frames_rejected);
		pool_free(pool);
		close(fd);
	}
	/* Both outcomes were seen, and some frames were rejected. */
	assert_true(refused > 0 && recovered > 0 && rejected > 0);

	/* Nothing but noise. */
	fd = memfd_make("uzswap-arena", 0600, 4 * ARENA_FRAME_SIZE);
	for (i = 0; i < 4 * (int)(ARENA_FRAME_SIZE / sizeof(junk)); i++) {
		test_fill_random(junk, sizeof(junk), &seed);
		assert_int_equal(pwrite(fd, junk, sizeof(junk), (off_t)i * (off_t)sizeof(junk)),
				 (ssize_t)sizeof(junk));
	}
	assert_int_equal(pool_recover(&pool, fd, NULL, &report), -EINVAL);
	close(fd);
	free(image);
	free(objects);
}

struct walk_count {
	struct pool *pool;
	uint64_t objects, references;
	bool release;
};

static int walk_count(pool_handle_t handle, size_t len, unsigned refcount, void *userdata)
{
	struct walk_count *w = userdata;

	w->objects++;
	w->references += refcount;
	if (w->release)
		assert_int_equal(pool_release(w->pool, handle), 0);
	return 0;
}

static int walk_stop(pool_handle_t handle, size_t len, unsigned refcount, void *userdata)
{
	(*(int *)userdata)++;
	return 7;
}

static void test_walk(void **state)
{
	enum { NR = 500 };
	struct object objects[NR] = {0};
	struct pool *pool = NULL;
	struct walk_count w;
	int i, calls = 0;

	assert_int_equal(pool_new(&pool, NULL), 0);
	assert_int_equal(pool_walk(pool, walk_stop, &calls), 0);
	assert_int_equal(calls, 0);
	for (i = 0; i < NR; i++) {
		assert_int_equal(
		    object_store(pool, &objects[i], (uint32_t)(i * 37 % 4096) + 1, (uint64_t)i), 0);
		if (i % 4 == 0)
			assert_int_equal(pool_ref(pool, objects[i].handle), 0);
	}
	w = (struct walk_count){.pool = pool};
	assert_int_equal(pool_walk(pool, walk_count, &w), 0);
	assert_int_equal(w.objects, NR);
	assert_int_equal(w.references, NR + NR / 4);
	assert_int_equal(pool_walk(pool, walk_stop, &calls), 7);
	assert_int_equal(calls, 1);
	/* Releasing from the callback: the shared ones are left with one reference. */
	w = (struct walk_count){.pool = pool, .release = true};
	assert_int_equal(pool_walk(pool, walk_count, &w), 0);
	assert_int_equal(w.objects, NR);
	w = (struct walk_count){.pool = pool};
	assert_int_equal(pool_walk(pool, walk_count, &w), 0);
	assert_int_equal(w.objects, NR / 4);
	assert_int_equal(w.references, NR / 4);
	for (i = 0; i < NR; i += 4)
		object_check(pool, &objects[i]);
	release_everything(pool, 0);
	pool_free(pool);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_random_single),
	    cmocka_unit_test(test_random_threads),
	    cmocka_unit_test(test_pages_through_compressor),
	    cmocka_unit_test(test_bad_handles_and_reuse),
	    cmocka_unit_test(test_refcounts),
	    cmocka_unit_test(test_exhaustion_hook),
	    cmocka_unit_test(test_exhaustion_rlimit),
	    cmocka_unit_test(test_exhaustion_fsize),
	    cmocka_unit_test(test_compaction),
	    cmocka_unit_test(test_compaction_shared),
	    cmocka_unit_test(test_overhead_text),
	    cmocka_unit_test(test_arena_file),
	    cmocka_unit_test(test_walk),
	    cmocka_unit_test(test_recover_refuses),
	    cmocka_unit_test(test_layout_v1),
	    cmocka_unit_test(test_recover_after_free),
	    cmocka_unit_test(test_recover_crash_points),
	    cmocka_unit_test(test_recover_sigkill),
	    cmocka_unit_test(test_recover_fuzz),
	};

	if (getenv("TEST_POOL_FILTER"))
		cmocka_set_test_filter(getenv("TEST_POOL_FILTER"));
	return cmocka_run_group_tests(tests, NULL, NULL);
}
