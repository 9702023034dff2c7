// SPDX-License-Identifier: MIT
/*
 * fork without giving pages back.
 *
 * The kernel forks a swapped-out process in time proportional to its page
 * tables: the child's entries point at the same swap entries, reference
 * counted, and whoever touches a page first gets its own copy.  uzswap does
 * the same with its pool and swap file.  At FORK_PREPARE (the parent's
 * batch has landed and its eviction is paused) the fault thread copies the
 * parent's page index into a new store, the snapshot: every stored object
 * gets one more reference in the family's arena (pool_ref), every swap
 * slot one more in the swap file (swap_slot_ref), same-filled pages are
 * copied as they are.  The parent keeps its pages where they are, so its
 * memory stays within its budget through the fork; the snapshot's store
 * goes to the parent in the FORK_PREPARE reply, the child inherits the
 * descriptor, and from its atfork handler -- before any code of the
 * program runs -- the child joins with it (UZ_HELLO_SNAPSHOT).  Its holes
 * (the pages evicted in the parent, inherited as holes because the child's
 * ranges are not registered with the parent's uffd) are then served from
 * the shared entries; a fault in either process decodes its own copy and
 * drops one reference, and the object or slot goes with the last one.
 *
 * Between the snapshot and the fork the parent may still unmap, drop or
 * move memory: its hooked munmap/mremap wait on range_lock, which the
 * library's prepare handler holds, and glibc's and jemalloc's own
 * madvise run under the arena locks their fork handlers take, so what the
 * daemon still reads from the parent's uffd until FORK_DONE (or until the
 * child claims the snapshot) happened before the fork, and is applied to
 * the snapshot as well.  The end of that window is FORK_DONE, which the
 * parent sends before its fork() returns: before applying an event to the
 * snapshot the fault thread reads the parent's socket ahead (into a
 * backlog, nothing handled: request.c), so an event the program made
 * after fork() returned always finds FORK_DONE read first (vmevent.c; a
 * drop right after fork() took the child's pages otherwise).  A raw
 * system call from another thread in that window is the one case left
 * (docs/ARCHITECTURE.md, "Fork").
 *
 * Everything that names an object or slot is in memory that outlives the
 * daemon: the references are counted in the arena and the swap file, the
 * snapshot is a store (a memfd), and its header names the parent (pid and
 * start time), so a daemon started after a crash can still hand it to the
 * child, checking that the process presenting it is that parent's child.
 *
 * Lifetime of a struct fork_snapshot: two pointers, the parent's pending
 * one (dropped at FORK_DONE) and the family's list (dropped when the
 * child's client is adopted, or when the snapshot is let go: fork failed,
 * or the child died before it joined).  Both under clients_lock.
 */
#include <errno.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "client/client.h"
#include "daemon.h"
#include "family/family.h"
#include "fault/fault.h"
#include "fault/fork.h"
#include "group/group.h"
#include "index/index.h"
#include "pool/pool.h"
#include "stats/stats.h"
#include "store/store.h"
#include "swap/swapfile.h"
#include "util.h"

#define VPN_LAST ((1ULL << PAGE_INDEX_VPN_BITS) - 1)

/*
 * Drop what a snapshot entry refers to (the entry itself is cleared by the
 * caller).  An object whose last reference this was leaves the parent's
 * group's and the daemon's compressed bytes (counted once, see
 * client_pool_bytes() in fault-internal.h).
 */
static void entry_unref(struct fork_snapshot *snapshot, page_entry_t e)
{
	struct family *f = snapshot->family;
	struct swap *swap = __atomic_load_n(&f->daemon->swap, __ATOMIC_ACQUIRE);

	switch (pe_state(e)) {
	case PAGE_STORED:
		if (family_release(f, pe_handle(e)))
			family_count_bytes(f, snapshot->group, -(int64_t)pe_object_len(e));
		break;
	case PAGE_ON_DISK:
		if (swap)
			(void)swap_slot_free(swap, pe_payload(e));
		break;
	default:
		break;
	}
}

struct take_ctx {
	struct client *parent;
	struct fork_snapshot *snapshot;
	struct swap *swap;
	int error;
};

