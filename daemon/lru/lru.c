// SPDX-License-Identifier: MIT
/*
 * The second-chance LRU: a FIFO of page references, one per cgroup and
 * fault thread, and the shrinker's count of what may be written back.
 *
 * Stores push at the tail; the shrinker walks from the head and its
 * callback decides per reference: written back or stale (dropped),
 * referenced (bit cleared by the callback, pushed again at the tail: the
 * second chance), busy (back to the tail, not counted), or stop (back at
 * the head, where the next walk resumes).  The FIFO holds references, not
 * entries, so a page freed by a fault needs no unlinking here: the walk
 * meets a reference whose page is gone and drops it (lazy deletion).
 *
 * Memory, since the FIFO costs as much per stored page as the page index
 * (issue 12: metadata at most 16 B per stored page):
 *
 *  - A reference is kept in 6 bytes, not 8: the caller's reference is
 *    (owner key << LRU_VPN_BITS | vpn) with a key of up to 28 bits, and the
 *    FIFO stores (owner slot << LRU_VPN_BITS | vpn) with a 12-bit slot.
 *    The owner table maps slots back to keys and counts the references
 *    each slot has in the FIFO (or held by a walker); a slot whose count
 *    falls to zero is free for another key.  So a key is never confused
 *    with another, even after its owner left: its slot is only reused once
 *    the walk has dropped all of its stale references.  An owner that
 *    left is told with lru_forget_owner(); when every slot is taken, a
 *    push first drops the references of such owners from the FIFO (one
 *    pass) to free their slots.  With 4096 live owners holding references
 *    here a push fails with -ENOSPC; the page then stays in the pool,
 *    unqueued.
 *  - The FIFO is a deque of blocks of one page each (682 references), not
 *    an array that doubles: it takes a block when the tail needs one and
 *    gives the head's block back when the walk has emptied it, so its
 *    memory follows the number of references, not a high-water mark.
 *    Up to LRU_SPARES_KEPT emptied blocks are kept for reuse.
 *
 * lru_memory_bytes() reports what it all costs, bookkeeping included.
 *
 * The count follows the kernel's zswap_shrinker_count(): pages read back
 * from disk since the last count show the shrinker went too far, so they
 * are consumed (with a compare-and-swap loop, since several counters may
 * run at once) and subtracted from the freeable count; what remains is
 * scaled by the memory the stored pages really occupy (pool pages over
 * stored pages), since writing back well-compressed pages frees little.
 *
 * Locking: lru->lock guards everything but the swapin count and is held
 * for pushes and pops only, never across a walk callback (the callback
 * does I/O submission and page table work, and may push to this LRU
 * itself).  A walker that has popped a reference must be able to put it
 * back without allocating: before it pops, the walk reserves a spare block
 * and a place in the block table for every reference held (`held`), and
 * it stops when it cannot.
 */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "util.h"
#include "lru/lru.h"

#define LRU_VPN_BITS	   36 /* the caller's vpn field (PAGE_INDEX_VPN_BITS) */
#define LRU_VPN_MASK	   ((1ULL << LRU_VPN_BITS) - 1)
#define LRU_SLOT_BITS	   12
#define LRU_MAX_OWNERS	   (1U << LRU_SLOT_BITS)
#define LRU_REF_BYTES	   6
#define LRU_BLOCK_REFS	   (4096 / LRU_REF_BYTES) /* 682 */
#define LRU_SPARES_KEPT	   2
#define LRU_SPARES_MAX	   8 /* reserved for held references: walkers at once */
#define LRU_INITIAL_TABLE  4 /* block table entries; a power of two */
#define LRU_INITIAL_OWNERS 4

struct lru_block {
	uint8_t refs[LRU_BLOCK_REFS][LRU_REF_BYTES];
};

struct lru_owner {
	uint64_t key;
	uint32_t refs; /* references in the FIFO or held by a walker; 0: free slot */
	bool gone;     /* lru_forget_owner(): its references are stale, compaction drops them */
};

