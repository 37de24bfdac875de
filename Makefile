# slurmjwt: `make demo` and `make test` work as root on a fresh Debian 12 machine.
#
# The venv lives outside the checkout, built from Debian's /usr/bin/python3, so that
# the test users (made with useradd) can run the CLI whatever the checkout's path.

VENV    ?= /opt/slurmjwt/venv
PYTHON  := $(VENV)/bin/python
APT_PACKAGES := slurmctld slurmrestd slurm-wlm-jwt-plugin slurm-client munge \
	libpam0g-dev pamtester openssh-server openssh-client valgrind libsystemd-dev pkg-config \
	python3-venv python3-dev gcc make curl procps passwd util-linux
PYTEST_ARGS ?=

.PHONY: all deps venv module test demo bench clean

all: venv module

deps:
	@installed=$$(dpkg-query -W -f='$${Status}\n' $(APT_PACKAGES) 2>/dev/null | grep -c 'install ok installed'); \
	if [ "$$installed" -ne $(words $(APT_PACKAGES)) ]; then \
	  echo "deps: installing Debian packages"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	    --no-install-recommends $(APT_PACKAGES) >/dev/null; \
	fi

venv: deps
	@[ -x $(PYTHON) ] || /usr/bin/python3 -m venv $(VENV)
	@chmod 755 $(dir $(VENV)) $(VENV)
	@$(PYTHON) -m pip install -q --disable-pip-version-check '.[test]'
	@$(PYTHON) -m pip install -q --disable-pip-version-check --no-deps --force-reinstall .
	@rm -rf build slurmjwt.egg-info

module: deps
	@$(MAKE) -s -C pam

# pytest's exit 5 (nothing collected) must not pass for success
test: venv module
	@SLURMJWT_VENV=$(VENV) $(PYTHON) -m pytest $(PYTEST_ARGS); status=$$?; \
	if [ $$status -eq 5 ]; then echo "make test: pytest collected no tests" >&2; exit 1; fi; \
	exit $$status

demo: venv module
	@SLURMJWT_VENV=$(VENV) $(PYTHON) tests/demo.py

bench: venv module
	SLURMJWT_VENV=$(VENV) $(PYTHON) bench/bench.py

clean:
	rm -rf build *.egg-info .pytest_cache
	$(MAKE) -C pam clean
	$(MAKE) -C bench clean 2>/dev/null || true
