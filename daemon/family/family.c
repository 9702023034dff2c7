// SPDX-License-Identifier: MIT
/*
 * Families: the registry of arenas and the clients that share them (see
 * family.h).  Creation and lookup run on the main thread during the
 * handshake; the last unref runs on the family's fault thread when its
 * last member goes.  The list and the reference counts are guarded by
 * daemon->clients_lock, which is never held across a system call: the pool
 * is created before, and freed after, the lock.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "daemon.h"
#include "family/family.h"
#include "group/group.h"
#include "pool/pool.h"
#include "stats/stats.h"
#include "swap/swapfile.h"
#include "util.h"

static int family_make(struct daemon *d, struct pool *pool, struct fault_thread *thread,
		       struct family **out)
{
	struct family *f = calloc(1, sizeof(*f));
	struct stat st;
	int fd;

	if (!f)
		return -ENOMEM;
	fd = pool_open_readonly(pool);
	if (fd < 0 || fstat(fd, &st) < 0) {
		int r = fd < 0 ? fd : -errno;

		if (fd >= 0)
			close(fd);
		free(f);
		return r;
	}
	close(fd);
	uz_list_init(&f->link);
	uz_list_init(&f->snapshots);
	f->daemon = d;
	f->pool = pool;
	f->thread = thread;
	f->dev = st.st_dev;
	f->ino = st.st_ino;
	f->refs = 1;
	pool_token(pool, f->token);
	memcpy(&f->swap_owner, f->token, sizeof(f->swap_owner));
	if (!f->swap_owner)
		f->swap_owner = 1; /* 0 means "no owner" to the swap file */
	*out = f;
	return 0;
}

/* The family's entry in the owner table of the swap file (an entry there already is fine). */
static void family_own_swap(struct family *f, pid_t pid, uint64_t starttime)
{
	struct swap *swap = __atomic_load_n(&f->daemon->swap, __ATOMIC_ACQUIRE);
	struct swap_owner owner = {.token = f->swap_owner, .start_time = starttime, .pid = pid};

	if (swap)
		(void)swap_owner_add(swap, &owner);
}

int family_new(struct daemon *d, struct fault_thread *thread, pid_t pid, uint64_t starttime,
	       struct family **out)
{
	struct pool *pool = NULL;
	struct family *f;
	int r;

	r = pool_new(&pool, d->pool_totals);
	if (r < 0)
		return r;
	r = family_make(d, pool, thread, &f);
	if (r < 0) {
		pool_free(pool);
		return r;
	}
	family_own_swap(f, pid, starttime);
	pthread_mutex_lock(&d->clients_lock);
	uz_list_add_tail(&d->families, &f->link);
	pthread_mutex_unlock(&d->clients_lock);
	*out = f;
	return 0;
}

/* The listed family of arena (dev, ino), with a reference, or NULL.  clients_lock held. */
static struct family *family_find_locked(struct daemon *d, dev_t dev, ino_t ino)
{
	for (struct uz_list *i = d->families.next; i != &d->families; i = i->next) {
		struct family *f = uz_container_of(i, struct family, link);

		if (f->dev == dev && f->ino == ino && f->refs) {
			f->refs++;
			return f;
		}
	}
	return NULL;
}

int family_take_arena(struct daemon *d, int fd, struct fault_thread *thread, pid_t pid,
		      uint64_t starttime, struct family **out)
{
	struct pool *pool = NULL;
	struct family *f;
	struct stat st;
	int r;

	if (fstat(fd, &st) < 0)
		return -errno;
	pthread_mutex_lock(&d->clients_lock);
	f = family_find_locked(d, st.st_dev, st.st_ino);
	pthread_mutex_unlock(&d->clients_lock);
	if (f) {
		*out = f;
		return 0;
	}
	r = pool_recover(&pool, fd, d->pool_totals, NULL);
	if (r < 0)
		return r;
	r = family_make(d, pool, thread, &f);
	if (r < 0) {
		pool_free(pool);
		return r;
	}
	family_own_swap(f, pid, starttime);
	pthread_mutex_lock(&d->clients_lock);
	{
		/* Two members of one family re-joining at once: keep the first. */
		struct family *other = family_find_locked(d, st.st_dev, st.st_ino);

		if (!other)
			uz_list_add_tail(&d->families, &f->link);
		pthread_mutex_unlock(&d->clients_lock);
		if (other) {
			pool_free(f->pool);
			free(f);
			f = other;
		}
	}
	*out = f;
	return 0;
}