struct lru {
	pthread_mutex_t lock;
	/* The deque: a ring of block pointers, blocks [first, first + nr_blocks). */
	struct lru_block **table;
	uint64_t table_size; /* a power of two */
	uint64_t first;	     /* table index of the head's block */
	uint64_t nr_blocks;
	uint64_t head;	 /* index of the oldest reference in the first block */
	uint64_t length; /* references in the FIFO */
	uint64_t held;	 /* references popped by walkers that may come back */
	struct lru_block *spares[LRU_SPARES_MAX];
	unsigned nr_spares;
	struct lru_owner *owners;
	uint32_t nr_owners;	  /* slots allocated in owners[] */
	uint32_t last_slot;	  /* the slot of the last push: pushes come in runs of one owner */
	bool forgotten;		  /* an owner was forgotten since the last compaction */
	uint64_t nr_disk_swapins; /* atomic: swapins not yet consumed by a count */
};

int lru_new(struct lru **out)
{
	struct lru *lru;

	lru = calloc(1, sizeof(*lru));
	if (!lru)
		return -ENOMEM;
	lru->table = calloc(LRU_INITIAL_TABLE, sizeof(*lru->table));
	lru->owners = calloc(LRU_INITIAL_OWNERS, sizeof(*lru->owners));
	if (!lru->table || !lru->owners) {
		free(lru->table);
		free(lru->owners);
		free(lru);
		return -ENOMEM;
	}
	lru->table_size = LRU_INITIAL_TABLE;
	lru->nr_owners = LRU_INITIAL_OWNERS;
	pthread_mutex_init(&lru->lock, NULL);
	*out = lru;
	return 0;
}

struct lru *lru_free(struct lru *lru)
{
	if (!lru)
		return NULL;
	pthread_mutex_destroy(&lru->lock);
	for (uint64_t i = 0; i < lru->nr_blocks; i++)
		free(lru->table[(lru->first + i) & (lru->table_size - 1)]);
	for (unsigned i = 0; i < lru->nr_spares; i++)
		free(lru->spares[i]);
	free(lru->table);
	free(lru->owners);
	free(lru);
	return NULL;
}

/* ---------------------------------------------------------------------------
 * The deque of blocks (caller holds lru->lock)
 */

static struct lru_block **block_at(struct lru *lru, uint64_t i)
{
	return &lru->table[(lru->first + i) & (lru->table_size - 1)];
}

static uint8_t *ref_at(struct lru *lru, uint64_t pos)
{
	uint64_t g = lru->head + pos;

	return (*block_at(lru, g / LRU_BLOCK_REFS))->refs[g % LRU_BLOCK_REFS];
}

/* Room in the table for `extra` more blocks; -ENOMEM. */
static int table_reserve(struct lru *lru, uint64_t extra)
{
	struct lru_block **table;
	uint64_t size = lru->table_size;

	if (lru->nr_blocks + extra <= size)
		return 0;
	while (size < lru->nr_blocks + extra)
		size *= 2;
	table = calloc(size, sizeof(*table));
	if (!table)
		return -ENOMEM;
	for (uint64_t i = 0; i < lru->nr_blocks; i++)
		table[i] = *block_at(lru, i);
	free(lru->table);
	lru->table = table;
	lru->table_size = size;
	lru->first = 0;
	return 0;
}

/* At least `want` spare blocks; -ENOMEM. */
static int spares_reserve(struct lru *lru, unsigned want)
{
	while (lru->nr_spares < want) {
		struct lru_block *b;

		if (lru->nr_spares == UZ_ARRAY_SIZE(lru->spares))
			return -ENOMEM; /* more walkers at once than we keep room for */
		b = malloc(sizeof(*b));
		if (!b)
			return -ENOMEM;
		lru->spares[lru->nr_spares++] = b;
	}
	return 0;
}

/* A block for a new end of the deque: a spare, reserved by the caller. */
static struct lru_block *spare_take(struct lru *lru)
{
	return lru->spares[--lru->nr_spares];
}

