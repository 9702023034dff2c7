/* SPDX-License-Identifier: MIT */
/*
 * Inside a fault thread: struct fault_thread and what the files that make
 * up a fault thread share.  Not an interface: only daemon/fault includes
 * it; the rest of the daemon sees fault/fault.h.
 */
#pragma once

#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include "client/client.h"
#include "compress/compress.h"
#include "daemon.h"
#include "family/family.h"
#include "fault/writeback.h"
#include "index/index.h"
#include "stats/stats.h"
#include "uffd-compat.h"
#include "util.h"

#define FAULT_RECLAIM_RESCAN   64  /* after a fruitless sweep, wait for this many new pages */
#define FAULT_RECLAIM_RETRY_MS 200 /* ... or this long (shared pages become free by writes) */
#define VPN_MAX		       ((1ULL << PAGE_INDEX_VPN_BITS) - 1)
#define FAULT_COMPRESSORS_MAX  8  /* distinct (algo, level) pairs a thread keeps */
#define FAULT_RESTORE_RUN      64 /* pages given back with one UFFDIO_COPY */
#define FAULT_UNIT_SCORE_MAX   8  /* client.unit_score: -this..this; units while >= 0 */
#define FAULT_UNIT_SPLITS      64 /* units waiting to be split, per thread */
#define FAULT_UNIT_SPLIT_IDLE_MS 10 /* ... split once the thread was idle this long, */
#define FAULT_UNIT_SPLIT_BATCH	 16 /* ... this many at a time */

/*
 * The client's pagemap (/proc/PID/pagemap), read 512 words at a time:
 * reclaim asks it whether a shared page is this process's alone now,
 * recovery whether a page is mapped.
 */
struct pagemap_window {
	uint64_t start;
	unsigned len;
	uint64_t words[512];
};

#define PAGEMAP_PRESENT_BIT   (1ULL << 63)
#define PAGEMAP_SWAPPED_BIT   (1ULL << 62)
#define PAGEMAP_EXCLUSIVE_BIT (1ULL << 56)

/* The pagemap word of the client's vpn, read 512 pages at a time; false: unknown. */
static inline bool pagemap_word(const struct client *c, struct pagemap_window *w, uint64_t vpn,
				uint64_t *word)
{
	if (vpn < w->start || vpn >= w->start + w->len) {
		ssize_t got = -1;

		w->start = vpn;
		w->len = 0;
		if (c->pagemap_fd >= 0)
			got = pread(c->pagemap_fd, w->words, sizeof(w->words),
				    (off_t)(vpn * sizeof(uint64_t)));
		if (got < (ssize_t)sizeof(uint64_t))
			return false;
		w->len = (unsigned)(got / sizeof(uint64_t));
	}
	*word = w->words[vpn - w->start];
	return true;
}

struct fault_retry {
	struct client *client;
	uint64_t addr;
	bool write;
};

/* A unit some of whose members left: the rest to store one by one (fault_unit_split_one). */
struct fault_unit_split {
	uint64_t key;	 /* the client */
	uint64_t first;	 /* vpn of the unit's page 0 */
	uint64_t handle; /* its object */
};

struct fault_thread {
	struct daemon *daemon;
	unsigned index;
	pthread_t thread;
	bool started;
	int epoll_fd;
	int event_fd;
	struct fault_source event_source;
	struct fault_source swap_source;

	pthread_mutex_t lock; /* guards inbox, stop, drain, drain_deadline */
	struct uz_list inbox; /* clients handed over, not yet adopted (client.thread_link) */
	bool stop;
	bool drain;
	uint64_t drain_deadline;

	/* --- owned by the thread --- */
	struct uz_list clients; /* client.thread_link */
	struct uz_list dead;	/* killed this round, freed at the end of it */
	bool draining;
	uint64_t deadline;
	struct compressor *compressor; /* the default policy's; decompresses anything */
	struct {
		enum compressor_algo algo;
		int level;
		struct compressor *compressor;
	} compressors[FAULT_COMPRESSORS_MAX]; /* by the (algo, level) clients' policies ask for */
	unsigned nr_compressors;
	uint64_t heartbeat; /* atomic: bumped once per loop iteration (watchdog) */
	unsigned test_stall_ms; /* test only: UZSWAP_TEST_STALL_FAULT_THREAD (fault.c) */
	unsigned test_fork_done_delay_ms; /* test only: UZSWAP_TEST_FORK_DONE_DELAY_MS (fault.c) */
	uint8_t *page; /* page-aligned buffers, one page each */
	uint8_t *zero_page;
	uint8_t *compressed;  /* PE_UNIT_PAGES pages: a page's or a unit's compressed bytes */
	uint8_t *restore_buf; /* FAULT_RESTORE_RUN pages: a run being given back */
	uint8_t *around_buf;  /* 1 + UZ_FAULT_AROUND_MAX pages: a fault and its fault-around */
	uint8_t *unit_buf;    /* PE_UNIT_PAGES pages: a unit, decompressed */
	uint8_t *unit_out;    /* PE_UNIT_PAGES pages: a unit compressed, header first */
	/*
	 * The unit in unit_buf: (pool, handle), or none (unit_pool NULL).
	 * Valid for one operation (a fault, a restore, a writeback batch),
	 * in which no object is stored: fault_unit_cache_reset() at its start.
	 */
	const struct pool *unit_pool;
	uint64_t unit_handle;
	size_t unit_valid; /* bytes of unit_buf decoded (lz4 can stop at a page) */
	struct fault_unit_split unit_splits[FAULT_UNIT_SPLITS];
	unsigned nr_unit_splits;
	struct uz_msg_evict *evict_msg;
	struct fault_retry *retries;
	unsigned nr_retries;
	bool want_retry; /* something returned EAGAIN: poll without sleeping */
	struct wb *wb;	 /* writeback tier: LRU, swap_io, reads (writeback.c) */

