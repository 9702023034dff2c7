/* SPDX-License-Identifier: MIT */
/*
 * Statistics: one 64-bit counter per event and per rejection reason, named
 * like the kernel's zswap counters where the meaning is the same.  A
 * struct stats holds one row of counters per thread (cache-line aligned);
 * a thread adds to its own row without a shared lock, and readers sum the
 * rows.  Gauges (stored_pages, ...) are kept as sums of signed deltas.
 *
 * Every struct stats (global, per cgroup, per client) uses the same
 * thread slot: a thread calls stats_thread_register() once.
 */
#pragma once

#include <stdint.h>

/* X(name, kind, help): kind is COUNTER or GAUGE. */
#define UZ_STATS_LIST(X)                                                                           \
	X(stored_pages, GAUGE, "pages held compressed in the pool (same-filled included)")         \
	X(same_filled_pages, GAUGE, "stored pages that are one repeated word: no pool memory")     \
	X(compressed_bytes, GAUGE, "bytes of compressed data held in the pool")                    \
	X(resident_pages, GAUGE, "registered pages mapped in clients, as the daemon counts them")  \
	X(on_disk_pages, GAUGE, "pages written back and held in the swap file")                    \
	X(swap_bytes_on_disk, GAUGE, "bytes of the swap file held by written-back pages (whole granules)") \
	X(zswpout, COUNTER, "pages stored into the pool")                                          \
	X(zswpin, COUNTER, "pages faulted back from the pool")                                     \
	X(zswpwb, COUNTER, "pages written back from the pool to the swap file")                    \
	X(written_back_pages, COUNTER, "same as zswpwb, the kernel's debugfs name")                \
	X(disk_swapins, COUNTER, "pages faulted back from the swap file")                          \
	X(faultaround_pages, COUNTER, "pages put back ahead of a fault from the pool (fault-around), counted in zswpin too") \
	X(faultaround_hits, COUNTER, "pages put back ahead that the program went on to use (inferred from its next fault; see docs/PERFORMANCE.md)") \
	X(unit_pages, GAUGE, "stored pages held as members of multi-page units (4 adjacent pages compressed as one object)") \
	X(unit_stores, COUNTER, "multi-page units stored (4 pages each)")                          \
	X(unit_restored_pages, COUNTER, "pages put back with their unit by a fault on another of its pages, counted in zswpin too") \
	X(unit_split_pages, COUNTER, "unit members stored again alone: written back, or left in their unit when the others went back") \
	X(zero_fill_faults, COUNTER, "faults on never-touched pages served with zeros")            \
	X(inflight_faults, COUNTER, "faults on pages in flight (or at an address the agent may still move from), served once the eviction landed")  \
	X(evict_requests, COUNTER, "eviction batches sent to client agents")                       \
	X(evict_failed_pages, COUNTER, "victims the agent could not move (gone, shared)")          \
	X(evict_shared_pages, COUNTER, "victims left resident: shared copy-on-write with a fork parent or child (never compressed twice)") \
	X(evict_absent_pages, COUNTER, "victims reported not moved that were absent from the client: left untracked") \
	X(evict_reassigned_pages, COUNTER, "victims whose sent address held another page of the client when the agent moved it (mremap onto it): stored as that page") \
	X(resident_missing_faults, COUNTER, "faults on pages counted resident: served zeros; a lost page, never expected") \
	X(second_chance_rotations, COUNTER, "shrinker found an entry referenced and rotated it")   \
	X(writeback_batches, COUNTER, "writeback submissions to the swap file")                    \
	X(compacted_objects, COUNTER, "pool objects moved by compaction out of sparse chunks")     \
	X(io_errors, COUNTER, "swap file reads or writes that failed")                             \
	X(swap_checksum_errors, COUNTER, "swap records read back that did not verify (checksum, owner or length): the page was poisoned") \
	X(reject_compress_fail, COUNTER, "stores refused: the compressor failed")                  \
	X(reject_compress_poor, COUNTER, "pages that compressed above the poor threshold")         \
	X(reject_alloc_fail, COUNTER, "stores refused: no pool memory could be had")               \
	X(reject_reclaim_fail, COUNTER, "stores refused: the pool was full and nothing could be written back") \
	X(pool_limit_hit, COUNTER, "stores refused because a pool limit was reached")              \
	X(decompress_fail, COUNTER, "loads whose data did not decompress: the page was poisoned")  \
	X(fork_snapshots, COUNTER, "forks that kept the parent's pages evicted, shared with the child") \
	X(fork_shared_pages, COUNTER, "evicted pages fork children got from their parent, shared by reference") \
	X(recovered_clients, COUNTER, "clients that re-joined after a daemon restart with their state") \
	X(recovered_pages, COUNTER, "evicted pages taken back from a re-joining client's state")     \
	X(lost_pages, COUNTER, "evicted pages whose bytes could not be recovered: poisoned, SIGBUS on touch")

enum uz_stat {
#define UZ_STAT_ENUM(name, kind, help) UZ_STAT_##name,
	UZ_STATS_LIST(UZ_STAT_ENUM)
#undef UZ_STAT_ENUM
		UZ_STAT__COUNT
};

enum uz_stat_kind { UZ_STAT_COUNTER, UZ_STAT_GAUGE };

#define UZ_STATS_MAX_THREADS 64

struct stats;

int stats_new(struct stats **out);
struct stats *stats_free(struct stats *stats);

/* Give the calling thread its own row; returns the slot or -EUSERS when all are taken. */
int stats_thread_register(void);

/* Add delta to the calling thread's row (slot 0, atomically, if unregistered). */
void stats_add(struct stats *stats, enum uz_stat which, int64_t delta);
/* Sum of all rows. */
int64_t stats_read(const struct stats *stats, enum uz_stat which);
void stats_read_all(const struct stats *stats, int64_t out[UZ_STAT__COUNT]);

const char *stats_name(enum uz_stat which);
const char *stats_help(enum uz_stat which);
enum uz_stat_kind stats_kind(enum uz_stat which);

/*
 * Latency histograms: log-linear buckets (4 per power of two) of
 * nanoseconds, one row per thread like the counters.
 */
struct latency_hist;

int latency_hist_new(struct latency_hist **out);
struct latency_hist *latency_hist_free(struct latency_hist *hist);
void latency_hist_record(struct latency_hist *hist, uint64_t ns);
uint64_t latency_hist_count(const struct latency_hist *hist);
/* The value below which `percent` (0..100) of the samples fall, in ns. */
uint64_t latency_hist_percentile(const struct latency_hist *hist, double percent);
