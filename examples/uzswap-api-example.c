/* SPDX-License-Identifier: MIT */
/*
 * uzswap-api-example: a program linked with libuzswap that uses its API.
 *
 * It maps 64 MiB, asks uzswapd to manage it (uzswap_register), fills it,
 * hints that the first half is cold and the second quarter hot, reads its
 * statistics after each step (uzswap_get_stats), verifies every page, and
 * gives the range back (uzswap_unregister).  Without a daemon every call
 * returns -ENOTCONN and the program still runs, unmanaged.
 *
 * build: cc uzswap-api-example.c -luzswap
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <uzswap.h>

#define REGION_SIZE (64UL << 20)

static size_t page_size;

static void page_fill(unsigned char *page, uint64_t pageno)
{
	int n = snprintf((char *)page, page_size, "page %" PRIu64 ":", pageno);

	for (size_t i = (size_t)n; i < page_size; i++)
		page[i] = (unsigned char)("abcdefgh "[(pageno + i / 7) % 9]);
}

static int page_check(const unsigned char *page, uint64_t pageno)
{
	unsigned char expected[65536];

	page_fill(expected, pageno);
	return memcmp(page, expected, page_size);
}

static void show_stats(const char *when)
{
	struct uzswap_stats s;
	int r = uzswap_get_stats(&s);

	if (r < 0) {
		printf("%-28s stats unavailable: %s\n", when, strerror(-r));
		return;
	}
	printf("%-28s resident %6" PRIu64 "  stored %6" PRIu64 "  compressed %8" PRIu64
	       " KiB  faults %6" PRIu64 "  zswpout %6" PRIu64 "  zswpin %6" PRIu64 "\n",
	       when, s.resident_pages, s.stored_pages, s.compressed_bytes / 1024, s.faults,
	       s.zswpout, s.zswpin);
}

static int verify(const unsigned char *region, uint64_t count, const char *when)
{
	for (uint64_t p = 0; p < count; p++) {
		if (page_check(region + p * page_size, p)) {
			printf("page %" PRIu64 " is corrupt %s\n", p, when);
			return -1;
		}
	}
	printf("%-28s all %" PRIu64 " pages verified\n", when, count);
	return 0;
}

int main(void)
{
	unsigned char *region;
	uint64_t count;
	int r;

	page_size = (size_t)sysconf(_SC_PAGESIZE);
	count = REGION_SIZE / page_size;
	printf("managed by uzswapd: %s\n", uzswap_managed() ? "yes" : "no");
	region =
	    mmap(NULL, REGION_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (region == MAP_FAILED) {
		perror("mmap");
		return 1;
	}

	r = uzswap_register(region, REGION_SIZE);
	if (r == -EEXIST)
		printf("uzswap_register: already managed (the library's mmap hook took it)\n");
	else
		printf("uzswap_register: %s\n", r ? strerror(-r) : "ok");

	for (uint64_t p = 0; p < count; p++)
		page_fill(region + p * page_size, p);
	show_stats("after filling 64 MiB:");

	r = uzswap_hint(region, REGION_SIZE / 2, UZSWAP_HINT_COLD);
	printf("uzswap_hint(first half, COLD): %s\n", r ? strerror(-r) : "ok");
	usleep(500000);
	show_stats("after the COLD hint:");
	if (verify(region, count / 2, "cold half read back:"))
		return 1;
	show_stats("after reading it back:");

	r = uzswap_hint(region + REGION_SIZE / 4, REGION_SIZE / 4, UZSWAP_HINT_HOT);
	printf("uzswap_hint(second quarter, HOT): %s\n", r ? strerror(-r) : "ok");
	show_stats("after the HOT hint:");

	r = uzswap_unregister(region, REGION_SIZE);
	printf("uzswap_unregister: %s\n", r ? strerror(-r) : "ok");
	if (verify(region, count, "after unregister:"))
		return 1;
	show_stats("at the end:");
	munmap(region, REGION_SIZE);
	return 0;
}
