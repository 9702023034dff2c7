/* SPDX-License-Identifier: MIT */
/*
 * A minimal intrusive doubly-linked list, for every layer of the daemon
 * (it includes nothing of theirs).
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>

struct uz_list {
	struct uz_list *prev, *next;
};

static inline void uz_list_init(struct uz_list *head)
{
	head->prev = head->next = head;
}

static inline bool uz_list_empty(const struct uz_list *head)
{
	return head->next == head;
}

static inline void uz_list_add_tail(struct uz_list *head, struct uz_list *item)
{
	item->prev = head->prev;
	item->next = head;
	head->prev->next = item;
	head->prev = item;
}

static inline void uz_list_del(struct uz_list *item)
{
	item->prev->next = item->next;
	item->next->prev = item->prev;
	item->prev = item->next = item;
}

#define uz_container_of(ptr, type, member) ((type *)((char *)(ptr)-offsetof(type, member)))
