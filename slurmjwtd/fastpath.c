/* _fastpath.so: slurmjwtd's compiled hot path, loaded by fastpath.py with ctypes.
 *
 * Threads of its own accept on the public socket and answer, alone, the one request that is
 * most of the load: a user's MINT of their own token ("SJWT/1 MINT" or "SJWT/1 MINT
 * lifetime=N"), for a uid the Python side has put in the table after granting it the same
 * request. Everything else (root, any other request or argument, a request not yet complete
 * when accepted, a uid not in the table or whose entry has expired, spent its lease of the
 * rate limit, or has no live session leader) goes to the Python loop, with the bytes read,
 * over a SOCK_SEQPACKET pair: Python decides it as it decides every request, and is the
 * reference the tests compare this path against.
 *
 * An entry holds only what Python decided: the lifetime and its maximum, the session leaders
 * (pid and start time) to find alive in /proc, the grants left on the rate limit's lease, an
 * expiry, and templates of the claims, the answer and the audit line with their fixed parts
 * formatted by the Python code that formats them (escaping included). Here only numbers and
 * the jti go into the templates' slots. No decision is made here that Python did not make.
 *
 * The key is copied in at start and at each reload and wiped (explicit_bzero) when replaced
 * and at stop. No token or key is ever logged or written but to the client.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/random.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <openssl/evp.h>
#include <openssl/hmac.h>

#define API __attribute__((visibility("default")))

enum {
	MAX_REQUEST = 1024,   /* protocol.MAX_REQUEST: newline included */
	MAX_THREADS = 8,
	MAX_PENDING = 64,     /* connections a worker waits on for their request at most */
	RESERVE = 16,         /* descriptors left to the Python loop: NSS, the session file, logs */
	MAX_LEADERS = 16,     /* more sessions than this: the entry is not made */
	MAX_TEMPLATE = 1536,
	MAX_MESSAGE = MAX_TEMPLATE + 128,  /* an audit template filled: numbers and the jti added */
	MAX_JOURNAL = 24,     /* journal fields of an audit line */
	BUCKETS = 16,         /* hash buckets are a power of two; entries chain */
	LATENCY_SLOTS = 16,
};

/* the slots of a template: a byte below 0x08 is replaced by the value it names */
enum { S_CALLER_PID = 1, S_LIFETIME = 2, S_EXP = 3, S_JTI = 4, S_TOKEN = 5, S_IAT = 6 };

/* one record to the Python loop: fastpath.py's FORWARD struct, "<iiiiiqI" then the bytes */
struct forward {
	int32_t fd, uid, gid, pid;
	int32_t ahead;  /* connections of this uid other workers hold now (accepted, not yet handed) */
	int64_t accepted_ns;
	uint32_t len;
	char data[MAX_REQUEST + 1];
} __attribute__((packed));

struct entry {
	struct entry *next;
	uint32_t uid;
	int64_t expires_ns;   /* CLOCK_MONOTONIC */
	int32_t budget;       /* grants left on the rate limit's lease */
	int32_t lifetime, max_lifetime;
	int32_t nleaders;
	int pidfds[MAX_LEADERS];  /* the session leaders (pidfd_open): readable once they exit */
	const char *claims, *answer, *audit, *journal;  /* in text[] */
	char text[];  /* the four templates, each NUL-terminated: an entry is as long as they are */
};

static struct {
	pthread_mutex_t lock;         /* the table, the key and `on` */
	struct entry **buckets;
	size_t nbuckets;
	unsigned char key[64];
	size_t keylen;
	int on;                       /* a key is set: answer; else forward everything */
	int listen_fd, forward_fd, stop_fd, audit_fd;  /* audit_fd -1: the journal */
	int nthreads;
	pthread_t threads[MAX_THREADS];
	/* the connections each worker holds (waiting for their request, and the one in hand, the
	 * last slot), each as its uid and accept number (HELD), -1 in a free slot */
	int64_t held[MAX_THREADS][MAX_PENDING + 1];
	uint32_t accepts;  /* connections accepted: the accept number of the next, under the lock */
	int fd_ceiling;    /* a connection at or above this descriptor: pause accepting (RESERVE) */
	double bounds[LATENCY_SLOTS];
	int nbounds;
	/* counters, taken (and zeroed) by sjf_take_counters; atomics */
	uint64_t granted, forwarded, latency[LATENCY_SLOTS], latency_ns, audit_failed;
	int audit_errno;  /* the last journal error */
} F = { .lock = PTHREAD_MUTEX_INITIALIZER, .listen_fd = -1, .forward_fd = -1, .stop_fd = -1,
	.audit_fd = -1 };

