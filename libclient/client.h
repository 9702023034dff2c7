/* SPDX-License-Identifier: MIT */
/*
 * libuzswap internals: the state one client process keeps, and the modules
 * that share it.
 *
 *   init.c          constructor, environment, joining the daemon (uffd,
 *                   graveyard, HELLO), leaving it, the one-line notices, the
 *                   library's own raw-mmapped memory (uz_own_mmap)
 *   watcher.c       the watcher thread: lazy join once the process has
 *                   UZSWAP_JOIN_MIN of anonymous memory, then the scans
 *   scan.c          /proc/self/maps: every private anonymous writable
 *                   mapping, registered in REGISTER_BATCHes
 *   conn.c          the socket: sends, and requests matched to replies by seq
 *   agent.c         the agent thread: sole reader of the socket, EVICT,
 *                   SHUTDOWN, daemon loss
 *   ranges.c        the table of registered ranges (a cache), REGISTER,
 *                   UNREGISTER and their round trips
 *   hooks-mmap.c    mmap, mmap64, munmap, mremap
 *   fork.c          pthread_atfork handlers (docs/PROTOCOL.md section 4)
 *   api.c           the public uzswap_* functions
 *
 * The library never replaces the program's allocator: it interposes no
 * malloc function.  Nothing here may call malloc either (the program's
 * allocator may be anything, and the agent must not depend on it): every
 * table is backed by raw mmap(2) system calls.
 *
 * Threads: the watcher (from the constructor on, sleeping between looks)
 * and, once joined, the agent.  The agent is the only reader of the
 * socket, so it never waits for a reply; registration happens on the
 * thread that mapped the memory (hooks) or on the watcher (scans).
 *
 * Locks, outermost first.  No other nesting is allowed.
 *   1. range_lock (ranges.c): joining and leaving, the range table, every
 *      UFFDIO_(UN)REGISTER, and every munmap/mremap that may touch memory in
 *      the table.  Never held across a daemon round trip: a registrar
 *      claims its range (PENDING) under it, lets go for the round trip and
 *      takes it again to settle (ranges.c).  Joining holds it across the
 *      HELLO exchange, before anything is registered.
 *   2. request_lock (conn.c): connection state, waiters, socket users.
 *      Never held across a system call that can block.
 *   watcher_lock (watcher.c) and own_lock (init.c) are leaves: nothing is
 *   taken while holding them.
 * The fork prepare handler takes range_lock then request_lock.
 */
#pragma once

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "protocol.h"

#define UZ_EXPORT __attribute__((visibility("default")))

enum uz_client_state {
	UZ_CLIENT_OFF = 0,	/* not managed: no daemon, refused, left or disabled */
	UZ_CLIENT_MANAGED,	/* joined: the agent runs, ranges may be registered */
	UZ_CLIENT_CLOSING,	/* the agent is leaving: new requests fail with -ENOTCONN */
	UZ_CLIENT_RECONNECTING, /* the daemon died: uffd, store and ring kept for the next one */
};

struct uz_client {
	/* Set once by the constructor (or the first hook that needs them). */
	atomic_bool ready;		   /* the constructor has run: hooks may register */
	bool disabled;			   /* UZSWAP_DISABLE=1 */
	size_t min_region;		   /* UZSWAP_MIN_REGION, page multiple */
	size_t join_min;		   /* UZSWAP_JOIN_MIN: join once anonymous RSS reaches it */
	unsigned scan_interval_ms;	   /* UZSWAP_SCAN_INTERVAL: the watcher's tick */
	char socket_path[108];		   /* sizeof(sun_path) */
	atomic_uintptr_t agent_stack_hint; /* an address on the agent's stack */
	atomic_uintptr_t watcher_stack_hint; /* an address on the watcher's stack */

