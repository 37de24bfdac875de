/* slurmjwt-exec: Slurm's own commands on a login node, run as if SLURM_JWT were not set.
 *
 * Slurm's client commands switch to auth/jwt whenever SLURM_JWT is in their environment;
 * slurmd accepts only the primary AuthType (MUNGE), so srun fails, and sbatch copies the
 * token into every job it submits. `make install` links each command's name in a directory
 * that comes before Slurm's on every default PATH (/usr/local/bin before /usr/bin) to this
 * program, which removes the login's token from its environment and execs the command of the
 * same name in SLURM_BINDIR. Nothing else changes: argv (argv[0] too), the rest of the
 * environment, the file descriptors and the tty are the command's, and exec makes this process
 * the command, so signals reach it and its exit status is the caller's. docs/design.md, "Jobs".
 *
 * JWT-only login nodes (no MUNGE key: Slurm's commands must use the token) set
 * `slurm_commands_use_token = true` in slurmjwtd.toml; the token is then kept.
 *
 *   slurmjwt-exec --list   the command names it serves, one a line (make install links these)
 *   slurmjwt-exec --mode   what it would do here: token=removed|kept config=FILE slurm=DIR
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#ifndef SLURM_BINDIR
#define SLURM_BINDIR "/usr/bin"
#endif
#ifndef CONFIG_FILE
#define CONFIG_FILE "/etc/slurmjwt/slurmjwtd.toml"
#endif
#define KEY "slurm_commands_use_token"
#define ME "slurmjwt-exec: "

/* The one table: Slurm's client commands, each of which authenticates as its caller. */
static const char *const commands[] = {
	"sacct", "sacctmgr", "salloc", "sattach", "sbatch", "sbcast", "scancel", "scontrol",
	"scrontab", "sdiag", "sinfo", "sprio", "squeue", "sreport", "srun", "sshare", "sstat",
	"strigger", "sview",
};

static int known(const char *name)
{
	for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
		if (strcmp(name, commands[i]) == 0)
			return 1;
	return 0;
}

/* 1 if CONFIG_FILE sets `slurm_commands_use_token = true` among its top-level keys (before
 * any [table]); 0 if it says false, lacks the key, or cannot be read. slurmjwtd refuses a
 * file that is not valid TOML, and `slurmjwt doctor` compares this reading with its own. */
static int keep_token(void)
{
	char buf[65536];
	size_t len = 0;
	ssize_t n;
	int fd = open(CONFIG_FILE, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);

	if (fd < 0)
		return 0;
	while (len < sizeof buf - 1 && (n = read(fd, buf + len, sizeof buf - 1 - len)) > 0)
		len += (size_t)n;
	close(fd);
	buf[len] = '\0';
	for (char *line = buf, *next; line != NULL; line = next) {
		next = strchr(line, '\n');
		if (next != NULL)
			*next++ = '\0';
		line += strspn(line, " \t");
		if (*line == '[')
			return 0;
		if (strncmp(line, KEY, sizeof KEY - 1) != 0)
			continue;
		line += sizeof KEY - 1;
		line += strspn(line, " \t");
		if (*line++ != '=')
			continue;
		line += strspn(line, " \t");
		if (strncmp(line, "true", 4) != 0)
			return 0;
		line += 4;
		line += strspn(line, " \t\r");
		return *line == '\0' || *line == '#';
	}
	return 0;
}

static int valid_env_name(const char *s)
{
	size_t n = strspn(s, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz_0123456789");
	return n > 0 && s[n] == '\0' && !(s[0] >= '0' && s[0] <= '9');
}

/* Remove the token: SLURM_JWT, and the name a site gave it (SLURMJWT_VARIABLE, as the shell
 * integration reads it), which sbatch would otherwise copy into the job as well. */
static void remove_token(void)
{
	const char *other = getenv("SLURMJWT_VARIABLE");

	if (other != NULL && valid_env_name(other))
		unsetenv(other);
	unsetenv("SLURM_JWT");
}

/* 1 if PATH is this very program (SLURM_BINDIR holds our links): exec would loop. */
static int is_self(const char *path)
{
	struct stat self, target;
	return stat("/proc/self/exe", &self) == 0 && stat(path, &target) == 0 &&
	       self.st_dev == target.st_dev && self.st_ino == target.st_ino;
}

int main(int argc, char **argv)
{
	const char *name = argc > 0 ? argv[0] : "";
	const char *slash = strrchr(name, '/');
	char path[PATH_MAX];

	name = slash != NULL ? slash + 1 : name;
	if (!known(name)) {
		if (argc == 2 && strcmp(argv[1], "--list") == 0) {
			for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
				puts(commands[i]);
			return 0;
		}
		if (argc == 2 && strcmp(argv[1], "--mode") == 0) {
			printf("token=%s config=%s slurm=%s\n", keep_token() ? "kept" : "removed",
			       CONFIG_FILE, SLURM_BINDIR);
			return 0;
		}
		fprintf(stderr, ME "called as \"%s\", not as a Slurm command: link a name from "
			"`slurmjwt-exec --list` to it, or use --list or --mode\n", name);
		return 2;
	}
	if (snprintf(path, sizeof path, "%s/%s", SLURM_BINDIR, name) >= (int)sizeof path)
		return 126; /* unreachable: both parts are short and fixed */
	if (is_self(path)) {
		fprintf(stderr, ME "%s is this program, not Slurm's %s: link the commands into a "
			"directory before " SLURM_BINDIR " on PATH, not into it\n", path, name);
		return 126;
	}
	if (!keep_token())
		remove_token();
	execv(path, argv);
	fprintf(stderr, ME "cannot run %s: %s (Slurm's commands are expected in " SLURM_BINDIR
		"; rebuild with make SLURM_BINDIR=DIR)\n", path, strerror(errno));
	return errno == ENOENT ? 127 : 126;
}
