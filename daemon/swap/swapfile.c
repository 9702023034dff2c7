/* SPDX-License-Identifier: MIT */
/*
 * The swap file backend.
 *
 * What it stores.  The shrinker writes the *compressed* bytes of a page
 * (1..4096 of them), not the page, so the file must pack objects of any
 * size; otherwise disk traffic and disk usage would not shrink with the
 * compression ratio.  Each object is written as a record: a 32-byte
 * header (magic, length, owner token, virtual page number, checksum)
 * followed by the bytes.
 *
 * What survives the daemon.  A client's pages outlive the daemon that
 * evicted them (issue 10): a daemon killed with SIGKILL is replaced by a
 * new one that gets the clients' page indexes back, and those name slots
 * of this file.  So the allocation state lives in the file, in a
 * metadata region at its start that is mapped MAP_SHARED: every store to
 * it is in the page cache the instant it is executed and outlives the
 * process whatever kills it.  (A crash of the machine does not need it:
 * no client survives a reboot, so a file left by another boot starts
 * empty, and nothing here is ever fsync'ed.)  The data region after it is
 * used with O_DIRECT and never overlaps it.
 *
 * Layout (offsets in bytes, every region 4 KiB aligned, the data region
 * cluster aligned; docs/SWAP.md has the field offsets):
 *   0               superblock: magic, layout version, state (CLEAN or
 *                   IN_USE), generation, boot id, geometry (granule and
 *                   cluster size, clusters, file size, region offsets,
 *                   owner capacity, record header size), checksum
 *   owners_offset   owner table: owner_capacity entries of 32 bytes
 *   maps_offset     granule maps: 128 bits per cluster (1 = allocated)
 *   refs_offset     reference counts: one byte per granule, nonzero only
 *                   at the first granule of an allocated slot
 *   data_offset     cluster 0, cluster 1, ...
 * The metadata is carved out of the configured size (about 0.2% of it at
 * 512-byte granules), so the file is exactly as big as configured.
 *
 * Opening.  A file whose superblock is valid (magic, version, checksum),
 * IN_USE, written during this boot (/proc/sys/kernel/random/boot_id) and
 * of the same geometry is recovered: every slot allocated before stays
 * allocated with its reference count, and the in-memory state (used
 * counts, cluster lists, bump index) is rebuilt from the maps.  Any other
 * file starts empty: the metadata region is zeroed and the generation
 * bumped.  swap_free() marks the file CLEAN when no slot is allocated, so
 * a clean stop followed by a start begins empty too.
 *
 * Write ordering.  A kill may stop the daemon between any two stores to
 * the metadata.  The rule that keeps every record a client refers to is:
 * a slot's granules are marked allocated before its count says it is
 * referenced, and its count says it is unreferenced before its granules
 * are marked free.  So:
 *   allocate: 1. set the granule bits in the map
 *             2. set the count of the first granule to 1
 *   add ref:  1. count + 1 (the caller publishes its new reference after)
 *   drop ref: 1. count - 1 (the caller withdrew its reference before)
 *   free:     1. count of the first granule to 0
 *             2. clear the granule bits
 *   reset:    1. every count of a cluster to 0, 2. its map to 0;
 *             3. the superblock with the next generation
 * A kill between the two steps of an allocation or a free leaves granules
 * allocated with no count: leaked, never handed out again while the file
 * is IN_USE, and reclaimed when it is next started empty (or reset).  A
 * recovered count can be too high (a reference was counted but never
 * published, or withdrawn and not yet uncounted), never too low.  The
 * stores are atomic with release ordering, so neither the compiler nor
 * the CPU reorders them.  Owner table entries are written with their
 * token last (add) and their token cleared first (remove).  The
 * superblock changes only at open (a fresh start), at reset and when
 * swap_free() marks it CLEAN; a kill in the middle of its rewrite leaves
 * a checksum that does not match, that is an empty start, which is
 * harmless each time because no slot is allocated then.
 *
 * Records.  The checksum is XXH3-64 (libxxhash) over the header (with the
 * checksum field zero) and the object bytes, seeded with the file's
 * generation, so a record written before the file last started empty
 * never verifies.  A read checks the magic, the length the caller
 * expects, the owner token the caller expects and the checksum, and fails
 * with -EBADMSG on any mismatch (bit rot, a stale or forged slot, a bug);
 * the vpn goes back to the caller, who decides (mremap legitimately
 * moves a page to another vpn).
 *
 * Geometry.  The file is preallocated (fallocate) at start, so writes
 * never extend it and never meet ENOSPC from the filesystem.  The data
 * region is cut into clusters of 64 KiB, each cut into granules (512 B by
 * default, or the direct-I/O alignment of the filesystem when that is
 * larger).  A record takes the fewest contiguous granules of one cluster
 * that hold it: a 1500-byte object (1532 bytes of record) takes three
 * 512-byte granules, a raw 4096-byte page nine.  The average waste is half
 * a granule per record plus the header, about 7% of a 4 KiB page;
 * bytes_per_slot in struct swap_usage reports what is really spent.
 *
 * Slots.  A slot is (first granule index << 4) | (granules - 1): 40 bits
 * of granule index (512 TiB at 512 B) and 4 bits of size (1..16
 * granules), 44 bits in all, the width of a page-entry payload.  A slot
 * describes its own extent, so swap_slot_free() needs no length and can
 * check that the granules it frees were allocated (a double free is
 * -EINVAL, not silent corruption).
 *
 * Allocation.  Each cluster has a 128-bit map of its granules (in the
 * metadata region) and a count of the ones in use (in memory).  A struct
 * swap_io (one per thread) owns a current cluster and allocates from it
 * next-fit, so records written in one batch land side by side and go out
 * in one write; no other thread allocates from an owned cluster, which is
 * what lets threads allocate without contending (the kernel's per-CPU
 * swap clusters, per thread here).  When the current cluster cannot fit
 * a record, the swap_io gives it back and takes another, in this order of
 * preference:
 *   1. a partial cluster: some space in use, but a free run big enough
 *      for any record (9 granules at 512 B) -- reusing these first keeps
 *      the live data packed in few clusters;
 *   2. a free cluster: nothing in use (freed clusters, then clusters never
 *      used yet, handed out by a bump index so start-up touches no
 *      per-cluster memory);
 *   3. a fragmented cluster: free granules, but no run for the largest
 *      record; searched (first fit for this record's size) only when
 *      there is nothing better, so small holes still get used before
 *      -ENOSPC.
 * A cluster not owned by anyone sits on the list of its class (free,
 * partial, fragmented) or on none when it is full.  Freeing granules in an
 * unowned cluster may promote it (fragmented -> partial -> free); freeing
 * in an owned cluster just clears bits, and the owner classifies it when
 * it lets go.  This is how freed space is reclaimed: there is no
 * compaction and no punching of holes, because the file is preallocated
 * and the space is reused in place.
 *
 * Locking.  swap->lock (a mutex) protects the three lists, the bump index
 * and every cluster's `list` and `owned` fields.  The granule map, the
 * reference counts and the used count of a cluster are protected by one
 * of SWAP_STRIPES stripe locks (cluster index modulo the stripe count).
 * Order: stripe lock, then swap->lock; never the other way.  Taking a
 * cluster off a list needs only swap->lock, which is safe because an
 * unowned cluster's map only loses bits (frees), so a map read without
 * the stripe lock can only underestimate free space.  Map words are
 * accessed atomically for that reason.  swap->owners_lock protects the
 * owner table.  No lock is held across a system call.
 *
 * I/O.  Every read and write goes through the io_uring ring of a
 * swap_io.  A write batch builds its records in bounce buffers, one per
 * run of adjacent slots (sorted by slot), aligned for O_DIRECT, the tail
 * of each record's last granule zeroed, and submits one write per run.  A
 * read fetches the record's whole granules into a per-request bounce
 * buffer (reused from a per-swap_io cache, so the fault path does not
 * allocate in steady state), verifies it and copies the object out, or
 * lends the buffer to the callback.  Completions are announced on an
 * eventfd registered with the ring; swap_io_reap() processes them and
 * runs the callbacks.  A short transfer resubmits the rest (under
 * O_DIRECT from the last aligned offset, re-sending a few bytes rather
 * than issuing an unaligned request); a completion with nothing moved, or
 * repeated ones without progress, fail with -EIO.  Requests that find the
 * submission queue full wait on a backlog that reap flushes.
 *
 * O_DIRECT.  Pages written back are cold by definition; caching them in
 * the page cache would spend the very memory uzswap is freeing.  So the
 * data region is used with O_DIRECT when the filesystem allows it:
 * statx's STATX_DIOALIGN gives the buffer and offset alignment (a pread
 * probe when the kernel does not say), granules are at least the offset
 * alignment so every request starts and ends aligned, and bounce buffers
 * are page aligned.  When the filesystem refuses O_DIRECT (or the caller
 * forces it off) the same code runs buffered; swap_get_info() says which.
 */
#include <errno.h>
#include <fcntl.h>
#include <liburing.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>
#include <xxhash.h>

#include "stats/stats.h"
#include "swap/swap-internal.h"
#include "swap/swapfile.h"
#include "util.h"

#define SWAP_CLUSTER_SIZE    (64u * 1024)
#define SWAP_GRANULE_MIN     512u
#define SWAP_GRANULE_DEFAULT 512u
#define SWAP_RING_DEFAULT    64u
#define SWAP_RUN_MAX	     (128u * 1024) /* largest write request a batch builds */
#define SWAP_REQ_CACHE	     64u	   /* idle requests (with buffers) kept per swap_io */
#define SWAP_STALLS_MAX	     4u		   /* short completions in a row without progress */
#define SWAP_BUFFER_ALIGN    4096u
#define SWAP_META_ALIGN	     4096u /* every metadata region starts on a page */
#define SWAP_BOOT_ID_PATH    "/proc/sys/kernel/random/boot_id"
#define SWAP_LOCK_POLL_MS    10u

#define SLOT_SIZE_BITS	 SWAP_SLOT_SIZE_BITS
#define SLOT_GRANULE_MAX (1ULL << (SWAP_SLOT_BITS - SLOT_SIZE_BITS))

#ifndef STATX_DIOALIGN
#define STATX_DIOALIGN 0x00002000U
#endif

/* --- the on-disk format (host byte order: the file never leaves its host) -- */