static const char B64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
static const char HEADER[] = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9"; /* {"alg":"HS256","typ":"JWT"} */

static int64_t mono_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static size_t b64url(const unsigned char *in, size_t n, char *out)
{
	size_t o = 0, i = 0;
	for (; i + 2 < n; i += 3) {
		unsigned v = (unsigned)in[i] << 16 | (unsigned)in[i + 1] << 8 | in[i + 2];
		out[o++] = B64[v >> 18];
		out[o++] = B64[v >> 12 & 63];
		out[o++] = B64[v >> 6 & 63];
		out[o++] = B64[v & 63];
	}
	if (n - i == 1) {
		unsigned v = (unsigned)in[i] << 16;
		out[o++] = B64[v >> 18];
		out[o++] = B64[v >> 12 & 63];
	} else if (n - i == 2) {
		unsigned v = (unsigned)in[i] << 16 | (unsigned)in[i + 1] << 8;
		out[o++] = B64[v >> 18];
		out[o++] = B64[v >> 12 & 63];
		out[o++] = B64[v >> 6 & 63];
	}
	return o;
}

/* TEMPLATE with its slots filled from VALUES (indexed by slot) into OUT (SIZE); its length,
 * or 0 if it does not fit */
static size_t expand(const char *template, const char *const values[8], char *out, size_t size)
{
	size_t o = 0;
	for (const char *t = template; *t; t++) {
		const char *v = (unsigned char)*t < 8 ? values[(unsigned char)*t] : NULL;
		size_t n = v ? strlen(v) : 1;
		if (o + n >= size)
			return 0;
		memcpy(out + o, v ? v : t, n);
		o += n;
	}
	out[o] = '\0';
	return o;
}

/* whether E has a session leader alive: a pidfd becomes readable when its process exits
 * (a zombie included), and it names that process even if its pid is reused */
static int leader_alive(const struct entry *e)
{
	struct pollfd fds[MAX_LEADERS];
	for (int i = 0; i < e->nleaders; i++)
		fds[i] = (struct pollfd){ .fd = e->pidfds[i], .events = POLLIN };
	if (poll(fds, (nfds_t)e->nleaders, 0) < 0)
		return 0;
	for (int i = 0; i < e->nleaders; i++)
		if (!(fds[i].revents & (POLLIN | POLLHUP | POLLERR | POLLNVAL)))
			return 1;
	return 0;
}

static void free_entry(struct entry *e)
{
	for (int i = 0; i < e->nleaders; i++)
		close(e->pidfds[i]);
	free(e);
}

static struct entry **slot_of(uint32_t uid)
{
	struct entry **e = &F.buckets[uid & (F.nbuckets - 1)];
	while (*e && (*e)->uid != uid)
		e = &(*e)->next;
	return e;
}

/* the request a user's own MINT is, else 0: "SJWT/1 MINT\n" (LIFETIME 0) or
 * "SJWT/1 MINT lifetime=N\n" with N 1 to 9 ASCII digits, not 0 (protocol.parse_number) */
static int parse_mint(const char *buf, size_t n, int32_t *lifetime)
{
	static const char op[] = "SJWT/1 MINT", arg[] = " lifetime=";
	size_t k = sizeof op - 1;
	if (n < k + 1 || buf[n - 1] != '\n' || memcmp(buf, op, k) != 0)
		return 0;
	*lifetime = 0;
	if (n == k + 1)
		return 1;
	if (n < k + sizeof arg || memcmp(buf + k, arg, sizeof arg - 1) != 0)
		return 0;
	const char *d = buf + k + sizeof arg - 1, *end = buf + n - 1;
	if (end - d < 1 || end - d > 9)
		return 0;
	int32_t v = 0;
	for (; d < end; d++) {
		if (*d < '0' || *d > '9')
			return 0;
		v = v * 10 + (*d - '0');
	}
	*lifetime = v;
	return v > 0;
}

static void count_latency(int64_t accepted)
{
	int64_t ns = mono_ns() - accepted;
	double s = (double)ns / 1e9;
	int i = 0;
	while (i < F.nbounds && s > F.bounds[i])  /* bisect_left: a bound holds what equals it */
		i++;
	__atomic_fetch_add(&F.latency[i], 1, __ATOMIC_RELAXED);
	__atomic_fetch_add(&F.latency_ns, (uint64_t)ns, __ATOMIC_RELAXED);
}

/* journald's native protocol (systemd.io/JOURNAL_NATIVE_PROTOCOL): an entry is one datagram of
 * KEY=value lines to this socket. Each worker connects once; sd_journal_sendv, which this
 * replaces, addresses every datagram by path: 3-8 us more of the sender's CPU per line
 * (bench/README.md, "journal"). */
