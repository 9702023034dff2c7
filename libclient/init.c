/* SPDX-License-Identifier: MIT */
/*
 * Joining and leaving uzswapd (docs/PROTOCOL.md sections 1 and 5).
 *
 * The constructor reads the environment, installs the fork handlers and
 * joins: it creates a full userfaultfd (never UFFD_USER_MODE_ONLY, or a
 * read(2) into an evicted buffer would fail with EFAULT), negotiates the
 * features the protocol needs (MOVE is required), maps and registers the
 * graveyard, connects with a short timeout, sends HELLO with the uffd and
 * our own pagemap, maps the ring the daemon answers with, and starts the
 * agent thread.  Any failure leaves the process unmanaged and says so in
 * exactly one line on stderr; the program itself never notices.
 *
 * When the process joins is the watcher's business (watcher.c): at once
 * with UZSWAP_JOIN_MIN=0 (in the constructor), else once it has that much
 * anonymous memory, or when the program calls the uzswap_* API.
 *
 * Leaving is the agent's job (SHUTDOWN or daemon loss), see agent.c.
 *
 * System calls that would be interposed (mmap, munmap, mremap) are made
 * with syscall(2) so that the library never re-enters its own hooks.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "config.h"
#include "client.h"
#include "store-layout.h"
#include "uffd-compat.h"
#include "util.h"

#ifndef USERFAULTFD_IOC_NEW
#define USERFAULTFD_IOC_NEW _IO(0xAA, 0x00)
#endif

#define UZ_CONNECT_TIMEOUT_MS	 1000
#define UZ_HELLO_TIMEOUT_MS	 5000
#define UZ_MIN_REGION_DEFAULT	 (64UL << 10)
#define UZ_JOIN_MIN_DEFAULT	 (32UL << 20)
#define UZ_SCAN_INTERVAL_DEFAULT 200 /* ms */
#define UZ_SCAN_INTERVAL_MIN	 10
#define UZ_SCAN_INTERVAL_MAX	 60000
#define UZ_RECONNECT_TIMEOUT_DEFAULT 60 /* seconds a client waits for a new daemon */

#ifndef PR_SET_VMA
#define PR_SET_VMA	     0x53564d41
#define PR_SET_VMA_ANON_NAME 0
#endif

/* Features the protocol cannot work without, and those it takes when offered. */
#define UZ_FEATURES_REQUIRED                                                                       \
	(UFFD_FEATURE_EVENT_REMAP | UFFD_FEATURE_EVENT_REMOVE | UFFD_FEATURE_EVENT_UNMAP |         \
	 UFFD_FEATURE_MOVE)
#define UZ_FEATURES_OPTIONAL                                                                       \
	(UFFD_FEATURE_THREAD_ID | UFFD_FEATURE_EXACT_ADDRESS | UFFD_FEATURE_POISON |               \
	 UFFD_FEATURE_WP_ASYNC)

struct uz_client uz_client = {
    .uffd = -1,
    .sock = -1,
    .ring_fd = -1,
    .store_fd = -1,
    .arena_fd = -1,
    .min_region = UZ_MIN_REGION_DEFAULT,
    .reconnect_timeout_s = UZ_RECONNECT_TIMEOUT_DEFAULT,
    .join_min = UZ_JOIN_MIN_DEFAULT,
    .scan_interval_ms = UZ_SCAN_INTERVAL_DEFAULT,
};

/* The library's own mappings (tables, buffers, graveyard), left out of every scan. */
static pthread_mutex_t own_lock = PTHREAD_MUTEX_INITIALIZER;
static struct uz_register_range own_maps[UZ_OWN_MAX]; /* under own_lock */
static size_t nr_own;

void *uz_raw_mmap(void *addr, size_t len, int prot, int flags, int fd, off_t off)
{
	return (void *)syscall(SYS_mmap, addr, len, prot, flags, fd, off);
}

int uz_raw_munmap(void *addr, size_t len)
{
	return (int)syscall(SYS_munmap, addr, len);
}

void *uz_raw_mremap(void *old, size_t old_len, size_t new_len, int flags, void *new_addr)
{
	return (void *)syscall(SYS_mremap, old, old_len, new_len, flags, new_addr);
}

