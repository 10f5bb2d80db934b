"""Prometheus metrics of the operator (served by `imstack-operator --metrics-port`)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

RECONCILES = Counter("imstack_operator_reconciles_total", "Reconcile passes", ["namespace", "name", "result"])
SCALE_EVENTS = Counter("imstack_operator_scale_events_total", "Autoscaler actions", ["namespace", "name", "component", "action"])
CONNECTIONS = Gauge("imstack_operator_connections", "Client connections the access pods report", ["namespace", "name", "component"])
DESIRED = Gauge("imstack_operator_desired_replicas", "Access replicas the autoscaler set", ["namespace", "name", "component"])
DRAINING = Gauge("imstack_operator_draining", "1 while a drain is in progress", ["namespace", "name", "component"])
