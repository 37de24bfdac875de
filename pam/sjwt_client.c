/* sjwt_client: see sjwt_client.h. No logging here: the caller logs. */
#define _GNU_SOURCE
#include "sjwt_client.h"

#include <errno.h>
#include <limits.h>
#include <poll.h>
#include <stdarg.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define MAGIC "SJWT/1"

static const char ok_prefix[] = MAGIC " OK";
static const char err_prefix[] = MAGIC " ERR ";

const char *sjwt_strerror(int status)
{
	switch (status) {
	case SJWT_OK: return "success";
	case SJWT_ERR_INVAL: return "invalid argument";
	case SJWT_ERR_UNREACHABLE: return "slurmjwtd is not reachable";
	case SJWT_ERR_TIMEOUT: return "slurmjwtd did not answer in time";
	case SJWT_ERR_IO: return "connection to slurmjwtd failed without an answer";
	case SJWT_ERR_GARBLED: return "garbled answer from slurmjwtd";
	case SJWT_ERR_NOTFOUND: return "no such field in the answer";
	default: return "unknown error";
	}
}

/* docs/protocol.md: safe = ALPHA / DIGIT / "-" / "." / "_" / "~" / ":" / "/" / "@" / "+" / "," */
#define SAFE_CHARS "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~:/@+,"

static int is_safe(unsigned char c)
{
	return c != '\0' && strchr(SAFE_CHARS, c) != NULL;
}

static int valid_op(const char *op)
{
	size_t n = op ? strspn(op, "ABCDEFGHIJKLMNOPQRSTUVWXYZ") : 0;
	return n >= 1 && n <= 16 && op[n] == '\0';
}

static int valid_key(const char *key)
{
	size_t n;
	if (key == NULL || key[0] < 'a' || key[0] > 'z')
		return 0;
	n = 1 + strspn(key + 1, "abcdefghijklmnopqrstuvwxyz_");
	return n <= 32 && key[n] == '\0';
}

static long long now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Wait until FD is ready for EVENTS (or in error: the next call says which). */
static int wait_fd(int fd, short events, long long deadline)
{
	struct pollfd p = { .fd = fd, .events = events };
	for (;;) {
		long long left = deadline - now_ms();
		int n;
		if (left <= 0)
			return SJWT_ERR_TIMEOUT;
		n = poll(&p, 1, left > INT_MAX ? INT_MAX : (int)left);
		if (n > 0)
			return 0;
		if (n < 0 && errno != EINTR)
			return SJWT_ERR_IO;
	}
}

static int connect_until(int fd, const struct sockaddr_un *addr, long long deadline)
{
	for (;;) {
		int err = 0;
		socklen_t len = sizeof err;
		if (connect(fd, (const struct sockaddr *)addr, sizeof *addr) == 0 || errno == EISCONN)
			return 0;
		if (errno == EINTR)
			continue;
		if (errno == EAGAIN) {
			/* AF_UNIX says EAGAIN, not EINPROGRESS, when the listen backlog is full:
			 * there is nothing to poll for, so retry every millisecond until the deadline. */
			if (now_ms() >= deadline)
				return SJWT_ERR_TIMEOUT;
			poll(NULL, 0, 1);
			continue;
		}
		if (errno != EINPROGRESS)
			return SJWT_ERR_UNREACHABLE;
		int rc = wait_fd(fd, POLLOUT, deadline);
		if (rc != 0)
			return rc;
		if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0 || err != 0)
			return SJWT_ERR_UNREACHABLE;
		return 0;
	}
}

static int send_all(int fd, const char *buf, size_t len, long long deadline)
{
	while (len > 0) {
		ssize_t n = send(fd, buf, len, MSG_NOSIGNAL);
		if (n > 0) {
			buf += n;
			len -= (size_t)n;
		} else if (n < 0 && errno == EAGAIN) {
			int rc = wait_fd(fd, POLLOUT, deadline);
			if (rc != 0)
				return rc;
		} else if (n == 0 || errno != EINTR) {
			return SJWT_ERR_IO;
		}
	}
	return 0;
}

