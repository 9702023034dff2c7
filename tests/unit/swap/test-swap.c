/* SPDX-License-Identifier: MIT */
/*
 * Unit tests of the swap file backend (daemon/swap/swapfile.c): data
 * round trips byte for byte through both the O_DIRECT and the buffered
 * path, allocation from two threads, space reuse, -ENOSPC, and injected
 * write errors, read errors and short transfers reaching the callbacks.
 * Swap files live in a temporary directory removed by the group teardown,
 * whatever the tests did.
 */
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "swap/swapfile.h"

#define KIB 1024ULL
#define MIB (1024ULL * 1024)

static char test_dir[] = "/var/tmp/uzswap-test-swap-XXXXXX";
static unsigned path_counter;

/* ---- helpers ------------------------------------------------------------- */

static void next_path(char *buf, size_t size)
{
	snprintf(buf, size, "%s/swapfile-%u", test_dir, path_counter++);
}

static uint64_t rng_next(uint64_t *state)
{
	*state ^= *state << 13;
	*state ^= *state >> 7;
	*state ^= *state << 17;
	return *state;
}

/* A length distributed like compressed pages: mostly 600..3000, some tiny, some full. */
static size_t random_len(uint64_t *rng)
{
	uint64_t r = rng_next(rng) % 100;

	if (r < 5)
		return 1 + rng_next(rng) % 64;
	if (r < 10)
		return 4096;
	return 600 + rng_next(rng) % 2400;
}

static void fill_object(unsigned char *buf, size_t len, uint64_t seed)
{
	uint64_t s = seed * 0x9e3779b97f4a7c15ULL + 1;

	for (size_t i = 0; i < len; i++)
		buf[i] = (unsigned char)(rng_next(&s) >> 24);
}

static struct swap *make_swap(uint64_t size, unsigned flags)
{
	char path[256];
	struct swap_config config = {.path = path, .size = size, .flags = flags};
	struct swap *swap = NULL;

	next_path(path, sizeof(path));
	assert_int_equal(swap_new(&swap, &config), 0);
	return swap;
}

/* Can files in the test directory be opened with O_DIRECT? */
static bool dir_supports_direct_io(void)
{
	char path[256];
	int fd;

	snprintf(path, sizeof(path), "%s/probe-direct", test_dir);
	fd = open(path, O_RDWR | O_CREAT | O_DIRECT, 0600);
	if (fd < 0)
		return false;
	close(fd);
	unlink(path);
	return true;
}

/* Objects of a test with their expected bytes. */
struct object_set {
	size_t count;
	struct swap_object *objs;
	unsigned char **data;
	uint64_t *seed;
};

static void object_set_init(struct object_set *set, size_t count, uint64_t *rng)
{
	set->count = count;
	set->objs = calloc(count, sizeof(*set->objs));
	set->data = calloc(count, sizeof(*set->data));
	set->seed = calloc(count, sizeof(*set->seed));
	assert_non_null(set->objs);
	assert_non_null(set->data);
	assert_non_null(set->seed);
	for (size_t i = 0; i < count; i++) {
		size_t len = random_len(rng);

		set->seed[i] = rng_next(rng);
		set->data[i] = malloc(len);
		assert_non_null(set->data[i]);
		fill_object(set->data[i], len, set->seed[i]);
		set->objs[i].data = set->data[i];
		set->objs[i].len = len;
	}
}

static void object_set_release(struct object_set *set)
{
	for (size_t i = 0; i < set->count; i++)
		free(set->data[i]);
	free(set->objs);
	free(set->data);
	free(set->seed);
}

/* Wait for the ring's eventfd and reap, the way the daemon's loop will. */
static void poll_and_reap(struct swap_io *io)
{
	struct pollfd pfd = {.fd = swap_io_fd(io), .events = POLLIN};
	int r;

	/* The timeout only guards against a hang; nothing is asserted on time. */
	r = poll(&pfd, 1, 60000);
	assert_int_equal(r, 1);
	assert_true(swap_io_reap(io) >= 0);
}

struct write_state {
	size_t batches_done;
	size_t objects_ok;
	int first_error;
};

