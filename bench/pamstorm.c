/* pamstorm: time pam_open_session and pam_close_session of a PAM service, with THREADS
 * logins at once.
 *
 *   pamstorm -s SERVICE -u USER -n LOGINS_PER_THREAD -t THREADS [-e ENVNAME] [-b | -r RATE]
 *
 * Each thread loops LOGINS_PER_THREAD times: pam_start(SERVICE, USER) -> pam_open_session
 * -> pam_close_session -> pam_end, timing the open and the close (CLOCK_MONOTONIC). All
 * threads leave one barrier together, so THREADS logins run at once; with -b they meet at
 * the barrier again before every login (each round is a burst of THREADS simultaneous
 * logins). With -r, the logins arrive at RATE a second instead, evenly spaced from the start
 * (login k starts at k / RATE s), each taken by a free thread: an open loop, as sshd hands
 * logins on when they come, up to THREADS in flight if they pile up. After each open it checks whether ENVNAME (default SLURM_JWT) is in the PAM
 * environment; it counts those logins, and never prints the value.
 *
 * If the stack has bench/pam_benchstamp.so's begin and end stamps, it also reports the time
 * between them (the part of the stack they enclose, per login): the in_* figures.
 *
 * Prints one line:
 *   logins=.. errors=.. tokens=.. open_p50_us=.. open_p99_us=.. close_p50_us=.. close_p99_us=..
 *   open_max_us=.. stamped=.. in_open_p50_us=.. in_open_p99_us=.. in_close_p50_us=..
 *   in_close_p99_us=.. seconds=.. rate=.. threads=..
 * (latencies of logins whose open and close succeeded; rate is those logins per second;
 * stamped: how many of them had both stamps at open and at close).
 * Exit status 0 when every login succeeded, 1 when some failed, 2 on a usage error.
 * Needs root for a stack whose modules need it (pam_slurmjwt's OPEN does).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <security/pam_appl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "benchutil.h"

static const char *service, *user, *env_name = "SLURM_JWT";
static long per_thread, threads;
static int every_round; /* -b: a barrier before every login, not only the first */
static long rate;       /* -r: logins a second, arriving on a schedule; 0: each thread loops */
static long next_login; /* atomic: with -r, the next login's index */
static uint64_t start_ns; /* with -r, when login 0 starts */
static uint64_t *open_ns, *close_ns; /* one slot per successful login */
static uint64_t *in_open_ns, *in_close_ns; /* one slot per stamped successful login */
static long done_ok, errors, tokens, stamped; /* atomic */
static pthread_barrier_t start_line, round_line; /* round_line: workers only, for -b */
static pthread_mutex_t first_lock = PTHREAD_MUTEX_INITIALIZER;
static char first_error[160];


static void note_error(const char *what, pam_handle_t *pamh, int rc)
{
	pthread_mutex_lock(&first_lock);
	if (first_error[0] == '\0')
		snprintf(first_error, sizeof first_error, "%s: %s", what, pam_strerror(pamh, rc));
	pthread_mutex_unlock(&first_lock);
	__atomic_fetch_add(&errors, 1, __ATOMIC_RELAXED);
}

/* No prompts are expected (the bench stacks use pam_permit): answer every message with
 * an empty reply, which a module asking for a password would take as a wrong one. */
static int conversation(int n, const struct pam_message **msg, struct pam_response **resp,
			void *data)
{
	(void)msg;
	(void)data;
	if (n <= 0 || n > PAM_MAX_NUM_MSG)
		return PAM_CONV_ERR;
	*resp = calloc((size_t)n, sizeof **resp);
	return *resp == NULL ? PAM_BUF_ERR : PAM_SUCCESS;
}

static const struct pam_conv conv = { conversation, NULL };

