// SPDX-License-Identifier: MIT
/*
 * The spin gate (spin.h): idle cores from /proc/stat, CPU waits from PSI.
 *
 * The first line of /proc/stat gives the host's CPU time in USER_HZ ticks
 * per state; idle + iowait is time no task wanted a CPU.  The "some" line
 * of /proc/pressure/cpu totals the microseconds during which at least one
 * task was runnable and waiting.  Over a period of SPIN_GATE_PERIOD_MS:
 *
 *     spare    = idle ticks / (USER_HZ * seconds)  [+ our spinning / elapsed]
 *     pressure = waited / elapsed
 *
 * Our spinning is counted back into spare while the gate is open because
 * it is what the spin itself takes from idle: without it, a host with one
 * idle core would see none while we spin, close the gate, see one again,
 * open it, and so on.  Pressure tells whether that spinning was in
 * anyone's way.  A fault ping-pong alone shows ~10% pressure here with the
 * spin off (wake-ups meet a busy CPU for a moment) and ~2% with it on;
 * one CPU hog beside it, 15-40%; hence SPIN_GATE_PRESSURE_MAX.
 *
 * The gate is process-wide (it describes the host), so its state is a
 * static here, not a member of one daemon.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "util.h"
#include "fault/spin.h"

#define SPIN_GATE_PERIOD_MS    200
#define SPIN_GATE_OPEN_AT      1.0  /* spare cores at which a closed gate opens */
#define SPIN_GATE_CLOSE_AT     0.75 /* ... and below which an open one closes */
#define SPIN_GATE_PRESSURE_MAX 0.25 /* share of the period some task waited for a CPU */

static struct {
	pthread_mutex_t lock; /* held by the one sampler of a period (trylock) */
	bool open;	      /* atomic */
	uint64_t next_usec;   /* atomic: when the next sample is due */
	uint64_t spin_usec;   /* atomic: spinning noted since the start */
	uint64_t last_usec;   /* the last sample's clock, its idle ticks, our spinning */
	uint64_t last_idle;
	uint64_t last_spin;
	uint64_t last_waited; /* ... and the CPU pressure's total */
	bool have_psi;
	long hz;
} gate = {.lock = PTHREAD_MUTEX_INITIALIZER, .open = true};

/* Idle + iowait ticks of all CPUs; false when unreadable. */
static bool read_idle_ticks(uint64_t *idle)
{
	unsigned long long v[5];
	char buf[256];

	if (uz_read_text("/proc/stat", buf, sizeof(buf)) <= 0)
		return false;
	/* "cpu  user nice system idle iowait ..." */
	if (sscanf(buf, "cpu %llu %llu %llu %llu %llu", &v[0], &v[1], &v[2], &v[3], &v[4]) != 5)
		return false;
	*idle = v[3] + v[4];
	return true;
}

/*
 * Microseconds some task waited for a CPU (the "some" total of
 * /proc/pressure/cpu); false without PSI.
 */
static bool read_cpu_pressure(uint64_t *waited)
{
	unsigned long long total;
	char buf[256], *p;

	if (uz_read_text("/proc/pressure/cpu", buf, sizeof(buf)) <= 0)
		return false;
	p = strstr(buf, "total=");
	if (strncmp(buf, "some ", 5) || !p || sscanf(p, "total=%llu", &total) != 1)
		return false;
	*waited = total;
	return true;
}

static void sample(uint64_t now)
{
	uint64_t idle, waited = 0, spin = __atomic_load_n(&gate.spin_usec, __ATOMIC_RELAXED);
	bool have_psi, open = __atomic_load_n(&gate.open, __ATOMIC_RELAXED);
	double elapsed, spare, pressure = 0;

	if (!gate.hz) {
		gate.hz = sysconf(_SC_CLK_TCK);
		if (gate.hz <= 0)
			gate.hz = 100;
	}
	if (!read_idle_ticks(&idle)) {
		/* Blind: a spin on a host we cannot see might take a busy core. */
		__atomic_store_n(&gate.open, false, __ATOMIC_RELAXED);
		return;
	}
	have_psi = read_cpu_pressure(&waited);
	if (gate.last_usec && now > gate.last_usec && idle >= gate.last_idle &&
	    waited >= gate.last_waited) {
		elapsed = (double)(now - gate.last_usec);
		spare = (double)(idle - gate.last_idle) * 1e6 / (double)gate.hz / elapsed;
		if (have_psi && gate.have_psi)
			pressure = (double)(waited - gate.last_waited) / elapsed;
		if (open) {
			/*
			 * Our spinning is not idle time, but it gives way: count
			 * it as spare unless someone waited for a CPU meanwhile.
			 */
			spare += (double)(spin - gate.last_spin) / elapsed;
			if (spare < SPIN_GATE_CLOSE_AT || pressure > SPIN_GATE_PRESSURE_MAX)
				open = false;
		} else if (spare >= SPIN_GATE_OPEN_AT && pressure <= SPIN_GATE_PRESSURE_MAX) {
			open = true;
		}
		__atomic_store_n(&gate.open, open, __ATOMIC_RELAXED);
	}
	gate.last_usec = now;
	gate.last_idle = idle;
	gate.last_spin = spin;
	gate.last_waited = waited;
	gate.have_psi = have_psi;
}

bool spin_gate_open(uint64_t now)
{
	if (now >= __atomic_load_n(&gate.next_usec, __ATOMIC_RELAXED) &&
	    pthread_mutex_trylock(&gate.lock) == 0) {
		if (now >= gate.next_usec) {
			sample(now);
			__atomic_store_n(&gate.next_usec, now + SPIN_GATE_PERIOD_MS * 1000,
					 __ATOMIC_RELAXED);
		}
		pthread_mutex_unlock(&gate.lock);
	}
	return __atomic_load_n(&gate.open, __ATOMIC_RELAXED);
}

void spin_gate_note_spin(uint64_t usec)
{
	__atomic_fetch_add(&gate.spin_usec, usec, __ATOMIC_RELAXED);
}
