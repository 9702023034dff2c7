/* SPDX-License-Identifier: MIT */
/*
 * uzswapctl: the operator's view of uzswapd.  Every command but
 * config-check is one request on the control socket (docs/CONTROL.md):
 * connect, send one JSON line, read one JSON line, print it as a table
 * with units, as the daemon's JSON (--json), or in the Prometheus text
 * exposition format (stats --format=prometheus).  --watch repeats the
 * request, connecting afresh each time so a restarted daemon is picked up.
 *
 * The tables are generic where they can be: a key's suffix says its unit
 * (_bytes, _ns, _percent, _pages, _sec), so a field the daemon adds later
 * is still printed sensibly.  The statistics' names, kinds and help come
 * from stats.h, the same list the daemon counts with.
 *
 * config-check reads files itself with the daemon's parser and needs no
 * daemon.  Exit codes: 0 ok, 1 failed (an error from the daemon, a bad
 * config), 2 usage, 3 uzswapd not running, 4 permission denied.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <json-c/json.h>

#include <config.h> /* UZSWAP_VERSION, UZSWAP_RUNDIR */

#include "config/config.h"
#include "stats/stats.h"
#include "util.h"

#define EXIT_USAGE	    2
#define EXIT_NOT_RUNNING    3
#define EXIT_DENIED	    4
#define REPLY_MAX	    (64U << 20)
#define REQUEST_TIMEOUT_SEC 30

enum format { FORMAT_TABLE, FORMAT_JSON, FORMAT_PROMETHEUS };

struct options {
	const char *socket_path;
	const char *cgroup;
	const char *bytes;
	enum format format;
	bool watch;
	double watch_interval;
	long count; /* --count: refreshes before --watch stops; 0 = forever */
};

static void usage(FILE *out)
{
	fprintf(
	    out,
	    "Usage: uzswapctl [--socket PATH] COMMAND [OPTIONS]\n"
	    "\n"
	    "Commands:\n"
	    "  status                      daemon summary\n"
	    "  stats [--cgroup PATH]       statistics, global and per cgroup\n"
	    "        [--json | --format=table|json|prometheus]\n"
	    "        [--watch[=SECONDS]] [--count=N]\n"
	    "  clients                     client processes\n"
	    "  config                      the daemon's effective configuration\n"
	    "  reload                      load the configuration again (root or ControlGroup)\n"
	    "  shrink --cgroup PATH --bytes N   reclaim or write back N bytes now (K/M/G/T)\n"
	    "  config-check [FILE|DIR...]  check config files without the daemon\n"
	    "                              (no argument: /etc/uzswap/uzswapd.conf and cgroup.d)\n"
	    "\n"
	    "Options:\n"
	    "  --socket PATH   control socket (default: $UZSWAP_CONTROL_SOCKET, else\n"
	    "                  control.sock next to $UZSWAP_SOCKET, else ControlSocket=\n"
	    "                  of uzswapd.conf, else next to its Socket=, else\n"
	    "                  %s/control.sock)\n"
	    "  --json          print the daemon's JSON\n"
	    "  -h, --help      this text\n"
	    "  --version       the version\n"
	    "\n"
	    "Exit status: 0 ok, 1 failed, 2 usage, 3 uzswapd not running, 4 permission denied.\n",
	    UZSWAP_RUNDIR);
}

/* --- units ----------------------------------------------------------------- */

static const char *format_bytes(uint64_t bytes, char *buf, size_t len)
{
	static const char *const units[] = {"KiB", "MiB", "GiB", "TiB", "PiB"};
	double value = (double)bytes;
	int unit = -1;

	if (bytes < 1024) {
		snprintf(buf, len, "%" PRIu64 " B", bytes);
		return buf;
	}
	while (value >= 1024 && unit < 4) {
		value /= 1024;
		unit++;
	}
	snprintf(buf, len, "%.1f %s", value, units[unit]);
	return buf;
}

static const char *format_ns(uint64_t ns, char *buf, size_t len)
{
	if (ns < 1000)
		snprintf(buf, len, "%" PRIu64 " ns", ns);
	else if (ns < 1000000)
		snprintf(buf, len, "%.1f µs", (double)ns / 1e3);
	else if (ns < 1000000000)
		snprintf(buf, len, "%.2f ms", (double)ns / 1e6);
	else
		snprintf(buf, len, "%.2f s", (double)ns / 1e9);
	return buf;
}

static bool ends_with(const char *s, const char *suffix)
{
	size_t n = strlen(s), m = strlen(suffix);

	return n >= m && !strcmp(s + n - m, suffix);
}

static bool key_is_bytes(const char *key)
{
	return ends_with(key, "_bytes") || ends_with(key, "_size") || !strcmp(key, "limit") ||
	       ends_with(key, "_max") || ends_with(key, "_low");
}

