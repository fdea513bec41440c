# One command per check. `make run` and `make test` install what they need.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
USER ?= demo

.PHONY: run test check lint types imports token bench clean

$(STAMP): setup.cfg setup.py pyproject.toml market/_bybit_fast.pyx  # (the .pyx: rebuilt in place)
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

run: $(STAMP)          ## the gateway with everything embedded: demo key, simulated exchange
	DEMO_MODE=true MARKET_SOURCE=$${MARKET_SOURCE:-simulator} $(PY) app.py

test: $(STAMP)         ## the whole suite
	$(PY) -m pytest -q

check: lint types imports $(STAMP)  ## lint, types, the import contract and the unit tests: well under a minute
	$(PY) -m pytest -q -m unit -p no:cacheprovider

lint: $(STAMP)         ## ruff
	$(VENV)/bin/ruff check .

types: $(STAMP)        ## mypy: strict on the pure layers, plain on the rest (settings in pyproject.toml)
	$(VENV)/bin/mypy --strict protocol market transport/frames.py transport/handshake.py brokers/broker.py metrics
	$(VENV)/bin/mypy app.py gateway actors transport brokers audit simulator supervision.py _supervision
	$(VENV)/bin/mypy --strict clients/python/src

imports: $(STAMP)      ## the layers: the contract in tests/test_layers.py (every import, read from the source)
	$(PY) -m pytest -q -p no:cacheprovider tests/test_layers.py

token: $(STAMP)        ## make token USER=alice [ROLE=service|admin] [BOTS=bot-1,bot-2] [SERVES='grid-*'] [TTL=3600]
	@$(PY) -m gateway.token '$(USER)' $(if $(ROLE),--role '$(ROLE)') $(if $(BOTS),--bots '$(BOTS)') $(if $(SERVES),--serves '$(SERVES)') $(if $(TTL),--ttl '$(TTL)')

bench: $(STAMP)        ## every scenario and peer (bench/run.py; BENCH_ARGS=--quick for a smoke run)
	$(PY) -m pip install --quiet -r bench/requirements.txt && cd bench/peers/node && npm ci --no-audit --no-fund --silent
	$(PY) bench/run.py $(BENCH_ARGS)
	$(PY) bench/publish_rate.py
	$(PY) bench/revoke_latency.py

clean:
	rm -rf $(VENV) .pytest_cache artifacts .demo