static const char JOURNAL_SOCKET[] = "/run/systemd/journal/socket";
static __thread int journal_fd = -1;

static int journal_connect(void)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	int size = 8 << 20;  /* as libsystemd: room for a burst, not a wait (capped by wmem_max) */
	int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -1;
	(void)setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &size, sizeof size);
	memcpy(sa.sun_path, JOURNAL_SOCKET, sizeof JOURNAL_SOCKET);
	if (connect(fd, (const struct sockaddr *)&sa, sizeof sa) < 0) {
		int e = errno;
		close(fd);
		errno = e;
		return -1;
	}
	return fd;
}

/* ENTRY (LEN bytes) to journald; 0, or -1 with errno. No journald (no socket) is not an error:
 * the line is dropped, as sd_journal_sendv drops it and python-systemd's sendv with it. A
 * socket made anew (journald's socket unit restarted) is connected again, once. */
static int journal_send(const char *entry, size_t len)
{
	for (int attempt = 0; attempt < 2; attempt++) {
		if (journal_fd < 0 && (journal_fd = journal_connect()) < 0)
			return errno == ENOENT ? 0 : -1;
		if (send(journal_fd, entry, len, MSG_NOSIGNAL) == (ssize_t)len)
			return 0;
		if (errno != ECONNREFUSED && errno != ENOTCONN && errno != EPIPE)
			return -1;
		close(journal_fd);
		journal_fd = -1;
	}
	return -1;
}

/* the audit line, to the journal (MESSAGE, then one field a line from the template) or the
 * file; 0, or -1 if the journal refused it: the token is then not given (Python's
 * JournalAuditLog raises, and the request is refused). A failed write to a file is ignored,
 * as AuditLog does. */
static int audit(const char *message, size_t mlen, const char *journal)
{
	if (F.audit_fd >= 0) {
		char stamp[64], line[MAX_MESSAGE + 64];
		struct tm tm;
		time_t now = time(NULL);
		strftime(stamp, sizeof stamp, "%Y-%m-%dT%H:%M:%S%z", localtime_r(&now, &tm));
		int n = snprintf(line, sizeof line, "%s slurmjwtd AUDIT %.*s\n", stamp, (int)mlen, message);
		if (n < 0 || (size_t)n >= sizeof line)
			return -1;  /* cannot happen (MESSAGE bounds it); never a token unaudited */
		if (write(F.audit_fd, line, (size_t)n) < 0) {
			/* a full or closed log must not stop the daemon serving, as AuditLog */
		}
		return 0;
	}
	/* a newline in MESSAGE would end the field (sjf_put keeps them out of the template's) */
	char entry[MAX_MESSAGE + 64 + 2 * MAX_TEMPLATE];
	int n = memchr(message, '\n', mlen) ? -1 :
		snprintf(entry, sizeof entry, "MESSAGE=%.*s\nPRIORITY=6\nSYSLOG_IDENTIFIER=slurmjwtd\n%s\n",
			 (int)mlen, message, journal);
	if (n < 0 || (size_t)n >= sizeof entry || journal_send(entry, (size_t)n) < 0) {
		__atomic_fetch_add(&F.audit_failed, 1, __ATOMIC_RELAXED);
		__atomic_store_n(&F.audit_errno, n < 0 || (size_t)n >= sizeof entry ? EMSGSIZE : errno,
				 __ATOMIC_RELAXED);
		return -1;
	}
	return 0;
}

/* copy SRC (NUL-terminated, shorter than MAX_TEMPLATE) to DST */
static void copy(char *dst, const char *src)
{
	memcpy(dst, src, strlen(src) + 1);
}

/* 8 random bytes for a jti, from a per-thread buffer refilled 64 jtis at a time */
static int random8(unsigned char out[8])
{
	static __thread unsigned char pool[512];
	static __thread size_t used = sizeof pool;
	if (used == sizeof pool) {
		if (getrandom(pool, sizeof pool, 0) != (ssize_t)sizeof pool)
			return -1;
		used = 0;
	}
	memcpy(out, pool + used, 8);
	explicit_bzero(pool + used, 8);
	used += 8;
	return 0;
}

