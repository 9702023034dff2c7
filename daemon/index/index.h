/* SPDX-License-Identifier: MIT */
/*
 * The page index: for one client address space, virtual page number ->
 * page entry (layout: common/page-entry.h).  A sparse radix tree over the
 * 36-bit page-number space of a 48-bit user address space, with small
 * leaves so that a terabyte region with a few stored pages costs little.
 * Leaves that become all zero are freed.  The tree's cells live in the
 * client's store (daemon/store), a memfd the client holds, so the index
 * outlives the daemon: page_index_recover() takes it back.
 *
 * Not thread-safe: a client's index belongs to the fault thread serving
 * that client (see docs/ARCHITECTURE.md).
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "page-entry.h"

#define PAGE_INDEX_VPN_BITS 36 /* 48-bit user addresses, 4 KiB pages */

struct page_index;
struct store;

struct page_index_usage {
	uint64_t bytes;	  /* bytes of the tree's cells in use (nodes and leaves) */
	uint64_t leaves;  /* leaves allocated */
	uint64_t entries; /* non-zero entries */
};

/* An index on the store's cells (empty for a fresh store).  The store must outlive it. */
int page_index_new(struct page_index **out, struct store *store);
/*
 * Take back the index a store holds after a daemon restart: walks the tree
 * from its root, checks it (cell numbers in range, every cell reached once,
 * fixed depth), rebuilds the occupancy bits and counts, and gives every
 * cell the tree does not reach back to the store.  -EBADMSG when the tree
 * is not sound (the store is then unusable), -ENOMEM.
 */
int page_index_recover(struct page_index **out, struct store *store);
/* Frees the index object; its cells stay in the store. */
struct page_index *page_index_free(struct page_index *index);

/* The entry of vpn, 0 when none. */
page_entry_t page_index_get(const struct page_index *index, uint64_t vpn);
/*
 * Set the entry of vpn.  Setting 0 may free the leaf.  -ENOMEM when a leaf
 * or node cannot be allocated; -ERANGE when vpn is beyond the index.
 */
int page_index_set(struct page_index *index, uint64_t vpn, page_entry_t entry);

/*
 * Call fn for every non-zero entry with first <= vpn <= last, in vpn order.
 * fn may rewrite *entry (0 included; leaves left empty are freed after the
 * call).  fn returns 0 to go on, > 0 to stop the walk (that value is
 * returned), < 0 to abort with that error.
 */
typedef int (*page_index_walk_fn)(uint64_t vpn, page_entry_t *entry, void *userdata);
int page_index_walk(struct page_index *index, uint64_t first, uint64_t last, page_index_walk_fn fn,
		    void *userdata);

void page_index_get_usage(const struct page_index *index, struct page_index_usage *usage);
