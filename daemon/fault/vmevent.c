// SPDX-License-Identifier: MIT
/*
 * The messages of a client's uffd: read in batches without blocking,
 * straight into the journal of the client's store (so that a killed
 * daemon's successor can apply what it read and did not apply), and
 * dispatched.  A PAGEFAULT is served (serve.c) or goes on the retry list;
 * the VM events are handled here.  REMOVE and UNMAP free the entries of
 * the range (an in-flight slot is marked discarded); the graveyard's own
 * REMOVE is ignored.  REMAP moves the entries (and in-flight slots
 * follow).  Between FORK_PREPARE and FORK_DONE they apply to the fork
 * snapshot too (fork.c), the socket read ahead first so that an event from
 * after the fork never does.
 */
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>
#include <unistd.h>

#include "client/client.h"
#include "family/family.h"
#include "fault/fault-internal.h"
#include "fault/fork.h"
#include "fault/request.h"
#include "fault/serve.h"
#include "fault/vmevent.h"
#include "fault/writeback.h"
#include "index/index.h"
#include "store/store.h"
#include "uffd-compat.h"
#include "util.h"

#define FAULT_UFFD_ROUNDS 8 /* reads per wake-up before looking at others */

/*
 * The bookkeeping of an entry that is going away (REMOVE, UNMAP, client
 * exit): pool object freed, gauges adjusted, in-flight slot discarded.
 */
static void entry_release(struct client *c, uint64_t vpn, page_entry_t entry)
{
	/*
	 * Replaying a killed daemon's journal (fault_client_recover): nothing is
	 * counted yet, and what the entry names belonged to that daemon.
	 */
	if (c->resume)
		return;
	switch (pe_state(entry)) {
	case PAGE_RESIDENT:
		client_resident_add(c, -1);
		break;
	case PAGE_IN_FLIGHT:
		c->slots[pe_payload(entry) % UZ_EVICT_BATCH_MAX].discarded = true;
		c->batch_stale++;
		c->in_flight--;
		break;
	case PAGE_WRITEBACK:
		wb_entry_release(c->thread->wb, c, vpn, entry);
		/* still in the pool */
		__attribute__((fallthrough));
	case PAGE_STORED:
		entry_pool_release(c, entry);
		client_stat(c, UZ_STAT_stored_pages, -1);
		break;
	case PAGE_ON_DISK:
		wb_entry_release(c->thread->wb, c, vpn, entry);
		break;
	case PAGE_SAME_FILLED:
		client_stat(c, UZ_STAT_stored_pages, -1);
		client_stat(c, UZ_STAT_same_filled_pages, -1);
		break;
	default:
		break;
	}
}

static int forget_one(uint64_t vpn, page_entry_t *entry, void *userdata)
{
	struct client *c = userdata;
	page_entry_t e = *entry;

	/* Forgotten first, released after: a kill in between only leaks. */
	page_index_set(c->index, vpn, 0);
	entry_release(c, vpn, e);
	*entry = 0;
	return 0;
}

/* Free every entry of [start, end) (REMOVE, UNMAP, UNREGISTER, exit). */
void fault_client_forget_range(struct client *c, uint64_t start, uint64_t end)
{
	uint64_t first = start >> UZ_PAGE_SHIFT, last;

	end = uz_min(end, (VPN_MAX + 1) << UZ_PAGE_SHIFT);
	if (start >= end)
		return;
	last = ((end + UZ_PAGE_SIZE - 1) >> UZ_PAGE_SHIFT) - 1;
	page_index_walk(c->index, first, last, forget_one, c);
}

struct remap_ctx {
	struct client *client;
	uint64_t from_vpn, to_vpn;
};

/*
 * Move one entry to its new address.  The source and destination of a
 * move never overlap (the kernel maps the destination elsewhere, or
 * unmaps what was there first), so entries can move one by one during the
 * walk of the source: nothing is collected, nothing allocated.
 */
static int remap_one(uint64_t vpn, page_entry_t *entry, void *userdata)
{
	struct remap_ctx *ctx = userdata;
	struct client *c = ctx->client;
	uint64_t to = ctx->to_vpn + (vpn - ctx->from_vpn);
	page_entry_t old = page_index_get(c->index, to);

	if (pe_state(*entry) == PAGE_IN_FLIGHT) {
		c->slots[pe_payload(*entry) % UZ_EVICT_BATCH_MAX].vpn = to;
		c->batch_stale++;
		store_batch(c->store)->vpn[pe_payload(*entry) % UZ_EVICT_BATCH_MAX] = to;
	}
	wb_entry_moved(c->thread->wb, c, vpn, to, *entry);
	if (page_index_set(c->index, to, *entry) < 0)
		entry_release(c, to, *entry); /* out of memory: the page is lost */
	if (old)
		entry_release(c, to, old); /* overwritten above: released after, as always */
	*entry = 0;
	return 0;
}

