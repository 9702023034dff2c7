// SPDX-License-Identifier: MIT
/*
 * The second-chance LRU: a FIFO ring of 64-bit page references, one per
 * cgroup, and the shrinker's count of what may be written back.
 *
 * Stores push at the tail; the shrinker walks from the head and its
 * callback decides per reference: written back or stale (dropped),
 * referenced (bit cleared by the callback, pushed again at the tail: the
 * second chance), busy (back to the tail, not counted), or stop (back at
 * the head, where the next walk resumes).  The ring holds references, not
 * entries, so a page freed by a fault needs no unlinking here: the walk
 * meets a reference whose page is gone and drops it (lazy deletion).
 *
 * The ring is an array of a power-of-two size that doubles when full and
 * never shrinks below its high-water mark: at 8 bytes per stored page the
 * memory is small and the churn of resizing is not worth saving it.
 *
 * The count follows the kernel's zswap_shrinker_count(): pages read back
 * from disk since the last count show the shrinker went too far, so they
 * are consumed (with a compare-and-swap loop, since several counters may
 * run at once) and subtracted from the freeable count; what remains is
 * scaled by the memory the stored pages really occupy (pool pages over
 * stored pages), since writing back well-compressed pages frees little.
 *
 * Locking: lru->lock guards the ring and is held for pushes and pops only,
 * never across a walk callback (the callback does I/O submission and page
 * table work, and may push to this LRU itself).  A walker that has popped a
 * reference must be able to put it back without allocating, so popped but
 * not yet returned references are counted in `held` and pushes grow the
 * ring early enough to leave them room.
 */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>

#include "util.h"
#include "lru/lru.h"

#define LRU_INITIAL_CAPACITY 64

struct lru {
	pthread_mutex_t lock;
	uint64_t *ring;
	uint64_t capacity;	  /* a power of two */
	uint64_t head;		  /* index of the oldest reference */
	uint64_t length;	  /* references in the ring */
	uint64_t held;		  /* references popped by walkers that may come back */
	uint64_t nr_disk_swapins; /* atomic: swapins not yet consumed by a count */
};

int lru_new(struct lru **out)
{
	struct lru *lru;

	lru = calloc(1, sizeof(*lru));
	if (!lru)
		return -ENOMEM;
	lru->ring = malloc(LRU_INITIAL_CAPACITY * sizeof(*lru->ring));
	if (!lru->ring) {
		free(lru);
		return -ENOMEM;
	}
	lru->capacity = LRU_INITIAL_CAPACITY;
	pthread_mutex_init(&lru->lock, NULL);
	*out = lru;
	return 0;
}

struct lru *lru_free(struct lru *lru)
{
	if (!lru)
		return NULL;
	pthread_mutex_destroy(&lru->lock);
	free(lru->ring);
	free(lru);
	return NULL;
}

/* Caller holds lru->lock.  Doubles the ring, unwrapping it. */
static int lru_grow(struct lru *lru)
{
	uint64_t *ring, i;

	if (lru->capacity > UINT64_MAX / 2 / sizeof(*ring))
		return -ENOMEM;
	ring = malloc(lru->capacity * 2 * sizeof(*ring));
	if (!ring)
		return -ENOMEM;
	for (i = 0; i < lru->length; i++)
		ring[i] = lru->ring[(lru->head + i) & (lru->capacity - 1)];
	free(lru->ring);
	lru->ring = ring;
	lru->head = 0;
	lru->capacity *= 2;
	return 0;
}

/* Caller holds lru->lock and has made sure there is room. */
static void lru_put_tail(struct lru *lru, uint64_t ref)
{
	lru->ring[(lru->head + lru->length) & (lru->capacity - 1)] = ref;
	lru->length++;
}

static void lru_put_head(struct lru *lru, uint64_t ref)
{
	lru->head = (lru->head - 1) & (lru->capacity - 1);
	lru->ring[lru->head] = ref;
	lru->length++;
}

static uint64_t lru_take_head(struct lru *lru)
{
	uint64_t ref = lru->ring[lru->head];

	lru->head = (lru->head + 1) & (lru->capacity - 1);
	lru->length--;
	return ref;
}

int lru_push(struct lru *lru, uint64_t ref)
{
	int r = 0;

	pthread_mutex_lock(&lru->lock);
	/* Leave room for every reference a walker holds and may put back. */
	if (lru->length + lru->held >= lru->capacity)
		r = lru_grow(lru);
	if (r == 0)
		lru_put_tail(lru, ref);
	pthread_mutex_unlock(&lru->lock);
	return r;
}

bool lru_pop(struct lru *lru, uint64_t *ref)
{
	bool found = false;

	pthread_mutex_lock(&lru->lock);
	if (lru->length) {
		*ref = lru_take_head(lru);
		found = true;
	}
	pthread_mutex_unlock(&lru->lock);
	return found;
}

uint64_t lru_length(struct lru *lru)
{
	uint64_t length;

	pthread_mutex_lock(&lru->lock);
	length = lru->length;
	pthread_mutex_unlock(&lru->lock);
	return length;
}

int lru_walk(struct lru *lru, uint64_t nr_to_scan, lru_walk_fn fn, void *userdata,
	     struct lru_walk_result *result)
{
	struct lru_walk_result counts = {0};
	uint64_t visits_left, ref;

	/*
	 * Busy references are not counted as scanned; bound the visits as
	 * well so that a ring of busy references cannot keep us here.
	 */
	pthread_mutex_lock(&lru->lock);
	visits_left = nr_to_scan + lru->length;
	pthread_mutex_unlock(&lru->lock);

	while (counts.scanned < nr_to_scan && visits_left > 0) {
		enum lru_walk_status status;

		pthread_mutex_lock(&lru->lock);
		if (lru->length == 0) {
			pthread_mutex_unlock(&lru->lock);
			break;
		}
		ref = lru_take_head(lru);
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
			break;
		case LRU_ROTATE:
			counts.scanned++;
			counts.rotated++;
			lru_put_tail(lru, ref);
			break;
		case LRU_RETRY:
			lru_put_tail(lru, ref);
			break;
		case LRU_STOP:
			lru_put_head(lru, ref);
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
