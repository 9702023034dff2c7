/* SPDX-License-Identifier: MIT */
/*
 * The watcher thread: lazy join, then the scans that keep up with the
 * process's mappings.
 *
 * Every process started with the preload gets it (a shell, timeout, each
 * step of a pyenv shim), so it must cost next to nothing: it sleeps in a
 * condition variable and wakes every UZSWAP_SCAN_INTERVAL milliseconds
 * (default 200) to read /proc/self/statm (one small read).  Until the
 * process's anonymous RSS (statm resident - shared, i.e. RssAnon) reaches
 * UZSWAP_JOIN_MIN (default 32M) nothing else happens: no userfaultfd, no
 * agent thread, no daemon slot.  A hooked mmap of at least that size, and
 * any call of the uzswap_* API, wake it (or join) at once.  UZSWAP_JOIN_MIN=0
 * joins in the constructor, as before.
 *
 * Once joined it scans (scan.c) when a tick shows the mappings may have
 * changed -- VmSize or the program break moved, or anonymous RSS grew by
 * 8 MiB (an arena heap grows by mprotect, which changes neither) -- and
 * at least every tenth tick.  It also looks, a few times in the first
 * minute, whether a large part of the process's anonymous memory stays
 * unmanaged, and then says why in one line on stderr (watcher_notice).
 *
 * If the first join fails (no daemon, refused) the one-line notice has been
 * printed and the thread ends: the process runs unmanaged.  After the
 * process left the daemon (SHUTDOWN, daemon lost) it stays asleep and
 * scans again if the process is ever managed again.
 *
 * Signals are blocked in the watcher; its stack is left out of the scan.
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "client.h"
#include "util.h"

#define WATCHER_STACK_SIZE   (128 * 1024)
#define WATCHER_SCAN_TICKS   10		   /* a scan at least every this many ticks */
#define WATCHER_ANON_STEP    (8ULL << 20)  /* anonymous RSS growth that asks for a scan */
#define WATCHER_NOTICE_MIN   (64ULL << 20) /* only processes this large are looked at */
#define WATCHER_NOTICE_TICKS 50		   /* between two looks */
#define WATCHER_NOTICE_LOOKS 6
#define WATCHER_NOTICE_SHARE 30 /* percent unmanaged that is worth a line */

static pthread_mutex_t watcher_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t watcher_cond;
static bool watcher_kicked; /* under watcher_lock */
static bool watcher_join_now, watcher_fork_child;

void uz_watcher_reset_lock(void)
{
	pthread_mutex_init(&watcher_lock, NULL);
	watcher_kicked = false;
}

void uz_watcher_kick(void)
{
	pthread_mutex_lock(&watcher_lock);
	watcher_kicked = true;
	pthread_cond_signal(&watcher_cond);
	pthread_mutex_unlock(&watcher_lock);
}

static void watcher_wait(unsigned ms)
{
	struct timespec deadline;

	clock_gettime(CLOCK_MONOTONIC, &deadline);
	deadline.tv_sec += ms / 1000;
	deadline.tv_nsec += (long)(ms % 1000) * 1000000;
	if (deadline.tv_nsec >= 1000000000) {
		deadline.tv_sec++;
		deadline.tv_nsec -= 1000000000;
	}
	pthread_mutex_lock(&watcher_lock);
	while (!watcher_kicked)
		if (pthread_cond_timedwait(&watcher_cond, &watcher_lock, &deadline) == ETIMEDOUT)
			break;
	watcher_kicked = false;
	pthread_mutex_unlock(&watcher_lock);
}

