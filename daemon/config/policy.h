/* SPDX-License-Identifier: MIT */
/*
 * The policy that applies to one client: what the config says for its
 * cgroup (daemon/config resolves it), in the units the paging path uses.
 * Shared between daemon/config (producer) and daemon/fault (consumer).
 */
#pragma once

#include <stdbool.h>
#include <stdint.h>

#include "compress/compress.h"

#define UZ_UNLIMITED UINT64_MAX

enum uz_poor_policy {
	UZ_POOR_KEEP_RAW = 0, /* store a page that compresses badly uncompressed */
	UZ_POOR_REJECT = 1,   /* leave it resident (or write it straight to disk when writeback is on) */
};

struct uz_policy {
	uint64_t resident_max;        /* bytes: high watermark of resident registered memory */
	uint64_t resident_low;        /* bytes: reclaim stops below this (low watermark) */
	uint64_t pool_max;            /* bytes of pool this cgroup may use; UZ_UNLIMITED */
	uint64_t swap_max;            /* bytes of swap file this cgroup may use; UZ_UNLIMITED */
	bool writeback;               /* may the shrinker write this cgroup's pages to disk */
	enum compressor_algo algo;    /* COMPRESSOR_LZ4 or COMPRESSOR_ZSTD */
	int level;                    /* compressor level (zstd) */
	uint32_t poor_threshold;      /* compressed bytes above which a page is "poor" */
	enum uz_poor_policy poor_policy;
	unsigned fault_around_max;    /* pages: largest fault-around window from the pool; 0 = off */
	unsigned unit_pages;          /* pages compressed together where access has locality: 1 or 4 */
};

/* The built-in defaults, used with no config file at all. */
#define UZ_DEFAULT_RESIDENT_MAX (64ULL << 20)
#define UZ_DEFAULT_RESIDENT_LOW_PERCENT 90
#define UZ_DEFAULT_POOR_THRESHOLD 3584 /* 7/8 of a page */
#define UZ_DEFAULT_FAULT_AROUND 32	/* pages put back ahead at most, per fault */
#define UZ_FAULT_AROUND_MAX 256		/* the largest FaultAround= accepted */
#define UZ_DEFAULT_UNIT_PAGES 4		/* CompressionUnit=: 1 (off) or PE_UNIT_PAGES */

static inline void uz_policy_default(struct uz_policy *p)
{
	*p = (struct uz_policy){
		.resident_max = UZ_DEFAULT_RESIDENT_MAX,
		.resident_low = UZ_DEFAULT_RESIDENT_MAX / 100 * UZ_DEFAULT_RESIDENT_LOW_PERCENT,
		.pool_max = UZ_UNLIMITED,
		.swap_max = UZ_UNLIMITED,
		.writeback = true,
		.algo = COMPRESSOR_LZ4,
		.level = 0,
		.poor_threshold = UZ_DEFAULT_POOR_THRESHOLD,
		.poor_policy = UZ_POOR_KEEP_RAW,
		.fault_around_max = UZ_DEFAULT_FAULT_AROUND,
		.unit_pages = UZ_DEFAULT_UNIT_PAGES,
	};
}