/* answer C (UID, PID) from the table if it can; 1 if answered, 0 to forward */
static int serve(int c, uint32_t uid, int32_t pid, int32_t lifetime, int64_t accepted)
{
	static __thread char claims_t[MAX_TEMPLATE], answer_t[MAX_TEMPLATE], audit_t[MAX_TEMPLATE],
		journal_t[MAX_TEMPLATE];
	unsigned char key[64];
	size_t keylen = 0;
	/* one look at the table: the entry, its leaders alive, one grant of its lease */
	pthread_mutex_lock(&F.lock);
	struct entry *e = F.on ? *slot_of(uid) : NULL;
	int ok = e && e->budget > 0 && e->expires_ns > accepted &&
		 (lifetime ? lifetime : e->lifetime) <= e->max_lifetime && leader_alive(e);
	if (ok) {
		e->budget--;
		lifetime = lifetime ? lifetime : e->lifetime;
		copy(claims_t, e->claims);
		copy(answer_t, e->answer);
		copy(audit_t, e->audit);
		if (F.audit_fd < 0)
			copy(journal_t, e->journal);
		keylen = F.keylen;
		memcpy(key, F.key, keylen);
	}
	pthread_mutex_unlock(&F.lock);
	/* not there, expired, lease spent, too long a lifetime (Python refuses it), no leader
	 * alive (Python drops the dead and decides): Python's */
	if (!ok)
		return 0;

	unsigned char rnd[8], mac[EVP_MAX_MD_SIZE];
	char jti[17], iat_s[24], exp_s[24], life_s[16], pid_s[16];
	if (random8(rnd) < 0) {
		explicit_bzero(key, sizeof key);
		return 0;
	}
	for (int i = 0; i < 8; i++) {
		jti[2 * i] = "0123456789abcdef"[rnd[i] >> 4];
		jti[2 * i + 1] = "0123456789abcdef"[rnd[i] & 15];
	}
	jti[16] = '\0';
	time_t now = time(NULL);
	snprintf(iat_s, sizeof iat_s, "%lld", (long long)now);
	snprintf(exp_s, sizeof exp_s, "%lld", (long long)now + lifetime);
	snprintf(life_s, sizeof life_s, "%d", lifetime);
	snprintf(pid_s, sizeof pid_s, "%d", pid);
	const char *values[8] = { NULL, pid_s, life_s, exp_s, jti, NULL, iat_s, NULL };

	char claims[MAX_TEMPLATE], token[2 * MAX_TEMPLATE + 128], answer[3 * MAX_TEMPLATE];
	char message[MAX_MESSAGE];
	size_t cl = expand(claims_t, values, claims, sizeof claims);
	size_t t = sizeof HEADER - 1;
	unsigned maclen = 0;
	memcpy(token, HEADER, t);
	token[t++] = '.';
	t += b64url((const unsigned char *)claims, cl, token + t);
	int signed_ok = cl && HMAC(EVP_sha256(), key, (int)keylen, (const unsigned char *)token, t,
				   mac, &maclen) != NULL;
	explicit_bzero(key, sizeof key);
	if (!signed_ok)
		return 0;
	token[t++] = '.';
	t += b64url(mac, maclen, token + t);
	explicit_bzero(mac, sizeof mac);
	token[t] = '\0';
	values[S_TOKEN] = token;
	size_t al = expand(answer_t, values, answer, sizeof answer);
	values[S_TOKEN] = NULL;  /* the audit line cannot hold the token, whatever its template */
	size_t ml = expand(audit_t, values, message, sizeof message);
	char journal[2 * MAX_TEMPLATE];
	size_t jl = F.audit_fd >= 0 ? 1 : expand(journal_t, values, journal, sizeof journal);
	explicit_bzero(token, sizeof token);
	if (!al || !ml || !jl) {
		explicit_bzero(answer, sizeof answer);
		return 0;  /* cannot happen with the templates fastpath.py makes; Python answers */
	}
	/* audited before it is sent, as the Python path does; not audited, not sent: Python's */
	if (audit(message, ml, F.audit_fd >= 0 ? NULL : journal) < 0) {
		explicit_bzero(answer, sizeof answer);
		return 0;
	}
	if (send(c, answer, al, MSG_DONTWAIT | MSG_NOSIGNAL) < 0) {
		/* the client went: the grant stands, as in Python */
	}
	explicit_bzero(answer, sizeof answer);
	__atomic_fetch_add(&F.granted, 1, __ATOMIC_RELAXED);
	count_latency(accepted);
	return 1;
}

#define HELD(uid, seq) ((int64_t)((uint64_t)(uint32_t)(uid) << 32 | (uint32_t)(seq)))

/* pass C, accept number SEQ, on to the Python loop (C -1: accept failed, CR->uid its errno);
 * if the channel is full, wait for room, unless stopping. With it goes how many connections
 * of the same uid accepted before it the workers still hold (waiting, or in hand): Python
 * counts them against the uid's cap as if it held them already, so a user's idle connections
 * make the next one `busy` whichever worker took which and whatever order they reach Python
 * in. A connection leaves `held` only once its record is sent: counted twice for a moment
 * (more `busy`), never missed. */
