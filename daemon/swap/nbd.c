/* SPDX-License-Identifier: MIT */
/*
 * The NBD backend: the far-memory tier.  Records go to a network block
 * device (an NBD export served by nbdkit, qemu-nbd or anything that
 * speaks the protocol) instead of the local file.  Slots, records,
 * checksums and the metadata region are swapfile.c's, unchanged: the
 * metadata lives in a small local file and the export holds the data
 * region from offset 0, its size fixing the number of clusters.
 *
 * Connections.  Each swap_io (one per fault thread) has its own libnbd
 * handle, driven through the asynchronous API: nbd_aio_pread/pwrite with
 * completion callbacks, up to swap->max_inflight commands in flight.  The
 * fd the fault thread polls is an epoll fd of our own holding the
 * handle's socket (its events follow nbd_aio_get_direction()) and a
 * timerfd (deadlines, reconnect backoff): it stays the same fd across
 * reconnections, so the thread's epoll never learns of them.  Callbacks
 * run only inside reap and wait, never from swap_io_read/write (libnbd
 * may call a completion from inside the call that issued the command;
 * ours only notes the result on the request).
 *
 * Faults.  The server may go away (killed, network down), stall (no
 * answer) or fail requests (an error reply):
 *   - a request that gets an error reply fails: a read with -EIO (the
 *     caller poisons that page), a write with -EIO (the caller keeps the
 *     entry in the pool and retries later; its slot is freed, as nothing
 *     more can land in it);
 *   - a connection that dies takes its commands with it.  Reads go back
 *     to the backlog and are sent again on the next connection unless
 *     their deadline (submission + timeout_ms) has passed: then they
 *     fail with -ETIMEDOUT.  Writes fail with SWAP_RESULT_UNCERTAIN (the
 *     server may apply them late, even after we reconnected): the caller
 *     keeps its entries in the pool and the slots are quarantined, that
 *     is never handed out again by this swap (swapfile.h: counted in
 *     quarantined_slots, freed when the swap is next collected or starts
 *     empty), so a late write can never overwrite a newer record;
 *   - a command unanswered for timeout_ms means a stalled server: the
 *     connection is dropped as if it had died (above);
 *   - while no connection is up, writes are refused at once (-ENOTCONN:
 *     nothing is taken) and reads wait in the backlog until a connection
 *     is up or their deadline passes.
 * Connecting again starts after NBD_BACKOFF_MIN_MS and doubles up to
 * NBD_BACKOFF_MAX_MS while attempts fail; a connection that comes up
 * after one was lost counts in backend_reconnects, every failed request,
 * timeout and failed attempt in backend_errors.  Nothing here logs (the
 * fault path never does); the counters are in swap_get_stats().
 */
#include <errno.h>
#include <libnbd.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/timerfd.h>
#include <unistd.h>

#include "swap/swap-internal.h"

#define NBD_BACKOFF_MIN_MS 100u
#define NBD_BACKOFF_MAX_MS 5000u
#define NBD_WAIT_MAX_MS	   100 /* a wait() polls at least this often */
/*
 * A connection attempt may take this long (or timeout_ms if longer): the
 * handshake is several round trips, and a loaded server (or host) must not
 * be taken for a dead one.  Reads waiting meanwhile keep their own deadline.
 */
#define NBD_CONNECT_MIN_MS 5000u
#define NBD_TAG_SOCKET	   1u
#define NBD_TAG_TIMER	   2u

#define stat_add(swap, field, n) __atomic_fetch_add(&(swap)->stats.field, (n), __ATOMIC_RELAXED)
#define stat_sub(swap, field, n) __atomic_fetch_sub(&(swap)->stats.field, (n), __ATOMIC_RELAXED)

enum link_state {
	LINK_DOWN,	 /* no handle; retry_at_ns says when to try again */
	LINK_CONNECTING, /* handle connecting (TCP, TLS, handshake) */
	LINK_UP,	 /* commands may be issued */
};