static void count_write(struct swap_object *objs, size_t count, int result, void *userdata)
{
	struct write_state *state = userdata;

	state->batches_done++;
	for (size_t i = 0; i < count; i++)
		if (objs[i].result == 0)
			state->objects_ok++;
	if (result < 0 && !state->first_error)
		state->first_error = result;
}

/* Write all objects of set asynchronously, batch objects at a time. */
static void write_all_async(struct swap_io *io, struct object_set *set, size_t batch)
{
	struct write_state state = {0};
	size_t batches = 0;

	for (size_t i = 0; i < set->count; i += batch) {
		size_t n = set->count - i < batch ? set->count - i : batch;

		assert_int_equal(swap_io_write(io, &set->objs[i], n, count_write, &state), 0);
		batches++;
	}
	while (state.batches_done < batches)
		poll_and_reap(io);
	assert_int_equal(state.first_error, 0);
	assert_int_equal(state.objects_ok, set->count);
}

struct read_check {
	const unsigned char *expected;
	size_t len;
	bool done;
	int result;
	bool matched;
};

static void check_read(int result, const void *data, size_t len, void *userdata)
{
	struct read_check *check = userdata;

	check->done = true;
	check->result = result;
	check->matched =
	    result == 0 && len == check->len && memcmp(data, check->expected, len) == 0;
}

/* Read every object back asynchronously (lent buffers) and compare every byte. */
static void verify_all_async(struct swap_io *io, struct object_set *set)
{
	struct read_check *checks = calloc(set->count, sizeof(*checks));
	size_t done = 0;

	assert_non_null(checks);
	for (size_t i = 0; i < set->count; i++) {
		checks[i].expected = set->data[i];
		checks[i].len = set->objs[i].len;
		assert_int_equal(swap_io_read(io, set->objs[i].slot, set->objs[i].len, NULL,
					      check_read, &checks[i]),
				 0);
	}
	while (swap_io_inflight(io))
		poll_and_reap(io);
	for (size_t i = 0; i < set->count; i++) {
		assert_true(checks[i].done);
		assert_int_equal(checks[i].result, 0);
		assert_true(checks[i].matched);
		done++;
	}
	assert_int_equal(done, set->count);
	free(checks);
}

/* Read every object back synchronously into a caller buffer. */
static void verify_all_sync(struct swap_io *io, struct object_set *set)
{
	unsigned char buf[SWAP_OBJECT_MAX];

	for (size_t i = 0; i < set->count; i++) {
		memset(buf, 0xa5, sizeof(buf));
		assert_int_equal(swap_io_read_sync(io, set->objs[i].slot, set->objs[i].len, buf),
				 0);
		assert_memory_equal(buf, set->data[i], set->objs[i].len);
	}
}

/* ---- tests --------------------------------------------------------------- */

