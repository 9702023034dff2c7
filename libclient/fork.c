/* SPDX-License-Identifier: MIT */
/*
 * fork(2) without UFFD_FEATURE_EVENT_FORK (docs/PROTOCOL.md section 4).
 *
 * The child of a process with registered ranges inherits them unregistered
 * (we never ask for EVENT_FORK, which needs CAP_SYS_PTRACE), so every page
 * must be present when the kernel copies the address space:
 *
 *   prepare  take range_lock (no registration can settle, no join start),
 *            FORK_PREPARE and wait: the daemon lands its batch, gives every
 *            page back and pauses eviction.  Then take request_lock so the
 *            child does not inherit it held by a thread it does not have.
 *   parent   FORK_DONE, unlock.
 *   child    reset every lock and the inherited connection (the socket, the
 *            uffd and the ring are the parent's), forget the table (its
 *            entries describe the parent's registrations, and PENDING ones
 *            belong to threads the child does not have), and start the
 *            child's own watcher: if the parent was managed it joins at
 *            once with UZ_HELLO_FORK_CHILD and its first scan registers
 *            what the child really has mapped, UZ_REGISTER_POPULATED; else
 *            the child joins lazily like any process.  The graveyard
 *            mapping is inherited and reused.  fork() itself returns in the
 *            child without waiting for the daemon.
 *
 * vfork and posix_spawn run no atfork handlers and need none: the child
 * shares the parent's memory until it execs, and exec closes the uffd
 * (O_CLOEXEC) and the socket (SOCK_CLOEXEC); the new image loads the
 * library afresh if LD_PRELOAD says so.
 */
#include <errno.h>
#include <sys/mman.h>
#include <unistd.h>

#include "client.h"
#include "util.h"

static bool fork_was_managed; /* prepare -> parent/child, under range_lock */
atomic_bool uz_fork_in_progress;

static void fork_prepare(void)
{
	uz_ranges_lock();
	/* From here until the fork is over, the agent moves no page out (agent.c). */
	atomic_store(&uz_fork_in_progress, true);
	for (;;) {
		struct uz_msg_header request = {0};
		struct uz_msg_reply reply;
		int r;

		/*
		 * The daemon died and the agent is looking for the next one:
		 * the child must not inherit holes, and only a daemon can fill
		 * them.  Wait for the re-join (or for the agent to fail closed,
		 * which puts back or poisons every evicted page).
		 */
		if (atomic_load(&uz_client.state) == UZ_CLIENT_RECONNECTING && !uz_is_agent())
			(void)uz_conn_wait_managed();
		fork_was_managed = uz_client_managed();
		if (!fork_was_managed || uz_is_agent())
			break;
		/*
		 * Whatever the answer, fork goes on.  If the daemon could not
		 * give every page back (an error answer; it has paused
		 * eviction on receipt all the same), fault them in ourselves
		 * so the child does not inherit holes.  -ENOTCONN: the daemon
		 * went away before answering; when it is leaving (SHUTDOWN)
		 * the pages are back, when it died the next one is asked.
		 */
		r = uz_conn_request(&request, sizeof(request), UZ_MSG_FORK_PREPARE, &reply,
				    sizeof(reply), UZ_MSG_REPLY);
		if (r == -ENOTCONN)
			continue;
		if (r < 0 || reply.status < 0)
			uz_ranges_populate_locked();
		break;
	}
	uz_conn_lock();
}

static void fork_parent(void)
{
	atomic_store(&uz_fork_in_progress, false);
	uz_conn_unlock();
	if (fork_was_managed) {
		struct uz_msg_header done = {0};

		uz_conn_send(&done, sizeof(done), UZ_MSG_FORK_DONE);
	}
	uz_ranges_unlock();
}

static void fork_child(void)
{
	bool was_managed = fork_was_managed;

	atomic_store(&uz_fork_in_progress, false);
	uz_conn_reset();
	uz_ranges_reset_lock();
	uz_own_reset_lock();
	uz_watcher_reset_lock();

	atomic_store(&uz_client.agent_running, false);
	atomic_store(&uz_client.agent_stack_hint, 0);
	atomic_store(&uz_client.watcher_stack_hint, 0);
	atomic_store(&uz_client.state, UZ_CLIENT_OFF);
	if (uz_client.sock >= 0)
		close(uz_client.sock);
	uz_client.sock = -1;
	if (uz_client.uffd >= 0)
		close(uz_client.uffd); /* our copy of the parent's: the parent keeps its own */
	uz_client.uffd = -1;
	if (uz_client.ring)
		uz_raw_munmap(uz_client.ring, uz_client.ring_size);
	uz_client.ring = NULL;
	/* The parent's ring, store and arena: the child gets its own when it joins. */
	if (uz_client.ring_fd >= 0)
		close(uz_client.ring_fd);
	if (uz_client.store_fd >= 0)
		close(uz_client.store_fd);
	if (uz_client.arena_fd >= 0)
		close(uz_client.arena_fd);
	uz_client.ring_fd = uz_client.store_fd = uz_client.arena_fd = -1;

	uz_ranges_clear_locked();
	uz_client.joined_once = false;
	if (was_managed)
		uz_client.join_tried = false; /* the child joins on its own */
	if (!uz_client.disabled && !uz_client.join_tried)
		uz_watcher_start(was_managed, was_managed);
}

int uz_fork_install(void)
{
	return -pthread_atfork(fork_prepare, fork_parent, fork_child);
}
