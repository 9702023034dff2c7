// SPDX-License-Identifier: MIT
/*
 * Taking a client back after a daemon restart: it re-joined with the
 * index and the journal its store kept, and every entry is checked
 * against its page tables before its uffd is read.  A fork child taking
 * its parent's snapshot over is checked the same way.
 */
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "client/client.h"
#include "daemon.h"
#include "family/family.h"
#include "fault/fault-internal.h"
#include "fault/fork.h"
#include "fault/recover.h"
#include "fault/reclaim.h"
#include "fault/vmevent.h"
#include "index/index.h"
#include "pool/pool.h"
#include "protocol.h"
#include "stats/stats.h"
#include "store/store.h"
#include "swap/swapfile.h"
#include "uffd-compat.h"
#include "util.h"

struct recover_ctx {
	struct fault_thread *thread;
	struct client *client;
	struct pagemap_window pagemap;
	/* IN_FLIGHT entries of the batch the previous daemon had out, and its record */
	uint64_t in_flight_vpns[UZ_EVICT_BATCH_MAX];
	struct uz_store_batch record;
	bool shared; /* a fork child's snapshot: its objects are its parent's too */
	unsigned nr_in_flight;
	uint64_t recovered, lost;
};

/* Is the client's page at vpn mapped?  Unknown counts as mapped (never lose a page). */
static bool recover_page_mapped(struct recover_ctx *ctx, uint64_t vpn)
{
	uint64_t word;

	/*
	 * Cannot tell: not mapped.  That keeps what the entry names (a stale
	 * copy under a present page is never served: no fault comes for it),
	 * where "mapped" would release the only copy of a page that is not.
	 */
	if (!pagemap_word(ctx->client, &ctx->pagemap, vpn, &word))
		return false;
	return word & (PAGEMAP_PRESENT_BIT | PAGEMAP_SWAPPED_BIT);
}

/*
 * One entry of the recovered index, checked against the page tables: a page
 * that is mapped was put back (or never left), whatever its entry says;
 * evicted bytes the new daemon cannot reach become LOST (poisoned on
 * fault).  The LRU of the new daemon is empty, so every queued bit goes.
 */
static int recover_one(uint64_t vpn, page_entry_t *entry, void *userdata)
{
	struct recover_ctx *ctx = userdata;
	struct client *c = ctx->client;
	page_entry_t e = *entry & ~PE_QUEUED;
	struct swap *swap = __atomic_load_n(&c->daemon->swap, __ATOMIC_ACQUIRE);
	bool mapped = recover_page_mapped(ctx, vpn), stored, on_disk;

	if (pe_state(e) == PAGE_IN_FLIGHT) {
		/* Decided after the walk, from the batch record and the ring's status page. */
		if (ctx->nr_in_flight < UZ_EVICT_BATCH_MAX)
			ctx->in_flight_vpns[ctx->nr_in_flight++] = vpn;
		*entry = e;
		return 0;
	}
	stored = (pe_state(e) == PAGE_STORED || pe_state(e) == PAGE_WRITEBACK) &&
		 pool_refcount(c->family->pool, pe_handle(e)) > 0;
	on_disk = pe_state(e) == PAGE_ON_DISK && swap &&
		  swap_slot_refcount(swap, pe_payload(e)) > 0;
	if (mapped) {
		/*
		 * Put back (or never taken): whatever the entry says, the page
		 * is there.  A killed daemon had copied it in but not yet
		 * updated the entry: what the entry named is released now,
		 * after the index stops naming it (a kill in between leaks).
		 */
		*entry = pe_make(e, PAGE_RESIDENT, false, 0, 0, 0);
		page_index_set(c->index, vpn, *entry);
		client_resident_add(c, 1);
		if (stored) {
			/*
			 * Counted in the group and the daemon if this daemon
			 * made the snapshot, or another member recovered
			 * before counted it: the last reference takes it away.
			 */
			bool counted = ctx->shared || family_recovered_has(c->family, pe_handle(e));

			if (family_release(c->family, pe_handle(e)) && counted)
				family_count_bytes(c->family, c->group, -(int64_t)pe_object_len(e));
		}
		if (on_disk)
			(void)swap_slot_free(swap, pe_payload(e));
		return 0;
	}
	switch (pe_state(e)) {
	case PAGE_RESIDENT:
		e = 0; /* gone: dropped by the kernel (MADV_FREE) or unmapped */
		break;
	case PAGE_SAME_FILLED:
		client_stat(c, UZ_STAT_stored_pages, 1);
		client_stat(c, UZ_STAT_same_filled_pages, 1);
		ctx->recovered++;
		break;
	case PAGE_STORED:
	case PAGE_WRITEBACK:
		if (!stored) {
			e = pe_make(e, PAGE_LOST, false, 0, 0, 0);
			ctx->lost++;
			break;
		}
		/* In the family's arena: stored again (a write in flight is simply forgotten). */
		e = pe_make(e, PAGE_STORED, true, pe_algo(e), pe_len(e), pe_payload(e));
		entry_lru_push(c, vpn, &e);
		client_stat(c, UZ_STAT_stored_pages, 1);
		/*
		 * A shared object is counted by its group and the daemon once:
		 * a fork child's snapshot adds nothing to them, its parent
		 * counted it; after a restart the first of its referrers to
		 * be recovered counts it (the last release takes it away).
		 */
		if (ctx->shared) {
			entry_pool_count(c, e, 1, false);
		} else {
			int refs = pool_refcount(c->family->pool, pe_handle(e));
			bool first = refs <= 1 || family_recovered_first(c->family, pe_handle(e));

			entry_pool_count(c, e, 1, first);
		}
		ctx->recovered++;
		break;
	case PAGE_ON_DISK:
		if (!on_disk) {
			/* No swap file now, or the slot is not allocated in it: lost. */
			e = pe_make(e, PAGE_LOST, false, 0, 0, 0);
			ctx->lost++;
			break;
		}
		/* Still in the swap file (its record is checked when read); no read in flight. */
		e = pe_make(e, PAGE_ON_DISK, false, pe_algo(e), pe_len(e), pe_payload(e));
		client_stat(c, UZ_STAT_on_disk_pages, 1);
		client_stat(c, UZ_STAT_swap_bytes_on_disk,
			    (int64_t)swap_slot_disk_bytes(swap, pe_payload(e)));
		ctx->recovered++;
		break;
	default:
		break;
	}
	*entry = e;
	return 0;
}

