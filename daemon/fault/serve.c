// SPDX-License-Identifier: MIT
/*
 * Serving a fault: a PAGEFAULT of a client's uffd (or its retry) is
 * served by the state of its page entry.  NEVER gets zeros (the faulting
 * page first, then the never-touched neighbours inside the same aligned
 * 2 MiB window and the same registered region in one UFFDIO_ZEROPAGE each
 * side, so first touch of a fresh region stays cheap); RESIDENT means the
 * kernel dropped the page behind our back (MADV_FREE) or a second thread
 * faulted on it: zeros, or EEXIST and a wake; IN_FLIGHT is parked on the
 * eviction batch (never waited for: the agent may be waiting for us to
 * read its REMOVE event); STORED and SAME_FILLED are decompressed or
 * filled into the thread's page buffer and put back with UFFDIO_COPY
 * (with their fault-around run, below), and the pool object is freed.
 *
 * No allocation, no lock, no logging here: the buffers are the thread's.
 */
#include <errno.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>
#include <sys/ioctl.h>

#include "client/client.h"
#include "compress/compress.h"
#include "daemon.h"
#include "family/family.h"
#include "fault/fault-internal.h"
#include "fault/serve.h"
#include "fault/writeback.h"
#include "index/index.h"
#include "pool/pool.h"
#include "stats/stats.h"
#include "uffd-compat.h"
#include "util.h"

#define FAULT_ZERO_WINDOW	512 /* pages: the aligned 2 MiB window of a zero fill */
#define FAULT_AROUND_START	2   /* window of a client that just showed a forward run */
#define FAULT_AROUND_NEAR	2   /* ... two steps this short, forward, show a run */
#define FAULT_AROUND_STRIDE_MAX 16  /* ... two equal steps of 2..this, forward, a stride */

/*
 * May the agent still move a page out of vpn?  While a batch is out, a
 * victim whose entry was freed (REMOVE, UNMAP) or moved (REMAP) leaves
 * its sent address untracked, but the agent works from the addresses it
 * was sent and may not have reached it yet.  Were a fault there served
 * (zeros, and the program then writes), the agent would move that new
 * page out and EVICT_DONE would drop it as the old one: the program would
 * read zeros where it wrote.  Such faults wait for EVICT_DONE instead.
 */
static inline bool client_batch_stale(const struct client *c)
{
	return uz_unlikely(c->batch_stale) && c->batch_state == BATCH_SENT;
}

bool fault_client_address_in_flight(struct client *c, uint64_t vpn, unsigned *slot)
{
	if (!client_batch_stale(c))
		return false;
	for (unsigned i = 0; i < c->batch_count; i++) {
		const struct evict_slot *s = &c->slots[i];

		if (s->sent_vpn == vpn && (s->discarded || s->vpn != vpn)) {
			if (slot)
				*slot = i;
			return true;
		}
	}
	return false;
}

static void zero_range_mark(struct client *c, uint64_t lo, uint64_t hi)
{
	uint64_t done;
	int err;

	if (lo >= hi)
		return;
	done = uffd_zero_range(c->uffd, lo << UZ_PAGE_SHIFT, (hi - lo) << UZ_PAGE_SHIFT, &err) >>
	       UZ_PAGE_SHIFT;
	for (uint64_t vpn = lo; vpn < lo + done; vpn++) {
		page_entry_t e = page_index_get(c->index, vpn);

		if (page_index_set(c->index, vpn, pe_make(e, PAGE_RESIDENT, false, 0, 0, 0)) < 0)
			break;
		client_resident_add(c, 1);
	}
}

/*
 * Zero-fill the never-touched neighbours of vpn: the run of NEVER entries
 * around it, inside its aligned 2 MiB window, its registered region, and
 * not in the graveyard.  Best effort: a failure just leaves them to fault.
 */
