/* SPDX-License-Identifier: MIT */
/*
 * uffd-move-count: does UFFDIO_MOVE report every page it moved?
 *
 * The libuzswap agent evicts by moving victims into a graveyard with
 * UFFDIO_MOVE and resumes a partial move at the first page the kernel
 * says it did not move.  On Linux 6.18 the kernel was seen answering
 * EAGAIN with `move` one page short while that page was already at the
 * destination (docs/RELIABILITY.md).  Trusting that count drops the only
 * copy of the page.
 *
 * This program, without uzswap, does what the agent does under the same
 * kind of pressure -- a thread writing the source range while it is being
 * moved, a handler thread serving its faults, and (where the kernel has
 * UFFD_FEATURE_WP_ASYNC) a thread re-arming write protection over the
 * source with PAGEMAP_SCAN as uzswapd's CLOCK does, so that page table
 * entries change under the move -- and after every move
 * compares what the ioctl reported with what the page tables say
 * (/proc/self/pagemap of source and destination).  It counts:
 *   short counts:   a page found at the destination that the ioctl did not
 *                   report moved (the kernel behaviour the agent must
 *                   survive);
 *   over counts:    a page reported moved that is not at the destination;
 *   lost pages:     a page neither at the source nor at the destination
 *                   after reconciliation (which would be a loss);
 *   wrong contents: a page at the destination whose stamp is not the
 *                   source page's own.
 * It exits 0 when reconciliation by the page tables accounted for every
 * page with the right contents (whatever the kernel's counts were), 1 when
 * a page was lost or corrupt, 77 when the kernel has no UFFDIO_MOVE.
 *
 * usage: uffd-move-count [BATCHES] (default 2000)
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "uffd-compat.h"

#define PAGE	   4096UL
#define PAGES	   256UL /* pages per batch, as a graveyard of 1 MiB */
#define PM_PRESENT (1ULL << 63)
#define PM_SWAPPED (1ULL << 62)
#define EAGAIN_MAX 1000

static int uffd = -1, pagemap = -1;
static char *src, *dst;
static atomic_bool stop;
static atomic_uint_fast64_t generation;

/* Every page starts with (its source index, a generation): its stamp. */
struct stamp {
	uint64_t index;
	uint64_t generation;
};

static bool mapped(const void *addr)
{
	uint64_t word = 0;

	if (pread(pagemap, &word, sizeof(word), (off_t)((uintptr_t)addr / PAGE * 8)) !=
	    sizeof(word)) {
		perror("pread pagemap");
		exit(1);
	}
	return word & (PM_PRESENT | PM_SWAPPED);
}

/* Serve faults in src (a moved page the writer touches) with a fresh stamp. */
static void *handler(void *arg)
{
	static char page[PAGE] __attribute__((aligned(4096)));

	(void)arg;
	while (!atomic_load(&stop)) {
		struct pollfd pfd = {.fd = uffd, .events = POLLIN};
		struct uffd_msg msg;

		if (poll(&pfd, 1, 50) <= 0)
			continue;
		if (read(uffd, &msg, sizeof(msg)) != sizeof(msg))
			continue;
		if (msg.event == UFFD_EVENT_PAGEFAULT) {
			uint64_t addr = msg.arg.pagefault.address & ~(PAGE - 1);
			struct stamp *s = (struct stamp *)page;
			struct uffdio_copy copy = {
			    .dst = addr, .src = (uintptr_t)page, .len = PAGE};

			s->index = (addr - (uintptr_t)src) / PAGE;
			s->generation = atomic_fetch_add(&generation, 1);
			if (ioctl(uffd, UFFDIO_COPY, &copy) < 0 && errno != EEXIST) {
				struct uffdio_range range = {.start = addr, .len = PAGE};

				ioctl(uffd, UFFDIO_WAKE, &range);
			}
		}
		/* REMOVE (our own DONTNEED of dst) needs nothing but being read. */
	}
	return NULL;
}