#define SUPER_MAGIC   "UZSWAPF\n"
#define SUPER_VERSION 1u
#define SUPER_SIZE    4096u	  /* the superblock's region; the struct uses the start */
#define RECORD_MAGIC  0x31525a55u /* "UZR1" */

enum super_state {
	SUPER_CLEAN = 1,
	SUPER_IN_USE = 2,
};

struct swap_super {
	char magic[8];		     /*   0 SUPER_MAGIC */
	uint32_t version;	     /*   8 SUPER_VERSION */
	uint32_t state;		     /*  12 enum super_state */
	uint64_t generation;	     /*  16 bumped at every empty start and reset */
	uint8_t boot_id[16];	     /*  24 the boot that last opened it */
	uint32_t granule_size;	     /*  40 */
	uint32_t cluster_size;	     /*  44 */
	uint64_t clusters;	     /*  48 data clusters */
	uint64_t file_size;	     /*  56 */
	uint64_t data_offset;	     /*  64 */
	uint64_t owners_offset;	     /*  72 */
	uint64_t maps_offset;	     /*  80 */
	uint64_t refs_offset;	     /*  88 */
	uint32_t owner_capacity;     /*  96 */
	uint32_t record_header_size; /* 100 RECORD_HEADER */
	uint64_t checksum;	     /* 104 XXH3-64 of bytes 0..111 with this field 0 */
};
_Static_assert(sizeof(struct swap_super) == 112, "superblock layout");

struct swap_owner_disk {
	uint64_t token; /* 0: free entry; written last, cleared first */
	uint64_t start_time;
	int32_t pid;
	uint32_t flags;
	uint64_t reserved;
};
_Static_assert(sizeof(struct swap_owner_disk) == 32, "owner entry layout");

struct swap_record {
	uint32_t magic;	   /* RECORD_MAGIC */
	uint16_t len;	   /* object bytes after the header */
	uint16_t reserved; /* 0 */
	uint64_t owner;
	uint64_t vpn;
	uint64_t checksum; /* XXH3-64, seed = generation, over header (this field 0) + object */
};
_Static_assert(sizeof(struct swap_record) == RECORD_HEADER, "record header layout");

/* Where the regions are, for a file size, granule and owner capacity. */
struct swap_layout {
	uint64_t clusters;
	uint64_t meta_size; /* bytes of the metadata region (whole clusters) */
	uint64_t owners_offset;
	uint64_t maps_offset;
	uint64_t refs_offset;
	uint64_t data_offset;
};

/* The in-memory structures are in swap/swap-internal.h (shared with the NBD backend). */

static inline uint64_t slot_make(uint64_t granule, unsigned granules)
{
	return granule << SLOT_SIZE_BITS | (granules - 1);
}

static inline uint64_t slot_granule(uint64_t slot)
{
	return slot >> SLOT_SIZE_BITS;
}

static inline unsigned slot_granules(uint64_t slot)
{
	return (unsigned)(slot & ((1u << SLOT_SIZE_BITS) - 1)) + 1;
}

static inline size_t round_up(size_t v, size_t align)
{
	return (v + align - 1) / align * align;
}

static inline uint64_t round_up64(uint64_t v, uint64_t align)
{
	return (v + align - 1) / align * align;
}

/* --- cluster maps --------------------------------------------------------- */

static inline uint64_t *map_of(const struct swap *swap, uint32_t index)
{
	return &swap->maps[2 * (uint64_t)index];
}

/* The map of a cluster, bits past granules_per_cluster masked off. */
static void map_snapshot(const struct swap *swap, uint32_t index, uint64_t snap[2])
{
	const uint64_t *map = map_of(swap, index);
	unsigned per = swap->granules_per_cluster;

	snap[0] = __atomic_load_n(&map[0], __ATOMIC_RELAXED);
	snap[1] = __atomic_load_n(&map[1], __ATOMIC_RELAXED);
	if (per < 64) {
		snap[0] &= (1ULL << per) - 1;
		snap[1] = 0;
	} else if (per < 128) {
		snap[1] &= (1ULL << (per - 64)) - 1;
	}
}

static bool map_range_clear(const uint64_t snap[2], unsigned start, unsigned n)
{
	for (unsigned b = start; b < start + n; b++)
		if (snap[b / 64] >> (b % 64) & 1)
			return false;
	return true;
}

static bool map_range_set(const uint64_t snap[2], unsigned start, unsigned n)
{
	for (unsigned b = start; b < start + n; b++)
		if (!(snap[b / 64] >> (b % 64) & 1))
			return false;
	return true;
}

/* First run of n clear bits at or after hint, wrapping around; -1 when none. */
static int map_find_run(const struct swap *swap, uint32_t index, unsigned n, unsigned hint)
{
	unsigned per = swap->granules_per_cluster;
	uint64_t snap[2];

	map_snapshot(swap, index, snap);
	if (hint + n > per)
		hint = 0;
	for (unsigned s = hint; s + n <= per; s++)
		if (map_range_clear(snap, s, n))
			return (int)s;
	for (unsigned s = 0; s < hint && s + n <= per; s++)
		if (map_range_clear(snap, s, n))
			return (int)s;
	return -1;
}

/*
 * Set or clear granules [start, start + n) of a cluster's map.  Release
 * stores: the metadata stores made before (a count) reach the file first.
 * Caller holds the cluster's stripe lock.
 */
static void map_update(struct swap *swap, uint32_t index, unsigned start, unsigned n, bool set)
{
	uint64_t *map = map_of(swap, index);

	for (unsigned w = 0; w < 2; w++) {
		unsigned lo = start > w * 64 ? start - w * 64 : 0;
		unsigned hi = start + n < (w + 1) * 64 ? start + n - w * 64 : 64;
		uint64_t mask, word;

		if (start + n <= w * 64 || start >= (w + 1) * 64)
			continue;
		mask = (hi - lo == 64 ? ~0ULL : ((1ULL << (hi - lo)) - 1)) << lo;
		word = __atomic_load_n(&map[w], __ATOMIC_RELAXED);
		__atomic_store_n(&map[w], set ? word | mask : word & ~mask, __ATOMIC_RELEASE);
	}
}

static inline uint8_t ref_load(const struct swap *swap, uint64_t granule)
{
	return __atomic_load_n(&swap->refs[granule], __ATOMIC_RELAXED);
}

/* Release store: the metadata stores made before (map bits) reach the file first. */
static inline void ref_store(struct swap *swap, uint64_t granule, uint8_t count)
{
	__atomic_store_n(&swap->refs[granule], count, __ATOMIC_RELEASE);
}

/* The list an unowned cluster belongs on.  Caller holds its stripe lock. */
static enum cluster_list cluster_classify(const struct swap *swap, uint32_t index)
{
	const struct swap_cluster *c = &swap->clusters[index];

	if (c->used == 0)
		return LIST_FREE;
	if (c->used == swap->granules_per_cluster)
		return LIST_NONE;
	if (map_find_run(swap, index, swap->object_granules_max, 0) >= 0)
		return LIST_PARTIAL;
	return LIST_FRAGMENTED;
}

static pthread_mutex_t *stripe_of(struct swap *swap, uint32_t index)
{
	return &swap->stripes[index % SWAP_STRIPES];
}

/* --- cluster lists (caller holds swap->lock) ------------------------------- */

static void list_add(struct swap *swap, uint32_t index, enum cluster_list which)
{
	struct swap_cluster *c = &swap->clusters[index];
	struct cluster_list_head *l = &swap->lists[which];

	__atomic_store_n(&c->list, (uint8_t)which, __ATOMIC_RELAXED);
	if (which == LIST_NONE)
		return;
	c->prev = CLUSTER_NONE;
	c->next = l->head;
	if (l->head != CLUSTER_NONE)
		swap->clusters[l->head].prev = index;
	l->head = index;
	l->count++;
}

static void list_del(struct swap *swap, uint32_t index)
{
	struct swap_cluster *c = &swap->clusters[index];
	enum cluster_list which = c->list;
	struct cluster_list_head *l = &swap->lists[which];

	if (which == LIST_NONE)
		return;
	if (c->prev != CLUSTER_NONE)
		swap->clusters[c->prev].next = c->next;
	else
		l->head = c->next;
	if (c->next != CLUSTER_NONE)
		swap->clusters[c->next].prev = c->prev;
	l->count--;
	__atomic_store_n(&c->list, (uint8_t)LIST_NONE, __ATOMIC_RELAXED);
}

/* Take a cluster that fits a record of n granules; CLUSTER_NONE when none does. */
static uint32_t cluster_acquire(struct swap *swap, unsigned n)
{
	uint32_t index = CLUSTER_NONE;

	pthread_mutex_lock(&swap->lock);
	if (swap->lists[LIST_PARTIAL].head != CLUSTER_NONE) {
		index = swap->lists[LIST_PARTIAL].head;
	} else if (swap->lists[LIST_FREE].head != CLUSTER_NONE) {
		index = swap->lists[LIST_FREE].head;
	} else if (swap->fresh_next < swap->info.clusters) {
		index = (uint32_t)swap->fresh_next++;
	} else {
		for (uint32_t i = swap->lists[LIST_FRAGMENTED].head; i != CLUSTER_NONE;
		     i = swap->clusters[i].next) {
			if (map_find_run(swap, i, n, 0) >= 0) {
				index = i;
				break;
			}
		}
	}
	if (index != CLUSTER_NONE) {
		list_del(swap, index);
		__atomic_store_n(&swap->clusters[index].owned, 1, __ATOMIC_RELAXED);
	}
	pthread_mutex_unlock(&swap->lock);
	return index;
}

static void cluster_release(struct swap *swap, uint32_t index)
{
	struct swap_cluster *c = &swap->clusters[index];
	pthread_mutex_t *stripe = stripe_of(swap, index);

	pthread_mutex_lock(stripe);
	pthread_mutex_lock(&swap->lock);
	__atomic_store_n(&c->owned, 0, __ATOMIC_RELAXED);
	list_add(swap, index, cluster_classify(swap, index));
	pthread_mutex_unlock(&swap->lock);
	pthread_mutex_unlock(stripe);
}

/* --- slots ---------------------------------------------------------------- */

/* Granules of the record of an object of len bytes. */
static unsigned record_granules(const struct swap *swap, size_t len)
{
	return (unsigned)((len + RECORD_HEADER + swap->info.granule_size - 1) /
			  swap->info.granule_size);
}