static void fault_zero_neighbours(struct client *c, uint64_t vpn)
{
	const struct client_region *region = client_region_find(c, vpn << UZ_PAGE_SHIFT);
	uint64_t win_lo, win_hi, lo, hi, g_lo, g_hi;

	if (!region || client_batch_stale(c))
		return; /* a neighbour may be one the agent still moves from */
	win_lo = uz_max(vpn & ~(uint64_t)(FAULT_ZERO_WINDOW - 1), region->start >> UZ_PAGE_SHIFT);
	win_hi = uz_min((vpn | (FAULT_ZERO_WINDOW - 1)) + 1, region->end >> UZ_PAGE_SHIFT);
	g_lo = c->graveyard_start >> UZ_PAGE_SHIFT;
	g_hi = c->graveyard_end >> UZ_PAGE_SHIFT;
	if (g_lo < win_hi && g_hi > win_lo) {
		if (vpn < g_lo)
			win_hi = g_lo;
		else
			win_lo = g_hi;
	}
	lo = vpn;
	while (lo > win_lo && pe_state(page_index_get(c->index, lo - 1)) == PAGE_NEVER)
		lo--;
	hi = vpn + 1;
	while (hi < win_hi && pe_state(page_index_get(c->index, hi)) == PAGE_NEVER)
		hi++;
	zero_range_mark(c, lo, vpn);
	zero_range_mark(c, vpn + 1, hi);
}

/* Zeros at one page: a private zeroed page for a write, the zero page for a read. */
static int fault_zero_one(struct fault_thread *t, struct client *c, uint64_t addr, bool write)
{
	int r;

	if (write)
		r = uffd_copy_page(c->uffd, addr, t->zero_page);
	else
		uffd_zero_range(c->uffd, addr, UZ_PAGE_SIZE, &r);
	if (r == -EEXIST)
		uffd_wake(c->uffd, addr, UZ_PAGE_SIZE);
	return r;
}

static int fault_zero_fill(struct fault_thread *t, struct client *c, uint64_t vpn, bool write)
{
	uint64_t addr = vpn << UZ_PAGE_SHIFT;
	page_entry_t e;
	int r;

	r = fault_zero_one(t, c, addr, write);
	if (r == -EAGAIN)
		return r;
	if (r < 0 && r != -EEXIST) {
		/* The mapping changed under the fault (an event is on its way). */
		uffd_wake(c->uffd, addr, UZ_PAGE_SIZE);
		return 0;
	}
	e = page_index_get(c->index, vpn);
	if (page_index_set(c->index, vpn, pe_make(e, PAGE_RESIDENT, false, 0, 0, 0)) == 0)
		client_resident_add(c, 1);
	client_stat(c, UZ_STAT_zero_fill_faults, 1);
	if (r == 0)
		fault_zero_neighbours(c, vpn);
	return 0;
}

/*
 * The unit a member's entry names, decompressed into t->unit_buf (or
 * there already: the thread's unit cache), at least up to the end of that
 * member's page: while the client's units are not put back whole (its
 * score is below 0, serve.c) only that far, since lz4 can stop there;
 * else all of it.  The object is checked as far as it can be: header,
 * lengths, and that it decompresses to the unit's pages (for a prefix:
 * to at least that much).
 */
static int fault_unit_load(struct fault_thread *t, struct client *c, page_entry_t e)
{
	const struct pool *pool = c->family->pool;
	unsigned len = pe_object_len(e);
	size_t want = c->unit_score < 0 ? (size_t)(pe_unit_page(e) + 1) * UZ_PAGE_SIZE
					: (size_t)PE_UNIT_PAGES * UZ_PAGE_SIZE;
	struct pe_unit_header header;
	int r;

	if (t->unit_pool == pool && t->unit_handle == pe_handle(e)) {
		if (t->unit_valid >= want)
			return 0;
		want = (size_t)PE_UNIT_PAGES * UZ_PAGE_SIZE; /* a second member: all of it */
	}
	fault_unit_cache_reset(t);
	if (len <= sizeof(header) || len > PE_UNIT_OBJECT_MAX)
		return -EBADMSG;
	r = pool_load(c->family->pool, pe_handle(e), t->compressed, len);
	if (r < 0)
		return r;
	memcpy(&header, t->compressed, sizeof(header));
	if (header.magic != PE_UNIT_MAGIC || header.pages != PE_UNIT_PAGES ||
	    header.compressed_len == 0 || header.compressed_len > len - sizeof(header) ||
	    len - sizeof(header) - header.compressed_len >= 4)
		return -EBADMSG;
	r = compressor_decompress_prefix(t->compressor, pe_algo(e), t->compressed + sizeof(header),
					 header.compressed_len, t->unit_buf,
					 (size_t)PE_UNIT_PAGES * UZ_PAGE_SIZE, want);
	if (r < 0)
		return r;
	t->unit_pool = pool;
	t->unit_handle = pe_handle(e);
	t->unit_valid = want;
	return 0;
}

