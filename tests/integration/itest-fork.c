/* SPDX-License-Identifier: MIT */
/*
 * itest-fork: fork of a process whose pages are evicted.
 *
 * Verifies: after fork() the child reads its parent's data on every page
 * (no zeros where the parent had data), the child's writes (a new
 * generation on every page) are seen by the child and never by the parent,
 * and the parent's writes after the fork are not seen by the child.  A
 * parent thread keeps reading and verifying random pages while the fork
 * happens.  After the fork both processes fill the budget again, so pages
 * are evicted again in both, and both verify once more.
 *
 * The harness runs it once with CAP_SYS_PTRACE (root) and once with it
 * dropped from the bounding set before exec: libuzswap must behave the same
 * either way (docs/PROTOCOL.md section 4).  EXPECT_PTRACE says which case
 * this is, and the program checks its own capabilities to be sure.
 *
 * usage: itest-fork SIZE MANAGED(yes|no|any) EXPECT_PTRACE(yes|no|any)
 */
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include "itest.h"

static char *region;
static uint64_t page_count;
static atomic_bool reader_stop;
static atomic_uint_fast64_t reader_reads;

static void *reader(void *arg)
{
	uint64_t state = 99;

	while (!reader_stop) {
		uint64_t p = it_rand(&state) % page_count;

		it_page_verify(region + p * it_page_size, p, 1, "parent reader during fork");
		reader_reads++;
	}
	return NULL;
}

static void child(enum it_expect expect)
{
	it_name = "itest-fork(child)";
	prctl(PR_SET_PDEATHSIG, SIGKILL);
	/* Every page: the parent's generation 1 (nothing may read as zeros). */
	it_range_verify(region, 0, page_count, 1, "child right after fork");
	it_log("child read its parent's data on all %" PRIu64 " pages", page_count);
	it_range_fill(region, 0, page_count, 2);
	it_range_verify(region, 0, page_count, 2, "child after its own writes");
	/* The child's pages may be evicted again (if it joined the daemon). */
	it_check_managed(IT_EXPECT_ANY);
	if (it_managed() == 1)
		it_require_evicted(region, page_count * it_page_size, page_count / 4, expect,
				   "child after rewrite");
	it_range_verify(region, 0, page_count, 2, "child after eviction");
	it_stats_print("child at end");
	it_log("child PASS");
	exit(0);
}

int main(int argc, char **argv)
{
	enum it_expect expect, expect_ptrace;
	pthread_t reader_thread;
	size_t size;
	int has_ptrace, status;
	pid_t pid;

	it_init("itest-fork");
	if (argc != 4)
		it_fail("usage: itest-fork SIZE MANAGED EXPECT_PTRACE");
	size = it_parse_size(argv[1]);
	expect = it_parse_expect(argv[2]);
	expect_ptrace = it_parse_expect(argv[3]);
	page_count = size / it_page_size;
	has_ptrace = it_has_cap_sys_ptrace();
	it_log("verifies: parent and child both read the parent's data after fork of %" PRIu64
	       " pages with evicted ones; the child's writes don't reach the parent and the "
	       "parent's don't reach the child; CAP_SYS_PTRACE %s",
	       page_count, has_ptrace == 1 ? "present" : "absent");
	if ((expect_ptrace == IT_EXPECT_YES && has_ptrace != 1) ||
	    (expect_ptrace == IT_EXPECT_NO && has_ptrace != 0))
		it_fail("CAP_SYS_PTRACE is %s, not as the harness meant",
			has_ptrace ? "set" : "unset");
	it_check_managed(expect);

	region = it_map(size);
	it_range_fill(region, 0, page_count, 1);
	it_require_evicted(region, size, page_count / 2, expect, "before fork");
	it_stats_print("parent before fork");

	pthread_create(&reader_thread, NULL, reader, NULL);
	usleep(100000);
	pid = fork();
	if (pid < 0)
		it_fail("fork: %m");
	if (pid == 0)
		child(expect);
	usleep(100000);
	reader_stop = true;
	pthread_join(reader_thread, NULL);
	it_log("parent reader verified %" PRIu64 " random pages across the fork",
	       (uint64_t)reader_reads);
	/* Parent: write generation 3 to the first quarter while the child runs. */
	it_range_fill(region, 0, page_count / 4, 3);
	if (waitpid(pid, &status, 0) != pid)
		it_fail("waitpid: %m");
	if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
		it_fail("child failed (status 0x%x)", status);

	it_range_verify(region, 0, page_count / 4, 3, "parent after child exit (own writes)");
	it_range_verify(region + page_count / 4 * it_page_size, page_count / 4,
			page_count - page_count / 4, 1, "parent after child exit (untouched)");
	/* Evict again in the parent: eviction must have resumed after the fork. */
	it_range_fill(region + page_count / 4 * it_page_size, page_count / 4,
		      page_count - page_count / 4, 4);
	it_require_evicted(region, size, page_count / 2, expect, "parent after fork");
	it_range_verify(region, 0, page_count / 4, 3, "parent at end");
	it_range_verify(region + page_count / 4 * it_page_size, page_count / 4,
			page_count - page_count / 4, 4, "parent at end");
	it_stats_print("parent at end");
	it_log("PASS: parent and child each saw only their own data on all %" PRIu64 " pages",
	       page_count);
	return 0;
}
