// SPDX-License-Identifier: MIT
/*
 * The compressed-object pool: a size-class allocator in the manner of
 * zsmalloc, built on a memfd (the arena) that outlives the daemon.
 *
 * Layout.  The arena is cut into frames of POOL_FRAME_SIZE (128 KiB) at
 * offset frame * POOL_FRAME_SIZE.  Frame 0 holds the arena header (struct
 * arena_header: magic, layout version, frame size and class geometry, the
 * random 128-bit family token, creation time, and a check over all of it);
 * it is written once, at creation.  Every other frame in use holds one chunk
 * of one size class: a 16-byte frame header (magic, its own frame number,
 * class size, slot count, a check binding them to the token), then two bytes
 * of metadata per slot (reference count, 0 = free; slack = class size minus
 * the exact length), then the slots, from a 32-byte boundary.  Everything
 * recovery needs is there; nothing else about an object is kept anywhere.
 * Unused frames are holes of the file.
 *
 * Allocation.  An object of 1..4096 bytes is rounded up to a multiple of
 * POOL_CLASS_GRAIN (32), a bigger one (a multi-page unit, up to
 * POOL_OBJECT_MAX) to a multiple of POOL_LARGE_GRAIN (256), and goes to
 * that class.  The chunk of a class covers the
 * first 64..128 KiB of its frame, in whole pages, picked once to leave the
 * smallest fraction unused (header and tail); the rest of the frame is never
 * touched.  A slot is taken from the fullest chunk with room: partially used
 * chunks sit in fullness groups (quarters), searched from the fullest, so
 * sparse chunks drain.  Free slots are chained through their own first two
 * bytes (a volatile chain, rebuilt by recovery); slots never used are handed
 * out from a bump index.  A chunk's frame is the lowest free frame, so the
 * file stays compact; when none is free the file doubles (ftruncate) and so
 * does the mapping (mremap MREMAP_MAYMOVE): no pointer into the arena lives
 * across a call that can allocate a frame, addresses are computed from the
 * current base and the frame number.  A new chunk's pages are populated in
 * one MADV_POPULATE_WRITE instead of a page fault each at first write (the
 * MAP_POPULATE of the old anonymous chunks nearly doubled two-thread store
 * throughput), and a failure to get them is a clean -ENOMEM rather than a
 * SIGBUS later.  A frame whose last object goes is punched out
 * (FALLOC_FL_PUNCH_HOLE) and its number reused.
 *
 * Handles are (frame + 1, class, slot) in 42 bits: they mean the same after
 * a recovery.  Loads and releases check the frame (in range, holding a chunk
 * of the handle's class), the slot (allocated) and, where given, the length.
 *
 * Reference counts (fork sharing) are the arena's one byte per slot;
 * pool_ref() adds one, pool_release() drops one and frees at 0.  A shared
 * object counts once in the usage.  Compaction, as before: the sparsest
 * chunks of a class are marked for evacuation, as many as the rest of the
 * class can absorb, and owners copy their objects out; a chunk holding a
 * shared object is never marked (its other referrer's handle would dangle),
 * and a shared object is never copied.
 *
 * Write ordering.  A kill at any instruction leaves program order of the
 * stores before it in the page cache (a killed thread's executed stores are
 * not lost; a machine crash loses the memfd anyway), so the order of writes
 * below is the order a later recovery can find them in; the compiler is
 * kept from reordering them by signal fences (persist_point()).  The rule:
 * a slot's refcount goes above 0 only once its bytes are in place, and is
 * the last thing that becomes true about an object; it goes to 0 only after
 * nobody refers to the object, and is the first thing that changes.
 *  - Arena creation: size, header fields and check, then the magic.  Killed
 *    before the magic: not an arena, and nothing was ever stored in it.
 *  - Chunk set-up on a free frame: (1) frame magic cleared, (2) metadata
 *    zeroed, (3) frame number, class, slot count, check, (4) magic.  A frame
 *    without the magic holds no object; one with it has no stale refcount.
 *  - Store: (1) bytes copied into a slot of refcount 0, (2) slack, (3)
 *    refcount := 1, (4) the handle returned; the caller records it after.
 *    Killed before (3): a free slot nobody knows.  After: at worst a leak.
 *  - Ref: refcount + 1, then the caller records the second referrer.
 *    Killed between: a reference too many, a leak when the rest are gone.
 *  - Release: the caller forgets its reference first; then refcount - 1; at
 *    0 only afterwards is the slot written (its free-chain link), and the
 *    frame, if it is empty, punched (if the punch fails its magic is
 *    cleared) before its number is free again.  Killed before the refcount
 *    store: a leaked reference; after it, a free slot or an empty frame.
 *  - Migration: a copy is a store; the caller switches its reference, then
 *    releases the old object.  Killed between: the old one leaks.
 *  - Growth: ftruncate, then mremap.  Killed between: frames past the old
 *    end are holes, free.
 * Recovery believes exactly this: a frame with a consistent header is a
 * chunk whose slots of refcount > 0 are live (leaks included), the others
 * free; a frame without the magic is free; a frame with the magic and an
 * inconsistent header or slot metadata (which no kill can produce) is
 * rejected and kept out of use, so no slot that might hold an object anyone
 * refers to is ever handed out again.  It validates the file first (a memfd
 * of ours: tmpfs, unlinked, named uzswap-arena, owned by geteuid(), mode
 * 0600), reads headers with pread (a read fault on a hole of a shared
 * mapping would allocate a page) and skips holes with SEEK_DATA; every loop
 * is bounded by the file size and the slot count.
 *
 * Two daemons must not write one arena: the pool holds an exclusive flock()
 * on its own open file description (clients' read-only descriptors are
 * other descriptions), so recovering an arena that a live pool still owns
 * fails with -EBUSY; a killed daemon's lock goes with its descriptors.
 *
 * Locking: one mutex per pool guards everything, the copies of object bytes
 * included (growth moves the mapping).  A pool is meant for one thread at a
 * time; the lock is uncontended then.  The one system call made outside it
 * is the punch of an emptied frame (a TLB shootdown, the costliest call
 * here): the frame is neither a chunk nor free meanwhile, and the punch
 * names a file offset, which a concurrent growth cannot move.  Setting up a
 * chunk (and growing) happens under the lock.  The gauges are written under
 * the lock with relaxed atomic stores, read from any thread; each pool also
 * adds its changes to a shared struct pool_totals (atomic adds).
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/magic.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <time.h>
#include <unistd.h>

#include "util.h"
#include "pool/pool.h"

#define POOL_FRAME_SIZE	    (128U << 10)
#define POOL_CLASS_GRAIN    32U /* class sizes up to a page */
#define POOL_SMALL_CLASSES  (UZ_PAGE_SIZE / POOL_CLASS_GRAIN)
#define POOL_LARGE_GRAIN    256U /* class sizes above a page, up to POOL_OBJECT_MAX */
#define POOL_NR_CLASSES	    (POOL_SMALL_CLASSES + (POOL_OBJECT_MAX - UZ_PAGE_SIZE) / POOL_LARGE_GRAIN)
#define POOL_CHUNK_MIN	    (64U << 10)
#define POOL_SLOT_ALIGN	    32U
#define POOL_FRAMES_INITIAL 8U /* 1 MiB of address space, the header frame included */

/*
 * Handle: [slot: 12 bits][class: 8 bits][frame + 1: 22 bits] from bit 0 up.
 * An arena of layout version 1 (objects up to a page, 128 classes) has
 * 7-bit classes and 23-bit frames; a daemon takes such an arena back
 * (an upgrade by handover) and keeps its geometry (struct pool_geometry).
 */
#define HANDLE_SLOT_BITS 12