int fault_decode_page(struct fault_thread *t, struct client *c, page_entry_t e, uint8_t *dst)
{
	unsigned algo = pe_algo(e), len = pe_len(e);
	int r;

	if (pe_unit(e)) {
		r = fault_unit_load(t, c, e);
		if (r == 0)
			memcpy(dst, t->unit_buf + (size_t)pe_unit_page(e) * UZ_PAGE_SIZE,
			       UZ_PAGE_SIZE);
		return r;
	}
	if (pe_state(e) == PAGE_SAME_FILLED) {
		page_fill_word(dst, pe_fill_word(pe_payload(e)));
		return 0;
	}
	if (algo == COMPRESSOR_RAW)
		return pool_load(c->family->pool, pe_payload(e), dst, len);
	r = pool_load(c->family->pool, pe_payload(e), t->compressed, len);
	if (r == 0)
		r = compressor_decompress(t->compressor, algo, t->compressed, len, dst);
	return r;
}

/*
 * The bookkeeping of a stored or same-filled page that is back in the
 * client: the entry becomes RESIDENT (referenced) in the index, then the
 * pool object is released and the statistics move.  In that order: a kill
 * in between leaks one object, never leaves an entry naming a freed one.
 * Returns the RESIDENT entry (the caller may store it again).
 */
page_entry_t fault_page_loaded(struct fault_thread *t, struct client *c, uint64_t vpn,
			       page_entry_t e)
{
	page_entry_t resident = pe_make(e, PAGE_RESIDENT, true, 0, 0, 0);

	if (pe_state(e) == PAGE_WRITEBACK)
		wb_writeback_cancel(t->wb, c, vpn); /* served from the pool: the write is moot */
	page_index_set(c->index, vpn, resident);
	if (pe_state(e) != PAGE_SAME_FILLED) {
		entry_pool_release(c, e);
	} else {
		client_stat(c, UZ_STAT_same_filled_pages, -1);
	}
	client_stat(c, UZ_STAT_stored_pages, -1);
	client_stat(c, UZ_STAT_zswpin, 1);
	client_resident_add(c, 1);
	return resident;
}

/*
 * Put a stored or same-filled page back at vpn.  On success *new_entry is
 * the RESIDENT entry to store (the caller stores it), the pool object is
 * freed and the statistics moved.  -EAGAIN: nothing changed, try again.
 * Other errors: the mapping is gone (ENOENT) or the process (ESRCH);
 * nothing changed.
 */
int fault_load_page(struct fault_thread *t, struct client *c, uint64_t vpn, page_entry_t e,
		    page_entry_t *new_entry)
{
	uint64_t addr = vpn << UZ_PAGE_SHIFT;
	bool poisoned = fault_decode_page(t, c, e, t->page) < 0;
	int r;

	if (uz_unlikely(poisoned)) {
		struct uffdio_poison poison = {.range = {addr, UZ_PAGE_SIZE}, .mode = 0};

		client_stat(c, UZ_STAT_decompress_fail, 1);
		r = ioctl(c->uffd, UFFDIO_POISON, &poison) == 0 ? 0 : -errno;
		if (r == -EINVAL || r == -ENOTTY || r == -EOPNOTSUPP) {
			/* No poison in this kernel: the process must not read zeros instead. */
			kill(c->pid, SIGKILL);
			return 0;
		}
	} else {
		r = uffd_copy_page(c->uffd, addr, t->page);
	}
	if (r == -EAGAIN)
		return r;
	if (r == -EEXIST)
		uffd_wake(c->uffd, addr, UZ_PAGE_SIZE);
	else if (r < 0) {
		uffd_wake(c->uffd, addr, UZ_PAGE_SIZE);
		return r;
	}

	*new_entry = fault_page_loaded(t, c, vpn, e);
	return 0;
}

