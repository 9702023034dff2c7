/* SPDX-License-Identifier: MIT */
/*
 * Giving a client's pages back (restore.c), on its fault thread.
 */
#pragma once

#include <stdbool.h>
#include <stdint.h>

struct client;
struct fault_thread;

/*
 * Copy every stored page of [*cursor, last] back: 0 when done, -EAGAIN,
 * -EBUSY (wait, *cursor advanced) or -ESRCH.
 */
int fault_client_restore_range(struct fault_thread *t, struct client *c, uint64_t *cursor,
			       uint64_t last, bool mark_referenced, bool skip_in_flight);
/* Give back what can be given without waiting on the client nor on the disk. */
void fault_client_restore_best_effort(struct fault_thread *t, struct client *c);
