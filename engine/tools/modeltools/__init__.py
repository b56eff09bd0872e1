"""Offline model tooling: convert, quantize, evaluate, train MNIST."""