#define ARENA_MAGIC	   0x414e455241575a55ULL /* "UZWARENA" */
#define ARENA_VERSION	   2U		/* 1: objects up to a page; 2: up to POOL_OBJECT_MAX */
#define ARENA_HEADER_BYTES UZ_PAGE_SIZE /* the page of frame 0 the header dirties */
#define FRAME_MAGIC	   0x4d52465aU	/* "ZFRM" */

_Static_assert(POOL_NR_CLASSES <= 255, "class index is a byte, CLASS_NONE apart");
_Static_assert(POOL_NR_CLASSES <= (1U << 8), "class field too small");
_Static_assert(POOL_FRAME_SIZE / (POOL_CLASS_GRAIN + 2) < (1U << HANDLE_SLOT_BITS),
	       "slot field too small");
_Static_assert(POOL_LARGE_GRAIN <= 0x100, "slack must fit in a byte");
_Static_assert(POOL_OBJECT_MAX <= UINT16_MAX, "class size is 16 bits in the frame header");

/* What an arena's layout version fixes: the largest object and the handle's fields. */
struct pool_geometry {
	uint32_t version;
	uint32_t object_max;
	unsigned nr_classes;
	unsigned class_bits;
	uint32_t frames_max; /* frames an arena may have */
};

static const struct pool_geometry geometries[] = {
    {1, UZ_PAGE_SIZE, POOL_SMALL_CLASSES, 7, (1U << (POOL_HANDLE_BITS - HANDLE_SLOT_BITS - 7)) - 1},
    {2, POOL_OBJECT_MAX, POOL_NR_CLASSES, 8, (1U << (POOL_HANDLE_BITS - HANDLE_SLOT_BITS - 8)) - 1},
};
#define GEOMETRY_CURRENT (&geometries[UZ_ARRAY_SIZE(geometries) - 1])
#define POOL_FRAMES_ANY	 ((1U << (POOL_HANDLE_BITS - HANDLE_SLOT_BITS - 7)) - 1)
_Static_assert(POOL_REFCOUNT_MAX == 0xff, "refcount is a byte");

/* Frame 0, offset 0.  Written once, at creation; the magic last. */
struct arena_header {
	uint64_t magic;			/* ARENA_MAGIC */
	uint32_t version;		/* ARENA_VERSION: this layout and class geometry */
	uint32_t header_size;		/* sizeof(struct arena_header) */
	uint32_t frame_size;		/* POOL_FRAME_SIZE */
	uint32_t frame_header_size;	/* sizeof(struct frame_header) */
	uint32_t class_grain;		/* POOL_CLASS_GRAIN */
	uint32_t object_max;		/* the version's largest object */
	uint8_t token[POOL_TOKEN_SIZE]; /* random, from getrandom(2): names the family */
	uint64_t created_usec;		/* CLOCK_REALTIME at creation, for people */
	uint64_t check;			/* hash of the fields above (this one as 0) */
};

/* Per slot, in the frame header: the object's persistent metadata. */
struct slot_meta {
	uint8_t refcount; /* 0: free */
	uint8_t slack;	  /* class size minus the object's length (< the class's grain) */
};

/* At the start of every frame holding a chunk. */
struct frame_header {
	uint32_t magic;		 /* FRAME_MAGIC, set last at set-up */
	uint32_t frame;		 /* this frame's number */
	uint16_t class_size;	 /* bytes per slot */
	uint16_t nr_slots;	 /* slots in the chunk */
	uint32_t check;		 /* hash of token, frame, class_size, nr_slots */
	struct slot_meta meta[]; /* nr_slots of them; the slots follow */
};
_Static_assert(sizeof(struct frame_header) == 16, "frame header layout");

#define SLOT_NONE  0xffffU
#define FRAME_NONE UINT32_MAX
#define CLASS_NONE 0xffU

/*
 * Where a frame stands.  Groups 0..NR_GROUPS-1 are the fullness lists of
 * partially used chunks (quarters of their slots); GROUP_EVACUATING has a
 * list too; the others are in no list.
 */
#define NR_GROUPS	 4
#define GROUP_EVACUATING NR_GROUPS
#define NR_LISTS	 (NR_GROUPS + 1)
#define GROUP_FULL	 (NR_GROUPS + 1)
#define GROUP_UNUSED	 (NR_GROUPS + 2) /* a free frame */
#define GROUP_RESERVED	 (NR_GROUPS + 3) /* the header frame, or a rejected one */
#define GROUP_RETIRING	 (NR_GROUPS + 4) /* emptied, being punched: not free yet */

/* The in-memory state of one frame, indexed by frame number. */
struct frame {
	uint32_t prev, next; /* in a list of its class, FRAME_NONE at the ends */
	uint16_t nr_used;    /* slots with refcount > 0 */
	uint16_t nr_shared;  /* slots with refcount > 1 */
	uint16_t bump;	     /* slots below this have been handed out at least once */
	uint16_t free_head;  /* first slot of the free chain, SLOT_NONE if empty */
	uint8_t class_index; /* CLASS_NONE unless the frame holds a chunk */
	uint8_t group;	     /* see GROUP_* */
};

struct pool_class {
	uint32_t size;	      /* slot size in bytes */
	uint32_t chunk_bytes; /* bytes of the frame the chunk covers (whole pages) */
	uint16_t nr_slots;
	uint16_t slots_offset; /* from the frame's start */
	uint32_t lists[NR_LISTS];
};

/* The gauges of struct pool_usage, one counter each. */
enum gauge {
	GAUGE_TOTAL_SIZE,     /* arena bytes in use */
	GAUGE_STORED_BYTES,   /* bytes of live objects */
	GAUGE_STORED_OBJECTS, /* live objects */
	GAUGE_CHUNKS,	      /* frames holding a chunk */
	GAUGE_METADATA_BYTES, /* heap bytes of the bookkeeping */
	GAUGE_ARENA_METADATA, /* arena bytes of headers and slot metadata */
	GAUGE__COUNT,
};

struct pool_totals {
	_Alignas(64) uint64_t gauges[GAUGE__COUNT]; /* sums over the pools, atomic adds */
};

struct pool {
	pthread_mutex_t lock;
	const struct pool_geometry *geometry;
	int fd;		    /* the arena, read-write, flock()ed */
	char *base;	    /* its mapping, nr_frames frames, moves on growth */
	uint32_t nr_frames; /* frames mapped */
	uint32_t table_len; /* frames the tables below cover (>= nr_frames) */
	uint32_t free_hint; /* no free frame below this one */
	struct frame *frames;
	uint64_t *free_bits; /* one bit per frame: free */
	bool populate_unsupported;
	uint8_t token[POOL_TOKEN_SIZE];
	struct pool_totals *totals; /* may be NULL */
	/* Test hooks: allocations / ordered writes left; negative: no limit. */
	int64_t map_budget;
	int64_t crash_budget;
	uint64_t gauges[GAUGE__COUNT]; /* written under the lock, read from anywhere */
	struct pool_class classes[POOL_NR_CLASSES];
};

/* The slot a handle names, once checked. */
struct slot_ref {
	uint32_t frame;
	unsigned class_index;
	unsigned slot;
	struct slot_meta *meta;
};

static void gauge_add(struct pool *pool, enum gauge gauge, int64_t delta)
{
	uint64_t value = __atomic_load_n(&pool->gauges[gauge], __ATOMIC_RELAXED);

	__atomic_store_n(&pool->gauges[gauge], value + (uint64_t)delta, __ATOMIC_RELAXED);
	if (pool->totals)
		__atomic_fetch_add(&pool->totals->gauges[gauge], (uint64_t)delta, __ATOMIC_RELAXED);
}

