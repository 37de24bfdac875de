"""`slurmjwt doctor`: checks a login node's setup; each finding says what, why and the fix.

Checks, in order: the daemon answers; its configuration is valid; every user and group its
policy names is known to NSS (a warning if not); its key file passes the
daemon's own checks (signer.load); its token files' directory (the daemon's, with POSIX
ACLs) and revocation file can be used; slurm.conf has AuthAltTypes=auth/jwt and a jwt_key
holding the same bytes as the daemon's key and giving others no access (slurmctld 23.11+ refuses
to start otherwise) (rs256: a jwks= file, valid, whose entry under this node's kid is this node's
public key, when that file is readable here); sshd's PAM stack runs pam_slurmjwt.so in its session
phase, no other stack in its directory runs it (su, cron, ... through common-session), and sshd
has UsePAM yes; the clock is synchronised; slurmrestd (`rest`: its release and API versions, from its
/openapi/v3; that it refuses a forged token with its release's status and accepts the login's
token; never judged by /ping, which 24.11 answers 200 whatever the token); and how Slurm's commands treat the
login's token (`jobs`): slurm_commands_use_token against MUNGE on the host; whether `srun` is
slurmjwt-exec, which removes the token unless that switch is true, both on this shell's PATH and
on the PATH of `ssh HOST COMMAND` (sshd's, or /etc/environment's); whether each slurmjwt-exec
found reads the switch from the daemon's file and as the daemon reads it; and what Slurm's
version does with SLURM_JWT itself.

The parsers below are pure (files in, values out) and follow each program's own rules:
slurm.conf (keys case-insensitive, last value wins, `Include` followed relative to slurm.conf's
directory, %c expanded), PAM (`@include`, `include`/`substack` controls, relative to the stack's
directory), sshd_config (first value wins, `Include` globs relative to /etc/ssh, nothing
after `Match` counts; `sshd -T` has the last word where it runs) and /etc/environment (pam_env: the last `PATH=`, quoted or not). The
programs doctor runs (`slurmjwt-exec --mode`, `sbatch --version`) run without a shell, with a
fixed environment and a 5 s limit, through a replaceable runner. Key bytes and tokens are never
printed.
"""

from __future__ import annotations

import ctypes
import errno
import glob
import grp
import hmac
import json
import os
import pwd
import re
import secrets
import shutil
import stat
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field

from .client import BadAnswer, DaemonUnreachable, call
from .config import Config, ConfigError, load_config, toml_value
from . import signer as signers
from . import jwks as jwks_file
from .keyfile import MAX_KEY_BYTES, FileCheckError
from .nss import nss
from .policy import unknown_names
from .atomicfile import ACL_XATTR
from .revocation import RevocationError, Revocations
from . import slurm_versions

OK, WARNING, PROBLEM, SKIP = "ok", "WARNING", "PROBLEM", "skip"
DAEMON_USER = "slurmjwt"  # the unit's User=, which may also own the key
MODULE = "pam_slurmjwt.so"
PAM_DIRS = [*sorted(glob.glob("/lib/*/security")), *sorted(glob.glob("/usr/lib/*/security")),
            "/lib/security", "/lib64/security", "/usr/lib/security", "/usr/lib64/security"]
SSH_DIR = "/etc/ssh"
MUNGE_FILES = ("/run/munge/munged.pid", "/etc/munge/munge.key")
MAX_DEPTH = 16  # include nesting, against loops
# Whether this doctor is the Debian package's (/usr/lib/slurmjwt/slurmjwtd/doctor.py): its fixes
# then say what the package offers, not what a source tree does
PACKAGED = os.path.dirname(os.path.dirname(os.path.realpath(__file__))) == "/usr/lib/slurmjwt"
REINSTALL = "apt-get install --reinstall slurmjwt"


@dataclass(frozen=True)
class Finding:
    level: str  # OK, WARNING, PROBLEM or SKIP
    topic: str
    what: str
    why: str = ""
    fix: str = ""

    def render(self) -> str:
        lines = [f"{self.level:<8}{self.topic}: {self.what}"]
        lines += [f"{'':8}{label}: {text}" for label, text in (("why", self.why), ("fix", self.fix))
                  if text and self.level != OK]
        return "\n".join(lines)


# -- parsers --------------------------------------------------------------------------------

def _logical_lines(path: str) -> list[tuple[int, str]]:
    """(line number, text) of PATH, backslash-newline continuations joined."""
    with open(path, encoding="utf-8", errors="replace") as fh:
        raw = fh.read().split("\n")
    out: list[tuple[int, str]] = []
    pending, start = "", 0
    for number, text in enumerate(raw, 1):
        if not pending:
            start = number
        if text.endswith("\\"):
            pending += text[:-1]
            continue
        out.append((start, pending + text))
        pending = ""
    if pending:
        out.append((start, pending))
    return out


_SLURM_PAIR = re.compile(r'([A-Za-z0-9_.]+)\s*=\s*("[^"]*"|\S+)')


def parse_slurm_conf(path: str, values: dict[str, str] | None = None, depth: int = 0) -> dict[str, str]:
    """slurm.conf's KEY=VALUE pairs, keys lower-cased, the last value of a key winning as in
    Slurm; `Include FILE` lines are followed. Raises OSError (with .filename) on a missing file."""
    values = {} if values is None else values
    for _, line in _logical_lines(path):
        line = re.sub(r"(?<!\\)#.*", "", line).replace("\\#", "#").strip()
        include = re.match(r"include\s+(\S.*)", line, re.IGNORECASE)
        if include and depth < MAX_DEPTH:
            name = include.group(1).strip().replace("%c", values.get("clustername", "%c"))
            parse_slurm_conf(os.path.join(os.path.dirname(path), name), values, depth + 1)
            continue
        for key, value in _SLURM_PAIR.findall(line):
            values[key.lower()] = value[1:-1] if value.startswith('"') else value
    return values


def alt_parameters(text: str) -> dict[str, str]:
    """AuthAltParameters=jwt_key=/k,jwks=/j,disable_token_creation -> {name: value}."""
    params = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, _, value = item.partition("=")
        params[name.strip().lower()] = value.strip()
    return params


@dataclass
class PamLine:
    where: str  # file:line
    type: str  # session, auth, ...; without a leading "-"
    control: str
    module: str
    args: list[str]


@dataclass
class PamStack:
    lines: list[PamLine] = field(default_factory=list)
    commented: list[str] = field(default_factory=list)  # file:line of commented-out mentions of MODULE


def _pam_words(text: str) -> list[str]:
    """Split a PAM line, keeping a bracketed control ([a=b c=d]) as one word."""
    return re.findall(r"\[[^\]]*\]|\S+", text)


