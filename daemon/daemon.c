// SPDX-License-Identifier: MIT
/*
 * struct daemon: creation and teardown of the shared state (pool, LRU,
 * statistics, fault threads), the drain that gives every page back before
 * the daemon exits, the one-screen statistics summary, and logging.
 *
 * Logging goes to stderr with a syslog-style "<N>" prefix, which journald
 * understands when stderr is connected to it, so the same lines carry
 * their level under systemd.  Only top levels log: main.c and the
 * handshake on the main thread; never the fault path.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "daemon.h"
#include "fault/fault.h"
#include "lru/lru.h"
#include "pool/pool.h"
#include "stats/stats.h"
#include "util.h"

int uz_log_max_level = LOG_INFO;

void uz_log(int level, const char *fmt, ...)
{
	char line[1024];
	va_list ap;
	int saved_errno = errno;

	if (level > uz_log_max_level)
		return;
	va_start(ap, fmt);
	errno = saved_errno; /* %m */
	vsnprintf(line, sizeof(line), fmt, ap);
	va_end(ap);
	fprintf(stderr, "<%d>uzswapd: %s\n", level, line);
	errno = saved_errno;
}

int uz_log_parse_level(const char *name)
{
	static const char *const names[] = {
		[LOG_EMERG] = "emerg", [LOG_ALERT] = "alert",   [LOG_CRIT] = "crit",
		[LOG_ERR] = "err",     [LOG_WARNING] = "warning", [LOG_NOTICE] = "notice",
		[LOG_INFO] = "info",   [LOG_DEBUG] = "debug",
	};

	for (int i = 0; i < (int)UZ_ARRAY_SIZE(names); i++)
		if (strcasecmp(name, names[i]) == 0)
			return i;
	if (strcasecmp(name, "error") == 0)
		return LOG_ERR;
	if (strcasecmp(name, "warn") == 0)
		return LOG_WARNING;
	if (name[0] >= '0' && name[0] <= '7' && name[1] == 0)
		return name[0] - '0';
	return -EINVAL;
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
	pthread_mutex_init(&d->clients_lock, NULL);
	uz_list_init(&d->clients);

	r = pool_new(&d->pool);
	if (r < 0)
		goto fail;
	r = lru_new(&d->lru);
	if (r < 0)
		goto fail;
	r = stats_new(&d->stats);
	if (r < 0)
		goto fail;
	r = latency_hist_new(&d->fault_latency);
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
	latency_hist_free(d->fault_latency);
	stats_free(d->stats);
	lru_free(d->lru);
	pool_free(d->pool);
	pthread_mutex_destroy(&d->clients_lock);
	free(d);
	return NULL;
}

void daemon_drain(struct daemon *d, uint64_t timeout_usec)
{
	uint64_t deadline = uz_now_usec() + timeout_usec;

	for (unsigned i = 0; i < d->nr_fault_threads; i++)
		fault_thread_drain(d->fault_threads[i], deadline);
	for (unsigned i = 0; i < d->nr_fault_threads; i++)
		fault_thread_join(d->fault_threads[i]);
}

static void format_size(char *buf, size_t cap, double bytes)
{
	static const char *const units[] = { "B", "KiB", "MiB", "GiB", "TiB" };
	unsigned u = 0;

	while (bytes >= 1024 && u + 1 < UZ_ARRAY_SIZE(units)) {
		bytes /= 1024;
		u++;
	}
	snprintf(buf, cap, u ? "%.1f %s" : "%.0f %s", bytes, units[u]);
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
	pool_get_usage(d->pool, &usage);
	pthread_mutex_lock(&d->clients_lock);
	nr_clients = d->nr_clients;
	pthread_mutex_unlock(&d->clients_lock);

	compressible = (uint64_t)(v[UZ_STAT_stored_pages] - v[UZ_STAT_same_filled_pages]);
	ratio = v[UZ_STAT_compressed_bytes] > 0 ?
			(double)compressible * UZ_PAGE_SIZE / (double)v[UZ_STAT_compressed_bytes] :
			0.0;
	faults = (uint64_t)(v[UZ_STAT_zero_fill_faults] + v[UZ_STAT_zswpin] +
			    v[UZ_STAT_inflight_faults] + v[UZ_STAT_disk_swapins]);
	samples = latency_hist_count(d->fault_latency);
	format_size(stored, sizeof(stored), (double)v[UZ_STAT_stored_pages] * UZ_PAGE_SIZE);
	format_size(compressed, sizeof(compressed), (double)v[UZ_STAT_compressed_bytes]);
	format_size(pool, sizeof(pool), (double)usage.total_size);
	format_size(resident, sizeof(resident), (double)v[UZ_STAT_resident_pages] * UZ_PAGE_SIZE);

	fprintf(f, "uzswapd statistics: %u client%s\n", nr_clients, nr_clients == 1 ? "" : "s");
	fprintf(f, "  resident      %12" PRId64 " pages (%s)\n", v[UZ_STAT_resident_pages], resident);
	fprintf(f, "  stored        %12" PRId64 " pages (%s), same-filled %" PRId64 "\n",
		v[UZ_STAT_stored_pages], stored, v[UZ_STAT_same_filled_pages]);
	fprintf(f, "  compressed    %12s  pool %s in %" PRIu64 " chunks, ratio %.2f\n", compressed,
		pool, usage.chunks, ratio);
	fprintf(f, "  zswpout       %12" PRId64 "   zswpin %" PRId64 "\n", v[UZ_STAT_zswpout],
		v[UZ_STAT_zswpin]);
	fprintf(f, "  faults        %12" PRIu64 "   zero-fill %" PRId64 ", in-flight %" PRId64 "\n",
		faults, v[UZ_STAT_zero_fill_faults], v[UZ_STAT_inflight_faults]);
	fprintf(f, "  evictions     %12" PRId64 " batches, %" PRId64 " pages not moved\n",
		v[UZ_STAT_evict_requests], v[UZ_STAT_evict_failed_pages]);
	fprintf(f, "  rejects       poor %" PRId64 ", compress %" PRId64 ", alloc %" PRId64
		   ", pool limit %" PRId64 ", decompress fail %" PRId64 "\n",
		v[UZ_STAT_reject_compress_poor], v[UZ_STAT_reject_compress_fail],
		v[UZ_STAT_reject_alloc_fail], v[UZ_STAT_pool_limit_hit], v[UZ_STAT_decompress_fail]);
	if (samples)
		fprintf(f, "  pool faults   %12" PRIu64 "   latency p50 %.1f us, p99 %.1f us\n",
			samples, latency_hist_percentile(d->fault_latency, 50) / 1000.0,
			latency_hist_percentile(d->fault_latency, 99) / 1000.0);
	else
		fprintf(f, "  pool faults   %12d\n", 0);
	fflush(f);
}
