// SPDX-License-Identifier: MIT
/*
 * The compressed-object pool: a size-class allocator in the manner of
 * zsmalloc, built on anonymous mmap.
 *
 * An object of 1..4096 bytes is rounded up to a multiple of
 * POOL_CLASS_GRAIN and goes to that size class.  A class hands out slots in
 * chunks: one mmap each, all of the class's slots of one size, no object
 * spanning two chunks.  The chunk size of a class is picked once, between
 * 64 and 128 KiB in whole pages, to leave the smallest tail unused; with a
 * fine grain and a small tail the pool stays within a few percent of the
 * compressed bytes it holds.  A chunk whose last object goes is unmapped at
 * once, so memory goes back to the system as the pool shrinks.
 *
 * Fragmentation is kept down two ways.  Allocation takes a slot from the
 * fullest chunk that still has room: partially used chunks sit in fullness
 * groups (quarters), searched from the fullest, so sparse chunks are left to
 * drain.  And compaction: pool_compact_begin() marks the sparsest chunks of
 * each class for evacuation, as many as the rest of the class can absorb, and
 * takes them off the allocation lists; owners ask pool_handle_evacuating()
 * as they meet their handles and move the objects with pool_migrate().  The
 * pool keeps no back-references, so only the owner of a handle can move it.
 *
 * A handle is (chunk id + 1, class, slot) packed in 44 bits; chunk ids are
 * per class and recycled.  Free slots are chained through their own first
 * two bytes; slots never used yet are handed out from a bump index, so a
 * fresh chunk is not touched before it is written.  One byte per slot
 * records how much shorter than the class size the object is (0xff: free),
 * which gives the exact compressed length on release and lets loads and
 * releases check the handle they are given.
 *
 * Locking: one mutex per class guards its chunk table, its fullness lists
 * and every chunk's slot bookkeeping.  Object bytes are copied outside the
 * lock: a live object cannot move or vanish under its owner, who is the only
 * one allowed to release or migrate it.  New chunks are mapped with the class
 * lock held (it keeps two threads from mapping two chunks for one object);
 * empty chunks are unmapped after the lock is dropped.
 *
 * Chunks are mapped with MAP_POPULATE: one system call fills all their pages
 * instead of a page fault per page at first write, and the faults of one
 * thread no longer queue behind another thread's mmap on the kernel's
 * mmap lock (store throughput with two threads nearly doubled with it).
 */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "util.h"
#include "pool/pool.h"

#define POOL_OBJECT_MAX	 4096U
#define POOL_CLASS_GRAIN 32U
#define POOL_NR_CLASSES	 (POOL_OBJECT_MAX / POOL_CLASS_GRAIN)
#define POOL_CHUNK_MIN	 (64U << 10)
#define POOL_CHUNK_MAX	 (128U << 10)

/* Handle: [slot: 12 bits][class: 7 bits][chunk id + 1: 25 bits] from bit 0 up. */
#define HANDLE_SLOT_BITS   12
#define HANDLE_CLASS_BITS  7
#define HANDLE_CHUNK_SHIFT (HANDLE_SLOT_BITS + HANDLE_CLASS_BITS)
#define HANDLE_CHUNK_BITS  (POOL_HANDLE_BITS - HANDLE_CHUNK_SHIFT)
#define POOL_CHUNK_IDS	   ((1U << HANDLE_CHUNK_BITS) - 1)

_Static_assert(POOL_NR_CLASSES <= (1U << HANDLE_CLASS_BITS), "class field too small");
_Static_assert(POOL_CHUNK_MAX / POOL_CLASS_GRAIN <= (1U << HANDLE_SLOT_BITS),
	       "slot field too small");
_Static_assert(POOL_CLASS_GRAIN <= 0xff, "slack must fit in a byte");

#define SLOT_NONE  0xffffU
#define SLACK_FREE 0xffU

/* Fullness groups of partially used chunks, by quarters of their slots. */
#define NR_GROUPS	 4
#define GROUP_FULL	 NR_GROUPS
#define GROUP_EVACUATING (NR_GROUPS + 1)

