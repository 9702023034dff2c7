/* SPDX-License-Identifier: MIT */
/*
 * itest-units: the client of the multi-page compression unit tests
 * (units-* in itest.py).
 *
 * The daemon compresses 4 adjacent pages of a client, the first at a vpn
 * that is a multiple of 4, as one object when they are evicted together
 * and compress at least about 4:1; a fault on one member puts the others
 * back too.  This client makes data for which that holds, lets it be
 * evicted, and then does what can go wrong with such a unit: reads in
 * every order, members leaving one at a time (munmap, MADV_DONTNEED,
 * mremap to an address of another alignment), fork, writeback, a daemon
 * killed and started again.
 *
 * The region is aligned to 16 pages, so logical page p is member p % 4 of
 * its unit.  Every page holds (page number, generation): a 32-byte header
 * (magic, page, generation, a 64-bit value drawn from both), some noise
 * drawn from the same seed, then a short phrase repeated (starting at a
 * phase that depends on the page) and a 16-byte trailer naming the page
 * again.  The noise sets how well a unit compresses:
 *
 *   text    64 hex digits a page: 4 pages compress far beyond 4:1
 *   dense   768 random bytes a page: a unit compresses to about 3.4 KiB
 *           (units still fit one object, but a small pool fills)
 *   random  the whole page is random: no unit can fit
 *
 * and in text and dense data, in each run of 64 pages, page 37 is one
 * 32-bit pattern repeated (stored in its entry, never in a unit), page 42
 * one 64-bit word repeated (not a 32-bit pattern: compressed to a few
 * bytes, so with 3 random pages it would make a group that fits) and page
 * 50 zeros.
 *
 * Every page written has its checksum (FNV-1a, 8 bytes at a time)
 * recorded; a read checks the checksum and then the whole page against
 * the regenerated pattern, and a mismatch says what the page holds
 * (another page, another generation, zeros, unknown bytes).  Pages that
 * were dropped (MADV_DONTNEED) must read as zeros; fresh memory mapped
 * where a member was unmapped or moved away must read as zeros.
 *
 * At each step the client prints "STEP NAME" and waits for a line on
 * stdin, so the harness can read the daemon's statistics (unit_pages,
 * unit_stores, ...) at a known point, or kill and restart the daemon.
 *
 *   basic      fill; STEP evicted; a sequential pass, page_count random
 *              reads (one in eight a write), a final pass in page order
 *              and one with a stride of 7919 pages; STEP reread.
 *   random     fill; STEP evicted; 2 x page_count random reads (one in
 *              eight a write); STEP random; as many again; every page
 *              with a stride; STEP verified.
 *   locality   fill; STEP evicted; 2 x page_count random reads; STEP
 *              random; 3 passes in page order (every 16th page rewritten
 *              after each); STEP sequential; every page with a stride;
 *              STEP verified.
 *   vmops      fill; STEP evicted; with every page of the units it
 *              operates on evicted: munmap of member 1 of 6 units (the
 *              holes of 4 mapped again at once, 2 of them written), of
 *              members 1 and 2 of 3 units, MADV_DONTNEED of member 2 of
 *              6 units, of member 0 of 3 and member 3 of 3, of member 1
 *              of 3 written again at once, mremap of 16 whole units to
 *              an aligned address and of 29 pages from member 2 of a
 *              unit to an address one page past alignment; STEP
 *              operated; then the surviving members of those units are
 *              read first, then the pages that left (zeros), then every
 *              page; STEP verified; every page rewritten, evicted again,
 *              verified again.
 *   fork       fill; STEP evicted; fork: the child drops member 0 of
 *              every 16th unit (MADV_DONTNEED), the parent member 2 of
 *              others; the child verifies every page in page order,
 *              writes every 8th page (member 3), verifies all, is evicted
 *              again and verifies again; the parent at the same time
 *              verifies from the last page down, writes every 8th page
 *              (member 1), waits for the child, is evicted again and
 *              verifies every page; STEP verified.
 *   writeback  fill; wait until a quarter of the pages are on disk (its
 *              own uzswap_get_stats); STEP ondisk; a pass in page order,
 *              random reads, a final pass; STEP verified.
 *   recovery   fill; STEP evicted (the harness kills uzswapd with
 *              SIGKILL and starts another); a pass in page order, random
 *              reads and writes, a final pass; STEP verified.
 *   recovery-vmops  fill; with every page of the units concerned evicted,
 *              MADV_DONTNEED of member 1 of 8 units, munmap of member 2 of
 *              8 (fresh memory mapped there), mremap of 29 pages from
 *              member 2 of a unit to an address one page past alignment;
 *              STEP evicted (the harness kills and restarts uzswapd); the
 *              members left, the pages that left, every page; STEP
 *              verified.
 *   threads    fill; STEP evicted; 4 threads, thread t reading member t
 *              of every unit in order, then at random rewriting one in
 *              four; every page; evicted again, the threads again, every
 *              page; STEP verified.
 *   race       (a slow agent) fill; STEP evicted; for 8 s a random page
 *              dropped and written again at once, an aligned group of 4
 *              read; every page; STEP verified (scenario_race).
 *   aligned    (fault-around off) fill; STEP evicted; read member 0 of
 *              consecutive evicted units: no page outside its aligned
 *              group of 4 may become present (scenario_aligned); every
 *              page; STEP verified.
 *
 * usage: itest-units MODE SIZE DATA(text|dense|random) MANAGED(yes|no|any)
 */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include "itest.h"

