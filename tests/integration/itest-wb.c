/* SPDX-License-Identifier: MIT */
/*
 * itest-wb: the client of the writeback tests that need the harness to
 * look at the daemon between steps (wbsteps.py).  At each step it prints
 * "STEP NAME" and waits for a line on stdin before it goes on, so the
 * harness can read `uzswapctl stats --json` at a known point.  Every page
 * it reads is verified against its (page, generation) pattern.
 *
 *   reuse SIZE     fill region A; STEP filled (pages on disk); verify an
 *                  eighth of A; munmap A; STEP unmapped; map and fill B;
 *                  STEP refilled; verify all of B.
 *   limit SIZE     fill A; STEP filled (pool over its limit, pages stay
 *                  resident); verify A, munmap its first half; STEP freed
 *                  (stores resume); verify the second half.
 *   readerr SIZE   fill A; wait until pages are on disk; read every page
 *                  with a SIGBUS handler (sigsetjmp): exactly one page may
 *                  fail (the injected read error), every other verifies.
 *   badrecord SIZE like readerr, with STEP ondisk (the harness damages a
 *                  record in the swap file) before the read pass; prints
 *                  where A is, so the harness can name the page it hit.
 *   compact SIZE   fill A; 4 s of random reads and rewrites (pages fault
 *                  back from the pool and are evicted again), then
 *                  MADV_DONTNEED of three pages in four at random (the
 *                  pool is left sparse); STEP settled; verify all of A
 *                  (dropped pages read as zeros).
 *   hold SIZE      fill A; STEP filled; STEP shrunk; verify all of A.
 *   far SIZE       the far-memory tests (tests/farmem): fill A; wait until
 *                  half of it is on disk; STEP ondisk (the harness breaks
 *                  the NBD server); read every page with a SIGBUS handler:
 *                  a page is either verified or poisoned (counted, never
 *                  wrong data); STEP read; drop the poisoned pages, write
 *                  every page again (generation 2: a page on disk is read
 *                  first, so it may be poisoned too: dropped, written,
 *                  counted in "far fill"); wait until half is on
 *                  disk; STEP ondisk2; verify every page again, poison
 *                  counted.  Prints "far pass N: P poisoned, V verified".
 *
 * usage: itest-wb MODE SIZE
 */
#include <setjmp.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "itest.h"

static sigjmp_buf bus_env;

static void on_sigbus(int sig)
{
	(void)sig;
	siglongjmp(bus_env, 1);
}

static void wait_on_disk(uint64_t min_pages, unsigned timeout_ms)
{
	struct uzswap_stats st = {0};
	uint64_t end = it_now_ns() + (uint64_t)timeout_ms * 1000000;

	while (it_now_ns() < end) {
		if (it_stats(&st) == 0 && st.on_disk_pages >= min_pages)
			return;
		usleep(50 * 1000);
	}
	it_fail("only %llu pages on disk after %u ms (want %llu)",
		(unsigned long long)st.on_disk_pages, timeout_ms, (unsigned long long)min_pages);
}

/* step_name: stop there (NULL: do not) once pages are on disk, before the read pass. */
static int mode_readerr(char *a, uint64_t pages, const char *step_name)
{
	struct sigaction sa = {.sa_handler = on_sigbus};
	volatile uint64_t bad = 0, bad_page = 0;
	volatile uint64_t p;

	wait_on_disk(pages / 4, 15000);
	if (step_name) {
		it_log("region at %p, %llu pages", (void *)a, (unsigned long long)pages);
		it_step(step_name);
	}
	sigemptyset(&sa.sa_mask);
	if (sigaction(SIGBUS, &sa, NULL) < 0)
		it_fail("sigaction");
	for (p = 0; p < pages; p++) {
		if (sigsetjmp(bus_env, 1)) {
			bad++;
			bad_page = p;
			continue;
		}
		it_page_verify(a + p * it_page_size, p, 1, "readerr pass");
	}
	it_log("SIGBUS on %llu page(s) (page %llu); %llu pages verified", (unsigned long long)bad,
	       (unsigned long long)bad_page, (unsigned long long)(pages - bad));
	if (bad != 1)
		it_fail("expected exactly one poisoned page, got %llu", (unsigned long long)bad);
	return 0;
}

/* Read pages [0, pages) of a, expecting generation gen: the number poisoned (bitmap in bad). */
static uint64_t far_pass(char *a, uint64_t pages, uint32_t gen, unsigned char *bad, int pass)
{
	volatile uint64_t poisoned = 0;
	volatile uint64_t p;

	for (p = 0; p < pages; p++) {
		if (sigsetjmp(bus_env, 1)) {
			bad[p] = 1;
			poisoned++;
			continue;
		}
		it_page_verify(a + p * it_page_size, p, gen, "far pass");
	}
	printf("far pass %d: %llu poisoned, %llu verified\n", pass, (unsigned long long)poisoned,
	       (unsigned long long)(pages - poisoned));
	fflush(stdout);
	return poisoned;
}

