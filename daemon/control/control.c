/* SPDX-License-Identifier: MIT */
/*
 * The control socket server.  Each connection is a small state machine on
 * the sd-event loop: read bytes into a bounded input buffer; when it holds
 * a full line, parse it as a JSON request, check the command and the
 * peer's rights, call the daemon, queue the reply; stop reading while a
 * reply is queued (EPOLLOUT drains it), so a peer that sends requests and
 * never reads replies costs at most one reply of memory.  A request that
 * does not fit the buffer is answered with an error and the connection is
 * closed after the answer.
 *
 * Errors never take the daemon down: a bad request gets an error reply, a
 * broken peer is dropped.  Nothing here logs; the daemon can watch
 * control_server_connection_count() if it cares.
 */
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "control/control.h"
#include "util.h"

#ifndef SO_PEERGROUPS
#define SO_PEERGROUPS 59
#endif

struct control_conn {
	struct control_server *server;
	struct control_conn *prev, *next;
	int fd;
	sd_event_source *io;
	sd_event_source *timer;
	struct ucred cred;
	gid_t *groups; /* supplementary groups of the peer when it connected */
	size_t n_groups;
	char in[CONTROL_MAX_REQUEST + 1];
	size_t in_len;
	char *out;
	size_t out_len, out_off;
	bool close_after_write;
	bool eof; /* the peer shut down its side */
};

struct control_server {
	char *path;
	bool unlink_on_free;
	int fd;
	sd_event *event;
	sd_event_source *listen_io;
	const struct control_ops *ops;
	void *userdata;
	bool admin_group_set;
	gid_t admin_gid;
	struct control_conn *conns;
	unsigned int n_conns;
};

static void conn_free(struct control_conn *conn);
static int conn_update_events(struct control_conn *conn);

/* --- socket setup ---------------------------------------------------------- */

static int socket_address(const char *path, struct sockaddr_un *addr, socklen_t *len)
{
	size_t n = strlen(path);

	if (n == 0 || n >= sizeof(addr->sun_path))
		return -ENAMETOOLONG;
	memset(addr, 0, sizeof(*addr));
	addr->sun_family = AF_UNIX;
	memcpy(addr->sun_path, path, n);
	*len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n + 1);
	return 0;
}

/* Is someone listening on path?  Then we must not steal it. */
static bool socket_alive(const struct sockaddr_un *addr, socklen_t len)
{
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	bool alive;

	if (fd < 0)
		return false;
	alive = connect(fd, (const struct sockaddr *)addr, len) == 0;
	close(fd);
	return alive;
}

static int socket_listen(const char *path, int *out)
{
	struct sockaddr_un addr;
	socklen_t len;
	struct stat st;
	int fd, r;

	r = socket_address(path, &addr, &len);
	if (r < 0)
		return r;
	if (lstat(path, &st) == 0) {
		if (!S_ISSOCK(st.st_mode))
			return -EEXIST;
		if (socket_alive(&addr, len))
			return -EADDRINUSE;
		if (unlink(path) < 0)
			return -errno;
	}
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	if (bind(fd, (const struct sockaddr *)&addr, len) < 0) {
		r = -errno;
		goto out_close;
	}
	/* Anyone may read statistics; changes are checked per request. */
	if (chmod(path, 0666) < 0 || listen(fd, 16) < 0) {
		r = -errno;
		unlink(path);
		goto out_close;
	}
	*out = fd;
	return 0;
out_close:
	close(fd);
	return r;
}

int control_server_new(struct control_server **out, const char *path, int listen_fd,
		       const struct control_ops *ops, void *userdata)
{
	struct control_server *server;
	int r;

	server = calloc(1, sizeof(*server));
	if (!server)
		return -ENOMEM;
	server->fd = -1;
	server->ops = ops;
	server->userdata = userdata;
	server->path = strdup(path ? path : "");
	if (!server->path) {
		r = -ENOMEM;
		goto out_free;
	}
	if (listen_fd >= 0) {
		server->fd = listen_fd;
		r = fcntl(listen_fd, F_SETFL, fcntl(listen_fd, F_GETFL) | O_NONBLOCK);
		if (r < 0) {
			r = -errno;
			goto out_free;
		}
	} else {
		r = socket_listen(path, &server->fd);
		if (r < 0)
			goto out_free;
		server->unlink_on_free = true;
	}
	*out = server;
	return 0;
out_free:
	control_server_free(server);
	return r;
}