/* One value, with its unit guessed from the key. */
static const char *format_value(const char *key, json_object *value, char *buf, size_t len)
{
	char unit[64];

	switch (json_object_get_type(value)) {
	case json_type_null:
		snprintf(buf, len, "%s", key_is_bytes(key) ? "unlimited" : "-");
		break;
	case json_type_boolean:
		snprintf(buf, len, "%s", json_object_get_boolean(value) ? "yes" : "no");
		break;
	case json_type_double:
		if (ends_with(key, "_percent"))
			snprintf(buf, len, "%.1f%%", json_object_get_double(value));
		else
			snprintf(buf, len, "%.2f", json_object_get_double(value));
		break;
	case json_type_int: {
		int64_t v = json_object_get_int64(value);
		uint64_t u = v < 0 ? 0 : (uint64_t)v;

		if (key_is_bytes(key))
			snprintf(buf, len, "%s", format_bytes(u, unit, sizeof(unit)));
		else if (ends_with(key, "_ns"))
			snprintf(buf, len, "%s", format_ns(u, unit, sizeof(unit)));
		else if (ends_with(key, "_percent"))
			snprintf(buf, len, "%" PRId64 "%%", v);
		else if (ends_with(key, "_sec"))
			snprintf(buf, len, "%" PRId64 " s", v);
		else if (ends_with(key, "_pages") && v >= 0)
			snprintf(buf, len, "%" PRId64 " (%s)", v,
				 format_bytes(u * UZ_PAGE_SIZE, unit, sizeof(unit)));
		else
			snprintf(buf, len, "%" PRId64, v);
		break;
	}
	case json_type_string:
		snprintf(buf, len, "%s", json_object_get_string(value));
		break;
	default:
		snprintf(buf, len, "%s",
			 json_object_to_json_string_ext(value, JSON_C_TO_STRING_PLAIN));
	}
	return buf;
}

/* key: value lines, nested objects indented. */
static void print_object(json_object *object, int indent)
{
	char buf[256];

	json_object_object_foreach(object, key, value)
	{
		if (json_object_is_type(value, json_type_object)) {
			printf("%*s%s:\n", indent, "", key);
			print_object(value, indent + 2);
		} else {
			printf("%*s%-24s %s\n", indent, "", key,
			       format_value(key, value, buf, sizeof(buf)));
		}
	}
}

/* An array of flat objects as a table, columns from the first row's keys. */
static void print_table(json_object *rows)
{
	size_t n_rows = json_object_array_length(rows), n_cols = 0, col;
	json_object *first;
	char buf[256];
	int width[32];
	const char *keys[32];

	if (n_rows == 0) {
		printf("(none)\n");
		return;
	}
	first = json_object_array_get_idx(rows, 0);
	if (!json_object_is_type(first, json_type_object))
		return;
	json_object_object_foreach(first, key0, value0)
	{
		(void)value0;
		if (n_cols < UZ_ARRAY_SIZE(keys)) {
			keys[n_cols] = key0;
			width[n_cols] = (int)strlen(key0);
			n_cols++;
		}
	}
	for (size_t i = 0; i < n_rows; i++) {
		json_object *row = json_object_array_get_idx(rows, i), *value;

		for (col = 0; col < n_cols; col++) {
			if (!json_object_object_get_ex(row, keys[col], &value))
				continue;
			int w = (int)strlen(format_value(keys[col], value, buf, sizeof(buf)));

			if (w > width[col])
				width[col] = w;
		}
	}
	for (col = 0; col < n_cols; col++) {
		for (const char *k = keys[col]; *k; k++)
			putchar(*k >= 'a' && *k <= 'z' ? *k - 'a' + 'A' : *k);
		printf("%*s", width[col] - (int)strlen(keys[col]) + (col + 1 < n_cols ? 2 : 0), "");
	}
	putchar('\n');
	for (size_t i = 0; i < n_rows; i++) {
		json_object *row = json_object_array_get_idx(rows, i), *value;

		for (col = 0; col < n_cols; col++) {
			const char *text = "-";

			if (json_object_object_get_ex(row, keys[col], &value))
				text = format_value(keys[col], value, buf, sizeof(buf));
			printf("%-*s%s", width[col], text, col + 1 < n_cols ? "  " : "");
		}
		putchar('\n');
	}
}

/* --- talking to the daemon -------------------------------------------------- */

/*
 * One request, one reply.  Returns the exit code; on success *result is
 * the reply's "result" (a reference the caller puts).
 */
