// SPDX-License-Identifier: MIT
/*
 * Unit tests of daemon/index: set/get at the edges of the vpn space,
 * randomized operations against a flat reference array, walks (order,
 * ranges, rewriting and clearing entries, stopping and aborting), a sparse
 * terabyte region whose memory must stay small, a dense region's cost per
 * page (with the store growing under it), same-filled encoding, and
 * recovery: an index taken back from its store after its daemon object was
 * dropped, after a writer process was SIGKILLed at a random instruction,
 * and from damaged stores (refused, never a crash).
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "util.h"
#include "index/index.h"
#include "store/store.h"
#include "text-page.h"

#define VPN_MAX ((1ULL << PAGE_INDEX_VPN_BITS) - 1)

/* The store under the index a test made (one at a time). */
static struct store *test_store;

static int new_index(struct page_index **out)
{
	int r = store_new(&test_store);

	return r < 0 ? r : page_index_new(out, test_store);
}

static void free_index(struct page_index *index)
{
	page_index_free(index);
	test_store = store_free(test_store);
}

/* A unit member's entry: its share, its object's length, its page number and handle. */
static void test_unit_entries(void **state)
{
	uint64_t handle = (1ULL << PE_HANDLE_BITS) - 1;
	page_entry_t single = pe_make(0, PAGE_STORED, true, 1, 4096, handle);
	page_entry_t member;

	assert_false(pe_unit(single));
	assert_int_equal(pe_object_len(single), 4096);
	assert_int_equal(pe_pool_share(single), 4096);
	assert_true(pe_handle(single) == handle);
	assert_int_equal(pe_unit_page(single), 0);

	for (unsigned page = 0; page < PE_UNIT_PAGES; page++) {
		member = pe_make(PE_QUEUED, PAGE_STORED, true, 2, pe_unit_len_field(4096),
				 pe_unit_payload(handle, page));
		assert_true(pe_unit(member));
		assert_true(pe_queued(member));
		assert_int_equal(pe_object_len(member), 4096);
		assert_int_equal(pe_pool_share(member), 1024);
		assert_true(pe_handle(member) == handle);
		assert_int_equal(pe_unit_page(member), page);
		assert_int_equal(pe_algo(member), 2);
		/* Being written back, still a member; on disk or resident, no unit. */
		assert_true(pe_unit(
		    pe_make(member, PAGE_WRITEBACK, false, 2, pe_len(member), pe_payload(member))));
		assert_false(pe_unit(pe_make(member, PAGE_ON_DISK, false, 2, pe_len(member), 7)));
	}
	member = pe_make(0, PAGE_STORED, true, 1, pe_unit_len_field(36), pe_unit_payload(5, 3));
	assert_int_equal(pe_object_len(member), 36);
	assert_int_equal(pe_pool_share(member), 9);
	/* The CLOCK's backoff count in a RESIDENT entry's len field is not a unit. */
	assert_false(pe_unit(pe_make(0, PAGE_RESIDENT, false, 0, 0x1fff, 0)));
}

static void test_edges(void **state)
{
	struct page_index *index = NULL;
	struct page_index_usage usage;
	page_entry_t e = pe_make(0, PAGE_STORED, true, 1, 1234, PE_PAYLOAD_MAX);

	assert_int_equal(new_index(&index), 0);
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
	test_store = store_free(test_store);
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

	assert_int_equal(new_index(&index), 0);
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
	free_index(index);
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

	assert_int_equal(new_index(&index), 0);
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
	free_index(index);
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

	assert_int_equal(new_index(&index), 0);
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
	free_index(index);
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

	assert_int_equal(new_index(&index), 0);
	for (vpn = 0; vpn < NR; vpn++)
		assert_int_equal(page_index_set(index, 0x7f0000000ULL + vpn, vpn + 1), 0);
	page_index_get_usage(index, &usage);
	assert_int_equal(usage.leaves, NR / 64);
	/* 8 bytes per entry plus about a third of a byte for bitmaps and nodes. */
	assert_true(usage.bytes < NR * 8 + NR / 2);
	free_index(index);
}