struct control_server *control_server_free(struct control_server *server)
{
	if (!server)
		return NULL;
	while (server->conns)
		conn_free(server->conns);
	sd_event_source_disable_unref(server->listen_io);
	if (server->fd >= 0)
		close(server->fd);
	if (server->unlink_on_free)
		unlink(server->path);
	sd_event_unref(server->event);
	free(server->path);
	free(server);
	return NULL;
}

void control_server_set_admin_group(struct control_server *server, bool set, gid_t gid)
{
	server->admin_group_set = set;
	server->admin_gid = gid;
}

unsigned int control_server_connection_count(const struct control_server *server)
{
	return server->n_conns;
}

/* --- replies --------------------------------------------------------------- */

/* Queue one JSON line; takes the reference on reply. */
static int conn_queue(struct control_conn *conn, json_object *reply)
{
	const char *text;
	size_t len;
	char *buf;

	text = json_object_to_json_string_ext(reply, JSON_C_TO_STRING_PLAIN);
	len = text ? strlen(text) : 0;
	buf = malloc(len + 1);
	if (!text || !buf) {
		free(buf);
		json_object_put(reply);
		return -ENOMEM;
	}
	memcpy(buf, text, len);
	buf[len] = '\n';
	json_object_put(reply);
	free(conn->out);
	conn->out = buf;
	conn->out_len = len + 1;
	conn->out_off = 0;
	return 0;
}

static int conn_queue_error(struct control_conn *conn, int error, const char *message)
{
	json_object *reply = json_object_new_object();

	if (!reply)
		return -ENOMEM;
	json_object_object_add(reply, "ok", json_object_new_boolean(0));
	json_object_object_add(reply, "error", json_object_new_string(message));
	if (error)
		json_object_object_add(reply, "errno", json_object_new_int(error));
	return conn_queue(conn, reply);
}

/* --- authorization ------------------------------------------------------- */

static int peer_groups_from_proc(pid_t pid, gid_t **out, size_t *n_out)
{
	char path[64], *line = NULL;
	size_t cap = 0, n = 0;
	gid_t *groups = NULL;
	FILE *file;
	int r = -ENOENT;

	snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
	file = fopen(path, "re");
	if (!file)
		return -errno;
	while (getline(&line, &cap, file) > 0) {
		char *p, *end;

		if (strncmp(line, "Groups:", 7))
			continue;
		groups = calloc(NGROUPS_MAX, sizeof(*groups));
		if (!groups) {
			r = -ENOMEM;
			break;
		}
		for (p = line + 7; n < NGROUPS_MAX; p = end) {
			unsigned long gid = strtoul(p, &end, 10);

			if (end == p)
				break;
			groups[n++] = (gid_t)gid;
		}
		r = 0;
		break;
	}
	free(line);
	fclose(file);
	if (r < 0) {
		free(groups);
		return r;
	}
	*out = groups;
	*n_out = n;
	return 0;
}

static int peer_groups(int fd, pid_t pid, gid_t **out, size_t *n_out)
{
	socklen_t len = 64 * sizeof(gid_t);
	gid_t *groups;

	for (int attempt = 0; attempt < 2; attempt++) {
		groups = malloc(len ? len : sizeof(gid_t));
		if (!groups)
			return -ENOMEM;
		if (getsockopt(fd, SOL_SOCKET, SO_PEERGROUPS, groups, &len) == 0) {
			*out = groups;
			*n_out = len / sizeof(gid_t);
			return 0;
		}
		free(groups);
		if (errno != ERANGE)
			break;
	}
	/* Kernels before 4.13: the groups the peer has now. */
	return peer_groups_from_proc(pid, out, n_out);
}

static bool conn_is_admin(const struct control_conn *conn)
{
	const struct control_server *server = conn->server;

	if (conn->cred.uid == 0)
		return true;
	if (!server->admin_group_set)
		return false;
	if (conn->cred.gid == server->admin_gid)
		return true;
	for (size_t i = 0; i < conn->n_groups; i++)
		if (conn->groups[i] == server->admin_gid)
			return true;
	return false;
}

/* --- commands ------------------------------------------------------------- */

struct command {
	const char *name;
	bool changes; /* needs root or the admin group */
	int (*run)(struct control_conn *conn, json_object *request, json_object *result, char *err,
		   size_t errlen);
};

