/* SPDX-License-Identifier: MIT */
/*
 * The compressed-object pool, in the spirit of zsmalloc, kept in memory
 * that outlives the daemon: one pool is one arena, a memfd holding the
 * compressed objects of one client process and of its fork descendants (a
 * family).  The daemon maps the arena and hands each client a read-only
 * descriptor of it (pool_open_readonly()); a daemon restarted after a kill
 * takes the arena back from such a descriptor (pool_recover()) and finds
 * every object where it was, with the same handle.
 *
 * Objects of 1..POOL_OBJECT_MAX bytes (a page, or a multi-page unit of the
 * fault threads) are rounded up to a size class and packed into chunks,
 * one per 128 KiB frame of the arena; a frame is given back to the
 * system when its last object goes.  Callers hold handles, never pointers:
 * the arena can move when it grows, and objects can be moved by compaction
 * (pool_compact_begin() marks sparse chunks, owners copy their objects out
 * with pool_migrate_copy(); the owner of a handle is the only one who may
 * rewrite it, which keeps the pool free of back-references).
 *
 * Objects are reference counted for fork sharing (pool_ref(); a shared
 * object is never moved).  What a kill of the daemon at any instruction
 * can leave behind is at worst a leaked object, never a free slot that
 * someone refers to, provided the caller keeps its side of the order:
 *   - record a handle only after pool_store() or pool_migrate_copy()
 *     returned it, and a second referrer only after pool_ref() returned;
 *   - forget a reference (persistently) before pool_release() drops it;
 *   - after pool_migrate_copy(), switch the reference to the new handle,
 *     then release the old one.
 * Leaked objects can be found after a recovery with pool_walk().
 *
 * Threads: a pool is meant for one thread at a time (the fault thread of
 * its family); a mutex per pool keeps it correct when threads share one,
 * at the cost of an uncontended lock otherwise.  pool_get_usage() and
 * struct pool_totals can be read from any thread.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* A handle fits in POOL_HANDLE_BITS bits; 0 is never a valid handle. */
#define POOL_HANDLE_BITS 42
typedef uint64_t pool_handle_t;

/* The most references one object can have (pool_ref() fails beyond). */
#define POOL_REFCOUNT_MAX 255
/* Bytes of the random family token in the arena header. */
#define POOL_TOKEN_SIZE 16

struct pool;
struct pool_totals;

struct pool_usage {
	uint64_t total_size;	 /* arena bytes in use (header page, chunks, rejected frames):
				    the kernel's pool_total_size */
	uint64_t stored_bytes;	 /* sum of the lengths of live objects (compressed bytes);
				    a shared object counts once */
	uint64_t stored_objects; /* live objects (refcount > 0), shared ones once */
	uint64_t chunks;	 /* frames holding a chunk */
	uint64_t metadata_bytes; /* heap bytes of the in-memory bookkeeping (not in total_size) */
	uint64_t arena_metadata_bytes; /* arena bytes of the arena header page, frame headers
					  and per-slot metadata (part of total_size) */
};

/* What pool_recover() found in an arena. */
struct pool_recover_report {
	uint64_t objects;	  /* live objects (refcount > 0), leaked ones included */
	uint64_t references;	  /* sum of their reference counts */
	uint64_t bytes;		  /* sum of their lengths */
	uint64_t frames;	  /* frames holding live objects, taken back as chunks */
	uint64_t frames_freed;	  /* frames with data but no live object, given back */
	uint64_t frames_rejected; /* frames whose header or metadata is inconsistent: kept
				     out of use, never allocated from, their objects lost */
};

/*
 * Gauges shared by every pool of a daemon: each pool adds its changes to
 * the totals it was created with, so the sum over all pools can be read
 * without walking them.  The totals must outlive their pools.
 */
int pool_totals_new(struct pool_totals **out);
struct pool_totals *pool_totals_free(struct pool_totals *totals);
void pool_totals_get(struct pool_totals *totals, struct pool_usage *usage);

/* A new, empty arena (a memfd of mode 0600) and its pool.  totals may be NULL. */
int pool_new(struct pool **out, struct pool_totals *totals);
/*
 * Test hook: the same with an arena of layout `version` (1: objects up to
 * a page, as daemons before multi-page units made; 2: the current one),
 * to check that a daemon takes an older arena back.  -EINVAL: unknown.
 */