	/* adaptive spinning before sleeping (fault_thread_wait) */
	unsigned spin_usec;	/* the current budget, FAULT_SPIN_USEC_MIN..spin_max_usec */
	unsigned spin_max_usec; /* 0: never spin */
	bool spin_armed;	/* the last wake-up had work: spin before the next sleep */
	uint64_t grace_until;	/* usec: the earliest client grace_until to act on (0: none) */
	uint64_t reclaim_tick_usec; /* next sweep of every client, events or not */
};

/* ---------------------------------------------------------------------------
 * Small helpers
 */

static inline void client_stat(struct client *c, enum uz_stat which, int64_t delta)
{
	stats_add(c->stats, which, delta);
	stats_add(c->group->stats, which, delta);
	stats_add(c->daemon->stats, which, delta);
}

/*
 * Compressed bytes: a client counts every object it refers to (a fork
 * child and its parent both count the objects they share, as both count
 * shared pages in their RSS); its group and the daemon count each object
 * once, when it is made and when its last reference goes (`whole`).
 */
static inline void client_pool_bytes(struct client *c, int64_t delta, bool whole)
{
	stats_add(c->stats, UZ_STAT_compressed_bytes, delta);
	if (whole)
		family_count_bytes(c->family, c->group, delta);
}

/* A stored entry's object counted (sign 1) or no more (-1): see client_pool_bytes(). */
static inline void entry_pool_count(struct client *c, page_entry_t e, int sign, bool whole)
{
	stats_add(c->stats, UZ_STAT_compressed_bytes, sign * (int64_t)pe_pool_share(e));
	if (whole)
		family_count_bytes(c->family, c->group, sign * (int64_t)pe_object_len(e));
	if (pe_unit(e))
		client_stat(c, UZ_STAT_unit_pages, sign);
}

/* A STORED or WRITEBACK entry's reference to its object dropped, and counted. */
static inline void entry_pool_release(struct client *c, page_entry_t e)
{
	entry_pool_count(c, e, -1, family_release(c->family, pe_handle(e)));
}

static inline void fault_unit_cache_reset(struct fault_thread *t)
{
	t->unit_pool = NULL;
	t->unit_handle = 0;
	t->unit_valid = 0;
}

static inline void client_resident_add(struct client *c, int64_t delta)
{
	c->resident += (uint64_t)delta;
	client_stat(c, UZ_STAT_resident_pages, delta);
}

static inline int uffd_copy_page(int uffd, uint64_t addr, const void *src)
{
	struct uffdio_copy copy = {
	    .dst = addr,
	    .src = (uint64_t)(uintptr_t)src,
	    .len = UZ_PAGE_SIZE,
	    .mode = 0,
	};

	if (ioctl(uffd, UFFDIO_COPY, &copy) == 0)
		return 0;
	return -errno;
}

/* Zero-fill [start, start + len); returns the bytes done, *err the outcome. */
static inline uint64_t uffd_zero_range(int uffd, uint64_t start, uint64_t len, int *err)
{
	struct uffdio_zeropage zero = {.range = {.start = start, .len = len}, .mode = 0};

	if (ioctl(uffd, UFFDIO_ZEROPAGE, &zero) == 0) {
		*err = 0;
		return len;
	}
	*err = -errno;
	return zero.zeropage > 0 ? (uint64_t)zero.zeropage : 0;
}

static inline void uffd_wake(int uffd, uint64_t start, uint64_t len)
{
	struct uffdio_range range = {.start = start, .len = len};

	(void)ioctl(uffd, UFFDIO_WAKE, &range);
}

static inline void entry_lru_push(struct client *c, uint64_t vpn, page_entry_t *entry)
{
	wb_lru_push(c->thread->wb, c, vpn, entry);
}

/* ---------------------------------------------------------------------------
 * The thread's own (fault.c), for the other files of the thread
 */

/*
 * Store the members left in one unit of t->unit_splits one by one, so
 * that a unit whose other pages went back does not hold its whole object
 * for them (reclaim.c).  Idle work: the thread's loop splits once it was
 * idle FAULT_UNIT_SPLIT_IDLE_MS, so that splits (three compressions each)
 * neither delay faults nor take the CPU the spin gate looks for.
 */
void fault_unit_split_one(struct fault_thread *t);

/* Retry a fault that met EAGAIN (or wake its thread when the list is full). */
void fault_retry_add(struct fault_thread *t, struct client *c, uint64_t addr, bool write);
/* Stop serving a client (give_back: its pages first, as far as possible). */
void fault_client_kill(struct fault_thread *t, struct client *c, bool give_back);
/* The compressor of a policy, from the thread's cache (created there when create). */
struct compressor *fault_compressor(struct fault_thread *t, enum compressor_algo algo, int level,
				    bool create);

/* --- for the writeback tier (writeback.c) --- */
/* The client of an LRU key on this thread (dead ones too when dead_ok), or NULL. */
struct client *fault_thread_client(struct fault_thread *t, uint64_t key, bool dead_ok);
/* The client with the smallest key >= key (compaction walks clients in key order). */
struct client *fault_thread_client_after(struct fault_thread *t, uint64_t key);
/* A page came back from disk: let the client's waiting requests go on. */
void fault_client_resume(struct fault_thread *t, struct client *c);
void fault_thread_want_retry(struct fault_thread *t);
struct wb *fault_thread_wb(struct fault_thread *t);