static void forward(int c, const struct ucred *cr, int64_t accepted, const char *buf, size_t n,
		    uint32_t seq)
{
	int32_t ahead = 0;
	for (int i = 0; c >= 0 && i < F.nthreads; i++)
		for (int k = MAX_PENDING; k >= 0; k--) {  /* CURRENT first: see worker() */
			int64_t v = __atomic_load_n(&F.held[i][k], __ATOMIC_ACQUIRE);
			ahead += v != -1 && (uint32_t)((uint64_t)v >> 32) == cr->uid &&
				 (int32_t)((uint32_t)v - seq) < 0;  /* accepted before it */
		}
	struct forward r = { .fd = c, .uid = (int32_t)cr->uid, .gid = (int32_t)cr->gid,
			     .pid = cr->pid, .ahead = ahead, .accepted_ns = accepted,
			     .len = (uint32_t)n };
	memcpy(r.data, buf, n);
	size_t size = offsetof(struct forward, data) + n;
	struct pollfd room[2] = { { .fd = F.forward_fd, .events = POLLOUT },
				  { .fd = F.stop_fd, .events = POLLIN } };
	for (;;) {
		if (send(F.forward_fd, &r, size, MSG_DONTWAIT | MSG_NOSIGNAL) == (ssize_t)size) {
			if (c >= 0)
				__atomic_fetch_add(&F.forwarded, 1, __ATOMIC_RELAXED);
			return;
		}
		if (errno == EINTR)
			continue;
		/* the loop is busy: wait for room; stopping, or its end closed: drop it */
		if (errno != EAGAIN || (poll(room, 2, -1) < 0 && errno != EINTR) || room[1].revents)
			break;
	}
	if (c >= 0)
		close(c);
}

/* A worker: its own epoll on the listening socket, the stop event and up to MAX_PENDING
 * connections accepted before their request arrived. A request not there at once is usually
 * on its way: a yield first lets a client on this CPU write it (at 8 clients, 22 % of
 * connections found nothing without it, under 0.3 % with it); then the connection waits here
 * at most GRACE_NS, and goes to Python with what came, which waits for the rest under the
 * per-uid cap and deadline as for any client; beyond MAX_PENDING it goes at once. No worker
 * ever blocks on one client, so a user's silent connections cost others nothing but a
 * hand-over. Accepting and saying whose connection it holds are under one lock, so that a
 * connection accepted later by another worker counts it (forward's `ahead`). */
enum { LISTEN_KEY = -1, STOP_KEY = -2, CURRENT = MAX_PENDING };
static const int64_t GRACE_NS = 20000000;
static pthread_mutex_t accepting = PTHREAD_MUTEX_INITIALIZER;

struct pending { int fd; uint32_t seq; struct ucred cr; int64_t accepted; };

/* after running short of descriptors the workers accept nothing for this long */
static const struct timespec ACCEPT_PAUSE = { 0, 100000000 };  /* server._ACCEPT_PAUSE */

/* tell the Python loop, which logs it: a record with fd -1 and the errno WHY as its uid */
static void descriptors_short(int why)
{
	struct ucred none = { .pid = 0, .uid = (uid_t)why, .gid = 0 };
	forward(-1, &none, mono_ns(), "", 0, 0);
}

static void hold(int me, int slot, int64_t held)
{
	__atomic_store_n(&F.held[me][slot], held, __ATOMIC_RELEASE);
}

/* CONN's request: answered here if it is a user's own MINT the table allows, else Python's */
static void take(const struct pending *q, const char *buf, ssize_t got)
{
	size_t n = got > 0 ? (size_t)got : 0;
	int32_t lifetime;
	int mine = q->cr.uid != 0 && n && memchr(buf, '\n', n) == buf + n - 1 &&
		   parse_mint(buf, n, &lifetime);
	if (got == 0)  /* hung up before a request: nothing to answer, as Python does */
		close(q->fd);
	else if (mine && serve(q->fd, q->cr.uid, q->cr.pid, lifetime, q->accepted))
		close(q->fd);
	else  /* root, another request, not all of it yet, a second one, not in the table */
		forward(q->fd, &q->cr, q->accepted, buf, n, q->seq);
}