void *uz_own_mmap(size_t len)
{
	void *p =
	    uz_raw_mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	if (p == MAP_FAILED)
		return NULL;
	/* Visible in /proc/PID/maps, and never merged with a program's mapping. */
	(void)prctl(PR_SET_VMA, PR_SET_VMA_ANON_NAME, (unsigned long)p, len,
		    (unsigned long)"uzswap");
	pthread_mutex_lock(&own_lock);
	if (nr_own < UZ_OWN_MAX)
		own_maps[nr_own++] = (struct uz_register_range){(uintptr_t)p, len};
	pthread_mutex_unlock(&own_lock);
	return p;
}

void uz_attr_own_stack(pthread_attr_t *attr, void **stack, size_t size)
{
	if (!*stack)
		*stack = uz_own_mmap(size);
	if (*stack)
		pthread_attr_setstack(attr, *stack, size);
	else
		pthread_attr_setstacksize(attr, size);
}

void uz_own_munmap(void *addr, size_t len)
{
	pthread_mutex_lock(&own_lock);
	for (size_t i = 0; i < nr_own; i++) {
		if (own_maps[i].start == (uintptr_t)addr) {
			own_maps[i] = own_maps[--nr_own];
			break;
		}
	}
	pthread_mutex_unlock(&own_lock);
	uz_raw_munmap(addr, len);
}

size_t uz_own_snapshot(struct uz_register_range *out, size_t max)
{
	size_t n;

	pthread_mutex_lock(&own_lock);
	n = uz_min(nr_own, max);
	memcpy(out, own_maps, n * sizeof(*out));
	pthread_mutex_unlock(&own_lock);
	return n;
}

void uz_own_reset_lock(void)
{
	pthread_mutex_init(&own_lock, NULL);
}

/* One line on stderr, written in one write(2), no stdio and no malloc. */
void uz_notice(const char *fmt, ...)
{
	char line[512];
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(line, sizeof(line) - 1, fmt, ap);
	va_end(ap);
	if (n < 0)
		return;
	if ((size_t)n > sizeof(line) - 2)
		n = sizeof(line) - 2;
	line[n++] = '\n';
	(void)!write(STDERR_FILENO, line, n);
}

/* "1048576", "512K", "4M", "1G" (also "4MiB", "4mb", "0"); false on a bad value. */
static bool parse_size(const char *s, size_t *out)
{
	unsigned long long value;
	char *end;

	errno = 0;
	value = strtoull(s, &end, 10);
	if (errno || end == s)
		return false;
	switch (*end) {
	case 'k':
	case 'K':
		value <<= 10;
		end++;
		break;
	case 'm':
	case 'M':
		value <<= 20;
		end++;
		break;
	case 'g':
	case 'G':
		value <<= 30;
		end++;
		break;
	default:
		break;
	}
	if (*end == 'i')
		end++;
	if (*end == 'b' || *end == 'B')
		end++;
	if (*end)
		return false;
	*out = value;
	return true;
}

static void read_environment(void)
{
	const char *value;
	size_t size;

	value = getenv("UZSWAP_DISABLE");
	uz_client.disabled = value && *value && strcmp(value, "0") != 0;

	value = getenv("UZSWAP_MIN_REGION");
	if (value && parse_size(value, &size))
		uz_client.min_region =
		    uz_max((size + UZ_PAGE_SIZE - 1) & UZ_PAGE_MASK, (size_t)UZ_PAGE_SIZE);
	value = getenv("UZSWAP_JOIN_MIN");
	if (value && parse_size(value, &size))
		uz_client.join_min = size;
	value = getenv("UZSWAP_SCAN_INTERVAL");
	if (value && parse_size(value, &size) && size >= UZ_SCAN_INTERVAL_MIN &&
	    size <= UZ_SCAN_INTERVAL_MAX)
		uz_client.scan_interval_ms = (unsigned)size;

	value = getenv("UZSWAP_RECONNECT_TIMEOUT");
	if (value && *value) {
		char *end;
		unsigned long seconds = strtoul(value, &end, 10);

		if (*end == 0 && seconds <= 86400UL * 365)
			uz_client.reconnect_timeout_s = (unsigned)seconds;
	}

	value = getenv("UZSWAP_SOCKET");
	if (value && *value) {
		snprintf(uz_client.socket_path, sizeof(uz_client.socket_path), "%s", value);
	} else if (geteuid() == 0) {
		snprintf(uz_client.socket_path, sizeof(uz_client.socket_path), "%s/uzswapd.sock",
			 UZSWAP_RUNDIR);
	} else {
		value = getenv("XDG_RUNTIME_DIR");
		if (value && *value)
			snprintf(uz_client.socket_path, sizeof(uz_client.socket_path),
				 "%s/uzswap/uzswapd.sock", value);
	}
}

