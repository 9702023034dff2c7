/* SPDX-License-Identifier: MIT */
/*
 * The swap file: where the shrinker writes stale compressed pages and
 * where faults read them back from.  A preallocated file of fixed size:
 * a metadata region at its start (superblock, owner table, granule maps,
 * reference counts; mapped MAP_SHARED, so it outlives the daemon) and a
 * data region carved into clusters (64 KiB) of granules (512 B).  A
 * compressed object of 1..4096 bytes is written as a record (a checksummed
 * header naming its owner, then the bytes) in the fewest whole granules
 * that hold it, so disk usage shrinks with the compression ratio.  Each
 * I/O thread owns a struct swap_io: an io_uring ring whose completions are
 * announced on an eventfd, and a current cluster it allocates from
 * without contending with other threads.  The design is written up at the
 * top of swapfile.c and in docs/SWAP.md.
 *
 * Backends.  Where the data region lives is the backend's business: the
 * local file (io_uring, the default) or an NBD export (libnbd, nbd.c: the
 * far-memory tier), chosen by swap_config.backend.  Slots, records,
 * checksums, the owner table and the metadata region that outlives the
 * daemon are the same on both; with NBD the metadata region is a small
 * local file (swap_config.path) and the export holds only records, its
 * size fixing the number of slots.  The callers (daemon/fault/writeback.c)
 * do not know which one they talk to, except that a far backend may
 * refuse writes for a while (-ENOTCONN from swap_io_write: the server is
 * down, nothing was taken) and fail reads with -ETIMEDOUT.
 *
 * What survives.  Which slots are allocated, their reference counts and
 * the owner table survive a kill of the daemon at any instruction: a new
 * swap_new() on the same file during the same boot recovers them (at worst
 * a few slots leak: allocated, nobody referring).  That holds only if the
 * caller keeps two rules about its own references to slots (for example
 * page entries in memory that outlives the daemon):
 *   - publish a reference only after the call that counts it returned
 *     (swap_io_write's callback, swap_slot_ref);
 *   - withdraw a reference before the call that uncounts it
 *     (swap_slot_free).
 *
 * Thread safety: struct swap is shared by every thread; a struct swap_io
 * belongs to one thread at a time (its callbacks run on that thread,
 * inside swap_io_reap() or a synchronous helper).  swap_slot_free(),
 * swap_slot_ref(), swap_slot_refcount() and the swap_owner_*() functions
 * may be called from any thread.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#define SWAP_DEFAULT_PATH "/var/lib/uzswap/swapfile"

/*
 * A slot names one record in the file and fits in a 44-bit page-entry
 * payload: (first granule << SWAP_SLOT_SIZE_BITS) | (granules - 1).
 */
#define SWAP_SLOT_BITS		44
#define SWAP_SLOT_SIZE_BITS	4
#define SWAP_OBJECT_MAX		4096 /* largest object: one uncompressed page */
#define SWAP_RECORD_HEADER_SIZE 32   /* bytes a record adds before the object */
#define SWAP_REF_MAX		255  /* references a slot can hold (a u8 on disk) */
#define SWAP_OWNERS_DEFAULT	1024 /* owner table entries when the config says 0 */
#define SWAP_OWNERS_MAX		65536

struct swap;
struct swap_io;

enum swap_flags {
	SWAP_FLAG_BUFFERED = 1u << 0, /* never use O_DIRECT, even where the filesystem allows it */
};

enum swap_backend_kind {
	SWAP_BACKEND_FILE = 0, /* the local file, io_uring */
	SWAP_BACKEND_NBD,      /* an NBD export, libnbd (far memory) */
};

#define SWAP_NBD_TIMEOUT_DEFAULT_MS 5000 /* a far read not done in this time fails */

struct swap_config {
	/*
	 * NULL: SWAP_DEFAULT_PATH; its directory is created if missing.  With
	 * SWAP_BACKEND_NBD: the local metadata file (slot maps, counts,
	 * owners), sized for the export.
	 */
	const char *path;
	enum swap_backend_kind backend;
	/*
	 * NBD: the export, in libnbd's URI syntax (nbd://host[:port]/export,
	 * nbd+unix:///export?socket=PATH, nbds://... with TLS, e.g.
	 * ?tls-psk-file=PATH).  size is ignored: the export's size decides.
	 */
	const char *uri;
	/*
	 * NBD: a read not completed in this many ms fails with -ETIMEDOUT and
	 * the connection is dropped and made again; it bounds the connect at
	 * swap_new() too.  0: SWAP_NBD_TIMEOUT_DEFAULT_MS.
	 */
	unsigned timeout_ms;
	/* NULL or room for a message saying why swap_new() failed (libnbd's words for NBD). */
	char *errbuf;
	size_t errlen;
	/* Bytes of the whole file (metadata included); rounded down to whole
	 * clusters; must leave at least one data cluster after the metadata. */
	uint64_t size;
	unsigned flags;	       /* enum swap_flags */
	unsigned granule_size; /* 0: 512; a power of two, 512..4096 */
	unsigned ring_entries; /* 0: 64; submission queue size of each swap_io ring */
	unsigned
	    owner_capacity; /* 0: SWAP_OWNERS_DEFAULT; owner table entries, 1..SWAP_OWNERS_MAX */
	/* NULL: /proc/sys/kernel/random/boot_id.  Tests point it at a file of their own. */
	const char *boot_id_path;
	/*
	 * How long to wait for another user of the file to let go of its lock
	 * (0: fail at once with -EBUSY).  A process killed a moment ago holds
	 * it until its last I/O request completes: the kernel drops the file
	 * with the last request of the dead process's ring.
	 */
	unsigned lock_wait_ms;
};