static void *worker(void *arg)
{
	int me = (int)(intptr_t)arg;
	/* slots, not a list: a connection stays in its slot until it goes, so that `held` never
	 * moves one while another worker reads it (fd -1: a free slot) */
	struct pending p[MAX_PENDING];
	int np = 0, ep = epoll_create1(EPOLL_CLOEXEC);
	for (int i = 0; i < MAX_PENDING; i++)
		p[i].fd = -1;
	/* EPOLLEXCLUSIVE: a connection wakes one worker, not each (the others found EAGAIN) */
	struct epoll_event ev = { .events = EPOLLIN | EPOLLEXCLUSIVE, .data.fd = LISTEN_KEY };
	if (ep < 0 || epoll_ctl(ep, EPOLL_CTL_ADD, F.listen_fd, &ev) < 0)
		return NULL;
	ev = (struct epoll_event){ .events = EPOLLIN, .data.fd = STOP_KEY };
	if (epoll_ctl(ep, EPOLL_CTL_ADD, F.stop_fd, &ev) < 0) {
		close(ep);
		return NULL;
	}
	char buf[MAX_REQUEST + 1];
	struct epoll_event events[16];
	int pausing = 0;
	for (int stop = 0; !stop;) {
		int timeout = -1;
		if (np) {
			int64_t first = INT64_MAX;
			for (int i = 0; i < MAX_PENDING; i++)
				if (p[i].fd >= 0 && p[i].accepted < first)
					first = p[i].accepted;
			int64_t wait = first + GRACE_NS - mono_ns();
			timeout = wait > 0 ? (int)(wait / 1000000) + 1 : 0;
		}
		int n = epoll_wait(ep, events, 16, timeout);
		if (n < 0 && errno != EINTR)
			break;
		for (int k = 0; k < n; k++) {
			int key = events[k].data.fd;
			if (key == STOP_KEY) {
				stop = 1;
			} else if (key == LISTEN_KEY) {
				struct pending q;
				socklen_t cl = sizeof q.cr;
				pthread_mutex_lock(&accepting);
				q.fd = accept4(F.listen_fd, NULL, NULL, SOCK_CLOEXEC);
				int why = errno;
				int known = q.fd >= 0 &&
					    getsockopt(q.fd, SOL_SOCKET, SO_PEERCRED, &q.cr, &cl) == 0;
				q.seq = F.accepts++;
				if (known)
					hold(me, CURRENT, HELD(q.cr.uid, q.seq));
				pthread_mutex_unlock(&accepting);
				if (q.fd < 0) {
					if (why == EMFILE || why == ENFILE || why == ENOBUFS || why == ENOMEM) {
						descriptors_short(why);
						nanosleep(&ACCEPT_PAUSE, NULL);
					}
					continue;  /* EAGAIN: another worker took it */
				}
				if (!known) {
					close(q.fd);
					continue;
				}
				if (q.fd >= F.fd_ceiling) {
					/* as good as EMFILE: what the loop needs to answer (an NSS lookup opens
					 * files) must not go to connections piling up; this one is served, then
					 * the workers wait as on EMFILE */
					descriptors_short(EMFILE);
					pausing = 1;
				}
				q.accepted = mono_ns();
				ssize_t got = recv(q.fd, buf, sizeof buf, MSG_DONTWAIT);
				if (got < 0 && errno == EAGAIN) {
					sched_yield();
					got = recv(q.fd, buf, sizeof buf, MSG_DONTWAIT);
				}
				int slot = 0;
				while (slot < MAX_PENDING && p[slot].fd >= 0)
					slot++;
				ev = (struct epoll_event){ .events = EPOLLIN | EPOLLRDHUP, .data.fd = q.fd };
				if (got < 0 && errno == EAGAIN && slot < MAX_PENDING &&
				    epoll_ctl(ep, EPOLL_CTL_ADD, q.fd, &ev) == 0) {
					/* into its slot before it leaves CURRENT: forward() reads from CURRENT
					 * down, so it finds it in one place or the other */
					hold(me, slot, HELD(q.cr.uid, q.seq));
					p[slot] = q;
					np++;
				} else {
					take(&q, buf, got);
				}
				hold(me, CURRENT, -1);
				if (pausing) {
					nanosleep(&ACCEPT_PAUSE, NULL);
					pausing = 0;
				}
			} else {
				int i = 0;
				while (i < MAX_PENDING && p[i].fd != key)
					i++;
				if (i == MAX_PENDING)
					continue;
				epoll_ctl(ep, EPOLL_CTL_DEL, key, NULL);
				ssize_t got = recv(key, buf, sizeof buf, MSG_DONTWAIT);
				take(&p[i], buf, got);  /* still held meanwhile: counted, never missed */
				hold(me, i, -1);
				p[i].fd = -1;
				np--;
			}
		}
		int64_t now = mono_ns();
		for (int i = 0; np && i < MAX_PENDING; i++) {  /* grace over: Python waits on them */
			if (p[i].fd < 0 || (!stop && p[i].accepted + GRACE_NS > now))
				continue;
			epoll_ctl(ep, EPOLL_CTL_DEL, p[i].fd, NULL);
			forward(p[i].fd, &p[i].cr, p[i].accepted, buf, 0, p[i].seq);
			hold(me, i, -1);
			p[i].fd = -1;
			np--;
		}
	}
	close(ep);
	if (journal_fd >= 0) {
		close(journal_fd);
		journal_fd = -1;
	}
	return NULL;
}

