/* SPDX-License-Identifier: MIT */
/*
 * The control socket: what uzswapctl talks to.  A unix SOCK_STREAM
 * socket (mode 0666), one JSON object per line each way; docs/CONTROL.md
 * is the schema.  The server runs on the daemon's sd-event loop (main
 * thread); it owns the protocol, limits and authorization, and asks the
 * daemon for data through a table of callbacks.
 *
 * Authorization: anyone who can connect may read (status, stats,
 * clients, config).  Changing commands (reload, shrink) need a peer with
 * uid 0, or in the admin group (ControlGroup=) as primary or
 * supplementary group.  The peer's credentials are taken when it
 * connects (SO_PEERCRED, SO_PEERGROUPS), not from /proc later, so a peer
 * cannot exit and have its pid reused to borrow someone else's groups.
 *
 * Limits: at most CONTROL_MAX_CONNECTIONS connections (more are told so
 * and closed), requests of at most CONTROL_MAX_REQUEST bytes, one request
 * answered at a time per connection (no reading while a reply is still
 * being written), and a connection idle for CONTROL_IDLE_TIMEOUT_SEC is
 * closed.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include <json-c/json.h>
#include <systemd/sd-event.h>

#include "stats/stats.h"

#define CONTROL_MAX_CONNECTIONS	 64
#define CONTROL_MAX_REQUEST	 4096
#define CONTROL_IDLE_TIMEOUT_SEC 30

/*
 * The daemon's side.  Every callback runs on the event loop thread, must
 * not block for long, and returns 0 or -errno.  `out` is an empty JSON
 * object the callback fills (it becomes "result" of the reply); on error
 * the callback may set a string "error" in it for the operator, otherwise
 * the reply carries strerror().  A NULL callback answers "not supported".
 */
struct control_ops {
	/* Daemon-wide summary (see docs/CONTROL.md "status"). */
	int (*status)(void *userdata, json_object *out);
	/*
	 * Statistics: fill out["global"] and out["cgroups"] with blocks from
	 * control_json_stats_block().  cgroup is NULL for all, or one cgroup
	 * path: then "cgroups" holds that one only (-ENOENT if unknown).
	 */
	int (*stats)(void *userdata, const char *cgroup, json_object *out);
	/* out["clients"]: an array of one object per client process. */
	int (*clients)(void *userdata, json_object *out);
	/*
	 * Load the config again.  On failure return -EINVAL (or -errno) with
	 * the message in err and keep running with the old config.
	 */
	int (*reload)(void *userdata, char *err, size_t errlen);
	/*
	 * Reclaim or write back `bytes` of the cgroup now.  Fill out with at
	 * least "requested_bytes" and what was done ("reclaimed_bytes",
	 * "written_back_bytes").  -ENOENT for an unknown cgroup.
	 */
	int (*shrink)(void *userdata, const char *cgroup, uint64_t bytes, json_object *out);
	/* Optional: out["text"] = the effective config (config_dump()). */
	int (*config)(void *userdata, json_object *out);
};

struct control_server;

/*
 * Listen on path (created with mode 0666; a stale socket file is
 * replaced, a live one is -EADDRINUSE), or, when listen_fd >= 0, on that
 * already-listening socket (systemd socket activation; path is then only
 * remembered, never unlinked).  ops and userdata must outlive the server.
 */
int control_server_new(struct control_server **out, const char *path, int listen_fd,
		       const struct control_ops *ops, void *userdata);
/* Closes every connection, removes the socket file if we created it. */
struct control_server *control_server_free(struct control_server *server);

/* Start serving on event (the server takes a reference on it). */
int control_server_attach(struct control_server *server, sd_event *event);

/* Who may change things besides root: call again after a reload. */
void control_server_set_admin_group(struct control_server *server, bool set, gid_t gid);

unsigned int control_server_connection_count(const struct control_server *server);

/* --- JSON helpers for the daemon's callbacks (docs/CONTROL.md) ------------ */

struct control_latency {
	uint64_t count;
	uint64_t p50_ns;
	uint64_t p90_ns;
	uint64_t p99_ns;
	uint64_t p999_ns;
};

struct control_pool_usage {
	uint64_t pool_total_size; /* bytes the pool holds, metadata included */
	uint64_t limit;		  /* bytes; UINT64_MAX for none */
};

/*
 * One statistics block: "counters" and "gauges" by name (from the
 * UZ_STATS_LIST), "compression_ratio", and when not NULL "pool" and
 * "fault_latency_ns".  Returns a new object or NULL (out of memory).
 */
json_object *control_json_stats_block(const int64_t values[UZ_STAT__COUNT],
				      const struct control_latency *latency,
				      const struct control_pool_usage *pool);
/*
 * The same from the core's objects: stats_read_all() and the histogram's
 * percentiles (hist may be NULL).  Links against the core library.
 */
json_object *control_json_stats_block_from(const struct stats *stats,
					   const struct latency_hist *hist,
					   const struct control_pool_usage *pool);
/*
 * Where written-back records go (the swap backend), for the global block
 * of the statistics: "backend": {"kind", "target", counters, latencies}.
 */
struct control_backend {
	const char *kind;	     /* "file" or "nbd" */
	const char *target;	     /* the file's path or the export's URI */
	uint64_t links_up;	     /* NBD connections up (one per fault thread) */
	uint64_t reconnects;	     /* backend_reconnects */
	uint64_t errors;	     /* backend_errors */
	uint64_t read_timeouts;	     /* backend_read_timeouts */
	uint64_t quarantined;	     /* backend_quarantined_slots */
	uint64_t bytes_written;	     /* record bytes the backend accepted */
	uint64_t bytes_read;	     /* record bytes read back */
	struct control_latency read; /* count, p50_ns, p99_ns used */
	struct control_latency write;
};
/* The "backend" object (NULL: out of memory). */
json_object *control_json_backend(const struct control_backend *backend);
/* out["global"] = block (takes the reference). */
int control_json_stats_set_global(json_object *out, json_object *block);
/* Append block to out["cgroups"] with its "cgroup" key (takes the reference). */
int control_json_stats_add_cgroup(json_object *out, const char *cgroup, json_object *block);
/* JSON for an unsigned quantity: UINT64_MAX (unlimited) becomes null. */
json_object *control_json_u64(uint64_t value);