/* Where a slot is; -EINVAL when it does not name granules inside one cluster of the file. */
static int slot_locate(const struct swap *swap, uint64_t slot, uint32_t *index, unsigned *start)
{
	unsigned per = swap->granules_per_cluster;
	uint64_t granule = slot_granule(slot);
	unsigned n = slot_granules(slot);

	if (slot >> SWAP_SLOT_BITS || n > swap->object_granules_max ||
	    granule / per >= swap->info.clusters || granule % per + n > per)
		return -EINVAL;
	*index = (uint32_t)(granule / per);
	*start = (unsigned)(granule % per);
	return 0;
}

int swap_slot_alloc(struct swap_io *io, size_t len, uint64_t *slot_out)
{
	struct swap *swap = io->swap;
	unsigned per = swap->granules_per_cluster;
	unsigned n;

	if (len == 0 || len > SWAP_OBJECT_MAX)
		return -EINVAL;
	n = record_granules(swap, len);

	for (;;) {
		if (io->cluster != CLUSTER_NONE) {
			struct swap_cluster *c = &swap->clusters[io->cluster];
			pthread_mutex_t *stripe = stripe_of(swap, io->cluster);
			uint64_t first = 0;
			int pos;

			pthread_mutex_lock(stripe);
			pos = map_find_run(swap, io->cluster, n, io->hint);
			if (pos >= 0) {
				/* Granules first, then the count (top of the file). */
				first = (uint64_t)io->cluster * per + (unsigned)pos;
				map_update(swap, io->cluster, (unsigned)pos, n, true);
				ref_store(swap, first, 1);
				c->used += n;
			}
			pthread_mutex_unlock(stripe);
			if (pos >= 0) {
				io->hint = (unsigned)pos + n;
				stat_add(swap, slots_in_use, 1);
				stat_add(swap, bytes_on_disk,
					 (uint64_t)n * swap->info.granule_size);
				*slot_out = slot_make(first, n);
				return 0;
			}
			cluster_release(swap, io->cluster);
			io->cluster = CLUSTER_NONE;
		}
		io->cluster = cluster_acquire(swap, n);
		io->hint = 0;
		if (io->cluster == CLUSTER_NONE) {
			stat_add(swap, alloc_failures, 1);
			return -ENOSPC;
		}
	}
}

/* Is slot allocated with at least one reference?  Caller holds its stripe lock. */
static bool slot_allocated(const struct swap *swap, uint64_t slot, uint32_t index, unsigned start)
{
	uint64_t snap[2];

	map_snapshot(swap, index, snap);
	return map_range_set(snap, start, slot_granules(slot)) &&
	       ref_load(swap, slot_granule(slot)) > 0;
}

int swap_slot_ref(struct swap *swap, uint64_t slot)
{
	pthread_mutex_t *stripe;
	uint32_t index;
	unsigned start;
	uint8_t count;
	int r = 0;

	if (slot_locate(swap, slot, &index, &start) < 0)
		return -EINVAL;
	stripe = stripe_of(swap, index);
	pthread_mutex_lock(stripe);
	if (!slot_allocated(swap, slot, index, start)) {
		r = -EINVAL;
	} else {
		count = ref_load(swap, slot_granule(slot));
		if (count >= SWAP_REF_MAX)
			r = -EOVERFLOW;
		else
			ref_store(swap, slot_granule(slot), (uint8_t)(count + 1));
	}
	pthread_mutex_unlock(stripe);
	return r;
}

int swap_slot_refcount(const struct swap *swap, uint64_t slot)
{
	uint32_t index;
	unsigned start;
	uint64_t snap[2];

	if (slot_locate(swap, slot, &index, &start) < 0)
		return -EINVAL;
	map_snapshot(swap, index, snap);
	if (!map_range_set(snap, start, slot_granules(slot)))
		return 0;
	return ref_load(swap, slot_granule(slot));
}

int swap_slot_free(struct swap *swap, uint64_t slot)
{
	unsigned n = slot_granules(slot);
	struct swap_cluster *c;
	pthread_mutex_t *stripe;
	uint32_t index;
	unsigned start;
	uint8_t left;

	if (slot_locate(swap, slot, &index, &start) < 0)
		return -EINVAL;
	c = &swap->clusters[index];
	stripe = stripe_of(swap, index);

	pthread_mutex_lock(stripe);
	if (!slot_allocated(swap, slot, index, start)) {
		pthread_mutex_unlock(stripe);
		return -EINVAL;
	}
	left = (uint8_t)(ref_load(swap, slot_granule(slot)) - 1);
	ref_store(swap, slot_granule(slot), left);
	if (left) {
		pthread_mutex_unlock(stripe);
		return 0;
	}
	/* The count is 0 in the file before the granules are free (top of the file). */
	map_update(swap, index, start, n, false);
	c->used -= n;
	if (!__atomic_load_n(&c->owned, __ATOMIC_RELAXED)) {
		enum cluster_list want = cluster_classify(swap, index);

		if (want != __atomic_load_n(&c->list, __ATOMIC_RELAXED)) {
			pthread_mutex_lock(&swap->lock);
			/* Re-check: someone may have taken it meanwhile. */
			if (!c->owned && c->list != want) {
				list_del(swap, index);
				list_add(swap, index, want);
			}
			pthread_mutex_unlock(&swap->lock);
		}
	}
	pthread_mutex_unlock(stripe);

	stat_sub(swap, slots_in_use, 1);
	stat_sub(swap, bytes_on_disk, (uint64_t)n * swap->info.granule_size);
	return 0;
}

size_t swap_slot_disk_bytes(const struct swap *swap, uint64_t slot)
{
	return (size_t)slot_granules(slot) * swap->info.granule_size;
}

/* --- records ------------------------------------------------------------------ */

/*
 * Build the record of obj at `at` (disk_bytes: its whole granules, the
 * tail zeroed).
 */
static void record_build(const struct swap *swap, char *at, const struct swap_object *obj,
			 size_t disk_bytes)
{
	struct swap_record rec = {
	    .magic = RECORD_MAGIC,
	    .len = (uint16_t)obj->len,
	    .owner = obj->owner,
	    .vpn = obj->vpn,
	};

	memcpy(at, &rec, sizeof(rec));
	memcpy(at + RECORD_HEADER, obj->data, obj->len);
	memset(at + RECORD_HEADER + obj->len, 0, disk_bytes - RECORD_HEADER - obj->len);
	rec.checksum = XXH3_64bits_withSeed(at, RECORD_HEADER + obj->len, swap->info.generation);
	memcpy(at + offsetof(struct swap_record, checksum), &rec.checksum, sizeof(rec.checksum));
}

/*
 * Check the record read into buf (its granules, at least RECORD_HEADER +
 * len bytes): 0 and *vpn, or -EBADMSG.  Zeroes the checksum field of buf.
 */
static int record_verify(const struct swap *swap, char *buf, size_t len, uint64_t owner,
			 uint64_t *vpn)
{
	static const uint64_t zero;
	struct swap_record rec;

	memcpy(&rec, buf, sizeof(rec));
	if (rec.magic != RECORD_MAGIC || rec.len != len || rec.reserved != 0 || rec.owner != owner)
		return -EBADMSG;
	memcpy(buf + offsetof(struct swap_record, checksum), &zero, sizeof(zero));
	if (XXH3_64bits_withSeed(buf, RECORD_HEADER + len, swap->info.generation) != rec.checksum)
		return -EBADMSG;
	*vpn = rec.vpn;
	return 0;
}

/* --- the superblock and the layout ------------------------------------------- */

static uint64_t super_checksum(const struct swap_super *sb)
{
	struct swap_super copy = *sb;

	copy.checksum = 0;
	return XXH3_64bits(&copy, sizeof(copy));
}

static bool super_valid(const struct swap_super *sb)
{
	return !memcmp(sb->magic, SUPER_MAGIC, sizeof(sb->magic)) && sb->version == SUPER_VERSION &&
	       sb->checksum == super_checksum(sb);
}

/* Rewrite the superblock of the mapping from swap->info, in state `state`. */
static void super_write(struct swap *swap, enum super_state state, const uint8_t boot_id[16])
{
	struct swap_super sb = {
	    .version = SUPER_VERSION,
	    .state = state,
	    .generation = swap->info.generation,
	    .granule_size = swap->info.granule_size,
	    .cluster_size = swap->info.cluster_size,
	    .clusters = swap->info.clusters,
	    .file_size = swap->info.file_size,
	    .data_offset = swap->info.data_offset,
	    .owners_offset = (uint64_t)((char *)swap->owners - (char *)swap->meta),
	    .maps_offset = (uint64_t)((char *)swap->maps - (char *)swap->meta),
	    .refs_offset = (uint64_t)((char *)swap->refs - (char *)swap->meta),
	    .owner_capacity = swap->info.owner_capacity,
	    .record_header_size = RECORD_HEADER,
	};

	memcpy(sb.magic, SUPER_MAGIC, sizeof(sb.magic));
	memcpy(sb.boot_id, boot_id ? boot_id : swap->super->boot_id, sizeof(sb.boot_id));
	sb.checksum = super_checksum(&sb);
	__atomic_thread_fence(__ATOMIC_RELEASE); /* after every map and count store */
	memcpy(swap->super, &sb, sizeof(sb));
}

/* The offsets of a metadata region for `clusters` data clusters; returns its size. */
static uint64_t layout_regions(uint64_t clusters, unsigned per, unsigned capacity,
			       struct swap_layout *l)
{
	uint64_t at = SUPER_SIZE;

	l->clusters = clusters;
	l->owners_offset = at;
	at += round_up64((uint64_t)capacity * sizeof(struct swap_owner_disk), SWAP_META_ALIGN);
	l->maps_offset = at;
	at += round_up64(clusters * 2 * sizeof(uint64_t), SWAP_META_ALIGN);
	l->refs_offset = at;
	at += round_up64(clusters * per, SWAP_META_ALIGN);
	l->meta_size = round_up64(at, SWAP_CLUSTER_SIZE);
	l->data_offset = l->meta_size;
	return l->data_offset;
}

/*
 * The layout of a file of file_size bytes (whole clusters): as many data
 * clusters as fit after their metadata.  -EINVAL when not even one does.
 */
