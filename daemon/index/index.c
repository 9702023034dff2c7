// SPDX-License-Identifier: MIT
/*
 * The page index: a radix tree from a 36-bit virtual page number to a
 * 64-bit page entry.
 *
 * Each level consumes 6 bits of the vpn: five levels of interior nodes
 * (64 child pointers each) above leaves of 64 entries.  Small leaves keep
 * a sparse mapping cheap: a terabyte region with a page stored here and
 * there pays about one leaf and one or two nodes per stored page, not a
 * flat array, while a dense region costs 8 bytes per page plus one pointer
 * per 64 pages.
 *
 * Every node and leaf carries a 64-bit occupancy bitmap: for a node, which
 * children exist; for a leaf, which entries are non-zero.  The bitmap is
 * the leaf's non-zero count (by popcount), tells set when a leaf or node
 * has become empty and must be freed, and lets a walk jump to the next
 * occupied slot with one count-trailing-zeros instead of scanning zeros.
 *
 * The walk does not hold pointers into the tree across its callback: it
 * finds the next non-zero entry from the root, calls back with a copy, and
 * stores the result with page_index_set().  The callback may therefore set
 * or clear any entry of the same index, and empty leaves go at once.
 *
 * No locking: an index belongs to the one fault thread that serves its
 * client.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "util.h"
#include "index/index.h"

#define INDEX_BITS   6
#define INDEX_FANOUT (1U << INDEX_BITS)
#define INDEX_MASK   (INDEX_FANOUT - 1)
/* Interior levels above the leaves: 36 bits = 6 levels of 6 bits, one of them leaves. */
#define INDEX_NODE_LEVELS (PAGE_INDEX_VPN_BITS / INDEX_BITS - 1)
#define INDEX_VPN_MAX	  ((1ULL << PAGE_INDEX_VPN_BITS) - 1)

_Static_assert(PAGE_INDEX_VPN_BITS % INDEX_BITS == 0, "vpn bits must split into levels");

struct index_leaf {
	uint64_t present; /* bit i: entries[i] != 0 */
	page_entry_t entries[INDEX_FANOUT];
};

struct index_node {
	uint64_t present; /* bit i: child[i] != NULL */
	void *child[INDEX_FANOUT];
};