/* A full userfaultfd: /dev/userfaultfd first, then the system call. */
static int uffd_open(int *out)
{
	int devfd, fd, saved;

	devfd = open("/dev/userfaultfd", O_RDWR | O_CLOEXEC);
	if (devfd >= 0) {
		fd = ioctl(devfd, USERFAULTFD_IOC_NEW, O_CLOEXEC | O_NONBLOCK);
		close(devfd);
		if (fd >= 0) {
			*out = fd;
			return 0;
		}
	}
	fd = syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);
	if (fd >= 0) {
		*out = fd;
		return 0;
	}
	saved = errno;
	/* Would a user-mode-only one work?  Then say precisely why we refuse. */
	fd = syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK | UFFD_USER_MODE_ONLY);
	if (fd >= 0) {
		close(fd);
		return -EPERM;
	}
	return -saved;
}

/*
 * Create the uffd and negotiate.  A uffd takes UFFDIO_API once, so the
 * supported set is probed on a throwaway one first.
 */
int uz_uffd_create(int *out, uint64_t *features_out, const char **reason)
{
	struct uffdio_api api = {.api = UFFD_API};
	uint64_t wanted;
	int fd, r;

	r = uffd_open(&fd);
	if (r < 0) {
		*reason = r == -EPERM
			      ? "only a user-mode-only userfaultfd is allowed: system calls "
				"on evicted buffers would fail"
			      : "cannot create a userfaultfd";
		return r;
	}
	if (ioctl(fd, UFFDIO_API, &api) < 0) {
		r = -errno;
		close(fd);
		*reason = "UFFDIO_API failed";
		return r;
	}
	close(fd);
	if ((api.features & UZ_FEATURES_REQUIRED) != UZ_FEATURES_REQUIRED) {
		*reason = "the kernel's userfaultfd lacks MOVE or REMAP/REMOVE/UNMAP events";
		return -EOPNOTSUPP;
	}
	wanted = UZ_FEATURES_REQUIRED | (api.features & UZ_FEATURES_OPTIONAL);

	r = uffd_open(&fd);
	if (r < 0) {
		*reason = "cannot create a userfaultfd";
		return r;
	}
	api = (struct uffdio_api){.api = UFFD_API, .features = wanted};
	if (ioctl(fd, UFFDIO_API, &api) < 0) {
		r = -errno;
		close(fd);
		*reason = "UFFDIO_API failed";
		return r;
	}
	*out = fd;
	*features_out = api.features;
	return 0;
}

static int register_missing(int uffd, void *start, size_t len)
{
	struct uffdio_register reg = {
	    .range = {.start = (uintptr_t)start, .len = len},
	    .mode = UFFDIO_REGISTER_MODE_MISSING,
	};

	return ioctl(uffd, UFFDIO_REGISTER, &reg) < 0 ? -errno : 0;
}

static int socket_connect(const char *path, int *out)
{
	struct sockaddr_un addr = {.sun_family = AF_UNIX};
	struct timespec start, now;
	int fd, r;

	if (!*path)
		return -ENOENT;
	if (strlen(path) >= sizeof(addr.sun_path))
		return -ENAMETOOLONG;
	memcpy(addr.sun_path, path, strlen(path));

	fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (fd < 0)
		return -errno;
	clock_gettime(CLOCK_MONOTONIC, &start);
	for (;;) {
		if (connect(fd, (struct sockaddr *)&addr, sizeof(addr)) == 0)
			break;
		r = -errno;
		/* A unix socket with a full backlog says EAGAIN: retry briefly. */
		if (r != -EAGAIN && r != -EINTR && r != -EINPROGRESS)
			goto fail;
		if (r == -EINPROGRESS) {
			struct pollfd pfd = {.fd = fd, .events = POLLOUT};
			int error = 0;
			socklen_t len = sizeof(error);

			if (poll(&pfd, 1, UZ_CONNECT_TIMEOUT_MS) <= 0) {
				r = -ETIMEDOUT;
				goto fail;
			}
			getsockopt(fd, SOL_SOCKET, SO_ERROR, &error, &len);
			if (error) {
				r = -error;
				goto fail;
			}
			break;
		}
		clock_gettime(CLOCK_MONOTONIC, &now);
		if ((now.tv_sec - start.tv_sec) * 1000 + (now.tv_nsec - start.tv_nsec) / 1000000 >
		    UZ_CONNECT_TIMEOUT_MS) {
			r = -ETIMEDOUT;
			goto fail;
		}
		usleep(1000);
	}
	*out = fd;
	return 0;
fail:
	close(fd);
	return r;
}

