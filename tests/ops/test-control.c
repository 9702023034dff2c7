/* SPDX-License-Identifier: MIT */
/*
 * The control server and uzswapctl together, against fake daemon
 * callbacks: a thread runs the server on its own sd-event loop, and each
 * test runs the real uzswapctl binary (argv[1]) and checks its output and
 * exit code: tables with the numbers, --json read back with json-c,
 * Prometheus lines in the exposition format, changes refused to nobody
 * (uid 65534) and allowed to root and to the admin group, the "not
 * running" message, and protocol errors on a raw connection.
 */
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <limits.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "control/control.h"

#define NOBODY	  65534
#define ADMIN_GID 100

static const char *uzswapctl;
static char dir[PATH_MAX];
static char socket_path[PATH_MAX + 32];
static struct control_server *server;
static pthread_t thread;
static int stop_fd = -1;
static int ready_pipe[2];

/* what the fakes saw */
static int reload_calls;
static int reload_fail;
static char shrink_cgroup[256];
static uint64_t shrink_bytes;

/* --- fake daemon ------------------------------------------------------------ */

static int fake_status(void *userdata, json_object *out)
{
	json_object *pool = json_object_new_object();

	json_object_object_add(out, "version", json_object_new_string("0.1.0-test"));
	json_object_object_add(out, "pid", json_object_new_int(4242));
	json_object_object_add(out, "uptime_sec", json_object_new_int(3600));
	json_object_object_add(out, "clients", json_object_new_int(2));
	json_object_object_add(pool, "pool_total_size", control_json_u64(3 << 20));
	json_object_object_add(pool, "limit", control_json_u64(UINT64_MAX));
	json_object_object_add(out, "pool", pool);
	return 0;
}

static void fill_values(int64_t values[UZ_STAT__COUNT], int64_t scale)
{
	for (int i = 0; i < UZ_STAT__COUNT; i++)
		values[i] = 0;
	values[UZ_STAT_stored_pages] = 1000 * scale;
	values[UZ_STAT_same_filled_pages] = 200 * scale;
	values[UZ_STAT_compressed_bytes] = 800 * 4096 / 2 * scale; /* ratio 2.00 */
	values[UZ_STAT_zswpout] = 12345 * scale;
	values[UZ_STAT_zswpin] = 678 * scale;
}

static int fake_stats(void *userdata, const char *cgroup, json_object *out)
{
	struct control_latency latency = {5000, 12300, 45600, 98700, 1500000};
	struct control_pool_usage pool = {2 << 20, 256 << 20};
	int64_t values[UZ_STAT__COUNT];

	if (cgroup && strcmp(cgroup, "/system.slice/redis.service")) {
		json_object_object_add(out, "error", json_object_new_string("no such cgroup"));
		return -ENOENT;
	}
	fill_values(values, 3);
	control_json_stats_set_global(out, control_json_stats_block(values, &latency, &pool));
	fill_values(values, 1);
	control_json_stats_add_cgroup(out, "/system.slice/redis.service",
				      control_json_stats_block(values, &latency, &pool));
	if (!cgroup) {
		fill_values(values, 2);
		control_json_stats_add_cgroup(out, "/we\"ird",
					      control_json_stats_block(values, NULL, NULL));
	}
	return 0;
}

static int fake_clients(void *userdata, json_object *out)
{
	json_object *list = json_object_new_array(), *client = json_object_new_object();

	json_object_object_add(client, "pid", json_object_new_int(31337));
	json_object_object_add(client, "uid", json_object_new_int(1000));
	json_object_object_add(client, "cgroup",
			       json_object_new_string("/system.slice/redis.service"));
	json_object_object_add(client, "resident_bytes", json_object_new_int64(5 << 20));
	json_object_object_add(client, "stored_pages", json_object_new_int64(256));
	json_object_array_add(list, client);
	json_object_object_add(out, "clients", list);
	return 0;
}