	/* Written under range_lock and request_lock, read under either. */
	atomic_int state;	/* enum uz_client_state */
	int uffd;		/* our own reference, kept while managed */
	int sock;		/* SOCK_SEQPACKET to uzswapd */
	uint64_t uffd_features; /* granted by UFFDIO_API */
	void *graveyard;	/* UZ_EVICT_BATCH_MAX pages, kept across leave and fork */
	void *ring;		/* the daemon's memfd, MAP_SHARED: data slots, then status */
	size_t ring_size;
	int ring_fd;		/* kept for a re-join (the next daemon takes the ring back) */
	int store_fd;		/* read-only: the daemon's store of our pages (common/store-layout.h) */
	int arena_fd;		/* read-only: the arena of our compressed pages (kept for the next daemon) */
	unsigned reconnect_timeout_s; /* UZSWAP_RECONNECT_TIMEOUT: 0 waits for ever */
	uint32_t batch_max; /* pages per EVICT: min(ring pages, graveyard pages) */
	uint64_t client_id;
	pthread_t agent_thread;
	atomic_bool agent_running;
	bool joined_once; /* for the fork child: was the parent managed */
	bool join_tried;  /* one join attempt per process (under range_lock) */
};

extern struct uz_client uz_client;

static inline bool uz_client_managed(void)
{
	return atomic_load_explicit(&uz_client.state, memory_order_acquire) == UZ_CLIENT_MANAGED;
}

static inline bool uz_is_agent(void)
{
	return atomic_load_explicit(&uz_client.agent_running, memory_order_acquire) &&
	       pthread_equal(pthread_self(), uz_client.agent_thread);
}

/* init.c */
void uz_client_init(void);
int uz_client_join(bool fork_child);
/*
 * The fork child of a managed process, in its atfork handler: join with
 * the snapshot of the parent's pages (fork.c); the inherited arena is
 * uz_client.arena_fd.  On failure the descriptors are the caller's still.
 */