static void spare_give(struct lru *lru, struct lru_block *b)
{
	if (lru->nr_spares < LRU_SPARES_KEPT)
		lru->spares[lru->nr_spares++] = b;
	else
		free(b);
}

static bool tail_needs_block(struct lru *lru)
{
	return lru->head + lru->length == lru->nr_blocks * LRU_BLOCK_REFS;
}

/* The caller has reserved a spare and a table place if tail_needs_block(). */
static void put_tail(struct lru *lru, const uint8_t *raw)
{
	if (tail_needs_block(lru))
		*block_at(lru, lru->nr_blocks++) = spare_take(lru);
	memcpy(ref_at(lru, lru->length), raw, LRU_REF_BYTES);
	lru->length++;
}

/* Likewise for the head: a block is needed when the head is at a block's start. */
static void put_head(struct lru *lru, const uint8_t *raw)
{
	if (lru->nr_blocks == 0 || lru->head == 0) {
		lru->first = (lru->first - 1) & (lru->table_size - 1);
		lru->table[lru->first] = spare_take(lru);
		lru->nr_blocks++;
		lru->head = LRU_BLOCK_REFS;
	}
	lru->head--;
	memcpy(ref_at(lru, 0), raw, LRU_REF_BYTES);
	lru->length++;
}

static void take_head(struct lru *lru, uint8_t *raw)
{
	memcpy(raw, ref_at(lru, 0), LRU_REF_BYTES);
	lru->head++;
	lru->length--;
	if (lru->head == LRU_BLOCK_REFS || lru->length == 0) {
		/* Give back every block the FIFO no longer reaches. */
		uint64_t keep = lru->length ? 1 + (lru->head % LRU_BLOCK_REFS + lru->length - 1) /
						      LRU_BLOCK_REFS
					    : 0;

		while (lru->nr_blocks > keep) {
			spare_give(lru, lru->table[lru->first]);
			lru->first = (lru->first + 1) & (lru->table_size - 1);
			lru->nr_blocks--;
		}
		lru->head %= LRU_BLOCK_REFS;
		if (!lru->length)
			lru->head = 0;
	}
}

/* ---------------------------------------------------------------------------
 * References and owner slots (caller holds lru->lock)
 */

static void raw_encode(uint8_t *raw, uint64_t internal)
{
	for (unsigned i = 0; i < LRU_REF_BYTES; i++)
		raw[i] = (uint8_t)(internal >> (8 * i));
}

static uint64_t raw_decode(const uint8_t *raw)
{
	uint64_t internal = 0;

	for (unsigned i = 0; i < LRU_REF_BYTES; i++)
		internal |= (uint64_t)raw[i] << (8 * i);
	return internal;
}

static uint32_t raw_slot(const uint8_t *raw)
{
	return (uint32_t)(raw_decode(raw) >> LRU_VPN_BITS);
}

/* The caller's reference of a stored one. */
static uint64_t raw_ref(const struct lru *lru, const uint8_t *raw)
{
	uint64_t internal = raw_decode(raw);

	return lru->owners[internal >> LRU_VPN_BITS].key << LRU_VPN_BITS |
	       (internal & LRU_VPN_MASK);
}

/*
 * Drop from the FIFO every reference of an owner that is gone, so that
 * their slots come free without waiting for a walk to reach them.  In
 * place, keeping the order; references held by walkers are not in the
 * FIFO and keep their slots.  O(length): only when every slot is taken.
 */
static void compact_gone(struct lru *lru)
{
	uint64_t kept = 0, keep_blocks;

	for (uint64_t i = 0; i < lru->length; i++) {
		uint8_t *raw = ref_at(lru, i);
		uint32_t slot = raw_slot(raw);

		if (lru->owners[slot].gone) {
			lru->owners[slot].refs--;
			continue;
		}
		if (kept != i)
			memcpy(ref_at(lru, kept), raw, LRU_REF_BYTES);
		kept++;
	}
	lru->length = kept;
	if (!kept)
		lru->head = 0;
	keep_blocks = kept ? (lru->head + kept + LRU_BLOCK_REFS - 1) / LRU_BLOCK_REFS : 0;
	while (lru->nr_blocks > keep_blocks)
		spare_give(lru, *block_at(lru, --lru->nr_blocks));
}