struct page_index {
	struct index_node *root; /* NULL while the index is empty */
	uint64_t bytes;
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

int page_index_new(struct page_index **out)
{
	struct page_index *index;

	index = calloc(1, sizeof(*index));
	if (!index)
		return -ENOMEM;
	index->bytes = sizeof(*index);
	*out = index;
	return 0;
}

/* Frees a node of `level` (>= 1) and everything under it. */
static void node_free(struct index_node *node, unsigned level)
{
	uint64_t present = node->present;

	while (present) {
		unsigned slot = (unsigned)__builtin_ctzll(present);

		present &= present - 1;
		if (level == 1)
			free(node->child[slot]);
		else
			node_free(node->child[slot], level - 1);
	}
	free(node);
}

struct page_index *page_index_free(struct page_index *index)
{
	if (!index)
		return NULL;
	if (index->root)
		node_free(index->root, INDEX_NODE_LEVELS);
	free(index);
	return NULL;
}

page_entry_t page_index_get(const struct page_index *index, uint64_t vpn)
{
	const struct index_node *node = index->root;
	const struct index_leaf *leaf;
	unsigned level;

	if (vpn > INDEX_VPN_MAX || !node)
		return 0;
	for (level = INDEX_NODE_LEVELS; level > 1; level--) {
		node = node->child[slot_at(vpn, level)];
		if (!node)
			return 0;
	}
	leaf = node->child[slot_at(vpn, 1)];
	return leaf ? leaf->entries[slot_at(vpn, 0)] : 0;
}

/*
 * Clears the entry of vpn under node (of `level`); returns true when the
 * node became empty (the caller frees it and drops its pointer).
 */
static bool node_clear(struct page_index *index, struct index_node *node, unsigned level,
		       uint64_t vpn)
{
	unsigned slot = slot_at(vpn, level);
	bool child_empty;

	if (!(node->present & (1ULL << slot)))
		return false;
	if (level == 1) {
		struct index_leaf *leaf = node->child[slot];
		unsigned entry_slot = slot_at(vpn, 0);

		if (!(leaf->present & (1ULL << entry_slot)))
			return false;
		leaf->entries[entry_slot] = 0;
		leaf->present &= ~(1ULL << entry_slot);
		index->entries--;
		child_empty = leaf->present == 0;
		if (child_empty) {
			free(leaf);
			index->bytes -= sizeof(*leaf);
			index->leaves--;
		}
	} else {
		child_empty = node_clear(index, node->child[slot], level - 1, vpn);
		if (child_empty) {
			free(node->child[slot]);
			index->bytes -= sizeof(struct index_node);
		}
	}
	if (child_empty) {
		node->child[slot] = NULL;
		node->present &= ~(1ULL << slot);
	}
	return node->present == 0;
}

int page_index_set(struct page_index *index, uint64_t vpn, page_entry_t entry)
{
	struct index_node *node;
	struct index_leaf *leaf;
	unsigned level, slot;

	if (vpn > INDEX_VPN_MAX)
		return -ERANGE;

	if (entry == 0) {
		if (index->root && node_clear(index, index->root, INDEX_NODE_LEVELS, vpn)) {
			free(index->root);
			index->root = NULL;
			index->bytes -= sizeof(struct index_node);
		}
		return 0;
	}

	/*
	 * Allocate the missing path top-down.  A failure part way leaves empty
	 * nodes behind; they are harmless (reachable, freed with the index) and
	 * rare, so they are not unwound.
	 */
	if (!index->root) {
		index->root = calloc(1, sizeof(*index->root));
		if (!index->root)
			return -ENOMEM;
		index->bytes += sizeof(*index->root);
	}
	node = index->root;
	for (level = INDEX_NODE_LEVELS; level > 1; level--) {
		slot = slot_at(vpn, level);
		if (!node->child[slot]) {
			struct index_node *child = calloc(1, sizeof(*child));

			if (!child)
				return -ENOMEM;
			index->bytes += sizeof(*child);
			node->child[slot] = child;
			node->present |= 1ULL << slot;
		}
		node = node->child[slot];
	}
	slot = slot_at(vpn, 1);
	leaf = node->child[slot];
	if (!leaf) {
		leaf = calloc(1, sizeof(*leaf));
		if (!leaf)
			return -ENOMEM;
		index->bytes += sizeof(*leaf);
		index->leaves++;
		node->child[slot] = leaf;
		node->present |= 1ULL << slot;
	}
	slot = slot_at(vpn, 0);
	if (!(leaf->present & (1ULL << slot))) {
		leaf->present |= 1ULL << slot;
		index->entries++;
	}
	leaf->entries[slot] = entry;
	return 0;
}

/* Bits of `present` at or above `from`. */
static uint64_t bits_from(uint64_t present, unsigned from)
{
	return present & (~0ULL << from);
}

/*
 * The first vpn >= from under node (of `level`) with a non-zero entry;
 * false when there is none.
 */
static bool node_find_next(const struct index_node *node, unsigned level, uint64_t from,
			   uint64_t *found)
{
	unsigned shift = level_shift(level);
	uint64_t candidates = bits_from(node->present, slot_at(from, level));

	while (candidates) {
		unsigned slot = (unsigned)__builtin_ctzll(candidates);
		/* Past the slot `from` is in, start at the beginning of the child. */
		uint64_t child_from = slot == slot_at(from, level)
					  ? from
					  : (from & ~((1ULL << (shift + INDEX_BITS)) - 1)) |
						((uint64_t)slot << shift);

		candidates &= candidates - 1;
		if (level == 1) {
			const struct index_leaf *leaf = node->child[slot];
			uint64_t entries = bits_from(leaf->present, slot_at(child_from, 0));

			if (entries) {
				*found = (child_from & ~(uint64_t)INDEX_MASK) |
					 (unsigned)__builtin_ctzll(entries);
				return true;
			}
		} else if (node_find_next(node->child[slot], level - 1, child_from, found)) {
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
	while (cursor <= last && index->root) {
		page_entry_t entry, old;

		if (!node_find_next(index->root, INDEX_NODE_LEVELS, cursor, &vpn) || vpn > last)
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
	usage->bytes = index->bytes;
	usage->leaves = index->leaves;
	usage->entries = index->entries;
}