static int fake_reload(void *userdata, char *err, size_t errlen)
{
	__atomic_add_fetch(&reload_calls, 1, __ATOMIC_SEQ_CST);
	if (__atomic_load_n(&reload_fail, __ATOMIC_SEQ_CST)) {
		snprintf(err, errlen,
			 "/etc/uzswap/cgroup.d/redis.conf:5: ResidentMax: invalid size \"12Q\"");
		return -EINVAL;
	}
	return 0;
}

static int fake_shrink(void *userdata, const char *cgroup, uint64_t bytes, json_object *out)
{
	snprintf(shrink_cgroup, sizeof(shrink_cgroup), "%s", cgroup);
	__atomic_store_n(&shrink_bytes, bytes, __ATOMIC_SEQ_CST);
	json_object_object_add(out, "requested_bytes", control_json_u64(bytes));
	json_object_object_add(out, "reclaimed_bytes", control_json_u64(bytes / 2));
	json_object_object_add(out, "writeback_requested_bytes", control_json_u64(0));
	return 0;
}

static const struct control_ops fake_ops = {
    .status = fake_status,
    .stats = fake_stats,
    .clients = fake_clients,
    .reload = fake_reload,
    .shrink = fake_shrink,
};

static int on_stop(sd_event_source *source, int fd, uint32_t revents, void *userdata)
{
	return sd_event_exit(sd_event_source_get_event(source), 0);
}

static void *server_thread(void *arg)
{
	sd_event *event = NULL;
	char ok = 1;

	if (sd_event_new(&event) < 0 || control_server_attach(server, event) < 0 ||
	    sd_event_add_io(event, NULL, stop_fd, EPOLLIN, on_stop, NULL) < 0)
		ok = 0;
	if (write(ready_pipe[1], &ok, 1) != 1 || !ok)
		return NULL;
	sd_event_loop(event);
	control_server_free(server);
	server = NULL;
	sd_event_unref(event);
	return NULL;
}

static int group_setup(void **state)
{
	char ok = 0;

	strcpy(dir, "/tmp/uzswap-test-control-XXXXXX");
	assert_non_null(mkdtemp(dir));
	assert_int_equal(chmod(dir, 0755), 0); /* nobody must reach the socket */
	snprintf(socket_path, sizeof(socket_path), "%s/control.sock", dir);
	assert_int_equal(control_server_new(&server, socket_path, -1, &fake_ops, NULL), 0);
	stop_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	assert_true(stop_fd >= 0);
	assert_int_equal(pipe(ready_pipe), 0);
	assert_int_equal(pthread_create(&thread, NULL, server_thread, NULL), 0);
	assert_int_equal(read(ready_pipe[0], &ok, 1), 1);
	assert_int_equal(ok, 1);
	return 0;
}

static int group_teardown(void **state)
{
	uint64_t one = 1;

	if (write(stop_fd, &one, sizeof(one)) != sizeof(one))
		return -1;
	pthread_join(thread, NULL);
	close(stop_fd);
	rmdir(dir);
	return 0;
}

/* --- running uzswapctl -------------------------------------------------------- */

struct run {
	int status; /* exit code */
	char out[65536];
	char err[4096];
};

enum who { AS_ROOT, AS_NOBODY, AS_NOBODY_IN_ADMIN_GROUP };

static void read_all(int fd, char *buf, size_t cap)
{
	size_t len = 0;
	ssize_t n;

	while (len + 1 < cap && (n = read(fd, buf + len, cap - 1 - len)) > 0)
		len += (size_t)n;
	buf[len] = '\0';
}

