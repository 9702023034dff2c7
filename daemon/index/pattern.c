// SPDX-License-Identifier: MIT
/*
 * The same-filled pattern table: gives each distinct fill word a small
 * index, so that a page that is one word repeated is recorded in its page
 * entry alone and costs no pool memory.
 *
 * Few distinct fill words occur in practice (zero, all ones, a poison or
 * canary word or two), so the table is small and bounded: PATTERN_MAX
 * words, found through an open-addressing hash of twice that size.  Word 0
 * is index 0 from the start and is answered without a lock, since the zero
 * page is by far the most common same-filled page.
 *
 * Locking: interning takes pattern_lock.  pattern_word() takes no lock: a
 * word is written before the count that makes its index valid is published
 * (release), and a reader that was handed an index got it after that.
 */
#include <errno.h>
#include <pthread.h>

#include "util.h"
#include "index/index.h"

#define PATTERN_MAX	  1024U
#define PATTERN_HASH_SIZE (2 * PATTERN_MAX)

_Static_assert((PATTERN_HASH_SIZE & (PATTERN_HASH_SIZE - 1)) == 0, "hash size: power of two");

static pthread_mutex_t pattern_lock = PTHREAD_MUTEX_INITIALIZER;
static uint64_t pattern_words[PATTERN_MAX];
static uint32_t pattern_count = 1; /* word 0 (zero) is index 0 */
/* Hash slot -> index + 1 (0: empty).  Guarded by pattern_lock. */
static uint32_t pattern_hash[PATTERN_HASH_SIZE];

static uint32_t pattern_hash_slot(uint64_t word)
{
	/* Fibonacci hashing: spreads words that differ in a few bits. */
	return (uint32_t)((word * 0x9e3779b97f4a7c15ULL) >> 32) & (PATTERN_HASH_SIZE - 1);
}

int pattern_intern(uint64_t word, uint64_t *index_out)
{
	uint32_t slot, index;
	int r = 0;

	if (word == 0) {
		*index_out = 0;
		return 0;
	}

	pthread_mutex_lock(&pattern_lock);
	for (slot = pattern_hash_slot(word);; slot = (slot + 1) & (PATTERN_HASH_SIZE - 1)) {
		if (pattern_hash[slot] == 0)
			break;
		if (pattern_words[pattern_hash[slot] - 1] == word) {
			*index_out = pattern_hash[slot] - 1;
			goto unlock;
		}
	}
	/* Not there: slot is the empty one the word would go to. */
	if (pattern_count >= PATTERN_MAX) {
		r = -ENOSPC;
		goto unlock;
	}
	index = pattern_count;
	pattern_words[index] = word;
	pattern_hash[slot] = index + 1;
	__atomic_store_n(&pattern_count, index + 1, __ATOMIC_RELEASE);
	*index_out = index;
unlock:
	pthread_mutex_unlock(&pattern_lock);
	return r;
}

uint64_t pattern_word(uint64_t index)
{
	if (index >= __atomic_load_n(&pattern_count, __ATOMIC_ACQUIRE))
		return 0;
	return pattern_words[index];
}
