# slurmjwt: `make demo` and `make test` work as root on a fresh Debian 12 machine.
#
# The venv lives outside the checkout, built from Debian's /usr/bin/python3, so that
# the test users (made with useradd) can run the CLI whatever the checkout's path.

VENV    ?= /opt/slurmjwt/venv
PYTHON  := $(VENV)/bin/python
APT_PACKAGES := slurmctld slurmd slurmrestd slurm-wlm-jwt-plugin slurm-client munge \
	libpam0g-dev pamtester openssh-server openssh-client valgrind libsystemd-dev pkg-config \
	python3-venv python3-dev python3-click python3-systemd python3-jwt python3-cryptography \
	systemd gcc binutils make curl zsh tcsh tmux screen strace \
	procps passwd util-linux acl
# groff renders the man pages (make man's test)
APT_PACKAGES += groff-base
PYTEST_ARGS ?=

# `make install`: where a Debian admin expects things; DESTDIR and PREFIX are honoured
PREFIX      ?= /usr/local
SYSCONFDIR  ?= /etc
LIBDIR      := $(PREFIX)/lib/slurmjwt
BINDIR      := $(PREFIX)/bin
SBINDIR     := $(PREFIX)/sbin
DOCDIR      := $(PREFIX)/share/doc/slurmjwt
UNITDIR     ?= $(shell pkg-config --variable=systemdsystemunitdir systemd 2>/dev/null || echo /lib/systemd/system)
SYSUSERSDIR ?= /usr/lib/sysusers.d
TMPFILESDIR ?= /usr/lib/tmpfiles.d
PROFILEDIR  ?= $(SYSCONFDIR)/profile.d
CSHRCDIR    ?= $(SYSCONFDIR)/csh/cshrc.d
RUNTIME_PACKAGES := python3 python3-click python3-systemd python3-jwt python3-cryptography
# slurmjwt-exec runs Slurm's commands (in SLURM_BINDIR) without the login's token; its links go in
# WRAPDIR, which must come before SLURM_BINDIR on PATH (/usr/local/bin does on every Debian default)
SLURM_BINDIR ?= /usr/bin
WRAPDIR     ?= $(BINDIR)
MANDIR      ?= $(PREFIX)/share/man
BASHCOMPDIR ?= $(PREFIX)/share/bash-completion/completions
# on Debian's zsh fpath: vendor-completions for a package (PREFIX=/usr), site-functions in /usr/local
ZSHCOMPDIR  ?= $(if $(filter /usr,$(PREFIX)),/usr/share/zsh/vendor-completions,$(PREFIX)/share/zsh/site-functions)

.PHONY: all deps venv module test demo bench fuzz install install-exec install-deps clean man completion

all: venv module

