/* SPDX-License-Identifier: MIT */
/*
 * A client's uffd messages and the VM events among them (vmevent.c), on
 * its fault thread.
 */
#pragma once

#include <stdint.h>

struct client;
struct fault_thread;
struct uffd_msg;

/* Read and handle what the client's uffd has (a bounded number of reads). */
void fault_client_handle_uffd(struct fault_thread *t, struct client *c);
/* One message of a client's uffd, read now or left in the journal by a killed daemon. */
void fault_client_handle_uffd_msg(struct fault_thread *t, struct client *c,
				  const struct uffd_msg *m);
/* Free every entry of [start, end) (REMOVE, UNMAP, UNREGISTER, exit). */
void fault_client_forget_range(struct client *c, uint64_t start, uint64_t end);