static int request_string(json_object *request, const char *key, bool required, const char **out,
			  char *err, size_t errlen)
{
	json_object *value;

	if (!json_object_object_get_ex(request, key, &value) ||
	    json_object_is_type(value, json_type_null)) {
		if (required) {
			snprintf(err, errlen, "missing \"%s\"", key);
			return -EINVAL;
		}
		*out = NULL;
		return 0;
	}
	if (!json_object_is_type(value, json_type_string)) {
		snprintf(err, errlen, "\"%s\" must be a string", key);
		return -EINVAL;
	}
	*out = json_object_get_string(value);
	return 0;
}

static int cgroup_argument(json_object *request, bool required, const char **out, char *err,
			   size_t errlen)
{
	const char *cgroup;
	int r;

	r = request_string(request, "cgroup", required, &cgroup, err, errlen);
	if (r < 0)
		return r;
	if (cgroup && (cgroup[0] != '/' || strlen(cgroup) >= 4096)) {
		snprintf(err, errlen, "\"cgroup\" must be an absolute cgroup path");
		return -EINVAL;
	}
	*out = cgroup;
	return 0;
}

static int run_status(struct control_conn *conn, json_object *request, json_object *result,
		      char *err, size_t errlen)
{
	return conn->server->ops->status(conn->server->userdata, result);
}

static int run_stats(struct control_conn *conn, json_object *request, json_object *result,
		     char *err, size_t errlen)
{
	const char *cgroup;
	int r;

	r = cgroup_argument(request, false, &cgroup, err, errlen);
	if (r < 0)
		return r;
	return conn->server->ops->stats(conn->server->userdata, cgroup, result);
}

static int run_clients(struct control_conn *conn, json_object *request, json_object *result,
		       char *err, size_t errlen)
{
	return conn->server->ops->clients(conn->server->userdata, result);
}

static int run_config(struct control_conn *conn, json_object *request, json_object *result,
		      char *err, size_t errlen)
{
	return conn->server->ops->config(conn->server->userdata, result);
}

static int run_reload(struct control_conn *conn, json_object *request, json_object *result,
		      char *err, size_t errlen)
{
	return conn->server->ops->reload(conn->server->userdata, err, errlen);
}

static int run_shrink(struct control_conn *conn, json_object *request, json_object *result,
		      char *err, size_t errlen)
{
	const char *cgroup;
	json_object *value;
	int64_t bytes;
	int r;

	r = cgroup_argument(request, true, &cgroup, err, errlen);
	if (r < 0)
		return r;
	if (!json_object_object_get_ex(request, "bytes", &value) ||
	    !json_object_is_type(value, json_type_int)) {
		snprintf(err, errlen, "\"bytes\" must be a positive integer");
		return -EINVAL;
	}
	errno = 0;
	bytes = json_object_get_int64(value);
	if (bytes <= 0 || errno) {
		snprintf(err, errlen, "\"bytes\" must be a positive integer");
		return -EINVAL;
	}
	return conn->server->ops->shrink(conn->server->userdata, cgroup, (uint64_t)bytes, result);
}

static const struct command commands[] = {
    {"status", false, run_status}, {"stats", false, run_stats},	 {"clients", false, run_clients},
    {"config", false, run_config}, {"reload", true, run_reload}, {"shrink", true, run_shrink},
};

static bool command_supported(const struct control_ops *ops, const struct command *command)
{
	if (command->run == run_status)
		return ops->status;
	if (command->run == run_stats)
		return ops->stats;
	if (command->run == run_clients)
		return ops->clients;
	if (command->run == run_config)
		return ops->config;
	if (command->run == run_reload)
		return ops->reload;
	return ops->shrink;
}

