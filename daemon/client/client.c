// SPDX-License-Identifier: MIT
/*
 * Client objects and the handshake.
 *
 * A connection accepted on the client socket is not a client yet: it is a
 * pending handshake, watched by the main thread's sd-event loop with a
 * timer.  The first message must be a HELLO of exactly the right size,
 * carrying the client's userfaultfd (and optionally its own
 * /proc/self/pagemap) with SCM_RIGHTS.  Everything in it is checked before
 * anything is allocated for the peer:
 *
 *   - the peer's credentials come from SO_PEERCRED, never from the message;
 *   - the first fd must be a userfaultfd (its /proc/self/fd link reads
 *     "anon_inode:[userfaultfd]"), with the VM events and MOVE granted:
 *     without REMOVE/UNMAP/REMAP the daemon could not keep its index right,
 *     and without MOVE the agent cannot evict;
 *   - the pagemap fd must be /proc/<peer pid>/pagemap; if it is anything
 *     else it is closed and the daemon opens the peer's pagemap itself;
 *   - the graveyard must be UZ_EVICT_BATCH_MAX pages of private anonymous
 *     writable memory of the peer, inside the 47-bit user address space;
 *   - the global and per-uid client limits hold.
 *
 * Then the ring is created (a sealed memfd the client maps), HELLO_REPLY
 * goes out with the ring fd, and the client is handed to a fault thread,
 * round robin.  A refusal is answered with a negative status (so the
 * library can print why) and logged once.
 *
 * /proc/PID is opened once (O_PATH) at the handshake and every later read
 * of maps goes through that fd, so a recycled pid can never make us read
 * another process's maps: once the client is gone the openat fails.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <systemd/sd-event.h>

#include "client/client.h"
#include "daemon.h"
#include "family/family.h"
#include "fault/fault.h"
#include "fault/fork.h"
#include "pool/pool.h"
#include "stats/stats.h"
#include "uffd-compat.h"
#include "util.h"

#define CLIENT_REQUIRED_FEATURES                                                                   \
	(UFFD_FEATURE_EVENT_REMAP | UFFD_FEATURE_EVENT_REMOVE | UFFD_FEATURE_EVENT_UNMAP |         \
	 UFFD_FEATURE_MOVE)
#define CLIENT_KNOWN_HELLO_FLAGS                                                                   \
	(UZ_HELLO_HAS_PAGEMAP | UZ_HELLO_FORK_CHILD | UZ_HELLO_RESUME | UZ_HELLO_SNAPSHOT)
#define CLIENT_KEY_MASK		 ((1ULL << (64 - PAGE_INDEX_VPN_BITS)) - 1)

/* ---------------------------------------------------------------------------
 * Pending handshakes (main thread only)
 */

struct handshake {
	struct uz_list link;
	struct daemon *daemon;
	int fd;
	sd_event_source *io;
	sd_event_source *timer;
};

static struct uz_list handshakes = {&handshakes, &handshakes};

static void handshake_free(struct handshake *h)
{
	if (!h)
		return;
	uz_list_del(&h->link);
	sd_event_source_disable_unref(h->io);
	sd_event_source_disable_unref(h->timer);
	if (h->fd >= 0)
		close(h->fd);
	free(h);
}

void client_handshakes_cancel(void)
{
	while (!uz_list_empty(&handshakes))
		handshake_free(uz_container_of(handshakes.next, struct handshake, link));
}

static int handshake_on_timeout(sd_event_source *s, uint64_t usec, void *userdata)
{
	struct handshake *h = userdata;

	uz_log(LOG_INFO, "client fd %d: no HELLO within %llu ms, closing", h->fd,
	       (unsigned long long)(UZ_HELLO_TIMEOUT_USEC / 1000));
	handshake_free(h);
	return 0;
}

static void close_fds(int *fds, unsigned nfds)
{
	for (unsigned i = 0; i < nfds; i++)
		if (fds[i] >= 0)
			close(fds[i]);
}

