// SPDX-License-Identifier: MIT
/*
 * uzswapd: the daemon.
 *
 * The main thread parses the options, loads the configuration
 * (daemon/config: uzswapd.conf and cgroup.d/), builds the shared state
 * (struct daemon: pool, LRU, statistics, groups, fault threads), binds the
 * client socket and the control socket (or takes them from systemd socket
 * activation), and runs an sd-event loop that accepts connections and runs
 * their handshake (daemon/client), then hands each client to a fault
 * thread (daemon/fault), round robin.  The same loop serves the control
 * socket (daemon/control) for uzswapctl.
 *
 * Precedence: command-line options over the config file over built-in
 * defaults.  --resident-max, --resident-low, --compressor, --fault-around
 * and --compression-unit override the config's [Defaults] (a cgroup.d
 * file that matches a client still wins).
 *
 * Timers on the loop: every 2 s the cgroup of every client is looked up
 * again (a process moved to another cgroup gets that cgroup's budget),
 * swap read failures the fault threads noted are logged (the first of
 * each kind; the fault path never logs) and systemd's STATUS= line is
 * refreshed; when systemd asks for a watchdog,
 * WATCHDOG=1 is sent at half its period, but only while every fault
 * thread's heartbeat keeps moving — a stuck fault thread gets the daemon
 * restarted.
 *
 * Signals are blocked in every thread and delivered to the loop through
 * signalfd (sd-event): SIGTERM/SIGINT stop accepting (STOPPING=1), give
 * every page back to every client through the SHUTDOWN handshake (bounded
 * by a timeout), print the statistics and exit 0; SIGHUP reloads the
 * configuration like `uzswapctl reload` (a bad config is refused and the
 * running one kept); SIGUSR1 prints the statistics.
 *
 * READY=1 goes to systemd once the client socket accepts clients (a no-op
 * without NOTIFY_SOCKET).
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <stddef.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <systemd/sd-daemon.h>
#include <systemd/sd-event.h>

#include "config.h"
#include "cgroup/cgroup.h"
#include "client/client.h"
#include "compress/compress.h"
#include "config/config.h"
#include "control/control.h"
#include "daemon.h"
#include "fault/fault.h"
#include "fault/writeback.h"
#include "group/group.h"
#include "pool/pool.h"
#include "page-entry.h"
#include "stats/stats.h"
#include "swap/swapfile.h"
#include "util.h"

struct options {
	char *socket_path; /* --socket, else [Daemon] Socket, else the default */
	const char *control_socket_path;
	const char *config_path;
	const char *cgroup_dir;
	const char *swap_file;
	bool swap_size_set;
	uint64_t swap_size;
	bool foreground;
	bool log_level_set;
	unsigned fault_threads; /* 0: from the config */
	struct policy_override override;
};

static void usage(FILE *f)
{
	fprintf(f,
		"Usage: uzswapd [OPTIONS]\n"
		"\n"
		"A userspace zswap: pages cold memory of client processes (run under\n"
		"LD_PRELOAD=libuzswap.so) into a compressed in-memory pool.\n"
		"Options override the configuration file.\n"
		"\n"
		"  --config FILE          main configuration file (default %s;\n"
		"                         a missing default file means built-in defaults)\n"
		"  --cgroup-dir DIR       per-cgroup configuration directory (default %s,\n"
		"                         or cgroup.d next to --config FILE)\n"
		"  --socket PATH          client socket (default [Daemon] Socket=, else\n"
		"                         %s/uzswapd.sock as root, else\n"
		"                         $XDG_RUNTIME_DIR/uzswap/uzswapd.sock;\n"
		"                         $UZSWAP_SOCKET overrides the default)\n"
		"  --control-socket PATH  control socket for uzswapctl (default [Daemon]\n"
		"                         ControlSocket=, else next to the client socket)\n"
		"  --foreground           stay in the foreground (uzswapd never forks; accepted\n"
		"                         for compatibility)\n"
		"  --log-level LEVEL      err, warning, notice, info (default), debug\n"
		"  --resident-max SIZE    resident budget per client, e.g. 64M (default 64M)\n"
		"  --resident-low SIZE|PCT  reclaim stops below this (default 90%%)\n"
		"  --fault-threads N      fault threads (default 2)\n"
		"  --compressor ALGO      lz4 (default) or zstd[:LEVEL]\n"
		"  --fault-around PAGES   largest fault-around window, 0 = off (default 32)\n"
		"  --compression-unit N   1: store pages singly; 4 (default): compress 4\n"
		"                         adjacent cold pages as one object where access\n"
		"                         has locality\n"
		"  --swap-file PATH       swap file of the writeback tier ([Swap] File=)\n"
		"  --swap-size SIZE       its size, 0 for none ([Swap] Size=)\n"
		"  -h, --help             this help\n"
		"  --version              print the version\n",
		CONFIG_DEFAULT_MAIN_PATH, CONFIG_DEFAULT_CGROUP_DIR, UZSWAP_RUNDIR);
}

/* "123", "64K", "512M", "2G", "1T" (binary units) -> bytes. */
static int parse_size(const char *s, uint64_t *out)
{
	char *end;
	unsigned long long v;
	unsigned shift = 0;

	errno = 0;
	if (!s[0] || s[0] == '-')
		return -EINVAL;
	v = strtoull(s, &end, 10);
	if (errno || end == s)
		return -EINVAL;
	switch (*end) {
	case 0:
		break;
	case 'k':
	case 'K':
		shift = 10;
		end++;
		break;
	case 'm':
	case 'M':
		shift = 20;
		end++;
		break;
	case 'g':
	case 'G':
		shift = 30;
		end++;
		break;
	case 't':
	case 'T':
		shift = 40;
		end++;
		break;
	default:
		return -EINVAL;
	}
	if (*end == 'i' && shift)
		end++;
	if (*end == 'B' || *end == 'b')
		end++;
	if (*end)
		return -EINVAL;
	if (shift && v > (UINT64_MAX >> shift))
		return -ERANGE;
	*out = (uint64_t)v << shift;
	return 0;
}

static int default_socket_path(char **out)
{
	const char *env = getenv("UZSWAP_SOCKET"), *runtime;
	char *path;

	if (env && env[0])
		path = strdup(env);
	else if (geteuid() == 0)
		path = strdup(UZSWAP_RUNDIR "/uzswapd.sock");
	else {
		runtime = getenv("XDG_RUNTIME_DIR");
		if (!runtime || !runtime[0])
			return -ENOENT;
		if (asprintf(&path, "%s/uzswap/uzswapd.sock", runtime) < 0)
			path = NULL;
	}
	if (!path)
		return -ENOMEM;
	*out = path;
	return 0;
}