static void run_roundtrip(unsigned flags)
{
	struct swap *swap = make_swap(64 * MIB, flags);
	struct swap_io *io = NULL;
	struct object_set set;
	struct swap_stats stats;
	struct swap_usage usage;
	struct swap_info info;
	uint64_t rng = 42, disk = 0;

	swap_get_info(swap, &info);
	if (flags & SWAP_FLAG_BUFFERED)
		assert_false(info.direct_io);
	else
		assert_int_equal(info.direct_io, dir_supports_direct_io());
	assert_int_equal(info.file_size, 64 * MIB);

	assert_int_equal(swap_io_new(&io, swap), 0);
	object_set_init(&set, 3000, &rng);
	write_all_async(io, &set, 32);
	verify_all_async(io, &set);
	verify_all_sync(io, &set);

	for (size_t i = 0; i < set.count; i++) {
		assert_true(set.objs[i].slot < 1ULL << SWAP_SLOT_BITS);
		assert_true(swap_slot_disk_bytes(swap, set.objs[i].slot) >= set.objs[i].len);
		assert_true(swap_slot_disk_bytes(swap, set.objs[i].slot) <
			    set.objs[i].len + info.granule_size);
		disk += swap_slot_disk_bytes(swap, set.objs[i].slot);
	}
	swap_get_stats(swap, &stats);
	assert_int_equal(stats.writes, set.count);
	assert_int_equal(stats.reads, 2 * set.count);
	assert_int_equal(stats.write_batches, (set.count + 31) / 32);
	assert_true(stats.write_ios < stats.writes); /* batches were coalesced */
	assert_int_equal(stats.slots_in_use, set.count);
	assert_int_equal(stats.bytes_on_disk, disk);
	assert_int_equal(stats.io_errors, 0);

	swap_get_usage(swap, &usage);
	assert_int_equal(usage.used_bytes, disk);
	assert_int_equal(usage.slots_in_use, set.count);
	assert_int_equal(usage.used_bytes + usage.free_bytes, usage.file_size);
	/* Compressed objects take less than a page each on disk. */
	assert_true(usage.bytes_per_slot_milli < 4096 * 1000);

	for (size_t i = 0; i < set.count; i++)
		assert_int_equal(swap_slot_free(swap, set.objs[i].slot), 0);
	swap_get_usage(swap, &usage);
	assert_int_equal(usage.used_bytes, 0);
	assert_int_equal(usage.slots_in_use, 0);
	assert_int_equal(usage.free_bytes, usage.file_size);

	object_set_release(&set);
	swap_io_free(io);
	swap_free(swap);
}

static void test_roundtrip_direct(void **state)
{
	run_roundtrip(0);
}

static void test_roundtrip_buffered(void **state)
{
	run_roundtrip(SWAP_FLAG_BUFFERED);
}

struct thread_arg {
	struct swap *swap;
	struct object_set set;
	uint64_t rng;
};

static void *thread_writer(void *data)
{
	struct thread_arg *arg = data;
	struct swap_io *io = NULL;

	if (swap_io_new(&io, arg->swap) < 0)
		return (void *)1;
	/* Mixed: batched writes and single allocations, interleaved with the other thread. */
	for (size_t i = 0; i < arg->set.count; i += 16) {
		size_t n = arg->set.count - i < 16 ? arg->set.count - i : 16;

		if (swap_io_write_sync(io, &arg->set.objs[i], n) < 0)
			return (void *)1;
	}
	swap_io_free(io);
	return NULL;
}

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

	return x < y ? -1 : x > y;
}

static void test_two_threads(void **state)
{
	struct swap *swap = make_swap(32 * MIB, 0);
	struct thread_arg args[2] = {{.swap = swap, .rng = 1}, {.swap = swap, .rng = 2}};
	pthread_t threads[2];
	struct swap_io *io = NULL;
	struct swap_info info;
	uint64_t *extents;
	size_t total = 0, k = 0;

	for (int t = 0; t < 2; t++) {
		object_set_init(&args[t].set, 2000, &args[t].rng);
		total += args[t].set.count;
	}
	for (int t = 0; t < 2; t++)
		assert_int_equal(pthread_create(&threads[t], NULL, thread_writer, &args[t]), 0);
	for (int t = 0; t < 2; t++) {
		void *ret;

		assert_int_equal(pthread_join(threads[t], &ret), 0);
		assert_null(ret);
	}

	/* No two objects share a granule. */
	swap_get_info(swap, &info);
	extents = calloc(total, sizeof(*extents));
	assert_non_null(extents);
	for (int t = 0; t < 2; t++)
		for (size_t i = 0; i < args[t].set.count; i++)
			extents[k++] = args[t].set.objs[i].slot;
	qsort(extents, total, sizeof(*extents), cmp_u64);
	for (size_t i = 1; i < total; i++) {
		uint64_t prev_end = (extents[i - 1] >> 3) +
				    swap_slot_disk_bytes(swap, extents[i - 1]) / info.granule_size;

		assert_true(prev_end <= extents[i] >> 3);
	}
	free(extents);

	/* Every byte of both threads' data is intact. */
	assert_int_equal(swap_io_new(&io, swap), 0);
	for (int t = 0; t < 2; t++) {
		verify_all_async(io, &args[t].set);
		object_set_release(&args[t].set);
	}
	swap_io_free(io);
	swap_free(swap);
}

