/* SPDX-License-Identifier: MIT */
/*
 * The swap file backend.
 *
 * What it stores.  The shrinker writes the *compressed* bytes of a page
 * (1..4096 of them), not the page, so the file must pack objects of any
 * size; otherwise disk traffic and disk usage would not shrink with the
 * compression ratio.  Contents never outlive the daemon: there is no
 * on-disk header, and every start treats the file as empty.
 *
 * Geometry.  The file is preallocated (fallocate) at start, so writes
 * never extend it and never meet ENOSPC from the filesystem.  It is cut
 * into clusters of 64 KiB, each cut into granules (512 B by default, or
 * the direct-I/O alignment of the filesystem when that is larger).  An
 * object takes the fewest contiguous granules of one cluster that hold it:
 * a 1500-byte object takes three 512-byte granules.  The average waste is
 * half a granule per object, about 6% of a 4 KiB page; bytes_per_slot in
 * struct swap_usage reports what is really spent per stored page.
 *
 * Slots.  A slot is (first granule index << 3) | (granules - 1): 41 bits
 * of granule index (1 PiB at 512 B) and 3 bits of size (1..8 granules),
 * 44 bits in all, the width of a page-entry payload.  A slot describes its
 * own extent, so swap_slot_free() needs no length and can check that the
 * granules it frees were allocated (a double free is -EINVAL, not silent
 * corruption).
 *
 * Allocation.  Each cluster has a 128-bit map of its granules and a count
 * of the ones in use.  A struct swap_io (one per thread) owns a current
 * cluster and allocates from it next-fit, so objects written in one batch
 * land side by side and go out in one write; no other thread allocates
 * from an owned cluster, which is what lets threads allocate without
 * contending (the kernel's per-CPU swap clusters, per thread here).  When
 * the current cluster cannot fit an object, the swap_io gives it back and
 * takes another, in this order of preference:
 *   1. a partial cluster: some space in use, but a free run big enough
 *      for any object (8 granules at 512 B) -- reusing these first keeps
 *      the live data packed in few clusters;
 *   2. a free cluster: nothing in use (freed clusters, then clusters never
 *      used yet, handed out by a bump index so start-up touches no
 *      per-cluster memory);
 *   3. a fragmented cluster: free granules, but no run for the largest
 *      object; searched (first fit for this object's size) only when there
 *      is nothing better, so small holes still get used before -ENOSPC.
 * A cluster not owned by anyone sits on the list of its class (free,
 * partial, fragmented) or on none when it is full.  Freeing granules in an
 * unowned cluster may promote it (fragmented -> partial -> free); freeing
 * in an owned cluster just clears bits, and the owner classifies it when
 * it lets go.  This is how freed space is reclaimed: there is no
 * compaction and no punching of holes, because the file is preallocated
 * and the space is reused in place.
 *
 * Locking.  swap->lock (a mutex) protects the three lists, the bump index
 * and every cluster's `list` and `owned` fields.  The granule map and used
 * count of a cluster are protected by one of SWAP_STRIPES stripe locks
 * (cluster index modulo the stripe count).  Order: stripe lock, then
 * swap->lock; never the other way.  Taking a cluster off a list needs only
 * swap->lock, which is safe because an unowned cluster's map only loses
 * bits (frees), so a map read without the stripe lock can only
 * underestimate free space.  Map words are accessed atomically for that
 * reason.  No lock is held across a system call.
 *
 * I/O.  Every read and write goes through the io_uring ring of a
 * swap_io.  A write batch copies its objects into bounce buffers, one per
 * run of adjacent slots (sorted by slot), aligned for O_DIRECT, the tail
 * of each object's last granule zeroed, and submits one write per run.  A
 * read fetches the object's whole granules into a per-request bounce
 * buffer (reused from a per-swap_io cache, so the fault path does not
 * allocate in steady state) and copies the object out, or lends the
 * buffer to the callback.  Completions are announced on an eventfd
 * registered with the ring; swap_io_reap() processes them and runs the
 * callbacks.  A short transfer resubmits the rest (under O_DIRECT from the
 * last aligned offset, re-sending a few bytes rather than issuing an
 * unaligned request); a completion with nothing moved, or repeated ones
 * without progress, fail with -EIO.  Requests that find the submission
 * queue full wait on a backlog that reap flushes.
 *
 * O_DIRECT.  Pages written back are cold by definition; caching them in
 * the page cache would spend the very memory uzswap is freeing.  So the
 * file is used with O_DIRECT when the filesystem allows it: statx's
 * STATX_DIOALIGN gives the buffer and offset alignment (a pread probe
 * when the kernel does not say), granules are at least the offset
 * alignment so every request starts and ends aligned, and bounce buffers
 * are page aligned.  When the filesystem refuses O_DIRECT (or the caller
 * forces it off) the same code runs buffered; swap_get_info() says which.
 */
