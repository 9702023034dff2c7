/* SPDX-License-Identifier: MIT */
/*
 * uzswap-workload: the quick-start workload, meant to run unmodified under
 * LD_PRELOAD=libuzswap.so (see tools/demo).
 *
 * It maps SIZE bytes (256 MiB by default) of anonymous memory, writes
 * text-like content to every page and keeps a 64-bit checksum of each page
 * on the side, then reads the whole region back twice, rewriting one page
 * in eight in between, and checks every page against its checksum.  It
 * knows nothing about uzswap; it only reports, from /proc/self/pagemap, how
 * many of its pages were not resident when it came back to read them.
 * Exit status 0 means every page verified.
 *
 * With --hold SECONDS it keeps its memory that long after verifying (the
 * demo reads the daemon's statistics meanwhile).
 *
 * With --wait-signals it runs like a service instead: after the passes it
 * keeps its memory until it is stopped.  SIGUSR1 checks every page again
 * (`systemctl kill -s SIGUSR1 UNIT`) and prints one line; SIGTERM or
 * SIGINT (`systemctl stop`) checks every page a last time and exits, 0
 * only if every page verified.  The systemd suite uses it to show that a
 * service keeps its data while uzswapd stops or restarts under it.
 *
 * usage: uzswap-workload [--size SIZE] [--passes N] [--hold SECONDS] [--wait-signals]
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

static size_t page_size;

static const char *const words[16] = {
    "memory", "page",  "the", "of",    "cold",	"compressed", "swap", "and",
    "daemon", "fault", "a",   "query", "table", "row",	      "log",  "value",
};

static uint64_t next_random(uint64_t *state)
{
	*state ^= *state << 13;
	*state ^= *state >> 7;
	*state ^= *state << 17;
	return *state;
}

static void page_write(unsigned char *page, uint64_t pageno, uint64_t round)
{
	uint64_t state = (pageno + 1) * 0x9e3779b97f4a7c15ULL + round;
	size_t pos;

	pos = (size_t)snprintf((char *)page, page_size, "record %" PRIu64 " round %" PRIu64 "\n",
			       pageno, round);
	while (pos < page_size) {
		uint64_t r = next_random(&state);
		const char *word = words[r & 15];
		size_t len = strlen(word);

		if (len > page_size - pos)
			len = page_size - pos;
		memcpy(page + pos, word, len);
		pos += len;
		if (pos < page_size)
			page[pos++] = (r >> 59) == 0 ? '\n' : ' ';
	}
}

static uint64_t page_checksum(const unsigned char *page)
{
	uint64_t hash = 0xcbf29ce484222325ULL; /* FNV-1a */

	for (size_t i = 0; i < page_size; i++)
		hash = (hash ^ page[i]) * 0x100000001b3ULL;
	return hash;
}

static uint64_t pages_not_resident(const void *addr, uint64_t count)
{
	uint64_t entries[512], absent = 0;
	int fd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);

	if (fd < 0)
		return 0;
	for (uint64_t done = 0; done < count;) {
		size_t n = count - done < 512 ? count - done : 512;
		off_t offset = (off_t)(((uintptr_t)addr / page_size + done) * 8);

		if (pread(fd, entries, n * 8, offset) != (ssize_t)(n * 8))
			break;
		for (size_t i = 0; i < n; i++)
			absent += !(entries[i] >> 63);
		done += n;
	}
	close(fd);
	return absent;
}

static double seconds_since(const struct timespec *start)
{
	struct timespec now;

	clock_gettime(CLOCK_MONOTONIC, &now);
	return (double)(now.tv_sec - start->tv_sec) + (double)(now.tv_nsec - start->tv_nsec) / 1e9;
}

/* Every page against its checksum: the number of pages that do not match. */
static uint64_t region_check(const unsigned char *region, const uint64_t *checksums, uint64_t count,
			     uint64_t *first_bad)
{
	uint64_t bad = 0;

	for (uint64_t p = 0; p < count; p++) {
		if (page_checksum(region + p * page_size) == checksums[p])
			continue;
		if (!bad++)
			*first_bad = p;
	}
	return bad;
}