/* Run uzswapctl with args (NULL-terminated) as `who`; output in run. */
static void run_ctl(struct run *run, enum who who, ...)
{
	const char *argv[32] = {uzswapctl};
	int out_pipe[2], err_pipe[2], argc = 1, status;
	va_list ap;
	pid_t pid;

	va_start(ap, who);
	while ((argv[argc] = va_arg(ap, const char *)) && argc < 30)
		argc++;
	va_end(ap);
	assert_int_equal(pipe(out_pipe), 0);
	assert_int_equal(pipe(err_pipe), 0);
	pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		gid_t admin = ADMIN_GID;

		dup2(out_pipe[1], 1);
		dup2(err_pipe[1], 2);
		if (who != AS_ROOT) {
			if (setgroups(who == AS_NOBODY_IN_ADMIN_GROUP ? 1 : 0, &admin) < 0 ||
			    setgid(NOBODY) < 0 || setuid(NOBODY) < 0)
				_exit(120);
		}
		execv(uzswapctl, (char *const *)argv);
		_exit(121);
	}
	close(out_pipe[1]);
	close(err_pipe[1]);
	/* stderr is small; read stdout first, then stderr (both bounded by the child) */
	read_all(out_pipe[0], run->out, sizeof(run->out));
	read_all(err_pipe[0], run->err, sizeof(run->err));
	close(out_pipe[0]);
	close(err_pipe[0]);
	assert_int_equal(waitpid(pid, &status, 0), pid);
	assert_true(WIFEXITED(status));
	run->status = WEXITSTATUS(status);
	if (getenv("UZSWAP_TEST_VERBOSE"))
		printf("--- %s exit %d\n%s%s", argv[argc - 1], run->status, run->out, run->err);
}

static void assert_contains(const char *haystack, const char *needle)
{
	if (!strstr(haystack, needle))
		fail_msg("\"%s\" not found in:\n%s", needle, haystack);
}

/* --- tests -------------------------------------------------------------------- */

static void test_status_table(void **state)
{
	struct run run;

	run_ctl(&run, AS_ROOT, "--socket", socket_path, "status", NULL);
	assert_int_equal(run.status, 0);
	assert_contains(run.out, "0.1.0-test");
	assert_contains(run.out, "3600 s");
	assert_contains(run.out, "3.0 MiB");
	assert_contains(run.out, "unlimited");
}

static void test_stats_table(void **state)
{
	struct run run;

	run_ctl(&run, AS_NOBODY, "--socket", socket_path, "stats", NULL);
	assert_int_equal(run.status, 0);
	assert_contains(run.out, "global");
	assert_contains(run.out, "cgroup /system.slice/redis.service");
	assert_contains(run.out, "37035");	     /* global zswpout, 3 x 12345 */
	assert_contains(run.out, "12345");	     /* the cgroup's */
	assert_contains(run.out, "3000 (11.7 MiB)"); /* stored_pages with bytes */
	assert_contains(run.out, "2.00");	     /* compression ratio */
	assert_contains(run.out, "p50 12.3 µs");
	assert_contains(run.out, "p99.9 1.50 ms");
	assert_contains(run.out, "2.0 MiB of 256.0 MiB (0.8%)");

	run_ctl(&run, AS_ROOT, "--socket", socket_path, "stats", "--cgroup",
		"/system.slice/redis.service", NULL);
	assert_int_equal(run.status, 0);
	assert_null(strstr(run.out, "we\"ird"));

	run_ctl(&run, AS_ROOT, "--socket", socket_path, "stats", "--cgroup", "/nope", NULL);
	assert_int_equal(run.status, 1);
	assert_contains(run.err, "no such cgroup");
}

