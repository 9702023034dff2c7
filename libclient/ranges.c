/* SPDX-License-Identifier: MIT */
/*
 * The ranges this process has registered with its uffd and the daemon.
 *
 * The table is what the fork child registers again, so it must follow the
 * process's mappings: munmap and MAP_FIXED forget ranges, mremap moves
 * them (hooks-mmap.c).  It is a sorted array of disjoint, coalesced
 * [start, end) intervals in memory mapped with raw system calls (never
 * malloc).  Everything here runs under range_lock, the outermost library
 * lock (see client.h); a REGISTER or UNREGISTER waits for its reply with
 * range_lock held, which is safe because the agent only takes range_lock
 * to leave, after failing every waiter.
 *
 * Order of operations (docs/PROTOCOL.md section 2):
 *   register:   UFFDIO_REGISTER, then REGISTER; an error reply undoes it.
 *   unregister: UNREGISTER (the daemon gives every page back), then
 *               UFFDIO_UNREGISTER; the other order would lose pages.
 */
#include <errno.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>

#include "client.h"
#include "uffd-compat.h"
#include "util.h"

struct uz_range {
	uint64_t start;
	uint64_t end;
};

static pthread_mutex_t range_lock = PTHREAD_MUTEX_INITIALIZER;
static struct uz_range *ranges; /* under range_lock */
static size_t range_capacity;
static atomic_size_t range_count; /* written under range_lock, read anywhere */

void uz_ranges_lock(void)
{
	pthread_mutex_lock(&range_lock);
}

void uz_ranges_unlock(void)
{
	pthread_mutex_unlock(&range_lock);
}

void uz_ranges_reset_lock(void)
{
	pthread_mutex_init(&range_lock, NULL);
}

/* A hint for the hooks' fast path: munmap of memory when nothing is registered. */
bool uz_ranges_any(void)
{
	return atomic_load_explicit(&range_count, memory_order_relaxed) != 0;
}

