"""Real servers and processes the tests and the benchmarks both start: Celery
workers, sshd and dockerd in their own namespaces, HAProxy with HTTP replicas,
and the removal of the libvirt storage a run made. Nothing here imports tests."""
