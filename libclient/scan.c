/* SPDX-License-Identifier: MIT */
/*
 * The scan: find every private anonymous writable mapping of the process
 * in /proc/self/maps and register what is not registered yet.
 *
 * The hooks see only the mmap/mremap calls that go through the PLT.
 * glibc's own __mmap, __mremap, __brk and __mprotect (the brk heap, arena
 * heaps, large chunks), allocators that call the system calls directly,
 * and thread stacks appear only in the maps; so the watcher thread
 * (watcher.c) runs this scan whenever the cheap signs say the mappings
 * changed, and at least every few seconds.
 *
 * A line of the maps is one VMA, and a VMA is either wholly registered with
 * a uffd or not at all (the kernel never merges the two kinds), which
 * makes the line the unit.  Eligible lines: "rw-p", inode 0, no name,
 * [heap] or [anon:...].  Left out (docs/ARCHITECTURE.md, "What is and is
 * not managed"):
 *   - shared and file-backed mappings, [stack] (VM_GROWSDOWN), [vdso] and
 *     other special mappings, anything not exactly read-write (UFFDIO_MOVE
 *     needs the same protection as the graveyard), VM_IO/VM_PFNMAP (never
 *     anonymous: a driver's mapping has a file);
 *   - mlocked ranges (smaps VmFlags "lo"; read only when VmLck is not 0):
 *     UFFDIO_MOVE refuses to move between locked and unlocked memory, and
 *     mlock means "do not page this";
 *   - the library's own memory (uz_own_mmap: graveyard, tables, buffers),
 *     the agent's and the watcher's stacks (a page the agent evicted from
 *     its own stack would wait for the agent itself), and the .bss of
 *     libc, ld.so and libuzswap, which the agent's code touches;
 *   - mappings smaller than UZSWAP_MIN_REGION.
 *
 * For a line the table (ranges.c) holds as registered the scan asks the
 * kernel (uz_uffd_probe): glibc may have unmapped it and mapped something
 * new there since.  A line with parts the table lacks (a fresh mapping, a
 * tail mremap grew in place, a new brk step) goes to the daemon in a
 * REGISTER_BATCH with UZ_REGISTER_POPULATED: the daemon reads the pagemap
 * and counts the present pages resident.  At the end the table forgets
 * what no eligible line covers any more.
 *
 * The scan runs on the watcher thread only (its buffers are static, raw
 * mmapped).  It takes range_lock only to look at and update the table,
 * never across the daemon round trip.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "client.h"
#include "util.h"

#define SCAN_BUFFER_SIZE (64 * 1024)
#define SCAN_GAPS_MAX	 16

/* A growable array of ranges in raw-mmapped memory. */
struct range_vec {
	struct uz_register_range *v;
	size_t count, capacity;
};

static int vec_push(struct range_vec *vec, uint64_t start, uint64_t len)
{
	if (vec->count == vec->capacity) {
		size_t capacity = vec->capacity ? vec->capacity * 2 : 512;
		struct uz_register_range *v = uz_own_mmap(capacity * sizeof(*v));

		if (!v)
			return -ENOMEM;
		if (vec->v) {
			memcpy(v, vec->v, vec->count * sizeof(*v));
			uz_own_munmap(vec->v, vec->capacity * sizeof(*v));
		}
		vec->v = v;
		vec->capacity = capacity;
	}
	vec->v[vec->count++] = (struct uz_register_range){start, len};
	return 0;
}

/* The watcher's buffers (scan_run only). */
static char *scan_buffer;
static struct range_vec scan_lines;  /* eligible lines, whole */
static struct range_vec scan_pieces; /* eligible lines less exclusions, >= min_region */
static struct range_vec scan_locked; /* mlocked VMAs */
static struct range_vec scan_candidates;

struct uz_scan_result uz_scan_last;

/*
 * Call fn for each line of path ('\n' replaced by 0), reading through buf.
 * A line longer than the buffer is skipped.  fn returns non-zero to stop.
 */
int uz_read_lines(const char *path, char *buf, size_t size, int (*fn)(char *line, void *arg),
		  void *arg)
{
	size_t have = 0;
	bool skipping = false;
	int fd, r = 0;

	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	for (;;) {
		ssize_t n = read(fd, buf + have, size - have - 1);
		char *p, *end, *nl;

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			r = -errno;
			break;
		}
		if (n == 0) {
			if (have && !skipping) {
				buf[have] = 0;
				r = fn(buf, arg);
			}
			break;
		}
		p = buf;
		end = buf + have + n;
		while ((nl = memchr(p, '\n', end - p))) {
			*nl = 0;
			if (!skipping && (r = fn(p, arg)) != 0)
				goto out;
			skipping = false;
			p = nl + 1;
		}
		have = end - p;
		memmove(buf, p, have);
		if (have >= size - 1) {
			have = 0; /* longer than the buffer: drop it up to its newline */
			skipping = true;
		}
	}
out:
	close(fd);
	return r < 0 ? r : 0;
}

