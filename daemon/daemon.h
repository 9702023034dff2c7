/* SPDX-License-Identifier: MIT */
/*
 * struct daemon: the state of one uzswapd that more than one layer needs —
 * the default policy, the totals of the families' pools, the global
 * statistics, the fault threads and the lists of clients and families.  main.c creates
 * it; the control socket (daemon/control) reads it to answer uzswapctl.
 *
 * Ownership and locks:
 *  - pool_totals, stats and fault_latency are thread-safe objects of their
 *    own (see their headers) and may be used from any thread.
 *  - `clients` (the list, its count and the per-uid counting done by
 *    walking it) is guarded by clients_lock.  A client is in the list from
 *    the end of its handshake until its fault thread frees it; the fault
 *    thread unlinks it under clients_lock before freeing, so a reader
 *    holding clients_lock may read a listed client's immutable fields
 *    (id, pid, uid, comm, stats) safely.  clients_lock is never held across
 *    a system call.
 *  - groups (the per-cgroup registry, daemon/group) has its own lock.
 *  - config, cgroup_layout and policy_override belong to the main thread
 *    (handshakes, the cgroup re-check, reload and the control socket all
 *    run there); a fault thread never reads them: a client's policy is
 *    handed over as a copy (struct client_assign).
 *  - Everything else is written once by main.c before the fault threads
 *    start, and only read afterwards.
 *
 * Logging (uz_log) lives here too: only the daemon's top levels call it
 * (main.c, the handshake on the main thread); the fault path never logs.
 */
#pragma once

#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <syslog.h>
#include <time.h>

#include "config/policy.h"
#include "group/group.h"
#include "list.h"
#include "log.h"

struct pool_totals;
struct uz_config;
struct cgroup_layout;
struct lru;
struct stats;
struct latency_hist;
struct fault_thread;
struct client;

/* Limits on what clients control (systemd CODING_STYLE: bound everything). */
#define UZ_CLIENTS_MAX		 1024	       /* connected clients, all users */
#define UZ_CLIENTS_PER_UID_MAX	 256	       /* connected clients of one uid */
#define UZ_CLIENT_REGIONS_MAX	 16384	       /* registered regions per client */
#define UZ_CLIENT_REGISTERED_MAX (16ULL << 40) /* registered bytes per client */
#define UZ_CLIENT_REQUESTS_MAX	 1024	       /* requests queued and not yet answered */
#define UZ_USER_ADDR_MAX	 (1ULL << 47)  /* end of the 47-bit user address space */
#define UZ_HELLO_TIMEOUT_USEC	 (5ULL * 1000 * 1000)
#define UZ_DRAIN_TIMEOUT_USEC	 (10ULL * 1000 * 1000)
#define UZ_EXIT_HANDOVER	 75 /* EX_TEMPFAIL: exited for the next uzswapd (SIGUSR2) */
#define UZ_FAULT_SPIN_USEC_DEFAULT 1000 /* gated on a spare core (daemon/fault/spin.h; docs/PERFORMANCE.md) */

/*
 * A page error noted by a fault thread, which never logs, for the main
 * thread to log once per kind (daemon_log_page_errors).  state: 0 nothing,
 * 1 a fault thread is filling it in, 2 filled in, 3 logged (atomic).
 */
enum uz_page_error_kind {
	UZ_PAGE_ERROR_SWAP_READ,	/* a swap read failed (io_errors) */
	UZ_PAGE_ERROR_SWAP_CHECKSUM,	/* a swap record did not verify (swap_checksum_errors) */
	UZ_PAGE_ERROR_RESIDENT_MISSING, /* a page we had as present faulted (resident_missing_faults) */
	UZ_PAGE_ERROR__COUNT,
};

struct uz_page_error_note {
	unsigned state;
	int pid;
	uint64_t addr;
};

/*
 * A client that left, queued by its fault thread for the main thread to
 * log (fault threads never log): who it was and what it did.
 */
