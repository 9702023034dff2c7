/* SPDX-License-Identifier: MIT */
/*
 * The client store: the part of uzswapd's state about one client that must
 * outlive the daemon (docs/ARCHITECTURE.md, "State that outlives the
 * daemon").
 *
 * uzswapd creates one store per client, a memfd it maps shared and owns
 * (mode 0600), and hands the client a read-only descriptor of it at HELLO.
 * The client keeps that descriptor for the life of its membership; if the
 * daemon dies, the next one gets it back when the client re-joins
 * (UZ_HELLO_RESUME) and carries on from what is in it.  The client itself
 * only reads it, and only when no daemon came back (fail closed: put back
 * what it can, poison the rest).
 *
 * Layout, at fixed offsets from the start of the memfd:
 *   0                      struct uz_store_header (one page)
 *   UZ_STORE_BATCH_OFFSET  struct uz_store_batch: the victims of the
 *                          eviction batch in flight
 *   UZ_STORE_JOURNAL_OFFSET UZ_STORE_JOURNAL_MSGS struct uffd_msg: the
 *                          daemon reads its uffd straight into this buffer
 *                          and zeroes each message once it has applied it,
 *                          so a message a killed daemon read but did not
 *                          apply is still here for the next one
 *   UZ_STORE_CELLS_OFFSET  the cells of the page index, a radix tree:
 *                          cell n (n >= 1) at CELLS_OFFSET + (n - 1) *
 *                          sizeof(struct uz_store_cell); the file grows
 *                          as cells are added
 *
 * Every field a reader depends on is written with one aligned store, in an
 * order that makes a kill at any instruction leave a state the next daemon
 * can use (daemon/store/store.c tells the order).  Nothing in here is
 * trusted by the daemon without checks: cell numbers are bounded, the tree
 * depth is fixed, a cell reached twice rejects the store.
 */
#pragma once

#include <stdint.h>

#include "page-entry.h"
#include "protocol.h"

#define UZ_STORE_MAGIC	 0x31726f74737a7575ULL /* "uuzstor1" little-endian */
#define UZ_STORE_VERSION 1

#define UZ_STORE_PAGE		4096u
#define UZ_STORE_BATCH_OFFSET	(1u * UZ_STORE_PAGE)
#define UZ_STORE_JOURNAL_OFFSET (3u * UZ_STORE_PAGE) /* batch: 8 + 512 * 8 bytes < 2 pages */
#define UZ_STORE_JOURNAL_MSGS	64u		     /* 64 * 32 bytes: half a page */
#define UZ_STORE_CELLS_OFFSET	(4u * UZ_STORE_PAGE)

/* Radix tree geometry: 36-bit page numbers, 6 bits per level, leaves at level 0. */
#define UZ_STORE_CELL_BITS   6
#define UZ_STORE_CELL_FANOUT (1u << UZ_STORE_CELL_BITS)
#define UZ_STORE_VPN_BITS    36
#define UZ_STORE_LEVELS	     (UZ_STORE_VPN_BITS / UZ_STORE_CELL_BITS) /* 6: 5 nodes + leaf */

/*
 * A cell is a node (slot[i]: child cell number, 0 none) or a leaf
 * (slot[i]: page entry).  present: bit i set when slot[i] != 0; it is a
 * hint rebuilt on recovery, the slots are the truth.
 */
struct uz_store_cell {
	uint64_t present;
	uint64_t slot[UZ_STORE_CELL_FANOUT];
};

struct uz_store_header {
	uint64_t magic;
	uint32_t version;
	uint32_t page_size;
	uint8_t client_token[16]; /* random: names this store */
	uint8_t family_token[16]; /* the token of the arena its compressed pages are in */
	uint32_t cells_bump;	  /* cells 1..cells_bump-1 have been handed out */
	uint32_t index_root;	  /* cell of the tree's root node, 0 while empty */
	uint32_t cell_size;	  /* sizeof(struct uz_store_cell) */
	uint32_t levels;	  /* UZ_STORE_LEVELS */
	uint32_t owner_pid;	  /* the process this store belongs to (a fork child has its own) */
	uint64_t owner_starttime; /* its start time (/proc/PID/stat field 22), against pid reuse */
	uint64_t flags;		  /* UZ_STORE_* */
	/* A fork snapshot (UZ_STORE_SNAPSHOT): the process whose fork made it. */
	uint32_t parent_pid;
	uint32_t reserved;
	uint64_t parent_starttime;
};

/*
 * The store is a fork snapshot not yet claimed by the child (its owner is
 * not known yet): the child of parent_pid claims it with UZ_HELLO_SNAPSHOT.
 */
#define UZ_STORE_SNAPSHOT (1ULL << 0)

/*
 * The eviction batch in flight: written before EVICT is sent.  An entry
 * IN_FLIGHT with payload i belongs to vpn[i] of batch `id`.
 */
struct uz_store_batch {
	uint32_t id;
	uint32_t count;
	uint64_t vpn[UZ_EVICT_BATCH_MAX];
};

/*
 * The agent's answer to an EVICT, also left in the last page of the ring
 * (after the UZ_EVICT_BATCH_MAX data pages) before EVICT_DONE is sent, so
 * that a daemon started after a crash knows which pages of the batch are
 * in the ring: status[i] is 0 when page i was moved and copied to ring
 * slot i.  `batch` is written last.
 */
struct uz_ring_status {
	uint32_t batch;
	uint32_t count;
	int32_t status[UZ_EVICT_BATCH_MAX];
};

#define UZ_RING_PAGES (UZ_EVICT_BATCH_MAX + 1u) /* data slots, then the status page */

_Static_assert(sizeof(struct uz_store_header) <= UZ_STORE_PAGE, "store header: one page");
_Static_assert(UZ_STORE_BATCH_OFFSET + sizeof(struct uz_store_batch) <= UZ_STORE_JOURNAL_OFFSET,
	       "store batch record overlaps the journal");
_Static_assert(UZ_STORE_JOURNAL_OFFSET + UZ_STORE_JOURNAL_MSGS * 32 <= UZ_STORE_CELLS_OFFSET,
	       "store journal overlaps the cells");
_Static_assert(sizeof(struct uz_ring_status) <= UZ_STORE_PAGE, "ring status: one page");
