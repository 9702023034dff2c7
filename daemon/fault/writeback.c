// SPDX-License-Identifier: MIT
/*
 * The writeback tier: what a fault thread does with the swap file.
 *
 * Each fault thread has a struct wb: one LRU per group (cgroup) of
 * its clients (references (client key, vpn), so a pop always names one
 * of this thread's clients — the ownership rule of daemon/fault holds:
 * nothing but the owning thread touches a client's index), a swap_io (its
 * io_uring ring, whose eventfd is in the thread's epoll), a few write
 * batches and a table of reads in flight.
 *
 * The shrinker.  A group whose pool bytes exceed WB_START_PERCENT of its
 * PoolMax writes back from its own LRU (never another group's pages);
 * when the whole pool exceeds WB_START_PERCENT of [Pool] MaxSize, every
 * LRU of the thread gives its share, in proportion of its length; a
 * shrink asked for a group (fault_thread_request_shrink, uzswapctl
 * shrink) walks that group's LRU.  Each walk is second chance as lru.h
 * describes: an entry is stored with its referenced bit set; the first
 * pass clears it and rotates the reference (second_chance_rotations); the
 * second pass takes it.  A
 * taken entry's compressed bytes are copied into a batch (swap_io_write
 * copies them again into aligned buffers, so the staging area is reused
 * at once), the entry becomes PAGE_WRITEBACK — still in the pool, so a
 * fault on it is served from the pool and the write result is then
 * ignored — and when the batch completes each entry becomes PAGE_ON_DISK
 * with its slot, and the pool object is freed.  Written bytes are the
 * compressed bytes (granule padded).  A requested shrink is bounded by
 * lru_shrinker_count() of the group's LRU: disk swapins since the last
 * count are subtracted, and the count is scaled by the compression ratio;
 * it gives up after twice round the ring.
 *
 * Accepting stores.  Over the pool limit new stores are refused
 * (pool_limit_hit; reject_reclaim_fail too when the swap file is full)
 * until usage falls below the accept threshold (WB_ACCEPT_PERCENT of the
 * limit): the refused page goes back to the client from the ring, as any
 * store failure, and stays resident.  With writeback off (no swap file,
 * or policy.writeback false) this is all that happens: pages stay
 * resident, never lost.
 *
 * Reads.  A fault on an ON_DISK page takes a read context, marks the
 * entry (PE_REFERENCED means "read in flight" on an ON_DISK entry: it has
 * no other use there) and submits swap_io_read; the faulting thread stays
 * parked in the kernel while the fault thread serves others.  On
 * completion the bytes are decompressed into the context's page and put
 * in with UFFDIO_COPY (EAGAIN: kept, retried from the thread's retry
 * pass), the slot is freed, disk_swapins counted and the disk latency
 * recorded apart from pool faults.  Disk faults of a client in address
 * order also read the next WB_READAHEAD ON_DISK pages (readahead,
 * installed unreferenced).  Every record is written with the client's
 * swap owner token and the page's vpn, and a read names the token it
 * expects.  A read error, or a record that does not verify (-EBADMSG:
 * bit rot, a stale or forged slot), never hands wrong data: the page is
 * poisoned (UFFDIO_POISON), so the access ends in SIGBUS; the entry
 * becomes NEVER (a later MADV_DONTNEED makes it zeros, as for any
 * poisoned page), io_errors or swap_checksum_errors counted, and the
 * first of each kind noted for the main thread to log
 * (daemon_note_page_error).
 *
 * Freeing.  An entry freed while its I/O is in flight (munmap, DONTNEED,
 * exit, unregister) marks the write item or read context cancelled; the
 * completion frees the slot (docs/SWAP.md: a slot is never freed under
 * its own I/O).  An entry freed while idle on disk frees its slot at once.
 *
 * Failures.  swap_io_write refusing a batch (-ENOSPC: the file is full)
 * leaves every entry STORED and backs the shrinker off for WB_BACKOFF_MS;
 * a failed write puts that entry back STORED (and on the LRU) and backs
 * off too.  Both are counted.
 *
 * Compaction.  Exclusive loads free pool objects at random, leaving
 * chunks sparse.  Every WB_COMPACT_PERIOD_MS, when the pool maps more than
 * WB_COMPACT_RATIO_PCT of its live bytes, the thread marks the sparsest
 * chunks under WB_COMPACT_MIN_FILL, as many as the rest of their class
 * can absorb (pool_compact_begin), and walks its clients' indexes, a bounded number
 * of entries per loop iteration, copying out the objects that
 * pool_handle_evacuating() flags (pool_migrate_copy, then the entry is
 * switched to the copy and the original released).
 *
 * Locks: none of its own but the shrink request (an atomic).  The LRU,
 * pool, swap and stats are thread-safe objects; everything else belongs
 * to the thread.  Nothing here logs on the fault path: read failures are
 * noted in struct daemon and logged by the main thread.
 */
#include <errno.h>
#include <pthread.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>

#include "client/client.h"
#include "compress/compress.h"
#include "daemon.h"
#include "fault/fault.h"
#include "fault/fault-internal.h"
#include "fault/serve.h"
#include "fault/writeback.h"
#include "group/group.h"
#include "lru/lru.h"
#include "family/family.h"
#include "pool/pool.h"
#include "swap/swapfile.h"
#include "uffd-compat.h"
#include "util.h"

#define WB_BATCH_MAX	     64 /* objects per swap_io_write */
#define WB_BATCHES	     4	/* write batches in flight per thread */
#define WB_READS	     64 /* disk reads in flight per thread */
#define WB_READAHEAD	     8	/* pages read ahead of a sequential disk fault */
#define WB_START_PERCENT     90 /* writeback starts above this much of the pool limit */
#define WB_TARGET_PERCENT    80 /* ... and writes back down to this */
#define WB_ACCEPT_PERCENT    90 /* refused stores resume below this (accept threshold) */
#define WB_BACKOFF_MS	     50 /* after a full file or a write error */
#define WB_COMPACT_PERIOD_MS 1000
#define WB_COMPACT_RATIO_PCT 120
#define WB_COMPACT_MIN_FILL  85 /* chunks fuller than this are not evacuated */
#define WB_COMPACT_STEP	     4096 /* entries looked at per loop iteration */
#define WB_SWAP_LOCK_WAIT_MS 5000 /* for a dead predecessor to let go of the swap file */
#define VPN_MASK	     ((1ULL << PAGE_INDEX_VPN_BITS) - 1)

