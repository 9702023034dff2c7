// SPDX-License-Identifier: MIT
/*
 * Socket messages, validated to the byte.  EVICT_DONE lands the batch;
 * REGISTER, UNREGISTER, FORK_PREPARE, STATS and HINT are queued and
 * answered in order, a request that must wait (for the batch to land, or
 * for an EAGAIN) staying at the head of the queue.
 */
#include <errno.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "client/client.h"
#include "fault/fault-internal.h"
#include "fault/fork.h"
#include "fault/reclaim.h"
#include "fault/request.h"
#include "fault/restore.h"
#include "fault/serve.h"
#include "fault/vmevent.h"
#include "index/index.h"
#include "protocol.h"
#include "stats/stats.h"
#include "util.h"

#define FAULT_SOCKET_ROUNDS    64   /* socket messages per wake-up */
#define FAULT_FORK_PAUSE_MAX   1024 /* FORK_PREPAREs outstanding per client */
#define FAULT_BATCH_RANGES_MAX (4 * UZ_REGISTER_BATCH_MAX) /* REGISTER_BATCH ranges queued */

/* A positive outcome of a request step: the answer was already sent (or none is due). */
#define REQUEST_ANSWERED 1

static int reply_send(struct client *c, uint32_t seq, int status)
{
	struct uz_msg_reply reply = {0};

	uz_msg_header_init(&reply.header, UZ_MSG_REPLY, sizeof(reply), seq);
	reply.status = status;
	return client_send(c, &reply, sizeof(reply));
}

static int stats_reply_send(struct client *c, uint32_t seq)
{
	struct uz_msg_stats_reply reply = {0};

	uz_msg_header_init(&reply.header, UZ_MSG_STATS_REPLY, sizeof(reply), seq);
	reply.registered_bytes = c->registered_bytes;
	reply.resident_pages = c->resident;
	reply.stored_pages = (uint64_t)stats_read(c->stats, UZ_STAT_stored_pages);
	reply.same_filled_pages = (uint64_t)stats_read(c->stats, UZ_STAT_same_filled_pages);
	reply.on_disk_pages = (uint64_t)stats_read(c->stats, UZ_STAT_on_disk_pages);
	reply.compressed_bytes = (uint64_t)stats_read(c->stats, UZ_STAT_compressed_bytes);
	reply.faults = c->faults;
	reply.zswpin = (uint64_t)stats_read(c->stats, UZ_STAT_zswpin);
	reply.zswpout = (uint64_t)stats_read(c->stats, UZ_STAT_zswpout);
	return client_send(c, &reply, sizeof(reply));
}

static int populate_one(uint64_t vpn, void *userdata)
{
	struct client *c = userdata;
	page_entry_t e = page_index_get(c->index, vpn);
	int r;

	if (pe_state(e) != PAGE_NEVER || fault_client_address_in_flight(c, vpn, NULL))
		return 0;
	r = page_index_set(c->index, vpn, pe_make(e, PAGE_RESIDENT, false, 0, 0, 0));
	if (r < 0)
		return r;
	client_resident_add(c, 1);
	return 0;
}

#define REGISTER_PARTS_MAX 64 /* pieces of one range the client does not hold yet */

/*
 * Register [start, end) for the client (docs/PROTOCOL.md section 2).  The
 * range must be private anonymous writable memory of the client, registered
 * with its uffd (client_maps_check: a region over memory whose faults we do
 * not get would let the agent move pages out of it for good), off the
 * graveyard, within the limits.  Without merge an overlap with a region
 * the client holds is -EEXIST; with merge (REGISTER_BATCH) only the parts
 * not held yet are added, and a refusal of a range that was partly held is
 * -EEXIST, so that any other error means the daemon holds none of it.
 * POPULATED counts the present pages of the added parts resident.
 */