static void test_fill_encoding(void **state)
{
	uint64_t payload = 0;
	const uint64_t words[] = {0, ~0ULL, 0x5a5a5a5a5a5a5a5aULL, 0xdeadbeefdeadbeefULL,
				  0x0001000100010001ULL};

	for (size_t i = 0; i < UZ_ARRAY_SIZE(words); i++) {
		assert_true(pe_fill_encode(words[i], &payload));
		assert_true(payload <= PE_PAYLOAD_MAX);
		assert_true(pe_fill_word(payload) == words[i]);
	}
	/* A word that is not a repeated 32-bit pattern has no entry of its own. */
	payload = 7;
	assert_false(pe_fill_encode(0x0123456789abcdefULL, &payload));
	assert_int_equal(payload, 7);
}

/* Take the index of `store` back as a new daemon would: through a read-only fd of it. */
static struct page_index *recover_as_new_daemon(struct store *store, struct store **recovered)
{
	struct page_index *index = NULL;
	int fd = store_open_readonly(store);

	assert_true(fd >= 0);
	assert_int_equal(store_recover(recovered, fd, NULL), 0);
	close(fd);
	assert_int_equal(page_index_recover(&index, *recovered), 0);
	return index;
}

static void test_recover_after_drop(void **state)
{
	enum { NR = 20000 };
	struct page_index *index = NULL, *back;
	struct store *recovered = NULL;
	struct page_index_usage before, after;
	uint64_t seed = 7;

	assert_int_equal(new_index(&index), 0);
	for (unsigned i = 0; i < NR; i++) {
		uint64_t vpn = test_rand_next(&seed) % (1ULL << 30);

		assert_int_equal(page_index_set(index, vpn, vpn * 2 + 1), 0);
		if (i % 3 == 0)
			assert_int_equal(page_index_set(index, vpn ^ 1, 0), 0);
	}
	page_index_get_usage(index, &before);
	back = recover_as_new_daemon(test_store, &recovered);
	page_index_get_usage(back, &after);
	assert_true(after.entries == before.entries);
	seed = 7;
	for (unsigned i = 0; i < NR; i++) {
		uint64_t vpn = test_rand_next(&seed) % (1ULL << 30);

		assert_true(page_index_get(back, vpn) == page_index_get(index, vpn));
	}
	/* The recovered index works: clear everything through it. */
	seed = 7;
	for (unsigned i = 0; i < NR; i++)
		assert_int_equal(page_index_set(back, test_rand_next(&seed) % (1ULL << 30), 0), 0);
	page_index_get_usage(back, &after);
	assert_int_equal(after.entries, 0);
	page_index_free(back);
	store_free(recovered);
	free_index(index);
}

/*
 * A writer process is SIGKILLed at a random instruction while it sets and
 * clears entries; it publishes how many operations it completed in a
 * shared page.  The recovered index must equal the state after exactly
 * `done` or `done + 1` operations (the one in flight either happened or
 * did not), and its tree must be sound.
 */
#define KILL_OPS 60000

static void kill_op(uint64_t i, uint64_t *vpn, page_entry_t *entry)
{
	uint64_t seed = i * 0x9e3779b97f4a7c15ULL + 1;

	*vpn = test_rand_next(&seed) % 50000 * 37; /* sparse enough to add and free leaves */
	*entry = (i % 4 == 3) ? 0 : i + 1;
}

static void test_recover_after_kill(void **state)
{
	for (int round = 0; round < 4; round++) {
		struct store *store = NULL, *recovered = NULL;
		struct page_index *index = NULL;
		volatile uint64_t *done;
		uint64_t *reference;
		pid_t child;
		int status;

		done = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
		assert_true(done != MAP_FAILED);
		*done = 0;
		assert_int_equal(store_new(&store), 0);
		child = fork();
		assert_true(child >= 0);
		if (child == 0) {
			assert_int_equal(page_index_new(&index, store), 0);
			for (uint64_t i = 0;; i = (i + 1) % KILL_OPS) {
				uint64_t vpn;
				page_entry_t entry;

				kill_op(i, &vpn, &entry);
				if (page_index_set(index, vpn, entry) < 0)
					_exit(2);
				*done = i + 1;
				if (i + 1 == KILL_OPS)
					_exit(0); /* one pass is enough */
			}
		}
		usleep(2000 + round * 7000);
		kill(child, SIGKILL);
		assert_int_equal(waitpid(child, &status, 0), child);
		if (WIFEXITED(status))
			assert_int_equal(WEXITSTATUS(status), 0);
		fprintf(stderr, "kill round %d: writer killed after %llu of %d operations\n", round,
			(unsigned long long)*done, KILL_OPS);

		index = recover_as_new_daemon(store, &recovered);
		/* Replay the first `done` operations on a flat reference and compare. */
		reference = calloc(50000, sizeof(*reference));
		assert_non_null(reference);
		for (uint64_t i = 0; i < *done; i++) {
			uint64_t vpn;
			page_entry_t entry;

			kill_op(i, &vpn, &entry);
			reference[vpn / 37] = entry;
		}
		{
			uint64_t next_vpn = 0, mismatches = 0;
			page_entry_t next_entry = 0;

			if (*done < KILL_OPS)
				kill_op(*done, &next_vpn, &next_entry);
			for (uint64_t slot = 0; slot < 50000; slot++) {
				page_entry_t got = page_index_get(index, slot * 37);

				if (got == reference[slot])
					continue;
				/* only the operation in flight may have landed */
				if (*done < KILL_OPS && slot * 37 == next_vpn && got == next_entry)
					continue;
				mismatches++;
			}
			assert_int_equal(mismatches, 0);
		}
		free(reference);
		page_index_free(index);
		store_free(recovered);
		store_free(store);
		munmap((void *)done, 4096);
	}
}