static int table_reserve(size_t need)
{
	size_t capacity = range_capacity ? range_capacity : 256;
	struct uz_range *table;
	size_t count = atomic_load(&range_count);

	if (need <= range_capacity)
		return 0;
	while (capacity < need)
		capacity *= 2;
	table = uz_raw_mmap(NULL, capacity * sizeof(*table), PROT_READ | PROT_WRITE,
			    MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (table == MAP_FAILED)
		return -ENOMEM;
	if (ranges) {
		memcpy(table, ranges, count * sizeof(*table));
		uz_raw_munmap(ranges, range_capacity * sizeof(*table));
	}
	ranges = table;
	range_capacity = capacity;
	return 0;
}

/* Index of the first range whose end is above addr. */
static size_t table_lower_bound(uint64_t addr)
{
	size_t low = 0, high = atomic_load(&range_count);

	while (low < high) {
		size_t mid = low + (high - low) / 2;

		if (ranges[mid].end <= addr)
			low = mid + 1;
		else
			high = mid;
	}
	return low;
}

bool uz_range_overlaps_locked(uint64_t start, uint64_t len)
{
	size_t i = table_lower_bound(start);

	return i < atomic_load(&range_count) && ranges[i].start < start + len;
}

bool uz_range_contains_locked(uint64_t start, uint64_t len)
{
	size_t i = table_lower_bound(start);

	return i < atomic_load(&range_count) && ranges[i].start <= start &&
	       ranges[i].end >= start + len;
}

/* Drop [start, start + len) from the table, splitting a range if needed. */
void uz_range_forget_locked(uint64_t start, uint64_t len)
{
	uint64_t end = start + len;
	size_t count = atomic_load(&range_count);
	size_t i = table_lower_bound(start), j;

	if (i >= count || ranges[i].start >= end)
		return;
	if (ranges[i].start < start && ranges[i].end > end) {
		/* A hole in the middle: one range becomes two. */
		if (table_reserve(count + 1) < 0)
			return; /* keep it: a child re-registers too much, never too little */
		memmove(&ranges[i + 1], &ranges[i], (count - i) * sizeof(*ranges));
		ranges[i].end = start;
		ranges[i + 1].start = end;
		atomic_store(&range_count, count + 1);
		return;
	}
	if (ranges[i].start < start) {
		ranges[i].end = start;
		i++;
	}
	for (j = i; j < count && ranges[j].end <= end; j++)
		;
	if (j < count && ranges[j].start < end)
		ranges[j].start = end;
	memmove(&ranges[i], &ranges[j], (count - j) * sizeof(*ranges));
	atomic_store(&range_count, count - (j - i));
}

/* Add [start, start + len), merging with neighbours and overlaps. */
void uz_range_remember_locked(uint64_t start, uint64_t len)
{
	uint64_t end = start + len;
	size_t count, i, j;

	uz_range_forget_locked(start, len);
	count = atomic_load(&range_count);
	if (table_reserve(count + 1) < 0)
		return;
	i = table_lower_bound(start);
	/* ranges[i] is the first with end > start; after forget, start >= its end or end <= its
	 * start. */
	if (i > 0 && ranges[i - 1].end == start) {
		ranges[i - 1].end = end;
		if (i < count && ranges[i].start == end) {
			ranges[i - 1].end = ranges[i].end;
			memmove(&ranges[i], &ranges[i + 1], (count - i - 1) * sizeof(*ranges));
			atomic_store(&range_count, count - 1);
		}
		return;
	}
	if (i < count && ranges[i].start == end) {
		ranges[i].start = start;
		return;
	}
	j = i;
	memmove(&ranges[j + 1], &ranges[j], (count - j) * sizeof(*ranges));
	ranges[j] = (struct uz_range){.start = start, .end = end};
	atomic_store(&range_count, count + 1);
}

/*
 * MISSING faults go to the daemon.  With UFFD_FEATURE_WP_ASYNC the range is
 * registered in WP mode too: the kernel resolves write-protect faults by
 * itself (no message), and the daemon learns which pages were written since
 * its last look with PAGEMAP_SCAN on our pagemap — its only view of
 * accesses to present pages (daemon/fault/fault.c, CLOCK).  Where WP mode
 * is refused the range is registered for MISSING faults alone.
 */
static int uffd_register(uint64_t start, uint64_t len)
{
	struct uffdio_register reg = {
	    .range = {.start = start, .len = len},
	    .mode = UFFDIO_REGISTER_MODE_MISSING,
	};

	if (uz_client.uffd_features & UFFD_FEATURE_WP_ASYNC) {
		reg.mode |= UFFDIO_REGISTER_MODE_WP;
		if (ioctl(uz_client.uffd, UFFDIO_REGISTER, &reg) == 0)
			return 0;
		reg.mode = UFFDIO_REGISTER_MODE_MISSING;
	}
	return ioctl(uz_client.uffd, UFFDIO_REGISTER, &reg) < 0 ? -errno : 0;
}

static void uffd_unregister(uint64_t start, uint64_t len)
{
	struct uffdio_range range = {.start = start, .len = len};

	ioctl(uz_client.uffd, UFFDIO_UNREGISTER, &range);
}

/*
 * A REGISTER or UNREGISTER, asked again of the next daemon when the one
 * asked dies first (-ENOTCONN while the agent reconnects).  The dead one
 * may have applied it, and its successor takes the registered ranges from
 * the kernel: acting on a guess would lose pages (a range unregistered
 * from the uffd while a daemon counts it can have its pages moved out, and
 * they then fault back as zeros).  -ENOTCONN only once the agent gave up
 * (failed closed: the uffd is released) or the daemon is leaving.
 */
static int daemon_range(uint16_t type, uint64_t start, uint64_t len, uint32_t flags)
{
	struct uz_msg_range msg = {.start = start, .len = len, .flags = flags};
	struct uz_msg_reply reply;
	bool retried = false;
	int r;

	for (;;) {
		r = uz_conn_request(&msg, sizeof(msg), type, &reply, sizeof(reply), UZ_MSG_REPLY);
		if (r != -ENOTCONN ||
		    atomic_load(&uz_client.state) != UZ_CLIENT_RECONNECTING || !uz_conn_wait_managed())
			break;
		retried = true;
	}
	if (r < 0)
		return r;
	/* A successor that found the range registered in the kernel already has it. */
	if (type == UZ_MSG_REGISTER && reply.status == -EEXIST && retried)
		return 0;
	return reply.status;
}

/*
 * Register [start, start + len) with the uffd and the daemon and remember
 * it.  Caller holds range_lock.  On failure nothing is registered.
 */
int uz_range_register_locked(uint64_t start, uint64_t len, uint32_t flags)
{
	int r;

	if (!uz_client_managed())
		return -ENOTCONN;
	if (uz_is_agent())
		return -EDEADLK;
	if (table_reserve(atomic_load(&range_count) + 2) < 0)
		return -ENOMEM;
	r = uffd_register(start, len);
	if (r < 0)
		return r;
	r = daemon_range(UZ_MSG_REGISTER, start, len, flags);
	if (r < 0) {
		/* After failing closed the uffd is released: nothing is registered any more. */
		if (uz_client_managed())
			uffd_unregister(start, len);
		return r;
	}
	uz_range_remember_locked(start, len);
	return 0;
}

/*
 * [start, start + len) is registered with the uffd already (the kernel
 * extended a registered mapping over it): tell the daemon and remember it,
 * or unregister it when the daemon refuses.  Caller holds range_lock.
 */
void uz_range_announce_locked(uint64_t start, uint64_t len)
{
	if (daemon_range(UZ_MSG_REGISTER, start, len, 0) == 0)
		uz_range_remember_locked(start, len);
	else if (uz_client_managed())
		uffd_unregister(start, len);
}

/* Take [start, start + len) back from the daemon.  Caller holds range_lock. */
int uz_range_unregister_locked(uint64_t start, uint64_t len)
{
	int r;

	if (uz_is_agent())
		return -EDEADLK;
	r = daemon_range(UZ_MSG_UNREGISTER, start, len, 0);
	/*
	 * -ENOTCONN: the daemon is leaving (after SHUTDOWN every page is
	 * back), or no daemon came back and the agent failed closed (every
	 * evicted page is back or poisoned, the uffd released).
	 */
	if (r < 0 && r != -ENOTCONN)
		return r;
	if (uz_client.uffd >= 0 && uz_client_managed())
		uffd_unregister(start, len);
	uz_range_forget_locked(start, len);
	return 0;
}

/* SHUTDOWN: every page is back; unregister without asking.  Agent, range_lock held. */
void uz_ranges_unregister_all_locked(void)
{
	size_t count = atomic_load(&range_count);

	for (size_t i = 0; i < count; i++)
		uffd_unregister(ranges[i].start, ranges[i].end - ranges[i].start);
}

void uz_ranges_clear_locked(void)
{
	atomic_store(&range_count, 0);
}

/*
 * Fork child, after joining: register every inherited range again.  All its
 * pages are present (the parent's FORK_PREPARE brought them back), hence
 * UZ_REGISTER_POPULATED.  A range that fails stays unmanaged and is dropped.
 */
void uz_ranges_reregister_locked(void)
{
	size_t count = atomic_load(&range_count), kept = 0;
	struct uz_range range;

	for (size_t i = 0; i < count; i++) {
		int r = -ENOTCONN;

		range = ranges[i];
		if (uz_client_managed()) {
			r = uffd_register(range.start, range.end - range.start);
			if (r == 0) {
				r = daemon_range(UZ_MSG_REGISTER, range.start,
						 range.end - range.start, UZ_REGISTER_POPULATED);
				if (r < 0)
					uffd_unregister(range.start, range.end - range.start);
			}
		}
		if (r == 0)
			ranges[kept++] = range;
	}
	atomic_store(&range_count, kept);
}

/*
 * Fault every page of every range in (read faults: the daemon serves them
 * like any other).  The fork path's fallback when the daemon could not
 * give the pages back itself: a page must be present when the kernel
 * copies the address space, or the child reads zeros there.
 */
void uz_ranges_populate_locked(void)
{
	size_t count = atomic_load(&range_count);

	for (size_t i = 0; i < count; i++)
		(void)madvise((void *)(uintptr_t)ranges[i].start, ranges[i].end - ranges[i].start,
			      MADV_POPULATE_READ);
}
