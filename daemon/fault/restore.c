// SPDX-License-Identifier: MIT
/*
 * Giving pages back (UNREGISTER, FORK_PREPARE, SHUTDOWN, HOT hint, a bad
 * client) waits for the batch to land, then walks the range copying every
 * stored page back; an EAGAIN leaves a cursor and the walk resumes.
 */
#include <errno.h>
#include <sched.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/ioctl.h>

#include "client/client.h"
#include "fault/fault-internal.h"
#include "fault/reclaim.h"
#include "fault/restore.h"
#include "fault/serve.h"
#include "fault/writeback.h"
#include "index/index.h"
#include "uffd-compat.h"
#include "util.h"

struct restore_ctx {
	struct fault_thread *thread;
	struct client *client;
	bool mark_referenced; /* HOT: resident pages become referenced too */
	bool skip_in_flight;  /* best effort (a bad client): do not wait for the batch */
	int error;
	uint64_t stopped_at;
	bool disk_pending; /* reads from the swap file started: wait for them */
	uint64_t disk_first;
	/* a run of consecutive stored pages decoded into thread->restore_buf */
	uint64_t run_first;
	unsigned run_len;
	page_entry_t run_entries[FAULT_RESTORE_RUN];
};

/*
 * Give the decoded run back with one UFFDIO_COPY (a fork of a large
 * process gives back every page: one ioctl per page was most of its cost).
 * Pages after a partial copy go one at a time, with the single-page rules
 * (EEXIST wakes, a vanished mapping is left to its UNMAP event).  Returns
 * 1 with ctx->error set when the walk must stop (EAGAIN, ESRCH), else 0.
 */
static int restore_run_flush(struct restore_ctx *ctx)
{
	struct fault_thread *t = ctx->thread;
	struct client *c = ctx->client;
	unsigned n = ctx->run_len, done;
	struct uffdio_copy copy = {
	    .dst = ctx->run_first << UZ_PAGE_SHIFT,
	    .src = (uint64_t)(uintptr_t)t->restore_buf,
	    .len = (uint64_t)n * UZ_PAGE_SIZE,
	    .mode = 0,
	};
	int r = 0;

	if (!n)
		return 0;
	ctx->run_len = 0;
	if (ioctl(c->uffd, UFFDIO_COPY, &copy) < 0)
		r = -errno;
	done = r == 0 ? n : copy.copy > 0 ? (unsigned)(copy.copy / UZ_PAGE_SIZE) : 0;
	for (unsigned i = 0; i < done; i++) {
		uint64_t vpn = ctx->run_first + i;

		page_index_set(c->index, vpn, fault_page_loaded(t, c, vpn, ctx->run_entries[i]));
	}
	if (done == n)
		return 0;
	if (r == -EAGAIN || r == -ESRCH) {
		ctx->error = r;
		ctx->stopped_at = ctx->run_first + done;
		return 1;
	}
	for (unsigned i = done; i < n; i++) {
		uint64_t vpn = ctx->run_first + i;
		page_entry_t new_entry;

		r = fault_load_page(t, c, vpn, ctx->run_entries[i], &new_entry);
		if (r == 0) {
			page_index_set(c->index, vpn, new_entry);
		} else if (r == -EAGAIN || r == -ESRCH) {
			ctx->error = r;
			ctx->stopped_at = vpn;
			return 1;
		}
	}
	return 0;
}

