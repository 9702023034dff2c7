/* SPDX-License-Identifier: MIT */
/*
 * The client <-> daemon wire protocol (docs/PROTOCOL.md tells the story).
 *
 * One SOCK_SEQPACKET unix connection per client process: message
 * boundaries are kept and file descriptors travel with SCM_RIGHTS.  Every
 * message starts with struct uz_msg_header; `size` is the whole message.
 * The daemon treats everything it receives as untrusted: magic, version,
 * type, exact size for the type, counts against the size, addresses
 * against the client's own ranges.
 *
 * Requests a client thread sends (HELLO, REGISTER, UNREGISTER,
 * FORK_PREPARE, STATS, HINT) are answered with a reply carrying the
 * request's seq.  EVICT and SHUTDOWN are requests from the daemon to the
 * client's agent thread, answered by EVICT_DONE and SHUTDOWN_ACK.
 */
#pragma once

#include <stdint.h>

#define UZ_PROTO_MAGIC 0x77737a75u /* "uzsw" little-endian */
#define UZ_PROTO_VERSION 2 /* 2: REGISTER_BATCH, ranges must be registered with the uffd */
#define UZ_MSG_SIZE_MAX 8192
#define UZ_EVICT_BATCH_MAX 512 /* pages per eviction batch = graveyard and ring size */

enum uz_msg_type {
	UZ_MSG_HELLO = 1,       /* c->d, SCM_RIGHTS: uffd, then optionally its /proc/self/pagemap */
	UZ_MSG_HELLO_REPLY,     /* d->c, SCM_RIGHTS: ring memfd (on success) */
	UZ_MSG_REGISTER,        /* c->d: a range was registered with the uffd */
	UZ_MSG_UNREGISTER,      /* c->d: give back every evicted page in range, forget it */
	UZ_MSG_REPLY,           /* d->c: answer to REGISTER/UNREGISTER/FORK_PREPARE/HINT */
	UZ_MSG_EVICT,           /* d->c: move these pages out, copy them to the ring */
	UZ_MSG_EVICT_DONE,      /* c->d: per-page result of an EVICT */
	UZ_MSG_FORK_PREPARE,    /* c->d: give every page back, pause eviction, then reply */
	UZ_MSG_FORK_DONE,       /* c->d: the fork is over, eviction may resume (no reply) */
	UZ_MSG_SHUTDOWN,        /* d->c: every page is back; unregister everything and ack */
	UZ_MSG_SHUTDOWN_ACK,    /* c->d */
	UZ_MSG_STATS,           /* c->d */
	UZ_MSG_STATS_REPLY,     /* d->c */
	UZ_MSG_HINT,            /* c->d: advice on a range */
	UZ_MSG_REGISTER_BATCH,  /* c->d: many ranges registered with the uffd, one status each */
	UZ_MSG_REGISTER_BATCH_REPLY, /* d->c */
	UZ_MSG__MAX
};

struct uz_msg_header {
	uint32_t magic;
	uint16_t version;
	uint16_t type;
	uint32_t size; /* of the whole message, header included */
	uint32_t seq;  /* chosen by the requester, echoed in the answer */
};

#define UZ_HELLO_HAS_PAGEMAP (1u << 0) /* a pagemap fd follows the uffd */
#define UZ_HELLO_FORK_CHILD (1u << 1)  /* this process is the child of a managed fork */
/*
 * Re-joining after the daemon was lost: the client kept its uffd, its
 * store, its ring and its arena, and passes them after the uffd (and
 * pagemap): fds [uffd, pagemap?, store, ring, arena].  The daemon takes its
 * state back from them (docs/ARCHITECTURE.md, "State that outlives the
 * daemon") or refuses, and the client then fails closed.
 */
#define UZ_HELLO_RESUME (1u << 2)
/*
 * A fork child joining with the snapshot its parent's FORK_PREPARE got:
 * fds [uffd, pagemap?, snapshot store, arena] (the arena is the family's,
 * inherited).  The child's evicted pages (holes inherited from the parent)
 * are served from the entries it shares with its parent.
 */
#define UZ_HELLO_SNAPSHOT (1u << 3)

struct uz_msg_hello {
	struct uz_msg_header header;
	uint64_t uffd_features;   /* features UFFDIO_API granted on the passed uffd */
	uint64_t graveyard_start; /* UZ_EVICT_BATCH_MAX pages, registered, private anonymous */
	uint64_t graveyard_len;
	uint32_t page_size;
	uint32_t flags;
	char comm[16]; /* for display only */
};

