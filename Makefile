# One command per check. `make run` and `make test` install what they need.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
USER ?= demo

.PHONY: run test lint token bench clean

$(STAMP): setup.cfg
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

run: $(STAMP)          ## the gateway with everything embedded: demo key, simulated exchange
	DEMO_MODE=true MARKET_SOURCE=$${MARKET_SOURCE:-simulator} $(PY) app.py

test: $(STAMP)         ## the whole suite
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check .

token: $(STAMP)        ## make token USER=alice [ROLE=service] [BOTS=bot-1,bot-2] [TTL=3600]
	@$(PY) -m gateway.token '$(USER)' $(if $(ROLE),--role '$(ROLE)') $(if $(BOTS),--bots '$(BOTS)') $(if $(TTL),--ttl '$(TTL)')

bench: $(STAMP)        ## every scenario and peer (bench/run.py; BENCH_ARGS=--quick for a smoke run)
	$(PY) -m pip install --quiet -r bench/requirements.txt && cd bench/peers/node && npm ci --no-audit --no-fund --silent
	$(PY) bench/run.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache artifacts .demo
