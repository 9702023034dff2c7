/* SPDX-License-Identifier: MIT */
/*
 * mmap, mmap64, munmap and mremap, interposed.  The only functions besides
 * the uzswap_* API that the library exports: it never replaces the
 * program's allocator (no malloc family here), and the scan (scan.c) finds
 * the memory that comes through none of these.
 *
 * mmap registers new private anonymous read-write mappings of at least
 * UZSWAP_MIN_REGION bytes (not stacks, not hugetlb, not MAP_LOCKED) right
 * away, so that their first touches are served by the daemon's zero-fill
 * runs instead of being found by the next scan.  MAP_FIXED is fine: the
 * kernel unmaps what was there first (the daemon sees UNMAP) and the table
 * forgets it, then the new mapping registers like any other.  A
 * MAP_POPULATE mapping already has its pages, so it registers as
 * UZ_REGISTER_POPULATED.  If registration fails the mapping is returned
 * unmanaged: the caller always gets its memory.  Before the process has
 * joined, a mapping of UZSWAP_JOIN_MIN or more wakes the watcher, which
 * decides about joining.
 *
 * munmap and mremap need no message (the daemon reads UNMAP and REMAP
 * events) but the table should follow them.  The kernel keeps the uffd
 * registration of a moved or grown mapping; a grown tail is announced
 * with a REGISTER so the daemon counts it.  They hold range_lock across
 * the system call only when the range overlaps the table, so that no
 * other thread can claim a fresh mapping at that address in between; the
 * REGISTER round trips run with no lock held (ranges.c).
 *
 * The real calls are made with syscall(2), never through dlsym: the hooks
 * may run before the constructor and inside the dynamic linker's own
 * allocations.  The agent thread always takes the plain path.  So does a
 * thread that already holds range_lock (a join: pthread_create of the
 * agent callocs through the program's malloc, which may mmap): it updates
 * the table without locking again and leaves a new mapping to the scan.
 */
/*
 * <sys/mman.h> renames mmap to mmap64 under _FILE_OFFSET_BITS=64 (meson's
 * default); this file defines both symbols, so it must see the real names.
 * off_t is 64 bits on every 64-bit ABI either way.
 */
#undef _FILE_OFFSET_BITS

#include <errno.h>
#include <stdarg.h>
#include <sys/ioctl.h>
#include <sys/mman.h>

#include "client.h"
#include "uffd-compat.h"
#include "util.h"

static inline uint64_t page_round_up(uint64_t len)
{
	return (len + UZ_PAGE_SIZE - 1) & UZ_PAGE_MASK;
}

static bool mapping_candidate(size_t len, int prot, int flags)
{
	if (prot != (PROT_READ | PROT_WRITE))
		return false;
	if ((flags & MAP_TYPE) != MAP_PRIVATE || !(flags & MAP_ANONYMOUS))
		return false;
	return !(flags & (MAP_GROWSDOWN | MAP_STACK | MAP_HUGETLB | MAP_LOCKED));
}

static bool mapping_wanted(size_t len, int prot, int flags)
{
	if (!atomic_load_explicit(&uz_client.ready, memory_order_acquire))
		return false;
	if (!uz_client_managed()) {
		/* Not joined yet: a large mapping may make the process worth it. */
		if (uz_client.join_min && len >= uz_client.join_min && !uz_client.join_tried &&
		    !uz_client.disabled && mapping_candidate(len, prot, flags))
			uz_watcher_kick();
		return false;
	}
	if (len < uz_client.min_region || !mapping_candidate(len, prot, flags))
		return false;
	return !uz_is_agent() && !uz_ranges_held();
}