/* What swap_new() found in the file: recovered, or why it started empty. */
enum swap_start {
	SWAP_START_NEW = 0, /* no valid superblock: a new file, or bad magic, version or checksum */
	SWAP_START_CLEAN,   /* its last user freed every slot and closed it */
	SWAP_START_OTHER_BOOT, /* left in use during another boot: no process of it is alive */
	SWAP_START_GEOMETRY,   /* left in use, but its size, granule or cluster size changed */
	SWAP_START_RECOVERED,  /* left in use during this boot: every slot and owner kept */
};

/* What swap_new() found and chose. */
struct swap_info {
	enum swap_backend_kind backend;
	uint64_t export_size; /* NBD: bytes of the export (the data region is its whole clusters) */
	bool direct_io;		   /* O_DIRECT in use; false: buffered I/O (page cache) */
	unsigned dio_mem_align;	   /* buffer alignment O_DIRECT needs (0 when buffered) */
	unsigned dio_offset_align; /* offset/length alignment O_DIRECT needs (0 when buffered) */
	unsigned granule_size;	   /* allocation unit, bytes */
	unsigned cluster_size;	   /* bytes per cluster */
	uint64_t clusters;	   /* clusters in the data region */
	uint64_t file_size;	   /* bytes of the file: data_offset + clusters * cluster_size (NBD:
				      the export's whole clusters) */
	uint64_t data_offset;	   /* bytes of metadata before cluster 0 (whole clusters; NBD: 0) */
	uint64_t meta_size;	   /* bytes of the metadata region (NBD: of the local file) */
	unsigned owner_capacity; /* owner table entries (the recovered file's own, if recovered) */
	uint64_t generation;	 /* bumped each time the file starts empty or is reset */
	enum swap_start start;
	uint64_t recovered_slots; /* slots found allocated at open (RECOVERED only) */
	uint64_t
	    recovered_bytes; /* bytes of granules found allocated at open (leaked ones included) */
};

/*
 * Where the space is (the data region).  Computed by walking the
 * clusters: meant for the statistics endpoint, not for hot paths.
 */
struct swap_usage {
	uint64_t data_size;	     /* bytes of the data region: used_bytes + free_bytes */
	uint64_t used_bytes;	     /* bytes of granules allocated (records, headers, padding) */
	uint64_t free_bytes;	     /* bytes of free granules, everywhere */
	uint64_t free_cluster_bytes; /* part of free_bytes in wholly free clusters */
	uint64_t partial_bytes;	   /* part of free_bytes in clusters with room for a full record */
	uint64_t fragmented_bytes; /* part of free_bytes in clusters with no room for one */
	uint64_t owned_free_bytes; /* part of free_bytes in clusters owned by a swap_io */
	uint64_t clusters_in_use;  /* clusters with at least one allocated granule */
	uint64_t slots_in_use;	   /* allocated slots (records), whatever their reference counts */
	uint64_t header_bytes;	   /* part of used_bytes in record headers */
	/* Disk bytes per slot, times 1000: 1000 * used_bytes / slots_in_use. */
	uint64_t bytes_per_slot_milli;
};