static int layout_compute(uint64_t file_size, unsigned granule, unsigned capacity,
			  struct swap_layout *out)
{
	unsigned per = SWAP_CLUSTER_SIZE / granule;
	uint64_t fixed = SUPER_SIZE + (uint64_t)capacity * sizeof(struct swap_owner_disk);
	uint64_t clusters = 0;
	struct swap_layout l;

	/* Estimate (each cluster costs 64 KiB and 16 + per bytes of metadata), then step. */
	if (file_size > fixed)
		clusters = (file_size - fixed) / (SWAP_CLUSTER_SIZE + 2 * sizeof(uint64_t) + per);
	while (clusters > 0 &&
	       layout_regions(clusters, per, capacity, &l) + clusters * SWAP_CLUSTER_SIZE >
		   file_size)
		clusters--;
	while (layout_regions(clusters + 1, per, capacity, &l) +
		   (clusters + 1) * SWAP_CLUSTER_SIZE <=
	       file_size)
		clusters++;
	if (clusters == 0)
		return -EINVAL;
	layout_regions(clusters, per, capacity, out);
	return 0;
}

/*
 * The layout of this swap: a file carves its metadata out of file_size;
 * an NBD export (file_size: its whole clusters) is all data, the
 * metadata region being the local file, and cluster 0 is at offset 0.
 */
static int layout_for(enum swap_backend_kind backend, uint64_t file_size, unsigned granule,
		      unsigned capacity, struct swap_layout *out)
{
	uint64_t clusters = file_size / SWAP_CLUSTER_SIZE;

	if (backend == SWAP_BACKEND_FILE)
		return layout_compute(file_size, granule, capacity, out);
	if (clusters == 0)
		return -EINVAL;
	layout_regions(clusters, SWAP_CLUSTER_SIZE / granule, capacity, out);
	out->data_offset = 0;
	return 0;
}

/* The boot id (16 bytes of the UUID in path).  -errno, -EINVAL when it is not a UUID. */
static int read_boot_id(const char *path, uint8_t id[16])
{
	char text[64];
	unsigned got = 0;
	ssize_t n;

	n = uz_read_text(path, text, sizeof(text));
	if (n < 0)
		return (int)n;
	for (char *p = text; *p && *p != '\n'; p++) {
		int v;

		if (*p == '-')
			continue;
		if (*p >= '0' && *p <= '9')
			v = *p - '0';
		else if (*p >= 'a' && *p <= 'f')
			v = *p - 'a' + 10;
		else if (*p >= 'A' && *p <= 'F')
			v = *p - 'A' + 10;
		else
			return -EINVAL;
		if (got >= 32)
			return -EINVAL;
		id[got / 2] = (uint8_t)(got % 2 ? id[got / 2] | v : v << 4);
		got++;
	}
	return got == 32 ? 0 : -EINVAL;
}

/* --- the file --------------------------------------------------------------- */

/* mkdir -p of the directory part of path. */
static int make_parent_dirs(const char *path)
{
	size_t len = strlen(path);
	char *copy = strdup(path);
	int r = 0;

	if (!copy)
		return -ENOMEM;
	for (size_t i = 1; i < len; i++) {
		if (copy[i] != '/')
			continue;
		copy[i] = '\0';
		if (mkdir(copy, 0700) < 0 && errno != EEXIST) {
			r = -errno;
			break;
		}
		copy[i] = '/';
	}
	free(copy);
	return r;
}

/*
 * Turn O_DIRECT on if the filesystem allows it and learn its alignment.
 * Returns 0 either way (buffered is a valid outcome), -errno only for
 * failures that are not about direct I/O support.
 */
static int probe_direct_io(struct swap *swap)
{
	unsigned mem_align = 0, offset_align = 0;
	struct statx stx;
	int flags;

	flags = fcntl(swap->fd, F_GETFL);
	if (flags < 0)
		return -errno;
	if (fcntl(swap->fd, F_SETFL, flags | O_DIRECT) < 0)
		return 0; /* EINVAL: no direct I/O on this filesystem */

	if (statx(swap->fd, "", AT_EMPTY_PATH, STATX_DIOALIGN, &stx) == 0 &&
	    (stx.stx_mask & STATX_DIOALIGN)) {
		mem_align = stx.stx_dio_mem_align;
		offset_align = stx.stx_dio_offset_align;
	} else {
		/* The kernel does not say: try the usual alignments. */
		void *buf = NULL;

		if (posix_memalign(&buf, SWAP_BUFFER_ALIGN, SWAP_BUFFER_ALIGN))
			return -ENOMEM;
		for (unsigned a = 512; a <= 4096 && !offset_align; a *= 8) {
			if (pread(swap->fd, buf, a, 0) == (ssize_t)a)
				mem_align = offset_align = a;
		}
		free(buf);
	}

	if (offset_align == 0 || offset_align > SWAP_OBJECT_MAX || mem_align > SWAP_BUFFER_ALIGN ||
	    SWAP_CLUSTER_SIZE % offset_align) {
		if (fcntl(swap->fd, F_SETFL, flags) < 0)
			return -errno;
		return 0;
	}
	swap->info.direct_io = true;
	swap->info.dio_mem_align = mem_align ? mem_align : 1;
	swap->info.dio_offset_align = offset_align;
	return 0;
}

/* Open, lock, and size (0: leave the size alone) the file. */
static int swap_open_file(struct swap *swap, const char *path, uint64_t size, unsigned lock_wait_ms)
{
	bool created = false;
	struct stat st;
	int r;

	r = make_parent_dirs(path);
	if (r < 0)
		return r;

	swap->fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
	if (swap->fd >= 0)
		created = true;
	else if (errno == EEXIST)
		swap->fd = open(path, O_RDWR | O_CLOEXEC | O_NOFOLLOW);
	if (swap->fd < 0)
		return errno == ELOOP ? -EINVAL : -errno;

	if (fstat(swap->fd, &st) < 0) {
		r = -errno;
		goto fail;
	}
	if (!S_ISREG(st.st_mode)) {
		r = -EINVAL;
		goto fail;
	}
	/* One daemon per swap file (a dead one's lock may linger: see lock_wait_ms). */
	for (unsigned waited = 0;; waited += SWAP_LOCK_POLL_MS) {
		if (flock(swap->fd, LOCK_EX | LOCK_NB) == 0)
			break;
		if (errno != EWOULDBLOCK) {
			r = -errno;
			goto fail;
		}
		if (waited >= lock_wait_ms) {
			r = -EBUSY;
			goto fail;
		}
		usleep(SWAP_LOCK_POLL_MS * 1000);
	}
	if (size == 0)
		return 0; /* the caller sizes it (the NBD metadata file) */
	if ((uint64_t)st.st_size != size && ftruncate(swap->fd, (off_t)size) < 0) {
		r = -errno;
		goto fail;
	}
	if (fallocate(swap->fd, 0, 0, (off_t)size) < 0) {
		r = errno == ENOSYS ? -EOPNOTSUPP : -errno;
		goto fail;
	}
	return 0;

fail:
	close(swap->fd);
	swap->fd = -1;
	if (created)
		unlink(path);
	return r;
}

/* The superblock of the file as it was (read before O_DIRECT is on); zeros when unreadable. */
static void super_read(int fd, struct swap_super *sb)
{
	memset(sb, 0, sizeof(*sb));
	if (pread(fd, sb, sizeof(*sb), 0) != (ssize_t)sizeof(*sb))
		memset(sb, 0, sizeof(*sb));
}

/*
 * Zero [0, size) of the file without writing it, the blocks staying
 * allocated (a store to a hole through the mapping could meet ENOSPC:
 * SIGBUS).  1 when done, 0 when the filesystem cannot (the caller clears
 * the mapping: the blocks are still the preallocated ones), -errno when a
 * punched range could not be allocated again.
 */
static int file_zero_range(int fd, uint64_t size)
{
	if (fallocate(fd, FALLOC_FL_ZERO_RANGE, 0, (off_t)size) == 0)
		return 1;
	if (fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0, (off_t)size) < 0)
		return 0;
	if (fallocate(fd, 0, 0, (off_t)size) < 0)
		return errno == ENOSPC ? -ENOSPC : -EIO;
	return 1;
}

/*
 * Why the file left by a previous user cannot be recovered (enum
 * swap_start), or SWAP_START_RECOVERED with its layout in *l.
 */
static enum swap_start recovery_check(enum swap_backend_kind backend, const struct swap_super *sb,
				      const uint8_t boot_id[16], bool have_boot_id,
				      uint64_t file_size, unsigned granule, struct swap_layout *l)
{
	if (!super_valid(sb))
		return SWAP_START_NEW;
	if (sb->state != SUPER_IN_USE)
		return SWAP_START_CLEAN;
	if (!have_boot_id || memcmp(sb->boot_id, boot_id, sizeof(sb->boot_id)))
		return SWAP_START_OTHER_BOOT;
	if (sb->granule_size != granule || sb->cluster_size != SWAP_CLUSTER_SIZE ||
	    sb->file_size != file_size || sb->record_header_size != RECORD_HEADER ||
	    sb->owner_capacity == 0 || sb->owner_capacity > SWAP_OWNERS_MAX ||
	    layout_for(backend, file_size, granule, sb->owner_capacity, l) < 0 ||
	    l->clusters != sb->clusters || l->data_offset != sb->data_offset ||
	    l->owners_offset != sb->owners_offset || l->maps_offset != sb->maps_offset ||
	    l->refs_offset != sb->refs_offset)
		return SWAP_START_GEOMETRY;
	return SWAP_START_RECOVERED;
}

/*
 * Recovery: the in-memory state from the maps and counts of the file.
 * Every granule marked allocated stays allocated; a count without its
 * granule marked (which the write ordering never leaves) marks the
 * granule, erring towards a leak.  Counts in clusters whose map is empty
 * are not looked at (the ordering never leaves one either).
 */