/* HELLO with fds [uffd, pagemap?, store, ring, arena] (the last three for a resume). */
static int hello_send(int sock, int uffd, int pagemap, uint32_t flags)
{
	struct uz_msg_hello hello = {
	    .header =
		{
		    .magic = UZ_PROTO_MAGIC,
		    .version = UZ_PROTO_VERSION,
		    .type = UZ_MSG_HELLO,
		    .size = sizeof(hello),
		    .seq = 0,
		},
	    .uffd_features = uz_client.uffd_features,
	    .graveyard_start = (uintptr_t)uz_client.graveyard,
	    .graveyard_len = UZ_EVICT_BATCH_MAX * UZ_PAGE_SIZE,
	    .page_size = UZ_PAGE_SIZE,
	    .flags = flags | (pagemap >= 0 ? UZ_HELLO_HAS_PAGEMAP : 0),
	};
	union {
		char buf[CMSG_SPACE(5 * sizeof(int))];
		struct cmsghdr align;
	} control = {0};
	struct iovec iov = {.iov_base = &hello, .iov_len = sizeof(hello)};
	struct msghdr msg = {
	    .msg_iov = &iov,
	    .msg_iovlen = 1,
	    .msg_control = control.buf,
	};
	int fds[5], nfds = 0;
	struct cmsghdr *cmsg;

	fds[nfds++] = uffd;
	if (pagemap >= 0)
		fds[nfds++] = pagemap;
	if (flags & UZ_HELLO_RESUME) {
		fds[nfds++] = uz_client.store_fd;
		fds[nfds++] = uz_client.ring_fd;
		fds[nfds++] = uz_client.arena_fd;
	} else if (flags & UZ_HELLO_SNAPSHOT) {
		fds[nfds++] = uz_client.store_fd;
		fds[nfds++] = uz_client.arena_fd;
	}
	prctl(PR_GET_NAME, hello.comm);
	msg.msg_controllen = CMSG_SPACE(nfds * sizeof(int));
	cmsg = CMSG_FIRSTHDR(&msg);
	cmsg->cmsg_level = SOL_SOCKET;
	cmsg->cmsg_type = SCM_RIGHTS;
	cmsg->cmsg_len = CMSG_LEN(nfds * sizeof(int));
	memcpy(CMSG_DATA(cmsg), fds, nfds * sizeof(int));

	if (sendmsg(sock, &msg, MSG_NOSIGNAL) != (ssize_t)sizeof(hello))
		return errno ? -errno : -EIO;
	return 0;
}

/*
 * Wait for HELLO_REPLY.  On success of a fresh join fds[] are the ring and
 * read-only descriptors of the store and the arena; a resumed join carries
 * none (all -1, and UZ_HELLO_REPLY_RESUMED in reply->flags).
 */
static int hello_receive(int sock, struct uz_msg_hello_reply *reply, int fds[3])
{
	union {
		char buf[CMSG_SPACE(4 * sizeof(int))];
		struct cmsghdr align;
	} control;
	struct iovec iov = {.iov_base = reply, .iov_len = sizeof(*reply)};
	struct msghdr msg = {
	    .msg_iov = &iov,
	    .msg_iovlen = 1,
	    .msg_control = control.buf,
	    .msg_controllen = sizeof(control.buf),
	};
	struct pollfd pfd = {.fd = sock, .events = POLLIN};
	struct cmsghdr *cmsg;
	unsigned nfds = 0;
	ssize_t n;

	fds[0] = fds[1] = fds[2] = -1;

	for (;;) {
		int r = poll(&pfd, 1, UZ_HELLO_TIMEOUT_MS);

		if (r > 0)
			break;
		if (r == 0)
			return -ETIMEDOUT;
		if (errno != EINTR)
			return -errno;
	}
	n = recvmsg(sock, &msg, MSG_CMSG_CLOEXEC | MSG_DONTWAIT);
	if (n < 0)
		return -errno;
	for (cmsg = CMSG_FIRSTHDR(&msg); cmsg; cmsg = CMSG_NXTHDR(&msg, cmsg)) {
		if (cmsg->cmsg_level != SOL_SOCKET || cmsg->cmsg_type != SCM_RIGHTS)
			continue;
		for (size_t i = 0; i < (cmsg->cmsg_len - CMSG_LEN(0)) / sizeof(int); i++) {
			int received;

			memcpy(&received, CMSG_DATA(cmsg) + i * sizeof(int), sizeof(int));
			if (nfds < 3)
				fds[nfds++] = received;
			else
				close(received);
		}
	}
	if (n == 0) {
		n = -ECONNRESET;
		goto fail;
	}
	if (n != sizeof(*reply) || (msg.msg_flags & MSG_TRUNC) ||
	    reply->header.magic != UZ_PROTO_MAGIC || reply->header.version != UZ_PROTO_VERSION ||
	    reply->header.type != UZ_MSG_HELLO_REPLY || reply->header.size != sizeof(*reply)) {
		n = -EPROTO;
		goto fail;
	}
	if (reply->status < 0) {
		n = reply->status;
		goto fail;
	}
	if ((reply->flags & UZ_HELLO_REPLY_RESUMED) ? nfds != 0 : nfds != 3) {
		n = -EPROTO;
		goto fail;
	}
	return 0;
fail:
	for (unsigned i = 0; i < nfds; i++) {
		close(fds[i]);
		fds[i] = -1;
	}
	return (int)n;
}

