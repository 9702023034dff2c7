// SPDX-License-Identifier: MIT
/*
 * Fault threads: the paging path of uzswapd.
 *
 * Each fault thread owns a set of clients completely — their userfaultfd,
 * their socket after the handshake, their page index and their eviction
 * batch — and serves them from one epoll loop.  Nothing else touches a
 * client's index, so it needs no lock; the pool, the LRU and the
 * statistics are thread-safe objects of their own.  A thread has its own
 * compressor and page buffers, so serving a fault allocates nothing.
 *
 * What arrives, and what is done with it:
 *
 *  - uffd messages, read in batches without blocking (vmevent.c).  A
 *    PAGEFAULT is served by the state of its page entry (serve.c); REMOVE,
 *    UNMAP and REMAP free or move the entries of the range (vmevent.c).
 *
 *  - The kernel refuses UFFDIO_COPY/ZEROPAGE with EAGAIN while a VM event
 *    of the client is being delivered (mmap_changing): until we have read
 *    the event and the thread that raised it has run again.  Such a fault
 *    goes on the thread's retry list and is retried after more messages
 *    were read; the loop polls without sleeping while retries are pending.
 *
 *  - Socket messages, validated to the byte.  EVICT_DONE lands the batch;
 *    REGISTER, UNREGISTER, FORK_PREPARE, STATS and HINT are queued and
 *    answered in order, a request that must wait (for the batch to land,
 *    or for an EAGAIN) staying at the head of the queue.
 *
 * Reclaim, per client (reclaim.c), runs after every event of the client,
 * after each round of retries, when its policy changes or its fork grace
 * ends, and on a tick for every client.
 *
 * Giving pages back (UNREGISTER, FORK_PREPARE, SHUTDOWN, HOT hint, a bad
 * client) walks the range (restore.c).
 *
 * Rules kept here: no lock is held across a system call; the fault path
 * neither allocates nor logs; a bad client is disconnected (after its
 * pages are given back where possible) and never takes the thread down.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#include "client/client.h"
#include "compress/compress.h"
#include "daemon.h"
#include "fault/fault.h"
#include "fault/fault-internal.h"
#include "fault/reclaim.h"
#include "fault/restore.h"
#include "fault/serve.h"
#include "fault/vmevent.h"
#include "fault/fork.h"
#include "family/family.h"
#include "fault/writeback.h"
#include "index/index.h"
#include "lru/lru.h"
#include "pool/pool.h"
#include "protocol.h"
#include "stats/stats.h"
#include "swap/swapfile.h"
#include "uffd-compat.h"
#include "util.h"

enum {
	FAULT_SOURCE_EVENTFD = 0,
	FAULT_SOURCE_UFFD,
	FAULT_SOURCE_SOCKET,
	FAULT_SOURCE_SWAP, /* the swap_io eventfd of the writeback tier */
};

#define FAULT_SOCKET_ROUNDS  64	  /* socket messages per wake-up */
#define FAULT_RETRY_MAX	     8192 /* faults waiting on EAGAIN, per thread */
#define FAULT_SPIN_POLLS     200  /* zero-timeout polls before sleeping 1 ms */
#define FAULT_FORK_PAUSE_MAX 1024 /* FORK_PREPAREs outstanding per client */
#define FAULT_IDLE_TICK_MS    500 /* wake at least this often: the heartbeat ticks */
#define FAULT_SPIN_USEC_MIN   4	  /* the spin never shrinks below this once armed */
#define FAULT_FORK_GRACE_MS   1000 /* a fork child's pages stay resident this long */
#define FAULT_BATCH_RANGES_MAX (4 * UZ_REGISTER_BATCH_MAX) /* REGISTER_BATCH ranges queued */

/* A positive outcome of a request step: the answer was already sent (or none is due). */
#define REQUEST_ANSWERED 1

/* ---------------------------------------------------------------------------
 * Small helpers
 */

/*
 * The compressor for a policy: found in the thread's cache, created there
 * on first use (when a client is adopted or gets a new policy, never on
 * the fault path).  Falls back to the default one when the cache is full
 * or creation fails.
 */
struct compressor *fault_compressor(struct fault_thread *t, enum compressor_algo algo, int level,
				    bool create)
{
	struct compressor *comp;

	if (algo == COMPRESSOR_LZ4)
		level = 0;
	for (unsigned i = 0; i < t->nr_compressors; i++)
		if (t->compressors[i].algo == algo && t->compressors[i].level == level)
			return t->compressors[i].compressor;
	if (!create || t->nr_compressors >= FAULT_COMPRESSORS_MAX ||
	    compressor_new(&comp, algo, level) < 0)
		return t->compressor;
	t->compressors[t->nr_compressors].algo = algo;
	t->compressors[t->nr_compressors].level = level;
	t->compressors[t->nr_compressors].compressor = comp;
	t->nr_compressors++;
	return comp;
}

void fault_retry_add(struct fault_thread *t, struct client *c, uint64_t addr, bool write)
{
	t->want_retry = true;
	if (t->nr_retries == FAULT_RETRY_MAX) {
		/* Let the faulting thread fault again: the kernel re-delivers it. */
		uffd_wake(c->uffd, addr, UZ_PAGE_SIZE);
		return;
	}
	t->retries[t->nr_retries++] = (struct fault_retry){c, addr, write};
}

/* ---------------------------------------------------------------------------
 * Client lifetime on the thread
 */

