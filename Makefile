# Every target that runs Python depends on the venv, which is rebuilt only when requirements.txt changes.
VENV := venv
PYTHON := $(VENV)/bin/python
ARGS ?=
N ?= 500

.PHONY: all demo run sqs maker consumer produce status redrive responses test chaos bench lint lock clean

all: $(VENV)/.installed

$(VENV)/.installed: requirements.txt
	test -x $(PYTHON) || python3 -m venv $(VENV)
	$(PYTHON) -m pip install --quiet --upgrade pip
	$(PYTHON) -m pip install --quiet -r requirements.txt
	touch $@

demo: all  ## a one-minute guided tour on this machine
	$(PYTHON) -m devtools.demo

run: all  ## local SQS, maker and consumer together; Ctrl-C stops all three
	$(PYTHON) -m devtools.run

sqs: all  ## the local SQS (moto server) on 127.0.0.1:9324
	$(PYTHON) -m moto.server -H 127.0.0.1 -p 9324

maker: all  ## the widget maker on 127.0.0.1:5000
	$(PYTHON) widget_maker.py $(ARGS)

consumer: all  ## the consumer, on the local SQS unless ARGS says otherwise
	$(PYTHON) widget_consumer.py $(ARGS)

produce: all  ## send requests: make produce ARGS="--count 10 --wait"
	$(PYTHON) widget_producer.py $(ARGS)

status: all  ## messages visible, in flight and delayed on each queue: make status ARGS="--json" or ARGS="--watch"
	$(PYTHON) widget_queues.py status $(ARGS)

redrive: all  ## move the dead-letter queue's requests back to the request queue: make redrive ARGS="--max 100"
	$(PYTHON) widget_queues.py redrive $(ARGS)

responses: all  ## print the responses waiting: make responses ARGS="--delete"
	$(PYTHON) widget_queues.py responses $(ARGS)

test: all  ## the whole test suite
	$(PYTHON) -m pytest $(ARGS)

chaos: export CHAOS_SIZE := full
chaos: all  ## the full chaos test: faults injected while 350 requests flow
	$(PYTHON) -m pytest tests/test_chaos.py -s $(ARGS)

bench: all  ## throughput: raw SQS, the consumer and the seed's loop, from the same depth (N=500)
	$(PYTHON) -m bench.bench --count $(N)

lint: all  ## ruff (lint and format check) and mypy
	$(PYTHON) -m ruff check .
	$(PYTHON) -m ruff format --check .
	$(PYTHON) -m mypy

lock:  ## re-pin requirements.txt from requirements.in
	rm -rf $(VENV).lock && python3 -m venv $(VENV).lock
	$(VENV).lock/bin/pip install --quiet -r requirements.in
	(echo "# Every package the venv holds, pinned; generated from requirements.in by 'make lock'."; \
	 $(VENV).lock/bin/pip freeze) > requirements.txt
	rm -rf $(VENV).lock

clean:  ## remove the venv and local state
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis widgets.db widgets.db-wal widgets.db-shm
	find . -name __pycache__ -prune -exec rm -rf {} +