/* A JWT: three non-empty base64url parts. Only its shape is looked at. */
static int looks_like_jwt(const char *s)
{
	size_t a = strspn(s, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_");
	if (a == 0 || s[a] != '.')
		return 0;
	s += a + 1;
	a = strspn(s, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_");
	if (a == 0 || s[a] != '.')
		return 0;
	s += a + 1;
	a = strspn(s, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_");
	return a > 0 && s[a] == '\0';
}

/* The nanoseconds between pam_benchstamp's begin and end stamps for OP; 0 if not stamped. */
static uint64_t between_stamps(pam_handle_t *pamh, const char *op)
{
	char name[48];
	const char *begin, *end;
	unsigned long long b, e;

	snprintf(name, sizeof name, "PAMSTORM_%s_BEGIN_NS", op);
	begin = pam_getenv(pamh, name);
	snprintf(name, sizeof name, "PAMSTORM_%s_END_NS", op);
	end = pam_getenv(pamh, name);
	if (begin == NULL || end == NULL || sscanf(begin, "%llu", &b) != 1 ||
	    sscanf(end, "%llu", &e) != 1 || e < b)
		return 0;
	return (uint64_t)(e - b);
}

static void login(void)
{
	pam_handle_t *pamh = NULL;
	const char *token;
	uint64_t t0, t1, t2, t3, in_open, in_close;
	int rc;

	rc = pam_start(service, user, &conv, &pamh);
	if (rc != PAM_SUCCESS) {
		note_error("pam_start", pamh, rc);
		if (pamh != NULL)
			pam_end(pamh, rc);
		return;
	}
	/* what sshd sets: the module sends them with OPEN */
	if ((rc = pam_set_item(pamh, PAM_TTY, "ssh")) != PAM_SUCCESS ||
	    (rc = pam_set_item(pamh, PAM_RHOST, "127.0.0.1")) != PAM_SUCCESS) {
		note_error("pam_set_item", pamh, rc);
		pam_end(pamh, rc);
		return;
	}
	t0 = now_ns();
	rc = pam_open_session(pamh, 0);
	t1 = now_ns();
	if (rc != PAM_SUCCESS) {
		note_error("pam_open_session", pamh, rc);
		pam_end(pamh, rc);
		return;
	}
	token = pam_getenv(pamh, env_name);
	if (token != NULL && looks_like_jwt(token))
		__atomic_fetch_add(&tokens, 1, __ATOMIC_RELAXED);
	token = NULL;
	in_open = between_stamps(pamh, "OPEN");
	t2 = now_ns();
	rc = pam_close_session(pamh, 0);
	t3 = now_ns();
	in_close = between_stamps(pamh, "CLOSE");
	if (rc != PAM_SUCCESS)
		note_error("pam_close_session", pamh, rc);
	else {
		long k = __atomic_fetch_add(&done_ok, 1, __ATOMIC_RELAXED);
		open_ns[k] = t1 - t0;
		close_ns[k] = t3 - t2;
		if (in_open > 0 && in_close > 0) {
			k = __atomic_fetch_add(&stamped, 1, __ATOMIC_RELAXED);
			in_open_ns[k] = in_open;
			in_close_ns[k] = in_close;
		}
	}
	pam_end(pamh, rc); /* clears the PAM environment, token included */
}

static void *worker(void *arg)
{
	(void)arg;
	pthread_barrier_wait(&start_line);
	for (long k; rate && (k = __atomic_fetch_add(&next_login, 1, __ATOMIC_RELAXED)) <
		      per_thread * threads;) {
		uint64_t at = start_ns + (uint64_t)k * 1000000000u / (uint64_t)rate;
		struct timespec ts = { (time_t)(at / 1000000000u), (long)(at % 1000000000u) };
		while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR)
			;
		login();
	}
	for (long i = 0; !rate && i < per_thread; i++) {
		if (every_round && i > 0)
			pthread_barrier_wait(&round_line);
		login();
	}
	return NULL;
}

static void usage(void)
{
	fprintf(stderr, "usage: pamstorm -s SERVICE -u USER -n LOGINS_PER_THREAD -t THREADS "
			"[-e ENVNAME] [-b | -r RATE]\n");
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
	pthread_attr_t attr;
	pthread_t *tids;
	uint64_t t0, t1;
	long total, t;
	double seconds;
	int c;

	threads = 1;
	while ((c = getopt(argc, argv, "s:u:n:t:e:br:")) != -1) {
		switch (c) {
		case 's': service = optarg; break;
		case 'u': user = optarg; break;
		case 'n': per_thread = number(optarg, 1000000); break;
		case 't': threads = number(optarg, 1024); break;
		case 'e': env_name = optarg; break;
		case 'b': every_round = 1; break;
		case 'r': rate = number(optarg, 1000000); break;
		default: usage();
		}
	}
	if (service == NULL || user == NULL || per_thread == 0 || optind != argc ||
	    (rate && every_round))
		usage();
	total = per_thread * threads;
	open_ns = calloc((size_t)total, sizeof *open_ns);
	close_ns = calloc((size_t)total, sizeof *close_ns);
	in_open_ns = calloc((size_t)total, sizeof *in_open_ns);
	in_close_ns = calloc((size_t)total, sizeof *in_close_ns);
	tids = calloc((size_t)threads, sizeof *tids);
	if (open_ns == NULL || close_ns == NULL || in_open_ns == NULL || in_close_ns == NULL ||
	    tids == NULL) {
		fprintf(stderr, "pamstorm: out of memory\n");
		return 2;
	}
	/* a login needs little stack: keep 1024 threads' worth of address space modest */
	pthread_attr_init(&attr);
	pthread_attr_setstacksize(&attr, 512 * 1024);
	pthread_barrier_init(&start_line, NULL, (unsigned)threads + 1);
	pthread_barrier_init(&round_line, NULL, (unsigned)threads);
	for (t = 0; t < threads; t++)
		if (pthread_create(&tids[t], &attr, worker, NULL) != 0) {
			fprintf(stderr, "pamstorm: cannot start thread %ld\n", t);
			return 2;
		}
	t0 = now_ns();
	start_ns = t0 + 1000000; /* 1 ms for the threads to leave the barrier */
	pthread_barrier_wait(&start_line);
	for (t = 0; t < threads; t++)
		pthread_join(tids[t], NULL);
	t1 = now_ns();

	seconds = (double)(t1 - t0) / 1e9;
	qsort(open_ns, (size_t)done_ok, sizeof *open_ns, cmp_u64);
	qsort(close_ns, (size_t)done_ok, sizeof *close_ns, cmp_u64);
	qsort(in_open_ns, (size_t)stamped, sizeof *in_open_ns, cmp_u64);
	qsort(in_close_ns, (size_t)stamped, sizeof *in_close_ns, cmp_u64);
	if (errors)
		fprintf(stderr, "pamstorm: %ld login(s) failed; first: %s\n", errors, first_error);
	printf("logins=%ld errors=%ld tokens=%ld open_p50_us=%.0f open_p99_us=%.0f "
	       "close_p50_us=%.0f close_p99_us=%.0f open_max_us=%.0f stamped=%ld "
	       "in_open_p50_us=%.1f in_open_p99_us=%.1f in_close_p50_us=%.1f in_close_p99_us=%.1f "
	       "seconds=%.3f rate=%.0f threads=%ld\n",
	       done_ok, errors, tokens, pct_us(open_ns, done_ok, 50), pct_us(open_ns, done_ok, 99),
	       pct_us(close_ns, done_ok, 50), pct_us(close_ns, done_ok, 99),
	       done_ok ? (double)open_ns[done_ok - 1] / 1e3 : 0.0, stamped,
	       pct_us(in_open_ns, stamped, 50), pct_us(in_open_ns, stamped, 99),
	       pct_us(in_close_ns, stamped, 50), pct_us(in_close_ns, stamped, 99), seconds,
	       seconds > 0 ? (double)done_ok / seconds : 0.0, threads);
	return errors ? 1 : 0;
}
