/* SPDX-License-Identifier: MIT */
/*
 * Client objects: one per connected process.  The handshake (HELLO,
 * validation, the ring, HELLO_REPLY) runs on the main thread; from then on
 * the client belongs to one fault thread (daemon/fault), which alone reads
 * and writes everything below `thread-owned` — no lock needed.
 *
 * This module also holds what validates a client's claims: its ranges
 * against /proc/PID/maps, its regions list, and the pagemap reads used for
 * REGISTER with UZ_REGISTER_POPULATED.
 */
#pragma once

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "config/policy.h"
#include "group/group.h"
#include "index/index.h"
#include "list.h"
#include "protocol.h"
#include "store/store.h"
#include "util.h"

struct daemon;
struct sd_event;
struct fault_thread;
struct family;
struct fork_snapshot;

/* One registered range [start, end), page aligned. */
struct client_region {
	uint64_t start;
	uint64_t end;
};

/* A slot of the eviction batch: ring page i <-> addrs[i] of the EVICT. */
enum evict_slot_state {
	EVICT_SLOT_EMPTY = 0,
	EVICT_SLOT_SENT,    /* named in the EVICT, waiting for EVICT_DONE */
	EVICT_SLOT_INSTALL, /* bytes in the ring, must go back with UFFDIO_COPY (retrying) */
};

struct evict_slot {
	uint64_t vpn;	   /* follows REMAP events */
	uint64_t sent_vpn; /* the address the agent was sent: it moves from there */
	uint8_t state;	   /* enum evict_slot_state */
	bool parked;	   /* a fault arrived for this page while in flight */
	bool parked_sent;  /* a fault arrived at sent_vpn after the page left it */
	bool discarded;	   /* REMOVE/UNMAP freed the entry: drop the bytes */
};

enum batch_state {
	BATCH_IDLE = 0,
	BATCH_SENT,    /* EVICT sent, EVICT_DONE not yet received */
	BATCH_LANDING, /* EVICT_DONE processed, some slots still to install */
};

/* A request read from the socket and not yet answered (FIFO). */
enum client_request_type {
	CLIENT_REQ_REGISTER = UZ_MSG_REGISTER,
	CLIENT_REQ_UNREGISTER = UZ_MSG_UNREGISTER,
	CLIENT_REQ_FORK_PREPARE = UZ_MSG_FORK_PREPARE,
	CLIENT_REQ_STATS = UZ_MSG_STATS,
	CLIENT_REQ_HINT = UZ_MSG_HINT,
	CLIENT_REQ_REGISTER_BATCH = UZ_MSG_REGISTER_BATCH,
	CLIENT_REQ_SHUTDOWN = 1000, /* internal: the daemon is draining */
};

struct client_request {
	uint32_t type; /* enum client_request_type */
	uint32_t seq;
	uint64_t start, end;
	uint32_t arg;	 /* REGISTER flags or HINT kind */
	bool started;	 /* restore walk begun: cursor is valid */
	uint64_t cursor; /* next vpn of a restore walk */
	uint32_t count;	 /* REGISTER_BATCH: ranges; the only one is start..end when 1 */
	struct uz_register_range *ranges; /* REGISTER_BATCH of more than one: a copy (owned) */
};

/*
 * A new group and policy for a client, posted by the main thread (cgroup
 * re-check, reload) into client.assign with an atomic exchange and taken
 * by the client's fault thread the same way; whoever replaces or takes an
 * assignment owns it (client_assign_free()).
 */
struct client_assign {
	struct uz_group *group; /* a reference */
	struct uz_policy policy;
	uint64_t shrink_pages; /* evict this many resident pages now (uzswapctl shrink) */
};

struct client_assign *client_assign_free(struct client_assign *assign);

struct fault_source {
	struct client *client;
	int kind; /* FAULT_SOURCE_UFFD or FAULT_SOURCE_SOCKET (daemon/fault) */
};

