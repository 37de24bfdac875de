/* sjwt_client: a minimal client of the slurmjwtd socket protocol, version 1
 * (docs/protocol.md). Shared by the PAM module and bench/loadgen.
 *
 * It trusts nothing it reads from the socket, bounds every wait by one
 * deadline, never logs and never prints (the caller does). Not async-signal-safe;
 * thread-safe (no global state).
 */
#ifndef SJWT_CLIENT_H
#define SJWT_CLIENT_H

#include <stdarg.h>
#include <stddef.h>

#define SJWT_MAX_REQUEST 1024 /* bytes on the wire, newline included */
#define SJWT_MAX_ANSWER 4096  /* bytes on the wire, newline included */

enum sjwt_status {
	SJWT_OK = 0,
	SJWT_ERR_INVAL = -1,       /* bad argument: request, path, buffer size, key */
	SJWT_ERR_UNREACHABLE = -2, /* no daemon: ENOENT, ECONNREFUSED, EACCES, ... */
	SJWT_ERR_TIMEOUT = -3,     /* the overall deadline passed */
	SJWT_ERR_IO = -4,          /* connection lost with no answer at all */
	SJWT_ERR_GARBLED = -5,     /* answer too long, unterminated, not ASCII or malformed */
	SJWT_ERR_NOTFOUND = -6,    /* no such field (or not an OK / ERR answer) */
};

/* A constant English phrase for a status, for the caller's log. */
const char *sjwt_strerror(int status);

/* Connect to SOCKET_PATH, send REQUEST (one line ending in '\n', at most
 * SJWT_MAX_REQUEST bytes), read one answer line; all within TIMEOUT_MS.
 * On SJWT_OK, ANSWER holds the line without its newline, NUL-terminated, and
 * starts with "SJWT/1 OK" or "SJWT/1 ERR ". ANSWER_SIZE should be SJWT_MAX_ANSWER;
 * an answer that does not fit is SJWT_ERR_GARBLED. ANSWER may hold a token:
 * clear it after use. */
int sjwt_call(const char *socket_path, int timeout_ms, const char *request,
	      char *answer, size_t answer_size);

/* Write "SJWT/1 OP key=value ...\n" into BUF, NUL-terminated. The variadic
 * part is (const char *key, const char *value) pairs ended by a NULL key; a
 * pair whose value is NULL is left out. Values are percent-encoded.
 * Returns the line's length, or SJWT_ERR_INVAL (bad op or key, line longer
 * than SJWT_MAX_REQUEST, or BUF too small). */
int sjwt_build_request(char *buf, size_t size, const char *op, ...)
	__attribute__((sentinel));

/* sjwt_build_request with the pairs in AP, for callers that pass their own on. */
int sjwt_vbuild_request(char *buf, size_t size, const char *op, va_list ap);

/* 1 if ANSWER is "SJWT/1 OK ...", else 0. */
int sjwt_answer_ok(const char *answer);

/* Copy the code of an "SJWT/1 ERR code message" answer into OUT.
 * Returns SJWT_OK, SJWT_ERR_NOTFOUND (not an ERR answer) or SJWT_ERR_GARBLED. */
int sjwt_answer_code(const char *answer, char *out, size_t outsize);

/* Copy the value of " KEY=" in an OK answer into OUT. Only for values made of
 * safe characters (token, session, user, exp, jti, ...): a value holding '%' is
 * refused rather than decoded. Returns SJWT_OK, SJWT_ERR_NOTFOUND, SJWT_ERR_INVAL
 * (bad key) or SJWT_ERR_GARBLED (encoded, repeated, or longer than OUT). */
int sjwt_answer_field(const char *answer, const char *key, char *out, size_t outsize);

#endif