/*
 * Fault-around from the pool.
 *
 * kernel zram is a synchronous block device: no swap readahead, one fault
 * per page.  A fault served here costs two thread wake-ups however little
 * the daemon works, so where the program's access has locality the lever
 * is fewer faults: on a fault on a stored page, the stored neighbours that
 * follow it are decoded too and the whole run goes back with one
 * UFFDIO_COPY (one wake-up of the faulting thread).
 *
 * The window (pages put back ahead, per client) adapts like the kernel's
 * swap readahead (swapin_nr_pages): it opens at FAULT_AROUND_START when the
 * last three pool faults went in two steps of FAULT_AROUND_NEAR pages or
 * less the same way (a run), or in two equal steps of 2..FAULT_AROUND_STRIDE_MAX
 * pages (a stride: then only every stride-th page is put back, each with a
 * copy of its own, since the pages between are not wanted); doubles (up to
 * the policy's fault_around_max) when every page of the last run was used;
 * stays when at least half were; halves otherwise, down to 0 (shut until
 * the next three faults show a run or a stride again).  Runs and strides
 * may go down as well as up (a scan from the end): the pages put back are
 * then those below the fault, each with its own copy like a stride's.  One
 * step is not enough to open the window: under random access two pool
 * faults a page or two apart are common enough (a key next to its value)
 * that opening on one put back pages nobody used for ~6% of redis's faults.
 *
 * "Used" is inferred from the program's next fault from the pool, because
 * a read of a present page is invisible to us (no page_idle here; pagemap
 * and PAGEMAP_SCAN report writes only).  A next fault on the page one
 * step after the run means the program went through it, and all of it
 * counts; when that page was not in the pool (the run stopped at a
 * resident or never-touched page), a fault on the step within one run
 * length past the end counts the same.  A next fault on the step inside
 * the run (its tail was evicted again first) counts the pages before it;
 * anything else counts none.  For scans that keep their step the count is
 * exact.
 *
 * Put-back pages never push the client over its budget (high_pages; and
 * fault_client_reclaim makes room a window ahead), stop at the first neighbour
 * that is not in the pool (resident, in flight, on disk, never touched) or
 * at the end of its registered region (a run that crosses into another VMA
 * fails as a whole: the faulting page then goes back alone), never enter
 * the graveyard, and enter the index unreferenced: the CLOCK takes one the
 * first time it passes, with no second chance, so a page nobody touches is
 * cheap to evict again.
 *
 * No allocation, no lock, no logging: the buffer is the thread's.
 */
static int64_t abs64(int64_t v)
{
	return v < 0 ? -v : v;
}

/* Which page of the last run put back ahead vpn is (0 its first), or -1: not one on its step. */
static int64_t fault_around_position(const struct client *c, uint64_t vpn)
{
	int64_t d = (int64_t)(vpn - c->around_first);

	if (!c->around_step || d % c->around_step != 0 || d / c->around_step < 0)
		return -1;
	return d / c->around_step;
}

static void fault_around_account(struct client *c, uint64_t vpn)
{
	uint64_t run = c->around_count, used = 0;
	unsigned max = c->policy.fault_around_max, window = c->around_window;
	int64_t step, last = c->around_last_step, pos;

	if (run) {
		pos = fault_around_position(c, vpn);
		if (pos >= 0 && (uint64_t)pos < run)
			used = (uint64_t)pos;
		else if (c->around_next_stored ? pos == (int64_t)run
					       : pos >= (int64_t)run && (uint64_t)pos < 2 * run)
			used = run;
		if (used && !c->around_unit_run)
			client_stat(c, UZ_STAT_faultaround_hits, (int64_t)used);
		if (used == run && run >= window)
			window = window ? window * 2 : FAULT_AROUND_START;
		else if (used * 2 < run)
			window /= 2;
		/* Units are kept while what they put back is used (fault_unit_wanted). */
		if (used == run && c->unit_score < FAULT_UNIT_SCORE_MAX)
			c->unit_score++;
		else if (used * 2 < run && c->around_unit_run &&
			 c->unit_score > -FAULT_UNIT_SCORE_MAX)
			c->unit_score -= 2;
		c->around_count = 0;
		c->around_last_step = 0;
	} else if (!window) {
		step = (int64_t)(vpn - c->around_last_vpn);
		if (step && last && (step > 0) == (last > 0) && abs64(step) <= FAULT_AROUND_NEAR &&
		    abs64(last) <= FAULT_AROUND_NEAR && !(abs64(step) == 2 && step == last)) {
			window = FAULT_AROUND_START;
			c->around_step = step > 0 ? 1 : -1;
		} else if (step == last && abs64(step) >= 2 &&
			   abs64(step) <= FAULT_AROUND_STRIDE_MAX) {
			window = FAULT_AROUND_START;
			c->around_step = step;
		}
		/*
		 * Three faults in order are locality too, the window open or
		 * not (fault-around may be off): units form again after a
		 * spell of random access took their score below 0.
		 */
		if (window && c->unit_score < FAULT_UNIT_SCORE_MAX)
			c->unit_score++;
		c->around_last_step = step;
	}
	c->around_window = uz_min(window, max);
	if (!c->around_window)
		c->around_step = 0;
	c->around_last_vpn = vpn;
}