static void fault_retries_purge(struct fault_thread *t, struct client *c)
{
	unsigned j = 0;

	for (unsigned i = 0; i < t->nr_retries; i++)
		if (t->retries[i].client != c)
			t->retries[j++] = t->retries[i];
	t->nr_retries = j;
}

/* Stop serving a client; its memory goes at the end of this loop round. */
void fault_client_kill(struct fault_thread *t, struct client *c, bool give_back)
{
	if (c->dead)
		return;
	/* Dead first: nothing below may re-enter the request queue or kill again. */
	c->dead = true;
	if (give_back && !c->gone)
		fault_client_restore_best_effort(t, c);
	epoll_ctl(t->epoll_fd, EPOLL_CTL_DEL, c->uffd, NULL);
	epoll_ctl(t->epoll_fd, EPOLL_CTL_DEL, c->sock_fd, NULL);
	uz_list_del(&c->thread_link);
	uz_list_add_tail(&t->dead, &c->thread_link);
}

/*
 * The client is disconnected but its process lives on (a protocol error, a
 * drain that timed out, a daemon stopping for a handover): it keeps its
 * state -- index, arena, swap records -- for the daemon it re-joins next.
 * Only what this daemon counted goes: the gauges it added to the group and
 * the global statistics, and its I/O in flight (whose slots its entries
 * still name).
 */
static void client_detach(struct fault_thread *t, struct client *c)
{
	int64_t v[UZ_STAT__COUNT];

	wb_client_detach(t->wb, c);
	stats_read_all(c->stats, v);
	for (int i = 0; i < UZ_STAT__COUNT; i++) {
		if (stats_kind((enum uz_stat)i) != UZ_STAT_GAUGE || !v[i])
			continue;
		stats_add(c->group->stats, (enum uz_stat)i, -v[i]);
		stats_add(c->daemon->stats, (enum uz_stat)i, -v[i]);
		stats_add(c->stats, (enum uz_stat)i, -v[i]);
	}
}

/* Why a client leaves, for the log (UZ_MESSAGE_CLIENT_LEFT). */
static const char *client_leave_reason(const struct fault_thread *t, const struct client *c)
{
	if (c->shutdown_sent && c->gone)
		return "every page given back, daemon stopping";
	if (!c->gone)
		return t->draining ? "daemon stopping, no SHUTDOWN acknowledgement; it keeps its "
				     "pages for the next uzswapd"
				   : "disconnected, alive; it keeps its pages for the daemon it re-joins";
	return "exited";
}

static void client_destroy(struct fault_thread *t, struct client *c)
{
	struct daemon *d = t->daemon;
	uint64_t managed = client_managed_pages(c) * UZ_PAGE_SIZE, anon_rss;

	fault_retries_purge(t, c);
	if (!c->gone && !client_process_alive(c))
		c->gone = true;
	daemon_client_left(d, c, client_leave_reason(t, c)); /* logged by the main thread */
	if (c->gone)
		fault_client_forget_range(c, 0, (VPN_MAX + 1) << UZ_PAGE_SHIFT);
	else
		client_detach(t, c);
	uz_list_del(&c->thread_link);
	pthread_mutex_lock(&d->clients_lock);
	uz_list_del(&c->link);
	d->nr_clients--;
	anon_rss = c->anon_rss_bytes;
	pthread_mutex_unlock(&d->clients_lock);
	/* Not the fault path: the end of a loop round, once per client. */
	uz_log(LOG_INFO,
	       "client %" PRIu64 " left: pid %d comm \"%s\" (%s); managed %" PRIu64
	       " MiB, anonymous RSS %" PRIu64 " MiB when last looked at",
	       c->id, (int)c->pid, c->comm, c->leave_reason ? c->leave_reason : "disconnected",
	       managed >> 20, anon_rss >> 20);
	client_free(c);
}

/* ---------------------------------------------------------------------------
 * Requests
 */

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

