// SPDX-License-Identifier: MIT
/*
 * Unit tests of daemon/stats: counters added from registered and
 * unregistered threads at once sum exactly; slots run out with -EUSERS and
 * come back when threads exit; metadata for every statistic; latency
 * histogram buckets and percentiles.
 */
#include <errno.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <cmocka.h>

#include "util.h"
#include "stats/stats.h"

#define ADDS_PER_THREAD 100000

struct adder {
	struct stats *stats;
	struct latency_hist *hist;
	bool do_register;
	int slot;
};

static void *adder_main(void *arg)
{
	struct adder *adder = arg;
	int i;

	adder->slot = adder->do_register ? stats_thread_register() : 0;
	for (i = 0; i < ADDS_PER_THREAD; i++) {
		stats_add(adder->stats, UZ_STAT_zswpout, 1);
		stats_add(adder->stats, UZ_STAT_stored_pages, i % 2 ? -1 : 2);
		latency_hist_record(adder->hist, (uint64_t)(i % 1000) + 1);
	}
	return NULL;
}

static void test_sum_across_threads(void **state)
{
	struct stats *stats = NULL;
	struct latency_hist *hist = NULL;
	struct adder adders[6];
	pthread_t threads[6];
	int64_t all[UZ_STAT__COUNT];
	int i;

	assert_int_equal(stats_new(&stats), 0);
	assert_int_equal(latency_hist_new(&hist), 0);
	for (i = 0; i < 6; i++) {
		/* Half register, half share slot 0 with atomic adds. */
		adders[i] = (struct adder){stats, hist, i % 2 == 0, -1};
		assert_int_equal(pthread_create(&threads[i], NULL, adder_main, &adders[i]), 0);
	}
	for (i = 0; i < 6; i++)
		pthread_join(threads[i], NULL);

	for (i = 0; i < 6; i += 2)
		assert_true(adders[i].slot > 0 && adders[i].slot < UZ_STATS_MAX_THREADS);
	assert_int_equal(stats_read(stats, UZ_STAT_zswpout), 6 * ADDS_PER_THREAD);
	assert_int_equal(stats_read(stats, UZ_STAT_stored_pages), 6 * (ADDS_PER_THREAD / 2));
	assert_int_equal(stats_read(stats, UZ_STAT_zswpin), 0);
	stats_read_all(stats, all);
	assert_int_equal(all[UZ_STAT_zswpout], 6 * ADDS_PER_THREAD);
	assert_int_equal(latency_hist_count(hist), 6 * ADDS_PER_THREAD);

	/* The same thread slot serves a second stats object. */
	struct stats *other = NULL;
	assert_int_equal(stats_new(&other), 0);
	stats_add(other, UZ_STAT_io_errors, 5);
	assert_int_equal(stats_read(other, UZ_STAT_io_errors), 5);
	assert_int_equal(stats_read(stats, UZ_STAT_io_errors), 0);
	stats_free(other);

	assert_null(latency_hist_free(hist));
	assert_null(stats_free(stats));
	assert_null(stats_free(NULL));
}

static pthread_barrier_t hold_barrier;

static void *hold_slot_main(void *arg)
{
	int *slot = arg;

	*slot = stats_thread_register();
	pthread_barrier_wait(&hold_barrier); /* all have tried */
	pthread_barrier_wait(&hold_barrier); /* main has counted */
	return NULL;
}

static void test_slots_run_out_and_return(void **state)
{
	enum { NR = UZ_STATS_MAX_THREADS + 4 };
	pthread_t threads[NR];
	int slots[NR], i, taken = 0, refused = 0, again = -1;

	pthread_barrier_init(&hold_barrier, NULL, NR + 1);
	for (i = 0; i < NR; i++)
		assert_int_equal(pthread_create(&threads[i], NULL, hold_slot_main, &slots[i]), 0);
	pthread_barrier_wait(&hold_barrier);
	for (i = 0; i < NR; i++) {
		if (slots[i] > 0)
			taken++;
		else if (slots[i] == -EUSERS)
			refused++;
	}
	assert_int_equal(taken + refused, NR);
	assert_true(taken <= UZ_STATS_MAX_THREADS - 1);
	assert_true(refused >= NR - (UZ_STATS_MAX_THREADS - 1));
	pthread_barrier_wait(&hold_barrier);
	for (i = 0; i < NR; i++)
		pthread_join(threads[i], NULL);
	pthread_barrier_destroy(&hold_barrier);

	/* Exited threads gave their slots back. */
	pthread_barrier_init(&hold_barrier, NULL, 2);
	assert_true(pthread_create(&threads[0], NULL, hold_slot_main, &again) == 0);
	pthread_barrier_wait(&hold_barrier);
	pthread_barrier_wait(&hold_barrier);
	pthread_join(threads[0], NULL);
	pthread_barrier_destroy(&hold_barrier);
	assert_true(again > 0);
}

static void test_names(void **state)
{
	int i;

	for (i = 0; i < UZ_STAT__COUNT; i++) {
		assert_non_null(stats_name((enum uz_stat)i));
		assert_non_null(stats_help((enum uz_stat)i));
	}
	assert_string_equal(stats_name(UZ_STAT_stored_pages), "stored_pages");
	assert_string_equal(stats_name(UZ_STAT_zswpwb), "zswpwb");
	assert_int_equal(stats_kind(UZ_STAT_stored_pages), UZ_STAT_GAUGE);
	assert_int_equal(stats_kind(UZ_STAT_zswpout), UZ_STAT_COUNTER);
	assert_null(stats_name(UZ_STAT__COUNT));
}

static void test_histogram(void **state)
{
	struct latency_hist *hist = NULL;
	uint64_t v, p;

	assert_int_equal(latency_hist_new(&hist), 0);
	assert_int_equal(latency_hist_percentile(hist, 50), 0);

	for (v = 1; v <= 10000; v++)
		latency_hist_record(hist, v * 1000);
	assert_int_equal(latency_hist_count(hist), 10000);

	/* Four sub-buckets per power of two: within 25% above the true value. */
	p = latency_hist_percentile(hist, 50);
	assert_true(p >= 5000000 && p <= 5000000 * 5 / 4);
	p = latency_hist_percentile(hist, 99);
	assert_true(p >= 9900000 && p <= 9900000 * 5 / 4);
	p = latency_hist_percentile(hist, 100);
	assert_true(p >= 10000000 && p <= 10000000 * 5 / 4);
	p = latency_hist_percentile(hist, 0);
	assert_true(p >= 1000 && p <= 1250);
	assert_true(latency_hist_percentile(hist, 90) <= latency_hist_percentile(hist, 99));
	latency_hist_free(hist);

	/* Small and huge values have buckets too. */
	assert_int_equal(latency_hist_new(&hist), 0);
	latency_hist_record(hist, 0);
	latency_hist_record(hist, 3);
	latency_hist_record(hist, UINT64_MAX);
	assert_int_equal(latency_hist_percentile(hist, 10), 0);
	assert_int_equal(latency_hist_percentile(hist, 50), 3);
	assert_true(latency_hist_percentile(hist, 100) == UINT64_MAX);
	latency_hist_free(hist);
	assert_null(latency_hist_free(NULL));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_sum_across_threads),
	    cmocka_unit_test(test_slots_run_out_and_return),
	    cmocka_unit_test(test_names),
	    cmocka_unit_test(test_histogram),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
