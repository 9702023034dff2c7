/* SPDX-License-Identifier: MIT */
/*
 * hotcold: a hot/cold memory workload for comparing uzswap with the
 * kernel's compressed swap (bench/hotcold/run-bench drives both sides).
 *
 * A working set of SIZE bytes of text-like pages (words from a small
 * dictionary, the kind of data zswap sees from caches and heaps) is
 * written once, then ACCESSES random page accesses follow: HOT_PERCENT of
 * them go to a small hot set (HOT bytes of pages scattered over the working
 * set), the rest to any page.  WRITE_PERCENT of the accesses rewrite the
 * page.  Every access reads the whole page and checks it against the
 * page's checksum kept on the side; a final pass checks every page.  Any
 * mismatch exits 1: a fast wrong answer is not a result.
 *
 * Before each access the page's /proc/self/pagemap entry says whether it
 * is present.  For accesses to absent pages (evicted by uzswap, swapped out
 * by the kernel) the time of the first load is recorded: that is the fault
 * service latency as the program sees it, measured the same way on both
 * sides.  The pagemap read is outside the timed section.
 *
 * --pattern sequential reads the working set in page order instead (the
 * access phase is ACCESSES consecutive pages, wrapping round: a scan of
 * evicted memory), --pattern strided every STRIDE-th page (--stride,
 * default 4), wrapping round with an offset so every page is visited in
 * turn; the hot set and HOT_PERCENT do not apply to them.
 *
 * --histogram FILE writes the program-seen fault latency histogram there,
 * one "lower-bound-ns count" line per non-empty bucket (bench/apps plots
 * its CDF).
 *
 * Output: one "key value" line per result (the script parses them).  With
 * --hold SECONDS the program prints "HOLD" and keeps its memory that long
 * before exiting, so the caller can read pool statistics meanwhile.
 *
 * usage: hotcold [--size SIZE] [--hot SIZE] [--hot-percent N]
 *                [--write-percent N] [--accesses N] [--seed N] [--hold S]
 *                [--pattern random|sequential|strided] [--stride N]
 *                [--histogram FILE]
 */
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include <uzswap.h>

/* Latency histogram: 16 linear sub-buckets per power of two of nanoseconds. */
#define HIST_SUB     16
#define HIST_BUCKETS (64 * HIST_SUB)

static size_t page_size;
static uint64_t histogram[HIST_BUCKETS];
static uint64_t histogram_count;

static const char *const words[32] = {
    "the",    "of",	"and",	 "to",	  "in",	    "a",      "is",	"that",
    "for",    "record", "user",	 "value", "status", "ok",     "error",	"request",
    "time",   "id",	"name",	 "cache", "page",   "server", "client", "memory",
    "select", "from",	"where", "order", "by",	    "key",    "index",	"table",
};

static uint64_t splitmix(uint64_t *state)
{
	uint64_t z = (*state += 0x9e3779b97f4a7c15ULL);

	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
	return z ^ (z >> 31);
}

static void page_generate(unsigned char *page, uint64_t pageno, uint64_t version)
{
	uint64_t state = pageno * 0x2545f4914f6cdd1dULL + version;
	size_t pos =
	    (size_t)snprintf((char *)page, page_size, "%" PRIu64 ".%" PRIu64 ":", pageno, version);

	while (pos < page_size) {
		uint64_t r = splitmix(&state);
		const char *word = words[r & 31];
		size_t len = strlen(word);

		if (len > page_size - pos)
			len = page_size - pos;
		memcpy(page + pos, word, len);
		pos += len;
		if (pos < page_size)
			page[pos++] = (r >> 58) == 0 ? '\n' : ' ';
	}
}

static uint64_t page_checksum(const unsigned char *page)
{
	const uint64_t *words64 = (const uint64_t *)page;
	uint64_t hash = 0x84222325cbf29ce4ULL;

	for (size_t i = 0; i < page_size / 8; i++)
		hash = (hash ^ words64[i]) * 0x100000001b3ULL + (hash >> 29);
	return hash;
}

static void histogram_add(uint64_t ns)
{
	unsigned exponent = ns < HIST_SUB ? 0 : 63 - (unsigned)__builtin_clzll(ns) - 3;
	unsigned index = ns < HIST_SUB
			     ? (unsigned)ns
			     : exponent * HIST_SUB + (unsigned)((ns >> exponent) & 15) + HIST_SUB;

	if (index >= HIST_BUCKETS)
		index = HIST_BUCKETS - 1;
	histogram[index]++;
	histogram_count++;
}