struct client {
	/* --- immutable after the handshake; readable under daemon->clients_lock --- */
	struct uz_list link; /* daemon->clients */
	struct daemon *daemon;
	uint64_t id;
	uint64_t key; /* LRU reference key: ref = key << PAGE_INDEX_VPN_BITS | vpn */
	/* owner token of this client's swap records; will become the family token */
	uint64_t swap_owner;
	pid_t pid;
	uint64_t starttime; /* of the process (/proc/PID/stat field 22): pid reuse tells */
	uid_t uid;
	gid_t gid;
	char comm[17];
	uint32_t hello_flags;
	uint64_t uffd_features;
	struct stats *stats;	    /* per-client counters (thread-safe) */
	struct fault_thread *owner; /* the fault thread it was handed to: its family's */
	struct family *family;	    /* the arena of its compressed pages (a reference) */

	/* --- main thread, under daemon->clients_lock once listed --- */
	uint64_t joined_usec;		 /* when the handshake completed */
	uint64_t anon_rss_bytes;	 /* RssAnon of the process, sampled every 2 s */
	bool unmanaged_noticed;		 /* the "mostly unmanaged" line was logged */
	struct uz_group *assigned_group; /* the group last assigned (a reference) */
	struct uz_policy assigned_policy;
	struct client_assign *assign; /* atomic exchange only: main posts, fault thread takes */

	int sock_fd;
	int uffd;
	int pagemap_fd; /* -1 when none */
	int proc_fd;	/* O_PATH of /proc/PID: pins the process identity */
	int ring_fd;
	uint8_t *ring; /* UZ_RING_PAGES pages shared with the client: data slots, then status */
	bool resume;   /* HELLO with UZ_HELLO_RESUME: recover from the store on adoption */
	bool from_snapshot; /* a fork child joining with its snapshot (UZ_HELLO_SNAPSHOT) */
	struct fork_snapshot *claimed; /* ... the snapshot's record in this daemon, if it has one */
	uint64_t graveyard_start, graveyard_end;

	/* --- thread-owned --- */
	struct uz_group *group;	 /* a reference; statistics also go to group->stats */
	struct uz_policy policy; /* resolved for group (daemon/config) */
	uint64_t high_pages;	 /* resident watermarks, pages */
	uint64_t low_pages;
	uint64_t shrink_pages; /* resident pages still to evict for uzswapctl shrink */
	struct uz_list thread_link;
	struct fault_thread *thread;
	struct fault_source source_uffd, source_socket;
	struct store *store;	  /* the memfd the client holds: index cells, journal, batch */
	struct page_index *index; /* on store's cells */

	struct client_region *regions; /* sorted, disjoint */
	unsigned nr_regions, regions_capacity;
	uint64_t registered_bytes;

	uint64_t resident; /* RESIDENT entries (mirrors the resident_pages gauge) */
	/*
	 * Of them, those the agent found shared copy-on-write with a fork
	 * relative (EBUSY): they cannot leave, so they are outside the
	 * budget, or a fork child whose pages are mostly its parent's would
	 * evict every page it faults in at once.  Kept by the eviction paths,
	 * recounted at least every second (fault/reclaim.c).
	 */
	uint64_t shared_resident;
	uint64_t shared_recount_usec;
	uint64_t in_flight; /* IN_FLIGHT entries */
	uint64_t faults;    /* faults served for this client */

	/* eviction */
	enum batch_state batch_state;
	uint32_t batch_id;
	uint32_t batch_count;
	/*
	 * Slots of the batch out whose page left its sent address (REMOVE,
	 * UNMAP, REMAP) while the agent may still move from there: faults
	 * at those addresses wait for EVICT_DONE
	 * (fault_client_address_in_flight).
	 */
	unsigned batch_stale;
	unsigned batch_pending_installs;
	struct evict_slot slots[UZ_EVICT_BATCH_MAX];
	uint64_t clock_hand;	       /* next vpn the CLOCK looks at */
	uint64_t reclaim_rescan_at;    /* a sweep found nothing: wait until resident reaches this */
	uint64_t reclaim_retry_usec;   /* ... or until this time */
	uint64_t cold_start, cold_end; /* vpns of a COLD hint still to evict; empty when equal */
	unsigned fork_pause;	       /* FORK_PREPAREs not yet matched by FORK_DONE */
	struct fork_snapshot *fork_snapshot; /* taken at FORK_PREPARE, until FORK_DONE */
	uint64_t test_socket_held_until; /* usec; test only: UZSWAP_TEST_FORK_DONE_DELAY_MS */
	/* socket messages read ahead, not handled yet (fault/request.c); NULL until needed */
	struct client_backlog *backlog;
	bool scan_written_off;		     /* PAGEMAP_SCAN refused: the CLOCK sees faults only */
	uint64_t grace_until; /* usec: a fork child is not reclaimed before (0: none) */