def parse_pam(path: str, only: str | None = None, stack: PamStack | None = None,
              depth: int = 0) -> PamStack:
    """The lines of a PAM stack, following `@include FILE` and `TYPE include|substack FILE`
    (relative names are looked up in PATH's directory, /etc/pam.d for the real stack).
    ONLY keeps one type, as `session include` does. Raises OSError on a missing PATH."""
    stack = PamStack() if stack is None else stack
    base = os.path.dirname(path)
    for number, line in _logical_lines(path):
        where = f"{path}:{number}"
        text, _, comment = line.partition("#")
        if MODULE in comment:
            stack.commented.append(where)
        words = _pam_words(text)
        if not words:
            continue
        if words[0] == "@include" and len(words) > 1:
            _pam_include(os.path.join(base, words[1]), only, stack, depth)
            continue
        if len(words) < 3:
            continue
        kind = words[0].lstrip("-").lower()
        if only and kind != only:
            continue
        if words[1] in ("include", "substack"):
            _pam_include(os.path.join(base, words[2]), kind, stack, depth)
            continue
        stack.lines.append(PamLine(where, kind, words[1], words[2], words[3:]))
    return stack


def _pam_include(path: str, only: str | None, stack: PamStack, depth: int) -> None:
    if depth < MAX_DEPTH and os.path.isfile(path):  # PAM skips a missing include with a log line
        parse_pam(path, only, stack, depth + 1)


def find_module(name: str, dirs: list[str] = PAM_DIRS) -> str | None:
    """The file PAM would load for a module named NAME, or None."""
    if os.path.isabs(name):
        return name if os.path.isfile(name) else None
    return next((os.path.join(d, name) for d in dirs if os.path.isfile(os.path.join(d, name))), None)


def sshd_option(path: str, keyword: str, ssh_dir: str = SSH_DIR,
                depth: int = 0) -> tuple[str, str] | None:
    """(value, file:line) of KEYWORD's first setting, which is the one sshd keeps, following
    `Include` globs (relative to SSH_DIR); lines after a `Match` are conditional and skipped.
    None if it is not set. Raises OSError on a missing PATH."""
    for number, line in _logical_lines(path):
        words = re.match(r"\s*([^\s=#]+)(?:\s*=\s*|\s+)?(.*)", line)
        if not words:
            continue
        name, rest = words.group(1).lower(), words.group(2).split("#", 1)[0].split()
        if name == "match":
            return None
        if name == "include" and depth < MAX_DEPTH:
            for pattern in rest:
                for included in sorted(glob.glob(os.path.join(ssh_dir, pattern))):
                    found = sshd_option(included, keyword, ssh_dir, depth + 1)
                    if found:
                        return found
        elif name == keyword.lower() and rest:
            return rest[0].strip('"').lower(), f"{path}:{number}"
    return None


# -- the clock ------------------------------------------------------------------------------

class _Timex(ctypes.Structure):  # struct timex: the fields read here, then room for the rest
    _fields_ = [("modes", ctypes.c_uint), ("offset", ctypes.c_long), ("freq", ctypes.c_long),
                ("maxerror", ctypes.c_long), ("esterror", ctypes.c_long), ("status", ctypes.c_int),
                ("_rest", ctypes.c_byte * 256)]


STA_UNSYNC, TIME_ERROR = 0x0040, 5


def read_clock() -> tuple[bool, str]:
    """(synchronised?, detail) from the kernel: adjtimex(2) with modes 0 only reads, unprivileged."""
    timex = _Timex()
    libc = ctypes.CDLL(None, use_errno=True)
    state = libc.adjtimex(ctypes.byref(timex))
    if state < 0:
        raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
    synced = state != TIME_ERROR and not timex.status & STA_UNSYNC
    return synced, f"maximum error {timex.maxerror / 1000:g} ms"


# -- the checks -----------------------------------------------------------------------------

def unreachable_fix(socket: str, config: Config | None) -> str:
    """What to do when nothing answers on SOCKET: start the daemon only if SOCKET is where it
    listens; a path with nothing at it, elsewhere, is a wrong --socket or SLURMJWT_SOCKET."""
    defaults = Config() if config is None else config
    listens = [p for p in (defaults.socket, getattr(defaults, "root_socket", None)) if p]
    start = "systemctl start slurmjwtd.socket (why it stopped: journalctl -u slurmjwtd)"
    if os.path.realpath(socket) in {os.path.realpath(p) for p in listens}:
        return start
    where = f"slurmjwtd listens on {' and '.join(listens)}"
    other = f"run doctor without --socket and SLURMJWT_SOCKET, or with --socket {listens[0]}"
    if not os.path.lexists(socket):
        return f"nothing is at {socket} ({where}): the socket path is wrong: {other}"
    if not stat.S_ISSOCK(os.lstat(socket).st_mode):
        return f"{socket} is not a socket ({where}): {other}"
    return f"{start}; or, if another slurmjwtd should answer there, {other}"


def check_daemon(socket: str, config: Config | None = None) -> Finding:
    """The daemon answers STATUS on SOCKET; CONFIG (None: invalid or unread) says where it listens."""
    why = "without the daemon no login gets a token and `slurmjwt refresh` fails"
    from .fastcli import MAX_SOCKET_PATH, socket_path_error  # doctor runs from the CLI: loaded already
    too_long = socket_path_error(socket)
    if too_long:
        return Finding(PROBLEM, "daemon", too_long,
                       "connect(2) cannot name a longer path: no client can reach it there",
                       f"run doctor with --socket {(config or Config()).socket}, "
                       f"and keep socket paths under {MAX_SOCKET_PATH + 1} bytes")
    try:
        answer = call(socket, "STATUS", timeout=5)
    except DaemonUnreachable as exc:
        return Finding(PROBLEM, "daemon", str(exc), why, unreachable_fix(socket, config))
    except BadAnswer as exc:
        return Finding(PROBLEM, "daemon", str(exc), "whatever listens there is not a working slurmjwtd",
                       f"see what listens there: ss -xlp src {socket}; journalctl -u slurmjwtd")
    if not answer.ok:
        return Finding(PROBLEM, "daemon", f"slurmjwtd on {socket} refused STATUS ({answer.code}): "
                       f"{answer.message}", why, "journalctl -u slurmjwtd")
    fields = answer.fields
    trouble = fields.get("revocation_file", "ok")
    if trouble != "ok":
        return Finding(PROBLEM, "daemon", f"slurmjwtd on {socket} cannot read its revocation "
                       f"file: {trouble}", "it keeps the last list it read, so it lifts no "
                       "revocation, but it sees no new one (another node's `slurmjwt revoke`) "
                       "until it can read the file again",
                       "see journalctl -u slurmjwtd; restore the file, mount its share, or, to "
                       "clear every revocation, write [] to it (never delete it)")
    if (fields.get("fast_path") == "off" and fields.get("signer") == "hs256"
            and (config is None or config.fast_path)):
        return Finding(WARNING, "daemon", f"slurmjwtd {fields.get('version', '?')} answers on "
                       f"{socket}, but without its fast path", "users' own tokens (`slurmjwt "
                       "token`, the shells' `refresh`) then take the Python loop: about 4x the "
                       "CPU each (docs/design.md, Performance)",
                       "see why: journalctl -u slurmjwtd -g 'fast path off'; then " +
                       (REINSTALL if PACKAGED else "make -C pam && make install"))
    return Finding(OK, "daemon", f"slurmjwtd {fields.get('version', '?')} answers on {socket} "
                   f"(signer {fields.get('signer', '?')}, fast path "
                   f"{fields.get('fast_path', '?')})")