static int parse_options(int argc, char **argv, struct options *o)
{
	enum {
		OPT_SOCKET = 0x100,
		OPT_CONTROL_SOCKET,
		OPT_CONFIG,
		OPT_CGROUP_DIR,
		OPT_FOREGROUND,
		OPT_LOG_LEVEL,
		OPT_RESIDENT_MAX,
		OPT_RESIDENT_LOW,
		OPT_FAULT_THREADS,
		OPT_COMPRESSOR,
		OPT_FAULT_AROUND,
		OPT_COMPRESSION_UNIT,
		OPT_SWAP_FILE,
		OPT_SWAP_SIZE,
		OPT_VERSION,
	};
	static const struct option longopts[] = {
	    {"socket", required_argument, NULL, OPT_SOCKET},
	    {"control-socket", required_argument, NULL, OPT_CONTROL_SOCKET},
	    {"config", required_argument, NULL, OPT_CONFIG},
	    {"cgroup-dir", required_argument, NULL, OPT_CGROUP_DIR},
	    {"foreground", no_argument, NULL, OPT_FOREGROUND},
	    {"log-level", required_argument, NULL, OPT_LOG_LEVEL},
	    {"resident-max", required_argument, NULL, OPT_RESIDENT_MAX},
	    {"resident-low", required_argument, NULL, OPT_RESIDENT_LOW},
	    {"fault-threads", required_argument, NULL, OPT_FAULT_THREADS},
	    {"compressor", required_argument, NULL, OPT_COMPRESSOR},
	    {"fault-around", required_argument, NULL, OPT_FAULT_AROUND},
	    {"compression-unit", required_argument, NULL, OPT_COMPRESSION_UNIT},
	    {"swap-file", required_argument, NULL, OPT_SWAP_FILE},
	    {"swap-size", required_argument, NULL, OPT_SWAP_SIZE},
	    {"help", no_argument, NULL, 'h'},
	    {"version", no_argument, NULL, OPT_VERSION},
	    {},
	};
	const char *resident_low = NULL;
	struct policy_override *ov = &o->override;
	int c, r;

	while ((c = getopt_long(argc, argv, "h", longopts, NULL)) >= 0) {
		switch (c) {
		case OPT_SOCKET:
			free(o->socket_path);
			o->socket_path = strdup(optarg);
			if (!o->socket_path)
				return -ENOMEM;
			break;
		case OPT_CONTROL_SOCKET:
			o->control_socket_path = optarg;
			break;
		case OPT_CONFIG:
			o->config_path = optarg;
			break;
		case OPT_CGROUP_DIR:
			o->cgroup_dir = optarg;
			break;
		case OPT_FOREGROUND:
			o->foreground = true;
			break;
		case OPT_LOG_LEVEL:
			r = uz_log_parse_level(optarg);
			if (r < 0) {
				fprintf(stderr, "uzswapd: --log-level: unknown level \"%s\"\n",
					optarg);
				return -EINVAL;
			}
			uz_log_max_level = r;
			o->log_level_set = true;
			break;
		case OPT_RESIDENT_MAX:
			if (parse_size(optarg, &ov->resident_max) < 0 ||
			    ov->resident_max < UZ_PAGE_SIZE * UZ_EVICT_BATCH_MAX / 8) {
				fprintf(stderr,
					"uzswapd: --resident-max: \"%s\" is not a size of at least "
					"256K\n",
					optarg);
				return -EINVAL;
			}
			ov->resident_max_set = true;
			break;
		case OPT_RESIDENT_LOW:
			resident_low = optarg;
			break;
		case OPT_FAULT_THREADS: {
			char *end;
			unsigned long n = strtoul(optarg, &end, 10);

			if (!optarg[0] || *end || n < 1 || n > 32) {
				fprintf(stderr, "uzswapd: --fault-threads: \"%s\" is not 1..32\n",
					optarg);
				return -EINVAL;
			}
			o->fault_threads = (unsigned)n;
			break;
		}
		case OPT_COMPRESSOR:
			if (compressor_parse(optarg, &ov->algo, &ov->level) < 0) {
				fprintf(
				    stderr,
				    "uzswapd: --compressor: \"%s\" is not lz4 or zstd[:LEVEL]\n",
				    optarg);
				return -EINVAL;
			}
			ov->compressor_set = true;
			break;
		case OPT_FAULT_AROUND: {
			char *end;
			unsigned long n = strtoul(optarg, &end, 10);

			if (!optarg[0] || *end || n > UZ_FAULT_AROUND_MAX) {
				fprintf(stderr, "uzswapd: --fault-around: \"%s\" is not 0..%d\n",
					optarg, UZ_FAULT_AROUND_MAX);
				return -EINVAL;
			}
			ov->fault_around = (unsigned)n;
			ov->fault_around_set = true;
			break;
		}
		case OPT_COMPRESSION_UNIT:
			if (strcmp(optarg, "1") != 0 && strcmp(optarg, "4") != 0) {
				fprintf(stderr,
					"uzswapd: --compression-unit: \"%s\" is not 1 (off) or 4\n",
					optarg);
				return -EINVAL;
			}
			ov->unit_pages = optarg[0] == '4' ? PE_UNIT_PAGES : 1;
			ov->unit_set = true;
			break;
		case OPT_SWAP_FILE:
			o->swap_file = optarg;
			break;
		case OPT_SWAP_SIZE:
			if (parse_size(optarg, &o->swap_size) < 0) {
				fprintf(stderr, "uzswapd: --swap-size: \"%s\" is not a size\n",
					optarg);
				return -EINVAL;
			}
			o->swap_size_set = true;
			break;
		case 'h':
			usage(stdout);
			return 1;
		case OPT_VERSION:
			printf("uzswapd %s\n", UZSWAP_VERSION);
			return 1;
		default:
			usage(stderr);
			return -EINVAL;
		}
	}
	if (optind < argc) {
		fprintf(stderr, "uzswapd: unexpected argument \"%s\"\n", argv[optind]);
		return -EINVAL;
	}

	if (resident_low) {
		uint64_t max = ov->resident_max_set ? ov->resident_max : UZ_DEFAULT_RESIDENT_MAX;
		size_t n = strlen(resident_low);
		uint64_t low;

		if (n > 1 && resident_low[n - 1] == '%') {
			char *end;
			unsigned long pct = strtoul(resident_low, &end, 10);

			if (end != resident_low + n - 1 || pct > 100) {
				fprintf(stderr, "uzswapd: --resident-low: bad percentage \"%s\"\n",
					resident_low);
				return -EINVAL;
			}
			low = max / 100 * pct;
		} else if (parse_size(resident_low, &low) < 0) {
			fprintf(stderr, "uzswapd: --resident-low: \"%s\" is not a size or NN%%\n",
				resident_low);
			return -EINVAL;
		}
		if (low > max) {
			fprintf(stderr, "uzswapd: --resident-low is above --resident-max\n");
			return -EINVAL;
		}
		ov->resident_low = low;
		ov->resident_low_set = true;
	}
	return 0;
}

