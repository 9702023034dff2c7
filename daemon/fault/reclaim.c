// SPDX-License-Identifier: MIT
/*
 * Reclaim, per client: when the client's resident pages exceed the high
 * watermark, a CLOCK over the index (from a hand: referenced RESIDENT
 * entries are cleared and skipped, the others become victims) collects up
 * to UZ_EVICT_BATCH_MAX victims down toward the low watermark, marks them
 * IN_FLIGHT and sends EVICT.  Pages named by a COLD hint go first.  On
 * EVICT_DONE each moved page is compressed from the ring into the pool;
 * a page that cannot be stored (pool full, compressor failure, a poor page
 * under the reject policy) is put back with UFFDIO_COPY from the ring —
 * the ring holds its only copy — and a page a fault was parked on is put
 * back directly from the ring.  The batch stays open until every such
 * page is back, so the ring is never reused early.
 */
#include <errno.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <sys/ioctl.h>

#include "client/client.h"
#include "compress/compress.h"
#include "family/family.h"
#include "fault/fault-internal.h"
#include "fault/reclaim.h"
#include "fault/request.h"
#include "fault/serve.h"
#include "fault/writeback.h"
#include "index/index.h"
#include "pool/pool.h"
#include "protocol.h"
#include "stats/stats.h"
#include "store/store.h"
#include "uffd-compat.h"
#include "util.h"

#define FAULT_EVICT_BACKOFF 256	   /* CLOCK visits a page the agent could not move sits out */
#define FAULT_SHARED_MARK   0x1fff /* backoff value: shared with a fork relative (see below) */
#define FAULT_UNIT_BACKOFF_MAX 64  /* unit attempts skipped at most after ones that did not fit */

_Static_assert(POOL_HANDLE_BITS <= PE_HANDLE_BITS, "a handle must leave a unit's page bits free");

/*
 * A RESIDENT entry has no use for the len field; it counts down the CLOCK
 * visits a page sits out after the agent failed to move it (EBUSY: shared
 * with a fork child or parent until copy-on-write breaks).  Without it a
 * process whose resident pages are all shared would be sent the same
 * doomed batch over and over.
 *
 * A page the agent left because it is shared copy-on-write with a fork
 * parent or child (EBUSY) sits out until the client's pagemap says this
 * process alone maps it (bit 56: the relative wrote its copy or exited);
 * then it is a victim like any other.  Its bytes are never compressed
 * twice, and it does not wait a fixed number of sweeps once it is free.
 */
static inline unsigned resident_backoff(page_entry_t e)
{
	return pe_len(e);
}

static bool client_may_evict(struct client *c)
{
	if (c->dead || c->batch_state != BATCH_IDLE || c->fork_pause || c->shutdown_sent)
		return false;
	/*
	 * A fork child joins with all its memory present (the parent gave
	 * every page back before the fork): most children exit or exec soon,
	 * and evicting them meanwhile costs both sides for nothing.  Their
	 * budget applies after FAULT_FORK_GRACE_MS (the thread wakes for it).
	 */
	if (c->grace_until) {
		if (uz_now_usec() < c->grace_until)
			return false;
		c->grace_until = 0;
	}
	/* A request that gives pages back is waiting: do not take more away. */
	if (c->nr_requests) {
		uint32_t type = c->requests[c->requests_head].type;

		if (type != CLIENT_REQ_REGISTER && type != CLIENT_REQ_REGISTER_BATCH &&
		    type != CLIENT_REQ_STATS)
			return false;
	}
	return true;
}

struct victim_ctx {
	struct client *client;
	struct pagemap_window pagemap;
	uint64_t *addrs;
	unsigned count;
	unsigned want;
	bool ignore_referenced;
	uint64_t last_vpn;
};