/* -- the API fastpath.py calls ------------------------------------------------------------ */

API int sjf_start(int listen_fd, int forward_fd, int audit_fd, int threads, const double *bounds,
		  int nbounds, size_t nbuckets)
{
	if (F.nthreads || threads < 1 || threads > MAX_THREADS || nbounds > LATENCY_SLOTS - 1 ||
	    nbuckets < BUCKETS || (nbuckets & (nbuckets - 1)))
		return -EINVAL;
	F.buckets = calloc(nbuckets, sizeof *F.buckets);
	if (!F.buckets)
		return -ENOMEM;
	F.nbuckets = nbuckets;
	F.stop_fd = eventfd(0, EFD_CLOEXEC);
	if (F.stop_fd < 0)
		return -errno;
	struct rlimit nofile;
	F.fd_ceiling = getrlimit(RLIMIT_NOFILE, &nofile) == 0 && nofile.rlim_cur > 2 * RESERVE &&
		       nofile.rlim_cur < INT_MAX ? (int)nofile.rlim_cur - RESERVE : INT_MAX;
	F.listen_fd = listen_fd;
	F.forward_fd = forward_fd;
	F.audit_fd = audit_fd;
	memcpy(F.bounds, bounds, sizeof *bounds * (size_t)nbounds);
	F.nbounds = nbounds;
	for (int i = 0; i < MAX_THREADS; i++)
		for (int k = 0; k <= MAX_PENDING; k++)
			F.held[i][k] = -1;
	F.nthreads = threads;  /* read by forward(); threads that fail to start hold nothing */
	for (int i = 0; i < threads; i++) {
		int rc = pthread_create(&F.threads[i], NULL, worker, (void *)(intptr_t)i);
		if (rc) {
			F.nthreads = i;
			return -rc;
		}
	}
	F.nthreads = threads;
	return 0;
}

/* stop the threads (each finishes the connection it holds) and forget the table and key */
API void sjf_stop(void)
{
	uint64_t one = 1;
	if (F.stop_fd >= 0 && write(F.stop_fd, &one, sizeof one) < 0) {
		/* an eventfd write fails only on overflow */
	}
	for (int i = 0; i < F.nthreads; i++)
		pthread_join(F.threads[i], NULL);
	F.nthreads = 0;
	pthread_mutex_lock(&F.lock);
	for (size_t b = 0; F.buckets && b < F.nbuckets; b++)
		for (struct entry *e = F.buckets[b], *next; e; e = next) {
			next = e->next;
			free_entry(e);
		}
	free(F.buckets);
	F.buckets = NULL;
	F.on = 0;
	explicit_bzero(F.key, sizeof F.key);
	F.keylen = 0;
	pthread_mutex_unlock(&F.lock);
	if (F.stop_fd >= 0)
		close(F.stop_fd);
	F.stop_fd = -1;
}

/* sign with KEY from now on (LEN 0: answer nothing, forward everything); at most a SHA-256
 * block: fastpath.py hashes a longer one first, as HMAC itself does (RFC 2104) */
API int sjf_set_key(const unsigned char *key, size_t len)
{
	if (len > sizeof F.key)
		return -EINVAL;
	pthread_mutex_lock(&F.lock);
	explicit_bzero(F.key, sizeof F.key);
	memcpy(F.key, key, len);
	F.keylen = len;
	F.on = len > 0;
	pthread_mutex_unlock(&F.lock);
	return 0;
}

/* take UID's entry out of the table; the grants left on its lease, or -1 if it had none */
API int sjf_take(uint32_t uid)
{
	pthread_mutex_lock(&F.lock);
	struct entry **slot = F.buckets ? slot_of(uid) : NULL, *e = slot ? *slot : NULL;
	int left = -1;
	if (e) {
		*slot = e->next;
		left = e->budget;
		free_entry(e);
	}
	pthread_mutex_unlock(&F.lock);
	return left;
}

/* put UID's entry in the table (replacing any; take it first to have its lease back).
 * PIDFDS: NLEADERS pidfds of its session leaders, the entry's from now on (closed when it
 * goes), unless this fails. Templates: NUL-terminated, slots as above. */
