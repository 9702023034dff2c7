/* SPDX-License-Identifier: MIT */
/*
 * libuzswap: the client library of uzswap.
 *
 * Preloaded (LD_PRELOAD=libuzswap.so) it manages large private anonymous
 * mappings of an unmodified program.  Linked, a program can also register
 * memory explicitly, give hints and read its own statistics.  All functions
 * return 0 or a negative errno; when no daemon is reachable they return
 * -ENOTCONN and the memory simply stays unmanaged.
 *
 * See libuzswap(3).
 */
#pragma once

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* 1 when this process is managed by uzswapd, 0 when not. */
int uzswap_managed(void);

/* Let uzswapd page [addr, addr + len): private anonymous, writable, page aligned. */
int uzswap_register(void *addr, size_t len);
/* Take a range back: every evicted page returns first, then it is unregistered. */
int uzswap_unregister(void *addr, size_t len);

enum uzswap_hint {
	UZSWAP_HINT_COLD = 1, /* evict soon */
	UZSWAP_HINT_HOT = 2,  /* bring back and keep resident */
};
int uzswap_hint(void *addr, size_t len, enum uzswap_hint hint);

struct uzswap_stats {
	uint64_t registered_bytes;
	uint64_t resident_pages;
	uint64_t stored_pages;
	uint64_t same_filled_pages;
	uint64_t on_disk_pages;
	uint64_t compressed_bytes;
	uint64_t faults;  /* faults the daemon served for this process */
	uint64_t zswpin;  /* pages faulted back from the pool */
	uint64_t zswpout; /* pages stored into the pool */
};
int uzswap_get_stats(struct uzswap_stats *stats);

#ifdef __cplusplus
}
#endif
