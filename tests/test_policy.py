"""Site policy with real users and groups (useradd, groupadd, NSS): allow and deny lists,
per-group lifetimes, the rate limit, name mapping, and `slurmjwt policy` explaining."""

from __future__ import annotations

import signal
import subprocess
import time

import jwt
import pytest

from conftest import SLURMJWT, run_as, sh
from slurmjwtd.client import call
from slurmjwtd.config import Config
from slurmjwtd.policy import Account, Caller, decide_mint, lifetimes, slurm_name, unknown_names

HPC, SHORT, BANNED = "sjt-hpc", "sjt-short", "sjt-banned"
CAROL = "sjt-carol"  # in no listed group
ALIAS = "sjt-alias"


@pytest.fixture(scope="module")
def groups(users):
    """alice: hpc and short (supplementary); bob: banned and hpc; carol: none of them."""
    made = [HPC, SHORT, BANNED]
    for name in made:
        subprocess.run(["groupdel", name], capture_output=True)
        sh("groupadd", name)
    subprocess.run(["userdel", CAROL], capture_output=True)
    sh("useradd", "-M", "-s", "/bin/sh", CAROL)
    sh("usermod", "-aG", f"{HPC},{SHORT}", users["alice"].pw_name)
    sh("usermod", "-aG", f"{BANNED},{HPC}", users["bob"].pw_name)
    yield
    subprocess.run(["userdel", CAROL], capture_output=True)
    for name in made:
        subprocess.run(["groupdel", name], capture_output=True)


def mint(d, user: str, lifetime: int | None = None):
    args: dict[str, object] = {"user": user} | ({"lifetime": lifetime} if lifetime else {})
    return call(d.socket, "MINT", args)


def lifetime_of(d, answer) -> int:
    claims = jwt.decode(answer.fields["token"], d.key_file.read_bytes(), algorithms=["HS256"])
    return claims["exp"] - claims["iat"]


def test_allow_deny_and_per_group_lifetimes(make_daemon, users, groups):
    d = make_daemon(allow_groups=[HPC], deny_groups=[BANNED],
                    group_lifetime={HPC: 7200, SHORT: 1800},
                    group_max_lifetime={HPC: 14400, SHORT: 3600})
    alice, bob = users["alice"].pw_name, users["bob"].pw_name
    granted = mint(d, alice)
    assert granted.ok and lifetime_of(d, granted) == 1800  # in hpc and short: shortest wins
    assert mint(d, alice, 3600).ok and not mint(d, alice, 3601).ok  # short's maximum
    denied = mint(d, bob)  # in banned and hpc: deny wins
    assert not denied.ok and denied.code == "policy-denied" and BANNED in denied.message
    unlisted = mint(d, CAROL)
    assert not unlisted.ok and unlisted.code == "policy-denied"
    d.stop()
    log = d.log
    assert f"user={alice}" in log and "rule=group:sjt-short" in log
    assert f"rule=deny-group:{BANNED}" in log and "rule=not-allowed" in log


def test_a_primary_group_counts(make_daemon, users, groups):
    primary = subprocess.run(["id", "-gn", CAROL], capture_output=True, text=True).stdout.strip()
    d = make_daemon(allow_groups=[primary], group_lifetime={primary: 900})
    answer = mint(d, CAROL)
    assert answer.ok and lifetime_of(d, answer) == 900


def test_deny_users_and_allow_users(make_daemon, users, groups):
    d = make_daemon(allow_users=[CAROL], deny_users=[users["alice"].pw_name],
                    allow_groups=[HPC])
    assert mint(d, CAROL).ok and mint(d, users["bob"].pw_name).ok
    assert mint(d, users["alice"].pw_name).code == "policy-denied"


def test_rate_limit_refuses_then_recovers(make_daemon, users, leaders):
    d = make_daemon(rate_limit=3, rate_window=3)
    alice = users["alice"].pw_name
    leaders(d.root_socket, alice)
    results = [d.token_as(alice) for _ in range(4)]
    assert [r.returncode for r in results] == [0, 0, 0, 4]
    assert "rate-limited" in results[3].stderr
    assert mint(d, alice).ok  # root's requests (logins) are not limited
    time.sleep(1.2)  # one grant back per second
    assert d.token_as(alice).returncode == 0
    assert "rule=rate_limit:3/3s" in d.log


@pytest.fixture
def alias(users):
    """A second login name for alice's uid, as alice@REALM and alice are for sssd."""
    subprocess.run(["userdel", ALIAS], capture_output=True)
    sh("useradd", "-o", "-u", str(users["alice"].pw_uid), "-g", str(users["alice"].pw_gid), "-M",
       "-s", "/bin/sh", ALIAS)
    yield ALIAS
    subprocess.run(["userdel", ALIAS], capture_output=True)