struct chunk {
	struct chunk *prev, *next; /* in a fullness group list */
	char *base;
	uint32_t id;
	uint16_t nr_slots;
	uint16_t nr_used;
	uint16_t bump;	    /* slots below this have been handed out once */
	uint16_t free_head; /* first slot of the free chain, SLOT_NONE if empty */
	uint8_t group;	    /* 0..NR_GROUPS-1, GROUP_FULL or GROUP_EVACUATING */
	uint8_t slack[];    /* per slot: class size minus object length, SLACK_FREE if free */
};

/*
 * A chunk table entry is a chunk pointer, or, with bit 0 set, a free id
 * whose next free id is entry >> 1 (POOL_CHUNK_IDS ends the chain).
 */
struct pool_class {
	_Alignas(64) pthread_mutex_t lock;
	uint32_t size;	     /* object slot size in bytes */
	uint32_t chunk_size; /* bytes per chunk mapping */
	uint16_t chunk_slots;
	struct chunk *groups[NR_GROUPS];
	uintptr_t *table;
	uint32_t table_len;
	uint32_t free_id;
};

struct pool {
	struct pool_class classes[POOL_NR_CLASSES];
	/* Gauges, updated with relaxed atomics. */
	uint64_t total_size;
	uint64_t stored_bytes;
	uint64_t stored_objects;
	uint64_t chunks;
	uint64_t metadata_bytes;
	/* Test hook: chunk mappings left before they fail; negative: no limit. */
	int64_t map_budget;
};

static void counter_add(uint64_t *counter, int64_t delta)
{
	__atomic_fetch_add(counter, (uint64_t)delta, __ATOMIC_RELAXED);
}

static pool_handle_t handle_make(unsigned class_index, uint32_t chunk_id, unsigned slot)
{
	return ((pool_handle_t)(chunk_id + 1) << HANDLE_CHUNK_SHIFT) |
	       ((pool_handle_t)class_index << HANDLE_SLOT_BITS) | slot;
}

static unsigned handle_slot(pool_handle_t handle)
{
	return (unsigned)(handle & ((1U << HANDLE_SLOT_BITS) - 1));
}

static unsigned handle_class(pool_handle_t handle)
{
	return (unsigned)((handle >> HANDLE_SLOT_BITS) & ((1U << HANDLE_CLASS_BITS) - 1));
}

/* The chunk id, or UINT32_MAX for a handle that cannot be valid. */
static uint32_t handle_chunk(pool_handle_t handle)
{
	uint64_t field = handle >> HANDLE_CHUNK_SHIFT;

	if (field == 0 || field > POOL_CHUNK_IDS)
		return UINT32_MAX;
	return (uint32_t)(field - 1);
}

static unsigned class_of_length(size_t len)
{
	return (unsigned)((len + POOL_CLASS_GRAIN - 1) / POOL_CLASS_GRAIN - 1);
}

/* The chunk size, in whole pages, that wastes the smallest fraction on its tail. */
static uint32_t class_pick_chunk_size(uint32_t size)
{
	uint32_t best = POOL_CHUNK_MIN, candidate;
	uint64_t best_waste = UINT64_MAX;

	for (candidate = POOL_CHUNK_MIN; candidate <= POOL_CHUNK_MAX; candidate += UZ_PAGE_SIZE) {
		/* Waste per byte, compared as waste * other size to stay in integers. */
		uint64_t waste = (uint64_t)(candidate % size) * POOL_CHUNK_MAX / candidate;

		if (waste < best_waste) {
			best_waste = waste;
			best = candidate;
		}
	}
	return best;
}

static unsigned chunk_group(const struct chunk *chunk)
{
	if (chunk->nr_used == chunk->nr_slots)
		return GROUP_FULL;
	return (unsigned)chunk->nr_used * NR_GROUPS / chunk->nr_slots;
}