/*
 * One thread allocates, the other frees what the first allocated (clusters
 * the allocator still owns included) while allocating and freeing its own.
 * The file is small, so space must flow back for the allocator to go on.
 */
#define CROSS_OBJECTS 20000

struct cross_state {
	struct swap *swap;
	uint64_t slots[CROSS_OBJECTS];
	int ready[CROSS_OBJECTS];
	size_t freed; /* objects of the allocator the freer has freed */
	int stop;     /* the allocator gave up: the freer must not wait for it */
};

static void *cross_give_up(struct cross_state *cs)
{
	__atomic_store_n(&cs->stop, 1, __ATOMIC_RELEASE);
	return (void *)1;
}

static void *cross_allocator(void *data)
{
	struct cross_state *cs = data;
	struct swap_io *io = NULL;
	uint64_t rng = 99;

	if (swap_io_new(&io, cs->swap) < 0)
		return cross_give_up(cs);
	for (size_t i = 0; i < CROSS_OBJECTS; i++) {
		size_t len = random_len(&rng);
		unsigned starved = 0;
		int r;

		/* -ENOSPC is fine while the freer lags, not once it has freed everything. */
		while ((r = swap_slot_alloc(io, len, &cs->slots[i])) == -ENOSPC) {
			if (__atomic_load_n(&cs->freed, __ATOMIC_ACQUIRE) == i && ++starved > 1000)
				return cross_give_up(cs);
			sched_yield();
		}
		if (r < 0)
			return cross_give_up(cs);
		__atomic_store_n(&cs->ready[i], 1, __ATOMIC_RELEASE);
	}
	swap_io_free(io);
	return NULL;
}

static void *cross_freer(void *data)
{
	struct cross_state *cs = data;
	struct swap_io *io = NULL;
	uint64_t own[16] = {0};
	bool own_used[16] = {false};
	uint64_t rng = 77;

	if (swap_io_new(&io, cs->swap) < 0)
		return (void *)1;
	for (size_t i = 0; i < CROSS_OBJECTS; i++) {
		size_t k = i % 16;

		while (!__atomic_load_n(&cs->ready[i], __ATOMIC_ACQUIRE)) {
			if (__atomic_load_n(&cs->stop, __ATOMIC_ACQUIRE))
				return (void *)1;
			sched_yield();
		}
		if (swap_slot_free(cs->swap, cs->slots[i]) < 0)
			return (void *)1;
		__atomic_store_n(&cs->freed, i + 1, __ATOMIC_RELEASE);
		if (own_used[k] && swap_slot_free(cs->swap, own[k]) < 0)
			return (void *)1;
		own_used[k] = swap_slot_alloc(io, random_len(&rng), &own[k]) == 0;
	}
	for (size_t k = 0; k < 16; k++)
		if (own_used[k] && swap_slot_free(cs->swap, own[k]) < 0)
			return (void *)1;
	swap_io_free(io);
	return NULL;
}

static void test_cross_thread_free(void **state)
{
	struct cross_state *cs = calloc(1, sizeof(*cs));
	struct swap_usage usage;
	struct swap_stats stats;
	pthread_t threads[2];
	void *ret[2];

	assert_non_null(cs);
	cs->swap = make_swap(2 * MIB, 0);
	assert_int_equal(pthread_create(&threads[0], NULL, cross_allocator, cs), 0);
	assert_int_equal(pthread_create(&threads[1], NULL, cross_freer, cs), 0);
	assert_int_equal(pthread_join(threads[0], &ret[0]), 0);
	assert_int_equal(pthread_join(threads[1], &ret[1]), 0);
	assert_null(ret[0]);
	assert_null(ret[1]);

	/* Everything came back, and every cluster is on the free list again. */
	swap_get_stats(cs->swap, &stats);
	assert_int_equal(stats.slots_in_use, 0);
	assert_int_equal(stats.bytes_on_disk, 0);
	swap_get_usage(cs->swap, &usage);
	assert_int_equal(usage.used_bytes, 0);
	assert_int_equal(usage.clusters_in_use, 0);
	assert_int_equal(usage.free_cluster_bytes, usage.file_size);
	swap_free(cs->swap);
	free(cs);
}

