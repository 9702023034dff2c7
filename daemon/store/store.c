// SPDX-License-Identifier: MIT
/*
 * The client store: what uzswapd knows about a client's pages, kept in a
 * memfd the client holds so that it outlives the daemon.
 *
 * Why a memfd the client holds.  When the last reference to a userfaultfd
 * goes, the kernel unregisters its ranges and every evicted page reads as
 * zeros; when the daemon dies, its private memory goes with it.  The client
 * keeps its uffd, and with this store (and the arena of its compressed
 * pages, daemon/pool) it keeps everything the next daemon needs to serve
 * its faults: the page index, the uffd messages read but not yet applied,
 * the eviction batch in flight.  A daemon crash costs the client a pause,
 * not its pages.
 *
 * Who may write it.  The memfd is created by the daemon, mode 0600, and the
 * client is given a read-only descriptor (a reopen of /proc/self/fd/N with
 * O_RDONLY).  A client of another uid cannot get a writable one: reopening
 * through /proc needs write permission on the inode, which only its owner
 * (the daemon's uid) has; ftruncate and writes need FMODE_WRITE.  A client
 * running as root or as the daemon's uid could write it, but such a client
 * can ptrace the daemon anyway.  Recovery still treats the contents as
 * untrusted (bounds, depth, no cell reached twice): garbage costs the client
 * its own pages, never the daemon.
 *
 * Mapping.  The daemon maps the whole file shared and grows it by doubling
 * (ftruncate, then mremap with MREMAP_MAYMOVE), so pointers into it are
 * valid only until the next cell allocation.
 *
 * Cells.  The index's cells are numbered from 1; cells_bump in the header
 * says how many were ever handed out, and is raised before a new cell is
 * used, so every cell in use is below it after any crash.  Freed cells go
 * to a free list in daemon memory, which recovery rebuilds from the cells
 * the tree reaches (store_cells_rebuild).  A cell is zeroed when handed
 * out, never when freed: a leaf the tree no longer reaches may still be
 * read by a client failing closed, which walks from the root too.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include "util.h"
#include "store/store.h"

#define STORE_MIN_SIZE (64u << 10)
#define STORE_MAX_SIZE (64ULL << 30) /* 64 GiB of index: 8 TiB of pages tracked */
#define STORE_NAME     "uzswap-store"

_Static_assert(sizeof(struct uz_store_cell) == 520, "cell: present + 64 slots");

static uint32_t cells_fitting(size_t size)
{
	uint64_t n = (size - UZ_STORE_CELLS_OFFSET) / sizeof(struct uz_store_cell);

	return (uint32_t)uz_min(n, (uint64_t)UINT32_MAX - 1);
}

static int store_map(struct store *store, size_t size)
{
	void *base = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, store->fd, 0);

	if (base == MAP_FAILED)
		return -errno;
	store->base = base;
	store->size = size;
	store->cells_capacity = cells_fitting(size);
	return 0;
}

static int random_bytes(uint8_t *out, size_t len)
{
	while (len) {
		ssize_t n = getrandom(out, len, 0);

		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		out += n;
		len -= (size_t)n;
	}
	return 0;
}

int store_new(struct store **out)
{
	struct store *store;
	struct uz_store_header *h;
	int r;

	store = calloc(1, sizeof(*store));
	if (!store)
		return -ENOMEM;
	store->fd = memfd_create(STORE_NAME, MFD_CLOEXEC);
	if (store->fd < 0) {
		r = -errno;
		goto fail;
	}
	if (fchmod(store->fd, 0600) < 0 || ftruncate(store->fd, STORE_MIN_SIZE) < 0) {
		r = -errno;
		goto fail;
	}
	r = store_map(store, STORE_MIN_SIZE);
	if (r < 0)
		goto fail;
	h = store_header(store);
	r = random_bytes(h->client_token, sizeof(h->client_token));
	if (r < 0)
		goto fail;
	h->version = UZ_STORE_VERSION;
	h->page_size = UZ_STORE_PAGE;
	h->cells_bump = 1;
	h->cell_size = sizeof(struct uz_store_cell);
	h->levels = UZ_STORE_LEVELS;
	__atomic_store_n(&h->magic, UZ_STORE_MAGIC, __ATOMIC_RELEASE); /* last: a whole header */
	*out = store;
	return 0;
fail:
	store_free(store);
	return r;
}

/* Is fd a memfd store we created?  0, or -EPERM. */
static int store_check_ours(int fd, const struct stat *st)
{
	char link[64], target[PATH_MAX];
	ssize_t n;

	if (!S_ISREG(st->st_mode) || st->st_uid != geteuid() || (st->st_mode & 07777) != 0600)
		return -EPERM;
	snprintf(link, sizeof(link), "/proc/self/fd/%d", fd);
	n = readlink(link, target, sizeof(target) - 1);
	if (n < 0)
		return -EPERM;
	target[n] = '\0';
	if (strncmp(target, "/memfd:" STORE_NAME, strlen("/memfd:" STORE_NAME)) != 0)
		return -EPERM;
	return 0;
}