/* Answer one request line (NUL-terminated, no newline). */
static int conn_handle_line(struct control_conn *conn, const char *line, size_t len)
{
	const struct command *command = NULL;
	json_object *request, *reply, *result, *value;
	json_tokener *tok;
	const char *name;
	char err[1024] = "";
	int r;

	tok = json_tokener_new_ex(16);
	if (!tok)
		return -ENOMEM;
	request = json_tokener_parse_ex(tok, line, (int)len);
	if (request && json_tokener_get_parse_end(tok) < len) {
		json_object_put(request);
		request = NULL;
	}
	json_tokener_free(tok);
	if (!request || !json_object_is_type(request, json_type_object)) {
		json_object_put(request);
		return conn_queue_error(conn, EINVAL, "request is not a JSON object");
	}
	if (!json_object_object_get_ex(request, "command", &value) ||
	    !json_object_is_type(value, json_type_string)) {
		json_object_put(request);
		return conn_queue_error(conn, EINVAL, "request has no \"command\" string");
	}
	name = json_object_get_string(value);
	for (size_t i = 0; i < UZ_ARRAY_SIZE(commands); i++)
		if (!strcmp(commands[i].name, name))
			command = &commands[i];
	if (!command) {
		snprintf(err, sizeof(err), "unknown command \"%.64s\"", name);
		json_object_put(request);
		return conn_queue_error(conn, EINVAL, err);
	}
	if (!command_supported(conn->server->ops, command)) {
		snprintf(err, sizeof(err), "%s: not supported by this daemon", command->name);
		json_object_put(request);
		return conn_queue_error(conn, EOPNOTSUPP, err);
	}
	if (command->changes && !conn_is_admin(conn)) {
		if (conn->server->admin_group_set)
			snprintf(err, sizeof(err),
				 "permission denied: %s needs root or membership in the control "
				 "group (gid %u, ControlGroup= in uzswapd.conf)",
				 command->name, (unsigned int)conn->server->admin_gid);
		else
			snprintf(err, sizeof(err),
				 "permission denied: %s needs root (no ControlGroup= is configured "
				 "in uzswapd.conf)",
				 command->name);
		json_object_put(request);
		return conn_queue_error(conn, EPERM, err);
	}

	result = json_object_new_object();
	if (!result) {
		json_object_put(request);
		return -ENOMEM;
	}
	r = command->run(conn, request, result, err, sizeof(err));
	json_object_put(request);
	if (r < 0) {
		if (!err[0] && json_object_object_get_ex(result, "error", &value) &&
		    json_object_is_type(value, json_type_string))
			snprintf(err, sizeof(err), "%s", json_object_get_string(value));
		if (!err[0])
			snprintf(err, sizeof(err), "%s: %s", command->name, strerror(-r));
		json_object_put(result);
		return conn_queue_error(conn, -r, err);
	}
	reply = json_object_new_object();
	if (!reply) {
		json_object_put(result);
		return -ENOMEM;
	}
	json_object_object_add(reply, "ok", json_object_new_boolean(1));
	json_object_object_add(reply, "result", result);
	return conn_queue(conn, reply);
}

/* --- connection I/O -------------------------------------------------------- */

static bool conn_output_pending(const struct control_conn *conn)
{
	return conn->out_off < conn->out_len;
}

/* Answer buffered lines until a reply is queued. */
static int conn_process(struct control_conn *conn)
{
	while (!conn_output_pending(conn) && !conn->close_after_write) {
		char *newline = memchr(conn->in, '\n', conn->in_len);
		size_t line_len, consumed;
		int r;

		if (!newline) {
			if (conn->in_len >= CONTROL_MAX_REQUEST) {
				conn->close_after_write = true;
				return conn_queue_error(conn, E2BIG, "request too large");
			}
			return 0;
		}
		consumed = (size_t)(newline - conn->in) + 1;
		line_len = consumed - 1;
		*newline = '\0';
		if (line_len > 0 && conn->in[line_len - 1] == '\r')
			conn->in[--line_len] = '\0';
		r = line_len ? conn_handle_line(conn, conn->in, line_len) : 0;
		conn->in_len -= consumed;
		memmove(conn->in, conn->in + consumed, conn->in_len);
		if (r < 0)
			return r;
	}
	return 0;
}

static int conn_write(struct control_conn *conn)
{
	while (conn_output_pending(conn)) {
		ssize_t n = send(conn->fd, conn->out + conn->out_off, conn->out_len - conn->out_off,
				 MSG_NOSIGNAL | MSG_DONTWAIT);

		if (n < 0) {
			if (errno == EAGAIN || errno == EINTR)
				return 0;
			return -errno;
		}
		conn->out_off += (size_t)n;
	}
	free(conn->out);
	conn->out = NULL;
	conn->out_len = conn->out_off = 0;
	return 0;
}

static int conn_read(struct control_conn *conn)
{
	while (conn->in_len < CONTROL_MAX_REQUEST) {
		ssize_t n = recv(conn->fd, conn->in + conn->in_len,
				 CONTROL_MAX_REQUEST - conn->in_len, MSG_DONTWAIT);

		if (n < 0) {
			if (errno == EAGAIN || errno == EINTR)
				return 0;
			return -errno;
		}
		if (n == 0)
			return -ECONNRESET; /* peer closed: nothing more to answer */
		conn->in_len += (size_t)n;
		if (memchr(conn->in + conn->in_len - n, '\n', (size_t)n))
			return 0;
	}
	return 0;
}