/* Read one line into BUF (SJWT_MAX_ANSWER bytes); *LEN = its length without '\n'. */
static int recv_line(int fd, char *buf, size_t *len, long long deadline)
{
	size_t have = 0;
	for (;;) {
		ssize_t n = recv(fd, buf + have, SJWT_MAX_ANSWER - have, 0);
		if (n < 0 && (errno == EAGAIN || errno == EINTR)) {
			int rc = wait_fd(fd, POLLIN, deadline);
			if (rc != 0)
				return rc;
			continue;
		}
		if (n <= 0) /* closed or reset before a whole line */
			return have > 0 ? SJWT_ERR_GARBLED : SJWT_ERR_IO;
		char *nl = memchr(buf + have, '\n', (size_t)n);
		have += (size_t)n;
		if (nl != NULL) {
			*len = (size_t)(nl - buf);
			/* one answer per connection: bytes after the newline are a broken daemon */
			return *len + 1 == have ? 0 : SJWT_ERR_GARBLED;
		}
		if (have == SJWT_MAX_ANSWER)
			return SJWT_ERR_GARBLED;
	}
}

static int take_answer(const char *buf, size_t len, char *answer, size_t answer_size)
{
	size_t i;
	for (i = 0; i < len; i++) /* printable ASCII only: no NUL, no CR, no escapes for a log */
		if ((unsigned char)buf[i] < 0x20 || (unsigned char)buf[i] > 0x7e)
			return SJWT_ERR_GARBLED;
	if (len >= answer_size)
		return SJWT_ERR_GARBLED;
	memcpy(answer, buf, len);
	answer[len] = '\0';
	if (!sjwt_answer_ok(answer) && strncmp(answer, err_prefix, sizeof err_prefix - 1) != 0) {
		explicit_bzero(answer, len);
		return SJWT_ERR_GARBLED;
	}
	return SJWT_OK;
}

int sjwt_call(const char *socket_path, int timeout_ms, const char *request,
	      char *answer, size_t answer_size)
{
	struct sockaddr_un addr = { .sun_family = AF_UNIX };
	char buf[SJWT_MAX_ANSWER];
	size_t reqlen, pathlen, len = 0;
	long long deadline;
	int fd, rc;

	if (answer == NULL || answer_size == 0)
		return SJWT_ERR_INVAL;
	answer[0] = '\0';
	if (socket_path == NULL || request == NULL || timeout_ms <= 0)
		return SJWT_ERR_INVAL;
	reqlen = strnlen(request, SJWT_MAX_REQUEST + 1);
	if (reqlen == 0 || reqlen > SJWT_MAX_REQUEST || memchr(request, '\n', reqlen) != request + reqlen - 1)
		return SJWT_ERR_INVAL;
	pathlen = strnlen(socket_path, sizeof addr.sun_path);
	if (pathlen == 0 || pathlen == sizeof addr.sun_path)
		return SJWT_ERR_INVAL;
	memcpy(addr.sun_path, socket_path, pathlen);

	deadline = now_ms() + timeout_ms;
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (fd < 0)
		return SJWT_ERR_IO;
	rc = connect_until(fd, &addr, deadline);
	if (rc == 0) {
		rc = send_all(fd, request, reqlen, deadline);
		/* A daemon that refuses at once (busy) may close before reading, so a
		 * failed send can still leave its answer waiting to be read. */
		if (rc == 0 || rc == SJWT_ERR_IO)
			rc = recv_line(fd, buf, &len, deadline);
	}
	close(fd);
	if (rc == 0)
		rc = take_answer(buf, len, answer, answer_size);
	explicit_bzero(buf, sizeof buf);
	return rc;
}

/* Append S to BUF, which may grow to CAP bytes; percent-encode it if ENCODE. */
static int put(char *buf, size_t cap, size_t *len, const char *s, int encode)
{
	static const char hex[] = "0123456789ABCDEF";
	for (; *s != '\0'; s++) {
		unsigned char c = (unsigned char)*s;
		if (!encode || is_safe(c)) {
			if (cap - *len < 1)
				return -1;
			buf[(*len)++] = (char)c;
		} else {
			if (cap - *len < 3)
				return -1;
			buf[(*len)++] = '%';
			buf[(*len)++] = hex[c >> 4];
			buf[(*len)++] = hex[c & 15];
		}
	}
	return 0;
}

