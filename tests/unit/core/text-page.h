/* SPDX-License-Identifier: MIT */
/*
 * Test and benchmark data: pages that compress like real program memory.
 * Text-like pages are words from a small vocabulary mixed with numbers,
 * which lz4 compresses about 2:1 like the heaps and buffers measured in the
 * brief; random pages do not compress at all.  A xorshift generator keeps
 * every run reproducible from its seed.
 */
#pragma once

#include <stdint.h>
#include <stdio.h>
#include <string.h>

static inline uint64_t test_rand_next(uint64_t *state)
{
	uint64_t x = *state ? *state : 0x9e3779b97f4a7c15ULL;

	x ^= x << 13;
	x ^= x >> 7;
	x ^= x << 17;
	*state = x;
	return x;
}

static const char *const test_vocabulary[] = {
    "the",    "page",	"memory", "compress", "value", "client", "return", "struct",
    "buffer", "error",	"thread", "request",  "index", "handle", "offset", "length",
    "cgroup", "daemon", "fault",  "swap",     "pool",  "store",	 "load",   "free",
    "map",    "size",	"count",  "name",     "user",  "time",	 "data",   "node",
    "alpha",  "bravo",	"kilo",	  "lima",     "mike",  "oscar",	 "quebec", "sierra",
};

/* Fill a page with words and numbers; lz4 ratio about 2. */
static inline void test_fill_text(void *page, size_t size, uint64_t *state)
{
	char *p = page, *end = p + size;

	while (p < end) {
		char word[40];
		uint64_t r = test_rand_next(state);
		int n;

		if ((r & 7) == 0)
			n = snprintf(word, sizeof(word), "%llu ",
				     (unsigned long long)((r >> 8) % 1000003));
		else if ((r & 7) == 1)
			n = snprintf(word, sizeof(word), "0x%llx, ",
				     (unsigned long long)((r >> 8) & 0xfffff));
		else
			n = snprintf(word, sizeof(word), "%s ",
				     test_vocabulary[(r >> 8) % (sizeof(test_vocabulary) /
								 sizeof(test_vocabulary[0]))]);
		if (n > end - p)
			n = (int)(end - p);
		memcpy(p, word, (size_t)n);
		p += n;
	}
}

static inline void test_fill_random(void *page, size_t size, uint64_t *state)
{
	uint64_t *words = page;
	size_t i;

	for (i = 0; i < size / sizeof(uint64_t); i++)
		words[i] = test_rand_next(state);
}
