// SPDX-License-Identifier: MIT
/*
 * uzswapd: the daemon.
 *
 * The main thread parses the options, builds the shared state (struct
 * daemon: pool, LRU, statistics, fault threads), binds the client socket
 * (or takes it from systemd socket activation), and runs an sd-event loop
 * that accepts connections and runs their handshake (daemon/client), then
 * hands each client to a fault thread (daemon/fault), round robin.
 *
 * Signals are blocked in every thread and delivered to the loop through
 * signalfd (sd-event): SIGTERM/SIGINT stop accepting, give every page back
 * to every client through the SHUTDOWN handshake (bounded by a timeout),
 * print the statistics and exit 0; SIGHUP reloads the configuration (a
 * stub until the config parser lands); SIGUSR1 prints the statistics.
 *
 * READY=1 goes to systemd once the socket accepts clients (a no-op without
 * NOTIFY_SOCKET).
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
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
#include "client/client.h"
#include "compress/compress.h"
#include "daemon.h"
#include "util.h"

struct options {
	char *socket_path;
	const char *config_path;
	bool foreground;
	unsigned fault_threads;
	struct uz_policy policy;
};

static void usage(FILE *f)
{
	fprintf(f,
		"Usage: uzswapd [OPTIONS]\n"
		"\n"
		"A userspace zswap: pages cold memory of client processes (run under\n"
		"LD_PRELOAD=libuzswap.so) into a compressed in-memory pool.\n"
		"\n"
		"  --socket PATH          client socket (default %s/uzswapd.sock as root,\n"
		"                         else $XDG_RUNTIME_DIR/uzswap/uzswapd.sock;\n"
		"                         $UZSWAP_SOCKET overrides the default)\n"
		"  --config FILE          configuration file (accepted, not yet read)\n"
		"  --foreground           stay in the foreground (uzswapd never forks; accepted\n"
		"                         for compatibility)\n"
		"  --log-level LEVEL      err, warning, notice, info (default), debug\n"
		"  --resident-max SIZE    resident budget per client, e.g. 64M (default 64M)\n"
		"  --resident-low SIZE|PCT  reclaim stops below this (default 90%%)\n"
		"  --fault-threads N      fault threads (default 2)\n"
		"  --compressor ALGO      lz4 (default) or zstd[:LEVEL]\n"
		"  -h, --help             this help\n"
		"  --version              print the version\n",
		UZSWAP_RUNDIR);
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
	case 'k': case 'K': shift = 10; end++; break;
	case 'm': case 'M': shift = 20; end++; break;
	case 'g': case 'G': shift = 30; end++; break;
	case 't': case 'T': shift = 40; end++; break;
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
		OPT_SOCKET = 0x100, OPT_CONFIG, OPT_FOREGROUND, OPT_LOG_LEVEL, OPT_RESIDENT_MAX,
		OPT_RESIDENT_LOW, OPT_FAULT_THREADS, OPT_COMPRESSOR, OPT_VERSION,
	};
	static const struct option longopts[] = {
		{ "socket", required_argument, NULL, OPT_SOCKET },
		{ "config", required_argument, NULL, OPT_CONFIG },
		{ "foreground", no_argument, NULL, OPT_FOREGROUND },
		{ "log-level", required_argument, NULL, OPT_LOG_LEVEL },
		{ "resident-max", required_argument, NULL, OPT_RESIDENT_MAX },
		{ "resident-low", required_argument, NULL, OPT_RESIDENT_LOW },
		{ "fault-threads", required_argument, NULL, OPT_FAULT_THREADS },
		{ "compressor", required_argument, NULL, OPT_COMPRESSOR },
		{ "help", no_argument, NULL, 'h' },
		{ "version", no_argument, NULL, OPT_VERSION },
		{},
	};
	const char *resident_low = NULL;
	bool resident_max_set = false;
	int c, r;

	uz_policy_default(&o->policy);
	o->fault_threads = 2;
	while ((c = getopt_long(argc, argv, "h", longopts, NULL)) >= 0) {
		switch (c) {
		case OPT_SOCKET:
			free(o->socket_path);
			o->socket_path = strdup(optarg);
			if (!o->socket_path)
				return -ENOMEM;
			break;
		case OPT_CONFIG:
			o->config_path = optarg;
			break;
		case OPT_FOREGROUND:
			o->foreground = true;
			break;
		case OPT_LOG_LEVEL:
			r = uz_log_parse_level(optarg);
			if (r < 0) {
				fprintf(stderr, "uzswapd: --log-level: unknown level \"%s\"\n", optarg);
				return -EINVAL;
			}
			uz_log_max_level = r;
			break;
		case OPT_RESIDENT_MAX:
			if (parse_size(optarg, &o->policy.resident_max) < 0 ||
			    o->policy.resident_max < UZ_PAGE_SIZE * UZ_EVICT_BATCH_MAX / 8) {
				fprintf(stderr,
					"uzswapd: --resident-max: \"%s\" is not a size of at least 256K\n",
					optarg);
				return -EINVAL;
			}
			resident_max_set = true;
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
			if (compressor_parse(optarg, &o->policy.algo, &o->policy.level) < 0) {
				fprintf(stderr,
					"uzswapd: --compressor: \"%s\" is not lz4 or zstd[:LEVEL]\n",
					optarg);
				return -EINVAL;
			}
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

	if (resident_max_set || resident_low) {
		uint64_t low = o->policy.resident_max / 100 * UZ_DEFAULT_RESIDENT_LOW_PERCENT;

		if (resident_low) {
			size_t n = strlen(resident_low);

			if (n > 1 && resident_low[n - 1] == '%') {
				char *end;
				unsigned long pct = strtoul(resident_low, &end, 10);

				if (end != resident_low + n - 1 || pct > 100) {
					fprintf(stderr, "uzswapd: --resident-low: bad percentage \"%s\"\n",
						resident_low);
					return -EINVAL;
				}
				low = o->policy.resident_max / 100 * pct;
			} else if (parse_size(resident_low, &low) < 0) {
				fprintf(stderr, "uzswapd: --resident-low: \"%s\" is not a size or NN%%\n",
					resident_low);
				return -EINVAL;
			}
		}
		if (low > o->policy.resident_max) {
			fprintf(stderr, "uzswapd: --resident-low is above --resident-max\n");
			return -EINVAL;
		}
		o->policy.resident_low = low;
	}

	if (!o->socket_path) {
		r = default_socket_path(&o->socket_path);
		if (r < 0) {
			fprintf(stderr, "uzswapd: no socket path: not root and XDG_RUNTIME_DIR unset; "
					"use --socket\n");
			return r;
		}
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
	struct sockaddr_un addr = { .sun_family = AF_UNIX };
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
		uz_log(LOG_ERR, "cannot bind \"%s\": %m", path);
		close(fd);
		return r;
	}
	if (chmod(path, 0666) < 0 || listen(fd, 128) < 0) {
		r = -errno;
		uz_log(LOG_ERR, "cannot listen on \"%s\": %m", path);
		close(fd);
		unlink(path);
		return r;
	}
	*out = fd;
	return 0;
}

struct main_state {
	struct daemon *daemon;
	sd_event *event;
	int listen_fd;
	bool own_socket; /* we bound it: unlink on exit */
	const char *socket_path;
};

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
	sd_event_exit(m->event, 0);
	return 0;
}