static int register_range(struct client *c, const struct client_maps *maps, uint64_t start,
			  uint64_t end, uint32_t flags, bool merge)
{
	struct client_region parts[REGISTER_PARTS_MAX];
	unsigned nparts = 0, added = 0;
	uint64_t cursor = start;
	bool covered = false;
	int r = 0;

	if (start < c->graveyard_end && end > c->graveyard_start)
		return -EINVAL;
	for (unsigned i = client_region_lower_bound(c, start);
	     i < c->nr_regions && c->regions[i].start < end; i++) {
		covered = true;
		if (c->regions[i].start > cursor) {
			if (nparts == REGISTER_PARTS_MAX)
				return -EEXIST;
			parts[nparts++] = (struct client_region){cursor, c->regions[i].start};
		}
		cursor = uz_max(cursor, c->regions[i].end);
	}
	if (covered && !merge)
		return -EEXIST;
	if (cursor < end) {
		if (nparts == REGISTER_PARTS_MAX)
			return covered ? -EEXIST : -E2BIG;
		parts[nparts++] = (struct client_region){cursor, end};
	}
	for (unsigned i = 0; i < nparts && r == 0; i++)
		r = client_maps_check(c, c->uffd, maps, parts[i].start, parts[i].end);
	for (; added < nparts && r == 0; added++)
		r = client_region_add(c, parts[added].start, parts[added].end);
	for (unsigned i = 0; i < added && r == 0 && (flags & UZ_REGISTER_POPULATED); i++) {
		r = client_pagemap_present(c, parts[i].start, parts[i].end, populate_one, c);
		if (r == -ENODEV)
			r = 0;
	}
	if (r < 0) {
		for (unsigned i = 0; i < added; i++) {
			client_region_remove(c, parts[i].start, parts[i].end);
			fault_client_forget_range(c, parts[i].start, parts[i].end);
		}
		return covered ? -EEXIST : r;
	}
	return 0;
}

static int request_register(struct client *c, struct client_request *req)
{
	struct client_maps maps;
	int r;

	if (req->start < c->graveyard_end && req->end > c->graveyard_start)
		return -EINVAL;
	r = client_maps_read(c, &maps);
	if (r < 0)
		return r;
	r = register_range(c, &maps, req->start, req->end, req->arg, false);
	client_maps_free(&maps);
	return r;
}

/* REGISTER_BATCH: one maps read for every range, one status each, one reply. */
static int request_register_batch(struct client *c, struct client_request *req)
{
	struct {
		struct uz_msg_register_batch_reply reply;
		int32_t status[UZ_REGISTER_BATCH_MAX];
	} answer = {0};
	const struct uz_register_range *ranges =
	    req->ranges ? req->ranges : &(struct uz_register_range){req->start, req->end - req->start};
	size_t size = offsetof(struct uz_msg_register_batch_reply, status) +
		      (size_t)req->count * sizeof(int32_t);
	struct client_maps maps = {0};
	uint64_t previous_end = 0;
	int r;

	r = client_maps_read(c, &maps);
	for (uint32_t i = 0; i < req->count; i++) {
		uint64_t start = ranges[i].start, end = ranges[i].start + ranges[i].len;

		if (r < 0)
			answer.status[i] = r;
		else if (start < previous_end)
			answer.status[i] = -EINVAL; /* not sorted, or overlapping its neighbour */
		else
			answer.status[i] = register_range(c, &maps, start, end, req->arg, true);
		previous_end = uz_max(previous_end, end);
	}
	client_maps_free(&maps);
	uz_msg_header_init(&answer.reply.header, UZ_MSG_REGISTER_BATCH_REPLY, size, req->seq);
	answer.reply.count = req->count;
	r = client_send(c, &answer, size);
	return r < 0 ? r : REQUEST_ANSWERED;
}

/*
 * FORK_PREPARE, the batch landed: the child's snapshot (daemon/fault/fork.c),
 * answered with its store attached.  REQUEST_ANSWERED, or -EOPNOTSUPP when
 * a snapshot cannot be had (an object or slot shared by too many, no
 * memory): the caller then gives every page back, as before snapshots.
 */
static int client_fork_snapshot(struct client *c, uint32_t seq)
{
	struct uz_msg_reply reply = {0};
	struct fork_snapshot *snapshot;
	int fd, r;

	if (c->fork_snapshot) {
		/* A FORK_DONE never came for the last one (a parent that never forked). */
		fork_snapshot_done(c->fork_snapshot, 0);
		c->fork_snapshot = NULL;
	}
	if (fork_snapshot_take(c, &snapshot) < 0)
		return -EOPNOTSUPP;
	fd = fork_snapshot_fd(snapshot);
	if (fd < 0) {
		fork_snapshot_done(snapshot, -1);
		return -EOPNOTSUPP;
	}
	uz_msg_header_init(&reply.header, UZ_MSG_REPLY, sizeof(reply), seq);
	reply.flags = UZ_REPLY_SNAPSHOT;
	if (uz_unlikely(c->thread->test_fork_done_delay_ms))
		c->test_socket_held_until =
		    uz_now_usec() + c->thread->test_fork_done_delay_ms * 1000ULL;
	r = client_send_fd(c, &reply, sizeof(reply), fd);
	close(fd);
	if (r < 0) {
		fork_snapshot_done(snapshot, -1);
		return r;
	}
	c->fork_snapshot = snapshot;
	client_stat(c, UZ_STAT_fork_snapshots, 1);
	return REQUEST_ANSWERED;
}