#define UZ_HELLO_REPLY_RESUMED (1u << 0) /* the state of a UZ_HELLO_RESUME was taken back */

/*
 * SCM_RIGHTS on success of a fresh join: [ring, store, arena].  The ring
 * is UZ_RING_PAGES pages (data slots, then the agent's status page); the
 * store (common/store-layout.h) and the arena of its compressed pages
 * (daemon/pool) are read-only for the client, which keeps all three for
 * as long as it is managed.  A resumed join passes no fds.
 */
struct uz_msg_hello_reply {
	struct uz_msg_header header;
	int32_t status; /* 0 or -errno: refused (limits, bad hello) */
	uint32_t batch_max; /* pages in the ring */
	uint64_t ring_size; /* bytes of the ring memfd */
	uint64_t client_id;
	uint32_t flags; /* UZ_HELLO_REPLY_* */
	uint32_t reserved;
};

#define UZ_REGISTER_POPULATED (1u << 0) /* pages may be present already (fork child, late join) */

struct uz_msg_range {
	struct uz_msg_header header; /* REGISTER, UNREGISTER */
	uint64_t start;              /* page aligned */
	uint64_t len;                /* page aligned, > 0 */
	uint32_t flags;
	uint32_t reserved;
};

/*
 * REGISTER_BATCH: up to UZ_REGISTER_BATCH_MAX ranges, sorted by start and
 * disjoint, each already registered with the uffd.  A part of a range the
 * daemon already holds is not an error: it adds what it lacks.  The reply
 * has one status per range: 0 (the whole range is registered now), or
 * -errno; -EEXIST says the daemon holds part of the range and refused the
 * rest, any other error that it holds none of it (so the library may
 * UFFDIO_UNREGISTER the range without stranding evicted pages).
 */
#define UZ_REGISTER_BATCH_MAX 256

struct uz_register_range {
	uint64_t start; /* page aligned */
	uint64_t len;   /* page aligned, > 0 */
};

struct uz_msg_register_batch {
	struct uz_msg_header header;
	uint32_t count; /* 1..UZ_REGISTER_BATCH_MAX; size = offsetof(ranges) + 16 * count */
	uint32_t flags; /* UZ_REGISTER_POPULATED */
	struct uz_register_range ranges[];
};

struct uz_msg_register_batch_reply {
	struct uz_msg_header header; /* seq = the request's */
	uint32_t count;              /* the request's */
	uint32_t reserved;
	int32_t status[];
};

enum uz_hint {
	UZ_HINT_COLD = 1, /* evict this range soon */
	UZ_HINT_HOT = 2,  /* bring it back and keep it */
};

struct uz_msg_hint {
	struct uz_msg_header header;
	uint64_t start;
	uint64_t len;
	uint32_t hint;
	uint32_t reserved;
};

/*
 * REPLY flags.  UZ_REPLY_SNAPSHOT: a FORK_PREPARE answered with the fork
 * child's snapshot (SCM_RIGHTS: a read-only store holding the parent's
 * entries, shared with it by reference count) instead of every page given
 * back; the child joins with it (UZ_HELLO_SNAPSHOT).
 */
#define UZ_REPLY_SNAPSHOT (1u << 0)

struct uz_msg_reply {
	struct uz_msg_header header; /* seq = the request's */
	int32_t status;              /* 0 or -errno */
	uint32_t flags;		     /* UZ_REPLY_* */
};

/* FORK_DONE: the fork is over (no reply). */
struct uz_msg_fork_done {
	struct uz_msg_header header;
	int32_t child_pid; /* the child, -1 when fork failed, 0 when not known */
	uint32_t reserved;
};

struct uz_msg_evict {
	struct uz_msg_header header;
	uint32_t batch;
	uint32_t count; /* 1..UZ_EVICT_BATCH_MAX; size = offsetof(addrs) + 8 * count */
	uint64_t addrs[];
};

struct uz_msg_evict_done {
	struct uz_msg_header header;
	uint32_t batch;
	uint32_t count;   /* must equal the EVICT's count */
	int32_t status[]; /* per page: 0 moved and copied to ring slot i, else -errno */
};

struct uz_msg_stats_reply {
	struct uz_msg_header header;
	uint64_t registered_bytes;
	uint64_t resident_pages;
	uint64_t stored_pages;
	uint64_t same_filled_pages;
	uint64_t on_disk_pages;
	uint64_t compressed_bytes;
	uint64_t faults;
	uint64_t zswpin;
	uint64_t zswpout;
};