static int victim_pick(uint64_t vpn, page_entry_t *entry, void *userdata)
{
	struct victim_ctx *ctx = userdata;
	struct client *c = ctx->client;
	unsigned slot;

	if (pe_state(*entry) != PAGE_RESIDENT)
		return 0;
	if (!client_region_find(c, vpn << UZ_PAGE_SHIFT))
		return 0; /* only pages of registered ranges leave */
	ctx->last_vpn = vpn;
	if (resident_backoff(*entry) == FAULT_SHARED_MARK) {
		uint64_t word;

		if (!pagemap_word(c, &ctx->pagemap, vpn, &word) ||
		    !(word & PAGEMAP_EXCLUSIVE_BIT))
			return 0; /* still shared */
		*entry = pe_make(*entry, PAGE_RESIDENT, pe_referenced(*entry), 0, 0, 0);
		if (c->shared_resident)
			c->shared_resident--;
	}
	if (resident_backoff(*entry)) {
		*entry = pe_make(*entry, PAGE_RESIDENT, pe_referenced(*entry), 0,
				 resident_backoff(*entry) - 1, 0);
		return 0;
	}
	if (!ctx->ignore_referenced && pe_referenced(*entry)) {
		*entry &= ~PE_REFERENCED;
		return 0;
	}
	slot = ctx->count++;
	c->slots[slot] = (struct evict_slot){.vpn = vpn, .sent_vpn = vpn, .state = EVICT_SLOT_SENT};
	ctx->addrs[slot] = vpn << UZ_PAGE_SHIFT;
	*entry = pe_make(*entry, PAGE_IN_FLIGHT, false, 0, 0, slot);
	return ctx->count >= ctx->want ? 1 : 0;
}

/*
 * Written pages are referenced pages.  A range the client registered in WP
 * mode with UFFD_FEATURE_WP_ASYNC (libclient/ranges.c) lets one
 * PAGEMAP_SCAN on its pagemap return the pages written since the last scan
 * and write-protect them again, with no fault delivered to anyone.  Each
 * such RESIDENT page gets its referenced bit, so the CLOCK keeps pages the
 * program keeps writing instead of evicting every resident page in turn.
 * Reads of present pages stay invisible (nothing in the kernel reports
 * them short of unmapping the page).  A client whose ranges are not
 * WP-async (old kernel, WP refused) gets -EPERM and is not scanned again.
 */
#define FAULT_SCAN_VEC	 256  /* page_region runs per PAGEMAP_SCAN call */
#define FAULT_SCAN_AHEAD 8192 /* pages of registered memory scanned ahead of the hand */

/* One PAGEMAP_SCAN over [start, end).  false: stop scanning. */
static bool client_scan_range(struct client *c, uint64_t start, uint64_t end)
{
	struct page_region vec[FAULT_SCAN_VEC];

	while (start < end) {
		struct pm_scan_arg arg = {
		    .size = sizeof(arg),
		    .flags = PM_SCAN_WP_MATCHING | PM_SCAN_CHECK_WPASYNC,
		    .start = start,
		    .end = end,
		    .vec = (uint64_t)(uintptr_t)vec,
		    .vec_len = FAULT_SCAN_VEC,
		    /* present pages only: a hole would get a WP marker, and a
		     * marker makes UFFDIO_ZEROPAGE fail with EEXIST */
		    .category_mask = PAGE_IS_WRITTEN | PAGE_IS_PRESENT,
		    .return_mask = PAGE_IS_WRITTEN,
		};
		long n = ioctl(c->pagemap_fd, PAGEMAP_SCAN, &arg);

		if (n < 0) {
			if (errno == EPERM || errno == EINVAL || errno == ENOTTY)
				c->scan_written_off = true;
			return false; /* ESRCH and friends: the process is going */
		}
		for (long j = 0; j < n; j++)
			for (uint64_t vpn = vec[j].start >> UZ_PAGE_SHIFT;
			     vpn < vec[j].end >> UZ_PAGE_SHIFT; vpn++) {
				page_entry_t e = page_index_get(c->index, vpn);

				if (pe_state(e) == PAGE_RESIDENT && !pe_referenced(e))
					page_index_set(c->index, vpn, e | PE_REFERENCED);
			}
		if (arg.walk_end <= start)
			break;
		start = arg.walk_end;
	}
	return true;
}

/*
 * Scan the FAULT_SCAN_AHEAD registered pages the hand is about to visit
 * (wrapping): a page's bit then says "written since the hand last passed",
 * as in a hardware-assisted CLOCK, and each sweep pays for a window, not
 * for the whole address space (scanning everything before every batch
 * cost more than the refaults it saved).
 */