/*
 * One step of the request at the head of the queue.  Returns the status to
 * answer, REQUEST_ANSWERED, or -EINPROGRESS when it must wait (for the
 * batch to land, or to retry an EAGAIN: then t->want_retry is set).
 */
static int request_step(struct fault_thread *t, struct client *c, struct client_request *req)
{
	uint64_t first = req->start >> UZ_PAGE_SHIFT, last = (req->end >> UZ_PAGE_SHIFT) - 1;
	int r;

	switch (req->type) {
	case CLIENT_REQ_REGISTER:
		return request_register(c, req);
	case CLIENT_REQ_REGISTER_BATCH:
		return request_register_batch(c, req);
	case CLIENT_REQ_STATS:
		r = stats_reply_send(c, req->seq);
		return r < 0 ? r : REQUEST_ANSWERED;
	case CLIENT_REQ_HINT:
		if (req->arg == UZ_HINT_COLD) {
			c->cold_start = first;
			c->cold_end = last + 1;
			return 0;
		}
		/* HOT: bring the range back and keep it a sweep longer. */
		if (c->cold_start < c->cold_end && first < c->cold_end && last >= c->cold_start)
			c->cold_start = c->cold_end = 0;
		break;
	case CLIENT_REQ_FORK_PREPARE:
		if (c->batch_state != BATCH_IDLE)
			return -EINPROGRESS;
		if (!req->started) {
			r = client_fork_snapshot(c, req->seq);
			if (r != -EOPNOTSUPP)
				return r;
			/* No snapshot possible: every page goes back before the fork. */
		}
		break;
	case CLIENT_REQ_UNREGISTER:
	case CLIENT_REQ_SHUTDOWN:
		break;
	default:
		return -EINVAL;
	}

	/* The restoring kinds: wait for the batch, then walk. */
	if (c->batch_state != BATCH_IDLE)
		return -EINPROGRESS;
	if (!req->started) {
		req->started = true;
		req->cursor = first;
	}
	r = fault_client_restore_range(t, c, &req->cursor, last, req->type == CLIENT_REQ_HINT,
				       false);
	if (r == -EAGAIN || r == -EBUSY)
		return -EINPROGRESS;
	if (r < 0)
		return r;

	switch (req->type) {
	case CLIENT_REQ_UNREGISTER:
		/* Forget the range: its pages are the client's alone from now on. */
		fault_client_forget_range(c, req->start, req->end);
		client_region_remove(c, req->start, req->end);
		return 0;
	case CLIENT_REQ_SHUTDOWN: {
		struct uz_msg_header msg;

		uz_msg_header_init(&msg, UZ_MSG_SHUTDOWN, sizeof(msg), 0);
		r = client_send(c, &msg, sizeof(msg));
		if (r < 0)
			return r;
		c->shutdown_sent = true;
		return REQUEST_ANSWERED;
	}
	default:
		return 0;
	}
}

void fault_client_run_requests(struct fault_thread *t, struct client *c)
{
	while (c->nr_requests && !c->dead) {
		struct client_request *req = &c->requests[c->requests_head];
		int r = request_step(t, c, req);

		if (r == -EINPROGRESS)
			return;
		if (req->type == CLIENT_REQ_SHUTDOWN && r < 0) {
			/* pages were given back as far as possible */
			fault_client_kill(t, c, false);
			return;
		}
		if (r != REQUEST_ANSWERED && reply_send(c, req->seq, r) < 0) {
			fault_client_kill(t, c, true);
			return;
		}
		if (req->ranges) {
			c->queued_batch_ranges -= req->count;
			free(req->ranges);
			req->ranges = NULL;
		}
		c->requests_head = (c->requests_head + 1) % UZ_CLIENT_REQUESTS_MAX;
		c->nr_requests--;
	}
}

int fault_request_push(struct client *c, uint32_t type, uint32_t seq, uint64_t start, uint64_t end,
		       uint32_t arg)
{
	struct client_request *req;

	if (c->nr_requests == UZ_CLIENT_REQUESTS_MAX)
		return -EBADMSG;
	req = &c->requests[(c->requests_head + c->nr_requests) % UZ_CLIENT_REQUESTS_MAX];
	*req = (struct client_request){
	    .type = type,
	    .seq = seq,
	    .start = start,
	    .end = end,
	    .arg = arg,
	};
	c->nr_requests++;
	return 0;
}

