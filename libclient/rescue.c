/* SPDX-License-Identifier: MIT */
/*
 * The fork child's rescue timer: the one stretch of a process's life in
 * which it has registered holes and no agent to look after them.
 *
 * A fork child joins its parent's snapshot, registers the holes it
 * inherited once the daemon serves its uffd, and only then starts its
 * agent (init.c; registering later would let pthread_create turn a hole
 * into a zero page).  pthread_create touches the heap (glibc's calloc of
 * the thread's dtv, which no tcache warm-up covers), and a touch of a hole
 * waits for the daemon.  If the daemon that adopted the child is killed in
 * that stretch, the fault waits for ever: the agent that would find the
 * next daemon does not exist yet.
 *
 * So for that stretch the child's main thread carries a timer of its own
 * (a thread-directed POSIX timer, UZ_RESCUE_SIGNAL every
 * UZ_RESCUE_PERIOD_MS).  A fault waiting in the kernel is interruptible:
 * the handler runs, and the access is retried when it returns.  The
 * handler looks at the daemon's socket; once it has hung up, it re-joins
 * whichever daemon now listens (HELLO with UZ_HELLO_RESUME, as the agent
 * would: the new daemon takes the uffd, the store and the ring, serves the
 * retried fault, and wakes every registered range).  No daemon yet: the
 * next tick tries again, until UZSWAP_RECONNECT_TIMEOUT, when the child
 * fails closed (its holes poisoned, never zeros).
 *
 * Only system calls and the library's own state: the handler interrupts
 * the main thread anywhere in pthread_create, holding glibc's malloc lock
 * for all it knows.  The agent, once it runs, closes the window
 * (uz_rescue_close) and waits for a re-join in progress to finish, so
 * that it never reads a socket the handler is replacing.  The signal's
 * previous disposition and the thread's mask are restored afterwards, and
 * a tick still pending is consumed first: the program never sees it.
 */
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "client.h"
#include "util.h"

#define UZ_RESCUE_SIGNAL    SIGRTMAX
#define UZ_RESCUE_PERIOD_MS 100

enum { RESCUE_CLOSED, RESCUE_OPEN, RESCUE_BUSY };

static atomic_int rescue_state = RESCUE_CLOSED;
static bool rescue_armed;
static timer_t rescue_timer;
static struct sigaction rescue_old_action;
static sigset_t rescue_old_mask;
static uint64_t rescue_hangup_ms; /* when the handler first saw the daemon gone */

static uint64_t rescue_now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static bool daemon_hung_up(int sock)
{
	struct pollfd pfd = {.fd = sock, .events = POLLRDHUP};

	if (sock < 0)
		return true;
	return poll(&pfd, 1, 0) > 0 && (pfd.revents & (POLLRDHUP | POLLHUP | POLLERR));
}

static void rescue_tick(int sig)
{
	int expected = RESCUE_OPEN, saved = errno;
	unsigned timeout_s = uz_client.reconnect_timeout_s;
	int old, r;

	(void)sig;
	if (!atomic_compare_exchange_strong(&rescue_state, &expected, RESCUE_BUSY)) {
		errno = saved;
		return;
	}
	if (!daemon_hung_up(uz_client.sock))
		goto out;
	if (!rescue_hangup_ms) {
		rescue_hangup_ms = rescue_now_ms();
		uz_notice("libuzswap: fork child: lost uzswapd at %s before its agent ran; "
			  "re-joining from the main thread (%s%u s)",
			  uz_client.socket_path, timeout_s ? "up to " : "no limit, ", timeout_s);
	}
	old = uz_client.sock;
	r = uz_client_rejoin_socket(&uz_client.sock);
	if (r == 0) {
		if (old >= 0)
			close(old);
		uz_notice("libuzswap: fork child: re-joined uzswapd after %llu ms",
			  (unsigned long long)(rescue_now_ms() - rescue_hangup_ms));
		rescue_hangup_ms = 0;
		goto out;
	}
	if (r != -ECONNREFUSED && r != -ENOENT && r != -ETIMEDOUT && r != -EAGAIN &&
	    r != -EINTR && r != -EBUSY) {
		uz_fail_closed("the new uzswapd refused the fork child's pages");
		atomic_store(&rescue_state, RESCUE_CLOSED);
		errno = saved;
		return;
	}
	if (timeout_s && rescue_now_ms() - rescue_hangup_ms >= (uint64_t)timeout_s * 1000) {
		uz_fail_closed("no uzswapd came back in time for the fork child");
		atomic_store(&rescue_state, RESCUE_CLOSED);
		errno = saved;
		return;
	}
out:
	atomic_store(&rescue_state, RESCUE_OPEN);
	errno = saved;
}

void uz_rescue_arm(void)
{
	struct sigaction action;
	struct sigevent event;
	struct itimerspec period = {
	    .it_interval = {0, UZ_RESCUE_PERIOD_MS * 1000000L},
	    .it_value = {0, UZ_RESCUE_PERIOD_MS * 1000000L},
	};
	sigset_t one;

	if (rescue_armed)
		return;
	memset(&action, 0, sizeof(action));
	action.sa_handler = rescue_tick;
	action.sa_flags = SA_RESTART;
	sigfillset(&action.sa_mask);
	if (sigaction(UZ_RESCUE_SIGNAL, &action, &rescue_old_action) < 0)
		return;
	memset(&event, 0, sizeof(event));
	event.sigev_notify = SIGEV_THREAD_ID;
	event.sigev_signo = UZ_RESCUE_SIGNAL;
	event._sigev_un._tid = gettid();
	if (timer_create(CLOCK_MONOTONIC, &event, &rescue_timer) < 0) {
		sigaction(UZ_RESCUE_SIGNAL, &rescue_old_action, NULL);
		return;
	}
	sigemptyset(&one);
	sigaddset(&one, UZ_RESCUE_SIGNAL);
	pthread_sigmask(SIG_UNBLOCK, &one, &rescue_old_mask);
	rescue_hangup_ms = 0;
	rescue_armed = true;
	atomic_store(&rescue_state, RESCUE_OPEN);
	timer_settime(rescue_timer, 0, &period, NULL);
}

bool uz_rescue_armed(void)
{
	return rescue_armed;
}

int uz_rescue_signal(void)
{
	return UZ_RESCUE_SIGNAL;
}

/* The agent, before it reads the socket: no re-join from the handler any more. */
void uz_rescue_close(void)
{
	for (;;) {
		int expected = RESCUE_OPEN;

		if (atomic_compare_exchange_strong(&rescue_state, &expected, RESCUE_CLOSED) ||
		    expected == RESCUE_CLOSED)
			return;
		sched_yield(); /* the handler is re-joining: its socket is the one to read */
	}
}

void uz_rescue_disarm(void)
{
	struct timespec none = {0, 0};
	sigset_t one;

	if (!rescue_armed)
		return;
	sigemptyset(&one);
	sigaddset(&one, UZ_RESCUE_SIGNAL);
	pthread_sigmask(SIG_BLOCK, &one, NULL);
	timer_delete(rescue_timer);
	atomic_store(&rescue_state, RESCUE_CLOSED);
	while (sigtimedwait(&one, NULL, &none) == UZ_RESCUE_SIGNAL)
		; /* a tick left pending is ours, not the program's */
	sigaction(UZ_RESCUE_SIGNAL, &rescue_old_action, NULL);
	pthread_sigmask(SIG_SETMASK, &rescue_old_mask, NULL);
	rescue_armed = false;
}