static void client_scan_written(struct client *c)
{
	uint64_t from = c->clock_hand << UZ_PAGE_SHIFT, budget = FAULT_SCAN_AHEAD;

	if (c->scan_written_off || c->pagemap_fd < 0 ||
	    !(c->uffd_features & UFFD_FEATURE_WP_ASYNC))
		return;
	for (int pass = 0; pass < 2; pass++)
		for (unsigned i = 0; i < c->nr_regions && budget; i++) {
			uint64_t start = c->regions[i].start, end = c->regions[i].end;

			if (pass == 0)
				start = uz_max(start, from);
			else
				end = uz_min(end, from);
			if (start >= end)
				continue;
			end = uz_min(end, start + budget * UZ_PAGE_SIZE);
			budget -= (end - start) >> UZ_PAGE_SHIFT;
			if (!client_scan_range(c, start, end))
				return;
		}
}

static int shared_count_one(uint64_t vpn, page_entry_t *entry, void *userdata)
{
	(void)vpn;
	if (pe_state(*entry) == PAGE_RESIDENT && resident_backoff(*entry) == FAULT_SHARED_MARK)
		(*(uint64_t *)userdata)++;
	return 0;
}

/* The shared count drifts (entries unmapped, removed, faulted): recount it now and then. */
void fault_client_shared_recount(struct client *c)
{
	uint64_t now = uz_now_usec(), count = 0;

	if (!c->shared_resident || now < c->shared_recount_usec)
		return;
	c->shared_recount_usec = now + 1000000;
	page_index_walk(c->index, 0, VPN_MAX, shared_count_one, &count);
	c->shared_resident = count;
}

void fault_client_reclaim(struct fault_thread *t, struct client *c)
{
	struct victim_ctx ctx = {.client = c, .addrs = t->evict_msg->addrs};
	uint64_t want_pressure = 0, charged;
	bool cold = c->cold_start < c->cold_end;
	size_t size;
	int r;

	if (!client_may_evict(c))
		return;
	if (c->reclaim_rescan_at && uz_now_usec() >= c->reclaim_retry_usec)
		c->reclaim_rescan_at = 0; /* a fork relative may have written its copies meanwhile */
	/*
	 * Room for the next fault-around run is made ahead of it: a client
	 * with an open window is reclaimed once it is within a window of its
	 * budget, so a scan does not run out of room (and fault page by page)
	 * while a batch is on its way.  Resident pages shared with a fork
	 * relative are outside the budget (they cannot leave).
	 */
	charged = c->resident - uz_min(c->shared_resident, c->resident);
	if (charged + c->around_window > c->high_pages &&
	    c->resident >= c->reclaim_rescan_at && charged > c->low_pages)
		want_pressure = uz_min(charged - c->low_pages, (uint64_t)UZ_EVICT_BATCH_MAX);
	if (c->shrink_pages && c->resident >= c->reclaim_rescan_at)
		want_pressure = uz_max(want_pressure, uz_min(uz_min(c->shrink_pages, c->resident),
							     (uint64_t)UZ_EVICT_BATCH_MAX));
	if (!want_pressure && !cold)
		return;
	/* The pool refuses stores (limits, writeback.c): moving pages out would be for nothing. */
	if (!wb_pool_open(t->wb, c))
		return;

	if (cold) {
		ctx.want = UZ_EVICT_BATCH_MAX;
		ctx.ignore_referenced = true;
		r = page_index_walk(c->index, c->cold_start, c->cold_end - 1, victim_pick, &ctx);
		c->cold_start = r > 0 ? ctx.last_vpn + 1 : c->cold_end;
		ctx.ignore_referenced = false;
	}
	if (ctx.count < want_pressure) {
		client_scan_written(c);
		ctx.want = (unsigned)want_pressure;
		/* From the hand to the end, then twice round: a full sweep clears every bit. */
		for (int pass = 0; pass < 3 && ctx.count < ctx.want; pass++) {
			r = page_index_walk(c->index, c->clock_hand, VPN_MAX, victim_pick, &ctx);
			if (r > 0) {
				c->clock_hand = ctx.last_vpn + 1;
				break;
			}
			c->clock_hand = 0;
		}
	}
	if (!ctx.count) {
		/* Nothing evictable now: do not sweep again on every fault. */
		c->reclaim_rescan_at = c->resident + FAULT_RECLAIM_RESCAN;
		c->reclaim_retry_usec = uz_now_usec() + FAULT_RECLAIM_RETRY_MS * 1000ULL;
		c->shrink_pages = 0;
		return;
	}
	c->reclaim_rescan_at = 0;

	/*
	 * The batch record in the store first: a daemon started after a crash
	 * must know which page each IN_FLIGHT slot is (fault_client_recover).  The
	 * id goes last, so a record is whole once its id is new.
	 */
	{
		struct uz_store_batch *record = store_batch(c->store);

		record->count = ctx.count;
		for (unsigned i = 0; i < ctx.count; i++)
			record->vpn[i] = c->slots[i].vpn;
		__atomic_store_n(&record->id, c->batch_id + 1, __ATOMIC_RELEASE);
	}
	size = offsetof(struct uz_msg_evict, addrs) + ctx.count * sizeof(uint64_t);
	uz_msg_header_init(&t->evict_msg->header, UZ_MSG_EVICT, (uint32_t)size, 0);
	t->evict_msg->batch = c->batch_id + 1;
	t->evict_msg->count = ctx.count;
	r = client_send(c, t->evict_msg, size);
	if (r < 0) {
		/* Not sent (socket full): every victim stays resident. */
		for (unsigned i = 0; i < ctx.count; i++) {
			uint64_t vpn = c->slots[i].vpn;

			page_index_set(
			    c->index, vpn,
			    pe_make(page_index_get(c->index, vpn), PAGE_RESIDENT, false, 0, 0, 0));
			c->slots[i].state = EVICT_SLOT_EMPTY;
		}
		return;
	}
	c->batch_id++;
	c->batch_stale = 0;
	c->shrink_pages -= uz_min(c->shrink_pages, (uint64_t)ctx.count);
	c->batch_count = ctx.count;
	c->batch_state = BATCH_SENT;
	c->in_flight += ctx.count;
	client_resident_add(c, -(int64_t)ctx.count);
	client_stat(c, UZ_STAT_evict_requests, 1);
}

