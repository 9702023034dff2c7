/* SPDX-License-Identifier: MIT */
/*
 * itest-vmops: VM operations and system calls on regions holding evicted
 * pages.  One scenario per run:
 *
 *   mremap-move    a middle chunk is moved elsewhere: the moved pages (most
 *                  of them evicted) hold their data at the new address, the
 *                  rest of the region still verifies, fresh memory mapped
 *                  into the hole reads as zeros (no stale entry is served).
 *   mremap-grow    the region grows (moved by the kernel, then in place):
 *                  the old pages verify, the new tail reads as zeros, then
 *                  everything verifies again after a second eviction round.
 *   mremap-shrink  the region shrinks: the head verifies, fresh memory
 *                  mapped where the tail was reads as zeros.
 *   munmap         a middle part is unmapped: the rest verifies, fresh
 *                  memory in the hole reads as zeros.
 *   dontneed       MADV_DONTNEED of a range and of scattered single pages
 *                  that are evicted: they read as zeros afterwards, the rest
 *                  verifies, and new data written there survives eviction.
 *   dontneed-race  (run with a slow agent, UZSWAP_TEST_AGENT_DELAY_US)
 *                  single pages dropped with MADV_DONTNEED and written
 *                  again at once, over and over, while eviction batches
 *                  are out: a page written after its drop must keep its
 *                  data even when it was a victim the agent had not moved
 *                  yet; every page verifies at the end.
 *   mremap-race    (run with a slow agent, UZSWAP_TEST_AGENT_DELAY_US) two
 *                  regions A and B, over and over: B unmapped, A moved onto
 *                  B's old address (MREMAP_FIXED), a fresh B mapped and
 *                  filled.  A batch out at that moment has victims of B at
 *                  addresses that now hold A's pages: the agent moves A's
 *                  pages from there, and they must not be dropped as B's;
 *                  every page of A verifies all along and at the end.
 *   syscalls       write(2) to a file and to a pipe from evicted pages sends
 *                  their exact bytes; read(2) from a file and from a pipe
 *                  into evicted pages lands the file's bytes (kernel-mode
 *                  faults served by the daemon).
 *
 * Each scenario first fills the region and (when MANAGED is yes) waits
 * until pages are evicted, and says how many of the pages it operates on
 * were evicted at that moment.
 *
 * usage: itest-vmops SCENARIO SIZE MANAGED(yes|no|any)
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "itest.h"

static enum it_expect expect;
static size_t size;
static uint64_t pages;

static char *page_at(void *base, uint64_t i)
{
	return (char *)base + i * it_page_size;
}

/* Wait until half of [addr, addr + len) is evicted (when managed). */
static void settle(void *addr, size_t len, const char *what)
{
	it_require_evicted(addr, len, len / it_page_size / 2, expect, what);
}

/* Report how many pages of a range are evicted right before an operation on it. */
static void before_op(void *addr, size_t len, const char *op)
{
	uint64_t n = len / it_page_size;
	uint64_t absent = it_count_absent(addr, len);

	it_log("%s: %" PRIu64 " of %" PRIu64 " pages evicted at that moment", op, absent, n);
	if (expect == IT_EXPECT_YES && absent < n / 4)
		it_fail("%s: too few evicted pages to prove anything", op);
}

/* Map fresh memory exactly at addr (which must be a hole) and check it reads as zeros. */
static void check_hole_fresh(void *addr, size_t len, const char *what)
{
	void *p = mmap(addr, len, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);

	if (p == MAP_FAILED)
		it_fail("%s: mmap into the hole at %p: %s", what, addr, strerror(errno));
	if (p != addr)
		it_fail("%s: kernel placed the mapping at %p, not %p", what, p, addr);
	it_range_verify(p, 0, len / it_page_size, 0, what);
	it_log("%s: fresh mapping of %zu pages reads as zeros", what, len / it_page_size);
}