static void test_recover_damaged(void **state)
{
	struct page_index *index = NULL, *back = NULL;
	struct store *recovered = NULL;
	struct uz_store_header *h;
	uint32_t root;
	int fd, r;

	assert_int_equal(new_index(&index), 0);
	for (uint64_t vpn = 0; vpn < 5000; vpn++)
		assert_int_equal(page_index_set(index, vpn * 100, vpn + 1), 0);
	h = store_header(test_store);
	root = h->index_root;

	/* A node pointing back at the root: a cell reached twice. */
	store_cell(test_store, root)->slot[63] = root;
	store_cell(test_store, root)->present |= 1ULL << 63;
	fd = store_open_readonly(test_store);
	assert_int_equal(store_recover(&recovered, fd, NULL), 0);
	assert_int_equal(page_index_recover(&back, recovered), -EBADMSG);
	recovered = store_free(recovered);
	/* A child beyond the cells handed out. */
	store_cell(test_store, root)->slot[63] = h->cells_bump + 5;
	assert_int_equal(store_recover(&recovered, fd, NULL), 0);
	assert_int_equal(page_index_recover(&back, recovered), -EBADMSG);
	recovered = store_free(recovered);
	store_cell(test_store, root)->slot[63] = 0;
	/* Random bytes over the cells: refused or sound, never a crash or a loop. */
	{
		uint64_t seed = 99;

		for (int round = 0; round < 50; round++) {
			for (uint32_t cell = 1; cell < h->cells_bump; cell++) {
				struct uz_store_cell *c = store_cell(test_store, cell);

				if (test_rand_next(&seed) % 8 == 0)
					c->slot[test_rand_next(&seed) % 64] = test_rand_next(&seed) % (h->cells_bump + 3);
			}
			assert_int_equal(store_recover(&recovered, fd, NULL), 0);
			r = page_index_recover(&back, recovered);
			assert_true(r == 0 || r == -EBADMSG);
			if (r == 0)
				back = page_index_free(back);
			recovered = store_free(recovered);
		}
	}
	/* A bad header. */
	h->version = 99;
	assert_int_equal(store_recover(&recovered, fd, NULL), -EINVAL);
	h->version = UZ_STORE_VERSION;
	/* Not ours: a store whose mode lets others write, and a plain file. */
	assert_int_equal(fchmod(test_store->fd, 0644), 0);
	assert_int_equal(store_recover(&recovered, fd, NULL), -EPERM);
	close(fd);
	{
		char path[] = "/tmp/uzswap-test-index-XXXXXX";
		int plain = mkstemp(path);

		assert_true(plain >= 0);
		unlink(path);
		assert_int_equal(fchmod(plain, 0600), 0);
		assert_int_equal(ftruncate(plain, 1 << 20), 0);
		assert_int_equal(store_recover(&recovered, plain, NULL), -EPERM);
		close(plain);
	}
	free_index(index);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_unit_entries),
	    cmocka_unit_test(test_edges),
	    cmocka_unit_test(test_random_against_array),
	    cmocka_unit_test(test_walk_rewrite_stop_abort),
	    cmocka_unit_test(test_sparse_terabyte),
	    cmocka_unit_test(test_dense_cost),
	    cmocka_unit_test(test_fill_encoding),
	    cmocka_unit_test(test_recover_after_drop),
	    cmocka_unit_test(test_recover_after_kill),
	    cmocka_unit_test(test_recover_damaged),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