/*
 * Join the daemon.  Caller holds range_lock (or is the constructor or the
 * fork child, single-threaded as far as the library is concerned).  On
 * failure prints the one line and leaves everything closed; the graveyard
 * mapping is kept for a later join.
 */
/*
 * The join itself.  flags: UZ_HELLO_FORK_CHILD, and UZ_HELLO_SNAPSHOT with
 * uz_client.store_fd the snapshot and uz_client.arena_fd the inherited
 * arena (the HELLO carries both; the reply's fresh descriptors replace
 * them).
 */
/*
 * A fork child must not register its holes before the daemon serves its
 * uffd: between the two nobody would notice the daemon dying, and the
 * thread would wait on its first fault for ever (pthread_create of the
 * agent touches the heap; glibc blocks signals meanwhile, so no timer can
 * come to the rescue).  The daemon serves a client from the moment it
 * adopts it, and adopting the snapshot makes the store ours (owner_pid, no
 * UZ_STORE_SNAPSHOT flag: fault_client_adopt_snapshot): wait for that, or for
 * the daemon to hang up.  The store's header is mapped read-only to look.
 */
static int snapshot_adopted_wait(int sock)
{
	const struct uz_store_header *h;
	uint32_t pid = (uint32_t)getpid();
	int r = -ETIMEDOUT;

	h = uz_raw_mmap(NULL, UZ_PAGE_SIZE, PROT_READ, MAP_SHARED, uz_client.store_fd, 0);
	if (h == MAP_FAILED)
		return -errno;
	for (unsigned waited_ms = 0; waited_ms < UZ_HELLO_TIMEOUT_MS; waited_ms++) {
		struct pollfd pfd = {.fd = sock, .events = POLLRDHUP};

		if (!(__atomic_load_n(&h->flags, __ATOMIC_ACQUIRE) & UZ_STORE_SNAPSHOT) &&
		    __atomic_load_n(&h->owner_pid, __ATOMIC_RELAXED) == pid) {
			r = 0;
			break;
		}
		if (poll(&pfd, 1, 1) > 0 && (pfd.revents & (POLLRDHUP | POLLHUP | POLLERR))) {
			r = -ECONNRESET;
			break;
		}
	}
	uz_raw_munmap((void *)h, UZ_PAGE_SIZE);
	return r;
}

static uint64_t join_now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/*
 * Test only: with UZSWAP_TEST_FORK_CHILD_PAUSE_MS=N a fork child waits N ms
 * once it has registered its holes, before its agent starts, then reads a
 * byte at UZSWAP_TEST_FORK_CHILD_TOUCH (hex, set by the program before it
 * forks): the moment a daemon killed then leaves the child waiting on a
 * fault with no agent (tests/integration, fork-daemon-killed; rescue.c).
 */
static void fork_child_test_pause(void)
{
	const char *pause = getenv("UZSWAP_TEST_FORK_CHILD_PAUSE_MS");
	const char *touch = getenv("UZSWAP_TEST_FORK_CHILD_TOUCH");
	uint64_t until;

	if (!pause || !*pause)
		return;
	uz_notice("libuzswap: test: fork child paused before its agent starts");
	until = join_now_ms() + strtoull(pause, NULL, 10);
	while (join_now_ms() < until)
		usleep(1000); /* the rescue timer's ticks end a sleep early */
	if (touch && *touch)
		(void)*(volatile const char *)(uintptr_t)strtoull(touch, NULL, 16);
}

