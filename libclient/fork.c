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

static void fork_prepare(void)
{
	uz_ranges_lock();
	fork_was_managed = uz_client_managed();
	if (fork_was_managed && !uz_is_agent()) {
		struct uz_msg_header request = {0};
		struct uz_msg_reply reply;
		int r;

		/*
		 * Whatever the answer, fork goes on.  If the daemon could not
		 * give every page back (an error answer; it has paused
		 * eviction on receipt all the same), fault them in ourselves
		 * so the child does not inherit holes.  On -ENOTCONN the agent
		 * is leaving and the pages are back (SHUTDOWN) or lost (crash).
		 */
		r = uz_conn_request(&request, sizeof(request), UZ_MSG_FORK_PREPARE, &reply,
				    sizeof(reply), UZ_MSG_REPLY);
		if (r != -ENOTCONN && (r < 0 || reply.status < 0))
			uz_ranges_populate_locked();
	}
	uz_conn_lock();
}

static void fork_parent(void)
{
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