/*
 * A page compressed by the client's policy into t->compressed, or the
 * page itself when it compresses poorly and the policy keeps poor pages
 * raw: *data and *algo say which.  Returns the length, or -errno (the
 * rejection counted).
 */
static int policy_compress(struct fault_thread *t, struct client *c, const uint8_t *page,
			   const void **data, unsigned *algo)
{
	struct compressor *comp = fault_compressor(t, c->policy.algo, c->policy.level, false);
	int len = compressor_compress(comp, page, t->compressed, c->policy.poor_threshold);

	*data = t->compressed;
	*algo = compressor_algo(comp);
	if (len == -E2BIG) {
		client_stat(c, UZ_STAT_reject_compress_poor, 1);
		if (c->policy.poor_policy != UZ_POOR_KEEP_RAW)
			return -E2BIG;
		*data = page;
		*algo = COMPRESSOR_RAW;
		return (int)UZ_PAGE_SIZE;
	}
	if (len <= 0) {
		client_stat(c, UZ_STAT_reject_compress_fail, 1);
		return len < 0 ? len : -EIO;
	}
	return len;
}

/* Compress one moved page into the pool.  0, or -errno: the caller puts it back. */
int fault_store_page(struct fault_thread *t, struct client *c, uint64_t vpn, page_entry_t e,
		     const uint8_t *page)
{
	uint64_t word, pattern;
	const void *data;
	pool_handle_t handle;
	unsigned algo;
	int len, r;

	if (page_same_filled(page, &word) && pe_fill_encode(word, &pattern)) {
		e = pe_make(e, PAGE_SAME_FILLED, true, 0, 0, pattern);
		page_index_set(c->index, vpn, e);
		client_stat(c, UZ_STAT_stored_pages, 1);
		client_stat(c, UZ_STAT_same_filled_pages, 1);
		client_stat(c, UZ_STAT_zswpout, 1);
		return 0;
	}

	len = policy_compress(t, c, page, &data, &algo);
	if (len < 0)
		return len;
	r = pool_store(c->family->pool, data, (size_t)len, &handle);
	if (r < 0) {
		client_stat(c, UZ_STAT_reject_alloc_fail, 1);
		return r;
	}
	e = pe_make(e, PAGE_STORED, true, algo, (unsigned)len, handle);
	entry_lru_push(c, vpn, &e);
	page_index_set(c->index, vpn, e);
	client_stat(c, UZ_STAT_stored_pages, 1);
	client_pool_bytes(c, len, true);
	client_stat(c, UZ_STAT_zswpout, 1);
	return 0;
}