static void test_stats_json(void **state)
{
	json_object *root, *global, *counters, *value, *cgroups;
	struct run run;

	run_ctl(&run, AS_ROOT, "--socket", socket_path, "stats", "--json", NULL);
	assert_int_equal(run.status, 0);
	root = json_tokener_parse(run.out);
	assert_non_null(root);
	assert_true(json_object_object_get_ex(root, "global", &global));
	assert_true(json_object_object_get_ex(global, "counters", &counters));
	assert_true(json_object_object_get_ex(counters, "zswpout", &value));
	assert_int_equal(json_object_get_int64(value), 37035);
	assert_true(json_object_object_get_ex(global, "compression_ratio", &value));
	assert_true(json_object_get_double(value) > 1.99 && json_object_get_double(value) < 2.01);
	assert_true(json_object_object_get_ex(root, "cgroups", &cgroups));
	assert_int_equal(json_object_array_length(cgroups), 2);
	json_object_put(root);

	/* --format=json is the same */
	run_ctl(&run, AS_ROOT, "--socket", socket_path, "stats", "--format=json", NULL);
	assert_int_equal(run.status, 0);
	root = json_tokener_parse(run.out);
	assert_non_null(root);
	json_object_put(root);
}

static bool valid_metric_name(const char *s, size_t len)
{
	if (len == 0 || !((s[0] >= 'a' && s[0] <= 'z') || (s[0] >= 'A' && s[0] <= 'Z') ||
			  s[0] == '_' || s[0] == ':'))
		return false;
	for (size_t i = 1; i < len; i++)
		if (!((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= 'A' && s[i] <= 'Z') ||
		      (s[i] >= '0' && s[i] <= '9') || s[i] == '_' || s[i] == ':'))
			return false;
	return true;
}

/* One exposition line: a comment (HELP/TYPE) or name{labels} value. */
static void check_prometheus_line(const char *line)
{
	const char *p = line, *name_end, *value;
	char *end;

	if (!strncmp(line, "# HELP ", 7) || !strncmp(line, "# TYPE ", 7)) {
		const char *name = line + 7, *space = strchr(name, ' ');

		if (!space || !valid_metric_name(name, (size_t)(space - name)))
			fail_msg("bad comment line: %s", line);
		if (!strncmp(line, "# TYPE ", 7) && strcmp(space + 1, "counter") &&
		    strcmp(space + 1, "gauge") && strcmp(space + 1, "summary"))
			fail_msg("bad type: %s", line);
		return;
	}
	name_end = p + strcspn(p, "{ ");
	if (!valid_metric_name(p, (size_t)(name_end - p)))
		fail_msg("bad metric name: %s", line);
	p = name_end;
	if (*p == '{') {
		p++;
		while (*p != '}') {
			const char *eq = strchr(p, '=');

			if (!eq || !valid_metric_name(p, (size_t)(eq - p)) || eq[1] != '"')
				fail_msg("bad label: %s", line);
			p = eq + 2;
			while (*p && *p != '"') {
				if (*p == '\\') {
					if (p[1] != '\\' && p[1] != '"' && p[1] != 'n')
						fail_msg("bad escape: %s", line);
					p++;
				}
				p++;
			}
			if (*p != '"')
				fail_msg("unterminated label: %s", line);
			p++;
			if (*p == ',')
				p++;
			else if (*p != '}')
				fail_msg("bad label list: %s", line);
		}
		p++;
	}
	if (*p != ' ')
		fail_msg("no value: %s", line);
	value = p + 1;
	strtod(value, &end);
	if (end == value || *end)
		fail_msg("bad value: %s", line);
}