def test_name_mapping_is_what_slurmctld_reports(make_daemon, slurm, users, daemon, alias):
    """Login name ALIAS mapped to Slurm user alice: the token's sun, and the job's owner."""
    alice = users["alice"].pw_name
    d = make_daemon(user_map={alias: alice}, key_file=str(daemon.key_file))  # slurmctld's key
    result = run_as("root", SLURMJWT, "token", "--user", alias, env={"SLURMJWT_SOCKET": d.socket})
    assert result.returncode == 0, result.stderr
    token = result.stdout.strip().split("=", 1)[1]
    assert jwt.decode(token, daemon.key_file.read_bytes(), algorithms=["HS256"])["sun"] == alice
    job = slurm.sbatch_as(alias, token)
    assert job.returncode == 0, job.stderr
    job_id = job.stdout.strip().split(";")[0]
    listed = slurm.squeue_as(alias, token, "-h", "-j", job_id, "-o", "%u")
    assert listed.stdout.strip() == alice
    slurm.scancel_as(alias, token, job_id)
    assert f"user={alias}" in d.log and f"slurm_user={alice}" in d.log


def test_slurmjwt_policy_explains_without_minting(make_daemon, users, groups):
    d = make_daemon(allow_groups=[HPC], deny_groups=[BANNED], group_lifetime={HPC: 7200})
    env = {"SLURMJWT_SOCKET": d.socket}
    alice = users["alice"].pw_name
    said = run_as("root", SLURMJWT, "policy", alice, env=env)
    assert said.returncode == 0, said.stderr
    assert f"{alice}: granted (root-request, rule group:{HPC})" in said.stdout
    assert "lifetime:     7200" in said.stdout and f"groups:       {HPC}" in said.stdout
    refused = run_as("root", SLURMJWT, "policy", users["bob"].pw_name, env=env)
    assert refused.returncode == 4 and f"deny-group:{BANNED}" in refused.stdout
    assert "policy-denied" in refused.stdout
    as_user = run_as(alice, SLURMJWT, "policy", alice, env=env)
    assert as_user.returncode == 4 and "permission-denied" in as_user.stderr
    assert "op=mint" not in d.log  # nothing was minted


# -- pure rules -------------------------------------------------------------------------------
def test_lifetime_rules_are_order_independent():
    config = Config(group_lifetime={"a": 7200, "b": 600}, group_max_lifetime={"a": 14400})
    assert lifetimes(Account("x", 2000, frozenset({"a", "b"})), config) == (600, 14400, "group:b")
    assert lifetimes(Account("x", 2000, frozenset({"a"})), config) == (7200, 14400, "group:a")
    assert lifetimes(Account("x", 2000), config) == (3600, 43200, "default")


def test_slurm_names():
    assert slurm_name("alice@EXAMPLE.ORG", Config(strip_realm=True)) == "alice"
    assert slurm_name("alice@EXAMPLE.ORG", Config()) == "alice@EXAMPLE.ORG"
    assert slurm_name("alice@X", Config(strip_realm=True, user_map={"alice@X": "al"})) == "al"


def test_deny_wins_in_the_pure_decision():
    config = Config(allow_users=("x",), deny_groups=("g",))
    d = decide_mint(Caller(0, 0, 1), Account("x", 2000, frozenset({"g"})), "x", None, False, config)
    assert not d.granted and d.rule == "deny-group:g"


# -- names that share a uid (useradd -o) -------------------------------------------------------
def sun(d, token: str) -> str:
    return jwt.decode(token, d.key_file.read_bytes(), algorithms=["HS256"])["sun"]


def test_a_user_gets_tokens_only_in_her_uids_own_name(make_daemon, users, leaders, alias):
    """ALIAS has alice's uid: alice, logged in, still gets no token in its name."""
    d = make_daemon()
    alice = users["alice"].pw_name
    leaders(d.root_socket, alice)
    refused = d.token_as(alice, "--user", alias)
    assert refused.returncode == 4 and "permission-denied" in refused.stderr, refused.stderr
    assert f"its tokens are for {alice} only" in refused.stderr
    for args in ((), ("--user", alice)):
        granted = d.token_as(alice, *args)
        assert granted.returncode == 0, granted.stderr
        assert sun(d, granted.stdout.strip().split("=", 1)[1]) == alice
    audited = [line for line in d.log.splitlines() if "reason=not-primary-name" in line]
    assert len(audited) == 1 and f"user={alias} uid={users['alice'].pw_uid} " in audited[0], d.log


