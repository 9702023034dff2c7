/* SPDX-License-Identifier: MIT */
/*
 * Failing closed: no daemon came back for our evicted pages.
 *
 * While the process waits for a new daemon, every evicted page is a hole
 * that faults to our uffd and nobody reads it: threads touching one wait.
 * When the wait is over (UZSWAP_RECONNECT_TIMEOUT) or a new daemon refused
 * our state, the process must go on without ever reading zeros where it
 * had data.  The daemon's store of our pages (common/store-layout.h) is
 * ours to read, so the agent walks its page index and, page by page:
 *
 *   SAME_FILLED   puts the page back itself (the fill word is in the entry);
 *   IN_FLIGHT     puts it back from the ring when the last batch moved it
 *                 there (the agent's own status page says so);
 *   STORED, WRITEBACK, ON_DISK, LOST
 *                 poisons it (UFFDIO_POISON): touching it raises SIGBUS.
 *                 The compressed bytes are in the daemon's pool or swap
 *                 file, out of our reach.
 *
 * The uffd messages the dead daemon read but never applied (its journal
 * in the store) and those still queued on our uffd (munmap, mremap,
 * DONTNEED of other threads, waiting for a reader) are read first and
 * applied to the addresses: a page moved by mremap is put back where it
 * is now, a page in a range unmapped or dropped since is left alone (it
 * must read zeros).  Then the uffd is released: the kernel unregisters
 * every range and wakes every waiting thread; never-touched pages fault in
 * as zeros as they always would.  The notice is printed before any of it,
 * so it comes before anything can read a lost page.
 *
 * Without UFFDIO_POISON (an old kernel) there is no way to keep a lost
 * page from reading zeros: the process is killed, with a notice saying so.
 *
 * Everything here runs on the agent, allocates with raw mmap only, and is
 * bounded: the index walk has a fixed depth and checks every cell number.
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "client.h"
#include "store-layout.h"
#include "uffd-compat.h"
#include "util.h"

#define EVENTS_MAX 8192 /* address changes remembered (journal + queue) */

struct vm_event {
	uint64_t from, to, len; /* REMAP from -> to; REMOVE/UNMAP: to == 0 */
};

struct fail_ctx {
	const uint8_t *store;
	size_t store_size;
	uint32_t cells;
	struct vm_event *events;
	unsigned nr_events;
	bool events_overflow;
	uint8_t *page; /* one page-aligned page to fill from */
	uint64_t restored, poisoned;
	bool no_poison;
};

static void event_add(struct fail_ctx *ctx, const struct uffd_msg *m)
{
	struct vm_event ev;

	if (m->event == UFFD_EVENT_REMAP)
		ev = (struct vm_event){m->arg.remap.from, m->arg.remap.to, m->arg.remap.len};
	else if (m->event == UFFD_EVENT_REMOVE || m->event == UFFD_EVENT_UNMAP)
		ev = (struct vm_event){m->arg.remove.start, 0,
				       m->arg.remove.end - m->arg.remove.start};
	else
		return;
	if (ctx->nr_events == EVENTS_MAX) {
		ctx->events_overflow = true;
		return;
	}
	ctx->events[ctx->nr_events++] = ev;
}

/* Read what is queued on the uffd (without blocking): events matter, faults are woken later. */
static void drain_uffd(struct fail_ctx *ctx)
{
	struct uffd_msg msgs[32];
	ssize_t n;

	while ((n = read(uz_client.uffd, msgs, sizeof(msgs))) > 0)
		for (size_t i = 0; i < (size_t)n / sizeof(msgs[0]); i++)
			event_add(ctx, &msgs[i]);
}

/* Where the page at `addr` (as the index knows it) is now; 0 when it was dropped. */
static uint64_t translate(const struct fail_ctx *ctx, uint64_t addr)
{
	for (unsigned i = 0; i < ctx->nr_events; i++) {
		const struct vm_event *ev = &ctx->events[i];

		if (addr < ev->from || addr - ev->from >= ev->len)
			continue;
		if (!ev->to)
			return 0;
		addr = ev->to + (addr - ev->from);
	}
	return addr;
}

