/* SPDX-License-Identifier: MIT */
/*
 * Serving a fault on a page of a client (serve.c), on its fault thread.
 */
#pragma once

#include <stdbool.h>
#include <stdint.h>

#include "index/index.h"

struct client;
struct fault_thread;

/* Serve one MISSING fault at addr.  0: served or parked; -EAGAIN: retry later. */
int fault_serve(struct fault_thread *t, struct client *c, uint64_t addr, bool write);

/*
 * The bytes of a stored or same-filled entry into dst.  < 0: they are lost
 * (poisoned).  A unit member's unit is decompressed once per operation
 * (fault_unit_cache_reset()).
 */
int fault_decode_page(struct fault_thread *t, struct client *c, page_entry_t e, uint8_t *dst);
/* Put the stored or same-filled page e back at vpn: 0, -EAGAIN, or the mapping is gone. */
int fault_load_page(struct fault_thread *t, struct client *c, uint64_t vpn, page_entry_t e,
		    page_entry_t *new_entry);
/* The page of entry e is back at vpn: index, pool object, statistics.  Its RESIDENT entry. */
page_entry_t fault_page_loaded(struct fault_thread *t, struct client *c, uint64_t vpn,
			       page_entry_t e);

/* May the agent of the batch out still move a page out of vpn?  *slot: its slot. */
bool fault_client_address_in_flight(struct client *c, uint64_t vpn, unsigned *slot);
