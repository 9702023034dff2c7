/* SPDX-License-Identifier: MIT */
/*
 * The page index: for one client address space, virtual page number ->
 * page entry.  A sparse radix tree over the 36-bit page-number space of a
 * 48-bit user address space, with small leaves so that a terabyte region
 * with a few stored pages costs little.  Leaves that become all zero are
 * freed.  A page entry is one 64-bit word (layout below): the index holds
 * 8 bytes per tracked page, the LRU ring 8 more per stored page.
 *
 * Not thread-safe: a client's index belongs to the fault thread serving
 * that client (see docs/ARCHITECTURE.md).
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define PAGE_INDEX_VPN_BITS 36 /* 48-bit user addresses, 4 KiB pages */

enum page_state {
	PAGE_NEVER = 0,       /* never touched or dropped: reads as zeros */
	PAGE_RESIDENT = 1,    /* mapped in the client (served by us, or present at registration) */
	PAGE_IN_FLIGHT = 2,   /* chosen as a victim; eviction batch not completed */
	PAGE_STORED = 3,      /* compressed in the pool: payload = pool handle */
	PAGE_SAME_FILLED = 4, /* payload = index of the fill word (see pattern table) */
	PAGE_ON_DISK = 5,     /* payload = swap slot; len/algo describe the bytes on disk */
	PAGE_WRITEBACK = 6,   /* in the pool and being written: payload = pool handle */
};

/*
 * page_entry_t layout (bit numbers):
 *   0..2   state
 *   3      referenced (stored: second chance; resident: CLOCK reference)
 *   4      queued: an LRU ring reference names this page (cleared only by
 *          whoever pops that reference, so a page is never queued twice)
 *   5..6   algo (enum compressor_algo) for stored/on-disk; free otherwise
 *   7..19  len: compressed length 0..4096 (stored/on-disk); free otherwise
 *   20..63 payload (44 bits): pool handle, swap slot, pattern index, or
 *          for IN_FLIGHT the slot in the eviction batch
 * The all-zero entry is PAGE_NEVER with nothing queued.
 */
typedef uint64_t page_entry_t;

#define PE_STATE_MASK 0x7ULL
#define PE_REFERENCED (1ULL << 3)
#define PE_QUEUED (1ULL << 4)
#define PE_ALGO_SHIFT 5
#define PE_ALGO_MASK (0x3ULL << PE_ALGO_SHIFT)
#define PE_LEN_SHIFT 7
#define PE_LEN_MASK (0x1fffULL << PE_LEN_SHIFT)
#define PE_PAYLOAD_SHIFT 20
#define PE_PAYLOAD_BITS 44
#define PE_PAYLOAD_MAX ((1ULL << PE_PAYLOAD_BITS) - 1)

static inline enum page_state pe_state(page_entry_t e)
{
	return (enum page_state)(e & PE_STATE_MASK);
}
static inline bool pe_referenced(page_entry_t e)
{
	return e & PE_REFERENCED;
}
static inline bool pe_queued(page_entry_t e)
{
	return e & PE_QUEUED;
}
static inline unsigned pe_algo(page_entry_t e)
{
	return (unsigned)((e & PE_ALGO_MASK) >> PE_ALGO_SHIFT);
}
static inline unsigned pe_len(page_entry_t e)
{
	return (unsigned)((e & PE_LEN_MASK) >> PE_LEN_SHIFT);
}
static inline uint64_t pe_payload(page_entry_t e)
{
	return e >> PE_PAYLOAD_SHIFT;
}
/* Build an entry; the queued bit of `old` is carried over (see above). */
static inline page_entry_t pe_make(page_entry_t old, enum page_state state, bool referenced,
				   unsigned algo, unsigned len, uint64_t payload)
{
	return (old & PE_QUEUED) | (uint64_t)state | (referenced ? PE_REFERENCED : 0) |
	       ((uint64_t)algo << PE_ALGO_SHIFT & PE_ALGO_MASK) |
	       ((uint64_t)len << PE_LEN_SHIFT & PE_LEN_MASK) | (payload << PE_PAYLOAD_SHIFT);
}

struct page_index;

struct page_index_usage {
	uint64_t bytes;   /* heap bytes of the tree: nodes and leaves */
	uint64_t leaves;  /* leaves allocated */
	uint64_t entries; /* non-zero entries */
};

int page_index_new(struct page_index **out);
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
int page_index_walk(struct page_index *index, uint64_t first, uint64_t last,
		    page_index_walk_fn fn, void *userdata);

void page_index_get_usage(const struct page_index *index, struct page_index_usage *usage);

/*
 * The same-filled pattern table: distinct fill words get small indices so
 * a same-filled page fits in a page entry and costs no pool memory.  Word
 * 0 is always index 0.  Global and thread-safe; bounded (returns -ENOSPC
 * when full, and the caller stores the page compressed instead).
 */
int pattern_intern(uint64_t word, uint64_t *index_out);
uint64_t pattern_word(uint64_t index);