static void test_free_and_reuse(void **state)
{
	struct swap *swap = make_swap(1 * MIB, 0);
	struct swap_io *io = NULL;
	struct swap_usage usage;
	struct swap_info info;
	uint64_t slots[512];
	size_t lens[512];
	uint64_t rng = 7, clusters_first;
	size_t live = 0, cycles_bytes = 0;

	swap_get_info(swap, &info);
	assert_int_equal(swap_io_new(&io, swap), 0);

	/* Same sizes freed and allocated again: not one more cluster. */
	for (size_t i = 0; i < 64; i++) {
		lens[i] = random_len(&rng);
		assert_int_equal(swap_slot_alloc(io, lens[i], &slots[i]), 0);
	}
	swap_get_usage(swap, &usage);
	clusters_first = usage.clusters_in_use;
	for (int round = 0; round < 20; round++) {
		for (size_t i = 0; i < 64; i++)
			assert_int_equal(swap_slot_free(swap, slots[i]), 0);
		for (size_t i = 0; i < 64; i++)
			assert_int_equal(swap_slot_alloc(io, lens[i], &slots[i]), 0);
		swap_get_usage(swap, &usage);
		assert_true(usage.clusters_in_use <= clusters_first);
		assert_int_equal(usage.free_cluster_bytes + usage.partial_bytes +
				     usage.fragmented_bytes + usage.owned_free_bytes,
				 usage.free_bytes);
	}
	for (size_t i = 0; i < 64; i++)
		assert_int_equal(swap_slot_free(swap, slots[i]), 0);

	/*
	 * Random churn at about half occupancy: many times the file's size
	 * goes through it, which only works if freed granules are reused.
	 */
	for (size_t i = 0; i < 512; i++)
		slots[i] = UINT64_MAX;
	for (int round = 0; round < 400; round++) {
		size_t i = rng_next(&rng) % 512;

		if (slots[i] != UINT64_MAX) {
			assert_int_equal(swap_slot_free(swap, slots[i]), 0);
			live -= swap_slot_disk_bytes(swap, slots[i]);
			slots[i] = UINT64_MAX;
		}
		for (int more = 0; more < 20; more++) {
			size_t j = rng_next(&rng) % 512;

			if (slots[j] != UINT64_MAX)
				continue;
			lens[j] = random_len(&rng);
			if (live + 4096 > info.file_size / 2)
				break;
			assert_int_equal(swap_slot_alloc(io, lens[j], &slots[j]), 0);
			live += swap_slot_disk_bytes(swap, slots[j]);
			cycles_bytes += swap_slot_disk_bytes(swap, slots[j]);
		}
		if (round % 8 == 0) {
			/* Free a random quarter. */
			for (size_t j = 0; j < 512; j++) {
				if (slots[j] == UINT64_MAX || rng_next(&rng) % 4)
					continue;
				assert_int_equal(swap_slot_free(swap, slots[j]), 0);
				live -= swap_slot_disk_bytes(swap, slots[j]);
				slots[j] = UINT64_MAX;
			}
		}
	}
	assert_true(cycles_bytes > 4 * info.file_size);
	swap_get_usage(swap, &usage);
	assert_int_equal(usage.used_bytes, live);

	/* A double free is refused, and everything comes back. */
	for (size_t i = 0; i < 512; i++) {
		if (slots[i] == UINT64_MAX)
			continue;
		assert_int_equal(swap_slot_free(swap, slots[i]), 0);
		assert_int_equal(swap_slot_free(swap, slots[i]), -EINVAL);
	}
	swap_io_free(io);
	swap_get_usage(swap, &usage);
	assert_int_equal(usage.used_bytes, 0);
	assert_int_equal(usage.clusters_in_use, 0);
	assert_int_equal(usage.free_cluster_bytes, usage.file_size);
	swap_free(swap);
}

static void noop_write(struct swap_object *objs, size_t count, int result, void *userdata)
{
}

