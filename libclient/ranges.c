/* SPDX-License-Identifier: MIT */
/*
 * The table of ranges this process has registered, or is registering,
 * with its uffd and the daemon; and the register/unregister round trips.
 *
 * The table is a cache, never the truth: glibc's own munmap, mremap and
 * brk calls (no PLT, no hook) change registered memory behind our back,
 * and only the daemon (which reads the UNMAP/REMAP events) and the kernel
 * know what is registered.  Nothing that decides about data relies on it.
 * It tells the hooks which munmap/mremap may touch registered memory, the
 * scan (scan.c) what not to register twice, and it holds three kinds of
 * entry, as sorted, disjoint [start, end) intervals in raw-mmapped memory
 * (never malloc):
 *   REGISTERED  registered with the uffd and the daemon (adjacent ones merge);
 *   PENDING     claimed by one registrar (token) for a round trip in flight:
 *               nobody else registers or unregisters it meanwhile;
 *   EXCLUDED    left alone by the scan: unregistered by uzswap_unregister(),
 *               refused by the daemon, or registered with another uffd.
 * munmap/MAP_FIXED hooks forget every kind; a registrar that finds its
 * PENDING entry gone when the reply comes records nothing and undoes
 * nothing (the memory it claimed was unmapped meanwhile).
 *
 * Order of operations (docs/PROTOCOL.md section 2):
 *   register:   claim PENDING and UFFDIO_REGISTER under range_lock, then the
 *               REGISTER round trip without any lock, then under range_lock
 *               again: REGISTERED, or on a refusal other than -EEXIST
 *               UFFDIO_UNREGISTER what is still ours (the daemon holds none
 *               of it, protocol.h); -EEXIST keeps the registration.
 *   unregister: claim PENDING, UNREGISTER round trip (the daemon gives every
 *               page back), then UFFDIO_UNREGISTER; the other order would
 *               lose pages.
 * range_lock is never held across a round trip: other threads' mmap,
 * munmap and mremap never wait for a daemon reply.
 */
#include <errno.h>
#include <stddef.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>

#include "client.h"
#include "uffd-compat.h"
#include "util.h"

struct uz_range {
	uint64_t start;
	uint64_t end;
	uint32_t state; /* enum uz_range_state */
	uint32_t token; /* PENDING: the registrar's */
	uint64_t gen;	/* table generation when recorded (scan reconciliation) */
};

static pthread_mutex_t range_lock = PTHREAD_MUTEX_INITIALIZER;
/*
 * This thread holds range_lock.  A join runs with it held and its
 * pthread_create of the agent callocs the dtv from the program's malloc,
 * which may mmap (jemalloc maps a fresh extent): our hooks must not take
 * the lock again then (uz_ranges_held).  Initial-exec TLS: a dynamic TLS
 * access may malloc (fork.c).
 */
static __thread __attribute__((tls_model("initial-exec"))) bool range_lock_mine;
static struct uz_range *ranges; /* under range_lock */
static size_t range_capacity;
static atomic_size_t range_count; /* written under range_lock, read anywhere */
static uint32_t next_token = 1;	  /* under range_lock */
static uint64_t table_gen = 1;	  /* under range_lock */

void uz_ranges_lock(void)
{
	pthread_mutex_lock(&range_lock);
	range_lock_mine = true;
}

void uz_ranges_unlock(void)
{
	range_lock_mine = false;
	pthread_mutex_unlock(&range_lock);
}

bool uz_ranges_held(void)
{
	return range_lock_mine;
}

void uz_ranges_reset_lock(void)
{
	range_lock_mine = false;
	pthread_mutex_init(&range_lock, NULL);
}

/* A hint for the hooks' fast path: munmap of memory when nothing is in the table. */
bool uz_ranges_any(void)
{
	return atomic_load_explicit(&range_count, memory_order_relaxed) != 0;
}