struct wb_item {
	uint64_t key, vpn;
	page_entry_t entry; /* the WRITEBACK entry: its object and share (a unit member's too) */
	unsigned len;	    /* bytes written, ... */
	unsigned algo;	    /* ... by this algorithm (a unit member is compressed again alone) */
	bool cancelled;
};

struct wb_batch {
	struct wb *wb;
	bool busy;
	unsigned count;
	uint64_t bytes;
	struct wb_item items[WB_BATCH_MAX];
	struct swap_object objs[WB_BATCH_MAX];
};

struct wb_read {
	struct wb *wb;
	bool busy;	 /* context taken */
	bool inflight;	 /* I/O submitted, not completed */
	bool ready;	 /* completed, page to install */
	bool failed;	 /* read or decompress error: poison */
	bool bad_record; /* failed because the record did not verify (-EBADMSG) */
	bool cancelled;	 /* the entry went away: free the slot, install nothing */
	bool detached;	 /* the client left with its state: install nothing, keep the slot */
	bool from_fault;
	uint64_t key, vpn, slot;
	uint64_t owner; /* the client's swap owner token the record must carry */
	unsigned algo, len;
	uint64_t start_ns;
	uint8_t *buf;  /* compressed bytes (4 KiB) */
	uint8_t *page; /* decompressed page (4 KiB, page aligned) */
};

/*
 * The LRU of one group on this thread.  Created on the first store of a
 * page of that group, kept until the thread ends (groups are bounded by
 * GROUPS_MAX and never leave the registry).  pending: bytes of a shrink
 * request (uzswapctl shrink) still to write back; scan_budget bounds how
 * far the request may walk before it gives up (all referenced twice).
 */
struct wb_lru {
	struct wb_lru *next;
	struct uz_group *group; /* a reference */
	struct lru *lru;
	uint64_t pending;
	uint64_t scan_budget;
	uint64_t target;   /* this shrinker run */
	uint64_t pool_max; /* this shrinker run: the group's PoolMax (UZ_UNLIMITED: none) */
};

#define WB_REQUESTS 16 /* shrink requests queued per thread */

struct wb_request {
	struct uz_group *group; /* a reference; NULL: any */
	uint64_t bytes;
};

struct wb {
	struct fault_thread *thread;
	struct daemon *daemon;
	struct wb_lru *lrus; /* one per group of this thread's clients */
	struct wb_lru *last; /* the one used last (lookup cache) */
	struct swap_io *io;  /* NULL without a swap file */
	struct compressor *decomp;
	uint8_t *staging; /* WB_BATCH_MAX pages of compressed bytes */
	struct wb_batch batches[WB_BATCHES];
	unsigned batches_busy;
	uint64_t inflight_bytes; /* compressed bytes in batches in flight */
	struct wb_read reads[WB_READS];
	unsigned reads_busy;
	uint64_t backoff_until;	 /* usec: shrinker sits out until then */
	uint64_t readahead_key;	 /* client of the last disk fault */
	uint64_t readahead_next; /* the vpn a sequential next disk fault would have */
	bool swap_full;
	bool attach_failed;
	bool want;		       /* the last shrinker run still had work: poll again soon */
	pthread_mutex_t requests_lock; /* guards requests, nr_requests (any thread) */
	struct wb_request requests[WB_REQUESTS];
	unsigned nr_requests;
	/* compaction */
	bool compacting;
	uint64_t compact_next; /* usec */
	uint64_t compact_key;  /* client being walked */
	uint64_t compact_vpn;  /* next vpn of it */
	uint64_t compact_epoch; /* round number: marks the families already looked at */
};

static uint64_t pool_usage_bytes(struct daemon *d)
{
	int64_t v = stats_read(d->stats, UZ_STAT_compressed_bytes);

	return v > 0 ? (uint64_t)v : 0;
}

int wb_new(struct wb **out, struct fault_thread *thread, struct daemon *d)
{
	struct wb *wb = calloc(1, sizeof(*wb));
	int r;

	if (!wb)
		return -ENOMEM;
	wb->thread = thread;
	wb->daemon = d;
	pthread_mutex_init(&wb->requests_lock, NULL);
	r = compressor_new(&wb->decomp, d->policy.algo, d->policy.level);
	if (r < 0)
		goto fail;
	for (unsigned i = 0; i < WB_BATCHES; i++)
		wb->batches[i].wb = wb;
	for (unsigned i = 0; i < WB_READS; i++)
		wb->reads[i].wb = wb;
	wb->compact_next = uz_now_usec() + WB_COMPACT_PERIOD_MS * 1000;
	*out = wb;
	return 0;
fail:
	wb_free(wb);
	return r;
}

int wb_attach(struct wb *wb)
{
	struct swap *swap = __atomic_load_n(&wb->daemon->swap, __ATOMIC_ACQUIRE);
	int r;

	if (wb->io || !swap || wb->attach_failed)
		return -1;
	wb->attach_failed = true; /* tried once */
	wb->staging = aligned_alloc(UZ_PAGE_SIZE, (size_t)WB_BATCH_MAX * UZ_PAGE_SIZE);
	if (!wb->staging)
		return -1;
	for (unsigned i = 0; i < WB_READS; i++) {
		wb->reads[i].buf = aligned_alloc(UZ_PAGE_SIZE, UZ_PAGE_SIZE);
		wb->reads[i].page = aligned_alloc(UZ_PAGE_SIZE, UZ_PAGE_SIZE);
		if (!wb->reads[i].buf || !wb->reads[i].page)
			return -1;
	}
	r = swap_io_new(&wb->io, swap);
	if (r < 0)
		return -1;
	wb->attach_failed = false;
	return swap_io_fd(wb->io);
}

struct wb *wb_free(struct wb *wb)
{
	if (!wb)
		return NULL;
	/* Completions run here: every client is gone, so they only free slots. */
	wb->io = swap_io_free(wb->io);
	for (unsigned i = 0; i < WB_READS; i++) {
		struct wb_read *rd = &wb->reads[i];

		if (rd->busy && wb->daemon->swap)
			(void)swap_slot_free(wb->daemon->swap, rd->slot);
		free(rd->buf);
		free(rd->page);
	}
	free(wb->staging);
	compressor_free(wb->decomp);
	while (wb->lrus) {
		struct wb_lru *wl = wb->lrus;

		wb->lrus = wl->next;
		lru_free(wl->lru);
		group_unref(wl->group);
		free(wl);
	}
	for (unsigned i = 0; i < wb->nr_requests; i++)
		group_unref(wb->requests[i].group);
	pthread_mutex_destroy(&wb->requests_lock);
	free(wb);
	return NULL;
}