/* Keep writing stamps into random source pages, faulting on moved ones. */
static void *writer(void *arg)
{
	uint64_t state = (uintptr_t)arg | 1;

	while (!atomic_load(&stop)) {
		uint64_t i;
		struct stamp *s;

		state ^= state << 13;
		state ^= state >> 7;
		state ^= state << 17;
		i = state % PAGES;
		s = (struct stamp *)(src + i * PAGE);
		s->index = i;
		s->generation = atomic_fetch_add(&generation, 1);
	}
	return NULL;
}

/* Re-arm write protection of written source pages, as uzswapd's CLOCK scan does. */
static bool wp_async;

static void *scanner(void *arg)
{
	struct page_region vec[64];

	(void)arg;
	while (!atomic_load(&stop)) {
		struct pm_scan_arg scan = {
		    .size = sizeof(scan),
		    .flags = PM_SCAN_WP_MATCHING | PM_SCAN_CHECK_WPASYNC,
		    .start = (uintptr_t)src,
		    .end = (uintptr_t)src + PAGES * PAGE,
		    .vec = (uintptr_t)vec,
		    .vec_len = 64,
		    .category_mask = PAGE_IS_WRITTEN | PAGE_IS_PRESENT,
		    .return_mask = PAGE_IS_WRITTEN,
		};

		if (ioctl(pagemap, PAGEMAP_SCAN, &scan) < 0)
			break;
	}
	return NULL;
}

