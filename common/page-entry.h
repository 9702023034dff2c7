/* SPDX-License-Identifier: MIT */
/*
 * The page entry: what uzswapd knows about one page of a client, in one
 * 64-bit word.  Entries live in the client's store (common/store-layout.h), a
 * memfd the client holds, so both sides read this layout: the daemon
 * serves faults from it, and the client library reads it (read-only) when
 * no daemon came back, to put back what it can and poison the rest
 * (docs/RELIABILITY.md).
 */
#pragma once

#include <stdbool.h>
#include <stdint.h>

enum page_state {
	PAGE_NEVER = 0,	      /* never touched or dropped: reads as zeros */
	PAGE_RESIDENT = 1,    /* mapped in the client (served by us, or present at registration) */
	PAGE_IN_FLIGHT = 2,   /* chosen as a victim; eviction batch not completed */
	PAGE_STORED = 3,      /* compressed in the pool: payload = pool handle */
	PAGE_SAME_FILLED = 4, /* payload = the 32-bit fill pattern (see pe_fill_word) */
	PAGE_ON_DISK = 5,     /* payload = swap slot; len/algo describe the bytes on disk */
	PAGE_WRITEBACK = 6,   /* in the pool and being written: payload = pool handle */
	PAGE_LOST = 7,	      /* its bytes could not be recovered: a fault poisons it (SIGBUS) */
};

/*
 * page_entry_t layout (bit numbers):
 *   0..2   state
 *   3      referenced (stored: second chance; resident: CLOCK reference)
 *   4      queued: an LRU reference names this page (cleared only by
 *          whoever pops that reference, so a page is never queued twice)
 *   5..6   algo (enum compressor_algo) for stored/on-disk; free otherwise
 *   7..19  len: compressed length 0..4096 (stored/on-disk); for a member
 *          of a multi-page unit (stored/writeback only, below)
 *          PE_LEN_UNIT + the unit object's length / 4; free otherwise
 *   20..63 payload (44 bits): pool handle (42 bits; a unit member's page
 *          of its unit in the two bits above), swap slot, fill pattern,
 *          or for IN_FLIGHT the slot in the eviction batch
 * The all-zero entry is PAGE_NEVER with nothing queued.
 */
typedef uint64_t page_entry_t;

#define PE_STATE_MASK	 0x7ULL
#define PE_REFERENCED	 (1ULL << 3)
#define PE_QUEUED	 (1ULL << 4)
#define PE_ALGO_SHIFT	 5
#define PE_ALGO_MASK	 (0x3ULL << PE_ALGO_SHIFT)
#define PE_LEN_SHIFT	 7
#define PE_LEN_MASK	 (0x1fffULL << PE_LEN_SHIFT)
#define PE_PAYLOAD_SHIFT 20
#define PE_PAYLOAD_BITS	 44
#define PE_PAYLOAD_MAX	 ((1ULL << PE_PAYLOAD_BITS) - 1)

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

/*
 * Multi-page units: PE_UNIT_PAGES pages adjacent when they were evicted,
 * the first at a vpn that is a multiple of PE_UNIT_PAGES, compressed
 * together into one pool object.  Every member's entry is
 * STORED (or WRITEBACK) with a len field above PE_LEN_UNIT and the
 * object's handle in its payload (one pool reference per member), and
 * above the handle which page of the unit it is (pe_unit_page()): a
 * member that mremap moved is still decoded right, and its fellow members
 * are those with the same handle one page apart.  The object is a struct
 * pe_unit_header, then the compressed bytes of the PE_UNIT_PAGES pages as
 * one input, padded to a multiple of 4 bytes; the len field holds the
 * padded length / 4, so a member's share of the object is exact.  Only
 * stored pages form units: ON_DISK entries are single pages (a member
 * written back is compressed again alone).
 */
#define PE_UNIT_PAGES	   4U
#define PE_LEN_UNIT	   4096U /* len fields above: a unit member */
#define PE_UNIT_MAGIC	   0xa7U
#define PE_UNIT_OBJECT_MAX ((0x1fffU - PE_LEN_UNIT) * 4) /* the len field's largest unit object */
#define PE_HANDLE_BITS	   42 /* of the payload: a pool handle (daemon/pool: POOL_HANDLE_BITS) */
#define PE_HANDLE_MASK	   ((1ULL << PE_HANDLE_BITS) - 1)

/* A member's share is a quarter of its unit's object: the len field says so. */
_Static_assert(PE_UNIT_PAGES == 4, "pe_pool_share() takes a member's share as a quarter");
_Static_assert(PE_PAYLOAD_BITS - PE_HANDLE_BITS == 2, "a unit's page number takes two bits");

struct pe_unit_header {
	uint16_t compressed_len; /* bytes after the header */
	uint8_t pages;		 /* PE_UNIT_PAGES */
	uint8_t magic;		 /* PE_UNIT_MAGIC */
};

static inline bool pe_unit(page_entry_t e)
{
	enum page_state state = pe_state(e);

	return (state == PAGE_STORED || state == PAGE_WRITEBACK) && pe_len(e) > PE_LEN_UNIT;
}
/* The pool handle a STORED or WRITEBACK entry names. */
static inline uint64_t pe_handle(page_entry_t e)
{
	return pe_payload(e) & PE_HANDLE_MASK;
}
/* Which page of its unit a member is (0 for an entry that is not one). */
static inline unsigned pe_unit_page(page_entry_t e)
{
	return (unsigned)(pe_payload(e) >> PE_HANDLE_BITS);
}
/* The payload of page `page` of the unit whose object is `handle`. */
static inline uint64_t pe_unit_payload(uint64_t handle, unsigned page)
{
	return handle | (uint64_t)page << PE_HANDLE_BITS;
}
/* Bytes of the pool object a stored entry names (the whole unit's for a member). */
static inline unsigned pe_object_len(page_entry_t e)
{
	return pe_unit(e) ? (pe_len(e) - PE_LEN_UNIT) * 4 : pe_len(e);
}
/* This entry's share of its object's bytes: all of it, or a quarter of a unit's. */
static inline unsigned pe_pool_share(page_entry_t e)
{
	return pe_unit(e) ? pe_len(e) - PE_LEN_UNIT : pe_len(e);
}
/* The len field of a unit member whose object is padded_len bytes (a multiple of 4). */
static inline unsigned pe_unit_len_field(unsigned padded_len)
{
	return PE_LEN_UNIT + padded_len / 4;
}

/*
 * Same-filled pages: a page that is one 64-bit word repeated is recorded
 * in its entry alone when that word is itself a 32-bit pattern repeated
 * (zero, all ones, a repeated byte, short or int: nearly every same-filled
 * page); the payload is the pattern.  Other fill words are compressed like
 * any page (to a few dozen bytes).  The entry needs no table to be read,
 * which is what lets the client library restore such pages by itself.
 */
static inline bool pe_fill_encode(uint64_t word, uint64_t *payload)
{
	if ((word >> 32) != (word & 0xffffffffULL))
		return false;
	*payload = word & 0xffffffffULL;
	return true;
}
static inline uint64_t pe_fill_word(uint64_t payload)
{
	return (payload & 0xffffffffULL) | (payload << 32);
}
