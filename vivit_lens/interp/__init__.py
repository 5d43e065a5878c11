"""The interpretability core that every architecture shares: ActivationCache (and its DLA), activation,
path and attribution patching, the circuit graph, ablation, probes, metrics, measurements, the memory guard.
"""