#define UNIT_PAGES    4
#define REGION_ALIGN  16 /* pages: the region, and mremap destinations, start here */
#define HEADER_SIZE   32
#define TRAILER_SIZE  16
#define UNIT_MAGIC    "uzs-unit"
#define DENSE_NOISE   768
#define TEXT_NOISE    64
#define FILL32_SLOT   37 /* of every 64 pages: one 32-bit pattern repeated */
#define FILL64_SLOT   42 /* one 64-bit word repeated (not a 32-bit pattern) */
#define ZERO_SLOT     50 /* all zeros */
#define PAGE_SIZE_MAX 65536

enum unit_data { DATA_TEXT, DATA_DENSE, DATA_RANDOM };

/* One logical page: where it is now (NULL: unmapped), what it holds. */
struct page_slot {
	char *addr;
	uint32_t gen; /* 0: must read as zeros */
	uint64_t checksum;
};

struct unit_header {
	char magic[8];
	uint64_t pageno;
	uint64_t gen;
	uint64_t mix;
};

static const char phrase[] = "cold pages of one client, four at a time, in one object; ";

static enum unit_data data_kind;
static enum it_expect expect;
static size_t size;
static uint64_t page_count;
static char *region;
static struct page_slot *slots;
static atomic_uint_fast64_t verified, written; /* the threads mode counts from 4 threads */

static void page_generate(unsigned char *page, uint64_t pageno, uint32_t gen)
{
	static const char hex[] = "0123456789abcdef";
	uint64_t state = pageno * 0x9e3779b97f4a7c15ULL ^ (uint64_t)gen << 40 ^ 0x6a09e667ULL;
	size_t phrase_len = sizeof(phrase) - 1, noise, pos = HEADER_SIZE;
	struct unit_header header;
	uint64_t trailer[2];
	uint64_t *words = (uint64_t *)page;

	if (gen == 0 || (pageno % 64 == ZERO_SLOT && data_kind != DATA_RANDOM)) {
		memset(page, 0, it_page_size);
		return;
	}
	if (data_kind != DATA_RANDOM &&
	    (pageno % 64 == FILL32_SLOT || pageno % 64 == FILL64_SLOT)) {
		uint32_t low = ((uint32_t)(pageno * 2654435761U) ^ gen << 24) | 1;
		uint64_t word = pageno % 64 == FILL32_SLOT
				    ? (uint64_t)low << 32 | low
				    : (uint64_t)(low ^ 0x5a5a5a5aU) << 32 | low;

		for (size_t i = 0; i < it_page_size / sizeof(uint64_t); i++)
			words[i] = word;
		return;
	}
	memcpy(header.magic, UNIT_MAGIC, sizeof(header.magic));
	header.pageno = pageno;
	header.gen = gen;
	header.mix = it_rand(&state);
	memcpy(page, &header, sizeof(header));
	noise = data_kind == DATA_TEXT	  ? TEXT_NOISE
		: data_kind == DATA_DENSE ? DENSE_NOISE
					  : it_page_size - HEADER_SIZE - TRAILER_SIZE;
	for (size_t i = 0; i < noise; i += 8) {
		uint64_t r = it_rand(&state);

		for (size_t b = 0; b < 8 && i + b < noise; b++, r >>= 8)
			page[pos++] =
			    data_kind == DATA_TEXT ? (unsigned char)hex[r & 15] : (unsigned char)r;
	}
	for (size_t phase = (size_t)(pageno * 7 % phrase_len); pos < it_page_size - TRAILER_SIZE;
	     phase = (phase + 1) % phrase_len)
		page[pos++] = (unsigned char)phrase[phase];
	trailer[0] = pageno ^ header.mix;
	trailer[1] = ~(uint64_t)gen;
	memcpy(page + it_page_size - TRAILER_SIZE, trailer, sizeof(trailer));
}

/* What a page that did not match holds, for the failure message. */
static void page_describe(const unsigned char *page, const unsigned char *expected, char *why,
			  size_t why_len)
{
	const uint64_t *words = (const uint64_t *)page;
	struct unit_header found;
	size_t first_diff = 0;
	bool same = true;

	while (first_diff < it_page_size && page[first_diff] == expected[first_diff])
		first_diff++;
	for (size_t i = 1; i < it_page_size / sizeof(uint64_t) && same; i++)
		same = words[i] == words[0];
	memcpy(&found, page, sizeof(found));
	if (same && words[0] == 0)
		snprintf(why, why_len, "page reads as zeros");
	else if (same)
		snprintf(why, why_len, "page is the word %016" PRIx64 " repeated", words[0]);
	else if (memcmp(found.magic, UNIT_MAGIC, sizeof(found.magic)) == 0)
		snprintf(why, why_len,
			 "page holds page %" PRIu64 " generation %" PRIu64
			 " (first difference at byte %zu)",
			 found.pageno, found.gen, first_diff);
	else
		snprintf(why, why_len, "page holds unknown bytes (first difference at byte %zu)",
			 first_diff);
}

