/* SPDX-License-Identifier: MIT */
/*
 * fork(2) without giving pages back (docs/PROTOCOL.md section 4).
 *
 * The child of a process with registered ranges inherits them unregistered
 * (we never ask for EVENT_FORK, which needs CAP_SYS_PTRACE): where the
 * parent had evicted pages the child inherits holes.  They are served from
 * a snapshot of the parent's page index that shares the parent's evicted
 * pages by reference count, so the fork costs neither side its budget:
 *
 *   prepare  take range_lock (no registration can settle, no join start,
 *            no hooked munmap/mremap), stop the agent moving pages out
 *            (uz_fork_in_progress), FORK_PREPARE and wait: the daemon lands
 *            its batch, pauses eviction and answers with the snapshot
 *            (a store, read-only, attached to the reply).  A daemon that
 *            cannot make one gives every page back instead, as before.
 *            Then take request_lock so the child does not inherit it held
 *            by a thread it does not have.
 *   parent   unlock; close the snapshot (the child has its copy); FORK_DONE
 *            with the child's pid, from the fork() wrapper below (the
 *            daemon lets the snapshot go if the fork failed or the child
 *            dies before joining).
 *   child    reset every lock and the inherited connection (the socket, the
 *            uffd, the ring and the store are the parent's; the arena is
 *            the family's, kept), forget the table, and -- before fork()
 *            returns, before any code of the program runs -- join with the
 *            snapshot (UZ_HELLO_SNAPSHOT) and register what the child has
 *            mapped, so that its first touch of a hole is served.  If that
 *            join fails, the child fails closed on the snapshot: every
 *            evicted page is poisoned (SIGBUS on touch), never zeros.
 *            Without a snapshot (pages given back) the child joins lazily
 *            from its watcher, as any process.
 *
 * fork() itself is interposed only to learn the child's pid for FORK_DONE;
 * a fork through another path still runs the handlers (FORK_DONE then says
 * 0, "not known": the daemon keeps the snapshot until the child claims it).
 * vfork and posix_spawn run no atfork handlers and need none: the child
 * shares the parent's memory until it execs, and exec closes the uffd
 * (O_CLOEXEC) and the socket (SOCK_CLOEXEC); the new image loads the
 * library afresh if LD_PRELOAD says so.  A child made with a raw clone(2)
 * system call runs no handler either: it would read zeros on inherited
 * holes (docs/ARCHITECTURE.md, "Fork").
 */
#include <dlfcn.h>
#include <errno.h>
#include <sys/mman.h>
#include <unistd.h>

#include "client.h"
#include "util.h"

static bool fork_was_managed; /* prepare -> parent/child, under range_lock */
static int fork_snapshot = -1; /* the FORK_PREPARE reply's store, prepare -> parent/child */
static __thread bool in_fork_wrapper; /* fork() below is running: it sends FORK_DONE */
static __thread bool fork_done_owed; /* the wrapper owes the daemon a FORK_DONE */
atomic_bool uz_fork_in_progress;

static void fork_done_send(pid_t child)
{
	struct uz_msg_fork_done done = {.child_pid = child};

	uz_conn_send(&done, sizeof(done), UZ_MSG_FORK_DONE);
}

static void fork_prepare(void)
{
	uz_ranges_lock();
	/* From here until the fork is over, the agent moves no page out (agent.c). */
	atomic_store(&uz_fork_in_progress, true);
	fork_snapshot = -1;
	for (;;) {
		struct uz_msg_header request = {0};
		struct uz_msg_reply reply;
		int fd = -1, r;

		/*
		 * The daemon died and the agent is looking for the next one:
		 * the child must not inherit holes it cannot have served.
		 * Wait for the re-join (or for the agent to fail closed, which
		 * puts back or poisons every evicted page).
		 */
		if (atomic_load(&uz_client.state) == UZ_CLIENT_RECONNECTING && !uz_is_agent())
			(void)uz_conn_wait_managed();
		fork_was_managed = uz_client_managed();
		if (!fork_was_managed || uz_is_agent())
			break;
		/*
		 * Whatever the answer, fork goes on.  With no snapshot and an
		 * error (the daemon paused eviction on receipt all the same),
		 * fault every page in ourselves so the child does not inherit
		 * holes.  -ENOTCONN: the daemon went away before answering;
		 * when it is leaving (SHUTDOWN) the pages are back, when it
		 * died the next one is asked.
		 */
		r = uz_conn_request_fd(&request, sizeof(request), UZ_MSG_FORK_PREPARE, &reply,
				       sizeof(reply), UZ_MSG_REPLY, &fd);
		if (r == -ENOTCONN)
			continue;
		if (r == 0 && reply.status == 0 && (reply.flags & UZ_REPLY_SNAPSHOT) && fd >= 0) {
			fork_snapshot = fd;
			break;
		}
		if (fd >= 0)
			close(fd);
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
	if (fork_snapshot >= 0)
		close(fork_snapshot);
	fork_snapshot = -1;
	if (fork_was_managed) {
		if (in_fork_wrapper)
			fork_done_owed = true; /* with the child's pid, once fork() returns */
		else
			fork_done_send(0);
	}
	uz_ranges_unlock();
}

static void fork_child(void)
{
	bool was_managed = fork_was_managed;
	int snapshot = fork_snapshot;

	atomic_store(&uz_fork_in_progress, false);
	fork_snapshot = -1;
	fork_done_owed = false;
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
	/* The parent's ring and store; the arena is the family's, kept for the snapshot. */
	if (uz_client.ring_fd >= 0)
		close(uz_client.ring_fd);
	if (uz_client.store_fd >= 0)
		close(uz_client.store_fd);
	uz_client.ring_fd = uz_client.store_fd = -1;
	if (snapshot < 0 && uz_client.arena_fd >= 0) {
		close(uz_client.arena_fd);
		uz_client.arena_fd = -1;
	}

	uz_ranges_clear_locked();
	uz_client.joined_once = false;
	if (was_managed)
		uz_client.join_tried = false; /* the child joins on its own */
	if (snapshot >= 0) {
		/* Holes from the parent: join and register now, before the program runs. */
		uz_client.join_tried = true;
		if (uz_client_join_snapshot(snapshot) < 0)
			uz_fail_closed_fork_child("the fork child could not join uzswapd with its "
						  "parent's evicted pages");
		else
			(void)uz_scan_run();
	}
	if (!uz_client.disabled && (!uz_client.join_tried || uz_client_managed()))
		uz_watcher_start(was_managed && snapshot < 0, was_managed);
}

/*
 * fork(), to tell the daemon the child's pid (FORK_DONE) once it is known:
 * it follows the child, which must claim the snapshot or die, and lets the
 * snapshot's references go when fork failed.
 */
UZ_EXPORT pid_t fork(void)
{
	static pid_t (*next_fork)(void);
	pid_t pid;

	if (!next_fork)
		next_fork = (pid_t(*)(void))dlsym(RTLD_NEXT, "fork");
	if (!next_fork) {
		errno = ENOSYS;
		return -1;
	}
	in_fork_wrapper = true;
	pid = next_fork();
	in_fork_wrapper = false;
	if (pid != 0 && fork_done_owed) {
		fork_done_owed = false;
		fork_done_send(pid);
	}
	return pid;
}

int uz_fork_install(void)
{
	return -pthread_atfork(fork_prepare, fork_parent, fork_child);
}
