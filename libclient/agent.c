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
 * exited, so a page only read since a fork could never be evicted.  The
 * agent breaks COW with madvise(MADV_POPULATE_WRITE) on that one page -- a
 * write fault that changes no byte, cannot race with an application write
 * and, unlike a store, fails with an errno instead of SIGSEGV if the page
 * was made read-only meanwhile -- and retries the move once.
 *
 * The agent never takes a library lock while working on an EVICT, never
 * allocates, and runs with every signal blocked.  It takes range_lock only
 * to leave, after failing every waiter, so no app thread that holds
 * range_lock can be waiting for it.
 *
 * Leaving: SHUTDOWN (every page is back) -> unregister all, SHUTDOWN_ACK,
 * close.  EOF or a socket error (the daemon died) -> first drop our uffd
 * reference by dup2()ing /dev/null over its number: the daemon's reference
 * died with it, so the kernel unregisters every range and wakes every
 * thread blocked on a fault or an event, including threads that hold
 * range_lock; then take range_lock and clean up.
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
#include <unistd.h>

#include "client.h"
#include "uffd-compat.h"
#include "util.h"

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
		if (error == EBUSY && !unshared &&
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
	    size != offsetof(struct uz_msg_evict, addrs) + (size_t)count * sizeof(uint64_t)) {
		/* Malformed: nothing moves, but answer so the daemon can close the batch. */
		if (count == 0 || count > UZ_EVICT_BATCH_MAX)
			return;
		answer.done.batch = evict->batch;
		answer.done.count = count;
		for (i = 0; i < count; i++)
			answer.done.status[i] = -EINVAL;
		uz_conn_send(&answer,
			     offsetof(struct uz_msg_evict_done, status) + count * sizeof(int32_t),
			     UZ_MSG_EVICT_DONE);
		return;
	}

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
	 * Drop every slot of the batch, not only those counted as moved: a
	 * slot must never keep a page into the next batch (its move would
	 * fail with EEXIST), and by now every page that is in a slot has been
	 * copied to the ring.
	 */
	madvise(uz_client.graveyard, (size_t)count * UZ_PAGE_SIZE, MADV_DONTNEED);

	answer.done.batch = evict->batch;
	answer.done.count = count;
	memcpy(answer.done.status, batch.status, count * sizeof(int32_t));
	uz_conn_send(&answer, offsetof(struct uz_msg_evict_done, status) + count * sizeof(int32_t),
		     UZ_MSG_EVICT_DONE);
}

/* The daemon is gone: drop our uffd reference without freeing its number. */
static void agent_release_uffd(void)
{
	int null = open("/dev/null", O_RDONLY | O_CLOEXEC);

	if (null < 0)
		return; /* leave() closes it */
	dup3(null, uz_client.uffd, O_CLOEXEC);
	close(null);
}

static void agent_leave(bool daemon_alive)
{
	uz_conn_close_begin();
	if (!daemon_alive)
		agent_release_uffd();
	uz_ranges_lock();
	uz_client_leave(daemon_alive);
	uz_ranges_unlock();
	if (!daemon_alive)
		uz_notice("libuzswap: lost uzswapd at %s; running unmanaged",
			  uz_client.socket_path);
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

		n = recvmsg(uz_client.sock, &msg, MSG_CMSG_CLOEXEC);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0) {
			agent_leave(false);
			goto out;
		}
		/* No message to a client carries descriptors after HELLO_REPLY. */
		for (cmsg = CMSG_FIRSTHDR(&msg); cmsg; cmsg = CMSG_NXTHDR(&msg, cmsg)) {
			if (cmsg->cmsg_level == SOL_SOCKET && cmsg->cmsg_type == SCM_RIGHTS)
				for (size_t i = 0; i < (cmsg->cmsg_len - CMSG_LEN(0)) / sizeof(int);
				     i++) {
					int fd;

					memcpy(&fd, CMSG_DATA(cmsg) + i * sizeof(int), sizeof(int));
					close(fd);
				}
		}
		if ((msg.msg_flags & MSG_TRUNC) || !header_valid(&buf.header, n))
			continue;

		switch (buf.header.type) {
		case UZ_MSG_REPLY:
		case UZ_MSG_STATS_REPLY:
		case UZ_MSG_REGISTER_BATCH_REPLY:
			uz_conn_deliver(&buf.header, &buf, n);
			break;
		case UZ_MSG_EVICT:
			if (n >= (ssize_t)offsetof(struct uz_msg_evict, addrs))
				agent_evict((const struct uz_msg_evict *)&buf, n);
			break;
		case UZ_MSG_SHUTDOWN:
			agent_leave(true);
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
int uz_agent_start(void)
{
	sigset_t all, old;
	pthread_attr_t attr;
	pthread_t thread;
	int r;

	{
		const char *every = getenv("UZSWAP_TEST_MOVE_SHORT");

		const char *off = getenv("UZSWAP_TEST_NO_RECONCILE");

		move_short_every = every ? (unsigned int)strtoul(every, NULL, 10) : 0;
		reconcile_off = off && strcmp(off, "1") == 0;
	}
	pthread_attr_init(&attr);
	pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
	pthread_attr_setstacksize(&attr, 256 * 1024);
	sigfillset(&all);
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
