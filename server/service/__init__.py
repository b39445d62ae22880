"""Service routes: health probes, model list, server info, Prometheus metrics."""
