/* SPDX-License-Identifier: MIT */
/*
 * itest-chaos: a client that does everything a program may do to its
 * memory while uzswapd pages it -- and while the chaos test kills the
 * daemon under it -- and verifies every page it reads.
 *
 * Four regions, each a quarter of SIZE.  THREADS worker threads read and
 * write random pages (every read is checked against the page's last
 * generation, 0 meaning "must read zeros").  One more thread changes the
 * memory map every few tens of milliseconds:
 *   - mremap of a region to a new address (MREMAP_MAYMOVE | MREMAP_FIXED);
 *   - MADV_DONTNEED of a run of pages (they must then read zeros);
 *   - munmap of a region and a fresh mmap in its place (zeros again);
 *   - fork: the child checks a sample of every region, writes some pages
 *     of its own copy, checks them, and exits; the parent goes on.
 * At the end every page of every region is checked once more, and every
 * child must have exited 0.
 *
 * Prints READY once the regions are filled (and, with MANAGED=yes, once
 * pages were evicted) and PASS at the end; any wrong page is a failure
 * naming the page and what it held.
 *
 * usage: itest-chaos SIZE THREADS SECONDS MANAGED(yes|no|any) [SEED]
 *
 * ITEST_CHAOS_OPS (default "mduf") picks the map changes: m mremap,
 * d MADV_DONTNEED, u munmap+mmap, f fork -- to find which one a failure
 * needs.
 */
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include "itest.h"

#define REGIONS	     4
#define STRIPES	     256
#define CHILDREN_MAX 64

struct region {
	pthread_rwlock_t lock; /* workers read-lock; the vm thread write-locks to change the map */
	char *base;
	uint64_t pages;
	uint32_t *gen; /* per page: last generation written, 0 = zeros */
};

static struct region regions[REGIONS];
static pthread_mutex_t stripe[STRIPES];
static uint64_t run_until_ns;
static atomic_uint_fast64_t accesses, map_changes, forks;
static pid_t children[CHILDREN_MAX];
static unsigned nr_children;
static const char zero_page[65536];
static const char *chaos_ops = "mduf";

static void page_check(const struct region *r, unsigned ri, uint64_t p, const char *context)
{
	const char *page = r->base + p * it_page_size;

	if (r->gen[p] == 0) {
		if (memcmp(page, zero_page, it_page_size) != 0)
			it_fail("%s: region %u page %" PRIu64 " must read zeros (dropped) but does not",
				context, ri, p);
		return;
	}
	it_page_verify(page, (uint64_t)ri << 32 | p, r->gen[p], context);
}

static void page_write(struct region *r, unsigned ri, uint64_t p)
{
	r->gen[p]++;
	if (r->gen[p] == 0)
		r->gen[p] = 1;
	it_page_fill(r->base + p * it_page_size, (uint64_t)ri << 32 | p, r->gen[p]);
}

static void *worker(void *arg)
{
	uint64_t state = (uintptr_t)arg * 7919 + 17;
	uint64_t n = 0;

	while ((n++ & 63) || it_now_ns() < run_until_ns) {
		uint64_t rnd = it_rand(&state);
		unsigned ri = rnd % REGIONS;
		struct region *r = &regions[ri];
		uint64_t p = (rnd >> 8) % r->pages;
		pthread_mutex_t *lock = &stripe[p % STRIPES];

		pthread_rwlock_rdlock(&r->lock);
		pthread_mutex_lock(lock);
		if (rnd >> 60 < 5)
			page_write(r, ri, p);
		else
			page_check(r, ri, p, "random access");
		pthread_mutex_unlock(lock);
		pthread_rwlock_unlock(&r->lock);
		accesses++;
	}
	return NULL;
}

static void all_locks(bool take)
{
	for (unsigned i = 0; i < REGIONS; i++)
		take ? pthread_rwlock_wrlock(&regions[i].lock) : pthread_rwlock_unlock(&regions[i].lock);
}

/* The child of a fork: a consistent copy of everything (the parent held every lock). */
static void child_main(uint64_t seed)
{
	uint64_t state = seed | 1;

	for (unsigned ri = 0; ri < REGIONS; ri++) {
		struct region *r = &regions[ri];

		for (int i = 0; i < 256; i++)
			page_check(r, ri, it_rand(&state) % r->pages, "fork child, inherited");
		for (int i = 0; i < 32; i++) {
			uint64_t p = it_rand(&state) % r->pages;

			page_write(r, ri, p);
			page_check(r, ri, p, "fork child, own write");
		}
	}
	_exit(0);
}

static void reap_children(bool block)
{
	unsigned kept = 0;

	for (unsigned i = 0; i < nr_children; i++) {
		int status;
		pid_t w = waitpid(children[i], &status, block ? 0 : WNOHANG);

		if (w == 0) {
			children[kept++] = children[i];
			continue;
		}
		if (w < 0 || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
			/*
			 * Whose copy is damaged?  The parent checks all of its
			 * own pages first (a failure there names the page).
			 */
			all_locks(true);
			for (unsigned ri = 0; ri < REGIONS; ri++)
				for (uint64_t p = 0; p < regions[ri].pages; p++)
					page_check(&regions[ri], ri, p, "parent, after a child failed");
			all_locks(false);
			it_fail("fork child %d failed (status %#x): it found a wrong page; every "
				"page of the parent verifies", (int)children[i],
				w < 0 ? -1 : status);
		}
	}
	nr_children = kept;
}