/* --wait-signals: check on SIGUSR1, check and exit on SIGTERM/SIGINT. */
static int wait_signals(const unsigned char *region, const uint64_t *checksums, uint64_t count)
{
	sigset_t set;
	unsigned check = 0;

	printf("waiting: SIGUSR1 checks every page, SIGTERM checks and exits\n");
	for (;;) {
		uint64_t absent, bad, first_bad = 0;
		int sig;

		sigemptyset(&set);
		sigaddset(&set, SIGUSR1);
		sigaddset(&set, SIGTERM);
		sigaddset(&set, SIGINT);
		if (sigwait(&set, &sig) != 0)
			continue;
		absent = pages_not_resident(region, count);
		bad = region_check(region, checksums, count, &first_bad);
		check++;
		if (bad) {
			printf("check %u: %" PRIu64 " of %" PRIu64
			       " pages are corrupt (first: page %" PRIu64 "); %" PRIu64
			       " were not resident\n",
			       check, bad, count, first_bad, absent);
			return 1;
		}
		printf("check %u: every page verified (%" PRIu64 " pages, %" PRIu64
		       " not resident before the check)\n",
		       check, count, absent);
		if (sig != SIGUSR1)
			return 0;
	}
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

int main(int argc, char **argv)
{
	size_t size = 256UL << 20;
	unsigned passes = 2, hold = 0;
	int wait_for_signals = 0;
	uint64_t count, *checksums, *round, rewritten = 0, checked = 0;
	unsigned char *region;
	struct timespec start;

	/* Line by line even into a pipe: whoever watches us sees each step as it happens. */
	setvbuf(stdout, NULL, _IOLBF, 0);

	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--size") && i + 1 < argc) {
			size = parse_size(argv[++i]);
		} else if (!strcmp(argv[i], "--passes") && i + 1 < argc) {
			passes = (unsigned)atoi(argv[++i]);
		} else if (!strcmp(argv[i], "--hold") && i + 1 < argc) {
			hold = (unsigned)atoi(argv[++i]);
		} else if (!strcmp(argv[i], "--wait-signals")) {
			wait_for_signals = 1;
		} else {
			fprintf(stderr,
				"usage: %s [--size SIZE] [--passes N] [--hold SECONDS] "
				"[--wait-signals]\n",
				argv[0]);
			return 2;
		}
	}
	page_size = (size_t)sysconf(_SC_PAGESIZE);
	if (wait_for_signals) {
		/* Taken by sigwait() only (libuzswap's agent thread blocks every signal itself). */
		sigset_t set;

		sigemptyset(&set);
		sigaddset(&set, SIGUSR1);
		sigaddset(&set, SIGTERM);
		sigaddset(&set, SIGINT);
		sigprocmask(SIG_BLOCK, &set, NULL);
	}
	count = size / page_size;
	if (count == 0) {
		fprintf(stderr, "uzswap-workload: size too small\n");
		return 2;
	}
	checksums = calloc(count, sizeof(*checksums));
	round = calloc(count, sizeof(*round));
	region = mmap(NULL, count * page_size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
		      -1, 0);
	if (!checksums || !round || region == MAP_FAILED) {
		fprintf(stderr, "uzswap-workload: out of memory: %s\n", strerror(errno));
		return 1;
	}
	setvbuf(stdout, NULL, _IOLBF, 0);

	clock_gettime(CLOCK_MONOTONIC, &start);
	for (uint64_t p = 0; p < count; p++) {
		page_write(region + p * page_size, p, 0);
		checksums[p] = page_checksum(region + p * page_size);
	}
	printf("wrote %" PRIu64 " pages (%zu MiB) of text-like data in %.2f s\n", count, size >> 20,
	       seconds_since(&start));

	for (unsigned pass = 1; pass <= passes; pass++) {
		uint64_t absent = pages_not_resident(region, count);

		clock_gettime(CLOCK_MONOTONIC, &start);
		for (uint64_t p = 0; p < count; p++) {
			unsigned char *page = region + p * page_size;

			if (page_checksum(page) != checksums[p]) {
				printf("uzswap-workload: page %" PRIu64 " is corrupt (pass %u)\n",
				       p, pass);
				return 1;
			}
			checked++;
			if (pass < passes && p % 8 == pass % 8) {
				page_write(page, p, ++round[p]);
				checksums[p] = page_checksum(page);
				rewritten++;
			}
		}
		printf("pass %u: %" PRIu64 " pages were not resident before the pass; read back "
		       "and checked every page in %.2f s\n",
		       pass, absent, seconds_since(&start));
	}
	printf("verified: %" PRIu64 " page reads matched their checksums (%" PRIu64
	       " pages rewritten between passes)\n",
	       checked, rewritten);
	if (hold)
		sleep(hold);
	if (wait_for_signals && wait_signals(region, checksums, count))
		return 1;
	munmap(region, count * page_size);
	free(checksums);
	free(round);
	return 0;
}
