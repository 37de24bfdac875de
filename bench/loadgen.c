/* loadgen: hammer slurmjwtd with THREADS clients, one connection per token.
 *
 *   loadgen -S SOCKET -n COUNT -t THREADS [-r OP] [-u USER] [-l LIFETIME] [-T TIMEOUT_MS]
 *   loadgen -M -S MUNGE_SOCKET -n COUNT -t THREADS
 *
 * With -M the clients ask munged instead, through libmunge (munge_encode, as remunge does),
 * a context per thread: the reference for latencies, which remunge does not report.
 *
 * Prints one line: tokens=.. errors=.. seconds=.. rate=.. p50_us=.. p99_us=.. threads=..
 * (rate counts successful calls; latencies are of successful calls). Exit status 0 when
 * every call succeeded, 1 when some failed, 2 on a usage error. Never prints a token.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <munge.h>

#include "benchutil.h"

#include "../pam/sjwt_client.h"

static const char *socket_path;
static char request[SJWT_MAX_REQUEST + 1];
static int timeout_ms = 5000, want_token, munge;
static long count;
static long next_call;      /* atomic: index of the next call to make */
static uint64_t *latency_ns; /* one slot per call; successful calls only are kept */
static long done_ok, errors;  /* atomic */
static pthread_barrier_t start_line;
static pthread_mutex_t first_lock = PTHREAD_MUTEX_INITIALIZER;
static char first_error[128];


static void note_error(const char *what)
{
	pthread_mutex_lock(&first_lock);
	if (first_error[0] == '\0')
		snprintf(first_error, sizeof first_error, "%s", what);
	pthread_mutex_unlock(&first_lock);
	__atomic_fetch_add(&errors, 1, __ATOMIC_RELAXED);
}

/* One call to slurmjwtd: 0 if it gave what was asked for, else note why and -1. */
static int call_slurmjwtd(void)
{
	char answer[SJWT_MAX_ANSWER], field[SJWT_MAX_ANSWER], code[64];
	int ok = -1;
	int rc = sjwt_call(socket_path, timeout_ms, request, answer, sizeof answer);
	if (rc != SJWT_OK) {
		note_error(sjwt_strerror(rc));
	} else if (!sjwt_answer_ok(answer)) {
		char what[96];
		if (sjwt_answer_code(answer, code, sizeof code) != SJWT_OK)
			strcpy(code, "?");
		snprintf(what, sizeof what, "ERR %s", code);
		note_error(what);
	} else if (want_token && sjwt_answer_field(answer, "token", field, sizeof field) != SJWT_OK) {
		note_error("OK answer without a usable token");
	} else {
		ok = 0;
	}
	explicit_bzero(answer, sizeof answer);
	explicit_bzero(field, sizeof field);
	return ok;
}

/* One credential from munged, on this thread's context CTX. */
static int call_munged(munge_ctx_t ctx)
{
	char *cred = NULL;
	munge_err_t rc = munge_encode(&cred, ctx, NULL, 0);
	free(cred);
	if (rc != EMUNGE_SUCCESS) {
		note_error(munge_strerror(rc));
		return -1;
	}
	return 0;
}

static void *worker(void *arg)
{
	munge_ctx_t ctx = NULL;
	long i;
	(void)arg;
	if (munge && ((ctx = munge_ctx_create()) == NULL ||
		      munge_ctx_set(ctx, MUNGE_OPT_SOCKET, socket_path) != EMUNGE_SUCCESS)) {
		note_error("cannot make a munge context");
		pthread_barrier_wait(&start_line);
		if (ctx != NULL)
			munge_ctx_destroy(ctx);
		return NULL; /* the others make the calls: the run fails (errors) all the same */
	}
	pthread_barrier_wait(&start_line);
	while ((i = __atomic_fetch_add(&next_call, 1, __ATOMIC_RELAXED)) < count) {
		uint64_t t0 = now_ns();
		int rc = munge ? call_munged(ctx) : call_slurmjwtd();
		uint64_t t1 = now_ns();
		if (rc == 0) {
			long k = __atomic_fetch_add(&done_ok, 1, __ATOMIC_RELAXED);
			latency_ns[k] = t1 - t0;
		}
	}
	if (ctx != NULL)
		munge_ctx_destroy(ctx);
	return NULL;
}

static void usage(void)
{
	fprintf(stderr, "usage: loadgen -S SOCKET -n COUNT -t THREADS [-r OP] [-u USER] "
			"[-l LIFETIME] [-T TIMEOUT_MS]\n"
			"       loadgen -M -S MUNGE_SOCKET -n COUNT -t THREADS\n");
	exit(2);
}

static long number(const char *text, long max)
{
	long v = parse_count(text, max);
	if (v < 0)
		usage();
	return v;
}

int main(int argc, char **argv)
{
	const char *op = "MINT", *user = NULL, *lifetime = NULL;
	long threads = 1, t;
	pthread_t *tids;
	uint64_t t0, t1;
	double seconds;
	int c;

	while ((c = getopt(argc, argv, "MS:n:t:r:u:l:T:")) != -1) {
		switch (c) {
		case 'M': munge = 1; break;
		case 'S': socket_path = optarg; break;
		case 'n': count = number(optarg, 10000000); break;
		case 't': threads = number(optarg, 1024); break;
		case 'r': op = optarg; break;
		case 'u': user = optarg; break;
		case 'l': lifetime = optarg; break;
		case 'T': timeout_ms = (int)number(optarg, 3600000); break;
		default: usage();
		}
	}
	if (socket_path == NULL || count == 0 || optind != argc)
		usage();
	if (sjwt_build_request(request, sizeof request, op, "user", user, "lifetime", lifetime,
			       (char *)NULL) < 0) {
		fprintf(stderr, "loadgen: cannot build a request for op %s\n", op);
		return 2;
	}
	want_token = strcmp(op, "MINT") == 0 || strcmp(op, "OPEN") == 0;
	latency_ns = calloc((size_t)count, sizeof *latency_ns);
	tids = calloc((size_t)threads, sizeof *tids);
	if (latency_ns == NULL || tids == NULL) {
		fprintf(stderr, "loadgen: out of memory\n");
		return 2;
	}
	pthread_barrier_init(&start_line, NULL, (unsigned)threads + 1);
	for (t = 0; t < threads; t++)
		if (pthread_create(&tids[t], NULL, worker, NULL) != 0) {
			fprintf(stderr, "loadgen: cannot start thread %ld\n", t);
			return 2;
		}
	t0 = now_ns();
	pthread_barrier_wait(&start_line);
	for (t = 0; t < threads; t++)
		pthread_join(tids[t], NULL);
	t1 = now_ns();

	seconds = (double)(t1 - t0) / 1e9;
	qsort(latency_ns, (size_t)done_ok, sizeof *latency_ns, cmp_u64);
	double p50 = pct_us(latency_ns, done_ok, 50), p99 = pct_us(latency_ns, done_ok, 99);
	if (errors)
		fprintf(stderr, "loadgen: %ld call(s) failed; first: %s\n", errors, first_error);
	printf("tokens=%ld errors=%ld seconds=%.3f rate=%.0f p50_us=%.0f p99_us=%.0f threads=%ld\n",
	       done_ok, errors, seconds, (double)done_ok / seconds, p50, p99, threads);
	return errors ? 1 : 0;
}
