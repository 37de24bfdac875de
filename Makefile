# slurmjwt: `make demo` and `make test` work as root on a fresh Debian 12 machine.
#
# The venv lives outside the checkout, built from Debian's /usr/bin/python3, so that
# the test users (made with useradd) can run the CLI whatever the checkout's path.

VENV    ?= /opt/slurmjwt/venv
PYTHON  := $(VENV)/bin/python
# Debian packages, by what needs them. `make install` pulls only RUNTIME and BUILD (a compiler
# and PAM's headers, for the module and slurmjwt-exec); `make deb` BUILD and DEB; `make test`
# (deps) all of them.
RUNTIME_PACKAGES := python3 python3-click python3-systemd python3-jwt python3-cryptography
BUILD_PACKAGES := gcc libc6-dev make libpam0g-dev libssl-dev pkg-config
DEB_PACKAGES := build-essential debhelper dh-python dpkg-dev fakeroot lintian
TEST_PACKAGES := slurmctld slurmd slurmrestd slurm-wlm-jwt-plugin slurm-client munge \
	pamtester openssh-server openssh-client valgrind libmunge-dev \
	python3-venv python3-dev systemd binutils curl zsh tcsh tmux screen strace \
	procps passwd util-linux acl groff-base
APT_PACKAGES := $(RUNTIME_PACKAGES) $(BUILD_PACKAGES) $(DEB_PACKAGES) $(TEST_PACKAGES)
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
# slurmjwt-exec runs Slurm's commands (in SLURM_BINDIR) without the login's token; its links go in
# WRAPDIR, which must come before SLURM_BINDIR on PATH (/usr/local/bin does on every Debian default)
SLURM_BINDIR ?= /usr/bin
WRAPDIR     ?= $(BINDIR)
MANDIR      ?= $(PREFIX)/share/man
BASHCOMPDIR ?= $(PREFIX)/share/bash-completion/completions
# on Debian's zsh fpath: vendor-completions for a package (PREFIX=/usr), site-functions in /usr/local
ZSHCOMPDIR  ?= $(if $(filter /usr,$(PREFIX)),/usr/share/zsh/vendor-completions,$(PREFIX)/share/zsh/site-functions)

.PHONY: all deps venv module test test-slurm24 demo bench fuzz install install-exec install-deps install-build-deps \
	uninstall deb clean man completion

all: venv module

