/* SPDX-License-Identifier: MIT */
/*
 * The swap file: where the shrinker writes stale compressed pages and
 * where faults read them back from.  A preallocated file of fixed size,
 * carved into clusters (64 KiB) of granules (512 B); a compressed object
 * of 1..4096 bytes takes the fewest whole granules that hold it, so disk
 * usage shrinks with the compression ratio.  Each I/O thread owns a
 * struct swap_io: an io_uring ring whose completions are announced on an
 * eventfd, and a current cluster it allocates from without contending
 * with other threads.  The design is written up at the top of swapfile.c
 * and in docs/SWAP.md.
 *
 * Thread safety: struct swap is shared by every thread; a struct swap_io
 * belongs to one thread at a time (its callbacks run on that thread,
 * inside swap_io_reap() or a synchronous helper).  swap_slot_free() may be
 * called from any thread.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define SWAP_DEFAULT_PATH "/var/lib/uzswap/swapfile"

/* A slot names one object in the file and fits in a 44-bit page-entry payload. */
#define SWAP_SLOT_BITS	44
#define SWAP_OBJECT_MAX 4096 /* largest object: one uncompressed page */

struct swap;
struct swap_io;

enum swap_flags {
	SWAP_FLAG_BUFFERED = 1u << 0, /* never use O_DIRECT, even where the filesystem allows it */
};

struct swap_config {
	const char *path;      /* NULL: SWAP_DEFAULT_PATH; its directory is created if missing */
	uint64_t size;	       /* bytes; rounded down to whole clusters; at least one cluster */
	unsigned flags;	       /* enum swap_flags */
	unsigned granule_size; /* 0: 512; a power of two, 512..4096 */
	unsigned ring_entries; /* 0: 64; submission queue size of each swap_io ring */
};

/* What swap_new() found and chose. */
struct swap_info {
	bool direct_io;		   /* O_DIRECT in use; false: buffered I/O (page cache) */
	unsigned dio_mem_align;	   /* buffer alignment O_DIRECT needs (0 when buffered) */
	unsigned dio_offset_align; /* offset/length alignment O_DIRECT needs (0 when buffered) */
	unsigned granule_size;	   /* allocation unit, bytes */
	unsigned cluster_size;	   /* bytes per cluster */
	uint64_t clusters;	   /* clusters in the file */
	uint64_t file_size;	   /* bytes in use: clusters * cluster_size */
};

/*
 * Where the space is.  Computed by walking the clusters: meant for the
 * statistics endpoint, not for hot paths.
 */
struct swap_usage {
	uint64_t file_size;	     /* bytes of the file */
	uint64_t used_bytes;	     /* bytes of granules holding live objects */
	uint64_t free_bytes;	     /* bytes of free granules, everywhere */
	uint64_t free_cluster_bytes; /* part of free_bytes in wholly free clusters */
	uint64_t partial_bytes;	     /* part of free_bytes in clusters with room for 4 KiB */
	uint64_t fragmented_bytes;   /* part of free_bytes in clusters with no room for 4 KiB */
	uint64_t owned_free_bytes;   /* part of free_bytes in clusters owned by a swap_io */
	uint64_t clusters_in_use;    /* clusters with at least one live object */
	uint64_t slots_in_use;	     /* live objects */
	/* Disk bytes per stored page, times 1000: 1000 * used_bytes / slots_in_use. */
	uint64_t bytes_per_slot_milli;
};

/* Counters, summed over every swap_io of a swap.  Gauges are marked. */
struct swap_stats {
	uint64_t bytes_written; /* bytes the file accepted from completed writes (granule-padded) */
	uint64_t bytes_read;	/* bytes read from the file by completed reads */
	uint64_t writes;	/* objects written successfully */
	uint64_t reads;		/* objects read successfully */
	uint64_t write_batches; /* swap_io_write() calls accepted */
	uint64_t write_ios;	/* write requests submitted (one per contiguous run of a batch) */
	uint64_t read_ios;	/* read requests submitted */
	uint64_t short_ios; /* completions that moved fewer bytes than asked: rest resubmitted */
	uint64_t io_errors; /* objects whose read or write failed */
	uint64_t alloc_failures;  /* allocations refused with -ENOSPC */
	uint64_t injected_faults; /* completions altered by fault injection */
	uint64_t slots_in_use;	  /* gauge: live objects */
	uint64_t bytes_on_disk;	  /* gauge: bytes of granules held by live objects */
};

/*
 * Create (or resize) and preallocate the file, probe O_DIRECT.  Errors:
 * -EINVAL bad config (size below one cluster, granule not a power of two
 * in range, path not a regular file); -EOPNOTSUPP the filesystem cannot
 * preallocate (fallocate); -ENOSPC no room for the file; other -errno
 * from mkdir/open.
 */
