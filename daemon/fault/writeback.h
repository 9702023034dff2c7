/* SPDX-License-Identifier: MIT */
/*
 * The writeback tier of a fault thread: its LRU of stored pages, its
 * swap_io, the shrinker that writes stale compressed pages to the swap
 * file, and the reads that bring them back on a fault.  See writeback.c.
 *
 * Everything here runs on the fault thread that owns the struct wb, over
 * that thread's clients only (a thread owns its clients' indexes), except
 * fault_thread_request_shrink(), which any thread may call, and
 * writeback_open() and writeback_retry_open(), on the main thread.
 */
#pragma once

#include <stdbool.h>
#include <stdint.h>

#include "index/index.h"

struct daemon;
struct client;
struct fault_thread;
struct wb;

/*
 * Open the swap file of d->swap_file / d->swap_size (0 or no path: no
 * writeback) and let the fault threads use it.  Main thread, once, after
 * the config is applied.  Honours UZSWAP_TEST_INJECT (tests only, see
 * docs/SWAP.md).  0 or -errno (logged).
 */
int writeback_open(struct daemon *d);
/*
 * Main thread, every few seconds: an NBD backend whose server did not
 * answer at start is opened again, with backoff (writeback stays off
 * until then; pages stay in the pool).
 */
void writeback_retry_open(struct daemon *d);

int wb_new(struct wb **out, struct fault_thread *thread, struct daemon *daemon);
/* Waits for the I/O in flight (every client must be gone already). */
struct wb *wb_free(struct wb *wb);

/*
 * On the thread: once the swap file is open (writeback_open), create the
 * swap_io.  Returns its eventfd when just attached (add it to epoll), else -1.
 */
int wb_attach(struct wb *wb);
/* Completions are waiting: run them. */
void wb_reap(struct wb *wb);

/* A page was stored: queue it on the thread's LRU of its group (sets PE_QUEUED). */
void wb_lru_push(struct wb *wb, struct client *c, uint64_t vpn, page_entry_t *entry);

/*
 * A fault on an ON_DISK page: start the read (the faulting thread stays
 * parked until it completes).  0 (started, or already reading), -EAGAIN
 * (no read context free: retry later).
 */
int wb_fault(struct wb *wb, struct client *c, uint64_t vpn, page_entry_t e);
/*
 * Give-back walks (UNREGISTER, FORK_PREPARE, SHUTDOWN, HOT): like
 * wb_fault; the caller waits for the page (-EBUSY from its walk) and is
 * resumed (fault_client_run_requests) when the read landed.
 */
static inline int wb_restore(struct wb *wb, struct client *c, uint64_t vpn, page_entry_t e)
{
	return wb_fault(wb, c, vpn, e);
}
/* Retry installs that hit EAGAIN; true when some still wait. */
bool wb_retry(struct wb *wb);

/*
 * An ON_DISK or WRITEBACK entry goes away (REMOVE, UNMAP, exit): free the
 * slot, or leave that to the completion of the I/O in flight.  For
 * WRITEBACK the caller still frees the pool object (as for STORED).
 */
void wb_entry_release(struct wb *wb, struct client *c, uint64_t vpn, page_entry_t e);
/*
 * The client leaves with its state (it may re-join a daemon): reads in
 * flight install nothing and keep their slots (its entries still name
 * them); writes in flight are forgotten (their slots are nobody's).
 */
void wb_client_detach(struct wb *wb, struct client *c);
/* A WRITEBACK entry was served from the pool: the write result is ignored. */
void wb_writeback_cancel(struct wb *wb, struct client *c, uint64_t vpn);
/* REMAP moved an entry from old_vpn to new_vpn: I/O in flight follows. */
void wb_entry_moved(struct wb *wb, struct client *c, uint64_t old_vpn, uint64_t new_vpn,
		    page_entry_t e);

/*
 * May a page of this client be stored?  The global pool limit with its
 * accept threshold: over the limit stores are refused (and counted) until
 * usage falls below the threshold.
 */
bool wb_pool_accepting(struct wb *wb, struct client *c);
/*
 * The same test without counting a refusal: would a store be accepted now?
 * Eviction asks first, so pages are not moved out only to be sent back.
 */
bool wb_pool_open(struct wb *wb, struct client *c);
/* Would an object of `bytes` (a multi-page unit's) fit under the limits now?  Counts nothing. */
bool wb_pool_room(struct wb *wb, struct client *c, uint64_t bytes);

/* Run the shrinker if the pool is over its writeback threshold or a shrink was asked. */
void wb_shrink(struct wb *wb);
/* Milliseconds the thread's epoll may sleep at most (-1: no limit). */
int wb_timeout(const struct wb *wb);

/* Pool compaction, a bounded step per loop iteration (see writeback.c). */
void wb_compact_step(struct wb *wb);

/*
 * Ask a fault thread to write back about `bytes` of compressed data of its
 * clients of `group` (NULL: of every group) from its LRU of that group
 * (uzswapctl shrink), bounded by the shrinker count.  Any thread.
 */
struct uz_group;
void fault_thread_request_shrink(struct fault_thread *thread, struct uz_group *group,
				 uint64_t bytes);