static int on_reload(sd_event_source *s, const struct signalfd_siginfo *si, void *userdata)
{
	/* The config parser (daemon/config) lands separately; nothing to reload yet. */
	uz_log(LOG_NOTICE, "SIGHUP: configuration reload is not supported yet, ignoring");
	return 0;
}

static int on_usr1(sd_event_source *s, const struct signalfd_siginfo *si, void *userdata)
{
	struct main_state *m = userdata;

	daemon_print_summary(m->daemon, stderr);
	return 0;
}

int main(int argc, char **argv)
{
	struct options o = { 0 };
	struct main_state m = { .listen_fd = -1 };
	sigset_t mask;
	int r, n;

	r = parse_options(argc, argv, &o);
	if (r != 0) {
		free(o.socket_path);
		return r > 0 ? EXIT_SUCCESS : EXIT_FAILURE;
	}
	if (o.config_path) {
		if (access(o.config_path, R_OK) < 0)
			uz_log(LOG_WARNING, "config \"%s\": %m; using built-in defaults",
			       o.config_path);
		else
			uz_log(LOG_NOTICE, "config \"%s\": reading config files is not supported "
					   "yet; using built-in defaults and command-line options",
			       o.config_path);
	}

	/* Signals go to the event loop only: block them before any thread starts. */
	sigemptyset(&mask);
	sigaddset(&mask, SIGTERM);
	sigaddset(&mask, SIGINT);
	sigaddset(&mask, SIGHUP);
	sigaddset(&mask, SIGUSR1);
	pthread_sigmask(SIG_BLOCK, &mask, NULL);
	signal(SIGPIPE, SIG_IGN);

	r = daemon_new(&m.daemon, &o.policy, o.fault_threads);
	if (r < 0) {
		uz_log(LOG_ERR, "cannot start: %s", strerror(-r));
		goto out;
	}

	r = sd_event_default(&m.event);
	if (r < 0) {
		uz_log(LOG_ERR, "cannot create the event loop: %s", strerror(-r));
		goto out;
	}

	n = sd_listen_fds(1);
	if (n > 1) {
		uz_log(LOG_ERR, "socket activation passed %d sockets, expected 1", n);
		r = -EINVAL;
		goto out;
	}
	if (n == 1) {
		m.listen_fd = SD_LISTEN_FDS_START;
		if (sd_is_socket_unix(m.listen_fd, SOCK_SEQPACKET, 1, NULL, 0) <= 0) {
			uz_log(LOG_ERR, "the socket passed by systemd is not a listening "
					"SOCK_SEQPACKET unix socket");
			r = -EINVAL;
			goto out;
		}
		(void)fcntl(m.listen_fd, F_SETFL, fcntl(m.listen_fd, F_GETFL) | O_NONBLOCK);
		m.socket_path = "(socket activation)";
	} else {
		r = listen_socket(o.socket_path, &m.listen_fd);
		if (r < 0) {
			if (r != -EADDRINUSE)
				uz_log(LOG_ERR, "cannot listen on \"%s\": %s", o.socket_path,
				       strerror(-r));
			goto out;
		}
		m.own_socket = true;
		m.socket_path = o.socket_path;
	}

	if ((r = sd_event_add_io(m.event, NULL, m.listen_fd, EPOLLIN, on_accept, &m)) < 0 ||
	    (r = sd_event_add_signal(m.event, NULL, SIGTERM, on_terminate, &m)) < 0 ||
	    (r = sd_event_add_signal(m.event, NULL, SIGINT, on_terminate, &m)) < 0 ||
	    (r = sd_event_add_signal(m.event, NULL, SIGHUP, on_reload, &m)) < 0 ||
	    (r = sd_event_add_signal(m.event, NULL, SIGUSR1, on_usr1, &m)) < 0) {
		uz_log(LOG_ERR, "cannot set up the event loop: %s", strerror(-r));
		goto out;
	}

	uz_log(LOG_INFO,
	       "listening on \"%s\": resident budget %" PRIu64 " KiB per client (low %" PRIu64
	       " KiB), %u fault thread%s, %s",
	       m.socket_path, o.policy.resident_max >> 10, o.policy.resident_low >> 10,
	       o.fault_threads, o.fault_threads == 1 ? "" : "s",
	       compressor_algo_name(o.policy.algo));
	(void)sd_notify(0, "READY=1");

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
	daemon_drain(m.daemon, UZ_DRAIN_TIMEOUT_USEC);
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
	sd_event_unref(m.event);
	daemon_free(m.daemon);
	free(o.socket_path);
	return r < 0 ? EXIT_FAILURE : EXIT_SUCCESS;
}