static void gauges_read(const uint64_t *gauges, struct pool_usage *usage)
{
	usage->total_size = __atomic_load_n(&gauges[GAUGE_TOTAL_SIZE], __ATOMIC_RELAXED);
	usage->stored_bytes = __atomic_load_n(&gauges[GAUGE_STORED_BYTES], __ATOMIC_RELAXED);
	usage->stored_objects = __atomic_load_n(&gauges[GAUGE_STORED_OBJECTS], __ATOMIC_RELAXED);
	usage->chunks = __atomic_load_n(&gauges[GAUGE_CHUNKS], __ATOMIC_RELAXED);
	usage->metadata_bytes = __atomic_load_n(&gauges[GAUGE_METADATA_BYTES], __ATOMIC_RELAXED);
	usage->arena_metadata_bytes =
	    __atomic_load_n(&gauges[GAUGE_ARENA_METADATA], __ATOMIC_RELAXED);
}

/*
 * Between two arena writes whose order matters: the compiler may not move
 * stores across it (a kill is an asynchronous interruption of this thread,
 * so a signal fence is the barrier that matters), and the crash test hook
 * may kill the process here.
 */
static void persist_point(struct pool *pool)
{
	__atomic_signal_fence(__ATOMIC_SEQ_CST);
	if (uz_likely(pool->crash_budget < 0))
		return;
	if (pool->crash_budget-- == 0) {
		kill(getpid(), SIGKILL);
		for (;;)
			pause();
	}
}

/* FNV-1a, for the header checks. */
static uint64_t hash_bytes(uint64_t hash, const void *data, size_t len)
{
	const uint8_t *p = data;

	while (len--)
		hash = (hash ^ *p++) * 0x100000001b3ULL;
	return hash;
}

#define HASH_SEED 0xcbf29ce484222325ULL

static uint64_t arena_header_check(const struct arena_header *header)
{
	struct arena_header copy = *header;

	copy.check = 0;
	return hash_bytes(HASH_SEED, &copy, sizeof(copy));
}

static uint32_t frame_check(const uint8_t *token, uint32_t frame, uint16_t class_size,
			    uint16_t nr_slots)
{
	uint64_t hash = hash_bytes(HASH_SEED, token, POOL_TOKEN_SIZE);

	hash = hash_bytes(hash, &frame, sizeof(frame));
	hash = hash_bytes(hash, &class_size, sizeof(class_size));
	hash = hash_bytes(hash, &nr_slots, sizeof(nr_slots));
	return (uint32_t)(hash ^ (hash >> 32));
}

static pool_handle_t handle_make(const struct pool *pool, unsigned class_index, uint32_t frame,
				 unsigned slot)
{
	return ((pool_handle_t)(frame + 1) << (HANDLE_SLOT_BITS + pool->geometry->class_bits)) |
	       ((pool_handle_t)class_index << HANDLE_SLOT_BITS) | slot;
}

/* Classes: 32-byte steps up to a page, then 256-byte steps up to POOL_OBJECT_MAX. */
static unsigned class_of_length(size_t len)
{
	if (len <= UZ_PAGE_SIZE)
		return (unsigned)((len + POOL_CLASS_GRAIN - 1) / POOL_CLASS_GRAIN - 1);
	return POOL_SMALL_CLASSES +
	       (unsigned)((len - UZ_PAGE_SIZE + POOL_LARGE_GRAIN - 1) / POOL_LARGE_GRAIN - 1);
}

static uint32_t class_size_of(unsigned class_index)
{
	if (class_index < POOL_SMALL_CLASSES)
		return (class_index + 1) * POOL_CLASS_GRAIN;
	return UZ_PAGE_SIZE + (class_index - POOL_SMALL_CLASSES + 1) * POOL_LARGE_GRAIN;
}

static uint32_t class_grain_of(unsigned class_index)
{
	return class_index < POOL_SMALL_CLASSES ? POOL_CLASS_GRAIN : POOL_LARGE_GRAIN;
}

static uint32_t slots_offset_for(unsigned nr_slots)
{
	uint32_t end =
	    (uint32_t)(sizeof(struct frame_header) + nr_slots * sizeof(struct slot_meta));

	return (end + POOL_SLOT_ALIGN - 1) / POOL_SLOT_ALIGN * POOL_SLOT_ALIGN;
}

/* How many slots of size bytes fit in a chunk of bytes, header included. */
static unsigned slots_fitting(uint32_t size, uint32_t bytes)
{
	unsigned n =
	    (unsigned)((bytes - sizeof(struct frame_header)) / (size + sizeof(struct slot_meta)));

	while (n && slots_offset_for(n) + (uint64_t)n * size > bytes)
		n--;
	return n;
}

/*
 * The chunk size, in whole pages between POOL_CHUNK_MIN and the frame,
 * that leaves the smallest fraction unused by object slots.
 */
static void class_init(struct pool_class *cls, uint32_t size)
{
	uint32_t candidate, best = POOL_CHUNK_MIN;
	uint64_t best_waste = UINT64_MAX;
	unsigned i;

	for (candidate = POOL_CHUNK_MIN; candidate <= POOL_FRAME_SIZE; candidate += UZ_PAGE_SIZE) {
		uint64_t used = (uint64_t)slots_fitting(size, candidate) * size;
		/* Waste per byte, compared as waste * other size to stay in integers. */
		uint64_t waste = (candidate - used) * POOL_FRAME_SIZE / candidate;

		if (waste < best_waste) {
			best_waste = waste;
			best = candidate;
		}
	}
	cls->size = size;
	cls->chunk_bytes = best;
	cls->nr_slots = (uint16_t)slots_fitting(size, best);
	cls->slots_offset = (uint16_t)slots_offset_for(cls->nr_slots);
	for (i = 0; i < NR_LISTS; i++)
		cls->lists[i] = FRAME_NONE;
}

static char *frame_addr(const struct pool *pool, uint32_t frame)
{
	return pool->base + (size_t)frame * POOL_FRAME_SIZE;
}

static struct frame_header *frame_header_of(const struct pool *pool, uint32_t frame)
{
	return (struct frame_header *)frame_addr(pool, frame);
}

static char *slot_addr(const struct pool *pool, const struct pool_class *cls, uint32_t frame,
		       unsigned slot)
{
	return frame_addr(pool, frame) + cls->slots_offset + (size_t)slot * cls->size;
}

static void list_add(struct pool *pool, struct pool_class *cls, unsigned list, uint32_t frame)
{
	struct frame *f = &pool->frames[frame];

	f->prev = FRAME_NONE;
	f->next = cls->lists[list];
	if (f->next != FRAME_NONE)
		pool->frames[f->next].prev = frame;
	cls->lists[list] = frame;
}

/* Takes a frame out of the list its group names, if any. */
static void list_del(struct pool *pool, struct pool_class *cls, uint32_t frame)
{
	struct frame *f = &pool->frames[frame];

	if (f->group >= NR_LISTS)
		return;
	if (f->prev != FRAME_NONE)
		pool->frames[f->prev].next = f->next;
	else
		cls->lists[f->group] = f->next;
	if (f->next != FRAME_NONE)
		pool->frames[f->next].prev = f->prev;
	f->prev = f->next = FRAME_NONE;
}

static unsigned chunk_group(const struct frame *f, const struct pool_class *cls)
{
	if (f->nr_used == cls->nr_slots)
		return GROUP_FULL;
	return (unsigned)f->nr_used * NR_GROUPS / cls->nr_slots;
}

/* Puts a chunk in the group its fill now calls for (evacuating ones stay). */
static void chunk_regroup(struct pool *pool, struct pool_class *cls, uint32_t frame)
{
	struct frame *f = &pool->frames[frame];
	unsigned group;

	if (f->group == GROUP_EVACUATING)
		return;
	group = chunk_group(f, cls);
	if (group == f->group)
		return;
	list_del(pool, cls, frame);
	f->group = (uint8_t)group;
	if (group < NR_GROUPS)
		list_add(pool, cls, group, frame);
}

