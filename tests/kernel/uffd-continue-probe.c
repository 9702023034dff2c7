/* SPDX-License-Identifier: MIT */
/*
 * uffd-continue-probe: can UFFDIO_CONTINUE tell whether private anonymous
 * memory is registered with a userfaultfd, without changing anything?
 *
 * libuzswap's scan (libclient/ranges.c, uz_uffd_probe) and uzswapd's
 * REGISTER check (daemon/client/client.c) rely on it: on a private
 * anonymous VMA the kernel looks the VMA up first and answers ENOENT when
 * it has no uffd context, and only then refuses the ioctl with EINVAL
 * (CONTINUE is for shmem and hugetlb).  This checks, on this kernel:
 *   - registered, page present:     EINVAL, the page's contents unchanged;
 *   - registered, page never faulted: EINVAL, and the page still absent
 *     (a read afterwards faults to the handler: no page was installed);
 *   - not registered:               ENOENT;
 *   - not mapped:                   ENOENT.
 * Exit 0 when all hold, 1 when one does not, 77 without userfaultfd.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "uffd-compat.h"

#define PAGE 4096

static int probe(int uffd, void *addr)
{
	struct uffdio_continue c = {.range = {.start = (uintptr_t)addr, .len = PAGE}};

	return ioctl(uffd, UFFDIO_CONTINUE, &c) < 0 ? -errno : 0;
}

static int expect(const char *what, int got, int want)
{
	printf("%s %s: %s (want %s)\n", got == want ? "ok" : "not ok", what, strerror(-got),
	       strerror(-want));
	return got == want ? 0 : 1;
}

int main(void)
{
	struct uffdio_api api = {.api = UFFD_API};
	unsigned char vec = 0;
	int uffd, fail = 0;
	char *reg, *plain;

	uffd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);
	if (uffd < 0 || ioctl(uffd, UFFDIO_API, &api) < 0) {
		printf("SKIP: no userfaultfd (%s)\n", strerror(errno));
		return 77;
	}
	reg = mmap(NULL, 16 * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	plain = mmap(NULL, 16 * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (reg == MAP_FAILED || plain == MAP_FAILED)
		return 1;
	memset(reg, 0x5a, PAGE);
	plain[0] = 1;
	{
		struct uffdio_register r = {.range = {.start = (uintptr_t)reg, .len = 16 * PAGE},
					    .mode = UFFDIO_REGISTER_MODE_MISSING};

		if (ioctl(uffd, UFFDIO_REGISTER, &r) < 0) {
			printf("SKIP: UFFDIO_REGISTER: %s\n", strerror(errno));
			return 77;
		}
	}
	fail |= expect("registered, present", probe(uffd, reg), -EINVAL);
	fail |= expect("registered, never faulted", probe(uffd, reg + 8 * PAGE), -EINVAL);
	fail |= expect("not registered", probe(uffd, plain), -ENOENT);
	fail |= expect("not registered, never faulted", probe(uffd, plain + 8 * PAGE), -ENOENT);
	munmap(plain, 16 * PAGE);
	fail |= expect("not mapped", probe(uffd, plain), -ENOENT);
	if (reg[PAGE - 1] != 0x5a) {
		printf("not ok: the present page changed\n");
		fail = 1;
	}
	if (mincore(reg + 8 * PAGE, PAGE, &vec) == 0 && (vec & 1)) {
		printf("not ok: the probe installed a page\n");
		fail = 1;
	} else {
		printf("ok: the never-faulted page is still absent\n");
	}
	return fail;
}
