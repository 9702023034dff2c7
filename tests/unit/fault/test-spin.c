// SPDX-License-Identifier: MIT
/*
 * Unit test of the spin gate (daemon/fault/spin.c): with every CPU this
 * process may use kept busy (one busy thread more than CPUs), the gate
 * shuts within a few sampling periods, and stays shut.  Its opening on an
 * idle host is not tested here: a test suite's host is rarely idle (it is
 * measured in docs/PERFORMANCE.md instead).
 */
#include <pthread.h>
#include <sched.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <unistd.h>
#include <cmocka.h>

#include "daemon.h" /* uz_now_usec */
#include "util.h"
#include "fault/spin.h"

#define BUSY_MAX 64

static volatile bool stop;

static void *busy_main(void *arg)
{
	(void)arg;
	while (!__atomic_load_n(&stop, __ATOMIC_RELAXED))
		;
	return NULL;
}

static void test_shuts_when_cpus_are_busy(void **state)
{
	pthread_t threads[BUSY_MAX];
	unsigned nr, i, shut_samples = 0;
	uint64_t start, deadline;
	cpu_set_t cpus;

	(void)state;
	assert_int_equal(sched_getaffinity(0, sizeof(cpus), &cpus), 0);
	nr = uz_min((unsigned)CPU_COUNT(&cpus) + 1, (unsigned)BUSY_MAX);
	for (i = 0; i < nr; i++)
		assert_int_equal(pthread_create(&threads[i], NULL, busy_main, NULL), 0);
	/* 200 ms periods: shut within 3 s, then shut for another 0.5 s. */
	start = uz_now_usec();
	deadline = start + 3000000;
	while (uz_now_usec() < deadline && shut_samples < 50) {
		if (!spin_gate_open(uz_now_usec()))
			shut_samples++;
		else
			shut_samples = 0;
		usleep(10000);
	}
	__atomic_store_n(&stop, true, __ATOMIC_RELAXED);
	for (i = 0; i < nr; i++)
		pthread_join(threads[i], NULL);
	assert_int_equal(shut_samples, 50);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_shuts_when_cpus_are_busy),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