static void client_remap(struct client *c, uint64_t from, uint64_t to, uint64_t len)
{
	struct remap_ctx ctx = {.client = c, .from_vpn = from >> UZ_PAGE_SHIFT,
				.to_vpn = to >> UZ_PAGE_SHIFT};
	struct client_region parts[64];
	unsigned nr_parts = 0;

	if (!uz_page_aligned(from) || !uz_page_aligned(to) || !len || from + len < from ||
	    to + len < to || ((from + len - 1) >> UZ_PAGE_SHIFT) > VPN_MAX ||
	    ((to + len - 1) >> UZ_PAGE_SHIFT) > VPN_MAX)
		return;
	len = (len + UZ_PAGE_SIZE - 1) & UZ_PAGE_MASK;
	if (from < to + len && to < from + len)
		return; /* overlapping ranges: not something mremap produces */

	page_index_walk(c->index, from >> UZ_PAGE_SHIFT, ((from + len) >> UZ_PAGE_SHIFT) - 1,
			remap_one, &ctx);

	/* The registered regions follow the mapping. */
	for (const struct client_region *r = client_region_find(c, from);
	     r && r < c->regions + c->nr_regions && r->start < from + len && nr_parts < 64; r++) {
		parts[nr_parts].start = uz_max(r->start, from) - from + to;
		parts[nr_parts].end = uz_min(r->end, from + len) - from + to;
		nr_parts++;
	}
	client_region_remove(c, from, from + len);
	for (unsigned i = 0; i < nr_parts; i++)
		(void)client_region_add(c, parts[i].start, parts[i].end);

	/* A thread parked on the old address must retry its access. */
	uffd_wake(c->uffd, from, len);
}

/*
 * Before a REMOVE, UNMAP or REMAP of a parent whose fork snapshot is open:
 * was the fork already done?  Only an event from before the fork belongs
 * in the child's snapshot.  The parent sends FORK_DONE before its fork()
 * returns, so for any event its program made after the fork, FORK_DONE is
 * in the socket by the time the event is read.  The socket is read ahead
 * for it (request.c), nothing handled: a message handled now (EVICT_DONE
 * putting pages back, a request giving them back) would act on addresses
 * that the rest of this batch of events, a REMAP, may have moved.
 * Without this, a parent that dropped pages right after fork() while this
 * thread was slow to read its socket took them from the child as well:
 * the child's holes there read zeros.
 */
static bool fork_snapshot_still_open(struct client *c)
{
	if (!c->fork_snapshot || !fork_snapshot_open(c->fork_snapshot))
		return false;
	return c->resume || c->sock_fd < 0 || !fault_client_fork_done_queued(c);
}

/* One message from a client's uffd (read now, or left in the journal by a killed daemon). */
void fault_client_handle_uffd_msg(struct fault_thread *t, struct client *c,
				  const struct uffd_msg *m)
{
	bool open;

	switch (m->event) {
	case UFFD_EVENT_PAGEFAULT: {
		uint64_t addr = m->arg.pagefault.address & UZ_PAGE_MASK;
		bool write = m->arg.pagefault.flags & UFFD_PAGEFAULT_FLAG_WRITE;

		c->faults++;
		if (fault_serve(t, c, addr, write) == -EAGAIN)
			fault_retry_add(t, c, addr, write);
		break;
	}
	case UFFD_EVENT_REMOVE:
		if (m->arg.remove.start >= c->graveyard_start &&
		    m->arg.remove.end <= c->graveyard_end)
			break; /* the agent dropping its graveyard */
		open = fork_snapshot_still_open(c);
		fault_client_forget_range(c, m->arg.remove.start, m->arg.remove.end);
		if (open)
			fork_snapshot_forget(c->fork_snapshot, m->arg.remove.start, m->arg.remove.end);
		break;
	case UFFD_EVENT_UNMAP:
		open = fork_snapshot_still_open(c);
		fault_client_forget_range(c, m->arg.remove.start, m->arg.remove.end);
		client_region_remove(c, m->arg.remove.start & UZ_PAGE_MASK,
				     (m->arg.remove.end + UZ_PAGE_SIZE - 1) & UZ_PAGE_MASK);
		if (open)
			fork_snapshot_forget(c->fork_snapshot, m->arg.remove.start, m->arg.remove.end);
		break;
	case UFFD_EVENT_REMAP:
		open = fork_snapshot_still_open(c);
		client_remap(c, m->arg.remap.from, m->arg.remap.to, m->arg.remap.len);
		if (open)
			fork_snapshot_remap(c->fork_snapshot, m->arg.remap.from, m->arg.remap.to,
					    m->arg.remap.len);
		break;
	case UFFD_EVENT_FORK:
		/* Not requested by the protocol; a child's uffd we never serve. */
		close((int)m->arg.fork.ufd);
		break;
	default:
		break;
	}
}

/*
 * Read the client's uffd straight into the journal of its store, and zero
 * each message once it is applied: a message this daemon read but did not
 * apply before being killed is still there for the next one
 * (fault_client_recover).  The store may move while a message is handled (an
 * index cell allocation grows it), so each message is copied out first and
 * the journal is looked up again to zero it.
 */
void fault_client_handle_uffd(struct fault_thread *t, struct client *c)
{
	const size_t capacity = UZ_STORE_JOURNAL_MSGS * sizeof(struct uffd_msg);

	for (int round = 0; round < FAULT_UFFD_ROUNDS && !c->dead; round++) {
		ssize_t n = read(c->uffd, store_journal(c->store), capacity);

		if (n < 0) {
			if (errno == EAGAIN)
				break;
			if (errno == EINTR)
				continue;
			fault_client_kill(t, c, true);
			return;
		}
		if (n == 0 || n % sizeof(struct uffd_msg)) {
			fault_client_kill(t, c, true);
			return;
		}
		for (size_t i = 0; i < (size_t)n / sizeof(struct uffd_msg) && !c->dead; i++) {
			struct uffd_msg m = ((struct uffd_msg *)store_journal(c->store))[i];

			fault_client_handle_uffd_msg(t, c, &m);
			memset((struct uffd_msg *)store_journal(c->store) + i, 0, sizeof(m));
		}
		if ((size_t)n < capacity)
			break;
	}
}