#include <errno.h>
#include <fcntl.h>
#include <liburing.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include "swap/swapfile.h"

#define SWAP_CLUSTER_SIZE    (64u * 1024)
#define SWAP_GRANULE_MIN     512u
#define SWAP_GRANULE_DEFAULT 512u
#define SWAP_RING_DEFAULT    64u
#define SWAP_STRIPES	     64u
#define SWAP_RUN_MAX	     (128u * 1024) /* largest write request a batch builds */
#define SWAP_REQ_CACHE	     64u	   /* idle requests (with buffers) kept per swap_io */
#define SWAP_STALLS_MAX	     4u		   /* short completions in a row without progress */
#define SWAP_BUFFER_ALIGN    4096u

#define SLOT_SIZE_BITS	 3
#define SLOT_GRANULE_MAX (1ULL << (SWAP_SLOT_BITS - SLOT_SIZE_BITS))
#define CLUSTER_NONE	 UINT32_MAX

#ifndef STATX_DIOALIGN
#define STATX_DIOALIGN 0x00002000U
#endif

enum cluster_list {
	LIST_NONE = 0, /* owned, or full */
	LIST_FREE,
	LIST_PARTIAL,
	LIST_FRAGMENTED,
	LIST__COUNT,
};

struct swap_cluster {
	uint64_t map[2]; /* granule bitmap; stripe lock to write, atomic to read */
	uint16_t used;	 /* granules in use; stripe lock */
	uint8_t list;	 /* enum cluster_list; swap->lock to write, atomic to read */
	uint8_t owned;	 /* a swap_io allocates here; swap->lock to write, atomic to read */
	uint32_t prev;	 /* list links; swap->lock */
	uint32_t next;
};

struct cluster_list_head {
	uint32_t head;
	uint64_t count;
};

struct swap {
	int fd;
	struct swap_info info;
	unsigned granules_per_cluster;
	unsigned object_granules_max; /* granules of a SWAP_OBJECT_MAX object */
	unsigned ring_entries;
	unsigned io_align; /* O_DIRECT: alignment of offsets, lengths and buffers; 1 buffered */

	pthread_mutex_t lock;
	struct cluster_list_head lists[LIST__COUNT];
	uint64_t fresh_next; /* clusters from here on were never used: free */
	struct swap_cluster *clusters;
	pthread_mutex_t stripes[SWAP_STRIPES];

	struct swap_stats stats; /* updated with relaxed atomics */

	unsigned inject_what;	 /* enum swap_fault mask; atomic */
	unsigned inject_percent; /* atomic */
	int64_t inject_left;	 /* alterations left; -1 unlimited; atomic */
};

enum req_op { REQ_WRITE, REQ_READ };

struct swap_batch {
	struct swap_object *objs;
	size_t count;
	size_t *order; /* object indices sorted by slot; requests cover slices */
	size_t pending;
	int result;
	swap_write_cb cb;
	void *userdata;
};