/*
 * Multi-page units.  PE_UNIT_PAGES pages evicted side by side (slots i..
 * of the landed batch, at vpn, vpn + 1, ..., vpn a multiple of
 * PE_UNIT_PAGES) are compressed as one object when the client's policy
 * asks for units and its faults have not shown that the pages a unit puts
 * back go unused (unit_score, judged like a fault-around run: serve.c).
 * A unit is kept only if its object is no bigger than four poor pages and
 * fits in the pool and under its limits; data that does not compress that
 * well makes the client skip the next attempts, up to
 * FAULT_UNIT_BACKOFF_MAX of them, so that it is not compressed twice over.  A page that is one repeated
 * word stays a single same-filled entry (it costs no pool memory).
 */
static bool fault_unit_wanted(struct client *c)
{
	if (c->policy.unit_pages != PE_UNIT_PAGES || c->unit_score < 0)
		return false;
	if (c->unit_skip) {
		c->unit_skip--;
		return false;
	}
	return true;
}

static bool unit_slot_ready(struct client *c, const struct uz_msg_evict_done *m, unsigned i,
			    uint64_t vpn)
{
	const struct evict_slot *s = &c->slots[i];
	page_entry_t e;
	uint64_t word;

	if (i >= m->count || m->status[i] != 0 || s->discarded || s->parked || s->vpn != vpn)
		return false;
	e = page_index_get(c->index, vpn);
	return pe_state(e) == PAGE_IN_FLIGHT && pe_payload(e) == i &&
	       !page_same_filled(c->ring + (size_t)i * UZ_PAGE_SIZE, &word);
}

/*
 * Store slots first.. of the landed batch as one unit.  Returns how many
 * slots it took (all of them, or as many as got a pool reference), 0 when
 * the pages must be stored one by one.
 */
static unsigned fault_store_unit(struct fault_thread *t, struct client *c,
				 const struct uz_msg_evict_done *m, unsigned first)
{
	struct compressor *comp = fault_compressor(t, c->policy.algo, c->policy.level, false);
	struct pe_unit_header header = {.pages = PE_UNIT_PAGES, .magic = PE_UNIT_MAGIC};
	uint64_t vpn = c->slots[first].vpn;
	/* No bigger than four poor pages: a unit must not cost more than single pages would. */
	size_t cap = uz_min(uz_min(pool_object_max(c->family->pool), (size_t)PE_UNIT_OBJECT_MAX),
			    (size_t)PE_UNIT_PAGES * c->policy.poor_threshold) &
		     ~(size_t)3;
	unsigned padded, taken;
	pool_handle_t handle;
	int len;

	/* Aligned, like a large folio: a unit's pages are the group of 4 it falls in. */
	if (vpn % PE_UNIT_PAGES)
		return 0;
	for (unsigned k = 0; k < PE_UNIT_PAGES; k++)
		if (!unit_slot_ready(c, m, first + k, vpn + k))
			return 0;
	if (!fault_unit_wanted(c))
		return 0;
	len = compressor_compress_buf(
	    comp, c->ring + (size_t)first * UZ_PAGE_SIZE, (size_t)PE_UNIT_PAGES * UZ_PAGE_SIZE,
	    t->unit_out + sizeof(header), cap > sizeof(header) ? cap - sizeof(header) : 0);
	if (len <= 0) {
		c->unit_backoff = uz_min(c->unit_backoff ? c->unit_backoff * 2 : 1,
					 (unsigned)FAULT_UNIT_BACKOFF_MAX);
		c->unit_skip = c->unit_backoff;
		return 0;
	}
	c->unit_backoff = 0;
	header.compressed_len = (uint16_t)len;
	memcpy(t->unit_out, &header, sizeof(header));
	padded = (unsigned)(sizeof(header) + (size_t)len + 3) & ~3U;
	memset(t->unit_out + sizeof(header) + len, 0, padded - sizeof(header) - (size_t)len);
	/* The limits leave room for a page (wb_pool_open); a unit may need more. */
	if (!wb_pool_room(t->wb, c, padded))
		return 0;
	fault_unit_cache_reset(t);
	if (pool_store(c->family->pool, t->unit_out, padded, &handle) < 0)
		return 0;

	/* One reference per member, each recorded after it is taken (pool.h: the order). */
	for (taken = 0; taken < PE_UNIT_PAGES; taken++) {
		page_entry_t e = page_index_get(c->index, vpn + taken);

		if (taken && pool_ref(c->family->pool, handle) < 0)
			break; /* the rest go one by one */
		e = pe_make(e, PAGE_STORED, true, compressor_algo(comp), pe_unit_len_field(padded),
			    pe_unit_payload(handle, taken));
		entry_lru_push(c, vpn + taken, &e);
		page_index_set(c->index, vpn + taken, e);
		entry_pool_count(c, e, 1, taken == 0);
		client_stat(c, UZ_STAT_stored_pages, 1);
		client_stat(c, UZ_STAT_zswpout, 1);
		c->slots[first + taken].state = EVICT_SLOT_EMPTY;
		c->in_flight--;
	}
	client_stat(c, UZ_STAT_unit_stores, 1);
	return taken;
}