/*
 * The pages vpn + step, ..., vpn + count * step went back ahead of a fault
 * on vpn: counted, and kept for fault_around_account to judge by the next
 * fault.
 */
static void fault_around_note_run(struct client *c, uint64_t vpn, int64_t step, uint64_t count,
				  bool unit_run)
{
	uint64_t next = vpn + (uint64_t)((int64_t)(count + 1) * step);
	enum page_state after = pe_state(page_index_get(c->index, next));

	client_stat(c, unit_run ? UZ_STAT_unit_restored_pages : UZ_STAT_faultaround_pages,
		    (int64_t)count);
	c->around_first = vpn + (uint64_t)step;
	c->around_count = count;
	c->around_step = step; /* a unit's run may be judged with the window shut */
	c->around_unit_run = unit_run;
	c->around_next_stored =
	    after == PAGE_STORED || after == PAGE_WRITEBACK || after == PAGE_SAME_FILLED;
}

/*
 * The window was open but the page one step on was not in the pool: a run
 * of nothing, judged as one with no page used.  Without this a window
 * whose direction the program left (a scan turning round, say) would stay
 * open for good, putting nothing back and never judged.
 */
static void fault_around_none_ahead(struct client *c)
{
	c->around_window /= 2;
	if (!c->around_window)
		c->around_step = 0;
}

/*
 * Decode the neighbours vpn + step, vpn + 2 * step, ... (at most want of
 * them, all in [lo, hi)) into buf, a page each, up to the first that is
 * not in the pool (or is in an eviction batch, or whose bytes are lost:
 * that one is poisoned when it is touched, not now).  Returns how many.
 */
static unsigned fault_around_gather(struct fault_thread *t, struct client *c, uint64_t vpn,
				    int64_t step, uint64_t lo, uint64_t hi, unsigned want,
				    uint8_t *buf)
{
	uint64_t next = vpn, gap = (uint64_t)abs64(step);
	unsigned n = 0;

	while (n < want) {
		page_entry_t ne;
		enum page_state state;

		if (step < 0 ? next < lo + gap : next + gap >= hi)
			break;
		next = step < 0 ? next - gap : next + gap;
		ne = page_index_get(c->index, next);
		state = pe_state(ne);
		if (state != PAGE_STORED && state != PAGE_WRITEBACK && state != PAGE_SAME_FILLED)
			break;
		if (fault_client_address_in_flight(c, next, NULL))
			break;
		if (fault_decode_page(t, c, ne, buf + (size_t)n * UZ_PAGE_SIZE) < 0)
			break;
		n++;
	}
	return n;
}

/*
 * A fault on vpn, a member of a unit (entry e): the unit's other members
 * still stored in it go back with it (one fault restores the unit).  Those on the side the run goes (*step 1: above, -1: below; 0, the
 * window shut: whichever side holds more of them, and *step becomes that
 * direction) are left to the run, whose length must be at least the
 * number returned; the others go back here, each with its own
 * UFFDIO_COPY, unreferenced like fault-around pages, while *room lasts,
 * inside [lo, hi) and never from an eviction batch.  A member whose copy
 * fails stays stored.  With a stride open none goes: the program wants
 * every step-th page, and the stride puts back those.
 */