/* The snapshot join's retries (uz_client_join_snapshot): one notice, not one per try. */
static bool join_quiet;

static int client_join(uint32_t flags)
{
	struct uz_msg_hello_reply reply = {0};
	const char *reason = NULL;
	uint64_t features = 0;
	int uffd = -1, sock = -1, pagemap = -1, fds[3] = {-1, -1, -1}, ring_fd;
	void *ring = MAP_FAILED;
	int r;

	r = uz_uffd_create(&uffd, &features, &reason);
	if (r < 0)
		goto fail_notice;
	uz_client.uffd_features = features;

	if (!uz_client.graveyard) {
		void *grave = uz_own_mmap(UZ_EVICT_BATCH_MAX * UZ_PAGE_SIZE);

		if (!grave) {
			r = -errno;
			reason = "cannot map the graveyard";
			goto fail_notice;
		}
		uz_client.graveyard = grave;
	} else {
		/* Inherited from the parent: drop whatever pages it still has. */
		madvise(uz_client.graveyard, UZ_EVICT_BATCH_MAX * UZ_PAGE_SIZE, MADV_DONTNEED);
	}
	r = register_missing(uffd, uz_client.graveyard, UZ_EVICT_BATCH_MAX * UZ_PAGE_SIZE);
	if (r < 0) {
		reason = "cannot register the graveyard";
		goto fail_notice;
	}

	pagemap = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);

	r = socket_connect(uz_client.socket_path, &sock);
	if (r < 0)
		goto fail_unreachable;
	r = hello_send(sock, uffd, pagemap, flags);
	if (r < 0)
		goto fail_unreachable;
	if (pagemap >= 0)
		close(pagemap);
	pagemap = -1;

	r = hello_receive(sock, &reply, fds);
	ring_fd = fds[0];
	if (r == -ETIMEDOUT || r == -ECONNRESET || r == -EPIPE)
		goto fail_unreachable;
	if (r < 0) {
		reason = r == -EPROTO ? "bad HELLO_REPLY" : "refused";
		goto fail_refused;
	}
	if (reply.batch_max == 0 || reply.batch_max > UZ_EVICT_BATCH_MAX ||
	    reply.ring_size != (uint64_t)UZ_RING_PAGES * UZ_PAGE_SIZE) {
		r = -EPROTO;
		reason = "bad HELLO_REPLY";
		goto fail_refused;
	}
	ring = uz_raw_mmap(NULL, reply.ring_size, PROT_READ | PROT_WRITE, MAP_SHARED, ring_fd, 0);
	if (ring == MAP_FAILED) {
		r = -errno;
		reason = "cannot map the ring";
		goto fail_refused;
	}

	/* From here on the agent is the only reader of the socket. */
	if (fcntl(sock, F_SETFL, fcntl(sock, F_GETFL) & ~O_NONBLOCK) < 0) {
		r = -errno;
		reason = "fcntl";
		goto fail_refused;
	}

	uz_client.uffd = uffd;
	uz_client.sock = sock;
	uz_client.ring = ring;
	uz_client.ring_fd = fds[0];
	if (uz_client.store_fd >= 0)
		close(uz_client.store_fd); /* the snapshot: the reply's is a copy of it */
	if (uz_client.arena_fd >= 0)
		close(uz_client.arena_fd);
	uz_client.store_fd = fds[1];
	uz_client.arena_fd = fds[2];
	uz_client.ring_size = reply.ring_size;
	uz_client.batch_max = uz_min(reply.batch_max, (uint32_t)UZ_EVICT_BATCH_MAX);
	uz_client.client_id = reply.client_id;
	atomic_store(&uz_client.state, UZ_CLIENT_MANAGED);
	/*
	 * A fork child with its parent's snapshot: its holes are served from
	 * now on (the daemon holds the uffd), so register them before
	 * pthread_create touches the heap (fork.c).
	 */
	if (flags & UZ_HELLO_SNAPSHOT) {
		r = snapshot_adopted_wait(sock);
		if (r < 0) {
			/*
			 * The daemon went away before it served us: undo, but
			 * keep the store and the arena (the snapshot, fds[1]
			 * and [2]) for the next daemon.
			 */
			atomic_store(&uz_client.state, UZ_CLIENT_OFF);
			uz_client.uffd = uz_client.sock = uz_client.ring_fd = -1;
			uz_client.ring = NULL;
			fds[1] = fds[2] = -1;
			goto fail_unreachable;
		}
		/* Holes from here on, and no agent yet: rescue.c. */
		uz_rescue_arm();
		uz_ranges_register_inherited();
		fork_child_test_pause();
	}

	r = uz_agent_start(flags & UZ_HELLO_SNAPSHOT);
	uz_rescue_disarm();
	if (r < 0) {
		atomic_store(&uz_client.state, UZ_CLIENT_OFF);
		uz_client.uffd = uz_client.sock = -1;
		uz_client.ring_fd = uz_client.store_fd = uz_client.arena_fd = -1;
		uz_client.ring = NULL;
		reason = "cannot start the agent thread";
		goto fail_refused;
	}
	uz_client.joined_once = true;
	return 0;