def test_deny_users_cannot_be_bypassed_through_a_second_name(make_daemon, users, alias):
    """Denied alice asking in ALIAS's name (same uid, no session needed here, so only the
    name check can refuse); and root: the lists apply to the name minted, login and Slurm name."""
    alice = users["alice"].pw_name
    d = make_daemon(deny_users=[alice], require_session=False)
    own = d.token_as(alice)
    assert own.returncode == 4 and "policy-denied" in own.stderr, own.stderr
    other = d.token_as(alice, "--user", alias)  # granted before names were checked
    assert other.returncode == 4 and "permission-denied" in other.stderr, other.stderr
    assert "reason=not-primary-name" in d.log and f"rule=deny-user:{alice}" in d.log
    granted = mint(d, alias)  # root, for the alias: its own name, not denied, is minted
    assert granted.ok and granted.fields["user"] == alias and sun(d, granted.fields["token"]) == alias
    d.stop()
    d = make_daemon(deny_users=[alias])
    denied = mint(d, alias)
    assert denied.code == "policy-denied" and "deny-user" in d.log
    opened = call(d.root_socket, "OPEN", {"user": alias})  # a login as the alias opens nothing either
    assert opened.code == "policy-denied"
    d.stop()
    d = make_daemon(deny_users=[alice], user_map={alias: alice})  # the Slurm name is alice's
    mapped = mint(d, alias)
    assert mapped.code == "policy-denied" and f"{alice} is denied" in mapped.message


# -- policy names NSS does not know ------------------------------------------------------------
def test_unknown_names_warn_at_start_and_reload(make_daemon, users, groups):
    d = make_daemon(deny_users=["sjt-nosuch-user", users["bob"].pw_name],
                    allow_groups=[HPC, "sjt-nosuch-group"], group_lifetime={"sjt-nosuch-g2": 60})
    assert mint(d, users["alice"].pw_name).ok  # not fatal: the rules that name known ones hold
    assert mint(d, users["bob"].pw_name).code == "policy-denied"
    warned = ("config key 'deny_users': no user 'sjt-nosuch-user' in NSS",
              "config key 'allow_groups': no group 'sjt-nosuch-group' in NSS",
              "config key 'group_lifetime': no group 'sjt-nosuch-g2' in NSS")
    assert [d.log.count(w) for w in warned] == [1, 1, 1], d.log
    assert d.log.count(" in NSS (") == 3  # none for the names NSS knows
    d.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while d.log.count("config key 'group_lifetime'") < 2:
        assert time.monotonic() < deadline, d.log
        time.sleep(0.05)
    assert [d.log.count(w) for w in warned] == [2, 2, 2], d.log
    assert d.alive() and mint(d, users["alice"].pw_name).ok


# -- pure rules: names ---------------------------------------------------------------------------
ROOT, ALICE = Caller(0, 0, 1), Caller(2000, 2000, 2)


@pytest.mark.parametrize("caller, account, config, expect", [
    (ALICE, Account("al", 2000, alias_of="alice"), Config(require_session=False),
     ("not-primary-name", "permission-denied")),
    (ALICE, Account("al", 2000, alias_of="alice"), Config(require_session=False, deny_users=("al",)),
     ("not-primary-name", "permission-denied")),
    (ALICE, Account("alice", 2000), Config(require_session=False), ("no-session-required", None)),
    (ROOT, Account("al", 2000, alias_of="alice"), Config(), ("root-request", None)),
    (ROOT, Account("al", 2000, alias_of="alice"), Config(deny_users=("al",)),
     ("deny-user", "policy-denied")),
    (ROOT, Account("al", 2000), Config(deny_users=("alice",), user_map={"al": "alice"}),
     ("deny-user", "policy-denied")),
    (ROOT, Account("alice@X", 2000), Config(deny_users=("alice",), strip_realm=True),
     ("deny-user", "policy-denied")),
    (ROOT, Account("alice@X", 2000), Config(deny_users=("alice",)), ("root-request", None)),
    (ROOT, Account("al", 2000), Config(allow_users=("alice",), user_map={"al": "alice"}),
     ("not-allowed", "policy-denied")),  # allow lists name logins: mapping to one does not admit
])
def test_names_in_the_pure_decision(caller, account, config, expect):
    d = decide_mint(caller, account, account.name, None, False, config)
    assert (d.reason, d.code.value if d.code else None) == expect


def test_unknown_names_pure():
    config = Config(allow_users=("a", "x"), deny_users=("y",), allow_groups=("g", "h"),
                    deny_groups=("i",), group_lifetime={"j": 60}, group_max_lifetime={"g": 60, "k": 60})
    found = unknown_names(config, lambda u: u == "a", lambda g: g == "g")
    assert found == [("allow_users", "x"), ("deny_users", "y"), ("allow_groups", "h"),
                     ("deny_groups", "i"), ("group_lifetime", "j"), ("group_max_lifetime", "k")]
    assert unknown_names(Config(), lambda u: False, lambda g: False) == []