	/* fault-around from the pool (daemon/fault/serve.c, fault_around_*) */
	uint64_t around_last_vpn; /* the last fault served from the pool */
	int64_t around_last_step; /* vpn of the last one minus the one before */
	uint64_t around_first;	  /* the last run put back ahead: first page, */
	uint64_t around_count;	  /* ... its pages (0: none to judge), */
	bool around_next_stored;  /* ... and whether the page one step after it was stored */
	int64_t around_step;	  /* the run's step: 1 or -1 a run, 2..16 or -2..-16 a stride */
	unsigned around_window;	  /* pages to put back ahead next time, 0..policy max; 0 shut */
	bool around_unit_run;	  /* the last run was the rest of a unit, the window shut */
	int unit_score;		  /* units' put-back pages used (+) or not (-): fault_unit_wanted */
	unsigned unit_skip;	  /* unit attempts to skip (the last ones did not fit) */
	unsigned unit_backoff;	  /* ... and how many after the next miss / 2 */

	/* requests */
	struct client_request *requests; /* ring of UZ_CLIENT_REQUESTS_MAX */
	unsigned requests_head, nr_requests;
	unsigned queued_batch_ranges; /* ranges of queued REGISTER_BATCH copies */

	const char *leave_reason; /* for the log line when it is freed */
	bool dead;		  /* being torn down; ignore its events */
	bool gone;		  /* the process is gone (EOF): no point giving pages back */
	bool shutdown_sent;	  /* SHUTDOWN sent, waiting for SHUTDOWN_ACK */
	bool pending;		  /* has work to retry (EAGAIN) or a request waiting */
};

/*
 * The handshake, on the main thread.  client_handshake_start() takes the
 * accepted socket and waits (asynchronously, bounded by
 * UZ_HELLO_TIMEOUT_USEC) for HELLO; on a valid HELLO the client is created,
 * answered and handed to a fault thread.  Refusals are answered and logged.
 */
int client_handshake_start(struct daemon *daemon, struct sd_event *event, int fd);
/* Cancel every handshake still waiting (the daemon is stopping). */
void client_handshakes_cancel(void);

/* Set policy, watermarks (thread-owned fields: only before adopt or on the fault thread). */
void client_set_policy(struct client *client, const struct uz_policy *policy);

/*
 * Pages the daemon manages for the client: resident, stored and on disk
 * (thread-safe: read from its statistics).
 */
uint64_t client_managed_pages(const struct client *client);

/* Free a client (fds, ring, index, stats); the caller has released its pages. */
struct client *client_free(struct client *client);

/* Regions: sorted and disjoint.  -EEXIST on overlap, -E2BIG beyond the limits. */
int client_region_add(struct client *client, uint64_t start, uint64_t end);
void client_region_remove(struct client *client, uint64_t start, uint64_t end);
/* Index of the first region whose end is above addr (nr_regions if none). */
unsigned client_region_lower_bound(const struct client *client, uint64_t addr);
/* The region holding addr, or NULL. */
const struct client_region *client_region_find(const struct client *client, uint64_t addr);

/* /proc/PID/maps of a client, read once for a batch of REGISTER checks. */
struct client_maps_line {
	uint64_t start, end;
	bool anonymous; /* private, anonymous ("", [heap], [anon:...]), readable and writable */
};

