"""The lab bench: anatomy (parameters, bytes, FLOPs), latent vs pixel space, sweeps and benchmarks."""
