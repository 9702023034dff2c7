/* SPDX-License-Identifier: MIT */
/*
 * itest-forkshare: fork keeps the budget.  The child of a managed process
 * shares the parent's stored pages (pool and disk) instead of the parent
 * paging everything back in before fork() (docs/PROTOCOL.md section 4).
 *
 * usage: itest-forkshare SCENARIO SIZE [BUDGET | FILE]
 *
 *   big      most of SIZE in the pool and on disk; the parent's RssAnon is
 *            sampled every millisecond from just before fork() until a second
 *            after it returns and must stay under BUDGET + 10 %; then child
 *            and parent both read every page, rewrite every page and read
 *            every page again, at the same time
 *   exec     the child execs /bin/true at once
 *   exit     the child calls _exit(0) at once
 *   bomb     32 children forked back to back, each verifying a random sample
 *            of the parent's pages, writing a few of its own and exiting
 *   threads  4 threads read, verify and rewrite their own slices (faults on
 *            evicted pages) while the main thread forks 4 times; each child
 *            verifies every page against the generation it was forked with
 *   nested   the child rewrites half the pages, is evicted, and forks a
 *            grandchild; the grandchild sees the child's pages, the child and
 *            the parent see only their own
 *   stacknext  two threads sleep while their stacks' tops (the thread
 *            descriptors glibc's fork writes in the child) are evicted;
 *            each stack mapping is followed right after by another
 *            mapping, so the top of the run of mappings is not the
 *            descriptor; the parent forks 4 times and each child must come
 *            out of fork() alive and verify a sample of pages
 *   orphan   (needs FILE) the child verifies a sample of the shared pages,
 *            prints "CHILD READY" and exits once FILE exists; the harness
 *            kills uzswapd before it creates FILE, so the child's shared
 *            references die with no daemon to drop them; the parent prints
 *            "CHILD GONE", then reads, rewrites and reads every page (waiting
 *            for the next daemon)
 *   agentless  the parent sets UZSWAP_TEST_FORK_CHILD_TOUCH to an evicted
 *            page and forks; with UZSWAP_TEST_FORK_CHILD_PAUSE_MS set by the
 *            harness the child's library pauses after registering its holes,
 *            before its agent exists (saying so on stderr), then touches
 *            that page; the harness kills uzswapd during the pause
 *            and starts another: the child, waiting on a fault with no agent,
 *            must re-join it (libclient/rescue.c), verify every page and exit
 *   dropafter  right after fork() returns the parent drops all its pages
 *            (MADV_DONTNEED: they read zeros in the parent from now on);
 *            the child, forked before, must read the parent's data on every
 *            page.  The harness sets UZSWAP_TEST_FORK_DONE_DELAY_MS on the
 *            daemon so that the parent's REMOVE is read before its FORK_DONE,
 *            and UZSWAP_TEST_FORK_CHILD_HELLO_DELAY_MS so that the child has
 *            not claimed its snapshot yet
 *
 * Every page read is checked against its (page number, generation) pattern.
 * The harness checks the daemon's side: fork_snapshots and
 * fork_shared_pages counted, nothing lost, and pool and stored pages back
 * to zero once every process has gone (every shared reference dropped).
 */
#include <fcntl.h>
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

static char *region;
static uint64_t page_count;
static size_t size;

#define PAGE(p) (region + (uint64_t)(p) * it_page_size)

static void wait_child(pid_t pid, const char *what)
{
	int status;

	if (waitpid(pid, &status, 0) != pid)
		it_fail("waitpid (%s): %m", what);
	if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
		it_fail("%s failed (status 0x%x)", what, status);
}

static pid_t fork_checked(void)
{
	pid_t pid = fork();

	if (pid < 0)
		it_fail("fork: %m");
	if (pid == 0)
		prctl(PR_SET_PDEATHSIG, SIGKILL);
	return pid;
}

static void fill_and_evict(uint64_t gen, uint64_t min_absent)
{
	it_range_fill(region, 0, page_count, gen);
	it_require_evicted(region, size, min_absent, IT_EXPECT_YES, "before fork");
}

/* --- big: RSS through the fork --------------------------------------------- */

static atomic_bool sampler_stop;
static atomic_uint_fast64_t rss_peak;

static uint64_t rss_anon(int fd)
{
	char buf[4096];
	ssize_t n = pread(fd, buf, sizeof(buf) - 1, 0);
	const char *line;

	if (n <= 0)
		it_fail("read /proc/self/status: %m");
	buf[n] = '\0';
	line = strstr(buf, "RssAnon:");
	if (!line)
		it_fail("/proc/self/status has no RssAnon");
	return strtoull(line + 8, NULL, 10) * 1024;
}