/* Caller holds cls->lock. */
static void chunk_unlink(struct pool_class *cls, struct chunk *chunk)
{
	if (chunk->group >= NR_GROUPS)
		return;
	if (chunk->prev)
		chunk->prev->next = chunk->next;
	else
		cls->groups[chunk->group] = chunk->next;
	if (chunk->next)
		chunk->next->prev = chunk->prev;
	chunk->prev = chunk->next = NULL;
}

/* Caller holds cls->lock.  Puts a chunk in the group its fill now calls for. */
static void chunk_regroup(struct pool_class *cls, struct chunk *chunk)
{
	unsigned group;

	if (chunk->group == GROUP_EVACUATING)
		return;
	group = chunk_group(chunk);
	if (group == chunk->group)
		return;
	chunk_unlink(cls, chunk);
	chunk->group = (uint8_t)group;
	if (group < NR_GROUPS) {
		chunk->next = cls->groups[group];
		if (chunk->next)
			chunk->next->prev = chunk;
		cls->groups[group] = chunk;
	}
}

static size_t chunk_struct_size(const struct pool_class *cls)
{
	return sizeof(struct chunk) + cls->chunk_slots;
}

/* The test hook: false when the next chunk mapping is to fail. */
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

/* Caller holds cls->lock.  Maps a chunk and gives it an id; NULL on failure. */
static struct chunk *chunk_new(struct pool *pool, struct pool_class *cls)
{
	struct chunk *chunk;
	uint32_t id;
	void *base;

	if (!pool_map_budget_take(pool))
		return NULL;

	if (cls->free_id == POOL_CHUNK_IDS) {
		uint32_t new_len = cls->table_len ? cls->table_len * 2 : 16;
		uintptr_t *table;
		uint32_t i;

		if (new_len > POOL_CHUNK_IDS)
			new_len = POOL_CHUNK_IDS;
		if (new_len <= cls->table_len)
			return NULL;
		table = realloc(cls->table, new_len * sizeof(*table));
		if (!table)
			return NULL;
		counter_add(&pool->metadata_bytes,
			    (int64_t)(new_len - cls->table_len) * (int64_t)sizeof(*table));
		/* Chain the new ids, lowest first. */
		for (i = cls->table_len; i < new_len; i++)
			table[i] = ((uintptr_t)(i + 1 < new_len ? i + 1 : POOL_CHUNK_IDS) << 1) | 1;
		cls->free_id = cls->table_len;
		cls->table = table;
		cls->table_len = new_len;
	}

	chunk = malloc(chunk_struct_size(cls));
	if (!chunk)
		return NULL;
	base = mmap(NULL, cls->chunk_size, PROT_READ | PROT_WRITE,
		    MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
	if (base == MAP_FAILED) {
		free(chunk);
		return NULL;
	}

	id = cls->free_id;
	cls->free_id = (uint32_t)(cls->table[id] >> 1);
	cls->table[id] = (uintptr_t)chunk;

	memset(chunk, 0, sizeof(*chunk));
	memset(chunk->slack, SLACK_FREE, cls->chunk_slots);
	chunk->base = base;
	chunk->id = id;
	chunk->nr_slots = cls->chunk_slots;
	chunk->free_head = SLOT_NONE;
	chunk->group = GROUP_FULL; /* in no list yet: chunk_regroup() places it */
	chunk_regroup(cls, chunk);

	counter_add(&pool->chunks, 1);
	counter_add(&pool->total_size, cls->chunk_size);
	counter_add(&pool->metadata_bytes, (int64_t)chunk_struct_size(cls));
	return chunk;
}

/* Caller holds cls->lock.  Takes an empty chunk out; the caller unmaps it unlocked. */
static void chunk_retire(struct pool *pool, struct pool_class *cls, struct chunk *chunk)
{
	chunk_unlink(cls, chunk);
	cls->table[chunk->id] = ((uintptr_t)cls->free_id << 1) | 1;
	cls->free_id = chunk->id;
	counter_add(&pool->chunks, -1);
	counter_add(&pool->total_size, -(int64_t)cls->chunk_size);
	counter_add(&pool->metadata_bytes, -(int64_t)chunk_struct_size(cls));
}

static void chunk_unmap(struct pool_class *cls, struct chunk *chunk)
{
	munmap(chunk->base, cls->chunk_size);
	free(chunk);
}

/* Caller holds cls->lock.  The chunk of a handle, or NULL when it names none. */
static struct chunk *class_lookup(struct pool_class *cls, pool_handle_t handle)
{
	uint32_t id = handle_chunk(handle);
	struct chunk *chunk;