def check_config(path: str) -> tuple[Config | None, Finding]:
    try:
        config = load_config(path, required=False)
    except ConfigError as exc:
        what, _, fix = str(exc).partition("; fix: ")
        return None, Finding(PROBLEM, "configuration", what,
                             "slurmjwtd refuses to start, or to reload, with it",
                             f"{fix or 'correct it'}, then: slurmjwtd --config {path} --check-config")
    state = "is valid" if os.path.exists(path) else "does not exist: the defaults apply"
    return config, Finding(OK, "configuration", f"{path} {state} (key_file {config.key_file})")


def check_policy_names(config: Config | None, path: str,
                       user_known: Callable[[str], bool] | None = None,
                       group_known: Callable[[str], bool] | None = None) -> Finding:
    """Every user and group the policy names exists in NSS; an unknown one is a typo or an
    account not made yet, and its rule matches no one (slurmjwtd logs the same at start)."""
    user_known = user_known or (lambda name: nss(pwd.getpwnam, name) is not None)
    group_known = group_known or (lambda name: nss(grp.getgrnam, name) is not None)
    if config is None:
        return Finding(SKIP, "policy", "not checked: the configuration is invalid")
    unknown = unknown_names(config, user_known, group_known)
    if not unknown:
        return Finding(OK, "policy", "every user and group the policy names is known to NSS")
    listed = "; ".join(f"{key}: {name}" for key, name in unknown)
    return Finding(WARNING, "policy", f"NSS knows no such user or group: {listed}",
                   "a rule naming an unknown account matches no one: a deny or allow list "
                   "with a typo denies or allows no one it was meant to",
                   f"correct the name in {path}, or make the account (getent passwd NAME, "
                   f"getent group NAME), then: systemctl reload slurmjwtd")


def check_key(config: Config | None) -> Finding:
    """The signer's own file, checked as slurmjwtd checks it at start (signer.load)."""
    if config is None:
        return Finding(SKIP, "key", "not checked: the configuration is invalid")
    if os.geteuid() != 0:
        return Finding(SKIP, "key", "not checked: run slurmjwt doctor as root to check the key")
    try:  # and as the unit's User= would read it
        signers.load(config, DAEMON_USER)
    except FileCheckError as exc:
        what, _, fix = str(exc).partition("; ")
        return Finding(PROBLEM, "key", what,
                       "slurmjwtd refuses to start with it (it checks its key as munged does); "
                       "whoever can read or replace the key can mint a token for any user, root included",
                       fix.removeprefix("fix: ") or "slurmjwtd --check-config")
    return Finding(OK, "key", f"{signers.source(config)} (signer {config.signer}): owner, mode and "
                   f"directories are safe")


def check_tokens(config: Config | None) -> Finding:
    """token_dir as slurmjwtd needs it (its own, or root's, writable by no one else) on a
    filesystem with POSIX ACLs, through which each user reads their token file; and the
    revocation file, which slurmjwtd must be able to read to start."""
    if config is None:
        return Finding(SKIP, "tokens", "not checked: the configuration is invalid")
    path = config.token_dir
    why = ("slurmjwtd keeps each logged-in user's token file there, renewed while they are "
           "logged in, readable by that user through a POSIX ACL")
    daemon = nss(pwd.getpwnam, DAEMON_USER)
    owner = DAEMON_USER if daemon else "root"
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return Finding(WARNING, "tokens", f"{path} does not exist yet", why,
                       "start slurmjwtd, which makes it (its unit's RuntimeDirectory=)")
    except OSError as exc:
        return Finding(PROBLEM, "tokens", f"{path}: {exc.strerror}", why, f"ls -ld {path}")
    owners = {0} | ({daemon.pw_uid} if daemon else set())
    if not stat.S_ISDIR(st.st_mode) or st.st_uid not in owners or st.st_mode & 0o022:
        return Finding(PROBLEM, "tokens", f"{path}: owner uid {st.st_uid}, mode "
                       f"{stat.S_IMODE(st.st_mode):04o}", why + "; slurmjwtd refuses a directory "
                       "not its own or writable by others, and starts without serving",
                       f"rm -rf {path} && systemctl restart slurmjwtd (RuntimeDirectory= makes it "
                       f"{owner}'s, 0755)")
    try:
        os.getxattr(path, ACL_XATTR, follow_symlinks=False)
    except OSError as exc:
        if exc.errno in (errno.EOPNOTSUPP, errno.ENOTSUP):
            return Finding(PROBLEM, "tokens", f"{path}: its filesystem has no POSIX ACLs", why +
                           "; without them no user can read a token file",
                           f"mount {path}'s filesystem with ACLs (tmpfs and ext4 have them by "
                           f"default; check `mount` for noacl)")
    try:
        revoked = Revocations(config.revocation_file).load()
    except RevocationError as exc:
        return Finding(PROBLEM, "tokens", str(exc).split("; ")[0],
                       "slurmjwtd will not start without it: it must not grant what root revoked",
                       str(exc).split("; ", 1)[-1])
    return Finding(OK, "tokens", f"{path}: {owner}'s, POSIX ACLs supported; {revoked} user"
                   f"{'s' * (revoked != 1)} revoked")


def _read_key_bytes(path: str) -> bytes:
    with open(path, "rb") as fh:
        return fh.read(MAX_KEY_BYTES + 1)


def check_slurm_conf(path: str, config: Config | None, config_path: str,
                     version: slurm_versions.Version | None = None) -> list[Finding]:
    restart = "restart slurmctld (and slurmrestd): Slurm reads these only at start"
    try:
        values = parse_slurm_conf(path)
    except OSError as exc:
        return [Finding(PROBLEM, "slurm.conf", f"{exc.filename}: {exc.strerror}",
                        "Slurm's commands on this node read it, and it must name the key tokens "
                        "are verified with", "copy the cluster's slurm.conf there, or name it with "
                        "--slurm-conf PATH")]
    types = [t.strip().lower() for t in values.get("authalttypes", "").split(",")]
    if "auth/jwt" not in types:
        return [Finding(PROBLEM, "slurm.conf", f"{path}: AuthAltTypes does not include auth/jwt",
                        "slurmctld refuses every JWT, so no token from slurmjwtd works",
                        f"add AuthAltTypes=auth/jwt to slurm.conf on every node, then {restart}")]
    params = alt_parameters(values.get("authaltparameters", ""))
    advice = [] if "disable_token_creation" in params else [Finding(
        WARNING, "slurm.conf", f"{path}: AuthAltParameters lacks disable_token_creation",
        "without it any user can run `scontrol token` and get a token around slurmjwtd's policy",
        f"add disable_token_creation to AuthAltParameters, then {restart}")]
    if config is not None and config.signer != "hs256":
        return check_other_signer(path, params, config, restart, config_path) + advice
    return check_jwt_key(path, params.get("jwt_key"), config, config_path, restart, version) + advice