int store_recover(struct store **out, int fd, struct store_recovery *report)
{
	struct store *store;
	struct uz_store_header *h;
	struct stat st;
	char link[64];
	int r;

	if (fstat(fd, &st) < 0)
		return -errno;
	r = store_check_ours(fd, &st);
	if (r < 0)
		return r;
	if ((uint64_t)st.st_size < STORE_MIN_SIZE || st.st_size % UZ_STORE_PAGE)
		return -EINVAL;
	if ((uint64_t)st.st_size > STORE_MAX_SIZE)
		return -EFBIG;

	store = calloc(1, sizeof(*store));
	if (!store)
		return -ENOMEM;
	snprintf(link, sizeof(link), "/proc/self/fd/%d", fd);
	store->fd = open(link, O_RDWR | O_CLOEXEC);
	if (store->fd < 0) {
		r = -errno;
		goto fail;
	}
	r = store_map(store, (size_t)st.st_size);
	if (r < 0)
		goto fail;
	h = store_header(store);
	r = -EINVAL;
	if (__atomic_load_n(&h->magic, __ATOMIC_ACQUIRE) != UZ_STORE_MAGIC ||
	    h->version != UZ_STORE_VERSION || h->page_size != UZ_STORE_PAGE ||
	    h->cell_size != sizeof(struct uz_store_cell) || h->levels != UZ_STORE_LEVELS ||
	    h->cells_bump == 0 || h->cells_bump - 1 > store->cells_capacity ||
	    h->index_root >= h->cells_bump)
		goto fail;
	if (report)
		*report =
		    (struct store_recovery){.file_bytes = store->size, .cells = h->cells_bump - 1};
	*out = store;
	return 0;
fail:
	store_free(store);
	return r;
}

struct store *store_free(struct store *store)
{
	if (!store)
		return NULL;
	if (store->base)
		munmap(store->base, store->size);
	if (store->fd >= 0)
		close(store->fd);
	free(store->free_cells);
	free(store);
	return NULL;
}

int store_open_readonly(const struct store *store)
{
	char link[64];
	int fd;

	snprintf(link, sizeof(link), "/proc/self/fd/%d", store->fd);
	fd = open(link, O_RDONLY | O_CLOEXEC);
	return fd < 0 ? -errno : fd;
}

/* Make room for `cells` cells: grow the file and the mapping by doubling. */
static int store_grow(struct store *store, uint64_t cells)
{
	uint64_t need = UZ_STORE_CELLS_OFFSET + cells * sizeof(struct uz_store_cell);
	uint64_t size = store->size;
	void *base;

	while (size < need)
		size *= 2;
	if (size > STORE_MAX_SIZE)
		return -ENOMEM;
	if (ftruncate(store->fd, (off_t)size) < 0)
		return -ENOMEM;
	base = mremap(store->base, store->size, (size_t)size, MREMAP_MAYMOVE);
	if (base == MAP_FAILED)
		return -ENOMEM;
	store->base = base;
	store->size = (size_t)size;
	store->cells_capacity = cells_fitting((size_t)size);
	return 0;
}

int store_cell_alloc(struct store *store, uint32_t *out)
{
	struct uz_store_header *h = store_header(store);
	uint32_t cell;
	int r;

	if (store->nr_free) {
		cell = store->free_cells[--store->nr_free];
	} else {
		cell = h->cells_bump;
		if (cell == UINT32_MAX)
			return -ENOMEM;
		if (cell > store->cells_capacity) {
			r = store_grow(store, (uint64_t)cell);
			if (r < 0)
				return r;
			h = store_header(store);
		}
		/* Raised before the cell is used: a crash never hides a used cell above it. */
		__atomic_store_n(&h->cells_bump, cell + 1, __ATOMIC_RELEASE);
	}
	memset(store_cell(store, cell), 0, sizeof(struct uz_store_cell));
	*out = cell;
	return 0;
}

void store_cell_free(struct store *store, uint32_t cell)
{
	if (store->nr_free == store->free_capacity) {
		size_t capacity = store->free_capacity ? store->free_capacity * 2 : 64;
		uint32_t *cells = realloc(store->free_cells, capacity * sizeof(*cells));

		if (!cells)
			return; /* leaked until the client goes: harmless */
		store->free_cells = cells;
		store->free_capacity = capacity;
	}
	store->free_cells[store->nr_free++] = cell;
}

int store_cells_rebuild(struct store *store, const uint64_t *used)
{
	uint32_t bump = store_cells_bump(store);

	store->nr_free = 0;
	for (uint32_t cell = bump - 1; cell >= 1; cell--)
		if (!(used[cell / 64] & (1ULL << (cell % 64))))
			store_cell_free(store, cell); /* on ENOMEM: leaked, harmless */
	return 0;
}
