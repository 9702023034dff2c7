// SPDX-License-Identifier: MIT
/*
 * struct daemon: creation and teardown of the shared state (pool, LRU,
 * statistics, fault threads), the drain that gives every page back before
 * the daemon exits, the one-screen statistics summary, and logging.
 *
 * Logging is in log.c.  Only top levels log: main.c and the handshake on
 * the main thread; never the fault path.  A client that leaves is queued
 * by its fault thread (daemon_client_left) and logged by the main thread
 * (daemon_log_departures).
 *
 * Groups and policies: daemon_client_resolve() maps a process to its
 * cgroup, its group and its policy; daemon_reassign_clients() does it
 * again for every client (every 2 s, and after a reload) and posts what
 * changed to the fault threads (client.assign, an atomic exchange, then
 * an eventfd kick).  The main thread never touches a client's
 * thread-owned fields; it keeps its own view (assigned_group,
 * assigned_policy) under clients_lock.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "cgroup/cgroup.h"
#include "client/client.h"
#include "config/config.h"
#include "daemon.h"
#include "fault/fault.h"
#include "fault/writeback.h"
#include "group/group.h"
#include "lru/lru.h"
#include "family/family.h"
#include "pool/pool.h"
#include "stats/stats.h"
#include "swap/swapfile.h"
#include "util.h"

/*
 * How long a fault thread may spin before sleeping (daemon/fault/fault.c,
 * fault_thread_wait): UZSWAPD_FAULT_SPIN_USEC, 0 to 10000, default 1000;
 * 0 turns spinning off.  It spins only while the host has a core to spare
 * (daemon/fault/spin.h).
 */
static unsigned daemon_fault_spin_usec(void)
{
	const char *value = getenv("UZSWAPD_FAULT_SPIN_USEC");
	char *end;
	unsigned long n;

	if (!value || !*value)
		return UZ_FAULT_SPIN_USEC_DEFAULT;
	errno = 0;
	n = strtoul(value, &end, 10);
	if (errno || *end || n > 10000 || *value == '-') {
		uz_log(LOG_WARNING, "UZSWAPD_FAULT_SPIN_USEC=\"%s\" is not a number 0..10000: using %u",
		       value, UZ_FAULT_SPIN_USEC_DEFAULT);
		return UZ_FAULT_SPIN_USEC_DEFAULT;
	}
	return (unsigned)n;
}

int daemon_new(struct daemon **out, const struct uz_policy *policy, unsigned nr_fault_threads)
{
	struct daemon *d;
	int r;

	if (!nr_fault_threads)
		return -EINVAL;
	d = calloc(1, sizeof(*d));
	if (!d)
		return -ENOMEM;
	d->policy = *policy;
	d->pool_max_size = UZ_UNLIMITED;
	d->max_clients = UZ_CLIENTS_MAX;
	d->max_clients_per_user = UZ_CLIENTS_PER_UID_MAX;
	d->max_regions_per_client = UZ_CLIENT_REGIONS_MAX;
	d->started_usec = uz_now_usec();
	d->fault_spin_usec = daemon_fault_spin_usec();
	group_registry_init(&d->groups);
	pthread_mutex_init(&d->clients_lock, NULL);
	uz_list_init(&d->clients);
	pthread_mutex_init(&d->departures_lock, NULL);
	d->departures_event_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (d->departures_event_fd < 0) {
		r = -errno;
		goto fail;
	}

	uz_list_init(&d->families);
	r = pool_totals_new(&d->pool_totals);
	if (r < 0)
		goto fail;
	r = stats_new(&d->stats);
	if (r < 0)
		goto fail;
	r = latency_hist_new(&d->fault_latency);
	if (r < 0)
		goto fail;
	r = latency_hist_new(&d->disk_fault_latency);
	if (r < 0)
		goto fail;
	d->fault_threads = calloc(nr_fault_threads, sizeof(*d->fault_threads));
	if (!d->fault_threads) {
		r = -ENOMEM;
		goto fail;
	}
	for (unsigned i = 0; i < nr_fault_threads; i++) {
		r = fault_thread_new(&d->fault_threads[i], d, i);
		if (r < 0)
			goto fail;
		d->nr_fault_threads++;
	}
	*out = d;
	return 0;

fail:
	daemon_free(d);
	return r;
}