static void page_write(uint64_t p, uint32_t gen)
{
	struct page_slot *slot = &slots[p];

	slot->gen = gen;
	page_generate((unsigned char *)slot->addr, p, gen);
	slot->checksum = it_page_checksum(slot->addr);
	written++;
}

/* The page was dropped: it must read as zeros from now on. */
static void page_forget(uint64_t p)
{
	static unsigned char zeros[PAGE_SIZE_MAX];

	slots[p].gen = 0;
	slots[p].checksum = it_page_checksum(zeros);
}

static void page_read(uint64_t p, const char *context)
{
	unsigned char expected[PAGE_SIZE_MAX];
	const struct page_slot *slot = &slots[p];
	uint64_t sum;
	char why[160];

	if (!slot->addr)
		return;
	sum = it_page_checksum(slot->addr);
	page_generate(expected, p, slot->gen);
	if (sum != slot->checksum || memcmp(expected, slot->addr, it_page_size) != 0) {
		page_describe((const unsigned char *)slot->addr, expected, why, sizeof(why));
		it_fail("%s: page %" PRIu64 " (member %" PRIu64 " of its unit) at %p, expected "
			"generation %" PRIu32 ": checksum %016" PRIx64 ", expected %016" PRIx64
			": %s",
			context, p, p % UNIT_PAGES, (void *)slot->addr, slot->gen, sum,
			slot->checksum, why);
	}
	verified++;
}

static void read_in_order(const char *context)
{
	for (uint64_t p = 0; p < page_count; p++)
		page_read(p, context);
}

/* An odd stride over a power-of-two page count visits every page once, with no locality. */
static void read_strided(const char *context)
{
	for (uint64_t i = 0; i < page_count; i++)
		page_read(i * 7919 % page_count, context);
}

static void read_random(uint64_t reads, unsigned write_one_in, uint32_t write_gen, uint64_t seed,
			const char *context)
{
	uint64_t state = seed;

	for (uint64_t i = 0; i < reads; i++) {
		uint64_t r = it_rand(&state), p = r % page_count;

		page_read(p, context);
		if (write_one_in && (r >> 56) % write_one_in == 0 && slots[p].addr)
			page_write(p, write_gen);
	}
}