static void frame_mark_free(struct pool *pool, uint32_t frame)
{
	struct frame *f = &pool->frames[frame];

	*f = (struct frame){.prev = FRAME_NONE,
			    .next = FRAME_NONE,
			    .free_head = SLOT_NONE,
			    .class_index = CLASS_NONE,
			    .group = GROUP_UNUSED};
	pool->free_bits[frame / 64] |= 1ULL << (frame % 64);
	if (frame < pool->free_hint)
		pool->free_hint = frame;
}

static void frame_mark_used(struct pool *pool, uint32_t frame)
{
	pool->free_bits[frame / 64] &= ~(1ULL << (frame % 64));
}

/* The lowest free frame, or FRAME_NONE. */
static uint32_t frame_find_free(struct pool *pool)
{
	uint32_t word = pool->free_hint / 64, words = (pool->table_len + 63) / 64;
	uint64_t bits;

	for (; word < words; word++) {
		bits = pool->free_bits[word];
		if (word == pool->free_hint / 64)
			bits &= ~0ULL << (pool->free_hint % 64);
		if (bits) {
			pool->free_hint = word * 64 + (uint32_t)__builtin_ctzll(bits);
			return pool->free_hint;
		}
	}
	pool->free_hint = pool->table_len;
	return FRAME_NONE;
}

/* Makes the frame tables cover len frames; new entries are in use until marked free. */
static int tables_reserve(struct pool *pool, uint32_t len)
{
	size_t old_words = (pool->table_len + 63) / 64, words = ((size_t)len + 63) / 64;
	struct frame *frames;
	uint64_t *bits;
	uint32_t i;

	if (len <= pool->table_len)
		return 0;
	frames = realloc(pool->frames, (size_t)len * sizeof(*frames));
	if (!frames)
		return -ENOMEM;
	pool->frames = frames;
	bits = realloc(pool->free_bits, words * sizeof(*bits));
	if (!bits)
		return -ENOMEM;
	pool->free_bits = bits;
	memset(bits + old_words, 0, (words - old_words) * sizeof(*bits));
	for (i = pool->table_len; i < len; i++)
		frames[i] = (struct frame){.prev = FRAME_NONE,
					   .next = FRAME_NONE,
					   .free_head = SLOT_NONE,
					   .class_index = CLASS_NONE,
					   .group = GROUP_RESERVED};
	gauge_add(pool, GAUGE_METADATA_BYTES,
		  (int64_t)(len - pool->table_len) * (int64_t)sizeof(*frames) +
		      (int64_t)(words - old_words) * (int64_t)sizeof(*bits));
	pool->table_len = len;
	return 0;
}

/* False when a file size limit would refuse size (ftruncate would raise SIGXFSZ). */
static bool file_size_allowed(uint64_t size)
{
	struct rlimit limit;

	return getrlimit(RLIMIT_FSIZE, &limit) < 0 || limit.rlim_cur == RLIM_INFINITY ||
	       size <= limit.rlim_cur;
}

/* Doubles the arena: the file first, then the mapping. */
static int arena_grow(struct pool *pool)
{
	uint32_t old_frames = pool->nr_frames, new_frames = old_frames * 2, frame;
	void *base;
	int r;

	if (new_frames > pool->geometry->frames_max)
		new_frames = pool->geometry->frames_max;
	if (new_frames <= old_frames)
		return -ENOMEM;
	r = tables_reserve(pool, new_frames);
	if (r < 0)
		return r;
	if (!file_size_allowed((uint64_t)new_frames * POOL_FRAME_SIZE))
		return -ENOMEM;
	persist_point(pool);
	if (ftruncate(pool->fd, (off_t)new_frames * POOL_FRAME_SIZE) < 0)
		return -ENOMEM;
	persist_point(pool);
	base = mremap(pool->base, (size_t)old_frames * POOL_FRAME_SIZE,
		      (size_t)new_frames * POOL_FRAME_SIZE, MREMAP_MAYMOVE);
	if (base == MAP_FAILED)
		return -ENOMEM;
	pool->base = base;
	pool->nr_frames = new_frames;
	for (frame = old_frames; frame < new_frames; frame++)
		frame_mark_free(pool, frame);
	return 0;
}

static bool frame_punch_hole(int fd, uint32_t frame)
{
	return fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
			 (off_t)frame * POOL_FRAME_SIZE, POOL_FRAME_SIZE) == 0;
}

/* A frame that cannot be punched loses its magic instead: it holds nothing. */
static void frame_forget(struct pool *pool, uint32_t frame)
{
	__atomic_store_n(&frame_header_of(pool, frame)->magic, 0, __ATOMIC_RELAXED);
}

/* Gives a frame's memory back, lock held. */
static void frame_punch(struct pool *pool, uint32_t frame)
{
	if (!frame_punch_hole(pool->fd, frame))
		frame_forget(pool, frame);
}

/* The test hook: false when the next frame allocation is to fail. */
static bool pool_map_budget_take(struct pool *pool)
{
	int64_t budget = __atomic_load_n(&pool->map_budget, __ATOMIC_RELAXED);

	do {
		if (budget < 0)
			return true;
		if (budget == 0)
			return false;
	} while (!__atomic_compare_exchange_n(&pool->map_budget, &budget, budget - 1, false,
					      __ATOMIC_RELAXED, __ATOMIC_RELAXED));
	return true;
}

/* Sets up a chunk of a class on the lowest free frame, growing the arena if needed. */
static int chunk_new(struct pool *pool, unsigned class_index, uint32_t *out)
{
	struct pool_class *cls = &pool->classes[class_index];
	struct frame_header *header;
	struct frame *f;
	uint32_t frame;
	int r;

	if (!pool_map_budget_take(pool))
		return -ENOMEM;
	frame = frame_find_free(pool);
	if (frame == FRAME_NONE) {
		r = arena_grow(pool);
		if (r < 0)
			return r;
		frame = frame_find_free(pool);
		if (frame == FRAME_NONE)
			return -ENOMEM;
	}
	if (!pool->populate_unsupported &&
	    madvise(frame_addr(pool, frame), cls->chunk_bytes, MADV_POPULATE_WRITE) < 0) {
		if (errno != EINVAL) {
			frame_punch(pool, frame); /* what was populated before it failed */
			return -ENOMEM;
		}
		pool->populate_unsupported = true; /* before Linux 5.14: fault as we write */
	}

	header = frame_header_of(pool, frame);
	persist_point(pool);
	__atomic_store_n(&header->magic, 0, __ATOMIC_RELAXED);
	persist_point(pool);
	memset(header->meta, 0, cls->nr_slots * sizeof(struct slot_meta));
	persist_point(pool);
	header->frame = frame;
	header->class_size = (uint16_t)cls->size;
	header->nr_slots = cls->nr_slots;
	header->check = frame_check(pool->token, frame, (uint16_t)cls->size, cls->nr_slots);
	persist_point(pool);
	__atomic_store_n(&header->magic, FRAME_MAGIC, __ATOMIC_RELAXED);
	persist_point(pool);

	frame_mark_used(pool, frame);
	f = &pool->frames[frame];
	*f = (struct frame){.prev = FRAME_NONE,
			    .next = FRAME_NONE,
			    .free_head = SLOT_NONE,
			    .class_index = (uint8_t)class_index,
			    .group = GROUP_FULL}; /* in no list yet: chunk_regroup() places it */
	chunk_regroup(pool, cls, frame);
	gauge_add(pool, GAUGE_CHUNKS, 1);
	gauge_add(pool, GAUGE_TOTAL_SIZE, cls->chunk_bytes);
	gauge_add(pool, GAUGE_ARENA_METADATA, cls->slots_offset);
	*out = frame;
	return 0;
}

