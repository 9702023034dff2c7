/* SPDX-License-Identifier: MIT */
/*
 * The malloc family, interposed: allocations of at least UZSWAP_MIN_REGION
 * bytes get a registered mapping of their own; everything else goes to
 * glibc through its __libc_* entry points (never dlsym: dlsym allocates).
 *
 * Large blocks are page aligned and recorded in an open-addressing hash
 * table (address -> mapping length) in raw-mmapped memory.  free() must
 * stay cheap for the small pointers that are not ours: a glibc pointer is
 * never page aligned except from memalign-like calls, so the test
 *     page aligned && inside [blocks_low, blocks_high)
 * sends almost every foreign pointer straight to __libc_free without a
 * lock.  Only candidates take block_lock and look in the table.
 *
 * realloc crosses the boundary both ways: a glibc block growing past the
 * threshold is copied (its usable size) into a fresh registered mapping;
 * one of ours shrinking below it is copied into glibc; ours to ours is an
 * mremap, so evicted pages move without being faulted back.
 *
 * Blocks stay ours after the process stops being managed: free() still
 * recognises them and unmaps them.  Before the constructor has run and
 * while not managed, nothing is steered.
 */
#include <dlfcn.h>
#include <errno.h>
#include <malloc.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "client.h"
#include "util.h"

extern void *__libc_malloc(size_t size);
extern void __libc_free(void *p);
extern void *__libc_calloc(size_t n, size_t size);
extern void *__libc_realloc(void *p, size_t size);
extern void *__libc_memalign(size_t align, size_t size);
extern void *__libc_valloc(size_t size);
extern void *__libc_pvalloc(size_t size);

atomic_size_t uz_steer_min = SIZE_MAX;

struct uz_block {
	uintptr_t addr; /* 0: empty, 1: deleted */
	size_t len;
};

#define BLOCK_EMPTY   0
#define BLOCK_DELETED 1

static pthread_mutex_t block_lock = PTHREAD_MUTEX_INITIALIZER;
static struct uz_block *blocks; /* under block_lock */
static size_t block_capacity, block_used, block_live;
static atomic_uintptr_t blocks_low = UINTPTR_MAX, blocks_high;

void uz_blocks_lock(void)
{
	pthread_mutex_lock(&block_lock);
}

void uz_blocks_unlock(void)
{
	pthread_mutex_unlock(&block_lock);
}

void uz_blocks_reset_lock(void)
{
	pthread_mutex_init(&block_lock, NULL);
}

static inline size_t block_hash(uintptr_t addr, size_t capacity)
{
	return ((addr >> UZ_PAGE_SHIFT) * 0x9e3779b97f4a7c15ull >> 17) & (capacity - 1);
}

static void table_insert(struct uz_block *table, size_t capacity, uintptr_t addr, size_t len)
{
	size_t i = block_hash(addr, capacity);

	while (table[i].addr > BLOCK_DELETED)
		i = (i + 1) & (capacity - 1);
	table[i] = (struct uz_block){.addr = addr, .len = len};
}