static void *sampler(void *arg)
{
	int fd = *(int *)arg;

	while (!sampler_stop) {
		uint64_t rss = rss_anon(fd);

		if (rss > rss_peak)
			rss_peak = rss;
		usleep(1000);
	}
	return NULL;
}

static void both_sides(uint64_t seen, uint64_t own, const char *who)
{
	uint64_t t0 = it_now_ns();

	it_range_verify(region, 0, page_count, seen, who);
	it_range_fill(region, 0, page_count, own);
	it_range_verify(region, 0, page_count, own, who);
	it_log("%s: read, rewrote and read back all %" PRIu64 " pages in %.1f s", who, page_count,
	       (double)(it_now_ns() - t0) / 1e9);
}

/*
 * Fork once enough pages are on disk for the test to cover shared swap
 * slots, and once the daemon has brought the process under its budget:
 * the bound is about the fork, and the fill may leave the process over
 * for a moment while reclaim catches up (more so on a loaded host).
 */
static void wait_ready_to_fork(uint64_t want_on_disk, uint64_t budget, struct uzswap_stats *st)
{
	bool on_disk = false, under = false;

	for (int i = 0; i < 1200; i++) {
		if (it_stats(st) != 0)
			it_fail("uzswap_get_stats failed");
		on_disk = st->on_disk_pages >= want_on_disk;
		under = st->resident_pages * it_page_size <= budget;
		if (on_disk && under)
			return;
		usleep(50000);
	}
	if (!on_disk)
		it_fail("only %" PRIu64 " pages on disk after 60 s (need %" PRIu64
			"): the test would not cover shared swap slots", st->on_disk_pages,
			want_on_disk);
	it_fail("%" PRIu64 " pages resident after 60 s, over the budget of %" PRIu64 " MiB",
		st->resident_pages, budget >> 20);
}