/*
 * An empty chunk stops being one.  Its frame is punched by the caller
 * after dropping the lock (chunk_punch_retired()), which frees it: the
 * punch unmaps pages, a TLB shootdown that other threads of a shared pool
 * should not wait for; it works on the file offset, so a concurrent
 * growth that moves the mapping does not matter.
 */
static void chunk_retire(struct pool *pool, uint32_t frame)
{
	struct frame *f = &pool->frames[frame];
	struct pool_class *cls = &pool->classes[f->class_index];

	list_del(pool, cls, frame);
	f->class_index = CLASS_NONE;
	f->group = GROUP_RETIRING;
	gauge_add(pool, GAUGE_CHUNKS, -1);
	gauge_add(pool, GAUGE_TOTAL_SIZE, -(int64_t)cls->chunk_bytes);
	gauge_add(pool, GAUGE_ARENA_METADATA, -(int64_t)cls->slots_offset);
}

/* Called without the lock, for a frame chunk_retire() returned. */
static void chunk_punch_retired(struct pool *pool, uint32_t frame)
{
	bool punched = frame_punch_hole(pool->fd, frame);

	pthread_mutex_lock(&pool->lock);
	persist_point(pool);
	if (!punched)
		frame_forget(pool, frame);
	persist_point(pool);
	frame_mark_free(pool, frame);
	pthread_mutex_unlock(&pool->lock);
}

/*
 * Chains the free slots of a chunk below its bump index, lowest first,
 * from the refcounts alone (recovery, or a chain found broken).
 */
static void chunk_rebuild_chain(struct pool *pool, uint32_t frame)
{
	struct frame *f = &pool->frames[frame];
	const struct pool_class *cls = &pool->classes[f->class_index];
	const struct frame_header *header = frame_header_of(pool, frame);
	uint16_t head = SLOT_NONE;
	unsigned slot;

	for (slot = f->bump; slot-- > 0;) {
		if (header->meta[slot].refcount)
			continue;
		memcpy(slot_addr(pool, cls, frame, slot), &head, sizeof(head));
		head = (uint16_t)slot;
	}
	f->free_head = head;
}

/* Is the head of a chunk's free chain a free slot linking to a possible one? */
static bool free_head_sound(const struct pool *pool, uint32_t frame)
{
	const struct frame *f = &pool->frames[frame];
	const struct pool_class *cls = &pool->classes[f->class_index];
	uint16_t next;

	if (f->free_head >= f->bump || frame_header_of(pool, frame)->meta[f->free_head].refcount)
		return false;
	memcpy(&next, slot_addr(pool, cls, frame, f->free_head), sizeof(next));
	return next == SLOT_NONE || next < f->bump;
}

/*
 * Takes a slot from the fullest chunk of a class with room, setting up a
 * chunk if there is none.  The slot is free (refcount 0) until the caller
 * commits an object to it.
 */
static int class_alloc(struct pool *pool, unsigned class_index, uint32_t *frame_out,
		       unsigned *slot_out)
{
	struct pool_class *cls = &pool->classes[class_index];
	uint32_t frame = FRAME_NONE;
	struct frame *f;
	unsigned slot;
	int group, r;

	for (group = NR_GROUPS - 1; group >= 0 && frame == FRAME_NONE; group--)
		frame = cls->lists[group];
	if (frame == FRAME_NONE) {
		r = chunk_new(pool, class_index, &frame);
		if (r < 0)
			return r;
	}
	f = &pool->frames[frame];
	if (f->free_head != SLOT_NONE && !free_head_sound(pool, frame))
		chunk_rebuild_chain(pool, frame); /* never hand out a live slot */
	if (f->free_head == SLOT_NONE) {
		slot = f->bump++;
	} else {
		uint16_t next;

		slot = f->free_head;
		memcpy(&next, slot_addr(pool, cls, frame, slot), sizeof(next));
		f->free_head = next;
	}
	f->nr_used++;
	chunk_regroup(pool, cls, frame);
	*frame_out = frame;
	*slot_out = slot;
	return 0;
}

/* Makes a slot whose bytes are in place a live object of refcount 1: the commit of a store. */
static void object_commit(struct pool *pool, uint32_t frame, unsigned slot, size_t len)
{
	const struct pool_class *cls = &pool->classes[pool->frames[frame].class_index];
	struct slot_meta *meta = &frame_header_of(pool, frame)->meta[slot];

	persist_point(pool);
	meta->slack = (uint8_t)(cls->size - len);
	persist_point(pool);
	__atomic_store_n(&meta->refcount, 1, __ATOMIC_RELAXED);
	persist_point(pool);
	gauge_add(pool, GAUGE_STORED_BYTES, (int64_t)len);
	gauge_add(pool, GAUGE_STORED_OBJECTS, 1);
}

/* Caller holds the lock.  Checks a handle; false when it names no live object. */
static bool slot_locate(struct pool *pool, pool_handle_t handle, struct slot_ref *ref)
{
	unsigned class_bits = pool->geometry->class_bits;
	uint64_t frame_field = handle >> (HANDLE_SLOT_BITS + class_bits);
	unsigned class_index = (unsigned)((handle >> HANDLE_SLOT_BITS) & ((1U << class_bits) - 1));
	unsigned slot = (unsigned)(handle & ((1U << HANDLE_SLOT_BITS) - 1));
	struct slot_meta *meta;
	uint32_t frame;

	if (frame_field == 0 || frame_field > pool->nr_frames || handle >> POOL_HANDLE_BITS ||
	    class_index >= pool->geometry->nr_classes)
		return false;
	frame = (uint32_t)(frame_field - 1);
	if (pool->frames[frame].class_index != class_index ||
	    slot >= pool->classes[class_index].nr_slots)
		return false;
	meta = &frame_header_of(pool, frame)->meta[slot];
	if (meta->refcount == 0)
		return false;
	*ref = (struct slot_ref){frame, class_index, slot, meta};
	return true;
}

static size_t slot_length(const struct pool *pool, const struct slot_ref *ref)
{
	return pool->classes[ref->class_index].size - ref->meta->slack;
}

/*
 * Caller holds the lock.  Drops one reference of a located object.
 * Returns the frame the caller must hand to chunk_punch_retired() once
 * unlocked, or FRAME_NONE.
 */
static uint32_t object_release(struct pool *pool, const struct slot_ref *ref)
{
	struct frame *f = &pool->frames[ref->frame];
	struct pool_class *cls = &pool->classes[ref->class_index];
	uint8_t refcount = ref->meta->refcount;
	uint16_t next;
	size_t len;

	if (refcount > 1) {
		persist_point(pool);
		__atomic_store_n(&ref->meta->refcount, refcount - 1, __ATOMIC_RELAXED);
		persist_point(pool);
		if (refcount == 2)
			f->nr_shared--;
		return FRAME_NONE;
	}
	len = slot_length(pool, ref);
	persist_point(pool);
	__atomic_store_n(&ref->meta->refcount, 0, __ATOMIC_RELAXED);
	persist_point(pool);
	/* Free now: only from here on may its bytes change. */
	next = f->free_head;
	memcpy(slot_addr(pool, cls, ref->frame, ref->slot), &next, sizeof(next));
	f->free_head = (uint16_t)ref->slot;
	f->nr_used--;
	gauge_add(pool, GAUGE_STORED_BYTES, -(int64_t)len);
	gauge_add(pool, GAUGE_STORED_OBJECTS, -1);
	if (f->nr_used == 0) {
		chunk_retire(pool, ref->frame);
		return ref->frame;
	}
	chunk_regroup(pool, cls, ref->frame);
	return FRAME_NONE;
}

/* A pool with no arena yet. */
static struct pool *pool_alloc(struct pool_totals *totals)
{
	struct pool *pool;
	unsigned i;

