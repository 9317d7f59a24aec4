"""Networks: the shared encoder and task heads, the architecture registry, task trees, CP-Mobile, the MTL-VAE, profiling."""