static unsigned fault_unit_siblings(struct fault_thread *t, struct client *c, uint64_t vpn,
				    page_entry_t e, uint64_t lo, uint64_t hi, int64_t *step,
				    uint64_t *room)
{
	unsigned page = pe_unit_page(e), above = PE_UNIT_PAGES - 1 - page;
	uint64_t first = vpn - page;
	int64_t s = *step ? *step : above >= page ? 1 : -1;

	if (vpn < page || (s != 1 && s != -1))
		return 0;
	for (unsigned i = 0; i < PE_UNIT_PAGES && *room; i++) {
		uint64_t m = first + i;
		page_entry_t me, resident;

		if (i == page || (s == 1 && i > page) || (s == -1 && i < page) || m < lo || m >= hi)
			continue;
		me = page_index_get(c->index, m);
		if (!pe_unit(me) || pe_handle(me) != pe_handle(e) || pe_unit_page(me) != i ||
		    fault_client_address_in_flight(c, m, NULL))
			continue;
		if (fault_decode_page(t, c, me, t->page) < 0 ||
		    uffd_copy_page(c->uffd, m << UZ_PAGE_SHIFT, t->page) < 0)
			continue;
		resident = fault_page_loaded(t, c, m, me);
		page_index_set(c->index, m, pe_make(resident, PAGE_RESIDENT, false, 0, 0, 0));
		client_stat(c, UZ_STAT_unit_restored_pages, 1);
		(*room)--;
	}
	*step = s;
	return s == 1 ? above : s == -1 ? page : 0;
}

/*
 * A fault on the stored page vpn (entry e) with a step that is not 1 (a
 * stride, or downward): the stored pages vpn + step, vpn + 2 * step, ...
 * (up to want of them, in [lo, hi)) go back first, each with its own
 * UFFDIO_COPY, then the faulting page by the single-page rules, which
 * wakes the program.  A neighbour whose copy fails ends the run and stays
 * as it was (in the pool): only what the kernel mapped becomes RESIDENT.
 * unit_run: the run is the rest of the faulting page's unit, with the
 * window shut.  Returns what fault_load_page does for the faulting page.
 */
static int fault_around_serve_steps(struct fault_thread *t, struct client *c, uint64_t vpn,
				    page_entry_t e, int64_t step, uint64_t lo, uint64_t hi,
				    unsigned want, bool unit_run)
{
	page_entry_t resident;
	unsigned n, copied;
	uint64_t next;
	int r;

	n = fault_around_gather(t, c, vpn, step, lo, hi, want, t->around_buf);
	for (copied = 0; copied < n; copied++) {
		next = vpn + (uint64_t)((int64_t)(copied + 1) * step);
		if (uffd_copy_page(c->uffd, next << UZ_PAGE_SHIFT,
				   t->around_buf + (size_t)copied * UZ_PAGE_SIZE) < 0)
			break;
		resident = fault_page_loaded(t, c, next, page_index_get(c->index, next));
		page_index_set(c->index, next, pe_make(resident, PAGE_RESIDENT, false, 0, 0, 0));
	}
	if (copied)
		fault_around_note_run(c, vpn, step, copied, unit_run);
	else if (!n)
		fault_around_none_ahead(c);
	r = fault_load_page(t, c, vpn, e, &resident);
	if (r == 0)
		page_index_set(c->index, vpn, resident);
	return r;
}

/*
 * Serve a fault on the stored page vpn (entry e) with its fault-around run.
 * Returns what fault_load_page would: 0 served (or lost, poisoned),
 * -EAGAIN nothing changed, other errors: the mapping or process is gone.
 */