	pool = calloc(1, sizeof(*pool));
	if (!pool)
		return NULL;
	pthread_mutex_init(&pool->lock, NULL);
	pool->fd = -1;
	pool->map_budget = -1;
	pool->crash_budget = -1;
	pool->totals = totals;
	pool->geometry = GEOMETRY_CURRENT;
	for (i = 0; i < POOL_NR_CLASSES; i++)
		class_init(&pool->classes[i], class_size_of(i));
	gauge_add(pool, GAUGE_METADATA_BYTES, sizeof(*pool));
	return pool;
}

int pool_totals_new(struct pool_totals **out)
{
	struct pool_totals *totals = aligned_alloc(64, sizeof(*totals));

	if (!totals)
		return -ENOMEM;
	memset(totals, 0, sizeof(*totals));
	*out = totals;
	return 0;
}

struct pool_totals *pool_totals_free(struct pool_totals *totals)
{
	free(totals);
	return NULL;
}

void pool_totals_get(struct pool_totals *totals, struct pool_usage *usage)
{
	gauges_read(totals->gauges, usage);
}

int pool_new(struct pool **out, struct pool_totals *totals)
{
	return pool_new_layout(out, totals, ARENA_VERSION);
}

int pool_new_layout(struct pool **out, struct pool_totals *totals, unsigned version)
{
	const struct pool_geometry *geometry = NULL;
	struct arena_header fields, *header;
	struct pool *pool;
	struct timespec now;
	uint32_t frame;
	ssize_t n;
	int r;

	for (size_t i = 0; i < UZ_ARRAY_SIZE(geometries); i++)
		if (geometries[i].version == version)
			geometry = &geometries[i];
	if (!geometry)
		return -EINVAL;
	pool = pool_alloc(totals);
	if (!pool)
		return -ENOMEM;
	pool->geometry = geometry;
	pool->fd = memfd_create("uzswap-arena", MFD_CLOEXEC);
	if (pool->fd < 0 || fchmod(pool->fd, 0600) < 0 || flock(pool->fd, LOCK_EX | LOCK_NB) < 0 ||
	    ftruncate(pool->fd, (off_t)POOL_FRAMES_INITIAL * POOL_FRAME_SIZE) < 0) {
		r = -errno;
		goto fail;
	}
	do
		n = getrandom(pool->token, sizeof(pool->token), 0);
	while (n < 0 && errno == EINTR);
	if (n != (ssize_t)sizeof(pool->token)) {
		r = n < 0 ? -errno : -EIO;
		goto fail;
	}
	pool->base = mmap(NULL, (size_t)POOL_FRAMES_INITIAL * POOL_FRAME_SIZE,
			  PROT_READ | PROT_WRITE, MAP_SHARED, pool->fd, 0);
	if (pool->base == MAP_FAILED) {
		pool->base = NULL;
		r = -ENOMEM;
		goto fail;
	}
	pool->nr_frames = POOL_FRAMES_INITIAL;
	r = tables_reserve(pool, POOL_FRAMES_INITIAL);
	if (r < 0)
		goto fail;
	for (frame = 1; frame < POOL_FRAMES_INITIAL; frame++)
		frame_mark_free(pool, frame);

	clock_gettime(CLOCK_REALTIME, &now);
	fields = (struct arena_header){
	    .magic = ARENA_MAGIC,
	    .version = pool->geometry->version,
	    .header_size = sizeof(fields),
	    .frame_size = POOL_FRAME_SIZE,
	    .frame_header_size = sizeof(struct frame_header),
	    .class_grain = POOL_CLASS_GRAIN,
	    .object_max = pool->geometry->object_max,
	    .created_usec = (uint64_t)now.tv_sec * 1000000 + (uint64_t)now.tv_nsec / 1000,
	};
	memcpy(fields.token, pool->token, sizeof(fields.token));
	fields.check = arena_header_check(&fields);
	fields.magic = 0;
	header = (struct arena_header *)pool->base;
	*header = fields;
	persist_point(pool);
	__atomic_store_n(&header->magic, ARENA_MAGIC, __ATOMIC_RELAXED);
	persist_point(pool);
	gauge_add(pool, GAUGE_TOTAL_SIZE, ARENA_HEADER_BYTES);
	gauge_add(pool, GAUGE_ARENA_METADATA, ARENA_HEADER_BYTES);
	*out = pool;
	return 0;

fail:
	pool_free(pool);
	return r;
}

/* Is fd a memfd arena of ours?  0, -EINVAL (not an arena file) or -EPERM (owner, mode). */
static int arena_check_file(int fd, struct stat *st)
{
	static const char name[] = "/memfd:uzswap-arena";
	char path[64], target[64];
	struct statfs fs;
	ssize_t n;

	if (fstat(fd, st) < 0 || fstatfs(fd, &fs) < 0)
		return -errno;
	if (!S_ISREG(st->st_mode) || fs.f_type != TMPFS_MAGIC || st->st_nlink != 0)
		return -EINVAL;
	if (st->st_uid != geteuid() || (st->st_mode & 07777) != 0600)
		return -EPERM;
	snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
	n = readlink(path, target, sizeof(target) - 1);
	if (n < 0)
		return -errno;
	target[n] = '\0';
	if (strncmp(target, name, sizeof(name) - 1) != 0)
		return -EINVAL;
	if (st->st_size < POOL_FRAME_SIZE || st->st_size % POOL_FRAME_SIZE != 0 ||
	    (uint64_t)st->st_size / POOL_FRAME_SIZE > POOL_FRAMES_ANY)
		return -EINVAL;
	return 0;
}

/* Reads and checks the arena header: its geometry, or NULL (not an arena of a known layout). */
static const struct pool_geometry *arena_read_header(int fd, struct arena_header *header)
{
	const struct pool_geometry *g = NULL;

	if (pread(fd, header, sizeof(*header), 0) != (ssize_t)sizeof(*header))
		return NULL;
	for (size_t i = 0; i < UZ_ARRAY_SIZE(geometries); i++)
		if (header->version == geometries[i].version)
			g = &geometries[i];
	if (!g || header->magic != ARENA_MAGIC || header->header_size != sizeof(*header) ||
	    header->frame_size != POOL_FRAME_SIZE ||
	    header->frame_header_size != sizeof(struct frame_header) ||
	    header->class_grain != POOL_CLASS_GRAIN || header->object_max != g->object_max ||
	    header->check != arena_header_check(header))
		return NULL;
	return g;
}

/*
 * Recovery of one frame with data, from a copy of its header (buf, read
 * with pread, at least the largest header long).
 */
static void recover_frame(struct pool *pool, uint32_t frame, const struct frame_header *header,
			  struct pool_recover_report *report)
{
	unsigned class_index, slot, nr_used = 0, nr_shared = 0, last = 0;
	uint64_t bytes = 0, references = 0;
	const struct pool_class *cls;
	struct frame *f;

	if (header->magic != FRAME_MAGIC) {
		/* Never set up, set up halfway, or freed unpunched: no object here. */
		frame_punch(pool, frame);
		report->frames_freed++;
		return;
	}
	if (header->class_size == 0 || header->class_size > pool->geometry->object_max)
		goto reject;
	class_index = class_of_length(header->class_size);
	if (class_size_of(class_index) != header->class_size)
		goto reject;
	cls = &pool->classes[class_index];
	if (header->nr_slots != cls->nr_slots || header->frame != frame ||
	    header->check != frame_check(pool->token, frame, header->class_size, header->nr_slots))
		goto reject;
	for (slot = 0; slot < cls->nr_slots; slot++) {
		const struct slot_meta *meta = &header->meta[slot];

		if (!meta->refcount)
			continue;
		if (meta->slack >= class_grain_of(class_index))
			goto reject;
		nr_used++;
		nr_shared += meta->refcount > 1;
		references += meta->refcount;
		bytes += cls->size - meta->slack;
		last = slot;
	}
	if (nr_used == 0) {
		frame_punch(pool, frame);
		report->frames_freed++;
		return;
	}