#define UZ_DEPARTURES_MAX 64 /* queued and not yet logged; more are counted, not logged */
struct client_departure {
	uint64_t id;
	pid_t pid;
	uid_t uid;
	char comm[17];
	struct uz_group *group; /* a reference, dropped once logged */
	const char *reason;	/* a string constant */
	int64_t zswpout, zswpin, stored_pages;
};

/* Command-line options that override the config's [Defaults] (main.c). */
struct policy_override {
	bool resident_max_set, resident_low_set, compressor_set, fault_around_set, unit_set;
	uint64_t resident_max, resident_low;
	unsigned fault_around; /* --fault-around: pages, 0 = off */
	unsigned unit_pages;   /* --compression-unit: 1 or PE_UNIT_PAGES */
	enum compressor_algo algo;
	int level;
};

struct daemon {
	struct uz_policy policy; /* built-in default policy: a client before it is resolved */
	unsigned nr_fault_threads;
	struct fault_thread **fault_threads;
	unsigned fault_spin_usec; /* ceiling of a fault thread's adaptive spin, 0: never spin */
	unsigned next_fault_thread; /* round robin; main thread only */

	struct pool_totals *pool_totals; /* every family's pool adds its usage here */
	struct stats *stats;
	struct latency_hist *fault_latency; /* faults served from the pool: load + UFFDIO_COPY */

	pthread_mutex_t clients_lock; /* guards clients, nr_clients, families (daemon/family) */
	struct uz_list clients;	      /* struct client.link */
	struct uz_list families;      /* struct family.link */
	unsigned nr_clients;
	uint64_t next_client_id; /* main thread only */

	unsigned swap_idle_checks; /* daemon_swap_collect(): calls with nothing to wait for */
	/*
	 * Clients that left, for the main thread to log: a ring under
	 * departures_lock (never held across a system call), and an eventfd
	 * (non-blocking, written after queueing) the main loop watches.
	 */
	pthread_mutex_t departures_lock;
	struct client_departure departures[UZ_DEPARTURES_MAX];
	unsigned departures_head, nr_departures, departures_dropped;
	int departures_event_fd;

	/* Set by the fault threads when a drain gave up on a client (atomic). */
	unsigned drain_timeouts;

	/* Per-cgroup groups (statistics), keyed by cgroup path. */
	struct group_registry groups;
	/* main thread only (see above) */
	struct uz_config *config;
	struct cgroup_layout *cgroup_layout;
	struct policy_override policy_override;
	uint64_t started_usec;

	/* [Daemon] limits (written by main.c; read on the main thread and at REGISTER) */
	unsigned max_clients;		 /* MaxClients, default UZ_CLIENTS_MAX */
	unsigned max_clients_per_user;	 /* MaxClientsPerUser, default UZ_CLIENTS_PER_UID_MAX */
	unsigned max_regions_per_client; /* MaxRegionsPerClient, default UZ_CLIENT_REGIONS_MAX */

	/* [Pool] and [Swap] of the config (command line overrides), for the writeback tier. */
	uint64_t pool_max_size;		       /* bytes; UZ_UNLIMITED for none */
	unsigned accept_threshold_percent;     /* refill the pool below this percent of max */
	char *swap_file;    /* path; NULL or "" for none (NBD: the local metadata file) */
	uint64_t swap_size; /* bytes; 0 = no swap file (file backend) */
	int swap_backend;   /* enum swap_backend_kind: [Swap] Backend */
	char *swap_uri;	    /* [Swap] URI of the NBD export; NULL for the file */
	unsigned swap_read_timeout_ms; /* [Swap] ReadTimeout (NBD) */
	uint64_t swap_retry_usec; /* NBD unreachable at start: try writeback_open() again then */

