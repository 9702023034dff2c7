/* SPDX-License-Identifier: MIT */
/*
 * The agent thread: the daemon's hands inside the client process.
 *
 * It is the only reader of the socket.  Replies go to the threads waiting
 * for them (conn.c).  EVICT is carried out here because only a thread of
 * the target can move its pages (the kernel refuses cross-mm UFFDIO_MOVE
 * and remote MADV_DONTNEED):
 *
 *   for each run of consecutive victims
 *       UFFDIO_MOVE victim -> graveyard slot i     (the address becomes a
 *                                                   hole atomically)
 *   copy every moved slot to ring slot i
 *   madvise(graveyard batch span, MADV_DONTNEED)    (one REMOVE event)
 *   EVICT_DONE {status[i]: 0 moved, or -errno}
 *
 * A partial move reports the bytes moved in uffdio_move.move with EAGAIN;
 * the next attempt starts at the first page not moved and learns its real
 * errno.  EAGAIN without progress (the mm is changing: a REMAP or fork
 * event is pending) is retried a bounded number of times.  The count is
 * not trusted: Linux 6.18 can move one page more than it reports when
 * page table entries change under the move (uzswapd's PAGEMAP_SCAN
 * re-arming write protection does that; tests/kernel/uffd-move-count),
 * so after any run that did not succeed outright the agent asks
 * /proc/self/pagemap where each page is: in its graveyard slot means
 * moved, whatever the ioctl said (docs/RELIABILITY.md).  Every slot of
 * the batch is dropped afterwards, so no slot carries a page into the
 * next batch.
 *
 * EBUSY means the page is not exclusive: after a fork every anonymous page
 * loses PageAnonExclusive until it is written, even once the child has
 * exited, so a page only read since a fork could never be evicted.  When
 * the page is mapped by this process alone (pagemap bit 56: the fork child
 * has exited or got its own copy), the agent breaks COW with
 * madvise(MADV_POPULATE_WRITE) on that one page -- a write fault that
 * changes no byte (the kernel reuses a page nobody else maps, no copy),
 * cannot race with an application write and, unlike a store, fails with an
 * errno instead of SIGSEGV if the page was made read-only meanwhile -- and
 * retries the move once.  A page still shared with a live fork child or
 * parent is left alone and reported EBUSY: breaking COW there would copy
 * it, and both processes would then compress the same bytes.
 *
 * The agent never takes a library lock while working on an EVICT, never
 * allocates, and runs with every signal blocked.  It takes range_lock only
 * to leave, after failing every waiter, so no app thread that holds
 * range_lock can be waiting for it.
 *
 * Leaving: SHUTDOWN (every page is back) -> unregister all, SHUTDOWN_ACK,
 * close.  EOF or a socket error (the daemon died) -> keep the uffd (evicted
 * pages stay holes that wait for the next daemon), and reconnect: a new
 * daemon on the same socket takes our state back from the store and ring
 * we kept (UZ_HELLO_RESUME).  If none comes back in time, or it refuses,
 * fail closed (failclosed.c): put back what we can, poison the rest, drop
 * the uffd reference (the kernel then unregisters every range and wakes
 * every thread blocked on a fault or an event, including threads that hold
 * range_lock), then take range_lock and clean up.
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <sched.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "client.h"
#include "store-layout.h"
#include "uffd-compat.h"
#include "util.h"

#define UZ_AGENT_STACK_SIZE (256 * 1024)

#define UZ_MOVE_EAGAIN_RETRIES 1000

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif

struct agent_batch {
	const uint64_t *addrs;
	uint32_t count;
	int32_t status[UZ_EVICT_BATCH_MAX];
};

static int agent_pagemap = -1; /* our own /proc/self/pagemap, opened by the agent */

static inline char *graveyard_slot(uint32_t i)
{
	return (char *)uz_client.graveyard + (size_t)i * UZ_PAGE_SIZE;
}

/*
 * Test only: UZSWAP_TEST_MOVE_SHORT=N makes every Nth UFFDIO_MOVE of two
 * or more pages report one page fewer than it moved (EAGAIN), as the 6.18
 * kernel was seen doing (docs/RELIABILITY.md).  The reconciliation below
 * must then find the page in its graveyard slot.
 */
static unsigned int move_short_every;
static unsigned int move_short_count;
/*
 * Test only: UZSWAP_TEST_NO_RECONCILE=1 trusts the ioctl's count as the
 * agent did before reconciliation, so the regression test can show that
 * the injected short count really loses pages without it.
 */