deps:
	@installed=$$(dpkg-query -W -f='$${Status}\n' $(APT_PACKAGES) 2>/dev/null | grep -c 'install ok installed'); \
	if [ "$$installed" -ne $(words $(APT_PACKAGES)) ]; then \
	  missing=$$(for p in $(APT_PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | \
	    grep -q 'install ok installed' || echo $$p; done); \
	  echo "deps: apt-get update, then installing $$(echo $$missing | wc -w) Debian packages" \
	    "(and what they need): $$(echo $$missing)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	    --no-install-recommends $(APT_PACKAGES) >/dev/null; \
	fi

venv: deps
	@[ -x $(PYTHON) ] || { echo "venv: creating $(VENV)"; /usr/bin/python3 -m venv $(VENV); }
	@chmod 755 $(dir $(VENV)) $(VENV)
	@echo "venv: installing slurmjwt and its test dependencies into $(VENV) (pip)"
	@$(PYTHON) -m pip install -q --disable-pip-version-check '.[test]'
	@$(PYTHON) -m pip install -q --disable-pip-version-check --no-deps --force-reinstall .
	@rm -rf build slurmjwt.egg-info

module: deps
	@echo "module: building the PAM module (pam/pam_slurmjwt.so) and slurmjwt-exec"
	@$(MAKE) -s -C pam

# pytest's exit 5 (nothing collected) must not pass for success
test: venv module
	@echo "test: pytest; the fixtures start slurmctld, slurmd, slurmrestd and sshd as needed (a few minutes)"
	@SLURMJWT_VENV=$(VENV) $(PYTHON) -m pytest $(PYTEST_ARGS); status=$$?; \
	if [ $$status -eq 5 ]; then echo "make test: pytest collected no tests" >&2; exit 1; fi; \
	exit $$status

demo: venv module
	@SLURMJWT_VENV=$(VENV) $(PYTHON) tests/demo.py

bench: venv module
	SLURMJWT_VENV=$(VENV) $(PYTHON) bench/bench.py

# the request path under tests/fuzz/harness.py at length (make test runs it for a few seconds);
# FUZZ_SEED empty: a random seed, printed; a crashing input is saved in the current directory
FUZZ_SECONDS ?= 300
FUZZ_SEED ?=
fuzz: venv
	$(PYTHON) tests/fuzz/harness.py --seconds $(FUZZ_SECONDS) $(if $(FUZZ_SEED),--seed $(FUZZ_SEED))

# the man pages (man/) and completion scripts (completion/) are generated from the CLI, the
# configuration table and the docs, and kept in git (tests/unit/test_man.py checks they are current)
man:
	@/usr/bin/python3 -I tools/mkman.py

completion:
	@/usr/bin/python3 -I tools/mkcompletion.py

# the daemon and CLI run on Debian's python3 (-I: no PYTHONPATH, no user site, no cwd)
define launcher
#!/usr/bin/python3 -I
import sys
sys.path.insert(0, "$(LIBDIR)")
from slurmjwtd.$(1) import main
main()
endef
export LAUNCHER_CLI := $(call launcher,cli)
export LAUNCHER_DAEMON := $(call launcher,main)

install-deps:
	apt-get install -y --no-install-recommends $(RUNTIME_PACKAGES)

# one link per Slurm command present in SLURM_BINDIR (`slurmjwt-exec --list` is the table)
install-exec: deps
	@[ "$$(realpath -m $(WRAPDIR))" != "$$(realpath -m $(SLURM_BINDIR))" ] || \
	  { echo "install-exec: WRAPDIR and SLURM_BINDIR are both $(SLURM_BINDIR): set WRAPDIR to a directory before it on PATH" >&2; exit 1; }
	$(MAKE) -s -C pam slurmjwt-exec SLURM_BINDIR=$(SLURM_BINDIR) SYSCONFDIR=$(SYSCONFDIR)
	install -d $(DESTDIR)$(LIBDIR) $(DESTDIR)$(WRAPDIR)
	install -m 0755 pam/slurmjwt-exec $(DESTDIR)$(LIBDIR)/slurmjwt-exec
	@for c in $$(pam/slurmjwt-exec --list); do \
	  [ ! -e $(SLURM_BINDIR)/$$c ] || ln -sfn $(LIBDIR)/slurmjwt-exec $(DESTDIR)$(WRAPDIR)/$$c; done

install: module install-exec
	install -d $(DESTDIR)$(LIBDIR)/slurmjwtd $(DESTDIR)$(BINDIR) $(DESTDIR)$(SBINDIR) \
	  $(DESTDIR)$(UNITDIR) $(DESTDIR)$(SYSUSERSDIR) $(DESTDIR)$(TMPFILESDIR) $(DESTDIR)$(DOCDIR)
	install -d -m 0755 $(DESTDIR)$(SYSCONFDIR)/slurmjwt
	install -m 0644 slurmjwtd/*.py $(DESTDIR)$(LIBDIR)/slurmjwtd/
	printf '%s\n' "$$LAUNCHER_CLI" > $(DESTDIR)$(BINDIR)/slurmjwt
	printf '%s\n' "$$LAUNCHER_DAEMON" > $(DESTDIR)$(SBINDIR)/slurmjwtd
	chmod 0755 $(DESTDIR)$(BINDIR)/slurmjwt $(DESTDIR)$(SBINDIR)/slurmjwtd
	sed 's|/usr/local/|$(PREFIX)/|g; s|/etc/slurmjwt/|$(SYSCONFDIR)/slurmjwt/|' \
	  systemd/slurmjwtd.service > $(DESTDIR)$(UNITDIR)/slurmjwtd.service
	install -m 0644 systemd/slurmjwtd.socket systemd/slurmjwtd-root.socket $(DESTDIR)$(UNITDIR)/
	install -m 0644 systemd/slurmjwtd.sysusers $(DESTDIR)$(SYSUSERSDIR)/slurmjwt.conf
	install -m 0644 systemd/slurmjwtd.tmpfiles $(DESTDIR)$(TMPFILESDIR)/slurmjwt.conf
	/usr/bin/python3 -I -c 'import sys; sys.path.insert(0, "."); \
	  from slurmjwtd.config import example_config; print(example_config(), end="")' \
	  > $(DESTDIR)$(SYSCONFDIR)/slurmjwt/slurmjwtd.toml.example
	[ -e $(DESTDIR)$(SYSCONFDIR)/slurmjwt/slurmjwtd.toml ] || install -m 0644 \
	  $(DESTDIR)$(SYSCONFDIR)/slurmjwt/slurmjwtd.toml.example $(DESTDIR)$(SYSCONFDIR)/slurmjwt/slurmjwtd.toml
	install -m 0644 README.md docs/*.md $(DESTDIR)$(DOCDIR)/
	install -m 0644 pam/README.md $(DESTDIR)$(DOCDIR)/pam_slurmjwt.md
	install -d $(DESTDIR)$(PROFILEDIR) $(DESTDIR)$(CSHRCDIR)
	install -m 0644 shell/slurmjwt.sh $(DESTDIR)$(PROFILEDIR)/slurmjwt.sh
	install -m 0644 shell/slurmjwt.csh $(DESTDIR)$(CSHRCDIR)/slurmjwt.csh
	install -m 0644 shell/README.md $(DESTDIR)$(DOCDIR)/shell.md
	install -d $(DESTDIR)$(MANDIR)/man1 $(DESTDIR)$(MANDIR)/man5 $(DESTDIR)$(MANDIR)/man8 \
	  $(DESTDIR)$(BASHCOMPDIR) $(DESTDIR)$(ZSHCOMPDIR)
	install -m 0644 man/slurmjwt.1 $(DESTDIR)$(MANDIR)/man1/
	install -m 0644 man/slurmjwtd.toml.5 $(DESTDIR)$(MANDIR)/man5/
	install -m 0644 man/slurmjwtd.8 man/pam_slurmjwt.8 $(DESTDIR)$(MANDIR)/man8/
	install -m 0644 completion/slurmjwt.bash $(DESTDIR)$(BASHCOMPDIR)/slurmjwt
	install -m 0644 completion/_slurmjwt $(DESTDIR)$(ZSHCOMPDIR)/_slurmjwt
	@echo "zsh users: add to /etc/zsh/zshrc:  [ -r $(PROFILEDIR)/slurmjwt.sh ] && . $(PROFILEDIR)/slurmjwt.sh"
	$(MAKE) -s -C pam install DESTDIR=$(DESTDIR)

clean:
	rm -rf build *.egg-info .pytest_cache
	$(MAKE) -C pam clean
	$(MAKE) -C bench clean 2>/dev/null || true