/* mkdir -p of the socket's directory, mode 0755. */
static int make_parent_dirs(const char *path)
{
	char buf[PATH_MAX];
	size_t n = strlen(path);

	if (n >= sizeof(buf))
		return -ENAMETOOLONG;
	memcpy(buf, path, n + 1);
	for (char *p = buf + 1; *p; p++) {
		if (*p != '/')
			continue;
		*p = 0;
		if (mkdir(buf, 0755) < 0 && errno != EEXIST)
			return -errno;
		*p = '/';
	}
	return 0;
}

static int listen_socket(const char *path, int *out)
{
	struct sockaddr_un addr = {.sun_family = AF_UNIX};
	int fd, r;

	if (strlen(path) >= sizeof(addr.sun_path))
		return -ENAMETOOLONG;
	strcpy(addr.sun_path, path);
	r = make_parent_dirs(path);
	if (r < 0) {
		uz_log(LOG_ERR, "cannot create the directory of \"%s\": %s", path, strerror(-r));
		return r;
	}
	fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (fd < 0)
		return -errno;

	/* A socket file left by a dead daemon is removed; a live one is not. */
	if (connect(fd, (struct sockaddr *)&addr, sizeof(addr)) == 0) {
		close(fd);
		uz_log(LOG_ERR, "another uzswapd is listening on \"%s\"", path);
		return -EADDRINUSE;
	}
	close(fd);
	fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (fd < 0)
		return -errno;
	{
		struct stat st;

		if (lstat(path, &st) == 0 && S_ISSOCK(st.st_mode))
			unlink(path);
	}
	if (bind(fd, (struct sockaddr *)&addr, sizeof(addr)) < 0) {
		r = -errno;
		uz_log(LOG_ERR, "cannot bind \"%s\": %m", addr.sun_path);
		close(fd);
		return r;
	}
	if (chmod(path, 0666) < 0 || listen(fd, 128) < 0) {
		r = -errno;
		uz_log(LOG_ERR, "cannot listen on \"%s\": %m", addr.sun_path);
		close(fd);
		unlink(addr.sun_path);
		return r;
	}
	*out = fd;
	return 0;
}

struct main_state {
	struct daemon *daemon;
	sd_event *event;
	struct control_server *control;
	struct options *options;
	int listen_fd;
	int control_fd;	 /* from socket activation, else -1 */
	bool own_socket; /* we bound it: unlink on exit */
	bool handover;	 /* SIGUSR2: leave the clients their state for the next uzswapd */
	char *socket_path;
	char activated_socket_path[sizeof(((struct sockaddr_un *)0)->sun_path) + 1];
	char *control_path;
	char *config_path;
	char *cgroup_dir;
	uint64_t watchdog_usec; /* 0: no watchdog */
	bool ready_sent;
};

#define MAIN_RECHECK_USEC (2ULL * 1000 * 1000) /* cgroup re-check and STATUS= period */

/* --- logging -------------------------------------------------------------- */

/* systemd sets JOURNAL_STREAM=DEV:INO when stderr is connected to the journal. */
static bool stderr_is_journal(void)
{
	const char *env = getenv("JOURNAL_STREAM");
	unsigned long long dev, ino;
	struct stat st;

	if (!env || sscanf(env, "%llu:%llu", &dev, &ino) != 2)
		return false;
	if (fstat(STDERR_FILENO, &st) < 0)
		return false;
	return (unsigned long long)st.st_dev == dev && (unsigned long long)st.st_ino == ino;
}

/* --- configuration ---------------------------------------------------------- */

static int config_load_checked(struct main_state *m, struct uz_config **out, char *err,
			       size_t errlen)
{
	/* An explicit --config must exist; the default one may be missing. */
	if (m->options->config_path && access(m->config_path, R_OK) < 0) {
		snprintf(err, errlen, "%s: cannot read: %s", m->config_path, strerror(errno));
		return -errno;
	}
	return config_load(out, m->config_path, m->cgroup_dir, err, errlen);
}

/* What may change on reload: log level, admin group, every client's policy. */
static void config_apply(struct main_state *m, struct uz_config *config)
{
	const struct config_daemon *cd = config_daemon(config);
	struct daemon *d = m->daemon;

	if (!m->options->log_level_set)
		uz_log_max_level = cd->log_level;
	if (m->control)
		control_server_set_admin_group(m->control, cd->control_group_set, cd->control_gid);
	config_free(d->config);
	d->config = config;
}

static int do_reload(struct main_state *m, char *err, size_t errlen)
{
	struct uz_config *config = NULL;
	unsigned changed;
	int r;

	char config_field[PATH_MAX + 16], reason[1024 + 16];
	const char *fields[] = {config_field, reason, NULL};

	snprintf(config_field, sizeof(config_field), "UZSWAP_CONFIG=%s", m->config_path);
	r = config_load_checked(m, &config, err, errlen);
	if (r < 0) {
		snprintf(reason, sizeof(reason), "UZSWAP_REASON=%s", err);
		uz_log_event(LOG_ERR, UZ_MESSAGE_RELOAD_REFUSED, NULL, fields,
			     "reload refused, keeping the running configuration: %s", err);
		return r;
	}
	config_apply(m, config);
	changed = daemon_reassign_clients(m->daemon, true);
	fields[1] = NULL;
	uz_log_event(LOG_NOTICE, UZ_MESSAGE_RELOADED, NULL, fields,
		     "configuration reloaded from \"%s\" (%zu cgroup file%s); %u client%s",
		     m->config_path, config_cgroup_file_count(config),
		     config_cgroup_file_count(config) == 1 ? "" : "s", changed,
		     changed == 1 ? "" : "s");
	return 0;
}

/* dirname(path) + "/" + name */
static char *sibling_path(const char *path, const char *name)
{
	const char *slash = strrchr(path, '/');
	char *out;

	if (!slash)
		return strdup(name);
	if (asprintf(&out, "%.*s/%s", (int)(slash - path), path, name) < 0)
		return NULL;
	return out;
}