/*
 * One member of a unit stored alone: its page from the unit (in the
 * thread's unit cache), compressed by itself into a new object, the entry
 * switched to it, then the unit's reference dropped (pool.h: the order).
 * The entry keeps its bits (referenced, queued: its LRU reference names
 * the page, not the object).  false: it stays in the unit.
 */
static bool unit_member_split(struct fault_thread *t, struct client *c, uint64_t vpn,
			      page_entry_t e)
{
	const void *data;
	pool_handle_t handle;
	page_entry_t single;
	unsigned algo;
	int len;

	if (fault_decode_page(t, c, e, t->page) < 0)
		return false;
	len = policy_compress(t, c, t->page, &data, &algo);
	if (len <= 0 || !wb_pool_room(t->wb, c, (uint64_t)len) ||
	    pool_store(c->family->pool, data, (size_t)len, &handle) < 0)
		return false;
	single = pe_make(e, PAGE_STORED, pe_referenced(e), algo, (unsigned)len, handle);
	page_index_set(c->index, vpn, single);
	entry_pool_count(c, single, 1, true);
	entry_pool_release(c, e);
	return true;
}

void fault_unit_split_one(struct fault_thread *t)
{
	struct fault_unit_split s;
	struct client *c;

	if (!t->nr_unit_splits)
		return;
	s = t->unit_splits[--t->nr_unit_splits];
	c = fault_thread_client(t, s.key, false);
	if (!c || c->dead)
		return;
	fault_unit_cache_reset(t); /* objects were stored since it was filled */
	/* From the last: the first decode goes furthest (lz4 may stop at a page). */
	for (unsigned i = PE_UNIT_PAGES; i-- > 0;) {
		uint64_t vpn = s.first + i;
		page_entry_t e = page_index_get(c->index, vpn);

		/* Only STORED: one being written back goes alone anyway. */
		if (pe_state(e) != PAGE_STORED || !pe_unit(e) || pe_handle(e) != s.handle ||
		    pe_unit_page(e) != i)
			continue;
		if (!unit_member_split(t, c, vpn, e))
			break;
		client_stat(c, UZ_STAT_unit_split_pages, 1);
	}
}

/*
 * Put back the pages of the landed batch that must return from the ring.
 * When none is left the batch is over: requests waiting for it run and
 * reclaim may send the next one.
 */