static void it_range_verify_gens(const char *base, const uint32_t *gen, uint64_t n)
{
	for (uint64_t p = 0; p < n; p++)
		it_page_verify(page_at((void *)base, p), p, gen[p], "A, every page");
}

static char *setup(void)
{
	char *region = it_map(size);

	it_range_fill(region, 0, pages, 1);
	settle(region, size, "after fill");
	return region;
}

static void scenario_mremap_move(void)
{
	char *region = setup();
	size_t chunk = size / 2;
	char *src = region + size / 4;
	char *dst =
	    mmap(NULL, chunk, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);

	if (dst == MAP_FAILED)
		it_fail("mmap destination: %m");
	before_op(src, chunk, "mremap move of the middle half");
	if (mremap(src, chunk, chunk, MREMAP_MAYMOVE | MREMAP_FIXED, dst) != dst)
		it_fail("mremap move: %m");
	it_range_verify(dst, pages / 4, chunk / it_page_size, 1, "moved chunk");
	it_range_verify(region, 0, pages / 4, 1, "head left in place");
	it_range_verify(region + size / 4 + chunk, pages / 4 + chunk / it_page_size,
			pages - pages / 4 - chunk / it_page_size, 1, "tail left in place");
	check_hole_fresh(src, chunk, "hole left by the move");

	/* The moved chunk keeps being paged at its new address. */
	it_range_fill(dst, pages / 4, chunk / it_page_size, 2);
	settle(dst, chunk, "moved chunk rewritten");
	it_range_verify(dst, pages / 4, chunk / it_page_size, 2, "moved chunk after eviction");
	it_range_verify(region, 0, pages / 4, 1, "head at end");
}

static void scenario_mremap_grow(void)
{
	char *region = setup();
	char *grown, *base;

	/* 1. grow to twice the size, the kernel chooses where (usually a move) */
	before_op(region, size, "mremap grow x2 (may move)");
	grown = mremap(region, size, 2 * size, MREMAP_MAYMOVE);
	if (grown == MAP_FAILED)
		it_fail("mremap grow: %m");
	it_log("grown region %s", grown == region ? "stayed in place" : "was moved");
	it_range_verify(grown, 0, pages, 1, "old part after grow");
	it_range_verify(page_at(grown, pages), pages, pages, 0, "new tail after grow");
	it_range_fill(page_at(grown, pages), pages, pages, 2);
	settle(grown, 2 * size, "grown region filled");
	it_range_verify(grown, 0, pages, 1, "old part after second eviction");
	it_range_verify(page_at(grown, pages), pages, pages, 2, "new part after second eviction");
	munmap(grown, 2 * size);

	/* 2. grow in place: reserve room behind the region, then free it */
	base = it_map(2 * size);
	if (munmap(base + size, size))
		it_fail("munmap: %m");
	it_range_fill(base, 0, pages, 3);
	settle(base, size, "in-place region filled");
	before_op(base, size, "mremap grow in place");
	grown = mremap(base, size, 2 * size, 0);
	if (grown == MAP_FAILED) {
		it_log("grow in place not possible here (%m): something was mapped behind");
		it_range_verify(base, 0, pages, 3, "region after refused grow");
		return;
	}
	it_range_verify(grown, 0, pages, 3, "old part after in-place grow");
	it_range_verify(page_at(grown, pages), pages, pages, 0, "new tail after in-place grow");
	it_range_fill(page_at(grown, pages), pages, pages, 4);
	settle(grown, 2 * size, "in-place grown region filled");
	it_range_verify(grown, 0, pages, 3, "old part at end");
	it_range_verify(page_at(grown, pages), pages, pages, 4, "new part at end");
}

static void scenario_mremap_shrink(void)
{
	char *region = setup();

	before_op(region + size / 2, size / 2, "mremap shrink to half (dropped tail)");
	if (mremap(region, size, size / 2, 0) != region)
		it_fail("mremap shrink: %m");
	it_range_verify(region, 0, pages / 2, 1, "head after shrink");
	check_hole_fresh(region + size / 2, size / 2, "where the tail was");
	it_range_fill(region + size / 2, pages / 2, pages / 2, 3);
	settle(region, size, "after refilling the tail");
	it_range_verify(region, 0, pages / 2, 1, "head at end");
	it_range_verify(region + size / 2, pages / 2, pages / 2, 3, "new tail at end");
}