static bool reconcile_off;
/*
 * Test only: UZSWAP_TEST_AGENT_DELAY_US=N makes the agent wait N µs after
 * an EVICT arrives before it moves anything, as a preempted agent on a
 * busy host would: the program and the daemon go on meanwhile (REMOVE,
 * UNMAP, REMAP, faults on the victims' addresses).
 */
static unsigned int agent_delay_us;

static int agent_ioctl_move(struct uffdio_move *move)
{
	int r = ioctl(uz_client.uffd, UFFDIO_MOVE, move);

	if (uz_unlikely(move_short_every) && r == 0 && move->len >= 2 * UZ_PAGE_SIZE &&
	    ++move_short_count % move_short_every == 0) {
		move->move = (int64_t)(move->len - UZ_PAGE_SIZE);
		errno = EAGAIN;
		return -1;
	}
	return r;
}

/* pagemap flags of one of our own pages (bit 63 present, bit 62 swapped). */
#define PM_PRESENT (1ULL << 63)
#define PM_SWAPPED (1ULL << 62)
#define PM_EXCLUSIVE (1ULL << 56) /* mapped by this process only */

static bool page_mapped(uint64_t addr, bool *known)
{
	uint64_t word = 0;

	if (agent_pagemap < 0 || pread(agent_pagemap, &word, sizeof(word),
				       (off_t)(addr / UZ_PAGE_SIZE * 8)) != sizeof(word)) {
		*known = false;
		return false;
	}
	return word & (PM_PRESENT | PM_SWAPPED);
}

/* Is our page at addr mapped by this process alone (pagemap bit 56)?  Unknown: no. */
static bool page_exclusive(uint64_t addr)
{
	uint64_t word = 0;

	if (agent_pagemap < 0 ||
	    pread(agent_pagemap, &word, sizeof(word), (off_t)(addr / UZ_PAGE_SIZE * 8)) !=
		sizeof(word))
		return false;
	return (word & PM_PRESENT) && (word & PM_EXCLUSIVE);
}

/*
 * After a run whose moves did not all succeed cleanly, ask the page
 * tables where each page is rather than trusting the counts: UFFDIO_MOVE
 * on 6.18 can move a page it does not report (EAGAIN with `move` one page
 * short), and the page is then in its graveyard slot while the resumed
 * move of it fails with EEXIST.  Reporting that page "not moved" would
 * skip its copy to the ring and drop the graveyard slot holding its only
 * copy.  So: a page in its slot was moved, whatever the ioctl said; a
 * page still at its address was not; a page in neither place is gone
 * (never populated, or dropped by a concurrent DONTNEED or munmap).
 */
static void agent_reconcile_run(struct agent_batch *batch, uint32_t first, uint32_t n)
{
	for (uint32_t i = first; i < first + n; i++) {
		bool known = true, in_slot, at_source;

		in_slot = page_mapped((uintptr_t)graveyard_slot(i), &known);
		at_source = page_mapped(batch->addrs[i], &known);
		if (!known)
			continue; /* no pagemap: keep what the ioctl said */
		if (in_slot)
			batch->status[i] = 0;
		else if (batch->status[i] == 0)
			batch->status[i] = at_source ? -EAGAIN : -ENOENT;
	}
}

/* Move victims [first, first + n) whose addresses are consecutive. */
static void agent_move_run(struct agent_batch *batch, uint32_t first, uint32_t n)
{
	uint32_t done = 0;
	unsigned int retries = 0;
	bool unshared = false; /* COW broken once for the page at `done` */
	bool clean = true;     /* every ioctl of the run succeeded outright */

	while (done < n) {
		uint32_t i = first + done;
		struct uffdio_move move = {
		    .dst = (uintptr_t)graveyard_slot(i),
		    .src = batch->addrs[i],
		    .len = (uint64_t)(n - done) * UZ_PAGE_SIZE,
		    .mode = UFFDIO_MOVE_MODE_DONTWAKE,
		};
		int error;

		if (agent_ioctl_move(&move) == 0) {
			for (; done < n; done++)
				batch->status[first + done] = 0;
			break;
		}
		clean = false;
		error = errno;
		if (move.move > 0) {
			uint32_t moved = move.move / UZ_PAGE_SIZE;

			for (uint32_t j = 0; j < moved && done < n; j++, done++)
				batch->status[first + done] = 0;
			retries = 0;
			unshared = false;
			continue;
		}
		if (error == EAGAIN && retries++ < UZ_MOVE_EAGAIN_RETRIES) {
			sched_yield();
			continue;
		}
		if (error == EBUSY && !unshared && page_exclusive(batch->addrs[i]) &&
		    madvise((void *)(uintptr_t)batch->addrs[i], UZ_PAGE_SIZE,
			    MADV_POPULATE_WRITE) == 0) {
			unshared = true;
			continue;
		}
		batch->status[i] = -error;
		done++;
		retries = 0;
		unshared = false;
	}
	if (!clean && !reconcile_off)
		agent_reconcile_run(batch, first, n);
}

