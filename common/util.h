/* SPDX-License-Identifier: MIT */
/*
 * Small helpers shared by every part of uzswap: page geometry, cleanup
 * attributes, branch hints.  Nothing here allocates or logs.
 */
#pragma once

#include <errno.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <unistd.h>

#define UZ_PAGE_SHIFT 12
#define UZ_PAGE_SIZE (1UL << UZ_PAGE_SHIFT)
#define UZ_PAGE_MASK (~(UZ_PAGE_SIZE - 1))

#define UZ_ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))
#define uz_likely(x) __builtin_expect(!!(x), 1)
#define uz_unlikely(x) __builtin_expect(!!(x), 0)
#define uz_min(a, b) ((a) < (b) ? (a) : (b))
#define uz_max(a, b) ((a) > (b) ? (a) : (b))
#define uz_cleanup(f) __attribute__((cleanup(f)))

static inline bool uz_page_aligned(uint64_t v)
{
	return (v & (UZ_PAGE_SIZE - 1)) == 0;
}

static inline void uz_freep(void *p)
{
	free(*(void **)p);
}

static inline void uz_closep(int *fd)
{
	if (*fd >= 0)
		close(*fd);
}

#define _cleanup_free_ uz_cleanup(uz_freep)
#define _cleanup_close_ uz_cleanup(uz_closep)