struct daemon *daemon_free(struct daemon *d)
{
	if (!d)
		return NULL;
	for (unsigned i = 0; i < d->nr_fault_threads; i++)
		fault_thread_free(d->fault_threads[i]);
	free(d->fault_threads);
	swap_free(d->swap); /* after the fault threads: their swap_io are gone */
	latency_hist_free(d->disk_fault_latency);
	latency_hist_free(d->fault_latency);
	stats_free(d->stats);
	pool_totals_free(d->pool_totals);
	pthread_mutex_destroy(&d->clients_lock);
	for (; d->nr_departures; d->nr_departures--) {
		group_unref(d->departures[d->departures_head].group);
		d->departures_head = (d->departures_head + 1) % UZ_DEPARTURES_MAX;
	}
	pthread_mutex_destroy(&d->departures_lock);
	if (d->departures_event_fd >= 0)
		close(d->departures_event_fd);
	group_registry_destroy(&d->groups);
	config_free(d->config);
	cgroup_layout_free(d->cgroup_layout);
	free(d->swap_file);
	free(d->swap_uri);
	free(d);
	return NULL;
}

void daemon_client_left(struct daemon *d, const struct client *c, const char *reason)
{
	struct client_departure dep = {
	    .id = c->id,
	    .pid = c->pid,
	    .uid = c->uid,
	    .group = c->group ? group_ref(c->group) : NULL,
	    .reason = reason,
	    .zswpout = stats_read(c->stats, UZ_STAT_zswpout),
	    .zswpin = stats_read(c->stats, UZ_STAT_zswpin),
	    .stored_pages = stats_read(c->stats, UZ_STAT_stored_pages),
	};
	uint64_t one = 1;
	bool queued = false;

	memcpy(dep.comm, c->comm, sizeof(dep.comm));
	pthread_mutex_lock(&d->departures_lock);
	if (d->nr_departures < UZ_DEPARTURES_MAX) {
		d->departures[(d->departures_head + d->nr_departures) % UZ_DEPARTURES_MAX] = dep;
		d->nr_departures++;
		queued = true;
	} else {
		d->departures_dropped++;
	}
	pthread_mutex_unlock(&d->departures_lock);
	if (!queued)
		group_unref(dep.group);
	(void)!write(d->departures_event_fd, &one, sizeof(one));
}

void daemon_log_departures(struct daemon *d)
{
	uint64_t count;
	unsigned dropped;

	(void)!read(d->departures_event_fd, &count, sizeof(count));
	for (;;) {
		struct client_departure dep;
		struct uz_log_client who;
		char zswpout[48], zswpin[48], stored[48], reason[160];
		const char *fields[5] = {zswpout, zswpin, stored, reason, NULL};

		pthread_mutex_lock(&d->departures_lock);
		if (!d->nr_departures) {
			pthread_mutex_unlock(&d->departures_lock);
			break;
		}
		dep = d->departures[d->departures_head];
		d->departures_head = (d->departures_head + 1) % UZ_DEPARTURES_MAX;
		d->nr_departures--;
		pthread_mutex_unlock(&d->departures_lock);

		who = (struct uz_log_client){.id = dep.id,
					     .pid = dep.pid,
					     .uid = dep.uid,
					     .uid_set = true,
					     .comm = dep.comm,
					     .cgroup = dep.group ? dep.group->path : NULL};
		snprintf(zswpout, sizeof(zswpout), "UZSWAP_ZSWPOUT=%" PRId64, dep.zswpout);
		snprintf(zswpin, sizeof(zswpin), "UZSWAP_ZSWPIN=%" PRId64, dep.zswpin);
		snprintf(stored, sizeof(stored), "UZSWAP_STORED_PAGES=%" PRId64, dep.stored_pages);
		snprintf(reason, sizeof(reason), "UZSWAP_REASON=%s", dep.reason);
		uz_log_event(LOG_INFO, UZ_MESSAGE_CLIENT_LEFT, &who, fields,
			     "client %" PRIu64 " left: pid %d comm \"%s\" cgroup \"%s\": %s "
			     "(%" PRId64 " pages stored and %" PRId64 " faulted back in its life)",
			     dep.id, (int)dep.pid, dep.comm, who.cgroup ? who.cgroup : "?",
			     dep.reason, dep.zswpout, dep.zswpin);
		group_unref(dep.group);
	}
	pthread_mutex_lock(&d->departures_lock);
	dropped = d->departures_dropped;
	d->departures_dropped = 0;
	pthread_mutex_unlock(&d->departures_lock);
	if (dropped)
		uz_log(LOG_INFO, "%u more client%s left (not logged one by one: too many at once)",
		       dropped, dropped == 1 ? "" : "s");
}