static int mode_far(char *a, uint64_t pages)
{
	struct sigaction sa = {.sa_handler = on_sigbus};
	unsigned char *bad = calloc(pages, 1);
	volatile uint64_t fill_poisoned = 0;

	if (!bad)
		it_fail("out of memory");
	sigemptyset(&sa.sa_mask);
	if (sigaction(SIGBUS, &sa, NULL) < 0)
		it_fail("sigaction");
	wait_on_disk(pages / 2, 30000);
	it_stats_print("ondisk");
	it_step("ondisk");
	far_pass(a, pages, 1, bad, 1);
	it_step("read");
	for (volatile uint64_t p = 0; p < pages; p++) {
		/* A poisoned page stays so until dropped; writing one faults it in first. */
		if (sigsetjmp(bus_env, 1)) {
			bad[p] = 1;
			fill_poisoned++;
		}
		if (bad[p] && madvise(a + p * it_page_size, it_page_size, MADV_DONTNEED) < 0)
			it_fail("madvise");
		bad[p] = 0;
		it_page_fill(a + p * it_page_size, p, 2);
	}
	printf("far fill: %llu poisoned\n", (unsigned long long)fill_poisoned);
	fflush(stdout);
	wait_on_disk(pages / 2, 30000);
	it_step("ondisk2");
	far_pass(a, pages, 2, bad, 2);
	free(bad);
	return 0;
}

int main(int argc, char **argv)
{
	const char *mode;
	uint64_t pages;
	size_t size;
	char *a, *b;

	it_init("itest-wb");
	if (argc != 3)
		it_fail("usage: itest-wb MODE SIZE");
	mode = argv[1];
	size = it_parse_size(argv[2]);
	pages = size / it_page_size;
	it_check_managed(IT_EXPECT_YES);
	a = it_map(size);
	it_range_fill(a, 0, pages, 1);
	it_log("filled %llu pages", (unsigned long long)pages);

	if (!strcmp(mode, "reuse")) {
		it_step("filled");
		it_range_verify(a, 0, pages / 8, 1, "before munmap");
		if (munmap(a, size) < 0)
			it_fail("munmap");
		it_step("unmapped");
		b = it_map(size);
		it_range_fill(b, 0, pages, 2);
		it_step("refilled");
		it_range_verify(b, 0, pages, 2, "second region");
	} else if (!strcmp(mode, "limit")) {
		it_step("filled");
		it_range_verify(a, 0, pages, 1, "over the pool limit");
		if (munmap(a, size / 2) < 0)
			it_fail("munmap");
		it_step("freed");
		it_range_verify(a + size / 2, pages / 2, pages - pages / 2, 1, "after the limit");
	} else if (!strcmp(mode, "readerr")) {
		mode_readerr(a, pages, NULL);
	} else if (!strcmp(mode, "badrecord")) {
		mode_readerr(a, pages, "ondisk");
	} else if (!strcmp(mode, "compact")) {
		uint64_t *gen = calloc(pages, sizeof(*gen)), state = 12345;
		uint64_t end = it_now_ns() + 4ULL * 1000000000;

		if (!gen)
			it_fail("out of memory");
		for (uint64_t p = 0; p < pages; p++)
			gen[p] = 1;
		while (it_now_ns() < end) {
			uint64_t r = it_rand(&state), p = r % pages;
			char *page = a + p * it_page_size;

			if ((r >> 60) < 2) {
				it_page_fill(page, p, ++gen[p]);
			} else {
				it_page_verify(page, p, gen[p], "random access");
			}
		}
		/* Drop three pages in four, scattered: their pool objects go at random. */
		for (uint64_t p = 0; p < pages; p++) {
			if (it_rand(&state) % 4 == 0)
				continue;
			if (madvise(a + p * it_page_size, it_page_size, MADV_DONTNEED) < 0)
				it_fail("madvise");
			gen[p] = 0;
		}
		it_step("settled");
		for (uint64_t p = 0; p < pages; p++)
			it_page_verify(a + p * it_page_size, p, gen[p], "final pass");
		free(gen);
	} else if (!strcmp(mode, "far")) {
		mode_far(a, pages);
	} else if (!strcmp(mode, "hold")) {
		it_step("filled");
		it_step("shrunk");
		it_range_verify(a, 0, pages, 1, "after shrink");
	} else {
		it_fail("unknown mode %s", mode);
	}
	it_stats_print("end");
	printf("PASS\n");
	return 0;
}