bool uz_maps_parse(char *line, struct uz_maps_line *out)
{
	char *p = line;

	out->start = strtoull(p, &p, 16);
	if (*p++ != '-')
		return false;
	out->end = strtoull(p, &p, 16);
	if (*p++ != ' ' || strlen(p) < 5)
		return false;
	memcpy(out->perms, p, 4);
	p += 4;
	if (*p++ != ' ')
		return false;
	(void)strtoull(p, &p, 16); /* offset */
	while (*p == ' ')
		p++;
	while (*p && *p != ' ') /* device */
		p++;
	out->inode = strtoull(p, &p, 10);
	while (*p == ' ' || *p == '\t')
		p++;
	out->name = p;
	return out->end > out->start;
}

bool uz_maps_eligible(const struct uz_maps_line *line)
{
	const char *name = line->name;

	if (memcmp(line->perms, "rw-p", 4) != 0 || line->inode != 0)
		return false;
	if (name[0] == 0 || strcmp(name, "[heap]") == 0)
		return true;
	return strncmp(name, "[anon:", 6) == 0 && strncmp(name, "[anon:uzswap", 12) != 0;
}

/* The .bss of a library whose code the agent runs: libc, ld.so, libpthread, us. */
static bool agent_library(const char *path)
{
	static const char *const prefixes[] = {"libc.so", "libc-",	"ld-linux", "ld-2.",
					       "ld.so",	  "libpthread", "libuzswap"};
	const char *base = strrchr(path, '/');

	base = base ? base + 1 : path;
	for (size_t i = 0; i < UZ_ARRAY_SIZE(prefixes); i++)
		if (strncmp(base, prefixes[i], strlen(prefixes[i])) == 0)
			return true;
	return false;
}

/* smaps, only when something is locked: collect the VMAs with "lo" in VmFlags. */
struct locked_ctx {
	uint64_t start, end;
};

static int locked_line(char *line, void *arg)
{
	struct locked_ctx *ctx = arg;
	struct uz_maps_line maps;

	if (strncmp(line, "VmFlags:", 8) == 0) {
		for (char *p = line + 8; (p = strstr(p, " lo")); p += 3)
			if (p[3] == ' ' || p[3] == 0) {
				vec_push(&scan_locked, ctx->start, ctx->end - ctx->start);
				break;
			}
		return 0;
	}
	if (((*line >= '0' && *line <= '9') || (*line >= 'a' && *line <= 'f')) &&
	    strchr(line, '-') && uz_maps_parse(line, &maps)) {
		ctx->start = maps.start;
		ctx->end = maps.end;
	}
	return 0;
}

static int vmlck_line(char *line, void *arg)
{
	if (strncmp(line, "VmLck:", 6) != 0)
		return 0;
	*(uint64_t *)arg = strtoull(line + 6, NULL, 10);
	return 1;
}

static void locked_read(void)
{
	struct locked_ctx ctx = {0};
	uint64_t vmlck_kb = 0;

	scan_locked.count = 0;
	uz_read_lines("/proc/self/status", scan_buffer, SCAN_BUFFER_SIZE, vmlck_line, &vmlck_kb);
	if (vmlck_kb)
		uz_read_lines("/proc/self/smaps", scan_buffer, SCAN_BUFFER_SIZE, locked_line, &ctx);
}

struct maps_ctx {
	struct uz_register_range own[UZ_OWN_MAX];
	size_t nr_own;
	uint64_t hints[2];
	uint64_t prev_end; /* the previous line: for the .bss rule */
	bool prev_agent_library;
	size_t locked_cursor;
};

/* Cut the excluded parts out of [start, end) and keep the pieces of at least min_region. */
static void pieces_add(struct maps_ctx *ctx, uint64_t start, uint64_t end)
{
	struct uz_register_range cut[UZ_OWN_MAX + 8];
	size_t n = 0;
	uint64_t cursor = start;

	for (size_t i = 0; i < ctx->nr_own && n < UZ_ARRAY_SIZE(cut); i++)
		if (ctx->own[i].start < end && ctx->own[i].start + ctx->own[i].len > start)
			cut[n++] = ctx->own[i];
	while (ctx->locked_cursor < scan_locked.count &&
	       scan_locked.v[ctx->locked_cursor].start + scan_locked.v[ctx->locked_cursor].len <=
		   start)
		ctx->locked_cursor++;
	for (size_t i = ctx->locked_cursor;
	     i < scan_locked.count && scan_locked.v[i].start < end && n < UZ_ARRAY_SIZE(cut); i++)
		cut[n++] = scan_locked.v[i];
	/* Insertion sort: a handful at most. */
	for (size_t i = 1; i < n; i++)
		for (size_t j = i; j > 0 && cut[j].start < cut[j - 1].start; j--) {
			struct uz_register_range t = cut[j];

			cut[j] = cut[j - 1];
			cut[j - 1] = t;
		}
	for (size_t i = 0; i <= n; i++) {
		uint64_t piece_end = i < n ? uz_max(cut[i].start, start) : end;

		if (piece_end > cursor && piece_end - cursor >= uz_client.min_region)
			vec_push(&scan_pieces, cursor, piece_end - cursor);
		else if (piece_end > cursor)
			uz_scan_last.small_bytes += piece_end - cursor;
		if (i < n)
			cursor = uz_max(cursor, uz_min(cut[i].start + cut[i].len, end));
	}
}