static void scenario_munmap(void)
{
	char *region = setup();
	char *hole = region + size / 4;

	before_op(hole, size / 4, "munmap of the second quarter");
	if (munmap(hole, size / 4))
		it_fail("munmap: %m");
	it_range_verify(region, 0, pages / 4, 1, "first quarter after munmap");
	it_range_verify(region + size / 2, pages / 2, pages / 2, 1, "second half after munmap");
	check_hole_fresh(hole, size / 4, "the unmapped quarter");
	it_range_fill(hole, pages / 4, pages / 4, 5);
	settle(region, size, "after refilling the hole");
	it_range_verify(region, 0, pages / 4, 1, "first quarter at end");
	it_range_verify(hole, pages / 4, pages / 4, 5, "refilled hole at end");
	it_range_verify(region + size / 2, pages / 2, pages / 2, 1, "second half at end");
}

static void scenario_dontneed(void)
{
	char *region = setup();
	char *range = region + size / 4;
	bool *dropped = calloc(pages, sizeof(*dropped));
	uint64_t scattered = 0;

	if (!dropped)
		it_fail("out of memory");
	before_op(range, size / 4, "MADV_DONTNEED of the second quarter");
	if (madvise(range, size / 4, MADV_DONTNEED))
		it_fail("madvise: %m");
	/* Scattered single pages of the last quarter, evicted ones only. */
	for (uint64_t p = pages * 3 / 4; p < pages; p += 7) {
		if (!it_page_absent(page_at(region, p)))
			continue;
		if (madvise(page_at(region, p), it_page_size, MADV_DONTNEED))
			it_fail("madvise page: %m");
		dropped[p] = true;
		scattered++;
	}
	it_log("dropped %" PRIu64 " scattered evicted pages one by one", scattered);
	if (expect == IT_EXPECT_YES && scattered == 0)
		it_fail("no evicted page among the scattered candidates");

	it_range_verify(region, 0, pages / 4, 1, "first quarter");
	it_range_verify(range, pages / 4, pages / 4, 0, "dropped quarter");
	it_range_verify(region + size / 2, pages / 2, pages / 4, 1, "third quarter");
	for (uint64_t p = pages * 3 / 4; p < pages; p++)
		it_page_verify(page_at(region, p), p, dropped[p] ? 0 : 1,
			       dropped[p] ? "dropped single page" : "last quarter");
	it_range_fill(range, pages / 4, pages / 4, 6);
	settle(region, size, "after refilling the dropped quarter");
	it_range_verify(range, pages / 4, pages / 4, 6, "refilled quarter at end");
	it_range_verify(region, 0, pages / 4, 1, "first quarter at end");
	free(dropped);
}

static void scenario_dontneed_race(void)
{
	char *region = setup();
	uint32_t *gen = calloc(pages, sizeof(*gen));
	uint64_t state = 42, rounds = 0, end = it_now_ns() + 8ULL * 1000000000ULL;

	if (!gen)
		it_fail("out of memory");
	for (uint64_t p = 0; p < pages; p++)
		gen[p] = 1;
	while (it_now_ns() < end || rounds < 2000) {
		uint64_t p = it_rand(&state) % pages, q = it_rand(&state) % pages;

		if (madvise(page_at(region, p), it_page_size, MADV_DONTNEED))
			it_fail("madvise: %m");
		gen[p] = (uint32_t)(2 + rounds % 1000000);
		it_page_fill(page_at(region, p), p, gen[p]);
		/* Another page read now and then, so faults and eviction keep going. */
		it_page_verify(page_at(region, q), q, gen[q], "random page during the drops");
		rounds++;
	}
	it_log("%" PRIu64 " pages dropped and written again", rounds);
	for (uint64_t p = 0; p < pages; p++)
		it_page_verify(page_at(region, p), p, gen[p], "every page at end");
	free(gen);
}