static void scenario_big(uint64_t budget)
{
	struct uzswap_stats st;
	uint64_t limit = budget + budget / 10, before, took;
	pthread_t thread;
	int fd;
	pid_t pid;

	fill_and_evict(1, page_count * 3 / 4);
	wait_ready_to_fork(page_count / 8, budget, &st);
	it_log("before fork: %" PRIu64 " pages stored, %" PRIu64 " on disk, %" PRIu64
	       " resident", st.stored_pages, st.on_disk_pages, st.resident_pages);
	fd = open("/proc/self/status", O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		it_fail("open /proc/self/status: %m");
	before = rss_anon(fd);
	rss_peak = before;
	pthread_create(&thread, NULL, sampler, &fd);
	usleep(20000);
	took = it_now_ns();
	pid = fork_checked();
	if (pid == 0) {
		it_name = "itest-forkshare(child)";
		both_sides(1, 2, "child");
		it_stats_print("child at end");
		_exit(0);
	}
	took = it_now_ns() - took;
	usleep(1000000);
	sampler_stop = true;
	pthread_join(thread, NULL);
	close(fd);
	it_log("fork() of a process with %zu MiB (%" PRIu64 " pages stored) took %.2f ms",
	       size >> 20, st.stored_pages, (double)took / 1e6);
	it_log("parent RssAnon %.1f MiB before fork, peak %.1f MiB through the fork "
	       "(limit: budget %" PRIu64 " MiB + 10 %% = %.1f MiB)",
	       (double)before / 1048576, (double)rss_peak / 1048576, budget >> 20,
	       (double)limit / 1048576);
	if (rss_peak > limit)
		it_fail("the parent's RssAnon reached %.1f MiB at fork, over its budget "
			"(%" PRIu64 " MiB) + 10 %%: pages were given back for the fork",
			(double)rss_peak / 1048576, budget >> 20);
	both_sides(1, 3, "parent");
	wait_child(pid, "child");
	it_range_verify(region, 0, page_count, 3, "parent after the child exited");
}

/* --- exec, exit ------------------------------------------------------------ */

static void scenario_quick(bool exec)
{
	fill_and_evict(1, page_count / 2);
	for (int round = 0; round < 4; round++) {
		pid_t pid = fork_checked();

		if (pid == 0) {
			if (exec) {
				execl("/bin/true", "true", (char *)NULL);
				_exit(127);
			}
			_exit(0);
		}
		wait_child(pid, exec ? "child (exec /bin/true)" : "child (_exit)");
		/* The parent goes on paging after each fork. */
		it_range_verify(region, 0, page_count, (uint64_t)round + 1, "parent after child");
		it_range_fill(region, 0, page_count, (uint64_t)round + 2);
	}
	it_range_verify(region, 0, page_count, 5, "parent at end");
}

/* --- bomb ------------------------------------------------------------------ */

#define BOMB_CHILDREN 32

static void bomb_child(unsigned n)
{
	uint64_t state = 1000 + n, first = n * (page_count / BOMB_CHILDREN);

	for (int i = 0; i < 256; i++) {
		uint64_t p = it_rand(&state) % page_count;

		it_page_verify(PAGE(p), p, 1, "bomb child sample");
	}
	/* Its own slice: write and read back. */
	it_range_fill(PAGE(first), first, 64, 10 + n);
	it_range_verify(PAGE(first), first, 64, 10 + n, "bomb child own writes");
	_exit(0);
}

static void scenario_bomb(void)
{
	pid_t pids[BOMB_CHILDREN];

	fill_and_evict(1, page_count / 2);
	for (unsigned n = 0; n < BOMB_CHILDREN; n++) {
		pids[n] = fork_checked();
		if (pids[n] == 0) {
			it_name = "itest-forkshare(bomb child)";
			bomb_child(n);
		}
	}
	for (unsigned n = 0; n < BOMB_CHILDREN; n++)
		wait_child(pids[n], "bomb child");
	it_log("%d children verified a sample of the parent's pages and wrote their own",
	       BOMB_CHILDREN);
	it_range_verify(region, 0, page_count, 1, "parent after the bomb");
}

/* --- threads ----------------------------------------------------------------- */

#define WORKERS 4

static pthread_rwlock_t fork_lock;
static uint8_t *gens;
static atomic_bool workers_stop;
static atomic_uint_fast64_t worker_ops;

static void *worker(void *arg)
{
	uint64_t n = (uintptr_t)arg, state = 77 + n;
	uint64_t slice = page_count / WORKERS, first = n * slice;

	while (!workers_stop) {
		uint64_t p = first + it_rand(&state) % slice;

		pthread_rwlock_rdlock(&fork_lock);
		it_page_verify(PAGE(p), p, gens[p], "worker");
		if (it_rand(&state) % 4 == 0) {
			uint8_t gen = (uint8_t)(gens[p] % 200 + 1);

			it_page_fill(PAGE(p), p, gen);
			gens[p] = gen;
		}
		pthread_rwlock_unlock(&fork_lock);
		worker_ops++;
	}
	return NULL;
}

static void scenario_threads(void)
{
	pthread_rwlockattr_t attr;
	pthread_t threads[WORKERS];

	pthread_rwlockattr_init(&attr);
	pthread_rwlockattr_setkind_np(&attr, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
	pthread_rwlock_init(&fork_lock, &attr);
	gens = calloc(page_count, 1);
	if (!gens)
		it_fail("out of memory");
	memset(gens, 1, page_count);
	fill_and_evict(1, page_count / 2);
	for (uintptr_t n = 0; n < WORKERS; n++)
		pthread_create(&threads[n], NULL, worker, (void *)n);
	for (int round = 0; round < 4; round++) {
		pid_t pid;

		usleep(300000);
		/* A consistent instant: no worker is half-way through a page. */
		pthread_rwlock_wrlock(&fork_lock);
		pid = fork_checked();
		if (pid == 0) {
			it_name = "itest-forkshare(threads child)";
			for (uint64_t p = 0; p < page_count; p++)
				it_page_verify(PAGE(p), p, gens[p], "child of a threaded parent");
			_exit(0);
		}
		pthread_rwlock_unlock(&fork_lock);
		wait_child(pid, "child of a threaded parent");
		it_log("fork %d: the child verified every page while the workers went on",
		       round + 1);
	}
	workers_stop = true;
	for (int n = 0; n < WORKERS; n++)
		pthread_join(threads[n], NULL);
	it_log("workers did %" PRIu64 " verified reads across 4 forks",
	       (uint64_t)worker_ops);
	for (uint64_t p = 0; p < page_count; p++)
		it_page_verify(PAGE(p), p, gens[p], "parent at end");
}

/* --- nested ------------------------------------------------------------------ */

static void scenario_nested(void)
{
	uint64_t half = page_count / 2, quarter = page_count / 4;
	pid_t pid;

	fill_and_evict(1, page_count / 2);
	pid = fork_checked();
	if (pid == 0) {
		pid_t grandchild;

		it_name = "itest-forkshare(child)";
		it_range_verify(region, 0, page_count, 1, "child after fork");
		it_range_fill(region, 0, half, 2);
		/* The child's own pages are evicted before it forks in turn. */
		it_require_evicted(region, size, page_count / 2, IT_EXPECT_YES, "child");
		grandchild = fork_checked();
		if (grandchild == 0) {
			it_name = "itest-forkshare(grandchild)";
			it_range_verify(region, 0, half, 2, "grandchild (child's pages)");
			it_range_verify(PAGE(half), half, page_count - half, 1,
					"grandchild (parent's pages)");
			it_range_fill(region, 0, quarter, 3);
			it_range_verify(region, 0, quarter, 3, "grandchild own writes");
			_exit(0);
		}
		wait_child(grandchild, "grandchild");
		it_range_verify(region, 0, half, 2, "child after the grandchild");
		it_range_verify(PAGE(half), half, page_count - half, 1, "child after the grandchild");
		it_log("child and grandchild each saw their own pages");
		_exit(0);
	}
	wait_child(pid, "child");
	it_range_verify(region, 0, page_count, 1, "parent after child and grandchild");
}

/* --- stacknext: a mapping right after each thread stack --------------------- */

static pthread_mutex_t sleep_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t sleep_cond = PTHREAD_COND_INITIALIZER;
static bool sleepers_stop;

static void *sleeper(void *arg)
{
	(void)arg;
	pthread_mutex_lock(&sleep_lock);
	while (!sleepers_stop)
		pthread_cond_wait(&sleep_cond, &sleep_lock);
	pthread_mutex_unlock(&sleep_lock);
	return NULL;
}

static void scenario_stacknext(void)
{
	enum { SLEEPERS = 2, NEXT_SIZE = 4 << 20 };
	pthread_t threads[SLEEPERS];
	uint64_t evicted = 0;

	for (int n = 0; n < SLEEPERS; n++) {
		/*
		 * The kernel hands out address space top down, packed: a stack
		 * mapped right after our next mapping lands just below it.
		 */
		char *next = mmap(NULL, NEXT_SIZE, PROT_READ | PROT_WRITE,
				  MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		pthread_attr_t attr;
		void *stack;
		size_t stack_size;

		if (next == MAP_FAILED)
			it_fail("mmap the next mapping: %m");
		memset(next, 0x5a, NEXT_SIZE);
		if (pthread_create(&threads[n], NULL, sleeper, NULL))
			it_fail("pthread_create");
		if (pthread_getattr_np(threads[n], &attr) ||
		    pthread_attr_getstack(&attr, &stack, &stack_size))
			it_fail("pthread_getattr_np");
		pthread_attr_destroy(&attr);
		if ((char *)stack + stack_size != next)
			it_fail("thread %d's stack [%p, %p) is not right below the mapping at %p: "
				"the layout this test needs could not be made", n, stack,
				(void *)((char *)stack + stack_size), (void *)next);
	}
	fill_and_evict(1, page_count / 2);
	/* The descriptors (pthread_t points at them) must be holes for the fork to matter. */
	for (int round = 0; round < 200 && evicted < SLEEPERS; round++) {
		evicted = 0;
		for (int n = 0; n < SLEEPERS; n++)
			evicted += it_page_absent((void *)(threads[n] & ~(uintptr_t)(it_page_size - 1)));
		if (evicted < SLEEPERS) {
			it_range_verify(region, 0, page_count, 1, "pressure pass");
			usleep(50000);
		}
	}
	if (evicted < SLEEPERS)
		it_fail("the sleeping threads' descriptors were never evicted (%" PRIu64 " of %d): "
			"the test would prove nothing", evicted, SLEEPERS);
	it_log("both sleeping threads' descriptors evicted; forking");
	for (int round = 0; round < 4; round++) {
		pid_t pid = fork_checked();

		if (pid == 0) {
			uint64_t state = 99 + (uint64_t)round;

			it_name = "itest-forkshare(stacknext child)";
			for (int i = 0; i < 256; i++) {
				uint64_t p = it_rand(&state) % page_count;

				it_page_verify(PAGE(p), p, 1, "child sample");
			}
			_exit(0);
		}
		wait_child(pid, "child forked with evicted thread descriptors");
	}
	pthread_mutex_lock(&sleep_lock);
	sleepers_stop = true;
	pthread_cond_broadcast(&sleep_cond);
	pthread_mutex_unlock(&sleep_lock);
	for (int n = 0; n < SLEEPERS; n++)
		pthread_join(threads[n], NULL);
	it_range_verify(region, 0, page_count, 1, "parent at end");
}

/* --- orphan: a child that exits while no daemon runs ------------------------ */

static void scenario_orphan(const char *file)
{
	pid_t pid;

	fill_and_evict(1, page_count / 2);
	pid = fork_checked();
	if (pid == 0) {
		uint64_t state = 7;

		for (int i = 0; i < 512; i++) {
			uint64_t p = it_rand(&state) % page_count;

			it_page_verify(PAGE(p), p, 1, "orphan child sample");
		}
		printf("CHILD READY\n");
		fflush(stdout);
		while (access(file, F_OK) != 0)
			usleep(10000);
		_exit(0);
	}
	wait_child(pid, "child");
	printf("CHILD GONE\n");
	fflush(stdout);
	both_sides(1, 2, "parent after the orphaned child");
}

/* --- dropafter: the parent drops its pages right after fork() -------------- */

static void scenario_dropafter(void)
{
	pid_t pid;

	fill_and_evict(1, page_count / 2);
	pid = fork_checked();
	if (pid == 0) {
		it_range_verify(region, 0, page_count, 1, "child of a parent that dropped its pages");
		_exit(0);
	}
	if (madvise(region, size, MADV_DONTNEED) < 0)
		it_fail("madvise(MADV_DONTNEED): %m");
	wait_child(pid, "child of a parent that dropped its pages after fork()");
	it_range_verify(region, 0, page_count, 0, "parent after MADV_DONTNEED");
}

/* --- agentless: the daemon dies before the child's agent runs ---------------- */

static void scenario_agentless(void)
{
	char addr[32];
	uint64_t victim = page_count;
	pid_t pid;

	fill_and_evict(1, page_count / 2);
	for (uint64_t p = 0; p < page_count && victim == page_count; p++)
		if (it_page_absent(PAGE(p)))
			victim = p;
	if (victim == page_count)
		it_fail("no evicted page to touch");
	snprintf(addr, sizeof(addr), "%" PRIxPTR, (uintptr_t)PAGE(victim));
	setenv("UZSWAP_TEST_FORK_CHILD_TOUCH", addr, 1);
	pid = fork_checked();
	if (pid == 0) {
		it_range_verify(region, 0, page_count, 1, "agentless child");
		_exit(0);
	}
	printf("FORKED (child %d touches page %" PRIu64 ")\n", (int)pid, victim);
	fflush(stdout);
	wait_child(pid, "child whose daemon died before its agent ran");
	unsetenv("UZSWAP_TEST_FORK_CHILD_TOUCH");
	it_range_verify(region, 0, page_count, 1, "agentless parent");
}

int main(int argc, char **argv)
{
	const char *scenario;

	it_init("itest-forkshare");
	if (argc < 3)
		it_fail("usage: itest-forkshare big|exec|exit|bomb|threads|nested|stacknext|orphan|agentless|dropafter SIZE [BUDGET|FILE]");
	scenario = argv[1];
	size = it_parse_size(argv[2]);
	page_count = size / it_page_size;
	it_log("verifies: fork scenario '%s' over %" PRIu64 " pages with evicted ones: every "
	       "process reads its parent's data at fork and only its own writes after",
	       scenario, page_count);
	it_check_managed(IT_EXPECT_YES);
	region = it_map(size);

	if (!strcmp(scenario, "big")) {
		if (argc != 4)
			it_fail("big needs BUDGET");
		scenario_big(it_parse_size(argv[3]));
	} else if (!strcmp(scenario, "exec")) {
		scenario_quick(true);
	} else if (!strcmp(scenario, "exit")) {
		scenario_quick(false);
	} else if (!strcmp(scenario, "bomb")) {
		scenario_bomb();
	} else if (!strcmp(scenario, "threads")) {
		scenario_threads();
	} else if (!strcmp(scenario, "nested")) {
		scenario_nested();
	} else if (!strcmp(scenario, "stacknext")) {
		scenario_stacknext();
	} else if (!strcmp(scenario, "dropafter")) {
		scenario_dropafter();
	} else if (!strcmp(scenario, "agentless")) {
		scenario_agentless();
	} else if (!strcmp(scenario, "orphan")) {
		if (argc != 4)
			it_fail("orphan needs FILE");
		scenario_orphan(argv[3]);
	} else {
		it_fail("unknown scenario %s", scenario);
	}
	it_stats_print("parent at end");
	it_log("PASS: %s", scenario);
	return 0;
}
