# The two commands a newcomer needs: `make demo` and `make test`.
.PHONY: demo test test-unit lint clean

demo:
	@scripts/setup-dev demo
	.venv/bin/dispatch demo

test:
	@scripts/setup-dev test
	.venv/bin/python -m pytest -q

test-unit:
	@scripts/setup-dev test
	.venv/bin/python -m pytest -q tests/unit tests/test_quality.py

lint:
	@scripts/setup-dev test
	.venv/bin/ruff check dispatch tests
	.venv/bin/mypy dispatch tests

clean:
	rm -rf .venv dist build *.egg-info