uint64_t uz_ranges_gen_locked(void)
{
	return table_gen;
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
	table = uz_own_mmap(capacity * sizeof(*table));
	if (!table)
		return -ENOMEM;
	if (ranges) {
		memcpy(table, ranges, count * sizeof(*table));
		uz_own_munmap(ranges, range_capacity * sizeof(*table));
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

/* [start, start + len) is wholly covered by REGISTERED entries. */
bool uz_range_contains_locked(uint64_t start, uint64_t len)
{
	size_t count = atomic_load(&range_count);
	uint64_t cursor = start, end = start + len;

	for (size_t i = table_lower_bound(start); i < count && cursor < end; i++) {
		if (ranges[i].start > cursor || ranges[i].state != UZ_RANGE_REGISTERED)
			return false;
		cursor = ranges[i].end;
	}
	return cursor >= end;
}

/*
 * For the scan: the parts of [start, end) that no entry covers (at most
 * max of them, in order), whether a REGISTERED entry overlaps it
 * (*registered) and whether a PENDING or EXCLUDED one does (*blocked).
 */
size_t uz_range_gaps_locked(uint64_t start, uint64_t end, struct uz_register_range *gaps,
			    size_t max, bool *registered, bool *blocked)
{
	size_t count = atomic_load(&range_count), n = 0;
	uint64_t cursor = start;

	*registered = *blocked = false;
	for (size_t i = table_lower_bound(start); i < count && ranges[i].start < end; i++) {
		if (ranges[i].state == UZ_RANGE_REGISTERED)
			*registered = true;
		else
			*blocked = true;
		if (ranges[i].start > cursor && n < max)
			gaps[n++] = (struct uz_register_range){cursor, ranges[i].start - cursor};
		cursor = uz_max(cursor, ranges[i].end);
	}
	if (cursor < end && n < max)
		gaps[n++] = (struct uz_register_range){cursor, end - cursor};
	return n;
}

/*
 * After a scan: REGISTERED and EXCLUDED entries recorded before the scan
 * read the maps (gen <= gen) that no eligible mapping of the scan covers
 * any more were unmapped or changed behind our back: forget those parts.
 * lines: the scan's eligible mappings, sorted.
 */
void uz_ranges_reconcile_locked(const struct uz_register_range *lines, size_t nr_lines,
				uint64_t gen)
{
	size_t line = 0;

	for (size_t i = 0; i < atomic_load(&range_count);) {
		struct uz_range *r = &ranges[i];
		uint64_t cursor = r->start, gap_start = 0, gap_end = 0;

		if (r->state == UZ_RANGE_PENDING || r->gen > gen) {
			i++;
			continue;
		}
		while (line < nr_lines && lines[line].start + lines[line].len <= r->start)
			line++;
		for (size_t j = line; cursor < r->end; j++) {
			uint64_t ls = j < nr_lines ? lines[j].start : r->end;

			if (ls > cursor) {
				gap_start = cursor;
				gap_end = uz_min(ls, r->end);
				break;
			}
			cursor = uz_max(cursor, ls + lines[j].len);
		}
		if (gap_end > gap_start) {
			uz_range_forget_locked(gap_start, gap_end - gap_start);
			i = table_lower_bound(gap_start); /* look at what is left of it again */
			continue;
		}
		i++;
	}
}

/* Drop [start, start + len) from the table, whatever its state, splitting as needed. */
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
			return; /* keep it: the table is a cache */
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

/* Record [start, start + len) in state (forgetting what was there); REGISTERED merges. */
static void table_set(uint64_t start, uint64_t len, uint32_t state, uint32_t token)
{
	uint64_t end = start + len;
	size_t count, i;
	bool merges = state == UZ_RANGE_REGISTERED;

	uz_range_forget_locked(start, len);
	count = atomic_load(&range_count);
	if (table_reserve(count + 1) < 0)
		return;
	i = table_lower_bound(start);
	table_gen++;
	if (merges && i > 0 && ranges[i - 1].end == start &&
	    ranges[i - 1].state == UZ_RANGE_REGISTERED) {
		ranges[i - 1].end = end;
		ranges[i - 1].gen = table_gen;
		if (i < count && ranges[i].start == end && ranges[i].state == UZ_RANGE_REGISTERED) {
			ranges[i - 1].end = ranges[i].end;
			memmove(&ranges[i], &ranges[i + 1], (count - i - 1) * sizeof(*ranges));
			atomic_store(&range_count, count - 1);
		}
		return;
	}
	if (merges && i < count && ranges[i].start == end &&
	    ranges[i].state == UZ_RANGE_REGISTERED) {
		ranges[i].start = start;
		ranges[i].gen = table_gen;
		return;
	}
	memmove(&ranges[i + 1], &ranges[i], (count - i) * sizeof(*ranges));
	ranges[i] = (struct uz_range){
	    .start = start, .end = end, .state = state, .token = token, .gen = table_gen};
	atomic_store(&range_count, count + 1);
}

void uz_range_remember_locked(uint64_t start, uint64_t len)
{
	table_set(start, len, UZ_RANGE_REGISTERED, 0);
}

void uz_range_exclude_locked(uint64_t start, uint64_t len)
{
	table_set(start, len, UZ_RANGE_EXCLUDED, 0);
}

/*
 * MISSING faults go to the daemon.  With UFFD_FEATURE_WP_ASYNC the range is
 * registered in WP mode too: the kernel resolves write-protect faults by
 * itself (no message), and the daemon learns which pages were written since
 * its last look with PAGEMAP_SCAN on our pagemap — its only view of
 * accesses to present pages (daemon/fault/reclaim.c, CLOCK).  Where WP mode
 * is refused the range is registered for MISSING faults alone.  Registering
 * a range this uffd already holds changes nothing; one another uffd of the
 * program holds fails with EBUSY.
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

	if (uz_client.uffd >= 0)
		ioctl(uz_client.uffd, UFFDIO_UNREGISTER, &range);
}

/*
 * Is the VMA at addr registered with a userfaultfd?  1 yes, 0 no, -EAGAIN
 * when the kernel cannot tell now.  UFFDIO_CONTINUE on private anonymous
 * memory looks the VMA up first (ENOENT: no uffd context) and only then
 * refuses with EINVAL because CONTINUE is for shmem and hugetlb; nothing
 * is changed either way.  tests/kernel/uffd-continue-probe checks this.
 */
int uz_uffd_probe(uint64_t addr)
{
	struct uffdio_continue probe = {.range = {.start = addr, .len = UZ_PAGE_SIZE}};

	if (ioctl(uz_client.uffd, UFFDIO_CONTINUE, &probe) == 0)
		return 1;
	if (errno == EINVAL)
		return 1;
	if (errno == ENOENT)
		return 0;
	return -EAGAIN;
}

/*
 * Settle what is left of registrar token's PENDING entries in [start, end):
 * keep (REGISTERED), or exclude, or drop them and unregister them from the
 * uffd.  Caller holds range_lock.
 */
enum settle { SETTLE_KEEP, SETTLE_EXCLUDE, SETTLE_UNREGISTER, SETTLE_UNREGISTER_EXCLUDE };

static void pending_settle(uint64_t start, uint64_t end, uint32_t token, enum settle how)
{
	for (;;) {
		size_t count = atomic_load(&range_count), i = table_lower_bound(start);
		uint64_t s = 0, e = 0;

		for (; i < count && ranges[i].start < end; i++) {
			if (ranges[i].state == UZ_RANGE_PENDING && ranges[i].token == token) {
				s = ranges[i].start;
				e = ranges[i].end;
				break;
			}
		}
		if (s == e)
			return;
		switch (how) {
		case SETTLE_KEEP:
			table_set(s, e - s, UZ_RANGE_REGISTERED, 0);
			break;
		case SETTLE_EXCLUDE:
			table_set(s, e - s, UZ_RANGE_EXCLUDED, 0);
			break;
		case SETTLE_UNREGISTER:
			uffd_unregister(s, e - s);
			uz_range_forget_locked(s, e - s);
			break;
		case SETTLE_UNREGISTER_EXCLUDE:
			uffd_unregister(s, e - s);
			table_set(s, e - s, UZ_RANGE_EXCLUDED, 0);
			break;
		}
		start = e;
	}
}

/* Claim [start, end) for a new registrar and register it with the uffd.  range_lock held. */
static int claim_and_register(uint64_t start, uint64_t len, uint32_t token)
{
	int r;

	if (!uz_client_managed())
		return -ENOTCONN;
	if (uz_range_overlaps_locked(start, len))
		return -EEXIST;
	if (table_reserve(atomic_load(&range_count) + 2) < 0)
		return -ENOMEM;
	r = uffd_register(start, len);
	if (r == -EBUSY)
		uz_range_exclude_locked(start, len); /* another uffd of the program has it */
	if (r < 0)
		return r;
	table_set(start, len, UZ_RANGE_PENDING, token);
	return 0;
}

/*
 * A REGISTER answered: 0 or -EEXIST (the daemon holds it, or part of it)
 * keep the registration; any other refusal means the daemon holds none of
 * it (protocol.h), so what is still ours is unregistered from the uffd.  A
 * refusal that would only come again (limits, memory) leaves the range
 * EXCLUDED so the scan does not ask for it every time; one that came from
 * a mapping changing under the request (-EINVAL, -ENOENT, -EAGAIN) is
 * simply forgotten and looked at again.
 */
static void settle_status(uint64_t start, uint64_t len, uint32_t token, int status)
{
	if (status == 0 || status == -EEXIST)
		pending_settle(start, start + len, token, SETTLE_KEEP);
	else if (status == -E2BIG || status == -ENOMEM)
		pending_settle(start, start + len, token, SETTLE_UNREGISTER_EXCLUDE);
	else
		pending_settle(start, start + len, token, SETTLE_UNREGISTER);
}

/*
 * A request about ranges, asked again of the next daemon when the one
 * asked dies first (-ENOTCONN while the agent reconnects).  The dead one
 * may have applied it, and its successor takes the registered ranges from
 * the kernel: acting on a guess would lose pages (UFFDIO_MOVE moves pages
 * out of a range no longer registered with the uffd, and they then fault
 * back as zeros).  -ENOTCONN only once the agent gave up (failed closed:
 * the uffd is released) or the daemon is leaving (SHUTDOWN).
 */
static int range_request(void *msg, size_t size, uint16_t type, void *reply, size_t reply_size,
			 uint16_t reply_type)
{
	for (;;) {
		int r = uz_conn_request(msg, size, type, reply, reply_size, reply_type);

		if (r != -ENOTCONN ||
		    atomic_load(&uz_client.state) != UZ_CLIENT_RECONNECTING || !uz_conn_wait_managed())
			return r;
	}
}

/*
 * Register one range with the uffd and the daemon (hooks, the API).  The
 * caller holds no library lock.  -EEXIST when the table already has
 * something there; on any failure nothing is registered.  fresh: the
 * kernel just handed out this address space (mmap), so whatever the table
 * still says about it is stale.  A range the kernel already registered
 * with our uffd (the tail of a mapping mremap grew) goes the same way: the
 * UFFDIO_REGISTER changes nothing there.
 */
int uz_range_register(uint64_t start, uint64_t len, uint32_t flags, bool fresh)
{
	struct uz_msg_range msg = {.start = start, .len = len, .flags = flags};
	struct uz_msg_reply reply;
	uint32_t token;
	int r;

	if (uz_is_agent() || uz_ranges_held())
		return -EDEADLK;
	uz_ranges_lock();
	token = next_token++;
	if (fresh)
		uz_range_forget_locked(start, len);
	r = claim_and_register(start, len, token);
	uz_ranges_unlock();
	if (r < 0)
		return r;

	r = range_request(&msg, sizeof(msg), UZ_MSG_REGISTER, &reply, sizeof(reply), UZ_MSG_REPLY);
	if (r == 0)
		r = reply.status;

	uz_ranges_lock();
	settle_status(start, len, token, r);
	uz_ranges_unlock();
	return r == -EEXIST ? 0 : r;
}

/*
 * The scan's batch (watcher thread only: the message buffers are static).
 * ranges are sorted and disjoint; each is claimed and registered with the
 * uffd (ranges that overlap the table or fail are left out), the rest go
 * to the daemon in REGISTER_BATCH messages of up to UZ_REGISTER_BATCH_MAX,
 * and each is settled by its status.  Returns how many bytes the daemon
 * took, or -ENOTCONN.  *refused (optional) adds the bytes refused.
 */
int64_t uz_ranges_register_batch(const struct uz_register_range *candidates, size_t count,
				 uint32_t flags, uint64_t *refused)
{
	static struct {
		struct uz_msg_register_batch msg;
		struct uz_register_range ranges[UZ_REGISTER_BATCH_MAX];
	} request;
	static struct {
		struct uz_msg_register_batch_reply reply;
		int32_t status[UZ_REGISTER_BATCH_MAX];
	} answer;
	int64_t taken = 0;
	size_t next = 0;

	while (next < count) {
		uint32_t n = 0, token;
		size_t size, reply_size;
		int r;

		uz_ranges_lock();
		token = next_token++;
		for (; next < count && n < UZ_REGISTER_BATCH_MAX; next++) {
			if (claim_and_register(candidates[next].start, candidates[next].len,
					       token) == 0)
				request.ranges[n++] = candidates[next];
			else if (!uz_client_managed())
				break;
		}
		uz_ranges_unlock();
		if (!uz_client_managed() && n == 0)
			return taken ? taken : -ENOTCONN;
		if (n == 0)
			continue;

		request.msg.count = n;
		request.msg.flags = flags;
		size = offsetof(struct uz_msg_register_batch, ranges) +
		       (size_t)n * sizeof(request.ranges[0]);
		reply_size = offsetof(struct uz_msg_register_batch_reply, status) +
			     (size_t)n * sizeof(int32_t);
		r = range_request(&request, size, UZ_MSG_REGISTER_BATCH, &answer, reply_size,
				  UZ_MSG_REGISTER_BATCH_REPLY);
		if (r == 0 && answer.reply.count != n)
			r = -EPROTO;

		uz_ranges_lock();
		for (uint32_t i = 0; i < n; i++) {
			int status = r < 0 ? r : answer.status[i];

			settle_status(request.ranges[i].start, request.ranges[i].len, token,
				      status);
			if (status == 0)
				taken += (int64_t)request.ranges[i].len;
			else if (refused)
				*refused += request.ranges[i].len;
		}
		uz_ranges_unlock();
		if (r == -ENOTCONN)
			return taken ? taken : r;
	}
	return taken;
}

/*
 * Take [start, start + len) back from the daemon (uzswap_unregister).  The
 * range must be REGISTERED in the table.  Afterwards it is EXCLUDED: the
 * scan does not register it again while it stays mapped.
 */
int uz_range_unregister(uint64_t start, uint64_t len)
{
	struct uz_msg_range msg = {.start = start, .len = len};
	struct uz_msg_reply reply;
	uint32_t token;
	int r;

	if (uz_is_agent())
		return -EDEADLK;
	uz_ranges_lock();
	if (!uz_range_contains_locked(start, len)) {
		uz_ranges_unlock();
		return -ENOENT;
	}
	token = next_token++;
	table_set(start, len, UZ_RANGE_PENDING, token);
	uz_ranges_unlock();

	r = range_request(&msg, sizeof(msg), UZ_MSG_UNREGISTER, &reply, sizeof(reply),
			  UZ_MSG_REPLY);
	if (r == 0)
		r = reply.status;

	uz_ranges_lock();
	/*
	 * -ENOTCONN (range_request gave up): the daemon is leaving (after
	 * SHUTDOWN every page is back), or none came back and the agent failed
	 * closed (every evicted page is back or poisoned, the uffd released).
	 */
	if (r == 0 || r == -ENOTCONN) {
		for (uint64_t s = start; s < start + len;) {
			size_t i = table_lower_bound(s);
			uint64_t e;

			if (i >= atomic_load(&range_count) || ranges[i].start >= start + len)
				break;
			s = uz_max(s, ranges[i].start);
			e = uz_min(ranges[i].end, start + len);
			if (ranges[i].state == UZ_RANGE_PENDING && ranges[i].token == token) {
				uffd_unregister(s, e - s);
				table_set(s, e - s, UZ_RANGE_EXCLUDED, 0);
			}
			s = e;
		}
		r = 0;
	} else {
		pending_settle(start, start + len, token, SETTLE_KEEP);
	}
	uz_ranges_unlock();
	return r;
}

/* SHUTDOWN: every page is back; unregister without asking.  Agent, range_lock held. */
void uz_ranges_unregister_all_locked(void)
{
	size_t count = atomic_load(&range_count);

	for (size_t i = 0; i < count; i++)
		if (ranges[i].state != UZ_RANGE_EXCLUDED)
			uffd_unregister(ranges[i].start, ranges[i].end - ranges[i].start);
}

/*
 * A fork child's fresh uffd: register (with the kernel only) every range the
 * parent had registered, before the child touches anything outside the
 * library's own memory and its stack.  Where the parent had evicted a page
 * the child has a hole, and a hole touched while unregistered becomes a
 * zero page for good; registered, it is a fault the daemon serves from the
 * parent's snapshot (it needs no REGISTER for that: it serves from the
 * page index).  The table may be stale (glibc unmapped or moved memory
 * behind our back): a range the kernel refuses is left to the scan that
 * follows.  Single-threaded (the fork child), no lock.
 */
void uz_ranges_register_inherited(void)
{
	size_t count = atomic_load(&range_count);

	for (size_t i = 0; i < count; i++)
		if (ranges[i].state == UZ_RANGE_REGISTERED || ranges[i].state == UZ_RANGE_PENDING)
			(void)uffd_register(ranges[i].start, ranges[i].end - ranges[i].start);
}

void uz_ranges_clear_locked(void)
{
	atomic_store(&range_count, 0);
	table_gen++;
}

/*
 * Fault every page of every range in (read faults: the daemon serves them
 * like any other).  The fork path's fallback when the daemon could not
 * give the pages back itself: a page must be present when the kernel
 * copies the address space, or the child reads zeros there.  The table
 * may miss ranges glibc moved, so the scan's list of registered mappings
 * is used too (scan.c).
 */
void uz_ranges_populate_locked(void)
{
	size_t count = atomic_load(&range_count);

	for (size_t i = 0; i < count; i++)
		if (ranges[i].state != UZ_RANGE_EXCLUDED)
			(void)madvise((void *)(uintptr_t)ranges[i].start,
				      ranges[i].end - ranges[i].start, MADV_POPULATE_READ);
	uz_scan_populate_registered();
}
