/* SPDX-License-Identifier: MIT */
/*
 * A client's socket messages and the requests they queue (request.c), on
 * its fault thread.
 */
#pragma once

#include <stdint.h>

struct client;
struct fault_thread;

/* Read and handle the client's socket messages (a bounded number), then run its requests. */
void fault_client_handle_socket(struct fault_thread *t, struct client *c);
/* Queue a request (CLIENT_REQ_*).  -EBADMSG: the queue is full. */
int fault_request_push(struct client *c, uint32_t type, uint32_t seq, uint64_t start, uint64_t end,
		       uint32_t arg);
/* Run the client's queued requests as far as they go. */
void fault_client_run_requests(struct fault_thread *t, struct client *c);
