/* SPDX-License-Identifier: MIT */
/*
 * itest-around: the client of the fault-around tests.
 *
 * Fills SIZE of memory with per-page patterns (page number, generation)
 * and keeps a 64-bit checksum of every page's bytes, waits until at least
 * half of it was evicted, then reads it back PASSES times in the order of
 * PATTERN — "sequential" (page order, every 16th page of the second pass
 * rewritten), "descending" (the same from the last page down), "strided"
 * (every 4th page, then the same shifted by one, and so on: four sweeps a
 * pass, every 16th page of the second pass rewritten)
 * or "random" (uniform pages, one access in five a write) — and
 * finally verifies every page once more (in page order, or for random access
 * with a stride of 7919 pages: no locality there either).  Every page read is checked two
 * ways: its checksum against the one recorded when it was last written,
 * and its pattern (what page, what generation it holds).
 *
 * It also counts the accesses that found their page absent (pagemap,
 * outside the access): with fault-around a sequential scan touches far
 * fewer absent pages than it reads back from the pool.
 *
 * usage: itest-around SIZE PATTERN PASSES MANAGED(yes|no|any)
 */
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "itest.h"

static char *region;
static uint64_t page_count;
static uint32_t *generation;
static uint64_t *checksum;
static uint64_t absent_accesses, verified, written;

static void page_write(uint64_t p)
{
	char *page = region + p * it_page_size;

	generation[p]++;
	it_page_fill(page, p, generation[p]);
	checksum[p] = it_page_checksum(page);
	written++;
}

static void page_read(uint64_t p, const char *context)
{
	const char *page = region + p * it_page_size;
	uint64_t sum;

	if (it_page_absent(page))
		absent_accesses++;
	sum = it_page_checksum(page);
	if (sum != checksum[p]) {
		it_page_verify(page, p, generation[p], context); /* says what the page holds */
		it_fail("%s: page %" PRIu64 ": checksum %016" PRIx64 ", expected %016" PRIx64
			" (the pattern matched)",
			context, p, sum, checksum[p]);
	}
	it_page_verify(page, p, generation[p], context);
	verified++;
}

int main(int argc, char **argv)
{
	uint64_t state = 12345, accesses;
	enum it_expect expect;
	unsigned passes;
	bool sequential, strided = false, descending = false;
	size_t size;

	it_init("itest-around");
	if (argc != 5)
		it_fail("usage: itest-around SIZE sequential|random PASSES MANAGED");
	size = it_parse_size(argv[1]);
	if (!strcmp(argv[2], "sequential"))
		sequential = true;
	else if (!strcmp(argv[2], "strided"))
		sequential = strided = true;
	else if (!strcmp(argv[2], "descending"))
		sequential = descending = true;
	else if (!strcmp(argv[2], "random"))
		sequential = false;
	else
		it_fail("PATTERN must be sequential, descending, strided or random, not \"%s\"",
			argv[2]);
	passes = (unsigned)atoi(argv[3]);
	expect = it_parse_expect(argv[4]);
	if (passes < 1 || passes > 100)
		it_fail("PASSES must be 1..100");
	page_count = size / it_page_size;
	if (page_count & (page_count - 1))
		it_fail("SIZE must be a power of two pages");
	it_log("verifies: %zu MiB filled, %u %s pass(es) of reads (and some writes), then every "
	       "page once more; each read checked against its checksum and its pattern",
	       size >> 20, passes, argv[2]);
	it_check_managed(expect);
	generation = calloc(page_count, sizeof(*generation));
	checksum = calloc(page_count, sizeof(*checksum));
	if (!generation || !checksum)
		it_fail("out of memory");
	region = it_map(size);
	for (uint64_t p = 0; p < page_count; p++)
		page_write(p);
	it_require_evicted(region, size, page_count / 2, expect, "after fill");

	accesses = page_count * passes;
	for (uint64_t i = 0; i < accesses; i++) {
		if (sequential) {
			uint64_t j = i % page_count, pass = i / page_count;
			/* strided: 0, 4, 8, ... then 1, 5, 9, ...: a page count of a power of two
			 */
			uint64_t p = strided	  ? (j * 4 % page_count + j * 4 / page_count)
				     : descending ? page_count - 1 - j
						  : j;

			page_read(p, strided	  ? "strided pass"
				     : descending ? "descending pass"
						  : "sequential pass");
			if (pass == 1 && p % 16 == 0)
				page_write(p);
		} else {
			uint64_t r = it_rand(&state), p = r % page_count;

			page_read(p, "random access");
			if ((r >> 56) % 5 == 0)
				page_write(p);
		}
	}
	/* Every page once more: in page order, or for random access in an order with no
	 * locality (an odd stride over a power-of-two page count visits each page once). */
	for (uint64_t i = 0; i < page_count; i++)
		page_read(sequential ? i : i * 7919 % page_count, "final pass");
	it_log("managed at end: %d", it_managed());
	it_stats_print("at end");
	printf("absent_accesses %" PRIu64 "\nverified %" PRIu64 "\nwritten %" PRIu64 "\n",
	       absent_accesses, verified, written);
	it_log("PASS: %" PRIu64 " page reads verified (checksum and pattern), %" PRIu64
	       " writes, %" PRIu64 " reads found their page absent",
	       verified, written, absent_accesses);
	return 0;
}