int sjwt_build_request(char *buf, size_t size, const char *op, ...)
{
	va_list ap;
	int rc;

	va_start(ap, op);
	rc = sjwt_vbuild_request(buf, size, op, ap);
	va_end(ap);
	return rc;
}

int sjwt_vbuild_request(char *buf, size_t size, const char *op, va_list ap)
{
	const char *key, *value;
	size_t cap, len = 0;
	int bad;

	if (buf == NULL || size == 0)
		return SJWT_ERR_INVAL;
	buf[0] = '\0';
	if (!valid_op(op))
		return SJWT_ERR_INVAL;
	cap = size - 1 < SJWT_MAX_REQUEST ? size - 1 : SJWT_MAX_REQUEST; /* line, newline included */
	bad = put(buf, cap, &len, MAGIC " ", 0) || put(buf, cap, &len, op, 0);
	while (!bad && (key = va_arg(ap, const char *)) != NULL) {
		value = va_arg(ap, const char *);
		if (!valid_key(key))
			bad = 1;
		else if (value != NULL) /* a NULL value leaves its key out */
			bad = put(buf, cap, &len, " ", 0) || put(buf, cap, &len, key, 0) ||
			      put(buf, cap, &len, "=", 0) || put(buf, cap, &len, value, 1);
	}
	if (bad || put(buf, cap, &len, "\n", 0) != 0) {
		buf[0] = '\0';
		return SJWT_ERR_INVAL;
	}
	buf[len] = '\0';
	return (int)len;
}

int sjwt_answer_ok(const char *answer)
{
	size_t n = sizeof ok_prefix - 1;
	return answer != NULL && strncmp(answer, ok_prefix, n) == 0 &&
	       (answer[n] == '\0' || answer[n] == ' ');
}

int sjwt_answer_code(const char *answer, char *out, size_t outsize)
{
	const char *code;
	size_t n;

	if (answer == NULL || out == NULL || outsize == 0)
		return SJWT_ERR_INVAL;
	out[0] = '\0';
	if (strncmp(answer, err_prefix, sizeof err_prefix - 1) != 0)
		return SJWT_ERR_NOTFOUND;
	code = answer + sizeof err_prefix - 1;
	n = strspn(code, "abcdefghijklmnopqrstuvwxyz-");
	if (n == 0 || (code[n] != ' ' && code[n] != '\0') || n >= outsize)
		return SJWT_ERR_GARBLED;
	memcpy(out, code, n);
	out[n] = '\0';
	return SJWT_OK;
}

int sjwt_answer_field(const char *answer, const char *key, char *out, size_t outsize)
{
	const char *p, *value = NULL;
	size_t klen, n;

	if (out == NULL || outsize == 0)
		return SJWT_ERR_INVAL;
	out[0] = '\0';
	if (answer == NULL || !valid_key(key))
		return SJWT_ERR_INVAL;
	/* OK answers only: an ERR message is free text and could mimic " token=". */
	if (!sjwt_answer_ok(answer))
		return SJWT_ERR_NOTFOUND;
	klen = strlen(key);
	for (p = strchr(answer + sizeof ok_prefix - 1, ' '); p != NULL; p = strchr(p + 1, ' ')) {
		if (strncmp(p + 1, key, klen) == 0 && p[1 + klen] == '=') {
			if (value != NULL)
				return SJWT_ERR_GARBLED;
			value = p + 2 + klen;
		}
	}
	if (value == NULL)
		return SJWT_ERR_NOTFOUND;
	n = strcspn(value, " ");
	/* '%' is not safe: an encoded value is refused, not decoded */
	if (strspn(value, SAFE_CHARS) < n || n >= outsize)
		return SJWT_ERR_GARBLED;
	memcpy(out, value, n);
	out[n] = '\0';
	return SJWT_OK;
}
