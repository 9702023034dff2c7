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
 * This file is the thread itself: its loop, the clients it adopts (and
 * the drain it is asked for), a client's end on the thread, the retry
 * list, the compressor cache and the fault_thread_* interface.  The work
 * has files of its own, which share struct fault_thread and a few helpers
 * (fault-internal.h); the writeback tier (writeback.c) and fork snapshots
 * (fork.c) too.
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
 *  - Socket messages, validated to the byte (request.c).  EVICT_DONE
 *    lands the batch (reclaim.c); the others are requests, queued and
 *    answered in order (request.c).
 *
 * Reclaim, per client (reclaim.c), runs after every event of the client,
 * after each round of retries, when its policy changes or its fork grace
 * ends, and on a tick for every client.
 *
 * Giving pages back (UNREGISTER, FORK_PREPARE, SHUTDOWN, HOT hint, a bad
 * client) walks the range (restore.c).
 *
 * A client that re-joins after a daemon restart, and a fork child with
 * its parent's snapshot, are taken over before their uffd is read
 * (recover.c).
 *
 * Rules kept in every file of the thread: no lock is held across a
 * system call; the fault path neither allocates nor logs; a bad client is
 * disconnected (after its pages are given back where possible) and never
 * takes the thread down.
 */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <sched.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "client/client.h"
#include "compress/compress.h"
#include "daemon.h"
#include "fault/fault.h"
#include "fault/fault-internal.h"
#include "fault/fork.h"
#include "fault/reclaim.h"
#include "fault/recover.h"
#include "fault/request.h"
#include "fault/restore.h"
#include "fault/serve.h"
#include "fault/spin.h"
#include "fault/vmevent.h"
#include "fault/writeback.h"
#include "protocol.h"
#include "stats/stats.h"
#include "util.h"

enum {
	FAULT_SOURCE_EVENTFD = 0,
	FAULT_SOURCE_UFFD,
	FAULT_SOURCE_SOCKET,
	FAULT_SOURCE_SWAP, /* the swap_io eventfd of the writeback tier */
};

#define FAULT_RETRY_MAX	     8192 /* faults waiting on EAGAIN, per thread */
#define FAULT_SPIN_POLLS     200  /* zero-timeout polls before sleeping 1 ms */
#define FAULT_IDLE_TICK_MS    500 /* wake at least this often: the heartbeat ticks */
#define FAULT_SPIN_USEC_MIN   4	  /* the spin never shrinks below this once armed */
#define FAULT_FORK_GRACE_MS   1000 /* a fork child's pages stay resident this long */

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
 * The thread
 */

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
			if (fault_request_push(c, CLIENT_REQ_SHUTDOWN, 0, 0,
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
			fault_client_recover(t, c);
			if (c->dead)
				continue;
		}
		if (c->from_snapshot) {
			fault_client_adopt_snapshot(t, c);
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
			if (fault_request_push(c, CLIENT_REQ_SHUTDOWN, 0, 0,
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
 * does not arm the spin, so an idle daemon uses no CPU.  And the thread
 * spins only while the host has a core to spare (spin.h): on a busy host
 * the spin would take CPU from the programs it serves.
 */
static int fault_thread_wait(struct fault_thread *t, struct epoll_event *events, int max_events,
			     int timeout)
{
	uint64_t start, deadline, now;

	if (!t->spin_armed || timeout == 0 || !t->spin_max_usec)
		return epoll_wait(t->epoll_fd, events, max_events, timeout);
	t->spin_armed = false;
	start = uz_now_usec();
	if (!spin_gate_open(start))
		return epoll_wait(t->epoll_fd, events, max_events, timeout);
	deadline = start + t->spin_usec;
	do {
		int n = epoll_wait(t->epoll_fd, events, max_events, 0);

		now = uz_now_usec();
		if (n != 0) {
			spin_gate_note_spin(now - start);
			t->spin_usec = uz_min(t->spin_usec * 2, t->spin_max_usec);
			return n;
		}
		/* The faulting thread may be waiting for this CPU. */
		sched_yield();
	} while (now < deadline);
	spin_gate_note_spin(now - start);
	t->spin_usec = uz_max(t->spin_usec / 2, (unsigned)FAULT_SPIN_USEC_MIN);
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
		if (t->nr_unit_splits && (timeout < 0 || timeout > FAULT_UNIT_SPLIT_IDLE_MS))
			timeout = FAULT_UNIT_SPLIT_IDLE_MS; /* split units once idle that long */
		n = fault_thread_wait(t, events, UZ_ARRAY_SIZE(events), timeout);
		if (n < 0 && errno != EINTR)
			break;
		for (unsigned k = 0; n == 0 && k < FAULT_UNIT_SPLIT_BATCH && t->nr_unit_splits; k++)
			fault_unit_split_one(t);
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
				/* Messages the journal's handling read ahead (request.c). */
				if (!c->dead && fault_client_backlog_pending(c))
					fault_client_handle_socket(t, c);
			} else if (uz_unlikely(c->test_socket_held_until) &&
				   uz_now_usec() < c->test_socket_held_until) {
				continue; /* test only: FORK_DONE read late (UZSWAP_TEST_FORK_DONE_DELAY_MS) */
			} else {
				c->test_socket_held_until = 0;
				fault_client_handle_socket(t, c);
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

		const char *late = getenv("UZSWAP_TEST_FORK_DONE_DELAY_MS");

		if (stall)
			t->test_stall_ms = (unsigned)strtoul(stall, NULL, 10) % 600001U;
		/*
		 * Test only (itest forkshare-dropafter): the loop leaves a
		 * parent's socket unread for this long after its FORK_PREPARE
		 * reply, as a thread slow to get to it would, so the events
		 * its program makes right after fork() are read before its
		 * FORK_DONE (vmevent.c).
		 */
		if (late)
			t->test_fork_done_delay_ms = (unsigned)strtoul(late, NULL, 10) % 10001U;
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
	t->compressed = aligned_alloc(UZ_PAGE_SIZE, PE_UNIT_PAGES * UZ_PAGE_SIZE);
	t->restore_buf = aligned_alloc(UZ_PAGE_SIZE, FAULT_RESTORE_RUN * UZ_PAGE_SIZE);
	t->around_buf = aligned_alloc(UZ_PAGE_SIZE, (1 + UZ_FAULT_AROUND_MAX) * UZ_PAGE_SIZE);
	t->unit_buf = aligned_alloc(UZ_PAGE_SIZE, PE_UNIT_PAGES * UZ_PAGE_SIZE);
	t->unit_out = aligned_alloc(UZ_PAGE_SIZE, PE_UNIT_PAGES * UZ_PAGE_SIZE);
	t->evict_msg = calloc(1, evict_size);
	t->retries = calloc(FAULT_RETRY_MAX, sizeof(*t->retries));
	if (!t->page || !t->zero_page || !t->compressed || !t->restore_buf || !t->around_buf ||
	    !t->unit_buf || !t->unit_out || !t->evict_msg || !t->retries)
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
	free(t->unit_buf);
	free(t->unit_out);
	free(t->evict_msg);
	free(t->retries);
	pthread_mutex_destroy(&t->lock);
	free(t);
	return NULL;
}

/* ---------------------------------------------------------------------------
 * For the writeback tier (writeback.c), on the fault thread
 */

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
