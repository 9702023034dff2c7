/* SPDX-License-Identifier: MIT */
/*
 * libuzswap internals: the state one client process keeps, and the modules
 * that share it.
 *
 *   init.c          constructor, environment, joining the daemon (uffd,
 *                   graveyard, HELLO), leaving it, the one-line notices
 *   conn.c          the socket: sends, and requests matched to replies by seq
 *   agent.c         the agent thread: sole reader of the socket, EVICT,
 *                   SHUTDOWN, daemon loss
 *   ranges.c        the table of registered ranges, REGISTER/UNREGISTER
 *   hooks-mmap.c    mmap, mmap64, munmap, mremap
 *   hooks-malloc.c  the malloc family: large blocks go to registered mappings
 *   fork.c          pthread_atfork handlers (docs/PROTOCOL.md section 4)
 *   api.c           the public uzswap_* functions
 *
 * Nothing here may call malloc: every table is backed by raw mmap(2)
 * system calls, because the malloc hooks themselves use these modules.
 *
 * Locks, outermost first.  No other nesting is allowed.
 *   1. range_lock (ranges.c): joining and leaving, the range table, every
 *      UFFDIO_(UN)REGISTER and every munmap/mremap that may touch a
 *      registered range.  It may be held while waiting for a reply: the
 *      agent takes it only to leave, and before that it fails every waiter.
 *   2. block_lock (hooks-malloc.c): the table of large malloc blocks.
 *   3. request_lock (conn.c): connection state, waiters, socket users.
 *      Never held across a system call that can block.
 * The fork prepare handler takes all three in that order.
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
	atomic_bool ready;     /* the constructor has run: hooks may steer */
	bool disabled;	       /* UZSWAP_DISABLE=1 */
	size_t min_region;     /* UZSWAP_MIN_REGION, page multiple */
	char socket_path[108]; /* sizeof(sun_path) */

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
};

extern struct uz_client uz_client;

/* Large mallocs go to registered mappings when size >= this (SIZE_MAX: never). */
extern atomic_size_t uz_steer_min;

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
/* Agent: connect again and resume with our uffd, store and ring.  0, or -errno. */
int uz_client_rejoin(void);
void uz_client_leave(bool daemon_alive);
void uz_notice(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void *uz_raw_mmap(void *addr, size_t len, int prot, int flags, int fd, off_t off);
int uz_raw_munmap(void *addr, size_t len);
void *uz_raw_mremap(void *old, size_t old_len, size_t new_len, int flags, void *new_addr);

/* conn.c */
void uz_conn_reset(void);
void uz_conn_lock(void);
void uz_conn_unlock(void);
int uz_conn_send(void *msg, size_t size, uint16_t type);
int uz_conn_request(void *msg, size_t size, uint16_t type, void *reply, size_t reply_size,
		    uint16_t reply_type);
void uz_conn_deliver(const struct uz_msg_header *header, const void *msg, size_t size);
void uz_conn_close_begin(void);
void uz_conn_close_finish(void);
void uz_conn_suspend(void);
void uz_conn_resume(int sock);
/* Wait while the agent looks for a new daemon; true when managed again. */
bool uz_conn_wait_managed(void);

/* agent.c */
int uz_agent_start(void);

/* failclosed.c */
/*
 * No daemon came back (or it refused our state): put back every page the
 * process itself can (same-filled pages, pages of the last batch still in
 * the ring), poison the others so that touching one raises SIGBUS, then
 * release the uffd.  Agent only, with range_lock not held; prints the
 * notice first.
 */
void uz_fail_closed(const char *why);

/* ranges.c */
void uz_ranges_lock(void);
void uz_ranges_unlock(void);
void uz_ranges_reset_lock(void);
bool uz_ranges_any(void);
int uz_range_register_locked(uint64_t start, uint64_t len, uint32_t flags);
int uz_range_unregister_locked(uint64_t start, uint64_t len);
void uz_range_announce_locked(uint64_t start, uint64_t len);
bool uz_range_overlaps_locked(uint64_t start, uint64_t len);
bool uz_range_contains_locked(uint64_t start, uint64_t len);
void uz_range_forget_locked(uint64_t start, uint64_t len);
void uz_range_remember_locked(uint64_t start, uint64_t len);
void uz_ranges_unregister_all_locked(void);
void uz_ranges_clear_locked(void);
void uz_ranges_reregister_locked(void);
void uz_ranges_populate_locked(void);

/* hooks-mmap.c */
void *uz_mmap_managed(size_t len, size_t align);
int uz_munmap_tracked(void *addr, size_t len);
void *uz_mremap_tracked(void *old, size_t old_len, size_t new_len, int flags, void *new_addr);

/* hooks-malloc.c */
void uz_blocks_lock(void);
void uz_blocks_unlock(void);
void uz_blocks_reset_lock(void);

/* fork.c */
int uz_fork_install(void);
/*
 * Set between the fork prepare handler and the end of the fork: the agent
 * moves nothing out meanwhile, whatever a daemon asks (a daemon that
 * re-joined mid-fork knows nothing of the pause the previous one granted),
 * so the child never inherits a hole.
 */
extern atomic_bool uz_fork_in_progress;