def _others_bits(path: str) -> int | None:
    """PATH's mode if it gives others any access, else None (also if it cannot be read)."""
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        return None
    return mode if mode & 0o007 else None


def check_jwt_key(path: str, jwt_key: str | None, config: Config | None, config_path: str,
                  restart: str, version: slurm_versions.Version | None = None) -> list[Finding]:
    """hs256: slurm.conf's jwt_key must hold the very bytes slurmjwtd signs with, and give others
    no access (slurmctld 23.11+ refuses to start otherwise: VERSION, `scontrol --version`)."""
    key_file = config.key_file if config else "/var/lib/slurm/jwt_hs256.key"
    if not jwt_key:
        return [Finding(PROBLEM, "slurm.conf", f"{path}: AuthAltParameters has no jwt_key=",
                        "slurmctld has no HS256 key to verify slurmjwtd's tokens with",
                        f"add AuthAltParameters=jwt_key={key_file} to slurm.conf on every node, "
                        f"then {restart}")]
    mode = _others_bits(jwt_key)
    if mode is not None:
        release = slurm_versions.release_of(version)
        here = f"Slurm {slurm_versions.format_version(version)} here" if version else "Slurm's release not known here"
        refuses = ("slurmctld refuses to start with it" if release and release.key_refused_for_others
                   else "slurmctld 23.11 and later refuse to start with it")
        return [Finding(PROBLEM, "slurm.conf", f"jwt_key={jwt_key}: mode {mode:04o} gives other users "
                        "access", f"whoever reads it can mint a token for any user, root included; "
                        f"{refuses} ({here})", f"chmod o-rwx {jwt_key}")]
    if config is None:
        return [Finding(SKIP, "slurm.conf", f"jwt_key={jwt_key} not compared: the configuration is invalid")]
    if os.geteuid() != 0:
        return [Finding(SKIP, "slurm.conf", f"jwt_key={jwt_key} not compared with the daemon's key: "
                        "run slurmjwt doctor as root")]
    try:
        theirs = _read_key_bytes(jwt_key)
    except OSError as exc:
        return [Finding(PROBLEM, "slurm.conf", f"jwt_key={jwt_key}: {exc.strerror}",
                        "the key slurmctld verifies with must be the key slurmjwtd signs with",
                        f"copy the controller's key to {jwt_key} (slurm:slurmjwt 0640) and set "
                        f"key_file = \"{jwt_key}\" in {config_path}, then: systemctl reload slurmjwtd")]
    try:
        ours = _read_key_bytes(key_file)
    except OSError:
        return [Finding(SKIP, "slurm.conf", f"jwt_key={jwt_key} not compared: slurmjwtd's key file "
                        f"{key_file} cannot be read (see key)")]
    if not hmac.compare_digest(theirs, ours):
        return [Finding(PROBLEM, "slurm.conf", f"jwt_key={jwt_key} and slurmjwtd's key_file "
                        f"{key_file} hold different keys",
                        "slurmctld verifies with jwt_key: it refuses every token slurmjwtd signs",
                        f"use one key: set key_file = \"{jwt_key}\" in {config_path} (then: "
                        f"systemctl reload slurmjwtd), or copy the controller's key to both")]
    return [Finding(OK, "slurm.conf", f"{path}: AuthAltTypes has auth/jwt and jwt_key={jwt_key} "
                    f"holds slurmjwtd's key")]


def check_other_signer(path: str, params: dict[str, str], config: Config,
                       restart: str, config_path: str = "slurmjwtd.toml") -> list[Finding]:
    """rs256: slurmctld's JWKS must hold this node's kid with this node's public key (compared
    when the JWKS is readable here, as with a shared /etc/slurm, and the key is: as root);
    scontrol: nothing to compare."""
    if config.signer == "scontrol":
        return [Finding(OK, "slurm.conf", f"{path}: AuthAltTypes has auth/jwt; signer scontrol "
                        f"holds no key to compare")]
    kid = signers.rs256_kid(config)
    jwks = params.get("jwks")
    if not jwks:
        return [Finding(PROBLEM, "slurm.conf", f"{path}: AuthAltParameters has no jwks=",
                        "slurmctld checks RS256 tokens only against a JWKS file",
                        f"add jwks=/etc/slurm/jwks.json to AuthAltParameters, add this node's key "
                        f"to it (`slurmjwt jwks --add`, docs/fleet.md), then {restart}")]
    add = (f"on the controller: slurmjwt jwks --file {jwks} --add NODE.jwks.json, NODE.jwks.json "
           f"being what `slurmjwt jwks` prints here; then {restart}")
    try:
        _, keys, st = jwks_file.read_set(jwks)
    except jwks_file.JwksError as exc:
        return [Finding(PROBLEM, "slurm.conf", str(exc), "slurmctld stops at start on a JWKS it "
                        "cannot read, or skips the entry (and refuses that node's tokens)",
                        f"correct the entry named (slurmjwt jwks --file {jwks} --list checks it)")]
    except OSError as exc:
        st, keys = None, []
        reason = exc.strerror
    else:
        reason = "No such file or directory"
    if st is None:
        return [Finding(SKIP, "slurm.conf", f"jwks={jwks} not checked: not readable from this node "
                        f"({reason}); on the controller: slurmjwt jwks --file {jwks} --list "
                        f"should show kid {kid}")]
    by_kid = {k.kid: k for k in keys}
    ours = _rs256_public(config.rs256_key_file)
    if kid not in by_kid:
        elsewhere = next((k.kid for k in keys if ours and (k.n, k.e) == ours), None)
        if elsewhere:
            return [Finding(PROBLEM, "slurm.conf", f"jwks={jwks} has no key with kid {kid}; this "
                            f"node's key is there as kid {elsewhere}",
                            "slurmctld finds a token's key by its kid: it refuses every token "
                            "this node signs", f"set rs256_kid = \"{elsewhere}\" in {config_path}, "
                            f"then: systemctl reload slurmjwtd")]
        return [Finding(PROBLEM, "slurm.conf", f"jwks={jwks} has no key with kid {kid}",
                        "slurmctld refuses every token this node signs", add)]
    if ours is None:
        return [Finding(OK, "slurm.conf", f"{path}: AuthAltTypes has auth/jwt and {jwks} holds kid "
                        f"{kid} (its key not compared: {config.rs256_key_file} unreadable here; "
                        f"run slurmjwt doctor as root)")]
    if (by_kid[kid].n, by_kid[kid].e) != ours:
        return [Finding(PROBLEM, "slurm.conf", f"jwks={jwks}: kid {kid} holds another key than "
                        f"{config.rs256_key_file}",
                        "slurmctld checks this node's tokens against that key: it refuses every "
                        "one", "a new key takes a new kid: set rs256_kid in "
                        f"{config_path} to a new name, then {add}, "
                        f"and systemctl reload slurmjwtd (docs/fleet.md, rotating a node's key)")]
    return [Finding(OK, "slurm.conf", f"{path}: AuthAltTypes has auth/jwt and {jwks} holds kid "
                    f"{kid} with this node's key")]