static int request_push(struct client *c, uint32_t type, uint32_t seq, uint64_t start, uint64_t end,
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
	r = request_push(c, CLIENT_REQ_REGISTER_BATCH, m->header.seq, m->ranges[0].start,
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
		return request_push(c, h->type, h->seq, m->start, m->start + m->len, m->flags);
	}
	case UZ_MSG_REGISTER_BATCH:
		return request_push_batch(c, buf, len);
	case UZ_MSG_HINT: {
		const struct uz_msg_hint *m = buf;

		if (len != sizeof(*m) || !range_valid(m->start, m->len) ||
		    (m->hint != UZ_HINT_COLD && m->hint != UZ_HINT_HOT) || m->reserved)
			return -EBADMSG;
		return request_push(c, CLIENT_REQ_HINT, h->seq, m->start, m->start + m->len,
				    m->hint);
	}
	case UZ_MSG_FORK_PREPARE:
		if (len != sizeof(*h) || c->fork_pause >= FAULT_FORK_PAUSE_MAX)
			return -EBADMSG;
		c->fork_pause++;
		return request_push(c, CLIENT_REQ_FORK_PREPARE, h->seq, 0,
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
		return request_push(c, CLIENT_REQ_STATS, h->seq, 0, UZ_PAGE_SIZE, 0);
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

static void client_handle_socket(struct fault_thread *t, struct client *c)
{
	union {
		struct uz_msg_header header;
		uint8_t raw[UZ_MSG_SIZE_MAX];
	} buf;

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

/* Retry what returned EAGAIN: faults, installs, waiting requests. */
static void fault_thread_retry(struct fault_thread *t)
{
	unsigned n = t->nr_retries, kept = 0;

	t->want_retry = false;
	for (unsigned i = 0; i < n; i++) {
		struct fault_retry *r = &t->retries[i];

		if (r->client->dead)
			continue;
		if (fault_serve(t, r->client, r->addr, r->write) == -EAGAIN)
			t->retries[kept++] = *r;
	}
	t->nr_retries = kept;
	if (kept)
		t->want_retry = true;
	if (wb_retry(t->wb))
		t->want_retry = true;

	for (struct uz_list *i = t->clients.next, *next; i != &t->clients; i = next) {
		struct client *c = uz_container_of(i, struct client, thread_link);

		next = i->next;
		if (c->batch_state == BATCH_LANDING)
			fault_client_batch_install(t, c);
		if (!c->dead)
			fault_client_run_requests(t, c);
		if (!c->dead)
			fault_client_reclaim(t, c);
	}
}

/* ---------------------------------------------------------------------------
 * The thread
 */

/*
 * Take a new group and policy the main thread posted (cgroup changed,
 * config reloaded, shrink asked).  The client's gauges move from the old
 * group to the new one, so per-group sums keep matching the global ones;
 * counters stay where they were counted.
 */
static void client_take_assign(struct fault_thread *t, struct client *c)
{
	struct client_assign *a = __atomic_exchange_n(&c->assign, NULL, __ATOMIC_ACQ_REL);

	if (!a)
		return;
	if (a->group && a->group != c->group) {
		int64_t v[UZ_STAT__COUNT];

		stats_read_all(c->stats, v);
		for (int i = 0; i < UZ_STAT__COUNT; i++) {
			if (stats_kind((enum uz_stat)i) != UZ_STAT_GAUGE || !v[i])
				continue;
			stats_add(c->group->stats, (enum uz_stat)i, -v[i]);
			stats_add(a->group->stats, (enum uz_stat)i, v[i]);
		}
		group_unref(c->group);
		c->group = a->group;
		a->group = NULL;
	}
	client_set_policy(c, &a->policy);
	(void)fault_compressor(t, c->policy.algo, c->policy.level, true);
	c->shrink_pages += a->shrink_pages;
	client_assign_free(a);
	if (!c->dead)
		fault_client_reclaim(t, c);
}

/* ---------------------------------------------------------------------------
 * Taking a client back after a daemon restart
 */

struct recover_ctx {
	struct fault_thread *thread;
	struct client *client;
	struct pagemap_window pagemap;
	/* IN_FLIGHT entries of the batch the previous daemon had out, and its record */
	uint64_t in_flight_vpns[UZ_EVICT_BATCH_MAX];
	struct uz_store_batch record;
	bool shared; /* a fork child's snapshot: its objects are its parent's too */
	unsigned nr_in_flight;
	uint64_t recovered, lost;
};

/* Is the client's page at vpn mapped?  Unknown counts as mapped (never lose a page). */
static bool recover_page_mapped(struct recover_ctx *ctx, uint64_t vpn)
{
	uint64_t word;

	/*
	 * Cannot tell: not mapped.  That keeps what the entry names (a stale
	 * copy under a present page is never served: no fault comes for it),
	 * where "mapped" would release the only copy of a page that is not.
	 */
	if (!pagemap_word(ctx->client, &ctx->pagemap, vpn, &word))
		return false;
	return word & (PAGEMAP_PRESENT_BIT | PAGEMAP_SWAPPED_BIT);
}

/*
 * One entry of the recovered index, checked against the page tables: a page
 * that is mapped was put back (or never left), whatever its entry says;
 * evicted bytes the new daemon cannot reach become LOST (poisoned on
 * fault).  The LRU of the new daemon is empty, so every queued bit goes.
 */
static int recover_one(uint64_t vpn, page_entry_t *entry, void *userdata)
{
	struct recover_ctx *ctx = userdata;
	struct client *c = ctx->client;
	page_entry_t e = *entry & ~PE_QUEUED;
	struct swap *swap = __atomic_load_n(&c->daemon->swap, __ATOMIC_ACQUIRE);
	bool mapped = recover_page_mapped(ctx, vpn), stored, on_disk;

	if (pe_state(e) == PAGE_IN_FLIGHT) {
		/* Decided after the walk, from the batch record and the ring's status page. */
		if (ctx->nr_in_flight < UZ_EVICT_BATCH_MAX)
			ctx->in_flight_vpns[ctx->nr_in_flight++] = vpn;
		*entry = e;
		return 0;
	}
	stored = (pe_state(e) == PAGE_STORED || pe_state(e) == PAGE_WRITEBACK) &&
		 pool_refcount(c->family->pool, pe_payload(e)) > 0;
	on_disk = pe_state(e) == PAGE_ON_DISK && swap &&
		  swap_slot_refcount(swap, pe_payload(e)) > 0;
	if (mapped) {
		/*
		 * Put back (or never taken): whatever the entry says, the page
		 * is there.  A killed daemon had copied it in but not yet
		 * updated the entry: what the entry named is released now,
		 * after the index stops naming it (a kill in between leaks).
		 */
		*entry = pe_make(e, PAGE_RESIDENT, false, 0, 0, 0);
		page_index_set(c->index, vpn, *entry);
		client_resident_add(c, 1);
		if (stored) {
			/*
			 * Counted in the group and the daemon if this daemon
			 * made the snapshot, or another member recovered
			 * before counted it: the last reference takes it away.
			 */
			bool counted = ctx->shared || family_recovered_has(c->family, pe_payload(e));

			if (family_release(c->family, pe_payload(e)) && counted)
				family_count_bytes(c->family, c->group, -(int64_t)pe_len(e));
		}
		if (on_disk)
			(void)swap_slot_free(swap, pe_payload(e));
		return 0;
	}
	switch (pe_state(e)) {
	case PAGE_RESIDENT:
		e = 0; /* gone: dropped by the kernel (MADV_FREE) or unmapped */
		break;
	case PAGE_SAME_FILLED:
		client_stat(c, UZ_STAT_stored_pages, 1);
		client_stat(c, UZ_STAT_same_filled_pages, 1);
		ctx->recovered++;
		break;
	case PAGE_STORED:
	case PAGE_WRITEBACK:
		if (!stored) {
			e = pe_make(e, PAGE_LOST, false, 0, 0, 0);
			ctx->lost++;
			break;
		}
		/* In the family's arena: stored again (a write in flight is simply forgotten). */
		e = pe_make(e, PAGE_STORED, true, pe_algo(e), pe_len(e), pe_payload(e));
		entry_lru_push(c, vpn, &e);
		client_stat(c, UZ_STAT_stored_pages, 1);
		/*
		 * A shared object is counted by its group and the daemon once:
		 * a fork child's snapshot adds nothing to them, its parent
		 * counted it; after a restart the first of its referrers to
		 * be recovered counts it (the last release takes it away).
		 */
		if (ctx->shared) {
			client_pool_bytes(c, pe_len(e), false);
		} else {
			int refs = pool_refcount(c->family->pool, pe_payload(e));
			bool first = refs <= 1 || family_recovered_first(c->family, pe_payload(e));

			client_pool_bytes(c, pe_len(e), first);
		}
		ctx->recovered++;
		break;
	case PAGE_ON_DISK:
		if (!on_disk) {
			/* No swap file now, or the slot is not allocated in it: lost. */
			e = pe_make(e, PAGE_LOST, false, 0, 0, 0);
			ctx->lost++;
			break;
		}
		/* Still in the swap file (its record is checked when read); no read in flight. */
		e = pe_make(e, PAGE_ON_DISK, false, pe_algo(e), pe_len(e), pe_payload(e));
		client_stat(c, UZ_STAT_on_disk_pages, 1);
		client_stat(c, UZ_STAT_swap_bytes_on_disk,
			    (int64_t)swap_slot_disk_bytes(swap, pe_payload(e)));
		ctx->recovered++;
		break;
	default:
		break;
	}
	*entry = e;
	return 0;
}

/*
 * The victims of the batch the previous daemon had out.  The agent always
 * finishes a batch before it re-joins, so its status page in the ring is
 * final: a page it moved is in ring slot i and is stored now (or put back
 * from there when the pool refuses it); a page it did not move is where it
 * was, or gone (a concurrent munmap).
 */
static void recover_in_flight(struct recover_ctx *ctx)
{
	struct fault_thread *t = ctx->thread;
	struct client *c = ctx->client;
	/* A copy: storing pages below may grow the store and move its mapping. */
	const struct uz_store_batch *record = &ctx->record;
	const struct uz_ring_status *status = client_ring_status(c);
	uint32_t record_id, status_batch;
	bool answered;

	memcpy(&ctx->record, store_batch(c->store), sizeof(ctx->record));
	record_id = record->id;
	status_batch = __atomic_load_n(&status->batch, __ATOMIC_ACQUIRE);
	answered = record_id && status_batch == record_id && status->count == record->count &&
		   record->count <= UZ_EVICT_BATCH_MAX;

	c->batch_id = uz_max(record_id, status_batch);
	for (unsigned j = 0; j < ctx->nr_in_flight; j++) {
		uint64_t vpn = ctx->in_flight_vpns[j];
		page_entry_t e = page_index_get(c->index, vpn);
		uint64_t i = pe_payload(e);
		bool moved = answered && i < record->count && record->vpn[i] == vpn &&
			     status->status[i] == 0;

		if (moved && !recover_page_mapped(ctx, vpn)) {
			const uint8_t *bytes = c->ring + (size_t)i * UZ_PAGE_SIZE;

			if (fault_store_page(t, c, vpn, pe_make(e, PAGE_NEVER, false, 0, 0, 0),
					     bytes) == 0) {
				ctx->recovered++;
				continue;
			}
			/* Not storable now: it goes back from the ring, as after EVICT_DONE. */
			c->slots[i] = (struct evict_slot){.vpn = vpn, .state = EVICT_SLOT_INSTALL};
			page_index_set(c->index, vpn, pe_make(e, PAGE_IN_FLIGHT, false, 0, 0, i));
			c->batch_state = BATCH_LANDING;
			c->batch_count = uz_max(c->batch_count, (uint32_t)i + 1);
			c->batch_pending_installs++;
			c->in_flight++;
			continue;
		}
		if (recover_page_mapped(ctx, vpn)) {
			page_index_set(c->index, vpn, pe_make(e, PAGE_RESIDENT, false, 0, 0, 0));
			client_resident_add(c, 1);
		} else {
			/* Neither moved nor here: a munmap or DONTNEED took it. */
			page_index_set(c->index, vpn, 0);
		}
	}
}

/*
 * A client that re-joined with UZ_HELLO_RESUME: its store holds the index
 * the previous daemon left (checked by page_index_recover at the
 * handshake).  Before any new uffd message is read: apply the messages the
 * previous daemon read but did not apply (the journal), take the
 * registered regions from the kernel, check every entry against the page
 * tables, settle the batch in flight, and wake every thread waiting on a
 * fault whose message died with the previous daemon.
 */
static void client_recover(struct fault_thread *t, struct client *c)
{
	struct recover_ctx *ctx = calloc(1, sizeof(*ctx));
	struct uffd_msg *journal = store_journal(c->store);

	if (!ctx) {
		fault_client_kill(t, c, false);
		return;
	}
	ctx->thread = t;
	ctx->client = c;
	for (unsigned i = 0; i < UZ_STORE_JOURNAL_MSGS && !c->dead; i++) {
		struct uffd_msg m = journal[i];

		if (m.event == UFFD_EVENT_PAGEFAULT || m.event == 0)
			continue; /* faults are refaulted after the wake below */
		fault_client_handle_uffd_msg(t, c, &m);
		journal = store_journal(c->store);
	}
	memset(store_journal(c->store), 0, UZ_STORE_JOURNAL_MSGS * sizeof(struct uffd_msg));

	if (client_regions_from_kernel(c) < 0) {
		free(ctx);
		fault_client_kill(t, c, false);
		return;
	}
	page_index_walk(c->index, 0, VPN_MAX, recover_one, ctx);
	recover_in_flight(ctx);
	client_stat(c, UZ_STAT_recovered_clients, 1);
	client_stat(c, UZ_STAT_recovered_pages, (int64_t)ctx->recovered);
	client_stat(c, UZ_STAT_lost_pages, (int64_t)ctx->lost);
	for (unsigned i = 0; i < c->nr_regions; i++)
		uffd_wake(c->uffd, c->regions[i].start, c->regions[i].end - c->regions[i].start);
	c->resume = false;
	free(ctx);
	if (c->batch_state == BATCH_LANDING)
		fault_client_batch_install(t, c);
}

/*
 * A fork child joining with its snapshot: it takes the snapshot's store and
 * index over, and every entry is checked against its page tables as after
 * a restart (recover_one): a page it has (inherited present, copy on
 * write) is RESIDENT and its reference goes; a hole is served from the
 * shared entry.  Its regions come with the REGISTERs that follow.
 */
static void client_adopt_snapshot(struct fault_thread *t, struct client *c)
{
	struct recover_ctx *ctx = calloc(1, sizeof(*ctx));
	struct uz_store_header *h;
	/*
	 * A snapshot this daemon made: its objects are counted already.  One
	 * taken from the store after a restart is counted like a recovery.
	 */
	bool counted = c->claimed != NULL;

	if (c->claimed) {
		c->store = c->claimed->store;
		c->index = c->claimed->index;
		fork_snapshot_adopted(c->claimed);
		c->claimed = NULL;
	}
	if (!ctx || !c->index) {
		free(ctx);
		fault_client_kill(t, c, false);
		return;
	}
	h = store_header(c->store);
	h->owner_pid = (uint32_t)c->pid;
	h->owner_starttime = c->starttime;
	__atomic_store_n(&h->flags, h->flags & ~UZ_STORE_SNAPSHOT, __ATOMIC_RELEASE);
	ctx->thread = t;
	ctx->client = c;
	ctx->shared = counted;
	c->resume = true; /* entry_release counts nothing while the walk sets the gauges */
	page_index_walk(c->index, 0, VPN_MAX, recover_one, ctx);
	c->resume = false;
	client_stat(c, UZ_STAT_fork_shared_pages, (int64_t)ctx->recovered);
	client_stat(c, UZ_STAT_lost_pages, (int64_t)ctx->lost);
	c->from_snapshot = false;
	free(ctx);
}

static void fault_thread_adopt_inbox(struct fault_thread *t)
{
	struct uz_list inbox;
	bool drain;
	uint64_t deadline;
	uint64_t value;

	(void)read(t->event_fd, &value, sizeof(value));
	uz_list_init(&inbox);
	pthread_mutex_lock(&t->lock);
	if (!uz_list_empty(&t->inbox)) {
		inbox.next = t->inbox.next;
		inbox.prev = t->inbox.prev;
		inbox.next->prev = &inbox;
		inbox.prev->next = &inbox;
		uz_list_init(&t->inbox);
	}
	drain = t->drain;
	deadline = t->drain_deadline;
	pthread_mutex_unlock(&t->lock);

	if (drain && !t->draining) {
		t->draining = true;
		t->deadline = deadline;
		for (struct uz_list *i = t->clients.next, *next; i != &t->clients; i = next) {
			struct client *c = uz_container_of(i, struct client, thread_link);

			next = i->next;
			if (request_push(c, CLIENT_REQ_SHUTDOWN, 0, 0,
					 (VPN_MAX + 1) << UZ_PAGE_SHIFT, 0) < 0)
				fault_client_kill(t, c, true);
			else
				fault_client_run_requests(t, c);
		}
	}

	for (struct uz_list *i = t->clients.next, *next; i != &t->clients; i = next) {
		next = i->next;
		client_take_assign(t, uz_container_of(i, struct client, thread_link));
	}

	/*
	 * Test only (tests/ops, the watchdog test): with
	 * UZSWAP_TEST_STALL_FAULT_THREAD=MS set when the daemon starts, the
	 * thread that adopts the first client sleeps MS milliseconds once,
	 * like a thread stuck in a system call: the heartbeat stops.
	 */
	if (t->test_stall_ms && !uz_list_empty(&inbox)) {
		unsigned ms = t->test_stall_ms;

		t->test_stall_ms = 0;
		(void)usleep(ms * 1000U);
	}

	while (!uz_list_empty(&inbox)) {
		struct client *c = uz_container_of(inbox.next, struct client, thread_link);
		struct epoll_event ev_uffd = {.events = EPOLLIN, .data.ptr = &c->source_uffd};
		struct epoll_event ev_sock = {.events = EPOLLIN | EPOLLRDHUP,
					      .data.ptr = &c->source_socket};

		uz_list_del(&c->thread_link);
		uz_list_add_tail(&t->clients, &c->thread_link);
		c->thread = t;
		if (c->hello_flags & UZ_HELLO_FORK_CHILD) {
			c->grace_until = uz_now_usec() + FAULT_FORK_GRACE_MS * 1000ULL;
			if (!t->grace_until || c->grace_until < t->grace_until)
				t->grace_until = c->grace_until;
		}
		(void)fault_compressor(t, c->policy.algo, c->policy.level, true);
		if (c->resume) {
			client_recover(t, c);
			if (c->dead)
				continue;
		}
		if (c->from_snapshot) {
			client_adopt_snapshot(t, c);
			if (c->dead)
				continue;
		}
		c->source_uffd = (struct fault_source){c, FAULT_SOURCE_UFFD};
		c->source_socket = (struct fault_source){c, FAULT_SOURCE_SOCKET};
		if (epoll_ctl(t->epoll_fd, EPOLL_CTL_ADD, c->uffd, &ev_uffd) < 0 ||
		    epoll_ctl(t->epoll_fd, EPOLL_CTL_ADD, c->sock_fd, &ev_sock) < 0) {
			fault_client_kill(t, c, false);
			continue;
		}
		if (t->draining) {
			if (request_push(c, CLIENT_REQ_SHUTDOWN, 0, 0,
					 (VPN_MAX + 1) << UZ_PAGE_SHIFT, 0) < 0)
				fault_client_kill(t, c, true);
			else
				fault_client_run_requests(t, c);
		}
	}
}

/* A fork child's grace period ended: reclaim it, and find the next one to wait for. */
static void fault_thread_grace_end(struct fault_thread *t)
{
	t->grace_until = 0;
	for (struct uz_list *i = t->clients.next, *next; i != &t->clients; i = next) {
		struct client *c = uz_container_of(i, struct client, thread_link);

		next = i->next;
		if (!c->grace_until)
			continue;
		if (uz_now_usec() >= c->grace_until) {
			c->grace_until = 0;
			fault_client_reclaim(t, c);
		} else if (!t->grace_until || c->grace_until < t->grace_until) {
			t->grace_until = c->grace_until;
		}
	}
}

static void fault_thread_reap(struct fault_thread *t)
{
	while (!uz_list_empty(&t->dead))
		client_destroy(t, uz_container_of(t->dead.next, struct client, thread_link));
}

/*
 * Wait for events, spinning first when work just arrived.
 *
 * Waking a thread that sleeps in epoll_wait() costs ≈ 40 µs on the VMs
 * this was measured on — more than serving a fault from the pool.  After a
 * round that served something the next message usually follows soon (the
 * faulting thread runs on, faults again; the agent answers EVICT), so the
 * thread polls with a zero timeout for up to spin_usec before it sleeps.
 * The budget adapts: a spin that found work doubles it (up to
 * spin_max_usec), a spin that ran out halves it (down to
 * FAULT_SPIN_USEC_MIN).  A wake-up that brought no work (the idle tick)
 * does not arm the spin, so an idle daemon uses no CPU.
 */
static int fault_thread_wait(struct fault_thread *t, struct epoll_event *events, int max_events,
			     int timeout)
{
	if (t->spin_armed && timeout != 0 && t->spin_max_usec) {
		uint64_t deadline = uz_now_usec() + t->spin_usec;

		t->spin_armed = false;
		do {
			int n = epoll_wait(t->epoll_fd, events, max_events, 0);

			if (n != 0) {
				t->spin_usec = uz_min(t->spin_usec * 2, t->spin_max_usec);
				return n;
			}
			/* The faulting thread may be waiting for this CPU. */
			sched_yield();
		} while (uz_now_usec() < deadline);
		t->spin_usec = uz_max(t->spin_usec / 2, (unsigned)FAULT_SPIN_USEC_MIN);
	}
	return epoll_wait(t->epoll_fd, events, max_events, timeout);
}

static void *fault_thread_main(void *arg)
{
	struct fault_thread *t = arg;
	struct epoll_event events[64];
	unsigned spins = 0;

	(void)stats_thread_register();
	for (;;) {
		int timeout = FAULT_IDLE_TICK_MS, n;
		bool stop;

		__atomic_fetch_add(&t->heartbeat, 1, __ATOMIC_RELAXED);
		{
			int fd = wb_attach(t->wb);

			if (fd >= 0) {
				struct epoll_event ev = {.events = EPOLLIN,
							 .data.ptr = &t->swap_source};

				(void)epoll_ctl(t->epoll_fd, EPOLL_CTL_ADD, fd, &ev);
			}
			n = wb_timeout(t->wb);
			if (n >= 0 && n < timeout)
				timeout = n;
		}
		if (t->grace_until) {
			uint64_t now = uz_now_usec();
			int left = now >= t->grace_until
				       ? 0
				       : (int)((t->grace_until - now) / 1000 + 1);

			if (left < timeout)
				timeout = left;
		}
		if (t->want_retry)
			timeout = spins < FAULT_SPIN_POLLS ? 0 : 1;
		if (t->draining) {
			uint64_t now = uz_now_usec();
			int left = now >= t->deadline ? 0 : (int)((t->deadline - now) / 1000 + 1);

			if (left < timeout)
				timeout = left;
		}
		n = fault_thread_wait(t, events, UZ_ARRAY_SIZE(events), timeout);
		if (n < 0 && errno != EINTR)
			break;
		for (int i = 0; i < n; i++) {
			struct fault_source *src = events[i].data.ptr;
			struct client *c = src->client;

			if (src->kind == FAULT_SOURCE_EVENTFD) {
				fault_thread_adopt_inbox(t);
				continue;
			}
			if (src->kind == FAULT_SOURCE_SWAP) {
				wb_reap(t->wb);
				continue;
			}
			if (c->dead)
				continue;
			t->spin_armed = true;
			if (src->kind == FAULT_SOURCE_UFFD) {
				if (events[i].events & EPOLLERR)
					fault_client_kill(t, c, false);
				else
					fault_client_handle_uffd(t, c);
			} else {
				client_handle_socket(t, c);
			}
			if (!c->dead)
				fault_client_reclaim(t, c);
		}

		if (t->want_retry) {
			if (n <= 0) {
				spins++;
				sched_yield();
			}
			fault_thread_retry(t);
		} else {
			spins = 0;
		}
		if (t->grace_until && uz_now_usec() >= t->grace_until)
			fault_thread_grace_end(t);
		if (uz_now_usec() >= t->reclaim_tick_usec) {
			/*
			 * Clients with no events still get their sweep: one whose
			 * pages were all shared with a fork relative frees up as
			 * the relative writes, without a fault of its own.
			 */
			t->reclaim_tick_usec = uz_now_usec() + FAULT_RECLAIM_RETRY_MS * 1000ULL;
			fork_snapshots_reap(t);
			for (struct uz_list *i = t->clients.next, *next; i != &t->clients; i = next) {
				struct client *c = uz_container_of(i, struct client, thread_link);

				next = i->next;
				if (!c->dead) {
					fault_client_shared_recount(c);
					fault_client_reclaim(t, c);
				}
			}
		}
		fault_thread_reap(t);
		wb_shrink(t->wb);
		wb_compact_step(t->wb);

		pthread_mutex_lock(&t->lock);
		stop = t->stop;
		pthread_mutex_unlock(&t->lock);
		if (stop)
			break;
		if (t->draining) {
			if (uz_list_empty(&t->clients))
				break;
			if (uz_now_usec() >= t->deadline) {
				while (!uz_list_empty(&t->clients)) {
					struct client *c = uz_container_of(
					    t->clients.next, struct client, thread_link);

					__atomic_fetch_add(&t->daemon->drain_timeouts, 1,
							   __ATOMIC_RELAXED);
					fault_client_kill(t, c, true);
				}
				fault_thread_reap(t);
				break;
			}
		}
	}
	return NULL;
}

int fault_thread_new(struct fault_thread **out, struct daemon *daemon, unsigned index)
{
	struct fault_thread *t;
	struct epoll_event ev;
	size_t evict_size =
	    offsetof(struct uz_msg_evict, addrs) + UZ_EVICT_BATCH_MAX * sizeof(uint64_t);
	int r;

	t = calloc(1, sizeof(*t));
	if (!t)
		return -ENOMEM;
	t->daemon = daemon;
	t->index = index;
	t->epoll_fd = -1;
	{
		const char *stall = getenv("UZSWAP_TEST_STALL_FAULT_THREAD");

		if (stall)
			t->test_stall_ms = (unsigned)strtoul(stall, NULL, 10) % 600001U;
	}
	t->event_fd = -1;
	pthread_mutex_init(&t->lock, NULL);
	uz_list_init(&t->inbox);
	uz_list_init(&t->clients);
	uz_list_init(&t->dead);

	r = compressor_new(&t->compressor, daemon->policy.algo, daemon->policy.level);
	if (r < 0)
		goto fail;
	r = -ENOMEM;
	t->page = aligned_alloc(UZ_PAGE_SIZE, UZ_PAGE_SIZE);
	t->zero_page = aligned_alloc(UZ_PAGE_SIZE, UZ_PAGE_SIZE);
	t->compressed = aligned_alloc(UZ_PAGE_SIZE, UZ_PAGE_SIZE);
	t->restore_buf = aligned_alloc(UZ_PAGE_SIZE, FAULT_RESTORE_RUN * UZ_PAGE_SIZE);
	t->around_buf = aligned_alloc(UZ_PAGE_SIZE, (1 + UZ_FAULT_AROUND_MAX) * UZ_PAGE_SIZE);
	t->evict_msg = calloc(1, evict_size);
	t->retries = calloc(FAULT_RETRY_MAX, sizeof(*t->retries));
	if (!t->page || !t->zero_page || !t->compressed || !t->restore_buf || !t->around_buf ||
	    !t->evict_msg || !t->retries)
		goto fail;
	memset(t->zero_page, 0, UZ_PAGE_SIZE);
	t->spin_max_usec = daemon->fault_spin_usec;
	t->spin_usec = uz_max(t->spin_max_usec / 2, (unsigned)FAULT_SPIN_USEC_MIN);
	r = wb_new(&t->wb, t, daemon);
	if (r < 0)
		goto fail;
	t->swap_source = (struct fault_source){NULL, FAULT_SOURCE_SWAP};

	t->epoll_fd = epoll_create1(EPOLL_CLOEXEC);
	t->event_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (t->epoll_fd < 0 || t->event_fd < 0) {
		r = -errno;
		goto fail;
	}
	t->event_source = (struct fault_source){NULL, FAULT_SOURCE_EVENTFD};
	ev = (struct epoll_event){.events = EPOLLIN, .data.ptr = &t->event_source};
	if (epoll_ctl(t->epoll_fd, EPOLL_CTL_ADD, t->event_fd, &ev) < 0) {
		r = -errno;
		goto fail;
	}
	r = -pthread_create(&t->thread, NULL, fault_thread_main, t);
	if (r < 0)
		goto fail;
	t->started = true;
	{
		char name[16];

		snprintf(name, sizeof(name), "uzswapd-fault%u", index);
		pthread_setname_np(t->thread, name);
	}
	*out = t;
	return 0;

fail:
	fault_thread_free(t);
	return r;
}

static void fault_thread_kick(struct fault_thread *t)
{
	uint64_t one = 1;

	(void)write(t->event_fd, &one, sizeof(one));
}

void fault_thread_adopt(struct fault_thread *t, struct client *client)
{
	pthread_mutex_lock(&t->lock);
	uz_list_add_tail(&t->inbox, &client->thread_link);
	pthread_mutex_unlock(&t->lock);
	fault_thread_kick(t);
}

void fault_thread_kick_assign(struct fault_thread *t)
{
	fault_thread_kick(t);
}

uint64_t fault_thread_heartbeat(const struct fault_thread *t)
{
	return __atomic_load_n(&t->heartbeat, __ATOMIC_RELAXED);
}

void fault_thread_drain(struct fault_thread *t, uint64_t deadline_usec)
{
	pthread_mutex_lock(&t->lock);
	t->drain = true;
	t->drain_deadline = deadline_usec;
	pthread_mutex_unlock(&t->lock);
	fault_thread_kick(t);
}

void fault_thread_join(struct fault_thread *t)
{
	if (t->started) {
		pthread_join(t->thread, NULL);
		t->started = false;
	}
}

struct fault_thread *fault_thread_free(struct fault_thread *t)
{
	if (!t)
		return NULL;
	if (t->started) {
		pthread_mutex_lock(&t->lock);
		t->stop = true;
		pthread_mutex_unlock(&t->lock);
		fault_thread_kick(t);
		fault_thread_join(t);
	}
	/* Whatever is left (no drain asked, or clients never adopted) goes now. */
	while (!uz_list_empty(&t->inbox)) {
		struct client *c = uz_container_of(t->inbox.next, struct client, thread_link);

		uz_list_del(&c->thread_link);
		uz_list_add_tail(&t->dead, &c->thread_link);
	}
	while (!uz_list_empty(&t->clients)) {
		struct client *c = uz_container_of(t->clients.next, struct client, thread_link);

		uz_list_del(&c->thread_link);
		uz_list_add_tail(&t->dead, &c->thread_link);
	}
	fault_thread_reap(t);
	t->wb = wb_free(t->wb); /* after the clients: completions only free slots */
	if (t->epoll_fd >= 0)
		close(t->epoll_fd);
	if (t->event_fd >= 0)
		close(t->event_fd);
	compressor_free(t->compressor);
	for (unsigned i = 0; i < t->nr_compressors; i++)
		compressor_free(t->compressors[i].compressor);
	free(t->page);
	free(t->zero_page);
	free(t->compressed);
	free(t->restore_buf);
	free(t->around_buf);
	free(t->evict_msg);
	free(t->retries);
	pthread_mutex_destroy(&t->lock);
	free(t);
	return NULL;
}

/* ---------------------------------------------------------------------------
 * For the writeback tier (writeback.c), on the fault thread
 */

void fault_client_stat(struct client *c, enum uz_stat which, int64_t delta)
{
	client_stat(c, which, delta);
}

void fault_client_pool_bytes(struct client *c, int64_t delta, bool whole)
{
	client_pool_bytes(c, delta, whole);
}

void fault_client_resident_add(struct client *c, int64_t delta)
{
	client_resident_add(c, delta);
}

static struct client *client_in_list(struct uz_list *head, uint64_t key)
{
	for (struct uz_list *i = head->next; i != head; i = i->next) {
		struct client *c = uz_container_of(i, struct client, thread_link);

		if (c->key == key)
			return c;
	}
	return NULL;
}

struct client *fault_thread_client(struct fault_thread *t, uint64_t key, bool dead_ok)
{
	struct client *c = client_in_list(&t->clients, key);

	if (!c && dead_ok)
		c = client_in_list(&t->dead, key);
	return c;
}

struct client *fault_thread_client_after(struct fault_thread *t, uint64_t key)
{
	struct client *best = NULL;

	for (struct uz_list *i = t->clients.next; i != &t->clients; i = i->next) {
		struct client *c = uz_container_of(i, struct client, thread_link);

		if (c->key >= key && (!best || c->key < best->key))
			best = c;
	}
	return best;
}

void fault_client_resume(struct fault_thread *t, struct client *c)
{
	if (!c->dead)
		fault_client_run_requests(t, c);
}

void fault_thread_want_retry(struct fault_thread *t)
{
	t->want_retry = true;
}

struct daemon *fault_thread_daemon(struct fault_thread *t)
{
	return t->daemon;
}

struct wb *fault_thread_wb(struct fault_thread *t)
{
	return t->wb;
}