static int fault_around_serve(struct fault_thread *t, struct client *c, uint64_t vpn,
			      page_entry_t e)
{
	const struct client_region *region = client_region_find(c, vpn << UZ_PAGE_SHIFT);
	uint64_t lo = 0, hi = 0, room, copied, gy_start, gy_end;
	unsigned want, n = 1, unit_ahead = 0;
	bool unit_run = false;
	struct uffdio_copy copy;
	int64_t step;
	int r = 0;

	fault_around_account(c, vpn);
	step = c->around_step;
	want = step ? c->around_window : 0; /* an open window always has a step */
	room = c->high_pages > c->resident + 1 ? c->high_pages - c->resident - 1 : 0;
	if (region) {
		/* Inside the region, and not into the graveyard on either side of the fault. */
		lo = region->start >> UZ_PAGE_SHIFT;
		hi = region->end >> UZ_PAGE_SHIFT;
		gy_start = c->graveyard_start >> UZ_PAGE_SHIFT;
		gy_end = c->graveyard_end >> UZ_PAGE_SHIFT;
		if (gy_end > gy_start && gy_start > vpn)
			hi = uz_min(hi, gy_start);
		if (gy_end > gy_start && gy_end <= vpn)
			lo = uz_max(lo, gy_end);
		if (pe_unit(e) && c->unit_score >= 0) {
			/*
			 * Not while the client's faults show that what units put
			 * back goes unused: then a member goes back alone, like
			 * a single page, and the members left are stored alone
			 * after the fault (fault_unit_note_left).
			 */
			unit_ahead = fault_unit_siblings(t, c, vpn, e, lo, hi, &step, &room);
			if (unit_ahead > want) {
				want = unit_ahead;
				unit_run = true;
			}
		}
	}
	if (want && room && region) {
		want = (unsigned)uz_min((uint64_t)want, room);
		if (step != 1)
			return fault_around_serve_steps(t, c, vpn, e, step, lo, hi, want, unit_run);
	}
	if (!want || !room || !region || fault_decode_page(t, c, e, t->around_buf) < 0) {
		page_entry_t resident;

		r = fault_load_page(t, c, vpn, e, &resident);
		if (r == 0)
			page_index_set(c->index, vpn, resident);
		return r;
	}
	n += fault_around_gather(t, c, vpn, 1, lo, hi, want, t->around_buf + UZ_PAGE_SIZE);
	if (n == 1)
		fault_around_none_ahead(c);

	copy = (struct uffdio_copy){
	    .dst = vpn << UZ_PAGE_SHIFT,
	    .src = (uint64_t)(uintptr_t)t->around_buf,
	    .len = (uint64_t)n * UZ_PAGE_SIZE,
	    .mode = 0,
	};
	if (ioctl(c->uffd, UFFDIO_COPY, &copy) < 0)
		r = -errno;
	copied = r == 0 ? n : copy.copy > 0 ? (uint64_t)copy.copy / UZ_PAGE_SIZE : 0;
	if (!copied && n > 1 && r != -EAGAIN && r != -EEXIST) {
		/*
		 * A run must lie in one VMA (else ENOENT for all of it), and a
		 * registered region may span several (adjacent mappings merged,
		 * mremap): the faulting page alone, as without fault-around.
		 */
		page_entry_t resident;

		r = fault_load_page(t, c, vpn, e, &resident);
		if (r == 0)
			page_index_set(c->index, vpn, resident);
		return r;
	}
	if (!copied) {
		/* The faulting page itself: the single-page rules. */
		if (r == -EAGAIN)
			return r;
		uffd_wake(c->uffd, vpn << UZ_PAGE_SHIFT, UZ_PAGE_SIZE);
		if (r != -EEXIST)
			return r;
		copied = 1; /* mapped already: taken as put back, like fault_load_page */
	}
	/* A partial copy woke the faulting thread (its page was first); the rest stay stored. */
	page_index_set(c->index, vpn, fault_page_loaded(t, c, vpn, e));
	for (uint64_t i = 1; i < copied; i++) {
		uint64_t next = vpn + i;
		page_entry_t resident =
		    fault_page_loaded(t, c, next, page_index_get(c->index, next));

		page_index_set(c->index, next, pe_make(resident, PAGE_RESIDENT, false, 0, 0, 0));
	}
	if (copied > 1)
		fault_around_note_run(c, vpn, 1, copied - 1, unit_run);
	return 0;
}

/*
 * The fault on vpn, a member of a unit (entry e, as it was), is served:
 * if members of the unit are left (the budget had no room for them, or
 * units' pages go unused and the member went back alone), the unit goes
 * on the thread's list to be split, so its object does not stay whole
 * for them.  A full list drops it: the unit just stays as it is.
 */
static void fault_unit_note_left(struct fault_thread *t, struct client *c, uint64_t vpn,
				 page_entry_t e)
{
	unsigned page = pe_unit_page(e);
	uint64_t first = vpn - page;

	if (vpn < page || t->nr_unit_splits == FAULT_UNIT_SPLITS)
		return;
	for (unsigned i = 0; i < PE_UNIT_PAGES; i++) {
		page_entry_t me = page_index_get(c->index, first + i);

		if (i != page && pe_unit(me) && pe_handle(me) == pe_handle(e) &&
		    pe_unit_page(me) == i) {
			t->unit_splits[t->nr_unit_splits++] =
			    (struct fault_unit_split){c->key, first, pe_handle(e)};
			return;
		}
	}
}