static void test_enospc(void **state)
{
	struct swap *swap =
	    make_swap(64 * KIB, SWAP_FLAG_BUFFERED); /* one cluster, 512 B granules */
	struct swap_io *io = NULL;
	struct swap_object objs[2];
	unsigned char page[4096];
	struct swap_stats stats;
	struct swap_info info;
	struct swap_config config = {.size = 4 * KIB};
	struct swap *bad = NULL;
	uint64_t slot, first = 0;
	size_t fitted = 0;

	swap_get_info(swap, &info);
	assert_int_equal(info.clusters, 1);
	assert_int_equal(swap_io_new(&io, swap), 0);
	while (swap_slot_alloc(io, 4096, &slot) == 0) {
		if (!fitted)
			first = slot;
		fitted++;
	}
	assert_int_equal(fitted, 64 * KIB / 4096);
	assert_int_equal(swap_slot_alloc(io, 1, &slot), -ENOSPC);

	/* A batch that does not fit takes nothing. */
	memset(page, 1, sizeof(page));
	objs[0] = (struct swap_object){.data = page, .len = 100};
	objs[1] = (struct swap_object){.data = page, .len = 100};
	assert_int_equal(swap_io_write(io, objs, 2, noop_write, NULL), -ENOSPC);
	swap_get_stats(swap, &stats);
	assert_int_equal(stats.slots_in_use, fitted);
	assert_true(stats.alloc_failures >= 3);

	/* Space freed is found again. */
	assert_int_equal(swap_slot_free(swap, first), 0);
	assert_int_equal(swap_io_write_sync(io, objs, 2), 0);
	assert_int_equal(swap_slot_alloc(io, 4096, &slot), -ENOSPC);

	swap_io_free(io);
	swap_free(swap);

	/* Below one cluster is a configuration error. */
	assert_int_equal(swap_new(&bad, &config), -EINVAL);
	assert_null(bad);
}

static void test_write_error(void **state)
{
	struct swap *swap = make_swap(4 * MIB, 0);
	struct swap_io *io = NULL;
	struct write_state ws = {0};
	struct object_set set;
	struct swap_stats stats;
	uint64_t rng = 3;

	assert_int_equal(swap_io_new(&io, swap), 0);
	object_set_init(&set, 8, &rng);
	for (size_t i = 0; i < set.count; i++)
		set.objs[i].len = 700; /* eight adjacent objects: one request */

	swap_set_fault_injection(swap, SWAP_FAIL_WRITE, 100, 1);
	assert_int_equal(swap_io_write(io, set.objs, set.count, count_write, &ws), 0);
	while (!ws.batches_done)
		poll_and_reap(io);
	assert_int_equal(ws.first_error, -EIO);
	assert_int_equal(ws.objects_ok, 0);
	for (size_t i = 0; i < set.count; i++)
		assert_int_equal(set.objs[i].result, -EIO);
	swap_get_stats(swap, &stats);
	assert_int_equal(stats.slots_in_use, 0); /* failed slots were given back */
	assert_int_equal(stats.io_errors, set.count);
	assert_int_equal(stats.injected_faults, 1);

	/* The injection count is used up: the next write goes through. */
	for (size_t i = 0; i < set.count; i++)
		fill_object(set.data[i], set.objs[i].len, set.seed[i]);
	assert_int_equal(swap_io_write_sync(io, set.objs, set.count), 0);
	verify_all_sync(io, &set);

	/* The synchronous helper reports the error too. */
	swap_set_fault_injection(swap, SWAP_FAIL_WRITE, 100, 0);
	assert_int_equal(swap_io_write_sync(io, set.objs, 1), -EIO);
	swap_set_fault_injection(swap, 0, 0, 0);

	object_set_release(&set);
	swap_io_free(io);
	swap_free(swap);
}