int swap_new(struct swap **out, const struct swap_config *config);
/* Close the file.  Every swap_io must have been freed.  Accepts NULL; returns NULL. */
struct swap *swap_free(struct swap *swap);

void swap_get_info(const struct swap *swap, struct swap_info *info);
void swap_get_usage(struct swap *swap, struct swap_usage *usage);
void swap_get_stats(const struct swap *swap, struct swap_stats *stats);

/*
 * Fault injection for tests.  Each I/O request of a kind named in `what`
 * is altered with probability percent/100 (100: every one), until
 * `count` requests have been altered (0: no limit).  A failed request
 * completes with -EIO (the transfer itself did happen); a short one is
 * really sent with half its length (aligned), so the module must resubmit
 * the rest as for any short transfer.  A request is altered at most once.
 * what = 0 switches injection off.
 */
enum swap_fault {
	SWAP_FAIL_WRITE = 1u << 0,
	SWAP_FAIL_READ = 1u << 1,
	SWAP_SHORT_WRITE = 1u << 2,
	SWAP_SHORT_READ = 1u << 3,
};
void swap_set_fault_injection(struct swap *swap, unsigned what, unsigned percent, uint64_t count);

/*
 * Slots.  swap_slot_alloc() takes space for an object of len bytes
 * (1..SWAP_OBJECT_MAX) from the swap_io's current cluster; -ENOSPC when
 * the file has no room, -EINVAL on a bad length.  swap_io_write() allocates
 * by itself; this is for callers that manage I/O some other way (tests).
 * swap_slot_free() gives the space back (any thread); -EINVAL when the
 * slot is not allocated.  The caller must not free a slot whose write or
 * read is in flight.
 */
int swap_slot_alloc(struct swap_io *io, size_t len, uint64_t *slot_out);
int swap_slot_free(struct swap *swap, uint64_t slot);
/* Bytes of disk a slot holds (whole granules). */
size_t swap_slot_disk_bytes(const struct swap *swap, uint64_t slot);

/* Per-thread I/O context: a ring, its eventfd, a current cluster. */
int swap_io_new(struct swap_io **out, struct swap *swap);
/* Wait for every request in flight (their callbacks run), give the cluster back.  NULL ok. */
struct swap_io *swap_io_free(struct swap_io *io);

/* An eventfd that becomes readable when completions wait; call swap_io_reap() then. */
int swap_io_fd(const struct swap_io *io);
/* Requests submitted and not yet completed. */
size_t swap_io_inflight(const struct swap_io *io);

/*
 * Process every completion available without blocking: callbacks run here.
 * Returns the number of requests finished, or -errno.
 */
int swap_io_reap(struct swap_io *io);
/* Block until at least one request finishes (if any is in flight), then reap. */
int swap_io_wait(struct swap_io *io);

/*
 * Writeback of a batch.  For each object the caller sets data and len;
 * swap_io_write() allocates slots for all of them (all or nothing:
 * -ENOSPC and no slot taken when the file is full), sets objs[i].slot,
 * copies the bytes into aligned buffers (data may be reused at once),
 * coalesces objects that landed next to each other into one request per
 * run, and submits.  When every request of the batch has completed, cb
 * runs (on this thread, from reap) with result 0 or the first error;
 * objs[i].result is 0 or -errno per object, and the slot of a failed
 * object has already been freed.  objs must stay valid until cb runs.
 */
struct swap_object {
	const void *data; /* in: the compressed bytes */
	size_t len;	  /* in: 1..SWAP_OBJECT_MAX */
	uint64_t slot;	  /* out: where it was put */
	int result;	  /* out (in cb): 0 or -errno */
};
typedef void (*swap_write_cb)(struct swap_object *objs, size_t count, int result, void *userdata);
int swap_io_write(struct swap_io *io, struct swap_object *objs, size_t count, swap_write_cb cb,
		  void *userdata);

/*
 * Read an object back.  len must be the length it was written with.  When
 * dst is not NULL the bytes are copied there before cb runs; with dst NULL
 * cb gets a pointer to an internal buffer valid only during the callback
 * (decompress straight from it).  cb gets result 0 or -errno (-EIO after
 * a read error).  Does not block.
 */
typedef void (*swap_read_cb)(int result, const void *data, size_t len, void *userdata);
int swap_io_read(struct swap_io *io, uint64_t slot, size_t len, void *dst, swap_read_cb cb,
		 void *userdata);

/*
 * Synchronous helpers for tests and shutdown: submit, then wait for that
 * request (other completions of this swap_io are processed meanwhile).
 * Return 0 or the I/O's -errno; write fills objs[i].slot and .result.
 */
int swap_io_write_sync(struct swap_io *io, struct swap_object *objs, size_t count);
int swap_io_read_sync(struct swap_io *io, uint64_t slot, size_t len, void *dst);