ssize_t client_recv(int fd, void *buf, size_t cap, int *fds, unsigned *nfds, unsigned max_fds)
{
	union {
		struct cmsghdr align;
		char buf[CMSG_SPACE(sizeof(int) * 8)];
	} control;
	struct iovec iov = {.iov_base = buf, .iov_len = cap};
	struct msghdr msg = {
	    .msg_iov = &iov,
	    .msg_iovlen = 1,
	    .msg_control = control.buf,
	    .msg_controllen = sizeof(control.buf),
	};
	struct cmsghdr *cmsg;
	unsigned n = 0;
	bool too_many = false;
	ssize_t len;

	len = recvmsg(fd, &msg, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
	if (len < 0)
		return -errno;

	for (cmsg = CMSG_FIRSTHDR(&msg); cmsg; cmsg = CMSG_NXTHDR(&msg, cmsg)) {
		if (cmsg->cmsg_level != SOL_SOCKET || cmsg->cmsg_type != SCM_RIGHTS)
			continue;
		size_t count = (cmsg->cmsg_len - CMSG_LEN(0)) / sizeof(int);
		int *received = (int *)CMSG_DATA(cmsg);
		for (size_t i = 0; i < count; i++) {
			int rfd;

			memcpy(&rfd, &received[i], sizeof(rfd));
			if (n < max_fds)
				fds[n++] = rfd;
			else {
				close(rfd);
				too_many = true;
			}
		}
	}
	*nfds = n;
	if (too_many || (msg.msg_flags & (MSG_TRUNC | MSG_CTRUNC))) {
		close_fds(fds, n);
		*nfds = 0;
		return -EBADMSG;
	}
	return len;
}

/* 0 when the fd we hold is `want` (what /proc/self/fd/N links to), else -EBADF. */
static int fd_target_is(int fd, const char *want)
{
	char path[64], target[64];
	ssize_t n;

	snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
	n = readlink(path, target, sizeof(target) - 1);
	if (n < 0)
		return -errno;
	target[n] = 0;
	return strcmp(target, want) == 0 ? 0 : -EBADF;
}

static int fd_is_userfaultfd(int fd)
{
	return fd_target_is(fd, "anon_inode:[userfaultfd]");
}

static int fd_is_pagemap_of(int fd, pid_t pid)
{
	char want[64];

	snprintf(want, sizeof(want), "/proc/%d/pagemap", (int)pid);
	return fd_target_is(fd, want);
}

#define RING_SIZE ((size_t)UZ_RING_PAGES * UZ_PAGE_SIZE)

static int ring_create(int *fd_out, uint8_t **ring_out)
{
	int fd, r;
	void *ring;

	fd = memfd_create("uzswap-ring", MFD_CLOEXEC | MFD_ALLOW_SEALING);
	if (fd < 0)
		return -errno;
	if (ftruncate(fd, (off_t)RING_SIZE) < 0)
		goto fail_errno;
	if (fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) < 0)
		goto fail_errno;
	ring = mmap(NULL, RING_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	if (ring == MAP_FAILED)
		goto fail_errno;
	*fd_out = fd;
	*ring_out = ring;
	return 0;

fail_errno:
	r = -errno;
	close(fd);
	return r;
}

/*
 * Map the ring a resuming client kept: it must be a ring we made (our
 * memfd name, owned by us, its size sealed).  The fd stays the caller's.
 */
static int ring_take(int fd, uint8_t **ring_out)
{
	struct stat st;
	int seals;
	void *ring;

	if (fd_target_is(fd, "/memfd:uzswap-ring (deleted)") < 0 || fstat(fd, &st) < 0 ||
	    st.st_uid != geteuid() || (size_t)st.st_size != RING_SIZE)
		return -EPERM;
	seals = fcntl(fd, F_GET_SEALS);
	if (seals < 0 || (seals & (F_SEAL_SHRINK | F_SEAL_GROW)) != (F_SEAL_SHRINK | F_SEAL_GROW))
		return -EPERM;
	ring = mmap(NULL, RING_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	if (ring == MAP_FAILED)
		return -errno;
	*ring_out = ring;
	return 0;
}

/*
 * /proc/PID/stat of the process behind proc_fd into buf; *fields points at
 * the space before field 3 (after the comm, which may hold spaces and
 * parentheses).
 */
static int proc_stat_read(int proc_fd, char *buf, size_t size, char **fields)
{
	ssize_t n;
	int fd = openat(proc_fd, "stat", O_RDONLY | O_CLOEXEC);

	if (fd < 0)
		return -errno;
	n = read(fd, buf, size - 1);
	close(fd);
	if (n <= 0)
		return -EIO;
	buf[n] = 0;
	*fields = strrchr(buf, ')');
	if (!*fields)
		return -EIO;
	++*fields;
	return 0;
}

/* Field 22 of /proc/PID/stat: the start time, which a recycled pid does not share. */
static int proc_starttime(int proc_fd, uint64_t *out)
{
	char buf[1024], *p;
	int r = proc_stat_read(proc_fd, buf, sizeof(buf), &p);

	if (r < 0)
		return r;
	for (int field = 3; field < 22 && p; field++) /* p is before field 3 */
		p = strchr(p + 1, ' ');
	if (!p)
		return -EIO;
	*out = strtoull(p + 1, NULL, 10);
	return 0;
}

static unsigned clients_of_uid_locked(struct daemon *daemon, uid_t uid)
{
	unsigned n = 0;

	for (struct uz_list *i = daemon->clients.next; i != &daemon->clients; i = i->next)
		if (uz_container_of(i, struct client, link)->uid == uid)
			n++;
	return n;
}

static int send_hello_reply(int fd, uint32_t seq, int status, const struct client *client)
{
	struct uz_msg_hello_reply reply = {0};
	union {
		struct cmsghdr align;
		char buf[CMSG_SPACE(3 * sizeof(int))];
	} control;
	struct iovec iov = {.iov_base = &reply, .iov_len = sizeof(reply)};
	struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1};
	int store_fd = -1, arena_fd = -1, r = 0;

	uz_msg_header_init(&reply.header, UZ_MSG_HELLO_REPLY, sizeof(reply), seq);
	reply.status = status;
	if (status == 0) {
		reply.batch_max = UZ_EVICT_BATCH_MAX;
		reply.ring_size = RING_SIZE;
		reply.client_id = client->id;
		reply.flags = client->resume ? UZ_HELLO_REPLY_RESUMED : 0;
	}
	if (status == 0 && !client->resume) {
		/* A fresh client gets its ring and read-only descriptors of its store and arena. */
		struct cmsghdr *cmsg;
		int fds[3];

		/* A fork child's store is its snapshot's until the fault thread adopts it. */
		store_fd = store_open_readonly(client->store ? client->store : client->claimed->store);
		if (store_fd < 0)
			return store_fd;
		arena_fd = pool_open_readonly(client->family->pool);
		if (arena_fd < 0) {
			close(store_fd);
			return arena_fd;
		}
		fds[0] = client->ring_fd;
		fds[1] = store_fd;
		fds[2] = arena_fd;
		memset(&control, 0, sizeof(control));
		msg.msg_control = control.buf;
		msg.msg_controllen = sizeof(control.buf);
		cmsg = CMSG_FIRSTHDR(&msg);
		cmsg->cmsg_level = SOL_SOCKET;
		cmsg->cmsg_type = SCM_RIGHTS;
		cmsg->cmsg_len = CMSG_LEN(sizeof(fds));
		memcpy(CMSG_DATA(cmsg), fds, sizeof(fds));
	}
	if (sendmsg(fd, &msg, MSG_DONTWAIT | MSG_NOSIGNAL) < 0)
		r = -errno;
	if (store_fd >= 0)
		close(store_fd);
	if (arena_fd >= 0)
		close(arena_fd);
	return r;
}

/* The parent pid (field 4 of /proc/PID/stat) of the process behind proc_fd. */
static int proc_ppid(int proc_fd, pid_t *out)
{
	char buf[1024], *p;
	int r = proc_stat_read(proc_fd, buf, sizeof(buf), &p);

	if (r < 0)
		return r;
	return sscanf(p, " %*c %d", out) == 1 ? 0 : -EIO;
}

/*
 * A fork child joining with its snapshot (UZ_HELLO_SNAPSHOT): the family
 * of the arena it inherited, and the snapshot its parent's FORK_PREPARE
 * made -- the record this daemon keeps, or, after a daemon restart, the
 * store itself, whose header names the parent (pid and start time): the
 * process presenting it must be that process's child.  Another process of
 * the same uid holding the descriptors could already read the parent's
 * memory; one of another uid cannot have them.
 */
static int client_take_snapshot(struct daemon *daemon, struct client *client, int store_fd,
				int arena_fd, struct fault_thread *next_thread, const char **why)
{
	struct uz_store_header *sh;
	struct stat st;
	pid_t ppid;
	int r;

	r = family_take_arena(daemon, arena_fd, next_thread, client->pid, client->starttime,
			      &client->family);
	if (r < 0) {
		*why = "the arena of the fork snapshot is not one of ours or is damaged";
		return r;
	}
	r = proc_ppid(client->proc_fd, &ppid);
	if (r < 0 || fstat(store_fd, &st) < 0) {
		*why = "cannot read the fork child's parent";
		return r < 0 ? r : -errno;
	}
	client->from_snapshot = true;
	client->claimed = fork_snapshot_claim(client->family, st.st_dev, st.st_ino);
	if (client->claimed) {
		/* Its parent, or the child FORK_DONE named (the parent may be gone already). */
		if (client->claimed->parent_pid != ppid && client->claimed->child_pid != client->pid) {
			*why = "the fork snapshot is not of this process's parent";
			return -EPERM;
		}
		return 0; /* store and index are taken over when the child is adopted */
	}
	/* No record here (this daemon started after the fork): the store says whose it is. */
	r = store_recover(&client->store, store_fd, NULL);
	if (r < 0) {
		*why = "the fork snapshot is not one of our stores or is damaged";
		return r;
	}
	sh = store_header(client->store);
	{
		char path[32];
		uint64_t parent_start = 0;
		int parent_fd;

		snprintf(path, sizeof(path), "/proc/%d", (int)ppid);
		parent_fd = open(path, O_PATH | O_DIRECTORY | O_CLOEXEC);
		r = parent_fd < 0 ? -errno : proc_starttime(parent_fd, &parent_start);
		if (parent_fd >= 0)
			close(parent_fd);
		/*
		 * A snapshot of this process's parent; or one a daemon that
		 * died had already adopted for this very process (the child
		 * joined it and it went away before serving a fault).
		 */
		bool parents = r == 0 && (sh->flags & UZ_STORE_SNAPSHOT) &&
			       sh->parent_pid == (uint32_t)ppid && sh->parent_starttime == parent_start;
		bool adopted = !(sh->flags & UZ_STORE_SNAPSHOT) &&
			       sh->owner_pid == (uint32_t)client->pid &&
			       sh->owner_starttime == client->starttime;

		if ((!parents && !adopted) ||
		    memcmp(sh->family_token, client->family->token, sizeof(sh->family_token))) {
			*why = "the fork snapshot is not of this process's parent";
			return -EPERM;
		}
	}
	r = page_index_recover(&client->index, client->store);
	if (r < 0)
		*why = "the page index of the fork snapshot is damaged";
	return r;
}

/*
 * Validate a HELLO and build the client.  On failure *why names the problem
 * for the log and the fds are still the caller's.
 */
static int client_from_hello(struct daemon *daemon, int sock_fd, const struct uz_msg_hello *hello,
			     int *fds, unsigned nfds, struct client **out, const char **why)
{
	struct client *client;
	struct ucred cred;
	socklen_t cred_len = sizeof(cred);
	char path[64];
	uint64_t starttime = 0;
	struct fault_thread *next_thread;
	int r;

	if (hello->page_size != UZ_PAGE_SIZE || sysconf(_SC_PAGESIZE) != (long)UZ_PAGE_SIZE) {
		*why = "page size mismatch";
		return -EINVAL;
	}
	if (hello->flags & ~CLIENT_KNOWN_HELLO_FLAGS) {
		*why = "unknown HELLO flags";
		return -EINVAL;
	}
	if ((hello->flags & UZ_HELLO_RESUME) && (hello->flags & UZ_HELLO_SNAPSHOT)) {
		*why = "HELLO both resumes and joins with a fork snapshot";
		return -EINVAL;
	}
	if (nfds != 1u + !!(hello->flags & UZ_HELLO_HAS_PAGEMAP) +
			(hello->flags & UZ_HELLO_RESUME ? 3u : 0u) +
			(hello->flags & UZ_HELLO_SNAPSHOT ? 2u : 0u)) {
		*why = "wrong number of file descriptors";
		return -EBADF;
	}
	if (hello->graveyard_len != (uint64_t)UZ_EVICT_BATCH_MAX * UZ_PAGE_SIZE ||
	    !uz_page_aligned(hello->graveyard_start) || hello->graveyard_start == 0 ||
	    hello->graveyard_start >= UZ_USER_ADDR_MAX ||
	    UZ_USER_ADDR_MAX - hello->graveyard_start < hello->graveyard_len) {
		*why = "bad graveyard";
		return -EINVAL;
	}
	if ((hello->uffd_features & CLIENT_REQUIRED_FEATURES) != CLIENT_REQUIRED_FEATURES) {
		*why = "userfaultfd lacks EVENT_REMAP/REMOVE/UNMAP or MOVE";
		return -EOPNOTSUPP;
	}
	if (getsockopt(sock_fd, SOL_SOCKET, SO_PEERCRED, &cred, &cred_len) < 0) {
		*why = "SO_PEERCRED failed";
		return -errno;
	}
	if (cred.pid <= 0) {
		*why = "peer has no pid in our namespace";
		return -EPERM;
	}
	r = fd_is_userfaultfd(fds[0]);
	if (r < 0) {
		*why = "first fd is not a userfaultfd";
		return r;
	}

	client = calloc(1, sizeof(*client));
	if (!client) {
		*why = "out of memory";
		return -ENOMEM;
	}
	uz_list_init(&client->link);
	uz_list_init(&client->thread_link);
	client->daemon = daemon;
	client->sock_fd = -1;
	client->uffd = -1;
	client->pagemap_fd = -1;
	client->proc_fd = -1;
	client->ring_fd = -1;
	client->pid = cred.pid;
	client->uid = cred.uid;
	client->gid = cred.gid;
	memcpy(client->comm, hello->comm, sizeof(hello->comm));
	client->comm[16] = 0;
	for (char *p = client->comm; *p; p++)
		if ((unsigned char)*p < 0x20 || (unsigned char)*p >= 0x7f)
			*p = '?';
	client->hello_flags = hello->flags;
	client->uffd_features = hello->uffd_features;
	client->graveyard_start = hello->graveyard_start;
	client->graveyard_end = hello->graveyard_start + hello->graveyard_len;
	client_set_policy(client, &daemon->policy);
	{
		struct uz_policy policy;

		r = daemon_client_resolve(daemon, client->pid, &client->group, &policy);
		if (r < 0) {
			*why = "cannot find the cgroup of the peer";
			goto fail;
		}
		client_set_policy(client, &policy);
		client->assigned_group = group_ref(client->group);
		client->assigned_policy = policy;
	}

	snprintf(path, sizeof(path), "/proc/%d", (int)cred.pid);
	client->proc_fd = open(path, O_PATH | O_DIRECTORY | O_CLOEXEC);
	if (client->proc_fd < 0) {
		r = -errno;
		*why = "cannot open /proc/PID of the peer";
		goto fail;
	}
	/* The peer must still be the process that connected: its socket is ours. */
	if (getsockopt(sock_fd, SOL_SOCKET, SO_PEERCRED, &cred, &cred_len) < 0 ||
	    cred.pid != client->pid) {
		r = -ESRCH;
		*why = "peer changed during the handshake";
		goto fail;
	}

	r = client_check_anon_range(client, fds[0], client->graveyard_start, client->graveyard_end);
	if (r < 0) {
		*why = "graveyard is not private anonymous writable memory of the peer registered "
		       "with its userfaultfd";
		goto fail;
	}

	client->requests = calloc(UZ_CLIENT_REQUESTS_MAX, sizeof(*client->requests));
	r = -ENOMEM;
	if (!client->requests) {
		*why = "out of memory";
		goto fail;
	}
	r = stats_new(&client->stats);
	if (r < 0) {
		*why = "cannot create statistics";
		goto fail;
	}
	r = proc_starttime(client->proc_fd, &starttime);
	if (r < 0) {
		*why = "cannot read the peer's start time";
		goto fail;
	}
	client->starttime = starttime;
	/* A new family (a fresh arena) goes to the next fault thread, round robin. */
	next_thread = daemon->fault_threads[daemon->next_fault_thread];
	daemon->next_fault_thread = (daemon->next_fault_thread + 1) % daemon->nr_fault_threads;
	if (hello->flags & UZ_HELLO_RESUME) {
		/* fds: uffd, [pagemap], store, ring, arena -- the last three stay the caller's */
		int store_fd = fds[nfds - 3], ring_fd = fds[nfds - 2], arena_fd = fds[nfds - 1];
		struct uz_store_header *sh;

		client->resume = true;
		r = family_take_arena(daemon, arena_fd, next_thread, client->pid, starttime,
				      &client->family);
		if (r < 0) {
			*why = "the arena passed to resume is not one of ours or is damaged";
			goto fail;
		}
		r = store_recover(&client->store, store_fd, NULL);
		if (r < 0) {
			*why = "the store passed to resume is not one of ours or is damaged";
			goto fail;
		}
		sh = store_header(client->store);
		if (sh->owner_pid != (uint32_t)client->pid || sh->owner_starttime != starttime) {
			r = -EPERM;
			*why = "the store passed to resume belongs to another process";
			goto fail;
		}
		if (memcmp(sh->family_token, client->family->token, sizeof(sh->family_token)) != 0) {
			r = -EPERM;
			*why = "the store and the arena passed to resume do not belong together";
			goto fail;
		}
		r = page_index_recover(&client->index, client->store);
		if (r < 0) {
			*why = "the page index in the store is damaged";
			goto fail;
		}
		r = ring_take(ring_fd, &client->ring);
		if (r < 0) {
			*why = "the ring passed to resume is not one of ours";
			goto fail;
		}
	} else if (hello->flags & UZ_HELLO_SNAPSHOT) {
		/* fds: uffd, [pagemap], snapshot store, arena -- the last two stay the caller's */
		r = client_take_snapshot(daemon, client, fds[nfds - 2], fds[nfds - 1], next_thread,
					 why);
		if (r < 0)
			goto fail;
		r = ring_create(&client->ring_fd, &client->ring);
		if (r < 0) {
			*why = "cannot create the ring";
			goto fail;
		}
	} else {
		r = family_new(daemon, next_thread, client->pid, starttime, &client->family);
		if (r < 0) {
			*why = "cannot create the arena";
			goto fail;
		}
		r = store_new(&client->store);
		if (r < 0) {
			*why = "cannot create the store";
			goto fail;
		}
		store_header(client->store)->owner_pid = (uint32_t)client->pid;
		store_header(client->store)->owner_starttime = starttime;
		memcpy(store_header(client->store)->family_token, client->family->token,
		       sizeof(client->family->token));
		r = page_index_new(&client->index, client->store);
		if (r < 0) {
			*why = "cannot create the page index";
			goto fail;
		}
		r = ring_create(&client->ring_fd, &client->ring);
		if (r < 0) {
			*why = "cannot create the ring";
			goto fail;
		}
	}

	/* fds are taken over from here on (a resume's store and ring: closed, we mapped them) */
	client->uffd = fds[0];
	fds[0] = -1;
	if (hello->flags & (UZ_HELLO_RESUME | UZ_HELLO_SNAPSHOT)) {
		unsigned extra = (hello->flags & UZ_HELLO_RESUME) ? 3 : 2;

		for (unsigned i = nfds - extra; i < nfds; i++) {
			close(fds[i]);
			fds[i] = -1;
		}
		nfds -= extra;
	}
	client->owner = client->family->thread;
	client->swap_owner = client->family->swap_owner;
	if (nfds > 1) {
		if (fd_is_pagemap_of(fds[1], client->pid) == 0) {
			client->pagemap_fd = fds[1];
			fds[1] = -1;
		} else {
			close(fds[1]);
			fds[1] = -1;
		}
	}
	if (client->pagemap_fd < 0)
		client->pagemap_fd = openat(client->proc_fd, "pagemap", O_RDONLY | O_CLOEXEC);
	/* The fault thread reads the uffd without blocking. */
	r = fcntl(client->uffd, F_GETFL);
	if (r >= 0 && !(r & O_NONBLOCK))
		(void)fcntl(client->uffd, F_SETFL, r | O_NONBLOCK);

	*out = client;
	return 0;

fail:
	client_free(client);
	return r;
}

/* Once per refused connection, with the peer's pid and uid when it has one in our namespace. */
static void handshake_log_refusal(const struct handshake *h, const char *why, int r)
{
	struct ucred cred = {0};
	socklen_t cred_len = sizeof(cred);
	struct uz_log_client who = {0};
	char reason[160];
	const char *fields[] = {reason, NULL};

	if (getsockopt(h->fd, SOL_SOCKET, SO_PEERCRED, &cred, &cred_len) == 0 && cred.pid > 0)
		who = (struct uz_log_client){.pid = cred.pid, .uid = cred.uid, .uid_set = true};
	snprintf(reason, sizeof(reason), "UZSWAP_REASON=%s", why);
	uz_log_event(LOG_NOTICE, UZ_MESSAGE_CLIENT_REFUSED, &who, fields,
		     "refusing client pid %d (fd %d): %s (%s)", (int)who.pid, h->fd, why,
		     strerror(-r));
}

static void handshake_complete(struct handshake *h)
{
	struct daemon *daemon = h->daemon;
	union {
		struct uz_msg_hello hello;
		uint8_t raw[UZ_MSG_SIZE_MAX];
	} buf;
	int fds[5] = {-1, -1, -1, -1, -1};
	unsigned nfds = 0;
	struct client *client = NULL;
	const char *why = "malformed HELLO";
	uint32_t seq = 0;
	ssize_t len;
	int r;

	len = client_recv(h->fd, &buf, sizeof(buf), fds, &nfds, 5);
	if (len == -EAGAIN || len == -EINTR)
		return;
	if (len <= 0) {
		if (len < 0)
			uz_log(LOG_INFO, "client fd %d: receiving HELLO failed: %s", h->fd,
			       strerror((int)-len));
		handshake_free(h);
		return;
	}

	if ((size_t)len >= sizeof(struct uz_msg_header))
		seq = buf.hello.header.seq;
	r = -EBADMSG;
	if ((size_t)len != sizeof(buf.hello) || buf.hello.header.magic != UZ_PROTO_MAGIC ||
	    buf.hello.header.type != UZ_MSG_HELLO || buf.hello.header.size != sizeof(buf.hello))
		goto refuse;
	if (buf.hello.header.version != UZ_PROTO_VERSION) {
		why = "unsupported protocol version";
		r = -EPROTONOSUPPORT;
		goto refuse;
	}
	r = client_from_hello(daemon, h->fd, &buf.hello, fds, nfds, &client, &why);
	if (r < 0)
		goto refuse;

	pthread_mutex_lock(&daemon->clients_lock);
	if (daemon->nr_clients >= daemon->max_clients) {
		why = "too many clients";
		r = -EUSERS;
	} else if (clients_of_uid_locked(daemon, client->uid) >= daemon->max_clients_per_user) {
		why = "too many clients of this user";
		r = -EUSERS;
	} else {
		client->id = ++daemon->next_client_id;
		client->key = client->id & CLIENT_KEY_MASK;
		client->joined_usec = uz_now_usec();
		uz_list_add_tail(&daemon->clients, &client->link);
		daemon->nr_clients++;
		r = 0;
	}
	pthread_mutex_unlock(&daemon->clients_lock);
	if (r < 0) {
		/* It owns the uffd, the ring, its /proc fds, index and group by now. */
		client = client_free(client);
		goto refuse;
	}

	client->sock_fd = h->fd;
	r = send_hello_reply(h->fd, seq, 0, client);
	if (r < 0) {
		uz_log(LOG_INFO, "client pid %d: sending HELLO_REPLY failed: %s", (int)client->pid,
		       strerror(-r));
		pthread_mutex_lock(&daemon->clients_lock);
		uz_list_del(&client->link);
		daemon->nr_clients--;
		pthread_mutex_unlock(&daemon->clients_lock);
		client_free(client); /* closes h->fd */
		h->fd = -1;
		handshake_free(h);
		return;
	}
	/* The ring fd went to the client; ours is no longer needed. */
	if (client->ring_fd >= 0)
		close(client->ring_fd);
	client->ring_fd = -1;

	{
		struct uz_log_client who = {.id = client->id,
					    .pid = client->pid,
					    .uid = client->uid,
					    .uid_set = true,
					    .comm = client->comm,
					    .cgroup = client->group->path};
		char budget[64];
		const char *fields[] = {budget, NULL};

		snprintf(budget, sizeof(budget), "UZSWAP_RESIDENT_MAX=%" PRIu64,
			 client->policy.resident_max);
		uz_log_event(LOG_INFO,
			     client->resume ? UZ_MESSAGE_CLIENT_RECOVERED : UZ_MESSAGE_CLIENT_JOINED,
			     &who, fields,
			     "client %" PRIu64 " %s: pid %d uid %d comm \"%s\" cgroup \"%s\"%s",
			     client->id,
			     client->resume ? "resumed after a daemon restart" : "joined",
			     (int)client->pid, (int)client->uid, client->comm, client->group->path,
			     (client->hello_flags & UZ_HELLO_SNAPSHOT) ? " (fork child, sharing its parent's evicted pages)"
			     : (client->hello_flags & UZ_HELLO_FORK_CHILD) ? " (fork child)"
									     : "");
	}
	h->fd = -1; /* the client owns the socket now */
	fault_thread_adopt(client->owner, client);
	handshake_free(h);
	return;

refuse:
	handshake_log_refusal(h, why, r);
	(void)send_hello_reply(h->fd, seq, r, NULL);
	close_fds(fds, nfds);
	handshake_free(h);
}

static int handshake_on_io(sd_event_source *s, int fd, uint32_t revents, void *userdata)
{
	handshake_complete(userdata);
	return 0;
}

int client_handshake_start(struct daemon *daemon, sd_event *event, int fd)
{
	struct handshake *h;
	int r;

	h = calloc(1, sizeof(*h));
	if (!h) {
		close(fd);
		return -ENOMEM;
	}
	uz_list_add_tail(&handshakes, &h->link);
	h->daemon = daemon;
	h->fd = fd;
	r = sd_event_add_io(event, &h->io, fd, EPOLLIN, handshake_on_io, h);
	if (r < 0)
		goto fail;
	r = sd_event_add_time_relative(event, &h->timer, CLOCK_MONOTONIC, UZ_HELLO_TIMEOUT_USEC, 0,
				       handshake_on_timeout, h);
	if (r < 0)
		goto fail;
	return 0;
fail:
	handshake_free(h);
	return r;
}

struct client_assign *client_assign_free(struct client_assign *assign)
{
	if (assign) {
		group_unref(assign->group);
		free(assign);
	}
	return NULL;
}

void client_set_policy(struct client *client, const struct uz_policy *policy)
{
	client->policy = *policy;
	client->high_pages = policy->resident_max / UZ_PAGE_SIZE;
	client->low_pages = policy->resident_low / UZ_PAGE_SIZE;
	if (client->low_pages > client->high_pages)
		client->low_pages = client->high_pages;
	client->reclaim_rescan_at = 0;
}

uint64_t client_managed_pages(const struct client *client)
{
	int64_t pages = stats_read(client->stats, UZ_STAT_resident_pages) +
			stats_read(client->stats, UZ_STAT_stored_pages) +
			stats_read(client->stats, UZ_STAT_on_disk_pages);

	return pages > 0 ? (uint64_t)pages : 0;
}

struct client *client_free(struct client *client)
{
	if (!client)
		return NULL;
	if (client->ring)
		munmap(client->ring, RING_SIZE);
	if (client->ring_fd >= 0)
		close(client->ring_fd);
	if (client->sock_fd >= 0)
		close(client->sock_fd);
	if (client->uffd >= 0)
		close(client->uffd);
	if (client->pagemap_fd >= 0)
		close(client->pagemap_fd);
	if (client->proc_fd >= 0)
		close(client->proc_fd);
	page_index_free(client->index);
	store_free(client->store);
	if (client->claimed)
		fork_snapshot_abandon(client->claimed); /* refused before it was adopted */
	family_unref(client->family, client->gone);
	stats_free(client->stats);
	group_unref(client->group);
	group_unref(client->assigned_group);
	client_assign_free(__atomic_exchange_n(&client->assign, NULL, __ATOMIC_ACQ_REL));
	free(client->regions);
	free(client->backlog);
	for (unsigned i = 0; client->requests && i < client->nr_requests; i++)
		free(client->requests[(client->requests_head + i) % UZ_CLIENT_REQUESTS_MAX].ranges);
	free(client->requests);
	free(client);
	return NULL;
}

/* ---------------------------------------------------------------------------
 * Regions: a sorted array of disjoint ranges; binary search.
 */

unsigned client_region_lower_bound(const struct client *client, uint64_t addr)
{
	unsigned lo = 0, hi = client->nr_regions;

	while (lo < hi) {
		unsigned mid = lo + (hi - lo) / 2;

		if (client->regions[mid].end <= addr)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo;
}

const struct client_region *client_region_find(const struct client *client, uint64_t addr)
{
	unsigned i = client_region_lower_bound(client, addr);

	if (i < client->nr_regions && client->regions[i].start <= addr)
		return &client->regions[i];
	return NULL;
}

static int region_insert_at(struct client *client, unsigned i, uint64_t start, uint64_t end)
{
	if (client->nr_regions == client->regions_capacity) {
		unsigned cap = client->regions_capacity ? client->regions_capacity * 2 : 16;
		struct client_region *regions = realloc(client->regions, cap * sizeof(*regions));

		if (!regions)
			return -ENOMEM;
		client->regions = regions;
		client->regions_capacity = cap;
	}
	memmove(&client->regions[i + 1], &client->regions[i],
		(client->nr_regions - i) * sizeof(client->regions[0]));
	client->regions[i] = (struct client_region){start, end};
	client->nr_regions++;
	client->registered_bytes += end - start;
	return 0;
}

/*
 * Adjacent regions are coalesced: a heap registered piece by piece as it
 * grows (each brk or mprotect step is a new VMA) stays one region.
 */
int client_region_add(struct client *client, uint64_t start, uint64_t end)
{
	unsigned i = client_region_lower_bound(client, start);
	bool joins_prev = i > 0 && client->regions[i - 1].end == start;
	bool joins_next = i < client->nr_regions && client->regions[i].start == end;

	if (i < client->nr_regions && client->regions[i].start < end)
		return -EEXIST;
	if (client->registered_bytes + (end - start) > UZ_CLIENT_REGISTERED_MAX)
		return -E2BIG;
	if (joins_prev && joins_next) {
		client->regions[i - 1].end = client->regions[i].end;
		memmove(&client->regions[i], &client->regions[i + 1],
			(client->nr_regions - i - 1) * sizeof(client->regions[0]));
		client->nr_regions--;
	} else if (joins_prev) {
		client->regions[i - 1].end = end;
	} else if (joins_next) {
		client->regions[i].start = start;
	} else {
		if (client->nr_regions >= client->daemon->max_regions_per_client)
			return -E2BIG;
		return region_insert_at(client, i, start, end);
	}
	client->registered_bytes += end - start;
	return 0;
}

void client_region_remove(struct client *client, uint64_t start, uint64_t end)
{
	unsigned i = client_region_lower_bound(client, start);

	while (i < client->nr_regions && client->regions[i].start < end) {
		struct client_region *r = &client->regions[i];
		uint64_t rs = r->start, re = r->end;

		if (rs < start && re > end) {
			/* split: keep [rs, start) here, insert [end, re) after */
			r->end = start;
			client->registered_bytes -= re - start;
			if (region_insert_at(client, i + 1, end, re) < 0)
				return; /* the tail is forgotten: it only loses tracking */
			return;
		}
		if (rs < start) {
			client->registered_bytes -= re - start;
			r->end = start;
			i++;
			continue;
		}
		if (re > end) {
			client->registered_bytes -= end - rs;
			r->start = end;
			return;
		}
		client->registered_bytes -= re - rs;
		memmove(r, r + 1, (client->nr_regions - i - 1) * sizeof(*r));
		client->nr_regions--;
	}
}

/* ---------------------------------------------------------------------------
 * /proc/PID/maps and pagemap
 */

static bool maps_name_is_anonymous(const char *name)
{
	return name[0] == 0 || strcmp(name, "[heap]") == 0 || strncmp(name, "[anon:", 6) == 0;
}

void client_maps_free(struct client_maps *maps)
{
	free(maps->lines);
	maps->lines = NULL;
	maps->count = 0;
}

int client_maps_read(const struct client *client, struct client_maps *out)
{
	_cleanup_free_ char *line = NULL;
	struct client_maps maps = {0};
	size_t line_cap = 0, capacity = 0;
	FILE *f;
	int fd, r = 0;

	fd = openat(client->proc_fd, "maps", O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return errno == ENOENT ? -ESRCH : -errno;
	f = fdopen(fd, "re");
	if (!f) {
		r = -errno;
		close(fd);
		return r;
	}
	while (getline(&line, &line_cap, f) > 0) {
		unsigned long lo, hi, inode;
		char perms[5];
		int consumed = 0;
		const char *name;

		if (sscanf(line, "%lx-%lx %4s %*x %*x:%*x %lu%n", &lo, &hi, perms, &inode,
			   &consumed) != 4)
			break;
		name = line + consumed;
		while (*name == ' ' || *name == '\t')
			name++;
		line[strcspn(line, "\n")] = 0;
		if (maps.count == capacity) {
			size_t cap = capacity ? capacity * 2 : 256;
			struct client_maps_line *lines = realloc(maps.lines, cap * sizeof(*lines));

			if (!lines) {
				r = -ENOMEM;
				break;
			}
			maps.lines = lines;
			capacity = cap;
		}
		maps.lines[maps.count++] = (struct client_maps_line){
		    .start = lo,
		    .end = hi,
		    .anonymous = perms[0] == 'r' && perms[1] == 'w' && perms[3] == 'p' &&
				 inode == 0 && maps_name_is_anonymous(name),
		};
	}
	fclose(f);
	if (r < 0) {
		client_maps_free(&maps);
		return r;
	}
	*out = maps;
	return 0;
}

/*
 * Is the mapping at addr registered with a userfaultfd?  The kernel has no
 * direct query, but UFFDIO_CONTINUE answers it without side effects on
 * private anonymous memory: it looks the VMA up first and fails with
 * ENOENT when the VMA has no userfaultfd context, and only then refuses
 * (EINVAL) because CONTINUE is for shmem and hugetlb only
 * (mm/userfaultfd.c: uffd_mfill_lock/validate_dst_vma, then mfill_atomic;
 * tests/kernel/uffd-continue-probe checks it on this kernel).  EAGAIN: a VM
 * event is pending, ask again later.  A kernel without CONTINUE (ENOTTY)
 * cannot tell; the check is then skipped.
 */
static int uffd_probe_registered(int uffd, uint64_t addr)
{
	struct uffdio_continue probe = {.range = {.start = addr, .len = UZ_PAGE_SIZE}};

	if (ioctl(uffd, UFFDIO_CONTINUE, &probe) == 0)
		return 0;
	switch (errno) {
	case EINVAL:
	case ENOTTY:
		return 0;
	case EAGAIN:
		/*
		 * An event (REMOVE, UNMAP, REMAP) waits on the uffd: the
		 * kernel answers every ioctl with EAGAIN until someone reads
		 * it, and a resuming client's uffd has waited for a daemon.
		 * Nothing to learn now; an ioctl on memory that is not
		 * registered fails later all the same (ENOENT).
		 */
		return 0;
	case ENOENT:
		return -ENOENT;
	default:
		return -errno;
	}
}

/* Index of the first line whose end is above addr. */
static size_t maps_lower_bound(const struct client_maps *maps, uint64_t addr)
{
	size_t lo = 0, hi = maps->count;

	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;

		if (maps->lines[mid].end <= addr)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo;
}

int client_maps_check(const struct client *client, int uffd, const struct client_maps *maps,
		      uint64_t start, uint64_t end)
{
	uint64_t cursor = start;

	if (start >= end || !uz_page_aligned(start) || !uz_page_aligned(end) ||
	    end > UZ_USER_ADDR_MAX)
		return -EINVAL;
	for (size_t i = maps_lower_bound(maps, start); i < maps->count; i++) {
		const struct client_maps_line *line = &maps->lines[i];
		int r;

		if (line->start > cursor || !line->anonymous)
			return -EINVAL; /* a hole, or memory that is not private anonymous rw */
		if (uffd >= 0) {
			r = uffd_probe_registered(uffd, cursor);
			if (r < 0)
				return r;
		}
		cursor = line->end;
		if (cursor >= end)
			return 0;
	}
	return -EINVAL;
}

int client_check_anon_range(const struct client *client, int uffd, uint64_t start, uint64_t end)
{
	struct client_maps maps;
	int r;

	if (start >= end || !uz_page_aligned(start) || !uz_page_aligned(end) ||
	    end > UZ_USER_ADDR_MAX)
		return -EINVAL;
	r = client_maps_read(client, &maps);
	if (r < 0)
		return r;
	r = client_maps_check(client, uffd, &maps, start, end);
	client_maps_free(&maps);
	return r;
}

/* Does a VmFlags line of smaps hold the two-letter flag? */
static bool vmflags_has(const char *flags, const char *flag)
{
	for (const char *p = flags; (p = strstr(p, flag)); p += 2)
		if ((p == flags || p[-1] == ' ') && (p[2] == ' ' || p[2] == '\n' || p[2] == 0))
			return true;
	return false;
}

int client_regions_from_kernel(struct client *client)
{
	_cleanup_free_ char *line = NULL;
	size_t line_cap = 0;
	unsigned long lo = 0, hi = 0;
	bool anon = false;
	FILE *f;
	int fd;

	fd = openat(client->proc_fd, "smaps", O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return errno == ENOENT ? -ESRCH : -errno;
	f = fdopen(fd, "re");
	if (!f) {
		int r = -errno;

		close(fd);
		return r;
	}
	client_region_remove(client, 0, UZ_USER_ADDR_MAX);
	while (getline(&line, &line_cap, f) > 0) {
		unsigned long a, b, inode;
		char perms[5];
		int consumed = 0;

		if (strncmp(line, "VmFlags:", 8) == 0) {
			/* The flags of the VMA whose header came last. */
			if (anon && vmflags_has(line + 8, "um") && hi > lo &&
			    !(lo < client->graveyard_end && hi > client->graveyard_start))
				(void)client_region_add(client, lo, hi);
			anon = false;
			continue;
		}
		if (sscanf(line, "%lx-%lx %4s %*x %*x:%*x %lu%n", &a, &b, perms, &inode, &consumed) !=
		    4)
			continue; /* a "Key: value" line */
		{
			char *name = line + consumed;

			while (*name == ' ' || *name == '\t')
				name++;
			name[strcspn(name, "\n")] = 0;
			lo = a;
			hi = b;
			anon = perms[0] == 'r' && perms[1] == 'w' && perms[3] == 'p' && inode == 0 &&
			       maps_name_is_anonymous(name);
		}
	}
	fclose(f);
	return 0;
}

#define PAGEMAP_PRESENT (1ULL << 63)
#define PAGEMAP_SWAPPED (1ULL << 62)

int client_pagemap_present(const struct client *client, uint64_t start, uint64_t end,
			   int (*fn)(uint64_t vpn, void *userdata), void *userdata)
{
	uint64_t entries[512];

	if (client->pagemap_fd < 0)
		return -ENODEV;
	for (uint64_t vpn = start >> UZ_PAGE_SHIFT; vpn < end >> UZ_PAGE_SHIFT;) {
		uint64_t n = uz_min((uint64_t)UZ_ARRAY_SIZE(entries), (end >> UZ_PAGE_SHIFT) - vpn);
		ssize_t got = pread(client->pagemap_fd, entries, n * sizeof(entries[0]),
				    (off_t)(vpn * sizeof(entries[0])));

		if (got < 0)
			return -errno;
		if (got == 0)
			return -EIO;
		n = (uint64_t)got / sizeof(entries[0]);
		for (uint64_t i = 0; i < n; i++) {
			if (entries[i] & (PAGEMAP_PRESENT | PAGEMAP_SWAPPED)) {
				int r = fn(vpn + i, userdata);

				if (r < 0)
					return r;
			}
		}
		vpn += n;
	}
	return 0;
}

bool client_process_alive(const struct client *client)
{
	char buf[512], *p;
	ssize_t n;
	int fd = openat(client->proc_fd, "stat", O_RDONLY | O_CLOEXEC);

	if (fd < 0)
		return errno != ENOENT && errno != ESRCH; /* unknown errors: assume alive */
	n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	if (n <= 0)
		return n < 0 ? errno != ESRCH : false;
	buf[n] = 0;
	p = strrchr(buf, ')');
	/* State Z (zombie) or X (dead): its memory is gone. */
	if (p && p[1] == ' ' && (p[2] == 'Z' || p[2] == 'X'))
		return false;
	/*
	 * The process exec'd: the address space our uffd and pagemap belong
	 * to is gone (its pagemap reads end at once), and with it every page
	 * we kept for it.  The new image joins afresh if it loads us.
	 */
	if (client->pagemap_fd >= 0) {
		uint64_t word;

		n = pread(client->pagemap_fd, &word, sizeof(word), 0);
		if (n == 0)
			return false;
	}
	return true;
}

int client_page_mapped(const struct client *client, uint64_t vpn)
{
	uint64_t word;
	ssize_t got;

	if (client->pagemap_fd < 0)
		return -ENODEV;
	got = pread(client->pagemap_fd, &word, sizeof(word), (off_t)(vpn * sizeof(word)));
	if (got != sizeof(word))
		return got < 0 ? -errno : -EIO;
	return (word & (PAGEMAP_PRESENT | PAGEMAP_SWAPPED)) ? 1 : 0;
}

const char *client_join_kind(const struct client *client)
{
	if (client->hello_flags & UZ_HELLO_RESUME)
		return "resumed";
	if (client->hello_flags & UZ_HELLO_SNAPSHOT)
		return "fork-shared";
	if (client->hello_flags & UZ_HELLO_FORK_CHILD)
		return "fork";
	return "new";
}

int client_send_fd(struct client *client, const void *msg, size_t size, int fd)
{
	union {
		struct cmsghdr align;
		char buf[CMSG_SPACE(sizeof(int))];
	} control;
	struct iovec iov = {.iov_base = (void *)msg, .iov_len = size};
	struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1};
	struct cmsghdr *cmsg;
	ssize_t n;

	memset(&control, 0, sizeof(control));
	mh.msg_control = control.buf;
	mh.msg_controllen = sizeof(control.buf);
	cmsg = CMSG_FIRSTHDR(&mh);
	cmsg->cmsg_level = SOL_SOCKET;
	cmsg->cmsg_type = SCM_RIGHTS;
	cmsg->cmsg_len = CMSG_LEN(sizeof(int));
	memcpy(CMSG_DATA(cmsg), &fd, sizeof(int));
	n = sendmsg(client->sock_fd, &mh, MSG_DONTWAIT | MSG_NOSIGNAL);
	if (n < 0)
		return -errno;
	return (size_t)n == size ? 0 : -EIO;
}

int client_send(struct client *client, const void *msg, size_t size)
{
	ssize_t n = send(client->sock_fd, msg, size, MSG_DONTWAIT | MSG_NOSIGNAL);

	if (n < 0)
		return -errno;
	if ((size_t)n != size)
		return -EIO;
	return 0;
}
