/* SPDX-License-Identifier: MIT */
/*
 * Helpers shared by the integration test clients.
 *
 * Every page a test writes holds a deterministic, text-like pattern derived
 * from (logical page number, generation): a 32-byte header naming both,
 * then words drawn from a small dictionary by a PRNG seeded with the pair.
 * Generation 0 means "never written": the page must read as zeros.  A check
 * regenerates the expected page and compares all of it, so a page that came
 * back stale, zeroed, from another address or half-written is caught, and
 * the header of what was found is printed to say which.
 *
 * The clients are plain programs: they run under LD_PRELOAD=libuzswap.so
 * and find the library's API (if present) with dlsym, so the same binary
 * runs managed, unmanaged, or with no daemon at all.  Whether a page is
 * evicted is read from /proc/self/pagemap (an evicted page is not present).
 *
 * Output: progress and results on stdout; stderr is left to libuzswap so a
 * test can count the library's lines.  Any failed check exits 1.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include <uzswap.h>

extern size_t it_page_size;
extern const char *it_name;

void it_init(const char *name);

__attribute__((noreturn, format(printf, 1, 2))) void it_fail(const char *fmt, ...);
__attribute__((format(printf, 1, 2))) void it_log(const char *fmt, ...);

/* Write the pattern of (pageno, gen) to a page. */
void it_page_fill(void *page, uint64_t pageno, uint64_t gen);
/* 0 when the page holds (pageno, gen); otherwise describe what it holds in why. */
int it_page_check(const void *page, uint64_t pageno, uint64_t gen, char *why, size_t why_len);
/* Check or die, naming the context. */
void it_page_verify(const void *page, uint64_t pageno, uint64_t gen, const char *context);

/* Fill pages [first, first + count) of base with generation gen (logical page = first + i). */
void it_range_fill(void *base, uint64_t first, uint64_t count, uint64_t gen);
void it_range_verify(const void *base, uint64_t first, uint64_t count, uint64_t gen,
		     const char *context);

/* Private anonymous read-write mapping; dies on failure. */
void *it_map(size_t len);

/* Pages of [addr, addr + len) that are not present (evicted or never touched). */
uint64_t it_count_absent(const void *addr, size_t len);
/* 1 when the page at addr is not present. */
int it_page_absent(const void *addr);
/*
 * Wait until at least min_pages of the range are not present, for up to
 * timeout_ms.  Returns the last count seen.
 */
uint64_t it_wait_absent(const void *addr, size_t len, uint64_t min_pages, unsigned timeout_ms);

/* uzswap_managed() through dlsym: -1 when libuzswap is not loaded. */
int it_managed(void);
/* uzswap_get_stats() through dlsym: -ENOSYS when libuzswap is not loaded. */
int it_stats(struct uzswap_stats *stats);
void it_stats_print(const char *when);

enum it_expect { IT_EXPECT_ANY, IT_EXPECT_YES, IT_EXPECT_NO };
enum it_expect it_parse_expect(const char *s);
/*
 * Check uzswap_managed() against the expectation: with IT_EXPECT_YES the
 * process must be managed (and the library loaded), with IT_EXPECT_NO it
 * must not be.
 */
void it_check_managed(enum it_expect expect);

/* Wait for the eviction a managed test needs before it can prove anything. */
uint64_t it_require_evicted(const void *addr, size_t len, uint64_t min_pages, enum it_expect expect,
			    const char *what);

uint64_t it_now_ns(void);
/* FNV-1a over a page, 8 bytes at a time. */
uint64_t it_page_checksum(const void *page);
/* Print "STEP name" and wait for the harness's line on stdin (it_fail if it went away). */
void it_step(const char *name);
uint64_t it_rand(uint64_t *state);
size_t it_parse_size(const char *s);
/* 1 when CAP_SYS_PTRACE is in this process's effective set. */
int it_has_cap_sys_ptrace(void);