void daemon_drain(struct daemon *d, uint64_t timeout_usec)
{
	uint64_t deadline = uz_now_usec() + timeout_usec;

	for (unsigned i = 0; i < d->nr_fault_threads; i++)
		fault_thread_drain(d->fault_threads[i], deadline);
	for (unsigned i = 0; i < d->nr_fault_threads; i++)
		fault_thread_join(d->fault_threads[i]);
}

int daemon_client_resolve(struct daemon *d, pid_t pid, struct uz_group **group,
			  struct uz_policy *policy)
{
	struct cgroup_info *info = NULL;
	const struct cgroup_memory_limits *limits = NULL;
	const struct policy_override *o = &d->policy_override;
	const char *path = "/";
	struct uz_policy p = d->policy;
	unsigned int from_file = 0;
	int r;

	if (d->cgroup_layout && cgroup_layout_memory_version(d->cgroup_layout) != CGROUP_NONE) {
		info = malloc(sizeof(*info));
		if (!info)
			return -ENOMEM;
		r = cgroup_of_pid(d->cgroup_layout, pid, info);
		if (r == -ESRCH) {
			free(info);
			return r;
		}
		if (r == 0) {
			path = info->path;
			limits = &info->limits;
		}
	}
	/*
	 * On a hybrid host a process has two paths: the memory controller's
	 * (v1) and the v2 one.  The memory controller's path is tried first:
	 * if a cgroup.d file other than one for "/" matches it, it is the
	 * client's cgroup.  Otherwise the v2 path is, if a file matches it.
	 * Limits (ResidentMax=80%) always come from the memory controller's
	 * cgroup: the v2 one has no memory files on such a host.
	 */
	if (d->config && info && path == info->path && info->v2_path[0] &&
	    strcmp(info->v2_path, info->path)) {
		const char *by_memory = config_match_cgroup(d->config, info->path);
		const char *by_v2 = config_match_cgroup(d->config, info->v2_path);

		if ((!by_memory || !strcmp(by_memory, "/")) && by_v2)
			path = info->v2_path;
	}
	if (d->config) {
		from_file = config_cgroup_keys(d->config, path);
		r = config_policy_for_cgroup(d->config, path, limits, &p);
		if (r < 0)
			p = d->policy;
	}
	/*
	 * The command line overrides [Defaults], key by key: a key a cgroup.d
	 * file of the client's chain sets is that file's.
	 */
#define FROM_FILE(key) (from_file & (1U << (key)))
	if (o->resident_max_set && !FROM_FILE(LIMIT_RESIDENT_MAX)) {
		p.resident_max = o->resident_max;
		if (!o->resident_low_set && !FROM_FILE(LIMIT_RESIDENT_LOW))
			p.resident_low = p.resident_max / 100 * UZ_DEFAULT_RESIDENT_LOW_PERCENT;
	}
	if (o->resident_low_set && !FROM_FILE(LIMIT_RESIDENT_LOW))
		p.resident_low = o->resident_low;
	p.resident_low = uz_min(p.resident_low, p.resident_max);
	if (o->compressor_set && !FROM_FILE(LIMIT_COMPRESSOR)) {
		p.algo = o->algo;
		p.level = o->level;
	}
	if (o->fault_around_set && !FROM_FILE(LIMIT_FAULT_AROUND))
		p.fault_around_max = o->fault_around;
	if (o->unit_set && !FROM_FILE(LIMIT_COMPRESSION_UNIT))
		p.unit_pages = o->unit_pages;
#undef FROM_FILE
	r = group_get(&d->groups, path, group);
	free(info);
	if (r < 0)
		return r;
	*policy = p;
	return 0;
}

struct reassign {
	uint64_t id;
	pid_t pid;
	struct fault_thread *owner;
};