void wb_reap(struct wb *wb)
{
	if (wb->io)
		(void)swap_io_reap(wb->io);
}

/* The LRU of a group on this thread, or NULL. */
static struct wb_lru *wb_lru_find(struct wb *wb, struct uz_group *group)
{
	if (wb->last && wb->last->group == group)
		return wb->last;
	for (struct wb_lru *wl = wb->lrus; wl; wl = wl->next)
		if (wl->group == group)
			return wb->last = wl;
	return NULL;
}

/* The LRU of a group on this thread, created on first use (NULL: out of memory). */
static struct wb_lru *wb_lru_of(struct wb *wb, struct uz_group *group)
{
	struct wb_lru *wl = wb_lru_find(wb, group);

	if (wl)
		return wl;
	wl = calloc(1, sizeof(*wl));
	if (!wl)
		return NULL;
	if (lru_new(&wl->lru) < 0) {
		free(wl);
		return NULL;
	}
	wl->group = group_ref(group);
	wl->next = wb->lrus;
	wb->lrus = wl;
	return wb->last = wl;
}

void wb_lru_push(struct wb *wb, struct client *c, uint64_t vpn, page_entry_t *entry)
{
	struct wb_lru *wl;

	if (pe_queued(*entry))
		return;
	wl = wb_lru_of(wb, c->group);
	if (wl && lru_push(wl->lru, c->key << PAGE_INDEX_VPN_BITS | vpn) == 0)
		*entry |= PE_QUEUED;
}

/* ---------------------------------------------------------------------------
 * Reads
 */

static struct wb_read *read_find(struct wb *wb, uint64_t key, uint64_t vpn)
{
	for (unsigned i = 0; i < WB_READS; i++) {
		struct wb_read *rd = &wb->reads[i];

		if (rd->busy && !rd->cancelled && rd->key == key && rd->vpn == vpn)
			return rd;
	}
	return NULL;
}

static void read_put(struct wb_read *rd)
{
	rd->busy = rd->inflight = rd->ready = rd->failed = rd->bad_record = rd->cancelled = false;
	rd->detached = false;
	rd->wb->reads_busy--;
}

/* Put a completed read into the client.  -EAGAIN: keep it, retry later. */
static int read_install(struct wb *wb, struct wb_read *rd)
{
	struct daemon *d = wb->daemon;
	struct client *c = fault_thread_client(wb->thread, rd->key, true);
	uint64_t addr = rd->vpn << UZ_PAGE_SHIFT;
	page_entry_t e;
	int r = 0;

	if (rd->detached) {
		read_put(rd); /* its entry still names the slot, in the client's store */
		return 0;
	}
	if (!c) {
		/* Cannot happen (the client's exit cancels), but never leak the slot. */
		(void)swap_slot_free(d->swap, rd->slot);
		read_put(rd);
		return 0;
	}
	if (!c->gone) {
		if (rd->failed) {
			struct uffdio_poison poison = {.range = {addr, UZ_PAGE_SIZE}, .mode = 0};

			r = ioctl(c->uffd, UFFDIO_POISON, &poison) == 0 ? 0 : -errno;
		} else {
			struct uffdio_copy copy = {
			    .dst = addr, .src = (uint64_t)(uintptr_t)rd->page, .len = UZ_PAGE_SIZE};

			r = ioctl(c->uffd, UFFDIO_COPY, &copy) == 0 ? 0 : -errno;
		}
		if (r == -EAGAIN) {
			fault_thread_want_retry(wb->thread);
			return -EAGAIN;
		}
		if (r == -EEXIST || r < 0) {
			struct uffdio_range range = {.start = addr, .len = UZ_PAGE_SIZE};

			(void)ioctl(c->uffd, UFFDIO_WAKE, &range);
		}
	} else {
		r = -ESRCH;
	}

	/*
	 * The entry stops naming the slot before the slot is freed (the
	 * caller's rule in swapfile.h: a kill in between leaks the slot, it
	 * never frees one an entry still names).
	 */
	e = page_index_get(c->index, rd->vpn);
	if (rd->failed) {
		/* Counted here, logged once by the main thread (the fault path never logs). */
		client_stat(c, rd->bad_record ? UZ_STAT_swap_checksum_errors : UZ_STAT_io_errors,
			    1);
		daemon_note_page_error(d,
				       rd->bad_record ? UZ_PAGE_ERROR_SWAP_CHECKSUM : UZ_PAGE_ERROR_SWAP_READ,
				       (int)c->pid, addr);
		page_index_set(c->index, rd->vpn, pe_make(e, PAGE_NEVER, false, 0, 0, 0));
	} else if (r == 0 || r == -EEXIST) {
		/* A page read ahead is not referenced yet: the first to go if unused. */
		page_index_set(c->index, rd->vpn,
			       pe_make(e, PAGE_RESIDENT, rd->from_fault, 0, 0, 0));
		client_resident_add(c, 1);
		client_stat(c, UZ_STAT_disk_swapins, 1);
		if (rd->from_fault) {
			struct wb_lru *wl = wb_lru_of(wb, c->group);

			if (wl)
				lru_note_disk_swapin(wl->lru);
		}
		if (rd->from_fault && d->disk_fault_latency)
			latency_hist_record(d->disk_fault_latency, uz_now_nsec() - rd->start_ns);
	} else {
		/* The mapping (or the process) is gone: so is the page. */
		page_index_set(c->index, rd->vpn, pe_make(e, PAGE_NEVER, false, 0, 0, 0));
	}
	client_stat(c, UZ_STAT_swap_bytes_on_disk,
		    -(int64_t)swap_slot_disk_bytes(d->swap, rd->slot));
	(void)swap_slot_free(d->swap, rd->slot);
	client_stat(c, UZ_STAT_on_disk_pages, -1);
	read_put(rd);
	fault_client_resume(wb->thread, c);
	return 0;
}

/*
 * The record's vpn is not checked: an mremap since the write moved the
 * entry (rd->vpn follows it) but not the record.  The owner token and
 * the checksum are what tie the bytes to this client.
 */
