// SPDX-License-Identifier: MIT
/*
 * Statistics: counters and gauges kept in one row per thread, and latency
 * histograms kept the same way.
 *
 * The fault path updates a counter for nearly every page, from several
 * threads at once.  A shared atomic would bounce one cache line between
 * them; instead each thread that called stats_thread_register() owns a
 * slot (1..UZ_STATS_MAX_THREADS-1) and adds to its own cache-line aligned
 * row with a plain load and store.  Readers (the control socket, rarely)
 * sum the rows.  Threads that never registered share slot 0 and pay for an
 * atomic add.  The slot is a thread-local and is the same for every
 * struct stats, so one registration serves the global, per-cgroup and
 * per-client objects alike.  A slot is given back when its thread exits;
 * the next owner simply keeps adding to the row (sums stay right, gauges
 * being sums of deltas).
 *
 * Rows are written with relaxed atomic stores so that a concurrent reader
 * sees whole values; nothing orders one counter against another.
 *
 * Latency histograms are log-linear: values 0..3 get a bucket each, and
 * every power of two above gets 4 sub-buckets, so the relative error of a
 * percentile is at most 25% whatever the scale, in 252 buckets.
 */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "util.h"
#include "stats/stats.h"

#define CACHE_LINE 64

struct stats_row {
	_Alignas(CACHE_LINE) int64_t values[UZ_STAT__COUNT];
};

struct stats {
	struct stats_row rows[UZ_STATS_MAX_THREADS];
};

/* Bit n set: slot n is owned by a live thread.  Slot 0 is shared, never owned. */
static uint64_t stats_slots_taken = 1;
static __thread int stats_slot;
static pthread_key_t stats_slot_key;
static pthread_once_t stats_slot_key_once = PTHREAD_ONCE_INIT;

static void stats_slot_release(void *arg)
{
	uint64_t slot = (uint64_t)(uintptr_t)arg;

	__atomic_fetch_and(&stats_slots_taken, ~(1ULL << slot), __ATOMIC_RELEASE);
}

static void stats_slot_key_create(void)
{
	/* If this fails, slots are simply never given back. */
	if (pthread_key_create(&stats_slot_key, stats_slot_release) != 0)
		stats_slot_key = (pthread_key_t)-1;
}

int stats_thread_register(void)
{
	uint64_t taken, slot;

	if (stats_slot)
		return stats_slot;

	taken = __atomic_load_n(&stats_slots_taken, __ATOMIC_RELAXED);
	do {
		if (~taken == 0)
			return -EUSERS;
		slot = (uint64_t)__builtin_ctzll(~taken);
	} while (!__atomic_compare_exchange_n(&stats_slots_taken, &taken, taken | (1ULL << slot),
					      false, __ATOMIC_ACQUIRE, __ATOMIC_RELAXED));

	pthread_once(&stats_slot_key_once, stats_slot_key_create);
	if (stats_slot_key != (pthread_key_t)-1)
		pthread_setspecific(stats_slot_key, (void *)(uintptr_t)slot);
	stats_slot = (int)slot;
	return stats_slot;
}

int stats_new(struct stats **out)
{
	struct stats *stats;

	stats = aligned_alloc(CACHE_LINE, sizeof(*stats));
	if (!stats)
		return -ENOMEM;
	memset(stats, 0, sizeof(*stats));
	*out = stats;
	return 0;
}

struct stats *stats_free(struct stats *stats)
{
	free(stats);
	return NULL;
}

void stats_add(struct stats *stats, enum uz_stat which, int64_t delta)
{
	int64_t *value;

	if ((unsigned)which >= UZ_STAT__COUNT)
		return;
	value = &stats->rows[stats_slot].values[which];
	if (stats_slot == 0) {
		__atomic_fetch_add(value, delta, __ATOMIC_RELAXED);
		return;
	}
	/* Only this thread writes its row: no read-modify-write needed. */
	__atomic_store_n(value, __atomic_load_n(value, __ATOMIC_RELAXED) + delta, __ATOMIC_RELAXED);
}

int64_t stats_read(const struct stats *stats, enum uz_stat which)
{
	int64_t sum = 0;
	int i;

	if ((unsigned)which >= UZ_STAT__COUNT)
		return 0;
	for (i = 0; i < UZ_STATS_MAX_THREADS; i++)
		sum += __atomic_load_n(&stats->rows[i].values[which], __ATOMIC_RELAXED);
	return sum;
}

void stats_read_all(const struct stats *stats, int64_t out[UZ_STAT__COUNT])
{
	int i, j;

	memset(out, 0, sizeof(int64_t) * UZ_STAT__COUNT);
	for (i = 0; i < UZ_STATS_MAX_THREADS; i++) {
		for (j = 0; j < UZ_STAT__COUNT; j++)
			out[j] += __atomic_load_n(&stats->rows[i].values[j], __ATOMIC_RELAXED);
	}
}

static const char *const stats_names[] = {
#define UZ_STAT_NAME(name, kind, help) [UZ_STAT_##name] = #name,
    UZ_STATS_LIST(UZ_STAT_NAME)
#undef UZ_STAT_NAME
};

