/* SPDX-License-Identifier: MIT */
/*
 * The client store: a memfd per client holding the page index, the uffd
 * journal and the eviction batch record (layout: common/store-layout.h), so that
 * they outlive the daemon.  This module creates, maps, grows and takes back
 * stores, and allocates the index's cells; daemon/index builds the radix
 * tree on them.
 *
 * Not thread-safe: a store belongs to the fault thread serving its client.
 * Pointers into the store (store_cell(), store_header()) stay valid only
 * until the next store_cell_alloc(), which may grow and move the mapping.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "store-layout.h"

struct store {
	/* private to store.c; in the header so that store_cell() inlines */
	int fd;	       /* read-write, the daemon's own */
	uint8_t *base; /* the whole file, MAP_SHARED */
	size_t size;   /* bytes of the file and the mapping */
	uint32_t cells_capacity;
	uint32_t *free_cells; /* daemon memory: cells to reuse */
	size_t nr_free, free_capacity;
};

/* What store_recover() found. */
struct store_recovery {
	uint64_t file_bytes;
	uint32_t cells; /* cells handed out before (cells_bump - 1) */
};

/* A fresh store (memfd "uzswap-store", mode 0600, header initialised, tokens random). */
int store_new(struct store **out);
/*
 * Take back a store a client held across a daemon restart.  fd may be the
 * client's read-only descriptor: the file is reopened read-write through
 * /proc/self/fd (we own it), fd itself is left to the caller.  -EPERM when
 * the file is not one of ours (not owned by us, not mode 0600, not a
 * memfd store), -EINVAL on a bad header, -EFBIG when too large.
 */
int store_recover(struct store **out, int fd, struct store_recovery *report);
/* Unmap and close the daemon's descriptor (the memfd lives on while clients hold it). */
struct store *store_free(struct store *store);

/* A new O_RDONLY|O_CLOEXEC descriptor of the store, for the client. */
int store_open_readonly(const struct store *store);

static inline struct uz_store_header *store_header(const struct store *store)
{
	return (struct uz_store_header *)store->base;
}
static inline struct uz_store_batch *store_batch(const struct store *store)
{
	return (struct uz_store_batch *)(store->base + UZ_STORE_BATCH_OFFSET);
}
/* The journal: UZ_STORE_JOURNAL_MSGS struct uffd_msg. */
static inline void *store_journal(const struct store *store)
{
	return store->base + UZ_STORE_JOURNAL_OFFSET;
}

/* Cell n (1 <= n < cells_bump). */
static inline struct uz_store_cell *store_cell(const struct store *store, uint32_t cell)
{
	return (struct uz_store_cell *)(store->base + UZ_STORE_CELLS_OFFSET +
					(size_t)(cell - 1) * sizeof(struct uz_store_cell));
}
static inline uint32_t store_cells_bump(const struct store *store)
{
	return store_header(store)->cells_bump;
}

/* A zeroed cell.  -ENOMEM when the file cannot grow (or the cell numbers run out). */
int store_cell_alloc(struct store *store, uint32_t *out);
/* Give a cell back (no longer linked from the tree). */
void store_cell_free(struct store *store, uint32_t cell);
/*
 * After recovery: every handed-out cell not set in `used` (a bitmap of
 * cells_bump bits, bit n = cell n) becomes free.
 */
int store_cells_rebuild(struct store *store, const uint64_t *used);

/* Bytes of the store file (its memory). */
static inline uint64_t store_bytes(const struct store *store)
{
	return store->size;
}
