/* SPDX-License-Identifier: MIT */
/*
 * The socket to uzswapd after the handshake.
 *
 * Any thread may send: a SOCK_SEQPACKET message is delivered whole, so
 * concurrent senders need no lock.  Only the agent thread reads.  A thread
 * that needs an answer (REGISTER, UNREGISTER, FORK_PREPARE, HINT, STATS)
 * puts a waiter on its own stack into the list, sends, and sleeps on the
 * condition variable until the agent delivers the reply with the same seq,
 * or until the connection closes (-ENOTCONN).
 *
 * The socket descriptor must not be closed while a thread may still use
 * its number: senders count themselves in `socket_users` under
 * request_lock, and closing waits for that count to drop to zero after a
 * shutdown(2) has made any blocked send fail.
 *
 * request_lock is the innermost library lock and is never held across a
 * blocking system call.
 */
#include <errno.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "client.h"

struct uz_waiter {
	struct uz_waiter *next;
	uint32_t seq;
	uint16_t reply_type;
	bool done;
	int status; /* 0: reply copied; -ENOTCONN: connection closed */
	void *reply;
	size_t reply_size;
	int *fd; /* where a descriptor the reply carries goes (NULL: none is wanted) */
};

static pthread_mutex_t request_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t request_cond = PTHREAD_COND_INITIALIZER;
static struct uz_waiter *waiters; /* under request_lock */
static uint32_t next_seq = 1;	  /* under request_lock */
static unsigned int socket_users; /* under request_lock */

void uz_conn_lock(void)
{
	pthread_mutex_lock(&request_lock);
}

void uz_conn_unlock(void)
{
	pthread_mutex_unlock(&request_lock);
}

/* A fresh connection (join), or the fork child that inherited the old state. */
void uz_conn_reset(void)
{
	pthread_mutex_init(&request_lock, NULL);
	pthread_cond_init(&request_cond, NULL);
	waiters = NULL;
	socket_users = 0;
}

static void header_fill(struct uz_msg_header *header, uint16_t type, size_t size, uint32_t seq)
{
	header->magic = UZ_PROTO_MAGIC;
	header->version = UZ_PROTO_VERSION;
	header->type = type;
	header->size = size;
	header->seq = seq;
}

static int socket_get(void)
{
	int sock = -ENOTCONN;

	pthread_mutex_lock(&request_lock);
	if (uz_client_managed()) {
		socket_users++;
		sock = uz_client.sock;
	}
	pthread_mutex_unlock(&request_lock);
	return sock;
}

static void socket_put(void)
{
	pthread_mutex_lock(&request_lock);
	if (--socket_users == 0)
		pthread_cond_broadcast(&request_cond);
	pthread_mutex_unlock(&request_lock);
}

static int send_whole(int sock, const void *msg, size_t size)
{
	ssize_t n;

	do
		n = send(sock, msg, size, MSG_NOSIGNAL);
	while (n < 0 && errno == EINTR);
	if (n < 0)
		return -errno;
	return (size_t)n == size ? 0 : -EIO;
}

/* Send a message that gets no reply (EVICT_DONE, FORK_DONE, SHUTDOWN_ACK). */
int uz_conn_send(void *msg, size_t size, uint16_t type)
{
	int sock, r;

	header_fill(msg, type, size, 0);
	/* The agent may send while closing (SHUTDOWN_ACK): it owns the socket. */
	if (uz_is_agent())
		return send_whole(uz_client.sock, msg, size);
	sock = socket_get();
	if (sock < 0)
		return sock;
	r = send_whole(sock, msg, size);
	socket_put();
	return r;
}

/*
 * Send a request and wait for its reply of type reply_type and exactly
 * reply_size bytes.  Returns 0 with *reply filled, or -errno: -ENOTCONN when
 * not managed or the connection closed meanwhile, -EDEADLK on the agent.
 */
int uz_conn_request(void *msg, size_t size, uint16_t type, void *reply, size_t reply_size,
		    uint16_t reply_type)
{
	return uz_conn_request_fd(msg, size, type, reply, reply_size, reply_type, NULL);
}