/*
 * Drop every slot of the batch, not only those counted as moved: a slot
 * must never keep a page into the next batch (its move would fail with
 * EEXIST), and by now every page that is in a slot has been copied to the
 * ring.  The graveyard is unregistered around the MADV_DONTNEED so that
 * the drop raises no REMOVE event: the agent never waits for the daemon
 * (one that died mid-batch could not read the event, and the agent is the
 * one that must find the next daemon), and the daemon's fills are not held
 * off with EAGAIN while an event is pending.
 */
static void agent_graveyard_drop(uint32_t count)
{
	struct uffdio_range range = {
	    .start = (uintptr_t)uz_client.graveyard,
	    .len = (uint64_t)UZ_EVICT_BATCH_MAX * UZ_PAGE_SIZE,
	};
	struct uffdio_register reg = {.range = range, .mode = UFFDIO_REGISTER_MODE_MISSING};

	if (ioctl(uz_client.uffd, UFFDIO_UNREGISTER, &range) < 0) {
		/* Still registered: drop it the old way (one REMOVE event, read by the daemon). */
		madvise(uz_client.graveyard, (size_t)count * UZ_PAGE_SIZE, MADV_DONTNEED);
		return;
	}
	madvise(uz_client.graveyard, (size_t)count * UZ_PAGE_SIZE, MADV_DONTNEED);
	(void)ioctl(uz_client.uffd, UFFDIO_REGISTER, &reg); /* failing: the next MOVE says EINVAL */
}

static bool victim_valid(uint64_t addr)
{
	uint64_t grave = (uintptr_t)uz_client.graveyard;
	uint64_t ring = (uintptr_t)uz_client.ring;

	if (!uz_page_aligned(addr) || addr == 0)
		return false;
	if (addr >= grave && addr < grave + UZ_EVICT_BATCH_MAX * UZ_PAGE_SIZE)
		return false;
	if (addr >= ring && addr < ring + uz_client.ring_size)
		return false;
	return true;
}

static void agent_evict(const struct uz_msg_evict *evict, size_t size)
{
	struct {
		struct uz_msg_evict_done done;
		int32_t status[UZ_EVICT_BATCH_MAX];
	} answer;
	struct agent_batch batch;
	uint32_t count = evict->count, i;

	if (count == 0 || count > uz_client.batch_max ||
	    size != offsetof(struct uz_msg_evict, addrs) + (size_t)count * sizeof(uint64_t) ||
	    atomic_load(&uz_fork_in_progress)) {
		/*
		 * Malformed, or a fork is under way (no page may leave before
		 * the child has its copy): nothing moves, but answer so the
		 * daemon can close the batch.  The ring's status page is left
		 * as it was: nothing of this batch is in the ring.
		 */
		int status = atomic_load(&uz_fork_in_progress) ? -EAGAIN : -EINVAL;

		if (count == 0 || count > UZ_EVICT_BATCH_MAX)
			return;
		answer.done.batch = evict->batch;
		answer.done.count = count;
		for (i = 0; i < count; i++)
			answer.done.status[i] = status;
		uz_conn_send(&answer,
			     offsetof(struct uz_msg_evict_done, status) + count * sizeof(int32_t),
			     UZ_MSG_EVICT_DONE);
		return;
	}

	if (uz_unlikely(agent_delay_us))
		usleep(agent_delay_us);
	batch.addrs = evict->addrs;
	batch.count = count;
	i = 0;
	while (i < count) {
		uint32_t run = 1;

		if (!victim_valid(batch.addrs[i])) {
			batch.status[i++] = -EINVAL;
			continue;
		}
		while (i + run < count && victim_valid(batch.addrs[i + run]) &&
		       batch.addrs[i + run] == batch.addrs[i] + (uint64_t)run * UZ_PAGE_SIZE)
			run++;
		agent_move_run(&batch, i, run);
		i += run;
	}

	for (i = 0; i < count; i++) {
		if (batch.status[i] != 0)
			continue;
		memcpy((char *)uz_client.ring + (size_t)i * UZ_PAGE_SIZE, graveyard_slot(i),
		       UZ_PAGE_SIZE);
	}
	/*
	 * The answer goes to the ring's status page first: a daemon started
	 * after a crash learns from it which pages of the batch are in the
	 * ring (the batch number last, once the statuses are there).
	 */
	{
		struct uz_ring_status *ring_status =
		    (struct uz_ring_status *)((char *)uz_client.ring +
					      (size_t)UZ_EVICT_BATCH_MAX * UZ_PAGE_SIZE);

		ring_status->count = count;
		memcpy(ring_status->status, batch.status, count * sizeof(int32_t));
		__atomic_store_n(&ring_status->batch, evict->batch, __ATOMIC_RELEASE);
	}
	agent_graveyard_drop(count);

	answer.done.batch = evict->batch;
	answer.done.count = count;
	memcpy(answer.done.status, batch.status, count * sizeof(int32_t));
	uz_conn_send(&answer, offsetof(struct uz_msg_evict_done, status) + count * sizeof(int32_t),
		     UZ_MSG_EVICT_DONE);
}