/* The slot of a key, taking a free one for a new key; -ENOSPC when none is free, -ENOMEM. */
static int64_t slot_of(struct lru *lru, uint64_t key)
{
	struct lru_owner *owners;
	uint32_t i, free_slot = UINT32_MAX, n;
	bool compacted = false;

	if (lru->owners[lru->last_slot].refs && lru->owners[lru->last_slot].key == key &&
	    !lru->owners[lru->last_slot].gone)
		return lru->last_slot;
again:
	for (i = 0; i < lru->nr_owners; i++) {
		if (!lru->owners[i].refs) {
			if (free_slot == UINT32_MAX)
				free_slot = i;
		} else if (lru->owners[i].key == key && !lru->owners[i].gone) {
			return lru->last_slot = i;
		}
	}
	if (free_slot == UINT32_MAX && lru->nr_owners == LRU_MAX_OWNERS && lru->forgotten &&
	    !compacted) {
		compact_gone(lru);
		lru->forgotten = false;
		compacted = true;
		goto again;
	}
	if (free_slot == UINT32_MAX) {
		if (lru->nr_owners == LRU_MAX_OWNERS)
			return -ENOSPC;
		n = uz_min(lru->nr_owners * 2, LRU_MAX_OWNERS);
		owners = realloc(lru->owners, n * sizeof(*owners));
		if (!owners)
			return -ENOMEM;
		memset(owners + lru->nr_owners, 0, (n - lru->nr_owners) * sizeof(*owners));
		free_slot = lru->nr_owners;
		lru->owners = owners;
		lru->nr_owners = n;
	}
	lru->owners[free_slot].key = key;
	lru->owners[free_slot].gone = false;
	return lru->last_slot = free_slot;
}

int lru_push(struct lru *lru, uint64_t ref)
{
	uint8_t raw[LRU_REF_BYTES];
	int64_t slot;
	int r;

	pthread_mutex_lock(&lru->lock);
	slot = slot_of(lru, ref >> LRU_VPN_BITS);
	r = slot < 0 ? (int)slot : 0;
	/* Our block, if we need one, and not one a walker has reserved for its put-back. */
	if (r == 0 && tail_needs_block(lru))
		r = table_reserve(lru, lru->held + 1);
	if (r == 0 && tail_needs_block(lru))
		r = spares_reserve(lru, (unsigned)lru->held + 1);
	if (r == 0) {
		lru->owners[slot].refs++;
		raw_encode(raw, (uint64_t)slot << LRU_VPN_BITS | (ref & LRU_VPN_MASK));
		put_tail(lru, raw);
	}
	pthread_mutex_unlock(&lru->lock);
	return r;
}

bool lru_pop(struct lru *lru, uint64_t *ref)
{
	uint8_t raw[LRU_REF_BYTES];
	bool found = false;

	pthread_mutex_lock(&lru->lock);
	if (lru->length) {
		take_head(lru, raw);
		*ref = raw_ref(lru, raw);
		lru->owners[raw_slot(raw)].refs--;
		found = true;
	}
	pthread_mutex_unlock(&lru->lock);
	return found;
}

void lru_forget_owner(struct lru *lru, uint64_t key)
{
	pthread_mutex_lock(&lru->lock);
	for (uint32_t i = 0; i < lru->nr_owners; i++)
		if (lru->owners[i].refs && lru->owners[i].key == key)
			lru->owners[i].gone = lru->forgotten = true;
	pthread_mutex_unlock(&lru->lock);
}

uint64_t lru_length(struct lru *lru)
{
	uint64_t length;

	pthread_mutex_lock(&lru->lock);
	length = lru->length;
	pthread_mutex_unlock(&lru->lock);
	return length;
}

