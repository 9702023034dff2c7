/* SPDX-License-Identifier: MIT */
/*
 * control_json_stats_block() from the core's live objects.  Kept apart
 * from json.c so that only a program that calls it (the daemon) needs the
 * core library's stats implementation at link time.
 */
#include "control/control.h"

json_object *control_json_stats_block_from(const struct stats *stats,
					   const struct latency_hist *hist,
					   const struct control_pool_usage *pool)
{
	struct control_latency latency;
	int64_t values[UZ_STAT__COUNT];

	stats_read_all(stats, values);
	if (hist) {
		latency = (struct control_latency){
		    .count = latency_hist_count(hist),
		    .p50_ns = latency_hist_percentile(hist, 50),
		    .p90_ns = latency_hist_percentile(hist, 90),
		    .p99_ns = latency_hist_percentile(hist, 99),
		    .p999_ns = latency_hist_percentile(hist, 99.9),
		};
	}
	return control_json_stats_block(values, hist ? &latency : NULL, pool);
}