/* /proc/self/statm: pages of size, resident, shared (file + shmem). */
static int statm_read(uint64_t *size, uint64_t *resident, uint64_t *shared)
{
	char buf[128], *p;
	ssize_t n;
	int fd;

	fd = open("/proc/self/statm", O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	if (n <= 0)
		return -EIO;
	buf[n] = 0;
	*size = strtoull(buf, &p, 10);
	*resident = strtoull(p, &p, 10);
	*shared = strtoull(p, &p, 10);
	return 0;
}

/* Anonymous resident bytes of this process (RssAnon), 0 if unknown. */
uint64_t uz_anon_rss(void)
{
	uint64_t size, resident, shared;

	if (statm_read(&size, &resident, &shared) < 0 || resident < shared)
		return 0;
	return (resident - shared) * UZ_PAGE_SIZE;
}

/*
 * Where the anonymous memory is, from smaps ("Anonymous:" of each VMA,
 * "um" in VmFlags when registered with a uffd).  Read only for the notice,
 * a few times per process at most: smaps walks the page tables.
 */
struct notice_ctx {
	struct uz_maps_line line;
	char name[32];
	bool have_line;
	uint64_t anon_kb;
	bool registered, locked;
	uint64_t total, managed, file, stack, locked_bytes, not_rw, small, unregistered;
};

static void notice_account(struct notice_ctx *ctx)
{
	uint64_t bytes = ctx->anon_kb << 10;

	if (!ctx->have_line || !bytes)
		return;
	ctx->total += bytes;
	if (ctx->registered)
		ctx->managed += bytes;
	else if (ctx->locked)
		ctx->locked_bytes += bytes;
	else if (ctx->line.inode != 0)
		ctx->file += bytes;
	else if (strcmp(ctx->name, "[stack]") == 0)
		ctx->stack += bytes;
	else if (memcmp(ctx->line.perms, "rw-p", 4) != 0)
		ctx->not_rw += bytes;
	else if (ctx->line.end - ctx->line.start < uz_client.min_region)
		ctx->small += bytes;
	else
		ctx->unregistered += bytes;
}

static int notice_line(char *text, void *arg)
{
	struct notice_ctx *ctx = arg;

	if (strncmp(text, "Anonymous:", 10) == 0) {
		ctx->anon_kb = strtoull(text + 10, NULL, 10);
		return 0;
	}
	if (strncmp(text, "VmFlags:", 8) == 0) {
		ctx->registered = strstr(text, " um") != NULL;
		ctx->locked = strstr(text, " lo") != NULL;
		return 0;
	}
	if (((*text >= '0' && *text <= '9') || (*text >= 'a' && *text <= 'f')) &&
	    strchr(text, '-') && strchr(text, ' ')) {
		struct uz_maps_line line;

		if (!uz_maps_parse(text, &line))
			return 0;
		notice_account(ctx);
		ctx->line = line;
		snprintf(ctx->name, sizeof(ctx->name), "%s", line.name);
		ctx->have_line = true;
		ctx->anon_kb = 0;
		ctx->registered = ctx->locked = false;
	}
	return 0;
}

/* One look; true when it is settled (the line printed, or nothing to say). */
static bool watcher_notice(void)
{
	static char buf[16384];
	struct notice_ctx ctx = {0};
	char line[400];
	size_t used;

	if (uz_anon_rss() < WATCHER_NOTICE_MIN)
		return false;
	if (uz_read_lines("/proc/self/smaps", buf, sizeof(buf), notice_line, &ctx) < 0)
		return true;
	notice_account(&ctx);
	if (ctx.total < WATCHER_NOTICE_MIN ||
	    (ctx.total - ctx.managed) * 100 < ctx.total * WATCHER_NOTICE_SHARE)
		return false;
	used = (size_t)snprintf(line, sizeof(line),
				"libuzswap: %llu of %llu MiB of anonymous memory is not managed:",
				(unsigned long long)((ctx.total - ctx.managed) >> 20),
				(unsigned long long)(ctx.total >> 20));
#define NOTICE_PART(bytes, what)                                                                   \
	if ((bytes) >> 20 && used < sizeof(line))                                                  \
		used += (size_t)snprintf(line + used, sizeof(line) - used, " %llu MiB %s,",        \
					 (unsigned long long)((bytes) >> 20), what);
	NOTICE_PART(ctx.file, "copy-on-write pages of private file mappings");
	NOTICE_PART(ctx.stack, "the main [stack]");
	NOTICE_PART(ctx.locked_bytes, "mlocked");
	NOTICE_PART(ctx.not_rw, "in mappings that are not read-write");
	NOTICE_PART(ctx.small, "in mappings below UZSWAP_MIN_REGION");
	NOTICE_PART(ctx.unregistered, "not registered (the library's own, or refused by uzswapd)");
#undef NOTICE_PART
	if (used < sizeof(line) && line[used - 1] == ',')
		line[used - 1] = 0;
	uz_notice("%s", line);
	return true;
}

static void *watcher_main(void *arg)
{
	uint64_t last_size = 0, last_brk = 0, last_anon = 0;
	unsigned ticks = 0, notice_ticks = 0, notice_looks = 0;
	bool first = true, scanned_since_join = false;

	(void)arg;
	atomic_store(&uz_client.watcher_stack_hint, (uintptr_t)&last_size);
	for (;;) {
		uint64_t size, resident, shared, brk, anon;

		if (!first)
			watcher_wait(uz_client.scan_interval_ms);
		first = false;
		if (!uz_client_managed()) {
			int r = 0;

			scanned_since_join = false;
			if (uz_client.joined_once)
				continue; /* left the daemon: asleep until managed again */
			if (uz_client.join_tried)
				return NULL; /* tried (the API) and failed */
			if (!watcher_join_now && uz_anon_rss() < uz_client.join_min)
				continue;
			uz_ranges_lock();
			r = uz_client_join_once(watcher_fork_child);
			uz_ranges_unlock();
			if (r < 0)
				return NULL; /* the notice is printed: unmanaged for good */
			watcher_join_now = false;
		}
		if (statm_read(&size, &resident, &shared) < 0)
			continue;
		anon = resident > shared ? (resident - shared) * UZ_PAGE_SIZE : 0;
		brk = (uint64_t)syscall(SYS_brk, 0);
		if (scanned_since_join && size == last_size && brk == last_brk &&
		    anon < last_anon + WATCHER_ANON_STEP && ++ticks < WATCHER_SCAN_TICKS)
			goto notice;
		ticks = 0;
		last_size = size;
		last_brk = brk;
		last_anon = anon;
		if (uz_scan_run() == 0)
			scanned_since_join = true;
	notice:
		if (notice_looks < WATCHER_NOTICE_LOOKS && ++notice_ticks >= WATCHER_NOTICE_TICKS) {
			notice_ticks = 0;
			notice_looks++;
			if (watcher_notice())
				notice_looks = WATCHER_NOTICE_LOOKS;
		}
	}
	return NULL;
}

/*
 * Start the watcher (constructor, fork child).  join_now: join at its first
 * tick whatever the size (the fork child of a managed process).
 */
int uz_watcher_start(bool join_now, bool fork_child)
{
	pthread_condattr_t condattr;
	pthread_attr_t attr;
	sigset_t all, old;
	pthread_t thread;
	int r;

	watcher_join_now = join_now;
	watcher_fork_child = fork_child;
	pthread_condattr_init(&condattr);
	pthread_condattr_setclock(&condattr, CLOCK_MONOTONIC);
	pthread_cond_init(&watcher_cond, &condattr);
	pthread_condattr_destroy(&condattr);

	pthread_attr_init(&attr);
	pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
	if (fork_child) {
		/*
		 * As for the agent (agent.c): a cached stack of the parent's
		 * threads would have glibc realloc its old dtv, heap memory the
		 * child may not have yet ("realloc(): invalid pointer" in a
		 * long chaos run).  A stack of our own memory skips the cache.
		 */
		static void *child_stack;

		uz_attr_own_stack(&attr, &child_stack, WATCHER_STACK_SIZE);
	} else {
		pthread_attr_setstacksize(&attr, WATCHER_STACK_SIZE);
	}
	sigfillset(&all);
	pthread_sigmask(SIG_SETMASK, &all, &old);
	r = -pthread_create(&thread, &attr, watcher_main, NULL);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	pthread_attr_destroy(&attr);
	return r;
}