static void read_done(int result, const void *data, size_t len, uint64_t vpn, void *userdata)
{
	struct wb_read *rd = userdata;
	struct wb *wb = rd->wb;

	rd->inflight = false;
	if (rd->detached) {
		read_put(rd);
		return;
	}
	if (rd->cancelled) {
		(void)swap_slot_free(wb->daemon->swap, rd->slot);
		read_put(rd);
		return;
	}
	if (result < 0) {
		rd->failed = true;
		rd->bad_record = result == -EBADMSG;
	} else if (rd->algo == COMPRESSOR_RAW) {
		if (rd->len == UZ_PAGE_SIZE)
			memcpy(rd->page, rd->buf, UZ_PAGE_SIZE);
		else
			rd->failed = true;
	} else if (compressor_decompress(wb->decomp, rd->algo, rd->buf, rd->len, rd->page) < 0) {
		rd->failed = true;
	}
	rd->ready = true;
	(void)read_install(wb, rd);
}

/* Start the read of an ON_DISK entry.  -EAGAIN: no context free, or the ring refused. */
static int read_start(struct wb *wb, struct client *c, uint64_t vpn, page_entry_t e,
		      bool from_fault)
{
	struct wb_read *rd = NULL;
	int r;

	for (unsigned i = 0; i < WB_READS; i++)
		if (!wb->reads[i].busy) {
			rd = &wb->reads[i];
			break;
		}
	if (!rd)
		return -EAGAIN;
	rd->busy = true;
	rd->inflight = true;
	rd->ready = rd->failed = rd->bad_record = rd->cancelled = false;
	rd->key = c->key;
	rd->owner = c->swap_owner;
	rd->vpn = vpn;
	rd->slot = pe_payload(e);
	rd->algo = pe_algo(e);
	rd->len = pe_len(e);
	rd->from_fault = from_fault;
	rd->start_ns = uz_now_nsec();
	wb->reads_busy++;
	r = swap_io_read(wb->io, rd->slot, rd->len, rd->owner, rd->buf, read_done, rd);
	if (r < 0) {
		read_put(rd);
		return -EAGAIN;
	}
	page_index_set(c->index, vpn, e | PE_REFERENCED);
	return 0;
}

int wb_fault(struct wb *wb, struct client *c, uint64_t vpn, page_entry_t e)
{
	unsigned n = 0;
	int r;

	if (pe_referenced(e))
		return 0; /* read in flight: its UFFDIO_COPY wakes this fault too */
	if (!wb->io)
		return -EIO;
	r = read_start(wb, c, vpn, e, true);
	if (r < 0)
		return r;
	/*
	 * Readahead, when disk faults of this client come in address order
	 * (the kernel's swap readahead, without its hit-rate heuristics): the
	 * next ON_DISK pages are read and installed too, so a sequential pass
	 * does not wait for one disk read per page.  Never more than half the
	 * read contexts, so faults always find one.
	 */
	if (wb->readahead_key == c->key && vpn == wb->readahead_next) {
		while (n < WB_READAHEAD && wb->reads_busy < WB_READS / 2) {
			page_entry_t next = page_index_get(c->index, vpn + n + 1);

			if (pe_state(next) != PAGE_ON_DISK || pe_referenced(next) ||
			    read_start(wb, c, vpn + n + 1, next, false) < 0)
				break;
			n++;
		}
	}
	wb->readahead_key = c->key;
	wb->readahead_next = vpn + n + 1;
	return 0;
}

bool wb_retry(struct wb *wb)
{
	bool waiting = false;

	for (unsigned i = 0; i < WB_READS; i++) {
		struct wb_read *rd = &wb->reads[i];

		if (rd->busy && rd->ready && read_install(wb, rd) == -EAGAIN)
			waiting = true;
	}
	return waiting;
}

/* ---------------------------------------------------------------------------
 * Entries going away or moving
 */

static struct wb_item *item_find(struct wb *wb, uint64_t key, uint64_t vpn)
{
	for (unsigned b = 0; b < WB_BATCHES; b++) {
		struct wb_batch *batch = &wb->batches[b];

		if (!batch->busy)
			continue;
		for (unsigned i = 0; i < batch->count; i++) {
			struct wb_item *it = &batch->items[i];

			if (!it->cancelled && it->key == key && it->vpn == vpn)
				return it;
		}
	}
	return NULL;
}

void wb_writeback_cancel(struct wb *wb, struct client *c, uint64_t vpn)
{
	struct wb_item *it = item_find(wb, c->key, vpn);

	if (it)
		it->cancelled = true;
}

void wb_entry_release(struct wb *wb, struct client *c, uint64_t vpn, page_entry_t e)
{
	struct wb_read *rd;

	switch (pe_state(e)) {
	case PAGE_WRITEBACK:
		wb_writeback_cancel(wb, c, vpn);
		break;
	case PAGE_ON_DISK:
		client_stat(c, UZ_STAT_on_disk_pages, -1);
		client_stat(c, UZ_STAT_swap_bytes_on_disk,
			    -(int64_t)swap_slot_disk_bytes(wb->daemon->swap, pe_payload(e)));
		rd = pe_referenced(e) ? read_find(wb, c->key, vpn) : NULL;
		if (!rd) {
			(void)swap_slot_free(wb->daemon->swap, pe_payload(e));
		} else if (rd->inflight) {
			rd->cancelled = true; /* read_done frees the slot */
		} else {
			(void)swap_slot_free(wb->daemon->swap, rd->slot);
			read_put(rd);
		}
		break;
	default:
		break;
	}
}

void wb_client_detach(struct wb *wb, struct client *c)
{
	/* Its LRU references are stale now: let a full LRU drop them (lru_forget_owner). */
	for (struct wb_lru *wl = wb->lrus; wl; wl = wl->next)
		lru_forget_owner(wl->lru, c->key);
	for (unsigned i = 0; i < WB_READS; i++) {
		struct wb_read *rd = &wb->reads[i];

		if (!rd->busy || rd->key != c->key)
			continue;
		if (rd->inflight)
			rd->detached = true; /* read_done lets it go */
		else
			read_put(rd);
	}
	for (unsigned b = 0; b < WB_BATCHES; b++) {
		struct wb_batch *batch = &wb->batches[b];

		if (!batch->busy)
			continue;
		/* Its entries are still WRITEBACK, in the pool: the slots written are nobody's. */
		for (unsigned i = 0; i < batch->count; i++)
			if (batch->items[i].key == c->key)
				batch->items[i].cancelled = true;
	}
}

void wb_entry_moved(struct wb *wb, struct client *c, uint64_t old_vpn, uint64_t new_vpn,
		    page_entry_t e)
{
	if (pe_state(e) == PAGE_WRITEBACK) {
		struct wb_item *it = item_find(wb, c->key, old_vpn);

		if (it)
			it->vpn = new_vpn;
	} else if (pe_state(e) == PAGE_ON_DISK && pe_referenced(e)) {
		struct wb_read *rd = read_find(wb, c->key, old_vpn);

		if (rd)
			rd->vpn = new_vpn;
	}
}