static void swap_rebuild(struct swap *swap)
{
	unsigned per = swap->granules_per_cluster;
	uint64_t slots = 0, granules = 0, end = 0;

	for (uint64_t i = 0; i < swap->info.clusters; i++) {
		uint32_t index = (uint32_t)i;
		uint64_t snap[2];
		unsigned used;

		map_snapshot(swap, index, snap);
		if (!snap[0] && !snap[1])
			continue;
		for (unsigned g = 0; g < per; g++) {
			if (!ref_load(swap, i * per + g))
				continue;
			slots++;
			if (!(snap[g / 64] >> (g % 64) & 1)) {
				map_update(swap, index, g, 1, true);
				snap[g / 64] |= 1ULL << (g % 64);
			}
		}
		used = (unsigned)(__builtin_popcountll(snap[0]) + __builtin_popcountll(snap[1]));
		swap->clusters[index].used = (uint16_t)used;
		granules += used;
		end = i + 1;
	}
	swap->fresh_next = end;
	for (uint64_t i = 0; i < end; i++)
		list_add(swap, (uint32_t)i, cluster_classify(swap, (uint32_t)i));
	swap->stats.slots_in_use = slots;
	swap->stats.bytes_on_disk = granules * swap->info.granule_size;
	swap->info.recovered_slots = slots;
	swap->info.recovered_bytes = granules * swap->info.granule_size;
}

/* NBD: the metadata file sized for the layout (it may have been another size). */
static int swap_size_meta_file(struct swap *swap, uint64_t size)
{
	struct stat st;

	if (fstat(swap->fd, &st) < 0)
		return -errno;
	if ((uint64_t)st.st_size != size && ftruncate(swap->fd, (off_t)size) < 0)
		return -errno;
	if (fallocate(swap->fd, 0, 0, (off_t)size) < 0)
		return errno == ENOSYS ? -EOPNOTSUPP : -errno;
	return 0;
}

static void swap_error(const struct swap_config *config, const char *what, const char *arg)
{
	if (config->errbuf && config->errlen && !config->errbuf[0])
		snprintf(config->errbuf, config->errlen, "%s%s", what, arg);
}

int swap_new(struct swap **out, const struct swap_config *config)
{
	const char *path = config->path ? config->path : SWAP_DEFAULT_PATH;
	unsigned granule = config->granule_size ? config->granule_size : SWAP_GRANULE_DEFAULT;
	unsigned capacity = config->owner_capacity ? config->owner_capacity : SWAP_OWNERS_DEFAULT;
	enum swap_backend_kind backend = config->backend;
	uint64_t file_size = config->size / SWAP_CLUSTER_SIZE * SWAP_CLUSTER_SIZE;
	uint64_t export_size = 0;
	struct swap_super old;
	struct swap_layout layout;
	uint8_t boot_id[16] = {0};
	bool have_boot_id, zeroed = false;
	struct swap *swap;
	void *meta;
	int r;

	if (config->errbuf && config->errlen)
		config->errbuf[0] = 0;
	if (granule < SWAP_GRANULE_MIN || granule > SWAP_OBJECT_MAX || (granule & (granule - 1)))
		return -EINVAL;
	if (capacity > SWAP_OWNERS_MAX)
		return -EINVAL;
	if (backend == SWAP_BACKEND_NBD) {
		if (!config->uri || !config->uri[0]) {
			swap_error(config, "no URI for the NBD backend", "");
			return -EINVAL;
		}
#ifdef UZSWAP_HAVE_NBD
		r = swap_nbd_probe(config->uri,
				   config->timeout_ms ? config->timeout_ms
						      : SWAP_NBD_TIMEOUT_DEFAULT_MS,
				   &export_size, config->errbuf, config->errlen);
		if (r < 0)
			return r;
		file_size = export_size / SWAP_CLUSTER_SIZE * SWAP_CLUSTER_SIZE;
		if (file_size == 0) {
			swap_error(config,
				   "the export is smaller than one 64 KiB cluster: ", config->uri);
			return -EINVAL;
		}
#else
		swap_error(config, "built without libnbd: no NBD backend", "");
		return -EOPNOTSUPP;
#endif
	} else if (backend != SWAP_BACKEND_FILE) {
		return -EINVAL;
	}
	/* Any granule (up to 4 KiB) leaves a data cluster in this size, or none would. */
	if (layout_for(backend, file_size, SWAP_GRANULE_MIN, capacity, &layout) < 0)
		return -EINVAL;

	swap = calloc(1, sizeof(*swap));
	if (!swap)
		return -ENOMEM;
	swap->fd = -1;
	swap->backend = &swap_backend_file;
	swap->ring_entries = config->ring_entries ? config->ring_entries : SWAP_RING_DEFAULT;
	swap->max_inflight = swap->ring_entries;
	swap->info.backend = backend;
	swap->info.export_size = export_size;
	swap->info.cluster_size = SWAP_CLUSTER_SIZE;
	swap->info.file_size = file_size;
	swap->inject_left = -1;
	for (unsigned i = 0; i < LIST__COUNT; i++)
		swap->lists[i].head = CLUSTER_NONE;
	pthread_mutex_init(&swap->lock, NULL);
	pthread_mutex_init(&swap->owners_lock, NULL);
	for (unsigned i = 0; i < SWAP_STRIPES; i++)
		pthread_mutex_init(&swap->stripes[i], NULL);
	if (latency_hist_new(&swap->read_latency) < 0 ||
	    latency_hist_new(&swap->write_latency) < 0) {
		r = -ENOMEM;
		goto fail;
	}
	if (backend == SWAP_BACKEND_NBD) {
#ifdef UZSWAP_HAVE_NBD
		swap->backend = &swap_backend_nbd;
#endif
		swap->timeout_ms =
		    config->timeout_ms ? config->timeout_ms : SWAP_NBD_TIMEOUT_DEFAULT_MS;
		swap->export_size = export_size;
		swap->uri = strdup(config->uri);
		if (!swap->uri) {
			r = -ENOMEM;
			goto fail;
		}
	}

	r = swap_open_file(swap, path, backend == SWAP_BACKEND_FILE ? file_size : 0,
			   config->lock_wait_ms);
	if (r < 0)
		goto fail;
	super_read(swap->fd, &old);
	if (backend == SWAP_BACKEND_FILE && !(config->flags & SWAP_FLAG_BUFFERED)) {
		r = probe_direct_io(swap);
		if (r < 0)
			goto fail;
	}
	if (swap->info.direct_io && swap->info.dio_offset_align > granule)
		granule = swap->info.dio_offset_align;
	swap->info.granule_size = granule;
	swap->granules_per_cluster = SWAP_CLUSTER_SIZE / granule;
	swap->object_granules_max = record_granules(swap, SWAP_OBJECT_MAX);
	swap->io_align = 1;
	if (swap->info.direct_io)
		swap->io_align = swap->info.dio_offset_align > swap->info.dio_mem_align
				     ? swap->info.dio_offset_align
				     : swap->info.dio_mem_align;

	/* Recover, or start empty. */
	have_boot_id = read_boot_id(config->boot_id_path ? config->boot_id_path : SWAP_BOOT_ID_PATH,
				    boot_id) == 0;
	swap->info.start =
	    recovery_check(backend, &old, boot_id, have_boot_id, file_size, granule, &layout);
	if (swap->info.start == SWAP_START_RECOVERED) {
		capacity = old.owner_capacity;
		swap->info.generation = old.generation;
		if (backend == SWAP_BACKEND_NBD) {
			r = swap_size_meta_file(swap, layout.meta_size);
			if (r < 0)
				goto fail;
		}
	} else {
		r = layout_for(backend, file_size, granule, capacity, &layout);
		if (r < 0)
			goto fail;
		swap->info.generation = super_valid(&old) ? old.generation + 1 : 1;
		if (backend == SWAP_BACKEND_NBD) {
			/*
			 * The export may hold records of an earlier metadata file
			 * (deleted, or of another host): start from a generation
			 * they were not written with, so none of them verifies.
			 */
			uint64_t random = 0;

			if (!super_valid(&old) &&
			    getrandom(&random, sizeof(random), 0) == (ssize_t)sizeof(random))
				swap->info.generation = random | 1;
			r = swap_size_meta_file(swap, layout.meta_size);
			if (r < 0)
				goto fail;
		}
		/* The superblock is zeroed with the rest: a kill from here on finds none valid. */
		r = file_zero_range(swap->fd, layout.meta_size);
		if (r < 0)
			goto fail;
		zeroed = r > 0;
	}
	if (layout.clusters >= CLUSTER_NONE ||
	    layout.clusters * swap->granules_per_cluster > SLOT_GRANULE_MAX) {
		r = -EINVAL;
		goto fail;
	}
	swap->info.clusters = layout.clusters;
	swap->info.data_offset = layout.data_offset;
	swap->info.meta_size = layout.meta_size;
	swap->info.owner_capacity = capacity;

	swap->clusters = calloc(layout.clusters, sizeof(*swap->clusters));
	if (!swap->clusters) {
		r = -ENOMEM;
		goto fail;
	}
	meta = mmap(NULL, layout.meta_size, PROT_READ | PROT_WRITE, MAP_SHARED, swap->fd, 0);
	if (meta == MAP_FAILED) {
		r = -errno;
		goto fail;
	}
	swap->meta = meta;
	swap->meta_size = layout.meta_size;
	swap->super = meta;
	swap->owners = (struct swap_owner_disk *)((char *)meta + layout.owners_offset);
	swap->maps = (uint64_t *)((char *)meta + layout.maps_offset);
	swap->refs = (uint8_t *)meta + layout.refs_offset;

	if (swap->info.start == SWAP_START_RECOVERED) {
		swap_rebuild(swap);
	} else {
		if (!zeroed) {
			memset(swap->super, 0, sizeof(*swap->super));
			__atomic_thread_fence(__ATOMIC_RELEASE);
			memset(meta, 0, layout.meta_size);
		}
		super_write(swap, SUPER_IN_USE, boot_id);
	}

	*out = swap;
	return 0;

fail:
	swap_abandon(swap);
	return r;
}

/* Unmap and close; clean: mark the file CLEAN when no slot is allocated. */
static struct swap *swap_release(struct swap *swap, bool clean)
{
	if (!swap)
		return NULL;
	if (swap->meta) {
		if (clean && __atomic_load_n(&swap->stats.slots_in_use, __ATOMIC_ACQUIRE) == 0)
			super_write(swap, SUPER_CLEAN, NULL);
		munmap(swap->meta, swap->meta_size);
	}
	if (swap->fd >= 0)
		close(swap->fd);
	free(swap->clusters);
	free(swap->uri);
	latency_hist_free(swap->read_latency);
	latency_hist_free(swap->write_latency);
	for (unsigned i = 0; i < SWAP_STRIPES; i++)
		pthread_mutex_destroy(&swap->stripes[i]);
	pthread_mutex_destroy(&swap->owners_lock);
	pthread_mutex_destroy(&swap->lock);
	free(swap);
	return NULL;
}

