"""imstack's Kubernetes operator (kopf): reconciles ImCluster resources into the IM stack and
autoscales the access pods on the connection counts they publish to ZooKeeper.

Pure parts: `crd` (schema), `spec` (defaults, checks), `manifests` (spec -> children),
`scaling` (counts over time -> scaling step), `status` (conditions). I/O: `kubeapi`, `zk`,
`reconcile` (one pass), `handlers` (kopf wiring), `main` (entry point).
"""
