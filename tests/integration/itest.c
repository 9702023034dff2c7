/* SPDX-License-Identifier: MIT */
/*
 * Helpers shared by the integration test clients: the per-page pattern,
 * pagemap reading, libuzswap's API found through dlsym.  See itest.h.
 */
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "itest.h"

#define IT_HEADER_SIZE 32
#define IT_MAGIC       "uzs-test"
#define IT_PAGE_MAX    65536

size_t it_page_size;
const char *it_name = "itest";
static int pagemap_fd = -1;

struct it_header {
	char magic[8];
	uint64_t pageno;
	uint64_t gen;
	uint64_t mix;
};

static const char *const it_words[32] = {
    "the",   "page",  "fault",	  "memory", "swap",  "zone",   "of",	"and",
    "cold",  "hot",   "compress", "pool",   "entry", "daemon", "to",	"is",
    "a",     "in",    "kernel",	  "write",  "read",  "back",   "store", "lru",
    "queue", "batch", "evict",	  "ring",   "with",  "for",    "that",	"client",
};

void it_init(const char *name)
{
	it_name = name;
	it_page_size = (size_t)sysconf(_SC_PAGESIZE);
	if (it_page_size > IT_PAGE_MAX)
		it_fail("page size %zu too large", it_page_size);
	setvbuf(stdout, NULL, _IOLBF, 0);
}

void it_fail(const char *fmt, ...)
{
	va_list ap;

	fflush(stdout);
	printf("FAIL %s: ", it_name);
	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
	printf("\n");
	fflush(stdout);
	_exit(1);
}

void it_log(const char *fmt, ...)
{
	va_list ap;

	printf("%s: ", it_name);
	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
	printf("\n");
}

uint64_t it_rand(uint64_t *state)
{
	/* splitmix64: good enough and never stuck at zero */
	uint64_t z = (*state += 0x9e3779b97f4a7c15ULL);

	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
	return z ^ (z >> 31);
}

static void it_page_generate(unsigned char *page, uint64_t pageno, uint64_t gen)
{
	struct it_header header;
	uint64_t state = pageno * 0x100000001b3ULL ^ (gen << 40) ^ 0x5bd1e995ULL;
	size_t pos = IT_HEADER_SIZE;
	unsigned words_on_line = 0;

	memcpy(header.magic, IT_MAGIC, sizeof(header.magic));
	header.pageno = pageno;
	header.gen = gen;
	header.mix = it_rand(&state);
	memcpy(page, &header, sizeof(header));
	while (pos < it_page_size) {
		uint64_t r = it_rand(&state);
		const char *word = it_words[r & 31];
		size_t len = strlen(word);

		if (len > it_page_size - pos)
			len = it_page_size - pos;
		memcpy(page + pos, word, len);
		pos += len;
		if (pos < it_page_size) {
			page[pos++] = (++words_on_line % 12 == 0 || (r >> 60) == 0) ? '\n' : ' ';
			if (page[pos - 1] == '\n')
				words_on_line = 0;
		}
	}
}

void it_page_fill(void *page, uint64_t pageno, uint64_t gen)
{
	if (gen == 0)
		memset(page, 0, it_page_size);
	else
		it_page_generate(page, pageno, gen);
}

static bool it_all_zero(const unsigned char *p, size_t len)
{
	for (size_t i = 0; i < len; i++)
		if (p[i])
			return false;
	return true;
}

int it_page_check(const void *page, uint64_t pageno, uint64_t gen, char *why, size_t why_len)
{
	unsigned char expected[IT_PAGE_MAX];
	const unsigned char *bytes = page;
	struct it_header found;
	size_t first_diff;

	it_page_fill(expected, pageno, gen);
	if (memcmp(expected, page, it_page_size) == 0)
		return 0;
	for (first_diff = 0; first_diff < it_page_size; first_diff++)
		if (expected[first_diff] != bytes[first_diff])
			break;
	memcpy(&found, page, sizeof(found));
	if (it_all_zero(page, it_page_size))
		snprintf(why, why_len, "page reads as zeros");
	else if (memcmp(found.magic, IT_MAGIC, sizeof(found.magic)) == 0)
		snprintf(why, why_len,
			 "page holds page %" PRIu64 " generation %" PRIu64
			 " (first difference at byte %zu)",
			 found.pageno, found.gen, first_diff);
	else
		snprintf(why, why_len, "page holds unknown bytes (first difference at byte %zu)",
			 first_diff);
	return -1;
}

void it_page_verify(const void *page, uint64_t pageno, uint64_t gen, const char *context)
{
	char why[160];

	if (it_page_check(page, pageno, gen, why, sizeof(why)) < 0)
		it_fail("%s: page %" PRIu64 " at %p, expected generation %" PRIu64 ": %s", context,
			pageno, page, gen, why);
}

void it_range_fill(void *base, uint64_t first, uint64_t count, uint64_t gen)
{
	for (uint64_t i = 0; i < count; i++)
		it_page_fill((char *)base + i * it_page_size, first + i, gen);
}

void it_range_verify(const void *base, uint64_t first, uint64_t count, uint64_t gen,
		     const char *context)
{
	for (uint64_t i = 0; i < count; i++)
		it_page_verify((const char *)base + i * it_page_size, first + i, gen, context);
}

void *it_map(size_t len)
{
	void *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	if (p == MAP_FAILED)
		it_fail("mmap %zu bytes: %s", len, strerror(errno));
	return p;
}

static void it_pagemap_open(void)
{
	if (pagemap_fd >= 0)
		return;
	pagemap_fd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
	if (pagemap_fd < 0)
		it_fail("open /proc/self/pagemap: %s", strerror(errno));
}

