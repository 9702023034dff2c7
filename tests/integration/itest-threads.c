/* SPDX-License-Identifier: MIT */
/*
 * itest-threads: many threads doing random reads and writes over a region
 * several times the resident budget.
 *
 * Verifies: every page read (random reads by all threads, and a final pass
 * over the whole region) holds exactly the last generation written to it,
 * while the daemon evicts and faults pages back concurrently from several
 * threads.  A write bumps the page's generation under a per-page stripe
 * lock, so readers always know what the page must hold.
 *
 * usage: itest-threads SIZE THREADS SECONDS MANAGED(yes|no|any)
 */
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "itest.h"

#define STRIPES 4096

static char *region;
static uint64_t page_count;
static uint32_t *generation; /* per page; guarded by its stripe */
static pthread_mutex_t stripe[STRIPES];
static unsigned thread_count;
static uint64_t run_until_ns;
static atomic_uint_fast64_t reads, writes, absent_hits;

struct worker {
	pthread_t thread;
	unsigned index;
};

static void *worker_fill(void *arg)
{
	struct worker *w = arg;

	for (uint64_t p = w->index; p < page_count; p += thread_count) {
		generation[p] = 1;
		it_page_fill(region + p * it_page_size, p, 1);
	}
	return NULL;
}

static void *worker_random(void *arg)
{
	struct worker *w = arg;
	uint64_t state = 0x1234567 + w->index;
	uint64_t n = 0;

	while ((n++ & 63) || it_now_ns() < run_until_ns) {
		uint64_t r = it_rand(&state);
		uint64_t p = r % page_count;
		char *page = region + p * it_page_size;
		pthread_mutex_t *lock = &stripe[p % STRIPES];

		if ((n & 255) == 0 && it_page_absent(page))
			absent_hits++;
		pthread_mutex_lock(lock);
		if ((r >> 56) < 77) { /* ~30 % writes */
			generation[p]++;
			it_page_fill(page, p, generation[p]);
			writes++;
		} else {
			it_page_verify(page, p, generation[p], "random read");
			reads++;
		}
		pthread_mutex_unlock(lock);
	}
	return NULL;
}

static void run_workers(void *(*fn)(void *), struct worker *workers)
{
	for (unsigned i = 0; i < thread_count; i++) {
		workers[i].index = i;
		if (pthread_create(&workers[i].thread, NULL, fn, &workers[i]))
			it_fail("pthread_create");
	}
	for (unsigned i = 0; i < thread_count; i++)
		pthread_join(workers[i].thread, NULL);
}

int main(int argc, char **argv)
{
	struct worker *workers;
	enum it_expect expect;
	size_t size;
	unsigned seconds;
	uint64_t start;

	it_init("itest-threads");
	if (argc != 5)
		it_fail("usage: itest-threads SIZE THREADS SECONDS MANAGED");
	size = it_parse_size(argv[1]);
	thread_count = (unsigned)atoi(argv[2]);
	seconds = (unsigned)atoi(argv[3]);
	expect = it_parse_expect(argv[4]);
	if (thread_count < 1 || thread_count > 64)
		it_fail("threads must be 1..64");
	page_count = size / it_page_size;
	it_log("verifies: %u threads, random reads and writes over %zu MiB (%" PRIu64
	       " pages), every read and a final pass checked against the last generation written",
	       thread_count, size >> 20, page_count);
	it_check_managed(expect);

	generation = calloc(page_count, sizeof(*generation));
	workers = calloc(thread_count, sizeof(*workers));
	if (!generation || !workers)
		it_fail("out of memory");
	for (unsigned i = 0; i < STRIPES; i++)
		pthread_mutex_init(&stripe[i], NULL);
	region = it_map(size);

	start = it_now_ns();
	run_workers(worker_fill, workers);
	it_log("filled in %.2f s", (double)(it_now_ns() - start) / 1e9);
	it_require_evicted(region, size, page_count / 2, expect, "after fill");
	it_stats_print("after fill");

	run_until_ns = it_now_ns() + (uint64_t)seconds * 1000000000ULL;
	run_workers(worker_random, workers);
	it_log("random phase: %" PRIu64 " reads, %" PRIu64 " writes verified, %" PRIu64
	       " sampled accesses found their page evicted",
	       (uint64_t)reads, (uint64_t)writes, (uint64_t)absent_hits);
	if (expect == IT_EXPECT_YES && absent_hits == 0)
		it_fail("no access ever found an evicted page: nothing was paged");

	for (uint64_t p = 0; p < page_count; p++)
		it_page_verify(region + p * it_page_size, p, generation[p], "final pass");
	it_stats_print("at end");
	it_log("PASS: %" PRIu64 " pages verified after %" PRIu64 " random accesses", page_count,
	       (uint64_t)(reads + writes));
	return 0;
}