struct nbd_link {
	struct nbd_handle *handle;
	enum link_state state;
	bool ever_up;
	bool broken; /* issuing a command failed: reap tears the connection down */
	int epoll_fd;
	int timer_fd;
	int sock_fd; /* the handle's socket as registered in epoll_fd, or -1 */
	uint32_t sock_events;
	uint64_t retry_at_ns;
	uint64_t connect_deadline_ns;
	unsigned backoff_ms;
	struct swap_req *sent; /* commands handed to libnbd (link_next/link_prev) */
	unsigned nr_sent;
	uint64_t armed_ns; /* the timer's expiry, 0: disarmed */
};

static uint64_t ms_to_ns(unsigned ms)
{
	return (uint64_t)ms * 1000000ULL;
}

static void sent_add(struct nbd_link *l, struct swap_req *req)
{
	req->link_prev = NULL;
	req->link_next = l->sent;
	if (l->sent)
		l->sent->link_prev = req;
	l->sent = req;
	l->nr_sent++;
}

static void sent_del(struct nbd_link *l, struct swap_req *req)
{
	if (req->link_prev)
		req->link_prev->link_next = req->link_next;
	else
		l->sent = req->link_next;
	if (req->link_next)
		req->link_next->link_prev = req->link_prev;
	req->link_prev = req->link_next = NULL;
	l->nr_sent--;
}

/* libnbd's completion callback: note the result only (see the top of the file). */
static int nbd_command_done(void *user_data, int *error)
{
	struct swap_req *req = user_data;

	req->link_done = true;
	req->link_error = *error;
	return 1; /* retire the command */
}

/* Keep the socket's registration in line with what libnbd waits for. */
static void link_watch(struct nbd_link *l)
{
	uint32_t events = 0;
	int fd = -1;

	if (l->handle && l->state != LINK_DOWN) {
		unsigned dir = nbd_aio_get_direction(l->handle);

		fd = nbd_aio_get_fd(l->handle);
		if (dir & LIBNBD_AIO_DIRECTION_READ)
			events |= EPOLLIN;
		if (dir & LIBNBD_AIO_DIRECTION_WRITE)
			events |= EPOLLOUT;
	}
	if (fd != l->sock_fd) {
		if (l->sock_fd >= 0)
			(void)epoll_ctl(l->epoll_fd, EPOLL_CTL_DEL, l->sock_fd, NULL);
		l->sock_fd = -1;
		if (fd >= 0) {
			struct epoll_event ev = {.events = events, .data.u32 = NBD_TAG_SOCKET};

			if (epoll_ctl(l->epoll_fd, EPOLL_CTL_ADD, fd, &ev) == 0) {
				l->sock_fd = fd;
				l->sock_events = events;
			}
		}
	} else if (fd >= 0 && events != l->sock_events) {
		struct epoll_event ev = {.events = events, .data.u32 = NBD_TAG_SOCKET};

		if (epoll_ctl(l->epoll_fd, EPOLL_CTL_MOD, fd, &ev) == 0)
			l->sock_events = events;
	}
}

/* The earliest moment reap has something to do on its own; 0: none. */
static uint64_t link_next_deadline(struct swap_io *io)
{
	struct nbd_link *l = io->link;
	uint64_t timeout = ms_to_ns(io->swap->timeout_ms), next = 0;

#define EARLIER(t)                                                                                 \
	do {                                                                                       \
		uint64_t t_ = (t);                                                                 \
		if (t_ && (!next || t_ < next))                                                    \
			next = t_;                                                                 \
	} while (0)
	if (l->broken)
		EARLIER(1);
	if (l->state == LINK_DOWN)
		EARLIER(l->retry_at_ns);
	if (l->state == LINK_CONNECTING)
		EARLIER(l->connect_deadline_ns);
	for (struct swap_req *req = l->sent; req; req = req->link_next)
		EARLIER(req->deadline_ns ? req->deadline_ns : req->submit_ns + timeout);
	for (struct swap_req *req = io->backlog_head; req; req = req->next)
		if (req->op == REQ_READ)
			EARLIER(req->deadline_ns);
#undef EARLIER
	return next;
}