/*
 * The victims of the batch the previous daemon had out.  The agent always
 * finishes a batch before it re-joins, so its status page in the ring is
 * final: a page it moved is in ring slot i and is stored now (or put back
 * from there when the pool refuses it); a page it did not move is where it
 * was, or gone (a concurrent munmap).
 */
static void recover_in_flight(struct recover_ctx *ctx)
{
	struct fault_thread *t = ctx->thread;
	struct client *c = ctx->client;
	/* A copy: storing pages below may grow the store and move its mapping. */
	const struct uz_store_batch *record = &ctx->record;
	const struct uz_ring_status *status = client_ring_status(c);
	uint32_t record_id, status_batch;
	bool answered;

	memcpy(&ctx->record, store_batch(c->store), sizeof(ctx->record));
	record_id = record->id;
	status_batch = __atomic_load_n(&status->batch, __ATOMIC_ACQUIRE);
	answered = record_id && status_batch == record_id && status->count == record->count &&
		   record->count <= UZ_EVICT_BATCH_MAX;

	c->batch_id = uz_max(record_id, status_batch);
	for (unsigned j = 0; j < ctx->nr_in_flight; j++) {
		uint64_t vpn = ctx->in_flight_vpns[j];
		page_entry_t e = page_index_get(c->index, vpn);
		uint64_t i = pe_payload(e);
		bool moved = answered && i < record->count && record->vpn[i] == vpn &&
			     status->status[i] == 0;

		if (moved && !recover_page_mapped(ctx, vpn)) {
			const uint8_t *bytes = c->ring + (size_t)i * UZ_PAGE_SIZE;

			if (fault_store_page(t, c, vpn, pe_make(e, PAGE_NEVER, false, 0, 0, 0),
					     bytes) == 0) {
				ctx->recovered++;
				continue;
			}
			/* Not storable now: it goes back from the ring, as after EVICT_DONE. */
			c->slots[i] = (struct evict_slot){.vpn = vpn, .state = EVICT_SLOT_INSTALL};
			page_index_set(c->index, vpn, pe_make(e, PAGE_IN_FLIGHT, false, 0, 0, i));
			c->batch_state = BATCH_LANDING;
			c->batch_count = uz_max(c->batch_count, (uint32_t)i + 1);
			c->batch_pending_installs++;
			c->in_flight++;
			continue;
		}
		if (recover_page_mapped(ctx, vpn)) {
			page_index_set(c->index, vpn, pe_make(e, PAGE_RESIDENT, false, 0, 0, 0));
			client_resident_add(c, 1);
		} else {
			/* Neither moved nor here: a munmap or DONTNEED took it. */
			page_index_set(c->index, vpn, 0);
		}
	}
}