struct client_maps {
	struct client_maps_line *lines; /* sorted by start */
	size_t count;
};

/* Read the client's maps.  0, -ESRCH when the process is gone, or -errno. */
int client_maps_read(const struct client *client, struct client_maps *out);
void client_maps_free(struct client_maps *maps);

/*
 * Check that [start, end) lies inside private, anonymous, writable mappings
 * of the client and, when uffd >= 0, that each of them is registered with
 * a userfaultfd (a region over memory the kernel does not send us faults
 * for would let the agent move pages out of it for good).  0, -EINVAL when
 * it is not such memory, -ENOENT when a mapping is not registered, -EAGAIN
 * when the kernel cannot tell now (a VM event is pending), -ESRCH when the
 * process is gone, or another -errno.  client_check_anon_range() reads the
 * maps itself.
 */
int client_maps_check(const struct client *client, int uffd, const struct client_maps *maps,
		      uint64_t start, uint64_t end);
int client_check_anon_range(const struct client *client, int uffd, uint64_t start, uint64_t end);

/*
 * Read which pages of [start, end) are present (or swapped by the kernel)
 * from the client's pagemap; fn is called for each such vpn.  -ENODEV when
 * there is no pagemap.
 */
int client_pagemap_present(const struct client *client, uint64_t start, uint64_t end,
			   int (*fn)(uint64_t vpn, void *userdata), void *userdata);

/*
 * Is the client's process still there with its memory (not exited, not a
 * zombie, not exec'd into a new address space)?  Unknown counts as alive: a live client's state is
 * never dropped on a guess.
 */
bool client_process_alive(const struct client *client);

/*
 * Is the client's page at vpn mapped (present, or swapped by the kernel)?
 * 1 or 0, or -errno when the pagemap cannot say (-ENODEV: none).
 */
int client_page_mapped(const struct client *client, uint64_t vpn);

/*
 * Receive one message with up to max_fds file descriptors, without
 * blocking.  Any fd beyond max_fds, a truncated message or truncated
 * control data is -EBADMSG (the fds received are closed).  Returns the
 * length, 0 on EOF, or -errno.
 */
ssize_t client_recv(int fd, void *buf, size_t cap, int *fds, unsigned *nfds, unsigned max_fds);

/* Send a whole message without blocking; -EAGAIN when the socket is full. */
int client_send(struct client *client, const void *msg, size_t size);
/* The same with one descriptor attached (SCM_RIGHTS); the caller keeps its fd. */
int client_send_fd(struct client *client, const void *msg, size_t size, int fd);
/*
 * How the client joined, for `uzswapctl clients`: "new", "resumed" (after a
 * daemon restart), "fork-shared" (a fork child sharing its parent's evicted
 * pages, UZ_HELLO_SNAPSHOT), "fork" (a fork child whose parent gave its
 * pages back first).
 */
const char *client_join_kind(const struct client *client);

/* The agent's status page, after the ring's data slots. */
static inline struct uz_ring_status *client_ring_status(const struct client *client)
{
	return (struct uz_ring_status *)(client->ring + (size_t)UZ_EVICT_BATCH_MAX * UZ_PAGE_SIZE);
}

/*
 * The registered regions as the kernel has them: every VMA of the client
 * registered with a userfaultfd for MISSING faults (smaps VmFlags "um"),
 * less the graveyard.  Used after a daemon restart, when the regions the
 * previous daemon accepted are known only to the kernel.  Replaces the
 * client's regions; -errno (-ESRCH: gone).
 */
int client_regions_from_kernel(struct client *client);

static inline bool client_in_graveyard(const struct client *client, uint64_t addr)
{
	return addr >= client->graveyard_start && addr < client->graveyard_end;
}

static inline void uz_msg_header_init(struct uz_msg_header *h, enum uz_msg_type type, uint32_t size,
				      uint32_t seq)
{
	h->magic = UZ_PROTO_MAGIC;
	h->version = UZ_PROTO_VERSION;
	h->type = (uint16_t)type;
	h->size = size;
	h->seq = seq;
}