struct swap *swap_free(struct swap *swap)
{
	return swap_release(swap, true);
}

struct swap *swap_abandon(struct swap *swap)
{
	return swap_release(swap, false);
}

int swap_reset_all(struct swap *swap)
{
	unsigned per = swap->granules_per_cluster;
	uint64_t fresh;

	if (__atomic_load_n(&swap->nr_ios, __ATOMIC_ACQUIRE))
		return -EBUSY;
	pthread_mutex_lock(&swap->lock);
	fresh = swap->fresh_next;
	pthread_mutex_unlock(&swap->lock);

	/* Per cluster: the counts, then the map (top of the file). */
	for (uint64_t i = 0; i < fresh; i++) {
		pthread_mutex_t *stripe = stripe_of(swap, (uint32_t)i);

		pthread_mutex_lock(stripe);
		for (unsigned g = 0; g < per; g++)
			if (ref_load(swap, i * per + g))
				ref_store(swap, i * per + g, 0);
		map_update(swap, (uint32_t)i, 0, per, false);
		swap->clusters[i].used = 0;
		pthread_mutex_unlock(stripe);
	}

	pthread_mutex_lock(&swap->lock);
	for (unsigned l = 0; l < LIST__COUNT; l++)
		swap->lists[l] = (struct cluster_list_head){.head = CLUSTER_NONE};
	for (uint64_t i = 0; i < fresh; i++)
		__atomic_store_n(&swap->clusters[i].list, (uint8_t)LIST_NONE, __ATOMIC_RELAXED);
	swap->fresh_next = 0; /* every map is empty: hand them out from the start again */
	pthread_mutex_unlock(&swap->lock);

	__atomic_store_n(&swap->stats.slots_in_use, 0, __ATOMIC_RELAXED);
	__atomic_store_n(&swap->stats.bytes_on_disk, 0, __ATOMIC_RELAXED);
	swap->info.generation++;
	super_write(swap, SUPER_IN_USE, NULL);
	return 0;
}

int swap_collect_all(struct swap *swap, uint64_t *freed_out)
{
	unsigned per = swap->granules_per_cluster;
	uint64_t fresh, freed = 0;

	pthread_mutex_lock(&swap->lock);
	fresh = swap->fresh_next;
	pthread_mutex_unlock(&swap->lock);

	/*
	 * A slot starts where a reference count is nonzero (counts are kept
	 * at a slot's first granule only) and runs over the allocated
	 * granules after it, up to the next start: that is its extent.
	 */
	for (uint64_t i = 0; i < fresh; i++) {
		uint64_t snap[2];

		map_snapshot(swap, (uint32_t)i, snap);
		for (unsigned g = 0; g < per; g++) {
			uint64_t first = i * per + g;
			unsigned n = 1;

			if (!ref_load(swap, first))
				continue;
			while (g + n < per && n < swap->object_granules_max &&
			       map_range_set(snap, g + n, 1) && !ref_load(swap, first + n))
				n++;
			/* As many frees as it has references: the last one frees the space. */
			while (swap_slot_free(swap, slot_make(first, n)) == 0 && ref_load(swap, first))
				;
			freed++;
			g += n - 1;
		}
	}
	if (freed_out)
		*freed_out = freed;
	return 0;
}

void swap_get_info(const struct swap *swap, struct swap_info *info)
{
	*info = swap->info;
}

void swap_get_usage(struct swap *swap, struct swap_usage *usage)
{
	uint64_t granule = swap->info.granule_size;
	unsigned per = swap->granules_per_cluster;
	uint64_t data_size = swap->info.clusters * SWAP_CLUSTER_SIZE;
	struct swap_usage u = {.data_size = data_size};
	uint64_t fresh;

	pthread_mutex_lock(&swap->lock);
	fresh = swap->fresh_next;
	pthread_mutex_unlock(&swap->lock);

	for (uint64_t i = 0; i < fresh; i++) {
		struct swap_cluster *c = &swap->clusters[i];
		pthread_mutex_t *stripe = stripe_of(swap, (uint32_t)i);
		uint64_t free_bytes;
		unsigned used, list, owned;

		pthread_mutex_lock(stripe);
		used = c->used;
		list = __atomic_load_n(&c->list, __ATOMIC_RELAXED);
		owned = __atomic_load_n(&c->owned, __ATOMIC_RELAXED);
		pthread_mutex_unlock(stripe);

		free_bytes = (uint64_t)(per - used) * granule;
		u.used_bytes += (uint64_t)used * granule;
		u.free_bytes += free_bytes;
		if (used)
			u.clusters_in_use++;
		if (owned)
			u.owned_free_bytes += free_bytes;
		else if (list == LIST_FREE)
			u.free_cluster_bytes += free_bytes;
		else if (list == LIST_PARTIAL)
			u.partial_bytes += free_bytes;
		else if (list == LIST_FRAGMENTED)
			u.fragmented_bytes += free_bytes;
	}
	/* Never used clusters (the file may grow fresh_next meanwhile: ignore). */
	u.free_bytes += (swap->info.clusters - fresh) * SWAP_CLUSTER_SIZE;
	u.free_cluster_bytes += (swap->info.clusters - fresh) * SWAP_CLUSTER_SIZE;
	u.slots_in_use = __atomic_load_n(&swap->stats.slots_in_use, __ATOMIC_RELAXED);
	u.header_bytes = u.slots_in_use * RECORD_HEADER;
	if (u.slots_in_use)
		u.bytes_per_slot_milli = u.used_bytes * 1000 / u.slots_in_use;
	*usage = u;
}

void swap_get_stats(const struct swap *swap, struct swap_stats *stats)
{
	const uint64_t *src = (const uint64_t *)&swap->stats;
	uint64_t *dst = (uint64_t *)stats;

	for (size_t i = 0; i < sizeof(*stats) / sizeof(uint64_t); i++)
		dst[i] = __atomic_load_n(&src[i], __ATOMIC_RELAXED);
}

/* --- the owner table --------------------------------------------------------- */

int swap_owner_add(struct swap *swap, const struct swap_owner *owner)
{
	struct swap_owner_disk *slot = NULL;
	int r = 0;

	if (!owner->token)
		return -EINVAL;
	pthread_mutex_lock(&swap->owners_lock);
	for (unsigned i = 0; i < swap->info.owner_capacity; i++) {
		struct swap_owner_disk *e = &swap->owners[i];
		uint64_t token = __atomic_load_n(&e->token, __ATOMIC_RELAXED);

		if (token == owner->token) {
			r = -EEXIST;
			break;
		}
		if (!token && !slot)
			slot = e;
	}
	if (!r && !slot)
		r = -ENOSPC;
	if (!r) {
		/* The token last: a kill before it leaves the entry free. */
		slot->start_time = owner->start_time;
		slot->pid = (int32_t)owner->pid;
		slot->flags = owner->flags;
		slot->reserved = 0;
		__atomic_store_n(&slot->token, owner->token, __ATOMIC_RELEASE);
	}
	pthread_mutex_unlock(&swap->owners_lock);
	return r;
}

int swap_owner_remove(struct swap *swap, uint64_t token)
{
	int r = -ENOENT;

	if (!token)
		return -ENOENT;
	pthread_mutex_lock(&swap->owners_lock);
	for (unsigned i = 0; i < swap->info.owner_capacity; i++) {
		struct swap_owner_disk *e = &swap->owners[i];

		if (__atomic_load_n(&e->token, __ATOMIC_RELAXED) != token)
			continue;
		/* The token first: the entry is free before its fields change. */
		__atomic_store_n(&e->token, 0, __ATOMIC_RELEASE);
		e->start_time = 0;
		e->pid = 0;
		e->flags = 0;
		r = 0;
		break;
	}
	pthread_mutex_unlock(&swap->owners_lock);
	return r;
}

int swap_owner_foreach(struct swap *swap, int (*cb)(const struct swap_owner *owner, void *userdata),
		       void *userdata)
{
	for (unsigned i = 0; i < swap->info.owner_capacity; i++) {
		struct swap_owner_disk *e = &swap->owners[i];
		struct swap_owner copy;
		int r;

		pthread_mutex_lock(&swap->owners_lock);
		copy = (struct swap_owner){
		    .token = __atomic_load_n(&e->token, __ATOMIC_RELAXED),
		    .start_time = e->start_time,
		    .pid = (pid_t)e->pid,
		    .flags = e->flags,
		};
		pthread_mutex_unlock(&swap->owners_lock);
		if (!copy.token)
			continue;
		r = cb(&copy, userdata);
		if (r)
			return r;
	}
	return 0;
}

int swap_process_start_time(pid_t pid, uint64_t *start_time)
{
	char path[64], buf[1024], *p, *end;
	unsigned long long value;
	ssize_t n;

	if (pid <= 0)
		return -ESRCH;
	snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
	n = uz_read_text(path, buf, sizeof(buf));
	if (n == -ENOENT)
		return -ESRCH; /* gone before the open; ESRCH from the read: gone after it */
	if (n < 0)
		return (int)n;
	/* "pid (comm) state ppid ...": comm may hold anything, so start after its last ')'. */
	p = strrchr(buf, ')');
	if (!p)
		return -EINVAL;
	p++;
	/* Fields 3..21 come before starttime (field 22). */
	for (int field = 3; field < 22; field++) {
		while (*p == ' ')
			p++;
		while (*p && *p != ' ')
			p++;
		if (!*p)
			return -EINVAL;
	}
	errno = 0;
	value = strtoull(p, &end, 10);
	if (errno || end == p)
		return -EINVAL;
	*start_time = value;
	return 0;
}

int swap_owner_alive(const struct swap_owner *owner)
{
	uint64_t start_time;
	int r = swap_process_start_time(owner->pid, &start_time);

	if (r == -ESRCH)
		return 0;
	if (r < 0)
		return r;
	return start_time == owner->start_time;
}

void swap_set_fault_injection(struct swap *swap, unsigned what, unsigned percent, uint64_t count)
{
	if (percent > 100)
		percent = 100;
	__atomic_store_n(&swap->inject_what, 0, __ATOMIC_SEQ_CST);
	__atomic_store_n(&swap->inject_percent, percent, __ATOMIC_SEQ_CST);
	__atomic_store_n(&swap->inject_left, count ? (int64_t)count : -1, __ATOMIC_SEQ_CST);
	__atomic_store_n(&swap->inject_what, what, __ATOMIC_SEQ_CST);
}