/* RssAnon of pid in bytes, or -errno. */
static int64_t proc_anon_rss(pid_t pid)
{
	char path[64], line[256];
	int64_t bytes = -ENOENT;
	FILE *f;

	snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
	f = fopen(path, "re");
	if (!f)
		return -errno;
	while (fgets(line, sizeof(line), f)) {
		unsigned long long kb;

		if (sscanf(line, "RssAnon: %llu kB", &kb) == 1) {
			bytes = (int64_t)kb << 10;
			break;
		}
	}
	fclose(f);
	return bytes;
}

#define UNMANAGED_NOTICE_MIN	 (64ULL << 20)	    /* clients smaller than this are not judged */
#define UNMANAGED_NOTICE_AGE	 (10ULL * 1000000)  /* usec after joining */
#define UNMANAGED_NOTICE_PERCENT 50

struct sample {
	uint64_t id;
	pid_t pid;
	int64_t anon_rss;
};

void daemon_sample_clients(struct daemon *d)
{
	struct sample *list;
	unsigned n = 0;

	/* Snapshot, read /proc without the lock, then write back by id. */
	pthread_mutex_lock(&d->clients_lock);
	list = calloc(d->nr_clients ? d->nr_clients : 1, sizeof(*list));
	if (list)
		for (struct uz_list *i = d->clients.next; i != &d->clients; i = i->next) {
			struct client *c = uz_container_of(i, struct client, link);

			list[n++] = (struct sample){c->id, c->pid, 0};
		}
	pthread_mutex_unlock(&d->clients_lock);
	if (!list)
		return;
	for (unsigned i = 0; i < n; i++)
		list[i].anon_rss = proc_anon_rss(list[i].pid);

	for (unsigned k = 0; k < n; k++) {
		char comm[17] = "";
		uint64_t managed = 0, total = 0;
		bool notice = false;
		pid_t pid = 0;

		if (list[k].anon_rss < 0)
			continue;
		pthread_mutex_lock(&d->clients_lock);
		for (struct uz_list *i = d->clients.next; i != &d->clients; i = i->next) {
			struct client *c = uz_container_of(i, struct client, link);
			uint64_t evicted;

			if (c->id != list[k].id)
				continue;
			c->anon_rss_bytes = (uint64_t)list[k].anon_rss;
			managed = client_managed_pages(c) * UZ_PAGE_SIZE;
			evicted = (uint64_t)uz_max(stats_read(c->stats, UZ_STAT_stored_pages) +
							   stats_read(c->stats, UZ_STAT_on_disk_pages),
						   (int64_t)0) *
				  UZ_PAGE_SIZE;
			total = c->anon_rss_bytes + evicted;
			if (!c->unmanaged_noticed && total >= UNMANAGED_NOTICE_MIN &&
			    uz_now_usec() - c->joined_usec >= UNMANAGED_NOTICE_AGE &&
			    managed * 100 < total * UNMANAGED_NOTICE_PERCENT) {
				c->unmanaged_noticed = notice = true;
				pid = c->pid;
				memcpy(comm, c->comm, sizeof(comm));
			}
			break;
		}
		pthread_mutex_unlock(&d->clients_lock);
		if (notice)
			uz_log(LOG_NOTICE,
			       "client %" PRIu64 " (pid %d comm \"%s\"): only %" PRIu64 " of %" PRIu64
			       " MiB of its anonymous memory is managed; its libuzswap says why on "
			       "its stderr (mlocked, file-backed copy-on-write, [stack], small or "
			       "refused mappings)",
			       list[k].id, (int)pid, comm, managed >> 20, total >> 20);
	}
	free(list);
}

