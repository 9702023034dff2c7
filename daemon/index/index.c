// SPDX-License-Identifier: MIT
/*
 * The page index: a radix tree from a 36-bit virtual page number to a
 * 64-bit page entry, built on the cells of the client's store (a memfd the
 * client holds, daemon/store), so that it outlives the daemon.
 *
 * Each level consumes 6 bits of the vpn: five levels of interior nodes
 * (64 child cell numbers each) above leaves of 64 entries.  Small leaves
 * keep a sparse mapping cheap: a terabyte region with a page stored here
 * and there pays about one leaf and one or two nodes per stored page, not
 * a flat array, while a dense region costs 8 bytes per page plus one cell
 * number per 64 pages.
 *
 * Every node and leaf carries a 64-bit occupancy bitmap: for a node, which
 * children exist; for a leaf, which entries are non-zero.  The bitmap tells
 * when a leaf or node has become empty and must be freed, and lets a walk
 * jump to the next occupied slot with one count-trailing-zeros instead of
 * scanning zeros.  The slots are the truth and the bitmaps a summary of
 * them: recovery recomputes the bitmaps.
 *
 * Crash safety (a daemon killed at any instruction leaves a tree the next
 * one can use): a cell is zeroed by the store before it is linked, and
 * linked with one aligned store of its number into its parent's slot (or
 * the header's root); an entry is one aligned 64-bit store.  An empty cell
 * is unlinked before it goes back to the free list, which lives in daemon
 * memory.  So after a crash the tree holds every entry written, at worst
 * with an empty cell or a stale occupancy bit, and cells it no longer
 * reaches are simply free (page_index_recover()).
 *
 * Cells move when the store grows (a cell allocation may remap it), so no
 * pointer to a cell is kept across an allocation.  The walk does not hold
 * pointers into the tree across its callback: it finds the next non-zero
 * entry from the root, calls back with a copy, and stores the result with
 * page_index_set().  The callback may therefore set or clear any entry of
 * the same index, and empty leaves go at once.
 *
 * No locking: an index belongs to the one fault thread that serves its
 * client.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "util.h"
#include "index/index.h"
#include "store/store.h"

#define INDEX_BITS   UZ_STORE_CELL_BITS
#define INDEX_FANOUT UZ_STORE_CELL_FANOUT
#define INDEX_MASK   (INDEX_FANOUT - 1)
/* Interior levels above the leaves: 36 bits = 6 levels of 6 bits, one of them leaves. */
#define INDEX_NODE_LEVELS (UZ_STORE_LEVELS - 1)
#define INDEX_VPN_MAX	  ((1ULL << PAGE_INDEX_VPN_BITS) - 1)

_Static_assert(PAGE_INDEX_VPN_BITS == UZ_STORE_VPN_BITS, "index and store agree on vpn bits");

struct page_index {
	struct store *store;
	uint64_t nodes;
	uint64_t leaves;
	uint64_t entries;
};

/* The vpn bit where the slot index of a node at `level` starts (leaves: level 0). */
static unsigned level_shift(unsigned level)
{
	return level * INDEX_BITS;
}

static unsigned slot_at(uint64_t vpn, unsigned level)
{
	return (unsigned)(vpn >> level_shift(level)) & INDEX_MASK;
}

static inline struct uz_store_cell *cell_at(const struct page_index *index, uint32_t cell)
{
	return store_cell(index->store, cell);
}

static inline uint32_t index_root(const struct page_index *index)
{
	return store_header(index->store)->index_root;
}

static inline void index_set_root(struct page_index *index, uint32_t cell)
{
	__atomic_store_n(&store_header(index->store)->index_root, cell, __ATOMIC_RELEASE);
}

/* Link a child (one aligned store: a crash sees it or not). */
static inline void cell_link(struct uz_store_cell *parent, unsigned slot, uint32_t child)
{
	__atomic_store_n(&parent->slot[slot], (uint64_t)child, __ATOMIC_RELEASE);
	if (child)
		parent->present |= 1ULL << slot;
	else
		parent->present &= ~(1ULL << slot);
}