/* ---------------------------------------------------------------------------
 * Accepting stores
 */

bool wb_pool_room(struct wb *wb, struct client *c, uint64_t bytes)
{
	struct daemon *d = wb->daemon;
	uint64_t limit = d->pool_max_size;

	if (c->policy.pool_max != UZ_UNLIMITED &&
	    group_pool_bytes(c->group) + bytes > c->policy.pool_max)
		return false;
	return limit == UZ_UNLIMITED || pool_usage_bytes(d) + bytes <= limit;
}

bool wb_pool_open(struct wb *wb, struct client *c)
{
	struct daemon *d = wb->daemon;
	uint64_t limit = d->pool_max_size, usage;
	unsigned accept =
	    d->accept_threshold_percent ? d->accept_threshold_percent : WB_ACCEPT_PERCENT;
	bool ok = true;

	/* The cgroup's budget (PoolMax). */
	if (c->policy.pool_max != UZ_UNLIMITED &&
	    group_pool_bytes(c->group) + UZ_PAGE_SIZE > c->policy.pool_max)
		ok = false;
	/* The global limit, with hysteresis. */
	if (ok && limit != UZ_UNLIMITED) {
		usage = pool_usage_bytes(d);
		if (__atomic_load_n(&d->pool_limit_hit, __ATOMIC_RELAXED)) {
			if (usage < limit / 100 * accept)
				__atomic_store_n(&d->pool_limit_hit, false, __ATOMIC_RELAXED);
			else
				ok = false;
		} else if (usage + UZ_PAGE_SIZE > limit) {
			__atomic_store_n(&d->pool_limit_hit, true, __ATOMIC_RELAXED);
			ok = false;
		}
	}
	return ok;
}

bool wb_pool_accepting(struct wb *wb, struct client *c)
{
	if (wb_pool_open(wb, c))
		return true;
	client_stat(c, UZ_STAT_pool_limit_hit, 1);
	if (wb->io && c->policy.writeback && wb->swap_full)
		client_stat(c, UZ_STAT_reject_reclaim_fail, 1);
	return false;
}

/* ---------------------------------------------------------------------------
 * The shrinker
 */

/*
 * A unit member is written alone: its page, decompressed from the unit,
 * compressed again by itself into dst (a page), by the client's
 * algorithm, or copied raw when it does not shrink.  Returns the length
 * (*algo set), or -errno: it stays in the pool.
 */
static int wb_unit_member(struct wb *wb, struct client *c, page_entry_t e, uint8_t *dst,
			  unsigned *algo)
{
	struct fault_thread *t = wb->thread;
	struct compressor *comp;
	int r;

	r = fault_decode_page(t, c, e, t->page);
	if (r < 0)
		return r;
	comp = fault_compressor(t, c->policy.algo, c->policy.level, false);
	r = compressor_compress(comp, t->page, dst, UZ_PAGE_SIZE - 1);
	if (r > 0) {
		*algo = compressor_algo(comp);
		return r;
	}
	if (r != -E2BIG)
		return r < 0 ? r : -EIO;
	memcpy(dst, t->page, UZ_PAGE_SIZE);
	*algo = COMPRESSOR_RAW;
	return (int)UZ_PAGE_SIZE;
}

struct pick_ctx {
	struct wb *wb;
	struct wb_lru *wl;
	struct wb_batch *batch;
	struct client *cached;
};

static enum lru_walk_status wb_pick(uint64_t ref, void *userdata)
{
	struct pick_ctx *ctx = userdata;
	struct wb *wb = ctx->wb;
	struct wb_batch *batch = ctx->batch;
	uint64_t key = ref >> PAGE_INDEX_VPN_BITS, vpn = ref & VPN_MASK;
	struct client *c = ctx->cached;
	page_entry_t e;
	unsigned n = batch->count, len, algo;
	int r;

	if (n == WB_BATCH_MAX)
		return LRU_STOP;
	if (!c || c->key != key)
		c = ctx->cached = fault_thread_client(wb->thread, key, false);
	if (!c)
		return LRU_REMOVED; /* its client left: the entry is gone */
	e = page_index_get(c->index, vpn);
	if (pe_state(e) != PAGE_STORED) {
		if (pe_queued(e))
			page_index_set(c->index, vpn, e & ~PE_QUEUED);
		return LRU_REMOVED;
	}
	if (c->group != ctx->wl->group) {
		/* The client moved to another cgroup: its pages follow it there. */
		page_index_set(c->index, vpn, e & ~PE_QUEUED);
		e &= ~PE_QUEUED;
		wb_lru_push(wb, c, vpn, &e);
		page_index_set(c->index, vpn, e);
		return LRU_REMOVED;
	}
	if (!c->policy.writeback)
		return LRU_ROTATE;
	if (pe_referenced(e)) {
		page_index_set(c->index, vpn, e & ~PE_REFERENCED);
		client_stat(c, UZ_STAT_second_chance_rotations, 1);
		return LRU_ROTATE;
	}
	if (pe_unit(e)) {
		r = wb_unit_member(wb, c, e, wb->staging + (size_t)n * UZ_PAGE_SIZE, &algo);
		if (r < 0)
			return LRU_ROTATE;
		len = (unsigned)r;
		client_stat(c, UZ_STAT_unit_split_pages, 1);
	} else {
		len = pe_len(e);
		algo = pe_algo(e);
		if (pool_load(c->family->pool, pe_handle(e), wb->staging + (size_t)n * UZ_PAGE_SIZE,
			      len) < 0)
			return LRU_ROTATE;
	}
	e = pe_make(e & ~PE_QUEUED, PAGE_WRITEBACK, false, pe_algo(e), pe_len(e), pe_payload(e));
	batch->items[n] = (struct wb_item){key, vpn, e, len, algo, false};
	batch->objs[n] = (struct swap_object){.data = wb->staging + (size_t)n * UZ_PAGE_SIZE,
					      .len = len,
					      .owner = c->swap_owner,
					      .vpn = vpn};
	batch->count++;
	batch->bytes += len;
	page_index_set(c->index, vpn, e);
	return LRU_REMOVED;
}

/* Back to STORED and onto the LRU (write refused or failed). */
static void item_restore(struct wb *wb, struct client *c, struct wb_item *it)
{
	page_entry_t e = page_index_get(c->index, it->vpn);

	e = pe_make(e, PAGE_STORED, true, pe_algo(e), pe_len(e), pe_payload(e));
	wb_lru_push(wb, c, it->vpn, &e);
	page_index_set(c->index, it->vpn, e);
}