	frame_mark_used(pool, frame);
	f = &pool->frames[frame];
	*f = (struct frame){.prev = FRAME_NONE,
			    .next = FRAME_NONE,
			    .nr_used = (uint16_t)nr_used,
			    .nr_shared = (uint16_t)nr_shared,
			    .bump = (uint16_t)(last + 1),
			    .class_index = (uint8_t)class_index,
			    .group = GROUP_FULL};
	chunk_rebuild_chain(pool, frame);
	chunk_regroup(pool, &pool->classes[class_index], frame);
	gauge_add(pool, GAUGE_CHUNKS, 1);
	gauge_add(pool, GAUGE_TOTAL_SIZE, cls->chunk_bytes);
	gauge_add(pool, GAUGE_ARENA_METADATA, cls->slots_offset);
	gauge_add(pool, GAUGE_STORED_BYTES, (int64_t)bytes);
	gauge_add(pool, GAUGE_STORED_OBJECTS, nr_used);
	report->frames++;
	report->objects += nr_used;
	report->references += references;
	report->bytes += bytes;
	return;

reject:
	/* Ours, but not consistent: no kill makes this.  Keep it out of use. */
	frame_mark_used(pool, frame);
	pool->frames[frame].group = GROUP_RESERVED;
	gauge_add(pool, GAUGE_TOTAL_SIZE, POOL_FRAME_SIZE);
	report->frames_rejected++;
}

int pool_recover(struct pool **out, int fd, struct pool_totals *totals,
		 struct pool_recover_report *report)
{
	size_t header_max = slots_offset_for(POOL_FRAME_SIZE / (POOL_CLASS_GRAIN + 2));
	struct pool_recover_report found = {0};
	struct arena_header header;
	struct stat st, own_st;
	struct pool *pool = NULL;
	_cleanup_free_ void *buf = NULL;
	char path[64];
	uint32_t frame;
	int r;

	r = arena_check_file(fd, &st);
	if (r < 0)
		return r;
	pool = pool_alloc(totals);
	buf = malloc(header_max);
	if (!pool || !buf) {
		r = -ENOMEM;
		goto fail;
	}
	/* Our own read-write description (fd may be a client's read-only one). */
	snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
	pool->fd = open(path, O_RDWR | O_CLOEXEC);
	if (pool->fd < 0 || fstat(pool->fd, &own_st) < 0) {
		r = -errno;
		goto fail;
	}
	if (own_st.st_dev != st.st_dev || own_st.st_ino != st.st_ino ||
	    own_st.st_size != st.st_size) {
		r = -EINVAL;
		goto fail;
	}
	if (flock(pool->fd, LOCK_EX | LOCK_NB) < 0) {
		r = errno == EWOULDBLOCK ? -EBUSY : -errno;
		goto fail;
	}
	pool->geometry = arena_read_header(pool->fd, &header);
	if (!pool->geometry ||
	    (uint64_t)st.st_size / POOL_FRAME_SIZE > pool->geometry->frames_max) {
		r = -EINVAL;
		goto fail;
	}
	memcpy(pool->token, header.token, sizeof(pool->token));

	pool->nr_frames = (uint32_t)(st.st_size / POOL_FRAME_SIZE);
	pool->base =
	    mmap(NULL, (size_t)st.st_size, PROT_READ | PROT_WRITE, MAP_SHARED, pool->fd, 0);
	if (pool->base == MAP_FAILED) {
		pool->base = NULL;
		r = -ENOMEM;
		goto fail;
	}
	r = tables_reserve(pool, pool->nr_frames);
	if (r < 0)
		goto fail;
	for (frame = 1; frame < pool->nr_frames; frame++)
		frame_mark_free(pool, frame);
	gauge_add(pool, GAUGE_TOTAL_SIZE, ARENA_HEADER_BYTES);
	gauge_add(pool, GAUGE_ARENA_METADATA, ARENA_HEADER_BYTES);

	for (frame = 1; frame < pool->nr_frames; frame++) {
		off_t data = lseek(pool->fd, (off_t)frame * POOL_FRAME_SIZE, SEEK_DATA);

		if (data < 0 && errno == ENXIO)
			break; /* only holes from here on */
		if (data >= 0) {
			if (data >= (off_t)pool->nr_frames * POOL_FRAME_SIZE)
				break;
			frame = (uint32_t)(data / POOL_FRAME_SIZE);
		}
		/* data < 0 otherwise: no SEEK_DATA, look at every frame. */
		if (pread(pool->fd, buf, header_max, (off_t)frame * POOL_FRAME_SIZE) !=
		    (ssize_t)header_max) {
			r = -EIO;
			goto fail;
		}
		recover_frame(pool, frame, buf, &found);
	}
	if (report)
		*report = found;
	*out = pool;
	return 0;

fail:
	pool_free(pool);
	return r;
}

struct pool *pool_free(struct pool *pool)
{
	enum gauge gauge;

	if (!pool)
		return NULL;
	if (pool->base)
		munmap(pool->base, (size_t)pool->nr_frames * POOL_FRAME_SIZE);
	if (pool->fd >= 0)
		close(pool->fd);
	if (pool->totals) {
		for (gauge = 0; gauge < GAUGE__COUNT; gauge++)
			__atomic_fetch_sub(&pool->totals->gauges[gauge], pool->gauges[gauge],
					   __ATOMIC_RELAXED);
	}
	free(pool->frames);
	free(pool->free_bits);
	pthread_mutex_destroy(&pool->lock);
	free(pool);
	return NULL;
}

int pool_open_readonly(struct pool *pool)
{
	char path[64];
	int fd;

	snprintf(path, sizeof(path), "/proc/self/fd/%d", pool->fd);
	fd = open(path, O_RDONLY | O_CLOEXEC);
	return fd < 0 ? -errno : fd;
}

void pool_token(struct pool *pool, uint8_t out[POOL_TOKEN_SIZE])
{
	memcpy(out, pool->token, POOL_TOKEN_SIZE);
}

int pool_store(struct pool *pool, const void *data, size_t len, pool_handle_t *out)
{
	unsigned class_index, slot;
	uint32_t frame;
	int r;

	if (len == 0 || len > pool->geometry->object_max)
		return -EINVAL;
	class_index = class_of_length(len);

	pthread_mutex_lock(&pool->lock);
	r = class_alloc(pool, class_index, &frame, &slot);
	if (r == 0) {
		memcpy(slot_addr(pool, &pool->classes[class_index], frame, slot), data, len);
		object_commit(pool, frame, slot, len);
	}
	pthread_mutex_unlock(&pool->lock);
	if (r < 0)
		return r;
	*out = handle_make(pool, class_index, frame, slot);
	return 0;
}

size_t pool_object_max(const struct pool *pool)
{
	return pool->geometry->object_max;
}

int pool_load(struct pool *pool, pool_handle_t handle, void *dst, size_t len)
{
	struct slot_ref ref;
	int r = -EINVAL;

	pthread_mutex_lock(&pool->lock);
	if (slot_locate(pool, handle, &ref) && slot_length(pool, &ref) == len) {
		memcpy(dst, slot_addr(pool, &pool->classes[ref.class_index], ref.frame, ref.slot),
		       len);
		r = 0;
	}
	pthread_mutex_unlock(&pool->lock);
	return r;
}