def _rs256_public(path: str) -> tuple[int, int] | None:
    """(n, e) of the RSA private key at PATH; None if it cannot be read or is not one."""
    from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    try:
        with open(path, "rb") as fh:
            key = load_pem_private_key(fh.read(MAX_KEY_BYTES + 1), password=None)
    except (OSError, ValueError, TypeError):
        return None
    if not isinstance(key, RSAPrivateKey):
        return None
    numbers = key.public_key().public_numbers()
    return numbers.n, numbers.e


def check_pam(path: str) -> Finding:
    line = f"session optional {MODULE}"
    try:
        stack = parse_pam(path)
    except OSError as exc:
        return Finding(PROBLEM, "pam", f"{path}: {exc.strerror}", "sshd logins run no session "
                       "module from it", "name sshd's PAM stack with --pam-file PATH")
    ours = [x for x in stack.lines if x.type == "session" and os.path.basename(x.module) == MODULE]
    if not ours:
        commented = f" (commented out at {', '.join(stack.commented)})" if stack.commented else ""
        return Finding(PROBLEM, "pam", f"{path} has no session line with {MODULE}{commented}",
                       "SSH logins get no token: the variable is never set", f"echo '{line}' >> {path}")
    missing = [x for x in ours if not find_module(x.module)]
    if missing:
        return Finding(PROBLEM, "pam", f"{missing[0].where}: {missing[0].module} is not installed",
                       "PAM skips the line: SSH logins get no token",
                       REINSTALL if PACKAGED else "make install (in the slurmjwt source tree), or "
                       f"install -m 0644 pam/{MODULE} into the PAM module directory")
    return Finding(OK, "pam", f"{ours[0].where}: session {ours[0].control} {ours[0].module}")


def _service_names(pam_dir: str) -> list[str]:
    """The files in PAM_DIR that are services: not the common-* files Debian includes from them,
    not editor or dpkg leftovers (a name with a dot or a trailing ~)."""
    return sorted(n for n in os.listdir(pam_dir)
                  if not n.startswith("common-") and "." not in n and not n.endswith("~"))


def check_pam_stacks(pam_file: str, pam_dir: str | None = None) -> Finding:
    """pam_slurmjwt.so in a session stack other than sshd's, directly or through an include
    (Debian's common-session is included by su, login, sudo -i, runuser, systemd-user...)."""
    pam_dir = pam_dir or os.path.dirname(os.path.abspath(pam_file))
    try:
        names = _service_names(pam_dir)
    except OSError as exc:
        return Finding(SKIP, "pam stacks", f"{pam_dir}: {exc.strerror}: other PAM stacks not checked")
    sshd = os.path.realpath(pam_file)
    found: list[tuple[str, str]] = []  # (service, file:line of the module's line)
    for name in names:
        path = os.path.join(pam_dir, name)
        if os.path.realpath(path) == sshd or not os.path.isfile(path):
            continue
        try:
            lines = parse_pam(path, only="session").lines
        except OSError:
            continue
        ours = [x for x in lines if os.path.basename(x.module) == MODULE]
        if ours:
            found.append((name, ours[0].where))
    if not found:
        return Finding(OK, "pam stacks", f"no PAM stack in {pam_dir} but {os.path.basename(pam_file)} "
                       f"runs {MODULE}")
    files = sorted({where.rsplit(":", 1)[0] for _, where in found})
    return Finding(WARNING, "pam stacks", f"{MODULE} runs in stacks other than sshd's: " +
                   ", ".join(f"{name} ({where})" for name, where in found),
                   "each of their sessions (su, sudo -i, cron jobs, ...) opens a login session in "
                   "slurmjwtd and gets a token: a cron job or an su then counts as a login, and "
                   "keeps `slurmjwt refresh` working after the user logged out",
                   f"remove the line from {', '.join(files)} and keep 'session optional {MODULE}' "
                   f"in {pam_file} alone, after its other session lines")


SSHD = "/usr/sbin/sshd"


def sshd_says(path: str, keyword: str, run: Runner) -> str | None:
    """KEYWORD's value as `sshd -T -f PATH` reports it (sshd itself applies Include, Match and
    its defaults), or None when sshd cannot say: not installed, no host keys to read (not root),
    or a configuration it refuses."""
    try:
        out = run([SSHD, "-T", "-f", path], {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})
    except RunFailed:
        return None
    key = keyword.lower() + " "
    return next((line[len(key):].strip().lower() for line in out.splitlines()
                 if line.startswith(key)), None)


def check_sshd(path: str, run: Runner | None = None) -> Finding:
    """UsePAM as sshd reads PATH: `sshd -T` decides; the parser names the line, and decides
    alone where sshd -T cannot run."""
    why = "without UsePAM yes sshd runs no PAM session, so pam_slurmjwt.so never runs"
    reload = "then: systemctl reload ssh"
    try:
        found = sshd_option(path, "UsePAM")
    except OSError as exc:
        return Finding(PROBLEM, "sshd", f"{path}: {exc.strerror}", why,
                       "name sshd's configuration with --sshd-config PATH")
    real = sshd_says(path, "UsePAM", run or run_program)
    if real is not None and real != (found[0] if found else "no"):  # a rule the parser missed
        found = (real, f"{path}, as `sshd -T` reads it")
    if found is None:
        return Finding(PROBLEM, "sshd", f"{path} does not set UsePAM (sshd's default: no)", why,
                       f"add 'UsePAM yes' near the top of {path}, {reload}")
    value, where = found
    if value != "yes":
        return Finding(PROBLEM, "sshd", f"{where}: UsePAM {value}", why,
                       f"make it 'UsePAM yes' there (sshd keeps the first value it reads), {reload}")
    return Finding(OK, "sshd", f"{where}: UsePAM yes")