	/*
	 * The writeback tier (daemon/fault/writeback.c).  swap is published
	 * by writeback_open() (atomic store, release; fault threads load it
	 * and open their swap_io on their own thread) and freed by
	 * daemon_free() after the fault threads.  pool_limit_hit: the global
	 * pool is over pool_max_size and refuses stores until it falls below
	 * the accept threshold (atomic).
	 */
	struct swap *swap;
	struct latency_hist *disk_fault_latency; /* faults served from the swap file */
	bool pool_limit_hit;
	/* The first swap read failure of each kind (see struct uz_page_error_note). */
	struct uz_page_error_note page_errors[UZ_PAGE_ERROR__COUNT];
};

int daemon_new(struct daemon **out, const struct uz_policy *policy, unsigned nr_fault_threads);
/* Stops the fault threads (without draining) and frees everything. */
struct daemon *daemon_free(struct daemon *daemon);
/* Gives every page back to every client (SHUTDOWN handshake), bounded by timeout_usec. */
void daemon_drain(struct daemon *daemon, uint64_t timeout_usec);
/*
 * Find the group and policy of process pid: its cgroup (cgroup_layout),
 * the config's policy for that cgroup, the command-line overrides.  Main
 * thread.  A process in no memory cgroup (or on a host without one) is in
 * group "/".  -ESRCH when the process is gone, -ENOMEM.  *group is a new
 * reference.  Written on success only.
 */
int daemon_client_resolve(struct daemon *daemon, pid_t pid, struct uz_group **group,
			  struct uz_policy *policy);
/*
 * Resolve every client again and hand the changes to their fault threads
 * (cgroup re-check, reload).  force: hand the policy over even when the
 * group did not change (the config did).  Returns how many changed.
 */
unsigned daemon_reassign_clients(struct daemon *daemon, bool force);
/*
 * Read every client's anonymous RSS (RssAnon of /proc/PID/status) for the
 * clients figures, and log once per client when most of its anonymous
 * memory stays unmanaged.  Main thread, every 2 s; never on the fault path.
 */
void daemon_sample_clients(struct daemon *daemon);
/*
 * Evict up to `bytes` of resident memory of the clients of `group` now
 * (spread in proportion of their resident pages), and, with a swap file,
 * write back up to `bytes` of the group's stored pages (second chance,
 * bounded by the shrinker count).  Both are done by the fault threads,
 * asynchronously.  *queued: resident bytes asked to be evicted.
 */
int daemon_shrink_group(struct daemon *daemon, struct uz_group *group, uint64_t bytes,
			uint64_t *queued);
/*
 * A client leaves (its fault thread, before freeing it): queue its
 * UZ_MESSAGE_CLIENT_LEFT message for the main thread.  reason: a string
 * constant.  Never blocks, never logs.
 */
void daemon_client_left(struct daemon *daemon, const struct client *client, const char *reason);
/* Main thread: log the departures queued so far (the departures_event_fd callback, and at exit). */
void daemon_log_departures(struct daemon *daemon);

/* True when every fault thread advanced its heartbeat within max_age_usec. */
bool daemon_threads_alive(struct daemon *daemon, uint64_t max_age_usec);

/*
 * A fault thread met a swap read failure on page addr of process pid:
 * remember the first of each kind for the main thread.  Never blocks,
 * never logs; any thread.
 */
void daemon_note_page_error(struct daemon *daemon, enum uz_page_error_kind kind, int pid,
			    uint64_t addr);
/* Log each noted swap read failure kind once (main thread: its timer and exit). */
void daemon_log_page_errors(struct daemon *daemon);

/*
 * Main thread, every few seconds: owners in the swap file's owner table
 * whose process is gone (clients of a previous daemon that never came
 * back) leave it; once no client is connected and no owner is left for
 * two calls in a row, every slot still allocated is garbage (leaked by a
 * kill: a write in flight, a count not yet dropped) and is freed.
 */
void daemon_swap_collect(struct daemon *daemon);

/* A one-screen summary of the global statistics, for SIGUSR1 and exit. */
void daemon_print_summary(struct daemon *daemon, FILE *f);

static inline uint64_t uz_now_usec(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000 + (uint64_t)ts.tv_nsec / 1000;
}

static inline uint64_t uz_now_nsec(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000 + (uint64_t)ts.tv_nsec;
}