static int take_one(uint64_t vpn, page_entry_t *entry, void *userdata)
{
	struct take_ctx *ctx = userdata;
	struct family *f = ctx->parent->family;
	page_entry_t e = *entry, copy = 0;
	int r = 0;

	switch (pe_state(e)) {
	case PAGE_RESIDENT:
		copy = pe_make(0, PAGE_RESIDENT, false, 0, 0, 0); /* present in the child, COW */
		break;
	case PAGE_STORED:
	case PAGE_WRITEBACK:
		/* The child's copy of a page being written back is simply stored. */
		r = pool_ref(f->pool, pe_handle(e));
		copy = pe_make(0, PAGE_STORED, true, pe_algo(e), pe_len(e), pe_payload(e));
		break;
	case PAGE_ON_DISK:
		r = ctx->swap ? swap_slot_ref(ctx->swap, pe_payload(e)) : -ENODEV;
		copy = pe_make(0, PAGE_ON_DISK, false, pe_algo(e), pe_len(e), pe_payload(e));
		break;
	case PAGE_SAME_FILLED:
		copy = pe_make(0, PAGE_SAME_FILLED, true, 0, 0, pe_payload(e));
		break;
	case PAGE_LOST:
		copy = pe_make(0, PAGE_LOST, false, 0, 0, 0);
		break;
	default:
		/* IN_FLIGHT cannot be: the batch landed before the snapshot. */
		ctx->error = -EBUSY;
		return 1;
	}
	if (r < 0) {
		ctx->error = r;
		return 1;
	}
	/* Counted first, then named: a kill in between leaks a reference. */
	r = page_index_set(ctx->snapshot->index, vpn, copy);
	if (r < 0) {
		entry_unref(ctx->snapshot, copy);
		ctx->error = r;
		return 1;
	}
	ctx->snapshot->entries++;
	return 0;
}

static int release_one(uint64_t vpn, page_entry_t *entry, void *userdata)
{
	struct fork_snapshot *snapshot = userdata;
	page_entry_t e = *entry;

	/* Forgotten first, released after: a kill in between leaks. */
	page_index_set(snapshot->index, vpn, 0);
	entry_unref(snapshot, e);
	*entry = 0;
	return 0;
}

/* Every reference the snapshot holds, dropped; its store and index freed. */
static void snapshot_discard(struct fork_snapshot *snapshot)
{
	if (snapshot->index)
		page_index_walk(snapshot->index, 0, VPN_LAST, release_one, snapshot);
	page_index_free(snapshot->index);
	store_free(snapshot->store);
	if (snapshot->child_pidfd >= 0)
		close(snapshot->child_pidfd);
	if (snapshot->group)
		group_unref(snapshot->group);
	family_unref(snapshot->family, false);
	pthread_mutex_destroy(&snapshot->events_lock);
	free(snapshot);
}

/* Drop one pointer (clients_lock held); true when it was the last. */
static bool snapshot_put_locked(struct fork_snapshot *snapshot)
{
	return --snapshot->refs == 0;
}