def check_clock(clock: Callable[[], tuple[bool, str]]) -> Finding:
    try:
        synced, detail = clock()
    except OSError as exc:
        return Finding(WARNING, "clock", f"cannot read the kernel's clock state: {exc}",
                       "tokens are checked against slurmctld's clock", "timedatectl status")
    if not synced:
        return Finding(PROBLEM, "clock", f"not synchronised ({detail})",
                       "tokens are checked against slurmctld's clock: exp has no leeway",
                       "timedatectl set-ntp true, or: apt-get install chrony")
    return Finding(OK, "clock", f"synchronised ({detail})")


# -- Slurm's commands and the token (slurmjwt-exec) -----------------------------------------

EXEC = "slurmjwt-exec"
SWITCH = "slurm_commands_use_token"
LINK_DIR = "/usr/local/bin"  # where `make install` links Slurm's command names to slurmjwt-exec
# The Debian package writes nothing in /usr/local: its helper makes those links (debian/README.Debian)
PACKAGE_LINKS = "/usr/lib/slurmjwt/slurmjwt-exec-links"
SSHD_PATH = "/usr/local/bin:/usr/bin:/bin:/usr/games"  # Debian's OpenSSH, for users other than root
ETC_ENVIRONMENT = "/etc/environment"  # pam_env in Debian's sshd stack reads it; its PATH wins
RUN_ENV = {"PATH": "/usr/bin:/bin", "LANG": "C"}  # the whole environment of what doctor runs
RUN_TIMEOUT = 5.0
_MODE = re.compile(r"token=(removed|kept) config=(\S.*) slurm=(\S.*)")


class RunFailed(Exception):
    """A program doctor ran gave no answer; the message says why."""


Runner = Callable[[list[str], Mapping[str, str]], str]


def run_program(argv: list[str], env: Mapping[str, str]) -> str:
    """ARGV's standard output: no shell, ENV its whole environment, RUN_TIMEOUT seconds at most."""
    try:
        done = subprocess.run(argv, env=dict(env), stdin=subprocess.DEVNULL, capture_output=True,
                              text=True, errors="replace", timeout=RUN_TIMEOUT, check=False)
    except subprocess.TimeoutExpired:
        raise RunFailed(f"{argv[0]} gave no answer in {RUN_TIMEOUT:g} s") from None
    except OSError as exc:
        raise RunFailed(f"{argv[0]}: {exc.strerror}") from None
    if done.returncode != 0:
        said = done.stderr.strip().splitlines()[-1:]
        raise RunFailed(": ".join([f"{' '.join(argv)} exited with {done.returncode}", *said]))
    return done.stdout


def sshd_path(etc_environment: str = ETC_ENVIRONMENT) -> tuple[str, str]:
    """(PATH, where it is set) for `ssh HOST COMMAND`, which reads no profile: sshd's default,
    unless /etc/environment sets PATH (pam_env: `PATH=...`, quoted or not, the last one wins)."""
    try:
        lines = _logical_lines(etc_environment)
    except OSError:
        lines = []
    found = (SSHD_PATH, f"sshd's default PATH (PATH= in {etc_environment} overrides it)")
    for number, line in lines:
        setting = re.fullmatch(r"\s*(?:export\s+)?PATH=([\"']?)(.*?)\1\s*", line)
        if setting:
            found = (setting.group(2), f"the PATH set at {etc_environment}:{number}")
    return found


@dataclass(frozen=True)
class Srun:
    """`srun` on one PATH: none (path ""), Slurm's own, or slurmjwt-exec (real is its file) with
    the fields of its --mode answer, or why they could not be had."""

    path: str
    real: str = ""
    mode: dict[str, str] | None = None
    error: str = ""


def find_srun(search_path: str, run: Runner) -> Srun:
    path = shutil.which("srun", path=search_path)
    if path is None:
        return Srun("")
    real = os.path.realpath(path)
    if os.path.basename(real) != EXEC:
        return Srun(path, real)
    try:  # by its own name: run as srun it would run Slurm's srun
        answer = run([real, "--mode"], RUN_ENV).strip()
    except RunFailed as exc:
        return Srun(path, real, error=str(exc))
    fields = _MODE.fullmatch(answer)
    if fields is None:
        return Srun(path, real, error=f"--mode answered {answer[:100]!r}")
    return Srun(path, real, dict(zip(("token", "config", "slurm"), fields.groups())))


def check_mode(config: Config | None, config_path: str, munge_files: tuple[str, ...]) -> Finding:
    """How Slurm's commands authenticate here, as configured, and whether MUNGE is there for it."""
    if config is None:
        return Finding(SKIP, "jobs", f"{SWITCH} not read: the configuration is invalid")
    keep = config.slurm_commands_use_token
    munge = next((f for f in munge_files if os.path.exists(f)), None)
    what = f"{SWITCH} = {toml_value(keep)}: " + (
        "JWT-only: Slurm's commands use the login's token" if keep else
        "Slurm's commands run without the token: MUNGE authenticates them")
    if keep and munge:
        return Finding(WARNING, "jobs", f"{what}, but MUNGE is on this host ({munge})",
                       "with the token Slurm's commands use auth/jwt, which slurmd refuses: srun "
                       "fails here, and so do job steps, as jobs submitted from here carry the token",
                       f"set {SWITCH} = false in {config_path}")
    if not keep and not munge:
        return Finding(WARNING, "jobs", f"{what}, but MUNGE is not on this host (no "
                       f"{' or '.join(munge_files)})", "Slurm's commands here then have no MUNGE "
                       "credential and no token: they fail",
                       f"on a JWT-only login node set {SWITCH} = true in {config_path}; otherwise "
                       "install munge with the cluster's key")
    return Finding(OK, "jobs", what + (f" (MUNGE: {munge})" if munge else " (no MUNGE on this host)"))


def _searched_before(search_path: str, first: str, then: str) -> bool:
    """Whether directory FIRST comes before THEN on SEARCH_PATH (THEN need not be on it)."""
    dirs = [os.path.normpath(d or ".") for d in search_path.split(":")]
    then_at = dirs.index(os.path.normpath(then)) if os.path.normpath(then) in dirs else len(dirs)
    return first in dirs[:then_at]


