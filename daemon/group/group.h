/* SPDX-License-Identifier: MIT */
/*
 * Groups: one struct uz_group per cgroup that has (or had) a client.  A
 * group carries the statistics of the cgroup (the same counters and
 * gauges as the global and per-client ones), so `uzswapctl stats
 * --cgroup` can answer and the per-cgroup figures sum to the global
 * ones: every statistic a fault thread adds goes to the client, to its
 * group and to the daemon at once (client_stat(), fault/fault-internal.h).
 *
 * The policy is not kept here: each client holds its own resolved copy
 * (percentages are resolved against the cgroup's memory limits, which
 * may change), and the main thread hands a new one to the fault thread
 * when the config or the client's cgroup changes (struct client_assign).
 *
 * Lifetime: the registry (struct group_registry, in struct daemon) holds
 * every group until the daemon exits — counters of departed clients must
 * keep counting in the per-cgroup sums — bounded by GROUPS_MAX; past
 * that, new cgroups share the catch-all group GROUP_OVERFLOW_PATH.
 * Clients hold a reference too (refcount), so a group outlives the
 * registry's teardown while a client still points at it.
 *
 * Locking: registry->lock guards the list.  A group's path and stats
 * pointer never change after creation, so a holder of a reference reads
 * them without a lock; the stats object is thread-safe.
 */
#pragma once

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "list.h"
#include "stats/stats.h"

#define GROUPS_MAX	    4096
#define GROUP_OVERFLOW_PATH "(other)"

/* The registry of per-cgroup groups (one, in struct daemon). */
struct group_registry {
	pthread_mutex_t lock; /* guards groups, nr_groups */
	struct uz_list groups; /* struct uz_group.link */
	unsigned nr_groups;
};

struct uz_group {
	struct uz_list link; /* group_registry.groups */
	char *path;	     /* cgroup path as the config matches it: "/a/b", "/" for the root */
	struct stats *stats; /* per-cgroup counters and gauges */
	unsigned refcount;   /* atomic: the registry + every client pointing here */
};

void group_registry_init(struct group_registry *registry);
/* Drops the registry's references; groups still held by clients live on. */
void group_registry_destroy(struct group_registry *registry);

/*
 * The group of cgroup `path`, created on first use; a new reference the
 * caller must drop with group_unref().  -ENOMEM.
 */
int group_get(struct group_registry *registry, const char *path, struct uz_group **out);
/* The group of `path` if it exists (a new reference), or NULL. */
struct uz_group *group_find(struct group_registry *registry, const char *path);

struct uz_group *group_ref(struct uz_group *group);
struct uz_group *group_unref(struct uz_group *group);

/*
 * Call fn for every group, with a reference held and the registry lock
 * not held (fn may block briefly).  Stops early when fn returns non-zero
 * and returns that.
 */
int group_foreach(struct group_registry *registry,
		  int (*fn)(struct uz_group *group, void *userdata), void *userdata);

/* Pool bytes (compressed data held) and swap-file bytes used by the group now. */
static inline uint64_t group_pool_bytes(const struct uz_group *group)
{
	int64_t v = stats_read(group->stats, UZ_STAT_compressed_bytes);

	return v > 0 ? (uint64_t)v : 0;
}

static inline uint64_t group_swap_bytes(const struct uz_group *group)
{
	int64_t v = stats_read(group->stats, UZ_STAT_on_disk_pages);

	return v > 0 ? (uint64_t)v * 4096 : 0;
}
