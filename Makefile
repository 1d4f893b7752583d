# Every target that runs Python depends on the venv, which is rebuilt only when requirements.txt or
# pyproject.toml changes.
VENV := venv
PYTHON := $(VENV)/bin/python
ARGS ?=
N ?= 500
# make test runs the suite in this many pytest-xdist processes (0: all in one): most of its time is
# spent waiting on timeouts, retry delays and outages, so three share two cores well.
TEST_WORKERS ?= 3
# The local SQS is fauxqs (package.json), installed with npm when Node.js is here; without it,
# moto's server stands in (slower), and the programs that start it say so.
HAVE_NODE := $(and $(shell command -v node 2>/dev/null),$(shell command -v npm 2>/dev/null))
NODE_MODULES := $(if $(HAVE_NODE),node_modules/.installed)
# The targets that run one script use the local SQS unless ARGS says otherwise: a region or an
# endpoint the shell exports (AWS_REGION, AWS_DEFAULT_REGION, AWS_ENDPOINT_URL...) is not passed on.
LOCAL := env -u AWS_REGION -u AWS_DEFAULT_REGION -u AWS_ENDPOINT_URL -u AWS_ENDPOINT_URL_SQS

.PHONY: all demo run sqs pg maker consumer produce status redrive responses test chaos bench lint lock clean

all: $(VENV)/.installed $(NODE_MODULES)

$(VENV)/.installed: requirements.txt pyproject.toml
	test -x $(PYTHON) || python3 -m venv $(VENV)
	$(PYTHON) -m pip install --quiet --upgrade pip
	$(PYTHON) -m pip install --quiet -r requirements.txt
	# The project itself, editable: the widget-* commands in venv/bin run this checkout's code.
	$(PYTHON) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $@

node_modules/.installed: package.json package-lock.json
	npm ci --loglevel=error
	touch $@

demo: all  ## a one-minute guided tour on this machine
	$(PYTHON) -m devtools.demo

# make run DB=postgresql://...: the maker stores its widgets there (through the environment, so the
# URL, password and all, is not on any command line).
ifneq ($(DB),)
run: export WIDGET_MAKER_DB := $(DB)
endif
run: all  ## local SQS, maker and consumer together; Ctrl-C stops all three; DB=postgresql://... for PostgreSQL
	$(PYTHON) -m devtools.run

sqs: all  ## the local SQS on 127.0.0.1:9324: fauxqs, else moto's server (WIDGETS_LOCAL_SQS=fauxqs|moto chooses)
	$(PYTHON) -m devtools.local_sqs

pg: all  ## a throwaway PostgreSQL on 127.0.0.1:5432 (as the postgres user when root); Ctrl-C stops and deletes it
	$(PYTHON) -m devtools.postgres $(ARGS)

maker: all  ## the widget maker on 127.0.0.1:5000
	$(PYTHON) widget_maker.py $(ARGS)

consumer: all  ## the consumer on the local SQS (even if the shell exports AWS_REGION); Amazon: ARGS="--region ..."
	$(LOCAL) $(PYTHON) widget_consumer.py $(ARGS)

produce: all  ## send requests: make produce ARGS="--count 10 --wait"
	$(LOCAL) $(PYTHON) widget_producer.py $(ARGS)

status: all  ## messages visible, in flight and delayed on each queue: make status ARGS="--json" or ARGS="--watch"
	$(LOCAL) $(PYTHON) widget_queues.py status $(ARGS)

redrive: all  ## move the dead-letter queue's requests back to the request queue: make redrive ARGS="--max 100"
	$(LOCAL) $(PYTHON) widget_queues.py redrive $(ARGS)

responses: all  ## print the responses waiting: make responses ARGS="--delete"
	$(LOCAL) $(PYTHON) widget_queues.py responses $(ARGS)

test: all  ## the whole test suite, in TEST_WORKERS (3) processes; a worker done early takes tests from another
	$(PYTHON) -m pytest -n $(TEST_WORKERS) --dist worksteal $(ARGS)

chaos: export CHAOS_SIZE := full
chaos: all  ## the full chaos test: maker and consumer faults while 350 requests flow; SQS faults (fault proxy, outage) while 1,000 do
	$(PYTHON) -m pytest tests/e2e/test_chaos.py -s $(ARGS)

bench: all  ## throughput from the same depth (N=500): raw SQS, the consumer (with metrics, with 20 ms SQS latency), sqs-relay signing, the seed's loop; ARGS="--sqs-latency-ms 0"
	$(PYTHON) -m bench.bench --count $(N) $(ARGS)

lint: all  ## ruff (lint and format check), mypy, and the relative links and anchors of README.md and docs/
	$(PYTHON) -m ruff check .
	$(PYTHON) -m ruff format --check .
	$(PYTHON) -m mypy
	$(PYTHON) -m devtools.check_links README.md docs

lock:  ## re-pin requirements.txt from requirements.in
	rm -rf $(VENV).lock && python3 -m venv $(VENV).lock
	$(VENV).lock/bin/pip install --quiet -r requirements.in
	(echo "# Every package the venv holds, pinned; generated from requirements.in by 'make lock'."; \
	 $(VENV).lock/bin/pip freeze --all | grep -v '^pip==') > requirements.txt
	rm -rf $(VENV).lock

clean:  ## remove the venv, node_modules and local state
	rm -rf $(VENV) node_modules .pytest_cache .mypy_cache .ruff_cache .hypothesis widgets.db widgets.db-wal widgets.db-shm
	find . -name __pycache__ -prune -exec rm -rf {} +