static const char *const stats_helps[] = {
#define UZ_STAT_HELP(name, kind, help) [UZ_STAT_##name] = help,
    UZ_STATS_LIST(UZ_STAT_HELP)
#undef UZ_STAT_HELP
};

static const enum uz_stat_kind stats_kinds[] = {
#define UZ_STAT_KIND(name, kind, help) [UZ_STAT_##name] = UZ_STAT_##kind,
    UZ_STATS_LIST(UZ_STAT_KIND)
#undef UZ_STAT_KIND
};

const char *stats_name(enum uz_stat which)
{
	return (unsigned)which < UZ_STAT__COUNT ? stats_names[which] : NULL;
}

const char *stats_help(enum uz_stat which)
{
	return (unsigned)which < UZ_STAT__COUNT ? stats_helps[which] : NULL;
}

enum uz_stat_kind stats_kind(enum uz_stat which)
{
	return (unsigned)which < UZ_STAT__COUNT ? stats_kinds[which] : UZ_STAT_COUNTER;
}

/* --- latency histograms ------------------------------------------------- */

#define HIST_SUB_BITS 2
#define HIST_SUB      (1U << HIST_SUB_BITS)
/* 0..3 directly, then 4 sub-buckets for each power 2^2 .. 2^63. */
#define HIST_BUCKETS (HIST_SUB + (64 - HIST_SUB_BITS) * HIST_SUB)

struct latency_row {
	_Alignas(CACHE_LINE) uint64_t buckets[HIST_BUCKETS];
};

struct latency_hist {
	struct latency_row rows[UZ_STATS_MAX_THREADS];
};

static unsigned latency_bucket(uint64_t ns)
{
	unsigned power, sub;

	if (ns < HIST_SUB)
		return (unsigned)ns;
	power = 63U - (unsigned)__builtin_clzll(ns);
	sub = (unsigned)(ns >> (power - HIST_SUB_BITS)) & (HIST_SUB - 1);
	return HIST_SUB + (power - HIST_SUB_BITS) * HIST_SUB + sub;
}

/* The largest value that falls in bucket b. */
static uint64_t latency_bucket_max(unsigned b)
{
	unsigned power, sub;

	if (b < HIST_SUB)
		return b;
	power = (b - HIST_SUB) / HIST_SUB + HIST_SUB_BITS;
	sub = (b - HIST_SUB) % HIST_SUB;
	if (power == 63 && sub == HIST_SUB - 1)
		return UINT64_MAX;
	return ((uint64_t)(HIST_SUB + sub + 1) << (power - HIST_SUB_BITS)) - 1;
}

int latency_hist_new(struct latency_hist **out)
{
	struct latency_hist *hist;

	hist = aligned_alloc(CACHE_LINE, sizeof(*hist));
	if (!hist)
		return -ENOMEM;
	memset(hist, 0, sizeof(*hist));
	*out = hist;
	return 0;
}

struct latency_hist *latency_hist_free(struct latency_hist *hist)
{
	free(hist);
	return NULL;
}

void latency_hist_record(struct latency_hist *hist, uint64_t ns)
{
	uint64_t *bucket = &hist->rows[stats_slot].buckets[latency_bucket(ns)];

	if (stats_slot == 0) {
		__atomic_fetch_add(bucket, 1, __ATOMIC_RELAXED);
		return;
	}
	__atomic_store_n(bucket, __atomic_load_n(bucket, __ATOMIC_RELAXED) + 1, __ATOMIC_RELAXED);
}

static void latency_hist_sum(const struct latency_hist *hist, uint64_t sums[HIST_BUCKETS])
{
	unsigned i, b;

	memset(sums, 0, sizeof(uint64_t) * HIST_BUCKETS);
	for (i = 0; i < UZ_STATS_MAX_THREADS; i++) {
		for (b = 0; b < HIST_BUCKETS; b++)
			sums[b] += __atomic_load_n(&hist->rows[i].buckets[b], __ATOMIC_RELAXED);
	}
}

uint64_t latency_hist_count(const struct latency_hist *hist)
{
	uint64_t sums[HIST_BUCKETS], count = 0;
	unsigned b;

	latency_hist_sum(hist, sums);
	for (b = 0; b < HIST_BUCKETS; b++)
		count += sums[b];
	return count;
}

uint64_t latency_hist_percentile(const struct latency_hist *hist, double percent)
{
	uint64_t sums[HIST_BUCKETS], count = 0, rank, seen = 0;
	unsigned b;

	latency_hist_sum(hist, sums);
	for (b = 0; b < HIST_BUCKETS; b++)
		count += sums[b];
	if (count == 0)
		return 0;
	if (percent < 0)
		percent = 0;
	if (percent > 100)
		percent = 100;
	/* The rank of the sample at that percentile, 1-based, rounded up. */
	rank = (uint64_t)((double)count * percent / 100.0 + 0.999999);
	if (rank == 0)
		rank = 1;
	if (rank > count)
		rank = count;
	for (b = 0; b < HIST_BUCKETS; b++) {
		seen += sums[b];
		if (seen >= rank)
			return latency_bucket_max(b);
	}
	return latency_bucket_max(HIST_BUCKETS - 1);
}