/* One ioctl on a page, draining events and translating again while it says EAGAIN. */
static int page_act(struct fail_ctx *ctx, uint64_t index_addr, const void *src)
{
	for (int tries = 0; tries < 100000; tries++) {
		uint64_t addr = translate(ctx, index_addr);
		int r;

		if (!addr)
			return 0; /* unmapped or dropped since: it reads zeros, as it should */
		if (src) {
			struct uffdio_copy copy = {
			    .dst = addr, .src = (uintptr_t)src, .len = UZ_PAGE_SIZE};

			r = ioctl(uz_client.uffd, UFFDIO_COPY, &copy) == 0 ? 0 : -errno;
		} else {
			struct uffdio_poison poison = {.range = {addr, UZ_PAGE_SIZE}};

			r = ioctl(uz_client.uffd, UFFDIO_POISON, &poison) == 0 ? 0 : -errno;
			if (r == -EINVAL || r == -ENOTTY) {
				ctx->no_poison = true;
				return r;
			}
		}
		if (r != -EAGAIN)
			return r;
		drain_uffd(ctx); /* an event is pending: read it, then try again */
	}
	return -EAGAIN;
}

static const struct uz_store_cell *cell_at(const struct fail_ctx *ctx, uint64_t cell)
{
	if (cell == 0 || cell > ctx->cells)
		return NULL;
	return (const struct uz_store_cell *)(ctx->store + UZ_STORE_CELLS_OFFSET +
					      (cell - 1) * sizeof(struct uz_store_cell));
}

static void entry_act(struct fail_ctx *ctx, uint64_t vpn, page_entry_t e)
{
	const struct uz_store_batch *batch =
	    (const struct uz_store_batch *)(ctx->store + UZ_STORE_BATCH_OFFSET);
	const struct uz_ring_status *status =
	    uz_client.ring ? (const struct uz_ring_status *)((const char *)uz_client.ring +
							     (size_t)UZ_EVICT_BATCH_MAX * UZ_PAGE_SIZE)
			   : NULL;
	uint64_t addr = vpn << UZ_PAGE_SHIFT;
	uint64_t i = pe_payload(e);
	int r;

	switch (pe_state(e)) {
	case PAGE_SAME_FILLED: {
		uint64_t word = pe_fill_word(i);
		uint64_t *p = (uint64_t *)ctx->page;

		for (size_t k = 0; k < UZ_PAGE_SIZE / sizeof(word); k++)
			p[k] = word;
		r = page_act(ctx, addr, ctx->page);
		if (r == 0)
			ctx->restored++;
		else if (r != -EEXIST && r != -ENOENT && page_act(ctx, addr, NULL) == 0)
			ctx->poisoned++;
		return;
	}
	case PAGE_IN_FLIGHT:
		if (uz_client.ring && batch->id && status->batch == batch->id && status->count == batch->count &&
		    i < batch->count && batch->vpn[i] == vpn && status->status[i] == 0) {
			r = page_act(ctx, addr, (const char *)uz_client.ring + i * UZ_PAGE_SIZE);
			if (r == 0)
				ctx->restored++;
		}
		return; /* not moved: it never left */
	case PAGE_STORED:
	case PAGE_WRITEBACK:
	case PAGE_ON_DISK:
	case PAGE_LOST:
		if (page_act(ctx, addr, NULL) == 0)
			ctx->poisoned++;
		return;
	default:
		return;
	}
}

static void walk(struct fail_ctx *ctx, uint64_t cell, unsigned level, uint64_t vpn_base)
{
	const struct uz_store_cell *c = cell_at(ctx, cell);

	if (!c || ctx->no_poison)
		return;
	for (unsigned slot = 0; slot < UZ_STORE_CELL_FANOUT; slot++) {
		uint64_t value = c->slot[slot];
		uint64_t vpn = vpn_base | ((uint64_t)slot << (level * UZ_STORE_CELL_BITS));

		if (!value)
			continue;
		if (level == 0)
			entry_act(ctx, vpn, value);
		else
			walk(ctx, value, level - 1, vpn);
	}
}

/* Drop our uffd reference without freeing its number (other threads may be about to use it). */
static void release_uffd(void)
{
	int null = open("/dev/null", O_RDONLY | O_CLOEXEC);

	if (null < 0) {
		close(uz_client.uffd);
		uz_client.uffd = -1;
		return;
	}
	dup3(null, uz_client.uffd, O_CLOEXEC);
	close(null);
}