static void link_arm(struct swap_io *io)
{
	struct nbd_link *l = io->link;
	uint64_t next = link_next_deadline(io);
	struct itimerspec its = {0};

	if (next == l->armed_ns)
		return;
	if (next) {
		its.it_value.tv_sec = (time_t)(next / 1000000000ULL);
		its.it_value.tv_nsec = (long)(next % 1000000000ULL);
		if (!its.it_value.tv_sec && !its.it_value.tv_nsec)
			its.it_value.tv_nsec = 1;
	}
	if (timerfd_settime(l->timer_fd, TFD_TIMER_ABSTIME, &its, NULL) == 0)
		l->armed_ns = next;
}

/* Start connecting (async).  Stays DOWN with a later retry when that fails at once. */
static void link_connect(struct swap_io *io)
{
	struct nbd_link *l = io->link;
	struct swap *swap = io->swap;
	struct nbd_handle *h = nbd_create();
	uint64_t now = swap_now_nsec();

	if (h && nbd_set_uri_allow_local_file(h, true) == 0 &&
	    nbd_aio_connect_uri(h, swap->uri) == 0) {
		l->handle = h;
		l->state = LINK_CONNECTING;
		l->connect_deadline_ns =
		    now + ms_to_ns(swap->timeout_ms > NBD_CONNECT_MIN_MS ? swap->timeout_ms
									 : NBD_CONNECT_MIN_MS);
		return;
	}
	if (h)
		nbd_close(h);
	stat_add(swap, backend_errors, 1);
	l->retry_at_ns = now + ms_to_ns(l->backoff_ms);
	l->backoff_ms =
	    l->backoff_ms * 2 > NBD_BACKOFF_MAX_MS ? NBD_BACKOFF_MAX_MS : l->backoff_ms * 2;
}

/*
 * Drop the connection: every command sent is done (lost), writes still
 * in the backlog never went out and fail now (their slots are freed).
 * Collected into *failed for the caller to answer.
 */
static void link_down(struct swap_io *io, struct swap_req **failed)
{
	struct nbd_link *l = io->link;
	struct swap *swap = io->swap;
	struct swap_req *keep = NULL, **tail = &keep, *req;

	if (l->sock_fd >= 0)
		(void)epoll_ctl(l->epoll_fd, EPOLL_CTL_DEL, l->sock_fd, NULL);
	l->sock_fd = -1;
	if (l->state == LINK_UP)
		stat_sub(swap, links_up, 1);
	for (req = l->sent; req; req = req->link_next)
		req->link_lost = true;
	if (l->handle)
		nbd_close(l->handle); /* libnbd lets go of every buffer here */
	l->handle = NULL;
	for (req = l->sent; req; req = req->link_next)
		if (!req->link_done) {
			req->link_done = true;
			req->link_error = ENOTCONN;
		}
	l->state = LINK_DOWN;
	l->broken = false;
	l->retry_at_ns = swap_now_nsec() + ms_to_ns(l->backoff_ms);
	l->backoff_ms =
	    l->backoff_ms * 2 > NBD_BACKOFF_MAX_MS ? NBD_BACKOFF_MAX_MS : l->backoff_ms * 2;

	while ((req = swap_backlog_pop(io))) {
		if (req->op == REQ_WRITE) {
			req->next = *failed;
			*failed = req;
		} else {
			*tail = req;
			tail = &req->next;
		}
	}
	*tail = NULL;
	while (keep) {
		req = keep;
		keep = req->next;
		swap_backlog_push(io, req);
	}
}