int pool_new_layout(struct pool **out, struct pool_totals *totals, unsigned version);

/*
 * Takes an arena back after the daemon that made it was killed: fd is any
 * descriptor of it (a client's read-only one will do; it is not consumed,
 * the pool opens its own).  The file must be a memfd of ours (owned by
 * geteuid(), mode 0600, arena header of this layout), and not in use by
 * another pool (-EBUSY).  Every in-memory structure is rebuilt from what the
 * arena says; report (may be NULL) says what was found.  -EINVAL: not an
 * arena; -EPERM: wrong owner or mode.
 */
int pool_recover(struct pool **out, int fd, struct pool_totals *totals,
		 struct pool_recover_report *report);

/* Unmaps and closes the daemon's side; never writes the arena, whose memory
 * lives on as long as a client holds a descriptor. */
struct pool *pool_free(struct pool *pool);

/* A new O_RDONLY|O_CLOEXEC descriptor of the arena, for a client; or -errno. */
int pool_open_readonly(struct pool *pool);
/* The arena's random family token. */
void pool_token(struct pool *pool, uint8_t out[POOL_TOKEN_SIZE]);

/* The largest object an arena of the current layout holds (a unit of four pages). */
#define POOL_OBJECT_MAX 16384U

/*
 * Copy len (1..pool_object_max()) bytes into a new object (refcount 1).
 * -ENOMEM when no frame can be had, -EINVAL for a bad length.
 */
int pool_store(struct pool *pool, const void *data, size_t len, pool_handle_t *out);
/* Copy the object out; len must be the length it was stored with.  -EINVAL on a bad handle. */
int pool_load(struct pool *pool, pool_handle_t handle, void *dst, size_t len);
/* One more reference.  -EOVERFLOW at POOL_REFCOUNT_MAX, -EINVAL on a bad handle. */
int pool_ref(struct pool *pool, pool_handle_t handle);
/* The object's reference count (> 0), or -EINVAL. */
int pool_refcount(struct pool *pool, pool_handle_t handle);
/* Drops one reference; the object is freed at 0.  -EINVAL on a bad handle. */
int pool_release(struct pool *pool, pool_handle_t handle);

/* The largest object this pool takes: POOL_OBJECT_MAX, or a page for an arena of layout 1. */
size_t pool_object_max(const struct pool *pool);

void pool_get_usage(struct pool *pool, struct pool_usage *usage);

/*
 * Calls fn for every live object, in arena order, until it returns
 * non-zero (which pool_walk() returns); 0 when all were seen.  fn runs
 * without the pool's lock and may call the pool (release the object it was
 * given, for instance); objects stored meanwhile may or may not be seen.
 */
typedef int (*pool_walk_fn)(pool_handle_t handle, size_t len, unsigned refcount, void *userdata);
int pool_walk(struct pool *pool, pool_walk_fn fn, void *userdata);

/*
 * Compaction.  pool_compact_begin() puts back chunks an earlier pass left
 * marked, then marks chunks whose fill is below min_fill_percent for
 * evacuation (no new objects go there); a class only gives up as many
 * sparse chunks as its other chunks can absorb, and never one holding a
 * shared object.  Returns the number of chunks marked, or -errno.
 * pool_handle_evacuating() tells an owner that its object should move (never
 * true for a shared one); pool_migrate_copy() copies it to a chunk that is
 * not evacuating and returns the new handle, leaving the old object in
 * place: the caller switches its reference, then pool_release()s the old
 * handle, and the chunk goes when its last object has.  -EBUSY for a shared
 * object, -EINVAL for a bad handle or length, -ENOMEM.
 */
int pool_compact_begin(struct pool *pool, unsigned min_fill_percent);
bool pool_handle_evacuating(struct pool *pool, pool_handle_t handle);
int pool_migrate_copy(struct pool *pool, pool_handle_t handle, size_t len, pool_handle_t *out);

/*
 * Test hook: let `after` more frame allocations succeed, then fail them as
 * if memory had run out (stores then return -ENOMEM); negative restores
 * normal allocation.
 */
void pool_inject_map_failures(struct pool *pool, int64_t after);

/*
 * Test hook: let `after` more of the pool's ordered arena writes happen,
 * then SIGKILL the process at the next one, as a kill at that instruction
 * would; negative disarms.  Recovery tests run it in a child process.
 */
void pool_inject_crash(struct pool *pool, int64_t after);