/* --- control socket callbacks (docs/CONTROL.md) ------------------------------ */

static void json_set(json_object *obj, const char *key, json_object *value)
{
	json_object_object_add(obj, key, value);
}

static int op_status(void *userdata, json_object *out)
{
	struct main_state *m = userdata;
	struct daemon *d = m->daemon;
	struct pool_usage usage;
	json_object *pool, *swap, *config;
	unsigned nr_clients;

	pool_totals_get(d->pool_totals, &usage);
	pthread_mutex_lock(&d->clients_lock);
	nr_clients = d->nr_clients;
	pthread_mutex_unlock(&d->clients_lock);
	json_set(out, "version", json_object_new_string(UZSWAP_VERSION));
	json_set(out, "pid", json_object_new_int64(getpid()));
	json_set(out, "uptime_sec",
		 json_object_new_int64((int64_t)((uz_now_usec() - d->started_usec) / 1000000)));
	json_set(out, "clients", json_object_new_int64(nr_clients));
	json_set(out, "cgroups", json_object_new_int64(d->groups.nr_groups));
	json_set(out, "fault_threads", json_object_new_int64(d->nr_fault_threads));
	json_set(out, "socket", json_object_new_string(m->socket_path));
	pool = json_object_new_object();
	json_set(pool, "pool_total_size", control_json_u64(usage.total_size));
	json_set(pool, "limit", control_json_u64(d->pool_max_size));
	json_set(out, "pool", pool);
	swap = json_object_new_object();
	json_set(swap, "used_bytes",
		 control_json_u64((uint64_t)uz_max(stats_read(d->stats, UZ_STAT_on_disk_pages), 0) *
				  UZ_PAGE_SIZE));
	json_set(swap, "size_bytes", control_json_u64(d->swap_size));
	json_set(swap, "file", json_object_new_string(d->swap_file ? d->swap_file : ""));
	json_set(
	    swap, "backend",
	    json_object_new_string(swap_backend_name((enum swap_backend_kind)d->swap_backend)));
	if (d->swap_backend == SWAP_BACKEND_NBD) {
		struct swap *open_swap = __atomic_load_n(&d->swap, __ATOMIC_ACQUIRE);
		struct swap_info info = {0};

		if (open_swap)
			swap_get_info(open_swap, &info);
		/* Records fit the export's whole clusters; null until it answered. */
		json_set(swap, "size_bytes",
			 open_swap ? control_json_u64(info.file_size) : json_object_new_null());
		json_set(swap, "uri", json_object_new_string(d->swap_uri ? d->swap_uri : ""));
	}
	json_set(out, "swap", swap);
	config = json_object_new_object();
	json_set(config, "main", json_object_new_string(config_main_path(d->config)));
	json_set(config, "cgroup_dir", json_object_new_string(config_cgroup_dir(d->config)));
	json_set(config, "cgroup_files",
		 json_object_new_int64((int64_t)config_cgroup_file_count(d->config)));
	json_set(out, "config", config);
	return 0;
}

static json_object *policy_json(const struct uz_policy *p)
{
	json_object *o = json_object_new_object();
	char comp[32];

	json_set(o, "resident_max", control_json_u64(p->resident_max));
	json_set(o, "resident_low", control_json_u64(p->resident_low));
	json_set(o, "pool_max", control_json_u64(p->pool_max));
	json_set(o, "swap_max", control_json_u64(p->swap_max));
	json_set(o, "writeback", json_object_new_boolean(p->writeback));
	if (p->algo == COMPRESSOR_ZSTD && p->level)
		snprintf(comp, sizeof(comp), "zstd:%d", p->level);
	else
		snprintf(comp, sizeof(comp), "%s", compressor_algo_name(p->algo));
	json_set(o, "compressor", json_object_new_string(comp));
	json_set(o, "fault_around", json_object_new_int64(p->fault_around_max));
	json_set(o, "compression_unit", json_object_new_int64(p->unit_pages));
	return o;
}

struct stats_walk {
	struct main_state *m;
	json_object *out;
	int error;
};

static int stats_add_group(struct uz_group *g, void *userdata)
{
	struct stats_walk *w = userdata;
	struct daemon *d = w->m->daemon;
	struct control_pool_usage pool = {.pool_total_size = group_pool_bytes(g),
					  .limit = UZ_UNLIMITED};
	json_object *block;
	unsigned nr_clients = 0;
	struct uz_policy policy;
	bool have_policy = false;

	pthread_mutex_lock(&d->clients_lock);
	for (struct uz_list *i = d->clients.next; i != &d->clients; i = i->next) {
		struct client *c = uz_container_of(i, struct client, link);

		if (c->assigned_group != g)
			continue;
		if (!nr_clients++) {
			policy = c->assigned_policy;
			have_policy = true;
		}
	}
	pthread_mutex_unlock(&d->clients_lock);
	if (have_policy)
		pool.limit = policy.pool_max;
	block = control_json_stats_block_from(g->stats, NULL, &pool);
	if (!block) {
		w->error = -ENOMEM;
		return 1;
	}
	json_set(block, "clients", json_object_new_int64(nr_clients));
	if (have_policy)
		json_set(block, "policy", policy_json(&policy));
	if (control_json_stats_add_cgroup(w->out, g->path, block) < 0) {
		w->error = -ENOMEM;
		return 1;
	}
	return 0;
}

static int op_stats(void *userdata, const char *cgroup, json_object *out)
{
	struct main_state *m = userdata;
	struct daemon *d = m->daemon;
	struct pool_usage usage;
	struct control_pool_usage pool;
	struct stats_walk w = {.m = m, .out = out};
	struct swap *swap;
	json_object *block;

	pool_totals_get(d->pool_totals, &usage);
	pool = (struct control_pool_usage){.pool_total_size = usage.total_size,
					   .limit = d->pool_max_size};
	block = control_json_stats_block_from(d->stats, d->fault_latency, &pool);
	if (!block)
		return -ENOMEM;
	swap = __atomic_load_n(&d->swap, __ATOMIC_ACQUIRE);
	if (swap) {
		struct swap_stats ss;
		struct swap_latency rl, wl;
		struct control_backend backend;

		swap_get_stats(swap, &ss);
		swap_get_latency(swap, &rl, &wl);
		backend = (struct control_backend){
		    .kind = swap_backend_name((enum swap_backend_kind)d->swap_backend),
		    .target = d->swap_backend == SWAP_BACKEND_NBD ? d->swap_uri : d->swap_file,
		    .links_up = ss.links_up,
		    .reconnects = ss.backend_reconnects,
		    .errors = ss.backend_errors,
		    .read_timeouts = ss.read_timeouts,
		    .quarantined = ss.quarantined_slots,
		    .bytes_written = ss.bytes_written,
		    .bytes_read = ss.bytes_read,
		    .read = {.count = rl.count, .p50_ns = rl.p50_ns, .p99_ns = rl.p99_ns},
		    .write = {.count = wl.count, .p50_ns = wl.p50_ns, .p99_ns = wl.p99_ns},
		};
		json_set(block, "backend", control_json_backend(&backend));
	}
	if (control_json_stats_set_global(out, block) < 0)
		return -ENOMEM;
	json_set(out, "cgroups", json_object_new_array());
	if (cgroup) {
		struct uz_group *g = group_find(&d->groups, cgroup);

		if (!g) {
			json_set(out, "error",
				 json_object_new_string("no client has been seen in that cgroup"));
			return -ENOENT;
		}
		stats_add_group(g, &w);
		group_unref(g);
	} else {
		group_foreach(&d->groups, stats_add_group, &w);
	}
	return w.error;
}

