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
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "swap/swapfile.h"

#define KIB	   1024ULL
#define MIB	   (1024ULL * 1024)
#define TEST_OWNER 0x5eedf00dcafe1234ULL

static char test_dir[] = "/var/tmp/uzswap-test-swap-XXXXXX";
static unsigned path_counter;

/* ---- helpers ------------------------------------------------------------- */

static void next_path(char *buf, size_t size)
{
	snprintf(buf, size, "%s/swapfile-%u", test_dir, path_counter++);
}

static size_t round_up_to(size_t v, size_t align)
{
	return (v + align - 1) / align * align;
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
		set->objs[i].owner = TEST_OWNER;
		set->objs[i].vpn = 0x100000 + i;
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
	uint64_t vpn;
	bool done;
	int result;
	bool matched;
	bool lent; /* the callback got a buffer */
};

static void check_read(int result, const void *data, size_t len, uint64_t vpn, void *userdata)
{
	struct read_check *check = userdata;

	check->done = true;
	check->result = result;
	check->lent = data != NULL;
	check->matched = result == 0 && len == check->len && vpn == check->vpn &&
			 memcmp(data, check->expected, len) == 0;
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
		checks[i].vpn = set->objs[i].vpn;
		assert_int_equal(swap_io_read(io, set->objs[i].slot, set->objs[i].len,
					      set->objs[i].owner, NULL, check_read, &checks[i]),
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
		uint64_t vpn = 0;

		memset(buf, 0xa5, sizeof(buf));
		assert_int_equal(swap_io_read_sync(io, set->objs[i].slot, set->objs[i].len,
						   set->objs[i].owner, buf, &vpn),
				 0);
		assert_memory_equal(buf, set->data[i], set->objs[i].len);
		assert_int_equal(vpn, set->objs[i].vpn);
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
		size_t record = set.objs[i].len + SWAP_RECORD_HEADER_SIZE;

		assert_true(swap_slot_disk_bytes(swap, set.objs[i].slot) >= record);
		assert_true(swap_slot_disk_bytes(swap, set.objs[i].slot) <
			    record + info.granule_size);
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
	assert_int_equal(usage.used_bytes + usage.free_bytes, usage.data_size);
	assert_int_equal(usage.data_size, info.clusters * info.cluster_size);
	assert_int_equal(usage.header_bytes, set.count * SWAP_RECORD_HEADER_SIZE);
	/* Compressed objects take less than a page each on disk. */
	assert_true(usage.bytes_per_slot_milli < 4096 * 1000);

	for (size_t i = 0; i < set.count; i++)
		assert_int_equal(swap_slot_free(swap, set.objs[i].slot), 0);
	swap_get_usage(swap, &usage);
	assert_int_equal(usage.used_bytes, 0);
	assert_int_equal(usage.slots_in_use, 0);
	assert_int_equal(usage.free_bytes, usage.data_size);

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
		uint64_t prev_end = (extents[i - 1] >> SWAP_SLOT_SIZE_BITS) +
				    swap_slot_disk_bytes(swap, extents[i - 1]) / info.granule_size;

		assert_true(prev_end <= extents[i] >> SWAP_SLOT_SIZE_BITS);
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
	assert_int_equal(usage.free_cluster_bytes, usage.data_size);
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
			if (live + 2 * 4096 > info.clusters * info.cluster_size / 2)
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
	assert_true(cycles_bytes > 4 * info.clusters * info.cluster_size);
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
	assert_int_equal(usage.free_cluster_bytes, usage.data_size);
	swap_free(swap);
}

static void noop_write(struct swap_object *objs, size_t count, int result, void *userdata)
{
}

static void test_enospc(void **state)
{
	/* 128 KiB: one cluster of metadata, one data cluster of 512 B granules. */
	struct swap *swap = make_swap(128 * KIB, SWAP_FLAG_BUFFERED);
	const size_t eight = 4096 - SWAP_RECORD_HEADER_SIZE; /* a record of 8 granules */
	struct swap_io *io = NULL;
	struct swap_object objs[2];
	unsigned char page[4096];
	struct swap_stats stats;
	struct swap_info info;
	char path[256];
	struct swap_config config = {.path = path, .size = 4 * KIB};
	struct swap *bad = NULL;
	uint64_t slot, first = 0;
	size_t fitted = 0;

	swap_get_info(swap, &info);
	assert_int_equal(info.clusters, 1);
	assert_int_equal(info.data_offset, 64 * KIB);
	assert_int_equal(info.file_size, 128 * KIB);
	assert_int_equal(swap_io_new(&io, swap), 0);
	while (swap_slot_alloc(io, eight, &slot) == 0) {
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
	assert_int_equal(swap_slot_alloc(io, eight, &slot), -ENOSPC);

	swap_io_free(io);
	swap_free(swap);

	/* Below one data cluster after the metadata is a configuration error. */
	next_path(path, sizeof(path));
	assert_int_equal(swap_new(&bad, &config), -EINVAL);
	config.size = 64 * KIB;
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
	struct swap_info info;
	unsigned char buf[SWAP_OBJECT_MAX];
	uint64_t rng = 5;

	assert_int_equal(swap_io_new(&io, swap), 0);
	object_set_init(&set, 4, &rng);
	assert_int_equal(swap_io_write_sync(io, set.objs, set.count), 0);

	swap_set_fault_injection(swap, SWAP_FAIL_READ, 100, 1);
	check.expected = set.data[0];
	check.len = set.objs[0].len;
	check.vpn = set.objs[0].vpn;
	assert_int_equal(swap_io_read(io, set.objs[0].slot, set.objs[0].len, TEST_OWNER, NULL,
				      check_read, &check),
			 0);
	while (!check.done)
		poll_and_reap(io);
	assert_int_equal(check.result, -EIO);
	assert_false(check.matched);
	assert_false(check.lent);
	swap_get_stats(swap, &stats);
	assert_int_equal(stats.io_errors, 1);

	/* The data is still there once the fault is gone. */
	verify_all_sync(io, &set);

	swap_set_fault_injection(swap, SWAP_FAIL_READ, 100, 0);
	assert_int_equal(
	    swap_io_read_sync(io, set.objs[1].slot, set.objs[1].len, TEST_OWNER, buf, NULL), -EIO);
	swap_set_fault_injection(swap, 0, 0, 0);
	swap_get_stats(swap, &stats);
	assert_int_equal(stats.checksum_errors, 0); /* an I/O error is not a bad record */

	/*
	 * A length that does not match the slot's granules is refused before
	 * any I/O; one that does but is not the record's fails verification.
	 */
	swap_get_info(swap, &info);
	for (size_t i = 0; i < set.count; i++) {
		size_t page_record = round_up_to(4096 + SWAP_RECORD_HEADER_SIZE, info.granule_size);
		int want = 0;

		if (set.objs[i].len == 4096)
			continue;
		if (swap_slot_disk_bytes(swap, set.objs[i].slot) != page_record)
			want = -EINVAL;
		else
			want = -EBADMSG;
		assert_int_equal(
		    swap_io_read_sync(io, set.objs[i].slot, 4096, TEST_OWNER, buf, NULL), want);
	}

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

/* ---- persistence, records, references, owners ------------------------------ */

static struct swap *open_swap(const struct swap_config *config)
{
	struct swap *swap = NULL;

	assert_int_equal(swap_new(&swap, config), 0);
	return swap;
}

static void write_text(const char *path, const char *text)
{
	FILE *f = fopen(path, "w");

	assert_non_null(f);
	assert_true(fputs(text, f) >= 0);
	assert_int_equal(fclose(f), 0);
}

/* File offset of the first byte of slot's record. */
static uint64_t record_offset(const struct swap_info *info, uint64_t slot)
{
	return info->data_offset + (slot >> SWAP_SLOT_SIZE_BITS) * info->granule_size;
}

/* XOR one byte of the file with 0x5a (twice restores it), through the page cache, synced. */
static void flip_byte(const char *path, uint64_t offset)
{
	int fd = open(path, O_RDWR | O_CLOEXEC);
	unsigned char b;

	assert_true(fd >= 0);
	assert_int_equal(pread(fd, &b, 1, (off_t)offset), 1);
	b ^= 0x5a;
	assert_int_equal(pwrite(fd, &b, 1, (off_t)offset), 1);
	assert_int_equal(fsync(fd), 0);
	close(fd);
}

struct extent {
	uint64_t start, end; /* granules */
	bool kept;
};

static int cmp_extent(const void *a, const void *b)
{
	const struct extent *x = a, *y = b;

	return x->start < y->start ? -1 : x->start > y->start;
}

/*
 * Allocate until the data region is full (large records, then one-granule
 * ones for the holes): no new slot may overlap one of keep[], and then the
 * new slots and keep[] cover every granule.  Frees what it took.
 */
static void fill_and_check_disjoint(struct swap *swap, const uint64_t *keep, size_t nkeep)
{
	struct swap_info info;
	struct swap_usage usage;
	struct swap_io *io = NULL;
	struct extent *ext;
	uint64_t *taken, rng = 4242, slot;
	size_t ntaken = 0, cap;

	swap_get_info(swap, &info);
	cap = info.clusters * info.cluster_size / info.granule_size;
	taken = calloc(cap, sizeof(*taken));
	ext = calloc(cap + nkeep, sizeof(*ext));
	assert_non_null(taken);
	assert_non_null(ext);
	assert_int_equal(swap_io_new(&io, swap), 0);
	while (ntaken < cap && swap_slot_alloc(io, random_len(&rng), &slot) == 0)
		taken[ntaken++] = slot;
	while (ntaken < cap && swap_slot_alloc(io, 1, &slot) == 0)
		taken[ntaken++] = slot;
	swap_get_usage(swap, &usage);
	assert_int_equal(usage.used_bytes, usage.data_size);

	for (size_t i = 0; i < nkeep + ntaken; i++) {
		uint64_t s = i < nkeep ? keep[i] : taken[i - nkeep];

		ext[i].start = s >> SWAP_SLOT_SIZE_BITS;
		ext[i].end = ext[i].start + swap_slot_disk_bytes(swap, s) / info.granule_size;
		ext[i].kept = i < nkeep;
	}
	qsort(ext, nkeep + ntaken, sizeof(*ext), cmp_extent);
	for (size_t i = 1; i < nkeep + ntaken; i++)
		assert_true(ext[i - 1].end <= ext[i].start);

	for (size_t i = 0; i < ntaken; i++)
		assert_int_equal(swap_slot_free(swap, taken[i]), 0);
	swap_io_free(io);
	free(ext);
	free(taken);
}

static void test_record_verify(void **state)
{
	char path[256];
	struct swap_config config = {.path = path, .size = 4 * MIB};
	struct swap *swap;
	struct swap_io *io = NULL;
	struct object_set set;
	struct swap_stats stats;
	struct swap_info info;
	struct read_check check = {0};
	unsigned char buf[SWAP_OBJECT_MAX];
	static const uint64_t header_bytes[] = {0, 16, 24}; /* magic, vpn, checksum */
	uint64_t rng = 21;

	next_path(path, sizeof(path));
	swap = open_swap(&config);
	swap_get_info(swap, &info);
	assert_int_equal(swap_io_new(&io, swap), 0);
	object_set_init(&set, 6, &rng);
	assert_int_equal(swap_io_write_sync(io, set.objs, set.count), 0);
	verify_all_sync(io, &set);

	/* Another owner's read is refused, whatever the bytes. */
	assert_int_equal(
	    swap_io_read_sync(io, set.objs[0].slot, set.objs[0].len, TEST_OWNER + 1, buf, NULL),
	    -EBADMSG);

	/* A byte flipped in the object: the callback gets -EBADMSG and no buffer. */
	flip_byte(path, record_offset(&info, set.objs[1].slot) + SWAP_RECORD_HEADER_SIZE +
			    set.objs[1].len / 2);
	check = (struct read_check){
	    .expected = set.data[1], .len = set.objs[1].len, .vpn = set.objs[1].vpn};
	assert_int_equal(swap_io_read(io, set.objs[1].slot, set.objs[1].len, TEST_OWNER, NULL,
				      check_read, &check),
			 0);
	while (!check.done)
		poll_and_reap(io);
	assert_int_equal(check.result, -EBADMSG);
	assert_false(check.lent);

	/* In the header: the magic, the vpn, the checksum itself. */
	for (unsigned k = 0; k < 3; k++) {
		size_t i = 2 + k;

		flip_byte(path, record_offset(&info, set.objs[i].slot) + header_bytes[k]);
		assert_int_equal(
		    swap_io_read_sync(io, set.objs[i].slot, set.objs[i].len, TEST_OWNER, buf, NULL),
		    -EBADMSG);
	}

	/* Flipped back, the record verifies again: the check is of the bytes. */
	flip_byte(path, record_offset(&info, set.objs[1].slot) + SWAP_RECORD_HEADER_SIZE +
			    set.objs[1].len / 2);
	assert_int_equal(
	    swap_io_read_sync(io, set.objs[1].slot, set.objs[1].len, TEST_OWNER, buf, NULL), 0);
	assert_memory_equal(buf, set.data[1], set.objs[1].len);
	assert_int_equal(
	    swap_io_read_sync(io, set.objs[5].slot, set.objs[5].len, TEST_OWNER, buf, NULL), 0);
	assert_memory_equal(buf, set.data[5], set.objs[5].len);

	swap_get_stats(swap, &stats);
	assert_int_equal(stats.checksum_errors, 5);
	assert_int_equal(stats.io_errors, 0);

	for (size_t i = 0; i < set.count; i++)
		assert_int_equal(swap_slot_free(swap, set.objs[i].slot), 0);
	object_set_release(&set);
	swap_io_free(io);
	swap_free(swap);
}

static void test_refcounts(void **state)
{
	struct swap *swap = make_swap(1 * MIB, 0);
	struct swap_io *io = NULL;
	struct swap_usage usage;
	struct swap_info info;
	uint64_t a, b;

	swap_get_info(swap, &info);
	assert_int_equal(swap_io_new(&io, swap), 0);
	assert_int_equal(swap_slot_alloc(io, 1000, &a), 0);
	assert_int_equal(swap_slot_alloc(io, 1000, &b), 0);
	assert_int_equal(swap_slot_refcount(swap, a), 1);

	/* Shared (a fork): freed only when the last reference goes. */
	assert_int_equal(swap_slot_ref(swap, a), 0);
	assert_int_equal(swap_slot_refcount(swap, a), 2);
	assert_int_equal(swap_slot_free(swap, a), 0);
	assert_int_equal(swap_slot_refcount(swap, a), 1);
	swap_get_usage(swap, &usage);
	assert_int_equal(usage.slots_in_use, 2); /* slots, not references */
	assert_int_equal(swap_slot_free(swap, a), 0);
	assert_int_equal(swap_slot_refcount(swap, a), 0);
	assert_int_equal(swap_slot_free(swap, a), -EINVAL); /* double free */
	assert_int_equal(swap_slot_ref(swap, a), -EINVAL);  /* not allocated */

	/* The count saturates at SWAP_REF_MAX. */
	for (unsigned k = 1; k < SWAP_REF_MAX; k++)
		assert_int_equal(swap_slot_ref(swap, b), 0);
	assert_int_equal(swap_slot_refcount(swap, b), SWAP_REF_MAX);
	assert_int_equal(swap_slot_ref(swap, b), -EOVERFLOW);
	assert_int_equal(swap_slot_refcount(swap, b), SWAP_REF_MAX);
	for (unsigned k = 1; k < SWAP_REF_MAX; k++)
		assert_int_equal(swap_slot_free(swap, b), 0);
	assert_int_equal(swap_slot_refcount(swap, b), 1);
	assert_int_equal(swap_slot_free(swap, b), 0);
	swap_get_usage(swap, &usage);
	assert_int_equal(usage.slots_in_use, 0);
	assert_int_equal(usage.used_bytes, 0);

	/* Outside the file. */
	assert_int_equal(
	    swap_slot_refcount(swap, (info.clusters * info.cluster_size / info.granule_size)
					 << SWAP_SLOT_SIZE_BITS),
	    -EINVAL);
	swap_io_free(io);
	swap_free(swap);
}

static void test_recover_abandoned(void **state)
{
	char path[256];
	struct swap_config config = {.path = path, .size = 4 * MIB};
	struct swap *swap;
	struct swap_io *io = NULL;
	struct object_set set;
	struct swap_info info;
	struct swap_stats stats;
	unsigned refs[200];
	uint64_t live_slots[200], rng = 31, bytes = 0, generation;
	size_t live = 0;

	next_path(path, sizeof(path));
	swap = open_swap(&config);
	swap_get_info(swap, &info);
	assert_int_equal(info.start, SWAP_START_NEW);
	generation = info.generation;
	assert_int_equal(swap_io_new(&io, swap), 0);
	object_set_init(&set, 200, &rng);
	write_all_async(io, &set, 20);
	for (size_t i = 0; i < set.count; i++) {
		refs[i] = 1;
		if (i % 5 == 0) {
			assert_int_equal(swap_slot_ref(swap, set.objs[i].slot), 0);
			refs[i] = 2;
		} else if (i % 7 == 3) {
			assert_int_equal(swap_slot_free(swap, set.objs[i].slot), 0);
			refs[i] = 0;
		}
		if (refs[i]) {
			live_slots[live++] = set.objs[i].slot;
			bytes += swap_slot_disk_bytes(swap, set.objs[i].slot);
		}
	}
	swap_io_free(io);
	swap = swap_abandon(swap);

	/* Everything allocated before is allocated again, with its count. */
	swap = open_swap(&config);
	swap_get_info(swap, &info);
	assert_int_equal(info.start, SWAP_START_RECOVERED);
	assert_int_equal(info.generation, generation);
	assert_int_equal(info.recovered_slots, live);
	assert_int_equal(info.recovered_bytes, bytes);
	swap_get_stats(swap, &stats);
	assert_int_equal(stats.slots_in_use, live);
	assert_int_equal(stats.bytes_on_disk, bytes);
	assert_int_equal(swap_io_new(&io, swap), 0);
	for (size_t i = 0; i < set.count; i++) {
		unsigned char buf[SWAP_OBJECT_MAX];
		uint64_t vpn = 0;

		assert_int_equal(swap_slot_refcount(swap, set.objs[i].slot), refs[i]);
		if (!refs[i])
			continue;
		assert_int_equal(
		    swap_io_read_sync(io, set.objs[i].slot, set.objs[i].len, TEST_OWNER, buf, &vpn),
		    0);
		assert_memory_equal(buf, set.data[i], set.objs[i].len);
		assert_int_equal(vpn, set.objs[i].vpn);
	}
	swap_io_free(io);
	/* No recovered slot is handed out again. */
	fill_and_check_disjoint(swap, live_slots, live);

	/* A clean close with slots in use keeps them too (a handover). */
	swap = swap_free(swap);
	swap = open_swap(&config);
	swap_get_info(swap, &info);
	assert_int_equal(info.start, SWAP_START_RECOVERED);
	assert_int_equal(info.recovered_slots, live);

	/* Once every reference is gone, the close marks the file CLEAN. */
	for (size_t i = 0; i < set.count; i++)
		for (unsigned k = 0; k < refs[i]; k++)
			assert_int_equal(swap_slot_free(swap, set.objs[i].slot), 0);
	swap = swap_free(swap);
	swap = open_swap(&config);
	swap_get_info(swap, &info);
	assert_int_equal(info.start, SWAP_START_CLEAN);
	assert_int_equal(info.recovered_slots, 0);
	assert_int_equal(info.generation, generation + 1);
	swap_get_stats(swap, &stats);
	assert_int_equal(stats.slots_in_use, 0);
	object_set_release(&set);
	swap_free(swap);
}

/*
 * A child writes, references and frees records in a loop and is killed
 * with SIGKILL wherever it happens to be; the parent reopens the file.
 * The child publishes an entry in the shared log only once swap_io_write
 * has reported it (a page entry becoming ON_DISK), counts a reference
 * after swap_slot_ref and withdraws it before swap_slot_free (swapfile.h's
 * rules), so every entry of the log must be found allocated, with at
 * least its count, and must read back verified.
 */
#define KILL_ENTRIES	512
#define KILL_BATCH	8
#define KILL_OPS_BEFORE 3000 /* operations the child completes before the kill */

struct kill_entry {
	uint64_t slot;
	uint64_t seed;
	uint32_t len;
	uint32_t refs; /* 0: not live; written last when published, first when dropped */
};

struct kill_log {
	uint64_t ops;
	struct kill_entry e[KILL_ENTRIES];
};

static pid_t child_pid = -1;

static void kill_child(void)
{
	if (child_pid > 0) {
		kill(child_pid, SIGKILL);
		waitpid(child_pid, NULL, 0);
		child_pid = -1;
	}
}

static int kill_child_teardown(void **state)
{
	kill_child();
	return 0;
}

static _Noreturn void kill_child_run(struct kill_log *log, const char *path)
{
	struct swap_config config = {.path = path, .size = 8 * MIB};
	static unsigned char data[KILL_BATCH][SWAP_OBJECT_MAX];
	struct swap *swap = NULL;
	struct swap_io *io = NULL;
	uint64_t rng = 1234;

	prctl(PR_SET_PDEATHSIG, SIGKILL);
	if (getppid() == 1 || swap_new(&swap, &config) < 0 || swap_io_new(&io, swap) < 0)
		_exit(2);
	for (;;) {
		uint64_t r = rng_next(&rng);
		struct kill_entry *e = &log->e[r % KILL_ENTRIES];

		if (!e->refs) {
			struct swap_object objs[KILL_BATCH];
			struct kill_entry *batch[KILL_BATCH];
			size_t n = 0;

			for (size_t k = r % KILL_ENTRIES; k < KILL_ENTRIES && n < KILL_BATCH; k++) {
				uint64_t seed = rng_next(&rng);
				size_t len = random_len(&rng);

				if (log->e[k].refs)
					continue;
				fill_object(data[n], len, seed);
				log->e[k].seed = seed;
				log->e[k].len = (uint32_t)len;
				objs[n] = (struct swap_object){
				    .data = data[n], .len = len, .owner = TEST_OWNER, .vpn = k};
				batch[n++] = &log->e[k];
			}
			if (swap_io_write_sync(io, objs, n) < 0)
				_exit(3);
			for (size_t k = 0; k < n; k++) {
				batch[k]->slot = objs[k].slot;
				__atomic_store_n(&batch[k]->refs, 1, __ATOMIC_RELEASE);
			}
		} else if (r >> 61 < 3 && e->refs < 3) {
			if (swap_slot_ref(swap, e->slot) < 0)
				_exit(4);
			__atomic_store_n(&e->refs, e->refs + 1, __ATOMIC_RELEASE);
		} else {
			__atomic_store_n(&e->refs, e->refs - 1, __ATOMIC_RELEASE);
			if (swap_slot_free(swap, e->slot) < 0)
				_exit(5);
		}
		__atomic_fetch_add(&log->ops, 1, __ATOMIC_RELEASE);
	}
}

static void test_recover_killed_child(void **state)
{
	char path[256];
	/* The dead child's ring lets go of the file once its last I/O completed. */
	struct swap_config config = {.path = path, .size = 8 * MIB, .lock_wait_ms = 60000};
	struct kill_log *log;
	struct swap *swap;
	struct swap_io *io = NULL;
	struct swap_info info;
	uint64_t *live_slots;
	size_t live = 0;
	int status = 0;

	next_path(path, sizeof(path));
	log = mmap(NULL, sizeof(*log), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	assert_true(log != MAP_FAILED);
	live_slots = calloc(KILL_ENTRIES, sizeof(*live_slots));
	assert_non_null(live_slots);

	child_pid = fork();
	assert_true(child_pid >= 0);
	if (child_pid == 0)
		kill_child_run(log, path);
	/* Wait for the child to be well into its run; the bound only guards a hang. */
	for (unsigned waited = 0; __atomic_load_n(&log->ops, __ATOMIC_ACQUIRE) < KILL_OPS_BEFORE;
	     waited++) {
		assert_int_equal(waitpid(child_pid, &status, WNOHANG), 0); /* still running */
		assert_true(waited < 60 * 1000);
		usleep(1000);
	}
	assert_int_equal(kill(child_pid, SIGKILL), 0);
	assert_int_equal(waitpid(child_pid, &status, 0), child_pid);
	child_pid = -1;
	assert_true(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);

	swap = open_swap(&config);
	swap_get_info(swap, &info);
	assert_int_equal(info.start, SWAP_START_RECOVERED);
	assert_int_equal(swap_io_new(&io, swap), 0);
	for (size_t i = 0; i < KILL_ENTRIES; i++) {
		struct kill_entry *e = &log->e[i];
		unsigned char buf[SWAP_OBJECT_MAX], want[SWAP_OBJECT_MAX];
		uint64_t vpn = 0;

		if (!e->refs)
			continue;
		live_slots[live++] = e->slot;
		assert_true(swap_slot_refcount(swap, e->slot) >= (int)e->refs);
		fill_object(want, e->len, e->seed);
		assert_int_equal(swap_io_read_sync(io, e->slot, e->len, TEST_OWNER, buf, &vpn), 0);
		assert_memory_equal(buf, want, e->len);
		assert_int_equal(vpn, i);
	}
	swap_io_free(io);
	print_message("    killed after %llu operations: %zu records live, %llu slots recovered\n",
		      (unsigned long long)log->ops, live, (unsigned long long)info.recovered_slots);
	assert_true(live > 0);
	/* At most the batch being written and one free in progress leaked. */
	assert_true(info.recovered_slots >= live);
	assert_true(info.recovered_slots <= live + KILL_BATCH + 1);
	fill_and_check_disjoint(swap, live_slots, live);

	assert_int_equal(swap_reset_all(swap), 0);
	swap_free(swap);
	free(live_slots);
	munmap(log, sizeof(*log));
}

static void test_start_empty(void **state)
{
	char path[256], boot_a[256], boot_b[256], boot_bad[256];
	struct swap_config config = {.path = path, .size = 2 * MIB, .boot_id_path = boot_a};
	struct swap *swap;
	struct swap_info info;
	uint64_t generation;
	unsigned granule;

	next_path(path, sizeof(path));
	snprintf(boot_a, sizeof(boot_a), "%s/boot-a", test_dir);
	snprintf(boot_b, sizeof(boot_b), "%s/boot-b", test_dir);
	snprintf(boot_bad, sizeof(boot_bad), "%s/boot-bad", test_dir);
	write_text(boot_a, "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0\n");
	write_text(boot_b, "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f1\n");
	write_text(boot_bad, "not a uuid\n");

	swap = open_swap(&config);
	swap_get_info(swap, &info);
	assert_int_equal(info.start, SWAP_START_NEW);
	generation = info.generation;
	granule = info.granule_size;

	/* Each case: leave 3 slots in use, reopen changed, expect an empty start or not. */
	struct {
		const char *boot;
		uint64_t size;
		enum swap_start want;
	} cases[] = {
	    {boot_a, 2 * MIB, SWAP_START_RECOVERED}, /* same boot, same geometry */
	    {boot_b, 2 * MIB, SWAP_START_OTHER_BOOT},	{boot_b, 3 * MIB, SWAP_START_GEOMETRY},
	    {boot_bad, 3 * MIB, SWAP_START_OTHER_BOOT}, /* no boot id: never recovered */
	    {boot_b, 3 * MIB, SWAP_START_OTHER_BOOT},	/* the last start had no boot id */
	    {boot_b, 3 * MIB, SWAP_START_RECOVERED},
	};
	for (size_t k = 0; k < sizeof(cases) / sizeof(cases[0]); k++) {
		struct swap_io *io = NULL;
		struct swap_stats stats;
		uint64_t slot;

		assert_int_equal(swap_io_new(&io, swap), 0);
		for (int i = 0; i < 3; i++)
			assert_int_equal(swap_slot_alloc(io, 2000, &slot), 0);
		swap_io_free(io);
		swap = swap_free(swap); /* slots in use: stays IN_USE */
		config.boot_id_path = cases[k].boot;
		config.size = cases[k].size;
		swap = open_swap(&config);
		swap_get_info(swap, &info);
		swap_get_stats(swap, &stats);
		print_message("    case %zu: start %d, %llu slots\n", k, info.start,
			      (unsigned long long)stats.slots_in_use);
		assert_int_equal(info.start, cases[k].want);
		if (cases[k].want == SWAP_START_RECOVERED) {
			assert_int_equal(info.recovered_slots, stats.slots_in_use);
			assert_true(stats.slots_in_use >= 3);
		} else {
			assert_int_equal(stats.slots_in_use, 0);
			assert_int_equal(info.generation, generation + 1);
			assert_int_equal(swap_reset_all(swap), 0); /* bumps it again */
			swap_get_info(swap, &info);
		}
		generation = info.generation;
	}

	/* Another granule size. */
	config.granule_size = granule * 2;
	swap = swap_free(swap);
	swap = open_swap(&config);
	swap_get_info(swap, &info);
	if (info.granule_size != granule)
		assert_int_equal(info.start, SWAP_START_GEOMETRY);
	else /* the filesystem's direct-I/O alignment decides the granule */
		assert_int_equal(info.start, SWAP_START_RECOVERED);

	/* A damaged superblock (magic, then the generation under the checksum). */
	for (int k = 0; k < 2; k++) {
		struct swap_io *io = NULL;
		uint64_t slot;

		assert_int_equal(swap_io_new(&io, swap), 0);
		assert_int_equal(swap_slot_alloc(io, 2000, &slot), 0);
		swap_io_free(io);
		swap = swap_free(swap);
		flip_byte(path, k == 0 ? 1 : 16);
		swap = open_swap(&config);
		swap_get_info(swap, &info);
		assert_int_equal(info.start, SWAP_START_NEW);
		assert_int_equal(info.generation, 1);
	}

	/* Nothing in use at the close: CLEAN. */
	swap = swap_free(swap);
	swap = open_swap(&config);
	swap_get_info(swap, &info);
	assert_int_equal(info.start, SWAP_START_CLEAN);
	swap_free(swap);
}

struct owner_walk {
	struct swap_owner seen[16];
	unsigned count;
	int stop_after; /* return 42 after this many (0: never) */
};

static int owner_collect(const struct swap_owner *owner, void *userdata)
{
	struct owner_walk *walk = userdata;

	if (walk->count < 16)
		walk->seen[walk->count] = *owner;
	walk->count++;
	return walk->stop_after && (int)walk->count >= walk->stop_after ? 42 : 0;
}

/* The owner of walk with this token, or NULL. */
static const struct swap_owner *owner_find(const struct owner_walk *walk, uint64_t token)
{
	for (unsigned i = 0; i < walk->count && i < 16; i++)
		if (walk->seen[i].token == token)
			return &walk->seen[i];
	return NULL;
}

static void check_owners(struct swap *swap, const struct swap_owner *want, unsigned count)
{
	struct owner_walk walk = {0};

	assert_int_equal(swap_owner_foreach(swap, owner_collect, &walk), 0);
	assert_int_equal(walk.count, count);
	for (unsigned i = 0; i < count; i++) {
		const struct swap_owner *got = owner_find(&walk, want[i].token);

		assert_non_null(got);
		assert_int_equal(got->pid, want[i].pid);
		assert_int_equal(got->start_time, want[i].start_time);
		assert_int_equal(got->flags, want[i].flags);
	}
}

static void test_owner_table(void **state)
{
	char path[256];
	struct swap_config config = {.path = path, .size = 2 * MIB, .owner_capacity = 4};
	struct swap_owner owners[5], stale;
	struct owner_walk walk = {.stop_after = 1};
	struct swap *swap;
	struct swap_io *io = NULL;
	struct swap_info info;
	uint64_t start, slot;
	pid_t dead;
	int status;

	next_path(path, sizeof(path));
	swap = open_swap(&config);
	swap_get_info(swap, &info);
	assert_int_equal(info.owner_capacity, 4);

	/* This process, a live one with another start time, a dead one. */
	assert_int_equal(swap_process_start_time(getpid(), &start), 0);
	dead = fork();
	assert_true(dead >= 0);
	if (dead == 0)
		_exit(0);
	assert_int_equal(waitpid(dead, &status, 0), dead);
	assert_int_equal(swap_process_start_time(dead, &slot), -ESRCH);
	for (unsigned i = 0; i < 5; i++)
		owners[i] = (struct swap_owner){
		    .token = 0xa1 + i, .pid = getpid(), .start_time = start, .flags = 7 + i};
	owners[2].pid = dead;
	stale = owners[0];
	stale.start_time++;
	assert_int_equal(swap_owner_alive(&owners[0]), 1);
	assert_int_equal(swap_owner_alive(&stale), 0);
	assert_int_equal(swap_owner_alive(&owners[2]), 0);

	for (unsigned i = 0; i < 4; i++)
		assert_int_equal(swap_owner_add(swap, &owners[i]), 0);
	assert_int_equal(swap_owner_add(swap, &owners[0]), -EEXIST);
	assert_int_equal(swap_owner_add(swap, &owners[4]), -ENOSPC);
	stale.token = 0;
	assert_int_equal(swap_owner_add(swap, &stale), -EINVAL);
	assert_int_equal(swap_owner_remove(swap, owners[1].token), 0);
	assert_int_equal(swap_owner_remove(swap, owners[1].token), -ENOENT);
	assert_int_equal(swap_owner_add(swap, &owners[4]), 0); /* takes the freed entry */
	owners[1] = owners[4];
	check_owners(swap, owners, 4);
	assert_int_equal(swap_owner_foreach(swap, owner_collect, &walk), 42);
	assert_int_equal(walk.count, 1);

	/* Abandoned with a slot in use, reopened with another capacity: the file's own is kept. */
	assert_int_equal(swap_io_new(&io, swap), 0);
	assert_int_equal(swap_slot_alloc(io, 100, &slot), 0);
	swap_io_free(io);
	swap = swap_abandon(swap);
	config.owner_capacity = 16;
	swap = open_swap(&config);
	swap_get_info(swap, &info);
	assert_int_equal(info.start, SWAP_START_RECOVERED);
	assert_int_equal(info.owner_capacity, 4);
	check_owners(swap, owners, 4);

	/* A reset frees the slots and leaves the owners. */
	assert_int_equal(swap_reset_all(swap), 0);
	assert_int_equal(swap_slot_refcount(swap, slot), 0);
	check_owners(swap, owners, 4);

	/* A CLEAN file starts empty, owner table included, at the configured capacity. */
	swap = swap_free(swap);
	swap = open_swap(&config);
	swap_get_info(swap, &info);
	assert_int_equal(info.start, SWAP_START_CLEAN);
	assert_int_equal(info.owner_capacity, 16);
	check_owners(swap, owners, 0);
	swap_free(swap);
}

/* swap_collect_all: every slot freed, shared ones included, with a swap_io alive. */
static void test_collect_all(void **state)
{
	char path[256];
	struct swap_config config = {.path = path, .size = 2 * MIB};
	struct swap *swap;
	struct swap_io *io = NULL;
	struct object_set set;
	struct swap_stats stats;
	struct swap_usage usage;
	uint64_t rng = 77, freed = 0;

	next_path(path, sizeof(path));
	swap = open_swap(&config);
	assert_int_equal(swap_io_new(&io, swap), 0);
	object_set_init(&set, 40, &rng);
	assert_int_equal(swap_io_write_sync(io, set.objs, set.count), 0);
	for (size_t i = 0; i < set.count; i += 3)
		assert_int_equal(swap_slot_ref(swap, set.objs[i].slot), 0);
	assert_int_equal(swap_collect_all(swap, &freed), 0);
	assert_int_equal(freed, set.count);
	swap_get_stats(swap, &stats);
	assert_int_equal(stats.slots_in_use, 0);
	assert_int_equal(stats.bytes_on_disk, 0);
	swap_get_usage(swap, &usage);
	assert_int_equal(usage.used_bytes, 0);
	for (size_t i = 0; i < set.count; i++)
		assert_int_equal(swap_slot_refcount(swap, set.objs[i].slot), 0);
	/* Nothing left: a second pass frees nothing. */
	assert_int_equal(swap_collect_all(swap, &freed), 0);
	assert_int_equal(freed, 0);
	/* The space is used again. */
	assert_int_equal(swap_io_write_sync(io, set.objs, set.count), 0);
	swap_io_free(io);
	object_set_release(&set);
	swap_free(swap);
}

static void test_reset_all(void **state)
{
	char path[256];
	struct swap_config config = {.path = path, .size = 2 * MIB};
	struct swap *swap;
	struct swap_io *io = NULL;
	struct object_set set;
	struct swap_info info;
	struct swap_usage usage;
	struct swap_stats stats;
	unsigned char buf[SWAP_OBJECT_MAX];
	uint64_t rng = 51, generation, slot;

	next_path(path, sizeof(path));
	swap = open_swap(&config);
	assert_int_equal(swap_io_new(&io, swap), 0);
	object_set_init(&set, 20, &rng);
	assert_int_equal(swap_io_write_sync(io, set.objs, set.count), 0);
	assert_int_equal(swap_reset_all(swap), -EBUSY); /* a swap_io may hold a cluster */
	io = swap_io_free(io);

	swap_get_info(swap, &info);
	generation = info.generation;
	assert_int_equal(swap_reset_all(swap), 0);
	swap_get_info(swap, &info);
	assert_int_equal(info.generation, generation + 1);
	swap_get_stats(swap, &stats);
	assert_int_equal(stats.slots_in_use, 0);
	assert_int_equal(stats.bytes_on_disk, 0);
	swap_get_usage(swap, &usage);
	assert_int_equal(usage.used_bytes, 0);
	assert_int_equal(usage.free_cluster_bytes, usage.data_size);
	assert_int_equal(swap_slot_refcount(swap, set.objs[0].slot), 0);
	assert_int_equal(swap_slot_free(swap, set.objs[0].slot), -EINVAL);

	/*
	 * A stale slot: the same place allocated again and never written.  The
	 * old record is still on disk, byte for byte, and does not verify: it
	 * belongs to the previous generation.
	 */
	assert_int_equal(swap_io_new(&io, swap), 0);
	assert_int_equal(swap_slot_alloc(io, set.objs[0].len, &slot), 0);
	assert_int_equal(slot, set.objs[0].slot);
	assert_int_equal(swap_io_read_sync(io, slot, set.objs[0].len, TEST_OWNER, buf, NULL),
			 -EBADMSG);
	assert_int_equal(swap_slot_free(swap, slot), 0);
	swap_io_free(io);
	object_set_release(&set);
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
	kill_child();
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
	kill_child();
	remove_test_dir();
	return 0;
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_roundtrip_direct),
	    cmocka_unit_test(test_roundtrip_buffered),
	    cmocka_unit_test(test_two_threads),
	    cmocka_unit_test(test_cross_thread_free),
	    cmocka_unit_test(test_free_and_reuse),
	    cmocka_unit_test(test_enospc),
	    cmocka_unit_test(test_write_error),
	    cmocka_unit_test(test_read_error),
	    cmocka_unit_test(test_short_io_direct),
	    cmocka_unit_test(test_short_io_buffered),
	    cmocka_unit_test(test_file_setup),
	    cmocka_unit_test(test_eventfd),
	    cmocka_unit_test(test_record_verify),
	    cmocka_unit_test(test_refcounts),
	    cmocka_unit_test(test_recover_abandoned),
	    cmocka_unit_test_teardown(test_recover_killed_child, kill_child_teardown),
	    cmocka_unit_test(test_start_empty),
	    cmocka_unit_test(test_owner_table),
	    cmocka_unit_test(test_reset_all),
	    cmocka_unit_test(test_collect_all),
	};

	return cmocka_run_group_tests_name("swap", tests, group_setup, group_teardown);
}
