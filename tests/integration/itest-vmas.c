// SPDX-License-Identifier: MIT
/*
 * itest-vmas: memory the hooks never see, in many mappings.
 *
 *   itest-vmas COUNT PAGES
 *
 * Maps COUNT separate mappings of PAGES pages each with the raw mmap
 * system call (no PLT, so libuzswap's hook does not see them; a PROT_NONE
 * page between two keeps the kernel from merging them), fills them, and
 * waits until the daemon reports them registered: the library's scan must
 * find every one in /proc/self/maps and register them in batches.  Then
 * grows the brk heap past a registered one (a new VMA the kernel does not
 * merge) and waits for that too.  Every page is verified after eviction.
 */
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "itest.h"

static void *raw_map(void *hint, size_t len, int prot)
{
	void *p =
	    (void *)syscall(SYS_mmap, hint, len, prot,
			    MAP_PRIVATE | MAP_ANONYMOUS | (hint ? MAP_FIXED : 0), -1, 0);

	if (p == MAP_FAILED)
		it_fail("raw mmap of %zu bytes failed: %m", len);
	return p;
}

static uint64_t registered_bytes(void)
{
	struct uzswap_stats stats;

	return it_stats(&stats) == 0 ? stats.registered_bytes : 0;
}

static void wait_registered(uint64_t want, const char *what)
{
	uint64_t got = 0;

	for (int i = 0; i < 600; i++) {
		got = registered_bytes();
		if (got >= want) {
			it_log("%s: %llu bytes registered", what, (unsigned long long)got);
			return;
		}
		usleep(100000);
	}
	it_fail("%s: only %llu of %llu bytes registered", what, (unsigned long long)got,
		(unsigned long long)want);
}

int main(int argc, char **argv)
{
	size_t count, pages, stride;
	char *base, *heap;
	uint64_t heap_pages = 16384; /* 64 MiB of brk heap */

	it_init("itest-vmas");
	if (argc != 3)
		it_fail("usage: itest-vmas COUNT PAGES");
	count = strtoul(argv[1], NULL, 10);
	pages = strtoul(argv[2], NULL, 10);
	stride = (pages + 1) * it_page_size;
	it_check_managed(IT_EXPECT_YES);

	/*
	 * Each mapping replaces part of one PROT_NONE reservation (MAP_FIXED
	 * over our own mapping): a munmap first would leave a hole another
	 * thread's mmap (the library's own) could take in between.
	 */
	base = raw_map(NULL, count * stride, PROT_NONE);
	for (size_t i = 0; i < count; i++) {
		char *m = base + i * stride;

		raw_map(m, pages * it_page_size, PROT_READ | PROT_WRITE);
		it_range_fill(m, i * pages, pages, 1);
	}
	it_log("%zu raw mappings of %zu pages filled", count, pages);
	wait_registered((uint64_t)count * pages * it_page_size, "raw mappings");

	heap = sbrk(0);
	if (sbrk((intptr_t)(heap_pages * it_page_size)) == (void *)-1)
		it_fail("sbrk");
	it_range_fill(heap, 1 << 30, heap_pages, 1);
	wait_registered((uint64_t)(count * pages + heap_pages) * it_page_size, "brk heap");
	/* The heap: the raw mappings' PROT_NONE gaps would count as absent too. */
	it_require_evicted(heap, heap_pages * it_page_size, 1024, IT_EXPECT_YES, "brk heap");

	for (size_t i = 0; i < count; i++)
		it_range_verify(base + i * stride, i * pages, pages, 1, "raw mapping");
	it_range_verify(heap, 1 << 30, heap_pages, 1, "brk heap");
	it_stats_print("end");
	it_log("all %zu mappings and the brk heap verified", count);
	return 0;
}