static int op_clients(void *userdata, json_object *out)
{
	struct main_state *m = userdata;
	struct daemon *d = m->daemon;
	json_object *array = json_object_new_array();

	if (!array)
		return -ENOMEM;
	pthread_mutex_lock(&d->clients_lock);
	for (struct uz_list *i = d->clients.next; i != &d->clients; i = i->next) {
		struct client *c = uz_container_of(i, struct client, link);
		json_object *o = json_object_new_object();
		int64_t v[UZ_STAT__COUNT];

		if (!o)
			break;
		stats_read_all(c->stats, v);
		json_set(o, "id", json_object_new_int64((int64_t)c->id));
		json_set(o, "pid", json_object_new_int64(c->pid));
		json_set(o, "uid", json_object_new_int64(c->uid));
		json_set(o, "comm", json_object_new_string(c->comm));
		json_set(o, "joined", json_object_new_string(client_join_kind(c)));
		json_set(o, "cgroup", json_object_new_string(c->assigned_group->path));
		json_set(o, "resident_bytes",
			 json_object_new_int64(v[UZ_STAT_resident_pages] * UZ_PAGE_SIZE));
		{
			/*
			 * managed: resident + stored + on disk; the process's
			 * anonymous memory is its RssAnon (sampled every 2 s)
			 * plus what was evicted from it.
			 */
			uint64_t managed = client_managed_pages(c) * UZ_PAGE_SIZE;
			uint64_t evicted = (uint64_t)uz_max(v[UZ_STAT_stored_pages] +
								v[UZ_STAT_on_disk_pages],
							    (int64_t)0) *
					   UZ_PAGE_SIZE;
			uint64_t anon = c->anon_rss_bytes + evicted;

			json_set(o, "managed_bytes", control_json_u64(managed));
			json_set(o, "anon_rss_bytes", control_json_u64(c->anon_rss_bytes));
			json_set(o, "managed_percent",
				 c->anon_rss_bytes ? json_object_new_double(
							 uz_min(100.0, 100.0 * managed / anon))
						   : NULL);
		}
		json_set(o, "resident_max", control_json_u64(c->assigned_policy.resident_max));
		json_set(o, "stored_pages", json_object_new_int64(v[UZ_STAT_stored_pages]));
		json_set(o, "compressed_bytes", json_object_new_int64(v[UZ_STAT_compressed_bytes]));
		json_set(o, "on_disk_pages", json_object_new_int64(v[UZ_STAT_on_disk_pages]));
		json_set(o, "zswpout", json_object_new_int64(v[UZ_STAT_zswpout]));
		json_set(o, "zswpin", json_object_new_int64(v[UZ_STAT_zswpin]));
		json_object_array_add(array, o);
	}
	pthread_mutex_unlock(&d->clients_lock);
	json_set(out, "clients", array);
	return 0;
}

static int op_reload(void *userdata, char *err, size_t errlen)
{
	return do_reload(userdata, err, errlen);
}

static int op_shrink(void *userdata, const char *cgroup, uint64_t bytes, json_object *out)
{
	struct main_state *m = userdata;
	struct uz_group *g = group_find(&m->daemon->groups, cgroup);
	uint64_t queued = 0;
	int r;

	if (!g) {
		json_set(out, "error", json_object_new_string("no client has been seen in that cgroup"));
		return -ENOENT;
	}
	r = daemon_shrink_group(m->daemon, g, bytes, &queued);
	group_unref(g);
	if (r < 0)
		return r;
	/*
	 * Both halves run on the fault threads, after this reply: eviction of
	 * resident pages into the pool (reported: what the threads were asked
	 * to evict, bounded by what is resident) and, when a swap file is
	 * open, writeback of the group's stored pages (bounded by `bytes` and
	 * the shrinker count).  Their effect shows in the group's statistics
	 * (zswpout, zswpwb); the reply says what was asked, not what was done.
	 */
	json_set(out, "requested_bytes", control_json_u64(bytes));
	json_set(out, "reclaimed_bytes", control_json_u64(queued));
	json_set(out, "writeback_requested_bytes",
		 control_json_u64(m->daemon->swap ? bytes : 0));
	json_set(out, "asynchronous", json_object_new_boolean(true));
	{
		struct uz_log_client where = {.cgroup = cgroup};
		char asked[48], evicting[48];
		const char *fields[] = {asked, evicting, NULL};

		snprintf(asked, sizeof(asked), "UZSWAP_BYTES=%" PRIu64, bytes);
		snprintf(evicting, sizeof(evicting), "UZSWAP_QUEUED_BYTES=%" PRIu64, queued);
		uz_log_event(LOG_INFO, UZ_MESSAGE_SHRINK, &where, fields,
			     "shrink of \"%s\": %" PRIu64 " bytes asked, %" PRIu64 " queued",
			     cgroup, bytes, queued);
	}
	return 0;
}

static int op_config(void *userdata, json_object *out)
{
	struct main_state *m = userdata;
	char *text = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&text, &len);
	int r;

	if (!f)
		return -ENOMEM;
	r = config_dump(m->daemon->config, f);
	fclose(f);
	if (r < 0) {
		free(text);
		return r;
	}
	json_set(out, "text", json_object_new_string(text ? text : ""));
	free(text);
	return 0;
}

static const struct control_ops control_ops = {
    .status = op_status,
    .stats = op_stats,
    .clients = op_clients,
    .reload = op_reload,
    .shrink = op_shrink,
    .config = op_config,
};