uint64_t lru_memory_bytes(struct lru *lru)
{
	uint64_t bytes;

	pthread_mutex_lock(&lru->lock);
	bytes = sizeof(*lru) + (lru->nr_blocks + lru->nr_spares) * sizeof(struct lru_block) +
		lru->table_size * sizeof(*lru->table) + lru->nr_owners * sizeof(*lru->owners);
	pthread_mutex_unlock(&lru->lock);
	return bytes;
}

int lru_walk(struct lru *lru, uint64_t nr_to_scan, lru_walk_fn fn, void *userdata,
	     struct lru_walk_result *result)
{
	struct lru_walk_result counts = {0};
	uint8_t raw[LRU_REF_BYTES];
	uint64_t visits_left, ref;

	/*
	 * Busy references are not counted as scanned; bound the visits as
	 * well so that a FIFO of busy references cannot keep us here.
	 */
	pthread_mutex_lock(&lru->lock);
	visits_left = nr_to_scan + lru->length;
	pthread_mutex_unlock(&lru->lock);

	while (counts.scanned < nr_to_scan && visits_left > 0) {
		enum lru_walk_status status;

		pthread_mutex_lock(&lru->lock);
		/*
		 * Room to put back every held reference, ours included, at
		 * either end: a spare block each and their places in the table.
		 */
		if (lru->length == 0 || table_reserve(lru, lru->held + 1) < 0 ||
		    spares_reserve(lru, (unsigned)lru->held + 1) < 0) {
			pthread_mutex_unlock(&lru->lock);
			break;
		}
		take_head(lru, raw);
		ref = raw_ref(lru, raw);
		lru->held++;
		pthread_mutex_unlock(&lru->lock);
		visits_left--;

		status = fn(ref, userdata);

		pthread_mutex_lock(&lru->lock);
		lru->held--;
		switch (status) {
		case LRU_REMOVED:
			counts.scanned++;
			counts.removed++;
			lru->owners[raw_slot(raw)].refs--;
			break;
		case LRU_ROTATE:
			counts.scanned++;
			counts.rotated++;
			put_tail(lru, raw);
			break;
		case LRU_RETRY:
			put_tail(lru, raw);
			break;
		case LRU_STOP:
			put_head(lru, raw);
			break;
		}
		pthread_mutex_unlock(&lru->lock);
		if (status == LRU_STOP)
			break;
	}

	if (result)
		*result = counts;
	return 0;
}
void lru_note_disk_swapin(struct lru *lru)
{
	__atomic_fetch_add(&lru->nr_disk_swapins, 1, __ATOMIC_RELAXED);
}

uint64_t lru_disk_swapins_pending(struct lru *lru)
{
	return __atomic_load_n(&lru->nr_disk_swapins, __ATOMIC_RELAXED);
}

/* x * numerator / denominator without overflowing the product. */
static uint64_t mult_frac(uint64_t x, uint64_t numerator, uint64_t denominator)
{
	return (uint64_t)((unsigned __int128)x * numerator / denominator);
}

uint64_t lru_shrinker_count(struct lru *lru, uint64_t nr_stored, uint64_t nr_backing_pages)
{
	uint64_t nr_freeable, swapins, remain;

	if (nr_stored == 0)
		return 0;
	/* Stale references are in the ring too: never count more than is stored. */
	nr_freeable = uz_min(lru_length(lru), nr_stored);
	if (nr_freeable == 0)
		return 0;

	/* Consume up to nr_freeable swapins; the rest count against the next call. */
	swapins = __atomic_load_n(&lru->nr_disk_swapins, __ATOMIC_RELAXED);
	do {
		remain = swapins > nr_freeable ? swapins - nr_freeable : 0;
	} while (!__atomic_compare_exchange_n(&lru->nr_disk_swapins, &swapins, remain, false,
					      __ATOMIC_RELAXED, __ATOMIC_RELAXED));
	nr_freeable -= swapins - remain;
	if (nr_freeable == 0)
		return 0;

	/* Scale by the memory saving: nr_backing_pages of pool hold nr_stored pages. */
	return mult_frac(nr_freeable, nr_backing_pages, nr_stored);
}