int page_index_new(struct page_index **out, struct store *store)
{
	struct page_index *index;

	index = calloc(1, sizeof(*index));
	if (!index)
		return -ENOMEM;
	index->store = store;
	*out = index;
	return 0;
}

struct page_index *page_index_free(struct page_index *index)
{
	free(index);
	return NULL;
}

page_entry_t page_index_get(const struct page_index *index, uint64_t vpn)
{
	uint32_t cell = index_root(index);
	unsigned level;

	if (vpn > INDEX_VPN_MAX || !cell)
		return 0;
	for (level = INDEX_NODE_LEVELS; level >= 1; level--) {
		cell = (uint32_t)cell_at(index, cell)->slot[slot_at(vpn, level)];
		if (!cell)
			return 0;
	}
	return cell_at(index, cell)->slot[slot_at(vpn, 0)];
}

/*
 * Clears the entry of vpn under `cell` (of `level`); returns true when the
 * cell became empty (the caller unlinks and frees it).
 */
static bool node_clear(struct page_index *index, uint32_t cell, unsigned level, uint64_t vpn)
{
	struct uz_store_cell *node = cell_at(index, cell);
	unsigned slot = slot_at(vpn, level);
	uint32_t child;

	if (level == 0) {
		if (!node->slot[slot])
			return false;
		__atomic_store_n(&node->slot[slot], 0, __ATOMIC_RELEASE);
		node->present &= ~(1ULL << slot);
		index->entries--;
		return node->present == 0;
	}
	child = (uint32_t)node->slot[slot];
	if (!child || !node_clear(index, child, level - 1, vpn))
		return false;
	cell_link(node, slot, 0); /* unlinked before it is freed */
	store_cell_free(index->store, child);
	if (level == 1)
		index->leaves--;
	else
		index->nodes--;
	return node->present == 0;
}

int page_index_set(struct page_index *index, uint64_t vpn, page_entry_t entry)
{
	uint32_t cell, child;
	unsigned level, slot;
	int r;

	if (vpn > INDEX_VPN_MAX)
		return -ERANGE;

	if (entry == 0) {
		cell = index_root(index);
		if (cell && node_clear(index, cell, INDEX_NODE_LEVELS, vpn)) {
			index_set_root(index, 0);
			store_cell_free(index->store, cell);
			index->nodes--;
		}
		return 0;
	}

	/*
	 * Allocate the missing path top-down.  A failure part way leaves empty
	 * nodes behind; they are harmless (reachable, freed with the store) and
	 * rare, so they are not unwound.  An allocation may move the store: the
	 * parent is looked up again by number after each one.
	 */
	cell = index_root(index);
	if (!cell) {
		r = store_cell_alloc(index->store, &cell);
		if (r < 0)
			return r;
		index->nodes++;
		index_set_root(index, cell);
	}
	for (level = INDEX_NODE_LEVELS; level >= 1; level--) {
		slot = slot_at(vpn, level);
		child = (uint32_t)cell_at(index, cell)->slot[slot];
		if (!child) {
			r = store_cell_alloc(index->store, &child);
			if (r < 0)
				return r;
			if (level == 1)
				index->leaves++;
			else
				index->nodes++;
			cell_link(cell_at(index, cell), slot, child);
		}
		cell = child;
	}
	{
		struct uz_store_cell *leaf = cell_at(index, cell);

		slot = slot_at(vpn, 0);
		if (!(leaf->present & (1ULL << slot))) {
			leaf->present |= 1ULL << slot;
			index->entries++;
		}
		__atomic_store_n(&leaf->slot[slot], entry, __ATOMIC_RELEASE);
	}
	return 0;
}

/* Bits of `present` at or above `from`. */
static uint64_t bits_from(uint64_t present, unsigned from)
{
	return present & (~0ULL << from);
}

/*
 * The first vpn >= from under `cell` (of `level`) with a non-zero entry;
 * false when there is none.
 */