static int request(const struct options *opts, json_object *req, json_object **result)
{
	struct timeval timeout = {.tv_sec = REQUEST_TIMEOUT_SEC};
	struct sockaddr_un addr = {.sun_family = AF_UNIX};
	const char *text = json_object_to_json_string_ext(req, JSON_C_TO_STRING_PLAIN);
	size_t len = 0, cap = 0;
	char *buf = NULL, *newline = NULL;
	json_object *reply, *value;
	int fd, code = EXIT_FAILURE;

	if (strlen(opts->socket_path) >= sizeof(addr.sun_path)) {
		fprintf(stderr, "uzswapctl: socket path too long: %s\n", opts->socket_path);
		return EXIT_USAGE;
	}
	strcpy(addr.sun_path, opts->socket_path);
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0) {
		fprintf(stderr, "uzswapctl: socket: %m\n");
		return EXIT_FAILURE;
	}
	if (connect(fd, (struct sockaddr *)&addr, sizeof(addr)) < 0) {
		if (errno == ENOENT)
			fprintf(stderr, "uzswapd is not running (no socket at %s)\n",
				opts->socket_path);
		else if (errno == ECONNREFUSED)
			fprintf(stderr, "uzswapd is not running (nobody listens on %s)\n",
				opts->socket_path);
		else
			fprintf(stderr, "uzswapctl: cannot connect to \"%s\": %m\n",
				opts->socket_path);
		close(fd);
		return errno == ENOENT || errno == ECONNREFUSED ? EXIT_NOT_RUNNING : EXIT_FAILURE;
	}
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof(timeout));
	setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, sizeof(timeout));
	if (dprintf(fd, "%s\n", text) < 0) {
		fprintf(stderr, "uzswapctl: cannot send to \"%s\": %m\n", opts->socket_path);
		goto out_close;
	}
	while (!newline) {
		ssize_t n;

		if (cap - len < 4096) {
			char *grown;

			cap = cap ? cap * 2 : 65536;
			if (cap > REPLY_MAX) {
				fprintf(stderr, "uzswapctl: reply too large\n");
				goto out_close;
			}
			grown = realloc(buf, cap);
			if (!grown) {
				fprintf(stderr, "uzswapctl: out of memory\n");
				goto out_close;
			}
			buf = grown;
		}
		n = read(fd, buf + len, cap - len - 1);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0) {
			if (n < 0)
				fprintf(stderr, "uzswapctl: no reply from uzswapd: %m\n");
			else
				fprintf(stderr, "uzswapctl: uzswapd closed the connection\n");
			goto out_close;
		}
		newline = memchr(buf + len, '\n', (size_t)n);
		len += (size_t)n;
	}
	*newline = '\0';
	reply = json_tokener_parse(buf);
	if (!reply || !json_object_is_type(reply, json_type_object) ||
	    !json_object_object_get_ex(reply, "ok", &value)) {
		fprintf(stderr, "uzswapctl: malformed reply from uzswapd\n");
		json_object_put(reply);
		goto out_close;
	}
	if (!json_object_get_boolean(value)) {
		json_object *error, *err_no;
		int e = 0;

		if (json_object_object_get_ex(reply, "errno", &err_no))
			e = json_object_get_int(err_no);
		json_object_object_get_ex(reply, "error", &error);
		fprintf(stderr, "uzswapctl: %s\n",
			error ? json_object_get_string(error) : "request failed");
		code = e == EPERM || e == EACCES ? EXIT_DENIED : EXIT_FAILURE;
		json_object_put(reply);
		goto out_close;
	}
	if (!json_object_object_get_ex(reply, "result", &value) ||
	    !json_object_is_type(value, json_type_object)) {
		fprintf(stderr, "uzswapctl: reply without a result\n");
		json_object_put(reply);
		goto out_close;
	}
	*result = json_object_get(value);
	json_object_put(reply);
	code = EXIT_SUCCESS;
out_close:
	free(buf);
	close(fd);
	return code;
}

static json_object *new_request(const char *command)
{
	json_object *req = json_object_new_object();

	if (req)
		json_object_object_add(req, "command", json_object_new_string(command));
	return req;
}

static void print_json(json_object *result)
{
	printf("%s\n", json_object_to_json_string_ext(result, JSON_C_TO_STRING_PRETTY |
								  JSON_C_TO_STRING_SPACED |
								  JSON_C_TO_STRING_NOSLASHESCAPE));
}

/* --- stats ------------------------------------------------------------------ */

static int64_t block_value(json_object *block, const char *group, const char *name, bool *found)
{
	json_object *map, *value;

	*found = json_object_object_get_ex(block, group, &map) &&
		 json_object_object_get_ex(map, name, &value);
	return *found ? json_object_get_int64(value) : 0;
}

static uint64_t object_u64(json_object *o, const char *key)
{
	json_object *v;

	return json_object_object_get_ex(o, key, &v) && v ? (uint64_t)json_object_get_int64(v) : 0;
}

/* The swap backend: where written-back records go, its faults and latencies. */
static void print_backend(json_object *backend)
{
	static const char *const counters[] = {"backend_reconnects", "backend_errors",
					       "backend_read_timeouts",
					       "backend_quarantined_slots"};
	static const char *const latencies[][2] = {{"read_latency_ns", "reads"},
						   {"write_latency_ns", "writes"}};
	json_object *kind = NULL, *target = NULL, *latency;
	char a[64], b[64], title[64];

	json_object_object_get_ex(backend, "kind", &kind);
	json_object_object_get_ex(backend, "target", &target);
	printf("  %-26s %s \"%s\"", "backend", kind ? json_object_get_string(kind) : "?",
	       target ? json_object_get_string(target) : "");
	if (kind && !strcmp(json_object_get_string(kind), "nbd"))
		printf(" (%" PRIu64 " connection%s up)", object_u64(backend, "links_up"),
		       object_u64(backend, "links_up") == 1 ? "" : "s");
	printf("\n");
	for (size_t i = 0; i < UZ_ARRAY_SIZE(counters); i++)
		printf("  %-26s %" PRIu64 "\n", counters[i], object_u64(backend, counters[i]));
	for (size_t i = 0; i < UZ_ARRAY_SIZE(latencies); i++) {
		if (!json_object_object_get_ex(backend, latencies[i][0], &latency))
			continue;
		snprintf(title, sizeof(title), "backend %s latency", i == 0 ? "read" : "write");
		printf("  %-26s p50 %s  p99 %s  (%" PRIu64 " %s)\n", title,
		       format_ns(object_u64(latency, "p50"), a, sizeof(a)),
		       format_ns(object_u64(latency, "p99"), b, sizeof(b)),
		       object_u64(latency, "count"), latencies[i][1]);
	}
}