API int sjf_put(uint32_t uid, int64_t expires_ns, int32_t budget, int32_t lifetime,
		int32_t max_lifetime, const int *pidfds, int nleaders, const char *claims,
		const char *answer, const char *audit_line, const char *journal)
{
	if (nleaders < 1 || nleaders > MAX_LEADERS || strlen(claims) >= MAX_TEMPLATE ||
	    strlen(answer) >= MAX_TEMPLATE || strlen(audit_line) >= MAX_TEMPLATE ||
	    strlen(journal) >= MAX_TEMPLATE || lifetime < 1 || max_lifetime < lifetime)
		return -EINVAL;
	int fields = 1;
	for (const char *c = journal; *c; c++)
		fields += *c == '\n';
	/* audit() sends each of them: none may be left out; an empty line would end the entry */
	if (fields > MAX_JOURNAL || !*journal || *journal == '\n' ||
	    journal[strlen(journal) - 1] == '\n' || strstr(journal, "\n\n"))
		return -EINVAL;
	size_t lengths[4] = { strlen(claims) + 1, strlen(answer) + 1, strlen(audit_line) + 1,
			      strlen(journal) + 1 };
	struct entry *e = calloc(1, sizeof *e + lengths[0] + lengths[1] + lengths[2] + lengths[3]);
	if (!e)
		return -ENOMEM;
	e->uid = uid;
	e->expires_ns = expires_ns;
	e->budget = budget;
	e->lifetime = lifetime;
	e->max_lifetime = max_lifetime;
	e->nleaders = nleaders;
	memcpy(e->pidfds, pidfds, sizeof *pidfds * (size_t)nleaders);
	char *t = e->text;
	e->claims = memcpy(t, claims, lengths[0]);
	e->answer = memcpy(t += lengths[0], answer, lengths[1]);
	e->audit = memcpy(t += lengths[1], audit_line, lengths[2]);
	e->journal = memcpy(t += lengths[2], journal, lengths[3]);
	pthread_mutex_lock(&F.lock);
	if (!F.buckets) {
		pthread_mutex_unlock(&F.lock);
		free(e);
		return -EINVAL;
	}
	struct entry **slot = slot_of(uid);
	if (*slot) {
		e->next = (*slot)->next;
		free_entry(*slot);
	}
	*slot = e;
	pthread_mutex_unlock(&F.lock);
	return 0;
}

/* the entries' uids and leases, taking every entry out: UIDS and LEFT have room for MAX;
 * the number written (call again while it returns MAX) */
API int sjf_take_all(uint32_t *uids, int32_t *left, int max)
{
	int n = 0;
	pthread_mutex_lock(&F.lock);
	for (size_t b = 0; F.buckets && b < F.nbuckets && n < max; b++)
		while (F.buckets[b] && n < max) {
			struct entry *e = F.buckets[b];
			F.buckets[b] = e->next;
			uids[n] = e->uid;
			left[n++] = e->budget;
			free_entry(e);
		}
	pthread_mutex_unlock(&F.lock);
	return n;
}

/* the entries whose expiry has passed, taken out as sjf_take_all does */
API int sjf_take_expired(int64_t now_ns, uint32_t *uids, int32_t *left, int max)
{
	int n = 0;
	pthread_mutex_lock(&F.lock);
	for (size_t b = 0; F.buckets && b < F.nbuckets && n < max; b++)
		for (struct entry **slot = &F.buckets[b]; *slot && n < max;) {
			struct entry *e = *slot;
			if (e->expires_ns > now_ns) {
				slot = &e->next;
				continue;
			}
			*slot = e->next;
			uids[n] = e->uid;
			left[n++] = e->budget;
			free_entry(e);
		}
	pthread_mutex_unlock(&F.lock);
	return n;
}

/* the counters since the last call: OUT[0] granted, [1] forwarded, [2] latency sum (ns),
 * [3] audit lines the journal refused, [4] the last one's errno, [5..5+nbounds] the latency
 * histogram */
API void sjf_take_counters(uint64_t *out)
{
	out[3] = __atomic_exchange_n(&F.audit_failed, 0, __ATOMIC_RELAXED);
	out[4] = (uint64_t)__atomic_load_n(&F.audit_errno, __ATOMIC_RELAXED);
	out[0] = __atomic_exchange_n(&F.granted, 0, __ATOMIC_RELAXED);
	out[1] = __atomic_exchange_n(&F.forwarded, 0, __ATOMIC_RELAXED);
	out[2] = __atomic_exchange_n(&F.latency_ns, 0, __ATOMIC_RELAXED);
	for (int i = 0; i <= F.nbounds; i++)
		out[5 + i] = __atomic_exchange_n(&F.latency[i], 0, __ATOMIC_RELAXED);
}