fail_unreachable:
	if (join_quiet)
		goto fail;
	uz_notice("libuzswap: uzswapd not reachable at %s (%s); running unmanaged",
		  *uz_client.socket_path ? uz_client.socket_path
					 : "$XDG_RUNTIME_DIR/uzswap/uzswapd.sock",
		  *uz_client.socket_path ? strerror(-r) : "XDG_RUNTIME_DIR is not set");
	goto fail;
fail_refused:
	uz_notice("libuzswap: uzswapd at %s: %s (%s); running unmanaged", uz_client.socket_path,
		  reason, strerror(-r));
	goto fail;
fail_notice:
	uz_notice("libuzswap: %s (%s); running unmanaged", reason, strerror(-r));
fail:
	if (ring != MAP_FAILED)
		uz_raw_munmap(ring, reply.ring_size);
	for (int i = 0; i < 3; i++)
		if (fds[i] >= 0)
			close(fds[i]);
	if (pagemap >= 0)
		close(pagemap);
	if (sock >= 0)
		close(sock);
	if (uffd >= 0)
		close(uffd); /* unregisters the graveyard */
	return r;
}

int uz_client_join(bool fork_child)
{
	return client_join(fork_child ? UZ_HELLO_FORK_CHILD : 0);
}

/*
 * The fork child's join with its parent's snapshot.  A daemon that died
 * since it made the snapshot is waited for, as the agent waits for one
 * (UZSWAP_RECONNECT_TIMEOUT): the next daemon adopts the snapshot from its
 * store, which the child holds.  Only a refusal, or no daemon in time,
 * makes the caller fail closed.
 */
int uz_client_join_snapshot(int snapshot_fd)
{
	uint64_t start = join_now_ms(), backoff_ms = 5;
	unsigned timeout_s = uz_client.reconnect_timeout_s;
	int r;

	uz_client.store_fd = snapshot_fd;
	{
		/*
		 * Test only: UZSWAP_TEST_FORK_CHILD_HELLO_DELAY_MS=N, the child
		 * joins N ms late, as a child slow to get a CPU would, while its
		 * parent goes on (itest forkshare-dropafter).  Sleeping touches
		 * none of the child's holes.
		 */
		const char *late = getenv("UZSWAP_TEST_FORK_CHILD_HELLO_DELAY_MS");

		if (late && *late)
			usleep((useconds_t)(strtoul(late, NULL, 10) % 10001UL * 1000));
	}
	for (;;) {
		/* A try that failed after the reply left the store (the same memfd) in store_fd. */
		r = client_join(UZ_HELLO_FORK_CHILD | UZ_HELLO_SNAPSHOT);
		if (r >= 0)
			break;
		if (r != -ECONNREFUSED && r != -ENOENT && r != -ETIMEDOUT && r != -ECONNRESET &&
		    r != -EPIPE && r != -EAGAIN && r != -EINTR)
			break;
		if (timeout_s && join_now_ms() - start >= (uint64_t)timeout_s * 1000)
			break;
		if (!join_quiet)
			uz_notice("libuzswap: fork child: no uzswapd at %s; waiting for it (%s%u s) "
				  "with its parent's evicted pages",
				  uz_client.socket_path, timeout_s ? "up to " : "no limit, ",
				  timeout_s);
		join_quiet = true;
		usleep((useconds_t)(backoff_ms * 1000));
		backoff_ms = uz_min(backoff_ms * 2, (uint64_t)250);
	}
	if (join_quiet && r >= 0)
		uz_notice("libuzswap: fork child: joined uzswapd after %llu ms",
			  (unsigned long long)(join_now_ms() - start));
	join_quiet = false;
	return r;
}

/*
 * The agent, after losing the daemon: connect to whichever daemon now
 * listens on the socket and resume with what we kept (uffd, store, ring).
 * 0 when resumed (the connection is live again); -ECONNREFUSED, -ENOENT,
 * -ETIMEDOUT and friends when no daemon is there yet (try again); another
 * status < 0 from a daemon that refused our state (fail closed).
 */