/* Counters, summed over every swap_io of a swap.  Gauges are marked. */
struct swap_stats {
	uint64_t bytes_written; /* bytes the file accepted from completed writes (granule-padded) */
	uint64_t bytes_read;	/* bytes read from the file by completed reads */
	uint64_t writes;	/* objects written successfully */
	uint64_t reads;		/* objects read and verified */
	uint64_t write_batches; /* swap_io_write() calls accepted */
	uint64_t write_ios;	/* write requests submitted (one per contiguous run of a batch) */
	uint64_t read_ios;	/* read requests submitted */
	uint64_t short_ios; /* completions that moved fewer bytes than asked: rest resubmitted */
	uint64_t io_errors; /* objects whose read or write failed */
	uint64_t checksum_errors; /* reads whose record did not verify (-EBADMSG) */
	uint64_t alloc_failures;  /* allocations refused with -ENOSPC */
	uint64_t injected_faults; /* completions altered by fault injection */
	uint64_t slots_in_use;	  /* gauge: allocated slots */
	uint64_t bytes_on_disk;	  /* gauge: bytes of allocated granules */
	/* Far backends (NBD); always 0 with the file. */
	uint64_t backend_reconnects; /* connections made again after one was lost */
	uint64_t backend_errors;     /* requests that failed at the far end or with the connection,
					connections that failed, reads timed out */
	uint64_t read_timeouts;	     /* reads not completed within timeout_ms (-ETIMEDOUT) */
	uint64_t quarantined_slots;  /* gauge: slots of uncertain writes held until reconnected */
	uint64_t links_up;	     /* gauge: swap_io connections up */
};

/* Latency of completed requests, submission to completion (both backends). */
struct swap_latency {
	uint64_t count;
	uint64_t p50_ns;
	uint64_t p99_ns;
};
void swap_get_latency(const struct swap *swap, struct swap_latency *read,
		      struct swap_latency *write);
/* "file" or "nbd". */
const char *swap_backend_name(enum swap_backend_kind kind);

/*
 * Create (or resize) and preallocate the file, probe O_DIRECT, map the
 * metadata and recover what a previous user left in use during this boot
 * (swap_info.start says what happened).  Errors: -EINVAL bad config (no
 * room for a data cluster, granule not a power of two in range, owner
 * capacity out of range, path not a regular file); -EBUSY another swap
 * has the file (still after lock_wait_ms); -EOPNOTSUPP the filesystem cannot preallocate
 * (fallocate); -ENOSPC no room for the file; other -errno from
 * mkdir/open/mmap.
 */
int swap_new(struct swap **out, const struct swap_config *config);
/*
 * Close the file.  Every swap_io must have been freed.  When no slot is
 * allocated the file is marked CLEAN (the next swap_new starts empty);
 * otherwise it stays IN_USE and the next swap_new of this boot recovers
 * every slot.  Accepts NULL; returns NULL.
 */
struct swap *swap_free(struct swap *swap);
/*
 * Tests: let go of the swap as a killed process would (nothing written,
 * nothing waited for).  Every swap_io must have been freed.  Accepts
 * NULL; returns NULL.
 */
struct swap *swap_abandon(struct swap *swap);
/*
 * Free every slot, whatever its reference count, and bump the generation
 * (no record written before can verify afterwards).  For a daemon that
 * knows no client of a previous daemon can come back for its slots.  The
 * owner table is left as it is.  -EBUSY while a swap_io exists.
 */
int swap_reset_all(struct swap *swap);
/*
 * Free every slot still allocated, whatever its reference count, with
 * swap_io contexts alive (unlike swap_reset_all).  For a daemon that knows
 * nothing refers to any slot any more: no client is connected and none of
 * a previous daemon's can come back (the owner table is empty), and no
 * write is in flight.  *freed: the slots freed.
 */
int swap_collect_all(struct swap *swap, uint64_t *freed);

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
 * Slots.  swap_slot_alloc() takes space for the record of an object of
 * len bytes (1..SWAP_OBJECT_MAX, the header added) from the swap_io's
 * current cluster, with a reference count of 1; -ENOSPC when the file has
 * no room, -EINVAL on a bad length.  swap_io_write() allocates by itself;
 * this is for callers that manage I/O some other way (tests).
 *
 * swap_slot_ref() adds a reference (a fork: parent and child share the
 * record, like the kernel's swap count): -EOVERFLOW at SWAP_REF_MAX (the
 * caller must then copy the data instead), -EINVAL when the slot is not
 * allocated.  swap_slot_refcount() is the count, 0 when the slot is free,
 * -EINVAL for a slot outside the file.  swap_slot_free() drops one
 * reference and gives the space back when none is left (any thread);
 * -EINVAL when the slot is not allocated (a double free).  The caller must
 * not free a slot's last reference while its write or a read of it is in
 * flight.
 */
int swap_slot_alloc(struct swap_io *io, size_t len, uint64_t *slot_out);
int swap_slot_ref(struct swap *swap, uint64_t slot);
int swap_slot_refcount(const struct swap *swap, uint64_t slot);
int swap_slot_free(struct swap *swap, uint64_t slot);
/* Bytes of disk a slot holds (whole granules, header included). */
size_t swap_slot_disk_bytes(const struct swap *swap, uint64_t slot);

/*
 * The owner table: who the records belong to, so that a daemon started
 * after a crash knows whether its predecessor's clients may still come
 * back for their slots.  One entry per owner token (the value records are
 * written with), at most swap_info.owner_capacity.  Add an owner before
 * writing its first record; remove it after freeing its last.
 */
