/* pam_slurmjwt: a PAM session module that puts a Slurm JWT from slurmjwtd in the
 * login's environment (pam/README.md). It holds no key: at open it asks the daemon
 * to open a login session and mint its token, and exports the token and the path of the
 * token file the daemon keeps fresh while the user is logged in; at close it closes that
 * session.
 *
 * Every wait is bounded by timeout=, every failure logs one line to authpriv and
 * maps to one PAM code, and the token is never logged and is wiped after use.
 */
#define _GNU_SOURCE
#define PAM_SM_SESSION
#include <security/pam_ext.h>
#include <security/pam_modules.h>
#include <security/pam_modutil.h>

#include <pwd.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <syslog.h>

#include "sjwt_client.h"

#define EXPORT __attribute__((visibility("default")))
#define DATA_KEY "pam_slurmjwt_session"
#define MAX_ENV_NAME 64
#define FILE_VARIABLE "SLURMJWT_TOKEN_FILE" /* slurmjwtd/tokenfile.py's FILE_VARIABLE */

struct options {
	const char *socket;
	int timeout_ms;
	const char *env;
	int debug;
};

static int valid_env_name(const char *s)
{
	size_t n = strspn(s, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz_0123456789");
	return n > 0 && n <= MAX_ENV_NAME && s[n] == '\0' && !(s[0] >= '0' && s[0] <= '9');
}

/* Like pam_env, a bad argument is logged and ignored: a typo must not lock anyone out. */
static void parse_options(pam_handle_t *pamh, int argc, const char **argv, struct options *opt)
{
	opt->socket = "/run/slurmjwt/slurmjwtd-root.sock"; /* root's: OPEN and CLOSE are taken only there */
	opt->timeout_ms = 2000;
	opt->env = "SLURM_JWT";
	opt->debug = 0;
	for (int i = 0; i < argc; i++) {
		const char *arg = argv[i];
		if (strncmp(arg, "socket=", 7) == 0 && arg[7] == '/')
			opt->socket = arg + 7;
		else if (strncmp(arg, "timeout=", 8) == 0) {
			char *end;
			long ms = strtol(arg + 8, &end, 10);
			if (*end == '\0' && ms >= 1 && ms <= 60000)
				opt->timeout_ms = (int)ms;
			else
				pam_syslog(pamh, LOG_ERR, "ignoring %s: want 1 to 60000 ms", arg);
		} else if (strncmp(arg, "env=", 4) == 0 && valid_env_name(arg + 4))
			opt->env = arg + 4;
		else if (strncmp(arg, "tokendir=", 9) == 0)
			; /* older versions wrote the token file here; slurmjwtd's token_dir decides now */
		else if (strcmp(arg, "debug") == 0)
			opt->debug = 1;
		else
			pam_syslog(pamh, LOG_ERR, "ignoring unknown or malformed argument: %s", arg);
	}
}

static const char *item(pam_handle_t *pamh, int type)
{
	const void *value = NULL;
	if (pam_get_item(pamh, type, &value) != PAM_SUCCESS || value == NULL ||
	    *(const char *)value == '\0')
		return NULL;
	return value;
}

/* The PAM code for a failed call: an absent daemon means no token, not a failed login. */
static int call_failed(pam_handle_t *pamh, const struct options *opt, const char *what,
		       const char *user, int rc)
{
	pam_syslog(pamh, rc == SJWT_ERR_UNREACHABLE ? LOG_NOTICE : LOG_ERR,
		   "%s for %s: %s (socket %s, timeout %d ms)", what, user, sjwt_strerror(rc),
		   opt->socket, opt->timeout_ms);
	return rc == SJWT_ERR_UNREACHABLE ? PAM_IGNORE : PAM_SESSION_ERR;
}

/* The codes of class refusal (docs/protocol.md, slurmjwtd/protocol.py's Code): "no token for
 * this login", PAM_IGNORE. Any other code is a fault, PAM_SESSION_ERR. tests/test_units.py
 * checks this list against protocol.py's. */
static const char *const refusals[] = {
	"permission-denied", "no-session", "unknown-user", "below-min-uid",
	"lifetime-too-long", "policy-denied", "rate-limited", "no-such-session", "revoked",
};

static int not_for_this_login(const char *code)
{
	for (size_t i = 0; i < sizeof refusals / sizeof refusals[0]; i++)
		if (strcmp(code, refusals[i]) == 0)
			return 1;
	return 0;
}

static int refused(pam_handle_t *pamh, const char *what, const char *user, const char *answer)
{
	char code[64] = "garbled";
	const char *message = strchr(answer + strlen("SJWT/1 ERR "), ' ');
	int ignore;

	sjwt_answer_code(answer, code, sizeof code);
	ignore = not_for_this_login(code);
	pam_syslog(pamh, ignore ? LOG_NOTICE : LOG_ERR, "%s for %s refused (%s):%s", what, user,
		   code, message ? message : "");
	return ignore ? PAM_IGNORE : PAM_SESSION_ERR;
}

/* One exchange: OP with its (key, value) pairs, ended by a NULL key, sent to the daemon and
 * its answer read into ANSWER (SJWT_MAX_ANSWER bytes). PAM_SUCCESS for an OK answer; else one
 * line logged, "UNREACHED for USER: ..." when the call failed, "REFUSAL for USER refused ..."
 * when the daemon answered ERR, and the failure's PAM code. */
static int ask_daemon(pam_handle_t *pamh, const struct options *opt, const char *user,
		      const char *unreached, const char *refusal, char *answer, const char *op, ...)
	__attribute__((sentinel));

static int ask_daemon(pam_handle_t *pamh, const struct options *opt, const char *user,
		      const char *unreached, const char *refusal, char *answer, const char *op, ...)
{
	char request[SJWT_MAX_REQUEST + 1];
	va_list ap;
	int rc;

	va_start(ap, op);
	rc = sjwt_vbuild_request(request, sizeof request, op, ap);
	va_end(ap);
	if (rc < 0) {
		pam_syslog(pamh, LOG_ERR, "request for %s too long", user);
		return PAM_SESSION_ERR;
	}
	rc = sjwt_call(opt->socket, opt->timeout_ms, request, answer, SJWT_MAX_ANSWER);
	if (rc != SJWT_OK)
		return call_failed(pamh, opt, unreached, user, rc);
	if (!sjwt_answer_ok(answer))
		return refused(pamh, refusal, user, answer);
	return PAM_SUCCESS;
}

static void free_data(pam_handle_t *pamh, void *data, int status)
{
	(void)pamh;
	(void)status;
	free(data);
}

/* A token as slurmjwtd mints it: three non-empty base64url parts joined by dots. */
#define MAX_TOKEN 3072
#define B64URL "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"

static int jwt_shaped(const char *token)
{
	const char *p = token;
	size_t total = strnlen(token, MAX_TOKEN + 1);

	if (total > MAX_TOKEN)
		return 0;
	for (int part = 0; part < 3; part++) {
		size_t n = strspn(p, B64URL);
		if (n == 0 || p[n] != (part < 2 ? '.' : '\0'))
			return 0;
		p += n + 1;
	}
	return 1;
}

/* The answer's uid= or gid=, when present, must be the number NSS gives: the module writes
 * as root into the passwd entry's directory, never where the socket says. */
static int same_id(const char *answer, const char *key, unsigned long id)
{
	char value[16];
	char *end;
	int rc = sjwt_answer_field(answer, key, value, sizeof value);

	if (rc == SJWT_ERR_NOTFOUND)
		return 1;
	return rc == SJWT_OK && value[0] >= '0' && value[0] <= '9' &&
	       strtoul(value, &end, 10) == id && *end == '\0';
}

/* Whatever in an OK answer the module can check itself: the token's shape, a session id,
 * and the account (user=, uid=, gid=) against the passwd entry of PAM_USER.
 * NULL if the answer is sound, else why not. */
static const char *check_answer(const char *answer, const char *user, const char *token,
				const char *session, const struct passwd *pw)
{
	char name[256];
	int rc;

	if (!jwt_shaped(token))
		return "its token is not a JWT";
	if (session[0] == '\0')
		return "its session is empty";
	/* user= is compared when it is plain: a percent-encoded name is not decoded here */
	rc = sjwt_answer_field(answer, "user", name, sizeof name);
	if (rc == SJWT_OK && strcmp(name, pw->pw_name) != 0 && strcmp(name, user) != 0)
		return "it names another user";
	if (!same_id(answer, "uid", pw->pw_uid) || !same_id(answer, "gid", pw->pw_gid))
		return "its uid or gid is not the passwd entry's";
	return NULL;
}

/* The answer's file=, the token file slurmjwtd keeps for this user, is exported only if it is
 * a plain absolute path ending in /<uid>/token for this login's uid. */
static int token_file_ok(const char *path, const struct passwd *pw)
{
	char tail[32];
	size_t n = strlen(path), t;

	if (path[0] != '/' || n >= 4096 || strspn(path, B64URL "/.") != n ||
	    strstr(path, "/./") || strstr(path, "/../") || strstr(path, "//"))
		return 0;
	t = (size_t)snprintf(tail, sizeof tail, "/%u/token", (unsigned)pw->pw_uid);
	return n > t && strcmp(path + n - t, tail) == 0;
}

static void export_token_file(pam_handle_t *pamh, const char *answer, const struct passwd *pw)
{
	char env[sizeof FILE_VARIABLE + 4096];
	int rc;

	memcpy(env, FILE_VARIABLE "=", sizeof FILE_VARIABLE);
	rc = sjwt_answer_field(answer, "file", env + sizeof FILE_VARIABLE, sizeof env - sizeof FILE_VARIABLE);
	if (rc == SJWT_ERR_NOTFOUND)
		return; /* slurmjwtd could not write it: it says why in its log */
	if (rc != SJWT_OK || !token_file_ok(env + sizeof FILE_VARIABLE, pw))
		pam_syslog(pamh, LOG_ERR, "not exporting %s for %s: slurmjwtd's file= is not a path "
			   "ending in /%u/token", FILE_VARIABLE, pw->pw_name, (unsigned)pw->pw_uid);
	else if ((rc = pam_putenv(pamh, env)) != PAM_SUCCESS)
		pam_syslog(pamh, LOG_ERR, "pam_putenv(%s): %s", FILE_VARIABLE, pam_strerror(pamh, rc));
}

static int export_token(pam_handle_t *pamh, const struct options *opt, const char *user,
			const char *answer)
{
	char token[SJWT_MAX_ANSWER], session[64], env[MAX_ENV_NAME + 1 + SJWT_MAX_ANSWER];
	const struct passwd *pw;
	const char *wrong;
	char *saved;
	int rc = PAM_SESSION_ERR;

	if (sjwt_answer_field(answer, "token", token, sizeof token) != SJWT_OK ||
	    sjwt_answer_field(answer, "session", session, sizeof session) != SJWT_OK) {
		pam_syslog(pamh, LOG_ERR, "slurmjwtd's answer lacks a token or session");
		goto out;
	}
	if ((pw = pam_modutil_getpwnam(pamh, user)) == NULL) {
		pam_syslog(pamh, LOG_ERR, "no token for %s: no passwd entry (NSS)", user);
		goto out;
	}
	if ((wrong = check_answer(answer, user, token, session, pw)) != NULL) {
		pam_syslog(pamh, LOG_ERR, "no token for %s: garbled answer from slurmjwtd: %s (socket %s)",
			   user, wrong, opt->socket);
		goto out;
	}
	if ((saved = strdup(session)) == NULL) {
		rc = PAM_BUF_ERR;
		goto out;
	}
	if (pam_set_data(pamh, DATA_KEY, saved, free_data) != PAM_SUCCESS) {
		free(saved);
		rc = PAM_BUF_ERR;
		goto out;
	}
	snprintf(env, sizeof env, "%s=%s", opt->env, token);
	rc = pam_putenv(pamh, env);
	if (rc != PAM_SUCCESS)
		pam_syslog(pamh, LOG_ERR, "pam_putenv(%s): %s", opt->env, pam_strerror(pamh, rc));
	else {
		export_token_file(pamh, answer, pw);
		if (opt->debug)
			pam_syslog(pamh, LOG_DEBUG, "%s set, session %s", opt->env, session);
	}
out:
	explicit_bzero(token, sizeof token);
	explicit_bzero(env, sizeof env);
	return rc;
}

EXPORT int pam_sm_open_session(pam_handle_t *pamh, int flags, int argc, const char **argv)
{
	struct options opt;
	char answer[SJWT_MAX_ANSWER];
	const char *user = item(pamh, PAM_USER);
	int rc;

	(void)flags;
	parse_options(pamh, argc, argv, &opt);
	if (user == NULL) {
		pam_syslog(pamh, LOG_ERR, "no PAM_USER: nothing to open a session for");
		return PAM_SESSION_ERR;
	}
	rc = ask_daemon(pamh, &opt, user, "no token", "token", answer, "OPEN", "user", user,
			"tty", item(pamh, PAM_TTY), "rhost", item(pamh, PAM_RHOST),
			"service", item(pamh, PAM_SERVICE), (char *)NULL);
	if (rc == PAM_SUCCESS)
		rc = export_token(pamh, &opt, user, answer);
	explicit_bzero(answer, sizeof answer);
	return rc;
}

EXPORT int pam_sm_close_session(pam_handle_t *pamh, int flags, int argc, const char **argv)
{
	struct options opt;
	char answer[SJWT_MAX_ANSWER];
	const void *session = NULL;
	const char *user = item(pamh, PAM_USER);
	int rc;

	(void)flags;
	parse_options(pamh, argc, argv, &opt);
	if (pam_get_data(pamh, DATA_KEY, &session) != PAM_SUCCESS || session == NULL)
		return PAM_IGNORE; /* open_session set no token: nothing to close */
	if (user == NULL)
		user = "?";
	rc = ask_daemon(pamh, &opt, user, "session not closed", "close", answer, "CLOSE",
			"session", (const char *)session, (char *)NULL);
	if (rc == PAM_SUCCESS && opt.debug) {
		char remaining[16] = "";
		sjwt_answer_field(answer, "remaining", remaining, sizeof remaining);
		pam_syslog(pamh, LOG_DEBUG, "session %s closed, %s left", (const char *)session, remaining);
	}
	pam_set_data(pamh, DATA_KEY, NULL, NULL);
	return rc;
}