int uz_client_rejoin(void)
{
	int sock, r = uz_client_rejoin_socket(&sock);

	if (r == 0)
		uz_conn_resume(sock);
	return r;
}

/*
 * The re-join itself: the new connection in *sock_out, nothing else of the
 * connection's state touched (the fork child's rescue handler runs it,
 * rescue.c: system calls only).
 */
int uz_client_rejoin_socket(int *sock_out)
{
	struct uz_msg_hello_reply reply = {0};
	int sock = -1, pagemap, fds[3], r;

	r = socket_connect(uz_client.socket_path, &sock);
	if (r < 0)
		return r;
	pagemap = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
	r = hello_send(sock, uz_client.uffd, pagemap, UZ_HELLO_RESUME);
	if (pagemap >= 0)
		close(pagemap);
	if (r == 0)
		r = hello_receive(sock, &reply, fds);
	if (r == 0 && !(reply.flags & UZ_HELLO_REPLY_RESUMED)) {
		for (int i = 0; i < 3; i++)
			close(fds[i]);
		r = -EPROTO;
	}
	if (r == 0 && fcntl(sock, F_SETFL, fcntl(sock, F_GETFL) & ~O_NONBLOCK) < 0)
		r = -errno;
	if (r < 0) {
		close(sock);
		/* A daemon that went away mid-handshake is one not there yet. */
		return r == -ECONNRESET || r == -EPIPE ? -ECONNREFUSED : r;
	}
	uz_client.client_id = reply.client_id;
	*sock_out = sock;
	return 0;
}

/*
 * Leave the daemon: called by the agent thread only, after it failed every
 * waiter (uz_conn_close_begin), with range_lock held.  With the daemon alive
 * (SHUTDOWN: every page is back) every range is unregistered and the
 * SHUTDOWN_ACK sent; with the daemon gone the agent has already dropped its
 * uffd reference, which unregistered everything.
 */
void uz_client_leave(bool daemon_alive)
{
	if (daemon_alive) {
		struct uffdio_range grave = {
		    .start = (uintptr_t)uz_client.graveyard,
		    .len = UZ_EVICT_BATCH_MAX * UZ_PAGE_SIZE,
		};
		struct uz_msg_header ack = {0};

		uz_ranges_unregister_all_locked();
		ioctl(uz_client.uffd, UFFDIO_UNREGISTER, &grave);
		uz_conn_send(&ack, sizeof(ack), UZ_MSG_SHUTDOWN_ACK);
	}
	uz_ranges_clear_locked();
	uz_conn_close_finish();
	if (uz_client.uffd >= 0)
		close(uz_client.uffd);
	uz_client.uffd = -1;
	if (uz_client.ring)
		uz_raw_munmap(uz_client.ring, uz_client.ring_size);
	uz_client.ring = NULL;
	if (uz_client.ring_fd >= 0)
		close(uz_client.ring_fd);
	if (uz_client.store_fd >= 0)
		close(uz_client.store_fd);
	if (uz_client.arena_fd >= 0)
		close(uz_client.arena_fd);
	uz_client.ring_fd = uz_client.store_fd = uz_client.arena_fd = -1;
	atomic_store(&uz_client.state, UZ_CLIENT_OFF);
}

/*
 * Join unless this process already tried: one attempt (and at most one
 * notice) per process.  Caller holds range_lock.
 */
int uz_client_join_once(bool fork_child)
{
	if (uz_client_managed())
		return 0;
	if (uz_client.join_tried || uz_client.disabled || !atomic_load(&uz_client.ready))
		return -ENOTCONN;
	uz_client.join_tried = true;
	return uz_client_join(fork_child);
}

void uz_client_init(void)
{
	static atomic_flag once = ATOMIC_FLAG_INIT;

	if (atomic_flag_test_and_set(&once))
		return;
	read_environment();
	if (!uz_client.disabled) {
		uz_fork_install();
		if (uz_client.join_min == 0) {
			uz_ranges_lock();
			uz_client.join_tried = true;
			uz_client_join(false);
			uz_ranges_unlock();
		}
		/* Without a daemon now there is nothing for the watcher to do. */
		if (uz_client.join_min != 0 || uz_client_managed())
			uz_watcher_start(false, false);
	}
	atomic_store(&uz_client.ready, true);
}

__attribute__((constructor)) static void uz_constructor(void)
{
	uz_client_init();
}