struct swap_owner {
	uint64_t token;	     /* nonzero; unique in the table */
	uint64_t start_time; /* the process's start time (field 22 of /proc/PID/stat) */
	pid_t pid;
	uint32_t flags; /* the caller's */
};
/* -EINVAL token 0, -EEXIST token already there, -ENOSPC table full. */
int swap_owner_add(struct swap *swap, const struct swap_owner *owner);
/* -ENOENT when the token is not in the table. */
int swap_owner_remove(struct swap *swap, uint64_t token);
/*
 * Call cb for every owner (a copy; the table is not locked while cb
 * runs, so cb may add and remove).  A nonzero return of cb stops the walk
 * and is returned; else 0.
 */
int swap_owner_foreach(struct swap *swap, int (*cb)(const struct swap_owner *owner, void *userdata),
		       void *userdata);
/* Start time of process pid (field 22 of /proc/PID/stat): 0, -ESRCH when gone, -errno. */
int swap_process_start_time(pid_t pid, uint64_t *start_time);
/* 1 when owner's process is alive (same pid, same start time), 0 when not, -errno. */
int swap_owner_alive(const struct swap_owner *owner);

/* Per-thread I/O context: a ring, its eventfd, a current cluster. */
int swap_io_new(struct swap_io **out, struct swap *swap);
/* Wait for every request in flight (their callbacks run), give the cluster back.  NULL ok. */
struct swap_io *swap_io_free(struct swap_io *io);

/*
 * An fd that becomes readable when completions wait (the file: an
 * eventfd; NBD: an epoll fd over the socket and a timer, stable across
 * reconnections); call swap_io_reap() then.
 */
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
 * Writeback of a batch.  For each object the caller sets data, len, owner
 * and vpn; swap_io_write() allocates slots for all of them (all or
 * nothing: -ENOSPC and no slot taken when the file is full), sets
 * objs[i].slot, builds each record (header and checksum) in aligned
 * buffers (data may be reused at once), coalesces records that landed
 * next to each other into one request per run, and submits.  When every
 * request of the batch has completed, cb runs (on this thread, from reap)
 * with result 0 or the first error; objs[i].result is 0 or -errno per
 * object, and the slot of a failed object has already been freed.  objs
 * must stay valid until cb runs.
 */
struct swap_object {
	const void *data; /* in: the compressed bytes */
	size_t len;	  /* in: 1..SWAP_OBJECT_MAX */
	uint64_t owner;	  /* in: whose record it is; a read must name the same owner */
	uint64_t vpn;	  /* in: the page it holds, kept in the record (reads return it) */
	uint64_t slot;	  /* out: where it was put */
	int result;	  /* out (in cb): 0 or -errno */
};
typedef void (*swap_write_cb)(struct swap_object *objs, size_t count, int result, void *userdata);
/*
 * A far backend whose server is down refuses the batch with -ENOTCONN (no
 * slot taken).  An object whose write failed has result -errno; its slot
 * was freed, or, when the write may still land (-ENOTCONN: the connection
 * died under it), is held by the backend until that cannot happen.
 */
int swap_io_write(struct swap_io *io, struct swap_object *objs, size_t count, swap_write_cb cb,
		  void *userdata);

/*
 * Read an object back.  len must be the length it was written with and
 * owner the owner it was written for.  When dst is not NULL the bytes are
 * copied there before cb runs; with dst NULL cb gets a pointer to an
 * internal buffer valid only during the callback (decompress straight
 * from it).  cb gets result 0, -EIO after a read error, or -EBADMSG when
 * the record does not verify: bad magic, another length, another owner,
 * or a checksum mismatch (bit rot, a stale or forged slot, a bug); data
 * is NULL then.  On success cb also gets the vpn the record was written
 * with: a page moved by mremap since has another one, so whether it must
 * match is the caller's decision.  Does not block.
 */
/* A far backend also fails a read with -ETIMEDOUT (timeout_ms) or -EIO. */
typedef void (*swap_read_cb)(int result, const void *data, size_t len, uint64_t vpn,
			     void *userdata);
int swap_io_read(struct swap_io *io, uint64_t slot, size_t len, uint64_t owner, void *dst,
		 swap_read_cb cb, void *userdata);

/*
 * Synchronous helpers for tests and shutdown: submit, then wait for that
 * request (other completions of this swap_io are processed meanwhile).
 * Return 0 or the I/O's -errno; write fills objs[i].slot and .result;
 * read stores the record's vpn in *vpn (if not NULL) on success.
 */
int swap_io_write_sync(struct swap_io *io, struct swap_object *objs, size_t count);
int swap_io_read_sync(struct swap_io *io, uint64_t slot, size_t len, uint64_t owner, void *dst,
		      uint64_t *vpn);
