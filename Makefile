# The two commands a newcomer needs: `make demo` and `make test`.
.PHONY: demo test test-long test-unit lint clean deb rpm packages

demo:
	@scripts/setup-dev demo
	.venv/bin/dispatch demo

test:
	@scripts/setup-dev test
	.venv/bin/python -m pytest -q

# The largest cases of the hostile/fault/load campaign (tests/hostile/README.md).
test-long:
	@scripts/setup-dev test
	.venv/bin/python -m pytest -q -m long tests/hostile

# These two run as any user, with no system package beyond Python >= 3.11 and its venv.
test-unit:
	@scripts/setup-dev dev
	.venv/bin/python -m pytest -q tests/unit tests/test_quality.py

lint:
	@scripts/setup-dev dev
	.venv/bin/ruff check dispatch tests bench
	.venv/bin/ruff format --check dispatch tests bench
	.venv/bin/mypy dispatch tests

# Packages (packaging/README.md): one command each, artifacts in dist/.
deb:
	@scripts/setup-dev packages
	packaging/build deb

rpm:
	@scripts/setup-dev packages
	packaging/build rpm

packages: deb rpm

clean:
	rm -rf .venv dist build *.egg-info