/* The handshake finished: check the export still fits the metadata. */
static void link_up(struct swap_io *io, struct swap_req **failed)
{
	struct nbd_link *l = io->link;
	struct swap *swap = io->swap;
	int64_t size = nbd_get_size(l->handle);

	if (size < 0 || (uint64_t)size < swap->info.file_size || nbd_is_read_only(l->handle) == 1) {
		/* Another export behind the same URI: never write into it. */
		stat_add(swap, backend_errors, 1);
		l->backoff_ms = NBD_BACKOFF_MAX_MS;
		link_down(io, failed);
		return;
	}
	l->state = LINK_UP;
	stat_add(swap, links_up, 1);
	if (l->ever_up)
		stat_add(swap, backend_reconnects, 1);
	l->ever_up = true;
	l->backoff_ms = NBD_BACKOFF_MIN_MS;
}

/* Issue backlogged requests while the connection is up and has room. */
static int link_flush(struct swap_io *io)
{
	struct nbd_link *l = io->link;
	struct swap *swap = io->swap;
	struct swap_req *req;

	while (l->state == LINK_UP && !l->broken && l->nr_sent < swap->max_inflight &&
	       (req = swap_backlog_pop(io))) {
		nbd_completion_callback cb = {.callback = nbd_command_done, .user_data = req};
		void *buf = (char *)req->buffer + req->done;
		size_t count = req->length - req->done;
		uint64_t offset = req->offset + req->done;
		int64_t cookie;

		req->link_done = req->link_lost = false;
		req->link_error = 0;
		req->link_sent = true;
		if (!req->deadline_ns)
			req->deadline_ns = swap_now_nsec() + ms_to_ns(swap->timeout_ms);
		sent_add(l, req);
		if (req->op == REQ_WRITE)
			cookie = nbd_aio_pwrite(l->handle, buf, count, offset, cb, 0);
		else
			cookie = nbd_aio_pread(l->handle, buf, count, offset, cb, 0);
		if (cookie < 0) {
			/* Not issued: back to the backlog; reap drops the connection. */
			sent_del(l, req);
			req->link_sent = req->link_done = false;
			swap_backlog_unpop(io, req);
			l->broken = true;
			break;
		}
	}
	/*
	 * The connection can die inside one of the calls above (a send that
	 * fails): libnbd then closes the socket itself, so no event of it
	 * will ever wake reap, and the commands sent would wait for their
	 * deadline.  Broken arms the timer at once instead.
	 */
	if (l->handle && l->state != LINK_DOWN &&
	    (nbd_aio_is_dead(l->handle) || nbd_aio_is_closed(l->handle)))
		l->broken = true;
	link_watch(l);
	link_arm(io);
	return 0;
}

/* Answer a request that is off every list. */
static int answer(struct swap_io *io, struct swap_req *req, int result)
{
	return swap_req_complete(io, req, result);
}