/* Caller holds block_lock. */
static int table_grow(void)
{
	size_t capacity = block_capacity ? block_capacity : 1024;
	struct uz_block *table;

	if ((block_used + 1) * 2 < block_capacity)
		return 0;
	if ((block_live + 1) * 4 >= capacity)
		capacity *= 2;
	table = uz_raw_mmap(NULL, capacity * sizeof(*table), PROT_READ | PROT_WRITE,
			    MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (table == MAP_FAILED)
		return -ENOMEM;
	for (size_t i = 0; i < block_capacity; i++)
		if (blocks[i].addr > BLOCK_DELETED)
			table_insert(table, capacity, blocks[i].addr, blocks[i].len);
	if (blocks)
		uz_raw_munmap(blocks, block_capacity * sizeof(*blocks));
	blocks = table;
	block_capacity = capacity;
	block_used = block_live;
	return 0;
}

static struct uz_block *table_find(uintptr_t addr)
{
	size_t i;

	if (!blocks)
		return NULL;
	for (i = block_hash(addr, block_capacity); blocks[i].addr != BLOCK_EMPTY;
	     i = (i + 1) & (block_capacity - 1))
		if (blocks[i].addr == addr)
			return &blocks[i];
	return NULL;
}

static int block_add(void *p, size_t len)
{
	uintptr_t addr = (uintptr_t)p;

	pthread_mutex_lock(&block_lock);
	if (table_grow() < 0) {
		pthread_mutex_unlock(&block_lock);
		return -ENOMEM;
	}
	table_insert(blocks, block_capacity, addr, len);
	block_used++;
	block_live++;
	if (addr < atomic_load(&blocks_low))
		atomic_store(&blocks_low, addr);
	if (addr + len > atomic_load(&blocks_high))
		atomic_store(&blocks_high, addr + len);
	pthread_mutex_unlock(&block_lock);
	return 0;
}

static inline bool block_candidate(const void *p)
{
	uintptr_t addr = (uintptr_t)p;

	return (addr & (UZ_PAGE_SIZE - 1)) == 0 && addr >= atomic_load(&blocks_low) &&
	       addr < atomic_load(&blocks_high);
}

/* The length of our block at p, 0 if p is not ours. */
static size_t block_size(const void *p)
{
	struct uz_block *block;
	size_t len = 0;

	if (!block_candidate(p))
		return 0;
	pthread_mutex_lock(&block_lock);
	block = table_find((uintptr_t)p);
	if (block)
		len = block->len;
	pthread_mutex_unlock(&block_lock);
	return len;
}

/* Remove our block at p; its length, or 0 if p is not ours. */
static size_t block_take(void *p)
{
	struct uz_block *block;
	size_t len = 0;

	if (!block_candidate(p))
		return 0;
	pthread_mutex_lock(&block_lock);
	block = table_find((uintptr_t)p);
	if (block) {
		len = block->len;
		block->addr = BLOCK_DELETED;
		block_live--;
	}
	pthread_mutex_unlock(&block_lock);
	return len;
}

static inline bool steer(size_t size)
{
	return size >= atomic_load_explicit(&uz_steer_min, memory_order_relaxed) && !uz_is_agent();
}

static void *big_alloc(size_t size, size_t align)
{
	size_t len = (size + UZ_PAGE_SIZE - 1) & UZ_PAGE_MASK;
	void *p;

	if (len < size)
		return NULL;
	p = uz_mmap_managed(len, uz_max(align, (size_t)UZ_PAGE_SIZE));
	if (!p)
		return NULL;
	if (block_add(p, len) < 0) {
		uz_munmap_tracked(p, len);
		return NULL;
	}
	return p;
}

/*
 * A steered allocation: a registered mapping when size is large enough
 * (and we are not the agent), NULL when it is not or cannot be had; the
 * caller then falls back to glibc.
 */
static inline void *steered_alloc(size_t size, size_t align)
{
	return uz_unlikely(steer(size)) ? big_alloc(size, align) : NULL;
}

/* glibc's own malloc_usable_size, for pointers that are not ours. */
static size_t libc_usable_size(void *p)
{
	static size_t (*real)(void *);

	if (!real)
		real = (size_t(*)(void *))dlsym(RTLD_NEXT, "malloc_usable_size");
	return real ? real(p) : 0;
}

UZ_EXPORT void *malloc(size_t size)
{
	void *p = steered_alloc(size, UZ_PAGE_SIZE);

	return p ? p : __libc_malloc(size);
}

UZ_EXPORT void free(void *p)
{
	size_t len;

	if (!p)
		return;
	len = block_take(p);
	if (uz_unlikely(len)) {
		int saved = errno;

		uz_munmap_tracked(p, len);
		errno = saved;
		return;
	}
	__libc_free(p);
}

UZ_EXPORT void *calloc(size_t n, size_t size)
{
	size_t total;
	void *p;

	if (__builtin_mul_overflow(n, size, &total)) {
		errno = ENOMEM;
		return NULL;
	}
	/* A fresh mapping reads as zeros: no memset, no page touched. */
	p = steered_alloc(total, UZ_PAGE_SIZE);
	return p ? p : __libc_calloc(n, size);
}

UZ_EXPORT void *realloc(void *p, size_t size)
{
	size_t len, new_len;
	void *q;

	if (!p)
		return malloc(size);
	len = block_size(p);
	if (!len) {
		size_t old;

		q = steered_alloc(size, UZ_PAGE_SIZE);
		if (!q)
			return __libc_realloc(p, size);
		old = libc_usable_size(p);
		memcpy(q, p, uz_min(old, size));
		__libc_free(p);
		return q;
	}

	if (size == 0) {
		free(p);
		return NULL;
	}
	if (size < uz_client.min_region) {
		/* Ours, shrinking below the threshold: back to glibc. */
		q = __libc_malloc(size);
		if (!q)
			return NULL;
		memcpy(q, p, size);
		free(p);
		return q;
	}
	new_len = (size + UZ_PAGE_SIZE - 1) & UZ_PAGE_MASK;
	if (new_len < size) {
		errno = ENOMEM;
		return NULL;
	}
	if (new_len == len)
		return p;
	/*
	 * Ours to ours: mremap keeps the registration and the daemon follows
	 * the REMAP event.  The table entry leaves before the call so that
	 * nobody can find a stale address.
	 */
	block_take(p);
	q = uz_mremap_tracked(p, len, new_len, MREMAP_MAYMOVE, NULL);
	if (q == MAP_FAILED) {
		block_add(p, len);
		errno = ENOMEM;
		return NULL;
	}
	if (block_add(q, new_len) < 0) {
		/* Cannot record it: hand out a glibc copy instead. */
		void *copy = __libc_malloc(size);

		if (copy)
			memcpy(copy, q, size);
		uz_munmap_tracked(q, new_len);
		return copy;
	}
	return q;
}

UZ_EXPORT void *reallocarray(void *p, size_t n, size_t size)
{
	size_t total;

	if (__builtin_mul_overflow(n, size, &total)) {
		errno = ENOMEM;
		return NULL;
	}
	return realloc(p, total);
}

static void *aligned(size_t align, size_t size)
{
	void *p = steered_alloc(size, align);

	return p ? p : __libc_memalign(align, size);
}

UZ_EXPORT int posix_memalign(void **out, size_t align, size_t size)
{
	void *p;
	int saved = errno;

	if (align < sizeof(void *) || (align & (align - 1)))
		return EINVAL;
	p = aligned(align, size);
	errno = saved;
	if (!p)
		return ENOMEM;
	*out = p;
	return 0;
}

UZ_EXPORT void *aligned_alloc(size_t align, size_t size)
{
	if (align == 0 || (align & (align - 1))) {
		errno = EINVAL;
		return NULL;
	}
	return aligned(align, size);
}

UZ_EXPORT void *memalign(size_t align, size_t size)
{
	if (align & (align - 1)) /* glibc rounds up; keep its behaviour for those */
		return __libc_memalign(align, size);
	return aligned(align, size);
}

UZ_EXPORT void *valloc(size_t size)
{
	void *p = steered_alloc(size, UZ_PAGE_SIZE);

	return p ? p : __libc_valloc(size);
}

UZ_EXPORT void *pvalloc(size_t size)
{
	void *p = steered_alloc(size, UZ_PAGE_SIZE);

	return p ? p : __libc_pvalloc(size);
}

UZ_EXPORT size_t malloc_usable_size(void *p)
{
	size_t len;

	if (!p)
		return 0;
	len = block_size(p);
	return len ? len : libc_usable_size(p);
}