uint64_t it_count_absent(const void *addr, size_t len)
{
	uint64_t entries[512];
	uint64_t first = (uintptr_t)addr / it_page_size;
	uint64_t count = len / it_page_size;
	uint64_t absent = 0;

	it_pagemap_open();
	for (uint64_t done = 0; done < count;) {
		size_t n = count - done < 512 ? count - done : 512;
		ssize_t r = pread(pagemap_fd, entries, n * 8, (off_t)((first + done) * 8));

		if (r != (ssize_t)(n * 8))
			it_fail("read /proc/self/pagemap: %s", r < 0 ? strerror(errno) : "short");
		for (size_t i = 0; i < n; i++)
			if (!(entries[i] >> 63 & 1) && !(entries[i] >> 62 & 1))
				absent++;
		done += n;
	}
	return absent;
}

int it_page_absent(const void *addr)
{
	return it_count_absent((const void *)((uintptr_t)addr & ~(uintptr_t)(it_page_size - 1)),
			       it_page_size) == 1;
}

uint64_t it_wait_absent(const void *addr, size_t len, uint64_t min_pages, unsigned timeout_ms)
{
	uint64_t deadline = it_now_ns() + (uint64_t)timeout_ms * 1000000;
	uint64_t absent;

	for (;;) {
		absent = it_count_absent(addr, len);
		if (absent >= min_pages || it_now_ns() >= deadline)
			return absent;
		usleep(20000);
	}
}

int it_managed(void)
{
	int (*fn)(void) = (int (*)(void))dlsym(RTLD_DEFAULT, "uzswap_managed");

	return fn ? fn() : -1;
}

int it_stats(struct uzswap_stats *stats)
{
	int (*fn)(struct uzswap_stats *) =
	    (int (*)(struct uzswap_stats *))dlsym(RTLD_DEFAULT, "uzswap_get_stats");

	return fn ? fn(stats) : -ENOSYS;
}

void it_stats_print(const char *when)
{
	struct uzswap_stats s;
	int r = it_stats(&s);

	if (r < 0) {
		it_log("stats %s: unavailable (%s)", when, strerror(-r));
		return;
	}
	it_log("stats %s: registered %" PRIu64 " KiB, resident %" PRIu64 " stored %" PRIu64
	       " same-filled %" PRIu64 " on-disk %" PRIu64 " pages, compressed %" PRIu64
	       " bytes, faults %" PRIu64 " zswpin %" PRIu64 " zswpout %" PRIu64,
	       when, s.registered_bytes / 1024, s.resident_pages, s.stored_pages,
	       s.same_filled_pages, s.on_disk_pages, s.compressed_bytes, s.faults, s.zswpin,
	       s.zswpout);
}

enum it_expect it_parse_expect(const char *s)
{
	if (!strcmp(s, "yes"))
		return IT_EXPECT_YES;
	if (!strcmp(s, "no"))
		return IT_EXPECT_NO;
	if (!strcmp(s, "any"))
		return IT_EXPECT_ANY;
	it_fail("bad expectation '%s' (yes, no or any)", s);
}

void it_check_managed(enum it_expect expect)
{
	int managed = it_managed();

	it_log("libuzswap %s, process %s", managed < 0 ? "not loaded" : "loaded",
	       managed > 0 ? "managed" : "not managed");
	if (expect == IT_EXPECT_YES && managed != 1)
		it_fail("expected to be managed by uzswapd, uzswap_managed() = %d", managed);
	if (expect == IT_EXPECT_NO && managed == 1)
		it_fail("expected not to be managed, but uzswap_managed() = 1");
}

uint64_t it_require_evicted(const void *addr, size_t len, uint64_t min_pages, enum it_expect expect,
			    const char *what)
{
	uint64_t absent;

	if (expect != IT_EXPECT_YES)
		return it_count_absent(addr, len);
	absent = it_wait_absent(addr, len, min_pages, 30000);
	if (absent < min_pages) {
		it_stats_print(what); /* what the daemon says of us: for the report */
		it_fail("%s: only %" PRIu64 " of %zu pages evicted after 30 s (need %" PRIu64
			"): the test would prove nothing",
			what, absent, len / it_page_size, min_pages);
	}
	it_log("%s: %" PRIu64 " of %zu pages evicted", what, absent, len / it_page_size);
	return absent;
}

uint64_t it_now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

size_t it_parse_size(const char *s)
{
	char *end;
	unsigned long long v = strtoull(s, &end, 10);

	switch (*end) {
	case 'k':
	case 'K':
		v <<= 10;
		end++;
		break;
	case 'm':
	case 'M':
		v <<= 20;
		end++;
		break;
	case 'g':
	case 'G':
		v <<= 30;
		end++;
		break;
	default:
		break;
	}
	if (*end || v == 0)
		it_fail("bad size '%s'", s);
	return (size_t)v;
}

int it_has_cap_sys_ptrace(void)
{
	char line[256];
	FILE *f = fopen("/proc/self/status", "re");
	int has = -1;

	if (!f)
		return -1;
	while (fgets(line, sizeof(line), f)) {
		unsigned long long caps;

		if (sscanf(line, "CapEff: %llx", &caps) == 1) {
			has = (caps >> 19) & 1; /* CAP_SYS_PTRACE */
			break;
		}
	}
	fclose(f);
	return has;
}

uint64_t it_page_checksum(const void *page)
{
	const uint64_t *words = page;
	uint64_t h = 0xcbf29ce484222325ULL;

	for (size_t i = 0; i < it_page_size / sizeof(uint64_t); i++) {
		h ^= words[i];
		h *= 0x100000001b3ULL;
	}
	return h;
}

void it_step(const char *name)
{
	char line[64];

	printf("STEP %s\n", name);
	fflush(stdout);
	if (!fgets(line, sizeof(line), stdin))
		it_fail("harness went away at step %s", name);
}