int uz_conn_request_fd(void *msg, size_t size, uint16_t type, void *reply, size_t reply_size,
		       uint16_t reply_type, int *fd)
{
	struct uz_waiter waiter = {
	    .reply_type = reply_type,
	    .reply = reply,
	    .reply_size = reply_size,
	    .fd = fd,
	};
	struct uz_waiter **p;
	int sock, r;

	if (uz_is_agent())
		return -EDEADLK;

	pthread_mutex_lock(&request_lock);
	if (!uz_client_managed()) {
		pthread_mutex_unlock(&request_lock);
		return -ENOTCONN;
	}
	waiter.seq = next_seq++;
	if (next_seq == 0)
		next_seq = 1;
	waiter.next = waiters;
	waiters = &waiter;
	socket_users++;
	sock = uz_client.sock;
	pthread_mutex_unlock(&request_lock);

	header_fill(msg, type, size, waiter.seq);
	r = send_whole(sock, msg, size);

	pthread_mutex_lock(&request_lock);
	if (--socket_users == 0)
		pthread_cond_broadcast(&request_cond);
	while (r == 0 && !waiter.done)
		pthread_cond_wait(&request_cond, &request_lock);
	if (r == 0)
		r = waiter.status;
	for (p = &waiters; *p; p = &(*p)->next) {
		if (*p == &waiter) {
			*p = waiter.next;
			break;
		}
	}
	pthread_mutex_unlock(&request_lock);
	return r == -EPIPE || r == -ECONNRESET ? -ENOTCONN : r;
}

/* Agent: hand a REPLY or STATS_REPLY to its waiter; unknown seqs are dropped. */
void uz_conn_deliver(const struct uz_msg_header *header, const void *msg, size_t size, int fd)
{
	struct uz_waiter *waiter;

	pthread_mutex_lock(&request_lock);
	for (waiter = waiters; waiter; waiter = waiter->next) {
		if (waiter->seq != header->seq || waiter->done)
			continue;
		if (waiter->reply_type != header->type || waiter->reply_size != size) {
			waiter->status = -EPROTO;
		} else {
			memcpy(waiter->reply, msg, size);
			waiter->status = 0;
			if (waiter->fd) {
				*waiter->fd = fd;
				fd = -1;
			}
		}
		waiter->done = true;
		pthread_cond_broadcast(&request_cond);
		break;
	}
	pthread_mutex_unlock(&request_lock);
	if (fd >= 0)
		close(fd); /* nobody asked for it */
}

/* Enter `state` (not MANAGED), fail every waiter and wake every thread waiting on us. */
static void fail_waiters(enum uz_client_state state)
{
	struct uz_waiter *waiter;

	pthread_mutex_lock(&request_lock);
	atomic_store(&uz_client.state, state);
	for (waiter = waiters; waiter; waiter = waiter->next) {
		if (!waiter->done) {
			waiter->done = true;
			waiter->status = -ENOTCONN;
		}
	}
	pthread_cond_broadcast(&request_cond);
	pthread_mutex_unlock(&request_lock);
}

/*
 * Agent, first step of leaving: refuse new requests, fail every waiter, make
 * blocked senders return.  After this no app thread waits for the agent,
 * so the agent may take range_lock.
 */
void uz_conn_close_begin(void)
{
	fail_waiters(UZ_CLIENT_CLOSING);
}

/*
 * Agent: the daemon is gone.  Fail every waiter and refuse new requests as
 * closing does, but the state is RECONNECTING: the uffd, the store and the
 * ring are kept for the next daemon, and threads that need the daemon
 * (fork) may wait for it with uz_conn_wait_managed().  The dead socket is
 * closed once nobody sends on it.
 */
void uz_conn_suspend(void)
{
	fail_waiters(UZ_CLIENT_RECONNECTING);
	uz_conn_close_finish();
}

/* Agent: re-joined on `sock`; requests go through again. */
void uz_conn_resume(int sock)
{
	pthread_mutex_lock(&request_lock);
	uz_client.sock = sock;
	atomic_store(&uz_client.state, UZ_CLIENT_MANAGED);
	pthread_cond_broadcast(&request_cond);
	pthread_mutex_unlock(&request_lock);
}

bool uz_conn_wait_managed(void)
{
	bool managed;

	pthread_mutex_lock(&request_lock);
	while (atomic_load(&uz_client.state) == UZ_CLIENT_RECONNECTING)
		pthread_cond_wait(&request_cond, &request_lock);
	managed = atomic_load(&uz_client.state) == UZ_CLIENT_MANAGED;
	pthread_mutex_unlock(&request_lock);
	return managed;
}

/* Agent, last step of leaving: close the socket once nobody sends on it. */
void uz_conn_close_finish(void)
{
	if (uz_client.sock < 0)
		return;
	shutdown(uz_client.sock, SHUT_RDWR);
	pthread_mutex_lock(&request_lock);
	while (socket_users)
		pthread_cond_wait(&request_cond, &request_lock);
	close(uz_client.sock);
	uz_client.sock = -1;
	pthread_mutex_unlock(&request_lock);
}