	if (id >= cls->table_len || (cls->table[id] & 1))
		return NULL;
	chunk = (struct chunk *)cls->table[id];
	if (handle_slot(handle) >= chunk->nr_slots ||
	    chunk->slack[handle_slot(handle)] == SLACK_FREE)
		return NULL;
	return chunk;
}

/*
 * Caller holds cls->lock.  Takes a slot for an object of len bytes from the
 * fullest chunk with room, mapping a chunk if there is none.  Returns the
 * address to copy to, NULL when no chunk can be had.
 */
static char *class_alloc(struct pool *pool, struct pool_class *cls, unsigned class_index,
			 size_t len, pool_handle_t *handle)
{
	struct chunk *chunk = NULL;
	unsigned slot;
	int group;
	char *addr;

	for (group = NR_GROUPS - 1; group >= 0 && !chunk; group--)
		chunk = cls->groups[group];
	if (!chunk) {
		chunk = chunk_new(pool, cls);
		if (!chunk)
			return NULL;
	}

	if (chunk->free_head != SLOT_NONE) {
		uint16_t next;

		slot = chunk->free_head;
		memcpy(&next, chunk->base + (size_t)slot * cls->size, sizeof(next));
		chunk->free_head = next;
	} else {
		slot = chunk->bump++;
	}
	chunk->slack[slot] = (uint8_t)(cls->size - len);
	chunk->nr_used++;
	chunk_regroup(cls, chunk);

	addr = chunk->base + (size_t)slot * cls->size;
	*handle = handle_make(class_index, chunk->id, slot);
	return addr;
}

/*
 * Caller holds cls->lock.  Frees the slot; returns the chunk if it became
 * empty (already retired: the caller unmaps it after unlocking), else NULL.
 */
static struct chunk *class_release(struct pool *pool, struct pool_class *cls, struct chunk *chunk,
				   unsigned slot)
{
	uint16_t next = chunk->free_head;

	counter_add(&pool->stored_bytes, -(int64_t)(cls->size - chunk->slack[slot]));
	counter_add(&pool->stored_objects, -1);
	chunk->slack[slot] = SLACK_FREE;
	memcpy(chunk->base + (size_t)slot * cls->size, &next, sizeof(next));
	chunk->free_head = (uint16_t)slot;
	chunk->nr_used--;
	if (chunk->nr_used == 0) {
		chunk_retire(pool, cls, chunk);
		return chunk;
	}
	chunk_regroup(cls, chunk);
	return NULL;
}

int pool_new(struct pool **out)
{
	struct pool *pool;
	unsigned i;

	pool = aligned_alloc(64, sizeof(*pool));
	if (!pool)
		return -ENOMEM;
	memset(pool, 0, sizeof(*pool));
	pool->map_budget = -1;
	for (i = 0; i < POOL_NR_CLASSES; i++) {
		struct pool_class *cls = &pool->classes[i];

		pthread_mutex_init(&cls->lock, NULL);
		cls->size = (i + 1) * POOL_CLASS_GRAIN;
		cls->chunk_size = class_pick_chunk_size(cls->size);
		cls->chunk_slots = (uint16_t)(cls->chunk_size / cls->size);
		cls->free_id = POOL_CHUNK_IDS;
	}
	pool->metadata_bytes = sizeof(*pool);
	*out = pool;
	return 0;
}

struct pool *pool_free(struct pool *pool)
{
	unsigned i, id;