/* --- requests ---------------------------------------------------------------- */

static struct swap_req *req_get(struct swap_io *io, size_t capacity)
{
	struct swap_req *req = io->idle;

	if (req) {
		io->idle = req->next;
		io->idle_count--;
	} else {
		req = calloc(1, sizeof(*req));
		if (!req)
			return NULL;
		req->io = io;
	}
	if (req->capacity < capacity) {
		void *buffer = NULL;
		size_t size = round_up(capacity, SWAP_BUFFER_ALIGN);

		if (posix_memalign(&buffer, SWAP_BUFFER_ALIGN, size)) {
			free(req->buffer);
			free(req);
			return NULL;
		}
		free(req->buffer);
		req->buffer = buffer;
		req->capacity = size;
	}
	req->next = NULL;
	req->injected = false;
	req->stalls = 0;
	req->done = 0;
	req->batch = NULL;
	req->submit_ns = req->deadline_ns = 0;
	req->link_prev = req->link_next = NULL;
	req->link_sent = req->link_done = req->link_lost = false;
	req->link_error = 0;
	req->dst = NULL;
	req->read_cb = NULL;
	return req;
}

static void req_put(struct swap_io *io, struct swap_req *req)
{
	if (io->idle_count < SWAP_REQ_CACHE) {
		req->next = io->idle;
		io->idle = req;
		io->idle_count++;
		return;
	}
	free(req->buffer);
	free(req);
}

/* Pseudo-random 0..99 for fault injection (xorshift64). */
static unsigned io_random_percent(struct swap_io *io)
{
	io->rng ^= io->rng << 13;
	io->rng ^= io->rng >> 7;
	io->rng ^= io->rng << 17;
	return (unsigned)(io->rng % 100);
}

/* Should this request be altered by the fault of kind `fault`?  Takes a count ticket. */
static bool inject_pick(struct swap_io *io, struct swap_req *req, unsigned fault)
{
	struct swap *swap = io->swap;
	unsigned what = __atomic_load_n(&swap->inject_what, __ATOMIC_ACQUIRE);
	int64_t left;

	if (!(what & fault) || req->injected)
		return false;
	if (io_random_percent(io) >= __atomic_load_n(&swap->inject_percent, __ATOMIC_RELAXED))
		return false;
	left = __atomic_load_n(&swap->inject_left, __ATOMIC_RELAXED);
	do {
		if (left == 0)
			return false;
	} while (left > 0 &&
		 !__atomic_compare_exchange_n(&swap->inject_left, &left, left - 1, false,
					      __ATOMIC_RELAXED, __ATOMIC_RELAXED));
	req->injected = true;
	stat_add(swap, injected_faults, 1);
	return true;
}

/*
 * Injected short transfers are real ones: the request goes to the kernel
 * with half its length (aligned), so the bytes not moved really are not
 * moved and the resubmission must carry them.
 */
static unsigned inject_short(struct swap_io *io, struct swap_req *req, unsigned nbytes)
{
	unsigned fault = req->op == REQ_WRITE ? SWAP_SHORT_WRITE : SWAP_SHORT_READ;
	unsigned half = nbytes / 2;

	half -= half % io->swap->io_align;
	if (half == 0 || !inject_pick(io, req, fault))
		return nbytes;
	return half;
}

/* Injected errors replace the result of a completion that did happen. */
static int inject_error(struct swap_io *io, struct swap_req *req, int res)
{
	unsigned fault = req->op == REQ_WRITE ? SWAP_FAIL_WRITE : SWAP_FAIL_READ;

	if (res < 0 || !inject_pick(io, req, fault))
		return res;
	return -EIO;
}

void swap_backlog_push(struct swap_io *io, struct swap_req *req)
{
	req->next = NULL;
	if (io->backlog_tail)
		io->backlog_tail->next = req;
	else
		io->backlog_head = req;
	io->backlog_tail = req;
}

struct swap_req *swap_backlog_pop(struct swap_io *io)
{
	struct swap_req *req = io->backlog_head;

	if (!req)
		return NULL;
	io->backlog_head = req->next;
	if (!io->backlog_head)
		io->backlog_tail = NULL;
	req->next = NULL;
	return req;
}

void swap_backlog_unpop(struct swap_io *io, struct swap_req *req)
{
	req->next = io->backlog_head;
	io->backlog_head = req;
	if (!io->backlog_tail)
		io->backlog_tail = req;
}