unsigned daemon_reassign_clients(struct daemon *d, bool force)
{
	struct reassign *list;
	unsigned n = 0, changed = 0;
	bool *kick;

	/* Snapshot (no system call under clients_lock), resolve, then post. */
	pthread_mutex_lock(&d->clients_lock);
	list = calloc(d->nr_clients ? d->nr_clients : 1, sizeof(*list));
	if (list)
		for (struct uz_list *i = d->clients.next; i != &d->clients; i = i->next) {
			struct client *c = uz_container_of(i, struct client, link);

			list[n++] = (struct reassign){c->id, c->pid, c->owner};
		}
	pthread_mutex_unlock(&d->clients_lock);
	kick = calloc(d->nr_fault_threads, sizeof(*kick));
	if (!list || !kick)
		goto out;

	for (unsigned i = 0; i < n; i++) {
		struct uz_group *group;
		struct uz_policy policy;
		struct client_assign *a;

		if (daemon_client_resolve(d, list[i].pid, &group, &policy) < 0)
			continue;
		a = calloc(1, sizeof(*a));
		if (!a) {
			group_unref(group);
			continue;
		}
		a->group = group;
		a->policy = policy;
		pthread_mutex_lock(&d->clients_lock);
		for (struct uz_list *l = d->clients.next; l != &d->clients; l = l->next) {
			struct client *c = uz_container_of(l, struct client, link);

			if (c->id != list[i].id)
				continue;
			if (!force && c->assigned_group == group &&
			    memcmp(&c->assigned_policy, &policy, sizeof(policy)) == 0)
				break;
			group_unref(c->assigned_group);
			c->assigned_group = group_ref(group);
			c->assigned_policy = policy;
			/* Keep a shrink still pending in a replaced assignment. */
			{
				struct client_assign *old =
				    __atomic_exchange_n(&c->assign, a, __ATOMIC_ACQ_REL);

				if (old)
					a->shrink_pages += old->shrink_pages;
				client_assign_free(old);
			}
			a = NULL;
			changed++;
			for (unsigned t = 0; t < d->nr_fault_threads; t++)
				if (d->fault_threads[t] == c->owner)
					kick[t] = true;
			break;
		}
		pthread_mutex_unlock(&d->clients_lock);
		client_assign_free(a);
	}
	for (unsigned t = 0; t < d->nr_fault_threads; t++)
		if (kick[t])
			fault_thread_kick_assign(d->fault_threads[t]);
out:
	free(list);
	free(kick);
	return changed;
}

int daemon_shrink_group(struct daemon *d, struct uz_group *group, uint64_t bytes,
			uint64_t *queued)
{
	uint64_t pages = (bytes + UZ_PAGE_SIZE - 1) / UZ_PAGE_SIZE, total = 0, asked = 0;
	unsigned n = 0, nr_owners = 0;
	bool *kick = calloc(d->nr_fault_threads, sizeof(*kick));
	bool *owner = calloc(d->nr_fault_threads, sizeof(*owner));

	if (!kick || !owner) {
		free(kick);
		free(owner);
		return -ENOMEM;
	}
	pthread_mutex_lock(&d->clients_lock);
	for (struct uz_list *i = d->clients.next; i != &d->clients; i = i->next) {
		struct client *c = uz_container_of(i, struct client, link);

		if (c->assigned_group != group)
			continue;
		total += (uint64_t)uz_max(stats_read(c->stats, UZ_STAT_resident_pages), 0);
		n++;
		for (unsigned t = 0; t < d->nr_fault_threads; t++)
			if (d->fault_threads[t] == c->owner && !owner[t]) {
				owner[t] = true;
				nr_owners++;
			}
	}
	for (struct uz_list *i = d->clients.next; i != &d->clients && total; i = i->next) {
		struct client *c = uz_container_of(i, struct client, link);
		uint64_t resident = (uint64_t)uz_max(stats_read(c->stats, UZ_STAT_resident_pages), 0);
		uint64_t share;
		struct client_assign *a, *old;

		if (c->assigned_group != group || !resident)
			continue;
		/* In proportion of resident pages, never more than the client has. */
		share = uz_min(resident, (uint64_t)((double)pages * resident / total + 0.5));
		if (!share)
			continue;
		a = calloc(1, sizeof(*a));
		if (!a)
			break;
		a->group = group_ref(c->assigned_group);
		a->policy = c->assigned_policy;
		a->shrink_pages = share;
		old = __atomic_exchange_n(&c->assign, a, __ATOMIC_ACQ_REL);
		if (old)
			a->shrink_pages += old->shrink_pages;
		client_assign_free(old);
		asked += share;
		for (unsigned t = 0; t < d->nr_fault_threads; t++)
			if (d->fault_threads[t] == c->owner)
				kick[t] = true;
	}
	pthread_mutex_unlock(&d->clients_lock);
	for (unsigned t = 0; t < d->nr_fault_threads; t++)
		if (kick[t])
			fault_thread_kick_assign(d->fault_threads[t]);
	/*
	 * And write back up to `bytes` of the group's stored pages (split over
	 * the threads that own its clients; each takes from its LRU of the
	 * group, bounded by the shrinker count).
	 */
	for (unsigned t = 0; t < d->nr_fault_threads && d->swap; t++)
		if (owner[t])
			fault_thread_request_shrink(d->fault_threads[t], group, bytes / nr_owners);
	free(kick);
	free(owner);
	(void)n;
	*queued = asked * UZ_PAGE_SIZE;
	return 0;
}