def check_srun_on_path(where: str, search_path: str, path_source: str, srun: Srun,
                       keep: bool) -> Finding:
    """Whether `srun` on this PATH is slurmjwt-exec, which keeps the token out of Slurm's commands."""
    if not srun.path:
        return Finding(SKIP, "jobs", f"{where}: no srun on PATH {search_path}: Slurm's commands "
                       "are not installed here")
    if srun.error:
        return Finding(WARNING, "jobs", f"{where}: srun is {srun.path}, {EXEC} ({srun.real}), which "
                       f"does not say what it does: {srun.error}", "an old or broken copy may keep the "
                       "token where it must not, or stop Slurm's commands",
                       REINSTALL if PACKAGED else "make -C pam && make install")
    if srun.mode:
        return Finding(OK, "jobs", f"{where}: srun is {srun.path}, {EXEC}: the token is "
                       f"{srun.mode['token']}, then {srun.mode['slurm']}/srun runs")
    if keep:
        return Finding(OK, "jobs", f"{where}: srun is {srun.path}, Slurm's own: it uses the token, "
                       f"as {SWITCH} = true wants")
    slurm_dir = os.path.dirname(srun.path)
    return Finding(WARNING, "jobs", f"{where}: srun is {srun.path}, Slurm's own, not {EXEC} (PATH "
                   f"{search_path})", "Slurm's commands switch to auth/jwt whenever SLURM_JWT is set: "
                   "srun fails (slurmd accepts only MUNGE) and sbatch copies the token into every job",
                   (f"{PACKAGE_LINKS} (it links Slurm's commands in {LINK_DIR} to {EXEC})" if PACKAGED
                    else f"make install (it links Slurm's commands in {LINK_DIR} to {EXEC})") + (
                       "" if _searched_before(search_path, LINK_DIR, slurm_dir) else
                       f", and put {LINK_DIR} before {slurm_dir} in {path_source}"))


def check_exec_token(srun: Srun, config: Config, config_path: str, same_file: bool) -> Finding:
    """slurmjwt-exec reads the switch with a line scanner, not TOML: it must read what slurmjwtd reads."""
    kept, value = srun.mode["token"] == "kept", toml_value(config.slurm_commands_use_token)
    if kept == config.slurm_commands_use_token:
        return Finding(OK, "jobs", f"{srun.real} reads {SWITCH} = {value} from {srun.mode['config']}, "
                       f"as slurmjwtd reads {config_path}: the token is {srun.mode['token']}")
    return Finding(PROBLEM, "jobs", f"{srun.real} {'keeps' if kept else 'removes'} the token, but "
                   f"slurmjwtd reads {SWITCH} = {value} in {config_path}",
                   "srun fails and sbatch copies the token into jobs" if kept else
                   "on a JWT-only node Slurm's commands then have no credential: they fail",
                   f"write `{SWITCH} = {value}` unquoted on a line of its own among the top-level keys "
                   f"(before any [table]) in {config_path}: {EXEC} reads only that form" if same_file
                   else f"the package's {EXEC} reads /etc/slurmjwt/slurmjwtd.toml: keep slurmjwtd's "
                   "configuration there" if PACKAGED
                   else f"rebuild it to read {config_path}: make CONFIG_FILE={config_path} install")


def check_exec(srun: Srun, config: Config | None, config_path: str) -> list[Finding]:
    """slurmjwt-exec reads the switch itself, from the file named when it was built: it must be
    the daemon's file, read as slurmjwtd reads it."""
    same_file = os.path.realpath(srun.mode["config"]) == os.path.realpath(config_path)
    findings = [] if same_file else [Finding(
        WARNING, "jobs", f"{srun.real} reads {srun.mode['config']}, not {config_path}",
        f"it keeps or removes the token by {SWITCH} in that other file",
        f"rebuild it to read {config_path}: make CONFIG_FILE={config_path} install; or check that "
        f"file: slurmjwt doctor --config {srun.mode['config']}")]
    return findings + ([check_exec_token(srun, config, config_path, same_file)] if config else [])


def check_slurm_version(srun: Srun, slurm_conf: str, run: Runner) -> Finding:
    """What Slurm itself does with SLURM_JWT: from 26.05 sbatch leaves it out of jobs, in part."""
    sbatch = os.path.join(srun.mode["slurm"] if srun.mode else os.path.dirname(srun.path), "sbatch")
    env = {**RUN_ENV, "SLURM_CONF": slurm_conf} if os.path.isfile(slurm_conf) else RUN_ENV
    try:
        answer = run([sbatch, "--version"], env)
    except RunFailed as exc:
        return Finding(SKIP, "jobs", f"Slurm's version not known: {exc}")
    version = slurm_versions.parse_version(answer)
    if version is None:
        return Finding(SKIP, "jobs", f"Slurm's version not known: {sbatch} --version answered "
                       f"{answer.strip()[:100]!r}")
    slurm = f"Slurm {slurm_versions.format_version(version)} ({sbatch})"
    release = slurm_versions.release_of(version)
    if release is None or not release.sbatch_scrubs_jwt:
        return Finding(OK, "jobs", f"{slurm} does not scrub SLURM_JWT from the environment sbatch "
                       f"copies into a job: {EXEC} is what keeps the token out of jobs")
    return Finding(OK, "jobs", f"{slurm} scrubs SLURM_JWT from sbatch's copy of the environment "
                   "itself, but only when no --export is given (not with --export=ALL,...), and its "
                   f"srun refuses auth/jwt: {EXEC} still keeps srun working")


def check_jobs(config: Config | None, config_path: str, slurm_conf: str,
               environ: Mapping[str, str] = os.environ, etc_environment: str = ETC_ENVIRONMENT,
               munge_files: tuple[str, ...] | None = None, run: Runner = run_program) -> list[Finding]:
    """Whether Slurm's commands here run with the login's token or without it, as configured: the
    mode against MUNGE; `srun` in this shell and for `ssh HOST COMMAND`; each slurmjwt-exec found
    against the daemon's configuration; and what Slurm's version does itself."""
    keep = config is not None and config.slurm_commands_use_token
    shell_path = environ.get("PATH", os.defpath)
    ssh_path, ssh_source = sshd_path(etc_environment)
    shell, ssh = find_srun(shell_path, run), find_srun(ssh_path, run)
    findings = [check_mode(config, config_path, MUNGE_FILES if munge_files is None else munge_files),
                check_srun_on_path("this shell", shell_path, "this shell's PATH", shell, keep),
                check_srun_on_path("ssh HOST COMMAND", ssh_path, ssh_source, ssh, keep)]
    for srun in {s.real: s for s in (shell, ssh) if s.mode}.values():
        findings += check_exec(srun, config, config_path)
    found = shell if shell.path else ssh
    return findings + ([check_slurm_version(found, slurm_conf, run)] if found.path else [])


# -- slurmrestd ------------------------------------------------------------------------------

Probe = Callable[[str, Mapping[str, str]], int]  # GET URL with HEADERS: the HTTP status


def http_status(url: str, headers: Mapping[str, str]) -> int:
    """GET URL with HEADERS (in-process: a token there is in no argv); its HTTP status."""
    request = urllib.request.Request(url, headers=dict(headers))
    try:
        with slurm_versions.OPENER.open(request, timeout=RUN_TIMEOUT) as answer:
            return answer.status
    except urllib.error.HTTPError as exc:
        return exc.code


def forged_token(user: str) -> str:
    """A well-formed HS256 token for USER signed with a random key: one slurmrestd must refuse."""
    from .signer import HS256Signer

    now = int(time.time())
    return HS256Signer(secrets.token_bytes(32)).mint(user, 60, now).jwt