int fork_snapshot_take(struct client *parent, struct fork_snapshot **out)
{
	struct daemon *d = parent->daemon;
	struct fork_snapshot *snapshot;
	struct uz_store_header *h;
	struct take_ctx ctx;
	struct stat st;
	int r;

	snapshot = calloc(1, sizeof(*snapshot));
	if (!snapshot)
		return -ENOMEM;
	uz_list_init(&snapshot->link);
	pthread_mutex_init(&snapshot->events_lock, NULL);
	snapshot->child_pidfd = -1;
	snapshot->parent_pid = parent->pid;
	snapshot->family = family_ref(parent->family);
	snapshot->group = group_ref(parent->group);
	r = store_new(&snapshot->store);
	if (r == 0)
		r = page_index_new(&snapshot->index, snapshot->store);
	if (r == 0 && fstat(snapshot->store->fd, &st) < 0)
		r = -errno;
	if (r < 0)
		goto fail;
	snapshot->dev = st.st_dev;
	snapshot->ino = st.st_ino;

	ctx = (struct take_ctx){.parent = parent, .snapshot = snapshot,
				.swap = __atomic_load_n(&d->swap, __ATOMIC_ACQUIRE)};
	r = page_index_walk(parent->index, 0, VPN_LAST, take_one, &ctx);
	if (ctx.error)
		r = ctx.error;
	if (r < 0)
		goto fail;

	h = store_header(snapshot->store);
	memcpy(h->family_token, parent->family->token, sizeof(h->family_token));
	h->parent_pid = (uint32_t)parent->pid;
	h->parent_starttime = store_header(parent->store)->owner_starttime;
	__atomic_store_n(&h->flags, h->flags | UZ_STORE_SNAPSHOT, __ATOMIC_RELEASE);

	snapshot->refs = 2; /* the parent's pending pointer and the family's list */
	pthread_mutex_lock(&d->clients_lock);
	uz_list_add_tail(&parent->family->snapshots, &snapshot->link);
	pthread_mutex_unlock(&d->clients_lock);
	*out = snapshot;
	return 0;
fail:
	snapshot_discard(snapshot);
	return r;
}

int fork_snapshot_fd(const struct fork_snapshot *snapshot)
{
	return store_open_readonly(snapshot->store);
}

bool fork_snapshot_open(const struct fork_snapshot *snapshot)
{
	return !__atomic_load_n(&snapshot->done, __ATOMIC_ACQUIRE) &&
	       !__atomic_load_n(&snapshot->claimed, __ATOMIC_ACQUIRE);
}

void fork_snapshot_forget(struct fork_snapshot *snapshot, uint64_t start, uint64_t end)
{
	uint64_t first = start >> UZ_PAGE_SHIFT, last;

	end = uz_min(end, (VPN_LAST + 1) << UZ_PAGE_SHIFT);
	if (start >= end)
		return;
	last = ((end + UZ_PAGE_SIZE - 1) >> UZ_PAGE_SHIFT) - 1;
	pthread_mutex_lock(&snapshot->events_lock);
	if (fork_snapshot_open(snapshot) && snapshot->index)
		page_index_walk(snapshot->index, first, last, release_one, snapshot);
	pthread_mutex_unlock(&snapshot->events_lock);
}

struct remap_ctx {
	struct fork_snapshot *snapshot;
	uint64_t from_vpn, to_vpn;
};

static int remap_one(uint64_t vpn, page_entry_t *entry, void *userdata)
{
	struct remap_ctx *ctx = userdata;
	uint64_t to = ctx->to_vpn + (vpn - ctx->from_vpn);
	page_entry_t old = page_index_get(ctx->snapshot->index, to);

	if (page_index_set(ctx->snapshot->index, to, *entry) < 0)
		entry_unref(ctx->snapshot, *entry); /* out of memory: that page is lost */
	if (old)
		entry_unref(ctx->snapshot, old);
	*entry = 0;
	return 0;
}

void fork_snapshot_remap(struct fork_snapshot *snapshot, uint64_t from, uint64_t to, uint64_t len)
{
	struct remap_ctx ctx = {snapshot, from >> UZ_PAGE_SHIFT, to >> UZ_PAGE_SHIFT};

	len = (len + UZ_PAGE_SIZE - 1) & UZ_PAGE_MASK;
	if (!len || (from < to + len && to < from + len))
		return;
	pthread_mutex_lock(&snapshot->events_lock);
	if (fork_snapshot_open(snapshot) && snapshot->index)
		page_index_walk(snapshot->index, from >> UZ_PAGE_SHIFT,
				((from + len) >> UZ_PAGE_SHIFT) - 1, remap_one, &ctx);
	pthread_mutex_unlock(&snapshot->events_lock);
}