bool daemon_threads_alive(struct daemon *d, uint64_t max_age_usec)
{
	static uint64_t last_beat[64], last_change[64];
	uint64_t now = uz_now_usec();
	bool alive = true;

	/* Main thread only (the watchdog timer): the statics are its memory. */
	for (unsigned i = 0; i < d->nr_fault_threads && i < UZ_ARRAY_SIZE(last_beat); i++) {
		uint64_t beat = fault_thread_heartbeat(d->fault_threads[i]);

		if (beat != last_beat[i] || !last_change[i]) {
			last_beat[i] = beat;
			last_change[i] = now;
		} else if (now - last_change[i] > max_age_usec) {
			alive = false;
		}
	}
	return alive;
}

static void format_size(char *buf, size_t cap, double bytes)
{
	static const char *const units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
	unsigned u = 0;

	while (bytes >= 1024 && u + 1 < UZ_ARRAY_SIZE(units)) {
		bytes /= 1024;
		u++;
	}
	snprintf(buf, cap, u ? "%.1f %s" : "%.0f %s", bytes, units[u]);
}

void daemon_note_page_error(struct daemon *d, enum uz_page_error_kind kind, int pid, uint64_t addr)
{
	struct uz_page_error_note *note = &d->page_errors[kind];
	unsigned expected = 0;

	if (!__atomic_compare_exchange_n(&note->state, &expected, 1, false, __ATOMIC_ACQUIRE,
					 __ATOMIC_RELAXED))
		return;
	note->pid = pid;
	note->addr = addr;
	__atomic_store_n(&note->state, 2, __ATOMIC_RELEASE);
}

#define SWAP_COLLECT_OWNERS 64 /* gone owners removed per call */

struct owner_scan {
	struct daemon *daemon;
	uint64_t gone[SWAP_COLLECT_OWNERS];
	unsigned nr_gone, nr_left;
};

static int owner_scan_one(const struct swap_owner *owner, void *userdata)
{
	struct owner_scan *scan = userdata;
	bool listed = false;

	pthread_mutex_lock(&scan->daemon->clients_lock);
	for (struct uz_list *i = scan->daemon->families.next; i != &scan->daemon->families;
	     i = i->next)
		if (uz_container_of(i, struct family, link)->swap_owner == owner->token)
			listed = true;
	pthread_mutex_unlock(&scan->daemon->clients_lock);
	if (!listed && swap_owner_alive(owner) == 0 && scan->nr_gone < SWAP_COLLECT_OWNERS)
		scan->gone[scan->nr_gone++] = owner->token;
	else
		scan->nr_left++;
	return 0;
}

void daemon_swap_collect(struct daemon *d)
{
	struct swap *swap = __atomic_load_n(&d->swap, __ATOMIC_ACQUIRE);
	struct owner_scan scan = {.daemon = d};
	struct swap_stats stats;
	unsigned clients;
	uint64_t freed = 0;

	if (!swap)
		return;
	(void)swap_owner_foreach(swap, owner_scan_one, &scan);
	for (unsigned i = 0; i < scan.nr_gone; i++)
		(void)swap_owner_remove(swap, scan.gone[i]);
	pthread_mutex_lock(&d->clients_lock);
	clients = d->nr_clients;
	pthread_mutex_unlock(&d->clients_lock);
	swap_get_stats(swap, &stats);
	if (clients || scan.nr_left || !stats.slots_in_use) {
		d->swap_idle_checks = 0;
		return;
	}
	/* Twice in a row: writes in flight when the last client left have completed. */
	if (++d->swap_idle_checks < 2)
		return;
	d->swap_idle_checks = 0;
	if (swap_collect_all(swap, &freed) == 0 && freed)
		uz_log(LOG_NOTICE,
		       "swap file: %" PRIu64 " records nobody can claim any more freed (left "
		       "by a killed uzswapd, or by clients that never came back)",
		       freed);
}

