/* SPDX-License-Identifier: MIT */
/*
 * fork without giving pages back: the child's snapshot of its parent's
 * page index, sharing the parent's stored, same-filled and on-disk pages
 * by reference count (pool objects in the family's arena, swap slots in
 * the swap file), like the kernel's swap count.  See fork.c.
 *
 * Everything here runs on the family's fault thread, except
 * fork_snapshot_claim() (main thread, the child's handshake), under
 * daemon->clients_lock.
 */
#pragma once

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "list.h"

struct daemon;
struct client;
struct family;
struct uz_group;
struct store;
struct page_index;
struct fault_thread;

struct fork_snapshot {
	struct uz_list link;  /* family->snapshots, under clients_lock */
	struct family *family; /* a reference */
	struct uz_group *group; /* the parent's, a reference: counts the shared objects */
	struct store *store;   /* handed to the child's client when it is adopted */
	struct page_index *index;
	dev_t dev; /* the store's identity: what the child presents */
	ino_t ino;
	pid_t parent_pid;
	pid_t child_pid; /* from FORK_DONE; 0 while not known */
	int child_pidfd; /* readable once the child has exited; -1 when none */
	uint64_t entries;
	/*
	 * The parent's thread applying an event to the index (forget, remap)
	 * against the child's thread taking store and index over: the child
	 * may be adopted by the other fault thread while the parent's walks.
	 */
	pthread_mutex_t events_lock;
	/* under clients_lock */
	bool done;    /* FORK_DONE came: the parent's events no longer apply */
	bool claimed; /* a child presented it */
	unsigned refs; /* the parent's pending pointer, the family list */
};

/*
 * FORK_PREPARE of `parent`, its batch landed and its eviction paused: a new
 * store whose index refers to everything the parent has evicted, each
 * reference counted.  -EOVERFLOW when an object or slot is shared by too
 * many (the caller gives pages back instead), -ENOMEM.
 */
int fork_snapshot_take(struct client *parent, struct fork_snapshot **out);
/* A read-only descriptor of the snapshot's store, for the FORK_PREPARE reply. */
int fork_snapshot_fd(const struct fork_snapshot *snapshot);

/*
 * The parent's VM events between FORK_PREPARE and FORK_DONE happened
 * before its fork (the library holds its own hooks off meanwhile), so they
 * apply to the snapshot too, until it is done or claimed.
 */
bool fork_snapshot_open(const struct fork_snapshot *snapshot);
void fork_snapshot_forget(struct fork_snapshot *snapshot, uint64_t start, uint64_t end);
void fork_snapshot_remap(struct fork_snapshot *snapshot, uint64_t from, uint64_t to,
			 uint64_t len);

/*
 * FORK_DONE: child_pid > 0, the child will claim it (or die, and then
 * fork_snapshots_reap() lets it go); < 0, fork failed: every reference is
 * dropped.  Drops the parent's pointer.
 */
void fork_snapshot_done(struct fork_snapshot *snapshot, pid_t child_pid);

/*
 * The child's handshake: the listed snapshot of `family` with this store
 * (dev, ino), marked claimed, or NULL.  Main thread.
 */
struct fork_snapshot *fork_snapshot_claim(struct family *family, dev_t dev, ino_t ino);
/*
 * The child's thread takes the claimed snapshot's store and index over,
 * once no event of the parent is being applied to them (none is after).
 */
void fork_snapshot_take_over(struct fork_snapshot *snapshot, struct store **store,
			     struct page_index **index);
/* The child was adopted: its client took store and index over.  Drops the list's pointer. */
void fork_snapshot_adopted(struct fork_snapshot *snapshot);

/* The claiming child was refused before adoption: nobody else can use the snapshot. */
void fork_snapshot_abandon(struct fork_snapshot *snapshot);

/* On the fault thread, now and then: unclaimed snapshots whose child is gone. */
void fork_snapshots_reap(struct fault_thread *thread);