/* A private anonymous mapping aligned to REGION_ALIGN pages. */
static char *map_aligned(size_t len, int prot)
{
	size_t align = REGION_ALIGN * it_page_size;
	char *raw =
	    mmap(NULL, len + align, prot, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	char *start;

	if (raw == MAP_FAILED)
		it_fail("mmap %zu bytes: %s", len + align, strerror(errno));
	start = (char *)(((uintptr_t)raw + align - 1) & ~(uintptr_t)(align - 1));
	if (start > raw && munmap(raw, (size_t)(start - raw)))
		it_fail("munmap head: %m");
	if (munmap(start + len, (size_t)(raw + align - start)))
		it_fail("munmap tail: %m");
	return start;
}

static void fill(uint32_t gen)
{
	region = map_aligned(size, PROT_READ | PROT_WRITE);
	slots = calloc(page_count, sizeof(*slots));
	if (!slots)
		it_fail("out of memory");
	for (uint64_t p = 0; p < page_count; p++) {
		slots[p].addr = region + p * it_page_size;
		page_write(p, gen);
	}
	it_require_evicted(region, size, page_count / 2, expect, "after fill");
	it_stats_print("after fill");
}

static void scenario_basic(void)
{
	fill(1);
	it_step("evicted");
	read_in_order("sequential pass");
	read_random(page_count, 8, 2, 4242, "random reads");
	read_in_order("final pass in page order");
	read_strided("final pass with a stride");
	it_stats_print("after the reads");
	it_step("reread");
}

/* Random access only: the units' put-back pages go unused. */
static void scenario_random(void)
{
	fill(1);
	it_step("evicted");
	read_random(2 * page_count, 8, 2, 5151, "random reads, first round");
	it_step("random");
	read_random(2 * page_count, 8, 3, 6161, "random reads, second round");
	read_strided("every page with a stride");
	it_step("verified");
}

/* Random access, then access in page order again: units are wanted again. */
static void scenario_locality(void)
{
	fill(1);
	it_step("evicted");
	read_random(2 * page_count, 8, 2, 7171, "random reads");
	it_step("random");
	for (int pass = 0; pass < 3; pass++) {
		read_in_order("pass in page order after the random reads");
		for (uint64_t p = 0; p < page_count; p += 16)
			page_write(p, slots[p].gen + 1);
	}
	it_step("sequential");
	read_strided("every page with a stride");
	it_step("verified");
}

/* --- vmops ------------------------------------------------------------ */

static bool unit_absent(uint64_t unit)
{
	return it_count_absent(region + unit * UNIT_PAGES * it_page_size,
			       UNIT_PAGES * it_page_size) == UNIT_PAGES;
}

/*
 * The next unit at or after *cursor whose 4 pages are evicted and hold
 * ordinary data (no fill or zero page among them: units 9, 10 and 12 of
 * each 16), skipping to whole runs of count units when count > 1.
 */
static uint64_t next_absent_units(uint64_t *cursor, uint64_t count)
{
	uint64_t units = page_count / UNIT_PAGES;

	for (uint64_t u = *cursor; u + count <= units; u++) {
		bool ok = true;

		for (uint64_t k = 0; k < count && ok; k++)
			ok = (count > 1 || (u + k) % 16 < 8) && unit_absent(u + k);
		if (ok) {
			*cursor = u + count;
			return u;
		}
	}
	it_fail("fewer evicted units than the operations need (from unit %" PRIu64 ")", *cursor);
}

static char *unit_page(uint64_t unit, unsigned member)
{
	return region + (unit * UNIT_PAGES + member) * it_page_size;
}

/* Map one fresh page exactly at addr (a hole); it must read as zeros until written. */
static void map_hole(char *addr, size_t len, const char *what)
{
	void *p = mmap(addr, len, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);

	if (p == MAP_FAILED)
		it_fail("%s: mmap into the hole at %p: %s", what, (void *)addr, strerror(errno));
	if (p != addr)
		it_fail("%s: kernel placed the mapping at %p, not %p", what, p, (void *)addr);
}

static void check_zeros(const char *addr, size_t len, const char *what)
{
	for (size_t i = 0; i < len; i++)
		if (addr[i])
			it_fail("%s: byte %zu of the fresh memory at %p is %#x, not zero", what, i,
				(const void *)addr, (unsigned char)addr[i]);
}

static void unit_read_others(uint64_t unit, unsigned skip_mask, const char *context)
{
	for (unsigned m = 0; m < UNIT_PAGES; m++)
		if (!(skip_mask & 1U << m))
			page_read(unit * UNIT_PAGES + m, context);
}

/* Move count pages of logical pages from first to dst (MREMAP_FIXED). */
static void move_pages(uint64_t first, uint64_t count, char *dst, const char *what)
{
	char *src = slots[first].addr;
	size_t len = count * it_page_size;

	it_log("%s: pages %" PRIu64 "..%" PRIu64 " (%" PRIu64
	       " of them evicted), from member %" PRIu64 " of a unit to an address at page %" PRIu64
	       " of 4",
	       what, first, first + count - 1, it_count_absent(src, len), first % UNIT_PAGES,
	       ((uintptr_t)dst / it_page_size) % UNIT_PAGES);
	if (mremap(src, len, len, MREMAP_MAYMOVE | MREMAP_FIXED, dst) != dst)
		it_fail("%s: mremap: %m", what);
	for (uint64_t i = 0; i < count; i++)
		slots[first + i].addr = dst + i * it_page_size;
}

static void scenario_vmops(void)
{
	uint64_t cursor = 0, unmapped1[6], unmapped12[3], dropped2[6], dropped0[3], dropped3[3];
	uint64_t rewritten1[3];
	uint64_t moved_whole, moved_part;
	char *dst_whole, *dst_part;

	fill(1);
	it_step("evicted");
	/* Pick the units first, while everything is evicted: the operations fault nothing. */
	for (int i = 0; i < 6; i++)
		unmapped1[i] = next_absent_units(&cursor, 1);
	for (int i = 0; i < 3; i++)
		unmapped12[i] = next_absent_units(&cursor, 1);
	for (int i = 0; i < 6; i++)
		dropped2[i] = next_absent_units(&cursor, 1);
	for (int i = 0; i < 3; i++)
		dropped0[i] = next_absent_units(&cursor, 1);
	for (int i = 0; i < 3; i++)
		dropped3[i] = next_absent_units(&cursor, 1);
	for (int i = 0; i < 3; i++)
		rewritten1[i] = next_absent_units(&cursor, 1);
	moved_whole = next_absent_units(&cursor, 16);
	moved_part = next_absent_units(&cursor, 9);
	it_log("operating on units from %" PRIu64 " to %" PRIu64 " of %" PRIu64
	       ", every page of them evicted",
	       unmapped1[0], cursor, page_count / UNIT_PAGES);

	/* Destinations first: a mapping made later could land in a hole made below. */
	dst_whole = map_aligned(16 * UNIT_PAGES * it_page_size, PROT_NONE);
	dst_part =
	    map_aligned(REGION_ALIGN * it_page_size + 29 * it_page_size, PROT_NONE) + it_page_size;

	/* Members leave their unit. */
	for (int i = 0; i < 6; i++) {
		if (munmap(unit_page(unmapped1[i], 1), it_page_size))
			it_fail("munmap member 1: %m");
		slots[unmapped1[i] * UNIT_PAGES + 1].addr = NULL;
	}
	for (int i = 0; i < 3; i++) {
		if (munmap(unit_page(unmapped12[i], 1), 2 * it_page_size))
			it_fail("munmap members 1 and 2: %m");
		slots[unmapped12[i] * UNIT_PAGES + 1].addr = NULL;
		slots[unmapped12[i] * UNIT_PAGES + 2].addr = NULL;
	}
	for (int i = 0; i < 6; i++) {
		if (madvise(unit_page(dropped2[i], 2), it_page_size, MADV_DONTNEED))
			it_fail("MADV_DONTNEED member 2: %m");
		page_forget(dropped2[i] * UNIT_PAGES + 2);
	}
	for (int i = 0; i < 3; i++) {
		if (madvise(unit_page(dropped0[i], 0), it_page_size, MADV_DONTNEED) ||
		    madvise(unit_page(dropped3[i], 3), it_page_size, MADV_DONTNEED))
			it_fail("MADV_DONTNEED member 0 or 3: %m");
		page_forget(dropped0[i] * UNIT_PAGES);
		page_forget(dropped3[i] * UNIT_PAGES + 3);
	}
	/* Dropped and written at once (generation 60), before the unit faults. */
	for (int i = 0; i < 3; i++) {
		if (madvise(unit_page(rewritten1[i], 1), it_page_size, MADV_DONTNEED))
			it_fail("MADV_DONTNEED member 1: %m");
		page_write(rewritten1[i] * UNIT_PAGES + 1, 60);
	}
	it_log("unmapped member 1 of 6 units, members 1-2 of 3; dropped member 2 of 6, "
	       "member 0 of 3, member 3 of 3; dropped and wrote member 1 of 3");
	/* New memory where a member was, before any other member faults: 2 left untouched,
	 * 2 written at once (generation 50, the page's own pattern). */
	for (int i = 0; i < 4; i++) {
		uint64_t p = unmapped1[i] * UNIT_PAGES + 1;

		map_hole(unit_page(unmapped1[i], 1), it_page_size, "hole of member 1");
		if (i >= 2) {
			slots[p].addr = unit_page(unmapped1[i], 1);
			page_write(p, 50);
		}
	}
	move_pages(moved_whole * UNIT_PAGES, 16 * UNIT_PAGES, dst_whole,
		   "mremap of 16 whole units to an aligned address");
	move_pages(moved_part * UNIT_PAGES + 2, 29, dst_part,
		   "mremap of 29 pages across units to an address of another alignment");

	it_step("operated");
	/* The members that stayed, first: a fault on one puts back its unit's others. */
	for (int i = 0; i < 6; i++)
		unit_read_others(unmapped1[i], 1U << 1, "member left after munmap of member 1");
	for (int i = 0; i < 3; i++)
		unit_read_others(unmapped12[i], 3U << 1, "member left after munmap of members 1-2");
	for (int i = 0; i < 6; i++)
		unit_read_others(dropped2[i], 1U << 2,
				 "member left after MADV_DONTNEED of member 2");
	for (int i = 0; i < 3; i++) {
		unit_read_others(dropped0[i], 1U << 0,
				 "member left after MADV_DONTNEED of member 0");
		unit_read_others(dropped3[i], 1U << 3,
				 "member left after MADV_DONTNEED of member 3");
	}
	for (int i = 0; i < 3; i++)
		unit_read_others(rewritten1[i], 1U << 1,
				 "member left after MADV_DONTNEED and a write of member 1");
	/* Then the pages that left: zeros (or what was written there since). */
	for (int i = 0; i < 3; i++)
		page_read(rewritten1[i] * UNIT_PAGES + 1,
			  "page dropped with MADV_DONTNEED and written again");
	for (int i = 0; i < 6; i++)
		page_read(dropped2[i] * UNIT_PAGES + 2, "page dropped with MADV_DONTNEED");
	for (int i = 0; i < 3; i++) {
		page_read(dropped0[i] * UNIT_PAGES, "page dropped with MADV_DONTNEED");
		page_read(dropped3[i] * UNIT_PAGES + 3, "page dropped with MADV_DONTNEED");
	}
	for (int i = 0; i < 2; i++)
		check_zeros(unit_page(unmapped1[i], 1), it_page_size,
			    "fresh page mapped where member 1 was, its unit faulted since");
	for (int i = 2; i < 4; i++)
		page_read(unmapped1[i] * UNIT_PAGES + 1, "page written where member 1 was");
	for (int i = 4; i < 6; i++) {
		map_hole(unit_page(unmapped1[i], 1), it_page_size, "hole of member 1");
		check_zeros(unit_page(unmapped1[i], 1), it_page_size,
			    "fresh page mapped where member 1 was, after its unit faulted");
	}
	for (int i = 0; i < 3; i++) {
		map_hole(unit_page(unmapped12[i], 1), 2 * it_page_size, "hole of members 1-2");
		check_zeros(unit_page(unmapped12[i], 1), 2 * it_page_size,
			    "fresh pages mapped where members 1-2 were");
	}
	/* The moved pages at their new address, their old place fresh, then everything. */
	for (uint64_t i = 0; i < 16 * UNIT_PAGES; i++)
		page_read(moved_whole * UNIT_PAGES + i, "page moved with whole units");
	for (uint64_t i = 0; i < 29; i++)
		page_read(moved_part * UNIT_PAGES + 2 + i, "page moved across unit boundaries");
	/* The two members of the last moved unit that stayed (after its moved ones). */
	page_read(moved_part * UNIT_PAGES, "member left behind by the mremap");
	page_read(moved_part * UNIT_PAGES + 1, "member left behind by the mremap");
	page_read((moved_part + 7) * UNIT_PAGES + 3, "member left behind by the mremap");
	map_hole(unit_page(moved_whole, 0), 16 * UNIT_PAGES * it_page_size, "mremap source");
	check_zeros(unit_page(moved_whole, 0), 16 * UNIT_PAGES * it_page_size,
		    "fresh memory where 16 units were moved from");
	map_hole(unit_page(moved_part, 2), 29 * it_page_size, "mremap source");
	check_zeros(unit_page(moved_part, 2), 29 * it_page_size,
		    "fresh memory where 29 pages were moved from");
	read_in_order("every page after the operations");
	it_stats_print("after the operations");
	it_step("verified");

	/* The pages where they are now keep being paged, in units or not. */
	for (uint64_t p = 0; p < page_count; p++)
		if (slots[p].addr)
			page_write(p, slots[p].gen + 100);
	it_require_evicted(region, size, page_count / 2, expect, "after rewriting every page");
	read_in_order("every page after the second eviction");
	read_strided("every page with a stride after the second eviction");
}

/* --- fork --------------------------------------------------------------- */

static void drop_page(uint64_t p, const char *who)
{
	if (madvise(slots[p].addr, it_page_size, MADV_DONTNEED))
		it_fail("%s: MADV_DONTNEED of page %" PRIu64 ": %m", who, p);
	page_forget(p);
}

static void fork_child(void)
{
	it_name = "itest-units(child)";
	prctl(PR_SET_PDEATHSIG, SIGKILL);
	/* Members of shared units leave in the child only: the parent keeps them. */
	for (uint64_t u = 6; u < page_count / UNIT_PAGES; u += 16)
		drop_page(u * UNIT_PAGES, "child");
	read_in_order("child right after fork, in page order");
	for (uint64_t p = 3; p < page_count; p += 8)
		page_write(p, slots[p].gen + 10);
	read_strided("child after its writes");
	if (it_managed() == 1)
		it_require_evicted(region, size, page_count / 4, expect, "child after its reads");
	read_in_order("child after eviction");
	it_log("child PASS: %" PRIu64 " page reads verified, %" PRIu64 " writes",
	       (uint64_t)verified, (uint64_t)written);
	exit(0);
}

static void scenario_fork(void)
{
	int status;
	pid_t pid;

	fill(1);
	it_step("evicted");
	pid = fork();
	if (pid < 0)
		it_fail("fork: %m");
	if (pid == 0)
		fork_child();
	/* Members of shared units leave in the parent only: the child keeps them. */
	for (uint64_t u = 5; u < page_count / UNIT_PAGES; u += 16)
		drop_page(u * UNIT_PAGES + 2, "parent");
	for (uint64_t i = 0; i < page_count; i++)
		page_read(page_count - 1 - i, "parent during the child's reads, last page first");
	for (uint64_t p = 1; p < page_count; p += 8)
		page_write(p, slots[p].gen + 20);
	read_random(page_count / 2, 0, 0, 77, "parent random reads while the child runs");
	if (waitpid(pid, &status, 0) != pid)
		it_fail("waitpid: %m");
	if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
		it_fail("child failed (status %#x)", status);
	read_in_order("parent after the child exited");
	it_require_evicted(region, size, page_count / 4, expect, "parent after the fork");
	read_strided("parent after eviction");
	it_stats_print("parent at end");
	it_step("verified");
}

/* --- threads ---------------------------------------------------------------- */

#define UNIT_THREADS UNIT_PAGES

/*
 * Thread t owns member t of every unit: it reads them unit after unit (the
 * four threads fault the four members of a unit at about the same time),
 * then in a random order of its own, rewriting one in four.  No page is
 * read by one thread while another writes it.
 */
static void *unit_thread(void *arg)
{
	uint64_t t = (uintptr_t)arg, units = page_count / UNIT_PAGES, state = 1000 + t;

	for (uint64_t u = 0; u < units; u++)
		page_read(u * UNIT_PAGES + t, "thread's member, unit after unit");
	for (uint64_t i = 0; i < units; i++) {
		uint64_t r = it_rand(&state), p = r % units * UNIT_PAGES + t;

		page_read(p, "thread's member, units at random");
		if ((r >> 60) % 4 == 0)
			page_write(p, slots[p].gen + 1);
	}
	return NULL;
}

static void run_threads(void)
{
	pthread_t threads[UNIT_THREADS];

	for (uintptr_t t = 0; t < UNIT_THREADS; t++)
		if (pthread_create(&threads[t], NULL, unit_thread, (void *)t))
			it_fail("pthread_create failed");
	for (int t = 0; t < UNIT_THREADS; t++)
		pthread_join(threads[t], NULL);
}

static void scenario_threads(void)
{
	fill(1);
	it_step("evicted");
	run_threads();
	read_in_order("every page after the threads");
	it_require_evicted(region, size, page_count / 2, expect, "after the threads");
	run_threads();
	read_strided("every page after the second round of threads");
	it_step("verified");
}

/* --- race ------------------------------------------------------------------ */

/*
 * Run with a slow agent (UZSWAP_TEST_AGENT_DELAY_US): for 8 s (and at least
 * 2000 rounds) a page at random is dropped (MADV_DONTNEED) and written again
 * at once, and the 4 pages of another aligned group are read (so units
 * keep being wanted and faulted), while eviction batches, in which units
 * are formed, are out.  A page written after its drop keeps its data.
 */
static void scenario_race(void)
{
	uint64_t state = 42, rounds = 0, end;

	fill(1);
	it_step("evicted");
	end = it_now_ns() + 8ULL * 1000000000ULL;
	while (it_now_ns() < end || rounds < 2000) {
		uint64_t p = it_rand(&state) % page_count;
		uint64_t q = it_rand(&state) % page_count & ~(uint64_t)(UNIT_PAGES - 1);

		drop_page(p, "race");
		page_write(p, (uint32_t)(2 + rounds % 1000000));
		for (uint64_t k = 0; k < UNIT_PAGES; k++)
			page_read(q + k, "a group read during the drops");
		rounds++;
	}
	it_log("%" PRIu64 " pages dropped and written again", rounds);
	read_in_order("every page after the drops");
	it_step("verified");
}

/* --- aligned --------------------------------------------------------------- */

/*
 * With fault-around off, a read of one evicted page may make present only
 * pages of its own aligned group of 4 (its unit's, put back with it): a
 * page outside the group made present by that fault means a unit that does
 * not start at a vpn multiple of 4.  Probes member 0 of consecutive units
 * (each probe one page past the run the last one put back: what a unit
 * puts back is used, so units stay wanted) whose 4 pages and the next 4
 * are evicted; prints how many probes found the whole group put back
 * ("probes restored").
 */
static void scenario_aligned(void)
{
	uint64_t units = page_count / UNIT_PAGES, probes = 0, whole = 0, single = 0;
	bool absent_before[3 * UNIT_PAGES];
	char map[3 * UNIT_PAGES + 1];

	fill(1);
	it_step("evicted");
	for (uint64_t u = 1; u + 2 < units / 2; u++) {
		uint64_t first = u * UNIT_PAGES, present = 0;
		char *base = region + (first - UNIT_PAGES) * it_page_size;

		/* The group and the next one evicted: the probe sees what comes back. */
		if (it_count_absent(base + UNIT_PAGES * it_page_size,
				    2 * UNIT_PAGES * it_page_size) != 2 * UNIT_PAGES)
			continue;
		for (uint64_t k = 0; k < 3 * UNIT_PAGES; k++)
			absent_before[k] = it_page_absent(base + k * it_page_size);
		page_read(first, "probe of member 0");
		for (uint64_t k = 0; k < 3 * UNIT_PAGES; k++) {
			uint64_t p = first - UNIT_PAGES + k;
			bool absent = it_page_absent(base + k * it_page_size);

			map[k] = absent ? '.' : absent_before[k] ? '+' : '#';
			if (p >= first && p < first + UNIT_PAGES)
				present += !absent;
		}
		map[3 * UNIT_PAGES] = 0;
		for (uint64_t k = 0; k < 3 * UNIT_PAGES; k++) {
			uint64_t p = first - UNIT_PAGES + k;

			if (map[k] == '+' && (p < first || p >= first + UNIT_PAGES))
				it_fail(
				    "a fault on page %" PRIu64 " (member 0 of its aligned group "
				    "%" PRIu64 "..%" PRIu64 ") made page %" PRIu64
				    " present, outside the group, with fault-around off: a unit "
				    "not aligned to 4 pages (pages %" PRIu64 "..%" PRIu64
				    ": %s; + made present by this fault, # present before, . "
				    "absent)",
				    first, first, first + UNIT_PAGES - 1, p, first - UNIT_PAGES,
				    first + 2 * UNIT_PAGES - 1, map);
		}
		probes++;
		whole += present == UNIT_PAGES;
		single += present <= 1;
	}
	it_log("%" PRIu64 " probes: %" PRIu64 " put back their whole aligned group, %" PRIu64
	       " only the page read (or nothing left present)",
	       probes, whole, single);
	if (expect == IT_EXPECT_YES && probes < 64)
		it_fail("only %" PRIu64 " probes found their neighbourhood evicted", probes);
	printf("probes %" PRIu64 "\nprobes restored %" PRIu64 "\n", probes, whole);
	read_in_order("every page after the probes");
	it_step("verified");
}

/* --- writeback and recovery ---------------------------------------------- */

static void wait_on_disk(uint64_t min_pages, unsigned timeout_ms)
{
	struct uzswap_stats stats = {0};
	uint64_t end = it_now_ns() + (uint64_t)timeout_ms * 1000000;

	if (expect != IT_EXPECT_YES)
		return;
	while (it_now_ns() < end) {
		if (it_stats(&stats) == 0 && stats.on_disk_pages >= min_pages) {
			it_log("%" PRIu64 " pages on disk", stats.on_disk_pages);
			return;
		}
		usleep(50 * 1000);
	}
	it_stats_print("waiting for writeback");
	it_fail("only %" PRIu64 " pages on disk after %u ms (want %" PRIu64 ")",
		stats.on_disk_pages, timeout_ms, min_pages);
}

static void scenario_writeback(void)
{
	fill(1);
	wait_on_disk(page_count / 4, 60000);
	it_stats_print("on disk");
	it_step("ondisk");
	read_in_order("pass in page order, pages on disk");
	read_random(page_count, 8, 2, 99, "random reads");
	read_in_order("final pass");
	it_stats_print("at end");
	it_step("verified");
}

static void scenario_recovery(void)
{
	fill(1);
	it_step("evicted");
	read_in_order("pass in page order after the restart");
	read_random(page_count, 8, 2, 1234, "random reads after the restart");
	read_in_order("final pass after the restart");
	read_strided("final pass with a stride after the restart");
	it_stats_print("at end");
	it_step("verified");
}

/*
 * Units that lost members before the daemon was killed: member 1 of 8
 * dropped, member 2 of 8 unmapped (fresh memory mapped there at once), 29
 * pages moved from member 2 of a unit to an address one page past
 * alignment.  The next daemon takes them back as they are.
 */
static void scenario_recovery_vmops(void)
{
	uint64_t cursor = 0, dropped1[8], unmapped2[8], moved;
	char *dst;

	fill(1);
	dst =
	    map_aligned(REGION_ALIGN * it_page_size + 29 * it_page_size, PROT_NONE) + it_page_size;
	for (int i = 0; i < 8; i++)
		dropped1[i] = next_absent_units(&cursor, 1);
	for (int i = 0; i < 8; i++)
		unmapped2[i] = next_absent_units(&cursor, 1);
	moved = next_absent_units(&cursor, 9);
	for (int i = 0; i < 8; i++) {
		if (madvise(unit_page(dropped1[i], 1), it_page_size, MADV_DONTNEED))
			it_fail("MADV_DONTNEED member 1: %m");
		page_forget(dropped1[i] * UNIT_PAGES + 1);
		if (munmap(unit_page(unmapped2[i], 2), it_page_size))
			it_fail("munmap member 2: %m");
		slots[unmapped2[i] * UNIT_PAGES + 2].addr = NULL;
		map_hole(unit_page(unmapped2[i], 2), it_page_size, "hole of member 2");
	}
	move_pages(moved * UNIT_PAGES + 2, 29, dst,
		   "mremap of 29 pages across units to an address of another alignment");
	it_step("evicted");
	for (int i = 0; i < 8; i++) {
		unit_read_others(dropped1[i], 1U << 1, "member left by MADV_DONTNEED, restarted");
		unit_read_others(unmapped2[i], 1U << 2, "member left by munmap, restarted");
	}
	for (uint64_t i = 0; i < 29; i++)
		page_read(moved * UNIT_PAGES + 2 + i, "page moved before the restart");
	for (int i = 0; i < 8; i++) {
		page_read(dropped1[i] * UNIT_PAGES + 1, "page dropped before the restart");
		check_zeros(unit_page(unmapped2[i], 2), it_page_size,
			    "fresh page where a member was unmapped before the restart");
	}
	read_in_order("pass in page order after the restart");
	read_random(page_count, 8, 2, 4321, "random reads after the restart");
	read_strided("final pass with a stride after the restart");
	it_step("verified");
}

int main(int argc, char **argv)
{
	static const struct {
		const char *name;
		void (*run)(void);
	} modes[] = {
	    {"basic", scenario_basic},	     {"vmops", scenario_vmops},
	    {"fork", scenario_fork},	     {"writeback", scenario_writeback},
	    {"recovery", scenario_recovery}, {"aligned", scenario_aligned},
	    {"threads", scenario_threads},   {"recovery-vmops", scenario_recovery_vmops},
	    {"race", scenario_race},	     {"random", scenario_random},
	    {"locality", scenario_locality},
	};

	it_init("itest-units");
	if (argc != 5)
		it_fail("usage: itest-units MODE SIZE DATA(text|dense|random) MANAGED");
	size = it_parse_size(argv[2]);
	page_count = size / it_page_size;
	if (page_count < 1024 || page_count & (page_count - 1))
		it_fail("SIZE must be a power of two pages, at least 1024");
	if (!strcmp(argv[3], "text"))
		data_kind = DATA_TEXT;
	else if (!strcmp(argv[3], "dense"))
		data_kind = DATA_DENSE;
	else if (!strcmp(argv[3], "random"))
		data_kind = DATA_RANDOM;
	else
		it_fail("DATA must be text, dense or random, not \"%s\"", argv[3]);
	if (data_kind == DATA_DENSE && it_page_size < 4 * DENSE_NOISE)
		it_fail("page size %zu too small for dense data", it_page_size);
	expect = it_parse_expect(argv[4]);
	for (size_t i = 0; i < sizeof(modes) / sizeof(modes[0]); i++) {
		if (strcmp(argv[1], modes[i].name))
			continue;
		it_name = modes[i].name;
		it_log("mode %s over %zu MiB of %s data; see the comment at the top of "
		       "itest-units.c",
		       modes[i].name, size >> 20, argv[3]);
		it_check_managed(expect);
		modes[i].run();
		it_stats_print("at end");
		printf("verified %" PRIu64 "\nwritten %" PRIu64 "\n", (uint64_t)verified,
		       (uint64_t)written);
		it_log("PASS: %" PRIu64 " page reads verified (checksum and pattern), %" PRIu64
		       " writes",
		       (uint64_t)verified, (uint64_t)written);
		return 0;
	}
	it_fail("unknown mode '%s'", argv[1]);
}