/* SHUTDOWN: every page is back; unregister everything, acknowledge, leave. */
static void agent_leave(void)
{
	uz_conn_close_begin();
	uz_ranges_lock();
	uz_client_leave(true);
	uz_ranges_unlock();
}

static uint64_t now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/*
 * The daemon is gone (its socket closed without SHUTDOWN: killed, crashed,
 * OOM-killed, or handing over to its successor).  Keep the uffd -- every
 * evicted page stays a hole that faults to whoever holds the uffd next, so
 * application threads touching one simply wait -- and look for a new
 * daemon on the same socket, resuming with our store and ring.  Gives up
 * after UZSWAP_RECONNECT_TIMEOUT seconds (0: never) or when the new daemon
 * refuses our state, and then fails closed.  Returns true when re-joined.
 */
static bool agent_reconnect(void)
{
	unsigned timeout_s = uz_client.reconnect_timeout_s;
	uint64_t start = now_ms(), backoff_ms = 5;
	const char *why = NULL;
	int r;

	uz_conn_suspend();
	uz_notice("libuzswap: lost uzswapd at %s; waiting for it to come back (%s%u s), "
		  "evicted pages wait with it",
		  uz_client.socket_path, timeout_s ? "up to " : "no limit, ", timeout_s);
	for (;;) {
		r = uz_client_rejoin();
		if (r == 0) {
			uz_notice("libuzswap: re-joined uzswapd at %s after %llu ms",
				  uz_client.socket_path, (unsigned long long)(now_ms() - start));
			return true;
		}
		/*
		 * Not there yet, or (-EBUSY) still letting go of our previous
		 * connection's state: try again.  Anything else is a refusal.
		 */
		if (r != -ECONNREFUSED && r != -ENOENT && r != -ETIMEDOUT && r != -EAGAIN &&
		    r != -EINTR && r != -EBUSY) {
			why = "the new uzswapd refused to take our pages back";
			break;
		}
		if (timeout_s && now_ms() - start >= (uint64_t)timeout_s * 1000) {
			why = "no uzswapd came back in time";
			break;
		}
		usleep((useconds_t)(backoff_ms * 1000));
		backoff_ms = uz_min(backoff_ms * 2, (uint64_t)250);
	}
	uz_fail_closed(why);
	uz_conn_close_begin(); /* CLOSING: nobody waits for a daemon any more (fork) */
	uz_ranges_lock();
	uz_client_leave(false);
	uz_ranges_unlock();
	return false;
}

static bool header_valid(const struct uz_msg_header *header, size_t n)
{
	return n >= sizeof(*header) && header->magic == UZ_PROTO_MAGIC &&
	       header->version == UZ_PROTO_VERSION && header->size == n;
}

