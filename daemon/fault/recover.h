/* SPDX-License-Identifier: MIT */
/*
 * Taking a client back after a daemon restart, or a fork child with its
 * snapshot (recover.c), on its fault thread, before its uffd is read.
 */
#pragma once

struct client;
struct fault_thread;

/* A client that re-joined with UZ_HELLO_RESUME: its index checked, its journal applied. */
void fault_client_recover(struct fault_thread *t, struct client *c);
/* A fork child joining with its snapshot: it takes the snapshot's store and index over. */
void fault_client_adopt_snapshot(struct fault_thread *t, struct client *c);