static int conn_update_events(struct control_conn *conn)
{
	uint32_t events = conn_output_pending(conn) ? EPOLLOUT : EPOLLIN;

	return sd_event_source_set_io_events(conn->io, events);
}

static int conn_on_io(sd_event_source *source, int fd, uint32_t revents, void *userdata)
{
	struct control_conn *conn = userdata;
	int r;

	if (revents & EPOLLOUT) {
		r = conn_write(conn);
		if (r < 0)
			goto out_drop;
	}
	if ((revents & (EPOLLIN | EPOLLHUP | EPOLLERR)) && !conn_output_pending(conn)) {
		r = conn_read(conn);
		if (r == -ECONNRESET)
			conn->eof = true; /* answer what was sent, then hang up */
		else if (r < 0)
			goto out_drop;
	}
	/* Answer and send at once while the socket takes it. */
	for (;;) {
		if (!conn_output_pending(conn) && conn->close_after_write)
			goto out_drop;
		r = conn_process(conn);
		if (r < 0)
			goto out_drop;
		if (!conn_output_pending(conn))
			break;
		r = conn_write(conn);
		if (r < 0)
			goto out_drop;
		if (conn_output_pending(conn))
			break;
	}
	if (!conn_output_pending(conn) && conn->eof)
		goto out_drop;
	r = sd_event_source_set_time_relative(conn->timer, CONTROL_IDLE_TIMEOUT_SEC * 1000000ULL);
	if (r >= 0)
		r = conn_update_events(conn);
	if (r < 0)
		goto out_drop;
	return 0;
out_drop:
	conn_free(conn);
	return 0;
}

static int conn_on_idle(sd_event_source *source, uint64_t usec, void *userdata)
{
	conn_free(userdata);
	return 0;
}

static void conn_free(struct control_conn *conn)
{
	struct control_server *server = conn->server;

	if (conn->prev)
		conn->prev->next = conn->next;
	else
		server->conns = conn->next;
	if (conn->next)
		conn->next->prev = conn->prev;
	server->n_conns--;
	sd_event_source_disable_unref(conn->io);
	sd_event_source_disable_unref(conn->timer);
	close(conn->fd);
	free(conn->groups);
	free(conn->out);
	free(conn);
}

/* Over the connection limit: say so (best effort) and hang up. */
static void refuse_connection(int fd)
{
	static const char message[] =
	    "{\"ok\":false,\"error\":\"too many control connections\",\"errno\":16}\n";

	(void)!send(fd, message, sizeof(message) - 1, MSG_NOSIGNAL | MSG_DONTWAIT);
	close(fd);
}

static int server_on_accept(sd_event_source *source, int fd, uint32_t revents, void *userdata)
{
	struct control_server *server = userdata;
	struct control_conn *conn;
	socklen_t len;
	int cfd, r;

	for (;;) {
		cfd = accept4(server->fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
		if (cfd < 0)
			return 0; /* EAGAIN, or a transient error: try at the next wake-up */
		if (server->n_conns >= CONTROL_MAX_CONNECTIONS) {
			refuse_connection(cfd);
			continue;
		}
		conn = calloc(1, sizeof(*conn));
		if (!conn) {
			close(cfd);
			continue;
		}
		conn->server = server;
		conn->fd = cfd;
		len = sizeof(conn->cred);
		if (getsockopt(cfd, SOL_SOCKET, SO_PEERCRED, &conn->cred, &len) < 0 ||
		    peer_groups(cfd, conn->cred.pid, &conn->groups, &conn->n_groups) < 0) {
			close(cfd);
			free(conn);
			continue;
		}
		conn->next = server->conns;
		if (server->conns)
			server->conns->prev = conn;
		server->conns = conn;
		server->n_conns++;
		r = sd_event_add_io(server->event, &conn->io, cfd, EPOLLIN, conn_on_io, conn);
		if (r >= 0)
			r = sd_event_add_time_relative(server->event, &conn->timer, CLOCK_MONOTONIC,
						       CONTROL_IDLE_TIMEOUT_SEC * 1000000ULL,
						       1000000ULL, conn_on_idle, conn);
		if (r < 0) {
			conn_free(conn);
			continue;
		}
	}
}

int control_server_attach(struct control_server *server, sd_event *event)
{
	int r;

	if (server->event)
		return -EBUSY;
	r = sd_event_add_io(event, &server->listen_io, server->fd, EPOLLIN, server_on_accept,
			    server);
	if (r < 0)
		return r;
	server->event = sd_event_ref(event);
	return 0;
}