void uz_fail_closed(const char *why)
{
	struct fail_ctx ctx = {0};
	const struct uz_store_header *h;
	struct stat st;
	void *store = MAP_FAILED;
	size_t events_size = EVENTS_MAX * sizeof(struct vm_event) + UZ_PAGE_SIZE;
	void *scratch;

	uz_notice("libuzswap: %s; evicted pages the process cannot get back by itself are "
		  "poisoned: touching one raises SIGBUS (none reads as zeros)",
		  why);
	scratch = uz_raw_mmap(NULL, events_size, PROT_READ | PROT_WRITE,
			      MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (scratch == MAP_FAILED)
		goto give_up;
	ctx.page = scratch;
	ctx.events = (struct vm_event *)((char *)scratch + UZ_PAGE_SIZE);

	if (uz_client.store_fd < 0 || fstat(uz_client.store_fd, &st) < 0 ||
	    (size_t)st.st_size < UZ_STORE_CELLS_OFFSET)
		goto give_up;
	store = uz_raw_mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_SHARED, uz_client.store_fd, 0);
	if (store == MAP_FAILED)
		goto give_up;
	ctx.store = store;
	ctx.store_size = (size_t)st.st_size;
	ctx.cells =
	    (uint32_t)((ctx.store_size - UZ_STORE_CELLS_OFFSET) / sizeof(struct uz_store_cell));
	h = store;
	if (h->magic != UZ_STORE_MAGIC || h->version != UZ_STORE_VERSION ||
	    h->cell_size != sizeof(struct uz_store_cell) || h->levels != UZ_STORE_LEVELS)
		goto give_up;
	if (h->cells_bump && h->cells_bump - 1 < ctx.cells)
		ctx.cells = h->cells_bump - 1;

	/* What the dead daemon read and did not apply, then what is still queued. */
	{
		const struct uffd_msg *journal =
		    (const struct uffd_msg *)(ctx.store + UZ_STORE_JOURNAL_OFFSET);

		for (unsigned i = 0; i < UZ_STORE_JOURNAL_MSGS; i++)
			event_add(&ctx, &journal[i]);
	}
	drain_uffd(&ctx);
	if (ctx.events_overflow)
		goto give_up;

	walk(&ctx, h->index_root, UZ_STORE_LEVELS - 1, 0);
	if (ctx.no_poison || ctx.events_overflow)
		goto give_up;
	release_uffd();
	uz_notice("libuzswap: failed closed: %llu evicted pages put back, %llu poisoned; "
		  "running unmanaged",
		  (unsigned long long)ctx.restored, (unsigned long long)ctx.poisoned);
	uz_raw_munmap(store, ctx.store_size);
	uz_raw_munmap(scratch, events_size);
	return;

give_up:
	/*
	 * Lost pages cannot be kept from reading zeros: stop the process
	 * rather than let it compute on wrong memory.
	 */
	uz_notice("libuzswap: cannot fail closed (%s); killing the process so that it never "
		  "reads zeros where it had data",
		  ctx.no_poison		? "this kernel has no UFFDIO_POISON"
		  : ctx.events_overflow ? "too many memory map changes to follow"
					: "the daemon's store of our pages is unreadable");
	kill(getpid(), SIGKILL);
}

/* Register one maps line's mapping with the uffd when it is private anonymous read-write. */
static int register_line(char *line, void *arg)
{
	struct uz_maps_line maps;
	const char *name;

	(void)arg;
	if (!strchr(line, '-') || !uz_maps_parse(line, &maps))
		return 0;
	if (memcmp(maps.perms, "rw-p", 4) != 0 || maps.inode != 0)
		return 0;
	name = maps.name;
	if (*name && strcmp(name, "[heap]") != 0 && strncmp(name, "[anon:", 6) != 0)
		return 0; /* [stack], [vvar], files: never registered in the parent either */
	{
		struct uffdio_register reg = {.range = {maps.start, maps.end - maps.start},
					      .mode = UFFDIO_REGISTER_MODE_MISSING};

		(void)ioctl(uz_client.uffd, UFFDIO_REGISTER, &reg);
	}
	return 0;
}

void uz_fail_closed_fork_child(const char *why)
{
	static char buf[16384];
	const char *reason = NULL;
	uint64_t features = 0;
	int uffd;

	if (uz_uffd_create(&uffd, &features, &reason) < 0) {
		uz_notice("libuzswap: fork child: %s, and %s; killing it so that it never reads "
			  "zeros where its parent had data",
			  why, reason);
		kill(getpid(), SIGKILL);
	}
	uz_client.uffd = uffd;
	uz_client.uffd_features = features;
	uz_client.ring = NULL;
	(void)uz_read_lines("/proc/self/maps", buf, sizeof(buf), register_line, NULL);
	uz_fail_closed(why);
	if (uz_client.uffd >= 0)
		close(uz_client.uffd);
	uz_client.uffd = -1;
	if (uz_client.store_fd >= 0)
		close(uz_client.store_fd);
	if (uz_client.arena_fd >= 0)
		close(uz_client.arena_fd);
	uz_client.store_fd = uz_client.arena_fd = -1;
}