static int nbd_reap(struct swap_io *io)
{
	struct nbd_link *l = io->link;
	struct swap *swap = io->swap;
	struct swap_req *failed = NULL, *done = NULL, *expired = NULL, *req, *next;
	struct epoll_event events[4];
	uint64_t now;
	int n, finished = 0;

	n = epoll_wait(l->epoll_fd, events, 4, 0);
	for (int i = 0; i < n; i++) {
		if (events[i].data.u32 == NBD_TAG_TIMER) {
			uint64_t ticks;

			(void)!read(l->timer_fd, &ticks, sizeof(ticks));
			l->armed_ns = 0;
			continue;
		}
		if (!l->handle)
			continue;
		if (events[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR))
			(void)nbd_aio_notify_read(l->handle);
		if (l->handle && (events[i].events & EPOLLOUT))
			(void)nbd_aio_notify_write(l->handle);
	}

	now = swap_now_nsec();
	if (l->handle) {
		if (l->broken || nbd_aio_is_dead(l->handle) || nbd_aio_is_closed(l->handle)) {
			stat_add(swap, backend_errors,
				 1); /* a connection lost, or an attempt failed */
			link_down(io, &failed);
		} else if (l->state == LINK_CONNECTING && nbd_aio_is_ready(l->handle)) {
			link_up(io, &failed);
		} else if (l->state == LINK_CONNECTING && now >= l->connect_deadline_ns) {
			stat_add(swap, backend_errors, 1);
			link_down(io, &failed);
		}
	}
	/* A command unanswered for timeout_ms: the server stalls. */
	if (l->state == LINK_UP) {
		for (req = l->sent; req; req = req->link_next)
			if (!req->link_done && now >= req->deadline_ns)
				break;
		if (req)
			link_down(io, &failed);
	}

	/* Collect first, answer after: callbacks may issue new requests. */
	for (req = l->sent; req; req = next) {
		next = req->link_next;
		if (!req->link_done)
			continue;
		sent_del(l, req);
		req->link_sent = false;
		req->next = done;
		done = req;
	}
	{
		struct swap_req *keep = NULL, **tail = &keep;

		while ((req = swap_backlog_pop(io))) {
			if (req->op == REQ_READ && req->deadline_ns && now >= req->deadline_ns) {
				req->next = expired;
				expired = req;
			} else {
				*tail = req;
				tail = &req->next;
			}
		}
		*tail = NULL;
		while (keep) {
			req = keep;
			keep = req->next;
			swap_backlog_push(io, req);
		}
	}

	while (failed) {
		req = failed;
		failed = req->next;
		stat_add(swap, backend_errors, 1);
		finished += answer(io, req, -EIO);
	}
	while (expired) {
		req = expired;
		expired = req->next;
		stat_add(swap, backend_errors, 1);
		stat_add(swap, read_timeouts, 1);
		finished += answer(io, req, -ETIMEDOUT);
	}
	while (done) {
		bool lost;

		req = done;
		done = req->next;
		if (!req->link_error) {
			finished += answer(io, req, (int)(req->length - req->done));
			continue;
		}
		lost = req->link_lost || req->link_error == ENOTCONN;
		stat_add(swap, backend_errors, 1);
		if (req->op == REQ_READ && lost) {
			if (req->deadline_ns && now >= req->deadline_ns) {
				stat_add(swap, read_timeouts, 1);
				finished += answer(io, req, -ETIMEDOUT);
			} else {
				swap_backlog_push(io, req); /* again, on the next connection */
			}
			continue;
		}
		finished +=
		    answer(io, req, req->op == REQ_WRITE && lost ? SWAP_RESULT_UNCERTAIN : -EIO);
	}

	if (l->state == LINK_DOWN && swap_now_nsec() >= l->retry_at_ns)
		link_connect(io);
	(void)link_flush(io);
	return finished;
}

static int nbd_wait(struct swap_io *io)
{
	struct nbd_link *l = io->link;
	struct pollfd pfd = {.fd = l->epoll_fd, .events = POLLIN};
	uint64_t next, now;
	int timeout = NBD_WAIT_MAX_MS, r;

	(void)link_flush(io);
	next = link_next_deadline(io);
	now = swap_now_nsec();
	if (next && next <= now)
		timeout = 0;
	else if (next && (next - now) / 1000000 < (uint64_t)timeout)
		timeout = (int)((next - now) / 1000000) + 1;
	do
		r = poll(&pfd, 1, timeout);
	while (r < 0 && errno == EINTR);
	if (r < 0)
		return -errno;
	return nbd_reap(io);
}

static int nbd_writable(const struct swap_io *io)
{
	const struct nbd_link *l = io->link;

	return l->state == LINK_UP && !l->broken ? 0 : -ENOTCONN;
}

static void nbd_quarantine(struct swap_io *io, uint64_t slot)
{
	(void)slot; /* stays allocated: never handed out again by this swap */
	stat_add(io->swap, quarantined_slots, 1);
}