static void scenario_mremap_race(void)
{
	size_t half = size / 2;
	uint64_t n = pages / 2, state = 7, rounds = 0, end = it_now_ns() + 8ULL * 1000000000ULL;
	uint32_t *gen = calloc(n, sizeof(*gen));
	char *a = it_map(half), *b = it_map(half);

	if (!gen)
		it_fail("out of memory");
	for (uint64_t p = 0; p < n; p++)
		gen[p] = 1;
	it_range_fill(a, 0, n, 1);
	it_range_fill(b, n, n, 1);
	settle(a, half, "A after fill");
	while (it_now_ns() < end || rounds < 200) {
		void *moved;

		for (int i = 0; i < 32; i++) {
			uint64_t p = it_rand(&state) % n;

			if (i & 1) {
				gen[p]++;
				it_page_fill(page_at(a, p), p, gen[p]);
			} else {
				it_page_verify(page_at(a, p), p, gen[p], "A, random page");
			}
		}
		/* B goes, A takes its place, a fresh B is filled (its pages become victims). */
		if (munmap(b, half))
			it_fail("munmap B: %m");
		moved = mremap(a, half, half, MREMAP_MAYMOVE | MREMAP_FIXED, b);
		if (moved != b)
			it_fail("mremap A onto B's address: %m");
		b = it_map(half);
		a = moved;
		it_range_fill(b, n, n, 1);
		if (++rounds % 50 == 0)
			it_range_verify_gens(a, gen, n);
	}
	it_log("%" PRIu64 " rounds of munmap B, mremap A onto it, fill a new B", rounds);
	it_range_verify_gens(a, gen, n);
	it_range_verify(b, n, n, 1, "B at end");
	free(gen);
}

static int temp_file(void)
{
	const char *dir = getenv("TMPDIR");
	char path[4096];
	int fd;

	snprintf(path, sizeof(path), "%s/itest-vmops.XXXXXX", dir ? dir : "/tmp");
	fd = mkstemp(path);
	if (fd < 0)
		it_fail("mkstemp %s: %m", path);
	unlink(path);
	return fd;
}

static void full_write(int fd, const void *buf, size_t len, const char *what)
{
	ssize_t r = write(fd, buf, len);

	if (r != (ssize_t)len)
		it_fail("%s: write(%zu) = %zd: %s", what, len, r,
			r < 0 ? strerror(errno) : "short");
}

static void full_read(int fd, void *buf, size_t len, const char *what)
{
	size_t done = 0;

	while (done < len) {
		ssize_t r = read(fd, (char *)buf + done, len - done);

		if (r <= 0)
			it_fail("%s: read: %s", what, r < 0 ? strerror(errno) : "end of file");
		done += (size_t)r;
	}
}

/* Evicted pages (at most max) of [first, first + count): their page numbers. */
static uint64_t find_absent(char *region, uint64_t first, uint64_t count, uint64_t *out,
			    uint64_t max)
{
	uint64_t n = 0;

	for (uint64_t p = first; p < first + count && n < max; p++)
		if (it_page_absent(page_at(region, p)))
			out[n++] = p;
	return n;
}