static void batch_done(struct swap_object *objs, size_t count, int result, void *userdata)
{
	struct wb_batch *batch = userdata;
	struct wb *wb = batch->wb;
	struct daemon *d = wb->daemon;
	bool errors = false;

	for (size_t i = 0; i < count; i++) {
		struct wb_item *it = &batch->items[i];
		struct client *c;
		page_entry_t e;

		if (it->cancelled) {
			if (objs[i].result == 0)
				(void)swap_slot_free(d->swap, objs[i].slot);
			continue;
		}
		c = fault_thread_client(wb->thread, it->key, true);
		if (!c) {
			if (objs[i].result == 0)
				(void)swap_slot_free(d->swap, objs[i].slot);
			continue;
		}
		if (objs[i].result < 0) {
			client_stat(c, UZ_STAT_io_errors, 1);
			item_restore(wb, c, it);
			errors = true;
			continue;
		}
		e = page_index_get(c->index, it->vpn);
		page_index_set(c->index, it->vpn,
			       pe_make(e, PAGE_ON_DISK, false, it->algo, it->len, objs[i].slot));
		entry_pool_release(c, it->entry);
		client_stat(c, UZ_STAT_stored_pages, -1);
		client_stat(c, UZ_STAT_on_disk_pages, 1);
		client_stat(c, UZ_STAT_swap_bytes_on_disk,
			    (int64_t)swap_slot_disk_bytes(d->swap, objs[i].slot));
		client_stat(c, UZ_STAT_zswpwb, 1);
		client_stat(c, UZ_STAT_written_back_pages, 1);
	}
	(void)result;
	if (errors)
		wb->backoff_until = uz_now_usec() + WB_BACKOFF_MS * 1000;
	wb->inflight_bytes -= batch->bytes;
	batch->busy = false;
	wb->batches_busy--;
	fault_thread_want_retry(wb->thread); /* the shrinker may go on */
}

/* Build and submit one batch.  Returns the compressed bytes submitted (0: nothing). */
static uint64_t wb_submit_batch(struct wb *wb, struct wb_lru *wl, uint64_t nr_to_scan,
				uint64_t *scanned)
{
	struct wb_batch *batch = NULL;
	struct pick_ctx ctx = {.wb = wb, .wl = wl};
	struct lru_walk_result res;
	int r;

	for (unsigned i = 0; i < WB_BATCHES; i++)
		if (!wb->batches[i].busy) {
			batch = &wb->batches[i];
			break;
		}
	if (!batch)
		return 0;
	batch->count = 0;
	batch->bytes = 0;
	ctx.batch = batch;
	fault_unit_cache_reset(wb->thread);
	(void)lru_walk(wl->lru, nr_to_scan, wb_pick, &ctx, &res);
	*scanned += res.scanned;
	if (!batch->count)
		return 0;

	r = swap_io_write(wb->io, batch->objs, batch->count, batch_done, batch);
	if (r < 0) {
		/* Full (or the ring refused): everything stays in the pool. */
		for (unsigned i = 0; i < batch->count; i++) {
			struct client *c =
			    fault_thread_client(wb->thread, batch->items[i].key, false);

			if (c)
				item_restore(wb, c, &batch->items[i]);
		}
		if (r == -ENOSPC)
			wb->swap_full = true;
		wb->backoff_until = uz_now_usec() + WB_BACKOFF_MS * 1000;
		return 0;
	}
	wb->swap_full = false;
	batch->busy = true;
	wb->batches_busy++;
	wb->inflight_bytes += batch->bytes;
	stats_add(wb->daemon->stats, UZ_STAT_writeback_batches, 1);
	return batch->bytes;
}

/* Compressed bytes over the global pool's writeback threshold (0: none). */
static uint64_t wb_global_excess(struct wb *wb)
{
	struct daemon *d = wb->daemon;
	uint64_t limit = d->pool_max_size, usage;

	if (limit == UZ_UNLIMITED)
		return 0;
	usage = pool_usage_bytes(d);
	usage = usage > wb->inflight_bytes ? usage - wb->inflight_bytes : 0;
	if (usage <= limit / 100 * WB_START_PERCENT)
		return 0;
	return usage - limit / 100 * WB_TARGET_PERCENT;
}

/*
 * Compressed bytes of the group of wl over its PoolMax threshold (0:
 * none, or writeback is off for it).  The budget (wl->pool_max) is the
 * largest PoolMax of this thread's clients of the group with writeback
 * on (a client's policy is its own copy), gathered by wb_shrink().
 */
static uint64_t wb_group_excess(struct wb *wb, struct wb_lru *wl)
{
	uint64_t max = wl->pool_max, bytes;

	if (max == UZ_UNLIMITED)
		return 0;
	bytes = group_pool_bytes(wl->group);
	bytes = bytes > wb->inflight_bytes ? bytes - wb->inflight_bytes : 0;
	if (bytes <= max / 100 * WB_START_PERCENT)
		return 0;
	return bytes - max / 100 * WB_TARGET_PERCENT;
}

/* Take the queued shrink requests into the LRUs' pending counts, bounded by the shrinker count. */
static void wb_take_requests(struct wb *wb)
{
	struct wb_request requests[WB_REQUESTS];
	unsigned n;

	pthread_mutex_lock(&wb->requests_lock);
	n = wb->nr_requests;
	memcpy(requests, wb->requests, n * sizeof(requests[0]));
	wb->nr_requests = 0;
	pthread_mutex_unlock(&wb->requests_lock);

	for (unsigned i = 0; i < n; i++) {
		for (struct wb_lru *wl = wb->lrus; wl; wl = wl->next) {
			struct stats *gs = wl->group->stats;
			int64_t stored, bytes;
			uint64_t freeable;

			if (requests[i].group && requests[i].group != wl->group)
				continue;
			stored = stats_read(gs, UZ_STAT_stored_pages) -
				 stats_read(gs, UZ_STAT_same_filled_pages);
			bytes = stats_read(gs, UZ_STAT_compressed_bytes);
			freeable = lru_shrinker_count(
			    wl->lru, stored > 0 ? (uint64_t)stored : 0,
			    bytes > 0 ? ((uint64_t)bytes + UZ_PAGE_SIZE - 1) / UZ_PAGE_SIZE : 0);
			wl->pending += uz_min(requests[i].bytes, freeable * UZ_PAGE_SIZE);
			/* Twice round the ring: the first pass may only clear referenced bits. */
			wl->scan_budget = 2 * lru_length(wl->lru) + WB_BATCH_MAX;
		}
		group_unref(requests[i].group);
	}
}