struct swap_req {
	struct swap_io *io;
	struct swap_req *next; /* idle cache or backlog */
	enum req_op op;
	bool injected;
	unsigned stalls;
	uint64_t offset; /* file offset of buffer[0] */
	size_t length;	 /* bytes to move */
	size_t done;	 /* bytes moved so far */
	void *buffer;
	size_t capacity;
	/* write */
	struct swap_batch *batch;
	size_t first, count; /* slice of batch->order */
	/* read */
	size_t len;
	void *dst;
	swap_read_cb read_cb;
	void *userdata;
};

struct swap_io {
	struct swap *swap;
	struct io_uring ring;
	bool ring_ready;
	int event_fd;
	size_t inflight; /* requests handed to us and not finished (backlog included) */
	struct swap_req *idle;
	size_t idle_count;
	struct swap_req *backlog_head, *backlog_tail;
	uint32_t cluster; /* current cluster or CLUSTER_NONE */
	unsigned hint;	  /* next-fit position in it */
	uint64_t rng;
};

#define stat_add(swap, field, n) __atomic_fetch_add(&(swap)->stats.field, (n), __ATOMIC_RELAXED)
#define stat_sub(swap, field, n) __atomic_fetch_sub(&(swap)->stats.field, (n), __ATOMIC_RELAXED)

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

/* --- cluster maps --------------------------------------------------------- */