int pool_ref(struct pool *pool, pool_handle_t handle)
{
	struct slot_ref ref;
	int r = -EINVAL;

	pthread_mutex_lock(&pool->lock);
	if (slot_locate(pool, handle, &ref)) {
		uint8_t refcount = ref.meta->refcount;

		if (refcount == POOL_REFCOUNT_MAX) {
			r = -EOVERFLOW;
		} else {
			persist_point(pool);
			__atomic_store_n(&ref.meta->refcount, refcount + 1, __ATOMIC_RELAXED);
			persist_point(pool);
			if (refcount == 1)
				pool->frames[ref.frame].nr_shared++;
			r = 0;
		}
	}
	pthread_mutex_unlock(&pool->lock);
	return r;
}

int pool_refcount(struct pool *pool, pool_handle_t handle)
{
	struct slot_ref ref;
	int r = -EINVAL;

	pthread_mutex_lock(&pool->lock);
	if (slot_locate(pool, handle, &ref))
		r = ref.meta->refcount;
	pthread_mutex_unlock(&pool->lock);
	return r;
}

int pool_release(struct pool *pool, pool_handle_t handle)
{
	uint32_t retired = FRAME_NONE;
	struct slot_ref ref;
	int r = -EINVAL;

	pthread_mutex_lock(&pool->lock);
	if (slot_locate(pool, handle, &ref)) {
		retired = object_release(pool, &ref);
		r = 0;
	}
	pthread_mutex_unlock(&pool->lock);
	if (retired != FRAME_NONE)
		chunk_punch_retired(pool, retired);
	return r;
}

void pool_get_usage(struct pool *pool, struct pool_usage *usage)
{
	gauges_read(pool->gauges, usage);
}

/*
 * Caller holds the lock.  The first live object at or after (frame, slot),
 * moving the cursor past it; false when there is none.
 */
static bool walk_next(struct pool *pool, uint32_t *frame, unsigned *slot, pool_handle_t *handle,
		      size_t *len, unsigned *refcount)
{
	for (; *frame < pool->nr_frames; (*frame)++, *slot = 0) {
		const struct frame *f = &pool->frames[*frame];
		const struct frame_header *header;

		if (f->class_index == CLASS_NONE)
			continue;
		header = frame_header_of(pool, *frame);
		for (; *slot < f->bump; (*slot)++) {
			const struct slot_meta *meta = &header->meta[*slot];

			if (!meta->refcount)
				continue;
			*handle = handle_make(pool, f->class_index, *frame, *slot);
			*len = pool->classes[f->class_index].size - meta->slack;
			*refcount = meta->refcount;
			(*slot)++;
			return true;
		}
	}
	return false;
}

int pool_walk(struct pool *pool, pool_walk_fn fn, void *userdata)
{
	uint32_t frame = 1;
	unsigned slot = 0;

	for (;;) {
		pool_handle_t handle;
		unsigned refcount;
		size_t len;
		bool found;
		int r;

		pthread_mutex_lock(&pool->lock);
		found = walk_next(pool, &frame, &slot, &handle, &len, &refcount);
		pthread_mutex_unlock(&pool->lock);
		if (!found)
			return 0;
		r = fn(handle, len, refcount, userdata);
		if (r)
			return r;
	}
}

static int key_compare(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

	return (x > y) - (x < y);
}

/*
 * Marks the sparsest chunks of a class under the threshold, as long as
 * their objects fit in the free slots of the chunks left; chunks left
 * marked by an earlier pass are put back first.  Chunks holding a shared
 * object are never marked.
 */
static int class_compact_begin(struct pool *pool, struct pool_class *cls, unsigned min_fill_percent)
{
	uint64_t free_rest = 0, moving = 0, *candidates;
	size_t nr = 0, nr_candidates = 0, i;
	uint32_t frame;
	int group, marked = 0;

	while ((frame = cls->lists[GROUP_EVACUATING]) != FRAME_NONE) {
		list_del(pool, cls, frame);
		pool->frames[frame].group = GROUP_FULL; /* in no list: regroup places it */
		chunk_regroup(pool, cls, frame);
	}
	for (group = 0; group < NR_GROUPS; group++) {
		for (frame = cls->lists[group]; frame != FRAME_NONE;
		     frame = pool->frames[frame].next) {
			nr++;
			free_rest += cls->nr_slots - pool->frames[frame].nr_used;
		}
	}
	if (nr < 2)
		return 0;
	candidates = malloc(nr * sizeof(*candidates));
	if (!candidates)
		return -ENOMEM;
	for (group = 0; group < NR_GROUPS; group++) {
		for (frame = cls->lists[group]; frame != FRAME_NONE;
		     frame = pool->frames[frame].next) {
			if (!pool->frames[frame].nr_shared)
				candidates[nr_candidates++] =
				    (uint64_t)pool->frames[frame].nr_used << 32 | frame;
		}
	}
	/* Sparsest first: the key is (objects, frame). */
	qsort(candidates, nr_candidates, sizeof(*candidates), key_compare);
	for (i = 0; i < nr_candidates; i++) {
		uint64_t used = candidates[i] >> 32;

		frame = (uint32_t)candidates[i];
		if (used * 100 >= (uint64_t)min_fill_percent * cls->nr_slots)
			break;
		if (moving + used > free_rest - (cls->nr_slots - used))
			break;
		moving += used;
		free_rest -= cls->nr_slots - used;
		list_del(pool, cls, frame);
		pool->frames[frame].group = GROUP_EVACUATING;
		list_add(pool, cls, GROUP_EVACUATING, frame);
		marked++;
	}
	free(candidates);
	return marked;
}

int pool_compact_begin(struct pool *pool, unsigned min_fill_percent)
{
	unsigned i;
	int marked = 0, r = 0;

	if (min_fill_percent > 100)
		return -EINVAL;
	pthread_mutex_lock(&pool->lock);
	for (i = 0; i < POOL_NR_CLASSES && r >= 0; i++) {
		r = class_compact_begin(pool, &pool->classes[i], min_fill_percent);
		if (r > 0)
			marked += r;
	}
	pthread_mutex_unlock(&pool->lock);
	return r < 0 ? r : marked;
}

bool pool_handle_evacuating(struct pool *pool, pool_handle_t handle)
{
	struct slot_ref ref;
	bool evacuating;

	pthread_mutex_lock(&pool->lock);
	evacuating = slot_locate(pool, handle, &ref) &&
		     pool->frames[ref.frame].group == GROUP_EVACUATING && ref.meta->refcount == 1;
	pthread_mutex_unlock(&pool->lock);
	return evacuating;
}

int pool_migrate_copy(struct pool *pool, pool_handle_t handle, size_t len, pool_handle_t *out)
{
	struct slot_ref ref;
	const struct pool_class *cls;
	unsigned slot;
	uint32_t frame;
	int r;

	pthread_mutex_lock(&pool->lock);
	if (!slot_locate(pool, handle, &ref) || slot_length(pool, &ref) != len) {
		r = -EINVAL;
		goto out;
	}
	if (ref.meta->refcount > 1) {
		r = -EBUSY;
		goto out;
	}
	r = class_alloc(pool, ref.class_index, &frame, &slot);
	if (r < 0)
		goto out;
	/* Both addresses now: a new chunk may have moved the arena. */
	cls = &pool->classes[ref.class_index];
	memcpy(slot_addr(pool, cls, frame, slot), slot_addr(pool, cls, ref.frame, ref.slot), len);
	object_commit(pool, frame, slot, len);
	*out = handle_make(pool, ref.class_index, frame, slot);
out:
	pthread_mutex_unlock(&pool->lock);
	return r;
}

void pool_inject_map_failures(struct pool *pool, int64_t after)
{
	__atomic_store_n(&pool->map_budget, after < 0 ? -1 : after, __ATOMIC_RELAXED);
}

void pool_inject_crash(struct pool *pool, int64_t after)
{
	pthread_mutex_lock(&pool->lock);
	pool->crash_budget = after < 0 ? -1 : after;
	pthread_mutex_unlock(&pool->lock);
}
