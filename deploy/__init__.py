"""Deployment tooling: nginx.conf as data (nginx.py) and the Docker-free local cluster (cluster.py)."""