static bool node_find_next(const struct page_index *index, uint32_t cell, unsigned level,
			   uint64_t from, uint64_t *found)
{
	const struct uz_store_cell *node = cell_at(index, cell);
	unsigned shift = level_shift(level);
	uint64_t candidates = bits_from(node->present, slot_at(from, level));

	while (candidates) {
		unsigned slot = (unsigned)__builtin_ctzll(candidates);
		/* Past the slot `from` is in, start at the beginning of the child. */
		uint64_t child_from = slot == slot_at(from, level)
					  ? from
					  : (from & ~((1ULL << (shift + INDEX_BITS)) - 1)) |
						((uint64_t)slot << shift);
		uint32_t child = (uint32_t)node->slot[slot];

		candidates &= candidates - 1;
		if (level == 1) {
			const struct uz_store_cell *leaf = cell_at(index, child);
			uint64_t entries = bits_from(leaf->present, slot_at(child_from, 0));

			if (entries) {
				*found = (child_from & ~(uint64_t)INDEX_MASK) |
					 (unsigned)__builtin_ctzll(entries);
				return true;
			}
		} else if (node_find_next(index, child, level - 1, child_from, found)) {
			return true;
		}
	}
	return false;
}

int page_index_walk(struct page_index *index, uint64_t first, uint64_t last, page_index_walk_fn fn,
		    void *userdata)
{
	uint64_t vpn, cursor = first;
	int r;

	if (last > INDEX_VPN_MAX)
		last = INDEX_VPN_MAX;
	while (cursor <= last && index_root(index)) {
		page_entry_t entry, old;

		if (!node_find_next(index, index_root(index), INDEX_NODE_LEVELS, cursor, &vpn) ||
		    vpn > last)
			break;
		old = entry = page_index_get(index, vpn);
		r = fn(vpn, &entry, userdata);
		if (entry != old) {
			int set = page_index_set(index, vpn, entry);

			if (set < 0)
				return set;
		}
		if (r != 0)
			return r;
		if (vpn == INDEX_VPN_MAX)
			break;
		cursor = vpn + 1;
	}
	return 0;
}

void page_index_get_usage(const struct page_index *index, struct page_index_usage *usage)
{
	usage->bytes = (index->nodes + index->leaves) * sizeof(struct uz_store_cell);
	usage->leaves = index->leaves;
	usage->entries = index->entries;
}

/* --- recovery ------------------------------------------------------------- */

struct recover_ctx {
	struct page_index *index;
	uint64_t *used; /* bit n: cell n is reached */
	uint32_t bump;
};

/* Check the subtree at `cell` (of `level`), mark its cells, rebuild its bits. */
static int recover_cell(struct recover_ctx *ctx, uint32_t cell, unsigned level)
{
	struct uz_store_cell *node;
	uint64_t present = 0;

	if (cell == 0 || cell >= ctx->bump || (ctx->used[cell / 64] & (1ULL << (cell % 64))))
		return -EBADMSG;
	ctx->used[cell / 64] |= 1ULL << (cell % 64);
	node = cell_at(ctx->index, cell);
	for (unsigned slot = 0; slot < INDEX_FANOUT; slot++) {
		uint64_t value = node->slot[slot];
		int r;

		if (!value)
			continue;
		present |= 1ULL << slot;
		if (level == 0) {
			ctx->index->entries++;
			continue;
		}
		if (value > UINT32_MAX)
			return -EBADMSG;
		r = recover_cell(ctx, (uint32_t)value, level - 1);
		if (r < 0)
			return r;
	}
	node->present = present;
	if (level == 0)
		ctx->index->leaves++;
	else
		ctx->index->nodes++;
	return 0;
}

int page_index_recover(struct page_index **out, struct store *store)
{
	struct page_index *index;
	struct recover_ctx ctx;
	uint32_t root;
	int r;

	r = page_index_new(&index, store);
	if (r < 0)
		return r;
	ctx = (struct recover_ctx){.index = index, .bump = store_cells_bump(store)};
	ctx.used = calloc((ctx.bump + 63) / 64, sizeof(uint64_t));
	if (!ctx.used) {
		page_index_free(index);
		return -ENOMEM;
	}
	root = index_root(index);
	r = root ? recover_cell(&ctx, root, INDEX_NODE_LEVELS) : 0;
	if (r == 0)
		r = store_cells_rebuild(store, ctx.used);
	free(ctx.used);
	if (r < 0) {
		page_index_free(index);
		return r;
	}
	*out = index;
	return 0;
}
