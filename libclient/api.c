/* SPDX-License-Identifier: MIT */
/*
 * The public API (include/uzswap.h) for programs that link libuzswap.
 *
 * Every function returns 0 or -errno; -ENOTCONN when the process is not
 * managed, -EDEADLK when called from the agent thread (which would wait
 * for itself).  Explicit registration always says UZ_REGISTER_POPULATED:
 * the memory may already hold data.
 *
 * A program that calls the API wants to be managed: the first call joins
 * the daemon at once if the process has not tried yet (lazy join would
 * otherwise wait for UZSWAP_JOIN_MIN of anonymous memory, watcher.c).
 */
#include <errno.h>
#include <string.h>

#include "uzswap.h"
#include "client.h"
#include "util.h"

static void join_on_demand(void)
{
	int r;

	uz_client_init(); /* linked statically-early callers may run before the constructor */
	if (uz_client_managed() || uz_client.join_tried || uz_client.disabled || uz_is_agent())
		return;
	uz_ranges_lock();
	r = uz_client_join_once(false);
	uz_ranges_unlock();
	if (r == 0)
		uz_watcher_kick(); /* scan now */
}

static int range_check(const void *addr, size_t len)
{
	uintptr_t start = (uintptr_t)addr;

	join_on_demand();
	if (!addr || len == 0 || !uz_page_aligned(start) || !uz_page_aligned(len) ||
	    start + len < start)
		return -EINVAL;
	if (!uz_client_managed())
		return -ENOTCONN;
	if (uz_is_agent())
		return -EDEADLK;
	return 0;
}

UZ_EXPORT int uzswap_managed(void)
{
	join_on_demand();
	return uz_client_managed();
}

UZ_EXPORT int uzswap_register(void *addr, size_t len)
{
	int r = range_check(addr, len);

	if (r < 0)
		return r;
	return uz_range_register((uintptr_t)addr, len, UZ_REGISTER_POPULATED, false);
}

UZ_EXPORT int uzswap_unregister(void *addr, size_t len)
{
	int r = range_check(addr, len);

	if (r < 0)
		return r;
	return uz_range_unregister((uintptr_t)addr, len);
}

UZ_EXPORT int uzswap_hint(void *addr, size_t len, enum uzswap_hint hint)
{
	struct uz_msg_hint msg;
	struct uz_msg_reply reply;
	int r = range_check(addr, len);

	if (r < 0)
		return r;
	if (hint != UZSWAP_HINT_COLD && hint != UZSWAP_HINT_HOT)
		return -EINVAL;
	msg = (struct uz_msg_hint){.start = (uintptr_t)addr, .len = len, .hint = hint};
	r = uz_conn_request(&msg, sizeof(msg), UZ_MSG_HINT, &reply, sizeof(reply), UZ_MSG_REPLY);
	return r < 0 ? r : reply.status;
}

UZ_EXPORT int uzswap_get_stats(struct uzswap_stats *stats)
{
	struct uz_msg_header request = {0};
	struct uz_msg_stats_reply reply;
	int r;

	if (!stats)
		return -EINVAL;
	join_on_demand();
	r = uz_conn_request(&request, sizeof(request), UZ_MSG_STATS, &reply, sizeof(reply),
			    UZ_MSG_STATS_REPLY);
	if (r < 0)
		return r;
	*stats = (struct uzswap_stats){
	    .registered_bytes = reply.registered_bytes,
	    .resident_pages = reply.resident_pages,
	    .stored_pages = reply.stored_pages,
	    .same_filled_pages = reply.same_filled_pages,
	    .on_disk_pages = reply.on_disk_pages,
	    .compressed_bytes = reply.compressed_bytes,
	    .faults = reply.faults,
	    .zswpin = reply.zswpin,
	    .zswpout = reply.zswpout,
	};
	return 0;
}