void fault_client_batch_install(struct fault_thread *t, struct client *c)
{
	for (unsigned i = 0; i < c->batch_count && c->batch_pending_installs; i++) {
		struct evict_slot *s = &c->slots[i];
		page_entry_t e;
		int r;

		if (s->state != EVICT_SLOT_INSTALL)
			continue;
		if (s->discarded) {
			s->state = EVICT_SLOT_EMPTY;
			c->batch_pending_installs--;
			if (s->parked)
				fault_retry_add(t, c, s->vpn << UZ_PAGE_SHIFT, false);
			continue;
		}
		r = uffd_copy_page(c->uffd, s->vpn << UZ_PAGE_SHIFT,
				   c->ring + (size_t)i * UZ_PAGE_SIZE);
		if (r == -EAGAIN) {
			t->want_retry = true;
			continue;
		}
		e = page_index_get(c->index, s->vpn);
		if (r == 0 || r == -EEXIST) {
			if (r == -EEXIST)
				uffd_wake(c->uffd, s->vpn << UZ_PAGE_SHIFT, UZ_PAGE_SIZE);
			page_index_set(c->index, s->vpn, pe_make(e, PAGE_RESIDENT, true, 0, 0, 0));
			client_resident_add(c, 1);
		} else {
			/* The mapping is gone: so is the page. */
			uffd_wake(c->uffd, s->vpn << UZ_PAGE_SHIFT, UZ_PAGE_SIZE);
			page_index_set(c->index, s->vpn, pe_make(e, PAGE_NEVER, false, 0, 0, 0));
		}
		c->in_flight--;
		s->state = EVICT_SLOT_EMPTY;
		c->batch_pending_installs--;
	}
	if (c->batch_state == BATCH_LANDING && !c->batch_pending_installs) {
		c->batch_state = BATCH_IDLE;
		fault_client_run_requests(t, c);
	}
}

/*
 * A victim whose entry a REMOVE or UNMAP freed, or a REMAP moved, leaves
 * its sent address behind, and an mremap may have moved another page of
 * the client there before the agent got to it (MREMAP_FIXED onto memory
 * just unmapped: a program or an allocator reusing its address space).
 * The agent then moved *that* page into the slot, and dropping the slot
 * as the freed victim's, or storing it as the moved one's, loses it.  It
 * is told by what the sent address holds now: a hole (the agent took
 * what was there; faults at that address wait for this batch) whose entry
 * is IN_FLIGHT in another slot the agent found nothing at (that victim's
 * own sent address went with the mremap), or RESIDENT (a present page
 * moved there).  The slot's bytes are that page's: they go to the other
 * slot, or the slot becomes that page's.  A sent address that is mapped
 * now still holds what came there: the agent moved the victim before.
 */
static void evict_done_reassign(struct client *c, int32_t *status, unsigned count)
{
	struct uz_ring_status *ring_status = client_ring_status(c);

	for (unsigned i = 0; i < count; i++) {
		struct evict_slot *s = &c->slots[i];
		uint64_t at = s->sent_vpn;
		page_entry_t e;

		if (status[i] != 0 || (!s->discarded && s->vpn == at))
			continue;
		e = page_index_get(c->index, at);
		if (pe_state(e) != PAGE_IN_FLIGHT && pe_state(e) != PAGE_RESIDENT)
			continue;
		if (client_page_mapped(c, at) != 0)
			continue;
		if (pe_state(e) == PAGE_IN_FLIGHT) {
			unsigned j = (unsigned)(pe_payload(e) % UZ_EVICT_BATCH_MAX);
			struct evict_slot *o = &c->slots[j];

			if (j == i || j >= count || status[j] == 0 || o->discarded || o->vpn != at)
				continue;
			memcpy(c->ring + (size_t)j * UZ_PAGE_SIZE, c->ring + (size_t)i * UZ_PAGE_SIZE,
			       UZ_PAGE_SIZE);
			status[j] = 0;
			ring_status->status[j] = 0;
			/* Slot i's own victim, moved elsewhere by a REMAP, was not taken. */
			if (!s->discarded) {
				status[i] = -EAGAIN;
				ring_status->status[i] = -EAGAIN;
			}
		} else if (s->discarded) {
			page_index_set(c->index, at, pe_make(e, PAGE_IN_FLIGHT, false, 0, 0, i));
			client_resident_add(c, -1);
			c->in_flight++;
			s->discarded = false;
			s->vpn = at;
			store_batch(c->store)->vpn[i] = at; /* a successor settles it the same way */
		}
		client_stat(c, UZ_STAT_evict_reassigned_pages, 1);
	}
}