# apt_ensure: install those of the Debian packages $(1) that are not installed yet
define apt_ensure
@missing=$$(for p in $(1); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | \
	  grep -q 'install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "apt-get update, then installing $$(echo $$missing | wc -w) Debian packages" \
	    "(and what they need): $$(echo $$missing)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	    --no-install-recommends $$missing >/dev/null; \
	fi
endef

deps:
	$(call apt_ensure,$(APT_PACKAGES))

# what `make install` needs: the runtime, and the tools to build the C side
install-build-deps:
	$(call apt_ensure,$(RUNTIME_PACKAGES) $(BUILD_PACKAGES))

venv: deps module
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

# the Slurm-facing tests against Debian 13's Slurm 24.11, run in a debootstrap root cached in
# TRIXIE_ROOT (the first run downloads a few hundred MB; the host's apt sources are never touched).
# Not part of `make test`. The tests that log in over SSH here use the host's Slurm (slurm_on_host).
TRIXIE_ROOT ?= /var/cache/slurmjwt-tests/trixie
SLURM24_TESTS := tests/test_slurm.py tests/test_rest.py tests/test_jobs.py tests/test_signers.py
test-slurm24: venv module
	$(call apt_ensure,debootstrap)
	@SLURMJWT_TRIXIE_ROOT=$(TRIXIE_ROOT) $(PYTHON) tests/trixie_root.py build
	@echo "test-slurm24: pytest against Slurm 24.11 in $(TRIXIE_ROOT)"
	@SLURMJWT_VENV=$(VENV) SLURMJWT_SLURM=24.11 SLURMJWT_TRIXIE_ROOT=$(TRIXIE_ROOT) \
	  $(PYTHON) -m pytest -m 'not slurm_on_host' $(PYTEST_ARGS) $(SLURM24_TESTS); status=$$?; \
	if [ $$status -eq 5 ]; then echo "make test-slurm24: pytest collected no tests" >&2; exit 1; fi; \
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
export LAUNCHER_CLI := $(call launcher,fastcli)
export LAUNCHER_DAEMON := $(call launcher,main)

install-deps:
	apt-get install -y --no-install-recommends $(RUNTIME_PACKAGES)

# one link per Slurm command present in SLURM_BINDIR (`slurmjwt-exec --list` is the table)
install-exec: install-build-deps
	@[ "$$(realpath -m $(WRAPDIR))" != "$$(realpath -m $(SLURM_BINDIR))" ] || \
	  { echo "install-exec: WRAPDIR and SLURM_BINDIR are both $(SLURM_BINDIR): set WRAPDIR to a directory before it on PATH" >&2; exit 1; }
	$(MAKE) -s -C pam slurmjwt-exec SLURM_BINDIR=$(SLURM_BINDIR) SYSCONFDIR=$(SYSCONFDIR)
	install -d $(DESTDIR)$(LIBDIR) $(DESTDIR)$(WRAPDIR)
	install -m 0755 pam/slurmjwt-exec $(DESTDIR)$(LIBDIR)/slurmjwt-exec
	@for c in $$(pam/slurmjwt-exec --list); do \
	  [ ! -e $(SLURM_BINDIR)/$$c ] || ln -sfn $(LIBDIR)/slurmjwt-exec $(DESTDIR)$(WRAPDIR)/$$c; done

install: install-build-deps install-exec
	install -d $(DESTDIR)$(LIBDIR)/slurmjwtd $(DESTDIR)$(BINDIR) $(DESTDIR)$(SBINDIR) \
	  $(DESTDIR)$(UNITDIR) $(DESTDIR)$(SYSUSERSDIR) $(DESTDIR)$(TMPFILESDIR) $(DESTDIR)$(DOCDIR)
	install -d -m 0755 $(DESTDIR)$(SYSCONFDIR)/slurmjwt
	install -m 0644 slurmjwtd/*.py $(DESTDIR)$(LIBDIR)/slurmjwtd/
	install -m 0644 slurmjwtd/_fastpath.so $(DESTDIR)$(LIBDIR)/slurmjwtd/
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

# remove what `make install` put, with the same PREFIX, DESTDIR and directories; the
# configuration stays if it differs from the example (as dpkg keeps a changed conffile)
uninstall:
	@for l in $(DESTDIR)$(WRAPDIR)/*; do \
	  [ ! -L $$l ] || [ "$$(readlink $$l)" != $(LIBDIR)/slurmjwt-exec ] || rm -f $$l; done
	rm -f $(DESTDIR)$(BINDIR)/slurmjwt $(DESTDIR)$(SBINDIR)/slurmjwtd
	rm -rf $(DESTDIR)$(LIBDIR) $(DESTDIR)$(DOCDIR)
	rm -f $(DESTDIR)$(UNITDIR)/slurmjwtd.service $(DESTDIR)$(UNITDIR)/slurmjwtd.socket \
	  $(DESTDIR)$(UNITDIR)/slurmjwtd-root.socket
	rm -f $(DESTDIR)$(SYSUSERSDIR)/slurmjwt.conf $(DESTDIR)$(TMPFILESDIR)/slurmjwt.conf
	rm -f $(DESTDIR)$(PROFILEDIR)/slurmjwt.sh $(DESTDIR)$(CSHRCDIR)/slurmjwt.csh
	rm -f $(DESTDIR)$(MANDIR)/man1/slurmjwt.1 $(DESTDIR)$(MANDIR)/man5/slurmjwtd.toml.5 \
	  $(DESTDIR)$(MANDIR)/man8/slurmjwtd.8 $(DESTDIR)$(MANDIR)/man8/pam_slurmjwt.8 \
	  $(DESTDIR)$(BASHCOMPDIR)/slurmjwt $(DESTDIR)$(ZSHCOMPDIR)/_slurmjwt
	@conf=$(DESTDIR)$(SYSCONFDIR)/slurmjwt; \
	if cmp -s $$conf/slurmjwtd.toml $$conf/slurmjwtd.toml.example; then rm -f $$conf/slurmjwtd.toml; \
	elif [ -e $$conf/slurmjwtd.toml ]; then echo "uninstall: $$conf/slurmjwtd.toml was changed: kept"; fi; \
	rm -f $$conf/slurmjwtd.toml.example; rmdir $$conf 2>/dev/null || true
	$(MAKE) -s -C pam uninstall DESTDIR=$(DESTDIR)

# `make deb`: slurmjwt_<version>_<arch>.deb here, built by dpkg-buildpackage (debian/) in a copy
# of this tree under DEB_BUILDDIR, then checked by lintian (LINTIAN= skips that)
DEB_BUILDDIR ?= build/deb
LINTIAN ?= lintian --fail-on error,warning --display-info
deb:
	$(call apt_ensure,$(RUNTIME_PACKAGES) $(BUILD_PACKAGES) $(DEB_PACKAGES))
	rm -rf $(DEB_BUILDDIR) && mkdir -p $(DEB_BUILDDIR)/slurmjwt
	tar -c --exclude=./build --exclude=./.git --exclude='./*.deb' --exclude=__pycache__ \
	  --exclude=.pytest_cache . | tar -x -C $(DEB_BUILDDIR)/slurmjwt
	cd $(DEB_BUILDDIR)/slurmjwt && dpkg-buildpackage -b -us -uc >../build.log 2>&1 || \
	  { tail -40 ../build.log >&2; exit 1; }
	@deb=slurmjwt_$$(dpkg-parsechangelog -S Version)_$$(dpkg-architecture -qDEB_HOST_ARCH).deb; \
	cp $(DEB_BUILDDIR)/$$deb . && echo "built $$deb" && \
	if [ -n "$(LINTIAN)" ]; then $(LINTIAN) $$deb; fi

clean:
	rm -rf build *.egg-info .pytest_cache
	$(MAKE) -C pam clean
	$(MAKE) -C bench clean 2>/dev/null || true