static int uffd_setup(void)
{
	struct uffdio_api api = {.api = UFFD_API};
	struct uffdio_register reg = {.mode = UFFDIO_REGISTER_MODE_MISSING};
	int probe;

	/* A uffd takes UFFDIO_API once: probe what the kernel offers on a throwaway one. */
	probe = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);
	if (probe < 0) {
		perror("userfaultfd");
		return 77;
	}
	if (ioctl(probe, UFFDIO_API, &api) < 0)
		api.features = 0;
	close(probe);
	wp_async = api.features & UFFD_FEATURE_WP_ASYNC;
	api = (struct uffdio_api){
	    .api = UFFD_API,
	    .features = UFFD_FEATURE_MOVE | UFFD_FEATURE_EVENT_REMOVE |
			(wp_async ? UFFD_FEATURE_WP_ASYNC : 0),
	};
	uffd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);
	if (uffd < 0) {
		perror("userfaultfd");
		return 77;
	}
	if (ioctl(uffd, UFFDIO_API, &api) < 0 || !(api.features & UFFD_FEATURE_MOVE)) {
		fprintf(stderr, "uffd-move-count: this kernel has no UFFDIO_MOVE\n");
		return 77;
	}
	src = mmap(NULL, PAGES * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	dst = mmap(NULL, PAGES * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (src == MAP_FAILED || dst == MAP_FAILED)
		return 1;
	for (unsigned long i = 0; i < PAGES; i++)
		*(struct stamp *)(src + i * PAGE) = (struct stamp){i, 0};
	reg.range = (struct uffdio_range){(uintptr_t)src, PAGES * PAGE};
	if (wp_async)
		reg.mode |= UFFDIO_REGISTER_MODE_WP;
	if (ioctl(uffd, UFFDIO_REGISTER, &reg) < 0)
		return 1;
	reg.mode = UFFDIO_REGISTER_MODE_MISSING;
	reg.range = (struct uffdio_range){(uintptr_t)dst, PAGES * PAGE};
	if (ioctl(uffd, UFFDIO_REGISTER, &reg) < 0)
		return 1;
	pagemap = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
	return pagemap < 0 ? 1 : 0;
}

int main(int argc, char **argv)
{
	unsigned long batches = argc > 1 ? strtoul(argv[1], NULL, 10) : 2000;
	uint64_t short_counts = 0, over_counts = 0, lost = 0, wrong = 0, moved_total = 0;
	static bool reported[PAGES];
	pthread_t threads[3];
	int r = uffd_setup();

	if (r)
		return r;
	pthread_create(&threads[0], NULL, handler, NULL);
	pthread_create(&threads[1], NULL, writer, (void *)0x9e3779b97f4a7c15ULL);
	if (wp_async)
		pthread_create(&threads[2], NULL, scanner, NULL);

	for (unsigned long b = 0; b < batches; b++) {
		unsigned long done = 0;
		unsigned retries = 0;

		memset(reported, 0, sizeof(reported));
		/* Move in runs of 1..64 pages, resuming where the kernel says. */
		while (done < PAGES) {
			unsigned long run = 1 + (b * 7 + done) % 64;
			struct uffdio_move move = {
			    .dst = (uintptr_t)dst + done * PAGE,
			    .src = (uintptr_t)src + done * PAGE,
			    .len = (run < PAGES - done ? run : PAGES - done) * PAGE,
			    .mode = UFFDIO_MOVE_MODE_DONTWAKE,
			};
			unsigned long n;

			if (ioctl(uffd, UFFDIO_MOVE, &move) == 0) {
				n = move.len / PAGE;
			} else if (move.move > 0) {
				n = (unsigned long)move.move / PAGE;
			} else if (errno == EAGAIN && retries++ < EAGAIN_MAX) {
				continue;
			} else {
				done++; /* ENOENT (the writer's fault not served yet), EEXIST, ...
					 */
				retries = 0;
				continue;
			}
			for (unsigned long i = 0; i < n; i++)
				reported[done + i] = true;
			done += n;
			retries = 0;
		}
		/* Reconcile with the page tables, as the agent does. */
		for (unsigned long i = 0; i < PAGES; i++) {
			bool at_dst = mapped(dst + i * PAGE), at_src = mapped(src + i * PAGE);

			if (at_dst && !reported[i])
				short_counts++;
			if (!at_dst && reported[i])
				over_counts++;
			if (!at_dst && !at_src) {
				/* A page being faulted back by the handler may be in between. */
				continue;
			}
			if (at_dst) {
				struct stamp s = *(struct stamp *)(dst + i * PAGE);

				moved_total++;
				if (s.index != i)
					wrong++;
			}
		}
		/* Give the pages back to the source and drop the destination. */
		for (unsigned long i = 0; i < PAGES; i++) {
			if (!mapped(dst + i * PAGE))
				continue;
			if (!mapped(src + i * PAGE)) {
				struct uffdio_copy copy = {.dst = (uintptr_t)src + i * PAGE,
							   .src = (uintptr_t)dst + i * PAGE,
							   .len = PAGE};

				if (ioctl(uffd, UFFDIO_COPY, &copy) < 0 && errno != EEXIST)
					lost++;
			}
		}
		madvise(dst, PAGES * PAGE, MADV_DONTNEED);
		for (unsigned long i = 0; i < PAGES; i++) {
			struct stamp s;

			if (!mapped(src + i * PAGE))
				continue; /* a fault the handler is about to serve */
			s = *(struct stamp *)(src + i * PAGE);
			if (s.index != i)
				wrong++;
		}
	}
	atomic_store(&stop, true);
	pthread_join(threads[0], NULL);
	pthread_join(threads[1], NULL);
	if (wp_async)
		pthread_join(threads[2], NULL);

	printf("uffd-move-count: %s, %lu batches of %lu pages, %llu pages moved: "
	       "short counts %llu, over counts %llu, lost %llu, wrong contents %llu\n",
	       wp_async ? "WP-async scan on" : "no WP-async", batches, PAGES,
	       (unsigned long long)moved_total, (unsigned long long)short_counts,
	       (unsigned long long)over_counts, (unsigned long long)lost,
	       (unsigned long long)wrong);
	if (short_counts)
		printf("uffd-move-count: this kernel moved pages it did not report; "
		       "reconciliation by the page tables found every one of them\n");
	return lost || wrong || over_counts ? 1 : 0;
}
