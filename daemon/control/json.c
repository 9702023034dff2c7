/* SPDX-License-Identifier: MIT */
/*
 * Building the statistics JSON of the control protocol (docs/CONTROL.md),
 * so the daemon's callbacks and the CLI agree on one schema.  Names, kinds
 * and order come from UZ_STATS_LIST in stats.h; this file needs only that
 * header, not the core library, so a caller that already has the numbers
 * (a test, a fake daemon) links nothing else.
 */
#include <errno.h>
#include <string.h>

#include "control/control.h"
#include "util.h"

json_object *control_json_u64(uint64_t value)
{
	if (value == UINT64_MAX)
		return json_object_new_null();
	if (value > INT64_MAX)
		return json_object_new_uint64(value);
	return json_object_new_int64((int64_t)value);
}

/* A NULL value is JSON null in json-c, so it cannot signal a failed allocation. */
static int add(json_object *object, const char *key, json_object *value)
{
	return json_object_object_add(object, key, value) < 0 ? -ENOMEM : 0;
}

/*
 * Compression ratio: uncompressed bytes of the pages that went through the
 * compressor (stored pages minus same-filled ones) over the compressed
 * bytes that hold them.  null while nothing is stored.
 */
static json_object *compression_ratio(const int64_t values[UZ_STAT__COUNT])
{
	int64_t compressed_pages = values[UZ_STAT_stored_pages] - values[UZ_STAT_same_filled_pages];
	int64_t compressed_bytes = values[UZ_STAT_compressed_bytes];

	if (compressed_pages <= 0 || compressed_bytes <= 0)
		return json_object_new_null();
	return json_object_new_double((double)compressed_pages * (double)UZ_PAGE_SIZE /
				      (double)compressed_bytes);
}

json_object *control_json_stats_block(const int64_t values[UZ_STAT__COUNT],
				      const struct control_latency *latency,
				      const struct control_pool_usage *pool)
{
	json_object *block, *counters, *gauges, *child;
	int r = 0;

	block = json_object_new_object();
	counters = json_object_new_object();
	gauges = json_object_new_object();
	if (!block || !counters || !gauges)
		goto out_put;

#define UZ_STAT_JSON(name, kind, help)                                                             \
	if (!r)                                                                                    \
		r = add(UZ_STAT_##kind == UZ_STAT_COUNTER ? counters : gauges, #name,              \
			json_object_new_int64(values[UZ_STAT_##name]));
	UZ_STATS_LIST(UZ_STAT_JSON)
#undef UZ_STAT_JSON
	if (r < 0)
		goto out_put;
	r = add(block, "counters", counters);
	counters = NULL;
	if (!r)
		r = add(block, "gauges", gauges);
	gauges = NULL;
	if (!r)
		r = add(block, "compression_ratio", compression_ratio(values));
	if (!r && pool) {
		child = json_object_new_object();
		if (!child)
			goto out_put;
		r = add(block, "pool", child);
		if (!r)
			r = add(child, "pool_total_size", control_json_u64(pool->pool_total_size));
		if (!r)
			r = add(child, "limit", control_json_u64(pool->limit));
	}
	if (!r && latency) {
		child = json_object_new_object();
		if (!child)
			goto out_put;
		r = add(block, "fault_latency_ns", child);
		if (!r)
			r = add(child, "count", control_json_u64(latency->count));
		if (!r)
			r = add(child, "p50", control_json_u64(latency->p50_ns));
		if (!r)
			r = add(child, "p90", control_json_u64(latency->p90_ns));
		if (!r)
			r = add(child, "p99", control_json_u64(latency->p99_ns));
		if (!r)
			r = add(child, "p999", control_json_u64(latency->p999_ns));
	}
	if (r < 0)
		goto out_put;
	return block;
out_put:
	json_object_put(counters);
	json_object_put(gauges);
	json_object_put(block);
	return NULL;
}

static json_object *latency_json(const struct control_latency *latency)
{
	json_object *o = json_object_new_object();

	if (!o || add(o, "count", control_json_u64(latency->count)) < 0 ||
	    add(o, "p50", control_json_u64(latency->p50_ns)) < 0 ||
	    add(o, "p99", control_json_u64(latency->p99_ns)) < 0) {
		json_object_put(o);
		return NULL;
	}
	return o;
}

json_object *control_json_backend(const struct control_backend *b)
{
	json_object *o = json_object_new_object(), *read = NULL, *write = NULL;

	if (!o)
		return NULL;
	read = latency_json(&b->read);
	write = latency_json(&b->write);
	if (!read || !write || add(o, "kind", json_object_new_string(b->kind)) < 0 ||
	    add(o, "target", json_object_new_string(b->target ? b->target : "")) < 0 ||
	    add(o, "links_up", control_json_u64(b->links_up)) < 0 ||
	    add(o, "backend_reconnects", control_json_u64(b->reconnects)) < 0 ||
	    add(o, "backend_errors", control_json_u64(b->errors)) < 0 ||
	    add(o, "backend_read_timeouts", control_json_u64(b->read_timeouts)) < 0 ||
	    add(o, "backend_quarantined_slots", control_json_u64(b->quarantined)) < 0 ||
	    add(o, "bytes_written", control_json_u64(b->bytes_written)) < 0 ||
	    add(o, "bytes_read", control_json_u64(b->bytes_read)) < 0)
		goto fail;
	if (add(o, "read_latency_ns", read) < 0) {
		read = NULL;
		goto fail;
	}
	read = NULL;
	if (add(o, "write_latency_ns", write) < 0) {
		write = NULL;
		goto fail;
	}
	return o;
fail:
	json_object_put(read);
	json_object_put(write);
	json_object_put(o);
	return NULL;
}

int control_json_stats_set_global(json_object *out, json_object *block)
{
	if (!block)
		return -ENOMEM;
	return json_object_object_add(out, "global", block) < 0 ? -ENOMEM : 0;
}

int control_json_stats_add_cgroup(json_object *out, const char *cgroup, json_object *block)
{
	json_object *list;

	if (!block)
		return -ENOMEM;
	if (!json_object_object_get_ex(out, "cgroups", &list)) {
		list = json_object_new_array();
		if (!list || json_object_object_add(out, "cgroups", list) < 0) {
			json_object_put(list);
			json_object_put(block);
			return -ENOMEM;
		}
	}
	if (add(block, "cgroup", json_object_new_string(cgroup)) < 0 ||
	    json_object_array_add(list, block) < 0) {
		json_object_put(block);
		return -ENOMEM;
	}
	return 0;
}