int uz_client_join_snapshot(int snapshot_fd);
/* A full userfaultfd with the features the protocol needs; *reason on failure. */
int uz_uffd_create(int *out, uint64_t *features_out, const char **reason);
/* Agent: connect again and resume with our uffd, store and ring.  0, or -errno. */
int uz_client_rejoin(void);
/* The re-join without taking the connection over: the new socket in *sock_out. */
int uz_client_rejoin_socket(int *sock_out);
int uz_client_join_once(bool fork_child);
void uz_client_leave(bool daemon_alive);
void uz_notice(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void *uz_raw_mmap(void *addr, size_t len, int prot, int flags, int fd, off_t off);
int uz_raw_munmap(void *addr, size_t len);
void *uz_raw_mremap(void *old, size_t old_len, size_t new_len, int flags, void *new_addr);
/*
 * The library's own memory: private anonymous read-write, never registered
 * (the scan leaves it out), named [anon:uzswap] where the kernel can.
 */
#define UZ_OWN_MAX 32
void *uz_own_mmap(size_t len);
/*
 * A fork child's thread (agent, watcher) on a stack of our own memory,
 * mapped once into *stack: glibc's cached stacks are the parent threads'
 * memory, and reusing one reads its descriptor and reallocs its old dtv,
 * heap the child may not have yet.  Falls back to a glibc stack of size.
 */
void uz_attr_own_stack(pthread_attr_t *attr, void **stack, size_t size);
void uz_own_munmap(void *addr, size_t len);
size_t uz_own_snapshot(struct uz_register_range *out, size_t max);
void uz_own_reset_lock(void);

/* conn.c */
void uz_conn_reset(void);
void uz_conn_lock(void);
void uz_conn_unlock(void);
int uz_conn_send(void *msg, size_t size, uint16_t type);
int uz_conn_request(void *msg, size_t size, uint16_t type, void *reply, size_t reply_size,
		    uint16_t reply_type);
/*
 * The same, and a descriptor the reply carries goes to *fd (left alone when
 * none comes; the caller presets it to -1).
 */
int uz_conn_request_fd(void *msg, size_t size, uint16_t type, void *reply, size_t reply_size,
		       uint16_t reply_type, int *fd);
/* Agent: a reply for its waiter, with the one descriptor it carried (or -1); never leaks it. */
void uz_conn_deliver(const struct uz_msg_header *header, const void *msg, size_t size, int fd);
void uz_conn_close_begin(void);
void uz_conn_close_finish(void);
void uz_conn_suspend(void);
void uz_conn_resume(int sock);
/* Wait while the agent looks for a new daemon; true when managed again. */
bool uz_conn_wait_managed(void);

/* agent.c */
int uz_agent_start(bool fork_child);

/* rescue.c: the fork child's main thread re-joins if the daemon dies before its agent runs. */
void uz_rescue_arm(void);
void uz_rescue_disarm(void);
bool uz_rescue_armed(void);
int uz_rescue_signal(void);
/* The agent, before it first reads the socket: the handler's window is over. */
void uz_rescue_close(void);

/* failclosed.c */
/*
 * No daemon came back (or it refused our state): put back every page the
 * process itself can (same-filled pages, pages of the last batch still in
 * the ring), poison the others so that touching one raises SIGBUS, then
 * release the uffd.  Agent only, with range_lock not held; prints the
 * notice first.
 */
void uz_fail_closed(const char *why);
/*
 * A fork child that could not join with its snapshot: its holes (pages
 * evicted in its parent) would read zeros.  Registers its private
 * anonymous mappings with a fresh uffd and fails closed on the snapshot
 * (uz_client.store_fd); every evicted page is poisoned or restored.
 */
void uz_fail_closed_fork_child(const char *why);

/* ranges.c: the table; round trips are made without range_lock held. */
enum uz_range_state {
	UZ_RANGE_REGISTERED = 1,
	UZ_RANGE_PENDING,  /* a round trip of one registrar is in flight */
	UZ_RANGE_EXCLUDED, /* unregistered by the program, refused, or another uffd's */
};
void uz_ranges_lock(void);
void uz_ranges_unlock(void);
void uz_ranges_reset_lock(void);
/* The calling thread holds range_lock (a join in progress): hooks do not lock. */
bool uz_ranges_held(void);
bool uz_ranges_any(void);
uint64_t uz_ranges_gen_locked(void);
int uz_range_register(uint64_t start, uint64_t len, uint32_t flags, bool fresh);
int64_t uz_ranges_register_batch(const struct uz_register_range *ranges, size_t count,
				 uint32_t flags, uint64_t *refused);
int uz_range_unregister(uint64_t start, uint64_t len);
int uz_uffd_probe(uint64_t addr);
bool uz_range_overlaps_locked(uint64_t start, uint64_t len);
bool uz_range_contains_locked(uint64_t start, uint64_t len);
size_t uz_range_gaps_locked(uint64_t start, uint64_t end, struct uz_register_range *gaps,
			    size_t max, bool *registered, bool *blocked);
void uz_ranges_reconcile_locked(const struct uz_register_range *lines, size_t nr_lines,
				uint64_t gen);
void uz_range_forget_locked(uint64_t start, uint64_t len);
void uz_range_remember_locked(uint64_t start, uint64_t len);
void uz_range_exclude_locked(uint64_t start, uint64_t len);
void uz_ranges_unregister_all_locked(void);
void uz_ranges_clear_locked(void);
void uz_ranges_register_inherited(void);
void uz_ranges_populate_locked(void);

/* scan.c */
struct uz_maps_line {
	uint64_t start, end;
	char perms[4];
	uint64_t inode;
	const char *name; /* "" for none */
};

/* What the last scan saw (bytes of address space). */
struct uz_scan_result {
	uint64_t eligible_bytes;   /* private anonymous rw mappings */
	uint64_t registered_bytes; /* of them registered after the scan */
	uint64_t new_bytes;	   /* registered by this scan */
	uint64_t refused_bytes;	   /* the daemon refused */
	uint64_t small_bytes;	   /* pieces below UZSWAP_MIN_REGION */
	uint64_t locked_bytes;	   /* mlocked */
};
extern struct uz_scan_result uz_scan_last;

int uz_read_lines(const char *path, char *buf, size_t size, int (*fn)(char *line, void *arg),
		  void *arg);
bool uz_maps_parse(char *line, struct uz_maps_line *out);
bool uz_maps_eligible(const struct uz_maps_line *line);
int uz_scan_run(void);
void uz_scan_populate_registered(void);

/* watcher.c */
int uz_watcher_start(bool join_now, bool fork_child);
void uz_watcher_kick(void);
void uz_watcher_reset_lock(void);
uint64_t uz_anon_rss(void);

/* hooks-mmap.c */
int uz_munmap_tracked(void *addr, size_t len);
void *uz_mremap_tracked(void *old, size_t old_len, size_t new_len, int flags, void *new_addr);

/* fork.c */
int uz_fork_install(void);
/*
 * Set between the fork prepare handler and the end of the fork: the agent
 * moves nothing out meanwhile, whatever a daemon asks (a daemon that
 * re-joined mid-fork knows nothing of the pause the previous one granted),
 * so the child never inherits a hole.
 */
extern atomic_bool uz_fork_in_progress;
