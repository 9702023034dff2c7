/* SPDX-License-Identifier: MIT */
/*
 * Inside the swap module: the structures swapfile.c (slots, records,
 * metadata, requests) shares with its I/O backends, and the interface a
 * backend implements.  Nothing outside daemon/swap includes this.
 *
 * A backend moves the bytes of requests between bounce buffers and the
 * place records live: the local file through io_uring (swapfile.c, the
 * "file" backend) or an NBD export through libnbd (nbd.c).  Everything
 * else -- slot allocation, the metadata region that survives the daemon,
 * the record format and its checksum, the owner table, batching of
 * adjacent records into one request, fault injection -- is the same for
 * both, in swapfile.c.  A backend sees requests (struct swap_req: an
 * offset in the data region, a buffer, a length, read or write), takes
 * them from the swap_io's backlog, and hands each completion to
 * swap_req_complete() (bytes moved, or -errno), from inside reap or wait,
 * on the swap_io's thread.
 *
 * Writes whose fate is unknown (the connection died with the write sent:
 * the server may still apply it) complete with SWAP_RESULT_UNCERTAIN; the
 * slot of such a record is not freed but handed to backend->quarantine,
 * which keeps it allocated until no late write can land in it (NBD: until
 * the next connection is up).  Otherwise a later record in the same slot
 * could be overwritten by the old one.
 */
#pragma once

#include <liburing.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#include "swap/swapfile.h"

#define SWAP_STRIPES  64u
#define CLUSTER_NONE  UINT32_MAX
#define RECORD_HEADER SWAP_RECORD_HEADER_SIZE
/* A write that may or may not have reached the far end. */
#define SWAP_RESULT_UNCERTAIN (-ENOTCONN)

struct latency_hist;
struct swap_super;
struct swap_owner_disk;
struct swap_io;
struct swap_req;

struct swap_backend_ops {
	const char *name;
	/* Per-thread state of a new swap_io (io->link); -errno. */
	int (*io_init)(struct swap_io *io);
	/* Every request has finished or been given up: free io->link. */
	void (*io_fini)(struct swap_io *io);
	/* The fd the owner polls (readable: call reap). */
	int (*io_fd)(const struct swap_io *io);
	/* Hand the backlog on (what cannot go now stays there); -errno. */
	int (*flush)(struct swap_io *io);
	/* Completions, without blocking: callbacks run.  Requests finished, or -errno. */
	int (*reap)(struct swap_io *io);
	/* Block until something happened (a completion, a timeout), then reap. */
	int (*wait)(struct swap_io *io);
	/* 0, or -ENOTCONN when writes would be refused now (NULL: always 0). */
	int (*writable)(const struct swap_io *io);
	/* Keep slot allocated until no uncertain write can land in it (NULL: free it). */
	void (*quarantine)(struct swap_io *io, uint64_t slot);
};

/* --- in memory --------------------------------------------------------------- */

enum cluster_list {
	LIST_NONE = 0, /* owned, or full */
	LIST_FREE,
	LIST_PARTIAL,
	LIST_FRAGMENTED,
	LIST__COUNT,
};

struct swap_cluster {
	uint16_t used; /* granules allocated; stripe lock */
	uint8_t list;  /* enum cluster_list; swap->lock to write, atomic to read */
	uint8_t owned; /* a swap_io allocates here; swap->lock to write, atomic to read */
	uint32_t prev; /* list links; swap->lock */
	uint32_t next;
};

struct cluster_list_head {
	uint32_t head;
	uint64_t count;
};

struct swap {
	int fd; /* the file (file backend), or the local metadata file (NBD backend) */
	const struct swap_backend_ops *backend;
	char *uri;	       /* NBD: the export's URI (libnbd syntax) */
	unsigned timeout_ms;   /* NBD: reads not done in this time fail with -ETIMEDOUT */
	unsigned max_inflight; /* NBD: requests handed to libnbd at once, per swap_io */
	uint64_t export_size;  /* NBD: bytes of the export when it was opened */
	struct latency_hist *read_latency; /* submission to completion, every backend */
	struct latency_hist *write_latency;
	struct swap_info info;
	unsigned granules_per_cluster;
	unsigned object_granules_max; /* granules of the record of a SWAP_OBJECT_MAX object */
	unsigned ring_entries;
	unsigned io_align; /* O_DIRECT: alignment of offsets, lengths and buffers; 1 buffered */
	unsigned nr_ios;   /* swap_io objects alive; atomic */

	/* The metadata region, MAP_SHARED (see the top of the file). */
	void *meta;
	size_t meta_size;
	struct swap_super *super;
	struct swap_owner_disk *owners; /* info.owner_capacity entries; owners_lock */
	uint64_t *maps;			/* 2 words per cluster; stripe lock to write, atomic */
	uint8_t *refs;			/* per granule; stripe lock to write, atomic */

	pthread_mutex_t lock;
	struct cluster_list_head lists[LIST__COUNT];
	uint64_t fresh_next; /* clusters from here on were never used: free */
	struct swap_cluster *clusters;
	pthread_mutex_t stripes[SWAP_STRIPES];
	pthread_mutex_t owners_lock;

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
	uint64_t submit_ns;   /* CLOCK_MONOTONIC when swap_io_read/write took it */
	uint64_t deadline_ns; /* reads: fail with -ETIMEDOUT after this (NBD); 0 none */
	/* NBD backend: requests handed to libnbd (see nbd.c) */
	struct swap_req *link_prev, *link_next;
	bool link_sent;	       /* libnbd owns buffer until link_done */
	bool link_done;	       /* its completion callback ran */
	bool link_lost;	       /* the connection went away under it */
	int link_error;	       /* errno from the completion callback */
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
	uint64_t owner;
	void *dst;
	swap_read_cb read_cb;
	void *userdata;
};

struct swap_io {
	struct swap *swap;
	void *link; /* the backend's per-thread state (NBD: struct nbd_link) */
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

/* swapfile.c, for backends (the swap_io's thread). */
void swap_backlog_push(struct swap_io *io, struct swap_req *req);
/* The oldest backlogged request, unlinked; NULL when none. */
struct swap_req *swap_backlog_pop(struct swap_io *io);
/* Put req back at the head of the backlog (it could not go now). */
void swap_backlog_unpop(struct swap_io *io, struct swap_req *req);
/*
 * A transfer of req ended: res bytes moved or -errno.  Finishes it (the
 * caller's callback runs and req is recycled: 1) or, after a short
 * transfer, backlogs the rest (0).
 */
int swap_req_complete(struct swap_io *io, struct swap_req *req, int res);
/* Answer req's caller with result (< 0) but keep req (its buffer is still lent out). */
void swap_req_answer(struct swap_io *io, struct swap_req *req, int result);
/* Recycle a request answered with swap_req_answer(). */
void swap_req_release(struct swap_io *io, struct swap_req *req);
uint64_t swap_now_nsec(void);

extern const struct swap_backend_ops swap_backend_file;
#ifdef UZSWAP_HAVE_NBD
extern const struct swap_backend_ops swap_backend_nbd;
/*
 * Connect to uri once (at most timeout_ms), read the export's size and
 * let go.  -errno with a message in err (libnbd's own words).
 */
int swap_nbd_probe(const char *uri, unsigned timeout_ms, uint64_t *size, char *err, size_t errlen);
#endif