static void *agent_main(void *arg)
{
	union {
		struct uz_msg_header header;
		char bytes[UZ_MSG_SIZE_MAX];
	} buf;
	union {
		char buf[CMSG_SPACE(4 * sizeof(int))];
		struct cmsghdr align;
	} control;

	{
		sigset_t rescue;

		sigemptyset(&rescue);
		sigaddset(&rescue, uz_rescue_signal());
		pthread_sigmask(SIG_BLOCK, &rescue, NULL);
		uz_rescue_close(); /* from here on the agent re-joins, not the main thread */
	}
	uz_client.agent_thread = pthread_self();
	/* The scan leaves the mapping holding this address (our stack) alone. */
	atomic_store(&uz_client.agent_stack_hint, (uintptr_t)&buf);
	atomic_store(&uz_client.agent_running, true);
	agent_pagemap = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
	for (;;) {
		struct iovec iov = {.iov_base = &buf, .iov_len = sizeof(buf)};
		struct msghdr msg = {
		    .msg_iov = &iov,
		    .msg_iovlen = 1,
		    .msg_control = control.buf,
		    .msg_controllen = sizeof(control.buf),
		};
		struct cmsghdr *cmsg;
		ssize_t n;
		int fd;

		n = recvmsg(uz_client.sock, &msg, MSG_CMSG_CLOEXEC);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0) {
			if (agent_reconnect())
				continue;
			goto out;
		}
		/*
		 * After HELLO_REPLY only a REPLY may carry a descriptor (the fork
		 * snapshot of FORK_PREPARE), one at most; anything else is closed.
		 */
		fd = -1;
		for (cmsg = CMSG_FIRSTHDR(&msg); cmsg; cmsg = CMSG_NXTHDR(&msg, cmsg)) {
			if (cmsg->cmsg_level == SOL_SOCKET && cmsg->cmsg_type == SCM_RIGHTS)
				for (size_t i = 0; i < (cmsg->cmsg_len - CMSG_LEN(0)) / sizeof(int);
				     i++) {
					int received;

					memcpy(&received, CMSG_DATA(cmsg) + i * sizeof(int),
					       sizeof(int));
					if (fd < 0)
						fd = received;
					else
						close(received);
				}
		}
		if ((msg.msg_flags & MSG_TRUNC) || !header_valid(&buf.header, n) ||
		    (fd >= 0 && buf.header.type != UZ_MSG_REPLY)) {
			if (fd >= 0)
				close(fd);
			continue;
		}

		switch (buf.header.type) {
		case UZ_MSG_REPLY:
		case UZ_MSG_STATS_REPLY:
		case UZ_MSG_REGISTER_BATCH_REPLY:
			uz_conn_deliver(&buf.header, &buf, n, fd);
			break;
		case UZ_MSG_EVICT:
			if (n >= (ssize_t)offsetof(struct uz_msg_evict, addrs))
				agent_evict((const struct uz_msg_evict *)&buf, n);
			break;
		case UZ_MSG_SHUTDOWN:
			agent_leave();
			goto out;
		default:
			break;
		}
	}
out:
	if (agent_pagemap >= 0)
		close(agent_pagemap);
	agent_pagemap = -1;
	atomic_store(&uz_client.agent_running, false);
	return NULL;
}

/* Start the agent with every signal blocked.  Caller: join. */
int uz_agent_start(bool fork_child)
{
	sigset_t all, old;
	pthread_attr_t attr;
	pthread_t thread;
	int r;

	{
		const char *every = getenv("UZSWAP_TEST_MOVE_SHORT");

		const char *off = getenv("UZSWAP_TEST_NO_RECONCILE");

		const char *delay = getenv("UZSWAP_TEST_AGENT_DELAY_US");

		move_short_every = every ? (unsigned int)strtoul(every, NULL, 10) : 0;
		agent_delay_us = delay ? (unsigned int)strtoul(delay, NULL, 10) : 0;
		reconcile_off = off && strcmp(off, "1") == 0;
	}
	pthread_attr_init(&attr);
	pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
	if (fork_child) {
		/*
		 * A fork child that has just registered its holes: glibc would
		 * take a cached stack (the parent's threads' stacks, managed
		 * memory, cold, maybe holes) and read its descriptor.  A stack
		 * of our own memory, never evicted, is used instead: the less
		 * this pthread_create touches, the less it waits on the daemon
		 * before the agent runs (fork.c).  The child has no other
		 * thread that could still be on it.
		 */
		static void *child_stack;

		uz_attr_own_stack(&attr, &child_stack, UZ_AGENT_STACK_SIZE);
	} else {
		pthread_attr_setstacksize(&attr, UZ_AGENT_STACK_SIZE);
	}
	sigfillset(&all);
	/* The fork child's rescue tick must reach a fault inside pthread_create (rescue.c). */
	if (uz_rescue_armed())
		sigdelset(&all, uz_rescue_signal());
	pthread_sigmask(SIG_SETMASK, &all, &old);
	r = -pthread_create(&thread, &attr, agent_main, NULL);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	pthread_attr_destroy(&attr);
	/*
	 * Wait until the agent runs and has said where its stack is: a scan
	 * that registered the agent's own stack could have it evict a page it
	 * then faults on, waiting for itself.
	 */
	for (int i = 0; r == 0 && i < 100000 && !atomic_load(&uz_client.agent_running); i++)
		sched_yield();
	return r;
}