static void test_stats_prometheus(void **state)
{
	struct run run;
	char *line, *save = NULL;
	int lines = 0;

	run_ctl(&run, AS_ROOT, "--socket", socket_path, "stats", "--format=prometheus", NULL);
	assert_int_equal(run.status, 0);
	assert_contains(run.out, "# TYPE uzswap_zswpout_total counter\n");
	assert_contains(run.out, "\nuzswap_zswpout_total 37035\n");
	assert_contains(run.out,
			"\nuzswap_zswpout_total{cgroup=\"/system.slice/redis.service\"} 12345\n");
	assert_contains(run.out, "uzswap_zswpout_total{cgroup=\"/we\\\"ird\"} 24690\n");
	assert_contains(run.out, "# TYPE uzswap_stored_pages gauge\n");
	assert_contains(run.out, "uzswap_fault_latency_seconds{quantile=\"0.99\"} 0.000098700\n");
	assert_contains(run.out, "uzswap_fault_latency_seconds{cgroup=\"/system.slice/"
				 "redis.service\",quantile=\"0.5\"} 0.000012300\n");
	assert_contains(run.out, "uzswap_compression_ratio 2\n");
	for (line = strtok_r(run.out, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
		check_prometheus_line(line);
		lines++;
	}
	assert_true(lines > 3 * UZ_STAT__COUNT);
}

static void test_watch(void **state)
{
	struct run run;
	const char *second;

	run_ctl(&run, AS_ROOT, "--socket", socket_path, "stats", "--json", "--watch=0.1",
		"--count=2", NULL);
	assert_int_equal(run.status, 0);
	second = strstr(run.out, "}\n\n{");
	assert_non_null(second); /* two documents */
}

static void test_clients(void **state)
{
	struct run run;

	run_ctl(&run, AS_NOBODY, "--socket", socket_path, "clients", NULL);
	assert_int_equal(run.status, 0);
	assert_contains(run.out, "PID");
	assert_contains(run.out, "RESIDENT_BYTES");
	assert_contains(run.out, "31337");
	assert_contains(run.out, "5.0 MiB");
	assert_contains(run.out, "256 (1.0 MiB)");
}

static void test_changes_refused_to_nobody(void **state)
{
	int before = __atomic_load_n(&reload_calls, __ATOMIC_SEQ_CST);
	struct run run;

	control_server_set_admin_group(server, false, 0);
	run_ctl(&run, AS_NOBODY, "--socket", socket_path, "reload", NULL);
	assert_int_equal(run.status, 4);
	assert_contains(run.err, "permission denied: reload needs root");
	run_ctl(&run, AS_NOBODY, "--socket", socket_path, "shrink", "--cgroup", "/a", "--bytes",
		"1M", NULL);
	assert_int_equal(run.status, 4);
	assert_contains(run.err, "permission denied: shrink needs root");
	assert_int_equal(__atomic_load_n(&reload_calls, __ATOMIC_SEQ_CST), before);

	/* with an admin group, nobody outside it is still refused */
	control_server_set_admin_group(server, true, ADMIN_GID);
	run_ctl(&run, AS_NOBODY, "--socket", socket_path, "reload", NULL);
	assert_int_equal(run.status, 4);
	assert_contains(run.err, "membership in the control group (gid 100");
	control_server_set_admin_group(server, false, 0);
}

static void test_changes_allowed(void **state)
{
	int before = __atomic_load_n(&reload_calls, __ATOMIC_SEQ_CST);
	struct run run;

	run_ctl(&run, AS_ROOT, "--socket", socket_path, "reload", NULL);
	assert_int_equal(run.status, 0);
	assert_contains(run.out, "configuration reloaded");
	assert_int_equal(__atomic_load_n(&reload_calls, __ATOMIC_SEQ_CST), before + 1);

	/* a bad config: the message reaches the operator */
	__atomic_store_n(&reload_fail, 1, __ATOMIC_SEQ_CST);
	run_ctl(&run, AS_ROOT, "--socket", socket_path, "reload", NULL);
	__atomic_store_n(&reload_fail, 0, __ATOMIC_SEQ_CST);
	assert_int_equal(run.status, 1);
	assert_contains(run.err, "redis.conf:5: ResidentMax: invalid size \"12Q\"");

	run_ctl(&run, AS_ROOT, "--socket", socket_path, "shrink", "--cgroup",
		"/system.slice/redis.service", "--bytes", "64M", NULL);
	assert_int_equal(run.status, 0);
	assert_int_equal(__atomic_load_n(&shrink_bytes, __ATOMIC_SEQ_CST), 64 << 20);
	assert_string_equal(shrink_cgroup, "/system.slice/redis.service");
	assert_contains(run.out, "64.0 MiB");
	assert_contains(run.out, "32.0 MiB");

	/* a member of the admin group may change things too */
	control_server_set_admin_group(server, true, ADMIN_GID);
	run_ctl(&run, AS_NOBODY_IN_ADMIN_GROUP, "--socket", socket_path, "reload", NULL);
	control_server_set_admin_group(server, false, 0);
	assert_int_equal(run.status, 0);
	assert_int_equal(__atomic_load_n(&reload_calls, __ATOMIC_SEQ_CST), before + 3);
}

static void test_usage_errors(void **state)
{
	struct run run;

	run_ctl(&run, AS_ROOT, "--socket", socket_path, "shrink", "--cgroup", "/a", NULL);
	assert_int_equal(run.status, 2);
	run_ctl(&run, AS_ROOT, "--socket", socket_path, "shrink", "--cgroup", "/a", "--bytes",
		"12Q", NULL);
	assert_int_equal(run.status, 2);
	assert_contains(run.err, "invalid size \"12Q\"");
	run_ctl(&run, AS_ROOT, "--socket", socket_path, "frobnicate", NULL);
	assert_int_equal(run.status, 2);
	run_ctl(&run, AS_ROOT, "--socket", socket_path, "stats", "--format=xml", NULL);
	assert_int_equal(run.status, 2);
	run_ctl(&run, AS_ROOT, "--socket", socket_path, "config", NULL);
	assert_int_equal(run.status, 1);
	assert_contains(run.err, "not supported");
	run_ctl(&run, AS_ROOT, "--version", NULL);
	assert_int_equal(run.status, 0);
	assert_contains(run.out, "uzswapctl ");
}

static void test_not_running(void **state)
{
	char missing[PATH_MAX + 32];
	struct run run;

	snprintf(missing, sizeof(missing), "%s/missing.sock", dir);
	run_ctl(&run, AS_ROOT, "--socket", missing, "status", NULL);
	assert_int_equal(run.status, 3);
	assert_contains(run.err, "uzswapd is not running (no socket at ");
	assert_contains(run.err, "missing.sock");
}

static void test_config_check(void **state)
{
	char good[PATH_MAX + 32], bad[PATH_MAX + 32];
	struct run run;
	FILE *file;

	snprintf(good, sizeof(good), "%s/good.conf", dir);
	snprintf(bad, sizeof(bad), "%s/bad.conf", dir);
	file = fopen(good, "w");
	fputs("[Match]\nCgroup=/system.slice/redis.service\n[Limits]\nResidentMax=512M\n", file);
	fclose(file);
	file = fopen(bad, "w");
	fputs("[Match]\nCgroup=/x\n[Limits]\n\nResidentMax=12Q\n", file);
	fclose(file);
	run_ctl(&run, AS_ROOT, "config-check", good, NULL);
	assert_int_equal(run.status, 0);
	assert_contains(run.out, "good.conf: OK");
	run_ctl(&run, AS_ROOT, "config-check", good, bad, NULL);
	assert_int_equal(run.status, 1);
	assert_contains(run.err, "bad.conf:5: ResidentMax: invalid size \"12Q\"");
	unlink(good);
	unlink(bad);
}

/* Send raw bytes, read one reply line. */
static void raw_request(const char *data, size_t len, char *reply, size_t cap)
{
	struct sockaddr_un addr = {.sun_family = AF_UNIX};
	struct timeval timeout = {.tv_sec = 10};
	size_t got = 0;
	int fd;

	strcpy(addr.sun_path, socket_path);
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	assert_true(fd >= 0);
	assert_int_equal(connect(fd, (struct sockaddr *)&addr, sizeof(addr)), 0);
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof(timeout));
	assert_int_equal(send(fd, data, len, MSG_NOSIGNAL), (ssize_t)len);
	while (got + 1 < cap) {
		ssize_t n = read(fd, reply + got, cap - 1 - got);

		if (n <= 0)
			break;
		got += (size_t)n;
		if (memchr(reply, '\n', got))
			break;
	}
	reply[got] = '\0';
	close(fd);
}