static int restore_one(uint64_t vpn, page_entry_t *entry, void *userdata)
{
	struct restore_ctx *ctx = userdata;
	page_entry_t new_entry;
	int r;

	if (pe_state(*entry) == PAGE_STORED || pe_state(*entry) == PAGE_WRITEBACK ||
	    pe_state(*entry) == PAGE_SAME_FILLED) {
		if (ctx->run_len &&
		    (vpn != ctx->run_first + ctx->run_len || ctx->run_len == FAULT_RESTORE_RUN) &&
		    restore_run_flush(ctx))
			return 1;
		if (fault_decode_page(ctx->thread, ctx->client, *entry,
				      ctx->thread->restore_buf +
					  (size_t)ctx->run_len * UZ_PAGE_SIZE) == 0) {
			if (!ctx->run_len)
				ctx->run_first = vpn;
			ctx->run_entries[ctx->run_len++] = *entry;
			return 0;
		}
		/* Undecodable: alone, by the single-page path (it poisons). */
	}
	/* Whatever is not appended to the run goes after it, in address order. */
	if (restore_run_flush(ctx))
		return 1;

	switch (pe_state(*entry)) {
	case PAGE_RESIDENT:
		if (ctx->mark_referenced)
			*entry |= PE_REFERENCED;
		return 0;
	case PAGE_IN_FLIGHT:
		if (ctx->skip_in_flight)
			return 0;
		ctx->error = -EBUSY;
		ctx->stopped_at = vpn;
		return 1;
	case PAGE_ON_DISK:
		if (ctx->skip_in_flight)
			return 0; /* best effort: never wait for the disk (see above) */
		/* Read back asynchronously; the walk waits for it (-EBUSY) and resumes. */
		r = wb_restore(ctx->thread->wb, ctx->client, vpn, *entry);
		if (r == -EAGAIN) {
			ctx->error = r;
			ctx->stopped_at = vpn;
			return 1;
		}
		if (r == 0) {
			*entry = page_index_get(ctx->client->index, vpn);
			if (!ctx->disk_pending) {
				ctx->disk_pending = true;
				ctx->disk_first = vpn;
			}
		}
		return 0;
	case PAGE_STORED:
	case PAGE_WRITEBACK:
	case PAGE_SAME_FILLED:
		r = fault_load_page(ctx->thread, ctx->client, vpn, *entry, &new_entry);
		if (r == 0) {
			*entry = new_entry;
			return 0;
		}
		if (r == -EAGAIN || r == -ESRCH) {
			ctx->error = r;
			ctx->stopped_at = vpn;
			return 1;
		}
		return 0; /* mapping gone: its UNMAP event frees the entry */
	default:
		return 0;
	}
}

/*
 * Copy every stored page of [*cursor, last] back.  0 when done, -EAGAIN
 * (retry; *cursor advanced), -EBUSY (a page is in flight), -ESRCH.
 */
int fault_client_restore_range(struct fault_thread *t, struct client *c, uint64_t *cursor,
			       uint64_t last, bool mark_referenced, bool skip_in_flight)
{
	struct restore_ctx ctx = {
	    .thread = t,
	    .client = c,
	    .mark_referenced = mark_referenced,
	    .skip_in_flight = skip_in_flight,
	};

	if (*cursor > last)
		return 0;
	fault_unit_cache_reset(t);
	page_index_walk(c->index, *cursor, last, restore_one, &ctx);
	(void)restore_run_flush(&ctx); /* the tail run (empty when the walk stopped) */
	if (ctx.disk_pending && (!ctx.error || ctx.disk_first < ctx.stopped_at)) {
		ctx.error = -EBUSY;
		ctx.stopped_at = ctx.disk_first;
	}
	if (ctx.error) {
		*cursor = ctx.stopped_at;
		if (ctx.error == -EAGAIN)
			t->want_retry = true;
		return ctx.error;
	}
	*cursor = last + 1;
	return 0;
}

/*
 * Give back what can be given without waiting on the client (it misbehaved,
 * or the daemon is stopping and it did not acknowledge in time) nor on the
 * disk: pages on disk stay where they are, in the client's store, for the
 * next daemon it re-joins -- waiting for their reads here would stall
 * every other client of this thread.
 */
void fault_client_restore_best_effort(struct fault_thread *t, struct client *c)
{
	uint64_t cursor = 0;

	for (int tries = 0; tries < 1000; tries++) {
		int r;

		if (c->batch_state == BATCH_LANDING)
			fault_client_batch_install(t, c);
		r = fault_client_restore_range(t, c, &cursor, VPN_MAX, false, true);
		if (r == 0 && c->batch_state != BATCH_LANDING)
			return;
		if (r < 0 && r != -EAGAIN)
			return;
		sched_yield();
	}
}