def _asked(user: str, token: str) -> dict[str, str]:
    return {"X-SLURM-USER-NAME": user, "X-SLURM-USER-TOKEN": token}


def check_rest(url: str, where: str, user: str, token: str | None,
               local: slurm_versions.Version | None = None,
               ask: Callable[..., slurm_versions.Server] = slurm_versions.ask_server,
               probe: Probe = http_status) -> list[Finding]:
    """slurmrestd at URL (WHERE: which setting names it): the release and API versions its
    /openapi/v3 names; that it refuses a forged token with the status its release answers for a
    bad token (RELEASES' bad_token: 22.05 500, 24.11 511), on /diag, never /ping, which 24.11
    answers 200 whatever the token; and, given USER's TOKEN (doctor run in a login), that it
    accepts that token. USER names the forged token's subject when there is no TOKEN. LOCAL,
    the release of Slurm's commands here, stands in for a slurmrestd that names none (22.05)."""
    forged = forged_token(user)
    try:
        server = ask(url, _asked(user, token or forged))
    except slurm_versions.ServerUnknown as exc:
        if "cannot reach" in str(exc):
            return [Finding(SKIP, "rest", f"no slurmrestd answers at {url} ({where}): not checked")]
        return [Finding(WARNING, "rest", f"slurmrestd at {url} ({where}) does not describe itself: {exc}",
                        "`slurmjwt curl /slurm/PATH` asks it which API versions it serves",
                        "check that it runs with -a rest_auth/jwt and -s openapi/slurmctld "
                        "(22.05: -s openapi/v0.0.38)")]
    api = slurm_versions.newest_api(server.api)
    version = server.version or local
    release = slurm_versions.release_of(version)
    slurm = (server.describe() if server.version or not local else
             f"Slurm {slurm_versions.format_version(local)} (as `scontrol --version` says here: "
             f"slurmrestd names no release), API {', '.join(server.api) or 'none under /slurm/'}")
    if api is None:
        return [Finding(PROBLEM, "rest", f"slurmrestd at {url} serves no API under /slurm/ "
                        f"({slurm})", "REST clients find no /slurm/ endpoint",
                        "run slurmrestd with -s openapi/slurmctld (22.05: -s openapi/v0.0.38)")]
    findings = [Finding(OK, "rest", f"slurmrestd at {url}: {slurm}; "
                        f"`slurmjwt curl /slurm/PATH` uses {api}")]
    diag = f"{url.rstrip('/')}/slurm/{api}/diag"
    expected = release.bad_token if release else None
    status = probe(diag, _asked(user, forged))
    if status == 200:
        findings.append(Finding(PROBLEM, "rest", f"slurmrestd accepted a token signed with a random "
                                f"key (GET {diag}: 200)", "it does not verify tokens: anyone can act as "
                                "any user through it", "run slurmrestd with -a rest_auth/jwt and "
                                "AuthAltTypes=auth/jwt, jwt_key= in its slurm.conf"))
    elif expected is not None and status != expected:
        findings.append(Finding(WARNING, "rest", f"slurmrestd answered a forged token with HTTP "
                                f"{status} (GET {diag}), not the {expected} Slurm "
                                f"{slurm_versions.format_version(version)} answers for a bad token",
                                "it refuses the token, but not as its release does: another service "
                                "may answer at that URL", f"check what listens there: curl -sI {url}"))
    else:
        findings.append(Finding(OK, "rest", f"slurmrestd refuses a forged token (GET {diag}: HTTP "
                                f"{status}{', as its release does' if expected else ''})"))
    if token is None:
        return findings + [Finding(SKIP, "rest", "no token here: run doctor in a login to check that "
                                   "slurmrestd accepts slurmjwtd's tokens")]
    status = probe(diag, _asked(user, token))
    if status == 200:
        return findings + [Finding(OK, "rest", f"slurmrestd accepts {user}'s token (GET {diag}: 200)")]
    refused = status == expected or status in (401, 500, 511)
    return findings + [Finding(PROBLEM, "rest", f"slurmrestd {'refuses' if refused else 'answered'} "
                               f"{user}'s token (GET {diag}: HTTP {status})",
                               "REST clients and `slurmjwt curl` fail for users of this node",
                               "slurmrestd must verify with slurmjwtd's key: the same jwt_key (or the "
                               "node's kid in jwks=) in its slurm.conf, and a restart since the key changed")]


def slurm_version(slurm_conf: str, run: Runner = run_program) -> slurm_versions.Version | None:
    """The release of Slurm's commands here (`scontrol --version`, which reads SLURM_CONF first
    before 23.02), or None."""
    env = {**RUN_ENV, "SLURM_CONF": slurm_conf} if os.path.isfile(slurm_conf) else RUN_ENV
    try:
        return slurm_versions.parse_version(run(["scontrol", "--version"], env))
    except RunFailed:
        return None


def run_checks(socket: str, config: str, slurm_conf: str, pam_file: str, sshd_config: str,
               pam_dir: str | None = None,
               clock: Callable[[], tuple[bool, str]] = read_clock,
               jobs: Callable[[Config | None, str, str], list[Finding]] = check_jobs,
               rest: Callable[[Config | None, slurm_versions.Version | None], list[Finding]] | None = None,
               version: Callable[[str], slurm_versions.Version | None] = slurm_version,
               as_json: bool = False) -> int:
    """Print one block per finding and a summary; 0 if nothing is wrong (warnings allowed), else 1.
    CLOCK and JOBS (called with the configuration, its path and slurm.conf's) can be replaced;
    REST (called with the configuration and Slurm's release here: check_rest, as the CLI runs
    it) is left out if None; VERSION (called with slurm.conf's path) gives that release
    (`scontrol --version`), for the jwt_key and slurmrestd checks. PAM_DIR, where the other PAM stacks are looked for, defaults to PAM_FILE's directory.
    AS_JSON: print the findings as one JSON list of {level, topic, what, why, fix} instead."""
    cfg, finding = check_config(config)  # first: check_daemon compares the socket with it
    here = version(slurm_conf)
    findings = [check_daemon(socket, cfg)]
    findings += [finding, check_policy_names(cfg, config), check_key(cfg), check_tokens(cfg),
                 *check_slurm_conf(slurm_conf, cfg, config, here)]
    findings += [check_pam(pam_file), check_pam_stacks(pam_file, pam_dir), check_sshd(sshd_config),
                 check_clock(clock), *jobs(cfg, config, slurm_conf), *(rest(cfg, here) if rest else [])]
    problems = sum(f.level == PROBLEM for f in findings)
    warnings = sum(f.level == WARNING for f in findings)
    if as_json:
        print(json.dumps([asdict(f) for f in findings], indent=1))
        return 1 if problems else 0
    for f in findings:
        print(f.render())
    print(f"{problems} problem{'s' * (problems != 1)}, {warnings} warning{'s' * (warnings != 1)}")
    return 1 if problems else 0
