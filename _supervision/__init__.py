"""The parts of :mod:`supervision`. Import from ``supervision``, never from here.

* :mod:`_supervision.core`: the pure decision core (policy, state machine,
  effects): no gevent, no pykka, no clock;
* :mod:`_supervision.decision_log`: the operators' line for each decision;
* :mod:`_supervision.shell`: the gevent/pykka shell that runs the core.

The test doubles (a fake scheduler, a recorder of decisions) live with the
tests: tests/supervision_doubles.py.
"""
