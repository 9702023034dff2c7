// SPDX-License-Identifier: MIT
/*
 * The group registry: a list of struct uz_group keyed by cgroup path.
 * There are few groups (one per cgroup with clients) and lookups happen
 * at handshakes, on the 2-second cgroup re-check and on control requests,
 * never on the fault path, so a list under a mutex is enough.  See
 * group.h for the lifetime rules.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "group/group.h"

void group_registry_init(struct group_registry *registry)
{
	pthread_mutex_init(&registry->lock, NULL);
	uz_list_init(&registry->groups);
	registry->nr_groups = 0;
}

void group_registry_destroy(struct group_registry *registry)
{
	pthread_mutex_lock(&registry->lock);
	while (!uz_list_empty(&registry->groups)) {
		struct uz_group *g = uz_container_of(registry->groups.next, struct uz_group, link);

		uz_list_del(&g->link);
		group_unref(g);
	}
	registry->nr_groups = 0;
	pthread_mutex_unlock(&registry->lock);
	pthread_mutex_destroy(&registry->lock);
}

struct uz_group *group_ref(struct uz_group *group)
{
	if (group)
		__atomic_fetch_add(&group->refcount, 1, __ATOMIC_RELAXED);
	return group;
}

struct uz_group *group_unref(struct uz_group *group)
{
	if (!group || __atomic_sub_fetch(&group->refcount, 1, __ATOMIC_ACQ_REL) > 0)
		return NULL;
	stats_free(group->stats);
	free(group->path);
	free(group);
	return NULL;
}

static struct uz_group *find_locked(struct group_registry *registry, const char *path)
{
	for (struct uz_list *i = registry->groups.next; i != &registry->groups; i = i->next) {
		struct uz_group *g = uz_container_of(i, struct uz_group, link);

		if (strcmp(g->path, path) == 0)
			return g;
	}
	return NULL;
}

struct uz_group *group_find(struct group_registry *registry, const char *path)
{
	struct uz_group *g;

	pthread_mutex_lock(&registry->lock);
	g = group_ref(find_locked(registry, path));
	pthread_mutex_unlock(&registry->lock);
	return g;
}

static int group_new(const char *path, struct uz_group **out)
{
	struct uz_group *g = calloc(1, sizeof(*g));
	int r;

	if (!g)
		return -ENOMEM;
	uz_list_init(&g->link);
	g->refcount = 1;
	g->path = strdup(path);
	if (!g->path) {
		free(g);
		return -ENOMEM;
	}
	r = stats_new(&g->stats);
	if (r < 0) {
		free(g->path);
		free(g);
		return r;
	}
	*out = g;
	return 0;
}

int group_get(struct group_registry *registry, const char *path, struct uz_group **out)
{
	struct uz_group *g, *fresh = NULL;
	int r;

	g = group_find(registry, path);
	if (g) {
		*out = g;
		return 0;
	}
	/* Allocate outside the lock, then insert unless someone else did. */
	r = group_new(path, &fresh);
	if (r < 0)
		return r;
	pthread_mutex_lock(&registry->lock);
	g = find_locked(registry, path);
	if (!g && registry->nr_groups >= GROUPS_MAX && strcmp(path, GROUP_OVERFLOW_PATH) != 0) {
		pthread_mutex_unlock(&registry->lock);
		group_unref(fresh);
		return group_get(registry, GROUP_OVERFLOW_PATH, out);
	}
	if (!g) {
		g = fresh;
		fresh = NULL;
		uz_list_add_tail(&registry->groups, &g->link);
		registry->nr_groups++;
	}
	group_ref(g);
	pthread_mutex_unlock(&registry->lock);
	group_unref(fresh);
	*out = g;
	return 0;
}

int group_foreach(struct group_registry *registry,
		  int (*fn)(struct uz_group *group, void *userdata), void *userdata)
{
	struct uz_group **all;
	unsigned n = 0;
	int r = 0;

	pthread_mutex_lock(&registry->lock);
	all = calloc(registry->nr_groups ? registry->nr_groups : 1, sizeof(*all));
	if (!all) {
		pthread_mutex_unlock(&registry->lock);
		return -ENOMEM;
	}
	for (struct uz_list *i = registry->groups.next; i != &registry->groups; i = i->next)
		all[n++] = group_ref(uz_container_of(i, struct uz_group, link));
	pthread_mutex_unlock(&registry->lock);

	for (unsigned i = 0; i < n; i++) {
		if (!r)
			r = fn(all[i], userdata);
		group_unref(all[i]);
	}
	free(all);
	return r;
}