static void scenario_syscalls(void)
{
	char *region = setup();
	char *buf = malloc(it_page_size);
	uint64_t half = pages / 2, picked[16], n;
	int fd = temp_file(), pipefd[2];

	if (!buf || pipe(pipefd))
		it_fail("setup: %m");

	/* write(2) of the first half, in one call, to a file; compare page by page */
	before_op(region, size / 2, "write(2) of the first half to a file");
	full_write(fd, region, size / 2, "write evicted pages to file");
	for (uint64_t p = 0; p < half; p++) {
		if (pread(fd, buf, it_page_size, (off_t)(p * it_page_size)) !=
		    (ssize_t)it_page_size)
			it_fail("pread: %m");
		it_page_verify(buf, p, 1, "file written from evicted pages");
	}
	it_log("write(2): %" PRIu64 " pages reached the file intact", half);

	/* write(2) of single evicted pages to a pipe */
	n = find_absent(region, 0, pages, picked, 16);
	if (expect == IT_EXPECT_YES && n == 0)
		it_fail("no evicted page for the pipe test");
	for (uint64_t i = 0; i < n; i++) {
		full_write(pipefd[1], page_at(region, picked[i]), it_page_size, "pipe write");
		full_read(pipefd[0], buf, it_page_size, "pipe read back");
		it_page_verify(buf, picked[i], 1, "pipe fed from an evicted page");
	}
	it_log("write(2): %" PRIu64 " evicted pages sent through a pipe intact", n);

	/* read(2) from a file into the second half, in one call */
	if (ftruncate(fd, 0) || lseek(fd, 0, SEEK_SET))
		it_fail("truncate: %m");
	for (uint64_t p = half; p < pages; p++) {
		it_page_fill(buf, p, 7);
		full_write(fd, buf, it_page_size, "prepare file");
	}
	settle(region, size, "before read(2)");
	before_op(region + size / 2, size / 2, "read(2) from a file into the second half");
	if (lseek(fd, 0, SEEK_SET))
		it_fail("lseek: %m");
	full_read(fd, region + size / 2, size / 2, "read file into evicted pages");
	it_range_verify(region + size / 2, half, pages - half, 7, "pages read(2) from the file");
	it_range_verify(region, 0, half, 1, "first half after read(2)");
	it_log("read(2): %" PRIu64 " pages landed from the file", pages - half);

	/* read(2) from a pipe into single evicted pages */
	settle(region, size, "before pipe read");
	n = find_absent(region, half, pages - half, picked, 16);
	if (expect == IT_EXPECT_YES && n == 0)
		it_fail("no evicted page for the pipe read test");
	for (uint64_t i = 0; i < n; i++) {
		it_page_fill(buf, picked[i], 8);
		full_write(pipefd[1], buf, it_page_size, "pipe write");
		full_read(pipefd[0], page_at(region, picked[i]), it_page_size,
			  "pipe read into evicted page");
		it_page_verify(page_at(region, picked[i]), picked[i], 8,
			       "evicted page filled by read(2) from a pipe");
	}
	it_log("read(2): %" PRIu64 " evicted pages filled from a pipe", n);
	close(fd);
	free(buf);
}

int main(int argc, char **argv)
{
	static const struct {
		const char *name;
		void (*run)(void);
	} scenarios[] = {
	    {"mremap-move", scenario_mremap_move},     {"mremap-grow", scenario_mremap_grow},
	    {"mremap-shrink", scenario_mremap_shrink}, {"munmap", scenario_munmap},
	    {"dontneed", scenario_dontneed},	       {"syscalls", scenario_syscalls},
	    {"dontneed-race", scenario_dontneed_race}, {"mremap-race", scenario_mremap_race},
	};

	it_init("itest-vmops");
	if (argc != 4)
		it_fail("usage: itest-vmops SCENARIO SIZE MANAGED");
	size = it_parse_size(argv[2]);
	expect = it_parse_expect(argv[3]);
	pages = size / it_page_size;
	if (pages < 64 || pages % 4)
		it_fail("size must be a multiple of 4 pages, at least 64");
	for (size_t i = 0; i < sizeof(scenarios) / sizeof(scenarios[0]); i++) {
		if (strcmp(argv[1], scenarios[i].name))
			continue;
		it_name = scenarios[i].name;
		it_log("scenario %s over %zu MiB; see the comment at the top of itest-vmops.c",
		       scenarios[i].name, size >> 20);
		it_check_managed(expect);
		scenarios[i].run();
		it_stats_print("at end");
		it_log("PASS");
		return 0;
	}
	it_fail("unknown scenario '%s'", argv[1]);
}
