/* SPDX-License-Identifier: MIT */
/*
 * The second-chance LRU of stored entries, one per cgroup, with the
 * semantics of the kernel zswap shrinker (mm/zswap.c after "implement a
 * second chance algorithm for dynamic zswap shrinker"):
 *
 *  - an entry enters at the tail with its referenced bit set;
 *  - a shrinker walk takes entries from the head: a referenced entry has
 *    the bit cleared and is rotated to the tail, an unreferenced one is
 *    written back;
 *  - pages read back from disk are counted (lru_note_disk_swapin) and that
 *    count is consumed and subtracted from the freeable count;
 *  - the freeable count is scaled down by the compression ratio.
 *
 * The list is a FIFO of page references (the caller's encoding of "which
 * page": owner key << 36 | vpn, see daemon/fault for (client key, vpn)),
 * not an intrusive list, so an entry costs nothing in the page entry but
 * two bits (referenced, queued), and here 6 bytes: the FIFO keeps a 12-bit
 * slot for the key (at most 4096 keys with references at once) in blocks
 * of one page that it takes and gives back as it grows and shrinks.  A
 * reference whose page left the pool is dropped when the walk meets it
 * (lazy deletion); the queued bit keeps a page from being in it twice.
 *
 * Thread-safe: an internal mutex guards the FIFO, held only for pushes and
 * pops, never across the walk callback.
 */
#pragma once

#include <stdbool.h>
#include <stdint.h>

struct lru;

int lru_new(struct lru **out);
struct lru *lru_free(struct lru *lru);

/* At the tail; -ENOMEM, or -ENOSPC with 4096 other live keys in the FIFO (the page stays unqueued).
 */
int lru_push(struct lru *lru, uint64_t ref);
bool lru_pop(struct lru *lru, uint64_t *ref); /* from the head */
/*
 * The owner of key left: its references are stale.  They are still
 * returned by pops and walks (lazy deletion), but a push that finds every
 * owner slot taken drops them first to make room.
 */
void lru_forget_owner(struct lru *lru, uint64_t key);
uint64_t lru_length(struct lru *lru); /* references in the FIFO, stale ones included */
/* The memory the LRU holds: blocks, spare blocks, tables and the object itself. */
uint64_t lru_memory_bytes(struct lru *lru);

enum lru_walk_status {
	LRU_REMOVED, /* the callback took the entry (written back, or stale): drop the ref */
	LRU_ROTATE,  /* referenced: callback cleared the bit; the ref goes to the tail */
	LRU_RETRY,   /* busy right now: the ref goes back to the tail, not counted as scanned */
	LRU_STOP,    /* stop the walk; the ref goes back to the head */
};

struct lru_walk_result {
	uint64_t scanned;
	uint64_t removed;
	uint64_t rotated;
};

typedef enum lru_walk_status (*lru_walk_fn)(uint64_t ref, void *userdata);

/* Walk up to nr_to_scan references from the head. */
int lru_walk(struct lru *lru, uint64_t nr_to_scan, lru_walk_fn fn, void *userdata,
	     struct lru_walk_result *result);

/* A page of this LRU's cgroup was read back from disk. */
void lru_note_disk_swapin(struct lru *lru);
/* Disk swapins noted and not yet consumed by lru_shrinker_count(). */
uint64_t lru_disk_swapins_pending(struct lru *lru);

/*
 * The kernel's zswap_shrinker_count(): nr_freeable = min(live stored
 * entries, lru length) minus the disk swapins consumed now, scaled by
 * nr_backing_pages / nr_stored (the pool pages the stored pages occupy).
 */
uint64_t lru_shrinker_count(struct lru *lru, uint64_t nr_stored, uint64_t nr_backing_pages);