static void vm_change(uint64_t *state)
{
	uint64_t rnd = it_rand(state);
	unsigned ri = rnd % REGIONS;
	struct region *r = &regions[ri];
	size_t len = r->pages * it_page_size;

	if (!strchr(chaos_ops, "mduf"[(rnd >> 8) % 4]))
		return;
	switch ((rnd >> 8) % 4) {
	case 0: { /* move the region */
		void *spot = mmap(NULL, len, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		void *moved;

		if (spot == MAP_FAILED)
			it_fail("mmap of a spot to move to");
		pthread_rwlock_wrlock(&r->lock);
		moved = mremap(r->base, len, len, MREMAP_MAYMOVE | MREMAP_FIXED, spot);
		if (moved == MAP_FAILED)
			it_fail("mremap");
		r->base = moved;
		pthread_rwlock_unlock(&r->lock);
		break;
	}
	case 1: { /* drop a run of pages: they read zeros from now on */
		uint64_t first = (rnd >> 16) % r->pages, count = 1 + (rnd >> 40) % 64;

		count = count < r->pages - first ? count : r->pages - first;
		pthread_rwlock_wrlock(&r->lock);
		if (madvise(r->base + first * it_page_size, count * it_page_size, MADV_DONTNEED))
			it_fail("madvise(MADV_DONTNEED)");
		for (uint64_t p = first; p < first + count; p++)
			r->gen[p] = 0;
		pthread_rwlock_unlock(&r->lock);
		break;
	}
	case 2: /* unmap the region, map a fresh one, fill part of it */
		pthread_rwlock_wrlock(&r->lock);
		if (munmap(r->base, len))
			it_fail("munmap");
		r->base = it_map(len);
		memset(r->gen, 0, r->pages * sizeof(*r->gen));
		for (uint64_t p = 0; p < r->pages; p += 2)
			page_write(r, ri, p);
		pthread_rwlock_unlock(&r->lock);
		break;
	default: { /* fork with every lock held, so the child sees a consistent copy */
		pid_t child;

		reap_children(false);
		if (nr_children == CHILDREN_MAX)
			break;
		all_locks(true);
		child = fork();
		if (child == 0)
			child_main(rnd);
		all_locks(false);
		if (child < 0)
			it_fail("fork");
		children[nr_children++] = child;
		forks++;
		break;
	}
	}
	map_changes++;
}

static void *vm_thread(void *arg)
{
	uint64_t state = (uintptr_t)arg;

	while (it_now_ns() < run_until_ns) {
		vm_change(&state);
		usleep(20000 + it_rand(&state) % 60000);
	}
	return NULL;
}

int main(int argc, char **argv)
{
	pthread_t threads[64], vm;
	unsigned thread_count, seconds;
	enum it_expect expect;
	uint64_t seed, total = 0;
	size_t size;

	it_init("itest-chaos");
	if (getenv("ITEST_CHAOS_OPS"))
		chaos_ops = getenv("ITEST_CHAOS_OPS");
	if (argc != 5 && argc != 6)
		it_fail("usage: itest-chaos SIZE THREADS SECONDS MANAGED [SEED]");
	size = it_parse_size(argv[1]);
	thread_count = (unsigned)atoi(argv[2]);
	seconds = (unsigned)atoi(argv[3]);
	expect = it_parse_expect(argv[4]);
	seed = argc == 6 ? strtoull(argv[5], NULL, 10) : (uint64_t)getpid();
	if (thread_count < 1 || thread_count > 64 || size < REGIONS * 64 * it_page_size)
		it_fail("threads must be 1..64 and SIZE at least 256 pages");
	it_log("verifies: %u threads over 4 regions of %zu MiB for %u s, with mremap, "
	       "MADV_DONTNEED, munmap+mmap and fork under them (seed %" PRIu64 ")",
	       thread_count, size / REGIONS >> 20, seconds, seed);
	it_check_managed(expect);
	for (unsigned i = 0; i < STRIPES; i++)
		pthread_mutex_init(&stripe[i], NULL);
	for (unsigned ri = 0; ri < REGIONS; ri++) {
		struct region *r = &regions[ri];

		pthread_rwlock_init(&r->lock, NULL);
		r->pages = size / REGIONS / it_page_size;
		r->base = it_map(r->pages * it_page_size);
		r->gen = calloc(r->pages, sizeof(*r->gen));
		if (!r->gen)
			it_fail("out of memory");
		for (uint64_t p = 0; p < r->pages; p++)
			page_write(r, ri, p);
		total += r->pages;
	}
	it_require_evicted(regions[0].base, regions[0].pages * it_page_size, regions[0].pages / 4,
			   expect, "after fill");
	printf("READY\n");
	fflush(stdout);

	run_until_ns = it_now_ns() + (uint64_t)seconds * 1000000000ULL;
	for (unsigned i = 0; i < thread_count; i++)
		if (pthread_create(&threads[i], NULL, worker, (void *)(uintptr_t)(i + seed)))
			it_fail("pthread_create");
	if (pthread_create(&vm, NULL, vm_thread, (void *)(uintptr_t)(seed * 31 + 5)))
		it_fail("pthread_create");
	for (unsigned i = 0; i < thread_count; i++)
		pthread_join(threads[i], NULL);
	pthread_join(vm, NULL);
	for (unsigned ri = 0; ri < REGIONS; ri++)
		for (uint64_t p = 0; p < regions[ri].pages; p++)
			page_check(&regions[ri], ri, p, "final pass");
	reap_children(true);
	it_stats_print("at end");
	it_log("PASS: %" PRIu64 " random accesses, %" PRIu64 " map changes (%" PRIu64
	       " forks), %" PRIu64 " pages verified",
	       (uint64_t)accesses, (uint64_t)map_changes, (uint64_t)forks, total);
	return 0;
}