	if (!pool)
		return NULL;
	for (i = 0; i < POOL_NR_CLASSES; i++) {
		struct pool_class *cls = &pool->classes[i];

		for (id = 0; id < cls->table_len; id++) {
			if (!(cls->table[id] & 1))
				chunk_unmap(cls, (struct chunk *)cls->table[id]);
		}
		free(cls->table);
		pthread_mutex_destroy(&cls->lock);
	}
	free(pool);
	return NULL;
}

int pool_store(struct pool *pool, const void *data, size_t len, pool_handle_t *out)
{
	struct pool_class *cls;
	unsigned class_index;
	char *addr;

	if (len == 0 || len > POOL_OBJECT_MAX)
		return -EINVAL;
	class_index = class_of_length(len);
	cls = &pool->classes[class_index];

	pthread_mutex_lock(&cls->lock);
	addr = class_alloc(pool, cls, class_index, len, out);
	pthread_mutex_unlock(&cls->lock);
	if (!addr)
		return -ENOMEM;

	/* The slot is ours and its handle not yet given out: copy unlocked. */
	memcpy(addr, data, len);
	counter_add(&pool->stored_bytes, (int64_t)len);
	counter_add(&pool->stored_objects, 1);
	return 0;
}

int pool_load(struct pool *pool, pool_handle_t handle, void *dst, size_t len)
{
	struct pool_class *cls;
	struct chunk *chunk;
	unsigned class_index = handle_class(handle);
	const char *addr = NULL;

	if (class_index >= POOL_NR_CLASSES)
		return -EINVAL;
	cls = &pool->classes[class_index];

	pthread_mutex_lock(&cls->lock);
	chunk = class_lookup(cls, handle);
	if (chunk && cls->size - chunk->slack[handle_slot(handle)] == len)
		addr = chunk->base + (size_t)handle_slot(handle) * cls->size;
	pthread_mutex_unlock(&cls->lock);
	if (!addr)
		return -EINVAL;

	/* Only the owner releases or moves this object, and it is busy loading it. */
	memcpy(dst, addr, len);
	return 0;
}

void pool_release(struct pool *pool, pool_handle_t handle)
{
	struct chunk *chunk, *empty = NULL;
	struct pool_class *cls;
	unsigned class_index = handle_class(handle);

	if (class_index >= POOL_NR_CLASSES)
		return;
	cls = &pool->classes[class_index];

	pthread_mutex_lock(&cls->lock);
	chunk = class_lookup(cls, handle);
	if (chunk)
		empty = class_release(pool, cls, chunk, handle_slot(handle));
	pthread_mutex_unlock(&cls->lock);
	if (empty)
		chunk_unmap(cls, empty);
}

void pool_get_usage(struct pool *pool, struct pool_usage *usage)
{
	usage->total_size = __atomic_load_n(&pool->total_size, __ATOMIC_RELAXED);
	usage->stored_bytes = __atomic_load_n(&pool->stored_bytes, __ATOMIC_RELAXED);
	usage->stored_objects = __atomic_load_n(&pool->stored_objects, __ATOMIC_RELAXED);
	usage->chunks = __atomic_load_n(&pool->chunks, __ATOMIC_RELAXED);
	usage->metadata_bytes = __atomic_load_n(&pool->metadata_bytes, __ATOMIC_RELAXED);
}

static int chunk_compare_used(const void *a, const void *b)
{
	const struct chunk *x = *(struct chunk *const *)a, *y = *(struct chunk *const *)b;

	return (int)x->nr_used - (int)y->nr_used;
}

/*
 * Caller holds cls->lock.  Marks the sparsest chunks under the threshold,
 * as long as their objects fit in the free slots of the chunks left.
 */
static int class_compact_begin(struct pool_class *cls, unsigned min_fill_percent)
{
	struct chunk **candidates, *chunk;
	uint64_t free_rest = 0, moving = 0;
	size_t nr = 0, i;
	int group, marked = 0;

	for (group = 0; group < NR_GROUPS; group++) {
		for (chunk = cls->groups[group]; chunk; chunk = chunk->next) {
			nr++;
			free_rest += chunk->nr_slots - chunk->nr_used;
		}
	}
	if (nr < 2)
		return 0;
	candidates = malloc(nr * sizeof(*candidates));
	if (!candidates)
		return -ENOMEM;
	nr = 0;
	for (group = 0; group < NR_GROUPS; group++) {
		for (chunk = cls->groups[group]; chunk; chunk = chunk->next)
			candidates[nr++] = chunk;
	}
	qsort(candidates, nr, sizeof(*candidates), chunk_compare_used);

	for (i = 0; i < nr; i++) {
		chunk = candidates[i];
		if ((uint64_t)chunk->nr_used * 100 >= (uint64_t)min_fill_percent * chunk->nr_slots)
			break;
		if (moving + chunk->nr_used > free_rest - (chunk->nr_slots - chunk->nr_used))
			break;
		moving += chunk->nr_used;
		free_rest -= chunk->nr_slots - chunk->nr_used;
		chunk_unlink(cls, chunk);
		chunk->group = GROUP_EVACUATING;
		marked++;
	}
	free(candidates);
	return marked;
}

int pool_compact_begin(struct pool *pool, unsigned min_fill_percent)
{
	unsigned i;
	int marked = 0, r;

	if (min_fill_percent > 100)
		return -EINVAL;
	for (i = 0; i < POOL_NR_CLASSES; i++) {
		struct pool_class *cls = &pool->classes[i];

		pthread_mutex_lock(&cls->lock);
		r = class_compact_begin(cls, min_fill_percent);
		pthread_mutex_unlock(&cls->lock);
		if (r < 0)
			return r;
		marked += r;
	}
	return marked;
}

bool pool_handle_evacuating(struct pool *pool, pool_handle_t handle)
{
	struct pool_class *cls;
	struct chunk *chunk;
	unsigned class_index = handle_class(handle);
	bool evacuating;

	if (class_index >= POOL_NR_CLASSES)
		return false;
	cls = &pool->classes[class_index];
	pthread_mutex_lock(&cls->lock);
	chunk = class_lookup(cls, handle);
	evacuating = chunk && chunk->group == GROUP_EVACUATING;
	pthread_mutex_unlock(&cls->lock);
	return evacuating;
}

int pool_migrate(struct pool *pool, pool_handle_t handle, size_t len, pool_handle_t *out)
{
	struct chunk *chunk, *empty = NULL;
	struct pool_class *cls;
	unsigned class_index = handle_class(handle);
	pool_handle_t new_handle;
	char *from, *to;

	if (class_index >= POOL_NR_CLASSES)
		return -EINVAL;
	cls = &pool->classes[class_index];

	pthread_mutex_lock(&cls->lock);
	chunk = class_lookup(cls, handle);
	if (!chunk || cls->size - chunk->slack[handle_slot(handle)] != len) {
		pthread_mutex_unlock(&cls->lock);
		return -EINVAL;
	}
	to = class_alloc(pool, cls, class_index, len, &new_handle);
	if (!to) {
		pthread_mutex_unlock(&cls->lock);
		return -ENOMEM;
	}
	/* Both slots are the caller's; the copy is short, keep it under the lock. */
	from = chunk->base + (size_t)handle_slot(handle) * cls->size;
	memcpy(to, from, len);
	counter_add(&pool->stored_bytes, (int64_t)len);
	counter_add(&pool->stored_objects, 1);
	empty = class_release(pool, cls, chunk, handle_slot(handle));
	pthread_mutex_unlock(&cls->lock);
	if (empty)
		chunk_unmap(cls, empty);
	*out = new_handle;
	return 0;
}

void pool_inject_map_failures(struct pool *pool, int64_t after)
{
	__atomic_store_n(&pool->map_budget, after < 0 ? -1 : after, __ATOMIC_RELAXED);
}