static void test_read_error(void **state)
{
	struct swap *swap = make_swap(4 * MIB, 0);
	struct swap_io *io = NULL;
	struct object_set set;
	struct read_check check = {0};
	struct swap_stats stats;
	unsigned char buf[SWAP_OBJECT_MAX];
	uint64_t rng = 5;

	assert_int_equal(swap_io_new(&io, swap), 0);
	object_set_init(&set, 4, &rng);
	assert_int_equal(swap_io_write_sync(io, set.objs, set.count), 0);

	swap_set_fault_injection(swap, SWAP_FAIL_READ, 100, 1);
	check.expected = set.data[0];
	check.len = set.objs[0].len;
	assert_int_equal(
	    swap_io_read(io, set.objs[0].slot, set.objs[0].len, NULL, check_read, &check), 0);
	while (!check.done)
		poll_and_reap(io);
	assert_int_equal(check.result, -EIO);
	assert_false(check.matched);
	swap_get_stats(swap, &stats);
	assert_int_equal(stats.io_errors, 1);

	/* The data is still there once the fault is gone. */
	verify_all_sync(io, &set);

	swap_set_fault_injection(swap, SWAP_FAIL_READ, 100, 0);
	assert_int_equal(swap_io_read_sync(io, set.objs[1].slot, set.objs[1].len, buf), -EIO);
	swap_set_fault_injection(swap, 0, 0, 0);

	/* A length that does not match the slot is refused before any I/O. */
	assert_int_equal(swap_io_read_sync(io, set.objs[1].slot, 4096, buf),
			 set.objs[1].len > 3584 ? 0 : -EINVAL);

	object_set_release(&set);
	swap_io_free(io);
	swap_free(swap);
}

static void run_short_io(unsigned flags)
{
	struct swap *swap = make_swap(16 * MIB, flags);
	struct swap_io *io = NULL;
	struct object_set set;
	struct swap_stats stats;
	uint64_t rng = 11;

	assert_int_equal(swap_io_new(&io, swap), 0);
	object_set_init(&set, 500, &rng);

	swap_set_fault_injection(swap, SWAP_SHORT_WRITE | SWAP_SHORT_READ, 100, 0);
	write_all_async(io, &set, 24);
	verify_all_async(io, &set);
	verify_all_sync(io, &set);
	swap_set_fault_injection(swap, 0, 0, 0);

	swap_get_stats(swap, &stats);
	assert_true(stats.short_ios > 0);
	assert_true(stats.injected_faults > 0);
	assert_int_equal(stats.io_errors, 0);

	/* Without injection the data reads back the same. */
	verify_all_sync(io, &set);

	/* Half of the requests short: probability works too. */
	swap_set_fault_injection(swap, SWAP_SHORT_READ, 50, 0);
	verify_all_async(io, &set);
	swap_set_fault_injection(swap, 0, 0, 0);

	object_set_release(&set);
	swap_io_free(io);
	swap_free(swap);
}

static void test_short_io_direct(void **state)
{
	run_short_io(0);
}

static void test_short_io_buffered(void **state)
{
	run_short_io(SWAP_FLAG_BUFFERED);
}

static void test_file_setup(void **state)
{
	char path[256];
	struct swap_config config = {.path = path, .size = 1 * MIB};
	struct swap *swap = NULL;
	struct stat st;

	/* Missing directories are created. */
	snprintf(path, sizeof(path), "%s/a/b/swapfile", test_dir);
	assert_int_equal(swap_new(&swap, &config), 0);
	assert_int_equal(stat(path, &st), 0);
	assert_int_equal(st.st_size, 1 * MIB);
	assert_true(st.st_blocks * 512 >= (off_t)(1 * MIB)); /* preallocated */

	/* One user per file. */
	{
		struct swap *second = NULL;

		assert_int_equal(swap_new(&second, &config), -EBUSY);
	}
	swap = swap_free(swap);
	assert_null(swap);

	/* An existing file of another size is resized, both ways. */
	config.size = 3 * MIB + 1000; /* rounded down to clusters */
	assert_int_equal(swap_new(&swap, &config), 0);
	assert_int_equal(stat(path, &st), 0);
	assert_int_equal(st.st_size, 3 * MIB);
	swap_free(swap);
	config.size = 256 * KIB;
	assert_int_equal(swap_new(&swap, &config), 0);
	assert_int_equal(stat(path, &st), 0);
	assert_int_equal(st.st_size, 256 * KIB);
	swap_free(swap);

	/* Not a regular file, a symlink, a bad granule. */
	snprintf(path, sizeof(path), "%s/a", test_dir);
	assert_true(swap_new(&swap, &config) < 0);
	snprintf(path, sizeof(path), "%s/link", test_dir);
	assert_int_equal(symlink("a/b/swapfile", path), 0);
	assert_int_equal(swap_new(&swap, &config), -EINVAL);
	snprintf(path, sizeof(path), "%s/a/b/swapfile", test_dir);
	config.granule_size = 768;
	assert_int_equal(swap_new(&swap, &config), -EINVAL);
	config.granule_size = 1024;
	assert_int_equal(swap_new(&swap, &config), 0);
	{
		struct swap_info info;

		swap_get_info(swap, &info);
		assert_true(info.granule_size >= 1024);
	}
	swap_free(swap);
}