static void print_stats_block(json_object *block, const char *title)
{
	json_object *pool, *latency, *ratio, *v;
	char a[64], b[64], c[64], d[64];
	bool found;

	printf("%s\n", title);
	if (json_object_object_get_ex(block, "pool", &pool)) {
		json_object *size = NULL, *limit = NULL;

		json_object_object_get_ex(pool, "pool_total_size", &size);
		json_object_object_get_ex(pool, "limit", &limit);
		if (limit && json_object_get_int64(limit) > 0)
			printf("  %-26s %s of %s (%.1f%%)\n", "pool",
			       format_bytes((uint64_t)json_object_get_int64(size), a, sizeof(a)),
			       format_bytes((uint64_t)json_object_get_int64(limit), b, sizeof(b)),
			       100.0 * (double)json_object_get_int64(size) /
				   (double)json_object_get_int64(limit));
		else
			printf("  %-26s %s (no limit)\n", "pool",
			       format_bytes((uint64_t)json_object_get_int64(size), a, sizeof(a)));
	}
	if (json_object_object_get_ex(block, "compression_ratio", &ratio)) {
		if (ratio)
			printf("  %-26s %.2f\n", "compression ratio",
			       json_object_get_double(ratio));
		else
			printf("  %-26s -\n", "compression ratio");
	}
	if (json_object_object_get_ex(block, "fault_latency_ns", &latency)) {
		uint64_t p[4] = {0}, count = 0;
		const char *keys[4] = {"p50", "p90", "p99", "p999"};

		for (int i = 0; i < 4; i++)
			if (json_object_object_get_ex(latency, keys[i], &v))
				p[i] = (uint64_t)json_object_get_int64(v);
		if (json_object_object_get_ex(latency, "count", &v))
			count = (uint64_t)json_object_get_int64(v);
		printf("  %-26s p50 %s  p90 %s  p99 %s  p99.9 %s  (%" PRIu64 " faults)\n",
		       "fault latency", format_ns(p[0], a, sizeof(a)),
		       format_ns(p[1], b, sizeof(b)), format_ns(p[2], c, sizeof(c)),
		       format_ns(p[3], d, sizeof(d)), count);
	}
	if (json_object_object_get_ex(block, "backend", &v))
		print_backend(v);
#define UZ_STAT_ROW(name, kind, help)                                                              \
	{                                                                                          \
		int64_t value =                                                                    \
		    block_value(block, UZ_STAT_##kind == UZ_STAT_COUNTER ? "counters" : "gauges",  \
				#name, &found);                                                    \
		if (found) {                                                                       \
			if (ends_with(#name, "_pages"))                                            \
				printf(                                                            \
				    "  %-26s %" PRId64 " (%s)\n", #name, value,                    \
				    format_bytes(value > 0 ? (uint64_t)value * UZ_PAGE_SIZE : 0,   \
						 a, sizeof(a)));                                   \
			else if (ends_with(#name, "_bytes"))                                       \
				printf(                                                            \
				    "  %-26s %s\n", #name,                                         \
				    format_bytes(value > 0 ? (uint64_t)value : 0, a, sizeof(a)));  \
			else                                                                       \
				printf("  %-26s %" PRId64 "\n", #name, value);                     \
		}                                                                                  \
	}
	UZ_STATS_LIST(UZ_STAT_ROW)
#undef UZ_STAT_ROW
}

static void print_stats_table(json_object *result)
{
	json_object *global, *cgroups, *name;
	char title[4200];

	if (json_object_object_get_ex(result, "global", &global))
		print_stats_block(global, "global");
	if (json_object_object_get_ex(result, "cgroups", &cgroups) &&
	    json_object_is_type(cgroups, json_type_array)) {
		for (size_t i = 0; i < json_object_array_length(cgroups); i++) {
			json_object *block = json_object_array_get_idx(cgroups, i);

			snprintf(title, sizeof(title), "\ncgroup %s",
				 json_object_object_get_ex(block, "cgroup", &name)
				     ? json_object_get_string(name)
				     : "?");
			print_stats_block(block, title);
		}
	}
}

/* Prometheus label values escape backslash, double quote and newline. */
static void print_label(const char *value, const char *quantile)
{
	printf("{cgroup=\"");
	for (; *value; value++) {
		if (*value == '\\' || *value == '"')
			printf("\\%c", *value);
		else if (*value == '\n')
			printf("\\n");
		else
			putchar(*value);
	}
	if (quantile)
		printf("\",quantile=\"%s", quantile);
	printf("\"}");
}

/* One sample of each scope: the global one unlabelled, cgroups labelled. */
static void prometheus_samples(json_object *result, const char *metric,
			       bool (*get)(json_object *block, const void *arg, double *out),
			       const void *arg)
{
	json_object *global, *cgroups, *name;
	double value;

	if (json_object_object_get_ex(result, "global", &global) && get(global, arg, &value))
		printf("%s %.17g\n", metric, value);
	if (!json_object_object_get_ex(result, "cgroups", &cgroups) ||
	    !json_object_is_type(cgroups, json_type_array))
		return;
	for (size_t i = 0; i < json_object_array_length(cgroups); i++) {
		json_object *block = json_object_array_get_idx(cgroups, i);

		if (!json_object_object_get_ex(block, "cgroup", &name) || !get(block, arg, &value))
			continue;
		printf("%s", metric);
		print_label(json_object_get_string(name), NULL);
		printf(" %.17g\n", value);
	}
}

struct stat_ref {
	const char *group;
	const char *name;
};

static bool get_stat(json_object *block, const void *arg, double *out)
{
	const struct stat_ref *ref = arg;
	bool found;
	int64_t value = block_value(block, ref->group, ref->name, &found);

	*out = (double)value;
	return found;
}

static bool get_path(json_object *block, const void *arg, double *out)
{
	const char *const *path = arg; /* {object, key} or {NULL, key} */
	json_object *parent = block, *value;

	if (path[0] && !json_object_object_get_ex(block, path[0], &parent))
		return false;
	if (!json_object_object_get_ex(parent, path[1], &value) || !value)
		return false;
	*out = json_object_get_double(value);
	return true;
}

/* The global block's "backend": counters, connections up, read and write latency summaries. */
static void print_backend_prometheus(json_object *result)
{
	static const struct {
		const char *key, *metric, *type, *help;
	} values[] = {
	    {"backend_reconnects", "uzswap_backend_reconnects_total", "counter",
	     "connections to the swap backend made again after one was lost"},
	    {"backend_errors", "uzswap_backend_errors_total", "counter",
	     "swap backend requests or connection attempts that failed, reads timed out"},
	    {"backend_read_timeouts", "uzswap_backend_read_timeouts_total", "counter",
	     "swap backend reads not done within [Swap] ReadTimeout (the page was poisoned)"},
	    {"backend_quarantined_slots", "uzswap_backend_quarantined_slots_total", "counter",
	     "slots of writes cut off by a lost connection, never reused"},
	    {"links_up", "uzswap_backend_links_up", "gauge",
	     "connections to the swap backend up (NBD: one per fault thread)"},
	};
	static const char *const ops[] = {"read", "write"};
	json_object *global, *backend, *latency, *kind = NULL;

	if (!json_object_object_get_ex(result, "global", &global) ||
	    !json_object_object_get_ex(global, "backend", &backend))
		return;
	json_object_object_get_ex(backend, "kind", &kind);
	printf("# HELP uzswap_backend_info where written-back records go\n"
	       "# TYPE uzswap_backend_info gauge\nuzswap_backend_info{kind=\"%s\"} 1\n",
	       kind ? json_object_get_string(kind) : "");
	for (size_t i = 0; i < UZ_ARRAY_SIZE(values); i++)
		printf("# HELP %s %s\n# TYPE %s %s\n%s %" PRIu64 "\n", values[i].metric,
		       values[i].help, values[i].metric, values[i].type, values[i].metric,
		       object_u64(backend, values[i].key));
	for (size_t i = 0; i < UZ_ARRAY_SIZE(ops); i++) {
		char key[32];

		snprintf(key, sizeof(key), "%s_latency_ns", ops[i]);
		if (!json_object_object_get_ex(backend, key, &latency))
			continue;
		printf("# HELP uzswap_backend_%s_latency_seconds swap backend %s latency, "
		       "submission to completion\n"
		       "# TYPE uzswap_backend_%s_latency_seconds summary\n",
		       ops[i], ops[i], ops[i]);
		printf("uzswap_backend_%s_latency_seconds{quantile=\"0.5\"} %.9f\n", ops[i],
		       (double)object_u64(latency, "p50") / 1e9);
		printf("uzswap_backend_%s_latency_seconds{quantile=\"0.99\"} %.9f\n", ops[i],
		       (double)object_u64(latency, "p99") / 1e9);
		printf("uzswap_backend_%s_latency_seconds_count %" PRIu64 "\n", ops[i],
		       object_u64(latency, "count"));
	}
}

static void print_stats_prometheus(json_object *result)
{
	char metric[128];

#define UZ_STAT_PROM(name, kind, help)                                                             \
	{                                                                                          \
		bool counter = UZ_STAT_##kind == UZ_STAT_COUNTER;                                  \
		struct stat_ref ref = {counter ? "counters" : "gauges", #name};                    \
		snprintf(metric, sizeof(metric), "uzswap_%s%s", #name, counter ? "_total" : "");   \
		printf("# HELP %s %s\n# TYPE %s %s\n", metric, help, metric,                       \
		       counter ? "counter" : "gauge");                                             \
		prometheus_samples(result, metric, get_stat, &ref);                                \
	}
	UZ_STATS_LIST(UZ_STAT_PROM)
#undef UZ_STAT_PROM
	{
		static const char *const pool_size[] = {"pool", "pool_total_size"};
		static const char *const pool_limit[] = {"pool", "limit"};
		static const char *const ratio[] = {NULL, "compression_ratio"};
		static const char *const count[] = {"fault_latency_ns", "count"};
		static const struct {
			const char *key, *quantile;
		} quantiles[] = {
		    {"p50", "0.5"}, {"p90", "0.9"}, {"p99", "0.99"}, {"p999", "0.999"}};

		printf("# HELP uzswap_pool_total_size_bytes bytes the compressed pool holds\n"
		       "# TYPE uzswap_pool_total_size_bytes gauge\n");
		prometheus_samples(result, "uzswap_pool_total_size_bytes", get_path, pool_size);
		printf("# HELP uzswap_pool_limit_bytes pool limit in bytes (absent: none)\n"
		       "# TYPE uzswap_pool_limit_bytes gauge\n");
		prometheus_samples(result, "uzswap_pool_limit_bytes", get_path, pool_limit);
		printf("# HELP uzswap_compression_ratio uncompressed over compressed bytes of "
		       "stored pages\n"
		       "# TYPE uzswap_compression_ratio gauge\n");
		prometheus_samples(result, "uzswap_compression_ratio", get_path, ratio);

		/* A summary: quantile samples in seconds, and the count. */
		printf("# HELP uzswap_fault_latency_seconds fault service latency\n"
		       "# TYPE uzswap_fault_latency_seconds summary\n");
		for (size_t i = 0; i < UZ_ARRAY_SIZE(quantiles); i++) {
			json_object *global, *latency, *value, *cgroups, *name;

			if (json_object_object_get_ex(result, "global", &global) &&
			    json_object_object_get_ex(global, "fault_latency_ns", &latency) &&
			    json_object_object_get_ex(latency, quantiles[i].key, &value))
				printf("uzswap_fault_latency_seconds{quantile=\"%s\"} %.9f\n",
				       quantiles[i].quantile,
				       (double)json_object_get_int64(value) / 1e9);
			if (!json_object_object_get_ex(result, "cgroups", &cgroups) ||
			    !json_object_is_type(cgroups, json_type_array))
				continue;
			for (size_t j = 0; j < json_object_array_length(cgroups); j++) {
				json_object *block = json_object_array_get_idx(cgroups, j);

				if (!json_object_object_get_ex(block, "cgroup", &name) ||
				    !json_object_object_get_ex(block, "fault_latency_ns",
							       &latency) ||
				    !json_object_object_get_ex(latency, quantiles[i].key, &value))
					continue;
				printf("uzswap_fault_latency_seconds");
				print_label(json_object_get_string(name), quantiles[i].quantile);
				printf(" %.9f\n", (double)json_object_get_int64(value) / 1e9);
			}
		}
		prometheus_samples(result, "uzswap_fault_latency_seconds_count", get_path, count);
	}
	print_backend_prometheus(result);
}

/* Per client: what is managed against the process's anonymous memory. */
static void print_clients_prometheus(json_object *result)
{
	static const struct {
		const char *key, *metric, *help;
	} gauges[] = {
	    {"managed_bytes", "uzswap_client_managed_bytes",
	     "bytes of the process uzswapd manages: resident, stored and on disk"},
	    {"anon_rss_bytes", "uzswap_client_anon_rss_bytes",
	     "the process's anonymous RSS (RssAnon), sampled every 2 s"},
	    {"resident_bytes", "uzswap_client_resident_bytes",
	     "managed bytes resident in the process"},
	};
	json_object *rows;

	if (!json_object_object_get_ex(result, "clients", &rows) ||
	    !json_object_is_type(rows, json_type_array))
		return;
	for (size_t g = 0; g < UZ_ARRAY_SIZE(gauges); g++) {
		printf("# HELP %s %s\n# TYPE %s gauge\n", gauges[g].metric, gauges[g].help,
		       gauges[g].metric);
		for (size_t i = 0; i < json_object_array_length(rows); i++) {
			json_object *row = json_object_array_get_idx(rows, i), *value, *pid, *comm;

			if (!json_object_object_get_ex(row, gauges[g].key, &value) || !value ||
			    !json_object_object_get_ex(row, "pid", &pid))
				continue;
			printf("%s{pid=\"%" PRId64 "\",comm=\"", gauges[g].metric,
			       json_object_get_int64(pid));
			if (json_object_object_get_ex(row, "comm", &comm))
				for (const char *c = json_object_get_string(comm); *c; c++)
					if (*c != '"' && *c != '\\' && *c != '\n')
						putchar(*c);
			printf("\"} %" PRId64 "\n", json_object_get_int64(value));
		}
	}
}

/* --- commands ------------------------------------------------------------------ */

static int cmd_simple(const struct options *opts, const char *command)
{
	json_object *req = new_request(command), *result = NULL, *text;
	int code;

	code = request(opts, req, &result);
	json_object_put(req);
	if (code)
		return code;
	if (opts->format == FORMAT_JSON)
		print_json(result);
	else if (!strcmp(command, "clients")) {
		json_object *rows;

		if (json_object_object_get_ex(result, "clients", &rows) &&
		    json_object_is_type(rows, json_type_array))
			print_table(rows);
		else
			print_object(result, 0);
	} else if (!strcmp(command, "config") && json_object_object_get_ex(result, "text", &text))
		fputs(json_object_get_string(text), stdout);
	else if (!strcmp(command, "reload"))
		printf("configuration reloaded\n");
	else
		print_object(result, 0);
	json_object_put(result);
	return EXIT_SUCCESS;
}

static int cmd_stats_once(const struct options *opts)
{
	json_object *req = new_request("stats"), *result = NULL;
	int code;

	if (opts->cgroup)
		json_object_object_add(req, "cgroup", json_object_new_string(opts->cgroup));
	code = request(opts, req, &result);
	json_object_put(req);
	if (code)
		return code;
	switch (opts->format) {
	case FORMAT_JSON:
		print_json(result);
		break;
	case FORMAT_PROMETHEUS: {
		json_object *clients_req = new_request("clients"), *clients = NULL;

		print_stats_prometheus(result);
		if (!opts->cgroup && request(opts, clients_req, &clients) == 0) {
			print_clients_prometheus(clients);
			json_object_put(clients);
		}
		json_object_put(clients_req);
		break;
	}
	case FORMAT_TABLE:
		print_stats_table(result);
		break;
	}
	json_object_put(result);
	return EXIT_SUCCESS;
}

static int cmd_stats(const struct options *opts)
{
	bool clear = opts->watch && opts->format == FORMAT_TABLE && isatty(STDOUT_FILENO);
	long done = 0;
	int code;

	for (;;) {
		if (clear)
			printf("\033[H\033[2J");
		code = cmd_stats_once(opts);
		fflush(stdout);
		done++;
		if (!opts->watch || code == EXIT_USAGE || code == EXIT_DENIED ||
		    (opts->count > 0 && done >= opts->count))
			return code;
		struct timespec ts = {
		    .tv_sec = (time_t)opts->watch_interval,
		    .tv_nsec = (long)((opts->watch_interval - floor(opts->watch_interval)) * 1e9),
		};
		while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
			;
		if (opts->format != FORMAT_TABLE)
			printf("\n");
	}
}

static int cmd_shrink(const struct options *opts)
{
	json_object *req, *result = NULL;
	uint64_t bytes;
	int code;

	if (!opts->cgroup || !opts->bytes) {
		fprintf(stderr, "uzswapctl: shrink needs --cgroup PATH and --bytes N\n");
		return EXIT_USAGE;
	}
	if (config_parse_size(opts->bytes, &bytes) < 0 || bytes == 0 || bytes > INT64_MAX) {
		fprintf(stderr, "uzswapctl: --bytes: invalid size \"%s\" (like 512M)\n",
			opts->bytes);
		return EXIT_USAGE;
	}
	req = new_request("shrink");
	json_object_object_add(req, "cgroup", json_object_new_string(opts->cgroup));
	json_object_object_add(req, "bytes", json_object_new_int64((int64_t)bytes));
	code = request(opts, req, &result);
	json_object_put(req);
	if (code)
		return code;
	if (opts->format == FORMAT_JSON)
		print_json(result);
	else {
		printf("shrink %s\n", opts->cgroup);
		print_object(result, 2);
	}
	json_object_put(result);
	return EXIT_SUCCESS;
}

static int cmd_config_check(char **paths, int n_paths)
{
	char err[2048];
	int status = EXIT_SUCCESS;

	if (n_paths == 0) {
		struct uz_config *config;

		if (config_load(&config, CONFIG_DEFAULT_MAIN_PATH, CONFIG_DEFAULT_CGROUP_DIR, err,
				sizeof(err)) < 0) {
			fprintf(stderr, "%s\n", err);
			return EXIT_FAILURE;
		}
		printf("%s, %s: OK (%zu cgroup files)\n", CONFIG_DEFAULT_MAIN_PATH,
		       CONFIG_DEFAULT_CGROUP_DIR, config_cgroup_file_count(config));
		config_free(config);
		return EXIT_SUCCESS;
	}
	for (int i = 0; i < n_paths; i++) {
		struct stat st;
		int r;

		if (stat(paths[i], &st) == 0 && S_ISDIR(st.st_mode)) {
			struct uz_config *config;

			/* A cgroup.d directory: also catches two files for one cgroup. */
			r = config_load(&config, NULL, paths[i], err, sizeof(err));
			config_free(r < 0 ? NULL : config);
		} else {
			r = config_check_file(paths[i], err, sizeof(err));
		}
		if (r < 0) {
			fprintf(stderr, "%s\n", err);
			status = EXIT_FAILURE;
		} else {
			printf("%s: OK\n", paths[i]);
		}
	}
	return status;
}

/* --- main ---------------------------------------------------------------------- */

/* control.sock in the directory of path. */
static char *control_socket_next_to(const char *path)
{
	const char *slash = strrchr(path, '/');
	char *out;

	if (!slash)
		return strdup("control.sock");
	if (asprintf(&out, "%.*s/control.sock", (int)(slash - path), path) < 0)
		return NULL;
	return out;
}

/*
 * Where the control socket is when --socket does not say (uzswapctl(8),
 * ENVIRONMENT): the environment first, since it names one daemon, then
 * the daemon's config, then the built-in place.
 *   1. $UZSWAP_CONTROL_SOCKET;
 *   2. control.sock next to $UZSWAP_SOCKET (where a daemon started with
 *      that variable puts it);
 *   3. ControlSocket= of uzswapd.conf when it moves it from the default;
 *   4. control.sock next to Socket= of uzswapd.conf when that moves the
 *      client socket (the daemon puts the control socket beside it);
 *   5. UZSWAP_RUNDIR/control.sock; for a user other than root whose own
 *      daemon runs, $XDG_RUNTIME_DIR/uzswap/control.sock.
 * A config file with errors counts as absent here (config-check names them).
 */
static char *default_socket_path(void)
{
	const char *env = getenv("UZSWAP_CONTROL_SOCKET"), *runtime;
	struct uz_config *config;
	char err[256], *path = NULL;
	struct stat st;

	if (env && env[0])
		return strdup(env);
	env = getenv("UZSWAP_SOCKET");
	if (env && env[0])
		return control_socket_next_to(env);
	if (config_load(&config, CONFIG_DEFAULT_MAIN_PATH, NULL, err, sizeof(err)) == 0) {
		const struct config_daemon *cd = config_daemon(config);

		if (cd->control_socket_path && cd->control_socket_path[0] &&
		    strcmp(cd->control_socket_path, UZSWAP_RUNDIR "/control.sock"))
			path = strdup(cd->control_socket_path);
		else if (cd->socket_path && cd->socket_path[0] &&
			 strcmp(cd->socket_path, UZSWAP_RUNDIR "/uzswapd.sock"))
			path = control_socket_next_to(cd->socket_path);
		config_free(config);
		if (path)
			return path;
	}
	runtime = getenv("XDG_RUNTIME_DIR");
	if (geteuid() != 0 && runtime && runtime[0] &&
	    asprintf(&path, "%s/uzswap/control.sock", runtime) >= 0) {
		if (stat(path, &st) == 0 && S_ISSOCK(st.st_mode))
			return path;
		free(path);
	}
	return strdup(UZSWAP_RUNDIR "/control.sock");
}

int main(int argc, char **argv)
{
	enum {
		OPT_SOCKET = 256,
		OPT_VERSION,
		OPT_JSON,
		OPT_FORMAT,
		OPT_WATCH,
		OPT_CGROUP,
		OPT_BYTES,
		OPT_COUNT
	};
	static const struct option long_options[] = {
	    {"socket", required_argument, NULL, OPT_SOCKET},
	    {"help", no_argument, NULL, 'h'},
	    {"version", no_argument, NULL, OPT_VERSION},
	    {"json", no_argument, NULL, OPT_JSON},
	    {"format", required_argument, NULL, OPT_FORMAT},
	    {"watch", optional_argument, NULL, OPT_WATCH},
	    {"count", required_argument, NULL, OPT_COUNT},
	    {"cgroup", required_argument, NULL, OPT_CGROUP},
	    {"bytes", required_argument, NULL, OPT_BYTES},
	    {NULL, 0, NULL, 0},
	};
	struct options opts = {.format = FORMAT_TABLE, .watch_interval = 2};
	char *socket_path = NULL, *end;
	const char *command;
	int c, code;

	while ((c = getopt_long(argc, argv, "h", long_options, NULL)) != -1) {
		switch (c) {
		case 'h':
			usage(stdout);
			return EXIT_SUCCESS;
		case OPT_VERSION:
			printf("uzswapctl %s\n", UZSWAP_VERSION);
			return EXIT_SUCCESS;
		case OPT_SOCKET:
			opts.socket_path = optarg;
			break;
		case OPT_JSON:
			opts.format = FORMAT_JSON;
			break;
		case OPT_FORMAT:
			if (!strcmp(optarg, "table"))
				opts.format = FORMAT_TABLE;
			else if (!strcmp(optarg, "json"))
				opts.format = FORMAT_JSON;
			else if (!strcmp(optarg, "prometheus"))
				opts.format = FORMAT_PROMETHEUS;
			else {
				fprintf(stderr,
					"uzswapctl: --format: expected table, json or prometheus, "
					"not \"%s\"\n",
					optarg);
				return EXIT_USAGE;
			}
			break;
		case OPT_WATCH:
			opts.watch = true;
			if (optarg) {
				opts.watch_interval = strtod(optarg, &end);
				if (*end || !(opts.watch_interval >= 0.1) ||
				    opts.watch_interval > 86400) {
					fprintf(stderr,
						"uzswapctl: --watch: expected seconds "
						"(0.1..86400), not \"%s\"\n",
						optarg);
					return EXIT_USAGE;
				}
			}
			break;
		case OPT_COUNT:
			opts.count = strtol(optarg, &end, 10);
			if (*end || opts.count < 1) {
				fprintf(
				    stderr,
				    "uzswapctl: --count: expected a positive number, not \"%s\"\n",
				    optarg);
				return EXIT_USAGE;
			}
			break;
		case OPT_CGROUP:
			if (optarg[0] != '/') {
				fprintf(stderr,
					"uzswapctl: --cgroup: expected an absolute cgroup path, "
					"not \"%s\"\n",
					optarg);
				return EXIT_USAGE;
			}
			opts.cgroup = optarg;
			break;
		case OPT_BYTES:
			opts.bytes = optarg;
			break;
		default:
			usage(stderr);
			return EXIT_USAGE;
		}
	}
	if (optind >= argc) {
		usage(stderr);
		return EXIT_USAGE;
	}
	command = argv[optind];
	if (!strcmp(command, "config-check"))
		return cmd_config_check(argv + optind + 1, argc - optind - 1);
	if (optind + 1 < argc) {
		fprintf(stderr, "uzswapctl: %s: unexpected argument \"%s\"\n", command,
			argv[optind + 1]);
		return EXIT_USAGE;
	}
	if (!opts.socket_path) {
		socket_path = default_socket_path();
		if (!socket_path) {
			fprintf(stderr, "uzswapctl: out of memory\n");
			return EXIT_FAILURE;
		}
		opts.socket_path = socket_path;
	}
	if (opts.format == FORMAT_PROMETHEUS && strcmp(command, "stats")) {
		fprintf(stderr, "uzswapctl: --format=prometheus is for stats only\n");
		code = EXIT_USAGE;
	} else if (opts.watch && strcmp(command, "stats")) {
		fprintf(stderr, "uzswapctl: --watch is for stats only\n");
		code = EXIT_USAGE;
	} else if (!strcmp(command, "stats"))
		code = cmd_stats(&opts);
	else if (!strcmp(command, "shrink"))
		code = cmd_shrink(&opts);
	else if (!strcmp(command, "status") || !strcmp(command, "clients") ||
		 !strcmp(command, "reload") || !strcmp(command, "config"))
		code = cmd_simple(&opts, command);
	else {
		fprintf(stderr, "uzswapctl: unknown command \"%s\" (see uzswapctl --help)\n",
			command);
		code = EXIT_USAGE;
	}
	free(socket_path);
	return code;
}
