// SPDX-License-Identifier: MIT
/*
 * apps-alloc: small and large malloc()s of whatever allocator the process
 * runs on (tests/apps runs it with tcmalloc preloaded), every block filled
 * with a pattern of (block, generation, word), then verified, half of them
 * freed and allocated again, and everything verified once more.
 *
 *   apps-alloc            prints "READY", waits for a line on stdin (the
 *                         test measures the daemon's figures meanwhile),
 *                         then verifies and prints "verified N blocks"
 *
 * Exit status 0 when every word read back is the one written.
 */
#include <dlfcn.h>
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define SMALL_BLOCKS 800000
#define LARGE_BLOCKS 32

struct block {
	uint64_t *p;
	size_t words;
	uint32_t gen;
};

static struct block small[SMALL_BLOCKS], large[LARGE_BLOCKS];

static inline uint64_t pattern(uint64_t block, uint64_t gen, uint64_t word)
{
	uint64_t x = block * 0x9e3779b97f4a7c15ull ^ gen * 0xc2b2ae3d27d4eb4full ^ word;

	x ^= x >> 31;
	x *= 0xbf58476d1ce4e5b9ull;
	return x ^ (x >> 29);
}

static int block_fill(struct block *b, uint64_t id, size_t words, uint32_t gen)
{
	b->p = malloc(words * sizeof(uint64_t));
	if (!b->p)
		return -1;
	b->words = words;
	b->gen = gen;
	for (size_t w = 0; w < words; w++)
		b->p[w] = pattern(id, gen, w);
	return 0;
}

static uint64_t block_check(const struct block *b, uint64_t id)
{
	uint64_t bad = 0;

	for (size_t w = 0; w < b->words; w++)
		bad += b->p[w] != pattern(id, b->gen, w);
	return bad;
}

static uint64_t check_all(void)
{
	uint64_t bad = 0;

	for (uint64_t i = 0; i < SMALL_BLOCKS; i++)
		bad += block_check(&small[i], i);
	for (uint64_t i = 0; i < LARGE_BLOCKS; i++)
		bad += block_check(&large[i], SMALL_BLOCKS + i);
	return bad;
}

int main(void)
{
	char line[16];
	uint64_t bad;

	printf("allocator: %s\n", dlsym(RTLD_DEFAULT, "tc_malloc") ? "tcmalloc" : "other");
	for (uint64_t i = 0; i < SMALL_BLOCKS; i++)
		if (block_fill(&small[i], i, 8 + i % 25, 0) < 0)
			return 2;
	for (uint64_t i = 0; i < LARGE_BLOCKS; i++)
		if (block_fill(&large[i], SMALL_BLOCKS + i, (2 + i % 3) << 16, 0) < 0)
			return 2;
	printf("READY\n");
	fflush(stdout);
	if (!fgets(line, sizeof(line), stdin))
		line[0] = 0;

	bad = check_all();
	for (uint64_t i = 0; i < SMALL_BLOCKS; i += 2) {
		free(small[i].p);
		if (block_fill(&small[i], i, 8 + (i * 7) % 25, 1) < 0)
			return 2;
	}
	for (uint64_t i = 0; i < LARGE_BLOCKS; i += 2) {
		free(large[i].p);
		if (block_fill(&large[i], SMALL_BLOCKS + i, (1 + i % 4) << 16, 1) < 0)
			return 2;
	}
	bad += check_all();
	if (bad) {
		printf("%" PRIu64 " words differ\n", bad);
		return 1;
	}
	printf("verified %d blocks\n", SMALL_BLOCKS + LARGE_BLOCKS);
	return 0;
}