static uint64_t histogram_bucket_low(unsigned i)
{
	if (i < HIST_SUB)
		return i;
	return (uint64_t)((i - HIST_SUB) % HIST_SUB + HIST_SUB) << ((i - HIST_SUB) / HIST_SUB);
}

/* The lower bound of the bucket holding the q-quantile. */
static uint64_t histogram_quantile(double q)
{
	uint64_t target = (uint64_t)(q * (double)histogram_count), seen = 0;

	for (unsigned i = 0; i < HIST_BUCKETS; i++) {
		seen += histogram[i];
		if (seen > target)
			return histogram_bucket_low(i);
	}
	return 0;
}

static int histogram_write(const char *path)
{
	FILE *f = fopen(path, "w");

	if (!f)
		return -errno;
	for (unsigned i = 0; i < HIST_BUCKETS; i++)
		if (histogram[i])
			fprintf(f, "%" PRIu64 " %" PRIu64 "\n", histogram_bucket_low(i), histogram[i]);
	return fclose(f) ? -errno : 0;
}

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

static size_t parse_size(const char *s)
{
	char *end;
	unsigned long long v = strtoull(s, &end, 10);

	if (*end == 'K' || *end == 'k')
		v <<= 10;
	else if (*end == 'M' || *end == 'm')
		v <<= 20;
	else if (*end == 'G' || *end == 'g')
		v <<= 30;
	return (size_t)v;
}

static int pagemap_fd = -1;

static int page_absent(const void *addr)
{
	uint64_t entry;
	off_t offset = (off_t)((uintptr_t)addr / page_size * 8);

	if (pread(pagemap_fd, &entry, 8, offset) != 8)
		return 0;
	return !(entry >> 63);
}

static void print_uzswap_stats(void)
{
	int (*get)(struct uzswap_stats *) =
	    (int (*)(struct uzswap_stats *))dlsym(RTLD_DEFAULT, "uzswap_get_stats");
	int (*managed)(void) = (int (*)(void))dlsym(RTLD_DEFAULT, "uzswap_managed");
	struct uzswap_stats s;

	printf("uzswap_managed %d\n", managed ? managed() : -1);
	if (!get || get(&s) < 0)
		return;
	printf("uzswap_faults %" PRIu64 "\n", s.faults);
	printf("uzswap_zswpin %" PRIu64 "\n", s.zswpin);
	printf("uzswap_zswpout %" PRIu64 "\n", s.zswpout);
	printf("uzswap_stored_pages %" PRIu64 "\n", s.stored_pages);
	printf("uzswap_same_filled_pages %" PRIu64 "\n", s.same_filled_pages);
	printf("uzswap_compressed_bytes %" PRIu64 "\n", s.compressed_bytes);
	if (s.compressed_bytes && s.stored_pages > s.same_filled_pages)
		printf("uzswap_compression_ratio %.3f\n",
		       (double)((s.stored_pages - s.same_filled_pages) * page_size) /
			   (double)s.compressed_bytes);
}