static int nbd_io_fd(const struct swap_io *io)
{
	const struct nbd_link *l = io->link;

	return l->epoll_fd;
}

static void nbd_io_fini(struct swap_io *io)
{
	struct nbd_link *l = io->link;
	struct swap_req *failed = NULL, *req;

	if (!l)
		return;
	if (l->handle || l->sent) {
		link_down(io, &failed);
		/* Every request has been answered before fini: only recycle. */
		while ((req = l->sent)) {
			sent_del(l, req);
			swap_req_release(io, req);
		}
		while (failed) {
			req = failed;
			failed = req->next;
			swap_req_release(io, req);
		}
	}
	if (l->epoll_fd >= 0)
		close(l->epoll_fd);
	if (l->timer_fd >= 0)
		close(l->timer_fd);
	free(l);
	io->link = NULL;
}

static int nbd_io_init(struct swap_io *io)
{
	struct nbd_link *l = calloc(1, sizeof(*l));
	struct epoll_event ev = {.events = EPOLLIN, .data.u32 = NBD_TAG_TIMER};
	int r;

	if (!l)
		return -ENOMEM;
	io->link = l;
	l->sock_fd = -1;
	l->timer_fd = -1;
	l->backoff_ms = NBD_BACKOFF_MIN_MS;
	l->epoll_fd = epoll_create1(EPOLL_CLOEXEC);
	if (l->epoll_fd < 0)
		goto fail_errno;
	l->timer_fd = timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC | TFD_NONBLOCK);
	if (l->timer_fd < 0)
		goto fail_errno;
	if (epoll_ctl(l->epoll_fd, EPOLL_CTL_ADD, l->timer_fd, &ev) < 0)
		goto fail_errno;
	link_connect(io);
	link_watch(l);
	link_arm(io);
	return 0;
fail_errno:
	r = -errno;
	nbd_io_fini(io);
	return r;
}

const struct swap_backend_ops swap_backend_nbd = {
    .name = "nbd",
    .io_init = nbd_io_init,
    .io_fini = nbd_io_fini,
    .io_fd = nbd_io_fd,
    .flush = link_flush,
    .reap = nbd_reap,
    .wait = nbd_wait,
    .writable = nbd_writable,
    .quarantine = nbd_quarantine,
};

int swap_nbd_probe(const char *uri, unsigned timeout_ms, uint64_t *size_out, char *err,
		   size_t errlen)
{
	struct nbd_handle *h = nbd_create();
	uint64_t deadline = swap_now_nsec() + ms_to_ns(timeout_ms);
	int64_t size;
	int r;

	if (!h)
		goto fail_nbd;
	if (nbd_set_uri_allow_local_file(h, true) < 0 || nbd_aio_connect_uri(h, uri) < 0)
		goto fail_nbd;
	while (nbd_aio_is_connecting(h)) {
		uint64_t now = swap_now_nsec();

		if (now >= deadline) {
			if (err && errlen)
				snprintf(err, errlen, "no answer from \"%s\" within %u ms", uri,
					 timeout_ms);
			nbd_close(h);
			return -ETIMEDOUT;
		}
		if (nbd_poll(h, (int)((deadline - now) / 1000000) + 1) < 0)
			goto fail_nbd;
	}
	if (!nbd_aio_is_ready(h))
		goto fail_nbd;
	size = nbd_get_size(h);
	if (size < 0)
		goto fail_nbd;
	if (nbd_is_read_only(h) == 1) {
		if (err && errlen)
			snprintf(err, errlen, "the export \"%s\" is read-only", uri);
		nbd_close(h);
		return -EROFS;
	}
	nbd_close(h);
	*size_out = (uint64_t)size;
	return 0;

fail_nbd:
	r = nbd_get_errno();
	if (err && errlen)
		snprintf(err, errlen, "%s", nbd_get_error() ? nbd_get_error() : "libnbd failed");
	if (h)
		nbd_close(h);
	return r > 0 ? -r : -EIO;
}