static void *mmap_hook(void *addr, size_t len, int prot, int flags, int fd, off_t off)
{
	bool fixed = flags & (MAP_FIXED | MAP_FIXED_NOREPLACE);
	bool held = uz_ranges_held();
	void *p;
	int saved;

	if (!mapping_wanted(len, prot, flags)) {
		if (!(flags & MAP_FIXED) || !uz_ranges_any() || uz_is_agent())
			return uz_raw_mmap(addr, len, prot, flags, fd, off);
		/* MAP_FIXED over registered memory: the old range is gone. */
		if (!held)
			uz_ranges_lock();
		p = uz_raw_mmap(addr, len, prot, flags, fd, off);
		if (p != MAP_FAILED)
			uz_range_forget_locked((uintptr_t)p, page_round_up(len));
		if (!held)
			uz_ranges_unlock();
		return p;
	}

	if (fixed)
		uz_ranges_lock();
	p = uz_raw_mmap(addr, len, prot, flags, fd, off);
	if (fixed) {
		if (p != MAP_FAILED)
			uz_range_forget_locked((uintptr_t)p, page_round_up(len));
		uz_ranges_unlock();
	}
	if (p == MAP_FAILED)
		return p;
	saved = errno;
	uz_range_register((uintptr_t)p, page_round_up(len),
			  (flags & MAP_POPULATE) ? UZ_REGISTER_POPULATED : 0, true);
	errno = saved;
	return p;
}

UZ_EXPORT void *mmap(void *addr, size_t len, int prot, int flags, int fd, off_t off)
{
	return mmap_hook(addr, len, prot, flags, fd, off);
}

UZ_EXPORT void *mmap64(void *addr, size_t len, int prot, int flags, int fd, off_t off)
{
	return mmap_hook(addr, len, prot, flags, fd, off);
}

int uz_munmap_tracked(void *addr, size_t len)
{
	bool held = uz_ranges_held();
	int r;

	if (!uz_ranges_any() || uz_is_agent())
		return uz_raw_munmap(addr, len);
	if (!held)
		uz_ranges_lock();
	if (!uz_range_overlaps_locked((uintptr_t)addr, page_round_up(len))) {
		if (!held)
			uz_ranges_unlock();
		return uz_raw_munmap(addr, len);
	}
	r = uz_raw_munmap(addr, len);
	if (r == 0)
		uz_range_forget_locked((uintptr_t)addr, page_round_up(len));
	if (!held)
		uz_ranges_unlock();
	return r;
}

UZ_EXPORT int munmap(void *addr, size_t len)
{
	return uz_munmap_tracked(addr, len);
}

void *uz_mremap_tracked(void *old, size_t old_len, size_t new_len, int flags, void *new_addr)
{
	uint64_t old_start = (uintptr_t)old;
	uint64_t old_size = page_round_up(old_len), new_size = page_round_up(new_len);
	bool contained, held = uz_ranges_held();
	void *p;
	int saved;

	if (!uz_ranges_any() || uz_is_agent())
		return uz_raw_mremap(old, old_len, new_len, flags, new_addr);
	if (!held)
		uz_ranges_lock();
	if (!uz_range_overlaps_locked(old_start, old_size) &&
	    !((flags & MREMAP_FIXED) && uz_range_overlaps_locked((uintptr_t)new_addr, new_size))) {
		if (!held)
			uz_ranges_unlock();
		return uz_raw_mremap(old, old_len, new_len, flags, new_addr);
	}
	contained = uz_range_contains_locked(old_start, old_size);
	p = uz_raw_mremap(old, old_len, new_len, flags, new_addr);
	if (p == MAP_FAILED) {
		if (!held)
			uz_ranges_unlock();
		return p;
	}
	saved = errno;
	if (!(flags & MREMAP_DONTUNMAP))
		uz_range_forget_locked(old_start, old_size);
	/* What the kernel unmapped at the target (MREMAP_FIXED) is gone too. */
	uz_range_forget_locked((uintptr_t)p, new_size);
	if (contained)
		uz_range_remember_locked((uintptr_t)p, uz_min(old_size, new_size));
	if (!held)
		uz_ranges_unlock();
	/* The kernel registered the grown tail with the mapping: tell the daemon. */
	if (contained && new_size > old_size && uz_client_managed())
		uz_range_register((uintptr_t)p + old_size, new_size - old_size, 0, false);
	errno = saved;
	return p;
}

UZ_EXPORT void *mremap(void *old, size_t old_len, size_t new_len, int flags, ...)
{
	void *new_addr = NULL;

	if (flags & MREMAP_FIXED) {
		va_list ap;

		va_start(ap, flags);
		new_addr = va_arg(ap, void *);
		va_end(ap);
	}
	return uz_mremap_tracked(old, old_len, new_len, flags, new_addr);
}