int main(int argc, char **argv)
{
	size_t size = 512UL << 20, hot = 32UL << 20;
	unsigned hot_percent = 90, write_percent = 20, hold = 0;
	enum { PATTERN_RANDOM, PATTERN_SEQUENTIAL, PATTERN_STRIDED } pattern = PATTERN_RANDOM;
	uint64_t stride = 4;
	const char *histogram_path = NULL;
	uint64_t accesses = 1000000, seed = 1, pages, hot_pages, faults = 0, writes = 0;
	uint64_t *checksum, *version, t_start, t_fill, t_access, t_end;
	unsigned char *region;

	for (int i = 1; i < argc; i++) {
		const char *arg = argv[i], *value = i + 1 < argc ? argv[i + 1] : NULL;

		if (!value) {
			fprintf(stderr, "hotcold: %s needs a value\n", arg);
			return 2;
		}
		i++;
		if (!strcmp(arg, "--size"))
			size = parse_size(value);
		else if (!strcmp(arg, "--hot"))
			hot = parse_size(value);
		else if (!strcmp(arg, "--hot-percent"))
			hot_percent = (unsigned)atoi(value);
		else if (!strcmp(arg, "--write-percent"))
			write_percent = (unsigned)atoi(value);
		else if (!strcmp(arg, "--accesses"))
			accesses = strtoull(value, NULL, 10);
		else if (!strcmp(arg, "--seed"))
			seed = strtoull(value, NULL, 10);
		else if (!strcmp(arg, "--hold"))
			hold = (unsigned)atoi(value);
		else if (!strcmp(arg, "--stride"))
			stride = strtoull(value, NULL, 10);
		else if (!strcmp(arg, "--histogram"))
			histogram_path = value;
		else if (!strcmp(arg, "--pattern") && !strcmp(value, "random"))
			pattern = PATTERN_RANDOM;
		else if (!strcmp(arg, "--pattern") && !strcmp(value, "sequential"))
			pattern = PATTERN_SEQUENTIAL;
		else if (!strcmp(arg, "--pattern") && !strcmp(value, "strided"))
			pattern = PATTERN_STRIDED;
		else {
			fprintf(stderr, "hotcold: unknown option %s\n", arg);
			return 2;
		}
	}
	page_size = (size_t)sysconf(_SC_PAGESIZE);
	pages = size / page_size;
	hot_pages = hot / page_size;
	if (pages < 2 || hot_pages < 1 || hot_pages > pages || hot_percent > 100 ||
	    write_percent > 100 || stride < 1) {
		fprintf(stderr, "hotcold: bad sizes or percentages\n");
		return 2;
	}
	setvbuf(stdout, NULL, _IOLBF, 0);
	pagemap_fd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
	checksum = calloc(pages, sizeof(*checksum));
	version = calloc(pages, sizeof(*version));
	region = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (pagemap_fd < 0 || !checksum || !version || region == MAP_FAILED) {
		fprintf(stderr, "hotcold: setup: %s\n", strerror(errno));
		return 1;
	}
	printf("working_set_bytes %zu\nhot_bytes %zu\nhot_percent %u\nwrite_percent %u\n"
	       "accesses %" PRIu64 "\n",
	       size, hot, hot_percent, write_percent, accesses);

	t_start = now_ns();
	for (uint64_t p = 0; p < pages; p++) {
		page_generate(region + p * page_size, p, 0);
		checksum[p] = page_checksum(region + p * page_size);
	}
	t_fill = now_ns();

	uint64_t state = seed;
	for (uint64_t i = 0; i < accesses; i++) {
		uint64_t r = splitmix(&state), p;
		unsigned char *page;
		volatile unsigned char sink;

		if (pattern == PATTERN_SEQUENTIAL)
			p = i % pages;
		else if (pattern == PATTERN_STRIDED) /* every stride-th page, then shifted by one */
			p = (i * stride % pages + i * stride / pages) % pages;
		else if (r % 100 < hot_percent) /* hot pages are scattered: p = k * stride mod pages */
			p = ((r >> 8) % hot_pages) * (pages / hot_pages) % pages;
		else
			p = (r >> 8) % pages;
		page = region + p * page_size;
		if (page_absent(page)) {
			uint64_t t0 = now_ns();

			sink = page[0];
			histogram_add(now_ns() - t0);
			(void)sink;
			faults++;
		}
		if (page_checksum(page) != checksum[p]) {
			printf("CORRUPT page %" PRIu64 " at access %" PRIu64 "\n", p, i);
			return 1;
		}
		if ((r >> 32) % 100 < write_percent) {
			page_generate(page, p, ++version[p]);
			checksum[p] = page_checksum(page);
			writes++;
		}
	}
	t_access = now_ns();
	for (uint64_t p = 0; p < pages; p++) {
		if (page_checksum(region + p * page_size) != checksum[p]) {
			printf("CORRUPT page %" PRIu64 " in the final pass\n", p);
			return 1;
		}
	}
	t_end = now_ns();

	printf("verified_pages %" PRIu64 "\n", pages);
	printf("writes %" PRIu64 "\n", writes);
	printf("fill_seconds %.3f\n", (double)(t_fill - t_start) / 1e9);
	printf("access_seconds %.3f\n", (double)(t_access - t_fill) / 1e9);
	printf("verify_seconds %.3f\n", (double)(t_end - t_access) / 1e9);
	printf("wall_seconds %.3f\n", (double)(t_end - t_start) / 1e9);
	printf("absent_page_accesses %" PRIu64 "\n", faults);
	printf("fault_latency_p50_ns %" PRIu64 "\n", histogram_quantile(0.50));
	printf("fault_latency_p99_ns %" PRIu64 "\n", histogram_quantile(0.99));
	print_uzswap_stats();
	if (histogram_path && histogram_write(histogram_path) < 0) {
		fprintf(stderr, "hotcold: cannot write \"%s\": %s\n", histogram_path, strerror(errno));
		return 1;
	}
	if (hold) {
		printf("HOLD\n");
		sleep(hold);
	}
	return 0;
}
