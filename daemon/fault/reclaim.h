/* SPDX-License-Identifier: MIT */
/*
 * Reclaim of a client's resident pages: the CLOCK, the EVICT batch and
 * its landing (reclaim.c), on the client's fault thread.
 */
#pragma once

#include <stddef.h>
#include <stdint.h>

#include "index/index.h"

struct client;
struct fault_thread;
struct uz_msg_evict_done;

/* Send the client an EVICT batch if it is over its budget (or asked to shrink, or COLD). */
void fault_client_reclaim(struct fault_thread *t, struct client *c);
/* Count again the resident pages shared with a fork relative (now and then). */
void fault_client_shared_recount(struct client *c);
/* EVICT_DONE: store what the agent moved, put back the rest.  -EBADMSG: a bad message. */
int fault_client_evict_done(struct fault_thread *t, struct client *c,
			    const struct uz_msg_evict_done *m, size_t len);
/* Put back the pages of the landed batch that return from the ring. */
void fault_client_batch_install(struct fault_thread *t, struct client *c);
/* Compress one moved page into the pool.  0, or -errno: the caller puts it back. */
int fault_store_page(struct fault_thread *t, struct client *c, uint64_t vpn, page_entry_t e,
		     const uint8_t *page);