static int maps_line(char *text, void *arg)
{
	struct maps_ctx *ctx = arg;
	struct uz_maps_line line;
	bool bss, eligible;

	if (!uz_maps_parse(text, &line))
		return 0;
	eligible = uz_maps_eligible(&line);
	bss = line.name[0] == 0 && ctx->prev_agent_library && ctx->prev_end == line.start;
	ctx->prev_end = line.end;
	ctx->prev_agent_library = line.inode != 0 && agent_library(line.name);
	if (!eligible)
		return 0;
	vec_push(&scan_lines, line.start, line.end - line.start);
	uz_scan_last.eligible_bytes += line.end - line.start;
	if (bss)
		return 0;
	for (size_t i = 0; i < UZ_ARRAY_SIZE(ctx->hints); i++)
		if (ctx->hints[i] >= line.start && ctx->hints[i] < line.end)
			return 0; /* a thread stack of ours */
	pieces_add(ctx, line.start, line.end);
	return 0;
}

/*
 * One scan.  Watcher thread only.  Returns 0 or -errno (-ENOTCONN once the
 * process is no longer managed).
 */
int uz_scan_run(void)
{
	static struct maps_ctx ctx;
	uint64_t gen;
	int64_t taken;
	int r;

	if (!uz_client_managed())
		return -ENOTCONN;
	if (!scan_buffer) {
		scan_buffer = uz_own_mmap(SCAN_BUFFER_SIZE);
		if (!scan_buffer)
			return -ENOMEM;
	}
	uz_scan_last = (struct uz_scan_result){0};
	scan_lines.count = scan_pieces.count = scan_candidates.count = 0;
	locked_read();

	memset(&ctx, 0, sizeof(ctx));
	ctx.nr_own = uz_own_snapshot(ctx.own, UZ_ARRAY_SIZE(ctx.own));
	ctx.hints[0] = atomic_load(&uz_client.agent_stack_hint);
	ctx.hints[1] = atomic_load(&uz_client.watcher_stack_hint);
	uz_ranges_lock();
	gen = uz_ranges_gen_locked();
	uz_ranges_unlock();
	r = uz_read_lines("/proc/self/maps", scan_buffer, SCAN_BUFFER_SIZE, maps_line, &ctx);
	if (r < 0)
		return r;
	for (size_t i = 0; i < scan_locked.count; i++)
		uz_scan_last.locked_bytes += scan_locked.v[i].len;

	uz_ranges_lock();
	uz_ranges_reconcile_locked(scan_lines.v, scan_lines.count, gen);
	for (size_t i = 0; i < scan_pieces.count && uz_client_managed(); i++) {
		struct uz_register_range piece = scan_pieces.v[i], gaps[SCAN_GAPS_MAX];
		bool registered, blocked;
		size_t n = uz_range_gaps_locked(piece.start, piece.start + piece.len, gaps,
						SCAN_GAPS_MAX, &registered, &blocked);

		if (blocked)
			continue;
		if (registered) {
			/* The table says registered: ask the kernel where it can tell. */
			uint64_t covered = n && gaps[0].start == piece.start
					       ? gaps[0].start + gaps[0].len
					       : piece.start;
			int probe = uz_uffd_probe(covered);

			if (probe < 0)
				continue;
			if (probe == 0) {
				uz_range_forget_locked(piece.start, piece.len); /* stale */
				gaps[0] = piece;
				n = 1;
			}
		}
		for (size_t j = 0; j < n; j++)
			vec_push(&scan_candidates, gaps[j].start, gaps[j].len);
		uz_scan_last.registered_bytes += piece.len;
	}
	uz_ranges_unlock();
	for (size_t i = 0; i < scan_candidates.count; i++)
		uz_scan_last.registered_bytes -= scan_candidates.v[i].len;

	if (!scan_candidates.count)
		return 0;
	taken = uz_ranges_register_batch(scan_candidates.v, scan_candidates.count,
					 UZ_REGISTER_POPULATED, &uz_scan_last.refused_bytes);
	if (taken < 0)
		return (int)taken;
	uz_scan_last.registered_bytes += (uint64_t)taken;
	uz_scan_last.new_bytes = (uint64_t)taken;
	return 0;
}

/* fork's fallback (fork.c): fault in every eligible mapping; any thread, own stack buffer. */
static int populate_line(char *text, void *arg)
{
	struct uz_maps_line line;

	if (uz_maps_parse(text, &line) && uz_maps_eligible(&line))
		(void)madvise((void *)(uintptr_t)line.start, line.end - line.start,
			      MADV_POPULATE_READ);
	return 0;
}

void uz_scan_populate_registered(void)
{
	char buf[4096];

	uz_read_lines("/proc/self/maps", buf, sizeof(buf), populate_line, NULL);
}
