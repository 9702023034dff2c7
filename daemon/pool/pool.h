/* SPDX-License-Identifier: MIT */
/*
 * The compressed-object pool, in the spirit of zsmalloc: objects of 1..4096
 * bytes are rounded up to a size class and packed into chunks (one mmap
 * each, several pages); a chunk is returned to the OS when its last object
 * is freed.  Callers hold handles, never pointers, so objects can be moved:
 * compaction marks sparse chunks for evacuation and owners move their
 * objects out with pool_migrate() (the owner of a handle is the only one
 * who may rewrite it, which keeps the pool free of back-references).
 *
 * Thread-safe: one lock per size class, never held across a system call
 * except the mmap/munmap of a chunk.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* A handle fits in POOL_HANDLE_BITS bits; 0 is never a valid handle. */
#define POOL_HANDLE_BITS 44
typedef uint64_t pool_handle_t;

struct pool;

struct pool_usage {
	uint64_t total_size;     /* bytes of chunks mapped: the kernel's pool_total_size */
	uint64_t stored_bytes;   /* sum of the lengths of live objects (compressed bytes) */
	uint64_t stored_objects; /* live objects */
	uint64_t chunks;         /* chunks mapped */
	uint64_t metadata_bytes; /* heap bytes of the pool's own bookkeeping (not in total_size) */
};

int pool_new(struct pool **out);
struct pool *pool_free(struct pool *pool);

/* Copy len (1..4096) bytes into a new object.  -ENOMEM when no chunk can be had. */
int pool_store(struct pool *pool, const void *data, size_t len, pool_handle_t *out);
/* Copy the object out; len must be the length it was stored with.  -EINVAL on a bad handle. */
int pool_load(struct pool *pool, pool_handle_t handle, void *dst, size_t len);
void pool_release(struct pool *pool, pool_handle_t handle);

void pool_get_usage(struct pool *pool, struct pool_usage *usage);

/*
 * Compaction.  pool_compact_begin() marks chunks whose fill is below
 * min_fill_percent for evacuation (no new objects go there).
 * pool_handle_evacuating() tells an owner that its object should move;
 * pool_migrate() moves it and returns the new handle.  A chunk is unmapped
 * when its last object leaves.
 */
/*
 * A class only gives up as many sparse chunks as its other chunks can
 * absorb, so migration needs no new chunk (unless stores race it).  Returns the number of chunks
 * marked, or -errno.
 */
int pool_compact_begin(struct pool *pool, unsigned min_fill_percent);
bool pool_handle_evacuating(struct pool *pool, pool_handle_t handle);
int pool_migrate(struct pool *pool, pool_handle_t handle, size_t len, pool_handle_t *out);

/*
 * Test hook: let `after` more chunk mappings succeed, then fail them as if
 * mmap had (stores then return -ENOMEM); negative restores normal mapping.
 */
void pool_inject_map_failures(struct pool *pool, int64_t after);