#define WB_SCAN_PER_RUN 8192 /* LRU entries one shrinker run may look at */

void wb_shrink(struct wb *wb)
{
	uint64_t global, total_length = 0, scanned = 0;
	bool want = false;

	if (!wb->io || wb->batches_busy >= WB_BATCHES)
		return;
	if (uz_now_usec() < wb->backoff_until)
		return;
	wb_take_requests(wb);
	/* The groups' budgets: one pass over the clients (the LRU lookup is cached). */
	for (struct wb_lru *wl = wb->lrus; wl; wl = wl->next)
		wl->pool_max = UZ_UNLIMITED;
	for (struct client *c = fault_thread_client_after(wb->thread, 0); c;
	     c = fault_thread_client_after(wb->thread, c->key + 1)) {
		struct wb_lru *wl;

		if (!c->policy.writeback || c->policy.pool_max == UZ_UNLIMITED ||
		    !(wl = wb_lru_find(wb, c->group)))
			continue;
		wl->pool_max = wl->pool_max == UZ_UNLIMITED
				   ? c->policy.pool_max
				   : uz_max(wl->pool_max, c->policy.pool_max);
	}
	/* Global pressure: every LRU of this thread, in proportion of its length. */
	global = wb_global_excess(wb);
	for (struct wb_lru *wl = wb->lrus; wl; wl = wl->next)
		total_length += lru_length(wl->lru);
	for (struct wb_lru *wl = wb->lrus; wl; wl = wl->next) {
		uint64_t share =
		    total_length ? (uint64_t)((double)global * lru_length(wl->lru) / total_length)
				 : 0;

		/* A group over its own PoolMax writes back its own pages. */
		wl->target = uz_max(share, wb_group_excess(wb, wl)) + wl->pending;
	}
	for (struct wb_lru *wl = wb->lrus; wl; wl = wl->next) {
		while (wl->target && wb->batches_busy < WB_BATCHES && scanned < WB_SCAN_PER_RUN) {
			uint64_t run = 0, done = wb_submit_batch(wb, wl, 4 * WB_BATCH_MAX, &run);

			scanned += run;
			if (wl->pending) {
				wl->pending = done >= wl->pending ? 0 : wl->pending - done;
				wl->scan_budget =
				    run >= wl->scan_budget ? 0 : wl->scan_budget - run;
				if (!wl->scan_budget)
					wl->pending = 0; /* nothing more to take */
			}
			wl->target = done >= wl->target ? 0 : wl->target - done;
			if (!done && !run)
				break; /* empty, or the batch was refused */
		}
		if (wl->target)
			want = true;
	}
	wb->want = want;
}

int wb_timeout(const struct wb *wb)
{
	if (wb->compacting)
		return 0;
	if (wb->io && wb->want)
		return WB_BACKOFF_MS;
	return -1;
}

void fault_thread_request_shrink(struct fault_thread *thread, struct uz_group *group,
				 uint64_t bytes)
{
	struct wb *wb = fault_thread_wb(thread);

	pthread_mutex_lock(&wb->requests_lock);
	if (wb->nr_requests < WB_REQUESTS) {
		wb->requests[wb->nr_requests++] =
		    (struct wb_request){group ? group_ref(group) : NULL, bytes};
	} else {
		/* Full: widen the last request (any group keeps its own bound). */
		struct wb_request *last = &wb->requests[WB_REQUESTS - 1];

		if (last->group != group) {
			group_unref(last->group);
			last->group = NULL;
		}
		last->bytes += bytes;
	}
	pthread_mutex_unlock(&wb->requests_lock);
	fault_thread_kick_assign(thread);
}

/* ---------------------------------------------------------------------------
 * Compaction
 */

struct compact_ctx {
	struct wb *wb;
	struct client *client;
	unsigned budget;
	uint64_t last;
};

static int compact_one(uint64_t vpn, page_entry_t *entry, void *userdata)
{
	struct compact_ctx *ctx = userdata;
	struct client *c = ctx->client;
	struct pool *pool = c->family->pool;
	pool_handle_t handle;

	ctx->last = vpn;
	if (pe_state(*entry) == PAGE_STORED && pool_handle_evacuating(pool, pe_handle(*entry)) &&
	    pool_migrate_copy(pool, pe_handle(*entry), pe_object_len(*entry), &handle) == 0) {
		pool_handle_t old = pe_handle(*entry);

		/*
		 * The entry names the copy before the original goes (pool.h: the
		 * order).  A unit is moved only with one member left (a shared
		 * object never moves): its page number goes with it.
		 */
		fault_unit_cache_reset(ctx->wb->thread);
		*entry = pe_make(*entry, PAGE_STORED, pe_referenced(*entry), pe_algo(*entry),
				 pe_len(*entry), pe_unit_payload(handle, pe_unit_page(*entry)));
		page_index_set(c->index, vpn, *entry);
		pool_release(pool, old);
		client_stat(c, UZ_STAT_compacted_objects, 1);
	}
	return --ctx->budget ? 0 : 1;
}

/*
 * Start a compaction round: mark the sparse chunks of every family's pool
 * on this thread that maps much more than it holds.  True when any was
 * marked (the clients' indexes are then walked).
 */
static bool wb_compact_begin(struct wb *wb)
{
	uint64_t epoch = ++wb->compact_epoch;
	bool marked = false;

	for (struct client *c = fault_thread_client_after(wb->thread, 0); c;
	     c = fault_thread_client_after(wb->thread, c->key + 1)) {
		struct family *f = c->family;
		struct pool_usage pu;

		if (f->compact_epoch == epoch)
			continue; /* another member of the family was here first */
		f->compact_epoch = epoch;
		pool_get_usage(f->pool, &pu);
		if (pu.total_size <= (1ULL << 20) ||
		    pu.total_size * 100 <= pu.stored_bytes * WB_COMPACT_RATIO_PCT)
			continue;
		if (pool_compact_begin(f->pool, WB_COMPACT_MIN_FILL) > 0)
			marked = true;
	}
	return marked;
}