void fork_snapshot_done(struct fork_snapshot *snapshot, pid_t child_pid)
{
	struct daemon *d = snapshot->family->daemon;
	bool last;

	if (child_pid > 0)
		snapshot->child_pidfd = (int)syscall(SYS_pidfd_open, child_pid, 0);
	pthread_mutex_lock(&d->clients_lock);
	snapshot->child_pid = child_pid;
	__atomic_store_n(&snapshot->done, true, __ATOMIC_RELEASE);
	if (child_pid < 0 && !snapshot->claimed) {
		/* fork failed: nobody will ever claim it, the list lets it go too */
		uz_list_del(&snapshot->link);
		snapshot->refs--;
	}
	last = snapshot_put_locked(snapshot);
	pthread_mutex_unlock(&d->clients_lock);
	/* Adopted by a child meanwhile, its store and index are the child's (NULL here). */
	if (last)
		snapshot_discard(snapshot);
}

struct fork_snapshot *fork_snapshot_claim(struct family *family, dev_t dev, ino_t ino)
{
	struct daemon *d = family->daemon;
	struct fork_snapshot *found = NULL;

	pthread_mutex_lock(&d->clients_lock);
	for (struct uz_list *i = family->snapshots.next; i != &family->snapshots; i = i->next) {
		struct fork_snapshot *s = uz_container_of(i, struct fork_snapshot, link);

		if (s->dev == dev && s->ino == ino && !s->claimed) {
			__atomic_store_n(&s->claimed, true, __ATOMIC_RELEASE);
			found = s;
			break;
		}
	}
	pthread_mutex_unlock(&d->clients_lock);
	return found;
}

void fork_snapshot_take_over(struct fork_snapshot *snapshot, struct store **store,
			     struct page_index **index)
{
	/* Claimed already: no walk starts after this one, if any, is over. */
	pthread_mutex_lock(&snapshot->events_lock);
	*store = snapshot->store;
	*index = snapshot->index;
	snapshot->store = NULL;
	snapshot->index = NULL;
	pthread_mutex_unlock(&snapshot->events_lock);
}

void fork_snapshot_adopted(struct fork_snapshot *snapshot)
{
	struct daemon *d = snapshot->family->daemon;
	bool last;

	/* The child's client has the store and the index now (fork_snapshot_take_over). */
	pthread_mutex_lock(&d->clients_lock);
	uz_list_del(&snapshot->link);
	last = snapshot_put_locked(snapshot);
	pthread_mutex_unlock(&d->clients_lock);
	if (last)
		snapshot_discard(snapshot);
}

void fork_snapshot_abandon(struct fork_snapshot *snapshot)
{
	struct daemon *d = snapshot->family->daemon;
	bool last;

	pthread_mutex_lock(&d->clients_lock);
	uz_list_del(&snapshot->link);
	last = snapshot_put_locked(snapshot);
	pthread_mutex_unlock(&d->clients_lock);
	if (last)
		snapshot_discard(snapshot);
}

/* Has the child exited (pidfd readable)? */
static bool child_gone(const struct fork_snapshot *snapshot)
{
	struct pollfd pfd = {.fd = snapshot->child_pidfd, .events = POLLIN};

	return snapshot->child_pidfd >= 0 && poll(&pfd, 1, 0) == 1;
}

void fork_snapshots_reap(struct fault_thread *thread)
{
	struct fork_snapshot *gone[16];
	unsigned nr = 0;
	struct daemon *d;
	struct uz_list *families;

	d = fault_thread_daemon(thread);
	families = &d->families;
	pthread_mutex_lock(&d->clients_lock);
	for (struct uz_list *i = families->next; i != families && nr < UZ_ARRAY_SIZE(gone);
	     i = i->next) {
		struct family *f = uz_container_of(i, struct family, link);

		if (f->thread != thread)
			continue;
		for (struct uz_list *j = f->snapshots.next, *next; j != &f->snapshots; j = next) {
			struct fork_snapshot *s = uz_container_of(j, struct fork_snapshot, link);

			next = j->next;
			if (!s->done || s->claimed || !child_gone(s) || nr == UZ_ARRAY_SIZE(gone))
				continue;
			/* The child died before it joined: its references go. */
			uz_list_del(&s->link);
			if (snapshot_put_locked(s))
				gone[nr++] = s;
		}
	}
	pthread_mutex_unlock(&d->clients_lock);
	for (unsigned i = 0; i < nr; i++)
		snapshot_discard(gone[i]);
}
