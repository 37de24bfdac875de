/* fastpath_check: the fast path (slurmjwtd/fastpath.c) driven from C alone, for valgrind
 * (tests/test_fastpath.py). Python under valgrind would drown its findings; this is the
 * library's whole API on a real socket, a real table entry and a real other uid:
 *
 *   fastpath_check SOCKET AUDITFILE UID COUNT
 *
 * It listens on SOCKET, starts the fast path (audit to AUDITFILE, or "-": the journal's
 * socket, which the lines reach only if journald runs), puts an entry for UID led
 * by itself, forks a child that becomes UID and asks COUNT MINTs and one
 * STATUS, serves the connections handed over as the Python loop would, checks the answers
 * and the counters, takes the table's entries back, stops, and exits 0 if all went as expected.
 *
 * The leader's "pidfd" is a pipe's read end whose write end this process holds: readable once
 * closed, as a pidfd once its process exits (valgrind 3.19 does not know pidfd_open).
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

int sjf_start(int, int, int, int, const double *, int, size_t);
void sjf_stop(void);
int sjf_set_key(const unsigned char *, size_t);
int sjf_take(uint32_t);
int sjf_put(uint32_t, int64_t, int32_t, int32_t, int32_t, const int *, int, const char *,
	    const char *, const char *, const char *);
int sjf_take_all(uint32_t *, int32_t *, int);
void sjf_take_counters(uint64_t *);

static int fail(const char *what)
{
	fprintf(stderr, "fastpath_check: %s\n", what);
	return 1;
}

static int ask(const char *path, const char *request, char *answer, size_t size)
{
	struct sockaddr_un a = { .sun_family = AF_UNIX };
	snprintf(a.sun_path, sizeof a.sun_path, "%s", path);
	int s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (s < 0 || connect(s, (struct sockaddr *)&a, sizeof a) < 0)
		return -1;
	if (write(s, request, strlen(request)) < 0)
		return -1;
	size_t got = 0;
	ssize_t n;
	while (got < size - 1 && (n = read(s, answer + got, size - 1 - got)) > 0)
		got += (size_t)n;
	answer[got] = '\0';
	close(s);
	return (int)got;
}

int main(int argc, char **argv)
{
	if (argc != 5)
		return fail("usage: fastpath_check SOCKET AUDITFILE UID COUNT");
	const char *path = argv[1];
	uid_t uid = (uid_t)atoi(argv[3]);
	int count = atoi(argv[4]);
	struct sockaddr_un a = { .sun_family = AF_UNIX };
	snprintf(a.sun_path, sizeof a.sun_path, "%s", path);
	unlink(path);
	int lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (lfd < 0 || bind(lfd, (struct sockaddr *)&a, sizeof a) < 0 || listen(lfd, 64) < 0 ||
	    chmod(path, 0666) < 0)
		return fail("cannot listen");
	int pair[2];
	if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, pair) < 0)
		return fail("socketpair");
	int journal = strcmp(argv[2], "-") == 0;
	int audit = journal ? -1 : open(argv[2], O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
	const double bounds[] = { 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05, 0.25, 1.0, 5.0 };
	if ((audit < 0 && !journal) || sjf_start(lfd, pair[1], audit, 2, bounds, 9, 4096) != 0)
		return fail("sjf_start");
	static const unsigned char key[32] = "0123456789abcdef0123456789abcdef";
	sjf_set_key(key, sizeof key);
	int leader[2], again[2];
	if (pipe2(leader, O_CLOEXEC) < 0 || pipe2(again, O_CLOEXEC) < 0)
		return fail("pipe");
	int pidfd = leader[0];
	struct timespec now;
	clock_gettime(CLOCK_MONOTONIC, &now);
	int64_t expires = ((int64_t)now.tv_sec + 60) * 1000000000;
	if (pidfd < 0 || sjf_put(uid, expires, count, 3600, 43200, &pidfd, 1,
				 "{\"iat\":\x06,\"exp\":\x03,\"sun\":\"u\",\"jti\":\"\x04\"}",
				 "SJWT/1 OK token=\x05 user=u exp=\x03 jti=\x04 lifetime=\x02\n",
				 "decision=granted op=mint caller_pid=\x01 lifetime=\x02 jti=\x04",
				 "SLURMJWT_OP=mint\nSLURMJWT_JTI=\x04\nSLURMJWT_PID=\x01") != 0)
		return fail("sjf_put");

	pid_t child = fork();
	if (child == 0) {
		char answer[2048];
		if (setgid(uid) < 0 || setuid(uid) < 0)
			_exit(3);
		for (int i = 0; i < count; i++)
			if (ask(path, "SJWT/1 MINT\n", answer, sizeof answer) <= 0 ||
			    strncmp(answer, "SJWT/1 OK token=eyJ", 19) != 0)
				_exit(4);
		/* not the fast path's: handed over, closed unanswered by this driver */
		if (ask(path, "SJWT/1 STATUS\n", answer, sizeof answer) != 0)
			_exit(5);
		_exit(0);
	}
	/* the connections handed over, served as the Python loop would: the STATUS closed
	 * unanswered; a MINT whose request had not arrived when accepted (under valgrind, most
	 * are slow) answered with a token-shaped fake */
	int mints = 0, statuses = 0, status = 0;
	for (;;) {
		struct pollfd p = { .fd = pair[0], .events = POLLIN };
		if (poll(&p, 1, 200) == 1) {
			char record[2048], request[1100];
			ssize_t n = recv(pair[0], record, sizeof record, 0);
			int32_t fd, from;
			uint32_t len;
			if (n < 32)
				return fail("a short record");
			memcpy(&fd, record, sizeof fd);
			memcpy(&from, record + 4, sizeof from);
			memcpy(&len, record + 28, sizeof len);
			if ((uid_t)from != uid || len > 1025)
				return fail("a record from another uid");
			memcpy(request, record + 32, len);
			struct pollfd more = { .fd = fd, .events = POLLIN };
			while (!memchr(request, '\n', len) && len < 1024 && poll(&more, 1, 5000) == 1) {
				ssize_t got = read(fd, request + len, sizeof request - 1 - len);
				if (got <= 0)
					break;
				len += (uint32_t)got;
			}
			if (len == 12 && memcmp(request, "SJWT/1 MINT\n", 12) == 0) {
				static const char fake[] = "SJWT/1 OK token=eyJ.handed.over\n";
				if (write(fd, fake, sizeof fake - 1) < 0)
					return fail("write");
				mints++;
			} else if (len == 14 && memcmp(request, "SJWT/1 STATUS\n", 14) == 0) {
				statuses++;
			} else {
				return fail("a handed-over request that is neither");
			}
			close(fd);
			continue;
		}
		if (waitpid(child, &status, WNOHANG) == child)
			break;
	}
	if (!WIFEXITED(status) || WEXITSTATUS(status) != 0 || statuses != 1)
		return fail("the child's requests failed");
	uint64_t counters[5 + 10];
	sjf_take_counters(counters);
	if (counters[0] != (uint64_t)(count - mints) || counters[1] != (uint64_t)(mints + 1))
		return fail("the counters do not say what was granted and handed over");
	if (sjf_take(uid) != mints)  /* the lease is spent but for those handed over */
		return fail("the lease does not hold what was not spent");
	/* an entry left in the table at stop is freed there (valgrind's leak check) */
	if (sjf_put(uid + 1, expires, 5, 60, 60, &again[0], 1, "c", "a", "l", "j") != 0)
		return fail("sjf_put again");
	sjf_stop();
	close(pair[0]);
	close(pair[1]);
	close(lfd);
	if (!journal)
		close(audit);
	close(leader[1]);
	close(again[1]);
	unlink(path);
	printf("granted=%d handed_over=%d\n", count - mints, mints + 1);
	return 0;
}
