/* SPDX-License-Identifier: MIT */
/*
 * Families: the clients that share one arena of compressed pages.
 *
 * A client's compressed pages live in an arena (daemon/pool), a memfd the
 * client holds so that it outlives the daemon.  A process and its fork
 * descendants share one arena, and after a fork their entries may refer to
 * the same objects (reference counted in the arena), like the kernel's
 * swap count: that set of clients is a family.  Every member of a family is
 * served by the same fault thread, which alone touches the family's pool.
 *
 * The registry (daemon->families, under daemon->clients_lock) finds a
 * family by the identity (device, inode) of its arena, so that clients
 * re-joining a restarted daemon with the same arena land in one family
 * again, and a fork child joins its parent's.
 */
#pragma once

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "list.h"

struct daemon;
struct pool;
struct fault_thread;
struct uz_group;

#define FAMILY_GROUPS_MAX 4 /* groups whose bytes a family's ledger tracks one by one */

struct family {
	struct uz_list link; /* daemon->families, under clients_lock */
	struct daemon *daemon;
	struct pool *pool;	     /* the arena; used by `thread` only */
	struct fault_thread *thread; /* serves every member */
	uint8_t token[16];	     /* the arena's token */
	uint64_t swap_owner;	     /* from the token: owner of its members' swap records */
	dev_t dev;		     /* identity of the arena memfd */
	ino_t ino;
	unsigned refs;		/* members and pending fork snapshots; under clients_lock */
	uint64_t compact_epoch; /* the thread's compaction round that last looked at it */
	struct uz_list snapshots; /* fork snapshots waiting for their child (daemon/fault/fork.c) */
	/*
	 * Shared objects already counted in the group's and the daemon's
	 * compressed_bytes by a member recovered after a restart (the others
	 * add nothing): an open-addressing set of handles, thread only.
	 */
	uint64_t *recovered;
	size_t recovered_count, recovered_cap;
	/*
	 * The ledger: what the family added to its groups' and the daemon's
	 * compressed_bytes (each shared object once), atomic.  References can
	 * outlive their holder: a fork child that exits while no daemon runs,
	 * or a snapshot whose daemon was killed, never drops them.  Their
	 * objects stay counted while the arena holds them, and when the family
	 * ends the ledger's balance is taken back, so the gauges return to 0.
	 */
	int64_t counted_bytes;
	struct {
		struct uz_group *group; /* a reference, set once (compare and swap) */
		int64_t bytes;
	} counted[FAMILY_GROUPS_MAX];
};

/*
 * Add delta to the compressed_bytes of group and of the daemon for an
 * object of the family made or gone (not for each referrer), and to the
 * ledger.  Any thread.
 */
void family_count_bytes(struct family *f, struct uz_group *group, int64_t delta);

/* Add handle to the family's recovered set: true if it was not there (or out of memory). */
bool family_recovered_first(struct family *f, uint64_t handle);
/* Is handle in the recovered set (counted by a member recovered before)? */
bool family_recovered_has(const struct family *f, uint64_t handle);

/*
 * A family with a fresh arena, served by `thread`, listed, one reference,
 * and an entry in the swap file's owner table for process (pid,
 * starttime), so that a daemon started after a crash knows its swap
 * records may still be claimed.  Main thread, clients_lock not held.
 */
int family_new(struct daemon *d, struct fault_thread *thread, pid_t pid, uint64_t starttime,
	       struct family **out);
/*
 * The family of the arena `fd` (a client's read-only descriptor): the
 * listed one with that arena, or one made from the arena taken back
 * (pool_recover) and served by `thread`.  A reference either way.  -EPERM
 * when fd is not an arena of ours, -EINVAL when it is damaged.
 */
int family_take_arena(struct daemon *d, int fd, struct fault_thread *thread, pid_t pid,
		      uint64_t starttime, struct family **out);
/*
 * Drop one reference to a pool object of the family's arena; true when it
 * was the last and the object is gone (its bytes leave compressed_bytes
 * then, whoever stored it: a fork shares objects, each counted once).
 * On the family's thread.
 */
bool family_release(struct family *f, uint64_t handle);
/* Another reference (a fork child, a snapshot); clients_lock not held. */
struct family *family_ref(struct family *f);
/*
 * Drop a reference; the last one unlists the family and frees its pool
 * (the daemon's mapping: the arena itself lives as long as a client holds
 * it).  `gone`: the member dropping it is gone for good (exited, or gave
 * every page back); when the last one is, the family leaves the swap
 * file's owner table.  A member merely disconnected (it may re-join a
 * daemon with its state) keeps the entry.  On the family's fault thread,
 * or when no thread runs any more.
 */
void family_unref(struct family *f, bool gone);