static void test_eventfd(void **state)
{
	struct swap *swap = make_swap(1 * MIB, 0);
	struct swap_io *io = NULL;
	struct write_state ws = {0};
	unsigned char data[1000];
	struct swap_object obj = {.data = data, .len = sizeof(data)};
	struct pollfd pfd;

	memset(data, 0x5a, sizeof(data));
	assert_int_equal(swap_io_new(&io, swap), 0);
	assert_true(swap_io_fd(io) >= 0);
	assert_int_equal(swap_io_reap(io), 0); /* nothing in flight */
	assert_int_equal(swap_io_wait(io), 0);

	assert_int_equal(swap_io_write(io, &obj, 1, count_write, &ws), 0);
	assert_int_equal(swap_io_inflight(io), 1);
	pfd = (struct pollfd){.fd = swap_io_fd(io), .events = POLLIN};
	assert_int_equal(poll(&pfd, 1, 60000), 1);
	assert_int_equal(swap_io_reap(io), 1);
	assert_int_equal(ws.batches_done, 1);
	assert_int_equal(swap_io_inflight(io), 0);

	/* Freeing a swap_io waits for what is in flight. */
	ws = (struct write_state){0};
	assert_int_equal(swap_io_write(io, &obj, 1, count_write, &ws), 0);
	swap_io_free(io);
	assert_int_equal(ws.batches_done, 1);
	assert_int_equal(ws.objects_ok, 1);
	swap_free(swap);
}

/* ---- fixture ------------------------------------------------------------- */

static int remove_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	return remove(path);
}

static void remove_test_dir(void)
{
	nftw(test_dir, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
}

/*
 * A crash or a timeout (meson sends SIGTERM) skips the group teardown:
 * remove the directory on the way out anyway.  nftw() is not
 * async-signal-safe; in a dying test process that is an acceptable risk.
 */
static void on_fatal_signal(int sig)
{
	remove_test_dir();
	signal(sig, SIG_DFL);
	raise(sig);
}

static int group_setup(void **state)
{
	static const int fatal[] = {SIGTERM, SIGINT, SIGSEGV, SIGBUS, SIGABRT, SIGFPE};

	if (!mkdtemp(test_dir))
		return -1;
	for (size_t i = 0; i < sizeof(fatal) / sizeof(fatal[0]); i++)
		signal(fatal[i], on_fatal_signal);
	return 0;
}

static int group_teardown(void **state)
{
	remove_test_dir();
	return 0;
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_roundtrip_direct), cmocka_unit_test(test_roundtrip_buffered),
	    cmocka_unit_test(test_two_threads),	     cmocka_unit_test(test_cross_thread_free),
	    cmocka_unit_test(test_free_and_reuse),   cmocka_unit_test(test_enospc),
	    cmocka_unit_test(test_write_error),	     cmocka_unit_test(test_read_error),
	    cmocka_unit_test(test_short_io_direct),  cmocka_unit_test(test_short_io_buffered),
	    cmocka_unit_test(test_file_setup),	     cmocka_unit_test(test_eventfd),
	};

	return cmocka_run_group_tests_name("swap", tests, group_setup, group_teardown);
}
