/* SPDX-License-Identifier: MIT */
/*
 * forkbench: fork of a large managed process.
 *
 * Fills SIZE bytes with page-numbered data, waits WAIT_MS (so uzswapd
 * evicts it down to its budget), then times fork(): the parent's fork()
 * call (with libuzswap: FORK_PREPARE, every evicted page given back), the
 * child's full read and verification of the region, and the parent's own
 * verification afterwards.  Any mismatch exits 1.
 *
 * usage: forkbench [--size 256M] [--wait-ms 2000]
 * Run under LD_PRELOAD=libuzswap.so with uzswapd --resident-max 32M.
 */
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

static void page_fill(uint64_t *page, uint64_t pageno)
{
	for (size_t i = 0; i < 4096 / 8; i++)
		page[i] = pageno * 0x9e3779b97f4a7c15ULL + (i % 7 == 0 ? i : 0);
}

static int region_verify(unsigned char *region, size_t pages)
{
	for (size_t p = 0; p < pages; p++) {
		const uint64_t *page = (const uint64_t *)(region + p * 4096);

		for (size_t i = 0; i < 4096 / 8; i++)
			if (page[i] != p * 0x9e3779b97f4a7c15ULL + (i % 7 == 0 ? i : 0))
				return -1;
	}
	return 0;
}

int main(int argc, char **argv)
{
	size_t size = 256UL << 20, pages;
	unsigned wait_ms = 2000;
	unsigned char *region;
	uint64_t t0, t_fork, t_child, t_parent;
	int status;
	pid_t pid;

	for (int i = 1; i + 1 < argc; i += 2) {
		if (!strcmp(argv[i], "--size"))
			size = strtoull(argv[i + 1], NULL, 10) << 20;
		else if (!strcmp(argv[i], "--wait-ms"))
			wait_ms = (unsigned)atoi(argv[i + 1]);
	}
	pages = size / 4096;
	region = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (region == MAP_FAILED)
		return 1;
	for (size_t p = 0; p < pages; p++)
		page_fill((uint64_t *)(region + p * 4096), p);
	usleep(wait_ms * 1000);

	t0 = now_ns();
	pid = fork();
	if (pid < 0)
		return 1;
	if (pid == 0)
		_exit(region_verify(region, pages) < 0 ? 1 : 0);
	t_fork = now_ns();
	if (waitpid(pid, &status, 0) != pid || !WIFEXITED(status) || WEXITSTATUS(status)) {
		printf("CORRUPT in the child\n");
		return 1;
	}
	t_child = now_ns();
	if (region_verify(region, pages) < 0) {
		printf("CORRUPT in the parent\n");
		return 1;
	}
	t_parent = now_ns();
	printf("size_mib %zu\n", size >> 20);
	printf("fork_call_seconds %.3f\n", (double)(t_fork - t0) / 1e9);
	printf("fork_to_child_verified_seconds %.3f\n", (double)(t_child - t0) / 1e9);
	printf("parent_verify_seconds %.3f\n", (double)(t_parent - t_child) / 1e9);
	printf("total_seconds %.3f\n", (double)(t_parent - t0) / 1e9);
	return 0;
}