bool family_release(struct family *f, uint64_t handle)
{
	bool last = pool_refcount(f->pool, handle) == 1;

	(void)pool_release(f->pool, handle);
	return last;
}

struct family *family_ref(struct family *f)
{
	pthread_mutex_lock(&f->daemon->clients_lock);
	f->refs++;
	pthread_mutex_unlock(&f->daemon->clients_lock);
	return f;
}

void family_unref(struct family *f, bool gone)
{
	struct daemon *d;
	struct swap *swap;
	bool last;

	if (!f)
		return;
	d = f->daemon;
	pthread_mutex_lock(&d->clients_lock);
	last = --f->refs == 0;
	if (last)
		uz_list_del(&f->link);
	pthread_mutex_unlock(&d->clients_lock);
	if (!last)
		return;
	swap = __atomic_load_n(&d->swap, __ATOMIC_ACQUIRE);
	if (gone && swap)
		(void)swap_owner_remove(swap, f->swap_owner);
	/* The objects of leaked references leave the gauges with the arena. */
	stats_add(d->stats, UZ_STAT_compressed_bytes, -f->counted_bytes);
	for (unsigned i = 0; i < FAMILY_GROUPS_MAX && f->counted[i].group; i++) {
		stats_add(f->counted[i].group->stats, UZ_STAT_compressed_bytes,
			  -f->counted[i].bytes);
		group_unref(f->counted[i].group);
	}
	pool_free(f->pool);
	free(f->recovered);
	free(f);
}

/* The cell of key in the open-addressing set, or the empty cell where it would go. */
static uint64_t *recovered_find(uint64_t *set, size_t cap, uint64_t key)
{
	size_t i = (size_t)((key * 0x9e3779b97f4a7c15ULL) >> 20) & (cap - 1);

	while (set[i] != 0 && set[i] != key)
		i = (i + 1) & (cap - 1);
	return &set[i];
}

bool family_recovered_has(const struct family *f, uint64_t handle)
{
	uint64_t key = handle + 1;

	return f->recovered_cap && *recovered_find(f->recovered, f->recovered_cap, key) == key;
}

bool family_recovered_first(struct family *f, uint64_t handle)
{
	uint64_t key = handle + 1; /* 0 marks an empty cell */
	uint64_t *cell;

	if ((f->recovered_count + 1) * 2 > f->recovered_cap) {
		size_t cap = f->recovered_cap ? f->recovered_cap * 2 : 1024;
		uint64_t *set = calloc(cap, sizeof(*set));

		if (!set)
			return true; /* counted twice rather than never: a gauge, not data */
		for (size_t i = 0; i < f->recovered_cap; i++)
			if (f->recovered[i])
				*recovered_find(set, cap, f->recovered[i]) = f->recovered[i];
		free(f->recovered);
		f->recovered = set;
		f->recovered_cap = cap;
	}
	cell = recovered_find(f->recovered, f->recovered_cap, key);
	if (*cell == key)
		return false;
	*cell = key;
	f->recovered_count++;
	return true;
}

void family_count_bytes(struct family *f, struct uz_group *group, int64_t delta)
{
	stats_add(group->stats, UZ_STAT_compressed_bytes, delta);
	stats_add(f->daemon->stats, UZ_STAT_compressed_bytes, delta);
	__atomic_add_fetch(&f->counted_bytes, delta, __ATOMIC_RELAXED);
	for (unsigned i = 0; i < FAMILY_GROUPS_MAX; i++) {
		struct uz_group *g = __atomic_load_n(&f->counted[i].group, __ATOMIC_ACQUIRE);

		if (!g) {
			struct uz_group *expected = NULL;

			group_ref(group);
			if (__atomic_compare_exchange_n(&f->counted[i].group, &expected, group, false,
							__ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE))
				g = group;
			else {
				group_unref(group);
				g = expected;
			}
		}
		if (g == group) {
			__atomic_add_fetch(&f->counted[i].bytes, delta, __ATOMIC_RELAXED);
			return;
		}
	}
	/* More groups than the ledger tracks: this group's gauge may not return to 0. */
}