/* start/len of a range message: page aligned, non-empty, inside user space. */
static bool range_valid(uint64_t start, uint64_t len)
{
	return uz_page_aligned(start) && uz_page_aligned(len) && len > 0 &&
	       start < UZ_USER_ADDR_MAX && len <= UZ_USER_ADDR_MAX - start;
}

/*
 * Queue a REGISTER_BATCH.  Every range is checked for shape here (a bad
 * one breaks the protocol); whether it may be registered is decided when
 * the request runs.  A batch of one is kept inline; larger ones are
 * copied, at most FAULT_BATCH_RANGES_MAX ranges queued per client.
 */
static int request_push_batch(struct client *c, const void *buf, size_t len)
{
	const struct uz_msg_register_batch *m = buf;
	struct client_request *req;
	int r;

	if (len < offsetof(struct uz_msg_register_batch, ranges) || m->count == 0 ||
	    m->count > UZ_REGISTER_BATCH_MAX ||
	    len != offsetof(struct uz_msg_register_batch, ranges) +
		       (size_t)m->count * sizeof(m->ranges[0]) ||
	    (m->flags & ~UZ_REGISTER_POPULATED))
		return -EBADMSG;
	for (uint32_t i = 0; i < m->count; i++)
		if (!range_valid(m->ranges[i].start, m->ranges[i].len))
			return -EBADMSG;
	if (m->count > 1 && c->queued_batch_ranges + m->count > FAULT_BATCH_RANGES_MAX)
		return -EBADMSG;
	r = fault_request_push(c, CLIENT_REQ_REGISTER_BATCH, m->header.seq, m->ranges[0].start,
			       m->ranges[0].start + m->ranges[0].len, m->flags);
	if (r < 0)
		return r;
	req = &c->requests[(c->requests_head + c->nr_requests - 1) % UZ_CLIENT_REQUESTS_MAX];
	req->count = m->count;
	if (m->count > 1) {
		req->ranges = malloc(m->count * sizeof(m->ranges[0]));
		if (!req->ranges) {
			c->nr_requests--;
			return -ENOMEM;
		}
		memcpy(req->ranges, m->ranges, m->count * sizeof(m->ranges[0]));
		c->queued_batch_ranges += m->count;
	}
	return 0;
}

/* One message from the client's socket.  < 0: the client broke the protocol. */
static int client_handle_message(struct fault_thread *t, struct client *c, const void *buf,
				 size_t len)
{
	const struct uz_msg_header *h = buf;

	if (len < sizeof(*h) || h->magic != UZ_PROTO_MAGIC || h->version != UZ_PROTO_VERSION ||
	    h->size != len)
		return -EBADMSG;

	switch (h->type) {
	case UZ_MSG_REGISTER:
	case UZ_MSG_UNREGISTER: {
		const struct uz_msg_range *m = buf;
		uint32_t allowed = h->type == UZ_MSG_REGISTER ? UZ_REGISTER_POPULATED : 0;

		if (len != sizeof(*m) || !range_valid(m->start, m->len) || (m->flags & ~allowed) ||
		    m->reserved)
			return -EBADMSG;
		return fault_request_push(c, h->type, h->seq, m->start, m->start + m->len,
					  m->flags);
	}
	case UZ_MSG_REGISTER_BATCH:
		return request_push_batch(c, buf, len);
	case UZ_MSG_HINT: {
		const struct uz_msg_hint *m = buf;

		if (len != sizeof(*m) || !range_valid(m->start, m->len) ||
		    (m->hint != UZ_HINT_COLD && m->hint != UZ_HINT_HOT) || m->reserved)
			return -EBADMSG;
		return fault_request_push(c, CLIENT_REQ_HINT, h->seq, m->start, m->start + m->len,
					  m->hint);
	}
	case UZ_MSG_FORK_PREPARE:
		if (len != sizeof(*h) || c->fork_pause >= FAULT_FORK_PAUSE_MAX)
			return -EBADMSG;
		c->fork_pause++;
		return fault_request_push(c, CLIENT_REQ_FORK_PREPARE, h->seq, 0,
					  (VPN_MAX + 1) << UZ_PAGE_SHIFT, 0);
	case UZ_MSG_FORK_DONE: {
		const struct uz_msg_fork_done *m = buf;

		if (len != sizeof(*m) || m->reserved)
			return -EBADMSG;
		if (c->fork_snapshot) {
			fork_snapshot_done(c->fork_snapshot, m->child_pid);
			c->fork_snapshot = NULL;
		}
		if (c->fork_pause)
			c->fork_pause--;
		return 0;
	}
	case UZ_MSG_STATS:
		if (len != sizeof(*h))
			return -EBADMSG;
		return fault_request_push(c, CLIENT_REQ_STATS, h->seq, 0, UZ_PAGE_SIZE, 0);
	case UZ_MSG_EVICT_DONE:
		return fault_client_evict_done(t, c, buf, len);
	case UZ_MSG_SHUTDOWN_ACK:
		if (len != sizeof(*h) || !c->shutdown_sent)
			return -EBADMSG;
		c->gone = true;
		c->leave_reason = "shut down by the daemon";
		fault_client_kill(t, c, false);
		return 0;
	default:
		return -EBADMSG;
	}
}

