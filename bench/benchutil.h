/* Helpers shared by bench/loadgen.c and bench/pamstorm.c: a clock, latency percentiles,
 * and strict parsing of counts on the command line. */
#ifndef BENCHUTIL_H
#define BENCHUTIL_H

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <time.h>

static inline uint64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static inline int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
	return (x > y) - (x < y);
}

/* Nearest-rank percentile P of the N sorted values, in microseconds. */
static inline double pct_us(const uint64_t *sorted, long n, int p)
{
	if (n == 0)
		return 0;
	long rank = (n * p + 99) / 100;
	return (double)sorted[rank > 0 ? rank - 1 : 0] / 1e3;
}

/* TEXT as a whole number from 1 to MAX, or -1. */
static inline long parse_count(const char *text, long max)
{
	char *end;
	long v;
	errno = 0;
	v = strtol(text, &end, 10);
	if (errno != 0 || end == text || *end != '\0' || v < 1 || v > max)
		return -1;
	return v;
}

#endif
