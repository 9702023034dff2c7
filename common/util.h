/* SPDX-License-Identifier: MIT */
/*
 * Small helpers shared by every part of uzswap: page geometry, cleanup
 * attributes, branch hints.  Nothing here allocates or logs.
 */
#pragma once

#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/types.h>
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

/*
 * Read a small text file (procfs, sysfs, cgroupfs) into buf with one
 * read and end it with a NUL.  Returns its length, or -errno of the open
 * or the read.  Opened afresh every time: procfs figures read again from
 * offset 0 of a kept descriptor were seen not to change.
 */
static inline ssize_t uz_read_text(const char *path, char *buf, size_t size)
{
	ssize_t n;
	int fd;

	if (size == 0)
		return -EINVAL;
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	n = read(fd, buf, size - 1);
	if (n < 0)
		n = -errno;
	close(fd);
	if (n >= 0)
		buf[n] = '\0';
	return n;
}

#define _cleanup_free_ uz_cleanup(uz_freep)
#define _cleanup_close_ uz_cleanup(uz_closep)