/* --- event loop callbacks ---------------------------------------------------- */

static int on_accept(sd_event_source *s, int fd, uint32_t revents, void *userdata)
{
	struct main_state *m = userdata;

	for (int i = 0; i < 64; i++) {
		int cfd = accept4(fd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);

		if (cfd < 0) {
			if (errno != EAGAIN && errno != EINTR && errno != ECONNABORTED)
				uz_log(LOG_WARNING, "accept on the client socket failed: %m");
			break;
		}
		if (client_handshake_start(m->daemon, m->event, cfd) < 0)
			uz_log(LOG_WARNING, "cannot watch a new connection: out of memory");
	}
	return 0;
}

static int on_terminate(sd_event_source *s, const struct signalfd_siginfo *si, void *userdata)
{
	struct main_state *m = userdata;

	uz_log(LOG_INFO, "received %s: giving every page back and exiting",
	       strsignal((int)si->ssi_signo));
	(void)sd_notify(0, "STOPPING=1\nSTATUS=Giving every page back to the clients");
	sd_event_exit(m->event, 0);
	return 0;
}

/*
 * SIGUSR2: hand over (an upgrade, a planned restart).  The clients keep
 * every page where it is -- their stores, arenas and swap records are
 * theirs -- and re-join whichever uzswapd listens next; nothing is given
 * back, so nobody's footprint comes back into memory at once.  Exits with
 * UZ_EXIT_HANDOVER, which the unit's Restart= turns into a start.
 */
static int on_handover(sd_event_source *s, const struct signalfd_siginfo *si, void *userdata)
{
	struct main_state *m = userdata;

	uz_log(LOG_INFO, "received %s: handing over; clients keep their pages and re-join the "
			 "next uzswapd",
	       strsignal((int)si->ssi_signo));
	(void)sd_notify(0, "STOPPING=1\nSTATUS=Handing over to the next uzswapd");
	m->handover = true;
	sd_event_exit(m->event, 0);
	return 0;
}

static int on_reload(sd_event_source *s, const struct signalfd_siginfo *si, void *userdata)
{
	struct main_state *m = userdata;
	char err[1024];

	(void)sd_notify(0, "RELOADING=1");
	uz_log(LOG_INFO, "SIGHUP: reloading the configuration");
	(void)do_reload(m, err, sizeof(err));
	(void)sd_notify(0, "READY=1");
	return 0;
}

static int on_usr1(sd_event_source *s, const struct signalfd_siginfo *si, void *userdata)
{
	struct main_state *m = userdata;

	daemon_print_summary(m->daemon, stderr);
	return 0;
}

static void notify_status(struct main_state *m)
{
	struct daemon *d = m->daemon;
	int64_t v[UZ_STAT__COUNT];
	unsigned nr_clients;
	double ratio;

	stats_read_all(d->stats, v);
	pthread_mutex_lock(&d->clients_lock);
	nr_clients = d->nr_clients;
	pthread_mutex_unlock(&d->clients_lock);
	ratio = v[UZ_STAT_compressed_bytes] > 0
		    ? (double)(v[UZ_STAT_stored_pages] - v[UZ_STAT_same_filled_pages]) *
			  UZ_PAGE_SIZE / (double)v[UZ_STAT_compressed_bytes]
		    : 0.0;
	(void)sd_notifyf(0,
			 "STATUS=%u client%s, resident %" PRId64 " MiB, stored %" PRId64
			 " MiB, compression ratio %.2f",
			 nr_clients, nr_clients == 1 ? "" : "s",
			 v[UZ_STAT_resident_pages] * UZ_PAGE_SIZE >> 20,
			 v[UZ_STAT_stored_pages] * UZ_PAGE_SIZE >> 20, ratio);
}

static int rearm(sd_event_source *s, uint64_t usec)
{
	int r = sd_event_source_set_time_relative(s, usec);

	if (r >= 0)
		r = sd_event_source_set_enabled(s, SD_EVENT_ONESHOT);
	return r;
}

/* Every 2 s: processes that changed cgroup get their new group and policy; STATUS=. */
static int on_recheck(sd_event_source *s, uint64_t usec, void *userdata)
{
	struct main_state *m = userdata;
	unsigned changed = daemon_reassign_clients(m->daemon, false);

	daemon_log_page_errors(m->daemon);
	writeback_retry_open(m->daemon);
	daemon_swap_collect(m->daemon);
	daemon_sample_clients(m->daemon);
	if (changed)
		uz_log(LOG_INFO, "%u client%s changed cgroup or budget", changed,
		       changed == 1 ? "" : "s");
	notify_status(m);
	return rearm(s, MAIN_RECHECK_USEC);
}

static int on_watchdog(sd_event_source *s, uint64_t usec, void *userdata)
{
	struct main_state *m = userdata;
	uint64_t max_age = uz_max(2ULL * 1000 * 1000, m->watchdog_usec / 3);

	if (daemon_threads_alive(m->daemon, max_age))
		(void)sd_notify(0, "WATCHDOG=1");
	else
		uz_log_event(LOG_ERR, UZ_MESSAGE_WATCHDOG_STUCK, NULL, NULL,
			     "a fault thread is stuck: no watchdog ping");
	return rearm(s, m->watchdog_usec / 2);
}

/* A fault thread queued departed clients: log them (daemon_client_left). */
static int on_departures(sd_event_source *s, int fd, uint32_t revents, void *userdata)
{
	struct main_state *m = userdata;

	daemon_log_departures(m->daemon);
	return 0;
}

/* Runs on the first loop iteration: the client socket is being served. */
static int on_first_iteration(sd_event_source *s, void *userdata)
{
	struct main_state *m = userdata;

	if (!m->ready_sent) {
		m->ready_sent = true;
		(void)sd_notify(0, "READY=1");
		notify_status(m);
	}
	return sd_event_source_set_enabled(s, SD_EVENT_OFF);
}

/* --- start-up ----------------------------------------------------------------- */

/*
 * Sockets passed by systemd: the client socket (SOCK_SEQPACKET) and,
 * optionally, the control socket (SOCK_STREAM, or FileDescriptorName=control).
 */