void wb_compact_step(struct wb *wb)
{
	struct compact_ctx ctx = {.wb = wb, .budget = WB_COMPACT_STEP};

	if (!wb->compacting) {
		uint64_t now = uz_now_usec();

		if (now < wb->compact_next)
			return;
		wb->compact_next = now + WB_COMPACT_PERIOD_MS * 1000;
		if (!wb_compact_begin(wb))
			return;
		wb->compacting = true;
		wb->compact_key = 0;
		wb->compact_vpn = 0;
	}
	/* Clients in key order: the next one at or after compact_key. */
	for (;;) {
		struct client *c = fault_thread_client(wb->thread, wb->compact_key, false);
		int r;

		if (!c) {
			c = fault_thread_client_after(wb->thread, wb->compact_key);
			if (!c) {
				wb->compacting = false;
				return;
			}
			wb->compact_key = c->key;
			wb->compact_vpn = 0;
		}
		ctx.client = c;
		r = page_index_walk(c->index, wb->compact_vpn, VPN_MASK, compact_one, &ctx);
		if (r > 0) {
			wb->compact_vpn = ctx.last + 1;
			return;
		}
		wb->compact_key = c->key + 1;
		wb->compact_vpn = 0;
		if (!ctx.budget)
			return;
	}
}

/* ---------------------------------------------------------------------------
 * Opening the swap file (main thread)
 */

/*
 * UZSWAP_TEST_INJECT=KIND:PERCENT[:COUNT] (KIND write, read, short-write,
 * short-read): fault injection of the swap file backend, for the
 * integration tests only.  Never set it in production.
 */
static void writeback_test_injection(struct swap *swap)
{
	const char *spec = getenv("UZSWAP_TEST_INJECT");
	char kind[32];
	unsigned percent = 0, what = 0;
	unsigned long long count = 0;

	if (!spec || sscanf(spec, "%31[a-z-]:%u:%llu", kind, &percent, &count) < 2)
		return;
	if (!strcmp(kind, "write"))
		what = SWAP_FAIL_WRITE;
	else if (!strcmp(kind, "read"))
		what = SWAP_FAIL_READ;
	else if (!strcmp(kind, "short-write"))
		what = SWAP_SHORT_WRITE;
	else if (!strcmp(kind, "short-read"))
		what = SWAP_SHORT_READ;
	if (!what)
		return;
	uz_log(LOG_WARNING, "UZSWAP_TEST_INJECT=%s: swap file fault injection on (tests only)",
	       spec);
	swap_set_fault_injection(swap, what, percent, count);
}

static const char *swap_start_name(enum swap_start start)
{
	switch (start) {
	case SWAP_START_NEW:
		return "new";
	case SWAP_START_CLEAN:
		return "closed cleanly";
	case SWAP_START_OTHER_BOOT:
		return "left by another boot";
	case SWAP_START_GEOMETRY:
		return "size or granule changed";
	case SWAP_START_RECOVERED:
		return "left in use by a previous uzswapd";
	}
	return "?";
}

#define WB_OPEN_RETRY_MIN_MS 2000 /* an NBD server unreachable at start: try again */
#define WB_OPEN_RETRY_MAX_MS 60000

int writeback_open(struct daemon *d)
{
	bool nbd = d->swap_backend == SWAP_BACKEND_NBD;
	char err[512] = "";
	struct swap_config config = {
	    .path = d->swap_file,
	    .size = d->swap_size,
	    .backend = nbd ? SWAP_BACKEND_NBD : SWAP_BACKEND_FILE,
	    .uri = d->swap_uri,
	    .timeout_ms = d->swap_read_timeout_ms,
	    .errbuf = err,
	    .errlen = sizeof(err),
	    .owner_capacity = d->max_clients <= SWAP_OWNERS_MAX ? d->max_clients : SWAP_OWNERS_MAX,
	    /* A predecessor killed a moment ago holds the file until its last I/O completed. */
	    .lock_wait_ms = WB_SWAP_LOCK_WAIT_MS,
	};
	struct swap_info info;
	struct swap *swap;
	int r;

	if (d->swap || !d->swap_file || !d->swap_file[0])
		return 0;
	if (nbd ? !d->swap_uri : !d->swap_size)
		return 0;
	r = swap_new(&swap, &config);
	if (r < 0 && nbd) {
		static unsigned retry_ms;

		retry_ms = retry_ms ? uz_min(retry_ms * 2, (unsigned)WB_OPEN_RETRY_MAX_MS)
				    : WB_OPEN_RETRY_MIN_MS;
		d->swap_retry_usec = uz_now_usec() + retry_ms * 1000ULL;
		uz_log(LOG_ERR,
		       "NBD export \"%s\" (metadata \"%s\"): %s; writeback off, trying again "
		       "in %u s",
		       d->swap_uri, d->swap_file, err[0] ? err : strerror(-r), retry_ms / 1000);
		return r;
	}
	if (r < 0) {
		uz_log(LOG_ERR, "swap file \"%s\": %s; writeback off", d->swap_file, strerror(-r));
		return r;
	}
	d->swap_retry_usec = 0;
	swap_get_info(swap, &info);
	if (info.start == SWAP_START_RECOVERED && info.recovered_slots)
		/*
		 * Records of clients of a previous uzswapd: kept for them to
		 * claim when they re-join with their indexes.  When none of
		 * them (nor anyone else) is left, the main thread frees what
		 * nobody claimed (daemon_swap_collect()).
		 */
		uz_log(LOG_NOTICE,
		       "swap file \"%s\": %" PRIu64 " records (%" PRIu64
		       " KiB) of a previous uzswapd kept for its clients",
		       d->swap_file, info.recovered_slots, info.recovered_bytes >> 10);
	writeback_test_injection(swap);
	if (nbd)
		uz_log(LOG_INFO,
		       "far memory: NBD export \"%s\": %" PRIu64 " MiB of records, metadata \"%s\" "
		       "(%" PRIu64 " KiB), %s",
		       d->swap_uri, info.file_size >> 20, d->swap_file, info.meta_size >> 10,
		       swap_start_name(info.start));
	else
		uz_log(LOG_INFO, "swap file \"%s\": %" PRIu64 " MiB, %s I/O, %s", d->swap_file,
		       info.file_size >> 20, info.direct_io ? "direct" : "buffered",
		       swap_start_name(info.start));
	__atomic_store_n(&d->swap, swap, __ATOMIC_RELEASE);
	for (unsigned i = 0; i < d->nr_fault_threads; i++)
		fault_thread_kick_assign(d->fault_threads[i]);
	return 0;
}

void writeback_retry_open(struct daemon *d)
{
	if (d->swap || !d->swap_retry_usec || uz_now_usec() < d->swap_retry_usec)
		return;
	(void)writeback_open(d);
}