static inline uint64_t map_word(const struct swap_cluster *c, unsigned i)
{
	return __atomic_load_n(&c->map[i], __ATOMIC_RELAXED);
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
static int map_find_run(const struct swap_cluster *c, unsigned per_cluster, unsigned n,
			unsigned hint)
{
	uint64_t snap[2] = {map_word(c, 0), map_word(c, 1)};

	if (hint + n > per_cluster)
		hint = 0;
	for (unsigned s = hint; s + n <= per_cluster; s++)
		if (map_range_clear(snap, s, n))
			return (int)s;
	for (unsigned s = 0; s < hint && s + n <= per_cluster; s++)
		if (map_range_clear(snap, s, n))
			return (int)s;
	return -1;
}

/* Caller holds the cluster's stripe lock. */
static void map_update(struct swap_cluster *c, unsigned start, unsigned n, bool set)
{
	for (unsigned b = start; b < start + n; b++) {
		uint64_t w = map_word(c, b / 64);
		uint64_t bit = 1ULL << (b % 64);

		__atomic_store_n(&c->map[b / 64], set ? w | bit : w & ~bit, __ATOMIC_RELAXED);
	}
}

/* The list an unowned cluster belongs on.  Caller holds its stripe lock. */
static enum cluster_list cluster_classify(const struct swap *swap, const struct swap_cluster *c)
{
	if (c->used == 0)
		return LIST_FREE;
	if (c->used == swap->granules_per_cluster)
		return LIST_NONE;
	if (map_find_run(c, swap->granules_per_cluster, swap->object_granules_max, 0) >= 0)
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

/* Take a cluster that fits an object of n granules; CLUSTER_NONE when none does. */
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
			if (map_find_run(&swap->clusters[i], swap->granules_per_cluster, n, 0) >=
			    0) {
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
	list_add(swap, index, cluster_classify(swap, c));
	pthread_mutex_unlock(&swap->lock);
	pthread_mutex_unlock(stripe);
}

/* --- slots ---------------------------------------------------------------- */

static unsigned granules_for(const struct swap *swap, size_t len)
{
	return (unsigned)((len + swap->info.granule_size - 1) / swap->info.granule_size);
}

int swap_slot_alloc(struct swap_io *io, size_t len, uint64_t *slot_out)
{
	struct swap *swap = io->swap;
	unsigned per = swap->granules_per_cluster;
	unsigned n;

	if (len == 0 || len > SWAP_OBJECT_MAX)
		return -EINVAL;
	n = granules_for(swap, len);

	for (;;) {
		if (io->cluster != CLUSTER_NONE) {
			struct swap_cluster *c = &swap->clusters[io->cluster];
			pthread_mutex_t *stripe = stripe_of(swap, io->cluster);
			int pos;

			pthread_mutex_lock(stripe);
			pos = map_find_run(c, per, n, io->hint);
			if (pos >= 0) {
				map_update(c, (unsigned)pos, n, true);
				c->used += n;
			}
			pthread_mutex_unlock(stripe);
			if (pos >= 0) {
				io->hint = (unsigned)pos + n;
				stat_add(swap, slots_in_use, 1);
				stat_add(swap, bytes_on_disk,
					 (uint64_t)n * swap->info.granule_size);
				*slot_out =
				    slot_make((uint64_t)io->cluster * per + (unsigned)pos, n);
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

int swap_slot_free(struct swap *swap, uint64_t slot)
{
	unsigned per = swap->granules_per_cluster;
	uint64_t granule = slot_granule(slot);
	unsigned n = slot_granules(slot);
	uint64_t index = granule / per;
	unsigned start = (unsigned)(granule % per);
	struct swap_cluster *c;
	pthread_mutex_t *stripe;
	uint64_t snap[2];

	if (slot >> SWAP_SLOT_BITS || n > swap->object_granules_max ||
	    index >= swap->info.clusters || start + n > per)
		return -EINVAL;
	c = &swap->clusters[index];
	stripe = stripe_of(swap, (uint32_t)index);

	pthread_mutex_lock(stripe);
	snap[0] = map_word(c, 0);
	snap[1] = map_word(c, 1);
	if (!map_range_set(snap, start, n)) {
		pthread_mutex_unlock(stripe);
		return -EINVAL;
	}
	map_update(c, start, n, false);
	c->used -= n;
	if (!__atomic_load_n(&c->owned, __ATOMIC_RELAXED)) {
		enum cluster_list want = cluster_classify(swap, c);

		if (want != __atomic_load_n(&c->list, __ATOMIC_RELAXED)) {
			pthread_mutex_lock(&swap->lock);
			/* Re-check: someone may have taken it meanwhile. */
			if (!c->owned && c->list != want) {
				list_del(swap, (uint32_t)index);
				list_add(swap, (uint32_t)index, want);
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

static int swap_open_file(struct swap *swap, const char *path, uint64_t size)
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
	/* One daemon per swap file. */
	if (flock(swap->fd, LOCK_EX | LOCK_NB) < 0) {
		r = errno == EWOULDBLOCK ? -EBUSY : -errno;
		goto fail;
	}
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

int swap_new(struct swap **out, const struct swap_config *config)
{
	const char *path = config->path ? config->path : SWAP_DEFAULT_PATH;
	unsigned granule = config->granule_size ? config->granule_size : SWAP_GRANULE_DEFAULT;
	uint64_t clusters = config->size / SWAP_CLUSTER_SIZE;
	struct swap *swap;
	int r;

	if (granule < SWAP_GRANULE_MIN || granule > SWAP_OBJECT_MAX || (granule & (granule - 1)))
		return -EINVAL;
	if (clusters == 0 || clusters >= CLUSTER_NONE ||
	    clusters * (SWAP_CLUSTER_SIZE / SWAP_GRANULE_MIN) > SLOT_GRANULE_MAX)
		return -EINVAL;

	swap = calloc(1, sizeof(*swap));
	if (!swap)
		return -ENOMEM;
	swap->fd = -1;
	swap->ring_entries = config->ring_entries ? config->ring_entries : SWAP_RING_DEFAULT;
	swap->info.clusters = clusters;
	swap->info.file_size = clusters * SWAP_CLUSTER_SIZE;
	swap->info.cluster_size = SWAP_CLUSTER_SIZE;
	swap->inject_left = -1;
	for (unsigned i = 0; i < LIST__COUNT; i++)
		swap->lists[i].head = CLUSTER_NONE;
	pthread_mutex_init(&swap->lock, NULL);
	for (unsigned i = 0; i < SWAP_STRIPES; i++)
		pthread_mutex_init(&swap->stripes[i], NULL);

	swap->clusters = calloc(clusters, sizeof(*swap->clusters));
	if (!swap->clusters) {
		r = -ENOMEM;
		goto fail;
	}

	r = swap_open_file(swap, path, swap->info.file_size);
	if (r < 0)
		goto fail;
	if (!(config->flags & SWAP_FLAG_BUFFERED)) {
		r = probe_direct_io(swap);
		if (r < 0)
			goto fail;
	}
	if (swap->info.direct_io && swap->info.dio_offset_align > granule)
		granule = swap->info.dio_offset_align;
	swap->info.granule_size = granule;
	swap->granules_per_cluster = SWAP_CLUSTER_SIZE / granule;
	swap->object_granules_max = SWAP_OBJECT_MAX / granule;
	swap->io_align = 1;
	if (swap->info.direct_io)
		swap->io_align = swap->info.dio_offset_align > swap->info.dio_mem_align
				     ? swap->info.dio_offset_align
				     : swap->info.dio_mem_align;

	*out = swap;
	return 0;

fail:
	swap_free(swap);
	return r;
}

struct swap *swap_free(struct swap *swap)
{
	if (!swap)
		return NULL;
	if (swap->fd >= 0)
		close(swap->fd);
	free(swap->clusters);
	for (unsigned i = 0; i < SWAP_STRIPES; i++)
		pthread_mutex_destroy(&swap->stripes[i]);
	pthread_mutex_destroy(&swap->lock);
	free(swap);
	return NULL;
}

void swap_get_info(const struct swap *swap, struct swap_info *info)
{
	*info = swap->info;
}

void swap_get_usage(struct swap *swap, struct swap_usage *usage)
{
	uint64_t granule = swap->info.granule_size;
	unsigned per = swap->granules_per_cluster;
	struct swap_usage u = {.file_size = swap->info.file_size};
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

static void backlog_push(struct swap_io *io, struct swap_req *req)
{
	req->next = NULL;
	if (io->backlog_tail)
		io->backlog_tail->next = req;
	else
		io->backlog_head = req;
	io->backlog_tail = req;
}

/*
 * Move backlogged requests onto the submission queue and submit.  What
 * does not fit stays in the backlog for the next reap.
 */
static int io_flush(struct swap_io *io)
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
		if (result < 0) {
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

static void req_finish(struct swap_io *io, struct swap_req *req, int result)
{
	struct swap *swap = io->swap;

	io->inflight--;
	if (req->op == REQ_WRITE) {
		batch_finish_request(io, req, result);
	} else if (result < 0) {
		stat_add(swap, io_errors, 1);
		req->read_cb(result, NULL, 0, req->userdata);
	} else {
		stat_add(swap, reads, 1);
		stat_add(swap, bytes_read, req->length);
		if (req->dst)
			memcpy(req->dst, req->buffer, req->len);
		req->read_cb(0, req->dst ? req->dst : req->buffer, req->len, req->userdata);
	}
	req_put(io, req);
}

/* A completion arrived for req: finish it or resubmit what is left. */
static int req_complete(struct swap_io *io, struct swap_req *req, int res)
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

/* --- swap_io ---------------------------------------------------------------- */

int swap_io_new(struct swap_io **out, struct swap *swap)
{
	struct swap_io *io;
	int r;

	io = calloc(1, sizeof(*io));
	if (!io)
		return -ENOMEM;
	io->swap = swap;
	io->cluster = CLUSTER_NONE;
	io->rng = (uint64_t)(uintptr_t)io * 0x9e3779b97f4a7c15ULL | 1;

	io->event_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (io->event_fd < 0) {
		r = -errno;
		goto fail;
	}
	r = io_uring_queue_init(swap->ring_entries, &io->ring, 0);
	if (r < 0)
		goto fail;
	io->ring_ready = true;
	r = io_uring_register_eventfd(&io->ring, io->event_fd);
	if (r < 0)
		goto fail;

	*out = io;
	return 0;

fail:
	if (io->ring_ready)
		io_uring_queue_exit(&io->ring);
	if (io->event_fd >= 0)
		close(io->event_fd);
	free(io);
	return r;
}

struct swap_io *swap_io_free(struct swap_io *io)
{
	if (!io)
		return NULL;
	while (io->inflight) {
		if (swap_io_wait(io) < 0)
			break; /* the ring's teardown cancels what is left */
	}
	if (io->cluster != CLUSTER_NONE)
		cluster_release(io->swap, io->cluster);
	io_uring_queue_exit(&io->ring);
	close(io->event_fd);
	while (io->idle) {
		struct swap_req *req = io->idle;

		io->idle = req->next;
		free(req->buffer);
		free(req);
	}
	free(io);
	return NULL;
}

int swap_io_fd(const struct swap_io *io)
{
	return io->event_fd;
}

size_t swap_io_inflight(const struct swap_io *io)
{
	return io->inflight;
}

int swap_io_reap(struct swap_io *io)
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
		finished += req_complete(io, req, res);
	}
	if (io->backlog_head) {
		int r = io_flush(io);

		if (r < 0 && !finished)
			return r;
	}
	return finished;
}

int swap_io_wait(struct swap_io *io)
{
	struct io_uring_cqe *cqe;
	int r;

	if (!io->inflight)
		return 0;
	r = io_flush(io);
	if (r < 0)
		return r;
	do
		r = io_uring_wait_cqe(&io->ring, &cqe);
	while (r == -EINTR);
	if (r < 0)
		return r;
	return swap_io_reap(io);
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
	int r;

	if (count == 0 || !cb)
		return -EINVAL;
	for (size_t i = 0; i < count; i++)
		if (!objs[i].data || objs[i].len == 0 || objs[i].len > SWAP_OBJECT_MAX)
			return -EINVAL;

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
		req->offset = start * granule;
		req->length = (end - start) * granule;
		req->batch = batch;
		req->first = i;
		req->count = j - i;
		for (size_t k = i; k < j; k++) {
			const struct swap_object *obj = &objs[batch->order[k]];
			char *at =
			    (char *)req->buffer + (slot_granule(obj->slot) - start) * granule;

			memcpy(at, obj->data, obj->len);
			memset(at + obj->len, 0, swap_slot_disk_bytes(swap, obj->slot) - obj->len);
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
	(void)io_flush(io); /* on failure the backlog keeps them for the next reap */
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

int swap_io_read(struct swap_io *io, uint64_t slot, size_t len, void *dst, swap_read_cb cb,
		 void *userdata)
{
	struct swap *swap = io->swap;
	uint64_t granule = slot_granule(slot);
	unsigned n = slot_granules(slot);
	struct swap_req *req;

	if (!cb || len == 0 || len > SWAP_OBJECT_MAX || slot >> SWAP_SLOT_BITS ||
	    n != granules_for(swap, len) ||
	    granule / swap->granules_per_cluster >= swap->info.clusters ||
	    granule % swap->granules_per_cluster + n > swap->granules_per_cluster)
		return -EINVAL;

	req = req_get(io, SWAP_OBJECT_MAX);
	if (!req)
		return -ENOMEM;
	req->op = REQ_READ;
	req->offset = granule * swap->info.granule_size;
	req->length = (size_t)n * swap->info.granule_size;
	req->len = len;
	req->dst = dst;
	req->read_cb = cb;
	req->userdata = userdata;
	backlog_push(io, req);
	io->inflight++;
	stat_add(swap, read_ios, 1);
	(void)io_flush(io);
	return 0;
}

/* --- synchronous helpers ------------------------------------------------------- */

struct sync_wait {
	bool done;
	int result;
	void *dst;
};

static void sync_write_done(struct swap_object *objs, size_t count, int result, void *userdata)
{
	struct sync_wait *wait = userdata;

	wait->result = result;
	wait->done = true;
}

static void sync_read_done(int result, const void *data, size_t len, void *userdata)
{
	struct sync_wait *wait = userdata;

	wait->result = result;
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

int swap_io_read_sync(struct swap_io *io, uint64_t slot, size_t len, void *dst)
{
	struct sync_wait wait = {0};
	int r;

	if (!dst)
		return -EINVAL;
	r = swap_io_read(io, slot, len, dst, sync_read_done, &wait);
	if (r < 0)
		return r;
	return sync_until_done(io, &wait);
}