void daemon_log_page_errors(struct daemon *d)
{
	for (unsigned kind = 0; kind < UZ_PAGE_ERROR__COUNT; kind++) {
		struct uz_page_error_note *note = &d->page_errors[kind];

		if (__atomic_load_n(&note->state, __ATOMIC_ACQUIRE) != 2)
			continue;
		if (kind == UZ_PAGE_ERROR_RESIDENT_MISSING)
			uz_log(LOG_ERR,
			       "page 0x%" PRIx64 " of pid %d faulted although uzswapd had it as "
			       "present: it was served zeros.  This is a bug of uzswapd or of the "
			       "kernel; please report it with this log.  %" PRId64 " so far, further "
			       "ones only counted (resident_missing_faults)",
			       note->addr, note->pid,
			       stats_read(d->stats, UZ_STAT_resident_missing_faults));
		else if (kind == UZ_PAGE_ERROR_SWAP_CHECKSUM)
			uz_log(LOG_ERR,
			       "swap file \"%s\": a record read back did not verify (checksum, "
			       "owner or length): page 0x%" PRIx64 " of pid %d poisoned (SIGBUS on "
			       "access); %" PRId64 " so far, further ones only counted "
			       "(swap_checksum_errors)",
			       d->swap_file ? d->swap_file : "", note->addr, note->pid,
			       stats_read(d->stats, UZ_STAT_swap_checksum_errors));
		else
			uz_log(LOG_ERR,
			       "swap file \"%s\": read error: page 0x%" PRIx64 " of pid %d "
			       "poisoned (SIGBUS on access); %" PRId64 " so far, further errors "
			       "only counted (io_errors)",
			       d->swap_file ? d->swap_file : "", note->addr, note->pid,
			       stats_read(d->stats, UZ_STAT_io_errors));
		__atomic_store_n(&note->state, 3, __ATOMIC_RELAXED);
	}
}