static int take_activated_sockets(struct main_state *m)
{
	char **names = NULL;
	int n, r = 0;

	n = sd_listen_fds_with_names(1, &names);
	if (n <= 0) {
		strv_free_names:
		if (names)
			for (int i = 0; names[i]; i++)
				free(names[i]);
		free(names);
		return n < 0 ? n : 0;
	}
	for (int i = 0; i < n; i++) {
		int fd = SD_LISTEN_FDS_START + i;
		bool named_control = names && names[i] && strcmp(names[i], "control") == 0;

		if (!named_control && m->listen_fd < 0 &&
		    sd_is_socket_unix(fd, SOCK_SEQPACKET, 1, NULL, 0) > 0) {
			m->listen_fd = fd;
		} else if (m->control_fd < 0 && sd_is_socket_unix(fd, SOCK_STREAM, 1, NULL, 0) > 0) {
			m->control_fd = fd;
		} else {
			uz_log(LOG_ERR,
			       "socket activation: fd %d (\"%s\") is neither a listening "
			       "SOCK_SEQPACKET client socket nor a SOCK_STREAM control socket",
			       fd, names && names[i] ? names[i] : "");
			r = -EINVAL;
		}
		(void)fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
		(void)fcntl(fd, F_SETFD, FD_CLOEXEC);
	}
	if (!r && m->listen_fd < 0) {
		uz_log(LOG_ERR, "socket activation passed no SOCK_SEQPACKET client socket");
		r = -EINVAL;
	}
	n = r;
	goto strv_free_names;
}