int fault_client_evict_done(struct fault_thread *t, struct client *c,
			    const struct uz_msg_evict_done *msg, size_t len)
{
	struct daemon *d = c->daemon;
	struct {
		struct uz_msg_evict_done done;
		int32_t status[UZ_EVICT_BATCH_MAX];
	} copy;
	const struct uz_msg_evict_done *m = &copy.done;

	if (len < offsetof(struct uz_msg_evict_done, status) || c->batch_state != BATCH_SENT ||
	    msg->batch != c->batch_id || msg->count != c->batch_count ||
	    msg->count > UZ_EVICT_BATCH_MAX ||
	    len != offsetof(struct uz_msg_evict_done, status) + (size_t)msg->count * sizeof(int32_t))
		return -EBADMSG;
	for (unsigned i = 0; i < msg->count; i++)
		if (msg->status[i] > 0 || msg->status[i] < -4095)
			return -EBADMSG;
	memcpy(&copy, msg, len);
	if (c->batch_stale)
		evict_done_reassign(c, copy.status, copy.done.count);

	(void)d;

	c->batch_state = BATCH_LANDING;
	c->batch_pending_installs = 0;
	c->batch_stale = 0;
	for (unsigned i = 0, unit_left = 0; i < m->count; i++) {
		struct evict_slot *s = &c->slots[i];
		int status = m->status[i];
		page_entry_t e;
		int mapped;

		/* The agent is done with the address: what faulted there is served now. */
		if (s->parked_sent)
			fault_retry_add(t, c, s->sent_vpn << UZ_PAGE_SHIFT, false);
		if (unit_left) {
			unit_left--; /* stored with the unit of a slot before */
			continue;
		}

		if (s->discarded) {
			/* REMOVE/UNMAP came first: the page reads as zeros now. */
			s->state = EVICT_SLOT_EMPTY;
			if (s->parked)
				fault_retry_add(t, c, s->vpn << UZ_PAGE_SHIFT, false);
			continue;
		}
		e = page_index_get(c->index, s->vpn);
		if (pe_state(e) != PAGE_IN_FLIGHT || pe_payload(e) != i) {
			s->state = EVICT_SLOT_EMPTY;
			continue;
		}
		if (status == 0) {
			int r = -ENOSPC;

			if (!s->parked) {
				/* Limits (global with hysteresis, per group): writeback.c. */
				if (wb_pool_accepting(t->wb, c)) {
					unsigned taken = fault_store_unit(t, c, m, i);

					if (taken) {
						unit_left = taken - 1;
						continue;
					}
					r = fault_store_page(t, c, s->vpn, e,
							     c->ring + (size_t)i * UZ_PAGE_SIZE);
				}
			}
			if (r == 0) {
				c->in_flight--;
				s->state = EVICT_SLOT_EMPTY;
			} else {
				/* Parked fault or store refused: back from the ring. */
				s->state = EVICT_SLOT_INSTALL;
				c->batch_pending_installs++;
			}
			continue;
		}

		client_stat(c, UZ_STAT_evict_failed_pages, 1);
		if (status == -EBUSY)
			client_stat(c, UZ_STAT_evict_shared_pages, 1);
		c->in_flight--;
		/*
		 * Not moved, says the agent.  Believe it only if the page is
		 * still where it was: an entry that turns RESIDENT over a hole
		 * would later be served zeros.  Absent pages are left
		 * untracked (NEVER): a concurrent munmap, mremap or DONTNEED
		 * took them, and its event is on its way; anything else would
		 * be a loss, counted apart.  ENOENT from a victim whose entry a
		 * REMAP moved (its sent address went with the mapping) says
		 * nothing about where it is now: the page tables do.  A present
		 * page left untracked would not be looked after when the agent
		 * next moves it from an address it was sent for another page.
		 */
		mapped = client_page_mapped(c, s->vpn);
		if (mapped == 0 || (status == -ENOENT && mapped < 0)) {
			if (status != -ENOENT)
				client_stat(c, UZ_STAT_evict_absent_pages, 1);
			page_index_set(c->index, s->vpn, pe_make(e, PAGE_NEVER, false, 0, 0, 0));
		} else {
			page_index_set(c->index, s->vpn,
				       pe_make(e, PAGE_RESIDENT, false, 0,
					       status == -EBUSY    ? FAULT_SHARED_MARK
					       : status == -EAGAIN ? 0 /* transient: a fork */
								   : FAULT_EVICT_BACKOFF,
					       0));
			client_resident_add(c, 1);
			if (status == -EBUSY)
				c->shared_resident++;
		}
		s->state = EVICT_SLOT_EMPTY;
		if (s->parked)
			fault_retry_add(t, c, s->vpn << UZ_PAGE_SHIFT, false);
	}
	fault_client_batch_install(t, c);
	return 0;
}