uint64_t swap_now_nsec(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

#define backlog_push swap_backlog_push

/*
 * Move backlogged requests onto the submission queue and submit.  What
 * does not fit stays in the backlog for the next reap.
 */
static int uring_flush(struct swap_io *io)
{
	for (;;) {
		unsigned queued = 0;
		int r;

		while (io->backlog_head) {
			struct swap_req *req = io->backlog_head;
			struct io_uring_sqe *sqe = io_uring_get_sqe(&io->ring);
			void *buf = (char *)req->buffer + req->done;
			unsigned nbytes = (unsigned)(req->length - req->done);
			uint64_t offset = req->offset + req->done;

			if (!sqe)
				break;
			nbytes = inject_short(io, req, nbytes);
			io->backlog_head = req->next;
			if (!io->backlog_head)
				io->backlog_tail = NULL;
			if (req->op == REQ_WRITE)
				io_uring_prep_write(sqe, io->swap->fd, buf, nbytes, offset);
			else
				io_uring_prep_read(sqe, io->swap->fd, buf, nbytes, offset);
			io_uring_sqe_set_data(sqe, req);
			queued++;
		}
		if (!io_uring_sq_ready(&io->ring))
			return 0;
		do
			r = io_uring_submit(&io->ring);
		while (r == -EINTR);
		if (r < 0)
			return r; /* still queued: the next flush retries */
		if (!io->backlog_head || (r == 0 && queued == 0))
			return 0;
	}
}

static void batch_finish_request(struct swap_io *io, struct swap_req *req, int result)
{
	struct swap *swap = io->swap;
	struct swap_batch *batch = req->batch;

	for (size_t i = req->first; i < req->first + req->count; i++) {
		struct swap_object *obj = &batch->objs[batch->order[i]];

		obj->result = result;
		if (result == SWAP_RESULT_UNCERTAIN && swap->backend->quarantine) {
			/* It may still land: the slot stays taken until it cannot. */
			swap->backend->quarantine(io, obj->slot);
			stat_add(swap, io_errors, 1);
		} else if (result < 0) {
			swap_slot_free(swap, obj->slot);
			stat_add(swap, io_errors, 1);
		} else {
			stat_add(swap, writes, 1);
		}
	}
	if (result < 0 && batch->result == 0)
		batch->result = result;
	else if (result == 0)
		stat_add(swap, bytes_written, req->length);
	if (--batch->pending == 0) {
		batch->cb(batch->objs, batch->count, batch->result, batch->userdata);
		free(batch->order);
		free(batch);
	}
}

/* Answer the caller of req (its callback runs); req itself is not recycled. */
void swap_req_answer(struct swap_io *io, struct swap_req *req, int result)
{
	struct swap *swap = io->swap;

	io->inflight--;
	if (result == 0 && req->submit_ns)
		latency_hist_record(req->op == REQ_WRITE ? swap->write_latency : swap->read_latency,
				    swap_now_nsec() - req->submit_ns);
	if (req->op == REQ_WRITE) {
		batch_finish_request(io, req, result);
	} else if (result < 0) {
		stat_add(swap, io_errors, 1);
		req->read_cb(result, NULL, 0, 0, req->userdata);
	} else {
		char *object = (char *)req->buffer + RECORD_HEADER;
		uint64_t vpn = 0;

		stat_add(swap, bytes_read, req->length);
		if (record_verify(swap, req->buffer, req->len, req->owner, &vpn) < 0) {
			stat_add(swap, checksum_errors, 1);
			req->read_cb(-EBADMSG, NULL, 0, 0, req->userdata);
		} else {
			stat_add(swap, reads, 1);
			if (req->dst)
				memcpy(req->dst, object, req->len);
			req->read_cb(0, req->dst ? req->dst : object, req->len, vpn, req->userdata);
		}
	}
}

void swap_req_release(struct swap_io *io, struct swap_req *req)
{
	req_put(io, req);
}

static void req_finish(struct swap_io *io, struct swap_req *req, int result)
{
	swap_req_answer(io, req, result);
	req_put(io, req);
}

/* A completion arrived for req: finish it or resubmit what is left. */
int swap_req_complete(struct swap_io *io, struct swap_req *req, int res)
{
	size_t done;

	res = inject_error(io, req, res);
	if (res < 0) {
		req_finish(io, req, res);
		return 1;
	}
	if (res == 0) {
		req_finish(io, req, -EIO);
		return 1;
	}
	done = req->done + (size_t)res;
	if (done >= req->length) {
		req_finish(io, req, 0);
		return 1;
	}

	/* Short transfer: go on from the last aligned byte. */
	stat_add(io->swap, short_ios, 1);
	done -= done % io->swap->io_align;
	if (done <= req->done && ++req->stalls > SWAP_STALLS_MAX) {
		req_finish(io, req, -EIO);
		return 1;
	}
	if (done > req->done)
		req->stalls = 0;
	req->done = done;
	backlog_push(io, req);
	return 0;
}

/* --- the file backend: io_uring ---------------------------------------------- */

static int uring_io_init(struct swap_io *io)
{
	int r;

	io->event_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (io->event_fd < 0)
		return -errno;
	r = io_uring_queue_init(io->swap->ring_entries, &io->ring, 0);
	if (r < 0)
		goto fail;
	io->ring_ready = true;
	r = io_uring_register_eventfd(&io->ring, io->event_fd);
	if (r < 0)
		goto fail;
	return 0;
fail:
	if (io->ring_ready)
		io_uring_queue_exit(&io->ring);
	io->ring_ready = false;
	close(io->event_fd);
	io->event_fd = -1;
	return r;
}

static void uring_io_fini(struct swap_io *io)
{
	io_uring_queue_exit(&io->ring);
	close(io->event_fd);
}

static int uring_io_fd(const struct swap_io *io)
{
	return io->event_fd;
}

static int uring_reap(struct swap_io *io)
{
	eventfd_t value;
	int finished = 0;

	/* Clear the eventfd first: a completion posted after this wakes the caller again. */
	(void)eventfd_read(io->event_fd, &value);
	for (;;) {
		struct io_uring_cqe *cqe;
		struct swap_req *req;
		int res;

		if (io_uring_peek_cqe(&io->ring, &cqe) < 0)
			break;
		req = io_uring_cqe_get_data(cqe);
		res = cqe->res;
		io_uring_cqe_seen(&io->ring, cqe);
		finished += swap_req_complete(io, req, res);
	}
	if (io->backlog_head) {
		int r = uring_flush(io);

		if (r < 0 && !finished)
			return r;
	}
	return finished;
}

static int uring_wait(struct swap_io *io)
{
	struct io_uring_cqe *cqe;
	int r;

	r = uring_flush(io);
	if (r < 0)
		return r;
	do
		r = io_uring_wait_cqe(&io->ring, &cqe);
	while (r == -EINTR);
	if (r < 0)
		return r;
	return uring_reap(io);
}

const struct swap_backend_ops swap_backend_file = {
    .name = "file",
    .io_init = uring_io_init,
    .io_fini = uring_io_fini,
    .io_fd = uring_io_fd,
    .flush = uring_flush,
    .reap = uring_reap,
    .wait = uring_wait,
};

const char *swap_backend_name(enum swap_backend_kind kind)
{
	return kind == SWAP_BACKEND_NBD ? "nbd" : "file";
}

void swap_get_latency(const struct swap *swap, struct swap_latency *read,
		      struct swap_latency *write)
{
	const struct latency_hist *hists[2] = {swap->read_latency, swap->write_latency};
	struct swap_latency *outs[2] = {read, write};

	for (int i = 0; i < 2; i++) {
		if (!outs[i])
			continue;
		*outs[i] = (struct swap_latency){
		    .count = latency_hist_count(hists[i]),
		    .p50_ns = latency_hist_percentile(hists[i], 50),
		    .p99_ns = latency_hist_percentile(hists[i], 99),
		};
	}
}

/* --- swap_io ---------------------------------------------------------------- */

int swap_io_new(struct swap_io **out, struct swap *swap)
{
	struct swap_io *io;
	int r;

	io = calloc(1, sizeof(*io));
	if (!io)
		return -ENOMEM;
	io->swap = swap;
	io->event_fd = -1;
	io->cluster = CLUSTER_NONE;
	io->rng = (uint64_t)(uintptr_t)io * 0x9e3779b97f4a7c15ULL | 1;
	r = swap->backend->io_init(io);
	if (r < 0) {
		free(io);
		return r;
	}
	__atomic_fetch_add(&swap->nr_ios, 1, __ATOMIC_RELEASE);
	*out = io;
	return 0;
}

struct swap_io *swap_io_free(struct swap_io *io)
{
	if (!io)
		return NULL;
	while (io->inflight) {
		if (swap_io_wait(io) < 0)
			break; /* the backend's teardown cancels what is left */
	}
	if (io->cluster != CLUSTER_NONE)
		cluster_release(io->swap, io->cluster);
	io->swap->backend->io_fini(io);
	while (io->idle) {
		struct swap_req *req = io->idle;

		io->idle = req->next;
		free(req->buffer);
		free(req);
	}
	__atomic_fetch_sub(&io->swap->nr_ios, 1, __ATOMIC_RELEASE);
	free(io);
	return NULL;
}

int swap_io_fd(const struct swap_io *io)
{
	return io->swap->backend->io_fd(io);
}

size_t swap_io_inflight(const struct swap_io *io)
{
	return io->inflight;
}

int swap_io_reap(struct swap_io *io)
{
	return io->swap->backend->reap(io);
}

int swap_io_wait(struct swap_io *io)
{
	if (!io->inflight)
		return 0;
	return io->swap->backend->wait(io);
}

static int slot_cmp(const void *a, const void *b, void *userdata)
{
	const struct swap_object *objs = userdata;
	uint64_t sa = objs[*(const size_t *)a].slot, sb = objs[*(const size_t *)b].slot;

	return sa < sb ? -1 : sa > sb;
}

int swap_io_write(struct swap_io *io, struct swap_object *objs, size_t count, swap_write_cb cb,
		  void *userdata)
{
	struct swap *swap = io->swap;
	uint64_t granule = swap->info.granule_size;
	struct swap_req *reqs = NULL;
	struct swap_batch *batch;
	size_t allocated = 0, nreqs = 0;
	uint64_t now = swap_now_nsec();
	int r;

	if (count == 0 || !cb)
		return -EINVAL;
	for (size_t i = 0; i < count; i++)
		if (!objs[i].data || objs[i].len == 0 || objs[i].len > SWAP_OBJECT_MAX)
			return -EINVAL;
	if (swap->backend->writable) {
		r = swap->backend->writable(io);
		if (r < 0)
			return r; /* a far end that is down: nothing taken */
	}

	batch = calloc(1, sizeof(*batch));
	if (!batch)
		return -ENOMEM;
	batch->order = malloc(count * sizeof(*batch->order));
	if (!batch->order) {
		r = -ENOMEM;
		goto fail;
	}
	batch->objs = objs;
	batch->count = count;
	batch->cb = cb;
	batch->userdata = userdata;

	for (; allocated < count; allocated++) {
		r = swap_slot_alloc(io, objs[allocated].len, &objs[allocated].slot);
		if (r < 0)
			goto fail;
		objs[allocated].result = 0;
		batch->order[allocated] = allocated;
	}
	qsort_r(batch->order, count, sizeof(*batch->order), slot_cmp, objs);

	/* One request per run of adjacent slots. */
	for (size_t i = 0; i < count;) {
		uint64_t start = slot_granule(objs[batch->order[i]].slot);
		uint64_t end = start + slot_granules(objs[batch->order[i]].slot);
		size_t j = i + 1;
		struct swap_req *req;

		while (j < count) {
			uint64_t slot = objs[batch->order[j]].slot;

			if (slot_granule(slot) != end ||
			    (end - start + slot_granules(slot)) * granule > SWAP_RUN_MAX)
				break;
			end += slot_granules(slot);
			j++;
		}
		req = req_get(io, (end - start) * granule);
		if (!req) {
			r = -ENOMEM;
			goto fail;
		}
		req->op = REQ_WRITE;
		req->submit_ns = now;
		req->offset = swap->info.data_offset + start * granule;
		req->length = (end - start) * granule;
		req->batch = batch;
		req->first = i;
		req->count = j - i;
		for (size_t k = i; k < j; k++) {
			const struct swap_object *obj = &objs[batch->order[k]];
			char *at =
			    (char *)req->buffer + (slot_granule(obj->slot) - start) * granule;

			record_build(swap, at, obj, swap_slot_disk_bytes(swap, obj->slot));
		}
		req->next = reqs;
		reqs = req;
		nreqs++;
		i = j;
	}

	batch->pending = nreqs;
	while (reqs) {
		struct swap_req *req = reqs;

		reqs = req->next;
		backlog_push(io, req);
	}
	io->inflight += nreqs;
	stat_add(swap, write_batches, 1);
	stat_add(swap, write_ios, nreqs);
	(void)swap->backend->flush(io); /* on failure the backlog keeps them for the next reap */
	return 0;

fail:
	while (reqs) {
		struct swap_req *req = reqs;

		reqs = req->next;
		req_put(io, req);
	}
	for (size_t i = 0; i < allocated; i++)
		swap_slot_free(swap, objs[i].slot);
	free(batch->order);
	free(batch);
	return r;
}

int swap_io_read(struct swap_io *io, uint64_t slot, size_t len, uint64_t owner, void *dst,
		 swap_read_cb cb, void *userdata)
{
	struct swap *swap = io->swap;
	unsigned n = slot_granules(slot);
	struct swap_req *req;
	uint32_t index;
	unsigned start;

	if (!cb || len == 0 || len > SWAP_OBJECT_MAX ||
	    slot_locate(swap, slot, &index, &start) < 0 || n != record_granules(swap, len))
		return -EINVAL;

	req = req_get(io, (size_t)swap->object_granules_max * swap->info.granule_size);
	if (!req)
		return -ENOMEM;
	req->op = REQ_READ;
	req->submit_ns = swap_now_nsec();
	req->deadline_ns = swap->timeout_ms ? req->submit_ns + swap->timeout_ms * 1000000ULL : 0;
	req->offset = swap->info.data_offset + slot_granule(slot) * swap->info.granule_size;
	req->length = (size_t)n * swap->info.granule_size;
	req->len = len;
	req->owner = owner;
	req->dst = dst;
	req->read_cb = cb;
	req->userdata = userdata;
	backlog_push(io, req);
	io->inflight++;
	stat_add(swap, read_ios, 1);
	(void)swap->backend->flush(io);
	return 0;
}

/* --- synchronous helpers ------------------------------------------------------- */

struct sync_wait {
	bool done;
	int result;
	uint64_t vpn;
};

static void sync_write_done(struct swap_object *objs, size_t count, int result, void *userdata)
{
	struct sync_wait *wait = userdata;

	wait->result = result;
	wait->done = true;
}

static void sync_read_done(int result, const void *data, size_t len, uint64_t vpn, void *userdata)
{
	struct sync_wait *wait = userdata;

	wait->result = result;
	wait->vpn = vpn;
	wait->done = true;
}

static int sync_until_done(struct swap_io *io, struct sync_wait *wait)
{
	while (!wait->done) {
		int r = swap_io_wait(io);

		if (r < 0)
			return r;
	}
	return wait->result;
}

int swap_io_write_sync(struct swap_io *io, struct swap_object *objs, size_t count)
{
	struct sync_wait wait = {0};
	int r;

	r = swap_io_write(io, objs, count, sync_write_done, &wait);
	if (r < 0)
		return r;
	return sync_until_done(io, &wait);
}

int swap_io_read_sync(struct swap_io *io, uint64_t slot, size_t len, uint64_t owner, void *dst,
		      uint64_t *vpn)
{
	struct sync_wait wait = {0};
	int r;

	if (!dst)
		return -EINVAL;
	r = swap_io_read(io, slot, len, owner, dst, sync_read_done, &wait);
	if (r < 0)
		return r;
	r = sync_until_done(io, &wait);
	if (r == 0 && vpn)
		*vpn = wait.vpn;
	return r;
}