int main(int argc, char **argv)
{
	struct options o = {0};
	struct main_state m = {.listen_fd = -1, .control_fd = -1, .options = &o};
	struct uz_config *config = NULL;
	const struct config_daemon *cd;
	struct uz_policy policy;
	sd_event_source *recheck = NULL, *watchdog = NULL, *first = NULL;
	char err[1024];
	sigset_t mask;
	int r;

	r = parse_options(argc, argv, &o);
	if (r != 0) {
		free(o.socket_path);
		return r > 0 ? EXIT_SUCCESS : EXIT_FAILURE;
	}
	uz_log_to_journal = stderr_is_journal();

	/* Configuration: --config, else the default file (missing = built-in defaults). */
	m.config_path = strdup(o.config_path ? o.config_path : CONFIG_DEFAULT_MAIN_PATH);
	if (o.cgroup_dir)
		m.cgroup_dir = strdup(o.cgroup_dir);
	else if (o.config_path)
		m.cgroup_dir = sibling_path(o.config_path, "cgroup.d");
	else
		m.cgroup_dir = strdup(CONFIG_DEFAULT_CGROUP_DIR);
	if (!m.config_path || !m.cgroup_dir) {
		r = -ENOMEM;
		goto out;
	}
	r = config_load_checked(&m, &config, err, sizeof(err));
	if (r < 0) {
		uz_log(LOG_ERR, "cannot start: %s", err);
		goto out;
	}
	cd = config_daemon(config);
	if (!o.log_level_set)
		uz_log_max_level = cd->log_level;

	/* Client socket: --socket, else Socket= when the config moves it, else the default. */
	if (!o.socket_path && cd->socket_path && cd->socket_path[0] &&
	    strcmp(cd->socket_path, UZSWAP_RUNDIR "/uzswapd.sock") != 0)
		o.socket_path = strdup(cd->socket_path);
	if (!o.socket_path) {
		r = default_socket_path(&o.socket_path);
		if (r < 0) {
			uz_log(LOG_ERR, "no socket path: not root and XDG_RUNTIME_DIR unset; "
					"use --socket");
			goto out;
		}
	}
	/* Control socket: --control-socket, else ControlSocket= when moved, else next to it. */
	if (o.control_socket_path)
		m.control_path = strdup(o.control_socket_path);
	else if (cd->control_socket_path && cd->control_socket_path[0] &&
		 strcmp(cd->control_socket_path, UZSWAP_RUNDIR "/control.sock") != 0)
		m.control_path = strdup(cd->control_socket_path);
	else
		m.control_path = sibling_path(o.socket_path, "control.sock");
	if (!o.socket_path || !m.control_path) {
		r = -ENOMEM;
		goto out;
	}

	/* Signals go to the event loop only: block them before any thread starts. */
	sigemptyset(&mask);
	sigaddset(&mask, SIGTERM);
	sigaddset(&mask, SIGINT);
	sigaddset(&mask, SIGHUP);
	sigaddset(&mask, SIGUSR1);
	sigaddset(&mask, SIGUSR2);
	pthread_sigmask(SIG_BLOCK, &mask, NULL);
	signal(SIGPIPE, SIG_IGN);

	uz_policy_default(&policy);
	if (o.override.compressor_set) {
		policy.algo = o.override.algo;
		policy.level = o.override.level;
	}
	if (o.override.fault_around_set)
		policy.fault_around_max = o.override.fault_around;
	if (o.override.unit_set)
		policy.unit_pages = o.override.unit_pages;
	r = daemon_new(&m.daemon, &policy, o.fault_threads ? o.fault_threads : cd->fault_threads);
	if (r < 0) {
		uz_log(LOG_ERR, "cannot start: %s", strerror(-r));
		goto out;
	}
	m.daemon->policy_override = o.override;
	m.daemon->max_clients = cd->max_clients;
	m.daemon->max_clients_per_user = cd->max_clients_per_user;
	m.daemon->max_regions_per_client = cd->max_regions_per_client;
	m.daemon->pool_max_size = cd->pool_max_size;
	m.daemon->accept_threshold_percent = cd->accept_threshold_percent;
	m.daemon->swap_size = o.swap_size_set ? o.swap_size : cd->swap_size;
	if (o.swap_file || cd->swap_file) {
		m.daemon->swap_file = strdup(o.swap_file ? o.swap_file : cd->swap_file);
		if (!m.daemon->swap_file) {
			r = -ENOMEM;
			goto out;
		}
	}
	m.daemon->swap_backend =
	    cd->swap_backend == CONFIG_SWAP_NBD ? SWAP_BACKEND_NBD : SWAP_BACKEND_FILE;
	m.daemon->swap_read_timeout_ms = cd->swap_read_timeout_ms;
	if (cd->swap_uri) {
		m.daemon->swap_uri = strdup(cd->swap_uri);
		if (!m.daemon->swap_uri) {
			r = -ENOMEM;
			goto out;
		}
	}
	r = cgroup_layout_probe(&m.daemon->cgroup_layout);
	if (r < 0) {
		uz_log(LOG_ERR, "cannot probe the cgroup hierarchies: %s", strerror(-r));
		goto out;
	}
	if (cgroup_layout_memory_version(m.daemon->cgroup_layout) == CGROUP_NONE)
		uz_log(LOG_NOTICE, "no cgroup hierarchy carries the memory controller: every "
				   "client is in cgroup \"/\"");
	config_apply(&m, config);
	config = NULL;
	/* The writeback tier (daemon/fault/writeback.c): a failure only turns writeback off. */
	(void)writeback_open(m.daemon);

	r = sd_event_default(&m.event);
	if (r < 0) {
		uz_log(LOG_ERR, "cannot create the event loop: %s", strerror(-r));
		goto out;
	}

	r = take_activated_sockets(&m);
	if (r < 0)
		goto out;
	if (m.listen_fd < 0) {
		r = listen_socket(o.socket_path, &m.listen_fd);
		if (r < 0) {
			if (r != -EADDRINUSE)
				uz_log(LOG_ERR, "cannot listen on \"%s\": %s", o.socket_path,
				       strerror(-r));
			goto out;
		}
		m.own_socket = true;
		m.socket_path = o.socket_path;
	} else {
		/* Say where systemd's socket listens, not just that it is systemd's. */
		struct sockaddr_un addr = {0};
		socklen_t len = sizeof(addr);

		if (getsockname(m.listen_fd, (struct sockaddr *)&addr, &len) == 0 &&
		    len > offsetof(struct sockaddr_un, sun_path) && addr.sun_path[0]) {
			snprintf(m.activated_socket_path, sizeof(m.activated_socket_path), "%.*s",
				 (int)(len - offsetof(struct sockaddr_un, sun_path)),
				 addr.sun_path);
			m.socket_path = m.activated_socket_path;
		} else {
			m.socket_path = "(socket activation)";
		}
	}

	r = control_server_new(&m.control, m.control_path, m.control_fd, &control_ops, &m);
	if (r < 0) {
		uz_log(LOG_ERR, "cannot listen on the control socket \"%s\": %s", m.control_path,
		       strerror(-r));
		goto out;
	}
	m.control_fd = -1; /* the server owns it */
	control_server_set_admin_group(m.control, config_daemon(m.daemon->config)->control_group_set,
				       config_daemon(m.daemon->config)->control_gid);
	r = control_server_attach(m.control, m.event);
	if (r < 0) {
		uz_log(LOG_ERR, "cannot serve the control socket: %s", strerror(-r));
		goto out;
	}

	if ((r = sd_event_add_io(m.event, NULL, m.listen_fd, EPOLLIN, on_accept, &m)) < 0 ||
	    (r = sd_event_add_io(m.event, NULL, m.daemon->departures_event_fd, EPOLLIN,
				 on_departures, &m)) < 0 ||
	    (r = sd_event_add_signal(m.event, NULL, SIGTERM, on_terminate, &m)) < 0 ||
	    (r = sd_event_add_signal(m.event, NULL, SIGINT, on_terminate, &m)) < 0 ||
	    (r = sd_event_add_signal(m.event, NULL, SIGHUP, on_reload, &m)) < 0 ||
	    (r = sd_event_add_signal(m.event, NULL, SIGUSR1, on_usr1, &m)) < 0 ||
	    (r = sd_event_add_signal(m.event, NULL, SIGUSR2, on_handover, &m)) < 0 ||
	    (r = sd_event_add_time_relative(m.event, &recheck, CLOCK_MONOTONIC, MAIN_RECHECK_USEC,
					    0, on_recheck, &m)) < 0 ||
	    (r = sd_event_add_defer(m.event, &first, on_first_iteration, &m)) < 0) {
		uz_log(LOG_ERR, "cannot set up the event loop: %s", strerror(-r));
		goto out;
	}
	if (sd_watchdog_enabled(0, &m.watchdog_usec) > 0 && m.watchdog_usec > 0) {
		r = sd_event_add_time_relative(m.event, &watchdog, CLOCK_MONOTONIC,
					       m.watchdog_usec / 2, 0, on_watchdog, &m);
		if (r < 0) {
			uz_log(LOG_ERR, "cannot set up the watchdog timer: %s", strerror(-r));
			goto out;
		}
	} else {
		m.watchdog_usec = 0;
	}

	uz_log(LOG_INFO,
	       "listening on \"%s\"%s (control \"%s\"), config \"%s\" + \"%s\" (%zu cgroup "
	       "file%s), %u fault thread%s",
	       m.socket_path, m.own_socket ? "" : " (from systemd)", m.control_path, m.config_path,
	       m.cgroup_dir, config_cgroup_file_count(m.daemon->config),
	       config_cgroup_file_count(m.daemon->config) == 1 ? "" : "s",
	       m.daemon->nr_fault_threads, m.daemon->nr_fault_threads == 1 ? "" : "s");

	r = sd_event_loop(m.event);
	if (r < 0)
		uz_log(LOG_ERR, "event loop failed: %s", strerror(-r));

	(void)sd_notify(0, "STOPPING=1");
	/* Stop accepting, then give every page back. */
	client_handshakes_cancel();
	if (m.own_socket)
		unlink(o.socket_path);
	close(m.listen_fd);
	m.listen_fd = -1;
	m.control = control_server_free(m.control);
	if (m.handover) {
		/*
		 * No drain: stopping the fault threads detaches every client
		 * (its process is alive, its state stays with it) and waits
		 * for the swap I/O in flight; the sockets close and the
		 * clients look for the next daemon.
		 */
		daemon_print_summary(m.daemon, stderr);
		r = UZ_EXIT_HANDOVER;
		goto out;
	}
	daemon_drain(m.daemon, UZ_DRAIN_TIMEOUT_USEC);
	daemon_log_page_errors(m.daemon);
	daemon_log_departures(m.daemon);
	if (m.daemon->drain_timeouts)
		uz_log(LOG_WARNING, "%u client%s did not acknowledge SHUTDOWN in time",
		       m.daemon->drain_timeouts, m.daemon->drain_timeouts == 1 ? "" : "s");
	daemon_print_summary(m.daemon, stderr);
	r = 0;

out:
	client_handshakes_cancel();
	if (m.listen_fd >= 0) {
		close(m.listen_fd);
		if (m.own_socket)
			unlink(o.socket_path);
	}
	if (m.control_fd >= 0)
		close(m.control_fd);
	control_server_free(m.control);
	sd_event_source_unref(recheck);
	sd_event_source_unref(watchdog);
	sd_event_source_unref(first);
	sd_event_unref(m.event);
	daemon_free(m.daemon);
	config_free(config);
	free(o.socket_path);
	free(m.control_path);
	free(m.config_path);
	free(m.cgroup_dir);
	if (r == UZ_EXIT_HANDOVER)
		return UZ_EXIT_HANDOVER;
	return r < 0 ? EXIT_FAILURE : EXIT_SUCCESS;
}
