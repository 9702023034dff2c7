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
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "client.h"
#include "util.h"

/* Stack the child's handler and join may use below fork()'s frame. */
#define FORK_STACK_PRETOUCH (64 * 1024)
/* The top of a thread stack glibc's fork touches in the child: descriptor, static TLS. */
#define FORK_STACK_TOP (64 * 1024)

static bool fork_was_managed; /* prepare -> parent/child, under range_lock */
static int fork_snapshot = -1; /* the FORK_PREPARE reply's store, prepare -> parent/child */
/*
 * Initial-exec TLS: the child touches fork_done_owed before it has
 * registered anything, and the first touch of a dynamic TLS variable in a
 * thread may call malloc (__tls_get_addr resizing the dtv), which reads the
 * heap: holes there.  libuzswap is loaded at start-up (LD_PRELOAD or
 * linked), where static TLS is always available.
 */
#define FORK_TLS __thread __attribute__((tls_model("initial-exec")))
static FORK_TLS bool in_fork_wrapper; /* fork() below is running: it sends FORK_DONE */
static FORK_TLS bool fork_done_owed; /* the wrapper owes the daemon a FORK_DONE */
atomic_bool uz_fork_in_progress;

static void fork_done_send(pid_t child)
{
	struct uz_msg_fork_done done = {.child_pid = child};

	uz_conn_send(&done, sizeof(done), UZ_MSG_FORK_DONE);
}

/*
 * The child runs its atfork handler and the join on this thread's stack,
 * deeper than fork() itself.  On a managed thread stack the pages below
 * may be holes that the child, touching them before it has registered,
 * would turn into zero pages and later read as such (the next call's
 * frame is dead data, but a hole turned zero page is never served again).
 * Fault them in while eviction is paused, so the child inherits them.
 */
static __attribute__((noinline)) void stack_pretouch(void)
{
	volatile char pad[FORK_STACK_PRETOUCH];

	for (size_t i = 0; i < sizeof(pad); i += UZ_PAGE_SIZE)
		pad[i] = 0;
	pad[sizeof(pad) - 1] = 0;
}

/*
 * glibc's fork writes to every thread's descriptor (the top of its stack,
 * with its static TLS) in the child before any atfork handler runs
 * (reclaim_stacks), and also to the cached stacks of threads that ended.
 * A thread that sleeps leaves those pages cold, and an evicted one would be
 * a hole the child turns into a zero page: a crash in fork() or in its next
 * pthread_create.  So fault in the top of every thread stack (an anonymous
 * read-write run right above a PROT_NONE guard) while eviction is paused.
 */
struct stack_run {
	uint64_t guard_end; /* the last line was a guard ending here */
	uint64_t run_end;   /* a stack run since that guard, ending here */
};

/*
 * The top of one mapping of a stack run.  Every mapping of the run, not
 * only the last: a stack whose VMA was split (part of it registered with
 * our uffd) continues in the next line, and so may an unrelated mapping
 * placed right after it (jemalloc's extents) -- the descriptor is at the
 * end of one of them, and redis's BGSAVE child crashed in reclaim_stacks
 * when only the top of the whole run was touched.
 */
static void stack_top_touch(uint64_t start, uint64_t end)
{
	for (uint64_t a = end - uz_min(end - start, (uint64_t)FORK_STACK_TOP); a < end;
	     a += UZ_PAGE_SIZE)
		(void)*(volatile const char *)(uintptr_t)a;
}

static int stack_line(char *text, void *arg)
{
	struct stack_run *run = arg;
	struct uz_maps_line line;
	bool anon, rw;

	if (!uz_maps_parse(text, &line))
		return 0;
	anon = line.inode == 0 && line.name[0] == 0;
	rw = anon && !memcmp(line.perms, "rw-p", 4);
	if (rw && ((run->run_end && line.start == run->run_end) ||
		   (run->guard_end && line.start == run->guard_end))) {
		stack_top_touch(line.start, line.end);
		run->run_end = line.end;
		run->guard_end = 0;
		return 0;
	}
	run->run_end = 0;
	run->guard_end = anon && !memcmp(line.perms, "---p", 4) ? line.end : 0;
	return 0;
}

static void stack_tops_touch(void)
{
	static char buf[16384];
	struct stack_run run = {0};

	(void)uz_read_lines("/proc/self/maps", buf, sizeof(buf), stack_line, &run);
}

/*
 * The child's pthread_create of its agent allocates the thread's dtv
 * (calloc of a few hundred bytes, by whatever malloc the program uses),
 * and glibc first sets up this thread's cache if it never called malloc.
 * Take and give back one block of each likely size: the cache and its
 * metadata are then present in the child, and so is the block where the
 * program's calloc takes it from that cache.  glibc's calloc (2.36) does
 * not: it goes to the arena, which may still be a hole
 * (docs/RELIABILITY.md).  A hole there is worse than a slow fault: the
 * child's agent, which would notice a daemon that died and re-join the
 * next one, is not running yet, so a fault there waits for ever.
 */
static void dtv_pretouch(void)
{
	for (size_t size = 256; size <= 768; size += 16) {
		/*
		 * Through a volatile pointer, written to: GCC deletes a
		 * free(malloc(n)) pair outright (it did, and the child's
		 * calloc set up glibc's cache on a hole).
		 */
		char *volatile block = malloc(size);

		if (block) {
			block[0] = 0;
			free(block);
		}
	}
}

static void fork_prepare(void)
{
	/*
	 * Before range_lock: the program's malloc may map memory, and our
	 * mmap hooks take range_lock.  This pass fills the thread's cache (a
	 * daemon we are re-joining serves what it faults on); the one after
	 * FORK_PREPARE below, with eviction paused, is served from that cache
	 * and leaves its blocks present for the child.
	 */
	if (atomic_load(&uz_client.state) != UZ_CLIENT_OFF && !uz_is_agent())
		dtv_pretouch();
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
	if (fork_snapshot >= 0) {
		dtv_pretouch();
		stack_pretouch();
		stack_tops_touch();
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

	uz_client.joined_once = false;
	if (was_managed)
		uz_client.join_tried = false; /* the child joins on its own */
	if (snapshot >= 0) {
		/*
		 * Holes from the parent: join and register now, before the
		 * program runs.  The join registers the parent's ranges with
		 * the new uffd (kernel side) as soon as the daemon holds it,
		 * before anything touches the heap; the scan then tells the
		 * daemon about them and about what the table missed.
		 */
		int r;

		uz_client.join_tried = true;
		r = uz_client_join_snapshot(snapshot);
		uz_ranges_clear_locked();
		if (r < 0)
			uz_fail_closed_fork_child("the fork child could not join uzswapd with its "
						  "parent's evicted pages");
		else
			(void)uz_scan_run();
	} else {
		uz_ranges_clear_locked();
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