/*
 * A client that re-joined with UZ_HELLO_RESUME: its store holds the index
 * the previous daemon left (checked by page_index_recover at the
 * handshake).  Before any new uffd message is read: apply the messages the
 * previous daemon read but did not apply (the journal), take the
 * registered regions from the kernel, check every entry against the page
 * tables, settle the batch in flight, and wake every thread waiting on a
 * fault whose message died with the previous daemon.
 */
void fault_client_recover(struct fault_thread *t, struct client *c)
{
	struct recover_ctx *ctx = calloc(1, sizeof(*ctx));
	struct uffd_msg *journal = store_journal(c->store);

	if (!ctx) {
		fault_client_kill(t, c, false);
		return;
	}
	ctx->thread = t;
	ctx->client = c;
	for (unsigned i = 0; i < UZ_STORE_JOURNAL_MSGS && !c->dead; i++) {
		struct uffd_msg m = journal[i];

		if (m.event == UFFD_EVENT_PAGEFAULT || m.event == 0)
			continue; /* faults are refaulted after the wake below */
		fault_client_handle_uffd_msg(t, c, &m);
		journal = store_journal(c->store);
	}
	memset(store_journal(c->store), 0, UZ_STORE_JOURNAL_MSGS * sizeof(struct uffd_msg));

	if (client_regions_from_kernel(c) < 0) {
		free(ctx);
		fault_client_kill(t, c, false);
		return;
	}
	page_index_walk(c->index, 0, VPN_MAX, recover_one, ctx);
	recover_in_flight(ctx);
	client_stat(c, UZ_STAT_recovered_clients, 1);
	client_stat(c, UZ_STAT_recovered_pages, (int64_t)ctx->recovered);
	client_stat(c, UZ_STAT_lost_pages, (int64_t)ctx->lost);
	for (unsigned i = 0; i < c->nr_regions; i++)
		uffd_wake(c->uffd, c->regions[i].start, c->regions[i].end - c->regions[i].start);
	c->resume = false;
	free(ctx);
	if (c->batch_state == BATCH_LANDING)
		fault_client_batch_install(t, c);
}

/*
 * A fork child joining with its snapshot: it takes the snapshot's store and
 * index over, and every entry is checked against its page tables as after
 * a restart (recover_one): a page it has (inherited present, copy on
 * write) is RESIDENT and its reference goes; a hole is served from the
 * shared entry.  Its regions come with the REGISTERs that follow.
 */
void fault_client_adopt_snapshot(struct fault_thread *t, struct client *c)
{
	struct recover_ctx *ctx = calloc(1, sizeof(*ctx));
	struct uz_store_header *h;
	/*
	 * A snapshot this daemon made: its objects are counted already.  One
	 * taken from the store after a restart is counted like a recovery.
	 */
	bool counted = c->claimed != NULL;

	if (c->claimed) {
		fork_snapshot_take_over(c->claimed, &c->store, &c->index);
		fork_snapshot_adopted(c->claimed);
		c->claimed = NULL;
	}
	if (!ctx || !c->index) {
		free(ctx);
		fault_client_kill(t, c, false);
		return;
	}
	h = store_header(c->store);
	h->owner_pid = (uint32_t)c->pid;
	h->owner_starttime = c->starttime;
	__atomic_store_n(&h->flags, h->flags & ~UZ_STORE_SNAPSHOT, __ATOMIC_RELEASE);
	ctx->thread = t;
	ctx->client = c;
	ctx->shared = counted;
	c->resume = true; /* entry_release counts nothing while the walk sets the gauges */
	page_index_walk(c->index, 0, VPN_MAX, recover_one, ctx);
	c->resume = false;
	client_stat(c, UZ_STAT_fork_shared_pages, (int64_t)ctx->recovered);
	client_stat(c, UZ_STAT_lost_pages, (int64_t)ctx->lost);
	c->from_snapshot = false;
	free(ctx);
}
