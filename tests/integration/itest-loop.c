/* SPDX-License-Identifier: MIT */
/*
 * itest-loop: a long-running client for the lifecycle tests (client killed
 * mid-fault, daemon stopped while clients run, client started before the
 * daemon, no daemon at all).
 *
 * Verifies: every page read during SECONDS of random reads and writes from
 * THREADS threads, and every page in a final pass, holds the last
 * generation written to it, whatever happens to the daemon meanwhile.
 * Prints "READY" once the region is filled (and, with MANAGED=yes, once
 * pages were evicted) so the harness knows faults are under way.
 *
 * usage: itest-loop SIZE THREADS SECONDS MANAGED(yes|no|any)
 */
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>

#include "itest.h"

#define STRIPES 1024

static char *region;
static uint64_t page_count;
static uint32_t *generation;
static pthread_mutex_t stripe[STRIPES];
static uint64_t run_until_ns;
static atomic_uint_fast64_t accesses;

static void *worker(void *arg)
{
	uint64_t state = (uintptr_t)arg * 7919 + 1;
	uint64_t n = 0;

	while ((n++ & 63) || it_now_ns() < run_until_ns) {
		uint64_t r = it_rand(&state);
		uint64_t p = r % page_count;
		char *page = region + p * it_page_size;

		pthread_mutex_lock(&stripe[p % STRIPES]);
		if ((r >> 60) < 4) {
			generation[p]++;
			it_page_fill(page, p, generation[p]);
		} else {
			it_page_verify(page, p, generation[p], "random access");
		}
		pthread_mutex_unlock(&stripe[p % STRIPES]);
		accesses++;
	}
	return NULL;
}

int main(int argc, char **argv)
{
	pthread_t threads[64];
	enum it_expect expect;
	unsigned thread_count, seconds;
	size_t size;

	it_init("itest-loop");
	if (argc != 5)
		it_fail("usage: itest-loop SIZE THREADS SECONDS MANAGED");
	size = it_parse_size(argv[1]);
	thread_count = (unsigned)atoi(argv[2]);
	seconds = (unsigned)atoi(argv[3]);
	expect = it_parse_expect(argv[4]);
	if (thread_count < 1 || thread_count > 64)
		it_fail("threads must be 1..64");
	page_count = size / it_page_size;
	it_log("verifies: %u threads, %u s of random verified reads and writes over %zu MiB, "
	       "then a final pass over every page",
	       thread_count, seconds, size >> 20);
	it_check_managed(expect);
	generation = calloc(page_count, sizeof(*generation));
	if (!generation)
		it_fail("out of memory");
	for (unsigned i = 0; i < STRIPES; i++)
		pthread_mutex_init(&stripe[i], NULL);
	region = it_map(size);
	for (uint64_t p = 0; p < page_count; p++) {
		generation[p] = 1;
		it_page_fill(region + p * it_page_size, p, 1);
	}
	it_require_evicted(region, size, page_count / 2, expect, "after fill");
	printf("READY\n");
	fflush(stdout);

	run_until_ns = it_now_ns() + (uint64_t)seconds * 1000000000ULL;
	for (unsigned i = 0; i < thread_count; i++)
		if (pthread_create(&threads[i], NULL, worker, (void *)(uintptr_t)i))
			it_fail("pthread_create");
	for (unsigned i = 0; i < thread_count; i++)
		pthread_join(threads[i], NULL);
	for (uint64_t p = 0; p < page_count; p++)
		it_page_verify(region + p * it_page_size, p, generation[p], "final pass");
	it_log("managed at end: %d", it_managed());
	it_stats_print("at end");
	it_log("PASS: %" PRIu64 " random accesses and %" PRIu64 " pages verified",
	       (uint64_t)accesses, page_count);
	return 0;
}