void daemon_print_summary(struct daemon *d, FILE *f)
{
	int64_t v[UZ_STAT__COUNT];
	struct pool_usage usage;
	unsigned nr_clients;
	char stored[32], compressed[32], pool[32], resident[32];
	uint64_t compressible, faults, samples;
	double ratio;

	stats_read_all(d->stats, v);
	pool_totals_get(d->pool_totals, &usage);
	pthread_mutex_lock(&d->clients_lock);
	nr_clients = d->nr_clients;
	pthread_mutex_unlock(&d->clients_lock);

	compressible = (uint64_t)(v[UZ_STAT_stored_pages] - v[UZ_STAT_same_filled_pages]);
	ratio = v[UZ_STAT_compressed_bytes] > 0
		    ? (double)compressible * UZ_PAGE_SIZE / (double)v[UZ_STAT_compressed_bytes]
		    : 0.0;
	/* pages put back ahead (fault-around) are in zswpin but were no fault */
	faults = (uint64_t)(v[UZ_STAT_zero_fill_faults] + v[UZ_STAT_zswpin] -
			    v[UZ_STAT_faultaround_pages] + v[UZ_STAT_inflight_faults] +
			    v[UZ_STAT_disk_swapins]);
	samples = latency_hist_count(d->fault_latency);
	format_size(stored, sizeof(stored), (double)v[UZ_STAT_stored_pages] * UZ_PAGE_SIZE);
	format_size(compressed, sizeof(compressed), (double)v[UZ_STAT_compressed_bytes]);
	format_size(pool, sizeof(pool), (double)usage.total_size);
	format_size(resident, sizeof(resident), (double)v[UZ_STAT_resident_pages] * UZ_PAGE_SIZE);

	fprintf(f, "uzswapd statistics: %u client%s\n", nr_clients, nr_clients == 1 ? "" : "s");
	fprintf(f, "  resident      %12" PRId64 " pages (%s)\n", v[UZ_STAT_resident_pages],
		resident);
	fprintf(f, "  stored        %12" PRId64 " pages (%s), same-filled %" PRId64 "\n",
		v[UZ_STAT_stored_pages], stored, v[UZ_STAT_same_filled_pages]);
	fprintf(f, "  compressed    %12s  pool %s in %" PRIu64 " chunks, ratio %.2f\n", compressed,
		pool, usage.chunks, ratio);
	fprintf(f, "  zswpout       %12" PRId64 "   zswpin %" PRId64 "\n", v[UZ_STAT_zswpout],
		v[UZ_STAT_zswpin]);
	fprintf(f, "  faults        %12" PRIu64 "   zero-fill %" PRId64 ", in-flight %" PRId64 "\n",
		faults, v[UZ_STAT_zero_fill_faults], v[UZ_STAT_inflight_faults]);
	fprintf(f, "  fault-around  %12" PRId64 " pages put back ahead, hits %" PRId64 "\n",
		v[UZ_STAT_faultaround_pages], v[UZ_STAT_faultaround_hits]);
	fprintf(f,
		"  units         %12" PRId64 " stored (4 pages each), %" PRId64
		" pages put back with their unit, %" PRId64 " stored alone again\n",
		v[UZ_STAT_unit_stores], v[UZ_STAT_unit_restored_pages],
		v[UZ_STAT_unit_split_pages]);
	fprintf(f, "  evictions     %12" PRId64 " batches, %" PRId64 " pages not moved\n",
		v[UZ_STAT_evict_requests], v[UZ_STAT_evict_failed_pages]);
	fprintf(f,
		"  rejects       poor %" PRId64 ", compress %" PRId64 ", alloc %" PRId64
		", pool limit %" PRId64 ", decompress fail %" PRId64 "\n",
		v[UZ_STAT_reject_compress_poor], v[UZ_STAT_reject_compress_fail],
		v[UZ_STAT_reject_alloc_fail], v[UZ_STAT_pool_limit_hit],
		v[UZ_STAT_decompress_fail]);
	if (samples)
		fprintf(f, "  pool faults   %12" PRIu64 "   latency p50 %.1f us, p99 %.1f us\n",
			samples, latency_hist_percentile(d->fault_latency, 50) / 1000.0,
			latency_hist_percentile(d->fault_latency, 99) / 1000.0);
	else
		fprintf(f, "  pool faults   %12d\n", 0);
	fprintf(f, "  compaction    %12" PRId64 " objects moved, pool/compressed %.2f\n",
		v[UZ_STAT_compacted_objects],
		v[UZ_STAT_compressed_bytes] > 0
		    ? (double)usage.total_size / (double)v[UZ_STAT_compressed_bytes]
		    : 0.0);
	if (d->swap) {
		struct swap_stats ss;
		char on_disk[32];

		swap_get_stats(d->swap, &ss);
		format_size(on_disk, sizeof(on_disk), (double)v[UZ_STAT_swap_bytes_on_disk]);
		fprintf(f,
			"  writeback     %12" PRId64 " pages (zswpwb) in %" PRId64
			" batches, rotations %" PRId64 ", io errors %" PRId64
			", checksum errors %" PRId64 "\n",
			v[UZ_STAT_zswpwb], v[UZ_STAT_writeback_batches],
			v[UZ_STAT_second_chance_rotations], v[UZ_STAT_io_errors],
			v[UZ_STAT_swap_checksum_errors]);
		fprintf(f, "  on disk       %12" PRId64 " pages (%s), %.0f bytes/page\n",
			v[UZ_STAT_on_disk_pages], on_disk,
			v[UZ_STAT_on_disk_pages] > 0
			    ? (double)v[UZ_STAT_swap_bytes_on_disk] / (double)v[UZ_STAT_on_disk_pages]
			    : 0.0);
		samples = d->disk_fault_latency ? latency_hist_count(d->disk_fault_latency) : 0;
		if (samples)
			fprintf(f,
				"  disk swapins  %12" PRId64 "   latency p50 %.1f us, p99 %.1f us\n",
				v[UZ_STAT_disk_swapins],
				latency_hist_percentile(d->disk_fault_latency, 50) / 1000.0,
				latency_hist_percentile(d->disk_fault_latency, 99) / 1000.0);
		else
			fprintf(f, "  disk swapins  %12" PRId64 "\n", v[UZ_STAT_disk_swapins]);
		fprintf(f, "  swap %-8s %12" PRIu64 " bytes written, %" PRIu64 " read\n",
			swap_backend_name((enum swap_backend_kind)d->swap_backend),
			ss.bytes_written, ss.bytes_read);
		if (d->swap_backend == SWAP_BACKEND_NBD)
			fprintf(f,
				"  backend       %12" PRIu64 " reconnects, %" PRIu64
				" errors, %" PRIu64 " read timeouts, %" PRIu64
				" quarantined slots\n",
				ss.backend_reconnects, ss.backend_errors, ss.read_timeouts,
				ss.quarantined_slots);
	}
	fflush(f);
}