#define CLIENT_BACKLOG_MAX 16

struct client_backlog {
	unsigned head, count;
	bool bad; /* the message after the last one here was malformed (fds, an error) */
	uint32_t len[CLIENT_BACKLOG_MAX];
	union {
		struct uz_msg_header header;
		uint8_t raw[UZ_MSG_SIZE_MAX];
	} msg[CLIENT_BACKLOG_MAX];
};

static bool backlog_fork_done(const struct client_backlog *b, unsigned slot)
{
	return b->len[slot] >= sizeof(struct uz_msg_header) &&
	       b->msg[slot].header.type == UZ_MSG_FORK_DONE;
}

bool fault_client_fork_done_queued(struct client *c)
{
	struct client_backlog *b = c->backlog;

	if (!b) {
		b = c->backlog = calloc(1, sizeof(*b));
		if (!b)
			return false;
	}
	for (unsigned i = 0; i < b->count; i++)
		if (backlog_fork_done(b, (b->head + i) % CLIENT_BACKLOG_MAX))
			return true;
	while (b->count < CLIENT_BACKLOG_MAX && !b->bad) {
		unsigned slot = (b->head + b->count) % CLIENT_BACKLOG_MAX, nfds = 0;
		int fds[4];
		ssize_t len = client_recv(c->sock_fd, &b->msg[slot], sizeof(b->msg[slot]), fds, &nfds, 4);

		if (len == -EAGAIN || len == -EINTR || len == 0)
			break; /* nothing more, or EOF: the socket still says so to the loop */
		if (len < 0 || nfds) {
			for (unsigned i = 0; i < nfds; i++)
				close(fds[i]);
			b->bad = true;
			break;
		}
		b->len[slot] = (uint32_t)len;
		b->count++;
		if (backlog_fork_done(b, slot))
			return true;
	}
	return false;
}

bool fault_client_backlog_pending(const struct client *c)
{
	return c->backlog && (c->backlog->count || c->backlog->bad);
}

void fault_client_handle_socket(struct fault_thread *t, struct client *c)
{
	union {
		struct uz_msg_header header;
		uint8_t raw[UZ_MSG_SIZE_MAX];
	} buf;

	/* What the journal's handling read ahead comes first, in order. */
	while (c->backlog && c->backlog->count && !c->dead) {
		struct client_backlog *b = c->backlog;
		unsigned slot = b->head;
		size_t len = b->len[slot];

		memcpy(&buf, &b->msg[slot], len);
		b->head = (b->head + 1) % CLIENT_BACKLOG_MAX;
		b->count--;
		if (client_handle_message(t, c, &buf, len) < 0) {
			if (!c->leave_reason)
				c->leave_reason = "protocol error";
			fault_client_kill(t, c, true);
			return;
		}
	}
	if (c->backlog && c->backlog->bad && !c->dead) {
		fault_client_kill(t, c, true);
		return;
	}

	for (int round = 0; round < FAULT_SOCKET_ROUNDS && !c->dead; round++) {
		int fds[4];
		unsigned nfds = 0;
		ssize_t len = client_recv(c->sock_fd, &buf, sizeof(buf), fds, &nfds, 4);

		if (len == -EAGAIN || len == -EINTR)
			break;
		if (len == 0) {
			/* The process exited (or dropped us): give back what we can. */
			c->leave_reason = "exited or closed its connection";
			fault_client_kill(t, c, true);
			return;
		}
		if (len < 0 || nfds) {
			for (unsigned i = 0; i < nfds; i++)
				close(fds[i]);
			fault_client_kill(t, c, true);
			return;
		}
		if (client_handle_message(t, c, &buf, (size_t)len) < 0) {
			if (!c->leave_reason)
				c->leave_reason = "protocol error";
			fault_client_kill(t, c, true);
			return;
		}
	}
	fault_client_run_requests(t, c);
}