static void test_protocol_errors(void **state)
{
	char reply[4096], big[CONTROL_MAX_REQUEST + 100];

	raw_request("not json\n", 9, reply, sizeof(reply));
	assert_contains(reply, "\"ok\":false");
	assert_contains(reply, "not a JSON object");

	raw_request("{\"cmd\":1}\n", 10, reply, sizeof(reply));
	assert_contains(reply, "no \\\"command\\\" string");

	raw_request("{\"command\":\"explode\"}\n", 22, reply, sizeof(reply));
	assert_contains(reply, "unknown command");

	raw_request("{\"command\":\"shrink\",\"cgroup\":\"/a\",\"bytes\":-5}\n", 46, reply,
		    sizeof(reply));
	assert_contains(reply, "\"ok\":false");

	memset(big, 'x', sizeof(big));
	raw_request(big, sizeof(big), reply, sizeof(reply));
	assert_contains(reply, "request too large");

	/* two requests in one write: two replies, in order */
	raw_request("{\"command\":\"status\"}\n", 21, reply, sizeof(reply));
	assert_contains(reply, "\"ok\":true");
}

/* The helper over the core's live objects gives the same schema. */
static void test_stats_block_from_core(void **state)
{
	struct control_pool_usage pool = {4096, UINT64_MAX};
	json_object *block, *map, *value;
	struct latency_hist *hist;
	struct stats *stats;

	assert_int_equal(stats_new(&stats), 0);
	assert_int_equal(latency_hist_new(&hist), 0);
	stats_add(stats, UZ_STAT_zswpout, 7);
	stats_add(stats, UZ_STAT_stored_pages, 3);
	for (int i = 0; i < 100; i++)
		latency_hist_record(hist, 10000);
	block = control_json_stats_block_from(stats, hist, &pool);
	assert_non_null(block);
	assert_true(json_object_object_get_ex(block, "counters", &map));
	assert_true(json_object_object_get_ex(map, "zswpout", &value));
	assert_int_equal(json_object_get_int64(value), 7);
	assert_true(json_object_object_get_ex(block, "gauges", &map));
	assert_true(json_object_object_get_ex(map, "stored_pages", &value));
	assert_int_equal(json_object_get_int64(value), 3);
	assert_true(json_object_object_get_ex(block, "fault_latency_ns", &map));
	assert_true(json_object_object_get_ex(map, "count", &value));
	assert_int_equal(json_object_get_int64(value), 100);
	assert_true(json_object_object_get_ex(block, "pool", &map));
	assert_true(json_object_object_get_ex(map, "limit", &value));
	assert_null(value); /* unlimited is null */
	json_object_put(block);
	latency_hist_free(hist);
	stats_free(stats);
}

int main(int argc, char **argv)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_status_table),
	    cmocka_unit_test(test_stats_table),
	    cmocka_unit_test(test_stats_json),
	    cmocka_unit_test(test_stats_prometheus),
	    cmocka_unit_test(test_watch),
	    cmocka_unit_test(test_clients),
	    cmocka_unit_test(test_changes_refused_to_nobody),
	    cmocka_unit_test(test_changes_allowed),
	    cmocka_unit_test(test_usage_errors),
	    cmocka_unit_test(test_not_running),
	    cmocka_unit_test(test_config_check),
	    cmocka_unit_test(test_protocol_errors),
	    cmocka_unit_test(test_stats_block_from_core),
	};

	if (argc < 2) {
		fprintf(stderr, "usage: test-control PATH-TO-UZSWAPCTL\n");
		return 1;
	}
	uzswapctl = argv[1];
	if (geteuid() != 0) {
		printf("test-control: needs root to run uzswapctl as another user\n");
		return 77;
	}
	return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
