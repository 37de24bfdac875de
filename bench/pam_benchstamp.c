/* pam_benchstamp.so: a bench-only PAM session module that stamps the time.
 *
 *   session optional /path/to/pam_benchstamp.so begin
 *   session optional /path/to/pam_slurmjwt.so ...
 *   session optional /path/to/pam_benchstamp.so end
 *
 * At open (close) it puts PAMSTORM_OPEN_<ARG>_NS (PAMSTORM_CLOSE_<ARG>_NS) = CLOCK_MONOTONIC
 * in nanoseconds in the PAM environment, and returns PAM_IGNORE. bench/pamstorm reads the
 * stamps back after the call, so it times whatever lies between them in the same login:
 * the module's own share of pam_open_session, measured per login, free of the noise that
 * comparing two separate runs brings when 100 threads share 2 cores. Bench stacks put the
 * pair in the stack with pam_slurmjwt and in the one without it alike.
 */
#define _GNU_SOURCE
#define PAM_SM_SESSION
#include <security/pam_modules.h>

#include <stdio.h>
#include <string.h>
#include <time.h>

#define EXPORT __attribute__((visibility("default")))

static int stamp(pam_handle_t *pamh, const char *op, int argc, const char **argv)
{
	struct timespec ts;
	char env[96];
	const char *name = argc >= 1 ? argv[0] : "";

	clock_gettime(CLOCK_MONOTONIC, &ts);
	if (strcmp(name, "begin") != 0 && strcmp(name, "end") != 0)
		return PAM_IGNORE;
	snprintf(env, sizeof env, "PAMSTORM_%s_%s_NS=%llu", op,
		 name[0] == 'b' ? "BEGIN" : "END",
		 (unsigned long long)ts.tv_sec * 1000000000ull + (unsigned long long)ts.tv_nsec);
	pam_putenv(pamh, env);
	return PAM_IGNORE;
}

EXPORT int pam_sm_open_session(pam_handle_t *pamh, int flags, int argc, const char **argv)
{
	(void)flags;
	return stamp(pamh, "OPEN", argc, argv);
}

EXPORT int pam_sm_close_session(pam_handle_t *pamh, int flags, int argc, const char **argv)
{
	(void)flags;
	return stamp(pamh, "CLOSE", argc, argv);
}