/* Serve one MISSING fault.  0: served or parked; -EAGAIN: retry later. */
int fault_serve(struct fault_thread *t, struct client *c, uint64_t addr, bool write)
{
	uint64_t vpn = addr >> UZ_PAGE_SHIFT;
	page_entry_t e, new_entry;
	uint64_t start_ns;
	unsigned slot;
	int r;

	if (uz_unlikely(vpn > VPN_MAX)) {
		uffd_wake(c->uffd, addr, UZ_PAGE_SIZE);
		return 0;
	}
	if (uz_unlikely(client_in_graveyard(c, addr))) {
		/* Nobody should touch the graveyard; serve zeros, track nothing. */
		r = fault_zero_one(t, c, addr, write);
		if (r < 0 && r != -EAGAIN && r != -EEXIST)
			uffd_wake(c->uffd, addr, UZ_PAGE_SIZE);
		return r == -EAGAIN ? r : 0;
	}

	e = page_index_get(c->index, vpn);
	if (pe_state(e) != PAGE_IN_FLIGHT && fault_client_address_in_flight(c, vpn, &slot)) {
		c->slots[slot].parked_sent = true;
		client_stat(c, UZ_STAT_inflight_faults, 1);
		return 0;
	}
	switch (pe_state(e)) {
	case PAGE_NEVER:
		return fault_zero_fill(t, c, vpn, write);
	case PAGE_RESIDENT:
		/*
		 * A second fault on a page just served: EEXIST, and a wake.
		 * A page that is really missing has been lost by someone
		 * (MADV_FREE and DONTNEED raise REMOVE first, which frees the
		 * entry): it reads zeros, counted so that it cannot go
		 * unnoticed.
		 */
		r = fault_zero_one(t, c, addr, write);
		if (r == 0) {
			client_stat(c, UZ_STAT_resident_missing_faults, 1);
			daemon_note_page_error(c->daemon, UZ_PAGE_ERROR_RESIDENT_MISSING, c->pid,
					       addr);
		}
		if (r < 0 && r != -EAGAIN && r != -EEXIST)
			uffd_wake(c->uffd, addr, UZ_PAGE_SIZE);
		return r == -EAGAIN ? r : 0;
	case PAGE_IN_FLIGHT:
		c->slots[pe_payload(e) % UZ_EVICT_BATCH_MAX].parked = true;
		client_stat(c, UZ_STAT_inflight_faults, 1);
		return 0;
	case PAGE_STORED:
	case PAGE_WRITEBACK:
	case PAGE_SAME_FILLED:
		start_ns = uz_now_nsec();
		fault_unit_cache_reset(t);
		/* Units need the fault pattern (their score) even with fault-around off. */
		if (c->policy.fault_around_max || c->policy.unit_pages > 1 || pe_unit(e)) {
			r = fault_around_serve(t, c, vpn, e);
		} else {
			r = fault_load_page(t, c, vpn, e, &new_entry);
			if (r == 0)
				page_index_set(c->index, vpn, new_entry);
		}
		if (r == -EAGAIN)
			return r;
		if (r == 0) {
			latency_hist_record(c->daemon->fault_latency, uz_now_nsec() - start_ns);
			if (pe_unit(e))
				fault_unit_note_left(t, c, vpn, e);
		}
		return 0;
	case PAGE_LOST: {
		/* Its bytes were not recovered after a daemon restart: SIGBUS, never zeros. */
		struct uffdio_poison poison = {.range = {addr, UZ_PAGE_SIZE}, .mode = 0};

		r = ioctl(c->uffd, UFFDIO_POISON, &poison) == 0 ? 0 : -errno;
		if (r == -EAGAIN)
			return r;
		if (r == -EINVAL || r == -ENOTTY || r == -EOPNOTSUPP) {
			/* No poison in this kernel: the process must not read zeros instead. */
			kill(c->pid, SIGKILL);
			return 0;
		}
		if (r < 0)
			uffd_wake(c->uffd, addr, UZ_PAGE_SIZE); /* EEXIST: mapped after all */
		page_index_set(c->index, vpn, pe_make(e, PAGE_NEVER, false, 0, 0, 0));
		return 0;
	}
	case PAGE_ON_DISK:
		/* Parked until the read lands (writeback.c); -EAGAIN: no read context free. */
		r = wb_fault(t->wb, c, vpn, e);
		if (r == -EAGAIN)
			return r;
		if (r < 0)
			uffd_wake(c->uffd, addr, UZ_PAGE_SIZE);
		return 0;
	default:
		uffd_wake(c->uffd, addr, UZ_PAGE_SIZE);
		return 0;
	}
}
